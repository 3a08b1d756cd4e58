//! The contact lookup (`GET /lookup/contact?email=…|id=…`): one JSON with a contact's
//! profile, tasks and notes, fetched from HighLevel and cached in memory.
//!
//! - A lookup by id calls `contacts.get`; by email `contacts.find_duplicate`; then
//!   `contacts.tasks.list` and `contacts.notes.list` concurrently: three requests per miss.
//! - Entries live for the configured TTL. Concurrent lookups of the same key share one fetch
//!   (single flight), and a fetch runs in its own task, so a client hanging up does not
//!   waste it.
//! - A verified HighLevel webhook about a contact (`Contact*`, `Task*`, `Note*`) drops that
//!   contact's entry and, when it was cached (someone looks it up), fetches it again in the
//!   background; `ContactDelete` only drops it. A fetch that started before such an
//!   invalidation still answers its callers but is not cached, so an old read never
//!   overwrites the newer state.
//! - Not-found answers are not cached (a contact created a second later must be found).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use hlbridge_engine::api::items_of;
use hlbridge_engine::{HighLevelApi, StepError};
use hlbridge_highlevel::Operation;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

/// How many recent invalidations are remembered to keep an older fetch out of the cache.
const INVALIDATION_LOG: usize = 4096;

/// What to look a contact up by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LookupKey {
    /// A HighLevel contact id.
    Id(String),
    /// An email address (trimmed and lowercased).
    Email(String),
}

impl LookupKey {
    /// A key by contact id: 1 to 64 letters, digits, `-` or `_`.
    pub fn id(id: &str) -> Result<Self, LookupError> {
        let id = id.trim();
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(LookupError::BadRequest(
                "`id` must be a HighLevel contact id (letters, digits, `-`, `_`)".into(),
            ));
        }
        Ok(LookupKey::Id(id.to_owned()))
    }

    /// A key by email address (normalized to lowercase).
    pub fn email(email: &str) -> Result<Self, LookupError> {
        let email = email.trim().to_lowercase();
        if email.len() > 320 || !email.contains('@') || email.chars().any(char::is_whitespace) {
            return Err(LookupError::BadRequest(
                "`email` must be an email address".into(),
            ));
        }
        Ok(LookupKey::Email(email))
    }
}

impl std::fmt::Display for LookupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LookupKey::Id(id) => write!(f, "id {id}"),
            LookupKey::Email(e) => write!(f, "email {e}"),
        }
    }
}

/// Why a lookup gave no contact.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LookupError {
    /// No contact matches.
    #[error("no contact with {0}")]
    NotFound(String),
    /// The query is not valid.
    #[error("{0}")]
    BadRequest(String),
    /// HighLevel could not answer now (network, 429, 5xx) or no connection is configured;
    /// the caller may retry.
    #[error("HighLevel is unavailable: {message}")]
    Unavailable {
        /// What went wrong.
        message: String,
        /// When to retry, if HighLevel said.
        retry_after: Option<Duration>,
    },
    /// HighLevel refused the request (401, 403, 422…): retrying will not help.
    #[error("HighLevel refused the lookup: {message}")]
    Upstream {
        /// HighLevel's status, if any.
        status: Option<u16>,
        /// What went wrong.
        message: String,
    },
}

impl LookupError {
    fn from_step(e: StepError) -> Self {
        if e.is_transient() {
            LookupError::Unavailable {
                message: e.message,
                retry_after: e.retry_after,
            }
        } else {
            LookupError::Upstream {
                status: e.status,
                message: e.message,
            }
        }
    }
}

/// Contact lookup settings.
#[derive(Debug, Clone)]
pub struct LookupConfig {
    /// How long a looked-up contact is served from memory.
    pub ttl: Duration,
    /// Most contacts kept; beyond it the expired, then the oldest entries are dropped.
    pub capacity: usize,
    /// The HighLevel connection lookups use.
    pub connection: String,
    /// Location passed to `contacts.find_duplicate` (else the connection's own location).
    pub location_id: Option<String>,
}

impl Default for LookupConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            capacity: 10_000,
            connection: "default".into(),
            location_id: None,
        }
    }
}

/// A lookup's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Looked {
    /// `{ "contact": {…}, "tasks": […], "notes": […] }`.
    pub value: Arc<Value>,
    /// Whether it came from the cache.
    pub cached: bool,
}

/// Lookup counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LookupStats {
    /// Answered from the cache.
    pub hits: u64,
    /// Fetched from HighLevel.
    pub misses: u64,
    /// Joined a fetch already in flight for the same key.
    pub coalesced: u64,
    /// Entries dropped because a webhook said the contact changed.
    pub invalidations: u64,
    /// Background refetches after such a webhook.
    pub refreshes: u64,
    /// Fetches that failed (not-found included).
    pub errors: u64,
    /// Contacts in the cache now.
    pub entries: u64,
}

type Pending = Shared<BoxFuture<'static, Result<Arc<Value>, LookupError>>>;

struct Entry {
    value: Arc<Value>,
    fetched: Instant,
    emails: Vec<String>,
}

#[derive(Default)]
struct CacheState {
    /// By contact id.
    entries: HashMap<String, Entry>,
    /// Email → contact id, for entries in `entries`.
    emails: HashMap<String, String>,
    /// Fetches in flight, with their fetch number.
    inflight: HashMap<LookupKey, (u64, Pending)>,
    /// Sequence of invalidations (and fetch numbers).
    seq: u64,
    /// Recent invalidations `(seq, contact id)`, oldest first.
    invalidated: VecDeque<(u64, String)>,
    /// The highest seq dropped from `invalidated`.
    forgotten: u64,
}

impl CacheState {
    fn invalidated_since(&self, id: &str, since: u64) -> bool {
        self.forgotten > since
            || self
                .invalidated
                .iter()
                .rev()
                .take_while(|(s, _)| *s > since)
                .any(|(_, i)| i == id)
    }

    fn remove_entry(&mut self, id: &str) -> bool {
        match self.entries.remove(id) {
            Some(entry) => {
                for e in entry.emails {
                    if self.emails.get(&e).is_some_and(|i| i == id) {
                        self.emails.remove(&e);
                    }
                }
                true
            }
            None => false,
        }
    }

    fn make_room(&mut self, capacity: usize, ttl: Duration, now: Instant) {
        if self.entries.len() < capacity.max(1) {
            return;
        }
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.fetched) >= ttl)
            .map(|(k, _)| k.clone())
            .collect();
        for id in expired {
            self.remove_entry(&id);
        }
        while self.entries.len() >= capacity.max(1) {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.fetched)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove_entry(&oldest);
        }
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
    invalidations: AtomicU64,
    refreshes: AtomicU64,
    errors: AtomicU64,
}

struct Inner {
    api: Option<Arc<dyn HighLevelApi>>,
    config: LookupConfig,
    state: Mutex<CacheState>,
    counters: Counters,
}

/// The contact lookup with its cache. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ContactLookup {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ContactLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContactLookup")
            .field("config", &self.inner.config)
            .field("connected", &self.inner.api.is_some())
            .finish_non_exhaustive()
    }
}

fn operation(id: &str) -> Result<&'static Operation, LookupError> {
    hlbridge_highlevel::operations::find(id).ok_or_else(|| LookupError::Upstream {
        status: None,
        message: format!("operation `{id}` is missing from the operation table"),
    })
}

/// The contact id a HighLevel webhook event is about, for the events that change what a
/// lookup returns (`Contact*`: `id`; `Task*` and `Note*`: `contactId`).
pub fn contact_of_event(event: &Value) -> Option<&str> {
    let kind = event.get("type").and_then(Value::as_str)?;
    let field = if kind.starts_with("Contact") {
        event.get("id").or_else(|| event.get("contactId"))
    } else if kind.starts_with("Task") || kind.starts_with("Note") {
        event.get("contactId")
    } else {
        None
    };
    field.and_then(Value::as_str).filter(|s| !s.is_empty())
}

impl ContactLookup {
    /// A lookup through `api` (`None`: every lookup answers "unavailable").
    pub fn new(api: Option<Arc<dyn HighLevelApi>>, config: LookupConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                api,
                config,
                state: Mutex::new(CacheState::default()),
                counters: Counters::default(),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &LookupConfig {
        &self.inner.config
    }

    /// Looks a contact up: from the cache when fresh, else from HighLevel (joining a fetch
    /// of the same key already in flight).
    pub async fn lookup(&self, key: LookupKey) -> Result<Looked, LookupError> {
        let pending = {
            let mut st = self.inner.state.lock();
            let now = Instant::now();
            let id = match &key {
                LookupKey::Id(id) => Some(id.clone()),
                LookupKey::Email(e) => st.emails.get(e).cloned(),
            };
            if let Some(entry) = id.as_ref().and_then(|id| st.entries.get(id))
                && now.saturating_duration_since(entry.fetched) < self.inner.config.ttl
            {
                self.inner.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Looked {
                    value: entry.value.clone(),
                    cached: true,
                });
            }
            match st.inflight.get(&key) {
                Some((_, p)) => {
                    self.inner
                        .counters
                        .coalesced
                        .fetch_add(1, Ordering::Relaxed);
                    p.clone()
                }
                None => {
                    self.inner.counters.misses.fetch_add(1, Ordering::Relaxed);
                    Inner::start_fetch(&self.inner, &mut st, key)
                }
            }
        };
        let value = pending.await?;
        Ok(Looked {
            value,
            cached: false,
        })
    }

    /// Reacts to a verified HighLevel webhook event: drops the cached contact it is about
    /// and refetches it in the background (not after `ContactDelete`). Returns the contact
    /// id when the event concerned a contact.
    pub fn on_event(&self, event: &Value) -> Option<String> {
        let id = contact_of_event(event)?.to_owned();
        let deleted = event.get("type").and_then(Value::as_str) == Some("ContactDelete");
        self.invalidate(&id, !deleted);
        Some(id)
    }

    /// Drops a contact's entry; with `refresh`, fetches it again in the background when it
    /// was cached or being fetched. Returns whether anything was dropped or restarted.
    pub fn invalidate(&self, contact_id: &str, refresh: bool) -> bool {
        let mut st = self.inner.state.lock();
        st.seq += 1;
        let seq = st.seq;
        st.invalidated.push_back((seq, contact_id.to_owned()));
        while st.invalidated.len() > INVALIDATION_LOG {
            if let Some((s, _)) = st.invalidated.pop_front() {
                st.forgotten = s;
            }
        }
        let had = st.remove_entry(contact_id);
        let key = LookupKey::Id(contact_id.to_owned());
        let fetching = st.inflight.contains_key(&key);
        if had || fetching {
            self.inner
                .counters
                .invalidations
                .fetch_add(1, Ordering::Relaxed);
        }
        if refresh && (had || fetching) {
            self.inner
                .counters
                .refreshes
                .fetch_add(1, Ordering::Relaxed);
            // Replaces a fetch that began before this change: later lookups join the new one.
            drop(Inner::start_fetch(&self.inner, &mut st, key));
        }
        had || fetching
    }

    /// The counters.
    pub fn stats(&self) -> LookupStats {
        let c = &self.inner.counters;
        LookupStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            refreshes: c.refreshes.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            entries: self.inner.state.lock().entries.len() as u64,
        }
    }
}

impl Inner {
    /// Starts fetching `key` in its own task and records it as in flight.
    fn start_fetch(this: &Arc<Inner>, st: &mut CacheState, key: LookupKey) -> Pending {
        st.seq += 1;
        let fetch_no = st.seq;
        let inner = this.clone();
        let k = key.clone();
        let task = tokio::spawn(async move {
            let result = inner.fetch(&k).await;
            inner.finish(&k, fetch_no, &result);
            result
        });
        let pending: Pending = async move {
            task.await.unwrap_or_else(|e| {
                Err(LookupError::Unavailable {
                    message: format!("the lookup task failed: {e}"),
                    retry_after: None,
                })
            })
        }
        .boxed()
        .shared();
        st.inflight.insert(key, (fetch_no, pending.clone()));
        pending
    }

    /// Records a finished fetch: no longer in flight; cached unless the contact changed
    /// since the fetch began.
    fn finish(&self, key: &LookupKey, fetch_no: u64, result: &Result<Arc<Value>, LookupError>) {
        let mut st = self.state.lock();
        if st.inflight.get(key).is_some_and(|(n, _)| *n == fetch_no) {
            st.inflight.remove(key);
        }
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%key, error = %e, "contact lookup failed");
                return;
            }
        };
        let Some(id) = value["contact"]["id"].as_str().map(str::to_owned) else {
            return;
        };
        if st.invalidated_since(&id, fetch_no) {
            return;
        }
        let now = Instant::now();
        st.remove_entry(&id);
        st.make_room(self.config.capacity, self.config.ttl, now);
        let mut emails = Vec::new();
        if let LookupKey::Email(e) = key {
            emails.push(e.clone());
        }
        if let Some(e) = value["contact"]["email"].as_str() {
            let e = e.trim().to_lowercase();
            if !e.is_empty() && !emails.contains(&e) {
                emails.push(e);
            }
        }
        for e in &emails {
            st.emails.insert(e.clone(), id.clone());
        }
        st.entries.insert(
            id,
            Entry {
                value: value.clone(),
                fetched: now,
                emails,
            },
        );
    }

    /// Fetches profile, tasks and notes from HighLevel.
    async fn fetch(&self, key: &LookupKey) -> Result<Arc<Value>, LookupError> {
        let api = self.api.as_ref().ok_or_else(|| LookupError::Unavailable {
            message: "no HighLevel connection is configured".into(),
            retry_after: None,
        })?;
        let conn = self.config.connection.as_str();
        let not_found = || LookupError::NotFound(key.to_string());
        let contact = match key {
            LookupKey::Id(id) => {
                let op = operation("contacts.get")?;
                match api.call(conn, op, json!({ "contactId": id })).await {
                    Ok(body) => body.get("contact").cloned(),
                    Err(e) if is_not_found(&e) => None,
                    Err(e) => return Err(LookupError::from_step(e)),
                }
            }
            LookupKey::Email(email) => {
                let op = operation("contacts.find_duplicate")?;
                let mut params = json!({ "email": email });
                if let Some(loc) = &self.config.location_id {
                    params["locationId"] = Value::String(loc.clone());
                }
                match api.call(conn, op, params).await {
                    Ok(body) => body.get("contact").cloned(),
                    Err(e) if is_not_found(&e) => None,
                    Err(e) => return Err(LookupError::from_step(e)),
                }
            }
        };
        let contact = contact.filter(Value::is_object).ok_or_else(not_found)?;
        let id = contact
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| LookupError::Upstream {
                status: None,
                message: "HighLevel returned a contact without an id".into(),
            })?
            .to_owned();
        let (tasks_op, notes_op) = (
            operation("contacts.tasks.list")?,
            operation("contacts.notes.list")?,
        );
        let (tasks, notes) = tokio::join!(
            api.call(conn, tasks_op, json!({ "contactId": id })),
            api.call(conn, notes_op, json!({ "contactId": id })),
        );
        let tasks = items_of(tasks_op, tasks.map_err(LookupError::from_step)?);
        let notes = items_of(notes_op, notes.map_err(LookupError::from_step)?);
        Ok(Arc::new(json!({
            "contact": contact,
            "tasks": tasks,
            "notes": notes,
        })))
    }
}

/// Whether HighLevel said the contact does not exist (404, or a 400 saying "not found").
fn is_not_found(e: &StepError) -> bool {
    match e.status {
        Some(404) => true,
        Some(400) => {
            let text = format!(
                "{} {}",
                e.message,
                e.body.as_ref().map(Value::to_string).unwrap_or_default()
            );
            text.to_lowercase().contains("not found")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts calls; answers one contact `c1` (email `ada@example.com`).
    #[derive(Default)]
    struct Fake {
        calls: AtomicUsize,
        name: Mutex<String>,
        /// When set, `contacts.find_duplicate` reads the contact, then waits for this.
        hold: Mutex<Option<Arc<tokio::sync::Notify>>>,
    }

    impl HighLevelApi for Fake {
        fn call<'a>(
            &'a self,
            _connection: &'a str,
            op: &'static Operation,
            params: Value,
        ) -> BoxFuture<'a, Result<Value, StepError>> {
            Box::pin(async move {
                let contact =
                    json!({"id": "c1", "email": "Ada@Example.com", "firstName": *self.name.lock()});
                self.calls.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                match op.id {
                    "contacts.get" if params["contactId"] == "c1" => {
                        Ok(json!({ "contact": contact }))
                    }
                    "contacts.get" => Err(StepError::http(404, "Contact not found", None)),
                    "contacts.find_duplicate" if params["email"] == "ada@example.com" => {
                        let hold = self.hold.lock().clone();
                        if let Some(gate) = hold {
                            gate.notified().await;
                        }
                        Ok(json!({ "contact": contact }))
                    }
                    "contacts.find_duplicate" => Ok(json!({ "contact": null })),
                    "contacts.tasks.list" => Ok(json!({ "tasks": [{"id": "t1"}] })),
                    "contacts.notes.list" => Ok(json!({ "notes": [] })),
                    other => Err(StepError::permanent(format!("unexpected {other}"))),
                }
            })
        }
    }

    fn lookup_with(fake: &Arc<Fake>, ttl: Duration) -> ContactLookup {
        let api: Arc<dyn HighLevelApi> = fake.clone();
        ContactLookup::new(
            Some(api),
            LookupConfig {
                ttl,
                capacity: 2,
                ..LookupConfig::default()
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn caches_by_id_and_email_until_the_ttl() {
        let fake = Arc::new(Fake::default());
        let lookup = lookup_with(&fake, Duration::from_secs(30));
        let a = lookup
            .lookup(LookupKey::email(" ADA@example.com").expect("key"))
            .await
            .expect("found");
        assert!(!a.cached);
        assert_eq!(a.value["tasks"][0]["id"], "t1");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
        let b = lookup
            .lookup(LookupKey::id("c1").expect("key"))
            .await
            .expect("found");
        assert!(b.cached, "the email lookup cached the contact by id too");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
        tokio::time::advance(Duration::from_secs(31)).await;
        let c = lookup
            .lookup(LookupKey::id("c1").expect("key"))
            .await
            .expect("found");
        assert!(!c.cached, "expired");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 6);
        let s = lookup.stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_lookups_share_one_fetch_and_misses_are_not_cached() {
        let fake = Arc::new(Fake::default());
        let lookup = lookup_with(&fake, Duration::from_secs(30));
        let key = LookupKey::id("c1").expect("key");
        let (a, b) = tokio::join!(lookup.lookup(key.clone()), lookup.lookup(key));
        assert_eq!(a.expect("a").value, b.expect("b").value);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
        assert_eq!(lookup.stats().coalesced, 1);
        for _ in 0..2 {
            let e = lookup
                .lookup(LookupKey::email("nobody@example.com").expect("key"))
                .await
                .expect_err("absent");
            assert!(matches!(e, LookupError::NotFound(_)), "{e}");
        }
        assert_eq!(fake.calls.load(Ordering::SeqCst), 5);
        let e = lookup
            .lookup(LookupKey::id("zz").expect("key"))
            .await
            .expect_err("absent");
        assert!(matches!(e, LookupError::NotFound(_)), "{e}");
        assert!(LookupKey::id("../x").is_err() && LookupKey::email("nope").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_webhook_refreshes_the_entry_and_a_delete_drops_it() {
        let fake = Arc::new(Fake::default());
        *fake.name.lock() = "Ada".into();
        let lookup = lookup_with(&fake, Duration::from_secs(30));
        let key = LookupKey::id("c1").expect("key");
        lookup.lookup(key.clone()).await.expect("found");
        *fake.name.lock() = "Grace".into();
        assert_eq!(
            lookup.on_event(&json!({"type": "NoteCreate", "id": "n1", "contactId": "c1"})),
            Some("c1".into())
        );
        let got = lookup.lookup(key.clone()).await.expect("found");
        assert_eq!(got.value["contact"]["firstName"], "Grace");
        let again = lookup.lookup(key.clone()).await.expect("found");
        assert!(again.cached, "the refreshed entry is cached");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 6);
        // Other events and other contacts leave it alone.
        assert_eq!(
            lookup.on_event(&json!({"type": "AppointmentCreate", "contactId": "c1"})),
            None
        );
        assert!(!lookup.invalidate("c2", true));
        assert!(lookup.lookup(key.clone()).await.expect("found").cached);
        lookup.on_event(&json!({"type": "ContactDelete", "id": "c1"}));
        assert_eq!(lookup.stats().entries, 0);
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            6,
            "no refetch after a delete"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalidation_during_a_fetch_keeps_the_old_read_out() {
        let fake = Arc::new(Fake::default());
        *fake.name.lock() = "Old".into();
        let gate = Arc::new(tokio::sync::Notify::new());
        *fake.hold.lock() = Some(gate.clone());
        let lookup = lookup_with(&fake, Duration::from_secs(30));
        let first = tokio::spawn({
            let lookup = lookup.clone();
            async move {
                lookup
                    .lookup(LookupKey::email("ada@example.com").expect("key"))
                    .await
            }
        });
        while fake.calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // The contact changes (and its webhook arrives) while the fetch holds the old read.
        *fake.name.lock() = "New".into();
        *fake.hold.lock() = None;
        lookup.invalidate("c1", true);
        gate.notify_one();
        let got = first.await.expect("task").expect("answered");
        assert_eq!(
            got.value["contact"]["firstName"], "Old",
            "its callers get the read"
        );
        let later = lookup
            .lookup(LookupKey::id("c1").expect("key"))
            .await
            .expect("found");
        assert!(!later.cached, "the old read was not cached");
        assert_eq!(later.value["contact"]["firstName"], "New");
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_is_bounded() {
        let mut st = CacheState::default();
        let now = Instant::now();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            st.make_room(2, Duration::from_secs(30), now);
            st.entries.insert(
                (*id).to_owned(),
                Entry {
                    value: Arc::new(json!({})),
                    fetched: now + Duration::from_secs(i as u64),
                    emails: vec![format!("{id}@x")],
                },
            );
            st.emails.insert(format!("{id}@x"), (*id).to_owned());
        }
        assert_eq!(st.entries.len(), 2);
        assert!(!st.entries.contains_key("a") && !st.emails.contains_key("a@x"));
    }

    #[tokio::test]
    async fn without_a_connection_lookups_are_unavailable() {
        let lookup = ContactLookup::new(None, LookupConfig::default());
        let e = lookup
            .lookup(LookupKey::id("c1").expect("key"))
            .await
            .expect_err("no api");
        assert!(matches!(e, LookupError::Unavailable { .. }), "{e}");
    }
}
