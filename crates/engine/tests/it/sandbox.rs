//! The engine against the in-process HighLevel sandbox through the real client.

use std::collections::HashMap;
use std::sync::Arc;

use hlbridge_engine::{ClientApi, Connection, HighLevelApi, RunState};
use hlbridge_highlevel::{Auth, Client, ClientConfig, Url};
use hlbridge_sandbox::{Sandbox, SandboxConfig};
use serde_json::json;

use crate::fake::config;

const FLOW: &str = r#"
id = "tag_sync"

[trigger]
type = "app_webhook"
secret = "s"

[[steps]]
id = "up"
type = "highlevel"
operation = "contacts.upsert"
params = { email = "{{ event.email }}", firstName = "{{ event.first_name }}" }

[[steps]]
id = "found"
type = "find_contact"
email = "{{ event.email }}"

[[steps]]
id = "tag"
type = "highlevel"
operation = "contacts.tags.add"
params = { contactId = "{{ steps.found.id }}", tags = "{{ event.tags }}" }

[[steps]]
id = "check"
type = "highlevel"
operation = "contacts.get"
params = { contactId = "{{ steps.up.contact.id }}" }
"#;

async fn a_flow_changes_the_sandbox_through_the_real_client() {
    let sandbox = Sandbox::start(SandboxConfig::for_tests())
        .await
        .expect("sandbox");
    let info = sandbox.info();
    let client = Client::new(ClientConfig {
        base_url: Url::parse(&info.base_url).expect("url"),
        ..ClientConfig::default()
    })
    .expect("client");
    let mut conns = HashMap::new();
    conns.insert(
        "default".to_owned(),
        Connection {
            auth: Auth::token(info.token.clone()),
            location_id: Some(info.location_id.clone()),
        },
    );
    let api: Arc<dyn HighLevelApi> = Arc::new(ClientApi::new(client, conns));
    let engine = crate::fake::open_engine(config("sandbox"), api).await;
    let flow =
        hlbridge_engine::validate::compile_source("tag_sync.toml", FLOW, &Default::default())
            .unwrap_or_else(|d| {
                panic!(
                    "{}",
                    d.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            });
    engine.add_flows(vec![flow]).await.expect("flows");

    let d = engine
        .run_now(
            "tag_sync",
            json!({"email": "ada@example.com", "first_name": "Ada", "tags": ["vip", "newsletter"]}),
        )
        .await
        .expect("run");
    assert_eq!(d.run.state, RunState::Succeeded, "{d:#?}");
    let contact = d
        .steps
        .iter()
        .find(|s| s.step_id == "check")
        .and_then(|s| s.output.clone())
        .expect("check output");
    let tags = contact["contact"]["tags"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        tags.contains(&json!("vip")) && tags.contains(&json!("newsletter")),
        "{contact:#}"
    );
    assert_eq!(contact["contact"]["firstName"], "Ada");

    // A missing contact is a 4xx: dead at once, with HighLevel's body.
    let bad = r#"
id = "bad"
[trigger]
type = "app_webhook"
secret = "s"
[[steps]]
id = "get"
type = "highlevel"
operation = "contacts.get"
params = { contactId = "does-not-exist" }
"#;
    let flow = hlbridge_engine::validate::compile_source("bad.toml", bad, &Default::default())
        .expect("compiles");
    engine.add_flows(vec![flow]).await.expect("flows");
    let d = engine.run_now("bad", json!({})).await.expect("run");
    assert_eq!((d.run.state, d.run.attempts), (RunState::Dead, 1), "{d:#?}");
    assert!(d.error_body.is_some());
    sandbox.shutdown().await;
}

const NOTE_FLOW: &str = r#"
id = "note"
retry = { max_attempts = 5, base_delay_ms = 10, max_delay_ms = 20 }

[trigger]
type = "app_webhook"
secret = "s"

[[steps]]
id = "up"
type = "highlevel"
operation = "contacts.upsert"
params = { email = "{{ event.email }}" }

[[steps]]
id = "tag"
type = "highlevel"
operation = "contacts.tags.add"
params = { contactId = "{{ steps.up.contact.id }}", tags = ["noted"] }

[[steps]]
id = "note"
type = "highlevel"
operation = "contacts.notes.create"
params = { contactId = "{{ steps.up.contact.id }}", body = "from the app" }
"#;

/// A create that fails after it was sent (a 5xx) may have happened: it is not retried (that
/// could create it twice) but ends the run in dead letters saying so. A repeatable call
/// (adding a tag) failing the same way is retried as usual.
async fn a_create_that_may_have_happened_is_not_repeated() {
    let sandbox = Sandbox::start(SandboxConfig::for_tests())
        .await
        .expect("sandbox");
    let info = sandbox.info();
    let client = Client::new(ClientConfig {
        base_url: Url::parse(&info.base_url).expect("url"),
        ..ClientConfig::default()
    })
    .expect("client");
    let mut conns = HashMap::new();
    conns.insert(
        "default".to_owned(),
        Connection {
            auth: Auth::token(info.token.clone()),
            location_id: Some(info.location_id.clone()),
        },
    );
    let api: Arc<dyn HighLevelApi> = Arc::new(ClientApi::new(client, conns));
    let engine = crate::fake::open_engine(config("in-doubt"), api).await;
    let flow =
        hlbridge_engine::validate::compile_source("note.toml", NOTE_FLOW, &Default::default())
            .expect("compiles");
    engine.add_flows(vec![flow]).await.expect("flows");
    let http = reqwest::Client::new();
    let fault = |rule: serde_json::Value| {
        let http = http.clone();
        let url = format!("{}/faults", info.admin_url);
        let token = info.admin_token.clone();
        async move {
            let resp = http
                .post(url)
                .bearer_auth(token)
                .json(&rule)
                .send()
                .await
                .expect("fault");
            assert!(resp.status().is_success());
        }
    };

    // The tag fails once with a 503: retried, the run is not dead.
    fault(json!({"route": "contacts.tags.add", "errorRate": 1.0, "status": 503, "remaining": 1}))
        .await;
    let d = engine
        .run_now("note", json!({"email": "grace@example.com"}))
        .await
        .expect("run");
    assert_ne!(d.run.state, RunState::Dead, "{d:#?}");
    assert!(
        !d.run
            .last_error
            .clone()
            .unwrap_or_default()
            .contains("outcome unknown"),
        "{d:#?}"
    );

    // The note fails once with a 503: dead at once, saying why, and never sent twice.
    fault(
        json!({"route": "contacts.notes.create", "errorRate": 1.0, "status": 503, "remaining": 1}),
    )
    .await;
    let d = engine
        .run_now("note", json!({"email": "alan@example.com"}))
        .await
        .expect("run");
    assert_eq!((d.run.state, d.run.attempts), (RunState::Dead, 1), "{d:#?}");
    let why = d.run.last_error.clone().unwrap_or_default();
    assert!(
        why.contains("outcome unknown") && why.contains("contacts.notes.create"),
        "{why}"
    );
    sandbox.shutdown().await;
}

crate::on_both_backends!(
    a_flow_changes_the_sandbox_through_the_real_client,
    a_create_that_may_have_happened_is_not_repeated,
);
