//! What processes sharing one database coordinate through the store: turns of periodic
//! triggers ([`TriggerTurn`]) and each location's rate budget ([`RateBudget`] slots).
//!
//! Both live in tables of migration `0004_cluster` (`trigger_turns`, `rate_slots`,
//! `rate_daily`). The PostgreSQL backend implements them with row locks
//! (`FOR UPDATE SKIP LOCKED`, upserts whose `WHERE` decides who wins) and the database's
//! clock, so processes on machines with slightly different clocks still agree.

use std::time::Duration;

/// The answer of [`crate::store::Store::take_trigger_turn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerTurn {
    /// This caller has the turn: fire the trigger now. The next turn is due one interval
    /// later.
    Taken,
    /// Another process took the current turn; the next one is due in this long.
    NotDue(Duration),
}

/// A pacing key's shared rate budget: at most `burst` requests within any window of
/// `interval`, and `daily` per UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateBudget {
    /// Requests per window.
    pub burst: u32,
    /// The window.
    pub interval: Duration,
    /// Requests per UTC day.
    pub daily: u32,
    /// Added to every window to absorb clock granularity.
    pub margin: Duration,
    /// How long a request whose answer is never reported (its process died) keeps its
    /// slot: at least the request timeout plus the interval.
    pub in_flight: Duration,
}

impl RateBudget {
    /// HighLevel's published limits (100 per 10 s, 200,000 per day), with a request timeout
    /// of `timeout`.
    pub fn highlevel(timeout: Duration) -> Self {
        Self::new(100, Duration::from_secs(10), 200_000, timeout)
    }

    /// A budget of `burst` per `interval` and `daily` per day, for requests that time out
    /// after `timeout`.
    pub fn new(burst: u32, interval: Duration, daily: u32, timeout: Duration) -> Self {
        let margin = (interval / 1000).clamp(Duration::from_millis(1), Duration::from_millis(10));
        Self {
            burst: burst.max(1),
            interval,
            daily,
            margin,
            in_flight: interval + timeout + margin,
        }
    }

    /// How long an answered request keeps its slot.
    pub fn hold_after_answer(&self) -> Duration {
        self.interval + self.margin
    }
}

/// The answer of [`crate::store::Store::take_rate_slot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotTake {
    /// This slot is held for the caller until it reports the answer.
    Taken(u32),
    /// Every slot is busy; none frees up before this long.
    Wait(Duration),
    /// The day's budget is used up; it resets in this long.
    DailyExhausted(Duration),
}

/// What the answer to a request that held a slot said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotAnswer {
    /// It was a 429: the whole window is taken to be full.
    pub limited: bool,
    /// `X-RateLimit-Remaining` was 0: the whole window is taken to be full.
    pub exhausted: bool,
}

/// The UTC day number (days since 1970-01-01) and the time until the next UTC midnight.
pub(crate) fn utc_day(now_ms: i64) -> (i64, Duration) {
    let day = now_ms.div_euclid(86_400_000);
    let left = 86_400_000 - now_ms.rem_euclid(86_400_000);
    (day, Duration::from_millis(u64::try_from(left).unwrap_or(0)))
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_and_days() {
        let b = RateBudget::new(20, Duration::from_secs(2), 1000, Duration::from_secs(30));
        assert_eq!(b.margin, Duration::from_millis(2));
        assert_eq!(b.hold_after_answer(), Duration::from_millis(2002));
        assert_eq!(b.in_flight, Duration::from_millis(32_002));
        assert_eq!(RateBudget::highlevel(Duration::from_secs(30)).burst, 100);
        let (day, left) = utc_day(86_400_000 + 1_000);
        assert_eq!((day, left), (1, Duration::from_millis(86_399_000)));
    }
}
