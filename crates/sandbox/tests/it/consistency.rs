//! Consistency walks: for each resource with create/read/update/delete operations in the
//! table, create → read → update → read (the change is visible) → delete → read (404, or gone
//! from the list when the table has no single read). Requests are built like the conformance
//! test builds them (spec examples, seeded ids, the overrides of `tests/data/conformance.json`);
//! the table below only says which operations make up a walk and where the id and the changed
//! field are.

use std::collections::HashMap;

use hlbridge_highlevel::operations::{Operation, find};
use hlbridge_sandbox::SandboxConfig;
use hlbridge_sandbox::ratelimit::RateLimitConfig;
use serde_json::{Map, Value, json};

use crate::conformance::{
    Data, Exchange, Override, Specs, call_with, load_data, resolve_refs_in, unique,
};
use crate::harness::Env;

/// How a walk reads its resource back.
enum Read {
    /// A get operation; the resource is at `at` (a JSON pointer) in its answer; after the
    /// delete it answers 404.
    One { op: &'static str, at: &'static str },
    /// A list operation (the table has no get); the resource is the item of the array at `at`
    /// whose `id_field` is the id; after the delete it is not listed.
    List {
        op: &'static str,
        at: &'static str,
        id_field: &'static str,
    },
}

/// One resource's walk.
struct Walk {
    /// The operation that creates it.
    create: &'static str,
    /// Body fields set on create, over the conformance request (`$unique`, `$doc:` expand).
    create_body: Value,
    /// JSON pointer to the new id in the create answer.
    id_at: &'static str,
    /// The parameter that names the resource in read, update and delete (`body:id` for a body
    /// field).
    id_param: &'static str,
    /// Parameters every step needs (parents): a `$doc:` reference, or `@/pointer` into the
    /// create answer.
    fixed: &'static [(&'static str, &'static str)],
    read: Read,
    /// The update operation and the JSON pointer of the string field it changes, in the update
    /// body and in the resource read back.
    update: Option<(&'static str, &'static str)>,
    /// Fields of `create_body` the update sends again (where the update example would move the
    /// resource out of the read's reach, like the times of a blocked slot).
    keep: &'static [&'static str],
    /// The delete operation (none for blog posts: the table has none).
    delete: Option<&'static str>,
}

fn walks() -> Vec<Walk> {
    use Read::*;
    let none = json!({});
    vec![
        Walk {
            create: "contacts.create",
            create_body: json!({ "email": "walk-$unique@example.com", "phone": null }),
            id_at: "/contact/id",
            id_param: "contactId",
            fixed: &[],
            read: One {
                op: "contacts.get",
                at: "/contact",
            },
            update: Some(("contacts.update", "/firstName")),
            keep: &[],
            delete: Some("contacts.delete"),
        },
        Walk {
            create: "contacts.tasks.create",
            create_body: none.clone(),
            id_at: "/task/id",
            id_param: "taskId",
            fixed: &[("contactId", "$doc:contact")],
            read: One {
                op: "contacts.tasks.get",
                at: "/task",
            },
            update: Some(("contacts.tasks.update", "/title")),
            keep: &[],
            delete: Some("contacts.tasks.delete"),
        },
        Walk {
            create: "contacts.notes.create",
            create_body: none.clone(),
            id_at: "/note/id",
            id_param: "id",
            fixed: &[("contactId", "$doc:contact")],
            read: One {
                op: "contacts.notes.get",
                at: "/note",
            },
            update: Some(("contacts.notes.update", "/body")),
            keep: &[],
            delete: Some("contacts.notes.delete"),
        },
        Walk {
            create: "calendars.create",
            create_body: none.clone(),
            id_at: "/calendar/id",
            id_param: "calendarId",
            fixed: &[],
            read: One {
                op: "calendars.get",
                at: "/calendar",
            },
            update: Some(("calendars.update", "/name")),
            keep: &[],
            delete: Some("calendars.delete"),
        },
        Walk {
            create: "calendars.groups.create",
            create_body: none.clone(),
            id_at: "/group/id",
            id_param: "groupId",
            fixed: &[],
            read: List {
                op: "calendars.groups.list",
                at: "/groups",
                id_field: "id",
            },
            update: Some(("calendars.groups.update", "/name")),
            keep: &[],
            delete: Some("calendars.groups.delete"),
        },
        Walk {
            create: "calendars.appointments.create",
            create_body: json!({ "startTime": "$later_iso", "endTime": "$later_end_iso", "ignoreFreeSlotValidation": true }),
            id_at: "/id",
            id_param: "eventId",
            fixed: &[],
            read: One {
                op: "calendars.appointments.get",
                at: "/event",
            },
            update: Some(("calendars.appointments.update", "/title")),
            keep: &[],
            delete: Some("calendars.events.delete"),
        },
        Walk {
            create: "calendars.blocked_slots.create",
            create_body: json!({ "startTime": "$later_iso", "endTime": "$later_end_iso" }),
            id_at: "/id",
            id_param: "eventId",
            fixed: &[("calendarId", "$doc:calendar")],
            read: List {
                op: "calendars.blocked_slots.list",
                at: "/events",
                id_field: "id",
            },
            update: Some(("calendars.blocked_slots.update", "/title")),
            keep: &["startTime", "endTime"],
            delete: Some("calendars.events.delete"),
        },
        Walk {
            create: "calendars.notifications.create",
            create_body: none.clone(),
            id_at: "/0/_id",
            id_param: "notificationId",
            fixed: &[("calendarId", "$doc:calendar")],
            read: One {
                op: "calendars.notifications.get",
                at: "",
            },
            update: Some(("calendars.notifications.update", "/subject")),
            keep: &[],
            delete: Some("calendars.notifications.delete"),
        },
        Walk {
            create: "calendars.resources.create",
            create_body: none.clone(),
            id_at: "/id",
            id_param: "id",
            fixed: &[("resourceType", "equipments")],
            read: One {
                op: "calendars.resources.get",
                at: "",
            },
            update: Some(("calendars.resources.update", "/name")),
            keep: &[],
            delete: Some("calendars.resources.delete"),
        },
        Walk {
            create: "calendars.appointments.notes.create",
            create_body: none.clone(),
            id_at: "/note/id",
            id_param: "noteId",
            fixed: &[("appointmentId", "$doc:appointment")],
            read: List {
                op: "calendars.appointments.notes.list",
                at: "/notes",
                id_field: "id",
            },
            update: Some(("calendars.appointments.notes.update", "/body")),
            keep: &[],
            delete: Some("calendars.appointments.notes.delete"),
        },
        Walk {
            create: "opportunities.create",
            create_body: none.clone(),
            id_at: "/opportunity/id",
            id_param: "id",
            fixed: &[],
            read: One {
                op: "opportunities.get",
                at: "/opportunity",
            },
            update: Some(("opportunities.update", "/name")),
            keep: &[],
            delete: Some("opportunities.delete"),
        },
        Walk {
            create: "users.create",
            create_body: none.clone(),
            id_at: "/id",
            id_param: "userId",
            fixed: &[],
            read: One {
                op: "users.get",
                at: "",
            },
            update: Some(("users.update", "/firstName")),
            keep: &[],
            delete: Some("users.delete"),
        },
        Walk {
            create: "businesses.create",
            create_body: none.clone(),
            id_at: "/buiseness/id",
            id_param: "businessId",
            fixed: &[],
            read: One {
                op: "businesses.get",
                at: "/business",
            },
            update: Some(("businesses.update", "/name")),
            keep: &[],
            delete: Some("businesses.delete"),
        },
        Walk {
            create: "locations.tags.create",
            create_body: json!({ "name": "walk $unique" }),
            id_at: "/tag/id",
            id_param: "tagId",
            fixed: &[],
            read: One {
                op: "locations.tags.get",
                at: "/tag",
            },
            update: Some(("locations.tags.update", "/name")),
            keep: &[],
            delete: Some("locations.tags.delete"),
        },
        Walk {
            create: "locations.custom_fields.create",
            create_body: json!({ "name": "Walk $unique" }),
            id_at: "/customField/id",
            id_param: "id",
            fixed: &[],
            read: One {
                op: "locations.custom_fields.get",
                at: "/customField",
            },
            update: Some(("locations.custom_fields.update", "/name")),
            keep: &[],
            delete: Some("locations.custom_fields.delete"),
        },
        Walk {
            create: "locations.custom_values.create",
            create_body: json!({ "name": "Walk $unique" }),
            id_at: "/customValue/id",
            id_param: "id",
            fixed: &[],
            read: One {
                op: "locations.custom_values.get",
                at: "/customValue",
            },
            update: Some(("locations.custom_values.update", "/value")),
            keep: &[],
            delete: Some("locations.custom_values.delete"),
        },
        Walk {
            create: "objects.records.create",
            create_body: none.clone(),
            id_at: "/record/id",
            id_param: "id",
            fixed: &[],
            read: One {
                op: "objects.records.get",
                at: "/record",
            },
            update: Some(("objects.records.update", "/properties/name")),
            keep: &[],
            delete: Some("objects.records.delete"),
        },
        Walk {
            create: "associations.create",
            create_body: none.clone(),
            id_at: "/id",
            id_param: "associationId",
            fixed: &[],
            read: One {
                op: "associations.get",
                at: "",
            },
            update: Some(("associations.update", "/firstObjectLabel")),
            keep: &[],
            delete: Some("associations.delete"),
        },
        Walk {
            create: "associations.relations.create",
            create_body: json!({ "firstRecordId": "$doc:contact:last", "secondRecordId": "$doc:contact" }),
            id_at: "/id",
            id_param: "relationId",
            fixed: &[("recordId", "$doc:contact:last")],
            read: List {
                op: "associations.relations.list",
                at: "/relations",
                id_field: "id",
            },
            update: None,
            keep: &[],
            delete: Some("associations.relations.delete"),
        },
        Walk {
            create: "blogs.posts.create",
            create_body: none.clone(),
            id_at: "/data/_id",
            id_param: "postId",
            fixed: &[],
            read: List {
                op: "blogs.posts.list",
                at: "/blogs",
                id_field: "_id",
            },
            update: Some(("blogs.posts.update", "/title")),
            keep: &[],
            delete: None,
        },
        Walk {
            create: "invoices.create",
            create_body: json!({ "invoiceNumber": null }),
            id_at: "/_id",
            id_param: "invoiceId",
            fixed: &[],
            read: One {
                op: "invoices.get",
                at: "",
            },
            update: Some(("invoices.update", "/name")),
            keep: &[],
            delete: Some("invoices.delete"),
        },
        Walk {
            create: "payments.coupons.create",
            create_body: none.clone(),
            id_at: "/_id",
            id_param: "body:id",
            fixed: &[],
            read: List {
                op: "payments.coupons.list",
                at: "/data",
                id_field: "_id",
            },
            update: Some(("payments.coupons.update", "/name")),
            keep: &[],
            delete: Some("payments.coupons.delete"),
        },
        Walk {
            create: "products.create",
            create_body: json!({ "slug": "walk-$unique" }),
            id_at: "/_id",
            id_param: "productId",
            fixed: &[],
            read: One {
                op: "products.get",
                at: "",
            },
            update: Some(("products.update", "/name")),
            keep: &[],
            delete: Some("products.delete"),
        },
        Walk {
            create: "products.prices.create",
            create_body: none,
            id_at: "/_id",
            id_param: "priceId",
            fixed: &[("productId", "$doc:product")],
            read: One {
                op: "products.prices.get",
                at: "",
            },
            update: Some(("products.prices.update", "/name")),
            keep: &[],
            delete: Some("products.prices.delete"),
        },
    ]
}

/// Sets `value` at a JSON pointer in `body`, creating objects on the way.
fn set_at(body: &mut Map<String, Value>, pointer: &str, value: Value) {
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    let Some((last, path)) = parts.split_last() else {
        return;
    };
    let mut cur = body;
    for p in path {
        let next = cur.entry((*p).to_string()).or_insert_with(|| json!({}));
        if !next.is_object() {
            *next = json!({});
        }
        let Some(obj) = next.as_object_mut() else {
            return;
        };
        cur = obj;
    }
    cur.insert((*last).to_string(), value);
}

struct Walker<'a> {
    env: &'a Env,
    data: &'a Data,
    specs: &'a Specs,
}

impl Walker<'_> {
    /// Calls `op_id` with the conformance request, `extra` body fields over it, and `params`.
    async fn call(
        &self,
        op_id: &str,
        extra: &Map<String, Value>,
        params: &HashMap<String, String>,
    ) -> Result<Exchange, String> {
        let op: &'static Operation = find(op_id).ok_or_else(|| format!("unknown op {op_id}"))?;
        let mut ov: Override = self.data.request(op_id);
        let mut params = params.clone();
        if let Some(id) = params.remove("body:id") {
            ov.set_body("id", json!(id));
        }
        for (k, v) in extra {
            ov.set_body(k, v.clone());
        }
        call_with(self.env, self.data, self.specs, op, false, &ov, &params).await
    }

    /// Reads the resource: `Ok(Some(resource))`, `Ok(None)` when it is gone (404 or not
    /// listed), `Err` on anything else.
    async fn read(
        &self,
        read: &Read,
        id: &str,
        params: &HashMap<String, String>,
    ) -> Result<Option<Value>, String> {
        match read {
            Read::One { op, at } => {
                let x = self.call(op, &Map::new(), params).await?;
                match x.status {
                    404 => Ok(None),
                    200..=299 => x
                        .body
                        .pointer(at)
                        .cloned()
                        .map(Some)
                        .ok_or_else(|| format!("{op} answered without {at:?}: {}", x.body)),
                    s => Err(format!("{op} {} answered {s}: {}", x.path, x.body)),
                }
            }
            Read::List { op, at, id_field } => {
                let x = self.call(op, &Map::new(), params).await?;
                if !(200..300).contains(&x.status) {
                    return Err(format!("{op} {} answered {}: {}", x.path, x.status, x.body));
                }
                let items = x
                    .body
                    .pointer(at)
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("{op} answered without a list at {at:?}: {}", x.body))?;
                Ok(items
                    .iter()
                    .find(|i| i.get(*id_field).and_then(Value::as_str) == Some(id))
                    .cloned())
            }
        }
    }

    async fn walk(&self, w: &Walk) -> Result<(), String> {
        // Parents first, then create.
        let mut params: HashMap<String, String> = HashMap::new();
        for (name, v) in w.fixed.iter().filter(|(_, v)| !v.starts_with('@')) {
            let value = resolve_refs_in(&json!(v), self.env, &HashMap::new());
            let value = value
                .as_str()
                .ok_or_else(|| format!("{v} resolves to no document"))?;
            params.insert((*name).to_string(), value.to_string());
        }
        let mut extra = Map::new();
        for (k, v) in w.create_body.as_object().into_iter().flatten() {
            extra.insert(k.clone(), resolve_refs_in(v, self.env, &params));
        }
        let created = self.call(w.create, &extra, &params).await?;
        if !(200..300).contains(&created.status) {
            return Err(format!(
                "create {} answered {}: {} (sent {:?})",
                created.path, created.status, created.body, created.sent
            ));
        }
        let id = created
            .body
            .pointer(w.id_at)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("create answered no id at {}: {}", w.id_at, created.body))?
            .to_string();
        for (name, v) in w.fixed {
            if let Some(pointer) = v.strip_prefix('@') {
                let value = created
                    .body
                    .pointer(pointer)
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("create answered nothing at {pointer}"))?;
                params.insert((*name).to_string(), value.to_string());
            }
        }
        params.insert(w.id_param.to_string(), id.clone());

        // Read: the new resource is there, under its id.
        let read = self
            .read(&w.read, &id, &params)
            .await?
            .ok_or_else(|| format!("the created {id} cannot be read back"))?;
        let read_id = read
            .get("id")
            .or_else(|| read.get("_id"))
            .and_then(Value::as_str);
        if read_id.is_some_and(|r| r != id) {
            return Err(format!("reading {id} gave {read_id:?}"));
        }

        // Update one string field and read the change back.
        if let Some((op, field)) = w.update {
            let value = format!("walk {}", unique());
            let mut body: Map<String, Value> = extra
                .iter()
                .filter(|(k, _)| w.keep.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            set_at(&mut body, field, json!(value));
            let updated = self.call(op, &body, &params).await?;
            if !(200..300).contains(&updated.status) {
                return Err(format!(
                    "update {} answered {}: {} (sent {:?})",
                    updated.path, updated.status, updated.body, updated.sent
                ));
            }
            let after = self
                .read(&w.read, &id, &params)
                .await?
                .ok_or_else(|| format!("{id} is gone after the update"))?;
            let seen = after.pointer(field).and_then(Value::as_str);
            if seen.map(str::to_lowercase) != Some(value.to_lowercase()) {
                return Err(format!(
                    "after {op} set {field} to {value:?}, the read gives {seen:?}"
                ));
            }
        }

        // Delete, and the resource is gone.
        if let Some(op) = w.delete {
            let deleted = self.call(op, &Map::new(), &params).await?;
            if !(200..300).contains(&deleted.status) {
                return Err(format!(
                    "delete {} answered {}: {}",
                    deleted.path, deleted.status, deleted.body
                ));
            }
            if let Some(still) = self.read(&w.read, &id, &params).await? {
                return Err(format!("{id} can still be read after {op}: {still}"));
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn every_resource_walks_create_read_update_read_delete() {
    let mut config = SandboxConfig::for_tests();
    config.seed_demo = true;
    config.rate_limit = RateLimitConfig {
        enabled: false,
        ..RateLimitConfig::default()
    };
    let env = Env::start(config).await;
    let data = load_data();
    let specs = Specs::load();
    let walker = Walker {
        env: &env,
        data: &data,
        specs: &specs,
    };
    let walks = walks();
    let mut failures = Vec::new();
    for w in &walks {
        if let Err(e) = walker.walk(w).await {
            failures.push(format!("{}: {e}", w.create));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} walks failed:\n{}",
        failures.len(),
        walks.len(),
        failures.join("\n")
    );
}
