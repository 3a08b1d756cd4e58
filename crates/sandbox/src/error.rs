//! Error answers in HighLevel's shapes: `{"statusCode":…,"message":…}` (NestJS style), with
//! `message` a list for validation failures and an `error` reason phrase.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// An error answer of the emulated API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The message; a list when HighLevel reports several validation failures.
    pub message: Value,
    /// Extra fields some errors carry (`meta` of a duplicate contact, …).
    pub extra: Option<Box<Map<String, Value>>>,
}

impl ApiError {
    /// An error with a single message.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: Value::String(message.into()),
            extra: None,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, message)
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, message)
    }

    /// 404 for a missing object, with HighLevel's wording (`Contact not found`).
    pub fn not_found(what: &str) -> Self {
        Self::new(404, format!("{what} not found"))
    }

    /// 422 with one message per failed rule.
    pub fn unprocessable(messages: Vec<String>) -> Self {
        Self {
            status: 422,
            message: Value::Array(messages.into_iter().map(Value::String).collect()),
            extra: None,
        }
    }

    /// Adds a `meta` object to the error body.
    pub fn with_meta(mut self, meta: Value) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .insert("meta".into(), meta);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let reason = StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let mut body = json!({ "statusCode": self.status, "message": self.message });
        if self.status == 422 || self.status == 404 || self.status == 400 {
            body["error"] = Value::String(reason.to_string());
        }
        if let (Some(extra), Some(obj)) = (&self.extra, body.as_object_mut()) {
            for (k, v) in extra.iter() {
                obj.insert(k.clone(), v.clone());
            }
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body())).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::new(500, format!("Internal server error: {e}"))
    }
}
