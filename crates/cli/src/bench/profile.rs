//! `--profile`: a [`Store`] wrapper that counts every store call and the time spent in it
//! (from the caller's side: queueing for the writer connection included), printed after a
//! part to show where a run's time goes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hlbridge_engine::Store;
use hlbridge_engine::store::{
    ClaimedRun, Cursor, Failure, NewEvent, RateBudget, RunDetail, RunEnd, RunFilter, RunId,
    RunState, RunSummary, SlotAnswer, SlotTake, StepRecord, StoreFuture, StoreResult, TriggerTurn,
};
use parking_lot::Mutex;
use serde_json::Value;

/// Calls and time per store method.
#[derive(Debug, Default)]
pub struct Profile {
    ops: Mutex<BTreeMap<&'static str, (u64, Duration)>>,
}

impl Profile {
    fn add(&self, name: &'static str, d: Duration) {
        let mut ops = self.ops.lock();
        let e = ops.entry(name).or_default();
        e.0 += 1;
        e.1 += d;
    }

    /// Prints one line per store method that was called.
    pub fn print(&self, runs: usize) {
        println!("    store calls (time from the caller's side, writer queueing included):");
        for (name, (n, d)) in self.ops.lock().iter() {
            println!(
                "      {name:<18} {n:>7} calls, {:>8.1} per run, mean {:>8.1} µs, total {:>8.1} ms",
                *n as f64 / runs.max(1) as f64,
                d.as_secs_f64() * 1e6 / (*n).max(1) as f64,
                d.as_secs_f64() * 1e3
            );
        }
    }
}

/// A store that times every call of another.
pub struct Timed {
    inner: Arc<dyn Store>,
    profile: Arc<Profile>,
}

impl Timed {
    /// Wraps `inner`, recording into `profile`.
    pub fn new(inner: Arc<dyn Store>, profile: Arc<Profile>) -> Self {
        Self { inner, profile }
    }

    fn time<'a, T: Send + 'a>(
        &'a self,
        name: &'static str,
        f: StoreFuture<'a, T>,
    ) -> BoxFuture<'a, StoreResult<T>> {
        Box::pin(async move {
            let t = Instant::now();
            let out = f.await;
            self.profile.add(name, t.elapsed());
            out
        })
    }
}

impl Store for Timed {
    fn upsert_flow<'a>(
        &'a self,
        id: &'a str,
        name: Option<&'a str>,
        definition: &'a Value,
        enabled: bool,
    ) -> StoreFuture<'a, Option<hlbridge_engine::store::PreviousFlow>> {
        self.time(
            "upsert_flow",
            self.inner.upsert_flow(id, name, definition, enabled),
        )
    }

    fn enqueue_events<'a>(&'a self, events: Vec<NewEvent>) -> StoreFuture<'a, Vec<Option<RunId>>> {
        self.time("enqueue_events", self.inner.enqueue_events(events))
    }

    fn claim_runs<'a>(
        &'a self,
        worker_id: &'a str,
        n: u32,
        lease: Duration,
    ) -> StoreFuture<'a, Vec<ClaimedRun>> {
        self.time("claim_runs", self.inner.claim_runs(worker_id, n, lease))
    }

    fn claim_run<'a>(
        &'a self,
        run_id: RunId,
        worker_id: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, Option<ClaimedRun>> {
        self.time("claim_run", self.inner.claim_run(run_id, worker_id, lease))
    }

    fn renew_lease<'a>(&'a self, run: &'a ClaimedRun, lease: Duration) -> StoreFuture<'a, bool> {
        self.time("renew_lease", self.inner.renew_lease(run, lease))
    }

    fn release_run<'a>(&'a self, run: &'a ClaimedRun) -> StoreFuture<'a, bool> {
        self.time("release_run", self.inner.release_run(run))
    }

    fn step_results<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, Vec<StepRecord>> {
        self.time("step_results", self.inner.step_results(run_id))
    }

    fn save_step_result<'a>(
        &'a self,
        run_id: RunId,
        record: &'a StepRecord,
    ) -> StoreFuture<'a, ()> {
        self.time(
            "save_step_result",
            self.inner.save_step_result(run_id, record),
        )
    }

    fn complete_run<'a>(&'a self, run: &'a ClaimedRun, state: RunState) -> StoreFuture<'a, bool> {
        self.time("complete_run", self.inner.complete_run(run, state))
    }

    fn fail_run<'a>(
        &'a self,
        run: &'a ClaimedRun,
        error: &'a str,
        body: Option<&'a Value>,
        failure: Failure,
    ) -> StoreFuture<'a, bool> {
        self.time("fail_run", self.inner.fail_run(run, error, body, failure))
    }

    fn finish_run<'a>(
        &'a self,
        run: &'a ClaimedRun,
        steps: &'a [StepRecord],
        end: RunEnd,
    ) -> StoreFuture<'a, bool> {
        self.time("finish_run", self.inner.finish_run(run, steps, end))
    }

    fn list_runs<'a>(&'a self, filter: &'a RunFilter) -> StoreFuture<'a, Vec<RunSummary>> {
        self.time("list_runs", self.inner.list_runs(filter))
    }

    fn run_detail<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, Option<RunDetail>> {
        self.time("run_detail", self.inner.run_detail(run_id))
    }

    fn replay<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, RunId> {
        self.time("replay", self.inner.replay(run_id))
    }

    fn resume<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, RunId> {
        self.time("resume", self.inner.resume(run_id))
    }

    fn replay_dead<'a>(&'a self, flow_id: Option<&'a str>) -> StoreFuture<'a, Vec<RunId>> {
        self.time("replay_dead", self.inner.replay_dead(flow_id))
    }

    fn count_runs<'a>(&'a self, flow_id: Option<&'a str>) -> StoreFuture<'a, Vec<(RunState, u64)>> {
        self.time("count_runs", self.inner.count_runs(flow_id))
    }

    fn mark_seen<'a>(&'a self, flow_id: &'a str, item_keys: &'a [String]) -> StoreFuture<'a, u64> {
        self.time("mark_seen", self.inner.mark_seen(flow_id, item_keys))
    }

    fn get_cursor<'a>(
        &'a self,
        flow_id: &'a str,
        location_id: &'a str,
    ) -> StoreFuture<'a, Option<Cursor>> {
        self.time("get_cursor", self.inner.get_cursor(flow_id, location_id))
    }

    fn set_cursor<'a>(
        &'a self,
        flow_id: &'a str,
        location_id: &'a str,
        cursor: &'a Cursor,
    ) -> StoreFuture<'a, ()> {
        self.time(
            "set_cursor",
            self.inner.set_cursor(flow_id, location_id, cursor),
        )
    }

    fn security(&self) -> Option<Arc<dyn hlbridge_engine::store::security::SecurityStore>> {
        self.inner.security()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn wakeups(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.inner.wakeups()
    }

    fn take_trigger_turn<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        every: Duration,
    ) -> StoreFuture<'a, TriggerTurn> {
        self.time(
            "take_trigger_turn",
            self.inner.take_trigger_turn(key, holder, every),
        )
    }

    fn take_rate_slot<'a>(
        &'a self,
        key: &'a str,
        budget: &'a RateBudget,
        claim: &'a str,
    ) -> StoreFuture<'a, SlotTake> {
        self.time(
            "take_rate_slot",
            self.inner.take_rate_slot(key, budget, claim),
        )
    }

    fn answer_rate_slot<'a>(
        &'a self,
        key: &'a str,
        budget: &'a RateBudget,
        slot: u32,
        claim: &'a str,
        answer: SlotAnswer,
    ) -> StoreFuture<'a, ()> {
        self.time(
            "answer_rate_slot",
            self.inner
                .answer_rate_slot(key, budget, slot, claim, answer),
        )
    }
}
