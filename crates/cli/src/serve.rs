//! `hlbridge serve`: the engine with its HTTP side. Loads and validates the flows (printing
//! every diagnostic), then serves webhook ingress (`/hooks/highlevel`, `/hooks/app/<flow>`),
//! the contact lookup, `/healthz` and `/metrics`, and runs the workers, polls and schedules
//! until Ctrl-C or SIGTERM, then stops gracefully (in-flight runs finish their step and are
//! released).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use hlbridge_engine::flow::Trigger;
use hlbridge_server::{ServeConfig, serve};
use tokio_util::sync::CancellationToken;

use crate::engine_args::{EngineArgs, Opened, open_engine, parse_duration};

/// Options of `hlbridge serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to listen on. The default is loopback; anything else exposes the webhook
    /// endpoints and the contact lookup to the network (set `--lookup-token`).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Public key trusted for HighLevel webhooks: SPKI PEM (Ed25519 or RSA), raw base64
    /// Ed25519, or `@file` (repeatable).
    #[arg(long = "webhook-key", value_name = "PEM|BASE64|@FILE")]
    webhook_keys: Vec<String>,
    /// Also trust HighLevel's published RSA key (legacy `x-wh-signature`).
    #[arg(long)]
    trust_highlevel_key: bool,
    /// How long a contact looked up at `/lookup/contact` is served from memory (e.g. `60s`,
    /// `5m`); webhooks about the contact refresh it sooner.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    lookup_ttl: Duration,
    /// Require `Authorization: Bearer <token>` on `/lookup/contact`.
    #[arg(long, env = "HLBRIDGE_LOOKUP_TOKEN", hide_env_values = true)]
    lookup_token: Option<String>,
    /// Run no workers in this process: only ingress, the lookup and the triggers; runs are
    /// executed by `hlbridge worker` processes sharing the --database.
    #[arg(long)]
    no_workers: bool,
}

/// Reads a `--webhook-key`: inline text, or `@file`.
fn read_key(arg: &str) -> Result<String> {
    match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the webhook key file {path}")),
        None => Ok(arg.to_owned()),
    }
}

/// Runs `hlbridge serve`.
pub async fn run(args: ServeArgs) -> Result<()> {
    let keys = args
        .webhook_keys
        .iter()
        .map(|k| read_key(k))
        .collect::<Result<Vec<_>>>()?;
    let trust = args.trust_highlevel_key;
    let Opened {
        engine,
        api,
        database,
        flows,
        ids,
        telemetry,
    } = open_engine(&args.engine, !args.no_workers, |cfg| {
        cfg.highlevel_webhook_keys = keys;
        cfg.trust_highlevel_rsa_key = trust;
        Ok(())
    })
    .await?;
    if api.is_none() {
        eprintln!("warning: no --token: HighLevel calls and /lookup/contact are unavailable");
    }
    if !args.host.is_loopback() && args.lookup_token.is_none() {
        eprintln!(
            "warning: listening on {} without --lookup-token: anyone who reaches it can read contacts through /lookup/contact",
            args.host
        );
    }
    if args.no_workers && !database.is_postgres() {
        eprintln!(
            "warning: --no-workers on SQLite: runs wait for a `hlbridge worker` on this machine with the same --data"
        );
    }

    let cancel = CancellationToken::new();
    let signals = hlbridge_engine::runner::cancel_on_signal(cancel.clone());
    let serve_config = ServeConfig {
        bind: SocketAddr::new(args.host, args.port),
        lookup_ttl: args.lookup_ttl,
        lookup_location_id: args.engine.location_id.clone(),
        lookup_token: args.lookup_token.clone(),
        highlevel: api,
        run_workers: !args.no_workers,
        run_triggers: !args.engine.no_triggers,
        // Flows built in the web UI are saved as files in the first flows directory.
        flows_dir: flows.iter().find(|p| p.is_dir()).cloned(),
        telemetry: Some(telemetry),
        ..ServeConfig::default()
    };
    let server = serve(engine.clone(), serve_config, cancel.clone()).await?;
    let base = &server.base_url;
    println!("hlbridge serving on {base}");
    println!("  database:  {database}");
    println!(
        "  workers:   {}",
        if args.no_workers {
            "none in this process (hlbridge worker processes run the queue)".to_owned()
        } else {
            format!("{} in this process", args.engine.workers.max(1))
        }
    );
    println!(
        "  flows:     {} loaded{}",
        ids.len(),
        if flows.is_empty() {
            " (no --flows and no ./flows directory)".to_owned()
        } else {
            format!(
                " from {}",
                flows
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    println!("  POST {base}/hooks/highlevel   (HighLevel webhooks)");
    for flow in engine.flows() {
        if flow.flow.enabled && matches!(flow.flow.trigger, Trigger::AppWebhook(_)) {
            println!("  POST {base}/hooks/app/{}", flow.id());
        }
    }
    println!("  GET  {base}/lookup/contact?email=…|id=…");
    println!("  GET  {base}/healthz");
    println!("  GET  {base}/metrics");
    println!("  web UI    {base}/   (admin API {base}/api/v1, OpenAPI {base}/api/v1/openapi.json)");
    println!(
        "            no user yet? open it on this machine to create the owner, or `hlbridge users add`"
    );
    println!("Ctrl-C to stop.");
    let result = server.join().await;
    signals.abort();
    result.context("serving")?;
    eprintln!("hlbridge stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_inline_or_from_a_file() {
        assert_eq!(read_key("abc").ok().as_deref(), Some("abc"));
        assert!(read_key("@/nonexistent/key.pem").is_err());
    }
}
