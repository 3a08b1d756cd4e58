//! The HTTP routes and their handlers (see the crate docs for what each answers).

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hlbridge_engine::flow::Trigger;
use hlbridge_engine::{Engine, IngressError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ServerState;
use crate::lookup::{LookupError, LookupKey};
use crate::metrics::{Source, prometheus};

/// Seconds a sender is asked to wait before retrying when the store is unavailable.
const RETRY_AFTER_SECS: u64 = 5;

/// The server's routes over `state`, with the request body limit applied: ingress, lookup,
/// health and metrics, and (unless [`crate::ServeConfig::admin`] is off) the admin API
/// and the web UI.
pub fn router(state: ServerState) -> Router {
    let limit = state.body_limit();
    let mut router = Router::new()
        .route("/hooks/highlevel", post(highlevel_hook))
        .route("/hooks/app/{flow}", post(app_hook))
        .route("/lookup/contact", get(lookup_contact))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    if state.admin_enabled() {
        let (api, _) = crate::api::routes();
        router = router
            .merge(api)
            .route("/api/{*rest}", axum::routing::any(crate::api::not_found))
            .merge(crate::ui::routes())
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::auth::csrf_form_field,
            ));
    }
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The client's address, when the server was started with connect info.
struct Peer(Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// Proof that a lookup request carries the lookup token (when one is configured).
struct LookupAuthorized;

impl FromRequestParts<ServerState> for LookupAuthorized {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ServerState,
    ) -> Result<Self, Self::Rejection> {
        let Some(expected) = state.lookup_token() else {
            return Ok(LookupAuthorized);
        };
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match given {
            Some(t) if ct_eq(t.as_bytes(), expected.as_bytes()) => Ok(LookupAuthorized),
            _ => Err(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the contact lookup needs `Authorization: Bearer <lookup token>`",
            )),
        }
    }
}

/// Constant-time equality (the length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({ "error": code, "message": message.to_string() })),
    )
        .into_response()
}

fn with_retry_after(mut resp: Response, secs: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// The answer to a refused webhook. A store failure asks the sender to retry: 429 for
/// HighLevel (the only status it retries after), 503 for apps.
fn ingress_error(source: Source, e: &IngressError) -> Response {
    let (status, code) = match e {
        IngressError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
        IngressError::Stale(_) => (StatusCode::UNAUTHORIZED, "stale"),
        IngressError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        IngressError::UnknownFlow(_) => (StatusCode::NOT_FOUND, "unknown_flow"),
        IngressError::Store(_) => {
            let status = match source {
                Source::HighLevel => StatusCode::TOO_MANY_REQUESTS,
                Source::App => StatusCode::SERVICE_UNAVAILABLE,
            };
            return with_retry_after(
                error(
                    status,
                    "unavailable",
                    "the event store is unavailable; retry later",
                ),
                RETRY_AFTER_SECS,
            );
        }
    };
    error(status, code, e)
}

/// How many enabled flows listen for the event type of this (not yet verified) body.
fn listening_flows(engine: &Engine, body: &[u8]) -> usize {
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    let Some(kind) = serde_json::from_slice::<Kind<'_>>(body)
        .ok()
        .and_then(|k| k.kind)
    else {
        return 0;
    };
    engine
        .flows()
        .iter()
        .filter(|f| f.flow.enabled)
        .filter(|f| match &f.flow.trigger {
            Trigger::HighlevelWebhook(t) => t.events.iter().any(|e| *e == *kind),
            _ => false,
        })
        .count()
}

async fn highlevel_hook(
    State(state): State<ServerState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let engine = state.engine();
    let listeners = listening_flows(engine, &body);
    match engine.accept_highlevel_webhook(&headers, &body).await {
        Ok(runs) => {
            let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let duplicate = runs.is_empty() && listeners > 0;
            if duplicate {
                let id = event.get("webhookId").and_then(Value::as_str);
                state.ingress().duplicate(Source::HighLevel, peer, None, id);
            } else {
                state.ingress().accepted(Source::HighLevel, runs.len());
                state.lookup().on_event(&event);
            }
            (
                StatusCode::OK,
                Json(json!({ "runs": runs, "duplicate": duplicate })),
            )
                .into_response()
        }
        Err(e) => {
            state.ingress().rejected(Source::HighLevel, peer, None, &e);
            ingress_error(Source::HighLevel, &e)
        }
    }
}

async fn app_hook(
    State(state): State<ServerState>,
    Peer(peer): Peer,
    Path(flow): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match state
        .engine()
        .accept_app_webhook(&flow, &headers, &body)
        .await
    {
        Ok(Some(run)) => {
            state.ingress().accepted(Source::App, 1);
            (
                StatusCode::ACCEPTED,
                Json(json!({ "run_id": run, "flow": flow })),
            )
                .into_response()
        }
        Ok(None) => {
            state
                .ingress()
                .duplicate(Source::App, peer, Some(&flow), None);
            (
                StatusCode::OK,
                Json(json!({ "duplicate": true, "flow": flow })),
            )
                .into_response()
        }
        Err(e) => {
            state.ingress().rejected(Source::App, peer, Some(&flow), &e);
            ingress_error(Source::App, &e)
        }
    }
}

/// Query of `GET /lookup/contact`.
#[derive(Debug, Deserialize)]
struct LookupQuery {
    email: Option<String>,
    id: Option<String>,
}

async fn lookup_contact(
    State(state): State<ServerState>,
    _auth: LookupAuthorized,
    query: Result<Query<LookupQuery>, QueryRejection>,
) -> Response {
    let key = match query {
        Ok(Query(LookupQuery {
            email: Some(email),
            id: None,
        })) => LookupKey::email(&email),
        Ok(Query(LookupQuery {
            email: None,
            id: Some(id),
        })) => LookupKey::id(&id),
        Ok(_) => Err(LookupError::BadRequest(
            "give exactly one of `email` or `id`".into(),
        )),
        Err(e) => Err(LookupError::BadRequest(e.body_text())),
    };
    let result = match key {
        Ok(key) => state.lookup().lookup(key).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(found) => {
            let mut resp = (StatusCode::OK, Json(&*found.value)).into_response();
            let h = resp.headers_mut();
            h.insert(
                "x-hlbridge-cache",
                HeaderValue::from_static(if found.cached { "hit" } else { "miss" }),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e @ LookupError::NotFound(_)) => error(StatusCode::NOT_FOUND, "not_found", e),
        Err(e @ LookupError::BadRequest(_)) => error(StatusCode::BAD_REQUEST, "bad_request", e),
        Err(ref e @ LookupError::Unavailable { retry_after, .. }) => {
            tracing::warn!(error = %e, "contact lookup failed");
            with_retry_after(
                error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
                retry_after.map_or(RETRY_AFTER_SECS, |d| d.as_secs_f64().ceil() as u64),
            )
        }
        Err(ref e @ LookupError::Upstream { status, .. }) => {
            tracing::warn!(error = %e, "contact lookup refused by HighLevel");
            (
                StatusCode::BAD_GATEWAY,
                Json(json!({ "error": "upstream", "status": status, "message": e.to_string() })),
            )
                .into_response()
        }
    }
}

async fn healthz(State(state): State<ServerState>) -> Response {
    // A primary-key read: cheap, and it fails when the database does.
    match state.engine().store().get_cursor("_healthz", "_").await {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "flows": state.engine().flows().len() })),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check: the store is unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "message": "the store is unreachable" })),
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<ServerState>) -> Response {
    let m = state.metrics();
    let mut text = prometheus(&m);
    text.push_str(&crate::metrics::prometheus_engine(
        &m,
        &state.engine_metrics().await,
    ));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such route")
}
