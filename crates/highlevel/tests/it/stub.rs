//! A local HighLevel stand-in: an axum server on 127.0.0.1:0 that answers every request with
//! a closure the test provides and records what it received.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hlbridge_highlevel::{Client, ClientConfig, PacingConfig, RetryConfig, Url};
use serde_json::Value;

/// One request the stub received.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HashMap<String, String>,
    pub raw_body: String,
    pub body: Value,
}

impl Req {
    /// First query value of `k`.
    pub fn q(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_str())
    }

    /// A header (lowercase name).
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers.get(k).map(String::as_str)
    }

    /// The bearer token.
    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
    }

    /// Form-encoded body fields.
    pub fn form(&self) -> HashMap<String, String> {
        url::form_urlencoded::parse(self.raw_body.as_bytes())
            .into_owned()
            .collect()
    }

    /// A paging parameter from the query, else the JSON body, as text.
    pub fn param(&self, k: &str) -> Option<String> {
        self.q(k).map(str::to_string).or_else(|| {
            self.body.get(k).map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        })
    }

    /// A numeric paging parameter.
    pub fn num(&self, k: &str) -> Option<usize> {
        self.param(k).and_then(|v| v.parse().ok())
    }
}

/// What the stub answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn json(v: Value) -> Reply {
        Reply::status(200, v)
    }

    pub fn status(status: u16, v: Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: if v.is_null() {
                String::new()
            } else {
                v.to_string()
            },
            delay: None,
        }
    }

    pub fn header(mut self, k: &str, v: impl ToString) -> Reply {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = Some(d);
        self
    }
}

type Handler = dyn Fn(&Req) -> Reply + Send + Sync;

struct StubState {
    handler: Box<Handler>,
    requests: Mutex<Vec<Req>>,
}

/// A running stub server.
pub struct Stub {
    pub base: Url,
    state: Arc<StubState>,
}

async fn handle(
    State(state): State<Arc<StubState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_body = String::from_utf8_lossy(&body).into_owned();
    let req = Req {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: serde_json::from_str(&raw_body).unwrap_or(Value::Null),
        raw_body,
    };
    let reply = (state.handler)(&req);
    state
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(req);
    if let Some(d) = reply.delay {
        tokio::time::sleep(d).await;
    }
    let mut resp = (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        reply.body,
    )
        .into_response();
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

impl Stub {
    /// Starts a stub answering with `handler`; its base URL has a `/prefix/` path so every
    /// test also proves the client keeps a base path.
    pub async fn start(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Stub {
        let state = Arc::new(StubState {
            handler: Box::new(handler),
            requests: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Stub {
            base: Url::parse(&format!("http://{addr}/prefix/")).expect("stub URL"),
            state,
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Req> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Requests to paths ending with `suffix`.
    pub fn requests_to(&self, suffix: &str) -> Vec<Req> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with(suffix))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.state
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Test settings: fast retries, pacing off unless a test turns it on.
    pub fn config(&self) -> ClientConfig {
        ClientConfig {
            base_url: self.base.clone(),
            pacing: PacingConfig {
                enabled: false,
                ..PacingConfig::default()
            },
            retry: RetryConfig {
                max_attempts: 4,
                base_delay: Duration::from_millis(5),
                max_delay: Duration::from_secs(3),
            },
            timeout: Duration::from_secs(5),
            ..ClientConfig::default()
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.config()).expect("client")
    }

    pub fn client_with(&self, f: impl FnOnce(&mut ClientConfig)) -> Client {
        let mut c = self.config();
        f(&mut c);
        Client::new(c).expect("client")
    }
}

/// A server-side burst limit: at most `limit` accepted requests in any `interval` window
/// (sliding), like a strict HighLevel.
pub struct Window {
    limit: usize,
    interval: Duration,
    log: Mutex<VecDeque<Instant>>,
}

impl Window {
    pub fn new(limit: usize, interval: Duration) -> Window {
        Window {
            limit,
            interval,
            log: Mutex::new(VecDeque::new()),
        }
    }

    /// Accepts (returning what remains) or refuses one request now.
    pub fn admit(&self) -> Result<usize, ()> {
        let now = Instant::now();
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        while log.front().is_some_and(|t| *t + self.interval <= now) {
            log.pop_front();
        }
        if log.len() >= self.limit {
            return Err(());
        }
        log.push_back(now);
        Ok(self.limit - log.len())
    }

    /// A reply with HighLevel's rate-limit headers: 200 with `body` or a 429.
    pub fn reply(&self, body: Value) -> Reply {
        let ms = self.interval.as_millis();
        match self.admit() {
            Ok(remaining) => Reply::json(body)
                .header("x-ratelimit-max", self.limit)
                .header("x-ratelimit-remaining", remaining)
                .header("x-ratelimit-interval-milliseconds", ms),
            Err(()) => Reply::status(
                429,
                serde_json::json!({"statusCode": 429, "message": "Too many requests"}),
            )
            .header("x-ratelimit-max", self.limit)
            .header("x-ratelimit-remaining", 0)
            .header("x-ratelimit-interval-milliseconds", ms),
        }
    }
}
