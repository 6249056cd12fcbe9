//! `amiflow inspect TEMPLATE`: builders, variables (sensitive defaults masked), provisioners
//! and post-processors, without rendering anything.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The Packer template: JSON, or HCL2 (a `*.pkr.hcl` file or a folder of them).
    pub template: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let summary = if amiflow_template::is_hcl2_path(&args.template) {
        amiflow_template::hcl2::inspect(&args.template)
    } else {
        amiflow_template::inspect(&amiflow_cli::validate::read_template(&args.template)?)
    };
    match summary {
        Ok(summary) if args.json => {
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(0)
        }
        Ok(summary) => {
            print!("{summary}");
            Ok(0)
        }
        Err(problems) => {
            eprintln!("Template has problems:\n{problems}");
            Ok(1)
        }
    }
}
