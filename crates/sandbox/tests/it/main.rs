//! End-to-end tests of the sandbox over HTTP on 127.0.0.1:0: behaviour as HighLevel documents
//! it (contacts walk, auth, scopes, rate limits, webhooks, OAuth, faults) and conformance of
//! every operation's answer to the official OpenAPI response schemas.

mod behaviour;
mod conformance;
mod consistency;
mod harness;
mod oauth;
mod webhooks;
