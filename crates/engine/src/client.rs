//! [`ClientApi`]: the [`HighLevelApi`] backed by the real HighLevel client
//! (`hlbridge_highlevel::Client`), with named connections.
//!
//! The client paces requests per location and retries individual requests itself; what
//! still fails is classified here ([`step_error`]) for the engine's durable, run-level
//! retries: retryable errors (429, 5xx, transport, passing token-refresh failures) and an
//! exhausted daily budget (retried after its reset) are transient, everything else
//! permanent, with HighLevel's response body kept.

use std::collections::HashMap;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use hlbridge_highlevel::{Auth, Client, Error, Operation};
use serde_json::Value;

use crate::api::{ErrorClass, HighLevelApi, StepError};

/// A named HighLevel connection: how to authenticate, and the location it belongs to.
#[derive(Clone)]
pub struct Connection {
    /// The token source (Private Integration Token, OAuth with refresh…).
    pub auth: Auth,
    /// The connection's location: fills `locationId` when an operation takes one and the
    /// flow did not give it.
    pub location_id: Option<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("location_id", &self.location_id)
            .finish_non_exhaustive()
    }
}

/// The real client behind [`HighLevelApi`].
#[derive(Debug, Clone)]
pub struct ClientApi {
    client: Client,
    connections: HashMap<String, Connection>,
}

/// Classifies a client error for run-level retries.
pub fn step_error(e: &Error) -> StepError {
    let retry_after = match e {
        Error::DailyBudgetExhausted { retry_after, .. } => *retry_after,
        _ => None,
    };
    StepError {
        class: if e.is_retryable() || matches!(e, Error::DailyBudgetExhausted { .. }) {
            ErrorClass::Transient
        } else {
            ErrorClass::Permanent
        },
        message: e.to_string(),
        status: e.status(),
        body: e.api().map(|a| a.body.clone()),
        retry_after,
    }
}

/// [`step_error`] for a call of `op`: a create or a send that failed after it was sent may
/// have been carried out, so it is not retried by itself (that could do it twice) but ends
/// the run in dead letters saying so; the operator checks HighLevel and replays if needed.
pub fn call_error(op: &Operation, e: &Error) -> StepError {
    let mut err = step_error(e);
    if !op.repeatable() && e.may_have_been_carried_out() {
        err.class = ErrorClass::Permanent;
        err.message = format!(
            "outcome unknown: {} failed after the request was sent ({}); HighLevel may have \
             carried it out, so it is not retried automatically (that could do it twice). \
             Check HighLevel; if it did not happen, replay the run with \
             `hlbridge replay <run> --resume`",
            op.id, err.message
        );
    }
    err
}

impl ClientApi {
    /// An adapter over `client` with the given connections by name.
    pub fn new(client: Client, connections: HashMap<String, Connection>) -> Self {
        Self {
            client,
            connections,
        }
    }

    /// The connection names.
    pub fn connection_names(&self) -> impl Iterator<Item = &str> {
        self.connections.keys().map(String::as_str)
    }

    /// The underlying client (its pacing budgets, for dashboards and metrics).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A connection by name.
    pub fn connection(&self, name: &str) -> Option<&Connection> {
        self.connections.get(name)
    }

    fn prepare(
        &self,
        connection: &str,
        op: &Operation,
        mut params: Value,
    ) -> Result<(&Connection, Value), StepError> {
        let conn = self.connections.get(connection).ok_or_else(|| {
            StepError::permanent(format!(
                "HighLevel connection `{connection}` is not configured"
            ))
        })?;
        if let (Some(loc), Value::Object(map)) = (&conn.location_id, &mut params)
            && op.param("locationId").is_some()
            && !map.contains_key("locationId")
        {
            map.insert("locationId".into(), Value::String(loc.clone()));
        }
        Ok((conn, params))
    }
}

impl HighLevelApi for ClientApi {
    fn call<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        params: Value,
    ) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(async move {
            let (conn, params) = self.prepare(connection, op, params)?;
            self.client
                .call(&conn.auth, op, &params)
                .await
                .map(|r| r.body)
                .map_err(|e| call_error(op, &e))
        })
    }

    fn paginate<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        params: Value,
    ) -> BoxStream<'a, Result<Value, StepError>> {
        match self.prepare(connection, op, params) {
            Ok((conn, params)) => self
                .client
                .paginate(&conn.auth, op, params)
                .map(|r| r.map_err(|e| step_error(&e)))
                .boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let e = Error::DailyBudgetExhausted {
            key: "loc".into(),
            retry_after: Some(std::time::Duration::from_secs(60)),
        };
        let s = step_error(&e);
        assert_eq!(
            s.class,
            ErrorClass::Transient,
            "retried after the daily reset"
        );
        assert_eq!(s.retry_after, Some(std::time::Duration::from_secs(60)));
        let e = Error::TokenRefresh {
            message: "timeout".into(),
            permanent: false,
        };
        assert!(step_error(&e).is_transient());
        let e = Error::MissingParams {
            operation: "contacts.get".into(),
            names: vec!["contactId".into()],
        };
        assert!(!step_error(&e).is_transient());
    }
}
