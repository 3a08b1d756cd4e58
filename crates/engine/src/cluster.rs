//! Scale-out: what lets `hlbridge serve` and any number of `hlbridge worker` processes share
//! one (PostgreSQL) database safely.
//!
//! - **Runs**: claimed with `FOR UPDATE SKIP LOCKED` under a lease (the store); an enqueue
//!   anywhere wakes idle workers everywhere (`LISTEN`/`NOTIFY`).
//! - **Polls**: each poll flow has a turn in the store (`trigger_turns`); the process that
//!   moves it forward polls, so a poll happens once per interval across the cluster
//!   ([`crate::Engine::poll_if_due`]). Schedules fire once per tick by construction: the
//!   tick is the event's dedupe key.
//! - **Rate budgets**: [`StoreBudget`] keeps each location's budget (100 requests per 10 s,
//!   200,000 per day) in the database as `burst` slots; the HighLevel client takes a slot
//!   for every HTTP attempt, after the per-process pacer (`hlbridge_highlevel::pacing`)
//!   gave its turn, and reports the answer. So N workers together never exceed the budget,
//!   whichever locations each works on. (The alternative, leasing each location to one
//!   worker at a time, would tie a location's runs to one process and stall them for a
//!   lease period whenever that process dies; slots spread every location's work over all
//!   workers and a dead worker's slots free themselves after the request timeout.)

use std::sync::Arc;
use std::time::Duration;

use hlbridge_highlevel::budget::{SharedBudget, SharedSlot};
use hlbridge_highlevel::{BoxFuture, Error, RateLimitHeaders};
use rand::Rng;

use crate::store::{RateBudget, SlotAnswer, SlotTake, Store};

/// Consecutive store failures after which a request fails (retryable) instead of waiting.
const MAX_STORE_FAILURES: u32 = 5;

/// The longest a waiting request sleeps before looking at the slots again.
const MAX_WAIT: Duration = Duration::from_millis(500);

/// A [`SharedBudget`] kept in the store (see the module docs).
#[derive(Clone)]
pub struct StoreBudget {
    store: Arc<dyn Store>,
    budget: RateBudget,
}

impl std::fmt::Debug for StoreBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBudget")
            .field("backend", &self.store.backend())
            .field("budget", &self.budget)
            .finish()
    }
}

impl StoreBudget {
    /// Each pacing key's budget is `budget`, kept in `store`.
    pub fn new(store: Arc<dyn Store>, budget: RateBudget) -> Self {
        Self { store, budget }
    }

    /// The budget of every key.
    pub fn budget(&self) -> &RateBudget {
        &self.budget
    }
}

impl SharedBudget for StoreBudget {
    fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<SharedSlot, Error>> {
        Box::pin(async move {
            let mut failures = 0;
            loop {
                let claim = uuid::Uuid::new_v4().to_string();
                match self.store.take_rate_slot(key, &self.budget, &claim).await {
                    Ok(SlotTake::Taken(slot)) => {
                        return Ok(SharedSlot {
                            key: key.to_owned(),
                            slot,
                            claim,
                        });
                    }
                    Ok(SlotTake::Wait(wait)) => {
                        failures = 0;
                        // A little jitter so waiters of several processes do not all come
                        // back at the same instant.
                        let jitter = rand::rng().random_range(0..=3);
                        let wait = wait.min(MAX_WAIT) + Duration::from_millis(jitter);
                        tokio::time::sleep(wait).await;
                    }
                    Ok(SlotTake::DailyExhausted(resets)) => {
                        return Err(Error::DailyBudgetExhausted {
                            key: key.to_owned(),
                            retry_after: Some(resets),
                        });
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(key, error = %e, failures, "the shared rate budget is unavailable");
                        if failures >= MAX_STORE_FAILURES {
                            return Err(Error::SharedBudget {
                                key: key.to_owned(),
                                message: e.to_string(),
                            });
                        }
                        tokio::time::sleep(Duration::from_millis(50 * u64::from(failures))).await;
                    }
                }
            }
        })
    }

    fn answered<'a>(
        &'a self,
        slot: SharedSlot,
        headers: Option<&'a RateLimitHeaders>,
        limited: bool,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let answer = SlotAnswer {
                limited,
                exhausted: headers.and_then(|h| h.remaining) == Some(0),
            };
            if let Err(e) = self
                .store
                .answer_rate_slot(&slot.key, &self.budget, slot.slot, &slot.claim, answer)
                .await
            {
                // The slot stays busy until its in-flight time runs out: safe, only slower.
                tracing::warn!(key = %slot.key, error = %e, "could not report an answer to the shared rate budget");
            }
        })
    }
}
