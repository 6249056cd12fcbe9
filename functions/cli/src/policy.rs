//! `amiflow policy TEMPLATE`: the minimal IAM policy a template needs to run locally
//! (`amiflow build` with your own credentials).
//!
//! The actions are: Packer's documented minimal policy for its EC2 builders; the `iam_actions` of every
//! step the definition runs for the template's builder types (read from the committed ASL,
//! so the policy follows the flows); and what the template's options call for — spot, region
//! copies, KMS, SSM, instance profiles, assume_role.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    /// The Packer JSON template.
    pub template: PathBuf,
    /// Template variables, as Packer's `-var name=value`.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// The ASL definition whose steps are granted (default: the committed one).
    #[arg(long)]
    pub definition: Option<PathBuf>,
    /// The build runs with this pipeline file (`amiflow build --pipeline`): its states'
    /// actions are granted too.
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
}

/// Packer's documented IAM policy for its Amazon builders (the "minimal set").
pub const SEED_BASE_ACTIONS: &[&str] = &[
    "ec2:AttachVolume",
    "ec2:AuthorizeSecurityGroupIngress",
    "ec2:CopyImage",
    "ec2:CreateImage",
    "ec2:CreateKeyPair",
    "ec2:CreateSecurityGroup",
    "ec2:CreateSnapshot",
    "ec2:CreateTags",
    "ec2:CreateVolume",
    "ec2:DeleteKeyPair",
    "ec2:DeleteSecurityGroup",
    "ec2:DeleteSnapshot",
    "ec2:DeleteVolume",
    "ec2:DeregisterImage",
    "ec2:DescribeImageAttribute",
    "ec2:DescribeImages",
    "ec2:DescribeInstances",
    "ec2:DescribeRegions",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSnapshots",
    "ec2:DescribeSubnets",
    "ec2:DescribeTags",
    "ec2:DescribeVolumes",
    "ec2:DetachVolume",
    "ec2:GetPasswordData",
    "ec2:ModifyImageAttribute",
    "ec2:ModifyInstanceAttribute",
    "ec2:ModifySnapshotAttribute",
    "ec2:RegisterImage",
    "ec2:RunInstances",
    "ec2:StopInstances",
    "ec2:TerminateInstances",
];

const SPOT_ACTIONS: &[&str] = &[
    "ec2:RequestSpotInstances",
    "ec2:CancelSpotInstanceRequests",
    "ec2:DescribeSpotInstanceRequests",
    "ec2:CreateLaunchTemplate",
    "ec2:DeleteLaunchTemplate",
    "ec2:CreateFleet",
    "ec2:DescribeLaunchTemplates",
];
const KMS_ACTIONS: &[&str] = &[
    "kms:CreateGrant",
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:Encrypt",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
];
const SSM_RUN_ACTIONS: &[&str] = &[
    "ssm:SendCommand",
    "ssm:GetCommandInvocation",
    "ssm:DescribeInstanceInformation",
];
const TEMPORARY_PROFILE_ACTIONS: &[&str] = &[
    "iam:CreateRole",
    "iam:PutRolePolicy",
    "iam:CreateInstanceProfile",
    "iam:AddRoleToInstanceProfile",
    "iam:GetInstanceProfile",
    "iam:RemoveRoleFromInstanceProfile",
    "iam:DeleteRolePolicy",
    "iam:DeleteRole",
    "iam:DeleteInstanceProfile",
    "iam:TagRole",
    "iam:TagInstanceProfile",
];

/// Step actions that only some options lead to: the flow's steps declare them, but a
/// template without the option never calls them (measured: `tests/e2e/policy.rs` removes each
/// granted action in turn). Left out of the step union; the options below add them back.
const ONLY_WITH_OPTIONS: &[&str] = &[
    "ec2:DescribeVpcs",
    "iam:CreateRole",
    "iam:GetRole",
    "iam:PutRolePolicy",
    "iam:AddRoleToInstanceProfile",
    "iam:DeleteRole",
    "iam:ListRolePolicies",
    "iam:TagRole",
    "s3:DeleteObject",
    "ssm:GetParameter",
    "kms:CreateGrant",
    "ssm:GetCommandInvocation",
    "ssm:ListCommands",
    "ssm:AddTagsToResource",
    "s3:GetObject",
    "s3:DeleteBucket",
    "ec2:CancelSpotInstanceRequests",
    // Measured spare for a build without the option (tests/e2e/policy.rs asserts none is
    // left): a key pair, spot, deprecation, a temporary profile, KMS, a bucket, SSM.
    "ec2:DescribeKeyPairs",
    "ec2:DescribeSpotInstanceRequests",
    "ec2:EnableImageDeprecation",
    "iam:CreateInstanceProfile",
    "iam:DeleteInstanceProfile",
    "iam:DeleteRolePolicy",
    "iam:GetInstanceProfile",
    "iam:ListInstanceProfiles",
    "iam:ListRoles",
    "iam:RemoveRoleFromInstanceProfile",
    "iam:TagInstanceProfile",
    "kms:DescribeKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncrypt*",
    "s3:GetBucketTagging",
    "s3:ListBucket",
    "s3:PutObject",
    "ssm:DeleteParameter",
    "ssm:DeleteParameters",
    "ssm:DescribeInstanceInformation",
    "ssm:GetParametersByPath",
    "ssm:PutParameter",
    "ssm:SendCommand",
];

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let vars = parse_vars(&args.vars)?;
    let (mut template, vars) = crate::template_file::template_and_vars(&args.template, vars)?;
    if let Some(path) = &args.pipeline {
        let file = crate::pipeline_file::read(path)?;
        if let Some(test) = amiflow_template::pipeline::Pipeline::from_value(&file)
            .ok()
            .and_then(|p| p.test)
        {
            template = with_test_build(&template, &test);
        }
    }
    let definition_path = args.definition.unwrap_or_else(default_definition);
    let definition = std::fs::read_to_string(&definition_path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    if definition.is_none() {
        eprintln!(
            "note: {} not readable: granting every registered step",
            definition_path.display()
        );
    }
    let policy = minimal_policy_with(
        &template,
        &vars,
        definition.as_ref(),
        &amiflow::flows::registry(),
        args.pipeline.is_some(),
    );
    println!("{}", serde_json::to_string_pretty(&policy)?);
    Ok(0)
}

/// The template as the policy sees it with a pipeline's test stage: one more amazon-ebs
/// builder with the keys the test build takes from the first builder
/// (`TestStage::builder_keys`, as Prepare makes the test build).
fn with_test_build(template: &Value, test: &amiflow_template::pipeline::TestStage) -> Value {
    let mut out = template.clone();
    let first = template["builders"][0]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut builder = test.builder_keys(&first);
    builder.insert("type".into(), "amazon-ebs".into());
    builder.insert("name".into(), "test".into());
    if let Some(builders) = out["builders"].as_array_mut() {
        builders.push(Value::Object(builder));
    }
    out
}

fn default_definition() -> PathBuf {
    let beside_binary = std::env::current_exe().ok().and_then(|p| {
        p.ancestors()
            .map(|a| a.join("statemachine/amiflow.asl.json"))
            .find(|c| c.exists())
    });
    beside_binary.unwrap_or_else(|| {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../statemachine/amiflow.asl.json"
        ))
    })
}

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

/// A builder option's value with `{{user `x`}}` resolved from -var then the template's
/// variables; None when unset or empty.
fn option(
    builder: &Value,
    key: &str,
    template: &Value,
    vars: &BTreeMap<String, String>,
) -> Option<Value> {
    let value = builder.get(key)?;
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => {
            let inner = s
                .trim()
                .strip_prefix("{{")
                .and_then(|r| r.strip_suffix("}}"))
                .map(str::trim);
            match inner
                .and_then(|i| i.strip_prefix("user"))
                .map(|n| n.trim().trim_matches(|c| c == '`' || c == '"'))
            {
                Some(name) => {
                    let resolved = vars
                        .get(name)
                        .cloned()
                        .or_else(|| template["variables"][name].as_str().map(String::from));
                    resolved.filter(|r| !r.is_empty()).map(Value::String)
                }
                None => Some(value.clone()),
            }
        }
        Value::Array(a) if a.is_empty() => None,
        Value::Object(o) if o.is_empty() => None,
        Value::Bool(false) => None,
        other => Some(other.clone()),
    }
}

/// Task states (by step name) reachable from `start` in an ASL (sub)machine, following
/// Next, Default, Choices, Catch and nested Map/Parallel machines.
fn reachable_tasks(
    states: &serde_json::Map<String, Value>,
    start: &str,
    tasks: &mut BTreeSet<String>,
    seen: &mut BTreeSet<String>,
) {
    if !seen.insert(start.to_string()) {
        return;
    }
    let Some(state) = states.get(start) else {
        return;
    };
    collect_nested(state, tasks);
    let mut next: Vec<&str> = Vec::new();
    for key in ["Next", "Default"] {
        next.extend(state[key].as_str());
    }
    for choice in state["Choices"].as_array().into_iter().flatten() {
        next.extend(choice["Next"].as_str());
    }
    for catcher in state["Catch"].as_array().into_iter().flatten() {
        next.extend(catcher["Next"].as_str());
    }
    for n in next {
        reachable_tasks(states, n, tasks, seen);
    }
}

/// The step a Task state runs (`${StepFunctionArn}`, or a callback Task's `FunctionName`)
/// and every task of nested machines.
fn collect_nested(state: &Value, tasks: &mut BTreeSet<String>) {
    let resource = state["Resource"].as_str().unwrap_or_default();
    let function = amiflow_statemachine::lambda_callback(resource, &state["Parameters"])
        .map_or_else(|| resource.to_string(), |(function, _)| function);
    if let Some(step) = function
        .strip_prefix("${")
        .and_then(|r| r.strip_suffix("FunctionArn}"))
    {
        tasks.insert(step.to_string());
    }
    let mut machines: Vec<&Value> = vec![&state["Iterator"], &state["ItemProcessor"]];
    machines.extend(state["Branches"].as_array().into_iter().flatten());
    for machine in machines {
        if let (Some(states), Some(start)) =
            (machine["States"].as_object(), machine["StartAt"].as_str())
        {
            reachable_tasks(states, start, tasks, &mut BTreeSet::new());
        }
    }
}

fn all_machines(value: &Value, out: &mut Vec<serde_json::Map<String, Value>>) {
    if let Some(states) = value["States"].as_object() {
        out.push(states.clone());
        for state in states.values() {
            let mut nested: Vec<&Value> = vec![&state["Iterator"], &state["ItemProcessor"]];
            nested.extend(state["Branches"].as_array().into_iter().flatten());
            for n in nested {
                all_machines(n, out);
            }
        }
    }
}

/// The steps the definition runs for these builder types: every Task reachable from the
/// branches of a Choice on the builder type that match one of them, plus every Task no such
/// branch owns (Prepare, Finalize, shared cleanup).
pub fn steps_for_builders(
    definition: &Value,
    builder_types: &BTreeSet<String>,
) -> Option<BTreeSet<String>> {
    let mut machines = Vec::new();
    all_machines(definition, &mut machines);
    let mut all_tasks = BTreeSet::new();
    let mut branch_tasks: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for states in &machines {
        for (_, state) in states.iter() {
            collect_nested(state, &mut all_tasks);
            for choice in state["Choices"].as_array().into_iter().flatten() {
                let (Some(value), Some(next)) =
                    (choice["StringEquals"].as_str(), choice["Next"].as_str())
                else {
                    continue;
                };
                if !value.starts_with("amazon-") {
                    continue;
                }
                let mut tasks = BTreeSet::new();
                reachable_tasks(states, next, &mut tasks, &mut BTreeSet::new());
                branch_tasks
                    .entry(value.to_string())
                    .or_default()
                    .extend(tasks);
            }
        }
    }
    if branch_tasks.is_empty() {
        return None;
    }
    let owned: BTreeSet<String> = branch_tasks.values().flatten().cloned().collect();
    let mut steps: BTreeSet<String> = all_tasks.difference(&owned).cloned().collect();
    for t in builder_types {
        steps.extend(branch_tasks.get(t).into_iter().flatten().cloned());
    }
    Some(steps)
}

/// The policy document: one statement of actions on `*`, iam:PassRole on the named instance
/// profile roles, sts:AssumeRole on the `assume_role` roles.
/// Step actions granted only on what the template names: PassRole below, on the named
/// roles; AssumeRole on the template's `assume_role` (UploadBundle's is the deployed stack's
/// bundle upload role: a local build hands the bundle upload command the caller's own keys).
const SCOPED_BELOW: &[&str] = &["iam:PassRole", "sts:AssumeRole"];

/// [`minimal_policy_with`] for a build without a pipeline.
pub fn minimal_policy(
    template: &Value,
    vars: &BTreeMap<String, String>,
    definition: Option<&Value>,
    registry: &[amiflow::steps::StepSpec],
) -> Value {
    minimal_policy_with(template, vars, definition, registry, false)
}

/// The policy a local build of `template` needs; `pipeline`: run with `--pipeline`, whose
/// states ([`amiflow::flows::pipeline_steps`]) a plain build never enters.
pub fn minimal_policy_with(
    template: &Value,
    vars: &BTreeMap<String, String>,
    definition: Option<&Value>,
    registry: &[amiflow::steps::StepSpec],
    pipeline: bool,
) -> Value {
    let pipeline_steps: Vec<&str> = amiflow::flows::pipeline_steps()
        .iter()
        .map(|s| s.name)
        .collect();
    let builders: Vec<&Value> = template["builders"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let types: BTreeSet<String> = builders
        .iter()
        .filter_map(|b| b["type"].as_str().map(String::from))
        .collect();
    let mut actions: BTreeSet<String> = BTreeSet::new();
    let mut pipeline_actions: BTreeSet<String> = BTreeSet::new();
    if types.iter().any(|t| t.starts_with("amazon-")) {
        actions.extend(SEED_BASE_ACTIONS.iter().map(|a| a.to_string()));
    }
    let steps = definition.and_then(|d| steps_for_builders(d, &types));
    for spec in registry {
        // AwaitEvent calls nothing in a local build (steps/await_event.rs): the waiting
        // steps poll.
        let local = amiflow::infra::is_state_machine_task(spec.name)
            && spec.name != amiflow::flows::AWAIT_EVENT.name;
        let used = local
            && match &steps {
                Some(steps) => steps.contains(&amiflow::infra::logical_id(spec.name)),
                None => true,
            };
        if used && pipeline_steps.contains(&spec.name) {
            if pipeline {
                pipeline_actions.extend(spec.iam_actions.iter().map(|a| a.to_string()));
            }
        } else if used {
            actions.extend(spec.iam_actions.iter().map(|a| a.to_string()));
        }
    }
    for a in SCOPED_BELOW.iter().chain(ONLY_WITH_OPTIONS) {
        actions.remove(*a);
    }
    // A pipeline's states call what they declare whatever the template's options.
    actions.extend(pipeline_actions);

    let mut pass_roles = BTreeSet::new();
    let mut assume_roles = BTreeSet::new();
    for b in &builders {
        let opt = |k: &str| option(b, k, template, vars);
        if opt("spot_price").is_some_and(|v| v != "0") || opt("spot_instance_types").is_some() {
            actions.extend(SPOT_ACTIONS.iter().map(|a| a.to_string()));
            if opt("spot_price").is_some_and(|v| v == "auto")
                || opt("spot_instance_types").is_some()
            {
                actions.insert("ec2:DescribeSpotPriceHistory".into());
            }
        }
        if opt("ami_regions").is_some() {
            actions.extend(
                ["ec2:CopyImage", "ec2:DescribeRegions", "ec2:DescribeImages"].map(String::from),
            );
        }
        let kms_in_mappings = [
            "launch_block_device_mappings",
            "ami_block_device_mappings",
            "ebs_volumes",
        ]
        .iter()
        .filter_map(|k| opt(k))
        .any(|m| {
            m.to_string().contains("kms_key_id") || m.to_string().contains("\"encrypted\":true")
        });
        if opt("kms_key_id").is_some()
            || opt("region_kms_key_ids").is_some()
            || opt("encrypt_boot").is_some()
            || kms_in_mappings
        {
            actions.extend(KMS_ACTIONS.iter().map(|a| a.to_string()));
        }
        let session_manager = opt("ssh_interface").is_some_and(|v| v == "session_manager");
        let ssm_communicator = opt("communicator").is_some_and(|v| v == "ssm");
        if session_manager || ssm_communicator {
            actions.extend(SSM_RUN_ACTIONS.iter().map(|a| a.to_string()));
            actions.insert("ssm:StartSession".into());
            actions.insert("ssm:TerminateSession".into());
            // Provision finds its commands again, stages files, reads and removes them.
            actions.extend(
                [
                    "ssm:ListCommands",
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:ListBucket",
                    "s3:DeleteObject",
                ]
                .map(String::from),
            );
        }
        let network = [
            "vpc_id",
            "vpc_filter",
            "subnet_id",
            "subnet_filter",
            "security_group_filter",
        ];
        if network.iter().any(|k| opt(k).is_some()) {
            actions.insert("ec2:DescribeVpcs".into());
        }
        // A temporary key pair's private key is a tagged SecureString parameter.
        let own_key = ["ssh_keypair_name", "ssh_private_key_file", "ssh_password"]
            .iter()
            .any(|k| opt(k).is_some_and(|v| v.as_str() != Some("")))
            || opt("ssh_agent_auth").is_some_and(|v| v == true);
        let no_key = opt("communicator").is_some_and(|v| v == "none" || v == "ssm");
        if !no_key {
            // KeyPair finds the named pair, or its own temporary one again.
            actions.insert("ec2:DescribeKeyPairs".into());
        }
        if !own_key && !no_key {
            // Stored by KeyPair, read by Connect and Provision, removed by Cleanup (which
            // also looks for a parameter a failed KeyPair left, by the build's path).
            actions.extend(
                amiflow::resources::key_pair::PARAMETER_ACTIONS
                    .iter()
                    .map(|a| a.to_string()),
            );
        }
        if opt("deprecate_at").is_some() {
            actions.insert("ec2:EnableImageDeprecation".into());
        }
        if opt("source_ami")
            .is_some_and(|v| v.as_str().is_some_and(|s| s.starts_with("resolve:ssm:")))
        {
            actions.insert("ssm:GetParameter".into());
        }
        if let Some(profile) = opt("iam_instance_profile") {
            actions.insert("iam:GetInstanceProfile".into());
            pass_roles.insert(format!(
                "arn:aws:iam::*:role/{}",
                profile.as_str().unwrap_or_default()
            ));
        }
        if opt("temporary_iam_instance_profile_policy_document").is_some() {
            actions.extend(TEMPORARY_PROFILE_ACTIONS.iter().map(|a| a.to_string()));
            // Cleanup lists the build's own tagged profile and role when it recorded none.
            actions.extend(
                [
                    "iam:GetRole",
                    "iam:ListRolePolicies",
                    "iam:ListInstanceProfiles",
                    "iam:ListRoles",
                ]
                .map(String::from),
            );
            pass_roles.insert("arn:aws:iam::*:role/packer-*".into());
            pass_roles.insert("arn:aws:iam::*:role/amiflow-*".into());
        }
        if let Some(role) =
            opt("assume_role").and_then(|r| r["role_arn"].as_str().map(String::from))
        {
            assume_roles.insert(role);
        }
        if b["type"] == "amazon-instance" {
            // The bundle bucket: read back the manifest, removed by Cleanup when it made it.
            actions.extend(
                [
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:ListBucket",
                    "s3:DeleteObject",
                    "s3:GetBucketTagging",
                    "s3:DeleteBucket",
                ]
                .map(String::from),
            );
            // bundle_upload_command writes the bundle with the caller's keys.
            actions.extend(
                amiflow::steps::upload_bundle::BUNDLE_UPLOAD_ACTIONS
                    .iter()
                    .map(|a| a.to_string()),
            );
        }
        if b["type"] == "amazon-chroot" {
            // The host script: sent to the build host, found again, waited for.
            actions.extend(
                [
                    "ec2:DescribeInstances",
                    "ec2:AttachVolume",
                    "ec2:DetachVolume",
                    "ssm:SendCommand",
                    "ssm:ListCommands",
                    "ssm:GetCommandInvocation",
                ]
                .map(String::from),
            );
        }
    }

    let mut statements = vec![
        json!({ "Sid": "AmiflowBuild", "Effect": "Allow", "Action": actions, "Resource": "*" }),
    ];
    if !pass_roles.is_empty() {
        statements.push(json!({
            "Sid": "PassInstanceProfileRole", "Effect": "Allow", "Action": "iam:PassRole", "Resource": pass_roles,
            "Condition": { "StringEquals": { "iam:PassedToService": "ec2.amazonaws.com" } }
        }));
    }
    if !assume_roles.is_empty() {
        statements.push(json!({ "Sid": "AssumeRole", "Effect": "Allow", "Action": "sts:AssumeRole", "Resource": assume_roles }));
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actions(policy: &Value) -> BTreeSet<String> {
        amiflow::infra::policy_actions(policy).into_iter().collect()
    }

    fn basic_ebs() -> Value {
        json!({
            "variables": { "region": "us-east-1" },
            "builders": [{ "type": "amazon-ebs", "region": "{{user `region`}}", "source_ami": "ami-0f8848d57eb4fe2d2",
                "instance_type": "t2.micro", "ssh_username": "ec2-user", "ami_name": "basic {{timestamp}}" }]
        })
    }

    fn seed_files() -> Vec<PathBuf> {
        let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
        let mut dirs: Vec<PathBuf> = std::env::var_os("AMIFLOW_SEEDS")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        dirs.push(root.join("../shared/seeds"));
        dirs.push(PathBuf::from("/work/shared/seeds"));
        dirs.into_iter()
            .find(|d| d.is_dir())
            .map(|d| {
                std::fs::read_dir(d)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every `"ec2:..."` action the seeds' policies list.
    fn seed_actions() -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for file in seed_files() {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for piece in text.split("\"ec2:").skip(1) {
                let name: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                if piece[name.len()..].starts_with('"') {
                    found.insert(format!("ec2:{name}").to_lowercase());
                }
            }
        }
        found
    }

    #[test]
    fn basic_ebs_policy_covers_the_seeds_list() {
        let seeds = seed_actions();
        if seeds.is_empty() {
            eprintln!("SKIPPED the seed-file comparison: no seeds directory (set AMIFLOW_SEEDS)");
        }
        let policy = minimal_policy(
            &basic_ebs(),
            &BTreeMap::new(),
            None,
            &amiflow::flows::registry(),
        );
        let granted: BTreeSet<String> = actions(&policy)
            .into_iter()
            .map(|a| a.to_lowercase())
            .collect();
        let missing: Vec<_> = seeds.iter().filter(|a| !granted.contains(*a)).collect();
        assert!(missing.is_empty(), "the seeds list {missing:?}");
        for a in SEED_BASE_ACTIONS {
            assert!(granted.contains(&a.to_lowercase()), "{a}");
        }
        // Option-driven grants stay out (steps declare everything they may call, so the
        // step union is coarser than the options).
        for absent in [
            "sts:assumerole",
            "iam:passrole",
            "ssm:startsession",
            "ec2:describespotpricehistory",
            "ec2:requestspotinstances",
        ] {
            assert!(
                !granted.contains(absent),
                "{absent} granted to a basic template"
            );
        }
    }

    #[test]
    fn option_only_actions_come_with_their_options() {
        let registry = amiflow::flows::registry();
        let mut none = basic_ebs();
        none["builders"][0]["communicator"] = json!("none");
        let basic = actions(&minimal_policy(&none, &BTreeMap::new(), None, &registry));
        for a in ONLY_WITH_OPTIONS {
            assert!(
                !basic.contains(*a),
                "{a} granted to a template without its option"
            );
        }
        let mut full = basic_ebs();
        full["builders"][0]["communicator"] = json!("ssh");
        full["builders"][0]["spot_price"] = json!("auto");
        full["builders"][0]["encrypt_boot"] = json!(true);
        full["builders"][0]["temporary_iam_instance_profile_policy_document"] =
            json!({"Version": "2012-10-17", "Statement": []});
        let granted = actions(&minimal_policy(&full, &BTreeMap::new(), None, &registry));
        for a in [
            "ssm:AddTagsToResource",
            "ec2:CancelSpotInstanceRequests",
            "kms:CreateGrant",
            "iam:CreateRole",
            "iam:GetRole",
            "iam:PutRolePolicy",
        ] {
            assert!(granted.contains(a), "{a}");
        }
        full["builders"][0]["communicator"] = json!("ssm");
        let ssm = actions(&minimal_policy(&full, &BTreeMap::new(), None, &registry));
        for a in [
            "ssm:GetCommandInvocation",
            "ssm:ListCommands",
            "s3:GetObject",
        ] {
            assert!(ssm.contains(a), "{a}");
        }
    }

    #[test]
    fn registered_steps_are_granted() {
        // With a pipeline, so that its states count too; a plain build gets none of theirs.
        let policy = minimal_policy_with(
            &basic_ebs(),
            &BTreeMap::new(),
            None,
            &amiflow::flows::registry(),
            true,
        );
        let granted = actions(&policy);
        let plain = actions(&minimal_policy(
            &basic_ebs(),
            &BTreeMap::new(),
            None,
            &amiflow::flows::registry(),
        ));
        assert!(!plain.contains("sns:Publish") && granted.contains("sns:Publish"));
        assert!(
            granted.contains("ssm:GetParameter"),
            "Publish reads the parameter it writes"
        );
        for spec in amiflow::flows::registry().iter().filter(|s| {
            amiflow::infra::is_state_machine_task(s.name)
                && s.name != amiflow::flows::AWAIT_EVENT.name
        }) {
            for a in spec
                .iam_actions
                .iter()
                .filter(|a| !SCOPED_BELOW.contains(a) && !ONLY_WITH_OPTIONS.contains(a))
            {
                assert!(granted.contains(*a), "{} needs {a}", spec.name);
            }
        }
    }

    #[test]
    fn options_add_spot_copy_kms_ssm_profile_and_assume_role() {
        let template = json!({
            "variables": { "spot": "" },
            "builders": [{ "type": "amazon-ebs", "region": "us-east-1", "spot_price": "{{user `spot`}}",
                "ami_regions": ["eu-west-1"], "encrypt_boot": true, "kms_key_id": "alias/x",
                "iam_instance_profile": "packer-build", "ssh_interface": "session_manager",
                "assume_role": { "role_arn": "arn:aws:iam::1:role/builder" } }]
        });
        let vars = BTreeMap::from([("spot".to_string(), "auto".to_string())]);
        let policy = minimal_policy(&template, &vars, None, &[]);
        let granted = actions(&policy);
        for a in [
            "ec2:RequestSpotInstances",
            "ec2:DescribeSpotPriceHistory",
            "ec2:CopyImage",
            "kms:CreateGrant",
            "ssm:StartSession",
            "iam:GetInstanceProfile",
            "iam:PassRole",
            "sts:AssumeRole",
        ] {
            assert!(granted.contains(a), "{a} missing from {granted:?}");
        }
        let text = policy.to_string();
        assert!(text.contains("role/packer-build") && text.contains("arn:aws:iam::1:role/builder"));
        // Without the variable, spot_price is empty: no spot actions.
        let plain = actions(&minimal_policy(&template, &BTreeMap::new(), None, &[]));
        assert!(!plain.contains("ec2:RequestSpotInstances"));
    }

    #[test]
    fn steps_follow_the_definitions_branch_for_the_builder_type() {
        let definition = json!({
            "StartAt": "Prepare",
            "States": {
                "Prepare": { "Type": "Task", "Resource": "${PrepareFunctionArn}", "Next": "Builds" },
                "Builds": { "Type": "Map", "ItemProcessor": { "StartAt": "Type", "States": {
                    "Type": { "Type": "Choice", "Choices": [
                        { "Variable": "$.build.builder_type", "StringEquals": "amazon-ebs", "Next": "RunSourceInstance" },
                        { "Variable": "$.build.builder_type", "StringEquals": "amazon-chroot", "Next": "AttachVolume" }
                    ] },
                    "RunSourceInstance": { "Type": "Task", "Resource": "${RunSourceInstanceFunctionArn}", "Next": "Cleanup",
                        "Catch": [{ "ErrorEquals": ["States.ALL"], "Next": "Cleanup" }] },
                    "AttachVolume": { "Type": "Task", "Resource": "${AttachVolumeFunctionArn}", "Next": "Cleanup" },
                    "Cleanup": { "Type": "Task", "Resource": "${CleanupFunctionArn}", "End": true }
                } }, "Next": "Finalize" },
                "Finalize": { "Type": "Task", "Resource": "${FinalizeFunctionArn}", "End": true }
            }
        });
        let ebs =
            steps_for_builders(&definition, &BTreeSet::from(["amazon-ebs".to_string()])).unwrap();
        assert_eq!(
            ebs,
            BTreeSet::from(
                ["Prepare", "RunSourceInstance", "Cleanup", "Finalize"].map(String::from)
            )
        );
        let chroot =
            steps_for_builders(&definition, &BTreeSet::from(["amazon-chroot".to_string()]))
                .unwrap();
        assert!(chroot.contains("AttachVolume") && !chroot.contains("RunSourceInstance"));
    }
}
