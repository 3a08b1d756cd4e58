//! Pacing benchmark: 1,000 calls for one location against a local server that enforces
//! 100 requests per 1 s (any 1 s window, like a strict HighLevel) and answers 429 when over.
//!
//! Run with `cargo bench -p hlbridge-highlevel --bench pacing`. Prints wall time against the
//! floor (`ceil(N/limit - 1)` intervals), the 429s received, and client CPU per call.
//!
//! CPU measurement: the server runs on its own single-threaded tokio runtime on one OS thread,
//! whose CPU time is read from `/proc/thread-self/schedstat`; the client's CPU is the whole
//! process's (sum of `/proc/self/task/*/schedstat`) minus the server thread's.

#![allow(missing_docs)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hlbridge_highlevel::{Auth, Client, ClientConfig, PacingConfig, RetryConfig, Url, operations};
use serde_json::json;

const CALLS: usize = 1000;
const LIMIT: usize = 100;
const INTERVAL: Duration = Duration::from_secs(1);

struct Limits {
    log: Mutex<VecDeque<Instant>>,
    ok: AtomicUsize,
    limited: AtomicUsize,
}

async fn handle(axum::extract::State(s): axum::extract::State<Arc<Limits>>) -> Response {
    let now = Instant::now();
    let admitted = {
        let mut log = s.log.lock().unwrap_or_else(|p| p.into_inner());
        while log.front().is_some_and(|t| *t + INTERVAL <= now) {
            log.pop_front();
        }
        if log.len() < LIMIT {
            log.push_back(now);
            Some(LIMIT - log.len())
        } else {
            None
        }
    };
    let (status, remaining, body) = match admitted {
        Some(r) => {
            s.ok.fetch_add(1, Ordering::Relaxed);
            (StatusCode::OK, r, json!({"contact": {"id": "c1"}}))
        }
        None => {
            s.limited.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::TOO_MANY_REQUESTS,
                0,
                json!({"statusCode": 429, "message": "Too many requests"}),
            )
        }
    };
    let mut resp = (status, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert("x-ratelimit-max", HeaderValue::from(LIMIT));
    h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    h.insert(
        "x-ratelimit-interval-milliseconds",
        HeaderValue::from(INTERVAL.as_millis() as u64),
    );
    resp
}

/// CPU time of the calling thread, from schedstat (ns).
fn thread_cpu() -> Duration {
    schedstat("/proc/thread-self/schedstat")
}

/// CPU time of every live thread of the process (ns).
fn process_cpu() -> Duration {
    let mut total = Duration::ZERO;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            total += schedstat(&format!("{}/schedstat", e.path().display()));
        }
    }
    total
}

fn schedstat(path: &str) -> Duration {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

fn main() {
    let limits = Arc::new(Limits {
        log: Mutex::new(VecDeque::new()),
        ok: AtomicUsize::new(0),
        limited: AtomicUsize::new(0),
    });
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_limits = limits.clone();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addr_tx
                .send(listener.local_addr().expect("addr"))
                .expect("send addr");
            let app = Router::new().fallback(handle).with_state(server_limits);
            let cpu_start = thread_cpu();
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await
                .expect("serve");
            thread_cpu().saturating_sub(cpu_start)
        })
    });
    let addr = addr_rx.recv().expect("server address");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let client = Client::new(ClientConfig {
        base_url: Url::parse(&format!("http://{addr}/")).expect("url"),
        pacing: PacingConfig {
            burst: LIMIT as u32,
            interval: INTERVAL,
            daily: 200_000,
            enabled: true,
        },
        retry: RetryConfig::default(),
        ..ClientConfig::default()
    })
    .expect("client");
    let op = operations::find("contacts.get").expect("contacts.get");
    let auth = Auth::token("bench-token");

    let cpu_before = process_cpu();
    let start = Instant::now();
    let failures = rt.block_on(async {
        let tasks: Vec<_> = (0..CALLS)
            .map(|i| {
                let client = client.clone();
                let auth = auth.clone();
                tokio::spawn(async move {
                    client
                        .call(
                            &auth,
                            op,
                            &json!({"contactId": format!("c{i}"), "locationId": "bench-location"}),
                        )
                        .await
                })
            })
            .collect();
        let mut failures = 0;
        for t in tasks {
            if !matches!(t.await, Ok(Ok(_))) {
                failures += 1;
            }
        }
        failures
    });
    let wall = start.elapsed();
    let cpu_total = process_cpu().saturating_sub(cpu_before);
    let _ = stop_tx.send(());
    let server_cpu = server.join().expect("server thread");
    let client_cpu = cpu_total.saturating_sub(server_cpu);

    let floor = INTERVAL * ((CALLS as u32).div_ceil(LIMIT as u32) - 1);
    let overhead = (wall.as_secs_f64() / floor.as_secs_f64() - 1.0) * 100.0;
    let limited = limits.limited.load(Ordering::Relaxed);
    println!("client pacing benchmark (issue 2)");
    println!("  calls                 {CALLS} for one location, all started at once");
    println!("  server limit          {LIMIT} per {INTERVAL:?} (any window, 429 when over)");
    println!("  client pacing         burst {LIMIT} per {INTERVAL:?}");
    println!("  wall time             {:.3} s", wall.as_secs_f64());
    println!(
        "  floor                 {:.3} s (ceil(N/limit - 1) intervals)",
        floor.as_secs_f64()
    );
    println!("  overhead vs floor     {overhead:.2} %");
    println!("  429s received         {limited}");
    println!("  calls failed          {failures}");
    println!(
        "  server answered       {} ok, {limited} limited",
        limits.ok.load(Ordering::Relaxed)
    );
    println!(
        "  client CPU            {:.1} ms total, {:.1} us per call",
        client_cpu.as_secs_f64() * 1e3,
        client_cpu.as_secs_f64() * 1e6 / CALLS as f64
    );
    println!(
        "  server CPU            {:.1} ms total (own thread, excluded above)",
        server_cpu.as_secs_f64() * 1e3
    );
    let pass = limited == 0 && failures == 0 && overhead <= 5.0;
    println!(
        "  verdict               {}",
        if pass {
            "PASS (0 429s, within 5 % of floor)"
        } else {
            "FAIL"
        }
    );
}
