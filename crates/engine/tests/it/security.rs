//! Connections and security against the in-process sandbox's OAuth endpoints: the
//! authorization-code flow over a loopback callback, refresh single-flight across two
//! "processes" (separate store handles on one database), a revoked refresh token breaking a
//! connection and pausing its flow, agency installs with per-location tokens (including a
//! location installed later), scopes fed to validation, and no secret at rest or in logs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hlbridge_engine::security::oauth::{self, CallbackListener, OAuthError};
use hlbridge_engine::security::{
    Actor, AppAuth, ConnectionKind, Connections, Health, MasterKey, Role, Secret, Security,
    SecurityConfig,
};
use hlbridge_engine::store::security::{AuditFilter, SecretRef, SecurityStore};
use hlbridge_engine::triggers::sign_hmac_sha256;
use hlbridge_engine::{HighLevelApi, RunState};
use hlbridge_highlevel::{Client, ClientConfig, OAuthTokens, Url, operations};
use hlbridge_sandbox::{Sandbox, SandboxConfig};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::backends::{TestStore, engine_at, open_at};
use crate::fake::{config, temp_dir};

async fn sandbox(tweak: impl FnOnce(&mut SandboxConfig)) -> Sandbox {
    let mut cfg = SandboxConfig::for_tests();
    cfg.rate_limit.enabled = false;
    cfg.access_token_ttl = Duration::from_secs(3600);
    tweak(&mut cfg);
    Sandbox::start(cfg).await.expect("sandbox")
}

/// A "process": its own store handle and security services on the shared data directory.
async fn process(dir: &Path, master: &Secret) -> (TestStore, Security, Connections) {
    let store = open_at(dir).await;
    let sec = Security::new(store.security(), dir, SecurityConfig::default())
        .with_master_key(MasterKey::from_base64(master.expose()).expect("key"));
    let conns = sec.connections().await.expect("connections");
    (store, sec, conns)
}

/// The authorization-code flow as a person does it: the authorize URL is opened, the
/// location (or the agency) approved, the sandbox redirects to the loopback callback.
async fn authorize(sb: &Sandbox, scopes: &[&str], agency: bool) -> (OAuthTokens, String) {
    let info = sb.info();
    let base = Url::parse(&info.base_url).expect("url");
    let listener = CallbackListener::bind(0).await.expect("bind");
    let redirect = listener.redirect_uri().to_owned();
    let url = oauth::authorize_url(
        &oauth::endpoint(&base, "/oauth/chooselocation").expect("endpoint"),
        &info.oauth.client_id,
        &redirect,
        &scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        listener.state(),
    );
    let wait = tokio::spawn(listener.wait(Duration::from_secs(60)));
    let approve = if agency {
        format!("{url}&approve=1&user_type=Company")
    } else {
        format!("{url}&approve=1&location_id={}", info.location_id)
    };
    let page = reqwest::get(approve).await.expect("approve");
    assert_eq!(page.status().as_u16(), 200, "the callback answered");
    let code = wait.await.expect("join").expect("code");
    let tokens = oauth::exchange_code(
        &oauth::http_client(),
        &base,
        &info.oauth.client_id,
        &Secret::new(info.oauth.client_secret.clone()),
        &code,
        &redirect,
    )
    .await
    .expect("exchange");
    (tokens, info.base_url.clone())
}

fn client(base: &str) -> Client {
    Client::new(ClientConfig {
        base_url: Url::parse(base).expect("url"),
        ..ClientConfig::default()
    })
    .expect("client")
}

async fn audit_actions(store: &dyn SecurityStore, action: &str) -> Vec<Value> {
    store
        .list_audit(&AuditFilter {
            action: Some(action.into()),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_iter()
        .map(|r| json!({"actor": r.actor, "target": r.target, "details": r.details}))
        .collect()
}

const SCOPES: &[&str] = &["contacts.readonly", "contacts.write"];

async fn two_processes_refresh_exactly_once_and_the_old_refresh_token_dies() {
    let sb = sandbox(|_| {}).await;
    let info = sb.info();
    let dir = temp_dir("sec-refresh");
    let master = MasterKey::generate().to_base64();
    let (store_a, _sec_a, conns_a) = process(&dir, &master).await;
    let (mut tokens, base) = authorize(&sb, SCOPES, false).await;
    assert_eq!(
        tokens.location_id.as_deref(),
        Some(info.location_id.as_str())
    );
    let original = tokens.clone();
    // Stored as already expired: the first call anywhere must refresh.
    tokens.expires_at = OffsetDateTime::now_utc() - Duration::from_secs(1);
    let created = conns_a
        .create_oauth(
            "hl",
            &Url::parse(&base).expect("url"),
            &info.oauth.client_id,
            &Secret::new(info.oauth.client_secret.clone()),
            &tokens,
            &Actor::cli(),
        )
        .await
        .expect("create");
    assert_eq!(created.kind, ConnectionKind::HighlevelOauth);
    assert!(matches!(created.health, Health::Expiring { .. }));
    assert_eq!(
        created.config.scopes.as_deref(),
        Some(&["contacts.readonly".to_owned(), "contacts.write".to_owned()][..])
    );

    let (store_b, _sec_b, conns_b) = process(&dir, &master).await;
    let sources = [
        conns_a.token_source("hl").await.expect("source a"),
        conns_b.token_source("hl").await.expect("source b"),
    ];
    use hlbridge_highlevel::TokenSource;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let src = sources[i % 2].clone();
        tasks.push(tokio::spawn(async move { src.access_token().await }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.expect("join").expect("token"));
    }
    assert!(got.iter().all(|t| *t == got[0]), "everyone uses one token");
    assert_ne!(got[0], original.access_token);
    let row = store_a
        .get_connection("hl")
        .await
        .expect("get")
        .expect("row");
    assert_eq!(row.token_version, 1, "exactly one refresh was committed");
    assert_eq!(row.status, "ok");
    let refreshed = audit_actions(&*store_a, "connection.refreshed").await;
    assert_eq!(refreshed.len(), 1, "{refreshed:?}");
    assert_eq!(refreshed[0]["target"], "hl");
    // HighLevel rotated the refresh token: the one we started with no longer works.
    let dead = oauth::refresh(
        &oauth::http_client(),
        &Url::parse(&base).expect("url"),
        &info.oauth.client_id,
        &Secret::new(info.oauth.client_secret.clone()),
        &original,
    )
    .await;
    assert!(matches!(dead, Err(OAuthError::Rejected(_))), "{dead:?}");

    // Both "processes" call HighLevel through the stored connection.
    let op = operations::find("contacts.list").expect("op");
    for conns in [&conns_a, &conns_b] {
        let api = conns.api(client(&base));
        let body = api.call("hl", op, json!({})).await.expect("contacts.list");
        assert!(body.get("contacts").is_some(), "{body}");
    }
    let listed = conns_b.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].health, Health::Ok);
    assert_eq!(listed[0].token_version, 1);
    store_a.close().await;
    store_b.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

const POLLING: &str = r#"
id = "pollme"
connection = "hl"

[trigger]
type = "highlevel_poll"
operation = "contacts.list"
interval_minutes = 5

[[steps]]
id = "ok"
type = "filter"
condition = "true"
"#;

const PAUSABLE: &str = r#"
id = "pausable"
connection = "hl"

[trigger]
type = "app_webhook"
secret = "s"

[[steps]]
id = "list"
type = "highlevel"
operation = "contacts.list"
"#;

async fn a_revoked_refresh_token_breaks_the_connection_and_pauses_its_flows() {
    let sb = sandbox(|_| {}).await;
    let info = sb.info();
    let mut cfg = config("sec-broken");
    let dir = cfg.data_dir.clone();
    let master = MasterKey::generate().to_base64();
    let (store, sec, conns) = process(&dir, &master).await;
    let base = Url::parse(&info.base_url).expect("url");
    let secret = Secret::new(info.oauth.client_secret.clone());
    let (mut tokens, _) = authorize(&sb, SCOPES, false).await;
    tokens.expires_at = OffsetDateTime::now_utc() - Duration::from_secs(1);
    conns
        .create_oauth(
            "hl",
            &base,
            &info.oauth.client_id,
            &secret,
            &tokens,
            &Actor::cli(),
        )
        .await
        .expect("create");
    // Someone else uses the stored refresh token (e.g. a copy of the app elsewhere): the
    // sandbox rotates it, so ours is dead.
    let id = store
        .get_connection("hl")
        .await
        .expect("get")
        .expect("row")
        .id;
    let vault = sec.vault().await.expect("vault");
    let rt = vault
        .get(&SecretRef::new("connections", &id, "refresh_token"))
        .await
        .expect("vault")
        .expect("refresh token");
    let mut stolen = tokens.clone();
    stolen.refresh_token = rt.expose().to_owned();
    oauth::refresh(
        &oauth::http_client(),
        &base,
        &info.oauth.client_id,
        &secret,
        &stolen,
    )
    .await
    .expect("out-of-band refresh");

    // The engine runs a flow through the stored connection.
    cfg.lease = Duration::from_secs(30);
    let api: Arc<dyn HighLevelApi> = Arc::new(conns.api(client(&info.base_url)));
    let engine = engine_at(cfg, api).await;
    let flow = hlbridge_engine::validate::compile_source("p.toml", PAUSABLE, &Default::default())
        .unwrap_or_else(|d| panic!("{d:?}"));
    let poller = hlbridge_engine::validate::compile_source("q.toml", POLLING, &Default::default())
        .unwrap_or_else(|d| panic!("{d:?}"));
    engine.add_flows(vec![flow, poller]).await.expect("flows");
    let run = engine
        .enqueue("pausable", "e1", json!({}))
        .await
        .expect("enqueue")
        .expect("new");
    let d = engine.execute_run(run).await.expect("execute");
    assert_eq!(d.run.state, RunState::Queued, "paused, not dead: {d:#?}");
    assert_eq!(d.run.attempts, 0, "the pause spends no attempt");
    let err = d.run.last_error.clone().unwrap_or_default();
    assert!(
        err.contains("paused") && err.contains("`hl` is broken"),
        "{err}"
    );
    assert!(
        d.run
            .next_attempt_at
            .is_some_and(|t| t > OffsetDateTime::now_utc())
    );

    // The connection says why; the audit log has it; the engine knows.
    let listed = conns.get("hl").await.expect("get").expect("hl");
    match &listed.health {
        Health::Broken { reason } => assert!(reason.contains("refused"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let broken = audit_actions(&*store, "connection.broken").await;
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert_eq!(broken[0]["target"], "hl");
    assert_eq!(broken[0]["actor"], "token-refresh");
    assert!(engine.is_broken("hl").await.is_some());
    // Runs stay paused (deferred again) while it is broken.
    let d = engine.execute_run(run).await.expect("execute");
    assert_eq!((d.run.state, d.run.attempts), (RunState::Queued, 0));
    assert_eq!(
        audit_actions(&*store, "connection.broken").await.len(),
        1,
        "no loop"
    );

    // Authorized again: the flow resumes.
    let (fresh, _) = authorize(&sb, SCOPES, false).await;
    conns
        .create_oauth(
            "hl",
            &base,
            &info.oauth.client_id,
            &secret,
            &fresh,
            &Actor::cli(),
        )
        .await
        .expect("reconnect");
    assert!(engine.is_broken("hl").await.is_none());
    let d = engine.execute_run(run).await.expect("execute");
    assert_eq!(d.run.state, RunState::Succeeded, "{d:#?}");
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn agency_installs_mint_location_tokens_and_pick_up_new_locations() {
    let sb = sandbox(|_| {}).await;
    let info = sb.info();
    let dir = temp_dir("sec-agency");
    let master = MasterKey::generate().to_base64();
    let (store, _sec, conns) = process(&dir, &master).await;
    let scopes = [
        "contacts.readonly",
        "contacts.write",
        "oauth.readonly",
        "oauth.write",
        "locations.write",
    ];
    let (tokens, base) = authorize(&sb, &scopes, true).await;
    assert_eq!(tokens.user_type.as_deref(), Some("Company"));
    assert_eq!(tokens.company_id.as_deref(), Some(info.company_id.as_str()));
    let created = conns
        .create_oauth(
            "agency",
            &Url::parse(&base).expect("url"),
            &info.oauth.client_id,
            &Secret::new(info.oauth.client_secret.clone()),
            &tokens,
            &Actor::cli(),
        )
        .await
        .expect("create");
    assert!(!created.locations.is_empty(), "{created:?}");
    assert!(
        created
            .locations
            .iter()
            .all(|l| l.token_expires_at.is_some() && l.status == "ok"),
        "a token was minted for every installed location: {:?}",
        created.locations
    );
    let known: Vec<String> = created
        .locations
        .iter()
        .map(|l| l.location_id.clone())
        .collect();
    assert!(known.contains(&info.location_id));

    let api = conns.api(client(&base));
    let list = operations::find("contacts.list").expect("op");
    let body = api
        .call("agency", list, json!({"locationId": info.location_id}))
        .await
        .expect("location call with a minted location token");
    assert!(body.get("contacts").is_some());

    // A location installed later (created under the agency) is picked up on first use.
    let create = operations::find("locations.create").expect("op");
    let made = api
        .call(
            "agency",
            create,
            json!({"name": "Later Location", "companyId": info.company_id}),
        )
        .await
        .expect("agency call with the company token");
    let new_id = made
        .get("id")
        .or_else(|| made.pointer("/location/id"))
        .and_then(Value::as_str)
        .expect("new location id")
        .to_owned();
    assert!(!known.contains(&new_id));
    api.call("agency", list, json!({"locationId": new_id}))
        .await
        .expect("the new location works");
    let after = conns.get("agency").await.expect("get").expect("agency");
    assert!(
        after
            .locations
            .iter()
            .any(|l| l.location_id == new_id && l.token_expires_at.is_some()),
        "{:?}",
        after.locations
    );
    let picked = audit_actions(&*store, "connection.locations").await;
    assert!(
        picked.iter().any(|e| e["details"]["added"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(new_id)))),
        "{picked:?}"
    );
    // Location tokens are sealed too.
    let agency_id = store
        .get_connection("agency")
        .await
        .expect("get")
        .expect("row")
        .id;
    let sealed = store
        .get_secret(&SecretRef::new(
            "connection_locations",
            &format!("{agency_id}/{new_id}"),
            "access_token",
        ))
        .await
        .expect("get")
        .expect("sealed");
    assert!(sealed.ciphertext.starts_with("hlv1."));
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

const NEEDS_WRITE: &str = r#"
id = "tagger"
connection = "pit"

[trigger]
type = "app_webhook"
secret = "ecoapp"

[[steps]]
id = "tag"
type = "highlevel"
operation = "contacts.tags.add"
params = { contactId = "{{ event.id }}", tags = ["vip"] }
"#;

async fn stored_connections_feed_validation_with_their_scopes() {
    let dir = temp_dir("sec-scopes");
    let master = MasterKey::generate().to_base64();
    let (store, _sec, conns) = process(&dir, &master).await;
    conns
        .create_token(
            "pit",
            None,
            &Secret::new("pit-value"),
            Some("loc1"),
            Some(vec!["contacts.readonly".into()]),
            &Actor::cli(),
        )
        .await
        .expect("pit");
    conns
        .create_app(
            "ecoapp",
            Some(&Url::parse("http://127.0.0.1:9").expect("url")),
            &AppAuth::Basic {
                username: "u".into(),
                password: Secret::new("p"),
            },
            Some(&Secret::new("hmac-value-123")),
            &Actor::cli(),
        )
        .await
        .expect("app");
    let mut cfg = config("sec-scopes-engine");
    conns.apply_to_config(&mut cfg).await.expect("apply");
    assert_eq!(
        cfg.app_connections["ecoapp"].headers["Authorization"],
        "Basic dTpw"
    );
    assert_eq!(cfg.app_secrets["ecoapp"], "hmac-value-123");
    let shown = format!("{cfg:?}");
    assert!(
        !shown.contains("hmac-value-123") && !shown.contains("dTpw"),
        "Debug redacts secrets: {shown}"
    );
    let engine = engine_at(cfg, Arc::new(hlbridge_engine::api::NoHighLevel)).await;
    let d = hlbridge_engine::validate::compile_source(
        "tagger.toml",
        NEEDS_WRITE,
        &engine.validation_context(),
    )
    .expect_err("lacks a scope");
    assert!(
        d.iter()
            .any(|x| x.message.contains("lacks the scope `contacts.write`")),
        "{d:?}"
    );
    let f = hlbridge_engine::validate::compile_source("t.toml", NEEDS_WRITE, &Default::default())
        .expect("compiles without context");
    assert_eq!(
        hlbridge_engine::security::scopes::scopes_for_connection([&f], "pit"),
        vec!["contacts.write"]
    );
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A tracing writer that keeps everything in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Every form a secret could leak in: plain, and base64 (standard and URL-safe) at each of
/// the three alignments (the stable middle part of the encoding).
fn leak_forms(secret: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut out = vec![secret.as_bytes().to_vec()];
    for pad in 0..3 {
        let mut input = vec![b'x'; pad];
        input.extend_from_slice(secret.as_bytes());
        for enc in [
            STANDARD_NO_PAD.encode(&input),
            URL_SAFE_NO_PAD.encode(&input),
        ] {
            // Skip the characters mixed with the prefix and the last partial group.
            let skip = (pad * 4).div_ceil(3);
            let stable = enc.len().saturating_sub(skip + 4);
            if stable >= 12 {
                out.push(enc.as_bytes()[skip..skip + stable].to_vec());
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

const SCENARIO: &str = r#"
id = "sync"
connection = "hl"

[trigger]
type = "app_webhook"
secret = "ecoapp"

[[steps]]
id = "notify"
type = "http"
method = "POST"
connection = "ecoapp"
url = "/hooks/contact"
body = { email = "{{ event.email }}" }

[[steps]]
id = "up"
type = "highlevel"
operation = "contacts.upsert"
connection = "pit"
params = { email = "{{ event.email }}" }

[[steps]]
id = "list"
type = "highlevel"
operation = "contacts.list"
"#;

/// The test binary's global subscriber, capturing every log line in memory (a scoped one
/// misses events from callsites other tests' threads hit first).
fn log_capture() -> &'static Captured {
    static CAPTURED: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,hlbridge_engine=trace,hlbridge_highlevel=trace,hlbridge_sandbox=trace",
            ))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        captured
    })
}

#[test]
fn no_secret_at_rest_or_in_logs() {
    let captured = log_capture();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (dir, secrets) = rt.block_on(scenario());
    drop(rt);

    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("hlbridge.db") {
            files.push((name, std::fs::read(entry.path()).expect("read")));
        }
    }
    assert!(files.iter().any(|(n, _)| n == "hlbridge.db"));
    assert!(
        files
            .iter()
            .any(|(n, b)| n == "hlbridge.db-wal" && !b.is_empty()),
        "the WAL is searched too"
    );
    // The search finds what is there: the event payload is stored in plain text.
    assert!(
        files
            .iter()
            .any(|(_, b)| contains(b, b"leak.check@example.com")),
        "the search works"
    );
    let logs = captured.0.lock().map(|v| v.clone()).unwrap_or_default();
    assert!(
        contains(&logs, b"refreshed HighLevel OAuth token"),
        "the logs were captured: {}",
        String::from_utf8_lossy(&logs[..logs.len().min(3000)])
    );
    files.push(("logs".into(), logs));
    for (what, value) in &secrets {
        for form in leak_forms(value) {
            for (name, bytes) in &files {
                assert!(
                    !contains(bytes, &form),
                    "the {what} appears in {name} (as {:?})",
                    String::from_utf8_lossy(&form)
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs the scenario; returns the data directory and every secret used, by name.
async fn scenario() -> (std::path::PathBuf, Vec<(&'static str, String)>) {
    let pit = "pit-KNOWN-5ecr3t-private-integration";
    let sb = sandbox(|c| c.token = Some(pit.into())).await;
    let info = sb.info();
    let mut cfg = config("sec-leaks");
    cfg.network.allow_loopback = true;
    let dir = cfg.data_dir.clone();
    let master = MasterKey::generate().to_base64();
    let (store, sec, conns) = process(&dir, &master).await;
    let client_secret = info.oauth.client_secret.clone();
    let bearer = "app-bearer-KNOWN-s3cret-value";
    let hmac = "hmac-KNOWN-signing-s3cret";
    let password = "user-password-KNOWN-s3cret";

    // The app: checks the bearer secret.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let app = {
        use axum::routing::post;
        let seen = seen.clone();
        axum::Router::new().route(
            "/hooks/contact",
            post(move |h: HeaderMap| {
                let seen = seen.clone();
                async move {
                    let auth = h
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let ok = auth == "Bearer app-bearer-KNOWN-s3cret-value";
                    if let Ok(mut s) = seen.lock() {
                        s.push(auth);
                    }
                    if ok {
                        (axum::http::StatusCode::OK, axum::Json(json!({"ok": true})))
                    } else {
                        (
                            axum::http::StatusCode::UNAUTHORIZED,
                            axum::Json(json!({"ok": false})),
                        )
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app_addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // Connect everything.
    let cli = Actor::cli();
    let base = Url::parse(&info.base_url).expect("url");
    let (mut tokens, _) = authorize(&sb, SCOPES, false).await;
    let first_refresh = tokens.refresh_token.clone();
    let first_access = tokens.access_token.clone();
    tokens.expires_at = OffsetDateTime::now_utc() - Duration::from_secs(1);
    conns
        .create_oauth(
            "hl",
            &base,
            &info.oauth.client_id,
            &Secret::new(client_secret.clone()),
            &tokens,
            &cli,
        )
        .await
        .expect("oauth");
    conns
        .create_token(
            "pit",
            Some(&base),
            &Secret::new(pit),
            Some(&info.location_id),
            None,
            &cli,
        )
        .await
        .expect("pit");
    conns
        .create_app(
            "ecoapp",
            Some(&Url::parse(&format!("http://{app_addr}")).expect("url")),
            &AppAuth::Bearer(Secret::new(bearer)),
            Some(&Secret::new(hmac)),
            &cli,
        )
        .await
        .expect("app");
    let users = sec.users();
    users
        .add_user("ann", Role::Owner, Some(&Secret::new(password)), &cli)
        .await
        .expect("user");
    let session = users
        .authenticate_password("ann", &Secret::new(password), Some("127.0.0.1"))
        .await
        .expect("login");
    assert!(
        users
            .authenticate_password("ann", &Secret::new("not-the-password"), None)
            .await
            .is_err()
    );
    let api_token = users
        .create_token("ci", Role::Operator, None, &cli)
        .await
        .expect("token");

    // Run the flow: app webhook (HMAC) → app call (bearer) → HighLevel (PIT) → HighLevel
    // (OAuth, refreshed first).
    conns.apply_to_config(&mut cfg).await.expect("apply");
    let api: Arc<dyn HighLevelApi> = Arc::new(conns.api(client(&info.base_url)));
    let engine = engine_at(cfg, api).await;
    let flow = hlbridge_engine::validate::compile_source(
        "sync.toml",
        SCENARIO,
        &engine.validation_context(),
    )
    .unwrap_or_else(|d| panic!("{d:?}"));
    engine.add_flows(vec![flow]).await.expect("flows");
    let body = br#"{"email": "leak.check@example.com"}"#;
    let mut h = HeaderMap::new();
    h.insert(
        "x-signature",
        HeaderValue::from_str(&sign_hmac_sha256(hmac.as_bytes(), body)).expect("header"),
    );
    let run = engine
        .accept_app_webhook("sync", &h, body)
        .await
        .expect("accepted")
        .expect("run");
    let d = engine.execute_run(run).await.expect("execute");
    assert_eq!(d.run.state, RunState::Succeeded, "{d:#?}");
    assert_eq!(seen.lock().map(|s| s.len()).unwrap_or(0), 1);
    let history = serde_json::to_string(&d).expect("json");

    // Vault rotation re-encrypts it all; the refreshed tokens are secrets too.
    let vault = sec.vault().await.expect("vault");
    let report = vault.rotate().await.expect("rotate");
    assert_eq!(
        report.reencrypted, 6,
        "3 OAuth, 1 PIT, 2 app secrets: {report:?}"
    );
    let id = store
        .get_connection("hl")
        .await
        .expect("get")
        .expect("hl")
        .id;
    let get = |name: &'static str| {
        let vault = vault.clone();
        let id = id.clone();
        async move {
            vault
                .get(&SecretRef::new("connections", &id, name))
                .await
                .expect("vault")
                .expect("secret")
                .expose()
                .to_owned()
        }
    };
    let new_refresh = get("refresh_token").await;
    let new_access = get("access_token").await;
    assert_ne!(new_refresh, first_refresh, "the token was refreshed");
    let listed = serde_json::to_string(&conns.list().await.expect("list")).expect("json");
    let audit = serde_json::to_string(
        &hlbridge_engine::security::audit::list(&*store, &AuditFilter::default())
            .await
            .expect("audit"),
    )
    .expect("json");
    for (what, v) in [
        ("run history", &history),
        ("connection list", &listed),
        ("audit log", &audit),
    ] {
        for s in [
            pit,
            bearer,
            hmac,
            password,
            client_secret.as_str(),
            new_refresh.as_str(),
            new_access.as_str(),
        ] {
            assert!(!v.contains(s), "a secret is in the {what}");
        }
    }
    store.close().await;
    let secrets = vec![
        ("private integration token", pit.to_owned()),
        ("OAuth client secret", client_secret),
        ("first refresh token", first_refresh),
        ("first access token", first_access),
        ("refreshed refresh token", new_refresh),
        ("refreshed access token", new_access),
        ("app bearer secret", bearer.to_owned()),
        ("HMAC secret", hmac.to_owned()),
        ("user password", password.to_owned()),
        ("session token", session.token.expose().to_owned()),
        ("API token", api_token.token.expose().to_owned()),
        ("master key", master.expose().to_owned()),
    ];
    drop(engine);
    (dir, secrets)
}

async fn users_and_tokens_share_one_store_with_connections() {
    // The permission table as the admin API sees it, and a principal from each credential.
    let dir = temp_dir("sec-users");
    let store = open_at(&dir).await;
    let sec = Security::new(store.security(), &dir, SecurityConfig::default());
    let cli = Actor::cli();
    sec.users()
        .add_user(
            "olga",
            Role::Operator,
            Some(&Secret::new("operator-password")),
            &cli,
        )
        .await
        .expect("add");
    let s = sec
        .users()
        .authenticate_password("olga", &Secret::new("operator-password"), Some("::1"))
        .await
        .expect("login");
    let p = sec
        .users()
        .authenticate_request(None, Some(s.token.expose()))
        .await
        .expect("session");
    use hlbridge_engine::security::Action;
    assert!(p.require(Action::OperateRuns).is_ok());
    assert_eq!(
        p.require(Action::EditFlows).map_err(|e| e.status()),
        Err(403)
    );
    // Users never needed the vault: no key file was created.
    assert!(!dir.join("master.key").exists());
    let mut by_action: HashMap<String, usize> = HashMap::new();
    for e in hlbridge_engine::security::audit::list(sec.store().as_ref(), &AuditFilter::default())
        .await
        .expect("audit")
    {
        *by_action.entry(e.action).or_default() += 1;
    }
    assert_eq!(by_action.get("login"), Some(&1));
    assert_eq!(by_action.get("user.created"), Some(&1));
    let _ = std::fs::remove_dir_all(dir);
}

crate::on_both_backends!(
    two_processes_refresh_exactly_once_and_the_old_refresh_token_dies,
    a_revoked_refresh_token_breaks_the_connection_and_pauses_its_flows,
    agency_installs_mint_location_tokens_and_pick_up_new_locations,
    stored_connections_feed_validation_with_their_scopes,
    users_and_tokens_share_one_store_with_connections,
);
