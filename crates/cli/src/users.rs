//! `hlbridge users add|list|remove|role|password`: the users of the admin API and the web
//! UI. Passwords are hashed with argon2id; without `--password` the password is prompted
//! for (or read from standard input when it is not a terminal); `--no-password` makes a
//! user that can only be given API tokens.

use anyhow::bail;
use clap::{Args, Subcommand};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use hlbridge_engine::security::{Actor, Role};

use crate::flows::DataArgs;
use crate::vault::{open_security, prompt_secret, secret_arg};

/// Arguments of `hlbridge users`.
#[derive(Args, Debug)]
pub struct UsersArgs {
    #[command(subcommand)]
    command: UsersCommand,
}

#[derive(Subcommand, Debug)]
enum UsersCommand {
    /// Add a user with a role: owner, admin, editor, operator or viewer.
    Add(AddArgs),
    /// List the users.
    List(ListArgs),
    /// Remove a user (and end their sessions).
    Remove(NameArgs),
    /// Change a user's role.
    Role(RoleArgs),
    /// Set a user's password (ends their sessions).
    Password(PasswordArgs),
}

#[derive(Args, Debug)]
struct AddArgs {
    /// Login name.
    name: String,
    /// Role: owner, admin, editor, operator or viewer.
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// The password (`@FILE`, `-` for standard input, or the value); prompted when absent.
    #[arg(
        long,
        env = "HLBRIDGE_USER_PASSWORD",
        hide_env_values = true,
        conflicts_with = "no_password"
    )]
    password: Option<String>,
    /// No password: the user cannot log in with one (give them API tokens).
    #[arg(long)]
    no_password: bool,
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
struct NameArgs {
    /// Login name.
    name: String,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args, Debug)]
struct RoleArgs {
    /// Login name.
    name: String,
    /// The new role.
    #[arg(value_parser = parse_role)]
    role: Role,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args, Debug)]
struct PasswordArgs {
    /// Login name.
    name: String,
    /// The password (`@FILE`, `-`, or the value); prompted when absent.
    #[arg(long, env = "HLBRIDGE_USER_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    #[command(flatten)]
    data: DataArgs,
}

/// Parses a role name.
pub fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn password(given: Option<&str>) -> anyhow::Result<hlbridge_engine::security::Secret> {
    match given {
        Some(p) => secret_arg(p, "password"),
        None => prompt_secret("Password: ", true),
    }
}

/// Runs `hlbridge users …`.
pub async fn run(args: UsersArgs) -> anyhow::Result<()> {
    let by = Actor::cli();
    match args.command {
        UsersCommand::Add(a) => {
            let pw = if a.no_password {
                None
            } else {
                Some(password(a.password.as_deref())?)
            };
            let sec = open_security(&a.data).await?;
            let u = sec
                .users()
                .add_user(&a.name, a.role, pw.as_ref(), &by)
                .await?;
            println!(
                "Added user `{}` ({}){}.",
                u.name,
                u.role,
                if u.has_password { "" } else { ", no password" }
            );
        }
        UsersCommand::List(a) => {
            let sec = open_security(&a.data).await?;
            let users = sec.users().list_users().await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else if users.is_empty() {
                println!("No users yet. Add one with `hlbridge users add <name> --role owner`.");
            } else {
                let mut t = Table::new();
                t.load_style(UTF8_FULL_CONDENSED)
                    .set_content_arrangement(ContentArrangement::Dynamic)
                    .set_header(vec!["NAME", "ROLE", "PASSWORD", "CREATED"]);
                for u in users {
                    t.add_row(vec![
                        u.name,
                        u.role.to_string(),
                        if u.has_password { "set" } else { "none" }.to_owned(),
                        u.created_at
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default(),
                    ]);
                }
                println!("{t}");
            }
        }
        UsersCommand::Remove(a) => {
            let sec = open_security(&a.data).await?;
            sec.users().remove_user(&a.name, &by).await?;
            println!("Removed user `{}`.", a.name);
        }
        UsersCommand::Role(a) => {
            let sec = open_security(&a.data).await?;
            sec.users().set_role(&a.name, a.role, &by).await?;
            println!("`{}` is now {}.", a.name, a.role);
        }
        UsersCommand::Password(a) => {
            let pw = password(a.password.as_deref())?;
            if pw.is_empty() {
                bail!("the password is empty");
            }
            let sec = open_security(&a.data).await?;
            sec.users().set_password(&a.name, &pw, &by).await?;
            println!(
                "Password of `{}` changed; their sessions are ended.",
                a.name
            );
        }
    }
    Ok(())
}
