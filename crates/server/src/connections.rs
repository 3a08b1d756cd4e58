//! Connections as the admin API and the UI see them, behind [`ConnectionsBackend`]: the
//! **adapter** to the engine's connection store (vault, OAuth connect, refresh, broken
//! states: `hlbridge_engine::security::Connections`).
//!
//! [`ConfiguredConnections`] lists both: the connections stored in the vault (created with
//! `hlbridge connect` or here: Private Integration Tokens and app connections; their health
//! comes from the store, and "refresh" checks them, refreshing an OAuth token when due) and
//! the ones the server was started with (`--token`, `--app-connection`): for those, a
//! refresh checks a HighLevel connection's health with a real call (`locations.get` on its
//! location, falling back to `users.search`) and marks it `broken` with HighLevel's answer
//! when the call is refused. OAuth connections are authorized with
//! `hlbridge connect highlevel --client-id …` (a browser round trip on a loopback callback).

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use hlbridge_engine::{Engine, HighLevelApi};

use crate::auth::Principal;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A connection as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionInfo {
    /// Name flows refer to.
    pub name: String,
    /// `highlevel` or `app`.
    pub kind: String,
    /// Location id (HighLevel) or base URL (app).
    pub detail: String,
    /// `ok`, `broken` or `unchecked`.
    pub health: String,
    /// Why it is broken, or what the last check said.
    pub message: Option<String>,
    /// Last check (RFC 3339).
    pub checked_at: Option<String>,
}

/// A connection to create.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct NewConnection {
    /// Name.
    pub name: String,
    /// `highlevel_token` (a Private Integration Token), `highlevel_oauth` or `app`.
    pub kind: String,
    /// The token (PIT), or the app's secret.
    #[serde(default)]
    pub token: Option<String>,
    /// HighLevel location id.
    #[serde(default)]
    pub location_id: Option<String>,
    /// App base URL.
    #[serde(default)]
    pub base_url: Option<String>,
}

/// Why a connection operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectionError {
    /// No such connection.
    #[error("unknown connection `{0}`")]
    NotFound(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// This backend cannot do it.
    #[error("{0}")]
    Unsupported(String),
}

/// The connection store the server uses (see the module docs). `by` is recorded in the
/// audit log.
pub trait ConnectionsBackend: Send + Sync {
    /// Every connection with its health.
    fn list(&self) -> BoxFuture<'_, Vec<ConnectionInfo>>;
    /// Creates a connection.
    fn create<'a>(
        &'a self,
        new: NewConnection,
        by: &'a Principal,
    ) -> BoxFuture<'a, Result<ConnectionInfo, ConnectionError>>;
    /// Refreshes a connection (token refresh for OAuth, a health check for the others).
    fn refresh<'a>(
        &'a self,
        name: &'a str,
        by: &'a Principal,
    ) -> BoxFuture<'a, Result<ConnectionInfo, ConnectionError>>;
}

/// The last health check of a connection: health, message, when.
type Health = (String, Option<String>, String);

/// The connections of the engine configuration (see the module docs).
pub struct ConfiguredConnections {
    engine: Engine,
    highlevel: Option<Arc<dyn HighLevelApi>>,
    health: Mutex<HashMap<String, Health>>,
}

impl std::fmt::Debug for ConfiguredConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredConnections")
            .finish_non_exhaustive()
    }
}

impl ConfiguredConnections {
    /// The connections of `engine`'s configuration; `highlevel` is the API health checks
    /// call.
    pub fn new(engine: Engine, highlevel: Option<Arc<dyn HighLevelApi>>) -> Self {
        ConfiguredConnections {
            engine,
            highlevel,
            health: Mutex::new(HashMap::new()),
        }
    }

    fn highlevel_names(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.engine.config().highlevel_connections {
            Some(m) => m.keys().cloned().collect(),
            None if self.highlevel.is_some() => vec!["default".to_owned()],
            None => Vec::new(),
        };
        if names.is_empty() && self.highlevel.is_some() {
            names.push("default".to_owned());
        }
        names.sort();
        names
    }

    fn info(&self, name: &str, kind: &str, detail: String) -> ConnectionInfo {
        let h = self.health.lock().get(name).cloned();
        ConnectionInfo {
            name: name.to_owned(),
            kind: kind.to_owned(),
            detail,
            health: h
                .as_ref()
                .map_or_else(|| "unchecked".to_owned(), |(s, _, _)| s.clone()),
            message: h.as_ref().and_then(|(_, m, _)| m.clone()),
            checked_at: h.map(|(_, _, at)| at),
        }
    }

    async fn stored(&self) -> Vec<ConnectionInfo> {
        let Some(sec) = self.engine.security() else {
            return Vec::new();
        };
        let conns = match sec.connections().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the vault is unavailable; stored connections not listed");
                return Vec::new();
            }
        };
        match conns.list().await {
            Ok(list) => list.into_iter().map(stored_info).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing the stored connections failed");
                Vec::new()
            }
        }
    }

    async fn all(&self) -> Vec<ConnectionInfo> {
        let mut out = self.stored().await;
        let configured: Vec<ConnectionInfo> = self
            .highlevel_names()
            .iter()
            .filter(|n| !out.iter().any(|c| &c.name == *n))
            .map(|n| self.info(n, "highlevel", "started with --token".into()))
            .collect();
        out.extend(configured);
        let mut apps: Vec<(&String, &hlbridge_engine::AppConnection)> =
            self.engine.config().app_connections.iter().collect();
        apps.sort_by(|a, b| a.0.cmp(b.0));
        for (name, app) in apps {
            if !out.iter().any(|c| &c.name == name) {
                out.push(self.info(name, "app", app.base_url.clone().unwrap_or_default()));
            }
        }
        out
    }

    async fn check(&self, name: &str) -> Result<ConnectionInfo, ConnectionError> {
        if let Some(sec) = self.engine.security()
            && let Ok(conns) = sec.connections().await
            && let Ok(Some(_)) = conns.get(name).await
        {
            return conns
                .check(name)
                .await
                .map(stored_info)
                .map_err(|e| ConnectionError::Invalid(e.to_string()));
        }
        let known = self.all().await;
        let Some(conn) = known.iter().find(|c| c.name == name) else {
            return Err(ConnectionError::NotFound(name.to_owned()));
        };
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let (health, message) = if conn.kind == "app" {
            (
                "ok".to_owned(),
                Some("app connection configured (its secret is sent with each request)".into()),
            )
        } else {
            match &self.highlevel {
                None => (
                    "broken".to_owned(),
                    Some("no HighLevel token is configured".to_owned()),
                ),
                Some(api) => probe(api.as_ref(), name).await,
            }
        };
        self.health
            .lock()
            .insert(name.to_owned(), (health, message, now));
        self.all()
            .await
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| ConnectionError::NotFound(name.to_owned()))
    }
}

/// A real call through the connection: `ok`, or `broken` with HighLevel's answer.
async fn probe(api: &dyn HighLevelApi, name: &str) -> (String, Option<String>) {
    let tries: [(&str, Value); 2] = [
        ("locations.get", json!({})),
        ("users.search", json!({ "limit": 1 })),
    ];
    let mut last = None;
    for (op_id, params) in tries {
        let Some(op) = hlbridge_highlevel::operations::find(op_id) else {
            continue;
        };
        match api.call(name, op, params).await {
            Ok(_) => return ("ok".to_owned(), Some(format!("{op_id} answered"))),
            Err(e) if matches!(e.status, Some(401 | 403)) => {
                return (
                    "broken".to_owned(),
                    Some(format!("HighLevel refused the token: {}", e.message)),
                );
            }
            Err(e) => last = Some(e.message),
        }
    }
    (
        "broken".to_owned(),
        Some(last.unwrap_or_else(|| "no operation to check with".into())),
    )
}

fn stored_info(c: hlbridge_engine::security::ConnectionInfo) -> ConnectionInfo {
    use hlbridge_engine::security::Health;
    let (health, message) = match &c.health {
        Health::Ok => ("ok".to_owned(), None),
        Health::Expiring { at } => (
            "ok".to_owned(),
            Some(format!(
                "access token expires {} (refreshed on the next call)",
                at.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            )),
        ),
        Health::Broken { reason } => (
            "broken".to_owned(),
            Some(format!(
                "{reason}; its flows are paused until it is authorized again (`hlbridge connect`)"
            )),
        ),
    };
    let kind = c.kind.as_str().to_owned();
    let detail = c
        .config
        .location_id
        .clone()
        .or_else(|| c.config.base_url.clone())
        .or_else(|| c.config.company_id.clone().map(|id| format!("agency {id}")))
        .unwrap_or_default();
    ConnectionInfo {
        name: c.name,
        kind: if kind.starts_with("highlevel") {
            format!("highlevel ({})", kind.trim_start_matches("highlevel_"))
        } else {
            kind
        },
        detail,
        health,
        message,
        checked_at: c.last_refresh_at.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        }),
    }
}

impl ConnectionsBackend for ConfiguredConnections {
    fn list(&self) -> BoxFuture<'_, Vec<ConnectionInfo>> {
        Box::pin(self.all())
    }

    fn create<'a>(
        &'a self,
        new: NewConnection,
        by: &'a Principal,
    ) -> BoxFuture<'a, Result<ConnectionInfo, ConnectionError>> {
        Box::pin(async move {
            use hlbridge_engine::security::{AppAuth, Secret};
            let name = new.name.trim();
            if name.is_empty() {
                return Err(ConnectionError::Invalid("a connection needs a name".into()));
            }
            let base = new
                .base_url
                .as_deref()
                .filter(|u| !u.is_empty())
                .map(|u| {
                    url::Url::parse(u)
                        .map_err(|e| ConnectionError::Invalid(format!("`{u}` is not a URL: {e}")))
                })
                .transpose()?;
            let token = new.token.clone().filter(|t| !t.is_empty());
            let sec = self.engine.security().ok_or_else(|| {
                ConnectionError::Unsupported(
                    "this server's store keeps no connections; start it with --token or --app-connection".into(),
                )
            })?;
            let conns = sec.connections().await.map_err(|e| {
                ConnectionError::Unsupported(format!("the vault is unavailable: {e}"))
            })?;
            let by = crate::access::actor(by);
            let made = match new.kind.as_str() {
                "highlevel_token" => {
                    let token = token.ok_or_else(|| {
                        ConnectionError::Invalid("a Private Integration Token is needed".into())
                    })?;
                    conns
                        .create_token(
                            name,
                            base.as_ref(),
                            &Secret::new(token),
                            new.location_id.as_deref().filter(|l| !l.is_empty()),
                            None,
                            &by,
                        )
                        .await
                }
                "app" => {
                    let auth = match token {
                        Some(t) => AppAuth::Bearer(Secret::new(t)),
                        None => AppAuth::None,
                    };
                    conns
                        .create_app(name, base.as_ref(), &auth, None, &by)
                        .await
                }
                "highlevel_oauth" => {
                    return Err(ConnectionError::Unsupported(format!(
                        "OAuth connections are authorized in the browser from the command line: `hlbridge connect highlevel --client-id … --client-secret …` (name `{name}`)"
                    )));
                }
                other => {
                    return Err(ConnectionError::Invalid(format!(
                        "unknown connection kind `{other}` (highlevel_token, highlevel_oauth or app)"
                    )));
                }
            };
            made.map(stored_info)
                .map_err(|e| ConnectionError::Invalid(e.to_string()))
        })
    }

    fn refresh<'a>(
        &'a self,
        name: &'a str,
        _by: &'a Principal,
    ) -> BoxFuture<'a, Result<ConnectionInfo, ConnectionError>> {
        Box::pin(self.check(name))
    }
}
