//! `/api/v1/runs` (list with filters, detail with steps, replay) and
//! `/api/v1/dead-letters` (list, replay one, replay all).

use axum::Json;
use axum::extract::{Path, Query, State};
use hlbridge_engine::security::AuditAction;
use hlbridge_engine::store::StepRecord;
use hlbridge_engine::{RunDetail, RunFilter, RunId, RunState, RunSummary};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiResult, audit};
use crate::ServerState;
use crate::auth::{Principal, Require, Source, perm};

/// A run as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunItem {
    /// Run id.
    pub id: String,
    /// Flow.
    pub flow_id: String,
    /// State: queued, running, succeeded, failed (retrying), skipped, dead.
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Last error.
    pub last_error: Option<String>,
    /// The run this one replays.
    pub replay_of: Option<String>,
    /// Enqueued (RFC 3339).
    pub created_at: String,
    /// First claimed.
    pub started_at: Option<String>,
    /// Finished.
    pub finished_at: Option<String>,
    /// Next attempt of a failed run.
    pub next_attempt_at: Option<String>,
    /// Duration in milliseconds (first claim to finish).
    pub duration_ms: Option<i64>,
}

fn text(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

impl From<&RunSummary> for RunItem {
    fn from(r: &RunSummary) -> Self {
        RunItem {
            id: r.id.to_string(),
            flow_id: r.flow_id.clone(),
            state: r.state.as_str().to_owned(),
            attempts: r.attempts,
            last_error: r.last_error.clone(),
            replay_of: r.replay_of.map(|x| x.to_string()),
            created_at: text(r.created_at),
            started_at: r.started_at.map(text),
            finished_at: r.finished_at.map(text),
            next_attempt_at: r.next_attempt_at.map(text),
            duration_ms: match (r.started_at, r.finished_at) {
                (Some(s), Some(f)) => i64::try_from((f - s).whole_milliseconds()).ok(),
                _ => None,
            },
        }
    }
}

/// One step of a run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StepItem {
    /// Step id (`each[0].add_tag` for nested steps).
    pub step_id: String,
    /// The rendered input (request).
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    /// The output (response).
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    /// The error.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    /// Started (RFC 3339).
    pub started_at: String,
    /// Finished.
    pub finished_at: Option<String>,
    /// Milliseconds.
    pub duration_ms: Option<i64>,
}

impl From<&StepRecord> for StepItem {
    fn from(s: &StepRecord) -> Self {
        StepItem {
            step_id: s.step_id.clone(),
            input: s.input.clone(),
            output: s.output.clone(),
            error: s.error.clone(),
            started_at: text(s.started_at),
            finished_at: s.finished_at.map(text),
            duration_ms: s
                .finished_at
                .and_then(|f| i64::try_from((f - s.started_at).whole_milliseconds()).ok()),
        }
    }
}

/// A run with its event and steps.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunView {
    /// The run.
    pub run: RunItem,
    /// The event's dedupe key.
    pub dedupe_key: String,
    /// The event.
    #[schema(value_type = Object)]
    pub event: Value,
    /// When the event was received.
    pub received_at: String,
    /// Steps in execution order.
    pub steps: Vec<StepItem>,
    /// The response body of the failure that ended the run.
    #[schema(value_type = Option<Object>)]
    pub error_body: Option<Value>,
}

impl From<&RunDetail> for RunView {
    fn from(d: &RunDetail) -> Self {
        RunView {
            run: RunItem::from(&d.run),
            dedupe_key: d.event.dedupe_key.clone(),
            event: d.event.payload.clone(),
            received_at: text(d.event.received_at),
            steps: d.steps.iter().map(StepItem::from).collect(),
            error_body: d.error_body.clone(),
        }
    }
}

/// Run filters.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct RunQuery {
    /// Only this flow's runs.
    pub flow: Option<String>,
    /// Only runs in this state.
    pub state: Option<String>,
    /// Only runs created at or after this time (RFC 3339).
    pub since: Option<String>,
    /// At most this many, newest first (default 50, at most 1000).
    pub limit: Option<u32>,
}

/// A replay's result.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// The new runs.
    pub run_ids: Vec<String>,
}

/// Which dead letters to replay.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct ReplayAll {
    /// Only this flow's.
    #[serde(default)]
    pub flow: Option<String>,
}

/// How to replay.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct ReplayQuery {
    /// Keep the steps that succeeded and start at the one that failed (for a run whose
    /// earlier steps created something); default: every step runs again.
    #[serde(default)]
    pub resume: bool,
}

/// Dead-letter filter.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct DeadQuery {
    /// Only this flow's.
    pub flow: Option<String>,
    /// At most this many (default 100).
    pub limit: Option<u32>,
}

pub(crate) fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_run))
        .routes(routes!(replay))
        .routes(routes!(dead_letters))
        .routes(routes!(replay_dead_one))
        .routes(routes!(replay_dead_all))
}

/// Runs matching the filters, newest first.
pub(crate) async fn query_runs(
    state: &ServerState,
    q: &RunQuery,
) -> Result<Vec<RunSummary>, ApiError> {
    let run_state = q
        .state
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<RunState>().map_err(|_| {
                ApiError::bad_request(format!(
                    "unknown state `{s}` (queued, running, succeeded, failed, skipped, dead)"
                ))
            })
        })
        .transpose()?;
    let since = q
        .since
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            OffsetDateTime::parse(s, &Rfc3339)
                .map_err(|_| ApiError::bad_request(format!("`since` is not an RFC 3339 time: {s}")))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let filter = RunFilter {
        flow_id: q.flow.clone().filter(|f| !f.is_empty()),
        state: run_state,
        limit: if since.is_some() { 10_000 } else { limit },
    };
    let mut runs = state.engine().store().list_runs(&filter).await?;
    if let Some(since) = since {
        runs.retain(|r| r.created_at >= since);
    }
    runs.truncate(limit as usize);
    Ok(runs)
}

fn run_id(id: &str) -> Result<RunId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::not_found(format!("no run `{id}`")))
}

/// Runs, newest first, filtered by flow, state and creation time.
#[utoipa::path(get, path = "/runs", tag = "runs", params(RunQuery),
    responses((status = 200, body = Vec<RunItem>), (status = 400, body = ApiError)))]
async fn list(
    State(state): State<ServerState>,
    _who: Require<perm::Read>,
    Query(q): Query<RunQuery>,
) -> ApiResult<Vec<RunItem>> {
    Ok(Json(
        query_runs(&state, &q)
            .await?
            .iter()
            .map(RunItem::from)
            .collect(),
    ))
}

pub(crate) async fn run_detail(state: &ServerState, id: &str) -> Result<RunDetail, ApiError> {
    state
        .engine()
        .store()
        .run_detail(run_id(id)?)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run `{id}`")))
}

/// A run with its event and each step's input, output, error and timing.
#[utoipa::path(get, path = "/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = RunView), (status = 404, body = ApiError)))]
async fn get_run(
    State(state): State<ServerState>,
    _who: Require<perm::Read>,
    Path(id): Path<String>,
) -> ApiResult<RunView> {
    Ok(Json(RunView::from(&run_detail(&state, &id).await?)))
}

pub(crate) async fn replay_run(
    state: &ServerState,
    who: &Principal,
    source: &str,
    id: &str,
    resume: bool,
) -> Result<RunId, ApiError> {
    let store = state.engine().store();
    let new = if resume {
        store.resume(run_id(id)?).await?
    } else {
        store.replay(run_id(id)?).await?
    };
    audit(
        state,
        who,
        AuditAction::RunReplayed,
        id,
        source,
        json!({ "new_run": new.to_string(), "resume": resume }),
    )
    .await;
    Ok(new)
}

/// Enqueues a finished run's event again as a new run (`replay_of` points back).
#[utoipa::path(post, path = "/runs/{id}/replay", tag = "runs",
    params(("id" = String, Path, description = "Run id"), ReplayQuery),
    responses((status = 200, body = Replayed), (status = 404, body = ApiError), (status = 409, description = "The run is not finished", body = ApiError)))]
async fn replay(
    State(state): State<ServerState>,
    who: Require<perm::Replay>,
    Source(source): Source,
    Path(id): Path<String>,
    Query(q): Query<ReplayQuery>,
) -> ApiResult<Replayed> {
    let new = replay_run(&state, who.principal(), &source, &id, q.resume).await?;
    Ok(Json(Replayed {
        run_ids: vec![new.to_string()],
    }))
}

/// Dead letters: runs that spent their retry budget or failed for good.
#[utoipa::path(get, path = "/dead-letters", tag = "runs", params(DeadQuery),
    responses((status = 200, body = Vec<RunItem>)))]
async fn dead_letters(
    State(state): State<ServerState>,
    _who: Require<perm::Read>,
    Query(q): Query<DeadQuery>,
) -> ApiResult<Vec<RunItem>> {
    let runs = query_runs(
        &state,
        &RunQuery {
            flow: q.flow,
            state: Some("dead".into()),
            since: None,
            limit: Some(q.limit.unwrap_or(100)),
        },
    )
    .await?;
    Ok(Json(runs.iter().map(RunItem::from).collect()))
}

/// Replays one dead letter.
#[utoipa::path(post, path = "/dead-letters/{id}/replay", tag = "runs",
    params(("id" = String, Path, description = "Run id of the dead letter"), ReplayQuery),
    responses((status = 200, body = Replayed), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn replay_dead_one(
    State(state): State<ServerState>,
    who: Require<perm::Replay>,
    Source(source): Source,
    Path(id): Path<String>,
    Query(q): Query<ReplayQuery>,
) -> ApiResult<Replayed> {
    let d = run_detail(&state, &id).await?;
    if d.run.state != RunState::Dead {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "conflict",
            format!("run {id} is {}, not a dead letter", d.run.state),
        ));
    }
    let new = replay_run(&state, who.principal(), &source, &id, q.resume).await?;
    Ok(Json(Replayed {
        run_ids: vec![new.to_string()],
    }))
}

pub(crate) async fn replay_all(
    state: &ServerState,
    who: &Principal,
    source: &str,
    flow: Option<&str>,
) -> Result<Vec<RunId>, ApiError> {
    let ids = state.engine().store().replay_dead(flow).await?;
    audit(
        state,
        who,
        AuditAction::RunReplayed,
        flow.unwrap_or("*"),
        source,
        json!({ "dead_letters": ids.len(), "new_runs": ids.iter().map(ToString::to_string).collect::<Vec<_>>() }),
    )
    .await;
    Ok(ids)
}

/// Replays every dead letter not replayed yet (of one flow, or all).
#[utoipa::path(post, path = "/dead-letters/replay", tag = "runs", request_body = ReplayAll,
    responses((status = 200, body = Replayed)))]
async fn replay_dead_all(
    State(state): State<ServerState>,
    who: Require<perm::Replay>,
    Source(source): Source,
    Json(body): Json<ReplayAll>,
) -> ApiResult<Replayed> {
    let ids = replay_all(&state, who.principal(), &source, body.flow.as_deref()).await?;
    Ok(Json(Replayed {
        run_ids: ids.iter().map(ToString::to_string).collect(),
    }))
}
