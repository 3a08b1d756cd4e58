//! Webhooks out: every event a change causes is sent, signed like HighLevel signs it, to the
//! configured URLs. Like HighLevel, delivery is retried only after a 429 by default, so a
//! receiver that fails loses the event (configurable: retry any failure).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use hlbridge_highlevel::webhooks::WebhookSigner;
use parking_lot::{Mutex, RwLock};
use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::handlers::Event;

/// When a failed delivery is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RetryPolicy {
    /// Only after a 429 (HighLevel's behaviour).
    #[default]
    On429,
    /// After any failure.
    Always,
}

/// One attempted delivery, for the admin API.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    /// The payload's `webhookId`.
    pub webhook_id: String,
    /// Event type.
    pub event_type: String,
    /// Receiver.
    pub url: String,
    /// `delivered`, `failed`, `dropped` (fault) or `duplicated` (fault).
    pub outcome: String,
    /// Last HTTP status, if any answer came.
    pub status: Option<u16>,
    /// Attempts made.
    pub attempts: u32,
}

/// An event queued with the faults that apply to it.
#[derive(Debug)]
pub struct Outgoing {
    /// The event.
    pub event: Event,
    /// Probability of dropping it.
    pub drop_rate: f64,
    /// Probability of sending it twice.
    pub duplicate_rate: f64,
}

/// The delivery side: URLs, signer, log, and the queue.
pub struct Delivery {
    urls: RwLock<Vec<String>>,
    policy: RwLock<RetryPolicy>,
    signer: WebhookSigner,
    log: Mutex<VecDeque<DeliveryRecord>>,
    tx: mpsc::UnboundedSender<Outgoing>,
}

const LOG_CAP: usize = 10_000;
const MAX_ATTEMPTS: u32 = 6;

impl Delivery {
    /// Starts the delivery task.
    pub fn start(signer: WebhookSigner, urls: Vec<String>, policy: RetryPolicy) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let this = Arc::new(Self {
            urls: RwLock::new(urls),
            policy: RwLock::new(policy),
            signer,
            log: Mutex::new(VecDeque::new()),
            tx,
        });
        tokio::spawn(run(Arc::downgrade(&this), rx));
        this
    }

    /// The signer (for its public keys).
    pub fn signer(&self) -> &WebhookSigner {
        &self.signer
    }

    /// Queues events.
    pub fn send(&self, events: Vec<Event>, drop_rate: f64, duplicate_rate: f64) {
        // Nobody listens (the common case in tests and benchmarks): not worth waking the
        // delivery task for every write.
        if events.is_empty() || self.urls.read().is_empty() {
            return;
        }
        for event in events {
            let _ = self.tx.send(Outgoing {
                event,
                drop_rate,
                duplicate_rate,
            });
        }
    }

    /// Receivers.
    pub fn urls(&self) -> Vec<String> {
        self.urls.read().clone()
    }

    /// Adds a receiver.
    pub fn add_url(&self, url: String) {
        let mut urls = self.urls.write();
        if !urls.contains(&url) {
            urls.push(url);
        }
    }

    /// Removes a receiver.
    pub fn remove_url(&self, url: &str) {
        self.urls.write().retain(|u| u != url);
    }

    /// Sets the retry policy.
    pub fn set_policy(&self, policy: RetryPolicy) {
        *self.policy.write() = policy;
    }

    /// The delivery log, oldest first.
    pub fn log(&self) -> Vec<DeliveryRecord> {
        self.log.lock().iter().cloned().collect()
    }

    fn record(&self, r: DeliveryRecord) {
        let mut log = self.log.lock();
        if log.len() >= LOG_CAP {
            log.pop_front();
        }
        log.push_back(r);
    }
}

/// The documented payload plus `timestamp` and `webhookId`, compact JSON with `type` first.
pub fn payload(event: &Event, webhook_id: &str) -> Vec<u8> {
    let mut obj = Map::new();
    obj.insert("type".into(), Value::String(event.kind.clone()));
    if let Some(p) = event.payload.as_object() {
        for (k, v) in p {
            if k != "type" {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    obj.entry("locationId")
        .or_insert_with(|| Value::String(event.location_id.clone()));
    obj.insert(
        "timestamp".into(),
        Value::String(crate::handlers::iso(
            (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
        )),
    );
    obj.insert("webhookId".into(), Value::String(webhook_id.to_string()));
    serde_json::to_vec(&Value::Object(obj)).unwrap_or_default()
}

async fn run(this: std::sync::Weak<Delivery>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "sandbox cannot build its webhook client");
            return;
        }
    };
    while let Some(out) = rx.recv().await {
        let Some(this) = this.upgrade() else { return };
        let urls = this.urls();
        if urls.is_empty() {
            continue;
        }
        let webhook_id = uuid::Uuid::new_v4().to_string();
        let (dropped, copies) = {
            let mut rng = rand::rng();
            let dropped = out.drop_rate > 0.0 && rng.random_bool(out.drop_rate.min(1.0));
            let dup = out.duplicate_rate > 0.0 && rng.random_bool(out.duplicate_rate.min(1.0));
            (dropped, if dup { 2 } else { 1 })
        };
        let body = payload(&out.event, &webhook_id);
        let headers = this.signer.sign(&body);
        let policy = *this.policy.read();
        for url in urls {
            if dropped {
                this.record(DeliveryRecord {
                    webhook_id: webhook_id.clone(),
                    event_type: out.event.kind.clone(),
                    url,
                    outcome: "dropped".into(),
                    status: None,
                    attempts: 0,
                });
                continue;
            }
            for copy in 0..copies {
                let (status, attempts, delivered) =
                    deliver(&client, &url, &body, &headers, policy).await;
                let outcome = match (delivered, copy) {
                    (true, 0) => "delivered",
                    (true, _) => "duplicated",
                    (false, _) => "failed",
                };
                this.record(DeliveryRecord {
                    webhook_id: webhook_id.clone(),
                    event_type: out.event.kind.clone(),
                    url: url.clone(),
                    outcome: outcome.into(),
                    status,
                    attempts,
                });
            }
        }
    }
}

async fn deliver(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    headers: &[(&'static str, String)],
    policy: RetryPolicy,
) -> (Option<u16>, u32, bool) {
    let mut last = None;
    for attempt in 1..=MAX_ATTEMPTS {
        let mut req = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let retry = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                last = Some(status);
                if resp.status().is_success() {
                    return (last, attempt, true);
                }
                status == 429 || policy == RetryPolicy::Always
            }
            Err(_) => policy == RetryPolicy::Always,
        };
        if !retry || attempt == MAX_ATTEMPTS {
            return (last, attempt, false);
        }
        let backoff = Duration::from_millis(200u64 << attempt.min(6));
        tokio::time::sleep(backoff).await;
    }
    (last, MAX_ATTEMPTS, false)
}
