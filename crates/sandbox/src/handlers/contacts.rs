//! Contacts: CRUD, upsert and duplicate lookup (following the location's duplicate setting),
//! search with filters and `searchAfter`, the deprecated cursor list, tags, tasks, notes,
//! followers, campaign and workflow enrolment, and the bulk operations.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{Ctx, HResult, Handler, Req, created, iso, merge, new_id, ok, parse_time_ms, succeded};
use crate::error::ApiError;

/// Document kinds owned by this module.
pub const CONTACT: &str = "contact";
/// A contact's task.
pub const TASK: &str = "task";
/// A contact's note.
pub const NOTE: &str = "note";
/// A contact's enrolment in a campaign or workflow.
pub const ENROLMENT: &str = "enrolment";
/// Location documents (owned by the locations module, read here for the duplicate setting).
pub const LOCATION: &str = "location";
/// A location's tag (owned by the locations module; contacts create missing ones).
pub const TAG: &str = "tag";

/// Registers the handlers of this module.
pub fn register(map: &mut HashMap<&'static str, Handler>) {
    map.insert("contacts.get", get);
    map.insert("contacts.search", search);
    map.insert("contacts.by_business", by_business);
    map.insert("contacts.find_duplicate", find_duplicate);
    map.insert("contacts.find", find_duplicate);
    map.insert("contacts.appointments.list", appointments);
    map.insert("contacts.list", list);
    map.insert("contacts.create", create);
    map.insert("contacts.update", update);
    map.insert("contacts.delete", delete);
    map.insert("contacts.upsert", upsert);
    map.insert("contacts.tags.add", tags_add);
    map.insert("contacts.tags.remove", tags_remove);
    map.insert("contacts.tags.bulk_update", tags_bulk);
    map.insert("contacts.tasks.list", tasks_list);
    map.insert("contacts.tasks.get", task_get);
    map.insert("contacts.tasks.create", task_create);
    map.insert("contacts.tasks.update", task_update);
    map.insert("contacts.tasks.complete", task_complete);
    map.insert("contacts.tasks.delete", task_delete);
    map.insert("contacts.notes.list", notes_list);
    map.insert("contacts.notes.get", note_get);
    map.insert("contacts.notes.create", note_create);
    map.insert("contacts.notes.update", note_update);
    map.insert("contacts.notes.delete", note_delete);
    map.insert("contacts.campaigns.add", campaign_add);
    map.insert("contacts.campaigns.remove", campaign_remove);
    map.insert("contacts.campaigns.remove_all", campaign_remove_all);
    map.insert("contacts.workflows.add", workflow_add);
    map.insert("contacts.workflows.remove", workflow_remove);
    map.insert("contacts.followers.add", followers_add);
    map.insert("contacts.followers.remove", followers_remove);
    map.insert("contacts.bulk_business", bulk_business);
}

/// Fields a caller may set on a contact.
const WRITABLE: &[&str] = &[
    "firstName",
    "lastName",
    "name",
    "email",
    "gender",
    "phone",
    "address1",
    "city",
    "state",
    "postalCode",
    "website",
    "timezone",
    "dnd",
    "dndSettings",
    "inboundDndSettings",
    "tags",
    "customFields",
    "source",
    "dateOfBirth",
    "country",
    "companyName",
    "assignedTo",
];

fn contact(ctx: &Ctx<'_>, req: &Req, id: &str) -> Result<Arc<Value>, ApiError> {
    ctx.find(CONTACT, id, "Contact", req)
}

/// Digits of a phone number with a leading `+` kept: `+1 888-888-8888` → `+18888888888`.
pub fn normalize_phone(s: &str) -> String {
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return String::new();
    }
    if s.trim_start().starts_with('+') {
        format!("+{digits}")
    } else if digits.len() == 10 {
        format!("+1{digits}")
    } else {
        format!("+{digits}")
    }
}

fn lower(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_lowercase()
}

/// Fills the derived fields HighLevel keeps on a contact (lower-case copies, full name).
fn derive(c: &mut Value) {
    let first = lower(c, "firstName");
    let last = lower(c, "lastName");
    let Some(obj) = c.as_object_mut() else { return };
    if let Some(email) = obj.get("email").and_then(Value::as_str).map(str::to_string) {
        obj.insert("email".into(), json!(email.trim()));
        obj.insert("emailLowerCase".into(), json!(email.trim().to_lowercase()));
    }
    if let Some(phone) = obj
        .get("phone")
        .and_then(Value::as_str)
        .map(normalize_phone)
    {
        obj.insert("phone".into(), json!(phone));
    }
    obj.insert("firstNameLowerCase".into(), json!(first));
    obj.insert("lastNameLowerCase".into(), json!(last));
    let full = format!("{first} {last}").trim().to_string();
    obj.insert("fullNameLowerCase".into(), json!(full));
    let display = [
        obj.get("firstName")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        obj.get("lastName")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    ]
    .join(" ")
    .trim()
    .to_string();
    if !display.is_empty() {
        obj.insert("contactName".into(), json!(display));
    }
    let tags = obj.get("tags").cloned().unwrap_or(json!([]));
    obj.insert("tags".into(), normalize_tags(&tags));
    if let Some(dob) = obj.get("dateOfBirth").and_then(parse_time_ms) {
        obj.insert("dateOfBirth".into(), json!(iso(dob)));
    }
}

/// Tags are lower-cased, trimmed and unique, as HighLevel stores them.
fn normalize_tags(v: &Value) -> Value {
    let mut out: Vec<String> = Vec::new();
    for t in v.as_array().into_iter().flatten().filter_map(Value::as_str) {
        let t = t.trim().to_lowercase();
        if !t.is_empty() && !out.contains(&t) {
            out.push(t);
        }
    }
    json!(out)
}

fn validate(body: &Map<String, Value>) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    if let Some(e) = body.get("email").and_then(Value::as_str) {
        let e = e.trim();
        let valid = e
            .split_once('@')
            .is_some_and(|(u, d)| !u.is_empty() && d.contains('.'));
        if !e.is_empty() && !valid {
            errs.push("email must be an email".to_string());
        }
    }
    if let Some(t) = body.get("tags")
        && !t.is_null()
        && !t.as_array().is_some_and(|a| a.iter().all(Value::is_string))
    {
        errs.push("tags must be an array of strings".to_string());
    }
    if let Some(cf) = body.get("customFields")
        && !cf.is_null()
        && !cf.is_array()
    {
        errs.push("customFields must be an array".to_string());
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(errs))
    }
}

/// `{id, value}` custom field entries merged by id (`key` or `field_value` accepted like HighLevel).
fn merge_custom_fields(existing: &Value, incoming: &Value) -> Value {
    let mut out: Vec<Value> = existing.as_array().cloned().unwrap_or_default();
    for f in incoming.as_array().into_iter().flatten() {
        let id = f
            .get("id")
            .or_else(|| f.get("key"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let value = f
            .get("value")
            .or_else(|| f.get("field_value"))
            .cloned()
            .unwrap_or(Value::Null);
        out.retain(|e| e.get("id").and_then(Value::as_str) != Some(id.as_str()));
        if !value.is_null() && !id.is_empty() {
            out.push(json!({ "id": id, "value": value }));
        }
    }
    json!(out)
}

fn location_settings(ctx: &Ctx<'_>, location_id: &str) -> (bool, Vec<String>) {
    let loc = ctx.get(LOCATION, location_id).map(|d| d.body.clone());
    let allow = loc
        .as_ref()
        .and_then(|l| l.pointer("/settings/allowDuplicateContact"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let order = loc
        .as_ref()
        .and_then(|l| l.pointer("/settings/duplicateContactOrder"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_else(|| vec!["email".to_string(), "phone".to_string()]);
    (allow, order)
}

/// The existing contact matching `email` or `phone` in the order the location's duplicate
/// setting gives, with the field that matched.
fn find_match(
    ctx: &Ctx<'_>,
    location_id: &str,
    email: Option<&str>,
    phone: Option<&str>,
    order: &[String],
) -> Option<(Arc<Value>, &'static str)> {
    let email = email
        .map(|e| e.trim().to_lowercase())
        .filter(|e| !e.is_empty());
    let phone = phone.map(normalize_phone).filter(|p| !p.is_empty());
    for field in order {
        let (key, value) = match field.as_str() {
            "email" => ("emailLowerCase", email.as_deref()),
            "phone" => ("phone", phone.as_deref()),
            _ => continue,
        };
        let Some(value) = value else { continue };
        let hit = ctx
            .docs()
            .find_by(CONTACT, key, value)
            .into_iter()
            .find(|d| d.location_id.as_deref() == Some(location_id));
        if let Some(doc) = hit {
            return Some((
                doc.body.clone(),
                if key == "phone" { "phone" } else { "email" },
            ));
        }
    }
    None
}

/// The webhook payload of a contact event: the contact's documented fields plus `type`.
pub(crate) fn contact_event(kind: &str, c: &Value) -> Value {
    let mut p = Map::new();
    p.insert("type".into(), json!(kind));
    for k in [
        "locationId",
        "id",
        "address1",
        "city",
        "state",
        "companyName",
        "country",
        "source",
        "dateAdded",
        "dateOfBirth",
        "dnd",
        "email",
        "name",
        "firstName",
        "lastName",
        "phone",
        "postalCode",
        "tags",
        "website",
        "attachments",
        "assignedTo",
        "customFields",
    ] {
        if let Some(v) = c.get(k) {
            p.insert(k.into(), v.clone());
        }
    }
    if !p.contains_key("name")
        && let Some(n) = c.get("contactName")
    {
        p.insert("name".into(), n.clone());
    }
    Value::Object(p)
}

fn ensure_location_tags(
    ctx: &mut Ctx<'_>,
    location_id: &str,
    tags: &Value,
) -> Result<(), ApiError> {
    for t in tags
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let exists = ctx
            .list(TAG, location_id)
            .iter()
            .any(|d| d.get("name").and_then(Value::as_str) == Some(t));
        if !exists {
            let id = new_id();
            ctx.put(
                TAG,
                &id,
                Some(location_id),
                None,
                json!({ "id": id, "name": t, "locationId": location_id }),
            )?;
        }
    }
    Ok(())
}

fn insert_contact(
    ctx: &mut Ctx<'_>,
    location_id: &str,
    body: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let id = new_id();
    let now = iso(ctx.now_ms);
    let mut c = json!({
        "id": id,
        "locationId": location_id,
        "dateAdded": now,
        "dateUpdated": now,
        "deleted": false,
        "tags": [],
        "type": "lead",
        "customFields": [],
        "dnd": false,
        "source": "public api",
        "followers": [],
        "additionalEmails": [],
    });
    let mut fields = body.clone();
    if let Some(cf) = fields.remove("customFields") {
        c["customFields"] = merge_custom_fields(&json!([]), &cf);
    }
    merge(
        &mut c,
        &fields,
        &[
            "id",
            "locationId",
            "dateAdded",
            "createNewIfDuplicateAllowed",
        ],
    );
    derive(&mut c);
    ensure_location_tags(ctx, location_id, &c["tags"])?;
    ctx.put(CONTACT, &id, Some(location_id), None, c.clone())?;
    ctx.emit(
        "ContactCreate",
        location_id,
        contact_event("ContactCreate", &c),
    );
    Ok(c)
}

/// Applies `patch` to contact `id`, emitting ContactUpdate and, when they changed,
/// ContactTagUpdate and ContactDndUpdate.
fn apply_update(
    ctx: &mut Ctx<'_>,
    id: &str,
    old: &Value,
    patch: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let mut c = old.clone();
    let mut fields = patch.clone();
    if let Some(cf) = fields.remove("customFields") {
        c["customFields"] = merge_custom_fields(&old["customFields"], &cf);
    }
    fields.retain(|k, _| WRITABLE.contains(&k.as_str()));
    merge(&mut c, &fields, &[]);
    c["dateUpdated"] = json!(iso(ctx.now_ms));
    derive(&mut c);
    let location_id = c["locationId"].as_str().unwrap_or_default().to_string();
    ensure_location_tags(ctx, &location_id, &c["tags"])?;
    ctx.replace(CONTACT, id, c.clone())?;
    ctx.emit(
        "ContactUpdate",
        &location_id,
        contact_event("ContactUpdate", &c),
    );
    if old.get("tags") != c.get("tags") {
        ctx.emit(
            "ContactTagUpdate",
            &location_id,
            contact_event("ContactTagUpdate", &c),
        );
    }
    if old.get("dnd") != c.get("dnd") || old.get("dndSettings") != c.get("dndSettings") {
        let mut p = contact_event("ContactDndUpdate", &c);
        p["dndSettings"] = c.get("dndSettings").cloned().unwrap_or(json!({}));
        ctx.emit("ContactDndUpdate", &location_id, p);
    }
    Ok(c)
}

fn get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let c = contact(ctx, req, req.path("contactId")?)?;
    ok(json!({ "contact": &*c }))
}

fn create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["locationId"])?;
    let body = req.body_object();
    validate(&body)?;
    let location_id = req.location_id()?;
    let (allow, order) = location_settings(ctx, &location_id);
    if !allow
        && let Some((dup, field)) = find_match(
            ctx,
            &location_id,
            req.field_str("email"),
            req.field_str("phone"),
            &order,
        )
    {
        return Err(
            ApiError::bad_request("This location does not allow duplicated contacts.").with_meta(
                json!({
                    "contactName": dup.get("contactName").cloned().unwrap_or(Value::Null),
                    "contactId": dup["id"],
                    "matchingField": field,
                }),
            ),
        );
    }
    let c = insert_contact(ctx, &location_id, &body)?;
    created(json!({ "contact": c }))
}

fn update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("contactId")?;
    let old = contact(ctx, req, id)?;
    let patch = req.body_object();
    validate(&patch)?;
    let c = apply_update(ctx, id, &old, &patch)?;
    ok(json!({ "succeded": true, "contact": c }))
}

fn delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("contactId")?;
    let c = contact(ctx, req, id)?;
    let location_id = c["locationId"].as_str().unwrap_or_default().to_string();
    for kind in [TASK, NOTE, ENROLMENT] {
        let ids: Vec<String> = ctx
            .children(kind, id)
            .iter()
            .filter_map(|d| d.get("id").and_then(Value::as_str).map(str::to_string))
            .collect();
        for child in ids {
            ctx.delete(kind, &child)?;
        }
    }
    // HighLevel removes the contact's opportunities and conversation with it.
    super::opportunities::delete_for_contact(ctx, id)?;
    super::conversations::delete_for_contact(ctx, id)?;
    ctx.delete(CONTACT, id)?;
    ctx.emit(
        "ContactDelete",
        &location_id,
        contact_event("ContactDelete", &c),
    );
    ok(succeded())
}

fn upsert(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["locationId"])?;
    let body = req.body_object();
    validate(&body)?;
    let location_id = req.location_id()?;
    let (allow, order) = location_settings(ctx, &location_id);
    let create_new = allow
        && req
            .field("createNewIfDuplicateAllowed")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let existing = if create_new {
        None
    } else {
        find_match(
            ctx,
            &location_id,
            req.field_str("email"),
            req.field_str("phone"),
            &order,
        )
    };
    let trace = new_id();
    match existing {
        Some((old, _)) => {
            let id = old["id"].as_str().unwrap_or_default().to_string();
            let c = apply_update(ctx, &id, &old, &body)?;
            ok(json!({ "new": false, "contact": c, "traceId": trace }))
        }
        None => {
            let c = insert_contact(ctx, &location_id, &body)?;
            created(json!({ "new": true, "contact": c, "traceId": trace }))
        }
    }
}

fn find_duplicate(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = req
        .query("locationId")
        .ok_or_else(|| ApiError::unprocessable(vec!["locationId should not be empty".into()]))?;
    if req
        .caller
        .location_id
        .as_deref()
        .is_some_and(|l| l != location_id)
    {
        return Err(super::forbidden_location());
    }
    let (_, order) = location_settings(ctx, location_id);
    let hit = find_match(
        ctx,
        location_id,
        req.query("email"),
        req.query("number"),
        &order,
    );
    ok(json!({ "contact": hit.map(|(c, _)| (*c).clone()) }))
}

/// Sort key of a contact in searches and lists: (dateAdded ms, id).
fn added_key(c: &Value) -> (i64, String) {
    (
        c.get("dateAdded").and_then(parse_time_ms).unwrap_or(0),
        c.get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    )
}

fn matches_query(c: &Value, q: &str) -> bool {
    let q = q.to_lowercase();
    [
        "fullNameLowerCase",
        "emailLowerCase",
        "phone",
        "companyName",
    ]
    .iter()
    .any(|k| {
        c.get(*k)
            .and_then(Value::as_str)
            .is_some_and(|s| s.to_lowercase().contains(&q))
    })
}

fn list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = req.location_id()?;
    if req
        .caller
        .location_id
        .as_deref()
        .is_some_and(|l| l != location_id)
    {
        return Err(super::forbidden_location());
    }
    let limit = req.query_usize("limit", 20, 100)?;
    let mut all: Vec<Arc<Value>> = ctx.list(CONTACT, &location_id);
    if let Some(q) = req.query("query").filter(|q| !q.is_empty()) {
        all.retain(|c| matches_query(c, q));
    }
    all.sort_by_key(|c| added_key(c));
    let total = all.len();
    let after = match (req.query("startAfter"), req.query("startAfterId")) {
        (Some(ms), Some(id)) if !ms.is_empty() && !id.is_empty() => {
            let ms: i64 = ms
                .parse()
                .map_err(|_| ApiError::unprocessable(vec!["startAfter must be a number".into()]))?;
            Some((ms, id.to_string()))
        }
        _ => None,
    };
    let page: Vec<Value> = all
        .iter()
        .filter(|c| after.as_ref().is_none_or(|a| added_key(c) > *a))
        .take(limit)
        .map(|c| (**c).clone())
        .collect();
    let last = page.last().map(added_key);
    let more = last
        .as_ref()
        .is_some_and(|l| all.iter().any(|c| added_key(c) > *l));
    let meta = match (&last, more) {
        (Some((ms, id)), true) => json!({
            "total": total,
            "startAfterId": id,
            "startAfter": ms,
            "nextPageUrl": format!("/contacts/?locationId={location_id}&startAfter={ms}&startAfterId={id}&limit={limit}"),
        }),
        _ => {
            json!({ "total": total, "startAfterId": null, "startAfter": null, "nextPageUrl": null })
        }
    };
    ok(json!({ "contacts": page, "count": total, "meta": meta }))
}

fn by_business(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let business_id = req.path("businessId")?;
    let location_id = req.location_id()?;
    let limit = req.query_usize("limit", 25, 100)?;
    let skip = req.query_usize("skip", 0, usize::MAX)?;
    let mut all: Vec<Arc<Value>> = ctx
        .list(CONTACT, &location_id)
        .into_iter()
        .filter(|c| c.get("businessId").and_then(Value::as_str) == Some(business_id))
        .collect();
    if let Some(q) = req.query("query").filter(|q| !q.is_empty()) {
        all.retain(|c| matches_query(c, q));
    }
    let count = all.len();
    let page = super::window(&all, skip, limit);
    ok(
        json!({ "contacts": page.iter().map(|c| (**c).clone()).collect::<Vec<_>>(), "count": count }),
    )
}

fn field_value<'v>(c: &'v Value, field: &str) -> Option<&'v Value> {
    if let Some(id) = field.strip_prefix("customFields.") {
        return c
            .get("customFields")?
            .as_array()?
            .iter()
            .find(|f| f.get("id").and_then(Value::as_str) == Some(id))
            .and_then(|f| f.get("value"));
    }
    let field = match field {
        "email" => "emailLowerCase",
        "firstName" => "firstNameLowerCase",
        "lastName" => "lastNameLowerCase",
        other => other,
    };
    c.get(field).filter(|v| !v.is_null())
}

fn as_cmp_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_lowercase(),
        other => other.to_string(),
    }
}

fn eq_value(field_v: &Value, want: &Value) -> bool {
    match (field_v, want) {
        (Value::Array(items), Value::Array(wants)) => wants
            .iter()
            .all(|w| items.iter().any(|i| as_cmp_string(i) == as_cmp_string(w))),
        (Value::Array(items), w) => items.iter().any(|i| as_cmp_string(i) == as_cmp_string(w)),
        (f, Value::Array(wants)) => wants.iter().any(|w| as_cmp_string(f) == as_cmp_string(w)),
        (f, w) => as_cmp_string(f) == as_cmp_string(w),
    }
}

fn num_or_time(v: &Value) -> Option<f64> {
    v.as_f64().or_else(|| parse_time_ms(v).map(|n| n as f64))
}

/// Evaluates one search filter (or a `{group, filters}` group) against a contact.
fn filter_matches(c: &Value, f: &Value) -> Result<bool, ApiError> {
    if let Some(group) = f.get("group").and_then(Value::as_str) {
        let subs = f
            .get("filters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let results: Result<Vec<bool>, ApiError> =
            subs.iter().map(|s| filter_matches(c, s)).collect();
        let results = results?;
        return Ok(match group.to_ascii_uppercase().as_str() {
            "OR" => results.iter().any(|b| *b),
            _ => results.iter().all(|b| *b),
        });
    }
    let field = f.get("field").and_then(Value::as_str).unwrap_or_default();
    let op = f.get("operator").and_then(Value::as_str).unwrap_or("eq");
    let want = f.get("value").cloned().unwrap_or(Value::Null);
    let have = field_value(c, field);
    Ok(match op {
        "eq" => have.is_some_and(|h| eq_value(h, &want)),
        "not_eq" => !have.is_some_and(|h| eq_value(h, &want)),
        "contains" => have.is_some_and(|h| match h {
            Value::Array(items) => items
                .iter()
                .any(|i| as_cmp_string(i).contains(&as_cmp_string(&want))),
            other => as_cmp_string(other).contains(&as_cmp_string(&want)),
        }),
        "not_contains" => !have.is_some_and(|h| as_cmp_string(h).contains(&as_cmp_string(&want))),
        "exists" => have
            .is_some_and(|h| !(h.as_str() == Some("") || h.as_array().is_some_and(Vec::is_empty))),
        "not_exists" => {
            have.is_none_or(|h| h.as_str() == Some("") || h.as_array().is_some_and(Vec::is_empty))
        }
        "range" => {
            let h = have.and_then(num_or_time);
            let bound = |k: &str| want.get(k).and_then(num_or_time);
            match h {
                None => false,
                Some(h) => {
                    bound("gt").is_none_or(|b| h > b)
                        && bound("gte").is_none_or(|b| h >= b)
                        && bound("lt").is_none_or(|b| h < b)
                        && bound("lte").is_none_or(|b| h <= b)
                }
            }
        }
        other => {
            return Err(ApiError::unprocessable(vec![format!(
                "operator {other} is not supported for field {field}"
            )]));
        }
    })
}

fn search(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["locationId"])?;
    let location_id = req.location_id()?;
    if req
        .caller
        .location_id
        .as_deref()
        .is_some_and(|l| l != location_id)
    {
        return Err(super::forbidden_location());
    }
    let page_limit = req
        .field("pageLimit")
        .or_else(|| req.field("limit"))
        .and_then(Value::as_u64)
        .unwrap_or(20)
        .clamp(1, 500) as usize;
    let page = req
        .field("page")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .max(1) as usize;
    let filters = req
        .field("filters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut hits = Vec::new();
    for c in ctx.list(CONTACT, &location_id) {
        let mut keep = true;
        for f in &filters {
            if !filter_matches(&c, f)? {
                keep = false;
                break;
            }
        }
        if keep && let Some(q) = req.field_str("query").filter(|q| !q.is_empty()) {
            keep = matches_query(&c, q);
        }
        if keep {
            hits.push(c);
        }
    }
    // Sort: the first `sort` entry, then id as the tie-breaker that makes searchAfter exact.
    let (sort_field, desc) = req
        .field("sort")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .map(|s| {
            (
                s.get("field")
                    .and_then(Value::as_str)
                    .unwrap_or("dateAdded")
                    .to_string(),
                s.get("direction").and_then(Value::as_str) == Some("desc"),
            )
        })
        .unwrap_or(("dateAdded".to_string(), false));
    let key = |c: &Value| -> (Value, String) {
        let v = field_value(c, &sort_field).cloned().unwrap_or(Value::Null);
        let v = match parse_time_ms(&v) {
            Some(ms) if sort_field.starts_with("date") => json!(ms),
            _ => v,
        };
        (v, c["id"].as_str().unwrap_or_default().to_string())
    };
    let cmp = |a: &(Value, String), b: &(Value, String)| {
        let primary = match (&a.0, &b.0) {
            (Value::Number(x), Value::Number(y)) => x
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&y.as_f64().unwrap_or(0.0)),
            (x, y) => as_cmp_string(x).cmp(&as_cmp_string(y)),
        };
        primary.then_with(|| a.1.cmp(&b.1))
    };
    hits.sort_by(|a, b| {
        let o = cmp(&key(a), &key(b));
        if desc { o.reverse() } else { o }
    });
    let total = hits.len();
    let start = match req.field("searchAfter").and_then(Value::as_array) {
        Some(after) if after.len() == 2 => {
            let cursor = (
                after[0].clone(),
                after[1].as_str().unwrap_or_default().to_string(),
            );
            hits.iter()
                .position(|c| {
                    let o = cmp(&key(c), &cursor);
                    if desc { o.is_lt() } else { o.is_gt() }
                })
                .unwrap_or(total)
        }
        Some(_) => {
            return Err(ApiError::unprocessable(vec![
                "searchAfter must be the searchAfter array of the last contact of the previous page".into(),
            ]));
        }
        None => (page - 1).saturating_mul(page_limit),
    };
    let contacts: Vec<Value> = hits
        .iter()
        .skip(start)
        .take(page_limit)
        .map(|c| {
            let mut v = (**c).clone();
            let (k, id) = key(c);
            v["searchAfter"] = json!([k, id]);
            v
        })
        .collect();
    ok(json!({ "contacts": contacts, "total": total }))
}

fn appointments(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("contactId")?;
    contact(ctx, req, id)?;
    let events: Vec<Value> = ctx
        .docs()
        .iter("appointment")
        .filter(|(_, d)| d.body.get("contactId").and_then(Value::as_str) == Some(id))
        .map(|(_, d)| (*d.body).clone())
        .collect();
    ok(json!({ "events": events }))
}

fn tags_add(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("contactId")?;
    req.require_fields(&["tags"])?;
    let old = contact(ctx, req, id)?;
    let mut tags = old["tags"].as_array().cloned().unwrap_or_default();
    tags.extend(
        req.field("tags")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    );
    let mut patch = Map::new();
    patch.insert("tags".into(), Value::Array(tags));
    let c = apply_update(ctx, id, &old, &patch)?;
    created(json!({ "tags": c["tags"] }))
}

fn tags_remove(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("contactId")?;
    req.require_fields(&["tags"])?;
    let old = contact(ctx, req, id)?;
    let remove: Vec<String> = normalize_tags(req.field("tags").unwrap_or(&json!([])))
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let tags: Vec<Value> = old["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| !t.as_str().is_some_and(|t| remove.iter().any(|r| r == t)))
        .cloned()
        .collect();
    let mut patch = Map::new();
    patch.insert("tags".into(), Value::Array(tags));
    let c = apply_update(ctx, id, &old, &patch)?;
    ok(json!({ "tags": c["tags"] }))
}

fn tags_bulk(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["contacts", "tags", "locationId"])?;
    let kind = req.path("type")?;
    if kind != "add" && kind != "remove" {
        return Err(ApiError::unprocessable(vec![
            "type must be one of the following values: add, remove".into(),
        ]));
    }
    let location_id = req.location_id()?;
    let remove_all = req
        .field("removeAllTags")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let tags = normalize_tags(req.field("tags").unwrap_or(&json!([])));
    let mut responses = Vec::new();
    let mut errors = 0;
    for cid in req
        .field("contacts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let cid = cid.as_str().unwrap_or_default().to_string();
        let old = match ctx.get(CONTACT, &cid) {
            Some(d) if d.location_id.as_deref() == Some(location_id.as_str()) => d.body.clone(),
            _ => {
                errors += 1;
                responses.push(json!({ "contactId": cid, "message": "Contact not found", "type": "error", "oldTags": [], "tagsAdded": [], "tagsRemoved": [] }));
                continue;
            }
        };
        let old_tags: Vec<Value> = old["tags"].as_array().cloned().unwrap_or_default();
        let new_tags: Vec<Value> = if kind == "add" {
            let mut t = old_tags.clone();
            t.extend(tags.as_array().cloned().unwrap_or_default());
            t
        } else if remove_all {
            Vec::new()
        } else {
            old_tags
                .iter()
                .filter(|t| !tags.as_array().is_some_and(|r| r.contains(t)))
                .cloned()
                .collect()
        };
        let mut patch = Map::new();
        patch.insert("tags".into(), Value::Array(new_tags));
        let c = apply_update(ctx, &cid, &old, &patch)?;
        let added: Vec<&Value> = c["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| !old_tags.contains(t))
            .collect();
        let removed: Vec<&Value> = old_tags
            .iter()
            .filter(|t| !c["tags"].as_array().is_some_and(|n| n.contains(t)))
            .collect();
        responses.push(json!({ "contactId": cid, "message": "Tags updated", "type": "success", "oldTags": old_tags, "tagsAdded": added, "tagsRemoved": removed }));
    }
    ok(json!({ "succeded": errors == 0, "errorCount": errors, "responses": responses }))
}

fn task_json(
    req: &Req,
    id: &str,
    contact_id: &str,
    body: &Map<String, Value>,
    completed: bool,
) -> Value {
    json!({
        "id": id,
        "title": body.get("title").cloned().unwrap_or(json!("")),
        "body": body.get("body").cloned().unwrap_or(Value::Null),
        "assignedTo": body.get("assignedTo").cloned().unwrap_or(Value::Null),
        "dueDate": body.get("dueDate").and_then(parse_time_ms).map(iso).map(Value::String).unwrap_or(Value::Null),
        "completed": completed,
        "contactId": contact_id,
        "dateAdded": iso(req.now_ms),
    })
}

fn task_event(kind: &str, location_id: &str, t: &Value) -> Value {
    let mut p = json!({ "type": kind, "locationId": location_id });
    for k in [
        "id",
        "assignedTo",
        "body",
        "contactId",
        "title",
        "dueDate",
        "completed",
        "dateAdded",
    ] {
        if let Some(v) = t.get(k) {
            p[k] = v.clone();
        }
    }
    p
}

fn task_of(ctx: &Ctx<'_>, req: &Req) -> Result<(Arc<Value>, Arc<Value>), ApiError> {
    let cid = req.path("contactId")?;
    let c = contact(ctx, req, cid)?;
    let tid = req.path("taskId")?;
    let t = ctx
        .get(TASK, tid)
        .filter(|d| d.parent_id.as_deref() == Some(cid))
        .map(|d| d.body.clone())
        .ok_or_else(|| ApiError::not_found("Task"))?;
    Ok((c, t))
}

fn tasks_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let cid = req.path("contactId")?;
    contact(ctx, req, cid)?;
    let tasks: Vec<Value> = ctx
        .children(TASK, cid)
        .iter()
        .map(|t| (**t).clone())
        .collect();
    ok(json!({ "tasks": tasks }))
}

fn task_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let (_, t) = task_of(ctx, req)?;
    ok(json!({ "task": &*t }))
}

fn task_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let cid = req.path("contactId")?;
    let c = contact(ctx, req, cid)?;
    req.require_fields(&["title", "dueDate"])?;
    if req.field("dueDate").and_then(parse_time_ms).is_none() {
        return Err(ApiError::unprocessable(vec![
            "dueDate must be a valid ISO 8601 date string".into(),
        ]));
    }
    let body = req.body_object();
    let completed = body
        .get("completed")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let id = new_id();
    let t = task_json(req, &id, cid, &body, completed);
    let location_id = c["locationId"].as_str().unwrap_or_default().to_string();
    ctx.put(TASK, &id, Some(&location_id), Some(cid), t.clone())?;
    ctx.emit(
        "TaskCreate",
        &location_id,
        task_event("TaskCreate", &location_id, &t),
    );
    if completed {
        ctx.emit(
            "TaskComplete",
            &location_id,
            task_event("TaskComplete", &location_id, &t),
        );
    }
    created(json!({ "task": t }))
}

fn task_update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let (c, old) = task_of(ctx, req)?;
    let mut t = (*old).clone();
    let mut patch = req.body_object();
    patch.retain(|k, _| {
        ["title", "body", "dueDate", "completed", "assignedTo"].contains(&k.as_str())
    });
    if let Some(d) = patch.get("dueDate") {
        let ms = parse_time_ms(d).ok_or_else(|| {
            ApiError::unprocessable(vec!["dueDate must be a valid ISO 8601 date string".into()])
        })?;
        patch.insert("dueDate".into(), json!(iso(ms)));
    }
    merge(&mut t, &patch, &[]);
    let id = t["id"].as_str().unwrap_or_default().to_string();
    let location_id = c["locationId"].as_str().unwrap_or_default().to_string();
    ctx.replace(TASK, &id, t.clone())?;
    if t["completed"] == json!(true) && old["completed"] != json!(true) {
        ctx.emit(
            "TaskComplete",
            &location_id,
            task_event("TaskComplete", &location_id, &t),
        );
    }
    ok(json!({ "task": t }))
}

fn task_complete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let (c, old) = task_of(ctx, req)?;
    let completed = req
        .field("completed")
        .and_then(Value::as_bool)
        .ok_or_else(|| ApiError::unprocessable(vec!["completed must be a boolean value".into()]))?;
    let mut t = (*old).clone();
    t["completed"] = json!(completed);
    let id = t["id"].as_str().unwrap_or_default().to_string();
    let location_id = c["locationId"].as_str().unwrap_or_default().to_string();
    ctx.replace(TASK, &id, t.clone())?;
    if completed && old["completed"] != json!(true) {
        ctx.emit(
            "TaskComplete",
            &location_id,
            task_event("TaskComplete", &location_id, &t),
        );
    }
    ok(json!({ "task": t }))
}

fn task_delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let (c, t) = task_of(ctx, req)?;
    let id = t["id"].as_str().unwrap_or_default().to_string();
    let location_id = c["locationId"].as_str().unwrap_or_default().to_string();
    ctx.delete(TASK, &id)?;
    ctx.emit(
        "TaskDelete",
        &location_id,
        task_event("TaskDelete", &location_id, &t),
    );
    ok(succeded())
}

fn note_of(ctx: &Ctx<'_>, req: &Req) -> Result<(Arc<Value>, Arc<Value>), ApiError> {
    let cid = req.path("contactId")?;
    let c = contact(ctx, req, cid)?;
    let nid = req.path("id")?;
    let n = ctx
        .get(NOTE, nid)
        .filter(|d| d.parent_id.as_deref() == Some(cid))
        .map(|d| d.body.clone())
        .ok_or_else(|| ApiError::not_found("Note"))?;
    Ok((c, n))
}

fn note_event(kind: &str, location_id: &str, n: &Value) -> Value {
    let mut p = json!({ "type": kind, "locationId": location_id });
    for k in ["id", "body", "contactId", "dateAdded", "userId"] {
        if let Some(v) = n.get(k) {
            p[k] = v.clone();
        }
    }
    p
}

fn notes_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let cid = req.path("contactId")?;
    contact(ctx, req, cid)?;
    let mut notes: Vec<Value> = ctx
        .children(NOTE, cid)
        .iter()
        .map(|n| (**n).clone())
        .collect();
    // Newest first, as HighLevel lists notes.
    notes.reverse();
    ok(json!({ "notes": notes }))
}

fn note_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let (_, n) = note_of(ctx, req)?;
    ok(json!({ "note": &*n }))
}

fn note_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let cid = req.path("contactId")?;
    let c = contact(ctx, req, cid)?;
    req.require_fields(&["body"])?;
    let id = new_id();
    let n = json!({
        "id": id,
        "body": req.field("body"),
        "userId": req.field("userId"),
        "title": req.field("title"),
        "color": req.field("color"),
        "pinned": req.field("pinned").and_then(Value::as_bool).unwrap_or(false),
        "dateAdded": iso(req.now_ms),
        "contactId": cid,
    });
    let location_id = c["locationId"].as_str().unwrap_or_default().to_string();
    ctx.put(NOTE, &id, Some(&location_id), Some(cid), n.clone())?;
    ctx.emit(
        "NoteCreate",
        &location_id,
        note_event("NoteCreate", &location_id, &n),
    );
    created(json!({ "note": n }))
}

fn note_update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let (c, old) = note_of(ctx, req)?;
    req.require_fields(&["body"])?;
    let mut n = (*old).clone();
    let mut patch = req.body_object();
    patch.retain(|k, _| ["body", "userId", "title", "color", "pinned"].contains(&k.as_str()));
    merge(&mut n, &patch, &[]);
    let id = n["id"].as_str().unwrap_or_default().to_string();
    let location_id = c["locationId"].as_str().unwrap_or_default().to_string();
    ctx.replace(NOTE, &id, n.clone())?;
    ctx.emit(
        "NoteUpdate",
        &location_id,
        note_event("NoteUpdate", &location_id, &n),
    );
    ok(json!({ "note": n }))
}

fn note_delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let (c, n) = note_of(ctx, req)?;
    let id = n["id"].as_str().unwrap_or_default().to_string();
    let location_id = c["locationId"].as_str().unwrap_or_default().to_string();
    ctx.delete(NOTE, &id)?;
    ctx.emit(
        "NoteDelete",
        &location_id,
        note_event("NoteDelete", &location_id, &n),
    );
    ok(succeded())
}

fn enrol(
    ctx: &mut Ctx<'_>,
    req: &Req,
    kind: &str,
    target_param: &str,
    target_kind: &str,
    what: &str,
) -> HResult {
    let cid = req.path("contactId")?;
    let c = contact(ctx, req, cid)?;
    let target = req.path(target_param)?;
    let location_id = c["locationId"].as_str().unwrap_or_default().to_string();
    if ctx
        .get(target_kind, target)
        .is_none_or(|d| d.location_id.as_deref() != Some(location_id.as_str()))
    {
        return Err(ApiError::not_found(what));
    }
    let id = format!("{kind}:{cid}:{target}");
    let row = json!({
        "id": id, "kind": kind, "contactId": cid, "targetId": target,
        "eventStartTime": req.field("eventStartTime"), "dateAdded": iso(req.now_ms),
    });
    ctx.put(ENROLMENT, &id, Some(&location_id), Some(cid), row)?;
    created(succeded())
}

fn unenrol(ctx: &mut Ctx<'_>, req: &Req, kind: &str, target_param: &str) -> HResult {
    let cid = req.path("contactId")?;
    contact(ctx, req, cid)?;
    let id = format!("{kind}:{cid}:{}", req.path(target_param)?);
    if ctx.get(ENROLMENT, &id).is_some() {
        ctx.delete(ENROLMENT, &id)?;
    }
    ok(succeded())
}

fn campaign_add(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    enrol(ctx, req, "campaign", "campaignId", "campaign", "Campaign")
}

fn campaign_remove(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    unenrol(ctx, req, "campaign", "campaignId")
}

fn campaign_remove_all(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let cid = req.path("contactId")?;
    contact(ctx, req, cid)?;
    let ids: Vec<String> = ctx
        .children(ENROLMENT, cid)
        .iter()
        .filter(|e| e["kind"] == "campaign")
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect();
    for id in ids {
        ctx.delete(ENROLMENT, &id)?;
    }
    ok(succeded())
}

fn workflow_add(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    enrol(ctx, req, "workflow", "workflowId", "workflow", "Workflow")
}

fn workflow_remove(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    unenrol(ctx, req, "workflow", "workflowId")
}

fn followers_change(ctx: &mut Ctx<'_>, req: &Req, add: bool) -> HResult {
    let cid = req.path("contactId")?;
    req.require_fields(&["followers"])?;
    let old = contact(ctx, req, cid)?;
    let mut followers: Vec<Value> = old["followers"].as_array().cloned().unwrap_or_default();
    let given: Vec<Value> = req
        .field("followers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut changed = Vec::new();
    for f in given {
        let present = followers.contains(&f);
        if add && !present {
            followers.push(f.clone());
            changed.push(f);
        } else if !add && present {
            followers.retain(|x| *x != f);
            changed.push(f);
        }
    }
    let mut c = (*old).clone();
    c["followers"] = json!(followers);
    ctx.replace(CONTACT, cid, c)?;
    if add {
        created(json!({ "followers": followers, "followersAdded": changed }))
    } else {
        ok(json!({ "followers": followers, "followersRemoved": changed }))
    }
}

fn followers_add(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    followers_change(ctx, req, true)
}

fn followers_remove(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    followers_change(ctx, req, false)
}

fn bulk_business(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["locationId", "ids"])?;
    let location_id = req.location_id()?;
    let business = req.field("businessId").cloned().unwrap_or(Value::Null);
    let mut done = Vec::new();
    for id in req
        .field("ids")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let id = id.as_str().unwrap_or_default().to_string();
        let Some(old) = ctx
            .get(CONTACT, &id)
            .filter(|d| d.location_id.as_deref() == Some(location_id.as_str()))
            .map(|d| d.body.clone())
        else {
            continue;
        };
        let mut c = (*old).clone();
        c["businessId"] = business.clone();
        c["dateUpdated"] = json!(iso(ctx.now_ms));
        ctx.replace(CONTACT, &id, c.clone())?;
        ctx.emit(
            "ContactUpdate",
            &location_id,
            contact_event("ContactUpdate", &c),
        );
        done.push(id);
    }
    ok(json!({ "success": true, "ids": done }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_normalize() {
        assert_eq!(normalize_phone("+1 888-888-8888"), "+18888888888");
        assert_eq!(normalize_phone("(888) 888-8888"), "+18888888888");
        assert_eq!(normalize_phone(""), "");
    }

    #[test]
    fn custom_fields_merge_by_id() {
        let merged = merge_custom_fields(
            &json!([{ "id": "a", "value": 1 }, { "id": "b", "value": 2 }]),
            &json!([{ "id": "a", "value": 3 }, { "key": "c", "field_value": "x" }, { "id": "b", "value": null }]),
        );
        assert_eq!(
            merged,
            json!([{ "id": "a", "value": 3 }, { "id": "c", "value": "x" }])
        );
    }

    #[test]
    fn filters() {
        let c = json!({ "emailLowerCase": "a@b.co", "tags": ["vip", "x"], "dateAdded": "2024-01-02T00:00:00.000Z" });
        assert!(
            filter_matches(
                &c,
                &json!({ "field": "email", "operator": "eq", "value": "A@b.co" })
            )
            .unwrap_or(false)
        );
        assert!(
            filter_matches(
                &c,
                &json!({ "field": "tags", "operator": "eq", "value": "vip" })
            )
            .unwrap_or(false)
        );
        assert!(
            !filter_matches(
                &c,
                &json!({ "field": "tags", "operator": "not_eq", "value": "vip" })
            )
            .unwrap_or(true)
        );
        assert!(filter_matches(&c, &json!({ "group": "OR", "filters": [
            { "field": "email", "operator": "eq", "value": "no" },
            { "field": "dateAdded", "operator": "range", "value": { "gte": "2024-01-01T00:00:00Z" } }
        ] })).unwrap_or(false));
        assert!(
            filter_matches(
                &c,
                &json!({ "field": "email", "operator": "bogus", "value": 1 })
            )
            .is_err()
        );
    }
}
