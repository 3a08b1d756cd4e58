//! A stateful local emulator of the HighLevel API v2 ("LocalStack for HighLevel").
//!
//! Every operation of the operation table is served from SQLite-backed state with HighLevel's
//! auth (Private Integration Tokens and OAuth with rotating refresh tokens), scopes, `Version`
//! header, rate limits and headers, signed webhooks, and fault injection.

pub mod error;
pub mod handlers;
pub mod store;
