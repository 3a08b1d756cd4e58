//! "Test against the sandbox": runs a flow on a fresh in-process HighLevel sandbox, with
//! its own engine (temporary store) and a stand-in app that answers every `http` step with
//! 200, and reports each run's steps (the rendered request, the response or error, timing)
//! and every HighLevel call the flow made.
//!
//! Inputs are cases: setup calls (made first, not counted), then events sent the way the
//! trigger receives them — an app event signed with the flow's secret through the app
//! webhook ingress, a HighLevel event signed and sent through the HighLevel webhook ingress,
//! anything else enqueued as the event. A flow's behaviour test file (the format of
//! `hlbridge flows test`) gives such cases; its expectations `state`, `runs`, `calls` and
//! `contacts` (`exists`, `tags_include`, `tags_exclude`) are checked here, the others are
//! listed as not checked (run `hlbridge flows test` for those).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use futures::future::BoxFuture;
use hlbridge_engine::flow::{AppAuth, Step, Trigger};
use hlbridge_engine::template::{self, Compiler, Scope};
use hlbridge_engine::triggers::sign_hmac_sha256;
use hlbridge_engine::validate::{ValidationContext, compile_source};
use hlbridge_engine::{
    AppConnection, ClientApi, Connection, Diagnostic, Engine, EngineConfig, HighLevelApi,
    RunDetail, RunId, RunState, StepError,
};
use hlbridge_highlevel::webhooks::WebhookSigner;
use hlbridge_highlevel::{Auth, Client, ClientConfig, Operation, PacingConfig, RetryConfig, Url};
use hlbridge_sandbox::ratelimit::RateLimitConfig;
use hlbridge_sandbox::{Sandbox, SandboxConfig};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// A HighLevel call made during setup.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct SetupCall {
    /// Operation id.
    pub operation: String,
    /// Parameters (strings may use `{{ setup.<as> }}` and `{{ location_id }}`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// Name of the response in later templates.
    #[serde(default, rename = "as")]
    pub save_as: Option<String>,
}

/// An expected HighLevel call.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ExpectCall {
    /// Operation id.
    pub operation: String,
    /// A subset of the parameters.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    /// Exactly this many (default: at least one).
    #[serde(default)]
    pub count: Option<usize>,
}

/// An expected sandbox contact.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ExpectContact {
    /// By email.
    #[serde(default)]
    pub email: Option<String>,
    /// Or by id.
    #[serde(default)]
    pub id: Option<String>,
    /// Whether it exists (default true).
    #[serde(default)]
    pub exists: Option<bool>,
    /// Tags it must have.
    #[serde(default)]
    pub tags_include: Vec<String>,
    /// Tags it must not have.
    #[serde(default)]
    pub tags_exclude: Vec<String>,
    /// Other expectations (not checked here).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: Map<String, Value>,
}

/// What must hold after a case.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct Expect {
    /// Final state of every run.
    #[serde(default)]
    pub state: Option<String>,
    /// How many runs the events started.
    #[serde(default)]
    pub runs: Option<usize>,
    /// HighLevel calls the flow made.
    #[serde(default)]
    pub calls: Vec<ExpectCall>,
    /// Sandbox contacts afterwards.
    #[serde(default)]
    pub contacts: Vec<ExpectContact>,
    /// Other expectations (not checked here).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: Map<String, Value>,
}

/// One case.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct TestCase {
    /// What it shows.
    #[serde(default)]
    pub name: String,
    /// Calls made first.
    #[serde(default)]
    pub setup: Vec<SetupCall>,
    /// Events for the trigger.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
    /// Expectations (none: only the runs are reported).
    #[serde(default)]
    pub expect: Option<Expect>,
    /// Other inputs (not supported here).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: Map<String, Value>,
}

/// A behaviour test file (`flows/templates/tests/*.test.toml`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TestFile {
    /// `none` or `demo`.
    #[serde(default)]
    pub seed: Option<String>,
    /// The cases.
    #[serde(default)]
    pub cases: Vec<TestCase>,
}

/// One step of a tested run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TestStep {
    /// Step id (`each[0].add_tag` for nested steps).
    pub id: String,
    /// The rendered request (parameters, or method, URL and body).
    #[schema(value_type = Object)]
    pub request: Option<Value>,
    /// The response.
    #[schema(value_type = Object)]
    pub response: Option<Value>,
    /// The error.
    #[schema(value_type = Object)]
    pub error: Option<Value>,
    /// Milliseconds.
    pub ms: Option<i64>,
}

/// One tested run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TestRun {
    /// Final state.
    pub state: String,
    /// Attempts.
    pub attempts: u32,
    /// Last error.
    pub error: Option<String>,
    /// The event.
    #[schema(value_type = Object)]
    pub event: Value,
    /// Steps.
    pub steps: Vec<TestStep>,
}

/// A HighLevel call the flow made.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HighLevelCall {
    /// Operation id.
    pub operation: String,
    /// Parameters sent.
    #[schema(value_type = Object)]
    pub params: Value,
    /// HTTP status (200 for success).
    pub status: Option<u16>,
    /// Response body or error.
    #[schema(value_type = Object)]
    pub response: Value,
}

/// A request the stand-in app received.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AppRequest {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// JSON body.
    #[schema(value_type = Object)]
    pub body: Value,
}

/// The result of one case.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CaseReport {
    /// Case name.
    pub name: String,
    /// `None` when the case had no expectations.
    pub passed: Option<bool>,
    /// Expectations that failed.
    pub failures: Vec<String>,
    /// Expectations present but not checked here.
    pub not_checked: Vec<String>,
    /// Events the ingress refused, or that were duplicates.
    pub ingress: Vec<String>,
    /// The runs.
    pub runs: Vec<TestRun>,
    /// HighLevel calls of the flow.
    pub calls: Vec<HighLevelCall>,
    /// Requests to the stand-in app.
    pub app_requests: Vec<AppRequest>,
}

/// A test's result.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TestReport {
    /// The flow.
    pub flow: String,
    /// Every case.
    pub cases: Vec<CaseReport>,
    /// Whether every case with expectations passed.
    pub passed: bool,
}

/// Why a test could not run.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// The flow does not compile.
    #[error("the flow has {} error(s)", .0.len())]
    Invalid(Vec<Diagnostic>),
    /// The test file or a case is malformed.
    #[error("{0}")]
    BadTest(String),
    /// The sandbox or engine could not start.
    #[error("{0}")]
    Environment(String),
}

/// Parses a behaviour test file.
pub fn parse_test_file(text: &str) -> Result<TestFile, TestError> {
    toml::from_str(text).map_err(|e| TestError::BadTest(format!("behaviour test: {e}")))
}

struct Recording {
    inner: ClientApi,
    calls: Mutex<Vec<HighLevelCall>>,
}

impl HighLevelApi for Recording {
    fn call<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        params: Value,
    ) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(async move {
            let result = self.inner.call(connection, op, params.clone()).await;
            let (status, response) = match &result {
                Ok(v) => (Some(200), v.clone()),
                Err(e) => (
                    e.status,
                    json!({ "error": e.message, "body": e.body.clone().unwrap_or(Value::Null) }),
                ),
            };
            self.calls.lock().push(HighLevelCall {
                operation: op.id.to_owned(),
                params,
                status,
                response,
            });
            result
        })
    }
}

type AppLog = Arc<Mutex<Vec<AppRequest>>>;

async fn start_app() -> Result<(String, AppLog, tokio::task::JoinHandle<()>), TestError> {
    let log: AppLog = Arc::default();
    let l = log.clone();
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method, uri: axum::http::Uri, body: axum::body::Bytes| {
            let l = l.clone();
            async move {
                l.lock().push(AppRequest {
                    method: method.to_string(),
                    path: uri.path().to_owned(),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                });
                axum::Json(json!({ "ok": true }))
            }
        },
    );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| TestError::Environment(format!("stand-in app: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| TestError::Environment(format!("stand-in app: {e}")))?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}"), log, task))
}

fn app_connections(steps: &[Step], out: &mut Vec<String>) {
    for s in steps {
        match s {
            Step::Http(h) => {
                if let Some(c) = &h.connection {
                    out.push(c.clone());
                }
            }
            Step::ForEach(f) => app_connections(&f.steps, out),
            _ => {}
        }
    }
}

/// Renders the strings of `value` as templates over `ctx` (`setup`, `location_id`).
fn render(value: &Value, ctx: &Value) -> Result<Value, TestError> {
    let mut c = Compiler::new();
    let scope = Scope {
        roots: vec!["setup", "location_id"],
        ..Scope::default()
    };
    let mapping = c.compile_value("test", value, &scope);
    let (templates, issues) = c.finish();
    if let Some(i) = issues.first() {
        return Err(TestError::BadTest(format!("{}: {}", i.path, i.message)));
    }
    mapping
        .render(&templates, &template::context(ctx))
        .map_err(|e| TestError::BadTest(e.to_string()))
}

/// Whether `actual` contains `expected` (objects: every expected key matches; arrays:
/// every expected element matches some actual element).
pub fn subset(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|x| subset(v, x))),
        (Value::Array(e), Value::Array(a)) => e.iter().all(|v| a.iter().any(|x| subset(v, x))),
        (e, a) => e == a,
    }
}

fn test_step(s: &hlbridge_engine::store::StepRecord) -> TestStep {
    TestStep {
        id: s.step_id.clone(),
        request: s.input.clone(),
        response: s.output.clone(),
        error: s.error.clone(),
        ms: s
            .finished_at
            .map(|f| i64::try_from((f - s.started_at).whole_milliseconds()).unwrap_or(0)),
    }
}

fn test_run(d: &RunDetail) -> TestRun {
    TestRun {
        state: d.run.state.as_str().to_owned(),
        attempts: d.run.attempts,
        error: d.run.last_error.clone(),
        event: d.event.payload.clone(),
        steps: d.steps.iter().map(test_step).collect(),
    }
}

/// Runs `cases` of the flow `toml` on fresh sandboxes (one per case).
pub async fn run(toml: &str, cases: &[TestCase], seed_demo: bool) -> Result<TestReport, TestError> {
    let compiled = compile_source("flow.toml", toml, &ValidationContext::default())
        .map_err(TestError::Invalid)?;
    let flow_id = compiled.id().to_owned();
    drop(compiled);
    let mut reports = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        reports.push(run_case(toml, &flow_id, i, case, seed_demo).await?);
    }
    let passed = reports.iter().all(|c| c.passed != Some(false));
    Ok(TestReport {
        flow: flow_id,
        cases: reports,
        passed,
    })
}

async fn run_case(
    toml: &str,
    flow_id: &str,
    index: usize,
    case: &TestCase,
    seed_demo: bool,
) -> Result<CaseReport, TestError> {
    let sandbox = Sandbox::start(SandboxConfig {
        seed_demo,
        rate_limit: RateLimitConfig {
            enabled: false,
            ..RateLimitConfig::default()
        },
        ..SandboxConfig::for_tests()
    })
    .await
    .map_err(|e| TestError::Environment(format!("starting the sandbox: {e}")))?;
    let data = std::env::temp_dir().join(format!("hlbridge-flowtest-{}", uuid::Uuid::now_v7()));
    let result = run_in(&sandbox, &data, toml, flow_id, index, case).await;
    sandbox.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
    result
}

async fn run_in(
    sandbox: &Sandbox,
    data: &std::path::Path,
    toml: &str,
    flow_id: &str,
    index: usize,
    case: &TestCase,
) -> Result<CaseReport, TestError> {
    let info = sandbox.info();
    let env = |e: &dyn std::fmt::Display| TestError::Environment(e.to_string());
    let client = Client::new(ClientConfig {
        base_url: Url::parse(&info.base_url).map_err(|e| env(&e))?,
        pacing: PacingConfig {
            enabled: false,
            ..PacingConfig::default()
        },
        retry: RetryConfig {
            max_attempts: 2,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        },
        ..ClientConfig::default()
    })
    .map_err(|e| env(&e))?;
    let conn = Connection {
        auth: Auth::token_for(info.token.clone(), info.location_id.clone()),
        location_id: Some(info.location_id.clone()),
    };
    let compiled = compile_source(
        &format!("{flow_id}.toml"),
        toml,
        &ValidationContext::default(),
    )
    .map_err(TestError::Invalid)?;
    let flow = compiled.flow.clone();
    let mut conns: HashMap<String, Connection> = HashMap::new();
    conns.insert(flow.connection.clone(), conn.clone());
    conns.insert("default".into(), conn);
    let api = ClientApi::new(client, conns);
    let recording = Arc::new(Recording {
        inner: api.clone(),
        calls: Mutex::new(Vec::new()),
    });

    let (app_url, app_log, app_task) = start_app().await?;
    let mut config = EngineConfig::with_data_dir(data);
    config.workers = 1;
    config.network.allow_loopback = true;
    config.worker_name = format!("flowtest-{index}");
    let mut names = Vec::new();
    app_connections(&flow.steps, &mut names);
    for n in names {
        config.app_connections.insert(
            n,
            AppConnection {
                base_url: Some(app_url.clone()),
                headers: HashMap::new(),
            },
        );
    }
    let app_secret = format!("test-{}", uuid::Uuid::new_v4().simple());
    if let Trigger::AppWebhook(t) = &flow.trigger {
        config
            .app_secrets
            .insert(t.secret.clone(), app_secret.clone());
    }
    let signer = WebhookSigner::from_ed25519_seed(rand_seed());
    config.highlevel_webhook_keys = vec![signer.ed25519_public_key_base64()];
    let engine = Engine::open_with(config, recording.clone())
        .await
        .map_err(|e| env(&e))?;
    engine
        .add_flows(vec![compiled])
        .await
        .map_err(|e| env(&e))?;

    let mut ctx = json!({ "setup": {}, "location_id": info.location_id });
    for call in &case.setup {
        let op = hlbridge_highlevel::operations::find(&call.operation).ok_or_else(|| {
            TestError::BadTest(format!("setup: unknown operation `{}`", call.operation))
        })?;
        let params = render(&Value::Object(call.params.clone()), &ctx)?;
        let out = api
            .call(&flow.connection, op, params)
            .await
            .map_err(|e| TestError::BadTest(format!("setup {}: {}", call.operation, e.message)))?;
        if let Some(name) = &call.save_as {
            ctx["setup"][name] = out;
        }
    }

    let mut ingress = Vec::new();
    let mut run_ids: Vec<RunId> = Vec::new();
    for (n, event) in case.events.iter().enumerate() {
        let event = render(event, &ctx)?;
        let body = serde_json::to_vec(&event).unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        match &flow.trigger {
            Trigger::AppWebhook(t) => {
                let (name, value) = match t.auth {
                    AppAuth::HmacSha256 => (
                        t.signature_header.clone(),
                        sign_hmac_sha256(app_secret.as_bytes(), &body),
                    ),
                    AppAuth::Bearer => ("authorization".to_owned(), format!("Bearer {app_secret}")),
                };
                if let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    headers.insert(k, v);
                }
                match engine.accept_app_webhook(flow_id, &headers, &body).await {
                    Ok(Some(id)) => run_ids.push(id),
                    Ok(None) => ingress.push(format!("event {}: duplicate, no run", n + 1)),
                    Err(e) => ingress.push(format!("event {}: refused: {e}", n + 1)),
                }
            }
            Trigger::HighlevelWebhook(_) => {
                let mut event = event;
                if let Value::Object(m) = &mut event {
                    m.entry("timestamp").or_insert_with(|| {
                        json!(
                            time::OffsetDateTime::now_utc()
                                .format(&time::format_description::well_known::Rfc3339)
                                .unwrap_or_default()
                        )
                    });
                    m.entry("webhookId")
                        .or_insert_with(|| json!(uuid::Uuid::new_v4().to_string()));
                    m.entry("locationId")
                        .or_insert_with(|| json!(info.location_id));
                }
                let body = serde_json::to_vec(&event).unwrap_or_default();
                for (k, v) in signer.sign(&body) {
                    if let Ok(v) = HeaderValue::from_str(&v) {
                        headers.insert(k, v);
                    }
                }
                match engine.accept_highlevel_webhook(&headers, &body).await {
                    Ok(ids) if ids.is_empty() => ingress.push(format!(
                        "event {}: no run (not an event type the flow listens for, or a duplicate)",
                        n + 1
                    )),
                    Ok(ids) => run_ids.extend(ids),
                    Err(e) => ingress.push(format!("event {}: refused: {e}", n + 1)),
                }
            }
            _ => {
                let key = format!("test:{}", uuid::Uuid::now_v7());
                match engine.enqueue(flow_id, &key, event).await {
                    Ok(Some(id)) => run_ids.push(id),
                    Ok(None) => ingress.push(format!("event {}: duplicate", n + 1)),
                    Err(e) => ingress.push(format!("event {}: refused: {e}", n + 1)),
                }
            }
        }
    }

    let max_attempts = flow.retry.max_attempts.clamp(1, 3);
    let mut details = Vec::new();
    for id in run_ids {
        let mut detail = None;
        for _ in 0..max_attempts {
            match engine.execute_run(id).await {
                Ok(d) => {
                    let again = d.run.state == RunState::Failed;
                    detail = Some(d);
                    if !again {
                        break;
                    }
                }
                Err(e) => {
                    ingress.push(format!("run {id}: {e}"));
                    break;
                }
            }
        }
        if let Some(d) = detail {
            details.push(d);
        }
    }
    let calls = recording.calls.lock().clone();
    let app_requests = app_log.lock().clone();
    app_task.abort();

    let mut failures = Vec::new();
    let mut not_checked = Vec::new();
    if !case.other.is_empty() {
        not_checked.extend(case.other.keys().map(|k| format!("input `{k}`")));
    }
    let passed = match &case.expect {
        None => None,
        Some(expect) => {
            let expect = Expect {
                calls: expect
                    .calls
                    .iter()
                    .map(|c| {
                        Ok(ExpectCall {
                            params: c.params.as_ref().map(|p| render(p, &ctx)).transpose()?,
                            ..c.clone()
                        })
                    })
                    .collect::<Result<_, TestError>>()?,
                ..expect.clone()
            };
            check(
                &expect,
                &details,
                &calls,
                sandbox,
                &mut failures,
                &mut not_checked,
            );
            Some(failures.is_empty())
        }
    };
    Ok(CaseReport {
        name: if case.name.is_empty() {
            format!("case {}", index + 1)
        } else {
            case.name.clone()
        },
        passed,
        failures,
        not_checked,
        ingress,
        runs: details.iter().map(test_run).collect(),
        calls,
        app_requests,
    })
}

fn rand_seed() -> [u8; 32] {
    use rand::RngCore;
    let mut s = [0u8; 32];
    rand::rng().fill_bytes(&mut s);
    s
}

fn check(
    expect: &Expect,
    runs: &[RunDetail],
    calls: &[HighLevelCall],
    sandbox: &Sandbox,
    failures: &mut Vec<String>,
    not_checked: &mut Vec<String>,
) {
    match &expect.state {
        Some(want) => {
            for r in runs {
                if r.run.state.as_str() != want {
                    failures.push(format!(
                        "a run ended {} (expected {want}){}",
                        r.run.state,
                        r.run
                            .last_error
                            .as_ref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ));
                }
            }
        }
        None => {
            for r in runs {
                if matches!(r.run.state, RunState::Dead | RunState::Failed) {
                    failures.push(format!(
                        "a run ended {}: {}",
                        r.run.state,
                        r.run.last_error.clone().unwrap_or_default()
                    ));
                }
            }
        }
    }
    if let Some(n) = expect.runs
        && runs.len() != n
    {
        failures.push(format!("{} run(s) started (expected {n})", runs.len()));
    }
    for c in &expect.calls {
        let matching = calls
            .iter()
            .filter(|x| x.operation == c.operation)
            .filter(|x| c.params.as_ref().is_none_or(|p| subset(p, &x.params)))
            .count();
        let ok = match c.count {
            Some(n) => matching == n,
            None => matching > 0,
        };
        if !ok {
            failures.push(format!(
                "{} matching call(s) of {}{} (expected {})",
                matching,
                c.operation,
                c.params
                    .as_ref()
                    .map(|p| format!(" with {p}"))
                    .unwrap_or_default(),
                c.count
                    .map_or_else(|| "at least one".to_owned(), |n| n.to_string())
            ));
        }
    }
    let contacts: Vec<Value> = sandbox
        .shared()
        .docs
        .read()
        .iter("contact")
        .map(|(_, d)| (*d.body).clone())
        .collect();
    for c in &expect.contacts {
        let found = contacts.iter().find(|x| {
            c.email.as_deref().is_some_and(|e| {
                x["email"]
                    .as_str()
                    .is_some_and(|y| y.eq_ignore_ascii_case(e))
            }) || c.id.as_deref().is_some_and(|i| x["id"].as_str() == Some(i))
        });
        let who = c.email.clone().or_else(|| c.id.clone()).unwrap_or_default();
        let exists = c.exists.unwrap_or(true);
        match (found, exists) {
            (None, true) => failures.push(format!("contact {who} does not exist")),
            (Some(_), false) => failures.push(format!("contact {who} still exists")),
            (Some(x), true) => {
                let tags: Vec<&str> = x["tags"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                for t in &c.tags_include {
                    if !tags.iter().any(|y| y.eq_ignore_ascii_case(t)) {
                        failures.push(format!("contact {who} lacks tag {t} (has {tags:?})"));
                    }
                }
                for t in &c.tags_exclude {
                    if tags.iter().any(|y| y.eq_ignore_ascii_case(t)) {
                        failures.push(format!("contact {who} still has tag {t}"));
                    }
                }
            }
            (None, false) => {}
        }
        not_checked.extend(c.other.keys().map(|k| format!("contacts.{k}")));
    }
    not_checked.extend(expect.other.keys().map(|k| format!("expect.{k}")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets() {
        assert!(subset(&json!({"a": [1]}), &json!({"a": [2, 1], "b": 3})));
        assert!(!subset(&json!({"a": [4]}), &json!({"a": [2, 1]})));
        assert!(!subset(&json!({"c": 1}), &json!({"a": 1})));
    }

    #[test]
    fn template_tests_parse() {
        for t in crate::gallery::TEMPLATES {
            let f = parse_test_file(t.test).unwrap_or_else(|e| panic!("{}: {e}", t.id));
            assert!(!f.cases.is_empty(), "{}", t.id);
        }
    }
}
