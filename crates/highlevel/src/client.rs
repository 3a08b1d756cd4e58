//! The HighLevel client: one call = validated parameters, a token, a paced slot, retries.
//!
//! Every request carries `Authorization: Bearer …`, the operation's `Version` header and
//! `Accept: application/json`. Retries use exponential backoff with full jitter
//! ([`RetryConfig`]): a 429 is retried for every operation (HighLevel refuses it before doing
//! anything), 5xx/408 answers and transport errors only for idempotent methods, and 400,
//! 403, 404 and 422 never. `Retry-After` (seconds or HTTP date) and, on 429,
//! `X-RateLimit-Interval-Milliseconds` are the minimum wait. A 401 triggers one token
//! refresh and one retry; a second 401 is final.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use serde_json::Value;
use tracing::{Instrument, field};
use url::Url;

use crate::auth::Auth;
use crate::budget::SharedBudget;
use crate::error::{ApiError, Error, is_retryable_status, trace_id, truncate};
use crate::operations::{self, Method, Operation};
use crate::pacing::{BudgetSnapshot, GLOBAL_KEY, Pacer, PacingConfig, RateLimitHeaders};
use crate::paginate;
use crate::request::{PreparedRequest, pacing_id, prepare};
use crate::retry::{RetryConfig, retry_after};

/// HighLevel's production API.
pub const PRODUCTION_BASE_URL: &str = "https://services.leadconnectorhq.com";

/// Client settings. `Default` is production.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// API base URL (a path prefix is kept). Default `https://services.leadconnectorhq.com`.
    pub base_url: Url,
    /// Rate budget per location or company.
    pub pacing: PacingConfig,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Timeout of one attempt (connect to end of body). Default 30 s.
    pub timeout: Duration,
    /// `User-Agent` header.
    pub user_agent: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            base_url: Url::parse(PRODUCTION_BASE_URL).expect("the production URL is valid"),
            pacing: PacingConfig::default(),
            retry: RetryConfig::default(),
            timeout: Duration::from_secs(30),
            user_agent: concat!("hlbridge/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// HTTP status (2xx).
    pub status: u16,
    /// The JSON body (`null` when empty; a JSON string when the body was not JSON).
    pub body: Value,
    /// The rate-limit headers of the answer.
    pub rate_limit: Option<RateLimitHeaders>,
    /// The request's traceId, when HighLevel sent one.
    pub trace_id: Option<String>,
}

struct Inner {
    http: reqwest::Client,
    config: ClientConfig,
    pacer: Pacer,
    /// The budget shared with other processes, consulted after the local pacer.
    shared: Option<Arc<dyn SharedBudget>>,
}

/// The HighLevel client. Cheap to clone (shares its connection pool and pacing state).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.config.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client with `config`.
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        Self::build(config, None)
    }

    /// A client with `config` whose requests also take a slot of `budget`, a rate budget
    /// shared with other processes (see [`crate::budget`]). With pacing disabled in
    /// `config`, the shared budget is not consulted either.
    pub fn with_shared_budget(
        config: ClientConfig,
        budget: Arc<dyn SharedBudget>,
    ) -> Result<Client, Error> {
        Self::build(config, Some(budget))
    }

    fn build(config: ClientConfig, shared: Option<Arc<dyn SharedBudget>>) -> Result<Client, Error> {
        if config.base_url.cannot_be_a_base() {
            return Err(Error::InvalidParams {
                operation: "client".into(),
                message: format!("base URL {} cannot have a path", config.base_url),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(config.user_agent.clone())
            .build()
            .map_err(|source| Error::Transport {
                operation: "client".into(),
                source,
            })?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                pacer: Pacer::new(config.pacing.clone()),
                shared: shared.filter(|_| config.pacing.enabled),
                config,
            }),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The pacing key a call would count against: its `locationId`/`location_id`/`companyId`
    /// parameter, else the token's location or company, else [`GLOBAL_KEY`].
    pub fn pacing_key(&self, auth: &Auth, params: &Value) -> String {
        pacing_id(params)
            .or_else(|| auth.source().pacing_key())
            .unwrap_or_else(|| GLOBAL_KEY.to_string())
    }

    /// What is left of a pacing key's budget (burst and daily), if it has been used.
    pub fn budget(&self, key: &str) -> Option<BudgetSnapshot> {
        self.inner.pacer.budget(key)
    }

    /// Calls one operation. `params` is ONE JSON object holding path, query and body params
    /// by name (see [`crate::request`] for the routing). Missing required params give
    /// [`Error::MissingParams`] naming all of them.
    pub async fn call(
        &self,
        auth: &Auth,
        op: &'static Operation,
        params: &Value,
    ) -> Result<Response, Error> {
        let prepared = prepare(&self.inner.config.base_url, op, params)?;
        let key = self.pacing_key(auth, params);
        let span = tracing::info_span!(
            "highlevel.call",
            op = op.id,
            pacing_key = %key,
            attempt = field::Empty,
            status = field::Empty,
        );
        self.execute(auth, op, prepared, key).instrument(span).await
    }

    /// Calls an operation by id; an unknown id gives [`Error::UnknownOperation`] with the
    /// nearest ids.
    pub async fn call_id(
        &self,
        auth: &Auth,
        op_id: &str,
        params: &Value,
    ) -> Result<Response, Error> {
        let op = find_operation(op_id)?;
        self.call(auth, op, params).await
    }

    /// Every item of a list operation as one stream, across pages (see [`crate::paginate`]).
    pub fn paginate(
        &self,
        auth: &Auth,
        op: &'static Operation,
        params: Value,
    ) -> impl Stream<Item = Result<Value, Error>> + Send + 'static {
        paginate::items(self.clone(), auth.clone(), op, params)
    }

    async fn execute(
        &self,
        auth: &Auth,
        op: &'static Operation,
        req: PreparedRequest,
        key: String,
    ) -> Result<Response, Error> {
        let retry = &self.inner.config.retry;
        let max_attempts = retry.max_attempts.max(1);
        let idempotent = op.method.is_idempotent();
        let source = auth.source();
        let span = tracing::Span::current();
        let mut attempt: u32 = 0;
        let mut refreshed = false;
        loop {
            attempt += 1;
            span.record("attempt", attempt);
            let token = source.access_token().await?;
            let permit = self.inner.pacer.acquire(&key).await?;
            let slot = match &self.inner.shared {
                Some(budget) => Some(budget.acquire(&key).await?),
                None => None,
            };

            let mut builder = self
                .inner
                .http
                .request(reqwest_method(op.method), req.url.clone())
                .bearer_auth(&token)
                .header("Version", op.version_header())
                .header(ACCEPT, "application/json");
            if let Some(body) = &req.body {
                builder = builder.json(body);
            }
            tracing::debug!(
                method = op.method.as_str(),
                path = op.path,
                attempt,
                "sending"
            );

            let answer = match builder.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let headers = resp.headers().clone();
                    let rate_limit = RateLimitHeaders::from_headers(&headers);
                    if let (Some(budget), Some(slot)) = (&self.inner.shared, slot) {
                        budget
                            .answered(slot, rate_limit.as_ref(), status == 429)
                            .await;
                    }
                    self.inner
                        .pacer
                        .observe(permit, rate_limit.as_ref(), status == 429);
                    match resp.bytes().await {
                        Ok(bytes) => Ok((status, headers, rate_limit, bytes)),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => {
                    if let (Some(budget), Some(slot)) = (&self.inner.shared, slot) {
                        budget.answered(slot, None, false).await;
                    }
                    drop(permit);
                    Err(e)
                }
            };
            let (status, headers, rate_limit, bytes) = match answer {
                Ok(a) => a,
                Err(source_err) => {
                    if idempotent && attempt < max_attempts {
                        let wait = retry.backoff(attempt - 1);
                        tracing::warn!(
                            attempt,
                            wait_ms = wait.as_millis() as u64,
                            error = %source_err,
                            "transport error; retrying"
                        );
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(Error::Transport {
                        operation: op.id.to_string(),
                        source: source_err,
                    });
                }
            };
            span.record("status", status);

            if (200..300).contains(&status) {
                let body = decode_success(op, &headers, &bytes)?;
                let trace_id = trace_id(&body, &headers);
                return Ok(Response {
                    status,
                    body,
                    rate_limit,
                    trace_id,
                });
            }

            let err = ApiError::from_response(op.id, status, &headers, decode_error(&bytes));
            let server_wait = retry_after(&headers);
            match status {
                401 if !refreshed && source.can_refresh() => {
                    tracing::info!("401; refreshing the token once");
                    refreshed = true;
                    attempt -= 1;
                    source.refresh_after_reject(&token).await?;
                    continue;
                }
                429 => {
                    if rate_limit.as_ref().and_then(|r| r.daily_remaining) == Some(0) {
                        return Err(Error::DailyBudgetExhausted {
                            key,
                            retry_after: server_wait,
                        });
                    }
                    let min_wait = server_wait
                        .into_iter()
                        .chain(rate_limit.as_ref().and_then(RateLimitHeaders::interval))
                        .max()
                        .unwrap_or_default();
                    if attempt >= max_attempts || min_wait > retry.max_delay {
                        return Err(Error::from(err));
                    }
                    let wait = retry.backoff(attempt - 1).max(min_wait);
                    tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, "429; retrying");
                    tokio::time::sleep(wait).await;
                }
                s if is_retryable_status(s) && idempotent && attempt < max_attempts => {
                    let min_wait = server_wait.unwrap_or_default();
                    if min_wait > retry.max_delay {
                        return Err(Error::from(err));
                    }
                    let wait = retry.backoff(attempt - 1).max(min_wait);
                    tracing::warn!(
                        attempt,
                        status = s,
                        wait_ms = wait.as_millis() as u64,
                        "server error; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                _ => return Err(Error::from(err)),
            }
        }
    }
}

/// Looks an operation up by id, suggesting the nearest ids when there is none.
pub fn find_operation(op_id: &str) -> Result<&'static Operation, Error> {
    operations::find(op_id).ok_or_else(|| Error::UnknownOperation {
        id: op_id.to_string(),
        suggestions: operations::suggest(op_id, 3)
            .into_iter()
            .map(str::to_string)
            .collect(),
    })
}

fn reqwest_method(m: Method) -> reqwest::Method {
    match m {
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        Method::Patch => reqwest::Method::PATCH,
        Method::Delete => reqwest::Method::DELETE,
    }
}

fn decode_success(op: &Operation, headers: &HeaderMap, bytes: &[u8]) -> Result<Value, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(e) => {
            let is_json = headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.contains("json"));
            if is_json {
                Err(Error::Decode {
                    operation: op.id.to_string(),
                    message: format!("invalid JSON: {e}"),
                })
            } else {
                Ok(Value::String(String::from_utf8_lossy(bytes).into_owned()))
            }
        }
    }
}

fn decode_error(bytes: &[u8]) -> Value {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(truncate(&String::from_utf8_lossy(bytes), 4096)))
}
