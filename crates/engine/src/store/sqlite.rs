//! The SQLite store: WAL mode, `synchronous = NORMAL`, a busy timeout, one writer
//! connection (writes are serialised in-process; `BEGIN IMMEDIATE` serialises them across
//! processes) and a pool of readers.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr};

use super::{
    ClaimedRun, Cursor, EventRecord, Failure, NewEvent, RunDetail, RunFilter, RunId, RunState,
    RunSummary, StepRecord, Store, StoreError, StoreFuture, StoreResult, from_ms, now, to_ms,
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
    Migrator::with_migrations(vec![m(
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    )])
}

/// The SQLite [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
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

const CLAIMED_SELECT: &str = "SELECT r.id, r.flow_id, r.event_id, r.attempts, r.lease_token, r.replay_of, \
     e.dedupe_key, e.payload, e.received_at FROM runs r JOIN events e ON e.id = r.event_id \
     WHERE r.lease_token = $1 ORDER BY r.next_attempt_at, r.id";

impl SqliteStore {
    /// Opens (creating if needed) the database `hlbridge.db` in `data_dir` and migrates it.
    pub async fn open(data_dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        Self::open_file(&super::database_path(data_dir)).await
    }

    /// Opens (creating if needed) the database file `path` and migrates it.
    pub async fn open_file(path: &Path) -> StoreResult<Self> {
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
        Ok(Self { writer, reader })
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    async fn enqueue_batch(&self, events: Vec<NewEvent>) -> StoreResult<Vec<Option<RunId>>> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
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
                .execute(&mut *tx)
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
            .execute(&mut *tx)
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
            .execute(&mut *tx)
            .await?;
            out.push(Some(run_id));
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let at = to_ms(now());
        let token = uuid::Uuid::new_v4().to_string();
        let claimed_n = sqlx::query(
            "UPDATE runs SET state = 'running', worker_id = $1, lease_token = $2, lease_until = $3, \
             attempts = attempts + 1, started_at = COALESCE(started_at, $4), updated_at = $4 \
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
        let runs = if claimed_n == 0 {
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
             attempts = attempts + 1, started_at = COALESCE(started_at, $4), updated_at = $4 \
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
        let run = if n == 0 {
            None
        } else {
            sqlx::query(CLAIMED_SELECT)
                .bind(&token)
                .fetch_optional(&mut *tx)
                .await?
                .as_ref()
                .map(claimed)
                .transpose()?
        };
        tx.commit().await?;
        Ok(run)
    }

    async fn replay_in(&self, run_id: RunId) -> StoreResult<RunId> {
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
    fn upsert_flow<'a>(
        &'a self,
        id: &'a str,
        name: Option<&'a str>,
        definition: &'a Value,
        enabled: bool,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO flows (id, name, definition, enabled, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, definition = excluded.definition, \
                 enabled = excluded.enabled, updated_at = excluded.updated_at",
            )
            .bind(id)
            .bind(name)
            .bind(json_text(definition))
            .bind(i64::from(enabled))
            .bind(to_ms(now()))
            .execute(&self.writer)
            .await?;
            Ok(())
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
            .execute(&self.writer)
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    fn release_run<'a>(&'a self, run: &'a ClaimedRun) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let at = to_ms(now());
            let n = sqlx::query(
                "UPDATE runs SET state = 'queued', lease_until = NULL, lease_token = NULL, \
                 attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, next_attempt_at = $1, updated_at = $1 \
                 WHERE id = $2 AND lease_token = $3 AND state = 'running'",
            )
            .bind(at)
            .bind(run.id.to_string())
            .bind(&run.lease_token)
            .execute(&self.writer)
            .await?
            .rows_affected();
            Ok(n == 1)
        })
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
            .execute(&self.writer)
            .await?;
            Ok(())
        })
    }

    fn complete_run<'a>(&'a self, run: &'a ClaimedRun, state: RunState) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            if !matches!(state, RunState::Succeeded | RunState::Skipped) {
                return Err(StoreError::Conflict(format!(
                    "complete_run with state {state}"
                )));
            }
            let at = to_ms(now());
            let n = sqlx::query(
                "UPDATE runs SET state = $1, lease_until = NULL, lease_token = NULL, last_error = NULL, \
                 finished_at = $2, updated_at = $2 WHERE id = $3 AND lease_token = $4 AND state = 'running'",
            )
            .bind(state.as_str())
            .bind(at)
            .bind(run.id.to_string())
            .bind(&run.lease_token)
            .execute(&self.writer)
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    fn fail_run<'a>(
        &'a self,
        run: &'a ClaimedRun,
        error: &'a str,
        body: Option<&'a Value>,
        failure: Failure,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let at = to_ms(now());
            let (state, next, finished) = match failure {
                Failure::RetryAt(t) => (RunState::Failed, to_ms(t), None),
                Failure::Dead => (RunState::Dead, at, Some(at)),
            };
            let n = sqlx::query(
                "UPDATE runs SET state = $1, next_attempt_at = $2, finished_at = $3, last_error = $4, error_body = $5, \
                 lease_until = NULL, lease_token = NULL, updated_at = $6 \
                 WHERE id = $7 AND lease_token = $8 AND state = 'running'",
            )
            .bind(state.as_str())
            .bind(next)
            .bind(finished)
            .bind(error)
            .bind(body.map(json_text))
            .bind(at)
            .bind(run.id.to_string())
            .bind(&run.lease_token)
            .execute(&self.writer)
            .await?
            .rows_affected();
            Ok(n == 1)
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
        Box::pin(self.replay_in(run_id))
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
                out.push(self.replay_in(parse_id(&id)?).await?);
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
