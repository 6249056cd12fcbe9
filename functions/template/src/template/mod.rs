//! Packer JSON templates: structure, variables, interpolation, deferred fields, secrets.
//!
//! * [`raw`] checks the template's structure as Packer does (root keys, builders and
//!   their names, provisioners with only/except/override, post-processors);
//! * [`variables`] resolves defaults, -var-file, -var and required variables;
//! * [`eval`] renders `{{ ... }}` with Packer's functions (why not gtmpl: see there);
//! * [`deferred`] lists the fields rendered later with build data;
//! * [`secrets`] keeps sensitive values out of what is serialized;
//! * [`limits`] bounds nesting, variable chains and expansion, so no input aborts the process;
//! * [`prepare`] and [`inspect`] tie them together.

pub mod deferred;
pub(crate) mod eval;
pub mod funcs;
pub(crate) mod golayout;
pub mod inspect;
pub mod limits;
pub mod prepare;
pub(crate) mod raw;
pub mod secrets;
pub(crate) mod syntax;
pub(crate) mod variables;
pub(crate) mod version;

use std::collections::BTreeMap;

pub use eval::PACKER_COMPAT_VERSION;

/// Packer's build data, `{{ build `X` }}` (`build.X` in HCL2): what the steps provide (see
/// `build_data` in functions/amiflow/src/steps/provision.rs and `template_data` in
/// functions/amiflow/src/build_render.rs). Validation refuses any other name.
pub const BUILD_DATA: &[&str] = &[
    "BuildRegion",
    "ConnType",
    "Host",
    "ID",
    "PackerRunUUID",
    "Port",
    "SSHPrivateKey",
    "SSHPublicKey",
    "SourceAMI",
    "SourceAMICreationDate",
    "SourceAMIName",
    "SourceAMIOwner",
    "SourceAMIOwnerName",
    "SourceAMITags",
    "User",
];
pub use raw::{SUPPORTED_POST_PROCESSORS, SUPPORTED_PROVISIONERS};

/// Renders a deferred field (kept by `prepare` with its `{{ ... }}` that use build data) with
/// the build data a step has: `.SourceAMI`, `.SourceAMIName`, `.BuildRegion`, `.Device`,
/// `.MountPath`, `.Command`, … and `{{ build `Name` }}`. A nested field such as
/// `{{ .SourceAMITags.Team }}` is looked up under the dotted key `SourceAMITags.Team`.
/// Pure functions (`upper`, `replace`, `clean_resource_name` …) work; `user`, `env`,
/// `timestamp` were resolved at prepare and are refused here. Secrets placeholders pass
/// through: reveal them after rendering, at the moment of use.
pub fn render_later(text: &str, build_data: &BTreeMap<String, String>) -> Result<String, String> {
    let scope = eval::Scope {
        time: None,
        user: None,
        env: None,
        build_name: None,
        build_type: None,
        template_dir: None,
        data: eval::Data::Values(build_data),
    };
    eval::render(text, &scope).map_err(|e| e.describe(text))
}
#[cfg(test)]
mod prepare_tests;
