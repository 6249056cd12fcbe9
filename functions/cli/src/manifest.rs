//! Packer's file-writing post-processors. `manifest` appends each build's artifact to a JSON
//! file (`output`, default `packer-manifest.json`), in Packer's format so tools that read
//! Packer manifests read ours. `checksum` writes one file per `checksum_types` entry with a
//! line per artifact file, as Packer does: an AMI has none, so the files are empty.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// One build's entry, from the Finalize output and the manifest's own settings.
pub fn entry(build: &Value, post_processor: &Value, run_uuid: &str, build_time: i64) -> Value {
    let mut entry = json!({
        "name": build["name"],
        "builder_type": build["builder_type"],
        "build_time": build_time,
        "files": null,
        "artifact_id": build["artifact_id"],
        "packer_run_uuid": run_uuid,
    });
    if post_processor["strip_time"].as_bool() == Some(true) {
        entry["build_time"] = json!(0);
    }
    if let Some(custom) = post_processor.get("custom_data") {
        entry["custom_data"] = custom.clone();
    }
    entry
}

/// Every string in `value` with its sensitive placeholders revealed.
pub fn reveal(value: &mut Value, secrets: &amiflow::provision::Secrets) {
    match value {
        Value::String(s) => *s = secrets.reveal(s),
        Value::Array(items) => items.iter_mut().for_each(|v| reveal(v, secrets)),
        Value::Object(map) => map.values_mut().for_each(|v| reveal(v, secrets)),
        _ => {}
    }
}

/// Packer's default `output` of the checksum post-processor.
const CHECKSUM_OUTPUT: &str = "packer_{{.BuildName}}_{{.BuilderType}}_{{.ChecksumType}}.checksum";

/// The checksum post-processor for one build: each checksum type's file created (appended
/// to, as Packer opens it), holding a line per artifact file; the paths written.
pub fn checksum_files(build: &Value, post_processor: &Value) -> anyhow::Result<Vec<PathBuf>> {
    let types: Vec<String> = match post_processor["checksum_types"].as_array() {
        Some(t) => t
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        None => vec!["md5".into()],
    };
    let output = post_processor["output"].as_str().unwrap_or(CHECKSUM_OUTPUT);
    let mut written = Vec::new();
    for t in types {
        let path = checksum_path(build, output, &t)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("checksum: cannot create {}: {e}", dir.display()))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("checksum: cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// `output` rendered with Packer's `.BuildName`, `.BuilderType` and `.ChecksumType`.
fn checksum_path(build: &Value, output: &str, checksum_type: &str) -> anyhow::Result<PathBuf> {
    use amiflow::provision::render::{render, RenderContext};
    let text = |k: &str| build[k].as_str().unwrap_or_default().to_string();
    let data = std::collections::BTreeMap::from([
        ("BuildName".to_string(), text("name")),
        ("BuilderType".to_string(), text("builder_type")),
        ("ChecksumType".to_string(), checksum_type.to_string()),
    ]);
    render(output, &RenderContext::with_build(&data))
        .map(PathBuf::from)
        .map_err(|e| anyhow::anyhow!("checksum output {output:?}: {e}"))
}

/// Where the manifest goes: `output`, relative to the working directory as in Packer.
pub fn output_path(post_processor: &Value) -> PathBuf {
    PathBuf::from(
        post_processor["output"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("packer-manifest.json"),
    )
}

/// Appends entries to the manifest at `path` (created when missing).
pub fn append(path: &Path, entries: Vec<Value>, run_uuid: &str) -> anyhow::Result<()> {
    let mut manifest = match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str::<Value>(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a manifest amiflow can append to: {e}; move it away or pick another `output`", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({"builds": []}),
        Err(e) => anyhow::bail!("cannot read manifest {}: {e}", path.display()),
    };
    let builds = manifest["builds"]
        .as_array_mut()
        .ok_or_else(|| anyhow::anyhow!("{} has no \"builds\" list", path.display()))?;
    builds.extend(entries);
    manifest["last_run_uuid"] = json!(run_uuid);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(&manifest)? + "\n")
        .map_err(|e| anyhow::anyhow!("cannot write manifest {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn checksum_files_are_named_as_packer_names_them() {
        let dir = std::env::temp_dir().join(format!("amiflow-checksum-{}", std::process::id()));
        let build = json!({"name": "web", "builder_type": "amazon-ebs"});
        let out = format!(
            "{}/sums/{{{{.BuildName}}}}-{{{{.ChecksumType}}}}.txt",
            dir.display()
        );
        let written = checksum_files(
            &build,
            &json!({"checksum_types": ["sha256", "md5"], "output": out}),
        )
        .unwrap();
        assert_eq!(
            written,
            [
                dir.join("sums/web-sha256.txt"),
                dir.join("sums/web-md5.txt")
            ]
        );
        assert!(written.iter().all(|p| std::fs::read(p).unwrap().is_empty()));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            checksum_path(&build, CHECKSUM_OUTPUT, "md5").unwrap(),
            PathBuf::from("packer_web_amazon-ebs_md5.checksum")
        );
        // As Prepare leaves it (rendering deferred, spaced).
        assert_eq!(
            checksum_path(&build, "{{ .BuildName }}.{{ .ChecksumType }}", "sha1").unwrap(),
            PathBuf::from("web.sha1")
        );
    }

    #[test]
    fn custom_data_gets_the_sensitive_values() {
        let secrets =
            amiflow::provision::Secrets::from_pairs([("pw".to_string(), "a\"b".to_string())]);
        let mut custom =
            serde_json::json!({"db": "<sensitive:pw>", "list": ["x <sensitive:pw>"], "n": 1});
        super::reveal(&mut custom, &secrets);
        assert_eq!(
            custom,
            serde_json::json!({"db": "a\"b", "list": ["x a\"b"], "n": 1})
        );
    }

    use super::*;

    #[test]
    fn appends_to_an_existing_manifest_and_keeps_the_last_run() {
        let dir = std::env::temp_dir().join(format!("amiflow-manifest-{}", std::process::id()));
        let path = dir.join("m.json");
        let build =
            json!({"name": "web", "builder_type": "amazon-ebs", "artifact_id": "us-east-1:ami-1"});
        append(&path, vec![entry(&build, &json!({}), "run-1", 10)], "run-1").unwrap();
        append(
            &path,
            vec![entry(
                &build,
                &json!({"strip_time": true, "custom_data": {"k": "v"}}),
                "run-2",
                20,
            )],
            "run-2",
        )
        .unwrap();
        let m: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(m["builds"].as_array().unwrap().len(), 2);
        assert_eq!(m["builds"][0]["build_time"], 10);
        assert_eq!(m["builds"][1]["build_time"], 0);
        assert_eq!(m["builds"][1]["custom_data"]["k"], "v");
        assert_eq!(m["builds"][1]["artifact_id"], "us-east-1:ami-1");
        assert_eq!(m["last_run_uuid"], "run-2");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
