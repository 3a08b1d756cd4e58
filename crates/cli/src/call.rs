//! `hlbridge call <operation-id> key=value… [--body JSON|@file] [--all]`: call one HighLevel
//! operation and print the JSON response (or, with `--all`, every item of a list operation
//! as NDJSON, across pages).
//!
//! Parameters: `key=value` sends the value as JSON when it parses as JSON (numbers, `true`,
//! arrays, objects) and as text otherwise; `key:=json` requires JSON. Each parameter goes to
//! the path, query or body as the operation declares. `--body` gives raw body fields.

use std::io::{Read, Write};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use futures::StreamExt;
use hlbridge_highlevel::{Auth, Client, ClientConfig, Url, find_operation};
use serde_json::{Map, Value};

/// Arguments of `hlbridge call`.
#[derive(Args, Debug, Clone)]
pub struct CallArgs {
    /// Operation id, e.g. `contacts.get` (see `hlbridge catalog`).
    pub operation: String,

    /// Parameters: `key=value` (JSON if it parses, else text) or `key:=json` (must be JSON).
    pub params: Vec<String>,

    /// Raw JSON body object, or `@file` to read it from a file (`@-`: standard input).
    #[arg(long, value_name = "JSON|@FILE")]
    pub body: Option<String>,

    /// Stream every item of a list operation, across all pages, as NDJSON.
    #[arg(long)]
    pub all: bool,

    /// API base URL (default: HighLevel production, https://services.leadconnectorhq.com).
    #[arg(long, env = "HLBRIDGE_BASE_URL", value_name = "URL")]
    pub base_url: Option<String>,

    /// Location id: sets `locationId` when the operation takes it and it is not given.
    #[arg(long, value_name = "ID")]
    pub location_id: Option<String>,

    /// Bearer token: a Private Integration Token or an OAuth access token.
    #[arg(
        long,
        env = "HLBRIDGE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
}

/// Parses one `key=value` / `key:=json` argument.
fn parse_param(arg: &str) -> anyhow::Result<(String, Value)> {
    let eq = arg
        .find('=')
        .ok_or_else(|| anyhow!("expected key=value or key:=json, got '{arg}'"))?;
    let (key, raw) = (&arg[..eq], &arg[eq + 1..]);
    let (key, value) = match key.strip_suffix(':') {
        Some(k) => {
            let v = serde_json::from_str(raw)
                .with_context(|| format!("the value of '{k}' (after ':=') is not JSON: {raw}"))?;
            (k, v)
        }
        None => (
            key,
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string())),
        ),
    };
    if key.is_empty() {
        bail!("missing parameter name in '{arg}'");
    }
    Ok((key.to_string(), value))
}

/// Reads `--body`: inline JSON, `@file` or `@-`.
fn read_body(arg: &str) -> anyhow::Result<Map<String, Value>> {
    let (text, origin) = match arg.strip_prefix('@') {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("could not read the body from standard input")?;
            (s, "standard input".to_string())
        }
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("could not read the body file {path}"))?,
            path.to_string(),
        ),
        None => (arg.to_string(), "--body".to_string()),
    };
    match serde_json::from_str(&text).with_context(|| format!("{origin} is not valid JSON"))? {
        Value::Object(m) => Ok(m),
        _ => bail!("{origin} must be a JSON object"),
    }
}

/// Builds the one parameter object the client takes.
fn build_params(
    op: &hlbridge_highlevel::Operation,
    args: &CallArgs,
) -> anyhow::Result<Map<String, Value>> {
    let mut params = Map::new();
    for p in &args.params {
        let (k, v) = parse_param(p)?;
        params.insert(k, v);
    }
    if let Some(body) = &args.body {
        let mut raw = read_body(body)?;
        // A `body=` text parameter (a note's text) is a body field too.
        if let Some(text) = params.remove("body") {
            raw.insert("body".into(), text);
        }
        params.insert("body".into(), Value::Object(raw));
    }
    if let Some(loc) = &args.location_id {
        let given = |name: &str| {
            params.get(name).is_some_and(|v| !v.is_null())
                || params
                    .get("body")
                    .and_then(|b| b.get(name))
                    .is_some_and(|v| !v.is_null())
        };
        let name = ["locationId", "location_id"]
            .into_iter()
            .find(|n| op.param(n).is_some());
        if let Some(name) = name
            && !given(name)
        {
            params.insert(name.to_string(), Value::String(loc.clone()));
        }
    }
    Ok(params)
}

/// Runs `hlbridge call`.
pub async fn run(args: CallArgs) -> anyhow::Result<()> {
    // Messages of the client's errors already name their causes: keep them as one line.
    let op = find_operation(&args.operation).map_err(|e| anyhow!("{e}"))?;
    let params = Value::Object(build_params(op, &args)?);
    let token = args
        .token
        .clone()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| anyhow!("no token: pass --token or set HLBRIDGE_TOKEN"))?;
    let mut config = ClientConfig::default();
    if let Some(base) = &args.base_url {
        config.base_url =
            Url::parse(base).with_context(|| format!("invalid --base-url '{base}'"))?;
    }
    let client = Client::new(config).map_err(|e| anyhow!("{e}"))?;
    let auth = match &args.location_id {
        Some(loc) => Auth::token_for(token, loc.clone()),
        None => Auth::token(token),
    };

    match print(&client, &auth, op, params, args.all).await {
        // `hlbridge call … | head`: the reader has seen enough.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

async fn print(
    client: &Client,
    auth: &Auth,
    op: &'static hlbridge_highlevel::Operation,
    params: Value,
    all: bool,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    if all {
        let mut items = client.paginate(auth, op, params);
        let mut out = stdout.lock();
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| anyhow!("{e}"))?;
            writeln!(out, "{item}")?;
        }
        out.flush()?;
    } else {
        let resp = client
            .call(auth, op, &params)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let mut out = stdout.lock();
        writeln!(out, "{}", serde_json::to_string_pretty(&resp.body)?)?;
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(op: &str, params: &[&str]) -> CallArgs {
        CallArgs {
            operation: op.into(),
            params: params.iter().map(|s| s.to_string()).collect(),
            body: None,
            all: false,
            base_url: None,
            location_id: None,
            token: Some("t".into()),
        }
    }

    fn op(id: &str) -> &'static hlbridge_highlevel::Operation {
        hlbridge_highlevel::operations::find(id).expect("operation")
    }

    #[test]
    fn values_are_json_when_they_parse() {
        assert_eq!(
            parse_param("limit=20").expect("ok"),
            ("limit".into(), json!(20))
        );
        assert_eq!(
            parse_param("completed=true").expect("ok"),
            ("completed".into(), json!(true))
        );
        assert_eq!(
            parse_param("tags=[\"a\",\"b\"]").expect("ok").1,
            json!(["a", "b"])
        );
        assert_eq!(
            parse_param("name=Jane Doe").expect("ok").1,
            json!("Jane Doe")
        );
        assert_eq!(
            parse_param("phone=+15551234").expect("ok").1,
            json!("+15551234")
        );
        assert_eq!(parse_param("zip=007").expect("ok").1, json!("007"));
        assert_eq!(
            parse_param("q=a=b").expect("ok"),
            ("q".into(), json!("a=b"))
        );
        assert_eq!(parse_param("n:=5").expect("ok"), ("n".into(), json!(5)));
        assert_eq!(parse_param("f:={\"x\":1}").expect("ok").1, json!({"x": 1}));
        assert!(parse_param("n:=nope").is_err());
        assert!(parse_param("novalue").is_err());
        assert!(parse_param("=1").is_err());
    }

    #[test]
    fn location_id_fills_the_right_name_only_when_missing() {
        let mut a = args("contacts.list", &[]);
        a.location_id = Some("L1".into());
        assert_eq!(
            build_params(op("contacts.list"), &a).expect("ok")["locationId"],
            "L1"
        );

        let mut a = args("opportunities.search", &[]);
        a.location_id = Some("L1".into());
        assert_eq!(
            build_params(op("opportunities.search"), &a).expect("ok")["location_id"],
            "L1"
        );

        let mut a = args("contacts.list", &["locationId=L2"]);
        a.location_id = Some("L1".into());
        assert_eq!(
            build_params(op("contacts.list"), &a).expect("ok")["locationId"],
            "L2"
        );

        let mut a = args("contacts.get", &["contactId=c"]);
        a.location_id = Some("L1".into());
        assert!(
            build_params(op("contacts.get"), &a)
                .expect("ok")
                .get("locationId")
                .is_none()
        );
    }

    #[test]
    fn body_flag_and_note_text() {
        let mut a = args(
            "contacts.notes.create",
            &["contactId=c", "body=Called back"],
        );
        a.body = Some("{\"userId\": \"u1\"}".into());
        let p = build_params(op("contacts.notes.create"), &a).expect("ok");
        assert_eq!(p["body"], json!({"userId": "u1", "body": "Called back"}));
        a.body = Some("[1]".into());
        assert!(build_params(op("contacts.notes.create"), &a).is_err());
    }

    #[tokio::test]
    async fn unknown_operation_suggests() {
        let err = run(args("contacts.tag.add", &[]))
            .await
            .expect_err("unknown");
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "unknown operation 'contacts.tag.add'; did you mean: contacts.tags.add"
            ),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn missing_token_is_reported() {
        let mut a = args("contacts.get", &["contactId=c"]);
        a.token = None;
        let err = run(a).await.expect_err("no token");
        assert!(err.to_string().contains("HLBRIDGE_TOKEN"));
    }
}
