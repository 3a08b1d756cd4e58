//! `hlbridge`: the command-line entry point. Each subcommand lives in its own module; this
//! file only parses arguments and dispatches.

mod audit;
mod bench;
mod call;
mod catalog;
mod connect;
mod connections;
mod demo;
mod engine_args;
mod flows;
mod migrate;
mod runs;
mod sandbox;
mod serve;
mod tokens;
mod users;
mod vault;
mod worker;

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
    /// Execute runs from a store shared with `serve` (PostgreSQL: any number, any machines).
    Worker(worker::WorkerArgs),
    /// Apply the store's pending migrations (SQLite or PostgreSQL) and print what was done.
    Migrate(migrate::MigrateArgs),
    /// Store a connection: HighLevel (OAuth or Private Integration Token) or an app.
    Connect(connect::ConnectArgs),
    /// List connections with their health (ok, expiring, broken); show, check, remove.
    Connections(connections::ConnectionsArgs),
    /// Users of the admin API and UI: add, list, remove, role, password.
    Users(users::UsersArgs),
    /// API tokens with a role: create (shown once), list, revoke.
    Tokens(tokens::TokensArgs),
    /// The audit log: who did what, when and from where.
    Audit(audit::AuditArgs),
    /// The vault that encrypts stored secrets: rotate its key, show its status.
    Vault(vault::VaultArgs),
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
        Command::Worker(args) => worker::run(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Connect(args) => connect::run(args).await,
        Command::Connections(args) => connections::run(args).await,
        Command::Users(args) => users::run(args).await,
        Command::Tokens(args) => tokens::run(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Vault(args) => vault::run(args).await,
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
