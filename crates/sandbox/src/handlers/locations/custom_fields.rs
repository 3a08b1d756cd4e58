//! Custom fields of a location: the classic `/locations/{locationId}/customFields` API (contact
//! and opportunity fields, `model` filter) and the field documents that the custom-objects API
//! (`/custom-fields/object-key/{objectKey}`, `/objects/{key}?fetchProperties=true`) shows in its
//! own (`ICustomField`) shape.
//!
//! One document of kind [`CUSTOM_FIELD`] holds both shapes' data: `picklistOptions` (labels,
//! what contacts and the seeders read) and `options` (`{key, label}`), `model` (classic fields)
//! and `objectKey` (every field), `fieldKey` derived from the name (`contact.favourite_colour`,
//! `custom_objects.pets.breed`) and unique in its object.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{LOCATION_OBJECTS, location_scope};
use crate::error::ApiError;
use crate::handlers::{Ctx, HResult, Req, created, iso, new_id, ok, succeded};

/// Document kind of a custom field (shared with the contacts seeder and the objects module).
pub const CUSTOM_FIELD: &str = "custom_field";

/// Data types the classic API accepts (HighLevel's spelling, `MONETORY` included).
pub const DATA_TYPES: &[&str] = &[
    "TEXT",
    "LARGE_TEXT",
    "NUMERICAL",
    "PHONE",
    "MONETORY",
    "CHECKBOX",
    "SINGLE_OPTIONS",
    "MULTIPLE_OPTIONS",
    "DATE",
    "TEXTBOX_LIST",
    "FILE_UPLOAD",
    "RADIO",
    "EMAIL",
    "FLOAT",
    "TIME",
    "SIGNATURE",
];

/// Data types whose values are picked from options.
pub const OPTION_TYPES: &[&str] = &["CHECKBOX", "SINGLE_OPTIONS", "MULTIPLE_OPTIONS", "RADIO"];

/// Models of the classic API.
const MODELS: &[&str] = &["contact", "opportunity"];

/// `Favourite colour!` → `favourite_colour`: the key part HighLevel derives from a name.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    let mut gap = false;
    for ch in name.trim().chars() {
        if ch.is_alphanumeric() {
            if gap && !out.is_empty() {
                out.push('_');
            }
            gap = false;
            out.extend(ch.to_lowercase());
        } else {
            gap = true;
        }
    }
    if out.is_empty() {
        "field".to_string()
    } else {
        out
    }
}

/// A `fieldKey` for `name` in `object_key` that no other field of the location uses
/// (`contact.plan`, then `contact.plan_1`, …).
pub fn unique_field_key(ctx: &Ctx<'_>, location_id: &str, object_key: &str, name: &str) -> String {
    let base = format!("{object_key}.{}", slug(name));
    let taken: Vec<String> = ctx
        .list(CUSTOM_FIELD, location_id)
        .iter()
        .filter_map(|f| {
            f.get("fieldKey")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    if !taken.contains(&base) {
        return base;
    }
    (1..)
        .map(|n| format!("{base}_{n}"))
        .find(|k| !taken.contains(k))
        .unwrap_or(base)
}

/// The id of an object's default folder (HighLevel groups fields in folders; the sandbox keeps
/// one per object, with a stable id so it needs no storage).
pub fn default_folder_id(location_id: &str, object_key: &str) -> String {
    super::stable_id(&[location_id, object_key, "folder"])
}

/// Options given as strings (`["Gold", "Silver"]`) or `{key, label}` objects, as
/// `(labels, [{key, label}])`.
fn parse_options(v: &Value) -> Result<(Vec<String>, Vec<Value>), ApiError> {
    let mut labels = Vec::new();
    let mut options = Vec::new();
    for o in v.as_array().into_iter().flatten() {
        let (key, label) = match o {
            Value::String(s) => (slug(s), s.clone()),
            Value::Object(m) => {
                let label = m
                    .get("label")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let key = m
                    .get("key")
                    .and_then(Value::as_str)
                    .map_or_else(|| slug(&label), str::to_string);
                if label.is_empty() {
                    return Err(ApiError::unprocessable(vec![
                        "options.label should not be empty".into(),
                    ]));
                }
                (key, label)
            }
            _ => {
                return Err(ApiError::unprocessable(vec![
                    "options must be an array of strings".into(),
                ]));
            }
        };
        if !labels.contains(&label) {
            options.push(json!({ "key": key, "label": label }));
            labels.push(label);
        }
    }
    if !v.is_array() && !v.is_null() {
        return Err(ApiError::unprocessable(vec![
            "options must be an array".into(),
        ]));
    }
    Ok((labels, options))
}

/// What a caller may give when creating or updating a field.
pub struct FieldInput<'a> {
    /// Display name.
    pub name: &'a str,
    /// Data type (create only).
    pub data_type: &'a str,
    /// The raw body (placeholder, options, position, file and text-box-list settings).
    pub body: &'a Map<String, Value>,
}

/// Checks the optional settings of a field body: types of `placeholder`, `position`, file
/// settings and text-box-list options. Returns every failure.
fn validate_settings(body: &Map<String, Value>, errs: &mut Vec<String>) {
    if body
        .get("placeholder")
        .is_some_and(|v| !v.is_string() && !v.is_null())
    {
        errs.push("placeholder must be a string".into());
    }
    if body
        .get("position")
        .is_some_and(|v| !v.is_number() && !v.is_null())
    {
        errs.push("position must be a number conforming to the specified constraints".into());
    }
    if body
        .get("isMultipleFile")
        .is_some_and(|v| !v.is_boolean() && !v.is_null())
    {
        errs.push("isMultipleFile must be a boolean value".into());
    }
    if body
        .get("maxNumberOfFiles")
        .is_some_and(|v| !v.is_number() && !v.is_null())
    {
        errs.push(
            "maxNumberOfFiles must be a number conforming to the specified constraints".into(),
        );
    }
    if let Some(a) = body.get("acceptedFormat").filter(|v| !v.is_null())
        && !a.as_array().is_some_and(|a| a.iter().all(Value::is_string))
    {
        errs.push("acceptedFormat must be an array of strings".into());
    }
    if let Some(t) = body.get("textBoxListOptions").filter(|v| !v.is_null())
        && !t.as_array().is_some_and(|a| {
            a.iter()
                .all(|o| o.get("label").and_then(Value::as_str).is_some())
        })
    {
        errs.push("textBoxListOptions must be an array of { label, prefillValue }".into());
    }
}

/// Builds (or rebuilds, keeping `existing`'s identity) a field document.
pub fn build_field(
    ctx: &Ctx<'_>,
    location_id: &str,
    object_key: &str,
    input: &FieldInput<'_>,
    existing: Option<&Value>,
) -> Result<Value, ApiError> {
    let now = iso(ctx.now_ms);
    let mut f = match existing {
        Some(e) => e.clone(),
        None => {
            let id = new_id();
            let mut f = json!({
                "id": id,
                "name": input.name,
                "fieldKey": unique_field_key(ctx, location_id, object_key, input.name),
                "placeholder": "",
                "dataType": input.data_type,
                "position": 0,
                "locationId": location_id,
                "objectKey": object_key,
                "parentId": default_folder_id(location_id, object_key),
                "showInForms": true,
                "description": "",
                "documentType": "field",
                "standard": false,
                "isAllowedCustomOption": false,
                "dateAdded": now,
            });
            if MODELS.contains(&object_key) {
                f["model"] = json!(object_key);
            }
            f
        }
    };
    let body = input.body;
    f["name"] = json!(input.name);
    f["dateUpdated"] = json!(now);
    for (from, to) in [
        ("placeholder", "placeholder"),
        ("position", "position"),
        ("description", "description"),
    ] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            f[to] = v.clone();
        }
    }
    if let Some(v) = body.get("showInForms").and_then(Value::as_bool) {
        f["showInForms"] = json!(v);
    }
    let data_type = f["dataType"].as_str().unwrap_or("TEXT").to_string();
    if OPTION_TYPES.contains(&data_type.as_str()) {
        let given = body
            .get("options")
            .or_else(|| body.get("picklistOptions"))
            .filter(|v| !v.is_null());
        if let Some(given) = given {
            let (labels, options) = parse_options(given)?;
            f["picklistOptions"] = json!(labels);
            f["options"] = json!(options);
        }
        if f["picklistOptions"].as_array().is_none_or(Vec::is_empty) {
            return Err(ApiError::unprocessable(vec![
                "options should not be empty".into(),
            ]));
        }
        if f.get("picklistImageOptions").is_none() {
            f["picklistImageOptions"] = json!([]);
        }
        let custom = body
            .get("allowCustomOption")
            .or_else(|| body.get("isAllowedCustomOption"))
            .and_then(Value::as_bool);
        if let Some(c) = custom {
            f["isAllowedCustomOption"] = json!(c);
        }
    }
    if data_type == "FILE_UPLOAD" {
        let multi = body.get("isMultipleFile").and_then(Value::as_bool);
        f["isMultiFileAllowed"] = json!(
            multi
                .or_else(|| f["isMultiFileAllowed"].as_bool())
                .unwrap_or(false)
        );
        let max = body
            .get("maxNumberOfFiles")
            .or_else(|| body.get("maxFileLimit"))
            .and_then(Value::as_u64);
        f["maxFileLimit"] = json!(max.or_else(|| f["maxFileLimit"].as_u64()).unwrap_or(1));
        if let Some(a) = body.get("acceptedFormat").filter(|v| v.is_array()) {
            f["acceptedFormat"] = a.clone();
        } else if f.get("acceptedFormat").is_none() {
            f["acceptedFormat"] = json!([]);
        }
    }
    if data_type == "TEXTBOX_LIST" {
        if let Some(t) = body.get("textBoxListOptions").filter(|v| v.is_array()) {
            f["textBoxListOptions"] = t.clone();
        } else if f.get("textBoxListOptions").is_none() {
            f["textBoxListOptions"] = json!([]);
        }
    }
    Ok(f)
}

fn copy(f: &Value, out: &mut Map<String, Value>, keys: &[&str]) {
    for k in keys {
        if let Some(v) = f.get(*k).filter(|v| !v.is_null()) {
            out.insert((*k).to_string(), v.clone());
        }
    }
}

/// A field as the classic locations API answers it (`CustomFieldSchema`).
pub fn classic_view(f: &Value) -> Value {
    let mut out = Map::new();
    copy(
        f,
        &mut out,
        &[
            "id",
            "name",
            "fieldKey",
            "placeholder",
            "dataType",
            "position",
            "picklistOptions",
            "picklistImageOptions",
            "isAllowedCustomOption",
            "isMultiFileAllowed",
            "maxFileLimit",
            "acceptedFormat",
            "textBoxListOptions",
            "locationId",
            "model",
            "documentType",
            "parentId",
            "standard",
            "dateAdded",
        ],
    );
    Value::Object(out)
}

/// A field as the custom-fields / objects API answers it (`ICustomField`).
pub fn v2_view(f: &Value) -> Value {
    let mut out = Map::new();
    copy(
        f,
        &mut out,
        &[
            "id",
            "name",
            "description",
            "placeholder",
            "showInForms",
            "options",
            "objectKey",
            "dataType",
            "parentId",
            "fieldKey",
            "maxFileLimit",
            "locationId",
            "position",
            "dateAdded",
            "dateUpdated",
        ],
    );
    if OPTION_TYPES.contains(&f["dataType"].as_str().unwrap_or_default()) {
        out.insert(
            "allowCustomOption".into(),
            f.get("isAllowedCustomOption")
                .cloned()
                .unwrap_or(json!(false)),
        );
    }
    if f["dataType"] == "FILE_UPLOAD" {
        let formats: Vec<&str> = f["acceptedFormat"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let one = if formats.len() == 1 {
            formats[0]
        } else {
            "all"
        };
        out.insert("acceptedFormats".into(), json!(one));
    }
    // A field created before `dateUpdated` was kept: the schema requires it.
    if !out.contains_key("dateUpdated")
        && let Some(d) = out.get("dateAdded").cloned()
    {
        out.insert("dateUpdated".into(), d);
    }
    Value::Object(out)
}

/// Every field of `object_key` in a location, oldest first.
pub fn fields_of(ctx: &Ctx<'_>, location_id: &str, object_key: &str) -> Vec<Arc<Value>> {
    ctx.list(CUSTOM_FIELD, location_id)
        .into_iter()
        .filter(|f| match f.get("objectKey").and_then(Value::as_str) {
            Some(k) => k == object_key,
            None => f.get("model").and_then(Value::as_str) == Some(object_key),
        })
        .collect()
}

fn is_classic(f: &Value) -> bool {
    f.get("model")
        .and_then(Value::as_str)
        .is_some_and(|m| MODELS.contains(&m))
}

/// A classic field by id or by `fieldKey` (`contact.plan`), as HighLevel accepts both.
fn classic_field(ctx: &Ctx<'_>, req: &Req, location_id: &str) -> Result<Arc<Value>, ApiError> {
    let id = req.path("id")?;
    let f = match ctx.get(CUSTOM_FIELD, id) {
        Some(_) => ctx.find(CUSTOM_FIELD, id, "Custom field", req)?,
        None => ctx
            .list(CUSTOM_FIELD, location_id)
            .into_iter()
            .find(|f| f.get("fieldKey").and_then(Value::as_str) == Some(id))
            .ok_or_else(|| ApiError::not_found("Custom field"))?,
    };
    if f.get("locationId").and_then(Value::as_str) != Some(location_id) || !is_classic(&f) {
        return Err(ApiError::not_found("Custom field"));
    }
    Ok(f)
}

/// `GET /locations/{locationId}/customFields` (`model`: contact, opportunity or all).
pub fn list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let model = req.query("model").filter(|m| !m.is_empty());
    if let Some(m) = model
        && !["contact", "opportunity", "all"].contains(&m)
    {
        return Err(ApiError::unprocessable(vec![
            "model must be one of the following values: contact, opportunity, all".into(),
        ]));
    }
    // HighLevel answers contact fields when no model is given.
    let model = model.unwrap_or("contact");
    let fields: Vec<Value> = ctx
        .list(CUSTOM_FIELD, &location_id)
        .iter()
        .filter(|f| is_classic(f))
        .filter(|f| model == "all" || f.get("model").and_then(Value::as_str) == Some(model))
        .map(|f| classic_view(f))
        .collect();
    ok(json!({ "customFields": fields }))
}

/// `GET /locations/{locationId}/customFields/{id}`.
pub fn get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let f = classic_field(ctx, req, &location_id)?;
    ok(json!({ "customField": classic_view(&f) }))
}

fn validate_common(req: &Req) -> Vec<String> {
    let mut errs = Vec::new();
    if req.field("name").is_some_and(|v| !v.is_string()) {
        errs.push("name must be a string".into());
    }
    if let Some(m) = req.field("model")
        && !m.as_str().is_some_and(|m| MODELS.contains(&m))
    {
        errs.push("model must be one of the following values: contact, opportunity".into());
    }
    validate_settings(&req.body_object(), &mut errs);
    errs
}

/// `POST /locations/{locationId}/customFields` → 201 `{customField}`.
pub fn create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    req.require_fields(&["name", "dataType"])?;
    let mut errs = validate_common(req);
    let data_type = req.field_str("dataType").unwrap_or_default();
    if !DATA_TYPES.contains(&data_type) {
        errs.push(format!(
            "dataType must be one of the following values: {}",
            DATA_TYPES.join(", ")
        ));
    }
    if !errs.is_empty() {
        return Err(ApiError::unprocessable(errs));
    }
    let model = req.field_str("model").unwrap_or("contact");
    let body = req.body_object();
    let input = FieldInput {
        name: req.field_str("name").unwrap_or_default().trim(),
        data_type,
        body: &body,
    };
    let f = build_field(ctx, &location_id, model, &input, None)?;
    let id = f["id"].as_str().unwrap_or_default().to_string();
    ctx.put(CUSTOM_FIELD, &id, Some(&location_id), None, f.clone())?;
    created(json!({ "customField": classic_view(&f) }))
}

/// `PUT /locations/{locationId}/customFields/{id}`: name, placeholder, options, position and
/// file settings change; `dataType`, `model` and `fieldKey` stay.
pub fn update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let old = classic_field(ctx, req, &location_id)?;
    req.require_fields(&["name"])?;
    let errs = validate_common(req);
    if !errs.is_empty() {
        return Err(ApiError::unprocessable(errs));
    }
    if let Some(m) = req.field_str("model")
        && Some(m) != old.get("model").and_then(Value::as_str)
    {
        return Err(ApiError::bad_request(
            "The model of a custom field cannot be changed",
        ));
    }
    let body = req.body_object();
    let object_key = old["objectKey"].as_str().unwrap_or("contact").to_string();
    let input = FieldInput {
        name: req.field_str("name").unwrap_or_default().trim(),
        data_type: old["dataType"].as_str().unwrap_or("TEXT"),
        body: &body,
    };
    let f = build_field(ctx, &location_id, &object_key, &input, Some(&old))?;
    let id = f["id"].as_str().unwrap_or_default().to_string();
    ctx.replace(CUSTOM_FIELD, &id, f.clone())?;
    ok(json!({ "customField": classic_view(&f) }))
}

/// Removes a deleted field's values from every record that holds them (contacts and
/// opportunities keep `customFields: [{id, value}]`), as HighLevel does.
pub fn drop_values(ctx: &mut Ctx<'_>, location_id: &str, field_id: &str) -> Result<(), ApiError> {
    for &kind in LOCATION_OBJECTS {
        let holders: Vec<Arc<Value>> = ctx
            .list(kind, location_id)
            .into_iter()
            .filter(|d| {
                d.get("customFields")
                    .and_then(Value::as_array)
                    .is_some_and(|a| {
                        a.iter()
                            .any(|e| e.get("id").and_then(Value::as_str) == Some(field_id))
                    })
            })
            .collect();
        for d in holders {
            let mut d = (*d).clone();
            if let Some(a) = d.get_mut("customFields").and_then(Value::as_array_mut) {
                a.retain(|e| e.get("id").and_then(Value::as_str) != Some(field_id));
            }
            let id = d["id"].as_str().unwrap_or_default().to_string();
            ctx.replace(kind, &id, d)?;
        }
    }
    Ok(())
}

/// `DELETE /locations/{locationId}/customFields/{id}` → `{succeded: true}`; the field's values
/// leave the contacts and opportunities that had them.
pub fn delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let f = classic_field(ctx, req, &location_id)?;
    let id = f["id"].as_str().unwrap_or_default().to_string();
    ctx.delete(CUSTOM_FIELD, &id)?;
    drop_values(ctx, &location_id, &id)?;
    ok(succeded())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(slug("Favourite colour"), "favourite_colour");
        assert_eq!(slug("  Plan / Tier!! 2 "), "plan_tier_2");
        assert_eq!(slug("***"), "field");
    }
}
