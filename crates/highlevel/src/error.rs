//! Errors of the HighLevel client.
//!
//! One enum, [`Error`], for everything a call can fail with. HighLevel's own error answers
//! become [`ApiError`], which keeps the status, HighLevel's message (its `message` may be a
//! string or a list of strings), the operation id and the request's traceId, so a failed run
//! can be shown and dead-lettered with everything needed to understand it.

use std::fmt;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

/// Anything a HighLevel call can fail with.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// No operation has this id.
    #[error("{}", unknown_operation(id, suggestions))]
    UnknownOperation {
        /// The id asked for.
        id: String,
        /// The nearest existing ids, best first.
        suggestions: Vec<String>,
    },

    /// Required parameters are missing; names every one of them.
    #[error("{operation}: missing required parameter{}: {}", plural(names.len()), names.join(", "))]
    MissingParams {
        /// Operation id.
        operation: String,
        /// Every missing parameter, in the operation's declaration order.
        names: Vec<String>,
    },

    /// Parameters that cannot be sent as given (wrong shape, or not a list operation).
    #[error("{operation}: invalid parameters: {message}")]
    InvalidParams {
        /// Operation id.
        operation: String,
        /// What is wrong.
        message: String,
    },

    /// HighLevel answered with an error status (boxed to keep `Result<_, Error>` small).
    #[error("{0}")]
    Api(Box<ApiError>),

    /// The day's request budget for this location or company is used up; nothing was sent.
    #[error(
        "the daily HighLevel request budget for '{key}' is exhausted{}",
        retry_after.map(|d| format!("; it resets in about {}", human(d))).unwrap_or_default()
    )]
    DailyBudgetExhausted {
        /// The pacing key (location or company id).
        key: String,
        /// How long until the budget resets, when known.
        retry_after: Option<Duration>,
    },

    /// The request did not get an HTTP answer (connection, timeout, body read).
    #[error(
        "{operation}: request to HighLevel failed: {}",
        transport_message(source)
    )]
    Transport {
        /// Operation id.
        operation: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },

    /// Refreshing an OAuth token failed.
    #[error(
        "token refresh failed: {message}{}",
        if *permanent { " (the connection must be authorized again)" } else { "" }
    )]
    TokenRefresh {
        /// What went wrong (never contains a token).
        message: String,
        /// `true` when retrying cannot help (the refresh token was rejected).
        permanent: bool,
    },

    /// The rate budget shared with other processes (kept in the database) could not be
    /// consulted; nothing was sent.
    #[error("the shared rate budget for '{key}' is unavailable: {message}")]
    SharedBudget {
        /// The pacing key (location or company id).
        key: String,
        /// What went wrong.
        message: String,
    },

    /// HighLevel's answer could not be understood.
    #[error("{operation}: could not read HighLevel's response: {message}")]
    Decode {
        /// Operation id.
        operation: String,
        /// What was wrong with it.
        message: String,
    },
}

impl Error {
    /// The HTTP status HighLevel answered with, if the error comes from an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api(e) => Some(e.status),
            Error::Transport { source, .. } => source.status().map(|s| s.as_u16()),
            _ => None,
        }
    }

    /// Whether the call may have been carried out although it failed: an answer that came
    /// after HighLevel started on it (5xx but 501/505, 408) or a transport failure once the
    /// request was on its way (a timeout, a dropped connection). `false` when it surely was
    /// not: a 429 (refused before anything was done), a 4xx, a failed connect, or an error
    /// before sending. Matters for operations that are not
    /// [`repeatable`](crate::Operation::repeatable).
    pub fn may_have_been_carried_out(&self) -> bool {
        match self {
            Error::Api(e) => e.status != 429 && is_retryable_status(e.status),
            Error::Transport { source, .. } => !source.is_connect() && !source.is_builder(),
            _ => false,
        }
    }

    /// Whether trying the same call again later can succeed.
    ///
    /// `true` for 408, 429 and 5xx answers (but 501, 505), for transport errors and for token
    /// refreshes that failed for a passing reason. `false` for 4xx answers (400, 401 after a
    /// refresh, 403, 404, 422), an exhausted daily budget, and parameter or decode errors.
    ///
    /// A 5xx or transport error after a non-idempotent request (POST, PATCH) may mean the
    /// request *was* carried out: check [`Method::is_idempotent`](crate::Method::is_idempotent)
    /// before repeating one (the client itself only retries those after a 429).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api(e) => is_retryable_status(e.status),
            Error::Transport { .. } => true,
            Error::TokenRefresh { permanent, .. } => !permanent,
            Error::SharedBudget { .. } => true,
            Error::UnknownOperation { .. }
            | Error::MissingParams { .. }
            | Error::InvalidParams { .. }
            | Error::DailyBudgetExhausted { .. }
            | Error::Decode { .. } => false,
        }
    }

    /// The HighLevel error answer, if this is one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api(e) => Some(e),
            _ => None,
        }
    }
}

/// Whether an answer with this status is worth retrying (408, 429, 5xx except 501 Not
/// Implemented and 505 HTTP Version Not Supported, which will not change).
pub(crate) fn is_retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || ((500..600).contains(&status) && !matches!(status, 501 | 505))
}

/// An error answer from HighLevel.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// HighLevel's message; a list of messages is joined with `"; "`.
    pub message: String,
    /// HighLevel's messages one by one (one entry when it sent a single string).
    pub messages: Vec<String>,
    /// Id of the operation that was called.
    pub operation: String,
    /// The request's traceId (from the body or a response header), when present.
    pub trace_id: Option<String>,
    /// The whole response body (a JSON string when the body was not JSON).
    pub body: Value,
}

impl ApiError {
    /// Builds the error from an answer's status, headers and body.
    pub fn from_response(
        operation: &str,
        status: u16,
        headers: &HeaderMap,
        body: Value,
    ) -> ApiError {
        let messages = messages_of(&body);
        let message = if messages.is_empty() {
            reason(status).unwrap_or("error").to_string()
        } else {
            messages.join("; ")
        };
        let trace_id = trace_id(&body, headers);
        ApiError {
            status,
            message,
            messages,
            operation: operation.to_string(),
            trace_id,
            body,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: HighLevel answered {}", self.operation, self.status)?;
        if let Some(r) = reason(self.status) {
            write!(f, " {r}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(t) = &self.trace_id {
            write!(f, " (traceId {t})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Error::Api(Box::new(e))
    }
}

/// The message(s) of a HighLevel error body: `message` (string or list), else `msg`, else
/// `error_description`, else `error`; a non-JSON body is its own message.
fn messages_of(body: &Value) -> Vec<String> {
    fn strings(v: &Value) -> Vec<String> {
        match v {
            Value::String(s) if !s.trim().is_empty() => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .filter_map(|i| match i {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                })
                .collect(),
            _ => Vec::new(),
        }
    }
    match body {
        Value::Object(map) => ["message", "msg", "error_description", "error"]
            .iter()
            .filter_map(|k| map.get(*k))
            .map(strings)
            .find(|m| !m.is_empty())
            .unwrap_or_default(),
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() {
                Vec::new()
            } else {
                vec![truncate(s, 300)]
            }
        }
        _ => Vec::new(),
    }
}

/// Header names a traceId may come in.
const TRACE_HEADERS: [&str; 3] = ["x-trace-id", "traceid", "trace-id"];

/// The traceId of an answer: the body's `traceId` field, else a trace header.
pub(crate) fn trace_id(body: &Value, headers: &HeaderMap) -> Option<String> {
    if let Some(t) = body.get("traceId").and_then(Value::as_str) {
        return Some(t.to_string());
    }
    TRACE_HEADERS
        .iter()
        .filter_map(|h| headers.get(*h))
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .next()
}

fn reason(status: u16) -> Option<&'static str> {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
}

fn unknown_operation(id: &str, suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        format!("unknown operation '{id}'")
    } else {
        format!(
            "unknown operation '{id}'; did you mean: {}?",
            suggestions.join(", ")
        )
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// A transport error's message with its causes (reqwest's own message is terse).
fn transport_message(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        e.to_string()
    };
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn api(status: u16, body: Value) -> ApiError {
        ApiError::from_response("contacts.get", status, &HeaderMap::new(), body)
    }

    #[test]
    fn string_message_and_trace_id() {
        let e = api(
            404,
            json!({"statusCode": 404, "message": "Contact not found", "traceId": "abc"}),
        );
        assert_eq!(
            Error::from(e).to_string(),
            "contacts.get: HighLevel answered 404 Not Found: Contact not found (traceId abc)"
        );
    }

    #[test]
    fn list_message_is_joined() {
        let e = api(
            422,
            json!({"statusCode": 422, "message": ["email must be an email", "phone is bad"], "error": "Unprocessable Entity"}),
        );
        assert_eq!(e.messages, vec!["email must be an email", "phone is bad"]);
        assert_eq!(e.message, "email must be an email; phone is bad");
        assert!(!Error::from(e).is_retryable());
    }

    #[test]
    fn msg_and_header_trace() {
        let mut h = HeaderMap::new();
        h.insert("x-trace-id", "t-1".parse().expect("static header"));
        let e = ApiError::from_response("x.y", 401, &h, json!({"msg": "Invalid JWT"}));
        assert_eq!(e.message, "Invalid JWT");
        assert_eq!(e.trace_id.as_deref(), Some("t-1"));
    }

    #[test]
    fn empty_body_uses_reason() {
        let e = api(503, Value::Null);
        assert_eq!(e.message, "Service Unavailable");
        assert!(Error::from(e).is_retryable());
        assert!(!Error::from(api(501, Value::Null)).is_retryable());
    }

    #[test]
    fn unknown_operation_display() {
        let e = Error::UnknownOperation {
            id: "x".into(),
            suggestions: vec!["a".into(), "b".into(), "c".into()],
        };
        assert_eq!(
            e.to_string(),
            "unknown operation 'x'; did you mean: a, b, c?"
        );
        let e = Error::MissingParams {
            operation: "contacts.get".into(),
            names: vec!["contactId".into(), "locationId".into()],
        };
        assert_eq!(
            e.to_string(),
            "contacts.get: missing required parameters: contactId, locationId"
        );
    }
}
