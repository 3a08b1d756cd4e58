//! Several engines (as several processes would) sharing one store: every run executes once,
//! a poll's turn goes to one engine per interval, a schedule's tick fires once, and a
//! location's rate budget kept in the store holds for all of their HighLevel clients
//! together (against the sandbox, which counts what it receives).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hlbridge_engine::cluster::StoreBudget;
use hlbridge_engine::store::RateBudget;
use hlbridge_engine::validate::compile_source;
use hlbridge_engine::{
    ClientApi, Connection, Engine, HighLevelApi, RunState, Store, ValidationContext,
};
use hlbridge_highlevel::{Auth, Client, ClientConfig, PacingConfig, Url};
use hlbridge_sandbox::ratelimit::RateLimitConfig;
use hlbridge_sandbox::{Sandbox, SandboxConfig};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::backends::Backend;
use crate::fake::{FakeHighLevel, config, wait_for};

const TAG: &str = r#"
id = "tag"
[trigger]
type = "app_webhook"
secret = "s"
[[steps]]
id = "tag"
type = "highlevel"
operation = "contacts.tags.add"
params = { contactId = "{{ event.contact }}", tags = ["{{ event.tag }}"] }
"#;

const POLL: &str = r#"
id = "poll"
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

const TICK: &str = r#"
id = "tick"
[trigger]
type = "schedule"
cron = "* * * * *"
[[steps]]
id = "ok"
type = "filter"
condition = "event.scheduled_at"
"#;

async fn engine_on(
    store: Arc<dyn Store>,
    name: &str,
    api: Arc<dyn HighLevelApi>,
    flows: &[&str],
) -> Engine {
    let mut cfg = config(name);
    cfg.worker_name = name.to_owned();
    cfg.claim_batch = 8;
    let engine = Engine::with_store(cfg, store, api).expect("engine");
    let compiled = flows
        .iter()
        .map(|src| {
            compile_source("cluster.toml", src, &ValidationContext::default()).unwrap_or_else(|d| {
                panic!(
                    "{}",
                    d.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })
        })
        .collect();
    engine.add_flows(compiled).await.expect("flows");
    engine
}

/// Three engines on one store run a burst of events between them: each event's HighLevel
/// call happens once.
async fn three_engines_run_each_event_once(backend: Backend) {
    let shared = backend.fresh("cluster-runs").await;
    let fake = FakeHighLevel::new();
    let mut engines = Vec::new();
    for i in 0..3 {
        engines.push(engine_on(shared.open().await, &format!("w{i}"), fake.clone(), &[TAG]).await);
    }
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for e in &engines {
        workers.extend(e.spawn_workers(&stop));
    }
    let n = 150;
    for i in 0..n {
        // Enqueued through the engines in turn, as ingress on several processes would.
        engines[i % 3]
            .enqueue(
                "tag",
                &format!("e{i}"),
                json!({"contact": "c1", "tag": format!("t{i}")}),
            )
            .await
            .expect("enqueue")
            .expect("new");
    }
    let store = engines[0].store().clone();
    wait_for(30, "every run to succeed", || {
        let store = store.clone();
        async move {
            store.count_runs(Some("tag")).await.ok() == Some(vec![(RunState::Succeeded, n as u64)])
        }
    })
    .await;
    stop.cancel();
    for w in workers {
        let _ = w.await;
    }
    let calls = fake.calls_to("contacts.tags.add");
    let tags: HashSet<String> = calls.iter().map(|c| c["tags"][0].to_string()).collect();
    assert_eq!(calls.len(), n, "one call per event");
    assert_eq!(tags.len(), n);
    let runs = store
        .list_runs(&hlbridge_engine::RunFilter {
            flow_id: Some("tag".into()),
            state: None,
            limit: 1000,
        })
        .await
        .expect("runs");
    let by_worker: HashSet<String> = runs.iter().filter_map(|r| r.worker_id.clone()).collect();
    assert!(!by_worker.is_empty());
}

/// Three engines reach a poll's turn at the same moment: one polls.
async fn a_poll_turn_is_taken_once_across_engines(backend: Backend) {
    let shared = backend.fresh("cluster-poll").await;
    let fake = FakeHighLevel::new();
    fake.script(
        "contacts.search",
        vec![Ok(
            json!({"contacts": [{"id": "a", "dateUpdated": "2025-01-01T00:00:00Z"}]}),
        )],
    );
    let mut engines = Vec::new();
    for i in 0..3 {
        engines.push(engine_on(shared.open().await, &format!("p{i}"), fake.clone(), &[POLL]).await);
    }
    let every = Duration::from_secs(60);
    let results =
        futures::future::join_all(engines.iter().map(|e| e.poll_if_due("poll", every))).await;
    let polled: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    if matches!(backend, Backend::Postgres(_)) {
        assert_eq!(polled.len(), 1, "one engine polls per interval");
        assert_eq!(fake.calls_to("contacts.search").len(), 1);
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(*r <= every && *r > Duration::from_secs(50), "{r:?}");
        }
    } else {
        // SQLite serves one process: each engine's own schedule decides; the items are
        // deduped all the same.
        assert_eq!(polled.len(), 3);
    }
    assert_eq!(
        engines[0]
            .store()
            .count_runs(Some("poll"))
            .await
            .expect("counts"),
        vec![(RunState::Queued, 1)],
        "one run for the item"
    );
}

/// Three engines fire the same schedule tick: one run.
async fn a_schedule_tick_fires_once_across_engines(backend: Backend) {
    let shared = backend.fresh("cluster-tick").await;
    let fake = FakeHighLevel::new();
    let mut engines = Vec::new();
    for i in 0..3 {
        engines.push(engine_on(shared.open().await, &format!("s{i}"), fake.clone(), &[TICK]).await);
    }
    let now = OffsetDateTime::parse("2025-05-05T10:00:30Z", &Rfc3339).expect("time");
    let fired = futures::future::join_all(engines.iter().map(|e| e.fire_due_schedules(now))).await;
    let runs: usize = fired
        .iter()
        .map(|f| f.as_ref().map(Vec::len).unwrap_or(0))
        .sum();
    assert!(fired.iter().all(Result::is_ok));
    assert_eq!(runs, 1, "one run per tick across engines");
    assert_eq!(
        engines[1]
            .store()
            .count_runs(Some("tick"))
            .await
            .expect("counts"),
        vec![(RunState::Queued, 1)]
    );
}

/// Three HighLevel clients, each with its own store handle and a shared budget of 10
/// requests per second, send 45 calls for one location at once: the sandbox never sees
/// more than 10 within a second and answers no 429.
async fn a_shared_budget_holds_across_clients(backend: Backend) {
    let Backend::Postgres(_) = backend else {
        return; // Shared budgets live in PostgreSQL (SQLite serves one process).
    };
    let (burst, interval) = (10, Duration::from_secs(1));
    let sandbox = Sandbox::start(SandboxConfig {
        rate_limit: RateLimitConfig {
            enabled: true,
            burst,
            interval,
            daily: 200_000,
        },
        ..SandboxConfig::for_tests()
    })
    .await
    .expect("sandbox");
    let info = sandbox.info();
    let shared = backend.fresh("cluster-budget").await;
    let op = hlbridge_highlevel::operations::find("contacts.search").expect("op");
    let mut apis: Vec<Arc<dyn HighLevelApi>> = Vec::new();
    for _ in 0..3 {
        let budget = StoreBudget::new(
            shared.open().await,
            RateBudget::new(burst, interval, 200_000, Duration::from_secs(30)),
        );
        let client = Client::with_shared_budget(
            ClientConfig {
                base_url: Url::parse(&info.base_url).expect("url"),
                // Each process on its own would allow the whole budget.
                pacing: PacingConfig {
                    burst,
                    interval,
                    ..PacingConfig::default()
                },
                ..ClientConfig::default()
            },
            Arc::new(budget),
        )
        .expect("client");
        let conns: HashMap<String, Connection> = [(
            "default".to_owned(),
            Connection {
                auth: Auth::token_for(info.token.clone(), info.location_id.clone()),
                location_id: Some(info.location_id.clone()),
            },
        )]
        .into();
        apis.push(Arc::new(ClientApi::new(client, conns)));
    }
    let calls = (0..45).map(|i| {
        let api = apis[i % 3].clone();
        async move { api.call("default", op, json!({"pageLimit": 1})).await }
    });
    let results = futures::future::join_all(calls).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let max = sandbox.max_window_attempts(&info.location_id);
    assert!(
        max <= burst,
        "the sandbox saw {max} requests within one window (budget {burst})"
    );
    assert!(max >= burst / 2, "the budget was used ({max})");
    sandbox.shutdown().await;
}

crate::both_backends!(
    three_engines_run_each_event_once,
    a_poll_turn_is_taken_once_across_engines,
    a_schedule_tick_fires_once_across_engines,
    a_shared_budget_holds_across_clients,
);
