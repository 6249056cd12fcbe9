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
        .filter(|a| amiflow::infra::is_creating_ec2_call(a))
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
            Value::String(s)
                if s.contains("${ArtifactsBucket}") || s.contains("${BundleBuckets}") =>
            {
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
                (!out.is_empty()).then_some(Value::Array(out))
            }
            Value::String(s) => {
                let s = ANY.iter().fold(s, |s, p| s.replace(p, "*"));
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
