//! Part (c): resident memory of an idle engine with many flows loaded.
//!
//! The engine is opened on SQLite in a temporary data directory with the real HighLevel
//! client configured (never called: nothing happens), and the server is started with its
//! workers and triggers, as `hlbridge serve` does. Resident memory (`VmRSS`) is read when
//! the process has done nothing yet, with the engine and server running and no flows, and
//! after F generated flow files are loaded (`Engine::load_flows` on their directory: parse,
//! validate, compile every template) and the engine has idled for a moment.
//!
//! Generated flows are of realistic size (about 1.2 KB of TOML each): a trigger (an app
//! webhook or a HighLevel webhook, alternately), a filter and three steps with mappings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hlbridge_engine::{AppConnection, ClientApi, Connection, Engine, EngineConfig, HighLevelApi};
use hlbridge_highlevel::{Auth, Client, ClientConfig, Url};
use hlbridge_server::ServeConfig;
use tokio_util::sync::CancellationToken;

use super::machine::{mib, rss_bytes};
use super::stats::ms;
use super::{EngineBenchArgs, verdict};

/// Largest resident memory allowed with the flows loaded.
const TARGET_BYTES: u64 = 150 * 1024 * 1024;

/// Runs the memory part; `Ok(true)` when the target is met.
pub async fn run(args: &EngineBenchArgs) -> Result<bool> {
    let f = args.flows;
    println!("(c) memory: an idle engine with the server running, {f} generated flows loaded");
    let rss_start = rss_bytes().ok_or_else(|| anyhow!("cannot read VmRSS"))?;

    let dir = std::env::temp_dir().join(format!(
        "hlbridge-bench-mem-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let flow_dir = dir.join("flows");
    std::fs::create_dir_all(&flow_dir)
        .with_context(|| format!("creating {}", flow_dir.display()))?;
    let mut bytes = 0usize;
    for i in 0..f {
        let src = generated_flow(i);
        bytes += src.len();
        std::fs::write(flow_dir.join(format!("gen-{i:05}.toml")), src)?;
    }

    let mut config = EngineConfig::with_data_dir(dir.join("data"));
    config.workers = args.workers;
    config
        .app_secrets
        .insert("shop".into(), "bench-secret".into());
    config.app_connections.insert(
        "crm".into(),
        AppConnection {
            base_url: Some("https://crm.example.com/api/".into()),
            headers: [("Authorization".to_owned(), "Bearer bench".to_owned())].into(),
        },
    );
    // The real client, pointed at a HighLevel that is never called (the engine stays idle).
    let client = Client::new(ClientConfig {
        base_url: Url::parse("http://127.0.0.1:9/")?,
        ..ClientConfig::default()
    })
    .map_err(|e| anyhow!("HighLevel client: {e}"))?;
    let conns: HashMap<String, Connection> = [(
        "default".to_owned(),
        Connection {
            auth: Auth::token_for("pit-bench", "loc-bench"),
            location_id: Some("loc-bench".into()),
        },
    )]
    .into();
    let api: Arc<dyn HighLevelApi> = Arc::new(ClientApi::new(client, conns));
    let engine = Engine::open_with(config, api.clone()).await?;
    let server = hlbridge_server::serve(
        engine.clone(),
        ServeConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            highlevel: Some(api),
            shutdown_grace: Duration::from_secs(5),
            ..ServeConfig::default()
        },
        CancellationToken::new(),
    )
    .await?;
    let http = reqwest::Client::new();
    let health = format!("{}/healthz", server.base_url);
    http.get(&health).send().await?.error_for_status()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes().unwrap_or(0);

    let t = Instant::now();
    let loaded = engine.load_flows(&[&flow_dir]).await.map_err(|e| match e {
        hlbridge_engine::EngineError::Flows(d) => anyhow!(
            "{}",
            d.iter()
                .take(5)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
        other => other.into(),
    })?;
    let load_time = t.elapsed();
    if loaded.len() != f {
        bail!("{} of {f} flows loaded", loaded.len());
    }
    // Idle with the server up; the server answers and sees the flows.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let body: serde_json::Value = http.get(&health).send().await?.json().await?;
    if body["flows"].as_u64() != Some(f as u64) {
        bail!("the server reports {} flows", body["flows"]);
    }
    let rss_after = rss_bytes().unwrap_or(0);

    println!(
        "    {f} flow files, {:.0} KB in all ({} bytes each on average), loaded and compiled in {}",
        bytes as f64 / 1024.0,
        bytes / f.max(1),
        ms(load_time)
    );
    println!(
        "    VmRSS at process start (nothing running):       {}",
        mib(rss_start)
    );
    println!(
        "    VmRSS engine + server running, no flows loaded: {}",
        mib(rss_before)
    );
    println!(
        "    VmRSS idle with {f} flows loaded:               {}  (+{} for the flows, {:.1} KiB per flow)",
        mib(rss_after),
        mib(rss_after.saturating_sub(rss_before)),
        rss_after.saturating_sub(rss_before) as f64 / 1024.0 / f.max(1) as f64
    );
    let ok = rss_after <= TARGET_BYTES;
    println!(
        "    => {} resident with {f} flows (target ≤ {}) {}",
        mib(rss_after),
        mib(TARGET_BYTES),
        verdict(ok)
    );
    server.shutdown().await?;
    if args.keep {
        println!("  (directory kept: {})", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ok)
}

/// Flow number `i`: even ones take an app's order events to HighLevel, odd ones take
/// HighLevel contact events to an app.
pub fn generated_flow(i: usize) -> String {
    if i.is_multiple_of(2) {
        format!(
            r#"# Generated flow {i} (hlbridge bench engine, memory part).
id = "gen-{i:05}"
name = "Shop {i}: paid order → HighLevel contact tag and note"
description = "Order events of shop {i} tag the buyer in HighLevel and leave a note with the order"
filter = "event.type == 'order.paid' and event.total >= {min}"

[trigger]
type = "app_webhook"
secret = "shop"
dedupe_key = "{{{{ event.id }}}}"

[[steps]]
id = "buyer"
type = "find_contact"
email = "{{{{ event.customer.email | lower }}}}"
required = true

[[steps]]
id = "tag"
type = "highlevel"
operation = "contacts.tags.add"
params = {{ contactId = "{{{{ steps.buyer.id }}}}", tags = ["shop-{i}-buyer", "{{{{ event.plan | lower }}}}"] }}

[[steps]]
id = "note"
type = "highlevel"
operation = "contacts.notes.create"
params = {{ contactId = "{{{{ steps.buyer.id }}}}", body = "Order {{{{ event.id }}}} paid: {{{{ event.total }}}} {{{{ event.currency | upper }}}} for {{{{ event.items | length }}}} item(s) on {{{{ trigger.received_at }}}}" }}
"#,
            min = i % 50
        )
    } else {
        format!(
            r#"# Generated flow {i} (hlbridge bench engine, memory part).
id = "gen-{i:05}"
name = "CRM {i}: HighLevel contact changes → CRM"
description = "ContactUpdate and ContactTagUpdate webhooks for tagged contacts are sent to the CRM"
filter = "event.tags is defined and 'segment-{seg}' in event.tags"

[trigger]
type = "highlevel_webhook"
events = ["ContactUpdate", "ContactTagUpdate"]

[[steps]]
id = "contact"
type = "highlevel"
operation = "contacts.get"
params = {{ contactId = "{{{{ event.id }}}}" }}

[[steps]]
id = "send"
type = "http"
connection = "crm"
method = "POST"
url = "contacts/{{{{ event.id }}}}"
headers = {{ "Idempotency-Key" = "{{{{ trigger.dedupe_key }}}}" }}
body = {{ email = "{{{{ steps.contact.contact.email }}}}", name = "{{{{ steps.contact.contact.firstName }}}} {{{{ steps.contact.contact.lastName }}}}", tags = "{{{{ event.tags }}}}", segment = "segment-{seg}" }}

[[steps]]
id = "note"
type = "highlevel"
operation = "contacts.notes.create"
params = {{ contactId = "{{{{ event.id }}}}", body = "Sent to the CRM (status {{{{ steps.send.status }}}}) at {{{{ trigger.received_at }}}}" }}
"#,
            seg = i % 20
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_flows_compile() {
        let ctx = hlbridge_engine::ValidationContext {
            connections: None,
            app_connections: Some(["crm".to_owned()].into()),
        };
        for i in 0..4 {
            let src = generated_flow(i);
            let r = hlbridge_engine::validate::compile_source("gen.toml", &src, &ctx);
            assert!(
                r.is_ok(),
                "{}\n{:?}",
                src,
                r.err()
                    .map(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>())
            );
            assert!((900..2_000).contains(&src.len()), "{}", src.len());
        }
    }
}
