//! Time zones for calendars without a time-zone database: the IANA zones HighLevel locations
//! commonly use, each with its standard offset and daylight-saving rule (US, EU, southern
//! Australia, New Zealand), plus fixed offsets (`UTC`, `+05:30`, `Etc/GMT+5`).
//!
//! Open hours are wall-clock times in the location's zone; free slots and event times are
//! written with the zone's offset, as HighLevel does (`2024-10-28T10:00:00-05:00`).

/// Milliseconds in a minute.
const MINUTE_MS: i64 = 60_000;
/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// A daylight-saving rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dst {
    /// No daylight saving.
    None,
    /// United States and Canada: second Sunday of March 02:00 to first Sunday of November 02:00.
    Us,
    /// European Union and UK: last Sunday of March to last Sunday of October, 01:00 UTC.
    Eu,
    /// South-east Australia: first Sunday of October to first Sunday of April.
    Au,
    /// New Zealand: last Sunday of September to first Sunday of April.
    Nz,
}

/// A time zone: standard offset east of UTC in minutes and its daylight-saving rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tz {
    std_min: i32,
    dst: Dst,
}

/// The zones the sandbox knows by name.
const ZONES: &[(&str, i32, Dst)] = &[
    ("UTC", 0, Dst::None),
    ("Etc/UTC", 0, Dst::None),
    ("GMT", 0, Dst::None),
    ("Etc/GMT", 0, Dst::None),
    ("America/New_York", -300, Dst::Us),
    ("US/Eastern", -300, Dst::Us),
    ("America/Detroit", -300, Dst::Us),
    ("America/Toronto", -300, Dst::Us),
    ("America/Indiana/Indianapolis", -300, Dst::Us),
    ("America/Kentucky/Louisville", -300, Dst::Us),
    ("America/Chicago", -360, Dst::Us),
    ("US/Central", -360, Dst::Us),
    ("America/Winnipeg", -360, Dst::Us),
    ("America/Denver", -420, Dst::Us),
    ("US/Mountain", -420, Dst::Us),
    ("America/Edmonton", -420, Dst::Us),
    ("America/Boise", -420, Dst::Us),
    ("America/Phoenix", -420, Dst::None),
    ("US/Arizona", -420, Dst::None),
    ("America/Los_Angeles", -480, Dst::Us),
    ("US/Pacific", -480, Dst::Us),
    ("America/Vancouver", -480, Dst::Us),
    ("America/Anchorage", -540, Dst::Us),
    ("US/Alaska", -540, Dst::Us),
    ("Pacific/Honolulu", -600, Dst::None),
    ("US/Hawaii", -600, Dst::None),
    ("America/Halifax", -240, Dst::Us),
    ("America/St_Johns", -210, Dst::Us),
    ("America/Puerto_Rico", -240, Dst::None),
    ("America/Mexico_City", -360, Dst::None),
    ("America/Chihuahua", -360, Dst::None),
    ("America/Monterrey", -360, Dst::None),
    ("America/Cancun", -300, Dst::None),
    ("America/Tijuana", -480, Dst::Us),
    ("America/Regina", -360, Dst::None),
    ("America/Bogota", -300, Dst::None),
    ("America/Lima", -300, Dst::None),
    ("America/Panama", -300, Dst::None),
    ("America/Jamaica", -300, Dst::None),
    ("America/Caracas", -240, Dst::None),
    ("America/Santiago", -240, Dst::None),
    ("America/Sao_Paulo", -180, Dst::None),
    ("America/Argentina/Buenos_Aires", -180, Dst::None),
    ("America/Montevideo", -180, Dst::None),
    ("Atlantic/Reykjavik", 0, Dst::None),
    ("Europe/London", 0, Dst::Eu),
    ("Europe/Dublin", 0, Dst::Eu),
    ("Europe/Lisbon", 0, Dst::Eu),
    ("Europe/Paris", 60, Dst::Eu),
    ("Europe/Berlin", 60, Dst::Eu),
    ("Europe/Madrid", 60, Dst::Eu),
    ("Europe/Rome", 60, Dst::Eu),
    ("Europe/Amsterdam", 60, Dst::Eu),
    ("Europe/Brussels", 60, Dst::Eu),
    ("Europe/Vienna", 60, Dst::Eu),
    ("Europe/Zurich", 60, Dst::Eu),
    ("Europe/Stockholm", 60, Dst::Eu),
    ("Europe/Oslo", 60, Dst::Eu),
    ("Europe/Copenhagen", 60, Dst::Eu),
    ("Europe/Warsaw", 60, Dst::Eu),
    ("Europe/Prague", 60, Dst::Eu),
    ("Europe/Budapest", 60, Dst::Eu),
    ("Europe/Belgrade", 60, Dst::Eu),
    ("Africa/Lagos", 60, Dst::None),
    ("Europe/Athens", 120, Dst::Eu),
    ("Europe/Helsinki", 120, Dst::Eu),
    ("Europe/Kiev", 120, Dst::Eu),
    ("Europe/Kyiv", 120, Dst::Eu),
    ("Europe/Bucharest", 120, Dst::Eu),
    ("Europe/Sofia", 120, Dst::Eu),
    ("Europe/Riga", 120, Dst::Eu),
    ("Europe/Vilnius", 120, Dst::Eu),
    ("Europe/Tallinn", 120, Dst::Eu),
    ("Africa/Johannesburg", 120, Dst::None),
    ("Africa/Cairo", 120, Dst::None),
    ("Asia/Jerusalem", 120, Dst::None),
    ("Europe/Istanbul", 180, Dst::None),
    ("Europe/Moscow", 180, Dst::None),
    ("Africa/Nairobi", 180, Dst::None),
    ("Asia/Riyadh", 180, Dst::None),
    ("Asia/Qatar", 180, Dst::None),
    ("Asia/Dubai", 240, Dst::None),
    ("Asia/Karachi", 300, Dst::None),
    ("Asia/Kolkata", 330, Dst::None),
    ("Asia/Calcutta", 330, Dst::None),
    ("Asia/Colombo", 330, Dst::None),
    ("Asia/Kathmandu", 345, Dst::None),
    ("Asia/Dhaka", 360, Dst::None),
    ("Asia/Bangkok", 420, Dst::None),
    ("Asia/Jakarta", 420, Dst::None),
    ("Asia/Ho_Chi_Minh", 420, Dst::None),
    ("Asia/Singapore", 480, Dst::None),
    ("Asia/Kuala_Lumpur", 480, Dst::None),
    ("Asia/Manila", 480, Dst::None),
    ("Asia/Hong_Kong", 480, Dst::None),
    ("Asia/Shanghai", 480, Dst::None),
    ("Asia/Taipei", 480, Dst::None),
    ("Australia/Perth", 480, Dst::None),
    ("Asia/Tokyo", 540, Dst::None),
    ("Asia/Seoul", 540, Dst::None),
    ("Australia/Darwin", 570, Dst::None),
    ("Australia/Adelaide", 570, Dst::Au),
    ("Australia/Brisbane", 600, Dst::None),
    ("Australia/Sydney", 600, Dst::Au),
    ("Australia/Melbourne", 600, Dst::Au),
    ("Australia/Hobart", 600, Dst::Au),
    ("Pacific/Auckland", 720, Dst::Nz),
];

impl Tz {
    /// UTC.
    pub const UTC: Tz = Tz {
        std_min: 0,
        dst: Dst::None,
    };

    /// A zone by IANA name (case-insensitive) or fixed offset (`+05:30`, `UTC-5`, `Etc/GMT+5`).
    pub fn parse(name: &str) -> Option<Tz> {
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        if let Some((_, std_min, dst)) = ZONES.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        {
            return Some(Tz {
                std_min: *std_min,
                dst: *dst,
            });
        }
        // `Etc/GMT+5` means five hours *west* of Greenwich (POSIX sign).
        if let Some(rest) = name.strip_prefix("Etc/GMT") {
            return parse_offset(rest).map(|m| Tz {
                std_min: -m,
                dst: Dst::None,
            });
        }
        let rest = name
            .strip_prefix("UTC")
            .or_else(|| name.strip_prefix("GMT"))
            .unwrap_or(name);
        parse_offset(rest).map(|m| Tz {
            std_min: m,
            dst: Dst::None,
        })
    }

    /// The offset east of UTC, in minutes, at instant `utc_ms`.
    pub fn offset_min(self, utc_ms: i64) -> i32 {
        if self.in_dst(utc_ms) {
            self.std_min + 60
        } else {
            self.std_min
        }
    }

    fn in_dst(self, utc_ms: i64) -> bool {
        let std_ms = i64::from(self.std_min) * MINUTE_MS;
        let (year, _, _) = civil_from_days((utc_ms + std_ms).div_euclid(DAY_MS));
        // Transition instants in UTC: a local standard time of 02:00 is `02:00 - std` UTC, a
        // local daylight time of 02:00/03:00 is one hour earlier.
        let local_std = |days: i64, hour: i64| days * DAY_MS + hour * 3_600_000 - std_ms;
        match self.dst {
            Dst::None => false,
            Dst::Us => {
                let start = local_std(nth_sunday(year, 3, 2), 2);
                let end = local_std(nth_sunday(year, 11, 1), 1);
                utc_ms >= start && utc_ms < end
            }
            Dst::Eu => {
                let start = last_sunday(year, 3) * DAY_MS + 3_600_000;
                let end = last_sunday(year, 10) * DAY_MS + 3_600_000;
                utc_ms >= start && utc_ms < end
            }
            Dst::Au => {
                let end = local_std(nth_sunday(year, 4, 1), 2);
                let start = local_std(nth_sunday(year, 10, 1), 2);
                utc_ms < end || utc_ms >= start
            }
            Dst::Nz => {
                let end = local_std(nth_sunday(year, 4, 1), 2);
                let start = local_std(last_sunday(year, 9), 2);
                utc_ms < end || utc_ms >= start
            }
        }
    }

    /// The instant of local wall-clock time `minute` (minutes after midnight) on local day
    /// `days` (days since 1970-01-01). In a spring-forward gap the later offset wins.
    pub fn local_to_utc(self, days: i64, minute: i64) -> i64 {
        let local_ms = days * DAY_MS + minute * MINUTE_MS;
        let guess = local_ms - i64::from(self.std_min) * MINUTE_MS;
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

/// The `n`-th Sunday (1-based) of a month, as days since 1970-01-01.
fn nth_sunday(year: i64, month: i64, n: i64) -> i64 {
    let first = days_from_civil(year, month, 1);
    let to_sunday = (7 - weekday(first)) % 7;
    first + to_sunday + 7 * (n - 1)
}

/// The last Sunday of a month, as days since 1970-01-01.
fn last_sunday(year: i64, month: i64) -> i64 {
    let next = if month == 12 {
        days_from_civil(year + 1, 1, 1)
    } else {
        days_from_civil(year, month + 1, 1)
    };
    let last = next - 1;
    last - weekday(last)
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
