//! Locations (sub-accounts) and their agency: get, search, create and update a location (with
//! the duplicate-contact settings the contacts module follows), the company, a location's tags,
//! custom fields (submodule [`custom_fields`]) and custom values, and the search over every task
//! of a location's contacts.
//!
//! Documents: [`LOCATION`] (id = location id, `companyId`, `settings.allowDuplicateContact`,
//! `settings.duplicateContactOrder`), [`COMPANY`], [`TAG`] (`{id, name, locationId}`, also
//! created by contacts.rs for new contact tags), [`CUSTOM_VALUE`] and
//! [`custom_fields::CUSTOM_FIELD`]. Webhooks: `LocationCreate`, `LocationUpdate`.

pub mod custom_fields;

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;
use serde_json::{Map, Value, json};

use super::contacts::{CONTACT, TASK};
use super::{
    Ctx, HResult, Handler, Req, Seed, UserType, created, forbidden_location, iso, new_id, ok,
    succeded,
};
use crate::error::ApiError;

/// A location (sub-account); its id is the location id.
pub const LOCATION: &str = "location";
/// An agency (company).
pub const COMPANY: &str = "company";
/// A location's tag.
pub const TAG: &str = "tag";
/// A location's custom value.
pub const CUSTOM_VALUE: &str = "custom_value";
/// A user (owned by the users module; read for task assignees).
const USER: &str = "user";
/// Kinds whose documents carry `customFields: [{id, value}]`.
pub(crate) const LOCATION_OBJECTS: &[&str] = &[CONTACT, "opportunity"];

/// HighLevel's answer when an agency token asks for another agency.
fn forbidden_company() -> ApiError {
    ApiError::forbidden("The token does not have access to this company.")
}

/// Registers the handlers of this module.
pub fn register(map: &mut HashMap<&'static str, Handler>) {
    map.insert("locations.get", get);
    map.insert("locations.search", search);
    map.insert("locations.create", create);
    map.insert("locations.update", update);
    map.insert("companies.get", company_get);
    map.insert("locations.tags.list", tags_list);
    map.insert("locations.tags.get", tag_get);
    map.insert("locations.tags.create", tag_create);
    map.insert("locations.tags.update", tag_update);
    map.insert("locations.tags.delete", tag_delete);
    map.insert("locations.custom_fields.list", custom_fields::list);
    map.insert("locations.custom_fields.get", custom_fields::get);
    map.insert("locations.custom_fields.create", custom_fields::create);
    map.insert("locations.custom_fields.update", custom_fields::update);
    map.insert("locations.custom_fields.delete", custom_fields::delete);
    map.insert("locations.custom_values.list", values_list);
    map.insert("locations.custom_values.get", value_get);
    map.insert("locations.custom_values.create", value_create);
    map.insert("locations.custom_values.update", value_update);
    map.insert("locations.custom_values.delete", value_delete);
    map.insert("locations.tasks.search", tasks_search);
}

/// A stable 20-character id derived from `parts` (FNV-1a), for objects HighLevel has but the
/// sandbox does not store (standard object schemas, default folders).
pub(crate) fn stable_id(parts: &[&str]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut out = String::with_capacity(20);
    for round in 0..20u8 {
        for p in parts {
            for b in p.bytes().chain([0xff, round]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        out.push(ALPHABET[(h % ALPHABET.len() as u64) as usize] as char);
    }
    out
}

/// A HighLevel-style id from the seed's deterministic randomness.
pub(crate) fn seed_id(seed: &mut Seed) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..20)
        .map(|_| ALPHABET[seed.rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The location a `/locations/{locationId}/…` request acts on, after checking the caller may:
/// a location token only its own location, an agency token only its company's locations.
pub(crate) fn location_scope(ctx: &Ctx<'_>, req: &Req) -> Result<String, ApiError> {
    let location_id = req.location_id()?;
    check_location_access(ctx, req, &location_id)?;
    Ok(location_id)
}

fn check_location_access(ctx: &Ctx<'_>, req: &Req, location_id: &str) -> Result<(), ApiError> {
    if let Some(own) = &req.caller.location_id
        && own != location_id
    {
        return Err(forbidden_location());
    }
    if req.caller.user_type == UserType::Company
        && let Some(doc) = ctx.get(LOCATION, location_id)
        && doc.body.get("companyId").and_then(Value::as_str) != req.caller.company_id.as_deref()
    {
        return Err(forbidden_location());
    }
    Ok(())
}

fn id_of(v: &Value) -> String {
    v.get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Locations and companies
// ---------------------------------------------------------------------------------------------

/// Country codes `CreateLocationDto.country` accepts.
const COUNTRIES: &[&str] = &[
    "AF", "AX", "AL", "DZ", "AS", "AD", "AO", "AI", "AQ", "AG", "AR", "AM", "AW", "AU", "AT", "AZ",
    "BS", "BH", "BD", "BB", "BY", "BE", "BZ", "BJ", "BM", "BT", "BO", "BA", "BW", "BV", "BR", "IO",
    "BN", "BG", "BF", "BI", "KH", "CM", "CA", "CV", "KY", "CF", "TD", "CL", "CN", "CX", "CC", "CO",
    "KM", "CG", "CD", "CK", "CR", "CI", "HR", "CU", "CY", "CZ", "DK", "DJ", "DM", "DO", "EC", "EG",
    "SV", "GQ", "ER", "EE", "ET", "FK", "FO", "FJ", "FI", "FR", "GF", "PF", "TF", "GA", "GM", "GE",
    "DE", "GH", "GI", "GR", "GL", "GD", "GP", "GU", "GT", "GG", "GN", "GW", "GY", "HT", "HM", "VA",
    "HN", "HK", "HU", "IS", "IN", "ID", "IR", "IQ", "IE", "IM", "IL", "IT", "JM", "JP", "JE", "JO",
    "KZ", "KE", "KI", "KP", "KR", "XK", "KW", "KG", "LA", "LV", "LB", "LS", "LR", "LY", "LI", "LT",
    "LU", "MO", "MK", "MG", "MW", "MY", "MV", "ML", "MT", "MH", "MQ", "MR", "MU", "YT", "MX", "FM",
    "MD", "MC", "MN", "ME", "MS", "MA", "MZ", "MM", "NA", "NR", "NP", "NL", "AN", "NC", "NZ", "NI",
    "NE", "NG", "NU", "NF", "MP", "NO", "OM", "PK", "PW", "PS", "PA", "PG", "PY", "PE", "PH", "PN",
    "PL", "PT", "PR", "QA", "RE", "RO", "RU", "RW", "SH", "KN", "LC", "MF", "PM", "VC", "WS", "SM",
    "ST", "SA", "SN", "RS", "SC", "SL", "SG", "SX", "SK", "SI", "SB", "SO", "ZA", "GS", "ES", "LK",
    "SD", "SR", "SJ", "SZ", "SE", "CH", "SY", "TW", "TJ", "TZ", "TH", "TL", "TG", "TK", "TO", "TT",
    "TN", "TR", "TM", "TC", "TV", "UG", "GB", "UA", "AE", "US", "UM", "UY", "UZ", "VU", "VE", "VN",
    "VG", "VI", "WF", "EH", "YE", "ZM", "ZW",
];

/// Plain string fields of a location a caller may set.
const LOCATION_STRINGS: &[&str] = &[
    "name",
    "phone",
    "email",
    "address",
    "city",
    "state",
    "country",
    "postalCode",
    "website",
    "timezone",
];
/// Boolean settings of a location.
const SETTINGS_BOOLS: &[&str] = &[
    "allowDuplicateContact",
    "allowDuplicateOpportunity",
    "allowFacebookNameMerge",
    "disableContactTimezone",
];
/// Links of `social`.
const SOCIAL_KEYS: &[&str] = &[
    "facebookUrl",
    "googlePlus",
    "linkedIn",
    "foursquare",
    "twitter",
    "yelp",
    "instagram",
    "youtube",
    "pinterest",
    "blogRss",
    "googlePlacesId",
];

fn default_settings() -> Value {
    json!({
        "allowDuplicateContact": false,
        "allowDuplicateOpportunity": false,
        "allowFacebookNameMerge": false,
        "disableContactTimezone": false,
        "duplicateContactOrder": ["email", "phone"],
    })
}

/// Missing nested fields of a nested object (`prospectInfo.email should not be empty`).
fn require_nested(body: &Map<String, Value>, key: &str, fields: &[&str], errs: &mut Vec<String>) {
    let Some(v) = body.get(key).filter(|v| !v.is_null()) else {
        return;
    };
    let Some(obj) = v.as_object() else {
        errs.push(format!("{key} must be an object"));
        return;
    };
    for f in fields {
        match obj.get(*f) {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => errs.push(format!("{key}.{f} should not be empty")),
        }
    }
}

/// Validates a create or update body; returns every failure (NestJS style).
fn validate_location(body: &Map<String, Value>) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    for k in LOCATION_STRINGS.iter().chain(&["companyId", "snapshotId"]) {
        if body.get(*k).is_some_and(|v| !v.is_string() && !v.is_null()) {
            errs.push(format!("{k} must be a string"));
        }
    }
    if let Some(c) = body.get("country").and_then(Value::as_str)
        && !COUNTRIES.contains(&c)
    {
        errs.push(format!(
            "country must be one of the following values: {}",
            COUNTRIES.join(", ")
        ));
    }
    if let Some(e) = body.get("email").and_then(Value::as_str)
        && !e.is_empty()
        && !e
            .split_once('@')
            .is_some_and(|(u, d)| !u.is_empty() && d.contains('.'))
    {
        errs.push("email must be an email".into());
    }
    require_nested(
        body,
        "prospectInfo",
        &["firstName", "lastName", "email"],
        &mut errs,
    );
    require_nested(body, "twilio", &["sid", "authToken"], &mut errs);
    require_nested(body, "mailgun", &["apiKey", "domain"], &mut errs);
    if let Some(s) = body.get("snapshot").filter(|v| !v.is_null()) {
        require_nested(body, "snapshot", &["id"], &mut errs);
        if s.get("override").is_some_and(|o| !o.is_boolean()) {
            errs.push("snapshot.override must be a boolean value".into());
        }
    }
    if let Some(s) = body.get("settings").filter(|v| !v.is_null()) {
        match s.as_object() {
            None => errs.push("settings must be an object".into()),
            Some(s) => {
                for k in SETTINGS_BOOLS {
                    if s.get(*k).is_some_and(|v| !v.is_boolean()) {
                        errs.push(format!("settings.{k} must be a boolean value"));
                    }
                }
                if let Some(order) = s.get("duplicateContactOrder")
                    && !order.as_array().is_some_and(|a| {
                        a.iter()
                            .all(|f| matches!(f.as_str(), Some("email" | "phone")))
                    })
                {
                    errs.push(
                        "settings.duplicateContactOrder must be an array of: email, phone".into(),
                    );
                }
            }
        }
    }
    if let Some(s) = body.get("social").filter(|v| !v.is_null()) {
        match s.as_object() {
            None => errs.push("social must be an object".into()),
            Some(s) => {
                for (k, v) in s {
                    if !v.is_string() && !v.is_null() {
                        errs.push(format!("social.{k} must be a string"));
                    }
                }
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(errs))
    }
}

/// Applies a create/update body to a location document. Twilio and Mailgun credentials and the
/// snapshot are accepted but not kept (HighLevel never returns them).
fn apply_location_body(l: &mut Value, body: &Map<String, Value>) {
    for k in LOCATION_STRINGS {
        if let Some(v) = body.get(*k).filter(|v| v.is_string()) {
            l[*k] = v.clone();
        }
    }
    if let Some(p) = body.get("prospectInfo").and_then(Value::as_object) {
        for k in ["firstName", "lastName", "email"] {
            if let Some(v) = p.get(k).filter(|v| v.is_string()) {
                l[k] = v.clone();
            }
        }
    }
    for (key, allowed) in [("settings", None), ("social", Some(SOCIAL_KEYS))] {
        if let Some(patch) = body.get(key).and_then(Value::as_object) {
            if !l[key].is_object() {
                l[key] = json!({});
            }
            for (k, v) in patch {
                if v.is_null() || allowed.is_some_and(|a| !a.contains(&k.as_str())) {
                    continue;
                }
                l[key][k] = v.clone();
            }
        }
    }
    // The business profile mirrors the location's own details.
    if !l["business"].is_object() {
        l["business"] = json!({});
    }
    for k in [
        "name",
        "address",
        "city",
        "state",
        "country",
        "postalCode",
        "website",
        "timezone",
    ] {
        if let Some(v) = l.get(k).filter(|v| v.is_string()).cloned() {
            l["business"][k] = v;
        }
    }
}

/// A location as the API answers it: every documented object present (settings with their
/// defaults), no `null` strings.
fn render_location(l: &Value) -> Value {
    let mut out = l.clone();
    if let Some(obj) = out.as_object_mut() {
        obj.retain(|_, v| !v.is_null());
        let mut settings = default_settings();
        if let Some(s) = obj.get("settings").and_then(Value::as_object) {
            for (k, v) in s {
                settings[k] = v.clone();
            }
        }
        obj.insert("settings".into(), settings);
        for k in ["social", "business", "reseller"] {
            if !obj.get(k).is_some_and(Value::is_object) {
                obj.insert(k.into(), json!({}));
            }
        }
    }
    out
}

fn location_event(kind: &str, l: &Value) -> Value {
    let mut p = json!({ "type": kind });
    for k in ["id", "name", "email", "companyId", "stripeProductId"] {
        if let Some(v) = l.get(k).filter(|v| v.is_string()) {
            p[k] = v.clone();
        }
    }
    p
}

fn get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = location_scope(ctx, req)?;
    let l = ctx.find(LOCATION, &id, "Location", req)?;
    ok(json!({ "location": render_location(&l) }))
}

/// `GET /locations/search`: the company's locations (a location token sees only its own),
/// `email` filter, `order` by creation, `skip`/`limit` (default 10).
fn search(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let company_id = match (
        req.query("companyId").filter(|c| !c.is_empty()),
        &req.caller.company_id,
    ) {
        (Some(asked), Some(own)) if asked != own => return Err(forbidden_company()),
        (Some(asked), _) => asked.to_string(),
        (None, Some(own)) => own.clone(),
        (None, None) => {
            return Err(ApiError::unprocessable(vec![
                "companyId should not be empty".into(),
            ]));
        }
    };
    let order = req
        .query("order")
        .filter(|o| !o.is_empty())
        .unwrap_or("asc");
    if order != "asc" && order != "desc" {
        return Err(ApiError::unprocessable(vec![
            "order must be one of the following values: asc, desc".into(),
        ]));
    }
    let skip = req.query_usize("skip", 0, usize::MAX)?;
    let limit = req.query_usize("limit", 10, 1000)?;
    let email = req
        .query("email")
        .filter(|e| !e.is_empty())
        .map(str::to_lowercase);
    let mut all: Vec<Arc<Value>> = ctx
        .docs()
        .iter(LOCATION)
        .map(|(_, d)| d.body.clone())
        .filter(|l| l.get("companyId").and_then(Value::as_str) == Some(company_id.as_str()))
        .filter(|l| {
            req.caller
                .location_id
                .as_deref()
                .is_none_or(|own| id_of(l) == own)
        })
        .filter(|l| {
            email.as_deref().is_none_or(|e| {
                l.get("email")
                    .and_then(Value::as_str)
                    .is_some_and(|le| le.to_lowercase() == e)
            })
        })
        .collect();
    if order == "desc" {
        all.reverse();
    }
    let page: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(limit)
        .map(|l| render_location(l))
        .collect();
    ok(json!({ "locations": page }))
}

/// `POST /locations/` (agency token): a new sub-account with the default settings
/// (duplicates not allowed, matched by email then phone). Answers the bare location (200).
fn create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["name", "companyId"])?;
    let body = req.body_object();
    validate_location(&body)?;
    let company_id = req.field_str("companyId").unwrap_or_default().to_string();
    if req
        .caller
        .company_id
        .as_deref()
        .is_some_and(|own| own != company_id)
    {
        return Err(forbidden_company());
    }
    let id = new_id();
    let now = iso(ctx.now_ms);
    let mut l = json!({
        "id": id,
        "companyId": company_id,
        "settings": default_settings(),
        "social": {},
        "business": {},
        "reseller": {},
        "dateAdded": now,
        "dateUpdated": now,
    });
    apply_location_body(&mut l, &body);
    ctx.put(LOCATION, &id, Some(&id), Some(&company_id), l.clone())?;
    ctx.emit("LocationCreate", &id, location_event("LocationCreate", &l));
    ok(render_location(&l))
}

/// `PUT /locations/{locationId}` (agency token): partial update; `settings` and `social` are
/// merged key by key, so `{settings: {allowDuplicateContact: true}}` keeps the other settings.
fn update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = location_scope(ctx, req)?;
    let old = ctx.find(LOCATION, &id, "Location", req)?;
    req.require_fields(&["companyId"])?;
    let body = req.body_object();
    validate_location(&body)?;
    let company_id = req.field_str("companyId").unwrap_or_default();
    if req
        .caller
        .company_id
        .as_deref()
        .is_some_and(|own| own != company_id)
    {
        return Err(forbidden_company());
    }
    if old
        .get("companyId")
        .and_then(Value::as_str)
        .is_some_and(|c| c != company_id)
    {
        return Err(ApiError::bad_request(
            "The location does not belong to this company",
        ));
    }
    let mut l = (*old).clone();
    apply_location_body(&mut l, &body);
    l["dateUpdated"] = json!(iso(ctx.now_ms));
    ctx.replace(LOCATION, &id, l.clone())?;
    ctx.emit("LocationUpdate", &id, location_event("LocationUpdate", &l));
    ok(render_location(&l))
}

/// `GET /companies/{companyId}` (agency token), with the live `locationCount`.
fn company_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("companyId")?;
    if req
        .caller
        .company_id
        .as_deref()
        .is_some_and(|own| own != id)
    {
        return Err(forbidden_company());
    }
    let c = ctx
        .get(COMPANY, id)
        .ok_or_else(|| ApiError::not_found("Company"))?;
    let mut c = (*c.body).clone();
    let count = ctx
        .docs()
        .iter(LOCATION)
        .filter(|(_, d)| d.body.get("companyId").and_then(Value::as_str) == Some(id))
        .count();
    c["locationCount"] = json!(count);
    if let Some(obj) = c.as_object_mut() {
        obj.retain(|_, v| !v.is_null());
    }
    ok(json!({ "company": c }))
}

// ---------------------------------------------------------------------------------------------
// Tags
// ---------------------------------------------------------------------------------------------

/// Tags are stored trimmed and lower-cased, as on contacts.
fn tag_name(req: &Req) -> Result<String, ApiError> {
    req.require_fields(&["name"])?;
    let name = req
        .field_str("name")
        .ok_or_else(|| ApiError::unprocessable(vec!["name must be a string".into()]))?
        .trim()
        .to_lowercase();
    if name.is_empty() {
        return Err(ApiError::unprocessable(vec![
            "name should not be empty".into(),
        ]));
    }
    Ok(name)
}

fn tag_of(ctx: &Ctx<'_>, req: &Req, location_id: &str) -> Result<Arc<Value>, ApiError> {
    let t = ctx.find(TAG, req.path("tagId")?, "Tag", req)?;
    if t.get("locationId").and_then(Value::as_str) != Some(location_id) {
        return Err(ApiError::not_found("Tag"));
    }
    Ok(t)
}

fn tag_taken(ctx: &Ctx<'_>, location_id: &str, name: &str, except: Option<&str>) -> bool {
    ctx.list(TAG, location_id).iter().any(|t| {
        t.get("name").and_then(Value::as_str) == Some(name) && except.is_none_or(|e| id_of(t) != e)
    })
}

fn tags_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let tags: Vec<Value> = ctx
        .list(TAG, &location_id)
        .iter()
        .map(|t| (**t).clone())
        .collect();
    ok(json!({ "tags": tags }))
}

fn tag_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let t = tag_of(ctx, req, &location_id)?;
    ok(json!({ "tag": &*t }))
}

/// `POST /locations/{locationId}/tags` → 200 `{tag}` (the spec's status); 400 when the
/// location already has the tag.
fn tag_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let name = tag_name(req)?;
    if tag_taken(ctx, &location_id, &name, None) {
        return Err(ApiError::bad_request("Tag already exists"));
    }
    let id = new_id();
    let t = json!({ "id": id, "name": name, "locationId": location_id });
    ctx.put(TAG, &id, Some(&location_id), None, t.clone())?;
    ok(json!({ "tag": t }))
}

/// Renames (`Some`) or removes (`None`) a tag on every contact of the location that has it.
fn retag_contacts(
    ctx: &mut Ctx<'_>,
    location_id: &str,
    old: &str,
    new: Option<&str>,
) -> Result<(), ApiError> {
    let holders: Vec<Arc<Value>> = ctx
        .list(CONTACT, location_id)
        .into_iter()
        .filter(|c| {
            c["tags"]
                .as_array()
                .is_some_and(|a| a.iter().any(|t| t == old))
        })
        .collect();
    for c in holders {
        let mut c = (*c).clone();
        let mut tags: Vec<Value> = Vec::new();
        for t in c["tags"].as_array().into_iter().flatten() {
            let t = if t == old {
                match new {
                    Some(n) => json!(n),
                    None => continue,
                }
            } else {
                t.clone()
            };
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        c["tags"] = json!(tags);
        c["dateUpdated"] = json!(iso(ctx.now_ms));
        let id = id_of(&c);
        ctx.replace(CONTACT, &id, c)?;
    }
    Ok(())
}

/// `PUT /locations/{locationId}/tags/{tagId}`: renames the tag, and the tag on its contacts.
fn tag_update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let old = tag_of(ctx, req, &location_id)?;
    let name = tag_name(req)?;
    let id = id_of(&old);
    if tag_taken(ctx, &location_id, &name, Some(&id)) {
        return Err(ApiError::bad_request("Tag already exists"));
    }
    let mut t = (*old).clone();
    t["name"] = json!(name);
    ctx.replace(TAG, &id, t.clone())?;
    if let Some(old_name) = old.get("name").and_then(Value::as_str)
        && old_name != name
    {
        retag_contacts(ctx, &location_id, old_name, Some(&name))?;
    }
    ok(json!({ "tag": t }))
}

/// `DELETE /locations/{locationId}/tags/{tagId}`: the tag also leaves every contact.
fn tag_delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let t = tag_of(ctx, req, &location_id)?;
    ctx.delete(TAG, &id_of(&t))?;
    if let Some(name) = t.get("name").and_then(Value::as_str) {
        retag_contacts(ctx, &location_id, name, None)?;
    }
    ok(succeded())
}

// ---------------------------------------------------------------------------------------------
// Custom values
// ---------------------------------------------------------------------------------------------

fn value_of(ctx: &Ctx<'_>, req: &Req, location_id: &str) -> Result<Arc<Value>, ApiError> {
    let v = ctx.find(CUSTOM_VALUE, req.path("id")?, "Custom value", req)?;
    if v.get("locationId").and_then(Value::as_str) != Some(location_id) {
        return Err(ApiError::not_found("Custom value"));
    }
    Ok(v)
}

/// Checks `{name, value}` (both required strings) and that no other custom value of the
/// location has the name.
fn value_input(
    ctx: &Ctx<'_>,
    req: &Req,
    location_id: &str,
    except: Option<&str>,
) -> Result<(String, String), ApiError> {
    req.require_fields(&["name", "value"])?;
    let mut errs = Vec::new();
    for k in ["name", "value"] {
        if !req.field(k).is_some_and(Value::is_string) {
            errs.push(format!("{k} must be a string"));
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::unprocessable(errs));
    }
    let name = req.field_str("name").unwrap_or_default().trim().to_string();
    let value = req.field_str("value").unwrap_or_default().to_string();
    let taken = ctx.list(CUSTOM_VALUE, location_id).iter().any(|v| {
        v.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.eq_ignore_ascii_case(&name))
            && except.is_none_or(|e| id_of(v) != e)
    });
    if taken {
        return Err(ApiError::bad_request(
            "A custom value with this name already exists",
        ));
    }
    Ok((name, value))
}

fn values_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let values: Vec<Value> = ctx
        .list(CUSTOM_VALUE, &location_id)
        .iter()
        .map(|v| (**v).clone())
        .collect();
    ok(json!({ "customValues": values }))
}

fn value_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let v = value_of(ctx, req, &location_id)?;
    ok(json!({ "customValue": &*v }))
}

/// `POST /locations/{locationId}/customValues` → 201; `fieldKey` is the merge tag
/// `{{ custom_values.<name> }}`.
fn value_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let (name, value) = value_input(ctx, req, &location_id, None)?;
    let id = new_id();
    let v = json!({
        "id": id,
        "name": name,
        "fieldKey": format!("{{{{ custom_values.{} }}}}", custom_fields::slug(&name)),
        "value": value,
        "locationId": location_id,
    });
    ctx.put(CUSTOM_VALUE, &id, Some(&location_id), None, v.clone())?;
    created(json!({ "customValue": v }))
}

/// `PUT /locations/{locationId}/customValues/{id}`: name and value change, the merge tag
/// (`fieldKey`) stays so templates that use it keep working.
fn value_update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let old = value_of(ctx, req, &location_id)?;
    let id = id_of(&old);
    let (name, value) = value_input(ctx, req, &location_id, Some(&id))?;
    let mut v = (*old).clone();
    v["name"] = json!(name);
    v["value"] = json!(value);
    ctx.replace(CUSTOM_VALUE, &id, v.clone())?;
    ok(json!({ "customValue": v }))
}

fn value_delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let v = value_of(ctx, req, &location_id)?;
    ctx.delete(CUSTOM_VALUE, &id_of(&v))?;
    ok(succeded())
}

// ---------------------------------------------------------------------------------------------
// Task search
// ---------------------------------------------------------------------------------------------

/// A body field that is a list of ids (an array, or one string).
fn id_list(req: &Req, name: &str) -> Result<Option<Vec<String>>, ApiError> {
    match req.field(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(Some(
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        )),
        Some(_) => Err(ApiError::unprocessable(vec![format!(
            "{name} must be an array of strings"
        )])),
    }
}

/// A body number (JSON number or numeric string).
fn body_usize(req: &Req, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
    match req.field(name) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .map(|n| (n as usize).min(max))
            .ok_or_else(|| {
                ApiError::unprocessable(vec![format!(
                    "{name} must be a number conforming to the specified constraints"
                )])
            }),
    }
}

/// `POST /locations/{locationId}/tasks/search`: every task of the location's contacts, filtered
/// by `contactId[]`, `completed`, `assignedTo[]`, `businessId` (of the contact) and `query`
/// (title or body), in creation order, `skip`/`limit` (default 25) from the body. Each task
/// carries `contactDetails` and `assignedToUserDetails`, as HighLevel's search answers.
fn tasks_search(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let contacts = id_list(req, "contactId")?;
    let assigned = id_list(req, "assignedTo")?;
    let completed = match req.field("completed") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(ApiError::unprocessable(vec![
                "completed must be a boolean value".into(),
            ]));
        }
    };
    let query = req
        .field_str("query")
        .map(str::to_lowercase)
        .filter(|q| !q.is_empty());
    let business = req.field_str("businessId").filter(|b| !b.is_empty());
    let skip = body_usize(req, "skip", 0, usize::MAX)?;
    let limit = body_usize(req, "limit", 25, 1000)?;
    let text = |t: &Value, k: &str| {
        t.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_lowercase()
    };
    let mut out = Vec::new();
    let mut matched = 0usize;
    for t in ctx.list(TASK, &location_id) {
        let contact_id = t
            .get("contactId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if contacts
            .as_ref()
            .is_some_and(|c| !c.iter().any(|c| c == contact_id))
            || completed
                .is_some_and(|c| t.get("completed").and_then(Value::as_bool).unwrap_or(false) != c)
            || assigned.as_ref().is_some_and(|a| {
                !t.get("assignedTo")
                    .and_then(Value::as_str)
                    .is_some_and(|u| a.iter().any(|x| x == u))
            })
            || query
                .as_ref()
                .is_some_and(|q| !text(&t, "title").contains(q) && !text(&t, "body").contains(q))
        {
            continue;
        }
        let contact = ctx.get(CONTACT, contact_id).map(|d| d.body.clone());
        if let Some(b) = business
            && contact
                .as_ref()
                .and_then(|c| c.get("businessId"))
                .and_then(Value::as_str)
                != Some(b)
        {
            continue;
        }
        matched += 1;
        if matched <= skip || out.len() >= limit {
            continue;
        }
        let mut task = (*t).clone();
        task["_id"] = task["id"].clone();
        task["deleted"] = json!(false);
        task["isLocation"] = json!(false);
        if let Some(c) = &contact {
            let mut details = json!({ "id": contact_id });
            for k in ["firstName", "lastName", "email", "phone"] {
                if let Some(v) = c.get(k).filter(|v| v.is_string()) {
                    details[k] = v.clone();
                }
            }
            task["contactDetails"] = details;
        }
        if let Some(u) = t
            .get("assignedTo")
            .and_then(Value::as_str)
            .and_then(|u| ctx.get(USER, u))
            .map(|d| d.body.clone())
        {
            let mut details = json!({ "id": id_of(&u) });
            for k in ["firstName", "lastName", "email"] {
                if let Some(v) = u.get(k).filter(|v| v.is_string()) {
                    details[k] = v.clone();
                }
            }
            task["assignedToUserDetails"] = details;
        }
        out.push(task);
    }
    ok(json!({ "tasks": out }))
}

// ---------------------------------------------------------------------------------------------
// Demo data
// ---------------------------------------------------------------------------------------------

/// Tags of the demo location (the contacts seeder tags contacts with the first eight).
const SEED_TAGS: &[&str] = &[
    "newsletter",
    "customer",
    "lead",
    "vip",
    "webinar",
    "trial",
    "churn-risk",
    "partner",
    "referral",
    "hot",
];

/// Seeds the company and the demo location (settings: duplicates not allowed, matched by email
/// then phone), five contact custom fields (ids under `custom_field`, in this order: TEXT,
/// SINGLE_OPTIONS, MONETORY, DATE, CHECKBOX), two opportunity custom fields (under
/// `opportunity_custom_field`), ten tags (`tag`) and three custom values (`custom_value`).
/// Called first, before any other seeder.
pub fn seed(ctx: &mut Ctx<'_>, seed: &mut Seed) -> Result<(), ApiError> {
    let loc = seed.location_id.clone();
    let company = seed.company_id.clone();
    let since = seed.now_ms - 400 * 86_400_000;
    let company_doc = json!({
        "id": company,
        "name": "Northwind Growth Agency",
        "email": "hello@northwind-agency.example",
        "logoUrl": "https://northwind-agency.example/logo.png",
        "phone": "+15125550199",
        "website": "https://northwind-agency.example",
        "domain": "https://app.northwind-agency.example",
        "spareDomain": "link.northwind-agency.example",
        "privacyPolicy": "https://northwind-agency.example/privacy",
        "termsConditions": "https://northwind-agency.example/terms",
        "address": "500 Congress Avenue",
        "city": "Austin",
        "postalCode": "78701",
        "country": "US",
        "state": "TX",
        "timezone": "America/Chicago",
        "relationshipNumber": "N-512-555",
        "subdomain": "https://app.northwind-agency.example",
        "plan": 2,
        "currency": "USD",
        "customerType": "agency",
        "termsOfServiceVersion": "06/01/2022",
        "twilioTrialMode": false,
        "twilioFreeCredits": 0,
        "isReselling": true,
        "onboardingInfo": { "pending": false },
        "upgradeEnabledForClients": true,
        "cancelEnabledForClients": true,
        "autoSuspendEnabled": false,
        "saasSettings": {},
        "enableDepreciatedFeatures": false,
        "premiumUpgraded": false,
        "status": "active",
        "disableEmailService": false,
        "isEnterpriseAccount": false,
        "businessNiche": "Dental",
        "businessCategory": "Health",
        "isSandboxAccount": true,
        "enableNewSubAccountDefaultData": false,
        "dateAdded": iso(since),
    });
    ctx.put(COMPANY, &company, None, None, company_doc)?;
    let mut l = json!({
        "id": loc,
        "companyId": company,
        "name": "Bright Smile Dental",
        "domain": "brightsmile.northwind-agency.example",
        "logoUrl": "https://brightsmile.example/logo.png",
        "firstName": "Dana",
        "lastName": "Whitfield",
        "settings": default_settings(),
        "social": { "facebookUrl": "https://www.facebook.com/brightsmile", "instagram": "https://www.instagram.com/brightsmile" },
        "business": { "logoUrl": "https://brightsmile.example/logo.png" },
        "reseller": {},
        "dateAdded": iso(since + 86_400_000),
        "dateUpdated": iso(since + 86_400_000),
    });
    let mut body = Map::new();
    for (k, v) in [
        ("name", "Bright Smile Dental"),
        ("email", "frontdesk@brightsmile.example"),
        ("phone", "+15125550100"),
        ("address", "123 Main Street"),
        ("city", "Austin"),
        ("state", "TX"),
        ("country", "US"),
        ("postalCode", "78701"),
        ("website", "https://brightsmile.example"),
        ("timezone", "America/Chicago"),
    ] {
        body.insert(k.into(), json!(v));
    }
    apply_location_body(&mut l, &body);
    ctx.put(LOCATION, &loc, Some(&loc), Some(&company), l)?;

    let fields: &[(&str, &str, &str, &[&str])] = &[
        ("contact", "Favourite colour", "TEXT", &[]),
        (
            "contact",
            "Plan",
            "SINGLE_OPTIONS",
            &["Free", "Pro", "Enterprise"],
        ),
        ("contact", "Lifetime value", "MONETORY", &[]),
        ("contact", "Birthday", "DATE", &[]),
        ("contact", "Newsletter", "CHECKBOX", &["Yes"]),
        (
            "opportunity",
            "Deal source",
            "SINGLE_OPTIONS",
            &["Referral", "Website", "Event"],
        ),
        ("opportunity", "Contract length (months)", "NUMERICAL", &[]),
    ];
    for (i, (model, name, data_type, options)) in fields.iter().enumerate() {
        let mut body = Map::new();
        body.insert("position".into(), json!(i * 50));
        if !options.is_empty() {
            body.insert("options".into(), json!(options));
        }
        let input = custom_fields::FieldInput {
            name,
            data_type,
            body: &body,
        };
        let mut f = custom_fields::build_field(ctx, &loc, model, &input, None)?;
        let id = seed_id(seed);
        f["id"] = json!(id);
        ctx.put(custom_fields::CUSTOM_FIELD, &id, Some(&loc), None, f)?;
        let key = if *model == "contact" {
            "custom_field"
        } else {
            "opportunity_custom_field"
        };
        seed.ids.entry(key).or_default().push(id);
    }
    for name in SEED_TAGS {
        let id = seed_id(seed);
        ctx.put(
            TAG,
            &id,
            Some(&loc),
            None,
            json!({ "id": id, "name": name, "locationId": loc }),
        )?;
        seed.ids.entry("tag").or_default().push(id);
    }
    for (name, value) in [
        ("Booking link", "https://brightsmile.example/book"),
        ("Support email", "help@brightsmile.example"),
        ("Office hours", "Mon-Fri 8am-5pm"),
    ] {
        let id = seed_id(seed);
        let v = json!({
            "id": id,
            "name": name,
            "fieldKey": format!("{{{{ custom_values.{} }}}}", custom_fields::slug(name)),
            "value": value,
            "locationId": loc,
        });
        ctx.put(CUSTOM_VALUE, &id, Some(&loc), None, v)?;
        seed.ids.entry("custom_value").or_default().push(id);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::handlers::testing::call;
    use crate::handlers::{Caller, Event, Guard, HANDLERS};
    use crate::store::Docs;
    use parking_lot::RwLock;
    use rand::SeedableRng;

    /// A document set holding the seeded demo location `loc1` of `company1`.
    pub(crate) fn seeded() -> RwLock<Docs> {
        let docs = RwLock::new(Docs::default());
        {
            let mut ctx = Ctx::new(Guard::Write(docs.write()), 1_700_000_000_000);
            let mut s = Seed {
                location_id: "loc1".into(),
                company_id: "company1".into(),
                now_ms: 1_700_000_000_000,
                rng: rand::rngs::StdRng::seed_from_u64(7),
                ids: HashMap::new(),
            };
            seed(&mut ctx, &mut s).expect("seed");
        }
        docs
    }

    /// Like `testing::call`, as an agency token of `company`.
    fn as_agency(
        docs: &RwLock<Docs>,
        company: &str,
        op_id: &str,
        path: &[(&str, &str)],
        query: &[(&str, &str)],
        body: Value,
    ) -> (HResult, Vec<Event>) {
        let op = hlbridge_highlevel::operations::find(op_id).expect("known op");
        let req = Req {
            op,
            path: path
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body,
            caller: Caller {
                location_id: None,
                company_id: Some(company.to_string()),
                user_type: UserType::Company,
                app_id: "test".into(),
            },
            now_ms: 1_700_000_000_000,
        };
        let mut ctx = Ctx::new(Guard::Write(docs.write()), req.now_ms);
        let r = HANDLERS[op_id](&mut ctx, &req);
        (r, ctx.events)
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

    #[test]
    fn location_get_has_the_documented_shape_and_settings() {
        let docs = seeded();
        let l = body(
            call(
                &docs,
                "locations.get",
                &[("locationId", "loc1")],
                &[],
                Value::Null,
            )
            .0,
        );
        let l = &l["location"];
        assert_eq!(l["id"], "loc1");
        assert_eq!(l["companyId"], "company1");
        assert_eq!(l["settings"]["allowDuplicateContact"], false);
        assert_eq!(
            l["settings"]["duplicateContactOrder"],
            json!(["email", "phone"])
        );
        assert_eq!(l["business"]["name"], "Bright Smile Dental");
        assert!(l["reseller"].is_object() && l["social"].is_object());
        assert_eq!(
            status(
                call(
                    &docs,
                    "locations.get",
                    &[("locationId", "loc2")],
                    &[],
                    Value::Null
                )
                .0
            ),
            403
        );
    }

    #[test]
    fn location_create_update_search() {
        let docs = seeded();
        // Create (agency token): 422 without name, 403 for another agency, then a new location.
        let (r, _) = as_agency(
            &docs,
            "company1",
            "locations.create",
            &[],
            &[],
            json!({ "companyId": "company1" }),
        );
        assert_eq!(
            r.expect_err("422").message,
            json!(["name should not be empty"])
        );
        let (r, _) = as_agency(
            &docs,
            "company1",
            "locations.create",
            &[],
            &[],
            json!({ "name": "X", "companyId": "other" }),
        );
        assert_eq!(status(r), 403);
        let (r, _) = as_agency(
            &docs,
            "company1",
            "locations.create",
            &[],
            &[],
            json!({ "name": "X", "companyId": "company1", "country": "ZZ" }),
        );
        assert_eq!(status(r), 422);
        let (r, events) = as_agency(
            &docs,
            "company1",
            "locations.create",
            &[],
            &[],
            json!({ "name": "Second Clinic", "companyId": "company1", "country": "US", "timezone": "US/Central",
                    "prospectInfo": { "firstName": "Jo", "lastName": "Ng", "email": "jo@second.example" },
                    "twilio": { "sid": "AC1", "authToken": "secret" } }),
        );
        let created = body(r);
        assert_eq!(created["name"], "Second Clinic");
        assert_eq!(created["email"], "jo@second.example");
        assert!(created.get("twilio").is_none());
        assert_eq!(created["settings"]["allowDuplicateContact"], false);
        let id = created["id"].as_str().unwrap_or_default().to_string();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "LocationCreate");
        assert_eq!(events[0].payload["id"], json!(id));
        assert_eq!(events[0].payload["companyId"], "company1");
        // Visible to the agency, not to another location's token.
        let (r, _) = as_agency(
            &docs,
            "company1",
            "locations.get",
            &[("locationId", &id)],
            &[],
            Value::Null,
        );
        assert_eq!(body(r)["location"]["name"], "Second Clinic");
        assert_eq!(
            status(
                call(
                    &docs,
                    "locations.get",
                    &[("locationId", &id)],
                    &[],
                    Value::Null
                )
                .0
            ),
            403
        );
        let (r, _) = as_agency(
            &docs,
            "company2",
            "locations.get",
            &[("locationId", &id)],
            &[],
            Value::Null,
        );
        assert_eq!(status(r), 403);

        // Update: settings merge key by key.
        let (r, _) = as_agency(
            &docs,
            "company1",
            "locations.update",
            &[("locationId", &id)],
            &[],
            json!({ "name": "Y" }),
        );
        assert_eq!(
            r.expect_err("422").message,
            json!(["companyId should not be empty"])
        );
        let (r, events) = as_agency(
            &docs,
            "company1",
            "locations.update",
            &[("locationId", &id)],
            &[],
            json!({ "companyId": "company1", "city": "Dallas",
                    "settings": { "allowDuplicateContact": true, "duplicateContactOrder": ["phone", "email"] } }),
        );
        let updated = body(r);
        assert_eq!(updated["city"], "Dallas");
        assert_eq!(updated["name"], "Second Clinic");
        assert_eq!(updated["settings"]["allowDuplicateContact"], true);
        assert_eq!(updated["settings"]["allowFacebookNameMerge"], false);
        assert_eq!(events[0].kind, "LocationUpdate");
        let (r, _) = as_agency(
            &docs,
            "company1",
            "locations.get",
            &[("locationId", &id)],
            &[],
            Value::Null,
        );
        let l = body(r);
        assert_eq!(
            l["location"]["settings"]["duplicateContactOrder"],
            json!(["phone", "email"])
        );
        assert_eq!(l["location"]["business"]["city"], "Dallas");
        let (r, _) = as_agency(
            &docs,
            "company1",
            "locations.update",
            &[("locationId", &id)],
            &[],
            json!({ "companyId": "company1", "settings": { "allowDuplicateContact": "yes" } }),
        );
        assert_eq!(
            r.expect_err("422").message,
            json!(["settings.allowDuplicateContact must be a boolean value"])
        );

        // Search: the agency sees both, in order, paged; a location token only its own.
        let (r, _) = as_agency(
            &docs,
            "company1",
            "locations.search",
            &[],
            &[("companyId", "company1")],
            Value::Null,
        );
        let names: Vec<Value> = body(r)["locations"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|l| l["name"].clone())
            .collect();
        assert_eq!(
            names,
            vec![json!("Bright Smile Dental"), json!("Second Clinic")]
        );
        let (r, _) = as_agency(
            &docs,
            "company1",
            "locations.search",
            &[],
            &[("order", "desc"), ("limit", "1")],
            Value::Null,
        );
        assert_eq!(body(r)["locations"][0]["name"], "Second Clinic");
        let (r, _) = as_agency(
            &docs,
            "company1",
            "locations.search",
            &[],
            &[("skip", "1"), ("limit", "1")],
            Value::Null,
        );
        assert_eq!(body(r)["locations"][0]["name"], "Second Clinic");
        let (r, _) = as_agency(
            &docs,
            "company1",
            "locations.search",
            &[],
            &[("email", "FRONTDESK@brightsmile.example")],
            Value::Null,
        );
        assert_eq!(body(r)["locations"].as_array().map(Vec::len), Some(1));
        let (r, _) = as_agency(
            &docs,
            "company1",
            "locations.search",
            &[],
            &[("companyId", "company2")],
            Value::Null,
        );
        assert_eq!(status(r), 403);
        let mine = body(call(&docs, "locations.search", &[], &[], Value::Null).0);
        assert_eq!(mine["locations"].as_array().map(Vec::len), Some(1));
        assert_eq!(mine["locations"][0]["id"], "loc1");
    }

    #[test]
    fn company_get() {
        let docs = seeded();
        let (r, _) = as_agency(
            &docs,
            "company1",
            "companies.get",
            &[("companyId", "company1")],
            &[],
            Value::Null,
        );
        let c = body(r);
        assert_eq!(c["company"]["name"], "Northwind Growth Agency");
        assert_eq!(c["company"]["locationCount"], 1);
        let (r, _) = as_agency(
            &docs,
            "company1",
            "companies.get",
            &[("companyId", "company2")],
            &[],
            Value::Null,
        );
        assert_eq!(status(r), 403);
        let (r, _) = as_agency(
            &docs,
            "nope",
            "companies.get",
            &[("companyId", "nope")],
            &[],
            Value::Null,
        );
        assert_eq!(r.expect_err("404").message, json!("Company not found"));
    }

    fn contact_with(docs: &RwLock<Docs>, body_: Value) -> String {
        let mut b = body_;
        b["locationId"] = json!("loc1");
        let c = body(call(docs, "contacts.create", &[], &[], b).0);
        c["contact"]["id"].as_str().unwrap_or_default().to_string()
    }

    #[test]
    fn tags_crud_and_cascade_to_contacts() {
        let docs = seeded();
        let l = &[("locationId", "loc1")];
        assert_eq!(
            body(call(&docs, "locations.tags.list", l, &[], Value::Null).0)["tags"]
                .as_array()
                .map(Vec::len),
            Some(10)
        );
        let (r, _) = call(&docs, "locations.tags.create", l, &[], json!({}));
        assert_eq!(
            r.expect_err("422").message,
            json!(["name should not be empty"])
        );
        let t = body(
            call(
                &docs,
                "locations.tags.create",
                l,
                &[],
                json!({ "name": " Gold Member " }),
            )
            .0,
        );
        assert_eq!(t["tag"]["name"], "gold member");
        assert_eq!(t["tag"]["locationId"], "loc1");
        let id = t["tag"]["id"].as_str().unwrap_or_default().to_string();
        assert_eq!(
            status(
                call(
                    &docs,
                    "locations.tags.create",
                    l,
                    &[],
                    json!({ "name": "GOLD MEMBER" })
                )
                .0
            ),
            400
        );
        let p = &[("locationId", "loc1"), ("tagId", id.as_str())];
        assert_eq!(
            body(call(&docs, "locations.tags.get", p, &[], Value::Null).0)["tag"]["name"],
            "gold member"
        );

        let cid = contact_with(
            &docs,
            json!({ "email": "t@x.example", "tags": ["gold member", "vip"] }),
        );
        let u = body(
            call(
                &docs,
                "locations.tags.update",
                p,
                &[],
                json!({ "name": "Platinum" }),
            )
            .0,
        );
        assert_eq!(u["tag"]["name"], "platinum");
        assert_eq!(
            body(call(&docs, "locations.tags.get", p, &[], Value::Null).0)["tag"]["name"],
            "platinum"
        );
        let c = body(
            call(
                &docs,
                "contacts.get",
                &[("contactId", &cid)],
                &[],
                Value::Null,
            )
            .0,
        );
        assert_eq!(c["contact"]["tags"], json!(["platinum", "vip"]));
        assert_eq!(
            status(
                call(
                    &docs,
                    "locations.tags.update",
                    p,
                    &[],
                    json!({ "name": "vip" })
                )
                .0
            ),
            400
        );

        assert_eq!(
            body(call(&docs, "locations.tags.delete", p, &[], Value::Null).0),
            json!({ "succeded": true })
        );
        let (r, _) = call(&docs, "locations.tags.get", p, &[], Value::Null);
        assert_eq!(r.expect_err("404").message, json!("Tag not found"));
        let c = body(
            call(
                &docs,
                "contacts.get",
                &[("contactId", &cid)],
                &[],
                Value::Null,
            )
            .0,
        );
        assert_eq!(c["contact"]["tags"], json!(["vip"]));
        assert_eq!(
            status(
                call(
                    &docs,
                    "locations.tags.list",
                    &[("locationId", "loc2")],
                    &[],
                    Value::Null
                )
                .0
            ),
            403
        );
    }

    #[test]
    fn custom_fields_crud() {
        let docs = seeded();
        let l = &[("locationId", "loc1")];
        let list = |q: &[(&str, &str)]| {
            body(call(&docs, "locations.custom_fields.list", l, q, Value::Null).0)["customFields"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(list(&[]).len(), 5);
        assert_eq!(list(&[("model", "opportunity")]).len(), 2);
        assert_eq!(list(&[("model", "all")]).len(), 7);
        assert_eq!(
            status(
                call(
                    &docs,
                    "locations.custom_fields.list",
                    l,
                    &[("model", "x")],
                    Value::Null
                )
                .0
            ),
            422
        );
        assert_eq!(
            list(&[])[1]["picklistOptions"],
            json!(["Free", "Pro", "Enterprise"])
        );

        let (r, _) = call(
            &docs,
            "locations.custom_fields.create",
            l,
            &[],
            json!({ "dataType": "TEXT" }),
        );
        assert_eq!(
            r.expect_err("422").message,
            json!(["name should not be empty"])
        );
        assert_eq!(
            status(
                call(
                    &docs,
                    "locations.custom_fields.create",
                    l,
                    &[],
                    json!({ "name": "A", "dataType": "COLOUR" })
                )
                .0
            ),
            422
        );
        assert_eq!(
            status(
                call(
                    &docs,
                    "locations.custom_fields.create",
                    l,
                    &[],
                    json!({ "name": "A", "dataType": "TEXT", "model": "deal" })
                )
                .0
            ),
            422
        );
        let (r, _) = call(
            &docs,
            "locations.custom_fields.create",
            l,
            &[],
            json!({ "name": "Tier", "dataType": "SINGLE_OPTIONS" }),
        );
        assert_eq!(
            r.expect_err("422").message,
            json!(["options should not be empty"])
        );

        let r = call(
            &docs,
            "locations.custom_fields.create",
            l,
            &[],
            json!({ "name": "Favourite colour", "dataType": "TEXT", "placeholder": "Blue" }),
        )
        .0;
        assert_eq!(
            status(call(&docs, "locations.custom_fields.list", l, &[], Value::Null).0),
            200
        );
        let reply = r.expect("created");
        assert_eq!(reply.status, 201);
        let f = &reply.body["customField"];
        // The seed already has "Favourite colour": the key gets a suffix.
        assert_eq!(f["fieldKey"], "contact.favourite_colour_1");
        assert_eq!(f["model"], "contact");
        assert_eq!(f["placeholder"], "Blue");
        let id = f["id"].as_str().unwrap_or_default().to_string();
        let p = &[("locationId", "loc1"), ("id", id.as_str())];
        assert_eq!(
            body(call(&docs, "locations.custom_fields.get", p, &[], Value::Null).0)["customField"]
                ["name"],
            "Favourite colour"
        );
        let by_key = &[("locationId", "loc1"), ("id", "contact.favourite_colour_1")];
        let g = body(
            call(
                &docs,
                "locations.custom_fields.get",
                by_key,
                &[],
                Value::Null,
            )
            .0,
        );
        assert_eq!(g["customField"]["id"], json!(id));

        let opp = body(call(&docs, "locations.custom_fields.create", l, &[], json!({ "name": "Region", "dataType": "MULTIPLE_OPTIONS", "model": "opportunity", "options": ["North", "South"] })).0);
        assert_eq!(opp["customField"]["fieldKey"], "opportunity.region");
        assert_eq!(
            opp["customField"]["picklistOptions"],
            json!(["North", "South"])
        );

        let cid = contact_with(
            &docs,
            json!({ "email": "cf@x.example", "customFields": [{ "id": id, "value": "teal" }] }),
        );
        let u = body(
            call(
                &docs,
                "locations.custom_fields.update",
                p,
                &[],
                json!({ "name": "Colour", "position": 100 }),
            )
            .0,
        );
        assert_eq!(u["customField"]["name"], "Colour");
        assert_eq!(u["customField"]["fieldKey"], "contact.favourite_colour_1");
        assert_eq!(u["customField"]["dataType"], "TEXT");
        let g = body(call(&docs, "locations.custom_fields.get", p, &[], Value::Null).0);
        assert_eq!(g["customField"]["position"], 100);
        assert_eq!(
            status(
                call(
                    &docs,
                    "locations.custom_fields.update",
                    p,
                    &[],
                    json!({ "position": 1 })
                )
                .0
            ),
            422
        );

        assert_eq!(
            body(call(&docs, "locations.custom_fields.delete", p, &[], Value::Null).0),
            json!({ "succeded": true })
        );
        let (r, _) = call(&docs, "locations.custom_fields.get", p, &[], Value::Null);
        assert_eq!(r.expect_err("404").message, json!("Custom field not found"));
        let c = body(
            call(
                &docs,
                "contacts.get",
                &[("contactId", &cid)],
                &[],
                Value::Null,
            )
            .0,
        );
        assert_eq!(c["contact"]["customFields"], json!([]));
    }

    #[test]
    fn custom_values_crud() {
        let docs = seeded();
        let l = &[("locationId", "loc1")];
        assert_eq!(body(call(&docs, "locations.custom_values.list", l, &[], Value::Null).0)["customValues"].as_array().map(Vec::len), Some(3));
        let (r, _) = call(
            &docs,
            "locations.custom_values.create",
            l,
            &[],
            json!({ "name": "Promo" }),
        );
        assert_eq!(
            r.expect_err("422").message,
            json!(["value should not be empty"])
        );
        let reply = call(
            &docs,
            "locations.custom_values.create",
            l,
            &[],
            json!({ "name": "Promo code", "value": "SPRING10" }),
        )
        .0
        .expect("created");
        assert_eq!(reply.status, 201);
        let v = &reply.body["customValue"];
        assert_eq!(v["fieldKey"], "{{ custom_values.promo_code }}");
        let id = v["id"].as_str().unwrap_or_default().to_string();
        assert_eq!(
            status(
                call(
                    &docs,
                    "locations.custom_values.create",
                    l,
                    &[],
                    json!({ "name": "promo code", "value": "x" })
                )
                .0
            ),
            400
        );
        let p = &[("locationId", "loc1"), ("id", id.as_str())];
        assert_eq!(
            body(call(&docs, "locations.custom_values.get", p, &[], Value::Null).0)["customValue"]
                ["value"],
            "SPRING10"
        );
        let u = body(
            call(
                &docs,
                "locations.custom_values.update",
                p,
                &[],
                json!({ "name": "Promo code", "value": "SUMMER20" }),
            )
            .0,
        );
        assert_eq!(u["customValue"]["value"], "SUMMER20");
        assert_eq!(
            body(call(&docs, "locations.custom_values.get", p, &[], Value::Null).0)["customValue"]
                ["value"],
            "SUMMER20"
        );
        assert_eq!(
            body(call(&docs, "locations.custom_values.delete", p, &[], Value::Null).0),
            json!({ "succeded": true })
        );
        let (r, _) = call(&docs, "locations.custom_values.get", p, &[], Value::Null);
        assert_eq!(r.expect_err("404").message, json!("Custom value not found"));
    }

    #[test]
    fn tasks_search_filters_and_pages() {
        let docs = seeded();
        let a = contact_with(&docs, json!({ "email": "a@x.example", "firstName": "Ann" }));
        let b = contact_with(&docs, json!({ "email": "b@x.example" }));
        for (cid, title, done, user) in [
            (&a, "Call back", false, "u1"),
            (&a, "Send proposal", true, "u2"),
            (&b, "Call about renewal", false, "u1"),
        ] {
            let p = &[("contactId", cid.as_str())];
            let t = body(call(&docs, "contacts.tasks.create", p, &[], json!({ "title": title, "dueDate": "2024-01-01T10:00:00Z", "completed": done, "assignedTo": user })).0);
            assert_eq!(t["task"]["title"], json!(title));
        }
        let l = &[("locationId", "loc1")];
        let search = |b_: Value| {
            body(call(&docs, "locations.tasks.search", l, &[], b_).0)["tasks"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let all = search(json!({}));
        assert_eq!(all.len(), 3);
        assert_eq!(all[0]["contactDetails"]["firstName"], "Ann");
        assert_eq!(search(json!({ "contactId": [a] })).len(), 2);
        assert_eq!(
            search(json!({ "completed": true }))[0]["title"],
            "Send proposal"
        );
        assert_eq!(search(json!({ "assignedTo": ["u1"] })).len(), 2);
        assert_eq!(search(json!({ "query": "CALL" })).len(), 2);
        let page2 = search(json!({ "skip": 1, "limit": 1 }));
        assert_eq!(page2.len(), 1);
        assert_eq!(page2[0]["id"], all[1]["id"]);
        assert_eq!(
            status(
                call(
                    &docs,
                    "locations.tasks.search",
                    l,
                    &[],
                    json!({ "completed": "yes" })
                )
                .0
            ),
            422
        );
        assert_eq!(
            status(
                call(
                    &docs,
                    "locations.tasks.search",
                    &[("locationId", "loc2")],
                    &[],
                    json!({})
                )
                .0
            ),
            403
        );
    }

    #[test]
    fn seed_is_deterministic_and_complete() {
        let a = seeded();
        let b = seeded();
        let tags = |d: &RwLock<Docs>| {
            body(
                call(
                    d,
                    "locations.tags.list",
                    &[("locationId", "loc1")],
                    &[],
                    Value::Null,
                )
                .0,
            )
        };
        assert_eq!(tags(&a), tags(&b));
        let d = a.read();
        assert_eq!(d.count(custom_fields::CUSTOM_FIELD), 7);
        assert_eq!(d.count(CUSTOM_VALUE), 3);
        assert_eq!(d.count(TAG), 10);
        assert!(d.get(COMPANY, "company1").is_some());
        assert_eq!(
            d.get(LOCATION, "loc1")
                .map(|l| l.body["settings"]["allowDuplicateContact"].clone()),
            Some(json!(false))
        );
    }
}
