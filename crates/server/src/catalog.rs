//! What the pickers offer: operations of the table with their parameters (searchable, by
//! category), the trigger kinds, HighLevel webhook event types with sample payloads, and
//! the fields of a sample event as template paths (`event.contact.email`).

use hlbridge_engine::flow::Step;
use hlbridge_highlevel::operations::{Category, Kind, OPERATIONS, Operation, ParamIn};
use serde::Serialize;
use serde_json::{Value, json};

/// A parameter of an operation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ParamInfo {
    /// Name (as mapped in a step's `params`).
    pub name: String,
    /// `path`, `query` or `body`.
    pub location: String,
    /// Whether it must be given (`locationId` is filled by the engine).
    pub required: bool,
}

/// An operation as the pickers list it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OperationInfo {
    /// Operation id (`contacts.tags.add`).
    pub id: String,
    /// Name.
    pub name: String,
    /// Category slug.
    pub category: String,
    /// Category label.
    pub category_label: String,
    /// `trigger` (a list usable by a polling trigger) or `action`.
    pub kind: String,
    /// HTTP method and path.
    pub method: String,
    /// Path template.
    pub path: String,
    /// OAuth scope needed.
    pub scope: String,
    /// What it does.
    pub description: String,
    /// Parameters.
    pub params: Vec<ParamInfo>,
}

impl OperationInfo {
    /// The picker entry of an operation.
    pub fn of(op: &Operation) -> OperationInfo {
        OperationInfo {
            id: op.id.to_owned(),
            name: op.name.to_owned(),
            category: op.category.slug().to_owned(),
            category_label: op.category.label().to_owned(),
            kind: op.kind.as_str().to_owned(),
            method: op.method.as_str().to_owned(),
            path: op.path.to_owned(),
            scope: op.scope.to_owned(),
            description: op.description.to_owned(),
            params: op
                .params
                .iter()
                .map(|p| ParamInfo {
                    name: p.name.to_owned(),
                    location: match p.location {
                        ParamIn::Path => "path",
                        ParamIn::Query => "query",
                        ParamIn::Body => "body",
                    }
                    .to_owned(),
                    required: p.required && p.name != "locationId",
                })
                .collect(),
        }
    }
}

/// Operations matching a search (`q` in id, name or description, any case), a category
/// (slug or label) and a kind, in catalog order.
pub fn search(
    q: Option<&str>,
    category: Option<&str>,
    kind: Option<&str>,
) -> Vec<&'static Operation> {
    let q = q
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_lowercase);
    let category = category.filter(|c| !c.is_empty()).and_then(Category::parse);
    let kind = kind.filter(|k| !k.is_empty());
    OPERATIONS
        .iter()
        .filter(|op| !op.deprecated)
        .filter(|op| category.is_none_or(|c| op.category == c))
        .filter(|op| {
            kind.is_none_or(|k| match k {
                "trigger" => op.kind == Kind::Trigger,
                "action" => op.kind == Kind::Action,
                _ => true,
            })
        })
        .filter(|op| {
            q.as_deref().is_none_or(|q| {
                q.split_whitespace().all(|w| {
                    op.id.to_lowercase().contains(w)
                        || op.name.to_lowercase().contains(w)
                        || op.description.to_lowercase().contains(w)
                })
            })
        })
        .collect()
}

/// A trigger kind.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TriggerKind {
    /// `type` in flow files.
    pub kind: String,
    /// Label.
    pub label: String,
    /// What starts a run.
    pub description: String,
}

/// The four trigger kinds.
pub fn trigger_kinds() -> Vec<TriggerKind> {
    [
        (
            "app_webhook",
            "App event (webhook)",
            "Another app POSTs its event to /hooks/app/<flow id>, signed with a shared secret.",
        ),
        (
            "highlevel_webhook",
            "HighLevel event (webhook)",
            "HighLevel sends a signed webhook (ContactCreate, TaskCompleted, …); a backfill poll can catch missed ones.",
        ),
        (
            "highlevel_poll",
            "HighLevel poll",
            "A HighLevel list operation is polled every 1–15 minutes; new or updated items start runs.",
        ),
        (
            "schedule",
            "Schedule",
            "A cron schedule (e.g. every hour) starts a run.",
        ),
    ]
    .into_iter()
    .map(|(k, l, d)| TriggerKind {
        kind: k.into(),
        label: l.into(),
        description: d.into(),
    })
    .collect()
}

/// HighLevel webhook event types the pickers offer, each with a sample payload.
pub fn webhook_events() -> Vec<(&'static str, Value)> {
    let contact = json!({
        "id": "cnt_123", "locationId": "loc_1", "email": "ada@example.com", "phone": "+15551230000",
        "firstName": "Ada", "lastName": "Lovelace", "tags": ["newsletter"], "city": "London",
        "companyName": "Analytical Engines", "dateAdded": "2025-01-01T10:00:00.000Z",
        "dateUpdated": "2025-01-02T10:00:00.000Z", "customFields": []
    });
    let task = json!({
        "id": "tsk_1", "contactId": "cnt_123", "locationId": "loc_1", "title": "Call back",
        "body": "About the annual plan", "dueDate": "2025-01-03T10:00:00.000Z", "completed": false,
        "assignedTo": "usr_1", "dateAdded": "2025-01-01T10:00:00.000Z"
    });
    let mut done_task = task.clone();
    done_task["completed"] = json!(true);
    let note = json!({
        "id": "not_1", "contactId": "cnt_123", "locationId": "loc_1",
        "body": "Called: wants the annual plan.", "dateAdded": "2025-01-01T10:00:00.000Z"
    });
    let appointment = json!({
        "appointment": { "id": "apt_1", "calendarId": "cal_1", "contactId": "cnt_123",
        "locationId": "loc_1", "title": "Demo", "appointmentStatus": "confirmed",
        "startTime": "2025-01-05T15:00:00+00:00", "endTime": "2025-01-05T15:30:00+00:00" },
        "locationId": "loc_1"
    });
    let opportunity = json!({
        "id": "opp_1", "locationId": "loc_1", "contactId": "cnt_123", "name": "Annual plan",
        "pipelineId": "pip_1", "pipelineStageId": "stg_1", "status": "open", "monetaryValue": 1200
    });
    let with = |kind: &str, v: &Value| {
        let mut v = v.clone();
        if let Value::Object(m) = &mut v {
            m.insert("type".into(), json!(kind));
        }
        v
    };
    vec![
        ("ContactCreate", with("ContactCreate", &contact)),
        ("ContactUpdate", with("ContactUpdate", &contact)),
        ("ContactDelete", with("ContactDelete", &contact)),
        ("ContactTagUpdate", with("ContactTagUpdate", &contact)),
        ("ContactDndUpdate", with("ContactDndUpdate", &contact)),
        ("TaskCreate", with("TaskCreate", &task)),
        ("TaskComplete", with("TaskComplete", &done_task)),
        ("TaskDelete", with("TaskDelete", &task)),
        ("NoteCreate", with("NoteCreate", &note)),
        ("NoteUpdate", with("NoteUpdate", &note)),
        ("NoteDelete", with("NoteDelete", &note)),
        ("AppointmentCreate", with("AppointmentCreate", &appointment)),
        ("AppointmentUpdate", with("AppointmentUpdate", &appointment)),
        ("AppointmentDelete", with("AppointmentDelete", &appointment)),
        ("OpportunityCreate", with("OpportunityCreate", &opportunity)),
        (
            "OpportunityStageUpdate",
            with("OpportunityStageUpdate", &opportunity),
        ),
        (
            "OpportunityStatusUpdate",
            with("OpportunityStatusUpdate", &opportunity),
        ),
        ("OpportunityDelete", with("OpportunityDelete", &opportunity)),
    ]
}

/// The sample event of a HighLevel webhook event type.
pub fn webhook_sample(kind: &str) -> Option<Value> {
    webhook_events()
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v)
}

/// Every leaf (and object) of `value` as a template path under `root`, with the value
/// as text: `("event.contact.email", "ada@example.com")`. Arrays are listed as a whole
/// and by their first element (`event.tags[0]`). At most 200 paths.
pub fn fields(root: &str, value: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk(root, value, &mut out, 0);
    out.truncate(200);
    out
}

fn walk(path: &str, v: &Value, out: &mut Vec<(String, String)>, depth: usize) {
    if depth > 6 || out.len() > 200 {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let ident = k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !k.starts_with(|c: char| c.is_ascii_digit());
                let p = if ident {
                    format!("{path}.{k}")
                } else {
                    format!("{path}[{}]", serde_json::to_string(k).unwrap_or_default())
                };
                walk(&p, x, out, depth + 1);
            }
        }
        Value::Array(a) => {
            out.push((path.to_owned(), short(v)));
            if let Some(first) = a.first()
                && first.is_object()
            {
                walk(&format!("{path}[0]"), first, out, depth + 1);
            }
        }
        other => out.push((path.to_owned(), short(other))),
    }
}

fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > 60 {
        let mut t: String = s.chars().take(57).collect();
        t.push('…');
        t
    } else {
        s
    }
}

/// One line per step (`find_contact contact`, `highlevel add_tag: contacts.tags.add`),
/// nested steps indented.
pub fn step_summaries(steps: &[Step]) -> Vec<String> {
    let mut out = Vec::new();
    summarize(steps, 0, &mut out);
    out
}

fn summarize(steps: &[Step], depth: usize, out: &mut Vec<String>) {
    for s in steps {
        let pad = "  ".repeat(depth);
        let what = match s {
            Step::Highlevel(h) => format!("HighLevel {}", h.operation),
            Step::Http(h) => format!("HTTP {} {}", h.method.as_str(), h.url),
            Step::FindContact(_) => "find contact".to_owned(),
            Step::Filter(f) => format!("filter {}", f.condition),
            Step::ForEach(f) => format!("for each of {}", f.items),
        };
        out.push(format!("{pad}{}: {what}", s.id()));
        if let Step::ForEach(f) = s {
            summarize(&f.steps, depth + 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_and_fields() {
        let tags = search(Some("tags add"), Some("contacts"), Some("action"));
        assert!(
            tags.iter().any(|o| o.id == "contacts.tags.add"),
            "{:?}",
            tags.iter().map(|o| o.id).collect::<Vec<_>>()
        );
        assert!(
            search(None, None, Some("trigger"))
                .iter()
                .all(|o| o.kind == Kind::Trigger)
        );
        let f = fields(
            "event",
            &json!({"email": "a@b", "contact": {"tags": [{"n": 1}]}, "odd key": 1}),
        );
        let paths: Vec<&str> = f.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "event.email",
                "event.contact.tags",
                "event.contact.tags[0].n",
                "event[\"odd key\"]"
            ]
        );
        assert!(webhook_sample("TaskComplete").is_some_and(|t| t["completed"] == json!(true)));
        let info = OperationInfo::of(
            hlbridge_highlevel::operations::find("contacts.tags.add").expect("op"),
        );
        assert!(
            info.params
                .iter()
                .any(|p| p.name == "contactId" && p.required)
        );
    }
}
