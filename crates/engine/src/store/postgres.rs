//! The PostgreSQL store, for scale-out: `hlbridge serve` and any number of `hlbridge worker`
//! processes, on any machines, share one database.
//!
//! - **Schema**: the same tables, columns, types and indexes as SQLite's (migrations in
//!   `crates/engine/migrations/postgres/`, one twin per SQLite migration, same number and
//!   name; a test migrates both and compares them). Migrations take PostgreSQL's advisory
//!   lock, so processes starting together migrate once; a newer schema than the binary knows
//!   is accepted (rolling upgrades: migrations only add).
//! - **Queue**: runs are claimed with `FOR UPDATE SKIP LOCKED` (workers never wait for each
//!   other's rows) under a lease; a run whose worker died is claimed again once its lease
//!   lapses. An event and its run are one statement (one round trip, atomic). Step results
//!   and the run's end are one transaction.
//! - **Wake-ups**: an enqueue sends `NOTIFY hlbridge_runs` (at most one per few
//!   milliseconds per process); workers `LISTEN` and claim at once instead of waiting for
//!   their idle poll.
//! - **Cluster coordination** ([`super::cluster`]): trigger turns and rate-budget slots use
//!   the database's clock, so processes whose clocks differ slightly still agree.
//!
//! All SQL is sent with runtime `sqlx::query` (no compile-time macros).

use std::borrow::Cow;
use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection, Row, SqlSafeStr};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

mod security;

use super::backend::MigrationInfo;
use super::cluster::{RateBudget, SlotAnswer, SlotTake, TriggerTurn, millis, utc_day};
use super::{
    ClaimedRun, Cursor, EventRecord, Failure, NewEvent, RunDetail, RunEnd, RunFilter, RunId,
    RunState, RunSummary, StepRecord, Store, StoreError, StoreFuture, StoreResult, from_ms, now,
    to_ms,
};

/// The migrations, embedded (files in `crates/engine/migrations/postgres/`): the same
/// versions and descriptions as SQLite's.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "runs lease index",
        include_str!("../../migrations/postgres/0002_runs_lease.sql"),
    ),
    (
        3,
        "security",
        include_str!("../../migrations/postgres/0003_security.sql"),
    ),
    (
        4,
        "cluster",
        include_str!("../../migrations/postgres/0004_cluster.sql"),
    ),
    (
        5,
        "runs taken over",
        include_str!("../../migrations/postgres/0005_runs_taken_over.sql"),
    ),
];

fn migrator() -> Migrator {
    let mut m = Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    AssertSqlSafe(*sql).into_sql_str(),
                    false,
                )
            })
            .collect(),
    );
    // A newer binary may have migrated further: its migrations only add, so an older
    // worker still running during a rolling upgrade keeps working.
    m.set_ignore_missing(true);
    m
}

/// The channel enqueues notify and workers listen on.
const CHANNEL: &str = "hlbridge_runs";

/// The database's clock in milliseconds since the Unix epoch.
const DB_NOW: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// Connection settings of a [`PostgresStore`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Most connections in the pool (each process holds up to this many, plus one for
    /// `LISTEN`). Default 10.
    pub max_connections: u32,
    /// Use this schema (created if missing) instead of the URL's default `search_path`,
    /// e.g. to keep several installations or test runs in one database.
    pub schema: Option<String>,
    /// Listen for enqueue notifications (workers do; one-off commands need not). Default
    /// `true`.
    pub listen: bool,
    /// `application_name` shown in `pg_stat_activity`. Default `hlbridge`.
    pub application_name: String,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            schema: None,
            listen: true,
            application_name: "hlbridge".into(),
        }
    }
}

/// The PostgreSQL [`Store`] (see the module docs).
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    wake: Arc<Notify>,
    stop: CancellationToken,
    /// When this process last sent a NOTIFY (ms), to send at most one per few ms.
    last_notify: Arc<AtomicI64>,
    /// Pacing keys (with their burst) whose slot rows exist.
    slot_keys: Arc<Mutex<HashSet<(String, u32)>>>,
}

/// Sends at most one NOTIFY per this many milliseconds per process.
const NOTIFY_EVERY_MS: i64 = 2;

fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

fn connect_options(url: &str, options: &PostgresOptions) -> StoreResult<PgConnectOptions> {
    let mut opts = PgConnectOptions::from_str(url)?.application_name(&options.application_name);
    if let Some(schema) = &options.schema {
        if !valid_schema(schema) {
            return Err(StoreError::Conflict(format!(
                "invalid schema name {schema:?} (lowercase letters, digits and _)"
            )));
        }
        opts = opts.options([("search_path", schema.as_str())]);
    }
    Ok(opts)
}

/// The migrations applied to the database at `url` (empty when it has none yet).
pub(crate) async fn applied_migrations(
    url: &str,
    options: &PostgresOptions,
) -> StoreResult<Vec<MigrationInfo>> {
    let mut conn = PgConnection::connect_with(&connect_options(url, options)?).await?;
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::TEXT")
        .fetch_one(&mut conn)
        .await?;
    let out = if exists.is_some() {
        read_applied_conn(&mut conn).await?
    } else {
        Vec::new()
    };
    let _ = conn.close().await;
    Ok(out)
}

async fn read_applied_conn(conn: &mut PgConnection) -> StoreResult<Vec<MigrationInfo>> {
    sqlx::query("SELECT version, description FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            Ok(MigrationInfo {
                version: r.try_get("version")?,
                description: r.try_get("description")?,
            })
        })
        .collect()
}

/// The migrations applied to the store's database.
pub(crate) async fn read_applied(pool: &PgPool) -> StoreResult<Vec<MigrationInfo>> {
    let mut conn = pool.acquire().await?;
    read_applied_conn(&mut conn).await
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

fn count(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

const SUMMARY_COLUMNS: &str = "id, flow_id, event_id, state, attempts, next_attempt_at, worker_id, last_error, replay_of, created_at, updated_at, started_at, finished_at";

fn summary(row: &PgRow) -> StoreResult<RunSummary> {
    let state = RunState::from_str(&row.try_get::<String, _>("state")?)?;
    let next: Option<i64> = row.try_get("next_attempt_at")?;
    let id: String = row.try_get("id")?;
    let replay_of: Option<String> = row.try_get("replay_of")?;
    Ok(RunSummary {
        id: parse_id(&id)?,
        flow_id: row.try_get("flow_id")?,
        event_id: row.try_get("event_id")?,
        state,
        attempts: count(row.try_get("attempts")?),
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

fn claimed(row: &PgRow) -> StoreResult<ClaimedRun> {
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
        attempts: count(row.try_get("attempts")?),
        lease_token: row.try_get("lease_token")?,
        replay_of: replay_of.as_deref().map(parse_id).transpose()?,
        taken_over: row.try_get::<i32, _>("taken_over")? != 0,
        steps: Vec::new(),
    })
}

fn step_record(row: &PgRow) -> StoreResult<StepRecord> {
    Ok(StepRecord {
        step_id: row.try_get("step_id")?,
        input: parse_json(row.try_get("input")?)?,
        output: parse_json(row.try_get("output")?)?,
        error: parse_json(row.try_get("error")?)?,
        started_at: from_ms(row.try_get("started_at")?),
        finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(from_ms),
    })
}

/// One event and its run in one statement; nothing when the item was seen or the dedupe
/// key exists. `$6` is the poll item key (or NULL).
const ENQUEUE: &str = "WITH s AS ( \
        INSERT INTO seen_items (flow_id, item_key, seen_at) SELECT $2, $6, $5 WHERE $6::TEXT IS NOT NULL \
        ON CONFLICT (flow_id, item_key) DO NOTHING RETURNING 1 AS fresh), \
    e AS ( \
        INSERT INTO events (id, flow_id, dedupe_key, payload, received_at) \
        SELECT $1, $2, $3, $4, $5 WHERE $6::TEXT IS NULL OR EXISTS (SELECT 1 FROM s) \
        ON CONFLICT (dedupe_key) DO NOTHING RETURNING id) \
    INSERT INTO runs (id, flow_id, event_id, state, attempts, next_attempt_at, created_at, updated_at) \
    SELECT $7, $2, e.id, 'queued', 0, $5, $5, $5 FROM e RETURNING id";

/// Claims due runs: lapsed leases first, then retries that are due, then queued runs, each
/// through the `(state, next_attempt_at)` index, skipping rows other workers hold.
const CLAIM: &str = "WITH lapsed AS ( \
        SELECT id FROM runs WHERE state = 'running' AND lease_until < $4 \
        ORDER BY lease_until LIMIT $5 FOR UPDATE SKIP LOCKED), \
    retry AS ( \
        SELECT id FROM runs WHERE state = 'failed' AND next_attempt_at <= $4 \
        ORDER BY next_attempt_at LIMIT $5 FOR UPDATE SKIP LOCKED), \
    fresh AS ( \
        SELECT id FROM runs WHERE state = 'queued' AND next_attempt_at <= $4 \
        ORDER BY next_attempt_at LIMIT $5 FOR UPDATE SKIP LOCKED), \
    pick AS ( \
        SELECT id FROM lapsed UNION ALL SELECT id FROM retry UNION ALL SELECT id FROM fresh LIMIT $5) \
    UPDATE runs r SET state = 'running', worker_id = $1, lease_token = $2, lease_until = $3, \
        attempts = r.attempts + 1, started_at = COALESCE(r.started_at, $4), updated_at = $4, \
        taken_over = CASE WHEN r.state = 'running' THEN 1 ELSE 0 END \
    FROM pick, events e WHERE r.id = pick.id AND e.id = r.event_id \
    RETURNING r.id, r.flow_id, r.event_id, r.attempts, r.lease_token, r.replay_of, r.taken_over, \
        e.dedupe_key, e.payload, e.received_at, r.next_attempt_at";

const CLAIM_ONE: &str = "UPDATE runs r SET state = 'running', worker_id = $1, lease_token = $2, lease_until = $3, \
        attempts = r.attempts + 1, started_at = COALESCE(r.started_at, $4), updated_at = $4, \
        taken_over = CASE WHEN r.state = 'running' THEN 1 ELSE 0 END \
    FROM events e WHERE r.id = $5 AND e.id = r.event_id \
        AND (r.state IN ('queued', 'failed') OR (r.state = 'running' AND r.lease_until < $4)) \
    RETURNING r.id, r.flow_id, r.event_id, r.attempts, r.lease_token, r.replay_of, r.taken_over, \
        e.dedupe_key, e.payload, e.received_at";

const SAVE_STEP: &str = "INSERT INTO step_results (run_id, step_id, position, input, output, error, started_at, finished_at) \
    VALUES ($1, $2, (SELECT COUNT(*) FROM step_results WHERE run_id = $1), $3, $4, $5, $6, $7) \
    ON CONFLICT (run_id, step_id) DO UPDATE SET input = excluded.input, output = excluded.output, \
    error = excluded.error, started_at = excluded.started_at, finished_at = excluded.finished_at";

async fn save_step(conn: &mut PgConnection, run_id: &str, r: &StepRecord) -> StoreResult<()> {
    sqlx::query(SAVE_STEP)
        .bind(run_id)
        .bind(&r.step_id)
        .bind(r.input.as_ref().map(json_text))
        .bind(r.output.as_ref().map(json_text))
        .bind(r.error.as_ref().map(json_text))
        .bind(to_ms(r.started_at))
        .bind(r.finished_at.map(to_ms))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// `WITH s AS (…)`: upserts `steps` (bound as arrays from `$first` on) for the run bound at
/// `$run`, in the same statement as what follows.
fn steps_cte(run: usize, first: usize) -> String {
    let p = |i: usize| format!("${}", first + i);
    format!(
        "WITH s AS (INSERT INTO step_results (run_id, step_id, position, input, output, error, started_at, finished_at) \
         SELECT ${run}, x.step_id, (SELECT COUNT(*) FROM step_results WHERE run_id = ${run}) + x.ord - 1, \
             x.input, x.output, x.error, x.started_at, x.finished_at \
         FROM UNNEST({}::TEXT[], {}::TEXT[], {}::TEXT[], {}::TEXT[], {}::BIGINT[], {}::BIGINT[]) \
             WITH ORDINALITY AS x(step_id, input, output, error, started_at, finished_at, ord) \
         ON CONFLICT (run_id, step_id) DO UPDATE SET input = excluded.input, output = excluded.output, \
             error = excluded.error, started_at = excluded.started_at, finished_at = excluded.finished_at) ",
        p(0),
        p(1),
        p(2),
        p(3),
        p(4),
        p(5)
    )
}

/// Binds `steps` as the six arrays [`steps_cte`] expects.
fn bind_steps<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    steps: &[StepRecord],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let ids: Vec<String> = steps.iter().map(|r| r.step_id.clone()).collect();
    let inputs: Vec<Option<String>> = steps
        .iter()
        .map(|r| r.input.as_ref().map(json_text))
        .collect();
    let outputs: Vec<Option<String>> = steps
        .iter()
        .map(|r| r.output.as_ref().map(json_text))
        .collect();
    let errors: Vec<Option<String>> = steps
        .iter()
        .map(|r| r.error.as_ref().map(json_text))
        .collect();
    let started: Vec<i64> = steps.iter().map(|r| to_ms(r.started_at)).collect();
    let finished: Vec<Option<i64>> = steps.iter().map(|r| r.finished_at.map(to_ms)).collect();
    q.bind(ids)
        .bind(inputs)
        .bind(outputs)
        .bind(errors)
        .bind(started)
        .bind(finished)
}

/// Saves `steps` and ends a run under its lease token, in one statement (one round trip,
/// atomic); whether the claim still held. The steps are saved either way.
async fn end_run(
    conn: &mut PgConnection,
    run_id: &str,
    lease_token: &str,
    steps: &[StepRecord],
    end: &RunEnd,
) -> StoreResult<bool> {
    let at = to_ms(now());
    // (SQL, number of its parameters, the parameter holding the run id)
    let (sql, params, run_param) = match end {
        RunEnd::Complete(_) => (
            "UPDATE runs SET state = $1, lease_until = NULL, lease_token = NULL, last_error = NULL, \
             finished_at = $2, updated_at = $2 WHERE id = $3 AND lease_token = $4 AND state = 'running'",
            4,
            3,
        ),
        RunEnd::Fail { .. } => (
            "UPDATE runs SET state = $1, next_attempt_at = $2, finished_at = $3, last_error = $4, error_body = $5, \
             lease_until = NULL, lease_token = NULL, updated_at = $6 \
             WHERE id = $7 AND lease_token = $8 AND state = 'running'",
            8,
            7,
        ),
        RunEnd::Release => (
            "UPDATE runs SET state = 'queued', lease_until = NULL, lease_token = NULL, \
             attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, next_attempt_at = $1, updated_at = $1 \
             WHERE id = $2 AND lease_token = $3 AND state = 'running'",
            3,
            2,
        ),
    };
    let sql = if steps.is_empty() {
        sql.to_owned()
    } else {
        format!("{}{sql}", steps_cte(run_param, params + 1))
    };
    let q = sqlx::query(AssertSqlSafe(sql));
    let q = match end {
        RunEnd::Complete(state) => q
            .bind(state.as_str())
            .bind(at)
            .bind(run_id)
            .bind(lease_token),
        RunEnd::Fail {
            error,
            body,
            failure,
        } => {
            let (state, next, finished) = match failure {
                Failure::RetryAt(t) => (RunState::Failed, to_ms(*t), None),
                Failure::Dead => (RunState::Dead, at, Some(at)),
            };
            q.bind(state.as_str())
                .bind(next)
                .bind(finished)
                .bind(error.clone())
                .bind(body.as_ref().map(json_text))
                .bind(at)
                .bind(run_id)
                .bind(lease_token)
        }
        RunEnd::Release => q.bind(at).bind(run_id).bind(lease_token),
    };
    let q = if steps.is_empty() {
        q
    } else {
        bind_steps(q, steps)
    };
    Ok(q.execute(&mut *conn).await?.rows_affected() == 1)
}

/// Fills in the saved step results of claimed runs.
async fn attach_steps(conn: &mut PgConnection, runs: &mut [ClaimedRun]) -> StoreResult<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = runs.iter().map(|r| r.id.to_string()).collect();
    let rows = sqlx::query(
        "SELECT run_id, step_id, input, output, error, started_at, finished_at FROM step_results \
         WHERE run_id = ANY($1) ORDER BY run_id, position, started_at",
    )
    .bind(&ids)
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

impl PostgresStore {
    /// Connects to `url` with the default options and migrates the database.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, &PostgresOptions::default()).await
    }

    /// Connects to `url` and migrates the database (in `options.schema`, created if
    /// missing).
    pub async fn connect_with(url: &str, options: &PostgresOptions) -> StoreResult<Self> {
        let connect = connect_options(url, options)?;
        if let Some(schema) = &options.schema {
            // Validated by `connect_options`: lowercase letters, digits and `_`.
            let mut conn = PgConnection::connect_with(&PgConnectOptions::from_str(url)?).await?;
            sqlx::query(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
            )))
            .execute(&mut conn)
            .await?;
            let _ = conn.close().await;
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect)
            .await?;
        migrator().run(&pool).await?;
        let store = Self {
            pool,
            wake: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            last_notify: Arc::new(AtomicI64::new(0)),
            slot_keys: Arc::default(),
        };
        if options.listen {
            store.spawn_listener().await?;
        }
        Ok(store)
    }

    /// Drops `schema` (made with [`PostgresOptions::schema`]) and everything in it: for
    /// tests and benchmarks that work in a schema of their own.
    pub async fn drop_schema(url: &str, schema: &str) -> StoreResult<()> {
        if !valid_schema(schema) {
            return Err(StoreError::Conflict(format!(
                "invalid schema name {schema:?}"
            )));
        }
        let mut conn = PgConnection::connect_with(&PgConnectOptions::from_str(url)?).await?;
        sqlx::query(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&mut conn)
        .await?;
        let _ = conn.close().await;
        Ok(())
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stops listening and closes the connections.
    pub async fn close(&self) {
        self.stop.cancel();
        self.pool.close().await;
    }

    /// Listens for enqueue notifications on a connection of its own and wakes the workers
    /// of this process; reconnects after an error.
    async fn spawn_listener(&self) -> StoreResult<()> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        let wake = Arc::downgrade(&self.wake);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return,
                    n = listener.recv() => n,
                };
                let Some(wake) = wake.upgrade() else { return };
                match next {
                    Ok(_) => wake.notify_waiters(),
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// Whether this enqueue should NOTIFY (at most one per [`NOTIFY_EVERY_MS`]).
    fn should_notify(&self, at: i64) -> bool {
        let last = self.last_notify.load(Ordering::Relaxed);
        at - last >= NOTIFY_EVERY_MS
            && self
                .last_notify
                .compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    async fn enqueue_batch(&self, events: Vec<NewEvent>) -> StoreResult<Vec<Option<RunId>>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let at = to_ms(now());
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(events.len());
        for ev in &events {
            let run_id = RunId::now_v7();
            let row = sqlx::query(ENQUEUE)
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(&ev.flow_id)
                .bind(&ev.dedupe_key)
                .bind(json_text(&ev.payload))
                .bind(at)
                .bind(ev.seen_key.as_deref())
                .bind(run_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            out.push(row.map(|_| run_id));
        }
        if out.iter().any(Option::is_some) && self.should_notify(at) {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn claim(
        &self,
        worker_id: &str,
        n: u32,
        lease: Duration,
    ) -> StoreResult<Vec<ClaimedRun>> {
        let at = to_ms(now());
        let token = uuid::Uuid::new_v4().to_string();
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query(CLAIM)
            .bind(worker_id)
            .bind(&token)
            .bind(at + lease_ms(lease))
            .bind(at)
            .bind(i64::from(n))
            .fetch_all(&mut *conn)
            .await?;
        let mut ordered: Vec<(i64, ClaimedRun)> = rows
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>("next_attempt_at")?, claimed(r)?)))
            .collect::<StoreResult<_>>()?;
        ordered.sort_by_key(|(next, run)| (*next, run.id));
        let mut runs: Vec<ClaimedRun> = ordered.into_iter().map(|(_, r)| r).collect();
        attach_steps(&mut conn, &mut runs).await?;
        Ok(runs)
    }

    async fn claim_one(
        &self,
        run_id: RunId,
        worker_id: &str,
        lease: Duration,
    ) -> StoreResult<Option<ClaimedRun>> {
        let at = to_ms(now());
        let token = uuid::Uuid::new_v4().to_string();
        let mut conn = self.pool.acquire().await?;
        let row = sqlx::query(CLAIM_ONE)
            .bind(worker_id)
            .bind(&token)
            .bind(at + lease_ms(lease))
            .bind(at)
            .bind(run_id.to_string())
            .fetch_optional(&mut *conn)
            .await?;
        let mut runs: Vec<ClaimedRun> =
            row.as_ref().map(claimed).transpose()?.into_iter().collect();
        attach_steps(&mut conn, &mut runs).await?;
        Ok(runs.pop())
    }

    /// Replays a final run; with `only_once`, not if it was replayed already.
    async fn replay_in(
        &self,
        run_id: RunId,
        only_once: bool,
        resume: bool,
    ) -> StoreResult<Option<RunId>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT flow_id, event_id, state FROM runs WHERE id = $1 FOR UPDATE")
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
        if only_once {
            let replayed: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE replay_of = $1")
                    .bind(run_id.to_string())
                    .fetch_one(&mut *tx)
                    .await?;
            if replayed > 0 {
                return Ok(None);
            }
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
        if self.should_notify(at) {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(new_id))
    }

    async fn detail(&self, run_id: RunId) -> StoreResult<Option<RunDetail>> {
        let sql = format!("SELECT {SUMMARY_COLUMNS}, error_body FROM runs WHERE id = $1");
        let Some(row) = sqlx::query(AssertSqlSafe(sql))
            .bind(run_id.to_string())
            .fetch_optional(&self.pool)
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
        .fetch_one(&self.pool)
        .await?;
        let event = EventRecord {
            id: ev.try_get("id")?,
            flow_id: ev.try_get("flow_id")?,
            dedupe_key: ev.try_get("dedupe_key")?,
            payload: parse_json(Some(ev.try_get("payload")?))?.unwrap_or(Value::Null),
            received_at: from_ms(ev.try_get("received_at")?),
        };
        let steps = self.steps_of(run_id).await?;
        Ok(Some(RunDetail {
            run,
            event,
            steps,
            error_body,
        }))
    }

    async fn steps_of(&self, run_id: RunId) -> StoreResult<Vec<StepRecord>> {
        sqlx::query(
            "SELECT step_id, input, output, error, started_at, finished_at FROM step_results \
             WHERE run_id = $1 ORDER BY position, started_at",
        )
        .bind(run_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(step_record)
        .collect()
    }

    async fn finish(
        &self,
        run_id: RunId,
        lease_token: &str,
        steps: &[StepRecord],
        end: Option<&RunEnd>,
    ) -> StoreResult<bool> {
        let id = run_id.to_string();
        let mut conn = self.pool.acquire().await?;
        match end {
            Some(end) => end_run(&mut conn, &id, lease_token, steps, end).await,
            None => {
                for s in steps {
                    save_step(&mut conn, &id, s).await?;
                }
                Ok(true)
            }
        }
    }

    async fn turn(&self, key: &str, holder: &str, every: Duration) -> StoreResult<TriggerTurn> {
        let taken = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO trigger_turns (trigger_key, holder, next_due, taken_at) \
             VALUES ($1, $2, {DB_NOW} + $3, {DB_NOW}) \
             ON CONFLICT (trigger_key) DO UPDATE SET holder = excluded.holder, \
             next_due = excluded.next_due, taken_at = excluded.taken_at \
             WHERE trigger_turns.next_due <= excluded.taken_at RETURNING next_due"
        )))
        .bind(key)
        .bind(holder)
        .bind(millis(every))
        .fetch_optional(&self.pool)
        .await?;
        if taken.is_some() {
            return Ok(TriggerTurn::Taken);
        }
        let wait: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT next_due - {DB_NOW} FROM trigger_turns WHERE trigger_key = $1"
        )))
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let ms = u64::try_from(wait.unwrap_or(0).max(1)).unwrap_or(1);
        Ok(TriggerTurn::NotDue(Duration::from_millis(ms)))
    }

    async fn ensure_slots(&self, key: &str, burst: u32) -> StoreResult<()> {
        let k = (key.to_owned(), burst);
        if self
            .slot_keys
            .lock()
            .map(|s| s.contains(&k))
            .unwrap_or(false)
        {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rate_slots (pacing_key, slot, busy_until) \
             SELECT $1, g, 0 FROM generate_series(0, $2 - 1) AS g ON CONFLICT DO NOTHING",
        )
        .bind(key)
        .bind(i32::try_from(burst).unwrap_or(i32::MAX))
        .execute(&self.pool)
        .await?;
        if let Ok(mut s) = self.slot_keys.lock() {
            s.insert(k);
        }
        Ok(())
    }

    async fn take_slot(&self, key: &str, b: &RateBudget, claim: &str) -> StoreResult<SlotTake> {
        self.ensure_slots(key, b.burst).await?;
        let burst = i32::try_from(b.burst).unwrap_or(i32::MAX);
        let row = sqlx::query(AssertSqlSafe(format!(
            "WITH t AS (SELECT {DB_NOW} AS now), \
             free AS (SELECT s.slot FROM rate_slots s, t WHERE s.pacing_key = $1 AND s.slot < $2 \
                 AND s.busy_until <= t.now ORDER BY s.busy_until LIMIT 1 FOR UPDATE OF s SKIP LOCKED) \
             UPDATE rate_slots r SET busy_until = (SELECT now FROM t) + $3, holder = $4 \
             FROM free WHERE r.pacing_key = $1 AND r.slot = free.slot \
             RETURNING r.slot, (SELECT now FROM t) AS now"
        )))
        .bind(key)
        .bind(burst)
        .bind(millis(b.in_flight))
        .bind(claim)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            let soonest: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT LEAST(MIN(busy_until), {DB_NOW} + $3) - {DB_NOW} FROM rate_slots \
                 WHERE pacing_key = $1 AND slot < $2"
            )))
            .bind(key)
            .bind(burst)
            .bind(millis(b.hold_after_answer()))
            .fetch_one(&self.pool)
            .await?;
            let ms = u64::try_from(soonest.unwrap_or(1).max(1)).unwrap_or(1);
            return Ok(SlotTake::Wait(Duration::from_millis(ms)));
        };
        let slot: i32 = row.try_get("slot")?;
        let at: i64 = row.try_get("now")?;
        let (day, left) = utc_day(at);
        let counted = sqlx::query(
            "INSERT INTO rate_daily (pacing_key, day, used) VALUES ($1, $2, 1) \
             ON CONFLICT (pacing_key, day) DO UPDATE SET used = rate_daily.used + 1 \
             WHERE rate_daily.used < $3",
        )
        .bind(key)
        .bind(day)
        .bind(i64::from(b.daily))
        .execute(&self.pool)
        .await?
        .rows_affected();
        if counted == 0 {
            sqlx::query(
                "UPDATE rate_slots SET busy_until = 0, holder = NULL \
                 WHERE pacing_key = $1 AND slot = $2 AND holder = $3",
            )
            .bind(key)
            .bind(slot)
            .bind(claim)
            .execute(&self.pool)
            .await?;
            return Ok(SlotTake::DailyExhausted(left));
        }
        Ok(SlotTake::Taken(u32::try_from(slot).unwrap_or(0)))
    }

    async fn answer_slot(
        &self,
        key: &str,
        b: &RateBudget,
        slot: u32,
        claim: &str,
        answer: SlotAnswer,
    ) -> StoreResult<()> {
        let hold = millis(b.hold_after_answer());
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE rate_slots SET busy_until = {DB_NOW} + $4, holder = NULL \
             WHERE pacing_key = $1 AND slot = $2 AND holder = $3"
        )))
        .bind(key)
        .bind(i32::try_from(slot).unwrap_or(i32::MAX))
        .bind(claim)
        .bind(hold)
        .execute(&self.pool)
        .await?;
        if answer.limited || answer.exhausted {
            // HighLevel says the window is full (others' requests count too): take every
            // slot to be busy for a whole window from now.
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE rate_slots SET busy_until = GREATEST(busy_until, {DB_NOW} + $3) \
                 WHERE pacing_key = $1 AND slot < $2"
            )))
            .bind(key)
            .bind(i32::try_from(b.burst).unwrap_or(i32::MAX))
            .bind(hold)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }
}

impl Store for PostgresStore {
    fn upsert_flow<'a>(
        &'a self,
        id: &'a str,
        name: Option<&'a str>,
        definition: &'a Value,
        enabled: bool,
    ) -> StoreFuture<'a, Option<super::PreviousFlow>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let before: Option<(String, i32)> =
                sqlx::query_as("SELECT definition, enabled FROM flows WHERE id = $1 FOR UPDATE")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            sqlx::query(super::shared_sql::UPSERT_FLOW)
                .bind(id)
                .bind(name)
                .bind(json_text(definition))
                .bind(i32::from(enabled))
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
        Box::pin(self.enqueue_batch(events))
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
            .execute(&self.pool)
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    fn release_run<'a>(&'a self, run: &'a ClaimedRun) -> StoreFuture<'a, bool> {
        Box::pin(self.finish(run.id, &run.lease_token, &[], Some(&RunEnd::Release)))
    }

    fn step_results<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, Vec<StepRecord>> {
        Box::pin(self.steps_of(run_id))
    }

    fn save_step_result<'a>(
        &'a self,
        run_id: RunId,
        record: &'a StepRecord,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            save_step(&mut conn, &run_id.to_string(), record).await
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
            self.finish(run.id, &run.lease_token, steps, Some(&end))
                .await
        })
    }

    fn list_runs<'a>(&'a self, filter: &'a RunFilter) -> StoreFuture<'a, Vec<RunSummary>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM runs WHERE ($1::TEXT IS NULL OR flow_id = $1) \
                 AND ($2::TEXT IS NULL OR state = $2) ORDER BY created_at DESC, id DESC LIMIT $3"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(filter.flow_id.as_deref())
                .bind(filter.state.map(RunState::as_str))
                .bind(i64::from(filter.limit))
                .fetch_all(&self.pool)
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
        Box::pin(async move {
            self.replay_in(run_id, false, false)
                .await?
                .ok_or_else(|| StoreError::Conflict(format!("run {run_id} was replayed")))
        })
    }

    fn resume<'a>(&'a self, run_id: RunId) -> StoreFuture<'a, RunId> {
        Box::pin(async move {
            self.replay_in(run_id, false, true)
                .await?
                .ok_or_else(|| StoreError::Conflict(format!("run {run_id} was replayed")))
        })
    }

    fn replay_dead<'a>(&'a self, flow_id: Option<&'a str>) -> StoreFuture<'a, Vec<RunId>> {
        Box::pin(async move {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT r.id FROM runs r WHERE r.state = 'dead' AND ($1::TEXT IS NULL OR r.flow_id = $1) \
                 AND NOT EXISTS (SELECT 1 FROM runs x WHERE x.replay_of = r.id) ORDER BY r.created_at",
            )
            .bind(flow_id)
            .fetch_all(&self.pool)
            .await?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                // Another process may replay the same dead run at the same time: the row
                // lock and the re-check inside make it happen once.
                if let Some(new) = self.replay_in(parse_id(&id)?, true, false).await? {
                    out.push(new);
                }
            }
            Ok(out)
        })
    }

    fn count_runs<'a>(&'a self, flow_id: Option<&'a str>) -> StoreFuture<'a, Vec<(RunState, u64)>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT state, COUNT(*) AS n FROM runs WHERE ($1::TEXT IS NULL OR flow_id = $1) \
                 GROUP BY state ORDER BY state",
            )
            .bind(flow_id)
            .fetch_all(&self.pool)
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
            if item_keys.is_empty() {
                return Ok(0);
            }
            let n = sqlx::query(
                "INSERT INTO seen_items (flow_id, item_key, seen_at) \
                 SELECT $1, k, $3 FROM UNNEST($2::TEXT[]) AS k ON CONFLICT (flow_id, item_key) DO NOTHING",
            )
            .bind(flow_id)
            .bind(item_keys)
            .bind(to_ms(now()))
            .execute(&self.pool)
            .await?
            .rows_affected();
            Ok(n)
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
            .fetch_optional(&self.pool)
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
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn security(&self) -> Option<Arc<dyn super::security::SecurityStore>> {
        Some(Arc::new(self.clone()))
    }

    fn wakeups(&self) -> Option<Arc<Notify>> {
        Some(self.wake.clone())
    }

    fn take_trigger_turn<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        every: Duration,
    ) -> StoreFuture<'a, TriggerTurn> {
        Box::pin(self.turn(key, holder, every))
    }

    fn take_rate_slot<'a>(
        &'a self,
        key: &'a str,
        budget: &'a RateBudget,
        claim: &'a str,
    ) -> StoreFuture<'a, SlotTake> {
        Box::pin(self.take_slot(key, budget, claim))
    }

    fn answer_rate_slot<'a>(
        &'a self,
        key: &'a str,
        budget: &'a RateBudget,
        slot: u32,
        claim: &'a str,
        answer: SlotAnswer,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.answer_slot(key, budget, slot, claim, answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        assert!(valid_schema("hlt_1_ab"));
        assert!(!valid_schema("Bad") && !valid_schema("a;b") && !valid_schema("1a"));
        assert!(!valid_schema(""));
    }

    #[test]
    fn every_migration_file_is_embedded_in_order_like_sqlites() {
        let dir = |flavour: &str| {
            let mut names: Vec<String> = std::fs::read_dir(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("migrations")
                    .join(flavour),
            )
            .expect("migrations dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".sql"))
            .collect();
            names.sort();
            names
        };
        let (pg, lite) = (dir("postgres"), dir("sqlite"));
        assert_eq!(pg, lite, "the two flavours are twins");
        assert_eq!(MIGRATIONS.len(), pg.len());
        for (i, ((version, _, _), name)) in MIGRATIONS.iter().zip(&pg).enumerate() {
            assert_eq!(*version, i as i64 + 1);
            assert!(name.starts_with(&format!("{:04}_", version)), "{name}");
        }
    }
}
