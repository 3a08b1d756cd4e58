//! Triggers: what turns the outside world into events (and runs).
//!
//! - [`Engine::accept_highlevel_webhook`]: a signed HighLevel webhook (Ed25519
//!   `x-ghl-signature` or RSA `x-wh-signature` against the configured keys, a timestamp
//!   window, `webhookId` dedupe), routed by event `type` to the flows listening for it.
//! - [`Engine::accept_app_webhook`]: an app's POST to one flow, authenticated by an
//!   HMAC-SHA256 signature of the body or a bearer secret.
//! - [`Engine::poll_once`]: one poll of a HighLevel list operation (poll triggers and
//!   webhook backfills), deduping new items by id (no cap) or updated items by watermark.
//! - [`Engine::fire_due_schedules`]: cron schedules, once per tick.
//! - [`Engine::run_triggers`]: the loop that runs polls and schedules on time.
//!
//! HTTP ingress itself lives in the server crate; these functions take headers and the raw
//! body so they can be called from any HTTP framework (or a test).
//!
//! Dedupe keys: HighLevel webhooks `hlwh:<flow>:<webhookId>`; polled items and webhook
//! events of a flow with a backfill `poll:<flow>:<id>` (mode `new`) or
//! `poll:<flow>:<id>:<dateUpdated>` (mode `updated`), so the union of both is exact; app
//! webhooks `app:<flow>:<dedupe_key template>` or `app:<flow>:sha256:<body hash>`;
//! schedules `schedule:<flow>:<tick time>`.

mod poll;
mod schedule;
mod webhook;

pub use poll::PollReport;
pub use webhook::{sign_hmac_sha256, verify_hmac_sha256};

use crate::store::StoreError;

/// Why an inbound webhook was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// Missing, malformed or wrong signature or secret.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The timestamp is outside the replay window.
    #[error("stale webhook: {0}")]
    Stale(String),
    /// The body is not acceptable (not JSON, no event type…).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No enabled flow with this id takes app webhooks.
    #[error("no flow `{0}` accepting app webhooks")]
    UnknownFlow(String),
    /// The event could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IngressError {
    /// The HTTP status to answer with: 401, 400, 404 or 503 (the sender should retry).
    pub fn status(&self) -> u16 {
        match self {
            IngressError::Unauthorized(_) | IngressError::Stale(_) => 401,
            IngressError::BadRequest(_) => 400,
            IngressError::UnknownFlow(_) => 404,
            IngressError::Store(_) => 503,
        }
    }
}

/// An item's value at `field` as text (strings as is, numbers written out).
pub(crate) fn field_text(item: &serde_json::Value, field: &str) -> Option<String> {
    match item.get(field)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The dedupe key of an object seen by a poll (or by a webhook of a flow with a backfill).
pub(crate) fn item_key(flow_id: &str, id: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("poll:{flow_id}:{id}:{v}"),
        None => format!("poll:{flow_id}:{id}"),
    }
}
