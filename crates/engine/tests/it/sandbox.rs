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

crate::on_both_backends!(a_flow_changes_the_sandbox_through_the_real_client,);
