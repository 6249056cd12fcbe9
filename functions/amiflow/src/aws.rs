//! What every creating or waiting step shares: the build tag, ClientTokens and
//! deterministic names (idempotent creates), build-data rendering of tags, wait budgets.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use chrono::Utc;
use uuid::Uuid;

use amiflow_template::config::AwsPolling;

use crate::state::{BuildData, BUILD_TAG};
use crate::{BuildState, StepError};

/// A stable UUID for (execution, build, what): the same on every retry of a step.
pub fn stable_uuid(state: &BuildState, what: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("amiflow/{}/{}/{}", state.execution, state.build.name, what).as_bytes(),
    )
}

/// EC2's idempotency token for one create of one step.
pub fn client_token(state: &BuildState, step: &str) -> String {
    stable_uuid(state, step).to_string()
}

/// A temporary resource name that is the same on every retry: `<prefix>_<uuid>`.
pub fn temp_name(state: &BuildState, prefix: &str, what: &str) -> String {
    format!("{prefix}_{}", stable_uuid(state, what).simple())
}

/// The `tag:amiflow:build = execution` filter that finds everything this build created.
pub fn build_filter(execution: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{BUILD_TAG}"))
        .values(execution)
        .build()
}

pub fn filter(name: &str, values: impl IntoIterator<Item = impl Into<String>>) -> Filter {
    let mut b = Filter::builder().name(name);
    for v in values {
        b = b.values(v);
    }
    b.build()
}

/// Tag naming the build (of possibly several in one execution) that created a resource:
/// a build's Cleanup and idempotent lookups match it, the janitor matches the execution only.
pub const BUILD_NAME_TAG: &str = "amiflow:build-name";

/// The build's own tags: `amiflow:build` = execution, `amiflow:build-name` = build name.
pub fn build_tags(state: &BuildState) -> BTreeMap<String, String> {
    BTreeMap::from([
        (BUILD_TAG.to_string(), state.execution.clone()),
        (BUILD_NAME_TAG.to_string(), state.build.name.clone()),
    ])
}

/// The given (already rendered) tags plus the build's own; the build's own always win.
pub fn tags_with_build(state: &BuildState, extra: &BTreeMap<String, String>) -> Vec<Tag> {
    let mut all = extra.clone();
    all.extend(build_tags(state));
    all.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

pub fn tag_spec(
    rt: ResourceType,
    state: &BuildState,
    extra: &BTreeMap<String, String>,
) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(rt)
        .set_tags(Some(tags_with_build(state, extra)))
        .build()
}

/// Filters matching what this build (not just this execution) created.
pub fn own_filters(state: &BuildState) -> Vec<Filter> {
    vec![
        build_filter(&state.execution),
        filter(&format!("tag:{BUILD_NAME_TAG}"), [state.build.name.clone()]),
    ]
}

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

/// Renders both keys and values of a tag map (Packer renders both).
pub fn render_tags(
    key: &str,
    tags: &BTreeMap<String, String>,
    data: &BuildData,
    region: &str,
) -> Result<BTreeMap<String, String>, StepError> {
    tags.iter()
        .map(|(k, v)| {
            Ok((
                render(key, k, data, region)?,
                render(&format!("{key}.{k}"), v, data, region)?,
            ))
        })
        .collect()
}

/// The longest a wait may last: `aws_polling` when set (Packer v2 semantics:
/// attempts × delay, delay 2 s unless set), else the waiter's own default.
pub fn wait_budget(polling: Option<&AwsPolling>, default: Duration) -> Duration {
    match polling {
        Some(p) if p.max_attempts.unwrap_or(0) > 0 => Duration::from_secs(
            u64::from(p.max_attempts.unwrap())
                * u64::from(p.delay_seconds.filter(|d| *d > 0).unwrap_or(2)),
        ),
        _ => default,
    }
}

/// Marks the start of a wait; called by the step that starts the thing waited for, so the
/// start survives the wait's own retries (which re-run with the same input).
pub fn begin_wait(state: &mut BuildState, wait: &str) {
    state.waits.entry(wait.to_string()).or_insert_with(Utc::now);
}

/// Not ready yet: `NotReady` while within the budget, `BuildFailed` past it.
pub fn not_ready(state: &BuildState, wait: &str, default: Duration, what: String) -> StepError {
    if let Some(start) = state.waits.get(wait) {
        let budget = wait_budget(state.build.config.aws_polling(), default);
        let elapsed = (Utc::now() - *start).to_std().unwrap_or_default();
        if elapsed > budget {
            return StepError::BuildFailed(format!(
                "{what}: still not ready after {}s (limit {}s). Raise aws_polling.max_attempts / \
                 aws_polling.delay_seconds in the template to wait longer",
                elapsed.as_secs(),
                budget.as_secs()
            ));
        }
    }
    StepError::NotReady(what)
}

/// The wait is over: forget its start.
pub fn end_wait(state: &mut BuildState, wait: &str) {
    state.waits.remove(wait);
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
        assert_eq!(
            render_tags(
                "run_tags",
                &BTreeMap::from([(
                    "{{ .BuildRegion }}".to_string(),
                    "{{ .SourceAMI }}".to_string()
                )]),
                &data,
                "r"
            )
            .unwrap(),
            BTreeMap::from([("r".to_string(), "ami-1".to_string())])
        );
    }

    #[test]
    fn polling_budget_follows_packer_v2() {
        assert_eq!(
            wait_budget(None, Duration::from_secs(600)),
            Duration::from_secs(600)
        );
        let attempts = AwsPolling {
            max_attempts: Some(240),
            delay_seconds: None,
        };
        assert_eq!(
            wait_budget(Some(&attempts), Duration::from_secs(600)),
            Duration::from_secs(480)
        );
        let both = AwsPolling {
            max_attempts: Some(240),
            delay_seconds: Some(15),
        };
        assert_eq!(
            wait_budget(Some(&both), Duration::from_secs(600)),
            Duration::from_secs(3600)
        );
    }
}
