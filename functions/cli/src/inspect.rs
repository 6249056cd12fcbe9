//! `amiflow inspect TEMPLATE`: builders, variables (sensitive defaults masked), provisioners
//! and post-processors, without rendering anything.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The Packer JSON template.
    pub template: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let text = crate::validate::read_template(&args.template)?;
    match amiflow_template::inspect(&text) {
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
