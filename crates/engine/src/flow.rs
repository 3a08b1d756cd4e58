//! The flow model: what a flow file (TOML) declares, as typed configuration.
//!
//! A flow is a trigger, an optional filter and a list of steps. Trigger and step kinds are
//! closed enums tagged by `type`; the `///` docs of every field become the descriptions of
//! the JSON Schema published as `docs/flow-schema.json` (see [`json_schema`]).
//!
//! String values of step parameters, the filter and `location_id` are **templates**
//! (minijinja, `{{ … }}`): see [`crate::template`] for the variables they can use.
//!
//! ```toml
//! id = "tag-sync"
//! name = "EcoSend tag added → HighLevel tag"
//!
//! [trigger]
//! type = "app_webhook"
//! secret = "ecosend"
//!
//! [[steps]]
//! id = "contact"
//! type = "find_contact"
//! email = "{{ event.email }}"
//!
//! [[steps]]
//! id = "tag"
//! type = "highlevel"
//! operation = "contacts.tags.add"
//! params = { contactId = "{{ steps.contact.id }}", tags = ["{{ event.tag }}"] }
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One flow: a trigger, an optional filter and steps run in order for every event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "hlbridge flow", extend("$id" = "https://hlbridge.dev/flow-schema.json"))]
pub struct Flow {
    /// Stable identifier of the flow (letters, digits, `-` and `_`). Runs, cursors and
    /// webhook URLs (`/hooks/app/<id>`) refer to it, so do not change it once in use.
    pub id: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the flow does, for people reading the run history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A disabled flow is validated but its trigger does not fire.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Name of the HighLevel connection (token) the flow's HighLevel calls use.
    #[serde(default = "default_connection")]
    pub connection: String,
    /// HighLevel location (sub-account) id, a template. Fills the `locationId` parameter of
    /// every HighLevel operation that takes one and is not mapped explicitly; when absent,
    /// the connection's own location is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    /// What starts a run.
    pub trigger: Trigger,
    /// A condition (template or bare expression); when it is false the run ends as `skipped`
    /// before any step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Steps, run in order. Each step's output is available to later steps as `steps.<id>`.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Retry budget of the flow's runs.
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn default_true() -> bool {
    true
}

fn default_connection() -> String {
    "default".to_owned()
}

/// How a failed run is retried (exponential backoff with full jitter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all (the first included) before the run goes to dead letters.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds (doubled for every further attempt).
    #[serde(default = "default_base_delay_ms")]
    pub base_delay_ms: u64,
    /// Upper bound of a retry delay, in milliseconds.
    #[serde(default = "default_max_delay_ms")]
    pub max_delay_ms: u64,
}

fn default_max_attempts() -> u32 {
    8
}
fn default_base_delay_ms() -> u64 {
    1_000
}
fn default_max_delay_ms() -> u64 {
    3_600_000
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            base_delay_ms: default_base_delay_ms(),
            max_delay_ms: default_max_delay_ms(),
        }
    }
}

/// What starts a run of the flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    /// Polls a HighLevel list operation every few minutes and starts a run for every new
    /// (or updated) item.
    HighlevelPoll(PollTrigger),
    /// A webhook event HighLevel sends to `POST /hooks/highlevel`.
    HighlevelWebhook(HighlevelWebhookTrigger),
    /// An inbound `POST /hooks/app/<flow id>` from another app; its JSON body is the event.
    AppWebhook(AppWebhookTrigger),
    /// A cron schedule.
    Schedule(ScheduleTrigger),
}

impl Trigger {
    /// The `type` tag as written in flow files.
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::HighlevelPoll(_) => "highlevel_poll",
            Trigger::HighlevelWebhook(_) => "highlevel_webhook",
            Trigger::AppWebhook(_) => "app_webhook",
            Trigger::Schedule(_) => "schedule",
        }
    }
}

/// Polling a HighLevel list operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PollTrigger {
    /// Id of a HighLevel trigger (list) operation, e.g. `contacts.search`.
    pub operation: String,
    /// Parameters of the operation (templates may use `flow` only). `locationId` is filled
    /// from the flow's `location_id` when not given.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
    /// Minutes between polls, 1 to 15.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1, max = 15))]
    pub interval_minutes: u32,
    /// `new`: one run per item never seen before (deduped by id, no cap); `updated`: one
    /// run per item whose `updated_field` is later than the stored watermark.
    #[serde(default)]
    pub mode: PollMode,
    /// Field of an item holding its id.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// Field of an item holding its last-update time (for `mode = "updated"`).
    #[serde(default = "default_updated_field")]
    pub updated_field: String,
    /// On the very first poll, also start runs for the items that already exist. By default
    /// the first poll only records them (as seen, or as the watermark), so enabling a flow
    /// does not replay the account's history.
    #[serde(default)]
    pub include_existing: bool,
}

fn default_interval() -> u32 {
    5
}
fn default_id_field() -> String {
    "id".to_owned()
}
fn default_updated_field() -> String {
    "dateUpdated".to_owned()
}

/// Which items of a poll start runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PollMode {
    /// Items whose id was never seen by this flow.
    #[default]
    New,
    /// Items updated since the last poll (by the `updated_field` watermark).
    Updated,
}

/// A HighLevel webhook event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HighlevelWebhookTrigger {
    /// Event types that start a run (`ContactCreate`, `TaskCompleted`, …).
    pub events: Vec<String>,
    /// A poll that catches what webhooks missed (HighLevel drops a webhook after any
    /// failure but a 429). Webhook events and polled items share dedupe keys (object id and
    /// `dateUpdated`), so an object seen both ways runs once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<PollTrigger>,
}

/// An inbound webhook from another app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppWebhookTrigger {
    /// Name of the app secret (from the engine configuration) that authenticates requests;
    /// a value not found there is used as the secret itself.
    pub secret: String,
    /// How requests prove they know the secret.
    #[serde(default)]
    pub auth: AppAuth,
    /// Header carrying the HMAC signature (`auth = "hmac_sha256"`).
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// Template computing the event's dedupe key from `event` (e.g. `{{ event.id }}`); when
    /// absent the SHA-256 of the body is used, so an identical resend is a no-op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_key: Option<String>,
}

fn default_signature_header() -> String {
    "x-signature".to_owned()
}

/// How an app webhook is authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AppAuth {
    /// HMAC-SHA256 of the raw body with the secret, hex or base64 (an optional `sha256=`
    /// prefix is accepted), in `signature_header`.
    #[default]
    HmacSha256,
    /// `Authorization: Bearer <secret>`.
    Bearer,
}

/// A cron schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTrigger {
    /// Cron pattern, 5 fields (minute hour day-of-month month day-of-week) or 6 with
    /// seconds first; aliases such as `@hourly` are accepted.
    pub cron: String,
    /// The time zone the pattern is read in: `UTC` (default), an IANA name such as
    /// `Europe/Paris` (daylight saving followed), or a fixed offset such as `+02:00`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// One step of a flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    /// Calls a HighLevel operation.
    Highlevel(HighlevelStep),
    /// Sends an HTTP request to another app.
    Http(HttpStep),
    /// Looks a HighLevel contact up by email or phone; the output is the contact or `null`.
    FindContact(FindContactStep),
    /// Ends the run as `skipped` when the condition is false.
    Filter(FilterStep),
    /// Runs nested steps once per element of a list.
    ForEach(ForEachStep),
}

impl Step {
    /// The step's id.
    pub fn id(&self) -> &str {
        match self {
            Step::Highlevel(s) => &s.id,
            Step::Http(s) => &s.id,
            Step::FindContact(s) => &s.id,
            Step::Filter(s) => &s.id,
            Step::ForEach(s) => &s.id,
        }
    }

    /// The `type` tag as written in flow files.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Highlevel(_) => "highlevel",
            Step::Http(_) => "http",
            Step::FindContact(_) => "find_contact",
            Step::Filter(_) => "filter",
            Step::ForEach(_) => "for_each",
        }
    }
}

/// A HighLevel operation call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HighlevelStep {
    /// Step id, unique in the flow; later steps read the response body as `steps.<id>`.
    pub id: String,
    /// Operation id from the catalog (`hlbridge catalog`), e.g. `contacts.tags.add`.
    pub operation: String,
    /// Parameters by name (path, query and body alike), each a template or a literal.
    /// Keys `custom.<field name>` set contact custom fields by their display name; they are
    /// sent as `customFields = [{ id, value }]`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
    /// Connection to use instead of the flow's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
}

/// An HTTP request to another app. The output is `{ status, headers, body }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    /// Step id, unique in the flow.
    pub id: String,
    /// HTTP method.
    #[serde(default)]
    pub method: HttpMethod,
    /// Absolute URL (a template), or a path relative to the app connection's `base_url`.
    pub url: String,
    /// Extra request headers (templates).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub headers: Map<String, Value>,
    /// JSON body (templates inside are rendered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Name of an app connection of the engine configuration: its base URL and secret
    /// headers are applied (secrets never appear in templates or run history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
}

/// HTTP method of an [`HttpStep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// GET
    Get,
    /// POST
    #[default]
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

impl HttpMethod {
    /// The method as HTTP writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }
}

/// Contact lookup by email or phone (HighLevel's duplicate search).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindContactStep {
    /// Step id, unique in the flow.
    pub id: String,
    /// Email to look up (template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Phone number to look up (template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// When true a missing contact ends the run as `skipped` instead of giving `null`.
    #[serde(default)]
    pub required: bool,
}

/// A condition that ends the run as `skipped` when false.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterStep {
    /// Step id, unique in the flow.
    pub id: String,
    /// Condition: a `{{ … }}` template or a bare expression (`event.tag == "vip"`).
    pub condition: String,
}

/// Nested steps run once per element of a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForEachStep {
    /// Step id, unique in the flow. The output is the list of per-element outputs, each an
    /// object keyed by nested step id.
    pub id: String,
    /// A single-expression template giving the list (`{{ event.tags }}`). Nested steps see
    /// the element as `item` and its position (from 0) as `index`.
    pub items: String,
    /// Steps run for each element.
    pub steps: Vec<Step>,
}

/// The JSON Schema of flow files, generated from these types.
pub fn json_schema() -> Value {
    let schema = schemars::schema_for!(Flow);
    serde_json::to_value(&schema).unwrap_or(Value::Null)
}

/// [`json_schema`] as pretty-printed text with a final newline (the form of
/// `docs/flow-schema.json`).
pub fn json_schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&json_schema()).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_flow() {
        let src = r#"
            id = "tags"
            location_id = "{{ event.locationId }}"
            filter = "event.tag != ''"
            [trigger]
            type = "app_webhook"
            secret = "ecosend"
            auth = "bearer"
            [[steps]]
            id = "c"
            type = "find_contact"
            email = "{{ event.email }}"
            [[steps]]
            id = "each"
            type = "for_each"
            items = "{{ event.tags }}"
            [[steps.steps]]
            id = "add"
            type = "highlevel"
            operation = "contacts.tags.add"
            params = { contactId = "{{ steps.c.id }}", tags = ["{{ item }}"] }
            [retry]
            max_attempts = 3
        "#;
        let flow: Flow = toml::from_str(src).expect("parses");
        assert_eq!(flow.connection, "default");
        assert!(flow.enabled);
        assert_eq!(flow.retry.max_attempts, 3);
        assert_eq!(flow.retry.base_delay_ms, 1000);
        assert!(matches!(
            flow.trigger,
            Trigger::AppWebhook(AppWebhookTrigger {
                auth: AppAuth::Bearer,
                ..
            })
        ));
        assert_eq!(flow.steps.len(), 2);
        let Step::ForEach(each) = &flow.steps[1] else {
            panic!("for_each")
        };
        assert_eq!(each.steps[0].id(), "add");
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        let bad = "id = \"x\"\n[trigger]\ntype = \"schedule\"\ncron = \"* * * * *\"\n[[steps]]\nid = \"a\"\ntype = \"highlevel\"\noperation = \"contacts.get\"\nparms = {}\n";
        let err = toml::from_str::<Flow>(bad).expect_err("unknown field");
        assert!(err.message().contains("parms"), "{err}");
        let bad = "id = \"x\"\n[trigger]\ntype = \"telepathy\"\n";
        assert!(toml::from_str::<Flow>(bad).is_err());
    }

    /// `docs/flow-schema.json` must match the types; regenerate with `UPDATE_SCHEMA=1 cargo test`.
    #[test]
    fn published_schema_is_up_to_date() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/flow-schema.json");
        let fresh = json_schema_text();
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).expect("create docs/");
            }
            std::fs::write(&path, &fresh).expect("write schema");
            return;
        }
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            current == fresh,
            "docs/flow-schema.json is out of date: run `UPDATE_SCHEMA=1 cargo test -p hlbridge-engine published_schema` and commit it"
        );
    }
}
