//! Token sources backed by the database and the vault.
//!
//! [`DbTokenSource`] is the OAuth [`TokenSource`] of one stored connection. It refreshes
//! ahead of expiry and after a 401, **single-flight per connection across tasks and
//! processes**:
//!
//! 1. in-process, a mutex lets one task refresh while the others wait and then use its
//!    result;
//! 2. across processes, [`SecurityStore::begin_refresh`] (one `BEGIN IMMEDIATE`
//!    transaction) takes a lease on the connection row unless the row's `token_version`
//!    moved past the version this source holds — then someone else already refreshed and the
//!    source re-reads the rotated tokens instead of refreshing again (HighLevel invalidates a
//!    refresh token once used, so a second refresh would break the connection);
//! 3. the rotated tokens are sealed and committed ([`SecurityStore::finish_refresh`])
//!    **before** the new access token is handed out;
//! 4. a refresh HighLevel refuses for good (`invalid_grant`, a revoked app) marks the
//!    connection broken, writes a `connection.broken` audit event and logs a clear error;
//!    its flows are paused (see [`crate::security`]) until it is authorized again.
//!
//! [`LocationTokenSource`] serves one location of an agency (Company) connection: it mints
//! a location token with the agency token (`POST /oauth/locationToken`), stores it sealed,
//! and mints again when it nears expiry or is rejected.

use std::sync::Arc;
use std::time::Duration;

use hlbridge_highlevel::{BoxFuture, Error as HlError, OAuthTokens, TokenSource};
use parking_lot::RwLock;
use serde_json::json;
use time::OffsetDateTime;
use url::Url;

use super::audit::{self, Actor, AuditAction, AuditEvent};
use super::oauth::{self, OAuthError};
use super::secret::Secret;
use super::vault::{Vault, VaultError};
use crate::store::security::{
    LocationRecord, RefreshClaim, SealedSecret, SecretRef, SecurityStore,
};
use crate::store::{StoreError, now};

/// Table name used in the vault for connection secrets.
pub const CONNECTIONS_TABLE: &str = "connections";
/// Table name used in the vault for location tokens.
pub const LOCATIONS_TABLE: &str = "connection_locations";

/// Timing of token refreshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshSettings {
    /// Refresh when the access token has less than this left.
    pub skew: Duration,
    /// How long a refresh lease holds other processes off (longer than a refresh takes).
    pub lease: Duration,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        RefreshSettings {
            skew: Duration::from_secs(5 * 60),
            lease: Duration::from_secs(60),
        }
    }
}

fn refresh_err(message: impl Into<String>, permanent: bool) -> HlError {
    HlError::TokenRefresh {
        message: message.into(),
        permanent,
    }
}

fn vault_err(e: &VaultError) -> HlError {
    refresh_err(format!("vault: {e}"), false)
}

fn store_err(e: &StoreError) -> HlError {
    refresh_err(format!("store: {e}"), false)
}

struct Cached {
    version: i64,
    tokens: OAuthTokens,
}

/// The OAuth token source of one stored connection (see the module docs).
pub struct DbTokenSource {
    store: Arc<dyn SecurityStore>,
    vault: Arc<Vault>,
    http: reqwest::Client,
    connection_id: String,
    name: String,
    base_url: Url,
    client_id: String,
    client_secret: Secret,
    settings: RefreshSettings,
    owner: String,
    cached: RwLock<Cached>,
    refresh: tokio::sync::Mutex<Option<OAuthTokens>>,
}

impl std::fmt::Debug for DbTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbTokenSource")
            .field("connection", &self.name)
            .field("version", &self.cached.read().version)
            .finish_non_exhaustive()
    }
}

/// What a refresh must achieve.
enum Want {
    /// A token that does not expire within the skew.
    Fresh,
    /// A token other than this rejected one.
    Not(String),
}

impl DbTokenSource {
    /// Loads the source of OAuth connection `connection_id` (`name` for messages), reading
    /// its tokens and client secret from the vault.
    pub async fn load(
        store: Arc<dyn SecurityStore>,
        vault: Arc<Vault>,
        http: reqwest::Client,
        connection_id: &str,
        settings: RefreshSettings,
    ) -> Result<DbTokenSource, HlError> {
        let rec = store
            .get_connection_by_id(connection_id)
            .await
            .map_err(|e| store_err(&e))?
            .ok_or_else(|| refresh_err("the connection no longer exists", true))?;
        let cfg: super::connections::ConnectionConfig = serde_json::from_value(rec.config.clone())
            .map_err(|e| refresh_err(format!("connection config: {e}"), true))?;
        let base_url = Url::parse(
            cfg.base_url
                .as_deref()
                .unwrap_or(hlbridge_highlevel::PRODUCTION_BASE_URL),
        )
        .map_err(|e| refresh_err(format!("connection base URL: {e}"), true))?;
        let secret = |name: &str| SecretRef::new(CONNECTIONS_TABLE, &rec.id, name);
        let client_secret = vault
            .get(&secret("client_secret"))
            .await
            .map_err(|e| vault_err(&e))?
            .ok_or_else(|| refresh_err("the connection has no client secret", true))?;
        let src = DbTokenSource {
            store,
            vault,
            http,
            connection_id: rec.id.clone(),
            name: rec.name.clone(),
            base_url,
            client_id: cfg.client_id.clone().unwrap_or_default(),
            client_secret,
            settings,
            owner: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            cached: RwLock::new(Cached {
                version: -1,
                tokens: empty_tokens(),
            }),
            refresh: tokio::sync::Mutex::new(None),
        };
        src.reload().await?;
        Ok(src)
    }

    /// The connection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection's id.
    pub fn connection_id(&self) -> &str {
        &self.connection_id
    }

    /// The token version this source holds (bumped by every committed refresh).
    pub fn version(&self) -> i64 {
        self.cached.read().version
    }

    /// The tokens in use (for their expiry, scope and ids; never print the tokens).
    pub fn current(&self) -> OAuthTokens {
        self.cached.read().tokens.clone()
    }

    /// Re-reads the tokens from the store.
    async fn reload(&self) -> Result<(), HlError> {
        let rec = self
            .store
            .get_connection_by_id(&self.connection_id)
            .await
            .map_err(|e| store_err(&e))?
            .ok_or_else(|| refresh_err("the connection was removed or replaced", true))?;
        let cfg: super::connections::ConnectionConfig =
            serde_json::from_value(rec.config.clone()).unwrap_or_default();
        let secret = |name: &str| SecretRef::new(CONNECTIONS_TABLE, &self.connection_id, name);
        let access = self
            .vault
            .get(&secret("access_token"))
            .await
            .map_err(|e| vault_err(&e))?
            .ok_or_else(|| refresh_err("the connection has no access token", true))?;
        let refresh = self
            .vault
            .get(&secret("refresh_token"))
            .await
            .map_err(|e| vault_err(&e))?
            .ok_or_else(|| refresh_err("the connection has no refresh token", true))?;
        let tokens = OAuthTokens {
            access_token: access.expose().to_owned(),
            refresh_token: refresh.expose().to_owned(),
            expires_at: rec.expires_at.unwrap_or(OffsetDateTime::UNIX_EPOCH),
            scope: cfg.scopes.as_ref().map(|s| s.join(" ")),
            user_type: cfg.user_type.clone(),
            location_id: cfg.location_id.clone(),
            company_id: cfg.company_id.clone(),
        };
        *self.cached.write() = Cached {
            version: rec.token_version,
            tokens,
        };
        Ok(())
    }

    fn satisfied(&self, want: &Want, tokens: &OAuthTokens, adopt: bool) -> bool {
        let at = now();
        match want {
            // A token someone else just refreshed is used as long as it has not expired
            // (even if it is within the skew: that refresh was the one for this period).
            Want::Fresh if adopt => tokens.expires_at > at,
            Want::Fresh => !tokens.expires_within(self.settings.skew, at),
            Want::Not(rejected) => tokens.access_token != *rejected && tokens.expires_at > at,
        }
    }

    async fn audit(&self, action: AuditAction, details: serde_json::Value) {
        audit::record_or_log(
            self.store.as_ref(),
            AuditEvent::new(Actor::system("token-refresh"), action)
                .target(&self.name)
                .details(details),
        )
        .await;
    }

    async fn commit(&self, seen: i64, fresh: &OAuthTokens) -> Result<Option<i64>, HlError> {
        let access = Secret::new(fresh.access_token.clone());
        let refresh = Secret::new(fresh.refresh_token.clone());
        let mut tries = 0;
        loop {
            let sealed: Vec<(SecretRef, SealedSecret)> = self
                .vault
                .seal_all(&[
                    (
                        SecretRef::new(CONNECTIONS_TABLE, &self.connection_id, "access_token"),
                        &access,
                    ),
                    (
                        SecretRef::new(CONNECTIONS_TABLE, &self.connection_id, "refresh_token"),
                        &refresh,
                    ),
                ])
                .await
                .map_err(|e| vault_err(&e))?;
            match self
                .store
                .finish_refresh(&self.connection_id, seen, &sealed, fresh.expires_at)
                .await
            {
                Ok(v) => return Ok(v),
                // The vault key was retired by a rotation meanwhile: seal again.
                Err(StoreError::Conflict(_)) if tries < 3 => {
                    tries += 1;
                    self.vault.reload().await.map_err(|e| vault_err(&e))?;
                }
                Err(e) => return Err(store_err(&e)),
            }
        }
    }

    async fn refresh(&self, want: Want) -> Result<String, HlError> {
        let mut unsaved = self.refresh.lock().await;
        let mut waited = Duration::ZERO;
        loop {
            let (version, tokens) = {
                let c = self.cached.read();
                (c.version, c.tokens.clone())
            };
            if unsaved.is_none() && self.satisfied(&want, &tokens, false) {
                return Ok(tokens.access_token);
            }
            let claim = self
                .store
                .begin_refresh(
                    &self.connection_id,
                    &self.owner,
                    version,
                    self.settings.lease,
                )
                .await
                .map_err(|e| store_err(&e))?;
            match claim {
                RefreshClaim::Changed { .. } => {
                    // Someone committed a refresh: use theirs.
                    *unsaved = None;
                    self.reload().await?;
                    let t = self.current();
                    if self.satisfied(&want, &t, true) {
                        return Ok(t.access_token);
                    }
                }
                RefreshClaim::Busy { until } => {
                    if waited > self.settings.lease * 2 {
                        return Err(refresh_err(
                            "another process has been refreshing this connection for too long",
                            false,
                        ));
                    }
                    let left = Duration::try_from(until - now()).unwrap_or_default();
                    let pause = left.clamp(Duration::from_millis(20), Duration::from_millis(200));
                    tokio::time::sleep(pause).await;
                    waited += pause;
                }
                RefreshClaim::Broken { reason } => {
                    return Err(refresh_err(
                        format!(
                            "connection `{}` is broken ({reason}); authorize it again with `hlbridge connect`",
                            self.name
                        ),
                        true,
                    ));
                }
                RefreshClaim::Missing => {
                    return Err(refresh_err(
                        format!("connection `{}` was removed or replaced", self.name),
                        true,
                    ));
                }
                RefreshClaim::Claimed => {
                    // Tokens refreshed earlier but not saved (the store failed) come first:
                    // the refresh token they replaced no longer works.
                    let fresh = match unsaved.take() {
                        Some(t) => t,
                        None => match oauth::refresh(
                            &self.http,
                            &self.base_url,
                            &self.client_id,
                            &self.client_secret,
                            &tokens,
                        )
                        .await
                        {
                            Ok(t) => t,
                            Err(e) => return Err(self.refresh_failed(version, e).await),
                        },
                    };
                    match self.commit(version, &fresh).await {
                        Ok(Some(new_version)) => {
                            *self.cached.write() = Cached {
                                version: new_version,
                                tokens: fresh.clone(),
                            };
                            tracing::info!(
                                connection = %self.name,
                                version = new_version,
                                expires_at = %fresh.expires_at,
                                "refreshed HighLevel OAuth token"
                            );
                            self.audit(
                                AuditAction::ConnectionRefreshed,
                                json!({ "version": new_version, "expires_at": fresh.expires_at.unix_timestamp() }),
                            )
                            .await;
                            return Ok(fresh.access_token);
                        }
                        Ok(None) => {
                            // Someone committed first (our lease had lapsed); theirs stands.
                            self.reload().await?;
                        }
                        Err(e) => {
                            tracing::error!(connection = %self.name, error = %e, "could not save rotated tokens; keeping them aside");
                            *unsaved = Some(fresh);
                            let _ = self
                                .store
                                .release_refresh(&self.connection_id, &self.owner)
                                .await;
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    async fn refresh_failed(&self, version: i64, e: OAuthError) -> HlError {
        if !e.is_permanent() {
            let _ = self
                .store
                .release_refresh(&self.connection_id, &self.owner)
                .await;
            tracing::warn!(connection = %self.name, error = %e, "token refresh failed; will try again");
            return refresh_err(e.to_string(), false);
        }
        let reason = format!("token refresh refused: {e}");
        match self
            .store
            .mark_connection_broken(&self.connection_id, &reason, Some(version))
            .await
        {
            Ok(true) => {
                tracing::error!(
                    connection = %self.name,
                    reason = %reason,
                    "HighLevel connection is broken; its flows are paused until it is authorized again with `hlbridge connect`"
                );
                self.audit(AuditAction::ConnectionBroken, json!({ "reason": reason }))
                    .await;
                refresh_err(
                    format!(
                        "connection `{}` is broken: {e}; authorize it again with `hlbridge connect`",
                        self.name
                    ),
                    true,
                )
            }
            // A refresh was committed meanwhile: the refusal was for a stale token.
            Ok(false) => refresh_err("the token was rotated by another process; retry", false),
            Err(se) => store_err(&se),
        }
    }
}

fn empty_tokens() -> OAuthTokens {
    OAuthTokens {
        access_token: String::new(),
        refresh_token: String::new(),
        expires_at: OffsetDateTime::UNIX_EPOCH,
        scope: None,
        user_type: None,
        location_id: None,
        company_id: None,
    }
}

impl TokenSource for DbTokenSource {
    fn access_token(&self) -> BoxFuture<'_, Result<String, HlError>> {
        Box::pin(async move {
            let t = self.current();
            if !t.expires_within(self.settings.skew, now()) {
                return Ok(t.access_token);
            }
            self.refresh(Want::Fresh).await
        })
    }

    fn refresh_after_reject(&self, rejected: &str) -> BoxFuture<'_, Result<String, HlError>> {
        let rejected = rejected.to_owned();
        Box::pin(async move { self.refresh(Want::Not(rejected)).await })
    }

    fn pacing_key(&self) -> Option<String> {
        let c = self.cached.read();
        c.tokens
            .location_id
            .clone()
            .or_else(|| c.tokens.company_id.clone())
    }
}

/// The token of one location of an agency connection (see the module docs).
pub struct LocationTokenSource {
    store: Arc<dyn SecurityStore>,
    vault: Arc<Vault>,
    http: reqwest::Client,
    agency: Arc<DbTokenSource>,
    company_id: String,
    location_id: String,
    skew: Duration,
    cached: RwLock<Option<(Secret, OffsetDateTime)>>,
    mint: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for LocationTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocationTokenSource")
            .field("connection", &self.agency.name())
            .field("location_id", &self.location_id)
            .finish_non_exhaustive()
    }
}

impl LocationTokenSource {
    /// The source of `location_id` under the agency connection behind `agency`.
    pub fn new(
        store: Arc<dyn SecurityStore>,
        vault: Arc<Vault>,
        http: reqwest::Client,
        agency: Arc<DbTokenSource>,
        company_id: &str,
        location_id: &str,
        skew: Duration,
    ) -> LocationTokenSource {
        LocationTokenSource {
            store,
            vault,
            http,
            agency,
            company_id: company_id.to_owned(),
            location_id: location_id.to_owned(),
            skew,
            cached: RwLock::new(None),
            mint: tokio::sync::Mutex::new(()),
        }
    }

    /// The location.
    pub fn location_id(&self) -> &str {
        &self.location_id
    }

    fn secret_ref(&self) -> SecretRef {
        SecretRef::new(
            LOCATIONS_TABLE,
            &format!("{}/{}", self.agency.connection_id(), self.location_id),
            "access_token",
        )
    }

    fn usable(&self, rejected: Option<&str>) -> Option<String> {
        let c = self.cached.read();
        let (t, exp) = c.as_ref()?;
        (*exp > now() + self.skew && rejected != Some(t.expose())).then(|| t.expose().to_owned())
    }

    /// Reads a token another process (or an earlier run) stored.
    async fn load_stored(&self) -> Result<(), HlError> {
        let locs = self
            .store
            .list_locations(self.agency.connection_id())
            .await
            .map_err(|e| store_err(&e))?;
        let Some(exp) = locs
            .iter()
            .find(|l| l.location_id == self.location_id)
            .and_then(|l| l.expires_at)
        else {
            return Ok(());
        };
        if let Some(t) = self
            .vault
            .get(&self.secret_ref())
            .await
            .map_err(|e| vault_err(&e))?
        {
            *self.cached.write() = Some((t, exp));
        }
        Ok(())
    }

    /// Mints a new location token now (and stores it).
    pub async fn mint_now(&self) -> Result<String, HlError> {
        let mut agency_token = self.agency.access_token().await?;
        let mut retried = false;
        let (token, expires_at) = loop {
            match oauth::location_token(
                &self.http,
                &self.agency.base_url,
                &agency_token,
                &self.company_id,
                &self.location_id,
            )
            .await
            {
                Ok(t) => break t,
                Err(OAuthError::Rejected(m)) if !retried && m.contains(" 401") => {
                    retried = true;
                    agency_token = self.agency.refresh_after_reject(&agency_token).await?;
                }
                Err(e) => {
                    if e.is_permanent() {
                        let rec = LocationRecord {
                            connection_id: self.agency.connection_id().to_owned(),
                            location_id: self.location_id.clone(),
                            name: None,
                            expires_at: None,
                            status: "broken".into(),
                            status_reason: Some(e.to_string()),
                            updated_at: now(),
                        };
                        let _ = self.store.upsert_location(&rec, None).await;
                    }
                    return Err(refresh_err(
                        format!("location {}: {e}", self.location_id),
                        e.is_permanent(),
                    ));
                }
            }
        };
        let r = self.secret_ref();
        let mut tries = 0;
        loop {
            let sealed = self
                .vault
                .seal(&r, &token)
                .await
                .map_err(|e| vault_err(&e))?;
            let rec = LocationRecord {
                connection_id: self.agency.connection_id().to_owned(),
                location_id: self.location_id.clone(),
                name: None,
                expires_at: Some(expires_at),
                status: "ok".into(),
                status_reason: None,
                updated_at: now(),
            };
            match self.store.upsert_location(&rec, Some((&r, &sealed))).await {
                Ok(()) => break,
                Err(StoreError::Conflict(_)) if tries < 3 => {
                    tries += 1;
                    self.vault.reload().await.map_err(|e| vault_err(&e))?;
                }
                Err(e) => return Err(store_err(&e)),
            }
        }
        tracing::info!(connection = %self.agency.name(), location_id = %self.location_id, "minted a location token");
        let out = token.expose().to_owned();
        *self.cached.write() = Some((token, expires_at));
        Ok(out)
    }

    async fn get(&self, rejected: Option<&str>) -> Result<String, HlError> {
        if let Some(t) = self.usable(rejected) {
            return Ok(t);
        }
        let _guard = self.mint.lock().await;
        if let Some(t) = self.usable(rejected) {
            return Ok(t);
        }
        self.load_stored().await?;
        if let Some(t) = self.usable(rejected) {
            return Ok(t);
        }
        self.mint_now().await
    }
}

impl TokenSource for LocationTokenSource {
    fn access_token(&self) -> BoxFuture<'_, Result<String, HlError>> {
        Box::pin(self.get(None))
    }

    fn refresh_after_reject(&self, rejected: &str) -> BoxFuture<'_, Result<String, HlError>> {
        let rejected = rejected.to_owned();
        Box::pin(async move { self.get(Some(&rejected)).await })
    }

    fn pacing_key(&self) -> Option<String> {
        Some(self.location_id.clone())
    }
}
