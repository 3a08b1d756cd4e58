//! `/api/v1/session`: sign in (a session cookie plus its CSRF token), who am I, sign out;
//! `/api/v1/setup`: the first owner account, from this machine only, while there is none.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::ApiError;
use crate::ServerState;
use crate::auth::{Authed, Principal, Role, SESSION_COOKIE, Source, Via};

/// Credentials.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Login {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// Who is signed in.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// Name.
    pub name: String,
    /// Role.
    #[schema(value_type = String, example = "editor")]
    pub role: Role,
    /// `session` or `token`.
    pub via: String,
    /// The CSRF token to send as `x-csrf-token` with changes (sessions only).
    pub csrf: Option<String>,
}

impl Me {
    fn of(p: &Principal) -> Me {
        Me {
            name: p.name.clone(),
            role: p.role,
            via: match p.via {
                Via::Session { .. } => "session".into(),
                Via::Token { .. } => "token".into(),
            },
            csrf: match &p.via {
                Via::Session { csrf } => Some(csrf.clone()),
                Via::Token { .. } => None,
            },
        }
    }
}

pub(crate) fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new()
        .routes(routes!(login, me, logout))
        .routes(routes!(setup))
}

/// Signs in (the access backend throttles and audits the attempt).
pub(crate) async fn sign_in(
    state: &ServerState,
    user: &str,
    password: &str,
    source: &str,
) -> Result<crate::access::NewSession, ApiError> {
    Ok(state
        .access()
        .authenticate_password(user, password, source)
        .await?)
}

/// Sign in with a user name and password.
#[utoipa::path(post, path = "/session", tag = "session", request_body = Login,
    responses((status = 200, description = "Signed in; the session cookie is set", body = Me),
              (status = 401, body = ApiError), (status = 429, description = "Too many failed sign-ins", body = ApiError)),
    security(()))]
async fn login(
    State(state): State<ServerState>,
    Source(source): Source,
    Json(body): Json<Login>,
) -> Result<Response, ApiError> {
    let s = sign_in(&state, &body.user, &body.password, &source).await?;
    let cookie = crate::auth::session_cookie(&s.id, s.max_age_secs);
    Ok(([(header::SET_COOKIE, cookie)], Json(Me::of(&s.principal))).into_response())
}

/// Who is signed in (and the CSRF token of a session).
#[utoipa::path(get, path = "/session", tag = "session",
    responses((status = 200, body = Me), (status = 401, body = ApiError)))]
async fn me(Authed(p): Authed) -> Json<Me> {
    Json(Me::of(&p))
}

/// Sign out (ends the session).
#[utoipa::path(delete, path = "/session", tag = "session",
    responses((status = 204, description = "Signed out"), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn logout(
    State(state): State<ServerState>,
    Authed(_p): Authed,
    Source(source): Source,
    parts: axum::http::HeaderMap,
) -> Response {
    if let Some(id) = session_id(&parts) {
        state.access().logout(&id, &source).await;
    }
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, crate::auth::clear_cookie())],
    )
        .into_response()
}

pub(crate) fn session_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_owned())
}

/// Creates the first user (an owner) when there is none; only from this machine.
pub(crate) async fn create_first_owner(
    state: &ServerState,
    loopback: bool,
    user: &str,
    password: &str,
    source: &str,
) -> Result<crate::access::NewSession, ApiError> {
    if !loopback {
        return Err(ApiError::forbidden(
            "the first account can only be created from this machine (or with `hlbridge users add`)",
        ));
    }
    if state.access().has_users().await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "users exist already; sign in",
        ));
    }
    state
        .access()
        .add_user(user, Role::Owner, password, None)
        .await?;
    sign_in(state, user, password, source).await
}

/// Creates the first owner account (only while no user exists, only from this machine)
/// and signs it in.
#[utoipa::path(post, path = "/setup", tag = "session", request_body = Login,
    responses((status = 200, body = Me), (status = 403, body = ApiError), (status = 409, body = ApiError)),
    security(()))]
async fn setup(
    State(state): State<ServerState>,
    Source(source): Source,
    peer: Loopback,
    Json(body): Json<Login>,
) -> Result<Response, ApiError> {
    let s = create_first_owner(&state, peer.0, &body.user, &body.password, &source).await?;
    let cookie = crate::auth::session_cookie(&s.id, s.max_age_secs);
    Ok(([(header::SET_COOKIE, cookie)], Json(Me::of(&s.principal))).into_response())
}

/// Whether the request comes from loopback.
pub(crate) struct Loopback(pub bool);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Loopback {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Loopback(crate::auth::from_loopback(parts)))
    }
}
