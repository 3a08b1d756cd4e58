//! Forms and surveys (`forms.json`, `surveys.json`): the forms and surveys of a location
//! (skip/limit, `total`), their submissions (page/limit with `meta: {total, currentPage,
//! nextPage, prevPage}`, filtered by form or survey, `q` on contact id, name, email or phone,
//! and a `startAt`..`endAt` window that defaults to the last month as HighLevel's does), and
//! uploads into a contact's file-upload custom fields.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;
use serde_json::{Map, Value, json};

use super::locations::location_scope;
use super::payments::{day_end_ms, day_start_ms};
use super::{Ctx, HResult, Handler, Req, Seed, iso, new_id, ok, parse_time_ms};
use crate::error::ApiError;

/// A form.
pub const FORM: &str = "form";
/// A form submission (parent: the form).
pub const FORM_SUBMISSION: &str = "form_submission";
/// A survey.
pub const SURVEY: &str = "survey";
/// A survey submission (parent: the survey).
pub const SURVEY_SUBMISSION: &str = "survey_submission";
const CONTACT: &str = "contact";
const CUSTOM_FIELD: &str = "custom_field";

/// Registers the handlers of this module.
pub fn register(map: &mut HashMap<&'static str, Handler>) {
    map.insert("forms.list", forms_list);
    map.insert("forms.submissions.list", form_submissions);
    map.insert("surveys.list", surveys_list);
    map.insert("surveys.submissions.list", survey_submissions);
    map.insert("forms.upload_custom_files", upload_custom_files);
}

fn str_of<'v>(v: &'v Value, k: &str) -> &'v str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// Forms or surveys of the location: skip/limit (default 10, at most 50) and `type`.
fn definitions(ctx: &Ctx<'_>, req: &Req, kind: &str, key: &str) -> HResult {
    let loc = location_scope(ctx, req)?;
    let mut all = ctx.list(kind, &loc);
    if let Some(t) = req.query("type").filter(|s| !s.is_empty()) {
        all.retain(|f| str_of(f, "type") == t);
    }
    let skip = req.query_usize("skip", 0, usize::MAX)?;
    let limit = req.query_usize("limit", 10, 50)?;
    let page: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(limit)
        .map(|f| (**f).clone())
        .collect();
    ok(json!({ key: page, "total": all.len() }))
}

fn forms_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    definitions(ctx, req, FORM, "forms")
}

fn surveys_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    definitions(ctx, req, SURVEY, "surveys")
}

/// The same calendar date one month before `ms` (clamped to the month's length), at 00:00 UTC.
fn month_ago_ms(ms: i64) -> i64 {
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (y, m) = match t.month() {
        time::Month::January => (t.year() - 1, time::Month::December),
        other => (t.year(), other.previous()),
    };
    let day = t.day().min(m.length(y));
    time::Date::from_calendar_date(y, m, day)
        .map(|d| d.midnight().assume_utc().unix_timestamp() * 1000)
        .unwrap_or(0)
}

/// Submissions of forms or surveys: page/limit (default 1 and 20, at most 100), the parent
/// filter, `q` and the date window.
fn submissions(ctx: &Ctx<'_>, req: &Req, kind: &str, parent_param: &str) -> HResult {
    let loc = location_scope(ctx, req)?;
    let mut all: Vec<Arc<Value>> = match req.query(parent_param).filter(|s| !s.is_empty()) {
        Some(parent) => ctx
            .children(kind, parent)
            .into_iter()
            .filter(|s| str_of(s, "locationId") == loc)
            .collect(),
        None => ctx.list(kind, &loc),
    };
    if let Some(q) = req.query("q").filter(|s| !s.is_empty()) {
        let q = q.to_lowercase();
        all.retain(|s| {
            ["contactId", "name", "email", "phone"]
                .iter()
                .any(|k| str_of(s, k).to_lowercase().contains(&q))
        });
    }
    let bad =
        |k: &str| ApiError::unprocessable(vec![format!("{k} must be a valid date (YYYY-MM-DD)")]);
    let start = match req.query("startAt").filter(|s| !s.is_empty()) {
        Some(s) => day_start_ms(s).ok_or_else(|| bad("startAt"))?,
        None => month_ago_ms(req.now_ms),
    };
    let end = match req.query("endAt").filter(|s| !s.is_empty()) {
        Some(s) => day_end_ms(s).ok_or_else(|| bad("endAt"))?,
        None => day_end_ms(&iso(req.now_ms)[..10]).unwrap_or(req.now_ms),
    };
    all.retain(|s| {
        let t = s.get("createdAt").and_then(parse_time_ms).unwrap_or(0);
        t >= start && t <= end
    });
    // Newest first.
    all.reverse();
    let page = req.query_usize("page", 1, usize::MAX)?;
    if page == 0 {
        return Err(ApiError::unprocessable(vec![
            "page must not be less than 1".into(),
        ]));
    }
    let limit = req.query_usize("limit", 20, 100)?.max(1);
    let total = all.len();
    let items: Vec<Value> = all
        .iter()
        .skip((page - 1).saturating_mul(limit))
        .take(limit)
        .map(|s| (**s).clone())
        .collect();
    let next = if page.saturating_mul(limit) < total {
        json!(page + 1)
    } else {
        Value::Null
    };
    let prev = if page > 1 {
        json!(page - 1)
    } else {
        Value::Null
    };
    ok(json!({
        "submissions": items,
        "meta": { "total": total, "currentPage": page, "nextPage": next, "prevPage": prev },
    }))
}

fn form_submissions(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    submissions(ctx, req, FORM_SUBMISSION, "formId")
}

fn survey_submissions(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    submissions(ctx, req, SURVEY_SUBMISSION, "surveyId")
}

/// `POST /forms/upload-custom-files?contactId&locationId`: in HighLevel a multipart upload whose
/// parts are named `<customFieldId>_<fileId>`. The sandbox accepts the same names as keys of a
/// JSON object (value: a file name, a URL, or `{name, url, mimetype, size}`) or an empty body,
/// stores the files on the contact's FILE_UPLOAD custom fields and, as HighLevel documents,
/// answers the updated contact (the spec gives no schema for the answer).
fn upload_custom_files(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let mut missing = Vec::new();
    for k in ["contactId", "locationId"] {
        if req.query(k).is_none_or(str::is_empty) {
            missing.push(format!("{k} should not be empty"));
        }
    }
    if !missing.is_empty() {
        return Err(ApiError::unprocessable(missing));
    }
    let loc = location_scope(ctx, req)?;
    let contact_id = req.query("contactId").unwrap_or_default();
    let old = ctx.find(CONTACT, contact_id, "Contact", req)?;
    if str_of(&old, "locationId") != loc {
        return Err(ApiError::bad_request(
            "Contact does not belong to this location",
        ));
    }
    let mut files: Vec<(String, String, Value)> = Vec::new();
    for (key, v) in req.body_object() {
        let Some((field, file)) = key.split_once('_') else {
            return Err(ApiError::bad_request(format!(
                "Invalid file key {key}: expected <custom_field_id>_<file_id>"
            )));
        };
        let def = ctx
            .get(CUSTOM_FIELD, field)
            .filter(|d| d.location_id.as_deref() == Some(loc.as_str()))
            .map(|d| d.body.clone())
            .ok_or_else(|| ApiError::bad_request(format!("Custom field {field} not found")))?;
        if str_of(&def, "dataType") != "FILE_UPLOAD" {
            return Err(ApiError::bad_request(format!(
                "Custom field {field} is not a file upload field"
            )));
        }
        let name = match &v {
            Value::String(s) => s.rsplit('/').next().unwrap_or(s).to_string(),
            other => other
                .get("name")
                .or_else(|| other.get("originalname"))
                .and_then(Value::as_str)
                .unwrap_or(file)
                .to_string(),
        };
        let url = match &v {
            Value::String(s) if s.starts_with("http") => s.clone(),
            other => other.get("url").and_then(Value::as_str).map_or_else(
                || format!("https://files.sandbox.test/location/{loc}/custom-field/{field}/{file}/{name}"),
                str::to_string,
            ),
        };
        let entry = json!({
            "url": url,
            "documentId": new_id(),
            "meta": {
                "fieldname": key,
                "originalname": name,
                "mimetype": v.get("mimetype").cloned().unwrap_or(json!("application/octet-stream")),
                "size": v.get("size").cloned().unwrap_or(json!(0)),
            },
        });
        files.push((field.to_string(), file.to_string(), entry));
    }
    if files.is_empty() {
        return ok(json!({ "contact": &*old }));
    }
    let mut c = (*old).clone();
    let mut fields: Vec<Value> = c["customFields"].as_array().cloned().unwrap_or_default();
    for (field, file, entry) in files {
        let pos = fields.iter().position(|f| str_of(f, "id") == field);
        let mut value = pos
            .and_then(|i| fields[i].get("value").cloned())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        value[file.as_str()] = entry;
        match pos {
            Some(i) => fields[i]["value"] = value,
            None => fields.push(json!({ "id": field, "value": value })),
        }
    }
    c["customFields"] = json!(fields);
    c["dateUpdated"] = json!(iso(ctx.now_ms));
    ctx.replace(CONTACT, contact_id, c.clone())?;
    ctx.emit(
        "ContactUpdate",
        &loc,
        super::contacts::contact_event("ContactUpdate", &c),
    );
    ok(json!({ "contact": c }))
}

/// A submission of `parent` by a contact, in HighLevel's shape.
fn submission(
    loc: &str,
    parent_key: &str,
    parent_id: &str,
    parent_name: &str,
    contact: &Value,
    answers: Map<String, Value>,
    created_ms: i64,
) -> Value {
    let name = format!(
        "{} {}",
        str_of(contact, "firstName"),
        str_of(contact, "lastName")
    )
    .trim()
    .to_string();
    let mut others = answers;
    let order: Vec<Value> = others.keys().map(|k| json!(k)).collect();
    others.insert(
        "eventData".into(),
        json!({
            "source": "direct",
            "type": "page-visit",
            "domain": "sandbox.test",
            "page": { "url": format!("https://sandbox.test/{}", parent_name.to_lowercase().replace(' ', "-")), "title": parent_name },
            "parentId": parent_id,
            "parentName": parent_name,
            "timestamp": created_ms,
            "version": "v3",
            "pageVisitType": "form",
        }),
    );
    others.insert("fieldsOriSequance".into(), Value::Array(order));
    json!({
        "id": new_id(),
        "contactId": str_of(contact, "id"),
        "createdAt": iso(created_ms),
        parent_key: parent_id,
        "name": name,
        "email": str_of(contact, "email"),
        "phone": str_of(contact, "phone"),
        "locationId": loc,
        "others": others,
    })
}

/// Adds this area's demo data to the seeded location: two forms, one survey and 30
/// submissions from seeded contacts over the last three weeks.
pub fn seed(ctx: &mut Ctx<'_>, seed: &mut Seed) -> Result<(), ApiError> {
    let loc = seed.location_id.clone();
    let mut forms = Vec::new();
    for name in ["Contact Us", "Free Consultation Request"] {
        let id = new_id();
        ctx.put(
            FORM,
            &id,
            Some(&loc),
            None,
            json!({ "id": id, "name": name, "locationId": loc, "type": "form" }),
        )?;
        seed.ids.entry("form").or_default().push(id.clone());
        forms.push((id, name));
    }
    let survey_id = new_id();
    let survey_name = "Customer Satisfaction";
    ctx.put(
        SURVEY,
        &survey_id,
        Some(&loc),
        None,
        json!({ "id": survey_id, "name": survey_name, "locationId": loc, "type": "survey" }),
    )?;
    seed.ids
        .entry("survey")
        .or_default()
        .push(survey_id.clone());
    let contacts: Vec<Value> = seed
        .ids("contact")
        .iter()
        .filter_map(|id| ctx.get(CONTACT, id).map(|d| (*d.body).clone()))
        .collect();
    let hour = 3_600_000_i64;
    let messages = [
        "Please call me back about pricing.",
        "Do you offer weekend appointments?",
        "I'd like a quote for my team of 12.",
        "Looking for help with automations.",
    ];
    for i in 0..30_usize {
        let contact = match contacts.len() {
            0 => {
                json!({ "id": new_id(), "firstName": "Guest", "email": format!("guest{i}@example.com") })
            }
            n => contacts[seed.rng.random_range(0..n)].clone(),
        };
        let created = seed.now_ms - (30 - i64::try_from(i).unwrap_or(0)) * 17 * hour;
        let mut answers = Map::new();
        answers.insert("first_name".into(), json!(str_of(&contact, "firstName")));
        answers.insert("email".into(), json!(str_of(&contact, "email")));
        let (kind, parent, s) = if i % 3 == 2 {
            answers.insert("rating".into(), json!(seed.rng.random_range(3..=5)));
            answers.insert(
                "would_recommend".into(),
                json!(if seed.rng.random_bool(0.8) {
                    "Yes"
                } else {
                    "No"
                }),
            );
            let s = submission(
                &loc,
                "surveyId",
                &survey_id,
                survey_name,
                &contact,
                answers,
                created,
            );
            (SURVEY_SUBMISSION, survey_id.clone(), s)
        } else {
            let (form_id, form_name) = &forms[i % 2];
            answers.insert(
                "message".into(),
                json!(messages[seed.rng.random_range(0..messages.len())]),
            );
            let s = submission(
                &loc, "formId", form_id, form_name, &contact, answers, created,
            );
            (FORM_SUBMISSION, form_id.clone(), s)
        };
        let id = str_of(&s, "id").to_string();
        ctx.put(kind, &id, Some(&loc), Some(&parent), s)?;
        seed.ids.entry(kind).or_default().push(id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::Guard;
    use crate::handlers::testing::call;
    use crate::store::Docs;
    use parking_lot::RwLock;
    use rand::SeedableRng;

    const NOW: i64 = 1_700_000_000_000;

    use crate::handlers::testing::{body, status};

    fn seeded(docs: &RwLock<Docs>) -> Seed {
        let mut ctx = Ctx::new(Guard::Write(docs.write()), NOW);
        let mut s = Seed {
            location_id: "loc1".into(),
            company_id: "company1".into(),
            now_ms: NOW,
            rng: rand::rngs::StdRng::seed_from_u64(7),
            ids: HashMap::new(),
        };
        for i in 0..5 {
            let id = format!("contact{i}");
            ctx.put(CONTACT, &id, Some("loc1"), None, json!({ "id": id, "locationId": "loc1", "firstName": format!("Ann{i}"), "lastName": "Lee", "email": format!("ann{i}@example.com"), "customFields": [] }))
                .expect("put");
            s.ids.entry("contact").or_default().push(id);
        }
        seed(&mut ctx, &mut s).expect("seed");
        s
    }

    #[test]
    fn month_ago() {
        // 2024-03-31 → 2024-02-29.
        let ms = parse_time_ms(&json!("2024-03-31T10:00:00Z")).unwrap_or(0);
        assert_eq!(iso(month_ago_ms(ms)), "2024-02-29T00:00:00.000Z");
        let ms = parse_time_ms(&json!("2024-01-15T10:00:00Z")).unwrap_or(0);
        assert_eq!(iso(month_ago_ms(ms)), "2023-12-15T00:00:00.000Z");
    }

    #[test]
    fn lists_and_submission_pages() {
        let docs = RwLock::new(Docs::default());
        let s = seeded(&docs);
        let (r, _) = call(
            &docs,
            "forms.list",
            &[],
            &[("locationId", "loc1"), ("limit", "1")],
            Value::Null,
        );
        let b = body(&r);
        assert_eq!(b["total"], 2);
        assert_eq!(b["forms"].as_array().map(Vec::len), Some(1));
        let (r, _) = call(
            &docs,
            "surveys.list",
            &[],
            &[("locationId", "loc1")],
            Value::Null,
        );
        assert_eq!(body(&r)["surveys"][0]["name"], "Customer Satisfaction");

        let (r, _) = call(
            &docs,
            "forms.submissions.list",
            &[],
            &[("locationId", "loc1"), ("limit", "15")],
            Value::Null,
        );
        let b = body(&r);
        assert_eq!(
            b["meta"],
            json!({ "total": 20, "currentPage": 1, "nextPage": 2, "prevPage": null })
        );
        let first = b["submissions"][0]["createdAt"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let second = b["submissions"][1]["createdAt"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(first > second, "newest first");
        let (r, _) = call(
            &docs,
            "forms.submissions.list",
            &[],
            &[("locationId", "loc1"), ("limit", "15"), ("page", "2")],
            Value::Null,
        );
        let b = body(&r);
        assert_eq!(b["submissions"].as_array().map(Vec::len), Some(5));
        assert_eq!(b["meta"]["nextPage"], Value::Null);
        assert_eq!(b["meta"]["prevPage"], 1);

        let form = s.ids("form")[0].clone();
        let (r, _) = call(
            &docs,
            "forms.submissions.list",
            &[],
            &[("locationId", "loc1"), ("formId", form.as_str())],
            Value::Null,
        );
        assert_eq!(body(&r)["meta"]["total"], 10);
        let (r, _) = call(
            &docs,
            "surveys.submissions.list",
            &[],
            &[("locationId", "loc1"), ("q", "ann1@")],
            Value::Null,
        );
        let b = body(&r);
        assert!(
            b["submissions"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|x| x["email"] == "ann1@example.com")
        );
        // A window before the seeded data is empty.
        let (r, _) = call(
            &docs,
            "forms.submissions.list",
            &[],
            &[
                ("locationId", "loc1"),
                ("startAt", "2020-01-01"),
                ("endAt", "2020-02-01"),
            ],
            Value::Null,
        );
        assert_eq!(body(&r)["meta"]["total"], 0);
        let (r, _) = call(
            &docs,
            "forms.submissions.list",
            &[],
            &[("locationId", "loc1"), ("page", "0")],
            Value::Null,
        );
        assert_eq!(status(&r), 422);
    }

    #[test]
    fn upload_files_to_contact() {
        let docs = RwLock::new(Docs::default());
        seeded(&docs);
        {
            let mut ctx = Ctx::new(Guard::Write(docs.write()), NOW);
            ctx.put(
                CUSTOM_FIELD,
                "cfFile",
                Some("loc1"),
                None,
                json!({ "id": "cfFile", "dataType": "FILE_UPLOAD" }),
            )
            .expect("put");
            ctx.put(
                CUSTOM_FIELD,
                "cfText",
                Some("loc1"),
                None,
                json!({ "id": "cfText", "dataType": "TEXT" }),
            )
            .expect("put");
        }
        let q = [("contactId", "contact1"), ("locationId", "loc1")];
        let (r, ev) = call(
            &docs,
            "forms.upload_custom_files",
            &[],
            &q,
            json!({ "cfFile_123e4567": { "name": "resume.pdf", "mimetype": "application/pdf", "size": 2048 } }),
        );
        let c = body(&r)["contact"].clone();
        let value = &c["customFields"][0]["value"]["123e4567"];
        assert_eq!(value["meta"]["originalname"], "resume.pdf");
        assert!(
            value["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("https://"))
        );
        assert_eq!(ev[0].kind, "ContactUpdate");
        let (r, _) = call(
            &docs,
            "forms.upload_custom_files",
            &[],
            &q,
            json!({ "cfText_1": "a.txt" }),
        );
        assert_eq!(status(&r), 400);
        let (r, _) = call(
            &docs,
            "forms.upload_custom_files",
            &[],
            &[("contactId", "nobody"), ("locationId", "loc1")],
            Value::Null,
        );
        assert_eq!(status(&r), 404);
        let (r, _) = call(
            &docs,
            "forms.upload_custom_files",
            &[],
            &[("locationId", "loc1")],
            Value::Null,
        );
        assert_eq!(status(&r), 422);
    }
}
