//! Conformance: every operation of the table, called with a request built from the spec
//! (required parameters, example bodies, ids of seeded objects), answers with a success whose
//! body validates against the spec's response schema. The spec's own bugs that we work around
//! are listed in `tests/data/conformance.json`, each with a reason.
//!
//! Plus consistency walks: create → read → update → read → delete → 404 for each resource.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

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
struct Data {
    /// Path parameter → how to pick a value: `{ "kind": doc kind, "parent": param set from the
    /// document's parent, "field": param set from a body field }`, by op id prefix (longest wins).
    ids: BTreeMap<String, BTreeMap<String, IdRule>>,
    /// Values for required query parameters by name (`$location`, `$company`, `$now`, `$week` expand).
    query: BTreeMap<String, Value>,
    /// Per-operation extra query parameters and body fields (merged over the spec example).
    requests: BTreeMap<String, Override>,
    /// Spec bugs: the response schema is wrong or missing; each has a reason.
    spec_bugs: BTreeMap<String, SpecBug>,
}

#[derive(Deserialize, Clone)]
struct IdRule {
    kind: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
    #[serde(default)]
    literal: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
struct Override {
    #[serde(default)]
    query: Map<String, Value>,
    #[serde(default)]
    body: Map<String, Value>,
    #[serde(default)]
    replace_body: bool,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct SpecBug {
    reason: String,
    #[serde(default)]
    skip_schema: bool,
}

fn load_data() -> Data {
    let text = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/conformance.json"))
        .expect("tests/data/conformance.json");
    serde_json::from_str(&text).expect("conformance.json parses")
}

struct Specs {
    apps: HashMap<String, Value>,
    common: Value,
}

impl Specs {
    fn load() -> Specs {
        let dir = shared_dir().join("openapi/apps");
        let mut apps = HashMap::new();
        for entry in std::fs::read_dir(&dir).expect("spec dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
                let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
                apps.insert(name, v);
            }
        }
        let common = serde_json::from_str(&std::fs::read_to_string(shared_dir().join("openapi/common/common-schemas.json")).expect("common")).expect("json");
        Specs { apps, common }
    }

    fn op(&self, op: &Operation) -> &Value {
        &self.apps[op.spec]["paths"][op.path][op.method.as_str().to_lowercase()]
    }

    /// Inlines `$ref`s (local and `../common/…`) and makes optional properties nullable, so
    /// a plain JSON Schema validator can check an answer.
    fn inline(&self, spec: &Value, v: &Value, depth: usize) -> Value {
        if depth > 12 {
            return json!({});
        }
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    let (doc, pointer) = match r.split_once('#') {
                        Some(("", p)) => (spec, p),
                        Some((_, p)) => (&self.common, p),
                        None => return json!({}),
                    };
                    let target = doc.pointer(pointer).cloned().unwrap_or(json!({}));
                    return self.inline(doc, &target, depth + 1);
                }
                let mut out = Map::new();
                for (k, val) in m {
                    if ["example", "examples", "description", "nullable", "readOnly", "writeOnly", "deprecated", "xml", "externalDocs", "discriminator"].contains(&k.as_str()) {
                        continue;
                    }
                    out.insert(k.clone(), if k == "enum" || k == "required" { val.clone() } else { self.inline(spec, val, depth + 1) });
                }
                if let Some(Value::Object(props)) = out.get_mut("properties") {
                    let required: Vec<String> = m.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect();
                    for (name, p) in props.iter_mut() {
                        if !required.contains(name) {
                            *p = json!({ "anyOf": [p.clone(), { "type": "null" }] });
                        }
                    }
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(|x| self.inline(spec, x, depth + 1)).collect()),
            other => other.clone(),
        }
    }

    /// The success response schema of an operation (first 2xx with a JSON schema).
    fn success_schema(&self, op: &Operation) -> Option<Value> {
        let spec = &self.apps[op.spec];
        let responses = self.op(op).get("responses")?.as_object()?;
        let mut codes: Vec<&String> = responses.keys().filter(|c| c.starts_with('2')).collect();
        codes.sort();
        for code in codes {
            if let Some(s) = responses[code].pointer("/content/application~1json/schema") {
                return Some(self.inline(spec, s, 0));
            }
        }
        None
    }

    /// A body from the spec: every property's example (required ones at least).
    fn example_body(&self, op: &Operation) -> Map<String, Value> {
        let spec = &self.apps[op.spec];
        let Some(schema) = self.op(op).pointer("/requestBody/content/application~1json/schema") else {
            return Map::new();
        };
        let resolved = resolve(spec, schema);
        let required: Vec<&str> = resolved.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        let mut body = Map::new();
        for (name, prop) in resolved.get("properties").and_then(Value::as_object).into_iter().flatten() {
            let prop = resolve(spec, prop);
            let example = prop.get("example").cloned().or_else(|| prop.get("default").cloned()).or_else(|| prop.get("enum").and_then(|e| e.get(0)).cloned());
            match example {
                Some(e) => {
                    body.insert(name.clone(), e);
                }
                None if required.contains(&name.as_str()) => {
                    body.insert(name.clone(), placeholder(&prop));
                }
                None => {}
            }
        }
        body
    }
}

fn resolve(spec: &Value, v: &Value) -> Value {
    let mut cur = v.clone();
    for _ in 0..10 {
        match cur.get("$ref").and_then(Value::as_str) {
            Some(r) if r.starts_with("#/") => cur = spec.pointer(&r[1..]).cloned().unwrap_or(json!({})),
            _ => break,
        }
    }
    cur
}

fn placeholder(prop: &Value) -> Value {
    match prop.get("type").and_then(Value::as_str) {
        Some("boolean") => json!(true),
        Some("number") | Some("integer") => json!(1),
        Some("array") => json!([]),
        Some("object") => json!({}),
        _ => json!("sandbox"),
    }
}

fn rule_for<'d>(data: &'d Data, op: &Operation) -> BTreeMap<String, IdRule> {
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

fn expand(v: &Value, env: &Env) -> Value {
    match v.as_str() {
        Some("$location") => json!(env.info.location_id),
        Some("$company") => json!(env.info.company_id),
        Some("$now") => json!(hlbridge_sandbox::now_ms()),
        Some("$week") => json!(hlbridge_sandbox::now_ms() + 7 * 86_400_000),
        Some("$now_iso") => json!(hlbridge_sandbox::handlers::iso(hlbridge_sandbox::now_ms())),
        Some("$week_iso") => json!(hlbridge_sandbox::handlers::iso(hlbridge_sandbox::now_ms() + 7 * 86_400_000)),
        _ => v.clone(),
    }
}

/// Picks ids for the path params of `op`; `nth_from_end` spreads destructive calls over docs.
fn path_params(env: &Env, data: &Data, op: &Operation, nth_from_end: bool) -> Result<HashMap<String, String>, String> {
    let rules = rule_for(data, op);
    let mut out: HashMap<String, String> = HashMap::new();
    let docs = env.sandbox.shared().docs.read();
    let loc = env.info.location_id.clone();
    // Rules that set other params from the chosen document go first.
    let mut names: Vec<&str> = op.path_params().collect();
    names.sort_by_key(|n| rules.get(*n).map_or(1, |r| if r.parent.is_some() || !r.fields.is_empty() { 0 } else { 1 }));
    for name in names {
        if out.contains_key(name) {
            continue;
        }
        if name == "locationId" {
            out.insert(name.into(), loc.clone());
            continue;
        }
        let rule = rules.get(name).ok_or_else(|| format!("no id rule for {{{name}}}"))?;
        if let Some(l) = &rule.literal {
            out.insert(name.into(), l.clone());
            continue;
        }
        let candidates: Vec<(&String, &hlbridge_sandbox::store::Doc)> = docs
            .iter(&rule.kind)
            .filter(|(_, d)| d.location_id.as_deref().is_none_or(|l| l == loc) )
            .filter(|(_, d)| rule.parent.is_none() || d.parent_id.is_some())
            .filter(|(_, d)| rule.fields.values().all(|f| d.body.get(f).is_some_and(|v| !v.is_null())))
            .collect();
        let pick = if nth_from_end { candidates.last() } else { candidates.first() };
        let (id, doc) = pick.ok_or_else(|| format!("no seeded document of kind {} for {{{name}}}", rule.kind))?;
        out.insert(name.into(), (*id).clone());
        if let (Some(parent), Some(pid)) = (&rule.parent, &doc.parent_id) {
            out.insert(parent.clone(), pid.clone());
        }
        for (param, field) in &rule.fields {
            if let Some(v) = doc.body.get(field) {
                out.insert(param.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string));
            }
        }
    }
    Ok(out)
}

fn build_path(op: &Operation, params: &HashMap<String, String>) -> String {
    op.path
        .split('/')
        .map(|seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => params.get(name).cloned().unwrap_or_default(),
            None => seg.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn call_op(env: &Env, data: &Data, specs: &Specs, op: &'static Operation, destructive: bool) -> Result<(u16, Value), String> {
    let params = path_params(env, data, op, destructive)?;
    let mut query: Vec<(String, String)> = Vec::new();
    let ov = data.requests.get(op.id).cloned().unwrap_or_default();
    for p in op.params.iter().filter(|p| p.location == ParamIn::Query && p.required) {
        if ov.query.contains_key(p.name) {
            continue;
        }
        let v = data.query.get(p.name).map(|v| expand(v, env)).or_else(|| params.get(p.name).map(|s| json!(s)));
        match v {
            Some(v) => query.push((p.name.to_string(), v.as_str().map_or_else(|| v.to_string(), str::to_string))),
            None => return Err(format!("no value for required query parameter {}", p.name)),
        }
    }
    for (k, v) in &ov.query {
        let v = expand(v, env);
        query.push((k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)));
    }
    let body = if op.method == Method::Get {
        None
    } else {
        let mut body = if ov.replace_body { Map::new() } else { specs.example_body(op) };
        for (k, v) in body.iter_mut() {
            if k == "locationId" || k == "altId" {
                *v = json!(env.info.location_id);
            } else if k == "companyId" {
                *v = json!(env.info.company_id);
            } else if let Some(id) = params.get(k) {
                *v = json!(id);
            }
        }
        for (k, v) in &ov.body {
            body.insert(k.clone(), resolve_refs_in(v, env, &params));
        }
        (!body.is_empty() || matches!(op.method, Method::Post | Method::Put)).then_some(Value::Object(body))
    };
    let mut path = build_path(op, &params);
    if !query.is_empty() {
        path.push('?');
        path.push_str(&serde_urlencoded::to_string(&query).unwrap_or_default());
    }
    let token = if op.token == hlbridge_highlevel::operations::TokenKind::Agency { env.info.agency_token.clone() } else { env.info.token.clone() };
    let (status, body, _) = env.call_as(&token, op.method.as_str(), &path, op.version_header(), body).await;
    Ok((status, body))
}

/// `"$doc:kind"` → an id of a seeded document of that kind; `"$param:name"` → a path param.
fn resolve_refs_in(v: &Value, env: &Env, params: &HashMap<String, String>) -> Value {
    match v {
        Value::String(s) if s.starts_with("$doc:") => {
            let kind = &s[5..];
            let docs = env.sandbox.shared().docs.read();
            docs.iter(kind).next().map_or(Value::Null, |(id, _)| json!(id))
        }
        Value::String(s) if s.starts_with("$param:") => params.get(&s[7..]).map_or(Value::Null, |p| json!(p)),
        Value::String(_) => expand(v, env),
        Value::Array(a) => Value::Array(a.iter().map(|x| resolve_refs_in(x, env, params)).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), resolve_refs_in(x, env, params))).collect()),
        other => other.clone(),
    }
}

#[tokio::test]
async fn every_operation_answers_in_the_spec_shape() {
    let mut config = SandboxConfig::for_tests();
    config.seed_demo = true;
    config.rate_limit = RateLimitConfig { enabled: false, ..RateLimitConfig::default() };
    let env = Env::start(config).await;
    let data = load_data();
    let specs = Specs::load();
    for id in data.spec_bugs.keys().chain(data.requests.keys()) {
        assert!(hlbridge_highlevel::operations::find(id).is_some(), "conformance.json names unknown op {id}");
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
    let mut checked = 0;
    for op in ops {
        let result = call_op(&env, &data, &specs, op, op.method == Method::Delete).await;
        let (status, body) = match result {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: could not build a request: {e}", op.id));
                continue;
            }
        };
        if !(200..300).contains(&status) {
            failures.push(format!("{} {} {}: answered {status}: {body}", op.id, op.method, op.path));
            continue;
        }
        if data.spec_bugs.get(op.id).is_some_and(|b| b.skip_schema) {
            continue;
        }
        let Some(schema) = specs.success_schema(op) else {
            if !data.spec_bugs.contains_key(op.id) {
                failures.push(format!("{}: the spec has no response schema; list it in spec_bugs with the shape HighLevel documents", op.id));
            }
            continue;
        };
        let validator = match jsonschema::options().with_draft(jsonschema::Draft::Draft7).should_validate_formats(false).build(&schema) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: spec schema does not compile: {e}", op.id));
                continue;
            }
        };
        let errors: Vec<String> = validator.iter_errors(&body).take(5).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        if errors.is_empty() {
            checked += 1;
        } else {
            failures.push(format!("{}: answer does not match the spec schema: {}", op.id, errors.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{} of {} operations failed conformance:\n{}", failures.len(), OPERATIONS.len(), failures.join("\n"));
    assert!(checked > 100, "only {checked} answers were schema-checked");
}
