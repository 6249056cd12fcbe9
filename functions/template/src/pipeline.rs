//! The pipeline file: what runs around a template's build (rebuild only on change, test the
//! new image, approve, publish the image id, retain old images, notify), typed, with its
//! rules beside it. Like a template, a pipeline file is checked as a whole before anything
//! exists: every problem at once, each naming its key, unknown keys with a "did you mean".
//!
//! ```json
//! {"name": "web-nightly", "rebuild": "on_change",
//!  "publish": {"ssm_parameter": "/images/web/latest"},
//!  "retain": {"keep_latest": 3, "deprecate_older": true, "delete_after_days": 90}}
//! ```
//!
//! The fingerprint of a build (what `rebuild: on_change` compares) is made here too: it is
//! a pure function of what the build would be made from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::check::{closest, is_account, is_region};
use crate::config::Duration;
use crate::problem::{Problem, Problems};
use crate::{BuilderType, PreparedBuild};

/// Tag on every image a pipeline makes; its value is the pipeline's name. Retention and
/// `on_change` look only at images carrying it.
pub const PIPELINE_TAG: &str = "amiflow:pipeline";
/// Tag holding the build's fingerprint on every image a pipeline makes.
pub const FINGERPRINT_TAG: &str = "amiflow:fingerprint";

const TOP_KEYS: &[&str] = &[
    "name", "rebuild", "test", "approval", "publish", "retain", "notify",
];
/// `test`'s own keys; it also takes every communicator key of a builder (`communicator`,
/// `ssh_*`, `ssm_*`, ...), which override the template's for the test instance.
const TEST_KEYS: &[&str] = &["instance_type", "provisioners", "timeout"];
const APPROVAL_KEYS: &[&str] = &["timeout"];
const PUBLISH_KEYS: &[&str] = &["ssm_parameter"];
const RETAIN_KEYS: &[&str] = &["keep_latest", "deprecate_older", "delete_after_days"];
const NOTIFY_KEYS: &[&str] = &["sns_topic_arn", "eventbridge"];

/// The longest approval wait: a year, the longest a Step Functions execution (and so its
/// callback task) may run.
pub const MAX_APPROVAL_SECONDS: u64 = 365 * 24 * 3600;

/// The longest pipeline name: it is a tag value (256) and part of messages; kept short.
const MAX_NAME: usize = 128;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pipeline {
    /// The pipeline's identity: the value of [`PIPELINE_TAG`] on the images it makes.
    pub name: String,
    #[serde(default)]
    pub rebuild: Rebuild,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<TestStage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Publish>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<Retain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
}

/// When a run builds: always (default), or only when its fingerprint differs from the
/// newest image of the pipeline.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Rebuild {
    #[default]
    Always,
    OnChange,
}

/// `test`: after the image is made, an instance of it (in the build region) runs the
/// `provisioners` over the communicator, then goes. A failing test withdraws the images.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TestStage {
    pub instance_type: String,
    pub provisioners: Vec<Value>,
    /// The default `timeout` of each test provisioner that has none.
    pub timeout: Duration,
    /// Communicator keys as written in the stage (`communicator`, `ssh_username`, ...):
    /// they override the template's for the test instance.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub connection: Map<String, Value>,
}

/// The name of the build that tests `build`'s image: the `amiflow:build-name` tag of what
/// the test creates, so that neither Cleanup ever takes the other's resources.
pub fn test_build_name(build: &str) -> String {
    format!("{build}.test")
}

/// The test build's source image until the image exists (PlanTests puts the new image's id
/// in its place): never launched, RunInstances would refuse it.
pub const NEW_IMAGE_PLACEHOLDER: &str = "ami-00000000";

/// Run-config keys of the template that the test instance does not take: it starts from the
/// new image, on demand, without the build's user data.
const NOT_FOR_THE_TEST: &[&str] = &[
    "source_ami_filter",
    "user_data",
    "user_data_file",
    "spot_price",
    "spot_price_auto_product",
    "spot_instance_types",
    "spot_allocation_strategy",
    "spot_tags",
    "block_duration_minutes",
    "skip_profile_validation",
];

/// The keys a builder's access, run and communicator settings take (their serialized
/// defaults: every field is serialized but the secrets): what a test build can carry over.
fn carried_keys() -> std::collections::BTreeSet<String> {
    use crate::config::{AccessConfig, CommunicatorConfig, RunConfig};
    let defaults = [
        serde_json::to_value(AccessConfig::default()),
        serde_json::to_value(RunConfig::default()),
        serde_json::to_value(CommunicatorConfig::default()),
    ];
    defaults
        .into_iter()
        .flat_map(|v| match v {
            Ok(Value::Object(fields)) => fields.into_iter().map(|(k, _)| k).collect(),
            _ => Vec::new(),
        })
        .collect()
}

impl TestStage {
    /// The amazon-ebs build that tests `built`'s image: the template's region, credentials,
    /// network, instance profile and communicator, with the stage's instance type, its
    /// communicator keys over the template's, and its provisioners; checked as any builder
    /// is, each problem named under `test.`.
    /// The amazon-ebs builder keys of the test build, from a builder's keys: its
    /// credentials, network, instance profile and communicator (the access, run and
    /// communicator keys) but [`NOT_FOR_THE_TEST`], with the new image as the source and the
    /// stage's instance type and communicator keys. `amiflow policy` reads the same keys.
    pub fn builder_keys(&self, builder: &Map<String, Value>) -> Map<String, Value> {
        let carried = carried_keys();
        let mut raw: Map<String, Value> = builder
            .iter()
            .filter(|(k, _)| carried.contains(*k) && !NOT_FOR_THE_TEST.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        raw.insert("source_ami".into(), NEW_IMAGE_PLACEHOLDER.into());
        raw.insert("instance_type".into(), self.instance_type.clone().into());
        raw.extend(self.connection.clone());
        raw
    }

    pub fn build_for(&self, built: &PreparedBuild) -> Result<PreparedBuild, Problems> {
        let name = test_build_name(&built.name);
        let mut written = Map::new();
        let config = &built.config;
        let parts = [
            serde_json::to_value(config.access()).ok(),
            config.run().and_then(|r| serde_json::to_value(r).ok()),
            config.comm().and_then(|c| serde_json::to_value(c).ok()),
        ];
        for part in parts.into_iter().flatten() {
            if let Value::Object(fields) = part {
                written.extend(fields);
            }
        }
        let mut raw = self.builder_keys(&written);
        raw.insert("ami_name".into(), format!("{name} (makes no image)").into());
        let under_test = |p: Problem| {
            let key = p
                .key
                .map_or_else(|| "test".to_string(), |k| format!("test.{k}"));
            Problem::key(key, p.message).in_builder("pipeline")
        };
        let config = crate::config::from_builder_with_env(&name, BuilderType::Ebs, &raw, &|_| None)
            .map_err(|ps| Problems(ps.into_iter().map(under_test).collect()))?;
        let connects = config.comm().is_some_and(|c| c.communicator != "none");
        let provisioners: Vec<Value> = self
            .provisioners
            .iter()
            .map(|p| {
                let mut p = p.clone();
                if let Some(o) = p.as_object_mut() {
                    o.entry("timeout")
                        .or_insert_with(|| format!("{}s", self.timeout.as_std().as_secs()).into());
                }
                p
            })
            .collect();
        let remote = provisioners
            .iter()
            .position(|p| p["type"].as_str() != Some("shell-local"));
        if let (false, Some(i)) = (connects, remote) {
            return Err(Problems(vec![Problem::key(
                format!("test.provisioners[{i}]"),
                "runs on the test instance, and the test has communicator \"none\": set \"communicator\" (\"ssh\" or \"ssm\") in the test section",
            )
            .in_builder("pipeline")]));
        }
        Ok(PreparedBuild {
            name,
            builder_type: BuilderType::Ebs,
            config,
            provisioners,
            error_cleanup_provisioner: None,
            post_processors: Vec::new(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Approval {
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Publish {
    /// SSM parameter written with the image id in every region that has a copy.
    pub ssm_parameter: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Retain {
    /// Older images of the pipeline kept as they are, newest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_latest: Option<u32>,
    /// Beyond `keep_latest`: deprecate instead of deregistering at once.
    #[serde(default)]
    pub deprecate_older: bool,
    /// Beyond `keep_latest`: deregister (with snapshots) images older than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_after_days: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Notify {
    #[serde(default)]
    pub sns_topic_arn: Option<String>,
    #[serde(default)]
    pub eventbridge: bool,
}

/// What retention does to one older image of the pipeline.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RetainAction {
    Keep,
    Deprecate,
    Deregister,
}

impl Retain {
    /// The fate of the older image at `position` (0 = newest of the older ones), `age_days`
    /// old. Images within `keep_latest` stay; beyond it an image is deregistered once older
    /// than `delete_after_days`, deprecated before that when `deprecate_older`, and
    /// deregistered at once when neither rule says to wait.
    pub fn action(&self, position: usize, age_days: i64) -> RetainAction {
        if self
            .keep_latest
            .is_some_and(|keep| position < keep as usize)
        {
            return RetainAction::Keep;
        }
        match self.delete_after_days {
            Some(days) if age_days >= i64::from(days) => RetainAction::Deregister,
            _ if self.deprecate_older => RetainAction::Deprecate,
            Some(_) => RetainAction::Keep,
            None => RetainAction::Deregister,
        }
    }
}

impl Pipeline {
    /// Parses and checks a pipeline file's text.
    /// Whether its images are delivered only once a `test` or an `approval` passes.
    pub fn is_gated(&self) -> bool {
        self.test.is_some() || self.approval.is_some()
    }

    pub fn parse(text: &str) -> Result<Pipeline, Problems> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            Problems(vec![Problem::new(format!(
                "the pipeline file is not valid JSON: {e}"
            ))])
        })?;
        Pipeline::from_value(&value)
    }

    /// Checks a pipeline given as JSON: every problem at once, each naming its key.
    pub fn from_value(value: &Value) -> Result<Pipeline, Problems> {
        let mut problems = Vec::new();
        let Some(top) = value.as_object() else {
            return Err(Problems(vec![Problem::new(
                "a pipeline must be a JSON object with at least \"name\"",
            )]));
        };
        let mut r = Reader::new("", top, TOP_KEYS, &mut problems);
        let name = r.string("name", true);
        let rebuild = match r.string("rebuild", false).as_deref() {
            None | Some("always") => Rebuild::Always,
            Some("on_change") => Rebuild::OnChange,
            Some(other) => {
                r.err(
                    "rebuild",
                    format!("invalid value {other:?}: must be \"always\" or \"on_change\""),
                );
                Rebuild::Always
            }
        };
        let sections: Vec<(&str, Option<&Map<String, Value>>)> =
            TOP_KEYS[2..].iter().map(|k| (*k, r.object(k))).collect();
        if let Some(n) = &name {
            check_name(n, &mut problems);
        }
        let section = |k: &str| sections.iter().find(|(s, _)| *s == k).and_then(|(_, o)| *o);
        let test = section("test").map(|o| test_stage(o, &mut problems));
        let approval = section("approval").map(|o| {
            let mut r = Reader::new("approval", o, APPROVAL_KEYS, &mut problems);
            let timeout = r.duration("timeout", true).unwrap_or_default();
            if timeout.as_std().as_secs() > MAX_APPROVAL_SECONDS {
                r.err(
                    "timeout",
                    "is longer than a year, the longest an execution may wait",
                );
            }
            Approval { timeout }
        });
        let publish = section("publish").map(|o| {
            let mut r = Reader::new("publish", o, PUBLISH_KEYS, &mut problems);
            let name = r.string("ssm_parameter", true);
            if let Some(n) = &name {
                check_parameter_name(n, &mut problems);
            }
            Publish {
                ssm_parameter: name.unwrap_or_default(),
            }
        });
        let retain = section("retain").map(|o| retain(o, &mut problems));
        let notify = section("notify").map(|o| {
            let mut r = Reader::new("notify", o, NOTIFY_KEYS, &mut problems);
            let sns_topic_arn = r.string("sns_topic_arn", false);
            let eventbridge = r.boolean("eventbridge").unwrap_or(false);
            if let Some(arn) = sns_topic_arn.as_deref().filter(|a| !is_sns_topic_arn(a)) {
                problems.push(Problem::key(
                    "notify.sns_topic_arn",
                    format!("{arn:?} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"),
                ));
            }
            if sns_topic_arn.is_none() && !eventbridge {
                problems.push(Problem::key(
                    "notify",
                    "says nowhere to notify: set sns_topic_arn, or eventbridge: true, or remove the section",
                ));
            }
            Notify {
                sns_topic_arn,
                eventbridge,
            }
        });
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        Ok(Pipeline {
            name: name.unwrap_or_default(),
            rebuild,
            test,
            approval,
            publish,
            retain,
            notify,
        })
    }
}

fn test_stage(o: &Map<String, Value>, problems: &mut Vec<Problem>) -> TestStage {
    let connection_keys = crate::config::communicator::keys();
    let known: Vec<&str> = TEST_KEYS
        .iter()
        .copied()
        .chain(connection_keys.iter().map(String::as_str))
        .collect();
    let mut r = Reader::new("test", o, &known, problems);
    let instance_type = r.string("instance_type", true).unwrap_or_default();
    let timeout = r
        .duration("timeout", false)
        .unwrap_or(Duration::from_secs(20 * 60));
    let provisioners = r.array("provisioners", true).unwrap_or_default();
    let connection: Map<String, Value> = o
        .iter()
        .filter(|(k, _)| connection_keys.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (i, p) in provisioners.iter().enumerate() {
        for problem in crate::provisioner::check(p) {
            let key = match &problem.key {
                Some(k) => format!("test.provisioners[{i}].{k}"),
                None => format!("test.provisioners[{i}]"),
            };
            problems.push(Problem::key(key, problem.message));
        }
    }
    TestStage {
        instance_type,
        provisioners,
        timeout,
        connection,
    }
}

fn retain(o: &Map<String, Value>, problems: &mut Vec<Problem>) -> Retain {
    let mut r = Reader::new("retain", o, RETAIN_KEYS, problems);
    let keep_latest = r.count("keep_latest", 0);
    let deprecate_older = r.boolean("deprecate_older").unwrap_or(false);
    let delete_after_days = r.count("delete_after_days", 1);
    if keep_latest.is_none() && delete_after_days.is_none() {
        problems.push(Problem::key(
            "retain",
            "says nothing to retire: set keep_latest (older images kept) and/or delete_after_days",
        ));
    }
    if deprecate_older && keep_latest.is_none() {
        problems.push(Problem::key(
            "retain.deprecate_older",
            "applies to the images beyond keep_latest: set keep_latest too",
        ));
    }
    Retain {
        keep_latest,
        deprecate_older,
        delete_after_days,
    }
}

fn check_name(name: &str, problems: &mut Vec<Problem>) {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if name.is_empty() || name.len() > MAX_NAME || !ok_chars {
        problems.push(Problem::key(
            "name",
            format!(
                "{name:?}: a pipeline name is 1 to {MAX_NAME} letters, digits, '-', '_' or '.' \
                 (it is the value of the {PIPELINE_TAG} tag on every image the pipeline makes)"
            ),
        ));
    }
}

/// SSM's rules for a parameter name, checked before anything runs.
fn check_parameter_name(name: &str, problems: &mut Vec<Problem>) {
    let mut bad = |m: String| problems.push(Problem::key("publish.ssm_parameter", m));
    if name.is_empty() || name.len() > 1011 {
        bad(format!(
            "{name:?}: a parameter name is 1 to 1011 characters"
        ));
        return;
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.-/".contains(*c)))
    {
        bad(format!(
            "{name:?}: {c:?} is not allowed; a parameter name has letters, digits, '_', '.', '-' and '/'"
        ));
    }
    if name.contains('/') && !name.starts_with('/') {
        bad(format!(
            "{name:?}: a hierarchical parameter name starts with '/' (like /images/web/latest)"
        ));
    }
    let first = name.trim_start_matches('/').to_ascii_lowercase();
    if first.starts_with("aws") || first.starts_with("ssm") {
        bad(format!(
            "{name:?}: names beginning with \"aws\" or \"ssm\" are reserved by SSM"
        ));
    }
}

fn is_sns_topic_arn(s: &str) -> bool {
    let p: Vec<&str> = s.splitn(6, ':').collect();
    p.len() == 6
        && p[0] == "arn"
        && p[1].starts_with("aws")
        && p[2] == "sns"
        && is_region(p[3])
        && is_account(p[4])
        && !p[5].is_empty()
}

/// Reads one object of the pipeline file: unknown keys are problems with the closest known
/// key; each getter names the full key (`retain.keep_latest`) when a value is wrong.
struct Reader<'a, 'p> {
    prefix: &'static str,
    obj: &'a Map<String, Value>,
    problems: &'p mut Vec<Problem>,
}

impl<'a, 'p> Reader<'a, 'p> {
    fn new(
        prefix: &'static str,
        obj: &'a Map<String, Value>,
        known: &[&str],
        problems: &'p mut Vec<Problem>,
    ) -> Self {
        let mut r = Reader {
            prefix,
            obj,
            problems,
        };
        for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
            let hint = match closest(key, known.iter().copied()) {
                Some(k) => format!("; did you mean {k}?"),
                None => format!("; known keys: {}", known.join(", ")),
            };
            let where_ = if prefix.is_empty() {
                "unknown key in the pipeline".to_string()
            } else {
                format!("unknown key in {prefix}")
            };
            r.err(key, format!("{where_}{hint}"));
        }
        r
    }

    fn full(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn err(&mut self, key: &str, msg: impl Into<String>) {
        let key = self.full(key);
        self.problems.push(Problem::key(key, msg));
    }

    /// The value, or a "required" problem when `required` and absent (null counts as absent).
    fn get(&mut self, key: &str, required: bool) -> Option<&'a Value> {
        match self.obj.get(key).filter(|v| !v.is_null()) {
            Some(v) => Some(v),
            None => {
                if required {
                    self.err(key, "required");
                }
                None
            }
        }
    }

    fn string(&mut self, key: &str, required: bool) -> Option<String> {
        match self.get(key, required)? {
            Value::String(s) if s.trim().is_empty() => {
                self.err(key, "empty; give a value or remove the key");
                None
            }
            Value::String(s) => Some(s.clone()),
            other => {
                self.err(key, format!("must be a string, not {other}"));
                None
            }
        }
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        match self.get(key, false)? {
            Value::Bool(b) => Some(*b),
            other => {
                self.err(key, format!("must be true or false, not {other}"));
                None
            }
        }
    }

    /// A whole number at least `min`.
    fn count(&mut self, key: &str, min: u32) -> Option<u32> {
        let v = self.get(key, false)?;
        match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n >= min => Some(n),
            _ => {
                self.err(
                    key,
                    format!("must be a whole number, at least {min}; got {v}"),
                );
                None
            }
        }
    }

    fn duration(&mut self, key: &str, required: bool) -> Option<Duration> {
        let text = self.string(key, required)?;
        match text.parse::<Duration>() {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.err(key, "must be more than zero");
                None
            }
            Err(e) => {
                self.err(key, e.to_string());
                None
            }
        }
    }

    fn object(&mut self, key: &str) -> Option<&'a Map<String, Value>> {
        match self.get(key, false)? {
            Value::Object(o) => Some(o),
            other => {
                self.err(key, format!("must be an object, not {other}"));
                None
            }
        }
    }

    fn array(&mut self, key: &str, required: bool) -> Option<Vec<Value>> {
        match self.get(key, required)? {
            Value::Array(a) if a.is_empty() && required => {
                self.err(key, "empty; give at least one");
                None
            }
            Value::Array(a) => Some(a.clone()),
            other => {
                self.err(key, format!("must be a list, not {other}"));
                None
            }
        }
    }
}

/// What a build is made from, as `rebuild: on_change` compares it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FingerprintParts {
    /// Region → the source image id the build starts from (resolved, so that a new image
    /// behind `source_ami_filter` changes the fingerprint).
    #[serde(default)]
    pub source_images: BTreeMap<String, String>,
    /// Digest of the build's rendered config and provisioners, rendered at a fixed time so
    /// that `{{timestamp}}` in names does not change it.
    #[serde(default)]
    pub template: String,
    /// Provisioner file (as written in the template) → digest of its content.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

impl FingerprintParts {
    /// The fingerprint: a hex SHA-256 over every part, in a fixed order.
    pub fn fingerprint(&self) -> String {
        let text = serde_json::to_string(self).expect("plain data serializes");
        digest(text.as_bytes())
    }
}

/// Hex SHA-256 of bytes: the fingerprint's parts and provisioner files.
pub fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The local files a build's provisioners read (shell `script`/`scripts`, file `source`/
/// `sources` uploads, shell-local scripts), as written.
pub fn provisioner_files(provisioners: &[Value]) -> Vec<String> {
    use crate::provisioner::{Kind, Provisioner};
    let mut files = Vec::new();
    for (i, p) in provisioners.iter().enumerate() {
        let Ok(p) = Provisioner::parse(i, p) else {
            continue;
        };
        match p.kind {
            Kind::Shell(s) => files.extend(s.script.into_iter().chain(s.scripts)),
            Kind::ShellLocal(s) => files.extend(s.script.into_iter().chain(s.scripts)),
            Kind::File(f) if !f.is_download() => files.extend(f.sources()),
            Kind::PowerShell(s) => files.extend(s.script.into_iter().chain(s.scripts)),
            Kind::WindowsShell(s) => files.extend(s.script.into_iter().chain(s.scripts)),
            Kind::AnsibleLocal(a) => files.extend(
                a.playbooks()
                    .into_iter()
                    .map(String::from)
                    .chain(a.inventory_file.clone())
                    .chain(a.galaxy_file.clone()),
            ),
            Kind::File(_) | Kind::WindowsRestart(_) => {}
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A prepared amazon-ebs build from builder keys.
    fn built(keys: Value) -> PreparedBuild {
        let mut raw = json!({"region": "us-east-1", "source_ami": "ami-0f8848d57eb4fe2d2",
            "instance_type": "c5.large", "ami_name": "web", "ssh_username": "ubuntu",
            "user_data": "#!/bin/sh\necho building", "spot_price": "auto"});
        for (k, v) in keys.as_object().unwrap() {
            raw[k] = v.clone();
        }
        let config = crate::config::from_builder_with_env(
            "web",
            BuilderType::Ebs,
            raw.as_object().unwrap(),
            &|_| None,
        )
        .expect("a valid builder");
        PreparedBuild {
            name: "web".into(),
            builder_type: BuilderType::Ebs,
            config,
            provisioners: vec![json!({"type": "shell", "inline": ["make"]})],
            error_cleanup_provisioner: Some(json!({"type": "shell-local", "inline": ["true"]})),
            post_processors: vec![json!({"type": "manifest"})],
        }
    }

    fn stage(test: Value) -> TestStage {
        Pipeline::from_value(&json!({"name": "a", "test": test}))
            .expect("a valid pipeline")
            .test
            .expect("a test stage")
    }

    #[test]
    fn the_test_build_keeps_the_templates_access_and_takes_the_stages_keys() {
        let built =
            built(json!({"ssh_host": "127.0.0.1", "ssh_port": 2222, "subnet_id": "subnet-1"}));
        let test = stage(
            json!({"instance_type": "t3.micro", "timeout": "5m", "ssh_username": "tester",
            "provisioners": [{"type": "shell", "inline": ["systemctl is-active nginx"]},
                             {"type": "shell", "inline": ["true"], "timeout": "1m"}]}),
        );
        let b = test.build_for(&built).expect("the test build checks");
        assert_eq!(b.name, "web.test");
        assert_eq!(b.builder_type, BuilderType::Ebs);
        let run = b.config.run().unwrap();
        assert_eq!(run.instance_type.as_deref(), Some("t3.micro"));
        assert_eq!(run.source_ami.as_deref(), Some(NEW_IMAGE_PLACEHOLDER));
        assert_eq!(
            run.subnet_id.as_deref(),
            Some("subnet-1"),
            "the template's network"
        );
        assert_eq!(run.user_data, None, "no build-time user data");
        assert_eq!(run.spot_price, None, "on demand");
        let comm = b.config.comm().unwrap();
        assert_eq!(
            comm.ssh_username.as_deref(),
            Some("tester"),
            "the stage's key wins"
        );
        assert_eq!(
            (comm.ssh_host.as_deref(), comm.ssh_port),
            (Some("127.0.0.1"), 2222)
        );
        assert_eq!(
            b.provisioners[0]["timeout"], "300s",
            "the stage's timeout by default"
        );
        assert_eq!(
            b.provisioners[1]["timeout"], "1m",
            "a provisioner's own timeout stays"
        );
        assert!(b.error_cleanup_provisioner.is_none() && b.post_processors.is_empty());
    }

    #[test]
    fn the_test_builder_keeps_access_network_profile_and_communicator_keys_only() {
        let test = stage(
            json!({"instance_type": "t3.micro", "ssh_username": "tester",
            "provisioners": [{"type": "shell", "inline": ["true"]}]}),
        );
        let builder = json!({"type": "amazon-ebs", "region": "us-east-1", "subnet_id": "subnet-1",
            "iam_instance_profile": "web", "ssh_username": "ubuntu", "ami_name": "web",
            "ami_regions": ["us-west-2"], "spot_price": "auto", "user_data": "x",
            "source_ami_filter": {"owners": ["self"]}, "encrypt_boot": true});
        let keys = test.builder_keys(builder.as_object().unwrap());
        let names: Vec<&str> = keys.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "iam_instance_profile",
                "instance_type",
                "region",
                "source_ami",
                "ssh_username",
                "subnet_id"
            ]
        );
        assert_eq!(keys["ssh_username"], "tester");
        assert_eq!(keys["source_ami"], NEW_IMAGE_PLACEHOLDER);
    }

    #[test]
    fn a_test_that_cannot_reach_its_instance_is_refused_naming_the_key() {
        let built = built(json!({"communicator": "none"}));
        let remote = stage(json!({"instance_type": "t3.micro",
            "provisioners": [{"type": "shell-local", "inline": ["true"]}, {"type": "shell", "inline": ["true"]}]}));
        let out = remote.build_for(&built).unwrap_err().to_string();
        assert!(
            out.contains("test.provisioners[1]: runs on the test instance"),
            "{out}"
        );
        let local_only = stage(json!({"instance_type": "t3.micro",
            "provisioners": [{"type": "shell-local", "inline": ["true"]}]}));
        assert!(local_only.build_for(&built).is_ok());
        let bad = stage(
            json!({"instance_type": "t3.micro", "communicator": "ssm", "ssm_timeout": "99h",
            "provisioners": [{"type": "shell", "inline": ["true"]}]}),
        );
        let out = bad.build_for(&built).unwrap_err().to_string();
        assert!(out.contains("test.ssm_timeout"), "{out}");
    }

    fn problems(v: Value) -> String {
        Pipeline::from_value(&v)
            .expect_err("the pipeline is refused")
            .to_string()
    }

    #[test]
    fn a_full_pipeline_of_the_run_stages_parses() {
        let p = Pipeline::from_value(&json!({
            "name": "web-nightly", "rebuild": "on_change",
            "publish": {"ssm_parameter": "/images/web/latest"},
            "retain": {"keep_latest": 3, "deprecate_older": true, "delete_after_days": 90}
        }))
        .unwrap();
        assert_eq!(p.name, "web-nightly");
        assert_eq!(p.rebuild, Rebuild::OnChange);
        assert_eq!(p.publish.unwrap().ssm_parameter, "/images/web/latest");
        let retain = p.retain.unwrap();
        assert_eq!(
            (retain.keep_latest, retain.delete_after_days),
            (Some(3), Some(90))
        );
        // Every section is optional.
        let bare = Pipeline::from_value(&json!({"name": "x"})).unwrap();
        assert_eq!(bare.rebuild, Rebuild::Always);
        assert!(bare.publish.is_none() && bare.retain.is_none());
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_key_and_a_did_you_mean() {
        let out = problems(json!({
            "nmae": "x",
            "rebuild": "sometimes",
            "publish": {"ssm_paramter": "/a"},
            "retain": {"keep_latest": -1, "deprecate_oldre": true}
        }));
        for want in [
            "nmae: unknown key in the pipeline; did you mean name?",
            "* name: required",
            "rebuild: invalid value \"sometimes\"",
            "publish.ssm_paramter: unknown key in publish; did you mean ssm_parameter?",
            "publish.ssm_parameter: required",
            "retain.keep_latest: must be a whole number, at least 0; got -1",
            "retain.deprecate_oldre: unknown key in retain; did you mean deprecate_older?",
        ] {
            assert!(out.contains(want), "missing {want:?} in:\n{out}");
        }
        assert_eq!(out.lines().count(), 8, "{out}");
    }

    #[test]
    fn names_and_parameters_follow_the_rules_of_tags_and_ssm() {
        let out =
            problems(json!({"name": "web nightly!", "publish": {"ssm_parameter": "images/web"}}));
        assert!(out.contains("name: \"web nightly!\""), "{out}");
        assert!(out.contains("starts with '/'"), "{out}");
        let out = problems(json!({"name": "a", "publish": {"ssm_parameter": "/aws/x"}}));
        assert!(out.contains("reserved by SSM"), "{out}");
        assert!(Pipeline::from_value(
            &json!({"name": "a", "publish": {"ssm_parameter": "plain-name"}})
        )
        .is_ok());
    }

    #[test]
    fn retain_must_say_what_to_retire() {
        let out = problems(json!({"name": "a", "retain": {}}));
        assert!(out.contains("retain: says nothing to retire"), "{out}");
        let out = problems(
            json!({"name": "a", "retain": {"deprecate_older": true, "delete_after_days": 0}}),
        );
        assert!(
            out.contains("retain.delete_after_days: must be a whole number, at least 1"),
            "{out}"
        );
        assert!(
            out.contains("retain.deprecate_older: applies to the images beyond keep_latest"),
            "{out}"
        );
    }

    #[test]
    fn every_stage_is_checked_with_its_keys_named() {
        let out = problems(json!({"name": "a",
            "test": {"instance_type": "t3.micro", "provisioners": [{"type": "shell", "inlin": ["true"]}],
                     "timout": "5m", "ssh_usrname": "ec2-user"},
            "approval": {"timeout": "soon"},
            "notify": {"sns_topic_arn": "arn:aws:sqs:us-east-1:123456789012:q"}}));
        for want in [
            "test.timout: unknown key in test; did you mean timeout?",
            "test.ssh_usrname: unknown key in test; did you mean ssh_username?",
            "test.provisioners[0]",
            "approval.timeout: \"soon\" is not a duration",
            "notify.sns_topic_arn: \"arn:aws:sqs",
        ] {
            assert!(out.contains(want), "missing {want:?} in:\n{out}");
        }
        assert!(!out.contains("not run"), "every stage runs: {out}");
        let long = problems(json!({"name": "a", "approval": {"timeout": "9000h"}}));
        assert!(
            long.contains("approval.timeout: is longer than a year"),
            "{long}"
        );
        let ok = Pipeline::parse(r#"{"name": "a", "approval": {"timeout": "24h"}}"#).unwrap();
        assert_eq!(ok.approval.unwrap().timeout.as_std().as_secs(), 86400);
    }

    #[test]
    fn bad_json_and_non_objects_are_one_problem() {
        assert!(Pipeline::parse("{")
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
        assert!(problems(json!([1])).contains("must be a JSON object"));
        let out = problems(json!({"name": "a", "retain": 3}));
        assert!(out.contains("retain: must be an object, not 3"), "{out}");
    }

    #[test]
    fn retention_keeps_the_newest_then_deprecates_or_deregisters_by_age() {
        let r = |keep, dep, days| Retain {
            keep_latest: keep,
            deprecate_older: dep,
            delete_after_days: days,
        };
        use RetainAction::*;
        let keep2 = r(Some(2), false, None);
        assert_eq!(
            [0, 1, 2, 3].map(|i| keep2.action(i, 0)),
            [Keep, Keep, Deregister, Deregister]
        );
        let deprecating = r(Some(1), true, Some(30));
        assert_eq!(deprecating.action(0, 400), Keep, "within keep_latest");
        assert_eq!(deprecating.action(1, 10), Deprecate);
        assert_eq!(deprecating.action(1, 30), Deregister);
        let by_age = r(None, false, Some(7));
        assert_eq!(
            (by_age.action(0, 6), by_age.action(0, 7)),
            (Keep, Deregister)
        );
    }

    #[test]
    fn the_fingerprint_changes_with_each_part_and_only_with_them() {
        let base = FingerprintParts {
            source_images: BTreeMap::from([("us-east-1".into(), "ami-1".into())]),
            template: digest(b"config"),
            files: BTreeMap::from([("setup.sh".into(), digest(b"echo hi"))]),
        };
        let same = base.clone();
        assert_eq!(base.fingerprint(), same.fingerprint());
        assert_eq!(base.fingerprint().len(), 64);
        let mut new_source = base.clone();
        new_source
            .source_images
            .insert("us-east-1".into(), "ami-2".into());
        let mut new_template = base.clone();
        new_template.template = digest(b"config2");
        let mut new_file = base.clone();
        new_file
            .files
            .insert("setup.sh".into(), digest(b"echo bye"));
        for changed in [new_source, new_template, new_file] {
            assert_ne!(base.fingerprint(), changed.fingerprint());
        }
    }

    #[test]
    fn provisioner_files_are_the_uploaded_and_run_files() {
        let files = provisioner_files(&[
            json!({"type": "shell", "script": "a.sh"}),
            json!({"type": "shell", "scripts": ["b.sh"]}),
            json!({"type": "shell", "inline": ["true"]}),
            json!({"type": "file", "source": "c.conf", "destination": "/tmp/c"}),
            json!({"type": "file", "source": "/var/log/x", "destination": "x", "direction": "download"}),
        ]);
        assert_eq!(files, ["a.sh", "b.sh", "c.conf"]);
    }
}
