//! What the engine does, observed from outside it for `/metrics` and the dashboard.
//!
//! - Step latencies come from the store: each scrape ([`Telemetry::scan`]) reads the step
//!   results of the runs that finished since the last one (since the server started at
//!   first), so the histogram counts every step of this process's lifetime without hooking
//!   into the engine.
//! - HighLevel calls by status and 429s: from a [`HighLevelApi`] wrapper
//!   ([`Telemetry::api`], or [`open_engine`]) when the engine was opened with it (it also
//!   sees polls and lookups); otherwise from the scanned HighLevel steps' outcomes.
//! - Each location's remaining budget: from the real client's pacing state (corrected by
//!   the `X-RateLimit-*` headers), or from the last headers seen when the client does not
//!   pace; this needs the wrapper, which knows the client.
//!
//! Give the same [`Telemetry`] to the server ([`crate::ServeConfig::telemetry`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use hlbridge_engine::flow::Step;
use hlbridge_engine::{
    ClientApi, Engine, EngineConfig, EngineError, HighLevelApi, RunFilter, RunId, SqliteStore,
    StepError,
};
use hlbridge_highlevel::{BudgetSnapshot, Operation};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

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

struct ScanState {
    /// Runs finished at or before this were counted.
    watermark: OffsetDateTime,
    /// Runs finished exactly at the watermark, counted already.
    at_watermark: BTreeSet<RunId>,
}

struct Inner {
    calls: Mutex<BTreeMap<String, u64>>,
    rate_limited: AtomicU64,
    steps: HistogramCells,
    keys: Mutex<BTreeSet<String>>,
    clients: Mutex<Vec<ClientApi>>,
    wrapped: AtomicBool,
    scan: tokio::sync::Mutex<ScanState>,
}

/// Counters shared by the wrappers and the server. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            inner: Arc::new(Inner {
                calls: Mutex::default(),
                rate_limited: AtomicU64::new(0),
                steps: HistogramCells::default(),
                keys: Mutex::default(),
                clients: Mutex::default(),
                wrapped: AtomicBool::new(false),
                scan: tokio::sync::Mutex::new(ScanState {
                    watermark: OffsetDateTime::now_utc(),
                    at_watermark: BTreeSet::new(),
                }),
            }),
        }
    }
}

/// Most runs one scan reads.
const SCAN_BATCH: u32 = 500;

fn step_kinds(steps: &[Step], out: &mut BTreeMap<String, &'static str>) {
    for s in steps {
        out.insert(s.id().to_owned(), s.kind());
        if let Step::ForEach(f) = s {
            step_kinds(&f.steps, out);
        }
    }
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
        self.inner.wrapped.store(true, Ordering::Relaxed);
        Arc::new(ObservedApi {
            inner,
            client,
            telemetry: self.clone(),
        })
    }

    /// Reads the step results of the runs finished since the last scan (at most
    /// [`SCAN_BATCH`] runs, newest first) into the step latency histogram (and, without the
    /// API wrapper, the HighLevel call counts).
    pub async fn scan(&self, engine: &Engine) {
        let mut st = self.inner.scan.lock().await;
        let filter = RunFilter {
            flow_id: None,
            state: None,
            limit: SCAN_BATCH,
        };
        let Ok(runs) = engine.store().list_runs(&filter).await else {
            return;
        };
        let wrapped = self.inner.wrapped.load(Ordering::Relaxed);
        let mut newest = st.watermark;
        let mut at_newest: BTreeSet<RunId> = BTreeSet::new();
        for r in &runs {
            let Some(done) = r.finished_at else { continue };
            if done < st.watermark || (done == st.watermark && st.at_watermark.contains(&r.id)) {
                continue;
            }
            match done.cmp(&newest) {
                std::cmp::Ordering::Greater => {
                    newest = done;
                    at_newest.clear();
                    at_newest.insert(r.id);
                }
                std::cmp::Ordering::Equal => {
                    at_newest.insert(r.id);
                }
                std::cmp::Ordering::Less => {}
            }
            let Ok(Some(d)) = engine.store().run_detail(r.id).await else {
                continue;
            };
            let mut kinds = BTreeMap::new();
            if let Some(f) = engine.flow(&r.flow_id) {
                step_kinds(&f.flow.steps, &mut kinds);
            }
            for s in &d.steps {
                if let Some(end) = s.finished_at {
                    self.inner
                        .steps
                        .observe(Duration::try_from(end - s.started_at).unwrap_or_default());
                }
                let leaf = s.step_id.rsplit('.').next().unwrap_or(&s.step_id);
                let calls_highlevel =
                    matches!(kinds.get(leaf), Some(&"highlevel" | &"find_contact"));
                if !wrapped && calls_highlevel && s.finished_at.is_some() {
                    let result = match &s.error {
                        None => Ok(Value::Null),
                        Some(e) => Err(StepError {
                            status: e
                                .get("status")
                                .and_then(Value::as_u64)
                                .and_then(|x| u16::try_from(x).ok()),
                            ..StepError::permanent("")
                        }),
                    };
                    self.count_call(&result);
                }
            }
        }
        if newest > st.watermark {
            st.watermark = newest;
            st.at_watermark = at_newest;
        } else {
            st.at_watermark.extend(at_newest);
        }
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
            Err(e) => e
                .status
                .map_or_else(|| "error".to_owned(), |s| s.to_string()),
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

/// Opens the engine on its SQLite store with the HighLevel API observed ([`Telemetry::api`]),
/// so `/metrics` and the dashboard also see HighLevel calls and each location's budget.
pub async fn open_engine(
    config: EngineConfig,
    client: Option<ClientApi>,
    telemetry: &Telemetry,
) -> Result<Engine, EngineError> {
    let store = SqliteStore::open(&config.data_dir).await?;
    let api: Arc<dyn HighLevelApi> = match &client {
        Some(c) => telemetry.api(Arc::new(c.clone()), client.clone()),
        None => Arc::new(hlbridge_engine::api::NoHighLevel),
    };
    Engine::with_store(config, Arc::new(store), api)
}
