//! Conformance: every operation of the table, called with a request built from the spec
//! (required parameters, example bodies, ids of seeded objects), answers with a success whose
//! body validates against the spec's response schema. The spec's own bugs that we work around
//! are listed in `tests/data/conformance.json`, each with a reason and, where the spec's
//! schema is wrong, a patch of the one wrong bit.
//!
//! The consistency walks (create → read → update → read → delete → 404) are in
//! `consistency.rs`; they share the request building of this module.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use hlbridge_highlevel::operations::{Method, OPERATIONS, Operation, ParamIn};
use hlbridge_sandbox::SandboxConfig;
use hlbridge_sandbox::ratelimit::RateLimitConfig;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::harness::Env;

fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/highlevel")
}

/// The test data: how to find ids for path parameters, request overrides, and spec bugs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// Path parameter → how to pick a value: `{ "kind": doc kind, "parent": param set from the
    /// document's parent, "fields": params set from body fields, "where": body fields the
    /// document must have }`, by op id prefix (longest wins; `*` for every op).
    ids: BTreeMap<String, BTreeMap<String, IdRule>>,
    /// Values for required query parameters by name (`$location`, `$company`, `$now`, `$week`,
    /// `$unique`, `$doc:kind` expand); the spec's example is the fallback.
    query: BTreeMap<String, Value>,
    /// Per-operation extra query parameters and body fields (merged over the spec example).
    requests: BTreeMap<String, Override>,
    /// Spec bugs: the response schema is wrong or missing; each has a reason.
    spec_bugs: BTreeMap<String, SpecBug>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct IdRule {
    kind: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
    #[serde(default, rename = "where")]
    where_: BTreeMap<String, Value>,
    #[serde(default)]
    literal: Option<String>,
}

/// How the request of one operation differs from the one built from the spec alone.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Why the spec-built request is not enough (a spec bug in the request, a needed id, …).
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    query: Map<String, Value>,
    #[serde(default)]
    body: Map<String, Value>,
    /// Body fields of the spec example to leave out.
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    replace_body: bool,
}

/// A bug of the spec's response schema (or of its absence) and what the test does about it.
/// Keyed by operation id, or by several ids separated by commas when the bug sits in a
/// component they share.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecBug {
    /// What the spec says, what HighLevel really does, what the sandbox does.
    reason: String,
    /// The answer cannot be checked against a schema at all (a file download).
    #[serde(default)]
    skip_schema: bool,
    /// A JSON pointer into the answer: the part the spec's schema describes.
    #[serde(default)]
    at: Option<String>,
    /// The schema describes one item of the array answer (at `at`).
    #[serde(default)]
    each: bool,
    /// JSON pointer → the schema that replaces the value there (`null` removes it). A pointer
    /// `#/…` points into the operation's spec document and `contacts#/…` into another
    /// service's (a shared component, patched before anything is inlined); one starting with
    /// `/` into the response schema (refs inlined, before optional properties are made
    /// nullable).
    #[serde(default)]
    patch: BTreeMap<String, Value>,
    /// The response schema when the spec has none, or one that describes another object
    /// entirely: the shape HighLevel documents (may `$ref` the operation's spec, or another
    /// service's as `contacts.json#/…`).
    #[serde(default)]
    schema: Option<Value>,
}

impl Override {
    /// Sets a body field (over the spec example).
    pub fn set_body(&mut self, key: &str, value: Value) {
        self.remove.retain(|k| k != key);
        self.body.insert(key.to_string(), value);
    }
}

impl SpecBug {
    fn has_effect(&self) -> bool {
        self.skip_schema
            || self.at.is_some()
            || self.each
            || !self.patch.is_empty()
            || self.schema.is_some()
    }
}

/// Every spec bug entry that names an operation, merged.
#[derive(Default)]
pub struct Bugs<'d> {
    entries: Vec<&'d SpecBug>,
}

impl<'d> Bugs<'d> {
    fn skip_schema(&self) -> bool {
        self.entries.iter().any(|b| b.skip_schema)
    }

    fn at(&self) -> &'d str {
        self.entries
            .iter()
            .find_map(|b| b.at.as_deref())
            .unwrap_or("")
    }

    fn each(&self) -> bool {
        self.entries.iter().any(|b| b.each)
    }

    fn schema(&self) -> Option<&'d Value> {
        self.entries.iter().find_map(|b| b.schema.as_ref())
    }

    fn patches(&self) -> impl Iterator<Item = (&'d String, &'d Value)> + '_ {
        self.entries.iter().flat_map(|b| b.patch.iter())
    }
}

impl Data {
    /// The request override of an operation (none: the request built from the spec alone).
    pub fn request(&self, op_id: &str) -> Override {
        self.requests.get(op_id).cloned().unwrap_or_default()
    }

    /// The spec bug entries that name `op_id`.
    pub fn bugs(&self, op_id: &str) -> Bugs<'_> {
        self.bugs_except(op_id, None)
    }

    /// The spec bug entries that name `op_id`, but the one keyed `except`.
    fn bugs_except(&self, op_id: &str, except: Option<&str>) -> Bugs<'_> {
        Bugs {
            entries: self
                .spec_bugs
                .iter()
                .filter(|(k, _)| Some(k.as_str()) != except && bug_ops(k).any(|id| id == op_id))
                .map(|(_, b)| b)
                .collect(),
        }
    }
}

/// The operation ids of a spec bug key (`"a.get, a.list"`).
fn bug_ops(key: &str) -> impl Iterator<Item = &str> {
    key.split(',').map(str::trim)
}

pub fn load_data() -> Data {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/conformance.json"),
    )
    .expect("tests/data/conformance.json");
    serde_json::from_str(&text).expect("conformance.json parses")
}

/// Keywords whose value is one schema.
const SUBSCHEMA: &[&str] = &[
    "items",
    "additionalProperties",
    "additionalItems",
    "not",
    "contains",
    "propertyNames",
    "if",
    "then",
    "else",
];
/// Keywords whose value is a list of schemas.
const SUBSCHEMA_LISTS: &[&str] = &["allOf", "anyOf", "oneOf"];
/// Keywords whose value maps names to schemas (the names are data, not keywords).
const SUBSCHEMA_MAPS: &[&str] = &["properties", "patternProperties", "definitions"];
/// OpenAPI annotations that a JSON Schema validator should not see.
const ANNOTATIONS: &[&str] = &[
    "example",
    "examples",
    "description",
    "title",
    "default",
    "nullable",
    "readOnly",
    "writeOnly",
    "deprecated",
    "xml",
    "externalDocs",
    "discriminator",
];

/// Applies `f` to every direct subschema of a schema object.
fn each_subschema(m: &mut Map<String, Value>, f: &mut impl FnMut(&mut Value)) {
    for (k, v) in m.iter_mut() {
        let k = k.as_str();
        if SUBSCHEMA.contains(&k) {
            match v {
                Value::Array(items) => items.iter_mut().for_each(&mut *f),
                other => f(other),
            }
        } else if SUBSCHEMA_LISTS.contains(&k) {
            if let Value::Array(items) = v {
                items.iter_mut().for_each(&mut *f);
            }
        } else if SUBSCHEMA_MAPS.contains(&k)
            && let Value::Object(props) = v
        {
            props.values_mut().for_each(&mut *f);
        }
    }
}

pub struct Specs {
    apps: HashMap<String, Value>,
    common: Value,
}

impl Specs {
    pub fn load() -> Specs {
        let dir = shared_dir().join("openapi/apps");
        let mut apps = HashMap::new();
        for entry in std::fs::read_dir(&dir).expect("spec dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let name = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string();
                let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
                    .expect("json");
                apps.insert(name, v);
            }
        }
        let common = serde_json::from_str(
            &std::fs::read_to_string(shared_dir().join("openapi/common/common-schemas.json"))
                .expect("common"),
        )
        .expect("json");
        Specs { apps, common }
    }

    fn op(&self, op: &Operation) -> &Value {
        &self.apps[op.spec]["paths"][op.path][op.method.as_str().to_lowercase()]
    }

    /// The schema the answer of `op` must match: the spec's success schema (or the one a spec
    /// bug supplies), inlined, patched as the spec bugs say, optional properties nullable.
    fn response_schema(&self, op: &Operation, bugs: &Bugs<'_>) -> Result<Option<Value>, String> {
        // Copies of the spec documents that `app#/pointer` patches change.
        let mut patched: HashMap<String, Value> = HashMap::new();
        for (pointer, replacement) in bugs.patches() {
            let Some((app, p)) = pointer.split_once('#') else {
                continue;
            };
            let app = if app.is_empty() {
                op.spec
            } else {
                app.trim_end_matches(".json")
            };
            let doc = match patched.entry(app.to_string()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let original = self
                        .apps
                        .get(app)
                        .ok_or_else(|| format!("patch {pointer}: no spec {app}"))?;
                    e.insert(original.clone())
                }
            };
            patch(
                doc,
                p,
                (!replacement.is_null()).then(|| replacement.clone()),
            )
            .map_err(|e| format!("patch {pointer}: {e}"))?;
        }
        let view = SpecView {
            apps: self
                .apps
                .iter()
                .map(|(k, v)| (k.as_str(), patched.get(k).unwrap_or(v)))
                .collect(),
            common: &self.common,
        };
        let spec = view.apps[op.spec];
        let raw = match bugs.schema() {
            Some(s) => s.clone(),
            None => match spec_success_schema(spec, op) {
                Some(s) => s.clone(),
                None => return Ok(None),
            },
        };
        let mut schema = view.inline(spec, &raw, &mut Vec::new());
        for (pointer, replacement) in bugs.patches().filter(|(p, _)| !p.contains('#')) {
            // A schema is inlined like the rest; a keyword's value (a `required` list) is not.
            let replacement = match replacement {
                Value::Null => None,
                Value::Object(_) => Some(view.inline(spec, replacement, &mut Vec::new())),
                other => Some(other.clone()),
            };
            patch(&mut schema, pointer, replacement)
                .map_err(|e| format!("patch {pointer}: {e}"))?;
        }
        optional_nullable(&mut schema);
        Ok(Some(schema))
    }

    /// The example (or default, or first enum value) the spec gives a parameter.
    fn param_example(&self, op: &Operation, name: &str) -> Option<Value> {
        let p = self
            .op(op)
            .get("parameters")?
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)?;
        let s = &p["schema"];
        p.get("example")
            .or_else(|| s.get("example"))
            .or_else(|| s.get("default"))
            .or_else(|| s.pointer("/enum/0"))
            .cloned()
    }

    /// A body from the spec: every property's example (required ones at least); for an array
    /// body, a list of one such object.
    fn example_body(&self, op: &Operation) -> Value {
        let spec = &self.apps[op.spec];
        match self
            .op(op)
            .pointer("/requestBody/content/application~1json/schema")
        {
            Some(schema) => example_of(spec, schema),
            None => json!({}),
        }
    }
}

fn example_of(spec: &Value, schema: &Value) -> Value {
    let mut resolved = resolve(spec, schema);
    // `allOf: [$ref]` is how the specs say "this DTO" with a description beside it.
    if let Some(first) = resolved
        .pointer("/allOf/0")
        .filter(|_| resolved.get("properties").is_none())
    {
        resolved = resolve(spec, first);
    }
    if resolved.get("type").and_then(Value::as_str) == Some("array") {
        return json!([example_of(
            spec,
            resolved.get("items").unwrap_or(&json!({}))
        )]);
    }
    let required: Vec<&str> = resolved
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut body = Map::new();
    for (name, prop) in resolved
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let mut prop = resolve(spec, prop);
        if let Some(first) = prop
            .pointer("/allOf/0")
            .filter(|_| prop.get("properties").is_none())
        {
            prop = resolve(spec, first);
        }
        let example = prop
            .get("example")
            .cloned()
            .or_else(|| prop.get("default").cloned())
            .or_else(|| prop.get("enum").and_then(|e| e.get(0)).cloned());
        match example {
            Some(e) => {
                body.insert(name.clone(), e);
            }
            None if required.contains(&name.as_str()) => {
                body.insert(name.clone(), placeholder(spec, &prop));
            }
            None => {}
        }
    }
    Value::Object(body)
}

/// The spec documents a response schema is read from, some of them patched.
struct SpecView<'a> {
    apps: HashMap<&'a str, &'a Value>,
    common: &'a Value,
}

impl SpecView<'_> {
    /// Turns an OpenAPI schema into a plain JSON Schema: `$ref`s (local and `../common/…`)
    /// inlined, annotations dropped, `nullable` honoured, and a bare type name where a schema
    /// belongs (`"items": "string"`) read as `{ "type": "string" }`. Walks only schema
    /// positions, so a property named `description` or `enum` stays a property.
    fn inline(&self, spec: &Value, v: &Value, stack: &mut Vec<String>) -> Value {
        match v {
            Value::Bool(_) => v.clone(),
            Value::String(t) => json!({ "type": t }),
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    let (doc, pointer) = match r.split_once('#') {
                        Some(("", p)) => (spec, p),
                        Some((file, p)) if file.ends_with("common-schemas.json") => {
                            (self.common, p)
                        }
                        // `contacts.json#/…`: a schema of another service's spec (used by the
                        // schemas the test data supplies).
                        Some((file, p)) => match self.apps.get(
                            file.rsplit('/')
                                .next()
                                .unwrap_or(file)
                                .trim_end_matches(".json"),
                        ) {
                            Some(app) => (*app, p),
                            None => panic!("unsupported $ref {r}"),
                        },
                        None => panic!("unsupported $ref {r}"),
                    };
                    let key = format!("{:p}{pointer}", doc);
                    if stack.contains(&key) {
                        // A recursive schema: accept anything below the second occurrence.
                        return json!({});
                    }
                    let target = doc
                        .pointer(pointer)
                        .unwrap_or_else(|| panic!("$ref {r} does not resolve"));
                    stack.push(key);
                    let out = self.inline(doc, target, stack);
                    stack.pop();
                    return out;
                }
                let mut out: Map<String, Value> = m
                    .iter()
                    .filter(|(k, _)| !ANNOTATIONS.contains(&k.as_str()) && !k.starts_with("x-"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                each_subschema(&mut out, &mut |s| *s = self.inline(spec, s, stack));
                if m.get("nullable") == Some(&Value::Bool(true)) {
                    return json!({ "anyOf": [out, { "type": "null" }] });
                }
                Value::Object(out)
            }
            _ => json!({}),
        }
    }
}

/// The first 2xx response's JSON schema of `op` in its spec.
fn spec_success_schema<'s>(spec: &'s Value, op: &Operation) -> Option<&'s Value> {
    let responses = spec["paths"][op.path][op.method.as_str().to_lowercase()]
        .get("responses")?
        .as_object()?;
    let mut codes: Vec<&String> = responses.keys().filter(|c| c.starts_with('2')).collect();
    codes.sort();
    codes
        .into_iter()
        .find_map(|code| responses[code].pointer("/content/application~1json/schema"))
}

/// Replaces (or with `None` removes) the value at `pointer`, which must exist: a patch fixes a
/// wrong bit of the spec, so a pointer to nothing is a mistake in the test data.
fn patch(schema: &mut Value, pointer: &str, replacement: Option<Value>) -> Result<(), String> {
    let (parent, last) = pointer.rsplit_once('/').ok_or("not a JSON pointer")?;
    let last = last.replace("~1", "/").replace("~0", "~");
    let missing = || format!("the schema has nothing at {pointer}");
    match schema.pointer_mut(parent).ok_or_else(missing)? {
        Value::Object(m) => match replacement {
            Some(r) => *m.get_mut(&last).ok_or_else(missing)? = r,
            None => {
                m.remove(&last).ok_or_else(missing)?;
            }
        },
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            if i >= a.len() {
                return Err(missing());
            }
            match replacement {
                Some(r) => a[i] = r,
                None => {
                    a.remove(i);
                }
            }
        }
        _ => return Err(missing()),
    }
    Ok(())
}

/// Makes every property that its object does not list as required accept `null` (HighLevel
/// sends `null` for unset optional fields).
fn optional_nullable(v: &mut Value) {
    let Value::Object(m) = v else { return };
    each_subschema(m, &mut optional_nullable);
    let required: Vec<String> = m
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    if let Some(Value::Object(props)) = m.get_mut("properties") {
        for (name, p) in props.iter_mut() {
            if !required.contains(name) {
                *p = json!({ "anyOf": [p.clone(), { "type": "null" }] });
            }
        }
    }
}

fn resolve(spec: &Value, v: &Value) -> Value {
    let mut cur = v.clone();
    for _ in 0..10 {
        match cur.get("$ref").and_then(Value::as_str) {
            Some(r) if r.starts_with("#/") => {
                cur = spec.pointer(&r[1..]).cloned().unwrap_or(json!({}))
            }
            _ => break,
        }
    }
    cur
}

/// A value for a required property the spec gives no example for: nested objects and arrays
/// of objects are built from their own examples.
fn placeholder(spec: &Value, prop: &Value) -> Value {
    if prop.get("properties").is_some() {
        return example_of(spec, prop);
    }
    match prop.get("type").and_then(Value::as_str) {
        Some("boolean") => json!(true),
        Some("number") | Some("integer") => json!(1),
        Some("array") => match prop.get("items").map(|i| resolve(spec, i)) {
            Some(items) if items.get("properties").is_some() => json!([example_of(spec, &items)]),
            _ => json!([]),
        },
        Some("object") => json!({}),
        _ => json!("sandbox"),
    }
}

fn rule_for(data: &Data, op: &Operation) -> BTreeMap<String, IdRule> {
    // Every prefix of the op id that has rules, shortest first, so longer prefixes override.
    let mut rules = BTreeMap::new();
    let parts: Vec<&str> = op.id.split('.').collect();
    let mut keys = vec!["*".to_string()];
    for n in 1..=parts.len() {
        keys.push(parts[..n].join("."));
    }
    for k in keys {
        if let Some(r) = data.ids.get(&k) {
            for (p, rule) in r {
                rules.insert(p.clone(), rule.clone());
            }
        }
    }
    rules
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A value no other call of this test run gets: lowercase letters and digits, so it fits
/// slugs, names and the local part of an email.
pub fn unique() -> String {
    let n = UNIQUE.fetch_add(1, Ordering::SeqCst);
    format!("u{n}t{:x}", hlbridge_sandbox::now_ms() % 0xff_ffff)
}

/// Expands the placeholders of a string value: `$location`, `$company`, `$now`, `$week`
/// (epoch ms), `$now_iso`, `$week_iso`, `$tomorrow_iso`; `$unique` anywhere in a string.
pub fn expand(v: &Value, env: &Env) -> Value {
    let day = 86_400_000;
    let now = hlbridge_sandbox::now_ms();
    let iso = hlbridge_sandbox::handlers::iso;
    match v.as_str() {
        Some("$location") => json!(env.info.location_id),
        Some("$company") => json!(env.info.company_id),
        Some("$now") => json!(now),
        Some("$week") => json!(now + 7 * day),
        Some("$now_iso") => json!(iso(now)),
        Some("$week_iso") => json!(iso(now + 7 * day)),
        // Whole hours, two days ahead: inside any calendar's booking window.
        Some("$later_iso") => json!(iso((now / 3_600_000 + 48) * 3_600_000)),
        Some("$later_end_iso") => json!(iso((now / 3_600_000 + 49) * 3_600_000)),
        Some(s) if s.contains("$unique") => json!(s.replace("$unique", &unique())),
        _ => v.clone(),
    }
}

/// Picks ids for `names` (path params, and body fields that have a rule); `last` picks the
/// newest matching document (destructive calls), else the oldest. Names without a rule are an
/// error when `required`, else skipped.
fn pick_ids(
    env: &Env,
    data: &Data,
    op: &Operation,
    names: &[&str],
    required: bool,
    last: bool,
    out: &mut HashMap<String, String>,
) -> Result<(), String> {
    let rules = rule_for(data, op);
    let docs = env.sandbox.shared().docs.read();
    let loc = env.info.location_id.clone();
    // Rules that set other params from the chosen document go first.
    let mut names: Vec<&str> = names.to_vec();
    names.sort_by_key(|n| {
        rules.get(*n).map_or(1, |r| {
            if r.parent.is_some() || !r.fields.is_empty() {
                0
            } else {
                1
            }
        })
    });
    for name in names {
        if out.contains_key(name) {
            continue;
        }
        if name == "locationId" {
            out.insert(name.into(), loc.clone());
            continue;
        }
        let Some(rule) = rules.get(name) else {
            if required {
                return Err(format!("no id rule for {{{name}}}"));
            }
            continue;
        };
        if let Some(l) = &rule.literal {
            if required {
                out.insert(name.into(), l.clone());
            }
            continue;
        }
        let candidates: Vec<(&String, &hlbridge_sandbox::store::Doc)> = docs
            .iter(&rule.kind)
            .filter(|(_, d)| d.location_id.as_deref().is_none_or(|l| l == loc))
            .filter(|(_, d)| rule.parent.is_none() || d.parent_id.is_some())
            .filter(|(_, d)| {
                rule.fields
                    .values()
                    .all(|f| d.body.get(f).is_some_and(|v| !v.is_null()))
            })
            .filter(|(_, d)| {
                rule.where_
                    .iter()
                    .all(|(f, want)| d.body.pointer(f).or_else(|| d.body.get(f)) == Some(want))
            })
            .collect();
        let pick = if last {
            candidates.last()
        } else {
            candidates.first()
        };
        let (id, doc) =
            pick.ok_or_else(|| format!("no seeded document of kind {} for {{{name}}}", rule.kind))?;
        out.insert(name.into(), (*id).clone());
        if let (Some(parent), Some(pid)) = (&rule.parent, &doc.parent_id) {
            out.insert(parent.clone(), pid.clone());
        }
        for (param, field) in &rule.fields {
            if let Some(v) = doc.body.get(field) {
                out.insert(
                    param.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                );
            }
        }
    }
    Ok(())
}

fn build_path(path: &str, params: &HashMap<String, String>) -> String {
    path.split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => params.get(name).cloned().unwrap_or_default(),
                None => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// What was sent and what came back.
pub struct Exchange {
    /// Path and query as sent.
    pub path: String,
    /// The JSON body sent.
    pub sent: Option<Value>,
    /// HTTP status of the answer.
    pub status: u16,
    /// The answer (JSON, or a string for other content).
    pub body: Value,
}

/// Builds the request of `op` from the spec and the test data, sends it, and returns the
/// exchange.
pub async fn call_op(
    env: &Env,
    data: &Data,
    specs: &Specs,
    op: &'static Operation,
    destructive: bool,
) -> Result<Exchange, String> {
    let ov = data.requests.get(op.id).cloned().unwrap_or_default();
    call_with(env, data, specs, op, destructive, &ov, &HashMap::new()).await
}

/// Like [`call_op`], with the override given and some params fixed by the caller.
pub async fn call_with(
    env: &Env,
    data: &Data,
    specs: &Specs,
    op: &'static Operation,
    destructive: bool,
    ov: &Override,
    fixed: &HashMap<String, String>,
) -> Result<Exchange, String> {
    let mut params = fixed.clone();
    let path_names: Vec<&str> = op.path_params().collect();
    pick_ids(env, data, op, &path_names, true, destructive, &mut params)?;
    let query_names: Vec<&str> = op
        .params
        .iter()
        .filter(|p| p.location == ParamIn::Query && p.required && !data.query.contains_key(p.name))
        .map(|p| p.name)
        .collect();
    pick_ids(env, data, op, &query_names, false, destructive, &mut params)?;
    let mut query: Vec<(String, String)> = Vec::new();
    for p in op
        .params
        .iter()
        .filter(|p| p.location == ParamIn::Query && p.required)
    {
        if ov.query.contains_key(p.name) {
            continue;
        }
        let v = params
            .get(p.name)
            .map(|s| json!(s))
            .or_else(|| {
                data.query
                    .get(p.name)
                    .map(|v| resolve_refs_in(v, env, &params))
            })
            .or_else(|| specs.param_example(op, p.name));
        match v {
            Some(v) => query.push((
                p.name.to_string(),
                v.as_str().map_or_else(|| v.to_string(), str::to_string),
            )),
            None => return Err(format!("no value for required query parameter {}", p.name)),
        }
    }
    for (k, v) in &ov.query {
        let v = resolve_refs_in(v, env, &params);
        query.push((
            k.clone(),
            v.as_str().map_or_else(|| v.to_string(), str::to_string),
        ));
    }
    let body = if op.method == Method::Get {
        None
    } else {
        let mut body = if ov.replace_body {
            json!({})
        } else {
            specs.example_body(op)
        };
        let objects: Vec<&mut Map<String, Value>> = match &mut body {
            Value::Array(items) => items.iter_mut().filter_map(Value::as_object_mut).collect(),
            Value::Object(m) => vec![m],
            _ => Vec::new(),
        };
        for obj in objects {
            for k in &ov.remove {
                obj.remove(k);
            }
            // Ids in the example body point at HighLevel's documents: use seeded ones instead.
            let id_fields: Vec<String> = obj
                .keys()
                .filter(|k| k.ends_with("Id") && !ov.body.contains_key(*k))
                .cloned()
                .collect();
            let id_fields: Vec<&str> = id_fields.iter().map(String::as_str).collect();
            let mut body_ids = params.clone();
            pick_ids(env, data, op, &id_fields, false, false, &mut body_ids)?;
            for (k, v) in obj.iter_mut() {
                if k == "locationId" || k == "altId" {
                    *v = json!(env.info.location_id);
                } else if k == "companyId" {
                    *v = json!(env.info.company_id);
                } else if let Some(id) = body_ids.get(k) {
                    *v = json!(id);
                }
            }
            for (k, v) in &ov.body {
                obj.insert(k.clone(), resolve_refs_in(v, env, &params));
            }
        }
        let empty = body.as_object().is_some_and(Map::is_empty);
        (!empty || matches!(op.method, Method::Post | Method::Put)).then_some(body)
    };
    let mut path = build_path(op.path, &params);
    if !query.is_empty() {
        path.push('?');
        path.push_str(&serde_urlencoded::to_string(&query).unwrap_or_default());
    }
    let token = if op.token == hlbridge_highlevel::operations::TokenKind::Agency {
        env.info.agency_token.clone()
    } else {
        env.info.token.clone()
    };
    let (status, answer, _) = env
        .call_as(
            &token,
            op.method.as_str(),
            &path,
            op.version_header(),
            body.clone(),
        )
        .await;
    Ok(Exchange {
        path,
        sent: body,
        status,
        body: answer,
    })
}

/// `"$doc:kind"` → the id of the oldest document of that kind in the location
/// (`"$doc:kind:last"` the newest; `"$doc:kind/pointer"` a field of it); `"$param:name"` → a
/// path param; other strings as [`expand`] says.
pub fn resolve_refs_in(v: &Value, env: &Env, params: &HashMap<String, String>) -> Value {
    match v {
        Value::String(s) if s.starts_with("$doc:") => {
            let (kind, pointer) = match s[5..].split_once('/') {
                Some((k, p)) => (k, format!("/{p}")),
                None => (&s[5..], String::new()),
            };
            let (kind, last) = match kind.strip_suffix(":last") {
                Some(k) => (k, true),
                None => (kind, false),
            };
            let docs = env.sandbox.shared().docs.read();
            let loc = env.info.location_id.as_str();
            let mut found = docs
                .iter(kind)
                .filter(|(_, d)| d.location_id.as_deref().is_none_or(|l| l == loc));
            let doc = if last { found.last() } else { found.next() };
            match doc {
                Some((id, _)) if pointer.is_empty() => json!(id),
                Some((_, d)) => d.body.pointer(&pointer).cloned().unwrap_or(Value::Null),
                None => Value::Null,
            }
        }
        Value::String(s) if s.starts_with("$param:") => {
            params.get(&s[7..]).map_or(Value::Null, |p| json!(p))
        }
        Value::String(_) => expand(v, env),
        Value::Array(a) => {
            Value::Array(a.iter().map(|x| resolve_refs_in(x, env, params)).collect())
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), resolve_refs_in(x, env, params)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Shortens a message that quotes a whole answer.
fn short(s: &str) -> String {
    if s.len() <= 300 {
        return s.to_string();
    }
    let mut end = 300;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A validation error in a line: for an `anyOf` (the nullable wrapper of an optional property
/// among them), why its first branch failed.
fn describe(e: &jsonschema::ValidationError<'_>, prefix: &str) -> String {
    if let jsonschema::error::ValidationErrorKind::AnyOf { context } = e.kind()
        && let Some(first) = context.first().filter(|c| !c.is_empty())
    {
        return first
            .iter()
            .take(2)
            .map(|e| describe(e, prefix))
            .collect::<Vec<_>>()
            .join("; ");
    }
    let message = if e.instance().to_string().len() > 80 {
        e.masked_with("(the value)").to_string()
    } else {
        e.to_string()
    };
    format!("{} at {prefix}{}", short(&message), e.instance_path())
}

/// Checks `answer` (or the part a spec bug points at) against `schema`.
fn validate(schema: &Value, answer: &Value, bugs: &Bugs<'_>) -> Result<(), String> {
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .should_validate_formats(false)
        .build(schema)
        .map_err(|e| format!("spec schema does not compile: {}", short(&e.to_string())))?;
    let at = bugs.at();
    let part = answer.pointer(at).ok_or_else(|| {
        format!(
            "the answer has nothing at {at}: {}",
            short(&answer.to_string())
        )
    })?;
    let instances: Vec<(String, &Value)> = if bugs.each() {
        let items = part.as_array().ok_or_else(|| {
            format!(
                "the answer at {at:?} is not an array: {}",
                short(&part.to_string())
            )
        })?;
        if items.is_empty() {
            return Err(format!(
                "the answer at {at:?} is an empty array: nothing was checked"
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, x)| (format!("{at}/{i}"), x))
            .collect()
    } else {
        vec![(at.to_string(), part)]
    };
    let errors: Vec<String> = instances
        .iter()
        .flat_map(|(prefix, x)| validator.iter_errors(x).map(move |e| describe(&e, prefix)))
        .take(5)
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Calls `op` like a client would with the request from the spec and test data, and checks
/// the answer; `Ok(Some(answer))` when it was checked against a schema.
async fn check_op(
    env: &Env,
    data: &Data,
    specs: &Specs,
    op: &'static Operation,
) -> Result<Option<Value>, String> {
    let Exchange {
        path,
        sent,
        status,
        body,
    } = call_op(env, data, specs, op, op.method == Method::Delete)
        .await
        .map_err(|e| format!("could not build a request: {e}"))?;
    if !(200..300).contains(&status) {
        let sent = sent
            .map(|b| format!(" with {}", short(&b.to_string())))
            .unwrap_or_default();
        return Err(format!(
            "{} {path}{sent} answered {status}: {}",
            op.method,
            short(&body.to_string())
        ));
    }
    let bugs = data.bugs(op.id);
    if bugs.skip_schema() {
        if specs.response_schema(op, &Bugs::default())?.is_some() {
            return Err("spec_bugs skips the schema check, but the spec has a response schema: patch it instead".into());
        }
        return Ok(None);
    }
    let Some(schema) = specs.response_schema(op, &bugs)? else {
        return Err("the spec has no response schema; list it in spec_bugs with the shape HighLevel documents".into());
    };
    validate(&schema, &body, &bugs)
        .map_err(|e| format!("answer does not match the spec schema: {e}"))?;
    // A list that comes back empty has had none of its items checked.
    if let Some(key) = op.items_key {
        let pointer = if key.is_empty() {
            String::new()
        } else {
            format!("/{}", key.replace('.', "/"))
        };
        if body
            .pointer(&pointer)
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            return Err(format!(
                "the list at {pointer:?} is missing or empty, so no item was checked: seed one or pick a request that finds some ({} {path})",
                op.method
            ));
        }
    }
    Ok(Some(body))
}

/// Whether the spec bug entry `key` is still needed: some answer of its operations does not
/// match the spec's schema without it.
fn bug_needed(data: &Data, specs: &Specs, key: &str, answers: &HashMap<&str, Value>) -> bool {
    bug_ops(key).any(|id| {
        let (Some(op), Some(answer)) = (hlbridge_highlevel::operations::find(id), answers.get(id))
        else {
            return false;
        };
        let bugs = data.bugs_except(id, Some(key));
        match specs.response_schema(op, &bugs) {
            Ok(Some(schema)) => validate(&schema, answer, &bugs).is_err(),
            Ok(None) | Err(_) => true,
        }
    })
}

#[tokio::test]
async fn every_operation_answers_in_the_spec_shape() {
    let mut config = SandboxConfig::for_tests();
    config.seed_demo = true;
    config.rate_limit = RateLimitConfig {
        enabled: false,
        ..RateLimitConfig::default()
    };
    let env = Env::start(config).await;
    let data = load_data();
    let specs = Specs::load();
    for id in data
        .spec_bugs
        .keys()
        .flat_map(|k| bug_ops(k))
        .chain(data.requests.keys().map(String::as_str))
    {
        assert!(
            hlbridge_highlevel::operations::find(id).is_some(),
            "conformance.json names unknown op {id}"
        );
    }
    for (id, ov) in &data.requests {
        assert!(
            ov.reason
                .as_deref()
                .is_some_and(|r| r.split_whitespace().count() >= 6),
            "request override {id} needs a reason: why the request built from the spec is not enough"
        );
    }
    for (id, bug) in &data.spec_bugs {
        // What the spec says, what HighLevel does, what we do: a sentence or three, not a label.
        assert!(
            bug.reason.split_whitespace().count() >= 12,
            "spec bug {id} needs a real reason, not {:?}",
            bug.reason
        );
        assert!(
            bug.has_effect(),
            "spec bug {id} changes nothing: give a patch, at/each, schema or skip_schema"
        );
    }
    // Reads first, then writes, deletes last, so every call finds what it needs.
    let mut ops: Vec<&'static Operation> = OPERATIONS.iter().collect();
    ops.sort_by_key(|op| match op.method {
        Method::Get => 0,
        Method::Post => 1,
        Method::Put | Method::Patch => 2,
        Method::Delete => 3,
    });
    let mut failures = Vec::new();
    let mut answers: HashMap<&str, Value> = HashMap::new();
    for op in ops {
        match check_op(&env, &data, &specs, op).await {
            Ok(Some(answer)) => {
                answers.insert(op.id, answer);
            }
            Ok(None) => {}
            Err(e) => failures.push(format!("{}: {e}", op.id)),
        }
    }
    let checked = answers.len();
    // An entry whose operations all match the spec without it is stale: the spec or the
    // sandbox changed, and the workaround hides nothing any more.
    for (key, bug) in &data.spec_bugs {
        if !bug.skip_schema && !bug_needed(&data, &specs, key, &answers) {
            failures.push(format!("spec_bugs entry {key:?} is not needed: the answers of its operations match the spec without it"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} operations failed conformance:\n{}",
        failures.len(),
        OPERATIONS.len(),
        failures.join("\n")
    );
    let skipped: Vec<&str> = OPERATIONS
        .iter()
        .filter(|op| data.bugs(op.id).skip_schema())
        .map(|op| op.id)
        .collect();
    // Every operation but the file downloads is checked against a schema.
    assert_eq!(
        checked + skipped.len(),
        OPERATIONS.len(),
        "checked {checked}, skipped {skipped:?}"
    );
    assert!(checked >= 180, "only {checked} answers were schema-checked");
}
