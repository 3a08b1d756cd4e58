//! A stand-in app on loopback: an HTTP server that records every request it receives and
//! answers `200 {"ok": true}` (or a status set for tests). It plays EcoSend in
//! `hlbridge demo` and the app in behaviour tests, and doubles as a webhook catcher.
//!
//! `GET /_received` lists what it received so far (that request is not recorded).
//!
//! With a [`Sender`], it can also send events to hlbridge the way an app does:
//! `POST /send/<flow>` with a JSON body is signed (HMAC-SHA256 of the body, hex, in
//! `x-signature`) and forwarded to `<server>/hooks/app/<flow>`; such requests are not
//! recorded as calls received.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::Notify;

/// One request the app received.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    /// HTTP method.
    pub method: String,
    /// Path (without the query).
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    #[serde(skip)]
    pub raw: Bytes,
    /// The body as JSON (`null` when empty, a string when not JSON).
    pub body: Value,
    /// The status the app answered with.
    pub status: u16,
    /// When it arrived.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Received {
    /// A header's value (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The headers as an `http` header map (for handing a caught webhook to the engine).
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::from_bytes(k.as_bytes()),
                axum::http::HeaderValue::from_str(v),
            ) {
                map.append(name, value);
            }
        }
        map
    }
}

/// How the app sends events to hlbridge (`POST /send/<flow>`).
#[derive(Debug, Clone)]
pub struct Sender {
    /// hlbridge's base URL (`http://127.0.0.1:8080`).
    pub server_url: String,
    /// The shared secret the app signs its events with.
    pub secret: String,
}

struct AppState {
    received: Mutex<Vec<Received>>,
    status: Mutex<u16>,
    bearer: Option<String>,
    sender: Mutex<Option<Sender>>,
    http: reqwest::Client,
    notify: Notify,
}

/// A running stand-in app.
pub struct StandInApp {
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    state: Arc<AppState>,
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StandInApp {
    /// Starts the app on `bind`. When `bearer` is set, requests without
    /// `Authorization: Bearer <bearer>` are answered 401 (and still recorded).
    pub async fn start(bind: SocketAddr, bearer: Option<String>) -> anyhow::Result<StandInApp> {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen on {bind}"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(AppState {
            received: Mutex::new(Vec::new()),
            status: Mutex::new(200),
            bearer,
            sender: Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            notify: Notify::new(),
        });
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "stand-in app stopped");
            }
        });
        Ok(StandInApp {
            url: format!("http://{addr}"),
            state,
            stop,
            task: Some(task),
        })
    }

    /// Sets the status the app answers with from now on.
    pub fn set_status(&self, status: u16) {
        *self.state.status.lock() = status;
    }

    /// Lets the app send events to hlbridge through `POST /send/<flow>`.
    pub fn set_sender(&self, sender: Sender) {
        *self.state.sender.lock() = Some(sender);
    }

    /// Every request received so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().clone()
    }

    /// Waits until `pred` holds for the requests received, or `timeout` passes; returns
    /// whether it holds.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.notify.notified();
            if pred(&self.state.received.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&self.state.received.lock());
            }
        }
    }

    /// Sends an event to hlbridge as the app does: `POST <server>/hooks/app/<flow>`, the
    /// body signed with HMAC-SHA256 in `x-signature`. Returns the status and the answer.
    pub async fn send_event(&self, flow: &str, event: &Value) -> anyhow::Result<(u16, Value)> {
        let sender = self
            .state
            .sender
            .lock()
            .clone()
            .context("this app has no hlbridge server to send to")?;
        let body = serde_json::to_vec(event)?;
        send(&self.state.http, &sender, flow, body).await
    }

    /// Stops the server.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for StandInApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn send(
    http: &reqwest::Client,
    sender: &Sender,
    flow: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Value)> {
    let signature = hlbridge_engine::triggers::sign_hmac_sha256(sender.secret.as_bytes(), &body);
    let url = format!(
        "{}/hooks/app/{flow}",
        sender.server_url.trim_end_matches('/')
    );
    let resp = http
        .post(&url)
        .header("content-type", "application/json")
        .header("x-signature", signature)
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let answer = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, answer))
}

async fn handle(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    if method == Method::GET && path == "/_received" {
        let all = state.received.lock().clone();
        return (StatusCode::OK, axum::Json(json!(all))).into_response();
    }
    if method == Method::POST
        && let Some(flow) = path.strip_prefix("/send/").filter(|f| !f.is_empty())
    {
        let sender = state.sender.lock().clone();
        let Some(sender) = sender else {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": "this app does not send events"})),
            )
                .into_response();
        };
        if serde_json::from_slice::<Value>(&body).is_err() {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "the body must be a JSON event"})),
            )
                .into_response();
        }
        return match send(&state.http, &sender, flow, body.to_vec()).await {
            Ok((status, answer)) => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                axum::Json(answer),
            )
                .into_response(),
            Err(e) => (
                StatusCode::BAD_GATEWAY,
                axum::Json(json!({"error": format!("{e:#}")})),
            )
                .into_response(),
        };
    }
    let authorized = match &state.bearer {
        None => true,
        Some(expected) => headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t == expected),
    };
    let status = if authorized {
        *state.status.lock()
    } else {
        401
    };
    let parsed = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    let n = {
        let mut received = state.received.lock();
        received.push(Received {
            method: method.as_str().to_owned(),
            path,
            query: uri.query().map(str::to_owned),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            raw: body,
            body: parsed,
            status,
            at: OffsetDateTime::now_utc(),
        });
        received.len()
    };
    state.notify.notify_waiters();
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let answer = if code.is_success() {
        json!({ "ok": true, "received": n })
    } else if status == 401 {
        json!({ "error": "missing or wrong bearer token" })
    } else {
        json!({ "error": format!("the app answers {status} (set by the test)") })
    };
    (code, axum::Json(answer)).into_response()
}
