//! Shared helpers: start a sandbox, call it like a client would, catch its webhooks.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::HeaderMap;
use hlbridge_sandbox::{Sandbox, SandboxConfig, StartupInfo};
use serde_json::Value;
use tokio::sync::Mutex;

/// A started sandbox with an HTTP client.
pub struct Env {
    pub sandbox: Sandbox,
    pub info: StartupInfo,
    pub http: reqwest::Client,
}

impl Env {
    pub async fn start(config: SandboxConfig) -> Env {
        let sandbox = Sandbox::start(config).await.expect("sandbox starts");
        let info = sandbox.info();
        Env {
            sandbox,
            info,
            http: reqwest::Client::new(),
        }
    }

    pub async fn default() -> Env {
        Self::start(SandboxConfig::for_tests()).await
    }

    /// Calls the API with the full-scope token and the given Version.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        version: &str,
        body: Option<Value>,
    ) -> (u16, Value, HeaderMap) {
        self.call_as(&self.info.token.clone(), method, path, version, body)
            .await
    }

    pub async fn call_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        version: &str,
        body: Option<Value>,
    ) -> (u16, Value, HeaderMap) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(method, format!("{}{}", self.info.base_url, path))
            .bearer_auth(token)
            .header("Version", version);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("sandbox answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json, headers)
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(method, format!("{}/_sandbox{}", self.info.base_url, path))
            .bearer_auth(&self.info.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// A webhook receiver on 127.0.0.1:0 that records what it gets and answers with a set status.
#[derive(Clone)]
pub struct TestReceiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    pub status: Arc<std::sync::atomic::AtomicU16>,
}

impl TestReceiver {
    pub async fn start() -> TestReceiver {
        let received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
        let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let (r2, s2) = (received.clone(), status.clone());
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let (r, s) = (r2.clone(), s2.clone());
            async move {
                r.lock().await.push((headers, body));
                axum::http::StatusCode::from_u16(s.load(std::sync::atomic::Ordering::SeqCst))
                    .unwrap_or(axum::http::StatusCode::OK)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestReceiver {
            url,
            received,
            status,
        }
    }

    /// Waits until at least `n` deliveries arrived (up to 5 s) and returns them as JSON.
    pub async fn wait_for(&self, n: usize) -> Vec<(HeaderMap, Bytes)> {
        for _ in 0..100 {
            if self.received.lock().await.len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.received.lock().await.clone()
    }

    pub async fn events(&self) -> Vec<Value> {
        self.received
            .lock()
            .await
            .iter()
            .filter_map(|(_, b)| serde_json::from_slice(b).ok())
            .collect()
    }
}

pub const V: &str = "2021-07-28";
