#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("`amiflow watch` is not implemented yet")
}
