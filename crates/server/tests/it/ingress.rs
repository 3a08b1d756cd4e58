//! Webhook ingress over HTTP: HighLevel's signed webhooks (forged, stale, replayed,
//! malformed) and apps' webhooks, with their answers, logs and counters.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use hlbridge_engine::RunState;
use serde_json::{Value, json};

use crate::harness::{Harness, Options, now_text, signed, test_signer};

const CONTACT_CREATED: &str = r#"
id = "on_create"
[trigger]
type = "highlevel_webhook"
events = ["ContactCreate"]
[[steps]]
id = "seen"
type = "filter"
condition = "event.id"
"#;

const APP_EVENTS: &str = r#"
id = "app_events"
[trigger]
type = "app_webhook"
secret = "app-token"
auth = "bearer"
dedupe_key = "{{ event.id }}"
[[steps]]
id = "ok"
type = "filter"
condition = "true"
"#;

/// Log lines of `hlbridge::ingress`, captured for the whole test binary by a global
/// subscriber that names the thread of each event (libtest names a test's thread after the
/// test, and a current-thread runtime runs the server's tasks on it).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_thread_names(true)
            .with_env_filter("hlbridge::ingress=info")
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    })
}

/// The captured lines logged on this test's thread.
fn my_lines() -> Vec<String> {
    let me = std::thread::current().name().unwrap_or_default().to_owned();
    let text = captured()
        .0
        .lock()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(&me))
        .map(str::to_owned)
        .collect()
}

async fn post(
    h: &Harness,
    path: &str,
    headers: reqwest::header::HeaderMap,
    body: &[u8],
) -> (u16, Value) {
    let resp = h
        .http
        .post(h.url(path))
        .headers(headers)
        .body(body.to_vec())
        .send()
        .await
        .expect("post");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

// Current-thread: the server's tasks log on this test's thread (see `captured`).
#[tokio::test(flavor = "current_thread")]
async fn forged_stale_replayed_and_malformed_highlevel_webhooks_are_rejected_logged_and_counted() {
    captured();
    let (signer, key) = test_signer();
    let h = Harness::start(
        "reject",
        Options {
            flows: vec![CONTACT_CREATED.into()],
            webhook_keys: vec![key],
            ..Options::default()
        },
    )
    .await;

    let body = serde_json::to_vec(
        &json!({"type": "ContactCreate", "webhookId": "wh-1", "id": "c-1", "timestamp": now_text()}),
    )
    .expect("json");
    let (status, ok) = post(&h, "/hooks/highlevel", signed(&signer, &body), &body).await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["duplicate"], false);
    assert_eq!(ok["runs"].as_array().map(Vec::len), Some(1));

    // Replayed: the same signed body again, and HighLevel's re-delivery of the same
    // webhookId with a fresh timestamp. Answered 200 (nothing to retry), no run started.
    let (status, dup) = post(&h, "/hooks/highlevel", signed(&signer, &body), &body).await;
    assert_eq!(
        (status, dup["duplicate"].clone()),
        (200, json!(true)),
        "{dup}"
    );
    let again = serde_json::to_vec(
        &json!({"type": "ContactCreate", "webhookId": "wh-1", "id": "c-1", "timestamp": now_text(), "retry": 1}),
    )
    .expect("json");
    let (status, dup) = post(&h, "/hooks/highlevel", signed(&signer, &again), &again).await;
    assert_eq!(
        (status, dup["duplicate"].clone()),
        (200, json!(true)),
        "{dup}"
    );

    // Forged: a valid signature of another body; and no signature at all.
    let forged = serde_json::to_vec(
        &json!({"type": "ContactCreate", "webhookId": "wh-2", "id": "evil", "timestamp": now_text()}),
    )
    .expect("json");
    let (status, err) = post(&h, "/hooks/highlevel", signed(&signer, &body), &forged).await;
    assert_eq!(
        (status, err["error"].clone()),
        (401, json!("unauthorized")),
        "{err}"
    );
    let (status, err) = post(
        &h,
        "/hooks/highlevel",
        reqwest::header::HeaderMap::new(),
        &forged,
    )
    .await;
    assert_eq!(
        (status, err["error"].clone()),
        (401, json!("unauthorized")),
        "{err}"
    );
    // Signed by a key nobody trusts.
    let stranger = hlbridge_highlevel::webhooks::WebhookSigner::from_ed25519_seed([8; 32]);
    let (status, _) = post(&h, "/hooks/highlevel", signed(&stranger, &forged), &forged).await;
    assert_eq!(status, 401);

    // Stale: correctly signed, outside the 5-minute window.
    let stale = serde_json::to_vec(
        &json!({"type": "ContactCreate", "webhookId": "wh-3", "id": "c-3", "timestamp": "2020-01-01T00:00:00Z"}),
    )
    .expect("json");
    let (status, err) = post(&h, "/hooks/highlevel", signed(&signer, &stale), &stale).await;
    assert_eq!(
        (status, err["error"].clone()),
        (401, json!("stale")),
        "{err}"
    );

    // Malformed: signed, but no event type.
    let junk =
        serde_json::to_vec(&json!({"webhookId": "wh-4", "timestamp": now_text()})).expect("json");
    let (status, err) = post(&h, "/hooks/highlevel", signed(&signer, &junk), &junk).await;
    assert_eq!(
        (status, err["error"].clone()),
        (400, json!("bad_request")),
        "{err}"
    );

    // One run in all.
    let runs = h.settle("on_create", 1).await;
    assert_eq!(runs[0].state, RunState::Succeeded);

    // Counted…
    let m = h.server.state().metrics().highlevel;
    assert_eq!(
        (
            m.accepted,
            m.runs_started,
            m.duplicates,
            m.unauthorized,
            m.stale,
            m.bad_request
        ),
        (1, 1, 2, 3, 1, 1),
        "{m:?}"
    );
    let text = h
        .http
        .get(h.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        r#"hlbridge_ingress_total{source="highlevel",outcome="accepted"} 1"#,
        r#"hlbridge_ingress_total{source="highlevel",outcome="duplicate"} 2"#,
        r#"hlbridge_ingress_total{source="highlevel",outcome="unauthorized"} 3"#,
        r#"hlbridge_ingress_total{source="highlevel",outcome="stale"} 1"#,
        r#"hlbridge_ingress_total{source="highlevel",outcome="bad_request"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    // …and logged as warnings, one per rejection, with the reason and the peer.
    let lines = my_lines();
    let warned = |reason: &str| {
        lines
            .iter()
            .filter(|l| {
                l.contains("WARN")
                    && l.contains("hlbridge::ingress")
                    && l.contains(&format!("reason=\"{reason}\""))
                    && l.contains("peer=127.0.0.1")
            })
            .count()
    };
    assert_eq!(
        (
            warned("duplicate"),
            warned("unauthorized"),
            warned("stale"),
            warned("bad_request")
        ),
        (2, 3, 1, 1),
        "{}",
        lines.join("\n")
    );
    h.shutdown().await;
}

#[tokio::test]
async fn app_webhooks_start_runs_dedupe_and_refuse_bad_requests() {
    let h = Harness::start(
        "app",
        Options {
            flows: vec![APP_EVENTS.into()],
            body_limit: 1024,
            ..Options::default()
        },
    )
    .await;
    let bearer = |t: &str| {
        let mut m = reqwest::header::HeaderMap::new();
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")) {
            m.insert(reqwest::header::AUTHORIZATION, v);
        }
        m
    };
    let body = br#"{"id": "evt-1", "tag": "vip"}"#;
    let (status, ok) = post(&h, "/hooks/app/app_events", bearer("app-token"), body).await;
    assert_eq!(status, 202, "{ok}");
    let run_id = ok["run_id"].as_str().expect("run id").to_owned();
    let (status, dup) = post(&h, "/hooks/app/app_events", bearer("app-token"), body).await;
    assert_eq!((status, dup["duplicate"].clone()), (200, json!(true)));
    let (status, err) = post(&h, "/hooks/app/app_events", bearer("wrong"), body).await;
    assert_eq!((status, err["error"].clone()), (401, json!("unauthorized")));
    let (status, err) = post(&h, "/hooks/app/nope", bearer("app-token"), body).await;
    assert_eq!((status, err["error"].clone()), (404, json!("unknown_flow")));
    let (status, err) = post(&h, "/hooks/app/app_events", bearer("app-token"), b"{oops").await;
    assert_eq!((status, err["error"].clone()), (400, json!("bad_request")));
    let big = format!(r#"{{"id": "evt-2", "pad": "{}"}}"#, "x".repeat(4096));
    let (status, _) = post(
        &h,
        "/hooks/app/app_events",
        bearer("app-token"),
        big.as_bytes(),
    )
    .await;
    assert_eq!(status, 413, "the body limit applies");

    let runs = h.settle("app_events", 1).await;
    assert_eq!(runs[0].id.to_string(), run_id);
    assert_eq!(runs[0].state, RunState::Succeeded);
    let m = h.server.state().metrics().app;
    assert_eq!(
        (
            m.accepted,
            m.duplicates,
            m.unauthorized,
            m.unknown_flow,
            m.bad_request
        ),
        (1, 1, 1, 1, 1),
        "{m:?}"
    );

    let health = h.http.get(h.url("/healthz")).send().await.expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    let health: Value = health.json().await.expect("json");
    assert_eq!(health["status"], "ok");
    let missing = h.http.get(h.url("/nowhere")).send().await.expect("404");
    assert_eq!(missing.status().as_u16(), 404);
    let missing: Value = missing.json().await.expect("json");
    assert_eq!(missing["error"], "not_found");
    h.shutdown().await;
}
