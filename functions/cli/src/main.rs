//! The `amiflow` command. One module per subcommand.

use amiflow_cli::{clean, policy, start, watch};
use clap::{Parser, Subcommand};

mod build;
mod hcl2_upgrade;
mod inspect;
mod interactive;
mod machine;
mod manifest;
mod progress;
mod serve_lambdas;
mod validate;

#[derive(Parser)]
#[command(
    name = "amiflow",
    version,
    about = "Bake Amazon machine images from Packer templates, serverless"
)]
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
    /// Remove what a failed build kept with --on-error abort (the janitor leaves it).
    Clean(clean::Args),
    /// Print the minimal IAM policy a template needs.
    Policy(policy::Args),
    /// Serve every handler through a local Lambda Invoke API on 127.0.0.1.
    ServeLambdas(serve_lambdas::Args),
    /// Write the HCL2 twin of a JSON template (TEMPLATE.json.pkr.hcl).
    #[command(name = "hcl2_upgrade")]
    Hcl2Upgrade(hcl2_upgrade::Args),
}

/// Packer's flags are single-dash long flags (`-var`, `-var-file`, `-only` …); clap wants
/// two dashes. Rewrite the ones we know, before clap sees them, so Packer command lines work.
fn packer_style_flags(args: impl IntoIterator<Item = String>) -> Vec<String> {
    const LONG: [&str; 9] = [
        "var",
        "var-file",
        "only",
        "except",
        "on-error",
        "force",
        "syntax-only",
        "debug",
        "machine-readable",
    ];
    let mut out = Vec::new();
    let mut after_double_dash = false;
    for (i, arg) in args.into_iter().enumerate() {
        if arg == "--" {
            after_double_dash = true;
        }
        let name = arg
            .strip_prefix('-')
            .filter(|rest| !rest.starts_with('-'))
            .map(|rest| rest.split('=').next().unwrap_or(rest));
        if i > 0 && !after_double_dash && name.is_some_and(|n| LONG.contains(&n)) {
            out.push(format!("-{arg}"));
        } else {
            out.push(arg);
        }
    }
    out
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(packer_style_flags(std::env::args()));
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Validate(a) => validate::run(a).await,
            Command::Inspect(a) => inspect::run(a).await,
            Command::Build(a) => build::run(a).await,
            Command::Start(a) => start::run(a).await,
            Command::Watch(a) => watch::run(a).await,
            Command::Clean(a) => clean::run(a).await,
            Command::Policy(a) => policy::run(a).await,
            Command::ServeLambdas(a) => serve_lambdas::run(a).await,
            Command::Hcl2Upgrade(a) => hcl2_upgrade::run(a).await,
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

#[cfg(test)]
mod tests {
    use super::packer_style_flags;

    fn v(args: &[&str]) -> Vec<String> {
        packer_style_flags(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn single_dash_packer_flags_become_double_dash() {
        assert_eq!(
            v(&[
                "amiflow",
                "validate",
                "-var",
                "a=b",
                "-var-file=f.json",
                "-only=x",
                "--var",
                "c=d",
                "-h",
                "t.json"
            ]),
            v(&[
                "amiflow",
                "validate",
                "--var",
                "a=b",
                "--var-file=f.json",
                "--only=x",
                "--var",
                "c=d",
                "-h",
                "t.json"
            ])
        );
        assert_eq!(
            v(&["amiflow", "validate", "--", "-var"]),
            vec!["amiflow", "validate", "--", "-var"]
        );
        // A value that looks like a flag is left alone only after `--`; -var's value is `k=v`, never a flag name.
        assert_eq!(
            v(&["amiflow", "build", "-force", "-on-error=abort"])[2..],
            ["--force".to_string(), "--on-error=abort".to_string()]
        );
    }
}
