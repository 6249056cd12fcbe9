//! `amiflow validate TEMPLATE [-var k=v]... [-var-file F]...`: every problem of a template,
//! or "Template validated successfully.". Nothing is created, nothing reaches AWS.

use std::path::PathBuf;

use amiflow_template::{inspect, parse_var_flag, prepare, PrepareOptions};

#[derive(clap::Args)]
pub struct Args {
    /// The Packer JSON template.
    pub template: PathBuf,
    /// Set a variable (repeatable): -var 'name=value'.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// JSON file of variables (repeatable); -var wins over it.
    #[arg(long = "var-file", value_name = "FILE")]
    pub var_files: Vec<PathBuf>,
    /// Validate only these builds (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub only: Vec<String>,
    /// Validate all builds but these (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub except: Vec<String>,
    /// Check the template's structure only: no variables, no interpolation, no builder keys.
    #[arg(long)]
    pub syntax_only: bool,
}

/// The options `validate` and `build` share: variables, files, only/except, this process's
/// environment for `{{env}}`, the template's directory for `{{template_dir}}`.
pub fn prepare_options(template: &std::path::Path, vars: &[String], var_files: &[PathBuf], only: &[String], except: &[String]) -> Result<PrepareOptions, String> {
    let mut opts = PrepareOptions::new(chrono::Utc::now()).with_process_env();
    opts.vars = vars.iter().map(|v| parse_var_flag(v)).collect::<Result<_, _>>()?;
    opts.var_files = var_files.to_vec();
    opts.only = only.to_vec();
    opts.except = except.to_vec();
    opts.template_dir = template.parent().map(|d| if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() });
    Ok(opts)
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(&args.template).map_err(|e| anyhow::anyhow!("cannot read template {}: {e}", args.template.display()))?;
    let result = if args.syntax_only {
        inspect(&text).map(|_| ())
    } else {
        let opts = match prepare_options(&args.template, &args.vars, &args.var_files, &args.only, &args.except) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("{e}");
                return Ok(1);
            }
        };
        prepare(&text, &opts).map(|_| ())
    };
    match result {
        Ok(()) if args.syntax_only => {
            println!("Syntax-only check passed. Everything looks okay.");
            Ok(0)
        }
        Ok(()) => {
            println!("Template validated successfully.");
            Ok(0)
        }
        Err(problems) => {
            print_problems(&args.template, &problems);
            Ok(1)
        }
    }
}

/// Every problem of a template, one per line; `validate` and `build` print the same.
pub fn print_problems(template: &std::path::Path, problems: &amiflow_template::Problems) {
    let n = problems.0.len();
    eprintln!("Template {} is not valid ({n} problem{}):\n{problems}", template.display(), if n == 1 { "" } else { "s" });
}
