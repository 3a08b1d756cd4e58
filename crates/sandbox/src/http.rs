//! The HTTP front of the sandbox: routes every request of the operation table to its handler
//! and does what HighLevel does around it — `Version` header, bearer token, token kind,
//! scopes, location access, rate limits and their headers, faults — then persists the change
//! and queues its webhooks. OAuth endpoints and the `/_sandbox` admin API are routed here too.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method as HttpMethod, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hlbridge_highlevel::operations::{Method, OPERATIONS, Operation, TokenKind};
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

use crate::Shared;
use crate::auth::{self, Grant};
use crate::error::ApiError;
use crate::handlers::{Ctx, Guard, HANDLERS, Req, UserType};
use crate::ratelimit::{Decision, Headers};

/// The axum application.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(dispatch).with_state(shared)
}

/// Routes: normalised path template (params renamed `p0`, `p1`, … by position, so templates
/// that name the same segment differently share a node) → operations on it.
static ROUTES: LazyLock<matchit::Router<Vec<&'static Operation>>> = LazyLock::new(|| {
    let mut by_path: HashMap<String, Vec<&'static Operation>> = HashMap::new();
    for op in OPERATIONS {
        by_path.entry(route_template(op.path)).or_default().push(op);
    }
    let mut router = matchit::Router::new();
    for (path, ops) in by_path {
        if let Err(e) = router.insert(path.clone(), ops) {
            tracing::error!(%path, error = %e, "sandbox route conflict");
        }
    }
    router
});

fn route_template(path: &str) -> String {
    let mut i = 0;
    let segs: Vec<String> = path
        .trim_end_matches('/')
        .split('/')
        .map(|s| {
            if s.starts_with('{') {
                let out = format!("{{p{i}}}");
                i += 1;
                out
            } else {
                s.to_string()
            }
        })
        .collect();
    let joined = segs.join("/");
    if joined.is_empty() {
        "/".into()
    } else {
        joined
    }
}

fn method_of(m: &HttpMethod) -> Option<Method> {
    Some(match *m {
        HttpMethod::GET => Method::Get,
        HttpMethod::POST => Method::Post,
        HttpMethod::PUT => Method::Put,
        HttpMethod::PATCH => Method::Patch,
        HttpMethod::DELETE => Method::Delete,
        _ => return None,
    })
}

/// The `Version` values accepted for `op`: the spec's, and `2023-02-21` which the official
/// Node SDK sends on every call.
fn version_ok(op: &Operation, v: &str) -> bool {
    v == op.version_header() || v == "2023-02-21"
}

fn json_response(status: u16, body: &Value, rl: Option<&Headers>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(h) = rl {
        add_rl_headers(resp.headers_mut(), h);
    }
    resp
}

fn add_rl_headers(headers: &mut HeaderMap, h: &Headers) {
    for (k, v) in h.pairs() {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(k, v);
        }
    }
}

fn error_response(e: &ApiError, rl: Option<&Headers>) -> Response {
    json_response(e.status, &e.body(), rl)
}

fn parse_query(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_default()
}

async fn dispatch(
    State(shared): State<Arc<Shared>>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if path == "/_sandbox" || path.starts_with("/_sandbox/") {
        return crate::admin::handle(&shared, &method, &uri, &headers, &body).await;
    }
    if path.starts_with("/oauth/") {
        return oauth(&shared, &method, &uri, &headers, &body).await;
    }
    let not_found = || ApiError {
        status: 404,
        message: json!(format!("Cannot {method} {path}")),
        extra: None,
    };
    let normalized = {
        let t = path.trim_end_matches('/');
        if t.is_empty() { "/" } else { t }
    };
    let Ok(matched) = ROUTES.at(normalized) else {
        return error_response(&not_found(), None);
    };
    let Some(op) =
        method_of(&method).and_then(|m| matched.value.iter().find(|op| op.method == m).copied())
    else {
        return error_response(&not_found(), None);
    };
    let positional: HashMap<&str, &str> = matched.params.iter().collect();
    let mut path_params = HashMap::new();
    for (i, name) in op.path_params().enumerate() {
        if let Some(v) = positional.get(format!("p{i}").as_str()) {
            path_params.insert(
                name.to_string(),
                percent_decode_str(v).decode_utf8_lossy().into_owned(),
            );
        }
    }
    serve_operation(&shared, op, path_params, &uri, &headers, &body).await
}

async fn serve_operation(
    shared: &Shared,
    op: &'static Operation,
    path: HashMap<String, String>,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // Version header first: HighLevel refuses a call without it before looking at anything else.
    match header("version") {
        None => {
            return error_response(&ApiError::bad_request("Version header was not found"), None);
        }
        Some(v) if !version_ok(op, v) => {
            return error_response(
                &ApiError::bad_request(format!(
                    "Invalid Version header {v:?}; this endpoint expects {}",
                    op.version_header()
                )),
                None,
            );
        }
        Some(_) => {}
    }
    let now = crate::now_ms();
    let grant: Grant = {
        let ctx = Ctx::new(Guard::Read(shared.docs.read()), now);
        match auth::authenticate(&ctx, header("authorization")) {
            Ok(g) => g,
            Err(e) => return error_response(&e, None),
        }
    };
    let scope_key = grant
        .caller
        .location_id
        .clone()
        .or_else(|| grant.caller.company_id.clone())
        .unwrap_or_default();
    let rl_key = format!("{}:{}", grant.caller.app_id, scope_key);
    let injection = shared.faults.decide(op.id, uri.path());
    if !injection.latency.is_zero() {
        tokio::time::sleep(injection.latency).await;
    }
    let rl = match shared.limiter.admit(&rl_key, Instant::now()) {
        Decision::Allowed(h) => h,
        Decision::Burst(h, _) | Decision::Daily(h) => {
            return error_response(&ApiError::new(429, "Too many requests"), Some(&h));
        }
    };
    if injection.rate_limited {
        let h = Headers { remaining: 0, ..rl };
        return error_response(&ApiError::new(429, "Too many requests"), Some(&h));
    }
    if injection.drop_connection {
        let stream = futures::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "sandbox fault: connection dropped",
            ))
        });
        return Response::new(Body::from_stream(stream));
    }
    if let Some(status) = injection.error {
        return error_response(
            &ApiError::new(status, format!("Injected fault ({status})")),
            Some(&rl),
        );
    }
    match (op.token, grant.caller.user_type) {
        (TokenKind::Agency, UserType::Location) => {
            return error_response(
                &ApiError::unauthorized(
                    "This route is only available with an Agency (Company) access token",
                ),
                Some(&rl),
            );
        }
        (TokenKind::Location, UserType::Company)
            if op.path.contains("{locationId}") || op.param("locationId").is_none() =>
        {
            return error_response(
                &ApiError::unauthorized(
                    "This route is only available with a Location (Sub-Account) access token",
                ),
                Some(&rl),
            );
        }
        _ => {}
    }
    if !grant.has_scope(op.scope) {
        return error_response(
            &ApiError::unauthorized("The token is not authorized for this scope."),
            Some(&rl),
        );
    }
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return error_response(
                    &ApiError::bad_request(format!("Unexpected token in JSON body: {e}")),
                    Some(&rl),
                );
            }
        }
    };
    let req = Req {
        op,
        path,
        query: parse_query(uri),
        body,
        caller: grant.caller.clone(),
        now_ms: now,
    };
    if let Err(e) = check_location_access(shared, &req) {
        return error_response(&e, Some(&rl));
    }
    let Some(handler) = HANDLERS.get(op.id) else {
        return error_response(
            &ApiError::new(501, format!("{} is not emulated by this sandbox", op.id)),
            Some(&rl),
        );
    };
    let read_only = op.method == Method::Get;
    let (result, writes, events) = {
        let guard = if read_only {
            Guard::Read(shared.docs.read())
        } else {
            Guard::Write(shared.docs.write())
        };
        let mut ctx = Ctx::new(guard, now);
        let result = handler(&mut ctx, &req);
        (
            result,
            std::mem::take(&mut ctx.writes),
            std::mem::take(&mut ctx.events),
        )
    };
    match result {
        Ok(reply) => {
            if let Err(e) = shared.persister.persist(writes).await {
                return error_response(&ApiError::from(e), Some(&rl));
            }
            shared.delivery.send(
                events,
                injection.webhook_drop_rate,
                injection.webhook_duplicate_rate,
            );
            match reply.raw {
                Some((content_type, bytes)) => {
                    let mut resp = Response::new(Body::from(bytes));
                    *resp.status_mut() =
                        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
                    resp.headers_mut()
                        .insert("content-type", HeaderValue::from_static(content_type));
                    add_rl_headers(resp.headers_mut(), &rl);
                    resp
                }
                None => json_response(reply.status, &reply.body, Some(&rl)),
            }
        }
        Err(e) => error_response(&e, Some(&rl)),
    }
}

/// A location named in the request must be the token's, or (agency tokens) one of its company.
fn check_location_access(shared: &Shared, req: &Req) -> Result<(), ApiError> {
    let named = req
        .path
        .get("locationId")
        .map(String::as_str)
        .or_else(|| req.query("locationId"))
        .or_else(|| req.query("location_id"))
        .or_else(|| req.field_str("locationId"));
    let Some(named) = named else { return Ok(()) };
    match (&req.caller.location_id, req.caller.user_type) {
        (Some(own), _) if own != named => Err(crate::handlers::forbidden_location()),
        (None, UserType::Company) => {
            let docs = shared.docs.read();
            let belongs = docs
                .get("location", named)
                .is_some_and(|d| d.body["companyId"].as_str() == req.caller.company_id.as_deref());
            if belongs {
                Ok(())
            } else {
                Err(crate::handlers::forbidden_location())
            }
        }
        _ => Ok(()),
    }
}

fn form_of(body: &Bytes) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn oauth(
    shared: &Shared,
    method: &HttpMethod,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/');
    let query: HashMap<String, String> = parse_query(uri).into_iter().collect();
    let ttl_ms = i64::try_from(shared.access_token_ttl.as_millis()).unwrap_or(i64::MAX);
    match (method.clone(), path) {
        (HttpMethod::GET, "/oauth/chooselocation") => choose_location(shared, &query).await,
        (HttpMethod::POST, "/oauth/token") => {
            let form = form_of(body);
            match shared
                .mutate(|ctx| auth::token_endpoint(ctx, &form, ttl_ms))
                .await
            {
                Ok(v) => json_response(200, &v, None),
                Err(e) => error_response(&e, None),
            }
        }
        (HttpMethod::POST, "/oauth/locationToken")
        | (HttpMethod::GET, "/oauth/installedLocations") => {
            if headers.get("version").is_none() {
                return error_response(
                    &ApiError::bad_request("Version header was not found"),
                    None,
                );
            }
            let authz = headers.get("authorization").and_then(|v| v.to_str().ok());
            let grant = {
                let ctx = Ctx::new(Guard::Read(shared.docs.read()), crate::now_ms());
                match auth::authenticate(&ctx, authz) {
                    Ok(g) => g,
                    Err(e) => return error_response(&e, None),
                }
            };
            if path == "/oauth/locationToken" {
                if !grant.has_scope("oauth.write") {
                    return error_response(
                        &ApiError::unauthorized("The token is not authorized for this scope."),
                        None,
                    );
                }
                let form = form_of(body);
                match shared
                    .mutate(|ctx| auth::location_token(ctx, &grant, &form, ttl_ms))
                    .await
                {
                    Ok(v) => json_response(201, &v, None),
                    Err(e) => error_response(&e, None),
                }
            } else {
                if !grant.has_scope("oauth.readonly") {
                    return error_response(
                        &ApiError::unauthorized("The token is not authorized for this scope."),
                        None,
                    );
                }
                installed_locations(shared, &grant, &query)
            }
        }
        _ => error_response(
            &ApiError {
                status: 404,
                message: json!(format!("Cannot {method} {}", uri.path())),
                extra: None,
            },
            None,
        ),
    }
}

fn installed_locations(
    shared: &Shared,
    grant: &Grant,
    query: &HashMap<String, String>,
) -> Response {
    let Some(company) = query.get("companyId").filter(|c| !c.is_empty()) else {
        return error_response(
            &ApiError::unprocessable(vec!["companyId should not be empty".into()]),
            None,
        );
    };
    if grant.caller.company_id.as_deref() != Some(company.as_str()) {
        return error_response(
            &ApiError::forbidden("The token does not have access to this company."),
            None,
        );
    }
    let skip: usize = query.get("skip").and_then(|s| s.parse().ok()).unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let docs = shared.docs.read();
    let all: Vec<Value> = docs
        .iter("location")
        .filter(|(_, d)| d.body["companyId"].as_str() == Some(company.as_str()))
        .map(|(id, d)| {
            json!({ "_id": id, "name": d.body["name"], "address": d.body["address"], "isInstalled": true })
        })
        .collect();
    let count = all.len();
    let page: Vec<Value> = all.into_iter().skip(skip).take(limit).collect();
    json_response(
        200,
        &json!({ "locations": page, "count": count, "installToFutureLocations": true }),
        None,
    )
}

/// The authorize page: lists the agency's locations; approving one (or the whole agency)
/// redirects to `redirect_uri` with a code, like marketplace.gohighlevel.com does.
async fn choose_location(shared: &Shared, q: &HashMap<String, String>) -> Response {
    let client_id = q.get("client_id").cloned().unwrap_or_default();
    let redirect_uri = q.get("redirect_uri").cloned().unwrap_or_default();
    if client_id.is_empty() || redirect_uri.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "client_id and redirect_uri are required",
        )
            .into_response();
    }
    let (company_id, locations) = {
        let docs = shared.docs.read();
        let Some(client) = docs.get(auth::CLIENT, &client_id) else {
            return (StatusCode::BAD_REQUEST, "Unknown client_id").into_response();
        };
        let company = client.body["companyId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let locs: Vec<(String, String)> = docs
            .iter("location")
            .filter(|(_, d)| d.body["companyId"].as_str() == Some(company.as_str()))
            .map(|(id, d)| {
                (
                    id.clone(),
                    d.body["name"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        (company, locs)
    };
    let scopes: Vec<String> = match q.get("scope").filter(|s| !s.trim().is_empty()) {
        Some(s) => s.split_whitespace().map(str::to_string).collect(),
        None => auth::ALL_SCOPES.clone(),
    };
    let state = q.get("state").cloned();
    let approve = q.get("approve").is_some_and(|v| v == "1" || v == "true");
    let chosen_location = q.get("location_id").cloned();
    let agency = q
        .get("user_type")
        .is_some_and(|v| v.eq_ignore_ascii_case("company"));
    if approve {
        let caller = crate::handlers::Caller {
            location_id: if agency {
                None
            } else {
                chosen_location.clone()
            },
            company_id: Some(company_id.clone()),
            user_type: if agency {
                UserType::Company
            } else {
                UserType::Location
            },
            app_id: client_id.clone(),
        };
        if !agency
            && chosen_location
                .as_ref()
                .is_none_or(|l| !locations.iter().any(|(id, _)| id == l))
        {
            return (
                StatusCode::BAD_REQUEST,
                "Choose one of the listed locations",
            )
                .into_response();
        }
        let code = match shared
            .mutate(|ctx| auth::issue_code(ctx, &client_id, &redirect_uri, &caller, &scopes))
            .await
        {
            Ok(c) => c,
            Err(e) => return error_response(&e, None),
        };
        let mut target = match url::Url::parse(&redirect_uri) {
            Ok(u) => u,
            Err(_) => {
                return (StatusCode::BAD_REQUEST, "redirect_uri is not a URL").into_response();
            }
        };
        target.query_pairs_mut().append_pair("code", &code);
        if let Some(s) = &state {
            target.query_pairs_mut().append_pair("state", s);
        }
        return axum::response::Redirect::to(target.as_str()).into_response();
    }
    let base: Vec<(String, String)> = q
        .iter()
        .filter(|(k, _)| !["approve", "location_id", "user_type"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let link = |extra: &[(&str, &str)]| {
        let mut pairs = base.clone();
        pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        format!(
            "/oauth/chooselocation?{}",
            serde_urlencoded::to_string(&pairs).unwrap_or_default()
        )
    };
    let mut items = String::new();
    for (id, name) in &locations {
        items.push_str(&format!(
            "<li><a href=\"{}\">{} <small>({})</small></a></li>",
            html_escape(&link(&[("approve", "1"), ("location_id", id)])),
            html_escape(name),
            html_escape(id)
        ));
    }
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Choose a location — hlbridge sandbox</title></head>\
         <body><h1>Authorize app</h1><p>The app <code>{}</code> asks for: <code>{}</code></p>\
         <h2>Choose a location</h2><ul>{}</ul>\
         <p><a href=\"{}\">Install for the whole agency</a></p></body></html>",
        html_escape(&client_id),
        html_escape(&scopes.join(" ")),
        items,
        html_escape(&link(&[("approve", "1"), ("user_type", "Company")]))
    );
    axum::response::Html(page).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_routes_to_itself() {
        for op in OPERATIONS {
            let concrete: String = op
                .path
                .split('/')
                .map(|s| if s.starts_with('{') { "x1" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            let norm = concrete.trim_end_matches('/');
            let norm = if norm.is_empty() { "/" } else { norm };
            let m = ROUTES
                .at(norm)
                .unwrap_or_else(|e| panic!("{} {}: {e}", op.id, op.path));
            assert!(
                m.value
                    .iter()
                    .any(|o| o.id == op.id || (o.method == op.method && o.path == op.path)),
                "{} routed to {:?}",
                op.id,
                m.value.iter().map(|o| o.id).collect::<Vec<_>>()
            );
        }
    }
}
