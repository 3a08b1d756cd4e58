//! The store contract, on every backend: dedupe, claims and leases, step results, failures,
//! dead letters and replay, cursors and seen items; and what processes sharing a store rely
//! on: concurrent claims never hand a run out twice, a poll's turn goes to one process, and
//! a location's rate budget holds across processes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hlbridge_engine::Store;
use hlbridge_engine::store::{
    Cursor, Failure, NewEvent, RateBudget, RunEnd, RunFilter, RunState, SlotAnswer, SlotTake,
    StepRecord, StoreError, TriggerTurn,
};
use serde_json::json;
use time::OffsetDateTime;

use crate::backends::Backend;

fn ev(key: &str) -> NewEvent {
    NewEvent {
        flow_id: "f".into(),
        dedupe_key: key.into(),
        payload: json!({"k": key}),
        seen_key: None,
    }
}

fn step(id: &str) -> StepRecord {
    StepRecord {
        step_id: id.into(),
        input: Some(json!({"a": 1})),
        output: Some(json!({"ok": true, "text": "ünïcødé"})),
        error: None,
        started_at: OffsetDateTime::now_utc(),
        finished_at: Some(OffsetDateTime::now_utc()),
    }
}

async fn enqueue_dedupes_and_claims_with_leases(backend: Backend) {
    let store = backend.store("store-lease").await;
    let a = store.enqueue_event(ev("a")).await.expect("enqueue");
    assert!(a.is_some());
    assert_eq!(store.enqueue_event(ev("a")).await.expect("dup"), None);
    let batch = store
        .enqueue_events(vec![ev("b"), ev("b"), ev("c")])
        .await
        .expect("batch");
    assert!(batch[0].is_some() && batch[1].is_none() && batch[2].is_some());

    let claimed = store
        .claim_runs("w1", 10, Duration::from_secs(30))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    assert_eq!(claimed[0].payload, json!({"k": "a"}));
    assert_eq!(claimed[0].attempts, 1);
    assert!(claimed.iter().all(|r| r.steps.is_empty()));
    assert!(
        store
            .claim_runs("w2", 10, Duration::from_secs(30))
            .await
            .expect("claim")
            .is_empty()
    );

    // A lapsed lease is claimed again; the old claim can no longer finish the run.
    let run = &claimed[0];
    assert!(store.renew_lease(run, Duration::ZERO).await.expect("renew"));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = store
        .claim_runs("w2", 10, Duration::from_secs(30))
        .await
        .expect("reclaim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, run.id);
    assert_eq!(again[0].attempts, 2);
    assert!(
        !store
            .complete_run(run, RunState::Succeeded)
            .await
            .expect("stale")
    );
    assert!(
        !store
            .renew_lease(run, Duration::from_secs(30))
            .await
            .expect("stale renew")
    );
    assert!(
        store
            .complete_run(&again[0], RunState::Succeeded)
            .await
            .expect("done")
    );

    // Release: back to queued, attempt not counted.
    assert!(store.release_run(&claimed[1]).await.expect("release"));
    let back = store
        .claim_run(claimed[1].id, "w3", Duration::from_secs(30))
        .await
        .expect("claim one");
    assert_eq!(back.map(|r| r.attempts), Some(1));
    assert!(
        store
            .claim_run(claimed[1].id, "w4", Duration::from_secs(30))
            .await
            .expect("claim held")
            .is_none(),
        "a leased run cannot be claimed"
    );
}

async fn steps_failures_dead_letters_and_replay(backend: Backend) {
    let store = backend.store("store-dead").await;
    let id = store
        .enqueue_event(ev("x"))
        .await
        .expect("enqueue")
        .expect("new");
    let run = store
        .claim_run(id, "w", Duration::from_secs(30))
        .await
        .expect("claim")
        .expect("claimed");
    let rec = step("s1");
    store.save_step_result(id, &rec).await.expect("save");
    store
        .save_step_result(id, &rec)
        .await
        .expect("save again (idempotent)");
    let steps = store.step_results(id).await.expect("steps");
    assert_eq!(steps.len(), 1);
    assert!(steps[0].succeeded());
    assert_eq!(steps[0].output, rec.output);

    // Retry later: not claimable before its time.
    let later = OffsetDateTime::now_utc() + time::Duration::hours(1);
    assert!(
        store
            .fail_run(&run, "boom", None, Failure::RetryAt(later))
            .await
            .expect("fail")
    );
    assert!(
        store
            .claim_runs("w", 10, Duration::from_secs(30))
            .await
            .expect("claim")
            .is_empty()
    );
    let listed = store
        .list_runs(&RunFilter {
            state: Some(RunState::Failed),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_error.as_deref(), Some("boom"));
    assert!(listed[0].next_attempt_at.is_some());

    // Claimed again (now), it comes with its saved step; a second step and the dead letter
    // are written together.
    let run = store
        .claim_run(id, "w", Duration::from_secs(30))
        .await
        .expect("claim")
        .expect("claimed");
    assert_eq!(run.attempts, 2);
    assert_eq!(
        run.steps
            .iter()
            .map(|s| s.step_id.as_str())
            .collect::<Vec<_>>(),
        ["s1"]
    );
    let body = json!({"message": "Contact not found"});
    let mut failed = step("s2");
    failed.output = None;
    failed.error = Some(json!({"message": "404"}));
    assert!(
        store
            .finish_run(
                &run,
                std::slice::from_ref(&failed),
                RunEnd::Fail {
                    error: "404".into(),
                    body: Some(body.clone()),
                    failure: Failure::Dead,
                },
            )
            .await
            .expect("dead")
    );
    let detail = store.run_detail(id).await.expect("detail").expect("exists");
    assert_eq!(detail.run.state, RunState::Dead);
    assert_eq!(detail.error_body, Some(body));
    assert_eq!(detail.event.payload, json!({"k": "x"}));
    assert_eq!(
        detail
            .steps
            .iter()
            .map(|s| s.step_id.as_str())
            .collect::<Vec<_>>(),
        ["s1", "s2"]
    );
    assert!(detail.run.finished_at.is_some());

    let replays = store.replay_dead(Some("f")).await.expect("replay");
    assert_eq!(replays.len(), 1);
    assert!(
        store.replay_dead(None).await.expect("again").is_empty(),
        "replayed only once"
    );
    let new = store
        .run_detail(replays[0])
        .await
        .expect("detail")
        .expect("exists");
    assert_eq!(new.run.replay_of, Some(id));
    assert_eq!(new.run.state, RunState::Queued);
    assert!(new.steps.is_empty());
    assert!(matches!(
        store.replay(replays[0]).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.replay(uuid::Uuid::now_v7()).await,
        Err(StoreError::NotFound(_))
    ));
    let counts = store.count_runs(None).await.expect("counts");
    assert_eq!(counts, vec![(RunState::Dead, 1), (RunState::Queued, 1)]);
    assert_eq!(
        store.count_runs(Some("other")).await.expect("counts"),
        vec![]
    );
}

async fn seen_items_cursors_and_flows(backend: Backend) {
    let store = backend.store("store-seen").await;
    let mut e = ev("poll:f:1");
    e.seen_key = Some("1".into());
    assert!(
        store
            .enqueue_event(e.clone())
            .await
            .expect("first")
            .is_some()
    );
    e.dedupe_key = "poll:f:1:other".into();
    assert!(
        store.enqueue_event(e).await.expect("seen").is_none(),
        "seen item skipped"
    );
    let keys = vec!["1".to_owned(), "2".to_owned()];
    assert_eq!(store.mark_seen("f", &keys).await.expect("mark"), 1);
    assert_eq!(store.mark_seen("f", &[]).await.expect("mark none"), 0);
    assert_eq!(store.get_cursor("f", "loc").await.expect("get"), None);
    let c = Cursor {
        cursor: Some(json!({"page": 2})),
        watermark: Some("2025-01-01T00:00:00Z".into()),
    };
    store.set_cursor("f", "loc", &c).await.expect("set");
    assert_eq!(store.get_cursor("f", "loc").await.expect("get"), Some(c));
    store
        .upsert_flow("f", Some("F"), &json!({"id": "f"}), true)
        .await
        .expect("flow");
    store
        .upsert_flow("f", None, &json!({"id": "f"}), false)
        .await
        .expect("flow again");
    // Key order of payloads survives the round trip (flows and run history rely on it).
    let ordered = json!({"z": 1, "a": 2, "m": {"y": 1, "b": 2}});
    let id = store
        .enqueue_event(NewEvent {
            flow_id: "f".into(),
            dedupe_key: "ordered".into(),
            payload: ordered.clone(),
            seen_key: None,
        })
        .await
        .expect("enqueue")
        .expect("new");
    let d = store.run_detail(id).await.expect("detail").expect("run");
    assert_eq!(
        serde_json::to_string(&d.event.payload).expect("json"),
        serde_json::to_string(&ordered).expect("json")
    );
}

/// Three "processes" (store handles) claim from one queue at once: every run is handed out
/// exactly once.
async fn concurrent_claims_hand_out_each_run_once(backend: Backend) {
    let shared = backend.fresh("store-claims").await;
    let first = shared.open().await;
    let n = 300;
    let events: Vec<NewEvent> = (0..n).map(|i| ev(&format!("e{i}"))).collect();
    for chunk in events.chunks(100) {
        first.enqueue_events(chunk.to_vec()).await.expect("enqueue");
    }
    let mut handles = Vec::new();
    for w in 0..3 {
        let store = if w == 0 {
            first.clone()
        } else {
            shared.open().await
        };
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let runs = store
                    .claim_runs(&format!("w{w}"), 7, Duration::from_secs(30))
                    .await
                    .expect("claim");
                if runs.is_empty() {
                    break;
                }
                for r in runs {
                    assert!(
                        store
                            .complete_run(&r, RunState::Succeeded)
                            .await
                            .expect("complete")
                    );
                    mine.push(r.id);
                }
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("worker"));
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), n, "every run claimed");
    assert_eq!(unique.len(), n, "no run claimed twice");
    assert_eq!(
        first.count_runs(Some("f")).await.expect("counts"),
        vec![(RunState::Succeeded, n as u64)]
    );
}

/// Three handles race for a poll's turn many times at once: one wins each turn.
async fn a_trigger_turn_goes_to_one_process(backend: Backend) {
    let shared = backend.fresh("store-turns").await;
    let stores: Vec<Arc<dyn Store>> = vec![
        shared.open().await,
        shared.open().await,
        shared.open().await,
    ];
    let every = Duration::from_secs(3600);
    let mut handles = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut taken = 0;
            for _ in 0..10 {
                if s.take_trigger_turn("poll:f", &format!("p{i}"), every)
                    .await
                    .expect("turn")
                    == TriggerTurn::Taken
                {
                    taken += 1;
                }
            }
            taken
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await.expect("task");
    }
    if matches!(backend, Backend::Postgres(_)) {
        assert_eq!(total, 1, "one turn per interval across processes");
        match stores[0]
            .take_trigger_turn("poll:f", "late", every)
            .await
            .expect("turn")
        {
            TriggerTurn::NotDue(wait) => {
                assert!(
                    wait > Duration::from_secs(3500) && wait <= every,
                    "{wait:?}"
                )
            }
            TriggerTurn::Taken => panic!("the turn was taken already"),
        }
        // A short interval: the next turn comes once it is due.
        let short = Duration::from_millis(50);
        assert_eq!(
            stores[1]
                .take_trigger_turn("poll:g", "p1", short)
                .await
                .expect("turn"),
            TriggerTurn::Taken
        );
        assert!(matches!(
            stores[2]
                .take_trigger_turn("poll:g", "p2", short)
                .await
                .expect("turn"),
            TriggerTurn::NotDue(_)
        ));
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(
            stores[2]
                .take_trigger_turn("poll:g", "p2", short)
                .await
                .expect("turn"),
            TriggerTurn::Taken
        );
    } else {
        // One process per SQLite store: the caller's own schedule decides.
        assert_eq!(total, 30);
    }
}

/// Slots of a shared rate budget: never more than `burst` taken within a window, across
/// handles; an answered slot frees one window later; a 429 fills the window; the daily
/// budget is counted.
async fn rate_slots_are_shared(backend: Backend) {
    let Backend::Postgres(_) = backend else {
        // SQLite serves one process, whose pacer keeps its budget in memory.
        let store = backend.store("store-slots").await;
        let b = RateBudget::new(3, Duration::from_secs(1), 100, Duration::from_secs(5));
        assert!(matches!(
            store.take_rate_slot("loc", &b, "c").await,
            Err(StoreError::Conflict(_))
        ));
        return;
    };
    let shared = backend.fresh("store-slots").await;
    let a = shared.open().await;
    let b = shared.open().await;
    let budget = RateBudget::new(3, Duration::from_millis(400), 5, Duration::from_secs(5));
    let mut held = Vec::new();
    for (i, s) in [&a, &b, &a].iter().enumerate() {
        let claim = format!("c{i}");
        match s
            .take_rate_slot("loc", &budget, &claim)
            .await
            .expect("take")
        {
            SlotTake::Taken(slot) => held.push((slot, claim)),
            other => panic!("slot {i}: {other:?}"),
        }
    }
    let slots: HashSet<u32> = held.iter().map(|h| h.0).collect();
    assert_eq!(slots.len(), 3, "three distinct slots");
    // The window is full, from either handle; the wait is at most one window.
    match b.take_rate_slot("loc", &budget, "c3").await.expect("take") {
        SlotTake::Wait(w) => assert!(w <= Duration::from_millis(410), "{w:?}"),
        other => panic!("expected to wait: {other:?}"),
    }
    // Another key has its own budget.
    assert!(matches!(
        b.take_rate_slot("other", &budget, "o1")
            .await
            .expect("take"),
        SlotTake::Taken(_)
    ));
    // An answer frees the slot one window after it.
    let (slot, claim) = &held[0];
    a.answer_rate_slot("loc", &budget, *slot, claim, SlotAnswer::default())
        .await
        .expect("answer");
    assert!(matches!(
        a.take_rate_slot("loc", &budget, "c4").await.expect("take"),
        SlotTake::Wait(_)
    ));
    tokio::time::sleep(Duration::from_millis(450)).await;
    let freed = match a.take_rate_slot("loc", &budget, "c5").await.expect("take") {
        SlotTake::Taken(s) => s,
        other => panic!("expected the answered slot: {other:?}"),
    };
    assert_eq!(freed, *slot);
    // A 429 fills every slot for a window.
    a.answer_rate_slot(
        "loc",
        &budget,
        freed,
        "c5",
        SlotAnswer {
            limited: true,
            exhausted: false,
        },
    )
    .await
    .expect("answer 429");
    // Daily: 5 per day for this key; 4 counted so far (c0, c1, c2, c5).
    tokio::time::sleep(Duration::from_millis(450)).await;
    for (slot, claim) in &held[1..] {
        b.answer_rate_slot("loc", &budget, *slot, claim, SlotAnswer::default())
            .await
            .expect("answer");
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(matches!(
        a.take_rate_slot("loc", &budget, "c6").await.expect("take"),
        SlotTake::Taken(_)
    ));
    match a.take_rate_slot("loc", &budget, "c7").await.expect("take") {
        SlotTake::DailyExhausted(resets) => assert!(resets <= Duration::from_secs(86_400)),
        other => panic!("expected the daily budget to be spent: {other:?}"),
    }
}

crate::both_backends!(
    enqueue_dedupes_and_claims_with_leases,
    steps_failures_dead_letters_and_replay,
    seen_items_cursors_and_flows,
    concurrent_claims_hand_out_each_run_once,
    a_trigger_turn_goes_to_one_process,
    rate_slots_are_shared,
);
