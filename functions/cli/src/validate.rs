//! `amiflow validate TEMPLATE [-var k=v]... [-var-file F]...`: every problem of a template,
//! or "Template validated successfully.". Nothing is created; only an HCL2 template's data
//! sources are read from AWS.

use std::path::PathBuf;

use amiflow_template::{
    inspect, is_hcl2_path, parse_var_flag, LoadedTemplate, PrepareOptions, Problems,
};

/// What `validate` and `build` take to prepare a template, as Packer's flags.
#[derive(clap::Args)]
pub struct TemplateArgs {
    /// The Packer template: JSON, or HCL2 (a `*.pkr.hcl` file or a folder of them).
    pub template: PathBuf,
    /// Set a variable (repeatable): -var 'name=value'.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// File of variables (repeatable; JSON, or `*.pkrvars.hcl` for HCL2); -var wins over it.
    #[arg(long = "var-file", value_name = "FILE")]
    pub var_files: Vec<PathBuf>,
    /// Only these builds (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub only: Vec<String>,
    /// All builds but these (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub except: Vec<String>,
}

impl TemplateArgs {
    /// The template's text.
    pub fn read(&self) -> anyhow::Result<String> {
        read_template(&self.template)
    }

    /// The template ready for the JSON path: a JSON file read, an HCL2 file or folder
    /// lowered with `opts` (its problems, with their positions, in the inner result).
    pub fn load(&self, opts: &PrepareOptions) -> anyhow::Result<Result<LoadedTemplate, Problems>> {
        if is_hcl2_path(&self.template) {
            return Ok(LoadedTemplate::hcl2(&self.template, opts));
        }
        Ok(Ok(LoadedTemplate::json(self.read()?, opts)))
    }

    /// Variables, files, only/except, this process's environment for `{{env}}`, the
    /// template's directory for `{{template_dir}}`.
    pub fn prepare_options(&self) -> Result<PrepareOptions, String> {
        let mut opts = PrepareOptions::new(chrono::Utc::now()).with_process_env();
        opts.vars = self
            .vars
            .iter()
            .map(|v| parse_var_flag(v))
            .collect::<Result<_, _>>()?;
        opts.var_files = self.var_files.clone();
        opts.only = self.only.clone();
        opts.except = self.except.clone();
        // An HCL2 template's data sources are read as Packer reads them: with the caller's
        // credential chain, while the template is loaded.
        opts.data_sources = Some(amiflow::data_sources::AwsDataLookup::sources());
        let dir = if self.template.is_dir() {
            Some(self.template.as_path())
        } else {
            self.template.parent()
        };
        opts.template_dir = dir.map(|d| {
            if d.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                d.to_path_buf()
            }
        });
        Ok(opts)
    }
}

/// A template file's text, or an error naming the file.
pub fn read_template(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read template {}: {e}", path.display()))
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub template: TemplateArgs,
    /// Check the template's structure only: no variables, no interpolation, no builder keys.
    #[arg(long)]
    pub syntax_only: bool,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let result = if args.syntax_only {
        if is_hcl2_path(&args.template.template) {
            amiflow_template::hcl2::inspect(&args.template.template).map(|_| ())
        } else {
            inspect(&args.template.read()?).map(|_| ())
        }
    } else {
        let opts = match args.template.prepare_options() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("{e}");
                return Ok(1);
            }
        };
        args.template
            .load(&opts)?
            .and_then(|loaded| loaded.prepare().map(|p| print_warnings(&p.warnings)))
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
            print_problems(&args.template.template, &problems);
            Ok(1)
        }
    }
}

/// What `prepare` warned about (e.g. a -var the template does not declare), one per line on
/// stderr; `validate` and `build` print the same.
pub fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("Warning: {w}");
    }
}

/// Every problem of a template, one per line; `validate` and `build` print the same.
pub fn print_problems(template: &std::path::Path, problems: &amiflow_template::Problems) {
    let n = problems.0.len();
    eprintln!(
        "Template {} is not valid ({n} problem{}):\n{problems}",
        template.display(),
        if n == 1 { "" } else { "s" }
    );
}
