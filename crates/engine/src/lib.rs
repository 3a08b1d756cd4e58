//! The hlbridge engine: flow files and their validation, templates (field mappings), the
//! durable store (event log, run queue, step results, cursors), the runner and the triggers.
//!
//! Delivery model (see `DESIGN.md`): a trigger produces an event with a dedupe key; the
//! event and its run are written in one transaction, so a second copy of the event is a
//! no-op. Workers claim runs with a lease, record every step's result (a resumed run does
//! not redo finished steps), retry with exponential backoff and jitter within the flow's
//! budget, and send what cannot succeed to dead letters, from where it can be replayed.

pub mod api;
pub mod client;
pub mod cluster;
pub mod engine;
pub mod flow;
pub mod net;
pub mod runner;
pub mod security;
pub mod store;
pub mod template;
pub mod triggers;
pub mod validate;

pub use api::{ErrorClass, HighLevelApi, StepError};
pub use client::{ClientApi, Connection};
pub use engine::{AppConnection, Engine, EngineConfig, EngineError};
pub use flow::Flow;
pub use store::{RunDetail, RunFilter, RunId, RunState, RunSummary, SqliteStore, Store};
pub use triggers::{IngressError, PollReport};
pub use validate::{CompiledFlow, Diagnostic, ValidationContext};
