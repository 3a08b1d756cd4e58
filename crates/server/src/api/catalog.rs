//! `/api/v1/catalog` (operations with their parameters, categories, trigger kinds and
//! webhook event types, for pickers), `/api/v1/templates` (the gallery, and making a flow
//! from a template), `/api/v1/mappings/preview` (render a mapping against a sample event)
//! and `/api/v1/dashboard`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hlbridge_engine::RunState;
use hlbridge_engine::template::{self, Compiler, Scope};
use hlbridge_highlevel::operations::Category;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::runs::{RunItem, RunQuery, query_runs};
use super::{ApiError, ApiResult, audit};
use crate::ServerState;
use crate::auth::{Require, Source, perm};
use crate::catalog::{OperationInfo, TriggerKind};
use crate::connections::ConnectionInfo;
use crate::gallery::TemplateInfo;
use crate::telemetry::Budget;

/// Catalog search.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct CatalogQuery {
    /// Words to find in the id, name or description.
    pub q: Option<String>,
    /// Category slug or label.
    pub category: Option<String>,
    /// `trigger` or `action`.
    pub kind: Option<String>,
}

/// A category.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CategoryInfo {
    /// Slug.
    pub slug: String,
    /// Label.
    pub label: String,
    /// Operations in it.
    pub operations: usize,
}

/// A HighLevel webhook event type.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookEvent {
    /// `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A sample payload.
    #[schema(value_type = Object)]
    pub sample: Value,
    /// Its fields as template paths.
    pub fields: Vec<String>,
}

/// What the trigger picker offers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Triggers {
    /// The trigger kinds.
    pub kinds: Vec<TriggerKind>,
    /// HighLevel webhook event types.
    pub webhook_events: Vec<WebhookEvent>,
    /// Operations a poll can use.
    pub poll_operations: Vec<String>,
}

/// Making a flow from a template.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct Instantiate {
    /// The new flow's id (default: the template's).
    #[serde(default)]
    pub id: Option<String>,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
}

/// A mapping to preview.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct PreviewInput {
    /// A mapping value: a template string (`"{{ event.email }}"`), or any JSON with
    /// templates inside.
    #[schema(value_type = Object)]
    pub mapping: Value,
    /// The sample event (`event`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub event: Value,
    /// Outputs of earlier steps (`steps.<id>`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub steps: Value,
    /// `item` and `index`, as inside a `for_each`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub item: Option<Value>,
    /// The flow id (`flow.id`).
    #[serde(default)]
    pub flow: Option<String>,
}

/// A rendered mapping.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Preview {
    /// Whether it rendered.
    pub ok: bool,
    /// The value (with its JSON type: a single `{{ expression }}` keeps it).
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    /// What went wrong (syntax, undefined variable…), with hints.
    pub errors: Vec<String>,
}

/// Runs of one flow by state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FlowRuns {
    /// Flow id.
    pub id: String,
    /// Name.
    pub name: Option<String>,
    /// Enabled.
    pub enabled: bool,
    /// Runs by state.
    pub runs: BTreeMap<String, u64>,
}

/// The dashboard.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Dashboard {
    /// Runs per flow and state.
    pub flows: Vec<FlowRuns>,
    /// Runs by state, all flows.
    pub totals: BTreeMap<String, u64>,
    /// Recent failures (dead letters and failed runs waiting for a retry).
    pub failures: Vec<RunItem>,
    /// Remaining rate-limit budget per location.
    pub budgets: Vec<Budget>,
    /// Connections and their health.
    pub connections: Vec<ConnectionInfo>,
}

pub(crate) fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new()
        .routes(routes!(operations))
        .routes(routes!(operation))
        .routes(routes!(categories))
        .routes(routes!(triggers))
        .routes(routes!(templates))
        .routes(routes!(instantiate))
        .routes(routes!(preview))
        .routes(routes!(dashboard))
}

/// Operations of the catalog with their parameters, filtered.
#[utoipa::path(get, path = "/catalog", tag = "catalog", params(CatalogQuery),
    responses((status = 200, body = Vec<OperationInfo>)))]
async fn operations(
    _who: Require<perm::Read>,
    Query(q): Query<CatalogQuery>,
) -> Json<Vec<OperationInfo>> {
    Json(
        crate::catalog::search(q.q.as_deref(), q.category.as_deref(), q.kind.as_deref())
            .into_iter()
            .map(OperationInfo::of)
            .collect(),
    )
}

/// One operation.
#[utoipa::path(get, path = "/catalog/operations/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Operation id")),
    responses((status = 200, body = OperationInfo), (status = 404, body = ApiError)))]
async fn operation(_who: Require<perm::Read>, Path(id): Path<String>) -> ApiResult<OperationInfo> {
    hlbridge_highlevel::operations::find(&id)
        .map(|op| Json(OperationInfo::of(op)))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "unknown operation `{id}`; nearest: {}",
                hlbridge_highlevel::operations::suggest(&id, 3).join(", ")
            ))
        })
}

/// The catalog's categories.
#[utoipa::path(get, path = "/catalog/categories", tag = "catalog",
    responses((status = 200, body = Vec<CategoryInfo>)))]
async fn categories(_who: Require<perm::Read>) -> Json<Vec<CategoryInfo>> {
    Json(
        Category::ALL
            .iter()
            .map(|c| CategoryInfo {
                slug: c.slug().to_owned(),
                label: c.label().to_owned(),
                operations: crate::catalog::search(None, Some(c.slug()), None).len(),
            })
            .collect(),
    )
}

/// Trigger kinds, HighLevel webhook event types with samples, and the operations a poll
/// can use.
#[utoipa::path(get, path = "/catalog/triggers", tag = "catalog",
    responses((status = 200, body = Triggers)))]
async fn triggers(_who: Require<perm::Read>) -> Json<Triggers> {
    Json(Triggers {
        kinds: crate::catalog::trigger_kinds(),
        webhook_events: crate::catalog::webhook_events()
            .into_iter()
            .map(|(k, v)| WebhookEvent {
                kind: k.to_owned(),
                fields: crate::catalog::fields("event", &v)
                    .into_iter()
                    .map(|(p, _)| p)
                    .collect(),
                sample: v,
            })
            .collect(),
        poll_operations: crate::catalog::search(None, None, Some("trigger"))
            .iter()
            .map(|o| o.id.to_owned())
            .collect(),
    })
}

/// The six ready templates.
#[utoipa::path(get, path = "/templates", tag = "catalog",
    responses((status = 200, body = Vec<TemplateInfo>)))]
async fn templates(_who: Require<perm::Read>) -> Json<Vec<TemplateInfo>> {
    Json(crate::gallery::TEMPLATES.iter().map(|t| t.info()).collect())
}

/// Creates a flow from a template (optionally with another id and name).
#[utoipa::path(post, path = "/templates/{id}/instantiate", tag = "catalog", request_body = Instantiate,
    params(("id" = String, Path, description = "Template id")),
    responses((status = 201, body = super::flows::FlowDetail), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn instantiate(
    State(state): State<ServerState>,
    who: Require<perm::EditFlows>,
    Source(source): Source,
    Path(id): Path<String>,
    Json(body): Json<Instantiate>,
) -> Result<Response, ApiError> {
    let t = crate::gallery::find(&id)
        .ok_or_else(|| ApiError::not_found(format!("no template `{id}`")))?;
    let flow_id = body.id.clone().unwrap_or_else(|| t.id.to_owned());
    let toml = t
        .instantiate(&flow_id, body.name.as_deref())
        .map_err(ApiError::bad_request)?;
    let saved = state.flows().save(state.engine(), &toml, None).await?;
    audit(
        &state,
        who.principal(),
        hlbridge_engine::security::AuditAction::FlowCreated,
        &flow_id,
        &source,
        json!({ "template": id, "file": saved.file }),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(super::flows::detail(&state, &flow_id).await?),
    )
        .into_response())
}

/// Renders a mapping the way a step would (same variables, strict undefined values).
pub(crate) fn render_preview(input: &PreviewInput) -> Preview {
    let step_ids: Vec<String> = input
        .steps
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut roots: Vec<&'static str> = template::ROOTS.to_vec();
    if input.item.is_some() {
        roots.extend_from_slice(template::LOOP_ROOTS);
    }
    let scope = Scope {
        roots,
        steps: step_ids.clone(),
        all_steps: step_ids,
    };
    let mut c = Compiler::new();
    let mapping = c.compile_value("mapping", &input.mapping, &scope);
    let (templates, issues) = c.finish();
    if !issues.is_empty() {
        return Preview {
            ok: false,
            value: None,
            errors: issues
                .iter()
                .map(|i| match &i.hint {
                    Some(h) => format!("{} (hint: {h})", i.message),
                    None => i.message.clone(),
                })
                .collect(),
        };
    }
    let flow_id = input.flow.clone().unwrap_or_else(|| "preview".into());
    let mut ctx = json!({
        "event": input.event,
        "trigger": { "type": "preview", "flow": flow_id, "dedupe_key": "preview", "received_at": "" },
        "flow": { "id": flow_id, "name": flow_id, "connection": "default", "location_id": Value::Null },
        "steps": if input.steps.is_object() { input.steps.clone() } else { json!({}) },
    });
    if let Some(item) = &input.item {
        ctx["item"] = item.clone();
        ctx["index"] = json!(0);
    }
    match mapping.render(&templates, &template::context(&ctx)) {
        Ok(v) => Preview {
            ok: true,
            value: Some(v),
            errors: Vec::new(),
        },
        Err(e) => Preview {
            ok: false,
            value: None,
            errors: vec![e.message],
        },
    }
}

/// Renders a mapping against a sample event (and sample step outputs).
#[utoipa::path(post, path = "/mappings/preview", tag = "catalog", request_body = PreviewInput,
    responses((status = 200, body = Preview)))]
async fn preview(_who: Require<perm::Read>, Json(input): Json<PreviewInput>) -> Json<Preview> {
    Json(render_preview(&input))
}

pub(crate) async fn build_dashboard(state: &ServerState) -> Result<Dashboard, ApiError> {
    let engine = state.engine();
    let mut flows = Vec::new();
    for f in engine.flows() {
        let runs = engine
            .store()
            .count_runs(Some(f.id()))
            .await?
            .into_iter()
            .map(|(s, n)| (s.as_str().to_owned(), n))
            .collect();
        flows.push(FlowRuns {
            id: f.id().to_owned(),
            name: f.flow.name.clone(),
            enabled: f.flow.enabled,
            runs,
        });
    }
    let totals = engine
        .store()
        .count_runs(None)
        .await?
        .into_iter()
        .map(|(s, n)| (s.as_str().to_owned(), n))
        .collect();
    let mut failures = Vec::new();
    for st in [RunState::Dead, RunState::Failed] {
        let q = RunQuery {
            state: Some(st.as_str().into()),
            limit: Some(10),
            ..RunQuery::default()
        };
        failures.extend(query_runs(state, &q).await?.iter().map(RunItem::from));
    }
    failures.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    failures.truncate(10);
    Ok(Dashboard {
        flows,
        totals,
        failures,
        budgets: state.telemetry().budgets(),
        connections: state.connections().list().await,
    })
}

/// Runs per flow and state, recent failures, each location's remaining rate-limit budget,
/// connection health.
#[utoipa::path(get, path = "/dashboard", tag = "catalog", responses((status = 200, body = Dashboard)))]
async fn dashboard(
    State(state): State<ServerState>,
    _who: Require<perm::Read>,
) -> ApiResult<Dashboard> {
    Ok(Json(build_dashboard(&state).await?))
}
