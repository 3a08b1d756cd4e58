//! Scale-out on PostgreSQL: `hlbridge serve --no-workers` takes app events in, three
//! `hlbridge worker` processes execute them against an in-process sandbox whose rate limit
//! is 20 requests per 2 s, and one worker is killed with SIGKILL in the middle of the burst.
//! Every event still completes exactly once (one run each, all succeeded, each tag on its
//! contact once), and the sandbox never saw more than the budget within any window: the
//! three workers share the location's budget through the database.
//!
//! Needs a PostgreSQL server (`HLBRIDGE_TEST_DATABASE_URL`, default
//! `postgres://hlbridge:hlbridge@127.0.0.1:5432/hlbridge_test`); without one it says
//! `skipping PostgreSQL tests: no server at …` and passes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use hlbridge_engine::store::{Database, PostgresOptions, PostgresStore};
use hlbridge_engine::{RunFilter, RunState, Store};
use hlbridge_sandbox::ratelimit::RateLimitConfig;
use hlbridge_sandbox::{Sandbox, SandboxConfig, StartupInfo};
use serde_json::{Value, json};

const DEFAULT_URL: &str = "postgres://hlbridge:hlbridge@127.0.0.1:5432/hlbridge_test";

/// The location's budget, as the sandbox enforces it and the workers are told.
const BURST: u32 = 20;
const INTERVAL: Duration = Duration::from_secs(2);
const RATE: &str = "20/2s";

const EVENTS: usize = 120;
const CONTACTS: usize = 8;
/// The first worker is killed once this many events are applied.
const KILL_AFTER: usize = 40;

const FLOW: &str = r#"
id = "tag_events"
description = "Each app event adds its own tag to a contact"

[trigger]
type = "app_webhook"
secret = "cluster-secret"
auth = "bearer"
dedupe_key = "{{ event.id }}"

[[steps]]
id = "tag"
type = "highlevel"
operation = "contacts.tags.add"
params = { contactId = "{{ event.contact }}", tags = ["{{ event.tag }}"] }

[retry]
max_attempts = 30
base_delay_ms = 50
max_delay_ms = 500
"#;

fn test_url() -> String {
    std::env::var("HLBRIDGE_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

/// A fresh schema in the test database, opened; `None` (with the notice) when no server
/// answers.
async fn fresh_store() -> Option<(String, PostgresStore)> {
    let url = test_url();
    let schema = format!(
        "hlt_{}_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let options = PostgresOptions {
        max_connections: 4,
        schema: Some(schema.clone()),
        listen: false,
        ..PostgresOptions::default()
    };
    let shown = Database::resolve(Some(&url), None)
        .map(|d| d.describe())
        .unwrap_or_default();
    match tokio::time::timeout(
        Duration::from_secs(10),
        PostgresStore::connect_with(&url, &options),
    )
    .await
    {
        Ok(Ok(store)) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            Some((
                format!("{url}{sep}options=-c%20search_path%3D{schema}"),
                store,
            ))
        }
        Ok(Err(e)) => {
            notice(&format!(
                "skipping PostgreSQL tests: no server at {shown} ({e})"
            ));
            None
        }
        Err(_) => {
            notice(&format!(
                "skipping PostgreSQL tests: no server at {shown} (no answer in 10 s)"
            ));
            None
        }
    }
}

fn notice(msg: &str) {
    // Straight to the process's stderr: the harness captures only `eprintln!`.
    let _ = writeln!(std::io::stderr(), "\n{msg}\n");
}

/// Starts `hlbridge <args>` and waits for a stdout line starting with `ready`; returns the
/// child and the rest of that line.
fn start(args: &[String], ready: &str) -> (Child, String) {
    start_with(args, ready, &[])
}

/// [`start`] with extra environment variables.
fn start_with(args: &[String], ready: &str, env: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hlbridge"))
        .args(args)
        .env_remove("HLBRIDGE_DATA")
        .env_remove("HLBRIDGE_DATABASE_URL")
        .env_remove("HLBRIDGE_BASE_URL")
        .env_remove("HLBRIDGE_TOKEN")
        .env_remove("HLBRIDGE_APP_SECRETS")
        .env_remove("HLBRIDGE_MASTER_KEY")
        .envs(env.iter().copied())
        .env("HLBRIDGE_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn hlbridge");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let rest = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.strip_prefix(ready) {
                    break rest.trim().to_owned();
                }
            }
            other => {
                let _ = child.kill();
                panic!("hlbridge {args:?} ended before `{ready}`: {other:?}");
            }
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, rest)
}

fn common(url: &str, flows: &Path, info: &StartupInfo) -> Vec<String> {
    [
        "--database",
        url,
        "--flows",
        &flows.display().to_string(),
        "--highlevel-base-url",
        &info.base_url,
        "--token",
        &info.token,
        "--location-id",
        &info.location_id,
        "--rate-limit",
        RATE,
        "--lease",
        "2s",
        "--db-connections",
        "4",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

async fn create_contact(http: &reqwest::Client, info: &StartupInfo, i: usize) -> String {
    let resp = http
        .post(format!("{}/contacts/", info.base_url))
        .bearer_auth(&info.token)
        .header("Version", "2021-07-28")
        .json(&json!({
            "locationId": info.location_id,
            "email": format!("cluster{i}@example.com"),
            "firstName": format!("Cluster {i}"),
        }))
        .send()
        .await
        .expect("create contact");
    assert!(resp.status().is_success(), "{}", resp.status());
    let v: Value = resp.json().await.expect("json");
    v["contact"]["id"].as_str().expect("id").to_owned()
}

fn applied(sandbox: &Sandbox, contacts: &[String]) -> BTreeMap<String, Vec<String>> {
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
async fn three_workers_share_the_queue_and_the_budget_and_survive_a_sigkill() {
    let Some((url, store)) = fresh_store().await else {
        return;
    };
    let sandbox = Sandbox::start(SandboxConfig {
        rate_limit: RateLimitConfig {
            enabled: true,
            burst: BURST,
            interval: INTERVAL,
            daily: 200_000,
        },
        ..SandboxConfig::for_tests()
    })
    .await
    .expect("sandbox");
    let info = sandbox.info();
    let http = reqwest::Client::new();
    let mut contacts = Vec::new();
    for i in 0..CONTACTS {
        contacts.push(create_contact(&http, &info, i).await);
    }

    let dir = std::env::temp_dir().join(format!("hlbridge-cluster-{}", uuid::Uuid::new_v4()));
    let flows = dir.join("flows");
    std::fs::create_dir_all(&flows).expect("flows dir");
    std::fs::write(flows.join("tag_events.toml"), FLOW).expect("flow");

    // Ingress only; the workers run the queue.
    let mut serve_args = vec!["serve".to_owned()];
    serve_args.extend(common(&url, &flows, &info));
    serve_args.extend(["--port", "0", "--no-workers"].map(str::to_owned));
    let (mut serve, base_url) = start(&serve_args, "hlbridge serving on ");

    // Let the window of the contact creations pass before the workers send anything.
    tokio::time::sleep(INTERVAL + Duration::from_millis(200)).await;
    let mut workers = Vec::new();
    for w in 0..3 {
        let mut args = vec!["worker".to_owned()];
        args.extend(common(&url, &flows, &info));
        args.extend(
            [
                "--workers",
                "2",
                "--claim-batch",
                "4",
                "--name",
                &format!("w{w}"),
            ]
            .map(str::to_owned),
        );
        workers.push(start(&args, "hlbridge worker ").0);
    }

    // The burst: every event accepted by ingress.
    let events: Vec<Value> = (0..EVENTS)
        .map(|i| {
            json!({
                "id": format!("evt-{i}"),
                "contact": contacts[i % contacts.len()],
                "tag": format!("evt-{i:04}"),
            })
        })
        .collect();
    let accepted: Vec<bool> = futures::stream::iter(events.iter())
        .map(|body| {
            let (http, base_url) = (&http, &base_url);
            async move {
                http.post(format!("{base_url}/hooks/app/tag_events"))
                    .bearer_auth("cluster-secret")
                    .json(body)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(accepted.iter().all(|a| *a), "ingress accepted every event");

    // SIGKILL the first worker mid-burst.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done: usize = applied(&sandbox, &contacts).values().map(Vec::len).sum();
        if done >= KILL_AFTER {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {done} events applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut killed = workers.remove(0);
    killed.kill().expect("SIGKILL");
    let status = killed.wait().expect("wait");
    assert!(!status.success());
    let at_kill = store.count_runs(Some("tag_events")).await.expect("counts");
    assert!(
        at_kill.iter().any(|(s, n)| !s.is_final() && *n > 0),
        "the kill interrupted the burst: {at_kill:?}"
    );

    // The two survivors finish everything, including the killed worker's runs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let counts = store.count_runs(Some("tag_events")).await.expect("counts");
        if counts == vec![(RunState::Succeeded, EVENTS as u64)] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "runs did not all finish: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runs = store
        .list_runs(&RunFilter {
            flow_id: Some("tag_events".into()),
            state: None,
            limit: (EVENTS * 2) as u32,
        })
        .await
        .expect("runs");
    assert_eq!(runs.len(), EVENTS, "one run per event");
    let by_worker: BTreeSet<String> = runs
        .iter()
        .filter_map(|r| r.worker_id.as_deref())
        .map(|w| w.split('-').next().unwrap_or(w).to_owned())
        .collect();
    assert!(
        by_worker.len() >= 2,
        "the survivors shared the work: {by_worker:?}"
    );
    let taken_over = runs.iter().filter(|r| r.attempts > 1).count();
    eprintln!(
        "runs at the kill: {at_kill:?}; finished by {by_worker:?}; {taken_over} run(s) needed more than one attempt"
    );

    // As the sandbox sees it: each event's tag on its contact, once, and nothing else.
    let tags = applied(&sandbox, &contacts);
    for (i, e) in events.iter().enumerate() {
        let contact = e["contact"].as_str().unwrap_or_default();
        let tag = e["tag"].as_str().unwrap_or_default();
        let n = tags[contact].iter().filter(|t| *t == tag).count();
        assert_eq!(n, 1, "event {i} applied {n} times");
    }
    assert_eq!(tags.values().map(Vec::len).sum::<usize>(), EVENTS);

    // The budget held across the three processes.
    let max = sandbox.max_window_attempts(&info.location_id);
    assert!(
        max <= BURST,
        "the sandbox saw {max} requests within {INTERVAL:?} (budget {BURST})"
    );
    let stats: Value = http
        .get(format!(
            "{}/stats/locations/{}",
            info.admin_url, info.location_id
        ))
        .bearer_auth(&info.admin_token)
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    eprintln!("sandbox stats for the location: {stats}");

    // Graceful stops.
    for mut w in workers {
        let pid = w.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = w.wait().expect("wait worker");
        assert!(status.success(), "worker stopped gracefully: {status:?}");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status();
    assert!(serve.wait().expect("wait serve").success());
    store.close().await;
    sandbox.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the authorization-code flow against the sandbox as a person would (approve the
/// location; the sandbox redirects to a loopback callback) and exchanges the code.
async fn authorize(sb: &Sandbox) -> hlbridge_highlevel::OAuthTokens {
    use hlbridge_engine::security::Secret;
    use hlbridge_engine::security::oauth::{self, CallbackListener};
    let info = sb.info();
    let base = hlbridge_highlevel::Url::parse(&info.base_url).expect("url");
    let listener = CallbackListener::bind(0).await.expect("bind");
    let redirect = listener.redirect_uri().to_owned();
    let url = oauth::authorize_url(
        &oauth::endpoint(&base, "/oauth/chooselocation").expect("endpoint"),
        &info.oauth.client_id,
        &redirect,
        &["contacts.readonly".to_owned(), "contacts.write".to_owned()],
        listener.state(),
    );
    let wait = tokio::spawn(listener.wait(Duration::from_secs(60)));
    let page = reqwest::get(format!("{url}&approve=1&location_id={}", info.location_id))
        .await
        .expect("approve");
    assert_eq!(page.status().as_u16(), 200);
    let code = wait.await.expect("join").expect("code");
    oauth::exchange_code(
        &oauth::http_client(),
        &base,
        &info.oauth.client_id,
        &Secret::new(info.oauth.client_secret.clone()),
        &code,
        &redirect,
    )
    .await
    .expect("exchange")
}

/// Three worker processes find the stored OAuth connection's access token expired under a
/// burst of events: exactly one refresh happens across the cluster (one committed token
/// version, one `connection.refreshed` audit entry), HighLevel's rotation of the refresh
/// token breaks nothing, and every event is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_refresh_an_expired_token_once() {
    use hlbridge_engine::security::{Actor, MasterKey, Secret, Security, SecurityConfig};
    use hlbridge_engine::store::security::AuditFilter;

    let Some((url, store)) = fresh_store().await else {
        return;
    };
    let mut cfg = SandboxConfig::for_tests();
    cfg.rate_limit.enabled = false;
    cfg.access_token_ttl = Duration::from_secs(3600);
    let sandbox = Sandbox::start(cfg).await.expect("sandbox");
    let info = sandbox.info();
    let http = reqwest::Client::new();
    let mut contacts = Vec::new();
    for i in 0..4 {
        contacts.push(create_contact(&http, &info, 100 + i).await);
    }

    // The connection, stored as `hlbridge connect` would, with an access token that has
    // already expired: the first call anywhere must refresh it.
    let dir = std::env::temp_dir().join(format!("hlbridge-refresh-{}", uuid::Uuid::new_v4()));
    let flows = dir.join("flows");
    std::fs::create_dir_all(&flows).expect("flows dir");
    std::fs::write(flows.join("tag_events.toml"), FLOW).expect("flow");
    let master = MasterKey::generate().to_base64();
    let security = Security::new(
        hlbridge_engine::Store::security(&store).expect("security store"),
        &dir,
        SecurityConfig::default(),
    )
    .with_master_key(MasterKey::from_base64(master.expose()).expect("key"));
    let conns = security.connections().await.expect("connections");
    let mut tokens = authorize(&sandbox).await;
    let original = tokens.access_token.clone();
    tokens.expires_at = time::OffsetDateTime::now_utc() - Duration::from_secs(1);
    conns
        .create_oauth(
            "default",
            &hlbridge_highlevel::Url::parse(&info.base_url).expect("url"),
            &info.oauth.client_id,
            &Secret::new(info.oauth.client_secret.clone()),
            &tokens,
            &Actor::cli(),
        )
        .await
        .expect("store the connection");

    // No --token: every process uses the stored connection.
    let env = [("HLBRIDGE_MASTER_KEY", master.expose())];
    let base_args = |cmd: &str, data: &str| -> Vec<String> {
        [
            cmd,
            "--database",
            &url,
            "--data",
            data,
            "--flows",
            &flows.display().to_string(),
            "--highlevel-base-url",
            &info.base_url,
            "--lease",
            "5s",
            "--db-connections",
            "4",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let mut serve_args = base_args("serve", &dir.join("serve").display().to_string());
    serve_args.extend(["--port", "0", "--no-workers"].map(str::to_owned));
    let (mut serve, base_url) = start_with(&serve_args, "hlbridge serving on ", &env);
    let mut workers = Vec::new();
    for w in 0..3 {
        let mut args = base_args("worker", &dir.join(format!("w{w}")).display().to_string());
        args.extend(["--workers", "2", "--name", &format!("r{w}")].map(str::to_owned));
        workers.push(start_with(&args, "hlbridge worker ", &env).0);
    }

    let n = 30;
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "id": format!("evt-r{i}"),
                "contact": contacts[i % contacts.len()],
                "tag": format!("evt-r{i:03}"),
            })
        })
        .collect();
    let accepted: Vec<bool> = futures::future::join_all(events.iter().map(|body| {
        http.post(format!("{base_url}/hooks/app/tag_events"))
            .bearer_auth("cluster-secret")
            .json(body)
            .send()
    }))
    .await
    .into_iter()
    .map(|r| r.map(|r| r.status().is_success()).unwrap_or(false))
    .collect();
    assert!(accepted.iter().all(|a| *a));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let counts = store.count_runs(Some("tag_events")).await.expect("counts");
        if counts == vec![(RunState::Succeeded, n as u64)] {
            break;
        }
        assert!(
            !counts.iter().any(|(s, _)| *s == RunState::Dead),
            "runs failed: {counts:?}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "runs did not all finish: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runs = store
        .list_runs(&RunFilter {
            flow_id: Some("tag_events".into()),
            state: None,
            limit: 100,
        })
        .await
        .expect("runs");
    let by_worker: BTreeSet<String> = runs
        .iter()
        .filter_map(|r| r.worker_id.as_deref())
        .map(|w| w.split('-').next().unwrap_or(w).to_owned())
        .collect();
    let sec = hlbridge_engine::Store::security(&store).expect("security store");
    let row = sec
        .get_connection("default")
        .await
        .expect("get")
        .expect("connection");
    assert_eq!(row.status, "ok", "{:?}", row.status_reason);
    assert_eq!(row.token_version, 1, "exactly one refresh was committed");
    let refreshed: Vec<_> = sec
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == "connection.refreshed")
        .collect();
    assert_eq!(
        refreshed.len(),
        1,
        "one refresh across the cluster: {refreshed:?}"
    );
    let applied = applied(&sandbox, &contacts);
    assert_eq!(applied.values().map(Vec::len).sum::<usize>(), n);
    eprintln!(
        "{n} runs by {by_worker:?}; one refresh ({} → new token)",
        &original[..original.len().min(6)]
    );

    for mut w in workers {
        let _ = Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status();
        assert!(w.wait().expect("wait worker").success());
    }
    let _ = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status();
    assert!(serve.wait().expect("wait serve").success());
    store.close().await;
    sandbox.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
