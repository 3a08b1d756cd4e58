//! How the engine reaches HighLevel: the [`HighLevelApi`] trait, and the error a step
//! returns ([`StepError`]), classified as worth retrying or not.
//!
//! The engine talks to HighLevel only through [`HighLevelApi`], so tests can use a fake and
//! the CLI can plug in the real client (which paces and retries individual requests
//! itself; the engine's retries are run-level and durable).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use hlbridge_highlevel::Operation;
use serde_json::Value;

/// Whether a failed step may succeed if tried again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Network errors, 429, 5xx: retried with backoff within the flow's budget.
    Transient,
    /// 400, 401 (after refresh), 403, 404, 422, template errors, bad configuration: the run
    /// goes to dead letters at once.
    Permanent,
}

/// A step failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{message}")]
pub struct StepError {
    /// Retry or not.
    pub class: ErrorClass,
    /// What went wrong, for people.
    pub message: String,
    /// HTTP status of the failed call, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The response body of the failed call, kept with the dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The server's `Retry-After` (or rate-limit reset), honoured as the minimum delay.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_millis")]
    pub retry_after: Option<Duration>,
}

mod opt_millis {
    //! `Option<Duration>` as integer milliseconds.
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

impl StepError {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Transient,
            message: message.into(),
            status: None,
            body: None,
            retry_after: None,
        }
    }

    /// A failure that cannot succeed on retry.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Permanent,
            message: message.into(),
            status: None,
            body: None,
            retry_after: None,
        }
    }

    /// A failed HTTP call, classified by its status with [`classify_status`].
    pub fn http(status: u16, message: impl Into<String>, body: Option<Value>) -> Self {
        Self {
            class: classify_status(status),
            message: message.into(),
            status: Some(status),
            body,
            retry_after: None,
        }
    }

    /// Sets the minimum delay before a retry.
    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }
}

/// Classifies an HTTP error status: 408, 425, 429 and 5xx are transient, every other status
/// (400, 401, 403, 404, 409, 422, …) is permanent.
pub fn classify_status(status: u16) -> ErrorClass {
    match status {
        408 | 425 | 429 => ErrorClass::Transient,
        500..=599 => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// HighLevel as the engine sees it: call an operation of the table with JSON parameters
/// (path, query and body parameters by name, as in a flow's `params`).
pub trait HighLevelApi: Send + Sync {
    /// Calls `op` through `connection` and returns the response body.
    fn call<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        params: Value,
    ) -> BoxFuture<'a, Result<Value, StepError>>;

    /// Every item of a list operation, across all pages. The default calls the operation once
    /// and yields the array at the operation's `items_key`.
    fn paginate<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        params: Value,
    ) -> BoxStream<'a, Result<Value, StepError>> {
        stream::once(async move {
            let body = self.call(connection, op, params).await?;
            Ok::<_, StepError>(items_of(op, body))
        })
        .flat_map(|res| match res {
            Ok(items) => stream::iter(items.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => stream::iter(vec![Err(e)]),
        })
        .boxed()
    }
}

/// The items of a list response, by the operation's `items_key` (the body itself when it is
/// an array).
pub fn items_of(op: &Operation, body: Value) -> Vec<Value> {
    let found = match op.items_key {
        Some("") | None => Some(body),
        Some(key) => key.split('.').try_fold(body, |v, k| match v {
            Value::Object(mut m) => m.remove(k),
            _ => None,
        }),
    };
    match found {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

impl<T: HighLevelApi + ?Sized> HighLevelApi for Arc<T> {
    fn call<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        params: Value,
    ) -> BoxFuture<'a, Result<Value, StepError>> {
        (**self).call(connection, op, params)
    }

    fn paginate<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        params: Value,
    ) -> BoxStream<'a, Result<Value, StepError>> {
        (**self).paginate(connection, op, params)
    }
}

/// The HighLevel API of an engine with no connection configured: every call fails
/// permanently with a message saying so.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHighLevel;

impl HighLevelApi for NoHighLevel {
    fn call<'a>(
        &'a self,
        connection: &'a str,
        op: &'static Operation,
        _params: Value,
    ) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(async move {
            Err(StepError::permanent(format!(
                "no HighLevel connection configured (connection {connection:?}, operation {})",
                op.id
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        for s in [400, 401, 403, 404, 422] {
            assert_eq!(classify_status(s), ErrorClass::Permanent, "{s}");
        }
        for s in [429, 500, 502, 503] {
            assert_eq!(classify_status(s), ErrorClass::Transient, "{s}");
        }
    }

    #[test]
    fn items_by_key() {
        let op = hlbridge_highlevel::operations::find("contacts.list").expect("op");
        let items = items_of(
            op,
            serde_json::json!({"contacts": [{"id": "a"}], "meta": {}}),
        );
        assert_eq!(items.len(), 1);
        assert!(items_of(op, serde_json::json!({"nope": 1})).is_empty());
    }
}
