//! The setup shared by the throughput and latency parts: the in-process sandbox (seeded,
//! rate limits off), the engine on SQLite in a temporary data directory, talking to the
//! sandbox through the real HighLevel client (pacing off), the server
//! ([`hlbridge_server::serve`]) with its workers, and one flow: an app webhook whose event
//! text becomes a note on a seeded contact (`contacts.notes.create`, one mapping).
//!
//! The HighLevel API the engine uses is wrapped in a [`Recorder`], which notes when each
//! call is handed to the client and when its answer comes back (for the latency part).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::future::BoxFuture;
use hlbridge_engine::triggers::sign_hmac_sha256;
use hlbridge_engine::validate::compile_source;
use hlbridge_engine::{
    ClientApi, Connection, Engine, EngineConfig, HighLevelApi, RunState, SqliteStore, StepError,
    Store,
};
use hlbridge_highlevel::{Auth, Client, ClientConfig, Operation, PacingConfig, Url};
use hlbridge_sandbox::ratelimit::RateLimitConfig;
use hlbridge_sandbox::{Sandbox, SandboxConfig};
use hlbridge_server::{RunningServer, ServeConfig};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::profile::{Profile, Timed};
use super::{EngineBenchArgs, Ingress};

/// The benchmark flow's id.
pub const FLOW_ID: &str = "bench-notes";

/// Name of the app secret the flow refers to.
const SECRET_NAME: &str = "bench";

/// Header carrying the HMAC signature of an event.
const SIGNATURE_HEADER: &str = "x-signature";

/// When each benchmark event's HighLevel call was handed to the client and answered,
/// indexed by event number (parsed from the note text `<prefix><n>`).
#[derive(Debug)]
pub struct Marks {
    prefix: String,
    sent: Mutex<Vec<Option<Instant>>>,
    answered: Mutex<Vec<Option<Instant>>>,
}

impl Marks {
    /// Room for `n` events whose note text starts with `prefix`.
    pub fn new(prefix: &str, n: usize) -> Arc<Self> {
        Arc::new(Self {
            prefix: prefix.to_owned(),
            sent: Mutex::new(vec![None; n]),
            answered: Mutex::new(vec![None; n]),
        })
    }

    fn index(&self, params: &Value) -> Option<usize> {
        params
            .get("body")
            .and_then(Value::as_str)
            .and_then(|b| b.strip_prefix(self.prefix.as_str()))
            .and_then(|n| n.parse().ok())
    }

    fn mark(list: &Mutex<Vec<Option<Instant>>>, i: usize, at: Instant) {
        if let Some(slot) = list.lock().get_mut(i) {
            slot.get_or_insert(at);
        }
    }

    /// When event `i`'s call was handed to the HighLevel client.
    pub fn sent(&self, i: usize) -> Option<Instant> {
        self.sent.lock().get(i).copied().flatten()
    }

    /// When event `i`'s call was answered.
    pub fn answered(&self, i: usize) -> Option<Instant> {
        self.answered.lock().get(i).copied().flatten()
    }
}

/// A [`HighLevelApi`] that passes every call through and records [`Marks`].
struct Recorder {
    inner: Arc<dyn HighLevelApi>,
    marks: Option<Arc<Marks>>,
}

impl HighLevelApi for Recorder {
    fn call<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        params: Value,
    ) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(async move {
            let index = self.marks.as_ref().and_then(|m| m.index(&params));
            if let (Some(m), Some(i)) = (&self.marks, index) {
                Marks::mark(&m.sent, i, Instant::now());
            }
            let out = self.inner.call(connection, op, params).await;
            if let (Some(m), Some(i)) = (&self.marks, index) {
                Marks::mark(&m.answered, i, Instant::now());
            }
            out
        })
    }
}

/// One signed event, ready to send.
#[derive(Debug, Clone)]
pub struct Event {
    /// The JSON body.
    pub body: axum::body::Bytes,
    /// Its HMAC-SHA256 signature (hex).
    pub signature: String,
}

/// Sandbox, engine, server and the benchmark flow.
pub struct Harness {
    /// The HighLevel sandbox.
    pub sandbox: Sandbox,
    /// The engine.
    pub engine: Engine,
    server: Option<RunningServer>,
    /// The seeded contact the notes go to.
    pub contact_id: String,
    /// Note texts of this harness start with this.
    pub prefix: String,
    secret: String,
    ingress: Ingress,
    http: reqwest::Client,
    hook_url: String,
    data_dir: PathBuf,
    keep: bool,
    /// Store call counts and times (`--profile`).
    pub profile: Option<Arc<Profile>>,
}

impl Harness {
    /// Starts everything. `prefix` must be unique to this harness.
    pub async fn start(
        args: &EngineBenchArgs,
        prefix: &str,
        marks: Option<Arc<Marks>>,
    ) -> Result<Harness> {
        let sandbox = Sandbox::start(SandboxConfig {
            seed_demo: true,
            data: args.sandbox_db.clone(),
            rate_limit: RateLimitConfig {
                enabled: false,
                ..RateLimitConfig::default()
            },
            ..SandboxConfig::for_tests()
        })
        .await
        .context("starting the HighLevel sandbox")?;
        let info = sandbox.info();
        let contact_id = sandbox
            .shared()
            .docs
            .read()
            .iter("contact")
            .find(|(_, d)| d.location_id.as_deref() == Some(info.location_id.as_str()))
            .map(|(id, _)| id.clone())
            .ok_or_else(|| anyhow!("the seeded sandbox has no contact"))?;

        let data_dir =
            std::env::temp_dir().join(format!("hlbridge-bench-{}", uuid::Uuid::new_v4().simple()));
        let secret = format!("whsec-{}", uuid::Uuid::new_v4().simple());
        let mut config = EngineConfig::with_data_dir(&data_dir);
        config.workers = args.workers;
        if let Some(n) = args.claim_batch {
            config.claim_batch = n;
        }
        config
            .app_secrets
            .insert(SECRET_NAME.into(), secret.clone());
        let client = Client::new(ClientConfig {
            base_url: Url::parse(&info.base_url)?,
            pacing: PacingConfig {
                enabled: false,
                ..PacingConfig::default()
            },
            ..ClientConfig::default()
        })
        .map_err(|e| anyhow!("HighLevel client: {e}"))?;
        let conns: HashMap<String, Connection> = [(
            "default".to_owned(),
            Connection {
                auth: Auth::token_for(info.token.clone(), info.location_id.clone()),
                location_id: Some(info.location_id.clone()),
            },
        )]
        .into();
        let api: Arc<dyn HighLevelApi> = Arc::new(Recorder {
            inner: Arc::new(ClientApi::new(client, conns)),
            marks,
        });
        let store = SqliteStore::open(&data_dir)
            .await
            .with_context(|| format!("opening the store in {}", data_dir.display()))?;
        let profile = args.profile.then(|| Arc::new(Profile::default()));
        let store: Arc<dyn Store> = match &profile {
            Some(p) => Arc::new(Timed::new(Arc::new(store), p.clone())),
            None => Arc::new(store),
        };
        let engine = Engine::with_store(config, store, api.clone())?;
        let source = flow_source(&contact_id);
        let flow = compile_source("bench-notes.toml", &source, &engine.validation_context())
            .map_err(|d| {
                anyhow!(
                    "{}",
                    d.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })?;
        engine.add_flows(vec![flow]).await?;
        let server = hlbridge_server::serve(
            engine.clone(),
            ServeConfig {
                bind: SocketAddr::from(([127, 0, 0, 1], 0)),
                highlevel: Some(api),
                shutdown_grace: Duration::from_secs(10),
                ..ServeConfig::default()
            },
            CancellationToken::new(),
        )
        .await?;
        let hook_url = format!("{}/hooks/app/{FLOW_ID}", server.base_url);
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(args.senders.max(1) * 2)
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Harness {
            sandbox,
            engine,
            server: Some(server),
            contact_id,
            prefix: prefix.to_owned(),
            secret,
            ingress: args.ingress,
            http,
            hook_url,
            data_dir,
            keep: args.keep,
            profile,
        })
    }

    /// Event number `i`: its note text is `<prefix><i>`.
    pub fn event(&self, i: usize) -> Event {
        let body = json!({
            "id": format!("{}{i}", self.prefix),
            "type": "note.added",
            "text": format!("{}{i}", self.prefix),
        })
        .to_string();
        let signature = sign_hmac_sha256(self.secret.as_bytes(), body.as_bytes());
        Event {
            body: axum::body::Bytes::from(body),
            signature,
        }
    }

    /// Sends one event and returns once it is accepted (HTTP 202, or the run id in-process).
    pub async fn send(&self, ev: &Event) -> Result<()> {
        match self.ingress {
            Ingress::Http => {
                let resp = self
                    .http
                    .post(&self.hook_url)
                    .header(SIGNATURE_HEADER, &ev.signature)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(ev.body.clone())
                    .send()
                    .await?;
                let status = resp.status();
                if status != reqwest::StatusCode::ACCEPTED {
                    let text = resp.text().await.unwrap_or_default();
                    bail!("the server answered {status}: {text}");
                }
                // Read the (small) body so the connection is reused.
                let _ = resp.bytes().await?;
                Ok(())
            }
            Ingress::Direct => {
                let mut headers = axum::http::HeaderMap::new();
                headers.insert(SIGNATURE_HEADER, ev.signature.parse()?);
                match self
                    .engine
                    .accept_app_webhook(FLOW_ID, &headers, &ev.body)
                    .await
                {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => bail!("the event was taken for a duplicate"),
                    Err(e) => bail!("refused: {e}"),
                }
            }
        }
    }

    /// Notes in the sandbox (all kinds of writers).
    pub fn note_count(&self) -> usize {
        self.sandbox.shared().docs.read().count("note")
    }

    /// Distinct event numbers found in the sandbox as notes on the contact.
    pub fn notes_written(&self) -> HashSet<usize> {
        let docs = self.sandbox.shared().docs.read();
        docs.iter("note")
            .filter(|(_, d)| d.parent_id.as_deref() == Some(self.contact_id.as_str()))
            .filter_map(|(_, d)| {
                d.body
                    .get("body")
                    .and_then(Value::as_str)
                    .and_then(|b| b.strip_prefix(self.prefix.as_str()))
                    .and_then(|n| n.parse().ok())
            })
            .collect()
    }

    /// Run counts of the flow by state.
    pub async fn run_counts(&self) -> Result<HashMap<RunState, u64>> {
        Ok(self
            .engine
            .store()
            .count_runs(Some(FLOW_ID))
            .await?
            .into_iter()
            .collect())
    }

    /// Waits until the sandbox holds `baseline + n` notes and the store shows `n` succeeded
    /// runs of the flow (polling; the sandbox count is a cheap in-memory read), or fails
    /// after `timeout` or when a run failed.
    pub async fn wait_done(&self, baseline: usize, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.note_count() < baseline + n {
            if Instant::now() > deadline {
                bail!(
                    "timed out: {} of {n} notes written; runs {:?}",
                    self.note_count().saturating_sub(baseline),
                    self.run_counts().await?
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        loop {
            let counts = self.run_counts().await?;
            let done = counts.get(&RunState::Succeeded).copied().unwrap_or(0);
            let bad: u64 = [RunState::Failed, RunState::Dead, RunState::Skipped]
                .iter()
                .map(|s| counts.get(s).copied().unwrap_or(0))
                .sum();
            if bad > 0 {
                bail!("some runs did not succeed: {counts:?}");
            }
            if done as usize >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for the runs: {counts:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the server, the workers and the sandbox; deletes the data directory unless
    /// asked to keep it.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(server) = self.server.take() {
            server.shutdown().await?;
        }
        self.sandbox.shutdown().await;
        if self.keep {
            println!("  (data directory kept: {})", self.data_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
        Ok(())
    }
}

/// The benchmark flow: one mapping (`body`), one HighLevel action on a fixed contact.
fn flow_source(contact_id: &str) -> String {
    format!(
        r#"
id = "{FLOW_ID}"
name = "Bench: app event → note on a HighLevel contact"

[trigger]
type = "app_webhook"
secret = "{SECRET_NAME}"
dedupe_key = "{{{{ event.id }}}}"

[[steps]]
id = "note"
type = "highlevel"
operation = "contacts.notes.create"
params = {{ contactId = "{contact_id}", body = "{{{{ event.text }}}}" }}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flow_compiles_and_marks_parse_event_numbers() {
        let src = flow_source("c1");
        let flow = compile_source("f.toml", &src, &Default::default());
        assert!(flow.is_ok(), "{src}");
        let m = Marks::new("p-", 3);
        assert_eq!(m.index(&json!({"body": "p-2"})), Some(2));
        assert_eq!(m.index(&json!({"body": "q-2"})), None);
        let t = Instant::now();
        Marks::mark(&m.sent, 2, t);
        Marks::mark(&m.sent, 2, t + Duration::from_secs(1));
        Marks::mark(&m.sent, 9, t);
        assert_eq!(m.sent(2), Some(t), "the first mark is kept");
        assert_eq!(m.sent(0), None);
    }
}
