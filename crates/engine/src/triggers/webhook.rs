//! Inbound webhooks: HighLevel's (signed) and apps' (HMAC or bearer secret).

use base64::Engine as _;
use hlbridge_highlevel::webhooks::SignatureError;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{IngressError, field_text, item_key};
use crate::engine::Engine;
use crate::flow::{AppAuth, PollMode, Trigger};
use crate::store::{NewEvent, RunId};
use crate::validate::CompiledTrigger;

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Constant-time equality of two byte strings (the length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Decodes a signature written as hex or base64 (standard or URL-safe), with an optional
/// `sha256=` prefix.
fn decode_signature(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let s = s.strip_prefix("sha256=").unwrap_or(s);
    decode_hex(s)
        .or_else(|| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .or_else(|| base64::engine::general_purpose::URL_SAFE.decode(s).ok())
        .or_else(|| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .ok()
        })
}

/// Checks an HMAC-SHA256 signature of `body` with `secret` (constant time).
pub fn verify_hmac_sha256(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(sig) = decode_signature(signature) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The hex HMAC-SHA256 of `body` with `secret` (what an app sends in `x-signature`).
pub fn sign_hmac_sha256(secret: &[u8], body: &[u8]) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Engine {
    /// Accepts a HighLevel webhook: verifies its signature against the configured keys and
    /// its timestamp (replay window), then enqueues one run per enabled flow listening for
    /// its `type` (deduped by `webhookId`). Returns the runs started (empty when no flow
    /// listens or every copy was a duplicate). Rejections are logged.
    pub async fn accept_highlevel_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Vec<RunId>, IngressError> {
        let result = self.highlevel_webhook(headers, body).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, status = e.status(), "HighLevel webhook rejected");
        }
        result
    }

    async fn highlevel_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Vec<RunId>, IngressError> {
        self.inner
            .verifier
            .verify(|name| header(headers, name), body)
            .map_err(|e| match e {
                SignatureError::Stale(m) => IngressError::Stale(m),
                SignatureError::Missing
                    if self.inner.config.highlevel_webhook_keys.is_empty()
                        && !self.inner.config.trust_highlevel_rsa_key =>
                {
                    IngressError::Unauthorized("no HighLevel webhook keys are configured".into())
                }
                other => IngressError::Unauthorized(other.to_string()),
            })?;
        let event: Value = serde_json::from_slice(body)
            .map_err(|e| IngressError::BadRequest(format!("body is not JSON: {e}")))?;
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| IngressError::BadRequest("no event `type`".into()))?;
        let webhook_id =
            field_text(&event, "webhookId").unwrap_or_else(|| hex(&Sha256::digest(body)));
        let mut batch = Vec::new();
        for flow in self.flows() {
            if !flow.flow.enabled {
                continue;
            }
            let CompiledTrigger::HighlevelWebhook { events, backfill } = &flow.trigger else {
                continue;
            };
            if !events.iter().any(|e| e == kind) {
                continue;
            }
            let by_object = backfill.as_ref().and_then(|b| {
                let id = field_text(&event, &b.config.id_field)?;
                match b.config.mode {
                    PollMode::New => Some(item_key(flow.id(), &id, None)),
                    PollMode::Updated => field_text(&event, &b.config.updated_field)
                        .map(|v| item_key(flow.id(), &id, Some(&v))),
                }
            });
            let seen_key = match (backfill, &by_object) {
                (Some(b), Some(_)) if b.config.mode == PollMode::New => {
                    field_text(&event, &b.config.id_field)
                }
                _ => None,
            };
            batch.push(NewEvent {
                flow_id: flow.id().to_owned(),
                dedupe_key: by_object.unwrap_or_else(|| format!("hlwh:{}:{webhook_id}", flow.id())),
                payload: event.clone(),
                seen_key,
            });
        }
        self.enqueue_many(batch).await.map_err(|e| match e {
            crate::EngineError::Store(s) => IngressError::Store(s),
            other => IngressError::BadRequest(other.to_string()),
        })
    }

    /// Accepts an app's webhook for flow `flow_id`: checks the secret (HMAC-SHA256 of the
    /// body in the flow's signature header, or `Authorization: Bearer <secret>`), then
    /// enqueues the JSON body as the event. `None` when it is a duplicate.
    pub async fn accept_app_webhook(
        &self,
        flow_id: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Option<RunId>, IngressError> {
        let result = self.app_webhook(flow_id, headers, body).await;
        if let Err(e) = &result {
            tracing::warn!(flow = flow_id, error = %e, status = e.status(), "app webhook rejected");
        }
        result
    }

    async fn app_webhook(
        &self,
        flow_id: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Option<RunId>, IngressError> {
        let flow = self
            .flow(flow_id)
            .filter(|f| f.flow.enabled)
            .ok_or_else(|| IngressError::UnknownFlow(flow_id.to_owned()))?;
        let (Trigger::AppWebhook(cfg), CompiledTrigger::AppWebhook { dedupe_key }) =
            (&flow.flow.trigger, &flow.trigger)
        else {
            return Err(IngressError::UnknownFlow(flow_id.to_owned()));
        };
        let secret = self
            .inner
            .config
            .app_secrets
            .get(&cfg.secret)
            .map_or(cfg.secret.as_bytes(), |s| s.as_bytes());
        match cfg.auth {
            AppAuth::HmacSha256 => {
                let sig = header(headers, &cfg.signature_header).ok_or_else(|| {
                    IngressError::Unauthorized(format!("missing {} header", cfg.signature_header))
                })?;
                if !verify_hmac_sha256(secret, body, sig) {
                    return Err(IngressError::Unauthorized(format!(
                        "{} does not match the body",
                        cfg.signature_header
                    )));
                }
            }
            AppAuth::Bearer => {
                let given = header(headers, "authorization")
                    .and_then(|v| {
                        v.strip_prefix("Bearer ")
                            .or_else(|| v.strip_prefix("bearer "))
                    })
                    .ok_or_else(|| IngressError::Unauthorized("missing bearer token".into()))?;
                if !ct_eq(given.trim().as_bytes(), secret) {
                    return Err(IngressError::Unauthorized("wrong bearer token".into()));
                }
            }
        }
        let event: Value = serde_json::from_slice(body)
            .map_err(|e| IngressError::BadRequest(format!("body is not JSON: {e}")))?;
        let key = match dedupe_key {
            Some(m) => {
                let ctx = crate::template::context(&serde_json::json!({ "event": event }));
                let v = m
                    .render(&flow.templates, &ctx)
                    .map_err(|e| IngressError::BadRequest(format!("dedupe_key: {e}")))?;
                let v = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                format!("app:{flow_id}:{v}")
            }
            None => format!("app:{flow_id}:sha256:{}", hex(&Sha256::digest(body))),
        };
        self.enqueue(flow_id, &key, event)
            .await
            .map_err(|e| match e {
                crate::EngineError::Store(s) => IngressError::Store(s),
                crate::EngineError::UnknownFlow(f) => IngressError::UnknownFlow(f),
                other => IngressError::BadRequest(other.to_string()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_hex_base64_and_prefix() {
        let sig = sign_hmac_sha256(b"k", b"body");
        assert_eq!(sig.len(), 64);
        assert!(verify_hmac_sha256(b"k", b"body", &sig));
        assert!(verify_hmac_sha256(b"k", b"body", &format!("sha256={sig}")));
        let raw = decode_hex(&sig).expect("hex");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert!(verify_hmac_sha256(b"k", b"body", &b64));
        assert!(!verify_hmac_sha256(b"k", b"body!", &sig));
        assert!(!verify_hmac_sha256(b"other", b"body", &sig));
        assert!(!verify_hmac_sha256(b"k", b"body", "zz"));
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"abc", b"ab"));
    }
}
