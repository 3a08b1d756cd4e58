//! `hlbridge runs` (run history as a table or JSON), `hlbridge runs show <id>` (each step's
//! input, output, error and timings) and `hlbridge replay <run-id> | --dead [--flow X]`
//! (enqueue a finished run's event again; a running `hlbridge serve` executes it).

use hlbridge_engine::security::{Actor, AuditAction, AuditEvent, audit};
use std::sync::Arc;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use hlbridge_engine::{RunFilter, RunId, RunState, RunSummary, Store};

use crate::flows::{DataArgs, millis, print_run};

/// Arguments of `hlbridge runs`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RunsArgs {
    #[command(subcommand)]
    command: Option<RunsCommand>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(Subcommand, Debug)]
enum RunsCommand {
    /// One run: its event and each step's input, output, error and timings.
    Show(ShowArgs),
}

/// Arguments of the run list.
#[derive(Args, Debug, Default)]
struct ListArgs {
    /// Only this flow's runs.
    #[arg(long, value_name = "FLOW")]
    flow: Option<String>,
    /// Only runs in this state: queued, running, succeeded, failed, skipped, dead.
    #[arg(long, value_name = "STATE", value_parser = parse_state)]
    state: Option<RunState>,
    /// At most this many runs, newest first.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args, Debug)]
struct ShowArgs {
    /// The run's id (as `hlbridge runs` prints it).
    id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArgs,
}

/// Arguments of `hlbridge replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The run to replay (its event is enqueued again as a new run).
    #[arg(
        value_name = "RUN_ID",
        required_unless_present = "dead",
        conflicts_with = "dead"
    )]
    run: Option<String>,
    /// Replay every dead run (dead letter) not replayed yet.
    #[arg(long)]
    dead: bool,
    /// Keep the steps that succeeded and start at the one that failed (for a run whose
    /// earlier steps created something); without it every step runs again.
    #[arg(long, conflicts_with = "dead")]
    resume: bool,
    /// With `--dead`: only this flow's dead runs.
    #[arg(long, requires = "dead", value_name = "FLOW")]
    flow: Option<String>,
    #[command(flatten)]
    data: DataArgs,
}

fn parse_state(s: &str) -> Result<RunState, String> {
    s.parse::<RunState>().map_err(|_| {
        format!(
            "unknown state {s:?}; one of {}",
            RunState::ALL.map(RunState::as_str).join(", ")
        )
    })
}

fn parse_id(s: &str) -> anyhow::Result<RunId> {
    s.trim()
        .parse::<RunId>()
        .map_err(|_| anyhow!("{s:?} is not a run id (a UUID as `hlbridge runs` prints it)"))
}

/// Opens the existing store (`--database URL`, or SQLite in `--data DIR`: never creates
/// one).
pub async fn open_store(data: &DataArgs) -> anyhow::Result<Arc<dyn Store>> {
    Ok(data.db().open_existing().await?.1)
}

/// Runs `hlbridge runs`.
pub async fn run(args: RunsArgs) -> anyhow::Result<()> {
    match args.command {
        Some(RunsCommand::Show(s)) => show(s).await,
        None => list(args.list).await,
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let store = open_store(&args.data).await?;
    let runs = store
        .list_runs(&RunFilter {
            flow_id: args.flow.clone(),
            state: args.state,
            limit: args.limit,
        })
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    if runs.is_empty() {
        println!("no runs");
        return Ok(());
    }
    println!("{}", table(&runs));
    let counts = store.count_runs(args.flow.as_deref()).await?;
    let total: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    println!(
        "{} shown (newest first); in the store: {}",
        runs.len(),
        total.join(", ")
    );
    Ok(())
}

/// The run table.
pub fn table(runs: &[RunSummary]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "run",
            "flow",
            "state",
            "tries",
            "created (UTC)",
            "took",
            "error",
        ]);
    for r in runs {
        let created = r
            .created_at
            .format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .unwrap_or_default();
        let took = match r.started_at {
            Some(s) => millis(s, r.finished_at),
            None => "—".into(),
        };
        let mut error = r.last_error.clone().unwrap_or_default();
        if error.chars().count() > 60 {
            error = format!("{}…", error.chars().take(60).collect::<String>());
        }
        t.add_row([
            r.id.to_string(),
            r.flow_id.clone(),
            r.state.to_string(),
            r.attempts.to_string(),
            created,
            took,
            error,
        ]);
    }
    t
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let id = parse_id(&args.id)?;
    let store = open_store(&args.data).await?;
    let detail = store
        .run_detail(id)
        .await?
        .ok_or_else(|| anyhow!("no run {id} in {}", args.data.dir().display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
    } else {
        print_run(&detail);
    }
    Ok(())
}

/// Runs `hlbridge replay`.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let store = open_store(&args.data).await?;
    let new = if args.dead {
        let ids = store.replay_dead(args.flow.as_deref()).await?;
        if ids.is_empty() {
            println!(
                "no dead runs to replay{}",
                args.flow
                    .as_ref()
                    .map(|f| format!(" for flow {f}"))
                    .unwrap_or_default()
            );
            return Ok(());
        }
        ids
    } else {
        let id = parse_id(args.run.as_deref().unwrap_or_default())?;
        if args.resume {
            vec![store.resume(id).await?]
        } else {
            vec![store.replay(id).await?]
        }
    };
    for id in &new {
        if let Some(d) = store.run_detail(*id).await? {
            let of = d.run.replay_of.map(|r| r.to_string()).unwrap_or_default();
            if let Some(security) = store.security() {
                // The same event the admin API records, with the command line as the actor.
                let event = AuditEvent::new(Actor::cli(), AuditAction::RunReplayed)
                    .target(of.clone())
                    .details(
                        serde_json::json!({ "new_run": id.to_string(), "resume": args.resume }),
                    );
                audit::record(security.as_ref(), event).await?;
            }
            println!("queued run {id} (flow {}, replay of {of})", d.run.flow_id);
        }
    }
    println!(
        "{} run(s) queued; a running `hlbridge serve` executes them (see `hlbridge runs`)",
        new.len()
    );
    Ok(())
}
