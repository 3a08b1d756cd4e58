//! The SQLite store: WAL mode, `synchronous = NORMAL`, a busy timeout, one writer
//! connection (writes are serialised in-process; `BEGIN IMMEDIATE` serialises them across
//! processes) and a pool of readers.
//!
//! **Group commit.** The hot writes (event enqueues, step results, run completions,
//! failures and releases) are not each a transaction of their own: a caller queues its
//! write and the first caller to get the writer takes every write queued so far and commits
//! them together in one transaction (on a spawned task, so a caller that goes away cannot
//! cut a batch short). Nobody waits for a batch to fill: a write that arrives while the
//! writer is idle is committed at once, and writes that arrive during a commit form the
//! next batch. Each caller still gets its own answer only after its write is durable. If a
//! batch fails, its writes are retried one per transaction so each gets its own result.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr};
use tokio::sync::oneshot;

use super::{
    ClaimedRun, Cursor, EventRecord, Failure, NewEvent, RunDetail, RunEnd, RunFilter, RunId,
    RunState, RunSummary, StepRecord, Store, StoreError, StoreFuture, StoreResult, from_ms, now,
    to_ms,
};

/// The migrations, embedded (files in `crates/engine/migrations/sqlite/`).
fn migrator() -> Migrator {
    let m = |version: i64, description: &'static str, sql: &'static str| {
        Migration::new(
            version,
            Cow::Borrowed(description),
            MigrationType::Simple,
            AssertSqlSafe(sql).into_sql_str(),
            false,
        )
    };
    Migrator::with_migrations(vec![
        m(
            1,
            "init",
            include_str!("../../migrations/sqlite/0001_init.sql"),
        ),
        m(
            2,
            "runs lease index",
            include_str!("../../migrations/sqlite/0002_runs_lease.sql"),
        ),
        m(
            3,
            "security",
            include_str!("../../migrations/sqlite/0003_security.sql"),
        ),
        m(
            4,
            "cluster",
            include_str!("../../migrations/sqlite/0004_cluster.sql"),
        ),
        m(
            5,
            "runs taken over",
            include_str!("../../migrations/sqlite/0005_runs_taken_over.sql"),
        ),
    ])
}

/// The SQLite [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    group: Arc<GroupCommit>,
}

/// Writes waiting for the next group commit, and the lock whose holder commits them.
#[derive(Default)]
struct GroupCommit {
    queue: Mutex<Vec<Job>>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("queued", &self.queue().len())
            .finish()
    }
}

impl GroupCommit {
    fn queue(&self) -> MutexGuard<'_, Vec<Job>> {
        // The queue is only pushed to and taken from; a panic cannot leave it half-changed.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One queued write, its result once applied, and where to send it after the commit.
enum Job {
    Enqueue {
        events: Vec<NewEvent>,
        out: Vec<Option<RunId>>,
        reply: oneshot::Sender<StoreResult<Vec<Option<RunId>>>>,
    },
    Finish {
        finish: Finish,
        out: bool,
        reply: oneshot::Sender<StoreResult<bool>>,
    },
}

/// Step results to save and, optionally, how the run ends (under its lease token).
struct Finish {
    run_id: RunId,
    lease_token: String,
    steps: Vec<StepRecord>,
    end: Option<RunEnd>,
}

impl Job {
    async fn apply(&mut self, conn: &mut SqliteConnection) -> StoreResult<()> {
        match self {
            Job::Enqueue { events, out, .. } => *out = enqueue_in(conn, events).await?,
            Job::Finish { finish, out, .. } => *out = finish_in(conn, finish).await?,
        }
        Ok(())
    }

    fn succeed(self) {
        // The caller may have gone away; its write is committed either way.
        match self {
            Job::Enqueue { out, reply, .. } => drop(reply.send(Ok(out))),
            Job::Finish { out, reply, .. } => drop(reply.send(Ok(out))),
        }
    }

    fn fail(self, e: StoreError) {
        match self {
            Job::Enqueue { reply, .. } => drop(reply.send(Err(e))),
            Job::Finish { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// The error of a write whose batch was abandoned (the runtime is shutting down).
fn writer_gone() -> StoreError {
    StoreError::Database(sqlx::Error::WorkerCrashed)
}

async fn enqueue_in(
    conn: &mut SqliteConnection,
    events: &[NewEvent],
) -> StoreResult<Vec<Option<RunId>>> {
    let at = to_ms(now());
    let mut out = Vec::with_capacity(events.len());
    for ev in events {
        if let Some(seen) = &ev.seen_key {
            let fresh = sqlx::query(
                "INSERT INTO seen_items (flow_id, item_key, seen_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (flow_id, item_key) DO NOTHING",
            )
            .bind(&ev.flow_id)
            .bind(seen)
            .bind(at)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if fresh == 0 {
                out.push(None);
                continue;
            }
        }
        let event_id = uuid::Uuid::now_v7().to_string();
        let inserted = sqlx::query(
            "INSERT INTO events (id, flow_id, dedupe_key, payload, received_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (dedupe_key) DO NOTHING",
        )
        .bind(&event_id)
        .bind(&ev.flow_id)
        .bind(&ev.dedupe_key)
        .bind(json_text(&ev.payload))
        .bind(at)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 0 {
            out.push(None);
            continue;
        }
        let run_id = RunId::now_v7();
        sqlx::query(
            "INSERT INTO runs (id, flow_id, event_id, state, attempts, next_attempt_at, created_at, updated_at) \
             VALUES ($1, $2, $3, 'queued', 0, $4, $4, $4)",
        )
        .bind(run_id.to_string())
        .bind(&ev.flow_id)
        .bind(&event_id)
        .bind(at)
        .execute(&mut *conn)
        .await?;
        out.push(Some(run_id));
    }
    Ok(out)
}

async fn save_step_in(
    conn: &mut SqliteConnection,
    run_id: RunId,
    record: &StepRecord,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO step_results (run_id, step_id, position, input, output, error, started_at, finished_at) \
         VALUES ($1, $2, (SELECT COUNT(*) FROM step_results WHERE run_id = $1), $3, $4, $5, $6, $7) \
         ON CONFLICT (run_id, step_id) DO UPDATE SET input = excluded.input, output = excluded.output, \
         error = excluded.error, started_at = excluded.started_at, finished_at = excluded.finished_at",
    )
    .bind(run_id.to_string())
    .bind(&record.step_id)
    .bind(record.input.as_ref().map(json_text))
    .bind(record.output.as_ref().map(json_text))
    .bind(record.error.as_ref().map(json_text))
    .bind(to_ms(record.started_at))
    .bind(record.finished_at.map(to_ms))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn finish_in(conn: &mut SqliteConnection, f: &Finish) -> StoreResult<bool> {
    for step in &f.steps {
        save_step_in(conn, f.run_id, step).await?;
    }
    let Some(end) = &f.end else {
        return Ok(true);
    };
    let at = to_ms(now());
    let id = f.run_id.to_string();
    let n = match end {
        RunEnd::Complete(state) => {
            sqlx::query(
                "UPDATE runs SET state = $1, lease_until = NULL, lease_token = NULL, last_error = NULL, \
                 finished_at = $2, updated_at = $2 WHERE id = $3 AND lease_token = $4 AND state = 'running'",
            )
            .bind(state.as_str())
            .bind(at)
            .bind(&id)
            .bind(&f.lease_token)
            .execute(&mut *conn)
            .await?
        }
        RunEnd::Fail {
            error,
            body,
            failure,
        } => {
            let (state, next, finished) = match failure {
                Failure::RetryAt(t) => (RunState::Failed, to_ms(*t), None),
                Failure::Dead => (RunState::Dead, at, Some(at)),
            };
            sqlx::query(
                "UPDATE runs SET state = $1, next_attempt_at = $2, finished_at = $3, last_error = $4, error_body = $5, \
                 lease_until = NULL, lease_token = NULL, updated_at = $6 \
                 WHERE id = $7 AND lease_token = $8 AND state = 'running'",
            )
            .bind(state.as_str())
            .bind(next)
            .bind(finished)
            .bind(error)
            .bind(body.as_ref().map(json_text))
            .bind(at)
            .bind(&id)
            .bind(&f.lease_token)
            .execute(&mut *conn)
            .await?
        }
        RunEnd::Release => {
            sqlx::query(
                "UPDATE runs SET state = 'queued', lease_until = NULL, lease_token = NULL, \
                 attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, next_attempt_at = $1, updated_at = $1 \
                 WHERE id = $2 AND lease_token = $3 AND state = 'running'",
            )
            .bind(at)
            .bind(&id)
            .bind(&f.lease_token)
            .execute(&mut *conn)
            .await?
        }
    };
    Ok(n.rows_affected() == 1)
}

/// Fills in the saved step results of the runs just claimed under `token`.
async fn attach_steps(
    conn: &mut SqliteConnection,
    token: &str,
    runs: &mut [ClaimedRun],
) -> StoreResult<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query(
        "SELECT s.run_id, s.step_id, s.input, s.output, s.error, s.started_at, s.finished_at \
         FROM step_results s JOIN runs r ON r.id = s.run_id WHERE r.lease_token = $1 \
         ORDER BY s.run_id, s.position, s.started_at",
    )
    .bind(token)
    .fetch_all(&mut *conn)
    .await?;
    for row in &rows {
        let run_id = parse_id(&row.try_get::<String, _>("run_id")?)?;
        if let Some(run) = runs.iter_mut().find(|r| r.id == run_id) {
            run.steps.push(step_record(row)?);
        }
    }
    Ok(())
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

fn json_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn parse_json(s: Option<String>) -> StoreResult<Option<Value>> {
    s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

fn parse_id(s: &str) -> StoreResult<RunId> {
    RunId::parse_str(s).map_err(|e| StoreError::Corrupt(format!("run id {s:?}: {e}")))
}

const SUMMARY_COLUMNS: &str = "id, flow_id, event_id, state, attempts, next_attempt_at, worker_id, last_error, replay_of, created_at, updated_at, started_at, finished_at";

fn summary(row: &SqliteRow) -> StoreResult<RunSummary> {
    let state: String = row.try_get("state")?;
    let state = RunState::from_str(&state)?;
    let next: Option<i64> = row.try_get("next_attempt_at")?;
    let id: String = row.try_get("id")?;
    let replay_of: Option<String> = row.try_get("replay_of")?;
    Ok(RunSummary {
        id: parse_id(&id)?,
        flow_id: row.try_get("flow_id")?,
        event_id: row.try_get("event_id")?,
        state,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
        next_attempt_at: next
            .filter(|_| matches!(state, RunState::Queued | RunState::Failed))
            .map(from_ms),
        worker_id: row.try_get("worker_id")?,
        last_error: row.try_get("last_error")?,
        replay_of: replay_of.as_deref().map(parse_id).transpose()?,
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
        started_at: row.try_get::<Option<i64>, _>("started_at")?.map(from_ms),
        finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(from_ms),
    })
}

fn claimed(row: &SqliteRow) -> StoreResult<ClaimedRun> {
    let id: String = row.try_get("id")?;
    let payload: String = row.try_get("payload")?;
    let replay_of: Option<String> = row.try_get("replay_of")?;
    Ok(ClaimedRun {
        id: parse_id(&id)?,
        flow_id: row.try_get("flow_id")?,
        event_id: row.try_get("event_id")?,
        dedupe_key: row.try_get("dedupe_key")?,
        payload: serde_json::from_str(&payload).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        received_at: from_ms(row.try_get("received_at")?),
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
        lease_token: row.try_get("lease_token")?,
        replay_of: replay_of.as_deref().map(parse_id).transpose()?,
        taken_over: row.try_get::<i64, _>("taken_over")? != 0,
        steps: Vec::new(),
    })
}

fn step_record(row: &SqliteRow) -> StoreResult<StepRecord> {
    Ok(StepRecord {
        step_id: row.try_get("step_id")?,
        input: parse_json(row.try_get("input")?)?,
        output: parse_json(row.try_get("output")?)?,
        error: parse_json(row.try_get("error")?)?,
        started_at: from_ms(row.try_get("started_at")?),
        finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(from_ms),
    })
}

const CLAIMED_SELECT: &str = "SELECT r.id, r.flow_id, r.event_id, r.attempts, r.lease_token, r.replay_of, r.taken_over, \
     e.dedupe_key, e.payload, e.received_at FROM runs r JOIN events e ON e.id = r.event_id \
     WHERE r.lease_token = $1 ORDER BY r.next_attempt_at, r.id";

/// Creates `dir` (and missing parents) with mode 0700; an existing directory is left as it
/// is, with a warning when others can read it.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        } else if std::fs::metadata(dir)?.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                "the data directory can be read by other users; `chmod 700` it"
            );
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Creates the database file with mode 0600 if missing, and takes group and other access
/// away from it and its `-wal`/`-shm` files if an earlier version left them readable.
fn private_files(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        for suffix in ["", "-wal", "-shm"] {
            let Some(name) = &name else { break };
            let file = path.with_file_name(format!("{name}{suffix}"));
            if let Ok(meta) = std::fs::metadata(&file)
                && meta.permissions().mode() & 0o077 != 0
            {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database `hlbridge.db` in `data_dir` and migrates it.
    /// A new data directory is made private to its owner (0700).
    pub async fn open(data_dir: &Path) -> StoreResult<Self> {
        private_dir(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        Self::open_file(&super::database_path(data_dir)).await
    }

    /// Opens (creating if needed) the database file `path` and migrates it. The file (and so
    /// its `-wal` and `-shm` files, which SQLite creates with the database's mode) is readable
    /// by its owner only: it holds run history with customer data, and sealed secrets.
    pub async fn open_file(path: &Path) -> StoreResult<Self> {
        private_files(path).map_err(|source| StoreError::DataDir {
            path: path.to_path_buf(),
            source,
        })?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone())
            .await?;
        migrator().run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self {
            writer,
            reader,
            group: Arc::default(),
        })
    }

    /// The writer pool (one connection), for the store's other sections.
    pub(crate) fn writer_pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// The reader pool, for the store's other sections.
    pub(crate) fn reader_pool(&self) -> &SqlitePool {
        &self.reader
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    /// Queues `job` for the next group commit and waits for its result (see the module
    /// docs).
    async fn submit<T>(
        &self,
        job: Job,
        mut rx: oneshot::Receiver<StoreResult<T>>,
    ) -> StoreResult<T> {
        self.group.queue().push(job);
        tokio::select! {
            biased;
            r = &mut rx => return r.unwrap_or_else(|_| Err(writer_gone())),
            guard = self.group.lock.clone().lock_owned() => {
                let jobs = std::mem::take(&mut *self.group.queue());
                // Empty: an earlier batch took this job and is done with it.
                if !jobs.is_empty() {
                    let store = self.clone();
                    tokio::spawn(async move {
                        store.write_jobs(jobs).await;
                        drop(guard);
                    });
                }
            }
        }
        rx.await.unwrap_or_else(|_| Err(writer_gone()))
    }

    /// Commits `jobs` in one transaction, or one by one if that fails; answers each.
    async fn write_jobs(&self, mut jobs: Vec<Job>) {
        if jobs.len() > 1 {
            match self.write_batch(&mut jobs).await {
                Ok(()) => {
                    jobs.into_iter().for_each(Job::succeed);
                    return;
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    writes = jobs.len(),
                    "a group commit failed; retrying its writes one by one"
                ),
            }
        }
        for mut job in jobs {
            match self.write_batch(std::slice::from_mut(&mut job)).await {
                Ok(()) => job.succeed(),
                Err(e) => job.fail(e),
            }
        }
    }

    async fn write_batch(&self, jobs: &mut [Job]) -> StoreResult<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for job in jobs.iter_mut() {
            job.apply(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn finish(&self, finish: Finish) -> StoreResult<bool> {
        let (reply, rx) = oneshot::channel();
        self.submit(
            Job::Finish {
                finish,
                out: false,
                reply,
            },
            rx,
        )
        .await
    }

    async fn claim(
        &self,
        worker_id: &str,
        n: u32,
        lease: Duration,
    ) -> StoreResult<Vec<ClaimedRun>> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let at = to_ms(now());
        let token = uuid::Uuid::new_v4().to_string();
        let claimed_n = sqlx::query(
            "UPDATE runs SET state = 'running', worker_id = $1, lease_token = $2, lease_until = $3, \
             attempts = attempts + 1, started_at = COALESCE(started_at, $4), updated_at = $4, \
             taken_over = CASE WHEN state = 'running' THEN 1 ELSE 0 END \
             WHERE id IN (SELECT id FROM runs \
                 WHERE (state IN ('queued', 'failed') AND next_attempt_at <= $4) \
                    OR (state = 'running' AND lease_until < $4) \
                 ORDER BY next_attempt_at, id LIMIT $5)",
        )
        .bind(worker_id)
        .bind(&token)
        .bind(at + lease_ms(lease))
        .bind(at)
        .bind(i64::from(n))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let mut runs = if claimed_n == 0 {
            Vec::new()
        } else {
            sqlx::query(CLAIMED_SELECT)
                .bind(&token)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(claimed)
                .collect::<StoreResult<Vec<_>>>()?
        };
        attach_steps(&mut tx, &token, &mut runs).await?;
        tx.commit().await?;
        Ok(runs)
    }

    async fn claim_one(
        &self,
        run_id: RunId,
        worker_id: &str,
        lease: Duration,
    ) -> StoreResult<Option<ClaimedRun>> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let at = to_ms(now());
        let token = uuid::Uuid::new_v4().to_string();
        let n = sqlx::query(
            "UPDATE runs SET state = 'running', worker_id = $1, lease_token = $2, lease_until = $3, \
             attempts = attempts + 1, started_at = COALESCE(started_at, $4), updated_at = $4, \
             taken_over = CASE WHEN state = 'running' THEN 1 ELSE 0 END \
             WHERE id = $5 AND (state IN ('queued', 'failed') OR (state = 'running' AND lease_until < $4))",
        )
        .bind(worker_id)
        .bind(&token)
        .bind(at + lease_ms(lease))
        .bind(at)
        .bind(run_id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let mut run: Vec<ClaimedRun> = if n == 0 {
            Vec::new()
        } else {
            sqlx::query(CLAIMED_SELECT)
                .bind(&token)
                .fetch_optional(&mut *tx)
                .await?
                .as_ref()
                .map(claimed)
                .transpose()?
                .into_iter()
                .collect()
        };
        attach_steps(&mut tx, &token, &mut run).await?;
        tx.commit().await?;
        Ok(run.pop())
    }

    async fn replay_in(&self, run_id: RunId, resume: bool) -> StoreResult<RunId> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query("SELECT flow_id, event_id, state FROM runs WHERE id = $1")
            .bind(run_id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("run {run_id}")))?;
        let state = RunState::from_str(&row.try_get::<String, _>("state")?)?;
        if !state.is_final() {
            return Err(StoreError::Conflict(format!(
                "run {run_id} is {state}; only succeeded, skipped or dead runs can be replayed"
            )));
        }
        let new_id = RunId::now_v7();
        let at = to_ms(now());
        sqlx::query(
            "INSERT INTO runs (id, flow_id, event_id, state, attempts, next_attempt_at, replay_of, created_at, updated_at) \
             VALUES ($1, $2, $3, 'queued', 0, $4, $5, $4, $4)",
        )
        .bind(new_id.to_string())
        .bind(row.try_get::<String, _>("flow_id")?)
        .bind(row.try_get::<String, _>("event_id")?)
        .bind(at)
        .bind(run_id.to_string())
        .execute(&mut *tx)
        .await?;
        if resume {
            // The steps that succeeded are the new run's too: it starts at the failed one.
            sqlx::query(super::shared_sql::COPY_SUCCEEDED_STEPS)
                .bind(new_id.to_string())
                .bind(run_id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(new_id)
    }

    async fn detail(&self, run_id: RunId) -> StoreResult<Option<RunDetail>> {
        let sql = format!("SELECT {SUMMARY_COLUMNS}, error_body FROM runs WHERE id = $1");
        let Some(row) = sqlx::query(AssertSqlSafe(sql))
            .bind(run_id.to_string())
            .fetch_optional(&self.reader)
            .await?
        else {
            return Ok(None);
        };
        let run = summary(&row)?;
        let error_body = parse_json(row.try_get("error_body")?)?;
        let ev = sqlx::query(
            "SELECT id, flow_id, dedupe_key, payload, received_at FROM events WHERE id = $1",
        )
        .bind(&run.event_id)
        .fetch_one(&self.reader)
        .await?;
        let event = EventRecord {
            id: ev.try_get("id")?,
            flow_id: ev.try_get("flow_id")?,
            dedupe_key: ev.try_get("dedupe_key")?,
            payload: parse_json(Some(ev.try_get("payload")?))?.unwrap_or(Value::Null),
            received_at: from_ms(ev.try_get("received_at")?),
        };
        let steps = self.steps_of(run_id, &self.reader).await?;
        Ok(Some(RunDetail {
            run,
            event,
            steps,
            error_body,
        }))
    }

    async fn steps_of(&self, run_id: RunId, pool: &SqlitePool) -> StoreResult<Vec<StepRecord>> {
        sqlx::query(
            "SELECT step_id, input, output, error, started_at, finished_at FROM step_results \
             WHERE run_id = $1 ORDER BY position, started_at",
        )
        .bind(run_id.to_string())
        .fetch_all(pool)
        .await?
        .iter()
        .map(step_record)
        .collect()
    }
}

impl Store for SqliteStore {
    fn security(&self) -> Option<Arc<dyn super::security::SecurityStore>> {
        Some(Arc::new(self.clone()))
    }

    fn upsert_flow<'a>(
        &'a self,
        id: &'a str,
        name: Option<&'a str>,
        definition: &'a Value,
        enabled: bool,
    ) -> StoreFuture<'a, Option<super::PreviousFlow>> {
        Box::pin(async move {
            let mut tx = self.writer.begin().await?;
            let before: Option<(String, i64)> =
                sqlx::query_as("SELECT definition, enabled FROM flows WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            sqlx::query(super::shared_sql::UPSERT_FLOW)
                .bind(id)
                .bind(name)
                .bind(json_text(definition))
                .bind(i64::from(enabled))
                .bind(to_ms(now()))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(match before {
                Some((text, enabled)) => Some(super::PreviousFlow {
                    definition: parse_json(Some(text))?.unwrap_or(Value::Null),
                    enabled: enabled != 0,
                }),
                None => None,
            })
        })
    }

    fn enqueue_events<'a>(&'a self, events: Vec<NewEvent>) -> StoreFuture<'a, Vec<Option<RunId>>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(Vec::new());
            }
            let (reply, rx) = oneshot::channel();
            let job = Job::Enqueue {
                events,
                out: Vec::new(),
                reply,
            };
            self.submit(job, rx).await
        })
    }

    fn claim_runs<'a>(
        &'a self,
        worker_id: &'a str,
        n: u32,
        lease: Duration,
    ) -> StoreFuture<'a, Vec<ClaimedRun>> {
        Box::pin(self.claim(worker_id, n, lease))
    }

    fn claim_run<'a>(
        &'a self,
        run_id: RunId,
        worker_id: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, Option<ClaimedRun>> {
        Box::pin(self.claim_one(run_id, worker_id, lease))
    }

    fn renew_lease<'a>(&'a self, run: &'a ClaimedRun, lease: Duration) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let at = to_ms(now());
            let n = sqlx::query(
                "UPDATE runs SET lease_until = $1, updated_at = $2 WHERE id = $3 AND lease_token = $4 AND state = 'running'",
            )
            .bind(at + lease_ms(lease))
            .bind(at)
            .bind(run.id.to_string())
            .bind(&run.lease_token)
            .execute(&self.writer)
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    fn release_run<'a>(&'a self, run: &'a ClaimedRun) -> StoreFuture<'a, bool> {
        self.finish_run(run, &[], RunEnd::Release)
    }

    fn step_results<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, Vec<StepRecord>> {
        // Read through the writer so a worker sees its own latest writes.
        Box::pin(async move { self.steps_of(run_id, &self.writer).await })
    }

    fn save_step_result<'a>(
        &'a self,
        run_id: RunId,
        record: &'a StepRecord,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.finish(Finish {
                run_id,
                lease_token: String::new(),
                steps: vec![record.clone()],
                end: None,
            })
            .await?;
            Ok(())
        })
    }

    fn complete_run<'a>(&'a self, run: &'a ClaimedRun, state: RunState) -> StoreFuture<'a, bool> {
        self.finish_run(run, &[], RunEnd::Complete(state))
    }

    fn fail_run<'a>(
        &'a self,
        run: &'a ClaimedRun,
        error: &'a str,
        body: Option<&'a Value>,
        failure: Failure,
    ) -> StoreFuture<'a, bool> {
        self.finish_run(
            run,
            &[],
            RunEnd::Fail {
                error: error.to_owned(),
                body: body.cloned(),
                failure,
            },
        )
    }

    fn finish_run<'a>(
        &'a self,
        run: &'a ClaimedRun,
        steps: &'a [StepRecord],
        end: RunEnd,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            if let RunEnd::Complete(state) = end
                && !matches!(state, RunState::Succeeded | RunState::Skipped)
            {
                return Err(StoreError::Conflict(format!(
                    "complete_run with state {state}"
                )));
            }
            self.finish(Finish {
                run_id: run.id,
                lease_token: run.lease_token.clone(),
                steps: steps.to_vec(),
                end: Some(end),
            })
            .await
        })
    }

    fn list_runs<'a>(&'a self, filter: &'a RunFilter) -> StoreFuture<'a, Vec<RunSummary>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM runs WHERE ($1 IS NULL OR flow_id = $1) AND ($2 IS NULL OR state = $2) \
                 ORDER BY created_at DESC, id DESC LIMIT $3"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(filter.flow_id.as_deref())
                .bind(filter.state.map(RunState::as_str))
                .bind(i64::from(filter.limit))
                .fetch_all(&self.reader)
                .await?
                .iter()
                .map(summary)
                .collect()
        })
    }

    fn run_detail<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, Option<RunDetail>> {
        Box::pin(self.detail(run_id))
    }

    fn replay<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, RunId> {
        Box::pin(self.replay_in(run_id, false))
    }

    fn resume<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, RunId> {
        Box::pin(self.replay_in(run_id, true))
    }

    fn replay_dead<'a>(&'a self, flow_id: Option<&'a str>) -> StoreFuture<'a, Vec<RunId>> {
        Box::pin(async move {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT r.id FROM runs r WHERE r.state = 'dead' AND ($1 IS NULL OR r.flow_id = $1) \
                 AND NOT EXISTS (SELECT 1 FROM runs x WHERE x.replay_of = r.id) ORDER BY r.created_at",
            )
            .bind(flow_id)
            .fetch_all(&self.writer)
            .await?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(self.replay_in(parse_id(&id)?, false).await?);
            }
            Ok(out)
        })
    }

    fn count_runs<'a>(&'a self, flow_id: Option<&'a str>) -> StoreFuture<'a, Vec<(RunState, u64)>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT state, COUNT(*) AS n FROM runs WHERE ($1 IS NULL OR flow_id = $1) GROUP BY state ORDER BY state",
            )
            .bind(flow_id)
            .fetch_all(&self.reader)
            .await?;
            rows.iter()
                .map(|r| {
                    let state = RunState::from_str(&r.try_get::<String, _>("state")?)?;
                    Ok((state, u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0)))
                })
                .collect()
        })
    }

    fn mark_seen<'a>(&'a self, flow_id: &'a str, item_keys: &'a [String]) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
            let at = to_ms(now());
            let mut fresh = 0;
            for key in item_keys {
                fresh += sqlx::query(
                    "INSERT INTO seen_items (flow_id, item_key, seen_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (flow_id, item_key) DO NOTHING",
                )
                .bind(flow_id)
                .bind(key)
                .bind(at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await?;
            Ok(fresh)
        })
    }

    fn get_cursor<'a>(
        &'a self,
        flow_id: &'a str,
        location_id: &'a str,
    ) -> StoreFuture<'a, Option<Cursor>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT cursor, watermark FROM cursors WHERE flow_id = $1 AND location_id = $2",
            )
            .bind(flow_id)
            .bind(location_id)
            .fetch_optional(&self.writer)
            .await?;
            row.map(|r| {
                Ok(Cursor {
                    cursor: parse_json(r.try_get("cursor")?)?,
                    watermark: r.try_get("watermark")?,
                })
            })
            .transpose()
        })
    }

    fn set_cursor<'a>(
        &'a self,
        flow_id: &'a str,
        location_id: &'a str,
        cursor: &'a Cursor,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO cursors (flow_id, location_id, cursor, watermark, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (flow_id, location_id) DO UPDATE SET cursor = excluded.cursor, \
                 watermark = excluded.watermark, updated_at = excluded.updated_at",
            )
            .bind(flow_id)
            .bind(location_id)
            .bind(cursor.cursor.as_ref().map(json_text))
            .bind(cursor.watermark.as_deref())
            .bind(to_ms(now()))
            .execute(&self.writer)
            .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn temp_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("hlbridge-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    fn ev(key: &str) -> NewEvent {
        NewEvent {
            flow_id: "f".into(),
            dedupe_key: key.into(),
            payload: json!({"k": key}),
            seen_key: None,
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_data_directory_and_database_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let parent = temp_dir("perms");
        let dir = parent.join("data");
        let store = SqliteStore::open(&dir).await.expect("open");
        store
            .upsert_flow("f", None, &json!({"id": "f"}), true)
            .await
            .expect("write");
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        assert_eq!(mode(&dir), 0o700);
        let db = crate::store::database_path(&dir);
        for f in [
            db.clone(),
            dir.join("hlbridge.db-wal"),
            dir.join("hlbridge.db-shm"),
        ] {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
        store.close().await;
        // A file an earlier version left world-readable is tightened on open.
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let store = SqliteStore::open(&dir).await.expect("reopen");
        assert_eq!(mode(&db), 0o600);
        store.close().await;
        let _ = std::fs::remove_dir_all(parent);
    }

    #[tokio::test]
    async fn enqueue_dedupes_and_claims_with_leases() {
        let dir = temp_dir("store");
        let store = SqliteStore::open(&dir).await.expect("open");
        let a = store.enqueue_event(ev("a")).await.expect("enqueue");
        assert!(a.is_some());
        assert_eq!(store.enqueue_event(ev("a")).await.expect("dup"), None);
        let batch = store
            .enqueue_events(vec![ev("b"), ev("b"), ev("c")])
            .await
            .expect("batch");
        assert!(batch[0].is_some() && batch[1].is_none() && batch[2].is_some());

        let claimed = store
            .claim_runs("w1", 10, Duration::from_secs(30))
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 3);
        assert_eq!(claimed[0].payload, json!({"k": "a"}));
        assert_eq!(claimed[0].attempts, 1);
        assert!(
            store
                .claim_runs("w2", 10, Duration::from_secs(30))
                .await
                .expect("claim")
                .is_empty()
        );

        // A lapsed lease is claimed again; the old claim can no longer finish the run.
        let short = store
            .claim_runs("w1", 1, Duration::ZERO)
            .await
            .expect("none");
        assert!(short.is_empty());
        let run = &claimed[0];
        assert!(store.renew_lease(run, Duration::ZERO).await.expect("renew"));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let again = store
            .claim_runs("w2", 10, Duration::from_secs(30))
            .await
            .expect("reclaim");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, run.id);
        assert_eq!(again[0].attempts, 2);
        assert!(
            !store
                .complete_run(run, RunState::Succeeded)
                .await
                .expect("stale")
        );
        assert!(
            store
                .complete_run(&again[0], RunState::Succeeded)
                .await
                .expect("done")
        );

        // Release: back to queued, attempt not counted.
        assert!(store.release_run(&claimed[1]).await.expect("release"));
        let back = store
            .claim_run(claimed[1].id, "w3", Duration::from_secs(30))
            .await
            .expect("claim one");
        assert_eq!(back.map(|r| r.attempts), Some(1));
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn steps_failures_dead_letters_and_replay() {
        let dir = temp_dir("store2");
        let store = SqliteStore::open(&dir).await.expect("open");
        let id = store
            .enqueue_event(ev("x"))
            .await
            .expect("enqueue")
            .expect("new");
        let run = store
            .claim_run(id, "w", Duration::from_secs(30))
            .await
            .expect("claim")
            .expect("claimed");
        let rec = StepRecord {
            step_id: "s1".into(),
            input: Some(json!({"a": 1})),
            output: Some(json!({"ok": true})),
            error: None,
            started_at: now(),
            finished_at: Some(now()),
        };
        store.save_step_result(id, &rec).await.expect("save");
        store
            .save_step_result(id, &rec)
            .await
            .expect("save again (idempotent)");
        let steps = store.step_results(id).await.expect("steps");
        assert_eq!(steps.len(), 1);
        assert!(steps[0].succeeded());

        // Retry later: not claimable before its time.
        let later = now() + time::Duration::hours(1);
        assert!(
            store
                .fail_run(&run, "boom", None, Failure::RetryAt(later))
                .await
                .expect("fail")
        );
        assert!(
            store
                .claim_runs("w", 10, Duration::from_secs(30))
                .await
                .expect("claim")
                .is_empty()
        );
        let listed = store
            .list_runs(&RunFilter {
                state: Some(RunState::Failed),
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].last_error.as_deref(), Some("boom"));

        // Dead letter with the body, then replay.
        let run = store
            .claim_run(id, "w", Duration::from_secs(30))
            .await
            .expect("claim")
            .expect("claimed");
        assert_eq!(run.attempts, 2);
        let body = json!({"message": "Contact not found"});
        assert!(
            store
                .fail_run(&run, "404", Some(&body), Failure::Dead)
                .await
                .expect("dead")
        );
        let detail = store.run_detail(id).await.expect("detail").expect("exists");
        assert_eq!(detail.run.state, RunState::Dead);
        assert_eq!(detail.error_body, Some(body));
        assert_eq!(detail.event.payload, json!({"k": "x"}));
        assert_eq!(detail.steps.len(), 1);

        let replays = store.replay_dead(Some("f")).await.expect("replay");
        assert_eq!(replays.len(), 1);
        assert!(
            store.replay_dead(None).await.expect("again").is_empty(),
            "replayed only once"
        );
        let new = store
            .run_detail(replays[0])
            .await
            .expect("detail")
            .expect("exists");
        assert_eq!(new.run.replay_of, Some(id));
        assert_eq!(new.run.state, RunState::Queued);
        assert!(new.steps.is_empty());
        assert!(matches!(
            store.replay(replays[0]).await,
            Err(StoreError::Conflict(_))
        ));
        let counts = store.count_runs(None).await.expect("counts");
        assert_eq!(counts, vec![(RunState::Dead, 1), (RunState::Queued, 1)]);
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    fn step(id: &str) -> StepRecord {
        StepRecord {
            step_id: id.into(),
            input: Some(json!({"in": id})),
            output: Some(json!({"out": id})),
            error: None,
            started_at: now(),
            finished_at: Some(now()),
        }
    }

    /// Holds the group-commit lock: writes queue up behind it and are all committed by the
    /// one batch that runs once it is let go.
    async fn hold_writer(store: &SqliteStore) -> tokio::sync::OwnedMutexGuard<()> {
        store.group.lock.clone().lock_owned().await
    }

    async fn wait_queued(store: &SqliteStore, n: usize) {
        for _ in 0..5_000 {
            if store.group.queue().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("only {} writes queued", store.group.queue().len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_batch_commits_many_writes_each_with_its_own_answer() {
        let dir = temp_dir("group");
        let store = SqliteStore::open(&dir).await.expect("open");

        // 40 enqueues of 20 keys, all in one batch: duplicates inside the batch are no-ops.
        let guard = hold_writer(&store).await;
        let enqueues: Vec<_> = (0..40)
            .map(|i| {
                let s = store.clone();
                tokio::spawn(async move { s.enqueue_event(ev(&format!("k{}", i % 20))).await })
            })
            .collect();
        wait_queued(&store, 40).await;
        drop(guard);
        let mut fresh = 0;
        for h in enqueues {
            if h.await.expect("join").expect("enqueue").is_some() {
                fresh += 1;
            }
        }
        assert_eq!(fresh, 20);

        // 20 finishes (a step and the end each) and one write that cannot succeed (a step
        // of a run that does not exist breaks the foreign key), all in one batch: the batch
        // fails, its writes are retried one by one, and only the bad one fails.
        let claimed = store
            .claim_runs("w", 100, Duration::from_secs(30))
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 20);
        assert!(claimed.iter().all(|r| r.steps.is_empty()));
        let guard = hold_writer(&store).await;
        let bad = {
            let s = store.clone();
            tokio::spawn(async move { s.save_step_result(RunId::now_v7(), &step("x")).await })
        };
        let finishes: Vec<_> = claimed
            .iter()
            .cloned()
            .map(|run| {
                let s = store.clone();
                tokio::spawn(async move {
                    s.finish_run(&run, &[step("a")], RunEnd::Complete(RunState::Succeeded))
                        .await
                })
            })
            .collect();
        wait_queued(&store, 21).await;
        drop(guard);
        assert!(
            bad.await.expect("join").is_err(),
            "the bad write fails alone"
        );
        for h in finishes {
            assert!(h.await.expect("join").expect("finish"), "claim held");
        }
        assert_eq!(
            store.count_runs(None).await.expect("count"),
            vec![(RunState::Succeeded, 20)]
        );
        let d = store
            .run_detail(claimed[0].id)
            .await
            .expect("detail")
            .expect("exists");
        assert_eq!(d.steps.len(), 1);
        assert_eq!(d.steps[0].output, Some(json!({"out": "a"})));

        // A lost claim: the end is refused, the steps are saved as save_step_result does.
        assert!(
            !store
                .finish_run(&claimed[0], &[step("b")], RunEnd::Release)
                .await
                .expect("finish")
        );
        assert_eq!(
            store
                .step_results(claimed[0].id)
                .await
                .expect("steps")
                .len(),
            2
        );
        assert!(matches!(
            store
                .finish_run(&claimed[1], &[], RunEnd::Complete(RunState::Dead))
                .await,
            Err(StoreError::Conflict(_))
        ));
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_claimed_run_comes_with_its_saved_steps_in_order() {
        let dir = temp_dir("resume");
        let store = SqliteStore::open(&dir).await.expect("open");
        let id = store
            .enqueue_event(ev("r"))
            .await
            .expect("enqueue")
            .expect("new");
        store.enqueue_event(ev("other")).await.expect("enqueue");
        let run = store
            .claim_run(id, "w", Duration::from_secs(30))
            .await
            .expect("claim")
            .expect("claimed");
        assert!(run.steps.is_empty());
        store
            .save_step_result(id, &step("one"))
            .await
            .expect("save");
        let mut failed = step("two");
        failed.output = None;
        failed.error = Some(json!({"message": "503"}));
        let later = now() - time::Duration::seconds(1);
        assert!(
            store
                .finish_run(
                    &run,
                    &[failed],
                    RunEnd::Fail {
                        error: "503".into(),
                        body: None,
                        failure: Failure::RetryAt(later),
                    },
                )
                .await
                .expect("fail")
        );
        let claimed = store
            .claim_runs("w", 10, Duration::from_secs(30))
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 2);
        let again = claimed.iter().find(|r| r.id == id).expect("the run again");
        let ids: Vec<&str> = again.steps.iter().map(|s| s.step_id.as_str()).collect();
        assert_eq!(ids, ["one", "two"]);
        assert!(again.steps[0].succeeded() && !again.steps[1].succeeded());
        assert_eq!(again.attempts, 2);
        let other = claimed.iter().find(|r| r.id != id).expect("the other run");
        assert!(other.steps.is_empty());
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn seen_items_and_cursors() {
        let dir = temp_dir("store3");
        let store = SqliteStore::open(&dir).await.expect("open");
        let mut e = ev("poll:f:1");
        e.seen_key = Some("1".into());
        assert!(
            store
                .enqueue_event(e.clone())
                .await
                .expect("first")
                .is_some()
        );
        e.dedupe_key = "poll:f:1:other".into();
        assert!(
            store.enqueue_event(e).await.expect("seen").is_none(),
            "seen item skipped"
        );
        let keys = vec!["1".to_owned(), "2".to_owned()];
        assert_eq!(store.mark_seen("f", &keys).await.expect("mark"), 1);
        assert_eq!(store.get_cursor("f", "loc").await.expect("get"), None);
        let c = Cursor {
            cursor: Some(json!({"page": 2})),
            watermark: Some("2025-01-01T00:00:00Z".into()),
        };
        store.set_cursor("f", "loc", &c).await.expect("set");
        assert_eq!(store.get_cursor("f", "loc").await.expect("get"), Some(c));
        store
            .upsert_flow("f", Some("F"), &json!({"id": "f"}), true)
            .await
            .expect("flow");
        store
            .upsert_flow("f", None, &json!({"id": "f"}), false)
            .await
            .expect("flow again");
        store.close().await;
        // Reopening runs no migration twice.
        let store = SqliteStore::open(&dir).await.expect("reopen");
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
