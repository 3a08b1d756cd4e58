//! Polling a HighLevel list operation (poll triggers and webhook backfills).
//!
//! Every item of every page is read through [`crate::HighLevelApi::paginate`]. Mode `new`
//! starts a run for each item whose id this flow never saw (ids are kept in `seen_items`
//! with no cap, in the same transaction as the event); mode `updated` starts a run for each
//! item whose `updated_field` is later than the stored watermark, and then advances the
//! watermark. The first poll of a flow only records what exists, unless `include_existing`.

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{field_text, item_key};
use crate::engine::{Engine, EngineError};
use crate::flow::PollMode;
use crate::store::{Cursor, NewEvent};
use crate::template;
use crate::validate::{CompiledFlow, CompiledPoll, CompiledTrigger};

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PollReport {
    /// Items read.
    pub fetched: u64,
    /// Runs started.
    pub enqueued: u64,
    /// Whether this was the flow's first (baseline) poll.
    pub baseline: bool,
}

/// Items enqueued per transaction.
const BATCH: usize = 200;

fn poll_of(flow: &CompiledFlow) -> Option<&CompiledPoll> {
    match &flow.trigger {
        CompiledTrigger::Poll(p) => Some(p),
        CompiledTrigger::HighlevelWebhook { backfill, .. } => backfill.as_ref(),
        _ => None,
    }
}

/// Compares two timestamps: as RFC 3339 instants when both parse, else as text.
fn later(a: &str, b: &str) -> bool {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    match (
        OffsetDateTime::parse(a, &Rfc3339),
        OffsetDateTime::parse(b, &Rfc3339),
    ) {
        (Ok(x), Ok(y)) => x > y,
        _ => a > b,
    }
}

impl Engine {
    /// Polls flow `flow_id` once (its poll trigger, or its webhook backfill) and enqueues
    /// runs for new or updated items.
    pub async fn poll_once(&self, flow_id: &str) -> Result<PollReport, EngineError> {
        let flow = self
            .flow(flow_id)
            .ok_or_else(|| EngineError::UnknownFlow(flow_id.to_owned()))?;
        let poll = poll_of(&flow)
            .ok_or_else(|| EngineError::Config(format!("flow `{flow_id}` does not poll")))?;
        // A flow whose HighLevel connection is broken is paused: no poll until it is fixed.
        if let Some(reason) = self.paused_by(&flow, false).await {
            tracing::debug!(flow = flow_id, reason, "poll skipped");
            return Ok(PollReport {
                fetched: 0,
                enqueued: 0,
                baseline: false,
            });
        }
        let def = &flow.flow;
        let mut ctx = json!({
            "flow": { "id": def.id, "name": def.name, "connection": def.connection, "location_id": Value::Null },
            "event": {},
            "trigger": { "type": def.trigger.kind(), "flow": def.id },
        });
        if let Some(loc) = &flow.location_id {
            let v = loc
                .render(&flow.templates, &template::context(&ctx))
                .map_err(|e| EngineError::Config(format!("flow `{flow_id}` location_id: {e}")))?;
            ctx["flow"]["location_id"] = v;
        }
        let location = ctx["flow"]["location_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut params = match poll
            .params
            .render(&flow.templates, &template::context(&ctx))
            .map_err(|e| EngineError::Config(format!("flow `{flow_id}` poll params: {e}")))?
        {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        if poll.op.param("locationId").is_some()
            && !params.contains_key("locationId")
            && !location.is_empty()
        {
            params.insert("locationId".into(), Value::String(location.clone()));
        }

        let store = self.store();
        let cursor = store.get_cursor(flow_id, &location).await?;
        let baseline = cursor.is_none() && !poll.config.include_existing;
        let watermark = cursor.as_ref().and_then(|c| c.watermark.clone());
        let mut newest = watermark.clone();
        let mut report = PollReport {
            baseline,
            ..PollReport::default()
        };
        let mut batch = Vec::new();
        let mut seen = Vec::new();
        let mut items =
            self.inner
                .highlevel
                .paginate(&def.connection, poll.op, Value::Object(params));
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| {
                EngineError::Config(format!("poll of `{flow_id}` ({}) failed: {e}", poll.op.id))
            })?;
            report.fetched += 1;
            let Some(id) = field_text(&item, &poll.config.id_field) else {
                continue;
            };
            match poll.config.mode {
                PollMode::New => {
                    if baseline {
                        seen.push(id);
                    } else {
                        batch.push(NewEvent {
                            flow_id: flow_id.to_owned(),
                            dedupe_key: item_key(flow_id, &id, None),
                            payload: item,
                            seen_key: Some(id),
                        });
                    }
                }
                PollMode::Updated => {
                    let Some(updated) = field_text(&item, &poll.config.updated_field) else {
                        continue;
                    };
                    if newest.as_deref().is_none_or(|n| later(&updated, n)) {
                        newest = Some(updated.clone());
                    }
                    let is_new = watermark.as_deref().is_none_or(|w| later(&updated, w));
                    if is_new && !baseline {
                        batch.push(NewEvent {
                            flow_id: flow_id.to_owned(),
                            dedupe_key: item_key(flow_id, &id, Some(&updated)),
                            payload: item,
                            seen_key: None,
                        });
                    }
                }
            }
            if batch.len() >= BATCH {
                report.enqueued +=
                    self.enqueue_many(std::mem::take(&mut batch)).await?.len() as u64;
            }
            if seen.len() >= BATCH {
                store.mark_seen(flow_id, &std::mem::take(&mut seen)).await?;
            }
        }
        drop(items);
        report.enqueued += self.enqueue_many(batch).await?.len() as u64;
        if !seen.is_empty() {
            store.mark_seen(flow_id, &seen).await?;
        }
        let next = Cursor {
            cursor: Some(json!({ "last_poll": time::OffsetDateTime::now_utc().unix_timestamp() })),
            watermark: newest,
        };
        store.set_cursor(flow_id, &location, &next).await?;
        tracing::debug!(flow = flow_id, ?report, "polled");
        Ok(report)
    }

    /// Flows that poll (poll triggers and webhook backfills), with their interval.
    pub(crate) fn polling_flows(&self) -> Vec<(String, std::time::Duration)> {
        self.flows()
            .iter()
            .filter(|f| f.flow.enabled)
            .filter_map(|f| {
                poll_of(f).map(|p| {
                    (
                        f.id().to_owned(),
                        std::time::Duration::from_secs(
                            u64::from(p.config.interval_minutes.clamp(1, 15)) * 60,
                        ),
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::later;

    #[test]
    fn timestamps_compare_as_instants() {
        assert!(later("2025-01-02T00:00:00Z", "2025-01-01T23:00:00Z"));
        assert!(later(
            "2025-01-01T10:00:00+00:00",
            "2025-01-01T11:00:00+02:00"
        ));
        assert!(!later("2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z"));
    }
}
