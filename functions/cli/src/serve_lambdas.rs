//! `amiflow serve-lambdas`: every handler behind a local Lambda Invoke API on 127.0.0.1,
//! so a third-party ASL engine runs the definition against the real handlers:
//!
//! ```sh
//! amiflow serve-lambdas --port 9001 > endpoint &
//! AWS_ENDPOINT_URL_LAMBDA=$(head -1 endpoint) <engine running statemachine/amiflow.asl.json>
//! ```
//! Handlers reach AWS (or the emulator named by AWS_ENDPOINT_URL) with this process's
//! credentials, exactly as `amiflow build` does; so the endpoint carries a per-run token
//! and refuses browsers (`amiflow::lambda_api`'s guard).

use std::sync::Arc;

use amiflow::lambda_api::{self, RegistryInvoker};

#[derive(clap::Args)]
pub struct Args {
    /// Port on 127.0.0.1 (0 picks a free one, printed on startup).
    #[arg(long, default_value_t = 9001)]
    port: u16,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let ctx = Arc::new(amiflow::Ctx::from_env().await);
    let server = lambda_api::serve(args.port, Arc::new(RegistryInvoker { ctx }))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on 127.0.0.1:{}: {e}; pick another --port",
                args.port
            )
        })?;
    // The first stdout line is the endpoint with its token, for scripts:
    // AWS_ENDPOINT_URL_LAMBDA=$(...). Only this process's output shows the token.
    let endpoint = server.endpoint();
    println!("{endpoint}");
    eprintln!(
        "serving {} on {endpoint}/2015-03-31/functions/{{name}}/invocations",
        lambda_api::known_handlers()
    );
    tokio::select! {
        _ = server.task => anyhow::bail!("the invoke server stopped"),
        _ = tokio::signal::ctrl_c() => Ok(0),
    }
}
