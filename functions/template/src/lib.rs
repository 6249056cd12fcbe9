//! Packer templates turned into typed, validated build configs.
//!
//! # Layout
//!
//! * [`template`]: the template as text and JSON: structure checks, variables,
//!   `{{ ... }}` interpolation, fields rendered later with build data, secrets; [`prepare`]
//!   and [`inspect`] are the entry points.
//! * [`config`]: one typed config per builder, built from its groups (access, AMI, run,
//!   communicator). Each config's file holds its struct, its defaults (`normalize`) and its
//!   rules (`check`); `config/validate.rs` runs the passes, `config/check.rs` holds the
//!   machinery the rules share.
//! * [`provisioner`]: typed `shell`, `file` and `shell-local` provisioners and their rules.
//! * [`problem`]: what every pass reports: a [`Problem`] names the builder, the key and the fix.
//! * [`hcl2`]: HCL2 templates (`*.pkr.hcl` files and folders) lowered to the JSON template
//!   value, so that everything above stays one path.
//!
//! Data flows one way: template text → [`template`] (parse, variables, interpolation)
//! → [`config`] (one typed config per builder, Packer's defaults, validation)
//! → [`PreparedBuild`]s that the steps carry in their build state.

pub mod config;
pub mod hcl2;
pub mod pipeline;
pub mod problem;
pub mod provisioner;
pub mod template;

pub use config::{BuilderConfig, BuilderType};
pub use hcl2::{is_hcl2_path, LoadedTemplate};
pub use problem::{Problem, Problems};
pub use template::inspect::{
    inspect, BuilderSummary, StepSummary, TemplateSummary, VariableSummary,
};
pub use template::prepare::{parse_var_flag, prepare, PrepareOptions, Prepared};
pub use template::render_later;
pub use template::secrets::Secrets;

use serde::{Deserialize, Serialize};

/// One build of a template, ready to run: everything interpolated except the fields Packer
/// renders later with build data (they keep their `{{...}}`), and no secret values —
/// sensitive variables appear as placeholders resolved only at the moment of use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreparedBuild {
    /// The builder's `name`, or its type when unnamed (Packer's rule).
    pub name: String,
    pub builder_type: BuilderType,
    pub config: BuilderConfig,
    /// Provisioners that apply to this build (`only`/`except` applied, `override` merged).
    #[serde(default)]
    pub provisioners: Vec<serde_json::Value>,
    /// The template's `error-cleanup-provisioner` for this build (`only`/`except` applied):
    /// run when the build fails, before Cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_cleanup_provisioner: Option<serde_json::Value>,
    #[serde(default)]
    pub post_processors: Vec<serde_json::Value>,
}

/// The shared bad-template corpus (tests/templates/bad: `*.json` with a sibling `*.expect`,
/// one expected substring per line) and the examples (examples/*.json, which must prepare).
#[cfg(test)]
mod corpus {
    use std::path::{Path, PathBuf};

    use crate::{prepare, PrepareOptions};

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn json_files(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.expect("readable entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
    }

    fn options() -> PrepareOptions {
        PrepareOptions::new(chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid time"))
    }

    #[test]
    fn every_bad_template_yields_its_messages() {
        let files = json_files(&repo().join("tests/templates/bad"));
        let mut failures = Vec::new();
        for path in &files {
            let expect_path = path.with_extension("expect");
            let Ok(expect) = std::fs::read_to_string(&expect_path) else {
                failures.push(format!("{}: no sibling .expect file", path.display()));
                continue;
            };
            let text = std::fs::read_to_string(path).expect("readable template");
            match prepare(&text, &options()) {
                Ok(_) => failures.push(format!("{}: prepared without problems", path.display())),
                Err(problems) => {
                    let out = problems.to_string();
                    for want in expect.lines().filter(|l| !l.trim().is_empty()) {
                        if !out.contains(want) {
                            failures
                                .push(format!("{}: missing {want:?} in:\n{out}", path.display()));
                        }
                    }
                }
            }
        }
        println!("bad-template corpus: {} templates checked", files.len());
        assert!(
            !files.is_empty(),
            "no bad templates found under tests/templates/bad"
        );
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    #[test]
    fn every_example_prepares() {
        let files = json_files(&repo().join("examples"));
        let mut failures = Vec::new();
        for path in &files {
            let text = std::fs::read_to_string(path).expect("readable example");
            // A required variable is part of an example (a password, a VPC): give it a value.
            let mut opts = options();
            if let Ok(summary) = crate::inspect(&text) {
                opts.vars = summary
                    .variables
                    .iter()
                    .filter(|v| v.required)
                    .map(|v| (v.name.clone(), format!("example-{}", v.name)))
                    .collect();
            }
            if let Err(problems) = prepare(&text, &opts) {
                failures.push(format!("{}:\n{problems}", path.display()));
            }
        }
        println!("examples: {} templates checked", files.len());
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }
}
