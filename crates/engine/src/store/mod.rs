//! The durable store: event log, run queue, step results, cursors and poll dedupe.
//!
//! [`Store`] is the interface the runner and the triggers use; [`SqliteStore`] is the
//! default backend (WAL mode, one writer connection, migrations from
//! `crates/engine/migrations/sqlite/`), and [`PostgresStore`] the backend for scale-out
//! (claiming with `FOR UPDATE SKIP LOCKED`, migrations from
//! `crates/engine/migrations/postgres/`, kept in step with SQLite's). [`backend`] picks one
//! from `--database URL`; [`cluster`] holds what processes sharing a database coordinate.
//!
//! Run states: `queued` (waiting for a worker), `running` (claimed under a lease), `failed`
//! (an attempt failed; waiting for `next_attempt_at` to be retried), `succeeded`,
//! `skipped` (a filter was false) and `dead` (retry budget spent, or an error that cannot
//! succeed; replayable).

pub mod backend;
pub mod cluster;
mod postgres;
pub mod security;
mod sqlite;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

pub use backend::{Database, MigrationInfo, MigrationReport};
pub use cluster::{RateBudget, SlotAnswer, SlotTake, TriggerTurn};
pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::SqliteStore;

/// A run's id (UUID v7: sortable by creation time).
pub type RunId = uuid::Uuid;

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A boxed store future.
pub type StoreFuture<'a, T> = BoxFuture<'a, StoreResult<T>>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The thing asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request is not possible in the current state.
    #[error("{0}")]
    Conflict(String),
    /// A stored value could not be read back.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

/// The state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for a worker.
    Queued,
    /// Claimed by a worker under a lease.
    Running,
    /// Every step done.
    Succeeded,
    /// An attempt failed; retried at `next_attempt_at`.
    Failed,
    /// A filter was false; nothing (more) to do.
    Skipped,
    /// Dead letter: retry budget spent or an error that cannot succeed. Replayable.
    Dead,
}

impl RunState {
    /// Every state.
    pub const ALL: [RunState; 6] = [
        RunState::Queued,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Skipped,
        RunState::Dead,
    ];

    /// The state as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Skipped => "skipped",
            RunState::Dead => "dead",
        }
    }

    /// Whether the run is over (succeeded, skipped or dead).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Skipped | RunState::Dead
        )
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown run state {s:?}")))
    }
}

/// An event to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The flow it starts.
    pub flow_id: String,
    /// Unique key: a second event with the same key is a no-op.
    pub dedupe_key: String,
    /// The event (what templates see as `event`).
    pub payload: Value,
    /// For poll "new items": the item key recorded in `seen_items`; an item already seen
    /// is skipped.
    pub seen_key: Option<String>,
}

/// A run claimed by a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedRun {
    /// The run.
    pub id: RunId,
    /// Its flow.
    pub flow_id: String,
    /// Its event.
    pub event_id: String,
    /// The event's dedupe key.
    pub dedupe_key: String,
    /// The event payload.
    pub payload: Value,
    /// When the event was received.
    pub received_at: OffsetDateTime,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// Identifies this claim; needed to renew, complete or fail the run.
    pub lease_token: String,
    /// The run this one replays, if any.
    pub replay_of: Option<RunId>,
    /// This claim took the run over from a worker that stopped (crash, lost lease) while
    /// running it: the step that worker was on, the first without a saved result, may have
    /// been carried out.
    pub taken_over: bool,
    /// Step results saved by earlier attempts, in execution order (a resumed run skips the
    /// steps that succeeded). Empty for a fresh run.
    pub steps: Vec<StepRecord>,
}

/// What happens to a run after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// State `failed`, tried again at this time.
    RetryAt(OffsetDateTime),
    /// State `dead` (dead letter).
    Dead,
}

/// How [`Store::finish_run`] ends a claimed run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    /// `succeeded` or `skipped` (as [`Store::complete_run`]).
    Complete(RunState),
    /// A failed attempt (as [`Store::fail_run`]).
    Fail {
        /// The error message.
        error: String,
        /// The response body of the failure.
        body: Option<Value>,
        /// Retry later or dead letter.
        failure: Failure,
    },
    /// Given back (as [`Store::release_run`]).
    Release,
}

/// A run as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    /// The run.
    pub id: RunId,
    /// Its flow.
    pub flow_id: String,
    /// Its event.
    pub event_id: String,
    /// Current state.
    pub state: RunState,
    /// Attempts so far.
    pub attempts: u32,
    /// When a queued or failed run may be claimed next.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// The worker holding (or last holding) the run.
    pub worker_id: Option<String>,
    /// The last error message.
    pub last_error: Option<String>,
    /// The run this one replays.
    pub replay_of: Option<RunId>,
    /// When it was enqueued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// First claim.
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When it reached a final state.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// The saved result of one step of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    /// Step id (`<for_each id>[<n>].<step id>` for nested steps).
    pub step_id: String,
    /// The rendered input (parameters, request).
    pub input: Option<Value>,
    /// The output, when the step succeeded.
    pub output: Option<Value>,
    /// The error, when it failed.
    pub error: Option<Value>,
    /// Start time.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// End time.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

impl StepRecord {
    /// Whether the step finished without error (a resumed run skips it).
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && self.finished_at.is_some()
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    /// Event id.
    pub id: String,
    /// Its flow.
    pub flow_id: String,
    /// Dedupe key.
    pub dedupe_key: String,
    /// Payload.
    pub payload: Value,
    /// When it was received.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

/// Everything about one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunDetail {
    /// The run.
    pub run: RunSummary,
    /// Its event.
    pub event: EventRecord,
    /// Its steps, in execution order.
    pub steps: Vec<StepRecord>,
    /// The response body of the failure that ended the run (dead letters).
    pub error_body: Option<Value>,
}

/// Which runs to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFilter {
    /// Only this flow's runs.
    pub flow_id: Option<String>,
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// At most this many (newest first).
    pub limit: u32,
}

impl Default for RunFilter {
    fn default() -> Self {
        Self {
            flow_id: None,
            state: None,
            limit: 50,
        }
    }
}

/// A poll's position: an opaque cursor and an updated-since watermark.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Opaque cursor (pagination position), if the poller keeps one.
    pub cursor: Option<Value>,
    /// The latest `dateUpdated` seen (text, compared as RFC 3339 / ISO 8601).
    pub watermark: Option<String>,
}

/// SQL both backends share (their placeholders agree: `$1`, `$2`, …).
pub(crate) mod shared_sql {
    /// Copies a run's succeeded steps to a resumed run: `$1` new run, `$2` original run.
    pub const COPY_SUCCEEDED_STEPS: &str = "INSERT INTO step_results \
        (run_id, step_id, position, input, output, error, started_at, finished_at) \
        SELECT $1, step_id, position, input, output, error, started_at, finished_at \
        FROM step_results WHERE run_id = $2 AND error IS NULL AND finished_at IS NOT NULL";

    /// Inserts or updates a flow: `$1` id, `$2` name, `$3` definition, `$4` enabled,
    /// `$5` updated at.
    pub const UPSERT_FLOW: &str = "INSERT INTO flows (id, name, definition, enabled, updated_at) \
        VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
        definition = excluded.definition, enabled = excluded.enabled, updated_at = excluded.updated_at";

    /// The key ring as (id, master id), for a master-key rotation's check.
    pub const VAULT_RING: &str = "SELECT id, master_id FROM vault_keys";

    /// Re-wraps one data key: `$1` master id, `$2` wrapped key, `$3` key id.
    pub const REWRAP_VAULT_KEY: &str =
        "UPDATE vault_keys SET master_id = $1, wrapped = $2 WHERE id = $3";
}

/// A flow as the store knew it before an update.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviousFlow {
    /// Its definition.
    pub definition: Value,
    /// Whether it was enabled.
    pub enabled: bool,
}

/// The store interface (see the module docs).
pub trait Store: Send + Sync {
    /// Records (or updates) a loaded flow's definition; returns what was stored before
    /// (`None` for a new flow), so callers can tell created, changed and enabled apart.
    fn upsert_flow<'a>(
        &'a self,
        id: &'a str,
        name: Option<&'a str>,
        definition: &'a Value,
        enabled: bool,
    ) -> StoreFuture<'a, Option<PreviousFlow>>;

    /// Writes an event and its run in one transaction. A duplicate dedupe key (or an item
    /// already seen) is a no-op returning `None`.
    fn enqueue_event<'a>(&'a self, event: NewEvent) -> StoreFuture<'a, Option<RunId>> {
        Box::pin(async move { Ok(self.enqueue_events(vec![event]).await?.pop().flatten()) })
    }

    /// [`Store::enqueue_event`] for several events, in one transaction.
    fn enqueue_events<'a>(&'a self, events: Vec<NewEvent>) -> StoreFuture<'a, Vec<Option<RunId>>>;

    /// Claims up to `n` runs that are due (queued, failed and due for retry, or running with
    /// a lapsed lease) for `worker_id`, leasing them for `lease`. Each comes with the step
    /// results its earlier attempts saved ([`ClaimedRun::steps`]).
    fn claim_runs<'a>(
        &'a self,
        worker_id: &'a str,
        n: u32,
        lease: Duration,
    ) -> StoreFuture<'a, Vec<ClaimedRun>>;

    /// Claims one given run now, whatever its schedule, if it is not final and not leased
    /// (with its saved step results, as [`Store::claim_runs`]).
    fn claim_run<'a>(
        &'a self,
        run_id: RunId,
        worker_id: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, Option<ClaimedRun>>;

    /// Extends a claim's lease; `false` when the claim was lost.
    fn renew_lease<'a>(&'a self, run: &'a ClaimedRun, lease: Duration) -> StoreFuture<'a, bool>;

    /// Gives a claimed run back (state `queued`, due now, this attempt not counted), e.g. on
    /// shutdown.
    fn release_run<'a>(&'a self, run: &'a ClaimedRun) -> StoreFuture<'a, bool>;

    /// The saved step results of a run, in execution order.
    fn step_results<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, Vec<StepRecord>>;

    /// Saves (or replaces) one step's result.
    fn save_step_result<'a>(&'a self, run_id: RunId, record: &'a StepRecord)
    -> StoreFuture<'a, ()>;

    /// Ends a claimed run as `succeeded` or `skipped`; `false` when the claim was lost.
    fn complete_run<'a>(&'a self, run: &'a ClaimedRun, state: RunState) -> StoreFuture<'a, bool>;

    /// Records a failed attempt: retry later or dead letter, with the error and the
    /// response body; `false` when the claim was lost.
    fn fail_run<'a>(
        &'a self,
        run: &'a ClaimedRun,
        error: &'a str,
        body: Option<&'a Value>,
        failure: Failure,
    ) -> StoreFuture<'a, bool>;

    /// Saves a claimed run's last step results and ends it (`end`), in one transaction
    /// where the backend can; `false` when the claim was lost (the step results are saved
    /// either way, as [`Store::save_step_result`] does). The default saves the steps one by
    /// one, then calls [`Store::complete_run`], [`Store::fail_run`] or
    /// [`Store::release_run`].
    fn finish_run<'a>(
        &'a self,
        run: &'a ClaimedRun,
        steps: &'a [StepRecord],
        end: RunEnd,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            for step in steps {
                self.save_step_result(run.id, step).await?;
            }
            match end {
                RunEnd::Complete(state) => self.complete_run(run, state).await,
                RunEnd::Fail {
                    error,
                    body,
                    failure,
                } => self.fail_run(run, &error, body.as_ref(), failure).await,
                RunEnd::Release => self.release_run(run).await,
            }
        })
    }

    /// Runs matching `filter`, newest first.
    fn list_runs<'a>(&'a self, filter: &'a RunFilter) -> StoreFuture<'a, Vec<RunSummary>>;

    /// One run with its event and steps.
    fn run_detail<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, Option<RunDetail>>;

    /// Enqueues a new run of a finished run's event (its steps start afresh); the new run
    /// records `replay_of`.
    fn replay<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, RunId>;

    /// Like [`Store::replay`], but the new run keeps the steps that succeeded and starts at
    /// the one that failed (as n8n retries a failed execution): for a dead run whose earlier
    /// steps created something, so that a replay does not create it again.
    fn resume<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, RunId>;

    /// Replays every dead run (of one flow, or all) not replayed yet.
    fn replay_dead<'a>(&'a self, flow_id: Option<&'a str>) -> StoreFuture<'a, Vec<RunId>>;

    /// Number of runs in each state (of one flow, or all).
    fn count_runs<'a>(&'a self, flow_id: Option<&'a str>) -> StoreFuture<'a, Vec<(RunState, u64)>>;

    /// Records poll items as seen without starting runs (a poll's first, baseline pass);
    /// returns how many were new.
    fn mark_seen<'a>(&'a self, flow_id: &'a str, item_keys: &'a [String]) -> StoreFuture<'a, u64>;

    /// A poll cursor.
    fn get_cursor<'a>(
        &'a self,
        flow_id: &'a str,
        location_id: &'a str,
    ) -> StoreFuture<'a, Option<Cursor>>;

    /// Saves a poll cursor.
    fn set_cursor<'a>(
        &'a self,
        flow_id: &'a str,
        location_id: &'a str,
        cursor: &'a Cursor,
    ) -> StoreFuture<'a, ()>;

    /// The security side of the store (vault, connections, users, audit log; see
    /// [`security`]), when the backend has one.
    fn security(&self) -> Option<std::sync::Arc<dyn security::SecurityStore>> {
        None
    }

    /// The backend's name (`sqlite`, `postgres`), for messages.
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    /// Notified when another process enqueued runs (PostgreSQL `LISTEN`), so idle workers
    /// claim at once instead of at their next idle poll. `None`: only this process's own
    /// enqueues wake its workers.
    fn wakeups(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// Takes the turn of periodic trigger `key` (a poll) for `holder` if it is due, making
    /// the next turn due `every` later: across every process sharing the store, exactly one
    /// caller gets each turn. The default (one process) always gives the turn: the caller's
    /// own schedule decides.
    fn take_trigger_turn<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        every: Duration,
    ) -> StoreFuture<'a, cluster::TriggerTurn> {
        let _ = (key, holder, every);
        Box::pin(async { Ok(cluster::TriggerTurn::Taken) })
    }

    /// Takes a slot of pacing key `key`'s shared rate budget for one request (`claim`
    /// identifies this holding), counting it against the day. The slot stays busy until
    /// [`Store::answer_rate_slot`] (then for one more window) or, if that never comes,
    /// for `budget.in_flight`. Backends without shared budgets answer
    /// [`StoreError::Conflict`].
    fn take_rate_slot<'a>(
        &'a self,
        key: &'a str,
        budget: &'a cluster::RateBudget,
        claim: &'a str,
    ) -> StoreFuture<'a, cluster::SlotTake> {
        let _ = (key, budget, claim);
        Box::pin(async move {
            Err(StoreError::Conflict(format!(
                "the {} store keeps no shared rate budgets",
                self.backend()
            )))
        })
    }

    /// The request holding `slot` (under `claim`) was answered now.
    fn answer_rate_slot<'a>(
        &'a self,
        key: &'a str,
        budget: &'a cluster::RateBudget,
        slot: u32,
        claim: &'a str,
        answer: cluster::SlotAnswer,
    ) -> StoreFuture<'a, ()> {
        let _ = (key, budget, slot, claim, answer);
        Box::pin(async move {
            Err(StoreError::Conflict(format!(
                "the {} store keeps no shared rate budgets",
                self.backend()
            )))
        })
    }
}

/// The default data directory: `$HLBRIDGE_DATA`, else `$XDG_DATA_HOME/hlbridge`, else
/// `~/.local/share/hlbridge`, else `./hlbridge-data`.
pub fn default_data_dir() -> PathBuf {
    data_dir_from(|k| std::env::var_os(k))
}

fn data_dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let non_empty = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = non_empty("HLBRIDGE_DATA") {
        return d;
    }
    if let Some(d) = non_empty("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
        return d.join("hlbridge");
    }
    if let Some(h) = non_empty("HOME") {
        return h.join(".local").join("share").join("hlbridge");
    }
    PathBuf::from("hlbridge-data")
}

/// The database file inside a data directory.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("hlbridge.db")
}

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub(crate) fn to_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_rule() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert_eq!(
            data_dir_from(env(&[("HLBRIDGE_DATA", "/d"), ("HOME", "/h")])),
            PathBuf::from("/d")
        );
        assert_eq!(
            data_dir_from(env(&[("XDG_DATA_HOME", "/x"), ("HOME", "/h")])),
            PathBuf::from("/x/hlbridge")
        );
        assert_eq!(
            data_dir_from(env(&[("XDG_DATA_HOME", "rel"), ("HOME", "/h")])),
            PathBuf::from("/h/.local/share/hlbridge")
        );
        assert_eq!(data_dir_from(env(&[])), PathBuf::from("hlbridge-data"));
        assert_eq!(
            database_path(Path::new("/d")),
            PathBuf::from("/d/hlbridge.db")
        );
    }

    #[test]
    fn states_round_trip() {
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>().ok(), Some(s));
        }
        assert!("bogus".parse::<RunState>().is_err());
    }
}
