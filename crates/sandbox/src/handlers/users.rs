//! Users: the people of an agency and its sub-accounts, with a role (`type` agency|account,
//! `role` admin|user), the locations they work in, permissions and scopes. Search (skip/limit,
//! query/type/role/ids filters, sorting), the agency-only filter by email (with `projection`),
//! the deprecated list by location, CRUD, and the `UserCreate` webhook.
//!
//! Users are agency-level documents (no location; parent = company id); a location token sees
//! the agency users of its company and the users that have its location in
//! `roles.locationIds`. Deleting a user marks it `deleted` (HighLevel queues the removal and
//! keeps the record, which `filter-by-email` with `deleted: true` still finds); every other read
//! answers 404 for it.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;
use serde_json::{Map, Value, json};

use super::{
    Ctx, HResult, Handler, Req, Seed, created, forbidden_location, iso, new_id, ok, parse_time_ms,
};
use crate::error::ApiError;

/// A user document.
pub const USER: &str = "user";

/// Registers the handlers of this module.
pub fn register(map: &mut HashMap<&'static str, Handler>) {
    map.insert("users.search", search);
    map.insert("users.filter_by_email", filter_by_email);
    map.insert("users.get", get);
    map.insert("users.list", list);
    map.insert("users.create", create);
    map.insert("users.update", update);
    map.insert("users.delete", delete);
}

/// Permissions a new user gets unless the request says otherwise (HighLevel's defaults).
const DEFAULT_PERMISSIONS: &[(&str, bool)] = &[
    ("adwordsReportingEnabled", false),
    ("affiliateManagerEnabled", false),
    ("agentReportingEnabled", true),
    ("appointmentsEnabled", true),
    ("assignedDataOnly", false),
    ("attributionsReportingEnabled", false),
    ("bloggingEnabled", true),
    ("botService", false),
    ("bulkRequestsEnabled", true),
    ("campaignsEnabled", true),
    ("campaignsReadOnly", false),
    ("cancelSubscriptionEnabled", true),
    ("communitiesEnabled", true),
    ("contactsEnabled", true),
    ("contentAiEnabled", true),
    ("conversationsEnabled", true),
    ("dashboardStatsEnabled", true),
    ("exportPaymentsEnabled", true),
    ("facebookAdsReportingEnabled", false),
    ("funnelsEnabled", true),
    ("invoiceEnabled", true),
    ("leadValueEnabled", true),
    ("marketingEnabled", true),
    ("membershipEnabled", false),
    ("onlineListingsEnabled", true),
    ("opportunitiesEnabled", true),
    ("paymentsEnabled", true),
    ("phoneCallEnabled", true),
    ("recordPaymentEnabled", true),
    ("refundsEnabled", true),
    ("reviewsEnabled", true),
    ("settingsEnabled", true),
    ("socialPlanner", true),
    ("tagsEnabled", true),
    ("triggersEnabled", true),
    ("websitesEnabled", false),
    ("workflowsEnabled", true),
    ("workflowsReadOnly", false),
];

const TYPES: &[&str] = &["agency", "account"];
const ROLES: &[&str] = &["admin", "user"];
const LANGUAGES: &[&str] = &[
    "en_US", "es", "fr_CA", "fr_FR", "nl", "de", "pt_PT", "pt_BR", "it", "sv", "da", "fi", "no",
];

fn s<'v>(v: &'v Value, k: &str) -> &'v str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn location_ids(u: &Value) -> Vec<String> {
    u.pointer("/roles/locationIds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// Whether the caller may see user `u` (its company; for a location token, its location or an
/// agency user).
fn visible(req: &Req, u: &Value) -> bool {
    let company_ok = req
        .caller
        .company_id
        .as_deref()
        .is_none_or(|c| s(u, "companyId") == c);
    let location_ok = match req.caller.location_id.as_deref() {
        None => true,
        Some(l) => {
            u.pointer("/roles/type").and_then(Value::as_str) == Some("agency")
                || location_ids(u).iter().any(|x| x == l)
        }
    };
    company_ok && location_ok
}

/// A live user by id: 404 when unknown, deleted or of another company; 403 when a location
/// token asks for a user of another location.
fn user(ctx: &Ctx<'_>, req: &Req, id: &str) -> Result<Arc<Value>, ApiError> {
    let u = ctx
        .get(USER, id)
        .map(|d| d.body.clone())
        .filter(|u| u.get("deleted").and_then(Value::as_bool) != Some(true))
        .ok_or_else(|| ApiError::not_found("User"))?;
    if req
        .caller
        .company_id
        .as_deref()
        .is_some_and(|c| s(&u, "companyId") != c)
    {
        return Err(ApiError::not_found("User"));
    }
    if !visible(req, &u) {
        return Err(forbidden_location());
    }
    Ok(u)
}

/// The users of a company, oldest first (deleted ones included).
fn company_users(ctx: &Ctx<'_>, company_id: &str) -> Vec<Arc<Value>> {
    ctx.children(USER, company_id)
}

fn check_company(req: &Req, company_id: &str) -> Result<(), ApiError> {
    if req
        .caller
        .company_id
        .as_deref()
        .is_some_and(|c| c != company_id)
    {
        return Err(ApiError::forbidden(
            "The token does not have access to this company.",
        ));
    }
    Ok(())
}

fn valid_email(e: &str) -> bool {
    e.split_once('@').is_some_and(|(u, d)| {
        !u.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
    })
}

fn is_string_array(v: &Value) -> bool {
    v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
}

/// Checks the fields of a create/update body; returns every failure.
fn validate(body: &Map<String, Value>) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    let present = |k: &str| body.get(k).filter(|v| !v.is_null());
    for k in [
        "firstName",
        "lastName",
        "email",
        "password",
        "phone",
        "type",
        "role",
        "companyId",
        "profilePhoto",
    ] {
        if present(k).is_some_and(|v| !v.is_string()) {
            errs.push(format!("{k} must be a string"));
        }
    }
    if let Some(e) = present("email").and_then(Value::as_str)
        && !valid_email(e.trim())
    {
        errs.push("email must be an email".into());
    }
    if let Some(t) = present("type").and_then(Value::as_str)
        && !TYPES.contains(&t)
    {
        errs.push(format!(
            "type must be one of the following values: {}",
            TYPES.join(", ")
        ));
    }
    if let Some(r) = present("role").and_then(Value::as_str)
        && !ROLES.contains(&r)
    {
        errs.push(format!(
            "role must be one of the following values: {}",
            ROLES.join(", ")
        ));
    }
    for k in ["locationIds", "scopes", "scopesAssignedToOnly"] {
        if present(k).is_some_and(|v| !is_string_array(v)) {
            errs.push(format!("{k} must be an array of strings"));
        }
    }
    if present("permissions").is_some_and(|p| {
        !p.as_object()
            .is_some_and(|o| o.values().all(Value::is_boolean))
    }) {
        errs.push("permissions must be an object of booleans".into());
    }
    if present("twilioPhone").is_some_and(|p| {
        !p.as_object()
            .is_some_and(|o| o.values().all(Value::is_string))
    }) {
        errs.push("twilioPhone must be an object of location id to phone number".into());
    }
    if let Some(l) = present("platformLanguage")
        && !l.as_str().is_some_and(|l| LANGUAGES.contains(&l))
    {
        errs.push(format!(
            "platformLanguage must be one of the following values: {}",
            LANGUAGES.join(", ")
        ));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(errs))
    }
}

/// 400 when another live user of the company has this email.
fn check_unique_email(
    ctx: &Ctx<'_>,
    company_id: &str,
    email: &str,
    except: Option<&str>,
) -> Result<(), ApiError> {
    let email = email.trim().to_lowercase();
    let taken = company_users(ctx, company_id).iter().any(|u| {
        u.get("deleted").and_then(Value::as_bool) != Some(true)
            && s(u, "email").to_lowercase() == email
            && except.is_none_or(|id| s(u, "id") != id)
    });
    if taken {
        return Err(ApiError::bad_request("User already exists with this email"));
    }
    Ok(())
}

/// Applies the writable fields of `body` to user `u` and refreshes the derived ones.
fn apply(u: &mut Value, body: &Map<String, Value>, now_ms: i64) {
    for k in [
        "firstName",
        "lastName",
        "phone",
        "profilePhoto",
        "platformLanguage",
    ] {
        if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
            u[k] = v.clone();
        }
    }
    if let Some(e) = body.get("email").and_then(Value::as_str) {
        u["email"] = json!(e.trim().to_lowercase());
    }
    for k in ["type", "role", "locationIds"] {
        if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
            u["roles"][k] = v.clone();
        }
    }
    if let Some(p) = body.get("permissions").and_then(Value::as_object) {
        for (k, v) in p {
            u["permissions"][k.as_str()] = v.clone();
        }
    }
    for k in ["scopes", "scopesAssignedToOnly"] {
        if let Some(v) = body.get(k).filter(|v| v.is_array()) {
            u[k] = v.clone();
        }
    }
    if let Some(p) = body.get("twilioPhone").and_then(Value::as_object) {
        for (loc, phone) in p {
            u["lcPhone"][loc.as_str()] = phone.clone();
        }
    }
    let name = format!("{} {}", s(u, "firstName"), s(u, "lastName"))
        .trim()
        .to_string();
    u["name"] = json!(name);
    u["dateUpdated"] = json!(iso(now_ms));
}

/// The `UserCreate` payloads: one per location for a sub-account user, one with `companyId` for
/// an agency user.
fn create_events(ctx: &mut Ctx<'_>, u: &Value) {
    let mut p = Map::new();
    p.insert("type".into(), json!("UserCreate"));
    for k in ["id", "firstName", "lastName", "email", "phone", "extension"] {
        if let Some(v) = u.get(k) {
            p.insert(k.into(), v.clone());
        }
    }
    p.insert(
        "role".into(),
        u.pointer("/roles/role").cloned().unwrap_or(json!("user")),
    );
    p.insert(
        "permissions".into(),
        u.get("permissions").cloned().unwrap_or(json!({})),
    );
    let locations = location_ids(u);
    if u.pointer("/roles/type").and_then(Value::as_str) == Some("agency") {
        p.insert(
            "companyId".into(),
            u.get("companyId").cloned().unwrap_or(Value::Null),
        );
        p.insert("locations".into(), json!(locations));
        // Delivered to the apps of each location the agency user works in.
        for loc in &locations {
            ctx.emit("UserCreate", loc, Value::Object(p.clone()));
        }
    } else {
        for loc in &locations {
            let mut one = p.clone();
            one.insert("locationId".into(), json!(loc));
            ctx.emit("UserCreate", loc, Value::Object(one));
        }
    }
}

fn get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let u = user(ctx, req, req.path("userId")?)?;
    ok((*u).clone())
}

fn create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&[
        "companyId",
        "firstName",
        "lastName",
        "email",
        "password",
        "type",
        "role",
        "locationIds",
    ])?;
    let body = req.body_object();
    validate(&body)?;
    let company_id = req.field_str("companyId").unwrap_or_default().to_string();
    check_company(req, &company_id)?;
    let locations: Vec<String> = body
        .get("locationIds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let kind = req.field_str("type").unwrap_or("account");
    if kind == "account" && locations.is_empty() {
        return Err(ApiError::unprocessable(vec![
            "locationIds should not be empty".into(),
        ]));
    }
    if let Some(l) = req.caller.location_id.as_deref()
        && !locations.iter().any(|x| x == l)
    {
        return Err(forbidden_location());
    }
    check_unique_email(
        ctx,
        &company_id,
        req.field_str("email").unwrap_or_default(),
        None,
    )?;
    let id = new_id();
    let now = iso(req.now_ms);
    let mut u = json!({
        "id": id,
        "name": "",
        "firstName": "",
        "lastName": "",
        "email": "",
        "phone": "",
        "extension": "",
        "permissions": DEFAULT_PERMISSIONS.iter().map(|(k, v)| ((*k).to_string(), json!(v))).collect::<Map<String, Value>>(),
        "roles": { "type": kind, "role": "user", "locationIds": [], "restrictSubAccount": false },
        "deleted": false,
        "lcPhone": {},
        "platformLanguage": "en_US",
        "companyId": company_id,
        "dateAdded": now,
    });
    apply(&mut u, &body, req.now_ms);
    ctx.put(USER, &id, None, Some(&company_id), u.clone())?;
    create_events(ctx, &u);
    created(u)
}

fn update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("userId")?;
    let old = user(ctx, req, id)?;
    let mut body = req.body_object();
    validate(&body)?;
    // The company of a user does not change.
    if let Some(c) = body.remove("companyId").as_ref().and_then(Value::as_str)
        && c != s(&old, "companyId")
    {
        return Err(ApiError::forbidden(
            "The token does not have access to this company.",
        ));
    }
    if let Some(e) = body.get("email").and_then(Value::as_str) {
        check_unique_email(ctx, s(&old, "companyId"), e, Some(id))?;
    }
    let mut u = (*old).clone();
    apply(&mut u, &body, req.now_ms);
    if u.pointer("/roles/type").and_then(Value::as_str) == Some("account")
        && location_ids(&u).is_empty()
    {
        return Err(ApiError::unprocessable(vec![
            "locationIds should not be empty".into(),
        ]));
    }
    // A location token cannot move a user out of its own location.
    if req.caller.location_id.is_some() && !visible(req, &u) {
        return Err(forbidden_location());
    }
    ctx.replace(USER, id, u.clone())?;
    ok(u)
}

fn delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("userId")?;
    let old = user(ctx, req, id)?;
    let mut u = (*old).clone();
    u["deleted"] = json!(true);
    u["dateUpdated"] = json!(iso(req.now_ms));
    ctx.replace(USER, id, u)?;
    ok(json!({
        "succeded": true,
        "message": format!(
            "Queued deleting user with e-mail {} and name {}. Will take effect in a few minutes.",
            s(&old, "email"),
            s(&old, "name")
        ),
    }))
}

fn sort_users(users: &mut [Arc<Value>], field: &str, desc: bool) {
    users.sort_by(|a, b| {
        let o = if field == "dateAdded" || field == "dateUpdated" {
            let t = |u: &Value| u.get(field).and_then(parse_time_ms).unwrap_or(0);
            t(a).cmp(&t(b))
        } else {
            s(a, field).to_lowercase().cmp(&s(b, field).to_lowercase())
        };
        // Ties keep creation order (the sort is stable).
        if desc { o.reverse() } else { o }
    });
}

fn search(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let company_id = req
        .query("companyId")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::unprocessable(vec!["companyId should not be empty".into()]))?;
    check_company(req, company_id)?;
    let skip = req.query_usize("skip", 0, usize::MAX)?;
    let limit = req.query_usize("limit", 25, 100)?;
    let location = req.query("locationId").filter(|l| !l.is_empty());
    if let (Some(l), Some(own)) = (location, req.caller.location_id.as_deref())
        && l != own
    {
        return Err(forbidden_location());
    }
    let ids: Vec<&str> = req
        .query("ids")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let q = req
        .query("query")
        .map(str::to_lowercase)
        .filter(|q| !q.is_empty());
    let mut hits: Vec<Arc<Value>> = company_users(ctx, company_id)
        .into_iter()
        .filter(|u| u.get("deleted").and_then(Value::as_bool) != Some(true))
        .filter(|u| visible(req, u))
        .filter(|u| location.is_none_or(|l| location_ids(u).iter().any(|x| x == l)))
        .filter(|u| {
            req.query("type")
                .filter(|t| !t.is_empty())
                .is_none_or(|t| u.pointer("/roles/type").and_then(Value::as_str) == Some(t))
        })
        .filter(|u| {
            req.query("role")
                .filter(|r| !r.is_empty())
                .is_none_or(|r| u.pointer("/roles/role").and_then(Value::as_str) == Some(r))
        })
        .filter(|u| ids.is_empty() || ids.contains(&s(u, "id")))
        .filter(|u| {
            q.as_ref().is_none_or(|q| {
                ["name", "email", "phone"]
                    .iter()
                    .any(|k| s(u, k).to_lowercase().contains(q.as_str()))
            })
        })
        .collect();
    let field = match req.query("sort").filter(|f| !f.is_empty()) {
        None => "dateAdded",
        Some(f @ ("dateAdded" | "dateUpdated" | "firstName" | "lastName" | "name" | "email")) => f,
        Some(_) => {
            return Err(ApiError::unprocessable(vec![
                "sort must be one of the following values: dateAdded, dateUpdated, firstName, lastName, name, email".into(),
            ]));
        }
    };
    let desc = match req.query("sortDirection").filter(|d| !d.is_empty()) {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => {
            return Err(ApiError::unprocessable(vec![
                "sortDirection must be one of the following values: asc, desc".into(),
            ]));
        }
    };
    sort_users(&mut hits, field, desc);
    let count = hits.len();
    let users: Vec<Value> = super::window(&hits, skip, limit)
        .iter()
        .map(|u| (**u).clone())
        .collect();
    ok(json!({ "users": users, "count": count }))
}

/// `skip`/`limit` given as strings (as the spec types them) or numbers.
fn body_usize(req: &Req, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
    match req.field(name) {
        None => Ok(default),
        Some(Value::Number(n)) => n.as_u64().map(|n| (n as usize).min(max)).ok_or_else(|| {
            ApiError::unprocessable(vec![format!("{name} must be a number string")])
        }),
        Some(Value::String(v)) if v.is_empty() => Ok(default),
        Some(Value::String(v)) => v
            .parse::<usize>()
            .map(|n| n.min(max))
            .map_err(|_| ApiError::unprocessable(vec![format!("{name} must be a number string")])),
        Some(_) => Err(ApiError::unprocessable(vec![format!(
            "{name} must be a number string"
        )])),
    }
}

/// `POST /users/search/filter-by-email` (agency tokens): users of the company whose email is
/// in `emails` (a comma-separated string, or a list). Without `projection` only `id` and
/// `email` are returned; `all` returns every field, a comma list those fields.
fn filter_by_email(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["companyId", "emails"])?;
    let company_id = req.field_str("companyId").unwrap_or_default().to_string();
    check_company(req, &company_id)?;
    let emails: Vec<String> = match req.field("emails") {
        Some(Value::String(v)) => v
            .split(',')
            .map(|e| e.trim().to_lowercase())
            .filter(|e| !e.is_empty())
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|e| e.trim().to_lowercase())
            .collect(),
        _ => {
            return Err(ApiError::unprocessable(vec![
                "emails must be a string".into(),
            ]));
        }
    };
    let deleted = match req.field("deleted") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(v)) if v == "true" || v == "false" => v == "true",
        Some(_) => {
            return Err(ApiError::unprocessable(vec![
                "deleted must be a boolean value".into(),
            ]));
        }
    };
    let skip = body_usize(req, "skip", 0, usize::MAX)?;
    let limit = body_usize(req, "limit", 25, 100)?;
    let hits: Vec<Arc<Value>> = company_users(ctx, &company_id)
        .into_iter()
        .filter(|u| (u.get("deleted").and_then(Value::as_bool) == Some(true)) == deleted)
        .filter(|u| emails.contains(&s(u, "email").to_lowercase()))
        .collect();
    let count = hits.len();
    let projection: Option<Vec<String>> = match req.field_str("projection").map(str::trim) {
        Some("all") => None,
        Some(p) if !p.is_empty() => Some(p.split(',').map(|f| f.trim().to_string()).collect()),
        _ => Some(vec!["email".to_string()]),
    };
    let users: Vec<Value> = super::window(&hits, skip, limit)
        .iter()
        .map(|u| match &projection {
            None => (**u).clone(),
            Some(fields) => {
                let mut out = Map::new();
                out.insert("id".into(), u["id"].clone());
                for f in fields {
                    if let Some(v) = u.get(f.as_str()) {
                        out.insert(f.clone(), v.clone());
                    }
                }
                Value::Object(out)
            }
        })
        .collect();
    ok(json!({ "users": users, "count": count }))
}

/// `GET /users/?locationId=` (deprecated): every live user working in the location.
fn list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = req
        .query("locationId")
        .filter(|l| !l.is_empty())
        .ok_or_else(|| ApiError::unprocessable(vec!["locationId should not be empty".into()]))?;
    if req
        .caller
        .location_id
        .as_deref()
        .is_some_and(|l| l != location_id)
    {
        return Err(forbidden_location());
    }
    let users: Vec<Value> = ctx
        .docs()
        .iter(USER)
        .map(|(_, d)| d.body.clone())
        .filter(|u| u.get("deleted").and_then(Value::as_bool) != Some(true))
        .filter(|u| location_ids(u).iter().any(|l| l == location_id))
        .filter(|u| {
            req.caller
                .company_id
                .as_deref()
                .is_none_or(|c| s(u, "companyId") == c)
        })
        .map(|u| (*u).clone())
        .collect();
    ok(json!({ "users": users }))
}

/// Adds five users to the demo location: an admin and four team members. Their ids go under
/// `user` for the seeders that assign contacts, opportunities and conversations.
pub fn seed(ctx: &mut Ctx<'_>, seed: &mut Seed) -> Result<(), ApiError> {
    const PEOPLE: &[(&str, &str, &str)] = &[
        ("Morgan", "Reyes", "admin"),
        ("Priya", "Natarajan", "user"),
        ("Samuel", "Okafor", "user"),
        ("Lena", "Fischer", "user"),
        ("Diego", "Alvarez", "user"),
    ];
    let location_id = seed.location_id.clone();
    let company_id = seed.company_id.clone();
    for (i, (first, last, role)) in PEOPLE.iter().enumerate() {
        let id: String = (0..20)
            .map(|_| {
                const ALPHABET: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
                ALPHABET[seed.rng.random_range(0..ALPHABET.len())] as char
            })
            .collect();
        let added = iso(seed.now_ms - (365 - 30 * i as i64) * 86_400_000);
        let mut permissions: Map<String, Value> = DEFAULT_PERMISSIONS
            .iter()
            .map(|(k, v)| ((*k).to_string(), json!(v)))
            .collect();
        if *role == "user" {
            permissions.insert("settingsEnabled".into(), json!(false));
            permissions.insert("assignedDataOnly".into(), json!(i % 2 == 0));
        }
        let phone = format!("+1555010{:04}", seed.rng.random_range(0..10_000));
        let u = json!({
            "id": id,
            "name": format!("{first} {last}"),
            "firstName": first,
            "lastName": last,
            "email": format!("{}.{}@example.com", first.to_lowercase(), last.to_lowercase()),
            "phone": phone,
            "extension": format!("{}", 101 + i),
            "permissions": permissions,
            "roles": { "type": "account", "role": role, "locationIds": [location_id], "restrictSubAccount": false },
            "deleted": false,
            "lcPhone": { location_id.clone(): phone },
            "platformLanguage": "en_US",
            "companyId": company_id,
            "dateAdded": added,
            "dateUpdated": added,
        });
        ctx.put(USER, &id, None, Some(&company_id), u)?;
        seed.ids.entry("user").or_default().push(id);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::handlers::testing::call;
    use crate::store::Docs;
    use parking_lot::RwLock;

    fn body(email: &str) -> Value {
        json!({
            "companyId": "company1", "firstName": "John", "lastName": "Deo", "email": email,
            "password": "*******", "type": "account", "role": "admin", "locationIds": ["loc1"],
            "permissions": { "campaignsEnabled": false }, "scopes": ["contacts.write"],
        })
    }

    #[test]
    fn crud_and_event() {
        let docs = RwLock::new(Docs::default());
        let (r, ev) = call(&docs, "users.create", &[], &[], body("John@Deo.com"));
        let r = r.unwrap();
        assert_eq!(r.status, 201);
        let u = r.body;
        let id = u["id"].as_str().unwrap().to_string();
        assert_eq!(u["name"], "John Deo");
        assert_eq!(u["email"], "john@deo.com");
        assert_eq!(u["permissions"]["campaignsEnabled"], false);
        assert_eq!(u["permissions"]["contactsEnabled"], true);
        assert!(u.get("password").is_none());
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].kind, "UserCreate");
        assert_eq!(ev[0].payload["locationId"], "loc1");
        assert_eq!(ev[0].payload["role"], "admin");

        let (r, _) = call(&docs, "users.get", &[("userId", &id)], &[], Value::Null);
        assert_eq!(r.unwrap().body["roles"]["role"], "admin");
        let (r, _) = call(
            &docs,
            "users.update",
            &[("userId", &id)],
            &[],
            json!({ "firstName": "Jane", "role": "user" }),
        );
        assert_eq!(r.unwrap().body["name"], "Jane Deo");
        let (r, _) = call(&docs, "users.get", &[("userId", &id)], &[], Value::Null);
        assert_eq!(r.unwrap().body["roles"]["role"], "user");
        let (r, _) = call(
            &docs,
            "users.update",
            &[("userId", &id)],
            &[],
            json!({ "locationIds": ["elsewhere"] }),
        );
        assert_eq!(
            r.unwrap_err().status,
            403,
            "a location token cannot move a user away"
        );
        let (r, _) = call(&docs, "users.delete", &[("userId", &id)], &[], Value::Null);
        let r = r.unwrap().body;
        assert_eq!(r["succeded"], true);
        assert!(
            r["message"].as_str().unwrap().contains("name Jane Deo"),
            "{r}"
        );
        let (r, _) = call(&docs, "users.get", &[("userId", &id)], &[], Value::Null);
        assert_eq!(r.unwrap_err().status, 404);
        // Deleted users are still found by filter-by-email with deleted: true.
        let (r, _) = call(
            &docs,
            "users.filter_by_email",
            &[],
            &[],
            json!({ "companyId": "company1", "emails": "john@deo.com", "deleted": true }),
        );
        assert_eq!(r.unwrap().body["count"], 1);
    }

    #[test]
    fn validation() {
        let docs = RwLock::new(Docs::default());
        let (r, _) = call(
            &docs,
            "users.create",
            &[],
            &[],
            json!({ "companyId": "company1" }),
        );
        let e = r.unwrap_err();
        assert_eq!(e.status, 422);
        assert!(
            e.message
                .as_array()
                .unwrap()
                .contains(&json!("email should not be empty"))
        );
        let mut b = body("a@b.co");
        b["role"] = json!("owner");
        let (r, _) = call(&docs, "users.create", &[], &[], b);
        assert_eq!(r.unwrap_err().status, 422);
        let mut b = body("a@b.co");
        b["locationIds"] = json!(["elsewhere"]);
        let (r, _) = call(&docs, "users.create", &[], &[], b);
        assert_eq!(r.unwrap_err().status, 403);
        let (r, _) = call(&docs, "users.create", &[], &[], body("a@b.co"));
        assert!(r.is_ok());
        let (r, _) = call(&docs, "users.create", &[], &[], body("A@b.co"));
        assert_eq!(r.unwrap_err().status, 400, "email taken");
        let (r, _) = call(&docs, "users.get", &[("userId", "nope")], &[], Value::Null);
        assert_eq!(r.unwrap_err().message, json!("User not found"));
    }

    #[test]
    fn search_filters_and_pages() {
        let docs = RwLock::new(Docs::default());
        for i in 0..7 {
            let mut b = body(&format!("user{i}@example.com"));
            b["firstName"] = json!(format!("User{i}"));
            b["role"] = json!(if i == 0 { "admin" } else { "user" });
            let (r, _) = call(&docs, "users.create", &[], &[], b);
            r.unwrap();
        }
        let (r, _) = call(
            &docs,
            "users.search",
            &[],
            &[("companyId", "company1"), ("limit", "3"), ("skip", "3")],
            Value::Null,
        );
        let r = r.unwrap().body;
        assert_eq!(r["count"], 7);
        assert_eq!(r["users"].as_array().unwrap().len(), 3);
        assert_eq!(r["users"][0]["firstName"], "User3");
        let (r, _) = call(
            &docs,
            "users.search",
            &[],
            &[("companyId", "company1"), ("role", "admin")],
            Value::Null,
        );
        assert_eq!(r.unwrap().body["count"], 1);
        let (r, _) = call(
            &docs,
            "users.search",
            &[],
            &[("companyId", "company1"), ("query", "user6")],
            Value::Null,
        );
        assert_eq!(r.unwrap().body["count"], 1);
        let (r, _) = call(
            &docs,
            "users.search",
            &[],
            &[
                ("companyId", "company1"),
                ("sort", "firstName"),
                ("sortDirection", "desc"),
                ("limit", "1"),
            ],
            Value::Null,
        );
        assert_eq!(r.unwrap().body["users"][0]["firstName"], "User6");
        let (r, _) = call(&docs, "users.search", &[], &[], Value::Null);
        assert_eq!(r.unwrap_err().status, 422);
        let (r, _) = call(
            &docs,
            "users.filter_by_email",
            &[],
            &[],
            json!({ "companyId": "company1", "emails": "user1@example.com, USER2@example.com", "skip": "0", "limit": "10" }),
        );
        let r = r.unwrap().body;
        assert_eq!(r["count"], 2);
        assert_eq!(
            r["users"][0].as_object().unwrap().len(),
            2,
            "default projection is id and email"
        );
        let (r, _) = call(
            &docs,
            "users.list",
            &[],
            &[("locationId", "loc1")],
            Value::Null,
        );
        assert_eq!(r.unwrap().body["users"].as_array().unwrap().len(), 7);
        let (r, _) = call(
            &docs,
            "users.list",
            &[],
            &[("locationId", "loc2")],
            Value::Null,
        );
        assert_eq!(r.unwrap_err().status, 403);
    }
}
