//! `hlbridge audit [--since DURATION|DATE] [--actor X] [--action A] [--json]`: the audit
//! log — logins and failed logins, connections created, refreshed and broken, replays,
//! secrets viewed and rotated, users, roles and tokens — oldest first.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use hlbridge_engine::security::audit;
use hlbridge_engine::store::security::AuditFilter;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::flows::DataArgs;
use crate::vault::open_security;

/// Arguments of `hlbridge audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only entries since this long ago (`30m`, `24h`, `7d`) or this date (`2025-01-31`,
    /// RFC 3339).
    #[arg(long, value_name = "DURATION|DATE")]
    since: Option<String>,
    /// Only this actor (user name, token name, or component such as `token-refresh`).
    #[arg(long, value_name = "NAME")]
    actor: Option<String>,
    /// Only this action (e.g. `login.failed`, `connection.broken`).
    #[arg(long, value_name = "ACTION")]
    action: Option<String>,
    /// At most this many (the newest); 0: all.
    #[arg(long, default_value_t = 200)]
    limit: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArgs,
}

/// Parses `500ms`, `30s`, `5m`, `2h`, `7d`, `2w` (or a number of seconds).
pub fn parse_span(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s, 5m, 2h or 7d"))?;
    let secs = match unit.trim() {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => n,
        "m" | "min" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        "w" => n * 7 * 86_400,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use s, m, h, d or w)"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}

/// `--since`: a duration ago, a date (midnight UTC) or an RFC 3339 time.
pub fn parse_since(s: &str, now: OffsetDateTime) -> anyhow::Result<OffsetDateTime> {
    if let Ok(d) = parse_span(s) {
        return Ok(now - d);
    }
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(s.trim(), &fmt).with_context(|| {
        format!("--since `{s}`: give a duration (24h, 7d) or a date (2025-01-31)")
    })?;
    Ok(d.midnight().assume_utc())
}

/// Runs `hlbridge audit`.
pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, OffsetDateTime::now_utc()))
        .transpose()?;
    let sec = open_security(&args.data).await?;
    let entries = audit::list(
        sec.store().as_ref(),
        &AuditFilter {
            since,
            actor: args.actor.clone(),
            action: args.action.clone(),
            limit: args.limit,
        },
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("No audit entries match.");
        return Ok(());
    }
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["WHEN", "WHO", "WHAT", "TARGET", "FROM", "DETAILS"]);
    for e in entries {
        t.add_row(vec![
            e.at.format(&Rfc3339).unwrap_or_default(),
            format!("{}:{}", e.actor_kind, e.actor),
            e.action,
            e.target.unwrap_or_default(),
            e.source.unwrap_or_default(),
            if e.details.as_object().is_some_and(|m| m.is_empty()) {
                String::new()
            } else {
                e.details.to_string()
            },
        ]);
    }
    println!("{t}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hlbridge_engine::security::{Actor, Role, Secret};

    #[test]
    fn spans_and_dates() {
        assert_eq!(parse_span("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_span("90"), Ok(Duration::from_secs(90)));
        assert!(parse_span("3y").is_err());
        let now = time::macros::datetime!(2025-02-01 12:00 UTC);
        assert_eq!(
            parse_since("24h", now).expect("span"),
            time::macros::datetime!(2025-01-31 12:00 UTC)
        );
        assert_eq!(
            parse_since("2025-01-15", now).expect("date"),
            time::macros::datetime!(2025-01-15 0:00 UTC)
        );
        assert!(parse_since("yesterday", now).is_err());
    }

    #[tokio::test]
    async fn users_tokens_and_audit_commands() {
        let data = DataArgs {
            data: Some(
                std::env::temp_dir().join(format!("hlbridge-cli-audit-{}", uuid::Uuid::new_v4())),
            ),
            ..DataArgs::default()
        };
        let sec = open_security(&data).await.expect("open");
        let u = sec.users();
        u.add_user(
            "ann",
            Role::Admin,
            Some(&Secret::new("long enough pw")),
            &Actor::cli(),
        )
        .await
        .expect("add");
        assert!(
            u.authenticate_password("ann", &Secret::new("wrong password"), Some("10.1.1.1"))
                .await
                .is_err()
        );
        let t = u
            .create_token(
                "ci",
                Role::Viewer,
                Some(parse_span("30d").expect("span")),
                &Actor::cli(),
            )
            .await
            .expect("token");
        u.revoke_token(&t.info.id, &Actor::cli())
            .await
            .expect("revoke");
        let entries = audit::list(
            sec.store().as_ref(),
            &AuditFilter {
                actor: Some("ann".into()),
                ..Default::default()
            },
        )
        .await
        .expect("list");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].action, "login.failed");
        assert_eq!(entries[0].source.as_deref(), Some("10.1.1.1"));
        run(AuditArgs {
            since: Some("1h".into()),
            actor: None,
            action: None,
            limit: 0,
            json: false,
            data: data.clone(),
        })
        .await
        .expect("audit command");
        let _ = std::fs::remove_dir_all(data.dir());
    }
}
