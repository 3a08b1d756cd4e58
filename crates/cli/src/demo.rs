//! `hlbridge demo`: everything on loopback, nothing to configure. Starts the HighLevel
//! sandbox (seeded with a demo location), the engine with the six ready templates pointed
//! at it, the hlbridge server, and a stand-in "EcoSend" app; plays a scripted scenario in
//! both directions; prints the runs and what changed on each side; then keeps serving
//! until Ctrl-C (or, with `--once`, exits: status 0 only if every expected change
//! happened).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use hlbridge_engine::validate::compile_source;
use hlbridge_engine::{
    AppConnection, ClientApi, Connection, Engine, EngineConfig, HighLevelApi, RunDetail, RunFilter,
    RunState,
};
use hlbridge_highlevel::{Auth, Client, ClientConfig, Url};
use hlbridge_sandbox::handlers::Event;
use hlbridge_sandbox::{Sandbox, SandboxConfig};
use hlbridge_server::{RunningServer, ServeConfig, ServerError};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::flows::app::{Received, Sender, StandInApp};
use crate::flows::millis;
use crate::flows::templates::TEMPLATES;

/// Options of `hlbridge demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Port of the hlbridge server (0 picks a free one; a busy port falls back to a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Play the scenario, print the results and exit: status 0 only if every expected
    /// change happened.
    #[arg(long)]
    once: bool,
    /// Data directory of the engine's store (default: a new temporary directory, so the
    /// demo never mixes with your own runs).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

const CONNECTION: &str = "default";
/// Event type of the marker sent through the sandbox's webhook queue to know that every
/// webhook queued before it was delivered.
const SYNC_EVENT: &str = "HlbridgeDemoSync";

/// One expected change and whether it happened.
struct Check {
    what: String,
    ok: bool,
    detail: String,
}

/// Contacts of the scenario, picked from the seeded location.
struct Cast {
    tag_add: Value,
    tag_remove: (Value, String),
    task: Value,
    updated: Value,
    noted: Value,
    backfilled: Value,
    reminded: Value,
}

struct Demo {
    sandbox: Sandbox,
    app: StandInApp,
    engine: Engine,
    server: Option<RunningServer>,
    api: Arc<dyn HighLevelApi>,
    http: reqwest::Client,
    data_dir: PathBuf,
    run_id: String,
    /// When the demo started: runs older than this (an earlier demo with the same
    /// `--data`) are not shown.
    since: OffsetDateTime,
    /// The password of the web UI's `demo` user (`None`: it could not be created).
    ui_password: Option<String>,
}

/// Creates (or resets) the web UI's `demo` owner with a fresh password.
async fn demo_user(engine: &Engine) -> Option<String> {
    use hlbridge_engine::security::{Actor, Role, Secret};
    let users = engine.security()?.users().clone();
    let password = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let secret = Secret::new(password.clone());
    let by = Actor::system("demo");
    let made = match users
        .add_user("demo", Role::Owner, Some(&secret), &by)
        .await
    {
        Ok(_) => Ok(()),
        Err(_) => users.set_password("demo", &secret, &by).await,
    };
    match made {
        Ok(()) => Some(password),
        Err(e) => {
            eprintln!("warning: could not create the web UI user: {e}");
            None
        }
    }
}

fn email(c: &Value) -> String {
    c["email"].as_str().unwrap_or("?").to_owned()
}

fn tags_of(c: &Value) -> BTreeSet<String> {
    c["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn now_text() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Runs `hlbridge demo`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("hlbridge demo: HighLevel ⇄ hlbridge ⇄ an app, all on this machine.");
    println!(
        "Nothing here touches a real HighLevel account: a local HighLevel sandbox stands in for it,"
    );
    println!("and a small local app plays EcoSend, the email tool being kept in sync.\n");

    let mut demo = Demo::start(&args).await?;
    let result = demo.play().await;
    let checks = match result {
        Ok(c) => c,
        Err(e) => {
            demo.stop().await;
            return Err(e);
        }
    };
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
    println!(
        "\n{} of {} expected changes happened ({:.1} s).",
        checks.len() - failed.len(),
        checks.len(),
        started.elapsed().as_secs_f64()
    );
    if args.once {
        demo.stop().await;
        if failed.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = failed
            .iter()
            .map(|c| format!("  ✗ {}: {}", c.what, c.detail))
            .collect();
        bail!(
            "{} expected change(s) did not happen:\n{}",
            failed.len(),
            list.join("\n")
        );
    }
    demo.keep_serving().await;
    demo.stop().await;
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{} expected change(s) did not happen", failed.len())
    }
}

impl Demo {
    async fn start(args: &DemoArgs) -> anyhow::Result<Demo> {
        let since = OffsetDateTime::now_utc();
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let sandbox = Sandbox::start(SandboxConfig {
            seed_demo: true,
            ..SandboxConfig::for_tests()
        })
        .await
        .context("starting the HighLevel sandbox")?;
        let info = sandbox.info();

        let app_token = format!("ecosend-{}", uuid::Uuid::new_v4().simple());
        let app_secret = format!("whsec-{}", uuid::Uuid::new_v4().simple());
        let app = StandInApp::start(loopback, Some(app_token.clone()))
            .await
            .context("starting the stand-in EcoSend app")?;

        let data_dir = args
            .data
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("hlbridge-demo-{run_id}")));
        let mut config = EngineConfig::with_data_dir(&data_dir);
        config.workers = 2;
        config.idle_poll = Duration::from_millis(100);
        config.network.allow_loopback = true;
        config
            .app_secrets
            .insert("ecosend".into(), app_secret.clone());
        config.app_connections.insert(
            "ecosend".into(),
            AppConnection {
                base_url: Some(app.url.clone()),
                headers: [("Authorization".to_owned(), format!("Bearer {app_token}"))].into(),
            },
        );
        config.highlevel_webhook_keys = vec![info.webhook_public_keys.ed25519.clone()];
        let client = Client::new(ClientConfig {
            base_url: Url::parse(&info.base_url)?,
            ..ClientConfig::default()
        })
        .map_err(|e| anyhow!("HighLevel client: {e}"))?;
        let conns = [(
            CONNECTION.to_owned(),
            Connection {
                auth: Auth::token_for(info.token.clone(), info.location_id.clone()),
                location_id: Some(info.location_id.clone()),
            },
        )]
        .into();
        // Observed, so the web UI's dashboard and /metrics show calls and budgets.
        let client_api = ClientApi::new(client, conns);
        let telemetry = hlbridge_server::Telemetry::new();
        let api: Arc<dyn HighLevelApi> =
            telemetry.api(Arc::new(client_api.clone()), Some(client_api));
        let engine = Engine::open_with(config, api.clone())
            .await
            .with_context(|| format!("opening the store in {}", data_dir.display()))?;
        let ui_password = demo_user(&engine).await;
        let mut flows = Vec::new();
        for t in TEMPLATES {
            let f =
                compile_source(&t.path(), t.source, &engine.validation_context()).map_err(|d| {
                    anyhow!(
                        "{}",
                        d.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                })?;
            flows.push(f);
        }
        engine.add_flows(flows).await?;
        // The backfill's first poll only records where the account stands.
        for f in engine.flows() {
            if let hlbridge_engine::flow::Trigger::HighlevelWebhook(w) = &f.flow.trigger
                && w.backfill.is_some()
            {
                engine.poll_once(f.id()).await?;
            }
        }

        let serve_config = |port: u16| ServeConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], port)),
            lookup_connection: CONNECTION.into(),
            lookup_location_id: Some(info.location_id.clone()),
            highlevel: Some(api.clone()),
            shutdown_grace: Duration::from_secs(5),
            flows_dir: Some(data_dir.join("flows")),
            telemetry: Some(telemetry.clone()),
            ..ServeConfig::default()
        };
        let server = match hlbridge_server::serve(
            engine.clone(),
            serve_config(args.port),
            CancellationToken::new(),
        )
        .await
        {
            Ok(s) => s,
            Err(ServerError::Bind { addr, source }) if args.port != 0 => {
                println!(
                    "(port {} is busy: {source}; using a free port instead)",
                    addr.port()
                );
                hlbridge_server::serve(engine.clone(), serve_config(0), CancellationToken::new())
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        app.set_sender(Sender {
            server_url: server.base_url.clone(),
            secret: app_secret,
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let demo = Demo {
            sandbox,
            app,
            engine,
            server: Some(server),
            api,
            http,
            data_dir,
            run_id,
            since,
            ui_password,
        };
        // Like registering a webhook URL in HighLevel's marketplace app settings.
        let hook = format!("{}/hooks/highlevel", demo.server_url());
        demo.sandbox_admin("POST", "webhooks", json!({ "url": hook }))
            .await?;
        demo.print_setup();
        Ok(demo)
    }

    fn server_url(&self) -> String {
        self.server
            .as_ref()
            .map(|s| s.base_url.clone())
            .unwrap_or_default()
    }

    fn print_setup(&self) {
        let info = self.sandbox.info();
        let contacts = self.sandbox.shared().docs.read().iter("contact").count();
        println!("Started:");
        println!(
            "  HighLevel sandbox   {}   a fake HighLevel account with {contacts} contacts, tasks and notes",
            info.base_url
        );
        println!(
            "  hlbridge server     {}   receives HighLevel's webhooks and the app's events",
            self.server_url()
        );
        println!(
            "  EcoSend (stand-in)  {}   records every call hlbridge makes to it",
            self.app.url
        );
        println!("  run history         {}", self.data_dir.display());
        if let Some(pw) = &self.ui_password {
            println!(
                "  web UI              {}/   sign in as demo / {pw}",
                self.server_url()
            );
        }
        println!(
            "\nThe sandbox sends its signed webhooks to {}/hooks/highlevel, as HighLevel would.",
            self.server_url()
        );
        println!(
            "\nLoaded the {} ready flows of flows/templates/:",
            TEMPLATES.len()
        );
        for f in self.engine.flows() {
            println!(
                "  {:<18} {}",
                f.id(),
                f.flow.description.as_deref().unwrap_or_default()
            );
        }
    }

    async fn sandbox_admin(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let info = self.sandbox.info();
        let url = format!("{}/{path}", info.admin_url);
        let m = reqwest::Method::from_bytes(method.as_bytes())?;
        let resp = self
            .http
            .request(m, &url)
            .bearer_auth(&info.admin_token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {url}: {status} {answer}");
        }
        Ok(answer)
    }

    /// A HighLevel call through the client, as someone working in HighLevel would cause.
    async fn highlevel(&self, op: &str, params: Value) -> anyhow::Result<Value> {
        let operation = hlbridge_highlevel::operations::find(op)
            .ok_or_else(|| anyhow!("unknown operation {op}"))?;
        self.api
            .call(CONNECTION, operation, params)
            .await
            .map_err(|e| anyhow!("{op}: {e}"))
    }

    async fn app_event(
        &self,
        n: usize,
        what: &str,
        flow: &str,
        event: Value,
    ) -> anyhow::Result<()> {
        let (status, answer) = self.app.send_event(flow, &event).await?;
        let outcome = match status {
            202 => "run queued".to_owned(),
            200 => "duplicate, ignored".to_owned(),
            s => format!("refused: {answer}  ({s})"),
        };
        println!("  {n:>2}. {what}");
        println!("      EcoSend → POST /hooks/app/{flow} → {status} {outcome}");
        if !(200..300).contains(&status) {
            bail!("the server refused the app event ({status}): {answer}");
        }
        Ok(())
    }

    /// Contacts of the seeded location, oldest first.
    fn contacts(&self) -> Vec<Value> {
        let loc = self.sandbox.info().location_id;
        let docs = self.sandbox.shared().docs.read();
        let mut v: Vec<Value> = docs
            .iter("contact")
            .filter(|(_, d)| d.location_id.as_deref() == Some(loc.as_str()))
            .map(|(_, d)| (*d.body).clone())
            .filter(|c| c["email"].is_string())
            .collect();
        v.sort_by_key(|c| {
            (
                c["dateAdded"].as_str().unwrap_or_default().to_owned(),
                email(c),
            )
        });
        v
    }

    fn cast(&self) -> anyhow::Result<Cast> {
        let all = self.contacts();
        let mut pool = all.iter();
        let mut next = |pred: &dyn Fn(&Value) -> bool| -> anyhow::Result<Value> {
            pool.find(|c| pred(c))
                .cloned()
                .context("the seeded location has too few contacts for the demo")
        };
        let tag_add = next(&|c| !tags_of(c).contains("vip"))?;
        let remove = next(&|c| !tags_of(c).is_empty())?;
        let tag = tags_of(&remove).into_iter().next().unwrap_or_default();
        Ok(Cast {
            tag_add,
            tag_remove: (remove, tag),
            task: next(&|_| true)?,
            updated: next(&|_| true)?,
            noted: next(&|_| true)?,
            backfilled: next(&|_| true)?,
            reminded: next(&|_| true)?,
        })
    }

    /// Plays the scenario; returns the expected changes and whether each happened.
    async fn play(&mut self) -> anyhow::Result<Vec<Check>> {
        let cast = self.cast()?;
        let before = Snapshot::take(&self.sandbox);
        let received_before = self.app.received().len();
        let id = |n: u32| format!("evt-{}-{n}", self.run_id);
        let task_ref = format!("ES-{}", &self.run_id[..4]);
        let today = OffsetDateTime::now_utc();
        let date = |d: OffsetDateTime, hour: u8| {
            format!(
                "{:04}-{:02}-{:02}T{hour:02}:00:00Z",
                d.year(),
                u8::from(d.month()),
                d.day()
            )
        };
        let t0 = Instant::now();

        println!("\nScenario, part 1: changes made in EcoSend reach HighLevel");
        self.app_event(
            1,
            &format!("tag \"vip\" added to {} in EcoSend", email(&cast.tag_add)),
            "tag-segmentation",
            json!({ "id": id(1), "type": "tag.added", "email": email(&cast.tag_add), "tag": "vip" }),
        )
        .await?;
        let (removed_from, removed_tag) = &cast.tag_remove;
        self.app_event(
            2,
            &format!("tag \"{removed_tag}\" removed from {} in EcoSend", email(removed_from)),
            "tag-segmentation",
            json!({ "id": id(2), "type": "tag.removed", "email": email(removed_from), "tag": removed_tag }),
        )
        .await?;
        self.app_event(
            3,
            &format!(
                "task \"Send the spring catalogue\" created for {} in EcoSend",
                email(&cast.task)
            ),
            "task-updates",
            json!({ "id": id(3), "type": "task.created", "email": email(&cast.task),
                    "task": { "id": task_ref, "title": "Send the spring catalogue",
                              "body": "Asked for the printed catalogue.",
                              "dueDate": date(today + time::Duration::days(2), 9) } }),
        )
        .await?;

        println!("\nScenario, part 2: changes made in HighLevel reach EcoSend");
        let updated_id = cast.updated["id"].as_str().unwrap_or_default().to_owned();
        self.highlevel(
            "contacts.update",
            json!({ "contactId": updated_id, "city": "Denver" }),
        )
        .await?;
        println!(
            "   4. {} moved to Denver (contact updated in HighLevel)",
            email(&cast.updated)
        );
        println!("      HighLevel → signed ContactUpdate webhook → POST /hooks/highlevel");
        let noted_id = cast.noted["id"].as_str().unwrap_or_default().to_owned();
        let note_body = "Called: wants the annual plan.";
        self.highlevel(
            "contacts.notes.create",
            json!({ "contactId": noted_id, "body": note_body }),
        )
        .await?;
        println!(
            "   5. note \"{note_body}\" added to {} in HighLevel",
            email(&cast.noted)
        );
        println!("      HighLevel → signed NoteCreate webhook → POST /hooks/highlevel");
        let reminded_id = cast.reminded["id"].as_str().unwrap_or_default().to_owned();
        let reminder = self
            .highlevel(
                "contacts.tasks.create",
                json!({ "contactId": reminded_id, "title": "Renewal call",
                        "dueDate": date(today, 17), "completed": false }),
            )
            .await?;
        let reminder_task = reminder["task"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        println!(
            "   6. task \"Renewal call\" due today created for {} in HighLevel",
            email(&cast.reminded)
        );
        println!(
            "      HighLevel → signed TaskCreate webhook → POST /hooks/highlevel (its reminder comes in step 9)"
        );
        waiting();
        let n1 = self.settle().await?;
        println!(" {n1} runs done ({:.1} s)", t0.elapsed().as_secs_f64());

        println!("\nScenario, part 3: follow-ups, a lost webhook, and the morning reminders");
        self.app_event(
            7,
            "task \"Send the spring catalogue\" completed in EcoSend",
            "task-updates",
            json!({ "id": id(7), "type": "task.completed", "email": email(&cast.task),
                    "task": { "id": task_ref } }),
        )
        .await?;
        self.sandbox_admin(
            "POST",
            "faults",
            json!({ "route": "contacts.update", "webhookDropRate": 1.0, "remaining": 1 }),
        )
        .await?;
        let backfilled_id = cast.backfilled["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.highlevel(
            "contacts.update",
            json!({ "contactId": backfilled_id, "city": "Portland" }),
        )
        .await?;
        println!(
            "   8. {} moved to Portland in HighLevel, but HighLevel drops the webhook",
            email(&cast.backfilled)
        );
        println!(
            "      (a fault injected in the sandbox: HighLevel loses webhooks after any failure but a 429)"
        );
        self.sync_webhooks().await?;
        let report = self.engine.poll_once("contact-lifecycle").await?;
        println!(
            "      the backfill poll of contact-lifecycle (every 5 min; run now) read {} contacts:",
            report.fetched
        );
        println!(
            "      {} changed since its last poll, so {} run(s) started. Contacts whose webhook did arrive are",
            report.enqueued, report.enqueued
        );
        println!(
            "      sent again: HighLevel's ContactUpdate webhook carries no dateUpdated to dedupe on, and the"
        );
        println!(
            "      app treats a contact update as an upsert (the request carries an Idempotency-Key)."
        );
        let tick = now_text();
        self.engine
            .enqueue(
                "task-reminders",
                &format!("schedule:task-reminders:{tick}"),
                json!({ "scheduled_at": tick, "fired_at": tick }),
            )
            .await?;
        println!("   9. the task-reminders schedule (daily at 08:00 UTC) fired now");
        waiting();
        let n2 = self.settle().await?;
        println!(
            " {} more runs done ({:.1} s)",
            n2.saturating_sub(n1),
            t0.elapsed().as_secs_f64()
        );

        let after = Snapshot::take(&self.sandbox);
        let runs = self.all_runs().await?;
        self.print_runs(&runs);
        self.print_highlevel_changes(&before, &after);
        let received: Vec<Received> = self
            .app
            .received()
            .into_iter()
            .skip(received_before)
            .collect();
        print_app_calls(&received);
        let lookup = self
            .http
            .get(format!("{}/lookup/contact", self.server_url()))
            .query(&[("email", email(&cast.task))])
            .send()
            .await;
        let lookup = match lookup {
            Ok(r) if r.status().is_success() => r.json::<Value>().await.unwrap_or(Value::Null),
            Ok(r) => json!({ "status": r.status().as_u16() }),
            Err(e) => json!({ "error": e.to_string() }),
        };
        let checks = self.checks(
            &cast,
            &after,
            &received,
            &runs,
            &lookup,
            &reminder_task,
            &task_ref,
        );
        println!("\nExpected changes:");
        for c in &checks {
            println!("  {} {}", if c.ok { "✓" } else { "✗" }, c.what);
            if !c.ok {
                println!("      {}", c.detail);
            }
        }
        Ok(checks)
    }

    /// Waits until every webhook the sandbox queued so far was delivered (a marker event
    /// queued after them arrived: deliveries go out in order).
    async fn sync_webhooks(&self) -> anyhow::Result<()> {
        let delivery = &self.sandbox.shared().delivery;
        let count = || {
            delivery
                .log()
                .iter()
                .filter(|r| r.event_type == SYNC_EVENT)
                .count()
        };
        let before = count();
        delivery.send(
            vec![Event {
                kind: SYNC_EVENT.into(),
                location_id: self.sandbox.info().location_id,
                payload: json!({}),
            }],
            0.0,
            0.0,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while count() == before {
            if Instant::now() > deadline {
                bail!("the sandbox's webhooks were not delivered within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Waits until no run is pending and no webhook is in flight; returns the number of runs.
    async fn settle(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        loop {
            self.sync_webhooks().await?;
            loop {
                let counts = self.engine.store().count_runs(None).await?;
                let pending: u64 = counts
                    .iter()
                    .filter(|(s, _)| !s.is_final())
                    .map(|(_, n)| n)
                    .sum();
                if pending == 0 {
                    break;
                }
                if Instant::now() > deadline {
                    println!();
                    println!("      ({pending} run(s) still pending after 60 s)");
                    return Ok(self
                        .engine
                        .store()
                        .count_runs(None)
                        .await?
                        .iter()
                        .map(|(_, n)| *n as usize)
                        .sum());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let total: usize = self
                .engine
                .store()
                .count_runs(None)
                .await?
                .iter()
                .map(|(_, n)| *n as usize)
                .sum();
            if last == Some(total) {
                return Ok(total);
            }
            last = Some(total);
        }
    }

    async fn all_runs(&self) -> anyhow::Result<Vec<RunDetail>> {
        let list = self
            .engine
            .store()
            .list_runs(&RunFilter {
                flow_id: None,
                state: None,
                limit: 10_000,
            })
            .await?;
        let mut out = Vec::new();
        for r in list
            .into_iter()
            .rev()
            .filter(|r| r.created_at >= self.since)
        {
            if let Some(d) = self.engine.store().run_detail(r.id).await? {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn print_runs(&self, runs: &[RunDetail]) {
        println!(
            "\nRuns ({}), oldest first — `hlbridge runs --data {}` lists them again:",
            runs.len(),
            self.data_dir.display()
        );
        let mut t = Table::new();
        t.load_style(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(["flow", "trigger", "state", "took", "what it did"]);
        for d in runs {
            t.add_row([
                d.run.flow_id.clone(),
                trigger_text(d),
                d.run.state.to_string(),
                run_took(d),
                did_text(d),
            ]);
        }
        println!("{t}");
        let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
        for d in runs {
            *by_state.entry(d.run.state.as_str()).or_default() += 1;
        }
        let parts: Vec<String> = by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let skipped = by_state.contains_key("skipped");
        println!(
            "{}{}",
            parts.join(", "),
            if skipped {
                " (skipped: the flow's filter, or the contact lookup, found nothing to do)"
            } else {
                ""
            }
        );
    }

    fn print_highlevel_changes(&self, before: &Snapshot, after: &Snapshot) {
        println!("\nWhat changed in HighLevel (the sandbox):");
        let lines = after.diff(before);
        if lines.is_empty() {
            println!("  nothing");
        }
        for (who, what) in lines {
            println!("  {who:<32} {what}");
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn checks(
        &self,
        cast: &Cast,
        after: &Snapshot,
        received: &[Received],
        runs: &[RunDetail],
        lookup: &Value,
        reminder_task: &str,
        task_ref: &str,
    ) -> Vec<Check> {
        let mut checks = Vec::new();
        let contact = |c: &Value| {
            after
                .contacts
                .get(c["id"].as_str().unwrap_or_default())
                .cloned()
                .unwrap_or(Value::Null)
        };
        let a = contact(&cast.tag_add);
        checks.push(Check {
            what: format!(
                "HighLevel: {} has the tag \"vip\" (EcoSend tag.added)",
                email(&cast.tag_add)
            ),
            ok: tags_of(&a).contains("vip"),
            detail: format!("tags are {:?}", tags_of(&a)),
        });
        let (r, tag) = &cast.tag_remove;
        let b = contact(r);
        checks.push(Check {
            what: format!(
                "HighLevel: {} no longer has the tag \"{tag}\" (EcoSend tag.removed)",
                email(r)
            ),
            ok: !b.is_null() && !tags_of(&b).contains(tag),
            detail: format!("tags are {:?}", tags_of(&b)),
        });
        let cid = cast.task["id"].as_str().unwrap_or_default();
        let marker = format!("[ecosend:{task_ref}]");
        let task = after.tasks.values().find(|t| {
            t["contactId"].as_str() == Some(cid)
                && t["body"].as_str().is_some_and(|b| b.contains(&marker))
        });
        checks.push(Check {
            what: format!(
                "HighLevel: {} has the task \"Send the spring catalogue\", completed (EcoSend task.created, task.completed)",
                email(&cast.task)
            ),
            ok: task.is_some_and(|t| t["completed"] == json!(true) && t["title"] == json!("Send the spring catalogue")),
            detail: match task {
                Some(t) => format!("task is {}", crate::flows::behaviour::compact(t)),
                None => "no such task".into(),
            },
        });
        let got = |path: &str, pred: &dyn Fn(&Value) -> bool| {
            received.iter().any(|r| r.path == path && pred(&r.body))
        };
        let updated = cast.updated["id"].as_str().unwrap_or_default();
        checks.push(Check {
            what: format!(
                "EcoSend: got {}'s new city from the ContactUpdate webhook",
                email(&cast.updated)
            ),
            ok: got("/hlbridge/contacts", &|b| {
                b["contact"]["id"].as_str() == Some(updated)
                    && b["source"] == json!("webhook")
                    && b["contact"]["city"] == json!("Denver")
            }),
            detail: "no POST /hlbridge/contacts with city Denver".into(),
        });
        let noted = cast.noted["id"].as_str().unwrap_or_default();
        checks.push(Check {
            what: format!(
                "EcoSend: got the note added to {} (NoteCreate webhook)",
                email(&cast.noted)
            ),
            ok: got("/hlbridge/notes", &|b| {
                b["contactId"].as_str() == Some(noted) && b["email"] == json!(email(&cast.noted))
            }),
            detail: "no POST /hlbridge/notes for that contact".into(),
        });
        checks.push(Check {
            what: format!(
                "EcoSend: got {}'s refreshed profile with the new note",
                email(&cast.noted)
            ),
            ok: got("/hlbridge/contact-profile", &|b| {
                b["contact"]["id"].as_str() == Some(noted)
                    && b["notes"].as_array().is_some_and(|n| {
                        n.iter()
                            .any(|x| x["body"] == json!("Called: wants the annual plan."))
                    })
            }),
            detail: "no POST /hlbridge/contact-profile with the note".into(),
        });
        let back = cast.backfilled["id"].as_str().unwrap_or_default();
        checks.push(Check {
            what: format!(
                "EcoSend: got {}'s update although its webhook was lost (backfill poll)",
                email(&cast.backfilled)
            ),
            ok: got("/hlbridge/contacts", &|b| {
                b["contact"]["id"].as_str() == Some(back)
                    && b["source"] == json!("backfill")
                    && b["contact"]["city"] == json!("Portland")
            }),
            detail: "no POST /hlbridge/contacts from the backfill for that contact".into(),
        });
        checks.push(Check {
            what: format!(
                "EcoSend: got a reminder for the task \"Renewal call\" of {}",
                email(&cast.reminded)
            ),
            ok: got("/hlbridge/task-reminders", &|b| {
                b["taskId"].as_str() == Some(reminder_task)
            }),
            detail: "no POST /hlbridge/task-reminders for that task".into(),
        });
        let looked_up = lookup["tasks"].as_array().is_some_and(|ts| {
            ts.iter().any(|t| {
                t["title"] == json!("Send the spring catalogue") && t["completed"] == json!(true)
            })
        });
        checks.push(Check {
            what: format!(
                "hlbridge: GET /lookup/contact?email={} answers profile, tasks and notes in one call",
                email(&cast.task)
            ),
            ok: lookup["contact"]["id"].as_str() == Some(cid) && looked_up,
            detail: format!("answer: {}", crate::flows::behaviour::compact(lookup)),
        });
        let bad: Vec<String> = runs
            .iter()
            .filter(|d| !matches!(d.run.state, RunState::Succeeded | RunState::Skipped))
            .map(|d| format!("{} {} {}", d.run.flow_id, d.run.id, d.run.state))
            .collect();
        checks.push(Check {
            what: "hlbridge: every run succeeded or was skipped (no dead letters)".into(),
            ok: bad.is_empty() && !runs.is_empty(),
            detail: if runs.is_empty() {
                "no runs".into()
            } else {
                bad.join(", ")
            },
        });
        checks
    }

    async fn keep_serving(&self) {
        let server = self.server_url();
        let info = self.sandbox.info();
        let first = self.contacts().first().cloned().unwrap_or(Value::Null);
        println!(
            "\nStill running. Try it yourself (Ctrl-C to stop; `hlbridge` is `cargo run --release --` in the repository):"
        );
        println!("  # EcoSend sends an event (the stand-in signs it and forwards it to hlbridge):");
        println!(
            "  curl -X POST {}/send/tag-segmentation -d '{{\"id\":\"try-1\",\"type\":\"tag.added\",\"email\":\"{}\",\"tag\":\"webinar\"}}'",
            self.app.url,
            email(&first)
        );
        println!(
            "  # Change a contact in HighLevel (the sandbox); its webhook reaches hlbridge, then EcoSend:"
        );
        println!(
            "  HLBRIDGE_BASE_URL={} HLBRIDGE_TOKEN={} hlbridge call contacts.update contactId={} city=Boston",
            info.base_url,
            info.token,
            first["id"].as_str().unwrap_or_default()
        );
        println!("  # What EcoSend received, and the contact lookup it can read from:");
        println!("  curl {}/_received", self.app.url);
        println!("  curl '{server}/lookup/contact?email={}'", email(&first));
        println!("  # The runs, the health check and the metrics:");
        println!("  hlbridge runs --data {}", self.data_dir.display());
        println!("  curl {server}/healthz   ·   curl {server}/metrics");
        if let Some(pw) = &self.ui_password {
            println!(
                "  # Or open the web UI (build, test and watch flows; dead letters; replay):\n  {server}/   (user demo, password {pw})"
            );
        }
        let stop = CancellationToken::new();
        let _signal = hlbridge_engine::runner::cancel_on_signal(stop.clone());
        stop.cancelled().await;
        println!("\nstopping …");
    }

    async fn stop(mut self) {
        if let Some(server) = self.server.take()
            && let Err(e) = server.shutdown().await
        {
            eprintln!("warning: stopping the server: {e}");
        }
        self.app.shutdown().await;
        self.sandbox.shutdown().await;
    }
}

/// Prints the start of the "waiting" line now (stdout is line-buffered).
fn waiting() {
    use std::io::Write;
    print!("      waiting for hlbridge to finish …");
    let _ = std::io::stdout().flush();
}

/// The trigger of a run, for people.
fn trigger_text(d: &RunDetail) -> String {
    let key = &d.event.dedupe_key;
    let p = &d.event.payload;
    let kind = p["type"].as_str().unwrap_or_default();
    if key.starts_with("app:") {
        format!("EcoSend event {kind}")
    } else if key.starts_with("schedule:") {
        "schedule".into()
    } else if key.starts_with("manual:") {
        "flows run".into()
    } else if p.get("webhookId").is_some() {
        format!("HighLevel webhook {kind}")
    } else if key.starts_with("poll:") {
        "backfill poll".into()
    } else {
        key.split(':').next().unwrap_or_default().to_owned()
    }
}

/// What a run did, from its steps.
fn did_text(d: &RunDetail) -> String {
    let mut did = Vec::new();
    for s in &d.steps {
        let Some(input) = &s.input else { continue };
        if s.output.is_none() {
            continue;
        }
        if let Some(url) = input.get("url").and_then(Value::as_str) {
            let path = Url::parse(url)
                .map(|u| u.path().to_owned())
                .unwrap_or_default();
            did.push(format!(
                "→ EcoSend {} {path}",
                input["method"].as_str().unwrap_or("POST")
            ));
            continue;
        }
        let name = s.step_id.rsplit('.').next().unwrap_or(&s.step_id);
        let hl = match name {
            "add_tag" => Some("contacts.tags.add"),
            "remove_tag" => Some("contacts.tags.remove"),
            "create_task" => Some("contacts.tasks.create"),
            "update_task" => Some("contacts.tasks.update"),
            "complete_task" => Some("contacts.tasks.complete"),
            _ => None,
        };
        if let Some(op) = hl {
            did.push(format!("→ HighLevel {op}"));
        }
    }
    if d.run.state == RunState::Skipped && did.is_empty() {
        return match d.steps.is_empty() {
            true => "nothing (filter)".into(),
            false => "nothing (no such contact)".into(),
        };
    }
    let mut counted: Vec<(String, usize)> = Vec::new();
    for x in did {
        match counted.iter_mut().find(|(y, _)| *y == x) {
            Some((_, n)) => *n += 1,
            None => counted.push((x, 1)),
        }
    }
    counted
        .into_iter()
        .map(|(x, n)| if n > 1 { format!("{x} ×{n}") } else { x })
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_app_calls(received: &[Received]) {
    println!(
        "\nWhat EcoSend received from hlbridge ({} calls):",
        received.len()
    );
    let mut by_path: BTreeMap<&str, Vec<&Received>> = BTreeMap::new();
    for r in received {
        by_path.entry(r.path.as_str()).or_default().push(r);
    }
    for (path, calls) in by_path {
        println!("  POST {path}  ×{}", calls.len());
        for r in calls.iter().take(5) {
            println!("      {}", summarize_call(r));
        }
        if calls.len() > 5 {
            println!("      … and {} more", calls.len() - 5);
        }
    }
}

fn summarize_call(r: &Received) -> String {
    let b = &r.body;
    let auth = if r.status == 401 {
        "  (refused: bad token)"
    } else {
        ""
    };
    let line = match r.path.as_str() {
        "/hlbridge/contacts" => format!(
            "{} {} via {}{}",
            b["event"].as_str().unwrap_or("?"),
            b["contact"]["email"].as_str().unwrap_or("?"),
            b["source"].as_str().unwrap_or("?"),
            b["contact"]["city"]
                .as_str()
                .map(|c| format!(", city {c}"))
                .unwrap_or_default()
        ),
        "/hlbridge/notes" => format!(
            "note \"{}\" for {}",
            b["body"].as_str().unwrap_or("?"),
            b["email"].as_str().unwrap_or("?")
        ),
        "/hlbridge/contact-profile" => format!(
            "{} profile after {}: {} task(s), {} note(s)",
            b["contact"]["email"].as_str().unwrap_or("?"),
            b["reason"].as_str().unwrap_or("?"),
            b["tasks"].as_array().map_or(0, Vec::len),
            b["notes"].as_array().map_or(0, Vec::len)
        ),
        "/hlbridge/task-reminders" => format!(
            "\"{}\" due {} for {}{}",
            b["title"].as_str().unwrap_or("?"),
            b["dueDate"]
                .as_str()
                .map(|d| d.get(..10).unwrap_or(d))
                .unwrap_or("?"),
            b["contact"]["email"].as_str().unwrap_or("?"),
            if b["overdue"] == json!(true) {
                " (overdue)"
            } else {
                ""
            }
        ),
        _ => crate::flows::behaviour::compact(b),
    };
    format!("{line}{auth}")
}

/// Contacts, tasks and notes of the sandbox at one moment.
struct Snapshot {
    contacts: BTreeMap<String, Value>,
    tasks: BTreeMap<String, Value>,
    notes: BTreeMap<String, Value>,
}

impl Snapshot {
    fn take(sandbox: &Sandbox) -> Snapshot {
        let docs = sandbox.shared().docs.read();
        let grab = |kind: &str| -> BTreeMap<String, Value> {
            docs.iter(kind)
                .map(|(id, d)| (id.clone(), (*d.body).clone()))
                .collect()
        };
        Snapshot {
            contacts: grab("contact"),
            tasks: grab("task"),
            notes: grab("note"),
        }
    }

    fn who(&self, contact_id: &str) -> String {
        self.contacts
            .get(contact_id)
            .and_then(|c| c["email"].as_str())
            .unwrap_or(contact_id)
            .to_owned()
    }

    /// Human-readable changes since `before`: (contact, what changed).
    fn diff(&self, before: &Snapshot) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (id, c) in &self.contacts {
            let Some(old) = before.contacts.get(id) else {
                out.push((self.who(id), "contact created".into()));
                continue;
            };
            let (new_tags, old_tags) = (tags_of(c), tags_of(old));
            for t in new_tags.difference(&old_tags) {
                out.push((self.who(id), format!("tag + {t}")));
            }
            for t in old_tags.difference(&new_tags) {
                out.push((self.who(id), format!("tag − {t}")));
            }
            for f in [
                "firstName",
                "lastName",
                "email",
                "phone",
                "city",
                "companyName",
            ] {
                if c[f] != old[f] {
                    out.push((
                        self.who(id),
                        format!(
                            "{f}: {} → {}",
                            old[f].as_str().unwrap_or("—"),
                            c[f].as_str().unwrap_or("—")
                        ),
                    ));
                }
            }
        }
        for (id, t) in &self.tasks {
            let who = self.who(t["contactId"].as_str().unwrap_or_default());
            let title = t["title"].as_str().unwrap_or("?");
            match before.tasks.get(id) {
                None => out.push((
                    who,
                    format!(
                        "task \"{title}\" created{}",
                        if t["completed"] == json!(true) {
                            ", then completed"
                        } else {
                            ""
                        }
                    ),
                )),
                Some(old) => {
                    if old["completed"] != t["completed"] {
                        out.push((who.clone(), format!("task \"{title}\" completed")));
                    }
                    if old["title"] != t["title"] {
                        out.push((who, format!("task renamed to \"{title}\"")));
                    }
                }
            }
        }
        for (id, n) in &self.notes {
            if !before.notes.contains_key(id) {
                out.push((
                    self.who(n["contactId"].as_str().unwrap_or_default()),
                    format!("note \"{}\" added", n["body"].as_str().unwrap_or("?")),
                ));
            }
        }
        out
    }
}

/// How long a run took (for the table).
fn run_took(d: &RunDetail) -> String {
    match d.run.started_at {
        Some(s) => millis(s, d.run.finished_at),
        None => "—".into(),
    }
}
