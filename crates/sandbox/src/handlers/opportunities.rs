//! Opportunities: pipelines with stages, opportunities (status, monetary value, assignment,
//! followers, custom fields), the snake_case `GET /opportunities/search` with
//! `startAfter`/`startAfterId` (or `page`) pagination and its `meta` object, upsert by
//! contact and pipeline, status changes, and the `Opportunity*` webhook events.
//!
//! Opportunities are stored with the contact as parent, so a contact's opportunities can be
//! found (and removed with it) through [`Ctx::children`].

use std::collections::HashMap;
use std::sync::Arc;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use rand::Rng;
use serde_json::{Map, Value, json};

use super::{
    Ctx, HResult, Handler, Req, Seed, created, forbidden_location, iso, new_id, ok, parse_time_ms,
    succeded,
};
use crate::error::ApiError;

/// A pipeline with its stages.
pub const PIPELINE: &str = "pipeline";
/// An opportunity (parent: its contact).
pub const OPPORTUNITY: &str = "opportunity";
/// Contacts (owned by the contacts module; read here for the embedded `contact`).
const CONTACT: &str = "contact";
/// Location documents (owned by the locations module; read for `allowDuplicateOpportunity`).
const LOCATION: &str = "location";

/// Statuses an opportunity can have.
const STATUSES: &[&str] = &["open", "won", "lost", "abandoned"];

/// Registers the handlers of this module.
pub fn register(map: &mut HashMap<&'static str, Handler>) {
    map.insert("opportunities.search", search);
    map.insert("opportunities.get", get);
    map.insert("opportunities.pipelines.list", pipelines);
    map.insert("opportunities.create", create);
    map.insert("opportunities.update", update);
    map.insert("opportunities.delete", delete);
    map.insert("opportunities.set_status", set_status);
    map.insert("opportunities.upsert", upsert);
    map.insert("opportunities.followers.add", followers_add);
    map.insert("opportunities.followers.remove", followers_remove);
}

/// The location named by query parameter `name` (422 when missing), which the token must own.
fn query_location(req: &Req, name: &str) -> Result<String, ApiError> {
    let loc = req
        .query(name)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::unprocessable(vec![format!("{name} should not be empty")]))?;
    if req.caller.location_id.as_deref().is_some_and(|l| l != loc) {
        return Err(forbidden_location());
    }
    Ok(loc.to_string())
}

/// The body's `locationId`, which the token must own.
fn body_location(req: &Req) -> Result<String, ApiError> {
    let loc = req.location_id()?;
    if req.caller.location_id.as_deref().is_some_and(|l| l != loc) {
        return Err(forbidden_location());
    }
    Ok(loc)
}

fn s<'v>(v: &'v Value, k: &str) -> &'v str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn opportunity(ctx: &Ctx<'_>, req: &Req, id: &str) -> Result<Arc<Value>, ApiError> {
    ctx.find(OPPORTUNITY, id, "Opportunity", req)
}

/// The pipeline `id` of `location_id`, or 404.
fn pipeline_of(ctx: &Ctx<'_>, location_id: &str, id: &str) -> Result<Arc<Value>, ApiError> {
    ctx.get(PIPELINE, id)
        .filter(|d| d.location_id.as_deref() == Some(location_id))
        .map(|d| d.body.clone())
        .ok_or_else(|| ApiError::not_found("Pipeline"))
}

fn stage_ids(pipeline: &Value) -> Vec<String> {
    pipeline
        .get("stages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|st| st.get("id").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// Checks the writable fields of a create/update/upsert body; returns every failure.
fn validate(body: &Map<String, Value>) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    if let Some(st) = body.get("status").filter(|v| !v.is_null())
        && !st.as_str().is_some_and(|st| STATUSES.contains(&st))
    {
        // The spec's enum also lists `all`, a search filter value that is not a status.
        errs.push(format!(
            "status must be one of the following values: {}",
            STATUSES.join(", ")
        ));
    }
    if let Some(mv) = body.get("monetaryValue").filter(|v| !v.is_null())
        && !mv.is_number()
    {
        errs.push("monetaryValue must be a number conforming to the specified constraints".into());
    }
    for k in [
        "name",
        "pipelineId",
        "pipelineStageId",
        "assignedTo",
        "contactId",
        "lostReasonId",
    ] {
        if let Some(v) = body.get(k).filter(|v| !v.is_null())
            && !v.is_string()
        {
            errs.push(format!("{k} must be a string"));
        }
    }
    if let Some(cf) = body.get("customFields").filter(|v| !v.is_null())
        && !cf.is_array()
    {
        errs.push("customFields must be an array".into());
    }
    if let Some(f) = body.get("followers").filter(|v| !v.is_null())
        && !f.as_array().is_some_and(|a| a.iter().all(Value::is_string))
    {
        errs.push("followers must be an array of strings".into());
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(errs))
    }
}

/// Custom field input (`{id|key, field_value|fieldValue|value}`) merged into the stored
/// `[{id, fieldValue}]` list by id.
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
            .get("field_value")
            .or_else(|| f.get("fieldValue"))
            .or_else(|| f.get("value"))
            .cloned()
            .unwrap_or(Value::Null);
        if id.is_empty() {
            continue;
        }
        out.retain(|e| e.get("id").and_then(Value::as_str) != Some(id.as_str()));
        if !value.is_null() {
            out.push(json!({ "id": id, "fieldValue": value }));
        }
    }
    json!(out)
}

/// The contact summary HighLevel embeds in an opportunity.
fn contact_summary(ctx: &Ctx<'_>, contact_id: &str) -> Option<Value> {
    let c = ctx.get(CONTACT, contact_id)?.body.clone();
    let mut out = Map::new();
    out.insert("id".into(), json!(contact_id));
    let name = c
        .get("contactName")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!("{} {}", s(&c, "firstName"), s(&c, "lastName"))
                .trim()
                .to_string()
        });
    out.insert("name".into(), json!(name));
    for k in ["companyName", "email", "phone"] {
        if let Some(v) = c.get(k).filter(|v| v.is_string()) {
            out.insert(k.into(), v.clone());
        }
    }
    out.insert("tags".into(), c.get("tags").cloned().unwrap_or(json!([])));
    Some(Value::Object(out))
}

/// What `GET /opportunities/search` may add to each opportunity.
#[derive(Default, Clone, Copy)]
struct Extras {
    tasks: bool,
    notes: bool,
    events: bool,
}

/// An opportunity as the API returns it: the stored fields plus the contact summary (read at
/// answer time, so contact edits show) and the `notes`/`tasks`/`calendarEvents` lists.
fn render(ctx: &Ctx<'_>, o: &Value, extras: Extras) -> Value {
    let mut v = o.clone();
    let cid = s(o, "contactId").to_string();
    if let Some(c) = contact_summary(ctx, &cid) {
        v["contact"] = c;
    }
    let kids = |kind: &str| -> Vec<Value> {
        ctx.children(kind, &cid)
            .iter()
            .map(|d| (**d).clone())
            .collect()
    };
    v["notes"] = json!(if extras.notes {
        kids("note")
    } else {
        Vec::new()
    });
    v["tasks"] = json!(if extras.tasks {
        kids("task")
    } else {
        Vec::new()
    });
    v["calendarEvents"] = json!(if extras.events {
        ctx.docs()
            .iter("appointment")
            .filter(|(_, d)| d.body.get("contactId").and_then(Value::as_str) == Some(cid.as_str()))
            .map(|(_, d)| (*d.body).clone())
            .collect()
    } else {
        Vec::new()
    });
    v
}

/// The documented webhook payload of an opportunity event.
fn event(kind: &str, o: &Value) -> Value {
    let mut p = Map::new();
    p.insert("type".into(), json!(kind));
    for k in [
        "locationId",
        "id",
        "assignedTo",
        "contactId",
        "monetaryValue",
        "name",
        "pipelineId",
        "pipelineStageId",
        "source",
        "status",
    ] {
        if let Some(v) = o.get(k).filter(|v| !v.is_null()) {
            p.insert(k.into(), v.clone());
        }
    }
    if let Some(d) = o.get("createdAt") {
        p.insert("dateAdded".into(), d.clone());
    }
    Value::Object(p)
}

/// Emits OpportunityUpdate and the specific events for each field group that changed.
fn emit_changes(ctx: &mut Ctx<'_>, old: &Value, new: &Value) {
    let location_id = s(new, "locationId").to_string();
    ctx.emit(
        "OpportunityUpdate",
        &location_id,
        event("OpportunityUpdate", new),
    );
    if old.get("pipelineStageId") != new.get("pipelineStageId")
        || old.get("pipelineId") != new.get("pipelineId")
    {
        ctx.emit(
            "OpportunityStageUpdate",
            &location_id,
            event("OpportunityStageUpdate", new),
        );
    }
    if old.get("status") != new.get("status") {
        ctx.emit(
            "OpportunityStatusUpdate",
            &location_id,
            event("OpportunityStatusUpdate", new),
        );
    }
    if old.get("monetaryValue") != new.get("monetaryValue") {
        ctx.emit(
            "OpportunityMonetaryValueUpdate",
            &location_id,
            event("OpportunityMonetaryValueUpdate", new),
        );
    }
    if old.get("assignedTo") != new.get("assignedTo") {
        ctx.emit(
            "OpportunityAssignedToUpdate",
            &location_id,
            event("OpportunityAssignedToUpdate", new),
        );
    }
}

/// Applies `patch` (already validated) to an opportunity: pipeline and stage consistency,
/// status and stage change times, custom fields, followers.
fn apply_patch(
    ctx: &Ctx<'_>,
    o: &mut Value,
    patch: &Map<String, Value>,
    now_ms: i64,
) -> Result<(), ApiError> {
    let location_id = s(o, "locationId").to_string();
    let now = iso(now_ms);
    let old = o.clone();
    let pipeline_id = patch
        .get("pipelineId")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .unwrap_or(s(&old, "pipelineId"))
        .to_string();
    let pipeline = pipeline_of(ctx, &location_id, &pipeline_id)?;
    let stages = stage_ids(&pipeline);
    let wanted_stage = patch
        .get("pipelineStageId")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty());
    let stage = match wanted_stage {
        Some(st) if stages.iter().any(|x| x == st) => st.to_string(),
        Some(_) => {
            return Err(ApiError::unprocessable(vec![
                "pipelineStageId must be a stage of the pipeline".into(),
            ]));
        }
        None if stages.iter().any(|x| x == s(&old, "pipelineStageId")) => {
            s(&old, "pipelineStageId").to_string()
        }
        None => stages.first().cloned().unwrap_or_default(),
    };
    o["pipelineId"] = json!(pipeline_id);
    o["pipelineStageId"] = json!(stage);
    for k in [
        "name",
        "monetaryValue",
        "assignedTo",
        "status",
        "lostReasonId",
        "source",
    ] {
        match patch.get(k) {
            Some(Value::Null) if k == "assignedTo" || k == "lostReasonId" => {
                if let Some(obj) = o.as_object_mut() {
                    obj.remove(k);
                }
            }
            Some(v) if !v.is_null() => o[k] = v.clone(),
            _ => {}
        }
    }
    // An empty assignedTo unassigns.
    if o.get("assignedTo").and_then(Value::as_str) == Some("")
        && let Some(obj) = o.as_object_mut()
    {
        obj.remove("assignedTo");
    }
    if let Some(cf) = patch.get("customFields").filter(|v| v.is_array()) {
        o["customFields"] = merge_custom_fields(&old["customFields"], cf);
    }
    if old.get("status") != o.get("status") {
        o["lastStatusChangeAt"] = json!(now);
        if o.get("status").and_then(Value::as_str) != Some("lost")
            && let Some(obj) = o.as_object_mut()
        {
            obj.remove("lostReasonId");
        }
    }
    if old.get("pipelineStageId") != o.get("pipelineStageId") {
        o["lastStageChangeAt"] = json!(now);
    }
    o["updatedAt"] = json!(now);
    o["lastActionDate"] = json!(now);
    Ok(())
}

fn allow_duplicates(ctx: &Ctx<'_>, location_id: &str) -> bool {
    ctx.get(LOCATION, location_id)
        .and_then(|d| {
            d.body
                .pointer("/settings/allowDuplicateOpportunity")
                .and_then(Value::as_bool)
        })
        .unwrap_or(false)
}

/// The opportunity of `contact_id` in `pipeline_id`, if any.
fn existing_for(ctx: &Ctx<'_>, contact_id: &str, pipeline_id: &str) -> Option<Arc<Value>> {
    ctx.children(OPPORTUNITY, contact_id)
        .into_iter()
        .find(|o| s(o, "pipelineId") == pipeline_id)
}

/// Creates an opportunity from a validated body (contactId, pipelineId, name, status set).
fn insert(
    ctx: &mut Ctx<'_>,
    location_id: &str,
    body: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let contact_id = body
        .get("contactId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if ctx
        .get(CONTACT, &contact_id)
        .is_none_or(|d| d.location_id.as_deref() != Some(location_id))
    {
        return Err(ApiError::not_found("Contact"));
    }
    let pipeline_id = body
        .get("pipelineId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    pipeline_of(ctx, location_id, &pipeline_id)?;
    if !allow_duplicates(ctx, location_id) && existing_for(ctx, &contact_id, &pipeline_id).is_some()
    {
        return Err(ApiError::bad_request(
            "Can not create duplicate opportunity for the contact.",
        ));
    }
    let id = new_id();
    let now = iso(ctx.now_ms);
    let mut o = json!({
        "id": id,
        "name": "",
        "monetaryValue": 0,
        "pipelineId": pipeline_id,
        "pipelineStageId": "",
        "status": "open",
        "source": "",
        "lastStatusChangeAt": now,
        "lastStageChangeAt": now,
        "lastActionDate": now,
        "createdAt": now,
        "updatedAt": now,
        "contactId": contact_id,
        "locationId": location_id,
        "customFields": [],
        "followers": [],
    });
    let mut patch = body.clone();
    patch.remove("pipelineId");
    apply_patch(ctx, &mut o, &patch, ctx.now_ms)?;
    // A new opportunity's change times are its creation time.
    o["lastStatusChangeAt"] = json!(now);
    o["lastStageChangeAt"] = json!(now);
    if let Some(f) = body.get("followers").and_then(Value::as_array) {
        o["followers"] = json!(dedupe(f.clone()));
    }
    ctx.put(
        OPPORTUNITY,
        &id,
        Some(location_id),
        Some(&contact_id),
        o.clone(),
    )?;
    ctx.emit(
        "OpportunityCreate",
        location_id,
        event("OpportunityCreate", &o),
    );
    Ok(o)
}

fn dedupe(items: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

fn get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let o = opportunity(ctx, req, req.path("id")?)?;
    ok(json!({ "opportunity": render(ctx, &o, Extras::default()) }))
}

fn pipelines(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = query_location(req, "locationId")?;
    let list: Vec<Value> = ctx
        .list(PIPELINE, &location_id)
        .iter()
        .map(|p| (**p).clone())
        .collect();
    ok(json!({ "pipelines": list }))
}

fn create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["pipelineId", "locationId", "name", "status", "contactId"])?;
    let body = req.body_object();
    validate(&body)?;
    let location_id = body_location(req)?;
    let o = insert(ctx, &location_id, &body)?;
    created(json!({ "opportunity": render(ctx, &o, Extras::default()) }))
}

fn update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("id")?;
    let old = opportunity(ctx, req, id)?;
    let body = req.body_object();
    validate(&body)?;
    let mut o = (*old).clone();
    apply_patch(ctx, &mut o, &body, req.now_ms)?;
    ctx.replace(OPPORTUNITY, id, o.clone())?;
    emit_changes(ctx, &old, &o);
    ok(json!({ "opportunity": render(ctx, &o, Extras::default()) }))
}

fn delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("id")?;
    let o = opportunity(ctx, req, id)?;
    ctx.delete(OPPORTUNITY, id)?;
    ctx.emit(
        "OpportunityDelete",
        s(&o, "locationId"),
        event("OpportunityDelete", &o),
    );
    ok(succeded())
}

fn set_status(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("id")?;
    req.require_fields(&["status"])?;
    let mut body = req.body_object();
    body.retain(|k, _| k == "status" || k == "lostReasonId");
    validate(&body)?;
    let old = opportunity(ctx, req, id)?;
    let mut o = (*old).clone();
    apply_patch(ctx, &mut o, &body, req.now_ms)?;
    ctx.replace(OPPORTUNITY, id, o.clone())?;
    emit_changes(ctx, &old, &o);
    ok(succeded())
}

/// Applies the upsert's follower instructions (`followersActionType` add|remove,
/// `isRemoveAllFollowers`) to `o`.
fn upsert_followers(o: &mut Value, body: &Map<String, Value>) -> Result<(), ApiError> {
    let given: Vec<Value> = body
        .get("followers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut current: Vec<Value> = o["followers"].as_array().cloned().unwrap_or_default();
    if body.get("isRemoveAllFollowers").and_then(Value::as_bool) == Some(true) {
        current.clear();
    }
    match body.get("followersActionType").and_then(Value::as_str) {
        Some("remove") => current.retain(|f| !given.contains(f)),
        Some("add") | None => current.extend(given),
        Some(_) => {
            return Err(ApiError::unprocessable(vec![
                "followersActionType must be one of the following values: add, remove".into(),
            ]));
        }
    }
    o["followers"] = json!(dedupe(current));
    Ok(())
}

/// `POST /opportunities/upsert`: updates the opportunity given by `id`, else the contact's
/// opportunity in the pipeline, else creates one. The spec marks the follower fields required
/// and leaves out `contactId`; HighLevel needs `contactId` to create and treats the follower
/// fields as optional.
fn upsert(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["pipelineId", "locationId"])?;
    let body = req.body_object();
    validate(&body)?;
    let location_id = body_location(req)?;
    let pipeline_id = req.field_str("pipelineId").unwrap_or_default().to_string();
    pipeline_of(ctx, &location_id, &pipeline_id)?;
    let existing = match req.field_str("id").filter(|i| !i.is_empty()) {
        Some(id) => Some(opportunity(ctx, req, id)?),
        None => req
            .field_str("contactId")
            .and_then(|cid| existing_for(ctx, cid, &pipeline_id)),
    };
    match existing {
        Some(old) => {
            let mut o = (*old).clone();
            let mut patch = body.clone();
            patch.remove("id");
            patch.remove("contactId");
            apply_patch(ctx, &mut o, &patch, req.now_ms)?;
            upsert_followers(&mut o, &body)?;
            let id = s(&o, "id").to_string();
            ctx.replace(OPPORTUNITY, &id, o.clone())?;
            emit_changes(ctx, &old, &o);
            ok(json!({ "opportunity": render(ctx, &o, Extras::default()), "new": false }))
        }
        None => {
            req.require_fields(&["contactId"])?;
            let mut fields = body.clone();
            if fields
                .get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                let cid = req.field_str("contactId").unwrap_or_default();
                let name = contact_summary(ctx, cid)
                    .and_then(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "Opportunity".to_string());
                fields.insert("name".into(), json!(name));
            }
            fields.remove("followers");
            let mut o = insert(ctx, &location_id, &fields)?;
            upsert_followers(&mut o, &body)?;
            let id = s(&o, "id").to_string();
            ctx.replace(OPPORTUNITY, &id, o.clone())?;
            ok(json!({ "opportunity": render(ctx, &o, Extras::default()), "new": true }))
        }
    }
}

fn followers_change(ctx: &mut Ctx<'_>, req: &Req, add: bool) -> HResult {
    let id = req.path("id")?;
    let remove_all = !add && matches!(req.query("isRemoveAllFollowers"), Some("true"));
    if !remove_all {
        req.require_fields(&["followers"])?;
    }
    let body = req.body_object();
    validate(&body)?;
    let old = opportunity(ctx, req, id)?;
    let mut followers: Vec<Value> = old["followers"].as_array().cloned().unwrap_or_default();
    let given: Vec<Value> = if remove_all {
        followers.clone()
    } else {
        body.get("followers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut changed = Vec::new();
    for f in dedupe(given) {
        let present = followers.contains(&f);
        if add && !present {
            followers.push(f.clone());
            changed.push(f);
        } else if !add && present {
            followers.retain(|x| *x != f);
            changed.push(f);
        }
    }
    let mut o = (*old).clone();
    o["followers"] = json!(followers);
    o["updatedAt"] = json!(iso(req.now_ms));
    ctx.replace(OPPORTUNITY, id, o)?;
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

/// Removes the opportunities of a deleted contact (HighLevel deletes them with the contact),
/// emitting `OpportunityDelete` for each. For the contacts module to call on contact delete.
pub fn delete_for_contact(ctx: &mut Ctx<'_>, contact_id: &str) -> Result<(), ApiError> {
    for o in ctx.children(OPPORTUNITY, contact_id) {
        ctx.delete(OPPORTUNITY, s(&o, "id"))?;
        ctx.emit(
            "OpportunityDelete",
            s(&o, "locationId"),
            event("OpportunityDelete", &o),
        );
    }
    Ok(())
}

/// Parses HighLevel's `mm-dd-yyyy` search dates (ISO dates and epoch ms accepted too) to the
/// epoch ms of that day's start.
fn parse_day(v: &str) -> Option<i64> {
    let parts: Vec<&str> = v.split('-').collect();
    if parts.len() == 3 && parts[2].len() == 4 {
        let m: u8 = parts[0].parse().ok()?;
        let d: u8 = parts[1].parse().ok()?;
        let y: i32 = parts[2].parse().ok()?;
        let date = time::Date::from_calendar_date(y, time::Month::try_from(m).ok()?, d).ok()?;
        return Some(date.midnight().assume_utc().unix_timestamp() * 1000);
    }
    parse_time_ms(&json!(v))
}

/// Sort key of an opportunity in searches: (createdAt ms, id).
fn added_key(o: &Value) -> (i64, String) {
    (
        o.get("createdAt").and_then(parse_time_ms).unwrap_or(0),
        s(o, "id").to_string(),
    )
}

fn matches_q(ctx: &Ctx<'_>, o: &Value, q: &str) -> bool {
    let q = q.to_lowercase();
    if s(o, "name").to_lowercase().contains(&q) {
        return true;
    }
    contact_summary(ctx, s(o, "contactId")).is_some_and(|c| {
        ["name", "email", "phone", "companyName"]
            .iter()
            .any(|k| s(&c, k).to_lowercase().contains(&q))
    })
}

/// Query parameters carried into `nextPageUrl` (everything but the cursor and page).
const SEARCH_PARAMS: &[&str] = &[
    "q",
    "location_id",
    "pipeline_id",
    "pipeline_stage_id",
    "contact_id",
    "status",
    "assigned_to",
    "campaignId",
    "id",
    "order",
    "endDate",
    "date",
    "country",
    "getTasks",
    "getNotes",
    "getCalendarEvents",
];

fn search(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = query_location(req, "location_id")?;
    let limit = req.query_usize("limit", 20, 100)?.max(1);
    let page = req.query_usize("page", 1, usize::MAX)?.max(1);
    let status = req.query("status").filter(|v| !v.is_empty());
    if let Some(st) = status
        && st != "all"
        && !STATUSES.contains(&st)
    {
        return Err(ApiError::unprocessable(vec![
            "status must be one of the following values: open, won, lost, abandoned, all".into(),
        ]));
    }
    let desc = match req.query("order").filter(|v| !v.is_empty()) {
        None | Some("added_desc") => true,
        Some("added_asc") => false,
        Some(_) => {
            return Err(ApiError::unprocessable(vec![
                "order must be one of the following values: added_asc, added_desc".into(),
            ]));
        }
    };
    let day = |name: &str| -> Result<Option<i64>, ApiError> {
        match req.query(name).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => parse_day(v).map(Some).ok_or_else(|| {
                ApiError::unprocessable(vec![format!("{name} must be a date in mm-dd-yyyy format")])
            }),
        }
    };
    let from = day("date")?;
    let to = day("endDate")?.map(|d| d + 86_400_000);
    let flag = |name: &str| matches!(req.query(name), Some("true"));
    let extras = Extras {
        tasks: flag("getTasks"),
        notes: flag("getNotes"),
        events: flag("getCalendarEvents"),
    };
    let eq = |name: &str, o: &Value, field: &str| {
        req.query(name)
            .filter(|v| !v.is_empty())
            .is_none_or(|v| s(o, field) == v)
    };
    let mut hits: Vec<Arc<Value>> = ctx
        .list(OPPORTUNITY, &location_id)
        .into_iter()
        .filter(|o| {
            eq("pipeline_id", o, "pipelineId")
                && eq("pipeline_stage_id", o, "pipelineStageId")
                && eq("contact_id", o, "contactId")
                && eq("assigned_to", o, "assignedTo")
                && eq("campaignId", o, "campaignId")
                && eq("id", o, "id")
                && status.is_none_or(|st| st == "all" || s(o, "status") == st)
        })
        .filter(|o| {
            let (ms, _) = added_key(o);
            from.is_none_or(|f| ms >= f) && to.is_none_or(|t| ms < t)
        })
        .collect();
    if let Some(q) = req.query("q").filter(|q| !q.is_empty()) {
        hits.retain(|o| matches_q(ctx, o, q));
    }
    if let Some(country) = req.query("country").filter(|v| !v.is_empty()) {
        hits.retain(|o| {
            ctx.get(CONTACT, s(o, "contactId"))
                .is_some_and(|c| s(&c.body, "country").eq_ignore_ascii_case(country))
        });
    }
    hits.sort_by_key(|o| added_key(o));
    if desc {
        hits.reverse();
    }
    let total = hits.len();
    let cursor = match (req.query("startAfter"), req.query("startAfterId")) {
        (Some(ms), Some(id)) if !ms.is_empty() && !id.is_empty() => {
            let ms: i64 = ms
                .parse()
                .map_err(|_| ApiError::unprocessable(vec!["startAfter must be a number".into()]))?;
            Some((ms, id.to_string()))
        }
        _ => None,
    };
    let start = match &cursor {
        Some(c) => hits
            .iter()
            .position(|o| {
                if desc {
                    added_key(o) < *c
                } else {
                    added_key(o) > *c
                }
            })
            .unwrap_or(total),
        None => (page - 1).saturating_mul(limit).min(total),
    };
    let items: Vec<Value> = hits
        .iter()
        .skip(start)
        .take(limit)
        .map(|o| render(ctx, o, extras))
        .collect();
    let current = start / limit + 1;
    let more = start + items.len() < total;
    let last = items.last().map(added_key);
    let meta = match (&last, more) {
        (Some((ms, id)), true) => {
            let mut url = String::from("/opportunities/search?");
            for name in SEARCH_PARAMS {
                if let Some(v) = req.query(name) {
                    url.push_str(&format!(
                        "{name}={}&",
                        utf8_percent_encode(v, NON_ALPHANUMERIC)
                    ));
                }
            }
            url.push_str(&format!(
                "limit={limit}&startAfter={ms}&startAfterId={id}&page={}",
                current + 1
            ));
            json!({
                "total": total,
                "nextPageUrl": url,
                "startAfterId": id,
                "startAfter": ms,
                "currentPage": current,
                "nextPage": current + 1,
                "prevPage": if current > 1 { json!(current - 1) } else { Value::Null },
            })
        }
        _ => json!({
            "total": total,
            "nextPageUrl": null,
            "startAfterId": null,
            "startAfter": null,
            "currentPage": current,
            "nextPage": null,
            "prevPage": if current > 1 { json!(current - 1) } else { Value::Null },
        }),
    };
    ok(json!({ "opportunities": items, "meta": meta, "aggregations": {} }))
}

/// A HighLevel-style id drawn from the seed's generator (so seeded data is reproducible).
fn seed_id(seed: &mut Seed) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..20)
        .map(|_| ALPHABET[seed.rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A stage id: HighLevel uses UUIDs for stages.
fn seed_uuid(seed: &mut Seed) -> String {
    let bytes: [u8; 16] = seed.rng.random();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Adds a "Sales Pipeline" with five stages and about forty opportunities for seeded contacts
/// (one per contact from the second on, spread over stages and statuses, assigned to seeded
/// users). Ids go under `pipeline`, `pipeline_stage` and `opportunity`.
pub fn seed(ctx: &mut Ctx<'_>, seed: &mut Seed) -> Result<(), ApiError> {
    let location_id = seed.location_id.clone();
    let pipeline_id = seed_id(seed);
    let stage_names = [
        "New Lead",
        "Contacted",
        "Proposal Sent",
        "Negotiation",
        "Closed",
    ];
    let mut stages = Vec::new();
    for (i, name) in stage_names.iter().enumerate() {
        let id = seed_uuid(seed);
        seed.ids
            .entry("pipeline_stage")
            .or_default()
            .push(id.clone());
        stages.push(json!({ "id": id, "name": name, "position": i, "showInFunnel": true, "showInPieChart": true }));
    }
    let created_ms = seed.now_ms - 90 * 86_400_000;
    ctx.put(
        PIPELINE,
        &pipeline_id,
        Some(&location_id),
        None,
        json!({
            "id": pipeline_id,
            "name": "Sales Pipeline",
            "stages": stages,
            "showInFunnel": true,
            "showInPieChart": true,
            "locationId": location_id,
            "colorRenderMode": "dot",
            "dateAdded": iso(created_ms),
            "dateUpdated": iso(created_ms),
        }),
    )?;
    seed.ids
        .entry("pipeline")
        .or_default()
        .push(pipeline_id.clone());

    // The first contact is left without an opportunity, free for a create call to use.
    let contacts: Vec<String> = seed
        .ids("contact")
        .iter()
        .skip(1)
        .take(40)
        .cloned()
        .collect();
    let deals = [
        "Website redesign",
        "Annual maintenance plan",
        "SEO package",
        "Kitchen remodel",
        "Consulting retainer",
        "Starter plan",
        "Enterprise licence",
        "Spring promotion",
    ];
    for (i, contact_id) in contacts.iter().enumerate() {
        let id = seed_id(seed);
        let stage_ix = seed.rng.random_range(0..stage_names.len());
        let status = if stage_ix == stage_names.len() - 1 {
            ["won", "lost", "won", "abandoned"][seed.rng.random_range(0..4)]
        } else {
            "open"
        };
        let value = seed.rng.random_range(5..200) * 50;
        let at = seed.now_ms - (40 - i as i64) * 86_400_000 - seed.rng.random_range(0..3_600_000);
        let contact = ctx.get(CONTACT, contact_id).map(|d| d.body.clone());
        let who = contact
            .as_ref()
            .map(|c| {
                format!("{} {}", s(c, "firstName"), s(c, "lastName"))
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        let deal = deals[seed.rng.random_range(0..deals.len())];
        let source = ["website", "referral", "facebook", "walk-in"][seed.rng.random_range(0..4)];
        let mut o = json!({
            "id": id,
            "name": if who.is_empty() { deal.to_string() } else { format!("{who} - {deal}") },
            "monetaryValue": value,
            "pipelineId": pipeline_id,
            "pipelineStageId": stages[stage_ix]["id"],
            "status": status,
            "source": source,
            "lastStatusChangeAt": iso(at),
            "lastStageChangeAt": iso(at),
            "lastActionDate": iso(at),
            "createdAt": iso(at),
            "updatedAt": iso(at),
            "contactId": contact_id,
            "locationId": location_id,
            "customFields": [],
            "followers": [],
        });
        if let Some(user) = seed.pick("user") {
            o["assignedTo"] = json!(user);
        }
        ctx.put(OPPORTUNITY, &id, Some(&location_id), Some(contact_id), o)?;
        seed.ids.entry("opportunity").or_default().push(id);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::Docs;
    use parking_lot::RwLock;
    use rand::SeedableRng;

    use crate::handlers::testing::call;

    /// A location `loc1` with one contact, a pipeline of two stages and its ids.
    fn setup() -> (RwLock<Docs>, String, String, Vec<String>) {
        let docs = RwLock::new(Docs::default());
        let (r, _) = call(
            &docs,
            "contacts.create",
            &[],
            &[],
            json!({ "locationId": "loc1", "firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com" }),
        );
        let contact_id = r.unwrap().body["contact"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let pipeline = json!({
            "id": "pipe1", "name": "Sales", "locationId": "loc1",
            "stages": [{ "id": "st1", "name": "New", "position": 0 }, { "id": "st2", "name": "Won", "position": 1 }],
        });
        {
            let mut g = docs.write();
            g.apply(&crate::store::Write::Put {
                kind: PIPELINE,
                id: "pipe1".into(),
                doc: crate::store::Doc {
                    location_id: Some("loc1".into()),
                    parent_id: None,
                    body: Arc::new(pipeline),
                    created_ms: 0,
                },
            });
        }
        (
            docs,
            contact_id,
            "pipe1".into(),
            vec!["st1".into(), "st2".into()],
        )
    }

    fn create_opp(docs: &RwLock<Docs>, contact: &str, name: &str) -> Value {
        let (r, _) = call(
            docs,
            "opportunities.create",
            &[],
            &[],
            json!({ "pipelineId": "pipe1", "locationId": "loc1", "name": name, "status": "open", "contactId": contact, "monetaryValue": 100 }),
        );
        let r = r.unwrap();
        assert_eq!(r.status, 201);
        r.body["opportunity"].clone()
    }

    #[test]
    fn crud_and_events() {
        let (docs, contact, _, stages) = setup();
        let (r, ev) = call(
            &docs,
            "opportunities.create",
            &[],
            &[],
            json!({ "pipelineId": "pipe1", "locationId": "loc1", "name": "Deal", "status": "open", "contactId": contact, "monetaryValue": 100 }),
        );
        let o = r.unwrap().body["opportunity"].clone();
        let id = o["id"].as_str().unwrap().to_string();
        assert_eq!(o["pipelineStageId"], "st1", "defaults to the first stage");
        assert_eq!(o["contact"]["email"], "ada@example.com");
        assert_eq!(
            ev.iter().filter(|e| e.kind == "OpportunityCreate").count(),
            1
        );
        assert_eq!(ev.last().unwrap().payload["dateAdded"], o["createdAt"]);

        let (r, _) = call(&docs, "opportunities.get", &[("id", &id)], &[], Value::Null);
        assert_eq!(r.unwrap().body["opportunity"]["name"], "Deal");

        let (r, ev) = call(
            &docs,
            "opportunities.update",
            &[("id", &id)],
            &[],
            json!({ "pipelineStageId": stages[1], "monetaryValue": 250, "assignedTo": "user1" }),
        );
        let o = r.unwrap().body["opportunity"].clone();
        assert_eq!(o["monetaryValue"], 250);
        let kinds: Vec<&str> = ev.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "OpportunityUpdate",
                "OpportunityStageUpdate",
                "OpportunityMonetaryValueUpdate",
                "OpportunityAssignedToUpdate"
            ]
        );

        let (r, _) = call(&docs, "opportunities.get", &[("id", &id)], &[], Value::Null);
        assert_eq!(r.unwrap().body["opportunity"]["pipelineStageId"], "st2");

        let (r, ev) = call(
            &docs,
            "opportunities.set_status",
            &[("id", &id)],
            &[],
            json!({ "status": "won" }),
        );
        assert_eq!(r.unwrap().body, json!({ "succeded": true }));
        assert!(
            ev.iter()
                .any(|e| e.kind == "OpportunityStatusUpdate" && e.payload["status"] == "won")
        );

        let (r, ev) = call(
            &docs,
            "opportunities.delete",
            &[("id", &id)],
            &[],
            Value::Null,
        );
        assert_eq!(r.unwrap().body, json!({ "succeded": true }));
        assert_eq!(ev[0].kind, "OpportunityDelete");
        let (r, _) = call(&docs, "opportunities.get", &[("id", &id)], &[], Value::Null);
        assert_eq!(r.unwrap_err().status, 404);
    }

    #[test]
    fn validation() {
        let (docs, contact, _, _) = setup();
        let (r, _) = call(
            &docs,
            "opportunities.create",
            &[],
            &[],
            json!({ "locationId": "loc1" }),
        );
        let e = r.unwrap_err();
        assert_eq!(e.status, 422);
        assert!(
            e.message
                .as_array()
                .unwrap()
                .contains(&json!("name should not be empty"))
        );
        let (r, _) = call(
            &docs,
            "opportunities.create",
            &[],
            &[],
            json!({ "pipelineId": "pipe1", "locationId": "loc1", "name": "x", "status": "maybe", "contactId": contact }),
        );
        assert_eq!(r.unwrap_err().status, 422);
        let (r, _) = call(
            &docs,
            "opportunities.create",
            &[],
            &[],
            json!({ "pipelineId": "nope", "locationId": "loc1", "name": "x", "status": "open", "contactId": contact }),
        );
        assert_eq!(r.unwrap_err().message, json!("Pipeline not found"));
        let (r, _) = call(
            &docs,
            "opportunities.create",
            &[],
            &[],
            json!({ "pipelineId": "pipe1", "locationId": "other", "name": "x", "status": "open", "contactId": contact }),
        );
        assert_eq!(r.unwrap_err().status, 403);
        create_opp(&docs, &contact, "first");
        let (r, _) = call(
            &docs,
            "opportunities.create",
            &[],
            &[],
            json!({ "pipelineId": "pipe1", "locationId": "loc1", "name": "dup", "status": "open", "contactId": contact }),
        );
        assert_eq!(
            r.unwrap_err().status,
            400,
            "one opportunity per contact and pipeline"
        );
        // Deleting the contact's opportunities (as contact deletion does).
        let mut ctx = Ctx::new(crate::handlers::Guard::Write(docs.write()), 0);
        delete_for_contact(&mut ctx, &contact).unwrap();
        assert_eq!(ctx.events.len(), 1);
        assert_eq!(ctx.events[0].kind, "OpportunityDelete");
        drop(ctx);
        assert_eq!(docs.read().count(OPPORTUNITY), 0);
    }

    #[test]
    fn upsert_and_followers() {
        let (docs, contact, _, _) = setup();
        let body = json!({ "pipelineId": "pipe1", "locationId": "loc1", "contactId": contact, "status": "open",
            "followers": ["u1"], "isRemoveAllFollowers": false, "followersActionType": "add" });
        let (r, _) = call(&docs, "opportunities.upsert", &[], &[], body.clone());
        let r = r.unwrap().body;
        assert_eq!(r["new"], true);
        assert_eq!(r["opportunity"]["name"], "Ada Lovelace");
        let id = r["opportunity"]["id"].as_str().unwrap().to_string();
        let mut again = body.clone();
        again["monetaryValue"] = json!(75);
        again["followers"] = json!(["u2"]);
        let (r, _) = call(&docs, "opportunities.upsert", &[], &[], again);
        let r = r.unwrap().body;
        assert_eq!(r["new"], false);
        assert_eq!(r["opportunity"]["id"], id.as_str());
        assert_eq!(r["opportunity"]["followers"], json!(["u1", "u2"]));

        let (r, _) = call(
            &docs,
            "opportunities.followers.add",
            &[("id", &id)],
            &[],
            json!({ "followers": ["u2", "u3"] }),
        );
        let r = r.unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.body["followersAdded"], json!(["u3"]));
        let (r, _) = call(
            &docs,
            "opportunities.followers.remove",
            &[("id", &id)],
            &[],
            json!({ "followers": ["u1"] }),
        );
        assert_eq!(
            r.unwrap().body,
            json!({ "followers": ["u2", "u3"], "followersRemoved": ["u1"] })
        );
        let (r, _) = call(
            &docs,
            "opportunities.followers.remove",
            &[("id", &id)],
            &[("isRemoveAllFollowers", "true")],
            json!({ "followers": [] }),
        );
        assert_eq!(r.unwrap().body["followers"], json!([]));
    }

    #[test]
    fn search_pages_with_start_after() {
        let docs = RwLock::new(Docs::default());
        let mut seed = Seed {
            location_id: "loc1".into(),
            company_id: "company1".into(),
            now_ms: 1_700_000_000_000,
            rng: rand::rngs::StdRng::seed_from_u64(7),
            ids: HashMap::new(),
        };
        for i in 0..26 {
            let (r, _) = call(
                &docs,
                "contacts.create",
                &[],
                &[],
                json!({ "locationId": "loc1", "firstName": format!("C{i}"), "email": format!("c{i}@example.com") }),
            );
            let id = r.unwrap().body["contact"]["id"]
                .as_str()
                .unwrap()
                .to_string();
            seed.ids.entry("contact").or_default().push(id);
        }
        {
            let mut ctx = Ctx::new(crate::handlers::Guard::Write(docs.write()), seed.now_ms);
            super::seed(&mut ctx, &mut seed).unwrap();
        }
        let (r, _) = call(
            &docs,
            "opportunities.pipelines.list",
            &[],
            &[("locationId", "loc1")],
            Value::Null,
        );
        let p = r.unwrap().body;
        assert_eq!(p["pipelines"][0]["stages"].as_array().unwrap().len(), 5);

        let mut seen = Vec::new();
        let mut query: Vec<(String, String)> = vec![
            ("location_id".into(), "loc1".into()),
            ("limit".into(), "10".into()),
        ];
        for page in 1..=3 {
            let q: Vec<(&str, &str)> = query
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let (r, _) = call(&docs, "opportunities.search", &[], &q, Value::Null);
            let body = r.unwrap().body;
            assert_eq!(body["meta"]["total"], 25);
            assert_eq!(body["meta"]["currentPage"], page);
            for o in body["opportunities"].as_array().unwrap() {
                seen.push(o["id"].as_str().unwrap().to_string());
            }
            if page < 3 {
                assert!(
                    body["meta"]["nextPageUrl"]
                        .as_str()
                        .unwrap()
                        .contains("location_id=loc1")
                );
                query = vec![
                    ("location_id".into(), "loc1".into()),
                    ("limit".into(), "10".into()),
                    ("startAfter".into(), body["meta"]["startAfter"].to_string()),
                    (
                        "startAfterId".into(),
                        body["meta"]["startAfterId"].as_str().unwrap().to_string(),
                    ),
                ];
            } else {
                assert!(body["meta"]["nextPageUrl"].is_null());
            }
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 25);
        assert_eq!(seen.len(), 25);

        let (r, _) = call(
            &docs,
            "opportunities.search",
            &[],
            &[("location_id", "loc1"), ("status", "open")],
            Value::Null,
        );
        let open = r.unwrap().body;
        assert!(
            open["opportunities"]
                .as_array()
                .unwrap()
                .iter()
                .all(|o| o["status"] == "open")
        );
        let (r, _) = call(
            &docs,
            "opportunities.search",
            &[],
            &[("location_id", "loc1"), ("q", "c3@example.com")],
            Value::Null,
        );
        assert_eq!(r.unwrap().body["meta"]["total"], 1);
        let (r, _) = call(&docs, "opportunities.search", &[], &[], Value::Null);
        assert_eq!(r.unwrap_err().status, 422);
        let (r, _) = call(
            &docs,
            "opportunities.search",
            &[],
            &[("location_id", "other")],
            Value::Null,
        );
        assert_eq!(r.unwrap_err().status, 403);
    }
}
