//! `/api/v1/connections`: list with health, create, refresh.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiResult};
use crate::ServerState;
use crate::auth::{Require, perm};
use crate::connections::{ConnectionInfo, NewConnection};

pub(crate) fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(refresh))
}

/// Every connection with its health (`ok`, `broken` with the reason, or `unchecked`).
#[utoipa::path(get, path = "/connections", tag = "connections",
    responses((status = 200, body = Vec<ConnectionInfo>)))]
async fn list(
    State(state): State<ServerState>,
    _who: Require<perm::Read>,
) -> ApiResult<Vec<ConnectionInfo>> {
    Ok(Json(state.connections().list().await))
}

/// Creates a connection: a HighLevel Private Integration Token (`highlevel_token`), an
/// OAuth connection (`highlevel_oauth`) or an app connection (`app`).
#[utoipa::path(post, path = "/connections", tag = "connections", request_body = NewConnection,
    responses((status = 201, body = ConnectionInfo), (status = 400, body = ApiError),
              (status = 501, description = "This server's connections are fixed at start", body = ApiError)))]
async fn create(
    State(state): State<ServerState>,
    who: Require<perm::EditConnections>,
    Json(body): Json<NewConnection>,
) -> Result<Response, ApiError> {
    let info = state.connections().create(body, who.principal()).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// Refreshes a connection (token refresh for OAuth; a health check with a real call for
/// the others).
#[utoipa::path(post, path = "/connections/{name}/refresh", tag = "connections",
    params(("name" = String, Path, description = "Connection name")),
    responses((status = 200, body = ConnectionInfo), (status = 404, body = ApiError)))]
async fn refresh(
    State(state): State<ServerState>,
    who: Require<perm::EditConnections>,
    Path(name): Path<String>,
) -> ApiResult<ConnectionInfo> {
    Ok(Json(
        state.connections().refresh(&name, who.principal()).await?,
    ))
}
