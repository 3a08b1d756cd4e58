//! `hlbridge connections`: the stored connections with their health — `ok`, `expiring`
//! (the access token is refreshed on next use) or `broken` with the reason and what to do —
//! never their secrets. Subcommands: `show`, `check` (get a valid token now), `refresh`
//! (an agency install's locations), `remove`, and `scopes --flows DIR` (what the enabled
//! flows need from each connection, and what a connection lacks).

use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use hlbridge_engine::security::scopes::{flow_scopes, missing_scopes};
use hlbridge_engine::security::{Actor, ConnectionInfo, ConnectionKind, Health};
use hlbridge_engine::validate::compile_paths;
use time::OffsetDateTime;

use crate::flows::DataArgs;
use crate::vault::open_security;

/// Arguments of `hlbridge connections`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ConnectionsArgs {
    #[command(subcommand)]
    command: Option<ConnectionsCommand>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args, Debug)]
struct NameArgs {
    /// The connection's name.
    name: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args, Debug)]
struct ScopesArgs {
    /// Flow files or directories.
    #[arg(long = "flows", required = true, value_name = "PATH")]
    flows: Vec<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Subcommand, Debug)]
enum ConnectionsCommand {
    /// One connection in detail (agency installs: every location).
    Show(NameArgs),
    /// Get a valid token now (refreshing if needed) and show the result.
    Check(NameArgs),
    /// Agency installs: re-read the installed locations and mint their tokens.
    Refresh(NameArgs),
    /// Remove a connection and its secrets.
    Remove(NameArgs),
    /// The scopes the enabled flows need from each connection, and what is missing.
    Scopes(ScopesArgs),
}

fn ago_or_in(t: OffsetDateTime) -> String {
    let d = t - OffsetDateTime::now_utc();
    let secs = d.whole_seconds();
    let abs = secs.unsigned_abs();
    let human = if abs < 120 {
        format!("{abs}s")
    } else if abs < 7200 {
        format!("{}m", abs / 60)
    } else if abs < 172_800 {
        format!("{}h", abs / 3600)
    } else {
        format!("{}d", abs / 86_400)
    };
    if secs >= 0 {
        format!("in {human}")
    } else {
        format!("{human} ago")
    }
}

fn kind_label(c: &ConnectionInfo) -> String {
    match c.kind {
        ConnectionKind::HighlevelOauth => {
            if c.config
                .user_type
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case("company"))
            {
                "highlevel oauth (agency)".into()
            } else {
                "highlevel oauth".into()
            }
        }
        ConnectionKind::HighlevelToken => "highlevel token".into(),
        ConnectionKind::App => "app".into(),
    }
}

fn detail(c: &ConnectionInfo) -> String {
    let mut parts = Vec::new();
    match c.kind {
        ConnectionKind::HighlevelOauth | ConnectionKind::HighlevelToken => {
            if let Some(l) = &c.config.location_id {
                parts.push(format!("location {l}"));
            }
            if let Some(co) = &c.config.company_id
                && !c.locations.is_empty()
            {
                parts.push(format!("company {co}, {} location(s)", c.locations.len()));
            }
            if let Some(e) = c.expires_at {
                parts.push(format!("token expires {}", ago_or_in(e)));
            }
            if let Some(s) = &c.config.scopes {
                parts.push(format!("scopes: {}", s.join(" ")));
            }
            if let Some(b) = &c.config.base_url {
                parts.push(b.clone());
            }
        }
        ConnectionKind::App => {
            if let Some(b) = &c.config.base_url {
                parts.push(b.clone());
            }
            if let Some(a) = c.config.app_auth {
                let a = serde_json::to_value(a)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                match &c.config.api_key_header {
                    Some(h) => parts.push(format!("auth {a} ({h})")),
                    None => parts.push(format!("auth {a}")),
                }
            }
            if c.config.hmac {
                parts.push("webhooks signed (HMAC)".into());
            }
        }
    }
    parts.join("; ")
}

fn status(c: &ConnectionInfo) -> String {
    match &c.health {
        Health::Ok => "ok".into(),
        Health::Expiring { at } => format!("expiring ({}; refreshed on next use)", ago_or_in(*at)),
        Health::Broken { reason } => format!(
            "BROKEN: {reason}\nits flows are paused; run `hlbridge connect highlevel --name {}` again",
            c.name
        ),
    }
}

/// A connection as a few lines of text (never a secret).
pub fn describe(c: &ConnectionInfo) -> String {
    let mut s = format!(
        "Connection `{}`: {}, {}\n  {}",
        c.name,
        kind_label(c),
        status(c),
        detail(c)
    );
    for l in &c.locations {
        s.push_str(&format!(
            "\n  location {}{}: {}{}",
            l.location_id,
            l.name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            l.status,
            match (&l.reason, l.token_expires_at) {
                (Some(r), _) => format!(" — {r}"),
                (None, Some(e)) => format!(", token expires {}", ago_or_in(e)),
                (None, None) => ", no token yet".into(),
            }
        ));
    }
    s
}

/// Runs `hlbridge connections …`.
pub async fn run(args: ConnectionsArgs) -> anyhow::Result<()> {
    match args.command {
        None => list(args.list).await,
        Some(ConnectionsCommand::Show(a)) => {
            let conns = open_security(&a.data).await?.connections().await?;
            let c = conns
                .get(&a.name)
                .await?
                .ok_or_else(|| anyhow!("no connection named `{}`", a.name))?;
            print_one(&c, a.json)
        }
        Some(ConnectionsCommand::Check(a)) => {
            let conns = open_security(&a.data).await?.connections().await?;
            let c = conns.check(&a.name).await?;
            print_one(&c, a.json)?;
            if matches!(c.health, Health::Broken { .. }) {
                anyhow::bail!("connection `{}` is broken", a.name);
            }
            Ok(())
        }
        Some(ConnectionsCommand::Refresh(a)) => {
            let conns = open_security(&a.data).await?.connections().await?;
            let added = conns.refresh_locations(&a.name, &Actor::cli()).await?;
            if !a.json {
                println!(
                    "{} new location(s){}",
                    added.len(),
                    if added.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", added.join(", "))
                    }
                );
            }
            let c = conns
                .get(&a.name)
                .await?
                .ok_or_else(|| anyhow!("no connection named `{}`", a.name))?;
            print_one(&c, a.json)
        }
        Some(ConnectionsCommand::Remove(a)) => {
            let conns = open_security(&a.data).await?.connections().await?;
            conns.remove(&a.name, &Actor::cli()).await?;
            println!("Removed connection `{}` and its secrets.", a.name);
            Ok(())
        }
        Some(ConnectionsCommand::Scopes(a)) => scopes(a).await,
    }
}

fn print_one(c: &ConnectionInfo, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(c)?);
    } else {
        println!("{}", describe(c));
    }
    Ok(())
}

async fn list(a: ListArgs) -> anyhow::Result<()> {
    let conns = open_security(&a.data).await?.connections().await?;
    let all = conns.list().await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        println!(
            "No connections yet. Add one with `hlbridge connect highlevel …` or `hlbridge connect app …`."
        );
        return Ok(());
    }
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["NAME", "KIND", "STATUS", "DETAIL"]);
    for c in &all {
        t.add_row(vec![c.name.clone(), kind_label(c), status(c), detail(c)]);
    }
    println!("{t}");
    let broken = all
        .iter()
        .filter(|c| matches!(c.health, Health::Broken { .. }))
        .count();
    if broken > 0 {
        eprintln!("{broken} broken connection(s): their flows are paused until authorized again.");
    }
    Ok(())
}

async fn scopes(a: ScopesArgs) -> anyhow::Result<()> {
    let flows = compile_paths(&a.flows, &Default::default()).map_err(|d| {
        anyhow!(
            "{}",
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let conns = open_security(&a.data).await?.connections().await?;
    let granted = conns.validation_connections().await?;
    let mut needed: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for f in flows.iter().filter(|f| f.flow.enabled) {
        for (c, s) in flow_scopes(f) {
            needed.entry(c).or_default().extend(s);
        }
    }
    let missing = missing_scopes(flows.iter(), &granted);
    for (conn, scopes) in &needed {
        let state = match granted.get(conn) {
            None => "not connected".to_owned(),
            Some(None) => "connected, grants unknown".to_owned(),
            Some(Some(_)) => match missing.get(conn) {
                Some(m) => format!("LACKS {}", m.iter().cloned().collect::<Vec<_>>().join(" ")),
                None => "ok".to_owned(),
            },
        };
        println!(
            "{conn}: needs {} — {state}",
            scopes.iter().cloned().collect::<Vec<_>>().join(" ")
        );
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "some connections lack scopes their flows need; connect them again with `hlbridge connect highlevel --flows …`"
        );
    }
    Ok(())
}
