//! The admin REST API under `/api/v1`, with its OpenAPI document (generated from the
//! handlers by `utoipa`) at `/api/v1/openapi.json`.
//!
//! Every route states what it needs in its signature ([`crate::auth::Require`]); errors are
//! JSON `{code, message}` (plus `details`, e.g. the diagnostics of a flow that does not
//! compile). See [`crate::auth`] for the role table and CSRF rules.

pub mod admin;
pub mod catalog;
pub mod connections;
pub mod flows;
pub mod runs;
pub mod session;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use crate::ServerState;
use crate::access::AccessError;
use crate::auth::Principal;
use crate::connections::ConnectionError;
use crate::flowstore::FlowError;

/// An API error: status, a stable code and a message for people.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    /// HTTP status.
    #[serde(skip)]
    pub status: u16,
    /// Stable machine-readable code (`not_found`, `invalid_flow`, `forbidden`, …).
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// More (e.g. every diagnostic of a flow).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Box<Value>>,
}

impl ApiError {
    /// An error.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl std::fmt::Display,
    ) -> ApiError {
        ApiError {
            status: status.as_u16(),
            code,
            message: message.to_string(),
            details: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404.
    pub fn not_found(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 403.
    pub fn forbidden(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 500/503 for a failing store.
    pub fn unavailable(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// With details.
    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(Box::new(details));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = json!({ "code": self.code, "message": self.message });
        if let Some(d) = self.details {
            body["details"] = *d;
        }
        (status, Json(body)).into_response()
    }
}

impl From<FlowError> for ApiError {
    fn from(e: FlowError) -> Self {
        match e {
            FlowError::Invalid(diags) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_flow",
                format!("{} error(s) in the flow", diags.len()),
            )
            .with_details(json!({ "diagnostics": diags })),
            FlowError::NotFound(id) => ApiError::not_found(format!("unknown flow `{id}`")),
            FlowError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            FlowError::Storage(m) => ApiError::unavailable(m),
        }
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        let (status, code) = match &e {
            AccessError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AccessError::Throttled(_) => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
            AccessError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AccessError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AccessError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AccessError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AccessError::Storage(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        ApiError::new(status, code, e)
    }
}

impl From<ConnectionError> for ApiError {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::NotFound(_) => ApiError::not_found(e),
            ConnectionError::Invalid(_) => ApiError::bad_request(e),
            ConnectionError::Unsupported(_) => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_supported", e)
            }
        }
    }
}

impl From<hlbridge_engine::store::StoreError> for ApiError {
    fn from(e: hlbridge_engine::store::StoreError) -> Self {
        use hlbridge_engine::store::StoreError;
        match e {
            StoreError::NotFound(m) => ApiError::not_found(format!("{m} not found")),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            other => {
                tracing::warn!(error = %other, "store error in the admin API");
                ApiError::unavailable("the store is unavailable")
            }
        }
    }
}

/// Result of an API handler.
pub type ApiResult<T> = Result<Json<T>, ApiError>;

/// Records an audit entry for `who` (failures are logged, never hide the action's result).
pub(crate) async fn audit(
    state: &ServerState,
    who: &Principal,
    action: hlbridge_engine::security::AuditAction,
    target: &str,
    source: &str,
    detail: Value,
) {
    if let Err(e) = state
        .access()
        .record(Some(who), action, target, source, detail)
        .await
    {
        tracing::error!(error = %e, action = action.as_str(), "could not write the audit log");
    }
}

/// The OpenAPI document's frame (paths and schemas come from the handlers).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "hlbridge admin API",
        description = "Flows, runs, dead letters, connections, users, API tokens and the audit log of an hlbridge server. Authenticate with `Authorization: Bearer <api token>` (create one with `POST /api/v1/tokens` or in the UI), or with the session cookie of `POST /api/v1/session` plus the `x-csrf-token` header on requests that change something. Errors are `{code, message}`."
    ),
    modifiers(&Security),
    tags(
        (name = "session", description = "Sign in and out"),
        (name = "flows", description = "Flows: create, update, enable, disable, validate, test against the sandbox"),
        (name = "runs", description = "Runs and dead letters, replay"),
        (name = "connections", description = "HighLevel and app connections"),
        (name = "admin", description = "Users, API tokens, audit log"),
        (name = "catalog", description = "Operations, triggers, templates, mapping preview, dashboard")
    )
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::auth::SESSION_COOKIE,
            ))),
        );
    }
}

/// The API routes (already nested under `/api/v1`) and their OpenAPI document.
pub fn routes() -> (axum::Router<ServerState>, utoipa::openapi::OpenApi) {
    let router = OpenApiRouter::new()
        .merge(session::routes())
        .merge(flows::routes())
        .merge(runs::routes())
        .merge(connections::routes())
        .merge(admin::routes())
        .merge(catalog::routes());
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", router)
        .split_for_parts();
    let mut sec = utoipa::openapi::security::SecurityRequirement::default();
    sec = sec.add::<&str, [&str; 0], &str>("bearer", []);
    let cookie =
        utoipa::openapi::security::SecurityRequirement::new::<&str, [&str; 0], &str>("session", []);
    doc.security = Some(vec![sec, cookie]);
    let json = doc.to_json().unwrap_or_else(|_| "{}".to_owned());
    let router = router.route(
        "/api/v1/openapi.json",
        get(move || {
            let json = json.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    json,
                )
            }
        }),
    );
    (router, doc)
}

/// The OpenAPI document of the admin API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

/// Unknown `/api/…` routes.
pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}
