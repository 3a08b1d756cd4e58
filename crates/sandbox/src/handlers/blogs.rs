//! Blogs (`blogs.json`): the blog sites of a location (skip/limit), their authors and
//! categories (offset/limit), posts listed per blog (offset/limit with `status` and
//! `searchTerm` filters), post create/update with validation of the blog, author, categories
//! and status, and URL slugs unique in the location (`GET /blogs/posts/url-slug-exists`).
//! HighLevel sends no webhooks for blogs.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;
use serde_json::{Map, Value, json};

use super::locations::location_scope;
use super::{Ctx, HResult, Handler, Req, Seed, iso, new_id, ok, parse_time_ms};
use crate::error::ApiError;

/// A blog site.
pub const BLOG: &str = "blog";
/// A blog author of a location.
pub const AUTHOR: &str = "blog_author";
/// A blog category of a location.
pub const CATEGORY: &str = "blog_category";
/// A blog post (parent: the blog).
pub const POST: &str = "blog_post";

/// Registers the handlers of this module.
pub fn register(map: &mut HashMap<&'static str, Handler>) {
    map.insert("blogs.list", blogs_list);
    map.insert("blogs.authors.list", authors_list);
    map.insert("blogs.categories.list", categories_list);
    map.insert("blogs.posts.list", posts_list);
    map.insert("blogs.posts.slug_exists", slug_exists);
    map.insert("blogs.posts.create", post_create);
    map.insert("blogs.posts.update", post_update);
}

const STATUSES: &[&str] = &["DRAFT", "PUBLISHED", "SCHEDULED", "ARCHIVED"];

/// Body fields of a post that are required on create and update.
const REQUIRED: &[&str] = &[
    "title",
    "locationId",
    "blogId",
    "imageUrl",
    "description",
    "rawHTML",
    "status",
    "imageAltText",
    "categories",
    "author",
    "urlSlug",
    "publishedAt",
];

fn str_of<'v>(v: &'v Value, k: &str) -> &'v str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn page(req: &Req, items: &[Arc<Value>], skip_param: &str) -> Result<Vec<Value>, ApiError> {
    let skip = req.query_usize(skip_param, 0, usize::MAX)?;
    let limit = req.query_usize("limit", 10, 100)?;
    Ok(items
        .iter()
        .skip(skip)
        .take(limit)
        .map(|v| (**v).clone())
        .collect())
}

fn search(req: &Req, items: &mut Vec<Arc<Value>>, field: &str) {
    if let Some(q) = req.query("searchTerm").filter(|s| !s.is_empty()) {
        let q = q.to_lowercase();
        items.retain(|i| str_of(i, field).to_lowercase().contains(&q));
    }
}

fn blogs_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = location_scope(ctx, req)?;
    let mut all = ctx.list(BLOG, &loc);
    search(req, &mut all, "name");
    ok(json!({ "data": page(req, &all, "skip")? }))
}

fn authors_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = location_scope(ctx, req)?;
    let all = ctx.list(AUTHOR, &loc);
    ok(json!({ "authors": page(req, &all, "offset")? }))
}

fn categories_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = location_scope(ctx, req)?;
    let all = ctx.list(CATEGORY, &loc);
    ok(json!({ "categories": page(req, &all, "offset")? }))
}

fn posts_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = location_scope(ctx, req)?;
    let blog_id = req
        .query("blogId")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::unprocessable(vec!["blogId should not be empty".into()]))?;
    ctx.find(BLOG, blog_id, "Blog", req)?;
    let mut all = ctx.children(POST, blog_id);
    all.retain(|p| str_of(p, "locationId") == loc);
    if let Some(s) = req.query("status").filter(|s| !s.is_empty()) {
        if !STATUSES.contains(&s) {
            return Err(ApiError::unprocessable(vec![format!(
                "status must be one of the following values: {}",
                STATUSES.join(", ")
            )]));
        }
        all.retain(|p| str_of(p, "status") == s);
    }
    search(req, &mut all, "title");
    // Newest first.
    all.reverse();
    ok(json!({ "blogs": page(req, &all, "offset")? }))
}

/// Whether a post other than `except` uses `slug` in the location.
fn slug_taken(ctx: &Ctx<'_>, loc: &str, slug: &str, except: Option<&str>) -> bool {
    ctx.list(POST, loc)
        .iter()
        .any(|p| str_of(p, "urlSlug") == slug && Some(str_of(p, "_id")) != except)
}

fn slug_exists(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = location_scope(ctx, req)?;
    let slug = req
        .query("urlSlug")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::unprocessable(vec!["urlSlug should not be empty".into()]))?;
    ok(json!({ "exists": slug_taken(ctx, &loc, slug, req.query("postId")) }))
}

/// Validates a post body against the location's blog, author and categories.
fn validate(ctx: &Ctx<'_>, req: &Req, loc: &str, post_id: Option<&str>) -> Result<(), ApiError> {
    req.require_fields(REQUIRED)?;
    let mut errs = Vec::new();
    let status = req.field_str("status").unwrap_or_default();
    if !STATUSES.contains(&status) {
        errs.push(format!(
            "status must be one of the following values: {}",
            STATUSES.join(", ")
        ));
    }
    let categories = req.field("categories").and_then(Value::as_array);
    if !categories.is_some_and(|c| c.iter().all(Value::is_string)) {
        errs.push("categories must be an array of strings".into());
    }
    if req
        .field("tags")
        .is_some_and(|t| !t.as_array().is_some_and(|t| t.iter().all(Value::is_string)))
    {
        errs.push("tags must be an array of strings".into());
    }
    if req.field("publishedAt").and_then(parse_time_ms).is_none() {
        errs.push("publishedAt must be a valid ISO 8601 date string".into());
    }
    let slug = req.field_str("urlSlug").unwrap_or_default();
    if !slug
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        errs.push("urlSlug must contain only lowercase letters, digits and hyphens".into());
    }
    if !errs.is_empty() {
        return Err(ApiError::unprocessable(errs));
    }
    ctx.find(
        BLOG,
        req.field_str("blogId").unwrap_or_default(),
        "Blog",
        req,
    )?;
    let author = req.field_str("author").unwrap_or_default();
    if ctx
        .get(AUTHOR, author)
        .is_none_or(|d| d.location_id.as_deref() != Some(loc))
    {
        return Err(ApiError::not_found("Author"));
    }
    for c in categories.into_iter().flatten().filter_map(Value::as_str) {
        if ctx
            .get(CATEGORY, c)
            .is_none_or(|d| d.location_id.as_deref() != Some(loc))
        {
            return Err(ApiError::not_found("Category"));
        }
    }
    if slug_taken(ctx, loc, slug, post_id) {
        return Err(ApiError::bad_request("Url slug already exists"));
    }
    Ok(())
}

/// Copies a (validated) body onto a post.
fn apply(post: &mut Value, body: &Map<String, Value>) {
    for k in [
        "title",
        "blogId",
        "imageUrl",
        "description",
        "rawHTML",
        "status",
        "imageAltText",
        "categories",
        "tags",
        "author",
        "urlSlug",
        "canonicalLink",
    ] {
        if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
            post[k] = v.clone();
        }
    }
    if let Some(ms) = body.get("publishedAt").and_then(parse_time_ms) {
        post["publishedAt"] = json!(iso(ms));
    }
    post["archived"] = json!(str_of(post, "status") == "ARCHIVED");
}

/// Stores a new post; shared by the handler and the seeder.
fn insert_post(ctx: &mut Ctx<'_>, loc: &str, body: &Map<String, Value>) -> Result<Value, ApiError> {
    let id = new_id();
    let now = iso(ctx.now_ms);
    let mut post = json!({
        "_id": id,
        "locationId": loc,
        "tags": [],
        "categories": [],
        "archived": false,
        "createdAt": now,
        "updatedAt": now,
    });
    apply(&mut post, body);
    if post.get("canonicalLink").is_none() {
        post["canonicalLink"] = json!(format!(
            "https://blog.sandbox.test/post/{}",
            str_of(&post, "urlSlug")
        ));
    }
    let blog = str_of(&post, "blogId").to_string();
    ctx.put(POST, &id, Some(loc), Some(&blog), post.clone())?;
    Ok(post)
}

fn post_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = location_scope(ctx, req)?;
    validate(ctx, req, &loc, None)?;
    let post = insert_post(ctx, &loc, &req.body_object())?;
    // The spec answers 200 with `{ data }` for this create.
    ok(json!({ "data": post }))
}

fn post_update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = location_scope(ctx, req)?;
    let id = req.path("postId")?;
    let old = ctx.find(POST, id, "Blog post", req)?;
    validate(ctx, req, &loc, Some(id))?;
    let mut post = (*old).clone();
    apply(&mut post, &req.body_object());
    post["updatedAt"] = json!(iso(ctx.now_ms));
    let blog = str_of(&post, "blogId").to_string();
    // A post may move to another blog of the location: store it under its new parent.
    ctx.put(POST, id, Some(&loc), Some(&blog), post.clone())?;
    ok(json!({ "updatedBlogPost": post }))
}

/// Adds this area's demo data to the seeded location: two blogs, three authors, four
/// categories and a dozen posts in every status.
pub fn seed(ctx: &mut Ctx<'_>, seed: &mut Seed) -> Result<(), ApiError> {
    let loc = seed.location_id.clone();
    let now = iso(ctx.now_ms);
    let mut blogs = Vec::new();
    for (name, slug) in [
        ("Sandbox Insights", "insights"),
        ("Product Updates", "updates"),
    ] {
        let id = new_id();
        let b = json!({ "_id": id, "name": name, "locationId": loc, "urlSlug": slug, "createdAt": now, "updatedAt": now });
        ctx.put(BLOG, &id, Some(&loc), None, b)?;
        seed.ids.entry("blog").or_default().push(id.clone());
        blogs.push(id);
    }
    let mut authors = Vec::new();
    for name in ["Maya Patel", "Jordan Lee", "Sam Rivera"] {
        let id = new_id();
        let slug = name.to_lowercase().replace(' ', "-");
        let a = json!({
            "_id": id, "name": name, "locationId": loc, "updatedAt": now,
            "canonicalLink": format!("https://blog.sandbox.test/author/{slug}"),
        });
        ctx.put(AUTHOR, &id, Some(&loc), None, a)?;
        seed.ids.entry("blog_author").or_default().push(id.clone());
        authors.push(id);
    }
    let mut categories = Vec::new();
    for label in ["Marketing", "Sales", "Automation", "Announcements"] {
        let id = new_id();
        let slug = label.to_lowercase();
        let c = json!({
            "_id": id, "label": label, "name": label, "locationId": loc, "updatedAt": now, "urlSlug": slug,
            "canonicalLink": format!("https://blog.sandbox.test/category/{slug}"),
        });
        ctx.put(CATEGORY, &id, Some(&loc), None, c)?;
        seed.ids
            .entry("blog_category")
            .or_default()
            .push(id.clone());
        categories.push(id);
    }
    let titles = [
        "Five follow-up emails that close deals",
        "How to tag contacts for better segmentation",
        "Automating appointment reminders",
        "What we shipped this month",
        "Writing a welcome sequence that converts",
        "Pipeline hygiene: a weekly checklist",
        "Using custom fields without the mess",
        "Case study: 3x more booked calls",
        "Webhooks 101 for small teams",
        "Our new invoicing features",
        "SMS etiquette for businesses",
        "Planning next quarter's campaigns",
    ];
    let base = ctx.now_ms;
    let day = 86_400_000_i64;
    for (i, title) in titles.iter().enumerate() {
        let n = i64::try_from(i).unwrap_or(0);
        ctx.now_ms = base - day * (60 - 5 * n);
        let status = match i % 6 {
            4 => "DRAFT",
            5 if i > 6 => "SCHEDULED",
            5 => "ARCHIVED",
            _ => "PUBLISHED",
        };
        let published = if status == "SCHEDULED" {
            base + day * 7
        } else {
            ctx.now_ms
        };
        let slug: String = title
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>()
            .split('-')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        let blog = if title.contains("shipped") || title.contains("new invoicing") {
            &blogs[1]
        } else {
            &blogs[0]
        };
        let cat = &categories[seed.rng.random_range(0..categories.len())];
        let body = json!({
            "title": title,
            "blogId": blog,
            "imageUrl": format!("https://images.sandbox.test/blog/{slug}.jpg"),
            "imageAltText": title,
            "description": format!("{title}: practical advice from the Sandbox team."),
            "rawHTML": format!("<h1>{title}</h1><p>Practical advice from the Sandbox team.</p>"),
            "status": status,
            "categories": [cat],
            "tags": ["tips", "crm"],
            "author": authors[i % authors.len()],
            "urlSlug": slug,
            "publishedAt": iso(published),
        });
        let post = insert_post(ctx, &loc, body.as_object().unwrap_or(&Map::new()))?;
        seed.ids
            .entry("blog_post")
            .or_default()
            .push(str_of(&post, "_id").to_string());
    }
    ctx.now_ms = base;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::Guard;
    use crate::handlers::testing::call;
    use crate::store::Docs;
    use parking_lot::RwLock;
    use rand::SeedableRng;

    use crate::handlers::testing::{body, status};

    /// Seeds loc1 and returns (blog, author, category) ids.
    fn seeded(docs: &RwLock<Docs>) -> (String, String, String) {
        let mut ctx = Ctx::new(Guard::Write(docs.write()), 1_700_000_000_000);
        let mut s = Seed {
            location_id: "loc1".into(),
            company_id: "company1".into(),
            now_ms: 1_700_000_000_000,
            rng: rand::rngs::StdRng::seed_from_u64(7),
            ids: HashMap::new(),
        };
        seed(&mut ctx, &mut s).expect("seed");
        (
            s.ids("blog")[0].clone(),
            s.ids("blog_author")[0].clone(),
            s.ids("blog_category")[0].clone(),
        )
    }

    fn post_body(blog: &str, author: &str, cat: &str, slug: &str) -> Value {
        json!({
            "title": "Hello", "locationId": "loc1", "blogId": blog, "imageUrl": "https://x.test/a.png",
            "description": "d", "rawHTML": "<p>x</p>", "status": "PUBLISHED", "imageAltText": "a",
            "categories": [cat], "tags": ["t"], "author": author, "urlSlug": slug,
            "publishedAt": "2024-01-01T00:00:00.000Z"
        })
    }

    #[test]
    fn post_create_update_and_slugs() {
        let docs = RwLock::new(Docs::default());
        let (blog, author, cat) = seeded(&docs);
        let (r, _) = call(
            &docs,
            "blogs.posts.create",
            &[],
            &[],
            post_body(&blog, &author, &cat, "hello-world"),
        );
        assert_eq!(status(&r), 200);
        let post = body(&r)["data"].clone();
        let id = post["_id"].as_str().unwrap_or_default().to_string();
        assert_eq!(post["archived"], false);
        let exists = |slug: &str, post: Option<&str>| {
            let mut query = vec![("locationId", "loc1"), ("urlSlug", slug)];
            if let Some(p) = post {
                query.push(("postId", p));
            }
            body(&call(&docs, "blogs.posts.slug_exists", &[], &query, Value::Null).0)["exists"]
                .clone()
        };
        assert_eq!(exists("hello-world", None), json!(true));
        assert_eq!(exists("hello-world", Some(&id)), json!(false));
        assert_eq!(exists("nope", None), json!(false));
        let (r, _) = call(
            &docs,
            "blogs.posts.create",
            &[],
            &[],
            post_body(&blog, &author, &cat, "hello-world"),
        );
        assert_eq!(status(&r), 400, "slug taken");
        let mut upd = post_body(&blog, &author, &cat, "hello-again");
        upd["status"] = json!("ARCHIVED");
        upd["title"] = json!("Hello again");
        let (r, _) = call(
            &docs,
            "blogs.posts.update",
            &[("postId", id.as_str())],
            &[],
            upd,
        );
        let b = body(&r)["updatedBlogPost"].clone();
        assert_eq!(b["archived"], true);
        assert_eq!(b["urlSlug"], "hello-again");
        let lq = [
            ("locationId", "loc1"),
            ("blogId", blog.as_str()),
            ("limit", "50"),
            ("offset", "0"),
            ("status", "ARCHIVED"),
            ("searchTerm", "again"),
        ];
        let (r, _) = call(&docs, "blogs.posts.list", &[], &lq, Value::Null);
        assert_eq!(body(&r)["blogs"][0]["_id"], id.as_str());
        let mut bad = post_body(&blog, &author, &cat, "x");
        bad["status"] = json!("LIVE");
        let (r, _) = call(&docs, "blogs.posts.create", &[], &[], bad);
        assert_eq!(status(&r), 422);
        let (r, _) = call(
            &docs,
            "blogs.posts.create",
            &[],
            &[],
            post_body(&blog, "ghost", &cat, "y"),
        );
        assert_eq!(status(&r), 404);
        let (r, _) = call(
            &docs,
            "blogs.posts.update",
            &[("postId", "missing")],
            &[],
            post_body(&blog, &author, &cat, "z"),
        );
        assert_eq!(status(&r), 404);
    }

    #[test]
    fn lists_page() {
        let docs = RwLock::new(Docs::default());
        let (blog, _, _) = seeded(&docs);
        let (r, _) = call(
            &docs,
            "blogs.list",
            &[],
            &[("locationId", "loc1"), ("skip", "1"), ("limit", "5")],
            Value::Null,
        );
        assert_eq!(body(&r)["data"][0]["name"], "Product Updates");
        let (r, _) = call(
            &docs,
            "blogs.authors.list",
            &[],
            &[("locationId", "loc1"), ("limit", "2"), ("offset", "0")],
            Value::Null,
        );
        assert_eq!(body(&r)["authors"].as_array().map(Vec::len), Some(2));
        let (r, _) = call(
            &docs,
            "blogs.categories.list",
            &[],
            &[("locationId", "loc1"), ("limit", "10"), ("offset", "3")],
            Value::Null,
        );
        assert_eq!(body(&r)["categories"][0]["label"], "Announcements");
        let all = [
            ("locationId", "loc1"),
            ("blogId", blog.as_str()),
            ("limit", "100"),
            ("offset", "0"),
        ];
        let (r, _) = call(&docs, "blogs.posts.list", &[], &all, Value::Null);
        let n = body(&r)["blogs"].as_array().map_or(0, Vec::len);
        assert_eq!(n, 10);
        let (r, _) = call(
            &docs,
            "blogs.posts.list",
            &[],
            &[("locationId", "loc1"), ("limit", "10"), ("offset", "0")],
            Value::Null,
        );
        assert_eq!(status(&r), 422, "blogId is required");
        let (r, _) = call(
            &docs,
            "blogs.list",
            &[],
            &[("locationId", "loc2")],
            Value::Null,
        );
        assert_eq!(status(&r), 403);
    }
}
