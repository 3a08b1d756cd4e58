//! Connections and security: the vault, stored connections with their token lifecycle,
//! users and roles, the audit log, and least-privilege scopes.
//!
//! - [`vault`]: XChaCha20-Poly1305 encryption at rest of every secret, bound to its row, with
//!   a master key from `HLBRIDGE_MASTER_KEY` or a 0600 key file, and online key rotation.
//! - [`connections`] and [`tokens`]: HighLevel (OAuth, agency installs with per-location
//!   tokens, Private Integration Tokens) and app connections; refresh single-flight across
//!   processes; broken connections pause their flows.
//! - [`users`]: roles and the permission table, argon2id passwords, sessions, API tokens,
//!   login throttling — what the admin API's extractors call.
//! - [`audit`]: the append-only audit log.
//! - [`scopes`]: the scopes flows need.
//!
//! [`Security`] bundles them over one store and data directory; [`Engine::security`] gives
//! the engine's. The runner consults [`Engine::is_broken`] so a broken connection's runs wait
//! (without spending their retry budget) instead of failing.

pub mod audit;
pub mod connections;
pub mod oauth;
pub mod scopes;
pub mod secret;
pub mod tokens;
pub mod users;
pub mod vault;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use audit::{Actor, ActorKind, AuditAction, AuditEntry, AuditEvent};
pub use connections::{
    AppAuth, ConnectionError, ConnectionInfo, ConnectionKind, ConnectionSettings, Connections,
    ConnectionsApi, Health,
};
pub use secret::Secret;
pub use tokens::{DbTokenSource, LocationTokenSource, RefreshSettings};
pub use users::{Action, AuthError, Principal, Role, Session, UserSettings, Users};
pub use vault::{MasterKey, Vault, VaultError};

use crate::engine::Engine;
use crate::store::security::SecurityStore;
use crate::store::{ClaimedRun, SqliteStore, StepRecord, StoreError, now};
use crate::validate::CompiledFlow;

/// Settings of the security services.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecurityConfig {
    /// Users, sessions and login throttling.
    pub users: UserSettings,
    /// Connections and token refresh.
    pub connections: ConnectionSettings,
}

/// Why the security services could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store has no security side.
    #[error("this store does not support connections, users or the vault")]
    Unsupported,
}

struct Shared {
    store: Arc<dyn SecurityStore>,
    data_dir: PathBuf,
    config: SecurityConfig,
    master: Mutex<Option<MasterKey>>,
    vault: tokio::sync::OnceCell<Arc<Vault>>,
    users: Users,
}

/// The security services over one store and data directory. Cheap to clone. The vault
/// (and so the master key) is only loaded when first needed, so commands that do not touch
/// secrets (users, tokens, audit) never create a key file.
#[derive(Clone)]
pub struct Security {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("data_dir", &self.shared.data_dir)
            .finish_non_exhaustive()
    }
}

impl Security {
    /// The services over `store`; the master key is read from `HLBRIDGE_MASTER_KEY` or
    /// `data_dir/master.key` when first needed.
    pub fn new(store: Arc<dyn SecurityStore>, data_dir: &Path, config: SecurityConfig) -> Security {
        Security {
            shared: Arc::new(Shared {
                users: Users::new(store.clone(), config.users),
                store,
                data_dir: data_dir.to_path_buf(),
                config,
                master: Mutex::new(None),
                vault: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// Opens the SQLite store of a data directory and the services over it.
    pub async fn open(data_dir: &Path, config: SecurityConfig) -> Result<Security, SecurityError> {
        let store = SqliteStore::open(data_dir).await?;
        Ok(Security::new(Arc::new(store), data_dir, config))
    }

    /// Uses this master key instead of the environment or the key file (before the vault
    /// is first used).
    pub fn with_master_key(self, key: MasterKey) -> Security {
        *self.shared.master.lock() = Some(key);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SecurityStore> {
        &self.shared.store
    }

    /// Users, sessions and API tokens.
    pub fn users(&self) -> &Users {
        &self.shared.users
    }

    /// The vault (loading the master key and the key ring on first use).
    pub async fn vault(&self) -> Result<Arc<Vault>, VaultError> {
        self.shared
            .vault
            .get_or_try_init(|| async {
                let given = self.shared.master.lock().take();
                let key = match given {
                    Some(k) => k,
                    None => MasterKey::load(&self.shared.data_dir)?,
                };
                Ok::<_, VaultError>(Arc::new(Vault::open(self.shared.store.clone(), key).await?))
            })
            .await
            .cloned()
    }

    /// The connections service.
    pub async fn connections(&self) -> Result<Connections, VaultError> {
        Ok(Connections::new(
            self.shared.store.clone(),
            self.vault().await?,
            self.shared.config.connections,
        ))
    }

    /// Records an audit event.
    pub async fn audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        audit::record(self.shared.store.as_ref(), event).await
    }
}

/// How long the runner trusts a connection's health before asking the store again.
const HEALTH_TTL: Duration = Duration::from_secs(2);

/// How long a run of a paused flow waits before it is looked at again.
const PAUSE_RETRY: Duration = Duration::from_secs(30);

/// The engine's security state (lazily built services and the health cache).
#[derive(Default)]
pub(crate) struct EngineSecurity {
    services: std::sync::OnceLock<Option<Security>>,
    health: Mutex<HashMap<String, Instant>>,
}

impl Engine {
    /// The security services (vault, connections, users, audit) on the engine's store and
    /// data directory; `None` when the store has no security side.
    pub fn security(&self) -> Option<Security> {
        self.inner
            .security
            .services
            .get_or_init(|| {
                self.inner.store.security().map(|s| {
                    Security::new(s, &self.inner.config.data_dir, SecurityConfig::default())
                })
            })
            .clone()
    }

    /// Why HighLevel connection `connection` is broken (`None`: it is not, or it is not a
    /// stored connection). A healthy answer is cached for a couple of seconds (the runner
    /// asks for every run); a broken one is always read afresh, so a connection authorized
    /// again resumes its flows at once.
    pub async fn is_broken(&self, connection: &str) -> Option<String> {
        if let Some(at) = self.inner.security.health.lock().get(connection)
            && at.elapsed() < HEALTH_TTL
        {
            return None;
        }
        self.read_health(connection).await
    }

    async fn read_health(&self, connection: &str) -> Option<String> {
        let store = self.inner.store.security()?;
        let v = match store.get_connection(connection).await {
            Ok(c) => c
                .filter(|c| c.status == "broken")
                .map(|c| c.status_reason.unwrap_or_else(|| "broken".into())),
            Err(e) => {
                tracing::warn!(connection, error = %e, "could not read the connection's health");
                None
            }
        };
        let mut cache = self.inner.security.health.lock();
        if v.is_none() {
            cache.insert(connection.to_owned(), Instant::now());
        } else {
            cache.remove(connection);
        }
        v
    }

    /// Why a flow is paused: one of its HighLevel connections is broken. `fresh`: skip the
    /// cache (after a step failed, when the connection may just have broken).
    pub(crate) async fn paused_by(&self, flow: &CompiledFlow, fresh: bool) -> Option<String> {
        self.inner.store.security()?;
        for conn in scopes::flow_connections(flow) {
            let broken = if fresh {
                self.read_health(&conn).await
            } else {
                self.is_broken(&conn).await
            };
            if let Some(reason) = broken {
                return Some(format!(
                    "paused: HighLevel connection `{conn}` is broken ({reason}); authorize it again with `hlbridge connect`"
                ));
            }
        }
        None
    }

    /// Puts a run of a paused flow back in the queue without spending an attempt, after
    /// saving the step results it has (so finished steps are not done again).
    pub(crate) async fn defer_paused(&self, run: &ClaimedRun, steps: &[StepRecord], reason: &str) {
        let Some(store) = self.inner.store.security() else {
            return;
        };
        for rec in steps {
            if let Err(e) = self.inner.store.save_step_result(run.id, rec).await {
                tracing::error!(run = %run.id, error = %e, "saving a step result failed");
            }
        }
        match store.defer_run(run, now() + PAUSE_RETRY, reason).await {
            Ok(true) => tracing::warn!(run = %run.id, flow = %run.flow_id, reason, "run deferred"),
            Ok(false) => {
                tracing::warn!(run = %run.id, "run was claimed by another worker before it was deferred")
            }
            Err(e) => tracing::error!(run = %run.id, error = %e, "deferring the run failed"),
        }
    }
}
