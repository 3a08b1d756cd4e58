//! The operation table: one entry per HighLevel operation hlbridge can call.
//!
//! The client calls operations from it, the sandbox serves them, the engine invokes them by id,
//! the CLI lists them and the web UI offers them in pickers. Entries are `'static` data so
//! lookups cost nothing at run time.

mod table;

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use serde::Serialize;

pub use table::OPERATIONS;

/// The product category an operation belongs to (the catalog's 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Contacts, their tags, tasks, notes and campaign membership.
    Contacts,
    /// Calendars, groups, appointments, blocked slots, notifications and resources.
    CalendarsAppointments,
    /// Opportunities and pipelines.
    Opportunities,
    /// Users of a location or agency.
    Users,
    /// Conversations and messages.
    ConversationsMessages,
    /// Businesses (companies a contact belongs to).
    Businesses,
    /// Workflows, campaigns and snapshots.
    WorkflowsCampaigns,
    /// Locations, companies, associations and blogs.
    OtherOperations,
    /// Tags, custom fields and custom values of a location.
    TagsCustomFields,
    /// Custom object records.
    CustomObjects,
    /// Forms, surveys and their submissions.
    FormsSurveys,
    /// Invoices and estimates.
    Invoices,
    /// Orders, transactions, subscriptions and coupons.
    Payments,
    /// Products and their prices.
    ProductsPrices,
}

impl Category {
    /// Every category, in catalog order.
    pub const ALL: [Category; 14] = [
        Category::Contacts,
        Category::CalendarsAppointments,
        Category::Opportunities,
        Category::Users,
        Category::ConversationsMessages,
        Category::Businesses,
        Category::WorkflowsCampaigns,
        Category::OtherOperations,
        Category::TagsCustomFields,
        Category::CustomObjects,
        Category::FormsSurveys,
        Category::Invoices,
        Category::Payments,
        Category::ProductsPrices,
    ];

    /// The display name, as the catalog writes it.
    pub fn label(self) -> &'static str {
        match self {
            Category::Contacts => "Contacts",
            Category::CalendarsAppointments => "Calendars & Appointments",
            Category::Opportunities => "Opportunities",
            Category::Users => "Users",
            Category::ConversationsMessages => "Conversations & Messages",
            Category::Businesses => "Businesses",
            Category::WorkflowsCampaigns => "Workflows & Campaigns",
            Category::OtherOperations => "Other Operations",
            Category::TagsCustomFields => "Tags, Custom Fields & Custom Values",
            Category::CustomObjects => "Custom Objects",
            Category::FormsSurveys => "Forms & Surveys",
            Category::Invoices => "Invoices",
            Category::Payments => "Payments",
            Category::ProductsPrices => "Products & Prices",
        }
    }

    /// The machine name used on the command line and in JSON (`calendars_appointments`).
    pub fn slug(self) -> &'static str {
        match self {
            Category::Contacts => "contacts",
            Category::CalendarsAppointments => "calendars_appointments",
            Category::Opportunities => "opportunities",
            Category::Users => "users",
            Category::ConversationsMessages => "conversations_messages",
            Category::Businesses => "businesses",
            Category::WorkflowsCampaigns => "workflows_campaigns",
            Category::OtherOperations => "other_operations",
            Category::TagsCustomFields => "tags_custom_fields",
            Category::CustomObjects => "custom_objects",
            Category::FormsSurveys => "forms_surveys",
            Category::Invoices => "invoices",
            Category::Payments => "payments",
            Category::ProductsPrices => "products_prices",
        }
    }

    /// Finds a category by slug or label, ignoring case, spaces, `&` and `-`.
    pub fn parse(s: &str) -> Option<Category> {
        let norm = |x: &str| {
            x.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_ascii_lowercase()
        };
        let want = norm(s);
        Category::ALL
            .into_iter()
            .find(|c| norm(c.slug()) == want || norm(c.label()) == want)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Whether an operation reads (usable as a polling trigger) or changes something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Reads data; can drive a polling trigger.
    Trigger,
    /// Changes data (or is a read the catalog offers as an action step).
    Action,
}

impl Kind {
    /// `trigger` or `action`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Trigger => "trigger",
            Kind::Action => "action",
        }
    }
}

/// HTTP method of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

impl Method {
    /// The method as HTTP writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    /// Whether repeating the request cannot change the outcome (GET, PUT, DELETE).
    ///
    /// Only idempotent operations are retried after 5xx or connection errors; a POST is
    /// retried only after a 429, which HighLevel answers before doing anything.
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Method::Post | Method::Patch)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value of the `Version` header an operation requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ApiVersion {
    /// `2021-07-28`: most services.
    #[serde(rename = "2021-07-28")]
    V2021_07_28,
    /// `2021-04-15`: calendars and conversations.
    #[serde(rename = "2021-04-15")]
    V2021_04_15,
    /// The spec declares no Version header; the client sends the service's usual value.
    #[serde(rename = "none")]
    Unversioned,
}

impl ApiVersion {
    /// The header value the spec declares, if any.
    pub fn header(self) -> Option<&'static str> {
        match self {
            ApiVersion::V2021_07_28 => Some("2021-07-28"),
            ApiVersion::V2021_04_15 => Some("2021-04-15"),
            ApiVersion::Unversioned => None,
        }
    }
}

/// Which kind of token an operation accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A location (sub-account) token or Private Integration Token.
    Location,
    /// An agency (company) token only.
    Agency,
    /// Either.
    Any,
}

/// How a list operation pages through its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pagination {
    /// `startAfter` + `startAfterId` query cursor from the last item (or `meta`).
    StartAfterId,
    /// `skip` + `limit` (query, or body for POST searches).
    SkipLimit,
    /// `offset` + `limit` query.
    OffsetLimit,
    /// `page` + `limit` query, 1-based.
    PageLimit,
    /// `page` + `pageLimit` and `searchAfter` in a POST body.
    SearchAfter,
    /// `startAfterDate` query cursor (the last item's `sort` value).
    StartAfterDate,
    /// `lastMessageId` query cursor, with `nextPage` in the response.
    LastMessageId,
}

impl Pagination {
    /// The catalog's name for the style.
    pub fn as_str(self) -> &'static str {
        match self {
            Pagination::StartAfterId => "startAfter+startAfterId",
            Pagination::SkipLimit => "skip/limit",
            Pagination::OffsetLimit => "offset/limit",
            Pagination::PageLimit => "page/limit",
            Pagination::SearchAfter => "page/pageLimit+searchAfter",
            Pagination::StartAfterDate => "startAfterDate",
            Pagination::LastMessageId => "lastMessageId",
        }
    }
}

/// Where a parameter goes in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamIn {
    /// A `{name}` segment of the path.
    Path,
    /// The query string.
    Query,
    /// A top-level field of the JSON body.
    Body,
}

/// One parameter an operation takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Param {
    /// The name as HighLevel spells it.
    pub name: &'static str,
    /// Where it is sent.
    pub location: ParamIn,
    /// Whether the call fails without it.
    pub required: bool,
}

/// One HighLevel operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Operation {
    /// Stable id, `<area>.<resource>.<verb>` (e.g. `contacts.tags.add`).
    pub id: &'static str,
    /// Product category.
    pub category: Category,
    /// Trigger (read) or action (change).
    pub kind: Kind,
    /// Display name.
    pub name: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// HTTP method.
    pub method: Method,
    /// Path template in OpenAPI form (`/contacts/{contactId}`), trailing slash as the spec has it.
    pub path: &'static str,
    /// The OAuth scope the operation requires.
    pub scope: &'static str,
    /// Required `Version` header.
    pub version: ApiVersion,
    /// Which tokens the operation accepts.
    pub token: TokenKind,
    /// Pagination style, for list operations.
    pub pagination: Option<Pagination>,
    /// Dotted path of the array of items in the response (`""`: the body is the array).
    pub items_key: Option<&'static str>,
    /// Parameters: path, query and top-level body fields.
    pub params: &'static [Param],
    /// The HighLevel service (spec file) the operation belongs to.
    pub spec: &'static str,
    /// The spec's `operationId`.
    pub spec_operation_id: &'static str,
    /// The spec marks the operation deprecated.
    pub deprecated: bool,
    /// Not in the source document's list; added to complete the catalog.
    pub proposal: bool,
}

/// POST operations whose repetition has the effect of doing them once: reads sent as POST,
/// upserts by natural key, and set membership (adding a tag, follower or campaign that is
/// already there changes nothing). Every other POST or PATCH creates or sends something anew.
const REPEATABLE_POSTS: &[&str] = &[
    "contacts.search",
    "contacts.upsert",
    "contacts.tags.add",
    "contacts.tags.bulk_update",
    "contacts.campaigns.add",
    "contacts.followers.add",
    "contacts.bulk_business",
    "calendars.groups.validate_slug",
    "opportunities.upsert",
    "opportunities.followers.add",
    "users.filter_by_email",
    "conversations.live_chat.typing",
    "locations.tasks.search",
    "objects.records.search",
    "invoices.void",
];

impl Operation {
    /// Whether doing this operation twice has the same effect as doing it once: every GET,
    /// PUT and DELETE, and the POSTs that read, upsert or add to a set. A create or a send
    /// (a contact, a note, a message, an invoice sent, a payment recorded) is not: when such
    /// a call fails after it was sent, it may have been carried out, and repeating it could
    /// do it twice. (Adding a contact to a workflow is treated as not repeatable: it can
    /// enrol the contact again.)
    pub fn repeatable(&self) -> bool {
        self.method.is_idempotent() || REPEATABLE_POSTS.contains(&self.id)
    }

    /// The `Version` header value to send. Unversioned operations get their service's value.
    pub fn version_header(&self) -> &'static str {
        match self.version.header() {
            Some(v) => v,
            None if self.spec == "calendars" || self.spec == "conversations" => "2021-04-15",
            None => "2021-07-28",
        }
    }

    /// Parameters that must be present.
    pub fn required_params(&self) -> impl Iterator<Item = &'static Param> + use<> {
        self.params.iter().filter(|p| p.required)
    }

    /// Names of the `{…}` segments of the path, in order.
    pub fn path_params(&self) -> impl Iterator<Item = &'static str> + use<> {
        self.path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
    }

    /// Looks a parameter up by name.
    pub fn param(&self, name: &str) -> Option<&'static Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Whether the operation takes a JSON body.
    pub fn has_body(&self) -> bool {
        self.params.iter().any(|p| p.location == ParamIn::Body)
            || matches!(self.method, Method::Post | Method::Put | Method::Patch)
    }
}

static BY_ID: LazyLock<HashMap<&'static str, &'static Operation>> =
    LazyLock::new(|| OPERATIONS.iter().map(|op| (op.id, op)).collect());

/// Finds an operation by id.
pub fn find(id: &str) -> Option<&'static Operation> {
    BY_ID.get(id).copied()
}

/// The ids closest to a mistyped one, best first (at most `n`).
pub fn suggest(id: &str, n: usize) -> Vec<&'static str> {
    let mut scored: Vec<(f64, &'static str)> = OPERATIONS
        .iter()
        .map(|op| {
            let mut score = strsim::jaro_winkler(id, op.id);
            if op.id.contains(id) || id.contains(op.id) {
                score += 0.2;
            }
            (score, op.id)
        })
        .filter(|(s, _)| *s > 0.7)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(n).map(|(_, id)| id).collect()
}

#[cfg(test)]
mod repeatable_tests {
    use super::*;

    #[test]
    fn creates_and_sends_are_not_repeatable() {
        for id in REPEATABLE_POSTS {
            let op = find(id).unwrap_or_else(|| panic!("{id} is not in the table"));
            assert!(!op.method.is_idempotent(), "{id} need not be listed");
        }
        for id in [
            "contacts.create",
            "contacts.notes.create",
            "contacts.tasks.create",
            "conversations.messages.send",
            "invoices.send",
            "invoices.record_payment",
            "contacts.workflows.add",
            "opportunities.create",
        ] {
            assert!(!find(id).is_some_and(Operation::repeatable), "{id}");
        }
        for id in [
            "contacts.upsert",
            "contacts.tags.add",
            "contacts.get",
            "contacts.update",
            "contacts.delete",
        ] {
            assert!(find(id).is_some_and(Operation::repeatable), "{id}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        for op in OPERATIONS {
            assert!(seen.insert(op.id), "duplicate id {}", op.id);
            assert!(
                op.id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_'),
                "{}",
                op.id
            );
            assert!(op.id.contains('.'), "{}", op.id);
        }
    }

    #[test]
    fn catalog_counts() {
        let triggers = OPERATIONS
            .iter()
            .filter(|o| o.kind == Kind::Trigger)
            .count();
        let actions = OPERATIONS.iter().filter(|o| o.kind == Kind::Action).count();
        let cats: HashSet<_> = OPERATIONS.iter().map(|o| o.category).collect();
        assert!(OPERATIONS.len() >= 126, "{}", OPERATIONS.len());
        assert!(triggers >= 55, "{triggers}");
        assert!(actions >= 71, "{actions}");
        assert_eq!(cats.len(), 14);
    }

    #[test]
    fn documented_ids_exist() {
        for id in [
            "contacts.get",
            "contacts.list",
            "contacts.create",
            "contacts.update",
            "contacts.delete",
            "contacts.search",
            "contacts.upsert",
            "contacts.find_duplicate",
            "contacts.tags.add",
            "contacts.tags.remove",
            "contacts.tasks.list",
            "contacts.tasks.create",
            "contacts.tasks.complete",
            "contacts.notes.list",
            "contacts.notes.create",
            "opportunities.search",
            "calendars.free_slots",
        ] {
            assert!(find(id).is_some(), "{id}");
        }
        assert_eq!(find("contacts.list").map(|o| o.path), Some("/contacts/"));
    }

    #[test]
    fn path_params_are_declared_params() {
        for op in OPERATIONS {
            for p in op.path_params() {
                let decl = op.param(p).map(|p| (p.location, p.required));
                assert_eq!(decl, Some((ParamIn::Path, true)), "{} {p}", op.id);
            }
        }
    }

    #[test]
    fn suggestions_find_the_near_miss() {
        assert_eq!(
            suggest("contacts.tag.add", 3).first(),
            Some(&"contacts.tags.add")
        );
        assert!(suggest("contact.get", 3).contains(&"contacts.get"));
        assert_eq!(
            Category::parse("Calendars & Appointments"),
            Some(Category::CalendarsAppointments)
        );
        assert_eq!(
            Category::parse("forms_surveys"),
            Some(Category::FormsSurveys)
        );
    }
}
