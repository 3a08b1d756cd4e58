//! Workflows, campaigns and snapshots: the read-only lists of what a location (or, for
//! snapshots, an agency) has built in HighLevel's UI. The API cannot create them, so the data
//! comes from `--seed demo`. Contact enrolment (in the contacts module) checks that documents
//! of kinds [`WORKFLOW`] and [`CAMPAIGN`] exist in the location.

use std::collections::HashMap;

use rand::Rng;
use serde_json::{Value, json};

use super::{Ctx, HResult, Handler, Req, Seed, forbidden_location, iso, ok};
use crate::error::ApiError;

/// A workflow of a location.
pub const WORKFLOW: &str = "workflow";
/// A campaign of a location.
pub const CAMPAIGN: &str = "campaign";
/// A snapshot of an agency (no location; parent = company id).
pub const SNAPSHOT: &str = "snapshot";

/// Registers the handlers of this module.
pub fn register(map: &mut HashMap<&'static str, Handler>) {
    map.insert("workflows.list", workflows);
    map.insert("campaigns.list", campaigns);
    map.insert("snapshots.list", snapshots);
}

/// The `locationId` query parameter (422 when missing), which the token must own.
fn location(req: &Req) -> Result<&str, ApiError> {
    let loc = req
        .query("locationId")
        .filter(|l| !l.is_empty())
        .ok_or_else(|| ApiError::unprocessable(vec!["locationId should not be empty".into()]))?;
    if req.caller.location_id.as_deref().is_some_and(|l| l != loc) {
        return Err(forbidden_location());
    }
    Ok(loc)
}

fn workflows(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = location(req)?;
    let list: Vec<Value> = ctx
        .list(WORKFLOW, loc)
        .iter()
        .map(|w| (**w).clone())
        .collect();
    ok(json!({ "workflows": list }))
}

/// `GET /campaigns/`, optionally filtered by `status` (`draft`, `published`, …).
fn campaigns(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = location(req)?;
    let status = req.query("status").filter(|s| !s.is_empty());
    let list: Vec<Value> = ctx
        .list(CAMPAIGN, loc)
        .iter()
        .filter(|c| status.is_none_or(|s| c.get("status").and_then(Value::as_str) == Some(s)))
        .map(|c| (**c).clone())
        .collect();
    ok(json!({ "campaigns": list }))
}

/// `GET /snapshots/?companyId=` (agency tokens): the agency's own and imported snapshots.
fn snapshots(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let company = req
        .query("companyId")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::unprocessable(vec!["companyId should not be empty".into()]))?;
    if req
        .caller
        .company_id
        .as_deref()
        .is_some_and(|c| c != company)
    {
        return Err(ApiError::forbidden(
            "The token does not have access to this company.",
        ));
    }
    let list: Vec<Value> = ctx
        .children(SNAPSHOT, company)
        .iter()
        .map(|s| {
            let mut s = (**s).clone();
            if let Some(obj) = s.as_object_mut() {
                obj.remove("companyId");
            }
            s
        })
        .collect();
    ok(json!({ "snapshots": list }))
}

fn seed_id(seed: &mut Seed) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..20)
        .map(|_| ALPHABET[seed.rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Adds three workflows and two campaigns to the demo location and one snapshot to its agency.
pub fn seed(ctx: &mut Ctx<'_>, seed: &mut Seed) -> Result<(), ApiError> {
    let location_id = seed.location_id.clone();
    let company_id = seed.company_id.clone();
    for (i, (name, status, version)) in [
        ("New Lead Nurture", "published", 4),
        ("Appointment Reminders", "published", 2),
        ("Win-back Campaign", "draft", 1),
    ]
    .iter()
    .enumerate()
    {
        // Workflow ids are UUIDs in HighLevel.
        let bytes: [u8; 16] = seed.rng.random();
        let id = uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string();
        let created = seed.now_ms - (120 - 25 * i as i64) * 86_400_000;
        ctx.put(
            WORKFLOW,
            &id,
            Some(&location_id),
            None,
            json!({
                "id": id,
                "name": name,
                "status": status,
                "version": version,
                "createdAt": iso(created),
                "updatedAt": iso(created + i64::from(*version) * 86_400_000),
                "locationId": location_id,
            }),
        )?;
        seed.ids.entry("workflow").or_default().push(id);
    }
    for (name, status) in [
        ("Spring Promotion Drip", "published"),
        ("Review Requests", "draft"),
    ] {
        let id = seed_id(seed);
        ctx.put(
            CAMPAIGN,
            &id,
            Some(&location_id),
            None,
            json!({ "id": id, "name": name, "status": status, "locationId": location_id }),
        )?;
        seed.ids.entry("campaign").or_default().push(id);
    }
    let id = seed_id(seed);
    ctx.put(
        SNAPSHOT,
        &id,
        None,
        Some(&company_id),
        json!({ "id": id, "name": "Home Services Starter Snapshot", "type": "own", "companyId": company_id }),
    )?;
    seed.ids.entry("snapshot").or_default().push(id);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::handlers::testing::call;
    use crate::store::Docs;
    use parking_lot::RwLock;
    use rand::SeedableRng;

    fn seeded() -> RwLock<Docs> {
        let docs = RwLock::new(Docs::default());
        let mut seed = Seed {
            location_id: "loc1".into(),
            company_id: "company1".into(),
            now_ms: 1_700_000_000_000,
            rng: rand::rngs::StdRng::seed_from_u64(1),
            ids: HashMap::new(),
        };
        let mut ctx = Ctx::new(crate::handlers::Guard::Write(docs.write()), seed.now_ms);
        super::seed(&mut ctx, &mut seed).unwrap();
        drop(ctx);
        docs
    }

    #[test]
    fn lists() {
        let docs = seeded();
        let (r, _) = call(
            &docs,
            "workflows.list",
            &[],
            &[("locationId", "loc1")],
            Value::Null,
        );
        let w = r.unwrap().body;
        assert_eq!(w["workflows"].as_array().unwrap().len(), 3);
        assert_eq!(w["workflows"][0]["locationId"], "loc1");
        let (r, _) = call(
            &docs,
            "campaigns.list",
            &[],
            &[("locationId", "loc1")],
            Value::Null,
        );
        assert_eq!(r.unwrap().body["campaigns"].as_array().unwrap().len(), 2);
        let (r, _) = call(
            &docs,
            "campaigns.list",
            &[],
            &[("locationId", "loc1"), ("status", "draft")],
            Value::Null,
        );
        let c = r.unwrap().body;
        assert_eq!(c["campaigns"].as_array().unwrap().len(), 1);
        assert_eq!(c["campaigns"][0]["name"], "Review Requests");
        let (r, _) = call(
            &docs,
            "snapshots.list",
            &[],
            &[("companyId", "company1")],
            Value::Null,
        );
        let s = r.unwrap().body;
        assert_eq!(s["snapshots"][0]["type"], "own");
        let (r, _) = call(
            &docs,
            "snapshots.list",
            &[],
            &[("companyId", "other")],
            Value::Null,
        );
        assert_eq!(r.unwrap_err().status, 403);
        let (r, _) = call(
            &docs,
            "workflows.list",
            &[],
            &[("locationId", "loc2")],
            Value::Null,
        );
        assert_eq!(r.unwrap_err().status, 403);
        let (r, _) = call(&docs, "workflows.list", &[], &[], Value::Null);
        assert_eq!(r.unwrap_err().status, 422);
    }

    #[test]
    fn enrolment_sees_seeded_workflows() {
        let docs = seeded();
        let (r, _) = call(
            &docs,
            "contacts.create",
            &[],
            &[],
            json!({ "locationId": "loc1", "firstName": "Ada" }),
        );
        let cid = r.unwrap().body["contact"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let wid = docs
            .read()
            .iter(WORKFLOW)
            .map(|(id, _)| id.clone())
            .next()
            .unwrap();
        let (r, _) = call(
            &docs,
            "contacts.workflows.add",
            &[("contactId", &cid), ("workflowId", &wid)],
            &[],
            json!({}),
        );
        assert_eq!(r.unwrap().status, 201);
    }
}
