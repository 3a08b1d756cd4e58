//! Part (b): latency the engine adds between accepting a webhook and calling HighLevel.
//!
//! Events are sent on a fixed schedule (R per second, each in its own task so a slow answer
//! never delays the next send) for a warm-up (not counted) and then the measured duration.
//! For every event the sender notes when it sent the request and when it had the 202; the
//! [`Recorder`](super::harness) wrapped around the engine's HighLevel API notes when the
//! engine handed the call to the HighLevel client (pacing off, so the request goes out at
//! once) and when the sandbox's answer came back. All instants come from one monotonic
//! clock in this process.
//!
//! Reported: accepted (202 at the sender) → call handed to the client, the target figure;
//! accepted → call answered (an upper bound of "received by HighLevel": it adds the HTTP
//! round trip and the sandbox's own work); request sent → call handed to the client (the
//! whole path including ingress).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use parking_lot::Mutex;

use super::harness::{Harness, Marks};
use super::machine::{SystemCpu, cpu_time};
use super::stats::{Summary, ms};
use super::{EngineBenchArgs, verdict};

/// Largest p99 allowed.
const TARGET_P99: Duration = Duration::from_millis(20);

/// Runs the latency part; `Ok(true)` when the target is met.
pub async fn run(args: &EngineBenchArgs) -> Result<bool> {
    let rate = args.rate.max(1);
    let warm = usize::try_from(args.warmup * u64::from(rate)).unwrap_or(usize::MAX);
    let measured = usize::try_from(args.duration * u64::from(rate)).unwrap_or(usize::MAX);
    let total = warm + measured;
    println!(
        "(b) latency: {rate} events/s steady for {} s ({measured} events) after a {} s warm-up ({warm} events, not counted)",
        args.duration, args.warmup
    );
    println!(
        "    ingress: {}; engine: {} workers; same flow and sandbox setup as (a)",
        args.ingress.describe(),
        args.workers
    );
    let prefix = format!("lat-{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let marks = Marks::new(&prefix, total);
    let h = Arc::new(Harness::start(args, &prefix, Some(marks.clone())).await?);
    let events: Vec<_> = (0..total).map(|i| h.event(i)).collect();
    let baseline = h.note_count();
    // When each request was sent and when its 202 arrived.
    type Sent = Arc<Mutex<Vec<Option<(Instant, Instant)>>>>;
    let sent: Sent = Arc::new(Mutex::new(vec![None; total]));

    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let (cpu0, sys0) = (cpu_time(), SystemCpu::now());
    let mut tasks = Vec::with_capacity(total);
    for (i, ev) in events.into_iter().enumerate() {
        tick.tick().await;
        let (h, sent) = (h.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            h.send(&ev).await?;
            let accepted = Instant::now();
            if let Some(slot) = sent.lock().get_mut(i) {
                *slot = Some((t, accepted));
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let send_span = start.elapsed();
    for t in tasks {
        t.await??;
    }
    h.wait_done(baseline, total, Duration::from_secs(120))
        .await?;
    let others = cpu0
        .zip(cpu_time())
        .zip(sys0)
        .and_then(|((a, b), s)| s.others_since(b.saturating_sub(a)));
    let written = h.notes_written();
    if written.len() != total {
        bail!(
            "verification failed: {} of {total} notes written",
            written.len()
        );
    }

    let sent = sent.lock().clone();
    let (mut added, mut answered, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    let mut before_202 = 0usize;
    for (i, s) in sent.iter().enumerate().skip(warm) {
        let (Some((req, accepted)), Some(call), Some(done)) = (s, marks.sent(i), marks.answered(i))
        else {
            bail!("event {i} has no complete timing");
        };
        if call < *accepted {
            before_202 += 1;
        }
        added.push(call.saturating_duration_since(*accepted));
        answered.push(done.saturating_duration_since(*accepted));
        whole.push(call.saturating_duration_since(*req));
    }
    let Some(added) = Summary::of(added) else {
        bail!("no events measured");
    };
    println!(
        "    sent {total} events in {} ({:.1} events/s achieved); all {total} runs succeeded, notes verified in the sandbox",
        ms(send_span),
        total as f64 / send_span.as_secs_f64()
    );
    println!("    accepted (202 at the sender) → HighLevel call handed to the client: {added}");
    if before_202 > 0 {
        println!(
            "      ({before_202} calls were made before the sender had read its 202; counted as 0)"
        );
    }
    if let Some(s) = Summary::of(answered) {
        println!("    accepted → HighLevel call answered (upper bound of receipt):     {s}");
    }
    if let Some(s) = Summary::of(whole) {
        println!("    request sent → HighLevel call handed to the client:             {s}");
    }
    super::print_others(others);
    if let Some(p) = &h.profile {
        p.print(total);
    }
    let ok = added.p99 <= TARGET_P99;
    println!(
        "    => added latency p50 {}, p99 {}, max {} (target p99 ≤ {}) {}",
        ms(added.p50),
        ms(added.p99),
        ms(added.max),
        ms(TARGET_P99),
        verdict(ok)
    );
    if let Ok(h) = Arc::try_unwrap(h) {
        h.shutdown().await?;
    }
    Ok(ok)
}
