//! Rendering the fields Packer renders late (tags, descriptions, names of copies) with the
//! build data that only steps know: `{{ .SourceAMIName }}`, `{{ .BuildRegion }}`, …

use std::collections::BTreeMap;

use crate::provision::Secrets;
use crate::state::BuildData;
use crate::StepError;

/// Packer's build template data for a region (`.BuildRegion`, `.SourceAMI`, ...).
pub fn build_template_data(data: &BuildData, region: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("BuildRegion".to_string(), region.to_string());
    let mut put = |k: &str, v: &Option<String>| {
        m.insert(k.to_string(), v.clone().unwrap_or_default());
    };
    put("SourceAMI", &data.source_ami);
    put("SourceAMIName", &data.source_ami_name);
    put("SourceAMICreationDate", &data.source_ami_creation_date);
    put("SourceAMIOwner", &data.source_ami_owner);
    put("SourceAMIOwnerName", &data.source_ami_owner_name);
    m
}

/// Renders a field Packer renders late (tags, descriptions) with the build data: the
/// provisioners' renderer ([`crate::provision::render`], the template crate's
/// `render_later`), so `{{ .SourceAMIName | clean_resource_name }}` works here as there.
/// `key` names the field in the error.
pub fn render(key: &str, text: &str, data: &BuildData, region: &str) -> Result<String, StepError> {
    let mut vars = build_template_data(data, region);
    vars.extend(
        data.source_ami_tags
            .iter()
            .map(|(k, v)| (format!("SourceAMITags.{k}"), v.clone())),
    );
    crate::provision::render::render(
        text,
        &crate::provision::render::RenderContext::with_build(&vars),
    )
    .map_err(|e| StepError::BuildFailed(format!("{key}: {e}")))
}

/// Renders both keys and values of a tag map (Packer renders both), with the sensitive
/// variables they use revealed: a tag gets the value, as in Packer (`secrets` are the
/// invocation's, `resources/sensitive_var.rs`).
pub fn render_tags(
    secrets: &Secrets,
    key: &str,
    tags: &BTreeMap<String, String>,
    data: &BuildData,
    region: &str,
) -> Result<BTreeMap<String, String>, StepError> {
    tags.iter()
        .map(|(k, v)| {
            Ok((
                secrets.reveal(&render(key, k, data, region)?),
                secrets.reveal(&render(&format!("{key}.{k}"), v, data, region)?),
            ))
        })
        .collect()
}

/// The tags an image's snapshots (and the image made from the instance) carry: the rendered
/// `run_tags` unless `skip_ami_run_tags`, plus the build's own tags, which win.
pub fn image_run_tags(
    ctx: &crate::Ctx,
    state: &crate::BuildState,
    region: &str,
) -> Result<std::collections::BTreeMap<String, String>, crate::StepError> {
    let cfg = &state.build.config;
    let mut tags = if cfg.skip_ami_run_tags() {
        std::collections::BTreeMap::new()
    } else {
        render_tags(
            &ctx.secrets,
            "run_tags",
            cfg.run_tags(),
            &state.data,
            region,
        )?
    };
    tags.extend(crate::identity::build_tags(state));
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_build_data_with_the_template_renderer() {
        let data = BuildData {
            source_ami: Some("ami-1".into()),
            source_ami_name: Some("amzn2: x".into()),
            source_ami_tags: BTreeMap::from([("Team".to_string(), "core".to_string())]),
            ..Default::default()
        };
        let r = |t: &str| render("tags.Name", t, &data, "eu-west-1");
        assert_eq!(
            r("from {{ .SourceAMIName }} ({{.SourceAMI}}) in {{ .BuildRegion }}").unwrap(),
            "from amzn2: x (ami-1) in eu-west-1"
        );
        assert_eq!(r("{{ .SourceAMIName | clean_resource_name }} {{ .SourceAMITags.Team }} {{ build `SourceAMI` }}").unwrap(), "amzn2- x core ami-1");
        let e = r("{{ .Nope }}").unwrap_err();
        assert!(
            e.message().contains("tags.Name") && e.message().contains("Nope"),
            "{e:?}"
        );
        let secrets = Secrets::from_pairs([("pw".to_string(), "hunter2".to_string())]);
        assert_eq!(
            render_tags(
                &secrets,
                "run_tags",
                &BTreeMap::from([
                    (
                        "{{ .BuildRegion }}".to_string(),
                        "{{ .SourceAMI }}".to_string()
                    ),
                    ("Secret".to_string(), "pw=<sensitive:pw>".to_string())
                ]),
                &data,
                "r"
            )
            .unwrap(),
            BTreeMap::from([
                ("r".to_string(), "ami-1".to_string()),
                ("Secret".to_string(), "pw=hunter2".to_string())
            ])
        );
    }
}
