//! The real chain: the sandbox's own signed webhooks, delivered to `/hooks/highlevel`,
//! start runs whose steps change the sandbox.

use std::collections::BTreeSet;

use hlbridge_engine::RunState;
use serde_json::json;

use crate::harness::{Harness, Options, all_in, wait_for};

const WELCOME: &str = r#"
id = "welcome"
[trigger]
type = "highlevel_webhook"
events = ["ContactCreate"]
[[steps]]
id = "tag"
type = "highlevel"
operation = "contacts.tags.add"
params = { contactId = "{{ event.id }}", tags = ["welcomed"] }
"#;

#[tokio::test]
async fn the_sandbox_signed_webhooks_start_runs_once_each() {
    let h = Harness::start(
        "chain",
        Options {
            flows: vec![WELCOME.into()],
            trust_sandbox: true,
            sandbox_webhooks: true,
            ..Options::default()
        },
    )
    .await;
    // Every webhook caused by contact creation is delivered twice (same webhookId).
    h.fault(json!({"route": "contacts.create", "webhookDuplicateRate": 1.0}))
        .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(h.contact(&format!("w{i}@example.com"), "Wendy").await);
    }
    wait_for(10, "every contact welcomed", || async {
        ids.iter()
            .all(|id| h.tags(id).contains(&"welcomed".to_owned()))
    })
    .await;
    let runs = h.settle("welcome", 3).await;
    assert!(all_in(&runs, RunState::Succeeded), "{runs:#?}");
    let mut seen = BTreeSet::new();
    for r in &runs {
        let d = h.detail(r.id).await;
        seen.insert(
            d.event.payload["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(seen, ids.iter().cloned().collect::<BTreeSet<_>>());

    let log = h.webhook_log().await;
    let creates: Vec<_> = log
        .iter()
        .filter(|r| r["eventType"] == "ContactCreate")
        .collect();
    assert_eq!(creates.len(), 6, "each sent twice: {log:#?}");
    assert!(creates.iter().all(|r| r["status"] == 200), "{creates:#?}");
    let m = h.server.state().metrics().highlevel;
    assert_eq!(
        (m.runs_started, m.duplicates, m.unauthorized),
        (3, 3, 0),
        "{m:?}"
    );
    h.shutdown().await;
}
