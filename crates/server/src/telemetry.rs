//! What the engine does, observed from outside it for `/metrics` and the dashboard: a
//! [`HighLevelApi`] wrapper counting HighLevel calls by status (429s among them) and noting
//! which locations were called, so their rate-limit budget can be shown, and a [`Store`]
//! wrapper feeding the step latency histogram from every saved step result.
//!
//! Build the engine with them ([`Telemetry::api`], [`Telemetry::store`], or
//! [`open_engine`]) and give the same [`Telemetry`] to the server
//! ([`crate::ServeConfig::telemetry`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use hlbridge_engine::store::{
    ClaimedRun, Cursor, Failure, NewEvent, StepRecord, StoreFuture, StoreResult,
};
use hlbridge_engine::{
    ClientApi, Engine, EngineConfig, EngineError, HighLevelApi, RunDetail, RunFilter, RunId,
    RunState, RunSummary, SqliteStore, StepError, Store,
};
use hlbridge_highlevel::{BudgetSnapshot, Operation};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;

/// Upper bounds (seconds) of the step latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Histogram {
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`].
    pub buckets: Vec<u64>,
    /// Observations.
    pub count: u64,
    /// Sum of the observations, seconds.
    pub sum: f64,
}

#[derive(Default)]
struct HistogramCells {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl HistogramCells {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn snapshot(&self) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// A location's remaining rate-limit budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Budget {
    /// Pacing key: a location (or company) id.
    pub location: String,
    /// Requests that could be sent now (burst window).
    pub burst_remaining: u32,
    /// Burst size in force.
    pub burst: u32,
    /// Requests left today.
    pub daily_remaining: u32,
    /// Daily budget.
    pub daily_limit: u32,
    /// Callers waiting for their turn.
    pub waiting: u32,
    /// `client` (the client's pacing estimate, corrected by the last headers) or `headers`
    /// (only the last `X-RateLimit-*` headers seen).
    pub source: String,
}

impl Budget {
    fn from_snapshot(s: &BudgetSnapshot) -> Budget {
        Budget {
            location: s.key.clone(),
            burst_remaining: s.burst_remaining,
            burst: s.burst,
            daily_remaining: s.daily_remaining,
            daily_limit: s.daily_limit,
            waiting: s.waiting,
            source: "client".into(),
        }
    }
}

#[derive(Default)]
struct Inner {
    calls: Mutex<BTreeMap<String, u64>>,
    rate_limited: AtomicU64,
    steps: HistogramCells,
    keys: Mutex<BTreeSet<String>>,
    clients: Mutex<Vec<ClientApi>>,
}

/// Counters shared by the wrappers and the server. Cheap to clone.
#[derive(Clone, Default)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Fresh counters.
    pub fn new() -> Telemetry {
        Telemetry::default()
    }

    /// Wraps the engine's HighLevel API so its calls are counted. `client`: the real
    /// client's adapter, whose pacing budgets the dashboard and `/metrics` show.
    pub fn api(
        &self,
        inner: Arc<dyn HighLevelApi>,
        client: Option<ClientApi>,
    ) -> Arc<dyn HighLevelApi> {
        if let Some(c) = &client {
            self.inner.clients.lock().push(c.clone());
        }
        Arc::new(ObservedApi {
            inner,
            client,
            telemetry: self.clone(),
        })
    }

    /// Wraps the engine's store so step latencies are observed.
    pub fn store(&self, inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(ObservedStore {
            inner,
            telemetry: self.clone(),
        })
    }

    /// HighLevel calls by status (`200`, `404`, `429`, … or `error` for no answer).
    pub fn calls_by_status(&self) -> BTreeMap<String, u64> {
        self.inner.calls.lock().clone()
    }

    /// 429 answers that reached the engine.
    pub fn rate_limited(&self) -> u64 {
        self.inner.rate_limited.load(Ordering::Relaxed)
    }

    /// Step latencies.
    pub fn step_latency(&self) -> Histogram {
        self.inner.steps.snapshot()
    }

    /// The remaining budget of every location called so far: the client's pacing estimate
    /// (corrected by the headers), or, when the client does not pace, the last
    /// `X-RateLimit-*` headers seen.
    pub fn budgets(&self) -> Vec<Budget> {
        let keys: Vec<String> = self.inner.keys.lock().iter().cloned().collect();
        let clients = self.inner.clients.lock().clone();
        keys.iter()
            .filter_map(|key| {
                clients.iter().find_map(|c| {
                    let snap = c.client().budget(key)?;
                    let mut b = Budget::from_snapshot(&snap);
                    if !c.client().config().pacing.enabled {
                        let h = snap.last_headers.as_ref()?;
                        b.source = "headers".into();
                        b.burst_remaining = h.remaining.unwrap_or(b.burst_remaining);
                        b.burst = h.max.unwrap_or(b.burst);
                        b.daily_remaining = h.daily_remaining.unwrap_or(b.daily_remaining);
                        b.daily_limit = h.daily_limit.unwrap_or(b.daily_limit);
                    }
                    Some(b)
                })
            })
            .collect()
    }

    fn count_call(&self, result: &Result<Value, StepError>) {
        let status = match result {
            Ok(_) => "200".to_owned(),
            Err(e) => e.status.map_or_else(|| "error".to_owned(), |s| s.to_string()),
        };
        if status == "429" {
            self.inner.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        *self.inner.calls.lock().entry(status).or_default() += 1;
    }
}

/// The HighLevel API wrapper (see the module docs).
struct ObservedApi {
    inner: Arc<dyn HighLevelApi>,
    client: Option<ClientApi>,
    telemetry: Telemetry,
}

impl ObservedApi {
    fn note_key(&self, connection: &str, op: &Operation, params: &Value) {
        let Some(api) = &self.client else { return };
        let Some(conn) = api.connection(connection) else {
            return;
        };
        let mut params = params.clone();
        if let (Some(loc), Value::Object(map)) = (&conn.location_id, &mut params)
            && op.param("locationId").is_some()
            && !map.contains_key("locationId")
        {
            map.insert("locationId".into(), Value::String(loc.clone()));
        }
        let key = api.client().pacing_key(&conn.auth, &params);
        let mut keys = self.telemetry.inner.keys.lock();
        if !keys.contains(&key) {
            keys.insert(key);
        }
    }
}

impl HighLevelApi for ObservedApi {
    fn call<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        params: Value,
    ) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(async move {
            self.note_key(connection, op, &params);
            let result = self.inner.call(connection, op, params).await;
            self.telemetry.count_call(&result);
            result
        })
    }

    fn paginate<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        params: Value,
    ) -> BoxStream<'a, Result<Value, StepError>> {
        self.note_key(connection, op, &params);
        // One paginated read counts as one call: its first error, or a success at its end.
        let failed = Arc::new(AtomicBool::new(false));
        let (seen, counter) = (failed.clone(), self.telemetry.clone());
        let at_end = self.telemetry.clone();
        self.inner
            .paginate(connection, op, params)
            .inspect(move |item| {
                if let Err(e) = item
                    && !seen.swap(true, Ordering::Relaxed)
                {
                    counter.count_call(&Err(e.clone()));
                }
            })
            .chain(
                futures::stream::once(async move {
                    if !failed.load(Ordering::Relaxed) {
                        at_end.count_call(&Ok(Value::Null));
                    }
                })
                .filter_map(|()| futures::future::ready(None)),
            )
            .boxed()
    }
}

/// The store wrapper (see the module docs).
struct ObservedStore {
    inner: Arc<dyn Store>,
    telemetry: Telemetry,
}

impl Store for ObservedStore {
    fn upsert_flow<'a>(
        &'a self,
        id: &'a str,
        name: Option<&'a str>,
        definition: &'a Value,
        enabled: bool,
    ) -> StoreFuture<'a, ()> {
        self.inner.upsert_flow(id, name, definition, enabled)
    }

    fn enqueue_events<'a>(&'a self, events: Vec<NewEvent>) -> StoreFuture<'a, Vec<Option<RunId>>> {
        self.inner.enqueue_events(events)
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
        Box::pin(async move {
            let r = self.inner.save_step_result(run_id, record).await;
            if r.is_ok()
                && let Some(end) = record.finished_at
            {
                let d = end - record.started_at;
                self.telemetry
                    .inner
                    .steps
                    .observe(Duration::try_from(d).unwrap_or_default());
            }
            r
        })
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
        self.inner.get_cursor(flow_id, location_id)
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

/// Opens the engine on its SQLite store with both wrappers in place: what `hlbridge serve`
/// and `hlbridge demo` use so `/metrics` and the dashboard see everything.
pub async fn open_engine(
    config: EngineConfig,
    api: Option<Arc<dyn HighLevelApi>>,
    client: Option<ClientApi>,
    telemetry: &Telemetry,
) -> Result<Engine, EngineError> {
    let store: StoreResult<SqliteStore> = SqliteStore::open(&config.data_dir).await;
    let store = telemetry.store(Arc::new(store?));
    let api = match api {
        Some(api) => telemetry.api(api, client),
        None => telemetry.api(Arc::new(hlbridge_engine::api::NoHighLevel), None),
    };
    Engine::with_store(config, store, api)
}
