//! A stateful local emulator of the HighLevel API v2 ("LocalStack for HighLevel").
//!
//! Every operation of the operation table is served from SQLite-backed state with HighLevel's
//! auth (Private Integration Tokens and OAuth with rotating refresh tokens), scopes, `Version`
//! header, rate limits and headers, signed webhooks, and fault injection. Start one with
//! [`Sandbox::start`] (tests bind `127.0.0.1:0`) or `hlbridge sandbox`.

pub mod admin;
pub mod auth;
pub mod delivery;
pub mod error;
pub mod faults;
pub mod handlers;
pub mod http;
pub mod ratelimit;
pub mod seed;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hlbridge_highlevel::webhooks::WebhookSigner;
use parking_lot::RwLock;
use serde::Serialize;
use serde_json::{Value, json};

use crate::delivery::{Delivery, RetryPolicy};
use crate::faults::{FaultRule, Faults};
use crate::handlers::{Caller, Ctx, Guard, UserType, new_id};
use crate::ratelimit::{RateLimitConfig, RateLimiter};
use crate::store::{Docs, Persister};

/// Why the sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Keys could not be made or read.
    #[error(transparent)]
    Keys(#[from] hlbridge_highlevel::webhooks::SignatureError),
    /// Seeding or identity set-up failed.
    #[error("sandbox set-up failed: {0}")]
    Setup(String),
    /// A fault rule given at start is invalid.
    #[error("invalid fault rule: {0}")]
    Fault(String),
}

/// Sandbox settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub bind: SocketAddr,
    /// SQLite file for the state; `None` keeps everything in memory.
    pub data: Option<PathBuf>,
    /// Flush every commit to disk before answering (survives power loss; slower). Without it
    /// an answered write survives the sandbox being killed, not the machine losing power.
    pub fsync: bool,
    /// Create the demo location (contacts, tasks, notes, calendars, pipeline, …) when empty.
    pub seed_demo: bool,
    /// Rate limits.
    pub rate_limit: RateLimitConfig,
    /// Fixed value of the full-scope Private Integration Token (random when `None`).
    pub token: Option<String>,
    /// Fixed value of the read-only token.
    pub readonly_token: Option<String>,
    /// Fixed id of the location.
    pub location_id: Option<String>,
    /// Fixed id of the agency (company).
    pub company_id: Option<String>,
    /// Fixed admin token for the `/_sandbox` API.
    pub admin_token: Option<String>,
    /// Lifetime of OAuth access tokens (HighLevel: about a day).
    pub access_token_ttl: Duration,
    /// Webhook receivers.
    pub webhook_urls: Vec<String>,
    /// When failed webhook deliveries are retried.
    pub webhook_retry: RetryPolicy,
    /// Also sign webhooks with RSA in `x-wh-signature`.
    pub rsa_signing: bool,
    /// Fault rules active from the start.
    pub faults: Vec<FaultRule>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8089)),
            data: None,
            fsync: false,
            seed_demo: false,
            rate_limit: RateLimitConfig::default(),
            token: None,
            readonly_token: None,
            location_id: None,
            company_id: None,
            admin_token: None,
            access_token_ttl: Duration::from_secs(86_399),
            webhook_urls: Vec::new(),
            webhook_retry: RetryPolicy::On429,
            rsa_signing: false,
            faults: Vec::new(),
        }
    }
}

impl SandboxConfig {
    /// In memory on a free loopback port, rate limits on, no seed: what tests start with.
    pub fn for_tests() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }
}

/// What a started sandbox tells its users (printed as one JSON line by `hlbridge sandbox`).
#[derive(Debug, Clone, Serialize)]
pub struct StartupInfo {
    /// Base URL to point clients at.
    pub base_url: String,
    /// The location.
    pub location_id: String,
    /// Its agency.
    pub company_id: String,
    /// Full-scope Private Integration Token of the location.
    pub token: String,
    /// Read-only (`*.readonly`) token of the location.
    pub readonly_token: String,
    /// Full-scope agency (company) token.
    pub agency_token: String,
    /// An OAuth app installed on the location and agency.
    pub oauth: OAuthInfo,
    /// Keys to verify the sandbox's webhooks.
    pub webhook_public_keys: PublicKeys,
    /// Token for the `/_sandbox` admin API.
    pub admin_token: String,
    /// Where the admin API lives.
    pub admin_url: String,
}

/// The sandbox's OAuth app.
#[derive(Debug, Clone, Serialize)]
pub struct OAuthInfo {
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// The chooselocation-style page that issues codes.
    pub authorize_url: String,
    /// The token endpoint.
    pub token_url: String,
}

/// Public keys of the webhook signer.
#[derive(Debug, Clone, Serialize)]
pub struct PublicKeys {
    /// Ed25519 (SPKI PEM), for `x-ghl-signature`.
    pub ed25519: String,
    /// Ed25519 raw 32 bytes, base64.
    pub ed25519_raw: String,
    /// RSA (SPKI PEM) for `x-wh-signature`, when RSA signing is on.
    pub rsa: Option<String>,
}

/// State shared by every request.
pub struct Shared {
    /// All documents.
    pub docs: RwLock<Docs>,
    /// Write-through to SQLite.
    pub persister: Persister,
    /// Rate limits.
    pub limiter: RateLimiter,
    /// Fault rules.
    pub faults: Faults,
    /// Webhook delivery.
    pub delivery: Arc<Delivery>,
    /// OAuth access-token lifetime.
    pub access_token_ttl: Duration,
    /// What the sandbox printed at start.
    pub info: RwLock<StartupInfo>,
}

impl Shared {
    /// Runs `f` with write access, persists its changes and sends its webhooks.
    pub async fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<T, error::ApiError>,
    ) -> Result<T, error::ApiError> {
        let (out, writes, events) = {
            let mut ctx = Ctx::new(Guard::Write(self.docs.write()), now_ms());
            let out = f(&mut ctx)?;
            (
                out,
                std::mem::take(&mut ctx.writes),
                std::mem::take(&mut ctx.events),
            )
        };
        self.persister.persist(writes).await?;
        self.delivery.send(events, 0.0, 0.0);
        Ok(out)
    }
}

/// Now, epoch milliseconds.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A running sandbox.
pub struct Sandbox {
    /// Base URL (`http://127.0.0.1:PORT`).
    pub base_url: String,
    /// The local address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

const IDENTITY: &str = "_sandbox";

impl Sandbox {
    /// Starts a sandbox and returns once it accepts connections.
    pub async fn start(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let (docs, persister) = match &config.data {
            Some(path) => store::open(path, config.fsync).await?,
            None => (Docs::default(), Persister::none()),
        };
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|source| SandboxError::Bind {
                addr: config.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SandboxError::Bind {
            addr: config.bind,
            source,
        })?;
        let base_url = format!("http://{addr}");
        let docs = RwLock::new(docs);

        let identity = docs
            .read()
            .get(IDENTITY, "identity")
            .map(|d| (*d.body).clone());
        let fresh = identity.is_none();
        let identity = identity.unwrap_or_else(|| {
            json!({
                "locationId": config.location_id.clone().unwrap_or_else(new_id),
                "companyId": config.company_id.clone().unwrap_or_else(new_id),
                "token": config.token.clone().unwrap_or_else(|| format!("pit-{}", uuid::Uuid::new_v4())),
                "readonlyToken": config.readonly_token.clone().unwrap_or_else(|| format!("pit-{}", uuid::Uuid::new_v4())),
                "agencyToken": format!("pit-{}", uuid::Uuid::new_v4()),
                "clientId": format!("{}-{}", new_id().to_lowercase(), new_id().to_lowercase()),
                "clientSecret": uuid::Uuid::new_v4().to_string(),
                "adminToken": config.admin_token.clone().unwrap_or_else(|| format!("admin-{}", uuid::Uuid::new_v4())),
            })
        });
        let field = |k: &str| identity[k].as_str().unwrap_or_default().to_string();
        let signer = match docs
            .read()
            .get(IDENTITY, "ed25519")
            .and_then(|d| d.body["pem"].as_str().map(str::to_string))
        {
            Some(pem) => WebhookSigner::from_ed25519_pem(&pem)?,
            None => WebhookSigner::generate()?,
        };
        let signer = if config.rsa_signing {
            signer.with_rsa(2048)?
        } else {
            signer
        };
        let delivery = Delivery::start(
            signer.clone(),
            config.webhook_urls.clone(),
            config.webhook_retry,
        );
        let faults = Faults::default();
        for rule in &config.faults {
            faults.add(rule.clone()).map_err(SandboxError::Fault)?;
        }
        let info = StartupInfo {
            base_url: base_url.clone(),
            location_id: field("locationId"),
            company_id: field("companyId"),
            token: field("token"),
            readonly_token: field("readonlyToken"),
            agency_token: field("agencyToken"),
            oauth: OAuthInfo {
                client_id: field("clientId"),
                client_secret: field("clientSecret"),
                authorize_url: format!("{base_url}/oauth/chooselocation"),
                token_url: format!("{base_url}/oauth/token"),
            },
            webhook_public_keys: PublicKeys {
                ed25519: signer.ed25519_public_key_pem(),
                ed25519_raw: signer.ed25519_public_key_base64(),
                rsa: signer.rsa_public_key_pem(),
            },
            admin_token: field("adminToken"),
            admin_url: format!("{base_url}/_sandbox"),
        };
        let shared = Arc::new(Shared {
            docs,
            persister,
            limiter: RateLimiter::new(config.rate_limit),
            faults,
            delivery,
            access_token_ttl: config.access_token_ttl,
            info: RwLock::new(info.clone()),
        });

        if fresh {
            let pem = signer.ed25519_private_pem()?;
            let info2 = info.clone();
            shared
                .mutate(|ctx| {
                    ctx.put(IDENTITY, "identity", None, None, identity.clone())?;
                    ctx.put(IDENTITY, "ed25519", None, None, json!({ "pem": pem }))?;
                    setup_identity(ctx, &info2)
                })
                .await
                .map_err(|e| SandboxError::Setup(e.message.to_string()))?;
        }
        if config.seed_demo {
            let (loc, company) = (info.location_id.clone(), info.company_id.clone());
            shared
                .mutate(|ctx| {
                    if ctx.list(handlers::contacts::CONTACT, &loc).is_empty() {
                        seed::demo(ctx, &loc, &company)?;
                    }
                    Ok(())
                })
                .await
                .map_err(|e| SandboxError::Setup(e.message.to_string()))?;
        }

        let app = http::router(shared.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // Answers go out at once (no Nagle delay waiting for the client's ACK).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "sandbox server stopped");
            }
        });
        Ok(Sandbox {
            base_url,
            addr,
            shared,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// What the sandbox prints at start.
    pub fn info(&self) -> StartupInfo {
        self.shared.info.read().clone()
    }

    /// The shared state (for in-process tests and the admin API).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Highest number of requests attempted in any rate-limit interval for `location_id`
    /// (summed over apps).
    pub fn max_window_attempts(&self, location_id: &str) -> u32 {
        self.shared
            .limiter
            .all_stats()
            .into_iter()
            .filter(|(k, _)| k.ends_with(&format!(":{location_id}")))
            .map(|(_, s)| s.max_window_attempts)
            .max()
            .unwrap_or(0)
    }

    /// Reads a document body (for tests that check state directly).
    pub fn doc(&self, kind: &str, id: &str) -> Option<Value> {
        self.shared
            .docs
            .read()
            .get(kind, id)
            .map(|d| (*d.body).clone())
    }

    /// Stops accepting connections and waits for the server to end.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Creates the location, the agency, the tokens and the OAuth app of a new sandbox.
fn setup_identity(ctx: &mut Ctx<'_>, info: &StartupInfo) -> Result<(), error::ApiError> {
    let loc = &info.location_id;
    let company = &info.company_id;
    let now = handlers::iso(ctx.now_ms);
    ctx.put(
        "company",
        company,
        None,
        None,
        json!({ "id": company, "name": "Sandbox Agency", "email": "agency@sandbox.test", "dateAdded": now }),
    )?;
    ctx.put(
        "location",
        loc,
        Some(loc),
        None,
        json!({
            "id": loc, "companyId": company, "name": "Sandbox Location",
            "address": "1 Sandbox Way", "city": "Austin", "state": "TX", "country": "US",
            "postalCode": "78701", "website": "https://sandbox.test", "timezone": "America/Chicago",
            "email": "location@sandbox.test", "phone": "+15125550100",
            "business": { "name": "Sandbox Location", "email": "location@sandbox.test" },
            "settings": { "allowDuplicateContact": false, "allowDuplicateOpportunity": false,
                          "allowFacebookNameMerge": false, "disableContactTimezone": false,
                          "duplicateContactOrder": ["email", "phone"] },
            "dateAdded": now,
        }),
    )?;
    let location_caller = Caller {
        location_id: Some(loc.clone()),
        company_id: Some(company.clone()),
        user_type: UserType::Location,
        app_id: "private-integration".into(),
    };
    auth::store_token(
        ctx,
        &info.token,
        &location_caller,
        &auth::ALL_SCOPES,
        None,
        "pit",
    )?;
    auth::store_token(
        ctx,
        &info.readonly_token,
        &location_caller,
        &auth::readonly_scopes(),
        None,
        "pit",
    )?;
    let agency_caller = Caller {
        location_id: None,
        company_id: Some(company.clone()),
        user_type: UserType::Company,
        app_id: "private-integration".into(),
    };
    auth::store_token(
        ctx,
        &info.agency_token,
        &agency_caller,
        &auth::ALL_SCOPES,
        None,
        "pit",
    )?;
    auth::register_client(
        ctx,
        &info.oauth.client_id,
        &info.oauth.client_secret,
        company,
    )
}
