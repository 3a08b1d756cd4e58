//! Crash recovery: `hlbridge serve` runs as a child process against an in-process sandbox,
//! is killed with SIGKILL in the middle of a burst of app events, and restarted on the same
//! data directory. Every event the engine accepted (answered 2xx) — and every event the app
//! resends because its POST failed — must be applied exactly once as the sandbox sees it,
//! with no run left unfinished.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use hlbridge_engine::{RunFilter, RunState, SqliteStore, Store};
use hlbridge_sandbox::ratelimit::RateLimitConfig;
use hlbridge_sandbox::{Sandbox, SandboxConfig, StartupInfo};
use serde_json::{Value, json};

/// Events in the burst.
const EVENTS: usize = 300;
/// Contacts the events tag.
const CONTACTS: usize = 10;
/// The child is killed once this many events were accepted.
const KILL_AFTER: usize = 100;
/// Concurrent senders.
const SENDERS: usize = 8;

const FLOW: &str = r#"
id = "tag_events"
description = "Each app event adds its own tag to a contact"

[trigger]
type = "app_webhook"
secret = "crash-secret"
auth = "bearer"
dedupe_key = "{{ event.id }}"

[[steps]]
id = "tag"
type = "highlevel"
operation = "contacts.tags.add"
params = { contactId = "{{ event.contact }}", tags = ["{{ event.tag }}"] }

[retry]
max_attempts = 20
base_delay_ms = 50
max_delay_ms = 500
"#;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "hlbridge-cli-{tag}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A running `hlbridge serve` child.
struct Serve {
    child: Child,
    base_url: String,
}

/// Starts `hlbridge serve` on a free port and waits for the URL it prints.
fn start_serve(data: &Path, flows: &Path, info: &StartupInfo) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hlbridge"))
        .arg("serve")
        .arg("--data")
        .arg(data)
        .arg("--flows")
        .arg(flows)
        .args([
            "--port",
            "0",
            "--workers",
            "4",
            "--lease",
            "2s",
            "--no-pacing",
        ])
        .args(["--highlevel-base-url", &info.base_url])
        .args(["--token", &info.token])
        .args(["--location-id", &info.location_id])
        .env_remove("HLBRIDGE_DATA")
        .env_remove("HLBRIDGE_BASE_URL")
        .env_remove("HLBRIDGE_TOKEN")
        .env_remove("HLBRIDGE_APP_SECRETS")
        .env("HLBRIDGE_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn hlbridge serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let base_url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(url) = line.strip_prefix("hlbridge serving on ") {
                    break url.trim().to_owned();
                }
            }
            other => {
                let _ = child.kill();
                panic!("hlbridge serve ended before serving: {other:?}");
            }
        }
    };
    // Keep reading so the child never writes into a closed pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Serve { child, base_url }
}

async fn create_contact(http: &reqwest::Client, info: &StartupInfo, i: usize) -> String {
    let resp = http
        .post(format!("{}/contacts/", info.base_url))
        .bearer_auth(&info.token)
        .header("Version", "2021-07-28")
        .json(&json!({
            "locationId": info.location_id,
            "email": format!("crash{i}@example.com"),
            "firstName": format!("Crash {i}"),
        }))
        .send()
        .await
        .expect("create contact");
    assert!(
        resp.status().is_success(),
        "create contact: {}",
        resp.status()
    );
    let v: Value = resp.json().await.expect("json");
    v["contact"]["id"].as_str().expect("id").to_owned()
}

fn event(i: usize, contacts: &[String]) -> Value {
    json!({
        "id": format!("evt-{i}"),
        "contact": contacts[i % contacts.len()],
        "tag": format!("evt-{i:04}"),
    })
}

/// Posts one event; whether it got a 2xx.
async fn send(http: &reqwest::Client, base_url: &str, body: &Value) -> bool {
    match http
        .post(format!("{base_url}/hooks/app/tag_events"))
        .bearer_auth("crash-secret")
        .json(body)
        .send()
        .await
    {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    }
}

/// `evt-*` tags on each contact, as the sandbox holds them.
fn tags_by_contact(sandbox: &Sandbox, contacts: &[String]) -> BTreeMap<String, Vec<String>> {
    contacts
        .iter()
        .map(|c| {
            let tags = sandbox
                .doc("contact", c)
                .and_then(|d| d["tags"].as_array().cloned())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .filter(|t| t.starts_with("evt-"))
                .collect();
            (c.clone(), tags)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_engine_applies_every_accepted_event_exactly_once_after_restart() {
    let mut cfg = SandboxConfig::for_tests();
    cfg.rate_limit = RateLimitConfig {
        enabled: false,
        ..RateLimitConfig::default()
    };
    let sandbox = Sandbox::start(cfg).await.expect("sandbox");
    let info = sandbox.info();
    let http = reqwest::Client::new();
    let mut contacts = Vec::new();
    for i in 0..CONTACTS {
        contacts.push(create_contact(&http, &info, i).await);
    }
    // Slow HighLevel down so the kill lands with runs queued and in flight.
    let resp = http
        .post(format!("{}/faults", info.admin_url))
        .bearer_auth(&info.admin_token)
        .json(&json!({"route": "contacts.tags.add", "latencyMs": 250}))
        .send()
        .await
        .expect("fault");
    assert!(resp.status().is_success());

    let dir = temp_dir("crash");
    let data = dir.join("data");
    let flows = dir.join("flows");
    std::fs::create_dir_all(&flows).expect("flows dir");
    std::fs::write(flows.join("tag_events.toml"), FLOW).expect("flow file");

    // The burst, killed mid-way.
    let first = start_serve(&data, &flows, &info);
    let url = first.base_url.clone();
    let child = Mutex::new(Some(first.child));
    let accepted_count = AtomicUsize::new(0);
    let events: Vec<Value> = (0..EVENTS).map(|i| event(i, &contacts)).collect();
    let results: Vec<(usize, bool)> = futures::stream::iter(events.iter().enumerate())
        .map(|(i, body)| {
            let (http, url, child, accepted_count) = (&http, &url, &child, &accepted_count);
            async move {
                let ok = send(http, url, body).await;
                if ok && accepted_count.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                    let taken = child.lock().ok().and_then(|mut c| c.take());
                    if let Some(mut c) = taken {
                        // SIGKILL: no shutdown code runs.
                        c.kill().expect("kill");
                        let status = c.wait().expect("wait");
                        assert!(!status.success());
                    }
                }
                (i, ok)
            }
        })
        .buffer_unordered(SENDERS)
        .collect()
        .await;
    assert!(
        child.lock().map(|c| c.is_none()).unwrap_or(false),
        "the child was killed mid-burst"
    );
    let accepted: BTreeSet<usize> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
    let failed: Vec<usize> = results.iter().filter(|r| !r.1).map(|r| r.0).collect();
    assert!(accepted.len() >= KILL_AFTER && !failed.is_empty());
    let applied_at_kill: usize = tags_by_contact(&sandbox, &contacts)
        .values()
        .map(Vec::len)
        .sum();
    assert!(
        applied_at_kill < accepted.len(),
        "the kill interrupted accepted work ({applied_at_kill} applied of {} accepted)",
        accepted.len()
    );

    // Every 2xx was durable: its run is in the store, most of them unfinished.
    let store = SqliteStore::open(&data).await.expect("store");
    let at_kill = store.count_runs(Some("tag_events")).await.expect("counts");
    let stored: u64 = at_kill.iter().map(|(_, n)| n).sum();
    let unfinished: u64 = at_kill
        .iter()
        .filter(|(s, _)| !s.is_final())
        .map(|(_, n)| n)
        .sum();
    assert!(
        stored >= accepted.len() as u64,
        "{stored} runs stored for {} accepted events",
        accepted.len()
    );
    assert!(unfinished > 0, "{at_kill:?}");
    eprintln!(
        "killed after {} accepted ({applied_at_kill} applied; runs {at_kill:?}); {} to resend",
        accepted.len(),
        failed.len()
    );

    // Restart on the same data directory; the app resends what did not get a 2xx.
    let mut second = start_serve(&data, &flows, &info);
    for i in &failed {
        let mut tries = 0;
        while !send(&http, &second.base_url, &events[*i]).await {
            tries += 1;
            assert!(tries < 50, "event {i} is refused after the restart");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Every event applied; every run finished.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counts = store.count_runs(Some("tag_events")).await.expect("counts");
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        let finished: u64 = counts
            .iter()
            .filter(|(s, _)| s.is_final())
            .map(|(_, n)| n)
            .sum();
        if total == EVENTS as u64 && finished == total {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "runs did not all finish: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counts = store.count_runs(Some("tag_events")).await.expect("counts");
    assert_eq!(counts, vec![(RunState::Succeeded, EVENTS as u64)]);
    let runs = store
        .list_runs(&RunFilter {
            flow_id: Some("tag_events".into()),
            state: None,
            limit: (EVENTS * 2) as u32,
        })
        .await
        .expect("runs");
    assert_eq!(runs.len(), EVENTS, "one run per event");
    assert!(runs.iter().all(|r| r.state == RunState::Succeeded));
    let mut event_ids = BTreeSet::new();
    for r in &runs {
        let d = store.run_detail(r.id).await.expect("detail").expect("run");
        assert!(
            event_ids.insert(d.event.dedupe_key.clone()),
            "two runs for {}",
            d.event.dedupe_key
        );
    }

    // As the sandbox sees it: each event's tag on its contact, once, and nothing else.
    let tags = tags_by_contact(&sandbox, &contacts);
    for (i, e) in events.iter().enumerate() {
        let contact = e["contact"].as_str().unwrap_or_default();
        let tag = e["tag"].as_str().unwrap_or_default();
        let n = tags[contact].iter().filter(|t| *t == tag).count();
        assert_eq!(n, 1, "event {i} applied {n} times");
    }
    let total: usize = tags.values().map(Vec::len).sum();
    assert_eq!(total, EVENTS, "no tag beyond the events'");

    // `serve` counts its HighLevel calls for /metrics (and the dashboard): at least one
    // successful call per event the restarted engine applied.
    let metrics = http
        .get(format!("{}/metrics", second.base_url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let ok_calls: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("hlbridge_highlevel_calls_total{status=\"2"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(ok_calls > 0, "no HighLevel calls counted:\n{metrics}");

    // A graceful stop (SIGTERM) ends the restarted engine with success.
    let pid = second.child.id().to_string();
    let term = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let status = second.child.wait().expect("wait");
    assert!(status.success(), "graceful shutdown: {status:?}");
    store.close().await;
    sandbox.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
