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
