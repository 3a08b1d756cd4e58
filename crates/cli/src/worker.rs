//! `hlbridge worker`: a process that only executes runs (and takes its turn at polls and
//! schedules) from a store shared with `hlbridge serve`. Start any number, on any machines,
//! with the same `--database postgres://…`, flows and connections as `serve`: runs are
//! claimed with `FOR UPDATE SKIP LOCKED` under leases (a run whose worker dies is taken over
//! when its lease lapses), each location's rate budget is shared through the database, and
//! each poll and schedule fires once per tick across the cluster.
//!
//! Stops gracefully on Ctrl-C or SIGTERM: it stops claiming, lets runs in flight finish
//! their current step and gives them back.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::engine_args::{EngineArgs, Opened, open_engine, parse_duration};

/// Options of `hlbridge worker`.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// This worker's name in run history (default: `<hostname>-<pid>`).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// On shutdown, how long runs in flight may take to finish their step before they are
    /// abandoned (and claimed again by another worker once their lease lapses).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    shutdown_grace: Duration,
}

/// Runs `hlbridge worker`.
pub async fn run(args: WorkerArgs) -> Result<()> {
    let name = args.name.clone();
    let Opened {
        engine,
        api,
        database,
        ids,
        ..
    } = open_engine(&args.engine, true, |cfg| {
        if let Some(n) = name {
            cfg.worker_name = n;
        }
        Ok(())
    })
    .await?;
    if !database.is_postgres() {
        eprintln!(
            "warning: {database} is SQLite: workers must run on this machine, and each process paces HighLevel calls on its own (use --database postgres://… to share rate budgets)"
        );
    }
    if api.is_none() {
        eprintln!("warning: no --token: HighLevel steps will fail");
    }
    let cancel = CancellationToken::new();
    let signals = hlbridge_engine::runner::cancel_on_signal(cancel.clone());
    let workers = engine.spawn_workers(&cancel);
    let triggers = (!args.engine.no_triggers).then(|| {
        let engine = engine.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { engine.run_triggers(cancel).await })
    });
    let cfg = engine.config();
    println!(
        "hlbridge worker {} running: {} worker task(s), {} flow(s), database {database}{}",
        cfg.worker_name,
        workers.len(),
        ids.len(),
        if triggers.is_some() {
            ", polls and schedules"
        } else {
            ""
        }
    );
    println!("Ctrl-C to stop.");
    cancel.cancelled().await;
    let deadline = tokio::time::Instant::now() + args.shutdown_grace;
    let mut tasks = workers;
    tasks.extend(triggers);
    for mut t in tasks {
        if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
            tracing::warn!(
                "still busy after the grace period; abandoned (its runs are claimed again when their lease lapses)"
            );
            t.abort();
        }
    }
    signals.abort();
    eprintln!("hlbridge worker stopped");
    Ok(())
}
