//! hlbridge's HTTP side: webhook ingress into the engine, the contact lookup, the admin API
//! and web UI, health and metrics, and [`serve`], which runs them together with the engine's
//! workers and triggers.
//!
//! Routes (see [`router`]):
//! - `POST /hooks/highlevel`: a signed HighLevel webhook → [`Engine::accept_highlevel_webhook`].
//!   200 `{runs, duplicate}`; 401 forged or stale, 400 malformed; **429** (with
//!   `Retry-After`) when the store is unavailable, because HighLevel retries only after a
//!   429 and would otherwise drop the event. A verified event about a contact also refreshes
//!   that contact's lookup cache entry.
//! - `POST /hooks/app/{flow}`: an app's event → [`Engine::accept_app_webhook`]. 202
//!   `{run_id}`, or 200 `{duplicate: true}` for a copy; 401, 400, 404, or 503 (retry).
//! - `GET /lookup/contact?email=…|id=…`: profile, tasks and notes in one JSON, cached
//!   ([`lookup`]).
//! - `GET /healthz`: 200 `{status: "ok"}` when the store answers, else 503.
//! - `GET /metrics`: Prometheus text: ingress and lookup counters, runs by state, queue
//!   depth, step latency histogram, HighLevel calls by status, 429s received, budget
//!   remaining per location, webhook signature failures.
//! - `/api/v1/…`: the admin REST API ([`api`]), its OpenAPI document at
//!   `/api/v1/openapi.json`.
//! - everything else: the web UI ([`ui`]): dashboard, flow builder, templates, runs, dead
//!   letters, connections, audit log, users and tokens.
//!
//! The admin API and the UI need a signed-in user or an API token ([`auth`]); users, roles,
//! sessions, tokens and the audit log come from an [`access::AccessBackend`].
//!
//! Every rejected webhook (forged, stale, malformed, replayed) is logged with
//! `tracing::warn!` (target `hlbridge::ingress`) and counted ([`metrics`]).

pub mod access;
pub mod api;
pub mod auth;
pub mod catalog;
pub mod connections;
pub mod flowstore;
pub mod gallery;
pub mod lookup;
pub mod metrics;
mod routes;
pub mod telemetry;
pub mod tester;
pub mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hlbridge_engine::{Engine, HighLevelApi};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use access::{AccessBackend, EngineAccess, NoAccess};
pub use connections::{ConfiguredConnections, ConnectionsBackend};
pub use flowstore::FlowStore;
pub use lookup::{ContactLookup, Looked, LookupConfig, LookupError, LookupKey, LookupStats};
pub use metrics::{IngressCounts, Metrics};
pub use routes::router;
pub use telemetry::{Telemetry, open_engine};

use crate::metrics::IngressMetrics;

/// Server settings.
#[derive(Clone)]
pub struct ServeConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub bind: SocketAddr,
    /// Largest request body accepted, in bytes (larger ones get 413).
    pub body_limit: usize,
    /// How long a looked-up contact is served from memory before HighLevel is asked again
    /// (a webhook about the contact refreshes it sooner).
    pub lookup_ttl: Duration,
    /// Most contacts kept in the lookup cache.
    pub lookup_capacity: usize,
    /// HighLevel connection the contact lookup uses.
    pub lookup_connection: String,
    /// Location id given to `contacts.find_duplicate` for lookups by email (`None`: the
    /// connection's own location).
    pub lookup_location_id: Option<String>,
    /// When set, `GET /lookup/contact` requires `Authorization: Bearer <token>` (contact
    /// data is personal data: set it whenever the server is reachable by others).
    pub lookup_token: Option<String>,
    /// The HighLevel API the contact lookup calls: the one the engine was opened with.
    /// `None`: lookups answer 503.
    pub highlevel: Option<Arc<dyn HighLevelApi>>,
    /// Start the engine's workers ([`Engine::spawn_workers`]).
    pub run_workers: bool,
    /// Start the engine's polls and schedules ([`Engine::run_triggers`]).
    pub run_triggers: bool,
    /// On shutdown, how long in-flight requests and runs may take to finish before they are
    /// abandoned (an abandoned run is claimed again once its lease lapses).
    pub shutdown_grace: Duration,
    /// Serve the admin API (`/api/v1`) and the web UI.
    pub admin: bool,
    /// Users, sessions, API tokens and the audit log. `None`: the engine's
    /// ([`EngineAccess`] over `Engine::security`).
    pub access: Option<Arc<dyn AccessBackend>>,
    /// Connections. `None`: [`ConfiguredConnections`] of the engine configuration.
    pub connections: Option<Arc<dyn ConnectionsBackend>>,
    /// Where flows created or changed through the API and the UI are written as
    /// `<id>.toml` (a flow loaded from a file is written back to that file). `None`: they
    /// live in the engine and the database only (download them to keep them).
    pub flows_dir: Option<PathBuf>,
    /// The counters the engine's wrappers feed ([`open_engine`]). `None`: fresh ones (runs
    /// by state and queue depth still come from the store).
    pub telemetry: Option<Telemetry>,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("bind", &self.bind)
            .field("body_limit", &self.body_limit)
            .field("lookup_ttl", &self.lookup_ttl)
            .field("lookup_capacity", &self.lookup_capacity)
            .field("lookup_connection", &self.lookup_connection)
            .field("lookup_location_id", &self.lookup_location_id)
            .field("lookup_token", &self.lookup_token.as_ref().map(|_| "***"))
            .field("highlevel", &self.highlevel.is_some())
            .field("run_workers", &self.run_workers)
            .field("run_triggers", &self.run_triggers)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("admin", &self.admin)
            .field("access", &self.access.is_some())
            .field("connections", &self.connections.is_some())
            .field("flows_dir", &self.flows_dir)
            .field("telemetry", &self.telemetry.is_some())
            .finish()
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit: 1024 * 1024,
            lookup_ttl: Duration::from_secs(60),
            lookup_capacity: 10_000,
            lookup_connection: "default".into(),
            lookup_location_id: None,
            lookup_token: None,
            highlevel: None,
            run_workers: true,
            run_triggers: true,
            shutdown_grace: Duration::from_secs(30),
            admin: true,
            access: None,
            connections: None,
            flows_dir: None,
            telemetry: None,
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(#[source] std::io::Error),
    /// A background task panicked.
    #[error("{0} task failed: {1}")]
    Task(&'static str, String),
}

struct StateInner {
    engine: Engine,
    lookup: ContactLookup,
    lookup_token: Option<String>,
    body_limit: usize,
    ingress: IngressMetrics,
    admin: bool,
    access: Arc<dyn AccessBackend>,
    connections: Arc<dyn ConnectionsBackend>,
    flows: FlowStore,
    telemetry: Telemetry,
}

/// What the handlers share: the engine, the contact lookup and the counters. Cheap to
/// clone.
#[derive(Clone)]
pub struct ServerState {
    inner: Arc<StateInner>,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("engine", &self.inner.engine)
            .field("lookup", &self.inner.lookup)
            .finish_non_exhaustive()
    }
}

impl ServerState {
    /// The state for `engine` with `config`'s lookup, limits and admin backends. Without
    /// [`ServeConfig::access`], users come from the engine's security services
    /// ([`EngineAccess`]), or nobody can sign in ([`NoAccess`]) when its store has none.
    pub fn new(engine: Engine, config: &ServeConfig) -> Self {
        let access = config
            .access
            .clone()
            .unwrap_or_else(|| match engine.security() {
                Some(s) => EngineAccess::new(s).shared(),
                None => Arc::new(NoAccess),
            });
        let connections = config.connections.clone().unwrap_or_else(|| {
            Arc::new(ConfiguredConnections::new(
                engine.clone(),
                config.highlevel.clone(),
            ))
        });
        let lookup = ContactLookup::new(
            config.highlevel.clone(),
            LookupConfig {
                ttl: config.lookup_ttl,
                capacity: config.lookup_capacity,
                connection: config.lookup_connection.clone(),
                location_id: config.lookup_location_id.clone(),
            },
        );
        Self {
            inner: Arc::new(StateInner {
                engine,
                lookup,
                lookup_token: config.lookup_token.clone(),
                body_limit: config.body_limit,
                ingress: IngressMetrics::default(),
                admin: config.admin,
                access,
                connections,
                flows: FlowStore::new(config.flows_dir.clone()),
                telemetry: config.telemetry.clone().unwrap_or_default(),
            }),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The contact lookup.
    pub fn lookup(&self) -> &ContactLookup {
        &self.inner.lookup
    }

    /// A snapshot of every counter.
    pub fn metrics(&self) -> Metrics {
        Metrics {
            highlevel: self.inner.ingress.snapshot(metrics::Source::HighLevel),
            app: self.inner.ingress.snapshot(metrics::Source::App),
            lookup: self.inner.lookup.stats(),
        }
    }

    /// Users, sessions, tokens and the audit log.
    pub fn access(&self) -> &Arc<dyn AccessBackend> {
        &self.inner.access
    }

    /// Connections.
    pub fn connections(&self) -> &Arc<dyn ConnectionsBackend> {
        &self.inner.connections
    }

    /// The flows' sources.
    pub fn flows(&self) -> &FlowStore {
        &self.inner.flows
    }

    /// The engine's counters.
    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    /// Whether the admin API and the UI are served.
    pub fn admin_enabled(&self) -> bool {
        self.inner.admin
    }

    /// Everything `/metrics` shows about the engine (asks the store for run counts, and
    /// reads the steps of runs finished since the last call).
    pub async fn engine_metrics(&self) -> metrics::EngineMetrics {
        let t = &self.inner.telemetry;
        t.scan(&self.inner.engine).await;
        metrics::EngineMetrics {
            runs_by_state: self.inner.engine.store().count_runs(None).await.ok(),
            step_latency: t.step_latency(),
            calls_by_status: t.calls_by_status(),
            rate_limited: t.rate_limited(),
            budgets: t.budgets(),
        }
    }

    pub(crate) fn ingress(&self) -> &IngressMetrics {
        &self.inner.ingress
    }

    pub(crate) fn lookup_token(&self) -> Option<&str> {
        self.inner.lookup_token.as_deref()
    }

    pub(crate) fn body_limit(&self) -> usize {
        self.inner.body_limit
    }
}

/// A running server with the engine's workers and triggers.
#[derive(Debug)]
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// `http://<addr>`.
    pub base_url: String,
    state: ServerState,
    token: CancellationToken,
    grace: Duration,
    http: JoinHandle<std::io::Result<()>>,
    workers: Vec<JoinHandle<()>>,
    triggers: Option<JoinHandle<()>>,
}

/// Binds `config.bind`, then starts the HTTP server, the engine's workers
/// ([`Engine::spawn_workers`]) and triggers ([`Engine::run_triggers`]). Everything stops
/// when `cancel` (or [`RunningServer::shutdown`]) is triggered: the server stops accepting
/// and finishes the requests in flight, workers finish or release their runs.
pub async fn serve(
    engine: Engine,
    config: ServeConfig,
    cancel: CancellationToken,
) -> Result<RunningServer, ServerError> {
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.bind,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.bind,
        source,
    })?;
    let token = cancel.child_token();
    let state = ServerState::new(engine.clone(), &config);
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let stop = token.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    let workers = if config.run_workers {
        engine.spawn_workers(&token)
    } else {
        Vec::new()
    };
    let triggers = config.run_triggers.then(|| {
        let engine = engine.clone();
        let token = token.clone();
        tokio::spawn(async move { engine.run_triggers(token).await })
    });
    tracing::info!(%addr, workers = workers.len(), "hlbridge server listening");
    Ok(RunningServer {
        addr,
        base_url: format!("http://{addr}"),
        state,
        token,
        grace: config.shutdown_grace,
        http,
        workers,
        triggers,
    })
}

impl RunningServer {
    /// The handlers' shared state (engine, lookup, counters).
    pub fn state(&self) -> &ServerState {
        &self.state
    }

    /// A token that stops this server when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Stops gracefully: stops accepting connections, lets requests in flight finish, lets
    /// runs in flight finish their current step and releases them, and returns when all
    /// is done (or the grace period is over).
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.token.cancel();
        self.join().await
    }

    /// Waits until the server is stopped (its cancel token, or the HTTP server failing),
    /// then shuts down gracefully as [`RunningServer::shutdown`] does.
    pub async fn join(mut self) -> Result<(), ServerError> {
        let mut http_result = None;
        tokio::select! {
            () = self.token.cancelled() => {}
            r = &mut self.http => {
                http_result = Some(r);
                self.token.cancel();
            }
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        let http_result = match http_result {
            Some(r) => r,
            None => match tokio::time::timeout_at(deadline, &mut self.http).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("requests still in flight after the grace period; abandoned");
                    self.http.abort();
                    Ok(Ok(()))
                }
            },
        };
        let mut first_error = match http_result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(ServerError::Http(e)),
            Err(e) => Some(ServerError::Task("HTTP", e.to_string())),
        };
        let mut tasks: Vec<(&'static str, JoinHandle<()>)> =
            self.workers.drain(..).map(|h| ("worker", h)).collect();
        if let Some(t) = self.triggers.take() {
            tasks.push(("triggers", t));
        }
        for (name, mut task) in tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(ServerError::Task(name, e.to_string()));
                }
                Err(_) => {
                    tracing::warn!(
                        task = name,
                        "still busy after the grace period; abandoned (its runs are claimed again when their lease lapses)"
                    );
                    task.abort();
                }
            }
        }
        tracing::info!(addr = %self.addr, "hlbridge server stopped");
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    /// Dropping a running server stops it (without waiting; use
    /// [`RunningServer::shutdown`] to wait for in-flight work).
    fn drop(&mut self) {
        self.token.cancel();
    }
}
