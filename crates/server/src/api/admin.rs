//! `/api/v1/users`, `/api/v1/tokens` and `/api/v1/audit`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiResult};
use crate::ServerState;
use crate::access::{AuditEntry, AuditFilter, TokenInfo, UserInfo, parse_role};
use crate::auth::{Principal, Require, Role, perm};

/// A user to create.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct NewUser {
    /// Login name.
    pub name: String,
    /// Role: owner, admin, editor, operator or viewer.
    #[schema(example = "editor")]
    pub role: String,
    /// Password (8 characters or more).
    pub password: String,
}

/// Changes to a user.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct UserChange {
    /// New role.
    #[serde(default)]
    pub role: Option<String>,
    /// New password.
    #[serde(default)]
    pub password: Option<String>,
}

/// A token to create.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct NewToken {
    /// What it is for.
    pub name: String,
    /// Role of its requests (at most your own).
    #[schema(example = "viewer")]
    pub role: String,
}

/// A created token: its secret is shown this once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// The token.
    pub token: TokenInfo,
    /// `Authorization: Bearer <secret>`. Not stored: copy it now.
    pub secret: String,
}

pub(crate) fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, add_user))
        .routes(routes!(update_user, remove_user))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(list_audit))
}

/// Nobody may give a role above their own; only owners create, change or remove owners.
pub(crate) fn check_owner_rule(
    who: &Principal,
    target_role: Option<Role>,
    new_role: Option<Role>,
) -> Result<(), ApiError> {
    if let Some(r) = new_role
        && !who.role.can_grant(r)
    {
        return Err(ApiError::forbidden(format!(
            "a {} may not give the {r} role",
            who.role
        )));
    }
    if target_role == Some(Role::Owner) && who.role != Role::Owner {
        return Err(ApiError::forbidden(
            "only an owner may change or remove an owner",
        ));
    }
    Ok(())
}

fn role(s: &str) -> Result<Role, ApiError> {
    Ok(parse_role(s)?)
}

/// Every user.
#[utoipa::path(get, path = "/users", tag = "admin", responses((status = 200, body = Vec<UserInfo>)))]
async fn list_users(
    State(state): State<ServerState>,
    _who: Require<perm::ManageUsers>,
) -> ApiResult<Vec<UserInfo>> {
    Ok(Json(state.access().users().await?))
}

pub(crate) async fn create_user(
    state: &ServerState,
    who: &Principal,
    body: &NewUser,
) -> Result<UserInfo, ApiError> {
    let r = role(&body.role)?;
    check_owner_rule(who, None, Some(r))?;
    Ok(state
        .access()
        .add_user(&body.name, r, &body.password, Some(who))
        .await?)
}

/// Adds a user with a role and a password.
#[utoipa::path(post, path = "/users", tag = "admin", request_body = NewUser,
    responses((status = 201, body = UserInfo), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn add_user(
    State(state): State<ServerState>,
    who: Require<perm::ManageUsers>,
    Json(body): Json<NewUser>,
) -> Result<Response, ApiError> {
    let info = create_user(&state, who.principal(), &body).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

pub(crate) async fn change_user(
    state: &ServerState,
    who: &Principal,
    name: &str,
    change: &UserChange,
) -> Result<UserInfo, ApiError> {
    let users = state.access().users().await?;
    let target = users
        .iter()
        .find(|u| u.name == name)
        .ok_or_else(|| ApiError::not_found(format!("user `{name}` not found")))?;
    let new_role = change.role.as_deref().map(role).transpose()?;
    check_owner_rule(who, Some(target.role), new_role)?;
    Ok(state
        .access()
        .update_user(name, new_role, change.password.as_deref(), who)
        .await?)
}

/// Changes a user's role or password (a new password ends their sessions).
#[utoipa::path(patch, path = "/users/{name}", tag = "admin", request_body = UserChange,
    params(("name" = String, Path, description = "User name")),
    responses((status = 200, body = UserInfo), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn update_user(
    State(state): State<ServerState>,
    who: Require<perm::ManageUsers>,
    Path(name): Path<String>,
    Json(change): Json<UserChange>,
) -> ApiResult<UserInfo> {
    Ok(Json(
        change_user(&state, who.principal(), &name, &change).await?,
    ))
}

pub(crate) async fn delete_user(
    state: &ServerState,
    who: &Principal,
    name: &str,
) -> Result<(), ApiError> {
    let users = state.access().users().await?;
    let target = users
        .iter()
        .find(|u| u.name == name)
        .ok_or_else(|| ApiError::not_found(format!("user `{name}` not found")))?;
    check_owner_rule(who, Some(target.role), None)?;
    Ok(state.access().remove_user(name, who).await?)
}

/// Removes a user.
#[utoipa::path(delete, path = "/users/{name}", tag = "admin",
    params(("name" = String, Path, description = "User name")),
    responses((status = 204, description = "Removed"), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn remove_user(
    State(state): State<ServerState>,
    who: Require<perm::ManageUsers>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_user(&state, who.principal(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every API token (never their secrets).
#[utoipa::path(get, path = "/tokens", tag = "admin", responses((status = 200, body = Vec<TokenInfo>)))]
async fn list_tokens(
    State(state): State<ServerState>,
    _who: Require<perm::ManageTokens>,
) -> ApiResult<Vec<TokenInfo>> {
    Ok(Json(state.access().tokens().await?))
}

pub(crate) async fn new_token(
    state: &ServerState,
    who: &Principal,
    body: &NewToken,
) -> Result<CreatedToken, ApiError> {
    let r = role(&body.role)?;
    if r < who.role {
        return Err(ApiError::forbidden(format!(
            "a {} may not create a token with the {r} role",
            who.role
        )));
    }
    let (token, secret) = state.access().create_token(&body.name, r, who).await?;
    Ok(CreatedToken { token, secret })
}

/// Creates an API token with a role (at most your own); the secret is shown once.
#[utoipa::path(post, path = "/tokens", tag = "admin", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
async fn create_token(
    State(state): State<ServerState>,
    who: Require<perm::ManageTokens>,
    Json(body): Json<NewToken>,
) -> Result<Response, ApiError> {
    let created = new_token(&state, who.principal(), &body).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

pub(crate) async fn revoke(state: &ServerState, who: &Principal, id: &str) -> Result<(), ApiError> {
    Ok(state.access().revoke_token(id, who).await?)
}

/// Revokes an API token.
#[utoipa::path(delete, path = "/tokens/{id}", tag = "admin",
    params(("id" = String, Path, description = "Token id")),
    responses((status = 204, description = "Revoked"), (status = 404, body = ApiError)))]
async fn revoke_token(
    State(state): State<ServerState>,
    who: Require<perm::ManageTokens>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    revoke(&state, who.principal(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The audit log, newest first: who did what, when and from where.
#[utoipa::path(get, path = "/audit", tag = "admin", params(AuditFilter),
    responses((status = 200, body = Vec<AuditEntry>), (status = 400, body = ApiError)))]
async fn list_audit(
    State(state): State<ServerState>,
    _who: Require<perm::ViewAudit>,
    Query(filter): Query<AuditFilter>,
) -> ApiResult<Vec<AuditEntry>> {
    Ok(Json(state.access().audit(&filter).await?))
}
