//! The `amiflow` command. One module per subcommand.

use amiflow_cli::{approve, clean, policy, redrive, start, validate, watch};
use clap::{Parser, Subcommand};

mod build;
mod hcl2_upgrade;
mod inspect;
mod interactive;
mod machine;
mod manifest;
mod progress;
mod serve_lambdas;

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
    /// Resume a deployed build started with --on-error redrive at the step that failed.
    Redrive(redrive::RedriveArgs),
    /// Give up on a deployed build kept for redrive: remove everything it made.
    Abandon(redrive::AbandonArgs),
    /// Approve the images of a deployed pipeline run waiting for approval: it publishes.
    Approve(approve::Args),
    /// Reject the images of a deployed pipeline run waiting for approval: they are removed.
    Reject(approve::Args),
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
            Command::Redrive(a) => redrive::redrive(a).await,
            Command::Abandon(a) => redrive::abandon(a).await,
            Command::Approve(a) => approve::run(a, true).await,
            Command::Reject(a) => approve::run(a, false).await,
            Command::Policy(a) => policy::run(a).await,
            Command::ServeLambdas(a) => serve_lambdas::run(a).await,
            Command::Hcl2Upgrade(a) => hcl2_upgrade::run(a).await,
        }
    });
    // A question still waiting on stdin (an approval that timed out) must not keep the
    // process alive: blocking reads are left behind, not waited for.
    runtime.shutdown_background();
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

/// The READMEs are walked through by users: every `amiflow …` line in their code blocks
/// must be a command line this CLI accepts (a renamed flag or subcommand fails here).
#[cfg(test)]
mod documented_commands {
    use clap::Parser;

    use super::{packer_style_flags, Cli};

    /// A synopsis line without its optional parts (`[-var k=v]...`) and comment.
    fn literal(line: &str) -> String {
        let line = line.split(" #").next().unwrap_or(line);
        let mut out = String::new();
        let mut depth = 0;
        for c in line.chars() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ if depth == 0 => out.push(c),
                _ => {}
            }
        }
        out.replace("...", "")
    }

    #[test]
    fn every_documented_command_line_parses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut checked = 0;
        for doc in ["README.md", "infra/README.md"] {
            let text = std::fs::read_to_string(root.join(doc)).unwrap();
            let mut in_code = false;
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("```") {
                    in_code = !in_code;
                    continue;
                }
                let command = literal(line.trim());
                if !in_code || !command.starts_with("amiflow ") {
                    continue;
                }
                let args = packer_style_flags(command.split_whitespace().map(String::from));
                if let Err(e) = Cli::try_parse_from(&args) {
                    panic!(
                        "{doc}:{}: `{}` is not a valid command line: {e}",
                        n + 1,
                        line.trim()
                    );
                }
                checked += 1;
            }
        }
        assert!(
            checked >= 10,
            "only {checked} documented command lines found"
        );
    }
}
