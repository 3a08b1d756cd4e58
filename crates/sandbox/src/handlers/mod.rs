//! Operation handlers: one function per operation of the table, grouped by area.
//!
//! A handler is synchronous: it reads and changes the in-memory documents through [`Ctx`],
//! records the webhook events the change causes, and returns the JSON answer. The dispatcher
//! (`http.rs`) does everything around it: auth, scopes, `Version`, rate limits, faults,
//! persisting the writes and sending the webhooks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::LazyLock;

use hlbridge_highlevel::operations::{OPERATIONS, Operation};
use parking_lot::{RwLockReadGuard, RwLockWriteGuard};
use rand::Rng;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::store::{Doc, Docs, Write};

pub mod associations;
pub mod blogs;
pub mod businesses;
pub mod calendars;
pub mod contacts;
pub mod conversations;
pub mod forms;
pub mod invoices;
pub mod locations;
pub mod objects;
pub mod opportunities;
pub mod payments;
pub mod products;
pub mod users;
pub mod workflows;

/// The answer of a handler.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status (200 unless the operation creates something).
    pub status: u16,
    /// JSON body.
    pub body: Value,
    /// A non-JSON body (content type, bytes) that replaces `body`, for file downloads.
    pub raw: Option<(&'static str, Vec<u8>)>,
}

/// Result of a handler.
pub type HResult = Result<Reply, ApiError>;

/// 200 with `body`.
pub fn ok(body: Value) -> HResult {
    Ok(Reply {
        status: 200,
        body,
        raw: None,
    })
}

/// 200 with a file body (recordings, downloads).
pub fn binary(content_type: &'static str, bytes: Vec<u8>) -> HResult {
    Ok(Reply {
        status: 200,
        body: Value::Null,
        raw: Some((content_type, bytes)),
    })
}

/// 201 with `body`.
pub fn created(body: Value) -> HResult {
    Ok(Reply {
        status: 201,
        body,
        raw: None,
    })
}

/// A handler function.
pub type Handler = fn(&mut Ctx<'_>, &Req) -> HResult;

/// Who is calling: what the bearer token grants.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The location the token belongs to (location tokens and PITs).
    pub location_id: Option<String>,
    /// The company (agency) of the token.
    pub company_id: Option<String>,
    /// `Location` or `Company`.
    pub user_type: UserType,
    /// The app (OAuth client id) or integration the token belongs to; rate limits are per app.
    pub app_id: String,
}

/// Whether a token acts for a location or an agency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserType {
    /// A sub-account token.
    Location,
    /// An agency token.
    Company,
}

/// One request to an operation, already routed.
#[derive(Debug)]
pub struct Req {
    /// The operation.
    pub op: &'static Operation,
    /// Path parameters by name.
    pub path: HashMap<String, String>,
    /// Query parameters in order (repeated keys kept).
    pub query: Vec<(String, String)>,
    /// JSON body (`Null` without one).
    pub body: Value,
    /// The caller.
    pub caller: Caller,
    /// Request time, epoch milliseconds.
    pub now_ms: i64,
}

impl Req {
    /// A path parameter.
    pub fn path(&self, name: &str) -> Result<&str, ApiError> {
        self.path
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| ApiError::bad_request(format!("{name} is required")))
    }

    /// The first value of a query parameter.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a query parameter (`a=1&a=2`, `a[]=1`).
    pub fn query_all(&self, name: &str) -> Vec<&str> {
        let bracket = format!("{name}[]");
        self.query
            .iter()
            .filter(|(k, _)| k == name || *k == bracket)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A query parameter parsed as an integer, with a default and bounds.
    pub fn query_usize(&self, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.query(name) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .map(|n| n.min(max))
                .map_err(|_| ApiError::unprocessable(vec![format!("{name} must be a number")])),
        }
    }

    /// A field of the JSON body.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.body.get(name).filter(|v| !v.is_null())
    }

    /// A string field of the JSON body.
    pub fn field_str(&self, name: &str) -> Option<&str> {
        self.field(name).and_then(Value::as_str)
    }

    /// The body as an object (empty when there is none).
    pub fn body_object(&self) -> Map<String, Value> {
        self.body.as_object().cloned().unwrap_or_default()
    }

    /// The location the request acts on: `locationId` (or `location_id`) from path, query or
    /// body, else the token's own location.
    pub fn location_id(&self) -> Result<String, ApiError> {
        let explicit = self
            .path
            .get("locationId")
            .map(String::as_str)
            .or_else(|| self.query("locationId"))
            .or_else(|| self.query("location_id"))
            .or_else(|| self.field_str("locationId"))
            .or_else(|| {
                self.field_str("altId")
                    .filter(|_| self.field_str("altType") == Some("location"))
            })
            .or_else(|| {
                self.query("altId")
                    .filter(|_| self.query("altType") == Some("location"))
            });
        match (explicit, &self.caller.location_id) {
            (Some(l), _) => Ok(l.to_string()),
            (None, Some(l)) => Ok(l.clone()),
            (None, None) => Err(ApiError::unprocessable(vec![
                "locationId should not be empty".into(),
            ])),
        }
    }

    /// Fails with 422 naming every required body field that is missing or empty.
    pub fn require_fields(&self, names: &[&str]) -> Result<(), ApiError> {
        let missing: Vec<String> = names
            .iter()
            .filter(|n| match self.field(n) {
                None => true,
                Some(Value::String(s)) => s.is_empty(),
                _ => false,
            })
            .map(|n| format!("{n} should not be empty"))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ApiError::unprocessable(missing))
        }
    }
}

/// Access to the documents for one request.
pub enum Guard<'a> {
    /// A read-only operation.
    Read(RwLockReadGuard<'a, Docs>),
    /// An operation that may change state.
    Write(RwLockWriteGuard<'a, Docs>),
}

/// A webhook event a change caused.
#[derive(Debug, Clone)]
pub struct Event {
    /// The event `type` (`ContactCreate`, …).
    pub kind: String,
    /// The location it happened in.
    pub location_id: String,
    /// The documented payload (without `timestamp`/`webhookId`, added when sent).
    pub payload: Value,
}

/// What a handler works with.
pub struct Ctx<'a> {
    guard: Guard<'a>,
    /// Changes to persist, in order.
    pub writes: Vec<Write>,
    /// Webhook events to send once the changes are durable.
    pub events: Vec<Event>,
    /// Request time, epoch milliseconds.
    pub now_ms: i64,
}

impl<'a> Ctx<'a> {
    /// Wraps a lock guard.
    pub fn new(guard: Guard<'a>, now_ms: i64) -> Self {
        Self {
            guard,
            writes: Vec::new(),
            events: Vec::new(),
            now_ms,
        }
    }

    /// The documents.
    pub fn docs(&self) -> &Docs {
        match &self.guard {
            Guard::Read(g) => g,
            Guard::Write(g) => g,
        }
    }

    /// A document by kind and id.
    pub fn get(&self, kind: &str, id: &str) -> Option<&Doc> {
        self.docs().get(kind, id)
    }

    /// A document's body, or 404 `<what> not found`; 403 when it belongs to another location
    /// than the request's.
    pub fn find(
        &self,
        kind: &str,
        id: &str,
        what: &str,
        req: &Req,
    ) -> Result<Arc<Value>, ApiError> {
        let doc = self
            .get(kind, id)
            .ok_or_else(|| ApiError::not_found(what))?;
        check_location(doc, req)?;
        Ok(doc.body.clone())
    }

    /// Every document of a kind in a location, oldest first.
    pub fn list(&self, kind: &str, location_id: &str) -> Vec<Arc<Value>> {
        self.docs()
            .iter(kind)
            .filter(|(_, d)| d.location_id.as_deref() == Some(location_id))
            .map(|(_, d)| d.body.clone())
            .collect()
    }

    /// Every document of a kind under a parent, oldest first.
    pub fn children(&self, kind: &str, parent_id: &str) -> Vec<Arc<Value>> {
        self.docs()
            .iter(kind)
            .filter(|(_, d)| d.parent_id.as_deref() == Some(parent_id))
            .map(|(_, d)| d.body.clone())
            .collect()
    }

    /// Stores a document (insert or replace), keeping its original creation time.
    pub fn put(
        &mut self,
        kind: &'static str,
        id: &str,
        location_id: Option<&str>,
        parent_id: Option<&str>,
        body: Value,
    ) -> Result<(), ApiError> {
        let created_ms = self.get(kind, id).map_or(self.now_ms, |d| d.created_ms);
        let write = Write::Put {
            kind,
            id: id.to_string(),
            doc: Doc {
                location_id: location_id.map(str::to_string),
                parent_id: parent_id.map(str::to_string),
                body: Arc::new(body),
                created_ms,
            },
        };
        self.apply(write)
    }

    /// Replaces the body of an existing document, keeping location and parent.
    pub fn replace(&mut self, kind: &'static str, id: &str, body: Value) -> Result<(), ApiError> {
        let doc = self
            .get(kind, id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind))?;
        self.apply(Write::Put {
            kind,
            id: id.to_string(),
            doc: Doc {
                body: Arc::new(body),
                ..doc
            },
        })
    }

    /// Removes a document.
    pub fn delete(&mut self, kind: &'static str, id: &str) -> Result<(), ApiError> {
        self.apply(Write::Delete {
            kind,
            id: id.to_string(),
        })
    }

    fn apply(&mut self, write: Write) -> Result<(), ApiError> {
        match &mut self.guard {
            Guard::Write(g) => {
                g.apply(&write);
                self.writes.push(write);
                Ok(())
            }
            Guard::Read(_) => Err(ApiError::new(
                500,
                "sandbox bug: a read-only operation tried to change state",
            )),
        }
    }

    /// Records a webhook event.
    pub fn emit(&mut self, kind: &str, location_id: &str, payload: Value) {
        self.events.push(Event {
            kind: kind.to_string(),
            location_id: location_id.to_string(),
            payload,
        });
    }
}

/// 403 when a document belongs to another location than the caller may act on.
pub fn check_location(doc: &Doc, req: &Req) -> Result<(), ApiError> {
    match (&doc.location_id, &req.caller.location_id) {
        (Some(doc_loc), Some(token_loc)) if doc_loc != token_loc => Err(forbidden_location()),
        _ => Ok(()),
    }
}

/// HighLevel's answer for a token used on another location.
pub fn forbidden_location() -> ApiError {
    ApiError::forbidden("The token does not have access to this location.")
}

/// A new HighLevel-style id: 20 alphanumeric characters.
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Epoch milliseconds as HighLevel writes dates: `2021-07-02T05:18:26.704Z`.
pub fn iso(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses an RFC 3339 date (or epoch milliseconds as a number or numeric string).
pub fn parse_time_ms(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            if let Ok(n) = s.parse::<i64>() {
                return Some(n);
            }
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .ok()
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        }
        _ => None,
    }
}

/// Shallow-merges `patch` into `target`, ignoring `null`s and the given immutable keys.
pub fn merge(target: &mut Value, patch: &Map<String, Value>, immutable: &[&str]) {
    if let Some(obj) = target.as_object_mut() {
        for (k, v) in patch {
            if immutable.contains(&k.as_str()) {
                continue;
            }
            obj.insert(k.clone(), v.clone());
        }
    }
}

/// Applies `skip`/`limit` (or `offset`/`limit`) from the query to `items`.
pub fn window<T: Clone>(items: &[T], skip: usize, limit: usize) -> Vec<T> {
    items.iter().skip(skip).take(limit).cloned().collect()
}

/// Case-insensitive "contains" on a JSON string field.
pub fn field_contains(v: &Value, field: &str, needle: &str) -> bool {
    v.get(field)
        .and_then(Value::as_str)
        .is_some_and(|s| s.to_lowercase().contains(&needle.to_lowercase()))
}

/// The handler of every operation, by operation id.
pub static HANDLERS: LazyLock<HashMap<&'static str, Handler>> = LazyLock::new(|| {
    let mut map: HashMap<&'static str, Handler> = HashMap::new();
    associations::register(&mut map);
    blogs::register(&mut map);
    businesses::register(&mut map);
    calendars::register(&mut map);
    contacts::register(&mut map);
    conversations::register(&mut map);
    forms::register(&mut map);
    invoices::register(&mut map);
    locations::register(&mut map);
    objects::register(&mut map);
    opportunities::register(&mut map);
    payments::register(&mut map);
    products::register(&mut map);
    users::register(&mut map);
    workflows::register(&mut map);
    map
});

/// Operations of the table that no handler serves yet (the test suite keeps this empty).
pub fn unserved() -> Vec<&'static str> {
    OPERATIONS
        .iter()
        .filter(|op| !HANDLERS.contains_key(op.id))
        .map(|op| op.id)
        .collect()
}

/// A JSON `{ "succeded": true }` as several delete operations answer (sic, HighLevel's spelling).
pub fn succeded() -> Value {
    json!({ "succeded": true })
}

/// State shared by the seeders of each area while `--seed demo` builds a location.
pub struct Seed {
    /// The demo location.
    pub location_id: String,
    /// Its agency.
    pub company_id: String,
    /// Seed time, epoch milliseconds.
    pub now_ms: i64,
    /// Deterministic randomness, so two seeded sandboxes hold the same data.
    pub rng: rand::rngs::StdRng,
    /// Ids created so far, by kind (`user`, `contact`, `calendar`, `pipeline`, …), for later seeders to link to.
    pub ids: HashMap<&'static str, Vec<String>>,
}

impl Seed {
    /// Ids of a kind created so far.
    pub fn ids(&self, kind: &str) -> &[String] {
        self.ids.get(kind).map_or(&[], Vec::as_slice)
    }

    /// A random id of a kind created so far.
    pub fn pick(&mut self, kind: &str) -> Option<String> {
        let ids = self.ids.get(kind)?;
        if ids.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..ids.len());
        Some(ids[i].clone())
    }
}

/// Helpers for unit tests of handlers: run an operation against an in-memory document set.
#[cfg(test)]
pub mod testing {
    use super::*;
    use parking_lot::RwLock;

    /// The JSON body of a handler result (`null` for an error).
    pub fn body(r: &HResult) -> Value {
        r.as_ref().map(|r| r.body.clone()).unwrap_or(Value::Null)
    }

    /// The status of a handler result.
    pub fn status(r: &HResult) -> u16 {
        match r {
            Ok(r) => r.status,
            Err(e) => e.status,
        }
    }

    /// A caller acting for `location_id` with every scope.
    pub fn caller(location_id: &str) -> Caller {
        Caller {
            location_id: Some(location_id.to_string()),
            company_id: Some("company1".to_string()),
            user_type: UserType::Location,
            app_id: "test".to_string(),
        }
    }

    /// Calls operation `op_id` with the given path params, query and body; returns the reply
    /// and the events emitted.
    pub fn call(
        docs: &RwLock<Docs>,
        op_id: &str,
        path: &[(&str, &str)],
        query: &[(&str, &str)],
        body: Value,
    ) -> (HResult, Vec<Event>) {
        let op = hlbridge_highlevel::operations::find(op_id).expect("known op");
        let handler = HANDLERS.get(op_id).expect("handler registered");
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
            caller: caller("loc1"),
            now_ms: 1_700_000_000_000,
        };
        let mut ctx = Ctx::new(Guard::Write(docs.write()), req.now_ms);
        let r = handler(&mut ctx, &req);
        (r, ctx.events)
    }
}
