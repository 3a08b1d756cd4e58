//! Access control for the admin API and the web UI, as axum extractors: a handler's
//! signature says what it needs.
//!
//! - [`Authed`]: any signed-in principal (a session cookie from the login form, or
//!   `Authorization: Bearer <api token>`).
//! - [`Require<A>`]: a principal whose role may perform the action `A` (a marker type of
//!   [`perm`], e.g. `Require<perm::EditFlows>`); otherwise 403.
//!
//! Both check CSRF for cookie-authenticated requests with an unsafe method (anything but
//! GET, HEAD and OPTIONS): the session cookie is `SameSite=Strict` and `HttpOnly`, and the
//! request must also carry the session's CSRF token in the `x-csrf-token` header (the UI's
//! forms send it as the `_csrf` field, moved into the header by [`csrf_form_field`]), and an
//! `Origin` header, when present, must name this host. Bearer-token requests carry no
//! ambient credentials, so they need no CSRF token.
//!
//! Failures answer JSON `{code, message}` under `/api/`, and for the UI a redirect to the
//! login page (401) or an HTML page (403).
//!
//! The role table is the engine's ([`Role::can`], `hlbridge_engine::security::users::PERMISSIONS`):
//!
//! | action | owner | admin | editor | operator | viewer |
//! |---|---|---|---|---|---|
//! | read (flows, runs, connections, dead letters, catalog) | ✓ | ✓ | ✓ | ✓ | ✓ |
//! | replay runs and dead letters | ✓ | ✓ | ✓ | ✓ | |
//! | edit flows (create, update, enable, disable, test) | ✓ | ✓ | ✓ | | |
//! | edit connections (create, refresh) | ✓ | ✓ | ✓ | | |
//! | read the audit log | ✓ | ✓ | | | |
//! | manage users and API tokens | ✓ | ✓ | | | |
//!
//! An admin cannot create, change or remove an owner, nor make anyone an owner.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, OriginalUri, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Serialize;
use serde_json::json;

use crate::ServerState;
use crate::access::AccessError;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "hlbridge_session";
/// Header carrying the CSRF token of a cookie session.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Form field carrying the CSRF token (moved into [`CSRF_HEADER`] by [`csrf_form_field`]).
pub const CSRF_FIELD: &str = "_csrf";

pub use hlbridge_engine::security::{Action, Role};

/// Marker types naming an [`Action`] for [`Require`].
pub mod perm {
    use super::Action;

    /// A marker naming one [`Action`].
    pub trait Permission: Send + Sync + 'static {
        /// The action.
        const ACTION: Action;
    }

    /// [`Action::View`]: read flows, runs, connections, the catalog.
    #[derive(Debug, Clone, Copy)]
    pub struct Read;
    impl Permission for Read {
        const ACTION: Action = Action::View;
    }

    /// [`Action::OperateRuns`]: replay runs and dead letters.
    #[derive(Debug, Clone, Copy)]
    pub struct Replay;
    impl Permission for Replay {
        const ACTION: Action = Action::OperateRuns;
    }

    macro_rules! permission {
        ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $name;
            impl Permission for $name {
                const ACTION: Action = Action::$name;
            }
        )*};
    }

    permission!(
        /// [`Action::EditFlows`].
        EditFlows,
        /// [`Action::EditConnections`].
        EditConnections,
        /// [`Action::ViewAudit`].
        ViewAudit,
        /// [`Action::ManageUsers`].
        ManageUsers,
        /// [`Action::ManageTokens`].
        ManageTokens,
    );
}

/// How a principal authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Via {
    /// A session cookie from the login form.
    Session {
        /// The session's CSRF token (the UI puts it in its forms).
        #[serde(skip)]
        csrf: String,
    },
    /// An API token.
    Token {
        /// The token's id (not its secret).
        id: String,
    },
}

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// User name (for a token: the token's name).
    pub name: String,
    /// Role in force.
    pub role: Role,
    /// How it authenticated.
    pub via: Via,
}

impl Principal {
    /// Whether the principal may perform `action`.
    pub fn can(&self, action: Action) -> bool {
        self.role.can(action)
    }

    /// The CSRF token of a cookie session (empty for tokens).
    pub fn csrf(&self) -> &str {
        match &self.via {
            Via::Session { csrf } => csrf,
            Via::Token { .. } => "",
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No (valid) credentials: 401.
    Unauthenticated(String),
    /// The role may not do this, or a CSRF check failed: 403.
    Forbidden(String),
    /// Too many failed logins: 429.
    Throttled(String),
    /// The access store failed: 503.
    Unavailable(String),
}

/// The rejection of [`Authed`] and [`Require`]: JSON for the API, a redirect or an HTML
/// page for the UI.
#[derive(Debug)]
pub struct AuthRejection {
    refusal: Refusal,
    api: bool,
    path: String,
}

impl AuthRejection {
    /// The refusal.
    pub fn refusal(&self) -> &Refusal {
        &self.refusal
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self.refusal {
            Refusal::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m),
            Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            Refusal::Throttled(m) => (StatusCode::TOO_MANY_REQUESTS, "throttled", m),
            Refusal::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
        };
        if self.api {
            return (status, Json(json!({ "code": code, "message": message }))).into_response();
        }
        match self.refusal {
            Refusal::Unauthenticated(_) => {
                let next = percent_encode(&self.path);
                Redirect::to(&format!("/login?next={next}")).into_response()
            }
            _ => crate::ui::error_page(status, message),
        }
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_./~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Constant-time equality (the length is not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of a cookie in the request.
pub(crate) fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The `Origin` check: when a browser names an origin, its host must be this host.
fn origin_ok(parts: &Parts) -> bool {
    let Some(origin) = parts
        .headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    let Some(host) = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    origin_host.eq_ignore_ascii_case(host)
}

fn refusal_of(e: AccessError) -> Refusal {
    match e {
        AccessError::Unauthenticated(m) => Refusal::Unauthenticated(m),
        AccessError::Throttled(m) => Refusal::Throttled(m),
        AccessError::Forbidden(m) => Refusal::Forbidden(m),
        other @ (AccessError::NotFound(_)
        | AccessError::Conflict(_)
        | AccessError::Invalid(_)
        | AccessError::Storage(_)) => Refusal::Unavailable(other.to_string()),
    }
}

/// Authenticates a request (token or session, CSRF for unsafe cookie requests).
pub(crate) async fn authenticate(parts: &Parts, state: &ServerState) -> Result<Principal, Refusal> {
    let access = state.access();
    if let Some(token) = bearer(parts) {
        return access.authenticate_token(token).await.map_err(refusal_of);
    }
    let Some(session) = cookie(parts, SESSION_COOKIE) else {
        return Err(Refusal::Unauthenticated(
            "sign in, or send `Authorization: Bearer <api token>`".into(),
        ));
    };
    let principal = access
        .authenticate_session(session)
        .await
        .map_err(refusal_of)?;
    if !is_safe(&parts.method) {
        let given = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if given.is_empty() || !ct_eq(given.as_bytes(), principal.csrf().as_bytes()) {
            return Err(Refusal::Forbidden(format!(
                "missing or wrong CSRF token: a signed-in browser request that changes something must send the `{CSRF_HEADER}` header (or the `{CSRF_FIELD}` form field)"
            )));
        }
        if !origin_ok(parts) {
            return Err(Refusal::Forbidden(
                "cross-origin request refused (Origin does not match Host)".into(),
            ));
        }
    }
    Ok(principal)
}

fn rejection(parts: &Parts, refusal: Refusal) -> AuthRejection {
    // Nested routers see their own part of the path; the original is kept aside.
    let uri = parts
        .extensions
        .get::<OriginalUri>()
        .map_or(&parts.uri, |o| &o.0);
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    AuthRejection {
        refusal,
        api: uri.path().starts_with("/api/"),
        path,
    }
}

/// Any authenticated principal.
#[derive(Debug, Clone)]
pub struct Authed(pub Principal);

impl FromRequestParts<ServerState> for Authed {
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ServerState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(Authed(p.clone()));
        }
        match authenticate(parts, state).await {
            Ok(p) => {
                parts.extensions.insert(p.clone());
                Ok(Authed(p))
            }
            Err(r) => Err(rejection(parts, r)),
        }
    }
}

/// A principal allowed to perform `A` (see [`perm`]); 403 otherwise.
pub struct Require<A: perm::Permission>(pub Principal, PhantomData<A>);

impl<A: perm::Permission> fmt::Debug for Require<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Require")
            .field(&A::ACTION)
            .field(&self.0)
            .finish()
    }
}

impl<A: perm::Permission> Require<A> {
    /// The principal.
    pub fn principal(&self) -> &Principal {
        &self.0
    }
}

impl<A: perm::Permission> FromRequestParts<ServerState> for Require<A> {
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ServerState,
    ) -> Result<Self, Self::Rejection> {
        let Authed(p) = Authed::from_request_parts(parts, state).await?;
        if p.can(A::ACTION) {
            Ok(Require(p, PhantomData))
        } else {
            let refusal = Refusal::Forbidden(format!(
                "the {} role may not {}",
                p.role,
                match A::ACTION {
                    Action::View => "read this",
                    Action::OperateRuns => "replay runs",
                    Action::ManageVault => "manage the vault",
                    Action::EditFlows => "change flows",
                    Action::EditConnections => "change connections",
                    Action::ViewAudit => "read the audit log",
                    Action::ManageUsers => "manage users",
                    Action::ManageTokens => "manage API tokens",
                }
            ));
            Err(rejection(parts, refusal))
        }
    }
}

/// The principal if the request is authenticated, without refusing otherwise (login page,
/// navigation).
#[derive(Debug, Clone)]
pub struct MaybeAuthed(pub Option<Principal>);

impl FromRequestParts<ServerState> for MaybeAuthed {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ServerState,
    ) -> Result<Self, Self::Rejection> {
        Ok(MaybeAuthed(
            Authed::from_request_parts(parts, state)
                .await
                .ok()
                .map(|a| a.0),
        ))
    }
}

/// The client's address as text (audit "from where"), when known.
#[derive(Debug, Clone)]
pub struct Source(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Source(source_of(parts)))
    }
}

pub(crate) fn source_of(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "-".to_owned(), |c| c.0.ip().to_string())
}

/// Whether the request comes from this machine (first-owner setup is allowed only then).
pub(crate) fn from_loopback(parts: &Parts) -> bool {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|c| c.0.ip().is_loopback())
}

/// The `Set-Cookie` value of a new session.
pub(crate) fn session_cookie(id: &str, max_age_secs: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("hlbridge_session=; Path=/; Max-Age=0"))
}

/// The `Set-Cookie` value that ends a session.
pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("hlbridge_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Middleware: for a urlencoded form POST without the CSRF header, moves the `_csrf` form
/// field into the header, so the extractors check forms and scripts alike. Bodies larger
/// than the server's limit are left alone (the handler refuses them).
pub async fn csrf_form_field(
    State(state): State<ServerState>,
    req: Request,
    next: Next,
) -> Response {
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form || is_safe(req.method()) || req.headers().contains_key(CSRF_HEADER) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, state.body_limit()).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({ "code": "too_large", "message": "request body too large" })),
            )
                .into_response();
        }
    };
    if let Some(token) = form_urlencoded_field(&bytes, CSRF_FIELD)
        && let Ok(v) = HeaderValue::from_str(&token)
    {
        parts.headers.insert(CSRF_HEADER, v);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn form_urlencoded_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_the_engine_actions() {
        use perm::Permission;
        assert_eq!(perm::Read::ACTION, Action::View);
        assert_eq!(perm::Replay::ACTION, Action::OperateRuns);
        assert!(
            Role::Operator.can(perm::Replay::ACTION) && !Role::Viewer.can(perm::Replay::ACTION)
        );
        assert!(
            Role::Editor.can(perm::EditFlows::ACTION)
                && !Role::Operator.can(perm::EditFlows::ACTION)
        );
    }

    #[test]
    fn form_field_and_encoding() {
        assert_eq!(
            form_urlencoded_field(b"a=1&_csrf=x%2By&b=2", "_csrf").as_deref(),
            Some("x+y")
        );
        assert_eq!(form_urlencoded_field(b"a=1", "_csrf"), None);
        assert_eq!(percent_encode("/runs?flow=a b"), "/runs%3Fflow%3Da%20b");
    }
}
