//! `hlbridge tokens create|list|revoke`: API tokens for the admin API, each with a role.
//! A token is printed once, when it is created; only its SHA-256 is stored.

use std::time::Duration;

use clap::{Args, Subcommand};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use hlbridge_engine::security::{Actor, Role};
use time::format_description::well_known::Rfc3339;

use crate::flows::DataArgs;
use crate::users::parse_role;
use crate::vault::open_security;

/// Arguments of `hlbridge tokens`.
#[derive(Args, Debug)]
pub struct TokensArgs {
    #[command(subcommand)]
    command: TokensCommand,
}

#[derive(Subcommand, Debug)]
enum TokensCommand {
    /// Create a token with a role; it is shown once.
    Create(CreateArgs),
    /// List the tokens (never their values).
    List(ListArgs),
    /// Revoke a token by id.
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// What the token is for (e.g. `ci`).
    #[arg(long)]
    name: String,
    /// Role: owner, admin, editor, operator or viewer.
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// Expire after this long (e.g. `90d`, `12h`); default: until revoked.
    #[arg(long, value_parser = crate::audit::parse_span, value_name = "DURATION")]
    ttl: Option<Duration>,
    /// Print JSON (`{"token": …, "info": …}`).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArgs,
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
struct RevokeArgs {
    /// The token's id (as `hlbridge tokens list` prints it).
    id: String,
    #[command(flatten)]
    data: DataArgs,
}

fn when(t: Option<time::OffsetDateTime>) -> String {
    t.and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}

/// Runs `hlbridge tokens …`.
pub async fn run(args: TokensArgs) -> anyhow::Result<()> {
    let by = Actor::cli();
    match args.command {
        TokensCommand::Create(a) => {
            let sec = open_security(&a.data).await?;
            let t = sec
                .users()
                .create_token(&a.name, a.role, a.ttl, &by)
                .await?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "token": t.token.expose(),
                        "info": t.info,
                    }))?
                );
            } else {
                println!("{}", t.token.expose());
                eprintln!(
                    "API token `{}` ({}), id {}. Copy it now: it is not shown again.\nUse it as `Authorization: Bearer <token>`.",
                    t.info.name, t.info.role, t.info.id
                );
            }
        }
        TokensCommand::List(a) => {
            let sec = open_security(&a.data).await?;
            let tokens = sec.users().list_tokens().await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else if tokens.is_empty() {
                println!(
                    "No API tokens. Create one with `hlbridge tokens create --name N --role R`."
                );
            } else {
                let mut t = Table::new();
                t.load_style(UTF8_FULL_CONDENSED)
                    .set_content_arrangement(ContentArrangement::Dynamic)
                    .set_header(vec![
                        "ID",
                        "NAME",
                        "ROLE",
                        "CREATED",
                        "LAST USED",
                        "EXPIRES",
                        "STATE",
                    ]);
                for k in tokens {
                    let state = if k.revoked_at.is_some() {
                        "revoked"
                    } else if k
                        .expires_at
                        .is_some_and(|e| e <= time::OffsetDateTime::now_utc())
                    {
                        "expired"
                    } else {
                        "active"
                    };
                    t.add_row(vec![
                        k.id,
                        k.name,
                        k.role.to_string(),
                        when(Some(k.created_at)),
                        when(k.last_used_at),
                        when(k.expires_at),
                        state.to_owned(),
                    ]);
                }
                println!("{t}");
            }
        }
        TokensCommand::Revoke(a) => {
            let sec = open_security(&a.data).await?;
            sec.users().revoke_token(&a.id, &by).await?;
            println!("Revoked token {}.", a.id);
        }
    }
    Ok(())
}
