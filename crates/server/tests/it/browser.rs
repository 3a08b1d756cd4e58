//! The web UI in a real browser: Debian's headless Chromium driven through chromedriver
//! (WebDriver) with fantoccini. Signs in, builds the tag-segmentation flow from its template
//! (previewing a mapping and running its behaviour test against the sandbox on the way),
//! sends an app event and sees the run succeed and the tag on the sandbox contact, forces a
//! failure, finds it in dead letters and replays it, and checks that a viewer sees no edit
//! controls and gets 403 from the API. Screenshots of the main pages go to
//! `target/screenshots/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
//! `chromium-driver`, installed by `.ci/run`); without them the test says it is skipped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hlbridge_engine::security::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::admin::send_tag_event;
use crate::adminkit::{Admin, OWNER, OWNER_PASSWORD};
use crate::harness::{Harness, Options, wait_for};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// The chromedriver process this test started; killed (by its own handle) when dropped.
struct Driver {
    child: Child,
    url: String,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn start_driver() -> Driver {
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let profile = std::env::temp_dir().join(format!("hlbridge-chromium-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&profile).expect("profile dir");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        profile,
    };
    let http = reqwest::Client::new();
    let status = format!("{}/status", driver.url);
    wait_for(30, "chromedriver to answer", || async {
        http.get(&status)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    driver
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1366,900",
                format!("--user-data-dir={}", driver.profile.display()),
            ]
        }),
    );
    ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).expect("write screenshot");
}

async fn find(c: &Client, css: &str) -> fantoccini::elements::Element {
    match c
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(e) => e,
        Err(e) => panic!(
            "no `{css}` on {:?}: {e}\n{}",
            c.current_url().await.ok(),
            body_text(c).await
        ),
    }
}

async fn body_text(c: &Client) -> String {
    match c.find(Locator::Css("body")).await {
        Ok(b) => b.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the page's text contains `text`, reloading it every half second when
/// `reload` (the run list updates without a reload only when the page asks).
async fn wait_text(c: &Client, text: &str, reload: bool) {
    for _ in 0..60 {
        if body_text(c).await.contains(text) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        if reload {
            let _ = c.refresh().await;
        }
    }
    panic!(
        "`{text}` never appeared on {:?}:\n{}",
        c.current_url().await.ok(),
        body_text(c).await
    );
}

/// Waits until an element matching `css` is on the page, reloading it every half second.
async fn wait_css(c: &Client, css: &str) {
    for _ in 0..60 {
        if c.find(Locator::Css(css)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = c.refresh().await;
    }
    panic!(
        "`{css}` never appeared on {:?}:\n{}",
        c.current_url().await.ok(),
        body_text(c).await
    );
}

/// Nothing on the page is wider than the window (readable on a laptop screen without
/// scrolling sideways); names the elements that stick out otherwise.
async fn fits_the_width(c: &Client) {
    let v = c
        .execute(
            r#"const w = document.documentElement.clientWidth;
               const out = [];
               for (const e of document.querySelectorAll('body *')) {
                 const r = e.getBoundingClientRect();
                 if (r.right > w + 1 && r.width > 0) out.push(e.tagName + '.' + e.className + '#' + e.id + ' ' + Math.round(r.right));
               }
               return { scroll: document.documentElement.scrollWidth, width: w, out: out.slice(0, 12) };"#,
            vec![],
        )
        .await
        .expect("measure");
    assert!(
        v["scroll"].as_u64() <= v["width"].as_u64(),
        "the page is wider than the window: {v}"
    );
}

/// HighLevel refuses the next tag once, so the event `evt` (adding `tag`) becomes a dead
/// letter; then the dead-letters page is open and shows it.
async fn dead_letter_on_screen(h: &Harness, c: &Client, base: &str, evt: &str, tag: &str) {
    h.fault(json!({"route": "contacts.tags.add", "errorRate": 1.0, "status": 400, "remaining": 1}))
        .await;
    assert_eq!(
        send_tag_event(h, "tag-segmentation", evt, "ada@example.com", tag).await,
        202
    );
    c.goto(&format!("{base}/dead-letters"))
        .await
        .expect("dead letters");
    wait_text(c, "Replay all", true).await;
}

async fn sign_in(c: &Client, base: &str, user: &str, password: &str) {
    c.goto(&format!("{base}/login")).await.expect("login page");
    find(c, "#user").await.send_keys(user).await.expect("user");
    find(c, "#password")
        .await
        .send_keys(password)
        .await
        .expect("password");
    find(c, "form button[type=submit]")
        .await
        .click()
        .await
        .expect("sign in");
    find(c, "header .who").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_run_fail_replay_and_view_in_a_browser() {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        eprintln!(
            "SKIPPED browser test: chromium is not installed ({CHROMEDRIVER} or {CHROMIUM} missing); `apt-get install chromium chromium-driver` (CI's .ci/run does)"
        );
        return;
    }
    let a = Admin::start(
        "browser",
        Options {
            observe: true,
            // The templates' app (unused here: no template that calls it runs).
            app_connections: vec![("ecosend".into(), "http://127.0.0.1:9".into())],
            ..Options::default()
        },
    )
    .await;
    let base = a.h.server.base_url.clone();
    let contact = a.h.contact("ada@example.com", "Ada").await;
    let (status, _) = a
        .owner(
            Method::POST,
            "/api/v1/users",
            Some(json!({ "name": "vic", "role": "viewer", "password": "viewer-pass" })),
        )
        .await;
    assert_eq!(status, 201);

    let driver = start_driver().await;
    let c = browser(&driver).await;

    // Sign in.
    c.goto(&format!("{base}/login")).await.expect("login page");
    find(&c, "#user").await;
    shot(&c, "01-login").await;
    sign_in(&c, &base, OWNER, OWNER_PASSWORD).await;
    assert!(body_text(&c).await.contains("Dashboard"));

    // The gallery, then the builder from the tag-segmentation template.
    c.goto(&format!("{base}/templates"))
        .await
        .expect("templates");
    find(&c, "a[href='/flows/new?template=tag-segmentation']").await;
    shot(&c, "02-templates").await;
    find(&c, "a[href='/flows/new?template=tag-segmentation']")
        .await
        .click()
        .await
        .expect("use the template");
    find(&c, "#builder").await;
    let id = find(&c, "#f-id").await.prop("value").await.expect("id");
    assert_eq!(id.as_deref(), Some("tag-segmentation"));
    fits_the_width(&c).await;
    shot(&c, "03-builder").await;

    // Preview a mapping against the sample event.
    find(&c, "button[name=field][value=preview_template]")
        .await
        .click()
        .await
        .expect("preview");
    find(&c, "#preview-out pre").await;
    let preview = find(&c, "#preview-out")
        .await
        .text()
        .await
        .unwrap_or_default();
    assert!(preview.contains("ada@example.com"), "{preview}");

    // Pick an operation from the searchable catalog (here: for the nested tag step).
    c.execute(
        "document.querySelector('#cat-s-1-s-0--q').closest('details').open = true;",
        vec![],
    )
    .await
    .expect("open the catalog");
    find(&c, "#cat-s-1-s-0--q")
        .await
        .send_keys("remove tag")
        .await
        .expect("search");
    for _ in 0..40 {
        let found = find(&c, "#cat-s-1-s-0--out")
            .await
            .text()
            .await
            .unwrap_or_default();
        if found.contains("contacts.tags.remove") && !found.contains("contacts.tags.add ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let found = find(&c, "#cat-s-1-s-0--out")
        .await
        .text()
        .await
        .unwrap_or_default();
    assert!(found.contains("contacts.tags.remove"), "{found}");
    c.execute(
        "document.querySelector('#cat-s-1-s-0--out').scrollIntoView({block: 'center'});",
        vec![],
    )
    .await
    .expect("scroll");
    fits_the_width(&c).await;
    shot(&c, "03b-builder-catalog").await;

    // Test against the sandbox: the template's behaviour test passes, with each step's
    // request and response.
    find(&c, "button[name=op][value=test]")
        .await
        .click()
        .await
        .expect("test");
    let report = c
        .wait()
        .at_most(Duration::from_secs(90))
        .for_element(Locator::Css("#test-out p[role=status]"))
        .await
        .expect("a test report");
    let verdict = report.text().await.unwrap_or_default();
    assert!(verdict.contains("passed"), "{verdict}");
    c.execute(
        "document.querySelectorAll('#test-out details').forEach(d => d.open = true); document.querySelector('#test-h').scrollIntoView();",
        vec![],
    )
    .await
    .expect("open the steps");
    fits_the_width(&c).await;
    shot(&c, "04-builder-test").await;

    // Save: it is an ordinary flow now.
    find(&c, "button[name=op][value=save]")
        .await
        .click()
        .await
        .expect("save");
    wait_text(&c, "Flow saved", false).await;
    assert!(
        c.current_url()
            .await
            .is_ok_and(|u| u.path() == "/flows/tag-segmentation")
    );
    shot(&c, "05-flow").await;

    // An app event runs it; the run shows each step.
    assert_eq!(
        send_tag_event(&a.h, "tag-segmentation", "evt-b1", "ada@example.com", "vip").await,
        202
    );
    c.goto(&format!("{base}/runs?flow=tag-segmentation"))
        .await
        .expect("runs");
    wait_css(&c, "td .badge.s-succeeded").await;
    shot(&c, "06-runs").await;
    find(&c, "td.mono a")
        .await
        .click()
        .await
        .expect("open the run");
    wait_text(&c, "Input (request)", false).await;
    let page = body_text(&c).await;
    assert!(
        page.contains("contacts") || page.contains(&contact),
        "{page}"
    );
    shot(&c, "07-run").await;
    assert!(a.h.tags(&contact).contains(&"vip".to_owned()));

    // A failure: HighLevel refuses the tag once; the run is a dead letter; replay it.
    dead_letter_on_screen(&a.h, &c, &base, "evt-b2", "webinar").await;
    shot(&c, "08-dead-letters").await;
    find(
        &c,
        "form[action='/dead-letters/replay'] input[name=run_id] ~ button",
    )
    .await
    .click()
    .await
    .expect("replay");
    wait_text(&c, "Replay queued", false).await;
    wait_css(&c, ".actions .badge.s-succeeded").await;
    assert!(a.h.tags(&contact).contains(&"webinar".to_owned()));
    shot(&c, "09-replayed-run").await;

    // Another dead letter, resumed from its failed step instead.
    dead_letter_on_screen(&a.h, &c, &base, "evt-b3", "summit").await;
    find(
        &c,
        "form[action='/dead-letters/replay'] button[name=resume]",
    )
    .await
    .click()
    .await
    .expect("resume");
    wait_text(&c, "Run resumed", false).await;
    wait_css(&c, ".actions .badge.s-succeeded").await;
    assert!(a.h.tags(&contact).contains(&"summit".to_owned()));

    // Every template survives the builder's form: opened, re-checked (the form posted back
    // and rebuilt), its TOML is the template's flow.
    for t in [
        "contact-lookup",
        "task-updates",
        "tag-segmentation",
        "contact-lifecycle",
        "task-reminders",
        "notes-to-app",
    ] {
        c.goto(&format!("{base}/flows/new?template={t}"))
            .await
            .expect("builder");
        find(&c, "#builder").await;
        find(&c, "button[name=op][value=check]:not([tabindex])")
            .await
            .click()
            .await
            .expect("check again");
        tokio::time::sleep(Duration::from_millis(300)).await;
        find(&c, "#check-h").await;
        let check = find(&c, "#builder section.panel")
            .await
            .text()
            .await
            .unwrap_or_default();
        assert!(check.contains("The flow compiles"), "{t}: {check}");
        let toml_text: String = c
            .execute(
                "return document.querySelector('#builder details.panel pre').textContent;",
                vec![],
            )
            .await
            .expect("toml")
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let built: hlbridge_engine::Flow =
            toml::from_str(&toml_text).unwrap_or_else(|e| panic!("{t}: {e}\n{toml_text}"));
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../flows/templates/{t}.toml"));
        let mut want: hlbridge_engine::Flow =
            toml::from_str(&std::fs::read_to_string(path).expect("template")).expect("parses");
        want.id = built.id.clone();
        assert_eq!(
            built, want,
            "{t}: the builder changed the flow:\n{toml_text}"
        );
    }

    // A flow from scratch: add steps, pick an operation from the catalog, map its
    // parameters from the sample event's fields.
    c.goto(&format!("{base}/flows/new"))
        .await
        .expect("new flow");
    find(&c, "#builder").await;
    find(&c, "button[name=op][value='add::find_contact']")
        .await
        .click()
        .await
        .expect("add find contact");
    find(&c, "#s-0-email").await;
    find(&c, "button[name=op][value='add::highlevel']")
        .await
        .click()
        .await
        .expect("add a HighLevel step");
    find(&c, "#cat-s-1--q").await;
    c.execute(
        "document.querySelector('#cat-s-1--q').closest('details').open = true;",
        vec![],
    )
    .await
    .expect("open the catalog");
    find(&c, "#cat-s-1--q")
        .await
        .send_keys("add tags")
        .await
        .expect("search");
    find(
        &c,
        "#cat-s-1--out button[value='pick:s.1.:contacts.tags.add']",
    )
    .await
    .click()
    .await
    .expect("use contacts.tags.add");
    find(&c, "#s-1-p-0-v").await;
    let op = find(&c, "#s-1-operation")
        .await
        .prop("value")
        .await
        .expect("op");
    assert_eq!(op.as_deref(), Some("contacts.tags.add"));
    let names: Vec<String> = {
        let mut v = Vec::new();
        for e in c
            .find_all(Locator::Css("input[name^='s.1.p.'][name$='.k']"))
            .await
            .expect("params")
        {
            v.push(e.prop("value").await.ok().flatten().unwrap_or_default());
        }
        v
    };
    assert!(
        names.contains(&"contactId".to_owned()) && names.contains(&"tags".to_owned()),
        "{names:?}"
    );
    let contact_id = find(&c, "#s-1-p-0-v").await;
    contact_id
        .send_keys("{{ steps.contact.id }}")
        .await
        .expect("map contactId");
    let tags = find(&c, "#s-1-p-1-v").await;
    tags.send_keys("[\"{{ event.tag }}\"]")
        .await
        .expect("map tags");
    find(&c, "button[name=op][value=check]:not([tabindex])")
        .await
        .click()
        .await
        .expect("check");
    wait_text(&c, "The flow compiles", false).await;
    c.execute(
        "document.querySelector('#s-1-p-0-v').scrollIntoView({block: 'center'});",
        vec![],
    )
    .await
    .expect("scroll");
    fits_the_width(&c).await;
    shot(&c, "17-builder-new-flow").await;

    // The other pages.
    for (path, name, expect) in [
        ("/", "10-dashboard", "pacing estimate"),
        ("/connections", "11-connections", "Connect"),
        ("/audit", "12-audit", "run.replayed"),
        ("/users", "13-users", "Add a user"),
        ("/tokens", "14-tokens", "Create a token"),
        ("/flows", "15-flows", "tag-segmentation"),
    ] {
        c.goto(&format!("{base}{path}")).await.expect("page");
        wait_text(&c, expect, false).await;
        shot(&c, name).await;
    }

    // A viewer: no edit controls, and 403 from the API even with a valid session.
    find(&c, "header .who button")
        .await
        .click()
        .await
        .expect("sign out");
    find(&c, "#user").await;
    sign_in(&c, &base, "vic", "viewer-pass").await;
    c.goto(&format!("{base}/flows")).await.expect("flows");
    wait_text(&c, "tag-segmentation", false).await;
    assert!(!body_text(&c).await.contains("Build a new flow"));
    c.goto(&format!("{base}/flows/tag-segmentation"))
        .await
        .expect("flow");
    wait_text(&c, "Download TOML", false).await;
    let page = body_text(&c).await;
    assert!(
        !page.contains("Edit in the builder") && !page.contains("Disable"),
        "{page}"
    );
    shot(&c, "16-viewer-flow").await;
    c.goto(&format!("{base}/dead-letters"))
        .await
        .expect("dead letters");
    wait_text(&c, "Dead letters", false).await;
    assert!(
        c.find_all(Locator::Css("button"))
            .await
            .map(|b| b.len())
            .unwrap_or(0)
            <= 1,
        "only Sign out"
    );
    let nav = find(&c, "header nav")
        .await
        .text()
        .await
        .unwrap_or_default();
    assert!(!nav.contains("Users") && !nav.contains("Audit"), "{nav}");
    let answer: Value = c
        .execute_async(
            r#"const done = arguments[0];
               const h = JSON.parse(document.body.getAttribute('hx-headers') || '{}');
               fetch('/api/v1/flows/tag-segmentation/disable', { method: 'POST', headers: h })
                 .then(r => r.json().then(b => done({ status: r.status, code: b.code })))
                 .catch(e => done({ status: 0, code: String(e) }));"#,
            vec![],
        )
        .await
        .expect("fetch");
    assert_eq!(answer["status"], 403, "{answer}");
    assert_eq!(answer["code"], "forbidden");
    let (status, _) = a
        .as_role(
            Role::Viewer,
            Method::POST,
            "/api/v1/flows/tag-segmentation/disable",
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (_, flow) = a
        .owner(Method::GET, "/api/v1/flows/tag-segmentation", None)
        .await;
    assert_eq!(flow["enabled"], true, "still enabled");

    c.close().await.expect("close the browser");
    drop(driver);
    a.shutdown().await;
}
