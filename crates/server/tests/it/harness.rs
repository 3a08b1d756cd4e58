//! The test harness: an in-process sandbox on 127.0.0.1:0, an engine on a temp data dir
//! talking to it through the real client, and the server on 127.0.0.1:0.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hlbridge_engine::validate::compile_source;
use hlbridge_engine::{
    ClientApi, Connection, Engine, EngineConfig, HighLevelApi, RunDetail, RunFilter, RunState,
    ValidationContext,
};
use hlbridge_highlevel::webhooks::WebhookSigner;
use hlbridge_highlevel::{Auth, Client, ClientConfig, PacingConfig, RetryConfig, Url};
use hlbridge_sandbox::ratelimit::RateLimitConfig;
use hlbridge_sandbox::{Sandbox, SandboxConfig, StartupInfo};
use hlbridge_server::{RunningServer, ServeConfig, serve};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Options of [`Harness::start`].
pub struct Options {
    /// Flow sources (TOML).
    pub flows: Vec<String>,
    /// Extra trusted HighLevel webhook keys.
    pub webhook_keys: Vec<String>,
    /// Trust the sandbox's own webhook key (raw base64).
    pub trust_sandbox: bool,
    /// Point the sandbox's webhooks at the server's `/hooks/highlevel`.
    pub sandbox_webhooks: bool,
    /// Start the engine's polls and schedules.
    pub run_triggers: bool,
    /// Contact lookup TTL.
    pub lookup_ttl: Duration,
    /// Lookup token.
    pub lookup_token: Option<String>,
    /// Request body limit.
    pub body_limit: usize,
    /// Open the engine with its HighLevel API observed (`hlbridge_server::Telemetry`), so
    /// the dashboard and `/metrics` know each location's budget.
    pub observe: bool,
    /// App connections of the engine (name → base URL).
    pub app_connections: Vec<(String, String)>,
    /// Where the admin API and the UI write flows.
    pub flows_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            flows: Vec::new(),
            webhook_keys: Vec::new(),
            trust_sandbox: false,
            sandbox_webhooks: false,
            run_triggers: true,
            lookup_ttl: Duration::from_secs(300),
            lookup_token: None,
            body_limit: 64 * 1024,
            observe: false,
            app_connections: Vec::new(),
            flows_dir: None,
        }
    }
}

pub struct Harness {
    pub sandbox: Sandbox,
    pub info: StartupInfo,
    pub engine: Engine,
    pub server: RunningServer,
    /// What tests use to change the sandbox (with the client's retries).
    pub hl: Arc<dyn HighLevelApi>,
    pub http: reqwest::Client,
    /// The engine's data directory (removed by [`Harness::shutdown`]).
    pub data: PathBuf,
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hlbridge-server-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A signer whose public key tests trust, and that key.
pub fn test_signer() -> (WebhookSigner, String) {
    let signer = WebhookSigner::from_ed25519_seed([7; 32]);
    let key = signer.ed25519_public_key_base64();
    (signer, key)
}

fn api_for(info: &StartupInfo, retry_attempts: u32) -> Arc<dyn HighLevelApi> {
    Arc::new(client_api_for(info, retry_attempts, false))
}

fn client_api_for(info: &StartupInfo, retry_attempts: u32, pace: bool) -> ClientApi {
    let client = Client::new(ClientConfig {
        base_url: Url::parse(&info.base_url).expect("url"),
        pacing: PacingConfig {
            enabled: pace,
            ..PacingConfig::default()
        },
        retry: RetryConfig {
            max_attempts: retry_attempts,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
        ..ClientConfig::default()
    })
    .expect("client");
    let mut conns = HashMap::new();
    conns.insert(
        "default".to_owned(),
        Connection {
            auth: Auth::token(info.token.clone()),
            location_id: Some(info.location_id.clone()),
        },
    );
    ClientApi::new(client, conns)
}

pub fn op(id: &str) -> &'static hlbridge_highlevel::Operation {
    hlbridge_highlevel::operations::find(id).unwrap_or_else(|| panic!("no operation {id}"))
}

impl Harness {
    pub async fn start(tag: &str, opts: Options) -> Harness {
        let mut sandbox_cfg = SandboxConfig::for_tests();
        sandbox_cfg.rate_limit = RateLimitConfig {
            enabled: false,
            ..RateLimitConfig::default()
        };
        let sandbox = Sandbox::start(sandbox_cfg).await.expect("sandbox");
        let info = sandbox.info();
        // No client-side retries for the engine: its durable retries are under test.
        let telemetry = hlbridge_server::Telemetry::new();
        let api = if opts.observe {
            let c = client_api_for(&info, 1, true);
            telemetry.api(Arc::new(c.clone()), Some(c))
        } else {
            api_for(&info, 1)
        };
        let hl = api_for(&info, 5);

        let data = temp_dir(tag);
        let mut cfg = EngineConfig::with_data_dir(&data);
        cfg.idle_poll = Duration::from_millis(20);
        cfg.lease = Duration::from_secs(5);
        cfg.workers = 2;
        cfg.worker_name = format!("it-{tag}");
        cfg.highlevel_webhook_keys = opts.webhook_keys.clone();
        for (name, url) in &opts.app_connections {
            cfg.app_connections.insert(
                name.clone(),
                hlbridge_engine::AppConnection {
                    base_url: Some(url.clone()),
                    headers: HashMap::new(),
                },
            );
        }
        if opts.trust_sandbox {
            cfg.highlevel_webhook_keys
                .push(info.webhook_public_keys.ed25519_raw.clone());
        }
        let engine = Engine::open_with(cfg, api.clone()).await.expect("engine");
        let compiled = opts
            .flows
            .iter()
            .enumerate()
            .map(|(i, src)| {
                compile_source(
                    &format!("{tag}-{i}.toml"),
                    src,
                    &ValidationContext::default(),
                )
                .unwrap_or_else(|d| {
                    panic!(
                        "{}",
                        d.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                })
            })
            .collect();
        engine.add_flows(compiled).await.expect("flows");

        let server = serve(
            engine.clone(),
            ServeConfig {
                bind: "127.0.0.1:0".parse().expect("addr"),
                body_limit: opts.body_limit,
                lookup_ttl: opts.lookup_ttl,
                lookup_token: opts.lookup_token.clone(),
                highlevel: Some(api.clone()),
                run_triggers: opts.run_triggers,
                shutdown_grace: Duration::from_secs(5),
                telemetry: opts.observe.then_some(telemetry),
                flows_dir: opts.flows_dir.clone(),
                ..ServeConfig::default()
            },
            CancellationToken::new(),
        )
        .await
        .expect("serve");
        if opts.sandbox_webhooks {
            sandbox
                .shared()
                .delivery
                .add_url(format!("{}/hooks/highlevel", server.base_url));
        }
        Harness {
            sandbox,
            info,
            engine,
            server,
            hl,
            http: reqwest::Client::new(),
            data,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url)
    }

    /// Calls an operation on the sandbox (test set-up), panicking on failure.
    pub async fn call(&self, op_id: &str, params: Value) -> Value {
        self.hl
            .call("default", op(op_id), params)
            .await
            .unwrap_or_else(|e| panic!("{op_id}: {e:?}"))
    }

    /// Creates a contact and returns its id.
    pub async fn contact(&self, email: &str, first_name: &str) -> String {
        let c = self
            .call(
                "contacts.create",
                json!({ "email": email, "firstName": first_name }),
            )
            .await;
        c["contact"]["id"].as_str().expect("contact id").to_owned()
    }

    /// A sandbox admin request.
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}/_sandbox{path}", self.info.base_url))
            .bearer_auth(&self.info.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin request");
        assert!(
            resp.status().is_success(),
            "admin {path}: {}",
            resp.status()
        );
        resp.json().await.expect("admin json")
    }

    /// Adds a sandbox fault rule, returning its id.
    pub async fn fault(&self, rule: Value) -> String {
        let r = self
            .admin(reqwest::Method::POST, "/faults", Some(rule))
            .await;
        r["id"].as_str().expect("fault id").to_owned()
    }

    /// Requests the sandbox has served so far (all keys).
    pub async fn sandbox_requests(&self) -> u64 {
        let stats = self.admin(reqwest::Method::GET, "/stats", None).await;
        stats["rateLimits"]
            .as_object()
            .map(|m| m.values().filter_map(|s| s["total"].as_u64()).sum())
            .unwrap_or(0)
    }

    /// The sandbox's webhook delivery log.
    pub async fn webhook_log(&self) -> Vec<Value> {
        self.admin(reqwest::Method::GET, "/webhooks/log", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Runs of a flow, newest first.
    pub async fn runs(&self, flow: &str) -> Vec<hlbridge_engine::RunSummary> {
        self.engine
            .store()
            .list_runs(&RunFilter {
                flow_id: Some(flow.to_owned()),
                state: None,
                limit: 10_000,
            })
            .await
            .expect("runs")
    }

    pub async fn detail(&self, id: hlbridge_engine::RunId) -> RunDetail {
        self.engine
            .store()
            .run_detail(id)
            .await
            .expect("detail")
            .expect("run exists")
    }

    /// Waits until every run of `flow` is final and there are `n` of them.
    pub async fn settle(&self, flow: &str, n: usize) -> Vec<hlbridge_engine::RunSummary> {
        wait_for(10, &format!("{n} final runs of {flow}"), || async {
            let runs = self.runs(flow).await;
            runs.len() == n && runs.iter().all(|r| r.state.is_final())
        })
        .await;
        self.runs(flow).await
    }

    /// A contact's tags in the sandbox.
    pub fn tags(&self, contact: &str) -> Vec<String> {
        self.sandbox
            .doc("contact", contact)
            .and_then(|c| c["tags"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect()
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await.expect("clean shutdown");
        self.sandbox.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Every run in `runs` is in `state`.
pub fn all_in(runs: &[hlbridge_engine::RunSummary], state: RunState) -> bool {
    runs.iter().all(|r| r.state == state)
}

/// Waits until `cond` holds (polling), or panics after `secs`.
pub async fn wait_for<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Headers signing `body` with `signer`, as HighLevel sends them.
pub fn signed(signer: &WebhookSigner, body: &[u8]) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    for (k, v) in signer.sign(body) {
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    h.insert(
        reqwest::header::CONTENT_TYPE,
        reqwest::header::HeaderValue::from_static("application/json"),
    );
    h
}

/// Now as RFC 3339.
pub fn now_text() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
