//! Pacing: keep every location (and company) under HighLevel's rate limits by waiting
//! before a request is sent, instead of receiving 429s.
//!
//! HighLevel allows, per app and per location or company, `burst` requests per `interval`
//! (100 per 10 s) and `daily` requests per day (200,000). Each pacing key gets its own
//! [`PacingConfig`]-shaped budget; callers `await` their slot.
//!
//! # The limiter
//!
//! The burst limit is enforced as *at most `burst` requests in any window of `interval`*: a
//! log of send times (reserved slots, possibly in the future) per key, where request `n` may
//! go at `max(now, t[n - burst] + interval + margin)`. This is the virtual-scheduling (GCRA)
//! idea with one theoretical arrival time per slot of the burst rather than one for the
//! whole bucket, and it was chosen over a single-TAT GCRA (emission `interval/burst`,
//! tolerance `interval - emission`) on purpose: that GCRA admits a full burst *and then* one
//! request every emission interval, i.e. up to `2 * burst - 1` requests within one interval,
//! which a server counting requests per window (fixed or sliding, as HighLevel's
//! `X-RateLimit-Remaining` / `X-RateLimit-Interval-Milliseconds` suggest) answers with 429s.
//! Any sequence the log admits also conforms to that GCRA (for `i < j`,
//! `t_j - t_i >= floor((j-i)/burst) * interval >= (j-i) * emission - tolerance`), so the log is
//! never looser than the GCRA and has the same long-run rate and the same floor (`N` calls
//! take `ceil(N/burst - 1)` intervals).
//!
//! Slots are handed out first come, first served at reservation time, so 1,000 concurrent
//! callers line up in order without a thundering herd. `margin` (1 % of the interval,
//! between 2 ms and 250 ms) absorbs the jitter between our send time and the server's
//! arrival time.
//!
//! # Corrections from the server
//!
//! Every response's `X-RateLimit-*` headers correct the estimate, but can only make us
//! slower, never faster than the configuration:
//! - `X-RateLimit-Max` lower than the configured burst, or `X-RateLimit-Interval-Milliseconds`
//!   longer than the configured interval, are adopted for that key.
//! - `X-RateLimit-Remaining` lower than we expect (other apps' or processes' traffic on the
//!   same budget) adds the difference as phantom sends at the time the request was sent.
//!   Answers older than one interval are ignored as stale.
//! - A 429 marks the window of that request as full.
//! - `X-RateLimit-Limit-Daily` lower than configured is adopted; `X-RateLimit-Daily-Remaining`
//!   lower than expected raises the day's count (0 means exhausted).
//!
//! # The daily budget
//!
//! Counted per **calendar day in UTC** (HighLevel does not document when its daily counter
//! resets; the headers correct us if it is another boundary). When it is used up a call
//! fails at once with [`Error::DailyBudgetExhausted`](crate::Error::DailyBudgetExhausted),
//! which is not retried.
//!
//! # Testing without sleeping
//!
//! The limiter state ([`KeyLimiter`]) is plain data whose methods take `now` (a
//! [`tokio::time::Instant`]) and the UTC day number explicitly; the async [`Pacer`] only
//! reads the clock and sleeps with tokio, so tests can also pause tokio's clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::HeaderMap;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::error::Error;

/// The pacing key used when a call names no location or company and the token knows none.
pub const GLOBAL_KEY: &str = "global";

/// Rate budget per pacing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacingConfig {
    /// Requests allowed per `interval`. Default 100.
    pub burst: u32,
    /// Length of the burst window. Default 10 s.
    pub interval: Duration,
    /// Requests allowed per UTC calendar day. Default 200,000.
    pub daily: u32,
    /// Pace at all (`false` sends at once; the server's 429s are still retried). Default `true`.
    pub enabled: bool,
}

impl Default for PacingConfig {
    fn default() -> Self {
        PacingConfig {
            burst: 100,
            interval: Duration::from_secs(10),
            daily: 200_000,
            enabled: true,
        }
    }
}

impl PacingConfig {
    /// The safety gap added to each window (1 % of the interval, 2 ms to 250 ms).
    pub fn margin(&self) -> Duration {
        (self.interval / 100).clamp(Duration::from_millis(2), Duration::from_millis(250))
    }
}

/// The `X-RateLimit-*` headers of one response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// `X-RateLimit-Max`: burst size.
    pub max: Option<u32>,
    /// `X-RateLimit-Remaining`: requests left in the current burst window.
    pub remaining: Option<u32>,
    /// `X-RateLimit-Interval-Milliseconds`: burst window length.
    pub interval_ms: Option<u64>,
    /// `X-RateLimit-Limit-Daily`: daily budget.
    pub daily_limit: Option<u32>,
    /// `X-RateLimit-Daily-Remaining`: requests left today.
    pub daily_remaining: Option<u32>,
}

impl RateLimitHeaders {
    /// Reads the headers; `None` when the response carries none of them.
    pub fn from_headers(headers: &HeaderMap) -> Option<RateLimitHeaders> {
        fn num<T: std::str::FromStr>(h: &HeaderMap, name: &str) -> Option<T> {
            h.get(name)?.to_str().ok()?.trim().parse().ok()
        }
        let r = RateLimitHeaders {
            max: num(headers, "x-ratelimit-max"),
            remaining: num(headers, "x-ratelimit-remaining"),
            interval_ms: num(headers, "x-ratelimit-interval-milliseconds"),
            daily_limit: num(headers, "x-ratelimit-limit-daily"),
            daily_remaining: num(headers, "x-ratelimit-daily-remaining"),
        };
        (r != RateLimitHeaders::default()).then_some(r)
    }

    /// The burst window the server reports.
    pub fn interval(&self) -> Option<Duration> {
        self.interval_ms
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
    }
}

/// What is left of one pacing key's budget (an estimate, for UI and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSnapshot {
    /// The pacing key (location or company id, or [`GLOBAL_KEY`]).
    pub key: String,
    /// Burst size in force (configured, or lower if the server said so).
    pub burst: u32,
    /// Burst window in force.
    pub interval: Duration,
    /// Requests that could be sent right now without waiting.
    pub burst_remaining: u32,
    /// How long the next request would wait.
    pub next_slot_in: Duration,
    /// Daily budget in force.
    pub daily_limit: u32,
    /// Requests left today.
    pub daily_remaining: u32,
    /// The last `X-RateLimit-*` headers seen for this key.
    pub last_headers: Option<RateLimitHeaders>,
}

/// A reserved send slot.
#[derive(Debug, Clone)]
pub struct Slot {
    /// When the request may be sent.
    pub at: Instant,
    /// UTC day number the slot was counted in.
    day: i64,
    /// Our own reservations today up to and including this one.
    reserved_seq: u64,
}

/// The day's budget is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyExhausted;

/// Pacing state of one key; pure data, every method takes the time explicitly.
#[derive(Debug, Clone)]
pub struct KeyLimiter {
    cfg_burst: u32,
    cfg_interval: Duration,
    cfg_daily: u32,
    burst: u32,
    interval: Duration,
    margin: Duration,
    /// Send times (past and reserved), sorted; entries older than two intervals are pruned.
    log: VecDeque<Instant>,
    day: i64,
    daily_limit: u32,
    /// Requests counted today (ours, plus what the server says others used).
    daily_used: u64,
    /// Our own reservations today.
    reserved: u64,
    last_headers: Option<RateLimitHeaders>,
}

impl KeyLimiter {
    /// A fresh budget for `config`, on UTC day `day`.
    pub fn new(config: &PacingConfig, day: i64) -> KeyLimiter {
        let burst = config.burst.max(1);
        KeyLimiter {
            cfg_burst: burst,
            cfg_interval: config.interval,
            cfg_daily: config.daily,
            burst,
            interval: config.interval,
            margin: config.margin(),
            log: VecDeque::new(),
            day,
            daily_limit: config.daily,
            daily_used: 0,
            reserved: 0,
            last_headers: None,
        }
    }

    fn roll(&mut self, day: i64) {
        if day != self.day {
            self.day = day;
            self.daily_used = 0;
            self.reserved = 0;
            self.daily_limit = self.cfg_daily;
        }
    }

    fn prune(&mut self, now: Instant) {
        let keep = self.interval * 2 + self.margin;
        while let Some(front) = self.log.front() {
            if *front + keep <= now {
                self.log.pop_front();
            } else {
                break;
            }
        }
    }

    /// When the next request could be sent.
    pub fn next_free(&self, now: Instant) -> Instant {
        let b = self.burst as usize;
        if self.log.len() < b {
            return now;
        }
        let anchor = self.log[self.log.len() - b] + self.interval + self.margin;
        anchor.max(now)
    }

    fn insert(&mut self, t: Instant) {
        let i = self.log.partition_point(|x| *x <= t);
        self.log.insert(i, t);
    }

    /// Sends counted in the window ending at `at`: `(at - interval, at]`.
    pub fn count_in_window(&self, at: Instant) -> u32 {
        let n = self
            .log
            .iter()
            .filter(|e| **e <= at && **e + self.interval > at)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Reserves the next slot (FIFO), counting it against the day.
    pub fn reserve(&mut self, now: Instant, day: i64) -> Result<Slot, DailyExhausted> {
        self.roll(day);
        self.prune(now);
        if self.daily_used >= u64::from(self.daily_limit) {
            return Err(DailyExhausted);
        }
        let at = self.next_free(now);
        self.insert(at);
        self.daily_used += 1;
        self.reserved += 1;
        Ok(Slot {
            at,
            day,
            reserved_seq: self.reserved,
        })
    }

    /// Corrects the estimate from a response to the request sent in `slot`.
    /// `limited` is true for a 429.
    pub fn observe(
        &mut self,
        slot: &Slot,
        headers: Option<&RateLimitHeaders>,
        limited: bool,
        now: Instant,
    ) {
        if let Some(h) = headers {
            if let Some(m) = h.max.filter(|m| *m > 0) {
                self.burst = self.cfg_burst.min(m);
            }
            if let Some(iv) = h.interval() {
                self.interval = self.cfg_interval.max(iv);
            }
            self.last_headers = Some(h.clone());
        }
        // Burst window: only answers to requests sent within the last interval are current.
        if slot.at + self.interval > now {
            let server_used = if limited {
                Some(self.burst)
            } else {
                headers.and_then(|h| {
                    let max = h.max.filter(|m| *m > 0).unwrap_or(self.burst);
                    h.remaining.map(|r| max.saturating_sub(r).min(self.burst))
                })
            };
            if let Some(server_used) = server_used {
                let ours = self.count_in_window(slot.at);
                for _ in 0..server_used.saturating_sub(ours) {
                    self.insert(slot.at);
                }
            }
        }
        // Daily budget.
        if let Some(h) = headers
            && slot.day == self.day
        {
            if let Some(l) = h.daily_limit.filter(|l| *l > 0) {
                self.daily_limit = self.cfg_daily.min(l);
            }
            if let Some(r) = h.daily_remaining {
                let server_limit = h.daily_limit.filter(|l| *l > 0).unwrap_or(self.daily_limit);
                let server_used = u64::from(server_limit.saturating_sub(r));
                // Our requests reserved after this one are not in the server's count yet.
                let later = self.reserved.saturating_sub(slot.reserved_seq);
                self.daily_used = self.daily_used.max(server_used + later);
                if r == 0 {
                    self.daily_used = self.daily_used.max(u64::from(self.daily_limit));
                }
            }
        }
    }

    /// What is left, at `now`.
    pub fn snapshot(&self, key: &str, now: Instant) -> BudgetSnapshot {
        let pending = self
            .log
            .iter()
            .filter(|e| **e + self.interval + self.margin > now)
            .count();
        let pending = u32::try_from(pending).unwrap_or(u32::MAX);
        BudgetSnapshot {
            key: key.to_string(),
            burst: self.burst,
            interval: self.interval,
            burst_remaining: self.burst.saturating_sub(pending),
            next_slot_in: self.next_free(now).saturating_duration_since(now),
            daily_limit: self.daily_limit,
            daily_remaining: u32::try_from(
                u64::from(self.daily_limit).saturating_sub(self.daily_used),
            )
            .unwrap_or(u32::MAX),
            last_headers: self.last_headers.clone(),
        }
    }
}

/// The UTC day number (days since 1970-01-01) of a time.
pub fn utc_day(t: OffsetDateTime) -> i64 {
    t.unix_timestamp().div_euclid(86_400)
}

/// Time until the next UTC midnight.
fn until_utc_midnight(t: OffsetDateTime) -> Duration {
    let secs = 86_400 - t.unix_timestamp().rem_euclid(86_400);
    Duration::from_secs(u64::try_from(secs).unwrap_or(86_400))
}

/// A permission to send one request, from [`Pacer::acquire`].
#[derive(Debug, Clone)]
pub struct Permit {
    key: String,
    slot: Option<Slot>,
}

impl Permit {
    /// The pacing key the request counts against.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Pacing for every key of one client.
#[derive(Debug)]
pub struct Pacer {
    config: PacingConfig,
    keys: Mutex<HashMap<String, KeyLimiter>>,
}

impl Pacer {
    /// A pacer with `config` for every key.
    pub fn new(config: PacingConfig) -> Pacer {
        Pacer {
            config,
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn with_key<R>(&self, key: &str, f: impl FnOnce(&mut KeyLimiter) -> R) -> R {
        let day = utc_day(OffsetDateTime::now_utc());
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = keys.get_mut(key) {
            f(k)
        } else {
            let k = keys
                .entry(key.to_string())
                .or_insert_with(|| KeyLimiter::new(&self.config, day));
            f(k)
        }
    }

    /// Waits for the next slot of `key`; fails at once when the day's budget is used up.
    pub async fn acquire(&self, key: &str) -> Result<Permit, Error> {
        if !self.config.enabled {
            return Ok(Permit {
                key: key.to_string(),
                slot: None,
            });
        }
        let now_utc = OffsetDateTime::now_utc();
        let day = utc_day(now_utc);
        let reserved = self.with_key(key, |k| k.reserve(Instant::now(), day));
        match reserved {
            Ok(slot) => {
                if slot.at > Instant::now() {
                    tokio::time::sleep_until(slot.at).await;
                }
                Ok(Permit {
                    key: key.to_string(),
                    slot: Some(slot),
                })
            }
            Err(DailyExhausted) => Err(Error::DailyBudgetExhausted {
                key: key.to_string(),
                retry_after: Some(until_utc_midnight(now_utc)),
            }),
        }
    }

    /// Feeds a response's rate-limit headers back (`limited`: the answer was a 429).
    pub fn observe(&self, permit: &Permit, headers: Option<&RateLimitHeaders>, limited: bool) {
        let now = Instant::now();
        match &permit.slot {
            Some(slot) => self.with_key(&permit.key, |k| k.observe(slot, headers, limited, now)),
            None => {
                if let Some(h) = headers {
                    self.with_key(&permit.key, |k| k.last_headers = Some(h.clone()));
                }
            }
        }
    }

    /// What is left of `key`'s budget, if the key has been used.
    pub fn budget(&self, key: &str) -> Option<BudgetSnapshot> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.get(key).map(|k| k.snapshot(key, Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn cfg(burst: u32, interval_ms: u64, daily: u32) -> PacingConfig {
        PacingConfig {
            burst,
            interval: Duration::from_millis(interval_ms),
            daily,
            enabled: true,
        }
    }

    /// Reserves `n` slots at `now` and returns their offsets from `t0` in ms.
    fn reserve_n(k: &mut KeyLimiter, t0: Instant, now: Instant, n: usize) -> Vec<u128> {
        (0..n)
            .map(|_| {
                let s = k.reserve(now, 0).expect("budget");
                s.at.duration_since(t0).as_millis()
            })
            .collect()
    }

    #[test]
    fn burst_then_one_window_later() {
        let c = cfg(100, 1000, 1_000_000);
        assert_eq!(c.margin(), 10 * MS);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let at = reserve_n(&mut k, t0, t0, 250);
        assert!(at[..100].iter().all(|a| *a == 0));
        assert!(at[100..200].iter().all(|a| *a == 1010), "{:?}", &at[100..110]);
        assert!(at[200..].iter().all(|a| *a == 2020));
    }

    #[test]
    fn never_more_than_burst_in_any_window() {
        // Arrivals spread out: the log must never admit burst+1 in one interval.
        let c = cfg(10, 1000, 1_000_000);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let mut sent = Vec::new();
        let mut now = t0;
        for i in 0..200u32 {
            now += MS * (i * 37 % 11);
            sent.push(k.reserve(now, 0).expect("budget").at);
        }
        sent.sort();
        for w in sent.windows(11) {
            assert!(w[10].duration_since(w[0]) >= Duration::from_millis(1000), "window breached");
        }
    }

    #[test]
    fn single_tat_gcra_would_send_twice_the_burst() {
        // Why the log: a GCRA with T = I/B and tau = I - T admits 2B - 1 in one interval.
        let (b, i) = (100u32, Duration::from_secs(1));
        let t = i / b;
        let tau = i - t;
        let t0 = Instant::now();
        let mut tat = t0;
        let mut admitted_in_first_interval = 0;
        let mut now = t0;
        while now < t0 + i {
            if now + tau >= tat {
                tat = tat.max(now) + t;
                admitted_in_first_interval += 1;
            } else {
                now += MS;
            }
        }
        assert_eq!(admitted_in_first_interval, 2 * b - 1);
        // The log admits exactly B in the same interval.
        let mut k = KeyLimiter::new(&cfg(b, 1000, 1_000_000), 0);
        let at = reserve_n(&mut k, t0, t0, 300);
        assert_eq!(at.iter().filter(|a| **a < 1000).count(), 100);
    }

    #[test]
    fn fewer_remaining_than_expected_pushes_later() {
        let c = cfg(100, 1000, 1_000_000);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let s = k.reserve(t0, 0).expect("budget");
        // The server has seen 60 requests from elsewhere: 39 remain after ours.
        let h = RateLimitHeaders {
            max: Some(100),
            remaining: Some(39),
            ..Default::default()
        };
        k.observe(&s, Some(&h), false, t0 + MS);
        let at = reserve_n(&mut k, t0, t0 + MS, 40);
        assert_eq!(at.iter().filter(|a| **a <= 1).count(), 39);
        assert_eq!(*at.last().unwrap_or(&0), 1010);
    }

    #[test]
    fn own_concurrent_answers_do_not_slow_us_down() {
        // 100 sent in one burst, answered out of order: no phantom sends.
        let c = cfg(100, 1000, 1_000_000);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let slots: Vec<Slot> = (0..100).map(|_| k.reserve(t0, 0).expect("budget")).collect();
        for (j, s) in slots.iter().rev().enumerate() {
            let h = RateLimitHeaders {
                max: Some(100),
                remaining: Some(99 - u32::try_from(j).unwrap_or(0)),
                ..Default::default()
            };
            k.observe(s, Some(&h), false, t0 + 2 * MS);
        }
        assert_eq!(k.count_in_window(t0), 100);
        assert_eq!(k.next_free(t0).duration_since(t0), 1010 * MS);
    }

    #[test]
    fn headers_never_make_us_faster() {
        let c = cfg(10, 1000, 1000);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let s = k.reserve(t0, 0).expect("budget");
        let h = RateLimitHeaders {
            max: Some(1000),
            remaining: Some(999),
            interval_ms: Some(100),
            daily_limit: Some(200_000),
            daily_remaining: Some(199_999),
        };
        k.observe(&s, Some(&h), false, t0);
        let snap = k.snapshot("k", t0);
        assert_eq!(snap.burst, 10);
        assert_eq!(snap.interval, Duration::from_secs(1));
        assert_eq!(snap.daily_limit, 1000);
        assert_eq!(snap.daily_remaining, 999);
        // A stricter server is adopted.
        let h = RateLimitHeaders {
            max: Some(5),
            interval_ms: Some(2000),
            ..Default::default()
        };
        k.observe(&s, Some(&h), false, t0);
        let snap = k.snapshot("k", t0);
        assert_eq!((snap.burst, snap.interval), (5, Duration::from_secs(2)));
    }

    #[test]
    fn too_many_requests_fills_the_window() {
        let c = cfg(100, 1000, 1_000_000);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let s = k.reserve(t0, 0).expect("budget");
        k.observe(&s, None, true, t0 + MS);
        assert_eq!(k.next_free(t0 + MS).duration_since(t0), 1010 * MS);
    }

    #[test]
    fn stale_answers_are_ignored() {
        let c = cfg(100, 1000, 1_000_000);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let s = k.reserve(t0, 0).expect("budget");
        k.observe(&s, None, true, t0 + 2000 * MS);
        assert_eq!(k.next_free(t0 + 2000 * MS), t0 + 2000 * MS);
    }

    #[test]
    fn daily_budget_counts_and_resets_by_utc_day() {
        let c = cfg(1000, 1000, 3);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 10);
        for _ in 0..3 {
            assert!(k.reserve(t0, 10).is_ok());
        }
        assert_eq!(k.reserve(t0, 10).err(), Some(DailyExhausted));
        assert!(k.reserve(t0, 11).is_ok(), "a new UTC day resets the count");
    }

    #[test]
    fn daily_remaining_zero_exhausts() {
        let c = cfg(100, 1000, 200_000);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let s = k.reserve(t0, 0).expect("budget");
        let h = RateLimitHeaders {
            daily_remaining: Some(0),
            ..Default::default()
        };
        k.observe(&s, Some(&h), false, t0);
        assert_eq!(k.reserve(t0, 0).err(), Some(DailyExhausted));
    }

    #[test]
    fn daily_correction_does_not_double_count() {
        let c = cfg(1000, 1000, 1000);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let slots: Vec<Slot> = (0..10).map(|_| k.reserve(t0, 0).expect("budget")).collect();
        // Others used 100 today; each answer reports it consistently.
        for (i, s) in slots.iter().enumerate() {
            let h = RateLimitHeaders {
                daily_limit: Some(1000),
                daily_remaining: Some(1000 - 100 - 1 - u32::try_from(i).unwrap_or(0)),
                ..Default::default()
            };
            k.observe(s, Some(&h), false, t0);
        }
        assert_eq!(k.snapshot("k", t0).daily_remaining, 1000 - 110);
    }

    #[test]
    fn utc_midnight() {
        let t = time::macros::datetime!(2024-05-01 23:59:00 UTC);
        assert_eq!(until_utc_midnight(t), Duration::from_secs(60));
        assert_eq!(utc_day(t) + 1, utc_day(t + time::Duration::minutes(1)));
    }

    #[test]
    fn rate_limit_headers_parse() {
        let mut h = HeaderMap::new();
        assert_eq!(RateLimitHeaders::from_headers(&h), None);
        h.insert("X-RateLimit-Remaining", "7".parse().expect("static"));
        h.insert("x-ratelimit-interval-milliseconds", "10000".parse().expect("static"));
        h.insert("x-ratelimit-daily-remaining", "garbage".parse().expect("static"));
        let r = RateLimitHeaders::from_headers(&h).expect("present");
        assert_eq!(r.remaining, Some(7));
        assert_eq!(r.interval(), Some(Duration::from_secs(10)));
        assert_eq!(r.daily_remaining, None);
    }
}
