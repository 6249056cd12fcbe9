//! The pipeline file `build --pipeline` and `start --pipeline` read: checked whole before
//! anything starts, then sent as the execution input's `pipeline` (Prepare checks it again
//! with the template, as it does for a scheduled run), and the run's pipeline outcome
//! printed from the execution output.

use std::path::Path;

use amiflow_template::pipeline::Pipeline;
use anyhow::Context as _;
use serde_json::Value;

/// The file's JSON, or every problem of it as the error.
pub fn read(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read pipeline file {}", path.display()))?;
    if let Err(problems) = Pipeline::parse(&text) {
        let n = problems.0.len();
        anyhow::bail!(
            "pipeline file {} is not valid ({n} problem{}), nothing was started:\n{problems}",
            path.display(),
            if n == 1 { "" } else { "s" }
        );
    }
    Ok(serde_json::from_str(&text).expect("a checked pipeline file is JSON"))
}

/// The lines a person reads about a pipeline run, from the execution output's `pipeline`.
pub fn outcome_lines(output: &Value) -> Vec<String> {
    let Ok(run) =
        serde_json::from_value::<amiflow::pipeline::PipelineRun>(output["pipeline"].clone())
    else {
        return Vec::new();
    };
    let mut lines = vec![run.summary()];
    if let Some(t) = &run.tested {
        lines.push(format!(
            "tested {} in {} on instance {}: every test provisioner passed",
            t.image,
            t.region,
            t.instance.as_deref().unwrap_or("?")
        ));
    }
    let name = run
        .pipeline
        .publish
        .as_ref()
        .map(|p| p.ssm_parameter.as_str())
        .unwrap_or("?");
    for (region, image) in &run.published {
        lines.push(format!("published {image} to {name} in {region}"));
    }
    let verb = if run.dry_run { "would " } else { "" };
    for r in &run.retired {
        let action = match r.action {
            amiflow_template::pipeline::RetainAction::Deprecate => "deprecate",
            amiflow_template::pipeline::RetainAction::Deregister => "deregister",
            amiflow_template::pipeline::RetainAction::Keep => "keep",
        };
        let snaps = if r.snapshots.is_empty() {
            String::new()
        } else {
            format!(" and delete {}", r.snapshots.join(", "))
        };
        lines.push(format!(
            "retain: {verb}{action} {} in {}{snaps}",
            r.image, r.region
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_outcome_says_up_to_date_or_what_was_published_and_retired() {
        let run = |status: &str, extra: Value| {
            let mut p = json!({"pipeline": {"name": "web", "publish": {"ssm_parameter": "/img"}},
                "parts": {}, "fingerprint": "f00d", "status": status,
                "previous_image": "ami-old"});
            p.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            outcome_lines(&json!({"builds": [], "failed": 0, "pipeline": p}))
        };
        assert_eq!(
            run("up_to_date", json!({})),
            ["pipeline web: up to date: ami-old has fingerprint f00d; nothing was built"]
        );
        let lines = run(
            "building",
            json!({"published": {"us-east-1": "ami-new"}, "dry_run": true,
                "retired": [{"region": "us-east-1", "image": "ami-old", "action": "deregister", "snapshots": ["snap-1"]}]}),
        );
        assert_eq!(
            lines[1..],
            [
                "published ami-new to /img in us-east-1",
                "retain: would deregister ami-old in us-east-1 and delete snap-1"
            ]
        );
        assert!(
            outcome_lines(&json!({"builds": []})).is_empty(),
            "no pipeline, no lines"
        );
    }
}
