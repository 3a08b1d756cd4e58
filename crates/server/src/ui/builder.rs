//! The flow builder: a form over the flow file's structure, re-rendered by the server on
//! every structural change (htmx posts the form to `/builder/render`; without JavaScript
//! the same buttons post to `/builder/save`, which re-renders the page).
//!
//! It offers: the trigger kinds (HighLevel event types with sample payloads, HighLevel list
//! operations for polls from the searchable catalog), steps of every kind, operations from
//! the catalog (search by words and category), parameter pickers (the operation's
//! parameters, the sample event's fields and earlier steps' outputs), a mapping preview
//! against the sample event, validation with every diagnostic, a test against a fresh
//! sandbox showing each step's request and response, and the TOML file it saves.
//!
//! Form fields are paths: `f.id`, `t.type`, `s.0.operation`, `s.0.p.1.k` / `s.0.p.1.v` (the
//! second parameter's name and value of the first step), `s.2.s.0.id` (a step nested in a
//! `for_each`). Values are JSON when they parse as JSON (other than a string), else text.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hlbridge_engine::validate::compile_source;
use hlbridge_engine::{Diagnostic, RunFilter};
use hlbridge_highlevel::operations::{self, Category};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Flash, csrf, flash, fragment, json_block, page, respond, see_other, state_badge};
use crate::ServerState;
use crate::api::catalog::{PreviewInput, render_preview};
use crate::auth::{Principal, Require, Source, perm};
use crate::catalog::{OperationInfo, fields, webhook_events, webhook_sample};

/// The builder's state: the flow (as the file's JSON structure), the sample event text,
/// and the id of the flow being edited (`None`: a new flow).
#[derive(Debug, Clone)]
struct Builder {
    flow: Value,
    sample: String,
    orig: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Form → flow

struct FormData {
    one: HashMap<String, String>,
    many: HashMap<String, Vec<String>>,
}

impl FormData {
    fn new(pairs: Vec<(String, String)>) -> FormData {
        let mut one = HashMap::new();
        let mut many: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in pairs {
            many.entry(k.clone()).or_default().push(v.clone());
            one.insert(k, v);
        }
        FormData { one, many }
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.one.get(k).map(String::as_str)
    }

    fn text(&self, k: &str) -> Option<String> {
        self.get(k)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    fn checked(&self, k: &str) -> bool {
        self.one.contains_key(k)
    }

    /// Indices `i` of keys `<prefix><i>.…`, sorted.
    fn indices(&self, prefix: &str) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .one
            .keys()
            .filter_map(|k| k.strip_prefix(prefix))
            .filter_map(|rest| rest.split('.').next()?.parse().ok())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// A typed value: JSON when it parses as JSON (a quoted `"…"` is a string, so `"555"`
/// stays text), else the text itself.
fn typed(text: &str) -> Value {
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(v) => v,
        Err(_) => Value::String(text.to_owned()),
    }
}

/// A value as the form shows it (the inverse of [`typed`]); text with line breaks is
/// written as a quoted JSON string (`"a\nb"`), since a one-line field cannot hold them.
fn untyped(v: &Value) -> String {
    match v {
        Value::String(s) if typed(s) == *v && !s.contains(['\n', '\r']) => s.clone(),
        other => other.to_string(),
    }
}

fn put(obj: &mut Map<String, Value>, key: &str, v: Option<String>) {
    if let Some(v) = v {
        obj.insert(key.to_owned(), Value::String(v));
    }
}

fn parse_steps(f: &FormData, prefix: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for i in f.indices(prefix) {
        let p = format!("{prefix}{i}.");
        let kind = f
            .text(&format!("{p}type"))
            .unwrap_or_else(|| "highlevel".into());
        let mut o = Map::new();
        o.insert(
            "id".into(),
            json!(f.text(&format!("{p}id")).unwrap_or_default()),
        );
        o.insert("type".into(), json!(kind));
        match kind.as_str() {
            "highlevel" => {
                put(
                    &mut o,
                    "operation",
                    f.text(&format!("{p}operation")).or(Some(String::new())),
                );
                let mut params = Map::new();
                for j in f.indices(&format!("{p}p.")) {
                    let Some(k) = f.text(&format!("{p}p.{j}.k")) else {
                        continue;
                    };
                    let v = f.get(&format!("{p}p.{j}.v")).unwrap_or_default();
                    params.insert(k, typed(v));
                }
                if !params.is_empty() {
                    o.insert("params".into(), Value::Object(params));
                }
                put(&mut o, "connection", f.text(&format!("{p}connection")));
            }
            "http" => {
                put(&mut o, "method", f.text(&format!("{p}method")));
                put(
                    &mut o,
                    "url",
                    f.text(&format!("{p}url")).or(Some(String::new())),
                );
                put(&mut o, "connection", f.text(&format!("{p}connection")));
                if let Some(h) = f.text(&format!("{p}headers")) {
                    o.insert("headers".into(), typed(&h));
                }
                if let Some(b) = f.text(&format!("{p}body")) {
                    o.insert("body".into(), typed(&b));
                }
            }
            "find_contact" => {
                put(&mut o, "email", f.text(&format!("{p}email")));
                put(&mut o, "phone", f.text(&format!("{p}phone")));
                if f.checked(&format!("{p}required")) {
                    o.insert("required".into(), json!(true));
                }
            }
            "filter" => {
                put(
                    &mut o,
                    "condition",
                    f.text(&format!("{p}condition")).or(Some(String::new())),
                );
            }
            "for_each" => {
                put(
                    &mut o,
                    "items",
                    f.text(&format!("{p}items")).or(Some(String::new())),
                );
                o.insert(
                    "steps".into(),
                    Value::Array(parse_steps(f, &format!("{p}s."))),
                );
            }
            _ => {}
        }
        out.push(Value::Object(o));
    }
    out
}

fn parse_form(f: &FormData) -> Builder {
    let mut flow = Map::new();
    flow.insert("id".into(), json!(f.text("f.id").unwrap_or_default()));
    put(&mut flow, "name", f.text("f.name"));
    put(&mut flow, "description", f.text("f.description"));
    flow.insert("enabled".into(), json!(f.checked("f.enabled")));
    put(&mut flow, "connection", f.text("f.connection"));
    put(&mut flow, "location_id", f.text("f.location_id"));
    let kind = f.text("t.type").unwrap_or_else(|| "app_webhook".into());
    let mut t = Map::new();
    t.insert("type".into(), json!(kind));
    match kind.as_str() {
        "app_webhook" => {
            put(&mut t, "secret", f.text("t.secret").or(Some(String::new())));
            put(&mut t, "auth", f.text("t.auth"));
            if let Some(h) = f.text("t.signature_header").filter(|h| h != "x-signature") {
                t.insert("signature_header".into(), json!(h));
            }
            put(&mut t, "dedupe_key", f.text("t.dedupe_key"));
        }
        "highlevel_webhook" => {
            let mut events: Vec<String> = f.many.get("t.events").cloned().unwrap_or_default();
            if let Some(extra) = f.text("t.events_other") {
                events.extend(
                    extra
                        .split(',')
                        .map(|e| e.trim().to_owned())
                        .filter(|e| !e.is_empty()),
                );
            }
            t.insert("events".into(), json!(events));
            if let Some(b) = f.text("t.backfill") {
                t.insert("backfill".into(), typed(&b));
            }
        }
        "highlevel_poll" => {
            put(
                &mut t,
                "operation",
                f.text("t.operation").or(Some(String::new())),
            );
            if let Some(p) = f.text("t.params") {
                t.insert("params".into(), typed(&p));
            }
            if let Some(n) = f.text("t.interval_minutes") {
                t.insert("interval_minutes".into(), typed(&n));
            }
            put(&mut t, "mode", f.text("t.mode"));
            if f.checked("t.include_existing") {
                t.insert("include_existing".into(), json!(true));
            }
        }
        "schedule" => {
            put(&mut t, "cron", f.text("t.cron").or(Some(String::new())));
            put(&mut t, "timezone", f.text("t.timezone"));
        }
        _ => {}
    }
    flow.insert("trigger".into(), Value::Object(t));
    put(&mut flow, "filter", f.text("f.filter"));
    flow.insert("steps".into(), Value::Array(parse_steps(f, "s.")));
    let mut retry = Map::new();
    for k in ["max_attempts", "base_delay_ms", "max_delay_ms"] {
        if let Some(v) = f.text(&format!("r.{k}")) {
            retry.insert(k.into(), typed(&v));
        }
    }
    if !retry.is_empty() {
        flow.insert("retry".into(), Value::Object(retry));
    }
    Builder {
        flow: Value::Object(flow),
        sample: f.get("sample").unwrap_or("{}").to_owned(),
        orig: f.text("orig"),
    }
}

// ---------------------------------------------------------------------------------------
// Structural edits

/// The steps array at a step-list path (`""` top level, `"s.1."` inside step 1).
fn steps_at<'a>(flow: &'a mut Value, list: &str) -> Option<&'a mut Vec<Value>> {
    let mut cur = flow.get_mut("steps")?.as_array_mut()?;
    let mut rest = list;
    while let Some(r) = rest.strip_prefix("s.") {
        let (i, tail) = r.split_once('.')?;
        let i: usize = i.parse().ok()?;
        cur = cur.get_mut(i)?.get_mut("steps")?.as_array_mut()?;
        rest = tail;
    }
    Some(cur)
}

/// Splits a step path `s.1.s.0.` into its list path `s.1.` and index `0`.
fn split_step(path: &str) -> Option<(String, usize)> {
    let trimmed = path.strip_suffix('.')?;
    let (list, idx) = trimmed.rsplit_once("s.")?;
    Some((list.to_owned(), idx.parse().ok()?))
}

fn step_at<'a>(flow: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let (list, i) = split_step(path)?;
    steps_at(flow, &list)?.get_mut(i)
}

fn all_step_ids(steps: &[Value], out: &mut Vec<String>) {
    for s in steps {
        if let Some(id) = s["id"].as_str() {
            out.push(id.to_owned());
        }
        if let Some(n) = s["steps"].as_array() {
            all_step_ids(n, out);
        }
    }
}

fn new_step(flow: &Value, kind: &str) -> Value {
    let mut ids = Vec::new();
    all_step_ids(
        flow["steps"].as_array().map_or(&[][..], Vec::as_slice),
        &mut ids,
    );
    let base = match kind {
        "highlevel" => "call",
        "http" => "send",
        "find_contact" => "contact",
        "filter" => "check",
        "for_each" => "each",
        _ => "step",
    };
    let id = (1..)
        .map(|n| {
            if n == 1 {
                base.to_owned()
            } else {
                format!("{base}{n}")
            }
        })
        .find(|c| !ids.contains(c))
        .unwrap_or_else(|| base.to_owned());
    match kind {
        "highlevel" => json!({ "id": id, "type": "highlevel", "operation": "" }),
        "http" => {
            json!({ "id": id, "type": "http", "method": "POST", "url": "", "body": { "email": "{{ event.email }}" } })
        }
        "find_contact" => json!({ "id": id, "type": "find_contact", "email": "{{ event.email }}" }),
        "filter" => json!({ "id": id, "type": "filter", "condition": "" }),
        "for_each" => json!({ "id": id, "type": "for_each", "items": "", "steps": [] }),
        _ => json!({ "id": id, "type": kind }),
    }
}

/// Applies a structural button (`op`); returns a message for the user, if any.
fn apply(b: &mut Builder, op: &str) -> Option<Flash> {
    let (verb, arg) = op.split_once(':').unwrap_or((op, ""));
    match verb {
        "add" => {
            let (list, kind) = arg.rsplit_once(':')?;
            let step = new_step(&b.flow, kind);
            steps_at(&mut b.flow, list)?.push(step);
            None
        }
        "remove" => {
            let (list, i) = split_step(arg)?;
            let steps = steps_at(&mut b.flow, &list)?;
            (i < steps.len()).then(|| steps.remove(i));
            None
        }
        "up" | "down" => {
            let (list, i) = split_step(arg)?;
            let steps = steps_at(&mut b.flow, &list)?;
            let j = if verb == "up" {
                i.checked_sub(1)?
            } else {
                i + 1
            };
            (j < steps.len() && i < steps.len()).then(|| steps.swap(i, j));
            None
        }
        "addparam" => {
            let step = step_at(&mut b.flow, arg)?;
            let params = step
                .as_object_mut()?
                .entry("params")
                .or_insert_with(|| json!({}));
            let obj = params.as_object_mut()?;
            let name = (1..)
                .map(|n| format!("param{n}"))
                .find(|k| !obj.contains_key(k))
                .unwrap_or_default();
            obj.insert(name, json!(""));
            None
        }
        "delparam" => {
            let (path, key) = arg.split_once(".:")?;
            let step = step_at(&mut b.flow, &format!("{path}."))?;
            step.get_mut("params")?.as_object_mut()?.remove(key);
            None
        }
        "pick" => {
            let (path, op_id) = arg.split_once(".:")?;
            let op = operations::find(op_id)?;
            let step = step_at(&mut b.flow, &format!("{path}."))?.as_object_mut()?;
            step.insert("operation".into(), json!(op.id));
            let params = step.entry("params").or_insert_with(|| json!({}));
            let obj = params.as_object_mut()?;
            for p in op
                .params
                .iter()
                .filter(|p| p.required && p.name != "locationId")
            {
                obj.entry(p.name).or_insert_with(|| json!(""));
            }
            Some(Flash::Info(format!(
                "Operation {} chosen: map its required parameters below.",
                op.id
            )))
        }
        "picktrigger" => {
            let op = operations::find(arg)?;
            b.flow["trigger"]["operation"] = json!(op.id);
            None
        }
        "sample" => {
            if let Some(v) = webhook_sample(arg) {
                b.sample = serde_json::to_string_pretty(&v).unwrap_or_default();
            }
            None
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Flow → TOML, diagnostics

fn to_toml(flow: &Value) -> Result<String, String> {
    toml::to_string_pretty(flow).map_err(|e| format!("cannot write the flow as TOML: {e}"))
}

fn diagnostics(state: &ServerState, b: &Builder) -> (String, Vec<Diagnostic>) {
    match to_toml(&b.flow) {
        Ok(text) => {
            let name = format!("{}.toml", b.flow["id"].as_str().unwrap_or("flow"));
            let diags = compile_source(&name, &text, &state.engine().validation_context())
                .err()
                .unwrap_or_default();
            (text, diags)
        }
        Err(e) => (
            String::new(),
            vec![Diagnostic {
                file: "flow".into(),
                line: 1,
                col: 1,
                message: e,
                hint: None,
            }],
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Rendering

struct Ctx<'a> {
    who: &'a Principal,
    sample: Value,
    sample_error: Option<String>,
    connections: Vec<String>,
    app_connections: Vec<String>,
    secrets: Vec<String>,
}

fn field_suggestions(ctx: &Ctx<'_>, flow: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fields("event", &ctx.sample)
        .into_iter()
        .map(|(p, v)| (format!("{{{{ {p} }}}}"), v))
        .collect();
    let mut steps = Vec::new();
    collect_steps(
        flow["steps"].as_array().map_or(&[][..], Vec::as_slice),
        &mut steps,
    );
    for s in steps {
        let id = s["id"].as_str().unwrap_or_default();
        if id.is_empty() {
            continue;
        }
        match s["type"].as_str() {
            Some("find_contact") => {
                for f in ["id", "email", "firstName", "lastName", "phone", "tags"] {
                    out.push((
                        format!("{{{{ steps.{id}.{f} }}}}"),
                        format!("the contact's {f}"),
                    ));
                }
            }
            Some("http") => {
                out.push((format!("{{{{ steps.{id}.status }}}}"), "HTTP status".into()));
                out.push((format!("{{{{ steps.{id}.body }}}}"), "response body".into()));
            }
            Some("for_each") => {
                out.push(("{{ item }}".into(), format!("the element of {id}")));
                out.push(("{{ index }}".into(), "its position".into()));
            }
            _ => out.push((
                format!("{{{{ steps.{id} }}}}"),
                "the step's response".into(),
            )),
        }
    }
    out.push(("{{ flow.id }}".into(), "this flow's id".into()));
    out.push((
        "{{ trigger.received_at }}".into(),
        "when the event came".into(),
    ));
    out
}

fn collect_steps<'a>(steps: &'a [Value], out: &mut Vec<&'a Value>) {
    for s in steps {
        out.push(s);
        if let Some(n) = s["steps"].as_array() {
            collect_steps(n, out);
        }
    }
}

fn catalog_list(q: &str, category: &str, kind: &str, target: &str) -> Markup {
    let ops = crate::catalog::search(Some(q), Some(category), Some(kind));
    let shown: Vec<_> = ops.iter().take(60).collect();
    let verb = if target == "trigger" {
        "picktrigger:"
    } else {
        "pick:"
    };
    html! {
        p.small.muted role="status" { (ops.len()) " operation(s)" @if ops.len() > shown.len() { ", first " (shown.len()) " shown: narrow the search" } }
        ul.oplist {
            @for op in shown {
                li {
                    span.opname { strong.mono { (op.id) } " — " (op.name) br; span.small.muted { (op.category.label()) " · " (op.method.as_str()) " " (op.path) } }
                    @let value = if target == "trigger" { format!("{verb}{}", op.id) } else { format!("{verb}{target}:{}", op.id) };
                    button.small.secondary type="submit" name="op" value=(value)
                        hx-post="/builder/render" hx-target="#builder" hx-swap="outerHTML"
                        aria-label=(format!("Use {}", op.id)) { "Use" }
                }
            }
        }
    }
}

fn catalog_browser(target: &str, kind: &str) -> Markup {
    let id = format!("cat-{}", target.replace('.', "-"));
    html! {
        details {
            summary { "Browse the catalog" }
            div.row {
                div {
                    label for=(format!("{id}-q")) { "Search operations" }
                    input id=(format!("{id}-q")) type="search" name="cq" placeholder="e.g. tag, task, note, appointment"
                        hx-get="/builder/catalog" hx-trigger="input changed delay:250ms, search" hx-target=(format!("#{id}-out"))
                        hx-include=(format!("#{id}-cat")) hx-vals=(json!({ "target": target, "kind": kind }).to_string());
                }
                div {
                    label for=(format!("{id}-cat")) { "Category" }
                    select id=(format!("{id}-cat")) name="ccat"
                        hx-get="/builder/catalog" hx-trigger="change" hx-target=(format!("#{id}-out"))
                        hx-include=(format!("#{id}-q")) hx-vals=(json!({ "target": target, "kind": kind }).to_string()) {
                        option value="" { "All categories" }
                        @for c in Category::ALL { option value=(c.slug()) { (c.label()) } }
                    }
                }
            }
            div id=(format!("{id}-out")) { (catalog_list("", "", kind, target)) }
        }
    }
}

fn input_text(
    name: &str,
    label: &str,
    value: &str,
    hint: Option<&str>,
    list: Option<&str>,
) -> Markup {
    let id = name.replace('.', "-");
    html! {
        div {
            label for=(id) { (label) }
            @if value.contains('\n') {
                textarea id=(id) name=(name) rows="3" aria-describedby=[hint.map(|_| format!("{id}-hint"))] { (value) }
            } @else {
                input id=(id) type="text" name=(name) value=(value) list=[list] aria-describedby=[hint.map(|_| format!("{id}-hint"))];
            }
            @if let Some(h) = hint { p.hint id=(format!("{id}-hint")) { (h) } }
        }
    }
}

fn render_trigger(ctx: &Ctx<'_>, t: &Value, flow_id: &str) -> Markup {
    let kind = t["type"].as_str().unwrap_or("app_webhook");
    let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
    let events: Vec<String> = t["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let known: Vec<&str> = webhook_events().iter().map(|(k, _)| *k).collect();
    let other: Vec<&String> = events
        .iter()
        .filter(|e| !known.contains(&e.as_str()))
        .collect();
    html! {
        fieldset.panel {
            legend { h2 style="margin:0" { "1. Trigger" } }
            p.hint { "What starts a run." }
            div role="radiogroup" aria-label="Trigger kind" {
                @for k in crate::catalog::trigger_kinds() {
                    label.inline {
                        input type="radio" name="t.type" value=(k.kind) checked[k.kind == kind]
                            hx-post="/builder/render" hx-target="#builder" hx-swap="outerHTML" hx-trigger="change";
                        span { strong { (k.label) } }
                    }
                }
            }
            p.hint { (crate::catalog::trigger_kinds().iter().find(|k| k.kind == kind).map(|k| k.description.clone()).unwrap_or_default()) }
            @match kind {
                "app_webhook" => {
                    div.row {
                        div {
                            label for="t-secret" { "Secret name" }
                            input #t-secret type="text" name="t.secret" value=(s("secret")) list="secret-names" aria-describedby="t-secret-hint";
                            datalist #secret-names { @for n in &ctx.secrets { option value=(n) {} } }
                            p.hint #t-secret-hint { "The app secret (from the server's configuration) that signs the app's requests." }
                        }
                        div {
                            label for="t-auth" { "How the app proves it" }
                            select #t-auth name="t.auth" {
                                option value="hmac_sha256" selected[s("auth") != "bearer"] { "HMAC-SHA256 signature of the body" }
                                option value="bearer" selected[s("auth") == "bearer"] { "Authorization: Bearer <secret>" }
                            }
                        }
                    }
                    div.row {
                        (input_text("t.signature_header", "Signature header", t["signature_header"].as_str().unwrap_or("x-signature"), None, None))
                        (input_text("t.dedupe_key", "Dedupe key", &s("dedupe_key"), Some("A template giving the event's unique id, e.g. {{ event.id }}: a resent event then runs once."), Some("fields")))
                    }
                    p.small { "The app POSTs its events to " code { "/hooks/app/" (flow_id) } "." }
                }
                "highlevel_webhook" => {
                    fieldset {
                        legend { "Event types" }
                        div {
                            @for (k, _) in webhook_events() {
                                label.inline {
                                    input type="checkbox" name="t.events" value=(k) checked[events.iter().any(|e| e == k)];
                                    span.mono.small { (k) }
                                }
                            }
                        }
                    }
                    (input_text("t.events_other", "Other event types (comma-separated)", &other.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "), None, None))
                    div {
                        label for="t-backfill" { "Backfill poll (optional, JSON)" }
                        textarea #t-backfill name="t.backfill" rows="3" aria-describedby="t-backfill-hint" { (t.get("backfill").map(|b| serde_json::to_string_pretty(b).unwrap_or_default()).unwrap_or_default()) }
                        p.hint #t-backfill-hint { "A poll that catches webhooks HighLevel dropped, e.g. {\"operation\": \"contacts.search\", \"mode\": \"updated\"}." }
                    }
                    div.actions {
                        span.small.muted { "Sample event for:" }
                        @for e in events.iter().filter(|e| known.contains(&e.as_str())).take(6) {
                            button.small.secondary type="submit" name="op" value=(format!("sample:{e}"))
                                hx-post="/builder/render" hx-target="#builder" hx-swap="outerHTML" { (e) }
                        }
                    }
                }
                "highlevel_poll" => {
                    div.row {
                        div {
                            label for="t-operation" { "List operation" }
                            input #t-operation type="text" name="t.operation" value=(s("operation")) list="ops-trigger";
                        }
                        div {
                            label for="t-interval" { "Every (minutes, 1–15)" }
                            input #t-interval type="number" min="1" max="15" name="t.interval_minutes" value=(t["interval_minutes"].as_u64().unwrap_or(5));
                        }
                        div {
                            label for="t-mode" { "Start a run for" }
                            select #t-mode name="t.mode" {
                                option value="new" selected[s("mode") != "updated"] { "new items" }
                                option value="updated" selected[s("mode") == "updated"] { "updated items" }
                            }
                        }
                    }
                    div {
                        label for="t-params" { "Parameters (JSON)" }
                        textarea #t-params name="t.params" rows="2" { (t.get("params").map(|p| p.to_string()).unwrap_or_default()) }
                    }
                    label.inline { input type="checkbox" name="t.include_existing" checked[t["include_existing"] == json!(true)]; "Also run for items that exist already" }
                    (catalog_browser("trigger", "trigger"))
                }
                "schedule" => {
                    div.row {
                        (input_text("t.cron", "Cron", &s("cron"), Some("5 fields (minute hour day month weekday), e.g. 0 * * * * for every hour, or @hourly."), None))
                        (input_text("t.timezone", "Time zone", &s("timezone"), Some("UTC (default), an IANA zone such as Europe/Paris (daylight saving followed), or an offset such as +02:00."), None))
                    }
                }
                _ => {}
            }
        }
    }
}

fn render_steps(ctx: &Ctx<'_>, steps: &[Value], prefix: &str, nested: bool) -> Markup {
    let list = prefix.strip_suffix("s.").unwrap_or(prefix);
    html! {
        @for (i, s) in steps.iter().enumerate() {
            (render_step(ctx, s, &format!("{prefix}{i}."), i, steps.len(), nested))
        }
        div.actions {
            span.small.muted { @if nested { "Add a step inside:" } @else { "Add a step:" } }
            @for (kind, label) in [("find_contact", "Find contact"), ("highlevel", "HighLevel action"), ("http", "HTTP to an app"), ("filter", "Filter"), ("for_each", "For each")] {
                @if !(nested && kind == "for_each") {
                    button.small.secondary type="submit" name="op" value=(format!("add:{list}:{kind}"))
                        hx-post="/builder/render" hx-target="#builder" hx-swap="outerHTML" { "+ " (label) }
                }
            }
        }
    }
}

fn render_step(ctx: &Ctx<'_>, s: &Value, p: &str, i: usize, n: usize, nested: bool) -> Markup {
    let kind = s["type"].as_str().unwrap_or("highlevel");
    let id = s["id"].as_str().unwrap_or_default();
    let f = |k: &str| format!("{p}{k}");
    let get = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
    let dom = |k: &str| format!("{p}{k}").replace('.', "-");
    let op = s["operation"].as_str().and_then(operations::find);
    html! {
        section.step.nested[nested] aria-label=(format!("Step {id}")) {
            header {
                strong { "Step " (i + 1) }
                span.badge.s-skipped { (kind) }
                input type="hidden" name=(f("type")) value=(kind);
                div style="margin-left:auto" class="actions" {
                    button.small.secondary type="submit" name="op" value=(format!("up:{p}")) disabled[i == 0]
                        hx-post="/builder/render" hx-target="#builder" hx-swap="outerHTML" aria-label=(format!("Move step {id} up")) { "↑" }
                    button.small.secondary type="submit" name="op" value=(format!("down:{p}")) disabled[i + 1 == n]
                        hx-post="/builder/render" hx-target="#builder" hx-swap="outerHTML" aria-label=(format!("Move step {id} down")) { "↓" }
                    button.small.danger type="submit" name="op" value=(format!("remove:{p}"))
                        hx-post="/builder/render" hx-target="#builder" hx-swap="outerHTML" aria-label=(format!("Remove step {id}")) { "Remove" }
                }
            }
            div.row {
                (input_text(&f("id"), "Step id", id, Some("Later steps read this step's output as steps.<id>."), None))
                @if kind == "highlevel" {
                    div {
                        label for=(dom("operation")) { "Operation" }
                        input id=(dom("operation")) type="text" name=(f("operation")) value=(get("operation")) list="ops-all" aria-describedby=(dom("operation-hint"));
                        p.hint id=(dom("operation-hint")) {
                            @if let Some(op) = op { (op.name) " · " (op.method.as_str()) " " (op.path) " · scope " (op.scope) } @else { "Type to search, or browse the catalog below." }
                        }
                    }
                }
            }
            @match kind {
                "highlevel" => {
                    (catalog_browser(p, "action"))
                    @let params = s["params"].as_object().cloned().unwrap_or_default();
                    @let plist = format!("params-{}", dom("p"));
                    @if let Some(op) = op {
                        datalist id=(plist) { @for prm in op.params { option value=(prm.name) { (if prm.required { "required" } else { "optional" }) } } }
                        p.small {
                            "Parameters: "
                            @for prm in op.params { span.mono { (prm.name) } @if prm.required && prm.name != "locationId" { "*" } " " }
                            span.muted { "(* required; locationId is filled from the flow or connection)" }
                        }
                    }
                    table.params {
                        thead { tr { th scope="col" { "Parameter" } th scope="col" { "Value (a template, a literal or JSON)" } th scope="col" { span.muted { "Actions" } } } }
                        tbody {
                            @for (j, (k, v)) in params.iter().enumerate() {
                                tr {
                                    td {
                                        input id=(dom(&format!("p.{j}.k"))) type="text" name=(f(&format!("p.{j}.k"))) value=(k) list=(plist) aria-label=(format!("Parameter {} name", j + 1));
                                    }
                                    td {
                                        input id=(dom(&format!("p.{j}.v"))) type="text" name=(f(&format!("p.{j}.v"))) value=(untyped(v)) list="fields" aria-label=(format!("Value of {k}"));
                                    }
                                    td.actions {
                                        button.small.secondary type="submit" name="field" value=(f(&format!("p.{j}.v")))
                                            hx-post="/builder/preview" hx-target="#preview-out" aria-label=(format!("Preview the value of {k}")) { "Preview" }
                                        button.small.danger type="submit" name="op" value=(format!("delparam:{p}:{k}"))
                                            hx-post="/builder/render" hx-target="#builder" hx-swap="outerHTML" aria-label=(format!("Remove parameter {k}")) { "×" }
                                    }
                                }
                            }
                        }
                    }
                    button.small.secondary type="submit" name="op" value=(format!("addparam:{p}"))
                        hx-post="/builder/render" hx-target="#builder" hx-swap="outerHTML" { "+ Parameter" }
                    details {
                        summary.small { "Connection (optional)" }
                        div {
                            label for=(dom("connection")) { "Connection instead of the flow's" }
                            select id=(dom("connection")) name=(f("connection")) {
                                option value="" { "(the flow's)" }
                                @for c in &ctx.connections { option value=(c) selected[get("connection") == *c] { (c) } }
                                @if !get("connection").is_empty() && !ctx.connections.contains(&get("connection")) {
                                    option value=(get("connection")) selected { (get("connection")) " (not configured on this server)" }
                                }
                            }
                        }
                    }
                }
                "http" => {
                    div.row {
                        div {
                            label for=(dom("method")) { "Method" }
                            select id=(dom("method")) name=(f("method")) {
                                @for m in ["POST", "PUT", "PATCH", "GET", "DELETE"] { option value=(m) selected[s["method"].as_str().unwrap_or("POST") == m] { (m) } }
                            }
                        }
                        div {
                            label for=(dom("connection")) { "App connection" }
                            select id=(dom("connection")) name=(f("connection")) {
                                option value="" { "(none: an absolute URL)" }
                                @for c in &ctx.app_connections { option value=(c) selected[get("connection") == *c] { (c) } }
                                @if !get("connection").is_empty() && !ctx.app_connections.contains(&get("connection")) {
                                    option value=(get("connection")) selected { (get("connection")) " (not configured on this server)" }
                                }
                            }
                        }
                        (input_text(&f("url"), "URL or path", &get("url"), Some("A path is joined to the app connection's base URL."), Some("fields")))
                    }
                    div {
                        label for=(dom("body")) { "JSON body (templates inside are rendered)" }
                        textarea id=(dom("body")) name=(f("body")) rows="5" { (s.get("body").map(|b| serde_json::to_string_pretty(b).unwrap_or_default()).unwrap_or_default()) }
                    }
                    div.actions {
                        button.small.secondary type="submit" name="field" value=(f("body"))
                            hx-post="/builder/preview" hx-target="#preview-out" { "Preview the body" }
                    }
                    details {
                        summary.small { "Headers (optional, JSON object)" }
                        textarea id=(dom("headers")) name=(f("headers")) rows="2" aria-label="Headers" { (s.get("headers").map(|h| h.to_string()).unwrap_or_default()) }
                    }
                }
                "find_contact" => {
                    div.row {
                        (input_text(&f("email"), "Email", &get("email"), Some("Look the contact up by this email."), Some("fields")))
                        (input_text(&f("phone"), "Phone (optional)", &get("phone"), None, Some("fields")))
                    }
                    label.inline { input type="checkbox" name=(f("required")) checked[s["required"] == json!(true)]; "No such contact ends the run as skipped" }
                    div.actions {
                        button.small.secondary type="submit" name="field" value=(f("email"))
                            hx-post="/builder/preview" hx-target="#preview-out" { "Preview the email" }
                    }
                }
                "filter" => {
                    (input_text(&f("condition"), "Condition", &get("condition"), Some("The run ends as skipped when false, e.g. event.tag == 'vip'."), Some("fields")))
                }
                "for_each" => {
                    (input_text(&f("items"), "Items", &get("items"), Some("A list, e.g. {{ event.tags }}; nested steps see each element as item."), Some("fields")))
                    div.actions {
                        button.small.secondary type="submit" name="field" value=(f("items"))
                            hx-post="/builder/preview" hx-target="#preview-out" { "Preview the items" }
                    }
                    (render_steps(ctx, s["steps"].as_array().map_or(&[][..], Vec::as_slice), &format!("{p}s."), true))
                }
                _ => {}
            }
        }
    }
}

fn render_builder(
    state: &ServerState,
    ctx: &Ctx<'_>,
    b: &Builder,
    message: Option<&Flash>,
) -> Markup {
    let (toml_text, diags) = diagnostics(state, b);
    let flow = &b.flow;
    let s = |k: &str| flow[k].as_str().unwrap_or_default().to_owned();
    let flow_id = s("id");
    let suggestions = field_suggestions(ctx, flow);
    let test_available = crate::gallery::find(&flow_id).is_some()
        || b.orig
            .as_deref()
            .is_some_and(|o| crate::api::flows::behaviour_test(state, o).is_some());
    let all_ops: Vec<OperationInfo> = operations::OPERATIONS
        .iter()
        .filter(|o| !o.deprecated)
        .map(OperationInfo::of)
        .collect();
    html! {
        form #builder method="post" action="/builder/save" {
            (csrf(ctx.who))
            // Enter in a text field re-checks the flow (never saves nor edits it).
            button type="submit" name="op" value="check" hx-post="/builder/render" hx-target="#builder" hx-swap="outerHTML"
                tabindex="-1" aria-hidden="true" style="position:absolute;left:-9999px;width:1px;height:1px" { "Check" }
            @if let Some(o) = &b.orig { input type="hidden" name="orig" value=(o); }
            datalist #fields { @for (p, v) in &suggestions { option value=(p) { (v) } } }
            datalist #ops-all { @for o in &all_ops { option value=(o.id) { (o.category_label) " · " (o.name) } } }
            datalist #ops-trigger { @for o in all_ops.iter().filter(|o| o.kind == "trigger") { option value=(o.id) { (o.category_label) " · " (o.name) } } }
            @if let Some(m) = message { (flash(m)) }
            div.grid2 {
                div {
                    fieldset.panel {
                        legend { h2 style="margin:0" { "Flow" } }
                        div.row {
                            (input_text("f.id", "Flow id", &flow_id, Some("Letters, digits, - and _. Runs and the webhook URL use it."), None))
                            (input_text("f.name", "Name", &s("name"), None, None))
                        }
                        (input_text("f.description", "Description", &s("description"), None, None))
                        div.row {
                            div {
                                label for="f-connection" { "HighLevel connection" }
                                select #f-connection name="f.connection" {
                                    @for c in &ctx.connections { option value=(c) selected[s("connection") == *c || (s("connection").is_empty() && c == "default")] { (c) } }
                                    @if !s("connection").is_empty() && !ctx.connections.contains(&s("connection")) { option value=(s("connection")) selected { (s("connection")) " (not configured)" } }
                                }
                            }
                            (input_text("f.location_id", "Location id (optional)", &s("location_id"), Some("Default: the connection's location."), Some("fields")))
                            div.narrow { label.inline { input type="checkbox" name="f.enabled" checked[flow["enabled"] != json!(false)]; "Enabled" } }
                        }
                    }
                    (render_trigger(ctx, &flow["trigger"], &flow_id))
                    fieldset.panel {
                        legend { h2 style="margin:0" { "2. Filter (optional)" } }
                        (input_text("f.filter", "Only run when", &s("filter"), Some("A condition on the event, e.g. event.type in ['tag.added', 'tag.removed']. Empty: every event."), None))
                    }
                    fieldset.panel {
                        legend { h2 style="margin:0" { "3. Steps" } }
                        p.hint { "Run in order; each step's output is available to later steps. Map fields by typing {{ or picking from the suggestions." }
                        (render_steps(ctx, flow["steps"].as_array().map_or(&[][..], Vec::as_slice), "s.", false))
                    }
                    details.panel {
                        summary { "Retries" }
                        div.row {
                            div { label for="r-max" { "Attempts in all" } input #r-max type="number" min="1" max="100" name="r.max_attempts" value=(flow["retry"]["max_attempts"].as_u64().unwrap_or(8)); }
                            div { label for="r-base" { "First delay (ms)" } input #r-base type="number" min="0" name="r.base_delay_ms" value=(flow["retry"]["base_delay_ms"].as_u64().unwrap_or(1000)); }
                            div { label for="r-maxd" { "Longest delay (ms)" } input #r-maxd type="number" min="0" name="r.max_delay_ms" value=(flow["retry"]["max_delay_ms"].as_u64().unwrap_or(3_600_000)); }
                        }
                    }
                }
                div.side {
                    section.panel aria-labelledby="check-h" {
                        h2 #check-h { "Check" }
                        @if diags.is_empty() {
                            p role="status" { span.badge.s-succeeded { "valid" } " The flow compiles." }
                        } @else {
                            p role="status" { span.badge.s-dead { (diags.len()) " problem(s)" } }
                            @for d in &diags {
                                div.diag { span.where { "line " (d.line) ":" (d.col) } " " (d.message) @if let Some(h) = &d.hint { br; span.small.muted { "hint: " (h) } } }
                            }
                        }
                        div.actions {
                            button type="submit" name="op" value="save" { "Save flow" }
                            button.secondary type="submit" name="op" value="check"
                                hx-post="/builder/render" hx-target="#builder" hx-swap="outerHTML" { "Check again" }
                        }
                    }
                    section.panel aria-labelledby="sample-h" {
                        h2 #sample-h { "Sample event" }
                        label for="sample" { "The event (JSON) that previews and tests use" }
                        textarea #sample name="sample" rows="8" { (b.sample) }
                        @if let Some(e) = &ctx.sample_error { p.diag role="alert" { (e) } }
                        div.actions {
                            button.small.secondary type="submit" name="op" value="check"
                                hx-post="/builder/render" hx-target="#builder" hx-swap="outerHTML" { "Update the fields" }
                        }
                        details open {
                            summary { "Fields you can map" }
                            div.fields {
                                table {
                                    thead { tr { th scope="col" { "Template" } th scope="col" { "Sample value" } } }
                                    tbody { @for (p, v) in &suggestions { tr { td.mono.small { (p) } td.small { (v) } } } }
                                }
                            }
                        }
                    }
                    section.panel aria-labelledby="preview-h" {
                        h2 #preview-h { "Preview a mapping" }
                        label for="preview-template" { "Template" }
                        input #preview-template type="text" name="preview_template" list="fields" value="{{ event.email }}";
                        div.actions {
                            button.small type="submit" name="field" value="preview_template"
                                hx-post="/builder/preview" hx-target="#preview-out" { "Preview" }
                            span.spinner { "…" }
                        }
                        div #preview-out aria-live="polite" {}
                    }
                    section.panel aria-labelledby="test-h" {
                        h2 #test-h { "Test against the sandbox" }
                        p.hint { "Runs the flow on a fresh local HighLevel sandbox (nothing touches a real account) and shows each step's request and response." }
                        @if test_available {
                            label.inline { input type="radio" name="test_with" value="behaviour" checked; "its behaviour test (setup and several events)" }
                            label.inline { input type="radio" name="test_with" value="sample"; "the sample event" }
                        } @else {
                            input type="hidden" name="test_with" value="sample";
                        }
                        label.inline { input type="checkbox" name="test_demo"; "with the sandbox's demo contacts" }
                        div.actions {
                            button type="submit" name="op" value="test" hx-post="/builder/test" hx-target="#test-out" { "Run the test" }
                            span.spinner { "running…" }
                        }
                        div #test-out aria-live="polite" {}
                    }
                    details.panel {
                        summary { "The flow file (TOML)" }
                        pre { (toml_text) }
                    }
                }
            }
        }
    }
}

async fn context<'a>(state: &ServerState, who: &'a Principal, sample: &str) -> Ctx<'a> {
    let (sample, sample_error) = match serde_json::from_str::<Value>(sample) {
        Ok(v) => (v, None),
        Err(e) => (
            json!({}),
            Some(format!("The sample event is not JSON: {e}")),
        ),
    };
    let mut connections: Vec<String> = state
        .connections()
        .list()
        .await
        .into_iter()
        .filter(|c| c.kind != "app")
        .map(|c| c.name)
        .collect();
    if !connections.iter().any(|c| c == "default") {
        connections.insert(0, "default".into());
    }
    let mut app_connections: Vec<String> = state
        .engine()
        .config()
        .app_connections
        .keys()
        .cloned()
        .collect();
    app_connections.sort();
    let mut secrets: Vec<String> = state
        .engine()
        .config()
        .app_secrets
        .keys()
        .cloned()
        .collect();
    secrets.sort();
    Ctx {
        who,
        sample,
        sample_error,
        connections,
        app_connections,
        secrets,
    }
}

async fn builder_page(
    state: &ServerState,
    who: &Principal,
    b: &Builder,
    message: Option<Flash>,
) -> Response {
    let ctx = context(state, who, &b.sample).await;
    let title = match &b.orig {
        Some(id) => format!("Edit flow {id}"),
        None => "New flow".to_owned(),
    };
    let body = html! {
        h1 { (title) }
        p.lead { "Choose a trigger, add steps, map fields, preview, test against the sandbox, save. The result is an ordinary flow file." }
        (render_builder(state, &ctx, b, message.as_ref()))
    };
    respond(page(&title, Some(who), "/flows", body))
}

// ---------------------------------------------------------------------------------------
// Handlers

#[derive(Debug, Default, Deserialize)]
pub(crate) struct NewQuery {
    template: Option<String>,
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".into())
}

fn flow_value_of_toml(toml_text: &str) -> Option<Value> {
    let v: toml::Value = toml::from_str(toml_text).ok()?;
    serde_json::to_value(v).ok()
}

/// `GET /flows/new[?template=…]`.
pub(crate) async fn new_flow(
    State(state): State<ServerState>,
    who: Require<perm::EditFlows>,
    Query(q): Query<NewQuery>,
) -> Response {
    let b = match q.template.as_deref().and_then(crate::gallery::find) {
        Some(t) => {
            let mut id = t.id.to_owned();
            let mut n = 2;
            while state.engine().flow(&id).is_some() {
                id = format!("{}-{n}", t.id);
                n += 1;
            }
            let mut flow = flow_value_of_toml(t.source).unwrap_or_else(|| json!({}));
            flow["id"] = json!(id);
            Builder {
                flow,
                sample: pretty(&t.sample_event()),
                orig: None,
            }
        }
        None => Builder {
            flow: json!({
                "id": "my-flow",
                "name": "My flow",
                "enabled": true,
                "trigger": { "type": "app_webhook", "secret": state.engine().config().app_secrets.keys().next().cloned().unwrap_or_else(|| "my-app".into()), "dedupe_key": "{{ event.id }}" },
                "steps": [],
            }),
            sample: pretty(
                &json!({ "id": "evt_1", "type": "contact.updated", "email": "ada@example.com", "tag": "vip" }),
            ),
            orig: None,
        },
    };
    let message = q.template.as_deref().map(|t| {
        Flash::Info(format!(
            "Started from the template {t}. Adjust it, test it, then save it."
        ))
    });
    builder_page(&state, who.principal(), &b, message).await
}

/// `GET /flows/{id}/edit`.
pub(crate) async fn edit_flow(
    State(state): State<ServerState>,
    who: Require<perm::EditFlows>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let Some(flow) = state.engine().flow(&id) else {
        return super::error_page(StatusCode::NOT_FOUND, &format!("unknown flow `{id}`"));
    };
    let value = serde_json::to_value(&flow.flow).unwrap_or_else(|_| json!({}));
    // The latest run's event is the best sample; else the template's; else the trigger's.
    let latest = state
        .engine()
        .store()
        .list_runs(&RunFilter {
            flow_id: Some(id.clone()),
            state: None,
            limit: 1,
        })
        .await
        .ok()
        .and_then(|r| r.first().map(|r| r.id));
    let mut sample = None;
    if let Some(run) = latest
        && let Ok(Some(d)) = state.engine().store().run_detail(run).await
    {
        sample = Some(d.event.payload);
    }
    let sample = sample
        .or_else(|| crate::gallery::find(&id).map(|t| t.sample_event()))
        .or_else(|| {
            value["trigger"]["events"][0]
                .as_str()
                .and_then(webhook_sample)
        })
        .unwrap_or_else(|| json!({}));
    let b = Builder {
        flow: value,
        sample: pretty(&sample),
        orig: Some(id),
    };
    builder_page(&state, who.principal(), &b, None).await
}

/// `POST /builder/render` (htmx): applies the button and re-renders the builder.
pub(crate) async fn render(
    State(state): State<ServerState>,
    who: Require<perm::EditFlows>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let f = FormData::new(pairs);
    let mut b = parse_form(&f);
    let message = f.get("op").and_then(|op| apply(&mut b, op));
    let ctx = context(&state, who.principal(), &b.sample).await;
    fragment(render_builder(&state, &ctx, &b, message.as_ref()))
}

/// `POST /builder/save`: saves the flow (or, for another button without JavaScript,
/// applies it and re-renders the page).
pub(crate) async fn save(
    State(state): State<ServerState>,
    who: Require<perm::EditFlows>,
    Source(source): Source,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let p = who.principal();
    let f = FormData::new(pairs);
    let mut b = parse_form(&f);
    let op = f.get("op").unwrap_or("save").to_owned();
    if op != "save" {
        let message = apply(&mut b, &op);
        return builder_page(&state, p, &b, message).await;
    }
    let text = match to_toml(&b.flow) {
        Ok(t) => t,
        Err(e) => return builder_page(&state, p, &b, Some(Flash::Bad(e))).await,
    };
    let id = b.flow["id"].as_str().unwrap_or_default().to_owned();
    let header = format!(
        "# Flow `{id}`, saved from the hlbridge web UI by {}.\n\n",
        p.name
    );
    let text = format!("{header}{text}");
    match state
        .flows()
        .save(state.engine(), &text, b.orig.as_deref())
        .await
    {
        Ok(saved) => {
            crate::api::audit(
                &state,
                p,
                if b.orig.is_some() {
                    hlbridge_engine::security::AuditAction::FlowChanged
                } else {
                    hlbridge_engine::security::AuditAction::FlowCreated
                },
                &id,
                &source,
                json!({ "file": saved.file, "via": "ui" }),
            )
            .await;
            see_other(&format!("/flows/{id}?ok=saved"))
        }
        Err(e) => {
            let e: crate::api::ApiError = e.into();
            let resp = builder_page(
                &state,
                p,
                &b,
                Some(Flash::Bad(format!("Not saved: {}", e.message))),
            )
            .await;
            (StatusCode::UNPROCESSABLE_ENTITY, resp).into_response()
        }
    }
}

/// Sample outputs of earlier steps, for previews: a found contact looks like the sample
/// contact; other steps' outputs are unknown (`{}`).
fn sample_steps(flow: &Value) -> Value {
    let mut out = Map::new();
    let mut all = Vec::new();
    collect_steps(
        flow["steps"].as_array().map_or(&[][..], Vec::as_slice),
        &mut all,
    );
    let contact = webhook_sample("ContactCreate").unwrap_or_else(|| json!({}));
    for s in all {
        let Some(id) = s["id"].as_str() else { continue };
        let v = match s["type"].as_str() {
            Some("find_contact") => contact.clone(),
            Some("http") => json!({ "status": 200, "headers": {}, "body": {} }),
            _ => json!({}),
        };
        out.insert(id.to_owned(), v);
    }
    Value::Object(out)
}

/// The `item` a field inside a `for_each` sees: the first element of its list.
fn sample_item(flow: &Value, field: &str, event: &Value, steps: &Value) -> Option<Value> {
    // `s.2.s.0.p.1.v` is inside step 2's for_each.
    let rest = field.strip_prefix("s.")?;
    let (i, tail) = rest.split_once('.')?;
    tail.strip_prefix("s.")?;
    let i: usize = i.parse().ok()?;
    let items = flow["steps"][i]["items"].as_str()?;
    let out = render_preview(&PreviewInput {
        mapping: json!(items),
        event: event.clone(),
        steps: steps.clone(),
        item: None,
        flow: None,
    });
    match out.value {
        Some(Value::Array(a)) => Some(a.first().cloned().unwrap_or(Value::Null)),
        _ => Some(Value::Null),
    }
}

/// `POST /builder/preview` (htmx): renders one field (`field`) against the sample event.
pub(crate) async fn preview(
    _who: Require<perm::EditFlows>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let f = FormData::new(pairs);
    let b = parse_form(&f);
    let field = f.get("field").unwrap_or("preview_template").to_owned();
    let text = f.get(&field).unwrap_or_default().to_owned();
    let event = match serde_json::from_str::<Value>(&b.sample) {
        Ok(v) => v,
        Err(e) => {
            return fragment(flash(&Flash::Bad(format!(
                "The sample event is not JSON: {e}"
            ))));
        }
    };
    let steps = sample_steps(&b.flow);
    let item = sample_item(&b.flow, &field, &event, &steps);
    let out = render_preview(&PreviewInput {
        mapping: typed(&text),
        event,
        steps,
        item,
        flow: b.flow["id"].as_str().map(str::to_owned),
    });
    fragment(html! {
        p.small { "Mapping " code { (text) } }
        @if out.ok {
            p { span.badge.s-succeeded { "renders to" } }
            (json_block(&out.value.unwrap_or(Value::Null)))
        } @else {
            p { span.badge.s-dead { "error" } }
            @for e in &out.errors { div.diag { (e) } }
        }
    })
}

/// `POST /builder/test` (htmx): tests the flow on a fresh sandbox.
pub(crate) async fn test(
    State(state): State<ServerState>,
    _who: Require<perm::EditFlows>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let f = FormData::new(pairs);
    let b = parse_form(&f);
    let text = match to_toml(&b.flow) {
        Ok(t) => t,
        Err(e) => return fragment(flash(&Flash::Bad(e))),
    };
    let id = b.flow["id"].as_str().unwrap_or_default().to_owned();
    let use_test = f.get("test_with") == Some("behaviour");
    let behaviour = b
        .orig
        .as_deref()
        .and_then(|o| crate::api::flows::behaviour_test(&state, o))
        .or_else(|| crate::gallery::find(&id).map(|t| t.test.to_owned()));
    let input = crate::api::flows::TestInput {
        events: if use_test {
            None
        } else {
            match serde_json::from_str::<Value>(&b.sample) {
                Ok(v) => Some(vec![v]),
                Err(e) => {
                    return fragment(flash(&Flash::Bad(format!(
                        "The sample event is not JSON: {e}"
                    ))));
                }
            }
        },
        cases: None,
        seed_demo: f.checked("test_demo"),
    };
    match crate::api::flows::run_test(&text, &input, behaviour).await {
        Ok(report) => fragment(test_report(&report)),
        Err(e) => {
            let mut msg = e.message.clone();
            if let Some(d) = e.details.as_ref().and_then(|d| d["diagnostics"].as_array()) {
                for x in d {
                    msg.push_str(&format!(
                        " · line {}: {}",
                        x["line"],
                        x["message"].as_str().unwrap_or_default()
                    ));
                }
            }
            fragment(flash(&Flash::Bad(msg)))
        }
    }
}

fn test_report(r: &crate::tester::TestReport) -> Markup {
    html! {
        p role="status" {
            @if r.passed { span.badge.s-succeeded { "passed" } } @else { span.badge.s-dead { "failed" } }
            " " (r.cases.len()) " case(s)"
        }
        @for c in &r.cases {
            section.step aria-label=(format!("Case {}", c.name)) {
                header {
                    strong { (c.name) }
                    @match c.passed { Some(true) => { span.badge.s-succeeded { "passed" } } Some(false) => { span.badge.s-dead { "failed" } } None => { span.badge.s-skipped { "ran" } } }
                }
                @for fl in &c.failures { div.diag { (fl) } }
                @for i in &c.ingress { p.small.muted { (i) } }
                @if !c.not_checked.is_empty() { p.small.muted { "Not checked here: " (c.not_checked.join(", ")) " (run hlbridge flows test)." } }
                @for (n, run) in c.runs.iter().enumerate() {
                    h3 { "Run " (n + 1) " " (state_badge(&run.state)) @if let Some(e) = &run.error { " " span.small { (e) } } }
                    @for s in &run.steps {
                        details {
                            summary {
                                span.mono { (s.id) } " "
                                @if s.error.is_some() { span.badge.s-dead { "error" } } @else { span.badge.s-succeeded { "ok" } }
                                @if let Some(ms) = s.ms { " " span.small.muted { (ms) " ms" } }
                            }
                            h3 { "Request" } (json_block(s.request.as_ref().unwrap_or(&Value::Null)))
                            @if let Some(e) = &s.error { h3 { "Error" } (json_block(e)) }
                            h3 { "Response" } (json_block(s.response.as_ref().unwrap_or(&Value::Null)))
                        }
                    }
                }
                @if !c.calls.is_empty() {
                    details {
                        summary { "HighLevel calls (" (c.calls.len()) ")" }
                        table {
                            thead { tr { th scope="col" { "Operation" } th scope="col" { "Status" } th scope="col" { "Parameters" } } }
                            tbody { @for call in &c.calls { tr { td.mono.small { (call.operation) } td { (call.status.map(|s| s.to_string()).unwrap_or_else(|| "—".into())) } td.small.mono { (call.params.to_string()) } } } }
                        }
                    }
                }
                @if !c.app_requests.is_empty() {
                    details {
                        summary { "Requests to the app (" (c.app_requests.len()) ")" }
                        @for a in &c.app_requests { p.small.mono { (a.method) " " (a.path) } (json_block(&a.body)) }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct CatalogQuery {
    #[serde(default)]
    cq: Option<String>,
    #[serde(default)]
    ccat: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    target: Option<String>,
}

/// `GET /builder/catalog` (htmx): catalog search results with "Use" buttons.
pub(crate) async fn catalog(
    _who: Require<perm::EditFlows>,
    Query(q): Query<CatalogQuery>,
) -> Response {
    fragment(catalog_list(
        q.cq.as_deref().unwrap_or_default(),
        q.ccat.as_deref().unwrap_or_default(),
        q.kind.as_deref().unwrap_or("action"),
        q.target.as_deref().unwrap_or("s.0."),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> FormData {
        FormData::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn form_round_trips_to_a_flow() {
        let f = form(&[
            ("f.id", "tags"),
            ("f.enabled", "on"),
            ("t.type", "app_webhook"),
            ("t.secret", "ecosend"),
            ("t.dedupe_key", "{{ event.id }}"),
            ("s.0.type", "find_contact"),
            ("s.0.id", "contact"),
            ("s.0.email", "{{ event.email }}"),
            ("s.0.required", "on"),
            ("s.1.type", "for_each"),
            ("s.1.id", "add"),
            ("s.1.items", "{{ [event.tag] }}"),
            ("s.1.s.0.type", "highlevel"),
            ("s.1.s.0.id", "add_tag"),
            ("s.1.s.0.operation", "contacts.tags.add"),
            ("s.1.s.0.p.0.k", "contactId"),
            ("s.1.s.0.p.0.v", "{{ steps.contact.id }}"),
            ("s.1.s.0.p.1.k", "tags"),
            ("s.1.s.0.p.1.v", "[\"{{ item }}\"]"),
            ("sample", "{}"),
        ]);
        let b = parse_form(&f);
        let text = to_toml(&b.flow).expect("toml");
        let flow: hlbridge_engine::Flow =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
        assert_eq!(flow.steps.len(), 2);
        let again = serde_json::to_value(&flow).expect("json");
        assert_eq!(
            again["steps"][1]["steps"][0]["params"]["tags"],
            json!(["{{ item }}"])
        );
        compile_source("t.toml", &text, &Default::default()).unwrap_or_else(|d| panic!("{d:?}"));
    }

    #[test]
    fn structural_edits() {
        let mut b = Builder {
            flow: json!({ "id": "x", "trigger": { "type": "schedule", "cron": "@hourly" }, "steps": [] }),
            sample: "{}".into(),
            orig: None,
        };
        apply(&mut b, "add::for_each");
        apply(&mut b, "add:s.0.:highlevel");
        assert_eq!(b.flow["steps"][0]["steps"][0]["type"], "highlevel");
        apply(&mut b, "pick:s.0.s.0.:contacts.tags.add");
        assert_eq!(
            b.flow["steps"][0]["steps"][0]["operation"],
            "contacts.tags.add"
        );
        assert!(b.flow["steps"][0]["steps"][0]["params"]["contactId"].is_string());
        apply(&mut b, "add::filter");
        apply(&mut b, "up:s.1.");
        assert_eq!(b.flow["steps"][0]["type"], "filter");
        apply(&mut b, "remove:s.0.");
        assert_eq!(b.flow["steps"].as_array().map(Vec::len), Some(1));
        assert_eq!(typed("[1]"), json!([1]));
        assert_eq!(typed("\"5551234\""), json!("5551234"));
        assert_eq!(untyped(&json!("5551234")), "\"5551234\"");
        assert_eq!(untyped(&json!("{{ item }}")), "{{ item }}");
        assert_eq!(untyped(&json!("a\nb")), "\"a\\nb\"");
        assert_eq!(typed(&untyped(&json!("a\nb"))), json!("a\nb"));
        assert_eq!(typed("{{ event.x }}"), json!("{{ event.x }}"));
    }
}
