//! `hlbridge`: the command-line entry point. Each subcommand lives in its own module; this
//! file only parses arguments and dispatches.

mod bench;
mod call;
mod catalog;
mod demo;
mod flows;
mod runs;
mod sandbox;
mod serve;

use clap::{Parser, Subcommand};

/// Keep your apps and HighLevel in sync, self-hosted.
#[derive(Parser, Debug)]
#[command(name = "hlbridge", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Try hlbridge: sandbox + engine + ready flows + a stand-in app, a scenario, the results.
    Demo(demo::DemoArgs),
    /// List the HighLevel operations hlbridge can call (actions and polling triggers).
    Catalog(catalog::CatalogArgs),
    /// Call one HighLevel operation by id and print the JSON response.
    Call(call::CallArgs),
    /// Run a local HighLevel API v2 emulator (state, auth, rate limits, webhooks, faults).
    Sandbox(sandbox::SandboxArgs),
    /// Check flow files, run one event through a flow now, run behaviour tests.
    Flows(flows::FlowsArgs),
    /// List runs (`--flow`, `--state`, `--json`), or show one with `runs show <id>`.
    Runs(runs::RunsArgs),
    /// Enqueue a finished run's event again, or every dead run with `--dead`.
    Replay(runs::ReplayArgs),
    /// Run the engine: webhook ingress, contact lookup, workers, polls and schedules.
    Serve(serve::ServeArgs),
    /// Benchmarks that print their figures: `bench engine` (runs/s, added latency, memory).
    Bench(bench::BenchArgs),
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HLBRIDGE_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Catalog(args) => catalog::run(args),
        Command::Call(args) => call::run(args).await,
        Command::Sandbox(args) => sandbox::run(args).await,
        Command::Flows(args) => flows::run(args).await,
        Command::Runs(args) => runs::run(args).await,
        Command::Replay(args) => runs::replay(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Bench(args) => bench::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
