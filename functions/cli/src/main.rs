//! The `amiflow` command. One module per subcommand.

use amiflow_cli::{policy, start, watch};
use clap::{Parser, Subcommand};

mod build;
mod inspect;
mod serve_lambdas;
mod validate;

#[derive(Parser)]
#[command(name = "amiflow", version, about = "Bake Amazon machine images from Packer templates, serverless")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a template: prints OK or every problem found (exit 1).
    Validate(validate::Args),
    /// Show a template's builders, variables and provisioners.
    Inspect(inspect::Args),
    /// Run the build on this machine with the local engine.
    Build(build::Args),
    /// Start a build on the deployed state machine.
    Start(start::Args),
    /// Follow a deployed execution until it ends.
    Watch(watch::Args),
    /// Print the minimal IAM policy a template needs.
    Policy(policy::Args),
    /// Serve every handler through a local Lambda Invoke API on 127.0.0.1.
    ServeLambdas(serve_lambdas::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Validate(a) => validate::run(a).await,
            Command::Inspect(a) => inspect::run(a).await,
            Command::Build(a) => build::run(a).await,
            Command::Start(a) => start::run(a).await,
            Command::Watch(a) => watch::run(a).await,
            Command::Policy(a) => policy::run(a).await,
            Command::ServeLambdas(a) => serve_lambdas::run(a).await,
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
