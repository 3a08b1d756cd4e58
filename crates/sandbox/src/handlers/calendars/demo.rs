//! Demo data for `--seed demo`: a "Sales" group, three calendars open Mon–Fri 9–17 in the
//! location's time zone, their notifications, two rooms and a projector, a working-hours
//! schedule per user, a few blocked slots, ~40 appointments over the past and next two weeks
//! (on free slots, linked to seeded contacts and users) and notes on some past ones.

use rand::Rng;
use serde_json::{Value, json};

use super::slots::{Engine, Who};
use super::tz::{DAY_MS, weekday};
use super::{
    APPOINTMENT, BLOCKED_SLOT, CALENDAR, GROUP, NOTIFICATION, RESOURCE, SCHEDULE, calendar_base,
    location_tz, normalize_team, render_title, str_of, team_of, who_for,
};
use crate::error::ApiError;
use crate::handlers::contacts::{CONTACT, LOCATION, NOTE};
use crate::handlers::{Ctx, Seed, iso, new_id};

/// Number of appointments the demo location gets.
const APPOINTMENTS: usize = 40;

const NOTE_BODIES: &[&str] = &[
    "Walked through pricing; wants a proposal by Friday.",
    "Needs SSO before signing.",
    "Good fit. Book a follow-up demo with the team.",
    "Asked about the HighLevel integration and webhooks.",
    "Rescheduled once; prefers mornings.",
    "Decision maker joined the call.",
];

fn push(seed: &mut Seed, kind: &'static str, id: &str) {
    seed.ids.entry(kind).or_default().push(id.to_string());
}

/// Mon–Fri 9:00–17:00.
fn weekdays_9_to_5() -> Value {
    json!([{
        "daysOfTheWeek": [1, 2, 3, 4, 5],
        "hours": [{ "openHour": 9, "openMinute": 0, "closeHour": 17, "closeMinute": 0 }],
    }])
}

/// The first day on or after `from` that is weekday `wd` (0 = Sunday).
fn next_weekday(from: i64, wd: i64) -> i64 {
    (from..from + 7).find(|d| weekday(*d) == wd).unwrap_or(from)
}

/// Seeds the calendars area.
pub(super) fn run(ctx: &mut Ctx<'_>, seed: &mut Seed) -> Result<(), ApiError> {
    let loc = seed.location_id.clone();
    let now = seed.now_ms;
    let tz = location_tz(ctx, &loc);
    let tz_name = ctx
        .get(LOCATION, &loc)
        .and_then(|d| {
            d.body
                .get("timezone")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "UTC".to_string());
    let users: Vec<String> = seed.ids("user").to_vec();
    let created = iso(now - 45 * DAY_MS);

    let group_id = new_id();
    ctx.put(
        GROUP,
        &group_id,
        Some(&loc),
        None,
        json!({
            "id": group_id, "locationId": loc, "name": "Sales", "description": "Calls with the sales team",
            "slug": "sales", "isActive": true,
        }),
    )?;
    push(seed, GROUP, &group_id);

    // (name, slug, description, team, duration, interval, group, title, colour, meeting location)
    let team_a: Vec<String> = users.iter().take(2).cloned().collect();
    let team_b: Vec<String> = users.iter().take(3).cloned().collect();
    let team_c: Vec<String> = users.last().cloned().into_iter().collect();
    let specs = [
        (
            "Discovery Call",
            "discovery-call",
            "A 30-minute intro call with sales.",
            team_a,
            30,
            30,
            Some(group_id.clone()),
            "Discovery Call with {{contact.name}}",
            "#039be5",
            json!({ "kind": "google_conference" }),
        ),
        (
            "Product Demo",
            "product-demo",
            "A live demo of the product.",
            team_b,
            45,
            60,
            Some(group_id.clone()),
            "Demo: {{contact.name}}",
            "#33b679",
            json!({ "kind": "zoom_conference" }),
        ),
        (
            "Consultation",
            "consultation",
            "An in-person consultation at the office.",
            team_c,
            60,
            60,
            None,
            "Consultation with {{contact.name}}",
            "#f6bf26",
            json!({ "kind": "physical", "location": "1 Sandbox Way, Austin, TX 78701" }),
        ),
    ];
    let mut calendars: Vec<Value> = Vec::new();
    for (i, (name, slug, description, team, duration, interval, group, title, color, place)) in
        specs.into_iter().enumerate()
    {
        let id = new_id();
        let mut cal = calendar_base(&id, &loc, !team.is_empty());
        let members: Vec<Value> = team
            .iter()
            .enumerate()
            .map(|(j, u)| json!({ "userId": u, "priority": 0.5, "isPrimary": j == 0 }))
            .collect();
        cal["name"] = json!(name);
        cal["slug"] = json!(slug);
        cal["widgetSlug"] = json!(slug);
        cal["description"] = json!(description);
        cal["teamMembers"] = normalize_team(&json!(members));
        cal["calendarType"] = json!(match (i, team.is_empty()) {
            (_, true) => "event",
            (2, false) => "personal",
            _ => "round_robin",
        });
        if i == 1 {
            cal["eventType"] = json!("RoundRobin_OptimizeForEqualDistribution");
        }
        cal["slotDuration"] = json!(duration);
        cal["slotInterval"] = json!(interval);
        cal["eventTitle"] = json!(title);
        cal["eventColor"] = json!(color);
        cal["locationConfigurations"] = json!([place]);
        cal["openHours"] = weekdays_9_to_5();
        cal["allowBookingFor"] = json!(60);
        cal["allowBookingForUnit"] = json!("days");
        if let Some(g) = group {
            cal["groupId"] = json!(g);
        }
        ctx.put(CALENDAR, &id, Some(&loc), None, cal.clone())?;
        push(seed, CALENDAR, &id);
        for (receiver, channel, kind, before) in [
            ("contact", "email", "booked", None),
            (
                "contact",
                "sms",
                "reminder",
                Some(json!([{ "timeOffset": 1, "unit": "hours" }])),
            ),
            ("assignedUser", "email", "booked", None),
        ] {
            let nid = new_id();
            let n = json!({
                "_id": nid, "receiverType": receiver, "channel": channel, "notificationType": kind,
                "isActive": true, "deleted": false, "templateId": "",
                "subject": if channel == "email" { json!(format!("Your {name} is booked")) } else { Value::Null },
                "body": format!("Hi {{{{contact.first_name}}}}, see you at {{{{appointment.start_time}}}} for your {name}."),
                "afterTime": [], "beforeTime": before.unwrap_or(json!([])),
                "additionalEmailIds": [], "additionalPhoneNumbers": [], "additionalWhatsappNumbers": [], "selectedUsers": [],
            });
            let mut n = n;
            if let Some(o) = n.as_object_mut() {
                o.retain(|_, v| !v.is_null());
            }
            ctx.put(NOTIFICATION, &nid, Some(&loc), Some(&id), n)?;
            push(seed, NOTIFICATION, &nid);
        }
        calendars.push(cal);
    }
    let cal_ids: Vec<String> = calendars
        .iter()
        .map(|c| str_of(c, "id").to_string())
        .collect();

    for (kind, name, description, quantity, capacity, linked) in [
        (
            "rooms",
            "Conference Room A",
            "Seats eight, with a screen.",
            1,
            8,
            vec![cal_ids[1].clone()],
        ),
        (
            "rooms",
            "Consultation Room",
            "Quiet room by the entrance.",
            1,
            3,
            vec![cal_ids[2].clone()],
        ),
        (
            "equipments",
            "Projector",
            "Portable projector.",
            2,
            1,
            vec![cal_ids[1].clone(), cal_ids[2].clone()],
        ),
    ] {
        let id = new_id();
        ctx.put(
            RESOURCE,
            &id,
            Some(&loc),
            None,
            json!({
                "id": id, "locationId": loc, "name": name, "description": description, "resourceType": kind,
                "isActive": true, "quantity": quantity, "outOfService": 0, "capacity": capacity, "calendarIds": linked,
            }),
        )?;
        push(seed, RESOURCE, &id);
    }

    for user in &users {
        let id = new_id();
        let linked: Vec<String> = calendars
            .iter()
            .filter(|c| team_of(c).contains(user))
            .map(|c| str_of(c, "id").to_string())
            .collect();
        let rules: Vec<Value> = ["monday", "tuesday", "wednesday", "thursday", "friday"]
            .iter()
            .map(|d| json!({ "type": "wday", "day": d, "intervals": [{ "from": "09:00", "to": "17:00" }] }))
            .collect();
        ctx.put(
            SCHEDULE,
            &id,
            Some(&loc),
            Some(user),
            json!({
                "id": id, "name": "Working Hours", "locationId": loc, "userId": user, "rules": rules,
                "timezone": tz_name, "calendarIds": linked, "deleted": false,
                "dateAdded": created, "dateUpdated": created,
            }),
        )?;
        push(seed, SCHEDULE, &id);
    }

    // Blocked slots first, so appointments avoid them.
    let (today, _) = tz.local_day_minute(now);
    let mut blocks = vec![
        (
            0usize,
            next_weekday(today + 1, 3),
            12 * 60,
            13 * 60,
            "Team meeting",
            None,
        ),
        (
            2,
            next_weekday(today - 7, 2),
            16 * 60,
            17 * 60,
            "Room maintenance",
            None,
        ),
        (
            1,
            next_weekday(today + 1, 4),
            9 * 60,
            10 * 60,
            "Demo environment upgrade",
            None,
        ),
    ];
    if let Some(u) = users.first() {
        blocks.push((
            0,
            next_weekday(today + 1, 5),
            9 * 60,
            12 * 60,
            "Out of office",
            Some(u.clone()),
        ));
    }
    for (ci, day, from, to, title, user) in blocks {
        let id = new_id();
        let mut b = json!({
            "id": id, "locationId": loc, "calendarId": cal_ids[ci], "title": title,
            "startTime": tz.format(tz.local_to_utc(day, from)), "endTime": tz.format(tz.local_to_utc(day, to)),
            "dateAdded": created, "dateUpdated": created,
        });
        if let Some(u) = user {
            b["assignedUserId"] = json!(u);
        }
        ctx.put(BLOCKED_SLOT, &id, Some(&loc), Some(&cal_ids[ci]), b)?;
        push(seed, BLOCKED_SLOT, &id);
    }

    if seed.ids(CONTACT).is_empty() {
        return Ok(());
    }
    let mut booked = 0;
    let mut notes = 0;
    for _ in 0..APPOINTMENTS * 10 {
        if booked == APPOINTMENTS {
            break;
        }
        let cal = calendars[seed.rng.random_range(0..calendars.len())].clone();
        let day = today + seed.rng.random_range(-14i64..14);
        let engine = Engine::new(ctx, &cal, tz, now, None);
        let grid = engine.grid(day);
        if grid.is_empty() {
            continue;
        }
        let start = grid[seed.rng.random_range(0..grid.len())];
        let end = start + engine.duration_ms();
        let who = who_for(&cal, Vec::new());
        let Some(free) = engine.free_for(&who, start, end) else {
            continue;
        };
        let assignee = free
            .or_else(|| match &who {
                Who::Any(u) | Who::All(u) => u.first().cloned(),
                Who::Calendar => None,
            })
            .unwrap_or_default();
        let Some(contact_id) = seed.pick(CONTACT) else {
            break;
        };
        let contact = ctx
            .get(CONTACT, &contact_id)
            .map(|d| d.body.clone())
            .unwrap_or_default();
        let past = end < now;
        let roll = seed.rng.random_range(0..100);
        let status = if past {
            match roll {
                0..60 => "showed",
                60..75 => "noshow",
                75..90 => "cancelled",
                _ => "confirmed",
            }
        } else {
            match roll {
                0..75 => "confirmed",
                75..90 => "new",
                _ => "cancelled",
            }
        };
        let added = (start - seed.rng.random_range(1i64..10) * DAY_MS).min(now);
        let updated = if status == "cancelled" || past {
            (end + 3_600_000).min(now).max(added)
        } else {
            added
        };
        let id = new_id();
        let cal_id = str_of(&cal, "id").to_string();
        let mut a = json!({
            "id": id, "calendarId": cal_id, "locationId": loc, "contactId": contact_id,
            "groupId": str_of(&cal, "groupId"),
            "title": render_title(str_of(&cal, "eventTitle"), &contact, &cal),
            "appointmentStatus": status, "assignedUserId": assignee,
            "users": if assignee.is_empty() { json!([]) } else { json!([assignee]) },
            "notes": "", "meetingLocationType": "default", "meetingLocationId": "default", "isRecurring": false,
            "startTime": tz.format(start), "endTime": tz.format(end),
            "dateAdded": iso(added), "dateUpdated": iso(updated),
            "assignedResources": [], "source": if booked % 3 == 0 { "third_party" } else { "booking_widget" },
            "createdBy": { "source": if booked % 3 == 0 { "third_party" } else { "booking_widget" } },
        });
        if let Some(addr) = cal
            .pointer("/locationConfigurations/0/location")
            .and_then(Value::as_str)
        {
            a["address"] = json!(addr);
        }
        ctx.put(APPOINTMENT, &id, Some(&loc), Some(&cal_id), a)?;
        push(seed, APPOINTMENT, &id);
        booked += 1;
        if past && status == "showed" && notes < NOTE_BODIES.len() {
            let nid = new_id();
            let mut n = json!({
                "id": nid, "body": NOTE_BODIES[notes], "title": Value::Null, "color": Value::Null, "pinned": false,
                "dateAdded": iso((end + 600_000).min(now)), "contactId": contact_id, "appointmentId": id,
            });
            if !assignee.is_empty() {
                n["userId"] = json!(assignee);
            }
            ctx.put(NOTE, &nid, Some(&loc), Some(&contact_id), n)?;
            notes += 1;
        }
    }
    Ok(())
}
