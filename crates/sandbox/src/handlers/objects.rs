//! Custom objects: the object schemas of a location (the standard `contact`, `opportunity` and
//! `business` objects plus custom ones such as `custom_objects.pets`), the fields of an object
//! (`GET /custom-fields/object-key/{objectKey}`), and records of custom objects: CRUD with
//! `properties` validated against the object's fields, and search with `query`, `filters`,
//! `sort`, `page`/`pageLimit` and `searchAfter` cursors.
//!
//! Documents: [`OBJECT_SCHEMA`] (custom schemas; the standard ones are derived, not stored),
//! [`OBJECT_RECORD`] (parent: the schema) and the object's fields, which are
//! [`CUSTOM_FIELD`] documents with `objectKey` set. Record `properties` are kept by the field's
//! short key (`breed` for `custom_objects.pets.breed`), as HighLevel answers them. Webhooks:
//! `RecordCreate`, `RecordUpdate`, `RecordDelete`.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;
use serde_json::{Map, Value, json};

use super::locations::custom_fields::{self, CUSTOM_FIELD, FieldInput, fields_of, slug, v2_view};
use super::locations::{LOCATION, location_scope, seed_id, stable_id};
use super::{Ctx, HResult, Handler, Req, Seed, created, iso, new_id, ok, parse_time_ms};
use crate::error::ApiError;

/// A custom object schema.
pub const OBJECT_SCHEMA: &str = "object_schema";
/// A record of a custom object.
pub const OBJECT_RECORD: &str = "object_record";

/// The standard objects every location has: key, singular, plural, primary display property.
const STANDARD: &[(&str, &str, &str, &str)] = &[
    ("contact", "Contact", "Contacts", "contact.name"),
    (
        "opportunity",
        "Opportunity",
        "Opportunities",
        "opportunity.name",
    ),
    ("business", "Company", "Companies", "business.name"),
];

/// Most owners a record may have, and most followers (HighLevel's limits).
const MAX_OWNERS: usize = 1;
const MAX_FOLLOWERS: usize = 10;
/// Largest `pageLimit` of a record search.
const MAX_PAGE_LIMIT: u64 = 100;

/// Registers the handlers of this module.
pub fn register(map: &mut HashMap<&'static str, Handler>) {
    map.insert("objects.list", list);
    map.insert("objects.get", get);
    map.insert("custom_fields.by_object_key", fields_by_object_key);
    map.insert("objects.records.search", records_search);
    map.insert("objects.records.get", record_get);
    map.insert("objects.records.create", record_create);
    map.insert("objects.records.update", record_update);
    map.insert("objects.records.delete", record_delete);
}

// ---------------------------------------------------------------------------------------------
// Schemas and fields
// ---------------------------------------------------------------------------------------------

/// The `locationId` query parameter the schema reads require (422 when missing), checked
/// against the caller.
fn query_location(ctx: &Ctx<'_>, req: &Req) -> Result<String, ApiError> {
    if req.query("locationId").is_none_or(str::is_empty) {
        return Err(ApiError::unprocessable(vec![
            "locationId should not be empty".into(),
        ]));
    }
    location_scope(ctx, req)
}

fn standard_schema(ctx: &Ctx<'_>, location_id: &str, key: &str) -> Option<Value> {
    let (key, singular, plural, primary) = STANDARD.iter().find(|s| s.0 == key)?;
    let since = ctx
        .get(LOCATION, location_id)
        .and_then(|d| d.body.get("dateAdded").cloned())
        .filter(Value::is_string)
        .unwrap_or_else(|| json!(iso(0)));
    Some(json!({
        "id": stable_id(&[location_id, key, "schema"]),
        "standard": true,
        "key": key,
        "labels": { "singular": singular, "plural": plural },
        "description": "",
        "locationId": location_id,
        "primaryDisplayProperty": primary,
        "dateAdded": since,
        "dateUpdated": since,
        "type": "SYSTEM_DEFINED",
    }))
}

/// A custom schema by key (`custom_objects.pets`, or just `pets`) or id.
fn custom_schema(ctx: &Ctx<'_>, location_id: &str, key: &str) -> Option<Arc<Value>> {
    let key = key.trim().to_lowercase();
    let full = if key.starts_with("custom_objects.") {
        key.clone()
    } else {
        format!("custom_objects.{key}")
    };
    ctx.list(OBJECT_SCHEMA, location_id).into_iter().find(|s| {
        s.get("key").and_then(Value::as_str) == Some(full.as_str())
            || s.get("id").and_then(Value::as_str) == Some(key.as_str())
    })
}

/// The schema of a standard or custom object, or 404.
fn schema(ctx: &Ctx<'_>, location_id: &str, key: &str) -> Result<Value, ApiError> {
    let lower = key.trim().to_lowercase();
    standard_schema(ctx, location_id, &lower)
        .or_else(|| custom_schema(ctx, location_id, key).map(|s| (*s).clone()))
        .ok_or_else(|| ApiError::not_found("Custom object"))
}

fn str_of<'v>(v: &'v Value, k: &str) -> &'v str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// `GET /objects/?locationId=`: the standard objects, then the custom ones in creation order.
fn list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = query_location(ctx, req)?;
    let mut objects: Vec<Value> = STANDARD
        .iter()
        .filter_map(|s| standard_schema(ctx, &location_id, s.0))
        .collect();
    objects.extend(
        ctx.list(OBJECT_SCHEMA, &location_id)
            .iter()
            .map(|s| (**s).clone()),
    );
    ok(json!({ "objects": objects }))
}

/// `GET /objects/{key}?locationId=&fetchProperties=`: the schema, with its fields when
/// `fetchProperties=true`. `cache` is always false: the sandbox reads its live state.
fn get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = query_location(ctx, req)?;
    let s = schema(ctx, &location_id, req.path("key")?)?;
    let mut out = json!({ "object": s, "cache": false });
    if req
        .query("fetchProperties")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        let fields: Vec<Value> = fields_of(ctx, &location_id, str_of(&s, "key"))
            .iter()
            .map(|f| v2_view(f))
            .collect();
        out["fields"] = json!(fields);
    }
    ok(out)
}

/// The default folder of an object's fields, in `ICustomFieldFolder` shape.
fn default_folder(location_id: &str, s: &Value) -> Value {
    let key = str_of(s, "key");
    json!({
        "id": custom_fields::default_folder_id(location_id, key),
        "name": format!("{} Details", s.pointer("/labels/singular").and_then(Value::as_str).unwrap_or("Object")),
        "objectKey": key,
        "locationId": location_id,
        "documentType": "folder",
        "dateAdded": s["dateAdded"],
        "dateUpdated": s["dateAdded"],
    })
}

/// `GET /custom-fields/object-key/{objectKey}?locationId=`: the object's fields and folders.
fn fields_by_object_key(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = query_location(ctx, req)?;
    let s = schema(ctx, &location_id, req.path("objectKey")?)?;
    let fields: Vec<Value> = fields_of(ctx, &location_id, str_of(&s, "key"))
        .iter()
        .map(|f| v2_view(f))
        .collect();
    ok(json!({ "fields": fields, "folders": [default_folder(&location_id, &s)] }))
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// The custom schema a records request names; standard objects are not served by the records
/// API here (contacts and opportunities have their own APIs).
fn record_schema(ctx: &Ctx<'_>, req: &Req, location_id: &str) -> Result<Arc<Value>, ApiError> {
    let key = req.path("schemaKey")?;
    if let Some(std) = STANDARD.iter().find(|s| key.eq_ignore_ascii_case(s.0)) {
        return Err(ApiError::bad_request(format!(
            "The records API of this sandbox serves custom objects only; use the {} API for {}",
            std.2.to_lowercase(),
            std.0
        )));
    }
    custom_schema(ctx, location_id, key).ok_or_else(|| ApiError::not_found("Custom object"))
}

/// The fields of a custom object by short key (`breed` for `custom_objects.pets.breed`).
fn field_map(ctx: &Ctx<'_>, location_id: &str, object_key: &str) -> HashMap<String, Arc<Value>> {
    let prefix = format!("{object_key}.");
    fields_of(ctx, location_id, object_key)
        .into_iter()
        .map(|f| {
            let key = str_of(&f, "fieldKey");
            (key.strip_prefix(&prefix).unwrap_or(key).to_string(), f)
        })
        .collect()
}

fn option_keys(f: &Value) -> Vec<(String, String)> {
    match f.get("options").and_then(Value::as_array) {
        Some(opts) => opts
            .iter()
            .map(|o| (str_of(o, "key").to_string(), str_of(o, "label").to_string()))
            .collect(),
        None => f["picklistOptions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|l| (slug(l), l.to_string()))
            .collect(),
    }
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    let ymd = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    ymd || parse_time_ms(&json!(s)).is_some()
}

/// Checks one property value against its field; answers the value to store.
fn check_value(f: &Value, key: &str, sub: Option<&str>, v: &Value) -> Result<Value, String> {
    let data_type = str_of(f, "dataType");
    if sub.is_some() && data_type != "TEXTBOX_LIST" {
        return Err(format!("{key} is not a valid property"));
    }
    let pick = |s: &str| -> Result<String, String> {
        let opts = option_keys(f);
        opts.iter()
            .find(|(k, l)| k == s || l == s)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| {
                let keys: Vec<&str> = opts.iter().map(|(k, _)| k.as_str()).collect();
                format!(
                    "{key} must be one of the following values: {}",
                    keys.join(", ")
                )
            })
    };
    match data_type {
        "NUMERICAL" | "FLOAT" => match v {
            Value::Number(_) => Ok(v.clone()),
            Value::String(s) => {
                let s = s.trim();
                s.parse::<i64>()
                    .map(|n| json!(n))
                    .or_else(|_| s.parse::<f64>().map(|n| json!(n)))
                    .map_err(|_| format!("{key} must be a number"))
            }
            _ => Err(format!("{key} must be a number")),
        },
        "MONETORY" => {
            let (value, currency) = match v {
                Value::Object(m) => (
                    m.get("value").and_then(Value::as_f64),
                    m.get("currency").cloned(),
                ),
                other => (other.as_f64(), None),
            };
            value
                .map(|n| json!({ "currency": currency.unwrap_or(json!("default")), "value": n }))
                .ok_or_else(|| format!("{key} must be a number or {{ currency, value }}"))
        }
        "DATE" => match v.as_str() {
            Some(s) if is_date(s) => Ok(v.clone()),
            _ => Err(format!("{key} must be a date (YYYY-MM-DD)")),
        },
        "SINGLE_OPTIONS" | "RADIO" => match v.as_str() {
            Some(s) => pick(s).map(Value::String),
            None => Err(format!("{key} must be a string")),
        },
        "MULTIPLE_OPTIONS" | "CHECKBOX" => {
            let items: Vec<Value> = match v {
                Value::Array(a) => a.clone(),
                other => vec![other.clone()],
            };
            let mut out = Vec::new();
            for i in items {
                match i.as_str() {
                    Some(s) => out.push(Value::String(pick(s)?)),
                    None => return Err(format!("{key} must be an array of strings")),
                }
            }
            Ok(json!(out))
        }
        "FILE_UPLOAD" => {
            let ok = v
                .as_array()
                .is_some_and(|a| a.iter().all(|f| f.get("url").is_some_and(Value::is_string)));
            if ok {
                Ok(v.clone())
            } else {
                Err(format!("{key} must be an array of {{ url }}"))
            }
        }
        _ => {
            if v.is_string() {
                Ok(v.clone())
            } else {
                Err(format!("{key} must be a string"))
            }
        }
    }
}

/// Validates `properties` (keys short or full, `field.option` for text-box lists) against the
/// object's fields and merges them into `base`; a `null` value removes a property.
fn apply_properties(
    fields: &HashMap<String, Arc<Value>>,
    object_key: &str,
    given: Option<&Value>,
    base: &Map<String, Value>,
) -> Result<Map<String, Value>, ApiError> {
    let mut out = base.clone();
    let Some(given) = given.filter(|v| !v.is_null()) else {
        return Ok(out);
    };
    let Some(given) = given.as_object() else {
        return Err(ApiError::unprocessable(vec![
            "properties must be an object".into(),
        ]));
    };
    let prefix = format!("{object_key}.");
    let mut errs = Vec::new();
    for (k, v) in given {
        let short = k.strip_prefix(&prefix).unwrap_or(k);
        let (base_key, sub) = match short.split_once('.') {
            Some((b, s)) => (b, Some(s)),
            None => (short, None),
        };
        let Some(f) = fields.get(base_key) else {
            errs.push(format!("{k} is not a valid property of {object_key}"));
            continue;
        };
        if v.is_null() {
            out.remove(short);
            continue;
        }
        match check_value(f, k, sub, v) {
            Ok(v) => {
                out.insert(short.to_string(), v);
            }
            Err(e) => errs.push(e),
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::unprocessable(errs))
    }
}

/// `owner` (at most one user) and `followers` (at most ten) from the body.
fn people(req: &Req, name: &str, max: usize, errs: &mut Vec<String>) -> Option<Vec<Value>> {
    let v = req.field(name)?;
    match v.as_array() {
        Some(a) if a.iter().all(Value::is_string) => {
            if a.len() > max {
                errs.push(format!("{name} must contain no more than {max} elements"));
            }
            Some(a.clone())
        }
        _ => {
            errs.push(format!("{name} must be an array of strings"));
            None
        }
    }
}

fn record_event(kind: &str, r: &Value) -> Value {
    let properties: Vec<Value> = r["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            json!({ "key": k, "valueString": s })
        })
        .collect();
    json!({
        "type": kind,
        "locationId": r["locationId"],
        "id": r["id"],
        "objectKey": r["objectKey"],
        "owners": r["owner"],
        "followers": r["followers"],
        "properties": properties,
    })
}

fn record_of(ctx: &Ctx<'_>, req: &Req) -> Result<(Arc<Value>, String), ApiError> {
    let r = ctx.find(OBJECT_RECORD, req.path("id")?, "Record", req)?;
    let location_id = str_of(&r, "locationId").to_string();
    let s = record_schema(ctx, req, &location_id)?;
    if str_of(&r, "objectKey") != str_of(&s, "key") {
        return Err(ApiError::not_found("Record"));
    }
    Ok((r, location_id))
}

fn actor(req: &Req, at: &str) -> Value {
    json!({ "channel": "API", "createdAt": at, "source": "PUBLIC_API", "sourceId": req.caller.app_id })
}

/// `GET /objects/{schemaKey}/records/{id}`.
fn record_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let (r, _) = record_of(ctx, req)?;
    ok(json!({ "record": &*r }))
}

/// `POST /objects/{schemaKey}/records` → 201 `{record}`: `locationId`, `owner`, `followers`,
/// `properties` (the primary display property is required).
fn record_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let s = record_schema(ctx, req, &location_id)?;
    let object_key = str_of(&s, "key").to_string();
    let mut errs = Vec::new();
    let owner = people(req, "owner", MAX_OWNERS, &mut errs).unwrap_or_default();
    let followers = people(req, "followers", MAX_FOLLOWERS, &mut errs).unwrap_or_default();
    if !errs.is_empty() {
        return Err(ApiError::unprocessable(errs));
    }
    let fields = field_map(ctx, &location_id, &object_key);
    let properties = apply_properties(&fields, &object_key, req.field("properties"), &Map::new())?;
    let primary = str_of(&s, "primaryDisplayProperty");
    let primary_short = primary
        .strip_prefix(&format!("{object_key}."))
        .unwrap_or(primary);
    if properties
        .get(primary_short)
        .is_none_or(|v| v.as_str() == Some(""))
    {
        return Err(ApiError::unprocessable(vec![format!(
            "{primary} should not be empty"
        )]));
    }
    let id = new_id();
    let now = iso(ctx.now_ms);
    let r = json!({
        "id": id,
        "owner": owner,
        "followers": followers,
        "properties": properties,
        "locationId": location_id,
        "objectId": s["id"],
        "objectKey": object_key,
        "createdBy": actor(req, &now),
        "lastUpdatedBy": actor(req, &now),
        "createdAt": now,
        "updatedAt": now,
        "dateAdded": now,
        "dateUpdated": now,
    });
    ctx.put(
        OBJECT_RECORD,
        &id,
        Some(&location_id),
        Some(str_of(&s, "id")),
        r.clone(),
    )?;
    ctx.emit(
        "RecordCreate",
        &location_id,
        record_event("RecordCreate", &r),
    );
    created(json!({ "record": r }))
}

/// `PUT /objects/{schemaKey}/records/{id}?locationId=`: `properties` are merged (a `null`
/// removes one), `owner` and `followers` replaced when given.
fn record_update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    if req.query("locationId").is_none_or(str::is_empty) {
        return Err(ApiError::unprocessable(vec![
            "locationId should not be empty".into(),
        ]));
    }
    let location_id = location_scope(ctx, req)?;
    let (old, record_location) = record_of(ctx, req)?;
    if record_location != location_id {
        return Err(ApiError::not_found("Record"));
    }
    let object_key = str_of(&old, "objectKey").to_string();
    let mut errs = Vec::new();
    let owner = people(req, "owner", MAX_OWNERS, &mut errs);
    let followers = people(req, "followers", MAX_FOLLOWERS, &mut errs);
    if !errs.is_empty() {
        return Err(ApiError::unprocessable(errs));
    }
    let fields = field_map(ctx, &location_id, &object_key);
    let base = old["properties"].as_object().cloned().unwrap_or_default();
    let properties = apply_properties(&fields, &object_key, req.field("properties"), &base)?;
    let mut r = (*old).clone();
    r["properties"] = Value::Object(properties);
    if let Some(o) = owner {
        r["owner"] = json!(o);
    }
    if let Some(f) = followers {
        r["followers"] = json!(f);
    }
    let now = iso(ctx.now_ms);
    r["updatedAt"] = json!(now);
    r["dateUpdated"] = json!(now);
    r["lastUpdatedBy"] = actor(req, &now);
    let id = str_of(&r, "id").to_string();
    ctx.replace(OBJECT_RECORD, &id, r.clone())?;
    ctx.emit(
        "RecordUpdate",
        &location_id,
        record_event("RecordUpdate", &r),
    );
    ok(json!({ "record": r }))
}

/// `DELETE /objects/{schemaKey}/records/{id}` → `{id, success: true}`.
fn record_delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let (r, location_id) = record_of(ctx, req)?;
    let id = str_of(&r, "id").to_string();
    ctx.delete(OBJECT_RECORD, &id)?;
    ctx.emit(
        "RecordDelete",
        &location_id,
        record_event("RecordDelete", &r),
    );
    ok(json!({ "id": id, "success": true }))
}

// ---------------------------------------------------------------------------------------------
// Record search
// ---------------------------------------------------------------------------------------------

/// The value a filter or sort names: `properties.x` (or just `x`), `createdAt`, `updatedAt`
/// (as epoch ms), `owner`, `followers`, `id`.
fn record_value(r: &Value, field: &str, object_key: &str) -> Option<Value> {
    match field {
        "createdAt" | "updatedAt" | "dateAdded" | "dateUpdated" => {
            r.get(field).and_then(parse_time_ms).map(|ms| json!(ms))
        }
        "owner" | "followers" | "id" => r.get(field).cloned(),
        other => {
            let key = other.strip_prefix("properties.").unwrap_or(other);
            let key = key.strip_prefix(&format!("{object_key}.")).unwrap_or(key);
            let v = r.get("properties")?.get(key)?;
            Some(match v {
                Value::Object(m) if m.contains_key("value") => m["value"].clone(),
                other => other.clone(),
            })
        }
    }
    .filter(|v| !v.is_null())
}

fn as_cmp_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_lowercase(),
        other => other.to_string(),
    }
}

fn eq_value(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Array(items), Value::Array(wants)) => {
            wants.iter().any(|w| items.iter().any(|i| eq_value(i, w)))
        }
        (Value::Array(items), w) => items.iter().any(|i| eq_value(i, w)),
        (h, Value::Array(wants)) => wants.iter().any(|w| eq_value(h, w)),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (h, w) => as_cmp_string(h) == as_cmp_string(w),
    }
}

fn number_of(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .or_else(|| parse_time_ms(v).map(|n| n as f64))
}

/// One search filter, or a `{group: AND|OR, filters}` group.
fn filter_matches(r: &Value, f: &Value, object_key: &str) -> Result<bool, ApiError> {
    if let Some(group) = f.get("group").and_then(Value::as_str) {
        let mut results = Vec::new();
        for sub in f
            .get("filters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            results.push(filter_matches(r, sub, object_key)?);
        }
        return Ok(if group.eq_ignore_ascii_case("OR") {
            results.iter().any(|b| *b)
        } else {
            results.iter().all(|b| *b)
        });
    }
    let field = str_of(f, "field");
    let op = f.get("operator").and_then(Value::as_str).unwrap_or("eq");
    let want = f.get("value").cloned().unwrap_or(Value::Null);
    let have = record_value(r, field, object_key);
    let present = have
        .as_ref()
        .is_some_and(|h| !(h.as_str() == Some("") || h.as_array().is_some_and(Vec::is_empty)));
    let contains = |h: &Value| match h {
        Value::Array(items) => items
            .iter()
            .any(|i| as_cmp_string(i).contains(&as_cmp_string(&want))),
        other => as_cmp_string(other).contains(&as_cmp_string(&want)),
    };
    Ok(match op {
        "eq" => have.as_ref().is_some_and(|h| eq_value(h, &want)),
        "not_eq" => !have.as_ref().is_some_and(|h| eq_value(h, &want)),
        "contains" => have.as_ref().is_some_and(contains),
        "not_contains" => !have.as_ref().is_some_and(contains),
        "exists" => present,
        "not_exists" => !present,
        "range" => {
            let bound = |k: &str| want.get(k).and_then(number_of);
            have.as_ref().and_then(number_of).is_some_and(|h| {
                bound("gt").is_none_or(|b| h > b)
                    && bound("gte").is_none_or(|b| h >= b)
                    && bound("lt").is_none_or(|b| h < b)
                    && bound("lte").is_none_or(|b| h <= b)
            })
        }
        other => {
            return Err(ApiError::unprocessable(vec![format!(
                "operator {other} is not supported for field {field}"
            )]));
        }
    })
}

/// `query` against the searchable properties: `name:Buddy` searches one property, plain text
/// every searchable one (the primary display property when none are configured).
fn query_matches(r: &Value, q: &str, s: &Value, object_key: &str) -> bool {
    let q = q.trim();
    if q.is_empty() {
        return true;
    }
    let text = |field: &str, needle: &str| {
        record_value(r, field, object_key)
            .is_some_and(|v| as_cmp_string(&v).contains(&needle.to_lowercase()))
    };
    if let Some((field, needle)) = q.split_once(':')
        && !field.trim().is_empty()
        && !field.contains(' ')
    {
        return text(field.trim(), needle.trim());
    }
    let mut searchable: Vec<String> = s["searchableProperties"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    if searchable.is_empty() {
        searchable.push(str_of(s, "primaryDisplayProperty").to_string());
    }
    searchable.iter().any(|f| text(f, q))
}

fn cmp_values(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&y.as_f64().unwrap_or(0.0)),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (x, y) => as_cmp_string(x).cmp(&as_cmp_string(y)),
    }
}

/// A required number of the search body (`page`, `pageLimit`).
fn body_number(req: &Req, name: &str, min: u64, errs: &mut Vec<String>) -> u64 {
    match req.field(name).map(|v| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    }) {
        None => {
            errs.push(format!("{name} should not be empty"));
            min
        }
        Some(Some(n)) if n >= min => n,
        Some(_) => {
            errs.push(format!("{name} must not be less than {min}"));
            min
        }
    }
}

/// `POST /objects/{schemaKey}/records/search`: `query`, `filters`, `sort` (default
/// `createdAt` ascending), `page`/`pageLimit` (at most 100) or a `searchAfter` cursor, which
/// replaces the page offset. Each record carries its `searchAfter` (`[sort value, id]`) and the
/// answer the `total` of matches.
fn records_search(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let mut errs = Vec::new();
    if req.field_str("locationId").is_none_or(str::is_empty) {
        errs.push("locationId should not be empty".to_string());
    }
    let page = body_number(req, "page", 1, &mut errs);
    let page_limit = body_number(req, "pageLimit", 1, &mut errs).min(MAX_PAGE_LIMIT) as usize;
    if req.field("query").is_some_and(|q| !q.is_string()) {
        errs.push("query must be a string".into());
    }
    let cursor = match req.field("searchAfter") {
        None => None,
        Some(Value::Array(a)) if a.is_empty() => None,
        Some(Value::Array(a)) if a.len() == 2 => Some(a.clone()),
        Some(_) => {
            errs.push(
                "searchAfter must be the searchAfter array of the last record of the previous page"
                    .into(),
            );
            None
        }
    };
    let filters = match req.field("filters") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => {
            errs.push("filters must be an array".into());
            Vec::new()
        }
    };
    if !errs.is_empty() {
        return Err(ApiError::unprocessable(errs));
    }
    let location_id = location_scope(ctx, req)?;
    let s = record_schema(ctx, req, &location_id)?;
    let object_key = str_of(&s, "key").to_string();
    let (sort_field, desc) = req
        .field("sort")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .map(|o| {
            (
                o.get("field")
                    .and_then(Value::as_str)
                    .unwrap_or("createdAt")
                    .to_string(),
                o.get("direction").and_then(Value::as_str) == Some("desc"),
            )
        })
        .unwrap_or(("createdAt".to_string(), false));
    let query = req.field_str("query").unwrap_or_default();
    let mut hits: Vec<(Value, String, Arc<Value>)> = Vec::new();
    for r in ctx.children(OBJECT_RECORD, str_of(&s, "id")) {
        if str_of(&r, "locationId") != location_id || !query_matches(&r, query, &s, &object_key) {
            continue;
        }
        let mut keep = true;
        for f in &filters {
            if !filter_matches(&r, f, &object_key)? {
                keep = false;
                break;
            }
        }
        if keep {
            let key = record_value(&r, &sort_field, &object_key).unwrap_or(Value::Null);
            hits.push((key, str_of(&r, "id").to_string(), r));
        }
    }
    let cmp =
        |a: (&Value, &str), b: (&Value, &str)| cmp_values(a.0, b.0).then_with(|| a.1.cmp(b.1));
    hits.sort_by(|a, b| {
        let o = cmp((&a.0, &a.1), (&b.0, &b.1));
        if desc { o.reverse() } else { o }
    });
    let total = hits.len();
    let start = match &cursor {
        Some(c) => {
            let id = c[1].as_str().unwrap_or_default();
            hits.iter()
                .position(|h| {
                    let o = cmp((&h.0, &h.1), (&c[0], id));
                    if desc { o.is_lt() } else { o.is_gt() }
                })
                .unwrap_or(total)
        }
        None => (page as usize - 1).saturating_mul(page_limit),
    };
    let records: Vec<Value> = hits
        .iter()
        .skip(start)
        .take(page_limit)
        .map(|(k, id, r)| {
            let mut v = (**r).clone();
            v["searchAfter"] = json!([k, id]);
            v
        })
        .collect();
    ok(json!({ "records": records, "total": total }))
}

// ---------------------------------------------------------------------------------------------
// Demo data
// ---------------------------------------------------------------------------------------------

const PET_NAMES: &[&str] = &[
    "Buddy", "Luna", "Max", "Bella", "Charlie", "Daisy", "Rocky", "Milo", "Coco", "Bailey", "Nala",
    "Oliver", "Pepper", "Simba", "Rosie", "Toby", "Ziggy", "Hazel", "Biscuit", "Maple",
];
const BREEDS: &[(&str, &[&str])] = &[
    ("Dog", &["Labrador", "Beagle", "Poodle", "Border Collie"]),
    ("Cat", &["Siamese", "Maine Coon", "Persian"]),
    ("Rabbit", &["Holland Lop", "Rex"]),
    ("Bird", &["Cockatiel", "Budgie"]),
];

/// Seeds the `custom_objects.pets` object (name, species, breed, age, vaccinated, last visit)
/// with 20 records owned by seeded users. Ids go under `object_schema` and `object_record`.
pub fn seed(ctx: &mut Ctx<'_>, seed: &mut Seed) -> Result<(), ApiError> {
    let loc = seed.location_id.clone();
    let key = "custom_objects.pets";
    let created_ms = seed.now_ms - 90 * 86_400_000;
    let schema_id = seed_id(seed);
    let s = json!({
        "id": schema_id,
        "standard": false,
        "key": key,
        "labels": { "singular": "Pet", "plural": "Pets" },
        "description": "Patients' pets, for the practice's pet-friendly programme",
        "locationId": loc,
        "primaryDisplayProperty": format!("{key}.name"),
        "searchableProperties": [format!("{key}.name"), format!("{key}.breed")],
        "dateAdded": iso(created_ms),
        "dateUpdated": iso(created_ms),
        "type": "USER_DEFINED",
    });
    ctx.put(OBJECT_SCHEMA, &schema_id, Some(&loc), None, s)?;
    seed.ids
        .entry("object_schema")
        .or_default()
        .push(schema_id.clone());
    let species: Vec<&str> = BREEDS.iter().map(|b| b.0).collect();
    let fields: &[(&str, &str, &[&str])] = &[
        ("Name", "TEXT", &[]),
        ("Species", "SINGLE_OPTIONS", &species),
        ("Breed", "TEXT", &[]),
        ("Age", "NUMERICAL", &[]),
        ("Vaccinated", "RADIO", &["Yes", "No"]),
        ("Last visit", "DATE", &[]),
    ];
    for (i, (name, data_type, options)) in fields.iter().enumerate() {
        let mut body = Map::new();
        body.insert("position".into(), json!(i * 50));
        if !options.is_empty() {
            body.insert("options".into(), json!(options));
        }
        let input = FieldInput {
            name,
            data_type,
            body: &body,
        };
        let mut f = custom_fields::build_field(ctx, &loc, key, &input, None)?;
        let id = seed_id(seed);
        f["id"] = json!(id);
        f["dateAdded"] = json!(iso(created_ms));
        f["dateUpdated"] = json!(iso(created_ms));
        ctx.put(CUSTOM_FIELD, &id, Some(&loc), None, f)?;
    }
    for (i, pet) in PET_NAMES.iter().enumerate() {
        let (kind, breeds) = BREEDS[seed.rng.random_range(0..BREEDS.len())];
        let breed = breeds[seed.rng.random_range(0..breeds.len())];
        let at =
            iso(created_ms + (i as i64 + 1) * 3 * 86_400_000 + seed.rng.random_range(0..3_600_000));
        let visit = iso(seed.now_ms - seed.rng.random_range(1..200) * 86_400_000);
        let owner: Vec<String> = seed.pick("user").into_iter().collect();
        let id = seed_id(seed);
        let by = json!({ "channel": "WEB_USER", "createdAt": at, "source": "WEB_APP", "sourceId": owner.first().cloned().unwrap_or_default() });
        let r = json!({
            "id": id,
            "owner": owner,
            "followers": [],
            "properties": {
                "name": pet,
                "species": slug(kind),
                "breed": breed,
                "age": seed.rng.random_range(1..15),
                "vaccinated": if seed.rng.random_bool(0.8) { "yes" } else { "no" },
                "last_visit": &visit[..10],
            },
            "locationId": loc,
            "objectId": schema_id,
            "objectKey": key,
            "createdBy": by,
            "lastUpdatedBy": by,
            "createdAt": at,
            "updatedAt": at,
            "dateAdded": at,
            "dateUpdated": at,
        });
        ctx.put(OBJECT_RECORD, &id, Some(&loc), Some(&schema_id), r)?;
        seed.ids.entry("object_record").or_default().push(id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::call;
    use crate::handlers::{Guard, HResult};
    use crate::store::Docs;
    use parking_lot::RwLock;
    use rand::SeedableRng;

    const PETS: &str = "custom_objects.pets";

    /// The seeded demo location `loc1` with its pets.
    fn seeded() -> RwLock<Docs> {
        let docs = crate::handlers::locations::tests::seeded();
        {
            let mut ctx = Ctx::new(Guard::Write(docs.write()), 1_700_000_000_000);
            let mut s = Seed {
                location_id: "loc1".into(),
                company_id: "company1".into(),
                now_ms: 1_700_000_000_000,
                rng: rand::rngs::StdRng::seed_from_u64(11),
                ids: HashMap::new(),
            };
            seed(&mut ctx, &mut s).expect("seed");
        }
        docs
    }

    fn body(r: HResult) -> Value {
        r.expect("success").body
    }

    fn status(r: HResult) -> u16 {
        match r {
            Ok(reply) => reply.status,
            Err(e) => e.status,
        }
    }

    fn messages(r: HResult) -> Value {
        r.expect_err("an error").message
    }

    #[test]
    fn schemas_and_fields() {
        let docs = seeded();
        let q = &[("locationId", "loc1")];
        let objects = body(call(&docs, "objects.list", &[], q, Value::Null).0);
        let keys: Vec<&str> = objects["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["key"].as_str())
            .collect();
        assert_eq!(keys, vec!["contact", "opportunity", "business", PETS]);
        assert_eq!(objects["objects"][0]["standard"], true);
        assert_eq!(objects["objects"][3]["standard"], false);
        assert_eq!(
            messages(call(&docs, "objects.list", &[], &[], Value::Null).0),
            json!(["locationId should not be empty"])
        );
        assert_eq!(
            status(
                call(
                    &docs,
                    "objects.list",
                    &[],
                    &[("locationId", "loc2")],
                    Value::Null
                )
                .0
            ),
            403
        );

        let pets = body(
            call(
                &docs,
                "objects.get",
                &[("key", PETS)],
                &[("locationId", "loc1"), ("fetchProperties", "true")],
                Value::Null,
            )
            .0,
        );
        assert_eq!(pets["object"]["labels"]["plural"], "Pets");
        assert_eq!(pets["cache"], false);
        let fields = pets["fields"].as_array().cloned().unwrap_or_default();
        assert_eq!(fields.len(), 6);
        assert_eq!(fields[0]["fieldKey"], "custom_objects.pets.name");
        assert_eq!(
            fields[1]["options"][0],
            json!({ "key": "dog", "label": "Dog" })
        );
        let bare = body(call(&docs, "objects.get", &[("key", "pets")], q, Value::Null).0);
        assert!(bare.get("fields").is_none());
        assert_eq!(bare["object"]["key"], PETS);
        let contact = body(call(&docs, "objects.get", &[("key", "contact")], q, Value::Null).0);
        assert_eq!(contact["object"]["standard"], true);
        assert_eq!(
            messages(
                call(
                    &docs,
                    "objects.get",
                    &[("key", "custom_objects.cars")],
                    q,
                    Value::Null
                )
                .0
            ),
            json!("Custom object not found")
        );

        let cf = body(
            call(
                &docs,
                "custom_fields.by_object_key",
                &[("objectKey", "contact")],
                q,
                Value::Null,
            )
            .0,
        );
        let fields = cf["fields"].as_array().cloned().unwrap_or_default();
        assert_eq!(fields.len(), 5);
        assert_eq!(fields[0]["objectKey"], "contact");
        assert_eq!(fields[0]["fieldKey"], "contact.favourite_colour");
        assert_eq!(fields[1]["options"].as_array().map(Vec::len), Some(3));
        assert_eq!(fields[0]["parentId"], cf["folders"][0]["id"]);
        for k in [
            "locationId",
            "showInForms",
            "id",
            "objectKey",
            "dataType",
            "parentId",
            "fieldKey",
            "dateAdded",
            "dateUpdated",
        ] {
            assert!(fields[4].get(k).is_some(), "{k} missing");
        }
        let pets = body(
            call(
                &docs,
                "custom_fields.by_object_key",
                &[("objectKey", PETS)],
                q,
                Value::Null,
            )
            .0,
        );
        assert_eq!(pets["fields"].as_array().map(Vec::len), Some(6));
    }

    #[test]
    fn records_crud() {
        let docs = seeded();
        let path = &[("schemaKey", PETS)];
        let reply = call(
            &docs,
            "objects.records.create",
            path,
            &[],
            json!({ "locationId": "loc1", "owner": ["u1"], "followers": ["u2"],
                    "properties": { "custom_objects.pets.name": "Rex", "species": "Dog", "age": 3, "vaccinated": "yes" } }),
        );
        let (r, events) = reply;
        let reply = r.expect("created");
        assert_eq!(reply.status, 201);
        let rec = &reply.body["record"];
        assert_eq!(
            rec["properties"],
            json!({ "name": "Rex", "species": "dog", "age": 3, "vaccinated": "yes" })
        );
        assert_eq!(rec["objectKey"], PETS);
        assert_eq!(events[0].kind, "RecordCreate");
        assert_eq!(events[0].payload["owners"], json!(["u1"]));
        assert!(
            events[0].payload["properties"]
                .as_array()
                .is_some_and(|p| p.contains(&json!({ "key": "name", "valueString": "Rex" })))
        );
        let id = rec["id"].as_str().unwrap_or_default().to_string();
        let p = &[("schemaKey", PETS), ("id", id.as_str())];
        assert_eq!(
            body(call(&docs, "objects.records.get", p, &[], Value::Null).0)["record"]["properties"]
                ["name"],
            "Rex"
        );

        let (r, _) = call(
            &docs,
            "objects.records.update",
            p,
            &[],
            json!({ "properties": { "age": 4 } }),
        );
        assert_eq!(messages(r), json!(["locationId should not be empty"]));
        let (r, events) = call(
            &docs,
            "objects.records.update",
            p,
            &[("locationId", "loc1")],
            json!({ "properties": { "age": 4, "vaccinated": null, "breed": "Labrador" }, "followers": [] }),
        );
        let u = body(r);
        assert_eq!(
            u["record"]["properties"],
            json!({ "name": "Rex", "species": "dog", "age": 4, "breed": "Labrador" })
        );
        assert_eq!(u["record"]["followers"], json!([]));
        assert_eq!(u["record"]["owner"], json!(["u1"]));
        assert_eq!(events[0].kind, "RecordUpdate");
        assert_eq!(
            body(call(&docs, "objects.records.get", p, &[], Value::Null).0)["record"]["properties"]
                ["breed"],
            "Labrador"
        );

        let (r, events) = call(&docs, "objects.records.delete", p, &[], Value::Null);
        assert_eq!(body(r), json!({ "id": id, "success": true }));
        assert_eq!(events[0].kind, "RecordDelete");
        assert_eq!(
            messages(call(&docs, "objects.records.get", p, &[], Value::Null).0),
            json!("Record not found")
        );
        assert_eq!(
            status(
                call(
                    &docs,
                    "objects.records.get",
                    &[("schemaKey", "custom_objects.cars"), ("id", "x")],
                    &[],
                    Value::Null
                )
                .0
            ),
            404
        );
    }

    #[test]
    fn record_validation() {
        let docs = seeded();
        let create = |b: Value| {
            call(
                &docs,
                "objects.records.create",
                &[("schemaKey", PETS)],
                &[],
                b,
            )
            .0
        };
        let m = messages(create(
            json!({ "locationId": "loc1", "properties": { "name": "A", "colour": "red", "age": "old", "species": "Fish" } }),
        ));
        assert_eq!(
            m,
            json!([
                "colour is not a valid property of custom_objects.pets",
                "age must be a number",
                "species must be one of the following values: dog, cat, rabbit, bird",
            ])
        );
        assert_eq!(
            messages(create(
                json!({ "locationId": "loc1", "properties": { "breed": "Pug" } })
            )),
            json!(["custom_objects.pets.name should not be empty"])
        );
        assert_eq!(
            messages(create(
                json!({ "locationId": "loc1", "owner": ["a", "b"], "properties": { "name": "A" } })
            )),
            json!(["owner must contain no more than 1 elements"])
        );
        assert_eq!(
            messages(create(
                json!({ "locationId": "loc1", "properties": { "name": "A", "last_visit": "soon" } })
            )),
            json!(["last_visit must be a date (YYYY-MM-DD)"])
        );
        assert_eq!(
            status(create(
                json!({ "locationId": "loc2", "properties": { "name": "A" } })
            )),
            403
        );
        assert_eq!(
            status(
                call(
                    &docs,
                    "objects.records.create",
                    &[("schemaKey", "contact")],
                    &[],
                    json!({ "locationId": "loc1" })
                )
                .0
            ),
            400
        );
    }

    #[test]
    fn record_search_pages_queries_and_filters() {
        let docs = seeded();
        let path = &[("schemaKey", PETS)];
        let search = |b: Value| body(call(&docs, "objects.records.search", path, &[], b).0);
        let base = json!({ "locationId": "loc1", "page": 1, "pageLimit": 7, "query": "", "searchAfter": [] });
        let first = search(base.clone());
        assert_eq!(first["total"], 20);
        assert_eq!(first["records"].as_array().map(Vec::len), Some(7));
        // Walk every page with searchAfter (page unchanged), and compare with page numbers.
        let mut seen: Vec<Value> = Vec::new();
        let mut req = base.clone();
        loop {
            let page = search(req.clone());
            let records = page["records"].as_array().cloned().unwrap_or_default();
            if records.is_empty() {
                break;
            }
            seen.extend(records.iter().map(|r| r["id"].clone()));
            req["searchAfter"] = records
                .last()
                .map(|r| r["searchAfter"].clone())
                .unwrap_or_default();
        }
        assert_eq!(seen.len(), 20);
        let mut by_page: Vec<Value> = Vec::new();
        for n in 1..=3 {
            let mut b = base.clone();
            b["page"] = json!(n);
            by_page.extend(
                search(b)["records"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| r["id"].clone()),
            );
        }
        assert_eq!(seen, by_page);
        // Ascending createdAt.
        let times: Vec<i64> = search(json!({ "locationId": "loc1", "page": 1, "pageLimit": 100 }))
            ["records"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["searchAfter"][0].as_i64())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));

        let mut q = base.clone();
        q["query"] = json!("name:buddy");
        let hit = search(q);
        assert_eq!(hit["total"], 1);
        assert_eq!(hit["records"][0]["properties"]["name"], "Buddy");
        let mut q = base.clone();
        q["query"] = json!("Luna");
        assert_eq!(search(q)["total"], 1);
        let mut f = base.clone();
        f["filters"] = json!([{ "field": "properties.age", "operator": "range", "value": { "gte": 5, "lte": 9 } }]);
        let ranged = search(f);
        assert!(ranged["records"].as_array().into_iter().flatten().all(|r| {
            r["properties"]["age"]
                .as_f64()
                .is_some_and(|a| (5.0..=9.0).contains(&a))
        }));
        let mut g = base.clone();
        g["filters"] = json!([{ "group": "OR", "filters": [
            { "field": "properties.species", "operator": "eq", "value": "dog" },
            { "field": "properties.species", "operator": "eq", "value": "cat" } ] }]);
        let dogs_or_cats = search(g);
        assert!(dogs_or_cats["records"].as_array().into_iter().flatten().all(|r| r["properties"]["species"] == "dog" || r["properties"]["species"] == "cat"));
        let mut s = base.clone();
        s["sort"] = json!([{ "field": "properties.name", "direction": "desc" }]);
        s["pageLimit"] = json!(1);
        assert_eq!(search(s)["records"][0]["properties"]["name"], "Ziggy");

        let (r, _) = call(
            &docs,
            "objects.records.search",
            path,
            &[],
            json!({ "query": "" }),
        );
        assert_eq!(
            messages(r),
            json!([
                "locationId should not be empty",
                "page should not be empty",
                "pageLimit should not be empty"
            ])
        );
        let mut bad = base.clone();
        bad["searchAfter"] = json!([1]);
        assert_eq!(
            status(call(&docs, "objects.records.search", path, &[], bad).0),
            422
        );
    }
}
