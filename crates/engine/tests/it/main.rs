//! Integration tests of the engine: store, runner and triggers end to end, against a fake
//! HighLevel ([`fake::FakeHighLevel`]) and a local HTTP receiver.

pub mod backends;
mod cluster;
mod fake;
mod runner;
mod sandbox;
mod schema;
mod security;
mod store;
mod triggers;
