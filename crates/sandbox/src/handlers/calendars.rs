//! Calendars & Appointments (spec `calendars.json`, Version `2021-04-15`): calendar groups with
//! slug validation and enable/disable, calendars with open hours, slot settings and team
//! members, appointments (booking checks the slot is free unless `ignoreFreeSlotValidation`),
//! free slots computed from open hours minus booked appointments and blocked slots, blocked
//! slots, event lists by calendar/group/user, appointment notes, calendar notifications,
//! resources (rooms and equipment) and user availability schedules.
//!
//! Appointments are documents of kind [`APPOINTMENT`] whose body carries `contactId` (the
//! contacts module lists a contact's appointments from them); their times are written in the
//! location's time zone, as HighLevel does. Appointment notes are contact notes (kind
//! [`NOTE`]) that carry the `appointmentId`, so they also show in the contact's notes.
//! AppointmentCreate / AppointmentUpdate / AppointmentDelete webhooks carry the documented
//! `{type, locationId, appointment: {…}}` payload.

mod demo;
mod slots;
#[cfg(test)]
mod tests;
pub mod tz;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use self::slots::{Engine, FREEING_STATUSES, Who};
use self::tz::Tz;
use super::contacts::{CONTACT, LOCATION, NOTE};
use super::{
    Ctx, HResult, Handler, Req, Seed, created, forbidden_location, iso, new_id, ok, parse_time_ms,
    window,
};
use crate::error::ApiError;

/// A calendar group.
pub const GROUP: &str = "calendar_group";
/// A calendar.
pub const CALENDAR: &str = "calendar";
/// An appointment (read by the contacts module too: keep the kind and its `contactId`).
pub const APPOINTMENT: &str = "appointment";
/// A blocked slot.
pub const BLOCKED_SLOT: &str = "blocked_slot";
/// A calendar notification setting (child of its calendar).
pub const NOTIFICATION: &str = "calendar_notification";
/// A calendar resource: a room or a piece of equipment.
pub const RESOURCE: &str = "calendar_resource";
/// A user availability schedule.
pub const SCHEDULE: &str = "availability_schedule";
/// Users (owned by the users module; read for note authors).
const USER: &str = "user";

/// HighLevel's answer when a booking hits a slot that is not free.
pub const SLOT_TAKEN: &str = "The slot you have selected is no longer available.";

/// Registers the handlers of this module.
pub fn register(map: &mut HashMap<&'static str, Handler>) {
    map.insert("calendars.groups.list", groups_list);
    map.insert("calendars.groups.create", group_create);
    map.insert("calendars.groups.update", group_update);
    map.insert("calendars.groups.set_status", group_set_status);
    map.insert("calendars.groups.delete", group_delete);
    map.insert("calendars.groups.validate_slug", group_validate_slug);
    map.insert("calendars.list", calendars_list);
    map.insert("calendars.get", calendar_get);
    map.insert("calendars.create", calendar_create);
    map.insert("calendars.update", calendar_update);
    map.insert("calendars.delete", calendar_delete);
    map.insert("calendars.free_slots", free_slots);
    map.insert("calendars.events.list", events_list);
    map.insert("calendars.blocked_slots.list", blocked_list);
    map.insert("calendars.appointments.get", appointment_get);
    map.insert("calendars.appointments.create", appointment_create);
    map.insert("calendars.appointments.update", appointment_update);
    map.insert("calendars.events.delete", event_delete);
    map.insert("calendars.blocked_slots.create", blocked_create);
    map.insert("calendars.blocked_slots.update", blocked_update);
    map.insert("calendars.appointments.notes.list", notes_list);
    map.insert("calendars.appointments.notes.create", note_create);
    map.insert("calendars.appointments.notes.update", note_update);
    map.insert("calendars.appointments.notes.delete", note_delete);
    map.insert("calendars.notifications.list", notifications_list);
    map.insert("calendars.notifications.get", notification_get);
    map.insert("calendars.notifications.create", notification_create);
    map.insert("calendars.notifications.update", notification_update);
    map.insert("calendars.notifications.delete", notification_delete);
    map.insert("calendars.resources.list", resources_list);
    map.insert("calendars.resources.get", resource_get);
    map.insert("calendars.resources.create", resource_create);
    map.insert("calendars.resources.update", resource_update);
    map.insert("calendars.resources.delete", resource_delete);
    map.insert("calendars.schedules.list", schedules_list);
}

/// Adds this area's demo data to the seeded location: a group, three calendars with Mon–Fri
/// 9–17 open hours, notifications, resources, availability schedules, ~40 appointments over
/// the past and next two weeks, a few blocked slots and appointment notes.
pub fn seed(ctx: &mut Ctx<'_>, seed: &mut Seed) -> Result<(), ApiError> {
    demo::run(ctx, seed)
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// A string field of a JSON object, `""` when absent.
pub(crate) fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::unprocessable(vec![message.into()])
}

/// The time zone of a location (`timezone` of its document), UTC when unknown.
pub fn location_tz(ctx: &Ctx<'_>, location_id: &str) -> Tz {
    ctx.get(LOCATION, location_id)
        .and_then(|d| {
            d.body
                .get("timezone")
                .and_then(Value::as_str)
                .and_then(Tz::parse)
        })
        .unwrap_or(Tz::UTC)
}

/// 403 when the token belongs to another location than `location_id`.
fn check_access(req: &Req, location_id: &str) -> Result<(), ApiError> {
    match &req.caller.location_id {
        Some(own) if own != location_id => Err(forbidden_location()),
        _ => Ok(()),
    }
}

/// The required `locationId` query parameter, checked against the token.
fn query_location(req: &Req) -> Result<String, ApiError> {
    let loc = req
        .query("locationId")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| unprocessable("locationId should not be empty"))?;
    check_access(req, loc)?;
    Ok(loc.to_string())
}

/// The required `locationId` body field, checked against the token.
fn body_location(req: &Req) -> Result<String, ApiError> {
    req.require_fields(&["locationId"])?;
    let loc = req.field_str("locationId").unwrap_or_default();
    check_access(req, loc)?;
    Ok(loc.to_string())
}

/// Required query parameters, NestJS style.
fn require_query(req: &Req, names: &[&str]) -> Result<(), ApiError> {
    let missing: Vec<String> = names
        .iter()
        .filter(|n| req.query(n).is_none_or(str::is_empty))
        .map(|n| format!("{n} should not be empty"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(missing))
    }
}

/// A numeric query parameter within bounds (422 outside them, as class-validator answers).
fn query_number(
    req: &Req,
    name: &str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let Some(raw) = req.query(name).filter(|s| !s.is_empty()) else {
        return Ok(default);
    };
    let n = raw
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0 && n.fract() == 0.0)
        .ok_or_else(|| {
            unprocessable(format!(
                "{name} must be a number conforming to the specified constraints"
            ))
        })? as usize;
    if n < min {
        return Err(unprocessable(format!("{name} must not be less than {min}")));
    }
    if n > max {
        return Err(unprocessable(format!(
            "{name} must not be greater than {max}"
        )));
    }
    Ok(n)
}

/// A boolean query parameter (`true`/`false`).
fn query_bool(req: &Req, name: &str) -> Result<Option<bool>, ApiError> {
    match req.query(name) {
        None | Some("") => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(unprocessable(format!("{name} must be a boolean value"))),
    }
}

/// Validation of a JSON object with class-validator's messages, collecting every failure.
struct Rules<'a> {
    obj: &'a Map<String, Value>,
    prefix: String,
    errs: Vec<String>,
}

impl<'a> Rules<'a> {
    fn new(obj: &'a Map<String, Value>, prefix: impl Into<String>) -> Self {
        Self {
            obj,
            prefix: prefix.into(),
            errs: Vec::new(),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn fail(&mut self, key: &str, what: &str) {
        self.errs.push(format!("{}{key} {what}", self.prefix));
    }

    fn required(&mut self, keys: &[&str]) {
        for k in keys {
            let missing = match self.get(k) {
                None => true,
                Some(Value::String(s)) => s.is_empty(),
                _ => false,
            };
            if missing {
                self.fail(k, "should not be empty");
            }
        }
    }

    fn one_of(&mut self, key: &str, allowed: &[&str]) {
        if let Some(v) = self.get(key)
            && !v.as_str().is_some_and(|s| allowed.contains(&s))
        {
            self.fail(
                key,
                &format!(
                    "must be one of the following values: {}",
                    allowed.join(", ")
                ),
            );
        }
    }

    fn strings(&mut self, keys: &[&str]) {
        for k in keys {
            if self.get(k).is_some_and(|v| !v.is_string()) {
                self.fail(k, "must be a string");
            }
        }
    }

    fn booleans(&mut self, keys: &[&str]) {
        for k in keys {
            if self.get(k).is_some_and(|v| !v.is_boolean()) {
                self.fail(k, "must be a boolean value");
            }
        }
    }

    fn numbers(&mut self, keys: &[&str]) {
        for k in keys {
            if self
                .get(k)
                .is_some_and(|v| !v.as_f64().is_some_and(|n| n >= 0.0))
            {
                self.fail(
                    k,
                    "must be a number conforming to the specified constraints",
                );
            }
        }
    }

    fn string_arrays(&mut self, keys: &[&str]) {
        for k in keys {
            if self
                .get(k)
                .is_some_and(|v| !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)))
            {
                self.fail(k, "must be an array of strings");
            }
        }
    }

    fn array_of_objects(&mut self, key: &str) -> Vec<&'a Map<String, Value>> {
        match self.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) if items.iter().all(Value::is_object) => {
                items.iter().filter_map(Value::as_object).collect()
            }
            Some(_) => {
                self.fail(key, "must be an array of objects");
                Vec::new()
            }
        }
    }

    fn absorb(&mut self, other: Rules<'_>) {
        self.errs.extend(other.errs);
    }

    fn finish(self) -> Result<(), ApiError> {
        if self.errs.is_empty() {
            Ok(())
        } else {
            Err(ApiError::unprocessable(self.errs))
        }
    }
}

/// Lower-case words joined by single dashes: `15-mins`, `sales`.
pub fn valid_slug(s: &str) -> bool {
    !s.is_empty()
        && s.split('-').all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

/// `"Discovery Call!"` → `discovery-call`.
pub fn slugify(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// Parses an event time: RFC 3339, epoch milliseconds, or a wall-clock time without offset
/// (`2024-10-28T10:00:00`, read in the location's zone).
fn parse_when(v: &Value, tz: Tz) -> Option<i64> {
    if let Some(ms) = parse_time_ms(v) {
        return Some(ms);
    }
    let s = v.as_str()?.trim();
    let day = tz::parse_ymd(s)?;
    let rest = s.get(11..)?;
    let mut parts = rest.split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    if s.len() < 16 || h > 23 || m > 59 {
        return None;
    }
    Some(tz.local_to_utc(day, h * 60 + m))
}

/// A user's display name, when the users module has the user.
fn user_name(ctx: &Ctx<'_>, user_id: &str) -> Option<String> {
    let u = ctx.get(USER, user_id)?;
    let b = &u.body;
    let name = b
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!("{} {}", str_of(b, "firstName"), str_of(b, "lastName"))
                .trim()
                .to_string()
        });
    (!name.is_empty()).then_some(name)
}

/// Ids of the documents of a kind under a parent.
fn child_ids(ctx: &Ctx<'_>, kind: &str, parent_id: &str) -> Vec<String> {
    ctx.docs()
        .iter(kind)
        .filter(|(_, d)| d.parent_id.as_deref() == Some(parent_id))
        .map(|(id, _)| id.clone())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------------------------

fn group_of(ctx: &Ctx<'_>, req: &Req) -> Result<Arc<Value>, ApiError> {
    ctx.find(GROUP, req.path("groupId")?, "Group", req)
}

/// Whether `slug` is used by a group of the location other than `except`.
fn group_slug_taken(ctx: &Ctx<'_>, location_id: &str, slug: &str, except: Option<&str>) -> bool {
    ctx.list(GROUP, location_id)
        .iter()
        .any(|g| str_of(g, "slug") == slug && except != Some(str_of(g, "id")))
}

fn validate_group(req: &Req, required: &[&str]) -> Result<(), ApiError> {
    let body = req.body_object();
    let mut r = Rules::new(&body, "");
    r.required(required);
    r.strings(&["name", "description", "slug", "locationId"]);
    r.booleans(&["isActive"]);
    if let Some(slug) = r.get("slug").and_then(Value::as_str)
        && !slug.is_empty()
        && !valid_slug(slug)
    {
        r.fail(
            "slug",
            "must contain only lowercase letters, numbers and dashes",
        );
    }
    r.finish()
}

fn groups_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = query_location(req)?;
    let groups: Vec<Value> = ctx
        .list(GROUP, &loc)
        .iter()
        .map(|g| (**g).clone())
        .collect();
    ok(json!({ "groups": groups }))
}

fn group_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    validate_group(req, &["locationId", "name", "description", "slug"])?;
    let loc = body_location(req)?;
    let slug = req.field_str("slug").unwrap_or_default();
    if group_slug_taken(ctx, &loc, slug, None) {
        return Err(ApiError::bad_request("Slug is already taken"));
    }
    let id = new_id();
    let g = json!({
        "id": id,
        "locationId": loc,
        "name": req.field_str("name"),
        "description": req.field_str("description"),
        "slug": slug,
        "isActive": req.field("isActive").and_then(Value::as_bool).unwrap_or(true),
    });
    ctx.put(GROUP, &id, Some(&loc), None, g.clone())?;
    created(json!({ "group": g }))
}

fn group_update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let old = group_of(ctx, req)?;
    validate_group(req, &["name", "description", "slug"])?;
    let id = str_of(&old, "id").to_string();
    let loc = str_of(&old, "locationId").to_string();
    let slug = req.field_str("slug").unwrap_or_default();
    if group_slug_taken(ctx, &loc, slug, Some(&id)) {
        return Err(ApiError::bad_request("Slug is already taken"));
    }
    let mut g = (*old).clone();
    for k in ["name", "description", "slug"] {
        if let Some(v) = req.field(k) {
            g[k] = v.clone();
        }
    }
    ctx.replace(GROUP, &id, g.clone())?;
    ok(json!({ "group": g }))
}

fn group_set_status(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let old = group_of(ctx, req)?;
    let active = req
        .field("isActive")
        .and_then(Value::as_bool)
        .ok_or_else(|| unprocessable("isActive must be a boolean value"))?;
    let mut g = (*old).clone();
    g["isActive"] = json!(active);
    ctx.replace(GROUP, str_of(&old, "id"), g)?;
    ok(json!({ "success": true }))
}

fn group_delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let g = group_of(ctx, req)?;
    let id = str_of(&g, "id").to_string();
    let loc = str_of(&g, "locationId").to_string();
    // The group's calendars stay, ungrouped.
    for cal in ctx.list(CALENDAR, &loc) {
        if str_of(&cal, "groupId") == id {
            let mut c = (*cal).clone();
            if let Some(o) = c.as_object_mut() {
                o.remove("groupId");
            }
            ctx.replace(CALENDAR, str_of(&cal, "id"), c)?;
        }
    }
    ctx.delete(GROUP, &id)?;
    ok(json!({ "success": true }))
}

fn group_validate_slug(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["locationId", "slug"])?;
    let loc = body_location(req)?;
    let slug = req.field_str("slug").unwrap_or_default();
    let available = valid_slug(slug) && !group_slug_taken(ctx, &loc, slug, None);
    ok(json!({ "available": available }))
}

// ---------------------------------------------------------------------------------------------
// Calendars
// ---------------------------------------------------------------------------------------------

/// Fields a caller may set on a calendar (`CalendarCreateDTO` / `CalendarUpdateDTO`).
const CALENDAR_FIELDS: &[&str] = &[
    "isActive",
    "notifications",
    "groupId",
    "teamMembers",
    "eventType",
    "name",
    "description",
    "slug",
    "widgetSlug",
    "calendarType",
    "widgetType",
    "eventTitle",
    "eventColor",
    "locationConfigurations",
    "slotDuration",
    "slotDurationUnit",
    "slotInterval",
    "slotIntervalUnit",
    "slotBuffer",
    "slotBufferUnit",
    "preBuffer",
    "preBufferUnit",
    "appoinmentPerSlot",
    "appoinmentPerDay",
    "allowBookingAfter",
    "allowBookingAfterUnit",
    "allowBookingFor",
    "allowBookingForUnit",
    "openHours",
    "enableRecurring",
    "recurring",
    "formId",
    "stickyContact",
    "isLivePaymentMode",
    "autoConfirm",
    "shouldSendAlertEmailsToAssignedMember",
    "alertEmail",
    "googleInvitationEmails",
    "allowReschedule",
    "allowCancellation",
    "shouldAssignContactToTeamMember",
    "shouldSkipAssigningContactForExisting",
    "notes",
    "pixelId",
    "formSubmitType",
    "formSubmitRedirectURL",
    "formSubmitThanksMessage",
    "availabilityType",
    "availabilities",
    "guestType",
    "consentLabel",
    "calendarCoverImage",
    "lookBusyConfig",
];

/// Calendar types that need team members.
const TEAM_TYPES: &[&str] = &[
    "round_robin",
    "collective",
    "class_booking",
    "service_booking",
];
const CALENDAR_TYPES: &[&str] = &[
    "round_robin",
    "event",
    "class_booking",
    "collective",
    "service_booking",
    "personal",
];
const LOCATION_KINDS: &[&str] = &[
    "custom",
    "zoom_conference",
    "google_conference",
    "inbound_call",
    "outbound_call",
    "physical",
    "booker",
    "ms_teams_conference",
];

fn validate_hours(r: &mut Rules<'_>, hours: &[&Map<String, Value>], prefix: &str) {
    for (j, h) in hours.iter().enumerate() {
        let mut hr = Rules::new(h, format!("{prefix}hours.{j}."));
        hr.required(&["openHour", "openMinute", "closeHour", "closeMinute"]);
        for (k, max) in [
            ("openHour", 23.0),
            ("closeHour", 23.0),
            ("openMinute", 60.0),
            ("closeMinute", 60.0),
        ] {
            match hr.get(k).map(Value::as_f64) {
                Some(None) => hr.fail(
                    k,
                    "must be a number conforming to the specified constraints",
                ),
                Some(Some(n)) if n < 0.0 => hr.fail(k, "must not be less than 0"),
                Some(Some(n)) if n > max => hr.fail(k, &format!("must not be greater than {max}")),
                _ => {}
            }
        }
        r.absorb(hr);
    }
}

fn validate_calendar(body: &Map<String, Value>, creating: bool) -> Result<(), ApiError> {
    let mut r = Rules::new(body, "");
    if creating {
        r.required(&["locationId", "name"]);
        r.one_of("calendarType", CALENDAR_TYPES);
    } else if body.get("name").is_some_and(|v| v.as_str() == Some("")) {
        r.fail("name", "should not be empty");
    }
    r.strings(&[
        "locationId",
        "groupId",
        "name",
        "description",
        "slug",
        "widgetSlug",
        "eventTitle",
        "eventColor",
        "formId",
        "alertEmail",
        "notes",
        "pixelId",
        "formSubmitRedirectURL",
        "formSubmitThanksMessage",
        "consentLabel",
        "calendarCoverImage",
    ]);
    r.booleans(&[
        "isActive",
        "enableRecurring",
        "stickyContact",
        "isLivePaymentMode",
        "autoConfirm",
        "shouldSendAlertEmailsToAssignedMember",
        "googleInvitationEmails",
        "allowReschedule",
        "allowCancellation",
        "shouldAssignContactToTeamMember",
        "shouldSkipAssigningContactForExisting",
    ]);
    r.numbers(&[
        "slotDuration",
        "slotInterval",
        "slotBuffer",
        "preBuffer",
        "appoinmentPerSlot",
        "appoinmentPerDay",
        "allowBookingAfter",
        "allowBookingFor",
    ]);
    r.one_of(
        "eventType",
        &[
            "RoundRobin_OptimizeForAvailability",
            "RoundRobin_OptimizeForEqualDistribution",
        ],
    );
    r.one_of("widgetType", &["default", "classic"]);
    for k in [
        "slotDurationUnit",
        "slotIntervalUnit",
        "slotBufferUnit",
        "preBufferUnit",
    ] {
        r.one_of(k, &["mins", "hours"]);
    }
    r.one_of(
        "allowBookingAfterUnit",
        &["hours", "days", "weeks", "months"],
    );
    r.one_of("allowBookingForUnit", &["days", "weeks", "months"]);
    r.one_of("formSubmitType", &["RedirectURL", "ThankYouMessage"]);
    r.one_of("guestType", &["count_only", "collect_detail"]);
    if let Some(v) = r.get("availabilityType")
        && !matches!(v.as_f64(), Some(n) if n == 0.0 || n == 1.0)
    {
        r.fail(
            "availabilityType",
            "must be one of the following values: 0, 1",
        );
    }
    if let Some(slug) = r.get("slug").and_then(Value::as_str)
        && !slug.is_empty()
        && !valid_slug(slug)
    {
        r.fail(
            "slug",
            "must contain only lowercase letters, numbers and dashes",
        );
    }
    for (i, oh) in r.array_of_objects("openHours").into_iter().enumerate() {
        let mut o = Rules::new(oh, format!("openHours.{i}."));
        o.required(&["daysOfTheWeek", "hours"]);
        match o.get("daysOfTheWeek") {
            Some(Value::Array(days)) => {
                let valid = |d: &Value| {
                    d.as_f64()
                        .is_some_and(|n| (0.0..=6.0).contains(&n) && n.fract() == 0.0)
                };
                if !days.iter().all(valid) {
                    o.fail(
                        "daysOfTheWeek",
                        "must contain numbers from 0 (Sunday) to 6 (Saturday)",
                    );
                }
            }
            Some(_) => o.fail("daysOfTheWeek", "must be an array"),
            None => {}
        }
        let hours = o.array_of_objects("hours");
        validate_hours(&mut o, &hours, &format!("openHours.{i}."));
        r.absorb(o);
    }
    for (i, av) in r.array_of_objects("availabilities").into_iter().enumerate() {
        let mut a = Rules::new(av, format!("availabilities.{i}."));
        a.required(&["date", "hours"]);
        if a.get("date")
            .is_some_and(|d| d.as_str().and_then(tz::parse_ymd).is_none())
        {
            a.fail(
                "date",
                "must be a date string like 2023-09-24T00:00:00.000Z",
            );
        }
        let hours = a.array_of_objects("hours");
        validate_hours(&mut a, &hours, &format!("availabilities.{i}."));
        r.absorb(a);
    }
    for (i, tm) in r.array_of_objects("teamMembers").into_iter().enumerate() {
        let mut t = Rules::new(tm, format!("teamMembers.{i}."));
        t.required(&["userId"]);
        t.strings(&["userId"]);
        t.booleans(&["isPrimary"]);
        if let Some(p) = t.get("priority")
            && !matches!(p.as_f64(), Some(n) if n == 0.0 || n == 0.5 || n == 1.0)
        {
            t.fail("priority", "must be one of the following values: 0, 0.5, 1");
        }
        for (j, lc) in t
            .array_of_objects("locationConfigurations")
            .into_iter()
            .enumerate()
        {
            let mut l = Rules::new(lc, format!("teamMembers.{i}.locationConfigurations.{j}."));
            l.required(&["kind"]);
            l.one_of("kind", LOCATION_KINDS);
            t.absorb(l);
        }
        r.absorb(t);
    }
    for (j, lc) in r
        .array_of_objects("locationConfigurations")
        .into_iter()
        .enumerate()
    {
        let mut l = Rules::new(lc, format!("locationConfigurations.{j}."));
        l.required(&["kind"]);
        l.one_of("kind", LOCATION_KINDS);
        l.strings(&["location"]);
        r.absorb(l);
    }
    if let Some(rec) = r.get("recurring") {
        match rec.as_object() {
            Some(o) => {
                let mut rr = Rules::new(o, "recurring.");
                rr.one_of("freq", &["DAILY", "WEEKLY", "MONTHLY"]);
                rr.one_of("bookingOption", &["skip", "continue", "book_next"]);
                rr.one_of("bookingOverlapDefaultStatus", &["confirmed", "new"]);
                if rr
                    .get("count")
                    .is_some_and(|c| !c.as_f64().is_some_and(|n| (0.0..=24.0).contains(&n)))
                {
                    rr.fail("count", "must not be greater than 24");
                }
                r.absorb(rr);
            }
            None => r.fail("recurring", "must be an object"),
        }
    }
    if let Some(lb) = r.get("lookBusyConfig") {
        match lb.as_object() {
            Some(o) => {
                let mut l = Rules::new(o, "lookBusyConfig.");
                l.required(&["enabled", "LookBusyPercentage"]);
                l.booleans(&["enabled"]);
                l.numbers(&["LookBusyPercentage"]);
                r.absorb(l);
            }
            None => r.fail("lookBusyConfig", "must be an object"),
        }
    }
    if r.get("notifications").is_some_and(|v| !v.is_array()) {
        r.fail("notifications", "must be an array");
    }
    r.finish()
}

/// Team members as HighLevel returns them (priority and deprecated meeting fields filled).
fn normalize_team(members: &Value) -> Value {
    let out: Vec<Value> = members
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let mut t = json!({
                "userId": m.get("userId").cloned().unwrap_or(json!("")),
                "priority": m.get("priority").cloned().filter(Value::is_number).unwrap_or(json!(0.5)),
                "meetingLocationType": "custom",
                "isPrimary": m.get("isPrimary").and_then(Value::as_bool).unwrap_or(false),
            });
            if let Some(lc) = m.get("locationConfigurations").filter(|v| v.is_array()) {
                t["locationConfigurations"] = lc.clone();
            }
            t
        })
        .collect();
    json!(out)
}

/// User ids of a calendar's team members.
pub fn team_of(cal: &Value) -> Vec<String> {
    cal.get("teamMembers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("userId").and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn calendar_slug_taken(ctx: &Ctx<'_>, location_id: &str, slug: &str, except: Option<&str>) -> bool {
    ctx.list(CALENDAR, location_id).iter().any(|c| {
        (str_of(c, "slug") == slug || str_of(c, "widgetSlug") == slug)
            && except != Some(str_of(c, "id"))
    })
}

/// A free slug derived from `base`: `base`, `base-1`, `base-2`, …
fn unique_calendar_slug(ctx: &Ctx<'_>, location_id: &str, base: &str) -> String {
    let base = if base.is_empty() {
        "calendar".to_string()
    } else {
        base.to_string()
    };
    let mut slug = base.clone();
    let mut n = 1;
    while calendar_slug_taken(ctx, location_id, &slug, None) {
        slug = format!("{base}-{n}");
        n += 1;
    }
    slug
}

/// Checks the calendar-level rules that need state: group, team members by type, slugs.
fn check_calendar(
    ctx: &Ctx<'_>,
    cal: &Value,
    location_id: &str,
    except: Option<&str>,
) -> Result<(), ApiError> {
    let group = str_of(cal, "groupId");
    if !group.is_empty()
        && ctx
            .get(GROUP, group)
            .is_none_or(|g| g.location_id.as_deref() != Some(location_id))
    {
        return Err(ApiError::not_found("Group"));
    }
    let kind = str_of(cal, "calendarType");
    let team = team_of(cal);
    if TEAM_TYPES.contains(&kind) && team.is_empty() {
        return Err(unprocessable(format!(
            "teamMembers should not be empty for calendarType {kind}"
        )));
    }
    if kind == "personal" && team.len() != 1 {
        return Err(ApiError::bad_request(
            "Personal calendar must have exactly one team member",
        ));
    }
    for key in ["slug", "widgetSlug"] {
        let slug = str_of(cal, key);
        if !slug.is_empty()
            && ctx.list(CALENDAR, location_id).iter().any(|c| {
                except != Some(str_of(c, "id"))
                    && (str_of(c, "slug") == slug || str_of(c, "widgetSlug") == slug)
            })
        {
            return Err(ApiError::bad_request(format!(
                "The slug {slug} is already in use"
            )));
        }
    }
    Ok(())
}

/// Copies the writable fields of `body` (skipping `null`s) into calendar `cal`.
fn apply_calendar_fields(cal: &mut Value, body: &Map<String, Value>, creating: bool) {
    let Some(obj) = cal.as_object_mut() else {
        return;
    };
    for k in CALENDAR_FIELDS {
        if !creating && *k == "calendarType" {
            continue;
        }
        if let Some(v) = body.get(*k).filter(|v| !v.is_null()) {
            let v = if *k == "teamMembers" {
                normalize_team(v)
            } else {
                v.clone()
            };
            obj.insert((*k).to_string(), v);
        }
    }
    if obj.get("groupId").is_some_and(|g| g.as_str() == Some("")) {
        obj.remove("groupId");
    }
}

/// A new calendar with HighLevel's defaults.
fn calendar_base(id: &str, location_id: &str, has_team: bool) -> Value {
    json!({
        "id": id,
        "locationId": location_id,
        "isActive": true,
        "description": "",
        "calendarType": if has_team { "round_robin" } else { "event" },
        "eventType": "RoundRobin_OptimizeForAvailability",
        "widgetType": "classic",
        "eventTitle": "{{contact.name}}",
        "eventColor": "#039be5",
        "teamMembers": [],
        "locationConfigurations": [],
        "slotDuration": 30,
        "slotDurationUnit": "mins",
        "slotInterval": 30,
        "slotIntervalUnit": "mins",
        "slotBuffer": 0,
        "slotBufferUnit": "mins",
        "preBuffer": 0,
        "preBufferUnit": "mins",
        "appoinmentPerSlot": 1,
        "appoinmentPerDay": 0,
        "allowBookingAfter": 0,
        "allowBookingAfterUnit": "hours",
        "allowBookingFor": 0,
        "allowBookingForUnit": "days",
        "openHours": [],
        "availabilities": [],
        "enableRecurring": false,
        "autoConfirm": true,
        "googleInvitationEmails": false,
        "allowReschedule": true,
        "allowCancellation": true,
        "formSubmitType": "ThankYouMessage",
        "notifications": [],
    })
}

fn calendar_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let body = req.body_object();
    validate_calendar(&body, true)?;
    let loc = body_location(req)?;
    let id = new_id();
    let has_team = body
        .get("teamMembers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let mut cal = calendar_base(&id, &loc, has_team);
    apply_calendar_fields(&mut cal, &body, true);
    let name = str_of(&cal, "name").to_string();
    if str_of(&cal, "slug").is_empty() {
        cal["slug"] = json!(unique_calendar_slug(ctx, &loc, &slugify(&name)));
    }
    if str_of(&cal, "widgetSlug").is_empty() {
        cal["widgetSlug"] = cal["slug"].clone();
    }
    check_calendar(ctx, &cal, &loc, Some(&id))?;
    ctx.put(CALENDAR, &id, Some(&loc), None, cal.clone())?;
    // The spec answers 200 (not 201) for this creation.
    ok(json!({ "calendar": cal }))
}

fn calendar_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let cal = ctx.find(CALENDAR, req.path("calendarId")?, "Calendar", req)?;
    ok(json!({ "calendar": &*cal }))
}

fn calendars_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = query_location(req)?;
    let group = req.query("groupId").filter(|s| !s.is_empty());
    let show_drafted = query_bool(req, "showDrafted")?.unwrap_or(true);
    let calendars: Vec<Value> = ctx
        .list(CALENDAR, &loc)
        .iter()
        .filter(|c| group.is_none_or(|g| str_of(c, "groupId") == g))
        .filter(|c| show_drafted || c.get("isActive").and_then(Value::as_bool) != Some(false))
        .map(|c| (**c).clone())
        .collect();
    ok(json!({ "calendars": calendars }))
}

fn calendar_update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("calendarId")?;
    let old = ctx.find(CALENDAR, id, "Calendar", req)?;
    let body = req.body_object();
    validate_calendar(&body, false)?;
    let loc = str_of(&old, "locationId").to_string();
    let mut cal = (*old).clone();
    apply_calendar_fields(&mut cal, &body, false);
    check_calendar(ctx, &cal, &loc, Some(id))?;
    ctx.replace(CALENDAR, id, cal.clone())?;
    ok(json!({ "calendar": cal }))
}

fn calendar_delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("calendarId")?;
    let cal = ctx.find(CALENDAR, id, "Calendar", req)?;
    let loc = str_of(&cal, "locationId").to_string();
    // Its events and notification settings go with it.
    for kind in [APPOINTMENT, BLOCKED_SLOT, NOTIFICATION] {
        for child in child_ids(ctx, kind, id) {
            ctx.delete(kind, &child)?;
        }
    }
    // Resources and schedules forget it.
    for kind in [RESOURCE, SCHEDULE] {
        for doc in ctx.list(kind, &loc) {
            let linked = doc
                .get("calendarIds")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|c| c.as_str() == Some(id)));
            if linked {
                let mut d = (*doc).clone();
                if let Some(a) = d.get_mut("calendarIds").and_then(Value::as_array_mut) {
                    a.retain(|c| c.as_str() != Some(id));
                }
                ctx.replace(kind, str_of(&doc, "id"), d)?;
            }
        }
    }
    ctx.delete(CALENDAR, id)?;
    ok(json!({ "success": true }))
}

// ---------------------------------------------------------------------------------------------
// Free slots
// ---------------------------------------------------------------------------------------------

/// Whose availability a calendar's slots need, optionally narrowed to some users.
fn who_for(cal: &Value, users: Vec<String>) -> Who {
    if str_of(cal, "calendarType") == "class_booking" {
        return Who::Calendar;
    }
    let team = team_of(cal);
    if !users.is_empty() {
        // Only the calendar's own members can take its bookings.
        let users = if team.is_empty() {
            users
        } else {
            users.into_iter().filter(|u| team.contains(u)).collect()
        };
        return Who::Any(users);
    }
    if team.is_empty() {
        Who::Calendar
    } else if str_of(cal, "calendarType") == "collective" {
        Who::All(team)
    } else {
        Who::Any(team)
    }
}

fn free_slots(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let cal = ctx.find(CALENDAR, req.path("calendarId")?, "Calendar", req)?;
    require_query(req, &["startDate", "endDate"])?;
    let parse = |name: &str| -> Result<i64, ApiError> {
        req.query(name)
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|n| n.is_finite())
            .map(|n| n as i64)
            .ok_or_else(|| {
                unprocessable(format!(
                    "{name} must be a number conforming to the specified constraints"
                ))
            })
    };
    let (from, to) = (parse("startDate")?, parse("endDate")?);
    if to < from {
        return Err(ApiError::bad_request(
            "endDate must be greater than startDate",
        ));
    }
    if to - from > 31 * tz::DAY_MS {
        return Err(ApiError::bad_request(
            "Date range cannot be more than 31 days",
        ));
    }
    let loc = str_of(&cal, "locationId").to_string();
    let cal_tz = location_tz(ctx, &loc);
    // A zone the sandbox does not know falls back to the location's zone (the instants stay
    // right: every slot carries its offset).
    let out_tz = req.query("timezone").and_then(Tz::parse).unwrap_or(cal_tz);
    let mut users: Vec<String> = req
        .query_all("userIds")
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::to_string)
        .collect();
    if let Some(u) = req.query("userId").filter(|s| !s.is_empty()) {
        users.insert(0, u.to_string());
    }
    users.retain(|u| !u.is_empty());
    let mut out = Map::new();
    if cal.get("isActive").and_then(Value::as_bool) == Some(false) {
        // An inactive calendar takes no bookings.
        return ok(Value::Object(out));
    }
    let engine = Engine::new(ctx, &cal, cal_tz, req.now_ms, None);
    for start in engine.free_slots(&who_for(&cal, users), from, to) {
        let entry = out
            .entry(out_tz.date_key(start))
            .or_insert_with(|| json!({ "slots": [] }));
        if let Some(a) = entry.get_mut("slots").and_then(Value::as_array_mut) {
            a.push(json!(out_tz.format(start)));
        }
    }
    // The spec's shape: date keys only (no `traceId`, which would break its additionalProperties).
    ok(Value::Object(out))
}

// ---------------------------------------------------------------------------------------------
// Events: appointments and blocked slots
// ---------------------------------------------------------------------------------------------

const APPOINTMENT_STATUSES: &[&str] = &[
    "new",
    "confirmed",
    "cancelled",
    "showed",
    "noshow",
    "invalid",
];
const MEETING_LOCATION_TYPES: &[&str] = &[
    "custom", "zoom", "gmeet", "phone", "address", "ms_teams", "google",
];

fn validate_appointment(body: &Map<String, Value>, creating: bool) -> Result<(), ApiError> {
    let mut r = Rules::new(body, "");
    if creating {
        r.required(&["calendarId", "locationId", "contactId", "startTime"]);
    }
    r.strings(&[
        "title",
        "meetingLocationId",
        "assignedUserId",
        "description",
        "address",
        "rrule",
        "calendarId",
        "locationId",
        "contactId",
    ]);
    r.booleans(&[
        "overrideLocationConfig",
        "ignoreDateRange",
        "toNotify",
        "ignoreFreeSlotValidation",
    ]);
    r.one_of("appointmentStatus", APPOINTMENT_STATUSES);
    r.one_of("meetingLocationType", MEETING_LOCATION_TYPES);
    r.finish()
}

/// Parses `startTime`/`endTime` of a body (422 when unreadable).
fn time_field(body: &Map<String, Value>, key: &str, tz: Tz) -> Result<Option<i64>, ApiError> {
    match body.get(key).filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => parse_when(v, tz)
            .map(Some)
            .ok_or_else(|| unprocessable(format!("{key} must be a valid ISO 8601 date string"))),
    }
}

/// `{{contact.name}}`-style event titles.
fn render_title(template: &str, contact: &Value, cal: &Value) -> String {
    let first = str_of(contact, "firstName");
    let last = str_of(contact, "lastName");
    let name = Some(format!("{first} {last}").trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            contact
                .get("contactName")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .or_else(|| {
            contact
                .get("email")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default();
    let out = template
        .replace("{{contact.name}}", &name)
        .replace("{{contact.first_name}}", first)
        .replace("{{contact.last_name}}", last)
        .replace("{{calendar.name}}", str_of(cal, "name"));
    if out.trim().is_empty() {
        "Appointment".to_string()
    } else {
        out
    }
}

/// Checks a booking (unless validation is skipped) and picks the assignee.
///
/// Returns the assigned user (`""` when none) and the secondary users.
#[allow(clippy::too_many_arguments)]
fn book(
    ctx: &Ctx<'_>,
    cal: &Value,
    tz: Tz,
    now_ms: i64,
    start: i64,
    end: i64,
    assigned: Option<&str>,
    validate: bool,
    ignore_window: bool,
    exclude: Option<&str>,
) -> Result<(String, Vec<String>), ApiError> {
    let engine = Engine::new(ctx, cal, tz, now_ms, exclude);
    let team = team_of(cal);
    let collective = str_of(cal, "calendarType") == "collective";
    let who = match assigned {
        Some(u) if !collective => Who::Any(vec![u.to_string()]),
        _ => {
            let mut who = who_for(cal, Vec::new());
            if str_of(cal, "eventType") == "RoundRobin_OptimizeForEqualDistribution"
                && let Who::Any(users) = &mut who
            {
                let load = |u: &String| {
                    ctx.children(APPOINTMENT, str_of(cal, "id"))
                        .iter()
                        .filter(|a| str_of(a, "assignedUserId") == u.as_str())
                        .count()
                };
                users.sort_by_key(load);
            }
            who
        }
    };
    let free = if validate {
        // A calendar without team members also has its own seats per slot.
        let seats_taken = team.is_empty()
            && assigned.is_some()
            && engine.free_for(&Who::Calendar, start, end).is_none();
        if seats_taken || !engine.on_grid(start) || !(ignore_window || engine.in_window(start)) {
            return Err(ApiError::bad_request(SLOT_TAKEN));
        }
        engine
            .free_for(&who, start, end)
            .ok_or_else(|| ApiError::bad_request(SLOT_TAKEN))?
    } else {
        engine.free_for(&who, start, end).flatten()
    };
    let assignee = assigned
        .map(str::to_string)
        .or(free)
        .or_else(|| match &who {
            Who::Any(users) | Who::All(users) => users.first().cloned(),
            Who::Calendar => None,
        })
        .unwrap_or_default();
    let users = if collective {
        team
    } else if assignee.is_empty() {
        Vec::new()
    } else {
        vec![assignee.clone()]
    };
    Ok((assignee, users))
}

/// The appointment as create/update answer it (`AppointmentSchemaResponse`).
fn appointment_view(a: &Value) -> Value {
    let mut out = Map::new();
    for k in [
        "id",
        "calendarId",
        "locationId",
        "contactId",
        "startTime",
        "endTime",
        "title",
        "meetingLocationType",
        "meetingLocationId",
        "appointmentStatus",
        "assignedUserId",
        "address",
        "description",
        "isRecurring",
        "rrule",
    ] {
        if let Some(v) = a.get(k).filter(|v| !v.is_null()) {
            out.insert(k.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// The documented webhook payload of an appointment event.
fn appointment_event(kind: &str, a: &Value) -> Value {
    let mut ap = Map::new();
    for k in [
        "id",
        "address",
        "title",
        "calendarId",
        "contactId",
        "groupId",
        "appointmentStatus",
        "assignedUserId",
        "users",
        "notes",
        "source",
        "startTime",
        "endTime",
        "dateAdded",
        "dateUpdated",
    ] {
        if let Some(v) = a.get(k).filter(|v| !v.is_null()) {
            ap.insert(k.to_string(), v.clone());
        }
    }
    json!({ "type": kind, "locationId": a["locationId"], "appointment": ap })
}

fn appointment_of(ctx: &Ctx<'_>, req: &Req, id: &str) -> Result<Arc<Value>, ApiError> {
    ctx.find(APPOINTMENT, id, "Appointment", req)
}

fn appointment_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let a = appointment_of(ctx, req, req.path("eventId")?)?;
    ok(json!({ "event": &*a }))
}

fn appointment_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let body = req.body_object();
    validate_appointment(&body, true)?;
    let loc = body_location(req)?;
    let cal_id = str_of(&req.body, "calendarId");
    let cal = ctx.find(CALENDAR, cal_id, "Calendar", req)?;
    if str_of(&cal, "locationId") != loc {
        return Err(ApiError::not_found("Calendar"));
    }
    let contact_id = str_of(&req.body, "contactId");
    let contact = ctx.find(CONTACT, contact_id, "Contact", req)?;
    let tz = location_tz(ctx, &loc);
    let start = time_field(&body, "startTime", tz)?.unwrap_or(req.now_ms);
    let engine_duration = Engine::new(ctx, &cal, tz, req.now_ms, None).duration_ms();
    let end = time_field(&body, "endTime", tz)?.unwrap_or(start + engine_duration);
    if end <= start {
        return Err(unprocessable("endTime must be after startTime"));
    }
    let validate = req
        .field("ignoreFreeSlotValidation")
        .and_then(Value::as_bool)
        != Some(true);
    let ignore_window = req.field("ignoreDateRange").and_then(Value::as_bool) == Some(true);
    let assigned = req.field_str("assignedUserId").filter(|s| !s.is_empty());
    let (assignee, users) = book(
        ctx,
        &cal,
        tz,
        req.now_ms,
        start,
        end,
        assigned,
        validate,
        ignore_window,
        None,
    )?;
    let status = req.field_str("appointmentStatus").unwrap_or_else(|| {
        if cal.get("autoConfirm").and_then(Value::as_bool) == Some(false) {
            "new"
        } else {
            "confirmed"
        }
    });
    let title = req
        .field_str("title")
        .map(str::to_string)
        .unwrap_or_else(|| render_title(str_of(&cal, "eventTitle"), &contact, &cal));
    let now = iso(req.now_ms);
    let id = new_id();
    let mut a = json!({
        "id": id,
        "calendarId": cal_id,
        "locationId": loc,
        "contactId": contact_id,
        "groupId": str_of(&cal, "groupId"),
        "title": title,
        "appointmentStatus": status,
        "assignedUserId": assignee,
        "users": users,
        "notes": "",
        "meetingLocationType": req.field_str("meetingLocationType").unwrap_or("default"),
        "meetingLocationId": req.field_str("meetingLocationId").unwrap_or("default"),
        "isRecurring": false,
        "startTime": tz.format(start),
        "endTime": tz.format(end),
        "dateAdded": now,
        "dateUpdated": now,
        "assignedResources": [],
        "source": "third_party",
        "createdBy": { "source": "third_party" },
    });
    let address = req.field_str("address").map(str::to_string).or_else(|| {
        cal.pointer("/locationConfigurations/0/location")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    if let Some(addr) = address {
        a["address"] = json!(addr);
    }
    if let Some(d) = req.field_str("description") {
        a["description"] = json!(d);
    }
    if let Some(rr) = req.field_str("rrule").filter(|s| !s.is_empty()) {
        a["rrule"] = json!(rr);
        a["isRecurring"] = json!(true);
    }
    ctx.put(APPOINTMENT, &id, Some(&loc), Some(cal_id), a.clone())?;
    ctx.emit(
        "AppointmentCreate",
        &loc,
        appointment_event("AppointmentCreate", &a),
    );
    // The spec answers 200 (not 201) for this creation.
    ok(appointment_view(&a))
}

fn appointment_update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("eventId")?;
    let old = appointment_of(ctx, req, id)?;
    let body = req.body_object();
    validate_appointment(&body, false)?;
    let loc = str_of(&old, "locationId").to_string();
    let tz = location_tz(ctx, &loc);
    let mut cal_id = str_of(&old, "calendarId").to_string();
    if let Some(c) = req
        .field_str("calendarId")
        .filter(|c| !c.is_empty() && *c != cal_id)
    {
        let cal = ctx.find(CALENDAR, c, "Calendar", req)?;
        if str_of(&cal, "locationId") != loc {
            return Err(ApiError::not_found("Calendar"));
        }
        cal_id = c.to_string();
    }
    let cal = ctx
        .get(CALENDAR, &cal_id)
        .map(|d| d.body.clone())
        .ok_or_else(|| ApiError::not_found("Calendar"))?;
    let old_start = old
        .get("startTime")
        .and_then(parse_time_ms)
        .unwrap_or(req.now_ms);
    let old_end = old
        .get("endTime")
        .and_then(parse_time_ms)
        .unwrap_or(old_start);
    let start = time_field(&body, "startTime", tz)?.unwrap_or(old_start);
    let end = time_field(&body, "endTime", tz)?.unwrap_or(start + (old_end - old_start));
    if end <= start {
        return Err(unprocessable("endTime must be after startTime"));
    }
    let mut a = (*old).clone();
    let status = req
        .field_str("appointmentStatus")
        .unwrap_or(str_of(&old, "appointmentStatus"))
        .to_string();
    let assigned = req.field_str("assignedUserId").map(str::to_string);
    let moved = start != old_start
        || end != old_end
        || cal_id != str_of(&old, "calendarId")
        || assigned
            .as_deref()
            .is_some_and(|u| u != str_of(&old, "assignedUserId"));
    let reopened = FREEING_STATUSES.contains(&str_of(&old, "appointmentStatus"))
        && !FREEING_STATUSES.contains(&status.as_str());
    if (moved || reopened) && !FREEING_STATUSES.contains(&status.as_str()) {
        let validate = req
            .field("ignoreFreeSlotValidation")
            .and_then(Value::as_bool)
            != Some(true);
        let ignore_window = req.field("ignoreDateRange").and_then(Value::as_bool) == Some(true);
        let keep = assigned
            .clone()
            .or_else(|| Some(str_of(&old, "assignedUserId").to_string()))
            .filter(|s| !s.is_empty());
        let (assignee, users) = book(
            ctx,
            &cal,
            tz,
            req.now_ms,
            start,
            end,
            keep.as_deref(),
            validate,
            ignore_window,
            Some(id),
        )?;
        a["assignedUserId"] = json!(assignee);
        a["users"] = json!(users);
    } else if let Some(u) = &assigned {
        a["assignedUserId"] = json!(u);
        a["users"] = if u.is_empty() { json!([]) } else { json!([u]) };
    }
    for k in [
        "title",
        "meetingLocationType",
        "meetingLocationId",
        "description",
        "address",
    ] {
        if let Some(v) = req.field(k) {
            a[k] = v.clone();
        }
    }
    if let Some(rr) = req.field_str("rrule") {
        a["rrule"] = json!(rr);
        a["isRecurring"] = json!(!rr.is_empty());
    }
    a["appointmentStatus"] = json!(status);
    a["calendarId"] = json!(cal_id);
    a["groupId"] = json!(str_of(&cal, "groupId"));
    a["startTime"] = json!(tz.format(start));
    a["endTime"] = json!(tz.format(end));
    a["dateUpdated"] = json!(iso(req.now_ms));
    ctx.put(APPOINTMENT, id, Some(&loc), Some(&cal_id), a.clone())?;
    ctx.emit(
        "AppointmentUpdate",
        &loc,
        appointment_event("AppointmentUpdate", &a),
    );
    ok(appointment_view(&a))
}

fn event_delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("eventId")?;
    if ctx.get(APPOINTMENT, id).is_some() {
        let a = appointment_of(ctx, req, id)?;
        ctx.delete(APPOINTMENT, id)?;
        let loc = str_of(&a, "locationId").to_string();
        ctx.emit(
            "AppointmentDelete",
            &loc,
            appointment_event("AppointmentDelete", &a),
        );
    } else {
        ctx.find(BLOCKED_SLOT, id, "Event", req)?;
        ctx.delete(BLOCKED_SLOT, id)?;
    }
    // The spec answers 201 with `succeeded` (spelled correctly here, unlike `succeded` elsewhere).
    created(json!({ "succeeded": true }))
}

/// Query of the event lists: location, time range and one of calendar / group / user.
struct EventQuery {
    location_id: String,
    from: i64,
    to: i64,
    calendars: Option<Vec<String>>,
    user: Option<String>,
}

fn event_query(ctx: &Ctx<'_>, req: &Req) -> Result<EventQuery, ApiError> {
    let location_id = query_location(req)?;
    require_query(req, &["startTime", "endTime"])?;
    let ms = |name: &str| {
        req.query(name)
            .and_then(|s| parse_time_ms(&json!(s)))
            .ok_or_else(|| {
                unprocessable(format!(
                    "{name} must be a number string (epoch milliseconds)"
                ))
            })
    };
    let (from, to) = (ms("startTime")?, ms("endTime")?);
    let pick = |n: &str| req.query(n).filter(|s| !s.is_empty()).map(str::to_string);
    let (calendar, group, user) = (pick("calendarId"), pick("groupId"), pick("userId"));
    if calendar.is_none() && group.is_none() && user.is_none() {
        return Err(ApiError::bad_request(
            "Either of calendarId, userId or groupId is required",
        ));
    }
    let mut calendars = calendar.map(|c| vec![c]);
    if let Some(g) = group {
        let in_group: Vec<String> = ctx
            .list(CALENDAR, &location_id)
            .iter()
            .filter(|c| str_of(c, "groupId") == g)
            .map(|c| str_of(c, "id").to_string())
            .collect();
        calendars = Some(match calendars {
            Some(cs) => cs.into_iter().filter(|c| in_group.contains(c)).collect(),
            None => in_group,
        });
    }
    Ok(EventQuery {
        location_id,
        from,
        to,
        calendars,
        user,
    })
}

/// Events of a kind matching the query, by start time.
fn matching_events(ctx: &Ctx<'_>, kind: &str, q: &EventQuery) -> Vec<Arc<Value>> {
    let mut out: Vec<(i64, Arc<Value>)> = ctx
        .list(kind, &q.location_id)
        .into_iter()
        .filter_map(|e| {
            let start = e.get("startTime").and_then(parse_time_ms)?;
            let end = e.get("endTime").and_then(parse_time_ms).unwrap_or(start);
            let in_range = start <= q.to && end >= q.from;
            let cal_ok = q
                .calendars
                .as_ref()
                .is_none_or(|cs| cs.iter().any(|c| c == str_of(&e, "calendarId")));
            let user_ok = q.user.as_deref().is_none_or(|u| {
                str_of(&e, "assignedUserId") == u
                    || e.get("users")
                        .and_then(Value::as_array)
                        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(u)))
            });
            (in_range && cal_ok && user_ok).then_some((start, e))
        })
        .collect();
    out.sort_by_key(|(s, _)| *s);
    out.into_iter().map(|(_, e)| e).collect()
}

fn events_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let q = event_query(ctx, req)?;
    let events: Vec<Value> = matching_events(ctx, APPOINTMENT, &q)
        .iter()
        .map(|e| (**e).clone())
        .collect();
    ok(json!({ "events": events }))
}

/// A blocked slot in the event list's shape (`CalendarEventDTO`): the appointment-only
/// required fields get empty values.
fn blocked_event_view(ctx: &Ctx<'_>, b: &Value) -> Value {
    let mut e = b.clone();
    let group = ctx
        .get(CALENDAR, str_of(b, "calendarId"))
        .map(|c| str_of(&c.body, "groupId").to_string())
        .unwrap_or_default();
    let user = str_of(b, "assignedUserId").to_string();
    e["groupId"] = json!(group);
    e["contactId"] = json!("");
    e["appointmentStatus"] = json!("");
    e["assignedUserId"] = json!(user);
    e["users"] = if user.is_empty() {
        json!([])
    } else {
        json!([user])
    };
    e
}

fn blocked_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let q = event_query(ctx, req)?;
    let events: Vec<Value> = matching_events(ctx, BLOCKED_SLOT, &q)
        .iter()
        .map(|b| blocked_event_view(ctx, b))
        .collect();
    ok(json!({ "events": events }))
}

fn validate_block(body: &Map<String, Value>) -> Result<(), ApiError> {
    let mut r = Rules::new(body, "");
    r.required(&["calendarId", "locationId", "startTime", "endTime"]);
    r.strings(&["title", "calendarId", "assignedUserId", "locationId"]);
    r.finish()
}

/// Resolves a blocked slot's calendar and times from a body, with `old` for updates.
fn block_from(
    ctx: &Ctx<'_>,
    req: &Req,
    body: &Map<String, Value>,
    old: Option<&Value>,
) -> Result<(String, Value), ApiError> {
    let loc = body_location(req)?;
    let cal_id = str_of(&req.body, "calendarId");
    let cal = ctx.find(CALENDAR, cal_id, "Calendar", req)?;
    if str_of(&cal, "locationId") != loc {
        return Err(ApiError::not_found("Calendar"));
    }
    let tz = location_tz(ctx, &loc);
    let start = time_field(body, "startTime", tz)?.unwrap_or_default();
    let end = time_field(body, "endTime", tz)?.unwrap_or_default();
    if end <= start {
        return Err(unprocessable("endTime must be after startTime"));
    }
    let now = iso(req.now_ms);
    let mut b = match old {
        Some(o) => o.clone(),
        None => json!({ "id": new_id(), "dateAdded": now }),
    };
    b["locationId"] = json!(loc);
    b["calendarId"] = json!(cal_id);
    b["title"] = json!(
        req.field_str("title").map(str::to_string).unwrap_or_else(
            || old.map_or("Blocked".to_string(), |o| str_of(o, "title").to_string())
        )
    );
    if let Some(u) = req.field_str("assignedUserId") {
        b["assignedUserId"] = json!(u);
    }
    b["startTime"] = json!(tz.format(start));
    b["endTime"] = json!(tz.format(end));
    b["dateUpdated"] = json!(now);
    Ok((loc, b))
}

fn blocked_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let body = req.body_object();
    validate_block(&body)?;
    let (loc, b) = block_from(ctx, req, &body, None)?;
    let id = str_of(&b, "id").to_string();
    ctx.put(
        BLOCKED_SLOT,
        &id,
        Some(&loc),
        Some(str_of(&b, "calendarId")),
        b.clone(),
    )?;
    created(b)
}

fn blocked_update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let id = req.path("eventId")?;
    let old = ctx.find(BLOCKED_SLOT, id, "Event", req)?;
    let mut body = req.body_object();
    // Times not sent keep their value.
    for k in ["startTime", "endTime"] {
        if body.get(k).is_none_or(Value::is_null) {
            body.insert(k.to_string(), old.get(k).cloned().unwrap_or(Value::Null));
        }
    }
    validate_block(&body)?;
    let (loc, b) = block_from(ctx, req, &body, Some(&old))?;
    ctx.put(
        BLOCKED_SLOT,
        id,
        Some(&loc),
        Some(str_of(&b, "calendarId")),
        b.clone(),
    )?;
    // The spec answers 201 for this update.
    created(b)
}

// ---------------------------------------------------------------------------------------------
// Appointment notes (contact notes that carry the appointment id)
// ---------------------------------------------------------------------------------------------

fn note_json(ctx: &Ctx<'_>, n: &Value) -> Value {
    let mut out = Map::new();
    for k in [
        "id",
        "body",
        "userId",
        "dateAdded",
        "contactId",
        "appointmentId",
    ] {
        if let Some(v) = n.get(k).filter(|v| !v.is_null()) {
            out.insert(k.to_string(), v.clone());
        }
    }
    let user = str_of(n, "userId");
    if !user.is_empty() {
        let mut by = json!({ "id": user });
        if let Some(name) = user_name(ctx, user) {
            by["name"] = json!(name);
        }
        out.insert("createdBy".into(), by);
    }
    Value::Object(out)
}

fn note_event(kind: &str, location_id: &str, n: &Value) -> Value {
    let mut p = json!({ "type": kind, "locationId": location_id });
    for k in ["id", "body", "contactId", "dateAdded", "userId"] {
        if let Some(v) = n.get(k).filter(|v| !v.is_null()) {
            p[k] = v.clone();
        }
    }
    p
}

fn appointment_notes(ctx: &Ctx<'_>, a: &Value) -> Vec<Arc<Value>> {
    let id = str_of(a, "id");
    ctx.children(NOTE, str_of(a, "contactId"))
        .into_iter()
        .filter(|n| str_of(n, "appointmentId") == id)
        .collect()
}

fn validate_note(req: &Req) -> Result<(), ApiError> {
    let body = req.body_object();
    let mut r = Rules::new(&body, "");
    r.required(&["body"]);
    r.strings(&["body", "userId"]);
    if r.get("body")
        .and_then(Value::as_str)
        .is_some_and(|b| b.chars().count() > 5000)
    {
        r.fail("body", "must be shorter than or equal to 5000 characters");
    }
    r.finish()
}

fn note_of(ctx: &Ctx<'_>, req: &Req) -> Result<(Arc<Value>, Arc<Value>), ApiError> {
    let a = appointment_of(ctx, req, req.path("appointmentId")?)?;
    let nid = req.path("noteId")?;
    let n = ctx
        .get(NOTE, nid)
        .map(|d| d.body.clone())
        .filter(|n| str_of(n, "appointmentId") == str_of(&a, "id"))
        .ok_or_else(|| ApiError::not_found("Note"))?;
    Ok((a, n))
}

fn notes_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let a = appointment_of(ctx, req, req.path("appointmentId")?)?;
    require_query(req, &["limit", "offset"])?;
    let limit = query_number(req, "limit", 10, 1, 20)?;
    let offset = query_number(req, "offset", 0, 0, usize::MAX)?;
    let mut notes = appointment_notes(ctx, &a);
    // Newest first.
    notes.reverse();
    let page: Vec<Value> = window(&notes, offset, limit)
        .iter()
        .map(|n| note_json(ctx, n))
        .collect();
    ok(json!({ "notes": page, "hasMore": offset + limit < notes.len() }))
}

fn note_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let a = appointment_of(ctx, req, req.path("appointmentId")?)?;
    validate_note(req)?;
    let id = new_id();
    let contact_id = str_of(&a, "contactId").to_string();
    let loc = str_of(&a, "locationId").to_string();
    let mut n = json!({
        "id": id,
        "body": req.field_str("body"),
        "title": Value::Null,
        "color": Value::Null,
        "pinned": false,
        "dateAdded": iso(req.now_ms),
        "contactId": contact_id,
        "appointmentId": a["id"],
    });
    if let Some(u) = req.field_str("userId").filter(|u| !u.is_empty()) {
        n["userId"] = json!(u);
    }
    ctx.put(NOTE, &id, Some(&loc), Some(&contact_id), n.clone())?;
    ctx.emit("NoteCreate", &loc, note_event("NoteCreate", &loc, &n));
    created(json!({ "note": note_json(ctx, &n) }))
}

fn note_update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let (a, old) = note_of(ctx, req)?;
    validate_note(req)?;
    let mut n = (*old).clone();
    n["body"] = json!(req.field_str("body"));
    if let Some(u) = req.field_str("userId").filter(|u| !u.is_empty()) {
        n["userId"] = json!(u);
    }
    let loc = str_of(&a, "locationId").to_string();
    ctx.replace(NOTE, str_of(&old, "id"), n.clone())?;
    ctx.emit("NoteUpdate", &loc, note_event("NoteUpdate", &loc, &n));
    ok(json!({ "note": note_json(ctx, &n) }))
}

fn note_delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let (a, n) = note_of(ctx, req)?;
    let loc = str_of(&a, "locationId").to_string();
    ctx.delete(NOTE, str_of(&n, "id"))?;
    ctx.emit("NoteDelete", &loc, note_event("NoteDelete", &loc, &n));
    ok(json!({ "success": true }))
}

// ---------------------------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------------------------

const RECEIVER_TYPES: &[&str] = &[
    "contact",
    "guest",
    "assignedUser",
    "emails",
    "phoneNumbers",
    "business",
];
const CHANNELS: &[&str] = &["email", "inApp", "sms", "whatsapp"];
const NOTIFICATION_TYPES: &[&str] = &[
    "booked",
    "confirmation",
    "cancellation",
    "reminder",
    "followup",
    "reschedule",
];
const NOTIFICATION_FIELDS: &[&str] = &[
    "receiverType",
    "channel",
    "notificationType",
    "isActive",
    "templateId",
    "body",
    "subject",
    "afterTime",
    "beforeTime",
    "additionalEmailIds",
    "additionalPhoneNumbers",
    "selectedUsers",
    "fromAddress",
    "fromName",
    "fromNumber",
];

fn validate_notification(r: &mut Rules<'_>, creating: bool) {
    if creating {
        r.required(&["receiverType", "channel", "notificationType"]);
    }
    r.one_of("receiverType", RECEIVER_TYPES);
    r.one_of("channel", CHANNELS);
    r.one_of("notificationType", NOTIFICATION_TYPES);
    r.booleans(&["isActive", "deleted"]);
    r.strings(&[
        "templateId",
        "body",
        "subject",
        "fromAddress",
        "fromName",
        "fromNumber",
    ]);
    r.string_arrays(&[
        "additionalEmailIds",
        "additionalPhoneNumbers",
        "selectedUsers",
    ]);
    for key in ["afterTime", "beforeTime"] {
        for (i, s) in r.array_of_objects(key).into_iter().enumerate() {
            let mut sr = Rules::new(s, format!("{}{key}.{i}.", r.prefix));
            sr.numbers(&["timeOffset"]);
            sr.strings(&["unit"]);
            r.absorb(sr);
        }
    }
}

fn calendar_of_path(ctx: &Ctx<'_>, req: &Req) -> Result<Arc<Value>, ApiError> {
    ctx.find(CALENDAR, req.path("calendarId")?, "Calendar", req)
}

fn notification_of(ctx: &Ctx<'_>, req: &Req) -> Result<(Arc<Value>, Arc<Value>), ApiError> {
    let cal = calendar_of_path(ctx, req)?;
    let nid = req.path("notificationId")?;
    let n = ctx
        .get(NOTIFICATION, nid)
        .filter(|d| d.parent_id.as_deref() == Some(str_of(&cal, "id")))
        .map(|d| d.body.clone())
        .filter(|n| n.get("deleted").and_then(Value::as_bool) != Some(true))
        .ok_or_else(|| ApiError::not_found("Notification"))?;
    Ok((cal, n))
}

fn notifications_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let cal = calendar_of_path(ctx, req)?;
    let active = query_bool(req, "isActive")?;
    let deleted = query_bool(req, "deleted")?.unwrap_or(false);
    let skip = query_number(req, "skip", 0, 0, usize::MAX)?;
    let limit = query_number(req, "limit", 100, 1, usize::MAX)?;
    let all: Vec<Arc<Value>> = ctx
        .children(NOTIFICATION, str_of(&cal, "id"))
        .into_iter()
        .filter(|n| n.get("deleted").and_then(Value::as_bool).unwrap_or(false) == deleted)
        .filter(|n| active.is_none_or(|a| n.get("isActive").and_then(Value::as_bool) == Some(a)))
        .collect();
    let page: Vec<Value> = window(&all, skip, limit)
        .iter()
        .map(|n| (**n).clone())
        .collect();
    ok(Value::Array(page))
}

fn notification_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let (_, n) = notification_of(ctx, req)?;
    ok((*n).clone())
}

fn notification_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let cal = calendar_of_path(ctx, req)?;
    let items: Vec<Map<String, Value>> = match &req.body {
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_object().cloned().unwrap_or_default())
            .collect(),
        Value::Object(o) => vec![o.clone()],
        _ => return Err(unprocessable("body must be an array of notifications")),
    };
    if items.is_empty() {
        return Err(unprocessable("body should not be empty"));
    }
    let mut errs = Vec::new();
    let many = matches!(req.body, Value::Array(_));
    for (i, item) in items.iter().enumerate() {
        let mut r = Rules::new(item, if many { format!("{i}.") } else { String::new() });
        validate_notification(&mut r, true);
        errs.extend(r.errs);
    }
    if !errs.is_empty() {
        return Err(ApiError::unprocessable(errs));
    }
    let cal_id = str_of(&cal, "id").to_string();
    let loc = str_of(&cal, "locationId").to_string();
    let mut out = Vec::new();
    for item in items {
        let id = new_id();
        let mut n = json!({
            "_id": id,
            "isActive": true,
            "deleted": false,
            "afterTime": [],
            "beforeTime": [],
            "additionalEmailIds": [],
            "additionalPhoneNumbers": [],
            "additionalWhatsappNumbers": [],
            "selectedUsers": [],
        });
        for k in NOTIFICATION_FIELDS {
            if let Some(v) = item.get(*k).filter(|v| !v.is_null()) {
                n[*k] = v.clone();
            }
        }
        ctx.put(NOTIFICATION, &id, Some(&loc), Some(&cal_id), n.clone())?;
        out.push(n);
    }
    ok(Value::Array(out))
}

fn notification_update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let (_, old) = notification_of(ctx, req)?;
    let body = req.body_object();
    let mut r = Rules::new(&body, "");
    validate_notification(&mut r, false);
    r.finish()?;
    let mut n = (*old).clone();
    for k in NOTIFICATION_FIELDS.iter().chain(&["deleted"]) {
        if let Some(v) = body.get(*k).filter(|v| !v.is_null()) {
            n[*k] = v.clone();
        }
    }
    ctx.replace(NOTIFICATION, str_of(&old, "_id"), n)?;
    ok(json!({ "message": "Notification updated successfully" }))
}

fn notification_delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let (_, old) = notification_of(ctx, req)?;
    // Soft delete: the list shows it again with `deleted=true`.
    let mut n = (*old).clone();
    n["deleted"] = json!(true);
    ctx.replace(NOTIFICATION, str_of(&old, "_id"), n)?;
    ok(json!({ "message": "Notification deleted successfully" }))
}

// ---------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------

const RESOURCE_TYPES: &[&str] = &["equipments", "rooms"];

fn resource_type(req: &Req) -> Result<String, ApiError> {
    let t = req.path("resourceType")?;
    if RESOURCE_TYPES.contains(&t) {
        Ok(t.to_string())
    } else {
        Err(unprocessable(
            "resourceType must be one of the following values: equipments, rooms",
        ))
    }
}

fn resource_of(ctx: &Ctx<'_>, req: &Req) -> Result<Arc<Value>, ApiError> {
    let kind = resource_type(req)?;
    let r = ctx.find(RESOURCE, req.path("id")?, "Resource", req)?;
    if str_of(&r, "resourceType") != kind {
        return Err(ApiError::not_found("Resource"));
    }
    Ok(r)
}

fn validate_resource(
    ctx: &Ctx<'_>,
    body: &Map<String, Value>,
    location_id: &str,
    creating: bool,
) -> Result<(), ApiError> {
    let mut r = Rules::new(body, "");
    if creating {
        r.required(&[
            "locationId",
            "name",
            "description",
            "quantity",
            "outOfService",
            "capacity",
            "calendarIds",
        ]);
    }
    r.strings(&["locationId", "name", "description"]);
    r.numbers(&["quantity", "outOfService", "capacity"]);
    r.booleans(&["isActive"]);
    r.string_arrays(&["calendarIds"]);
    if r.get("calendarIds")
        .and_then(Value::as_array)
        .is_some_and(|a| a.len() > 100)
    {
        r.fail("calendarIds", "must contain no more than 100 elements");
    }
    r.finish()?;
    for c in body
        .get("calendarIds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let c = c.as_str().unwrap_or_default();
        if ctx
            .get(CALENDAR, c)
            .is_none_or(|d| d.location_id.as_deref() != Some(location_id))
        {
            return Err(ApiError::not_found("Calendar"));
        }
    }
    Ok(())
}

fn resources_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let kind = resource_type(req)?;
    require_query(req, &["locationId", "limit", "skip"])?;
    let loc = query_location(req)?;
    let limit = query_number(req, "limit", 10, 1, usize::MAX)?;
    let skip = query_number(req, "skip", 0, 0, usize::MAX)?;
    let all: Vec<Arc<Value>> = ctx
        .list(RESOURCE, &loc)
        .into_iter()
        .filter(|r| str_of(r, "resourceType") == kind)
        .collect();
    let page: Vec<Value> = window(&all, skip, limit)
        .iter()
        .map(|r| (**r).clone())
        .collect();
    ok(Value::Array(page))
}

fn resource_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let r = resource_of(ctx, req)?;
    ok((*r).clone())
}

fn resource_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let kind = resource_type(req)?;
    let body = req.body_object();
    let loc = req.field_str("locationId").unwrap_or_default().to_string();
    validate_resource(ctx, &body, &loc, true)?;
    check_access(req, &loc)?;
    let id = new_id();
    // The spec's resource schema has no id field; the sandbox adds `id` so the resource can
    // be addressed afterwards.
    let r = json!({
        "id": id,
        "locationId": loc,
        "name": body.get("name"),
        "description": body.get("description"),
        "resourceType": kind,
        "isActive": true,
        "quantity": body.get("quantity"),
        "outOfService": body.get("outOfService"),
        "capacity": body.get("capacity"),
        "calendarIds": body.get("calendarIds"),
    });
    ctx.put(RESOURCE, &id, Some(&loc), None, r.clone())?;
    created(r)
}

fn resource_update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let old = resource_of(ctx, req)?;
    let loc = str_of(&old, "locationId").to_string();
    let body = req.body_object();
    if let Some(l) = body.get("locationId").and_then(Value::as_str)
        && l != loc
    {
        return Err(forbidden_location());
    }
    validate_resource(ctx, &body, &loc, false)?;
    let mut r = (*old).clone();
    for k in [
        "name",
        "description",
        "quantity",
        "outOfService",
        "capacity",
        "calendarIds",
        "isActive",
    ] {
        if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
            r[k] = v.clone();
        }
    }
    ctx.replace(RESOURCE, str_of(&old, "id"), r.clone())?;
    ok(r)
}

fn resource_delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let r = resource_of(ctx, req)?;
    ctx.delete(RESOURCE, str_of(&r, "id"))?;
    ok(json!({ "success": true }))
}

// ---------------------------------------------------------------------------------------------
// Availability schedules
// ---------------------------------------------------------------------------------------------

fn schedules_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    require_query(req, &["locationId", "userId"])?;
    let loc = query_location(req)?;
    let user = req.query("userId").unwrap_or_default();
    let calendar = req.query("calendarId").filter(|s| !s.is_empty());
    let skip = query_number(req, "skip", 0, 0, usize::MAX)?;
    let limit = query_number(req, "limit", 50, 1, 500)?;
    let all: Vec<Arc<Value>> = ctx
        .list(SCHEDULE, &loc)
        .into_iter()
        .filter(|s| str_of(s, "userId") == user)
        .filter(|s| s.get("deleted").and_then(Value::as_bool) != Some(true))
        .filter(|s| {
            calendar.is_none_or(|c| {
                s.get("calendarIds")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(c)))
            })
        })
        .collect();
    let page: Vec<Value> = window(&all, skip, limit)
        .iter()
        .map(|s| (**s).clone())
        .collect();
    ok(json!({ "schedules": page }))
}
