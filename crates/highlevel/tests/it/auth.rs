//! OAuth refresh: single-flight, rotation saved before use, 401 handling.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use hlbridge_highlevel::{
    Auth, BoxFuture, Error, OAuthTokenSource, OAuthTokens, TokenSource, TokenStore, operations,
};
use serde_json::json;
use time::OffsetDateTime;

use crate::stub::{Reply, Req, Stub};

/// The stub's view of the connection: the one valid access and refresh token.
struct Server {
    access: Mutex<String>,
    refresh: Mutex<String>,
    refreshes: AtomicUsize,
    rejected_refreshes: AtomicUsize,
    forms: Mutex<Vec<std::collections::HashMap<String, String>>>,
    /// Access tokens the store had saved (shared with the test store).
    saved_access: Arc<Mutex<HashSet<String>>>,
    /// Requests that used an access token the store had not saved yet.
    used_before_saved: AtomicUsize,
    api_ok: AtomicUsize,
}

impl Server {
    fn new(access: &str, refresh: &str, saved: Arc<Mutex<HashSet<String>>>) -> Arc<Server> {
        Arc::new(Server {
            access: Mutex::new(access.into()),
            refresh: Mutex::new(refresh.into()),
            refreshes: AtomicUsize::new(0),
            rejected_refreshes: AtomicUsize::new(0),
            forms: Mutex::new(Vec::new()),
            saved_access: saved,
            used_before_saved: AtomicUsize::new(0),
            api_ok: AtomicUsize::new(0),
        })
    }

    fn handle(&self, req: &Req) -> Reply {
        if req.path.ends_with("/oauth/token") {
            let form = req.form();
            self.forms.lock().unwrap().push(form.clone());
            let mut refresh = self.refresh.lock().unwrap();
            if form.get("grant_type").map(String::as_str) != Some("refresh_token")
                || form.get("refresh_token") != Some(&*refresh)
            {
                self.rejected_refreshes.fetch_add(1, Ordering::SeqCst);
                return Reply::status(
                    400,
                    json!({"error": "invalid_grant", "error_description": "Invalid refresh token"}),
                );
            }
            let n = self.refreshes.fetch_add(1, Ordering::SeqCst) + 1;
            let access = format!("at-{n}");
            *refresh = format!("rt-{n}");
            *self.access.lock().unwrap() = access.clone();
            return Reply::json(json!({
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": 86399,
                "refresh_token": *refresh,
                "scope": "contacts.readonly",
                "userType": "Location",
                "locationId": "L1",
                "companyId": "C1",
            }))
            .delay(Duration::from_millis(30));
        }
        let bearer = req.bearer().unwrap_or_default().to_string();
        if bearer != *self.access.lock().unwrap() {
            return Reply::status(401, json!({"statusCode": 401, "message": "Invalid JWT"}));
        }
        if bearer != "at-0" && !self.saved_access.lock().unwrap().contains(&bearer) {
            self.used_before_saved.fetch_add(1, Ordering::SeqCst);
        }
        self.api_ok.fetch_add(1, Ordering::SeqCst);
        Reply::json(json!({"contact": {"id": "c"}}))
    }
}

/// A store that takes a while to save and records what it saved.
struct SlowStore {
    saved_access: Arc<Mutex<HashSet<String>>>,
    saved_refresh: Mutex<Vec<String>>,
    fail_first: AtomicBool,
}

impl TokenStore for SlowStore {
    fn save(&self, tokens: &OAuthTokens) -> BoxFuture<'_, Result<(), Error>> {
        let tokens = tokens.clone();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.fail_first.swap(false, Ordering::SeqCst) {
                return Err(Error::TokenRefresh {
                    message: "disk full".into(),
                    permanent: false,
                });
            }
            self.saved_refresh
                .lock()
                .unwrap()
                .push(tokens.refresh_token.clone());
            self.saved_access
                .lock()
                .unwrap()
                .insert(tokens.access_token);
            Ok(())
        })
    }
}

fn tokens(access: &str, refresh: &str, expires_in: time::Duration) -> OAuthTokens {
    OAuthTokens {
        access_token: access.into(),
        refresh_token: refresh.into(),
        expires_at: OffsetDateTime::now_utc() + expires_in,
        scope: None,
        user_type: Some("Location".into()),
        location_id: Some("L1".into()),
        company_id: None,
    }
}

struct Setup {
    stub: Stub,
    server: Arc<Server>,
    store: Arc<SlowStore>,
    source: Arc<OAuthTokenSource>,
}

async fn setup(server_access: &str, initial: OAuthTokens, fail_first_save: bool) -> Setup {
    let saved = Arc::new(Mutex::new(HashSet::new()));
    let server = Server::new(server_access, "rt-0", saved.clone());
    let s = server.clone();
    let stub = Stub::start(move |r| s.handle(r)).await;
    let store = Arc::new(SlowStore {
        saved_access: saved,
        saved_refresh: Mutex::new(Vec::new()),
        fail_first: AtomicBool::new(fail_first_save),
    });
    let source = Arc::new(OAuthTokenSource::new(
        stub.base.clone(),
        "client-id",
        "client-secret",
        initial,
        store.clone(),
    ));
    Setup {
        stub,
        server,
        store,
        source,
    }
}

async fn hundred_calls(s: &Setup) -> Vec<Result<hlbridge_highlevel::Response, Error>> {
    let client = s.stub.client();
    let auth = Auth::from_source(s.source.clone());
    let op = operations::find("contacts.get").expect("op");
    join_all((0..100).map(|i| {
        let client = client.clone();
        let auth = auth.clone();
        async move {
            client
                .call(&auth, op, &json!({"contactId": format!("c{i}")}))
                .await
        }
    }))
    .await
}

#[tokio::test]
async fn expired_token_is_refreshed_once_for_a_hundred_concurrent_calls() {
    let s = setup(
        "at-0",
        tokens("at-0", "rt-0", time::Duration::seconds(-10)),
        false,
    )
    .await;
    let results = hundred_calls(&s).await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(
        s.server.refreshes.load(Ordering::SeqCst),
        1,
        "exactly one refresh"
    );
    assert_eq!(s.stub.requests_to("/oauth/token").len(), 1);
    assert_eq!(s.server.used_before_saved.load(Ordering::SeqCst), 0);
    assert_eq!(s.server.api_ok.load(Ordering::SeqCst), 100);
    assert_eq!(
        *s.store.saved_refresh.lock().unwrap(),
        vec!["rt-1".to_string()]
    );
    let cur = s.source.current();
    assert_eq!(
        (cur.access_token.as_str(), cur.refresh_token.as_str()),
        ("at-1", "rt-1")
    );
    assert_eq!(cur.company_id.as_deref(), Some("C1"));
    // The refresh form.
    let form = s.server.forms.lock().unwrap()[0].clone();
    assert_eq!(
        form.get("grant_type").map(String::as_str),
        Some("refresh_token")
    );
    assert_eq!(form.get("client_id").map(String::as_str), Some("client-id"));
    assert_eq!(
        form.get("client_secret").map(String::as_str),
        Some("client-secret")
    );
    assert_eq!(form.get("refresh_token").map(String::as_str), Some("rt-0"));
    assert_eq!(form.get("user_type").map(String::as_str), Some("Location"));
    let token_req = &s.stub.requests_to("/oauth/token")[0];
    assert_eq!(token_req.path, "/prefix/oauth/token");
    assert!(
        token_req
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
    );
}

#[tokio::test]
async fn rejected_token_is_refreshed_once_for_a_hundred_concurrent_calls() {
    // Not expired by our clock, but the server no longer accepts it.
    let s = setup(
        "at-revoked",
        tokens("at-0", "rt-0", time::Duration::hours(2)),
        false,
    )
    .await;
    let results = hundred_calls(&s).await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(
        s.server.refreshes.load(Ordering::SeqCst),
        1,
        "exactly one refresh"
    );
    assert_eq!(s.server.rejected_refreshes.load(Ordering::SeqCst), 0);
    assert_eq!(s.server.used_before_saved.load(Ordering::SeqCst), 0);
    assert_eq!(
        *s.store.saved_refresh.lock().unwrap(),
        vec!["rt-1".to_string()]
    );
    let by_token = |t: &str| {
        s.stub
            .requests()
            .iter()
            .filter(|r| r.bearer() == Some(t))
            .count()
    };
    assert_eq!(
        by_token("at-1"),
        100,
        "every call retried once with the new token"
    );
}

#[tokio::test]
async fn old_refresh_token_is_rejected_and_the_error_is_permanent() {
    let s = setup(
        "at-0",
        tokens("at-0", "rt-0", time::Duration::seconds(-10)),
        false,
    )
    .await;
    s.source
        .access_token()
        .await
        .expect("first refresh rotates rt-0 to rt-1");
    // A second copy of the connection that still holds rt-0 (e.g. a stale process).
    let stale = OAuthTokenSource::new(
        s.stub.base.clone(),
        "client-id",
        "client-secret",
        tokens("at-0", "rt-0", time::Duration::seconds(-10)),
        Arc::new(hlbridge_highlevel::NoopTokenStore),
    );
    let err = stale.access_token().await.expect_err("rt-0 is dead");
    match &err {
        Error::TokenRefresh { message, permanent } => {
            assert!(*permanent);
            assert!(message.contains("Invalid refresh token"), "{message}");
            assert!(!message.contains("rt-0"), "no token in messages");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!err.is_retryable());
    assert_eq!(s.server.rejected_refreshes.load(Ordering::SeqCst), 1);
    // Callers after a permanent failure do not hammer the token endpoint.
    assert!(stale.access_token().await.is_err());
    assert_eq!(s.server.rejected_refreshes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unsaved_tokens_are_never_used_and_saving_is_retried_without_a_second_refresh() {
    let s = setup(
        "at-0",
        tokens("at-0", "rt-0", time::Duration::seconds(-10)),
        true,
    )
    .await;
    let err = s.source.access_token().await.expect_err("save failed");
    assert!(
        matches!(
            err,
            Error::TokenRefresh {
                permanent: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        s.source.current().access_token,
        "at-0",
        "unsaved tokens are not in use"
    );
    let t = s.source.access_token().await.expect("saving is retried");
    assert_eq!(t, "at-1");
    assert_eq!(
        s.server.refreshes.load(Ordering::SeqCst),
        1,
        "no second refresh"
    );
    assert_eq!(
        *s.store.saved_refresh.lock().unwrap(),
        vec!["rt-1".to_string()]
    );
}

#[tokio::test]
async fn second_unauthorized_is_final() {
    let saved = Arc::new(Mutex::new(HashSet::new()));
    let server = Server::new("never-valid", "rt-0", saved.clone());
    let s2 = server.clone();
    let stub = Stub::start(move |r| {
        if r.path.ends_with("/oauth/token") {
            s2.handle(r)
        } else {
            Reply::status(401, json!({"message": "Invalid JWT"}))
        }
    })
    .await;
    let source = Arc::new(OAuthTokenSource::new(
        stub.base.clone(),
        "id",
        "secret",
        tokens("at-0", "rt-0", time::Duration::hours(2)),
        Arc::new(hlbridge_highlevel::MemoryTokenStore::new()),
    ));
    let err = stub
        .client()
        .call(
            &Auth::from_source(source),
            operations::find("contacts.get").expect("op"),
            &json!({"contactId": "c"}),
        )
        .await
        .expect_err("401 twice");
    assert_eq!(err.status(), Some(401));
    assert_eq!(server.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(
        stub.requests_to("/contacts/c").len(),
        2,
        "one retry after the refresh"
    );
}
