//! The audit log: who did what, when and from where, in an append-only table.
//!
//! Call [`record`] with an [`AuditEvent`]. The store has no way to change or delete an entry
//! (and the SQLite schema has triggers refusing `UPDATE` and `DELETE` on `audit_log`).
//! Details are JSON and never hold secrets: [`sanitize`] replaces the value of any key that
//! looks like one (`token`, `secret`, `password`, `authorization`, …) before it is stored.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::store::security::{AuditFilter, AuditRecord, SecurityStore};
use crate::store::{StoreError, now};

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A signed-in user.
    User,
    /// An API token.
    Token,
    /// hlbridge itself (a worker, the token refresher) or the local CLI.
    System,
}

impl ActorKind {
    /// The kind as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Token => "token",
            ActorKind::System => "system",
        }
    }
}

/// An actor: its kind and name (user name, token name, or component).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Actor {
    /// Kind.
    pub kind: ActorKind,
    /// Name.
    pub name: String,
}

impl Actor {
    /// A user.
    pub fn user(name: impl Into<String>) -> Actor {
        Actor {
            kind: ActorKind::User,
            name: name.into(),
        }
    }

    /// An API token (by its name).
    pub fn token(name: impl Into<String>) -> Actor {
        Actor {
            kind: ActorKind::Token,
            name: name.into(),
        }
    }

    /// hlbridge itself (`component`: e.g. `token-refresh`).
    pub fn system(component: impl Into<String>) -> Actor {
        Actor {
            kind: ActorKind::System,
            name: component.into(),
        }
    }

    /// The local command line, run by the operating-system user.
    pub fn cli() -> Actor {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        Actor::system(format!("cli:{user}"))
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.name)
    }
}

macro_rules! actions {
    ($($(#[$doc:meta])* $v:ident => $s:literal,)*) => {
        /// What was done (a closed set).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum AuditAction {
            $($(#[$doc])* #[serde(rename = $s)] $v,)*
        }

        impl AuditAction {
            /// Every action.
            pub const ALL: &'static [AuditAction] = &[$(AuditAction::$v,)*];

            /// The action as stored and printed.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(AuditAction::$v => $s,)*
                }
            }
        }
    };
}

actions! {
    /// A successful password login.
    Login => "login",
    /// A failed login (wrong password, unknown user, throttled).
    LoginFailed => "login.failed",
    /// A logout.
    Logout => "logout",
    /// A connection was created (or replaced by a new authorization).
    ConnectionCreated => "connection.created",
    /// A connection's token was refreshed.
    ConnectionRefreshed => "connection.refreshed",
    /// A connection broke for good (refresh token rejected); its flows are paused.
    ConnectionBroken => "connection.broken",
    /// A connection was removed.
    ConnectionRemoved => "connection.removed",
    /// An agency connection's list of installed locations was refreshed.
    ConnectionLocations => "connection.locations",
    /// A flow was created.
    FlowCreated => "flow.created",
    /// A flow was changed.
    FlowChanged => "flow.changed",
    /// A flow was enabled.
    FlowEnabled => "flow.enabled",
    /// A flow was disabled.
    FlowDisabled => "flow.disabled",
    /// A run was replayed.
    RunReplayed => "run.replayed",
    /// A secret was shown to someone.
    SecretViewed => "secret.viewed",
    /// The vault's data key was rotated.
    SecretRotated => "secret.rotated",
    /// A user was created.
    UserCreated => "user.created",
    /// A user was removed.
    UserRemoved => "user.removed",
    /// A user's role changed.
    RoleChanged => "user.role_changed",
    /// A user's password changed.
    PasswordChanged => "user.password_changed",
    /// An API token was created.
    TokenCreated => "token.created",
    /// An API token was revoked.
    TokenRevoked => "token.revoked",
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AuditAction::ALL
            .iter()
            .copied()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown audit action `{s}`"))
    }
}

/// One thing to record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Who.
    pub actor: Actor,
    /// What.
    pub action: AuditAction,
    /// On what (connection name, flow id, user name, run id…).
    pub target: Option<String>,
    /// From where (client address), when known.
    pub source: Option<String>,
    /// Details (sanitized before storing).
    pub details: Value,
}

impl AuditEvent {
    /// An event with no target, source or details.
    pub fn new(actor: Actor, action: AuditAction) -> AuditEvent {
        AuditEvent {
            actor,
            action,
            target: None,
            source: None,
            details: Value::Object(Map::new()),
        }
    }

    /// Sets the target.
    pub fn target(mut self, target: impl Into<String>) -> AuditEvent {
        self.target = Some(target.into());
        self
    }

    /// Sets the source address.
    pub fn source(mut self, source: Option<&str>) -> AuditEvent {
        self.source = source.map(str::to_owned);
        self
    }

    /// Sets the details.
    pub fn details(mut self, details: Value) -> AuditEvent {
        self.details = details;
        self
    }
}

/// Key names whose values are never stored in details.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "token",
        "secret",
        "password",
        "passwd",
        "authorization",
        "api_key",
        "apikey",
        "cookie",
        "credential",
        "private_key",
    ]
    .iter()
    .any(|s| k.contains(s))
        && !matches!(k.as_str(), "token_id" | "token_name")
        || matches!(k.as_str(), "code" | "auth_code" | "authorization_code")
}

/// Replaces the values of secret-looking keys (at any depth) with `"<redacted>"`.
pub fn sanitize(details: Value) -> Value {
    match details {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    if is_secret_key(&k) {
                        (k, Value::String("<redacted>".into()))
                    } else {
                        (k, sanitize(v))
                    }
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(sanitize).collect()),
        other => other,
    }
}

/// Appends an event to the audit log (details sanitized).
pub async fn record(store: &dyn SecurityStore, event: AuditEvent) -> Result<(), StoreError> {
    let rec = AuditRecord {
        id: uuid::Uuid::now_v7().to_string(),
        at: now(),
        actor_kind: event.actor.kind.as_str().to_owned(),
        actor: event.actor.name,
        action: event.action.as_str().to_owned(),
        target: event.target,
        source: event.source,
        details: sanitize(event.details),
    };
    store.append_audit(&rec).await
}

/// [`record`], logging instead of failing (for paths where the action itself must not
/// fail because the audit log could not be written).
pub async fn record_or_log(store: &dyn SecurityStore, event: AuditEvent) {
    let action = event.action;
    if let Err(e) = record(store, event).await {
        tracing::error!(action = action.as_str(), error = %e, "could not write the audit log");
    }
}

/// An audit entry as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Id.
    pub id: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `user`, `token` or `system`.
    pub actor_kind: String,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// From where.
    pub source: Option<String>,
    /// Details.
    pub details: Value,
}

impl From<AuditRecord> for AuditEntry {
    fn from(r: AuditRecord) -> Self {
        AuditEntry {
            id: r.id,
            at: r.at,
            actor_kind: r.actor_kind,
            actor: r.actor,
            action: r.action,
            target: r.target,
            source: r.source,
            details: r.details,
        }
    }
}

/// Lists audit entries, oldest first.
pub async fn list(
    store: &dyn SecurityStore,
    filter: &AuditFilter,
) -> Result<Vec<AuditEntry>, StoreError> {
    Ok(store
        .list_audit(filter)
        .await?
        .into_iter()
        .map(AuditEntry::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn details_are_sanitized() {
        let v = sanitize(json!({
            "connection": "default",
            "refresh_token": "rt",
            "nested": [{"clientSecret": "cs", "scopes": ["a"]}],
            "token_id": "t1",
            "Authorization": "Bearer x",
        }));
        assert_eq!(
            v,
            json!({
                "connection": "default",
                "refresh_token": "<redacted>",
                "nested": [{"clientSecret": "<redacted>", "scopes": ["a"]}],
                "token_id": "t1",
                "Authorization": "<redacted>",
            })
        );
    }

    #[test]
    fn actions_round_trip() {
        for a in AuditAction::ALL {
            assert_eq!(a.as_str().parse::<AuditAction>().ok(), Some(*a));
        }
        assert!("nope".parse::<AuditAction>().is_err());
        assert_eq!(Actor::user("ann").to_string(), "user:ann");
    }

    #[tokio::test]
    async fn append_only() {
        let d = std::env::temp_dir().join(format!("hlbridge-audit-{}", uuid::Uuid::new_v4()));
        let store = crate::store::SqliteStore::open(&d).await.expect("store");
        record(
            &store,
            AuditEvent::new(Actor::user("ann"), AuditAction::Login)
                .source(Some("127.0.0.1"))
                .details(json!({"password": "pw"})),
        )
        .await
        .expect("record");
        record(
            &store,
            AuditEvent::new(Actor::system("x"), AuditAction::SecretRotated),
        )
        .await
        .expect("record");
        let all = list(&store, &AuditFilter::default()).await.expect("list");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].action, "login");
        assert_eq!(all[0].details, json!({"password": "<redacted>"}));
        let only = list(
            &store,
            &AuditFilter {
                actor: Some("ann".into()),
                ..Default::default()
            },
        )
        .await
        .expect("list");
        assert_eq!(only.len(), 1);
        // The database refuses changes and deletions.
        let pool = store.writer_pool();
        let upd = sqlx::query("UPDATE audit_log SET actor = 'mallory'")
            .execute(pool)
            .await;
        assert!(upd.is_err_and(|e| e.to_string().contains("append-only")));
        let del = sqlx::query("DELETE FROM audit_log").execute(pool).await;
        assert!(del.is_err_and(|e| e.to_string().contains("append-only")));
        assert_eq!(
            list(&store, &AuditFilter::default())
                .await
                .expect("list")
                .len(),
            2
        );
        store.close().await;
        let _ = std::fs::remove_dir_all(d);
    }
}
