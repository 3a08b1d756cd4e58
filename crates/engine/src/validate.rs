//! Compiling flow files: parse, type-check, resolve operations, compile every template, and
//! report **all** problems at once as [`Diagnostic`]s with file, line and column.
//!
//! Checks: TOML syntax; unknown fields and wrong types; duplicate step ids; unknown
//! operation ids (with the nearest ids as a hint); parameters the operation does not take;
//! required parameters not mapped (`locationId` counts as provided: the engine fills it
//! from the flow's `location_id` or the connection); a poll trigger on an operation that is
//! not a list (trigger) operation; a poll interval outside 1–15 minutes; cron syntax and
//! time zone; template syntax, undefined variables and references to steps that do not
//! exist or run later (see [`crate::template`] for the variables); optionally, with a
//! [`ValidationContext`], connections that do not exist or lack an operation's scope.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::str::FromStr;

use hlbridge_highlevel::operations::{self, Kind, Operation};
use serde::Deserialize;
use serde::de::IntoDeserializer;
use serde_json::Value;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::flow::{Flow, PollTrigger, Step, Trigger};
use crate::template::{self, Compiler, Mapping, Scope, Templates};

/// One problem in a flow file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// The file as given (or a name for in-memory sources).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.line, self.col, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// What the engine knows about its connections, for checks that need configuration.
#[derive(Debug, Clone, Default)]
pub struct ValidationContext {
    /// HighLevel connections by name, with the scopes each was granted (`None`: unknown,
    /// not checked). When `None` altogether, connection names are not checked.
    pub connections: Option<HashMap<String, Option<Vec<String>>>>,
    /// Names of app connections (for `http` steps). When `None`, not checked.
    pub app_connections: Option<HashSet<String>>,
}

/// A flow ready to run: its definition plus resolved operations and compiled templates.
pub struct CompiledFlow {
    /// The definition as written.
    pub flow: Flow,
    /// The file it came from, if any.
    pub file: Option<String>,
    pub(crate) templates: Templates,
    pub(crate) filter: Option<Mapping>,
    pub(crate) location_id: Option<Mapping>,
    pub(crate) trigger: CompiledTrigger,
    pub(crate) steps: Vec<CompiledStep>,
}

impl fmt::Debug for CompiledFlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledFlow")
            .field("id", &self.flow.id)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl CompiledFlow {
    /// The flow's id.
    pub fn id(&self) -> &str {
        &self.flow.id
    }
}

/// A compiled trigger.
pub(crate) enum CompiledTrigger {
    Poll(CompiledPoll),
    HighlevelWebhook {
        events: Vec<String>,
        backfill: Option<CompiledPoll>,
    },
    AppWebhook {
        dedupe_key: Option<Mapping>,
    },
    Schedule {
        cron: Box<croner::Cron>,
        zone: Zone,
    },
}

/// A schedule's time zone: a fixed offset, or an IANA zone whose daylight-saving changes
/// the schedule follows (`0 9 * * *` in `Europe/Paris` fires at 09:00 Paris time all year).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zone {
    /// `UTC` or an offset such as `+02:00`.
    Fixed(chrono::FixedOffset),
    /// An IANA zone such as `America/Chicago`.
    Named(chrono_tz::Tz),
}

/// A compiled poll (trigger or webhook backfill).
pub(crate) struct CompiledPoll {
    pub(crate) op: &'static Operation,
    pub(crate) params: Mapping,
    pub(crate) config: PollTrigger,
}

/// A compiled step.
pub(crate) enum CompiledStep {
    Highlevel {
        id: String,
        op: &'static Operation,
        connection: Option<String>,
        params: Mapping,
        custom: Vec<(String, Mapping)>,
    },
    Http {
        id: String,
        method: crate::flow::HttpMethod,
        url: Mapping,
        headers: Mapping,
        body: Option<Mapping>,
        connection: Option<String>,
    },
    FindContact {
        id: String,
        email: Option<Mapping>,
        phone: Option<Mapping>,
        required: bool,
    },
    Filter {
        id: String,
        condition: Mapping,
    },
    ForEach {
        id: String,
        items: Mapping,
        steps: Vec<CompiledStep>,
    },
}

impl CompiledStep {
    pub(crate) fn id(&self) -> &str {
        match self {
            CompiledStep::Highlevel { id, .. }
            | CompiledStep::Http { id, .. }
            | CompiledStep::FindContact { id, .. }
            | CompiledStep::Filter { id, .. }
            | CompiledStep::ForEach { id, .. } => id,
        }
    }
}

/// Byte offsets to line and column.
struct LineIndex<'a> {
    src: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(src: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Self { src, starts }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let line = self
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let start = self.starts[line];
        let col = self
            .src
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, col + 1)
    }
}

/// One segment of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Parses `steps[1].params["custom.Name"].x` into segments.
fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
            continue;
        }
        if let Some(r) = rest.strip_prefix("[\"") {
            let end = r.find("\"]").unwrap_or(r.len());
            segs.push(Seg::Key(r[..end].to_owned()));
            rest = r.get(end + 2..).unwrap_or("");
            continue;
        }
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').unwrap_or(r.len());
            if let Ok(i) = r[..end].parse() {
                segs.push(Seg::Index(i));
            }
            rest = r.get(end + 1..).unwrap_or("");
            continue;
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        segs.push(Seg::Key(rest[..end].to_owned()));
        rest = &rest[end..];
    }
    segs
}

/// Appends a key to a path, quoting it when it is not a plain identifier.
pub(crate) fn push_key(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (plain, path.is_empty()) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{path}.{key}"),
        (false, _) => format!("{path}[\"{key}\"]"),
    }
}

/// Which span of an entry: the key or the value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Key,
    Value,
}

/// Finds the span of the entry at `path` (the deepest existing prefix).
fn span_at(root: &Spanned<DeTable<'_>>, path: &str, part: Part) -> Range<usize> {
    let mut span = root.span();
    let mut key_span = None;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    let mut array: Option<&toml::de::DeArray<'_>> = None;
    for seg in parse_path(path) {
        let found = match (&seg, table, array) {
            (Seg::Key(k), Some(t), _) => t
                .iter()
                .find(|(key, _)| key.get_ref().as_ref() == k.as_str())
                .map(|(key, v)| (Some(key.span()), v)),
            (Seg::Index(i), _, Some(a)) => a.get(*i).map(|v| (None, v)),
            _ => None,
        };
        let Some((ks, value)) = found else { break };
        span = value.span();
        key_span = ks;
        table = None;
        array = None;
        match value.get_ref() {
            DeValue::Table(t) => table = Some(t),
            DeValue::Array(a) => array = Some(a),
            _ => {}
        }
    }
    match (part, key_span) {
        (Part::Key, Some(k)) => k,
        _ => span,
    }
}

struct Ctx<'a> {
    file: &'a str,
    src: &'a str,
    lines: LineIndex<'a>,
    doc: Option<Spanned<DeTable<'a>>>,
    diags: Vec<Diagnostic>,
}

impl<'a> Ctx<'a> {
    fn at_offset(&mut self, offset: usize, message: String, hint: Option<String>) {
        let (line, col) = self.lines.position(offset);
        let d = Diagnostic {
            file: self.file.to_owned(),
            line,
            col,
            message,
            hint,
        };
        if !self.diags.contains(&d) {
            self.diags.push(d);
        }
    }

    fn span_of(&self, path: &str, part: Part) -> usize {
        self.doc
            .as_ref()
            .map_or(0, |d| span_at(d, path, part).start)
    }

    fn at(&mut self, path: &str, message: impl Into<String>, hint: Option<String>) {
        let offset = self.span_of(path, Part::Value);
        self.at_offset(offset, message.into(), hint);
    }

    fn at_key(&mut self, path: &str, message: impl Into<String>, hint: Option<String>) {
        let offset = self.span_of(path, Part::Key);
        self.at_offset(offset, message.into(), hint);
    }

    /// Position of an offset inside a string value: skips the opening quote(s).
    fn in_string(&self, path: &str, inner: usize) -> usize {
        let start = self.span_of(path, Part::Value);
        let rest = self.src.get(start..).unwrap_or("");
        let quote = if rest.starts_with("\"\"\"") || rest.starts_with("'''") {
            let q = 3;
            // A newline right after the opening delimiter is not part of the string.
            if rest[q..].starts_with('\n') {
                q + 1
            } else {
                q
            }
        } else if rest.starts_with('"') || rest.starts_with('\'') {
            1
        } else {
            0
        };
        start + quote + inner
    }

    fn template_issues(&mut self, issues: Vec<template::TemplateIssue>) {
        for issue in issues {
            let offset = self.in_string(&issue.path, issue.offset.unwrap_or(0));
            self.at_offset(offset, issue.message, issue.hint);
        }
    }

    fn de_error(&mut self, base: &str, e: &toml::de::Error) {
        let message = e.message().trim().to_owned();
        let field = |prefix: &str| {
            message
                .strip_prefix(prefix)
                .and_then(|r| r.split('`').next())
                .map(str::to_owned)
        };
        let hint = hint_for_serde(&message);
        if let Some(f) = field("unknown field `") {
            self.at_key(&push_key(base, &f), message, hint);
        } else if let Some(span) = e.span() {
            self.at_offset(span.start, message, hint);
        } else {
            self.at(base, message, hint);
        }
    }
}

fn hint_for_serde(message: &str) -> Option<String> {
    if message.starts_with("unknown variant") || message.starts_with("unknown field") {
        let expected = message.split_once("expected ").map(|(_, e)| e.to_owned())?;
        Some(format!("expected {expected}"))
    } else {
        None
    }
}

/// Compiles one flow file from disk.
pub fn compile_file(
    path: &Path,
    vctx: &ValidationContext,
) -> Result<CompiledFlow, Vec<Diagnostic>> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(src) => compile_source(&name, &src, vctx),
        Err(e) => Err(vec![Diagnostic {
            file: name,
            line: 1,
            col: 1,
            message: format!("cannot read the file: {e}"),
            hint: None,
        }]),
    }
}

/// Compiles several flow files (or directories: every `*.toml` inside, not recursive),
/// returning all flows or all problems, including duplicate flow ids across files.
pub fn compile_paths(
    paths: &[impl AsRef<Path>],
    vctx: &ValidationContext,
) -> Result<Vec<CompiledFlow>, Vec<Diagnostic>> {
    let mut files = Vec::new();
    let mut diags = Vec::new();
    for p in paths {
        let p = p.as_ref();
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(rd) => {
                    let mut found: Vec<_> = rd
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                        .collect();
                    found.sort();
                    files.extend(found);
                }
                Err(e) => diags.push(Diagnostic {
                    file: p.display().to_string(),
                    line: 1,
                    col: 1,
                    message: format!("cannot read the directory: {e}"),
                    hint: None,
                }),
            }
        } else {
            files.push(p.to_path_buf());
        }
    }
    let mut flows: Vec<CompiledFlow> = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for f in files {
        match compile_file(&f, vctx) {
            Ok(flow) => {
                let file = f.display().to_string();
                if let Some(first) = seen.get(flow.id()) {
                    diags.push(Diagnostic {
                        file: file.clone(),
                        line: 1,
                        col: 1,
                        message: format!("duplicate flow id `{}`", flow.id()),
                        hint: Some(format!(
                            "{first} already defines it; flow ids must be unique"
                        )),
                    });
                } else {
                    seen.insert(flow.id().to_owned(), file);
                    flows.push(flow);
                }
            }
            Err(mut d) => diags.append(&mut d),
        }
    }
    if diags.is_empty() {
        Ok(flows)
    } else {
        Err(diags)
    }
}

/// Compiles a flow from TOML text; `file` names it in diagnostics.
pub fn compile_source(
    file: &str,
    src: &str,
    vctx: &ValidationContext,
) -> Result<CompiledFlow, Vec<Diagnostic>> {
    let mut cx = Ctx {
        file,
        src,
        lines: LineIndex::new(src),
        doc: None,
        diags: Vec::new(),
    };
    let (doc, errors) = DeTable::parse_recoverable(src);
    if !errors.is_empty() {
        for e in errors {
            let offset = e.span().map_or(0, |s| s.start);
            cx.at_offset(offset, format!("TOML syntax: {}", e.message().trim()), None);
        }
        return Err(cx.diags);
    }
    cx.doc = Some(doc.clone());
    let flow = match Flow::deserialize(doc.clone().into_deserializer()) {
        Ok(flow) => flow,
        Err(e) => {
            cx.de_error("", &e);
            typed_errors_by_part(&mut cx, &doc);
            cx.diags.sort_by_key(|d| (d.line, d.col));
            return Err(cx.diags);
        }
    };
    let compiled = check_flow(&mut cx, flow, vctx);
    if cx.diags.is_empty() {
        compiled.ok_or_else(Vec::new)
    } else {
        cx.diags.sort_by_key(|d| (d.line, d.col));
        Err(cx.diags)
    }
}

/// After a failed deserialization, deserializes the trigger and each step on their own so
/// every broken part is reported, not only the first.
fn typed_errors_by_part(cx: &mut Ctx<'_>, doc: &Spanned<DeTable<'_>>) {
    for (key, value) in doc.get_ref().iter() {
        match key.get_ref().as_ref() {
            "trigger" => {
                if let Err(e) = Trigger::deserialize(value.clone().into_deserializer()) {
                    cx.de_error("trigger", &e);
                }
            }
            "steps" => {
                if let DeValue::Array(steps) = value.get_ref() {
                    for (i, step) in steps.iter().enumerate() {
                        if let Err(e) = Step::deserialize(step.clone().into_deserializer()) {
                            cx.de_error(&format!("steps[{i}]"), &e);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn is_list_operation(op: &Operation) -> bool {
    op.kind == Kind::Trigger && (op.pagination.is_some() || op.items_key.is_some())
}

fn lookup_operation(cx: &mut Ctx<'_>, path: &str, id: &str) -> Option<&'static Operation> {
    let op = operations::find(id);
    if op.is_none() {
        let near = operations::suggest(id, 3);
        let hint = if near.is_empty() {
            "run `hlbridge catalog` to list the operations".to_owned()
        } else {
            format!(
                "did you mean {}?",
                near.iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        cx.at(path, format!("unknown operation `{id}`"), Some(hint));
    }
    op
}

/// Checks parameter names and required parameters of `op` against `params`.
fn check_params(
    cx: &mut Ctx<'_>,
    path: &str,
    op_path: &str,
    op: &Operation,
    params: &serde_json::Map<String, Value>,
) {
    let params_path = push_key(path, "params");
    for name in params.keys() {
        if name.starts_with("custom.") {
            if op.param("customFields").is_none() {
                cx.at_key(
                    &push_key(&params_path, name),
                    format!("operation `{}` takes no custom fields", op.id),
                    None,
                );
            }
            continue;
        }
        if op.param(name).is_none() {
            let near = op
                .params
                .iter()
                .map(|p| (strsim::jaro_winkler(name, p.name), p.name))
                .filter(|(s, _)| *s > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, n)| n);
            let hint = match near {
                Some(n) => format!("did you mean `{n}`?"),
                None => format!(
                    "`{}` takes: {}",
                    op.id,
                    op.params
                        .iter()
                        .map(|p| p.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            cx.at_key(
                &push_key(&params_path, name),
                format!("operation `{}` has no parameter `{name}`", op.id),
                Some(hint),
            );
        }
    }
    let missing: Vec<&str> = op
        .required_params()
        .map(|p| p.name)
        .filter(|n| *n != "locationId" && !params.contains_key(*n))
        .filter(|n| !(*n == "customFields" && params.keys().any(|k| k.starts_with("custom."))))
        .collect();
    if !missing.is_empty() {
        let at = if params.is_empty() {
            op_path.to_owned()
        } else {
            params_path
        };
        cx.at(
            &at,
            format!(
                "operation `{}` requires {} not mapped: {}",
                op.id,
                if missing.len() == 1 {
                    "a parameter"
                } else {
                    "parameters"
                },
                missing
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(format!(
                "add them under `params`, e.g. `{} = \"{{{{ event.… }}}}\"`",
                missing[0]
            )),
        );
    }
}

fn check_connection(
    cx: &mut Ctx<'_>,
    path: &str,
    connection: &str,
    op: &Operation,
    vctx: &ValidationContext,
) {
    let Some(conns) = &vctx.connections else {
        return;
    };
    match conns.get(connection) {
        None => {
            let mut names: Vec<_> = conns.keys().map(String::as_str).collect();
            names.sort_unstable();
            cx.at(
                path,
                format!("connection `{connection}` is not configured"),
                Some(format!("configured connections: {}", names.join(", "))),
            );
        }
        Some(Some(scopes)) if !scopes.iter().any(|s| s == op.scope) => cx.at(
            path,
            format!(
                "connection `{connection}` lacks the scope `{}` that `{}` requires",
                op.scope, op.id
            ),
            Some("reconnect with that scope, or use another connection".into()),
        ),
        Some(_) => {}
    }
}

fn check_poll(
    cx: &mut Ctx<'_>,
    comp: &mut Compiler,
    path: &str,
    poll: &PollTrigger,
    connection: &str,
    vctx: &ValidationContext,
) -> Option<CompiledPoll> {
    let op_path = push_key(path, "operation");
    let op = lookup_operation(cx, &op_path, &poll.operation);
    if !(1..=15).contains(&poll.interval_minutes) {
        cx.at(
            &push_key(path, "interval_minutes"),
            format!(
                "poll interval {} min is outside 1–15 minutes",
                poll.interval_minutes
            ),
            Some("HighLevel pacing allows polling every 1 to 15 minutes".into()),
        );
    }
    let scope = Scope {
        roots: vec!["flow"],
        ..Scope::default()
    };
    let params = comp.compile_value(
        &push_key(path, "params"),
        &Value::Object(poll.params.clone()),
        &scope,
    );
    let op = op?;
    if !is_list_operation(op) {
        let near: Vec<_> = operations::OPERATIONS
            .iter()
            .filter(|o| is_list_operation(o) && o.id.split('.').next() == op.id.split('.').next())
            .map(|o| format!("`{}`", o.id))
            .take(4)
            .collect();
        cx.at(
            &op_path,
            format!(
                "`{}` is not a list (trigger) operation and cannot be polled",
                op.id
            ),
            (!near.is_empty()).then(|| format!("list operations nearby: {}", near.join(", "))),
        );
    }
    check_params(cx, path, &op_path, op, &poll.params);
    check_connection(cx, &op_path, connection, op, vctx);
    Some(CompiledPoll {
        op,
        params,
        config: poll.clone(),
    })
}

/// Parses a schedule's time zone: `UTC`/`Z` or a fixed offset `±HH:MM`.
pub(crate) fn parse_zone(tz: Option<&str>) -> Result<Zone, String> {
    let utc = chrono::FixedOffset::east_opt(0).ok_or("offset")?;
    let Some(tz) = tz.map(str::trim) else {
        return Ok(Zone::Fixed(utc));
    };
    if tz.eq_ignore_ascii_case("utc") || tz == "Z" || tz.is_empty() {
        return Ok(Zone::Fixed(utc));
    }
    let (sign, rest) = match tz.as_bytes().first() {
        Some(b'+') => (1, &tz[1..]),
        Some(b'-') => (-1, &tz[1..]),
        _ => {
            return tz
                .parse::<chrono_tz::Tz>()
                .map(Zone::Named)
                .map_err(|_| format!("unknown time zone `{tz}`"));
        }
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let (Ok(h), Ok(m)) = (h.parse::<i32>(), m.parse::<i32>()) else {
        return Err(format!("`{tz}` is not a UTC offset"));
    };
    if h > 14 || m > 59 {
        return Err(format!("`{tz}` is not a UTC offset"));
    }
    chrono::FixedOffset::east_opt(sign * (h * 3600 + m * 60))
        .map(Zone::Fixed)
        .ok_or_else(|| format!("`{tz}` is not a UTC offset"))
}

fn check_flow(cx: &mut Ctx<'_>, flow: Flow, vctx: &ValidationContext) -> Option<CompiledFlow> {
    if flow.id.is_empty()
        || !flow
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        cx.at(
            "id",
            format!(
                "flow id `{}` must be non-empty letters, digits, `-` or `_`",
                flow.id
            ),
            None,
        );
    }
    let mut comp = Compiler::new();

    // Step ids: unique across the flow, nested ones included.
    let mut all_steps = Vec::new();
    collect_step_ids(
        cx,
        &flow.steps,
        "steps",
        &mut all_steps,
        &mut HashSet::new(),
    );

    let header_scope = Scope {
        roots: vec!["event", "trigger", "flow"],
        steps: vec![],
        all_steps: all_steps.clone(),
    };
    let location_id = flow
        .location_id
        .as_ref()
        .map(|l| comp.compile_str("location_id", l, &header_scope));
    let filter = flow
        .filter
        .as_ref()
        .map(|f| comp.compile_condition("filter", f, &header_scope));

    let trigger = match &flow.trigger {
        Trigger::HighlevelPoll(p) => {
            check_poll(cx, &mut comp, "trigger", p, &flow.connection, vctx)
                .map(CompiledTrigger::Poll)
        }
        Trigger::HighlevelWebhook(w) => {
            if w.events.is_empty() {
                cx.at(
                    "trigger.events",
                    "a HighLevel webhook trigger needs at least one event type",
                    Some("e.g. `events = [\"ContactCreate\"]`".into()),
                );
            }
            let backfill = match &w.backfill {
                Some(b) => check_poll(cx, &mut comp, "trigger.backfill", b, &flow.connection, vctx)
                    .map(Some),
                None => Some(None),
            };
            backfill.map(|backfill| CompiledTrigger::HighlevelWebhook {
                events: w.events.clone(),
                backfill,
            })
        }
        Trigger::AppWebhook(a) => {
            if a.secret.trim().is_empty() {
                cx.at(
                    "trigger.secret",
                    "an app webhook needs a secret",
                    Some("name an app secret of the engine configuration".into()),
                );
            }
            let scope = Scope {
                roots: vec!["event"],
                ..Scope::default()
            };
            let dedupe_key = a
                .dedupe_key
                .as_ref()
                .map(|d| comp.compile_str("trigger.dedupe_key", d, &scope));
            Some(CompiledTrigger::AppWebhook { dedupe_key })
        }
        Trigger::Schedule(s) => {
            let cron = match croner::Cron::from_str(&s.cron) {
                Ok(c) => Some(c),
                Err(e) => {
                    cx.at(
                        "trigger.cron",
                        format!("invalid cron pattern `{}`: {e}", s.cron),
                        Some("5 fields: minute hour day-of-month month day-of-week, e.g. `*/15 * * * *`".into()),
                    );
                    None
                }
            };
            let zone = match parse_zone(s.timezone.as_deref()) {
                Ok(z) => Some(z),
                Err(e) => {
                    cx.at(
                        "trigger.timezone",
                        e,
                        Some(
                            "an IANA name such as `Europe/Paris` or `America/New_York`, `UTC`, \
                             or a fixed offset such as `+02:00`"
                                .into(),
                        ),
                    );
                    None
                }
            };
            match (cron, zone) {
                (Some(cron), Some(zone)) => Some(CompiledTrigger::Schedule {
                    cron: Box::new(cron),
                    zone,
                }),
                _ => None,
            }
        }
    };

    let scope = Scope {
        roots: template::ROOTS.to_vec(),
        steps: Vec::new(),
        all_steps,
    };
    let steps = compile_steps(cx, &mut comp, &flow, &flow.steps, "steps", scope, vctx);
    let (templates, issues) = comp.finish();
    cx.template_issues(issues);
    if !cx.diags.is_empty() {
        return None;
    }
    Some(CompiledFlow {
        flow,
        file: Some(cx.file.to_owned()),
        templates,
        filter,
        location_id,
        trigger: trigger?,
        steps,
    })
}

fn collect_step_ids(
    cx: &mut Ctx<'_>,
    steps: &[Step],
    path: &str,
    out: &mut Vec<String>,
    seen: &mut HashSet<String>,
) {
    for (i, step) in steps.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let id = step.id();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            cx.at(
                &push_key(&p, "id"),
                format!("step id `{id}` must be non-empty letters, digits or `_`"),
                Some("templates refer to it as `steps.<id>`".into()),
            );
        }
        if !seen.insert(id.to_owned()) {
            cx.at(
                &push_key(&p, "id"),
                format!("duplicate step id `{id}`"),
                None,
            );
        }
        out.push(id.to_owned());
        if let Step::ForEach(f) = step {
            collect_step_ids(cx, &f.steps, &push_key(&p, "steps"), out, seen);
        }
    }
}

fn compile_steps(
    cx: &mut Ctx<'_>,
    comp: &mut Compiler,
    flow: &Flow,
    steps: &[Step],
    path: &str,
    mut scope: Scope,
    vctx: &ValidationContext,
) -> Vec<CompiledStep> {
    let mut out = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let compiled = match step {
            Step::Highlevel(s) => {
                let op_path = push_key(&p, "operation");
                let op = lookup_operation(cx, &op_path, &s.operation);
                let (plain, custom) = template::split_custom(&s.params);
                let params_path = push_key(&p, "params");
                let params = Mapping::Object(
                    plain
                        .into_iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                comp.compile_value(&push_key(&params_path, k), v, &scope),
                            )
                        })
                        .collect(),
                );
                let custom = custom
                    .into_iter()
                    .map(|(name, v)| {
                        let key = format!("custom.{name}");
                        (
                            name.to_owned(),
                            comp.compile_value(&push_key(&params_path, &key), v, &scope),
                        )
                    })
                    .collect();
                if let Some(op) = op {
                    check_params(cx, &p, &op_path, op, &s.params);
                    let conn = s.connection.as_deref().unwrap_or(&flow.connection);
                    check_connection(cx, &op_path, conn, op, vctx);
                }
                op.map(|op| CompiledStep::Highlevel {
                    id: s.id.clone(),
                    op,
                    connection: s.connection.clone(),
                    params,
                    custom,
                })
            }
            Step::Http(s) => {
                if let (Some(conn), Some(apps)) = (&s.connection, &vctx.app_connections)
                    && !apps.contains(conn)
                {
                    cx.at(
                        &push_key(&p, "connection"),
                        format!("app connection `{conn}` is not configured"),
                        None,
                    );
                }
                if s.connection.is_none()
                    && !template::is_template(&s.url)
                    && url::Url::parse(&s.url).is_err()
                {
                    cx.at(
                        &push_key(&p, "url"),
                        format!("`{}` is not an absolute URL", s.url),
                        Some("write `https://…`, or name an app connection whose base URL it is relative to".into()),
                    );
                }
                Some(CompiledStep::Http {
                    id: s.id.clone(),
                    method: s.method,
                    url: comp.compile_str(&push_key(&p, "url"), &s.url, &scope),
                    headers: comp.compile_value(
                        &push_key(&p, "headers"),
                        &Value::Object(s.headers.clone()),
                        &scope,
                    ),
                    body: s
                        .body
                        .as_ref()
                        .map(|b| comp.compile_value(&push_key(&p, "body"), b, &scope)),
                    connection: s.connection.clone(),
                })
            }
            Step::FindContact(s) => {
                if s.email.is_none() && s.phone.is_none() {
                    cx.at(&p, "find_contact needs `email` or `phone`", None);
                }
                if let Some(op) = operations::find("contacts.find_duplicate") {
                    check_connection(cx, &p, &flow.connection, op, vctx);
                }
                Some(CompiledStep::FindContact {
                    id: s.id.clone(),
                    email: s
                        .email
                        .as_ref()
                        .map(|e| comp.compile_str(&push_key(&p, "email"), e, &scope)),
                    phone: s
                        .phone
                        .as_ref()
                        .map(|e| comp.compile_str(&push_key(&p, "phone"), e, &scope)),
                    required: s.required,
                })
            }
            Step::Filter(s) => Some(CompiledStep::Filter {
                id: s.id.clone(),
                condition: comp.compile_condition(&push_key(&p, "condition"), &s.condition, &scope),
            }),
            Step::ForEach(s) => {
                let items = comp.compile_str(&push_key(&p, "items"), &s.items, &scope);
                let mut inner = scope.clone();
                for r in template::LOOP_ROOTS {
                    if !inner.roots.contains(r) {
                        inner.roots.push(r);
                    }
                }
                let steps = compile_steps(
                    cx,
                    comp,
                    flow,
                    &s.steps,
                    &push_key(&p, "steps"),
                    inner,
                    vctx,
                );
                Some(CompiledStep::ForEach {
                    id: s.id.clone(),
                    items,
                    steps,
                })
            }
        };
        scope.steps.push(step.id().to_owned());
        if let Some(c) = compiled {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diags(src: &str) -> Vec<Diagnostic> {
        match compile_source("flow.toml", src, &ValidationContext::default()) {
            Ok(_) => Vec::new(),
            Err(d) => d,
        }
    }

    fn show(d: &[Diagnostic]) -> String {
        d.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    const GOOD: &str = r#"id = "tags"
location_id = "loc1"

[trigger]
type = "app_webhook"
secret = "ecosend"

[[steps]]
id = "contact"
type = "find_contact"
email = "{{ event.email }}"

[[steps]]
id = "tag"
type = "highlevel"
operation = "contacts.tags.add"
params = { contactId = "{{ steps.contact.id }}", tags = ["{{ event.tag }}"] }
"#;

    #[test]
    fn a_good_flow_compiles() {
        let d = diags(GOOD);
        assert!(d.is_empty(), "{}", show(&d));
    }

    #[test]
    fn toml_syntax_errors_have_positions() {
        let d = diags("id = \"x\"\n[trigger\ntype = 1\n");
        assert!(!d.is_empty());
        assert_eq!(
            (d[0].line, d[0].file.as_str()),
            (2, "flow.toml"),
            "{}",
            show(&d)
        );
        assert!(d[0].message.starts_with("TOML syntax"), "{}", show(&d));
    }

    #[test]
    fn reports_every_error_with_position_and_hint() {
        let src = r#"id = "bad"

[trigger]
type = "highlevel_poll"
operation = "contacts.create"
interval_minutes = 30

[[steps]]
id = "a"
type = "highlevel"
operation = "contacts.tag.add"

[[steps]]
id = "b"
type = "highlevel"
operation = "contacts.tasks.create"
params = { title = "{{ evnt.title }}", dueDate = "{{ steps.c.due }}", completed = false, bogus = 1 }

[[steps]]
id = "c"
type = "filter"
condition = "{{ steps.b.id == "

[[steps]]
id = "d"
type = "highlevel"
operation = "contacts.update"
params = { contactId = "{{ steps.zzz.id }}" }
"#;
        let d = diags(src);
        let text = show(&d);
        let has = |line: usize, needle: &str| {
            d.iter()
                .any(|x| x.line == line && x.to_string().contains(needle))
        };
        assert!(has(5, "not a list (trigger) operation"), "{text}");
        assert!(has(6, "outside 1–15"), "{text}");
        assert!(has(11, "unknown operation `contacts.tag.add`"), "{text}");
        assert!(has(11, "`contacts.tags.add`"), "{text}");
        assert!(has(17, "undefined variable `evnt`"), "{text}");
        assert!(has(17, "step `c` is not available here"), "{text}");
        assert!(has(17, "has no parameter `bogus`"), "{text}");
        assert!(
            has(17, "requires a parameter not mapped: `contactId`"),
            "{text}"
        );
        assert!(has(22, "syntax error"), "{text}");
        assert!(has(28, "unknown step `zzz`"), "{text}");
        assert!(
            d.windows(2)
                .all(|w| (w[0].line, w[0].col) <= (w[1].line, w[1].col)),
            "sorted: {text}"
        );
        // Column of the undefined variable inside the string.
        let evnt = d.iter().find(|x| x.message.contains("evnt")).expect("evnt");
        assert_eq!(
            &src.lines().nth(16).unwrap_or("")[evnt.col - 1..evnt.col + 3],
            "evnt",
            "{text}"
        );
        assert!(text.contains("flow.toml:17:"), "{text}");
        assert!(text.contains("\n  hint: "), "{text}");
    }

    #[test]
    fn typed_errors_in_several_parts_are_all_reported() {
        let src = "id = \"x\"\n[trigger]\ntype = \"schedule\"\ncronn = \"* * * * *\"\n[[steps]]\nid = \"a\"\ntype = \"highlevel\"\noperation = \"contacts.get\"\nparms = {}\n[[steps]]\nid = \"b\"\ntype = \"teleport\"\n";
        let d = diags(src);
        let text = show(&d);
        assert!(
            d.iter().any(|x| x.line == 4 && x.message.contains("cronn")),
            "{text}"
        );
        assert!(
            d.iter().any(|x| x.line == 9 && x.message.contains("parms")),
            "{text}"
        );
        assert!(d.iter().any(|x| x.message.contains("teleport")), "{text}");
    }

    #[test]
    fn cron_and_timezone() {
        let src = "id = \"s\"\n[trigger]\ntype = \"schedule\"\ncron = \"61 * * * *\"\ntimezone = \"Mars/Olympus\"\n";
        let d = diags(src);
        assert!(
            d.iter()
                .any(|x| x.line == 4 && x.message.contains("invalid cron")),
            "{}",
            show(&d)
        );
        assert!(
            d.iter()
                .any(|x| x.line == 5 && x.message.contains("unknown time zone `Mars/Olympus`")),
            "{}",
            show(&d)
        );
        for tz in [
            "+02:00",
            "UTC",
            "Europe/Paris",
            "America/New_York",
            "Asia/Kolkata",
        ] {
            let ok = format!(
                "id = \"s\"\n[trigger]\ntype = \"schedule\"\ncron = \"*/5 * * * *\"\ntimezone = \"{tz}\"\n"
            );
            assert!(diags(&ok).is_empty(), "{tz}: {}", show(&diags(&ok)));
        }
    }

    #[test]
    fn location_id_counts_as_provided_and_custom_fields_are_accepted() {
        let src = r#"id = "c"
[trigger]
type = "highlevel_webhook"
events = ["ContactCreate"]
backfill = { operation = "contacts.search", interval_minutes = 5 }
[[steps]]
id = "up"
type = "highlevel"
operation = "contacts.upsert"
params = { email = "{{ event.email }}", "custom.Favourite Colour" = "{{ event.colour }}", "custom.Shoe" = "{{ nope }}" }
"#;
        let d = diags(src);
        assert_eq!(d.len(), 1, "{}", show(&d));
        assert!(d[0].message.contains("undefined variable `nope`"));
        assert_eq!(d[0].line, 10);
    }

    #[test]
    fn for_each_scopes() {
        let src = r#"id = "fe"
[trigger]
type = "app_webhook"
secret = "s"
[[steps]]
id = "each"
type = "for_each"
items = "{{ event.tags }}"
[[steps.steps]]
id = "t"
type = "highlevel"
operation = "contacts.tags.add"
params = { contactId = "{{ event.id }}", tags = ["{{ item }}"] }
[[steps]]
id = "after"
type = "filter"
condition = "steps.each | length > 0 and item"
"#;
        let d = diags(src);
        assert_eq!(d.len(), 1, "{}", show(&d));
        assert!(
            d[0].message.contains("undefined variable `item`") && d[0].line == 17,
            "{}",
            show(&d)
        );
    }

    #[test]
    fn connection_scopes() {
        let mut conns = HashMap::new();
        conns.insert(
            "default".to_owned(),
            Some(vec!["contacts.readonly".to_owned()]),
        );
        let vctx = ValidationContext {
            connections: Some(conns),
            app_connections: None,
        };
        let d = compile_source("f.toml", GOOD, &vctx).expect_err("scope");
        assert!(
            d.iter()
                .any(|x| x.message.contains("lacks the scope `contacts.write`")),
            "{}",
            show(&d)
        );
    }

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("steps[1].params[\"custom.A b\"].x"),
            vec![
                Seg::Key("steps".into()),
                Seg::Index(1),
                Seg::Key("params".into()),
                Seg::Key("custom.A b".into()),
                Seg::Key("x".into())
            ]
        );
        assert_eq!(push_key("params", "custom.A b"), "params[\"custom.A b\"]");
        let li = LineIndex::new("ab\ncé\nx");
        assert_eq!(li.position(0), (1, 1));
        assert_eq!(li.position(4), (2, 2));
        assert_eq!(li.position(7), (3, 1));
    }
}
