//! `amiflow build TEMPLATE`: runs the committed state machine on this machine with the
//! local engine, every step in-process, against the AWS account of the usual credential
//! chain (or the emulator `AWS_ENDPOINT_URL` points at). Nothing is uploaded anywhere.

use std::path::PathBuf;
use std::sync::Arc;

use amiflow::local::{Interrupt, InterruptibleClock, LocalInvoker};
use amiflow::Ctx;
use amiflow_statemachine::{Engine, RealClock, StateMachine};
use anyhow::Context;
use serde_json::{json, Map, Value};

use crate::interactive::{check_console, Console, Interactive, Terminal};
use crate::progress::{Output, Progress};
use crate::{machine, manifest};
use amiflow_cli::validate::TemplateArgs;

/// The definition deployed to Step Functions, byte for byte (a test keeps it in sync
/// with the flows).
const DEFINITION: &str = include_str!("../../../statemachine/amiflow.asl.json");

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub template: TemplateArgs,
    /// What to do when a build fails: `cleanup` (default) removes everything it created,
    /// `abort` keeps it for debugging, `ask` asks at the failed step (clean up, abort,
    /// retry, ignore), `run-cleanup-provisioner` runs the template's
    /// error-cleanup-provisioner and then keeps everything.
    #[arg(long = "on-error", value_name = "cleanup|abort|ask|run-cleanup-provisioner", default_value = "cleanup", value_parser = ["cleanup", "abort", "ask", "run-cleanup-provisioner"])]
    pub on_error: String,
    /// Replace an existing AMI of the same name (sets force_deregister on every build).
    #[arg(long)]
    pub force: bool,
    /// Pause before each step of each build until Enter is pressed (needs a terminal, or a
    /// pipe, on stdin).
    #[arg(long)]
    pub debug: bool,
    /// Packer's machine-readable output on stdout: `timestamp,target,type,data...`.
    #[arg(long = "machine-readable")]
    pub machine_readable: bool,
    /// A pipeline file around the build (rebuild on change, publish, retain).
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    /// With --pipeline: retention reports what it would retire and touches nothing.
    #[arg(long = "retain-dry-run", requires = "pipeline")]
    pub retain_dry_run: bool,
    /// With a pipeline that asks for `approval`: approve its images ahead (no question asked).
    #[arg(long, requires = "pipeline", conflicts_with = "reject")]
    pub approve: bool,
    /// With a pipeline that asks for `approval`: refuse its images ahead; they are removed.
    #[arg(long, requires = "pipeline")]
    pub reject: bool,
    /// Print the execution's output document (JSON) at the end.
    #[arg(long)]
    pub json: bool,
}

/// Who answers a pipeline's approval locally: `--approve` / `--reject` given ahead, or the
/// person at the terminal (anything but y/yes is a no).
fn local_approver(approve: bool, reject: bool) -> amiflow::steps::approve::LocalApprover {
    let user = std::env::var("USER").unwrap_or_else(|_| "the local user".into());
    if approve {
        let who = format!("{user} (--approve)");
        return Arc::new(move |_| {
            let who = who.clone();
            Box::pin(async move { Ok(who) })
        });
    }
    if reject {
        return Arc::new(|_| Box::pin(async { Err("refused ahead with --reject".to_string()) }));
    }
    Arc::new(move |question| {
        let user = user.clone();
        Box::pin(async move {
            let answer =
                tokio::task::spawn_blocking(move || Terminal.ask(&format!("{question} [y/N]")))
                    .await
                    .ok()
                    .flatten();
            match answer.map(|a| a.to_ascii_lowercase()).as_deref() {
                Some("y" | "yes") => Ok(user),
                _ => Err(format!("{user} did not approve")),
            }
        })
    })
}

/// Where `build`'s own messages go: stderr, or machine-readable lines on stdout.
#[derive(Clone, Copy)]
struct Ui {
    machine: bool,
}

impl Ui {
    fn say(self, text: &str) {
        if self.machine {
            machine::print("", "ui", &["say", text]);
        } else {
            eprintln!("{text}");
        }
    }

    fn error(self, text: &str) {
        if self.machine {
            machine::print("", "ui", &["error", text]);
        } else {
            eprintln!("{text}");
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let ui = Ui {
        machine: args.machine_readable,
    };
    let ask = args.on_error == "ask";
    let interactive = [(args.debug, "-debug"), (ask, "-on-error=ask")];
    for (_, flag) in interactive.iter().filter(|(on, _)| *on) {
        if let Err(e) = check_console(flag) {
            ui.error(&e);
            return Ok(1);
        }
    }
    let pipeline = match args
        .pipeline
        .as_deref()
        .map(amiflow_cli::pipeline_file::read)
    {
        Some(Err(e)) => {
            ui.error(&e.to_string());
            return Ok(1);
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };
    let asks_approval = pipeline
        .as_ref()
        .is_some_and(|p| p.get("approval").is_some());
    if asks_approval && !args.approve && !args.reject {
        if let Err(e) = check_console("a pipeline with `approval` (or --approve / --reject)") {
            ui.error(&e);
            return Ok(1);
        }
    }
    let mut opts = match args.template.prepare_options() {
        Ok(o) => o,
        Err(e) => {
            ui.error(&e);
            return Ok(1);
        }
    };
    opts.force = args.force;
    // An HCL2 template is lowered to the JSON template here: the engine gets that.
    let loaded = match args.template.load(&opts)? {
        Ok(l) => l,
        Err(problems) => {
            amiflow_cli::validate::print_problems(&args.template.template, &problems);
            return Ok(1);
        }
    };
    // Validate before anything exists; the engine's Prepare step will do the same again
    // from the execution input, as it does in Step Functions.
    let prepared = match loaded.prepare() {
        Ok(p) => {
            amiflow_cli::validate::print_warnings(&p.warnings);
            p
        }
        Err(problems) => {
            amiflow_cli::validate::print_problems(&args.template.template, &problems);
            return Ok(1);
        }
    };
    let build_names: Vec<String> = prepared.builds.iter().map(|b| b.name.clone()).collect();
    // Each build's post-processors, in the template's order.
    let post_processors: Vec<(String, Value)> = prepared
        .builds
        .iter()
        .flat_map(|b| {
            b.post_processors
                .iter()
                .map(move |p| (b.name.clone(), p.clone()))
        })
        .collect();
    let template_dir = opts.template_dir.clone();
    let secrets: amiflow::provision::Secrets = prepared.secrets.into();
    // What the run's output masks: the template's sensitive values and every build's password.
    let mut run_secrets = secrets.clone();
    // One context per build, as each build of a Packer template signs with its own
    // credentials (sensitive ones revealed: the SDK must sign with the value, not its
    // placeholder) and connects with its own ssh_password.
    let mut contexts = std::collections::HashMap::new();
    for b in &prepared.builds {
        let mut access = b.config.access().clone();
        let external_id = access.assume_role.as_mut().map(|r| &mut r.external_id);
        for field in [
            Some(&mut access.access_key),
            Some(&mut access.secret_key),
            Some(&mut access.token),
            Some(&mut access.mfa_code),
            external_id,
        ]
        .into_iter()
        .flatten()
        {
            if let Some(value) = field.as_mut() {
                *value = secrets.reveal(value);
            }
        }
        let mut ctx = Ctx::for_build(&access)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {}", b.name, e.message()))?;
        ctx.env = opts.env.clone();
        ctx.base_dir = opts.template_dir.clone();
        if asks_approval {
            ctx.approver = Some(local_approver(args.approve, args.reject));
        }
        let mut build_secrets = secrets.clone();
        // Typed configs never serialize passwords: the step gets them from the run's secrets.
        if let Some(password) = b.config.comm().and_then(|c| c.ssh_password.clone()) {
            build_secrets.set_ssh_password(password.clone());
            run_secrets.set_ssh_password(password);
        }
        ctx.secrets = build_secrets;
        contexts.insert(b.name.clone(), Arc::new(ctx));
    }
    // The run's own steps (those of no build: Prepare, Finalize, a pipeline's) use the first
    // build's.
    let ctx = contexts[&prepared.builds[0].name].clone();
    let own_region = ctx.sdk.region().map(|r| r.to_string());

    let execution = format!(
        "amiflow-{}-{}",
        opts.build_time.format("%Y%m%d-%H%M%S"),
        &uuid_fragment()
    );
    let opts = loaded.options;
    let mut input = json!({
        "template": loaded.text,
        "vars": variables(&opts)?,
        "only": opts.only,
        "except": opts.except,
        // `ask` is answered here: the state machine cleans up unless the user aborts.
        "on_error": if ask { "cleanup" } else { args.on_error.as_str() },
        "force": args.force,
    });
    if let Some(pipeline) = pipeline {
        input["pipeline"] = pipeline;
        input["retain_dry_run"] = args.retain_dry_run.into();
    }
    let machine = StateMachine::from_json(DEFINITION)
        .map_err(|e| anyhow::anyhow!("the embedded state machine is invalid: {e}"))?;
    let interrupt = Interrupt::default();
    let regions = amiflow::steps::janitor::build_regions(
        Some(&input.to_string()),
        own_region.as_deref().unwrap_or_default(),
        None,
    );
    watch_signals(interrupt.clone(), clean_command(&execution, &regions))?;
    let invoker = Interactive::new(
        LocalInvoker::interruptible(ctx.clone(), interrupt.clone()).with_build_contexts(contexts),
        Arc::new(Terminal),
        args.debug,
        ask,
    );
    let (engine, mut events) = Engine::new(invoker)
        .with_clock(InterruptibleClock {
            inner: RealClock::default(),
            interrupt: interrupt.clone(),
        })
        .event_channel();

    ui.say(&format!(
        "==> {execution}: {} build(s): {}",
        build_names.len(),
        build_names.join(", ")
    ));
    let started = std::time::Instant::now();
    let run = tokio::spawn(async move { engine.run(&machine, &execution, input).await });
    let output = if args.machine_readable {
        Output::Machine
    } else if args.debug || ask {
        Output::Plain
    } else {
        Output::Human
    };
    let mut progress = Progress::new(build_names, output);
    while let Some(event) = events.recv().await {
        progress.on_event(&event);
    }
    progress.finish();
    let result = run.await.context("the local engine stopped unexpectedly")?;
    let elapsed = started.elapsed().as_secs_f64();

    let (output, failed_cause) = match result {
        Ok(output) => (Some(output), None),
        Err(e) => {
            // A failed build still has an output document: Finalize's, kept in the cause.
            (None, Some((e.error, e.cause)))
        }
    };
    let mut post_processors_failed = 0;
    if let Some(output) = &output {
        if ui.machine {
            print_machine_artifacts(output);
        } else {
            print_artifacts(output);
        }
        for line in amiflow_cli::pipeline_file::outcome_lines(output) {
            ui.say(&format!("==> {line}"));
        }
        post_processors_failed = run_post_processors(
            output,
            &post_processors,
            opts.build_time.timestamp(),
            &run_secrets,
            template_dir.as_deref(),
        )
        .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(output)?);
        }
    }
    ui.say(&format!(
        "==> finished in {elapsed:.1}s ({} retries)",
        progress.retries
    ));
    if let Some(signal) = interrupt.reason() {
        ui.error(&format!(
            "==> interrupted by {signal}: the build was cancelled and cleaned up"
        ));
        if let Some((error, cause)) = &failed_cause {
            ui.error(&format!(
                "    {error}: {}",
                cause.lines().next().unwrap_or_default()
            ));
        }
        return Ok(128 + signal_number(&signal));
    }
    match failed_cause {
        None if post_processors_failed > 0 => {
            ui.error(&format!(
                "==> {post_processors_failed} post-processor(s) failed; the artifacts above stay"
            ));
            Ok(1)
        }
        None => Ok(0),
        Some((error, cause)) => {
            ui.error(&format!("==> build failed: {error}"));
            for line in cause.lines() {
                ui.error(&format!("    {line}"));
            }
            if ui.machine {
                let lines: Vec<&str> = cause.lines().collect();
                machine::print("", "error-count", &[&lines.len().max(1).to_string()]);
                for line in lines {
                    let (build, message) = line.split_once(": ").unwrap_or(("", line));
                    machine::print(build, "error", &[message]);
                }
            }
            Ok(1)
        }
    }
}

/// The first SIGINT or SIGTERM cancels the running steps (the builds go to their Cleanup,
/// shown by the progress lines); a second one exits at once, printing `clean` (the command
/// that removes what the build left).
fn watch_signals(interrupt: Interrupt, clean: String) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tokio::spawn(async move {
        let mut received = 0;
        loop {
            let signal = tokio::select! {
                _ = sigint.recv() => "SIGINT",
                _ = sigterm.recv() => "SIGTERM",
            };
            received += 1;
            if received == 1 {
                eprintln!(
                    "==> {signal}: cancelling the running steps and cleaning up \
                     (send SIGINT or SIGTERM again to exit at once, without cleaning up)"
                );
                interrupt.trigger(signal);
                continue;
            }
            eprintln!(
                "==> {signal} again: exiting without cleaning up. \
                 To remove what the build created, run:\n    {clean}"
            );
            std::process::exit(128 + i32::from(signal_number(signal)));
        }
    });
    Ok(())
}

/// `amiflow clean` for this local build: its execution name is its tag, and the regions
/// are given since no deployed execution records them.
fn clean_command(execution: &str, regions: &[String]) -> String {
    let mut command = format!("amiflow clean {execution}");
    for region in regions {
        command.push_str(&format!(" --region {region}"));
    }
    command
}

fn signal_number(name: &str) -> u8 {
    match name {
        "SIGINT" => 2,
        _ => 15,
    }
}

/// Packer's machine-readable artifacts: each successful build's lines, from Finalize's
/// `artifact_id` and `artifact` (the failed build's error is in the cause).
fn print_machine_artifacts(output: &Value) {
    let now = chrono::Utc::now().timestamp();
    for build in output["builds"].as_array().into_iter().flatten() {
        let (Some(id), Some(human)) = (build["artifact_id"].as_str(), build["artifact"].as_str())
        else {
            continue;
        };
        let name = build["name"].as_str().unwrap_or("?");
        let builder_type = build["builder_type"].as_str().unwrap_or("");
        for line in machine::artifact_lines(now, name, builder_type, id, human) {
            println!("{line}");
        }
    }
}

/// -var-file contents, then -var, as the execution input's `vars`.
fn variables(opts: &amiflow_template::PrepareOptions) -> anyhow::Result<Map<String, Value>> {
    let mut vars = Map::new();
    for file in &opts.var_files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read -var-file {}", file.display()))?;
        let values: Map<String, Value> = serde_json::from_str(&text)
            .with_context(|| format!("-var-file {} is not a JSON object", file.display()))?;
        vars.extend(values);
    }
    for (name, value) in &opts.vars {
        vars.insert(name.clone(), Value::String(value.clone()));
    }
    Ok(vars)
}

/// Packer's closing lines: `--> name: AMIs were created:` then `region: ami-id`.
fn print_artifacts(output: &Value) {
    let builds = output["builds"].as_array().cloned().unwrap_or_default();
    println!("==> Builds finished. The artifacts of successful builds are:");
    for build in builds {
        let name = build["name"].as_str().unwrap_or("?");
        if let Some(error) = build["error"].as_str() {
            println!("--> {name}: failed: {error}");
            continue;
        }
        let volumes = build["volumes"].as_object().filter(|v| !v.is_empty());
        if let Some(volumes) = volumes {
            println!("--> {name}: EBS Volumes were created:");
            for (region, ids) in volumes {
                for id in ids.as_array().into_iter().flatten() {
                    println!("{region}: {}", id.as_str().unwrap_or_default());
                }
            }
            continue;
        }
        println!("--> {name}: AMIs were created:");
        for (region, ami) in build["amis"].as_object().into_iter().flatten() {
            println!("{region}: {}", ami.as_str().unwrap_or_default());
        }
    }
}

/// Runs each successful build's post-processors in order, as Packer does after the build:
/// `manifest` appends its entry at once, `shell-local` runs here.
/// Returns how many failed (each reported; the build's artifact stays, as in Packer).
async fn run_post_processors(
    output: &Value,
    post_processors: &[(String, Value)],
    build_time: i64,
    secrets: &amiflow::provision::Secrets,
    template_dir: Option<&std::path::Path>,
) -> anyhow::Result<usize> {
    let run_uuid = uuid_fragment_full();
    let builds = output["builds"].as_array().cloned().unwrap_or_default();
    let mut failed = 0;
    for (name, post_processor) in post_processors {
        let Some(build) = builds
            .iter()
            .find(|b| b["name"] == name.as_str() && b.get("error").is_none())
        else {
            continue;
        };
        if post_processor["type"] == "shell-local" {
            let label = format!("{name}: post-processor shell-local");
            if let Err(e) =
                shell_local_post_processor(build, post_processor, secrets, template_dir, &label)
                    .await
            {
                eprintln!("==> {label} failed: {}", secrets.mask(e.message()));
                failed += 1;
            }
            continue;
        }
        if post_processor["type"] == "checksum" {
            for path in manifest::checksum_files(build, post_processor)? {
                eprintln!(
                    "==> {name}: checksum: an AMI has no files to hash; {} holds no line (as Packer writes it)",
                    path.display()
                );
            }
            continue;
        }
        if post_processor["type"] != "manifest" {
            continue;
        }
        let path = manifest::output_path(post_processor);
        let mut entry = manifest::entry(build, post_processor, &run_uuid, build_time);
        // The template's `custom_data` gets the values of the sensitive variables it uses,
        // as in Packer: the manifest is the user's own file.
        if let Some(custom) = entry.get_mut("custom_data") {
            manifest::reveal(custom, secrets);
        }
        // Written now: a later post-processor of the chain may read it.
        manifest::append(&path, vec![entry], &run_uuid)?;
        eprintln!("==> {name}: manifest written to {}", path.display());
    }
    Ok(failed)
}

/// Packer's `shell-local` post-processor: the shell-local provisioner's runner, here, with
/// `PACKER_BUILD_NAME` and `PACKER_BUILDER_TYPE` in the environment.
async fn shell_local_post_processor(
    build: &Value,
    post_processor: &Value,
    secrets: &amiflow::provision::Secrets,
    template_dir: Option<&std::path::Path>,
    label: &str,
) -> Result<(), amiflow::StepError> {
    let mut own = post_processor.clone();
    if let Some(map) = own.as_object_mut() {
        for k in ["type", "name", "only", "except", "keep_input_artifact"] {
            map.remove(k);
        }
    }
    let config: amiflow::provision::config::ShellLocalConfig = serde_json::from_value(own)
        .map_err(|e| amiflow::StepError::BuildFailed(format!("{label}: {e}")))?;
    let env = amiflow::provision::plan::PlanEnv {
        build_name: build["name"].as_str().unwrap_or_default().to_string(),
        builder_type: build["builder_type"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        base_dir: template_dir.map(PathBuf::from).unwrap_or_default(),
        ..Default::default()
    };
    eprintln!("==> {label}");
    amiflow::provision::local::run_shell_local(label, &config, &env, secrets).await
}

fn uuid_fragment_full() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn uuid_fragment() -> String {
    uuid_fragment_full()[..8].to_string()
}
