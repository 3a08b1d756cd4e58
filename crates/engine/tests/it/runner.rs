//! The runner end to end: steps, filters, retries, dead letters, replay, resume, shutdown.

use std::time::Duration;

use hlbridge_engine::store::{Failure, RunFilter, RunState};
use hlbridge_engine::{Engine, StepError};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::fake::{FakeHighLevel, config, engine_with, wait_for};

const TAGS: &str = r#"
id = "tags"
location_id = "loc1"
filter = "event.action in ['added', 'removed']"
retry = { max_attempts = 3, base_delay_ms = 10, max_delay_ms = 50 }

[trigger]
type = "app_webhook"
secret = "s3cret"

[[steps]]
id = "contact"
type = "find_contact"
email = "{{ event.email }}"
required = true

[[steps]]
id = "tag"
type = "highlevel"
operation = "contacts.tags.add"
params = { contactId = "{{ steps.contact.id }}", tags = ["{{ event.tag }}"] }
"#;

async fn state_of(engine: &Engine, id: hlbridge_engine::RunId) -> Option<RunState> {
    engine
        .store()
        .run_detail(id)
        .await
        .ok()
        .flatten()
        .map(|d| d.run.state)
}

async fn run_until_final(
    engine: &Engine,
    id: hlbridge_engine::RunId,
) -> hlbridge_engine::RunDetail {
    let stop = CancellationToken::new();
    let workers = engine.spawn_workers(&stop);
    wait_for(10, "a final state", || async {
        state_of(engine, id).await.is_some_and(RunState::is_final)
    })
    .await;
    stop.cancel();
    for w in workers {
        let _ = w.await;
    }
    engine
        .store()
        .run_detail(id)
        .await
        .expect("detail")
        .expect("run")
}

async fn steps_run_in_order_with_mappings_and_dedupe() {
    let fake = FakeHighLevel::new();
    let engine = engine_with("happy", config("happy"), &fake, &[TAGS]).await;
    let event = json!({"action": "added", "email": "ada@example.com", "tag": "vip"});
    let id = engine
        .enqueue("tags", "k1", event.clone())
        .await
        .expect("enqueue")
        .expect("new");
    assert_eq!(
        engine.enqueue("tags", "k1", event).await.expect("dup"),
        None,
        "duplicate is a no-op"
    );

    let d = run_until_final(&engine, id).await;
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_eq!(d.run.attempts, 1);
    assert_eq!(
        d.steps
            .iter()
            .map(|s| s.step_id.as_str())
            .collect::<Vec<_>>(),
        ["contact", "tag"]
    );
    let tag_calls = fake.calls_to("contacts.tags.add");
    assert_eq!(
        tag_calls,
        vec![json!({"contactId": "c-ada@example.com", "tags": ["vip"]})]
    );
    let find = fake.calls_to("contacts.find_duplicate");
    assert_eq!(
        find,
        vec![json!({"locationId": "loc1", "email": "ada@example.com"})]
    );
    assert_eq!(d.steps[1].input, Some(tag_calls[0].clone()));
}

async fn filters_skip_runs() {
    let fake = FakeHighLevel::new();
    let engine = engine_with("skip", config("skip"), &fake, &[TAGS]).await;
    let a = engine
        .enqueue(
            "tags",
            "a",
            json!({"action": "renamed", "email": "x@y.z", "tag": "t"}),
        )
        .await
        .expect("a")
        .expect("new");
    let b = engine
        .enqueue(
            "tags",
            "b",
            json!({"action": "added", "email": "nobody@example.com", "tag": "t"}),
        )
        .await
        .expect("b")
        .expect("new");
    assert_eq!(
        run_until_final(&engine, a).await.run.state,
        RunState::Skipped
    );
    let d = run_until_final(&engine, b).await;
    assert_eq!(d.run.state, RunState::Skipped, "required contact not found");
    assert!(fake.calls_to("contacts.tags.add").is_empty());
}

async fn transient_errors_retry_and_resume_without_redoing_steps() {
    let fake = FakeHighLevel::new();
    fake.script(
        "contacts.tags.add",
        vec![
            Err(StepError::http(503, "unavailable", None)),
            Err(StepError::http(429, "slow down", None)
                .with_retry_after(Some(Duration::from_millis(30)))),
        ],
    );
    let engine = engine_with("retry", config("retry"), &fake, &[TAGS]).await;
    let id = engine
        .enqueue(
            "tags",
            "r",
            json!({"action": "added", "email": "ada@example.com", "tag": "vip"}),
        )
        .await
        .expect("enqueue")
        .expect("new");
    let d = run_until_final(&engine, id).await;
    assert_eq!(d.run.state, RunState::Succeeded, "{d:?}");
    assert_eq!(d.run.attempts, 3);
    assert_eq!(fake.calls_to("contacts.tags.add").len(), 3);
    assert_eq!(
        fake.calls_to("contacts.find_duplicate").len(),
        1,
        "the finished step is not redone"
    );
}

async fn budget_spent_or_permanent_errors_go_to_dead_letters_then_replay() {
    let fake = FakeHighLevel::new();
    let body = json!({"statusCode": 404, "message": "Contact not found"});
    fake.script(
        "contacts.tags.add",
        vec![Err(StepError::http(404, "not found", Some(body.clone())))],
    );
    let engine = engine_with("dead", config("dead"), &fake, &[TAGS]).await;
    let ev = json!({"action": "added", "email": "ada@example.com", "tag": "vip"});
    let id = engine
        .enqueue("tags", "d1", ev.clone())
        .await
        .expect("enqueue")
        .expect("new");
    let d = run_until_final(&engine, id).await;
    assert_eq!(d.run.state, RunState::Dead);
    assert_eq!(d.run.attempts, 1, "a 404 is not retried");
    assert_eq!(d.error_body, Some(body));
    assert!(d.run.last_error.as_deref().unwrap_or("").contains("404"));
    let failed_step = d
        .steps
        .iter()
        .find(|s| s.step_id == "tag")
        .expect("tag step");
    assert_eq!(
        failed_step.error.as_ref().and_then(|e| e.get("status")),
        Some(&json!(404))
    );

    // Budget: three 503s with max_attempts = 3.
    fake.script(
        "contacts.tags.add",
        (0..3)
            .map(|_| Err(StepError::http(503, "down", None)))
            .collect(),
    );
    let id2 = engine
        .enqueue("tags", "d2", ev)
        .await
        .expect("enqueue")
        .expect("new");
    let d2 = run_until_final(&engine, id2).await;
    assert_eq!((d2.run.state, d2.run.attempts), (RunState::Dead, 3));

    // Replay every dead letter: they now succeed.
    let replays = engine
        .store()
        .replay_dead(Some("tags"))
        .await
        .expect("replay");
    assert_eq!(replays.len(), 2);
    for r in &replays {
        let d = run_until_final(&engine, *r).await;
        assert_eq!(d.run.state, RunState::Succeeded);
    }
    let dead = engine
        .store()
        .list_runs(&RunFilter {
            state: Some(RunState::Dead),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(dead.len(), 2, "the originals stay as history");
}

async fn a_run_whose_worker_died_is_taken_over_after_its_lease() {
    let fake = FakeHighLevel::new();
    let engine = engine_with("crash", config("crash"), &fake, &[TAGS]).await;
    let id = engine
        .enqueue(
            "tags",
            "c",
            json!({"action": "added", "email": "ada@example.com", "tag": "vip"}),
        )
        .await
        .expect("enqueue")
        .expect("new");
    // A "worker" claims the run with a short lease and dies without finishing.
    let ghost = engine
        .store()
        .claim_runs("ghost", 1, Duration::from_millis(200))
        .await
        .expect("claim");
    assert_eq!(ghost.len(), 1);
    let d = run_until_final(&engine, id).await;
    assert_eq!(d.run.state, RunState::Succeeded);
    assert_eq!(d.run.attempts, 2);
    // The ghost's claim is void.
    assert!(
        !engine
            .store()
            .fail_run(&ghost[0], "late", None, Failure::Dead)
            .await
            .expect("stale")
    );
}

async fn shutdown_releases_runs_at_a_step_boundary() {
    let fake = FakeHighLevel::new();
    let engine = engine_with("shutdown", config("shutdown"), &fake, &[TAGS]).await;
    let id = engine
        .enqueue(
            "tags",
            "s",
            json!({"action": "added", "email": "ada@example.com", "tag": "vip"}),
        )
        .await
        .expect("enqueue")
        .expect("new");
    let stop = CancellationToken::new();
    stop.cancel();
    // A worker started after shutdown claims nothing.
    engine.run_worker("late", stop.clone()).await;
    assert_eq!(state_of(&engine, id).await, Some(RunState::Queued));
    // A run executed under a cancelled token is released before its first step.
    let claimed = engine
        .store()
        .claim_run(id, "w", Duration::from_secs(5))
        .await
        .expect("claim")
        .expect("claimed");
    assert_eq!(claimed.attempts, 1);
    assert!(engine.store().release_run(&claimed).await.expect("release"));
    let d = run_until_final(&engine, id).await;
    assert_eq!((d.run.state, d.run.attempts), (RunState::Succeeded, 1));
}

const LOOP: &str = r#"
id = "loop"
location_id = "loc1"

[trigger]
type = "app_webhook"
secret = "s"

[[steps]]
id = "each"
type = "for_each"
items = "{{ event.people }}"

[[steps.steps]]
id = "only_vip"
type = "filter"
condition = "item.vip"

[[steps.steps]]
id = "upsert"
type = "highlevel"
operation = "contacts.upsert"
params = { email = "{{ item.email }}", "custom.Favourite Colour" = "{{ item.colour }}", tags = "{{ [event.tag, 'n' ~ index] }}" }

[[steps]]
id = "count"
type = "filter"
condition = "steps.each | length == 3"
"#;

async fn for_each_with_custom_fields_and_typed_mappings() {
    let fake = FakeHighLevel::new();
    let engine = engine_with("loop", config("loop"), &fake, &[LOOP]).await;
    let d = engine
        .run_now(
            "loop",
            json!({"tag": "t", "people": [
                {"email": "a@x.io", "colour": "green", "vip": true},
                {"email": "b@x.io", "colour": "red", "vip": false},
                {"email": "c@x.io", "colour": 7, "vip": true},
            ]}),
        )
        .await
        .expect("run now");
    assert_eq!(d.run.state, RunState::Succeeded, "{d:#?}");
    let upserts = fake.calls_to("contacts.upsert");
    assert_eq!(upserts.len(), 2);
    assert_eq!(
        upserts[1],
        json!({"email": "c@x.io", "tags": ["t", "n2"], "locationId": "loc1", "customFields": [{"id": "cf-colour", "value": 7}]})
    );
    assert_eq!(
        fake.calls_to("locations.custom_fields.list").len(),
        1,
        "cached"
    );
    let ids: Vec<&str> = d.steps.iter().map(|s| s.step_id.as_str()).collect();
    assert!(
        ids.contains(&"each[1].only_vip")
            && ids.contains(&"each[2].upsert")
            && ids.contains(&"count"),
        "{ids:?}"
    );
    assert!(!ids.contains(&"each[1].upsert"));
    let each = d
        .steps
        .iter()
        .find(|s| s.step_id == "each")
        .and_then(|s| s.output.clone())
        .unwrap_or(Value::Null);
    assert_eq!(each[1]["upsert"], Value::Null);
}

async fn template_errors_are_dead_at_once() {
    let fake = FakeHighLevel::new();
    let engine = engine_with("tmpl", config("tmpl"), &fake, &[TAGS]).await;
    // `event.tag` missing: strict undefined at run time.
    let d = engine
        .run_now(
            "tags",
            json!({"action": "added", "email": "ada@example.com"}),
        )
        .await
        .expect("run now");
    assert_eq!(d.run.state, RunState::Dead);
    assert!(
        d.run
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("undefined"),
        "{:?}",
        d.run.last_error
    );
}

crate::on_both_backends!(
    steps_run_in_order_with_mappings_and_dedupe,
    filters_skip_runs,
    transient_errors_retry_and_resume_without_redoing_steps,
    budget_spent_or_permanent_errors_go_to_dead_letters_then_replay,
    a_run_whose_worker_died_is_taken_over_after_its_lease,
    shutdown_releases_runs_at_a_step_boundary,
    for_each_with_custom_fields_and_typed_mappings,
    template_errors_are_dead_at_once,
    a_create_in_flight_when_its_worker_died_is_not_repeated,
);

/// Flow files edited outside hlbridge are audited when they are loaded: created, changed
/// (not for a mere reload), and switched on or off as its own event.
#[tokio::test]
async fn flow_file_changes_are_audited_on_load() {
    let fake = FakeHighLevel::new();
    let api: std::sync::Arc<dyn hlbridge_engine::HighLevelApi> = fake.clone();
    let engine = crate::fake::open_engine(config("audit-files"), api).await;
    let dir = crate::fake::temp_dir("audit-flow-files");
    let file = dir.join("tags.toml");
    std::fs::write(&file, TAGS).expect("write");
    engine.load_flows(&[&dir]).await.expect("load");
    engine.load_flows(&[&dir]).await.expect("reload unchanged");
    std::fs::write(&file, TAGS.replace("s3cret", "n3w-secret")).expect("edit");
    engine.load_flows(&[&dir]).await.expect("reload changed");
    std::fs::write(
        &file,
        format!("enabled = false\n{}", TAGS.replace("s3cret", "n3w-secret")),
    )
    .expect("disable");
    engine.load_flows(&[&dir]).await.expect("reload disabled");
    let security = engine.store().security().expect("security store");
    let mut entries = security
        .list_audit(&hlbridge_engine::store::security::AuditFilter::default())
        .await
        .expect("audit");
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    let actions: Vec<(&str, Option<&str>)> = entries
        .iter()
        .filter(|e| e.action.starts_with("flow."))
        .map(|e| (e.action.as_str(), e.target.as_deref()))
        .collect();
    assert_eq!(
        actions,
        [
            ("flow.created", Some("tags")),
            ("flow.changed", Some("tags")),
            ("flow.disabled", Some("tags")),
        ]
    );
    assert!(entries.iter().all(|e| e.actor == "flow files"));
    let details = entries[0].details.to_string();
    assert!(details.contains("tags.toml"), "{details}");
    assert!(
        !entries
            .iter()
            .any(|e| e.details.to_string().contains("n3w-secret")),
        "no secret in the audit log"
    );
}

const TAG_THEN_NOTE: &str = r#"
id = "tag_then_note"
location_id = "loc1"

[trigger]
type = "app_webhook"
secret = "s3cret"

[[steps]]
id = "tag"
type = "highlevel"
operation = "contacts.tags.add"
params = { contactId = "{{ event.contact }}", tags = ["noted"] }

[[steps]]
id = "note"
type = "highlevel"
operation = "contacts.notes.create"
params = { contactId = "{{ event.contact }}", body = "from the app" }
"#;

/// A run taken over from a worker that died is resumed at its first step without a saved
/// result: repeated when that step is repeatable, but not when it is a create (which the dead
/// worker may have sent): then the run is dead as "outcome unknown", and a replay runs it.
async fn a_create_in_flight_when_its_worker_died_is_not_repeated() {
    let fake = FakeHighLevel::new();
    let engine = engine_with("in-doubt", config("in-doubt"), &fake, &[TAG_THEN_NOTE]).await;
    let ghost_claim = |engine: &Engine| {
        let store = engine.store().clone();
        async move {
            let claimed = store
                .claim_runs("ghost", 1, Duration::from_millis(200))
                .await
                .expect("claim");
            assert_eq!(claimed.len(), 1);
            claimed.into_iter().next().expect("one")
        }
    };

    // Died on the first step (repeatable): taken over and repeated, then the note is created.
    let first = engine
        .enqueue("tag_then_note", "a", json!({"contact": "c1"}))
        .await
        .expect("enqueue")
        .expect("new");
    let _ghost = ghost_claim(&engine).await;
    let d = run_until_final(&engine, first).await;
    assert_eq!(
        (d.run.state, d.run.attempts),
        (RunState::Succeeded, 2),
        "{d:#?}"
    );
    assert_eq!(fake.calls_to("contacts.notes.create").len(), 1);

    // Died on the note: the tag's result is saved; the note may have been sent. Not repeated.
    let second = engine
        .enqueue("tag_then_note", "b", json!({"contact": "c2"}))
        .await
        .expect("enqueue")
        .expect("new");
    let ghost = ghost_claim(&engine).await;
    let tag = hlbridge_engine::store::StepRecord {
        step_id: "tag".into(),
        input: None,
        output: Some(json!({"succeded": true})),
        error: None,
        started_at: time::OffsetDateTime::now_utc(),
        finished_at: Some(time::OffsetDateTime::now_utc()),
    };
    engine
        .store()
        .save_step_result(ghost.id, &tag)
        .await
        .expect("save");
    let d = run_until_final(&engine, second).await;
    assert_eq!(d.run.state, RunState::Dead, "{d:#?}");
    let why = d.run.last_error.clone().unwrap_or_default();
    assert!(
        why.contains("outcome unknown") && why.contains("note"),
        "{why}"
    );
    assert_eq!(
        fake.calls_to("contacts.notes.create").len(),
        1,
        "the note of the second event was not sent again"
    );
    // (The ghost never called anything: one tag for the first run, none redone for the second.)
    assert_eq!(
        fake.calls_to("contacts.tags.add").len(),
        1,
        "the saved tag was not redone"
    );

    // The operator checked HighLevel and resumes it: the note is created once more, on
    // purpose, and the tag that succeeded is not redone.
    let resumed = engine.store().resume(second).await.expect("resume");
    let d = run_until_final(&engine, resumed).await;
    assert_eq!(d.run.state, RunState::Succeeded, "{d:#?}");
    assert_eq!(d.run.replay_of, Some(second));
    assert_eq!(fake.calls_to("contacts.notes.create").len(), 2);
    assert_eq!(fake.calls_to("contacts.tags.add").len(), 1);
    // A plain replay runs every step again.
    let replay = engine.store().replay(second).await.expect("replay");
    let d = run_until_final(&engine, replay).await;
    assert_eq!(d.run.state, RunState::Succeeded, "{d:#?}");
    assert_eq!(fake.calls_to("contacts.tags.add").len(), 2);
    assert_eq!(fake.calls_to("contacts.notes.create").len(), 3);
}
