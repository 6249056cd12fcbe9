//! The template `start` and `policy` send: a JSON template as it is with its `-var`s, or an
//! HCL2 template (`*.pkr.hcl` file or folder) lowered first, with the values of its
//! sensitive variables as the `-var`s.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;

pub fn template_and_vars(
    path: &Path,
    vars: BTreeMap<String, String>,
) -> anyhow::Result<(Value, BTreeMap<String, String>)> {
    if amiflow_template::is_hcl2_path(path) {
        let mut opts = amiflow_template::PrepareOptions::new(chrono::Utc::now()).with_process_env();
        opts.vars = vars.into_iter().collect();
        opts.data_sources = Some(amiflow::data_sources::AwsDataLookup::sources());
        let h = amiflow_template::hcl2::lower(path, &opts)
            .map_err(|p| anyhow::anyhow!("the template {} is not valid:\n{p}", path.display()))?;
        return Ok((h.template, h.vars.into_iter().collect()));
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read template {}", path.display()))?;
    let template: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a Packer JSON template", path.display()))?;
    Ok((template, vars))
}
