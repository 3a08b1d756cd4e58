//! Options shared by the commands that run the engine (`hlbridge serve`, `hlbridge worker`):
//! where the store is (`--data DIR` or `--database URL`), the flows, the HighLevel and app
//! connections, the workers and the rate budget; and opening the engine from them.
//!
//! On PostgreSQL the HighLevel client takes every request's slot from the rate budget kept
//! in the database ([`hlbridge_engine::cluster::StoreBudget`]), so `serve` and any number
//! of `worker` processes together stay within each location's budget.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use hlbridge_engine::cluster::StoreBudget;
use hlbridge_engine::security::{Security, SecurityConfig};
use hlbridge_engine::store::{Database, PostgresOptions, RateBudget};
use hlbridge_engine::{
    AppConnection, ClientApi, Connection, Engine, EngineConfig, EngineError, HighLevelApi, Store,
};
use hlbridge_highlevel::{Auth, Client, ClientConfig, PacingConfig, Url};

/// Where the store is: `--database URL` (PostgreSQL) or SQLite in `--data DIR`.
#[derive(Args, Debug, Clone, Default)]
pub struct DatabaseArgs {
    /// Data directory (SQLite: the database is `hlbridge.db` inside). Default: the user's
    /// data directory (`$XDG_DATA_HOME/hlbridge` or `~/.local/share/hlbridge`).
    #[arg(long, env = "HLBRIDGE_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// PostgreSQL URL (`postgres://user:password@host:5432/database`) shared by `serve` and
    /// every `worker`; without it, SQLite in --data.
    #[arg(
        long,
        env = "HLBRIDGE_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database: Option<String>,
    /// PostgreSQL: most connections this process opens (plus one for LISTEN).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub db_connections: u32,
}

impl DatabaseArgs {
    /// The database named by the options.
    pub fn database(&self) -> Result<Database> {
        Ok(Database::resolve(
            self.database.as_deref(),
            self.data.clone(),
        )?)
    }

    /// PostgreSQL connection settings.
    pub fn postgres_options(&self, listen: bool) -> PostgresOptions {
        PostgresOptions {
            max_connections: self.db_connections.max(2),
            listen,
            ..PostgresOptions::default()
        }
    }

    /// Opens the store (creating and migrating it if needed).
    pub async fn open(&self, listen: bool) -> Result<(Database, Arc<dyn Store>)> {
        let db = self.database()?;
        let store = hlbridge_engine::store::backend::open_with(&db, &self.postgres_options(listen))
            .await
            .with_context(|| format!("opening the store at {db}"))?;
        Ok((db, store))
    }

    /// Opens an existing store (SQLite: never creates one).
    pub async fn open_existing(&self) -> Result<(Database, Arc<dyn Store>)> {
        let db = self.database()?;
        if !db.exists() {
            bail!(
                "no hlbridge database at {db} (give --data DIR, --database URL, or set HLBRIDGE_DATA / HLBRIDGE_DATABASE_URL)"
            );
        }
        self.open(false).await
    }
}

/// Options of the engine, shared by `serve` and `worker`.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Flow files, or directories of `*.toml` flows (default: `./flows` when it exists).
    /// Every process of a cluster must load the same flows.
    #[arg(long = "flows", value_name = "DIR|FILE", num_args = 1..)]
    pub flows: Vec<PathBuf>,
    /// Worker tasks executing runs in this process.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub workers: usize,
    /// Runs a worker task claims (and runs concurrently) at a time.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub claim_batch: u32,
    /// HighLevel API base URL (default: production; a sandbox's URL for tests).
    #[arg(long, env = "HLBRIDGE_BASE_URL", value_name = "URL")]
    pub highlevel_base_url: Option<String>,
    /// Private Integration Token of the `default` HighLevel connection.
    #[arg(
        long,
        env = "HLBRIDGE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Location (sub-account) id of the `default` connection.
    #[arg(long, value_name = "ID")]
    pub location_id: Option<String>,
    /// App secret `name=value` that app webhook flows refer to by name (repeatable; the
    /// environment variable takes a comma-separated list).
    #[arg(
        long = "app-secret",
        env = "HLBRIDGE_APP_SECRETS",
        hide_env_values = true,
        value_delimiter = ',',
        value_name = "NAME=VALUE"
    )]
    pub app_secrets: Vec<String>,
    /// App connection `name=base URL` that `http` steps refer to (repeatable).
    #[arg(long = "app-connection", value_name = "NAME=URL")]
    pub app_connections: Vec<String>,
    /// Header sent with every request of an app connection, `name:Header=value` (repeatable),
    /// e.g. `ecosend:Authorization=Bearer s3cret`.
    #[arg(long = "app-header", value_name = "NAME:HEADER=VALUE")]
    pub app_headers: Vec<String>,
    /// Let `http` steps reach private, link-local and loopback addresses (trusted networks
    /// only).
    #[arg(long)]
    pub allow_private_network: bool,
    /// Lease of a claimed run: a run whose process died is taken over after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub lease: Duration,
    /// Do not pace HighLevel calls (only for a sandbox with rate limits off: HighLevel
    /// answers 429 to a client that does not pace itself).
    #[arg(long)]
    pub no_pacing: bool,
    /// Each location's request budget, `N/INTERVAL` (HighLevel's is 100/10s). With
    /// --database it is shared by every process of the cluster.
    #[arg(long, default_value = "100/10s", value_parser = parse_rate, value_name = "N/INTERVAL")]
    pub rate_limit: (u32, Duration),
    /// Each location's daily request budget (HighLevel's is 200,000).
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    pub daily_limit: u32,
    /// Do not run polls and schedules in this process (another process of the cluster
    /// does; either way each poll and schedule fires once per tick across the cluster).
    #[arg(long)]
    pub no_triggers: bool,
}

/// Parses `500ms`, `5s`, `2m`, `1h` or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
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

/// Parses `100/10s`.
pub fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let (n, per) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not a rate like 100/10s"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: {n:?} is not a number"))?;
    let per = parse_duration(per)?;
    if n == 0 || per.is_zero() {
        return Err(format!("`{s}` must be positive"));
    }
    Ok((n, per))
}

/// Splits `name=value`.
pub fn pair<'a>(arg: &'a str, what: &str) -> Result<(&'a str, &'a str)> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim(), v)),
        _ => bail!("{what} must be NAME=VALUE, got `{arg}`"),
    }
}

impl EngineArgs {
    /// The flow paths: `--flows`, else `./flows` when it exists.
    pub fn flow_paths(&self) -> Vec<PathBuf> {
        if self.flows.is_empty() {
            let default = PathBuf::from("flows");
            if default.is_dir() {
                return vec![default];
            }
            return Vec::new();
        }
        self.flows.clone()
    }

    /// The engine configuration (without webhook keys, which only ingress needs).
    pub fn engine_config(&self, db: &Database) -> Result<EngineConfig> {
        let data_dir = match db {
            Database::Sqlite { data_dir } => data_dir.clone(),
            Database::Postgres { .. } => self
                .db
                .data
                .clone()
                .unwrap_or_else(hlbridge_engine::store::default_data_dir),
        };
        let mut cfg = EngineConfig::with_data_dir(data_dir);
        cfg.workers = self.workers.max(1);
        cfg.claim_batch = self.claim_batch.max(1);
        cfg.lease = self.lease.max(Duration::from_secs(1));
        if db.is_postgres() {
            // Other processes' enqueues arrive by NOTIFY; the idle poll is the fallback.
            cfg.idle_poll = Duration::from_millis(250);
        }
        cfg.network.allow_private_network = self.allow_private_network;
        for s in &self.app_secrets {
            let (k, v) = pair(s, "--app-secret")?;
            cfg.app_secrets.insert(k.to_owned(), v.to_owned());
        }
        for c in &self.app_connections {
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
        for h in &self.app_headers {
            let (name, header) = h
                .split_once(':')
                .ok_or_else(|| anyhow!("--app-header must be NAME:HEADER=VALUE, got `{h}`"))?;
            let (header, value) = pair(header, "--app-header")?;
            let conn = cfg.app_connections.get_mut(name.trim()).ok_or_else(|| {
                anyhow!("--app-header {name}: no --app-connection named `{name}`")
            })?;
            conn.headers.insert(header.to_owned(), value.to_owned());
        }
        let mut conns = HashMap::new();
        if self.token.is_some() {
            conns.insert("default".to_owned(), None);
        }
        cfg.highlevel_connections = Some(conns);
        Ok(cfg)
    }

    /// The HighLevel API of the `default` connection, when a token is given. On
    /// PostgreSQL (with pacing on) every request also takes a slot of the location's rate
    /// budget kept in the database.
    pub fn highlevel_api(
        &self,
        store: &Arc<dyn Store>,
    ) -> Result<Option<(Arc<dyn HighLevelApi>, Client)>> {
        let Some(token) = &self.token else {
            return Ok(None);
        };
        let client = self.client(store)?;
        let auth = match &self.location_id {
            Some(loc) => Auth::token_for(token.clone(), loc.clone()),
            None => Auth::token(token.clone()),
        };
        let mut conns = HashMap::new();
        conns.insert(
            "default".to_owned(),
            Connection {
                auth,
                location_id: self.location_id.clone(),
            },
        );
        Ok(Some((
            Arc::new(ClientApi::new(client.clone(), conns)),
            client,
        )))
    }

    /// The HighLevel client: paced per location by this process and, on PostgreSQL (with
    /// pacing on), by the rate budget kept in the database.
    pub fn client(&self, store: &Arc<dyn Store>) -> Result<Client> {
        let mut config = ClientConfig::default();
        if let Some(base) = &self.highlevel_base_url {
            config.base_url = Url::parse(base)
                .with_context(|| format!("invalid --highlevel-base-url `{base}`"))?;
        }
        let (burst, interval) = self.rate_limit;
        config.pacing = PacingConfig {
            burst,
            interval,
            daily: self.daily_limit,
            enabled: !self.no_pacing,
        };
        let client = if store.backend() == "postgres" && !self.no_pacing {
            let budget = StoreBudget::new(
                store.clone(),
                RateBudget::new(burst, interval, self.daily_limit, config.timeout),
            );
            Client::with_shared_budget(config, Arc::new(budget))
        } else {
            Client::new(config)
        }
        .map_err(|e| anyhow!("HighLevel client: {e}"))?;
        Ok(client)
    }

    /// Without `--token`: the HighLevel connections stored with `hlbridge connect`, when
    /// the store has any (their tokens are refreshed single-flight across every process
    /// sharing the store). Their app connections and secrets are added to `config`.
    pub async fn stored_connections_api(
        &self,
        store: &Arc<dyn Store>,
        config: &mut EngineConfig,
    ) -> Result<Option<(Arc<dyn HighLevelApi>, Client)>> {
        let Some(sec_store) = store.security() else {
            return Ok(None);
        };
        let stored = sec_store
            .list_connections()
            .await
            .context("reading the stored connections")?;
        if stored.is_empty() {
            return Ok(None);
        }
        let security = Security::new(sec_store, &config.data_dir, SecurityConfig::default());
        let conns = security.connections().await.context(
            "opening the vault (set HLBRIDGE_MASTER_KEY, or give --data with the key file)",
        )?;
        conns
            .apply_to_config(config)
            .await
            .context("reading the stored connections")?;
        if !stored.iter().any(|c| c.kind.starts_with("highlevel")) {
            return Ok(None);
        }
        let client = self.client(store)?;
        Ok(Some((Arc::new(conns.api(client.clone())), client)))
    }
}

/// An opened engine with its flows loaded.
pub struct Opened {
    /// The engine.
    pub engine: Engine,
    /// Its HighLevel API (`None`: no token).
    pub api: Option<Arc<dyn HighLevelApi>>,
    /// The store's location.
    pub database: Database,
    /// The flow paths loaded.
    pub flows: Vec<PathBuf>,
    /// The flow ids loaded.
    pub ids: Vec<String>,
    /// Counts the engine's HighLevel calls and reads the client's budgets, for `/metrics`
    /// and the dashboard.
    pub telemetry: hlbridge_server::Telemetry,
}

/// Opens the store and the engine with `config` (adjusted by `adjust`), and loads the
/// flows, printing every diagnostic when they do not compile.
pub async fn open_engine(
    args: &EngineArgs,
    listen: bool,
    adjust: impl FnOnce(&mut EngineConfig) -> Result<()>,
) -> Result<Opened> {
    let (database, store) = args.db.open(listen).await?;
    let mut config = args.engine_config(&database)?;
    adjust(&mut config)?;
    let telemetry = hlbridge_server::Telemetry::new();
    let api = match args.highlevel_api(&store)? {
        Some(found) => Some(found),
        None => args.stored_connections_api(&store, &mut config).await?,
    }
    .map(|(api, client)| {
        // The budgets are read from the very client that paces the calls.
        let budgets = ClientApi::new(client, HashMap::new());
        telemetry.api(api, Some(budgets))
    });
    let engine = Engine::with_store(
        config,
        store,
        api.clone()
            .unwrap_or_else(|| Arc::new(hlbridge_engine::api::NoHighLevel)),
    )
    .with_context(|| format!("opening the engine on {database}"))?;
    let flows = args.flow_paths();
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
    Ok(Opened {
        engine,
        api,
        database,
        flows,
        ids,
        telemetry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err() && parse_duration("5d").is_err());
        assert_eq!(parse_rate("100/10s"), Ok((100, Duration::from_secs(10))));
        assert_eq!(parse_rate("20/2s"), Ok((20, Duration::from_secs(2))));
        assert!(parse_rate("0/1s").is_err() && parse_rate("10").is_err());
    }

    #[test]
    fn pairs() {
        assert_eq!(pair("a=b=c", "x").ok(), Some(("a", "b=c")));
        assert!(pair("=b", "x").is_err() && pair("ab", "x").is_err());
    }
}
