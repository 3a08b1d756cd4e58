//! Users, roles, sessions and API tokens for the admin API (and the web UI).
//!
//! - [`Role`] is a closed set — owner, admin, editor, operator, viewer — and
//!   [`Role::can`] checks an [`Action`] against one table ([`PERMISSIONS`]), so the admin
//!   API's extractors and the CLI agree on who may do what.
//! - Passwords are hashed with argon2id (PHC strings). A login opens a [`Session`]: a random
//!   token (its SHA-256 is stored, never the token) with an expiry, and a CSRF token derived
//!   from it for cookie sessions ([`csrf_token`], [`verify_csrf`]).
//! - API tokens carry a role, are shown once ([`NewApiToken`]), stored as SHA-256 and
//!   revocable.
//! - Logins are throttled after repeated failures, per user name and per source address
//!   ([`Throttle`]); every success and failure goes to the audit log.
//!
//! For the admin API: [`Users::authenticate_password`], [`Users::authenticate_session`] and
//! [`Users::authenticate_token`] return a [`Principal`] (or a [`Session`]); [`AuthError::status`]
//! gives the HTTP status to answer with; [`Principal::require`] checks an action.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;

use super::audit::{self, Actor, AuditAction, AuditEvent};
use super::secret::{Secret, constant_time_eq, random_token, sha256_hex};
use crate::store::security::{ApiTokenRecord, SecurityStore, SessionRecord, UserRecord};
use crate::store::{StoreError, now};

/// A role (closed set), from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including managing owners and rotating the vault key.
    Owner,
    /// Everything but owners and the vault: users, tokens, connections, flows, runs.
    Admin,
    /// Flows and connections (create, change, enable), and runs.
    Editor,
    /// Runs: view, replay, run a flow now.
    Operator,
    /// Read-only.
    Viewer,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 5] = [
        Role::Owner,
        Role::Admin,
        Role::Editor,
        Role::Operator,
        Role::Viewer,
    ];

    /// The role as stored and typed.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Editor => "editor",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    /// Whether this role may do `action` (see [`PERMISSIONS`]).
    pub fn can(self, action: Action) -> bool {
        PERMISSIONS
            .iter()
            .find(|(a, _)| *a == action)
            .is_some_and(|(_, roles)| roles.contains(&self))
    }

    /// Whether this role may give `other` to a user or token (never a role above its own;
    /// only owners give the owner role).
    pub fn can_grant(self, other: Role) -> bool {
        self.can(Action::ManageUsers) && self <= other
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown role `{s}` (owner, admin, editor, operator or viewer)"))
    }
}

/// Something a principal may be allowed to do (one per kind of admin route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Read flows, runs, connections (without secrets), health, metrics.
    View,
    /// Replay runs, run a flow now, replay dead letters.
    OperateRuns,
    /// Create, change, enable or disable flows.
    EditFlows,
    /// Create, re-authorize or remove connections.
    EditConnections,
    /// Read the audit log.
    ViewAudit,
    /// Add, remove and change users (not owners, unless an owner).
    ManageUsers,
    /// Create and revoke API tokens.
    ManageTokens,
    /// Rotate the vault key; manage owners.
    ManageVault,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 8] = [
        Action::View,
        Action::OperateRuns,
        Action::EditFlows,
        Action::EditConnections,
        Action::ViewAudit,
        Action::ManageUsers,
        Action::ManageTokens,
        Action::ManageVault,
    ];
}

/// The permission table: for each action, the roles allowed.
pub const PERMISSIONS: &[(Action, &[Role])] = &[
    (
        Action::View,
        &[
            Role::Owner,
            Role::Admin,
            Role::Editor,
            Role::Operator,
            Role::Viewer,
        ],
    ),
    (
        Action::OperateRuns,
        &[Role::Owner, Role::Admin, Role::Editor, Role::Operator],
    ),
    (Action::EditFlows, &[Role::Owner, Role::Admin, Role::Editor]),
    (
        Action::EditConnections,
        &[Role::Owner, Role::Admin, Role::Editor],
    ),
    (Action::ViewAudit, &[Role::Owner, Role::Admin]),
    (Action::ManageUsers, &[Role::Owner, Role::Admin]),
    (Action::ManageTokens, &[Role::Owner, Role::Admin]),
    (Action::ManageVault, &[Role::Owner]),
];

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// A user (password login / session) or an API token.
    pub kind: PrincipalKind,
    /// User id or token id.
    pub id: String,
    /// User name or token name.
    pub name: String,
    /// The role in force.
    pub role: Role,
}

/// What kind of principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A user.
    User,
    /// An API token.
    Token,
}

impl Principal {
    /// `Ok` if the principal's role allows `action`, else [`AuthError::Forbidden`].
    pub fn require(&self, action: Action) -> Result<(), AuthError> {
        if self.role.can(action) {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                role: self.role,
                action,
            })
        }
    }

    /// The audit actor for this principal.
    pub fn actor(&self) -> Actor {
        match self.kind {
            PrincipalKind::User => Actor::user(&self.name),
            PrincipalKind::Token => Actor::token(&self.name),
        }
    }
}

/// A login session. The token is shown to the client once (as a cookie); only its hash is
/// stored.
#[derive(Debug, Clone)]
pub struct Session {
    /// The session token (cookie value).
    pub token: Secret,
    /// The CSRF token to send back in a header with state-changing requests.
    pub csrf: Secret,
    /// Expiry.
    pub expires_at: OffsetDateTime,
    /// Who logged in.
    pub principal: Principal,
}

/// A freshly created API token: the only time its value is available.
#[derive(Debug, Clone)]
pub struct NewApiToken {
    /// The token (`hlb_…`); show it once.
    pub token: Secret,
    /// Its record.
    pub info: ApiTokenInfo,
}

/// An API token as listed (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiTokenInfo {
    /// Id (to revoke it).
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Who created it.
    pub created_by: Option<String>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Expiry.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Last use.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// A user as listed (never the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    /// Id.
    pub id: String,
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Whether a password is set.
    pub has_password: bool,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Why authentication or authorization failed. Messages never say which of user name or
/// password was wrong.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong user name or password, or an unknown, expired or revoked token or session.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// Too many failed logins; try again later.
    #[error("too many failed logins; try again in {} s", retry_after.as_secs().max(1))]
    Throttled {
        /// How long to wait.
        retry_after: Duration,
    },
    /// The principal's role does not allow the action.
    #[error("the {role} role may not {action:?}")]
    Forbidden {
        /// The role.
        role: Role,
        /// The action.
        action: Action,
    },
    /// The request is invalid (bad name, weak password, unknown user…).
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AuthError {
    /// The HTTP status to answer with: 401, 429, 403, 400 or 503.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::InvalidCredentials => 401,
            AuthError::Throttled { .. } => 429,
            AuthError::Forbidden { .. } => 403,
            AuthError::Invalid(_) => 400,
            AuthError::Store(_) => 503,
        }
    }
}

/// Login throttling: after `max_per_user` failures for one user name, or `max_per_source`
/// from one address, within `window`, logins are refused until the window has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Failures allowed per user name within the window.
    pub max_per_user: u64,
    /// Failures allowed per source address within the window.
    pub max_per_source: u64,
    /// The window.
    pub window: Duration,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            max_per_user: 5,
            max_per_source: 20,
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// Settings of [`Users`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserSettings {
    /// Session lifetime.
    pub session_ttl: Duration,
    /// Login throttling.
    pub throttle: Throttle,
    /// Minimum password length.
    pub min_password_len: usize,
}

impl Default for UserSettings {
    fn default() -> Self {
        UserSettings {
            session_ttl: Duration::from_secs(12 * 3600),
            throttle: Throttle::default(),
            min_password_len: 8,
        }
    }
}

const SESSION_PREFIX: &str = "hls_";
const TOKEN_PREFIX: &str = "hlb_";

/// The CSRF token of a session token (HMAC-like: SHA-256 over a label and the token). The
/// server sends it to the page and expects it back in a header on state-changing requests.
pub fn csrf_token(session_token: &Secret) -> Secret {
    Secret::new(sha256_hex(
        format!("hlbridge csrf\0{}", session_token.expose()).as_bytes(),
    ))
}

/// Checks a CSRF header against a session token (constant time).
pub fn verify_csrf(session_token: &Secret, header: &str) -> bool {
    constant_time_eq(
        csrf_token(session_token).expose().as_bytes(),
        header.trim().as_bytes(),
    )
}

fn hash_password(pw: &Secret) -> Result<String, AuthError> {
    Argon2::default()
        .hash_password(pw.expose().as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Invalid(format!("hashing the password failed: {e}")))
}

fn verify_password(pw: &Secret, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(pw.expose().as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A valid user name: 1–64 characters, letters, digits, `.`, `-`, `_`, `@`.
fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "invalid name `{name}`: use 1–64 letters, digits, `.`, `-`, `_` or `@`"
        )))
    }
}

fn parse_role(s: &str) -> Result<Role, AuthError> {
    Role::from_str(s).map_err(|e| AuthError::Store(StoreError::Corrupt(e)))
}

fn user_info(u: &UserRecord) -> Result<UserInfo, AuthError> {
    Ok(UserInfo {
        id: u.id.clone(),
        name: u.name.clone(),
        role: parse_role(&u.role)?,
        has_password: u.password_hash.is_some(),
        created_at: u.created_at,
    })
}

fn token_info(t: &ApiTokenRecord) -> Result<ApiTokenInfo, AuthError> {
    Ok(ApiTokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        role: parse_role(&t.role)?,
        created_by: t.created_by.clone(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        last_used_at: t.last_used_at,
        revoked_at: t.revoked_at,
    })
}

/// Users, sessions and API tokens (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Users {
    store: Arc<dyn SecurityStore>,
    settings: UserSettings,
    /// A hash verified when the user does not exist, so both paths take as long.
    dummy_hash: Arc<std::sync::OnceLock<String>>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Users {
    /// The service over a store.
    pub fn new(store: Arc<dyn SecurityStore>, settings: UserSettings) -> Users {
        Users {
            store,
            settings,
            dummy_hash: Arc::default(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &UserSettings {
        &self.settings
    }

    fn check_password(&self, pw: &Secret) -> Result<(), AuthError> {
        if pw.expose().chars().count() < self.settings.min_password_len {
            return Err(AuthError::Invalid(format!(
                "the password must have at least {} characters",
                self.settings.min_password_len
            )));
        }
        Ok(())
    }

    /// Adds a user with `role` and, optionally, a password (without one the user can only
    /// be given API tokens). `by` is recorded in the audit log.
    pub async fn add_user(
        &self,
        name: &str,
        role: Role,
        password: Option<&Secret>,
        by: &Actor,
    ) -> Result<UserInfo, AuthError> {
        check_name(name)?;
        let hash = match password {
            Some(pw) => {
                self.check_password(pw)?;
                Some(hash_password(pw)?)
            }
            None => None,
        };
        let at = now();
        let rec = UserRecord {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            password_hash: hash,
            created_at: at,
            updated_at: at,
        };
        self.store.insert_user(&rec).await.map_err(|e| match e {
            StoreError::Conflict(m) => AuthError::Invalid(m),
            other => AuthError::Store(other),
        })?;
        audit::record(
            self.store.as_ref(),
            AuditEvent::new(by.clone(), AuditAction::UserCreated)
                .target(name)
                .details(json!({ "role": role })),
        )
        .await?;
        user_info(&rec)
    }

    /// Every user.
    pub async fn list_users(&self) -> Result<Vec<UserInfo>, AuthError> {
        self.store
            .list_users()
            .await?
            .iter()
            .map(user_info)
            .collect()
    }

    /// Removes a user (and ends their sessions). The last owner cannot be removed.
    pub async fn remove_user(&self, name: &str, by: &Actor) -> Result<(), AuthError> {
        let u = self
            .store
            .get_user_by_name(name)
            .await?
            .ok_or_else(|| AuthError::Invalid(format!("no user `{name}`")))?;
        if u.role == Role::Owner.as_str()
            && self
                .store
                .count_users_with_role(Role::Owner.as_str())
                .await?
                <= 1
        {
            return Err(AuthError::Invalid(format!(
                "`{name}` is the last owner; make another user owner first"
            )));
        }
        self.store.delete_user(&u.id).await?;
        audit::record(
            self.store.as_ref(),
            AuditEvent::new(by.clone(), AuditAction::UserRemoved).target(name),
        )
        .await?;
        Ok(())
    }

    /// Changes a user's role (the last owner keeps theirs).
    pub async fn set_role(&self, name: &str, role: Role, by: &Actor) -> Result<(), AuthError> {
        let u = self
            .store
            .get_user_by_name(name)
            .await?
            .ok_or_else(|| AuthError::Invalid(format!("no user `{name}`")))?;
        if u.role == Role::Owner.as_str()
            && role != Role::Owner
            && self
                .store
                .count_users_with_role(Role::Owner.as_str())
                .await?
                <= 1
        {
            return Err(AuthError::Invalid(format!(
                "`{name}` is the last owner; make another user owner first"
            )));
        }
        self.store.set_user_role(&u.id, role.as_str()).await?;
        audit::record(
            self.store.as_ref(),
            AuditEvent::new(by.clone(), AuditAction::RoleChanged)
                .target(name)
                .details(json!({ "from": u.role, "to": role })),
        )
        .await?;
        Ok(())
    }

    /// Sets a user's password (and ends their sessions).
    pub async fn set_password(
        &self,
        name: &str,
        password: &Secret,
        by: &Actor,
    ) -> Result<(), AuthError> {
        self.check_password(password)?;
        let u = self
            .store
            .get_user_by_name(name)
            .await?
            .ok_or_else(|| AuthError::Invalid(format!("no user `{name}`")))?;
        let hash = hash_password(password)?;
        self.store.set_user_password(&u.id, Some(&hash)).await?;
        self.store.delete_sessions_of(&u.id).await?;
        audit::record(
            self.store.as_ref(),
            AuditEvent::new(by.clone(), AuditAction::PasswordChanged).target(name),
        )
        .await?;
        Ok(())
    }

    async fn throttled(&self, keys: &[String]) -> Result<Option<Duration>, AuthError> {
        let t = self.settings.throttle;
        let since = now() - t.window;
        for k in keys {
            let max = if k.starts_with("addr:") {
                t.max_per_source
            } else {
                t.max_per_user
            };
            let (n, oldest) = self.store.login_failures(k, since).await?;
            if n >= max {
                let wait = oldest
                    .map(|o| (o + t.window) - now())
                    .and_then(|d| Duration::try_from(d).ok())
                    .unwrap_or(t.window);
                return Ok(Some(wait.max(Duration::from_secs(1))));
            }
        }
        Ok(None)
    }

    /// Password login from `source` (client address). Throttled after repeated failures;
    /// every attempt is audited. Returns a new session.
    pub async fn authenticate_password(
        &self,
        name: &str,
        password: &Secret,
        source: Option<&str>,
    ) -> Result<Session, AuthError> {
        let mut keys = vec![format!("user:{}", name.to_ascii_lowercase())];
        if let Some(s) = source {
            keys.push(format!("addr:{s}"));
        }
        if let Some(retry_after) = self.throttled(&keys).await? {
            audit::record(
                self.store.as_ref(),
                AuditEvent::new(Actor::user(name), AuditAction::LoginFailed)
                    .source(source)
                    .details(json!({ "reason": "throttled" })),
            )
            .await?;
            return Err(AuthError::Throttled { retry_after });
        }
        let user = self.store.get_user_by_name(name).await?;
        let ok = match user.as_ref().and_then(|u| u.password_hash.as_deref()) {
            Some(hash) => verify_password(password, hash),
            None => {
                // Same work as a real check, so timing does not reveal unknown users.
                let dummy = self.dummy_hash.get_or_init(|| {
                    hash_password(&Secret::new("hlbridge-dummy-password")).unwrap_or_default()
                });
                let _ = verify_password(password, dummy);
                false
            }
        };
        let user = match (ok, user) {
            (true, Some(u)) => u,
            _ => {
                let at = now();
                self.store
                    .record_login_failure(&keys, at, at - self.settings.throttle.window * 4)
                    .await?;
                audit::record(
                    self.store.as_ref(),
                    AuditEvent::new(Actor::user(name), AuditAction::LoginFailed)
                        .source(source)
                        .details(json!({ "reason": "invalid credentials" })),
                )
                .await?;
                return Err(AuthError::InvalidCredentials);
            }
        };
        self.store.clear_login_failures(&keys[0]).await?;
        let token = Secret::new(format!("{SESSION_PREFIX}{}", random_token(32).expose()));
        let at = now();
        let expires_at = at + self.settings.session_ttl;
        self.store
            .insert_session(&SessionRecord {
                token_hash: sha256_hex(token.expose().as_bytes()),
                user_id: user.id.clone(),
                source: source.map(str::to_owned),
                created_at: at,
                expires_at,
                last_seen_at: at,
            })
            .await?;
        audit::record(
            self.store.as_ref(),
            AuditEvent::new(Actor::user(&user.name), AuditAction::Login).source(source),
        )
        .await?;
        Ok(Session {
            csrf: csrf_token(&token),
            token,
            expires_at,
            principal: Principal {
                kind: PrincipalKind::User,
                id: user.id.clone(),
                name: user.name.clone(),
                role: parse_role(&user.role)?,
            },
        })
    }

    /// The principal of a session token (cookie). Expired or unknown sessions are
    /// [`AuthError::InvalidCredentials`]. The role is read afresh, so a role change applies
    /// at once.
    pub async fn authenticate_session(&self, token: &str) -> Result<Principal, AuthError> {
        if !token.starts_with(SESSION_PREFIX) {
            return Err(AuthError::InvalidCredentials);
        }
        let hash = sha256_hex(token.as_bytes());
        let s = self
            .store
            .get_session(&hash)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        let at = now();
        if s.expires_at <= at {
            self.store.delete_session(&hash).await?;
            return Err(AuthError::InvalidCredentials);
        }
        let u = self
            .store
            .get_user(&s.user_id)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        if (at - s.last_seen_at) > time::Duration::minutes(1) {
            self.store.touch_session(&hash, at).await?;
        }
        Ok(Principal {
            kind: PrincipalKind::User,
            id: u.id,
            name: u.name,
            role: parse_role(&u.role)?,
        })
    }

    /// Ends a session.
    pub async fn logout(&self, token: &str, source: Option<&str>) -> Result<(), AuthError> {
        let principal = self.authenticate_session(token).await.ok();
        self.store
            .delete_session(&sha256_hex(token.as_bytes()))
            .await?;
        if let Some(p) = principal {
            audit::record(
                self.store.as_ref(),
                AuditEvent::new(p.actor(), AuditAction::Logout).source(source),
            )
            .await?;
        }
        Ok(())
    }

    /// Creates an API token with `role` (valid for `ttl`, or until revoked). The value is in
    /// the result only; the store keeps its SHA-256.
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        ttl: Option<Duration>,
        by: &Actor,
    ) -> Result<NewApiToken, AuthError> {
        if name.trim().is_empty() || name.len() > 100 {
            return Err(AuthError::Invalid(
                "a token needs a name of 1–100 characters".into(),
            ));
        }
        let token = Secret::new(format!("{TOKEN_PREFIX}{}", random_token(32).expose()));
        let at = now();
        let rec = ApiTokenRecord {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.trim().to_owned(),
            role: role.as_str().to_owned(),
            token_hash: sha256_hex(token.expose().as_bytes()),
            created_by: Some(by.to_string()),
            created_at: at,
            expires_at: ttl.map(|t| at + t),
            last_used_at: None,
            revoked_at: None,
        };
        self.store.insert_api_token(&rec).await?;
        audit::record(
            self.store.as_ref(),
            AuditEvent::new(by.clone(), AuditAction::TokenCreated)
                .target(&rec.name)
                .details(json!({ "token_id": rec.id, "role": role })),
        )
        .await?;
        Ok(NewApiToken {
            token,
            info: token_info(&rec)?,
        })
    }

    /// Every API token (never their values), newest first.
    pub async fn list_tokens(&self) -> Result<Vec<ApiTokenInfo>, AuthError> {
        self.store
            .list_api_tokens()
            .await?
            .iter()
            .map(token_info)
            .collect()
    }

    /// Revokes an API token by id.
    pub async fn revoke_token(&self, id: &str, by: &Actor) -> Result<(), AuthError> {
        if !self.store.revoke_api_token(id, now()).await? {
            return Err(AuthError::Invalid(format!(
                "no active API token with id `{id}`"
            )));
        }
        audit::record(
            self.store.as_ref(),
            AuditEvent::new(by.clone(), AuditAction::TokenRevoked)
                .details(json!({ "token_id": id })),
        )
        .await?;
        Ok(())
    }

    /// The principal of an API token (`Authorization: Bearer hlb_…`). Unknown, revoked or
    /// expired tokens are [`AuthError::InvalidCredentials`].
    pub async fn authenticate_token(&self, token: &str) -> Result<Principal, AuthError> {
        let token = token.trim();
        if !token.starts_with(TOKEN_PREFIX) {
            return Err(AuthError::InvalidCredentials);
        }
        let hash = sha256_hex(token.as_bytes());
        let t = self
            .store
            .get_api_token_by_hash(&hash)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        // The lookup was by hash; compare again in constant time for good measure.
        if !constant_time_eq(t.token_hash.as_bytes(), hash.as_bytes()) {
            return Err(AuthError::InvalidCredentials);
        }
        let at = now();
        if t.revoked_at.is_some() || t.expires_at.is_some_and(|e| e <= at) {
            return Err(AuthError::InvalidCredentials);
        }
        if t.last_used_at
            .is_none_or(|l| (at - l) > time::Duration::minutes(1))
        {
            self.store.touch_api_token(&t.id, at).await?;
        }
        Ok(Principal {
            kind: PrincipalKind::Token,
            id: t.id,
            name: t.name,
            role: parse_role(&t.role)?,
        })
    }

    /// The principal of an `Authorization` header value or a session cookie, whichever is
    /// given (for an extractor): `Bearer hlb_…` is an API token, `Bearer hls_…` or the
    /// cookie a session.
    pub async fn authenticate_request(
        &self,
        authorization: Option<&str>,
        session_cookie: Option<&str>,
    ) -> Result<Principal, AuthError> {
        if let Some(h) = authorization {
            let t = h
                .strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
                .ok_or(AuthError::InvalidCredentials)?
                .trim();
            return if t.starts_with(SESSION_PREFIX) {
                self.authenticate_session(t).await
            } else {
                self.authenticate_token(t).await
            };
        }
        match session_cookie {
            Some(c) => self.authenticate_session(c).await,
            None => Err(AuthError::InvalidCredentials),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[test]
    fn permission_table() {
        use Action::*;
        let allowed =
            |r: Role| -> Vec<Action> { Action::ALL.into_iter().filter(|a| r.can(*a)).collect() };
        assert_eq!(allowed(Role::Owner), Action::ALL.to_vec());
        assert_eq!(
            allowed(Role::Admin),
            vec![
                View,
                OperateRuns,
                EditFlows,
                EditConnections,
                ViewAudit,
                ManageUsers,
                ManageTokens
            ]
        );
        assert_eq!(
            allowed(Role::Editor),
            vec![View, OperateRuns, EditFlows, EditConnections]
        );
        assert_eq!(allowed(Role::Operator), vec![View, OperateRuns]);
        assert_eq!(allowed(Role::Viewer), vec![View]);
        // Every action is in the table.
        for a in Action::ALL {
            assert!(PERMISSIONS.iter().any(|(x, _)| *x == a), "{a:?}");
        }
        assert!(Role::Owner.can_grant(Role::Owner));
        assert!(!Role::Admin.can_grant(Role::Owner));
        assert!(Role::Admin.can_grant(Role::Admin));
        assert!(!Role::Editor.can_grant(Role::Viewer));
        assert_eq!("Operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn csrf() {
        let s = Secret::new("hls_abc");
        let c = csrf_token(&s);
        assert!(verify_csrf(&s, c.expose()));
        assert!(!verify_csrf(&s, "nope"));
        assert!(!verify_csrf(&Secret::new("hls_other"), c.expose()));
    }

    async fn users(tag: &str, throttle: Throttle) -> (SqliteStore, Users, std::path::PathBuf) {
        let d = std::env::temp_dir().join(format!("hlbridge-users-{tag}-{}", uuid::Uuid::new_v4()));
        let store = SqliteStore::open(&d).await.expect("store");
        let u = Users::new(
            Arc::new(store.clone()),
            UserSettings {
                throttle,
                ..UserSettings::default()
            },
        );
        (store, u, d)
    }

    #[tokio::test]
    async fn passwords_sessions_and_roles() {
        let (store, u, d) = users("pw", Throttle::default()).await;
        let cli = Actor::cli();
        let pw = Secret::new("correct horse battery");
        u.add_user("ann", Role::Owner, Some(&pw), &cli)
            .await
            .expect("add");
        assert!(
            u.add_user("ann", Role::Viewer, None, &cli).await.is_err(),
            "duplicate"
        );
        assert!(
            u.add_user("bad name", Role::Viewer, None, &cli)
                .await
                .is_err()
        );
        assert!(matches!(
            u.add_user("bob", Role::Viewer, Some(&Secret::new("short")), &cli)
                .await,
            Err(AuthError::Invalid(_))
        ));
        let rec = store
            .get_user_by_name("ann")
            .await
            .expect("get")
            .expect("ann");
        let hash = rec.password_hash.as_deref().expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("horse"));

        let s = u
            .authenticate_password("ann", &pw, Some("10.0.0.1"))
            .await
            .expect("login");
        assert!(s.token.expose().starts_with("hls_"));
        assert!(
            store
                .get_session(s.token.expose())
                .await
                .expect("get")
                .is_none(),
            "only the hash is stored"
        );
        let p = u
            .authenticate_session(s.token.expose())
            .await
            .expect("session");
        assert_eq!((p.name.as_str(), p.role), ("ann", Role::Owner));
        assert!(p.require(Action::ManageVault).is_ok());
        let p2 = u
            .authenticate_request(None, Some(s.token.expose()))
            .await
            .expect("cookie");
        assert_eq!(p2, p);
        assert!(matches!(
            u.authenticate_password("ann", &Secret::new("wrong password"), None)
                .await,
            Err(AuthError::InvalidCredentials)
        ));
        assert!(matches!(
            u.authenticate_password("nobody", &pw, None).await,
            Err(AuthError::InvalidCredentials)
        ));

        // Last owner protected; role changes apply to live sessions.
        assert!(u.set_role("ann", Role::Viewer, &cli).await.is_err());
        assert!(u.remove_user("ann", &cli).await.is_err());
        u.add_user("carl", Role::Owner, None, &cli)
            .await
            .expect("add");
        u.set_role("ann", Role::Viewer, &cli).await.expect("role");
        let p = u
            .authenticate_session(s.token.expose())
            .await
            .expect("session");
        assert_eq!(p.role, Role::Viewer);
        assert!(matches!(
            p.require(Action::EditFlows),
            Err(AuthError::Forbidden { .. })
        ));
        // A new password ends sessions.
        u.set_password("ann", &Secret::new("another long one"), &cli)
            .await
            .expect("password");
        assert!(u.authenticate_session(s.token.expose()).await.is_err());
        u.logout("hls_unknown", None).await.expect("logout unknown");
        u.remove_user("ann", &cli).await.expect("remove");
        assert_eq!(u.list_users().await.expect("list").len(), 1);

        let log = audit::list(&store, &Default::default())
            .await
            .expect("audit");
        let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
        for a in [
            "user.created",
            "login",
            "login.failed",
            "user.role_changed",
            "user.password_changed",
            "user.removed",
        ] {
            assert!(actions.contains(&a), "{a} in {actions:?}");
        }
        let failed = log
            .iter()
            .find(|e| e.action == "login.failed")
            .expect("failed");
        assert_eq!(failed.actor, "ann");
        assert!(!serde_json::to_string(&log).expect("json").contains("horse"));
        store.close().await;
        let _ = std::fs::remove_dir_all(d);
    }

    #[tokio::test]
    async fn login_throttling_per_user_and_address() {
        let (store, u, d) = users(
            "throttle",
            Throttle {
                max_per_user: 3,
                max_per_source: 5,
                window: Duration::from_secs(600),
            },
        )
        .await;
        let cli = Actor::cli();
        let pw = Secret::new("the right password");
        u.add_user("ann", Role::Viewer, Some(&pw), &cli)
            .await
            .expect("add");
        u.add_user("bob", Role::Viewer, Some(&pw), &cli)
            .await
            .expect("add");
        let wrong = Secret::new("the wrong password");
        for _ in 0..3 {
            assert!(matches!(
                u.authenticate_password("ann", &wrong, Some("1.1.1.1"))
                    .await,
                Err(AuthError::InvalidCredentials)
            ));
        }
        // Locked for ann, even with the right password and from elsewhere.
        let e = u.authenticate_password("ann", &pw, Some("2.2.2.2")).await;
        assert!(matches!(e, Err(AuthError::Throttled { .. })), "{e:?}");
        assert_eq!(e.err().map(|e| e.status()), Some(429));
        // bob is fine from another address.
        assert!(
            u.authenticate_password("bob", &pw, Some("2.2.2.2"))
                .await
                .is_ok()
        );
        // Per address: 2 more failures from 1.1.1.1 (5 in total) lock the address.
        for _ in 0..2 {
            let _ = u
                .authenticate_password("bob", &wrong, Some("1.1.1.1"))
                .await;
        }
        assert!(matches!(
            u.authenticate_password("bob", &pw, Some("1.1.1.1")).await,
            Err(AuthError::Throttled { .. })
        ));
        assert!(
            u.authenticate_password("bob", &pw, Some("3.3.3.3"))
                .await
                .is_ok()
        );
        store.close().await;
        let _ = std::fs::remove_dir_all(d);
    }

    #[tokio::test]
    async fn api_tokens() {
        let (store, u, d) = users("tokens", Throttle::default()).await;
        let cli = Actor::cli();
        let t = u
            .create_token("ci", Role::Operator, None, &cli)
            .await
            .expect("create");
        assert!(t.token.expose().starts_with("hlb_"));
        assert!(!format!("{t:?}").contains(t.token.expose()));
        let p = u.authenticate_token(t.token.expose()).await.expect("auth");
        assert_eq!(
            (p.kind, p.role, p.name.as_str()),
            (PrincipalKind::Token, Role::Operator, "ci")
        );
        assert!(p.require(Action::OperateRuns).is_ok());
        assert!(p.require(Action::EditFlows).is_err());
        let header = format!("Bearer {}", t.token.expose());
        assert_eq!(
            u.authenticate_request(Some(&header), None)
                .await
                .expect("hdr"),
            p
        );
        let listed = u.list_tokens().await.expect("list");
        assert_eq!(listed.len(), 1);
        assert!(listed[0].last_used_at.is_some());
        assert!(
            !serde_json::to_string(&listed)
                .expect("json")
                .contains(t.token.expose())
        );
        u.revoke_token(&t.info.id, &cli).await.expect("revoke");
        assert!(u.revoke_token(&t.info.id, &cli).await.is_err());
        assert!(matches!(
            u.authenticate_token(t.token.expose()).await,
            Err(AuthError::InvalidCredentials)
        ));
        assert!(u.authenticate_token("hlb_forged").await.is_err());
        assert!(u.authenticate_token("garbage").await.is_err());
        // Expired.
        let short = u
            .create_token("short", Role::Viewer, Some(Duration::ZERO), &cli)
            .await
            .expect("create");
        assert!(u.authenticate_token(short.token.expose()).await.is_err());
        store.close().await;
        let _ = std::fs::remove_dir_all(d);
    }
}
