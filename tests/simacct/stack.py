"""The amiflow stack in the simulated account: created through moto's CloudFormation from
the translated template, then compared, resource by resource, with what the template
declares (see cfn.py for how the expected values are derived).
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
from collections import Counter
from typing import Any

from botocore.exceptions import ClientError

import cfn
from policy import unqualified
from cfn import Report, Resolver, canonical, has_null, parameter_values, placeholders


class Stack:
    def __init__(self, account: Any, template: dict[str, Any], params: dict[str, str], name: str, code_zip: bytes):
        self.account = account
        self.template = template
        self.given_params = params
        self.name = name
        self.code_sha256 = base64.b64encode(hashlib.sha256(code_zip).digest()).decode()
        self.resources: dict[str, dict[str, Any]] = {}
        self.untyped = 0
        self.functions: dict[str, dict[str, Any]] = {}  # logical id → Lambda configuration
        self._roles: dict[str, dict[str, Any]] = {}
        self._attr_cache: dict[tuple[str, str], Any] = {}
        self.resolver: Resolver | None = None

    # ------------------------------------------------------------------ creation

    def create(self) -> str:
        cf = self.account.client("cloudformation")
        cf.create_stack(
            StackName=self.name,
            TemplateBody=json.dumps(cfn.for_moto(self.template)),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in self.given_params.items()],
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
        status = cf.describe_stacks(StackName=self.name)["Stacks"][0]["StackStatus"]
        self.load()
        return status

    def load(self) -> None:
        cf = self.account.client("cloudformation")
        pages = cf.get_paginator("list_stack_resources").paginate(StackName=self.name)
        listed = [r for p in pages for r in p["StackResourceSummaries"]]
        self.resources = {r["LogicalResourceId"]: r for r in listed if r["LogicalResourceId"]}
        self.untyped = sum(1 for r in listed if not r["LogicalResourceId"] and not r["ResourceType"])
        self._attr_cache.clear()
        self._load_functions()
        self.resolver = Resolver(
            self.template,
            parameter_values(self.template, self.given_params),
            self.account.region,
            self.name,
            self.ref,
            self.get_att,
        )

    def _load_functions(self) -> None:
        """Lambda's read API through moto fails its own signature check (moto 5.2 signs a GET
        with the request headers as body), so each page is read in a one-request window
        without authentication; nothing else runs while the account is being set up."""
        lam = self.account.client("lambda")
        by_name: dict[str, dict[str, Any]] = {}
        marker = None
        while True:
            kwargs = {"Marker": marker} if marker else {}
            page = self.account.unauthenticated(lambda: lam.list_functions(**kwargs))
            by_name.update({f["FunctionName"]: f for f in page["Functions"]})
            marker = page.get("NextMarker")
            if not marker:
                break
        self.functions = {
            logical: by_name[r["PhysicalResourceId"]]
            for logical, r in self.resources.items()
            if r["ResourceType"] == "AWS::Lambda::Function" and r["PhysicalResourceId"] in by_name
        }

    def ref(self, logical: str) -> str:
        """What `Ref` gives: the physical id, or an alias's ARN (moto makes no aliases)."""
        return cfn.alias_arn(self.template, logical, self.get_att) or self.physical_id(logical)

    def physical_id(self, logical: str) -> str:
        if logical not in self.resources:
            raise KeyError(f"the stack has no resource {logical}")
        return self.resources[logical]["PhysicalResourceId"]

    def role(self, logical: str) -> dict[str, Any]:
        if logical not in self._roles:
            self._roles[logical] = self.account.client("iam").get_role(RoleName=self.physical_id(logical))["Role"]
        return self._roles[logical]

    def get_att(self, logical: str, attribute: str) -> Any:
        key = (logical, attribute)
        if key in self._attr_cache:
            return self._attr_cache[key]
        kind = self.declared(logical)["Type"]
        name = self.physical_id(logical)
        value: Any
        if kind == "AWS::IAM::Role" and attribute == "Arn":
            value = self.role(logical)["Arn"]
        elif kind == "AWS::Lambda::Function" and attribute == "Arn":
            value = self.functions[logical]["FunctionArn"]
        elif kind == "AWS::S3::Bucket" and attribute == "Arn":
            value = f"arn:aws:s3:::{name}"
        elif kind == "AWS::Logs::LogGroup" and attribute == "Arn":
            groups = self.account.client("logs").describe_log_groups(logGroupNamePrefix=name)["logGroups"]
            value = next(g["arn"] for g in groups if g["logGroupName"] == name)
        elif kind == "AWS::SQS::Queue" and attribute == "Arn":
            value = self.account.client("sqs").get_queue_attributes(QueueUrl=name, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        elif kind == "AWS::SQS::Queue" and attribute == "QueueName":
            value = name.rstrip("/").rsplit("/", 1)[-1]
        elif kind == "AWS::SNS::Topic" and attribute == "TopicName":
            value = name.rsplit(":", 1)[-1]
        elif kind == "AWS::Events::Rule" and attribute == "Arn":
            value = self.account.client("events").describe_rule(Name=name)["Arn"]
        elif kind == "AWS::StepFunctions::StateMachine" and attribute == "Name":
            value = name.rsplit(":", 1)[-1]
        else:
            raise KeyError(f"Fn::GetAtt {logical}.{attribute} ({kind}) is not resolved by the simulated account")
        self._attr_cache[key] = value
        return value

    def declared(self, logical: str) -> dict[str, Any]:
        return self.template["Resources"][logical]

    def resolve(self, v: Any) -> Any:
        assert self.resolver is not None
        return self.resolver.resolve(v)

    def enabled_resources(self) -> dict[str, dict[str, Any]]:
        assert self.resolver is not None
        return {k: r for k, r in self.template["Resources"].items() if self.resolver.enabled(r)}

    def logical_of_type(self, kind: str) -> list[str]:
        return sorted(k for k, r in self.enabled_resources().items() if r["Type"] == kind)

    # ------------------------------------------------------------------ what Step Functions does

    def definition_substitutions(self) -> dict[str, str]:
        """DefinitionSubstitutions resolved from the stack's own resources."""
        (sm,) = self.logical_of_type("AWS::StepFunctions::StateMachine")
        return self.resolve(self.declared(sm)["Properties"].get("DefinitionSubstitutions", {}))

    def stored_definition(self) -> str:
        """The definition as moto stored it (placeholders kept: moto does not substitute)."""
        (sm,) = self.logical_of_type("AWS::StepFunctions::StateMachine")
        sfn = self.account.client("stepfunctions")
        return sfn.describe_state_machine(stateMachineArn=self.physical_id(sm))["definition"]

    # ------------------------------------------------------------------ comparison

    def verify(self) -> tuple[Report, dict[str, int]]:
        report = Report()
        enabled = self.enabled_resources()
        counts = Counter(r["Type"] for r in enabled.values())
        for logical, decl in sorted(enabled.items()):
            summary = self.resources.get(logical)
            kind = decl["Type"]
            if summary is None and self.untyped:
                # moto lists a resource type its CloudFormation does not implement without id or type.
                self.untyped -= 1
                report.gap(f"{logical} ({kind}): moto's CloudFormation does not create this type (it lists an entry without id or type)")
                continue
            if summary is None:
                report.problems.append(f"{logical} ({kind}) is declared but the stack has no such resource")
                continue
            if summary["ResourceType"] != kind:
                report.problems.append(f"{logical}: declared {kind}, created {summary['ResourceType']}")
                continue
            report.check(f"{logical} status", "CREATE_COMPLETE", summary["ResourceStatus"].replace("UPDATE_", "CREATE_"))
            check = getattr(self, "_verify_" + kind.replace("::", "_"), None)
            if check is None:
                report.problems.append(f"{logical}: the simulated account has no check for {kind}; add one to tests/simacct/stack.py")
                continue
            try:
                check(logical, self.resolve(decl.get("Properties", {})), report)
            except ClientError as e:
                report.problems.append(f"{logical} ({kind}): reading it back failed: {e}")
        undeclared = sorted(set(self.resources) - set(enabled))
        if undeclared:
            report.problems.append(f"the stack has resources the template does not declare: {undeclared}")
        return report, dict(counts)

    def _verify_AWS_IAM_ManagedPolicy(self, logical: str, props: dict[str, Any], report: Report) -> None:
        iam = self.account.client("iam")
        arn = self.physical_id(logical)
        found = iam.get_policy(PolicyArn=arn)["Policy"]
        report.check(f"{logical} path", props.get("Path", "/"), found["Path"])
        version = iam.get_policy_version(PolicyArn=arn, VersionId=found["DefaultVersionId"])["PolicyVersion"]
        document = version["Document"]
        parsed = json.loads(document) if isinstance(document, str) else document
        report.check(f"{logical} document", canonical(props["PolicyDocument"]), canonical(parsed))

    def _verify_AWS_IAM_Role(self, logical: str, props: dict[str, Any], report: Report) -> None:
        iam = self.account.client("iam")
        role = self.role(logical)
        name = role["RoleName"]
        report.check(f"{logical} trust policy", props["AssumeRolePolicyDocument"], role["AssumeRolePolicyDocument"])
        declared = {p["PolicyName"]: p["PolicyDocument"] for p in props.get("Policies", [])}
        names = iam.list_role_policies(RoleName=name)["PolicyNames"]
        # AWS::IAM::Policy resources put their inline policy on the roles they name.
        attached = [
            self.resolve(r["Properties"])["PolicyName"]
            for r in self.enabled_resources().values()
            if r["Type"] == "AWS::IAM::Policy" and {"Ref": logical} in r["Properties"].get("Roles", [])
        ]
        report.check(f"{logical} inline policy names", sorted([*declared, *attached]), sorted(names))
        for policy, doc in declared.items():
            if policy not in names:
                continue
            deployed = iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
            if canonical(deployed) != canonical(doc):
                parsed = _parse_document(deployed)
                if parsed is not None and canonical(_without_nulls(parsed)) == canonical(doc):
                    # moto's IAM evaluation answers HTTP 500 to every call of a role whose
                    # policy is not JSON or has a null statement: put what CloudFormation deploys.
                    iam.put_role_policy(RoleName=name, PolicyName=policy, PolicyDocument=json.dumps(doc))
                    if isinstance(deployed, str):
                        report.repair("moto's CloudFormation stored the inline policy as Python repr, not JSON", logical)
                    if has_null(parsed):
                        report.repair("moto's CloudFormation kept an Fn::If resolved to AWS::NoValue as a null statement", logical)
                    deployed = iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
            report.check(f"{logical} policy {policy}", doc, deployed)
        managed = props.get("ManagedPolicyArns", [])
        attached = sorted(p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"])
        if managed and not attached:
            report.gap("ManagedPolicyArns (AWSLambdaBasicExecutionRole): moto's CloudFormation attaches no managed policy to a role, so CloudWatch Logs rights are not exercised (the functions log to stdout here)", logical)
        else:
            report.check(f"{logical} managed policies", sorted(managed), attached)
        if props.get("Tags"):
            tags = iam.list_role_tags(RoleName=name)["Tags"]
            report.check(f"{logical} tags", sorted(props["Tags"], key=canonical), sorted(tags, key=canonical))

    def _verify_AWS_Lambda_Function(self, logical: str, props: dict[str, Any], report: Report) -> None:
        f = self.functions.get(logical)
        if f is None:
            report.problems.append(f"{logical}: Lambda does not list function {self.physical_id(logical)}")
            return
        for key in ("Handler", "Runtime", "Timeout", "MemorySize", "Role"):
            report.check(f"{logical} {key}", props.get(key), f.get(key))
        report.check(f"{logical} environment", props.get("Environment", {}).get("Variables", {}), f.get("Environment", {}).get("Variables", {}))
        report.check(f"{logical} tracing", props.get("TracingConfig", {}).get("Mode", "PassThrough"), f.get("TracingConfig", {}).get("Mode"))
        report.check(f"{logical} code (the one package)", self.code_sha256, f.get("CodeSha256"))
        if canonical(props.get("Architectures", ["x86_64"])) != canonical(f.get("Architectures")):
            report.gap(f"Architectures: moto's CloudFormation ignores the property (Lambda reports {f.get('Architectures')})", logical)
        else:
            report.verified.append(f"{logical} Architectures")

    def _verify_AWS_StepFunctions_StateMachine(self, logical: str, props: dict[str, Any], report: Report) -> None:
        sm = self.account.client("stepfunctions").describe_state_machine(stateMachineArn=self.physical_id(logical))
        report.check(f"{logical} role", props["RoleArn"], sm["roleArn"])
        report.check(f"{logical} type", props.get("StateMachineType", "STANDARD"), sm["type"])
        report.check(f"{logical} definition", json.loads(props["DefinitionString"]), json.loads(sm["definition"]))
        subs = props.get("DefinitionSubstitutions", {})
        report.check(f"{logical} substitutions cover the placeholders", sorted(placeholders(props["DefinitionString"])), sorted(subs))
        report.check(
            f"{logical} substitutions name deployed functions",
            sorted(unqualified(v) for k, v in subs.items() if k.endswith("FunctionArn")),
            sorted(f["FunctionArn"] for lg, f in self.functions.items() if f["FunctionArn"] in map(unqualified, subs.values())),
        )
        tracing = props.get("TracingConfiguration", {}).get("Enabled", False)
        report.check(f"{logical} tracing", bool(tracing), bool(sm.get("tracingConfiguration", {}).get("enabled", False)))
        level = props.get("LoggingConfiguration", {}).get("Level", "OFF")
        if level != sm.get("loggingConfiguration", {}).get("level", "OFF"):
            report.gap(f"{logical} LoggingConfiguration (Level {level}, IncludeExecutionData {props.get('LoggingConfiguration', {}).get('IncludeExecutionData')}): moto's CloudFormation does not apply it; the template's value is what cfn-lint and infra.rs's tests check")

    def _verify_AWS_Events_Rule(self, logical: str, props: dict[str, Any], report: Report) -> None:
        ev = self.account.client("events")
        name = self.physical_id(logical)
        rule = ev.describe_rule(Name=name)
        for key in ("ScheduleExpression", "State", "Description"):
            if key in props:
                report.check(f"{logical} {key}", props[key], rule.get(key))
        if "EventPattern" in props:
            report.check(f"{logical} event pattern", props["EventPattern"], json.loads(rule["EventPattern"]))
        targets = ev.list_targets_by_rule(Rule=name)["Targets"]
        got = {t["Id"]: t for t in targets}
        report.check(f"{logical} target ids", sorted(t["Id"] for t in props.get("Targets", [])), sorted(got))
        for t in props.get("Targets", []):
            deployed = got.get(t["Id"], {})
            report.check(f"{logical} target {t['Id']}", t, {k: deployed.get(k) for k in t})

    def _verify_AWS_S3_Bucket(self, logical: str, props: dict[str, Any], report: Report) -> None:
        s3 = self.account.client("s3")
        name = self.physical_id(logical)
        s3.head_bucket(Bucket=name)
        report.verified.append(f"{logical} exists")
        enc = props.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [])
        got = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"]
        report.check(
            f"{logical} encryption",
            [r["ServerSideEncryptionByDefault"]["SSEAlgorithm"] for r in enc],
            [r["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] for r in got],
        )
        for prop, read, what in (
            ("PublicAccessBlockConfiguration", lambda: s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"], "public access block"),
            ("LifecycleConfiguration", lambda: {"Rules": s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]}, "lifecycle rules"),
            ("OwnershipControls", lambda: s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"], "ownership controls"),
        ):
            if prop not in props:
                continue
            try:
                deployed = read()
            except ClientError:
                report.gap(f"{logical} {prop}: moto's CloudFormation does not apply the bucket's {what}")
                continue
            if prop == "PublicAccessBlockConfiguration":
                report.check(f"{logical} {what}", props[prop], deployed)
            else:
                report.verified.append(f"{logical} {what} present")

    def _verify_AWS_S3_BucketPolicy(self, logical: str, props: dict[str, Any], report: Report) -> None:
        s3 = self.account.client("s3")
        deployed = json.loads(s3.get_bucket_policy(Bucket=props["Bucket"])["Policy"])
        report.check(f"{logical} policy", props["PolicyDocument"], deployed)

    def _verify_AWS_SSM_Document(self, logical: str, props: dict[str, Any], report: Report) -> None:
        ssm = self.account.client("ssm")
        name = self.physical_id(logical)
        doc = ssm.get_document(Name=name)
        report.check(f"{logical} type", props.get("DocumentType"), doc["DocumentType"])
        report.check(f"{logical} format", props.get("DocumentFormat", "JSON"), doc["DocumentFormat"])
        try:
            content = json.loads(doc["Content"])
        except ValueError:
            # moto's CloudFormation stores an object Content as Python's repr of it, which no
            # agent could read: put the JSON CloudFormation would have stored, as the default.
            if canonical(ast.literal_eval(doc["Content"])) != canonical(props["Content"]):
                report.problems.append(f"{logical}: the document's content is neither JSON nor the declared content")
                return
            new = ssm.update_document(Name=name, Content=json.dumps(props["Content"]), DocumentVersion="$LATEST", DocumentFormat="JSON")
            ssm.update_document_default_version(Name=name, DocumentVersion=new["DocumentDescription"]["DocumentVersion"])
            report.repair("moto's CloudFormation stored the document's object Content as Python repr; put as JSON (new default version)", logical)
            content = json.loads(ssm.get_document(Name=name)["Content"])
        report.check(f"{logical} content", props["Content"], content)

    def _verify_AWS_Logs_LogGroup(self, logical: str, props: dict[str, Any], report: Report) -> None:
        name = self.physical_id(logical)
        report.check(f"{logical} name", props.get("LogGroupName", name), name)
        groups = self.account.client("logs").describe_log_groups(logGroupNamePrefix=name)["logGroups"]
        group = next((g for g in groups if g["logGroupName"] == name), {})
        report.check(f"{logical} retention", int(props["RetentionInDays"]) if "RetentionInDays" in props else None, group.get("retentionInDays"))

    def _verify_AWS_Lambda_Version(self, logical: str, props: dict[str, Any], report: Report) -> None:
        function = unqualified(str(props["FunctionName"]))
        versions = self.account.unauthenticated(lambda: self.account.client("lambda").list_versions_by_function(FunctionName=function))["Versions"]
        report.check(f"{logical} published", True, any(v["Version"] != "$LATEST" for v in versions))

    def _verify_AWS_IAM_Policy(self, logical: str, props: dict[str, Any], report: Report) -> None:
        iam = self.account.client("iam")
        for role in props.get("Roles", []):
            deployed = iam.get_role_policy(RoleName=role, PolicyName=props["PolicyName"])["PolicyDocument"]
            parsed = _parse_document(deployed) if not isinstance(deployed, dict) else deployed
            report.check(f"{logical} on {role}", canonical(props["PolicyDocument"]), canonical(_without_nulls(parsed)))

    def _verify_AWS_SQS_Queue(self, logical: str, props: dict[str, Any], report: Report) -> None:
        attrs = self.account.client("sqs").get_queue_attributes(QueueUrl=self.physical_id(logical), AttributeNames=["All"])["Attributes"]
        if "MessageRetentionPeriod" in props:
            report.check(f"{logical} retention", str(props["MessageRetentionPeriod"]), attrs.get("MessageRetentionPeriod"))
        else:
            report.verified.append(f"{logical} exists")

    def _verify_AWS_SNS_Topic(self, logical: str, props: dict[str, Any], report: Report) -> None:
        self.account.client("sns").get_topic_attributes(TopicArn=self.physical_id(logical))
        report.verified.append(f"{logical} exists")

    def _verify_AWS_CloudWatch_Alarm(self, logical: str, props: dict[str, Any], report: Report) -> None:
        alarms = self.account.client("cloudwatch").describe_alarms(AlarmNames=[self.physical_id(logical)])["MetricAlarms"]
        if not alarms:
            report.problems.append(f"{logical}: no such alarm")
            return
        alarm = alarms[0]
        for key in ("MetricName", "Namespace", "Statistic", "ComparisonOperator", "AlarmActions"):
            if key in props:
                report.check(f"{logical} {key}", props[key], alarm.get(key))

    def _verify_AWS_Logs_MetricFilter(self, logical: str, props: dict[str, Any], report: Report) -> None:
        filters = self.account.client("logs").describe_metric_filters(logGroupName=props["LogGroupName"])["metricFilters"]
        patterns = [f.get("filterPattern") for f in filters]
        report.check(f"{logical} pattern", True, props["FilterPattern"] in patterns)

    def _verify_AWS_Scheduler_Schedule(self, logical: str, props: dict[str, Any], report: Report) -> None:
        name = self.physical_id(logical).rsplit("/", 1)[-1]
        schedule = self.account.client("scheduler").get_schedule(Name=name)
        for key in ("ScheduleExpression", "ScheduleExpressionTimezone", "State"):
            if key in props:
                report.check(f"{logical} {key}", props[key], schedule.get(key))
        report.check(f"{logical} target", props["Target"]["Arn"], schedule["Target"]["Arn"])

    def _verify_AWS_Lambda_Permission(self, logical: str, props: dict[str, Any], report: Report) -> None:
        function = props["FunctionName"]
        if unqualified(function) != function:
            # cfn.for_moto: moto keeps a permission on an alias on its function.
            report.gap(f"{logical}: the permission is on the alias {function.rsplit(':', 1)[-1]}; moto keeps it on the function")
            function = unqualified(function)
        lam = self.account.client("lambda")
        policy = json.loads(self.account.unauthenticated(lambda: lam.get_policy(FunctionName=function))["Policy"])
        want = {
            "Action": props["Action"],
            "Principal": props["Principal"],
            "SourceArn": props.get("SourceArn"),
        }
        found = [
            {
                "Action": s.get("Action"),
                "Principal": (s.get("Principal") or {}).get("Service"),
                "SourceArn": ((s.get("Condition") or {}).get("ArnLike") or {}).get("AWS:SourceArn"),
            }
            for s in policy.get("Statement", [])
        ]
        if want in found:
            report.verified.append(f"{logical} statement")
        else:
            report.problems.append(f"{logical}: {function}'s resource policy has no statement {want}: {found}")


def _parse_document(v: Any) -> Any:
    """A policy document as moto returned it: JSON already parsed, or Python repr text."""
    if isinstance(v, dict):
        return v
    try:
        return json.loads(v)
    except ValueError:
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return None


def _without_nulls(v: Any) -> Any:
    if isinstance(v, list):
        return [_without_nulls(x) for x in v if x is not None]
    if isinstance(v, dict):
        return {k: _without_nulls(x) for k, x in v.items() if x is not None}
    return v

