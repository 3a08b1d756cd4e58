//! The UI's pages other than the flow builder.

use std::collections::BTreeMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hlbridge_engine::RunState;
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    Flash, csrf, flash, health_badge, json_block, page, respond, see_other, short_time, state_badge,
};
use crate::ServerState;
use crate::access::AuditFilter;
use crate::api::ApiError;
use crate::api::admin::{NewToken, NewUser, UserChange};
use crate::api::runs::{RunItem, RunQuery, RunView};
use crate::api::session::Loopback;
use crate::auth::{Action, MaybeAuthed, Principal, Require, Role, Source, perm};
use crate::connections::NewConnection;

/// `?ok=<code>`: a fixed message after a successful form post.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Done {
    ok: Option<String>,
}

impl Done {
    fn flash(&self) -> Option<Flash> {
        let text = match self.ok.as_deref()? {
            "enabled" => "The flow is enabled: its trigger fires.",
            "disabled" => "The flow is disabled: its trigger no longer fires.",
            "saved" => "Flow saved.",
            "created" => "Created.",
            "replayed" => "Replay queued: a new run was enqueued with the same event.",
            "resumed" => {
                "Run resumed: a new run keeps the steps that succeeded and starts at the failed one."
            }
            "replayed_all" => "Every dead letter was queued again.",
            "refreshed" => "Connection checked.",
            "changed" => "Saved.",
            "removed" => "Removed.",
            "revoked" => "Token revoked.",
            _ => return None,
        };
        Some(Flash::Ok(text.to_owned()))
    }
}

fn error_flash(e: &ApiError) -> Flash {
    let mut text = e.message.clone();
    if let Some(d) = e
        .details
        .as_ref()
        .and_then(|d| d.get("diagnostics"))
        .and_then(|d| d.as_array())
    {
        for x in d.iter().take(5) {
            text.push_str(&format!(
                " · line {}: {}",
                x["line"],
                x["message"].as_str().unwrap_or_default()
            ));
        }
    }
    Flash::Bad(text)
}

fn states_bar(runs: &BTreeMap<String, u64>) -> Markup {
    let total: u64 = runs.values().sum();
    html! {
        @if total > 0 {
            div.bar-chart role="img" aria-label=(runs.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")) {
                @for (state, n) in runs {
                    span class=(format!("b-{state}")) style=(format!("width:{:.2}%", *n as f64 * 100.0 / total as f64)) {}
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Login, setup, logout

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    user: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/".to_owned(),
    }
}

fn login_page(next: &str, setup: Option<bool>, message: Option<Flash>) -> Markup {
    page(
        "Sign in",
        None,
        "",
        html! {
            div.login {
                @if let Some(f) = &message { (flash(f)) }
                div.panel {
                    @match setup {
                        Some(true) => {
                            h1 { "Create the owner account" }
                            p.muted { "No user exists yet. The first account is an owner: it can add other users and API tokens." }
                            form method="post" action="/setup" {
                                label for="user" { "User name" }
                                input #user name="user" type="text" autocomplete="username" required autofocus;
                                label for="password" { "Password" }
                                input #password name="password" type="password" autocomplete="new-password" minlength="8" required;
                                p.hint { "At least 8 characters." }
                                div.actions { button type="submit" { "Create and sign in" } }
                            }
                        }
                        Some(false) => {
                            h1 { "No users yet" }
                            p { "Create the first user on the server's machine: open this page there, or run " code { "hlbridge users add <name> --role owner" } "." }
                        }
                        None => {
                            h1 { "Sign in to hlbridge" }
                            form method="post" action="/login" {
                                input type="hidden" name="next" value=(next);
                                label for="user" { "User name" }
                                input #user name="user" type="text" autocomplete="username" required autofocus;
                                label for="password" { "Password" }
                                input #password name="password" type="password" autocomplete="current-password" required;
                                div.actions { button type="submit" { "Sign in" } }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub(crate) async fn login_form(
    State(state): State<ServerState>,
    MaybeAuthed(who): MaybeAuthed,
    loopback: Loopback,
    Query(q): Query<LoginQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    if who.is_some() {
        return see_other(&next);
    }
    let has_users = state.access().has_users().await.unwrap_or(true);
    let setup = (!has_users).then_some(loopback.0);
    respond(login_page(&next, setup, None))
}

fn with_cookie(resp: Response, s: &crate::access::NewSession) -> Response {
    let mut resp = resp;
    resp.headers_mut().insert(
        header::SET_COOKIE,
        crate::auth::session_cookie(&s.id, s.max_age_secs),
    );
    resp
}

pub(crate) async fn login(
    State(state): State<ServerState>,
    Source(source): Source,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    match crate::api::session::sign_in(&state, &f.user, &f.password, &source).await {
        Ok(s) => with_cookie(see_other(&next), &s),
        Err(e) => {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNAUTHORIZED);
            (
                status,
                respond(login_page(&next, None, Some(Flash::Bad(e.message)))),
            )
                .into_response()
        }
    }
}

pub(crate) async fn setup(
    State(state): State<ServerState>,
    Source(source): Source,
    loopback: Loopback,
    Form(f): Form<LoginForm>,
) -> Response {
    match crate::api::session::create_first_owner(&state, loopback.0, &f.user, &f.password, &source)
        .await
    {
        Ok(s) => with_cookie(see_other("/"), &s),
        Err(e) => (
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            respond(login_page(
                "/",
                Some(loopback.0),
                Some(Flash::Bad(e.message)),
            )),
        )
            .into_response(),
    }
}

pub(crate) async fn logout(
    State(state): State<ServerState>,
    _who: crate::auth::Authed,
    Source(source): Source,
    headers: HeaderMap,
) -> Response {
    if let Some(id) = crate::api::session::session_id(&headers) {
        state.access().logout(&id, &source).await;
    }
    let mut resp = see_other("/login");
    resp.headers_mut()
        .insert(header::SET_COOKIE, crate::auth::clear_cookie());
    resp
}

// ---------------------------------------------------------------------------------------
// Dashboard

pub(crate) async fn dashboard(
    State(state): State<ServerState>,
    who: Require<perm::Read>,
) -> Response {
    let p = who.principal();
    let d = match crate::api::catalog::build_dashboard(&state).await {
        Ok(d) => d,
        Err(e) => return super::error_page(StatusCode::SERVICE_UNAVAILABLE, &e.message),
    };
    let states: Vec<&str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
    let body = html! {
        h1 { "Dashboard" }
        div.tiles {
            @for s in &states {
                div.panel {
                    div.muted.small { (s) }
                    div.n { (d.totals.get(*s).copied().unwrap_or(0)) }
                    a.small href=(format!("/runs?state={s}")) aria-label=(format!("See the {s} runs")) { "See runs" }
                }
            }
        }
        h2 { "Runs per flow" }
        @if d.flows.is_empty() {
            div.panel {
                p { "No flows yet." }
                @if p.can(Action::EditFlows) {
                    p { a.button href="/templates" { "Start from a template" } " " a.button.secondary href="/flows/new" { "Build a flow" } }
                }
            }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Flow" } th scope="col" { "Status" }
                    @for s in &states { th.num scope="col" { (s) } }
                    th scope="col" { "Share" }
                } }
                tbody {
                    @for f in &d.flows {
                        tr {
                            td { a href=(format!("/flows/{}", f.id)) { (f.id) } br; span.muted.small { (f.name.clone().unwrap_or_default()) } }
                            td { @if f.enabled { span.badge.h-ok { "enabled" } } @else { span.badge.s-skipped { "disabled" } } }
                            @for s in &states {
                                td.num {
                                    @let n = f.runs.get(*s).copied().unwrap_or(0);
                                    @if n > 0 { a href=(format!("/runs?flow={}&state={s}", f.id)) { (n) } } @else { span.muted { "0" } }
                                }
                            }
                            td { (states_bar(&f.runs)) }
                        }
                    }
                }
            }
        }
        div.grid2 {
            div {
                h2 { "Recent failures" }
                @if d.failures.is_empty() {
                    div.panel { p.muted { "No failed runs and no dead letters." } }
                } @else {
                    (runs_table(&d.failures))
                    p { a href="/dead-letters" { "All dead letters" } }
                }
            }
            div {
                h2 { "Rate-limit budget" }
                @if d.budgets.is_empty() {
                    div.panel { p.muted { "No budget known yet: each location's remaining rate-limit budget shows here once this server's HighLevel client has called it." } }
                } @else {
                    table {
                        thead { tr { th scope="col" { "Location" } th.num scope="col" { "Burst left" } th.num scope="col" { "Today left" } th scope="col" { "From" } } }
                        tbody {
                            @for b in &d.budgets {
                                tr {
                                    td { @if b.location == "global" { span.muted { "calls naming no location" } } @else { span.mono { (b.location) } } }
                                    td.num { (b.burst_remaining) " / " (b.burst) }
                                    td.num { (b.daily_remaining) " / " (b.daily_limit) }
                                    td.small.muted { (if b.source == "client" { "pacing estimate" } else { "last headers" }) }
                                }
                            }
                        }
                    }
                }
                h2 { "Connections" }
                (connections_table(&d.connections, None))
            }
        }
    };
    respond(page("Dashboard", Some(p), "/", body))
}

pub(crate) fn runs_table(runs: &[RunItem]) -> Markup {
    html! {
        table {
            thead { tr {
                th scope="col" { "Run" } th scope="col" { "Flow" } th scope="col" { "State" } th.num scope="col" { "Attempts" }
                th scope="col" { "Created (UTC)" } th.num scope="col" { "Took" } th scope="col" { "Error" }
            } }
            tbody {
                @for r in runs {
                    tr {
                        td.mono { a href=(format!("/runs/{}", r.id)) { (r.id.get(..8).unwrap_or(&r.id)) "…" } }
                        td { a href=(format!("/flows/{}", r.flow_id)) { (r.flow_id) } }
                        td { (state_badge(&r.state)) @if r.replay_of.is_some() { " " span.muted.small { "replay" } } }
                        td.num { (r.attempts) }
                        td.small { (short_time(&r.created_at)) }
                        td.num.small { @if let Some(ms) = r.duration_ms { (ms) " ms" } }
                        td.small { (r.last_error.clone().unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

fn connections_table(
    conns: &[crate::connections::ConnectionInfo],
    who: Option<&Principal>,
) -> Markup {
    html! {
        @if conns.is_empty() {
            div.panel { p.muted { "No connections configured." } }
        } @else {
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Kind" } th scope="col" { "Health" } th scope="col" { "Details" }
                    @if who.is_some_and(|p| p.can(Action::EditConnections)) { th scope="col" { span.muted { "Action" } } } } }
                tbody {
                    @for c in conns {
                        tr {
                            td { strong { (c.name) } }
                            td { (c.kind) }
                            td { (health_badge(&c.health)) }
                            td.small {
                                @if !c.detail.is_empty() { span.mono { (c.detail) } br; }
                                (c.message.clone().unwrap_or_default())
                                @if let Some(at) = &c.checked_at { br; span.muted { "checked " (short_time(at)) } }
                            }
                            @if let Some(p) = who.filter(|p| p.can(Action::EditConnections)) {
                                td {
                                    form method="post" action=(format!("/connections/{}/refresh", c.name)) {
                                        (csrf(p))
                                        button.small.secondary type="submit" aria-label=(format!("Refresh {}", c.name)) { "Refresh" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Flows

pub(crate) async fn flows(
    State(state): State<ServerState>,
    who: Require<perm::Read>,
    Query(done): Query<Done>,
) -> Response {
    let p = who.principal();
    let engine = state.engine();
    let mut list = Vec::new();
    for f in engine.flows() {
        let file = state.flows().source(engine, f.id()).and_then(|s| s.file);
        list.push(crate::api::flows::summary(engine, &f.flow, file).await);
    }
    let body = html! {
        @if let Some(f) = done.flash() { (flash(&f)) }
        h1 { "Flows" }
        p.lead { "Flow files and flows built here are the same thing: each is a TOML file you can download, and flow files loaded at start show here." }
        @if p.can(Action::EditFlows) {
            div.actions {
                a.button href="/flows/new" { "Build a new flow" }
                a.button.secondary href="/templates" { "Start from a template" }
            }
        }
        @if list.is_empty() {
            div.panel { p.muted { "No flows loaded." } }
        } @else {
            table {
                thead { tr { th scope="col" { "Flow" } th scope="col" { "Trigger" } th.num scope="col" { "Steps" } th scope="col" { "Status" } th scope="col" { "Runs" } th scope="col" { "File" } } }
                tbody {
                    @for f in &list {
                        tr {
                            td { a href=(format!("/flows/{}", f.id)) { strong { (f.id) } } br; span.muted.small { (f.name.clone().unwrap_or_default()) } }
                            td.small { (f.trigger) }
                            td.num { (f.steps) }
                            td { @if f.enabled { span.badge.h-ok { "enabled" } } @else { span.badge.s-skipped { "disabled" } } }
                            td { (states_bar(&f.runs)) span.small.muted { (f.runs.values().sum::<u64>()) " runs" } }
                            td.small.mono { (f.file.clone().unwrap_or_else(|| "— (not saved to a file)".into())) }
                        }
                    }
                }
            }
        }
    };
    respond(page("Flows", Some(p), "/flows", body))
}

pub(crate) async fn flow(
    State(state): State<ServerState>,
    who: Require<perm::Read>,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Response {
    flow_page(&state, who.principal(), &id, done.flash()).await
}

async fn flow_page(
    state: &ServerState,
    p: &Principal,
    id: &str,
    message: Option<Flash>,
) -> Response {
    let d = match crate::api::flows::detail(state, id).await {
        Ok(d) => d,
        Err(e) => return super::error_page(StatusCode::NOT_FOUND, &e.message),
    };
    let runs = crate::api::runs::query_runs(
        state,
        &RunQuery {
            flow: Some(id.to_owned()),
            limit: Some(15),
            ..RunQuery::default()
        },
    )
    .await
    .unwrap_or_default();
    let items: Vec<RunItem> = runs.iter().map(RunItem::from).collect();
    let s = &d.summary;
    let body = html! {
        @if let Some(f) = &message { (flash(f)) }
        h1 { "Flow " code { (s.id) } }
        p.lead { (s.name.clone().unwrap_or_default()) @if let Some(desc) = &s.description { " — " (desc) } }
        div.actions {
            @if p.can(Action::EditFlows) {
                a.button href=(format!("/flows/{}/edit", s.id)) { "Edit in the builder" }
                @if s.enabled {
                    form method="post" action=(format!("/flows/{}/disable", s.id)) { (csrf(p)) button.secondary type="submit" { "Disable" } }
                } @else {
                    form method="post" action=(format!("/flows/{}/enable", s.id)) { (csrf(p)) button.secondary type="submit" { "Enable" } }
                }
            }
            a.button.secondary href=(format!("/flows/{}/export", s.id)) download=(format!("{}.toml", s.id)) { "Download TOML" }
            a.button.secondary href=(format!("/runs?flow={}", s.id)) { "All runs" }
        }
        div.grid2 {
            div.panel {
                h2 { "Definition" }
                dl.kv {
                    dt { "Status" } dd { @if s.enabled { span.badge.h-ok { "enabled" } } @else { span.badge.s-skipped { "disabled" } } }
                    dt { "Trigger" } dd { (s.trigger) }
                    @if let Some(path) = &s.webhook_path { dt { "Webhook URL" } dd.mono { (path) } }
                    dt { "File" } dd.mono { (s.file.clone().unwrap_or_else(|| "not saved to a file (download it to keep it)".into())) }
                }
                h3 { "Steps" }
                pre { (d.step_lines.join("\n")) }
                details {
                    summary { "The flow file (TOML)" }
                    pre { (d.toml) }
                }
            }
            div.panel {
                h2 { "Runs by state" }
                @if s.runs.is_empty() { p.muted { "No runs yet." } } @else {
                    dl.kv { @for (k, v) in &s.runs { dt { (state_badge(k)) } dd { (v) } } }
                }
            }
        }
        h2 { "Recent runs" }
        @if items.is_empty() { div.panel { p.muted { "No runs yet." } } } @else { (runs_table(&items)) }
    };
    respond(page(&format!("Flow {id}"), Some(p), "/flows", body))
}

pub(crate) async fn export(
    State(state): State<ServerState>,
    _who: Require<perm::Read>,
    Path(id): Path<String>,
) -> Response {
    match crate::api::flows::export_response(&state, &id) {
        Ok(r) => r,
        Err(e) => super::error_page(StatusCode::NOT_FOUND, &e.message),
    }
}

pub(crate) async fn enable(
    State(state): State<ServerState>,
    who: Require<perm::EditFlows>,
    Source(source): Source,
    Path(id): Path<String>,
) -> Response {
    toggle(&state, who.principal(), &source, &id, true).await
}

pub(crate) async fn disable(
    State(state): State<ServerState>,
    who: Require<perm::EditFlows>,
    Source(source): Source,
    Path(id): Path<String>,
) -> Response {
    toggle(&state, who.principal(), &source, &id, false).await
}

async fn toggle(state: &ServerState, p: &Principal, source: &str, id: &str, on: bool) -> Response {
    match crate::api::flows::set_enabled(state, p, source, id, on).await {
        Ok(_) => see_other(&format!(
            "/flows/{id}?ok={}",
            if on { "enabled" } else { "disabled" }
        )),
        Err(e) => flow_page(state, p, id, Some(error_flash(&e))).await,
    }
}

// ---------------------------------------------------------------------------------------
// Templates

pub(crate) async fn templates(who: Require<perm::Read>) -> Response {
    let p = who.principal();
    let body = html! {
        h1 { "Templates" }
        p.lead { "Six ready flows for the usual patterns. Open one in the builder, adjust it, test it against the sandbox, and save it." }
        div.cards {
            @for t in crate::gallery::TEMPLATES {
                @let info = t.info();
                article.card {
                    div.pattern { (info.pattern) }
                    h2 { (info.name) }
                    p.small { (info.description) }
                    div.small { strong { "Trigger: " } (info.trigger) }
                    ul { @for s in &info.steps { li.mono { (s) } } }
                    details { summary.small { "Flow file" } pre { (info.toml) } }
                    div.actions {
                        @if p.can(Action::EditFlows) {
                            a.button href=(format!("/flows/new?template={}", info.id)) aria-label=(format!("Use the template {}", info.name)) { "Use this template" }
                        }
                    }
                }
            }
        }
    };
    respond(page("Templates", Some(p), "/templates", body))
}

// ---------------------------------------------------------------------------------------
// Runs

fn since_to_rfc3339(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() || s.ends_with('Z') || s.contains('+') {
        return s.to_owned();
    }
    // `datetime-local` gives `YYYY-MM-DDTHH:MM` (UTC here).
    match s.len() {
        16 => format!("{s}:00Z"),
        19 => format!("{s}Z"),
        _ => s.to_owned(),
    }
}

pub(crate) async fn runs(
    State(state): State<ServerState>,
    who: Require<perm::Read>,
    Query(mut q): Query<RunQuery>,
) -> Response {
    let p = who.principal();
    q.since = q.since.map(|s| since_to_rfc3339(&s));
    let (items, problem) = match crate::api::runs::query_runs(&state, &q).await {
        Ok(r) => (r.iter().map(RunItem::from).collect::<Vec<_>>(), None),
        Err(e) => (Vec::new(), Some(Flash::Bad(e.message))),
    };
    let flows: Vec<String> = state
        .engine()
        .flows()
        .iter()
        .map(|f| f.id().to_owned())
        .collect();
    let cur_flow = q.flow.clone().unwrap_or_default();
    let cur_state = q.state.clone().unwrap_or_default();
    let since_value = q
        .since
        .as_deref()
        .map(|s| {
            s.trim_end_matches('Z')
                .get(..16)
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default();
    let body = html! {
        h1 { "Runs" }
        @if let Some(f) = &problem { (flash(f)) }
        form.filters method="get" action="/runs" {
            div { label for="f-flow" { "Flow" }
                select #f-flow name="flow" {
                    option value="" { "All flows" }
                    @for f in &flows { option value=(f) selected[*f == cur_flow] { (f) } }
                }
            }
            div { label for="f-state" { "State" }
                select #f-state name="state" {
                    option value="" { "Any state" }
                    @for s in RunState::ALL { option value=(s.as_str()) selected[s.as_str() == cur_state] { (s.as_str()) } }
                }
            }
            div { label for="f-since" { "Since (UTC)" }
                input #f-since type="datetime-local" name="since" value=(since_value);
            }
            div { label for="f-limit" { "Show" }
                select #f-limit name="limit" {
                    @for n in [50u32, 200, 1000] { option value=(n) selected[q.limit == Some(n)] { (n) } }
                }
            }
            div.narrow { button type="submit" { "Filter" } }
        }
        @if items.is_empty() { div.panel { p.muted { "No runs match." } } } @else { (runs_table(&items)) }
    };
    respond(page("Runs", Some(p), "/runs", body))
}

pub(crate) async fn run(
    State(state): State<ServerState>,
    who: Require<perm::Read>,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Response {
    run_page(&state, who.principal(), &id, done.flash()).await
}

async fn run_page(
    state: &ServerState,
    p: &Principal,
    id: &str,
    message: Option<Flash>,
) -> Response {
    let d = match crate::api::runs::run_detail(state, id).await {
        Ok(d) => d,
        Err(e) => return super::error_page(StatusCode::NOT_FOUND, &e.message),
    };
    let v = RunView::from(&d);
    let r = &v.run;
    let finished = d.run.state.is_final();
    let body = html! {
        @if let Some(f) = &message { (flash(f)) }
        h1 { "Run " span.mono { (r.id) } }
        div.actions {
            (state_badge(&r.state))
            a href=(format!("/flows/{}", r.flow_id)) { "Flow " (r.flow_id) }
            @if let Some(orig) = &r.replay_of { span.muted { "replay of " a.mono href=(format!("/runs/{orig}")) { (orig.get(..8).unwrap_or(orig)) "…" } } }
            @if p.can(Action::OperateRuns) && finished {
                form method="post" action=(format!("/runs/{}/replay", r.id)) {
                    (csrf(p))
                    button type="submit" { "Replay this run" }
                    @if r.state == "dead" {
                        " "
                        button type="submit" name="resume" value="1"
                            title="Keep the steps that succeeded and start at the failed one" { "Resume from the failed step" }
                    }
                }
            }
        }
        div.grid2 {
            div.panel {
                h2 { "Run" }
                dl.kv {
                    dt { "Attempts" } dd { (r.attempts) }
                    dt { "Received" } dd { (short_time(&v.received_at)) " UTC" }
                    dt { "Started" } dd { (r.started_at.as_deref().map(short_time).unwrap_or_default()) }
                    dt { "Finished" } dd { (r.finished_at.as_deref().map(short_time).unwrap_or_default()) }
                    @if let Some(ms) = r.duration_ms { dt { "Took" } dd { (ms) " ms" } }
                    @if let Some(n) = &r.next_attempt_at { dt { "Next attempt" } dd { (short_time(n)) } }
                    dt { "Dedupe key" } dd.mono.small { (v.dedupe_key) }
                    @if let Some(e) = &r.last_error { dt { "Error" } dd { (e) } }
                }
                @if let Some(b) = &v.error_body { h3 { "Response body of the failure" } (json_block(b)) }
            }
            div.panel {
                h2 { "Event" }
                (json_block(&v.event))
            }
        }
        h2 { "Steps" }
        @if v.steps.is_empty() { div.panel { p.muted { "No step ran (the filter was false, or the run has not started)." } } }
        @for s in &v.steps {
            section.step aria-label=(format!("Step {}", s.step_id)) {
                header {
                    strong.mono { (s.step_id) }
                    @if s.error.is_some() { span.badge.s-dead { "error" } } @else if s.output.is_some() { span.badge.s-succeeded { "ok" } } @else { span.badge.s-running { "running" } }
                    span.muted.small { "started " (short_time(&s.started_at)) @if let Some(ms) = s.duration_ms { " · " (ms) " ms" } }
                }
                div.grid2 {
                    div { h3 { "Input (request)" } @if let Some(i) = &s.input { (json_block(i)) } @else { p.muted { "—" } } }
                    div {
                        @if let Some(e) = &s.error { h3 { "Error" } (json_block(e)) }
                        h3 { "Output (response)" } @if let Some(o) = &s.output { (json_block(o)) } @else { p.muted { "—" } }
                    }
                }
            }
        }
    };
    respond(page(&format!("Run {id}"), Some(p), "/runs", body))
}

pub(crate) async fn replay(
    State(state): State<ServerState>,
    who: Require<perm::Replay>,
    Source(source): Source,
    Path(id): Path<String>,
    Form(f): Form<ReplayForm>,
) -> Response {
    let resume = f.resumes();
    match crate::api::runs::replay_run(&state, who.principal(), &source, &id, resume).await {
        Ok(new) => see_other(&format!("/runs/{new}?ok={}", replayed_flash(resume))),
        Err(e) => run_page(&state, who.principal(), &id, Some(error_flash(&e))).await,
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeadQuery {
    flow: Option<String>,
    ok: Option<String>,
}

pub(crate) async fn dead_letters(
    State(state): State<ServerState>,
    who: Require<perm::Read>,
    Query(q): Query<DeadQuery>,
) -> Response {
    dead_page(
        &state,
        who.principal(),
        q.flow.clone(),
        Done { ok: q.ok }.flash(),
    )
    .await
}

async fn dead_page(
    state: &ServerState,
    p: &Principal,
    flow: Option<String>,
    message: Option<Flash>,
) -> Response {
    let flow = flow.filter(|f| !f.is_empty());
    let runs = crate::api::runs::query_runs(
        state,
        &RunQuery {
            flow: flow.clone(),
            state: Some("dead".into()),
            since: None,
            limit: Some(200),
        },
    )
    .await
    .unwrap_or_default();
    let items: Vec<RunItem> = runs.iter().map(RunItem::from).collect();
    let can = p.can(Action::OperateRuns);
    let body = html! {
        @if let Some(f) = &message { (flash(f)) }
        h1 { "Dead letters" }
        p.lead { "Runs that spent their retry budget, or failed with an error that cannot succeed on retry. Replaying one enqueues its event again as a new run." }
        @if can && !items.is_empty() {
            form method="post" action="/dead-letters/replay" class="actions" {
                (csrf(p))
                @if let Some(f) = &flow { input type="hidden" name="flow" value=(f); }
                button type="submit" { "Replay all " (items.len()) " dead letter(s)" }
            }
        }
        @if items.is_empty() { div.panel { p.muted { "No dead letters." } } } @else {
            table {
                thead { tr { th scope="col" { "Run" } th scope="col" { "Flow" } th.num scope="col" { "Attempts" } th scope="col" { "Created (UTC)" } th scope="col" { "Error" } @if can { th scope="col" { span.muted { "Action" } } } } }
                tbody {
                    @for r in &items {
                        tr {
                            td.mono { a href=(format!("/runs/{}", r.id)) { (r.id.get(..8).unwrap_or(&r.id)) "…" } }
                            td { (r.flow_id) }
                            td.num { (r.attempts) }
                            td.small { (short_time(&r.created_at)) }
                            td.small { (r.last_error.clone().unwrap_or_default()) }
                            @if can {
                                td {
                                    form method="post" action="/dead-letters/replay" {
                                        (csrf(p))
                                        input type="hidden" name="run_id" value=(r.id);
                                        button.small type="submit" aria-label=(format!("Replay dead letter {}", r.id)) { "Replay" }
                                        " "
                                        button.small type="submit" name="resume" value="1"
                                            title="Keep the steps that succeeded and start at the failed one"
                                            aria-label=(format!("Resume dead letter {} from its failed step", r.id)) { "Resume" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    respond(page("Dead letters", Some(p), "/dead-letters", body))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ReplayForm {
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    flow: Option<String>,
    /// Set by the "Resume" buttons: keep the steps that succeeded.
    #[serde(default)]
    resume: Option<String>,
}

impl ReplayForm {
    fn resumes(&self) -> bool {
        self.resume.as_deref().is_some_and(|v| !v.is_empty())
    }
}

fn replayed_flash(resume: bool) -> &'static str {
    if resume { "resumed" } else { "replayed" }
}

pub(crate) async fn replay_dead(
    State(state): State<ServerState>,
    who: Require<perm::Replay>,
    Source(source): Source,
    Form(f): Form<ReplayForm>,
) -> Response {
    let p = who.principal();
    let resume = f.resumes();
    match f.run_id.filter(|r| !r.is_empty()) {
        Some(id) => match crate::api::runs::replay_run(&state, p, &source, &id, resume).await {
            Ok(new) => see_other(&format!("/runs/{new}?ok={}", replayed_flash(resume))),
            Err(e) => dead_page(&state, p, None, Some(error_flash(&e))).await,
        },
        None => {
            let flow = f.flow.filter(|x| !x.is_empty());
            match crate::api::runs::replay_all(&state, p, &source, flow.as_deref()).await {
                Ok(_) => see_other("/dead-letters?ok=replayed_all"),
                Err(e) => dead_page(&state, p, flow, Some(error_flash(&e))).await,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Connections

pub(crate) async fn connections(
    State(state): State<ServerState>,
    who: Require<perm::Read>,
    Query(done): Query<Done>,
) -> Response {
    connections_page(&state, who.principal(), done.flash()).await
}

async fn connections_page(state: &ServerState, p: &Principal, message: Option<Flash>) -> Response {
    let list = state.connections().list().await;
    let body = html! {
        @if let Some(f) = &message { (flash(f)) }
        h1 { "Connections" }
        p.lead { "HighLevel accounts (a Private Integration Token or OAuth) and the apps flows send data to. A broken connection pauses nothing silently: its health shows here with HighLevel's answer." }
        (connections_table(&list, Some(p)))
        @if p.can(Action::EditConnections) {
            div.panel {
                h2 { "Connect" }
                form method="post" action="/connections" {
                    (csrf(p))
                    div.row {
                        div { label for="c-name" { "Name" } input #c-name name="name" type="text" required placeholder="default"; }
                        div { label for="c-kind" { "Kind" }
                            select #c-kind name="kind" {
                                option value="highlevel_token" { "HighLevel Private Integration Token" }
                                option value="highlevel_oauth" { "HighLevel OAuth (marketplace app)" }
                                option value="app" { "App (base URL and secret)" }
                            }
                        }
                    }
                    div.row {
                        div { label for="c-token" { "Token or secret" } input #c-token name="token" type="password" autocomplete="off"; }
                        div { label for="c-loc" { "Location id (HighLevel)" } input #c-loc name="location_id" type="text"; }
                        div { label for="c-url" { "Base URL (app)" } input #c-url name="base_url" type="text" placeholder="https://…"; }
                    }
                    div.actions { button type="submit" { "Connect" } }
                }
            }
        }
    };
    respond(page("Connections", Some(p), "/connections", body))
}

pub(crate) async fn connect(
    State(state): State<ServerState>,
    who: Require<perm::EditConnections>,
    Form(f): Form<NewConnection>,
) -> Response {
    let p = who.principal();
    let f = NewConnection {
        token: f.token.filter(|t| !t.is_empty()),
        location_id: f.location_id.filter(|t| !t.is_empty()),
        base_url: f.base_url.filter(|t| !t.is_empty()),
        ..f
    };
    match state.connections().create(f, p).await {
        Ok(_) => see_other("/connections?ok=created"),
        Err(e) => {
            let e: ApiError = e.into();
            connections_page(&state, p, Some(Flash::Bad(e.message))).await
        }
    }
}

pub(crate) async fn refresh_connection(
    State(state): State<ServerState>,
    who: Require<perm::EditConnections>,
    Path(name): Path<String>,
) -> Response {
    let p = who.principal();
    match state.connections().refresh(&name, p).await {
        Ok(_) => see_other("/connections?ok=refreshed"),
        Err(e) => {
            let e: ApiError = e.into();
            connections_page(&state, p, Some(Flash::Bad(e.message))).await
        }
    }
}

// ---------------------------------------------------------------------------------------
// Audit

pub(crate) async fn audit(
    State(state): State<ServerState>,
    who: Require<perm::ViewAudit>,
    Query(mut filter): Query<AuditFilter>,
) -> Response {
    let p = who.principal();
    filter.actor = filter.actor.filter(|a| !a.is_empty());
    filter.action = filter.action.filter(|a| !a.is_empty());
    filter.since = filter
        .since
        .filter(|a| !a.is_empty())
        .map(|s| since_to_rfc3339(&s));
    let (entries, problem) = match state.access().audit(&filter).await {
        Ok(e) => (e, None),
        Err(e) => (Vec::new(), Some(Flash::Bad(e.to_string()))),
    };
    let since_value = filter
        .since
        .as_deref()
        .map(|s| {
            s.trim_end_matches('Z')
                .get(..16)
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default();
    let body = html! {
        h1 { "Audit log" }
        p.lead { "Who did what, when and from where. Append-only." }
        @if let Some(f) = &problem { (flash(f)) }
        form.filters method="get" action="/audit" {
            div { label for="a-actor" { "Actor" } input #a-actor name="actor" type="text" value=(filter.actor.clone().unwrap_or_default()); }
            div { label for="a-action" { "Action starts with" } input #a-action name="action" type="text" placeholder="flow." value=(filter.action.clone().unwrap_or_default()); }
            div { label for="a-since" { "Since (UTC)" } input #a-since name="since" type="datetime-local" value=(since_value); }
            div.narrow { button type="submit" { "Filter" } }
        }
        @if entries.is_empty() { div.panel { p.muted { "Nothing recorded matches." } } } @else {
            table {
                thead { tr { th scope="col" { "When (UTC)" } th scope="col" { "Who" } th scope="col" { "What" } th scope="col" { "On" } th scope="col" { "From" } th scope="col" { "Details" } } }
                tbody {
                    @for e in &entries {
                        tr {
                            td.small { (short_time(&e.at)) }
                            td { (e.actor) @if e.actor_kind != "user" { br; span.small.muted { (e.actor_kind) } } }
                            td.mono.small { (e.action) }
                            td.mono.small { (e.target) }
                            td.small { (e.source) }
                            td.small.mono { @if e.detail.as_object().is_some_and(|m| !m.is_empty()) { (e.detail.to_string()) } }
                        }
                    }
                }
            }
        }
    };
    respond(page("Audit log", Some(p), "/audit", body))
}

// ---------------------------------------------------------------------------------------
// Users and tokens

fn role_options(selected: Role, max: Role) -> Markup {
    html! {
        @for r in Role::ALL {
            @if r >= max {
                option value=(r.as_str()) selected[r == selected] { (r.as_str()) }
            }
        }
    }
}

pub(crate) async fn users(
    State(state): State<ServerState>,
    who: Require<perm::ManageUsers>,
    Query(done): Query<Done>,
) -> Response {
    users_page(&state, who.principal(), done.flash()).await
}

async fn users_page(state: &ServerState, p: &Principal, message: Option<Flash>) -> Response {
    let users = state.access().users().await.unwrap_or_default();
    // An admin may not make owners.
    let max = if p.role == Role::Owner {
        Role::Owner
    } else {
        Role::Admin
    };
    let body = html! {
        @if let Some(f) = &message { (flash(f)) }
        h1 { "Users" }
        p.lead { "Owner: everything. Admin: everything but owners. Editor: flows and connections (and replays). Operator: runs and replays. Viewer: read-only." }
        table {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Created (UTC)" } th scope="col" { span.muted { "Actions" } } } }
            tbody {
                @for u in &users {
                    tr {
                        td { strong { (u.name) } }
                        td {
                            @if u.role == Role::Owner && p.role != Role::Owner { (u.role) } @else {
                                form.inline-form method="post" action=(format!("/users/{}", u.name)) {
                                    (csrf(p))
                                    label.sr-only for=(format!("role-{}", u.name)) { "Role of " (u.name) }
                                    select id=(format!("role-{}", u.name)) name="role" { (role_options(u.role, max)) }
                                    button.small.secondary type="submit" aria-label=(format!("Save the role of {}", u.name)) { "Save" }
                                }
                            }
                        }
                        td.small { (short_time(&u.created_at)) }
                        td {
                            @if !(u.role == Role::Owner && p.role != Role::Owner) && u.name != p.name {
                                form method="post" action=(format!("/users/{}/delete", u.name)) {
                                    (csrf(p))
                                    button.small.danger type="submit" aria-label=(format!("Remove {}", u.name)) { "Remove" }
                                }
                            }
                        }
                    }
                }
            }
        }
        div.panel {
            h2 { "Add a user" }
            form method="post" action="/users" {
                (csrf(p))
                div.row {
                    div { label for="u-name" { "User name" } input #u-name name="name" type="text" required autocomplete="off"; }
                    div { label for="u-role" { "Role" } select #u-role name="role" { (role_options(Role::Viewer, max)) } }
                    div { label for="u-pw" { "Password" } input #u-pw name="password" type="password" minlength="8" required autocomplete="new-password"; }
                }
                div.actions { button type="submit" { "Add user" } }
            }
        }
    };
    respond(page("Users", Some(p), "/users", body))
}

pub(crate) async fn add_user(
    State(state): State<ServerState>,
    who: Require<perm::ManageUsers>,
    Form(f): Form<NewUser>,
) -> Response {
    let p = who.principal();
    match crate::api::admin::create_user(&state, p, &f).await {
        Ok(_) => see_other("/users?ok=created"),
        Err(e) => with_status(&e, users_page(&state, p, Some(error_flash(&e))).await),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct UserForm {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

pub(crate) async fn change_user(
    State(state): State<ServerState>,
    who: Require<perm::ManageUsers>,
    Path(name): Path<String>,
    Form(f): Form<UserForm>,
) -> Response {
    let p = who.principal();
    let change = UserChange {
        role: f.role,
        password: f.password.filter(|x| !x.is_empty()),
    };
    match crate::api::admin::change_user(&state, p, &name, &change).await {
        Ok(_) => see_other("/users?ok=changed"),
        Err(e) => with_status(&e, users_page(&state, p, Some(error_flash(&e))).await),
    }
}

pub(crate) async fn remove_user(
    State(state): State<ServerState>,
    who: Require<perm::ManageUsers>,
    Path(name): Path<String>,
) -> Response {
    let p = who.principal();
    match crate::api::admin::delete_user(&state, p, &name).await {
        Ok(()) => see_other("/users?ok=removed"),
        Err(e) => with_status(&e, users_page(&state, p, Some(error_flash(&e))).await),
    }
}

fn with_status(e: &ApiError, resp: Response) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, resp).into_response()
}

pub(crate) async fn tokens(
    State(state): State<ServerState>,
    who: Require<perm::ManageTokens>,
    Query(done): Query<Done>,
) -> Response {
    tokens_page(&state, who.principal(), done.flash(), None).await
}

async fn tokens_page(
    state: &ServerState,
    p: &Principal,
    message: Option<Flash>,
    secret: Option<(String, String)>,
) -> Response {
    let tokens = state.access().tokens().await.unwrap_or_default();
    let body = html! {
        @if let Some(f) = &message { (flash(f)) }
        h1 { "API tokens" }
        p.lead { "Send " code { "Authorization: Bearer <token>" } " to " code { "/api/v1" } ". A token has a role (at most yours); it is shown once and stored hashed." }
        @if let Some((name, s)) = &secret {
            div.secret role="status" {
                strong { "Token “" (name) "” created. Copy it now: it will not be shown again." }
                br;
                code #new-token { (s) }
            }
        }
        table {
            thead { tr { th scope="col" { "Id" } th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Created" } th scope="col" { "Last used" } th scope="col" { "Status" } th scope="col" { span.muted { "Action" } } } }
            tbody {
                @for t in &tokens {
                    tr {
                        td.mono { (t.id) }
                        td { (t.name) }
                        td { (t.role) }
                        td.small { (short_time(&t.created_at)) " by " (t.created_by) }
                        td.small { (t.last_used_at.as_deref().map(short_time).unwrap_or_else(|| "never".into())) }
                        td { @if t.revoked_at.is_some() { span.badge.s-dead { "revoked" } } @else { span.badge.h-ok { "active" } } }
                        td {
                            @if t.revoked_at.is_none() {
                                form method="post" action=(format!("/tokens/{}/revoke", t.id)) {
                                    (csrf(p))
                                    button.small.danger type="submit" aria-label=(format!("Revoke token {}", t.name)) { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
        div.panel {
            h2 { "Create a token" }
            form method="post" action="/tokens" {
                (csrf(p))
                div.row {
                    div { label for="t-name" { "What it is for" } input #t-name name="name" type="text" required placeholder="CI deploys"; }
                    div { label for="t-role" { "Role" } select #t-role name="role" { (role_options(Role::Viewer, p.role)) } }
                }
                div.actions { button type="submit" { "Create token" } }
            }
        }
    };
    respond(page("API tokens", Some(p), "/tokens", body))
}

pub(crate) async fn create_token(
    State(state): State<ServerState>,
    who: Require<perm::ManageTokens>,
    Form(f): Form<NewToken>,
) -> Response {
    let p = who.principal();
    match crate::api::admin::new_token(&state, p, &f).await {
        Ok(c) => tokens_page(&state, p, None, Some((c.token.name, c.secret))).await,
        Err(e) => with_status(
            &e,
            tokens_page(&state, p, Some(error_flash(&e)), None).await,
        ),
    }
}

pub(crate) async fn revoke_token(
    State(state): State<ServerState>,
    who: Require<perm::ManageTokens>,
    Path(id): Path<String>,
) -> Response {
    let p = who.principal();
    match crate::api::admin::revoke(&state, p, &id).await {
        Ok(_) => see_other("/tokens?ok=revoked"),
        Err(e) => with_status(
            &e,
            tokens_page(&state, p, Some(error_flash(&e)), None).await,
        ),
    }
}
