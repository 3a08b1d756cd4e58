//! A scripted fake of HighLevel, and helpers shared by the tests.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use hlbridge_engine::validate::compile_source;
use hlbridge_engine::{Engine, EngineConfig, HighLevelApi, StepError, ValidationContext};
use hlbridge_highlevel::Operation;
use serde_json::{Value, json};

/// Records every call; answers from a per-operation script, else a default answer.
#[derive(Default)]
pub struct FakeHighLevel {
    pub calls: Mutex<Vec<(String, String, Value)>>,
    script: Mutex<HashMap<String, VecDeque<Result<Value, StepError>>>>,
}

impl FakeHighLevel {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Queues answers for an operation (used before the default).
    pub fn script(&self, op: &str, answers: Vec<Result<Value, StepError>>) {
        if let Ok(mut s) = self.script.lock() {
            s.entry(op.to_owned()).or_default().extend(answers);
        }
    }

    pub fn calls_to(&self, op: &str) -> Vec<Value> {
        self.calls
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|(_, o, _)| o == op)
                    .map(|(_, _, p)| p.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn default_answer(op: &str, params: &Value) -> Value {
        match op {
            "contacts.find_duplicate" => match params.get("email").and_then(Value::as_str) {
                Some("nobody@example.com") => json!({ "contact": null }),
                Some(email) => json!({ "contact": { "id": format!("c-{email}"), "email": email } }),
                None => json!({ "contact": null }),
            },
            "locations.custom_fields.list" => json!({ "customFields": [
                { "id": "cf-colour", "name": "Favourite Colour", "fieldKey": "contact.favourite_colour" }
            ]}),
            _ => json!({ "succeded": true, "echo": params }),
        }
    }
}

impl HighLevelApi for FakeHighLevel {
    fn call<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        params: Value,
    ) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(async move {
            if let Ok(mut c) = self.calls.lock() {
                c.push((connection.to_owned(), op.id.to_owned(), params.clone()));
            }
            let scripted = self
                .script
                .lock()
                .ok()
                .and_then(|mut s| s.get_mut(op.id).and_then(VecDeque::pop_front));
            match scripted {
                Some(answer) => answer,
                None => Ok(Self::default_answer(op.id, &params)),
            }
        })
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hlbridge-it-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

pub fn config(tag: &str) -> EngineConfig {
    let mut c = EngineConfig::with_data_dir(temp_dir(tag));
    c.idle_poll = Duration::from_millis(20);
    c.lease = Duration::from_secs(5);
    c.workers = 2;
    c
}

/// An engine with the fake HighLevel and one flow compiled from `toml`.
pub async fn engine_with(
    tag: &str,
    cfg: EngineConfig,
    fake: &Arc<FakeHighLevel>,
    flows: &[&str],
) -> Engine {
    let api: Arc<dyn HighLevelApi> = fake.clone();
    let engine = open_engine(cfg, api).await;
    let compiled = flows
        .iter()
        .map(|src| {
            compile_source(&format!("{tag}.toml"), src, &ValidationContext::default())
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
    engine.add_flows(compiled).await.expect("add flows");
    engine
}

/// An engine on the running test's backend ([`crate::backends::current`]): SQLite in the
/// configuration's data directory, or a fresh PostgreSQL schema.
pub async fn open_engine(cfg: EngineConfig, api: Arc<dyn HighLevelApi>) -> Engine {
    match crate::backends::current() {
        crate::backends::Backend::Sqlite => Engine::open_with(cfg, api).await.expect("open engine"),
        pg => {
            let store = pg.store("engine").await;
            Engine::with_store(cfg, store, api).expect("open engine")
        }
    }
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
