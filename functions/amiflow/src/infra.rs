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

use crate::builders::instance_store::{X509_OBJECT_PREFIX, X509_PARAMETER_PATH};
use crate::ctx::StackDefaults;
use crate::resources::iam::IAM_PATH;
use crate::resources::{is_creating_ec2_call, ssm_command, Reach, BUILD_HOST_TAG};
use crate::state::{BUILD_TAG, STATE_MACHINE_TAG};
use crate::steps::notify::NOTIFY_TOPIC_PREFIX;
use crate::steps::upload_bundle::{self, BUNDLE_UPLOAD_ACTIONS, BUNDLE_UPLOAD_ROLE_PATH};
use crate::steps::StepSpec;

/// The handler the janitor rule invokes; it is not a state of the state machine.
pub const JANITOR: &str = "Janitor";
/// The handler EC2's state-change events invoke (`steps/deliver_event.rs`); not a state.
pub const DELIVER_EVENT: &str = "DeliverEvent";
/// The schedule's target (`steps/scheduled_start.rs`); not a state.
pub const SCHEDULED_START: &str = "ScheduledStart";

/// Whether the state machine invokes this handler (the janitor and DeliverEvent are
/// invoked by EventBridge, ScheduledStart by the schedule).
pub fn is_state_machine_task(name: &str) -> bool {
    ![JANITOR, DELIVER_EVENT, SCHEDULED_START].contains(&name)
}

/// The EventBridge rules that invoke a handler on AWS's own events, as (rule logical id,
/// description, pattern): DeliverEvent's, one per kind of EC2 resource a wait watches.
pub fn event_rules(name: &str) -> Vec<(String, String, Value)> {
    if name != DELIVER_EVENT {
        return Vec::new();
    }
    crate::waits::Watched::ALL
        .iter()
        .map(|w| {
            let pattern = w.event_pattern();
            let kind = format!("{w:?}");
            (
                format!("{DELIVER_EVENT}{kind}Rule"),
                format!(
                    "Ends amiflow builds' waits on EC2's {} events (steps/deliver_event.rs)",
                    pattern["detail-type"][0].as_str().unwrap_or(&kind)
                ),
                pattern,
            )
        })
        .collect()
}

/// Lambda memory for every step: the handlers are API callers, not compute.
pub const MEMORY_MB: u32 = 256;

/// The alias every function publishes (`AutoPublishAlias`) and the state machine invokes.
pub const FUNCTION_ALIAS: &str = "live";

/// The state machine definition as deployed: `statemachine/amiflow.asl.json` (rendered by
/// flows.rs) with the execution timeout added as a substitution. Not JSON until
/// CloudFormation substitutes `${ExecutionTimeoutSeconds}`; generated, like this template.
pub const DEPLOYED_DEFINITION: &str = "infra/amiflow.asl.json.in";

/// The definition flows.rs renders, relative to the repository root.
pub const DEFINITION: &str = "statemachine/amiflow.asl.json";

/// The substitution giving the definition's top-level `TimeoutSeconds`.
pub const EXECUTION_TIMEOUT_SUBSTITUTION: &str = "ExecutionTimeoutSeconds";
/// The substitution giving the builds Map's `MaxConcurrency`.
pub const MAX_CONCURRENT_BUILDS_SUBSTITUTION: &str = "MaxConcurrentBuilds";
/// How flows.rs renders the builds Map's concurrency (unlimited), replaced when deployed.
const RENDERED_MAX_CONCURRENCY: &str = "\"MaxConcurrency\": 0";

/// Namespace (`Fn::Sub` pattern) of the stack's own metrics.
const METRIC_NAMESPACE: &str = "amiflow/${AWS::StackName}";

/// Invocations Lambda failed outside the handler, counted from the functions' logs.
pub const LAMBDA_FAILURES_METRIC: &str = "LambdaFailures";

/// What Lambda writes to a function's log when an invocation times out, the runtime exits
/// or runs out of memory.
pub const LAMBDA_FAILURE_PATTERN: &str =
    "?\"Task timed out\" ?\"Runtime.ExitError\" ?\"Runtime.OutOfMemory\" ?\"Runtime.Unknown\"";

/// Where the chroot host script lives, relative to the repository root.
pub const CHROOT_HOST_SCRIPT: &str = "infra/chroot-host.sh";

/// The SSM document parameter carrying the chroot job (base64 of its JSON).
pub const CHROOT_JOB_PARAMETER: &str = "job";
/// ...or naming where RunHostScript staged it (`s3://<artifacts bucket>/staged/...`), when it
/// carries revealed secrets: SSM keeps a command's parameters in its history.
pub const CHROOT_JOB_S3_PARAMETER: &str = "jobS3";

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

/// The stack's managed policy every temporary instance profile role is created with as its
/// permissions boundary (IamInstanceProfile passes it; CreateRole is allowed only with it).
pub const TEMPORARY_ROLE_BOUNDARY: &str = "TemporaryRoleBoundary";

/// The variable of the policy patterns naming the schedule's template object
/// (`bucket/key` of `ScheduleTemplateS3`).
const SCHEDULE_TEMPLATE_OBJECT: &str = "ScheduleTemplateObject";

/// What a temporary instance profile role can ever do, whatever the template's
/// `temporary_iam_instance_profile_policy_document` says: read objects and parameters,
/// talk to SSM and CloudWatch, pull images; never IAM, STS or anything that changes the
/// account.
fn temporary_role_boundary() -> Value {
    json!({
        "Type": "AWS::IAM::ManagedPolicy",
        "Properties": {
            "Description": "amiflow: the most a temporary instance profile role (temporary_iam_instance_profile_policy_document) may do",
            "Path": IAM_PATH,
            "PolicyDocument": { "Version": "2012-10-17", "Statement": [{
                "Sid": "InstanceReads",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:GetBucketLocation",
                    "ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath",
                    "ssm:UpdateInstanceInformation", "ssm:ListInstanceAssociations", "ssm:DescribeInstanceProperties",
                    "ssmmessages:*", "ec2messages:*", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams",
                    "ecr:GetAuthorizationToken", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                    "ec2:DescribeTags", "ec2:DescribeInstances", "kms:Decrypt"],
                "Resource": "*"
            }] }
        }
    })
}

/// Logical id of the role whose credentials `bundle_upload_command` is handed
/// (steps/upload_bundle.rs).
const BUNDLE_UPLOAD_ROLE: &str = "BundleUploadRole";

/// What the bundle upload role may do, as patterns: write objects into the stack's buckets.
/// UploadBundle narrows each session to its own bundle's objects.
fn bundle_upload_statements() -> Vec<Value> {
    vec![json!({
        "Sid": "WriteBundles",
        "Effect": "Allow",
        "Action": BUNDLE_UPLOAD_ACTIONS,
        "Resource": ["arn:${AWS::Partition}:s3:::${ArtifactsBucket}/*", "arn:${AWS::Partition}:s3:::${BundleBuckets}/*"]
    })]
}

/// The bundle upload role: assumable by the stack's UploadBundle role alone, under
/// [`BUNDLE_UPLOAD_ROLE_PATH`] (which no temporary-IAM right reaches).
fn bundle_upload_role() -> Value {
    let statements: Vec<Value> = bundle_upload_statements()
        .into_iter()
        .map(sub_patterns)
        .collect();
    json!({
        "Type": "AWS::IAM::Role",
        "Properties": {
            "Path": BUNDLE_UPLOAD_ROLE_PATH,
            "MaxSessionDuration": 3600,
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Principal": { "AWS": { "Fn::GetAtt": [format!("{}Role", logical_id(upload_bundle::SPEC.name)), "Arn"] } },
                    "Action": "sts:AssumeRole"
                }]
            },
            "Policies": [{ "PolicyName": "amiflow-bundle-upload", "PolicyDocument": { "Version": "2012-10-17", "Statement": statements } }]
        }
    })
}

/// The statements granting `actions` as far as `reach` goes, their resources and condition
/// values as `Fn::Sub` patterns over the stack's pseudo parameters and resources
/// (`${ArtifactsBucket}`, `${ChrootHostDocument}`, `${TemporaryRoleBoundary}`,
/// `${BundleBuckets}`, `${ScheduleTemplateObject}`): [`sub_patterns`] makes them
/// CloudFormation, the CDK construct (infra/cdk/lib/amiflow.ts) fills them in itself.
/// `creating`: the EC2 calls of the step that create (and so may tag at creation).
pub fn reach_statements(reach: Reach, actions: &[String], creating: &[String]) -> Vec<Value> {
    let sid = format!("{reach:?}");
    let statement = |suffix: &str, resources: Value, condition: Option<Value>| {
        let mut s = json!({ "Sid": format!("{sid}{suffix}"), "Effect": "Allow", "Action": actions, "Resource": resources });
        if let Some(c) = condition {
            s["Condition"] = c;
        }
        s
    };
    // The SSM parameters `path` names (a glob after `parameter`) in `region` (`*`, or
    // `${AWS::Region}` for the stack's own).
    let parameters = |region: &str, path: &str| {
        vec![statement(
            "",
            json!(format!(
                "arn:${{AWS::Partition}}:ssm:{region}:${{AWS::AccountId}}:parameter{path}"
            )),
            None,
        )]
    };
    // A build's resource, made by this stack's state machine (named after the stack): the
    // builds of another stack, or of `amiflow build`, are out of this stack's reach.
    let build_tagged = json!({
        "StringLike": { format!("aws:ResourceTag/{BUILD_TAG}"): "*" },
        "StringEquals": { format!("aws:ResourceTag/{STATE_MACHINE_TAG}"): "${AWS::StackName}" }
    });
    let ec2_arn =
        |kind: &str| format!("arn:${{AWS::Partition}}:ec2:*:${{AWS::AccountId}}:{kind}/*");
    let stack_buckets = json!([
        "arn:${AWS::Partition}:s3:::${ArtifactsBucket}",
        "arn:${AWS::Partition}:s3:::${ArtifactsBucket}/*",
        "arn:${AWS::Partition}:s3:::${BundleBuckets}",
        "arn:${AWS::Partition}:s3:::${BundleBuckets}/*"
    ]);
    match reach {
        Reach::Any => vec![statement("", json!("*"), None)],
        Reach::BuildTagged => vec![statement("", json!("*"), Some(build_tagged))],
        Reach::BuildTaggedOrBuildHost => vec![
            statement("", json!("*"), Some(build_tagged)),
            statement(
                "Host",
                json!(ec2_arn("instance")),
                Some(json!({ "StringEquals": { format!("aws:ResourceTag/{BUILD_HOST_TAG}"): "${AWS::StackName}" } })),
            ),
        ],
        Reach::TagOnCreateOrBuildTagged => {
            let mut statements = Vec::new();
            if !creating.is_empty() {
                statements.push(statement(
                    "AtCreation",
                    json!("*"),
                    Some(json!({ "StringEquals": { "ec2:CreateAction": creating } })),
                ));
            }
            statements.push(statement("", json!("*"), Some(build_tagged)));
            statements
        }
        Reach::TemporaryIam => vec![statement(
            "",
            json!([
                format!("arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:role{IAM_PATH}*"),
                format!("arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:instance-profile{IAM_PATH}*")
            ]),
            None,
        )],
        Reach::TemporaryRoleWithBoundary => vec![statement(
            "",
            json!(format!("arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:role{IAM_PATH}*")),
            Some(json!({ "StringEquals": { "iam:PermissionsBoundary": format!("${{{TEMPORARY_ROLE_BOUNDARY}}}") } })),
        )],
        Reach::KmsViaEc2 => vec![statement(
            "",
            json!("*"),
            Some(json!({ "StringLike": { "kms:ViaService": "ec2.*.amazonaws.com" } })),
        )],
        Reach::KmsGrantForAwsResource => vec![statement(
            "",
            json!("*"),
            Some(json!({ "Bool": { "kms:GrantIsForAWSResource": "true" } })),
        )],
        // Under the stack's own path (`identity::parameter_owner`): no other stack's.
        Reach::AmiflowParameters => parameters("*", "/amiflow/${AWS::StackName}/*"),
        Reach::PublishedParameters => parameters("*", "${PublishParameterPrefix}*"),
        Reach::StackBuckets => vec![statement("", stack_buckets, None)],
        Reach::X509Parameters => parameters("*", &format!("{X509_PARAMETER_PATH}*")),
        Reach::X509Objects => vec![statement(
            "",
            json!(format!("arn:${{AWS::Partition}}:s3:::${{ArtifactsBucket}}/{X509_OBJECT_PREFIX}*")),
            None,
        )],
        Reach::TemplateObjects => vec![statement(
            "",
            json!([
                "arn:${AWS::Partition}:s3:::${ArtifactsBucket}/*",
                format!("arn:${{AWS::Partition}}:s3:::${{{SCHEDULE_TEMPLATE_OBJECT}}}")
            ]),
            None,
        )],
        Reach::BuildInstanceCommand => vec![
            statement(
                "Document",
                json!(ssm_command::BUILD_DOCUMENTS
                    .iter()
                    .map(|d| format!("arn:${{AWS::Partition}}:ssm:*::document/{d}"))
                    .collect::<Vec<_>>()),
                None,
            ),
            statement(
                "",
                json!(ec2_arn("instance")),
                Some(json!({
                    "StringLike": { format!("ssm:resourceTag/{BUILD_TAG}"): "*" },
                    "StringEquals": { format!("ssm:resourceTag/{STATE_MACHINE_TAG}"): "${AWS::StackName}" }
                })),
            ),
        ],
        Reach::BundleUploadRole => vec![statement(
            "",
            json!(format!("arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:role{BUNDLE_UPLOAD_ROLE_PATH}*")),
            None,
        )],
        Reach::SensitiveVars => parameters("*", "/amiflow/${AWS::StackName}/*/vars/*"),
        Reach::NotifyTopics => vec![statement(
            "",
            json!(format!("arn:${{AWS::Partition}}:sns:*:${{AWS::AccountId}}:{NOTIFY_TOPIC_PREFIX}*")),
            None,
        )],
        Reach::StackStateMachine => vec![statement(
            "",
            json!("arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:${AWS::StackName}"),
            None,
        )],
        Reach::StackExecutions => vec![statement(
            "",
            json!("arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:execution:${AWS::StackName}:*"),
            None,
        )],
        Reach::ScheduleSecrets => parameters(
            "${AWS::Region}",
            &format!("{}*", crate::steps::scheduled_start::SCHEDULE_SECRETS_PATH),
        ),
        Reach::DefaultEventBus => vec![statement(
            "",
            json!("arn:${AWS::Partition}:events:*:${AWS::AccountId}:event-bus/default"),
            None,
        )],
        Reach::BuildHostCommand => vec![
            statement(
                "Document",
                json!("arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:document/${ChrootHostDocument}"),
                None,
            ),
            statement(
                "",
                json!(ec2_arn("instance")),
                Some(json!({ "StringEquals": { format!("ssm:resourceTag/{BUILD_HOST_TAG}"): "${AWS::StackName}" } })),
            ),
        ],
    }
}

/// A step's statements by reach (iam:PassRole apart), as patterns: see [`reach_statements`].
pub fn step_statements(spec: &StepSpec) -> Vec<Value> {
    let (actions, _) = split_actions(spec);
    // The step's own creating calls, and nothing else, may tag at creation.
    let creating: Vec<String> = actions
        .iter()
        .filter_map(|a| a.strip_prefix("ec2:"))
        .filter(|a| is_creating_ec2_call(a))
        .map(str::to_string)
        .collect();
    let mut by_reach: std::collections::BTreeMap<Reach, Vec<String>> = Default::default();
    for a in actions {
        by_reach.entry(spec.reach_of(&a)).or_default().push(a);
    }
    by_reach
        .into_iter()
        .flat_map(|(reach, actions)| {
            let mut statements = reach_statements(reach, &actions, &creating);
            if reach == Reach::Any {
                // The step's unscoped actions keep the name they always had.
                statements[0]["Sid"] = json!("StepActions");
            }
            statements
        })
        .collect()
}

/// The condition under which the stack names bundle buckets (`BundleBuckets` not empty).
const HAS_BUNDLE_BUCKETS: &str = "HasBundleBuckets";

/// Every string of a statement holding a `${...}` pattern as CloudFormation's `Fn::Sub`
/// (`${ScheduleTemplateObject}` taken from `ScheduleTemplateS3`; a `${BundleBuckets}`
/// resource only when the stack names some; see [`reach_statements`]).
fn sub_patterns(value: Value) -> Value {
    match value {
        Value::String(s) if s.contains("${BundleBuckets}") => {
            json!({ "Fn::If": [HAS_BUNDLE_BUCKETS, { "Fn::Sub": s }, { "Ref": "AWS::NoValue" }] })
        }
        Value::String(s) if s.contains("${") => {
            if s.contains(&format!("${{{SCHEDULE_TEMPLATE_OBJECT}}}")) {
                // `s3://bucket/key` → `bucket/key`; an empty parameter gives "" (no object).
                json!({ "Fn::Sub": [s, { SCHEDULE_TEMPLATE_OBJECT: { "Fn::Select": [1, { "Fn::Split": ["s3://",
                    { "Fn::Join": ["", [{ "Ref": "ScheduleTemplateS3" }, "s3://"]] }] }] } }] })
            } else {
                json!({ "Fn::Sub": s })
            }
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sub_patterns).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| {
                    // Condition keys are names, not patterns.
                    (k, sub_patterns(v))
                })
                .collect(),
        ),
        other => other,
    }
}

/// `conditions` with [`HAS_BUNDLE_BUCKETS`] when some role uses it (cfn-lint rejects unused
/// conditions).
fn with_bundle_buckets(mut conditions: Value, resources: &Map<String, Value>) -> Value {
    if Value::Object(resources.clone())
        .to_string()
        .contains(HAS_BUNDLE_BUCKETS)
    {
        conditions[HAS_BUNDLE_BUCKETS] =
            json!({ "Fn::Not": [{ "Fn::Equals": [{ "Ref": "BundleBuckets" }, ""] }] });
    }
    conditions
}

/// The inline policy of a step's role: each action as far as its reach goes
/// ([`reach_statements`]), and `iam:PassRole` only towards EC2: on the temporary instance
/// profile roles amiflow creates under [`IAM_PATH`] (IamInstanceProfile), and on the
/// instance profile roles the stack names.
fn step_policy_document(spec: &StepSpec) -> Value {
    let (_, pass_role) = split_actions(spec);
    // The unscoped actions first, then iam:PassRole, then the scoped ones.
    let (mut statements, scoped): (Vec<Value>, Vec<Value>) = step_statements(spec)
        .into_iter()
        .map(sub_patterns)
        .partition(|s| s["Sid"] == "StepActions");
    if pass_role {
        statements.push(json!({
            "Sid": "PassTemporaryInstanceProfileRoles",
            "Effect": "Allow",
            "Action": ["iam:PassRole"],
            "Resource": { "Fn::Sub": temporary_roles_arn() },
            "Condition": { "StringEquals": { "iam:PassedToService": "ec2.amazonaws.com" } }
        }));
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
    }
    statements.extend(scoped);
    json!({ "Version": "2012-10-17", "Statement": statements })
}

/// `Fn::Sub` pattern of the ARNs of the temporary instance profile roles: every role under
/// [`IAM_PATH`] (`role/amiflow/*`).
pub fn temporary_roles_arn() -> String {
    format!("arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:role{IAM_PATH}*")
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
        "AMIFLOW_CHROOT_DOCUMENT": { "Ref": "ChrootHostDocument" }
    });
    // The stack's defaults for what a template leaves out (read by StackDefaults::from_env).
    for (variable, parameter) in [
        (StackDefaults::VPC_ENV, "DefaultVpcId"),
        (StackDefaults::SUBNET_ENV, "DefaultSubnetId"),
        (StackDefaults::STACK_NAME_ENV, "AWS::StackName"),
        (StackDefaults::ROLE_BOUNDARY_ENV, TEMPORARY_ROLE_BOUNDARY),
    ] {
        environment[variable] = json!({ "Ref": parameter });
    }
    environment[StackDefaults::BUILD_HOST_ENV] = json!({ "Fn::If": [
        "CreatesBuildHost", { "Ref": BUILD_HOST }, { "Ref": "BuildHostInstanceId" }
    ] });
    if spec.name == upload_bundle::SPEC.name {
        environment[StackDefaults::BUNDLE_UPLOAD_ROLE_ENV] =
            json!({ "Fn::GetAtt": [BUNDLE_UPLOAD_ROLE, "Arn"] });
    }
    if spec.name == JANITOR {
        environment["AMIFLOW_JANITOR_REGIONS"] =
            json!({ "Fn::Join": [",", { "Ref": "JanitorRegions" }] });
    }
    if spec.name == SCHEDULED_START {
        use crate::steps::scheduled_start::{SECRET_VARS_ENV, STATE_MACHINE_ENV};
        environment[SECRET_VARS_ENV] = json!({ "Ref": "ScheduleSecretVars" });
        environment[STATE_MACHINE_ENV] = json!({ "Ref": "StateMachine" });
    }
    let mut properties = json!({
        "Handler": spec.name,
        "Timeout": spec.timeout_seconds,
        "MemorySize": MEMORY_MB,
        "Role": { "Fn::GetAtt": [format!("{id}Role"), "Arn"] },
        // A version per deployment of new code, and the alias the state machine invokes:
        // an execution keeps the code it started with while a deployment replaces it.
        "AutoPublishAlias": FUNCTION_ALIAS,
        "LoggingConfig": { "LogFormat": "Text", "LogGroup": { "Ref": format!("{id}LogGroup") } },
        "Environment": { "Variables": environment }
    });
    let mut function = json!({
        "Type": "AWS::Serverless::Function",
        // `sam build` runs `make build-<LogicalId>` with the Makefile of the stack's
        // architecture: infra/lambda/<arch>/Makefile builds the one bootstrap and refuses
        // a binary of another architecture.
        "Metadata": { "BuildMethod": "makefile", "ContextPath": { "Fn::Sub": "lambda/${Architecture}" } }
    });
    if spec.name == JANITOR {
        // Lambda's asynchronous retries (EventBridge invokes the janitor asynchronously)
        // end here rather than dropping the event: a build whose sweep failed stays known.
        properties["DeadLetterQueue"] = json!({ "Type": "SQS", "TargetArn": { "Fn::GetAtt": ["JanitorDeadLetterQueue", "Arn"] } });
        function["DependsOn"] = json!(["JanitorDeadLetterPolicy"]);
    }
    function["Properties"] = properties;
    function
}

/// The function's own log group, kept `LogRetentionDays`.
fn step_log_group(spec: &StepSpec) -> Value {
    json!({
        "Type": "AWS::Logs::LogGroup",
        "Properties": {
            "LogGroupName": { "Fn::Sub": format!("/aws/lambda/${{AWS::StackName}}/{}", spec.name) },
            "RetentionInDays": { "Ref": "LogRetentionDays" }
        }
    })
}

/// Counts what Lambda itself reports in the function's log when an invocation fails
/// outside the handler (a timeout, the runtime crashing or running out of memory) into
/// [`LAMBDA_FAILURES_METRIC`]. The handler's own errors are not counted: waits report
/// `NotReady` as a function error on every poll by design (the state's Retry polls), and
/// a real build failure ends the execution FAILED, which its own alarm reports.
fn step_failures_filter(spec: &StepSpec) -> Value {
    json!({
        "Type": "AWS::Logs::MetricFilter",
        "Properties": {
            "LogGroupName": { "Ref": format!("{}LogGroup", logical_id(spec.name)) },
            "FilterPattern": LAMBDA_FAILURE_PATTERN,
            "MetricTransformations": [{
                "MetricNamespace": { "Fn::Sub": METRIC_NAMESPACE },
                "MetricName": LAMBDA_FAILURES_METRIC,
                "MetricValue": "1"
            }]
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
                // The build host's role reads staged/* in the artifacts bucket (CLI on the host).
                format!("if [ -n '{{{{ {CHROOT_JOB_S3_PARAMETER} }}}}' ]; then aws s3 cp --only-show-errors '{{{{ {CHROOT_JOB_S3_PARAMETER} }}}}' \"$work/job\"; fi"),
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
                "default": "",
                "allowedPattern": "^[A-Za-z0-9+/=]*$"
            },
            CHROOT_JOB_S3_PARAMETER: {
                "type": "String",
                "description": "Where the job was staged instead, when it carries sensitive values (s3://bucket/staged/...)",
                "default": "",
                "allowedPattern": "^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/staged/[A-Za-z0-9._/=-]+)?$"
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
        "Architecture": { "Type": "String", "AllowedValues": ["x86_64", "arm64"], "Default": "x86_64",
            "Description": "CPU architecture of the functions; sam build builds bootstrap for it and refuses a binary of another (infra/README.md: arm64)" },
        "BuildHostInstanceId": { "Type": "String", "Default": "",
            "Description": "amazon-chroot build host instance id, used when a template names none (chroot_host_instance_id / chroot_host_filter); ignored when CreateBuildHost is true" },
        "CreateBuildHost": { "Type": "String", "AllowedValues": ["true", "false"], "Default": "false",
            "Description": "Create the amazon-chroot build host: an SSM-managed Amazon Linux 2023 instance in DefaultSubnetId (or the default VPC), running while the stack exists" },
        "BuildHostInstanceType": { "Type": "String", "Default": "t3.small",
            "Description": "Instance type of the build host CreateBuildHost makes (of the functions' Architecture)" },
        "BuildHostImageId": { "Type": "String", "Default": "",
            "Description": "AMI of the build host CreateBuildHost makes; empty = the region's latest Amazon Linux 2023 for the functions' Architecture" },
        "DefaultVpcId": { "Type": "String", "Default": "", "Description": "VPC used when a template names none" },
        "DefaultSubnetId": { "Type": "String", "Default": "", "Description": "Subnet used when a template names none" },
        "PublishParameterPrefix": { "Type": "String", "Default": "/images/", "AllowedPattern": "^/[A-Za-z0-9_.\\-/]*/$",
            "Description": "Pipelines publish image ids (publish.ssm_parameter) only to SSM parameters under this path" },
        "BundleBuckets": { "Type": "String", "Default": "",
            "Description": "amazon-instance: the bucket (or bucket name pattern, e.g. amiflow-bundles-*) bundles may go to (s3_bucket); with the artifacts bucket, the only buckets the steps may use. Empty: none" },
        "InstanceProfileRoleNames": { "Type": "CommaDelimitedList", "Default": "",
            "Description": "Roles of the instance profiles templates may attach (iam_instance_profile): with amiflow's temporary roles (role/amiflow/*), the only roles the steps may pass to EC2" },
        "Tracing": { "Type": "String", "AllowedValues": ["Enabled", "Disabled"], "Default": "Disabled",
            "Description": "X-Ray tracing for the state machine and the functions" },
        "LogRetentionDays": { "Type": "Number", "Default": 30,
            "Description": "Days the state machine's and every function's logs are kept",
            "AllowedValues": [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653] },
        "MaxConcurrentBuilds": { "Type": "Number", "Default": 10, "MinValue": 0, "MaxValue": 40,
            "Description": "Builds of one execution run at most this many at a time (the Map's MaxConcurrency; 0 = all at once): bounds the EC2 API calls of a large template" },
        "ExecutionTimeoutSeconds": { "Type": "Number", "Default": 21600, "MinValue": 60, "MaxValue": 31536000,
            "Description": "An execution still running after this many seconds ends TIMED_OUT (the janitor then sweeps its resources)" },
        "AlarmEmail": { "Type": "String", "Default": "",
            "Description": "Address subscribed to the alarm topic (failed or timed-out executions, Lambda failures, janitor errors, dead letters); empty = none" },
        "StagedFilesExpirationDays": { "Type": "Number", "Default": 7, "MinValue": 1,
            "Description": "Days before staged files and SSM output under staged/ and ssm-output/ in the artifacts bucket expire" },
        "ScheduleExpression": { "Type": "String", "Default": "",
            "Description": "cron(...), rate(...) or at(...) to start builds on a schedule (EventBridge Scheduler); empty disables the schedule" },
        "ScheduleTimezone": { "Type": "String", "Default": "UTC",
            "Description": "IANA time zone of ScheduleExpression, e.g. Europe/Paris" },
        "ScheduleTemplateS3": { "Type": "String", "Default": "",
            "Description": "s3://bucket/key of the Packer template the schedule builds" },
        "ScheduleVars": { "Type": "String", "Default": "{}",
            "Description": "JSON object of template variables for scheduled builds" },
        "ScheduleSecretVars": { "Type": "String", "Default": "{}",
            "Description": "JSON object of the scheduled builds' sensitive variables: name -> SecureString parameter under /amiflow-schedule/ (copied into each run's own path, never into its input)" },
        "SchedulePipelineS3": { "Type": "String", "Default": "",
            "Description": "s3://bucket/key of the pipeline file scheduled builds run in (rebuild on change, publish, retain); empty: none" },
        "JanitorRegions": { "Type": "CommaDelimitedList", "Default": "",
            "Description": "Regions the janitor sweeps when an execution's input names none (empty: the stack's region)" }
    })
}

fn conditions(any_pass_role: bool) -> Value {
    let mut conditions = json!({
        "ScheduleEnabled": { "Fn::Not": [{ "Fn::Equals": [{ "Ref": "ScheduleExpression" }, ""] }] },
        "TracingEnabled": { "Fn::Equals": [{ "Ref": "Tracing" }, "Enabled"] },
        "HasAlarmEmail": { "Fn::Not": [{ "Fn::Equals": [{ "Ref": "AlarmEmail" }, ""] }] },
        "CreatesBuildHost": { "Fn::Equals": [{ "Ref": "CreateBuildHost" }, "true"] },
        "HasBuildHostImageId": { "Fn::Not": [{ "Fn::Equals": [{ "Ref": "BuildHostImageId" }, ""] }] },
        "HasDefaultSubnet": { "Fn::Not": [{ "Fn::Equals": [{ "Ref": "DefaultSubnetId" }, ""] }] }
    });
    // Declared only when used: cfn-lint rejects unused conditions.
    if any_pass_role {
        conditions["HasInstanceProfileRoles"] = json!({ "Fn::Not": [{ "Fn::Equals": [{ "Fn::Join": ["", { "Ref": "InstanceProfileRoleNames" }] }, ""] }] });
    }
    conditions
}

/// Logical id of the amazon-chroot build host the stack makes with `CreateBuildHost`.
const BUILD_HOST: &str = "BuildHost";

/// The optional amazon-chroot build host (`CreateBuildHost=true`): what infra/README.md
/// lists a host needs, made by the stack. An SSM-managed instance (the chroot document runs
/// on it through RunCommand) whose role may read staged files and write command output in
/// the artifacts bucket, IMDSv2 only, tagged `amiflow:build-host` with the stack's name.
fn build_host_resources(resources: &mut Map<String, Value>) {
    let conditional = |mut resource: Value| {
        resource["Condition"] = json!("CreatesBuildHost");
        resource
    };
    resources.insert(format!("{BUILD_HOST}Role"), conditional(json!({
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": { "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": { "Service": "ec2.amazonaws.com" }, "Action": "sts:AssumeRole"
            }] },
            "ManagedPolicyArns": [{ "Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore" }],
            "Policies": [{ "PolicyName": "amiflow-build-host", "PolicyDocument": { "Version": "2012-10-17", "Statement": [{
                "Sid": "StagedFilesAndCommandOutput",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": [
                    { "Fn::Sub": "${ArtifactsBucket.Arn}/staged/*" },
                    { "Fn::Sub": "${ArtifactsBucket.Arn}/ssm-output/*" }
                ]
            }] } }],
            "Tags": [{ "Key": "amiflow:build-host", "Value": { "Ref": "AWS::StackName" } }]
        }
    })));
    resources.insert(
        format!("{BUILD_HOST}InstanceProfile"),
        conditional(json!({
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": { "Roles": [{ "Ref": format!("{BUILD_HOST}Role") }] }
        })),
    );
    resources.insert(BUILD_HOST.into(), conditional(json!({
        "Type": "AWS::EC2::Instance",
        "Properties": {
            "ImageId": { "Fn::If": ["HasBuildHostImageId", { "Ref": "BuildHostImageId" },
                { "Fn::Sub": "{{resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${Architecture}}}" }] },
            "InstanceType": { "Ref": "BuildHostInstanceType" },
            "IamInstanceProfile": { "Ref": format!("{BUILD_HOST}InstanceProfile") },
            "SubnetId": { "Fn::If": ["HasDefaultSubnet", { "Ref": "DefaultSubnetId" }, { "Ref": "AWS::NoValue" }] },
            "MetadataOptions": { "HttpTokens": "required", "HttpEndpoint": "enabled" },
            "BlockDeviceMappings": [{ "DeviceName": "/dev/xvda", "Ebs": { "VolumeSize": 30, "VolumeType": "gp3", "Encrypted": true } }],
            "Tags": [
                { "Key": "Name", "Value": { "Fn::Sub": "${AWS::StackName}-build-host" } },
                { "Key": "amiflow:build-host", "Value": { "Ref": "AWS::StackName" } }
            ]
        }
    })));
}

/// An alarm on one metric, at or above `threshold` in 5 minutes, notifying the alarm topic.
fn alarm(
    description: &str,
    namespace: Value,
    metric: &str,
    dimensions: Value,
    statistic: &str,
    threshold: u32,
) -> Value {
    let mut properties = json!({
        "AlarmDescription": description,
        "Namespace": namespace,
        "MetricName": metric,
        "Statistic": statistic,
        "Period": 300,
        "EvaluationPeriods": 1,
        "Threshold": threshold,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
        "AlarmActions": [{ "Ref": "AlarmTopic" }]
    });
    if dimensions.as_array().is_some_and(|d| !d.is_empty()) {
        properties["Dimensions"] = dimensions;
    }
    json!({ "Type": "AWS::CloudWatch::Alarm", "Properties": properties })
}

fn with_condition(mut resource: Value, condition: &str) -> Value {
    resource["Condition"] = json!(condition);
    resource
}

/// A dead-letter queue: encrypted, messages kept the longest SQS allows (14 days).
fn dead_letter_queue(condition: Option<&str>) -> Value {
    let mut queue = json!({
        "Type": "AWS::SQS::Queue",
        "Properties": { "SqsManagedSseEnabled": true, "MessageRetentionPeriod": 1_209_600 }
    });
    if let Some(c) = condition {
        queue["Condition"] = json!(c);
    }
    queue
}

/// `<Rule without "Rule">InvokePermission`: EventBridge may invoke `alias` for `rule` alone.
fn insert_rule_permission(resources: &mut Map<String, Value>, rule: &str, alias: &Value) {
    resources.insert(
        format!("{}InvokePermission", rule.trim_end_matches("Rule")),
        json!({
            "Type": "AWS::Lambda::Permission",
            "Properties": {
                "Action": "lambda:InvokeFunction",
                "FunctionName": alias,
                "Principal": "events.amazonaws.com",
                "SourceArn": { "Fn::GetAtt": [rule, "Arn"] }
            }
        }),
    );
}

/// The whole SAM template. `steps` is the registry (the janitor among them); `chroot_script`
/// the content of [`CHROOT_HOST_SCRIPT`].
pub fn sam_template(steps: &[StepSpec], chroot_script: Option<&str>) -> Value {
    let mut resources = Map::new();
    let mut state_steps: Vec<&StepSpec> = steps
        .iter()
        .filter(|s| is_state_machine_task(s.name))
        .collect();
    state_steps.sort_by_key(|s| s.name);

    for spec in steps {
        let id = logical_id(spec.name);
        resources.insert(format!("{id}Role"), step_role(spec));
        resources.insert(format!("{id}Function"), step_function(spec));
        resources.insert(format!("{id}LogGroup"), step_log_group(spec));
        resources.insert(format!("{id}FailuresFilter"), step_failures_filter(spec));
    }

    // Tasks invoke the published alias (`<Function>.Alias` is SAM's reference to it), and
    // the role may invoke exactly those qualified ARNs.
    let alias = |s: &StepSpec| json!({ "Ref": format!("{}Function.Alias", logical_id(s.name)) });
    let mut substitutions: Map<String, Value> = state_steps
        .iter()
        .map(|s| (substitution_name(s.name), alias(s)))
        .collect();
    substitutions.insert(
        EXECUTION_TIMEOUT_SUBSTITUTION.into(),
        json!({ "Ref": "ExecutionTimeoutSeconds" }),
    );
    substitutions.insert(
        MAX_CONCURRENT_BUILDS_SUBSTITUTION.into(),
        json!({ "Ref": "MaxConcurrentBuilds" }),
    );
    let invoked: Vec<Value> = state_steps.iter().map(|s| alias(s)).collect();

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
            // Named after the stack, so that the roles answering its task tokens can name
            // it (Reach::StackStateMachine) without depending on it.
            "Name": { "Ref": "AWS::StackName" },
            "DefinitionUri": DEPLOYED_DEFINITION.trim_start_matches("infra/"),
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

    resources.insert(TEMPORARY_ROLE_BOUNDARY.into(), temporary_role_boundary());
    if steps.iter().any(|s| s.name == upload_bundle::SPEC.name) {
        resources.insert(BUNDLE_UPLOAD_ROLE.into(), bundle_upload_role());
    }
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

    // The schedule, through its target ScheduledStart (when the registry has it).
    if steps.iter().any(|s| s.name == SCHEDULED_START) {
        resources.insert("ScheduleRole".into(), json!({
            "Type": "AWS::IAM::Role",
            "Condition": "ScheduleEnabled",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Effect": "Allow",
                        "Principal": { "Service": "scheduler.amazonaws.com" },
                        "Action": "sts:AssumeRole",
                        "Condition": { "StringEquals": { "aws:SourceAccount": { "Ref": "AWS::AccountId" } } }
                    }]
                },
                "Policies": [{ "PolicyName": "amiflow-schedule", "PolicyDocument": { "Version": "2012-10-17", "Statement": [
                    { "Sid": "StartBuild", "Effect": "Allow", "Action": ["lambda:InvokeFunction"], "Resource": { "Ref": format!("{}Function.Alias", logical_id(SCHEDULED_START)) } },
                    { "Sid": "DeadLetter", "Effect": "Allow", "Action": ["sqs:SendMessage"], "Resource": { "Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"] } }
                ] } }]
            }
        }));
        resources.insert(
            "ScheduleDeadLetterQueue".into(),
            dead_letter_queue(Some("ScheduleEnabled")),
        );
        resources.insert("Schedule".into(), json!({
            "Type": "AWS::Scheduler::Schedule",
            "Condition": "ScheduleEnabled",
            "Properties": {
                "Description": "Starts an amiflow build of ScheduleTemplateS3 on ScheduleExpression, through ScheduledStart (which adds ScheduleSecretVars)",
                "ScheduleExpression": { "Ref": "ScheduleExpression" },
                "ScheduleExpressionTimezone": { "Ref": "ScheduleTimezone" },
                "FlexibleTimeWindow": { "Mode": "OFF" },
                "State": "ENABLED",
                "Target": {
                    "Arn": { "Ref": format!("{}Function.Alias", logical_id(SCHEDULED_START)) },
                    "RoleArn": { "Fn::GetAtt": ["ScheduleRole", "Arn"] },
                    "Input": { "Fn::Sub": "{\"template_s3\": \"${ScheduleTemplateS3}\", \"vars\": ${ScheduleVars}, \"pipeline_s3\": \"${SchedulePipelineS3}\"}" },
                    // StartExecution throttled or failing: retried for an hour, then kept.
                    "RetryPolicy": { "MaximumRetryAttempts": 10, "MaximumEventAgeInSeconds": 3600 },
                    "DeadLetterConfig": { "Arn": { "Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"] } }
                }
            }
        }));
        resources.insert(
            "ScheduleDeadLetterAlarm".into(),
            with_condition(
                alarm(
                    "A scheduled amiflow build could not be started: its event is in the schedule's dead-letter queue",
                    json!("AWS/SQS"),
                    "ApproximateNumberOfMessagesVisible",
                    json!([{ "Name": "QueueName", "Value": { "Fn::GetAtt": ["ScheduleDeadLetterQueue", "QueueName"] } }]),
                    "Maximum",
                    1,
                ),
                "ScheduleEnabled",
            ),
        );
    }

    build_host_resources(&mut resources);

    resources.insert(
        "AlarmTopic".into(),
        json!({ "Type": "AWS::SNS::Topic", "Properties": {} }),
    );
    resources.insert("AlarmEmailSubscription".into(), json!({
        "Type": "AWS::SNS::Subscription",
        "Condition": "HasAlarmEmail",
        "Properties": { "TopicArn": { "Ref": "AlarmTopic" }, "Protocol": "email", "Endpoint": { "Ref": "AlarmEmail" } }
    }));
    let state_machine_dimension =
        json!([{ "Name": "StateMachineArn", "Value": { "Ref": "StateMachine" } }]);
    resources.insert(
        "ExecutionsFailedAlarm".into(),
        alarm(
            "An amiflow build failed (its execution ended FAILED)",
            json!("AWS/States"),
            "ExecutionsFailed",
            state_machine_dimension.clone(),
            "Sum",
            1,
        ),
    );
    resources.insert(
        "ExecutionsTimedOutAlarm".into(),
        alarm(
            "An amiflow build ran longer than ExecutionTimeoutSeconds (its execution ended TIMED_OUT)",
            json!("AWS/States"),
            "ExecutionsTimedOut",
            state_machine_dimension,
            "Sum",
            1,
        ),
    );
    resources.insert(
        "LambdaFailuresAlarm".into(),
        alarm(
            "An amiflow function timed out, crashed or ran out of memory (see the functions' log groups)",
            json!({ "Fn::Sub": METRIC_NAMESPACE }),
            LAMBDA_FAILURES_METRIC,
            json!([]),
            "Sum",
            1,
        ),
    );

    // EC2's state-change events end the builds' waits early; best-effort by design (the
    // waits poll after their timeout), so no dead-letter queue: a lost event costs time.
    for spec in steps {
        let alias = json!({ "Ref": format!("{}Function.Alias", logical_id(spec.name)) });
        for (rule, description, pattern) in event_rules(spec.name) {
            resources.insert(rule.clone(), json!({
                "Type": "AWS::Events::Rule",
                "Properties": {
                    "Description": description,
                    "State": "ENABLED",
                    "EventPattern": pattern,
                    "Targets": [{
                        "Id": spec.name,
                        "Arn": alias,
                        "RetryPolicy": { "MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 300 }
                    }]
                }
            }));
            insert_rule_permission(&mut resources, &rule, &alias);
        }
    }

    if steps.iter().any(|s| s.name == JANITOR) {
        let janitor = logical_id(JANITOR);
        let janitor_alias = json!({ "Ref": format!("{janitor}Function.Alias") });
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
                    "Arn": janitor_alias,
                    "RetryPolicy": { "MaximumRetryAttempts": 10, "MaximumEventAgeInSeconds": 86400 },
                    "DeadLetterConfig": { "Arn": { "Fn::GetAtt": ["JanitorDeadLetterQueue", "Arn"] } }
                }]
            }
        }));
        // Builds kept for redrive (`on_error: redrive`) are swept once their redrive
        // window has closed: the janitor looks daily (janitor.rs, RedriveWindowEvent).
        resources.insert("JanitorRedriveWindowRule".into(), json!({
            "Type": "AWS::Events::Rule",
            "Properties": {
                "Description": "Daily: sweeps amiflow builds kept for redrive whose redrive window has closed",
                "State": "ENABLED",
                "ScheduleExpression": "rate(1 day)",
                "Targets": [{
                    "Id": "JanitorRedriveWindow",
                    "Arn": janitor_alias,
                    "Input": { "Fn::Sub": "{\"redrive_window\": {\"state_machine_arn\": \"${StateMachine}\", \"days\": 14}}" },
                    "RetryPolicy": { "MaximumRetryAttempts": 10, "MaximumEventAgeInSeconds": 86400 },
                    "DeadLetterConfig": { "Arn": { "Fn::GetAtt": ["JanitorDeadLetterQueue", "Arn"] } }
                }]
            }
        }));
        // EventBridge may invoke the janitor's alias for exactly these two rules.
        for rule in ["JanitorRedriveWindowRule", "JanitorRule"] {
            insert_rule_permission(&mut resources, rule, &janitor_alias);
        }
        // Events the rule could not deliver, and invocations whose sweep failed after
        // Lambda's retries, end in one queue: the builds whose resources may be left.
        resources.insert("JanitorDeadLetterQueue".into(), dead_letter_queue(None));
        resources.insert(
            "JanitorDeadLetterQueuePolicy".into(),
            json!({
                "Type": "AWS::SQS::QueuePolicy",
                "Properties": {
                    "Queues": [{ "Ref": "JanitorDeadLetterQueue" }],
                    "PolicyDocument": { "Version": "2012-10-17", "Statement": [{
                        "Sid": "JanitorRuleDeadLetters",
                        "Effect": "Allow",
                        "Principal": { "Service": "events.amazonaws.com" },
                        "Action": "sqs:SendMessage",
                        "Resource": { "Fn::GetAtt": ["JanitorDeadLetterQueue", "Arn"] },
                        "Condition": { "ArnEquals": { "aws:SourceArn": [
                            { "Fn::GetAtt": ["JanitorRule", "Arn"] },
                            { "Fn::GetAtt": ["JanitorRedriveWindowRule", "Arn"] }
                        ] } }
                    }] }
                }
            }),
        );
        // Not a step action (the role check compares inline policies with the registry):
        // Lambda's own delivery of failed asynchronous invocations.
        resources.insert(
            "JanitorDeadLetterPolicy".into(),
            json!({
                "Type": "AWS::IAM::Policy",
                "Properties": {
                    "PolicyName": "amiflow-janitor-dead-letters",
                    "Roles": [{ "Ref": format!("{janitor}Role") }],
                    "PolicyDocument": { "Version": "2012-10-17", "Statement": [{
                        "Effect": "Allow",
                        "Action": ["sqs:SendMessage"],
                        "Resource": { "Fn::GetAtt": ["JanitorDeadLetterQueue", "Arn"] }
                    }] }
                }
            }),
        );
        resources.insert(
            "JanitorErrorsAlarm".into(),
            // The janitor's own count of failed sweeps, not Lambda's Errors: a sweep handed
            // over to Lambda's retry fails the invocation, and is no failure (janitor.rs).
            alarm(
                "The janitor failed to sweep an ended build: its resources may be left (see the Janitor log group)",
                json!({ "Fn::Sub": METRIC_NAMESPACE }),
                crate::steps::janitor::FAILURES_METRIC,
                json!([]),
                "Sum",
                1,
            ),
        );
        resources.insert(
            "JanitorDeadLetterAlarm".into(),
            alarm(
                "An ended build was not swept: its event is in the janitor's dead-letter queue",
                json!("AWS/SQS"),
                "ApproximateNumberOfMessagesVisible",
                json!([{ "Name": "QueueName", "Value": { "Fn::GetAtt": ["JanitorDeadLetterQueue", "QueueName"] } }]),
                "Maximum",
                1,
            ),
        );
    }

    canonical(json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Transform": "AWS::Serverless-2016-10-31",
        "Description": "amiflow: Packer's Amazon builders as a Step Functions state machine (generated from the step registry; do not edit, run the infra test with AMIFLOW_UPDATE_INFRA=1)",
        "Parameters": parameters(),
        "Conditions": with_bundle_buckets(conditions(steps.iter().any(|s| split_actions(s).1)), &resources),
        "Globals": { "Function": {
            "CodeUri": "lambda/",
            "Runtime": "provided.al2023",
            "Architectures": [{ "Ref": "Architecture" }],
            "Tracing": { "Fn::If": ["TracingEnabled", "Active", "PassThrough"] }
        } },
        "Resources": resources,
        "Outputs": {
            "StateMachineArn": { "Value": { "Ref": "StateMachine" }, "Description": "amiflow start --state-machine <this>" },
            "ArtifactsBucketName": { "Value": { "Ref": "ArtifactsBucket" } },
            "ChrootHostDocumentName": { "Value": { "Ref": "ChrootHostDocument" } },
            "AlarmTopicArn": { "Value": { "Ref": "AlarmTopic" }, "Description": "Subscribe to be told of failed builds and failures of amiflow itself" },
            "BuildHostInstanceId": { "Condition": "CreatesBuildHost", "Value": { "Ref": BUILD_HOST }, "Description": "The amazon-chroot build host the stack made" }
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
                // The policy as infra.rs renders it (iam:PassRole apart), its `${...}`
                // patterns for the construct to fill in.
                "statements": step_statements(s),
                "timeout_seconds": s.timeout_seconds,
                "memory_mb": MEMORY_MB,
                "state_machine_task": is_state_machine_task(s.name),
                "event_rules": event_rules(s.name)
                    .into_iter()
                    .map(|(id, description, pattern)| json!({"id": id, "description": description, "pattern": pattern}))
                    .collect::<Vec<_>>(),
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
        "bundle_upload_role": { "path": BUNDLE_UPLOAD_ROLE_PATH, "statements": bundle_upload_statements() },
        "temporary_role_boundary": temporary_role_boundary()["Properties"]["PolicyDocument"],
        "build_host_tag": BUILD_HOST_TAG,
        "function_alias": FUNCTION_ALIAS,
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

/// The definition as deployed: `definition` (flows.rs's rendering) with a top-level
/// `"TimeoutSeconds": ${ExecutionTimeoutSeconds}` and the builds Map's
/// `"MaxConcurrency": ${MaxConcurrentBuilds}`, which CloudFormation substitutes with the
/// stack's parameters. The rest is byte for byte flows.rs's text.
pub fn deployed_definition(definition: &str) -> Result<String, String> {
    let parsed: Value = serde_json::from_str(definition)
        .map_err(|e| format!("{DEFINITION} is not JSON ({e}): regenerate it from flows.rs"))?;
    if parsed.get("TimeoutSeconds").is_some() {
        return Err(format!(
            "{DEFINITION} has its own top-level TimeoutSeconds: the stack's ExecutionTimeoutSeconds sets it (infra.rs)"
        ));
    }
    let body = definition
        .trim_start()
        .strip_prefix('{')
        .ok_or_else(|| format!("{DEFINITION} is not a JSON object"))?;
    if body.matches(RENDERED_MAX_CONCURRENCY).count() != 1 {
        return Err(format!(
            "{DEFINITION} must render the builds Map's {RENDERED_MAX_CONCURRENCY} exactly once (flows.rs): the stack's MaxConcurrentBuilds replaces it"
        ));
    }
    let body = body.replace(
        RENDERED_MAX_CONCURRENCY,
        &format!("\"MaxConcurrency\": ${{{MAX_CONCURRENT_BUILDS_SUBSTITUTION}}}"),
    );
    Ok(format!(
        "{{\n  \"TimeoutSeconds\": ${{{EXECUTION_TIMEOUT_SUBSTITUTION}}},{body}"
    ))
}

/// The files under `infra/` generated from the registry and the definition: (path relative
/// to the repo root, content).
pub fn generated_files(repo_root: &Path, steps: &[StepSpec]) -> Vec<(PathBuf, String)> {
    let script = std::fs::read_to_string(repo_root.join(CHROOT_HOST_SCRIPT)).ok();
    let render = |v: Value| serde_json::to_string_pretty(&v).expect("JSON renders") + "\n";
    // From flows.rs itself, not from the committed copy (which flows.rs's own test may be
    // rewriting at this moment); that copy is checked against flows.rs there.
    let definition = deployed_definition(&crate::flows::render())
        // The sync test refuses to write it (and reports it out of date) with the reason.
        .unwrap_or_else(|why| why);
    vec![
        (
            PathBuf::from("infra/template.json"),
            render(sam_template(steps, script.as_deref())),
        ),
        (
            PathBuf::from("infra/steps.json"),
            render(steps_manifest(steps, script.as_deref())),
        ),
        (PathBuf::from(DEPLOYED_DEFINITION), definition),
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
    use std::collections::BTreeMap;

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
                reach: &[],
                calls: None,
                wait: None,
                timeout_seconds: 60,
                handler: noop,
            },
            StepSpec {
                name: "CreateImage",
                iam_actions: &["ec2:CreateImage", "ec2:CreateImage"],
                reach: &[],
                calls: None,
                wait: None,
                timeout_seconds: 30,
                handler: noop,
            },
            StepSpec {
                name: JANITOR,
                iam_actions: &["ec2:TerminateInstances"],
                reach: &[],
                calls: None,
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

    /// Every statement of every step role in the template rendered from the registry, with
    /// the step's name.
    fn registry_statements() -> Vec<(String, Value)> {
        let template = sam_template(&registry(), None);
        let mut out = Vec::new();
        for spec in registry() {
            let role = &template["Resources"][format!("{}Role", logical_id(spec.name))];
            for policy in role["Properties"]["Policies"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for st in policy["PolicyDocument"]["Statement"].as_array().unwrap() {
                    // A conditional statement (`Fn::If`) is its taken branch.
                    let st = st.get("Fn::If").map_or(st, |f| &f[1]);
                    out.push((spec.name.to_string(), st.clone()));
                }
            }
        }
        out
    }

    fn actions_of(statement: &Value) -> Vec<String> {
        policy_actions(&json!({ "Statement": [statement] }))
    }

    /// The statements of `step` granting `action`.
    fn granting(step: &str, action: &str) -> Vec<Value> {
        registry_statements()
            .into_iter()
            .filter(|(s, st)| s == step && actions_of(st).iter().any(|a| a == action))
            .map(|(_, st)| st)
            .collect()
    }

    /// Whether an action may be granted on every resource without a condition: reads, and
    /// EC2's creates (which make new resources, tagged at creation).
    fn harmless_unscoped(action: &str) -> bool {
        let (service, verb) = action.split_once(':').unwrap();
        let read = ["Describe", "Get", "List"]
            .iter()
            .any(|v| verb.starts_with(v));
        let ec2_create = service == "ec2"
            && ["Create", "Run", "Copy", "Register", "Import", "Request"]
                .iter()
                .any(|v| verb.starts_with(v))
            && verb != "CreateTags";
        match service {
            // Reads of keys and parameters are secrets: never unscoped.
            "kms" => false,
            "ssm" => read && !verb.starts_with("GetParameter"),
            "s3" => false,
            "iam" | "ec2" | "states" => read || ec2_create,
            _ => read,
        }
    }

    #[test]
    fn no_destructive_iam_kms_ssm_or_s3_statement_is_unscoped() {
        let mut unscoped = Vec::new();
        for (step, st) in registry_statements() {
            if st["Resource"] != "*" || st.get("Condition").is_some() {
                continue;
            }
            for a in actions_of(&st) {
                // CancelCommand: IAM offers no resource or condition key for it. Only the
                // janitor holds it, and cancels only the commands whose comment names the
                // execution it sweeps (resources/ssm_command.rs).
                let janitor_cancels = step == "Janitor" && a == "ssm:CancelCommand";
                if !harmless_unscoped(&a) && !janitor_cancels {
                    unscoped.push(format!("{step}: {a}"));
                }
            }
        }
        assert_eq!(
            unscoped,
            Vec::<String>::new(),
            "granted on Resource * without a condition"
        );
    }

    #[test]
    fn destructive_ec2_actions_need_the_build_tag() {
        let build_tagged = json!({
            "StringLike": { "aws:ResourceTag/amiflow:build": "*" },
            "StringEquals": { "aws:ResourceTag/amiflow:state-machine": { "Fn::Sub": "${AWS::StackName}" } }
        });
        for (step, action) in [
            ("Cleanup", "ec2:TerminateInstances"),
            ("Cleanup", "ec2:DeleteSnapshot"),
            ("Cleanup", "ec2:DeleteVolume"),
            ("Cleanup", "ec2:DeleteSecurityGroup"),
            ("Cleanup", "ec2:DeregisterImage"),
            ("Cleanup", "ec2:DeleteKeyPair"),
            ("Janitor", "ec2:TerminateInstances"),
            ("StopInstance", "ec2:StopInstances"),
            ("ModifyImageAttributes", "ec2:ModifyImageAttribute"),
        ] {
            let statements = granting(step, action);
            assert_eq!(statements.len(), 1, "{step} {action}: {statements:#?}");
            assert_eq!(statements[0]["Resource"], "*", "{step} {action}");
            assert_eq!(statements[0]["Condition"], build_tagged, "{step} {action}");
        }
        // Detaching: the build's volume, from a build instance or the stack's own build host.
        let detach = granting("DetachVolume", "ec2:DetachVolume");
        assert_eq!(detach.len(), 2, "{detach:#?}");
        assert_eq!(detach[0]["Condition"], build_tagged);
        assert_eq!(
            detach[1]["Condition"]["StringEquals"]["aws:ResourceTag/amiflow:build-host"],
            json!({ "Fn::Sub": "${AWS::StackName}" })
        );
        assert!(detach[1]["Resource"]["Fn::Sub"]
            .as_str()
            .unwrap()
            .ends_with(":instance/*"));
    }

    #[test]
    fn tags_go_on_at_creation_or_on_what_a_build_tagged() {
        let tagging = granting("RunSourceInstance", "ec2:CreateTags");
        assert_eq!(tagging.len(), 2, "{tagging:#?}");
        let at_creation = &tagging[0]["Condition"]["StringEquals"]["ec2:CreateAction"];
        let creating: Vec<&str> = at_creation
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(creating.contains(&"RunInstances"), "{creating:?}");
        assert!(
            creating
                .iter()
                .all(|c| !c.starts_with("Delete") && *c != "CreateTags"),
            "{creating:?}"
        );
        assert_eq!(
            tagging[1]["Condition"]["StringLike"],
            json!({ "aws:ResourceTag/amiflow:build": "*" })
        );
        assert_eq!(
            tagging[1]["Condition"]["StringEquals"],
            json!({ "aws:ResourceTag/amiflow:state-machine": { "Fn::Sub": "${AWS::StackName}" } })
        );
        // A step that creates nothing tags only what a build tagged.
        let later = granting("CreateTags", "ec2:CreateTags");
        assert_eq!(later.len(), 1, "{later:#?}");
        assert!(later[0]["Condition"]["StringLike"].is_object());
    }

    #[test]
    fn iam_changes_only_amiflow_roles_created_with_the_stacks_boundary() {
        let create = granting("IamInstanceProfile", "iam:CreateRole");
        assert_eq!(create.len(), 1, "{create:#?}");
        assert_eq!(
            create[0]["Resource"],
            json!({ "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/amiflow/*" })
        );
        assert_eq!(
            create[0]["Condition"]["StringEquals"]["iam:PermissionsBoundary"],
            json!({ "Fn::Sub": "${TemporaryRoleBoundary}" })
        );
        assert!(!actions_of(&create[0]).contains(&"iam:PutRolePolicy".to_string()));
        for (step, action) in [
            ("IamInstanceProfile", "iam:PutRolePolicy"),
            ("IamInstanceProfile", "iam:CreateInstanceProfile"),
            ("Cleanup", "iam:DeleteRole"),
            ("Cleanup", "iam:DeleteRolePolicy"),
            ("Janitor", "iam:DeleteInstanceProfile"),
        ] {
            let st = granting(step, action);
            assert_eq!(st.len(), 1, "{step} {action}");
            let resources: Vec<&str> = st[0]["Resource"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["Fn::Sub"].as_str().unwrap())
                .collect();
            assert!(
                resources.iter().all(|r| r.ends_with(":role/amiflow/*")
                    || r.ends_with(":instance-profile/amiflow/*")),
                "{step} {action}: {resources:?}"
            );
        }
        // The boundary is the stack's, and the functions are told its ARN.
        let template = sam_template(&registry(), None);
        assert_eq!(
            template["Resources"][TEMPORARY_ROLE_BOUNDARY]["Type"],
            "AWS::IAM::ManagedPolicy"
        );
        let boundary = template["Resources"][TEMPORARY_ROLE_BOUNDARY].to_string();
        assert!(
            !boundary.contains("iam:") && !boundary.contains("sts:"),
            "{boundary}"
        );
        let function = &template["Resources"]["IamInstanceProfileFunction"]["Properties"];
        assert_eq!(
            function["Environment"]["Variables"][StackDefaults::ROLE_BOUNDARY_ENV],
            json!({ "Ref": TEMPORARY_ROLE_BOUNDARY })
        );
    }

    #[test]
    fn kms_only_through_ec2_and_grants_only_for_aws_resources() {
        let grant = granting("CopyImage", "kms:CreateGrant");
        assert_eq!(grant.len(), 1);
        assert_eq!(
            grant[0]["Condition"],
            json!({ "Bool": { "kms:GrantIsForAWSResource": "true" } })
        );
        assert_eq!(actions_of(&grant[0]), vec!["kms:CreateGrant"]);
        for action in [
            "kms:DescribeKey",
            "kms:ReEncrypt*",
            "kms:GenerateDataKeyWithoutPlaintext",
        ] {
            let st = granting("CopyImage", action);
            assert_eq!(
                st[0]["Condition"]["StringLike"]["kms:ViaService"], "ec2.*.amazonaws.com",
                "{action}"
            );
        }
    }

    #[test]
    fn parameters_buckets_and_commands_are_the_stacks() {
        for (step, action) in [
            ("KeyPair", "ssm:PutParameter"),
            ("Connect", "ssm:GetParameter"),
            ("Cleanup", "ssm:DeleteParameter"),
        ] {
            let st = granting(step, action);
            assert_eq!(st.len(), 1, "{step} {action}");
            assert_eq!(
                st[0]["Resource"],
                // The stack's own path: no other stack's builds' keys or variables.
                json!({ "Fn::Sub": "arn:${AWS::Partition}:ssm:*:${AWS::AccountId}:parameter/amiflow/${AWS::StackName}/*" }),
                "{step} {action}"
            );
        }
        for (step, action) in [
            ("Provision", "s3:PutObject"),
            ("UploadBundle", "s3:CreateBucket"),
            ("Cleanup", "s3:DeleteBucket"),
        ] {
            let st = granting(step, action);
            assert_eq!(st.len(), 1, "{step} {action}");
            let resources = st[0]["Resource"].to_string();
            assert!(
                resources.contains("${ArtifactsBucket}") && resources.contains("${BundleBuckets}"),
                "{step} {action}: {resources}"
            );
            assert!(!resources.contains(":::*"), "{step} {action}: {resources}");
        }
        // X.509 pairs: only where the stack keeps them, not other builds' temporary keys.
        let x509 = granting("UploadX509Cert", "ssm:GetParameter");
        assert_eq!(
            x509[0]["Resource"],
            json!({ "Fn::Sub": "arn:${AWS::Partition}:ssm:*:${AWS::AccountId}:parameter/amiflow-x509/*" })
        );
        let x509 = granting("UploadX509Cert", "s3:GetObject");
        assert_eq!(
            x509[0]["Resource"],
            json!({ "Fn::Sub": "arn:${AWS::Partition}:s3:::${ArtifactsBucket}/x509/*" })
        );
        let prepare = granting("Prepare", "s3:GetObject");
        assert_eq!(prepare.len(), 1);
        let prepare = prepare[0]["Resource"].to_string();
        assert!(
            prepare.contains("${ArtifactsBucket}/*") && prepare.contains("ScheduleTemplateS3"),
            "{prepare}"
        );
        // Root on the build host: the stack's document, on hosts tagged for this stack.
        let host = granting("RunHostScript", "ssm:SendCommand");
        assert_eq!(host.len(), 2, "{host:#?}");
        assert_eq!(
            host[0]["Resource"],
            json!({ "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:document/${ChrootHostDocument}" })
        );
        assert_eq!(
            host[1]["Condition"]["StringEquals"]["ssm:resourceTag/amiflow:build-host"],
            json!({ "Fn::Sub": "${AWS::StackName}" })
        );
        // The SSM communicator: AWS-RunShellScript and AWS-RunPowerShellScript on the
        // builds' own instances.
        let provision = granting("Provision", "ssm:SendCommand");
        assert_eq!(provision.len(), 2, "{provision:#?}");
        let documents: Vec<&str> = provision[0]["Resource"]
            .as_array()
            .expect("a list of documents")
            .iter()
            .map(|d| d["Fn::Sub"].as_str().unwrap())
            .collect();
        assert!(
            documents.len() == 2
                && documents[0].ends_with("document/AWS-RunShellScript")
                && documents[1].ends_with("document/AWS-RunPowerShellScript"),
            "{documents:?}"
        );
        assert_eq!(
            provision[1]["Condition"]["StringLike"]["ssm:resourceTag/amiflow:build"],
            "*"
        );
    }

    #[test]
    fn bundle_upload_credentials_are_a_role_only_upload_bundle_may_assume() {
        // UploadBundle never writes objects itself: what the instance is handed is a session
        // of the bundle upload role, which no other step may assume.
        assert!(granting("UploadBundle", "s3:PutObject").is_empty());
        let assume = granting("UploadBundle", "sts:AssumeRole");
        assert_eq!(assume.len(), 1);
        assert_eq!(
            assume[0]["Resource"],
            json!({ "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/amiflow-bundle-upload/*" })
        );
        let others: Vec<String> = registry_statements()
            .into_iter()
            .filter(|(s, st)| {
                s != "UploadBundle" && actions_of(st).iter().any(|a| a.starts_with("sts:"))
            })
            .map(|(s, _)| s)
            .collect();
        assert!(others.is_empty(), "{others:?}");
        let template = sam_template(&registry(), None);
        let role = &template["Resources"][BUNDLE_UPLOAD_ROLE]["Properties"];
        assert_eq!(role["Path"], BUNDLE_UPLOAD_ROLE_PATH);
        assert!(
            !BUNDLE_UPLOAD_ROLE_PATH.starts_with(IAM_PATH),
            "the temporary-IAM rights (role{IAM_PATH}*) must not reach the bundle upload role"
        );
        assert_eq!(
            role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"],
            json!({ "AWS": { "Fn::GetAtt": ["UploadBundleRole", "Arn"] } })
        );
        let statements = role["Policies"][0]["PolicyDocument"]["Statement"]
            .as_array()
            .unwrap();
        assert_eq!(statements.len(), 1);
        assert_eq!(statements[0]["Action"], json!(BUNDLE_UPLOAD_ACTIONS));
        let resources = statements[0]["Resource"].to_string();
        assert!(
            resources.contains("${ArtifactsBucket}/*")
                && resources.contains("${BundleBuckets}/*")
                && !resources.contains(":::*"),
            "{resources}"
        );
        let upload = &template["Resources"]["UploadBundleFunction"]["Properties"]["Environment"]
            ["Variables"];
        assert_eq!(
            upload[StackDefaults::BUNDLE_UPLOAD_ROLE_ENV],
            json!({ "Fn::GetAtt": [BUNDLE_UPLOAD_ROLE, "Arn"] })
        );
    }

    #[test]
    fn a_steps_own_reach_names_one_of_its_actions() {
        for spec in registry() {
            for (action, _) in spec.reach {
                assert!(
                    spec.iam_actions.contains(action),
                    "{}: reach for {action}, which it does not call",
                    spec.name
                );
            }
        }
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
        let pass = &statements[2]["Fn::If"][1];
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
    fn state_machine_invokes_exactly_the_state_steps() {
        let template = sam_template(&sample_steps(), None);
        let sm = &template["Resources"]["StateMachine"]["Properties"];
        let subs: Vec<&String> = sm["DefinitionSubstitutions"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.ends_with("FunctionArn"))
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

    /// The temporary instance profile roles IamInstanceProfile creates under IAM_PATH may be
    /// passed to EC2 by the steps that pass a role, whatever InstanceProfileRoleNames says.
    #[test]
    fn pass_role_covers_the_temporary_instance_profile_roles() {
        let template = sam_template(&sample_steps(), None);
        let statements = &template["Resources"]["RunSourceInstanceRole"]["Properties"]["Policies"]
            [0]["PolicyDocument"]["Statement"];
        let temporary = statements
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == "PassTemporaryInstanceProfileRoles")
            .expect("a statement for the temporary roles");
        assert_eq!(temporary["Action"], json!(["iam:PassRole"]));
        assert_eq!(
            temporary["Resource"]["Fn::Sub"],
            "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/amiflow/*"
        );
        assert!(
            format!("role{IAM_PATH}*").starts_with("role/amiflow/"),
            "the path IamInstanceProfile creates roles under"
        );
        assert_eq!(
            temporary["Condition"]["StringEquals"]["iam:PassedToService"],
            "ec2.amazonaws.com"
        );
        assert!(temporary.get("Fn::If").is_none(), "not conditional");
        // Steps that pass no role get no PassRole at all.
        let create = template["Resources"]["CreateImageRole"].to_string();
        assert!(!create.contains("iam:PassRole"));
    }

    #[test]
    fn functions_are_built_by_make_for_the_stacks_architecture_x86_64_by_default() {
        let template = sam_template(&sample_steps(), None);
        assert_eq!(template["Parameters"]["Architecture"]["Default"], "x86_64");
        assert_eq!(
            template["Globals"]["Function"]["Architectures"],
            json!([{ "Ref": "Architecture" }])
        );
        let root = repo_root();
        let code = root
            .join("infra")
            .join(template["Globals"]["Function"]["CodeUri"].as_str().unwrap());
        assert!(code.is_dir(), "CodeUri {} exists", code.display());
        for (id, resource) in functions(&template) {
            let metadata = &resource["Metadata"];
            assert_eq!(metadata["BuildMethod"], "makefile", "{id}");
            let context = metadata["ContextPath"]["Fn::Sub"].as_str().unwrap();
            for arch in ["x86_64", "arm64"] {
                let makefile = root
                    .join("infra")
                    .join(context.replace("${Architecture}", arch))
                    .join("Makefile");
                let text = std::fs::read_to_string(&makefile)
                    .unwrap_or_else(|e| panic!("{id}: {}: {e}", makefile.display()));
                assert!(
                    text.contains(&format!("ARCHITECTURE := {arch}")),
                    "{}",
                    makefile.display()
                );
            }
        }
    }

    fn functions(template: &Value) -> Vec<(&String, &Value)> {
        let found: Vec<_> = template["Resources"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, r)| r["Type"] == "AWS::Serverless::Function")
            .collect();
        assert!(!found.is_empty());
        found
    }

    #[test]
    fn functions_publish_an_alias_which_the_state_machine_invokes() {
        let template = sam_template(&sample_steps(), None);
        for (id, resource) in functions(&template) {
            assert_eq!(
                resource["Properties"]["AutoPublishAlias"], FUNCTION_ALIAS,
                "{id}"
            );
        }
        let sm = &template["Resources"]["StateMachine"]["Properties"];
        assert_eq!(
            sm["DefinitionSubstitutions"]["CreateImageFunctionArn"],
            json!({ "Ref": "CreateImageFunction.Alias" })
        );
        let invoke = &template["Resources"]["StateMachineRole"]["Properties"]["Policies"][0]
            ["PolicyDocument"]["Statement"][0];
        assert_eq!(
            invoke["Resource"],
            json!([{ "Ref": "CreateImageFunction.Alias" }, { "Ref": "RunSourceInstanceFunction.Alias" }])
        );
        let rule = &template["Resources"]["JanitorRule"]["Properties"]["Targets"][0];
        assert_eq!(rule["Arn"], json!({ "Ref": "JanitorFunction.Alias" }));
        assert_eq!(
            template["Resources"]["JanitorInvokePermission"]["Properties"]["FunctionName"],
            json!({ "Ref": "JanitorFunction.Alias" })
        );
    }

    #[test]
    fn every_function_logs_to_its_own_group_kept_log_retention_days() {
        let template = sam_template(&sample_steps(), None);
        let resources = &template["Resources"];
        for (id, resource) in functions(&template) {
            let group_id = resource["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
                .as_str()
                .unwrap_or_else(|| panic!("{id} names its log group"));
            let group = &resources[group_id];
            assert_eq!(group["Type"], "AWS::Logs::LogGroup");
            assert_eq!(
                group["Properties"]["RetentionInDays"],
                json!({ "Ref": "LogRetentionDays" })
            );
            let filters: Vec<_> = resources
                .as_object()
                .unwrap()
                .values()
                .filter(|r| {
                    r["Type"] == "AWS::Logs::MetricFilter"
                        && r["Properties"]["LogGroupName"]["Ref"] == group_id
                })
                .collect();
            assert_eq!(filters.len(), 1, "{id}: one failures filter");
            assert_eq!(
                filters[0]["Properties"]["MetricTransformations"][0]["MetricName"],
                LAMBDA_FAILURES_METRIC
            );
        }
        assert_eq!(template["Parameters"]["LogRetentionDays"]["Default"], 30);
    }

    #[test]
    fn alarms_notify_the_topic_which_an_email_may_follow() {
        let template = sam_template(&registry(), None);
        let resources = template["Resources"].as_object().unwrap();
        let alarms: BTreeMap<&str, &Value> = resources
            .iter()
            .filter(|(_, r)| r["Type"] == "AWS::CloudWatch::Alarm")
            .map(|(id, r)| (id.as_str(), &r["Properties"]))
            .collect();
        let metric = |id: &str| {
            let a = alarms.get(id).unwrap_or_else(|| panic!("no {id}"));
            assert_eq!(a["AlarmActions"], json!([{ "Ref": "AlarmTopic" }]), "{id}");
            (
                a["Namespace"].clone(),
                a["MetricName"].as_str().unwrap().to_string(),
            )
        };
        assert_eq!(
            metric("ExecutionsFailedAlarm"),
            (json!("AWS/States"), "ExecutionsFailed".into())
        );
        assert_eq!(
            metric("ExecutionsTimedOutAlarm"),
            (json!("AWS/States"), "ExecutionsTimedOut".into())
        );
        assert_eq!(metric("LambdaFailuresAlarm").1, LAMBDA_FAILURES_METRIC);
        assert_eq!(
            metric("JanitorErrorsAlarm"),
            (
                json!({ "Fn::Sub": METRIC_NAMESPACE }),
                crate::steps::janitor::FAILURES_METRIC.into()
            )
        );
        metric("JanitorDeadLetterAlarm");
        metric("ScheduleDeadLetterAlarm");
        assert_eq!(
            alarms["ExecutionsFailedAlarm"]["Dimensions"],
            json!([{ "Name": "StateMachineArn", "Value": { "Ref": "StateMachine" } }])
        );
        let subscription = &resources["AlarmEmailSubscription"];
        assert_eq!(subscription["Condition"], "HasAlarmEmail");
        assert_eq!(
            subscription["Properties"]["Endpoint"],
            json!({ "Ref": "AlarmEmail" })
        );
        assert_eq!(template["Parameters"]["AlarmEmail"]["Default"], "");
    }

    #[test]
    fn the_schedule_is_an_eventbridge_scheduler_schedule_with_retries_and_a_dead_letter_queue() {
        let template = sam_template(&registry(), None);
        let schedule = &template["Resources"]["Schedule"];
        assert_eq!(schedule["Type"], "AWS::Scheduler::Schedule");
        assert_eq!(schedule["Condition"], "ScheduleEnabled");
        let p = &schedule["Properties"];
        assert_eq!(
            p["ScheduleExpressionTimezone"],
            json!({ "Ref": "ScheduleTimezone" })
        );
        assert_eq!(template["Parameters"]["ScheduleTimezone"]["Default"], "UTC");
        assert!(
            p["Target"]["RetryPolicy"]["MaximumRetryAttempts"]
                .as_u64()
                .unwrap()
                > 0
        );
        assert_eq!(
            p["Target"]["DeadLetterConfig"]["Arn"],
            json!({ "Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"] })
        );
        let role = &template["Resources"]["ScheduleRole"]["Properties"];
        assert_eq!(
            role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"],
            "scheduler.amazonaws.com"
        );
        // The schedule may only invoke ScheduledStart, which adds the operator's secrets
        // and alone may start the state machine.
        let actions = policy_actions(&role["Policies"][0]["PolicyDocument"]);
        assert_eq!(actions, vec!["lambda:InvokeFunction", "sqs:SendMessage"]);
        let start = json!({ "Ref": "ScheduledStartFunction.Alias" });
        assert_eq!(p["Target"]["Arn"], start);
        assert_eq!(
            role["Policies"][0]["PolicyDocument"]["Statement"][0]["Resource"],
            start
        );
        let function = &template["Resources"]["ScheduledStartFunction"]["Properties"];
        let env = &function["Environment"]["Variables"];
        assert_eq!(
            env["AMIFLOW_SCHEDULE_SECRET_VARS"],
            json!({ "Ref": "ScheduleSecretVars" })
        );
        assert_eq!(
            env["AMIFLOW_STATE_MACHINE_ARN"],
            json!({ "Ref": "StateMachine" })
        );
        let reads = &template["Resources"]["ScheduledStartRole"]["Properties"]["Policies"][0]
            ["PolicyDocument"]["Statement"];
        let secret_read = reads
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["Action"].to_string().contains("ssm:GetParameter"))
            .expect("ScheduledStart reads the operator's secrets");
        assert!(
            secret_read["Resource"]
                .to_string()
                .contains("parameter/amiflow-schedule/*"),
            "{secret_read}"
        );
        assert_eq!(
            template["Resources"]["ScheduleDeadLetterQueue"]["Condition"],
            "ScheduleEnabled"
        );
    }

    #[test]
    fn the_janitor_rule_and_function_have_a_dead_letter_queue() {
        let template = sam_template(&sample_steps(), None);
        let r = &template["Resources"];
        let queue = json!({ "Fn::GetAtt": ["JanitorDeadLetterQueue", "Arn"] });
        assert_eq!(
            r["JanitorRule"]["Properties"]["Targets"][0]["DeadLetterConfig"]["Arn"],
            queue
        );
        assert_eq!(
            r["JanitorFunction"]["Properties"]["DeadLetterQueue"]["TargetArn"],
            queue
        );
        assert_eq!(
            r["JanitorFunction"]["DependsOn"],
            json!(["JanitorDeadLetterPolicy"])
        );
        let queue_policy =
            &r["JanitorDeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0];
        assert_eq!(queue_policy["Principal"]["Service"], "events.amazonaws.com");
        assert_eq!(
            queue_policy["Condition"]["ArnEquals"]["aws:SourceArn"],
            json!([
                { "Fn::GetAtt": ["JanitorRule", "Arn"] },
                { "Fn::GetAtt": ["JanitorRedriveWindowRule", "Arn"] }
            ])
        );
    }

    #[test]
    fn the_execution_timeout_is_a_parameter_substituted_into_the_definition() {
        let template = sam_template(&sample_steps(), None);
        let sm = &template["Resources"]["StateMachine"]["Properties"];
        assert_eq!(
            sm["DefinitionSubstitutions"][EXECUTION_TIMEOUT_SUBSTITUTION],
            json!({ "Ref": "ExecutionTimeoutSeconds" })
        );
        assert_eq!(
            Path::new("infra").join(sm["DefinitionUri"].as_str().unwrap()),
            Path::new(DEPLOYED_DEFINITION)
        );
        assert_eq!(
            sm["DefinitionSubstitutions"][MAX_CONCURRENT_BUILDS_SUBSTITUTION],
            json!({ "Ref": "MaxConcurrentBuilds" })
        );
        let definition = r#"{
  "StartAt": "B",
  "States": { "B": { "Type": "Map", "MaxConcurrency": 0, "ItemProcessor": {"StartAt": "A", "States": { "A": { "Type": "Succeed" } }}, "End": true } }
}"#;
        let deployed = deployed_definition(definition).unwrap();
        let substituted: Value = serde_json::from_str(
            &deployed
                .replace("${ExecutionTimeoutSeconds}", "21600")
                .replace("${MaxConcurrentBuilds}", "10"),
        )
        .unwrap();
        assert_eq!(substituted["TimeoutSeconds"], 21600);
        assert_eq!(substituted["States"]["B"]["MaxConcurrency"], 10);
        let mut states = serde_json::from_str::<Value>(definition).unwrap()["States"].clone();
        states["B"]["MaxConcurrency"] = json!(10);
        assert_eq!(substituted["States"], states);
        assert!(
            deployed_definition(r#"{"StartAt": "A", "States": {"A": {"Type": "Succeed"}}}"#)
                .is_err(),
            "a definition without the Map's concurrency to substitute"
        );
        assert!(
            deployed_definition(r#"{"TimeoutSeconds": 5, "StartAt": "A", "States": {}}"#).is_err()
        );
        assert!(deployed_definition("[]").is_err());
    }

    #[test]
    fn the_stack_can_make_the_chroot_build_host_and_hands_it_to_the_functions() {
        let template = sam_template(&sample_steps(), None);
        let r = &template["Resources"];
        for id in ["BuildHost", "BuildHostRole", "BuildHostInstanceProfile"] {
            assert_eq!(r[id]["Condition"], "CreatesBuildHost", "{id}");
        }
        assert_eq!(
            template["Parameters"]["CreateBuildHost"]["Default"],
            "false"
        );
        let host = &r["BuildHost"]["Properties"];
        assert_eq!(host["MetadataOptions"]["HttpTokens"], "required");
        assert!(host["Tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["Key"] == "amiflow:build-host"));
        let role = &r["BuildHostRole"]["Properties"];
        assert!(role["ManagedPolicyArns"][0]["Fn::Sub"]
            .as_str()
            .unwrap()
            .ends_with("AmazonSSMManagedInstanceCore"));
        let env = &r["CreateImageFunction"]["Properties"]["Environment"]["Variables"];
        assert_eq!(
            env[StackDefaults::BUILD_HOST_ENV],
            json!({ "Fn::If": ["CreatesBuildHost", { "Ref": "BuildHost" }, { "Ref": "BuildHostInstanceId" }] })
        );
        assert_eq!(
            template["Outputs"]["BuildHostInstanceId"]["Condition"],
            "CreatesBuildHost"
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
        // A definition that cannot be deployed is an error to fix, never content to write.
        if let Err(why) = deployed_definition(&crate::flows::render()) {
            panic!("{why}");
        }
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
