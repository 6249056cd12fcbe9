//! `amiflow policy TEMPLATE`: the IAM policy a local build of the template needs (`amiflow
//! build` with your own credentials), and nothing more.
//!
//! It follows the path each build takes ([`amiflow::flows::local_path`]): every step says
//! what it calls for the build's config ([`amiflow::steps::StepSpec::local_calls`]), Cleanup
//! what finding and removing the kinds of resource the build can make needs, on success and
//! after a failure. Each action is scoped as the deployed stack scopes it
//! ([`amiflow::infra::reach_statements`]), with the stack's own names replaced by what a
//! local build has ([`localize`]): any account, region and partition; the template's buckets;
//! no state machine tag, host tag or permissions boundary (a local build sets none).
//! `iam:PassRole` goes only to the roles the template names, towards EC2.
//!
//! With `assume_role`, every call but the AssumeRole itself is made as that role: the
//! policy is then the role's, plus `sts:AssumeRole` on it for your own identity.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use amiflow::resources::Reach;
use amiflow::steps::StepSpec;
use amiflow_template::pipeline::Pipeline;
use amiflow_template::PreparedBuild;
use anyhow::Context as _;
use serde_json::{json, Value};

use crate::validate::{print_problems, print_warnings, TemplateArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub template: TemplateArgs,
    /// The build runs with this pipeline file (`amiflow build --pipeline`): its test build
    /// and its states' actions are granted too.
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let opts = match args.template.prepare_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return Ok(1);
        }
    };
    let prepared = match args.template.load(&opts)?.and_then(|l| l.prepare()) {
        Ok(p) => p,
        Err(problems) => {
            print_problems(&args.template.template, &problems);
            return Ok(1);
        }
    };
    print_warnings(&prepared.warnings);
    let pipeline = match &args.pipeline {
        Some(path) => {
            let file = crate::pipeline_file::read(path)?;
            Some(
                Pipeline::from_value(&file)
                    .map_err(|p| anyhow::anyhow!("pipeline file {}: {p}", path.display()))?,
            )
        }
        None => None,
    };
    let policy = local_policy(&prepared.builds, pipeline.as_ref())
        .with_context(|| format!("the policy of {}", args.template.template.display()))?;
    println!("{}", serde_json::to_string_pretty(&policy)?);
    Ok(0)
}

/// `-var NAME=VALUE` flags as a map (`amiflow start`'s).
pub fn parse_vars(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("-var {kv:?}: expected NAME=VALUE"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Each step a build passes, with the build it passes it for: the builds' paths, and with a
/// pipeline its test builds' launch chains and its own states.
fn steps_and_builds(
    builds: &[PreparedBuild],
    pipeline: Option<&Pipeline>,
) -> anyhow::Result<Vec<(StepSpec, PreparedBuild)>> {
    let mut out = Vec::new();
    for build in builds {
        for step in amiflow::flows::local_path(build) {
            out.push((step, build.clone()));
        }
    }
    let Some(pipeline) = pipeline else {
        return Ok(out);
    };
    for build in builds {
        for step in amiflow::flows::pipeline_steps() {
            out.push((step, build.clone()));
        }
        if let Some(test) = &pipeline.test {
            let tested = test
                .build_for(build)
                .map_err(|p| anyhow::anyhow!("the pipeline's test build: {p}"))?;
            for step in amiflow::flows::TEST_CHAIN
                .iter()
                .chain([&amiflow::flows::CLEANUP])
            {
                out.push((*step, tested.clone()));
            }
        }
    }
    Ok(out)
}

/// The buckets a local build reads or writes: amazon-instance's `s3_bucket`, SSM
/// provisioning's `ssm_output_s3_bucket` (or the artifacts bucket it falls back to).
fn buckets(build: &PreparedBuild) -> Vec<String> {
    let mut out = Vec::new();
    if let amiflow_template::BuilderConfig::Instance(c) = &build.config {
        out.push(c.s3_bucket.clone());
    }
    if let Some(comm) = build.config.comm().filter(|c| c.is_ssm()) {
        out.extend(comm.ssm_output_s3_bucket.clone().or_else(|| {
            std::env::var(amiflow::provision::communicator::ARTIFACTS_BUCKET_ENV).ok()
        }));
    }
    out.retain(|b| !b.is_empty());
    out
}

/// The policy a local build of `builds` needs (see the module's documentation).
pub fn local_policy(
    builds: &[PreparedBuild],
    pipeline: Option<&Pipeline>,
) -> anyhow::Result<Value> {
    let mut by_reach: BTreeMap<Reach, BTreeSet<String>> = BTreeMap::new();
    let mut pass_roles = BTreeSet::new();
    for (step, build) in steps_and_builds(builds, pipeline)? {
        if step.name == amiflow::steps::upload_bundle::SPEC.name {
            // A local build hands `bundle_upload_command` the caller's own keys (deployed,
            // the stack's bundle upload role's): the caller writes the bundle.
            by_reach.entry(Reach::StackBuckets).or_default().extend(
                amiflow::steps::upload_bundle::BUNDLE_UPLOAD_ACTIONS
                    .iter()
                    .map(|a| a.to_string()),
            );
        }
        for action in step.local_calls(&build) {
            if action == "iam:PassRole" {
                pass_roles.extend(passed_roles(&build));
            } else {
                by_reach
                    .entry(step.reach_of(action))
                    .or_default()
                    .insert(action.to_string());
            }
        }
    }
    // The EC2 calls that create, which may tag what they create.
    let creating: Vec<String> = by_reach
        .values()
        .flatten()
        .filter_map(|a| a.strip_prefix("ec2:"))
        .filter(|a| amiflow::resources::is_creating_ec2_call(a))
        .map(String::from)
        .collect();
    let names = LocalNames {
        buckets: builds.iter().flat_map(buckets).collect(),
        hosts: builds.iter().filter_map(host).collect(),
    };
    let mut statements: Vec<Value> = by_reach
        .into_iter()
        .flat_map(|(reach, actions)| {
            let actions: Vec<String> = actions.into_iter().collect();
            amiflow::infra::reach_statements(reach, &actions, &creating)
        })
        .filter_map(|s| localize(s, &names))
        .collect();
    if !pass_roles.is_empty() {
        statements.push(json!({
            "Sid": "PassInstanceProfileRoles", "Effect": "Allow", "Action": "iam:PassRole",
            "Resource": pass_roles,
            "Condition": { "StringEquals": { "iam:PassedToService": "ec2.amazonaws.com" } }
        }));
    }
    let assumed: BTreeSet<&str> = builds
        .iter()
        .filter_map(|b| b.config.access().assume_role.as_ref())
        .map(|r| r.role_arn.as_str())
        .filter(|r| !r.is_empty())
        .collect();
    if !assumed.is_empty() {
        statements.push(json!({ "Sid": "AssumeRole", "Effect": "Allow", "Action": "sts:AssumeRole", "Resource": assumed }));
    }
    Ok(json!({ "Version": "2012-10-17", "Statement": statements }))
}

/// The roles a build passes to its instance: the role of the named `iam_instance_profile`
/// (taken to share its profile's name, as the console and Packer's docs make them), or
/// amiflow's temporary roles.
fn passed_roles(build: &PreparedBuild) -> Vec<String> {
    let Some(run) = build.config.run() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(profile) = run
        .iam_instance_profile
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        out.push(format!("arn:*:iam::*:role/{profile}"));
    }
    if amiflow::resources::iam::made_for(&build.config) {
        out.push(format!(
            "arn:*:iam::*:role{}*",
            amiflow::resources::iam::IAM_PATH
        ));
    }
    out
}

/// What a local build has in place of the stack's own names.
struct LocalNames {
    buckets: BTreeSet<String>,
    /// amazon-chroot's build hosts: the named instance, or `*` for one found by filter or
    /// this machine (the stack's hosts carry its tag instead).
    hosts: BTreeSet<String>,
}

/// The build host an amazon-chroot build attaches its volume to and sends its script to.
fn host(build: &PreparedBuild) -> Option<String> {
    let amiflow_template::BuilderConfig::Chroot(c) = &build.config else {
        return None;
    };
    Some(
        c.chroot_host_instance_id
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "*".to_string()),
    )
}

/// The stack's names that stand for anything in a local build.
const ANY: &[&str] = &[
    "${AWS::Partition}",
    "${AWS::AccountId}",
    "${AWS::Region}",
    "${ChrootHostDocument}",
    "${PublishParameterPrefix}",
];

/// Condition values a local build never meets: the stack's name (the state machine and
/// build host tags) and its permissions boundary.
const STACK_ONLY: &[&str] = &["${AWS::StackName}", "${TemporaryRoleBoundary}"];

/// A stack statement for a local build: pseudo parameters become `*`; the stack's buckets
/// the template's (the statement goes when it names none); conditions on the stack's name
/// or its permissions boundary go (a local build tags no state machine or host and sets no
/// boundary). None when nothing is left to grant.
fn localize(statement: Value, names: &LocalNames) -> Option<Value> {
    fn walk(v: Value, names: &LocalNames) -> Option<Value> {
        match v {
            Value::String(s) => {
                // A local build's parameters are under `/amiflow/<execution>/`, no stack's.
                let s = ANY
                    .iter()
                    .fold(s.replace("/${AWS::StackName}/", "/"), |s, p| {
                        s.replace(p, "*")
                    });
                if s.contains("${ArtifactsBucket}") || s.contains("${BundleBuckets}") {
                    let out: Vec<Value> = names
                        .buckets
                        .iter()
                        .map(|b| {
                            Value::String(
                                s.replace("${ArtifactsBucket}", b)
                                    .replace("${BundleBuckets}", b),
                            )
                        })
                        .collect();
                    return (!out.is_empty()).then_some(Value::Array(out));
                }
                // A name only the stack has (its schedule's template object): nothing local.
                (!s.contains("${")).then_some(Value::String(s))
            }
            Value::Array(a) => {
                let mut out = Vec::new();
                for item in a {
                    match walk(item, names) {
                        Some(Value::Array(more)) => out.extend(more),
                        Some(one) => out.push(one),
                        None => {}
                    }
                }
                (!out.is_empty()).then_some(Value::Array(out))
            }
            Value::Object(o) => {
                let mut out = serde_json::Map::new();
                for (k, v) in o {
                    let stack_own = v
                        .as_str()
                        .is_some_and(|s| STACK_ONLY.iter().any(|p| s.contains(p)));
                    if stack_own {
                        continue;
                    }
                    if let Some(v) = walk(v, names) {
                        out.insert(k, v);
                    } else if k == "Resource" {
                        return None;
                    }
                }
                Some(Value::Object(out))
            }
            other => Some(other),
        }
    }
    let mut statement = statement;
    if statement["Condition"]
        .to_string()
        .contains(amiflow::resources::BUILD_HOST_TAG)
    {
        // The stack's hosts carry its tag; a local build's host is the template's.
        if names.hosts.is_empty() {
            return None;
        }
        let hosts: Vec<String> = names
            .hosts
            .iter()
            .map(|h| format!("arn:*:ec2:*:*:instance/{h}"))
            .collect();
        statement["Resource"] = json!(hosts);
        statement.as_object_mut()?.remove("Condition");
    }
    let mut out = walk(statement, names)?;
    if let Some(condition) = out.get_mut("Condition").and_then(Value::as_object_mut) {
        condition.retain(|_, v| v.as_object().is_some_and(|o| !o.is_empty()));
        if condition.is_empty() {
            out.as_object_mut()?.remove("Condition");
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn examples() -> Vec<(String, Vec<PreparedBuild>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let opts = amiflow_template::PrepareOptions::new(chrono::Utc::now());
            let prepared = amiflow_template::prepare(&text, &opts)
                .unwrap_or_else(|p| panic!("{}: {p}", path.display()));
            out.push((path.display().to_string(), prepared.builds));
        }
        assert!(out.len() > 10, "only {} examples found", out.len());
        out
    }

    /// An HCL2 example says what its JSON twin says: the same policy. (Build names may
    /// differ: the policy does not name builds.)
    #[test]
    fn an_hcl2_example_needs_what_its_json_twin_needs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let json: std::collections::BTreeMap<String, Vec<PreparedBuild>> = examples()
            .into_iter()
            .map(|(path, builds)| {
                let stem = Path::new(&path)
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                (stem, builds)
            })
            .collect();
        let mut compared = 0;
        for entry in std::fs::read_dir(dir.join("hcl2")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let Some(stem) = name.strip_suffix(".pkr.hcl") else {
                continue;
            };
            let Some(twin) = json.get(stem) else {
                continue;
            };
            let opts = amiflow_template::PrepareOptions::new(chrono::Utc::now());
            let builds = amiflow_template::LoadedTemplate::hcl2(&path, &opts)
                .and_then(|l| l.prepare())
                .unwrap_or_else(|p| panic!("{}: {p}", path.display()))
                .builds;
            assert_eq!(
                local_policy(&builds, None).unwrap(),
                local_policy(twin, None).unwrap(),
                "{name} and {stem}.json"
            );
            compared += 1;
        }
        assert!(compared > 10, "only {compared} HCL2 examples compared");
    }

    fn actions(policy: &Value) -> BTreeSet<String> {
        amiflow::infra::policy_actions(policy).into_iter().collect()
    }

    /// What a build calls in a step is what the step's deployed role may do: the role is
    /// the union of every config's calls.
    #[test]
    fn every_steps_calls_are_among_its_roles_actions() {
        let mut checked = 0;
        for (example, builds) in examples() {
            for build in &builds {
                let mut steps = amiflow::flows::local_path(build);
                steps.extend(amiflow::flows::pipeline_steps());
                for step in steps {
                    for call in step.local_calls(build) {
                        checked += 1;
                        assert!(
                            step.iam_actions.contains(&call),
                            "{example}: {} calls {call}, which its role lacks",
                            step.name
                        );
                    }
                }
            }
        }
        assert!(checked > 100, "only {checked} calls checked");
    }

    /// examples/ebs-basic.json (communicator none, no profile, KMS, bucket or SSM) is
    /// granted its launch, image and cleanup calls, and none of what other options call.
    #[test]
    fn a_basic_build_is_granted_what_its_path_calls_only() {
        let (_, builds) = examples()
            .into_iter()
            .find(|(name, _)| name.ends_with("/ebs-basic.json"))
            .unwrap();
        let granted = actions(&local_policy(&builds, None).unwrap());
        for needed in [
            "ec2:RunInstances",
            "ec2:StopInstances",
            "ec2:CreateImage",
            "ec2:TerminateInstances",
            "ec2:DeregisterImage",
            "ec2:CreateTags",
        ] {
            assert!(granted.contains(needed), "{needed} missing: {granted:?}");
        }
        for a in &granted {
            assert!(a.starts_with("ec2:"), "{a} granted to ebs-basic");
        }
        for absent in [
            "ec2:CreateVolume",
            "ec2:RegisterImage",
            "ec2:CreateKeyPair",
            "ec2:CreateSecurityGroup",
            "ec2:CopyImage",
            "ec2:ModifyImageAttribute",
        ] {
            assert!(!granted.contains(absent), "{absent} granted to ebs-basic");
        }
    }

    /// Every statement of every example's policy is scoped as the stack scopes it: what
    /// destroys or changes needs the build tag (or is the template's named build host), IAM
    /// changes only amiflow's own roles, parameters only amiflow's, PassRole only towards EC2.
    #[test]
    fn every_examples_policy_is_scoped() {
        for (example, builds) in examples() {
            let policy = local_policy(&builds, None).unwrap();
            let text = policy.to_string();
            assert!(!text.contains("${"), "{example}: a stack name left: {text}");
            for s in policy["Statement"].as_array().unwrap() {
                let unscoped = s["Resource"] == "*" && s.get("Condition").is_none();
                for a in actions(&json!({ "Statement": [s] })) {
                    let verb = a.split(':').nth(1).unwrap_or_default();
                    // Unscoped: only reads, and EC2's creates (scoped by the tags they carry).
                    let reads = ["Describe", "Get", "List"]
                        .iter()
                        .any(|r| verb.starts_with(r));
                    let creates =
                        a.starts_with("ec2:") && amiflow::resources::is_creating_ec2_call(verb);
                    assert!(
                        !unscoped || reads || creates,
                        "{example}: {a} unscoped: {s}"
                    );
                    if a.starts_with("iam:") && a != "iam:PassRole" && !reads {
                        assert!(
                            s["Resource"].to_string().contains("/amiflow/"),
                            "{example}: {a} beyond amiflow's roles: {s}"
                        );
                    }
                    if a == "iam:PassRole" {
                        assert_eq!(
                            s["Condition"]["StringEquals"]["iam:PassedToService"],
                            "ec2.amazonaws.com",
                            "{example}: {s}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_local_statement_keeps_the_build_tag_and_the_templates_buckets() {
        let names = LocalNames {
            buckets: BTreeSet::from(["my-logs".to_string()]),
            hosts: BTreeSet::new(),
        };
        let build_tagged = amiflow::infra::reach_statements(
            Reach::BuildTagged,
            &["ec2:TerminateInstances".to_string()],
            &[],
        )
        .remove(0);
        let local = localize(build_tagged, &names).unwrap();
        assert_eq!(
            local["Condition"],
            json!({"StringLike": {"aws:ResourceTag/amiflow:build": "*"}}),
            "the state machine condition goes (local builds carry no such tag), the build tag stays: {local}"
        );
        let buckets = amiflow::infra::reach_statements(
            Reach::StackBuckets,
            &["s3:PutObject".to_string()],
            &[],
        )
        .remove(0);
        let local = localize(buckets.clone(), &names).unwrap();
        assert_eq!(
            local["Resource"],
            json!([
                "arn:*:s3:::my-logs",
                "arn:*:s3:::my-logs/*",
                "arn:*:s3:::my-logs",
                "arn:*:s3:::my-logs/*"
            ])
        );
        let none = LocalNames {
            buckets: BTreeSet::new(),
            hosts: BTreeSet::new(),
        };
        assert_eq!(localize(buckets, &none), None, "no bucket, no statement");
        let host = amiflow::infra::reach_statements(
            Reach::BuildTaggedOrBuildHost,
            &["ec2:AttachVolume".to_string()],
            &[],
        );
        let kept: Vec<Value> = host
            .iter()
            .filter_map(|s| localize(s.clone(), &none))
            .collect();
        assert_eq!(
            kept.len(),
            1,
            "no named host: only the build-tagged statement: {kept:?}"
        );
    }
}
