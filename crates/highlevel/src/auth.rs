//! Authentication: where a call's bearer token comes from.
//!
//! A call carries an [`Auth`], a cheap handle on a [`TokenSource`]. Two sources ship here:
//! a static token ([`Auth::token`], for Private Integration Tokens) and
//! [`OAuthTokenSource`], which refreshes an OAuth 2.0 access token ahead of expiry and after
//! a 401, **single-flight**: however many calls find the token expired at once, exactly one
//! `POST /oauth/token` is made and everyone else waits for its result.
//!
//! HighLevel rotates the refresh token on every refresh and invalidates the old one, so the
//! new tokens are handed to a [`TokenStore`] and the store must have saved them **before**
//! the new access token is given to any caller. If saving fails, the new tokens are kept
//! aside (not used) and saving is retried before any new refresh is attempted, because the
//! old refresh token no longer works.
//!
//! Tokens never appear in `Debug` output, errors or logs.

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use url::Url;

use crate::error::Error;
use crate::request::endpoint_url;

/// Where access tokens come from.
///
/// Methods return boxed futures so the trait stays dyn-compatible (`Arc<dyn TokenSource>`).
pub trait TokenSource: Send + Sync {
    /// A valid access token (refreshing ahead of expiry when needed).
    fn access_token(&self) -> BoxFuture<'_, Result<String, Error>>;

    /// Called after a 401: refresh unless someone already replaced `rejected`.
    fn refresh_after_reject(&self, rejected: &str) -> BoxFuture<'_, Result<String, Error>>;

    /// Key that pacing budgets are shared under when the call carries no locationId (e.g. the
    /// token's location or company id).
    fn pacing_key(&self) -> Option<String>;

    /// Whether [`refresh_after_reject`](TokenSource::refresh_after_reject) can produce a new
    /// token. When `false`, a 401 is final at once. Default `true`.
    fn can_refresh(&self) -> bool {
        true
    }
}

/// The credentials of a call: a cheap, cloneable handle on a [`TokenSource`].
#[derive(Clone)]
pub struct Auth {
    source: Arc<dyn TokenSource>,
}

impl Auth {
    /// A fixed bearer token (Private Integration Token, or an access token managed elsewhere).
    pub fn token(token: impl Into<String>) -> Auth {
        Auth::from_source(Arc::new(StaticToken::new(token)))
    }

    /// A fixed bearer token whose calls are paced under `pacing_key` (its location or company
    /// id) when they name no location themselves.
    pub fn token_for(token: impl Into<String>, pacing_key: impl Into<String>) -> Auth {
        Auth::from_source(Arc::new(
            StaticToken::new(token).with_pacing_key(pacing_key),
        ))
    }

    /// Any token source.
    pub fn from_source(src: Arc<dyn TokenSource>) -> Auth {
        Auth { source: src }
    }

    /// The token source.
    pub fn source(&self) -> &Arc<dyn TokenSource> {
        &self.source
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("pacing_key", &self.source.pacing_key())
            .finish_non_exhaustive()
    }
}

/// A token that never changes (Private Integration Token). A 401 with it is final.
#[derive(Clone)]
pub struct StaticToken {
    token: String,
    pacing_key: Option<String>,
}

impl StaticToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> StaticToken {
        StaticToken {
            token: token.into(),
            pacing_key: None,
        }
    }

    /// Sets the pacing key (the token's location or company id).
    pub fn with_pacing_key(mut self, key: impl Into<String>) -> StaticToken {
        self.pacing_key = Some(key.into());
        self
    }
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticToken")
            .field("token", &"<redacted>")
            .field("pacing_key", &self.pacing_key)
            .finish()
    }
}

impl TokenSource for StaticToken {
    fn access_token(&self) -> BoxFuture<'_, Result<String, Error>> {
        Box::pin(async move { Ok(self.token.clone()) })
    }

    fn refresh_after_reject(&self, _rejected: &str) -> BoxFuture<'_, Result<String, Error>> {
        Box::pin(async move {
            Err(Error::TokenRefresh {
                message: "the token was rejected and a static token cannot be refreshed".into(),
                permanent: true,
            })
        })
    }

    fn pacing_key(&self) -> Option<String> {
        self.pacing_key.clone()
    }

    fn can_refresh(&self) -> bool {
        false
    }
}

/// An OAuth 2.0 token set as HighLevel's `/oauth/token` returns it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthTokens {
    /// Bearer token for API calls.
    pub access_token: String,
    /// Single-use refresh token (rotated on every refresh).
    pub refresh_token: String,
    /// When the access token expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Granted scopes, space-separated.
    #[serde(default)]
    pub scope: Option<String>,
    /// `Location` or `Company`.
    #[serde(default)]
    pub user_type: Option<String>,
    /// The location (sub-account) of a location token.
    #[serde(default)]
    pub location_id: Option<String>,
    /// The company (agency).
    #[serde(default)]
    pub company_id: Option<String>,
}

impl fmt::Debug for OAuthTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthTokens")
            .field("access_token", &"<redacted>")
            .field("refresh_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("user_type", &self.user_type)
            .field("location_id", &self.location_id)
            .field("company_id", &self.company_id)
            .finish()
    }
}

impl OAuthTokens {
    /// Reads a `/oauth/token` answer received at `now`. Fields the answer lacks (other than
    /// the access token) are taken from `previous` when given.
    pub fn from_token_response(
        body: &Value,
        now: OffsetDateTime,
        previous: Option<&OAuthTokens>,
    ) -> Result<OAuthTokens, Error> {
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let invalid = |what: &str| Error::TokenRefresh {
            message: format!("HighLevel's token answer has no {what}"),
            permanent: false,
        };
        let access_token = text("access_token").ok_or_else(|| invalid("access_token"))?;
        let refresh_token = text("refresh_token")
            .or_else(|| previous.map(|p| p.refresh_token.clone()))
            .ok_or_else(|| invalid("refresh_token"))?;
        let expires_in = body
            .get("expires_in")
            .and_then(|v| {
                v.as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(86_399.0);
        let expires_at = now + Duration::from_secs_f64(expires_in.min(1e9));
        let keep = |new: Option<String>, old: Option<&Option<String>>| {
            new.or_else(|| old.cloned().flatten())
        };
        Ok(OAuthTokens {
            access_token,
            refresh_token,
            expires_at,
            scope: keep(text("scope"), previous.map(|p| &p.scope)),
            user_type: keep(text("userType"), previous.map(|p| &p.user_type)),
            location_id: keep(text("locationId"), previous.map(|p| &p.location_id)),
            company_id: keep(text("companyId"), previous.map(|p| &p.company_id)),
        })
    }

    /// Whether the access token expires within `skew` of `now`.
    pub fn expires_within(&self, skew: Duration, now: OffsetDateTime) -> bool {
        self.expires_at <= now + skew
    }
}

/// Where rotated tokens are saved (the vault, a database row, a file).
pub trait TokenStore: Send + Sync {
    /// Saves the new tokens durably; the new access token is not used until this succeeds.
    fn save(&self, tokens: &OAuthTokens) -> BoxFuture<'_, Result<(), Error>>;
}

/// A store that keeps nothing (tokens live only in memory; a restart needs a new grant).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopTokenStore;

impl TokenStore for NoopTokenStore {
    fn save(&self, _tokens: &OAuthTokens) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

/// A store that keeps every saved token set in memory (for tests and one-off tools).
#[derive(Debug, Default)]
pub struct MemoryTokenStore {
    saved: Mutex<Vec<OAuthTokens>>,
}

impl MemoryTokenStore {
    /// An empty store.
    pub fn new() -> MemoryTokenStore {
        MemoryTokenStore::default()
    }

    /// Every token set saved so far, oldest first.
    pub fn saved(&self) -> Vec<OAuthTokens> {
        self.saved.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The last token set saved.
    pub fn latest(&self) -> Option<OAuthTokens> {
        self.saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .cloned()
    }
}

impl TokenStore for MemoryTokenStore {
    fn save(&self, tokens: &OAuthTokens) -> BoxFuture<'_, Result<(), Error>> {
        let tokens = tokens.clone();
        Box::pin(async move {
            self.saved
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(tokens);
            Ok(())
        })
    }
}

/// Default refresh skew: refresh when the access token has less than this left.
pub const DEFAULT_REFRESH_SKEW: Duration = Duration::from_secs(5 * 60);

/// A transient refresh failure is reported to callers that were waiting for it for this long
/// instead of each of them trying again.
const FAILURE_MEMORY: Duration = Duration::from_secs(1);

struct Current {
    generation: u64,
    tokens: OAuthTokens,
}

#[derive(Default)]
struct RefreshState {
    /// Tokens obtained but not yet saved (the previous refresh token is already dead).
    unsaved: Option<OAuthTokens>,
    /// The last failure: when, for which generation, message, permanent.
    failure: Option<(std::time::Instant, u64, String, bool)>,
}

/// OAuth 2.0 token source for one connection (one location or company token).
///
/// Refreshes ahead of expiry ([`with_refresh_skew`](Self::with_refresh_skew), default 5 min)
/// and after a 401, single-flight: a `tokio::sync::Mutex` serialises refreshes and a
/// generation number tells a waiter that someone else already refreshed while it waited.
pub struct OAuthTokenSource {
    http: reqwest::Client,
    token_url: Url,
    client_id: String,
    client_secret: String,
    store: Arc<dyn TokenStore>,
    skew: Duration,
    current: RwLock<Current>,
    refresh: tokio::sync::Mutex<RefreshState>,
}

impl fmt::Debug for OAuthTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthTokenSource")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("tokens", &self.current())
            .finish_non_exhaustive()
    }
}

impl OAuthTokenSource {
    /// A source for `tokens`, refreshing at `http_base` + `/oauth/token` (the API base URL,
    /// e.g. `https://services.leadconnectorhq.com`) and saving rotated tokens to `store`.
    pub fn new(
        http_base: Url,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        tokens: OAuthTokens,
        store: Arc<dyn TokenStore>,
    ) -> OAuthTokenSource {
        let token_url = endpoint_url(&http_base, "/oauth/token").unwrap_or(http_base);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("hlbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        OAuthTokenSource {
            http,
            token_url,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            store,
            skew: DEFAULT_REFRESH_SKEW,
            current: RwLock::new(Current {
                generation: 0,
                tokens,
            }),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
        }
    }

    /// Refresh when the access token has less than `skew` left (default 5 minutes).
    pub fn with_refresh_skew(mut self, skew: Duration) -> OAuthTokenSource {
        self.skew = skew;
        self
    }

    /// Uses this HTTP client for refreshes.
    pub fn with_http_client(mut self, http: reqwest::Client) -> OAuthTokenSource {
        self.http = http;
        self
    }

    /// The tokens in use (the last saved set).
    pub fn current(&self) -> OAuthTokens {
        self.read().1
    }

    fn read(&self) -> (u64, OAuthTokens) {
        let c = self.current.read().unwrap_or_else(|p| p.into_inner());
        (c.generation, c.tokens.clone())
    }

    fn publish(&self, tokens: OAuthTokens) -> String {
        let mut c = self.current.write().unwrap_or_else(|p| p.into_inner());
        c.generation += 1;
        let access = tokens.access_token.clone();
        c.tokens = tokens;
        access
    }

    /// Refreshes unless the generation moved past `seen` while we waited for the lock.
    async fn refresh_from(&self, seen: u64) -> Result<String, Error> {
        let mut state = self.refresh.lock().await;
        let (generation, tokens) = self.read();
        if generation != seen {
            return Ok(tokens.access_token);
        }
        if let Some((at, generation_failed, message, permanent)) = &state.failure
            && *generation_failed == generation
            && (*permanent || at.elapsed() < FAILURE_MEMORY)
        {
            return Err(Error::TokenRefresh {
                message: message.clone(),
                permanent: *permanent,
            });
        }
        let fresh = match state.unsaved.take() {
            Some(t) => t,
            None => match self.post_refresh(&tokens).await {
                Ok(t) => t,
                Err(e) => {
                    if let Error::TokenRefresh { message, permanent } = &e {
                        state.failure = Some((
                            std::time::Instant::now(),
                            generation,
                            message.clone(),
                            *permanent,
                        ));
                    }
                    return Err(e);
                }
            },
        };
        if let Err(e) = self.store.save(&fresh).await {
            tracing::error!(error = %e, "could not save rotated HighLevel tokens; keeping them aside");
            state.unsaved = Some(fresh);
            return Err(Error::TokenRefresh {
                message: format!("the rotated tokens could not be saved: {e}"),
                permanent: false,
            });
        }
        state.failure = None;
        tracing::info!(
            location_id = fresh.location_id.as_deref().unwrap_or(""),
            company_id = fresh.company_id.as_deref().unwrap_or(""),
            expires_at = %fresh.expires_at,
            "refreshed HighLevel OAuth token"
        );
        Ok(self.publish(fresh))
    }

    async fn post_refresh(&self, tokens: &OAuthTokens) -> Result<OAuthTokens, Error> {
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", &self.client_id),
            ("client_secret", &self.client_secret),
            ("grant_type", "refresh_token"),
            ("refresh_token", &tokens.refresh_token),
        ];
        if let Some(t) = tokens.user_type.as_deref() {
            form.push(("user_type", t));
        }
        let resp = self
            .http
            .post(self.token_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| Error::TokenRefresh {
                message: format!("could not reach {}: {}", self.token_url, without_url(&e)),
                permanent: false,
            })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| Error::TokenRefresh {
            message: format!("could not read the token answer: {}", without_url(&e)),
            permanent: false,
        })?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = ["error_description", "message", "error"]
                .iter()
                .find_map(|k| body.get(*k))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_else(|| status.to_string());
            // 400/401/403: the refresh token or client credentials were rejected.
            let permanent = matches!(status.as_u16(), 400 | 401 | 403);
            return Err(Error::TokenRefresh {
                message: format!("HighLevel answered {}: {detail}", status.as_u16()),
                permanent,
            });
        }
        OAuthTokens::from_token_response(&body, OffsetDateTime::now_utc(), Some(tokens))
    }
}

/// A reqwest error's message without the URL (which is ours anyway).
fn without_url(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    if e.is_timeout() {
        parts.push("timed out".to_string());
    } else if e.is_connect() {
        parts.push("connection failed".to_string());
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        parts.push(c.to_string());
        cause = c.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}

impl TokenSource for OAuthTokenSource {
    fn access_token(&self) -> BoxFuture<'_, Result<String, Error>> {
        Box::pin(async move {
            let (generation, tokens) = self.read();
            if !tokens.expires_within(self.skew, OffsetDateTime::now_utc()) {
                return Ok(tokens.access_token);
            }
            self.refresh_from(generation).await
        })
    }

    fn refresh_after_reject(&self, rejected: &str) -> BoxFuture<'_, Result<String, Error>> {
        let rejected = rejected.to_string();
        Box::pin(async move {
            let (generation, tokens) = self.read();
            if tokens.access_token != rejected {
                return Ok(tokens.access_token);
            }
            self.refresh_from(generation).await
        })
    }

    fn pacing_key(&self) -> Option<String> {
        let c = self.current.read().unwrap_or_else(|p| p.into_inner());
        c.tokens
            .location_id
            .clone()
            .or_else(|| c.tokens.company_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    #[test]
    fn token_response_rotates_and_keeps_known_fields() {
        let now = datetime!(2024-01-01 00:00:00 UTC);
        let old = OAuthTokens {
            access_token: "a0".into(),
            refresh_token: "r0".into(),
            expires_at: now,
            scope: Some("contacts.readonly".into()),
            user_type: Some("Location".into()),
            location_id: Some("loc".into()),
            company_id: None,
        };
        let t = OAuthTokens::from_token_response(
            &json!({"access_token": "a1", "refresh_token": "r1", "expires_in": 86399, "companyId": "co"}),
            now,
            Some(&old),
        )
        .expect("valid answer");
        assert_eq!(
            (t.access_token.as_str(), t.refresh_token.as_str()),
            ("a1", "r1")
        );
        assert_eq!(t.expires_at, now + Duration::from_secs(86399));
        assert_eq!(t.location_id.as_deref(), Some("loc"));
        assert_eq!(t.company_id.as_deref(), Some("co"));
        assert!(t.expires_within(Duration::from_secs(100), now + Duration::from_secs(86300)));
        assert!(!t.expires_within(Duration::from_secs(100), now));
        let e = OAuthTokens::from_token_response(&json!({}), now, None);
        assert!(matches!(e, Err(Error::TokenRefresh { .. })));
    }

    #[test]
    fn debug_never_shows_tokens() {
        let t = OAuthTokens {
            access_token: "secret-access".into(),
            refresh_token: "secret-refresh".into(),
            expires_at: datetime!(2024-01-01 00:00:00 UTC),
            scope: None,
            user_type: None,
            location_id: None,
            company_id: None,
        };
        let s = format!(
            "{t:?} {:?} {:?}",
            StaticToken::new("secret-pit"),
            Auth::token("secret-pit")
        );
        assert!(!s.contains("secret"), "{s}");
    }
}
