//! The web UI: server-rendered HTML (`maud`), htmx for the flow builder's live parts, and a
//! stylesheet, all embedded in the binary (no CDN, nothing built with Node).
//!
//! Pages: login (and first-owner setup), dashboard, flows, flow builder, templates gallery,
//! runs and a run's steps, dead letters, connections, audit log, users and tokens. Every page
//! needs a signed-in user; controls that change something are shown only to roles allowed to
//! use them, and the routes behind them check the role again ([`crate::auth`]). Forms carry
//! the session's CSRF token (`_csrf`); htmx requests send it as `x-csrf-token`.

mod builder;
mod pages;

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use crate::ServerState;
use crate::auth::{Action, Principal};

const HTMX: &str = include_str!("../../assets/htmx.min.js");
const HTMX_LICENSE: &str = include_str!("../../assets/htmx.LICENSE");
const CSS: &str = include_str!("../../assets/app.css");

/// The UI's routes.
pub fn routes() -> Router<ServerState> {
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/setup", post(pages::setup))
        .route("/flows", get(pages::flows))
        .route("/flows/new", get(builder::new_flow))
        .route("/flows/{id}", get(pages::flow))
        .route("/flows/{id}/edit", get(builder::edit_flow))
        .route("/flows/{id}/export", get(pages::export))
        .route("/flows/{id}/enable", post(pages::enable))
        .route("/flows/{id}/disable", post(pages::disable))
        .route("/builder/render", post(builder::render))
        .route("/builder/save", post(builder::save))
        .route("/builder/preview", post(builder::preview))
        .route("/builder/test", post(builder::test))
        .route("/builder/catalog", get(builder::catalog))
        .route("/templates", get(pages::templates))
        .route("/runs", get(pages::runs))
        .route("/runs/{id}", get(pages::run))
        .route("/runs/{id}/replay", post(pages::replay))
        .route("/dead-letters", get(pages::dead_letters))
        .route("/dead-letters/replay", post(pages::replay_dead))
        .route("/connections", get(pages::connections).post(pages::connect))
        .route(
            "/connections/{name}/refresh",
            post(pages::refresh_connection),
        )
        .route("/audit", get(pages::audit))
        .route("/users", get(pages::users).post(pages::add_user))
        .route("/users/{name}", post(pages::change_user))
        .route("/users/{name}/delete", post(pages::remove_user))
        .route("/tokens", get(pages::tokens).post(pages::create_token))
        .route("/tokens/{id}/revoke", post(pages::revoke_token))
        .route("/assets/{file}", get(asset))
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "htmx.LICENSE.txt" => (HTMX_LICENSE, "text/plain; charset=utf-8"),
        "app.css" => (CSS, "text/css; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// The navigation entries: (path, label, action needed to see it).
const NAV: &[(&str, &str, Action)] = &[
    ("/", "Dashboard", Action::View),
    ("/flows", "Flows", Action::View),
    ("/templates", "Templates", Action::View),
    ("/runs", "Runs", Action::View),
    ("/dead-letters", "Dead letters", Action::View),
    ("/connections", "Connections", Action::View),
    ("/audit", "Audit log", Action::ViewAudit),
    ("/users", "Users", Action::ManageUsers),
    ("/tokens", "API tokens", Action::ManageTokens),
];

/// A message shown at the top of a page.
#[derive(Debug, Clone)]
pub(crate) enum Flash {
    /// It worked.
    Ok(String),
    /// It did not.
    Bad(String),
    /// For information.
    Info(String),
}

pub(crate) fn flash(f: &Flash) -> Markup {
    let (class, text) = match f {
        Flash::Ok(t) => ("flash ok", t),
        Flash::Bad(t) => ("flash bad", t),
        Flash::Info(t) => ("flash info", t),
    };
    html! { div class=(class) role=(if matches!(f, Flash::Bad(_)) { "alert" } else { "status" }) { (text) } }
}

/// A full page.
pub(crate) fn page(title: &str, who: Option<&Principal>, active: &str, body: Markup) -> Markup {
    let hx_headers = who
        .filter(|p| !p.csrf().is_empty())
        .map(|p| serde_json::json!({ crate::auth::CSRF_HEADER: p.csrf() }).to_string());
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · hlbridge" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/htmx.min.js" defer {}
            }
            body hx-headers=[hx_headers] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    div.bar {
                        a.brand href="/" { "hlbridge" }
                        @if let Some(p) = who {
                            nav aria-label="Main" {
                                ul {
                                    @for (path, label, action) in NAV {
                                        @if p.can(*action) {
                                            li { a href=(path) aria-current=[(*path == active).then_some("page")] { (label) } }
                                        }
                                    }
                                }
                            }
                            div.who {
                                span { (p.name) " · " (p.role) }
                                form method="post" action="/logout" {
                                    (csrf(p))
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main #main tabindex="-1" { (body) }
                footer { "hlbridge " (env!("CARGO_PKG_VERSION")) " · " a href="/api/v1/openapi.json" { "API (OpenAPI)" } " · " a href="/metrics" { "metrics" } " · " a href="/assets/htmx.LICENSE.txt" { "htmx license" } }
            }
        }
    }
}

/// The hidden CSRF field of a form.
pub(crate) fn csrf(who: &Principal) -> Markup {
    html! { input type="hidden" name=(crate::auth::CSRF_FIELD) value=(who.csrf()); }
}

/// An HTML error page (403 and friends).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let body = page(
        status.canonical_reason().unwrap_or("Error"),
        None,
        "",
        html! {
            div.panel {
                h1 { (status.as_u16()) " · " (status.canonical_reason().unwrap_or("Error")) }
                p { (message) }
                p { a href="/" { "Back to the dashboard" } }
            }
        },
    );
    (status, Html(body.into_string())).into_response()
}

/// A rendered page as a response.
pub(crate) fn respond(markup: Markup) -> Response {
    Html(markup.into_string()).into_response()
}

/// A fragment (htmx) as a response.
pub(crate) fn fragment(markup: Markup) -> Response {
    Html(markup.into_string()).into_response()
}

/// 303 to `to` (after a form post).
pub(crate) fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// A run state badge.
pub(crate) fn state_badge(state: &str) -> Markup {
    html! { span class=(format!("badge s-{state}")) { (state) } }
}

/// A connection health badge.
pub(crate) fn health_badge(health: &str) -> Markup {
    html! { span class=(format!("badge h-{health}")) { (health) } }
}

/// Pretty JSON in a `pre`.
pub(crate) fn json_block(v: &Value) -> Markup {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    html! { pre { (text) } }
}

/// A time as `YYYY-MM-DD HH:MM:SS` (UTC), from RFC 3339.
pub(crate) fn short_time(t: &str) -> String {
    let t = t.replace('T', " ");
    let t = t.split('.').next().unwrap_or(&t).trim_end_matches('Z');
    t.get(..19).unwrap_or(t).to_owned()
}
