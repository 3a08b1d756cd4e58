//! `hlbridge demo --once` and the flow commands, run as the user runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn hlbridge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hlbridge"))
        .args(args)
        .env_remove("HLBRIDGE_DATA")
        .env_remove("HLBRIDGE_TOKEN")
        .env_remove("HLBRIDGE_BASE_URL")
        .output()
        .expect("run hlbridge")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hlbridge-cli-it-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../flows/templates")
}

/// The README's first command: the scenario runs and every expected change happens; the
/// runs stay in the data directory for `hlbridge runs`.
#[test]
fn demo_once_succeeds_and_leaves_its_runs() {
    let data = temp_dir("demo");
    let d = data.to_str().expect("utf-8 path");
    let out = hlbridge(&["demo", "--once", "--port", "0", "--data", d]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("10 of 10 expected changes happened"),
        "{all}"
    );
    for flow in [
        "tag-segmentation",
        "task-updates",
        "contact-lifecycle",
        "contact-lookup",
        "notes-to-app",
        "task-reminders",
    ] {
        assert!(
            stdout.contains(flow),
            "{flow} missing from the output\n{all}"
        );
    }

    let runs = hlbridge(&["runs", "--data", d, "--json", "--limit", "1000"]);
    assert!(runs.status.success(), "{}", text(&runs));
    let list: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("runs JSON");
    let list = list.as_array().expect("array");
    assert!(list.len() >= 10, "{}", text(&runs));
    assert!(
        list.iter()
            .all(|r| r["state"] == "succeeded" || r["state"] == "skipped")
    );
    let id = list[0]["id"].as_str().expect("id");
    let show = hlbridge(&["runs", "show", id, "--data", d]);
    assert!(show.status.success(), "{}", text(&show));
    assert!(
        String::from_utf8_lossy(&show.stdout).contains("step 1"),
        "{}",
        text(&show)
    );
    // A replay from the command line is queued and audited.
    let replay = hlbridge(&["replay", id, "--data", d]);
    assert!(replay.status.success(), "{}", text(&replay));
    assert!(
        String::from_utf8_lossy(&replay.stdout).contains(&format!("replay of {id}")),
        "{}",
        text(&replay)
    );
    let resumed = hlbridge(&["replay", id, "--resume", "--data", d]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    let audit = hlbridge(&["audit", "--json", "--data", d]);
    assert!(audit.status.success(), "{}", text(&audit));
    let entries: serde_json::Value = serde_json::from_slice(&audit.stdout).expect("audit JSON");
    assert!(
        entries.as_array().is_some_and(|a| a
            .iter()
            .any(|e| e["action"] == "run.replayed" && e["target"] == id)),
        "{}",
        text(&audit)
    );
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn flows_validate_and_test_pass_on_the_templates() {
    let dir = templates();
    let dir = dir.to_str().expect("utf-8 path");
    let out = hlbridge(&["flows", "validate", dir]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("6 flows OK"),
        "{}",
        text(&out)
    );
    let out = hlbridge(&["flows", "test", dir]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 failed"),
        "{}",
        text(&out)
    );
}

/// Every problem of every file is reported with file:line:col, and the exit status says so.
#[test]
fn flows_validate_reports_every_error() {
    let dir = temp_dir("validate");
    std::fs::write(
        dir.join("bad.toml"),
        "id = \"bad\"\n[trigger]\ntype = \"app_webhook\"\nsecret = \"s\"\n[[steps]]\nid = \"a\"\ntype = \"highlevel\"\noperation = \"contacts.tag.add\"\n[[steps]]\nid = \"b\"\ntype = \"http\"\nurl = \"{{ steps.nope.x }}\"\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("bad.test.toml"),
        "flow = \"bad.toml\"\n[[cases]]\nname = \"x\"\n[[cases.expect.calls]]\noperation = \"contacts.tags.ad\"\n",
    )
    .expect("write");
    let out = hlbridge(&["flows", "validate", dir.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(stdout.contains("bad.toml:8:"), "{}", text(&out));
    assert!(stdout.contains("unknown step `nope`"), "{}", text(&out));
    assert!(stdout.contains("contacts.tags.add"), "{}", text(&out));
    assert!(stdout.contains("bad.test.toml"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A behaviour test that does not hold fails with a diff of what happened.
#[test]
fn flows_test_reports_a_clear_diff() {
    let dir = temp_dir("diff");
    std::fs::copy(
        templates().join("tag-segmentation.toml"),
        dir.join("flow.toml"),
    )
    .expect("copy");
    std::fs::write(
        dir.join("flow.test.toml"),
        r#"flow = "flow.toml"
[[cases]]
name = "expects the wrong tag"
  [[cases.setup]]
  operation = "contacts.create"
  params = { email = "ada@example.com" }
  [[cases.events]]
  id = "e1"
  type = "tag.added"
  email = "ada@example.com"
  tag = "vip"
  [[cases.expect.calls]]
  operation = "contacts.tags.add"
  params = { tags = ["gold"] }
  [[cases.expect.contacts]]
  email = "ada@example.com"
  tags_include = ["gold"]
"#,
    )
    .expect("write");
    let out = hlbridge(&["flows", "test", dir.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(stdout.contains("✗ expects the wrong tag"), "{}", text(&out));
    assert!(
        stdout.contains("params.tags: no element matches \"gold\""),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("contact(ada@example.com).tags does not contain \"gold\""),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
