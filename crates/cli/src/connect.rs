//! `hlbridge connect`: store a connection, its secrets sealed in the vault.
//!
//! - `connect highlevel --client-id … --client-secret …` runs the OAuth authorization-code
//!   flow: it prints the authorize URL (HighLevel's location chooser, or
//!   `{--base-url}/oauth/chooselocation` for a sandbox), waits on a loopback callback
//!   (`http://127.0.0.1:<--callback-port>/callback`, which must be a redirect URI of the
//!   app) for the redirect with the code, checks `state`, exchanges the code and stores the
//!   connection. Agency (Company) installs then get a token minted for each installed
//!   location. The scopes asked for are `--scopes`, or exactly what the enabled flows in
//!   `--flows` need from this connection.
//! - `connect highlevel --token …` stores a Private Integration Token.
//! - `connect app <name> --base-url … --bearer …|--api-key-header H --api-key …|--basic
//!   user:pass [--hmac-secret …]` stores an app connection for `http` steps (and the secret
//!   its webhooks are signed with).
//!
//! Secrets can be given as `@FILE` or `-` (standard input) instead of on the command line,
//! and are never printed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use hlbridge_engine::security::oauth::{self, CallbackListener};
use hlbridge_engine::security::scopes::{AGENCY_SCOPES, scopes_for_connection};
use hlbridge_engine::security::{Actor, AppAuth, ConnectionInfo, Secret};
use hlbridge_engine::validate::compile_paths;
use hlbridge_highlevel::{PRODUCTION_BASE_URL, Url};

use crate::connections::describe;
use crate::flows::DataArgs;
use crate::vault::{open_security, secret_arg};

/// Arguments of `hlbridge connect`.
#[derive(Args, Debug)]
pub struct ConnectArgs {
    #[command(subcommand)]
    command: ConnectCommand,
}

#[derive(Subcommand, Debug)]
enum ConnectCommand {
    /// Connect HighLevel: OAuth (authorization code, location or agency) or a Private
    /// Integration Token (`--token`).
    Highlevel(Box<HighlevelArgs>),
    /// Connect an app: base URL and how its requests authenticate.
    App(Box<AppArgs>),
}

/// Arguments of `hlbridge connect highlevel`.
#[derive(Args, Debug)]
pub struct HighlevelArgs {
    /// Name flows refer to (`connection = "…"`).
    #[arg(long, default_value = "default")]
    name: String,
    /// OAuth client id of your HighLevel app.
    #[arg(long, env = "HLBRIDGE_CLIENT_ID", value_name = "ID")]
    client_id: Option<String>,
    /// OAuth client secret (`@FILE`, `-` for standard input, or the value).
    #[arg(
        long,
        env = "HLBRIDGE_CLIENT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    client_secret: Option<String>,
    /// A Private Integration Token instead of OAuth (`@FILE`, `-`, or the value).
    #[arg(long, conflicts_with_all = ["client_id", "client_secret", "agency"], value_name = "TOKEN")]
    token: Option<String>,
    /// The location (sub-account) the Private Integration Token belongs to.
    #[arg(long, value_name = "ID")]
    location_id: Option<String>,
    /// Scopes to ask for (comma or space separated). Default: what the enabled flows in
    /// `--flows` need from this connection.
    #[arg(long, value_name = "SCOPES")]
    scopes: Option<String>,
    /// Flow files or directories whose enabled flows decide the scopes.
    #[arg(long = "flows", value_name = "PATH")]
    flows: Vec<PathBuf>,
    /// API base URL: a sandbox's (`http://127.0.0.1:8089`) instead of HighLevel's.
    #[arg(long, env = "HLBRIDGE_BASE_URL", value_name = "URL")]
    base_url: Option<String>,
    /// The authorize page. Default: HighLevel's location chooser, or the sandbox's
    /// `{--base-url}/oauth/chooselocation`.
    #[arg(long, value_name = "URL")]
    authorize_url: Option<String>,
    /// An agency (Company) install: adds the scopes to list installed locations and mint
    /// location tokens.
    #[arg(long)]
    agency: bool,
    /// Port of the loopback callback; the app's redirect URI must be
    /// `http://127.0.0.1:<PORT>/callback` (0: any free port, fine for the sandbox).
    #[arg(long, default_value_t = 0, value_name = "PORT")]
    callback_port: u16,
    /// How long to wait for the authorization.
    #[arg(long, default_value = "10m", value_parser = crate::audit::parse_span, value_name = "DURATION")]
    timeout: Duration,
    #[command(flatten)]
    data: DataArgs,
}

/// Arguments of `hlbridge connect app`.
#[derive(Args, Debug)]
pub struct AppArgs {
    /// Name `http` steps and app webhook triggers refer to.
    name: String,
    /// Base URL step URLs are joined to.
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
    /// `Authorization: Bearer <TOKEN>` on every request (`@FILE`, `-`, or the value).
    #[arg(long, value_name = "TOKEN", conflicts_with_all = ["api_key", "basic"])]
    bearer: Option<String>,
    /// Header carrying the API key.
    #[arg(long, value_name = "HEADER", requires = "api_key")]
    api_key_header: Option<String>,
    /// The API key (`@FILE`, `-`, or the value).
    #[arg(long, value_name = "KEY", conflicts_with = "basic")]
    api_key: Option<String>,
    /// Basic auth as `user:password` (`@FILE`, `-`, or the value).
    #[arg(long, value_name = "USER:PASSWORD")]
    basic: Option<String>,
    /// Secret the app signs its webhooks with (HMAC-SHA256) (`@FILE`, `-`, or the value).
    #[arg(long, value_name = "SECRET")]
    hmac_secret: Option<String>,
    #[command(flatten)]
    data: DataArgs,
}

/// Runs `hlbridge connect …`.
pub async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    match args.command {
        ConnectCommand::Highlevel(a) => {
            let info = connect_highlevel(*a, |url| {
                println!("Open this URL in a browser and approve the app:\n\n  {url}\n");
                println!("Waiting for the redirect…");
            })
            .await?;
            println!("{}", describe(&info));
            Ok(())
        }
        ConnectCommand::App(a) => {
            let info = connect_app(*a).await?;
            println!("{}", describe(&info));
            Ok(())
        }
    }
}

fn parse_scopes(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The scopes to ask for: `--scopes`, or what the enabled flows in `--flows` need.
fn scopes(args: &HighlevelArgs) -> anyhow::Result<Vec<String>> {
    let mut scopes = match &args.scopes {
        Some(s) => parse_scopes(s),
        None => {
            if args.flows.is_empty() {
                bail!(
                    "give --scopes, or --flows DIR to ask for exactly what your flows need from connection `{}`",
                    args.name
                );
            }
            let flows = compile_paths(&args.flows, &Default::default()).map_err(|d| {
                anyhow!(
                    "{}",
                    d.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })?;
            let s = scopes_for_connection(flows.iter(), &args.name);
            if s.is_empty() && !args.agency {
                bail!(
                    "no enabled flow in {} uses connection `{}`; give --scopes",
                    args.flows
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    args.name
                );
            }
            s
        }
    };
    if args.agency {
        scopes.extend(AGENCY_SCOPES.iter().map(|s| s.to_string()));
        scopes.sort();
        scopes.dedup();
    }
    Ok(scopes)
}

/// `connect highlevel`: `on_url` is given the authorize URL to open.
pub async fn connect_highlevel(
    args: HighlevelArgs,
    on_url: impl FnOnce(&Url),
) -> anyhow::Result<ConnectionInfo> {
    let base_text = args
        .base_url
        .clone()
        .unwrap_or_else(|| PRODUCTION_BASE_URL.to_owned());
    let base = Url::parse(&base_text).with_context(|| format!("--base-url `{base_text}`"))?;
    let sec = open_security(&args.data).await?;
    let conns = sec.connections().await?;
    let by = Actor::cli();
    if let Some(t) = &args.token {
        let token = secret_arg(t, "token")?;
        let scopes = args.scopes.as_deref().map(parse_scopes);
        let given_base = args.base_url.as_ref().map(|_| &base);
        return Ok(conns
            .create_token(
                &args.name,
                given_base,
                &token,
                args.location_id.as_deref(),
                scopes,
                &by,
            )
            .await?);
    }
    let client_id = args
        .client_id
        .clone()
        .ok_or_else(|| anyhow!("give --client-id and --client-secret (OAuth), or --token"))?;
    let client_secret = secret_arg(
        args.client_secret
            .as_deref()
            .ok_or_else(|| anyhow!("give --client-secret (or HLBRIDGE_CLIENT_SECRET)"))?,
        "client secret",
    )?;
    let scopes = scopes(&args)?;
    let authorize = match (&args.authorize_url, &args.base_url) {
        (Some(u), _) => Url::parse(u).with_context(|| format!("--authorize-url `{u}`"))?,
        (None, Some(_)) => oauth::endpoint(&base, "/oauth/chooselocation")?,
        (None, None) => Url::parse(oauth::HIGHLEVEL_AUTHORIZE_URL)?,
    };
    let listener = CallbackListener::bind(args.callback_port).await?;
    let redirect = listener.redirect_uri().to_owned();
    let url = oauth::authorize_url(&authorize, &client_id, &redirect, &scopes, listener.state());
    on_url(&url);
    let code = listener.wait(args.timeout).await?;
    let tokens = oauth::exchange_code(
        &oauth::http_client(),
        &base,
        &client_id,
        &client_secret,
        &code,
        &redirect,
    )
    .await?;
    Ok(conns
        .create_oauth(&args.name, &base, &client_id, &client_secret, &tokens, &by)
        .await?)
}

/// `connect app`.
pub async fn connect_app(args: AppArgs) -> anyhow::Result<ConnectionInfo> {
    let base = args
        .base_url
        .as_deref()
        .map(|u| Url::parse(u).with_context(|| format!("--base-url `{u}`")))
        .transpose()?;
    let auth = if let Some(b) = &args.bearer {
        AppAuth::Bearer(secret_arg(b, "bearer token")?)
    } else if let Some(k) = &args.api_key {
        AppAuth::ApiKey {
            header: args
                .api_key_header
                .clone()
                .unwrap_or_else(|| "X-API-Key".to_owned()),
            key: secret_arg(k, "API key")?,
        }
    } else if let Some(b) = &args.basic {
        let pair = secret_arg(b, "basic credentials")?;
        let (user, pw) = pair
            .expose()
            .split_once(':')
            .ok_or_else(|| anyhow!("--basic must be USER:PASSWORD"))?;
        AppAuth::Basic {
            username: user.to_owned(),
            password: Secret::new(pw),
        }
    } else {
        AppAuth::None
    };
    let hmac = args
        .hmac_secret
        .as_deref()
        .map(|h| secret_arg(h, "HMAC secret"))
        .transpose()?;
    let sec = open_security(&args.data).await?;
    let conns = sec.connections().await?;
    Ok(conns
        .create_app(
            &args.name,
            base.as_ref(),
            &auth,
            hmac.as_ref(),
            &Actor::cli(),
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hlbridge_sandbox::{Sandbox, SandboxConfig};

    fn data(tag: &str) -> DataArgs {
        DataArgs {
            data: Some(
                std::env::temp_dir().join(format!("hlbridge-cli-{tag}-{}", uuid::Uuid::new_v4())),
            ),
            ..DataArgs::default()
        }
    }

    fn hl_args(data: DataArgs) -> HighlevelArgs {
        HighlevelArgs {
            name: "default".into(),
            client_id: None,
            client_secret: None,
            token: None,
            location_id: None,
            scopes: None,
            flows: Vec::new(),
            base_url: None,
            authorize_url: None,
            agency: false,
            callback_port: 0,
            timeout: Duration::from_secs(60),
            data,
        }
    }

    #[test]
    fn scopes_from_flows_or_flag() {
        let mut a = hl_args(DataArgs::default());
        assert!(scopes(&a).is_err(), "neither --scopes nor --flows");
        a.scopes = Some("contacts.write, contacts.readonly contacts.write".into());
        assert_eq!(
            scopes(&a).expect("scopes"),
            vec!["contacts.readonly", "contacts.write"]
        );
        a.agency = true;
        assert!(
            scopes(&a)
                .expect("scopes")
                .contains(&"oauth.write".to_owned())
        );
        let dir = std::env::temp_dir().join(format!("hlbridge-cli-flows-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join("a.toml"),
            "id = \"a\"\n[trigger]\ntype = \"app_webhook\"\nsecret = \"s\"\n[[steps]]\nid = \"t\"\ntype = \"highlevel\"\noperation = \"contacts.tags.add\"\nparams = { contactId = \"{{ event.id }}\", tags = [\"x\"] }\n",
        )
        .expect("write");
        std::fs::write(
            dir.join("b.toml"),
            "id = \"b\"\nenabled = false\n[trigger]\ntype = \"app_webhook\"\nsecret = \"s\"\n[[steps]]\nid = \"t\"\ntype = \"highlevel\"\noperation = \"calendars.list\"\n",
        )
        .expect("write");
        let mut a = hl_args(DataArgs::default());
        a.flows = vec![dir.clone()];
        assert_eq!(
            scopes(&a).expect("from flows"),
            vec!["contacts.write"],
            "only the enabled flow counts"
        );
        a.name = "other".into();
        assert!(scopes(&a).is_err(), "no flow uses `other`");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connect_against_the_sandbox_like_a_person() {
        let sb = Sandbox::start(SandboxConfig::for_tests())
            .await
            .expect("sandbox");
        let info = sb.info();
        let d = data("connect");
        let mut a = hl_args(d.clone());
        a.client_id = Some(info.oauth.client_id.clone());
        a.client_secret = Some(info.oauth.client_secret.clone());
        a.scopes = Some("contacts.readonly".into());
        a.base_url = Some(info.base_url.clone());
        let loc = info.location_id.clone();
        let approve = std::sync::Arc::new(std::sync::Mutex::new(None));
        let slot = approve.clone();
        let made = connect_highlevel(a, move |url| {
            assert!(url.as_str().contains("/oauth/chooselocation?"));
            assert!(url.as_str().contains("scope=contacts.readonly"));
            // The person clicks the location on the authorize page.
            let click = format!("{url}&approve=1&location_id={loc}");
            if let Ok(mut s) = slot.lock() {
                *s = Some(tokio::spawn(async move {
                    reqwest::get(click).await.map(|r| r.status())
                }));
            }
        })
        .await
        .expect("connect");
        let clicked = approve
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .expect("clicked");
        assert_eq!(clicked.await.expect("join").expect("get").as_u16(), 200);
        assert_eq!(made.name, "default");
        assert_eq!(
            made.config.location_id.as_deref(),
            Some(info.location_id.as_str())
        );
        let text = describe(&made);
        assert!(
            text.contains("ok") && !text.contains(&info.oauth.client_secret),
            "{text}"
        );

        // PIT and app connections.
        let mut p = hl_args(d.clone());
        p.name = "pit".into();
        p.token = Some(info.token.clone());
        p.location_id = Some(info.location_id.clone());
        let pit = connect_highlevel(p, |_| panic!("no browser for a PIT"))
            .await
            .expect("pit");
        assert!(!describe(&pit).contains(&info.token));
        let app = connect_app(AppArgs {
            name: "ecoapp".into(),
            base_url: Some("https://api.example.invalid".into()),
            bearer: None,
            api_key_header: Some("X-Key".into()),
            api_key: Some("k-123-secret".into()),
            basic: None,
            hmac_secret: Some("h-456-secret".into()),
            data: d.clone(),
        })
        .await
        .expect("app");
        let text = describe(&app);
        assert!(
            text.contains("X-Key") && !text.contains("k-123-secret"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(d.dir());
    }
}
