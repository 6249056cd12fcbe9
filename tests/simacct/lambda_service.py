"""Lambda for the simulated account: the Invoke API on 127.0.0.1, each deployed function run
as the real `bootstrap` binary behind its own Runtime API.

moto stores the functions but cannot run them (it needs Docker). Here an invocation of a
function goes to a warm sandbox of that function, or to a new one (a cold start): a
`bootstrap` process with exactly the environment Lambda gives a custom runtime — the
function's own variables as the stack set them, `_HANDLER`, `AWS_LAMBDA_*`, the region, and
the temporary credentials of the function's role (assumed through moto's STS) — plus two
things only the simulation needs: `AWS_ENDPOINT_URL` (the account's front door to moto) and
`AWS_EC2_METADATA_DISABLED` (Lambda has no instance metadata).

Error semantics are Lambda's: a function error is HTTP 200 with `X-Amz-Function-Error:
Unhandled` and `{errorType, errorMessage}`, so Retry/Catch match on the step's error name;
a function that outlives its Timeout is killed and answers `Sandbox.Timedout`.

Callers: the Invoke API evaluates `lambda:InvokeFunction` on the function's ARN against the
caller's role (the state machine's role for Step Functions), which moto cannot do (it matches
resources only against "*"). The signature itself is not checked.

The guard: before a build's step runs, the build's communicator target is checked; a build
that would connect anywhere but this machine (no `ssh_host`, or one that is not a loopback
address) is refused, so no test dials an address moto invented for an instance.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import policy

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
INVOKE_PREFIX = "/2015-03-31/functions/"
INVOKE_SUFFIX = "/invocations"
RUNTIME_PREFIX = "/2018-06-01/runtime/"


def _die_with_parent() -> None:
    """A sandbox must not outlive the account (the test stops the account by its PID).
    PR_SET_PDEATHSIG fires when the spawning *thread* ends: sandboxes are spawned by the
    service's one long-lived spawner thread, never by a request's thread."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Function:
    def __init__(self, logical: str, config: dict[str, Any], credentials: dict[str, str], role_logical: str):
        self.logical = logical
        self.name: str = config["FunctionName"]
        self.arn: str = config["FunctionArn"]
        self.handler: str = config["Handler"]
        self.timeout: int = int(config["Timeout"])
        self.memory: int = int(config["MemorySize"])
        self.role_arn: str = config["Role"]
        self.role_logical = role_logical
        self.variables: dict[str, str] = dict(config.get("Environment", {}).get("Variables", {}))
        self.credentials = credentials


class Invocation:
    def __init__(self, payload: bytes, deadline_ms: int):
        self.request_id = str(uuid.uuid4())
        self.payload = payload
        self.deadline_ms = deadline_ms
        self.done = threading.Event()
        self.result: bytes | None = None
        self.error: dict[str, Any] | None = None


class Sandbox:
    """One execution environment of one function: a Runtime API and a bootstrap process."""

    def __init__(self, service: "LambdaService", function: Function, index: int):
        self.service = service
        self.function = function
        self.events: "queue.Queue[Invocation | None]" = queue.Queue()
        self.current: Invocation | None = None
        self.init_error: dict[str, Any] | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _runtime_handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        host, port = self.server.server_address[:2]
        log_path = os.path.join(service.log_dir, f"{function.logical}-{index}.log")
        self.log_path = log_path
        env = self.environment(f"{host}:{port}", f"{index}")
        self.process = service.spawner.submit(
            subprocess.Popen,
            [service.bootstrap],
            env=env,
            cwd=service.task_root,
            stdin=subprocess.DEVNULL,
            stdout=open(log_path, "wb"),
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        ).result()

    def environment(self, runtime_api: str, stream: str) -> dict[str, str]:
        f = self.function
        region = self.service.region
        env = {
            # What Lambda sets for a provided.al2023 function.
            "_HANDLER": f.handler,
            "AWS_LAMBDA_RUNTIME_API": runtime_api,
            "AWS_LAMBDA_FUNCTION_NAME": f.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(f.memory),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{f.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"simacct/[$LATEST]{stream}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "AWS_ACCESS_KEY_ID": f.credentials["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": f.credentials["SecretAccessKey"],
            "AWS_SESSION_TOKEN": f.credentials["SessionToken"],
            "LAMBDA_TASK_ROOT": self.service.task_root,
            "TZ": ":UTC",
            "LANG": "en_US.UTF-8",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            # The simulation's own: every AWS call goes to the account's front door, and no IMDS.
            "AWS_ENDPOINT_URL": self.service.aws_endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        env.update(f.variables)
        return env

    def alive(self) -> bool:
        return self.process.poll() is None

    def invoke(self, payload: bytes) -> Invocation:
        deadline_ms = int(time.time() * 1000) + self.function.timeout * 1000
        inv = Invocation(payload, deadline_ms)
        self.current = inv
        self.events.put(inv)
        limit = time.monotonic() + self.function.timeout
        while not inv.done.wait(0.05):
            if self.init_error is not None:
                inv.error = self.init_error
                break
            if not self.alive():
                inv.error = {
                    "errorType": "Runtime.ExitError",
                    "errorMessage": f"RequestId: {inv.request_id} Error: Runtime exited with status {self.process.returncode} (log: {self.log_path})",
                }
                break
            if time.monotonic() > limit:
                self.stop()
                inv.error = {
                    "errorType": "Sandbox.Timedout",
                    "errorMessage": f"RequestId: {inv.request_id} Error: Task timed out after {self.function.timeout:.2f} seconds",
                }
                break
        self.current = None
        return inv

    def stop(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait()
        self.events.put(None)
        self.server.shutdown()
        self.server.server_close()


def _runtime_handler(sandbox: Sandbox) -> type[BaseHTTPRequestHandler]:
    class RuntimeApi(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes (see account.py)

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the sandbox was stopped while polling
                self.close_connection = True

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:
            if self.path != RUNTIME_PREFIX + "invocation/next":
                return self._answer(404)
            inv = sandbox.events.get()
            if inv is None:
                return self._answer(410)
            self._answer(
                200,
                inv.payload,
                {
                    "Lambda-Runtime-Aws-Request-Id": inv.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": sandbox.function.arn,
                    "Lambda-Runtime-Trace-Id": "Root=1-00000000-000000000000000000000000;Sampled=0",
                },
            )

        def do_POST(self) -> None:
            body = self._body()
            rest = self.path[len(RUNTIME_PREFIX):] if self.path.startswith(RUNTIME_PREFIX) else ""
            if rest == "init/error":
                sandbox.init_error = _json_or_text(body)
                return self._answer(202)
            parts = rest.split("/")
            if len(parts) == 3 and parts[0] == "invocation":
                inv = sandbox.current
                if inv is None or inv.request_id != parts[1]:
                    return self._answer(400, b'{"errorType":"InvalidRequestID"}')
                if parts[2] == "response":
                    inv.result = body
                elif parts[2] == "error":
                    inv.error = _json_or_text(body)
                else:
                    return self._answer(404)
                self._answer(202)
                inv.done.set()
                return
            self._answer(404)

    return RuntimeApi


def _json_or_text(body: bytes) -> dict[str, Any]:
    try:
        v = json.loads(body or b"{}")
        return v if isinstance(v, dict) else {"errorType": "Runtime.Unknown", "errorMessage": str(v)}
    except ValueError:
        return {"errorType": "Runtime.Unknown", "errorMessage": body.decode(errors="replace")}


def connection_targets(payload: Any) -> list[tuple[str, str | None]]:
    """Where a build's steps would connect: (setting, host) for the communicator and the
    bastion. `None` as host means the instance's own address (no `ssh_host`)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("build"), dict):
        return []
    config = payload["build"].get("config")
    if not isinstance(config, dict) or len(config) != 1:
        return []
    (builder_type, cfg), = config.items()
    if builder_type == "amazon-chroot" or not isinstance(cfg, dict):
        return []
    communicator = cfg.get("communicator", "ssh")
    targets: list[tuple[str, str | None]] = []
    if communicator == "ssh":
        targets.append(("ssh_host", cfg.get("ssh_host") or None))
    elif communicator == "winrm":
        targets.append(("winrm_host", cfg.get("winrm_host") or None))
    if cfg.get("ssh_bastion_host"):
        targets.append(("ssh_bastion_host", cfg["ssh_bastion_host"]))
    return targets


def refused_target(payload: Any) -> str | None:
    for setting, host in connection_targets(payload):
        if host is None:
            return f"{setting} is not set, so the build would connect to the address moto gave the instance"
        if host not in LOCAL_HOSTS:
            return f"{setting} {host!r} is not this machine"
    return None


class LambdaService:
    def __init__(
        self,
        region: str,
        bootstrap: str,
        aws_endpoint: str,
        work_dir: str,
        functions: list[Function],
        callers: Callable[[str], tuple[str, list[dict[str, Any]]] | None],
    ):
        self.region = region
        self.bootstrap = bootstrap
        self.aws_endpoint = aws_endpoint
        self.log_dir = os.path.join(work_dir, "lambda-logs")
        self.task_root = os.path.join(work_dir, "task")
        os.makedirs(self.log_dir, exist_ok=True)
        os.makedirs(self.task_root, exist_ok=True)
        self.functions = {f.name: f for f in functions}
        self.by_arn = {f.arn: f for f in functions}
        self.callers = callers
        self.spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-spawner")
        self.lock = threading.Lock()
        self.idle: dict[str, list[Sandbox]] = {}
        self.all: list[Sandbox] = []
        self.invocations: dict[str, int] = {}
        self.cold_starts = 0
        self.refused: list[dict[str, str]] = []
        self.denied: list[dict[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _invoke_handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def find(self, function: str) -> Function | None:
        name = urllib.parse.unquote(function)
        if name.startswith("arn:"):
            return self.by_arn.get(policy.unqualified(name))
        return self.functions.get(name)

    def stats(self, reset: bool) -> dict[str, Any]:
        with self.lock:
            out = {
                "invocations": dict(sorted(self.invocations.items())),
                "cold_starts": self.cold_starts,
                "sandboxes": len(self.all),
                "refused": list(self.refused),
                "denied": list(self.denied),
            }
            if reset:
                self.invocations.clear()
                self.cold_starts = 0
                self.refused.clear()
                self.denied.clear()
        return out

    def invoke(self, function: Function, payload: bytes) -> tuple[bytes, bool]:
        """Runs one invocation; returns (body, function_error)."""
        try:
            decoded = json.loads(payload or b"null")
        except ValueError:
            decoded = None
        why = refused_target(decoded)
        with self.lock:
            self.invocations[function.logical] = self.invocations.get(function.logical, 0) + 1
            if why:
                self.refused.append({"function": function.logical, "why": why})
        if why:
            return json.dumps({"errorType": "SimulatedAccount.RefusedTarget", "errorMessage": f"the simulated account refuses to run {function.logical}: {why}; set ssh_host to 127.0.0.1 (the test's sshd)"}).encode(), True
        with self.lock:
            pool = self.idle.setdefault(function.name, [])
            sandbox = pool.pop() if pool else None
            if sandbox is None:
                self.cold_starts += 1
                sandbox = Sandbox(self, function, len(self.all))
                self.all.append(sandbox)
        inv = sandbox.invoke(payload or b"null")
        with self.lock:
            if sandbox.alive() and sandbox.init_error is None:
                self.idle[function.name].append(sandbox)
        if inv.error is not None:
            return json.dumps(inv.error).encode(), True
        return inv.result or b"null", False

    def authorize(self, authorization: str, function: Function, invoked: str) -> str | None:
        """The caller's role must allow lambda:InvokeFunction on the ARN invoked (the
        function's, or one of its aliases')."""
        key = authorization.partition("Credential=")[2].partition("/")[0]
        caller = self.callers(key)
        if caller is None:
            return f"the access key {key or '(none)'} belongs to no principal of this account"
        principal, documents = caller
        if policy.allowed(documents, "lambda:InvokeFunction", invoked):
            return None
        with self.lock:
            self.denied.append({"function": principal, "action": "lambda:InvokeFunction", "resource": invoked})
        return f"User: {principal} is not authorized to perform: lambda:InvokeFunction on resource: {invoked}"

    def shutdown(self) -> None:
        self.server.shutdown()
        for s in self.all:
            s.stop()


def _invoke_handler(service: LambdaService) -> type[BaseHTTPRequestHandler]:
    class InvokeApi(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes (see account.py)

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Amzn-RequestId", str(uuid.uuid4()))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, kind: str, message: str) -> None:
            self._answer(status, json.dumps({"Type": "User", "message": message}).encode(), {"X-Amzn-ErrorType": kind})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?", 1)[0]
            if not (path.startswith(INVOKE_PREFIX) and path.endswith(INVOKE_SUFFIX)):
                return self._error(404, "UnknownOperationException", f"only POST {INVOKE_PREFIX}{{function}}{INVOKE_SUFFIX} is served")
            name = path[len(INVOKE_PREFIX):-len(INVOKE_SUFFIX)]
            function = service.find(name)
            if function is None:
                return self._error(404, "ResourceNotFoundException", f"Function not found: {urllib.parse.unquote(name)}")
            # IAM decides on the ARN as invoked: an alias's (`function:NAME:live`) is its own
            # resource, which a policy on the bare function does not cover, nor the reverse.
            invoked = urllib.parse.unquote(name)
            qualifier = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("Qualifier", [None])[0]
            if not invoked.startswith("arn:"):
                invoked = function.arn + (f":{qualifier}" if qualifier else "")
            denied = service.authorize(self.headers.get("Authorization", ""), function, invoked)
            if denied:
                return self._error(403, "AccessDeniedException", denied)
            if self.headers.get("X-Amz-Invocation-Type") == "Event":
                threading.Thread(target=service.invoke, args=(function, body), daemon=True).start()
                return self._answer(202, b"")
            result, failed = service.invoke(function, body)
            headers = {"X-Amz-Executed-Version": "$LATEST"}
            if failed:
                headers["X-Amz-Function-Error"] = "Unhandled"
            self._answer(200, result, headers)

    return InvokeApi
