//! `hlbridge serve`: the engine with its HTTP side. Loads and validates the flows (printing
//! every diagnostic), then serves webhook ingress (`/hooks/highlevel`, `/hooks/app/<flow>`),
//! the contact lookup, `/healthz` and `/metrics`, and runs the workers, polls and schedules
//! until Ctrl-C or SIGTERM, then stops gracefully (in-flight runs finish their step and are
//! released).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use hlbridge_engine::flow::Trigger;
use hlbridge_engine::{AppConnection, ClientApi, Connection, Engine, EngineConfig, EngineError};
use hlbridge_engine::{HighLevelApi, store::default_data_dir};
use hlbridge_highlevel::{Auth, Client, ClientConfig, PacingConfig, Url};
use hlbridge_server::{ServeConfig, serve};
use tokio_util::sync::CancellationToken;

/// Options of `hlbridge serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Data directory (the database is `hlbridge.db` inside). Default: the user's data
    /// directory (`$XDG_DATA_HOME/hlbridge` or `~/.local/share/hlbridge`).
    #[arg(long, env = "HLBRIDGE_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// Flow files, or directories of `*.toml` flows (default: `./flows` when it exists).
    #[arg(long = "flows", value_name = "DIR|FILE", num_args = 1..)]
    flows: Vec<PathBuf>,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to listen on. The default is loopback; anything else exposes the webhook
    /// endpoints and the contact lookup to the network (set `--lookup-token`).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Worker tasks executing runs.
    #[arg(long, default_value_t = 2, value_name = "N")]
    workers: usize,
    /// HighLevel API base URL (default: production; a sandbox's URL for tests).
    #[arg(long, env = "HLBRIDGE_BASE_URL", value_name = "URL")]
    highlevel_base_url: Option<String>,
    /// Private Integration Token of the `default` HighLevel connection.
    #[arg(
        long,
        env = "HLBRIDGE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// Location (sub-account) id of the `default` connection.
    #[arg(long, value_name = "ID")]
    location_id: Option<String>,
    /// Public key trusted for HighLevel webhooks: SPKI PEM (Ed25519 or RSA), raw base64
    /// Ed25519, or `@file` (repeatable).
    #[arg(long = "webhook-key", value_name = "PEM|BASE64|@FILE")]
    webhook_keys: Vec<String>,
    /// Also trust HighLevel's published RSA key (legacy `x-wh-signature`).
    #[arg(long)]
    trust_highlevel_key: bool,
    /// App secret `name=value` that app webhook flows refer to by name (repeatable; the
    /// environment variable takes a comma-separated list).
    #[arg(
        long = "app-secret",
        env = "HLBRIDGE_APP_SECRETS",
        hide_env_values = true,
        value_delimiter = ',',
        value_name = "NAME=VALUE"
    )]
    app_secrets: Vec<String>,
    /// App connection `name=base URL` that `http` steps refer to (repeatable).
    #[arg(long = "app-connection", value_name = "NAME=URL")]
    app_connections: Vec<String>,
    /// Header sent with every request of an app connection, `name:Header=value` (repeatable),
    /// e.g. `ecosend:Authorization=Bearer s3cret`.
    #[arg(long = "app-header", value_name = "NAME:HEADER=VALUE")]
    app_headers: Vec<String>,
    /// Let `http` steps reach private, link-local and loopback addresses (trusted networks
    /// only).
    #[arg(long)]
    allow_private_network: bool,
    /// How long a contact looked up at `/lookup/contact` is served from memory (e.g. `60s`,
    /// `5m`); webhooks about the contact refresh it sooner.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    lookup_ttl: Duration,
    /// Require `Authorization: Bearer <token>` on `/lookup/contact`.
    #[arg(long, env = "HLBRIDGE_LOOKUP_TOKEN", hide_env_values = true)]
    lookup_token: Option<String>,
    /// Lease of a claimed run: a run whose process died is taken over after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    lease: Duration,
    /// Do not pace HighLevel calls (only for a sandbox with rate limits off: HighLevel
    /// answers 429 to a client that does not pace itself).
    #[arg(long)]
    no_pacing: bool,
}

/// Parses `500ms`, `5s`, `2m`, `1h` or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms, 30s, 5m or 1h"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" | "min" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        other => Err(format!(
            "unknown duration unit `{other}` (use ms, s, m or h)"
        )),
    }
}

/// Splits `name=value`.
fn pair<'a>(arg: &'a str, what: &str) -> Result<(&'a str, &'a str)> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim(), v)),
        _ => bail!("{what} must be NAME=VALUE, got `{arg}`"),
    }
}

/// Reads a `--webhook-key`: inline text, or `@file`.
fn read_key(arg: &str) -> Result<String> {
    match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the webhook key file {path}")),
        None => Ok(arg.to_owned()),
    }
}

/// The engine configuration from the arguments.
fn engine_config(args: &ServeArgs) -> Result<EngineConfig> {
    let mut cfg = EngineConfig::with_data_dir(args.data.clone().unwrap_or_else(default_data_dir));
    cfg.workers = args.workers.max(1);
    cfg.lease = args.lease.max(Duration::from_secs(1));
    cfg.network.allow_private_network = args.allow_private_network;
    for s in &args.app_secrets {
        let (k, v) = pair(s, "--app-secret")?;
        cfg.app_secrets.insert(k.to_owned(), v.to_owned());
    }
    for c in &args.app_connections {
        let (name, url) = pair(c, "--app-connection")?;
        Url::parse(url)
            .with_context(|| format!("--app-connection {name}: `{url}` is not a URL"))?;
        cfg.app_connections.insert(
            name.to_owned(),
            AppConnection {
                base_url: Some(url.to_owned()),
                headers: HashMap::new(),
            },
        );
    }
    for h in &args.app_headers {
        let (name, header) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("--app-header must be NAME:HEADER=VALUE, got `{h}`"))?;
        let (header, value) = pair(header, "--app-header")?;
        let conn = cfg
            .app_connections
            .get_mut(name.trim())
            .ok_or_else(|| anyhow!("--app-header {name}: no --app-connection named `{name}`"))?;
        conn.headers.insert(header.to_owned(), value.to_owned());
    }
    cfg.highlevel_webhook_keys = args
        .webhook_keys
        .iter()
        .map(|k| read_key(k))
        .collect::<Result<_>>()?;
    cfg.trust_highlevel_rsa_key = args.trust_highlevel_key;
    let mut conns = HashMap::new();
    if args.token.is_some() {
        conns.insert("default".to_owned(), None);
    }
    cfg.highlevel_connections = Some(conns);
    Ok(cfg)
}

/// The HighLevel API of the `default` connection, when a token is given.
fn highlevel_api(args: &ServeArgs) -> Result<Option<Arc<dyn HighLevelApi>>> {
    let Some(token) = &args.token else {
        return Ok(None);
    };
    let mut config = ClientConfig::default();
    if let Some(base) = &args.highlevel_base_url {
        config.base_url =
            Url::parse(base).with_context(|| format!("invalid --highlevel-base-url `{base}`"))?;
    }
    if args.no_pacing {
        config.pacing = PacingConfig {
            enabled: false,
            ..PacingConfig::default()
        };
    }
    let client = Client::new(config).map_err(|e| anyhow!("HighLevel client: {e}"))?;
    let auth = match &args.location_id {
        Some(loc) => Auth::token_for(token.clone(), loc.clone()),
        None => Auth::token(token.clone()),
    };
    let mut conns = HashMap::new();
    conns.insert(
        "default".to_owned(),
        Connection {
            auth,
            location_id: args.location_id.clone(),
        },
    );
    Ok(Some(Arc::new(ClientApi::new(client, conns))))
}

/// Runs `hlbridge serve`.
pub async fn run(args: ServeArgs) -> Result<()> {
    let flows = if args.flows.is_empty() {
        let default = PathBuf::from("flows");
        if default.is_dir() {
            vec![default]
        } else {
            Vec::new()
        }
    } else {
        args.flows.clone()
    };
    let config = engine_config(&args)?;
    let api = highlevel_api(&args)?;
    let data_dir = config.data_dir.clone();
    let engine = match &api {
        Some(api) => Engine::open_with(config, api.clone()).await,
        None => Engine::open(config).await,
    }
    .with_context(|| format!("opening the engine on {}", data_dir.display()))?;
    let ids = match engine.load_flows(&flows).await {
        Ok(ids) => ids,
        Err(EngineError::Flows(diags)) => {
            for d in &diags {
                eprintln!("{d}");
            }
            if api.is_none() {
                eprintln!(
                    "note: no HighLevel connection is configured; give --token (or HLBRIDGE_TOKEN) for flows that call HighLevel"
                );
            }
            bail!(
                "{} error(s) in the flow files; nothing was started",
                diags.len()
            );
        }
        Err(e) => return Err(e).context("loading the flows"),
    };
    if api.is_none() {
        eprintln!("warning: no --token: HighLevel calls and /lookup/contact are unavailable");
    }
    if !args.host.is_loopback() && args.lookup_token.is_none() {
        eprintln!(
            "warning: listening on {} without --lookup-token: anyone who reaches it can read contacts through /lookup/contact",
            args.host
        );
    }

    let cancel = CancellationToken::new();
    let signals = hlbridge_engine::runner::cancel_on_signal(cancel.clone());
    let serve_config = ServeConfig {
        bind: SocketAddr::new(args.host, args.port),
        lookup_ttl: args.lookup_ttl,
        lookup_location_id: args.location_id.clone(),
        lookup_token: args.lookup_token.clone(),
        highlevel: api,
        ..ServeConfig::default()
    };
    let server = serve(engine.clone(), serve_config, cancel.clone()).await?;
    let base = &server.base_url;
    println!("hlbridge serving on {base}");
    println!("  data:      {}", data_dir.display());
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
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err() && parse_duration("5d").is_err());
    }

    #[test]
    fn pairs() {
        assert_eq!(pair("a=b=c", "x").ok(), Some(("a", "b=c")));
        assert!(pair("=b", "x").is_err() && pair("ab", "x").is_err());
    }
}
