//! Part (a): durable runs completed per second.
//!
//! N signed app-webhook events are prepared first (bodies and HMAC signatures, outside the
//! measurement), then sent by S concurrent senders as fast as they are accepted. The clock
//! runs from the first send to the `finished_at` of the last run to succeed (from the
//! store). Checked afterwards: the store shows N succeeded runs of the flow (none failed,
//! dead or skipped) and the sandbox holds exactly the N notes, one per event.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hlbridge_engine::{RunFilter, RunState};
use time::OffsetDateTime;

use super::harness::{FLOW_ID, Harness};
use super::machine::{SystemCpu, cpu_time};
use super::stats::{Summary, ms};
use super::{EngineBenchArgs, verdict};

/// Runs per second the engine must reach.
const TARGET: f64 = 2_000.0;

/// Runs the throughput part; `Ok(true)` when the target is met.
pub async fn run(args: &EngineBenchArgs) -> Result<bool> {
    let n = args.events;
    println!("(a) throughput: {n} app-webhook events into one flow (contacts.notes.create)");
    println!(
        "    ingress: {}; {} concurrent senders; engine: {} workers, claim batch {}; SQLite (WAL) in a temp dir",
        args.ingress.describe(),
        args.senders,
        args.workers,
        args.claim_batch
            .unwrap_or_else(|| hlbridge_engine::EngineConfig::default().claim_batch)
    );
    println!(
        "    HighLevel: in-process sandbox ({}), rate limits off, client pacing off",
        if args.sandbox_db.is_some() {
            "state in a SQLite file"
        } else {
            "state in memory"
        }
    );
    let prefix = format!("tp-{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let h = Arc::new(Harness::start(args, &prefix, None).await?);
    let events: Arc<Vec<_>> = Arc::new((0..n).map(|i| h.event(i)).collect());
    let baseline = h.note_count();

    let cpu0 = cpu_time();
    let sys0 = SystemCpu::now();
    let wall0 = OffsetDateTime::now_utc();
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..args.senders.max(1) {
        let (h, events, next) = (h.clone(), events.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(ev) = events.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                h.send(ev).await?;
            }
        }));
    }
    for s in senders {
        s.await??;
    }
    let ingress = t0.elapsed();
    h.wait_done(baseline, n, Duration::from_secs(300)).await?;
    let waited = t0.elapsed();
    let cpu = cpu0.zip(cpu_time()).map(|(a, b)| b.saturating_sub(a));
    let others = sys0.zip(cpu).and_then(|(s, c)| s.others_since(c));

    // Verification and the end time, from the store and the sandbox.
    let runs = h
        .engine
        .store()
        .list_runs(&RunFilter {
            flow_id: Some(FLOW_ID.into()),
            state: None,
            limit: u32::try_from(n + 1).unwrap_or(u32::MAX),
        })
        .await?;
    let succeeded = runs
        .iter()
        .filter(|r| r.state == RunState::Succeeded)
        .count();
    let retried = runs.iter().filter(|r| r.attempts > 1).count();
    let written = h.notes_written();
    let all_written = written.len() == n && (0..n).all(|i| written.contains(&i));
    let extra_notes = h.note_count() - baseline - written.len();
    if runs.len() != n || succeeded != n || !all_written || extra_notes != 0 {
        bail!(
            "verification failed: {} runs, {succeeded} succeeded, {} distinct notes, {extra_notes} extra notes",
            runs.len(),
            written.len()
        );
    }
    let last = runs
        .iter()
        .filter_map(|r| r.finished_at)
        .max()
        .unwrap_or(wall0);
    let elapsed = Duration::try_from(last - wall0).unwrap_or(waited);
    let rate = n as f64 / elapsed.as_secs_f64();
    let queued: Vec<Duration> = runs
        .iter()
        .filter_map(|r| {
            r.finished_at
                .and_then(|f| Duration::try_from(f - r.created_at).ok())
        })
        .collect();

    println!(
        "    verified: {n} runs succeeded ({retried} needed a retry); the sandbox holds the {n} notes, no extra"
    );
    println!(
        "    accepted: all {n} in {} ({:.0} events/s)",
        ms(ingress),
        n as f64 / ingress.as_secs_f64(),
    );
    println!(
        "    completed: last run succeeded {} after the first send",
        ms(elapsed)
    );
    if let Some(s) = Summary::of(queued) {
        println!("    per run, enqueued → succeeded: {s}");
    }
    if let Some(cpu) = cpu {
        println!(
            "    CPU (whole process: senders, server, engine, sandbox): {:.2} s on {:.2} s wall = {:.0} µs per run",
            cpu.as_secs_f64(),
            elapsed.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / n as f64
        );
    }
    super::print_others(others);
    if let Some(p) = &h.profile {
        p.print(n);
    }
    let ok = rate >= TARGET;
    println!(
        "    => {rate:.0} durable runs completed per second (target ≥ {TARGET:.0}/s) {}",
        verdict(ok)
    );
    if let Ok(h) = Arc::try_unwrap(h) {
        h.shutdown().await?;
    }
    Ok(ok)
}
