//! Cron schedules, and the loop that runs polls and schedules on time.
//!
//! A schedule fires once per tick: the dedupe key `schedule:<flow>:<tick>` makes a second
//! firing of the same tick (another process, a restart) a no-op. Ticks missed for longer
//! than [`MISSED_TICK_GRACE`] (the engine was down) are not fired late.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineError};
use crate::store::{NewEvent, RunId};
use crate::validate::{CompiledTrigger, Zone};

/// How late a tick may still be fired.
pub const MISSED_TICK_GRACE: Duration = Duration::from_secs(120);

/// The latest tick of `cron` at or before `now`, in the schedule's time zone.
fn last_tick(cron: &croner::Cron, zone: Zone, now: OffsetDateTime) -> Option<OffsetDateTime> {
    match zone {
        Zone::Fixed(offset) => last_tick_in(cron, &offset, now),
        Zone::Named(tz) => last_tick_in(cron, &tz, now),
    }
}

fn last_tick_in<Tz: chrono::TimeZone>(
    cron: &croner::Cron,
    tz: &Tz,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    let local = chrono::DateTime::from_timestamp(now.unix_timestamp(), 0)?.with_timezone(tz);
    let tick = cron.find_previous_occurrence(&local, true).ok()?;
    OffsetDateTime::from_unix_timestamp(tick.timestamp()).ok()
}

impl Engine {
    /// Enqueues a run for every enabled schedule flow whose latest tick at or before `now`
    /// is at most [`MISSED_TICK_GRACE`] old (deduped per tick).
    pub async fn fire_due_schedules(&self, now: OffsetDateTime) -> Result<Vec<RunId>, EngineError> {
        let mut batch = Vec::new();
        for flow in self.flows() {
            let CompiledTrigger::Schedule { cron, zone } = &flow.trigger else {
                continue;
            };
            if !flow.flow.enabled {
                continue;
            }
            let Some(tick) = last_tick(cron, *zone, now) else {
                continue;
            };
            if now - tick > MISSED_TICK_GRACE {
                continue;
            }
            let tick_text = tick.format(&Rfc3339).unwrap_or_default();
            batch.push(NewEvent {
                flow_id: flow.id().to_owned(),
                dedupe_key: format!("schedule:{}:{tick_text}", flow.id()),
                payload: json!({
                    "scheduled_at": tick_text,
                    "fired_at": now.format(&Rfc3339).unwrap_or_default(),
                }),
                seen_key: None,
            });
        }
        self.enqueue_many(batch).await
    }

    /// Polls flow `flow_id` if its turn is due: across every process sharing the store,
    /// exactly one caller per `every` takes the turn (see [`crate::cluster`]) and polls.
    /// `Err(wait)`: another process took the current turn; the next is due in `wait`. A
    /// store that cannot be asked counts as a turn taken (at worst a poll repeats, and its
    /// items are deduped).
    pub async fn poll_if_due(
        &self,
        flow_id: &str,
        every: Duration,
    ) -> Result<Result<crate::PollReport, EngineError>, Duration> {
        let key = format!("poll:{flow_id}");
        match self
            .store()
            .take_trigger_turn(&key, &self.inner.config.worker_name, every)
            .await
        {
            Ok(crate::store::TriggerTurn::Taken) => {}
            Ok(crate::store::TriggerTurn::NotDue(wait)) => return Err(wait),
            Err(e) => {
                tracing::warn!(flow = flow_id, error = %e, "could not take the poll's turn; polling anyway")
            }
        }
        Ok(self.poll_once(flow_id).await)
    }

    /// Runs schedules (checked every second) and polls (each flow every
    /// `interval_minutes`, the first time at once unless another process sharing the store
    /// polled within the interval) until `shutdown` is cancelled. Errors are logged and
    /// retried at the next interval.
    pub async fn run_triggers(&self, shutdown: CancellationToken) {
        let mut next_poll: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.fire_due_schedules(OffsetDateTime::now_utc()).await {
                tracing::error!(error = %e, "firing schedules failed");
            }
            let now = tokio::time::Instant::now();
            for (flow_id, every) in self.polling_flows() {
                let due = next_poll.get(&flow_id).is_none_or(|at| *at <= now);
                if !due {
                    continue;
                }
                if shutdown.is_cancelled() {
                    return;
                }
                match self.poll_if_due(&flow_id, every).await {
                    Ok(Ok(r)) => {
                        next_poll.insert(flow_id.clone(), now + every);
                        if r.enqueued > 0 {
                            tracing::info!(flow = %flow_id, enqueued = r.enqueued, fetched = r.fetched, "poll");
                        }
                    }
                    // Another process (sharing the store) took this turn.
                    Err(wait) => {
                        next_poll.insert(flow_id.clone(), now + wait.min(every));
                    }
                    Ok(Err(e)) => {
                        next_poll.insert(flow_id.clone(), now + every);
                        tracing::warn!(flow = %flow_id, error = %e, "poll failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn last_tick_in_an_offset() {
        let cron = croner::Cron::from_str("0 9 * * *").expect("cron");
        let now = OffsetDateTime::parse("2025-03-10T08:30:00Z", &Rfc3339).expect("time");
        let plus2 = chrono::FixedOffset::east_opt(2 * 3600).expect("offset");
        // 09:00 at +02:00 is 07:00Z, so the last tick is today 07:00Z.
        let t = last_tick(&cron, Zone::Fixed(plus2), now).expect("tick");
        assert_eq!(
            t,
            OffsetDateTime::parse("2025-03-10T07:00:00Z", &Rfc3339).expect("time")
        );
        let utc = chrono::FixedOffset::east_opt(0).expect("offset");
        let t = last_tick(&cron, Zone::Fixed(utc), now).expect("tick");
        assert_eq!(
            t,
            OffsetDateTime::parse("2025-03-09T09:00:00Z", &Rfc3339).expect("time")
        );
    }

    #[test]
    fn named_zones_follow_daylight_saving() {
        let at = |s: &str| OffsetDateTime::parse(s, &Rfc3339).expect("time");
        let cron = croner::Cron::from_str("0 9 * * *").expect("cron");
        let chicago = Zone::Named(chrono_tz::America::Chicago);
        // 09:00 in Chicago is 15:00Z in winter (CST, -6) and 14:00Z in summer (CDT, -5);
        // US daylight saving started on 2025-03-09.
        assert_eq!(
            last_tick(&cron, chicago, at("2025-03-08T16:00:00Z")),
            Some(at("2025-03-08T15:00:00Z"))
        );
        assert_eq!(
            last_tick(&cron, chicago, at("2025-03-10T16:00:00Z")),
            Some(at("2025-03-10T14:00:00Z"))
        );
        // Paris (CET +1 / CEST +2, change on 2025-03-30).
        let paris = Zone::Named(chrono_tz::Europe::Paris);
        assert_eq!(
            last_tick(&cron, paris, at("2025-03-29T12:00:00Z")),
            Some(at("2025-03-29T08:00:00Z"))
        );
        assert_eq!(
            last_tick(&cron, paris, at("2025-03-31T12:00:00Z")),
            Some(at("2025-03-31T07:00:00Z"))
        );
    }
}
