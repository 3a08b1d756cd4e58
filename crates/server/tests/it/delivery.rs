//! Delivery guarantees end to end against the sandbox: dedupe of duplicate webhooks and
//! overlapping polls, retries through injected 5xx and 429, dead letters and replay.

use std::collections::BTreeSet;

use hlbridge_engine::RunState;
use serde_json::{Value, json};

use crate::harness::{Harness, Options, all_in, now_text, signed, test_signer};

const POLLED: &str = r#"
id = "polled"
[trigger]
type = "highlevel_poll"
operation = "contacts.search"
interval_minutes = 1
include_existing = true
[[steps]]
id = "seen"
type = "filter"
condition = "event.id"
"#;

const HOOKED: &str = r#"
id = "hooked"
[trigger]
type = "highlevel_webhook"
events = ["ContactCreate"]
backfill = { operation = "contacts.search", interval_minutes = 5 }
[[steps]]
id = "tag"
type = "highlevel"
operation = "contacts.tags.add"
params = { contactId = "{{ event.id }}", tags = ["hooked"] }
"#;

/// The `id` of each run's event.
async fn event_ids(h: &Harness, flow: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for run in h.runs(flow).await {
        let d = h.detail(run.id).await;
        ids.push(
            d.event.payload["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    ids.sort();
    ids
}

#[tokio::test]
async fn duplicate_webhooks_and_overlapping_polls_start_one_run_per_object() {
    let (signer, key) = test_signer();
    let h = Harness::start(
        "dedupe",
        Options {
            flows: vec![POLLED.into(), HOOKED.into()],
            webhook_keys: vec![key],
            // Polls are driven by the test, several at once.
            run_triggers: false,
            ..Options::default()
        },
    )
    .await;
    let mut existing = Vec::new();
    for i in 0..5 {
        existing.push(h.contact(&format!("p{i}@example.com"), "Polly").await);
    }

    // Three overlapping polls of the same items: one run per contact.
    let (a, b, c) = tokio::join!(
        h.engine.poll_once("polled"),
        h.engine.poll_once("polled"),
        h.engine.poll_once("polled"),
    );
    let enqueued: u64 = [a, b, c]
        .into_iter()
        .map(|r| r.expect("poll").enqueued)
        .sum();
    assert_eq!(
        enqueued, 5,
        "the overlapping polls enqueued each contact once"
    );
    let again = h.engine.poll_once("polled").await.expect("poll");
    assert_eq!(again.enqueued, 0);
    let runs = h.settle("polled", 5).await;
    assert!(all_in(&runs, RunState::Succeeded));
    let mut want = existing.clone();
    want.sort();
    assert_eq!(event_ids(&h, "polled").await, want);

    // The webhook flow: a baseline backfill records what exists (no runs).
    let base = h.engine.poll_once("hooked").await.expect("baseline");
    assert_eq!((base.baseline, base.enqueued), (true, 0));
    // Contact Y is delivered by webhook — twice, as HighLevel sometimes does.
    let y = h.contact("y@example.com", "Y").await;
    let body = serde_json::to_vec(&json!({
        "type": "ContactCreate", "webhookId": "wh-y", "id": y, "timestamp": now_text()
    }))
    .expect("json");
    let mut started = 0;
    for _ in 0..2 {
        let resp = h
            .http
            .post(h.url("/hooks/highlevel"))
            .headers(signed(&signer, &body))
            .body(body.clone())
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status().as_u16(), 200);
        let v: Value = resp.json().await.expect("json");
        started += v["runs"].as_array().map_or(0, Vec::len);
    }
    assert_eq!(started, 1);
    // Contact Z's webhook was lost; the backfill (two overlapping polls) catches it, and
    // does not run Y a second time.
    let z = h.contact("z@example.com", "Z").await;
    let (p1, p2) = tokio::join!(h.engine.poll_once("hooked"), h.engine.poll_once("hooked"));
    assert_eq!(p1.expect("poll").enqueued + p2.expect("poll").enqueued, 1);
    let runs = h.settle("hooked", 2).await;
    assert!(all_in(&runs, RunState::Succeeded), "{runs:#?}");
    let mut want = vec![y.clone(), z.clone()];
    want.sort();
    assert_eq!(event_ids(&h, "hooked").await, want);
    assert!(h.tags(&y).contains(&"hooked".to_owned()));
    assert!(h.tags(&z).contains(&"hooked".to_owned()));
    h.shutdown().await;
}

const NOTE_THEN_TAG: &str = r#"
id = "note_then_tag"
[trigger]
type = "app_webhook"
secret = "s"
auth = "bearer"
[[steps]]
id = "note"
type = "highlevel"
operation = "contacts.notes.create"
params = { contactId = "{{ event.contact }}", body = "note {{ event.n }}" }
[[steps]]
id = "tag"
type = "highlevel"
operation = "contacts.tags.add"
params = { contactId = "{{ event.contact }}", tags = ["{{ event.tag }}"] }
[retry]
max_attempts = 4
base_delay_ms = 10
max_delay_ms = 40
"#;

async fn send_app(h: &Harness, flow: &str, event: Value) -> String {
    let resp = h
        .http
        .post(h.url(&format!("/hooks/app/{flow}")))
        .bearer_auth("s")
        .json(&event)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 202);
    let v: Value = resp.json().await.expect("json");
    v["run_id"].as_str().expect("run id").to_owned()
}

/// Notes on a contact in the sandbox with this body.
fn notes_with(h: &Harness, contact: &str, body: &str) -> usize {
    h.sandbox
        .shared()
        .docs
        .read()
        .iter("note")
        .filter(|(_, d)| {
            d.body["contactId"].as_str() == Some(contact) && d.body["body"].as_str() == Some(body)
        })
        .count()
}

#[tokio::test]
async fn injected_5xx_and_429_are_retried_without_redoing_finished_steps() {
    let h = Harness::start(
        "retry",
        Options {
            flows: vec![NOTE_THEN_TAG.into()],
            ..Options::default()
        },
    )
    .await;
    let c = h.contact("retry@example.com", "Rita").await;
    // The tag call fails with 503, then 429, then works (rules apply in order; the later
    // rule's status wins when both match one request).
    h.fault(json!({"route": "contacts.tags.add", "errorRate": 1.0, "status": 429, "remaining": 2}))
        .await;
    h.fault(json!({"route": "contacts.tags.add", "errorRate": 1.0, "status": 503, "remaining": 1}))
        .await;
    let run = send_app(
        &h,
        "note_then_tag",
        json!({"contact": c, "n": 1, "tag": "retried"}),
    )
    .await;
    let runs = h.settle("note_then_tag", 1).await;
    assert_eq!(runs[0].id.to_string(), run);
    assert_eq!(
        (runs[0].state, runs[0].attempts),
        (RunState::Succeeded, 3),
        "{runs:#?}"
    );
    assert_eq!(
        notes_with(&h, &c, "note 1"),
        1,
        "the note step succeeded once and was not redone"
    );
    assert!(h.tags(&c).contains(&"retried".to_owned()));
    let d = h.detail(runs[0].id).await;
    let steps: Vec<&str> = d.steps.iter().map(|s| s.step_id.as_str()).collect();
    assert_eq!(steps, ["note", "tag"]);
    assert!(d.steps.iter().all(|s| s.succeeded()), "{d:#?}");
    h.shutdown().await;
}

#[tokio::test]
async fn runs_that_fail_for_good_are_dead_lettered_with_the_body_and_replay_succeeds() {
    let h = Harness::start(
        "dead",
        Options {
            flows: vec![NOTE_THEN_TAG.into()],
            ..Options::default()
        },
    )
    .await;
    let c = h.contact("dead@example.com", "Dee").await;

    // A 503 that never ends: the retry budget (4 attempts) is spent.
    let outage = h
        .fault(json!({"route": "contacts.tags.add", "errorRate": 1.0, "status": 503}))
        .await;
    send_app(
        &h,
        "note_then_tag",
        json!({"contact": c, "n": 1, "tag": "first"}),
    )
    .await;
    let runs = h.settle("note_then_tag", 1).await;
    let first = runs[0].clone();
    assert_eq!(
        (first.state, first.attempts),
        (RunState::Dead, 4),
        "{first:#?}"
    );
    let d = h.detail(first.id).await;
    assert!(
        first.last_error.as_deref().unwrap_or("").contains("503"),
        "{:?}",
        first.last_error
    );
    assert!(d.error_body.is_some(), "the response body is kept: {d:#?}");
    h.admin(reqwest::Method::DELETE, &format!("/faults/{outage}"), None)
        .await;

    // A 422 cannot succeed on retry: dead at once.
    h.fault(json!({"route": "contacts.tags.add", "errorRate": 1.0, "status": 422}))
        .await;
    send_app(
        &h,
        "note_then_tag",
        json!({"contact": c, "n": 2, "tag": "second"}),
    )
    .await;
    let runs = h.settle("note_then_tag", 2).await;
    let second = runs
        .iter()
        .find(|r| r.id != first.id)
        .cloned()
        .expect("second run");
    assert_eq!((second.state, second.attempts), (RunState::Dead, 1));
    assert!(h.detail(second.id).await.error_body.is_some());
    h.admin(reqwest::Method::DELETE, "/faults", None).await;
    assert!(!h.tags(&c).contains(&"first".to_owned()));

    // Replay the first one, then every other dead run of the flow.
    let replay = h.engine.store().replay(first.id).await.expect("replay");
    let more = h
        .engine
        .store()
        .replay_dead(Some("note_then_tag"))
        .await
        .expect("replay dead");
    assert_eq!(more.len(), 1, "the first was replayed already");
    let runs = h.settle("note_then_tag", 4).await;
    let replayed: Vec<_> = runs.iter().filter(|r| r.replay_of.is_some()).collect();
    assert_eq!(replayed.len(), 2);
    assert!(
        replayed.iter().all(|r| r.state == RunState::Succeeded),
        "{runs:#?}"
    );
    assert!(
        replayed
            .iter()
            .any(|r| r.id == replay && r.replay_of == Some(first.id))
    );
    let tags: BTreeSet<String> = h.tags(&c).into_iter().collect();
    assert!(
        tags.contains("first") && tags.contains("second"),
        "{tags:?}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_step_in_flight_releases_the_run_and_a_restart_resumes_it() {
    let h = Harness::start(
        "graceful",
        Options {
            flows: vec![NOTE_THEN_TAG.into()],
            ..Options::default()
        },
    )
    .await;
    let c = h.contact("grace@example.com", "Grace").await;
    // The note step takes a while: shutdown is asked for while it is in flight.
    h.fault(json!({"route": "contacts.notes.create", "latencyMs": 1000}))
        .await;
    send_app(
        &h,
        "note_then_tag",
        json!({"contact": c, "n": 7, "tag": "resumed"}),
    )
    .await;
    crate::harness::wait_for(10, "the run to start", || async {
        h.runs("note_then_tag")
            .await
            .iter()
            .any(|r| r.state == RunState::Running)
    })
    .await;
    let Harness {
        sandbox,
        engine,
        server,
        http,
        ..
    } = h;
    let old_url = server.base_url.clone();
    server.shutdown().await.expect("graceful shutdown");
    assert!(
        http.get(format!("{old_url}/healthz")).send().await.is_err(),
        "no longer accepting"
    );

    let run = engine
        .store()
        .list_runs(&Default::default())
        .await
        .expect("runs")
        .pop()
        .expect("the run");
    assert_eq!(
        run.state,
        RunState::Queued,
        "released for another worker: {run:#?}"
    );
    let d = engine
        .store()
        .run_detail(run.id)
        .await
        .expect("detail")
        .expect("run");
    let done: Vec<&str> = d
        .steps
        .iter()
        .filter(|s| s.succeeded())
        .map(|s| s.step_id.as_str())
        .collect();
    assert_eq!(done, ["note"], "the step in flight finished and was saved");

    // A new server on the same engine (store) resumes the run after its note.
    let again = hlbridge_server::serve(
        engine.clone(),
        hlbridge_server::ServeConfig {
            bind: "127.0.0.1:0".parse().expect("addr"),
            run_triggers: false,
            ..hlbridge_server::ServeConfig::default()
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("serve again");
    crate::harness::wait_for(10, "the resumed run", || async {
        engine
            .store()
            .run_detail(run.id)
            .await
            .ok()
            .flatten()
            .is_some_and(|d| d.run.state == RunState::Succeeded)
    })
    .await;
    let count = sandbox
        .shared()
        .docs
        .read()
        .iter("note")
        .filter(|(_, n)| n.body["body"].as_str() == Some("note 7"))
        .count();
    assert_eq!(count, 1, "the note was not created again");
    let tags = sandbox
        .doc("contact", &c)
        .and_then(|d| d["tags"].as_array().cloned())
        .unwrap_or_default();
    assert!(tags.contains(&json!("resumed")), "{tags:?}");
    again.shutdown().await.expect("shutdown");
    sandbox.shutdown().await;
}
