//! `hlbridge vault rotate|rotate-master|status`: the key ring of the vault that encrypts
//! every stored secret. `rotate` creates a new data key and re-encrypts every secret under it
//! while a running `hlbridge serve` keeps working (it reloads the key ring by itself);
//! `rotate-master` replaces the master key that wraps the ring (the key file, or the value of
//! `HLBRIDGE_MASTER_KEY`); `status` shows the keys and how many secrets each seals.
//!
//! Also the helpers the security commands share: opening the security services of a data
//! directory, and reading a secret given on the command line, from a file or a prompt.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hlbridge_engine::security::vault::{MASTER_KEY_ENV, MASTER_KEY_FILE, rotate_master_key};
use hlbridge_engine::security::{
    Actor, AuditAction, AuditEvent, MasterKey, Secret, Security, SecurityConfig,
};
use serde_json::json;

use crate::flows::DataArgs;

/// Opens the security services (vault, connections, users, audit) of the data directory.
pub async fn open_security(data: &DataArgs) -> anyhow::Result<Security> {
    if data.database.is_some() {
        // PostgreSQL keeps them too; the vault's master key file (when HLBRIDGE_MASTER_KEY
        // is not set) stays in --data DIR.
        let (db, store) = data.db().open_existing().await?;
        let security = store
            .security()
            .ok_or_else(|| anyhow::anyhow!("the store at {db} keeps no connections or users"))?;
        return Ok(Security::new(
            security,
            &data.dir(),
            SecurityConfig::default(),
        ));
    }
    let dir = data.dir();
    Security::open(&dir, SecurityConfig::default())
        .await
        .with_context(|| format!("opening the store in {}", dir.display()))
}

/// A secret given as an argument: the value itself, `@FILE` (its first line), or `-` (a
/// line of standard input). Prefer `@FILE`, `-` or the environment variable over a literal:
/// command lines are visible to other users of the machine.
pub fn secret_arg(value: &str, what: &str) -> anyhow::Result<Secret> {
    let s = if value == "-" {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .with_context(|| format!("reading the {what} from standard input"))?;
        line
    } else if let Some(path) = value.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("reading the {what} from {path}"))?
    } else {
        value.to_owned()
    };
    let s = s.lines().next().unwrap_or_default().trim().to_owned();
    if s.is_empty() {
        bail!("the {what} is empty");
    }
    Ok(Secret::new(s))
}

/// Prompts for a secret on the terminal without echo (twice when `confirm`); reads a line
/// from standard input when it is not a terminal.
pub fn prompt_secret(prompt: &str, confirm: bool) -> anyhow::Result<Secret> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return secret_arg("-", "password");
    }
    let read = |p: &str| -> anyhow::Result<String> {
        eprint!("{p}");
        std::io::stderr().flush().ok();
        let echo_off = std::process::Command::new("stty")
            .arg("-echo")
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success());
        let mut line = String::new();
        let res = stdin.lock().read_line(&mut line);
        if echo_off {
            let _ = std::process::Command::new("stty")
                .arg("echo")
                .stdin(std::process::Stdio::inherit())
                .status();
            eprintln!();
        }
        res.context("reading the password")?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    };
    let first = Secret::new(read(prompt)?);
    if confirm {
        let again = Secret::new(read("Again: ")?);
        if again != first {
            bail!("the two entries differ");
        }
    }
    Ok(first)
}

/// Arguments of `hlbridge vault`.
#[derive(Args, Debug)]
pub struct VaultArgs {
    #[command(subcommand)]
    command: VaultCommand,
}

#[derive(Subcommand, Debug)]
enum VaultCommand {
    /// Create a new data key and re-encrypt every secret under it (online).
    Rotate(VaultCmdArgs),
    /// Replace the master key: re-wrap every data key under a new one (online). With a key
    /// file, the file is replaced; with HLBRIDGE_MASTER_KEY, the new value is printed once
    /// (or taken from --new-key) and must be set before the next start.
    RotateMaster(RotateMasterArgs),
    /// Show the key ring: each key, its state and how many secrets it seals.
    Status(VaultCmdArgs),
}

#[derive(Args, Debug)]
struct RotateMasterArgs {
    /// The new master key (base64 of 32 random bytes) as `@FILE` or `-` (standard input);
    /// generated when not given.
    #[arg(long, value_name = "@FILE|-")]
    new_key: Option<String>,
    #[command(flatten)]
    cmd: VaultCmdArgs,
}

#[derive(Args, Debug)]
struct VaultCmdArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArgs,
}

/// Runs `hlbridge vault …`.
pub async fn run(args: VaultArgs) -> anyhow::Result<()> {
    match args.command {
        VaultCommand::Rotate(a) => {
            let sec = open_security(&a.data).await?;
            let vault = sec.vault().await?;
            let report = vault.rotate().await?;
            sec.audit(
                AuditEvent::new(Actor::cli(), AuditAction::SecretRotated).details(json!({
                    "new_key": report.new_key,
                    "retired": report.retired,
                    "reencrypted": report.reencrypted,
                })),
            )
            .await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "Rotated the vault key: {} secret(s) re-encrypted under {}; retired {}.",
                    report.reencrypted,
                    report.new_key,
                    if report.retired.is_empty() {
                        "none".to_owned()
                    } else {
                        report.retired.join(", ")
                    }
                );
            }
        }
        VaultCommand::RotateMaster(a) => rotate_master(a).await?,
        VaultCommand::Status(a) => {
            let sec = open_security(&a.data).await?;
            let status = sec.vault().await?.status().await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!("master key {}", status.master_key);
                for (id, state, n) in &status.keys {
                    println!("  {id}  {state:<8}  {n} secret(s)");
                }
            }
        }
    }
    Ok(())
}

async fn rotate_master(a: RotateMasterArgs) -> anyhow::Result<()> {
    let (new, generated) = match &a.new_key {
        Some(v) => (
            MasterKey::from_base64(secret_arg(v, "new master key")?.expose())?,
            false,
        ),
        None => (MasterKey::generate(), true),
    };
    let new_text = new.to_base64();
    let sec = open_security(&a.cmd.data).await?;
    let vault = sec.vault().await?;
    let from_env = std::env::var(MASTER_KEY_ENV).is_ok_and(|v| !v.trim().is_empty());
    let report = rotate_master_key(&vault, &a.cmd.data.dir(), new).await?;
    sec.audit(
        AuditEvent::new(Actor::cli(), AuditAction::SecretRotated).details(json!({
            "master_key": report.master_key,
            "previous_master_key": report.previous_master_key,
            "rewrapped": report.rewrapped,
        })),
    )
    .await?;
    if a.cmd.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "Rotated the master key: {} data key(s) re-wrapped; master key {} replaces {}.",
            report.rewrapped, report.master_key, report.previous_master_key
        );
    }
    if from_env {
        eprintln!(
            "The database now needs the new master key: set {MASTER_KEY_ENV} to it before the \
             next start of every hlbridge process (running ones keep working until then)."
        );
        if generated {
            // Shown once, because there is nowhere else it is kept; and audited as shown.
            sec.audit(
                AuditEvent::new(Actor::cli(), AuditAction::SecretViewed)
                    .target("master key")
                    .details(json!({ "master_key": report.master_key })),
            )
            .await?;
            println!("{MASTER_KEY_ENV}={}", new_text.expose());
        }
    } else {
        println!(
            "Key file {} replaced; back it up (the old key no longer opens this database).",
            a.cmd.data.dir().join(MASTER_KEY_FILE).display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_args() {
        let dir = std::env::temp_dir().join(format!("hlbridge-cli-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("s.txt");
        std::fs::write(&f, "from-file\nignored\n").expect("write");
        assert_eq!(
            secret_arg(&format!("@{}", f.display()), "x")
                .expect("file")
                .expose(),
            "from-file"
        );
        assert_eq!(secret_arg("literal", "x").expect("lit").expose(), "literal");
        assert!(secret_arg("  ", "x").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
