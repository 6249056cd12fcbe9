"""Step Functions' executions of the stack's state machine, as the account's Step Functions.

moto's Step Functions records an execution it is asked to start and runs nothing; it has no
RedriveExecution. Here each execution of the stack's state machine is run by
tests/als/run.mjs (aws-local-stepfunctions, with the definition moto stored and the state
machine role's credentials), and the front door answers StartExecution, DescribeExecution,
GetExecutionHistory, ListExecutions, StopExecution and RedriveExecution from it:

- the history is made from ALS's event log (run.mjs's AMIFLOW_EVENTS_FILE) in Step Functions'
  own shapes: `<Type>StateEntered`/`Exited`, LambdaFunctionScheduled/Started/Succeeded/
  Failed for a Lambda task (one Scheduled per attempt), TaskScheduled/Started/Submitted (its
  function returned)/Succeeded/Failed for a callback task, each chained by previousEventId
  within its Map iteration as Step Functions chains them, MapIterationStarted/Succeeded/Failed, Execution{Started,Succeeded,Failed,
  Aborted,TimedOut,Redriven}; `includeExecutionData: false` leaves out inputs and outputs;
  `reverseOrder`, `maxResults` and `nextToken` page it;
- StopExecution sends the run SIGTERM: ALS aborts it (an invocation under way finishes, as a
  Lambda invocation does when its execution is stopped);
- RedriveExecution (FAILED, ABORTED or TIMED_OUT, once the run has ended) runs the definition
  again with the results of every earlier run (run.mjs's AMIFLOW_REPLAY_FILE): a task whose
  state and input succeeded before is answered with its result, not invoked, so the run
  resumes at the step that failed with the input it had. Its history continues the
  execution's: ExecutionRedriven, then only the states that were not replayed;
- each end sends EventBridge's "Step Functions Execution Status Change" event to the rules
  of the state machine's region (the janitor's), as Step Functions does.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from typing import Any, Callable

REDRIVABLE = ("FAILED", "ABORTED", "TIMED_OUT")
HOSTED_ACTIONS = (
    "states:StartExecution",
    "states:DescribeExecution",
    "states:GetExecutionHistory",
    "states:ListExecutions",
    "states:StopExecution",
    "states:RedriveExecution",
)
CALLBACK_RESOURCE = "arn:aws:states:::lambda:invoke.waitForTaskToken"


class Failure(Exception):
    """A Step Functions error answer: HTTP 400 with {"__type", "message"}."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Run:
    """One run.mjs process: the execution's first run or one of its redrives."""

    def __init__(self, directory: str):
        self.directory = directory
        self.events_path = os.path.join(directory, "events.jsonl")
        self.results_path = os.path.join(directory, "results.jsonl")
        self.process: subprocess.Popen[bytes] | None = None
        self.record: dict[str, Any] | None = None
        self.ended = threading.Event()

    def lines(self) -> list[dict[str, Any]]:
        """The events so far (a line still being written is left for the next read)."""
        try:
            with open(self.events_path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return []
        out = []
        for line in text.split("\n")[:-1]:
            out.append(json.loads(line))
        return out


class Execution:
    def __init__(self, arn: str, name: str, machine_arn: str, input_text: str):
        self.arn = arn
        self.name = name
        self.machine_arn = machine_arn
        self.input = input_text
        self.start = time.time()
        self.stop: float | None = None
        self.status = "RUNNING"
        self.output: str | None = None
        self.error: str | None = None
        self.cause: str | None = None
        self.runs: list[Run] = []
        self.redrive_dates: list[float] = []
        self.stop_requested = False
        # Each GetExecutionHistory page served: {"of", "returned", "reverse", "data", "page"}.
        self.history_reads: list[dict[str, Any]] = []

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "executionArn": self.arn,
            "stateMachineArn": self.machine_arn,
            "name": self.name,
            "status": self.status,
            "startDate": self.start,
            "input": self.input,
            "inputDetails": {"included": True},
            "redriveCount": len(self.redrive_dates),
        }
        if self.stop is not None:
            out["stopDate"] = self.stop
        if self.output is not None:
            out["output"] = self.output
            out["outputDetails"] = {"included": True}
        if self.error is not None:
            out["error"] = self.error
        if self.cause is not None:
            out["cause"] = self.cause
        if self.redrive_dates:
            out["redriveDate"] = self.redrive_dates[-1]
        if self.status in REDRIVABLE:
            out["redriveStatus"] = "REDRIVABLE"
        elif self.status == "RUNNING":
            out["redriveStatus"] = "NOT_REDRIVABLE"
            out["redriveStatusReason"] = "Execution is RUNNING and cannot be redriven"
        return out


class Executions:
    def __init__(
        self,
        machine_arn: str,
        definition_path: str,
        work_dir: str,
        runner: dict[str, str],
        env: dict[str, str],
        region: str,
        account_id: str,
        role_arn: str,
    ):
        self.machine_arn = machine_arn
        self.role_arn = role_arn
        self.definition_path = definition_path
        with open(definition_path, encoding="utf-8") as f:
            self.states = _states(json.load(f))
        self.work_dir = work_dir
        self.runner = runner  # {"node", "modules", "script"}
        self.env = env  # run.mjs's environment: Lambda endpoint, the role's keys, callback URL
        self.region = region
        self.account_id = account_id
        self.lock = threading.Lock()
        self.executions: dict[str, Execution] = {}
        # EventBridge: set by the account once its rules can be delivered to.
        self.deliver: Callable[[dict[str, Any]], Any] | None = None
        self.deliveries: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ the API

    def answer(self, action: str, request: dict[str, Any]) -> dict[str, Any]:
        name = action.partition(":")[2]
        if name == "StartExecution":
            return self.start_execution(request)
        if name == "ListExecutions":
            return self.list_executions(request)
        execution = self.find(request.get("executionArn", ""))
        if name == "DescribeExecution":
            with self.lock:
                return execution.describe()
        if name == "GetExecutionHistory":
            return self.history_page(execution, request)
        if name == "StopExecution":
            return self.stop_execution(execution, request)
        if name == "RedriveExecution":
            return self.redrive_execution(execution)
        raise Failure("UnknownOperationException", f"{action} is not hosted")

    def arn_of(self, name: str) -> str:
        """The ARN of the state machine's execution `name`."""
        return f"{self.machine_arn.replace(':stateMachine:', ':execution:')}:{name}"

    def find(self, arn: str) -> Execution:
        with self.lock:
            found = self.executions.get(arn)
        if found is None:
            raise Failure("ExecutionDoesNotExist", f"Execution Does Not Exist: '{arn}'")
        return found

    def start_execution(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request.get("name") or str(uuid.uuid4())
        input_text = request.get("input") or "{}"
        try:
            json.loads(input_text)
        except ValueError as e:
            raise Failure("InvalidExecutionInput", f"Invalid State Machine Execution Input: '{e}'") from e
        arn = self.arn_of(name)
        with self.lock:
            existing = self.executions.get(arn)
            if existing is not None:
                if existing.status == "RUNNING" and existing.input == input_text:
                    return {"executionArn": arn, "startDate": existing.start}
                raise Failure("ExecutionAlreadyExists", f"Execution Already Exists: '{arn}'")
            execution = Execution(arn, name, self.machine_arn, input_text)
            self.executions[arn] = execution
            run = self.new_run(execution)
        self.launch(execution, run)
        return {"executionArn": arn, "startDate": execution.start}

    def list_executions(self, request: dict[str, Any]) -> dict[str, Any]:
        wanted = request.get("statusFilter")
        with self.lock:
            listed = [e.describe() for e in self.executions.values() if request.get("stateMachineArn") in (None, e.machine_arn) and wanted in (None, e.status)]
        keys = ("executionArn", "stateMachineArn", "name", "status", "startDate", "stopDate", "redriveCount", "redriveDate")
        return {"executions": [{k: e[k] for k in keys if k in e} for e in sorted(listed, key=lambda e: -e["startDate"])]}

    def stop_execution(self, execution: Execution, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if execution.status != "RUNNING":
                raise Failure("ValidationException", f"Execution {execution.arn} is {execution.status}: only a RUNNING execution can be stopped")
            execution.stop_requested = True
            execution.error = request.get("error")
            execution.cause = request.get("cause")
            process = execution.runs[-1].process
            # Not yet begun: launch sees the request and stops it.
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        execution.runs[-1].ended.wait(60)
        with self.lock:
            return {"stopDate": execution.stop or time.time()}

    def redrive_execution(self, execution: Execution) -> dict[str, Any]:
        with self.lock:
            if execution.status not in REDRIVABLE or not execution.runs[-1].ended.is_set():
                raise Failure("ExecutionNotRedrivable", f"Execution {execution.arn} is {execution.status}: only a FAILED, ABORTED or TIMED_OUT execution can be redriven")
            execution.status = "RUNNING"
            execution.stop = None
            execution.output = execution.error = execution.cause = None
            execution.stop_requested = False
            execution.redrive_dates.append(time.time())
            run = self.new_run(execution)
        self.launch(execution, run)
        with self.lock:
            return {"redriveDate": execution.redrive_dates[-1]}

    # ------------------------------------------------------------------ runs

    def new_run(self, execution: Execution) -> Run:
        """The execution's next run, registered with it (under the lock, with the status that
        made it: a stop or a describe never sees a RUNNING execution without its run)."""
        run = Run(os.path.join(self.work_dir, "executions", execution.name, f"run-{len(execution.runs)}"))
        execution.runs.append(run)
        return run

    def launch(self, execution: Execution, run: Run) -> None:
        directory = run.directory
        os.makedirs(directory, exist_ok=True)
        input_path = os.path.join(directory, "input.json")
        with open(input_path, "w", encoding="utf-8") as f:
            f.write(execution.input)
        replay_path = os.path.join(directory, "replay.jsonl")
        with open(replay_path, "w", encoding="utf-8") as out:
            for earlier in execution.runs[:-1]:
                if os.path.exists(earlier.results_path):
                    with open(earlier.results_path, encoding="utf-8") as f:
                        out.write(f.read())
        env = {
            **self.env,
            "AMIFLOW_NODE_MODULES": self.runner["modules"],
            "AMIFLOW_STATE_MACHINE_ARN": self.machine_arn,
            "AMIFLOW_EVENTS_FILE": run.events_path,
            "AMIFLOW_RESULTS_FILE": run.results_path,
            "AMIFLOW_REPLAY_FILE": replay_path,
        }
        stderr = open(os.path.join(directory, "run.log"), "wb")
        with self.lock:
            run.process = subprocess.Popen(
                [self.runner["node"], self.runner["script"], self.definition_path, input_path, execution.name],
                env=env,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
            if execution.stop_requested:  # stopped before it began
                run.process.send_signal(signal.SIGTERM)
        threading.Thread(target=self.follow, args=(execution, run, stderr), daemon=True).start()

    def follow(self, execution: Execution, run: Run, stderr: Any) -> None:
        assert run.process is not None
        out, _ = run.process.communicate()
        stderr.close()
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            record = json.loads(lines[-1]) if lines else None
        except ValueError:
            record = None
        with self.lock:
            run.record = record
            execution.stop = time.time()
            if execution.stop_requested or (record or {}).get("aborted"):
                execution.status = "ABORTED"
            elif record is None:
                execution.status = "FAILED"
                execution.error = "States.Runtime"
                execution.cause = f"the run ended without a record (exit {run.process.returncode}; see {run.directory}/run.log)"
            elif record.get("error"):
                error = record["error"]
                execution.status = "TIMED_OUT" if error.get("Error") == "ExecutionTimeoutError" else "FAILED"
                execution.error = error.get("Error")
                execution.cause = error.get("Cause")
            else:
                execution.status = "SUCCEEDED"
                execution.output = json.dumps(record.get("output"))
            event = self.status_change_event(execution)
        # The status change reaches the rules before the run counts as ended (a test reading
        # the execution then sees the janitor's answer too).
        if self.deliver is not None:
            delivered = self.deliver(event)
            with self.lock:
                self.deliveries.append({"execution": execution.name, "status": event["detail"]["status"], **delivered})
        run.ended.set()

    def status_change_event(self, execution: Execution) -> dict[str, Any]:
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Step Functions Execution Status Change",
            "source": "aws.states",
            "account": self.account_id,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "region": self.region,
            "resources": [execution.arn],
            "detail": {
                "executionArn": execution.arn,
                "stateMachineArn": execution.machine_arn,
                "name": execution.name,
                "status": execution.status,
                "startDate": int(execution.start * 1000),
                "stopDate": int((execution.stop or time.time()) * 1000),
                "input": execution.input,
                "inputDetails": {"included": True},
                "output": execution.output,
                "outputDetails": {"included": True},
            },
        }

    def state_of(self, name: str) -> dict[str, Any]:
        """For the test: the execution by name, with its last run's record."""
        execution = self.find(self.arn_of(name))
        with self.lock:
            out = execution.describe()
            out["runs"] = len(execution.runs)
            out["ended"] = execution.runs[-1].ended.is_set()
            out["record"] = execution.runs[-1].record if out["ended"] else None
            out["deliveries"] = [d for d in self.deliveries if d["execution"] == name]
            out["history_reads"] = list(execution.history_reads)
        return out

    # ------------------------------------------------------------------ history

    def history(self, execution: Execution) -> list[dict[str, Any]]:
        """The execution's history so far, in Step Functions' shapes, oldest first."""
        events: list[dict[str, Any]] = []
        with self.lock:
            runs = list(execution.runs)
            redrives = list(execution.redrive_dates)
        done: dict[tuple[str, Any, str], int] = {}
        for number, run in enumerate(runs):
            lines = run.lines()
            if number > 0:
                events.append({"timestamp": redrives[number - 1], "type": "ExecutionRedriven", "executionRedrivenEventDetails": {"redriveCount": number}})
            events.extend(self.convert(lines, done if number > 0 else None, execution))
            for key, n in _completed(lines).items():
                done[key] = done.get(key, 0) + n
        # Each event follows the one before it in its own lane (the top level, or one Map
        # iteration), as Step Functions chains them: a Lambda attempt's events chain to its
        # state's entry, a retry to the failure before it, in parallel iterations too.
        last: dict[Any, int] = {}
        for i, event in enumerate(events, start=1):
            lane = event.pop("_lane", None)
            event["id"] = i
            event["previousEventId"] = last.get(lane, i - 1 if lane is None else last.get(None, 0))
            last[lane] = i
        return events

    def convert(self, lines: list[dict[str, Any]], done: dict[tuple[str, Any, str], int] | None, execution: Execution) -> list[dict[str, Any]]:
        """ALS's events of one run as Step Functions' history events. `done`: the states that
        completed in the earlier runs (a redrive replays those: they are left out)."""
        out: list[dict[str, Any]] = []
        remaining = dict(done or {})
        replaying: set[tuple[str, Any]] = set()
        caught: set[tuple[str, Any]] = set()
        shown_iterations: set[Any] = set()
        for line in lines:
            t = (line.get("t") or 0) / 1000
            kind = line["type"]
            state = line.get("state")
            index = line.get("index")
            definition = self.states.get(state or "", {})
            resource = definition.get("Resource", "")
            callback = resource.startswith(CALLBACK_RESOURCE)
            lambda_task = definition.get("Type") == "Task" and not callback
            error = line.get("error") or {}

            def add(kind: str, details_key: str | None = None, details: dict[str, Any] | None = None) -> None:
                event: dict[str, Any] = {"timestamp": t, "type": kind, "_lane": index}
                if details_key:
                    event[details_key] = details or {}
                out.append(event)

            def scheduled() -> None:
                if callback:
                    add("TaskScheduled", "taskScheduledEventDetails", {"resourceType": "lambda", "resource": "invoke.waitForTaskToken", "region": self.region, "parameters": json.dumps(definition.get("Parameters", {}))})
                    add("TaskStarted", "taskStartedEventDetails", {"resourceType": "lambda", "resource": "invoke.waitForTaskToken"})
                elif lambda_task:
                    add("LambdaFunctionScheduled", "lambdaFunctionScheduledEventDetails", {"resource": resource, "input": json.dumps(line.get("input"))})
                    add("LambdaFunctionStarted")

            if kind == "ExecutionStarted":
                if done is None:
                    add("ExecutionStarted", "executionStartedEventDetails", {"input": execution.input, "inputDetails": {"truncated": False}, "roleArn": self.role_arn})
            elif kind == "StateEntered":
                key = (state, index, json.dumps(line.get("input"), sort_keys=True))
                if remaining.get(key):
                    remaining[key] -= 1
                    replaying.add((state, index))
                    continue
                if index is not None:
                    shown_iterations.add(index)
                add(f"{line.get('stateType')}StateEntered", "stateEnteredEventDetails", {"name": state, "input": json.dumps(line.get("input")), "inputDetails": {"truncated": False}})
                scheduled()
            elif (state, index) in replaying:
                if kind == "StateExited":
                    replaying.discard((state, index))
            elif kind == "TaskSubmitted":
                if callback:
                    add("TaskSubmitted", "taskSubmittedEventDetails", {"resourceType": "lambda", "resource": "invoke.waitForTaskToken"})
            elif kind == "StateFailed":
                details = {"error": error.get("Error"), "cause": error.get("Cause")}
                if callback:
                    add("TaskFailed", "taskFailedEventDetails", {"resourceType": "lambda", "resource": "invoke.waitForTaskToken", **details})
                elif lambda_task:
                    add("LambdaFunctionFailed", "lambdaFunctionFailedEventDetails", details)
                elif line.get("stateType") == "Map":
                    add("MapStateFailed")
            elif kind == "StateRetried":
                scheduled()
            elif kind == "StateCaught":
                caught.add((state, index))
            elif kind == "StateExited":
                output = json.dumps(line.get("output"))
                if (state, index) in caught:
                    # Left by its Catch: the task failed (above); only the state is exited.
                    caught.discard((state, index))
                elif callback:
                    add("TaskSucceeded", "taskSucceededEventDetails", {"resourceType": "lambda", "resource": "invoke.waitForTaskToken", "output": output})
                elif lambda_task:
                    add("LambdaFunctionSucceeded", "lambdaFunctionSucceededEventDetails", {"output": output})
                add(f"{line.get('stateType')}StateExited", "stateExitedEventDetails", {"name": state, "output": output, "outputDetails": {"truncated": False}})
            elif kind in ("MapIterationStarted", "MapIterationSucceeded", "MapIterationFailed"):
                if done is not None and (kind == "MapIterationStarted" or index not in shown_iterations):
                    continue
                add(kind, f"m{kind[1:]}EventDetails", {"name": line.get("parent") or state, "index": index})
            elif kind == "ExecutionSucceeded":
                add("ExecutionSucceeded", "executionSucceededEventDetails", {"output": json.dumps(line.get("output")), "outputDetails": {"truncated": False}})
            elif kind == "ExecutionFailed":
                add("ExecutionFailed", "executionFailedEventDetails", {"error": error.get("Error"), "cause": error.get("Cause")})
            elif kind == "ExecutionAborted":
                add("ExecutionAborted", "executionAbortedEventDetails", {"error": execution.error, "cause": execution.cause} if execution.error else {})
            elif kind == "ExecutionTimeout":
                add("ExecutionTimedOut", "executionTimedOutEventDetails", {})
        return out

    def history_page(self, execution: Execution, request: dict[str, Any]) -> dict[str, Any]:
        events = self.history(execution)

        if request.get("reverseOrder"):
            events.reverse()
        start = int(request.get("nextToken") or 0)
        size = int(request.get("maxResults") or 100) or 100
        page = events[start:start + size]
        if request.get("includeExecutionData") is False:
            page = [_without_data(e) for e in page]
        with self.lock:
            execution.history_reads.append({
                "of": len(events),
                "returned": len(page),
                "reverse": bool(request.get("reverseOrder")),
                "data": request.get("includeExecutionData") is not False,
                "page": start > 0,
            })
        answer: dict[str, Any] = {"events": page}
        if start + size < len(events):
            answer["nextToken"] = str(start + size)
        return answer


def _states(machine: dict[str, Any], out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every state of the definition by name, nested Map and Parallel states included."""
    out = {} if out is None else out
    for name, state in machine.get("States", {}).items():
        out[name] = state
        for sub in [state.get("Iterator"), state.get("ItemProcessor"), *state.get("Branches", [])]:
            if sub:
                _states(sub, out)
    return out


def _completed(lines: list[dict[str, Any]]) -> dict[tuple[str, Any, str], int]:
    """(state, iteration, input) of each state a run entered and left without failing."""
    entered: dict[tuple[str, Any], list[str]] = {}
    out: dict[tuple[str, Any, str], int] = {}
    for line in lines:
        where = (line.get("state"), line.get("index"))
        if line["type"] == "StateEntered":
            entered.setdefault(where, []).append(json.dumps(line.get("input"), sort_keys=True))
        elif line["type"] == "StateCaught" and entered.get(where):
            # Failed into its Catch: a redrive runs it again (run.mjs replays successes only).
            entered[where].pop()
        elif line["type"] == "StateExited" and entered.get(where):
            key = (where[0], where[1], entered[where].pop())
            out[key] = out.get(key, 0) + 1
    return out


def _without_data(event: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in event.items():
        if isinstance(v, dict):
            v = {dk: dv for dk, dv in v.items() if dk not in ("input", "output", "inputDetails", "outputDetails")}
        out[k] = v
    return out
