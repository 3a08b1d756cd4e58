//! When the store is down, senders are told to retry (HighLevel with a 429, the only status
//! it retries after; apps with a 503), never given a 500, and nothing is lost once it is
//! back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hlbridge_engine::store::{
    ClaimedRun, Cursor, Failure, NewEvent, StepRecord, StoreError, StoreFuture,
};
use hlbridge_engine::validate::compile_source;
use hlbridge_engine::{
    Engine, EngineConfig, RunDetail, RunFilter, RunId, RunState, RunSummary, SqliteStore, Store,
};
use hlbridge_server::{ServeConfig, serve};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::harness::{now_text, signed, temp_dir, test_signer, wait_for};

/// SQLite that fails writes of events and health reads while `down` is set.
struct FlakyStore {
    inner: SqliteStore,
    down: AtomicBool,
}

impl FlakyStore {
    fn outage<'a, T: Send + 'a>(&self) -> Option<StoreFuture<'a, T>> {
        self.down.load(Ordering::SeqCst).then(|| {
            let fut: StoreFuture<'a, T> = Box::pin(async {
                Err(StoreError::Conflict(
                    "database is locked (simulated)".into(),
                ))
            });
            fut
        })
    }
}

impl Store for FlakyStore {
    fn upsert_flow<'a>(
        &'a self,
        id: &'a str,
        name: Option<&'a str>,
        definition: &'a Value,
        enabled: bool,
    ) -> StoreFuture<'a, Option<hlbridge_engine::store::PreviousFlow>> {
        self.inner.upsert_flow(id, name, definition, enabled)
    }

    fn enqueue_events<'a>(&'a self, events: Vec<NewEvent>) -> StoreFuture<'a, Vec<Option<RunId>>> {
        self.outage()
            .unwrap_or_else(|| self.inner.enqueue_events(events))
    }

    fn claim_runs<'a>(
        &'a self,
        worker_id: &'a str,
        n: u32,
        lease: Duration,
    ) -> StoreFuture<'a, Vec<ClaimedRun>> {
        self.inner.claim_runs(worker_id, n, lease)
    }

    fn claim_run<'a>(
        &'a self,
        run_id: RunId,
        worker_id: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, Option<ClaimedRun>> {
        self.inner.claim_run(run_id, worker_id, lease)
    }

    fn renew_lease<'a>(&'a self, run: &'a ClaimedRun, lease: Duration) -> StoreFuture<'a, bool> {
        self.inner.renew_lease(run, lease)
    }

    fn release_run<'a>(&'a self, run: &'a ClaimedRun) -> StoreFuture<'a, bool> {
        self.inner.release_run(run)
    }

    fn step_results<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, Vec<StepRecord>> {
        self.inner.step_results(run_id)
    }

    fn save_step_result<'a>(
        &'a self,
        run_id: RunId,
        record: &'a StepRecord,
    ) -> StoreFuture<'a, ()> {
        self.inner.save_step_result(run_id, record)
    }

    fn complete_run<'a>(&'a self, run: &'a ClaimedRun, state: RunState) -> StoreFuture<'a, bool> {
        self.inner.complete_run(run, state)
    }

    fn fail_run<'a>(
        &'a self,
        run: &'a ClaimedRun,
        error: &'a str,
        body: Option<&'a Value>,
        failure: Failure,
    ) -> StoreFuture<'a, bool> {
        self.inner.fail_run(run, error, body, failure)
    }

    fn list_runs<'a>(&'a self, filter: &'a RunFilter) -> StoreFuture<'a, Vec<RunSummary>> {
        self.inner.list_runs(filter)
    }

    fn run_detail<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, Option<RunDetail>> {
        self.inner.run_detail(run_id)
    }

    fn replay<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, RunId> {
        self.inner.replay(run_id)
    }

    fn resume<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, RunId> {
        self.inner.resume(run_id)
    }

    fn replay_dead<'a>(&'a self, flow_id: Option<&'a str>) -> StoreFuture<'a, Vec<RunId>> {
        self.inner.replay_dead(flow_id)
    }

    fn count_runs<'a>(&'a self, flow_id: Option<&'a str>) -> StoreFuture<'a, Vec<(RunState, u64)>> {
        self.inner.count_runs(flow_id)
    }

    fn mark_seen<'a>(&'a self, flow_id: &'a str, item_keys: &'a [String]) -> StoreFuture<'a, u64> {
        self.inner.mark_seen(flow_id, item_keys)
    }

    fn get_cursor<'a>(
        &'a self,
        flow_id: &'a str,
        location_id: &'a str,
    ) -> StoreFuture<'a, Option<Cursor>> {
        self.outage()
            .unwrap_or_else(|| self.inner.get_cursor(flow_id, location_id))
    }

    fn set_cursor<'a>(
        &'a self,
        flow_id: &'a str,
        location_id: &'a str,
        cursor: &'a Cursor,
    ) -> StoreFuture<'a, ()> {
        self.inner.set_cursor(flow_id, location_id, cursor)
    }
}

const FLOWS: [&str; 2] = [
    r#"
id = "hl"
[trigger]
type = "highlevel_webhook"
events = ["ContactCreate"]
[[steps]]
id = "ok"
type = "filter"
condition = "true"
"#,
    r#"
id = "app"
[trigger]
type = "app_webhook"
secret = "s"
auth = "bearer"
[[steps]]
id = "ok"
type = "filter"
condition = "true"
"#,
];

#[tokio::test]
async fn a_store_outage_asks_senders_to_retry_and_loses_nothing() {
    let (signer, key) = test_signer();
    let dir = temp_dir("outage");
    let store = Arc::new(FlakyStore {
        inner: SqliteStore::open(&dir).await.expect("store"),
        down: AtomicBool::new(false),
    });
    let mut cfg = EngineConfig::with_data_dir(&dir);
    cfg.idle_poll = Duration::from_millis(20);
    cfg.highlevel_webhook_keys = vec![key];
    let engine = Engine::with_store(
        cfg,
        store.clone(),
        Arc::new(hlbridge_engine::api::NoHighLevel),
    )
    .expect("engine");
    let flows = FLOWS
        .iter()
        .map(|src| compile_source("f.toml", src, &Default::default()).expect("flow"))
        .collect();
    engine.add_flows(flows).await.expect("flows");
    let server = serve(
        engine.clone(),
        ServeConfig {
            bind: "127.0.0.1:0".parse().expect("addr"),
            run_triggers: false,
            ..ServeConfig::default()
        },
        CancellationToken::new(),
    )
    .await
    .expect("serve");
    let http = reqwest::Client::new();
    let hl_body = serde_json::to_vec(
        &json!({"type": "ContactCreate", "webhookId": "w-1", "id": "c1", "timestamp": now_text()}),
    )
    .expect("json");
    let send_hl = || {
        http.post(format!("{}/hooks/highlevel", server.base_url))
            .headers(signed(&signer, &hl_body))
            .body(hl_body.clone())
            .send()
    };
    let send_app = || {
        http.post(format!("{}/hooks/app/app", server.base_url))
            .bearer_auth("s")
            .json(&json!({"n": 1}))
            .send()
    };

    store.down.store(true, Ordering::SeqCst);
    let resp = send_hl().await.expect("post");
    assert_eq!(
        resp.status().as_u16(),
        429,
        "HighLevel retries after a 429 only"
    );
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"], "unavailable");
    assert!(
        !body.to_string().contains("simulated"),
        "no database detail leaks: {body}"
    );
    let resp = send_app().await.expect("post");
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let resp = http
        .get(format!("{}/healthz", server.base_url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status().as_u16(), 503);
    let m = server.state().metrics();
    assert_eq!((m.highlevel.unavailable, m.app.unavailable), (1, 1));

    // Back up: the senders' retries are accepted and run.
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(send_hl().await.expect("post").status().as_u16(), 200);
    assert_eq!(send_app().await.expect("post").status().as_u16(), 202);
    wait_for(10, "both runs", || async {
        let runs = engine
            .store()
            .list_runs(&RunFilter::default())
            .await
            .unwrap_or_default();
        runs.len() == 2 && runs.iter().all(|r| r.state == RunState::Succeeded)
    })
    .await;
    let resp = http
        .get(format!("{}/healthz", server.base_url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status().as_u16(), 200);
    server.shutdown().await.expect("shutdown");
}
