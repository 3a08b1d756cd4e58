//! Ingress counters, and the internal events that both log and count them (one function
//! per event, so a rejection can never be logged without being counted or the reverse).
//!
//! Served as Prometheus text at `GET /metrics` and as [`Metrics`] from
//! [`crate::ServerState::metrics`].

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use hlbridge_engine::IngressError;
use serde::Serialize;

use crate::lookup::LookupStats;

/// Where an inbound webhook came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `POST /hooks/highlevel`.
    HighLevel,
    /// `POST /hooks/app/{flow}`.
    App,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::HighLevel => "highlevel",
            Source::App => "app",
        }
    }
}

/// Counts of one ingress endpoint's outcomes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngressCounts {
    /// Accepted (verified and stored), duplicates excluded.
    pub accepted: u64,
    /// Runs those started.
    pub runs_started: u64,
    /// Already seen (same webhookId or dedupe key): answered 200, no run started.
    pub duplicates: u64,
    /// Missing, malformed or wrong signature or secret (forged).
    pub unauthorized: u64,
    /// Outside the replay window.
    pub stale: u64,
    /// Not JSON, no event type…
    pub bad_request: u64,
    /// No flow takes it.
    pub unknown_flow: u64,
    /// The store was unavailable (the sender was told to retry).
    pub unavailable: u64,
}

/// Every counter of the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Metrics {
    /// `POST /hooks/highlevel`.
    pub highlevel: IngressCounts,
    /// `POST /hooks/app/{flow}`.
    pub app: IngressCounts,
    /// The contact lookup.
    pub lookup: LookupStats,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    runs_started: AtomicU64,
    duplicates: AtomicU64,
    unauthorized: AtomicU64,
    stale: AtomicU64,
    bad_request: AtomicU64,
    unknown_flow: AtomicU64,
    unavailable: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> IngressCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IngressCounts {
            accepted: l(&self.accepted),
            runs_started: l(&self.runs_started),
            duplicates: l(&self.duplicates),
            unauthorized: l(&self.unauthorized),
            stale: l(&self.stale),
            bad_request: l(&self.bad_request),
            unknown_flow: l(&self.unknown_flow),
            unavailable: l(&self.unavailable),
        }
    }
}

/// The ingress counters of both endpoints.
#[derive(Default)]
pub(crate) struct IngressMetrics {
    highlevel: Counters,
    app: Counters,
}

fn peer_text(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "-".to_owned(), |p| p.ip().to_string())
}

impl IngressMetrics {
    fn of(&self, source: Source) -> &Counters {
        match source {
            Source::HighLevel => &self.highlevel,
            Source::App => &self.app,
        }
    }

    /// An event was accepted and started `runs` runs.
    pub(crate) fn accepted(&self, source: Source, runs: usize) {
        let c = self.of(source);
        c.accepted.fetch_add(1, Ordering::Relaxed);
        c.runs_started.fetch_add(runs as u64, Ordering::Relaxed);
    }

    /// A verified event was a copy of one already stored (HighLevel's duplicate delivery, an
    /// app's resend, or a replay of a captured webhook): logged and counted, no run.
    pub(crate) fn duplicate(
        &self,
        source: Source,
        peer: Option<SocketAddr>,
        flow: Option<&str>,
        id: Option<&str>,
    ) {
        self.of(source).duplicates.fetch_add(1, Ordering::Relaxed);
        let (peer, flow, id) = (peer_text(peer), flow.unwrap_or("-"), id.unwrap_or("-"));
        match source {
            // A signed HighLevel webhook seen before is either HighLevel's duplicate delivery
            // or a replay of a captured one: worth a warning.
            Source::HighLevel => tracing::warn!(
                target: "hlbridge::ingress",
                source = source.as_str(),
                %peer,
                id,
                reason = "duplicate",
                "webhook already seen (duplicate delivery or replay); no run started"
            ),
            // Apps resend after a lost answer; that is normal.
            Source::App => tracing::info!(
                target: "hlbridge::ingress",
                source = source.as_str(),
                %peer,
                flow,
                reason = "duplicate",
                "webhook already seen; no run started"
            ),
        }
    }

    /// An event was refused: logged and counted by reason.
    pub(crate) fn rejected(
        &self,
        source: Source,
        peer: Option<SocketAddr>,
        flow: Option<&str>,
        err: &IngressError,
    ) {
        let c = self.of(source);
        let (counter, reason) = match err {
            IngressError::Unauthorized(_) => (&c.unauthorized, "unauthorized"),
            IngressError::Stale(_) => (&c.stale, "stale"),
            IngressError::BadRequest(_) => (&c.bad_request, "bad_request"),
            IngressError::UnknownFlow(_) => (&c.unknown_flow, "unknown_flow"),
            IngressError::Store(_) => (&c.unavailable, "unavailable"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            target: "hlbridge::ingress",
            source = source.as_str(),
            peer = %peer_text(peer),
            flow = flow.unwrap_or("-"),
            reason,
            error = %err,
            "webhook rejected"
        );
    }

    pub(crate) fn snapshot(&self, source: Source) -> IngressCounts {
        self.of(source).snapshot()
    }
}

/// Renders the counters in the Prometheus text format.
pub(crate) fn prometheus(m: &Metrics) -> String {
    let mut out = String::new();
    out.push_str("# HELP hlbridge_ingress_total Inbound webhooks by source and outcome.\n");
    out.push_str("# TYPE hlbridge_ingress_total counter\n");
    for (source, c) in [("highlevel", &m.highlevel), ("app", &m.app)] {
        for (outcome, n) in [
            ("accepted", c.accepted),
            ("duplicate", c.duplicates),
            ("unauthorized", c.unauthorized),
            ("stale", c.stale),
            ("bad_request", c.bad_request),
            ("unknown_flow", c.unknown_flow),
            ("unavailable", c.unavailable),
        ] {
            let _ = writeln!(
                out,
                "hlbridge_ingress_total{{source=\"{source}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    out.push_str("# HELP hlbridge_ingress_runs_started_total Runs started by inbound webhooks.\n");
    out.push_str("# TYPE hlbridge_ingress_runs_started_total counter\n");
    for (source, c) in [("highlevel", &m.highlevel), ("app", &m.app)] {
        let _ = writeln!(
            out,
            "hlbridge_ingress_runs_started_total{{source=\"{source}\"}} {}",
            c.runs_started
        );
    }
    out.push_str("# HELP hlbridge_lookup_total Contact lookups and cache events.\n");
    out.push_str("# TYPE hlbridge_lookup_total counter\n");
    let l = &m.lookup;
    for (event, n) in [
        ("hit", l.hits),
        ("miss", l.misses),
        ("coalesced", l.coalesced),
        ("invalidation", l.invalidations),
        ("refresh", l.refreshes),
        ("error", l.errors),
    ] {
        let _ = writeln!(out, "hlbridge_lookup_total{{event=\"{event}\"}} {n}");
    }
    out.push_str("# HELP hlbridge_lookup_cache_entries Contacts in the lookup cache.\n");
    out.push_str("# TYPE hlbridge_lookup_cache_entries gauge\n");
    let _ = writeln!(out, "hlbridge_lookup_cache_entries {}", l.entries);
    out
}

/// What `/metrics` adds from the store and the engine's [`crate::telemetry::Telemetry`].
#[derive(Debug, Clone, Default)]
pub struct EngineMetrics {
    /// Runs by state (all flows); `None` when the store did not answer.
    pub runs_by_state: Option<Vec<(hlbridge_engine::RunState, u64)>>,
    /// Step latencies.
    pub step_latency: crate::telemetry::Histogram,
    /// HighLevel calls by status.
    pub calls_by_status: std::collections::BTreeMap<String, u64>,
    /// 429s received.
    pub rate_limited: u64,
    /// Remaining budget per location.
    pub budgets: Vec<crate::telemetry::Budget>,
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the engine metrics in the Prometheus text format: runs by state, queue depth,
/// the step latency histogram, HighLevel calls by status, 429s received, budget remaining
/// per location, and webhook signature failures (from the ingress counters).
pub(crate) fn prometheus_engine(m: &Metrics, e: &EngineMetrics) -> String {
    let mut out = String::new();
    if let Some(runs) = &e.runs_by_state {
        out.push_str("# HELP hlbridge_runs Runs by state (all flows).\n");
        out.push_str("# TYPE hlbridge_runs gauge\n");
        for s in hlbridge_engine::RunState::ALL {
            let n = runs.iter().find(|(st, _)| *st == s).map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "hlbridge_runs{{state=\"{}\"}} {n}", s.as_str());
        }
        let depth: u64 = runs
            .iter()
            .filter(|(s, _)| {
                matches!(
                    s,
                    hlbridge_engine::RunState::Queued | hlbridge_engine::RunState::Failed
                )
            })
            .map(|(_, n)| n)
            .sum();
        out.push_str(
            "# HELP hlbridge_queue_depth Runs waiting for a worker (queued, or failed and waiting for a retry).\n",
        );
        out.push_str("# TYPE hlbridge_queue_depth gauge\n");
        let _ = writeln!(out, "hlbridge_queue_depth {depth}");
    }
    out.push_str("# HELP hlbridge_step_duration_seconds How long steps took.\n");
    out.push_str("# TYPE hlbridge_step_duration_seconds histogram\n");
    let h = &e.step_latency;
    for (i, b) in crate::telemetry::LATENCY_BUCKETS.iter().enumerate() {
        let n = h.buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "hlbridge_step_duration_seconds_bucket{{le=\"{b}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "hlbridge_step_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(out, "hlbridge_step_duration_seconds_sum {}", h.sum);
    let _ = writeln!(out, "hlbridge_step_duration_seconds_count {}", h.count);
    out.push_str(
        "# HELP hlbridge_highlevel_calls_total HighLevel calls by final status (after the client's own retries; `error`: no answer).\n",
    );
    out.push_str("# TYPE hlbridge_highlevel_calls_total counter\n");
    for (status, n) in &e.calls_by_status {
        let _ = writeln!(
            out,
            "hlbridge_highlevel_calls_total{{status=\"{}\"}} {n}",
            escape_label(status)
        );
    }
    out.push_str(
        "# HELP hlbridge_highlevel_429_total 429 (rate limited) answers HighLevel gave the engine.\n",
    );
    out.push_str("# TYPE hlbridge_highlevel_429_total counter\n");
    let _ = writeln!(out, "hlbridge_highlevel_429_total {}", e.rate_limited);
    out.push_str(
        "# HELP hlbridge_budget_remaining HighLevel rate-limit budget left per location (window: burst or daily).\n",
    );
    out.push_str("# TYPE hlbridge_budget_remaining gauge\n");
    for b in &e.budgets {
        let loc = escape_label(&b.location);
        let _ = writeln!(
            out,
            "hlbridge_budget_remaining{{location=\"{loc}\",window=\"burst\"}} {}",
            b.burst_remaining
        );
        let _ = writeln!(
            out,
            "hlbridge_budget_remaining{{location=\"{loc}\",window=\"daily\"}} {}",
            b.daily_remaining
        );
    }
    out.push_str(
        "# HELP hlbridge_webhook_signature_failures_total Inbound webhooks refused for a missing or wrong signature or secret.\n",
    );
    out.push_str("# TYPE hlbridge_webhook_signature_failures_total counter\n");
    for (source, c) in [("highlevel", &m.highlevel), ("app", &m.app)] {
        let _ = writeln!(
            out,
            "hlbridge_webhook_signature_failures_total{{source=\"{source}\"}} {}",
            c.unauthorized
        );
    }
    out
}
