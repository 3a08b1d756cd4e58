//! Users, sessions, API tokens and the audit log, as the admin API and the UI need them.
//!
//! [`AccessBackend`] is the **adapter** between the server and the engine's users-and-roles
//! service ([`hlbridge_engine::security::Users`]: argon2id passwords, sessions whose CSRF
//! token is derived from the session token, API tokens stored hashed, login throttling, the
//! append-only audit log). [`EngineAccess`] implements it over the engine's
//! [`Security`]; a store without a security side gets [`NoAccess`], which refuses every
//! sign-in with a message saying why.
//!
//! The engine's user and token operations write their own audit entries (with the acting
//! principal); the server records flows, runs and connections ([`AccessBackend::record`]).

use std::sync::Arc;

use futures::future::BoxFuture;
use hlbridge_engine::security::audit::{AuditEvent, list as audit_list};
use hlbridge_engine::security::users::{AuthError, csrf_token};
use hlbridge_engine::security::{Actor, AuditAction, Role, Secret, Security};
use hlbridge_engine::store::security::AuditFilter as StoreAuditFilter;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::{Principal, Via};

/// Why an access operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// Wrong or missing credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Too many failed logins.
    #[error("{0}")]
    Throttled(String),
    /// Not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// No such user or token.
    #[error("{0} not found")]
    NotFound(String),
    /// Already exists, or the change would leave no owner.
    #[error("{0}")]
    Conflict(String),
    /// A bad name, role or password.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error("access store: {0}")]
    Storage(String),
}

impl From<AuthError> for AccessError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidCredentials => AccessError::Unauthenticated(
                "wrong user name or password, or an unknown, expired or revoked session or token"
                    .into(),
            ),
            e @ AuthError::Throttled { .. } => AccessError::Throttled(e.to_string()),
            e @ AuthError::Forbidden { .. } => AccessError::Forbidden(e.to_string()),
            AuthError::Invalid(m)
                if m.starts_with("no user") || m.starts_with("no active API token") =>
            {
                AccessError::NotFound(m)
            }
            AuthError::Invalid(m)
                if m.contains("last owner") || m.contains("exists") || m.contains("UNIQUE") =>
            {
                AccessError::Conflict(m)
            }
            AuthError::Invalid(m) => AccessError::Invalid(m),
            AuthError::Store(s) => AccessError::Storage(s.to_string()),
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A user as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UserInfo {
    /// Login name.
    pub name: String,
    /// Role.
    #[schema(value_type = String, example = "editor")]
    pub role: Role,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// An API token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// Token id (to revoke it).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// Role of requests made with it.
    #[schema(value_type = String, example = "viewer")]
    pub role: Role,
    /// Who created it.
    pub created_by: String,
    /// When (RFC 3339).
    pub created_at: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<String>,
    /// Last use (RFC 3339), if any.
    pub last_used_at: Option<String>,
}

/// A new session.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The cookie value.
    pub id: String,
    /// The principal (with the session's CSRF token).
    pub principal: Principal,
    /// Seconds until it expires.
    pub max_age_secs: u64,
}

/// One audit entry: who did what, when and from where.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// When (RFC 3339).
    pub at: String,
    /// `user`, `token` or `system`.
    pub actor_kind: String,
    /// Who.
    pub actor: String,
    /// What (`login`, `login.failed`, `flow.created`, `run.replayed`, …).
    pub action: String,
    /// On what (a flow id, run id, user name…).
    pub target: String,
    /// From where (client address).
    pub source: String,
    /// Details (never secrets).
    #[schema(value_type = Object)]
    pub detail: Value,
}

/// Which audit entries to list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::IntoParams)]
pub struct AuditFilter {
    /// Only this actor (name).
    pub actor: Option<String>,
    /// Only actions starting with this (`flow.`, `login`).
    pub action: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    pub since: Option<String>,
    /// At most this many, newest first (default 200).
    pub limit: Option<usize>,
}

/// The users-and-roles store the server uses (see the module docs). Methods that change
/// something take the acting principal and its address, for the audit log.
pub trait AccessBackend: Send + Sync {
    /// Whether any user exists (the first one may be created from this machine).
    fn has_users(&self) -> BoxFuture<'_, Result<bool, AccessError>>;
    /// Checks a password and opens a session (throttled; audited).
    fn authenticate_password<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
        source: &'a str,
    ) -> BoxFuture<'a, Result<NewSession, AccessError>>;
    /// The principal of a session cookie (with its CSRF token).
    fn authenticate_session<'a>(
        &'a self,
        session: &'a str,
    ) -> BoxFuture<'a, Result<Principal, AccessError>>;
    /// The principal of an API token.
    fn authenticate_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Principal, AccessError>>;
    /// Ends a session.
    fn logout<'a>(&'a self, session: &'a str, source: &'a str) -> BoxFuture<'a, ()>;
    /// Every user.
    fn users(&self) -> BoxFuture<'_, Result<Vec<UserInfo>, AccessError>>;
    /// Adds a user.
    fn add_user<'a>(
        &'a self,
        name: &'a str,
        role: Role,
        password: &'a str,
        by: Option<&'a Principal>,
    ) -> BoxFuture<'a, Result<UserInfo, AccessError>>;
    /// Changes a user's role and/or password (a new password ends their sessions).
    fn update_user<'a>(
        &'a self,
        name: &'a str,
        role: Option<Role>,
        password: Option<&'a str>,
        by: &'a Principal,
    ) -> BoxFuture<'a, Result<UserInfo, AccessError>>;
    /// Removes a user (and their sessions).
    fn remove_user<'a>(
        &'a self,
        name: &'a str,
        by: &'a Principal,
    ) -> BoxFuture<'a, Result<(), AccessError>>;
    /// Every token (revoked ones too).
    fn tokens(&self) -> BoxFuture<'_, Result<Vec<TokenInfo>, AccessError>>;
    /// Creates a token; returns it with its secret (shown once).
    fn create_token<'a>(
        &'a self,
        name: &'a str,
        role: Role,
        by: &'a Principal,
    ) -> BoxFuture<'a, Result<(TokenInfo, String), AccessError>>;
    /// Revokes a token.
    fn revoke_token<'a>(
        &'a self,
        id: &'a str,
        by: &'a Principal,
    ) -> BoxFuture<'a, Result<(), AccessError>>;
    /// Appends an audit entry for `by` (`None`: the system).
    fn record<'a>(
        &'a self,
        by: Option<&'a Principal>,
        action: AuditAction,
        target: &'a str,
        source: &'a str,
        detail: Value,
    ) -> BoxFuture<'a, Result<(), AccessError>>;
    /// Audit entries, newest first.
    fn audit<'a>(
        &'a self,
        filter: &'a AuditFilter,
    ) -> BoxFuture<'a, Result<Vec<AuditEntry>, AccessError>>;
}

/// The audit actor of a principal.
pub fn actor(p: &Principal) -> Actor {
    match p.via {
        Via::Session { .. } => Actor::user(&p.name),
        Via::Token { .. } => Actor::token(&p.name),
    }
}

fn storage(e: impl std::fmt::Display) -> AccessError {
    AccessError::Storage(e.to_string())
}

/// [`AccessBackend`] over the engine's security services.
#[derive(Clone)]
pub struct EngineAccess {
    security: Security,
}

impl std::fmt::Debug for EngineAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineAccess").finish_non_exhaustive()
    }
}

impl EngineAccess {
    /// The adapter over `security`.
    pub fn new(security: Security) -> EngineAccess {
        EngineAccess { security }
    }

    /// As an [`AccessBackend`].
    pub fn shared(self) -> Arc<dyn AccessBackend> {
        Arc::new(self)
    }

    async fn user(&self, name: &str) -> Result<UserInfo, AccessError> {
        self.security
            .users()
            .list_users()
            .await?
            .into_iter()
            .find(|u| u.name == name)
            .map(|u| UserInfo {
                name: u.name,
                role: u.role,
                created_at: rfc3339(u.created_at),
            })
            .ok_or_else(|| AccessError::NotFound(format!("user `{name}`")))
    }
}

fn session_principal(p: hlbridge_engine::security::Principal, token: &str) -> Principal {
    Principal {
        name: p.name,
        role: p.role,
        via: Via::Session {
            csrf: csrf_token(&Secret::new(token)).expose().to_owned(),
        },
    }
}

impl AccessBackend for EngineAccess {
    fn has_users(&self) -> BoxFuture<'_, Result<bool, AccessError>> {
        Box::pin(async move { Ok(!self.security.users().list_users().await?.is_empty()) })
    }

    fn authenticate_password<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
        source: &'a str,
    ) -> BoxFuture<'a, Result<NewSession, AccessError>> {
        Box::pin(async move {
            let s = self
                .security
                .users()
                .authenticate_password(user, &Secret::new(password), Some(source))
                .await?;
            let token = s.token.expose().to_owned();
            let max_age = (s.expires_at - OffsetDateTime::now_utc())
                .whole_seconds()
                .max(1);
            Ok(NewSession {
                principal: session_principal(s.principal, &token),
                id: token,
                max_age_secs: u64::try_from(max_age).unwrap_or(1),
            })
        })
    }

    fn authenticate_session<'a>(
        &'a self,
        session: &'a str,
    ) -> BoxFuture<'a, Result<Principal, AccessError>> {
        Box::pin(async move {
            let p = self.security.users().authenticate_session(session).await?;
            Ok(session_principal(p, session))
        })
    }

    fn authenticate_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Principal, AccessError>> {
        Box::pin(async move {
            let p = self.security.users().authenticate_token(token).await?;
            Ok(Principal {
                name: p.name,
                role: p.role,
                via: Via::Token { id: p.id },
            })
        })
    }

    fn logout<'a>(&'a self, session: &'a str, source: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self.security.users().logout(session, Some(source)).await {
                tracing::warn!(error = %e, "logout failed");
            }
        })
    }

    fn users(&self) -> BoxFuture<'_, Result<Vec<UserInfo>, AccessError>> {
        Box::pin(async move {
            let mut v: Vec<UserInfo> = self
                .security
                .users()
                .list_users()
                .await?
                .into_iter()
                .map(|u| UserInfo {
                    name: u.name,
                    role: u.role,
                    created_at: rfc3339(u.created_at),
                })
                .collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(v)
        })
    }

    fn add_user<'a>(
        &'a self,
        name: &'a str,
        role: Role,
        password: &'a str,
        by: Option<&'a Principal>,
    ) -> BoxFuture<'a, Result<UserInfo, AccessError>> {
        Box::pin(async move {
            if self.user(name).await.is_ok() {
                return Err(AccessError::Conflict(format!(
                    "a user named `{name}` exists"
                )));
            }
            let by = by.map_or_else(|| Actor::system("setup"), actor);
            let u = self
                .security
                .users()
                .add_user(name, role, Some(&Secret::new(password)), &by)
                .await?;
            Ok(UserInfo {
                name: u.name,
                role: u.role,
                created_at: rfc3339(u.created_at),
            })
        })
    }

    fn update_user<'a>(
        &'a self,
        name: &'a str,
        role: Option<Role>,
        password: Option<&'a str>,
        by: &'a Principal,
    ) -> BoxFuture<'a, Result<UserInfo, AccessError>> {
        Box::pin(async move {
            self.user(name).await?;
            let who = actor(by);
            if let Some(pw) = password {
                self.security
                    .users()
                    .set_password(name, &Secret::new(pw), &who)
                    .await?;
            }
            if let Some(r) = role {
                self.security.users().set_role(name, r, &who).await?;
            }
            self.user(name).await
        })
    }

    fn remove_user<'a>(
        &'a self,
        name: &'a str,
        by: &'a Principal,
    ) -> BoxFuture<'a, Result<(), AccessError>> {
        Box::pin(async move {
            self.user(name).await?;
            Ok(self.security.users().remove_user(name, &actor(by)).await?)
        })
    }

    fn tokens(&self) -> BoxFuture<'_, Result<Vec<TokenInfo>, AccessError>> {
        Box::pin(async move {
            Ok(self
                .security
                .users()
                .list_tokens()
                .await?
                .into_iter()
                .map(|t| TokenInfo {
                    id: t.id,
                    name: t.name,
                    role: t.role,
                    created_by: t.created_by.unwrap_or_default(),
                    created_at: rfc3339(t.created_at),
                    revoked_at: t.revoked_at.map(rfc3339),
                    last_used_at: t.last_used_at.map(rfc3339),
                })
                .collect())
        })
    }

    fn create_token<'a>(
        &'a self,
        name: &'a str,
        role: Role,
        by: &'a Principal,
    ) -> BoxFuture<'a, Result<(TokenInfo, String), AccessError>> {
        Box::pin(async move {
            let t = self
                .security
                .users()
                .create_token(name, role, None, &actor(by))
                .await?;
            let i = t.info;
            Ok((
                TokenInfo {
                    id: i.id,
                    name: i.name,
                    role: i.role,
                    created_by: i.created_by.unwrap_or_default(),
                    created_at: rfc3339(i.created_at),
                    revoked_at: i.revoked_at.map(rfc3339),
                    last_used_at: i.last_used_at.map(rfc3339),
                },
                t.token.expose().to_owned(),
            ))
        })
    }

    fn revoke_token<'a>(
        &'a self,
        id: &'a str,
        by: &'a Principal,
    ) -> BoxFuture<'a, Result<(), AccessError>> {
        Box::pin(async move { Ok(self.security.users().revoke_token(id, &actor(by)).await?) })
    }

    fn record<'a>(
        &'a self,
        by: Option<&'a Principal>,
        action: AuditAction,
        target: &'a str,
        source: &'a str,
        detail: Value,
    ) -> BoxFuture<'a, Result<(), AccessError>> {
        Box::pin(async move {
            let who = by.map_or_else(|| Actor::system("server"), actor);
            self.security
                .audit(
                    AuditEvent::new(who, action)
                        .target(target)
                        .source(Some(source))
                        .details(detail),
                )
                .await
                .map_err(storage)
        })
    }

    fn audit<'a>(
        &'a self,
        filter: &'a AuditFilter,
    ) -> BoxFuture<'a, Result<Vec<AuditEntry>, AccessError>> {
        Box::pin(async move {
            let since = filter
                .since
                .as_deref()
                .map(|s| {
                    OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
                        AccessError::Invalid(format!("`since` is not an RFC 3339 time: {s}"))
                    })
                })
                .transpose()?;
            let limit = filter.limit.unwrap_or(200).clamp(1, 10_000);
            let exact = filter
                .action
                .as_deref()
                .filter(|a| a.parse::<AuditAction>().is_ok());
            let q = StoreAuditFilter {
                since,
                actor: filter.actor.clone(),
                action: exact.map(str::to_owned),
                limit: if filter.action.is_some() && exact.is_none() {
                    0
                } else {
                    u32::try_from(limit).unwrap_or(u32::MAX)
                },
            };
            let all = audit_list(self.security.store().as_ref(), &q)
                .await
                .map_err(storage)?;
            Ok(all
                .into_iter()
                .rev()
                .filter(|e| {
                    filter
                        .action
                        .as_deref()
                        .is_none_or(|a| e.action.starts_with(a))
                })
                .take(limit)
                .map(|e| AuditEntry {
                    at: rfc3339(e.at),
                    actor_kind: e.actor_kind,
                    actor: e.actor,
                    action: e.action,
                    target: e.target.unwrap_or_default(),
                    source: e.source.unwrap_or_default(),
                    detail: e.details,
                })
                .collect())
        })
    }
}

/// The [`AccessBackend`] of a store without a security side: nobody can sign in.
#[derive(Debug, Clone, Default)]
pub struct NoAccess;

const NO_ACCESS: &str = "this server's store has no users (its backend has no security side); the admin API and UI are unavailable";

impl AccessBackend for NoAccess {
    fn has_users(&self) -> BoxFuture<'_, Result<bool, AccessError>> {
        Box::pin(async { Ok(true) })
    }
    fn authenticate_password<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<NewSession, AccessError>> {
        Box::pin(async { Err(AccessError::Storage(NO_ACCESS.into())) })
    }
    fn authenticate_session<'a>(
        &'a self,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Principal, AccessError>> {
        Box::pin(async { Err(AccessError::Unauthenticated(NO_ACCESS.into())) })
    }
    fn authenticate_token<'a>(
        &'a self,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Principal, AccessError>> {
        Box::pin(async { Err(AccessError::Unauthenticated(NO_ACCESS.into())) })
    }
    fn logout<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    fn users(&self) -> BoxFuture<'_, Result<Vec<UserInfo>, AccessError>> {
        Box::pin(async { Err(AccessError::Storage(NO_ACCESS.into())) })
    }
    fn add_user<'a>(
        &'a self,
        _: &'a str,
        _: Role,
        _: &'a str,
        _: Option<&'a Principal>,
    ) -> BoxFuture<'a, Result<UserInfo, AccessError>> {
        Box::pin(async { Err(AccessError::Storage(NO_ACCESS.into())) })
    }
    fn update_user<'a>(
        &'a self,
        _: &'a str,
        _: Option<Role>,
        _: Option<&'a str>,
        _: &'a Principal,
    ) -> BoxFuture<'a, Result<UserInfo, AccessError>> {
        Box::pin(async { Err(AccessError::Storage(NO_ACCESS.into())) })
    }
    fn remove_user<'a>(
        &'a self,
        _: &'a str,
        _: &'a Principal,
    ) -> BoxFuture<'a, Result<(), AccessError>> {
        Box::pin(async { Err(AccessError::Storage(NO_ACCESS.into())) })
    }
    fn tokens(&self) -> BoxFuture<'_, Result<Vec<TokenInfo>, AccessError>> {
        Box::pin(async { Err(AccessError::Storage(NO_ACCESS.into())) })
    }
    fn create_token<'a>(
        &'a self,
        _: &'a str,
        _: Role,
        _: &'a Principal,
    ) -> BoxFuture<'a, Result<(TokenInfo, String), AccessError>> {
        Box::pin(async { Err(AccessError::Storage(NO_ACCESS.into())) })
    }
    fn revoke_token<'a>(
        &'a self,
        _: &'a str,
        _: &'a Principal,
    ) -> BoxFuture<'a, Result<(), AccessError>> {
        Box::pin(async { Err(AccessError::Storage(NO_ACCESS.into())) })
    }
    fn record<'a>(
        &'a self,
        _: Option<&'a Principal>,
        action: AuditAction,
        target: &'a str,
        _: &'a str,
        _: Value,
    ) -> BoxFuture<'a, Result<(), AccessError>> {
        Box::pin(async move {
            tracing::info!(
                action = action.as_str(),
                target,
                "audit (no audit log in this store)"
            );
            Ok(())
        })
    }
    fn audit<'a>(
        &'a self,
        _: &'a AuditFilter,
    ) -> BoxFuture<'a, Result<Vec<AuditEntry>, AccessError>> {
        Box::pin(async { Err(AccessError::Storage(NO_ACCESS.into())) })
    }
}

/// Parses a role name for the API and forms.
pub fn parse_role(s: &str) -> Result<Role, AccessError> {
    s.parse::<Role>().map_err(AccessError::Invalid)
}
