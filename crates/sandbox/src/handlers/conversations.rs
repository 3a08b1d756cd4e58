//! Conversations and messages (Version 2021-04-15): one conversation per contact (a second
//! `POST /conversations/` answers 400 with the existing id), search with the `startAfterDate`
//! cursor (each hit carries `sort: [lastMessageDate]`), sending SMS/Email/WhatsApp/… messages
//! (creating the conversation when needed, an email record for Email, the `OutboundMessage`
//! webhook), messages of a conversation newest first with the `lastMessageId` cursor, message
//! and email by id, delivery status updates, call recordings (a WAV file), transcriptions, and
//! the live chat typing indicator.
//!
//! Conversations are stored with their contact as parent, messages and emails with their
//! conversation as parent, transcriptions with their message as parent.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;
use serde_json::{Map, Value, json};

use super::{
    Ctx, HResult, Handler, Req, Seed, binary, created, forbidden_location, iso, new_id, ok,
    parse_time_ms,
};
use crate::error::ApiError;

/// A conversation (parent: its contact).
pub const CONVERSATION: &str = "conversation";
/// A message (parent: its conversation).
pub const MESSAGE: &str = "message";
/// The email record of an Email message (parent: its conversation).
pub const EMAIL: &str = "email_message";
/// The transcription of a call message (id = the message id; parent: the message).
pub const TRANSCRIPTION: &str = "transcription";
/// Contacts (owned by the contacts module).
const CONTACT: &str = "contact";
/// Locations (owned by the locations module; read for the sender address of emails).
const LOCATION: &str = "location";

/// Registers the handlers of this module.
pub fn register(map: &mut HashMap<&'static str, Handler>) {
    map.insert("conversations.search", search);
    map.insert("conversations.get", get);
    map.insert("conversations.create", create);
    map.insert("conversations.emails.get", email_get);
    map.insert("conversations.messages.get", message_get);
    map.insert("conversations.messages.list", messages_list);
    map.insert("conversations.messages.send", send);
    map.insert("conversations.messages.set_status", set_status);
    map.insert("conversations.messages.recording", recording);
    map.insert("conversations.messages.transcription", transcription);
    map.insert(
        "conversations.messages.transcription_download",
        transcription_download,
    );
    map.insert("conversations.live_chat.typing", typing);
}

/// HighLevel's message types; the numeric `type` of a message is the position here plus one
/// (`TYPE_CALL` = 1, `TYPE_SMS` = 2, `TYPE_EMAIL` = 3, …; `TYPE_RCS` came last).
const MESSAGE_TYPES: &[&str] = &[
    "TYPE_CALL",
    "TYPE_SMS",
    "TYPE_EMAIL",
    "TYPE_SMS_REVIEW_REQUEST",
    "TYPE_WEBCHAT",
    "TYPE_SMS_NO_SHOW_REQUEST",
    "TYPE_CAMPAIGN_SMS",
    "TYPE_CAMPAIGN_CALL",
    "TYPE_CAMPAIGN_EMAIL",
    "TYPE_CAMPAIGN_VOICEMAIL",
    "TYPE_FACEBOOK",
    "TYPE_CAMPAIGN_FACEBOOK",
    "TYPE_CAMPAIGN_MANUAL_CALL",
    "TYPE_CAMPAIGN_MANUAL_SMS",
    "TYPE_GMB",
    "TYPE_CAMPAIGN_GMB",
    "TYPE_REVIEW",
    "TYPE_INSTAGRAM",
    "TYPE_WHATSAPP",
    "TYPE_CUSTOM_SMS",
    "TYPE_CUSTOM_EMAIL",
    "TYPE_CUSTOM_PROVIDER_SMS",
    "TYPE_CUSTOM_PROVIDER_EMAIL",
    "TYPE_IVR_CALL",
    "TYPE_ACTIVITY_CONTACT",
    "TYPE_ACTIVITY_INVOICE",
    "TYPE_ACTIVITY_PAYMENT",
    "TYPE_ACTIVITY_OPPORTUNITY",
    "TYPE_LIVE_CHAT",
    "TYPE_LIVE_CHAT_INFO_MESSAGE",
    "TYPE_ACTIVITY_APPOINTMENT",
    "TYPE_FACEBOOK_COMMENT",
    "TYPE_INSTAGRAM_COMMENT",
    "TYPE_CUSTOM_CALL",
    "TYPE_INTERNAL_COMMENT",
    "TYPE_ACTIVITY_EMPLOYEE_ACTION_LOG",
    "TYPE_TIKTOK",
    "TYPE_TIKTOK_COMMENT",
    "TYPE_ACTIVITY_WHATSAPP",
    "TYPE_FORM_SUBMISSION",
    "TYPE_SMS_REACTION",
    "TYPE_RCS",
];

/// Message types that are calls (and can have a recording and a transcription).
const CALL_TYPES: &[&str] = &[
    "TYPE_CALL",
    "TYPE_IVR_CALL",
    "TYPE_CUSTOM_CALL",
    "TYPE_CAMPAIGN_CALL",
];

/// Conversation types; the numeric `type` of `GET /conversations/{id}` is the position plus one.
const CONVERSATION_TYPES: &[&str] = &[
    "TYPE_PHONE",
    "TYPE_EMAIL",
    "TYPE_FB_MESSENGER",
    "TYPE_REVIEW",
    "TYPE_GROUP_SMS",
];

/// `type` values of `POST /conversations/messages` and the message type each creates.
const SEND_TYPES: &[(&str, &str)] = &[
    ("SMS", "TYPE_SMS"),
    ("RCS", "TYPE_RCS"),
    ("Email", "TYPE_EMAIL"),
    ("WhatsApp", "TYPE_WHATSAPP"),
    ("IG", "TYPE_INSTAGRAM"),
    ("FB", "TYPE_FACEBOOK"),
    ("Custom", "TYPE_CUSTOM_PROVIDER_SMS"),
    ("Live_Chat", "TYPE_LIVE_CHAT"),
    ("TIKTOK", "TYPE_TIKTOK"),
];

/// Delivery statuses a caller may set.
const STATUSES: &[&str] = &["delivered", "failed", "pending", "read"];

fn message_type_number(t: &str) -> usize {
    MESSAGE_TYPES
        .iter()
        .position(|x| *x == t)
        .map_or(2, |i| i + 1)
}

fn s<'v>(v: &'v Value, k: &str) -> &'v str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn check_own_location(req: &Req, location_id: &str) -> Result<(), ApiError> {
    if req
        .caller
        .location_id
        .as_deref()
        .is_some_and(|l| l != location_id)
    {
        return Err(forbidden_location());
    }
    Ok(())
}

fn conversation(ctx: &Ctx<'_>, req: &Req, id: &str) -> Result<Arc<Value>, ApiError> {
    ctx.find(CONVERSATION, id, "Conversation", req)
}

/// The conversation of a contact, if it has one.
fn conversation_of(ctx: &Ctx<'_>, contact_id: &str) -> Option<Arc<Value>> {
    ctx.children(CONVERSATION, contact_id)
        .into_iter()
        .find(|c| c.get("deleted").and_then(Value::as_bool) != Some(true))
}

/// A new conversation document for a contact.
fn new_conversation(id: &str, contact_id: &str, location_id: &str, at_ms: i64) -> Value {
    json!({
        "id": id,
        "contactId": contact_id,
        "locationId": location_id,
        "deleted": false,
        "inbox": true,
        "type": "TYPE_PHONE",
        "unreadCount": 0,
        "starred": false,
        "followers": [],
        "dateAdded": iso(at_ms),
        "dateUpdated": iso(at_ms),
        "lastMessageDate": at_ms,
    })
}

/// `GET /conversations/{id}`: the stored conversation with its numeric `type`.
fn render_get(c: &Value) -> Value {
    let mut v = c.clone();
    let t = CONVERSATION_TYPES
        .iter()
        .position(|x| *x == s(c, "type"))
        .map_or(1, |i| i + 1);
    v["type"] = json!(t);
    v
}

/// A search hit: the conversation with the contact's name, email and phone, the string `type`
/// and the `sort` values to pass back as `startAfterDate`.
fn render_search(ctx: &Ctx<'_>, c: &Value) -> Value {
    let mut v = c.clone();
    let contact = ctx.get(CONTACT, s(c, "contactId")).map(|d| d.body.clone());
    let field = |k: &str| {
        contact
            .as_ref()
            .map(|x| s(x, k).to_string())
            .unwrap_or_default()
    };
    let full = format!("{} {}", field("firstName"), field("lastName"))
        .trim()
        .to_string();
    let display = contact
        .as_ref()
        .and_then(|x| {
            x.get("contactName")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| full.clone());
    v["fullName"] = json!(full);
    v["contactName"] = json!(display);
    v["email"] = json!(field("email"));
    v["phone"] = json!(field("phone"));
    v["companyName"] = json!(field("companyName"));
    v["tags"] = contact
        .as_ref()
        .and_then(|x| x.get("tags").cloned())
        .unwrap_or(json!([]));
    v["sort"] = json!([c.get("lastMessageDate").cloned().unwrap_or(json!(0))]);
    v
}

fn get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let c = conversation(ctx, req, req.path("conversationId")?)?;
    ok(render_get(&c))
}

fn create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["locationId", "contactId"])?;
    let location_id = req.location_id()?;
    check_own_location(req, &location_id)?;
    let contact_id = req.field_str("contactId").unwrap_or_default().to_string();
    if ctx
        .get(CONTACT, &contact_id)
        .is_none_or(|d| d.location_id.as_deref() != Some(location_id.as_str()))
    {
        return Err(ApiError::bad_request("Contact not found"));
    }
    if let Some(existing) = conversation_of(ctx, &contact_id) {
        let mut e = ApiError::bad_request("Conversation already exists");
        e.extra = Some(Box::new(Map::from_iter([(
            "conversationId".to_string(),
            existing["id"].clone(),
        )])));
        return Err(e);
    }
    let id = new_id();
    let c = new_conversation(&id, &contact_id, &location_id, req.now_ms);
    ctx.put(
        CONVERSATION,
        &id,
        Some(&location_id),
        Some(&contact_id),
        c.clone(),
    )?;
    let mut out = json!({
        "id": id,
        "dateUpdated": c["dateUpdated"],
        "dateAdded": c["dateAdded"],
        "deleted": false,
        "contactId": contact_id,
        "locationId": location_id,
        "lastMessageDate": iso(req.now_ms),
    });
    if let Some(a) = req.field_str("assignedTo") {
        out["assignedTo"] = json!(a);
    }
    created(json!({ "success": true, "conversation": out }))
}

/// The numeric sort value of a conversation for `sortBy`.
fn sort_value(c: &Value, sort_by: &str) -> i64 {
    let field = if sort_by == "last_manual_message_date" {
        "lastManualMessageDate"
    } else {
        "lastMessageDate"
    };
    c.get(field).and_then(parse_time_ms).unwrap_or(0)
}

fn comma_list(v: Option<&str>) -> Vec<String> {
    v.map(|v| {
        v.trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|x| x.trim().trim_matches('"').to_string())
            .filter(|x| !x.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

fn enum_param<'r>(req: &'r Req, name: &str, allowed: &[&str]) -> Result<Option<&'r str>, ApiError> {
    match req.query(name).filter(|v| !v.is_empty()) {
        Some(v) if !allowed.contains(&v) => Err(ApiError::unprocessable(vec![format!(
            "{name} must be one of the following values: {}",
            allowed.join(", ")
        )])),
        other => Ok(other),
    }
}

fn number_param(req: &Req, name: &str) -> Result<Option<i64>, ApiError> {
    match req.query(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => parse_time_ms(&json!(v))
            .map(Some)
            .ok_or_else(|| ApiError::unprocessable(vec![format!("{name} must be a number")])),
    }
}

fn search(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = req
        .query("locationId")
        .filter(|l| !l.is_empty())
        .ok_or_else(|| ApiError::unprocessable(vec!["locationId should not be empty".into()]))?
        .to_string();
    check_own_location(req, &location_id)?;
    let limit = req.query_usize("limit", 20, 100)?.max(1);
    let desc = enum_param(req, "sort", &["asc", "desc"])? != Some("asc");
    let sort_by = enum_param(
        req,
        "sortBy",
        &[
            "last_manual_message_date",
            "last_message_date",
            "score_profile",
            "overdue_at",
            "due_at",
        ],
    )?
    .unwrap_or("last_message_date");
    let status = enum_param(
        req,
        "status",
        &["all", "read", "unread", "starred", "recents"],
    )?
    .unwrap_or("all");
    let last_type = enum_param(req, "lastMessageType", MESSAGE_TYPES)?;
    let last_action = enum_param(req, "lastMessageAction", &["automated", "manual"])?;
    let last_direction = enum_param(req, "lastMessageDirection", &["inbound", "outbound"])?;
    let start = number_param(req, "startDate")?;
    let end = number_param(req, "endDate")?;
    let assigned = comma_list(req.query("assignedTo"));
    let followers = comma_list(req.query("followers"));
    let mentions = comma_list(req.query("mentions"));
    let q = req
        .query("query")
        .map(str::to_lowercase)
        .filter(|q| !q.is_empty());
    let mut hits: Vec<Value> = ctx
        .list(CONVERSATION, &location_id)
        .iter()
        .filter(|c| c.get("deleted").and_then(Value::as_bool) != Some(true))
        .filter(|c| {
            req.query("contactId")
                .filter(|v| !v.is_empty())
                .is_none_or(|v| s(c, "contactId") == v)
        })
        .filter(|c| {
            req.query("id")
                .filter(|v| !v.is_empty())
                .is_none_or(|v| s(c, "id") == v)
        })
        .filter(|c| {
            assigned.is_empty()
                || assigned.iter().any(|a| {
                    a == s(c, "assignedTo") || (a == "unassigned" && s(c, "assignedTo").is_empty())
                })
        })
        .filter(|c| {
            let has = |field: &str, wanted: &[String]| {
                wanted.is_empty()
                    || c.get(field).and_then(Value::as_array).is_some_and(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .any(|x| wanted.iter().any(|w| w == x))
                    })
            };
            has("followers", &followers) && has("mentions", &mentions)
        })
        .filter(|c| match status {
            "read" => c.get("unreadCount").and_then(Value::as_i64).unwrap_or(0) == 0,
            "unread" => c.get("unreadCount").and_then(Value::as_i64).unwrap_or(0) > 0,
            "starred" => c.get("starred").and_then(Value::as_bool) == Some(true),
            _ => true,
        })
        .filter(|c| last_type.is_none_or(|t| s(c, "lastMessageType") == t))
        .filter(|c| last_action.is_none_or(|t| s(c, "lastMessageAction") == t))
        .filter(|c| last_direction.is_none_or(|t| s(c, "lastMessageDirection") == t))
        .filter(|c| {
            let at = sort_value(c, "last_message_date");
            start.is_none_or(|st| at >= st) && end.is_none_or(|en| at <= en)
        })
        .map(|c| render_search(ctx, c))
        .filter(|c| {
            q.as_ref().is_none_or(|q| {
                [
                    "fullName",
                    "contactName",
                    "email",
                    "phone",
                    "companyName",
                    "lastMessageBody",
                ]
                .iter()
                .any(|k| s(c, k).to_lowercase().contains(q.as_str()))
            })
        })
        .collect();
    let key = |c: &Value| (sort_value(c, sort_by), s(c, "id").to_string());
    hits.sort_by_key(|c| key(c));
    if desc {
        hits.reverse();
    }
    if sort_by == "last_manual_message_date" {
        for h in &mut hits {
            h["sort"] = json!([sort_value(h, sort_by)]);
        }
    }
    let total = hits.len();
    // `startAfterDate` is the sort value of the last hit of the previous page (a number, or the
    // `sort` array: a second element, when given, is the conversation id that breaks ties).
    let cursor = comma_list(req.query("startAfterDate"));
    let skip = match cursor.first() {
        None => 0,
        Some(first) => {
            let ms = parse_time_ms(&json!(first)).ok_or_else(|| {
                ApiError::unprocessable(vec!["startAfterDate must be a number".into()])
            })?;
            let tie = cursor.get(1).filter(|t| t.parse::<f64>().is_err()).cloned();
            hits.iter()
                .position(|c| {
                    let (v, id) = key(c);
                    match &tie {
                        Some(t) if desc => (v, id) < (ms, t.clone()),
                        Some(t) => (v, id) > (ms, t.clone()),
                        None if desc => v < ms,
                        None => v > ms,
                    }
                })
                .unwrap_or(total)
        }
    };
    let conversations: Vec<Value> = hits.into_iter().skip(skip).take(limit).collect();
    ok(json!({ "conversations": conversations, "total": total }))
}

fn message(ctx: &Ctx<'_>, req: &Req, id: &str) -> Result<Arc<Value>, ApiError> {
    ctx.find(MESSAGE, id, "Message", req)
}

fn message_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let m = message(ctx, req, req.path("id")?)?;
    ok((*m).clone())
}

fn email_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let e = ctx.find(EMAIL, req.path("id")?, "Email", req)?;
    ok((*e).clone())
}

/// Messages of a conversation, newest first.
fn newest_first(ctx: &Ctx<'_>, conversation_id: &str) -> Vec<Arc<Value>> {
    let mut all = ctx.children(MESSAGE, conversation_id);
    all.reverse();
    all.sort_by_key(|m| std::cmp::Reverse(m.get("dateAdded").and_then(parse_time_ms).unwrap_or(0)));
    all
}

/// Message types the `type` filter of the messages list accepts.
const LIST_TYPES: &[&str] = &[
    "TYPE_CALL",
    "TYPE_SMS",
    "TYPE_RCS",
    "TYPE_EMAIL",
    "TYPE_FACEBOOK",
    "TYPE_GMB",
    "TYPE_INSTAGRAM",
    "TYPE_WHATSAPP",
    "TYPE_ACTIVITY_APPOINTMENT",
    "TYPE_ACTIVITY_CONTACT",
    "TYPE_ACTIVITY_INVOICE",
    "TYPE_ACTIVITY_PAYMENT",
    "TYPE_ACTIVITY_OPPORTUNITY",
    "TYPE_LIVE_CHAT",
    "TYPE_INTERNAL_COMMENTS",
    "TYPE_ACTIVITY_EMPLOYEE_ACTION_LOG",
    "TYPE_TIKTOK",
    "TYPE_ACTIVITY_WHATSAPP",
    "TYPE_FORM_SUBMISSION",
];

/// `GET /conversations/{id}/messages`: newest first, `limit` (default 20, max 100) after the
/// `lastMessageId` cursor. HighLevel wraps the page in a `messages` object
/// (`{messages: {lastMessageId, nextPage, messages: [...]}}`), unlike the spec's schema.
fn messages_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let cid = req.path("conversationId")?;
    conversation(ctx, req, cid)?;
    let limit = req.query_usize("limit", 20, 100)?.max(1);
    let types = comma_list(req.query("type"));
    if let Some(bad) = types.iter().find(|t| !LIST_TYPES.contains(&t.as_str())) {
        return Err(ApiError::unprocessable(vec![format!(
            "type must be one of the following values: {} (got {bad})",
            LIST_TYPES.join(", ")
        )]));
    }
    let mut all = newest_first(ctx, cid);
    if !types.is_empty() {
        all.retain(|m| {
            let t = s(m, "messageType");
            types
                .iter()
                .any(|x| x == t || (x == "TYPE_INTERNAL_COMMENTS" && t == "TYPE_INTERNAL_COMMENT"))
        });
    }
    let start = match req.query("lastMessageId").filter(|v| !v.is_empty()) {
        None => 0,
        Some(last) => match all.iter().position(|m| s(m, "id") == last) {
            Some(i) => i + 1,
            None => {
                if ctx.get(MESSAGE, last).is_none() {
                    return Err(ApiError::not_found("Message"));
                }
                // A message of another type: continue after its date.
                let at = ctx
                    .get(MESSAGE, last)
                    .and_then(|d| d.body.get("dateAdded").and_then(parse_time_ms))
                    .unwrap_or(0);
                all.iter()
                    .position(|m| m.get("dateAdded").and_then(parse_time_ms).unwrap_or(0) < at)
                    .unwrap_or(all.len())
            }
        },
    };
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(limit)
        .map(|m| (**m).clone())
        .collect();
    let next = start + page.len() < all.len();
    let last = page.last().map(|m| m["id"].clone()).unwrap_or(Value::Null);
    ok(json!({ "messages": { "lastMessageId": last, "nextPage": next, "messages": page } }))
}

/// Records `m` as the latest message of its conversation.
fn touch_conversation(
    ctx: &mut Ctx<'_>,
    conv: &Value,
    m: &Value,
    at_ms: i64,
) -> Result<Value, ApiError> {
    let mut c = conv.clone();
    let body = s(m, "body");
    let preview = if s(m, "messageType") == "TYPE_EMAIL" {
        m.pointer("/meta/email/subject")
            .and_then(Value::as_str)
            .unwrap_or(body)
            .to_string()
    } else {
        body.to_string()
    };
    c["lastMessageBody"] = json!(preview);
    c["lastMessageType"] = m["messageType"].clone();
    c["lastMessageDirection"] = m["direction"].clone();
    c["lastMessageDate"] = json!(at_ms);
    c["dateUpdated"] = json!(iso(at_ms));
    let action = if s(m, "source") == "workflow" || s(m, "source") == "campaign" {
        "automated"
    } else {
        "manual"
    };
    c["lastMessageAction"] = json!(action);
    if action == "manual" {
        c["lastManualMessageDate"] = json!(at_ms);
    }
    if s(m, "direction") == "inbound" {
        c["unreadCount"] = json!(c.get("unreadCount").and_then(Value::as_i64).unwrap_or(0) + 1);
    }
    let id = s(&c, "id").to_string();
    ctx.replace(CONVERSATION, &id, c.clone())?;
    Ok(c)
}

fn string_list(v: Option<&Value>) -> Vec<Value> {
    match v {
        Some(Value::Array(a)) => a.iter().filter(|x| x.is_string()).cloned().collect(),
        Some(Value::String(x)) if !x.is_empty() => x.split(',').map(|e| json!(e.trim())).collect(),
        _ => Vec::new(),
    }
}

/// `POST /conversations/messages`: sends a message to a contact through the channel `type`,
/// in the contact's conversation (created when missing). The spec marks `subType` and `status`
/// required; HighLevel (and its SDKs) send messages without them, so they are optional here.
fn send(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["type", "contactId"])?;
    let kind = req.field_str("type").unwrap_or_default();
    let Some((_, message_type)) = SEND_TYPES.iter().find(|(t, _)| *t == kind) else {
        let names: Vec<&str> = SEND_TYPES.iter().map(|(t, _)| *t).collect();
        return Err(ApiError::unprocessable(vec![format!(
            "type must be one of the following values: {}",
            names.join(", ")
        )]));
    };
    let mut errs = Vec::new();
    if let Some(st) = req.field("status")
        && !st.as_str().is_some_and(|st| STATUSES.contains(&st))
    {
        errs.push(format!(
            "status must be one of the following values: {}",
            STATUSES.join(", ")
        ));
    }
    for k in ["attachments", "emailCc", "emailBcc"] {
        if req
            .field(k)
            .is_some_and(|v| !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)))
        {
            errs.push(format!("{k} must be an array of strings"));
        }
    }
    if req
        .field("scheduledTimestamp")
        .is_some_and(|v| !v.is_number())
    {
        errs.push("scheduledTimestamp must be a number".into());
    }
    let text = req.field_str("message").filter(|m| !m.is_empty());
    let html = req.field_str("html").filter(|m| !m.is_empty());
    let attachments = string_list(req.field("attachments"));
    let has_content = text.is_some()
        || html.is_some()
        || !attachments.is_empty()
        || req.field_str("templateId").is_some();
    if !has_content {
        errs.push(if kind == "Email" {
            "html should not be empty".into()
        } else {
            "message should not be empty".into()
        });
    }
    if !errs.is_empty() {
        return Err(ApiError::unprocessable(errs));
    }
    let contact_id = req.field_str("contactId").unwrap_or_default().to_string();
    let contact = ctx.find(CONTACT, &contact_id, "Contact", req)?;
    let location_id = s(&contact, "locationId").to_string();
    let email_to = req
        .field_str("emailTo")
        .filter(|e| !e.is_empty())
        .unwrap_or(s(&contact, "email"))
        .to_string();
    let phone_to = req
        .field_str("toNumber")
        .filter(|e| !e.is_empty())
        .unwrap_or(s(&contact, "phone"))
        .to_string();
    match kind {
        "Email" if email_to.is_empty() => {
            return Err(ApiError::bad_request(
                "Contact does not have an email address",
            ));
        }
        "SMS" | "RCS" | "WhatsApp" if phone_to.is_empty() => {
            return Err(ApiError::bad_request(
                "Contact does not have a phone number",
            ));
        }
        _ => {}
    }
    let now = req.now_ms;
    let conv = match conversation_of(ctx, &contact_id) {
        Some(c) => (*c).clone(),
        None => {
            let id = new_id();
            let c = new_conversation(&id, &contact_id, &location_id, now);
            ctx.put(
                CONVERSATION,
                &id,
                Some(&location_id),
                Some(&contact_id),
                c.clone(),
            )?;
            c
        }
    };
    let conversation_id = s(&conv, "id").to_string();
    let scheduled = req
        .field("scheduledTimestamp")
        .and_then(Value::as_i64)
        .map(|t| if t < 100_000_000_000 { t * 1000 } else { t })
        .filter(|t| *t > now);
    let status = match (scheduled, req.field_str("status")) {
        (Some(_), _) => "scheduled",
        (None, Some(st)) => st,
        (None, None) => "pending",
    };
    let id = new_id();
    let body = html.or(text).unwrap_or_default().to_string();
    let mut m = json!({
        "id": id,
        "type": message_type_number(message_type),
        "messageType": message_type,
        "locationId": location_id,
        "contactId": contact_id,
        "conversationId": conversation_id,
        "dateAdded": iso(now),
        "body": body,
        "direction": "outbound",
        "status": status,
        "contentType": if html.is_some() { "text/html" } else { "text/plain" },
        "attachments": attachments,
        "source": "api",
    });
    for k in ["conversationProviderId", "userId"] {
        if let Some(v) = req.field_str(k) {
            m[k] = json!(v);
        }
    }
    if let Some(at) = scheduled {
        m["scheduledTimestamp"] = json!(at);
    }
    let mut email_id = None;
    let mut event = json!({
        "type": "OutboundMessage",
        "locationId": location_id,
        "attachments": m["attachments"],
        "body": body,
        "contactId": contact_id,
        "contentType": m["contentType"],
        "conversationId": conversation_id,
        "dateAdded": m["dateAdded"],
        "direction": "outbound",
        "messageType": kind,
        "messageId": id,
        "status": status,
        "source": "api",
    });
    if kind == "Email" {
        let eid = new_id();
        let from = req
            .field_str("emailFrom")
            .map(str::to_string)
            .or_else(|| {
                ctx.get(LOCATION, &location_id)
                    .map(|l| s(&l.body, "email").to_string())
            })
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| "noreply@msgsndr.com".to_string());
        let thread = req.field_str("threadId").unwrap_or(&eid).to_string();
        let subject = req.field_str("subject").unwrap_or_default().to_string();
        let mut e = json!({
            "id": eid,
            "altId": id,
            "threadId": thread,
            "locationId": location_id,
            "contactId": contact_id,
            "conversationId": conversation_id,
            "dateAdded": iso(now),
            "subject": subject,
            "body": body,
            "direction": "outbound",
            "status": if status == "pending" { "sent" } else { status },
            "contentType": m["contentType"],
            "attachments": m["attachments"],
            "provider": "Leadconnector",
            "from": from,
            "to": [email_to],
            "cc": string_list(req.field("emailCc")),
            "bcc": string_list(req.field("emailBcc")),
            "source": "api",
        });
        if let Some(r) = req.field_str("replyMessageId") {
            e["replyToMessageId"] = json!(r);
        }
        ctx.put(
            EMAIL,
            &eid,
            Some(&location_id),
            Some(&conversation_id),
            e.clone(),
        )?;
        m["meta"] = json!({ "email": { "messageIds": [eid], "subject": subject } });
        for k in ["threadId", "from", "to", "cc", "bcc", "subject", "provider"] {
            event[k] = e[k].clone();
        }
        event["emailMessageId"] = json!(eid);
        email_id = Some(eid);
    }
    if let Some(p) = req.field_str("conversationProviderId") {
        event["conversationProviderId"] = json!(p);
    }
    ctx.put(
        MESSAGE,
        &id,
        Some(&location_id),
        Some(&conversation_id),
        m.clone(),
    )?;
    touch_conversation(ctx, &conv, &m, now)?;
    if scheduled.is_none() {
        ctx.emit("OutboundMessage", &location_id, event);
    }
    let mut out = json!({
        "conversationId": conversation_id,
        "messageId": id,
        "msg": if scheduled.is_some() { "Message scheduled successfully." } else { "Message queued successfully." },
        "status": if status == "scheduled" { "pending" } else { status },
    });
    if let Some(eid) = email_id {
        out["emailMessageId"] = json!(eid);
    }
    ok(out)
}

/// `PUT /conversations/messages/{id}/status`: a provider reports delivery of a message.
fn set_status(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["status"])?;
    let status = req.field_str("status").unwrap_or_default();
    if !STATUSES.contains(&status) {
        return Err(ApiError::unprocessable(vec![format!(
            "status must be one of the following values: {}",
            STATUSES.join(", ")
        )]));
    }
    if let Some(e) = req.field("error") {
        let missing: Vec<String> = ["code", "type", "message"]
            .iter()
            .filter(|k| !e.get(**k).is_some_and(Value::is_string))
            .map(|k| format!("error.{k} should not be empty"))
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::unprocessable(missing));
        }
    }
    let id = req.path("messageId")?;
    let old = message(ctx, req, id)?;
    let mut m = (*old).clone();
    m["status"] = json!(status);
    if let Some(e) = req.field("error").filter(|_| status == "failed") {
        m["error"] = e.clone();
    }
    ctx.replace(MESSAGE, id, m.clone())?;
    let email_ids: Vec<String> = m
        .pointer("/meta/email/messageIds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let email_id = match req.field_str("emailMessageId") {
        Some(e) if !email_ids.iter().any(|x| x == e) => return Err(ApiError::not_found("Email")),
        Some(e) => Some(e.to_string()),
        None => email_ids.first().cloned(),
    };
    if let Some(eid) = &email_id
        && let Some(doc) = ctx.get(EMAIL, eid)
    {
        let mut e = (*doc.body).clone();
        e["status"] = json!(status);
        ctx.replace(EMAIL, eid, e)?;
    }
    let mut out = json!({
        "conversationId": m["conversationId"],
        "messageId": id,
        "status": status,
        "msg": "Message status updated successfully.",
    });
    if let Some(eid) = email_id {
        out["emailMessageId"] = json!(eid);
    }
    ok(out)
}

/// A call message of the path's location (403 for another location's token, 404 otherwise).
fn call_message(ctx: &Ctx<'_>, req: &Req) -> Result<Arc<Value>, ApiError> {
    let location_id = req.path("locationId")?;
    check_own_location(req, location_id)?;
    let id = req.path("messageId")?;
    ctx.get(MESSAGE, id)
        .filter(|d| d.location_id.as_deref() == Some(location_id))
        .map(|d| d.body.clone())
        .ok_or_else(|| ApiError::not_found("Message"))
}

/// A short valid WAV file (8 kHz, 8-bit mono): a half-second 440 Hz tone.
fn wav() -> Vec<u8> {
    const RATE: u32 = 8000;
    let samples: Vec<u8> = (0..RATE / 2)
        .map(|i| {
            if (i * 440 * 2 / RATE).is_multiple_of(2) {
                0xA0
            } else {
                0x60
            }
        })
        .collect();
    let len = samples.len() as u32;
    let mut out = Vec::with_capacity(44 + samples.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&RATE.to_le_bytes()); // byte rate
    out.extend_from_slice(&1u16.to_le_bytes()); // block align
    out.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&samples);
    out
}

fn has_recording(m: &Value) -> bool {
    CALL_TYPES.contains(&s(m, "messageType"))
        && matches!(
            m.pointer("/meta/callStatus").and_then(Value::as_str),
            Some("completed" | "answered" | "voicemail")
        )
}

fn recording(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let m = call_message(ctx, req)?;
    if !has_recording(&m) {
        return Err(ApiError::not_found("Recording"));
    }
    binary("audio/x-wav", wav())
}

fn sentences(ctx: &Ctx<'_>, req: &Req) -> Result<Vec<Value>, ApiError> {
    let m = call_message(ctx, req)?;
    ctx.get(TRANSCRIPTION, s(&m, "id"))
        .and_then(|d| d.body.get("sentences").and_then(Value::as_array).cloned())
        .ok_or_else(|| ApiError::not_found("Transcription"))
}

/// The transcription as a JSON array of sentences (the spec's schema describes one sentence).
fn transcription(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    ok(Value::Array(sentences(ctx, req)?))
}

fn transcription_download(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let text: String = sentences(ctx, req)?
        .iter()
        .map(|st| {
            let at = st.get("startTime").and_then(Value::as_i64).unwrap_or(0) / 1000;
            format!(
                "[{:02}:{:02}] Channel {}: {}\n",
                at / 60,
                at % 60,
                st.get("mediaChannel").and_then(Value::as_i64).unwrap_or(1),
                s(st, "transcript")
            )
        })
        .collect();
    binary("text/plain", text.into_bytes())
}

/// `POST /conversations/providers/live-chat/typing`: shows or hides the agent typing
/// indicator to the visitor; nothing is stored.
fn typing(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["locationId", "isTyping", "visitorId", "conversationId"])?;
    match req.field("isTyping") {
        Some(Value::Bool(_)) => {}
        Some(Value::String(v)) if v == "true" || v == "false" => {}
        _ => {
            return Err(ApiError::unprocessable(vec![
                "isTyping must be a boolean value".into(),
            ]));
        }
    }
    let location_id = req.location_id()?;
    check_own_location(req, &location_id)?;
    let c = conversation(
        ctx,
        req,
        req.field_str("conversationId").unwrap_or_default(),
    )?;
    if s(&c, "locationId") != location_id {
        return Err(ApiError::not_found("Conversation"));
    }
    created(json!({ "success": true }))
}

/// Removes the conversation of a deleted contact with its messages, emails and
/// transcriptions. For the contacts module to call on contact delete.
pub fn delete_for_contact(ctx: &mut Ctx<'_>, contact_id: &str) -> Result<(), ApiError> {
    for c in ctx.children(CONVERSATION, contact_id) {
        let cid = s(&c, "id").to_string();
        for m in ctx.children(MESSAGE, &cid) {
            let mid = s(&m, "id").to_string();
            if ctx.get(TRANSCRIPTION, &mid).is_some() {
                ctx.delete(TRANSCRIPTION, &mid)?;
            }
            ctx.delete(MESSAGE, &mid)?;
        }
        for e in ctx.children(EMAIL, &cid) {
            ctx.delete(EMAIL, s(&e, "id"))?;
        }
        ctx.delete(CONVERSATION, &cid)?;
    }
    Ok(())
}

fn seed_id(seed: &mut Seed) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..20)
        .map(|_| ALPHABET[seed.rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Gives about twenty seeded contacts a conversation: SMS back and forth, some emails, some
/// calls (with recordings and transcriptions), the latest inbound ones unread.
pub fn seed(ctx: &mut Ctx<'_>, seed: &mut Seed) -> Result<(), ApiError> {
    const OUT_SMS: &[&str] = &[
        "Hi {name}, thanks for reaching out! When is a good time for a quick call?",
        "Just following up on the quote we sent over. Any questions?",
        "Your appointment is confirmed. Reply C to confirm or R to reschedule.",
        "Great news, {name}: the spring offer is still available this week.",
    ];
    const IN_SMS: &[&str] = &[
        "Tomorrow afternoon works for me.",
        "Can you send the pricing again?",
        "C",
        "Thanks! I'll talk to my partner and get back to you.",
        "Is Saturday possible?",
    ];
    let location_id = seed.location_id.clone();
    // The first contact is left without a conversation, free for a create call to use.
    let contacts: Vec<String> = seed
        .ids("contact")
        .iter()
        .skip(1)
        .take(20)
        .cloned()
        .collect();
    let users: Vec<String> = seed.ids("user").to_vec();
    for (ci, contact_id) in contacts.iter().enumerate() {
        let Some(contact) = ctx.get(CONTACT, contact_id).map(|d| d.body.clone()) else {
            continue;
        };
        let name = s(&contact, "firstName").to_string();
        let conv_id = seed_id(seed);
        // Distinct, increasing times: conversation ci's last message is ci hours after the
        // previous one, so the newest conversations are the last contacts.
        let base = seed.now_ms - (30 - ci as i64) * 86_400_000;
        let mut conv = new_conversation(&conv_id, contact_id, &location_id, base);
        if !users.is_empty() && ci % 3 != 0 {
            conv["assignedTo"] = json!(users[ci % users.len()]);
        }
        conv["starred"] = json!(ci % 7 == 0);
        ctx.put(
            CONVERSATION,
            &conv_id,
            Some(&location_id),
            Some(contact_id),
            conv.clone(),
        )?;
        let count = seed.rng.random_range(2..7);
        for mi in 0..count {
            let at = base + (mi as i64 + 1) * 3_600_000 + seed.rng.random_range(0..600_000);
            let inbound = mi % 2 == 1;
            let mid = seed_id(seed);
            let call = mi == 2 && ci % 4 == 0;
            let email = mi == 0 && ci % 5 == 1 && !s(&contact, "email").is_empty();
            let message_type = if call {
                "TYPE_CALL"
            } else if email {
                "TYPE_EMAIL"
            } else {
                "TYPE_SMS"
            };
            let text = if inbound {
                IN_SMS[seed.rng.random_range(0..IN_SMS.len())].to_string()
            } else {
                OUT_SMS[seed.rng.random_range(0..OUT_SMS.len())].replace("{name}", &name)
            };
            let mut m = json!({
                "id": mid,
                "type": message_type_number(message_type),
                "messageType": message_type,
                "locationId": location_id,
                "contactId": contact_id,
                "conversationId": conv_id,
                "dateAdded": iso(at),
                "body": if call { String::new() } else { text.clone() },
                "direction": if inbound { "inbound" } else { "outbound" },
                "status": if inbound { "delivered" } else if mi + 1 == count { "sent" } else { "delivered" },
                "contentType": if email { "text/html" } else { "text/plain" },
                "attachments": [],
                "source": "app",
            });
            if !inbound && !users.is_empty() {
                m["userId"] = json!(users[(ci + mi) % users.len()]);
            }
            if call {
                let duration = seed.rng.random_range(30..400);
                // The call's own outcome lives in meta.callStatus (CallDataDTO); the message
                // status keeps to the message enum, which has no "completed".
                m["meta"] =
                    json!({ "callDuration": duration.to_string(), "callStatus": "completed" });
                let lines = [
                    (1, "Hi, this is Morgan from the office. Is now a good time?"),
                    (
                        2,
                        "Yes, I was hoping you'd call. I have a few questions about the quote.",
                    ),
                    (
                        1,
                        "Of course. The installation takes about two days and includes cleanup.",
                    ),
                    (2, "Perfect, let's book it for next week."),
                ];
                let sentences: Vec<Value> = lines
                    .iter()
                    .enumerate()
                    .map(|(i, (channel, t))| {
                        json!({
                            "mediaChannel": channel,
                            "sentenceIndex": i,
                            "startTime": i as i64 * 6000,
                            "endTime": i as i64 * 6000 + 5200,
                            "transcript": t,
                            "confidence": 0.9 - i as f64 * 0.03,
                        })
                    })
                    .collect();
                ctx.put(
                    TRANSCRIPTION,
                    &mid,
                    Some(&location_id),
                    Some(&mid),
                    json!({ "id": mid, "messageId": mid, "sentences": sentences }),
                )?;
            }
            if email {
                let eid = seed_id(seed);
                let subject = "Your quote".to_string();
                let html = format!("<p>Hi {name},</p><p>Please find your quote attached.</p>");
                m["body"] = json!(html);
                m["meta"] = json!({ "email": { "messageIds": [eid], "subject": subject } });
                ctx.put(
                    EMAIL,
                    &eid,
                    Some(&location_id),
                    Some(&conv_id),
                    json!({
                        "id": eid, "altId": mid, "threadId": eid, "locationId": location_id,
                        "contactId": contact_id, "conversationId": conv_id, "dateAdded": iso(at),
                        "subject": subject, "body": html, "direction": "outbound", "status": "delivered",
                        "contentType": "text/html", "attachments": [], "provider": "Leadconnector",
                        "from": "noreply@msgsndr.com", "to": [s(&contact, "email")], "cc": [], "bcc": [],
                        "source": "app",
                    }),
                )?;
            }
            ctx.put(MESSAGE, &mid, Some(&location_id), Some(&conv_id), m.clone())?;
            conv = touch_conversation(ctx, &conv, &m, at)?;
        }
        // Only the trailing inbound message of a conversation is unread.
        let unread = if conv["lastMessageDirection"] == "inbound" {
            1
        } else {
            0
        };
        conv["unreadCount"] = json!(unread);
        ctx.replace(CONVERSATION, &conv_id, conv)?;
        seed.ids.entry("conversation").or_default().push(conv_id);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::handlers::testing::call;
    use crate::store::Docs;
    use parking_lot::RwLock;
    use rand::SeedableRng;

    fn contact(docs: &RwLock<Docs>, email: &str) -> String {
        let n = docs.read().count(CONTACT);
        let (r, _) = call(
            docs,
            "contacts.create",
            &[],
            &[],
            json!({ "locationId": "loc1", "firstName": "Ada", "lastName": "Lovelace", "email": email, "phone": format!("+1 202-555-{:04}", n) }),
        );
        r.unwrap().body["contact"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn create_is_one_per_contact() {
        let docs = RwLock::new(Docs::default());
        let cid = contact(&docs, "ada@example.com");
        let (r, _) = call(
            &docs,
            "conversations.create",
            &[],
            &[],
            json!({ "locationId": "loc1", "contactId": cid }),
        );
        let r = r.unwrap();
        assert_eq!(r.status, 201);
        let id = r.body["conversation"]["id"].as_str().unwrap().to_string();
        let (r, _) = call(
            &docs,
            "conversations.create",
            &[],
            &[],
            json!({ "locationId": "loc1", "contactId": cid }),
        );
        let e = r.unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.body()["conversationId"], id.as_str());
        let (r, _) = call(
            &docs,
            "conversations.get",
            &[("conversationId", &id)],
            &[],
            Value::Null,
        );
        let c = r.unwrap().body;
        assert_eq!(c["type"], 1);
        assert_eq!(c["contactId"], cid.as_str());
        let (r, _) = call(
            &docs,
            "conversations.get",
            &[("conversationId", "nope")],
            &[],
            Value::Null,
        );
        assert_eq!(r.unwrap_err().message, json!("Conversation not found"));
        let (r, _) = call(
            &docs,
            "conversations.create",
            &[],
            &[],
            json!({ "locationId": "loc1" }),
        );
        assert_eq!(r.unwrap_err().status, 422);
    }

    #[test]
    fn send_list_status() {
        let docs = RwLock::new(Docs::default());
        let cid = contact(&docs, "ada@example.com");
        let (r, ev) = call(
            &docs,
            "conversations.messages.send",
            &[],
            &[],
            json!({ "type": "SMS", "contactId": cid, "message": "Hello" }),
        );
        let r = r.unwrap().body;
        let conv = r["conversationId"].as_str().unwrap().to_string();
        let first = r["messageId"].as_str().unwrap().to_string();
        assert_eq!(r["status"], "pending");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].kind, "OutboundMessage");
        assert_eq!(ev[0].payload["messageType"], "SMS");
        assert_eq!(ev[0].payload["conversationId"], conv.as_str());

        let (r, ev) = call(
            &docs,
            "conversations.messages.send",
            &[],
            &[],
            json!({ "type": "Email", "contactId": cid, "html": "<p>Hi</p>", "subject": "Hello", "emailCc": ["x@y.co"] }),
        );
        let r = r.unwrap().body;
        assert_eq!(
            r["conversationId"],
            conv.as_str(),
            "same conversation for the contact"
        );
        let email_id = r["emailMessageId"].as_str().unwrap().to_string();
        let second = r["messageId"].as_str().unwrap().to_string();
        assert_eq!(ev[0].payload["emailMessageId"], email_id.as_str());
        let (r, _) = call(
            &docs,
            "conversations.emails.get",
            &[("id", &email_id)],
            &[],
            Value::Null,
        );
        let e = r.unwrap().body;
        assert_eq!(e["subject"], "Hello");
        assert_eq!(e["to"], json!(["ada@example.com"]));

        let (r, _) = call(
            &docs,
            "conversations.messages.get",
            &[("id", &first)],
            &[],
            Value::Null,
        );
        let m = r.unwrap().body;
        assert_eq!(m["type"], 2);
        assert_eq!(m["messageType"], "TYPE_SMS");

        // Newest first, one per page.
        let (r, _) = call(
            &docs,
            "conversations.messages.list",
            &[("conversationId", &conv)],
            &[("limit", "1")],
            Value::Null,
        );
        let page = r.unwrap().body;
        assert_eq!(page["messages"]["messages"][0]["id"], second.as_str());
        assert_eq!(page["messages"]["nextPage"], true);
        let (r, _) = call(
            &docs,
            "conversations.messages.list",
            &[("conversationId", &conv)],
            &[("limit", "1"), ("lastMessageId", &second)],
            Value::Null,
        );
        let page = r.unwrap().body;
        assert_eq!(page["messages"]["messages"][0]["id"], first.as_str());
        assert_eq!(page["messages"]["nextPage"], false);
        let (r, _) = call(
            &docs,
            "conversations.messages.list",
            &[("conversationId", &conv)],
            &[("type", "TYPE_EMAIL")],
            Value::Null,
        );
        assert_eq!(
            r.unwrap().body["messages"]["messages"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        let (r, _) = call(
            &docs,
            "conversations.messages.set_status",
            &[("messageId", &second)],
            &[],
            json!({ "status": "read" }),
        );
        assert_eq!(r.unwrap().body["emailMessageId"], email_id.as_str());
        let (r, _) = call(
            &docs,
            "conversations.emails.get",
            &[("id", &email_id)],
            &[],
            Value::Null,
        );
        assert_eq!(r.unwrap().body["status"], "read");
        let (r, _) = call(
            &docs,
            "conversations.messages.set_status",
            &[("messageId", &first)],
            &[],
            json!({ "status": "unread" }),
        );
        assert_eq!(r.unwrap_err().status, 422);

        let (r, _) = call(
            &docs,
            "conversations.messages.send",
            &[],
            &[],
            json!({ "type": "Pigeon", "contactId": cid, "message": "x" }),
        );
        assert_eq!(r.unwrap_err().status, 422);
        let (r, _) = call(
            &docs,
            "conversations.messages.send",
            &[],
            &[],
            json!({ "type": "SMS", "contactId": "nope", "message": "x" }),
        );
        assert_eq!(r.unwrap_err().status, 404);
        let (r, _) = call(
            &docs,
            "conversations.messages.send",
            &[],
            &[],
            json!({ "type": "SMS", "contactId": cid }),
        );
        assert_eq!(r.unwrap_err().status, 422);

        let (r, _) = call(
            &docs,
            "conversations.live_chat.typing",
            &[],
            &[],
            json!({ "locationId": "loc1", "isTyping": true, "visitorId": "v1", "conversationId": conv }),
        );
        let r = r.unwrap();
        assert_eq!((r.status, r.body), (201, json!({ "success": true })));

        let mut ctx = Ctx::new(crate::handlers::Guard::Write(docs.write()), 0);
        delete_for_contact(&mut ctx, &cid).unwrap();
        drop(ctx);
        let g = docs.read();
        assert_eq!(
            (g.count(CONVERSATION), g.count(MESSAGE), g.count(EMAIL)),
            (0, 0, 0)
        );
    }

    #[test]
    fn seeded_search_recording_transcription() {
        let docs = RwLock::new(Docs::default());
        let mut seed = Seed {
            location_id: "loc1".into(),
            company_id: "company1".into(),
            now_ms: 1_700_000_000_000,
            rng: rand::rngs::StdRng::seed_from_u64(3),
            ids: HashMap::new(),
        };
        for i in 0..22 {
            let id = contact(&docs, &format!("c{i}@example.com"));
            seed.ids.entry("contact").or_default().push(id);
        }
        {
            let mut ctx = Ctx::new(crate::handlers::Guard::Write(docs.write()), seed.now_ms);
            super::seed(&mut ctx, &mut seed).unwrap();
        }
        assert_eq!(seed.ids("conversation").len(), 20);
        // Page through with startAfterDate.
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut q = vec![
                ("locationId", "loc1".to_string()),
                ("limit", "8".to_string()),
            ];
            if let Some(a) = &after {
                q.push(("startAfterDate", a.clone()));
            }
            let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (r, _) = call(&docs, "conversations.search", &[], &q, Value::Null);
            let r = r.unwrap().body;
            assert_eq!(r["total"], 20);
            let items = r["conversations"].as_array().unwrap().clone();
            if items.is_empty() {
                break;
            }
            for c in &items {
                assert!(c["fullName"].is_string() && c["lastMessageType"].is_string());
                seen.push(c["id"].as_str().unwrap().to_string());
            }
            after = Some(items.last().unwrap()["sort"][0].to_string());
        }
        let mut unique = seen.clone();
        unique.dedup();
        assert_eq!((seen.len(), unique.len()), (20, 20));
        let (r, _) = call(
            &docs,
            "conversations.search",
            &[],
            &[("locationId", "loc1"), ("status", "unread")],
            Value::Null,
        );
        let unread = r.unwrap().body;
        assert!(
            unread["conversations"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["unreadCount"].as_i64().unwrap() > 0)
        );
        let (r, _) = call(
            &docs,
            "conversations.search",
            &[],
            &[("locationId", "other")],
            Value::Null,
        );
        assert_eq!(r.unwrap_err().status, 403);

        let calls: Vec<Value> = docs
            .read()
            .iter(MESSAGE)
            .map(|(_, d)| (*d.body).clone())
            .filter(|m| m["messageType"] == "TYPE_CALL")
            .collect();
        assert!(!calls.is_empty());
        let mid = calls[0]["id"].as_str().unwrap();
        let (r, _) = call(
            &docs,
            "conversations.messages.recording",
            &[("messageId", mid), ("locationId", "loc1")],
            &[],
            Value::Null,
        );
        let (ct, bytes) = r.unwrap().raw.unwrap();
        assert_eq!(ct, "audio/x-wav");
        assert_eq!(&bytes[..4], b"RIFF");
        assert_eq!(&bytes[8..12], b"WAVE");
        let (r, _) = call(
            &docs,
            "conversations.messages.transcription",
            &[("messageId", mid), ("locationId", "loc1")],
            &[],
            Value::Null,
        );
        let t = r.unwrap().body;
        assert_eq!(t.as_array().unwrap().len(), 4);
        assert!(t[0]["transcript"].is_string());
        let (r, _) = call(
            &docs,
            "conversations.messages.transcription_download",
            &[("messageId", mid), ("locationId", "loc1")],
            &[],
            Value::Null,
        );
        let (ct, bytes) = r.unwrap().raw.unwrap();
        assert_eq!(ct, "text/plain");
        assert!(String::from_utf8(bytes).unwrap().contains("Channel 2"));
        let sms = docs
            .read()
            .iter(MESSAGE)
            .map(|(_, d)| (*d.body).clone())
            .find(|m| m["messageType"] == "TYPE_SMS")
            .unwrap();
        let (r, _) = call(
            &docs,
            "conversations.messages.recording",
            &[
                ("messageId", sms["id"].as_str().unwrap()),
                ("locationId", "loc1"),
            ],
            &[],
            Value::Null,
        );
        assert_eq!(r.unwrap_err().status, 404);
    }
}
