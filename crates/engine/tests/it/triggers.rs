//! Triggers end to end: HighLevel webhooks, app webhooks, polls (with backfill union),
//! schedules, and the HTTP step against a local receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hlbridge_engine::triggers::sign_hmac_sha256;
use hlbridge_engine::{IngressError, RunState, StepError};
use hlbridge_highlevel::webhooks::WebhookSigner;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::fake::{FakeHighLevel, config, engine_with};

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(k, v);
        }
    }
    h
}

fn signed(signer: &WebhookSigner, body: &[u8]) -> HeaderMap {
    let pairs: Vec<(&str, String)> = signer.sign(body).into_iter().collect();
    headers(&pairs)
}

fn now_text() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

const CONTACTS: &str = r#"
id = "contacts"
[trigger]
type = "highlevel_webhook"
events = ["ContactCreate"]
backfill = { operation = "contacts.search", interval_minutes = 5 }
[[steps]]
id = "note"
type = "filter"
condition = "event.id"
"#;

async fn highlevel_webhooks_are_verified_deduped_and_unioned_with_the_backfill() {
    let signer = WebhookSigner::from_ed25519_seed([9; 32]);
    let mut cfg = config("hlwh");
    cfg.highlevel_webhook_keys = vec![signer.ed25519_public_key_base64()];
    let fake = FakeHighLevel::new();
    let engine = engine_with("hlwh", cfg, &fake, &[CONTACTS]).await;

    // Baseline poll: contact A exists before the flow; recorded, no run.
    fake.script(
        "contacts.search",
        vec![Ok(json!({"contacts": [{"id": "A"}]}))],
    );
    let r = engine.poll_once("contacts").await.expect("baseline");
    assert_eq!((r.fetched, r.enqueued, r.baseline), (1, 0, true));

    let body = serde_json::to_vec(
        &json!({"type": "ContactCreate", "webhookId": "w1", "id": "X", "timestamp": now_text()}),
    )
    .expect("json");
    let runs = engine
        .accept_highlevel_webhook(&signed(&signer, &body), &body)
        .await
        .expect("accepted");
    assert_eq!(runs.len(), 1);
    // HighLevel's duplicate delivery.
    let again = engine
        .accept_highlevel_webhook(&signed(&signer, &body), &body)
        .await
        .expect("dup accepted");
    assert!(again.is_empty());
    // An event type nobody listens to.
    let other = serde_json::to_vec(
        &json!({"type": "NoteCreate", "webhookId": "w2", "timestamp": now_text()}),
    )
    .expect("json");
    assert!(
        engine
            .accept_highlevel_webhook(&signed(&signer, &other), &other)
            .await
            .expect("ok")
            .is_empty()
    );

    // Forged: signature of another body.
    let forged = serde_json::to_vec(
        &json!({"type": "ContactCreate", "webhookId": "w3", "id": "EVIL", "timestamp": now_text()}),
    )
    .expect("json");
    let err = engine
        .accept_highlevel_webhook(&signed(&signer, &body), &forged)
        .await
        .expect_err("forged");
    assert!(
        matches!(err, IngressError::Unauthorized(_)) && err.status() == 401,
        "{err}"
    );
    // Unsigned.
    let err = engine
        .accept_highlevel_webhook(&HeaderMap::new(), &body)
        .await
        .expect_err("unsigned");
    assert!(matches!(err, IngressError::Unauthorized(_)));
    // Stale: correctly signed but outside the 5-minute window.
    let stale = serde_json::to_vec(&json!({"type": "ContactCreate", "webhookId": "w4", "id": "Z", "timestamp": "2020-01-01T00:00:00Z"})).expect("json");
    let err = engine
        .accept_highlevel_webhook(&signed(&signer, &stale), &stale)
        .await
        .expect_err("stale");
    assert!(matches!(err, IngressError::Stale(_)), "{err}");

    // The backfill sees A (old), X (delivered by webhook) and Y (a webhook HighLevel dropped).
    fake.script(
        "contacts.search",
        vec![Ok(
            json!({"contacts": [{"id": "A"}, {"id": "X"}, {"id": "Y"}]}),
        )],
    );
    let r = engine.poll_once("contacts").await.expect("poll");
    assert_eq!((r.fetched, r.enqueued, r.baseline), (3, 1, false));
    let runs = engine
        .store()
        .list_runs(&Default::default())
        .await
        .expect("runs");
    let mut ids: Vec<String> = Vec::new();
    for run in runs {
        let d = engine
            .store()
            .run_detail(run.id)
            .await
            .expect("detail")
            .expect("run");
        ids.push(
            d.event.payload["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    ids.sort();
    assert_eq!(ids, ["X", "Y"], "exactly one run per object");
}

async fn no_keys_means_every_highlevel_webhook_is_refused() {
    let fake = FakeHighLevel::new();
    let engine = engine_with("nokeys", config("nokeys"), &fake, &[CONTACTS]).await;
    let signer = WebhookSigner::from_ed25519_seed([1; 32]);
    let body = br#"{"type":"ContactCreate","webhookId":"w"}"#;
    let err = engine
        .accept_highlevel_webhook(&signed(&signer, body), body)
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains("no HighLevel webhook keys"),
        "{err}"
    );
}

const APP_HMAC: &str = r#"
id = "app_hmac"
[trigger]
type = "app_webhook"
secret = "ecosend"
dedupe_key = "{{ event.id }}"
[[steps]]
id = "ok"
type = "filter"
condition = "true"
"#;

const APP_BEARER: &str = r#"
id = "app_bearer"
[trigger]
type = "app_webhook"
secret = "literal-token"
auth = "bearer"
[[steps]]
id = "ok"
type = "filter"
condition = "true"
"#;

async fn app_webhooks_check_hmac_or_bearer_and_dedupe() {
    let mut cfg = config("app");
    cfg.app_secrets.insert("ecosend".into(), "topsecret".into());
    let fake = FakeHighLevel::new();
    let engine = engine_with("app", cfg, &fake, &[APP_HMAC, APP_BEARER]).await;

    let body = br#"{"id": "evt_1", "tag": "vip"}"#;
    let sig = sign_hmac_sha256(b"topsecret", body);
    let h = headers(&[("x-signature", sig.clone())]);
    assert!(
        engine
            .accept_app_webhook("app_hmac", &h, body)
            .await
            .expect("ok")
            .is_some()
    );
    assert!(
        engine
            .accept_app_webhook("app_hmac", &h, body)
            .await
            .expect("dup")
            .is_none()
    );
    let bad = headers(&[("x-signature", sign_hmac_sha256(b"ecosend", body))]);
    assert_eq!(
        engine
            .accept_app_webhook("app_hmac", &bad, body)
            .await
            .expect_err("bad")
            .status(),
        401
    );
    assert_eq!(
        engine
            .accept_app_webhook("app_hmac", &HeaderMap::new(), body)
            .await
            .expect_err("none")
            .status(),
        401
    );
    assert_eq!(
        engine
            .accept_app_webhook("nope", &h, body)
            .await
            .expect_err("unknown")
            .status(),
        404
    );
    let not_json = b"tag=vip";
    let h2 = headers(&[("x-signature", sign_hmac_sha256(b"topsecret", not_json))]);
    assert_eq!(
        engine
            .accept_app_webhook("app_hmac", &h2, not_json)
            .await
            .expect_err("json")
            .status(),
        400
    );

    let ok = headers(&[("authorization", "Bearer literal-token".to_owned())]);
    let id = engine
        .accept_app_webhook("app_bearer", &ok, body)
        .await
        .expect("bearer")
        .expect("new");
    assert!(
        engine
            .accept_app_webhook("app_bearer", &ok, body)
            .await
            .expect("dup body")
            .is_none()
    );
    let wrong = headers(&[("authorization", "Bearer literal-tokem".to_owned())]);
    assert_eq!(
        engine
            .accept_app_webhook("app_bearer", &wrong, br#"{"a":1}"#)
            .await
            .expect_err("wrong")
            .status(),
        401
    );
    let d = engine.execute_run(id).await.expect("run");
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_eq!(d.event.payload, json!({"id": "evt_1", "tag": "vip"}));
}

const UPDATED: &str = r#"
id = "tasks"
location_id = "loc9"
[trigger]
type = "highlevel_poll"
operation = "contacts.search"
interval_minutes = 1
mode = "updated"
include_existing = true
[[steps]]
id = "ok"
type = "filter"
condition = "true"
"#;

async fn polls_in_updated_mode_follow_the_watermark() {
    let fake = FakeHighLevel::new();
    let engine = engine_with("upd", config("upd"), &fake, &[UPDATED]).await;
    fake.script(
        "contacts.search",
        vec![
            Ok(json!({"contacts": [
                {"id": "a", "dateUpdated": "2025-01-01T00:00:00Z"},
                {"id": "b", "dateUpdated": "2025-01-02T00:00:00Z"},
            ]})),
            Ok(json!({"contacts": [
                {"id": "a", "dateUpdated": "2025-01-03T00:00:00Z"},
                {"id": "b", "dateUpdated": "2025-01-02T00:00:00Z"},
            ]})),
            Ok(json!({"contacts": [
                {"id": "a", "dateUpdated": "2025-01-03T00:00:00Z"},
            ]})),
        ],
    );
    let r1 = engine.poll_once("tasks").await.expect("poll 1");
    assert_eq!((r1.enqueued, r1.baseline), (2, false), "include_existing");
    assert_eq!(
        engine.poll_once("tasks").await.expect("poll 2").enqueued,
        1,
        "only a's update"
    );
    assert_eq!(engine.poll_once("tasks").await.expect("poll 3").enqueued, 0);
    let calls = fake.calls_to("contacts.search");
    assert_eq!(
        calls[0]["locationId"], "loc9",
        "locationId filled from the flow"
    );
    let c = engine
        .store()
        .get_cursor("tasks", "loc9")
        .await
        .expect("cursor")
        .expect("saved");
    assert_eq!(c.watermark.as_deref(), Some("2025-01-03T00:00:00Z"));
    // A failing poll reports the error and keeps the cursor.
    fake.script(
        "contacts.search",
        vec![Err(StepError::http(503, "down", None))],
    );
    assert!(engine.poll_once("tasks").await.is_err());
}

const EVERY_MINUTE: &str = r#"
id = "tick"
[trigger]
type = "schedule"
cron = "* * * * *"
[[steps]]
id = "ok"
type = "filter"
condition = "event.scheduled_at"
"#;

async fn schedules_fire_once_per_tick() {
    let fake = FakeHighLevel::new();
    let engine = engine_with("sched", config("sched"), &fake, &[EVERY_MINUTE]).await;
    let now = OffsetDateTime::parse("2025-05-05T10:00:30Z", &Rfc3339).expect("time");
    let fired = engine.fire_due_schedules(now).await.expect("fire");
    assert_eq!(fired.len(), 1);
    assert!(
        engine
            .fire_due_schedules(now + time::Duration::seconds(10))
            .await
            .expect("same tick")
            .is_empty()
    );
    assert_eq!(
        engine
            .fire_due_schedules(now + time::Duration::minutes(1))
            .await
            .expect("next")
            .len(),
        1
    );
    let d = engine.execute_run(fired[0]).await.expect("run");
    assert_eq!(d.event.payload["scheduled_at"], "2025-05-05T10:00:00Z");
    assert_eq!(d.run.state, RunState::Succeeded);
}

const HTTP: &str = r#"
id = "notify"
[trigger]
type = "app_webhook"
secret = "s"
[[steps]]
id = "post"
type = "http"
connection = "ecosend"
url = "/contacts/{{ event.id }}/notes"
headers = { x-trace = "t-{{ event.id }}" }
body = { text = "{{ event.note }}", n = "{{ event.n }}" }
[[steps]]
id = "check"
type = "filter"
condition = "steps.post.status == 201 and steps.post.body.saved"
"#;

async fn http_steps_reach_allowed_apps_only() {
    use axum::routing::post;
    type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/contacts/{id}/notes",
            post(
                |axum::extract::State(seen): axum::extract::State<Seen>,
                 h: HeaderMap,
                 axum::Json(v): axum::Json<Value>| async move {
                    if let Ok(mut s) = seen.lock() {
                        s.push((h, v));
                    }
                    (
                        axum::http::StatusCode::CREATED,
                        axum::Json(json!({"saved": true})),
                    )
                },
            ),
        )
        .route(
            "/fail",
            post(|| async { (axum::http::StatusCode::UNPROCESSABLE_ENTITY, "bad note") }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let conn = |base: String| hlbridge_engine::AppConnection {
        base_url: Some(base),
        headers: [("authorization".to_owned(), "Bearer app-secret".to_owned())].into(),
    };
    let mut cfg = config("http");
    cfg.network.allow_loopback = true;
    cfg.app_connections
        .insert("ecosend".into(), conn(format!("http://{addr}")));
    let fake = FakeHighLevel::new();
    let engine = engine_with("http", cfg, &fake, &[HTTP]).await;
    let d = engine
        .run_now("notify", json!({"id": "c1", "note": "hello", "n": 3}))
        .await
        .expect("run");
    assert_eq!(d.run.state, RunState::Succeeded, "{d:#?}");
    let got = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, json!({"text": "hello", "n": 3}));
    assert_eq!(
        got[0].0.get("x-trace").and_then(|v| v.to_str().ok()),
        Some("t-c1")
    );
    assert_eq!(
        got[0].0.get("authorization").and_then(|v| v.to_str().ok()),
        Some("Bearer app-secret")
    );
    // Stable per event and step, so the app can apply a retried request once.
    assert_eq!(
        got[0]
            .0
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok()),
        Some(format!("{}:post", d.event.dedupe_key).as_str())
    );
    let input = d.steps[0].input.clone().unwrap_or_default();
    assert!(
        !input.to_string().contains("app-secret"),
        "secrets stay out of run history"
    );

    // A 422 from the app is a dead letter at once, with the body.
    let mut cfg = config("http422");
    cfg.network.allow_loopback = true;
    cfg.app_connections
        .insert("ecosend".into(), conn(format!("http://{addr}/fail?")));
    let engine = engine_with(
        "http422",
        cfg,
        &fake,
        &[&HTTP.replace("/contacts/{{ event.id }}/notes", "/fail")],
    )
    .await;
    let d = engine
        .run_now("notify", json!({"id": "c1", "note": "x", "n": 1}))
        .await
        .expect("run");
    assert_eq!((d.run.state, d.run.attempts), (RunState::Dead, 1));
    assert_eq!(d.error_body, Some(json!("bad note")));

    // Without allow_loopback the destination is refused.
    let mut cfg = config("http-refused");
    cfg.app_connections
        .insert("ecosend".into(), conn(format!("http://{addr}")));
    let engine = engine_with("http-refused", cfg, &fake, &[HTTP]).await;
    let d = engine
        .run_now("notify", json!({"id": "c1", "note": "x", "n": 1}))
        .await
        .expect("run");
    assert_eq!(d.run.state, RunState::Dead);
    assert!(
        d.run
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("refused"),
        "{:?}",
        d.run.last_error
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
}

crate::on_both_backends!(
    highlevel_webhooks_are_verified_deduped_and_unioned_with_the_backfill,
    no_keys_means_every_highlevel_webhook_is_refused,
    app_webhooks_check_hmac_or_bearer_and_dedupe,
    polls_in_updated_mode_follow_the_watermark,
    schedules_fire_once_per_tick,
    http_steps_reach_allowed_apps_only,
);
