//! Requests, retries and errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hlbridge_highlevel::{Auth, Error, operations};
use serde_json::{Value, json};

use crate::stub::{Reply, Stub};

fn op(id: &str) -> &'static hlbridge_highlevel::Operation {
    operations::find(id).expect("operation exists")
}

/// Answers the first `fail` requests with `failure`, then 200.
fn failing_then_ok(fail: usize, failure: Reply) -> impl Fn(&crate::stub::Req) -> Reply {
    let n = AtomicUsize::new(0);
    move |_| {
        if n.fetch_add(1, Ordering::SeqCst) < fail {
            failure.clone()
        } else {
            Reply::json(json!({"ok": true}))
        }
    }
}

#[tokio::test]
async fn sends_headers_path_query_and_delete_body() {
    let stub = Stub::start(|_| Reply::json(json!({"succeded": true, "traceId": "tr-1"}))).await;
    let client = stub.client();
    let auth = Auth::token("pit-123");

    let r = client
        .call(
            &auth,
            op("contacts.tags.remove"),
            &json!({"contactId": "c 1/x", "tags": ["vip", "new"]}),
        )
        .await
        .expect("call succeeds");
    assert_eq!(r.status, 200);
    assert_eq!(r.trace_id.as_deref(), Some("tr-1"));

    let r = client
        .call_id(
            &auth,
            "calendars.free_slots",
            &json!({"calendarId": "cal1", "startDate": 1, "endDate": 2, "timezone": "Europe/Berlin"}),
        )
        .await
        .expect("call succeeds");
    assert_eq!(r.body["succeded"], true);

    let reqs = stub.requests();
    assert_eq!(reqs.len(), 2);
    let del = &reqs[0];
    assert_eq!(del.method, "DELETE");
    assert_eq!(del.path, "/prefix/contacts/c%201%2Fx/tags");
    assert_eq!(del.header("authorization"), Some("Bearer pit-123"));
    assert_eq!(del.header("version"), Some("2021-07-28"));
    assert_eq!(del.header("accept"), Some("application/json"));
    assert_eq!(del.body, json!({"tags": ["vip", "new"]}));

    let slots = &reqs[1];
    assert_eq!(slots.method, "GET");
    assert_eq!(slots.path, "/prefix/calendars/cal1/free-slots");
    assert_eq!(slots.header("version"), Some("2021-04-15"));
    assert_eq!(slots.q("timezone"), Some("Europe/Berlin"));
    assert_eq!(slots.q("startDate"), Some("1"));
    assert!(slots.raw_body.is_empty(), "GET sends no body");
}

#[tokio::test]
async fn missing_parameters_are_all_named_and_nothing_is_sent() {
    let stub = Stub::start(|_| Reply::json(json!({}))).await;
    let client = stub.client();
    let err = client
        .call(
            &Auth::token("t"),
            op("contacts.tasks.create"),
            &json!({"title": "call back"}),
        )
        .await
        .expect_err("missing params");
    match &err {
        Error::MissingParams { operation, names } => {
            assert_eq!(operation, "contacts.tasks.create");
            assert_eq!(names, &["contactId", "dueDate", "completed"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "contacts.tasks.create: missing required parameters: contactId, dueDate, completed"
    );
    assert_eq!(stub.count(), 0);
}

#[tokio::test]
async fn unknown_operation_suggests() {
    let stub = Stub::start(|_| Reply::json(json!({}))).await;
    let err = stub
        .client()
        .call_id(&Auth::token("t"), "contacts.tag.add", &json!({}))
        .await
        .expect_err("unknown");
    match &err {
        Error::UnknownOperation { id, suggestions } => {
            assert_eq!(id, "contacts.tag.add");
            assert_eq!(
                suggestions.first().map(String::as_str),
                Some("contacts.tags.add")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("unknown operation 'contacts.tag.add'; did you mean: contacts.tags.add")
    );
}

#[tokio::test]
async fn too_many_requests_with_retry_after_is_retried() {
    let stub = Stub::start(failing_then_ok(
        1,
        Reply::status(429, json!({"message": "slow down"})).header("retry-after", "1"),
    ))
    .await;
    let start = Instant::now();
    let r = stub
        .client()
        .call(
            &Auth::token("t"),
            op("contacts.create"),
            &json!({"locationId": "L", "firstName": "A"}),
        )
        .await
        .expect("succeeds after the wait");
    assert_eq!(r.status, 200);
    assert_eq!(stub.count(), 2, "POST is retried after a 429");
    assert!(
        start.elapsed() >= Duration::from_millis(990),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn too_many_requests_with_only_interval_header_waits_that_long() {
    let stub = Stub::start(failing_then_ok(
        2,
        Reply::status(429, json!({"message": "Too many requests"}))
            .header("x-ratelimit-interval-milliseconds", "300")
            .header("x-ratelimit-remaining", "0"),
    ))
    .await;
    let start = Instant::now();
    stub.client()
        .call(
            &Auth::token("t"),
            op("contacts.get"),
            &json!({"contactId": "c"}),
        )
        .await
        .expect("succeeds");
    assert_eq!(stub.count(), 3);
    assert!(
        start.elapsed() >= Duration::from_millis(600),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn too_many_requests_without_headers_backs_off_and_succeeds() {
    let stub = Stub::start(failing_then_ok(3, Reply::status(429, Value::Null))).await;
    let r = stub
        .client()
        .call(
            &Auth::token("t"),
            op("contacts.get"),
            &json!({"contactId": "c"}),
        )
        .await
        .expect("succeeds on the 4th attempt");
    assert_eq!(r.status, 200);
    assert_eq!(stub.count(), 4);
}

#[tokio::test]
async fn too_many_requests_give_up_after_max_attempts() {
    let stub = Stub::start(|_| Reply::status(429, json!({"message": "no"}))).await;
    let err = stub
        .client()
        .call(
            &Auth::token("t"),
            op("contacts.get"),
            &json!({"contactId": "c"}),
        )
        .await
        .expect_err("gives up");
    assert_eq!(err.status(), Some(429));
    assert!(err.is_retryable(), "a durable queue may try later");
    assert_eq!(stub.count(), 4);
}

#[tokio::test]
async fn server_errors_are_retried_for_get_only() {
    let stub = Stub::start(failing_then_ok(
        2,
        Reply::status(502, json!({"message": "bad gateway"})),
    ))
    .await;
    let client = stub.client();
    let r = client
        .call(
            &Auth::token("t"),
            op("contacts.get"),
            &json!({"contactId": "c"}),
        )
        .await
        .expect("GET is retried");
    assert_eq!(r.status, 200);
    assert_eq!(stub.count(), 3);

    let stub =
        Stub::start(|_| Reply::status(500, json!({"message": "boom", "traceId": "t5"}))).await;
    let err = stub
        .client()
        .call(
            &Auth::token("t"),
            op("contacts.create"),
            &json!({"locationId": "L"}),
        )
        .await
        .expect_err("POST is not retried");
    assert_eq!(stub.count(), 1);
    assert_eq!(err.status(), Some(500));
    assert_eq!(
        err.to_string(),
        "contacts.create: HighLevel answered 500 Internal Server Error: boom (traceId t5)"
    );
}

#[tokio::test]
async fn timeouts_are_retried_for_get_not_for_post() {
    let slow_first = |delay_first: usize| {
        let n = Arc::new(AtomicUsize::new(0));
        move |_: &crate::stub::Req| {
            let i = n.fetch_add(1, Ordering::SeqCst);
            let r = Reply::json(json!({"ok": i}));
            if i < delay_first {
                r.delay(Duration::from_millis(1500))
            } else {
                r
            }
        }
    };
    let stub = Stub::start(slow_first(1)).await;
    let client = stub.client_with(|c| c.timeout = Duration::from_millis(500));
    let r = client
        .call(
            &Auth::token("t"),
            op("contacts.get"),
            &json!({"contactId": "c"}),
        )
        .await
        .expect("GET retried after a timeout");
    assert_eq!(r.body["ok"], 1);

    let stub = Stub::start(slow_first(1)).await;
    let client = stub.client_with(|c| c.timeout = Duration::from_millis(500));
    let err = client
        .call(
            &Auth::token("t"),
            op("contacts.create"),
            &json!({"locationId": "L"}),
        )
        .await
        .expect_err("POST not retried after a timeout");
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("contacts.create: request to HighLevel failed: timed out"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(stub.count(), 1);
}

#[tokio::test]
async fn client_errors_are_final_and_carry_status_message_operation_trace() {
    // (status, reply, message, messages, traceId)
    type Case = (
        u16,
        Reply,
        &'static str,
        Vec<&'static str>,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            400,
            Reply::status(400, json!({"statusCode": 400, "message": "Bad locationId"})),
            "Bad locationId",
            vec!["Bad locationId"],
            None,
        ),
        (
            404,
            Reply::status(404, json!({"statusCode": 404, "message": "Contact not found", "traceId": "abc"})),
            "Contact not found",
            vec!["Contact not found"],
            Some("abc"),
        ),
        (
            422,
            Reply::status(
                422,
                json!({"statusCode": 422, "message": ["email must be an email", "phone must be valid"], "error": "Unprocessable Entity"}),
            )
            .header("x-trace-id", "hdr-9"),
            "email must be an email; phone must be valid",
            vec!["email must be an email", "phone must be valid"],
            Some("hdr-9"),
        ),
        (
            403,
            Reply::status(403, json!({"msg": "The token does not have access to this location."})),
            "The token does not have access to this location.",
            vec!["The token does not have access to this location."],
            None,
        ),
    ];
    for (status, reply, message, messages, trace) in cases {
        let stub = Stub::start(move |_| reply.clone()).await;
        let err = stub
            .client()
            .call(
                &Auth::token("t"),
                op("contacts.get"),
                &json!({"contactId": "c"}),
            )
            .await
            .expect_err("error answer");
        assert_eq!(stub.count(), 1, "{status} must not be retried");
        assert!(!err.is_retryable());
        let api = err.api().expect("an API error");
        assert_eq!(api.status, status);
        assert_eq!(api.operation, "contacts.get");
        assert_eq!(api.message, message);
        assert_eq!(api.messages, messages);
        assert_eq!(api.trace_id.as_deref(), trace);
    }
    let stub = Stub::start(|_| {
        Reply::status(
            404,
            json!({"statusCode": 404, "message": "Contact not found", "traceId": "abc"}),
        )
    })
    .await;
    let err = stub
        .client()
        .call(
            &Auth::token("t"),
            op("contacts.get"),
            &json!({"contactId": "c"}),
        )
        .await
        .expect_err("404");
    assert_eq!(
        err.to_string(),
        "contacts.get: HighLevel answered 404 Not Found: Contact not found (traceId abc)"
    );
}

#[tokio::test]
async fn unauthorized_with_a_static_token_is_final() {
    let stub = Stub::start(|_| Reply::status(401, json!({"message": "Invalid JWT"}))).await;
    let err = stub
        .client()
        .call(
            &Auth::token("t"),
            op("contacts.get"),
            &json!({"contactId": "c"}),
        )
        .await
        .expect_err("401");
    assert_eq!(err.status(), Some(401));
    assert_eq!(stub.count(), 1);
}

#[tokio::test]
async fn daily_budget_exhausted_stops_without_sending() {
    let stub = Stub::start(|_| {
        Reply::json(json!({"contact": {}}))
            .header("x-ratelimit-limit-daily", 200000)
            .header("x-ratelimit-daily-remaining", 0)
    })
    .await;
    let client = stub.client_with(|c| c.pacing.enabled = true);
    let auth = Auth::token("t");
    let params = json!({"contactId": "c", "locationId": "L1"});
    client
        .call(&auth, op("contacts.get"), &params)
        .await
        .expect("the last request of the day succeeds");
    let start = Instant::now();
    let err = client
        .call(&auth, op("contacts.get"), &params)
        .await
        .expect_err("no budget left");
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "fails at once"
    );
    match &err {
        Error::DailyBudgetExhausted { key, retry_after } => {
            assert_eq!(key, "L1");
            assert!(retry_after.is_some_and(|d| d <= Duration::from_secs(86_400)));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!err.is_retryable());
    assert_eq!(stub.count(), 1, "nothing more was sent");
    assert_eq!(client.budget("L1").map(|b| b.daily_remaining), Some(0));
    // Another location has its own budget.
    client
        .call(
            &auth,
            op("contacts.get"),
            &json!({"contactId": "c", "locationId": "L2"}),
        )
        .await
        .expect("L2 still has budget");
}

#[tokio::test]
async fn too_many_requests_with_no_daily_budget_is_not_retried() {
    let stub = Stub::start(|_| {
        Reply::status(429, json!({"message": "daily limit"}))
            .header("x-ratelimit-daily-remaining", 0)
            .header("retry-after", 3600)
    })
    .await;
    let err = stub
        .client()
        .call(
            &Auth::token("t"),
            op("contacts.get"),
            &json!({"contactId": "c", "locationId": "L"}),
        )
        .await
        .expect_err("exhausted");
    assert!(matches!(err, Error::DailyBudgetExhausted { .. }), "{err:?}");
    assert_eq!(stub.count(), 1);
}

#[tokio::test]
async fn non_json_and_empty_bodies() {
    let n = AtomicUsize::new(0);
    let stub = Stub::start(move |_| match n.fetch_add(1, Ordering::SeqCst) {
        0 => Reply {
            status: 204,
            headers: vec![],
            body: String::new(),
            delay: None,
        },
        1 => Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: "OK".into(),
            delay: None,
        },
        _ => Reply {
            status: 502,
            headers: vec![("content-type".into(), "text/html".into())],
            body: "<html>bad gateway</html>".into(),
            delay: None,
        },
    })
    .await;
    let client = stub.client_with(|c| c.retry.max_attempts = 1);
    let auth = Auth::token("t");
    let p = json!({"contactId": "c"});
    assert_eq!(
        client
            .call(&auth, op("contacts.delete"), &p)
            .await
            .expect("204")
            .body,
        Value::Null
    );
    assert_eq!(
        client
            .call(&auth, op("contacts.get"), &p)
            .await
            .expect("text")
            .body,
        json!("OK")
    );
    let err = client
        .call(&auth, op("contacts.get"), &p)
        .await
        .expect_err("502");
    assert_eq!(
        err.api().map(|a| a.message.as_str()),
        Some("<html>bad gateway</html>")
    );
}

#[test]
fn client_and_futures_can_cross_threads() {
    fn is_send_sync<T: Send + Sync + Clone + 'static>(_: &T) {}
    fn is_send<T: Send + 'static>(_: T) {}
    let client = hlbridge_highlevel::Client::new(hlbridge_highlevel::ClientConfig::default())
        .expect("client");
    let auth = Auth::token("t");
    is_send_sync(&client);
    is_send_sync(&auth);
    let (c, a) = (client.clone(), auth.clone());
    is_send(async move { c.call(&a, op("contacts.get"), &json!({})).await });
    is_send(client.paginate(&auth, op("contacts.list"), json!({})));
}
