//! The free-slot engine: a calendar's bookable start times, computed from its open hours (or
//! date-specific availabilities) in the location's time zone, on its slot grid
//! (`slotInterval`), with `slotDuration`, buffers, minimum notice and booking window, minus
//! booked (not cancelled) appointments and blocked slots.
//!
//! Calendars with team members are checked per member: round robin needs one free member,
//! collective needs all of them; calendars without members (and class bookings) count the
//! calendar's own appointments against `appoinmentPerSlot` (sic, HighLevel's spelling).

use serde_json::Value;

use super::tz::{Tz, parse_ymd, weekday};
use super::{APPOINTMENT, BLOCKED_SLOT, str_of};
use crate::handlers::{Ctx, parse_time_ms};

const MINUTE_MS: i64 = 60_000;

/// Appointment statuses that do not hold their time.
pub const FREEING_STATUSES: &[&str] = &["cancelled", "invalid"];

/// Something that occupies time.
#[derive(Debug, Clone)]
struct Busy {
    start: i64,
    end: i64,
    calendar_id: String,
    /// The assigned user (`None` for calendar-wide blocks and unassigned appointments).
    user: Option<String>,
    /// Secondary owners of an appointment.
    users: Vec<String>,
}

/// Minute ranges of a day (`[open, close)`, minutes after midnight).
type Ranges = Vec<(i64, i64)>;

/// Whose availability a slot needs.
#[derive(Debug, Clone)]
pub enum Who {
    /// The calendar itself (no team members, class bookings): seats per slot.
    Calendar,
    /// At least one of these users free (round robin, or users asked for).
    Any(Vec<String>),
    /// Every one of these users free (collective calendars).
    All(Vec<String>),
}

/// A calendar's availability rules and the location's bookings, ready to answer slot questions.
pub struct Engine {
    calendar_id: String,
    tz: Tz,
    duration_ms: i64,
    interval_ms: i64,
    pre_ms: i64,
    post_ms: i64,
    per_slot: usize,
    per_day: Option<usize>,
    earliest: i64,
    latest: Option<i64>,
    weekly: Vec<(Vec<i64>, Ranges)>,
    dated: Vec<(i64, Ranges)>,
    appointments: Vec<Busy>,
    blocks: Vec<Busy>,
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn unit_minutes(unit: Option<&str>) -> i64 {
    match unit {
        Some("hours") => 60,
        Some("days") => 1440,
        Some("weeks") => 7 * 1440,
        Some("months") => 30 * 1440,
        _ => 1,
    }
}

fn minutes(cal: &Value, key: &str, unit_key: &str, default: f64, default_unit: &str) -> i64 {
    let n = num(cal, key).unwrap_or(default).max(0.0);
    let unit = cal
        .get(unit_key)
        .and_then(Value::as_str)
        .unwrap_or(default_unit);
    (n * unit_minutes(Some(unit)) as f64).round() as i64
}

/// `[{openHour, openMinute, closeHour, closeMinute}]` → minute ranges of the day.
fn hours_of(v: &Value) -> Ranges {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| {
            let open = num(h, "openHour")? as i64 * 60 + num(h, "openMinute").unwrap_or(0.0) as i64;
            let close =
                num(h, "closeHour")? as i64 * 60 + num(h, "closeMinute").unwrap_or(0.0) as i64;
            // 00:00 as a closing time means midnight at the end of the day.
            let close = if close == 0 && open > 0 { 1440 } else { close };
            (close > open).then_some((open, close))
        })
        .collect()
}

fn busy_of(v: &Value) -> Option<Busy> {
    Some(Busy {
        start: v.get("startTime").and_then(parse_time_ms)?,
        end: v.get("endTime").and_then(parse_time_ms)?,
        calendar_id: str_of(v, "calendarId").to_string(),
        user: Some(str_of(v, "assignedUserId").to_string()).filter(|s| !s.is_empty()),
        users: v
            .get("users")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
    })
}

impl Engine {
    /// The engine for calendar `cal` in a location whose zone is `tz`, at time `now_ms`;
    /// `exclude` is an event to ignore (the appointment being moved).
    pub fn new(ctx: &Ctx<'_>, cal: &Value, tz: Tz, now_ms: i64, exclude: Option<&str>) -> Self {
        let location_id = str_of(cal, "locationId");
        let duration = minutes(cal, "slotDuration", "slotDurationUnit", 30.0, "mins").max(1);
        let interval = if cal.get("slotInterval").is_some_and(Value::is_number) {
            minutes(cal, "slotInterval", "slotIntervalUnit", 30.0, "mins")
        } else {
            duration
        }
        .max(1);
        let notice = minutes(
            cal,
            "allowBookingAfter",
            "allowBookingAfterUnit",
            0.0,
            "hours",
        );
        let window = num(cal, "allowBookingFor")
            .filter(|n| *n > 0.0)
            .map(|_| minutes(cal, "allowBookingFor", "allowBookingForUnit", 0.0, "days"));
        let weekly = cal
            .get("openHours")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|oh| {
                let days: Vec<i64> = oh
                    .get("daysOfTheWeek")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
                    .map(|d| d as i64)
                    .collect();
                (days, hours_of(oh.get("hours").unwrap_or(&Value::Null)))
            })
            .collect();
        let dated = cal
            .get("availabilities")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|a| a.get("deleted").and_then(Value::as_bool) != Some(true))
            .filter_map(|a| {
                let day = parse_ymd(a.get("date")?.as_str()?)?;
                Some((day, hours_of(a.get("hours").unwrap_or(&Value::Null))))
            })
            .collect();
        let live = |kind: &str| -> Vec<Busy> {
            ctx.list(kind, location_id)
                .iter()
                .filter(|v| exclude.is_none_or(|x| str_of(v, "id") != x))
                .filter(|v| !FREEING_STATUSES.contains(&str_of(v, "appointmentStatus")))
                .filter_map(|v| busy_of(v))
                .collect()
        };
        Engine {
            calendar_id: str_of(cal, "id").to_string(),
            tz,
            duration_ms: duration * MINUTE_MS,
            interval_ms: interval * MINUTE_MS,
            pre_ms: minutes(cal, "preBuffer", "preBufferUnit", 0.0, "mins") * MINUTE_MS,
            post_ms: minutes(cal, "slotBuffer", "slotBufferUnit", 0.0, "mins") * MINUTE_MS,
            per_slot: num(cal, "appoinmentPerSlot").map_or(1, |n| n.max(1.0) as usize),
            per_day: num(cal, "appoinmentPerDay")
                .filter(|n| *n > 0.0)
                .map(|n| n as usize),
            earliest: now_ms + notice * MINUTE_MS,
            latest: window.map(|w| now_ms + w * MINUTE_MS),
            weekly,
            dated,
            appointments: live(APPOINTMENT),
            blocks: live(BLOCKED_SLOT),
        }
    }

    /// The length of a slot.
    pub fn duration_ms(&self) -> i64 {
        self.duration_ms
    }

    /// Open minute ranges of a local day: its date-specific availability if it has one, else
    /// the weekly open hours of its weekday.
    fn open_ranges(&self, day: i64) -> Ranges {
        let dated: Ranges = self
            .dated
            .iter()
            .filter(|(d, _)| *d == day)
            .flat_map(|(_, h)| h.iter().copied())
            .collect();
        if self.dated.iter().any(|(d, _)| *d == day) {
            return dated;
        }
        let wd = weekday(day);
        self.weekly
            .iter()
            .filter(|(days, _)| days.contains(&wd))
            .flat_map(|(_, h)| h.iter().copied())
            .collect()
    }

    /// Slot start instants of a local day on the calendar's grid, before any booking check.
    pub(super) fn grid(&self, day: i64) -> Vec<i64> {
        let mut out = Vec::new();
        let dur_min = self.duration_ms / MINUTE_MS;
        let step = (self.interval_ms / MINUTE_MS).max(1);
        for (open, close) in self.open_ranges(day) {
            let mut m = open;
            while m + dur_min <= close {
                out.push(self.tz.local_to_utc(day, m));
                m += step;
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether `start` is on the calendar's grid (inside open hours).
    pub fn on_grid(&self, start: i64) -> bool {
        let (day, _) = self.tz.local_day_minute(start);
        self.grid(day).contains(&start)
    }

    /// Whether `start` lies within the minimum notice and booking window.
    pub fn in_window(&self, start: i64) -> bool {
        start >= self.earliest && self.latest.is_none_or(|l| start <= l)
    }

    fn overlaps(b: &Busy, start: i64, end: i64) -> bool {
        b.start < end && b.end > start
    }

    fn user_free(&self, user: &str, start: i64, end: i64) -> bool {
        let (s, e) = (start - self.pre_ms, end + self.post_ms);
        let holds = |b: &Busy| b.user.as_deref() == Some(user) || b.users.iter().any(|u| u == user);
        !self
            .appointments
            .iter()
            .any(|b| holds(b) && Self::overlaps(b, s, e))
            && !self
                .blocks
                .iter()
                .any(|b| b.user.as_deref() == Some(user) && Self::overlaps(b, s, e))
    }

    fn calendar_blocked(&self, start: i64, end: i64) -> bool {
        self.blocks.iter().any(|b| {
            b.calendar_id == self.calendar_id && b.user.is_none() && Self::overlaps(b, start, end)
        })
    }

    fn day_full(&self, start: i64) -> bool {
        let Some(cap) = self.per_day else {
            return false;
        };
        let (day, _) = self.tz.local_day_minute(start);
        let n = self
            .appointments
            .iter()
            .filter(|b| {
                b.calendar_id == self.calendar_id && self.tz.local_day_minute(b.start).0 == day
            })
            .count();
        n >= cap
    }

    /// Whether `[start, end)` is free for `who`; for [`Who::Any`] the first free user.
    pub fn free_for(&self, who: &Who, start: i64, end: i64) -> Option<Option<String>> {
        if self.calendar_blocked(start, end) || self.day_full(start) {
            return None;
        }
        match who {
            Who::Calendar => {
                let (s, e) = (start - self.pre_ms, end + self.post_ms);
                let taken = self
                    .appointments
                    .iter()
                    .filter(|b| b.calendar_id == self.calendar_id && Self::overlaps(b, s, e))
                    .count();
                (taken < self.per_slot).then_some(None)
            }
            Who::Any(users) => users
                .iter()
                .find(|u| self.user_free(u, start, end))
                .map(|u| Some(u.clone())),
            Who::All(users) => users
                .iter()
                .all(|u| self.user_free(u, start, end))
                .then_some(None),
        }
    }

    /// Free slot starts in `[from, to]`, in time order.
    pub fn free_slots(&self, who: &Who, from: i64, to: i64) -> Vec<i64> {
        let (first, _) = self.tz.local_day_minute(from);
        let (last, _) = self.tz.local_day_minute(to);
        let mut out = Vec::new();
        for day in first..=last {
            for start in self.grid(day) {
                if start < from || start > to || !self.in_window(start) {
                    continue;
                }
                if self
                    .free_for(who, start, start + self.duration_ms)
                    .is_some()
                {
                    out.push(start);
                }
            }
        }
        out
    }
}
