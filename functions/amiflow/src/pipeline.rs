//! A pipeline's part of the execution state: the checked pipeline file (the
//! `amiflow-template` crate's [`Pipeline`]) and what its states have learnt and done.
//!
//! Prepare starts it ([`begin`]: the pipeline checked with the template, the fingerprint's
//! template and file parts); Fingerprint resolves the source images, decides whether the run
//! builds and tags the build with the pipeline; Finalize carries it past the builds;
//! PlanTests and JudgeTests run the test stage on the image made; Publish and Retain act on it. An execution without a pipeline carries none,
//! and those states pass their input on unchanged.

use std::collections::BTreeMap;
use std::path::Path;

use amiflow_template::pipeline::{digest, provisioner_files, FingerprintParts, Pipeline};
use amiflow_template::{PreparedBuild, Problem, Problems};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PipelineRun {
    pub pipeline: Pipeline,
    /// What the build is made from; Fingerprint adds the resolved source images.
    pub parts: FingerprintParts,
    /// Set by Fingerprint: tagged on the images made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub status: RunStatus,
    /// The newest image of the pipeline in the build region before this run, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_image: Option<String>,
    /// The regions the build's image is in: its build region and `ami_regions`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Region → the pipeline's image this run leaves current: the one it built, or when up
    /// to date the newest with the same fingerprint. Publish names it, Retain spares it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub current: BTreeMap<String, String>,
    /// Region → image id Publish wrote to the `publish.ssm_parameter` there (only where it
    /// named another image, so a run that changes nothing writes nothing).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub published: BTreeMap<String, String>,
    /// What retention did (or, with `dry_run`, would do).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<Retired>,
    /// Retain only reports what it would do.
    #[serde(default)]
    pub dry_run: bool,
    /// The `approval.timeout` in seconds: the Approve state's `TimeoutSecondsPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_seconds: Option<u64>,
    /// Region → image Withdraw removed (with its snapshots) because the run was not
    /// approved or its test failed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub withdrawn: BTreeMap<String, String>,
    /// The test stage's build (amazon-ebs, named `<build>.test`), prepared and checked with
    /// the template; PlanTests gives it the new image as its source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_build: Option<PreparedBuild>,
    /// A deployed run with a test stage: its sensitive variables (name → parameter, never a
    /// value), which the test build reveals as the builds do. Finalize leaves them to Notify,
    /// the last state of every pipeline run, which removes them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sensitive_vars: BTreeMap<String, String>,
    /// What the test stage did, once JudgeTests has seen it pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tested: Option<Tested>,
}

/// A test stage that passed: the image it launched, where, and the instance that ran it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tested {
    pub region: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// How the run goes: it builds, or its fingerprint matched the newest image and it builds
/// nothing.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    #[default]
    Building,
    UpToDate,
    /// Rejected, or not approved in time: the images built were withdrawn.
    Rejected,
    /// The test stage failed on the new image: the images built were withdrawn.
    TestFailed,
}

/// One older image retention acted on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Retired {
    pub region: String,
    pub image: String,
    pub action: amiflow_template::pipeline::RetainAction,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
}

impl PipelineRun {
    /// The one line a person reads about the run's outcome.
    pub fn summary(&self) -> String {
        let name = &self.pipeline.name;
        let withdrawn = self
            .withdrawn
            .iter()
            .map(|(region, image)| format!("{region}: {image}"))
            .collect::<Vec<_>>()
            .join(", ");
        match self.status {
            RunStatus::UpToDate => format!(
                "pipeline {name}: up to date: {} has fingerprint {}; nothing was built",
                self.previous_image.as_deref().unwrap_or("the newest image"),
                self.fingerprint.as_deref().unwrap_or("?")
            ),
            RunStatus::Rejected => format!(
                "pipeline {name}: not approved; the images built were removed ({withdrawn})"
            ),
            RunStatus::TestFailed => format!(
                "pipeline {name}: the test failed; the images built were removed ({withdrawn})"
            ),
            RunStatus::Building => format!(
                "pipeline {name}: built with fingerprint {}",
                self.fingerprint.as_deref().unwrap_or("?")
            ),
        }
    }
}

/// Prepare's part: the pipeline checked against the prepared builds, and the fingerprint's
/// parts known before any AWS call. `fixed_time_builds` are the same builds prepared at a
/// fixed time (so `{{timestamp}}` does not change the digest); `template_dir` is where
/// relative provisioner files are read from.
pub fn begin(
    pipeline: Pipeline,
    builds: &[amiflow_template::PreparedBuild],
    fixed_time_builds: &[amiflow_template::PreparedBuild],
    template_dir: Option<&Path>,
) -> Result<PipelineRun, Problems> {
    let problem = |m: String| Problems(vec![Problem::new(m).in_builder("pipeline")]);
    let [build] = builds else {
        let names: Vec<&str> = builds.iter().map(|b| b.name.as_str()).collect();
        return Err(problem(format!(
            "a pipeline makes one image, and the template makes {} builds ({}): keep one with -only",
            builds.len(),
            names.join(", ")
        )));
    };
    if build.config.ami().is_none() {
        return Err(problem(format!(
            "build {} ({}) makes no image; a pipeline needs a builder that makes an AMI",
            build.name,
            build.builder_type.as_str()
        )));
    }
    let fixed = fixed_time_builds
        .iter()
        .find(|b| b.name == build.name)
        .unwrap_or(build);
    let rendered = serde_json::to_string(&(&fixed.config, &fixed.provisioners))
        .expect("a prepared build serializes");
    let files = provisioner_files(&build.provisioners)
        .into_iter()
        .map(|file| {
            let path = match template_dir {
                Some(dir) => dir.join(&file),
                None => Path::new(&file).to_path_buf(),
            };
            // An unreadable file fails the build at Provision; here it only has to be stable.
            let hash = std::fs::read(&path)
                .map(|bytes| digest(&bytes))
                .unwrap_or_else(|_| "unreadable".into());
            (file, hash)
        })
        .collect();
    if pipeline.test.is_some() && build.builder_type == amiflow_template::BuilderType::Instance {
        return Err(Problems(vec![Problem::key(
            "test",
            "amazon-instance makes instance-store images, and the test stage launches EBS-backed \
             images only; remove the test section, or test the image from a separate run",
        )
        .in_builder("pipeline")]));
    }
    let test_build = pipeline
        .test
        .as_ref()
        .map(|t| t.build_for(build))
        .transpose()?;
    let approval_seconds = pipeline
        .approval
        .as_ref()
        .map(|a| a.timeout.as_std().as_secs().max(1));
    Ok(PipelineRun {
        pipeline,
        parts: FingerprintParts {
            source_images: BTreeMap::new(),
            template: digest(rendered.as_bytes()),
            files,
        },
        fingerprint: None,
        status: RunStatus::Building,
        previous_image: None,
        regions: Vec::new(),
        current: BTreeMap::new(),
        published: BTreeMap::new(),
        retired: Vec::new(),
        dry_run: false,
        approval_seconds,
        withdrawn: BTreeMap::new(),
        test_build,
        sensitive_vars: BTreeMap::new(),
        tested: None,
    })
}
