//! Finalize: the Map's results (one [`BuildState`] per build) → the execution's output.
//!
//! Input: the Map's output, an array of build states (or `{"builds": [...]}` when the Map
//! writes it under `$.builds`). Output, shaped after Packer's manifest:
//!
//! ```json
//! {"builds": [{"name": "...", "builder_type": "amazon-ebs", "artifact_id": "us-east-1:ami-1,us-west-2:ami-2",
//!              "amis": {"us-east-1": "ami-1"}, "snapshots": {...}, "volumes": {...}, "error": "..."}],
//!  "failed": 1, "cause": "build \"x\" failed: ..."}
//! ```
//! With a pipeline, its state is carried on as `"pipeline"`.
//! `failed` lets the state machine Choice into a Fail state whose `CausePath` is `$.cause`.
//! Its one AWS call: removing a deployed execution's sensitive variables
//! (`resources/sensitive_var.rs`), which no build needs any more.

use std::collections::BTreeMap;

use amiflow_template::BuilderType;
use serde::{Deserialize, Serialize};

use crate::pipeline::PipelineRun;
use crate::{BuildState, Ctx, StepError};

use super::StepSpec;

pub const STEP: StepSpec = StepSpec {
    name: "Finalize",
    iam_actions: &["ssm:GetParametersByPath", "ssm:DeleteParameter"],
    reach: &[],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: 30,
    handler: crate::handler!(finalize),
};

/// What a local build calls here: nothing. Its one call removes a deployed execution's
/// sensitive variables' parameters; a local build holds their values, in no parameter.
fn local_calls(_: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    Vec::new()
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FinalizeInput {
    Builds(Vec<BuildState>),
    Wrapped {
        builds: Vec<BuildState>,
        /// A pipeline's state, carried on to Publish and Retain.
        #[serde(default)]
        pipeline: Option<Box<PipelineRun>>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FinalizeOutput {
    pub builds: Vec<BuildArtifact>,
    pub failed: usize,
    /// Every failure in one readable line per build; absent when all builds succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The pipeline's state, when the execution runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineRun>,
}

/// One build's outcome, with Packer's artifact id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildArtifact {
    pub name: String,
    pub builder_type: BuilderType,
    /// Packer's `Artifact.Id()`: sorted `region:id` pairs, comma-joined. Absent when the
    /// build failed or created nothing (Packer's nil artifact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_id: Option<String>,
    /// Packer's `Artifact.String()`: `AMIs were created:` or, for amazon-ebsvolume,
    /// `EBS Volumes were created:`, then one sorted `region: id` line each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    pub amis: BTreeMap<String, String>,
    pub snapshots: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub async fn finalize(ctx: &Ctx, input: FinalizeInput) -> Result<FinalizeOutput, StepError> {
    let (builds, pipeline) = match input {
        FinalizeInput::Builds(b) => (b, None),
        FinalizeInput::Wrapped { builds, pipeline } => (builds, pipeline.map(|p| *p)),
    };
    // Every build is done (a build kept for redrive fails the execution before this state);
    // a test stage may still need them, and then Notify removes them.
    let tested = pipeline
        .as_ref()
        .is_some_and(|p| !p.sensitive_vars.is_empty());
    if let Some(b) = builds
        .iter()
        .find(|b| !b.sensitive_vars.is_empty())
        .filter(|_| !tested)
    {
        crate::resources::sensitive_var::remove_all_best_effort(ctx, &b.execution).await;
    }
    Ok(FinalizeOutput {
        pipeline,
        ..summarize(builds)
    })
}

pub fn summarize(states: Vec<BuildState>) -> FinalizeOutput {
    let builds: Vec<BuildArtifact> = states.into_iter().map(artifact_of).collect();
    let failures: Vec<String> = builds
        .iter()
        .filter_map(|b| {
            b.error.as_ref().map(|e| {
                format!(
                    "build {:?} ({}) failed: {e}",
                    b.name,
                    b.builder_type.as_str()
                )
            })
        })
        .collect();
    FinalizeOutput {
        failed: failures.len(),
        cause: (!failures.is_empty()).then(|| failures.join("\n")),
        builds,
        pipeline: None,
    }
}

fn artifact_of(state: BuildState) -> BuildArtifact {
    let data = state.data;
    let error = state.error.map(|e| {
        let message = e.message();
        // aws-local-stepfunctions writes a Lambda error's Cause as "errorType: errorMessage"
        // where Step Functions writes the JSON payload: both read the same here.
        let message = message
            .strip_prefix(&format!("{}: ", e.error))
            .unwrap_or(&message)
            .to_string();
        format!("{}: {message}", e.error)
    });
    let pairs: Vec<String> = if state.build.builder_type == BuilderType::EbsVolume {
        data.volumes
            .iter()
            .chain(data.snapshots.iter())
            .flat_map(|(region, ids)| ids.iter().map(move |id| format!("{region}:{id}")))
            .collect()
    } else {
        data.amis
            .iter()
            .map(|(region, ami)| format!("{region}:{ami}"))
            .collect()
    };
    let artifact_id = (error.is_none() && !pairs.is_empty()).then(|| {
        let mut pairs = pairs;
        pairs.sort();
        pairs.join(",")
    });
    BuildArtifact {
        name: state.build.name,
        builder_type: state.build.builder_type,
        artifact: artifact_id
            .as_ref()
            .map(|_| packer_string(state.build.builder_type, &data)),
        artifact_id,
        amis: data.amis,
        snapshots: data.snapshots,
        volumes: data.volumes,
        error,
    }
}

/// Packer's `Artifact.String()`: `region: ami-id` lines.
pub fn packer_string(builder: BuilderType, data: &crate::state::BuildData) -> String {
    let mut lines: Vec<String> = if builder == BuilderType::EbsVolume {
        data.volumes
            .iter()
            .chain(data.snapshots.iter())
            .flat_map(|(r, ids)| ids.iter().map(move |id| format!("{r}: {id}")))
            .collect()
    } else {
        data.amis
            .iter()
            .map(|(r, ami)| format!("{r}: {ami}"))
            .collect()
    };
    lines.sort();
    let head = if builder == BuilderType::EbsVolume {
        "EBS Volumes were created:\n\n"
    } else {
        "AMIs were created:\n"
    };
    format!("{head}{}\n", lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::CaughtError;
    use serde_json::json;

    /// A build state whose build is a real prepared build of the given type.
    fn state(name: &str, builder: &str) -> BuildState {
        let builder_json = match builder {
            "amazon-ebsvolume" => json!({"type": builder, "name": name, "region": "us-east-1",
                "source_ami": "ami-12345678", "instance_type": "t3.micro", "communicator": "none",
                "ebs_volumes": [{"device_name": "/dev/sdf", "volume_size": 1}]}),
            "amazon-chroot" => json!({"type": builder, "name": name, "region": "us-east-1",
                "source_ami": "ami-12345678", "ami_name": "finalize-test"}),
            _ => json!({"type": builder, "name": name, "region": "us-east-1",
                "source_ami": "ami-12345678", "instance_type": "t3.micro", "communicator": "none", "ami_name": "finalize-test"}),
        };
        let template = json!({"builders": [builder_json]}).to_string();
        let opts = amiflow_template::PrepareOptions::new(chrono::Utc::now());
        let prepared =
            amiflow_template::prepare(&template, &opts).expect("fixture template prepares");
        serde_json::from_value(json!({
            "execution": "exec-1",
            "build": prepared.builds[0],
        }))
        .unwrap()
    }

    #[test]
    fn artifact_id_is_sorted_region_pairs_and_failures_are_counted() {
        let mut ok = state("web", "amazon-ebs");
        ok.data.amis.insert("us-west-2".into(), "ami-2".into());
        ok.data.amis.insert("eu-west-1".into(), "ami-3".into());
        ok.data.amis.insert("us-east-1".into(), "ami-1".into());
        ok.data
            .snapshots
            .insert("us-east-1".into(), vec!["snap-1".into()]);
        let mut bad = state("db", "amazon-chroot");
        bad.data.amis.insert("us-east-1".into(), "ami-9".into());
        bad.error = Some(CaughtError {
            error: "BuildFailed".into(),
            cause:
                r#"{"errorType":"BuildFailed","errorMessage":"image ami-9 failed: InternalError"}"#
                    .into(),
        });
        let out = summarize(vec![ok, bad]);
        assert_eq!(out.failed, 1);
        assert_eq!(
            out.builds[0].artifact_id.as_deref(),
            Some("eu-west-1:ami-3,us-east-1:ami-1,us-west-2:ami-2")
        );
        assert_eq!(out.builds[0].error, None);
        assert_eq!(out.builds[1].artifact_id, None);
        assert_eq!(
            out.builds[1].error.as_deref(),
            Some("BuildFailed: image ami-9 failed: InternalError")
        );
        assert!(out
            .cause
            .as_deref()
            .unwrap()
            .contains(r#"build "db" (amazon-chroot) failed"#));
        let v = serde_json::to_value(&out).unwrap();
        assert!(
            v["builds"][0].get("volumes").is_none(),
            "volumes only for builds that keep volumes"
        );
    }

    #[test]
    fn ebsvolume_artifact_lists_volumes_and_snapshots() {
        let mut s = state("vols", "amazon-ebsvolume");
        s.data
            .volumes
            .insert("us-east-1".into(), vec!["vol-2".into(), "vol-1".into()]);
        s.data
            .snapshots
            .insert("us-east-1".into(), vec!["snap-1".into()]);
        let out = summarize(vec![s]);
        assert_eq!(
            out.builds[0].artifact_id.as_deref(),
            Some("us-east-1:snap-1,us-east-1:vol-1,us-east-1:vol-2")
        );
        assert_eq!(out.failed, 0);
        assert_eq!(out.cause, None);
    }

    #[test]
    fn accepts_the_map_output_bare_or_wrapped() {
        let bare: FinalizeInput =
            serde_json::from_value(json!([
                serde_json::to_value(state("a", "amazon-ebs")).unwrap()
            ]))
            .unwrap();
        let wrapped: FinalizeInput = serde_json::from_value(
            json!({"builds": [serde_json::to_value(state("a", "amazon-ebs")).unwrap()]}),
        )
        .unwrap();
        for input in [bare, wrapped] {
            let out = summarize(match input {
                FinalizeInput::Builds(b) | FinalizeInput::Wrapped { builds: b, .. } => b,
            });
            assert_eq!(out.builds.len(), 1);
        }
    }
}
