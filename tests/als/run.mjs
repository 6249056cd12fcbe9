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
// Output: {"path": [{"state", "type", "index"}...], "retries": [{"state", "index", "attempt", "error"}],
//          "caught": [{"state", "index", "error"}], "output": ..., "error": {"Error", "Cause"} | null,
//          "history": [{"state", "event", "data"}]: every state's input and output, as the execution's history keeps them}
// `index` is the Map iteration the event belongs to (null at the top level).
import { readFileSync } from "node:fs";
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

// Names of every Wait and every retrying state, nested Map/Parallel included.
const waitStates = {};
const retryStates = {};
function visit(machine) {
  for (const [name, state] of Object.entries(machine.States ?? {})) {
    if (state.Type === "Wait") waitStates[name] = 0;
    if (state.Retry) retryStates[name] = 0;
    if (state.Iterator) visit(state.Iterator);
    if (state.ItemProcessor) visit(state.ItemProcessor);
    for (const branch of state.Branches ?? []) visit(branch);
  }
}
visit(definition);

const machine = new StateMachine(definition, {
  validationOptions: { checkArn: false },
  awsConfig: {
    region: process.env.AWS_REGION ?? "us-east-1",
    // The caller's credentials (a simulated account checks the role that invokes); fake ones otherwise.
    credentials: {
      accessKeys: {
        accessKeyId: process.env.AWS_ACCESS_KEY_ID ?? "testing",
        secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY ?? "testing",
        sessionToken: process.env.AWS_SESSION_TOKEN,
      },
    },
  },
});
const execution = machine.run(input, {
  overrides: { waitTimeOverrides: waitStates, retryIntervalOverrides: retryStates },
  context: {
    Execution: { Name: executionName, Id: `${stateMachineArn.replace(":stateMachine:", ":execution:")}:${executionName}`, Input: input, StartTime: new Date().toISOString() },
    StateMachine: { Id: stateMachineArn, Name: stateMachineArn.split(":").pop() },
  },
});

const record = { path: [], retries: [], caught: [], output: null, error: null, history: [] };
const events = (async () => {
  for await (const event of execution.eventLogs) {
    const index = event.index ?? null;
    switch (event.type) {
      case "StateEntered":
        record.path.push({ state: event.state.name, type: event.state.type, index });
        record.history.push({ state: event.state.name, event: "entered", data: event.state.input ?? null });
        break;
      case "StateExited":
        record.history.push({ state: event.state.name, event: "exited", data: event.state.output ?? null });
        break;
      case "StateRetried":
        record.retries.push({ state: event.state.name, index, attempt: event.retry.attempt });
        break;
      case "StateCaught":
        record.caught.push({ state: event.state.name, index, next: event.catch.catcher.Next });
        break;
    }
  }
})();

try {
  record.output = await execution.result;
} catch (e) {
  // ExecutionError wraps the runtime error as its cause.
  const cause = e.cause ?? e;
  record.error = { Error: cause.name ?? e.name, Cause: typeof cause.cause === "string" ? cause.cause : cause.message };
}
await events;
process.stdout.write(JSON.stringify(record) + "\n");
