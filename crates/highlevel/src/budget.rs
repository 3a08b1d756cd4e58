//! A rate budget shared with other processes.
//!
//! The [`Pacer`](crate::pacing::Pacer) keeps one process under HighLevel's limits. When
//! several processes (workers on several machines) call HighLevel for the same locations,
//! each location's budget of 100 requests per 10 s must be shared by all of them. A
//! [`SharedBudget`] is that shared budget (the engine keeps it in its database): the client
//! asks it for a slot after the local pacer gave its turn, and tells it when the answer
//! arrived (with the `X-RateLimit-*` headers and whether it was a 429), for **every** HTTP
//! attempt — retries and pages included.
//!
//! The contract mirrors the local limiter's: a request occupies its slot from the moment the
//! slot is given until `interval` after its answer, so at most `burst` requests of all
//! processes together fall within any window of `interval`. A slot whose answer is never
//! reported (the process died) must be freed by the budget itself after a while.

use crate::auth::BoxFuture;
use crate::error::Error;
use crate::pacing::RateLimitHeaders;

/// A slot of a shared budget, held by one request until its answer is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSlot {
    /// The pacing key (location or company id).
    pub key: String,
    /// The slot's number within the key's budget.
    pub slot: u32,
    /// Identifies this holding of the slot (only its holder may report the answer).
    pub claim: String,
}

/// A rate budget shared with other processes (see the module docs).
pub trait SharedBudget: Send + Sync {
    /// Waits for a slot of `key`'s budget. Fails with
    /// [`Error::DailyBudgetExhausted`] when the day's budget is used up, or
    /// [`Error::SharedBudget`] when the budget cannot be consulted.
    fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<SharedSlot, Error>>;

    /// The request holding `slot` was answered now (`headers` of the answer, `limited`: it
    /// was a 429), or failed without an answer (`None`, `false`).
    fn answered<'a>(
        &'a self,
        slot: SharedSlot,
        headers: Option<&'a RateLimitHeaders>,
        limited: bool,
    ) -> BoxFuture<'a, ()>;
}
