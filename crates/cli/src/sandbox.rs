//! `hlbridge sandbox`: run the local HighLevel emulator until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use hlbridge_sandbox::delivery::RetryPolicy;
use hlbridge_sandbox::faults::FaultRule;
use hlbridge_sandbox::ratelimit::RateLimitConfig;
use hlbridge_sandbox::{Sandbox, SandboxConfig};

/// Options of `hlbridge sandbox`.
#[derive(Args, Debug)]
pub struct SandboxArgs {
    /// Port to listen on (loopback only).
    #[arg(long, default_value_t = 8089)]
    port: u16,
    /// Address to bind (default 127.0.0.1).
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// SQLite file for the state, or `:memory:`.
    #[arg(long, default_value = ":memory:")]
    data: String,
    /// Flush every write to disk before answering (survives power loss, slower writes).
    #[arg(long)]
    fsync: bool,
    /// Seed data set: `demo` creates a realistic location.
    #[arg(long, value_parser = ["demo"])]
    seed: Option<String>,
    /// Burst limit per app per location, e.g. `100/10s` (HighLevel's).
    #[arg(long, default_value = "100/10s")]
    rate_limit: String,
    /// Daily limit per app per location.
    #[arg(long, default_value_t = 200_000)]
    daily_limit: u32,
    /// Turn rate limiting off (headers are still sent).
    #[arg(long)]
    no_rate_limit: bool,
    /// Fixed full-scope Private Integration Token.
    #[arg(long, env = "HLBRIDGE_SANDBOX_TOKEN")]
    token: Option<String>,
    /// Fixed read-only token.
    #[arg(long)]
    readonly_token: Option<String>,
    /// Fixed location id.
    #[arg(long)]
    location_id: Option<String>,
    /// Fixed admin token for `/_sandbox`.
    #[arg(long, env = "HLBRIDGE_SANDBOX_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Webhook receiver URL (repeatable).
    #[arg(long = "webhook-url")]
    webhook_urls: Vec<String>,
    /// Retry failed webhooks on any failure, not only 429 as HighLevel does.
    #[arg(long)]
    webhook_retry_all: bool,
    /// Also sign webhooks with RSA-SHA256 in `x-wh-signature`.
    #[arg(long)]
    rsa: bool,
    /// OAuth access-token lifetime in seconds.
    #[arg(long, default_value_t = 86_399)]
    token_ttl: u64,
    /// A fault rule as JSON, e.g. '{"route":"contacts.*","errorRate":0.1,"status":503}' (repeatable).
    #[arg(long = "fault")]
    faults: Vec<String>,
}

/// Builds the sandbox configuration from the arguments.
fn config(args: &SandboxArgs) -> Result<SandboxConfig> {
    let (burst, interval) =
        RateLimitConfig::parse_burst(&args.rate_limit).map_err(anyhow::Error::msg)?;
    let faults = args
        .faults
        .iter()
        .map(|f| serde_json::from_str::<FaultRule>(f).with_context(|| format!("--fault {f}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(SandboxConfig {
        bind: SocketAddr::new(args.host, args.port),
        data: (args.data != ":memory:").then(|| PathBuf::from(&args.data)),
        fsync: args.fsync,
        seed_demo: args.seed.as_deref() == Some("demo"),
        rate_limit: RateLimitConfig {
            enabled: !args.no_rate_limit,
            burst,
            interval,
            daily: args.daily_limit,
        },
        token: args.token.clone(),
        readonly_token: args.readonly_token.clone(),
        location_id: args.location_id.clone(),
        company_id: None,
        admin_token: args.admin_token.clone(),
        access_token_ttl: Duration::from_secs(args.token_ttl),
        webhook_urls: args.webhook_urls.clone(),
        webhook_retry: if args.webhook_retry_all {
            RetryPolicy::Always
        } else {
            RetryPolicy::On429
        },
        rsa_signing: args.rsa,
        faults,
    })
}

/// Runs `hlbridge sandbox`.
pub async fn run(args: SandboxArgs) -> Result<()> {
    let sandbox = Sandbox::start(config(&args)?).await?;
    println!("{}", serde_json::to_string(&sandbox.info())?);
    eprintln!(
        "hlbridge sandbox listening on {} (Ctrl-C to stop)",
        sandbox.base_url
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    sandbox.shutdown().await;
    Ok(())
}
