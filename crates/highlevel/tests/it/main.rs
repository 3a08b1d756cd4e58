//! The one integration-test binary of `hlbridge-highlevel`: the client against a local stub.

#![allow(missing_docs, clippy::unwrap_used)]

mod auth;
mod client;
mod pacing;
mod paginate;
mod spec_conformance;
mod stub;
