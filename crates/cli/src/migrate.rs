//! `hlbridge migrate`: applies the store's pending migrations (SQLite in `--data DIR`, or
//! PostgreSQL at `--database URL`) and prints what it did. Every other command migrates on
//! start too; run this one first when upgrading a cluster, so the schema is ready before
//! the new binaries start (migrations only add tables, columns and indexes, so processes
//! still on the old binary keep working).

use anyhow::{Context, Result};
use clap::Args;
use hlbridge_engine::store::backend::migrate;

use crate::engine_args::DatabaseArgs;

/// Options of `hlbridge migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `hlbridge migrate`.
pub async fn run(args: MigrateArgs) -> Result<()> {
    let db = args.db.database()?;
    let report = migrate(&db)
        .await
        .with_context(|| format!("migrating {db}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("database: {}", report.database);
    for m in &report.applied {
        println!("applied   {:04} {}", m.version, m.description);
    }
    if !report.already.is_empty() {
        println!(
            "up to date before: {}",
            report
                .already
                .iter()
                .map(|m| format!("{:04} {}", m.version, m.description))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if report.applied.is_empty() {
        println!("nothing to apply: the schema is up to date");
    } else {
        println!("{} migration(s) applied", report.applied.len());
    }
    Ok(())
}
