//! Time zones for calendars: every IANA zone (from the `chrono-tz` database, daylight saving
//! included) plus fixed offsets (`UTC`, `+05:30`, `UTC-5`).
//!
//! Open hours are wall-clock times in the location's zone; free slots and event times are
//! written with the zone's offset, as HighLevel does (`2024-10-28T10:00:00-05:00`).

use chrono::{Offset, TimeZone};

/// Milliseconds in a minute.
const MINUTE_MS: i64 = 60_000;
/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// A time zone: an IANA zone or a fixed offset east of UTC in minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tz {
    /// A fixed offset, minutes east of UTC.
    Fixed(i32),
    /// An IANA zone.
    Named(chrono_tz::Tz),
}

impl Tz {
    /// UTC.
    pub const UTC: Tz = Tz::Fixed(0);

    /// A zone by IANA name (case-insensitive, `Etc/GMT+5` included) or fixed offset
    /// (`+05:30`, `UTC-5`).
    pub fn parse(name: &str) -> Option<Tz> {
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        if let Ok(tz) = chrono_tz::Tz::from_str_insensitive(name) {
            return Some(Tz::Named(tz));
        }
        let rest = name
            .strip_prefix("UTC")
            .or_else(|| name.strip_prefix("GMT"))
            .unwrap_or(name);
        parse_offset(rest).map(Tz::Fixed)
    }

    /// The offset east of UTC, in minutes, at instant `utc_ms`.
    pub fn offset_min(self, utc_ms: i64) -> i32 {
        match self {
            Tz::Fixed(m) => m,
            Tz::Named(tz) => chrono::DateTime::from_timestamp_millis(utc_ms)
                .map(|t| {
                    tz.offset_from_utc_datetime(&t.naive_utc())
                        .fix()
                        .local_minus_utc()
                        / 60
                })
                .unwrap_or(0),
        }
    }

    /// The instant of local wall-clock time `minute` (minutes after midnight) on local day
    /// `days` (days since 1970-01-01). In a spring-forward gap the later offset wins.
    pub fn local_to_utc(self, days: i64, minute: i64) -> i64 {
        let local_ms = days * DAY_MS + minute * MINUTE_MS;
        let guess = local_ms - i64::from(self.offset_min(local_ms)) * MINUTE_MS;
        let off = self.offset_min(guess);
        let utc = local_ms - i64::from(off) * MINUTE_MS;
        if self.offset_min(utc) == off {
            utc
        } else {
            local_ms - i64::from(self.offset_min(utc)) * MINUTE_MS
        }
    }

    /// The local day (days since 1970-01-01) and minute of the day of an instant.
    pub fn local_day_minute(self, utc_ms: i64) -> (i64, i64) {
        let local = utc_ms + i64::from(self.offset_min(utc_ms)) * MINUTE_MS;
        (
            local.div_euclid(DAY_MS),
            local.rem_euclid(DAY_MS) / MINUTE_MS,
        )
    }

    /// `YYYY-MM-DD` of an instant in this zone.
    pub fn date_key(self, utc_ms: i64) -> String {
        let (days, _) = self.local_day_minute(utc_ms);
        ymd(days)
    }

    /// An instant as HighLevel writes event times: `2024-10-28T10:00:00-05:00`.
    pub fn format(self, utc_ms: i64) -> String {
        let off = self.offset_min(utc_ms);
        let local = utc_ms + i64::from(off) * MINUTE_MS;
        let days = local.div_euclid(DAY_MS);
        let secs = local.rem_euclid(DAY_MS) / 1000;
        let sign = if off < 0 { '-' } else { '+' };
        let off = off.abs();
        format!(
            "{}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
            ymd(days),
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            off / 60,
            off % 60
        )
    }
}

/// `+05:30`, `-5`, `+0530`, `5` → minutes east of UTC.
fn parse_offset(s: &str) -> Option<i32> {
    if s.is_empty() {
        return Some(0);
    }
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => (1, s),
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() == 4 => (&rest[..2], &rest[2..]),
        None => (rest, "0"),
    };
    let h: i32 = h.parse().ok()?;
    let m: i32 = m.parse().ok()?;
    if h > 14 || m >= 60 {
        return None;
    }
    Some(sign * (h * 60 + m))
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date (year, month, day) of days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Day of the week of days since 1970-01-01: 0 = Sunday … 6 = Saturday (HighLevel's numbering).
pub fn weekday(days: i64) -> i64 {
    (days + 4).rem_euclid(7)
}

/// `YYYY-MM-DD` of days since 1970-01-01.
pub fn ymd(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 of `YYYY-MM-DD` (the first ten characters of `s`).
pub fn parse_ymd(s: &str) -> Option<i64> {
    let s = s.get(..10)?;
    let mut parts = s.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(weekday(days_from_civil(2024, 10, 28)), 1);
        assert_eq!(
            parse_ymd("2023-09-24T00:00:00.000Z"),
            Some(days_from_civil(2023, 9, 24))
        );
    }

    #[test]
    fn us_daylight_saving() {
        let chicago = Tz::parse("America/Chicago").unwrap_or(Tz::UTC);
        // 2024-07-01T12:00Z is CDT (-05:00); 2024-12-01T12:00Z is CST (-06:00).
        let july = days_from_civil(2024, 7, 1) * DAY_MS + 12 * 3_600_000;
        let dec = days_from_civil(2024, 12, 1) * DAY_MS + 12 * 3_600_000;
        assert_eq!(chicago.offset_min(july), -300);
        assert_eq!(chicago.offset_min(dec), -360);
        assert_eq!(chicago.format(july), "2024-07-01T07:00:00-05:00");
        // DST 2024 began 2024-03-10 at 02:00 CST = 08:00Z.
        let start = days_from_civil(2024, 3, 10) * DAY_MS + 8 * 3_600_000;
        assert_eq!(chicago.offset_min(start - 1), -360);
        assert_eq!(chicago.offset_min(start), -300);
        // Local 09:00 on a summer day is 14:00Z.
        let day = days_from_civil(2024, 7, 1);
        assert_eq!(
            chicago.local_to_utc(day, 9 * 60),
            day * DAY_MS + 14 * 3_600_000
        );
        assert_eq!(
            chicago.local_day_minute(day * DAY_MS + 14 * 3_600_000),
            (day, 540)
        );
    }

    #[test]
    fn eu_and_fixed_offsets() {
        let london = Tz::parse("europe/london").unwrap_or(Tz::UTC);
        let july = days_from_civil(2024, 7, 1) * DAY_MS;
        assert_eq!(london.offset_min(july), 60);
        assert_eq!(
            Tz::parse("Asia/Kolkata").map(|t| t.format(0)),
            Some("1970-01-01T05:30:00+05:30".into())
        );
        assert_eq!(Tz::parse("Etc/GMT+5").map(|t| t.offset_min(0)), Some(-300));
        assert_eq!(Tz::parse("+05:30").map(|t| t.offset_min(0)), Some(330));
        assert_eq!(
            Tz::parse("UTC").map(|t| t.format(0)),
            Some("1970-01-01T00:00:00+00:00".into())
        );
        // Any IANA zone, with its own daylight-saving rules (Israel: +03:00 in summer).
        assert_eq!(
            Tz::parse("Asia/Jerusalem").map(|t| t.offset_min(july)),
            Some(180)
        );
        assert_eq!(
            Tz::parse("america/sao_paulo").map(|t| t.offset_min(july)),
            Some(-180)
        );
        assert_eq!(Tz::parse("UTC-5").map(|t| t.offset_min(0)), Some(-300));
        assert!(Tz::parse("Mars/Olympus").is_none());
        assert!(Tz::parse("").is_none());
        let sydney = Tz::parse("Australia/Sydney").unwrap_or(Tz::UTC);
        assert_eq!(
            sydney.offset_min(days_from_civil(2024, 1, 15) * DAY_MS),
            660
        );
        assert_eq!(sydney.offset_min(july), 600);
    }
}
