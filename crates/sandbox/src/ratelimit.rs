//! HighLevel's rate limits, per app per location (or company): a burst budget over a sliding
//! interval (100 per 10 s by default) and a daily budget (200,000), reported in the five
//! `X-RateLimit-*` headers on every answer; over either budget the answer is 429.
//!
//! The limiter also keeps, per key, the highest number of requests *attempted* in any
//! interval, so a test can prove a client paced itself rather than merely survived 429s.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

/// Rate-limit settings.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    /// Enforce the limits (headers are sent either way).
    pub enabled: bool,
    /// Requests allowed per interval.
    pub burst: u32,
    /// The burst interval.
    pub interval: Duration,
    /// Requests allowed per UTC day.
    pub daily: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            burst: 100,
            interval: Duration::from_secs(10),
            daily: 200_000,
        }
    }
}

impl RateLimitConfig {
    /// Parses `100/10s`, `100/1s`, `50/500ms`, `100/1m`.
    pub fn parse_burst(s: &str) -> Result<(u32, Duration), String> {
        let (n, per) = s
            .split_once('/')
            .ok_or_else(|| format!("rate limit {s:?} must look like 100/10s"))?;
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("rate limit {s:?}: {n:?} is not a number"))?;
        let per = per.trim();
        let (num, unit) = per
            .find(|c: char| !c.is_ascii_digit())
            .map_or((per, "s"), |i| (&per[..i], &per[i..]));
        let num: u64 = if num.is_empty() {
            1
        } else {
            num.parse()
                .map_err(|_| format!("rate limit {s:?}: bad interval {per:?}"))?
        };
        let interval = match unit {
            "ms" => Duration::from_millis(num),
            "s" => Duration::from_secs(num),
            "m" | "min" => Duration::from_secs(num * 60),
            other => {
                return Err(format!(
                    "rate limit {s:?}: unknown unit {other:?} (ms, s, m)"
                ));
            }
        };
        if n == 0 || interval.is_zero() {
            return Err(format!("rate limit {s:?} must be positive"));
        }
        Ok((n, interval))
    }
}

/// The values of the `X-RateLimit-*` headers for one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    /// `X-RateLimit-Max`.
    pub max: u32,
    /// `X-RateLimit-Remaining`.
    pub remaining: u32,
    /// `X-RateLimit-Interval-Milliseconds`.
    pub interval_ms: u64,
    /// `X-RateLimit-Limit-Daily`.
    pub daily_limit: u32,
    /// `X-RateLimit-Daily-Remaining`.
    pub daily_remaining: u32,
}

impl Headers {
    /// The headers as name/value pairs.
    pub fn pairs(&self) -> [(&'static str, String); 5] {
        [
            ("x-ratelimit-max", self.max.to_string()),
            ("x-ratelimit-remaining", self.remaining.to_string()),
            (
                "x-ratelimit-interval-milliseconds",
                self.interval_ms.to_string(),
            ),
            ("x-ratelimit-limit-daily", self.daily_limit.to_string()),
            (
                "x-ratelimit-daily-remaining",
                self.daily_remaining.to_string(),
            ),
        ]
    }
}

/// Outcome of admitting a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Served; with the headers to send.
    Allowed(Headers),
    /// Over the burst budget: 429, retry after the given time.
    Burst(Headers, Duration),
    /// Over the daily budget: 429 until the day turns.
    Daily(Headers),
}

#[derive(Debug, Default)]
struct Window {
    accepted: VecDeque<Instant>,
    attempted: VecDeque<Instant>,
    max_attempted: u32,
    max_accepted: u32,
    day: i64,
    daily_used: u32,
    total: u64,
    rejected: u64,
}

/// Per-key statistics, for tests and the admin API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyStats {
    /// Highest number of requests attempted within any one interval.
    pub max_window_attempts: u32,
    /// Highest number of requests served within any one interval.
    pub max_window_accepted: u32,
    /// Requests seen.
    pub total: u64,
    /// Requests answered 429.
    pub rejected: u64,
    /// Daily budget used today.
    pub daily_used: u32,
}

/// The limiter for all keys.
#[derive(Debug)]
pub struct RateLimiter {
    config: Mutex<RateLimitConfig>,
    windows: Mutex<HashMap<String, Window>>,
}

fn utc_day() -> i64 {
    time::OffsetDateTime::now_utc()
        .unix_timestamp()
        .div_euclid(86_400)
}

impl RateLimiter {
    /// A limiter with `config`.
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config: Mutex::new(config),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// The current settings.
    pub fn config(&self) -> RateLimitConfig {
        *self.config.lock()
    }

    /// Changes the settings at run time.
    pub fn set_config(&self, config: RateLimitConfig) {
        *self.config.lock() = config;
    }

    /// Admits (or refuses) one request for `key` at `now`.
    pub fn admit(&self, key: &str, now: Instant) -> Decision {
        let cfg = self.config();
        let mut windows = self.windows.lock();
        let w = windows.entry(key.to_string()).or_default();
        let today = utc_day();
        if w.day != today {
            w.day = today;
            w.daily_used = 0;
        }
        let horizon = now.checked_sub(cfg.interval);
        let expire = |q: &mut VecDeque<Instant>| {
            while q.front().is_some_and(|t| horizon.is_some_and(|h| *t <= h)) {
                q.pop_front();
            }
        };
        expire(&mut w.accepted);
        expire(&mut w.attempted);
        w.attempted.push_back(now);
        w.total += 1;
        let attempts = u32::try_from(w.attempted.len()).unwrap_or(u32::MAX);
        w.max_attempted = w.max_attempted.max(attempts);
        let in_window = u32::try_from(w.accepted.len()).unwrap_or(u32::MAX);
        let headers = |used: u32, daily_used: u32| Headers {
            max: cfg.burst,
            remaining: cfg.burst.saturating_sub(used),
            interval_ms: u64::try_from(cfg.interval.as_millis()).unwrap_or(u64::MAX),
            daily_limit: cfg.daily,
            daily_remaining: cfg.daily.saturating_sub(daily_used),
        };
        if cfg.enabled && w.daily_used >= cfg.daily {
            w.rejected += 1;
            return Decision::Daily(headers(in_window, w.daily_used));
        }
        if cfg.enabled && in_window >= cfg.burst {
            w.rejected += 1;
            let wait = w.accepted.front().map_or(cfg.interval, |first| {
                (*first + cfg.interval).saturating_duration_since(now)
            });
            return Decision::Burst(headers(in_window, w.daily_used), wait);
        }
        w.accepted.push_back(now);
        w.daily_used = w.daily_used.saturating_add(1);
        let used = in_window + 1;
        w.max_accepted = w.max_accepted.max(used);
        // With limits off the window still grows; keep it bounded.
        if !cfg.enabled && w.accepted.len() > cfg.burst as usize * 4 {
            w.accepted.pop_front();
        }
        Decision::Allowed(headers(used, w.daily_used))
    }

    /// Statistics of one key.
    pub fn stats(&self, key: &str) -> Option<KeyStats> {
        self.windows.lock().get(key).map(|w| KeyStats {
            max_window_attempts: w.max_attempted,
            max_window_accepted: w.max_accepted,
            total: w.total,
            rejected: w.rejected,
            daily_used: w.daily_used,
        })
    }

    /// Statistics of every key.
    pub fn all_stats(&self) -> HashMap<String, KeyStats> {
        let keys: Vec<String> = self.windows.lock().keys().cloned().collect();
        keys.into_iter()
            .filter_map(|k| self.stats(&k).map(|s| (k, s)))
            .collect()
    }

    /// Forgets every counter (admin reset).
    pub fn reset(&self) {
        self.windows.lock().clear();
    }

    /// Uses up the daily budget of `key` (to test daily-exhaustion handling).
    pub fn exhaust_daily(&self, key: &str) {
        let daily = self.config().daily;
        let mut windows = self.windows.lock();
        let w = windows.entry(key.to_string()).or_default();
        w.day = utc_day();
        w.daily_used = daily;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits() {
        assert_eq!(
            RateLimitConfig::parse_burst("100/10s"),
            Ok((100, Duration::from_secs(10)))
        );
        assert_eq!(
            RateLimitConfig::parse_burst("5/250ms"),
            Ok((5, Duration::from_millis(250)))
        );
        assert!(RateLimitConfig::parse_burst("0/1s").is_err());
        assert!(RateLimitConfig::parse_burst("abc").is_err());
    }

    #[test]
    fn sliding_window_and_stats() {
        let rl = RateLimiter::new(RateLimitConfig {
            enabled: true,
            burst: 3,
            interval: Duration::from_secs(1),
            daily: 5,
        });
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(
                matches!(rl.admit("k", t0 + Duration::from_millis(i)), Decision::Allowed(h) if h.remaining == 2 - i as u32)
            );
        }
        assert!(
            matches!(rl.admit("k", t0 + Duration::from_millis(10)), Decision::Burst(_, w) if w <= Duration::from_secs(1))
        );
        // After the interval, two more fit, then the daily budget (5) is gone.
        assert!(matches!(
            rl.admit("k", t0 + Duration::from_millis(1100)),
            Decision::Allowed(_)
        ));
        assert!(
            matches!(rl.admit("k", t0 + Duration::from_millis(1101)), Decision::Allowed(h) if h.daily_remaining == 0)
        );
        assert!(matches!(
            rl.admit("k", t0 + Duration::from_millis(2500)),
            Decision::Daily(_)
        ));
        let s = rl.stats("k").expect("stats");
        assert_eq!(s.max_window_accepted, 3);
        assert_eq!(s.max_window_attempts, 4);
        assert_eq!(s.rejected, 2);
    }
}
