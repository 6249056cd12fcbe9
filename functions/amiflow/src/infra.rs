//! The deployment, generated from the step registry so that roles cannot drift from steps.
//!
//! [`sam_template`] renders `infra/template.json` (SAM reads JSON templates as they are):
//! one function per step from the one `bootstrap` binary, each with its own role granting
//! exactly the step's `iam_actions`; the state machine with a `<Step>FunctionArn`
//! substitution per step; its log group; the artifacts bucket; the chroot host SSM
//! document; the optional schedule and the janitor. [`steps_manifest`] renders
//! `infra/steps.json`, which the CDK construct reads, so both deployments grant the same.
//!
//! Both files are committed; a test regenerates them and fails when they differ
//! (`AMIFLOW_UPDATE_INFRA=1` rewrites them).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::resources::iam::IAM_PATH;
use crate::steps::StepSpec;

/// The handler the janitor rule invokes; it is not a state of the state machine.
pub const JANITOR: &str = "Janitor";

/// Lambda memory for every step: the handlers are API callers, not compute.
pub const MEMORY_MB: u32 = 256;

/// Where the chroot host script lives, relative to the repository root.
pub const CHROOT_HOST_SCRIPT: &str = "infra/chroot-host.sh";

/// The SSM document parameter carrying the chroot job (base64 of its JSON).
pub const CHROOT_JOB_PARAMETER: &str = "job";

const LAMBDA_BASIC_EXECUTION: &str =
    "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole";
const XRAY_WRITE: &str = "arn:${AWS::Partition}:iam::aws:policy/AWSXRayDaemonWriteAccess";

/// CloudFormation logical id prefix of a step: `CreateImage` → `CreateImage` (ids are
/// alphanumeric; step names already are, anything else is dropped).
pub fn logical_id(step: &str) -> String {
    step.chars().filter(|c| c.is_ascii_alphanumeric()).collect()
}

/// The ASL placeholder a Task's Resource uses for this step.
pub fn substitution_name(step: &str) -> String {
    format!("{}FunctionArn", logical_id(step))
}

/// A step's actions, sorted and without duplicates, split into (everything else, iam:PassRole?).
fn split_actions(spec: &StepSpec) -> (Vec<String>, bool) {
    let mut actions: Vec<String> = spec.iam_actions.iter().map(|a| a.to_string()).collect();
    actions.sort();
    actions.dedup();
    let pass_role = actions
        .iter()
        .any(|a| a.eq_ignore_ascii_case("iam:PassRole"));
    actions.retain(|a| !a.eq_ignore_ascii_case("iam:PassRole"));
    (actions, pass_role)
}

/// The inline policy of a step's role: its actions on `*` (EC2 has no useful resource
/// scoping for creates), and `iam:PassRole` only towards EC2 and only on the named instance
/// profile roles and amiflow's own temporary ones (under [`IAM_PATH`], from
/// `temporary_iam_instance_profile_policy_document`).
fn step_policy_document(spec: &StepSpec) -> Value {
    let (actions, pass_role) = split_actions(spec);
    let mut statements = Vec::new();
    if !actions.is_empty() {
        statements.push(
            json!({ "Sid": "StepActions", "Effect": "Allow", "Action": actions, "Resource": "*" }),
        );
    }
    if pass_role {
        statements.push(json!({
            "Fn::If": ["HasInstanceProfileRoles", {
                "Sid": "PassInstanceProfileRoles",
                "Effect": "Allow",
                "Action": ["iam:PassRole"],
                "Resource": { "Fn::Split": [",", { "Fn::Sub": [
                    "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${Names}",
                    { "Names": { "Fn::Join": [",arn:${AWS::Partition}:iam::${AWS::AccountId}:role/", { "Ref": "InstanceProfileRoleNames" }] } }
                ] }] },
                "Condition": { "StringEquals": { "iam:PassedToService": "ec2.amazonaws.com" } }
            }, { "Ref": "AWS::NoValue" }]
        }));
        statements.push(json!({
            "Sid": "PassTemporaryProfileRoles",
            "Effect": "Allow",
            "Action": ["iam:PassRole"],
            "Resource": { "Fn::Sub": format!("arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:role{IAM_PATH}*") },
            "Condition": { "StringEquals": { "iam:PassedToService": "ec2.amazonaws.com" } }
        }));
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

fn step_role(spec: &StepSpec) -> Value {
    let mut properties = json!({
        "AssumeRolePolicyDocument": {
            "Version": "2012-10-17",
            "Statement": [{ "Effect": "Allow", "Principal": { "Service": "lambda.amazonaws.com" }, "Action": "sts:AssumeRole" }]
        },
        "ManagedPolicyArns": [
            { "Fn::Sub": LAMBDA_BASIC_EXECUTION },
            { "Fn::If": ["TracingEnabled", { "Fn::Sub": XRAY_WRITE }, { "Ref": "AWS::NoValue" }] }
        ],
        "Tags": [{ "Key": "amiflow:step", "Value": spec.name }]
    });
    if !spec.iam_actions.is_empty() {
        properties["Policies"] = json!([{ "PolicyName": format!("amiflow-{}", spec.name), "PolicyDocument": step_policy_document(spec) }]);
    }
    json!({ "Type": "AWS::IAM::Role", "Properties": properties })
}

fn step_function(spec: &StepSpec) -> Value {
    let id = logical_id(spec.name);
    let mut environment = json!({
        "AMIFLOW_ARTIFACTS_BUCKET": { "Ref": "ArtifactsBucket" },
        "AMIFLOW_BUILD_HOST_INSTANCE_ID": { "Ref": "BuildHostInstanceId" },
        "AMIFLOW_DEFAULT_VPC_ID": { "Ref": "DefaultVpcId" },
        "AMIFLOW_DEFAULT_SUBNET_ID": { "Ref": "DefaultSubnetId" },
        "AMIFLOW_CHROOT_DOCUMENT": { "Ref": "ChrootHostDocument" }
    });
    if spec.name == JANITOR {
        environment["AMIFLOW_JANITOR_REGIONS"] =
            json!({ "Fn::Join": [",", { "Ref": "JanitorRegions" }] });
    }
    json!({
        "Type": "AWS::Serverless::Function",
        "Properties": {
            "Handler": spec.name,
            "Timeout": spec.timeout_seconds,
            "MemorySize": MEMORY_MB,
            "Role": { "Fn::GetAtt": [format!("{id}Role"), "Arn"] },
            "Environment": { "Variables": environment }
        }
    })
}

/// The SSM Command document that runs the chroot host script on the build host. The script
/// is embedded as base64 (SSM would otherwise interpret `{{ }}` in it); the job comes as
/// the base64 `job` parameter, restricted to base64 characters so it cannot inject shell.
pub fn chroot_document_content(chroot_script: Option<&str>) -> Value {
    let run_command: Vec<String> = match chroot_script {
        Some(script) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(script.as_bytes());
            vec![
                "set -eu".into(),
                "work=$(mktemp -d /tmp/amiflow-chroot.XXXXXX)".into(),
                "trap 'rm -rf \"$work\"' EXIT".into(),
                format!("printf '%s' '{encoded}' | base64 -d > \"$work/chroot-host.sh\""),
                format!("printf '%s' '{{{{ {CHROOT_JOB_PARAMETER} }}}}' | base64 -d > \"$work/job\""),
                "AMIFLOW_CHROOT_JOB=\"$work/job\" bash \"$work/chroot-host.sh\" \"$work/job\"".into(),
            ]
        }
        // Rendered only until the chroot host script exists; the sync test then fails until
        // the template is regenerated with it.
        None => vec![format!(
            "echo '{CHROOT_HOST_SCRIPT} was missing when this template was generated: regenerate infra/ with AMIFLOW_UPDATE_INFRA=1' >&2; exit 1"
        )],
    };
    json!({
        "schemaVersion": "2.2",
        "description": "amiflow: mount the attached volume, chroot, provision, unmount (amazon-chroot builds)",
        "parameters": {
            CHROOT_JOB_PARAMETER: {
                "type": "String",
                "description": "The chroot job file (KEY=value lines: volume id, mounts, copy_files, provisioners), base64-encoded",
                "allowedPattern": "^[A-Za-z0-9+/=]*$"
            }
        },
        "mainSteps": [{
            "action": "aws:runShellScript",
            "name": "RunChrootHostScript",
            "inputs": { "runCommand": run_command, "timeoutSeconds": "7200" }
        }]
    })
}

fn parameters() -> Value {
    json!({
        "Architecture": { "Type": "String", "AllowedValues": ["arm64", "x86_64"], "Default": "arm64",
            "Description": "CPU architecture of the bootstrap binary in CodeUri" },
        "BuildHostInstanceId": { "Type": "String", "Default": "",
            "Description": "amazon-chroot build host instance id (templates may name their own)" },
        "DefaultVpcId": { "Type": "String", "Default": "", "Description": "VPC used when a template names none" },
        "DefaultSubnetId": { "Type": "String", "Default": "", "Description": "Subnet used when a template names none" },
        "InstanceProfileRoleNames": { "Type": "CommaDelimitedList", "Default": "",
            "Description": "Roles of the instance profiles templates may attach (iam_instance_profile): the only roles the steps may pass to EC2" },
        "Tracing": { "Type": "String", "AllowedValues": ["Enabled", "Disabled"], "Default": "Disabled",
            "Description": "X-Ray tracing for the state machine and the functions" },
        "LogRetentionDays": { "Type": "Number", "Default": 30,
            "AllowedValues": [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653] },
        "StagedFilesExpirationDays": { "Type": "Number", "Default": 7, "MinValue": 1,
            "Description": "Days before staged files and SSM output under staged/ and ssm-output/ in the artifacts bucket expire" },
        "ScheduleExpression": { "Type": "String", "Default": "",
            "Description": "cron(...) or rate(...) to start builds on a schedule; empty disables the schedule" },
        "ScheduleTemplateS3": { "Type": "String", "Default": "",
            "Description": "s3://bucket/key of the Packer template the schedule builds" },
        "ScheduleVars": { "Type": "String", "Default": "{}",
            "Description": "JSON object of template variables for scheduled builds" },
        "JanitorRegions": { "Type": "CommaDelimitedList", "Default": "",
            "Description": "Regions the janitor sweeps when an execution's input names none (empty: the stack's region)" }
    })
}

fn conditions(any_pass_role: bool) -> Value {
    let mut conditions = json!({
        "ScheduleEnabled": { "Fn::Not": [{ "Fn::Equals": [{ "Ref": "ScheduleExpression" }, ""] }] },
        "TracingEnabled": { "Fn::Equals": [{ "Ref": "Tracing" }, "Enabled"] }
    });
    // Declared only when used: cfn-lint rejects unused conditions.
    if any_pass_role {
        conditions["HasInstanceProfileRoles"] = json!({ "Fn::Not": [{ "Fn::Equals": [{ "Fn::Join": ["", { "Ref": "InstanceProfileRoleNames" }] }, ""] }] });
    }
    conditions
}

/// The whole SAM template. `steps` is the registry (the janitor among them); `chroot_script`
/// the content of [`CHROOT_HOST_SCRIPT`].
pub fn sam_template(steps: &[StepSpec], chroot_script: Option<&str>) -> Value {
    let mut resources = Map::new();
    let mut state_steps: Vec<&StepSpec> = steps.iter().filter(|s| s.name != JANITOR).collect();
    state_steps.sort_by_key(|s| s.name);

    for spec in steps {
        let id = logical_id(spec.name);
        resources.insert(format!("{id}Role"), step_role(spec));
        resources.insert(format!("{id}Function"), step_function(spec));
    }

    let substitutions: Map<String, Value> = state_steps
        .iter()
        .map(|s| {
            (
                substitution_name(s.name),
                json!({ "Fn::GetAtt": [format!("{}Function", logical_id(s.name)), "Arn"] }),
            )
        })
        .collect();
    let invoked: Vec<Value> = state_steps
        .iter()
        .map(|s| json!({ "Fn::GetAtt": [format!("{}Function", logical_id(s.name)), "Arn"] }))
        .collect();

    let mut state_machine_statements = vec![
        json!({
            "Sid": "DeliverLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogDelivery", "logs:DeleteLogDelivery", "logs:DescribeLogGroups",
                "logs:DescribeResourcePolicies", "logs:GetLogDelivery", "logs:ListLogDeliveries",
                "logs:PutResourcePolicy", "logs:UpdateLogDelivery"],
            "Resource": "*"
        }),
        json!({ "Fn::If": ["TracingEnabled", {
            "Sid": "Trace",
            "Effect": "Allow",
            "Action": ["xray:GetSamplingRules", "xray:GetSamplingTargets", "xray:PutTelemetryRecords", "xray:PutTraceSegments"],
            "Resource": "*"
        }, { "Ref": "AWS::NoValue" }] }),
    ];
    if !invoked.is_empty() {
        state_machine_statements.insert(0, json!({ "Sid": "InvokeSteps", "Effect": "Allow", "Action": ["lambda:InvokeFunction"], "Resource": invoked }));
    }
    resources.insert("StateMachineRole".into(), json!({
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [{ "Effect": "Allow", "Principal": { "Service": "states.amazonaws.com" }, "Action": "sts:AssumeRole" }]
            },
            "Policies": [{ "PolicyName": "amiflow-state-machine", "PolicyDocument": { "Version": "2012-10-17", "Statement": state_machine_statements } }]
        }
    }));
    resources.insert(
        "StateMachineLogGroup".into(),
        json!({
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": { "Fn::Sub": "/aws/vendedlogs/states/${AWS::StackName}-amiflow" },
                "RetentionInDays": { "Ref": "LogRetentionDays" }
            }
        }),
    );
    resources.insert("StateMachine".into(), json!({
        "Type": "AWS::Serverless::StateMachine",
        "Properties": {
            "DefinitionUri": "../statemachine/amiflow.asl.json",
            "DefinitionSubstitutions": substitutions,
            "Role": { "Fn::GetAtt": ["StateMachineRole", "Arn"] },
            "Type": "STANDARD",
            // Execution data stays out of the logs: the console's history already holds it.
            "Logging": {
                "Level": "ALL",
                "IncludeExecutionData": false,
                "Destinations": [{ "CloudWatchLogsLogGroup": { "LogGroupArn": { "Fn::GetAtt": ["StateMachineLogGroup", "Arn"] } } }]
            },
            "Tracing": { "Enabled": { "Fn::If": ["TracingEnabled", true, false] } }
        }
    }));

    resources.insert("ArtifactsBucket".into(), json!({
        "Type": "AWS::S3::Bucket",
        "DeletionPolicy": "Retain",
        "UpdateReplacePolicy": "Retain",
        "Properties": {
            "BucketEncryption": { "ServerSideEncryptionConfiguration": [{ "ServerSideEncryptionByDefault": { "SSEAlgorithm": "AES256" } }] },
            "PublicAccessBlockConfiguration": { "BlockPublicAcls": true, "BlockPublicPolicy": true, "IgnorePublicAcls": true, "RestrictPublicBuckets": true },
            "OwnershipControls": { "Rules": [{ "ObjectOwnership": "BucketOwnerEnforced" }] },
            "LifecycleConfiguration": { "Rules": [
                { "Id": "ExpireStagedFiles", "Status": "Enabled", "Prefix": "staged/", "ExpirationInDays": { "Ref": "StagedFilesExpirationDays" } },
                { "Id": "ExpireSsmOutput", "Status": "Enabled", "Prefix": "ssm-output/", "ExpirationInDays": { "Ref": "StagedFilesExpirationDays" } },
                { "Id": "AbortIncompleteUploads", "Status": "Enabled", "AbortIncompleteMultipartUpload": { "DaysAfterInitiation": 1 } }
            ] }
        }
    }));
    resources.insert("ArtifactsBucketPolicy".into(), json!({
        "Type": "AWS::S3::BucketPolicy",
        "Properties": {
            "Bucket": { "Ref": "ArtifactsBucket" },
            "PolicyDocument": { "Version": "2012-10-17", "Statement": [{
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [{ "Fn::GetAtt": ["ArtifactsBucket", "Arn"] }, { "Fn::Sub": "${ArtifactsBucket.Arn}/*" }],
                "Condition": { "Bool": { "aws:SecureTransport": "false" } }
            }] }
        }
    }));

    resources.insert("ChrootHostDocument".into(), json!({
        "Type": "AWS::SSM::Document",
        "Properties": { "DocumentType": "Command", "DocumentFormat": "JSON", "Content": chroot_document_content(chroot_script) }
    }));

    resources.insert("ScheduleRole".into(), json!({
        "Type": "AWS::IAM::Role",
        "Condition": "ScheduleEnabled",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [{ "Effect": "Allow", "Principal": { "Service": "events.amazonaws.com" }, "Action": "sts:AssumeRole" }]
            },
            "Policies": [{ "PolicyName": "amiflow-schedule", "PolicyDocument": { "Version": "2012-10-17", "Statement": [
                { "Effect": "Allow", "Action": ["states:StartExecution"], "Resource": { "Ref": "StateMachine" } }
            ] } }]
        }
    }));
    resources.insert("Schedule".into(), json!({
        "Type": "AWS::Events::Rule",
        "Condition": "ScheduleEnabled",
        "Properties": {
            "Description": "Starts an amiflow build of ScheduleTemplateS3 on ScheduleExpression",
            "ScheduleExpression": { "Ref": "ScheduleExpression" },
            "State": "ENABLED",
            "Targets": [{
                "Id": "StartBuild",
                "Arn": { "Ref": "StateMachine" },
                "RoleArn": { "Fn::GetAtt": ["ScheduleRole", "Arn"] },
                "Input": { "Fn::Sub": "{\"template_s3\": \"${ScheduleTemplateS3}\", \"vars\": ${ScheduleVars}}" }
            }]
        }
    }));

    if steps.iter().any(|s| s.name == JANITOR) {
        let janitor = logical_id(JANITOR);
        resources.insert("JanitorRule".into(), json!({
            "Type": "AWS::Events::Rule",
            "Properties": {
                "Description": "Sweeps the resources of amiflow builds that were aborted, timed out or failed",
                "State": "ENABLED",
                "EventPattern": {
                    "source": ["aws.states"],
                    "detail-type": ["Step Functions Execution Status Change"],
                    "detail": { "status": ["ABORTED", "TIMED_OUT", "FAILED"], "stateMachineArn": [{ "Ref": "StateMachine" }] }
                },
                "Targets": [{
                    "Id": "Janitor",
                    "Arn": { "Fn::GetAtt": [format!("{janitor}Function"), "Arn"] },
                    "RetryPolicy": { "MaximumRetryAttempts": 10, "MaximumEventAgeInSeconds": 86400 }
                }]
            }
        }));
        resources.insert(
            "JanitorInvokePermission".into(),
            json!({
                "Type": "AWS::Lambda::Permission",
                "Properties": {
                    "Action": "lambda:InvokeFunction",
                    "FunctionName": { "Ref": format!("{janitor}Function") },
                    "Principal": "events.amazonaws.com",
                    "SourceArn": { "Fn::GetAtt": ["JanitorRule", "Arn"] }
                }
            }),
        );
    }

    canonical(json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Transform": "AWS::Serverless-2016-10-31",
        "Description": "amiflow: Packer's Amazon builders as a Step Functions state machine (generated from the step registry; do not edit, run the infra test with AMIFLOW_UPDATE_INFRA=1)",
        "Parameters": parameters(),
        "Conditions": conditions(steps.iter().any(|s| split_actions(s).1)),
        "Globals": { "Function": {
            "CodeUri": "build/lambda/",
            "Runtime": "provided.al2023",
            "Architectures": [{ "Ref": "Architecture" }],
            "Tracing": { "Fn::If": ["TracingEnabled", "Active", "PassThrough"] }
        } },
        "Resources": resources,
        "Outputs": {
            "StateMachineArn": { "Value": { "Ref": "StateMachine" }, "Description": "amiflow start --state-machine <this>" },
            "ArtifactsBucketName": { "Value": { "Ref": "ArtifactsBucket" } },
            "ChrootHostDocumentName": { "Value": { "Ref": "ChrootHostDocument" } }
        }
    }))
}

/// What the CDK construct needs to grant the same as the SAM template: every step's
/// actions, timeout and memory, and the chroot host document.
pub fn steps_manifest(steps: &[StepSpec], chroot_script: Option<&str>) -> Value {
    let mut sorted: Vec<&StepSpec> = steps.iter().collect();
    sorted.sort_by_key(|s| s.name);
    let entries: Vec<Value> = sorted
        .iter()
        .map(|s| {
            let (mut actions, pass_role) = split_actions(s);
            if pass_role {
                actions.push("iam:PassRole".into());
                actions.sort();
            }
            json!({
                "name": s.name,
                "logical_id": logical_id(s.name),
                "iam_actions": actions,
                "timeout_seconds": s.timeout_seconds,
                "memory_mb": MEMORY_MB,
                "state_machine_task": s.name != JANITOR,
                "substitution": substitution_name(s.name),
            })
        })
        .collect();
    canonical(json!({
        "generated_by": "functions/amiflow/src/infra.rs (AMIFLOW_UPDATE_INFRA=1 cargo test --workspace infra_files_are_in_sync)",
        "steps": entries,
        "chroot_host_document": chroot_document_content(chroot_script),
        "chroot_job_parameter": CHROOT_JOB_PARAMETER,
        "temporary_role_path": IAM_PATH,
    }))
}

/// Sorted keys at every level, whatever serde_json's map flavour: the committed files must
/// not change with feature unification.
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonical(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// The files under `infra/` generated from the registry: (path relative to the repo root, content).
pub fn generated_files(repo_root: &Path, steps: &[StepSpec]) -> Vec<(PathBuf, String)> {
    let script = std::fs::read_to_string(repo_root.join(CHROOT_HOST_SCRIPT)).ok();
    let render = |v: Value| serde_json::to_string_pretty(&v).expect("JSON renders") + "\n";
    vec![
        (
            PathBuf::from("infra/template.json"),
            render(sam_template(steps, script.as_deref())),
        ),
        (
            PathBuf::from("infra/steps.json"),
            render(steps_manifest(steps, script.as_deref())),
        ),
    ]
}

/// Every IAM action named in a policy document, including those under `Fn::If`.
pub fn policy_actions(document: &Value) -> Vec<String> {
    let mut found = Vec::new();
    fn walk(v: &Value, found: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "Action" {
                        match v {
                            Value::String(s) => found.push(s.clone()),
                            Value::Array(items) => found
                                .extend(items.iter().filter_map(|i| i.as_str().map(String::from))),
                            _ => {}
                        }
                    } else {
                        walk(v, found);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, found)),
            _ => {}
        }
    }
    walk(document, &mut found);
    found.sort();
    found.dedup();
    found
}

/// For every function in a rendered SAM template: (handler, actions its own role's inline
/// policies allow). Managed policies (logs, X-Ray) are not step actions and are left out.
pub fn function_role_actions(template: &Value) -> Result<Vec<(String, Vec<String>)>, String> {
    let resources = template["Resources"]
        .as_object()
        .ok_or("template has no Resources")?;
    let mut out = Vec::new();
    for (id, resource) in resources {
        if resource["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let handler = resource["Properties"]["Handler"]
            .as_str()
            .ok_or(format!("{id}: no Handler"))?;
        let role_id = resource["Properties"]["Role"]["Fn::GetAtt"][0]
            .as_str()
            .ok_or(format!(
                "{id}: Role is not a GetAtt of a role in this template"
            ))?;
        let role = resources
            .get(role_id)
            .ok_or(format!("{id}: role {role_id} missing"))?;
        if role["Type"] != "AWS::IAM::Role" {
            return Err(format!("{id}: {role_id} is not an AWS::IAM::Role"));
        }
        let mut actions = Vec::new();
        for policy in role["Properties"]["Policies"]
            .as_array()
            .into_iter()
            .flatten()
        {
            actions.extend(policy_actions(&policy["PolicyDocument"]));
        }
        actions.sort();
        actions.dedup();
        out.push((handler.to_string(), actions));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::registry;

    fn noop(
        _: std::sync::Arc<crate::Ctx>,
        v: Value,
    ) -> futures::future::BoxFuture<'static, Result<Value, crate::StepError>> {
        Box::pin(async move { Ok(v) })
    }

    fn sample_steps() -> Vec<StepSpec> {
        vec![
            StepSpec {
                name: "RunSourceInstance",
                iam_actions: &["ec2:RunInstances", "ec2:CreateTags", "iam:PassRole"],
                wait: None,
                timeout_seconds: 60,
                handler: noop,
            },
            StepSpec {
                name: "CreateImage",
                iam_actions: &["ec2:CreateImage", "ec2:CreateImage"],
                wait: None,
                timeout_seconds: 30,
                handler: noop,
            },
            StepSpec {
                name: JANITOR,
                iam_actions: &["ec2:TerminateInstances"],
                wait: None,
                timeout_seconds: 900,
                handler: noop,
            },
        ]
    }

    fn repo_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .unwrap()
    }

    #[test]
    fn each_role_allows_exactly_its_steps_actions() {
        let steps = sample_steps();
        let template = sam_template(&steps, Some("echo hi\n"));
        let roles = function_role_actions(&template).unwrap();
        assert_eq!(roles.len(), 3);
        for (handler, actions) in roles {
            let spec = steps.iter().find(|s| s.name == handler).unwrap();
            let mut declared: Vec<String> =
                spec.iam_actions.iter().map(|s| s.to_string()).collect();
            declared.sort();
            declared.dedup();
            assert_eq!(actions, declared, "{handler}");
        }
    }

    #[test]
    fn the_role_check_notices_a_missing_or_extra_action() {
        let mut template = sam_template(&sample_steps(), None);
        let doc = &mut template["Resources"]["CreateImageRole"]["Properties"]["Policies"][0]
            ["PolicyDocument"];
        doc["Statement"][0]["Action"] = json!(["ec2:CreateImage", "ec2:DeleteVolume"]);
        let roles = function_role_actions(&template).unwrap();
        let create = roles.iter().find(|(h, _)| h == "CreateImage").unwrap();
        assert_eq!(create.1, vec!["ec2:CreateImage", "ec2:DeleteVolume"]);
    }

    #[test]
    fn pass_role_is_limited_to_named_roles_and_ec2() {
        let template = sam_template(&sample_steps(), None);
        let statements = &template["Resources"]["RunSourceInstanceRole"]["Properties"]["Policies"]
            [0]["PolicyDocument"]["Statement"];
        let star = &statements[0];
        assert_eq!(star["Resource"], "*");
        assert!(!star["Action"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "iam:PassRole"));
        let pass = &statements[1]["Fn::If"][1];
        assert_eq!(pass["Action"], json!(["iam:PassRole"]));
        assert_eq!(
            pass["Condition"]["StringEquals"]["iam:PassedToService"],
            "ec2.amazonaws.com"
        );
        assert!(pass["Resource"]
            .to_string()
            .contains("InstanceProfileRoleNames"));
    }

    #[test]
    fn amiflows_own_temporary_profile_roles_may_be_passed_to_ec2() {
        let template = sam_template(&sample_steps(), None);
        let statements = &template["Resources"]["RunSourceInstanceRole"]["Properties"]["Policies"]
            [0]["PolicyDocument"]["Statement"];
        let temporary = statements
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == "PassTemporaryProfileRoles")
            .expect("a statement for the roles IamInstanceProfile creates");
        assert_eq!(temporary["Action"], json!(["iam:PassRole"]));
        assert_eq!(
            temporary["Resource"]["Fn::Sub"],
            format!("arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:role{IAM_PATH}*")
        );
        assert_eq!(
            temporary["Condition"]["StringEquals"]["iam:PassedToService"],
            "ec2.amazonaws.com"
        );
        let create_image = &template["Resources"]["CreateImageRole"]["Properties"]["Policies"][0]
            ["PolicyDocument"]["Statement"];
        assert!(
            !create_image.to_string().contains("iam:PassRole"),
            "only steps declaring iam:PassRole get it"
        );
    }

    #[test]
    fn state_machine_invokes_exactly_the_state_steps() {
        let template = sam_template(&sample_steps(), None);
        let sm = &template["Resources"]["StateMachine"]["Properties"];
        let subs: Vec<&String> = sm["DefinitionSubstitutions"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(
            subs,
            vec!["CreateImageFunctionArn", "RunSourceInstanceFunctionArn"]
        );
        let role = &template["Resources"]["StateMachineRole"]["Properties"]["Policies"][0]
            ["PolicyDocument"]["Statement"][0];
        assert_eq!(role["Action"], json!(["lambda:InvokeFunction"]));
        assert_eq!(role["Resource"].as_array().unwrap().len(), 2);
        assert!(
            template["Resources"]["JanitorRule"]["Properties"]["EventPattern"]["detail"]["status"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == "ABORTED")
        );
    }

    #[test]
    fn chroot_document_embeds_the_script_and_only_base64_input() {
        let doc = chroot_document_content(Some("#!/bin/bash\necho '{{ not ssm }}'\n"));
        let lines = doc["mainSteps"][0]["inputs"]["runCommand"].to_string();
        assert!(
            !lines.contains("not ssm"),
            "the script must be encoded, SSM would interpret {{{{ }}}}"
        );
        let encoded =
            base64::engine::general_purpose::STANDARD.encode("#!/bin/bash\necho '{{ not ssm }}'\n");
        assert!(lines.contains(&encoded));
        assert!(lines.contains("{{ job }}"));
        assert_eq!(
            doc["parameters"]["job"]["allowedPattern"],
            "^[A-Za-z0-9+/=]*$"
        );
    }

    #[test]
    fn rendering_is_deterministic() {
        let a = serde_json::to_string(&sam_template(&sample_steps(), Some("x"))).unwrap();
        let mut reversed = sample_steps();
        reversed.reverse();
        let b = serde_json::to_string(&sam_template(&reversed, Some("x"))).unwrap();
        assert_eq!(a, b);
    }

    /// The committed infra/template.json and infra/steps.json are what the registry renders.
    #[test]
    fn infra_files_are_in_sync() {
        let root = repo_root();
        let update = std::env::var("AMIFLOW_UPDATE_INFRA").is_ok_and(|v| v == "1");
        let mut stale = Vec::new();
        for (path, content) in generated_files(&root, &registry()) {
            let full = root.join(&path);
            if update {
                std::fs::write(&full, &content).unwrap();
            } else if std::fs::read_to_string(&full).ok().as_deref() != Some(content.as_str()) {
                stale.push(path.display().to_string());
            }
        }
        assert!(stale.is_empty(), "{stale:?} out of date with the step registry: run AMIFLOW_UPDATE_INFRA=1 cargo test --workspace infra_files_are_in_sync");
    }

    /// The committed template's roles grant every registered step exactly its declared actions.
    #[test]
    fn committed_roles_match_the_registry() {
        let text = std::fs::read_to_string(repo_root().join("infra/template.json")).unwrap();
        let template: Value = serde_json::from_str(&text).unwrap();
        let roles = function_role_actions(&template).unwrap();
        let steps = registry();
        assert_eq!(roles.len(), steps.len(), "one function per registered step");
        for spec in steps {
            let (_, actions) = roles
                .iter()
                .find(|(h, _)| h == spec.name)
                .unwrap_or_else(|| panic!("no function for step {}", spec.name));
            let mut declared: Vec<String> =
                spec.iam_actions.iter().map(|s| s.to_string()).collect();
            declared.sort();
            declared.dedup();
            let missing: Vec<_> = declared.iter().filter(|a| !actions.contains(a)).collect();
            let extra: Vec<_> = actions.iter().filter(|a| !declared.contains(a)).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{}: role misses {missing:?}, has undeclared {extra:?}",
                spec.name
            );
        }
    }
}
