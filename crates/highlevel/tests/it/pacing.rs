//! Pacing against a stub that enforces a burst limit the way HighLevel does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use hlbridge_highlevel::{Auth, Client, PacingConfig, operations};
use serde_json::json;

use crate::stub::{Reply, Stub, Window};

fn paced(stub: &Stub, burst: u32, interval: Duration) -> Client {
    stub.client_with(|c| {
        c.pacing = PacingConfig {
            burst,
            interval,
            daily: 200_000,
            enabled: true,
        };
    })
}

#[tokio::test]
async fn two_hundred_fifty_calls_get_no_429() {
    let window = Arc::new(Window::new(100, Duration::from_secs(1)));
    let limited = Arc::new(AtomicUsize::new(0));
    let (w, l) = (window.clone(), limited.clone());
    let stub = Stub::start(move |_| {
        let r = w.reply(json!({"contact": {}}));
        if r.status == 429 {
            l.fetch_add(1, Ordering::SeqCst);
        }
        r
    })
    .await;
    let client = paced(&stub, 100, Duration::from_secs(1));
    let auth = Auth::token("t");
    let op = operations::find("contacts.get").expect("op");
    let start = Instant::now();
    let results = join_all((0..250).map(|i| {
        let client = client.clone();
        let auth = auth.clone();
        async move {
            client
                .call(
                    &auth,
                    op,
                    &json!({"contactId": format!("c{i}"), "locationId": "L1"}),
                )
                .await
        }
    }))
    .await;
    let elapsed = start.elapsed();
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(limited.load(Ordering::SeqCst), 0, "no 429 received");
    assert_eq!(stub.count(), 250, "no retries needed");
    // 250 calls at 100/s: bursts at 0 s, 1 s, 2 s.
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
    let b = client.budget("L1").expect("key used");
    assert_eq!((b.burst, b.interval), (100, Duration::from_secs(1)));
    assert_eq!(b.daily_remaining, 200_000 - 250);
}

#[tokio::test]
async fn locations_have_separate_budgets() {
    let stub = Stub::start(|_| Reply::json(json!({}))).await;
    let client = paced(&stub, 50, Duration::from_secs(10));
    let auth = Auth::token("t");
    let op = operations::find("contacts.get").expect("op");
    let start = Instant::now();
    let results = join_all((0..100).map(|i| {
        let client = client.clone();
        let auth = auth.clone();
        let loc = if i % 2 == 0 { "A" } else { "B" };
        async move {
            client
                .call(&auth, op, &json!({"contactId": "c", "locationId": loc}))
                .await
        }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "no waiting: 50 each"
    );
    assert_eq!(client.budget("A").map(|b| b.burst_remaining), Some(0));
    assert_eq!(client.budget("B").map(|b| b.burst_remaining), Some(0));
    assert!(client.budget("C").is_none());
}

#[tokio::test]
async fn token_pacing_key_is_used_without_location_param() {
    let stub = Stub::start(|_| Reply::json(json!({}))).await;
    let client = paced(&stub, 100, Duration::from_secs(1));
    let op = operations::find("contacts.get").expect("op");
    client
        .call(
            &Auth::token_for("t", "LOC-T"),
            op,
            &json!({"contactId": "c"}),
        )
        .await
        .expect("ok");
    client
        .call(&Auth::token("t"), op, &json!({"contactId": "c"}))
        .await
        .expect("ok");
    assert_eq!(client.budget("LOC-T").map(|b| b.burst_remaining), Some(99));
    assert_eq!(client.budget("global").map(|b| b.burst_remaining), Some(99));
}

#[tokio::test]
async fn server_reporting_fewer_remaining_slows_us_down() {
    // Someone else used 99 of the window: after our first call none remain.
    let stub = Stub::start(|_| {
        Reply::json(json!({}))
            .header("x-ratelimit-max", 100)
            .header("x-ratelimit-remaining", 0)
            .header("x-ratelimit-interval-milliseconds", 1000)
    })
    .await;
    let client = paced(&stub, 100, Duration::from_secs(1));
    let auth = Auth::token("t");
    let op = operations::find("contacts.get").expect("op");
    let p = json!({"contactId": "c", "locationId": "L"});
    client.call(&auth, op, &p).await.expect("ok");
    let start = Instant::now();
    client.call(&auth, op, &p).await.expect("ok");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
}
