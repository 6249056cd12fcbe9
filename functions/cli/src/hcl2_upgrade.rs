//! `amiflow hcl2_upgrade TEMPLATE.json`: writes the HCL2 twin of a JSON template, as
//! Packer's `hcl2_upgrade` does (to `TEMPLATE.json.pkr.hcl` unless `-o` says where).

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The Packer JSON template.
    pub template: PathBuf,
    /// Where to write the HCL2 template (default: the template's path + `.pkr.hcl`).
    #[arg(short = 'o', long = "output-file", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let text = amiflow_cli::validate::read_template(&args.template)?;
    let hcl = match amiflow_template::hcl2::upgrade::upgrade(&text) {
        Ok(h) => h,
        Err(problems) => {
            amiflow_cli::validate::print_problems(&args.template, &problems);
            return Ok(1);
        }
    };
    let out = args.output.unwrap_or_else(|| {
        let mut p = args.template.clone().into_os_string();
        p.push(".pkr.hcl");
        PathBuf::from(p)
    });
    std::fs::write(&out, hcl)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    println!("Successfully created {}", out.display());
    Ok(0)
}
