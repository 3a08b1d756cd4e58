//! Turning an operation and one JSON object of parameters into a request: URL, query and body.
//!
//! Parameters are routed by name using the operation's declared parameters. Names the
//! operation does not declare go to the path when the path template names them, to the
//! query for GET (and DELETE without a body), and to the body otherwise. A parameter named
//! `body` whose value is an object supplies raw body fields (named parameters win over its
//! keys). A `null` value counts as absent. Every missing required parameter is reported in
//! one [`Error::MissingParams`].

use std::collections::HashMap;

use serde_json::{Map, Value};
use url::Url;

use crate::error::Error;
use crate::operations::{Method, Operation, ParamIn};

/// A request ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedRequest {
    /// Full URL, path parameters encoded, query appended.
    pub url: Url,
    /// JSON body, when the operation takes one.
    pub body: Option<Value>,
}

/// `base` with `path` (a `/`-separated template without parameters) appended, keeping any
/// path prefix `base` has (`http://host/prefix/` + `/oauth/token` = `http://host/prefix/oauth/token`).
pub fn endpoint_url(base: &Url, path: &str) -> Result<Url, Error> {
    build_url(base, path, &HashMap::new(), "client")
}

fn build_url(
    base: &Url,
    template: &str,
    values: &HashMap<&str, String>,
    operation: &str,
) -> Result<Url, Error> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    {
        let mut segs = url.path_segments_mut().map_err(|()| Error::InvalidParams {
            operation: operation.to_string(),
            message: format!("base URL {base} cannot have a path"),
        })?;
        segs.pop_if_empty();
        for seg in template.trim_start_matches('/').split('/') {
            match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => {
                    let v = values.get(name).ok_or_else(|| Error::MissingParams {
                        operation: operation.to_string(),
                        names: vec![name.to_string()],
                    })?;
                    segs.push(v);
                }
                None => {
                    segs.push(seg);
                }
            }
        }
    }
    Ok(url)
}

/// Where a parameter the operation does not declare goes.
fn default_location(op: &Operation) -> ParamIn {
    match op.method {
        Method::Get => ParamIn::Query,
        Method::Delete if !op.has_body() => ParamIn::Query,
        _ => ParamIn::Body,
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn query_values(v: &Value) -> Vec<String> {
    match v {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .iter()
            .filter(|i| !i.is_null())
            .map(|i| scalar(i).unwrap_or_else(|| i.to_string()))
            .collect(),
        other => vec![scalar(other).unwrap_or_else(|| other.to_string())],
    }
}

fn as_object<'a>(
    op: &Operation,
    params: &'a Value,
) -> Result<Option<&'a Map<String, Value>>, Error> {
    match params {
        Value::Null => Ok(None),
        Value::Object(m) => Ok(Some(m)),
        other => Err(Error::InvalidParams {
            operation: op.id.to_string(),
            message: format!(
                "parameters must be a JSON object, got {}",
                match other {
                    Value::Array(_) => "an array",
                    Value::String(_) => "a string",
                    Value::Number(_) => "a number",
                    _ => "a boolean",
                }
            ),
        }),
    }
}

/// Builds the request for `op` from `params` against `base`.
pub fn prepare(base: &Url, op: &Operation, params: &Value) -> Result<PreparedRequest, Error> {
    let empty = Map::new();
    let map = as_object(op, params)?.unwrap_or(&empty);
    let path_names: Vec<&str> = op.path_params().collect();
    let fallback = default_location(op);

    let mut path: HashMap<&str, String> = HashMap::new();
    let mut query: Vec<(String, String)> = Vec::new();
    let mut body = Map::new();
    let mut named_body = Map::new();

    for (name, value) in map {
        if value.is_null() {
            continue;
        }
        if name == "body"
            && let Value::Object(raw) = value
        {
            body.extend(raw.iter().map(|(k, v)| (k.clone(), v.clone())));
            continue;
        }
        let location = match op.param(name) {
            Some(p) => p.location,
            None if path_names.contains(&name.as_str()) => ParamIn::Path,
            None => fallback,
        };
        match location {
            ParamIn::Path => {
                let v = scalar(value).ok_or_else(|| Error::InvalidParams {
                    operation: op.id.to_string(),
                    message: format!("path parameter '{name}' must be a string or a number"),
                })?;
                if !v.is_empty() {
                    path.insert(name.as_str(), v);
                }
            }
            ParamIn::Query => {
                for v in query_values(value) {
                    query.push((name.clone(), v));
                }
            }
            ParamIn::Body => {
                named_body.insert(name.clone(), value.clone());
            }
        }
    }
    body.extend(named_body);

    let mut missing: Vec<String> = Vec::new();
    for p in op.params.iter().filter(|p| p.required) {
        let present = match p.location {
            ParamIn::Path => path.contains_key(p.name),
            ParamIn::Query => query.iter().any(|(k, _)| k == p.name),
            ParamIn::Body => body.get(p.name).is_some_and(|v| !v.is_null()),
        };
        if !present {
            missing.push(p.name.to_string());
        }
    }
    for name in &path_names {
        if !path.contains_key(name) && !missing.iter().any(|m| m == name) {
            missing.push((*name).to_string());
        }
    }
    if !missing.is_empty() {
        return Err(Error::MissingParams {
            operation: op.id.to_string(),
            names: missing,
        });
    }

    let mut url = build_url(base, op.path, &path, op.id)?;
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    let body = (op.has_body() || !body.is_empty()).then_some(Value::Object(body));
    Ok(PreparedRequest { url, body })
}

/// The location or company a call is about, from its parameters: `locationId`,
/// `location_id`, `companyId` (top level or in a raw `body` object), or `altId` when
/// `altType` is `location`.
pub fn pacing_id(params: &Value) -> Option<String> {
    let lookups = [Some(params), params.get("body").filter(|b| b.is_object())];
    for scope in lookups.into_iter().flatten() {
        for key in ["locationId", "location_id", "companyId"] {
            if let Some(v) = scope.get(key).and_then(scalar).filter(|s| !s.is_empty()) {
                return Some(v);
            }
        }
        if scope.get("altType").and_then(Value::as_str) == Some("location")
            && let Some(v) = scope
                .get("altId")
                .and_then(scalar)
                .filter(|s| !s.is_empty())
        {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operations::find;
    use serde_json::json;

    fn op(id: &str) -> &'static Operation {
        find(id).unwrap_or_else(|| panic!("no operation {id}"))
    }

    fn base(s: &str) -> Url {
        Url::parse(s).expect("test URL")
    }

    #[test]
    fn routes_path_query_and_body() {
        let r = prepare(
            &base("http://127.0.0.1:9/"),
            op("contacts.get"),
            &json!({"contactId": "a b/c?"}),
        )
        .expect("valid");
        assert_eq!(r.url.as_str(), "http://127.0.0.1:9/contacts/a%20b%2Fc%3F");
        assert_eq!(r.body, None);

        let r = prepare(
            &base("http://h/prefix"),
            op("contacts.list"),
            &json!({"locationId": "L1", "query": "x y", "extra": [1, 2]}),
        )
        .expect("valid");
        assert_eq!(
            r.url.as_str(),
            "http://h/prefix/contacts/?locationId=L1&query=x+y&extra=1&extra=2"
        );
    }

    #[test]
    fn delete_with_body() {
        let r = prepare(
            &base("http://h/p/"),
            op("contacts.tags.remove"),
            &json!({"contactId": "c1", "tags": ["a", "b"]}),
        )
        .expect("valid");
        assert_eq!(r.url.as_str(), "http://h/p/contacts/c1/tags");
        assert_eq!(r.body, Some(json!({"tags": ["a", "b"]})));
    }

    #[test]
    fn raw_body_merges_and_counts_for_required() {
        let r = prepare(
            &base("http://h/"),
            op("contacts.notes.create"),
            &json!({"contactId": "c1", "body": "a note", "userId": "u"}),
        )
        .expect("string body is the note text");
        assert_eq!(r.body, Some(json!({"body": "a note", "userId": "u"})));

        let r = prepare(
            &base("http://h/"),
            op("contacts.tags.add"),
            &json!({"contactId": "c1", "body": {"tags": ["x"], "other": 1}, "other": 2}),
        )
        .expect("raw body supplies tags");
        assert_eq!(r.body, Some(json!({"tags": ["x"], "other": 2})));
    }

    #[test]
    fn all_missing_names_at_once() {
        let e = prepare(
            &base("http://h/"),
            op("contacts.tasks.create"),
            &json!({"title": "t"}),
        )
        .expect_err("missing");
        match e {
            Error::MissingParams { operation, names } => {
                assert_eq!(operation, "contacts.tasks.create");
                assert_eq!(names, vec!["contactId", "dueDate", "completed"]);
            }
            other => panic!("{other}"),
        }
        let e = prepare(&base("http://h/"), op("contacts.get"), &json!([1]));
        assert!(matches!(e, Err(Error::InvalidParams { .. })));
    }

    #[test]
    fn pacing_ids() {
        assert_eq!(pacing_id(&json!({"locationId": "L"})).as_deref(), Some("L"));
        assert_eq!(
            pacing_id(&json!({"location_id": "L2"})).as_deref(),
            Some("L2")
        );
        assert_eq!(
            pacing_id(&json!({"body": {"companyId": "C"}})).as_deref(),
            Some("C")
        );
        assert_eq!(
            pacing_id(&json!({"altType": "location", "altId": "L3"})).as_deref(),
            Some("L3")
        );
        assert_eq!(
            pacing_id(&json!({"altType": "company", "altId": "X"})),
            None
        );
    }
}
