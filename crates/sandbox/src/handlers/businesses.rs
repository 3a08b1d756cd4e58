//! Businesses: the companies a location's contacts belong to. CRUD and the list by location
//! (skip/limit). Deleting a business detaches its contacts (their `businessId` is cleared).
//!
//! Create and update answer `{success, buiseness}` — the spec's spelling, which it marks
//! required; the same object is also given as `business` for clients that expect the word.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;
use serde_json::{Map, Value, json};

use super::{Ctx, HResult, Handler, Req, Seed, created, forbidden_location, iso, new_id, ok};
use crate::error::ApiError;

/// A business.
pub const BUSINESS: &str = "business";
/// Contacts (owned by the contacts module; `businessId` is cleared when a business goes).
const CONTACT: &str = "contact";

/// Fields a caller may set on a business.
const WRITABLE: &[&str] = &[
    "name",
    "phone",
    "email",
    "website",
    "address",
    "city",
    "postalCode",
    "state",
    "country",
    "description",
];

/// Registers the handlers of this module.
pub fn register(map: &mut HashMap<&'static str, Handler>) {
    map.insert("businesses.get", get);
    map.insert("businesses.list", list);
    map.insert("businesses.create", create);
    map.insert("businesses.update", update);
    map.insert("businesses.delete", delete);
}

fn business(ctx: &Ctx<'_>, req: &Req, id: &str) -> Result<Arc<Value>, ApiError> {
    ctx.find(BUSINESS, id, "Business", req)
}

fn validate(body: &Map<String, Value>) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    for k in WRITABLE {
        if body.get(*k).is_some_and(|v| !v.is_null() && !v.is_string()) {
            errs.push(format!("{k} must be a string"));
        }
    }
    if let Some(e) = body.get("email").and_then(Value::as_str).map(str::trim)
        && !e.is_empty()
        && !e
            .split_once('@')
            .is_some_and(|(u, d)| !u.is_empty() && d.contains('.'))
    {
        errs.push("email must be an email".into());
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(errs))
    }
}

/// Who made a change, as HighLevel records it for API calls.
fn actor(req: &Req) -> Value {
    json!({ "source": "INTEGRATION", "channel": "OAUTH", "sourceId": req.caller.app_id, "timestamp": iso(req.now_ms) })
}

fn answer(b: &Value) -> Value {
    json!({ "success": true, "buiseness": b, "business": b })
}

fn get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let b = business(ctx, req, req.path("businessId")?)?;
    ok(json!({ "business": &*b }))
}

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
    let limit = req.query_usize("limit", 100, 100)?;
    let skip = req.query_usize("skip", 0, usize::MAX)?;
    let all = ctx.list(BUSINESS, location_id);
    let page: Vec<Value> = super::window(&all, skip, limit)
        .iter()
        .map(|b| (**b).clone())
        .collect();
    ok(json!({ "businesses": page }))
}

fn create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["name", "locationId"])?;
    let body = req.body_object();
    validate(&body)?;
    let location_id = req.location_id()?;
    if req
        .caller
        .location_id
        .as_deref()
        .is_some_and(|l| l != location_id)
    {
        return Err(forbidden_location());
    }
    let id = new_id();
    let now = iso(req.now_ms);
    let mut b = json!({
        "id": id,
        "locationId": location_id,
        "createdBy": actor(req),
        "updatedBy": actor(req),
        "createdAt": now,
        "updatedAt": now,
    });
    for k in WRITABLE {
        if let Some(v) = body.get(*k).filter(|v| v.is_string()) {
            b[*k] = v.clone();
        }
    }
    ctx.put(BUSINESS, &id, Some(&location_id), None, b.clone())?;
    created(answer(&b))
}

fn update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("businessId")?;
    let old = business(ctx, req, id)?;
    let body = req.body_object();
    validate(&body)?;
    if body
        .get("name")
        .is_some_and(|n| n.as_str().is_some_and(|n| n.trim().is_empty()))
    {
        return Err(ApiError::unprocessable(vec![
            "name should not be empty".into(),
        ]));
    }
    let mut b = (*old).clone();
    for k in WRITABLE {
        if let Some(v) = body.get(*k).filter(|v| v.is_string()) {
            b[*k] = v.clone();
        }
    }
    b["updatedBy"] = actor(req);
    b["updatedAt"] = json!(iso(req.now_ms));
    ctx.replace(BUSINESS, id, b.clone())?;
    ok(answer(&b))
}

fn delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("businessId")?;
    let b = business(ctx, req, id)?;
    let location_id = b
        .get("locationId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let members: Vec<(String, Value)> = ctx
        .list(CONTACT, &location_id)
        .iter()
        .filter(|c| c.get("businessId").and_then(Value::as_str) == Some(id))
        .map(|c| {
            (
                c.get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                (**c).clone(),
            )
        })
        .collect();
    for (cid, mut c) in members {
        if let Some(obj) = c.as_object_mut() {
            obj.remove("businessId");
        }
        ctx.replace(CONTACT, &cid, c)?;
    }
    ctx.delete(BUSINESS, id)?;
    ok(json!({ "success": true }))
}

/// Adds three businesses to the demo location and links a few seeded contacts to each (when
/// contacts exist already).
pub fn seed(ctx: &mut Ctx<'_>, seed: &mut Seed) -> Result<(), ApiError> {
    const COMPANIES: &[(&str, &str, &str, &str, &str)] = &[
        (
            "Northwind Traders",
            "northwind.example.com",
            "Seattle",
            "WA",
            "98101",
        ),
        (
            "Bluebird Dental",
            "bluebird-dental.example.com",
            "Austin",
            "TX",
            "73301",
        ),
        (
            "Summit Roofing Co.",
            "summitroofing.example.com",
            "Denver",
            "CO",
            "80202",
        ),
    ];
    let location_id = seed.location_id.clone();
    let contacts: Vec<String> = seed.ids("contact").to_vec();
    for (i, (name, site, city, state, zip)) in COMPANIES.iter().enumerate() {
        let id: String = (0..20)
            .map(|_| {
                const ALPHABET: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
                ALPHABET[seed.rng.random_range(0..ALPHABET.len())] as char
            })
            .collect();
        let at = iso(seed.now_ms - (200 - 20 * i as i64) * 86_400_000);
        let who = json!({ "source": "WEB_USER", "channel": "APP", "timestamp": at });
        let b = json!({
            "id": id,
            "name": name,
            "phone": format!("+1555020{:04}", seed.rng.random_range(0..10_000)),
            "email": format!("info@{site}"),
            "website": site,
            "address": format!("{} Main Street", 100 + 17 * i),
            "city": city,
            "state": state,
            "postalCode": zip,
            "country": "US",
            "description": format!("{name}, a demo business of the sandbox."),
            "locationId": location_id,
            "createdBy": who,
            "updatedBy": who,
            "createdAt": at,
            "updatedAt": at,
        });
        ctx.put(BUSINESS, &id, Some(&location_id), None, b)?;
        // Link every seventh contact (offset by business) to this business.
        for cid in contacts.iter().skip(i).step_by(7).take(6) {
            if let Some(c) = ctx.get(CONTACT, cid).map(|d| d.body.clone()) {
                let mut c = (*c).clone();
                c["businessId"] = json!(id);
                ctx.replace(CONTACT, cid, c)?;
            }
        }
        seed.ids.entry("business").or_default().push(id);
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

    #[test]
    fn crud_and_detach() {
        let docs = RwLock::new(Docs::default());
        let (r, _) = call(
            &docs,
            "businesses.create",
            &[],
            &[],
            json!({ "name": "Microsoft", "locationId": "loc1", "email": "abc@microsoft.com" }),
        );
        let r = r.unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.body["success"], true);
        let b = r.body["buiseness"].clone();
        let id = b["id"].as_str().unwrap().to_string();
        assert_eq!(b["locationId"], "loc1");

        let (r, _) = call(
            &docs,
            "businesses.get",
            &[("businessId", &id)],
            &[],
            Value::Null,
        );
        assert_eq!(r.unwrap().body["business"]["name"], "Microsoft");
        let (r, _) = call(
            &docs,
            "businesses.update",
            &[("businessId", &id)],
            &[],
            json!({ "city": "Redmond" }),
        );
        assert_eq!(r.unwrap().body["buiseness"]["city"], "Redmond");
        let (r, _) = call(
            &docs,
            "businesses.get",
            &[("businessId", &id)],
            &[],
            Value::Null,
        );
        assert_eq!(r.unwrap().body["business"]["city"], "Redmond");

        let (r, _) = call(
            &docs,
            "contacts.create",
            &[],
            &[],
            json!({ "locationId": "loc1", "firstName": "Bill" }),
        );
        let cid = r.unwrap().body["contact"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (r, _) = call(
            &docs,
            "contacts.bulk_business",
            &[],
            &[],
            json!({ "locationId": "loc1", "ids": [cid], "businessId": id }),
        );
        r.unwrap();

        let (r, _) = call(
            &docs,
            "businesses.delete",
            &[("businessId", &id)],
            &[],
            Value::Null,
        );
        assert_eq!(r.unwrap().body, json!({ "success": true }));
        let (r, _) = call(
            &docs,
            "businesses.get",
            &[("businessId", &id)],
            &[],
            Value::Null,
        );
        assert_eq!(r.unwrap_err().message, json!("Business not found"));
        let (r, _) = call(
            &docs,
            "contacts.get",
            &[("contactId", &cid)],
            &[],
            Value::Null,
        );
        assert!(r.unwrap().body["contact"].get("businessId").is_none());
    }

    #[test]
    fn validation_and_list() {
        let docs = RwLock::new(Docs::default());
        let (r, _) = call(
            &docs,
            "businesses.create",
            &[],
            &[],
            json!({ "locationId": "loc1" }),
        );
        assert_eq!(r.unwrap_err().message, json!(["name should not be empty"]));
        let (r, _) = call(
            &docs,
            "businesses.create",
            &[],
            &[],
            json!({ "name": "x", "locationId": "loc1", "email": "nope" }),
        );
        assert_eq!(r.unwrap_err().status, 422);
        let (r, _) = call(
            &docs,
            "businesses.create",
            &[],
            &[],
            json!({ "name": "x", "locationId": "loc2" }),
        );
        assert_eq!(r.unwrap_err().status, 403);
        for i in 0..5 {
            let (r, _) = call(
                &docs,
                "businesses.create",
                &[],
                &[],
                json!({ "name": format!("B{i}"), "locationId": "loc1" }),
            );
            r.unwrap();
        }
        let (r, _) = call(
            &docs,
            "businesses.list",
            &[],
            &[("locationId", "loc1"), ("skip", "2"), ("limit", "2")],
            Value::Null,
        );
        let list = r.unwrap().body["businesses"].clone();
        assert_eq!(list.as_array().unwrap().len(), 2);
        assert_eq!(list[0]["name"], "B2");
        let (r, _) = call(
            &docs,
            "businesses.list",
            &[],
            &[("locationId", "loc2")],
            Value::Null,
        );
        assert_eq!(r.unwrap_err().status, 403);
    }
}
