//! Percentiles of a sample of durations.

use std::fmt;
use std::time::Duration;

/// p50, p90, p99, max and mean of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Sample size.
    pub n: usize,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest value.
    pub max: Duration,
    /// Mean.
    pub mean: Duration,
}

/// The value at quantile `q` (0..=1) of a sorted, non-empty sample, nearest rank.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    /// Summarises `sample` (`None` when it is empty).
    pub fn of(mut sample: Vec<Duration>) -> Option<Summary> {
        if sample.is_empty() {
            return None;
        }
        sample.sort_unstable();
        let total: Duration = sample.iter().sum();
        Some(Summary {
            n: sample.len(),
            p50: quantile(&sample, 0.50),
            p90: quantile(&sample, 0.90),
            p99: quantile(&sample, 0.99),
            max: quantile(&sample, 1.0),
            mean: total / u32::try_from(sample.len()).unwrap_or(u32::MAX),
        })
    }
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {}, p90 {}, p99 {}, max {}, mean {} (n = {})",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max),
            ms(self.mean),
            self.n
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sample: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Summary::of(sample).expect("non-empty");
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p90, Duration::from_millis(90));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
        assert_eq!(s.mean, Duration::from_micros(50_500));
        assert_eq!(Summary::of(Vec::new()), None);
        let one = Summary::of(vec![Duration::from_millis(7)]).expect("one");
        let seven = Duration::from_millis(7);
        assert_eq!((one.p50, one.p99, one.max), (seven, seven, seven));
        assert_eq!(ms(Duration::from_micros(1_234)), "1.23 ms");
    }
}
