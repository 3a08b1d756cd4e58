//! `/api/v1/flows`: list, get (TOML and parsed), create and update (from TOML or JSON),
//! enable, disable, validate (every diagnostic), export, and test against the sandbox.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hlbridge_engine::flow::{Flow, Trigger};
use hlbridge_engine::security::AuditAction;
use hlbridge_engine::validate::compile_source;
use hlbridge_engine::{Diagnostic, Engine};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiResult, audit};
use crate::ServerState;
use crate::auth::{Require, Source, perm};
use crate::flowstore::{FlowSource, to_toml, trigger_text};
use crate::tester::{TestCase, TestReport};

/// A flow as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FlowSummary {
    /// Id.
    pub id: String,
    /// Name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Whether its trigger fires.
    pub enabled: bool,
    /// Trigger type.
    pub trigger_type: String,
    /// Trigger, for people.
    pub trigger: String,
    /// Number of top-level steps.
    pub steps: usize,
    /// The file it is saved in.
    pub file: Option<String>,
    /// Runs by state.
    pub runs: BTreeMap<String, u64>,
    /// For app webhook flows: the path apps POST to.
    pub webhook_path: Option<String>,
}

/// A flow with its source.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FlowDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: FlowSummary,
    /// The TOML text.
    pub toml: String,
    /// The parsed definition.
    #[schema(value_type = Object)]
    pub definition: Value,
    /// Steps, one line each.
    pub step_lines: Vec<String>,
}

/// A flow given as TOML text or as JSON (the flow file's structure).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct FlowInput {
    /// The flow file's text.
    #[serde(default)]
    pub toml: Option<String>,
    /// The flow as JSON.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub flow: Option<Value>,
}

/// Validation result.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Validation {
    /// Whether it compiles.
    pub valid: bool,
    /// Every problem, with line and column in `toml`.
    #[schema(value_type = Vec<Object>)]
    pub diagnostics: Vec<Diagnostic>,
    /// The TOML text checked.
    pub toml: String,
}

/// What to test.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct TestInput {
    /// Events to send (one case); when absent, the flow's behaviour test runs.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub events: Option<Vec<Value>>,
    /// Setup calls and events, as explicit cases.
    #[serde(default)]
    pub cases: Option<Vec<TestCase>>,
    /// Start the sandbox with its demo location (about 300 contacts).
    #[serde(default)]
    pub seed_demo: bool,
}

/// Testing an unsaved flow.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct TestUnsaved {
    /// The flow.
    #[serde(flatten)]
    pub flow: FlowInput,
    /// What to run.
    #[serde(flatten)]
    pub test: TestInput,
}

pub(crate) fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(validate))
        .routes(routes!(test_unsaved))
        .routes(routes!(get_flow, update))
        .routes(routes!(export))
        .routes(routes!(enable))
        .routes(routes!(disable))
        .routes(routes!(test_saved))
}

/// The TOML text of a flow input.
pub(crate) fn input_toml(input: &FlowInput) -> Result<String, ApiError> {
    match (&input.toml, &input.flow) {
        (Some(t), None) => Ok(t.clone()),
        (None, Some(v)) => {
            let flow: Flow = serde_json::from_value(v.clone()).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_flow",
                    format!("the flow JSON does not match the flow schema: {e}"),
                )
            })?;
            to_toml(&flow).map_err(ApiError::bad_request)
        }
        _ => Err(ApiError::bad_request(
            "give exactly one of `toml` (the flow file's text) or `flow` (JSON)",
        )),
    }
}

pub(crate) async fn summary(engine: &Engine, flow: &Flow, file: Option<String>) -> FlowSummary {
    let runs = engine
        .store()
        .count_runs(Some(&flow.id))
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(s, n)| (s.as_str().to_owned(), n))
        .collect();
    FlowSummary {
        id: flow.id.clone(),
        name: flow.name.clone(),
        description: flow.description.clone(),
        enabled: flow.enabled,
        trigger_type: flow.trigger.kind().to_owned(),
        trigger: trigger_text(flow),
        steps: flow.steps.len(),
        file,
        runs,
        webhook_path: matches!(flow.trigger, Trigger::AppWebhook(_))
            .then(|| format!("/hooks/app/{}", flow.id)),
    }
}

pub(crate) async fn detail(state: &ServerState, id: &str) -> Result<FlowDetail, ApiError> {
    let engine = state.engine();
    let compiled = engine
        .flow(id)
        .ok_or_else(|| ApiError::not_found(format!("unknown flow `{id}`")))?;
    let source = state
        .flows()
        .source(engine, id)
        .unwrap_or_else(|| FlowSource {
            toml: to_toml(&compiled.flow).unwrap_or_default(),
            file: compiled.file.clone(),
        });
    Ok(FlowDetail {
        summary: summary(engine, &compiled.flow, source.file.clone()).await,
        toml: source.toml,
        definition: serde_json::to_value(&compiled.flow).unwrap_or(Value::Null),
        step_lines: crate::catalog::step_summaries(&compiled.flow.steps),
    })
}

/// Every flow (file-defined and UI-built alike), with run counts.
#[utoipa::path(get, path = "/flows", tag = "flows", responses((status = 200, body = Vec<FlowSummary>)))]
async fn list(
    State(state): State<ServerState>,
    _who: Require<perm::Read>,
) -> ApiResult<Vec<FlowSummary>> {
    let engine = state.engine();
    let mut out = Vec::new();
    for f in engine.flows() {
        let file = state.flows().source(engine, f.id()).and_then(|s| s.file);
        out.push(summary(engine, &f.flow, file).await);
    }
    Ok(Json(out))
}

/// A flow: its TOML, its parsed definition and run counts.
#[utoipa::path(get, path = "/flows/{id}", tag = "flows",
    params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, body = FlowDetail), (status = 404, body = ApiError)))]
async fn get_flow(
    State(state): State<ServerState>,
    _who: Require<perm::Read>,
    Path(id): Path<String>,
) -> ApiResult<FlowDetail> {
    Ok(Json(detail(&state, &id).await?))
}

/// Creates a flow from TOML or JSON (compiled like a file: every error is reported).
#[utoipa::path(post, path = "/flows", tag = "flows", request_body = FlowInput,
    responses((status = 201, body = FlowDetail), (status = 409, body = ApiError),
              (status = 422, description = "Does not compile; `details.diagnostics` lists every problem", body = ApiError)))]
async fn create(
    State(state): State<ServerState>,
    who: Require<perm::EditFlows>,
    Source(source): Source,
    Json(input): Json<FlowInput>,
) -> Result<Response, ApiError> {
    let toml = input_toml(&input)?;
    let saved = state.flows().save(state.engine(), &toml, None).await?;
    let id = compile_source("flow.toml", &toml, &Default::default())
        .map(|c| c.id().to_owned())
        .unwrap_or_default();
    audit(
        &state,
        who.principal(),
        AuditAction::FlowCreated,
        &id,
        &source,
        json!({ "file": saved.file }),
    )
    .await;
    Ok((StatusCode::CREATED, Json(detail(&state, &id).await?)).into_response())
}

/// Replaces a flow's definition (its id must stay the same).
#[utoipa::path(put, path = "/flows/{id}", tag = "flows", request_body = FlowInput,
    params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, body = FlowDetail), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn update(
    State(state): State<ServerState>,
    who: Require<perm::EditFlows>,
    Source(source): Source,
    Path(id): Path<String>,
    Json(input): Json<FlowInput>,
) -> ApiResult<FlowDetail> {
    let toml = input_toml(&input)?;
    let saved = state.flows().save(state.engine(), &toml, Some(&id)).await?;
    audit(
        &state,
        who.principal(),
        AuditAction::FlowChanged,
        &id,
        &source,
        json!({ "file": saved.file }),
    )
    .await;
    Ok(Json(detail(&state, &id).await?))
}

pub(crate) async fn set_enabled(
    state: &ServerState,
    who: &crate::auth::Principal,
    source: &str,
    id: &str,
    enabled: bool,
) -> Result<FlowDetail, ApiError> {
    state
        .flows()
        .set_enabled(state.engine(), id, enabled)
        .await?;
    audit(
        state,
        who,
        if enabled {
            AuditAction::FlowEnabled
        } else {
            AuditAction::FlowDisabled
        },
        id,
        source,
        json!({}),
    )
    .await;
    detail(state, id).await
}

/// Enables a flow (its trigger fires).
#[utoipa::path(post, path = "/flows/{id}/enable", tag = "flows",
    params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, body = FlowDetail), (status = 404, body = ApiError)))]
async fn enable(
    State(state): State<ServerState>,
    who: Require<perm::EditFlows>,
    Source(source): Source,
    Path(id): Path<String>,
) -> ApiResult<FlowDetail> {
    Ok(Json(
        set_enabled(&state, who.principal(), &source, &id, true).await?,
    ))
}

/// Disables a flow (validated, but its trigger does not fire).
#[utoipa::path(post, path = "/flows/{id}/disable", tag = "flows",
    params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, body = FlowDetail), (status = 404, body = ApiError)))]
async fn disable(
    State(state): State<ServerState>,
    who: Require<perm::EditFlows>,
    Source(source): Source,
    Path(id): Path<String>,
) -> ApiResult<FlowDetail> {
    Ok(Json(
        set_enabled(&state, who.principal(), &source, &id, false).await?,
    ))
}

/// Compiles a flow without saving it: every diagnostic, with line and column.
#[utoipa::path(post, path = "/flows/validate", tag = "flows", request_body = FlowInput,
    responses((status = 200, body = Validation)))]
async fn validate(
    State(state): State<ServerState>,
    _who: Require<perm::Read>,
    Json(input): Json<FlowInput>,
) -> ApiResult<Validation> {
    let toml = input_toml(&input)?;
    let diagnostics = match compile_source("flow.toml", &toml, &state.engine().validation_context())
    {
        Ok(_) => Vec::new(),
        Err(d) => d,
    };
    Ok(Json(Validation {
        valid: diagnostics.is_empty(),
        diagnostics,
        toml,
    }))
}

/// A flow's file, as a download.
#[utoipa::path(get, path = "/flows/{id}/export", tag = "flows",
    params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, description = "The flow file (TOML)", content_type = "application/toml", body = String), (status = 404, body = ApiError)))]
async fn export(
    State(state): State<ServerState>,
    _who: Require<perm::Read>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    export_response(&state, &id)
}

pub(crate) fn export_response(state: &ServerState, id: &str) -> Result<Response, ApiError> {
    let source = state
        .flows()
        .source(state.engine(), id)
        .ok_or_else(|| ApiError::not_found(format!("unknown flow `{id}`")))?;
    let disposition = format!("attachment; filename=\"{id}.toml\"");
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/toml; charset=utf-8".to_owned(),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        source.toml,
    )
        .into_response())
}

/// The behaviour test of a loaded flow: `tests/<name>.test.toml` beside its file, else the
/// template's of the same id.
pub(crate) fn behaviour_test(state: &ServerState, id: &str) -> Option<String> {
    let file = state
        .flows()
        .source(state.engine(), id)
        .and_then(|s| s.file);
    if let Some(file) = file {
        let p = std::path::Path::new(&file);
        if let (Some(dir), Some(stem)) = (p.parent(), p.file_stem()) {
            let t = dir
                .join("tests")
                .join(format!("{}.test.toml", stem.to_string_lossy()));
            if let Ok(text) = std::fs::read_to_string(t) {
                return Some(text);
            }
        }
    }
    crate::gallery::find(id).map(|t| t.test.to_owned())
}

pub(crate) async fn run_test(
    toml: &str,
    test: &TestInput,
    behaviour: Option<String>,
) -> Result<TestReport, ApiError> {
    let (cases, seed_demo) = match (&test.cases, &test.events) {
        (Some(c), _) => (c.clone(), test.seed_demo),
        (None, Some(events)) => (
            vec![TestCase {
                name: "given events".into(),
                events: events.clone(),
                ..TestCase::default()
            }],
            test.seed_demo,
        ),
        (None, None) => {
            let text = behaviour.ok_or_else(|| {
                ApiError::bad_request(
                    "this flow has no behaviour test: give `events` (or `cases`) to send",
                )
            })?;
            let file = crate::tester::parse_test_file(&text).map_err(ApiError::bad_request)?;
            (
                file.cases,
                test.seed_demo || file.seed.as_deref() == Some("demo"),
            )
        }
    };
    crate::tester::run(toml, &cases, seed_demo)
        .await
        .map_err(|e| match e {
            crate::tester::TestError::Invalid(d) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_flow",
                format!("{} error(s) in the flow", d.len()),
            )
            .with_details(json!({ "diagnostics": d })),
            crate::tester::TestError::BadTest(m) => ApiError::bad_request(m),
            crate::tester::TestError::Environment(m) => ApiError::unavailable(m),
        })
}

/// Tests a saved flow against a fresh in-process sandbox: its behaviour test, or the given
/// events; every run's steps with their request and response.
#[utoipa::path(post, path = "/flows/{id}/test", tag = "flows", request_body = TestInput,
    params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, body = TestReport), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn test_saved(
    State(state): State<ServerState>,
    _who: Require<perm::EditFlows>,
    Path(id): Path<String>,
    Json(test): Json<TestInput>,
) -> ApiResult<TestReport> {
    let source = state
        .flows()
        .source(state.engine(), &id)
        .ok_or_else(|| ApiError::not_found(format!("unknown flow `{id}`")))?;
    Ok(Json(
        run_test(&source.toml, &test, behaviour_test(&state, &id)).await?,
    ))
}

/// Tests an unsaved flow (TOML or JSON) against a fresh in-process sandbox.
#[utoipa::path(post, path = "/flows/test", tag = "flows", request_body = TestUnsaved,
    responses((status = 200, body = TestReport), (status = 400, body = ApiError), (status = 422, body = ApiError)))]
async fn test_unsaved(
    State(_state): State<ServerState>,
    _who: Require<perm::EditFlows>,
    Json(body): Json<TestUnsaved>,
) -> ApiResult<TestReport> {
    let toml = input_toml(&body.flow)?;
    let id = toml::from_str::<Flow>(&toml).ok().map(|f| f.id);
    let behaviour = id
        .as_deref()
        .and_then(crate::gallery::find)
        .map(|t| t.test.to_owned());
    Ok(Json(run_test(&toml, &body.test, behaviour).await?))
}
