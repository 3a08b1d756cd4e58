//! Pacing: keep every location (and company) under HighLevel's rate limits by waiting
//! before a request is sent, instead of receiving 429s.
//!
//! HighLevel allows, per app and per location or company, `burst` requests per `interval`
//! (100 per 10 s) and `daily` requests per day (200,000). Each pacing key gets its own
//! budget shaped by [`PacingConfig`]; callers `await` their turn.
//!
//! # The limiter
//!
//! The burst limit is enforced as *at most `burst` requests in any window of `interval`*,
//! measured conservatively: a request occupies the window from the moment it is sent until
//! `interval` after **its answer arrived** (the server counted it at some instant between the
//! two, so the answer time is a safe upper bound of the server's clock). A request may go
//! when fewer than `burst` requests ahead of it (sent and not yet expired, or queued before
//! it) occupy the window. Tickets are handed out first come, first served; each waiter first
//! sleeps until a precomputed estimate of its turn and then checks the exact condition, so
//! 1,000 concurrent callers line up in order without a thundering herd.
//!
//! This is the virtual-scheduling (GCRA) idea with one theoretical arrival time per slot of
//! the burst rather than one for the whole bucket. A single-TAT GCRA (emission
//! `interval/burst`, tolerance `interval - emission`) was rejected on purpose: it admits a
//! full burst *and then* one request every emission interval, i.e. up to `2 * burst - 1`
//! requests within one interval, which a server counting requests per window (fixed or
//! sliding, as HighLevel's `X-RateLimit-Remaining` and `X-RateLimit-Interval-Milliseconds`
//! describe) answers with 429s. Any sequence this limiter admits also conforms to that GCRA,
//! so it is never looser, has the same long-run rate and the same floor: `N` calls take
//! `ceil(N/burst - 1)` intervals (plus one answer latency per interval). A `margin` (0.1 %
//! of the interval, 1 ms to 10 ms) absorbs clock granularity.
//!
//! # Corrections from the server
//!
//! Every response's `X-RateLimit-*` headers correct the estimate, but can only make us
//! slower, never faster than the configuration:
//! - `X-RateLimit-Max` lower than the configured burst, or `X-RateLimit-Interval-Milliseconds`
//!   longer than the configured interval, are adopted for that key.
//! - `X-RateLimit-Remaining` lower than we expect (other apps' or processes' traffic on the
//!   same budget) adds the difference as phantom requests answered now, ahead of every
//!   waiting caller.
//! - A 429 fills the window: `burst` phantom requests answered now.
//! - `X-RateLimit-Limit-Daily` lower than configured is adopted; `X-RateLimit-Daily-Remaining`
//!   lower than expected raises the day's count (0 means exhausted).
//!
//! # The daily budget
//!
//! Counted per **calendar day in UTC** (HighLevel does not document when its daily counter
//! resets; its headers correct us if it is another boundary). When it is used up a call fails
//! at once with [`Error::DailyBudgetExhausted`], which is
//! not retried.
//!
//! # Testing without sleeping
//!
//! The limiter state ([`KeyLimiter`]) is plain data whose methods take `now` (a
//! [`tokio::time::Instant`]) and the UTC day number explicitly; the async [`Pacer`] only reads
//! the clock, sleeps and wakes waiters with tokio.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderMap;
use time::OffsetDateTime;
use tokio::sync::Notify;
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
    /// The safety gap added to each window (0.1 % of the interval, 1 ms to 10 ms).
    pub fn margin(&self) -> Duration {
        (self.interval / 1000).clamp(Duration::from_millis(1), Duration::from_millis(10))
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
    /// Callers waiting for their turn.
    pub waiting: u32,
    /// Daily budget in force.
    pub daily_limit: u32,
    /// Requests left today.
    pub daily_remaining: u32,
    /// The last `X-RateLimit-*` headers seen for this key.
    pub last_headers: Option<RateLimitHeaders>,
}

/// A caller's place in a key's queue.
#[derive(Debug, Clone)]
pub struct Ticket {
    id: u64,
    /// Estimated time of the caller's turn (the exact check happens at [`KeyLimiter::poll`]).
    pub estimate: Instant,
    day: i64,
    reserved_seq: u64,
}

/// The day's budget is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyExhausted;

/// The answer of [`KeyLimiter::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Send now (the ticket is now in flight).
    Go,
    /// Not before this time.
    WaitUntil(Instant),
    /// Not before some request ahead is answered.
    WaitForAnswer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    InFlight(Instant),
    Answered(Instant),
}

#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    estimate: Instant,
    state: State,
}

/// Pacing state of one key; pure data, every method takes the time explicitly.
#[derive(Debug, Clone)]
pub struct KeyLimiter {
    cfg_burst: u32,
    cfg_interval: Duration,
    cfg_daily: u32,
    burst: u32,
    interval: Duration,
    margin: Duration,
    /// Requests in queue order: waiting, in flight, or answered within the last interval.
    entries: VecDeque<Entry>,
    next_id: u64,
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
            entries: VecDeque::new(),
            next_id: 0,
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

    /// When an entry stops occupying the window (for waiting and in-flight ones: at the
    /// earliest, if answered at once).
    fn expiry(&self, e: &Entry) -> Instant {
        let base = match e.state {
            State::Waiting => e.estimate,
            State::InFlight(sent) => sent,
            State::Answered(at) => at,
        };
        base + self.interval + self.margin
    }

    fn prune(&mut self, now: Instant) {
        let (interval, margin) = (self.interval, self.margin);
        self.entries.retain(|e| match e.state {
            State::Answered(at) => at + interval + margin > now,
            _ => true,
        });
    }

    /// Takes a place in the queue, counting it against the day.
    pub fn reserve(&mut self, now: Instant, day: i64) -> Result<Ticket, DailyExhausted> {
        self.roll(day);
        self.prune(now);
        if self.daily_used >= u64::from(self.daily_limit) {
            return Err(DailyExhausted);
        }
        let b = self.burst as usize;
        let estimate = if self.entries.len() < b {
            now
        } else {
            self.expiry(&self.entries[self.entries.len() - b]).max(now)
        };
        let id = self.next_id;
        self.next_id += 1;
        self.entries.push_back(Entry {
            id,
            estimate,
            state: State::Waiting,
        });
        self.daily_used += 1;
        self.reserved += 1;
        Ok(Ticket {
            id,
            estimate,
            day,
            reserved_seq: self.reserved,
        })
    }

    /// Whether the ticket may be sent at `now`; on [`Turn::Go`] it is marked in flight.
    ///
    /// It may go when fewer than `burst` entries ahead of it still occupy the window.
    pub fn poll(&mut self, ticket: &Ticket, now: Instant) -> Turn {
        self.prune(now);
        let Some(pos) = self.entries.iter().position(|e| e.id == ticket.id) else {
            // Cancelled or unknown: nothing holds it back.
            return Turn::Go;
        };
        let b = self.burst as usize;
        if pos < b {
            self.entries[pos].state = State::InFlight(now);
            return Turn::Go;
        }
        // `pos - b + 1` of the entries ahead must expire first.
        let need = pos - b + 1;
        let mut answered: Vec<Instant> = self
            .entries
            .iter()
            .take(pos)
            .filter(|e| matches!(e.state, State::Answered(_)))
            .map(|e| self.expiry(e))
            .collect();
        if answered.len() < need {
            return Turn::WaitForAnswer;
        }
        answered.sort_unstable();
        Turn::WaitUntil(answered[need - 1].max(now))
    }

    /// The ticket's request was answered (or failed, or was abandoned) at `now`.
    pub fn release(&mut self, ticket: &Ticket, now: Instant) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.id == ticket.id) {
            match e.state {
                State::Waiting => {
                    // Never sent: give the place up.
                    self.entries.retain(|e| e.id != ticket.id);
                }
                State::InFlight(_) => e.state = State::Answered(now),
                State::Answered(_) => {}
            }
        }
    }

    /// Adds `n` requests answered at `now` ahead of every waiting caller.
    fn add_phantoms(&mut self, n: u32, now: Instant) {
        let at = self
            .entries
            .iter()
            .position(|e| e.state == State::Waiting)
            .unwrap_or(self.entries.len());
        for _ in 0..n {
            let id = self.next_id;
            self.next_id += 1;
            self.entries.insert(
                at,
                Entry {
                    id,
                    estimate: now,
                    state: State::Answered(now),
                },
            );
        }
    }

    /// Requests occupying the window now (sent or answered within the interval).
    pub fn occupied(&self, now: Instant) -> u32 {
        let n = self
            .entries
            .iter()
            .filter(|e| match e.state {
                State::Waiting => false,
                State::InFlight(_) => true,
                State::Answered(at) => at + self.interval + self.margin > now,
            })
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Corrects the estimate from the answer to `ticket` (`limited`: it was a 429).
    pub fn observe(
        &mut self,
        ticket: &Ticket,
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
        self.prune(now);
        if limited {
            self.add_phantoms(self.burst, now);
        } else if let Some(h) = headers
            && let Some(r) = h.remaining
        {
            let max = h.max.filter(|m| *m > 0).unwrap_or(self.burst);
            let server_used = max.saturating_sub(r).min(self.burst);
            let ours = self.occupied(now);
            self.add_phantoms(server_used.saturating_sub(ours), now);
        }
        if let Some(h) = headers
            && ticket.day == self.day
        {
            if let Some(l) = h.daily_limit.filter(|l| *l > 0) {
                self.daily_limit = self.cfg_daily.min(l);
            }
            if let Some(r) = h.daily_remaining {
                let server_limit = h.daily_limit.filter(|l| *l > 0).unwrap_or(self.daily_limit);
                let server_used = u64::from(server_limit.saturating_sub(r));
                // Our requests reserved after this one are not in the server's count yet.
                let later = self.reserved.saturating_sub(ticket.reserved_seq);
                self.daily_used = self.daily_used.max(server_used + later);
                if r == 0 {
                    self.daily_used = self.daily_used.max(u64::from(self.daily_limit));
                }
            }
        }
    }

    /// What is left, at `now`.
    pub fn snapshot(&self, key: &str, now: Instant) -> BudgetSnapshot {
        let waiting = self
            .entries
            .iter()
            .filter(|e| e.state == State::Waiting)
            .count();
        let waiting = u32::try_from(waiting).unwrap_or(u32::MAX);
        BudgetSnapshot {
            key: key.to_string(),
            burst: self.burst,
            interval: self.interval,
            burst_remaining: self
                .burst
                .saturating_sub(self.occupied(now).saturating_add(waiting)),
            waiting,
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

struct KeyState {
    limiter: KeyLimiter,
    /// Wakes callers waiting for an answer.
    answered: Arc<Notify>,
}

struct Shared {
    config: PacingConfig,
    keys: Mutex<HashMap<String, KeyState>>,
}

impl Shared {
    fn with_key<R>(&self, key: &str, f: impl FnOnce(&mut KeyState) -> R) -> R {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = keys.get_mut(key) {
            return f(k);
        }
        let day = utc_day(OffsetDateTime::now_utc());
        let k = keys.entry(key.to_string()).or_insert_with(|| KeyState {
            limiter: KeyLimiter::new(&self.config, day),
            answered: Arc::new(Notify::new()),
        });
        f(k)
    }

    fn release(&self, key: &str, ticket: &Ticket) {
        let now = Instant::now();
        let notify = self.with_key(key, |k| {
            k.limiter.release(ticket, now);
            k.answered.clone()
        });
        notify.notify_waiters();
    }
}

/// A permission to send one request, from [`Pacer::acquire`]. The request's slot is released
/// when the answer is observed or the permit is dropped.
pub struct Permit {
    key: String,
    ticket: Option<(Arc<Shared>, Ticket)>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// The pacing key the request counts against.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some((shared, ticket)) = self.ticket.take() {
            shared.release(&self.key, &ticket);
        }
    }
}

/// Pacing for every key of one client.
pub struct Pacer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Pacer {
    /// A pacer with `config` for every key.
    pub fn new(config: PacingConfig) -> Pacer {
        Pacer {
            shared: Arc::new(Shared {
                config,
                keys: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Waits for the caller's turn on `key`; fails at once when the day's budget is used up.
    pub async fn acquire(&self, key: &str) -> Result<Permit, Error> {
        if !self.shared.config.enabled {
            return Ok(Permit {
                key: key.to_string(),
                ticket: None,
            });
        }
        let now_utc = OffsetDateTime::now_utc();
        let day = utc_day(now_utc);
        let reserved = self
            .shared
            .with_key(key, |k| k.limiter.reserve(Instant::now(), day));
        let ticket = match reserved {
            Ok(t) => t,
            Err(DailyExhausted) => {
                return Err(Error::DailyBudgetExhausted {
                    key: key.to_string(),
                    retry_after: Some(until_utc_midnight(now_utc)),
                });
            }
        };
        // From here on, dropping the permit (also while waiting) gives the place up.
        let permit = Permit {
            key: key.to_string(),
            ticket: Some((self.shared.clone(), ticket.clone())),
        };
        if ticket.estimate > Instant::now() {
            tokio::time::sleep_until(ticket.estimate).await;
        }
        loop {
            let (turn, notify) = self.shared.with_key(key, |k| {
                (k.limiter.poll(&ticket, Instant::now()), k.answered.clone())
            });
            match turn {
                Turn::Go => return Ok(permit),
                Turn::WaitUntil(t) => tokio::time::sleep_until(t).await,
                Turn::WaitForAnswer => {
                    let notified = notify.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    // Re-check after registering, so an answer in between is not missed.
                    let turn = self
                        .shared
                        .with_key(key, |k| k.limiter.poll(&ticket, Instant::now()));
                    match turn {
                        Turn::Go => return Ok(permit),
                        Turn::WaitUntil(t) => tokio::time::sleep_until(t).await,
                        Turn::WaitForAnswer => {
                            let fallback = self.shared.config.interval;
                            let _ = tokio::time::timeout(fallback, notified).await;
                        }
                    }
                }
            }
        }
    }

    /// Feeds an answer back (`limited`: it was a 429) and releases the permit's slot.
    pub fn observe(&self, mut permit: Permit, headers: Option<&RateLimitHeaders>, limited: bool) {
        let now = Instant::now();
        match permit.ticket.take() {
            Some((shared, ticket)) => {
                let notify = shared.with_key(&permit.key, |k| {
                    k.limiter.release(&ticket, now);
                    k.limiter.observe(&ticket, headers, limited, now);
                    k.answered.clone()
                });
                notify.notify_waiters();
            }
            None => {
                if let Some(h) = headers {
                    self.shared
                        .with_key(&permit.key, |k| k.limiter.last_headers = Some(h.clone()));
                }
            }
        }
    }

    /// What is left of `key`'s budget, if the key has been used.
    pub fn budget(&self, key: &str) -> Option<BudgetSnapshot> {
        let keys = self.shared.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.get(key)
            .map(|k| k.limiter.snapshot(key, Instant::now()))
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

    fn ms(t0: Instant, t: Instant) -> u128 {
        t.duration_since(t0).as_millis()
    }

    #[test]
    fn estimates_line_up_by_window() {
        let c = cfg(100, 1000, 1_000_000);
        assert_eq!(c.margin(), MS);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let est: Vec<u128> = (0..250)
            .map(|_| ms(t0, k.reserve(t0, 0).expect("budget").estimate))
            .collect();
        assert!(est[..100].iter().all(|a| *a == 0));
        assert!(
            est[100..200].iter().all(|a| *a == 1001),
            "{:?}",
            &est[100..110]
        );
        assert!(est[200..].iter().all(|a| *a == 2002));
    }

    #[test]
    fn next_window_starts_after_the_answers_not_the_sends() {
        let c = cfg(2, 1000, 1_000_000);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let t: Vec<Ticket> = (0..3).map(|_| k.reserve(t0, 0).expect("budget")).collect();
        assert_eq!(k.poll(&t[0], t0), Turn::Go);
        assert_eq!(k.poll(&t[1], t0), Turn::Go);
        // Nothing answered yet: the third waits for an answer.
        assert_eq!(k.poll(&t[2], t0 + 1001 * MS), Turn::WaitForAnswer);
        // Answers took 30 and 50 ms: the window ends 1 s after the first answer.
        k.release(&t[1], t0 + 50 * MS);
        k.release(&t[0], t0 + 30 * MS);
        assert_eq!(
            k.poll(&t[2], t0 + 1001 * MS),
            Turn::WaitUntil(t0 + 1031 * MS)
        );
        assert_eq!(k.poll(&t[2], t0 + 1031 * MS), Turn::Go);
    }

    /// Simulates callers (arriving at `arrivals` ms) whose answers take `latency(i)` ms, in
    /// 1 ms steps; returns each request's (sent, answered) times.
    fn simulate(
        c: &PacingConfig,
        arrivals: &[u64],
        latency: impl Fn(usize) -> u64,
    ) -> Vec<(Instant, Instant)> {
        struct Caller {
            ticket: Ticket,
            wake: Instant,
            sent: Option<(Instant, Instant)>,
            released: bool,
        }
        let ms_ = |n: u64| Duration::from_millis(n);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(c, 0);
        let mut callers: Vec<Caller> = Vec::new();
        let mut next = 0;
        let mut now = t0;
        let deadline = t0 + Duration::from_secs(600);
        while now < deadline && callers.iter().filter(|c| c.sent.is_some()).count() < arrivals.len()
        {
            while next < arrivals.len() && t0 + ms_(arrivals[next]) <= now {
                let ticket = k.reserve(now, 0).expect("budget");
                callers.push(Caller {
                    wake: ticket.estimate,
                    ticket,
                    sent: None,
                    released: false,
                });
                next += 1;
            }
            for c in &mut callers {
                if let Some((_, done)) = c.sent
                    && !c.released
                    && done <= now
                {
                    k.release(&c.ticket, done);
                    c.released = true;
                }
            }
            for (i, c) in callers.iter_mut().enumerate() {
                if c.sent.is_some() || c.wake > now {
                    continue;
                }
                match k.poll(&c.ticket, now) {
                    Turn::Go => c.sent = Some((now, now + ms_(latency(i)))),
                    Turn::WaitUntil(w) => c.wake = w,
                    Turn::WaitForAnswer => c.wake = now + MS,
                }
            }
            now += MS;
        }
        callers.into_iter().filter_map(|c| c.sent).collect()
    }

    #[test]
    fn never_more_than_burst_in_any_window() {
        let c = cfg(10, 1000, 1_000_000);
        let mut arrivals: Vec<u64> = (0..120u64).map(|i| (i * 37) % 3000).collect();
        arrivals.sort_unstable();
        let sent = simulate(&c, &arrivals, |i| 1 + (i as u64 * 7919) % 40);
        assert_eq!(sent.len(), 120, "everyone is served");
        for (j, (send_j, _)) in sent.iter().enumerate() {
            let occupying = sent
                .iter()
                .filter(|(send_i, done_i)| {
                    *send_i <= *send_j && *done_i + Duration::from_secs(1) > *send_j
                })
                .count();
            assert!(occupying <= 10, "request {j}: {occupying} in the window");
        }
        // Not slower than needed: 120 requests at 10 per second, answers within 40 ms.
        let first = sent.iter().map(|(s, _)| *s).min().expect("sent");
        let last = sent.iter().map(|(s, _)| *s).max().expect("sent");
        assert!(
            last.duration_since(first) < Duration::from_millis(11 * 1045),
            "{:?}",
            last.duration_since(first)
        );
    }

    #[test]
    fn single_tat_gcra_would_send_twice_the_burst() {
        // Why not one TAT: a GCRA with T = I/B and tau = I - T admits 2B - 1 in one interval.
        let (b, i) = (100u32, Duration::from_secs(1));
        let t = i / b;
        let tau = i - t;
        let t0 = Instant::now();
        let (mut tat, mut now, mut admitted) = (t0, t0, 0);
        while now < t0 + i {
            if now + tau >= tat {
                tat = tat.max(now) + t;
                admitted += 1;
            } else {
                now += MS;
            }
        }
        assert_eq!(admitted, 2 * b - 1);
        // This limiter admits exactly B in the same interval.
        let mut k = KeyLimiter::new(&cfg(b, 1000, 1_000_000), 0);
        let tickets: Vec<Ticket> = (0..300)
            .map(|_| k.reserve(t0, 0).expect("budget"))
            .collect();
        let mut go = 0;
        for tk in &tickets {
            if k.poll(tk, t0) == Turn::Go {
                go += 1;
                k.release(tk, t0);
            }
        }
        assert_eq!(go, 100);
        assert!(
            tickets
                .iter()
                .skip(100)
                .all(|tk| k.poll(tk, t0 + 999 * MS) != Turn::Go)
        );
    }

    #[test]
    fn fewer_remaining_than_expected_adds_phantoms() {
        let c = cfg(100, 1000, 1_000_000);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let first = k.reserve(t0, 0).expect("budget");
        assert_eq!(k.poll(&first, t0), Turn::Go);
        k.release(&first, t0 + MS);
        // The server has seen 60 requests from elsewhere: 39 remain after ours.
        let h = RateLimitHeaders {
            max: Some(100),
            remaining: Some(39),
            ..Default::default()
        };
        k.observe(&first, Some(&h), false, t0 + MS);
        let now = t0 + MS;
        let tickets: Vec<Ticket> = (0..40)
            .map(|_| k.reserve(now, 0).expect("budget"))
            .collect();
        let go = tickets
            .iter()
            .filter(|t| k.poll(t, now) == Turn::Go)
            .count();
        assert_eq!(go, 39);
        assert_eq!(k.poll(&tickets[39], now), Turn::WaitUntil(t0 + 1002 * MS));
    }

    #[test]
    fn own_concurrent_answers_do_not_slow_us_down() {
        let c = cfg(100, 1000, 1_000_000);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let tickets: Vec<Ticket> = (0..100)
            .map(|_| k.reserve(t0, 0).expect("budget"))
            .collect();
        for t in &tickets {
            assert_eq!(k.poll(t, t0), Turn::Go);
        }
        // Answered in reverse order, each reporting what the server counted so far.
        for (j, t) in tickets.iter().rev().enumerate() {
            k.release(t, t0 + 2 * MS);
            let h = RateLimitHeaders {
                max: Some(100),
                remaining: Some(99 - u32::try_from(j).unwrap_or(0)),
                ..Default::default()
            };
            k.observe(t, Some(&h), false, t0 + 2 * MS);
        }
        assert_eq!(k.occupied(t0 + 2 * MS), 100, "no phantoms added");
        let next = k.reserve(t0 + 2 * MS, 0).expect("budget");
        assert_eq!(k.poll(&next, t0 + 2 * MS), Turn::WaitUntil(t0 + 1003 * MS));
    }

    #[test]
    fn headers_never_make_us_faster() {
        let c = cfg(10, 1000, 1000);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let t = k.reserve(t0, 0).expect("budget");
        let h = RateLimitHeaders {
            max: Some(1000),
            remaining: Some(999),
            interval_ms: Some(100),
            daily_limit: Some(200_000),
            daily_remaining: Some(199_999),
        };
        k.observe(&t, Some(&h), false, t0);
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
        k.observe(&t, Some(&h), false, t0);
        let snap = k.snapshot("k", t0);
        assert_eq!((snap.burst, snap.interval), (5, Duration::from_secs(2)));
    }

    #[test]
    fn too_many_requests_fills_the_window() {
        let c = cfg(100, 1000, 1_000_000);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let t = k.reserve(t0, 0).expect("budget");
        assert_eq!(k.poll(&t, t0), Turn::Go);
        k.release(&t, t0 + MS);
        k.observe(&t, None, true, t0 + MS);
        let next = k.reserve(t0 + MS, 0).expect("budget");
        assert_eq!(k.poll(&next, t0 + MS), Turn::WaitUntil(t0 + 1002 * MS));
        assert_eq!(k.snapshot("k", t0 + MS).burst_remaining, 0);
    }

    #[test]
    fn a_cancelled_waiter_gives_its_place_up() {
        let c = cfg(1, 1000, 1_000_000);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let a = k.reserve(t0, 0).expect("budget");
        let b = k.reserve(t0, 0).expect("budget");
        let c2 = k.reserve(t0, 0).expect("budget");
        assert_eq!(k.poll(&a, t0), Turn::Go);
        k.release(&b, t0); // b abandoned while waiting
        k.release(&a, t0);
        assert_eq!(k.poll(&c2, t0), Turn::WaitUntil(t0 + 1001 * MS));
        assert_eq!(k.snapshot("k", t0).waiting, 1);
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
        let t = k.reserve(t0, 0).expect("budget");
        let h = RateLimitHeaders {
            daily_remaining: Some(0),
            ..Default::default()
        };
        k.observe(&t, Some(&h), false, t0);
        assert_eq!(k.reserve(t0, 0).err(), Some(DailyExhausted));
    }

    #[test]
    fn daily_correction_does_not_double_count() {
        let c = cfg(1000, 1000, 1000);
        let t0 = Instant::now();
        let mut k = KeyLimiter::new(&c, 0);
        let tickets: Vec<Ticket> = (0..10).map(|_| k.reserve(t0, 0).expect("budget")).collect();
        // Others used 100 today; each answer reports it consistently.
        for (i, t) in tickets.iter().enumerate() {
            let h = RateLimitHeaders {
                daily_limit: Some(1000),
                daily_remaining: Some(1000 - 100 - 1 - u32::try_from(i).unwrap_or(0)),
                ..Default::default()
            };
            k.observe(t, Some(&h), false, t0);
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
        h.insert(
            "x-ratelimit-interval-milliseconds",
            "10000".parse().expect("static"),
        );
        h.insert(
            "x-ratelimit-daily-remaining",
            "garbage".parse().expect("static"),
        );
        let r = RateLimitHeaders::from_headers(&h).expect("present");
        assert_eq!(r.remaining, Some(7));
        assert_eq!(r.interval(), Some(Duration::from_secs(10)));
        assert_eq!(r.daily_remaining, None);
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_waits_for_turns_with_a_paused_clock() {
        let pacer = Arc::new(Pacer::new(cfg(2, 1000, 1000)));
        let t0 = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..5 {
            let p = pacer.clone();
            handles.push(tokio::spawn(async move {
                let permit = p.acquire("L").await.expect("budget");
                let went = Instant::now();
                tokio::time::sleep(Duration::from_millis(20)).await;
                p.observe(permit, None, false);
                went
            }));
        }
        let mut went = Vec::new();
        for h in handles {
            went.push(h.await.expect("task").duration_since(t0).as_millis());
        }
        went.sort_unstable();
        assert_eq!(went, [0, 0, 1021, 1021, 2042]);
        assert_eq!(pacer.budget("L").map(|b| b.daily_remaining), Some(995));
    }
}
