"""The account's front door to moto, on 127.0.0.1: every AWS call of a function (and of the
instance builder's bundle upload) goes through it. It forwards to moto unchanged and adds what
a real account has and moto has not:

- a ledger of refusals: each AccessDenied/UnauthorizedOperation moto answers is recorded with
  the function whose role made the call and the action refused (moto's S3 errors do not name
  the action: it is derived from the request);
- iam:PassRole, which moto never checks: a RunInstances naming an instance profile is refused,
  as EC2 would, unless the caller's role allows iam:PassRole on the profile's role towards
  ec2.amazonaws.com (policy.py evaluates it);
- Query requests (EC2, IAM) in the encoding moto can verify: moto recomputes their
  signature from the parsed form re-encoded as botocore does (a space as "+"), so a signed
  "%20" from the Rust SDK never matches. The front door checks the caller's signature itself
  and re-signs the same parameters, "%20" written "+", with the caller's own credentials;
- the decisions moto makes only against "*": SSM parameters and commands, EventBridge
  PutEvents and SNS Publish, and IAM calls on roles and instance profiles that do not
  exist yet, are authorized against the
  resources they name (parameter, document, instance with its tags, role or profile with its
  path, the permissions boundary a CreateRole gives) by policy.py, and, when allowed,
  forwarded signed by the account's admin;
- HeadBucket authorized as IAM does (s3:ListBucket): moto checks it as "s3:HeadBucket", an
  action IAM does not have, so no role could ever pass. The front door evaluates the
  caller's s3:ListBucket on the bucket and, when allowed, forwards the call signed by the
  account's admin;
- session policies, which moto ignores (an assumed role's keys act with the role's policies):
  the Policy an AssumeRole passes is kept for the keys it returns, and each S3 request signed
  with them must be allowed by it too (UploadBundle's scoped bundle upload credentials);
- SSM's DescribeInstanceInformation, which moto lacks: every instance's agent is online;
- EventBridge PutEvents, once allowed, answered here and kept for the test (moto would
  hand the event to every rule's targets, scheduled rules included, and block invoking them);
- the SSM agent of the build host: a SendCommand to a registered host runs the command's
  document (its runShellScript steps, parameters substituted as the agent does) on this
  machine, and GetCommandInvocation reports that run's status and output instead of moto's
  canned "Success"; when it ends, SSM's "EC2 Command Invocation Status-change Notification"
  goes to the account's rules (as EC2's events do, below);
- the SSM agent of build instances: moto reports a command Success the moment it is sent;
  here it is InProgress (GetCommandInvocation) for the EC2 events' delay, then SSM's
  status-change event announces its end, as for the build host;
- Step Functions' task token answers (SendTaskSuccess, SendTaskFailure, SendTaskHeartbeat),
  which moto's executions never wait for: the caller's signature and its states:SendTask*
  on the stack's state machine are checked here, the first answer per token is kept (with
  the role that gave it) for the execution runner to read (`answer_of`, served by the
  control API), and a later one is refused as Step Functions refuses it (TaskTimedOut);
- EC2's state changes and their EventBridge events (`Ec2Events`): moto's instances run and
  stop, and its images are available, the moment they are asked for. After a successful
  RunInstances/StartInstances, StopInstances, TerminateInstances, CreateImage/RegisterImage
  or CopyImage (in its destination region), each resource is in transition for a set delay:
  DescribeInstances/DescribeImages show it pending (stopping, shutting-down), and when the delay ends the
  event EC2 sends is delivered to the account's EventBridge rules.
- Step Functions' executions of the stack's state machine (StartExecution, DescribeExecution,
  GetExecutionHistory, ListExecutions, StopExecution, RedriveExecution), which moto never
  runs: executions.py runs them with aws-local-stepfunctions; the caller's signature and its
  states:* on the state machine or execution are checked here.
"""

from __future__ import annotations

import html
import http.client
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import executions
import policy

# Refusals: not authorized, or credentials/signature not accepted.
DENIED_CODES = (
    "AccessDenied",
    "UnauthorizedOperation",
    "AccessDeniedException",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "InvalidToken",
    "InvalidClientTokenId",
    "AuthFailure",
)
HOP_HEADERS = {"transfer-encoding", "connection", "keep-alive", "content-length"}
ACCOUNT_ID = "123456789012"
TASK_ANSWERS = ("states:SendTaskSuccess", "states:SendTaskFailure", "states:SendTaskHeartbeat")
# The state an instance action leads to, and what DescribeInstances shows until it is there.
INSTANCE_TRANSITIONS = {
    "ec2:RunInstances": ("running", "pending", 0),
    "ec2:StartInstances": ("running", "pending", 0),
    "ec2:StopInstances": ("stopped", "stopping", 64),
    "ec2:TerminateInstances": ("terminated", "shutting-down", 32),
}
IMAGE_ACTIONS = ("ec2:CreateImage", "ec2:RegisterImage", "ec2:CopyImage")
SNAPSHOT_ACTIONS = ("ec2:CreateSnapshot",)
# The Describe call that shows each kind of resource, and so is rewritten during its transition.
DESCRIBES = {"ec2:DescribeInstances": "instance", "ec2:DescribeImages": "image", "ec2:DescribeSnapshots": "snapshot"}
SSM_OUTPUT_LIMIT = 24000  # characters of output GetCommandInvocation returns
# EC2 calls the stack's roles may make only on tagged resources (infra.rs's BuildTagged
# reaches), which moto allows whatever the tags: each call's resources as (form parameter,
# kind). The front door evaluates the caller's policy on each one with its tags.
# IAM's create calls whose Tags IAM authorizes as a tagging action as well.
IAM_TAG_ON_CREATE = {"iam:CreateRole": "iam:TagRole", "iam:CreateInstanceProfile": "iam:TagInstanceProfile"}

EC2_TAG_SCOPED = {
    "ec2:TerminateInstances": [("InstanceId", "instance")],
    "ec2:StopInstances": [("InstanceId", "instance")],
    "ec2:ModifyInstanceAttribute": [("InstanceId", "instance")],
    "ec2:AttachVolume": [("VolumeId", "volume"), ("InstanceId", "instance")],
    "ec2:DetachVolume": [("VolumeId", "volume"), ("InstanceId", "instance")],
    "ec2:DeleteVolume": [("VolumeId", "volume")],
    "ec2:DeleteSnapshot": [("SnapshotId", "snapshot")],
    "ec2:ModifySnapshotAttribute": [("SnapshotId", "snapshot")],
    "ec2:DeleteSecurityGroup": [("GroupId", "security-group")],
    "ec2:AuthorizeSecurityGroupIngress": [("GroupId", "security-group")],
    "ec2:DeregisterImage": [("ImageId", "image")],
    "ec2:ModifyImageAttribute": [("ImageId", "image")],
    "ec2:EnableImageDeprecation": [("ImageId", "image")],
    "ec2:DeleteKeyPair": [("KeyName", "key-pair")],
    "ec2:CancelSpotInstanceRequests": [("SpotInstanceRequestId", "spot-instances-request")],
    # Outside a creating call (the roles' ec2:CreateAction): on what a build already tagged.
    "ec2:CreateTags": [("ResourceId", None)],
}
# A resource's kind by its id (CreateTags names any).
EC2_ID_KINDS = {"i-": "instance", "vol-": "volume", "snap-": "snapshot", "sg-": "security-group", "ami-": "image", "key-": "key-pair-id", "sir-": "spot-instances-request"}
# The creating calls whose tags moto drops (`Front.tags_at_creation`).
TAGS_DROPPED_AT_CREATION = ("ec2:RegisterImage", "ec2:CopyImage", "ec2:CreateImage")


def s3_action(method: str, path: str, query: str) -> str:
    parts = [p for p in path.split("/") if p]
    has_key = len(parts) > 1
    q = urllib.parse.parse_qs(query, keep_blank_values=True)
    sub = next((k for k in ("tagging", "delete", "policy", "acl", "uploads", "uploadId", "location", "versioning") if k in q), None)
    if method in ("GET", "HEAD"):
        return "s3:GetObject" if has_key else ("s3:GetBucketTagging" if sub == "tagging" else "s3:ListBucket")
    if method == "PUT":
        if has_key:
            return "s3:PutObject"
        return {"tagging": "s3:PutBucketTagging", "policy": "s3:PutBucketPolicy", "acl": "s3:PutBucketAcl"}.get(sub or "", "s3:CreateBucket")
    if method == "DELETE":
        return "s3:DeleteObject" if has_key else ("s3:PutBucketTagging" if sub == "tagging" else "s3:DeleteBucket")
    if method == "POST" and sub == "delete":
        return "s3:DeleteObject"
    return f"s3:{method}"


def request_action(headers: Any, method: str, path: str, query: str, body: bytes) -> tuple[str, str]:
    """(service signing name, service:Action) of a request."""
    auth = headers.get("Authorization", "")
    scope = auth.partition("Credential=")[2].partition(",")[0].split("/")
    service = scope[3] if len(scope) > 3 else ""
    target = headers.get("X-Amz-Target")
    if target:
        return service, f"{service}:{target.rsplit('.', 1)[-1]}"
    if service == "s3":
        return service, s3_action(method, path, query)
    form = urllib.parse.parse_qs(body.decode(errors="replace")) if body else {}
    action = (form.get("Action") or urllib.parse.parse_qs(query).get("Action") or [""])[0]
    return service, f"{service}:{action}"


class HostAgent:
    """The SSM agent of one build host: runs documents on this machine, as root."""

    def __init__(self, instance_id: str, env: dict[str, str], work_dir: str, announce: Callable[[str, str, str, str], None] | None = None):
        self.instance_id = instance_id
        self.env = env
        self.work_dir = work_dir
        self.runs: dict[str, dict[str, Any]] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.cancelled: set[str] = set()
        self.lock = threading.Lock()
        # SSM's "EC2 Command Invocation Status-change Notification" when a command ends:
        # announce(command id, document, instance id, status).
        self.announce = announce

    def start(self, command_id: str, document: str, commands: list[str], timeout: int) -> None:
        with self.lock:
            self.runs[command_id] = {"Status": "InProgress", "ResponseCode": -1, "out": "", "err": ""}
        threading.Thread(target=self._run, args=(command_id, document, commands, timeout), daemon=True).start()

    def _run(self, command_id: str, document: str, commands: list[str], timeout: int) -> None:
        fd, script = tempfile.mkstemp(prefix="ssm-", suffix=".sh", dir=self.work_dir)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(commands) + "\n")
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
        env.update(self.env)
        # Its own process group: CancelCommand stops the whole script, as the agent does.
        proc = subprocess.Popen(["sh", script], env=env, cwd=self.work_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        with self.lock:
            self.procs[command_id] = proc
        try:
            out, err = proc.communicate(timeout=timeout)
            with self.lock:
                cancelled = command_id in self.cancelled
            status = "Cancelled" if cancelled else "Success" if proc.returncode == 0 else "Failed"
            result = {"Status": status, "ResponseCode": proc.returncode, "out": out.decode(errors="replace"), "err": err.decode(errors="replace")}
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            result = {"Status": "TimedOut", "ResponseCode": -1, "out": out.decode(errors="replace"), "err": "timed out"}
        finally:
            os.unlink(script)
            with self.lock:
                self.procs.pop(command_id, None)
        with self.lock:
            self.runs[command_id] = result
        if self.announce is not None:
            self.announce(command_id, document, self.instance_id, result["Status"])

    def cancel(self, command_id: str) -> bool:
        """CancelCommand: SIGTERM to the command's process group (the host script's trap
        unmounts); whether this agent ran it."""
        with self.lock:
            proc = self.procs.get(command_id)
            if proc is None:
                return command_id in self.runs
            self.cancelled.add(command_id)
            self.runs[command_id]["Status"] = "Cancelling"
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        return True

    def report(self, command_id: str) -> dict[str, Any] | None:
        with self.lock:
            return dict(self.runs[command_id]) if command_id in self.runs else None


class Ec2Events:
    """EC2's state changes in time, and the events EC2 sends for them (the EventBridge
    "EC2 Instance State-change Notification" and "EC2 AMI State Change" events, in EC2's
    shapes). A resource a call started a transition for is shown in its transitional state
    (`rewrite`) for `delay` seconds; then, unless events are off, its event is handed to
    `deliver` (the account's EventBridge: its rules and their Lambda targets) from a
    background thread. Every event and what its delivery did is kept for the test."""

    def __init__(self, home_region: str):
        self.home_region = home_region
        self.delay = 0.4
        self.emit = True
        self.deliver: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.lock = threading.Lock()
        # (region, resource id) → {"kind", "state", "shown", "code", "generation"}
        self.transitions: dict[tuple[str, str], dict[str, Any]] = {}
        self.generation = 0
        self.emitted: list[dict[str, Any]] = []
        self.threads: list[threading.Thread] = []

    def configure(self, delay_ms: float | None, emit: bool | None) -> dict[str, Any]:
        with self.lock:
            if delay_ms is not None:
                self.delay = float(delay_ms) / 1000
            if emit is not None:
                self.emit = bool(emit)
            return {"delay_ms": self.delay * 1000, "emit": self.emit}

    def after(self, action: str, region: str, response: str) -> None:
        """Starts the transitions a successful call began."""
        if action in INSTANCE_TRANSITIONS:
            state, shown, code = INSTANCE_TRANSITIONS[action]
            ids = sorted(set(re.findall(r"<instanceId>(i-[0-9a-zA-Z]+)</instanceId>", response)))
            self.start(region, "instance", ids, {"state": state, "shown": shown, "code": code, "action": action})
        elif action in IMAGE_ACTIONS:
            ids = sorted(set(re.findall(r"<imageId>(ami-[0-9a-zA-Z]+)</imageId>", response)))
            self.start(region, "image", ids, {"state": "available", "shown": "pending", "action": action})
        elif action in SNAPSHOT_ACTIONS:
            ids = sorted(set(re.findall(r"<snapshotId>(snap-[0-9a-zA-Z]+)</snapshotId>", response)))
            self.start(region, "snapshot", ids, {"state": "completed", "shown": "pending", "action": action})

    def start(self, region: str, kind: str, ids: list[str], what: dict[str, Any]) -> None:
        for resource in ids:
            with self.lock:
                self.generation += 1
                generation = self.generation
                self.transitions[(region, resource)] = {"kind": kind, "generation": generation, **what}
                thread = threading.Thread(target=self._finish, args=(region, resource, generation, self.delay), daemon=True)
                self.threads.append(thread)
            thread.start()

    def _finish(self, region: str, resource: str, generation: int, delay: float) -> None:
        time.sleep(delay)
        with self.lock:
            current = self.transitions.get((region, resource))
            if current is None or current["generation"] != generation:
                return  # a later call's transition replaced this one
            del self.transitions[(region, resource)]
        self.send(current["action"], self.event(region, current["kind"], resource, current["state"]))

    def command_ended(self, command_id: str, document: str, instance_id: str, status: str) -> None:
        """SSM's event for a command the build host's agent ran (`HostAgent`), sent as EC2's are."""
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "EC2 Command Invocation Status-change Notification",
            "source": "aws.ssm",
            "account": ACCOUNT_ID,
            "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": self.home_region,
            "resources": [f"arn:aws:ec2:{self.home_region}:{ACCOUNT_ID}:instance/{instance_id}"],
            "detail": {
                "command-id": command_id,
                "document-name": document,
                "instance-id": instance_id,
                "requested-date-time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "status": status,
            },
        }
        thread = threading.Thread(target=self.send, args=("SendCommand", event), daemon=True)
        with self.lock:
            self.threads.append(thread)
        thread.start()

    def send(self, action: str, event: dict[str, Any]) -> None:
        """Delivers one event to the rules, unless events are off; kept for the test."""
        with self.lock:
            emit = self.emit
        if not emit:
            return
        entry: dict[str, Any] = {"action": action, "event": event, "emitted_ms": int(time.time() * 1000)}
        try:
            if self.deliver is None:
                raise RuntimeError("no EventBridge to deliver to")
            entry["deliveries"] = self.deliver(event)["deliveries"]
        except Exception as e:  # kept for the test, which shows it
            entry["deliveries"] = []
            entry["error"] = f"{type(e).__name__}: {e}"
        entry["delivered_ms"] = int(time.time() * 1000)
        with self.lock:
            self.emitted.append(entry)

    @staticmethod
    def event(region: str, kind: str, resource: str, state: str) -> dict[str, Any]:
        common = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "source": "aws.ec2",
            "account": ACCOUNT_ID,
            "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": region,
        }
        if kind == "instance":
            return {
                **common,
                "detail-type": "EC2 Instance State-change Notification",
                "resources": [f"arn:aws:ec2:{region}:{ACCOUNT_ID}:instance/{resource}"],
                "detail": {"instance-id": resource, "state": state},
            }
        if kind == "snapshot":
            # EC2's shape: the snapshot and volume "ARNs" carry the region where the account
            # would be; the result is succeeded or failed.
            now = common["time"]
            return {
                **common,
                "detail-type": "EBS Snapshot Notification",
                "resources": [f"arn:aws:ec2::{region}:snapshot/{resource}"],
                "detail": {
                    "event": "createSnapshot",
                    "result": "succeeded" if state == "completed" else "failed",
                    "cause": "",
                    "request-id": str(uuid.uuid4()),
                    "snapshot_id": f"arn:aws:ec2::{region}:snapshot/{resource}",
                    "source": f"arn:aws:ec2::{region}:volume/vol-unknown",
                    "startTime": now,
                    "endTime": now,
                },
            }
        return {
            **common,
            "detail-type": "EC2 AMI State Change",
            # An image's ARN names no account.
            "resources": [f"arn:aws:ec2:{region}::image/{resource}"],
            "detail": {"RequestId": str(uuid.uuid4()), "ImageId": resource, "State": state, "ErrorMessage": ""},
        }

    def rewrite(self, action: str, region: str, response: bytes) -> bytes:
        """DescribeInstances/DescribeImages/DescribeSnapshots as EC2 answers during the transitions."""
        kind = DESCRIBES.get(action)
        if kind is None:
            return response
        with self.lock:
            moving = {r: t for (reg, r), t in self.transitions.items() if reg == region and t["kind"] == kind}
        if not moving:
            return response
        text = response.decode()
        for resource, t in moving.items():
            if kind == "instance":
                pattern = (
                    rf"(<instanceId>{re.escape(resource)}</instanceId>(?:(?!<instanceId>).)*?<instanceState>\s*<code>)\d+(</code>\s*<name>)"
                    rf"{re.escape(t['state'])}(</name>)"
                )
                text = re.sub(pattern, rf"\g<1>{t['code']}\g<2>{t['shown']}\g<3>", text, count=1, flags=re.S)
            elif kind == "image":
                pattern = rf"(<imageId>{re.escape(resource)}</imageId>(?:(?!<imageId>).)*?<imageState>){re.escape(t['state'])}(</imageState>)"
                text = re.sub(pattern, rf"\g<1>{t['shown']}\g<2>", text, count=1, flags=re.S)
            else:
                pattern = rf"(<snapshotId>{re.escape(resource)}</snapshotId>(?:(?!<snapshotId>).)*?<status>){re.escape(t['state'])}(</status>)"
                text = re.sub(pattern, rf"\g<1>{t['shown']}\g<2>", text, count=1, flags=re.S)
        return text.encode()

    def settle(self, timeout: float = 60) -> None:
        """Waits for the transitions under way to end and their events to be delivered."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                self.threads = [t for t in self.threads if t.is_alive()]
                pending = list(self.threads)
            if not pending:
                return
            for t in pending:
                t.join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                return

    def stats(self, reset: bool) -> list[dict[str, Any]]:
        self.settle()
        with self.lock:
            out = list(self.emitted)
            if reset:
                self.emitted.clear()
        return out


class Front:
    def __init__(
        self,
        moto_url: str,
        admin: Any,
        work_dir: str,
        callers: Callable[[str], dict[str, str] | None],
        home_region: str = "us-east-1",
    ):
        parsed = urllib.parse.urlparse(moto_url)
        self.moto = (parsed.hostname, parsed.port)
        self.admin = admin
        self.work_dir = work_dir
        self.callers = callers  # access key → {"label", "role", "secret", "token"} of a function
        self.hosts: dict[str, HostAgent] = {}
        self.lock = threading.Lock()
        self.denied: list[dict[str, str]] = []
        self.passed_roles: list[dict[str, str]] = []
        self.registered_snapshots: list[str] = []
        self.host_commands: list[dict[str, str]] = []
        # Commands to build instances, which moto reports Success the moment they are sent:
        # command id → when the simulated agent ends it (shown InProgress until then, then
        # SSM's status-change event, as the host agent's commands).
        self.instance_commands: dict[str, float] = {}
        # CancelCommand's command ids, for the test.
        self.cancelled_commands: list[str] = []
        # EnableImageDeprecation's times by "region/image" (`enable_image_deprecation`).
        self.deprecations: dict[str, str] = {}
        # Calls the test holds back (action -> seconds), once each, and those it held.
        self.holds: dict[str, float] = {}
        self.held: list[dict[str, Any]] = []
        self.calls: dict[str, int] = {}
        # EventBridge events the functions put on a bus (answered here, see `put_events`).
        self.events: list[dict[str, Any]] = []
        # access key → {"label", "role", "policy"} of the sessions an AssumeRole narrowed with a
        # Policy: kept across runs, as the keys stay valid after the build that got them.
        self.sessions: dict[str, dict[str, Any]] = {}
        self.unauthenticated_turn = threading.Lock()
        # Step Functions: the stack's state machine (the resource of states:SendTask*), the
        # first answer to each task token (kept for good: a token is answered once), and the
        # answers since the last stats.
        self.state_machine_arn = ""
        self.task_answers: dict[str, dict[str, Any]] = {}
        self.answered: list[str] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.ec2_events = Ec2Events(home_region)
        # The stack's executions (executions.py), and the admin's key (may call anything).
        self.executions: executions.Executions | None = None
        self.admin_key_id = ""
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _front_handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def register_host(self, instance_id: str, env: dict[str, str]) -> None:
        self.hosts[instance_id] = HostAgent(instance_id, env, self.work_dir, self.ec2_events.command_ended)

    def stats(self, reset: bool) -> dict[str, Any]:
        # EC2 events first: their deliveries' calls and answers belong to these counts.
        ec2_events = self.ec2_events.stats(reset)
        with self.lock:
            out = {
                "ec2_events": ec2_events,
                "denied": list(self.denied),
                "passed_roles": list(self.passed_roles),
                "registered_snapshots": list(self.registered_snapshots),
                "host_commands": [
                    {**c, "status": run["Status"], "output": run["out"][-SSM_OUTPUT_LIMIT:] + run["err"][-SSM_OUTPUT_LIMIT:]}
                    for c in self.host_commands
                    for run in [self.hosts[c["instance"]].report(c["command"]) or {"Status": "?", "out": "", "err": ""}]
                ],
                "cancelled_commands": list(self.cancelled_commands),
                "held": list(self.held),
                "deprecations": dict(self.deprecations),
                "aws_calls": dict(sorted(self.calls.items())),
                "events": list(self.events),
                "sessions": [{"key": k, "label": v["label"], "role": v["role"], "policy": v["policy"]} for k, v in self.sessions.items()],
                "task_answers": [{"token": t, **self.task_answers[t]} for t in self.answered],
                "task_heartbeats": list(self.heartbeats),
            }
            if reset:
                self.answered.clear()
                self.heartbeats.clear()
                self.registered_snapshots.clear()
                self.host_commands.clear()
                self.cancelled_commands.clear()
                self.held.clear()
                self.denied.clear()
                self.passed_roles.clear()
                self.calls.clear()
                self.events.clear()
        return out

    def instance_information(self, body: bytes) -> bytes:
        """DescribeInstanceInformation, which moto does not have (its answer keeps the caller
        waiting for a minute): the account's instances run the SSM agent and are online from
        launch, as an AWS AMI's agent is soon after boot."""
        request = json.loads(body or b"{}")
        ids = [v for f in request.get("Filters", []) if f.get("Key") == "InstanceIds" for v in f.get("Values", [])]
        listed = [{"InstanceId": i, "PingStatus": "Online", "PlatformType": "Linux"} for i in ids]
        return json.dumps({"InstanceInformationList": listed}).encode()

    def put_events(self, body: bytes) -> bytes:
        """PutEvents, answered here once allowed: moto would hand each event to the targets of
        every rule, scheduled rules included (which match no event on AWS), and block on
        invoking the Janitor. The events are kept for the test, as a bus's rule would see them."""
        entries = json.loads(body or b"{}").get("Entries", [])
        with self.lock:
            self.events.extend(entries)
        return json.dumps({"FailedEntryCount": 0, "Entries": [{"EventId": str(uuid.uuid4())} for _ in entries]}).encode()

    # ------------------------------------------------------------------ task tokens

    def task_answer(self, caller: dict[str, str] | None, label: str, action: str, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        """SendTaskSuccess/SendTaskFailure/SendTaskHeartbeat, answered as Step Functions does."""
        def error(status: int, code: str, message: str) -> tuple[int, bytes]:
            return status, json.dumps({"__type": code, "message": message}).encode()

        if caller is None:
            message = f"User: {label} is not authorized to perform: {action} on resource: {self.state_machine_arn}"
            self.record_denial(label, action, message)
            return error(400, "AccessDeniedException", message)
        if not signature_holds(method, path, headers, body, caller):
            self.record_denial(label, action, "the request's signature does not match its credentials")
            return error(400, "InvalidSignatureException", "The request signature we calculated does not match the signature you provided.")
        arn = self.state_machine_arn
        if not policy.allowed(self.role_documents(caller["role"]), action, arn):
            message = f"User: {caller.get('arn', label)} is not authorized to perform: {action} on resource: {arn} because no identity-based policy allows the {action} action"
            self.record_denial(label, action, message)
            return error(400, "AccessDeniedException", message)
        request = json.loads(body or b"{}")
        token = request.get("taskToken") or ""
        if not token:
            return error(400, "InvalidToken", "Invalid token")
        with self.lock:
            if token in self.task_answers:
                return error(400, "TaskTimedOut", "Task Timed Out: 'Provided task does not exist anymore'")
            if action == "states:SendTaskHeartbeat":
                self.heartbeats.append({"token": token, "by": label, "role": caller["role"], "at_ms": int(time.time() * 1000)})
                return 200, b"{}"
            answer: dict[str, Any]
            if action == "states:SendTaskSuccess":
                answer = {"output": request.get("output")}
            else:
                answer = {"error": request.get("error"), "cause": request.get("cause")}
            self.task_answers[token] = {**answer, "action": action, "by": label, "role": caller["role"], "at_ms": int(time.time() * 1000)}
            self.answered.append(token)
        return 200, b"{}"

    # ------------------------------------------------------------------ executions

    def is_execution_call(self, action: str, body: bytes) -> bool:
        """Whether the call is about the stack's state machine or one of its executions."""
        if self.executions is None:
            return False
        request = json.loads(body or b"{}")
        if action in ("states:StartExecution", "states:ListExecutions"):
            return request.get("stateMachineArn") == self.state_machine_arn
        return str(request.get("executionArn", "")).startswith(self.executions.arn_of(""))

    def execution_call(self, caller: dict[str, str] | None, key: str, label: str, action: str, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        """A hosted Step Functions call, authorized as IAM would: a role's policies on the state
        machine (StartExecution, ListExecutions) or the execution; the admin may do anything."""
        def error(code: str, message: str) -> tuple[int, bytes]:
            return 400, json.dumps({"__type": code, "message": message}).encode()

        request = json.loads(body or b"{}")
        resource = request.get("stateMachineArn") if action in ("states:StartExecution", "states:ListExecutions") else request.get("executionArn")
        if caller is not None:
            if not signature_holds(method, path, headers, body, caller):
                self.record_denial(label, action, "the request's signature does not match its credentials")
                return error("InvalidSignatureException", "The request signature we calculated does not match the signature you provided.")
            allowed = policy.allowed(self.role_documents(caller["role"]), action, resource)
        else:
            allowed = bool(key) and key == self.admin_key_id
        if not allowed:
            message = f"User: {caller.get('arn', label) if caller else label} is not authorized to perform: {action} on resource: {resource} because no identity-based policy allows the {action} action"
            self.record_denial(label, action, message)
            return error("AccessDeniedException", message)
        assert self.executions is not None
        try:
            return 200, json.dumps(self.executions.answer(action, request)).encode()
        except executions.Failure as e:
            return error(e.code, str(e))

    def answer_of(self, token: str) -> dict[str, Any] | None:
        """The token's answer as the execution runner reads it: {"output"} or {"error", "cause"}."""
        with self.lock:
            found = self.task_answers.get(token)
        if found is None:
            return None
        if found["action"] == "states:SendTaskSuccess":
            return {"output": found["output"]}
        return {"error": found["error"], "cause": found["cause"]}

    def record_denial(self, caller: str, action: str, message: str) -> None:
        with self.lock:
            self.denied.append({"function": caller, "action": action, "message": message[:500]})

    # ------------------------------------------------------------------ iam:PassRole

    def role_documents(self, role_name: str) -> list[dict[str, Any]]:
        iam = self.admin.client("iam")
        names = iam.list_role_policies(RoleName=role_name)["PolicyNames"]
        return [iam.get_role_policy(RoleName=role_name, PolicyName=n)["PolicyDocument"] for n in names]

    def documents_of(self, caller: dict[str, str]) -> list[dict[str, Any]]:
        """The caller's policies: a function's role's, or an IAM user's (a local build run
        with the keys of a user holding `amiflow policy`'s output)."""
        if caller.get("user"):
            iam = self.admin.client("iam")
            names = iam.list_user_policies(UserName=caller["user"])["PolicyNames"]
            return [iam.get_user_policy(UserName=caller["user"], PolicyName=n)["PolicyDocument"] for n in names]
        return self.role_documents(caller["role"])

    def pass_role_refusal(self, caller: str, principal: dict[str, str], form: dict[str, list[str]]) -> tuple[str, str] | None:
        """(role passed, message) when RunInstances passes a role the caller may not pass."""
        profile = (form.get("IamInstanceProfile.Name") or form.get("IamInstanceProfile.Arn") or [""])[0]
        if not profile:
            return None
        profile_name = profile.rsplit("/", 1)[-1]
        iam = self.admin.client("iam")
        try:
            roles = iam.get_instance_profile(InstanceProfileName=profile_name)["InstanceProfile"]["Roles"]
        except Exception:  # EC2 itself answers for a profile that does not exist
            return None
        documents = self.documents_of(principal)
        for role in roles:
            if not policy.allowed(documents, "iam:PassRole", role["Arn"], {"iam:PassedToService": "ec2.amazonaws.com"}):
                return role["Arn"], f"is not authorized to perform: iam:PassRole on resource: {role['Arn']}"
            with self.lock:
                self.passed_roles.append({"function": caller, "role": role["Arn"]})
        return None

    def trust_refusal(self, caller: dict[str, str], role_arn: str, external_id: str | None) -> str | None:
        """Why the role `role_arn` does not trust the caller, a function's role or an IAM user
        (moto compares its trust principals with the caller's session ARN, never its role's,
        so no role ever trusts another in moto, and it checks no `sts:ExternalId`); None
        when it does."""
        iam = self.admin.client("iam")
        try:
            role = iam.get_role(RoleName=role_arn.rsplit("/", 1)[-1])["Role"]
            principal = iam.get_user(UserName=caller["user"])["User"] if caller.get("user") else iam.get_role(RoleName=caller["role"])["Role"]
        except Exception as e:
            return f"AssumeRole {role_arn}: {e}"
        document = role["AssumeRolePolicyDocument"]
        if isinstance(document, str):
            document = json.loads(urllib.parse.unquote(document))
        context = {"sts:ExternalId": external_id} if external_id is not None else {}
        if role["Arn"] != role_arn or not policy.trusts(document, principal["Arn"], context):
            return f"User: {caller['label']} is not authorized to perform: sts:AssumeRole on resource: {role_arn} (its trust policy does not let {principal['Arn']} in, external id {external_id!r})"
        return None

    def forward_without_auth(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request moto answers without its own IAM checks (a decision the front door
        has made); serialized, so no other request takes the unauthenticated turn."""
        def send() -> tuple[int, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(*self.moto, timeout=120)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.getheaders(), resp.read()
            finally:
                conn.close()

        with self.unauthenticated_turn:
            return self.admin.unauthenticated(send)

    def signed_by_admin(self, method: str, path: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        """The same request, signed with the admin's key instead of the caller's."""
        scope = next(v for k, v in headers.items() if k.lower() == "authorization").partition("Credential=")[2].split("/")
        drop = {"authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256", "content-length"}
        kept = {k: v for k, v in headers.items() if k.lower() not in drop}
        host = next(v for k, v in headers.items() if k.lower() == "host")
        request = AWSRequest(method=method, url=f"http://{host}{path}", data=body, headers=kept)
        key = self.admin.admin_key
        auth = S3SigV4Auth if scope[3] == "s3" else SigV4Auth
        auth(Credentials(key["access_key_id"], key["secret_access_key"]), scope[3], scope[2]).add_auth(request)
        out = dict(request.headers.items())
        out["Content-Length"] = str(len(body))
        return out

    # ------------------------------------------------------------------ scoped decisions

    def instance_context(self, region: str, instance_id: str) -> dict[str, str]:
        """The condition keys of an instance: its tags, as ssm:resourceTag and aws:ResourceTag."""
        tags = self.ec2_tags(self.admin.client("ec2", region), "instance", instance_id) or {}
        context: dict[str, str] = {}
        for key, value in tags.items():
            context[f"ssm:resourceTag/{key}"] = value
            context[f"aws:ResourceTag/{key}"] = value
        return context

    def tags_at_creation(self, action: str, region: str, form: list[tuple[str, str]], response: str, snapshot_tags: dict[str, str]) -> None:
        """The tags a creating call was given that moto drops, put on as EC2 would: a
        RegisterImage's or CopyImage's image tags (with CopyImageTags, the source image's
        too) and the new image's snapshots' (CopyImage's, and CreateImage's, whose snapshot
        tags moto refuses and the front door took out of the request)."""
        found = re.search(r"<imageId>(ami-[0-9a-zA-Z]+)</imageId>", response)
        if not found:
            return
        image = found.group(1)
        ec2 = self.admin.client("ec2", region)
        fields = dict(form)
        specs = tag_specifications(form)
        image_tags: dict[str, str] = {}
        if action == "ec2:CopyImage" and fields.get("CopyImageTags") == "true":
            source = self.admin.client("ec2", fields.get("SourceRegion") or region).describe_images(ImageIds=[fields["SourceImageId"]])["Images"]
            image_tags.update({t["Key"]: t["Value"] for t in (source[0].get("Tags", []) if source else []) if not t["Key"].startswith("aws:")})
        if action in ("ec2:RegisterImage", "ec2:CopyImage"):
            image_tags.update(specs.get("image", {}))
        if image_tags:
            ec2.create_tags(Resources=[image], Tags=[{"Key": k, "Value": v} for k, v in image_tags.items()])
        snapshot_tags = {**specs.get("snapshot", {}), **snapshot_tags} if action == "ec2:CopyImage" else snapshot_tags
        if action == "ec2:RegisterImage":
            # moto registers a snapshot of its own instead of each one named (see the
            # RegisterImage note in _handle); EC2's image has the named ones, with their tags.
            named = [v for k, v in form if k.endswith(".Ebs.SnapshotId")]
            if named:
                for snap in ec2.describe_snapshots(SnapshotIds=named)["Snapshots"]:
                    snapshot_tags.update({t["Key"]: t["Value"] for t in snap.get("Tags", [])})
            else:
                # An instance-store image (ImageLocation) has no snapshot on EC2: moto's goes
                # with the image, tagged as it is.
                snapshot_tags.update(image_tags)
        if snapshot_tags:
            described = ec2.describe_images(ImageIds=[image])["Images"]
            snapshots = [m["Ebs"]["SnapshotId"] for i in described for m in i.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("SnapshotId")]
            if snapshots:
                ec2.create_tags(Resources=snapshots, Tags=[{"Key": k, "Value": v} for k, v in snapshot_tags.items()])

    def ec2_tagged_resources(self, action: str, region: str, body: bytes) -> list[tuple[str, dict[str, str]]]:
        """(ARN, condition context) of each existing resource an EC2_TAG_SCOPED call names:
        its tags as aws:ResourceTag. A resource that does not exist is left to moto (EC2
        answers NotFound for it, not a refusal)."""
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        ec2 = self.admin.client("ec2", region)
        out = []
        for parameter, named_kind in EC2_TAG_SCOPED[action]:
            ids = [v[0] for k, v in sorted(form.items()) if k == parameter or k.startswith(parameter + ".")]
            for resource in ids:
                kind = named_kind or next((k for prefix, k in EC2_ID_KINDS.items() if resource.startswith(prefix)), None)
                if kind is None:
                    continue
                tags = self.ec2_tags(ec2, kind, resource)
                if tags is None:
                    continue
                if kind in ("key-pair", "key-pair-id"):
                    resource = tags.pop("\0id", resource)
                    kind = "key-pair"
                owner = "" if kind in ("image", "snapshot") else ACCOUNT_ID
                out.append((f"arn:aws:ec2:{region}:{owner}:{kind}/{resource}", {f"aws:ResourceTag/{k}": v for k, v in tags.items()}))
        return out

    @staticmethod
    def ec2_tags(ec2: Any, kind: str, resource: str) -> dict[str, str] | None:
        """The resource's tags; None when it does not exist."""
        try:
            if kind in ("key-pair", "key-pair-id"):
                by = {"KeyPairIds": [resource]} if kind == "key-pair-id" else {"KeyNames": [resource]}
                found = ec2.describe_key_pairs(**by)["KeyPairs"]
                if not found:
                    return None
                return {"\0id": found[0]["KeyPairId"], **{t["Key"]: t["Value"] for t in found[0].get("Tags", [])}}
            if kind == "instance":
                listed = [i for r in ec2.describe_instances(InstanceIds=[resource])["Reservations"] for i in r["Instances"]]
            elif kind == "volume":
                listed = ec2.describe_volumes(VolumeIds=[resource])["Volumes"]
            elif kind == "snapshot":
                listed = ec2.describe_snapshots(SnapshotIds=[resource])["Snapshots"]
            elif kind == "security-group":
                listed = ec2.describe_security_groups(GroupIds=[resource])["SecurityGroups"]
            elif kind == "image":
                listed = ec2.describe_images(ImageIds=[resource])["Images"]
            else:
                listed = ec2.describe_spot_instance_requests(SpotInstanceRequestIds=[resource])["SpotInstanceRequests"]
        except Exception:
            return None
        if not listed:
            return None
        return {t["Key"]: t["Value"] for t in listed[0].get("Tags", [])}

    def iam_path(self, kind: str, name: str) -> str:
        iam = self.admin.client("iam")
        try:
            if kind == "role":
                return iam.get_role(RoleName=name)["Role"]["Path"]
            return iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Path"]
        except Exception:
            return "/"

    def scoped_resources(self, action: str, region: str, body: bytes) -> list[tuple[str, dict[str, str]]] | None:
        """(resource ARN, condition context) of each resource a call moto would match only
        against "*" acts on; None for calls moto decides itself."""
        account = "123456789012"
        service, _, name = action.partition(":")
        if service == "ssm":
            request = json.loads(body or b"{}")
            def parameter(n: str) -> str:
                return f"arn:aws:ssm:{region}:{account}:parameter{n if n.startswith('/') else '/' + n}"
            if name in ("GetParameter", "PutParameter", "DeleteParameter"):
                return [(parameter(request.get("Name", "")), {})]
            if name == "DeleteParameters":
                return [(parameter(n), {}) for n in request.get("Names", [])]
            if name == "GetParametersByPath":
                return [(parameter(request.get("Path", "")), {})]
            if name == "AddTagsToResource" and request.get("ResourceType") == "Parameter":
                return [(parameter(request.get("ResourceId", "")), {})]
            if name == "DescribeInstanceInformation":
                return [("*", {})]
            if name == "CancelCommand":
                # No resource-level permission (IAM's reference lists none): the command's
                # ARN stands for the "*" a grant must name.
                return [(f"arn:aws:ssm:{region}:{account}:command/{request.get('CommandId', '')}", {})]
            if name == "SendCommand":
                document = request.get("DocumentName", "")
                owner = "" if document.startswith("AWS-") else account
                out = [(f"arn:aws:ssm:{region}:{owner}:document/{document}", {})]
                for instance in request.get("InstanceIds", []):
                    out.append((f"arn:aws:ec2:{region}:{account}:instance/{instance}", self.instance_context(region, instance)))
                return out
            return None
        if action in EC2_TAG_SCOPED:
            return self.ec2_tagged_resources(action, region, body)
        if service == "states" and name == "StartExecution":
            # ScheduledStart starting a scheduled build: on the state machine it names.
            return [(json.loads(body or b"{}").get("stateMachineArn", ""), {})]
        if service == "events" and name == "PutEvents":
            request = json.loads(body or b"{}")
            buses = sorted({e.get("EventBusName") or "default" for e in request.get("Entries", [])} or {"default"})
            return [(b if b.startswith("arn:") else f"arn:aws:events:{region}:{account}:event-bus/{b}", {}) for b in buses]
        if service == "sns" and name == "Publish":
            form = query_form(body)
            return [(form.get("TopicArn", ""), {})]
        if service == "sts" and name == "AssumeRole":
            form = query_form(body)
            return [(form.get("RoleArn", ""), {})]
        if service == "iam":
            form = query_form(body)
            if name == "CreateRole":
                context = {"iam:PermissionsBoundary": form["PermissionsBoundary"]} if "PermissionsBoundary" in form else {}
                return [(f"arn:aws:iam::{account}:role{form.get('Path', '/')}{form.get('RoleName', '')}", context)]
            if name in ("PutRolePolicy", "DeleteRolePolicy", "DeleteRole", "TagRole"):
                role = form.get("RoleName", "")
                return [(f"arn:aws:iam::{account}:role{self.iam_path('role', role)}{role}", {})]
            if name == "CreateInstanceProfile":
                return [(f"arn:aws:iam::{account}:instance-profile{form.get('Path', '/')}{form.get('InstanceProfileName', '')}", {})]
            if name in ("DeleteInstanceProfile", "TagInstanceProfile", "AddRoleToInstanceProfile", "RemoveRoleFromInstanceProfile"):
                profile = form.get("InstanceProfileName", "")
                return [(f"arn:aws:iam::{account}:instance-profile{self.iam_path('profile', profile)}{profile}", {})]
        return None

    def scoped_refusal(self, caller: dict[str, str], action: str, region: str, body: bytes) -> str | None | bool:
        """For a call moto cannot scope: the refusal message, or None when allowed; False
        when moto decides the call itself."""
        resources = self.scoped_resources(action, region, body)
        if resources is None:
            return False
        documents = self.documents_of(caller)
        for arn, context in resources:
            if not policy.allowed(documents, action, arn, context):
                return f"User: {caller['label']} is not authorized to perform: {action} on resource: {arn}"
        # IAM, like EC2, authorizes the tags a create call puts on as the tagging action
        # too (moto does not): CreateRole with Tags needs iam:TagRole on the role.
        tagging = IAM_TAG_ON_CREATE.get(action)
        if tagging and b"Tags.member.1.Key" in body:
            for arn, context in resources:
                if not policy.allowed(documents, tagging, arn, context):
                    message = f"User: {caller['label']} is not authorized to perform: {tagging} on resource: {arn} (the tags of {action})"
                    self.record_denial(caller["label"], tagging, message)
                    return message
        return None

    # ------------------------------------------------------------------ SSM agent

    def document_commands(self, name: str, parameters: dict[str, list[str]]) -> tuple[list[str], int]:
        if name == "AWS-RunShellScript":
            timeout = int((parameters.get("executionTimeout") or ["3600"])[0])
            return list(parameters.get("commands", [])), timeout
        content = json.loads(self.admin.client("ssm").get_document(Name=name)["Content"])
        commands: list[str] = []
        timeout = 3600
        for step in content.get("mainSteps", []):
            if step.get("action") != "aws:runShellScript":
                raise ValueError(f"document {name}: step action {step.get('action')} is not run by the simulated agent")
            commands.extend(step["inputs"]["runCommand"])
            timeout = int(step["inputs"].get("timeoutSeconds", timeout))

        def fill(line: str) -> str:
            return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: ",".join(parameters.get(m.group(1), [m.group(0)])), line)

        return [fill(c) for c in commands], timeout

    def after_send_command(self, request: dict[str, Any], response: dict[str, Any]) -> None:
        command_id = response.get("Command", {}).get("CommandId")
        for instance in request.get("InstanceIds", []):
            agent = self.hosts.get(instance)
            if command_id and not agent:
                # A build instance's agent (moto runs nothing): the command takes the events'
                # delay, then ends as moto says (Success) and SSM announces it.
                delay = self.ec2_events.delay
                with self.lock:
                    self.instance_commands[command_id] = time.time() + delay
                timer = threading.Timer(delay, self.ec2_events.command_ended, args=(command_id, request.get("DocumentName", ""), instance, "Success"))
                timer.daemon = True
                timer.start()
            if agent and command_id:
                commands, timeout = self.document_commands(request["DocumentName"], request.get("Parameters", {}))
                agent.start(command_id, request["DocumentName"], commands, timeout)
                with self.lock:
                    self.host_commands.append({"instance": instance, "command": command_id, "document": request["DocumentName"]})

    def hold(self, action: str, ms: int) -> dict[str, Any]:
        """Holds the next call of `action` by a function `ms` before it goes on: a step then
        stays in flight while the test stops its execution."""
        with self.lock:
            self.holds[action] = ms / 1000
        return {"holding": action, "ms": ms}

    def take_hold(self, action: str, label: str) -> float:
        """The seconds this call is held (0 when none is asked for), recorded once it begins."""
        with self.lock:
            seconds = self.holds.pop(action, 0.0)
            if seconds:
                self.held.append({"action": action, "by": label, "at_ms": int(time.time() * 1000), "ms": int(seconds * 1000)})
        return seconds

    def enable_image_deprecation(self, region: str, body: bytes) -> bytes:
        """EnableImageDeprecation, which moto lacks (answered once the caller's policy allowed
        it on the image): the time is kept for the image, nothing else changes."""
        form = query_form(body)
        with self.lock:
            self.deprecations[f"{region}/{form.get('ImageId', '')}"] = form.get("DeprecateAt", "")
        return _ec2_response("EnableImageDeprecation", "<return>true</return>")

    def terminated_again(self, region: str, body: bytes) -> bytes | None:
        """EC2's answer to terminating instances that are all terminated already (a no-op
        there; moto deletes their network interfaces again and fails); None otherwise."""
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        ids = [v[0] for k, v in sorted(form.items()) if k.startswith("InstanceId.")]
        if not ids:
            return None
        try:
            reservations = self.admin.client("ec2", region).describe_instances(InstanceIds=ids)["Reservations"]
        except Exception:  # a missing instance: moto's own answer
            return None
        states = {i["InstanceId"]: i["State"]["Name"] for r in reservations for i in r["Instances"]}
        if sorted(states) != sorted(ids) or any(state != "terminated" for state in states.values()):
            return None
        terminated = "<code>48</code><name>terminated</name>"
        items = "".join(
            f"<item><instanceId>{i}</instanceId><currentState>{terminated}</currentState><previousState>{terminated}</previousState></item>"
            for i in ids
        )
        return _ec2_response("TerminateInstances", f"<instancesSet>{items}</instancesSet>")

    def cancel_command(self, body: bytes) -> bytes:
        """CancelCommand, which moto lacks: the agent that runs the command stops it."""
        command_id = json.loads(body or b"{}").get("CommandId", "")
        for agent in self.hosts.values():
            agent.cancel(command_id)
        with self.lock:
            self.cancelled_commands.append(command_id)
        return b"{}"

    def list_commands(self, request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
        """ListCommands with the statuses the agents report (moto says Success at once), and
        as SSM pages it (moto returns every command in one answer, unfiltered): newest first,
        `MaxResults` (50 at most) a page, `NextToken`, and the `InvokedAfter` filter."""
        def requested(command: dict[str, Any]) -> float:
            value = command.get("RequestedDateTime")
            if isinstance(value, (int, float)):
                return float(value)
            try:
                return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
            except ValueError:
                return 0.0

        commands = sorted(response.get("Commands", []), key=requested, reverse=True)
        for f in request.get("Filters") or []:
            if f.get("key") == "InvokedAfter":
                after = datetime.fromisoformat(f["value"].replace("Z", "+00:00")).timestamp()
                commands = [c for c in commands if requested(c) >= after]
        start = int(request.get("NextToken") or 0)
        size = min(int(request.get("MaxResults") or 50), 50)
        response["Commands"] = commands[start:start + size]
        response.pop("NextToken", None)
        if start + size < len(commands):
            response["NextToken"] = str(start + size)
        for command in response.get("Commands", []):
            for agent in self.hosts.values():
                run = agent.report(command.get("CommandId", ""))
                if run is not None:
                    command["Status"] = run["Status"]
                    command["StatusDetails"] = run["Status"]
        return response

    def command_invocation(self, request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
        agent = self.hosts.get(request.get("InstanceId", ""))
        run = agent.report(request.get("CommandId", "")) if agent else None
        if run is None:
            with self.lock:
                ends = self.instance_commands.get(request.get("CommandId", ""))
            if ends is not None and time.time() < ends:
                response.update({"Status": "InProgress", "StatusDetails": "InProgress", "ResponseCode": -1})
                response.pop("ExecutionEndDateTime", None)
            return response
        response.update(
            {
                "Status": run["Status"],
                "StatusDetails": run["Status"],
                "ResponseCode": run["ResponseCode"],
                "StandardOutputContent": run["out"][-SSM_OUTPUT_LIMIT:],
                "StandardErrorContent": run["err"][-SSM_OUTPUT_LIMIT:],
            }
        )
        if run["Status"] != "InProgress":
            response["ExecutionEndDateTime"] = datetime.now(timezone.utc).isoformat()
        return response


def _signature(method: str, path: str, headers: dict[str, str], body: bytes, caller: dict[str, str]) -> str:
    """SigV4 over the signed headers, as moto computes it (botocore's SigV4Auth)."""
    auth = headers["Authorization"] if "Authorization" in headers else headers["authorization"]
    signed = auth.partition("SignedHeaders=")[2].partition(",")[0].split(";")
    scope = auth.partition("Credential=")[2].partition(",")[0].split("/")
    signed_headers = {k: v for k, v in headers.items() if k.lower() in signed}
    request = AWSRequest(method=method, url=path, data=body, headers=signed_headers)
    request.context["timestamp"] = next(v for k, v in headers.items() if k.lower() == "x-amz-date")
    sigv4 = SigV4Auth(Credentials(scope[0], caller["secret"], caller.get("token")), scope[3], scope[2])
    canonical = sigv4.canonical_request(request)
    return sigv4.signature(sigv4.string_to_sign(request, canonical), request)


def _given_signature(headers: dict[str, str]) -> tuple[str, str]:
    """(the Authorization header's name as sent, the signature it carries)."""
    name = "Authorization" if "Authorization" in headers else "authorization"
    return name, headers.get(name, "").partition("Signature=")[2].partition(",")[0]


def signature_holds(method: str, path: str, headers: dict[str, str], body: bytes, caller: dict[str, str]) -> bool:
    """Whether the request is signed with the caller's credentials."""
    return _signature(method, path, headers, body, caller) == _given_signature(headers)[1]


def resign_form(method: str, path: str, headers: dict[str, str], body: bytes, caller: dict[str, str], new_body: bytes | None = None) -> tuple[dict[str, str], bytes] | None:
    """The same Query request with spaces written "+" (or `new_body`) and signed again with
    the caller's credentials; None when the caller's own signature does not hold."""
    if not signature_holds(method, path, headers, body, caller):
        return None
    name, given = _given_signature(headers)
    new_body = body.replace(b"%20", b"+") if new_body is None else new_body
    new_headers = dict(headers)
    new_headers["Content-Length"] = str(len(new_body))
    for k in list(new_headers):
        if k.lower() == "content-length" and k != "Content-Length":
            del new_headers[k]
    new_headers[name] = headers[name].replace(given, _signature(method, path, new_headers, new_body, caller))
    return new_headers, new_body


def tag_specifications(form: list[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """A Query form's TagSpecification.N as {resource type: {key: value}}."""
    specs: dict[str, dict[str, Any]] = {}
    for k, v in form:
        parts = k.split(".")
        if parts[0] != "TagSpecification" or len(parts) < 3:
            continue
        spec = specs.setdefault(parts[1], {"type": "", "tags": {}})
        if parts[2] == "ResourceType":
            spec["type"] = v
        elif parts[2] == "Tag" and len(parts) == 5:
            spec["tags"].setdefault(parts[3], {})[parts[4]] = v
    out: dict[str, dict[str, str]] = {}
    for spec in specs.values():
        out.setdefault(spec["type"], {}).update({t["Key"]: t.get("Value", "") for t in spec["tags"].values() if "Key" in t})
    return out


def without_tag_specification(form: list[tuple[str, str]], resource_type: str) -> list[tuple[str, str]]:
    """The form without its TagSpecification.N of `resource_type`."""
    dropped = {k.split(".")[1] for k, v in form if k.startswith("TagSpecification.") and k.endswith(".ResourceType") and v == resource_type}
    return [(k, v) for k, v in form if not (k.startswith("TagSpecification.") and k.split(".")[1] in dropped)]


def query_form(body: bytes) -> dict[str, str]:
    """A Query request's form, each parameter's first value."""
    return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode(errors="replace")).items()}


def _ec2_response(action: str, inner: str) -> bytes:
    """EC2's answer to `action`, its elements `inner`, as the front door gives it for moto."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        f"<requestId>{uuid.uuid4()}</requestId>{inner}</{action}Response>"
    ).encode()


def _ec2_error(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()


def _front_handler(front: Front) -> type[BaseHTTPRequestHandler]:
    class FrontDoor(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes (see account.py)

        def log_message(self, *args: Any) -> None:
            pass

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            length = None
            for k, v in headers:
                if k.lower() in HOP_HEADERS:
                    if k.lower() == "content-length":
                        length = v
                    continue
                self.send_header(k, v)
            if self.command == "HEAD":
                self.send_header("Content-Length", length or "0")
            else:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self) -> None:
            body = self._read_body()
            path, _, query = self.path.partition("?")
            service, action = request_action(self.headers, self.command, path, query, body)
            key = self.headers.get("Authorization", "").partition("Credential=")[2].partition("/")[0]
            caller = front.callers(key)
            session = front.sessions.get(key)
            label = caller["label"] if caller else session["label"] if session else f"access key {key or '(unsigned)'}"
            with front.lock:
                front.calls[label] = front.calls.get(label, 0) + 1
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection", "content-length")}
            headers["Content-Length"] = str(len(body))
            held = front.take_hold(action, label) if caller else 0.0
            if held:
                time.sleep(held)
            if caller and action == "ec2:RunInstances":
                refused = front.pass_role_refusal(label, caller, urllib.parse.parse_qs(body.decode(errors="replace")))
                if refused:
                    message = f"You are not authorized to perform this operation. User: {label} {refused[1]}"
                    front.record_denial(label, "iam:PassRole", message)
                    return self._send(403, [("Content-Type", "text/xml")], _ec2_error("UnauthorizedOperation", message))
            if action in TASK_ANSWERS:
                # Step Functions' side of a callback task: answered here, never by moto.
                status, answer = front.task_answer(caller, label, action, self.command, self.path, headers, body)
                return self._send(status, [("Content-Type", "application/x-amz-json-1.0")], answer)
            if action in executions.HOSTED_ACTIONS and front.is_execution_call(action, body):
                # Step Functions' executions of the stack's state machine: run here (executions.py).
                status, answer = front.execution_call(caller, key, label, action, self.command, self.path, headers, body)
                return self._send(status, [("Content-Type", "application/x-amz-json-1.0")], answer)
            parts = [p for p in path.split("/") if p]
            scope = self.headers.get("Authorization", "").partition("Credential=")[2].split("/")
            signed_region = scope[2] if len(scope) > 2 else ""
            region = signed_region if caller else ""
            if session and service == "s3" and len(parts) > 1:
                arn = f"arn:aws:s3:::{'/'.join(parts)}"
                if not policy.allowed([session["policy"]], action, arn):
                    message = f"User: {label} is not authorized to perform: {action} on resource: {arn} because no session policy allows the {action} action"
                    front.record_denial(label, action, message)
                    return self._send(403, [("Content-Type", "application/xml")], f"<Error><Code>AccessDenied</Code><Message>{message}</Message></Error>".encode())
            scoped = front.scoped_refusal(caller, action, region, body) if caller and (service in ("ssm", "iam", "sts", "events", "sns", "states") or action in EC2_TAG_SCOPED) else False
            if isinstance(scoped, str) and service == "ec2":
                front.record_denial(label, action, scoped)
                return self._send(403, [("Content-Type", "text/xml")], _ec2_error("UnauthorizedOperation", f"You are not authorized to perform this operation. {scoped}"))
            if isinstance(scoped, str):
                front.record_denial(label, action, scoped)
                if service in ("ssm", "events", "states"):
                    error = json.dumps({"__type": "AccessDeniedException", "message": scoped}).encode()
                    return self._send(400, [("Content-Type", "application/x-amz-json-1.1")], error)
                error = (
                    '<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>'
                    f"<Message>{scoped}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
                ).encode()
                return self._send(403, [("Content-Type", "text/xml")], error)
            if scoped is None and action == "sts:AssumeRole":
                form = query_form(body)
                untrusted = front.trust_refusal(caller, form.get("RoleArn", ""), form.get("ExternalId"))
                if untrusted:
                    front.record_denial(label, action, untrusted)
                    error = (
                        '<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>'
                        f"<Message>{untrusted}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
                    ).encode()
                    return self._send(403, [("Content-Type", "text/xml")], error)
                status, resp_headers, out = front.forward_without_auth(self.command, self.path, headers, body)
                issued = re.search(r"<AccessKeyId>([^<]+)</AccessKeyId>", out.decode(errors="replace"))
                if status == 200 and issued and "Policy" in form:
                    with front.lock:
                        front.sessions[issued.group(1)] = {
                            "label": f"{label}'s session of {form['RoleArn'].rsplit('/', 1)[-1]}",
                            "role": form["RoleArn"],
                            "policy": json.loads(form["Policy"]),
                        }
                elif status == 200 and issued and caller.get("user"):
                    # A local build's `assume_role`: its calls are decided on the role's
                    # policies, and its refusals count as the user's (the test's ledger).
                    text = out.decode(errors="replace")
                    secret = re.search(r"<SecretAccessKey>([^<]+)</SecretAccessKey>", text)
                    token = re.search(r"<SessionToken>([^<]+)</SessionToken>", text)
                    with front.lock:
                        front.admin.credentials[issued.group(1)] = {
                            "label": label,
                            "role": form["RoleArn"].rsplit("/", 1)[-1],
                            "arn": form["RoleArn"],
                            "secret": html.unescape(secret.group(1)) if secret else "",
                            "token": html.unescape(token.group(1)) if token else None,
                        }
                return self._send(status, resp_headers, out)
            if scoped is None and action == "events:PutEvents":
                return self._send(200, [("Content-Type", "application/x-amz-json-1.1")], front.put_events(body))
            if scoped is None and action == "ec2:TerminateInstances":
                again = front.terminated_again(region, body)
                if again is not None:
                    return self._send(200, [("Content-Type", "text/xml")], again)
            if scoped is None and action == "ec2:EnableImageDeprecation":
                return self._send(200, [("Content-Type", "text/xml")], front.enable_image_deprecation(region, body))
            if scoped is None and action == "ssm:CancelCommand":
                return self._send(200, [("Content-Type", "application/x-amz-json-1.1")], front.cancel_command(body))
            if scoped is None and action == "ssm:DescribeInstanceInformation":
                return self._send(200, [("Content-Type", "application/x-amz-json-1.1")], front.instance_information(body))
            if scoped is None:
                # Allowed against the resources it names: moto, matching only "*", is not asked.
                if b"%20" in body and service in ("iam", "ec2"):
                    body = body.replace(b"%20", b"+")
                headers = front.signed_by_admin(self.command, self.path, headers, body)
            elif caller and service == "s3" and self.command == "HEAD" and len(parts) == 1:
                bucket_arn = f"arn:aws:s3:::{parts[0]}"
                if not policy.allowed(front.documents_of(caller), "s3:ListBucket", bucket_arn):
                    front.record_denial(label, "s3:ListBucket", f"HeadBucket {parts[0]}: not allowed s3:ListBucket on {bucket_arn}")
                    return self._send(403, [], b"")
                headers = front.signed_by_admin(self.command, self.path, headers, body)
            elif caller and b"%20" in body and self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                resigned = resign_form(self.command, path, headers, body, caller)
                if resigned is None:
                    front.record_denial(label, action, "the request's signature does not match its credentials")
                    return self._send(403, [("Content-Type", "text/xml")], _ec2_error("AuthFailure", "AWS was not able to validate the provided access credentials"))
                headers, body = resigned
            creation_form = urllib.parse.parse_qsl(body.decode(errors="replace"), keep_blank_values=True) if caller and action in TAGS_DROPPED_AT_CREATION else []
            snapshot_tags: dict[str, str] = {}
            if action == "ec2:CreateImage" and "snapshot" in tag_specifications(creation_form):
                # moto answers 500 to CreateImage's snapshot tags, which EC2 puts on: taken out
                # here and put on the image's snapshots once it is made.
                snapshot_tags = tag_specifications(creation_form)["snapshot"]
                stripped = urllib.parse.urlencode(without_tag_specification(creation_form, "snapshot")).encode()
                resigned = resign_form(self.command, path, headers, body, caller, stripped)
                if resigned is None:
                    front.record_denial(label, action, "the request's signature does not match its credentials")
                    return self._send(403, [("Content-Type", "text/xml")], _ec2_error("AuthFailure", "AWS was not able to validate the provided access credentials"))
                headers, body = resigned
            conn = http.client.HTTPConnection(*front.moto, timeout=120)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            out = resp.read()
            resp_headers = resp.getheaders()
            conn.close()
            text = out.decode(errors="replace")
            if resp.status == 403 and service == "s3" and self.command == "HEAD":
                # A HEAD's refusal has no body to name it: S3's 403 is the refusal itself.
                front.record_denial(label, action, f"HEAD {path}: 403")
            elif resp.status >= 400 and any(f"<Code>{c}</Code>" in text or f'"{c}' in text for c in DENIED_CODES):
                m = re.search(r"not authorized to perform:? (\S+?)(?: on|<|\"|$)", text)
                front.record_denial(label, m.group(1) if m else action, text)
            elif resp.status == 200 and action == "ec2:RegisterImage":
                # moto registers a snapshot of its own instead of the one named (AWS uses it):
                # the named snapshots are the image's, whatever moto's describe says.
                form = urllib.parse.parse_qs(body.decode(errors="replace"))
                region = self.headers.get("Authorization", "").partition("Credential=")[2].split("/")[2]
                with front.lock:
                    front.registered_snapshots.extend(f"{region} snapshot {v[0]}" for k, v in form.items() if k.endswith(".Ebs.SnapshotId"))
            elif resp.status == 200 and service == "ssm" and action in ("ssm:SendCommand", "ssm:GetCommandInvocation", "ssm:ListCommands"):
                request = json.loads(body or b"{}")
                response = json.loads(out or b"{}")
                if action == "ssm:SendCommand":
                    front.after_send_command(request, response)
                elif action == "ssm:ListCommands":
                    out = json.dumps(front.list_commands(request, response), default=str).encode()
                else:
                    out = json.dumps(front.command_invocation(request, response), default=str).encode()
            if resp.status == 200 and creation_form:
                front.tags_at_creation(action, signed_region, creation_form, text, snapshot_tags)
            if resp.status == 200 and (action in INSTANCE_TRANSITIONS or action in IMAGE_ACTIONS or action in SNAPSHOT_ACTIONS):
                front.ec2_events.after(action, signed_region, text)
            elif resp.status == 200 and action in DESCRIBES:
                out = front.ec2_events.rewrite(action, signed_region, out)
            self._send(resp.status, resp_headers, out)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    return FrontDoor
