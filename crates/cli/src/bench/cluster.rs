//! `hlbridge bench cluster`: the engine's throughput with 1, 2, 4… `hlbridge worker`
//! processes sharing one PostgreSQL database (issue 7).
//!
//! For each worker count: a fresh schema in the database given by `--database`, the
//! in-process sandbox (seeded, rate limits off), the same flow as `bench engine` (an app
//! event becomes a note on a seeded contact: one mapping, one HighLevel action), N events
//! enqueued into the store up front (event and run in one statement each, batches of 500),
//! then the worker processes are started together and the clock runs until the store shows
//! every run succeeded (checked against the sandbox's notes too). This measures the queue
//! drain rate of the worker processes; ingress is measured by `bench engine`.
//!
//! Reported per worker count: runs/s, the speed-up over one worker, the CPU each worker
//! process used (share of one core over the drain), and the CPU of PostgreSQL (all its
//! processes) and of this process (sandbox and bookkeeping) — everything runs on the same
//! machine, so the sum shows where it stops.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use hlbridge_engine::store::{NewEvent, PostgresOptions, PostgresStore};
use hlbridge_engine::{RunState, Store};
use hlbridge_sandbox::ratelimit::RateLimitConfig;
use hlbridge_sandbox::{Sandbox, SandboxConfig};
use serde_json::json;

use super::machine::{self, Machine};

/// Options of `hlbridge bench cluster`.
#[derive(Args, Debug, Clone)]
pub(crate) struct ClusterBenchArgs {
    /// PostgreSQL URL (a fresh schema is created in it for each run and dropped after).
    #[arg(
        long,
        env = "HLBRIDGE_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    database: String,
    /// Events (runs) per measurement.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    events: usize,
    /// Worker process counts to measure, comma-separated.
    #[arg(
        long,
        default_value = "1,2,4",
        value_delimiter = ',',
        value_name = "LIST"
    )]
    processes: Vec<usize>,
    /// Worker tasks in each worker process.
    #[arg(long, default_value_t = 2, value_name = "N")]
    tasks: usize,
    /// Runs a worker task claims (and runs concurrently) at a time.
    #[arg(long, default_value_t = 32, value_name = "N")]
    claim_batch: u32,
    /// PostgreSQL connections per worker process.
    #[arg(long, default_value_t = 8, value_name = "N")]
    db_connections: u32,
}

const FLOW_ID: &str = "bench-notes";

fn flow_source(contact_id: &str) -> String {
    format!(
        r#"
id = "{FLOW_ID}"
name = "Bench: app event → note on a HighLevel contact"

[trigger]
type = "app_webhook"
secret = "bench"
dedupe_key = "{{{{ event.id }}}}"

[[steps]]
id = "note"
type = "highlevel"
operation = "contacts.notes.create"
params = {{ contactId = "{contact_id}", body = "{{{{ event.text }}}}" }}
"#
    )
}

/// CPU time (user + system, all threads) of process `pid`, from `/proc/<pid>/stat`.
fn cpu_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) as f64 / 100.0))
}

/// CPU time of every PostgreSQL server process (`postgres` by command name).
fn postgres_cpu() -> Duration {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| c.trim() == "postgres")
                .unwrap_or(false)
        })
        .filter_map(|p| cpu_of(&p))
        .sum()
}

/// One measurement.
struct Measured {
    processes: usize,
    seconds: f64,
    per_worker_cpu: Vec<f64>,
    postgres_cpu: f64,
    own_cpu: f64,
}

impl Measured {
    fn rate(&self, events: usize) -> f64 {
        events as f64 / self.seconds
    }
}

fn url_with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

async fn measure(args: &ClusterBenchArgs, processes: usize) -> Result<Measured> {
    let schema = format!("hlbench_{}", uuid::Uuid::new_v4().simple());
    let store = PostgresStore::connect_with(
        &args.database,
        &PostgresOptions {
            max_connections: 4,
            schema: Some(schema.clone()),
            listen: false,
            ..PostgresOptions::default()
        },
    )
    .await
    .context("connecting to PostgreSQL")?;
    let result = measure_in(args, processes, &store, &schema).await;
    store.close().await;
    if let Err(e) = PostgresStore::drop_schema(&args.database, &schema).await {
        eprintln!("warning: could not drop the benchmark schema {schema}: {e}");
    }
    result
}

async fn measure_in(
    args: &ClusterBenchArgs,
    processes: usize,
    store: &PostgresStore,
    schema: &str,
) -> Result<Measured> {
    let sandbox = Sandbox::start(SandboxConfig {
        seed_demo: true,
        rate_limit: RateLimitConfig {
            enabled: false,
            ..RateLimitConfig::default()
        },
        ..SandboxConfig::for_tests()
    })
    .await
    .context("starting the sandbox")?;
    let info = sandbox.info();
    let contact_id = sandbox
        .shared()
        .docs
        .read()
        .iter("contact")
        .find(|(_, d)| d.location_id.as_deref() == Some(info.location_id.as_str()))
        .map(|(id, _)| id.clone())
        .ok_or_else(|| anyhow!("the seeded sandbox has no contact"))?;
    let dir = std::env::temp_dir().join(format!("hlbridge-bench-cluster-{schema}"));
    std::fs::create_dir_all(&dir)?;
    let flow = dir.join("bench-notes.toml");
    std::fs::write(&flow, flow_source(&contact_id))?;

    let prefix = format!("c{processes}-");
    let n = args.events;
    let mut batch = Vec::with_capacity(500);
    for i in 0..n {
        batch.push(NewEvent {
            flow_id: FLOW_ID.into(),
            dedupe_key: format!("app:{FLOW_ID}:{prefix}{i}"),
            payload: json!({"id": format!("{prefix}{i}"), "type": "note.added", "text": format!("{prefix}{i}")}),
            seen_key: None,
        });
        if batch.len() == 500 || i + 1 == n {
            store.enqueue_events(std::mem::take(&mut batch)).await?;
        }
    }
    let notes_before = sandbox.shared().docs.read().count("note");

    let url = url_with_schema(&args.database, schema);
    let exe = std::env::current_exe().context("locating the hlbridge binary")?;
    let pg0 = postgres_cpu();
    let own0 = machine::cpu_time().unwrap_or_default();
    let t0 = Instant::now();
    let mut children: Vec<Child> = Vec::new();
    for w in 0..processes {
        let child = Command::new(&exe)
            .arg("worker")
            .args(["--database", &url])
            .arg("--flows")
            .arg(&flow)
            .args(["--highlevel-base-url", &info.base_url])
            .args(["--token", &info.token])
            .args(["--location-id", &info.location_id])
            .args(["--app-secret", "bench=bench"])
            .args(["--workers", &args.tasks.to_string()])
            .args(["--claim-batch", &args.claim_batch.to_string()])
            .args(["--db-connections", &args.db_connections.to_string()])
            .args(["--name", &format!("bench{w}")])
            .args(["--no-pacing", "--no-triggers"])
            .env_remove("HLBRIDGE_DATA")
            .env_remove("HLBRIDGE_TOKEN")
            .env_remove("HLBRIDGE_BASE_URL")
            .env("HLBRIDGE_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a worker process")?;
        children.push(child);
    }
    for c in &mut children {
        if let Some(out) = c.stdout.take() {
            std::thread::spawn(move || for _ in BufReader::new(out).lines() {});
        }
    }
    let pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
    let mut last_cpu: HashMap<String, Duration> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let seconds = loop {
        for p in &pids {
            if let Some(c) = cpu_of(p) {
                last_cpu.insert(p.clone(), c);
            }
        }
        let counts: HashMap<RunState, u64> =
            store.count_runs(Some(FLOW_ID)).await?.into_iter().collect();
        let done = counts.get(&RunState::Succeeded).copied().unwrap_or(0);
        if done as usize >= n {
            break t0.elapsed().as_secs_f64();
        }
        let bad: u64 = [RunState::Failed, RunState::Dead]
            .iter()
            .map(|s| counts.get(s).copied().unwrap_or(0))
            .sum();
        if bad > 0 || Instant::now() > deadline {
            for c in &mut children {
                let _ = c.kill();
            }
            bail!("runs did not all succeed: {counts:?}");
        }
        if let Some(i) = children
            .iter_mut()
            .position(|c| matches!(c.try_wait(), Ok(Some(_))))
        {
            bail!("worker process {i} exited early");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let per_worker_cpu: Vec<f64> = pids
        .iter()
        .map(|p| {
            cpu_of(p)
                .or_else(|| last_cpu.get(p).copied())
                .unwrap_or_default()
                .as_secs_f64()
                / seconds
        })
        .collect();
    let postgres_cpu = (postgres_cpu().saturating_sub(pg0)).as_secs_f64() / seconds;
    let own_cpu =
        (machine::cpu_time().unwrap_or_default().saturating_sub(own0)).as_secs_f64() / seconds;
    for c in &children {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    for c in &mut children {
        let _ = c.wait();
    }
    let notes = sandbox.shared().docs.read().count("note") - notes_before;
    sandbox.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    if notes != n {
        bail!("the sandbox holds {notes} new notes for {n} runs");
    }
    Ok(Measured {
        processes,
        seconds,
        per_worker_cpu,
        postgres_cpu,
        own_cpu,
    })
}

/// Runs `hlbridge bench cluster`.
pub(crate) async fn run(args: ClusterBenchArgs) -> Result<()> {
    if cfg!(debug_assertions) {
        println!(
            "warning: this is a debug build; figures are meaningful only from `cargo run --release -- bench cluster`"
        );
    }
    let m = Machine::detect();
    println!("hlbridge bench cluster");
    println!("machine: {m}");
    println!(
        "{} events per measurement; each worker process: {} task(s), claim batch {}, {} DB connections; pacing off, sandbox rate limits off",
        args.events, args.tasks, args.claim_batch, args.db_connections
    );
    println!();
    let mut results: Vec<Measured> = Vec::new();
    for &p in &args.processes {
        let r = measure(&args, p.max(1)).await?;
        let base = results.first().map(|b| b.rate(args.events));
        println!(
            "{} worker process(es): {:.0} runs/s ({:.2} s){}; CPU per worker {}; PostgreSQL {:.0}%; bench process (sandbox) {:.0}%",
            r.processes,
            r.rate(args.events),
            r.seconds,
            base.map(|b| format!(", ×{:.2} vs 1", r.rate(args.events) / b))
                .unwrap_or_default(),
            r.per_worker_cpu
                .iter()
                .map(|c| format!("{:.0}%", c * 100.0))
                .collect::<Vec<_>>()
                .join(" "),
            r.postgres_cpu * 100.0,
            r.own_cpu * 100.0,
        );
        results.push(r);
    }
    println!();
    println!(
        "| worker processes | runs/s | speed-up | CPU per worker (% of a core) | PostgreSQL CPU | sandbox CPU | total CPU |"
    );
    println!("|---|---|---|---|---|---|---|");
    let base = results.first().map(|b| b.rate(args.events)).unwrap_or(1.0);
    for r in &results {
        let workers: f64 = r.per_worker_cpu.iter().sum();
        println!(
            "| {} | {:.0} | ×{:.2} | {} | {:.0}% | {:.0}% | {:.0}% of {} cores |",
            r.processes,
            r.rate(args.events),
            r.rate(args.events) / base,
            r.per_worker_cpu
                .iter()
                .map(|c| format!("{:.0}", c * 100.0))
                .collect::<Vec<_>>()
                .join(", "),
            r.postgres_cpu * 100.0,
            r.own_cpu * 100.0,
            (workers + r.postgres_cpu + r.own_cpu) * 100.0,
            m.nproc
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_in_the_url_and_cpu_of_this_process() {
        assert_eq!(
            url_with_schema("postgres://u@h/db", "s1"),
            "postgres://u@h/db?options=-c%20search_path%3Ds1"
        );
        assert_eq!(
            url_with_schema("postgres://u@h/db?sslmode=disable", "s1"),
            "postgres://u@h/db?sslmode=disable&options=-c%20search_path%3Ds1"
        );
        assert!(cpu_of(&std::process::id().to_string()).is_some());
        assert!(flow_source("c9").contains("contactId = \"c9\""));
    }
}
