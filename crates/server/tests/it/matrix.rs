//! The permission matrix: every mutating route of the admin API and the UI × every role →
//! allowed or 403, as the role table says (`hlbridge_engine::security::users::PERMISSIONS`,
//! restated here as expectations). Requests carry bodies the handler refuses or targets
//! that do not exist, so an allowed role gets a 2xx/3xx/4xx other than 401 and 403 without
//! changing anything. Then the same routes with the owner's session but no CSRF token: 403.
//!
//! Not in the table: `POST /api/v1/session` and `POST /api/v1/setup` (sign-in, before any
//! principal) and `POST /login`, `POST /setup` (their form versions).

use hlbridge_engine::security::Role;
use reqwest::Method;

use crate::adminkit::Admin;
use crate::harness::Options;

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Every role.
    Any,
    /// Owner, admin, editor, operator.
    OperateRuns,
    /// Owner, admin, editor.
    EditFlows,
    /// Owner, admin, editor.
    EditConnections,
    /// Owner, admin.
    ManageUsers,
    /// Owner, admin.
    ManageTokens,
}

impl Need {
    fn allows(self, role: Role) -> bool {
        use Role::*;
        match self {
            Need::Any => true,
            Need::OperateRuns => matches!(role, Owner | Admin | Editor | Operator),
            Need::EditFlows | Need::EditConnections => matches!(role, Owner | Admin | Editor),
            Need::ManageUsers | Need::ManageTokens => matches!(role, Owner | Admin),
        }
    }
}

/// How the body is sent.
#[derive(Debug, Clone, Copy)]
enum Body {
    None,
    /// Not JSON (the JSON extractor refuses it after the access check).
    BadJson,
    /// An empty form.
    Form,
}

const RUN: &str = "0190b3f4-2f6e-7cc1-9b2a-0123456789ab";

fn table() -> Vec<(Method, String, Body, Need)> {
    use Body::*;
    use Need::*;
    let m =
        |method: Method, path: &str, body: Body, need: Need| (method, path.to_owned(), body, need);
    vec![
        // The admin API.
        m(Method::POST, "/api/v1/flows", BadJson, EditFlows),
        m(Method::PUT, "/api/v1/flows/nope", BadJson, EditFlows),
        m(Method::POST, "/api/v1/flows/nope/enable", None, EditFlows),
        m(Method::POST, "/api/v1/flows/nope/disable", None, EditFlows),
        m(Method::POST, "/api/v1/flows/validate", BadJson, Any),
        m(Method::POST, "/api/v1/flows/test", BadJson, EditFlows),
        m(Method::POST, "/api/v1/flows/nope/test", BadJson, EditFlows),
        m(
            Method::POST,
            "/api/v1/templates/tag-segmentation/instantiate",
            BadJson,
            EditFlows,
        ),
        m(Method::POST, "/api/v1/mappings/preview", BadJson, Any),
        m(
            Method::POST,
            &format!("/api/v1/runs/{RUN}/replay"),
            None,
            OperateRuns,
        ),
        m(
            Method::POST,
            &format!("/api/v1/dead-letters/{RUN}/replay"),
            None,
            OperateRuns,
        ),
        m(
            Method::POST,
            "/api/v1/dead-letters/replay",
            BadJson,
            OperateRuns,
        ),
        m(
            Method::POST,
            "/api/v1/connections",
            BadJson,
            EditConnections,
        ),
        m(
            Method::POST,
            "/api/v1/connections/nope/refresh",
            None,
            EditConnections,
        ),
        m(Method::POST, "/api/v1/users", BadJson, ManageUsers),
        m(Method::PATCH, "/api/v1/users/nobody", BadJson, ManageUsers),
        m(Method::DELETE, "/api/v1/users/nobody", None, ManageUsers),
        m(Method::POST, "/api/v1/tokens", BadJson, ManageTokens),
        m(Method::DELETE, "/api/v1/tokens/nope", None, ManageTokens),
        // The UI's forms.
        m(Method::POST, "/flows/nope/enable", Form, EditFlows),
        m(Method::POST, "/flows/nope/disable", Form, EditFlows),
        m(Method::POST, "/builder/render", Form, EditFlows),
        m(Method::POST, "/builder/save", Form, EditFlows),
        m(Method::POST, "/builder/preview", Form, EditFlows),
        m(Method::POST, "/builder/test", Form, EditFlows),
        m(
            Method::POST,
            &format!("/runs/{RUN}/replay"),
            Form,
            OperateRuns,
        ),
        m(Method::POST, "/dead-letters/replay", Form, OperateRuns),
        m(Method::POST, "/connections", Form, EditConnections),
        m(
            Method::POST,
            "/connections/nope/refresh",
            Form,
            EditConnections,
        ),
        m(Method::POST, "/users", Form, ManageUsers),
        m(Method::POST, "/users/nobody", Form, ManageUsers),
        m(Method::POST, "/users/nobody/delete", Form, ManageUsers),
        m(Method::POST, "/tokens", Form, ManageTokens),
        m(Method::POST, "/tokens/nope/revoke", Form, ManageTokens),
        // Signing out: anyone signed in (last: it ends the session of the CSRF check below).
        m(Method::DELETE, "/api/v1/session", None, Any),
        m(Method::POST, "/logout", Form, Any),
    ]
}

fn with_body(req: reqwest::RequestBuilder, body: Body) -> reqwest::RequestBuilder {
    match body {
        Body::None => req,
        Body::BadJson => req
            .header("content-type", "application/json")
            .body("this is not JSON"),
        Body::Form => req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(""),
    }
}

#[tokio::test]
async fn every_mutating_route_times_every_role() {
    let a = Admin::start("matrix", Options::default()).await;
    let mut failures = Vec::new();
    let mut checked = 0;
    for (method, path, body, need) in table() {
        for role in Role::ALL {
            let req =
                a.h.http
                    .request(method.clone(), a.h.url(&path))
                    .bearer_auth(&a.tokens[&role]);
            let resp = with_body(req, body).send().await.expect("request");
            let status = resp.status().as_u16();
            let ok = if need.allows(role) {
                status != 401 && status != 403
            } else {
                status == 403
            };
            checked += 1;
            if !ok {
                failures.push(format!(
                    "{method} {path} as {role}: {status} (expected {})",
                    if need.allows(role) { "allowed" } else { "403" }
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(checked, table().len() * Role::ALL.len());

    // A cookie session without the CSRF token may change nothing, whatever its role.
    for (method, path, body, _) in table() {
        let req =
            a.h.http
                .request(method.clone(), a.h.url(&path))
                .header("cookie", &a.cookie);
        let status = with_body(req, body).send().await.expect("request").status();
        assert_eq!(status, 403, "{method} {path} without a CSRF token");
    }
    // Nor can anyone without credentials.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    for (method, path, body, _) in table() {
        let req = no_redirects.request(method.clone(), a.h.url(&path));
        let resp = with_body(req, body).send().await.expect("request");
        let status = resp.status().as_u16();
        if path.starts_with("/api/") {
            assert_eq!(status, 401, "{method} {path} anonymous");
        } else {
            // The UI sends people to the login page.
            assert!(
                status == 303 || status == 307,
                "{method} {path} anonymous: {status}"
            );
            let to = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(to.starts_with("/login"), "{path} → {to}");
        }
    }
    a.shutdown().await;
}
