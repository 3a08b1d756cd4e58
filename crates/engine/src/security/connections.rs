//! Stored connections: HighLevel over OAuth (location or agency installs) or a Private
//! Integration Token, and apps (bearer, API-key header, basic auth, HMAC signing secret).
//! Every secret is sealed in the vault; rows hold only non-secret configuration.
//!
//! - [`Connections`] creates, lists (with [`Health`]), removes and checks connections, and
//!   turns them into engine configuration ([`Connections::apply_to_config`]: app
//!   connections, app secrets, and the scopes each HighLevel connection grants, for flow
//!   validation).
//! - [`ConnectionsApi`] is the [`HighLevelApi`] over stored connections: each call gets the
//!   right token — a PIT, the connection's OAuth token (refreshed single-flight across
//!   processes, see [`super::tokens`]), or for an agency install the token of the call's
//!   location, minted with the agency token; a location installed later is picked up by
//!   refreshing the installed-locations list.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use hlbridge_highlevel::operations::TokenKind;
use hlbridge_highlevel::{Auth, Client, OAuthTokens, Operation, TokenSource};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use url::Url;

use super::audit::{self, Actor, AuditAction, AuditEvent};
use super::oauth::{self, OAuthError};
use super::secret::Secret;
use super::tokens::{CONNECTIONS_TABLE, DbTokenSource, LocationTokenSource, RefreshSettings};
use super::vault::{Vault, VaultError};
use crate::api::{HighLevelApi, StepError};
use crate::client::{call_error, step_error};
use crate::engine::{AppConnection, EngineConfig};
use crate::store::security::{ConnectionRecord, LocationRecord, SecretRef, SecurityStore};
use crate::store::{StoreError, now};

/// What kind of connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionKind {
    /// HighLevel over OAuth 2.0 (location or agency install).
    HighlevelOauth,
    /// HighLevel with a Private Integration Token.
    HighlevelToken,
    /// Another app (for `http` steps and app webhooks).
    App,
}

impl ConnectionKind {
    /// The kind as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionKind::HighlevelOauth => "highlevel_oauth",
            ConnectionKind::HighlevelToken => "highlevel_token",
            ConnectionKind::App => "app",
        }
    }

    fn parse(s: &str) -> Result<ConnectionKind, StoreError> {
        match s {
            "highlevel_oauth" => Ok(ConnectionKind::HighlevelOauth),
            "highlevel_token" => Ok(ConnectionKind::HighlevelToken),
            "app" => Ok(ConnectionKind::App),
            other => Err(StoreError::Corrupt(format!("connection kind {other:?}"))),
        }
    }

    /// Whether it is a HighLevel connection.
    pub fn is_highlevel(self) -> bool {
        self != ConnectionKind::App
    }
}

/// How an app connection authenticates outgoing requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppAuthKind {
    /// No credentials.
    None,
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `<header>: <secret>`.
    ApiKey,
    /// `Authorization: Basic base64(user:password)`.
    Basic,
}

/// The non-secret configuration of a connection (stored as JSON on its row).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionConfig {
    /// API base URL (HighLevel: production when `None`; app: joined with step URLs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// OAuth client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `Location` or `Company` (OAuth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_type: Option<String>,
    /// The location (sub-account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    /// The agency (company).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_id: Option<String>,
    /// Granted scopes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// App: how requests authenticate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_auth: Option<AppAuthKind>,
    /// App: the API-key header's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_header: Option<String>,
    /// App: the basic-auth user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_username: Option<String>,
    /// App: whether an HMAC signing secret is stored (for its inbound webhooks).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hmac: bool,
}

/// An app connection's credentials, as given when it is created.
#[derive(Debug, Clone)]
pub enum AppAuth {
    /// No outgoing credentials.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `<header>: <key>`.
    ApiKey {
        /// Header name.
        header: String,
        /// The key.
        key: Secret,
    },
    /// Basic auth.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
}

/// A connection's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Health {
    /// Working.
    Ok,
    /// The access token expires soon (or has); the next call refreshes it.
    Expiring {
        /// When it expires.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// Broken until authorized again; its flows are paused.
    Broken {
        /// Why.
        reason: String,
    },
}

impl Health {
    /// `ok`, `expiring` or `broken`.
    pub fn label(&self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Expiring { .. } => "expiring",
            Health::Broken { .. } => "broken",
        }
    }
}

/// A location of an agency connection, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocationInfo {
    /// Location id.
    pub location_id: String,
    /// Name.
    pub name: Option<String>,
    /// `ok` or `broken`.
    pub status: String,
    /// Why it is broken.
    pub reason: Option<String>,
    /// When its token expires (`None`: none minted yet).
    #[serde(with = "time::serde::rfc3339::option")]
    pub token_expires_at: Option<OffsetDateTime>,
}

/// A connection as listed. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionInfo {
    /// Name flows refer to.
    pub name: String,
    /// Kind.
    pub kind: ConnectionKind,
    /// Health.
    pub health: Health,
    /// Non-secret configuration.
    pub config: ConnectionConfig,
    /// When the access token expires (OAuth).
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Last committed refresh.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_refresh_at: Option<OffsetDateTime>,
    /// Refreshes committed so far.
    pub token_version: i64,
    /// Agency installs: the locations.
    pub locations: Vec<LocationInfo>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Connection failures. None carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An OAuth call failed.
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    /// A token could not be had.
    #[error(transparent)]
    Token(#[from] hlbridge_highlevel::Error),
    /// No connection has this name.
    #[error("no connection named `{0}` (see `hlbridge connections`)")]
    NotFound(String),
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The connection is broken.
    #[error("connection `{name}` is broken: {reason}; authorize it again with `hlbridge connect`")]
    Broken {
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
}

impl ConnectionError {
    fn step_error(&self) -> StepError {
        match self {
            ConnectionError::NotFound(_) | ConnectionError::Invalid(_) => {
                StepError::permanent(self.to_string())
            }
            ConnectionError::Token(e) => step_error(e),
            ConnectionError::OAuth(e) if e.is_permanent() => StepError::permanent(self.to_string()),
            _ => StepError::transient(self.to_string()),
        }
    }
}

/// Settings of [`Connections`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// Token refresh timing.
    pub refresh: RefreshSettings,
    /// Health says `expiring` when the access token has less than this left.
    pub expiring_within: Duration,
    /// An agency connection re-reads its installed locations at most this often when a
    /// call names a location it does not know.
    pub locations_refresh: Duration,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            refresh: RefreshSettings::default(),
            expiring_within: Duration::from_secs(10 * 60),
            locations_refresh: Duration::from_secs(60),
        }
    }
}

/// A name is 1–64 letters, digits, `-`, `_` or `.`.
fn check_name(name: &str) -> Result<(), ConnectionError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConnectionError::Invalid(format!(
            "invalid connection name `{name}`: use 1–64 letters, digits, `-`, `_` or `.`"
        )))
    }
}

/// The app id HighLevel expects in `installedLocations`: the client id without its
/// `-suffix` (client ids look like `<appId>-<suffix>`).
fn app_id_of(client_id: &str) -> &str {
    client_id.split('-').next().unwrap_or(client_id)
}

struct Agency {
    company: Arc<DbTokenSource>,
    company_id: String,
    default_location: Option<String>,
    locations: Mutex<HashMap<String, Arc<LocationTokenSource>>>,
    listed_at: Mutex<Option<Instant>>,
    refresh: tokio::sync::Mutex<()>,
}

enum Resolved {
    Static {
        auth: Auth,
        location: Option<String>,
    },
    OAuth {
        source: Arc<DbTokenSource>,
        location: Option<String>,
    },
    Agency(Arc<Agency>),
}

struct Inner {
    store: Arc<dyn SecurityStore>,
    vault: Arc<Vault>,
    http: reqwest::Client,
    settings: ConnectionSettings,
    resolved: Mutex<HashMap<String, Arc<Resolved>>>,
}

/// Stored connections (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Connections {
    /// The service over a store and a vault.
    pub fn new(
        store: Arc<dyn SecurityStore>,
        vault: Arc<Vault>,
        settings: ConnectionSettings,
    ) -> Connections {
        Connections {
            inner: Arc::new(Inner {
                store,
                vault,
                http: oauth::http_client(),
                settings,
                resolved: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The vault.
    pub fn vault(&self) -> &Arc<Vault> {
        &self.inner.vault
    }

    /// The settings.
    pub fn settings(&self) -> &ConnectionSettings {
        &self.inner.settings
    }

    fn forget(&self, name: &str) {
        self.inner.resolved.lock().remove(name);
    }

    async fn save(
        &self,
        name: &str,
        kind: ConnectionKind,
        config: &ConnectionConfig,
        expires_at: Option<OffsetDateTime>,
        secrets: &[(&str, &Secret)],
        by: &Actor,
    ) -> Result<ConnectionRecord, ConnectionError> {
        check_name(name)?;
        let id = uuid::Uuid::now_v7().to_string();
        let at = now();
        let rec = ConnectionRecord {
            id: id.clone(),
            name: name.to_owned(),
            kind: kind.as_str().to_owned(),
            config: serde_json::to_value(config)
                .map_err(|e| ConnectionError::Invalid(e.to_string()))?,
            status: "ok".into(),
            status_reason: None,
            expires_at,
            token_version: 0,
            last_refresh_at: None,
            created_at: at,
            updated_at: at,
        };
        let items: Vec<(SecretRef, &Secret)> = secrets
            .iter()
            .map(|(n, v)| (SecretRef::new(CONNECTIONS_TABLE, &id, n), *v))
            .collect();
        let mut tries = 0;
        loop {
            let sealed = self.inner.vault.seal_all(&items).await?;
            match self.inner.store.save_connection(&rec, &sealed, true).await {
                Ok(()) => break,
                Err(StoreError::Conflict(m)) if tries < 3 && m.contains("vault key") => {
                    tries += 1;
                    self.inner.vault.reload().await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.forget(name);
        let mut details = json!({ "kind": kind, "config": config });
        if let Some(e) = expires_at {
            details["expires_at"] = json!(e.unix_timestamp());
        }
        audit::record(
            self.inner.store.as_ref(),
            AuditEvent::new(by.clone(), AuditAction::ConnectionCreated)
                .target(name)
                .details(details),
        )
        .await?;
        Ok(rec)
    }

    /// Stores a HighLevel OAuth connection from tokens obtained with the authorization-code
    /// flow (replacing a connection of the same name). For an agency (Company) install it
    /// then lists the installed locations and mints a token for each.
    pub async fn create_oauth(
        &self,
        name: &str,
        base_url: &Url,
        client_id: &str,
        client_secret: &Secret,
        tokens: &OAuthTokens,
        by: &Actor,
    ) -> Result<ConnectionInfo, ConnectionError> {
        let config = ConnectionConfig {
            base_url: Some(base_url.to_string()),
            client_id: Some(client_id.to_owned()),
            user_type: tokens.user_type.clone(),
            location_id: tokens.location_id.clone(),
            company_id: tokens.company_id.clone(),
            scopes: tokens
                .scope
                .as_ref()
                .map(|s| s.split_whitespace().map(str::to_owned).collect()),
            ..ConnectionConfig::default()
        };
        let access = Secret::new(tokens.access_token.clone());
        let refresh = Secret::new(tokens.refresh_token.clone());
        self.save(
            name,
            ConnectionKind::HighlevelOauth,
            &config,
            Some(tokens.expires_at),
            &[
                ("client_secret", client_secret),
                ("access_token", &access),
                ("refresh_token", &refresh),
            ],
            by,
        )
        .await?;
        if is_agency(&config) {
            self.refresh_locations(name, by).await?;
        }
        self.get(name)
            .await?
            .ok_or_else(|| ConnectionError::NotFound(name.to_owned()))
    }

    /// Stores a HighLevel Private Integration Token (replacing a connection of the same
    /// name). `scopes`: what the token was given, when known (for flow validation).
    pub async fn create_token(
        &self,
        name: &str,
        base_url: Option<&Url>,
        token: &Secret,
        location_id: Option<&str>,
        scopes: Option<Vec<String>>,
        by: &Actor,
    ) -> Result<ConnectionInfo, ConnectionError> {
        if token.is_empty() {
            return Err(ConnectionError::Invalid("the token is empty".into()));
        }
        let config = ConnectionConfig {
            base_url: base_url.map(Url::to_string),
            location_id: location_id.map(str::to_owned),
            scopes,
            ..ConnectionConfig::default()
        };
        self.save(
            name,
            ConnectionKind::HighlevelToken,
            &config,
            None,
            &[("token", token)],
            by,
        )
        .await?;
        self.get(name)
            .await?
            .ok_or_else(|| ConnectionError::NotFound(name.to_owned()))
    }

    /// Stores an app connection (replacing one of the same name): its base URL, how its
    /// requests authenticate, and optionally the HMAC secret its webhooks are signed with.
    pub async fn create_app(
        &self,
        name: &str,
        base_url: Option<&Url>,
        auth: &AppAuth,
        hmac_secret: Option<&Secret>,
        by: &Actor,
    ) -> Result<ConnectionInfo, ConnectionError> {
        let mut config = ConnectionConfig {
            base_url: base_url.map(Url::to_string),
            hmac: hmac_secret.is_some(),
            ..ConnectionConfig::default()
        };
        let mut secrets: Vec<(&str, &Secret)> = Vec::new();
        match auth {
            AppAuth::None => config.app_auth = Some(AppAuthKind::None),
            AppAuth::Bearer(t) => {
                config.app_auth = Some(AppAuthKind::Bearer);
                secrets.push(("bearer", t));
            }
            AppAuth::ApiKey { header, key } => {
                if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    return Err(ConnectionError::Invalid(format!(
                        "`{header}` is not a valid header name"
                    )));
                }
                config.app_auth = Some(AppAuthKind::ApiKey);
                config.api_key_header = Some(header.clone());
                secrets.push(("api_key", key));
            }
            AppAuth::Basic { username, password } => {
                config.app_auth = Some(AppAuthKind::Basic);
                config.basic_username = Some(username.clone());
                secrets.push(("basic_password", password));
            }
        }
        if let Some(h) = hmac_secret {
            secrets.push(("hmac_secret", h));
        }
        self.save(name, ConnectionKind::App, &config, None, &secrets, by)
            .await?;
        self.get(name)
            .await?
            .ok_or_else(|| ConnectionError::NotFound(name.to_owned()))
    }

    /// Removes a connection and its secrets.
    pub async fn remove(&self, name: &str, by: &Actor) -> Result<(), ConnectionError> {
        if !self.inner.store.delete_connection(name).await? {
            return Err(ConnectionError::NotFound(name.to_owned()));
        }
        self.forget(name);
        audit::record(
            self.inner.store.as_ref(),
            AuditEvent::new(by.clone(), AuditAction::ConnectionRemoved).target(name),
        )
        .await?;
        Ok(())
    }

    async fn info(&self, rec: ConnectionRecord) -> Result<ConnectionInfo, ConnectionError> {
        let kind = ConnectionKind::parse(&rec.kind)?;
        let config: ConnectionConfig = serde_json::from_value(rec.config.clone())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let health = if rec.status == "broken" {
            Health::Broken {
                reason: rec.status_reason.clone().unwrap_or_else(|| "broken".into()),
            }
        } else {
            match rec.expires_at {
                Some(at) if at <= now() + self.inner.settings.expiring_within => {
                    Health::Expiring { at }
                }
                _ => Health::Ok,
            }
        };
        let locations = if is_agency(&config) {
            self.inner
                .store
                .list_locations(&rec.id)
                .await?
                .into_iter()
                .map(|l: LocationRecord| LocationInfo {
                    location_id: l.location_id,
                    name: l.name,
                    status: l.status,
                    reason: l.status_reason,
                    token_expires_at: l.expires_at,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(ConnectionInfo {
            name: rec.name,
            kind,
            health,
            config,
            expires_at: rec.expires_at,
            last_refresh_at: rec.last_refresh_at,
            token_version: rec.token_version,
            locations,
            created_at: rec.created_at,
        })
    }

    /// Every connection, with its health.
    pub async fn list(&self) -> Result<Vec<ConnectionInfo>, ConnectionError> {
        let mut out = Vec::new();
        for rec in self.inner.store.list_connections().await? {
            out.push(self.info(rec).await?);
        }
        Ok(out)
    }

    /// One connection.
    pub async fn get(&self, name: &str) -> Result<Option<ConnectionInfo>, ConnectionError> {
        match self.inner.store.get_connection(name).await? {
            Some(rec) => Ok(Some(self.info(rec).await?)),
            None => Ok(None),
        }
    }

    /// Why a connection is broken (`None`: it is not, or does not exist).
    pub async fn is_broken(&self, name: &str) -> Result<Option<String>, ConnectionError> {
        Ok(self
            .inner
            .store
            .get_connection(name)
            .await?
            .filter(|c| c.status == "broken")
            .map(|c| c.status_reason.unwrap_or_else(|| "broken".into())))
    }

    async fn record(&self, name: &str) -> Result<ConnectionRecord, ConnectionError> {
        self.inner
            .store
            .get_connection(name)
            .await?
            .ok_or_else(|| ConnectionError::NotFound(name.to_owned()))
    }

    async fn secret(&self, id: &str, name: &str) -> Result<Option<Secret>, ConnectionError> {
        Ok(self
            .inner
            .vault
            .get(&SecretRef::new(CONNECTIONS_TABLE, id, name))
            .await?)
    }

    /// The OAuth token source of a HighLevel OAuth connection (a new one: two calls give two
    /// independent sources, like two processes would have).
    pub async fn token_source(&self, name: &str) -> Result<Arc<DbTokenSource>, ConnectionError> {
        let rec = self.record(name).await?;
        if rec.kind != ConnectionKind::HighlevelOauth.as_str() {
            return Err(ConnectionError::Invalid(format!(
                "connection `{name}` is not an OAuth connection"
            )));
        }
        Ok(Arc::new(
            DbTokenSource::load(
                self.inner.store.clone(),
                self.inner.vault.clone(),
                self.inner.http.clone(),
                &rec.id,
                self.inner.settings.refresh,
            )
            .await?,
        ))
    }

    async fn resolve(&self, name: &str) -> Result<Arc<Resolved>, ConnectionError> {
        if let Some(r) = self.inner.resolved.lock().get(name).cloned() {
            return Ok(r);
        }
        let rec = self.record(name).await?;
        if rec.status == "broken" {
            return Err(ConnectionError::Broken {
                name: name.to_owned(),
                reason: rec.status_reason.unwrap_or_else(|| "broken".into()),
            });
        }
        let config: ConnectionConfig = serde_json::from_value(rec.config.clone())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let resolved = match ConnectionKind::parse(&rec.kind)? {
            ConnectionKind::App => {
                return Err(ConnectionError::Invalid(format!(
                    "connection `{name}` is an app connection, not a HighLevel one"
                )));
            }
            ConnectionKind::HighlevelToken => {
                let token = self.secret(&rec.id, "token").await?.ok_or_else(|| {
                    ConnectionError::Invalid(format!("connection `{name}` has no token"))
                })?;
                let auth = match &config.location_id {
                    Some(l) => Auth::token_for(token.expose(), l.clone()),
                    None => Auth::token(token.expose()),
                };
                Resolved::Static {
                    auth,
                    location: config.location_id.clone(),
                }
            }
            ConnectionKind::HighlevelOauth => {
                let source = self.token_source(name).await?;
                if is_agency(&config) {
                    let company_id = config.company_id.clone().ok_or_else(|| {
                        ConnectionError::Invalid(format!(
                            "agency connection `{name}` has no company id"
                        ))
                    })?;
                    let locs = self.inner.store.list_locations(&rec.id).await?;
                    let default_location = if locs.len() == 1 {
                        Some(locs[0].location_id.clone())
                    } else {
                        None
                    };
                    Resolved::Agency(Arc::new(Agency {
                        company: source,
                        company_id,
                        default_location,
                        locations: Mutex::new(HashMap::new()),
                        listed_at: Mutex::new(None),
                        refresh: tokio::sync::Mutex::new(()),
                    }))
                } else {
                    Resolved::OAuth {
                        source,
                        location: config.location_id.clone(),
                    }
                }
            }
        };
        let resolved = Arc::new(resolved);
        self.inner
            .resolved
            .lock()
            .insert(name.to_owned(), resolved.clone());
        Ok(resolved)
    }

    fn location_source(&self, agency: &Agency, location_id: &str) -> Arc<LocationTokenSource> {
        agency
            .locations
            .lock()
            .entry(location_id.to_owned())
            .or_insert_with(|| {
                Arc::new(LocationTokenSource::new(
                    self.inner.store.clone(),
                    self.inner.vault.clone(),
                    self.inner.http.clone(),
                    agency.company.clone(),
                    &agency.company_id,
                    location_id,
                    self.inner.settings.refresh.skew,
                ))
            })
            .clone()
    }

    /// The credentials for a call through connection `name`: for `location` (the call's
    /// `locationId`), or the agency itself when `agency_call`. Returns the auth and the
    /// location to fill in when the call names none.
    pub async fn auth_for(
        &self,
        name: &str,
        location: Option<&str>,
        agency_call: bool,
    ) -> Result<(Auth, Option<String>), ConnectionError> {
        match self.resolve(name).await?.as_ref() {
            Resolved::Static { auth, location } => Ok((auth.clone(), location.clone())),
            Resolved::OAuth { source, location } => Ok((
                Auth::from_source(source.clone() as Arc<dyn TokenSource>),
                location.clone(),
            )),
            Resolved::Agency(agency) => {
                let loc = location
                    .map(str::to_owned)
                    .or_else(|| agency.default_location.clone());
                let Some(loc) = loc.filter(|_| !agency_call) else {
                    return Ok((
                        Auth::from_source(agency.company.clone() as Arc<dyn TokenSource>),
                        None,
                    ));
                };
                let known = {
                    let rec = self
                        .inner
                        .store
                        .list_locations(agency.company.connection_id())
                        .await?;
                    rec.iter().any(|l| l.location_id == loc)
                };
                if !known {
                    self.pick_up_locations(name, agency).await?;
                }
                let src = self.location_source(agency, &loc);
                Ok((Auth::from_source(src as Arc<dyn TokenSource>), Some(loc)))
            }
        }
    }

    /// Re-reads the installed locations of an agency connection when a call names one it
    /// does not know (at most once per `locations_refresh`).
    async fn pick_up_locations(&self, name: &str, agency: &Agency) -> Result<(), ConnectionError> {
        let _guard = agency.refresh.lock().await;
        let due = agency
            .listed_at
            .lock()
            .is_none_or(|t| t.elapsed() >= self.inner.settings.locations_refresh);
        if due {
            *agency.listed_at.lock() = Some(Instant::now());
            self.list_and_store_locations(
                name,
                &agency.company,
                &agency.company_id,
                false,
                &Actor::system("locations"),
            )
            .await?;
        }
        Ok(())
    }

    async fn list_and_store_locations(
        &self,
        name: &str,
        company: &Arc<DbTokenSource>,
        company_id: &str,
        mint: bool,
        by: &Actor,
    ) -> Result<Vec<String>, ConnectionError> {
        let token = company.access_token().await?;
        let client_id = self
            .inner
            .store
            .get_connection_by_id(company.connection_id())
            .await?
            .and_then(|r| serde_json::from_value::<ConnectionConfig>(r.config).ok())
            .and_then(|c| c.client_id)
            .unwrap_or_default();
        let base = {
            let rec = self.record(name).await?;
            let cfg: ConnectionConfig = serde_json::from_value(rec.config).unwrap_or_default();
            Url::parse(
                cfg.base_url
                    .as_deref()
                    .unwrap_or(hlbridge_highlevel::PRODUCTION_BASE_URL),
            )
            .map_err(|e| ConnectionError::Invalid(e.to_string()))?
        };
        let listed = oauth::installed_locations(
            &self.inner.http,
            &base,
            &token,
            company_id,
            app_id_of(&client_id),
        )
        .await?;
        let existing: Vec<String> = self
            .inner
            .store
            .list_locations(company.connection_id())
            .await?
            .into_iter()
            .map(|l| l.location_id)
            .collect();
        let mut added = Vec::new();
        for l in &listed {
            if !existing.contains(&l.id) {
                added.push(l.id.clone());
            }
            let rec = LocationRecord {
                connection_id: company.connection_id().to_owned(),
                location_id: l.id.clone(),
                name: l.name.clone(),
                expires_at: None,
                status: "ok".into(),
                status_reason: None,
                updated_at: now(),
            };
            self.inner.store.upsert_location(&rec, None).await?;
        }
        if mint {
            for l in &listed {
                let src = LocationTokenSource::new(
                    self.inner.store.clone(),
                    self.inner.vault.clone(),
                    self.inner.http.clone(),
                    company.clone(),
                    company_id,
                    &l.id,
                    self.inner.settings.refresh.skew,
                );
                if let Err(e) = src.access_token().await {
                    tracing::warn!(connection = name, location_id = %l.id, error = %e, "could not mint a location token");
                }
            }
        }
        audit::record(
            self.inner.store.as_ref(),
            AuditEvent::new(by.clone(), AuditAction::ConnectionLocations)
                .target(name)
                .details(json!({ "total": listed.len(), "added": added })),
        )
        .await?;
        Ok(added)
    }

    /// Agency connections: re-reads the installed locations and mints a token for each;
    /// returns the locations that were new.
    pub async fn refresh_locations(
        &self,
        name: &str,
        by: &Actor,
    ) -> Result<Vec<String>, ConnectionError> {
        let rec = self.record(name).await?;
        let config: ConnectionConfig = serde_json::from_value(rec.config.clone())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if !is_agency(&config) {
            return Err(ConnectionError::Invalid(format!(
                "connection `{name}` is not an agency (Company) install"
            )));
        }
        let company_id = config.company_id.clone().ok_or_else(|| {
            ConnectionError::Invalid(format!("agency connection `{name}` has no company id"))
        })?;
        let company = self.token_source(name).await?;
        let added = self
            .list_and_store_locations(name, &company, &company_id, true, by)
            .await?;
        self.forget(name);
        Ok(added)
    }

    /// Checks a connection now: HighLevel OAuth connections get a valid access token
    /// (refreshing if needed); returns the connection's state afterwards.
    pub async fn check(&self, name: &str) -> Result<ConnectionInfo, ConnectionError> {
        let rec = self.record(name).await?;
        if rec.kind == ConnectionKind::HighlevelOauth.as_str() && rec.status != "broken" {
            let src = self.token_source(name).await?;
            if let Err(e) = src.access_token().await {
                tracing::warn!(connection = name, error = %e, "connection check failed");
            }
        }
        self.get(name)
            .await?
            .ok_or_else(|| ConnectionError::NotFound(name.to_owned()))
    }

    /// App connections for `http` steps (base URL and the headers carrying their secret)
    /// and app secrets (HMAC signing secrets) for app webhooks, by connection name.
    pub async fn app_settings(
        &self,
    ) -> Result<(HashMap<String, AppConnection>, HashMap<String, String>), ConnectionError> {
        use base64::Engine as _;
        let mut apps = HashMap::new();
        let mut secrets = HashMap::new();
        for rec in self.inner.store.list_connections().await? {
            if rec.kind != ConnectionKind::App.as_str() {
                continue;
            }
            let cfg: ConnectionConfig = serde_json::from_value(rec.config.clone())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut headers = HashMap::new();
            let need = |v: Option<Secret>, what: &str| {
                v.ok_or_else(|| {
                    ConnectionError::Invalid(format!("connection `{}` has no {what}", rec.name))
                })
            };
            match cfg.app_auth.unwrap_or(AppAuthKind::None) {
                AppAuthKind::None => {}
                AppAuthKind::Bearer => {
                    let t = need(self.secret(&rec.id, "bearer").await?, "bearer token")?;
                    headers.insert("Authorization".to_owned(), format!("Bearer {}", t.expose()));
                }
                AppAuthKind::ApiKey => {
                    let k = need(self.secret(&rec.id, "api_key").await?, "API key")?;
                    let h = cfg
                        .api_key_header
                        .clone()
                        .unwrap_or_else(|| "X-API-Key".into());
                    headers.insert(h, k.expose().to_owned());
                }
                AppAuthKind::Basic => {
                    let p = need(self.secret(&rec.id, "basic_password").await?, "password")?;
                    let user = cfg.basic_username.clone().unwrap_or_default();
                    let raw = zeroize::Zeroizing::new(format!("{user}:{}", p.expose()));
                    headers.insert(
                        "Authorization".to_owned(),
                        format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
                        ),
                    );
                }
            }
            if cfg.hmac
                && let Some(h) = self.secret(&rec.id, "hmac_secret").await?
            {
                secrets.insert(rec.name.clone(), h.expose().to_owned());
            }
            apps.insert(
                rec.name.clone(),
                AppConnection {
                    base_url: cfg.base_url.clone(),
                    headers,
                },
            );
        }
        Ok((apps, secrets))
    }

    /// HighLevel connections by name with the scopes each grants (`None`: unknown), as
    /// [`EngineConfig::highlevel_connections`] and flow validation want them.
    pub async fn validation_connections(
        &self,
    ) -> Result<HashMap<String, Option<Vec<String>>>, ConnectionError> {
        let mut out = HashMap::new();
        for rec in self.inner.store.list_connections().await? {
            let kind = ConnectionKind::parse(&rec.kind)?;
            if !kind.is_highlevel() {
                continue;
            }
            let cfg: ConnectionConfig = serde_json::from_value(rec.config.clone())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.insert(rec.name, cfg.scopes);
        }
        Ok(out)
    }

    /// Adds the stored connections to an engine configuration: app connections and app
    /// secrets (entries already there win), and the HighLevel connections with their
    /// scopes for validation (merged into `highlevel_connections`).
    pub async fn apply_to_config(&self, config: &mut EngineConfig) -> Result<(), ConnectionError> {
        let (apps, secrets) = self.app_settings().await?;
        for (k, v) in apps {
            config.app_connections.entry(k).or_insert(v);
        }
        for (k, v) in secrets {
            config.app_secrets.entry(k).or_insert(v);
        }
        let hl = self.validation_connections().await?;
        if !hl.is_empty() {
            let map = config
                .highlevel_connections
                .get_or_insert_with(HashMap::new);
            for (k, v) in hl {
                map.entry(k).or_insert(v);
            }
        }
        Ok(())
    }

    /// The [`HighLevelApi`] over these connections, calling through `client`.
    pub fn api(&self, client: Client) -> ConnectionsApi {
        ConnectionsApi {
            client,
            connections: self.clone(),
        }
    }
}

fn is_agency(config: &ConnectionConfig) -> bool {
    config
        .user_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("company"))
}

/// The [`HighLevelApi`] over stored connections (see the module docs).
#[derive(Debug, Clone)]
pub struct ConnectionsApi {
    client: Client,
    connections: Connections,
}

impl ConnectionsApi {
    async fn prepare(
        &self,
        connection: &str,
        op: &Operation,
        mut params: Value,
    ) -> Result<(Auth, Value), StepError> {
        let location = params
            .get("locationId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (auth, default_location) = match self
            .connections
            .auth_for(
                connection,
                location.as_deref(),
                op.token == TokenKind::Agency,
            )
            .await
        {
            Ok(a) => a,
            Err(e) => {
                self.connections.forget(connection);
                return Err(e.step_error());
            }
        };
        if let (Some(loc), Value::Object(map)) = (default_location, &mut params)
            && op.param("locationId").is_some()
            && !map.contains_key("locationId")
        {
            map.insert("locationId".into(), Value::String(loc));
        }
        Ok((auth, params))
    }

    fn failed(&self, connection: &str, op: &Operation, e: &hlbridge_highlevel::Error) -> StepError {
        if matches!(e, hlbridge_highlevel::Error::TokenRefresh { .. }) {
            // A removed, replaced or broken connection: resolve it afresh next time.
            self.connections.forget(connection);
        }
        call_error(op, e)
    }
}

impl HighLevelApi for ConnectionsApi {
    fn call<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        params: Value,
    ) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(async move {
            let (auth, params) = self.prepare(connection, op, params).await?;
            self.client
                .call(&auth, op, &params)
                .await
                .map(|r| r.body)
                .map_err(|e| self.failed(connection, op, &e))
        })
    }

    fn paginate<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        params: Value,
    ) -> BoxStream<'a, Result<Value, StepError>> {
        futures::stream::once(async move {
            let (auth, params) = self.prepare(connection, op, params).await?;
            // Boxed as 'static at once: the stream owns clones of the client and the auth.
            let items: BoxStream<'static, Result<Value, hlbridge_highlevel::Error>> =
                self.client.paginate(&auth, op, params).boxed();
            Ok::<_, StepError>(items)
        })
        .flat_map(move |r| match r {
            Ok(s) => s
                .map(move |x| x.map_err(|e| self.failed(connection, op, &e)))
                .boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        assert!(check_name("default").is_ok());
        assert!(check_name("acme.agency_1-x").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert_eq!(app_id_of("64f1-lx2k"), "64f1");
        assert_eq!(app_id_of("plain"), "plain");
        let h = Health::Broken { reason: "x".into() };
        assert_eq!(h.label(), "broken");
        assert_eq!(
            serde_json::to_value(&h).expect("json"),
            json!({"status": "broken", "reason": "x"})
        );
    }
}
