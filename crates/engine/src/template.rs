//! Field mappings: minijinja templates compiled when a flow is loaded.
//!
//! A mapping value is any JSON value from a flow file. Strings are templates:
//! - a string that is exactly one `{{ expression }}` keeps the JSON type of the expression
//!   (`"{{ event.tags }}"` gives an array, `"{{ event.count + 1 }}"` a number);
//! - any other string containing `{{` or `{%` renders to a string;
//! - strings without template syntax, numbers, booleans and `null` are literals;
//! - arrays and objects are mapped element by element.
//!
//! Undefined variables are errors (strict mode), both when the flow is loaded (every
//! template is compiled and its variables checked) and when it runs. Each render has a fuel
//! budget, so a runaway template stops instead of hanging a worker.
//!
//! Variables ([`Scope`]): `event` (the trigger's event), `trigger` (`type`, `flow`,
//! `dedupe_key`, `received_at`), `flow` (`id`, `name`, `connection`, `location_id`),
//! `steps.<id>` (the output of an earlier step) and, inside a `for_each`, `item` and
//! `index`. Environment variables are deliberately not exposed: secrets belong in
//! connections, not in templates.
//!
//! Custom fields: a HighLevel step parameter named `custom.<field name>` sets that custom
//! field; the engine resolves the field id from the location's custom field list
//! ([`CustomFieldResolver`], cached) and sends `customFields = [{ id, value }]`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use minijinja::{AutoEscape, Environment, Expression, UndefinedBehavior};
use serde_json::Value;

use crate::api::{HighLevelApi, StepError};

/// Fuel for one render (instructions and allocated data; see minijinja's `set_fuel`).
pub const FUEL: u64 = 100_000;

/// Variables every template may use.
pub const ROOTS: &[&str] = &["event", "trigger", "flow", "steps"];

/// Variables added inside a `for_each`.
pub const LOOP_ROOTS: &[&str] = &["item", "index"];

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_recursion_limit(64);
    env
}

static EXPRESSIONS: LazyLock<Environment<'static>> = LazyLock::new(environment);

static GLOBALS: LazyLock<HashSet<String>> =
    LazyLock::new(|| EXPRESSIONS.globals().map(|(k, _)| k.to_owned()).collect());

/// A compiled mapping value.
pub enum Mapping {
    /// A value without templates.
    Literal(Value),
    /// Exactly one `{{ expression }}`: keeps the expression's type.
    Expr(Box<Expression<'static, 'static>>),
    /// Text with templates: renders to a string. The name of the template in the flow's
    /// [`Templates`].
    Text(String),
    /// An array of mappings.
    Array(Vec<Mapping>),
    /// An object of mappings, in file order.
    Object(Vec<(String, Mapping)>),
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mapping::Literal(v) => write!(f, "Literal({v})"),
            Mapping::Expr(_) => f.write_str("Expr(..)"),
            Mapping::Text(name) => write!(f, "Text({name})"),
            Mapping::Array(a) => f.debug_list().entries(a).finish(),
            Mapping::Object(o) => f
                .debug_map()
                .entries(o.iter().map(|(k, v)| (k, v)))
                .finish(),
        }
    }
}

/// A template failed while rendering (undefined value, type error, out of fuel…).
#[derive(Debug, thiserror::Error)]
#[error("template {path}: {message}")]
pub struct RenderError {
    /// Key path of the mapping in the flow file.
    pub path: String,
    /// minijinja's message.
    pub message: String,
}

impl From<RenderError> for StepError {
    fn from(e: RenderError) -> Self {
        StepError::permanent(e.to_string())
    }
}

/// The text templates of one flow.
#[derive(Clone)]
pub struct Templates {
    env: Arc<Environment<'static>>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self {
            env: Arc::new(environment()),
        }
    }
}

fn render_error(path: &str, e: &minijinja::Error) -> RenderError {
    let mut message = e.kind().to_string();
    if let Some(d) = e.detail() {
        message = format!("{message}: {d}");
    }
    RenderError {
        path: path.to_owned(),
        message,
    }
}

/// Converts a JSON value to a template context value.
pub fn context(value: &Value) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(value))
}

impl Mapping {
    /// Whether the mapping contains no template.
    pub fn is_literal(&self) -> bool {
        match self {
            Mapping::Literal(_) => true,
            Mapping::Expr(_) | Mapping::Text(_) => false,
            Mapping::Array(a) => a.iter().all(Mapping::is_literal),
            Mapping::Object(o) => o.iter().all(|(_, m)| m.is_literal()),
        }
    }

    /// Renders the mapping with `ctx` (see [`context`]).
    pub fn render(
        &self,
        templates: &Templates,
        ctx: &minijinja::Value,
    ) -> Result<Value, RenderError> {
        match self {
            Mapping::Literal(v) => Ok(v.clone()),
            Mapping::Expr(expr) => {
                let v = expr
                    .eval(ctx.clone())
                    .map_err(|e| render_error("expression", &e))?;
                if v.is_undefined() {
                    return Err(RenderError {
                        path: "expression".into(),
                        message: "undefined value (a variable or attribute that does not exist)"
                            .into(),
                    });
                }
                to_json(&v).map_err(|message| RenderError {
                    path: "expression".into(),
                    message,
                })
            }
            Mapping::Text(name) => {
                let t = templates
                    .env
                    .get_template(name)
                    .map_err(|e| render_error(name, &e))?;
                t.render(ctx.clone())
                    .map(Value::String)
                    .map_err(|e| render_error(name, &e))
            }
            Mapping::Array(items) => items
                .iter()
                .map(|m| m.render(templates, ctx))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Mapping::Object(fields) => {
                let mut out = serde_json::Map::with_capacity(fields.len());
                for (k, m) in fields {
                    out.insert(k.clone(), m.render(templates, ctx)?);
                }
                Ok(Value::Object(out))
            }
        }
    }
}

/// Converts a template value to JSON (undefined and none become `null`).
fn to_json(v: &minijinja::Value) -> Result<Value, String> {
    if v.is_undefined() || v.is_none() {
        return Ok(Value::Null);
    }
    serde_json::to_value(v).map_err(|e| format!("value cannot be converted to JSON: {e}"))
}

/// Whether a rendered condition counts as true: `false`, `null`, `0`, `""`, `[]`, `{}`
/// and the strings `"false"`, `"0"` are false.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => {
            let s = s.trim();
            !(s.is_empty() || s.eq_ignore_ascii_case("false") || s == "0")
        }
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// What a template may refer to.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Root variables allowed (`event`, `steps`, …).
    pub roots: Vec<&'static str>,
    /// Step ids whose output is available (earlier steps).
    pub steps: Vec<String>,
    /// Every step id of the flow (to tell "later step" from "unknown step").
    pub all_steps: Vec<String>,
}

/// A problem found while compiling a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateIssue {
    /// Key path of the value in the flow file (`steps[1].params.tags[0]`).
    pub path: String,
    /// Byte offset of the problem inside the template text, when known.
    pub offset: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

/// Compiles the templates of one flow, collecting every problem.
pub struct Compiler {
    env: Environment<'static>,
    issues: Vec<TemplateIssue>,
}

impl Default for Compiler {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a string contains template syntax.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// The expression inside a string that is exactly one `{{ … }}`, with its byte offset.
fn single_expression(s: &str) -> Option<(&str, usize)> {
    let lead = s.len() - s.trim_start().len();
    let t = s.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some((inner, lead + 2))
}

fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(s, _)| *s > 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

impl Compiler {
    /// A compiler for a new flow.
    pub fn new() -> Self {
        Self {
            env: environment(),
            issues: Vec::new(),
        }
    }

    /// Problems found so far.
    pub fn issues(&self) -> &[TemplateIssue] {
        &self.issues
    }

    /// Finishes: the flow's templates and every problem found.
    pub fn finish(self) -> (Templates, Vec<TemplateIssue>) {
        (
            Templates {
                env: Arc::new(self.env),
            },
            self.issues,
        )
    }

    fn issue(&mut self, path: &str, offset: Option<usize>, message: String, hint: Option<String>) {
        self.issues.push(TemplateIssue {
            path: path.to_owned(),
            offset,
            message,
            hint,
        });
    }

    fn syntax_issue(&mut self, path: &str, base: usize, e: &minijinja::Error) {
        let offset = e.range().map(|r| base + r.start);
        let message = match e.detail() {
            Some(d) => format!("template syntax error: {d}"),
            None => format!("template syntax error: {}", e.kind()),
        };
        self.issue(path, offset, message, None);
    }

    /// Compiles any mapping value.
    pub fn compile_value(&mut self, path: &str, value: &Value, scope: &Scope) -> Mapping {
        match value {
            Value::String(s) => self.compile_str(path, s, scope),
            Value::Array(items) => Mapping::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.compile_value(&format!("{path}[{i}]"), v, scope))
                    .collect(),
            ),
            Value::Object(fields) => Mapping::Object(
                fields
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            self.compile_value(&crate::validate::push_key(path, k), v, scope),
                        )
                    })
                    .collect(),
            ),
            other => Mapping::Literal(other.clone()),
        }
    }

    /// Compiles a string mapping.
    pub fn compile_str(&mut self, path: &str, s: &str, scope: &Scope) -> Mapping {
        if !is_template(s) {
            return Mapping::Literal(Value::String(s.to_owned()));
        }
        if let Some((inner, base)) = single_expression(s) {
            return self.compile_expression(path, s, inner, base, scope);
        }
        match self.env.add_template_owned(path.to_owned(), s.to_owned()) {
            Ok(()) => {
                let vars = self
                    .env
                    .get_template(path)
                    .map(|t| t.undeclared_variables(true))
                    .unwrap_or_default();
                self.check_variables(path, s, vars, scope);
                Mapping::Text(path.to_owned())
            }
            Err(e) => {
                self.syntax_issue(path, 0, &e);
                Mapping::Literal(Value::Null)
            }
        }
    }

    /// Compiles a condition: a `{{ … }}` template or a bare expression.
    pub fn compile_condition(&mut self, path: &str, s: &str, scope: &Scope) -> Mapping {
        if is_template(s) {
            self.compile_str(path, s, scope)
        } else {
            self.compile_expression(path, s, s, 0, scope)
        }
    }

    fn compile_expression(
        &mut self,
        path: &str,
        full: &str,
        inner: &str,
        base: usize,
        scope: &Scope,
    ) -> Mapping {
        match EXPRESSIONS.compile_expression_owned(inner.to_owned()) {
            Ok(expr) => {
                let vars = expr.undeclared_variables(true);
                self.check_variables(path, full, vars, scope);
                Mapping::Expr(Box::new(expr))
            }
            Err(e) => {
                self.syntax_issue(path, base, &e);
                Mapping::Literal(Value::Null)
            }
        }
    }

    fn check_variables(&mut self, path: &str, source: &str, vars: HashSet<String>, scope: &Scope) {
        let mut vars: Vec<String> = vars.into_iter().collect();
        vars.sort();
        let mut reported = HashSet::new();
        for var in vars {
            let mut parts = var.split('.');
            let root = parts.next().unwrap_or_default();
            if scope.roots.contains(&root) {
                if root == "steps" {
                    let Some(step) = parts.next() else { continue };
                    if scope.steps.iter().any(|s| s == step) || !reported.insert(var.clone()) {
                        continue;
                    }
                    let offset = source.find(&format!("steps.{step}"));
                    if scope.all_steps.iter().any(|s| s == step) {
                        self.issue(
                            path,
                            offset,
                            format!("step `{step}` is not available here: it runs later (or is this step)"),
                            Some("a template can only read the output of steps that run before it".into()),
                        );
                    } else {
                        let hint = nearest(step, scope.steps.iter().map(String::as_str))
                            .map(|n| format!("did you mean `steps.{n}`?"))
                            .or_else(|| {
                                (!scope.steps.is_empty())
                                    .then(|| format!("earlier steps: {}", scope.steps.join(", ")))
                            });
                        self.issue(
                            path,
                            offset,
                            format!("unknown step `{step}` in `steps.{step}`"),
                            hint,
                        );
                    }
                }
                continue;
            }
            if GLOBALS.contains(root) || !reported.insert(root.to_owned()) {
                continue;
            }
            let offset = source.find(root);
            let hint = match nearest(root, scope.roots.iter().copied()) {
                Some(n) => format!(
                    "did you mean `{n}`? variables available here: {}",
                    scope.roots.join(", ")
                ),
                None => format!("variables available here: {}", scope.roots.join(", ")),
            };
            self.issue(
                path,
                offset,
                format!("undefined variable `{root}`"),
                Some(hint),
            );
        }
    }
}

/// Parameters split by [`split_custom`]: plain `(name, value)` pairs and custom fields as
/// `(field name, value)` pairs.
pub type SplitParams<'a> = (Vec<(&'a String, &'a Value)>, Vec<(&'a str, &'a Value)>);

/// Splits HighLevel step parameters into plain ones and `custom.<field name>` ones.
pub fn split_custom(params: &serde_json::Map<String, Value>) -> SplitParams<'_> {
    let mut plain = Vec::new();
    let mut custom = Vec::new();
    for (k, v) in params {
        match k.strip_prefix("custom.") {
            Some(name) => custom.push((name, v)),
            None => plain.push((k, v)),
        }
    }
    (plain, custom)
}

/// Resolves a custom field's id from its display name (or field key) in a location.
pub trait CustomFieldResolver: Send + Sync {
    /// The id of custom field `name` of `location_id`, read through `connection`.
    fn resolve<'a>(
        &'a self,
        connection: &'a str,
        location_id: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<String, StepError>>;
}

type FieldIds = Arc<HashMap<String, String>>;

/// A [`CustomFieldResolver`] reading `locations.custom_fields.list` through a
/// [`HighLevelApi`], caching each location's list for `ttl`. A name missing from a cached
/// list triggers one refresh before failing (permanently).
pub struct HighLevelCustomFields {
    api: Arc<dyn HighLevelApi>,
    ttl: Duration,
    cache: Mutex<HashMap<(String, String), (Instant, FieldIds)>>,
}

fn normalize(name: &str) -> String {
    name.trim().to_lowercase()
}

impl HighLevelCustomFields {
    /// A resolver caching lists for `ttl`.
    pub fn new(api: Arc<dyn HighLevelApi>, ttl: Duration) -> Self {
        Self {
            api,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &(String, String)) -> Option<FieldIds> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, ids)| ids.clone())
    }

    async fn fetch(&self, connection: &str, location_id: &str) -> Result<FieldIds, StepError> {
        let op = hlbridge_highlevel::operations::find("locations.custom_fields.list").ok_or_else(
            || StepError::permanent("operation locations.custom_fields.list is missing"),
        )?;
        let body = self
            .api
            .call(
                connection,
                op,
                serde_json::json!({ "locationId": location_id }),
            )
            .await?;
        let mut ids = HashMap::new();
        for field in crate::api::items_of(op, body) {
            let Some(id) = field.get("id").and_then(Value::as_str) else {
                continue;
            };
            for key in ["name", "fieldKey"] {
                if let Some(n) = field.get(key).and_then(Value::as_str) {
                    ids.insert(normalize(n), id.to_owned());
                    if let Some(short) = n.strip_prefix("contact.") {
                        ids.insert(normalize(short), id.to_owned());
                    }
                }
            }
        }
        let ids = Arc::new(ids);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(
                (connection.to_owned(), location_id.to_owned()),
                (Instant::now(), ids.clone()),
            );
        }
        Ok(ids)
    }
}

impl CustomFieldResolver for HighLevelCustomFields {
    fn resolve<'a>(
        &'a self,
        connection: &'a str,
        location_id: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<String, StepError>> {
        Box::pin(async move {
            let key = (connection.to_owned(), location_id.to_owned());
            let want = normalize(name);
            if let Some(id) = self.cached(&key).and_then(|ids| ids.get(&want).cloned()) {
                return Ok(id);
            }
            let ids = self.fetch(connection, location_id).await?;
            ids.get(&want).cloned().ok_or_else(|| {
                StepError::permanent(format!(
                    "location {location_id} has no custom field named {name:?}"
                ))
            })
        })
    }
}

/// Builds the `customFields` parameter (`[{ id, value }]`) from rendered `(name, value)`
/// pairs, resolving each name.
pub async fn custom_fields_param(
    resolver: &dyn CustomFieldResolver,
    connection: &str,
    location_id: &str,
    fields: Vec<(String, Value)>,
) -> Result<Value, StepError> {
    let mut out = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        let id = resolver.resolve(connection, location_id, &name).await?;
        out.push(serde_json::json!({ "id": id, "value": value }));
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Scope {
        Scope {
            roots: ROOTS.to_vec(),
            steps: vec!["find".into()],
            all_steps: vec!["find".into(), "later".into()],
        }
    }

    fn compile(v: Value) -> (Mapping, Templates, Vec<TemplateIssue>) {
        let mut c = Compiler::new();
        let m = c.compile_value("params", &v, &scope());
        let (t, issues) = c.finish();
        (m, t, issues)
    }

    #[test]
    fn single_expression_keeps_type_mixed_text_is_string() {
        let (m, t, issues) = compile(json!({
            "tags": "{{ event.tags }}",
            "n": "{{ event.n + 1 }}",
            "greeting": "Hi {{ event.name }}!",
            "nested": ["{{ steps.find.id }}", 3, "plain"],
            "none": "{{ event.missing_ok | default(none) }}",
        }));
        assert!(issues.is_empty(), "{issues:?}");
        let ctx = context(&json!({
            "event": {"tags": ["a", "b"], "n": 41, "name": "Ada"},
            "steps": {"find": {"id": "c1"}},
        }));
        let out = m.render(&t, &ctx).expect("render");
        assert_eq!(
            out,
            json!({"tags": ["a", "b"], "n": 42, "greeting": "Hi Ada!", "nested": ["c1", 3, "plain"], "none": null})
        );
    }

    #[test]
    fn undefined_is_an_error_at_run_time() {
        let (m, t, issues) = compile(json!("{{ event.nope.deeper }}"));
        assert!(issues.is_empty());
        let err = m
            .render(&t, &context(&json!({"event": {}})))
            .expect_err("strict");
        assert!(err.message.contains("undefined"), "{err}");
        let (m, t, _) = compile(json!(["{{ event.nope }}"]));
        let err = m
            .render(&t, &context(&json!({"event": {}})))
            .expect_err("strict");
        assert!(err.message.contains("undefined"), "{err}");
        let (m, t, _) = compile(json!("a {{ event.nope }}"));
        assert!(m.render(&t, &context(&json!({"event": {}}))).is_err());
    }

    #[test]
    fn compile_time_checks() {
        let (_, _, issues) = compile(json!({
            "a": "{{ evnt.email }}",
            "b": "{{ steps.later.id }}",
            "c": "x {{ steps.fnd.id }}",
            "d": "{{ event.email ",
            "e": "{{ range(3) | list }}",
        }));
        let msgs: Vec<_> = issues
            .iter()
            .map(|i| (i.path.as_str(), i.message.as_str(), i.offset))
            .collect();
        assert_eq!(issues.len(), 4, "{msgs:?}");
        assert_eq!(msgs[0].0, "params.a");
        assert!(msgs[0].1.contains("undefined variable `evnt`"));
        assert_eq!(msgs[0].2, Some(3));
        assert!(issues[0].hint.as_deref().unwrap_or("").contains("`event`"));
        assert!(msgs[1].1.contains("runs later"));
        assert!(msgs[2].1.contains("unknown step `fnd`"));
        assert_eq!(msgs[2].2, Some(5));
        assert!(
            issues[2]
                .hint
                .as_deref()
                .unwrap_or("")
                .contains("steps.find")
        );
        assert!(msgs[3].1.contains("syntax error"), "{msgs:?}");
    }

    #[test]
    fn conditions_and_truthiness() {
        let mut c = Compiler::new();
        let bare = c.compile_condition("filter", "event.tag == 'vip'", &scope());
        let tmpl = c.compile_condition("filter", "{{ event.tag == 'x' }}", &scope());
        let (t, issues) = c.finish();
        assert!(issues.is_empty(), "{issues:?}");
        let ctx = context(&json!({"event": {"tag": "vip"}}));
        assert!(truthy(&bare.render(&t, &ctx).expect("render")));
        assert!(!truthy(&tmpl.render(&t, &ctx).expect("render")));
        assert!(!truthy(&json!("false")) && !truthy(&json!(0)) && truthy(&json!("yes")));
    }

    #[test]
    fn fuel_stops_runaway_templates() {
        let (m, t, issues) = compile(json!(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
        ));
        assert!(issues.is_empty(), "{issues:?}");
        assert!(m.render(&t, &context(&json!({}))).is_err());
    }

    struct FakeFields(std::sync::atomic::AtomicUsize);

    impl HighLevelApi for FakeFields {
        fn call<'a>(
            &'a self,
            _connection: &'a str,
            op: &'static hlbridge_highlevel::Operation,
            params: Value,
        ) -> BoxFuture<'a, Result<Value, StepError>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                assert_eq!(op.id, "locations.custom_fields.list");
                assert_eq!(params["locationId"], "loc1");
                Ok(json!({"customFields": [
                    {"id": "cf1", "name": "Favourite Colour", "fieldKey": "contact.favourite_colour"},
                ]}))
            })
        }
    }

    #[tokio::test]
    async fn custom_fields_resolve_and_cache() {
        let api = Arc::new(FakeFields(Default::default()));
        let r = HighLevelCustomFields::new(api.clone(), Duration::from_secs(60));
        let v = custom_fields_param(
            &r,
            "default",
            "loc1",
            vec![
                ("favourite colour".into(), json!("green")),
                ("favourite_colour".into(), json!(1)),
            ],
        )
        .await
        .expect("resolve");
        assert_eq!(
            v,
            json!([{"id": "cf1", "value": "green"}, {"id": "cf1", "value": 1}])
        );
        assert_eq!(api.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        let err = r
            .resolve("default", "loc1", "Shoe size")
            .await
            .expect_err("missing");
        assert!(!err.is_transient());
        assert_eq!(api.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
