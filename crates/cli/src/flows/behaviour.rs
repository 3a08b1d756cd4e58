//! Behaviour tests of flows (`hlbridge flows test`), in the manner of `vector test`: a TOML
//! file names a flow and lists cases, each with input events and expectations, run through
//! the real engine and HighLevel client against an in-process sandbox and a stand-in app.
//!
//! ```toml
//! flow = "../tag-segmentation.toml"   # relative to this file
//! seed = "none"                       # or "demo": the sandbox's demo location
//!
//! [[cases]]
//! name = "a tag added in the app is added in HighLevel"
//!
//!   [[cases.setup]]                   # HighLevel calls made first (not recorded)
//!   as = "ada"                        # the response is `setup.ada` in later templates
//!   operation = "contacts.create"
//!   params = { email = "ada@example.com", firstName = "Ada" }
//!
//!   [[cases.events]]                  # the trigger's input
//!   id = "evt_1"
//!   type = "tag.added"
//!   email = "ada@example.com"
//!   tag = "vip"
//!
//!   [cases.expect]
//!   state = "succeeded"               # every run of the case ends so
//!   runs = 1
//!
//!   [[cases.expect.calls]]            # HighLevel calls made by the flow (params: a subset)
//!   operation = "contacts.tags.add"
//!   params = { contactId = "{{ setup.ada.contact.id }}", tags = ["vip"] }
//!
//!   [[cases.expect.contacts]]         # sandbox state afterwards
//!   email = "ada@example.com"
//!   tags_include = ["vip"]
//! ```
//!
//! Inputs of a case (any combination, in this order):
//! - `events`: for an app webhook flow, each event is POSTed through the app-webhook ingress
//!   with the flow's secret; for a HighLevel webhook flow it is a webhook payload, signed
//!   (with `timestamp` and `webhookId` added when missing) and sent through the HighLevel
//!   webhook ingress; for schedule and poll flows it is enqueued as the event.
//! - `sandbox_webhooks = true`: the webhooks the sandbox sends because of the setup calls
//!   (a `NoteCreate` for a `contacts.notes.create`, …) are the input, signed by the sandbox.
//! - `poll = true`: the flow's poll (or webhook backfill) runs once after the setup; unless
//!   the poll sets `include_existing`, a baseline poll runs before the setup, so the items
//!   the setup creates are new.
//!
//! Expectations (`[cases.expect]`): `state` (each run's final state; by default no run may
//! end `dead` or `failed`), `runs` (how many runs started), `calls` (HighLevel calls:
//! `operation`, `params` as a subset, optional exact `count`, `0` meaning never), `contacts`
//! (by `email` or `id`: `exists`, `fields` subset, `tags_include`, `tags_exclude`, `tasks`
//! and `notes` as subsets each matched by one of the contact's), and `app` (requests the
//! app received: `method`, `path`, `body` and `headers` subsets, optional `count`).
//! Subsets: every key of an expected object must match; every element of an expected
//! array must match some element of the actual one.
//!
//! String values in setup params, events and expectations are templates with `setup.<as>`
//! and `location_id` (the sandbox location). Each case gets a fresh sandbox, app and
//! engine. Every app connection the flow names points at the stand-in app, which requires
//! the bearer token the engine is configured with; failed runs are retried at once (no
//! backoff) within the flow's retry budget.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use hlbridge_engine::flow::{AppAuth, Step, Trigger};
use hlbridge_engine::template::{self, Compiler, Scope};
use hlbridge_engine::validate::{CompiledFlow, ValidationContext};
use hlbridge_engine::{
    AppConnection, ClientApi, Connection, Engine, EngineConfig, HighLevelApi, RunDetail, RunFilter,
    RunState, StepError,
};
use hlbridge_highlevel::webhooks::WebhookSigner;
use hlbridge_highlevel::{Auth, Client, ClientConfig, Operation, Url};
use hlbridge_sandbox::handlers::Event;
use hlbridge_sandbox::{Sandbox, SandboxConfig};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::app::{Received, StandInApp};

/// A behaviour test file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The flow file under test, relative to the test file.
    pub flow: String,
    /// `none` (an empty location) or `demo` (the sandbox's demo data).
    #[serde(default)]
    pub seed: SeedKind,
    /// The cases.
    #[serde(default)]
    pub cases: Vec<Case>,
}

/// How the sandbox of each case starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedKind {
    /// An empty location.
    #[default]
    None,
    /// The demo location (about 300 contacts with tags, tasks, notes, …).
    Demo,
}

/// One case: setup, inputs, expectations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows.
    pub name: String,
    /// HighLevel calls made before the inputs (not counted as the flow's calls).
    #[serde(default)]
    pub setup: Vec<SetupCall>,
    /// Events for the flow's trigger.
    #[serde(default)]
    pub events: Vec<Value>,
    /// The sandbox's own webhooks caused by the setup are the input.
    #[serde(default)]
    pub sandbox_webhooks: bool,
    /// Run the flow's poll (or backfill) once after the setup.
    #[serde(default)]
    pub poll: bool,
    /// The status the stand-in app answers with (default 200).
    #[serde(default)]
    pub app_status: Option<u16>,
    /// What must hold afterwards.
    #[serde(default)]
    pub expect: Expect,
}

/// A HighLevel call made during setup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupCall {
    /// Operation id.
    pub operation: String,
    /// Parameters (templates may use earlier setup results).
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Name of the response in later templates (`setup.<as>`).
    #[serde(default, rename = "as")]
    pub save_as: Option<String>,
}

/// Expectations of a case.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The final state of every run (`succeeded`, `skipped`, `dead`, …).
    #[serde(default)]
    pub state: Option<String>,
    /// How many runs the inputs started.
    #[serde(default)]
    pub runs: Option<usize>,
    /// HighLevel calls the flow made.
    #[serde(default)]
    pub calls: Vec<ExpectCall>,
    /// Sandbox contacts afterwards.
    #[serde(default)]
    pub contacts: Vec<ExpectContact>,
    /// Requests the stand-in app received.
    #[serde(default)]
    pub app: Vec<ExpectApp>,
}

/// An expected HighLevel call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectCall {
    /// Operation id.
    pub operation: String,
    /// A subset of the parameters.
    #[serde(default)]
    pub params: Option<Value>,
    /// Exactly this many matching calls (default: at least one).
    #[serde(default)]
    pub count: Option<usize>,
}

/// An expected sandbox contact.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectContact {
    /// Find it by email…
    #[serde(default)]
    pub email: Option<String>,
    /// …or by id.
    #[serde(default)]
    pub id: Option<String>,
    /// Whether it exists (default true).
    #[serde(default = "yes")]
    pub exists: bool,
    /// A subset of its fields.
    #[serde(default)]
    pub fields: Option<Value>,
    /// Tags it must have.
    #[serde(default)]
    pub tags_include: Vec<String>,
    /// Tags it must not have.
    #[serde(default)]
    pub tags_exclude: Vec<String>,
    /// Tasks, each matched (as a subset) by one of its tasks.
    #[serde(default)]
    pub tasks: Vec<Value>,
    /// Notes, each matched (as a subset) by one of its notes.
    #[serde(default)]
    pub notes: Vec<Value>,
}

fn yes() -> bool {
    true
}

/// An expected request to the app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectApp {
    /// HTTP method.
    #[serde(default)]
    pub method: Option<String>,
    /// Path.
    #[serde(default)]
    pub path: Option<String>,
    /// A subset of the JSON body.
    #[serde(default)]
    pub body: Option<Value>,
    /// A subset of the headers (names in any case).
    #[serde(default)]
    pub headers: Option<Map<String, Value>>,
    /// Exactly this many matching requests (default: at least one).
    #[serde(default)]
    pub count: Option<usize>,
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// The case's name.
    pub name: String,
    /// What did not hold (empty: passed).
    pub failures: Vec<String>,
}

/// The result of one test file.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// The flow's id.
    pub flow_id: String,
    /// Per case.
    pub cases: Vec<CaseReport>,
}

/// Reads and parses a test file.
pub fn parse_file(path: &Path) -> anyhow::Result<TestFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_text(&path.display().to_string(), &text)
}

/// Parses a test file's text; `name` is used in errors (`file:line:col: …`).
pub fn parse_text(name: &str, text: &str) -> anyhow::Result<TestFile> {
    toml::from_str(text).map_err(|e| {
        let (line, col) = e
            .span()
            .map(|s| super::line_col(text, s.start))
            .unwrap_or((1, 1));
        anyhow!("{name}:{line}:{col}: error: {}", e.message().trim())
    })
}

/// The flow file a test file names.
pub fn flow_path(test_file: &Path, test: &TestFile) -> PathBuf {
    test_file
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(&test.flow)
}

/// Static checks of a test file (flow reference, operation ids, states): one message per
/// problem, `file:line:col: error: …` where the position can be found.
pub fn check(test_file: &Path, test: &TestFile) -> Vec<String> {
    let name = test_file.display().to_string();
    let text = std::fs::read_to_string(test_file).unwrap_or_default();
    // The position of the first `key = "value"` in the file (1:1 when not found).
    let at = |key: &str, value: &str| -> String {
        let pos = [format!("{key} = \"{value}\""), format!("\"{value}\"")]
            .iter()
            .find_map(|needle| text.find(needle.as_str()))
            .map_or((1, 1), |o| super::line_col(&text, o));
        format!("{name}:{}:{}", pos.0, pos.1)
    };
    let mut problems = Vec::new();
    let flow = flow_path(test_file, test);
    if !flow.is_file() {
        problems.push(format!(
            "{}: error: flow file {} does not exist",
            at("flow", &test.flow),
            flow.display()
        ));
    }
    if test.cases.is_empty() {
        problems.push(format!("{name}:1:1: error: no [[cases]]"));
    }
    for case in &test.cases {
        let ops = case
            .setup
            .iter()
            .map(|s| &s.operation)
            .chain(case.expect.calls.iter().map(|c| &c.operation));
        for op in ops {
            if hlbridge_highlevel::operations::find(op).is_some() {
                continue;
            }
            let near = hlbridge_highlevel::operations::suggest(op, 3);
            problems.push(format!(
                "{}: error: case {:?}: unknown operation `{op}`{}",
                at("operation", op),
                case.name,
                if near.is_empty() {
                    String::new()
                } else {
                    format!(
                        "\n  hint: did you mean {}?",
                        near.iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ));
        }
        if let Some(s) = &case.expect.state
            && s.parse::<RunState>().is_err()
        {
            problems.push(format!(
                "{}: error: case {:?}: unknown state {s:?}\n  hint: one of {}",
                at("state", s),
                case.name,
                RunState::ALL.map(RunState::as_str).join(", ")
            ));
        }
    }
    problems
}

/// Test files among `paths`: files as given, and in directories every `*.test.toml`
/// (also in a `tests/` subdirectory).
pub fn collect(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            for dir in [p.clone(), p.join("tests")] {
                if !dir.is_dir() {
                    continue;
                }
                let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .with_context(|| format!("cannot read {}", dir.display()))?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|f| is_test_file(f))
                    .collect();
                found.sort();
                out.extend(found);
            }
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            bail!("{} does not exist", p.display());
        }
    }
    Ok(out)
}

/// Whether a path names a behaviour test file (`*.test.toml`).
pub fn is_test_file(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".test.toml"))
}

/// Runs every case of a test file.
pub async fn run_file(path: &Path) -> anyhow::Result<FileReport> {
    let test = parse_file(path)?;
    let problems = check(path, &test);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let flow_file = flow_path(path, &test);
    let flow = hlbridge_engine::validate::compile_file(&flow_file, &ValidationContext::default())
        .map_err(|d| {
        anyhow!(
            "{}",
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let flow_id = flow.id().to_owned();
    drop(flow);
    let mut cases = Vec::new();
    for case in &test.cases {
        let failures = match run_case(&flow_file, test.seed, case).await {
            Ok(f) => f,
            Err(e) => vec![format!("the case could not run: {e:#}")],
        };
        cases.push(CaseReport {
            name: case.name.clone(),
            failures,
        });
    }
    Ok(FileReport { flow_id, cases })
}

/// Records every HighLevel call the flow makes, then passes it on.
struct Recorder {
    inner: Arc<dyn HighLevelApi>,
    calls: Mutex<Vec<(String, Value)>>,
}

impl HighLevelApi for Recorder {
    fn call<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        params: Value,
    ) -> BoxFuture<'a, Result<Value, StepError>> {
        self.calls.lock().push((op.id.to_owned(), params.clone()));
        self.inner.call(connection, op, params)
    }

    fn paginate<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        params: Value,
    ) -> BoxStream<'a, Result<Value, StepError>> {
        self.calls.lock().push((op.id.to_owned(), params.clone()));
        self.inner.paginate(connection, op, params)
    }
}

/// App connections named by the flow's `http` steps.
fn app_connections(steps: &[Step], out: &mut HashSet<String>) {
    for s in steps {
        match s {
            Step::Http(h) => {
                if let Some(c) = &h.connection {
                    out.insert(c.clone());
                }
            }
            Step::ForEach(f) => app_connections(&f.steps, out),
            _ => {}
        }
    }
}

/// Renders a test-file value (templates with `setup` and `location_id`).
fn render(path: &str, value: &Value, vars: &Value) -> anyhow::Result<Value> {
    let scope = Scope {
        roots: vec!["setup", "location_id"],
        ..Scope::default()
    };
    let mut compiler = Compiler::new();
    let mapping = compiler.compile_value(path, value, &scope);
    let (templates, issues) = compiler.finish();
    if let Some(i) = issues.first() {
        bail!(
            "{path}: {}{}",
            i.message,
            i.hint
                .as_ref()
                .map(|h| format!(" ({h})"))
                .unwrap_or_default()
        );
    }
    mapping
        .render(&templates, &template::context(vars))
        .map_err(|e| anyhow!("{path}: {e}"))
}

struct Harness {
    sandbox: Sandbox,
    app: StandInApp,
    engine: Engine,
    recorder: Arc<Recorder>,
    direct: Arc<dyn HighLevelApi>,
    signer: WebhookSigner,
    secrets: HashMap<String, String>,
    connection: String,
    data_dir: PathBuf,
}

impl Harness {
    async fn start(
        flow_file: &Path,
        seed: SeedKind,
        app_status: Option<u16>,
    ) -> anyhow::Result<(Harness, Arc<CompiledFlow>)> {
        let flow =
            hlbridge_engine::validate::compile_file(flow_file, &ValidationContext::default())
                .map_err(|d| {
                    anyhow!(
                        "{}",
                        d.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                })?;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let sandbox = Sandbox::start(SandboxConfig {
            seed_demo: seed == SeedKind::Demo,
            ..SandboxConfig::for_tests()
        })
        .await
        .context("starting the sandbox")?;
        let info = sandbox.info();
        let app_token = format!("app-{}", uuid::Uuid::new_v4());
        let app = StandInApp::start(loopback, Some(app_token.clone())).await?;
        if let Some(s) = app_status {
            app.set_status(s);
        }
        let client = Client::new(ClientConfig {
            base_url: Url::parse(&info.base_url)?,
            ..ClientConfig::default()
        })
        .map_err(|e| anyhow!("{e}"))?;
        let connection = flow.flow.connection.clone();
        let mut conns = HashMap::new();
        for name in [connection.as_str(), "default"] {
            conns.insert(
                name.to_owned(),
                Connection {
                    auth: Auth::token(info.token.clone()),
                    location_id: Some(info.location_id.clone()),
                },
            );
        }
        let direct: Arc<dyn HighLevelApi> = Arc::new(ClientApi::new(client, conns));
        let recorder = Arc::new(Recorder {
            inner: direct.clone(),
            calls: Mutex::new(Vec::new()),
        });
        let signer = WebhookSigner::generate().map_err(|e| anyhow!("{e}"))?;
        let data_dir =
            std::env::temp_dir().join(format!("hlbridge-flows-test-{}", uuid::Uuid::new_v4()));
        let mut config = EngineConfig::with_data_dir(&data_dir);
        config.network.allow_loopback = true;
        config.highlevel_webhook_keys = vec![
            signer.ed25519_public_key_base64(),
            info.webhook_public_keys.ed25519.clone(),
        ];
        let mut names = HashSet::new();
        app_connections(&flow.flow.steps, &mut names);
        for name in names {
            config.app_connections.insert(
                name,
                AppConnection {
                    base_url: Some(app.url.clone()),
                    headers: HashMap::from([(
                        "Authorization".to_owned(),
                        format!("Bearer {app_token}"),
                    )]),
                },
            );
        }
        let mut secrets = HashMap::new();
        if let Trigger::AppWebhook(t) = &flow.flow.trigger {
            let secret = format!("secret-{}", uuid::Uuid::new_v4());
            config.app_secrets.insert(t.secret.clone(), secret.clone());
            secrets.insert(t.secret.clone(), secret);
        }
        let api: Arc<dyn HighLevelApi> = recorder.clone();
        let engine = Engine::open_with(config, api).await?;
        engine.add_flows(vec![flow]).await?;
        let compiled = engine
            .flows()
            .into_iter()
            .next()
            .context("the flow did not load")?;
        Ok((
            Harness {
                sandbox,
                app,
                engine,
                recorder,
                direct,
                signer,
                secrets,
                connection,
                data_dir,
            },
            compiled,
        ))
    }

    async fn stop(self) {
        self.app.shutdown().await;
        self.sandbox.shutdown().await;
        drop(self.engine);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }

    async fn call(&self, op_id: &str, params: Value) -> anyhow::Result<Value> {
        let op = hlbridge_highlevel::operations::find(op_id)
            .ok_or_else(|| anyhow!("unknown operation `{op_id}`"))?;
        self.direct
            .call(&self.connection, op, params)
            .await
            .map_err(|e| {
                anyhow!(
                    "{op_id}: {e}{}",
                    e.body.as_ref().map(|b| format!(" {b}")).unwrap_or_default()
                )
            })
    }

    /// Sends one event through the flow's trigger.
    async fn send(&self, flow: &CompiledFlow, event: Value) -> anyhow::Result<()> {
        let id = flow.id();
        match &flow.flow.trigger {
            Trigger::AppWebhook(t) => {
                let body = serde_json::to_vec(&event)?;
                let secret = self.secrets.get(&t.secret).cloned().unwrap_or_default();
                let mut headers = axum::http::HeaderMap::new();
                let (name, value) = match t.auth {
                    AppAuth::HmacSha256 => (
                        t.signature_header.clone(),
                        hlbridge_engine::triggers::sign_hmac_sha256(secret.as_bytes(), &body),
                    ),
                    AppAuth::Bearer => ("authorization".to_owned(), format!("Bearer {secret}")),
                };
                headers.insert(
                    axum::http::HeaderName::from_bytes(name.as_bytes())?,
                    axum::http::HeaderValue::from_str(&value)?,
                );
                self.engine
                    .accept_app_webhook(id, &headers, &body)
                    .await
                    .map_err(|e| anyhow!("the app webhook was refused ({}): {e}", e.status()))?;
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
                }
                let body = serde_json::to_vec(&event)?;
                let mut headers = axum::http::HeaderMap::new();
                for (k, v) in self.signer.sign(&body) {
                    headers.insert(k, axum::http::HeaderValue::from_str(&v)?);
                }
                self.engine
                    .accept_highlevel_webhook(&headers, &body)
                    .await
                    .map_err(|e| {
                        anyhow!("the HighLevel webhook was refused ({}): {e}", e.status())
                    })?;
            }
            Trigger::Schedule(_) | Trigger::HighlevelPoll(_) => {
                self.engine
                    .enqueue(id, &format!("test:{}", uuid::Uuid::new_v4()), event)
                    .await?;
            }
        }
        Ok(())
    }

    /// Catches the webhooks the sandbox sends while `setup` runs and hands them to the
    /// engine's HighLevel webhook ingress.
    async fn forward_sandbox_webhooks(&self, catcher: &StandInApp) -> anyhow::Result<usize> {
        // Deliveries are sent one after another, in order: once a marker event queued
        // after the setup arrives, every webhook of the setup has arrived too.
        let marker = format!("HlbridgeTestMarker-{}", uuid::Uuid::new_v4());
        self.sandbox.shared().delivery.send(
            vec![Event {
                kind: marker.clone(),
                location_id: self.sandbox.info().location_id,
                payload: json!({}),
            }],
            0.0,
            0.0,
        );
        let arrived = catcher
            .wait_until(Duration::from_secs(30), |r| {
                r.iter()
                    .any(|x| x.body["type"].as_str() == Some(marker.as_str()))
            })
            .await;
        self.sandbox
            .shared()
            .delivery
            .remove_url(&format!("{}/webhooks", catcher.url));
        if !arrived {
            bail!("the sandbox's webhooks did not arrive within 30 s");
        }
        let mut n = 0;
        for w in catcher.received() {
            if w.body["type"].as_str() == Some(marker.as_str()) {
                break;
            }
            self.engine
                .accept_highlevel_webhook(&w.header_map(), &w.raw)
                .await
                .map_err(|e| anyhow!("a sandbox webhook was refused ({}): {e}", e.status()))?;
            n += 1;
        }
        Ok(n)
    }

    /// Executes every unfinished run of the flow, retrying failed ones at once, until all
    /// are final or the retry budget is spent.
    async fn drain(&self, flow: &CompiledFlow) -> anyhow::Result<Vec<RunDetail>> {
        let filter = RunFilter {
            flow_id: Some(flow.id().to_owned()),
            state: None,
            limit: 10_000,
        };
        let rounds = flow.flow.retry.max_attempts.clamp(1, 20) + 1;
        for _ in 0..rounds {
            let pending: Vec<_> = self
                .engine
                .store()
                .list_runs(&filter)
                .await?
                .into_iter()
                .filter(|r| !r.state.is_final())
                .collect();
            if pending.is_empty() {
                break;
            }
            for run in pending.iter().rev() {
                match self.engine.execute_run(run.id).await {
                    Ok(_) | Err(hlbridge_engine::EngineError::NotClaimable(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut details = Vec::new();
        for run in self
            .engine
            .store()
            .list_runs(&filter)
            .await?
            .into_iter()
            .rev()
        {
            if let Some(d) = self.engine.store().run_detail(run.id).await? {
                details.push(d);
            }
        }
        Ok(details)
    }
}

async fn run_case(flow_file: &Path, seed: SeedKind, case: &Case) -> anyhow::Result<Vec<String>> {
    let (h, flow) = Harness::start(flow_file, seed, case.app_status).await?;
    let result = run_case_in(&h, &flow, case).await;
    h.stop().await;
    result
}

async fn run_case_in(h: &Harness, flow: &CompiledFlow, case: &Case) -> anyhow::Result<Vec<String>> {
    let location = h.sandbox.info().location_id;
    let mut vars = json!({ "setup": {}, "location_id": location });

    let polls = match &flow.flow.trigger {
        Trigger::HighlevelPoll(p) => Some(p.include_existing),
        Trigger::HighlevelWebhook(w) => w.backfill.as_ref().map(|b| b.include_existing),
        _ => None,
    };
    if case.poll {
        match polls {
            None => bail!("`poll = true` but flow `{}` does not poll", flow.id()),
            Some(false) => {
                h.engine.poll_once(flow.id()).await?;
            }
            Some(true) => {}
        }
    }
    let catcher = if case.sandbox_webhooks {
        let c = StandInApp::start(SocketAddr::from(([127, 0, 0, 1], 0)), None).await?;
        h.sandbox
            .shared()
            .delivery
            .add_url(format!("{}/webhooks", c.url));
        Some(c)
    } else {
        None
    };

    for (i, s) in case.setup.iter().enumerate() {
        let params = render(
            &format!("setup[{i}].params"),
            &Value::Object(s.params.clone()),
            &vars,
        )?;
        let out = h
            .call(&s.operation, params)
            .await
            .with_context(|| format!("setup[{i}]"))?;
        if let Some(name) = &s.save_as {
            vars["setup"][name] = out;
        }
    }
    if let Some(c) = catcher {
        let forwarded = h.forward_sandbox_webhooks(&c).await;
        c.shutdown().await;
        forwarded?;
    }
    for (i, e) in case.events.iter().enumerate() {
        let event = render(&format!("events[{i}]"), e, &vars)?;
        h.send(flow, event)
            .await
            .with_context(|| format!("events[{i}]"))?;
    }
    if case.poll {
        h.engine.poll_once(flow.id()).await?;
    }
    let runs = h.drain(flow).await?;

    let mut failures = Vec::new();
    let ex = &case.expect;
    match ex.runs {
        Some(n) if n != runs.len() => failures.push(format!(
            "expected {n} run(s), {} started{}",
            runs.len(),
            describe_runs(&runs)
        )),
        None if runs.is_empty() => {
            failures.push("no run was started (set `runs = 0` if that is expected)".to_owned())
        }
        _ => {}
    }
    match &ex.state {
        Some(s) => {
            let want: RunState = s.parse().map_err(|_| anyhow!("unknown state {s:?}"))?;
            for d in runs.iter().filter(|d| d.run.state != want) {
                failures.push(format!(
                    "run {} ended `{}`, expected `{want}`{}",
                    d.run.id,
                    d.run.state,
                    run_error(d)
                ));
            }
        }
        None => {
            for d in runs
                .iter()
                .filter(|d| matches!(d.run.state, RunState::Dead | RunState::Failed))
            {
                failures.push(format!(
                    "run {} ended `{}`{}",
                    d.run.id,
                    d.run.state,
                    run_error(d)
                ));
            }
        }
    }

    let calls = h.recorder.calls.lock().clone();
    for (i, c) in ex.calls.iter().enumerate() {
        let want = c
            .params
            .as_ref()
            .map(|p| render(&format!("expect.calls[{i}].params"), p, &vars))
            .transpose()?;
        let same_op: Vec<&Value> = calls
            .iter()
            .filter(|(op, _)| *op == c.operation)
            .map(|(_, p)| p)
            .collect();
        let matching: Vec<&&Value> = same_op
            .iter()
            .filter(|p| {
                want.as_ref()
                    .is_none_or(|w| mismatch(w, p, "params").is_none())
            })
            .collect();
        let ok = match c.count {
            Some(n) => matching.len() == n,
            None => !matching.is_empty(),
        };
        if ok {
            continue;
        }
        let what = match &want {
            Some(w) => format!("`{}` with params ⊇ {}", c.operation, compact(w)),
            None => format!("`{}`", c.operation),
        };
        let mut msg = match c.count {
            Some(n) => format!("expected {n} call(s) to {what}, got {}", matching.len()),
            None => format!("expected a call to {what}"),
        };
        if same_op.is_empty() {
            msg.push_str(&format!(
                "\n    no call to `{}` was made; calls made: {}",
                c.operation,
                call_list(&calls)
            ));
        } else {
            for p in &same_op {
                match want.as_ref().and_then(|w| mismatch(w, p, "params")) {
                    Some(why) => msg.push_str(&format!("\n    call {}: {why}", compact(p))),
                    None => msg.push_str(&format!("\n    call {}: matches", compact(p))),
                }
            }
        }
        failures.push(msg);
    }

    for (i, c) in ex.contacts.iter().enumerate() {
        if let Err(e) = check_contact(h, c, i, &vars, &mut failures).await {
            failures.push(format!("expect.contacts[{i}]: {e:#}"));
        }
    }

    let received = h.app.received();
    for (i, a) in ex.app.iter().enumerate() {
        let body = a
            .body
            .as_ref()
            .map(|b| render(&format!("expect.app[{i}].body"), b, &vars))
            .transpose()?;
        let headers = a
            .headers
            .as_ref()
            .map(|m| {
                render(
                    &format!("expect.app[{i}].headers"),
                    &Value::Object(m.clone()),
                    &vars,
                )
            })
            .transpose()?;
        let why_not = |r: &Received| -> Option<String> {
            if let Some(m) = &a.method
                && !m.eq_ignore_ascii_case(&r.method)
            {
                return Some(format!("method {} ≠ {m}", r.method));
            }
            if let Some(p) = &a.path
                && *p != r.path
            {
                return Some(format!("path {} ≠ {p}", r.path));
            }
            if let Some(Value::Object(hs)) = &headers {
                for (k, v) in hs {
                    let got = r
                        .header(k)
                        .map(|s| Value::String(s.to_owned()))
                        .unwrap_or(Value::Null);
                    if let Some(m) = mismatch(v, &got, &format!("header {k}")) {
                        return Some(m);
                    }
                }
            }
            body.as_ref().and_then(|b| mismatch(b, &r.body, "body"))
        };
        let matching = received.iter().filter(|r| why_not(r).is_none()).count();
        let ok = match a.count {
            Some(n) => matching == n,
            None => matching > 0,
        };
        if ok {
            continue;
        }
        let what = format!(
            "{} {}{}",
            a.method.as_deref().unwrap_or("any method"),
            a.path.as_deref().unwrap_or("(any path)"),
            body.as_ref()
                .map(|b| format!(" with body ⊇ {}", compact(b)))
                .unwrap_or_default()
        );
        let mut msg = match a.count {
            Some(n) => format!("expected the app to receive {n} request(s) {what}, got {matching}"),
            None => format!("expected the app to receive {what}"),
        };
        if received.is_empty() {
            msg.push_str("\n    the app received nothing");
        }
        for r in &received {
            let why = why_not(r).unwrap_or_else(|| "matches".into());
            msg.push_str(&format!(
                "\n    {} {} {}: {why}",
                r.method,
                r.path,
                compact(&r.body)
            ));
        }
        failures.push(msg);
    }
    Ok(failures)
}

async fn check_contact(
    h: &Harness,
    c: &ExpectContact,
    i: usize,
    vars: &Value,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let email = c
        .email
        .as_ref()
        .map(|e| render(&format!("expect.contacts[{i}].email"), &json!(e), vars))
        .transpose()?;
    let id =
        c.id.as_ref()
            .map(|e| render(&format!("expect.contacts[{i}].id"), &json!(e), vars))
            .transpose()?;
    let (label, contact) = match (&email, &id) {
        (_, Some(id)) => {
            let id = id.as_str().unwrap_or_default().to_owned();
            let found = match h.call("contacts.get", json!({ "contactId": id })).await {
                Ok(body) => body.get("contact").cloned().filter(|c| !c.is_null()),
                Err(_) => None,
            };
            (format!("contact {id}"), found)
        }
        (Some(email), None) => {
            let email = email.as_str().unwrap_or_default().to_owned();
            let body = h
                .call("contacts.find_duplicate", json!({ "email": email }))
                .await?;
            (
                format!("contact({email})"),
                body.get("contact").cloned().filter(|c| !c.is_null()),
            )
        }
        (None, None) => bail!("give `email` or `id`"),
    };
    let Some(contact) = contact else {
        if c.exists {
            failures.push(format!("{label} does not exist"));
        }
        return Ok(());
    };
    if !c.exists {
        failures.push(format!("{label} exists, expected it not to"));
        return Ok(());
    }
    if let Some(f) = &c.fields {
        let want = render(&format!("expect.contacts[{i}].fields"), f, vars)?;
        if let Some(why) = mismatch(&want, &contact, "fields") {
            failures.push(format!("{label}: {why}"));
        }
    }
    let tags: Vec<String> = contact["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_lowercase)
        .collect();
    for t in &c.tags_include {
        if !tags.contains(&t.to_lowercase()) {
            failures.push(format!(
                "{label}.tags does not contain {t:?}; tags are {tags:?}"
            ));
        }
    }
    for t in &c.tags_exclude {
        if tags.contains(&t.to_lowercase()) {
            failures.push(format!(
                "{label}.tags contains {t:?}, expected it not to; tags are {tags:?}"
            ));
        }
    }
    let cid = contact["id"].as_str().unwrap_or_default().to_owned();
    for (kind, op, key, wanted) in [
        ("tasks", "contacts.tasks.list", "tasks", &c.tasks),
        ("notes", "contacts.notes.list", "notes", &c.notes),
    ] {
        if wanted.is_empty() {
            continue;
        }
        let body = h.call(op, json!({ "contactId": cid })).await?;
        let have = body[key].as_array().cloned().unwrap_or_default();
        for (j, w) in wanted.iter().enumerate() {
            let w = render(&format!("expect.contacts[{i}].{kind}[{j}]"), w, vars)?;
            if !have.iter().any(|x| mismatch(&w, x, kind).is_none()) {
                failures.push(format!(
                    "{label}: no {} matches {}; {kind}: {}",
                    &kind[..kind.len() - 1],
                    compact(&w),
                    if have.is_empty() {
                        "none".to_owned()
                    } else {
                        have.iter().map(compact).collect::<Vec<_>>().join(", ")
                    }
                ));
            }
        }
    }
    Ok(())
}

fn run_error(d: &RunDetail) -> String {
    d.run
        .last_error
        .as_ref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default()
}

fn describe_runs(runs: &[RunDetail]) -> String {
    if runs.is_empty() {
        return String::new();
    }
    let list: Vec<String> = runs
        .iter()
        .map(|d| {
            format!(
                "{} ({}): event {}",
                d.run.id,
                d.run.state,
                compact(&d.event.payload)
            )
        })
        .collect();
    format!("\n    {}", list.join("\n    "))
}

fn call_list(calls: &[(String, Value)]) -> String {
    if calls.is_empty() {
        return "none".to_owned();
    }
    calls
        .iter()
        .map(|(op, p)| format!("\n      {op} {}", compact(p)))
        .collect()
}

/// JSON on one line, shortened to about 200 characters.
pub fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 200 {
        let short: String = s.chars().take(200).collect();
        format!("{short}…")
    } else {
        s
    }
}

/// Why `actual` does not contain `expected` (see the module docs for subsets), or `None`.
pub fn mismatch(expected: &Value, actual: &Value, path: &str) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().find_map(|(k, ev)| match a.get(k) {
            Some(av) => mismatch(ev, av, &format!("{path}.{k}")),
            None if ev.is_null() => None,
            None => Some(format!("{path}.{k} is missing (expected {})", compact(ev))),
        }),
        (Value::Array(e), Value::Array(a)) => e.iter().find_map(|ev| {
            (!a.iter().any(|av| mismatch(ev, av, path).is_none())).then(|| {
                format!(
                    "{path}: no element matches {} (got {})",
                    compact(ev),
                    compact(actual)
                )
            })
        }),
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => None,
        (e, a) if e == a => None,
        (e, a) => Some(format!(
            "{path}: expected {}, got {}",
            compact(e),
            compact(a)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets() {
        let actual = json!({"contactId": "c1", "tags": ["vip", "new"], "n": 1.0, "extra": true});
        assert!(mismatch(&json!({"tags": ["vip"], "n": 1}), &actual, "p").is_none());
        let why = mismatch(&json!({"tags": ["gold"]}), &actual, "params").expect("mismatch");
        assert!(why.contains("params.tags") && why.contains("gold"), "{why}");
        let why = mismatch(&json!({"contactId": "c2"}), &actual, "params").expect("mismatch");
        assert_eq!(why, "params.contactId: expected \"c2\", got \"c1\"");
        let why = mismatch(&json!({"missing": 1}), &actual, "params").expect("mismatch");
        assert!(why.contains("params.missing is missing"), "{why}");
    }

    #[test]
    fn test_files_parse_with_positions() {
        let err = parse_text("t.test.toml", "flow = \"x.toml\"\n[[cases]]\nnam = \"a\"\n")
            .expect_err("unknown field");
        let msg = err.to_string();
        assert!(msg.starts_with("t.test.toml:3:1: error:"), "{msg}");
        let ok = parse_text(
            "t.test.toml",
            "flow = \"x.toml\"\n[[cases]]\nname = \"a\"\nevents = [{ a = 1 }]\n[cases.expect]\nstate = \"succeeded\"\n",
        )
        .expect("parses");
        assert_eq!(ok.cases[0].events.len(), 1);
    }

    /// Every ready template passes its behaviour tests (what `hlbridge flows test
    /// flows/templates` runs).
    #[tokio::test]
    async fn every_template_passes_its_behaviour_tests() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../flows/templates");
        let files = collect(&[dir]).expect("test files");
        assert!(
            files.len() >= 6,
            "expected a test file per template: {files:?}"
        );
        let mut failed = Vec::new();
        for f in &files {
            let report = run_file(f)
                .await
                .unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
            for c in report.cases.iter().filter(|c| !c.failures.is_empty()) {
                failed.push(format!(
                    "{} / {}:\n  {}",
                    f.display(),
                    c.name,
                    c.failures.join("\n  ")
                ));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }
}
