//! `--seed demo`: a realistic location to try flows against — a few hundred contacts with
//! custom fields and tags, tasks and notes, users, calendars with appointments, a pipeline with
//! opportunities, conversations, a business, and the data of every other area.
//!
//! Deterministic: two sandboxes seeded the same way hold the same names, tags and values.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::handlers::contacts::{CONTACT, NOTE, TASK, normalize_phone};
use crate::handlers::{self, Ctx, Seed, iso, new_id};

const FIRST: &[&str] = &[
    "Ava", "Liam", "Olivia", "Noah", "Emma", "Oliver", "Sophia", "Elijah", "Isabella", "Lucas",
    "Mia", "Mateo", "Amelia", "Levi", "Harper", "Ethan", "Evelyn", "James", "Luna", "Aiden",
];
const LAST: &[&str] = &[
    "Garcia", "Smith", "Johnson", "Brown", "Jones", "Miller", "Davis", "Lopez", "Wilson", "Moore",
    "Taylor", "Clark", "Lewis", "Walker", "Hall", "Young", "King", "Wright", "Scott", "Green",
];
const TAGS: &[&str] = &[
    "newsletter",
    "customer",
    "lead",
    "vip",
    "webinar",
    "trial",
    "churn-risk",
    "partner",
];
const SOURCES: &[&str] = &[
    "public api",
    "website form",
    "facebook",
    "import",
    "ecosend",
];
const TASK_TITLES: &[&str] = &[
    "Call back",
    "Send proposal",
    "Follow up on demo",
    "Renewal check-in",
    "Collect feedback",
];
const NOTES: &[&str] = &[
    "Interested in the annual plan.",
    "Asked for a callback next week.",
    "Opened the last three newsletters.",
    "Prefers email over phone.",
    "Referred by a partner agency.",
];

/// Number of demo contacts.
pub const DEMO_CONTACTS: usize = 300;

/// Seeds the demo location.
pub fn demo(ctx: &mut Ctx<'_>, location_id: &str, company_id: &str) -> Result<(), ApiError> {
    let mut seed = Seed {
        location_id: location_id.to_string(),
        company_id: company_id.to_string(),
        now_ms: ctx.now_ms,
        rng: rand::rngs::StdRng::seed_from_u64(0x6869_6768_6c65_7665),
        ids: HashMap::new(),
    };
    handlers::locations::seed(ctx, &mut seed)?;
    handlers::users::seed(ctx, &mut seed)?;
    contacts(ctx, &mut seed)?;
    handlers::businesses::seed(ctx, &mut seed)?;
    handlers::calendars::seed(ctx, &mut seed)?;
    handlers::opportunities::seed(ctx, &mut seed)?;
    handlers::conversations::seed(ctx, &mut seed)?;
    handlers::workflows::seed(ctx, &mut seed)?;
    handlers::objects::seed(ctx, &mut seed)?;
    handlers::associations::seed(ctx, &mut seed)?;
    handlers::blogs::seed(ctx, &mut seed)?;
    handlers::forms::seed(ctx, &mut seed)?;
    handlers::invoices::seed(ctx, &mut seed)?;
    handlers::payments::seed(ctx, &mut seed)?;
    handlers::products::seed(ctx, &mut seed)?;
    Ok(())
}

fn custom_value(seed: &mut Seed, field: &Value) -> Option<Value> {
    let kind = field["dataType"].as_str().unwrap_or("TEXT");
    Some(match kind {
        "MONETORY" | "NUMERICAL" => json!(seed.rng.random_range(10..5000)),
        "CHECKBOX" => json!([field["picklistOptions"]
            .get(0)
            .cloned()
            .unwrap_or(json!("yes"))]),
        "DATE" => json!(iso(
            seed.now_ms - seed.rng.random_range(0..(365 * 86_400_000i64))
        )),
        "SINGLE_OPTIONS" | "RADIO" => {
            let opts = field["picklistOptions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if opts.is_empty() {
                return None;
            }
            let i = seed.rng.random_range(0..opts.len());
            opts[i].clone()
        }
        _ => json!(["teal", "amber", "violet", "crimson"][seed.rng.random_range(0..4)]),
    })
}

fn contacts(ctx: &mut Ctx<'_>, seed: &mut Seed) -> Result<(), ApiError> {
    let loc = seed.location_id.clone();
    let fields: Vec<Value> = seed
        .ids("custom_field")
        .to_vec()
        .iter()
        .filter_map(|id| ctx.get("custom_field", id).map(|d| (*d.body).clone()))
        .collect();
    for i in 0..DEMO_CONTACTS {
        let first = FIRST[i % FIRST.len()];
        let last = LAST[(i / FIRST.len() + i) % LAST.len()];
        let id = new_id();
        let added = seed.now_ms - (DEMO_CONTACTS - i) as i64 * 3_600_000;
        let mut tags: Vec<&str> = Vec::new();
        for t in TAGS {
            if seed.rng.random_bool(0.25) {
                tags.push(t);
            }
        }
        let mut custom: Vec<Value> = Vec::new();
        for f in &fields {
            if seed.rng.random_bool(0.7)
                && let Some(v) = custom_value(seed, f)
            {
                custom.push(json!({ "id": f["id"], "value": v }));
            }
        }
        let email = format!(
            "{}.{}{}@example.com",
            first.to_lowercase(),
            last.to_lowercase(),
            i
        );
        let phone = normalize_phone(&format!("+1512555{:04}", i));
        let assigned = seed.pick("user");
        let c = json!({
            "id": id, "locationId": loc,
            "firstName": first, "lastName": last, "contactName": format!("{first} {last}"),
            "firstNameLowerCase": first.to_lowercase(), "lastNameLowerCase": last.to_lowercase(),
            "fullNameLowerCase": format!("{} {}", first.to_lowercase(), last.to_lowercase()),
            "email": email, "emailLowerCase": email, "phone": phone,
            "companyName": if i % 4 == 0 { json!("Acme Corp") } else { Value::Null },
            "address1": format!("{} Main St", 100 + i), "city": "Austin", "state": "TX", "country": "US", "postalCode": "78701",
            "timezone": "America/Chicago", "website": Value::Null,
            "dnd": i % 17 == 0, "dndSettings": {}, "type": if i % 3 == 0 { "customer" } else { "lead" },
            "source": SOURCES[i % SOURCES.len()], "assignedTo": assigned,
            "tags": tags, "customFields": custom, "followers": [], "additionalEmails": [],
            "dateAdded": iso(added), "dateUpdated": iso(added + 60_000), "deleted": false,
        });
        ctx.put(CONTACT, &id, Some(&loc), None, c)?;
        if i % 3 == 0 {
            let tid = new_id();
            let due = seed.now_ms + seed.rng.random_range(-5i64..10) * 86_400_000;
            let task = json!({
                "id": tid, "title": TASK_TITLES[i % TASK_TITLES.len()], "body": format!("For {first} {last}"),
                "assignedTo": seed.pick("user"), "dueDate": iso(due), "completed": due < seed.now_ms && i % 2 == 0,
                "contactId": id, "dateAdded": iso(added),
            });
            ctx.put(TASK, &tid, Some(&loc), Some(&id), task)?;
        }
        if i % 4 == 0 {
            let nid = new_id();
            let note = json!({
                "id": nid, "body": NOTES[i % NOTES.len()], "userId": seed.pick("user"), "title": Value::Null,
                "color": Value::Null, "pinned": false, "dateAdded": iso(added + 120_000), "contactId": id,
            });
            ctx.put(NOTE, &nid, Some(&loc), Some(&id), note)?;
        }
        seed.ids.entry("contact").or_default().push(id);
    }
    Ok(())
}
