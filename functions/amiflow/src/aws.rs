//! What every creating or waiting step shares: the build tag, ClientTokens and
//! deterministic names (idempotent creates), build-data rendering of tags, wait budgets.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use chrono::Utc;
use uuid::Uuid;

use crate::ebs_config::EbsView;
use crate::state::{BuildData, BUILD_TAG};
use crate::{BuildState, StepError};

/// A stable UUID for (execution, build, what): the same on every retry of a step.
pub fn stable_uuid(state: &BuildState, what: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("amiflow/{}/{}/{}", state.execution, state.build.name, what).as_bytes())
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
    Filter::builder().name(format!("tag:{BUILD_TAG}")).values(execution).build()
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
    all.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

pub fn tag_spec(rt: ResourceType, state: &BuildState, extra: &BTreeMap<String, String>) -> TagSpecification {
    TagSpecification::builder().resource_type(rt).set_tags(Some(tags_with_build(state, extra))).build()
}

/// Filters matching what this build (not just this execution) created.
pub fn own_filters(state: &BuildState) -> Vec<Filter> {
    vec![build_filter(&state.execution), filter(&format!("tag:{BUILD_NAME_TAG}"), [state.build.name.clone()])]
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

/// Renders `{{ .Name }}` references to build data in a string rendered late (tags,
/// descriptions). A small stand-in for the template crate's `render_later`: it knows only
/// the build data variables and `.SourceAMITags.<key>`; anything else is left as written.
pub fn render(text: &str, data: &BuildData, region: &str) -> String {
    if !text.contains("{{") {
        return text.to_string();
    }
    let vars = build_template_data(data, region);
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = after[..end].trim().trim_start_matches('-').trim_end_matches('-').trim();
        let value = inner.strip_prefix('.').and_then(|name| {
            if let Some(tag) = name.strip_prefix("SourceAMITags.") {
                data.source_ami_tags.get(tag).cloned()
            } else {
                vars.get(name).cloned()
            }
        });
        match value {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Renders both keys and values of a tag map (Packer renders both).
pub fn render_tags(tags: &BTreeMap<String, String>, data: &BuildData, region: &str) -> BTreeMap<String, String> {
    tags.iter().map(|(k, v)| (render(k, data, region), render(v, data, region))).collect()
}

/// The longest a wait may last: `aws_polling` when set (Packer v2 semantics:
/// attempts × delay, delay 2 s unless set), else the waiter's own default.
pub fn wait_budget(cfg: &EbsView, default: Duration) -> Duration {
    match &cfg.aws_polling {
        Some(p) if p.max_attempts.unwrap_or(0) > 0 => {
            Duration::from_secs(p.max_attempts.unwrap() * p.delay_seconds.filter(|d| *d > 0).unwrap_or(2))
        }
        _ => default,
    }
}

/// Marks the start of a wait; called by the step that starts the thing waited for, so the
/// start survives the wait's own retries (which re-run with the same input).
pub fn begin_wait(state: &mut BuildState, wait: &str) {
    state.waits.entry(wait.to_string()).or_insert_with(Utc::now);
}

/// Not ready yet: `NotReady` while within the budget, `BuildFailed` past it.
pub fn not_ready(state: &BuildState, cfg: &EbsView, wait: &str, default: Duration, what: String) -> StepError {
    if let Some(start) = state.waits.get(wait) {
        let budget = wait_budget(cfg, default);
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
    fn renders_build_data_and_leaves_the_rest() {
        let data = BuildData { source_ami: Some("ami-1".into()), source_ami_name: Some("amzn2".into()), ..Default::default() };
        assert_eq!(render("from {{ .SourceAMIName }} ({{.SourceAMI}}) in {{ .BuildRegion }}", &data, "eu-west-1"), "from amzn2 (ami-1) in eu-west-1");
        assert_eq!(render("{{ timestamp }} {{ .Nope }}", &data, "r"), "{{ timestamp }} {{ .Nope }}");
        assert_eq!(render("open {{ .SourceAMI", &data, "r"), "open {{ .SourceAMI");
    }

    #[test]
    fn polling_budget_follows_packer_v2() {
        let mut cfg = EbsView::default();
        assert_eq!(wait_budget(&cfg, Duration::from_secs(600)), Duration::from_secs(600));
        cfg.aws_polling = Some(crate::ebs_config::AwsPolling { max_attempts: Some(240), delay_seconds: None });
        assert_eq!(wait_budget(&cfg, Duration::from_secs(600)), Duration::from_secs(480));
        cfg.aws_polling = Some(crate::ebs_config::AwsPolling { max_attempts: Some(240), delay_seconds: Some(15) });
        assert_eq!(wait_budget(&cfg, Duration::from_secs(600)), Duration::from_secs(3600));
    }
}
