//! HighLevel API v2 for hlbridge: the operation table, a client that calls it correctly
//! (auth and token refresh, per-location pacing, retries, pagination) and webhook signatures.
//!
//! This crate depends on no other crate of ours and on no database or server framework, so
//! the sandbox, the engine and the CLI can all build on it.

pub mod auth;
pub mod budget;
pub mod client;
pub mod error;
pub mod operations;
pub mod pacing;
pub mod paginate;
pub mod request;
pub mod retry;
pub mod webhooks;

pub use auth::{
    Auth, BoxFuture, MemoryTokenStore, NoopTokenStore, OAuthTokenSource, OAuthTokens, StaticToken,
    TokenSource, TokenStore,
};
pub use client::{Client, ClientConfig, PRODUCTION_BASE_URL, Response, find_operation};
pub use error::{ApiError, Error};
pub use operations::{Category, Kind, Method, OPERATIONS, Operation};
pub use pacing::{BudgetSnapshot, PacingConfig, RateLimitHeaders};
pub use retry::RetryConfig;
pub use url::Url;
