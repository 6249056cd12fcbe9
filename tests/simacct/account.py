"""A simulated AWS account with amiflow deployed in it, on this machine only.

    python account.py CONFIG.json

CONFIG: {"moto_url", "bootstrap", "repo", "work_dir", "region", "stack_name",
         "host_env": {...} (environment of the build host's SSM agent, optional),
         "parameters": {...} (stack parameters on top of the account's own)}

What it does, in order (tests/e2e/simacct.rs drives it and judges the results):

1. IAM enforcement: moto runs with INITIAL_NO_AUTH_ACTION_COUNT=3 (set by the test). The
   first three requests create the admin user, its allow-all policy and its access key;
   everything after is signed with that key or a role's and checked against policies.
2. The operator's setup: a deployment bucket, the chroot build host (an instance), a VPC and
   subnet named as the stack's defaults.
3. `sam package` + `sam deploy` by hand (cfn.py): the template's code goes to the bucket as
   one zip, the definition is inlined, the SAM translator turns it into CloudFormation, and
   moto's CloudFormation creates the stack. stack.py compares every resource with the
   template and reports problems, emulator gaps and repairs.
4. Each function's role is assumed through moto's STS, as Lambda does at a cold start.
5. The state machine's definition as Step Functions would run it: the stored definition
   with DefinitionSubstitutions resolved from the stack's own resources.
6. Lambda (lambda_service.py) and the front door to moto (front.py) start; one JSON line on
   stdout says where everything is. A small control API serves counts, an inventory of the
   account, role edits, EventBridge deliveries, the answers to task tokens
   (`callback_url`: the execution runner's AMIFLOW_CALLBACK_URL) and the settings of EC2's
   state-change events (front.py's Ec2Events). It runs until stdin closes.

Two moto 5.2 defects are worked around with one-request windows without authentication
(`/moto-api/reset-auth`), used only while the account is set up and nothing else runs:
Lambda's read API fails moto's own signature check, and AssumeRole on a role trusting a
service principal (lambda.amazonaws.com) fails with HTTP 500 in moto's trust evaluation.
The trust policies themselves are compared with the template and checked to name the
service that assumes them.
"""

from __future__ import annotations

import io
import json
import os
import platform
import sys
import threading
import time
import traceback
import urllib.parse
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

import cfn
import policy
from executions import Executions
from front import Front
from lambda_service import Function, LambdaService
from policy import unqualified
from stack import Stack

BOOTSTRAP_KEY = "AKIASIMACCTBOOTSTRAP"
DEPLOY_BUCKET = "amiflow-simacct-deploy"
SCHEDULE_TEMPLATE_KEY = "schedules/nightly.json"
SCHEDULE_SECRET_PARAMETER = "/amiflow-schedule/canary"
SCHEDULE_CANARY = "canary-" + os.urandom(8).hex()
HOST_AMI = "ami-0f8848d57eb4fe2d2"  # moto's Amazon Linux 2 (us-east-1)


class Account:
    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.moto_url: str = config["moto_url"]
        self.region: str = config.get("region", "us-east-1")
        self.work_dir: str = config["work_dir"]
        self.admin_key: dict[str, str] = {}
        self.session: boto3.Session | None = None
        self.credentials: dict[str, dict[str, Any]] = {}  # access key id → principal
        self.boto_config = Config(retries={"max_attempts": 2, "mode": "standard"})
        self.clients: dict[tuple[str, str], Any] = {}
        self.clients_lock = threading.Lock()

    # ------------------------------------------------------------------ moto and IAM

    def client(self, service: str, region: str | None = None) -> Any:
        """The admin's client (clients are thread-safe; creating one is not, and is slow)."""
        assert self.session is not None
        key = (service, region or self.region)
        with self.clients_lock:
            if key not in self.clients:
                self.clients[key] = self.session.client(service, endpoint_url=self.moto_url, region_name=key[1], config=self.boto_config)
            return self.clients[key]

    def _reset_auth(self, unauthenticated_requests: int) -> None:
        req = urllib.request.Request(
            self.moto_url + "/moto-api/reset-auth",
            data=str(unauthenticated_requests).encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(req, timeout=30).read()

    def unauthenticated(self, call: Callable[[], Any]) -> Any:
        """One request without IAM checks (see the module doc for the two moto defects)."""
        self._reset_auth(1)
        return call()

    def bootstrap_admin(self) -> None:
        boot = boto3.Session(aws_access_key_id=BOOTSTRAP_KEY, aws_secret_access_key="bootstrap", region_name=self.region)
        iam = boot.client("iam", endpoint_url=self.moto_url, config=self.boto_config)
        iam.create_user(UserName="simacct-admin")
        iam.put_user_policy(
            UserName="simacct-admin",
            PolicyName="everything",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
        )
        key = iam.create_access_key(UserName="simacct-admin")["AccessKey"]
        self.admin_key = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
        self.session = boto3.Session(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"], region_name=self.region)
        self.credentials[key["AccessKeyId"]] = {"label": "simacct-admin", "role": None}
        self.check_enforced()

    def check_enforced(self) -> None:
        """A request with a key nobody owns must be refused: IAM checks are on."""
        boot = boto3.Session(aws_access_key_id=BOOTSTRAP_KEY, aws_secret_access_key="bootstrap", region_name=self.region)
        try:
            boot.client("iam", endpoint_url=self.moto_url, config=self.boto_config).list_users()
        except ClientError as e:
            if e.response["Error"]["Code"] == "InvalidClientTokenId":
                return
            raise
        raise RuntimeError("moto answered a request signed with an unknown key: IAM enforcement is off (INITIAL_NO_AUTH_ACTION_COUNT not set?)")

    def assume(self, role_arn: str, session_name: str, label: str, role_name: str) -> dict[str, str]:
        sts = self.client("sts")
        creds = self.unauthenticated(lambda: sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name[:64]))["Credentials"]
        self.credentials[creds["AccessKeyId"]] = {
            "label": label,
            "role": role_name,
            "arn": f"arn:aws:sts::{cfn.ACCOUNT_ID}:assumed-role/{role_name}/{session_name[:64]}",
            "secret": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
        }
        return {k: creds[k] for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")}

    def approver(self, state_machine_arn: str) -> dict[str, str]:
        """The approvers' role, as README.md's "approval" tells the operator to make it: read
        and remove the approval tokens, answer the state machine's tasks; nothing else."""
        iam = self.client("iam")
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{cfn.ACCOUNT_ID}:root"}, "Action": "sts:AssumeRole"}]}
        role = iam.create_role(RoleName="amiflow-approver", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
        iam.put_role_policy(RoleName="amiflow-approver", PolicyName="approve", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["ssm:GetParameter", "ssm:DeleteParameter"],
                 "Resource": f"arn:aws:ssm:*:{cfn.ACCOUNT_ID}:parameter/amiflow/*/approval/token"},
                {"Effect": "Allow", "Action": ["states:SendTaskSuccess", "states:SendTaskFailure"], "Resource": state_machine_arn},
            ],
        }))
        return self.assume(role["Arn"], "approver", "approver", "amiflow-approver")

    def role_documents(self, role_name: str) -> list[dict[str, Any]]:
        iam = self.client("iam")
        names = iam.list_role_policies(RoleName=role_name)["PolicyNames"]
        return [iam.get_role_policy(RoleName=role_name, PolicyName=n)["PolicyDocument"] for n in names]

    def caller(self, access_key: str) -> dict[str, Any] | None:
        return self.credentials.get(access_key)

    # ------------------------------------------------------------------ operator setup

    def operator_setup(self) -> dict[str, str]:
        s3 = self.client("s3")
        s3.create_bucket(Bucket=DEPLOY_BUCKET)
        ec2 = self.client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24", AvailabilityZone=f"{self.region}a")["Subnet"]["SubnetId"]
        host = ec2.run_instances(
            ImageId=HOST_AMI,
            InstanceType="t3.micro",
            MinCount=1,
            MaxCount=1,
            # The operator marks the host for this stack: HostInfo and RunHostScript's role
            # accept no other (infra/README.md).
            TagSpecifications=[{"ResourceType": "instance", "Tags": [
                {"Key": "Name", "Value": "amiflow-chroot-host"},
                {"Key": "amiflow:build-host", "Value": self.config.get("stack_name", "amiflow")},
            ]}],
        )["Instances"][0]["InstanceId"]
        # The value of the scheduled builds' sensitive variable, kept where ScheduledStart
        # may read it (steps/scheduled_start.rs); the test looks for it everywhere.
        self.client("ssm").put_parameter(Name=SCHEDULE_SECRET_PARAMETER, Type="SecureString", Value=SCHEDULE_CANARY)
        return {"vpc": vpc, "subnet": subnet, "host": host}

    # ------------------------------------------------------------------ deploy

    def deploy(self, setup: dict[str, str]) -> tuple[Stack, dict[str, Any]]:
        repo = self.config["repo"]
        with open(os.path.join(repo, "infra/template.json"), encoding="utf-8") as f:
            sam = json.load(f)
        # The package: Lambda needs a zip; moto keeps a copy per function, so the zip holds a
        # stand-in of the 100 MB debug bootstrap, which lambda_service.py runs instead.
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("bootstrap", f"#!/bin/sh\n# stand-in: the simulated account runs {self.config['bootstrap']}\nexit 1\n")
        code = buf.getvalue()
        self.client("s3").put_object(Bucket=DEPLOY_BUCKET, Key="amiflow/bootstrap.zip", Body=code)
        packaged = cfn.package(sam, os.path.join(repo, "infra"), f"s3://{DEPLOY_BUCKET}/amiflow/bootstrap.zip")
        params = {
            "Architecture": "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64",
            "BuildHostInstanceId": setup["host"],
            "DefaultVpcId": setup["vpc"],
            "DefaultSubnetId": setup["subnet"],
            "ScheduleExpression": "cron(0 3 ? * MON *)",
            "ScheduleTemplateS3": f"s3://{DEPLOY_BUCKET}/{SCHEDULE_TEMPLATE_KEY}",
            "ScheduleVars": json.dumps({"suffix": "scheduled"}),
            "ScheduleSecretVars": json.dumps({"canary": SCHEDULE_SECRET_PARAMETER}),
        }
        params.update(self.config.get("parameters", {}))
        template = cfn.translate(packaged, params, self.region)
        stack = Stack(self, template, params, self.config.get("stack_name", "amiflow"), code)
        status = stack.create()
        report, counts = stack.verify()
        return stack, {"status": status, "counts": counts, "parameters": params, "report": report.as_dict()}


class Control:
    """The test's handle on the account: counts, inventory, role edits, EventBridge."""

    def __init__(self, account: Account, stack: Stack, lam: LambdaService, front: Front, functions: dict[str, Function]):
        self.account = account
        self.stack = stack
        self.lam = lam
        self.front = front
        self.functions = functions
        self.saved_policies: dict[str, tuple[str, str, str]] = {}
        self.schedule: dict[str, Any] = {}
        # Each function's resource policy, read now, while nothing else runs: reading it needs
        # a one-request window without authentication, which deliveries during a build (EC2's
        # events) could not take safely.
        self.resource_policies = {f.name: self.resource_policy(f) for f in functions.values()}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _control_handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stats(self, reset: bool) -> dict[str, Any]:
        # EC2's events under way first: the invocations and calls they cause count here.
        self.front.ec2_events.settle()
        lam = self.lam.stats(reset)
        front = self.front.stats(reset)
        return {**lam, **front, "denied": lam["denied"] + front["denied"]}

    def remove_action(self, function_logical: str, action: str) -> dict[str, Any]:
        """Takes `action` out of the function's role (its inline policies), as a template
        generated without it would; `restore` puts the documents back."""
        f = self.functions[function_logical]
        role = f.role_arn.rsplit("/", 1)[-1]
        iam = self.account.client("iam")
        removed = []
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            doc = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
            self.saved_policies.setdefault(f"{role}/{name}", (role, name, json.dumps(doc)))
            for s in policy.statements([doc]):
                actions = s.get("Action")
                if isinstance(actions, list) and action in actions:
                    actions.remove(action)
                    removed.append(name)
                elif actions == action:
                    s["Action"] = []
                    removed.append(name)
            # IAM refuses a statement without actions, and a policy without statements.
            kept = [s for s in policy.statements([doc]) if s.get("Action")]
            if not kept:
                iam.delete_role_policy(RoleName=role, PolicyName=name)
                continue
            doc["Statement"] = kept
            iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(doc))
        if not removed:
            raise ValueError(f"{function_logical}'s role {role} does not allow {action}")
        return {"role": role, "policies": removed}

    def user(self, name: str, document: dict[str, Any]) -> dict[str, str]:
        """An IAM user whose one policy is `document` (what `amiflow policy` printed), and its
        key: the front door decides its calls on that policy, as a function's on its role's."""
        iam = self.account.client("iam")
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="amiflow-policy", PolicyDocument=json.dumps(document))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        self.account.credentials[key["AccessKeyId"]] = {"label": f"user {name}", "user": name, "secret": key["SecretAccessKey"], "token": None}
        return {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}

    def restore(self) -> dict[str, Any]:
        iam = self.account.client("iam")
        for role, name, doc in self.saved_policies.values():
            iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=doc)
        restored = sorted(self.saved_policies)
        self.saved_policies.clear()
        return {"restored": restored}

    def fire_schedule(self) -> dict[str, Any]:
        """EventBridge Scheduler firing: its role invokes the target with the schedule's input
        (when the role may), as the schedule does."""
        target = self.schedule["target_arn"]
        function = self.lam.by_arn.get(unqualified(target))
        if function is None:
            return {"error": f"the schedule's target {target} is not a function of this stack"}
        if not self.schedule["role_may_invoke"]:
            return {"error": f"the schedule's role may not invoke {target}"}
        body, failed = self.lam.invoke(function, json.dumps(self.schedule["input"]).encode())
        return {"target": function.logical, "failed": failed, "result": json.loads(body or b"null")}

    def deliver(self, event: dict[str, Any]) -> dict[str, Any]:
        """EventBridge: every enabled rule of the default bus whose pattern matches the event
        (moto's own pattern matcher) delivers it to its Lambda targets, which must allow
        events.amazonaws.com from that rule in their resource policy."""
        from moto.events.models import EventPattern

        # A bus is a region's: an event reaches the rules of its own region only.
        ev = self.account.client("events", event.get("region") or None)
        deliveries = []
        for rule in ev.list_rules()["Rules"]:
            if rule.get("State") != "ENABLED" or not rule.get("EventPattern"):
                continue
            if not EventPattern.load(rule["EventPattern"]).matches_event(event):
                continue
            for target in ev.list_targets_by_rule(Rule=rule["Name"])["Targets"]:
                function = self.lam.by_arn.get(unqualified(target["Arn"]))
                if function is None:
                    deliveries.append({"rule": rule["Name"], "target": target["Arn"], "error": "not a function of this stack"})
                    continue
                permitted = self.permits_events(function, rule["Arn"])
                if not permitted:
                    deliveries.append({"rule": rule["Name"], "target": function.logical, "error": "the function's resource policy does not let this rule invoke it"})
                    continue
                body, failed = self.lam.invoke(function, json.dumps(event).encode())
                deliveries.append({"rule": rule["Name"], "target": function.logical, "failed": failed, "result": json.loads(body or b"null")})
        return {"deliveries": deliveries}

    def resource_policy(self, function: Function) -> dict[str, Any]:
        lam = self.account.client("lambda")
        try:
            return json.loads(self.account.unauthenticated(lambda: lam.get_policy(FunctionName=function.name))["Policy"])
        except ClientError as e:
            if e.response["Error"]["Code"] == "ResourceNotFoundException":
                return {}
            raise

    def permits_events(self, function: Function, rule_arn: str) -> bool:
        doc = self.resource_policies.get(function.name, {})
        for s in doc.get("Statement", []):
            source = ((s.get("Condition") or {}).get("ArnLike") or {}).get("AWS:SourceArn")
            if s.get("Effect") == "Allow" and (s.get("Principal") or {}).get("Service") == "events.amazonaws.com" and source == rule_arn:
                return True
        return False

    def inventory(self, regions: list[str]) -> list[str]:
        """Everything a build could leave in the account, one line per resource."""
        out: list[str] = []
        for region in regions:
            ec2 = self.account.client("ec2", region)
            for r in ec2.describe_instances()["Reservations"]:
                for i in r["Instances"]:
                    if i["State"]["Name"] not in ("terminated", "shutting-down"):
                        out.append(f"{region} instance {i['InstanceId']}")
            for g in ec2.describe_security_groups()["SecurityGroups"]:
                if g["GroupName"] != "default":
                    out.append(f"{region} security-group {g['GroupId']} {g['GroupName']}")
            for k in ec2.describe_key_pairs()["KeyPairs"]:
                out.append(f"{region} key-pair {k['KeyName']}")
            for v in ec2.describe_volumes()["Volumes"]:
                out.append(f"{region} volume {v['VolumeId']}")
            for i in ec2.describe_images(Owners=["self"])["Images"]:
                out.append(f"{region} image {i['ImageId']}")
            for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]:
                out.append(f"{region} snapshot {s['SnapshotId']}")
            for s in ec2.describe_spot_instance_requests()["SpotInstanceRequests"]:
                if s["State"] in ("open", "active"):
                    out.append(f"{region} spot-request {s['SpotInstanceRequestId']}")
            ssm = self.account.client("ssm", region)
            for p in ssm.get_paginator("describe_parameters").paginate().build_full_result().get("Parameters", []):
                out.append(f"{region} ssm-parameter {p['Name']}")
        iam = self.account.client("iam")
        for r in iam.list_roles(PathPrefix="/amiflow/")["Roles"]:
            out.append(f"iam role {r['Arn']}")
        for p in iam.list_instance_profiles()["InstanceProfiles"]:
            out.append(f"iam instance-profile {p['Arn']}")
        s3 = self.account.client("s3")
        for b in s3.list_buckets()["Buckets"]:
            out.append(f"s3 bucket {b['Name']}")
            for o in s3.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]).build_full_result().get("Contents", []):
                out.append(f"s3 object {b['Name']}/{o['Key']}")
        return sorted(out)


def _control_handler(control: Control) -> type[BaseHTTPRequestHandler]:
    class ControlApi(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as two writes: with Nagle's algorithm, the body waits for
        # the client's delayed ACK (40 ms a request; run.mjs polls a token's answer here).
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, value: Any) -> None:
            body = json.dumps(value, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _route(self) -> None:
            path, _, query = self.path.partition("?")
            q = urllib.parse.parse_qs(query)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            arg = json.loads(body) if body else {}
            try:
                if path == "/stats":
                    return self._answer(200, control.stats(q.get("reset") == ["1"]))
                if path == "/inventory":
                    return self._answer(200, control.inventory(q.get("region", [control.account.region])))
                if path == "/remove-action":
                    return self._answer(200, control.remove_action(arg["function"], arg["action"]))
                if path == "/users":
                    return self._answer(200, control.user(arg["name"], arg["policy"]))
                if path == "/hold":
                    return self._answer(200, control.front.hold(arg["action"], int(arg["ms"])))
                if path == "/restore-roles":
                    return self._answer(200, control.restore())
                if path == "/events":
                    return self._answer(200, control.deliver(arg))
                if path.startswith("/executions/"):
                    # An execution the account runs (executions.py), by name, with its last record.
                    return self._answer(200, control.front.executions.state_of(urllib.parse.unquote(path.removeprefix("/executions/"))))
                if path == "/schedule/fire":
                    return self._answer(200, control.fire_schedule())
                if path.startswith("/callbacks/"):
                    # AMIFLOW_CALLBACK_URL of tests/als/run.mjs: a task token's answer, once given.
                    answer = control.front.answer_of(urllib.parse.unquote(path.removeprefix("/callbacks/")))
                    return self._answer(200, answer) if answer is not None else self._answer(404, {"error": "not answered"})
                if path == "/ec2-events":
                    # EC2's state-change events: {"delay_ms", "emit"} to change how they come.
                    events = control.front.ec2_events
                    if self.command == "POST":
                        return self._answer(200, events.configure(arg.get("delay_ms"), arg.get("emit")))
                    return self._answer(200, events.configure(None, None))
                self._answer(404, {"error": f"no control endpoint {path}"})
            except Exception as e:  # the test shows the message
                self._answer(500, {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()})

        do_GET = do_POST = _route

    return ControlApi


def phase(what: str, started: list[float] = []) -> None:
    """Progress on stderr (the test keeps it in the account's log)."""
    now = time.monotonic()
    started.append(now)
    print(f"simacct: {now - started[0]:6.2f}s {what}", file=sys.stderr, flush=True)


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        config = json.load(f)
    os.environ.setdefault("AWS_REGION", config.get("region", "us-east-1"))
    os.environ.setdefault("AWS_DEFAULT_REGION", os.environ["AWS_REGION"])
    account = Account(config)
    try:
        phase("start")
        account.bootstrap_admin()
        phase("admin user and key; IAM enforced")
        setup = account.operator_setup()
        phase("operator setup (bucket, VPC, build host)")
        stack, deployed = account.deploy(setup)
        phase("stack created and compared with the template")

        # Lambda's side: assume each function's role (a cold start's credentials).
        functions: dict[str, Function] = {}
        problems = deployed["report"]["problems"]
        for logical, conf in stack.functions.items():
            role_logical = stack.declared(logical)["Properties"]["Role"]["Fn::GetAtt"][0]
            trust = stack.role(role_logical)["AssumeRolePolicyDocument"]
            if "lambda.amazonaws.com" not in json.dumps(trust):
                problems.append(f"{role_logical} does not trust lambda.amazonaws.com: Lambda could not assume it for {logical}")
            creds = account.assume(conf["Role"], conf["FunctionName"], logical.removesuffix("Function"), conf["Role"].rsplit("/", 1)[-1])
            functions[logical] = Function(logical.removesuffix("Function"), conf, creds, role_logical)

        phase("function roles assumed")
        # Step Functions' side: its role, and the definition with the substitutions applied.
        (sm_logical,) = stack.logical_of_type("AWS::StepFunctions::StateMachine")
        sm_props = stack.resolve(stack.declared(sm_logical)["Properties"])
        sm_role_arn = sm_props["RoleArn"]
        sm_creds = account.assume(sm_role_arn, "states", "StepFunctions", sm_role_arn.rsplit("/", 1)[-1])
        approver_creds = account.approver(stack.physical_id(sm_logical))
        definition = cfn.substitute(stack.stored_definition(), stack.definition_substitutions())
        definition_path = os.path.join(account.work_dir, "definition.asl.json")
        with open(definition_path, "w", encoding="utf-8") as f:
            f.write(definition)
        arns = {f.arn for f in functions.values()}
        tasks = sorted(set(_task_resources(json.loads(definition))))
        unknown = [t for t in tasks if unqualified(t) not in arns]
        if unknown:
            problems.append(f"Task resources that are no function of the stack: {unknown}")
        account.check_enforced()

        def function_caller(key: str) -> dict[str, str] | None:
            c = account.caller(key)
            return c if c and (c.get("role") or c.get("user")) else None

        front = Front(account.moto_url, account, account.work_dir, function_caller, account.region)
        front.state_machine_arn = stack.physical_id(sm_logical)

        def lambda_caller(key: str) -> tuple[str, list[dict[str, Any]]] | None:
            c = account.caller(key)
            if c is None or not c.get("role"):
                return None
            return c["arn"], account.role_documents(c["role"])

        lam = LambdaService(account.region, config["bootstrap"], front.url, account.work_dir, list(functions.values()), lambda_caller)
        host_env = dict(config.get("host_env") or {})
        host_env.update(host_cli(account, front.url))
        front.register_host(setup["host"], host_env)
        control = Control(account, stack, lam, front, {f.logical: f for f in functions.values()})
        front.ec2_events.deliver = control.deliver
        # Step Functions: the stack's executions, run by run.mjs as the state machine's role.
        hosted = Executions(
            stack.physical_id(sm_logical),
            definition_path,
            account.work_dir,
            {"node": config["node"], "modules": config["node_modules"], "script": os.path.join(config["repo"], "tests/als/run.mjs")},
            {
                "PATH": os.environ.get("PATH", ""),
                "AWS_ENDPOINT_URL_LAMBDA": lam.url,
                "AWS_REGION": account.region,
                "AWS_ACCESS_KEY_ID": sm_creds["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": sm_creds["SecretAccessKey"],
                "AWS_SESSION_TOKEN": sm_creds["SessionToken"],
                "AMIFLOW_CALLBACK_URL": f"{control.url}/callbacks",
                "AWS_EC2_METADATA_DISABLED": "true",
            },
            account.region,
            cfn.ACCOUNT_ID,
            sm_role_arn,
        )
        hosted.deliver = control.deliver
        front.executions = hosted
        front.admin_key_id = account.admin_key["access_key_id"]

        # The build schedule (EventBridge Scheduler): what it would start, with whose rights.
        scheduler = account.client("scheduler")
        schedule = {}
        for logical in stack.logical_of_type("AWS::Scheduler::Schedule"):
            if logical in stack.resources:
                found = scheduler.get_schedule(Name=stack.physical_id(logical).rsplit("/", 1)[-1])
            else:
                # moto's CloudFormation does not create schedules (a gap in the report): the
                # schedule as the template declares it, resolved from the stack's resources.
                found = {"Name": logical, **stack.resolve(stack.declared(logical)["Properties"])}
            target = found["Target"]
            role_name = target["RoleArn"].rsplit("/", 1)[-1]
            schedule = {
                "rule": found["Name"],
                "expression": found["ScheduleExpression"],
                "target_arn": target["Arn"],
                "input": json.loads(target["Input"]),
                "role_may_invoke": policy.allowed(account.role_documents(role_name), "lambda:InvokeFunction", target["Arn"]),
                "role_may_start_execution": policy.allowed(account.role_documents(role_name), "states:StartExecution", stack.physical_id(sm_logical)),
                "canary": SCHEDULE_CANARY,
            }
        control.schedule = schedule
        ready = {
            "ready": True,
            "admin": account.admin_key,
            "aws_endpoint": front.url,
            "lambda_endpoint": lam.url,
            "control": control.url,
            "callback_url": f"{control.url}/callbacks",
            "ec2_events": front.ec2_events.configure(None, None),
            "deploy_bucket": DEPLOY_BUCKET,
            "schedule_template_key": SCHEDULE_TEMPLATE_KEY,
            "setup": setup,
            "stack": {
                "name": stack.name,
                "status": deployed["status"],
                "counts": deployed["counts"],
                "parameters": deployed["parameters"],
                "report": deployed["report"],
                "outputs": {o["OutputKey"]: o["OutputValue"] for o in account.client("cloudformation").describe_stacks(StackName=stack.name)["Stacks"][0].get("Outputs", [])},
            },
            # Each function's role keys, as its sandboxes get them (for calls made as a function).
            "functions": {f.logical: {"name": f.name, "arn": f.arn, "role": f.role_arn, "environment": f.variables, "credentials": f.credentials} for f in functions.values()},
            "state_machine": {
                "arn": stack.physical_id(sm_logical),
                "definition": definition_path,
                "tasks": len(tasks),
                "credentials": sm_creds,
            },
            "schedule": schedule,
            "approver": approver_creds,
        }
        phase("ready")
        print(json.dumps(ready), flush=True)
    except Exception as e:
        print(json.dumps({"ready": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}), flush=True)
        return 1
    sys.stdin.read()  # until the test closes our stdin (or is gone)
    lam.shutdown()
    return 0


def host_cli(account: Any, front_url: str) -> dict[str, str]:
    """The build host's AWS CLI, as the chroot document uses it (`aws s3 cp s3://… FILE`, a
    job staged with revealed secrets): a stand-in on the agent's PATH (installing the real CLI
    would pin another botocore than moto's), reaching the account through the front door as
    its admin. The host role's own rights are the template's, checked by infra.rs."""
    bin_dir = os.path.join(account.work_dir, "host-bin")
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, "aws")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"""#!{sys.executable}
import os, sys, boto3
args = [a for a in sys.argv[1:] if a != "--only-show-errors"]
if args[:2] != ["s3", "cp"] or len(args) != 4 or not args[2].startswith("s3://"):
    sys.exit("simulated build host: only `aws s3 cp s3://BUCKET/KEY FILE` is emulated, got " + " ".join(sys.argv[1:]))
bucket, key = args[2][len("s3://"):].split("/", 1)
boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_DEFAULT_REGION"]).download_file(bucket, key, args[3])
""")
    os.chmod(path, 0o755)
    return {
        "PATH": bin_dir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "AWS_ENDPOINT_URL": front_url,
        "AWS_ACCESS_KEY_ID": account.admin_key["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": account.admin_key["secret_access_key"],
        "AWS_DEFAULT_REGION": account.region,
    }


def _task_resources(machine: dict[str, Any]) -> list[str]:
    out = []
    for state in machine.get("States", {}).values():
        if state.get("Type") == "Task":
            # A callback task (lambda:invoke.waitForTaskToken) names its function in Parameters.
            if state["Resource"].startswith("arn:aws:states:::lambda:invoke"):
                out.append(state["Parameters"]["FunctionName"])
            else:
                out.append(state["Resource"])
        for sub in [state.get("Iterator"), state.get("ItemProcessor"), *state.get("Branches", [])]:
            if sub:
                out.extend(_task_resources(sub))
    return out


if __name__ == "__main__":
    sys.exit(main())
