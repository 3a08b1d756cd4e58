//! The operation table agrees with the official specs: every entry's method and path exist in
//! its OpenAPI file, its `Version` is one the spec declares, and its scope is the spec's (or,
//! where the spec declares none, `docs/oauth/Scopes.md`'s). Where the upstream documents are
//! wrong or silent, `tests/data/spec-bugs.json` says so with a reason, and the test checks that
//! each listed bug is still real.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use hlbridge_highlevel::operations::{ApiVersion, OPERATIONS, Operation};
use serde::Deserialize;
use serde_json::Value;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/highlevel")
}

#[derive(Deserialize)]
struct Bugs {
    /// Operations whose spec entry declares no `Version` header.
    no_version_header: BTreeMap<String, String>,
    /// Operations whose scope is stated neither by the spec nor by Scopes.md: ours is inferred.
    scope_inferred: BTreeMap<String, String>,
}

fn norm_path(p: &str) -> String {
    let p = p.trim().trim_end_matches('/');
    p.split('/')
        .map(|s| {
            if s.starts_with(':') || s.starts_with('{') {
                ":"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Scopes.md rows: (METHOD, normalised path) → scope. The scope column is carried forward over
/// continuation rows (`&nbsp;`).
fn scopes_md() -> HashMap<(String, String), Vec<String>> {
    let text = std::fs::read_to_string(shared().join("docs/oauth/Scopes.md")).expect("Scopes.md");
    let mut out: HashMap<(String, String), Vec<String>> = HashMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() < 4 {
            continue;
        }
        let (scope, endpoint) = (cols[1], cols[2]);
        if !scope.is_empty() && scope != "&nbsp;" && !scope.starts_with('-') && scope != "Scope" {
            current = scope.to_string();
        }
        let Some((method, path)) = endpoint.split_once(' ') else {
            continue;
        };
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) {
            continue;
        }
        out.entry((method.to_string(), norm_path(path)))
            .or_default()
            .push(current.clone());
    }
    out
}

fn spec_op<'a>(specs: &'a HashMap<String, Value>, op: &Operation) -> Option<&'a Value> {
    specs
        .get(op.spec)?
        .get("paths")?
        .get(op.path)?
        .get(op.method.as_str().to_lowercase())
}

#[test]
fn table_matches_the_official_specs() {
    let bugs: Bugs = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/spec-bugs.json"),
        )
        .expect("tests/data/spec-bugs.json"),
    )
    .expect("spec-bugs.json parses");
    let mut specs = HashMap::new();
    for op in OPERATIONS {
        specs.entry(op.spec.to_string()).or_insert_with(|| {
            let path = shared().join(format!("openapi/apps/{}.json", op.spec));
            serde_json::from_str::<Value>(
                &std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            )
            .expect("spec json")
        });
    }
    let md = scopes_md();
    let mut problems = Vec::new();
    for op in OPERATIONS {
        let Some(spec) = spec_op(&specs, op) else {
            problems.push(format!(
                "{}: {} {} is not in openapi/apps/{}.json",
                op.id, op.method, op.path, op.spec
            ));
            continue;
        };
        // Version.
        let declared: Vec<String> = spec["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "header" && p["name"] == "Version")
            .flat_map(|p| p["schema"]["enum"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        match (op.version, declared.is_empty()) {
            (ApiVersion::Unversioned, true) => {
                if !bugs.no_version_header.contains_key(op.id) {
                    problems.push(format!(
                        "{}: the spec declares no Version header; list it in spec-bugs.json",
                        op.id
                    ));
                }
            }
            (ApiVersion::Unversioned, false) => problems.push(format!(
                "{}: the spec declares Version {declared:?} but the table has none",
                op.id
            )),
            (_, true) => problems.push(format!(
                "{}: the table sends Version {} but the spec declares none",
                op.id,
                op.version_header()
            )),
            (_, false) => {
                if !declared.iter().any(|d| d == op.version_header()) {
                    problems.push(format!(
                        "{}: Version {} is not among the spec's {declared:?}",
                        op.id,
                        op.version_header()
                    ));
                }
            }
        }
        // Scope.
        let spec_scopes: Vec<String> = spec["security"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .flat_map(|m| {
                m.values()
                    .flat_map(|v| v.as_array().cloned().unwrap_or_default())
            })
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let md_scopes = md
            .get(&(op.method.as_str().to_string(), norm_path(op.path)))
            .cloned()
            .unwrap_or_default();
        if !spec_scopes.is_empty() {
            if !spec_scopes.iter().any(|s| s == op.scope) {
                problems.push(format!(
                    "{}: scope {} disagrees with the spec's {spec_scopes:?}",
                    op.id, op.scope
                ));
            }
        } else if !md_scopes.is_empty() {
            if !md_scopes.iter().any(|s| s == op.scope) {
                problems.push(format!(
                    "{}: scope {} disagrees with Scopes.md's {md_scopes:?}",
                    op.id, op.scope
                ));
            }
        } else if !bugs.scope_inferred.contains_key(op.id) {
            problems.push(format!("{}: neither the spec nor Scopes.md states a scope; list it in spec-bugs.json scope_inferred", op.id));
        }
    }
    // Every listed bug is about a real operation and still applies.
    for id in bugs
        .no_version_header
        .keys()
        .chain(bugs.scope_inferred.keys())
    {
        if hlbridge_highlevel::operations::find(id).is_none() {
            problems.push(format!("spec-bugs.json lists unknown operation {id}"));
        }
    }
    for (id, reason) in bugs
        .no_version_header
        .iter()
        .chain(bugs.scope_inferred.iter())
    {
        if reason.trim().len() < 10 {
            problems.push(format!("spec-bugs.json: {id} needs a real reason"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
