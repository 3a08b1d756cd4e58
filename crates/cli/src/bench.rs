//! `hlbridge bench`: benchmarks that print their figures (speed and memory targets are shown
//! here, never by timed tests).
//!
//! `hlbridge bench engine` measures the engine of issue 4 in three parts, each against its
//! target (run it in a release build: `cargo run --release -- bench engine`):
//!
//! - **throughput** ([`throughput`]): N app-webhook events into one flow (one mapping, one
//!   HighLevel action, `contacts.notes.create` on a seeded contact) through the server's
//!   real ingress `POST /hooks/app/{flow}`, by several concurrent senders, against the
//!   in-process sandbox (rate limits off) with the engine on SQLite in a temporary data
//!   directory: durable runs completed per second, verified in the store (every run
//!   succeeded) and in the sandbox (N new notes). Target ≥ 2,000/s.
//! - **latency** ([`latency`]): events at a steady rate; the time from the webhook being
//!   accepted (the sender has the 202) to the HighLevel call being sent (the engine hands
//!   it to the HighLevel client) and answered. Target p99 ≤ 20 ms.
//! - **memory** ([`memory`]): resident memory of an idle engine with the server running,
//!   before and after loading F generated flows. Target ≤ 150 MB.
//!
//! Everything (load generator, server, engine, sandbox) runs in this one process, so the
//! figures include the load generator's own CPU time on the same cores.

mod cluster;
mod harness;
mod latency;
mod machine;
mod memory;
mod profile;
mod stats;
mod throughput;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};

/// Options of `hlbridge bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// The engine: runs per second, added latency and memory with many flows (issue 4).
    Engine(EngineBenchArgs),
    /// Runs per second with 1, 2, 4… `hlbridge worker` processes on PostgreSQL (issue 7).
    Cluster(cluster::ClusterBenchArgs),
}

/// Which parts of `bench engine` to run.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// All three, memory first (in a process that has done nothing else yet).
    All,
    /// Durable runs completed per second.
    Throughput,
    /// Added latency at a steady event rate.
    Latency,
    /// Resident memory with many flows loaded.
    Memory,
}

/// How events reach the engine.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ingress {
    /// `POST /hooks/app/{flow}` on the running server (the real path).
    Http,
    /// `Engine::accept_app_webhook` called in-process (no HTTP), for comparison.
    Direct,
}

impl Ingress {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Ingress::Http => "HTTP POST /hooks/app/{flow} (hlbridge_server::serve)",
            Ingress::Direct => "Engine::accept_app_webhook in-process (no HTTP)",
        }
    }
}

/// Options of `hlbridge bench engine`.
#[derive(Args, Debug, Clone)]
pub(crate) struct EngineBenchArgs {
    /// Which part to run.
    #[arg(long, value_enum, default_value_t = Part::All)]
    part: Part,
    /// Throughput: number of events.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub(crate) events: usize,
    /// Throughput: concurrent senders.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub(crate) senders: usize,
    /// Latency: events per second.
    #[arg(long, default_value_t = 200, value_name = "R")]
    pub(crate) rate: u32,
    /// Latency: seconds of steady load measured (after the warm-up).
    #[arg(long, default_value_t = 20, value_name = "SECS")]
    pub(crate) duration: u64,
    /// Latency: seconds of load sent first and not counted (connections, caches).
    #[arg(long, default_value_t = 1, value_name = "SECS")]
    pub(crate) warmup: u64,
    /// Memory: number of generated flows loaded.
    #[arg(long, default_value_t = 1_000, value_name = "F")]
    pub(crate) flows: usize,
    /// Engine worker tasks.
    #[arg(long, default_value_t = 2, value_name = "W")]
    pub(crate) workers: usize,
    /// Runs a worker claims (and runs concurrently) at a time (default: the engine's).
    #[arg(long, value_name = "N")]
    pub(crate) claim_batch: Option<u32>,
    /// How events reach the engine.
    #[arg(long, value_enum, default_value_t = Ingress::Http)]
    pub(crate) ingress: Ingress,
    /// Keep the sandbox's state in this SQLite file instead of in memory.
    #[arg(long, value_name = "FILE")]
    pub(crate) sandbox_db: Option<PathBuf>,
    /// Keep the temporary data directories (printed) instead of deleting them.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Also count and time every store call (throughput and latency parts) and print them.
    #[arg(long)]
    pub(crate) profile: bool,
}

/// Runs `hlbridge bench`.
pub async fn run(args: BenchArgs) -> Result<()> {
    match args.command {
        BenchCommand::Engine(a) => engine(a).await,
        BenchCommand::Cluster(a) => cluster::run(a).await,
    }
}

async fn engine(args: EngineBenchArgs) -> Result<()> {
    if cfg!(debug_assertions) {
        println!(
            "warning: this is a debug build; figures are meaningful only from `cargo run --release -- bench engine`"
        );
    }
    let m = machine::Machine::detect();
    println!("hlbridge bench engine");
    println!("machine: {m}");
    if let Some(l) = machine::load_average() {
        println!("load average (1 min) at start: {l:.2}");
    }
    println!();
    let mut met = Vec::new();
    if matches!(args.part, Part::All | Part::Memory) {
        met.push(("memory", memory::run(&args).await?));
        println!();
    }
    if matches!(args.part, Part::All | Part::Throughput) {
        met.push(("throughput", throughput::run(&args).await?));
        println!();
    }
    if matches!(args.part, Part::All | Part::Latency) {
        met.push(("latency", latency::run(&args).await?));
        println!();
    }
    let summary: Vec<String> = met
        .iter()
        .map(|(name, ok)| format!("{name} {}", if *ok { "met" } else { "MISSED" }))
        .collect();
    println!("targets: {} (machine: {m})", summary.join(", "));
    Ok(())
}

/// Prints how busy the rest of the machine was during a measurement (other processes
/// compete for the same cores, so their load shows in the figures).
pub(crate) fn print_others(others: Option<f64>) {
    if let Some(o) = others {
        println!(
            "    other processes on the machine kept {o:.2} cores busy on average meanwhile{}",
            if o > 0.2 {
                " (figures disturbed: rerun on a quiet machine)"
            } else {
                ""
            }
        );
    }
}

/// `✔ met` or `✘ missed`.
pub(crate) fn verdict(ok: bool) -> &'static str {
    if ok {
        "✔ target met"
    } else {
        "✘ target MISSED"
    }
}
