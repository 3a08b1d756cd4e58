//! The `/_sandbox` admin API (a prefix HighLevel does not use), guarded by its own admin token:
//! faults, webhook receivers and their log, rate-limit settings and statistics, extra tokens,
//! location settings. `GET /_sandbox/keys` is public: receivers need the webhook keys.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Shared;
use crate::auth;
use crate::delivery::RetryPolicy;
use crate::error::ApiError;
use crate::faults::FaultRule;
use crate::handlers::{Caller, UserType, new_id};
use crate::ratelimit::RateLimitConfig;

fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn err(e: ApiError) -> Response {
    e.into_response()
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WebhookBody {
    url: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyBody {
    retry: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RateBody {
    enabled: Option<bool>,
    burst: Option<u32>,
    interval_ms: Option<u64>,
    daily: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenBody {
    location_id: Option<String>,
    company_id: Option<String>,
    #[serde(default)]
    agency: bool,
    scopes: Option<Vec<String>>,
    expires_in_seconds: Option<i64>,
    app_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExhaustBody {
    location_id: String,
    app_id: Option<String>,
}

/// Serves one admin request.
pub async fn handle(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/');
    let info = shared.info.read().clone();
    if *method == Method::GET && path == "/_sandbox/keys" {
        return reply(StatusCode::OK, json!(info.webhook_public_keys));
    }
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == info.admin_token);
    if !authorized {
        return err(ApiError::unauthorized(
            "The sandbox admin API needs the admin token printed at start",
        ));
    }
    let segments: Vec<&str> = path
        .trim_start_matches("/_sandbox")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["info"]) | (Method::GET, []) => reply(StatusCode::OK, json!(info)),
        (Method::GET, ["stats"]) => {
            let docs = shared.docs.read();
            let counts: serde_json::Map<String, Value> = [
                "contact",
                "task",
                "note",
                "appointment",
                "opportunity",
                "conversation",
                "message",
            ]
            .iter()
            .map(|k| (k.to_string(), json!(docs.count(k))))
            .collect();
            reply(
                StatusCode::OK,
                json!({ "rateLimits": shared.limiter.all_stats(), "documents": counts }),
            )
        }
        (Method::GET, ["stats", "locations", location]) => {
            let max = shared
                .limiter
                .all_stats()
                .into_iter()
                .filter(|(k, _)| k.ends_with(&format!(":{location}")))
                .map(|(_, s)| s)
                .collect::<Vec<_>>();
            let attempts = max.iter().map(|s| s.max_window_attempts).max().unwrap_or(0);
            let accepted = max.iter().map(|s| s.max_window_accepted).max().unwrap_or(0);
            let rejected: u64 = max.iter().map(|s| s.rejected).sum();
            reply(
                StatusCode::OK,
                json!({ "locationId": location, "maxWindowAttempts": attempts, "maxWindowAccepted": accepted, "rejected": rejected }),
            )
        }
        (Method::GET, ["faults"]) => reply(StatusCode::OK, json!(shared.faults.list())),
        (Method::POST, ["faults"]) => match parse::<FaultRule>(body) {
            Ok(rule) => match shared.faults.add(rule) {
                Ok(id) => reply(StatusCode::CREATED, json!({ "id": id })),
                Err(e) => err(ApiError::unprocessable(vec![e])),
            },
            Err(r) => err(r),
        },
        (Method::DELETE, ["faults"]) => {
            shared.faults.clear();
            reply(StatusCode::OK, json!({ "cleared": true }))
        }
        (Method::DELETE, ["faults", id]) => {
            if shared.faults.remove(id) {
                reply(StatusCode::OK, json!({ "removed": id }))
            } else {
                err(ApiError::not_found("Fault rule"))
            }
        }
        (Method::GET, ["webhooks"]) => {
            reply(StatusCode::OK, json!({ "urls": shared.delivery.urls() }))
        }
        (Method::POST, ["webhooks"]) => match parse::<WebhookBody>(body) {
            Ok(b) => match url::Url::parse(&b.url) {
                Ok(_) => {
                    shared.delivery.add_url(b.url);
                    reply(
                        StatusCode::CREATED,
                        json!({ "urls": shared.delivery.urls() }),
                    )
                }
                Err(e) => err(ApiError::unprocessable(vec![format!(
                    "url is not a URL: {e}"
                )])),
            },
            Err(r) => err(r),
        },
        (Method::DELETE, ["webhooks"]) => match parse::<WebhookBody>(body) {
            Ok(b) => {
                shared.delivery.remove_url(&b.url);
                reply(StatusCode::OK, json!({ "urls": shared.delivery.urls() }))
            }
            Err(r) => err(r),
        },
        (Method::PUT, ["webhooks", "policy"]) => match parse::<PolicyBody>(body) {
            Ok(b) => {
                let policy = match b.retry.as_str() {
                    "on429" | "on_429" | "429" => RetryPolicy::On429,
                    "always" => RetryPolicy::Always,
                    other => {
                        return err(ApiError::unprocessable(vec![format!(
                            "retry must be on429 or always, got {other}"
                        )]));
                    }
                };
                shared.delivery.set_policy(policy);
                reply(StatusCode::OK, json!({ "retry": policy }))
            }
            Err(r) => err(r),
        },
        (Method::GET, ["webhooks", "log"]) => reply(StatusCode::OK, json!(shared.delivery.log())),
        (Method::GET, ["rate-limit"]) => {
            let c = shared.limiter.config();
            reply(
                StatusCode::OK,
                json!({ "enabled": c.enabled, "burst": c.burst, "intervalMs": c.interval.as_millis() as u64, "daily": c.daily }),
            )
        }
        (Method::PUT, ["rate-limit"]) => match parse::<RateBody>(body) {
            Ok(b) => {
                let mut c: RateLimitConfig = shared.limiter.config();
                if let Some(e) = b.enabled {
                    c.enabled = e;
                }
                if let Some(n) = b.burst.filter(|n| *n > 0) {
                    c.burst = n;
                }
                if let Some(ms) = b.interval_ms.filter(|n| *n > 0) {
                    c.interval = Duration::from_millis(ms);
                }
                if let Some(d) = b.daily {
                    c.daily = d;
                }
                shared.limiter.set_config(c);
                shared.limiter.reset();
                reply(
                    StatusCode::OK,
                    json!({ "enabled": c.enabled, "burst": c.burst, "intervalMs": c.interval.as_millis() as u64, "daily": c.daily }),
                )
            }
            Err(r) => err(r),
        },
        (Method::POST, ["rate-limit", "exhaust-daily"]) => match parse::<ExhaustBody>(body) {
            Ok(b) => {
                let app = b.app_id.unwrap_or_else(|| "private-integration".into());
                shared
                    .limiter
                    .exhaust_daily(&format!("{app}:{}", b.location_id));
                reply(
                    StatusCode::OK,
                    json!({ "exhausted": format!("{app}:{}", b.location_id) }),
                )
            }
            Err(r) => err(r),
        },
        (Method::POST, ["tokens"]) => match parse::<TokenBody>(body) {
            Ok(b) => {
                let caller = Caller {
                    location_id: if b.agency {
                        None
                    } else {
                        Some(b.location_id.unwrap_or_else(|| info.location_id.clone()))
                    },
                    company_id: Some(b.company_id.unwrap_or_else(|| info.company_id.clone())),
                    user_type: if b.agency {
                        UserType::Company
                    } else {
                        UserType::Location
                    },
                    app_id: b.app_id.unwrap_or_else(|| "private-integration".into()),
                };
                let scopes = b.scopes.unwrap_or_else(|| auth::ALL_SCOPES.clone());
                let token = format!("pit-{}", new_id());
                let ttl = b.expires_in_seconds.map(|s| s * 1000);
                match shared
                    .mutate(|ctx| auth::store_token(ctx, &token, &caller, &scopes, ttl, "pit"))
                    .await
                {
                    Ok(()) => reply(
                        StatusCode::CREATED,
                        json!({ "token": token, "scopes": scopes }),
                    ),
                    Err(e) => err(e),
                }
            }
            Err(r) => err(r),
        },
        (Method::PATCH, ["locations", location, "settings"]) => match parse::<Value>(body) {
            Ok(patch) => {
                let loc = location.to_string();
                let result = shared
                    .mutate(|ctx| {
                        let mut doc = ctx
                            .find("location", &loc, "Location", &admin_req_stub())?
                            .as_ref()
                            .clone();
                        if let (Some(settings), Some(p)) =
                            (doc["settings"].as_object_mut(), patch.as_object())
                        {
                            for (k, v) in p {
                                settings.insert(k.clone(), v.clone());
                            }
                        }
                        ctx.replace("location", &loc, doc.clone())?;
                        Ok(doc["settings"].clone())
                    })
                    .await;
                match result {
                    Ok(s) => reply(StatusCode::OK, json!({ "settings": s })),
                    Err(e) => err(e),
                }
            }
            Err(r) => err(r),
        },
        _ => err(ApiError::new(
            404,
            format!("Cannot {method} {}", uri.path()),
        )),
    }
}

/// A request with no location restriction, for admin lookups through `Ctx::find`.
fn admin_req_stub() -> crate::handlers::Req {
    crate::handlers::Req {
        op: &hlbridge_highlevel::operations::OPERATIONS[0],
        path: Default::default(),
        query: Vec::new(),
        body: Value::Null,
        caller: Caller {
            location_id: None,
            company_id: None,
            user_type: UserType::Company,
            app_id: "admin".into(),
        },
        now_ms: crate::now_ms(),
    }
}
