//! `hlbridge flows validate|run|test`: check flow files, run one event through a flow now,
//! and run behaviour tests.
//!
//! - `validate <files|dirs…>` compiles every flow (in a directory: every `*.toml` except
//!   `*.test.toml`) and checks every behaviour test file, printing **all** problems as
//!   `file:line:col: error: …` with a hint; exits non-zero on any.
//! - `run <flow-file-or-id> --event JSON|@file` runs one event through a flow now against
//!   HighLevel (or the sandbox, with `--base-url`) and prints each step's input, output or
//!   error and timing. The run is recorded in the store (`hlbridge runs`).
//! - `test <files|dirs…>` runs behaviour tests (see [`behaviour`]).

pub mod app;
pub mod behaviour;
pub mod templates;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use hlbridge_engine::validate::{CompiledFlow, ValidationContext, compile_file, compile_paths};
use hlbridge_engine::{
    ClientApi, Connection, Engine, EngineConfig, HighLevelApi, RunDetail, RunState,
};
use hlbridge_highlevel::{Auth, Client, ClientConfig, Url};
use serde_json::Value;

/// The data directory option shared by every command that touches the store.
#[derive(Args, Debug, Clone, Default)]
pub struct DataArgs {
    /// Data directory (the database is `hlbridge.db` inside). Default: `$HLBRIDGE_DATA`,
    /// else `$XDG_DATA_HOME/hlbridge`, else `~/.local/share/hlbridge`.
    #[arg(long, env = "HLBRIDGE_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// PostgreSQL URL (`postgres://user:password@host:5432/database`); without it, SQLite
    /// in --data.
    #[arg(
        long,
        env = "HLBRIDGE_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database: Option<String>,
}

impl DataArgs {
    /// The store these options name (`--database`, else SQLite in `--data`).
    pub fn db(&self) -> crate::engine_args::DatabaseArgs {
        crate::engine_args::DatabaseArgs {
            data: self.data.clone(),
            database: self.database.clone(),
            db_connections: 4,
        }
    }

    /// The data directory.
    pub fn dir(&self) -> PathBuf {
        self.data
            .clone()
            .unwrap_or_else(hlbridge_engine::store::default_data_dir)
    }
}

/// Arguments of `hlbridge flows`.
#[derive(Args, Debug)]
pub struct FlowsArgs {
    #[command(subcommand)]
    command: FlowsCommand,
}

#[derive(Subcommand, Debug)]
enum FlowsCommand {
    /// Compile flows and check behaviour test files; print every problem with file:line:col.
    Validate(ValidateArgs),
    /// Run one event through a flow now and print each step (input, output or error, timing).
    Run(Box<RunArgs>),
    /// Run behaviour tests (`*.test.toml`) against an in-process sandbox and stand-in app.
    Test(TestArgs),
}

/// Arguments of `hlbridge flows validate`.
#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Flow files, behaviour test files (`*.test.toml`) or directories of them.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

/// Arguments of `hlbridge flows test`.
#[derive(Args, Debug)]
pub struct TestArgs {
    /// Test files (`*.test.toml`) or directories holding them (also in their `tests/`).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

/// How to reach HighLevel.
#[derive(Args, Debug, Clone, Default)]
pub struct HighLevelArgs {
    /// API base URL (default: HighLevel, https://services.leadconnectorhq.com; a sandbox:
    /// http://127.0.0.1:8089).
    #[arg(long, env = "HLBRIDGE_BASE_URL", value_name = "URL")]
    pub base_url: Option<String>,
    /// Private Integration Token or OAuth access token.
    #[arg(
        long,
        env = "HLBRIDGE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// The location (sub-account) the token belongs to; fills `locationId`.
    #[arg(long, env = "HLBRIDGE_LOCATION_ID", value_name = "ID")]
    pub location_id: Option<String>,
}

/// Where `http` steps go (the same options as `hlbridge serve`).
#[derive(Args, Debug, Clone, Default)]
pub struct AppArgs {
    /// An app connection `NAME=BASE_URL` that `http` steps refer to, e.g.
    /// `ecosend=https://api.ecosend.example` (repeatable).
    #[arg(long = "app-connection", value_name = "NAME=URL")]
    pub apps: Vec<String>,
    /// A header sent with every request of an app connection, `NAME:HEADER=VALUE`, e.g.
    /// `ecosend:Authorization=Bearer s3cret` (repeatable).
    #[arg(long = "app-header", value_name = "NAME:HEADER=VALUE")]
    pub app_headers: Vec<String>,
    /// Let `http` steps reach loopback addresses (an app on this machine).
    #[arg(long)]
    pub allow_loopback: bool,
    /// Let `http` steps reach private, link-local and loopback addresses (trusted networks
    /// only).
    #[arg(long)]
    pub allow_private_network: bool,
}

impl AppArgs {
    /// Applies the options to an engine configuration.
    pub fn apply(&self, config: &mut EngineConfig) -> anyhow::Result<()> {
        for a in &self.apps {
            let (name, url) = split_pair(a, "--app-connection")?;
            Url::parse(url)
                .with_context(|| format!("--app-connection {name}: {url} is not a URL"))?;
            config
                .app_connections
                .entry(name.to_owned())
                .or_default()
                .base_url = Some(url.to_owned());
        }
        for h in &self.app_headers {
            let (name, header) = h
                .split_once(':')
                .ok_or_else(|| anyhow!("--app-header expects NAME:HEADER=VALUE, got {h:?}"))?;
            let (header, value) = split_pair(header, "--app-header")?;
            config
                .app_connections
                .get_mut(name)
                .ok_or_else(|| anyhow!("--app-header {name}: no --app-connection named `{name}`"))?
                .headers
                .insert(header.to_owned(), value.to_owned());
        }
        config.network.allow_loopback |= self.allow_loopback;
        config.network.allow_private_network |= self.allow_private_network;
        Ok(())
    }
}

fn split_pair<'a>(arg: &'a str, option: &str) -> anyhow::Result<(&'a str, &'a str)> {
    arg.split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| anyhow!("{option} expects NAME=VALUE, got {arg:?}"))
}

/// Arguments of `hlbridge flows run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// A flow file, or the id of a flow found in `--flows`.
    #[arg(value_name = "FLOW")]
    flow: String,
    /// The event: JSON text, `@file`, or `@-` for standard input.
    #[arg(long, default_value = "{}", value_name = "JSON|@FILE")]
    event: String,
    /// Where to look a flow id up: files or directories (default: `flows`, `flows/templates`).
    #[arg(
        long = "flows",
        env = "HLBRIDGE_FLOWS",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    flows: Vec<PathBuf>,
    #[command(flatten)]
    highlevel: HighLevelArgs,
    #[command(flatten)]
    apps: AppArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Print the run as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `hlbridge flows …`.
pub async fn run(args: FlowsArgs) -> anyhow::Result<()> {
    match args.command {
        FlowsCommand::Validate(a) => validate(a),
        FlowsCommand::Run(a) => run_flow(*a).await,
        FlowsCommand::Test(a) => test(a).await,
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit_once('\n')
        .map_or(before, |(_, l)| l)
        .chars()
        .count()
        + 1;
    (line, col)
}

/// Flow files and test files among `paths` (directories: not recursive, plus `tests/`
/// for test files).
fn split_paths(paths: &[PathBuf]) -> anyhow::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut flows = Vec::new();
    let mut tests = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot read {}", p.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            for f in found {
                if behaviour::is_test_file(&f) {
                    tests.push(f);
                } else {
                    flows.push(f);
                }
            }
            tests.extend(behaviour::collect(&[p.join("tests")]).unwrap_or_default());
        } else if behaviour::is_test_file(p) {
            tests.push(p.clone());
        } else {
            flows.push(p.clone());
        }
    }
    Ok((flows, tests))
}

fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let (flow_files, test_files) = split_paths(&args.paths)?;
    if flow_files.is_empty() && test_files.is_empty() {
        bail!("no flow or test files found in {:?}", args.paths);
    }
    let mut errors = 0usize;
    let vctx = ValidationContext::default();
    let ok_flows = match compile_paths(&flow_files, &vctx) {
        Ok(flows) => flows.len(),
        Err(diags) => {
            for d in &diags {
                println!("{d}");
            }
            errors += diags.len();
            let bad: std::collections::HashSet<&str> =
                diags.iter().map(|d| d.file.as_str()).collect();
            flow_files
                .iter()
                .filter(|f| !bad.contains(f.display().to_string().as_str()))
                .count()
        }
    };
    let mut ok_tests = 0usize;
    for t in &test_files {
        match behaviour::parse_file(t) {
            Ok(test) => {
                let mut problems = behaviour::check(t, &test);
                let flow = behaviour::flow_path(t, &test);
                let listed = flow_files.iter().any(|f| same_file(f, &flow));
                if problems.is_empty()
                    && !listed
                    && let Err(diags) = compile_file(&flow, &vctx)
                {
                    problems.extend(diags.iter().map(ToString::to_string));
                }
                if problems.is_empty() {
                    ok_tests += 1;
                } else {
                    errors += problems.len();
                    for p in problems {
                        println!("{p}");
                    }
                }
            }
            Err(e) => {
                errors += 1;
                println!("{e}");
            }
        }
    }
    if errors > 0 {
        bail!(
            "{errors} error(s); {ok_flows} of {} flow(s) and {ok_tests} of {} test file(s) OK",
            flow_files.len(),
            test_files.len()
        );
    }
    let tests = if test_files.is_empty() {
        String::new()
    } else {
        format!(", {ok_tests} behaviour test file(s) OK")
    };
    println!("{ok_flows} flows OK{tests}");
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

async fn test(args: TestArgs) -> anyhow::Result<()> {
    let files = behaviour::collect(&args.paths)?;
    if files.is_empty() {
        bail!("no behaviour test files (*.test.toml) in {:?}", args.paths);
    }
    let (mut passed, mut failed, mut broken) = (0usize, 0usize, 0usize);
    for f in &files {
        match behaviour::run_file(f).await {
            Ok(report) => {
                println!("{} (flow {})", f.display(), report.flow_id);
                for c in &report.cases {
                    if c.failures.is_empty() {
                        passed += 1;
                        println!("  ✓ {}", c.name);
                    } else {
                        failed += 1;
                        println!("  ✗ {}", c.name);
                        for msg in &c.failures {
                            println!("      - {}", msg.replace('\n', "\n        "));
                        }
                    }
                }
            }
            Err(e) => {
                broken += 1;
                println!("{}\n  ✗ {e:#}", f.display());
            }
        }
    }
    println!(
        "\n{} file(s), {} case(s): {passed} passed, {failed} failed{}",
        files.len(),
        passed + failed,
        if broken > 0 {
            format!(", {broken} file(s) could not run")
        } else {
            String::new()
        }
    );
    if failed > 0 || broken > 0 {
        bail!("behaviour tests failed");
    }
    Ok(())
}

/// Reads `--event`: inline JSON, `@file` or `@-`.
pub fn read_json_arg(arg: &str, what: &str) -> anyhow::Result<Value> {
    let (text, origin) = match arg.strip_prefix('@') {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading standard input")?;
            (s, "standard input".to_owned())
        }
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
            path.to_owned(),
        ),
        None => (arg.to_owned(), "the argument".to_owned()),
    };
    serde_json::from_str(&text).with_context(|| format!("{what} ({origin}) is not valid JSON"))
}

/// Finds a flow by file or id.
fn find_flow(flow: &str, search: &[PathBuf]) -> anyhow::Result<CompiledFlow> {
    let vctx = ValidationContext::default();
    let as_path = Path::new(flow);
    if as_path.is_file() {
        return compile_file(as_path, &vctx).map_err(diagnostics);
    }
    let search: Vec<PathBuf> = if search.is_empty() {
        ["flows", "flows/templates"]
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .collect()
    } else {
        search.to_vec()
    };
    let (files, _) = split_paths(&search)?;
    let mut ids = Vec::new();
    for f in files {
        if let Ok(c) = compile_file(&f, &vctx) {
            if c.id() == flow {
                return Ok(c);
            }
            ids.push(c.id().to_owned());
        }
    }
    if ids.is_empty() {
        bail!("{flow} is not a file, and no flows were found to look the id up (use --flows DIR)");
    }
    ids.sort();
    bail!("no flow `{flow}`; flows found: {}", ids.join(", "))
}

fn diagnostics(d: Vec<hlbridge_engine::Diagnostic>) -> anyhow::Error {
    anyhow!(
        "{}",
        d.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// The HighLevel API from the options; every connection name in `names` uses the token.
pub fn highlevel_api(
    args: &HighLevelArgs,
    names: &[&str],
) -> anyhow::Result<Option<Arc<dyn HighLevelApi>>> {
    let Some(token) = &args.token else {
        return Ok(None);
    };
    let mut config = ClientConfig::default();
    if let Some(base) = &args.base_url {
        config.base_url =
            Url::parse(base).with_context(|| format!("--base-url {base} is not a URL"))?;
    }
    let client = Client::new(config).map_err(|e| anyhow!("{e}"))?;
    let auth = match &args.location_id {
        Some(loc) => Auth::token_for(token.clone(), loc.clone()),
        None => Auth::token(token.clone()),
    };
    let mut conns = HashMap::new();
    for name in names.iter().copied().chain(["default"]) {
        conns.insert(
            name.to_owned(),
            Connection {
                auth: auth.clone(),
                location_id: args.location_id.clone(),
            },
        );
    }
    Ok(Some(Arc::new(ClientApi::new(client, conns))))
}

async fn run_flow(args: RunArgs) -> anyhow::Result<()> {
    let flow = find_flow(&args.flow, &args.flows)?;
    let event = read_json_arg(&args.event, "--event")?;
    let mut config = EngineConfig::with_data_dir(args.data.dir());
    args.apps.apply(&mut config)?;
    let connection = flow.flow.connection.clone();
    let api = highlevel_api(&args.highlevel, &[&connection])?;
    if api.is_none() {
        eprintln!(
            "note: no HighLevel token (--token or HLBRIDGE_TOKEN): HighLevel steps will fail"
        );
    }
    let engine = match (&args.data.database, api) {
        (Some(_), api) => {
            let (_, store) = args.data.db().open(false).await?;
            let api = api.unwrap_or_else(|| Arc::new(hlbridge_engine::api::NoHighLevel));
            Engine::with_store(config, store, api)?
        }
        (None, Some(api)) => Engine::open_with(config, api).await?,
        (None, None) => Engine::open(config).await?,
    };
    let id = flow.id().to_owned();
    engine.add_flows(vec![flow]).await?;
    let detail = engine.run_now(&id, event).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
    } else {
        print_run(&detail);
    }
    match detail.run.state {
        RunState::Succeeded | RunState::Skipped => Ok(()),
        state => bail!(
            "the run ended `{state}`{}",
            detail
                .run
                .last_error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
    }
}

/// Milliseconds between two instants, as text.
pub fn millis(from: time::OffsetDateTime, to: Option<time::OffsetDateTime>) -> String {
    match to {
        Some(to) => {
            let ms = (to - from).whole_milliseconds();
            if ms >= 10_000 {
                format!("{:.1} s", ms as f64 / 1000.0)
            } else {
                format!("{ms} ms")
            }
        }
        None => "—".to_owned(),
    }
}

/// Pretty JSON indented by `indent`, cut after `max_lines` lines.
pub fn indented_json(v: &Value, indent: &str, max_lines: usize) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = lines
        .iter()
        .take(max_lines)
        .map(|l| format!("{indent}{l}"))
        .collect();
    if lines.len() > max_lines {
        out.push(format!(
            "{indent}… {} more lines (--json prints everything)",
            lines.len() - max_lines
        ));
    }
    out.join("\n")
}

/// Prints a run step by step.
pub fn print_run(d: &RunDetail) {
    let r = &d.run;
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    println!("run       {}", r.id);
    println!("flow      {}", r.flow_id);
    println!(
        "state     {}{}",
        r.state,
        if r.attempts > 1 {
            format!(" after {} attempts", r.attempts)
        } else {
            String::new()
        }
    );
    println!("created   {}", fmt(r.created_at));
    if let Some(started) = r.started_at {
        println!("took      {}", millis(started, r.finished_at));
    }
    if let Some(of) = r.replay_of {
        println!("replay of {of}");
    }
    if let Some(next) = r.next_attempt_at.filter(|_| r.state == RunState::Failed) {
        println!("next try  {}", fmt(next));
    }
    println!(
        "event     {} (dedupe key {})",
        d.event.id, d.event.dedupe_key
    );
    println!("{}", indented_json(&d.event.payload, "    ", 40));
    if d.steps.is_empty() {
        println!(
            "\nno steps ran{}",
            match r.state {
                RunState::Skipped => " (the flow's filter was false)",
                RunState::Queued => " (queued)",
                _ => "",
            }
        );
    }
    for (i, s) in d.steps.iter().enumerate() {
        let mark = if s.error.is_some() {
            "✗"
        } else if s.output.as_ref().and_then(|o| o.get("passed")) == Some(&Value::Bool(false)) {
            "–"
        } else {
            "✓"
        };
        println!(
            "\n{mark} step {} {}  ({})",
            i + 1,
            s.step_id,
            millis(s.started_at, s.finished_at)
        );
        if let Some(input) = &s.input {
            println!("  input:\n{}", indented_json(input, "    ", 30));
        }
        if let Some(output) = &s.output {
            println!("  output:\n{}", indented_json(output, "    ", 30));
        }
        if let Some(error) = &s.error {
            println!("  error:\n{}", indented_json(error, "    ", 30));
        }
    }
    if let Some(e) = &r.last_error {
        println!("\nlast error: {e}");
    }
    if let Some(body) = &d.error_body {
        println!("response body:\n{}", indented_json(body, "    ", 30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab\ncd", 99), (2, 3));
    }

    #[test]
    fn app_options() {
        let args = AppArgs {
            apps: vec!["ecosend=http://127.0.0.1:9".into()],
            app_headers: vec!["ecosend:Authorization=Bearer s3cret".into()],
            allow_loopback: true,
            allow_private_network: false,
        };
        let mut config = EngineConfig::with_data_dir("/tmp/x");
        args.apply(&mut config).expect("valid");
        let c = &config.app_connections["ecosend"];
        assert_eq!(c.base_url.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(c.headers["Authorization"], "Bearer s3cret");
        assert!(config.network.allow_loopback);
        let bad = AppArgs {
            apps: vec!["ecosend".into()],
            ..AppArgs::default()
        };
        assert!(bad.apply(&mut config).is_err());
    }

    #[test]
    fn every_template_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../flows/templates");
        validate(ValidateArgs { paths: vec![dir] }).expect("templates validate");
    }
}
