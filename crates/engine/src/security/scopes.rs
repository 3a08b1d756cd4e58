//! Least privilege: the OAuth scopes a flow needs, from the operation table's `scope` of
//! every HighLevel operation it calls or polls, per HighLevel connection.
//!
//! `hlbridge connect` asks for exactly the union of what the enabled flows using the
//! connection need ([`scopes_for_connection`]); flow validation reports a connection that
//! lacks one (fed by [`super::Connections::validation_connections`]).

use std::collections::{BTreeMap, BTreeSet};

use hlbridge_highlevel::operations;

use crate::validate::{CompiledFlow, CompiledStep, CompiledTrigger};

/// The scopes agency (Company) installs need on top: listing installed locations and minting
/// location tokens.
pub const AGENCY_SCOPES: [&str; 2] = ["oauth.readonly", "oauth.write"];

fn steps_scopes(
    steps: &[CompiledStep],
    default_conn: &str,
    out: &mut BTreeMap<String, BTreeSet<String>>,
) {
    for s in steps {
        match s {
            CompiledStep::Highlevel { op, connection, .. } => {
                let conn = connection.as_deref().unwrap_or(default_conn);
                out.entry(conn.to_owned())
                    .or_default()
                    .insert(op.scope.to_owned());
            }
            CompiledStep::FindContact { .. } => {
                if let Some(op) = operations::find("contacts.find_duplicate") {
                    out.entry(default_conn.to_owned())
                        .or_default()
                        .insert(op.scope.to_owned());
                }
            }
            CompiledStep::ForEach { steps, .. } => steps_scopes(steps, default_conn, out),
            CompiledStep::Http { .. } | CompiledStep::Filter { .. } => {}
        }
    }
}

/// The scopes a flow needs, by HighLevel connection name.
pub fn flow_scopes(flow: &CompiledFlow) -> BTreeMap<String, BTreeSet<String>> {
    let conn = flow.flow.connection.as_str();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let poll = match &flow.trigger {
        CompiledTrigger::Poll(p) => Some(p),
        CompiledTrigger::HighlevelWebhook { backfill, .. } => backfill.as_ref(),
        CompiledTrigger::AppWebhook { .. } | CompiledTrigger::Schedule { .. } => None,
    };
    if let Some(p) = poll {
        out.entry(conn.to_owned())
            .or_default()
            .insert(p.op.scope.to_owned());
    }
    steps_scopes(&flow.steps, conn, &mut out);
    out
}

/// The HighLevel connections a flow uses (sorted).
pub fn flow_connections(flow: &CompiledFlow) -> Vec<String> {
    flow_scopes(flow).into_keys().collect()
}

/// The union of scopes the **enabled** flows need from connection `connection`, sorted.
pub fn scopes_for_connection<'a>(
    flows: impl IntoIterator<Item = &'a CompiledFlow>,
    connection: &str,
) -> Vec<String> {
    let mut set = BTreeSet::new();
    for f in flows {
        if !f.flow.enabled {
            continue;
        }
        if let Some(s) = flow_scopes(f).remove(connection) {
            set.extend(s);
        }
    }
    set.into_iter().collect()
}

/// The scopes each connection lacks for the enabled flows, given what each grants
/// (connections whose grants are unknown are not checked): connection → missing scopes.
pub fn missing_scopes<'a>(
    flows: impl IntoIterator<Item = &'a CompiledFlow>,
    granted: &std::collections::HashMap<String, Option<Vec<String>>>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in flows {
        if !f.flow.enabled {
            continue;
        }
        for (conn, scopes) in flow_scopes(f) {
            if let Some(Some(g)) = granted.get(&conn) {
                for s in scopes {
                    if !g.contains(&s) {
                        out.entry(conn.clone()).or_default().insert(s);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::compile_source;

    const FLOW: &str = r#"
id = "f"
connection = "main"

[trigger]
type = "highlevel_poll"
operation = "contacts.list"
interval_minutes = 5

[[steps]]
id = "found"
type = "find_contact"
email = "{{ event.email }}"

[[steps]]
id = "loop"
type = "for_each"
items = "{{ event.tags }}"

[[steps.steps]]
id = "tag"
type = "highlevel"
operation = "contacts.tags.add"
connection = "other"
params = { contactId = "{{ event.id }}", tags = ["{{ item }}"] }

[[steps]]
id = "note"
type = "highlevel"
operation = "contacts.notes.create"
params = { contactId = "{{ event.id }}", body = "hi" }
"#;

    #[test]
    fn scopes_per_connection() {
        let f = compile_source("f.toml", FLOW, &Default::default()).unwrap_or_else(|d| {
            panic!(
                "{}",
                d.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        let s = flow_scopes(&f);
        let main: Vec<&str> = s["main"].iter().map(String::as_str).collect();
        assert_eq!(main, vec!["contacts.readonly", "contacts.write"]);
        let other: Vec<&str> = s["other"].iter().map(String::as_str).collect();
        assert_eq!(other, vec!["contacts.write"]);
        assert_eq!(flow_connections(&f), vec!["main", "other"]);
        assert_eq!(
            scopes_for_connection([&f], "main"),
            vec!["contacts.readonly", "contacts.write"]
        );
        assert!(scopes_for_connection([&f], "nope").is_empty());
        let mut granted = std::collections::HashMap::new();
        granted.insert(
            "main".to_owned(),
            Some(vec!["contacts.readonly".to_owned()]),
        );
        granted.insert("other".to_owned(), None);
        let missing = missing_scopes([&f], &granted);
        assert_eq!(missing.len(), 1);
        assert!(missing["main"].contains("contacts.write"));
    }
}
