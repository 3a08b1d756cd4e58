//! Fault injection: make the sandbox misbehave the ways HighLevel does — errors, latency,
//! 429 storms, dropped connections, lost and duplicated webhooks — globally or per route,
//! set at start (`--fault`) or at run time through the admin API.

use std::time::Duration;

use parking_lot::RwLock;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// One fault rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultRule {
    /// Assigned by the sandbox.
    #[serde(default)]
    pub id: String,
    /// Which requests: an operation id (`contacts.create`), an id prefix ending in `*`
    /// (`contacts.*`), a path prefix starting with `/`, or `*` / absent for all.
    #[serde(default)]
    pub route: Option<String>,
    /// Probability (0–1) that a matching request fails with `status`.
    #[serde(default)]
    pub error_rate: f64,
    /// Status of injected errors (default 500).
    #[serde(default = "default_status")]
    pub status: u16,
    /// Delay added before answering, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Every matching request is answered 429 with rate-limit headers.
    #[serde(default)]
    pub rate_limit_storm: bool,
    /// Probability that the connection is dropped without an answer.
    #[serde(default)]
    pub drop_connection_rate: f64,
    /// Probability that a webhook caused by a matching request is never sent.
    #[serde(default)]
    pub webhook_drop_rate: f64,
    /// Probability that such a webhook is sent twice.
    #[serde(default)]
    pub webhook_duplicate_rate: f64,
    /// Apply to this many matching requests, then remove the rule (absent: forever).
    #[serde(default)]
    pub remaining: Option<u32>,
}

fn default_status() -> u16 {
    500
}

/// What to do to one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Injection {
    /// Added latency.
    pub latency: Duration,
    /// Answer with this status instead of serving.
    pub error: Option<u16>,
    /// Answer 429.
    pub rate_limited: bool,
    /// Drop the connection.
    pub drop_connection: bool,
    /// Probability of dropping each webhook the request causes.
    pub webhook_drop_rate: f64,
    /// Probability of duplicating each webhook the request causes.
    pub webhook_duplicate_rate: f64,
}

/// The active rules.
#[derive(Debug, Default)]
pub struct Faults {
    rules: RwLock<Vec<FaultRule>>,
    next: std::sync::atomic::AtomicU64,
}

fn matches(route: Option<&str>, op_id: &str, path: &str) -> bool {
    match route {
        None | Some("*") | Some("") => true,
        Some(r) if r.starts_with('/') => path.starts_with(r),
        Some(r) => match r.strip_suffix('*') {
            Some(prefix) => op_id.starts_with(prefix),
            None => r == op_id,
        },
    }
}

impl Faults {
    /// Adds a rule, returning its id. Rates are clamped to 0–1.
    pub fn add(&self, mut rule: FaultRule) -> Result<String, String> {
        for (name, rate) in [
            ("errorRate", rule.error_rate),
            ("dropConnectionRate", rule.drop_connection_rate),
            ("webhookDropRate", rule.webhook_drop_rate),
            ("webhookDuplicateRate", rule.webhook_duplicate_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        if !(100..=599).contains(&rule.status) {
            return Err(format!(
                "status must be an HTTP status, got {}",
                rule.status
            ));
        }
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        rule.id = format!("fault-{n}");
        let id = rule.id.clone();
        self.rules.write().push(rule);
        Ok(id)
    }

    /// Every active rule.
    pub fn list(&self) -> Vec<FaultRule> {
        self.rules.read().clone()
    }

    /// Removes one rule; false when unknown.
    pub fn remove(&self, id: &str) -> bool {
        let mut rules = self.rules.write();
        let before = rules.len();
        rules.retain(|r| r.id != id);
        rules.len() != before
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.rules.write().clear();
    }

    /// Decides what happens to a request for `op_id` at `path`.
    pub fn decide(&self, op_id: &str, path: &str) -> Injection {
        let mut inj = Injection::default();
        if self.rules.read().is_empty() {
            return inj;
        }
        let mut rng = rand::rng();
        let mut rules = self.rules.write();
        for rule in rules.iter_mut() {
            if !matches(rule.route.as_deref(), op_id, path) {
                continue;
            }
            if let Some(n) = rule.remaining.as_mut() {
                if *n == 0 {
                    continue;
                }
                *n -= 1;
            }
            inj.latency += Duration::from_millis(rule.latency_ms);
            inj.rate_limited |= rule.rate_limit_storm;
            if rule.error_rate > 0.0 && rng.random_bool(rule.error_rate) {
                inj.error = Some(rule.status);
            }
            if rule.drop_connection_rate > 0.0 && rng.random_bool(rule.drop_connection_rate) {
                inj.drop_connection = true;
            }
            inj.webhook_drop_rate = inj.webhook_drop_rate.max(rule.webhook_drop_rate);
            inj.webhook_duplicate_rate =
                inj.webhook_duplicate_rate.max(rule.webhook_duplicate_rate);
        }
        rules.retain(|r| r.remaining != Some(0));
        inj
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(route: &str) -> FaultRule {
        FaultRule {
            id: String::new(),
            route: Some(route.into()),
            error_rate: 1.0,
            status: 503,
            latency_ms: 0,
            rate_limit_storm: false,
            drop_connection_rate: 0.0,
            webhook_drop_rate: 0.0,
            webhook_duplicate_rate: 0.0,
            remaining: Some(2),
        }
    }

    #[test]
    fn routes_and_counts() {
        let f = Faults::default();
        f.add(rule("contacts.*")).expect("valid");
        assert_eq!(f.decide("users.get", "/users/x").error, None);
        assert_eq!(f.decide("contacts.get", "/contacts/x").error, Some(503));
        assert_eq!(f.decide("contacts.create", "/contacts/").error, Some(503));
        assert_eq!(f.decide("contacts.get", "/contacts/x").error, None);
        assert!(f.list().is_empty());
        let mut bad = rule("*");
        bad.error_rate = 2.0;
        assert!(f.add(bad).is_err());
        assert!(matches(Some("/contacts"), "x", "/contacts/abc"));
    }
}
