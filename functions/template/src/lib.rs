//! Packer templates turned into typed, validated build configs.
//!
//! Data flows one way: template text → [`template`] (parse, variables, interpolation)
//! → [`config`] (one typed config per builder, Packer's defaults, validation)
//! → [`PreparedBuild`]s that the steps carry in their build state.

pub mod config;
pub mod problem;
pub mod template;

pub use config::{BuilderConfig, BuilderType};
pub use problem::{Problem, Problems};
pub use template::inspect::{inspect, BuilderSummary, StepSummary, TemplateSummary, VariableSummary};
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
    #[serde(default)]
    pub post_processors: Vec<serde_json::Value>,
}
