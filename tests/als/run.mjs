// Runs an ASL definition with aws-local-stepfunctions and prints one JSON record of what
// happened, for comparison with amiflow's local engine (tests/e2e/engines.rs).
//
//   node run.mjs <definition.json> <input.json> [execution-name]
//
// The state machine is AMIFLOW_STATE_MACHINE_ARN (default
// arn:aws:states:us-east-1:123456789012:stateMachine:amiflow): `$$.StateMachine` and the
// execution's ARN name it, as Step Functions' would.
//
// Task states call Lambda through the AWS SDK, so AWS_ENDPOINT_URL_LAMBDA must point at
// `amiflow serve-lambdas` (or the tests' scripted server): its endpoint line, token path
// included. `${XFunctionArn}` substitutions
// become arn:aws:lambda:us-east-1:123456789012:function:X. Every Wait state and every
// Retry interval is overridden to 0 ms: the comparison is about the path, not the clock.
//
// Callback tasks (Resource arn:aws:states:::lambda:invoke.waitForTaskToken, at any depth),
// which ALS does not run, are run here through its `taskResourceLocalHandlers`: each attempt
// gets a token of its own (`$$.Task.Token`), the function named by FunctionName is invoked
// with the Payload through the same Lambda endpoint and credentials as ALS's own Tasks (a
// function error is raised as ALS raises it for a Lambda Task), and then
// - without AMIFLOW_CALLBACK_URL, the function's returned payload is the state's result (as
//   amiflow's local engine runs its own callback tasks);
// - with it, the state waits for the token's answer, polled at
//   `${AMIFLOW_CALLBACK_URL}/<urlencoded token>` (404 until answered, then {"output": JSON
//   text} or {"error", "cause"}): success → the parsed output is the result; failure → that
//   error and cause; nothing within TimeoutSeconds (or the number at TimeoutSecondsPath in
//   the state's input), times AMIFLOW_CALLBACK_TIMEOUT_SCALE (default 1) → States.Timeout,
//   the very error ALS raises for a Task's timeout (so States.TaskFailed does not match it).
//
// Output: {"path": [{"state", "type", "index", "t"}...], "retries": [{"state", "index", "attempt", "t"}],
//          "caught": [{"state", "index", "next", "t"}], "output": ..., "error": {"Error", "Cause"} | null,
//          "history": [{"state", "event", "data", "t"}]: every state's input and output, as the execution's history keeps them,
//          "callbacks": [{"state", "index", "token", "answered": "success"|"failure"|"timeout"|"returned"|"error",
//                         "waited_ms", "started_at", "invoked_ms", "answered_at", "error"?}]: each callback
//                         task's attempt (`invoked_ms`: how long the function's Invoke took)}
// `index` is the Map iteration the event belongs to (null at the top level); `t`,
// `started_at` and `answered_at` are epoch milliseconds.
//
// Hosted (tests/simacct/executions.py runs the stack's executions with this script, as Step
// Functions would run them):
// - AMIFLOW_EVENTS_FILE: every event of ALS's log is appended there as one JSON line when it
//   happens ({"type", "state", "stateType", "index", "input", "output", "error", "t"}), which
//   the account turns into the execution's history while it runs;
// - AMIFLOW_RESULTS_FILE: every Lambda Task is then run through a local handler that invokes
//   the function as ALS would and appends each success ({"state", "input", "result"});
// - AMIFLOW_REPLAY_FILE: the results of the execution's earlier runs (a redrive): a Task
//   whose state and input match one of them is answered with that result and not invoked,
//   so that what succeeded is not run again and the run resumes at the step that failed, as
//   RedriveExecution does;
// - SIGTERM aborts the execution (StopExecution): the record then has "aborted": true.
import { randomBytes } from "node:crypto";
import { appendFileSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";

const [definitionPath, inputPath, executionName = "amiflow-test-execution"] = process.argv.slice(2);
if (!definitionPath || !inputPath) {
  console.error("usage: node run.mjs <definition.json> <input.json> [execution-name]");
  process.exit(2);
}
// The library is installed under $AMIFLOW_NODE_MODULES by scripts/setup.sh (not next to this file).
const modules = process.env.AMIFLOW_NODE_MODULES;
const require = createRequire(modules ? `${modules}/` : import.meta.url);
const { StateMachine } = await import(require.resolve("aws-local-stepfunctions"));

const text = readFileSync(definitionPath, "utf8").replace(
  /\$\{(\w+)FunctionArn\}/g,
  (_, name) => `arn:aws:lambda:us-east-1:123456789012:function:${name}`,
);
const definition = JSON.parse(text);
const input = JSON.parse(readFileSync(inputPath, "utf8"));
const stateMachineArn =
  process.env.AMIFLOW_STATE_MACHINE_ARN ?? "arn:aws:states:us-east-1:123456789012:stateMachine:amiflow";

const CALLBACK_RESOURCE = "arn:aws:states:::lambda:invoke.waitForTaskToken";
// What `$$.Task.Token` resolves to in Parameters; each attempt's handler puts its own token there.
const TOKEN_PLACEHOLDER = "amiflow-run-mjs-task-token";
// ALS's own timer for a callback task: longer than any wait here (setTimeout's limit is 2^31 ms).
const NO_TIMEOUT_SECONDS = 2_000_000;

// Names of every Wait and every retrying state, nested Map/Parallel included; each Lambda
// Task's function; each callback task's timeout, its Parameters wrapped so that the handler
// also gets the state's input (ALS hands it the Parameters' result only), and its ALS timer
// set aside.
const waitStates = {};
const retryStates = {};
const lambdaStates = {};
const callbackStates = {};
function visit(machine) {
  for (const [name, state] of Object.entries(machine.States ?? {})) {
    if (state.Type === "Wait") waitStates[name] = 0;
    if (state.Retry) retryStates[name] = 0;
    if (state.Type === "Task" && typeof state.Resource === "string" && state.Resource.startsWith("arn:aws:lambda:")) {
      lambdaStates[name] = state.Resource;
    }
    if (state.Type === "Task" && typeof state.Resource === "string" && state.Resource.startsWith(CALLBACK_RESOURCE)) {
      callbackStates[name] = { seconds: state.TimeoutSeconds ?? null, path: state.TimeoutSecondsPath ?? null };
      state.Parameters = { "input.$": "$", parameters: state.Parameters ?? {} };
      delete state.TimeoutSecondsPath;
      state.TimeoutSeconds = NO_TIMEOUT_SECONDS;
    }
    if (state.Iterator) visit(state.Iterator);
    if (state.ItemProcessor) visit(state.ItemProcessor);
    for (const branch of state.Branches ?? []) visit(branch);
  }
}
visit(definition);

const record = { path: [], retries: [], caught: [], output: null, error: null, history: [], callbacks: [] };
const region = process.env.AWS_REGION ?? "us-east-1";
// The caller's credentials (a simulated account checks the role that invokes); fake ones otherwise.
const accessKeys = {
  accessKeyId: process.env.AWS_ACCESS_KEY_ID ?? "testing",
  secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY ?? "testing",
  sessionToken: process.env.AWS_SESSION_TOKEN,
};

// ALS's States.Timeout error class (not exported): taken from a one-state machine whose Task
// times out at once. Raised as that class, the timeout is matched as ALS matches its own.
async function statesTimeoutError() {
  const probe = new StateMachine(
    { StartAt: "T", States: { T: { Type: "Task", Resource: "arn:aws:lambda:us-east-1:123456789012:function:probe", TimeoutSeconds: 0.001, End: true } } },
    { validationOptions: { noValidate: true } },
  );
  try {
    await probe.run({}, { overrides: { taskResourceLocalHandlers: { T: () => new Promise(() => {}) } } }).result;
  } catch (e) {
    const cause = e.cause ?? e;
    if (cause.name === "States.Timeout") return cause.constructor;
  }
  throw new Error("run.mjs: could not obtain ALS's States.Timeout error");
}
const StatesTimeoutError = Object.keys(callbackStates).length ? await statesTimeoutError() : null;

const callbackUrl = process.env.AMIFLOW_CALLBACK_URL?.replace(/\/+$/, "");
const timeoutScale = Number(process.env.AMIFLOW_CALLBACK_TIMEOUT_SCALE ?? "1");
let lambdaClient = null;

function withToken(value, token) {
  if (value === TOKEN_PLACEHOLDER) return token;
  if (Array.isArray(value)) return value.map((v) => withToken(v, token));
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, withToken(v, token)]));
  return value;
}

function newToken() {
  // Opaque, long and with characters a URL must escape, as Step Functions' tokens are.
  return "AQ" + randomBytes(96).toString("base64");
}

// Invokes the function as ALS invokes a Task's (its LambdaClient: same SDK, endpoint and
// credentials, same error for a function error).
async function invoke(functionName, payload) {
  if (!lambdaClient) {
    const sdk = await import(require.resolve("@aws-sdk/client-lambda", { paths: [require.resolve("aws-local-stepfunctions")] }));
    lambdaClient = { client: new sdk.LambdaClient({ region, credentials: accessKeys }), InvokeCommand: sdk.InvokeCommand };
  }
  const { client, InvokeCommand } = lambdaClient;
  const out = await client.send(
    new InvokeCommand({ FunctionName: functionName, Payload: new TextEncoder().encode(JSON.stringify(payload)) }),
  );
  const value = out.Payload && out.Payload.length ? JSON.parse(new TextDecoder().decode(out.Payload)) : null;
  if (out.FunctionError) {
    const error = new Error(`${value?.errorType}: ${value?.errorMessage}`, { cause: value });
    error.name = value?.errorType;
    throw error;
  }
  return value;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The token's answer, once there; null once `cancelled.done`.
async function answerOf(token, cancelled) {
  const url = `${callbackUrl}/${encodeURIComponent(token)}`;
  while (!cancelled.done) {
    const response = await fetch(url);
    if (response.status === 200) return await response.json();
    await response.arrayBuffer();
    if (response.status !== 404) throw new Error(`run.mjs: ${url} answered HTTP ${response.status}`);
    await sleep(20);
  }
  return null;
}

function timeoutMs(state, input) {
  const timeout = callbackStates[state];
  let seconds = timeout.seconds;
  if (timeout.path) {
    seconds = timeout.path.slice(2).split(".").reduce((v, key) => (v == null ? undefined : v[key]), input);
    if (typeof seconds !== "number") throw new Error(`run.mjs: ${state}'s TimeoutSecondsPath ${timeout.path} names no number`);
  }
  return seconds == null ? null : seconds * 1000 * timeoutScale;
}

function callbackHandler(state) {
  return async ({ input, parameters }) => {
    // A redrive answers a callback task that succeeded before with its result, as a Task's.
    const replayKey = `${state}\u0000${JSON.stringify(input)}`;
    if (replay.get(replayKey)?.length) {
      record.replayed.push(state);
      return replay.get(replayKey).shift();
    }
    const ms = timeoutMs(state, input);
    const token = newToken();
    const entry = { state, index: null, token, answered: null, waited_ms: null, started_at: Date.now(), invoked_ms: null, answered_at: null };
    record.callbacks.push(entry);
    Object.defineProperty(entry, "input", { value: JSON.stringify(input), enumerable: false });
    const cancelled = { done: false };
    const settle = (answered, error) => {
      cancelled.done = true;
      entry.answered = answered;
      entry.answered_at = Date.now();
      entry.waited_ms = entry.answered_at - entry.started_at;
      if (error) entry.error = { Error: error.name, Cause: error.message };
    };
    const attempt = (async () => {
      const params = withToken(parameters, token);
      const returned = await invoke(params.FunctionName, "Payload" in params ? params.Payload : input);
      entry.invoked_ms = Date.now() - entry.started_at;
      if (eventsFile) {
        // Step Functions' TaskSubmitted: the function returned, the token awaits its answer.
        const entered = entries.filter((e) => e.state === state && e.input === entry.input && e.t <= entry.started_at);
        const index = entered.length ? entered[entered.length - 1].index : null;
        appendFileSync(eventsFile, JSON.stringify({ type: "TaskSubmitted", state, stateType: "Task", index, t: Date.now() }) + "\n");
      }
      if (!callbackUrl) return { answered: "returned", result: returned };
      const answer = await answerOf(token, cancelled);
      if (answer === null) return null;
      if ("output" in answer) {
        const output = answer.output;
        return { answered: "success", result: typeof output === "string" ? JSON.parse(output) : output };
      }
      const error = new Error(answer.cause ?? "");
      error.name = answer.error ?? "";
      error.callbackFailure = true;
      throw error;
    })();
    let timer;
    const expired = new Promise((resolve) => {
      if (ms !== null) timer = setTimeout(() => resolve("timeout"), ms);
    });
    try {
      const outcome = await Promise.race([attempt, expired]);
      if (outcome === "timeout") {
        const error = new StatesTimeoutError();
        settle("timeout", error);
        throw error;
      }
      settle(outcome.answered);
      if (resultsFile) appendFileSync(resultsFile, JSON.stringify({ state, input: JSON.stringify(input), result: outcome.result }) + "\n");
      return outcome.result;
    } catch (e) {
      if (!cancelled.done) settle(e.callbackFailure ? "failure" : "error", e);
      throw e;
    } finally {
      clearTimeout(timer);
      attempt.catch(() => {});
    }
  };
}
const taskResourceLocalHandlers = Object.fromEntries(Object.keys(callbackStates).map((name) => [name, callbackHandler(name)]));

// Hosted: each Lambda Task through a handler that records its result, or replays one.
const eventsFile = process.env.AMIFLOW_EVENTS_FILE;
const resultsFile = process.env.AMIFLOW_RESULTS_FILE;
const replay = new Map();
for (const line of process.env.AMIFLOW_REPLAY_FILE ? readFileSync(process.env.AMIFLOW_REPLAY_FILE, "utf8").split("\n") : []) {
  if (!line.trim()) continue;
  const { state, input, result } = JSON.parse(line);
  const key = `${state}\u0000${input}`;
  if (!replay.has(key)) replay.set(key, []);
  replay.get(key).push(result);
}
record.replayed = [];
if (resultsFile) {
  for (const [name, resource] of Object.entries(lambdaStates)) {
    taskResourceLocalHandlers[name] = async (input) => {
      const text = JSON.stringify(input);
      const earlier = replay.get(`${name}\u0000${text}`);
      if (earlier?.length) {
        record.replayed.push(name);
        return earlier.shift();
      }
      const result = await invoke(resource, input);
      appendFileSync(resultsFile, JSON.stringify({ state: name, input: text, result }) + "\n");
      return result;
    };
  }
}

const machine = new StateMachine(definition, {
  validationOptions: { checkArn: false },
  awsConfig: { region, credentials: { accessKeys } },
});
const execution = machine.run(input, {
  overrides: { waitTimeOverrides: waitStates, retryIntervalOverrides: retryStates, taskResourceLocalHandlers },
  context: {
    Task: { Token: TOKEN_PLACEHOLDER },
    Execution: {
      Name: executionName,
      Id: `${stateMachineArn.replace(":stateMachine:", ":execution:")}:${executionName}`,
      Input: input,
      StartTime: new Date().toISOString(),
    },
    StateMachine: { Id: stateMachineArn, Name: stateMachineArn.split(":").pop() },
  },
});

// Every state entry, to tell each callback attempt's Map iteration (the handler is not told).
const entries = [];
const events = (async () => {
  for await (const event of execution.eventLogs) {
    const index = event.index ?? null;
    const t = event.timestamp ?? null;
    if (eventsFile) {
      const line = { type: event.type, state: event.state?.name ?? null, stateType: event.state?.type ?? null, index, t };
      if (event.parentState) line.parent = event.parentState.name;
      if (event.state && "input" in event.state) line.input = event.state.input ?? null;
      if (event.state && "output" in event.state) line.output = event.state.output ?? null;
      if ("Error" in event) {
        // A Lambda error's cause is its payload: Step Functions shows it as JSON text.
        line.error = { Error: event.Error ?? null, Cause: typeof event.Cause === "string" ? event.Cause : JSON.stringify(event.Cause ?? null) };
      }
      if (event.type === "ExecutionSucceeded") line.output = event.output ?? null;
      appendFileSync(eventsFile, JSON.stringify(line) + "\n");
    }
    switch (event.type) {
      case "StateEntered":
        record.path.push({ state: event.state.name, type: event.state.type, index, t });
        record.history.push({ state: event.state.name, event: "entered", data: event.state.input ?? null, t });
        if (event.state.name in callbackStates) entries.push({ state: event.state.name, index, t, input: JSON.stringify(event.state.input ?? null) });
        break;
      case "StateExited":
        record.history.push({ state: event.state.name, event: "exited", data: event.state.output ?? null, t });
        break;
      case "StateRetried":
        record.retries.push({ state: event.state.name, index, attempt: event.retry.attempt, t });
        break;
      case "StateCaught":
        record.caught.push({ state: event.state.name, index, next: event.catch.catcher.Next, t });
        break;
    }
  }
})();

process.on("SIGTERM", () => {
  record.aborted = true;
  execution.abort();
});
try {
  record.output = await execution.result;
} catch (e) {
  // ExecutionError wraps the runtime error as its cause.
  const cause = e.cause ?? e;
  record.error = { Error: cause.name ?? e.name, Cause: typeof cause.cause === "string" ? cause.cause : cause.message };
}
await events;
// Each callback attempt belongs to the latest entry of its state with the same input before it.
for (const callback of record.callbacks) {
  const entered = entries.filter((e) => e.state === callback.state && e.input === callback.input && e.t <= callback.started_at);
  callback.index = entered.length ? entered[entered.length - 1].index : null;
}
// An aborted run leaves callback polls and invocations under way: once the record is out
// (a pipe's write completes later), the run is over.
process.stdout.write(JSON.stringify(record) + "\n", () => {
  if (record.aborted) process.exit(0);
});
