//! Associations and relations (`associations.json`): association definitions between objects
//! (the SYSTEM_DEFINED ones every location has, plus USER_DEFINED contact↔contact,
//! contact↔custom object and custom object↔custom object ones), looked up by id, key or object
//! key, created, relabelled and deleted (with their relations); and relations linking two
//! records through an association (create, list by record with skip/limit, delete).
//! Webhooks: AssociationCreate/Update/Delete, RelationCreate/Delete.
//!
//! The spec's success schemas are wrong for several operations (labels typed `object`, the
//! list and the relation operations typed as a single association); the answers here follow
//! HighLevel's documented examples and webhook payloads instead (see the module report).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::locations::{location_scope, stable_id};
use super::{Ctx, HResult, Handler, Req, Seed, created, iso, new_id, ok};
use crate::error::ApiError;

/// A USER_DEFINED association (SYSTEM_DEFINED ones are derived, not stored).
pub const ASSOCIATION: &str = "association";
/// A relation between two records (parent: the association).
pub const RELATION: &str = "association_relation";
const CONTACT: &str = "contact";
const OPPORTUNITY: &str = "opportunity";
const OBJECT_SCHEMA: &str = "object_schema";
const OBJECT_RECORD: &str = "object_record";

/// Registers the handlers of this module.
pub fn register(map: &mut HashMap<&'static str, Handler>) {
    map.insert("associations.list", list);
    map.insert("associations.get", get);
    map.insert("associations.get_by_key", get_by_key);
    map.insert("associations.get_by_object_key", get_by_object_key);
    map.insert("associations.create", create);
    map.insert("associations.update", update);
    map.insert("associations.delete", delete);
    map.insert("associations.relations.list", relations_list);
    map.insert("associations.relations.create", relation_create);
    map.insert("associations.relations.delete", relation_delete);
}

/// The SYSTEM_DEFINED associations of every location: key, first object, first label, second
/// object, second label.
const SYSTEM: &[(&str, &str, &str, &str, &str)] = &[
    (
        "contact_business",
        "contact",
        "Contact",
        "business",
        "Business",
    ),
    (
        "contact_opportunity",
        "contact",
        "Contact",
        "opportunity",
        "Opportunity",
    ),
];

fn str_of<'v>(v: &'v Value, k: &str) -> &'v str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn trace_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn system_associations(location_id: &str) -> Vec<Value> {
    SYSTEM
        .iter()
        .map(|(key, k1, l1, k2, l2)| {
            json!({
                "locationId": location_id,
                "id": stable_id(&[location_id, key, "association"]),
                "key": key,
                "firstObjectLabel": l1,
                "firstObjectKey": k1,
                "secondObjectLabel": l2,
                "secondObjectKey": k2,
                "associationType": "SYSTEM_DEFINED",
                "firstObjectToSecondObjectCardinality": "MANY_TO_MANY",
                "secondObjectToFirstObjectCardinality": "MANY_TO_MANY",
            })
        })
        .collect()
}

/// Every association of a location: the system ones first, then the user-defined ones in
/// creation order.
fn all_associations(ctx: &Ctx<'_>, location_id: &str) -> Vec<Value> {
    let mut out = system_associations(location_id);
    out.extend(
        ctx.list(ASSOCIATION, location_id)
            .iter()
            .map(|a| (**a).clone()),
    );
    out
}

/// An association by id (system or stored), checking the caller's location.
fn association_by_id(ctx: &Ctx<'_>, req: &Req, id: &str) -> Result<Value, ApiError> {
    if let Some(doc) = ctx.get(ASSOCIATION, id) {
        super::check_location(doc, req)?;
        return Ok((*doc.body).clone());
    }
    let loc = req.location_id()?;
    system_associations(&loc)
        .into_iter()
        .find(|a| str_of(a, "id") == id)
        .ok_or_else(|| ApiError::not_found("Association"))
}

/// Whether an object key can take part in a user-defined association in this location.
fn object_key_supported(ctx: &Ctx<'_>, loc: &str, key: &str) -> bool {
    key == CONTACT
        || (key.starts_with("custom_objects.")
            && ctx
                .list(OBJECT_SCHEMA, loc)
                .iter()
                .any(|s| str_of(s, "key") == key))
}

/// Whether a record of `object_key` with `id` exists in the location (only checked for the
/// objects the sandbox stores).
fn record_exists(ctx: &Ctx<'_>, loc: &str, object_key: &str, id: &str) -> bool {
    let in_loc = |kind: &str| {
        ctx.get(kind, id)
            .is_some_and(|d| d.location_id.as_deref() == Some(loc))
    };
    match object_key {
        CONTACT => in_loc(CONTACT),
        OPPORTUNITY => in_loc(OPPORTUNITY),
        k if k.starts_with("custom_objects.") => ctx.get(OBJECT_RECORD, id).is_some_and(|d| {
            d.location_id.as_deref() == Some(loc) && str_of(&d.body, "objectKey") == k
        }),
        _ => true,
    }
}

fn association_event(a: &Value, with_cardinality: bool) -> Value {
    let mut out = Map::new();
    let mut keys = vec![
        "id",
        "associationType",
        "firstObjectKey",
        "firstObjectLabel",
        "secondObjectKey",
        "secondObjectLabel",
        "key",
        "locationId",
    ];
    if with_cardinality {
        keys.extend([
            "firstObjectToSecondObjectCardinality",
            "secondObjectToFirstObjectCardinality",
        ]);
    }
    for k in keys {
        if let Some(v) = a.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    Value::Object(out)
}

fn relation_event(r: &Value) -> Value {
    let mut out = Map::new();
    for k in [
        "id",
        "firstObjectKey",
        "firstRecordId",
        "secondObjectKey",
        "secondRecordId",
        "associationId",
        "locationId",
    ] {
        if let Some(v) = r.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    Value::Object(out)
}

fn skip_limit(req: &Req) -> Result<(usize, usize), ApiError> {
    Ok((
        req.query_usize("skip", 0, usize::MAX)?,
        req.query_usize("limit", 100, 100)?,
    ))
}

/// Labels are strings (the spec types them `object`, its examples and HighLevel use strings).
fn check_labels(req: &Req, names: &[&str]) -> Result<(), ApiError> {
    let errs: Vec<String> = names
        .iter()
        .filter(|n| req.field(n).is_some_and(|v| !v.is_string()))
        .map(|n| format!("{n} must be a string"))
        .collect();
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(errs))
    }
}

fn list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = location_scope(ctx, req)?;
    let all = all_associations(ctx, &loc);
    let (skip, limit) = skip_limit(req)?;
    let page: Vec<Value> = all.iter().skip(skip).take(limit).cloned().collect();
    ok(json!({ "associations": page, "total": all.len(), "traceId": trace_id() }))
}

fn get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    ok(association_by_id(ctx, req, req.path("associationId")?)?)
}

fn get_by_key(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = location_scope(ctx, req)?;
    let key = req.path("key_name")?;
    all_associations(ctx, &loc)
        .into_iter()
        .find(|a| str_of(a, "key") == key)
        .map_or_else(|| Err(ApiError::not_found("Association")), ok)
}

/// The association an object key takes part in (the first one, system before user-defined):
/// the spec answers one association object.
fn get_by_object_key(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = location_scope(ctx, req)?;
    let key = req.path("objectKey")?;
    all_associations(ctx, &loc)
        .into_iter()
        .find(|a| str_of(a, "firstObjectKey") == key || str_of(a, "secondObjectKey") == key)
        .map_or_else(|| Err(ApiError::not_found("Association")), ok)
}

/// Creates a user-defined association (validated); shared by the handler and the seeder.
fn insert_association(
    ctx: &mut Ctx<'_>,
    loc: &str,
    body: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let key = body
        .get("key")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim()
        .to_string();
    let first = body
        .get("firstObjectKey")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let second = body
        .get("secondObjectKey")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    for k in [&first, &second] {
        if !object_key_supported(ctx, loc, k) {
            return Err(ApiError::bad_request(format!(
                "Object key {k} is not supported: associations can link contacts and custom objects"
            )));
        }
    }
    if all_associations(ctx, loc)
        .iter()
        .any(|a| str_of(a, "key") == key)
    {
        return Err(ApiError::bad_request(format!(
            "Association with key {key} already exists"
        )));
    }
    let id = new_id();
    let now = iso(ctx.now_ms);
    let a = json!({
        "locationId": loc,
        "id": id,
        "key": key,
        "firstObjectLabel": body.get("firstObjectLabel").cloned().unwrap_or(json!("")),
        "firstObjectKey": first,
        "secondObjectLabel": body.get("secondObjectLabel").cloned().unwrap_or(json!("")),
        "secondObjectKey": second,
        "associationType": "USER_DEFINED",
        "firstObjectToSecondObjectCardinality": "MANY_TO_MANY",
        "secondObjectToFirstObjectCardinality": "MANY_TO_MANY",
        "createdAt": now,
        "updatedAt": now,
    });
    ctx.put(ASSOCIATION, &id, Some(loc), None, a.clone())?;
    ctx.emit("AssociationCreate", loc, association_event(&a, false));
    Ok(a)
}

fn create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&[
        "locationId",
        "key",
        "firstObjectLabel",
        "firstObjectKey",
        "secondObjectLabel",
        "secondObjectKey",
    ])?;
    check_labels(
        req,
        &[
            "key",
            "firstObjectLabel",
            "firstObjectKey",
            "secondObjectLabel",
            "secondObjectKey",
        ],
    )?;
    let loc = location_scope(ctx, req)?;
    created(insert_association(ctx, &loc, &req.body_object())?)
}

fn update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["firstObjectLabel", "secondObjectLabel"])?;
    check_labels(req, &["firstObjectLabel", "secondObjectLabel"])?;
    let id = req.path("associationId")?;
    let old = association_by_id(ctx, req, id)?;
    if str_of(&old, "associationType") == "SYSTEM_DEFINED" {
        return Err(ApiError::bad_request(
            "SYSTEM_DEFINED associations cannot be updated",
        ));
    }
    let mut a = old;
    a["firstObjectLabel"] = req.field("firstObjectLabel").cloned().unwrap_or(json!(""));
    a["secondObjectLabel"] = req.field("secondObjectLabel").cloned().unwrap_or(json!(""));
    a["updatedAt"] = json!(iso(ctx.now_ms));
    ctx.replace(ASSOCIATION, id, a.clone())?;
    let loc = str_of(&a, "locationId").to_string();
    ctx.emit("AssociationUpdate", &loc, association_event(&a, true));
    ok(a)
}

fn delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("associationId")?;
    let a = association_by_id(ctx, req, id)?;
    if str_of(&a, "associationType") == "SYSTEM_DEFINED" {
        return Err(ApiError::bad_request(
            "Only USER_DEFINED associations can be deleted",
        ));
    }
    let loc = str_of(&a, "locationId").to_string();
    // Deleting an association deletes all its relations.
    for r in ctx.children(RELATION, id) {
        ctx.delete(RELATION, str_of(&r, "id"))?;
        ctx.emit("RelationDelete", &loc, relation_event(&r));
    }
    ctx.delete(ASSOCIATION, id)?;
    ctx.emit("AssociationDelete", &loc, association_event(&a, true));
    ok(json!({ "deleted": true, "id": id, "message": "Association deleted successfully" }))
}

/// Creates a relation (validated); shared by the handler and the seeder.
fn insert_relation(
    ctx: &mut Ctx<'_>,
    loc: &str,
    association: &Value,
    first: &str,
    second: &str,
) -> Result<Value, ApiError> {
    let assoc_id = str_of(association, "id").to_string();
    let (k1, k2) = (
        str_of(association, "firstObjectKey"),
        str_of(association, "secondObjectKey"),
    );
    for (key, rec) in [(k1, first), (k2, second)] {
        if !record_exists(ctx, loc, key, rec) {
            return Err(ApiError::bad_request(format!(
                "Record {rec} of {key} not found"
            )));
        }
    }
    if first == second && k1 == k2 {
        return Err(ApiError::bad_request(
            "A record cannot be related to itself",
        ));
    }
    let duplicate = ctx.children(RELATION, &assoc_id).iter().any(|r| {
        (str_of(r, "firstRecordId") == first && str_of(r, "secondRecordId") == second)
            || (k1 == k2
                && str_of(r, "firstRecordId") == second
                && str_of(r, "secondRecordId") == first)
    });
    if duplicate {
        return Err(ApiError::bad_request("Relation already exists"));
    }
    let id = new_id();
    let r = json!({
        "id": id,
        "associationId": assoc_id,
        "firstObjectKey": k1,
        "firstRecordId": first,
        "secondObjectKey": k2,
        "secondRecordId": second,
        "locationId": loc,
        "createdAt": iso(ctx.now_ms),
    });
    ctx.put(RELATION, &id, Some(loc), Some(&assoc_id), r.clone())?;
    ctx.emit("RelationCreate", loc, relation_event(&r));
    Ok(r)
}

fn relation_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&[
        "locationId",
        "associationId",
        "firstRecordId",
        "secondRecordId",
    ])?;
    let loc = location_scope(ctx, req)?;
    let association =
        association_by_id(ctx, req, req.field_str("associationId").unwrap_or_default())?;
    let r = insert_relation(
        ctx,
        &loc,
        &association,
        req.field_str("firstRecordId").unwrap_or_default(),
        req.field_str("secondRecordId").unwrap_or_default(),
    )?;
    created(r)
}

fn relations_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = location_scope(ctx, req)?;
    let record = req.path("recordId")?;
    let wanted: Vec<&str> = req
        .query_all("associationIds")
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let all: Vec<Arc<Value>> = ctx
        .list(RELATION, &loc)
        .into_iter()
        .filter(|r| str_of(r, "firstRecordId") == record || str_of(r, "secondRecordId") == record)
        .filter(|r| wanted.is_empty() || wanted.contains(&str_of(r, "associationId")))
        // A relation whose record was deleted is gone with it.
        .filter(|r| {
            record_exists(
                ctx,
                &loc,
                str_of(r, "firstObjectKey"),
                str_of(r, "firstRecordId"),
            ) && record_exists(
                ctx,
                &loc,
                str_of(r, "secondObjectKey"),
                str_of(r, "secondRecordId"),
            )
        })
        .collect();
    let (skip, limit) = skip_limit(req)?;
    let page: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(limit)
        .map(|r| (**r).clone())
        .collect();
    ok(json!({ "relations": page, "total": all.len(), "traceId": trace_id() }))
}

fn relation_delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = location_scope(ctx, req)?;
    let r = ctx.find(RELATION, req.path("relationId")?, "Relation", req)?;
    ctx.delete(RELATION, str_of(&r, "id"))?;
    ctx.emit("RelationDelete", &loc, relation_event(&r));
    ok((*r).clone())
}

/// Adds this area's demo data to the seeded location: a contact↔contact "referrals"
/// association with a few relations, and relations of the system contact↔opportunity
/// association for the seeded opportunities.
pub fn seed(ctx: &mut Ctx<'_>, seed: &mut Seed) -> Result<(), ApiError> {
    let first_event = ctx.events.len();
    let loc = seed.location_id.clone();
    let body = json!({
        "key": "referred_by",
        "firstObjectKey": "contact",
        "firstObjectLabel": "Referrer",
        "secondObjectKey": "contact",
        "secondObjectLabel": "Referral",
    });
    let a = insert_association(ctx, &loc, body.as_object().unwrap_or(&Map::new()))?;
    seed.ids
        .entry("association")
        .or_default()
        .push(str_of(&a, "id").to_string());
    let contacts: Vec<String> = seed.ids("contact").to_vec();
    for pair in contacts.chunks(2).take(8) {
        if let [a_id, b_id] = pair
            && let Ok(r) = insert_relation(ctx, &loc, &a, a_id, b_id)
        {
            seed.ids
                .entry("relation")
                .or_default()
                .push(str_of(&r, "id").to_string());
        }
    }
    if let Some(sys) = system_associations(&loc)
        .into_iter()
        .find(|s| str_of(s, "key") == "contact_opportunity")
    {
        let opportunities: Vec<String> = seed.ids("opportunity").iter().take(10).cloned().collect();
        for opp in opportunities {
            let contact = ctx.get(OPPORTUNITY, &opp).and_then(|d| {
                d.body
                    .get("contactId")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            if let Some(c) = contact
                && let Ok(r) = insert_relation(ctx, &loc, &sys, &c, &opp)
            {
                seed.ids
                    .entry("relation")
                    .or_default()
                    .push(str_of(&r, "id").to_string());
            }
        }
    }
    // Seeding is not a change anyone should be told about.
    ctx.events.truncate(first_event);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::Guard;
    use crate::handlers::testing::call;
    use crate::store::Docs;
    use parking_lot::RwLock;

    use crate::handlers::testing::{body, status};

    fn contacts(docs: &RwLock<Docs>, ids: &[&str]) {
        let mut ctx = Ctx::new(Guard::Write(docs.write()), 1_700_000_000_000);
        for id in ids {
            ctx.put(
                CONTACT,
                id,
                Some("loc1"),
                None,
                json!({ "id": id, "locationId": "loc1" }),
            )
            .expect("put");
        }
    }

    const Q: [(&str, &str); 1] = [("locationId", "loc1")];

    fn new_association() -> Value {
        json!({ "locationId": "loc1", "key": "mentor", "firstObjectKey": "contact",
                "firstObjectLabel": "Mentor", "secondObjectKey": "contact", "secondObjectLabel": "Mentee" })
    }

    #[test]
    fn association_crud() {
        let docs = RwLock::new(Docs::default());
        let (r, ev) = call(&docs, "associations.create", &[], &[], new_association());
        assert_eq!(status(&r), 201);
        assert_eq!(ev[0].kind, "AssociationCreate");
        let a = body(&r);
        assert_eq!(a["associationType"], "USER_DEFINED");
        let id = a["id"].as_str().unwrap_or_default().to_string();
        let (r, _) = call(&docs, "associations.create", &[], &[], new_association());
        assert_eq!(status(&r), 400, "key taken");
        let path = [("associationId", id.as_str())];
        let (r, _) = call(&docs, "associations.get", &path, &[], Value::Null);
        assert_eq!(body(&r)["key"], "mentor");
        let (r, ev) = call(
            &docs,
            "associations.update",
            &path,
            &[],
            json!({ "firstObjectLabel": "Coach", "secondObjectLabel": "Coachee" }),
        );
        assert_eq!(body(&r)["firstObjectLabel"], "Coach");
        assert_eq!(
            ev[0].payload["firstObjectToSecondObjectCardinality"],
            "MANY_TO_MANY"
        );
        let (r, _) = call(
            &docs,
            "associations.get_by_key",
            &[("key_name", "mentor")],
            &Q,
            Value::Null,
        );
        assert_eq!(body(&r)["secondObjectLabel"], "Coachee");
        let (r, _) = call(
            &docs,
            "associations.list",
            &[],
            &[("locationId", "loc1"), ("skip", "0"), ("limit", "10")],
            Value::Null,
        );
        let b = body(&r);
        assert_eq!(b["total"], 3, "two system associations and ours");
        assert_eq!(b["associations"][2]["id"], id.as_str());
        let (r, _) = call(
            &docs,
            "associations.get_by_object_key",
            &[("objectKey", "contact")],
            &Q,
            Value::Null,
        );
        assert_eq!(body(&r)["associationType"], "SYSTEM_DEFINED");
        let (r, ev) = call(&docs, "associations.delete", &path, &[], Value::Null);
        assert_eq!(
            body(&r),
            json!({ "deleted": true, "id": id, "message": "Association deleted successfully" })
        );
        assert_eq!(ev[0].kind, "AssociationDelete");
        let (r, _) = call(&docs, "associations.get", &path, &[], Value::Null);
        assert_eq!(status(&r), 404);
        let mut bad = new_association();
        bad["secondObjectKey"] = json!("custom_objects.nope");
        let (r, _) = call(&docs, "associations.create", &[], &[], bad);
        assert_eq!(status(&r), 400);
        let (r, _) = call(
            &docs,
            "associations.create",
            &[],
            &[],
            json!({ "locationId": "loc1" }),
        );
        assert_eq!(status(&r), 422);
    }

    #[test]
    fn system_associations_are_read_only() {
        let docs = RwLock::new(Docs::default());
        let (r, _) = call(
            &docs,
            "associations.get_by_key",
            &[("key_name", "contact_opportunity")],
            &Q,
            Value::Null,
        );
        let id = body(&r)["id"].as_str().unwrap_or_default().to_string();
        assert_eq!(id.len(), 20);
        let (r, _) = call(
            &docs,
            "associations.delete",
            &[("associationId", id.as_str())],
            &[],
            Value::Null,
        );
        assert_eq!(status(&r), 400);
    }

    #[test]
    fn relations_crud_and_cascade() {
        let docs = RwLock::new(Docs::default());
        contacts(&docs, &["c1", "c2", "c3"]);
        let (r, _) = call(&docs, "associations.create", &[], &[], new_association());
        let aid = body(&r)["id"].as_str().unwrap_or_default().to_string();
        let rel = |a: &str, b: &str| json!({ "locationId": "loc1", "associationId": aid, "firstRecordId": a, "secondRecordId": b });
        let (r, ev) = call(
            &docs,
            "associations.relations.create",
            &[],
            &[],
            rel("c1", "c2"),
        );
        assert_eq!(status(&r), 201);
        assert_eq!(ev[0].kind, "RelationCreate");
        assert_eq!(ev[0].payload["firstRecordId"], "c1");
        let rid = body(&r)["id"].as_str().unwrap_or_default().to_string();
        let (r, _) = call(
            &docs,
            "associations.relations.create",
            &[],
            &[],
            rel("c2", "c1"),
        );
        assert_eq!(status(&r), 400, "same pair");
        let (r, _) = call(
            &docs,
            "associations.relations.create",
            &[],
            &[],
            rel("c1", "missing"),
        );
        assert_eq!(status(&r), 400, "unknown record");
        call(
            &docs,
            "associations.relations.create",
            &[],
            &[],
            rel("c1", "c3"),
        )
        .0
        .expect("created");
        let lq = [("locationId", "loc1"), ("skip", "0"), ("limit", "1")];
        let (r, _) = call(
            &docs,
            "associations.relations.list",
            &[("recordId", "c1")],
            &lq,
            Value::Null,
        );
        let b = body(&r);
        assert_eq!(b["total"], 2);
        assert_eq!(b["relations"][0]["id"], rid.as_str());
        assert_eq!(b["relations"].as_array().map(Vec::len), Some(1));
        let (r, ev) = call(
            &docs,
            "associations.relations.delete",
            &[("relationId", rid.as_str())],
            &Q,
            Value::Null,
        );
        assert_eq!(body(&r)["id"], rid.as_str());
        assert_eq!(ev[0].kind, "RelationDelete");
        let (r, _) = call(
            &docs,
            "associations.relations.delete",
            &[("relationId", rid.as_str())],
            &Q,
            Value::Null,
        );
        assert_eq!(status(&r), 404);
        // Deleting the association removes its remaining relation.
        let (_, ev) = call(
            &docs,
            "associations.delete",
            &[("associationId", aid.as_str())],
            &[],
            Value::Null,
        );
        assert_eq!(ev.iter().filter(|e| e.kind == "RelationDelete").count(), 1);
        let (r, _) = call(
            &docs,
            "associations.relations.list",
            &[("recordId", "c1")],
            &Q,
            Value::Null,
        );
        assert_eq!(body(&r)["total"], 0);
    }
}
