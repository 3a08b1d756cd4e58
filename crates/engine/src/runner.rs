//! The runner: workers claim due runs under a lease and execute their flow's steps.
//!
//! - Steps run in order; each one's input, output or error is saved, and a resumed run
//!   (after a crash, a lapsed lease or a retry) skips the steps that already succeeded. A
//!   step's result is saved before the next step starts, and the last step's result in the
//!   same write that ends the run ([`Store::finish_run`](crate::store::Store::finish_run)),
//!   so a one-step run costs the store one write after its claim.
//! - A `filter` (the flow's or a step) that is false ends the run as `skipped`; inside a
//!   `for_each` it skips the current element only.
//! - A transient failure (network, 429, 5xx) is retried with exponential backoff and full
//!   jitter (at least the server's `Retry-After`) until the flow's `max_attempts`; then,
//!   or at once for an error that cannot succeed (400, 401, 403, 404, 422, template
//!   errors), the run goes to dead letters with the response body. A HighLevel create or
//!   send ([`Operation::repeatable`](hlbridge_highlevel::Operation::repeatable) is false)
//!   that fails after it was sent (5xx, timeout) may have happened: it goes to dead letters
//!   at once as "outcome unknown" instead of being repeated, so nothing is done twice. The
//!   same holds when a worker dies (crash, lost lease) while on such a step: the run taken
//!   over is resumed at its first step without a saved result, and that step, if it is a
//!   create or a send, is not repeated blindly but ends the run as "outcome unknown".
//! - Shutdown: workers stop claiming; a run in flight finishes its current step, then is
//!   released (back to `queued`, its saved steps kept) unless it has finished.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use rand::Rng;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::StepError;
use crate::engine::Engine;
use crate::flow::RetryPolicy;
use crate::store::{ClaimedRun, Failure, RunEnd, RunState, StepRecord, now};
use crate::template::{self, Mapping};
use crate::validate::{CompiledFlow, CompiledStep};

/// The delay before retry number `attempt` (1 = the first retry): a uniformly random
/// duration up to `base × 2^(attempt-1)` capped at `max` ("full jitter"), and never less
/// than `retry_after`.
pub fn backoff(policy: &RetryPolicy, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = attempt.saturating_sub(1).min(40);
    let ceiling = policy
        .base_delay_ms
        .saturating_mul(1u64 << exp)
        .min(policy.max_delay_ms)
        .max(1);
    let jittered = Duration::from_millis(rand::rng().random_range(0..=ceiling));
    jittered.max(retry_after.unwrap_or_default())
}

/// On a run taken over from a worker that stopped, the first step without a saved result is
/// the one that worker was on. If it is a HighLevel create or send, it may have happened:
/// the run ends as "outcome unknown" rather than doing it a second time.
fn in_doubt(
    run: &ClaimedRun,
    resume: &Resume,
    step: &CompiledStep,
    key: &str,
) -> Option<StepError> {
    if !run.taken_over || matches!(step, CompiledStep::ForEach { .. }) {
        // A for-each is not a call: the step in flight is inside it.
        return None;
    }
    if resume.reached_unsaved.swap(true, Ordering::Relaxed) {
        // An earlier step of this attempt was the first without a result.
        return None;
    }
    match step {
        CompiledStep::Highlevel { op, .. } if !op.repeatable() => {
            Some(StepError::permanent(format!(
                "outcome unknown: the worker running step `{key}` ({}) stopped before its \
                 result was saved; HighLevel may have carried it out, so it is not repeated \
                 automatically (that could do it twice). Check HighLevel; if it did not \
                 happen, replay the run with `hlbridge replay <run> --resume`",
                op.id
            )))
        }
        _ => None,
    }
}

/// What an attempt resumes from.
struct Resume {
    /// Steps that succeeded in earlier attempts (skipped, their outputs reused).
    done: HashMap<String, StepRecord>,
    /// Set when this attempt reaches its first step without a saved success: on a run taken
    /// over from a stopped worker, only that step can have been in flight.
    reached_unsaved: AtomicBool,
}

/// Why step execution stopped early.
enum Stop {
    /// A filter was false: the run is skipped.
    Skip,
    /// Shutdown: give the run back.
    Release,
    /// A step failed.
    Fail(StepError),
}

impl From<StepError> for Stop {
    fn from(e: StepError) -> Self {
        Stop::Fail(e)
    }
}

fn store_error(e: crate::store::StoreError) -> Stop {
    Stop::Fail(StepError::transient(format!("store: {e}")))
}

/// Renders a mapping to a string (non-strings are written as JSON).
fn render_string(
    m: &Mapping,
    flow: &CompiledFlow,
    ctx: &minijinja::Value,
) -> Result<String, StepError> {
    Ok(match m.render(&flow.templates, ctx)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

impl Engine {
    /// Runs one worker until `shutdown` is cancelled: claims due runs (up to
    /// `claim_batch` at a time, executed concurrently) and executes them.
    pub async fn run_worker(&self, worker_id: &str, shutdown: CancellationToken) {
        let cfg = &self.inner.config;
        // Enqueues by other processes sharing the store (PostgreSQL `LISTEN`).
        let remote_wake = self.inner.store.wakeups();
        while !shutdown.is_cancelled() {
            let wake = self.inner.wake.notified();
            let remote = remote_wake.as_ref().map(|n| n.notified());
            let runs = match self
                .inner
                .store
                .claim_runs(worker_id, cfg.claim_batch, cfg.lease)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(worker = worker_id, error = %e, "claiming runs failed");
                    Vec::new()
                }
            };
            if runs.is_empty() {
                tokio::select! {
                    _ = wake => {}
                    _ = async {
                        match remote {
                            Some(r) => r.await,
                            None => std::future::pending().await,
                        }
                    } => {}
                    _ = tokio::time::sleep(cfg.idle_poll) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            futures::stream::iter(runs)
                .for_each_concurrent(None, |run| self.execute(run, &shutdown))
                .await;
        }
    }

    /// Spawns `config.workers` workers on the current runtime; they stop when `shutdown` is
    /// cancelled (await the handles to wait for in-flight runs to finish or be released).
    pub fn spawn_workers(&self, shutdown: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.inner.config.workers.max(1))
            .map(|i| {
                let engine = self.clone();
                let shutdown = shutdown.clone();
                let id = format!("{}-{i}", self.inner.config.worker_name);
                tokio::spawn(async move { engine.run_worker(&id, shutdown).await })
            })
            .collect()
    }

    /// Executes a claimed run to its next state, renewing its lease meanwhile.
    pub(crate) async fn execute(&self, run: ClaimedRun, shutdown: &CancellationToken) {
        let store = &self.inner.store;
        let lease = self.inner.config.lease;
        let Some(flow) = self.flow(&run.flow_id) else {
            let err = StepError::transient(format!(
                "flow `{}` is not loaded in this process",
                run.flow_id
            ));
            self.finish_failed(&run, &RetryPolicy::default(), err, Vec::new())
                .await;
            return;
        };
        // A flow whose HighLevel connection is broken is paused: its runs wait.
        if let Some(reason) = self.paused_by(&flow, false).await {
            self.defer_paused(&run, &[], &reason).await;
            return;
        }
        // Step results not saved yet: written before the next step starts, or with the
        // run's end.
        let mut pending = Vec::new();
        let renew = async {
            loop {
                tokio::time::sleep(lease / 3).await;
                match store.renew_lease(&run, lease).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => tracing::warn!(run = %run.id, error = %e, "lease renewal failed"),
                }
            }
        };
        let outcome = tokio::select! {
            o = self.run_steps(&flow, &run, shutdown, &mut pending) => Some(o),
            () = renew => None,
        };
        let end = match outcome {
            None => {
                tracing::warn!(run = %run.id, "lease lost; another worker owns the run now");
                return;
            }
            Some(Ok(())) => RunEnd::Complete(RunState::Succeeded),
            Some(Err(Stop::Skip)) => RunEnd::Complete(RunState::Skipped),
            Some(Err(Stop::Release)) => RunEnd::Release,
            Some(Err(Stop::Fail(e))) => {
                if let Some(reason) = self.paused_by(&flow, true).await {
                    self.defer_paused(&run, &pending, &reason).await;
                    return;
                }
                self.finish_failed(&run, &flow.flow.retry, e, pending).await;
                return;
            }
        };
        let result = store.finish_run(&run, &pending, end).await;
        match result {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(run = %run.id, "run was claimed by another worker before it finished")
            }
            Err(e) => tracing::error!(run = %run.id, error = %e, "saving the run's state failed"),
        }
    }

    async fn finish_failed(
        &self,
        run: &ClaimedRun,
        policy: &RetryPolicy,
        e: StepError,
        steps: Vec<StepRecord>,
    ) {
        let failure = if e.is_transient() && run.attempts < policy.max_attempts {
            let delay = backoff(policy, run.attempts, e.retry_after);
            Failure::RetryAt(now() + delay)
        } else {
            Failure::Dead
        };
        let message = match e.status {
            Some(s) => format!("{} (HTTP {s})", e.message),
            None => e.message.clone(),
        };
        tracing::info!(run = %run.id, flow = %run.flow_id, attempt = run.attempts, ?failure, error = %message, "run failed");
        let end = RunEnd::Fail {
            error: message,
            body: e.body,
            failure,
        };
        if let Err(err) = self.inner.store.finish_run(run, &steps, end).await {
            tracing::error!(run = %run.id, error = %err, "saving the failure failed");
        }
    }

    async fn run_steps(
        &self,
        flow: &CompiledFlow,
        run: &ClaimedRun,
        shutdown: &CancellationToken,
        pending: &mut Vec<StepRecord>,
    ) -> Result<(), Stop> {
        let done = Resume {
            done: run
                .steps
                .iter()
                .filter(|r| r.succeeded())
                .map(|r| (r.step_id.clone(), r.clone()))
                .collect(),
            reached_unsaved: AtomicBool::new(false),
        };
        let def = &flow.flow;
        let received = run
            .received_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut ctx = json!({
            "event": run.payload,
            "trigger": {
                "type": def.trigger.kind(),
                "flow": def.id,
                "dedupe_key": run.dedupe_key,
                "received_at": received,
                "attempt": run.attempts,
            },
            "flow": {
                "id": def.id,
                "name": def.name,
                "connection": def.connection,
                "location_id": Value::Null,
            },
            "steps": {},
        });
        if let Some(loc) = &flow.location_id {
            let rendered = render_string(loc, flow, &template::context(&ctx))?;
            ctx["flow"]["location_id"] = Value::String(rendered);
        }
        if let Some(filter) = &flow.filter {
            let v = filter
                .render(&flow.templates, &template::context(&ctx))
                .map_err(StepError::from)?;
            if !template::truthy(&v) {
                return Err(Stop::Skip);
            }
        }
        self.run_list(
            flow,
            run,
            &flow.steps,
            String::new(),
            &mut ctx,
            &done,
            shutdown,
            pending,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    fn run_list<'a>(
        &'a self,
        flow: &'a CompiledFlow,
        run: &'a ClaimedRun,
        steps: &'a [CompiledStep],
        prefix: String,
        ctx: &'a mut Value,
        done: &'a Resume,
        shutdown: &'a CancellationToken,
        pending: &'a mut Vec<StepRecord>,
    ) -> BoxFuture<'a, Result<(), Stop>> {
        Box::pin(async move {
            for step in steps {
                let key = format!("{prefix}{}", step.id());
                if let Some(rec) = done.done.get(&key) {
                    ctx["steps"][step.id()] = rec.output.clone().unwrap_or(Value::Null);
                    continue;
                }
                if shutdown.is_cancelled() {
                    return Err(Stop::Release);
                }
                // The results so far are durable before this step does anything.
                for record in pending.iter() {
                    self.inner
                        .store
                        .save_step_result(run.id, record)
                        .await
                        .map_err(store_error)?;
                }
                pending.clear();
                let started_at = now();
                let mut input = None;
                let result = match in_doubt(run, done, step, &key) {
                    Some(e) => Err(Stop::Fail(e)),
                    None => {
                        self.run_step(
                            flow, run, step, &key, ctx, done, shutdown, &mut input, pending,
                        )
                        .await
                    }
                };
                let (output, error, stop) = match result {
                    Ok((output, stop)) => (Some(output), None, stop),
                    Err(Stop::Fail(e)) => {
                        let v = serde_json::to_value(&e).unwrap_or(Value::Null);
                        (None, Some(v), Some(Stop::Fail(e)))
                    }
                    Err(other) => return Err(other),
                };
                pending.push(StepRecord {
                    step_id: key,
                    input,
                    output: output.clone(),
                    error,
                    started_at,
                    finished_at: Some(now()),
                });
                if let Some(stop) = stop {
                    return Err(stop);
                }
                ctx["steps"][step.id()] = output.unwrap_or(Value::Null);
            }
            Ok(())
        })
    }

    /// Runs one step: its output, and whether the run stops after it (a false filter).
    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        flow: &CompiledFlow,
        run: &ClaimedRun,
        step: &CompiledStep,
        key: &str,
        ctx: &mut Value,
        done: &Resume,
        shutdown: &CancellationToken,
        input: &mut Option<Value>,
        pending: &mut Vec<StepRecord>,
    ) -> Result<(Value, Option<Stop>), Stop> {
        let mj = template::context(ctx);
        let location = ctx["flow"]["location_id"].as_str().map(str::to_owned);
        let def = &flow.flow;
        match step {
            CompiledStep::Highlevel {
                op,
                connection,
                params,
                custom,
                ..
            } => {
                let mut params = match params
                    .render(&flow.templates, &mj)
                    .map_err(StepError::from)?
                {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                if op.param("locationId").is_some()
                    && !params.contains_key("locationId")
                    && let Some(loc) = &location
                {
                    params.insert("locationId".into(), Value::String(loc.clone()));
                }
                let conn = connection.as_deref().unwrap_or(&def.connection);
                if !custom.is_empty() {
                    let loc = params
                        .get("locationId")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .or(location)
                        .ok_or_else(|| {
                            StepError::permanent(
                                "custom fields by name need the flow's `location_id`",
                            )
                        })?;
                    let mut pairs = Vec::with_capacity(custom.len());
                    for (name, m) in custom {
                        pairs.push((
                            name.clone(),
                            m.render(&flow.templates, &mj).map_err(StepError::from)?,
                        ));
                    }
                    let resolved = template::custom_fields_param(
                        self.inner.custom_fields.as_ref(),
                        conn,
                        &loc,
                        pairs,
                    )
                    .await?;
                    match params.get_mut("customFields") {
                        Some(Value::Array(existing)) => {
                            if let Value::Array(more) = resolved {
                                existing.extend(more);
                            }
                        }
                        _ => {
                            params.insert("customFields".into(), resolved);
                        }
                    }
                }
                let params = Value::Object(params);
                *input = Some(params.clone());
                let out = self.inner.highlevel.call(conn, op, params).await?;
                Ok((out, None))
            }
            CompiledStep::FindContact {
                email,
                phone,
                required,
                ..
            } => {
                let op = hlbridge_highlevel::operations::find("contacts.find_duplicate")
                    .ok_or_else(|| {
                        StepError::permanent("operation contacts.find_duplicate is missing")
                    })?;
                let mut params = Map::new();
                if let Some(loc) = location {
                    params.insert("locationId".into(), Value::String(loc));
                }
                if let Some(e) = email {
                    let e = render_string(e, flow, &mj)?;
                    if !e.is_empty() {
                        params.insert("email".into(), Value::String(e));
                    }
                }
                if let Some(p) = phone {
                    let p = render_string(p, flow, &mj)?;
                    if !p.is_empty() {
                        params.insert("number".into(), Value::String(p));
                    }
                }
                let params = Value::Object(params);
                *input = Some(params.clone());
                let contact = if params.get("email").is_none() && params.get("number").is_none() {
                    Value::Null
                } else {
                    let body = self
                        .inner
                        .highlevel
                        .call(&def.connection, op, params)
                        .await?;
                    body.get("contact").cloned().unwrap_or(Value::Null)
                };
                let stop = (*required && contact.is_null()).then_some(Stop::Skip);
                Ok((contact, stop))
            }
            CompiledStep::Filter { condition, .. } => {
                let v = condition
                    .render(&flow.templates, &mj)
                    .map_err(StepError::from)?;
                let passed = template::truthy(&v);
                Ok((json!({ "passed": passed }), (!passed).then_some(Stop::Skip)))
            }
            CompiledStep::Http {
                method,
                url,
                headers,
                body,
                connection,
                ..
            } => {
                let out = self
                    .http_step(
                        flow,
                        &mj,
                        *method,
                        url,
                        headers,
                        body.as_ref(),
                        connection.as_deref(),
                        &format!("{}:{key}", run.dedupe_key),
                        input,
                    )
                    .await?;
                Ok((out, None))
            }
            CompiledStep::ForEach { items, steps, .. } => {
                let items = match items
                    .render(&flow.templates, &mj)
                    .map_err(StepError::from)?
                {
                    Value::Array(a) => a,
                    Value::Null => Vec::new(),
                    other => {
                        return Err(StepError::permanent(format!(
                            "for_each items must be a list, got {}",
                            match other {
                                Value::Object(_) => "an object",
                                Value::String(_) => "a string",
                                _ => "a scalar",
                            }
                        ))
                        .into());
                    }
                };
                *input = Some(json!({ "count": items.len() }));
                let mut outputs = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let mut inner = ctx.clone();
                    inner["item"] = item;
                    inner["index"] = json!(i);
                    let prefix = format!("{key}[{i}].");
                    match self
                        .run_list(
                            flow, run, steps, prefix, &mut inner, done, shutdown, pending,
                        )
                        .await
                    {
                        Ok(()) | Err(Stop::Skip) => {}
                        Err(other) => return Err(other),
                    }
                    let mut out = Map::new();
                    for s in steps {
                        out.insert(s.id().to_owned(), inner["steps"][s.id()].clone());
                    }
                    outputs.push(Value::Object(out));
                }
                Ok((Value::Array(outputs), None))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn http_step(
        &self,
        flow: &CompiledFlow,
        mj: &minijinja::Value,
        method: crate::flow::HttpMethod,
        url: &Mapping,
        headers: &Mapping,
        body: Option<&Mapping>,
        connection: Option<&str>,
        idempotency_key: &str,
        input: &mut Option<Value>,
    ) -> Result<Value, StepError> {
        let raw_url = render_string(url, flow, mj)?;
        let conn = match connection {
            Some(name) => Some(self.inner.config.app_connections.get(name).ok_or_else(|| {
                StepError::permanent(format!("app connection `{name}` is not configured"))
            })?),
            None => None,
        };
        let url = match conn.and_then(|c| c.base_url.as_deref()) {
            Some(base) => url::Url::parse(base).and_then(|b| b.join(&raw_url)),
            None => url::Url::parse(&raw_url),
        }
        .map_err(|e| StepError::permanent(format!("invalid URL {raw_url:?}: {e}")))?;
        crate::net::check_url(self.inner.config.network, &url)
            .await
            .map_err(StepError::permanent)?;
        let headers = match headers.render(&flow.templates, mj)? {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let body = body.map(|b| b.render(&flow.templates, mj)).transpose()?;
        *input = Some(json!({
            "method": method.as_str(),
            "url": url.as_str(),
            "headers": headers,
            "body": body,
        }));
        let m = reqwest::Method::from_bytes(method.as_str().as_bytes())
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let mut req = self.inner.http.request(m, url.clone());
        for (k, v) in &headers {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            req = req.header(k.as_str(), v);
        }
        if let Some(c) = conn {
            for (k, v) in &c.headers {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        // Every attempt at this step for this event carries the same key (the event's dedupe
        // key and the step), retries and replays alike, so an app that honours
        // `Idempotency-Key` (as Stripe-style APIs do) applies it once. A flow can set its own.
        let changes = matches!(method.as_str(), "POST" | "PATCH" | "PUT");
        if changes
            && !headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case("idempotency-key"))
        {
            req = req.header("Idempotency-Key", idempotency_key);
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            let msg = format!("{} {url}: {e}", method.as_str());
            if e.is_builder() {
                StepError::permanent(msg)
            } else {
                StepError::transient(msg)
            }
        })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp
            .text()
            .await
            .map_err(|e| StepError::transient(format!("reading the response of {url}: {e}")))?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !(200..300).contains(&status) {
            return Err(StepError::http(
                status,
                format!("{} {url} returned {status}", method.as_str()),
                Some(body),
            )
            .with_retry_after(retry_after));
        }
        Ok(json!({ "status": status, "body": body }))
    }
}

/// Cancels `token` on Ctrl-C (SIGINT) or SIGTERM. A convenience for binaries.
pub fn cancel_on_signal(token: CancellationToken) -> tokio::task::JoinHandle<()> {
    let token = Arc::new(token);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        token.cancel();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 8,
            base_delay_ms: 100,
            max_delay_ms: 1_000,
        };
        for attempt in 1..20 {
            let d = backoff(&p, attempt, None);
            assert!(d <= Duration::from_millis(1_000), "{attempt}: {d:?}");
            let cap = 100u64.saturating_mul(1 << (attempt - 1).min(40)).min(1000);
            assert!(d <= Duration::from_millis(cap));
        }
        assert!(backoff(&p, 1, Some(Duration::from_secs(5))) >= Duration::from_secs(5));
    }
}
