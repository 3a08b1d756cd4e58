//! Retry policy: exponential backoff with full jitter, and `Retry-After` parsing.
//!
//! What is retried is decided by the client (429 for every operation; 5xx and transport
//! errors only for idempotent ones; never 400, 403, 404, 422); this module only says how long
//! to wait. A wait the server asks for that is longer than [`RetryConfig::max_delay`] is not
//! slept inside a call: the call fails with a retryable error so a durable queue can schedule
//! it instead.

use std::time::Duration;

use rand::Rng;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

/// How often and how long a call is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts in total, the first included (1 = no retries). Default 5.
    pub max_attempts: u32,
    /// Backoff before the first retry (doubled each retry, before jitter). Default 500 ms.
    pub base_delay: Duration,
    /// Longest wait between attempts; also the longest `Retry-After` honoured in-call. Default 60 s.
    pub max_delay: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryConfig {
    /// The upper bound of the wait before retry number `retry` (0-based):
    /// `min(max_delay, base_delay * 2^retry)`.
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The wait before retry number `retry` (0-based): full jitter, uniformly random in
    /// `[0, backoff_cap(retry)]`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self.backoff_cap(retry);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// The wait a `Retry-After` header asks for: delay-seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs));
    }
    let at = OffsetDateTime::parse(value, &Rfc2822).ok()?;
    let diff = at - now;
    Some(if diff.is_negative() {
        Duration::ZERO
    } else {
        diff.unsigned_abs()
    })
}

/// The `Retry-After` of a response, if any.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn cap_doubles_and_saturates() {
        let c = RetryConfig {
            max_attempts: 10,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        };
        assert_eq!(c.backoff_cap(0), Duration::from_millis(500));
        assert_eq!(c.backoff_cap(1), Duration::from_secs(1));
        assert_eq!(c.backoff_cap(3), Duration::from_secs(4));
        assert_eq!(c.backoff_cap(7), Duration::from_secs(60));
        assert_eq!(c.backoff_cap(40), Duration::from_secs(60));
        assert_eq!(c.backoff_cap(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let c = RetryConfig::default();
        let samples: Vec<Duration> = (0..200).map(|_| c.backoff(2)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_secs(2)));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 100, "full jitter should spread the waits");
        let zero = RetryConfig {
            base_delay: Duration::ZERO,
            ..RetryConfig::default()
        };
        assert_eq!(zero.backoff(3), Duration::ZERO);
    }

    #[test]
    fn retry_after_forms() {
        let now = datetime!(2015-10-21 07:27:00 UTC);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(" 1.5 ", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:20:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }
}
