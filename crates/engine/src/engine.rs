//! The [`Engine`]: configuration, the loaded flows, the store and the HighLevel API, and the
//! entry points the CLI and the server use (load flows, enqueue, run workers, ingress).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{HighLevelApi, NoHighLevel};
use crate::net::NetworkPolicy;
use crate::store::{NewEvent, RunDetail, RunId, SqliteStore, Store, StoreError};
use crate::template::{CustomFieldResolver, HighLevelCustomFields};
use crate::validate::{CompiledFlow, Diagnostic, ValidationContext};

/// An app connection used by `http` steps: a base URL and headers carrying its secret.
/// `Debug` shows the header names only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppConnection {
    /// Base URL that relative step URLs are joined to.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Headers added to every request (e.g. `Authorization = "Bearer …"`); never shown in
    /// run history.
    #[serde(default)]
    pub headers: HashMap<String, String>,
}

/// Engine configuration. `Debug` never shows secrets (app secrets and app connection
/// headers are redacted).
#[derive(Clone)]
pub struct EngineConfig {
    /// Data directory; the database is `hlbridge.db` inside. See
    /// [`crate::store::default_data_dir`].
    pub data_dir: PathBuf,
    /// Worker tasks started by [`Engine::spawn_workers`].
    pub workers: usize,
    /// Runs a worker claims (and runs concurrently) at a time.
    pub claim_batch: u32,
    /// Lease of a claimed run; renewed while it runs. A run whose worker died is claimed
    /// again once its lease lapses.
    pub lease: Duration,
    /// How long an idle worker sleeps before looking for due runs again (it is woken at
    /// once when this process enqueues a run).
    pub idle_poll: Duration,
    /// Which destinations `http` steps may reach.
    pub network: NetworkPolicy,
    /// Timeout of one `http` step request.
    pub http_timeout: Duration,
    /// App secrets by name (app webhook triggers refer to them).
    pub app_secrets: HashMap<String, String>,
    /// App connections by name (`http` steps refer to them).
    pub app_connections: HashMap<String, AppConnection>,
    /// Public keys trusted for HighLevel webhooks: SPKI PEM (Ed25519 or RSA) or raw base64
    /// Ed25519 keys.
    pub highlevel_webhook_keys: Vec<String>,
    /// Accept HighLevel's published RSA key too (legacy `x-wh-signature`).
    pub trust_highlevel_rsa_key: bool,
    /// Replay window of HighLevel webhooks (`timestamp` must be this close to now).
    pub webhook_window: Duration,
    /// How long a location's custom field list is cached.
    pub custom_field_ttl: Duration,
    /// Prefix of worker ids (host and process by default).
    pub worker_name: String,
    /// HighLevel connection names with their granted scopes (`None`: unknown), for
    /// validation: flows naming another connection, or calling an operation whose scope
    /// the connection lacks, are refused. `None`: not checked.
    pub highlevel_connections: Option<HashMap<String, Option<Vec<String>>>>,
}

impl std::fmt::Debug for AppConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.headers.keys().collect();
        names.sort();
        f.debug_struct("AppConnection")
            .field("base_url", &self.base_url)
            .field("headers", &names)
            .finish()
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut secrets: Vec<&String> = self.app_secrets.keys().collect();
        secrets.sort();
        f.debug_struct("EngineConfig")
            .field("data_dir", &self.data_dir)
            .field("workers", &self.workers)
            .field("lease", &self.lease)
            .field("network", &self.network)
            .field("app_secrets", &secrets)
            .field("app_connections", &self.app_connections)
            .field("highlevel_connections", &self.highlevel_connections)
            .field("worker_name", &self.worker_name)
            .finish_non_exhaustive()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            data_dir: crate::store::default_data_dir(),
            workers: 2,
            claim_batch: 16,
            lease: Duration::from_secs(60),
            idle_poll: Duration::from_millis(500),
            network: NetworkPolicy::default(),
            http_timeout: Duration::from_secs(30),
            app_secrets: HashMap::new(),
            app_connections: HashMap::new(),
            highlevel_webhook_keys: Vec::new(),
            trust_highlevel_rsa_key: false,
            webhook_window: Duration::from_secs(300),
            custom_field_ttl: Duration::from_secs(600),
            worker_name: format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into()),
                std::process::id()
            ),
            highlevel_connections: None,
        }
    }
}

impl EngineConfig {
    /// The default configuration with `data_dir`.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }
}

/// Engine failures.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// No loaded flow has this id.
    #[error("unknown flow `{0}`")]
    UnknownFlow(String),
    /// Flows failed to compile.
    #[error("{} error(s) in flow files", .0.len())]
    Flows(Vec<Diagnostic>),
    /// A run could not be executed now (already running, or finished).
    #[error("run {0} cannot be claimed now (running elsewhere or finished)")]
    NotClaimable(RunId),
}

pub(crate) struct Inner {
    pub(crate) config: EngineConfig,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) highlevel: Arc<dyn HighLevelApi>,
    pub(crate) custom_fields: Arc<dyn CustomFieldResolver>,
    pub(crate) flows: RwLock<HashMap<String, Arc<CompiledFlow>>>,
    pub(crate) http: reqwest::Client,
    pub(crate) wake: tokio::sync::Notify,
    pub(crate) verifier: hlbridge_highlevel::webhooks::WebhookVerifier,
    pub(crate) security: crate::security::EngineSecurity,
}

/// The engine. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.inner.config.data_dir)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the engine on its data directory (creating and migrating the database), with
    /// no HighLevel connection (HighLevel steps fail until one is given with
    /// [`Engine::open_with`]).
    pub async fn open(config: EngineConfig) -> Result<Engine, EngineError> {
        Self::open_with(config, Arc::new(NoHighLevel)).await
    }

    /// Opens the engine with a HighLevel API (the real client's adapter, the sandbox, or a
    /// fake in tests).
    pub async fn open_with(
        config: EngineConfig,
        highlevel: Arc<dyn HighLevelApi>,
    ) -> Result<Engine, EngineError> {
        let store = SqliteStore::open(&config.data_dir).await?;
        Self::with_store(config, Arc::new(store), highlevel)
    }

    /// Builds the engine on any [`Store`] (e.g. a future PostgreSQL backend).
    pub fn with_store(
        config: EngineConfig,
        store: Arc<dyn Store>,
        highlevel: Arc<dyn HighLevelApi>,
    ) -> Result<Engine, EngineError> {
        use hlbridge_highlevel::webhooks::{PublicKey, WebhookVerifier};
        let mut keys = Vec::new();
        for (i, k) in config.highlevel_webhook_keys.iter().enumerate() {
            keys.push(PublicKey::parse(k).map_err(|e| {
                EngineError::Config(format!("HighLevel webhook key #{}: {e}", i + 1))
            })?);
        }
        if config.trust_highlevel_rsa_key {
            keys.push(PublicKey::highlevel_rsa().map_err(|e| EngineError::Config(e.to_string()))?);
        }
        let verifier = WebhookVerifier::new(keys).with_window(config.webhook_window);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.http_timeout)
            .user_agent(concat!("hlbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EngineError::Config(format!("HTTP client: {e}")))?;
        let custom_fields = Arc::new(HighLevelCustomFields::new(
            highlevel.clone(),
            config.custom_field_ttl,
        ));
        Ok(Engine {
            inner: Arc::new(Inner {
                config,
                store,
                highlevel,
                custom_fields,
                flows: RwLock::new(HashMap::new()),
                http,
                wake: tokio::sync::Notify::new(),
                verifier,
                security: Default::default(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The context flows are validated against (configured HighLevel and app connections).
    pub fn validation_context(&self) -> ValidationContext {
        ValidationContext {
            connections: self.inner.config.highlevel_connections.clone(),
            app_connections: Some(self.inner.config.app_connections.keys().cloned().collect()),
        }
    }

    /// Compiles flow files (or directories of `*.toml`) and, when all compile, replaces
    /// the loaded flows with them and records them in the store. Returns the flow ids.
    pub async fn load_flows(&self, paths: &[impl AsRef<Path>]) -> Result<Vec<String>, EngineError> {
        let flows = crate::validate::compile_paths(paths, &self.validation_context())
            .map_err(EngineError::Flows)?;
        self.install(flows, true).await
    }

    /// Adds (or replaces) already compiled flows, keeping the others loaded.
    pub async fn add_flows(&self, flows: Vec<CompiledFlow>) -> Result<Vec<String>, EngineError> {
        self.install(flows, false).await
    }

    async fn install(
        &self,
        flows: Vec<CompiledFlow>,
        replace: bool,
    ) -> Result<Vec<String>, EngineError> {
        for f in &flows {
            let def = serde_json::to_value(&f.flow).unwrap_or(Value::Null);
            let before = self
                .inner
                .store
                .upsert_flow(f.id(), f.flow.name.as_deref(), &def, f.flow.enabled)
                .await?;
            // Flows loaded from files changed outside hlbridge (an editor, a deploy): the
            // audit log records what changed when it was loaded. The admin API records its
            // own changes with the user who made them.
            if replace {
                self.audit_file_change(f, &def, before).await;
            }
        }
        let ids: Vec<String> = flows.iter().map(|f| f.id().to_owned()).collect();
        if let Ok(mut map) = self.inner.flows.write() {
            if replace {
                map.clear();
            }
            for f in flows {
                map.insert(f.id().to_owned(), Arc::new(f));
            }
        }
        Ok(ids)
    }

    async fn audit_file_change(
        &self,
        f: &CompiledFlow,
        def: &Value,
        before: Option<crate::store::PreviousFlow>,
    ) {
        use crate::security::{Actor, AuditAction, AuditEvent, audit};
        let Some(security) = self.inner.store.security() else {
            return;
        };
        let mut actions = Vec::new();
        match &before {
            None => actions.push(AuditAction::FlowCreated),
            Some(prev) => {
                // Switching a flow on or off is its own event, not a change of definition.
                let without_enabled = |v: &Value| {
                    let mut v = v.clone();
                    if let Some(o) = v.as_object_mut() {
                        o.remove("enabled");
                    }
                    v
                };
                if without_enabled(&prev.definition) != without_enabled(def) {
                    actions.push(AuditAction::FlowChanged);
                }
                match (prev.enabled, f.flow.enabled) {
                    (false, true) => actions.push(AuditAction::FlowEnabled),
                    (true, false) => actions.push(AuditAction::FlowDisabled),
                    _ => {}
                }
            }
        }
        for action in actions {
            let event = AuditEvent::new(Actor::system("flow files"), action)
                .target(f.id())
                .details(serde_json::json!({ "file": f.file }));
            audit::record_or_log(security.as_ref(), event).await;
        }
    }

    /// A loaded flow.
    pub fn flow(&self, id: &str) -> Option<Arc<CompiledFlow>> {
        self.inner
            .flows
            .read()
            .ok()
            .and_then(|m| m.get(id).cloned())
    }

    /// Every loaded flow, sorted by id.
    pub fn flows(&self) -> Vec<Arc<CompiledFlow>> {
        let mut v: Vec<_> = self
            .inner
            .flows
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.id().cmp(b.id()));
        v
    }

    /// Enqueues an event for a loaded flow (event and run in one transaction); `None` when
    /// the dedupe key was seen before. Wakes the workers.
    pub async fn enqueue(
        &self,
        flow_id: &str,
        dedupe_key: &str,
        payload: Value,
    ) -> Result<Option<RunId>, EngineError> {
        if self.flow(flow_id).is_none() {
            return Err(EngineError::UnknownFlow(flow_id.to_owned()));
        }
        let id = self
            .inner
            .store
            .enqueue_event(NewEvent {
                flow_id: flow_id.to_owned(),
                dedupe_key: dedupe_key.to_owned(),
                payload,
                seen_key: None,
            })
            .await?;
        if id.is_some() {
            self.inner.wake.notify_waiters();
        }
        Ok(id)
    }

    pub(crate) async fn enqueue_many(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RunId>, EngineError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<RunId> = self
            .inner
            .store
            .enqueue_events(events)
            .await?
            .into_iter()
            .flatten()
            .collect();
        if !ids.is_empty() {
            self.inner.wake.notify_waiters();
        }
        Ok(ids)
    }

    /// Runs one event through a flow now, in this task (for `hlbridge flows run`): the event
    /// is enqueued with a unique dedupe key, claimed at once and executed; returns the run's
    /// detail (each step's input, output, error and timings).
    pub async fn run_now(&self, flow_id: &str, payload: Value) -> Result<RunDetail, EngineError> {
        let key = format!("manual:{flow_id}:{}", uuid::Uuid::now_v7());
        let id = self
            .enqueue(flow_id, &key, payload)
            .await?
            .ok_or_else(|| EngineError::Config("unique key collided".into()))?;
        self.execute_run(id).await
    }

    /// Claims a given run and executes it now (if it is queued, failed or its lease lapsed),
    /// returning its detail afterwards.
    pub async fn execute_run(&self, id: RunId) -> Result<RunDetail, EngineError> {
        let worker = format!("{}-now", self.inner.config.worker_name);
        let run = self
            .inner
            .store
            .claim_run(id, &worker, self.inner.config.lease)
            .await?
            .ok_or(EngineError::NotClaimable(id))?;
        self.execute(run, &tokio_util::sync::CancellationToken::new())
            .await;
        self.inner
            .store
            .run_detail(id)
            .await?
            .ok_or_else(|| EngineError::Store(StoreError::NotFound(format!("run {id}"))))
    }
}
