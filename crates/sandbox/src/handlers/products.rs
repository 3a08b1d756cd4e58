//! Products and their prices (`products.json`): product CRUD and the offset/limit list with
//! HighLevel's `total: [{ total }]` aggregate, prices under a product (CRUD + list), the
//! ProductCreate/Update/Delete and PriceCreate/Update/Delete webhooks, and the cascade that
//! removes a product's prices with it.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;
use serde_json::{Map, Value, json};

use super::locations::location_scope;
use super::{Ctx, HResult, Handler, Req, Seed, created, iso, new_id, ok};
use crate::error::ApiError;

/// A product.
pub const PRODUCT: &str = "product";
/// A price of a product (parent: the product).
pub const PRICE: &str = "price";

/// Registers the handlers of this module.
pub fn register(map: &mut HashMap<&'static str, Handler>) {
    map.insert("products.list", list);
    map.insert("products.get", get);
    map.insert("products.create", create);
    map.insert("products.update", update);
    map.insert("products.delete", delete);
    map.insert("products.prices.list", prices_list);
    map.insert("products.prices.get", price_get);
    map.insert("products.prices.create", price_create);
    map.insert("products.prices.update", price_update);
    map.insert("products.prices.delete", price_delete);
}

const PRODUCT_TYPES: &[&str] = &["DIGITAL", "PHYSICAL", "SERVICE", "PHYSICAL/DIGITAL"];
const PRICE_TYPES: &[&str] = &["one_time", "recurring"];
const INTERVALS: &[&str] = &["day", "month", "week", "year"];

/// Body fields a caller may set on a product.
const PRODUCT_FIELDS: &[&str] = &[
    "name",
    "description",
    "productType",
    "image",
    "statementDescriptor",
    "availableInStore",
    "medias",
    "variants",
    "collectionIds",
    "isTaxesEnabled",
    "taxes",
    "automaticTaxCategoryId",
    "isLabelEnabled",
    "label",
    "slug",
    "seo",
    "taxInclusive",
];

/// Body fields a caller may set on a price.
const PRICE_FIELDS: &[&str] = &[
    "name",
    "type",
    "currency",
    "amount",
    "recurring",
    "description",
    "membershipOffers",
    "trialPeriod",
    "totalCycles",
    "setupFee",
    "variantOptionIds",
    "compareAtPrice",
    "userId",
    "meta",
    "trackInventory",
    "availableQuantity",
    "allowOutOfStockPurchases",
    "sku",
    "shippingOptions",
    "isDigitalProduct",
    "digitalDelivery",
];

fn str_of<'v>(v: &'v Value, k: &str) -> &'v str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// A URL slug from a name: `Awesome Product!` → `awesome-product`.
fn slugify(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// Offset/limit as the products service reads them: a missing or zero limit means "all"
/// (the spec's default is 0, MongoDB's "no limit").
fn page<T: Clone>(req: &Req, items: &[T]) -> Result<Vec<T>, ApiError> {
    let offset = req.query_usize("offset", 0, usize::MAX)?;
    let limit = match req.query_usize("limit", 0, usize::MAX)? {
        0 => usize::MAX,
        n => n,
    };
    Ok(items.iter().skip(offset).take(limit).cloned().collect())
}

fn validate_product(body: &Map<String, Value>) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    if let Some(t) = body.get("productType").filter(|v| !v.is_null())
        && !t.as_str().is_some_and(|t| PRODUCT_TYPES.contains(&t))
    {
        errs.push(format!(
            "productType must be one of the following values: {}",
            PRODUCT_TYPES.join(", ")
        ));
    }
    for k in [
        "availableInStore",
        "isTaxesEnabled",
        "isLabelEnabled",
        "taxInclusive",
    ] {
        if body.get(k).is_some_and(|v| !v.is_null() && !v.is_boolean()) {
            errs.push(format!("{k} must be a boolean value"));
        }
    }
    for k in ["variants", "medias", "collectionIds", "taxes"] {
        if body.get(k).is_some_and(|v| !v.is_null() && !v.is_array()) {
            errs.push(format!("{k} must be an array"));
        }
    }
    for (i, v) in body
        .get("variants")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if v.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
            || !v.get("options").is_some_and(Value::is_array)
        {
            errs.push(format!(
                "variants.{i}.name and variants.{i}.options should not be empty"
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(errs))
    }
}

fn validate_price(body: &Map<String, Value>) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    let ty = body.get("type").and_then(Value::as_str);
    if body.get("type").is_some_and(|v| !v.is_null())
        && !ty.is_some_and(|t| PRICE_TYPES.contains(&t))
    {
        errs.push("type must be one of the following values: one_time, recurring".to_string());
    }
    if let Some(a) = body.get("amount").filter(|v| !v.is_null())
        && !a.as_f64().is_some_and(|a| a >= 0.0)
    {
        errs.push("amount must be a number conforming to the specified constraints".to_string());
    }
    for k in [
        "compareAtPrice",
        "setupFee",
        "trialPeriod",
        "totalCycles",
        "availableQuantity",
    ] {
        if body.get(k).is_some_and(|v| !v.is_null() && !v.is_number()) {
            errs.push(format!(
                "{k} must be a number conforming to the specified constraints"
            ));
        }
    }
    let recurring = body.get("recurring").filter(|v| !v.is_null());
    if ty == Some("recurring") && recurring.is_none() {
        errs.push("recurring should not be empty".to_string());
    }
    if let Some(r) = recurring {
        if !r
            .get("interval")
            .and_then(Value::as_str)
            .is_some_and(|i| INTERVALS.contains(&i))
        {
            errs.push(
                "recurring.interval must be one of the following values: day, month, week, year"
                    .into(),
            );
        }
        if !r
            .get("intervalCount")
            .and_then(Value::as_f64)
            .is_some_and(|n| n >= 1.0)
        {
            errs.push(
                "recurring.intervalCount must be a number conforming to the specified constraints"
                    .into(),
            );
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(errs))
    }
}

/// The product's slug: the one given (must be free in the location) or one made from the
/// name, suffixed until unique.
fn unique_slug(
    ctx: &Ctx<'_>,
    location_id: &str,
    own_id: Option<&str>,
    given: Option<&str>,
    name: &str,
) -> Result<String, ApiError> {
    let taken = |s: &str| {
        ctx.list(PRODUCT, location_id)
            .iter()
            .any(|p| str_of(p, "slug") == s && Some(str_of(p, "_id")) != own_id)
    };
    if let Some(s) = given.filter(|s| !s.is_empty()) {
        let s = slugify(s);
        if taken(&s) {
            return Err(ApiError::bad_request(
                "A product with this slug already exists",
            ));
        }
        return Ok(s);
    }
    let base = match slugify(name) {
        s if s.is_empty() => "product".to_string(),
        s => s,
    };
    let mut slug = base.clone();
    let mut n = 1;
    while taken(&slug) {
        slug = format!("{base}-{n}");
        n += 1;
    }
    Ok(slug)
}

fn product_event(p: &Value) -> Value {
    let mut out = Map::new();
    for k in [
        "_id",
        "description",
        "variants",
        "medias",
        "locationId",
        "name",
        "productType",
        "availableInStore",
        "userId",
        "createdAt",
        "updatedAt",
        "statementDescriptor",
        "image",
    ] {
        if let Some(v) = p.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    Value::Object(out)
}

/// The documented price payload. PriceCreate's example names the price type `priceType`,
/// PriceUpdate/PriceDelete name it `type`; both are followed.
fn price_event(kind: &str, p: &Value) -> Value {
    let mut out = Map::new();
    for k in [
        "_id",
        "membershipOffers",
        "variantOptionIds",
        "locationId",
        "product",
        "userId",
        "name",
        "type",
        "currency",
        "amount",
        "recurring",
        "createdAt",
        "updatedAt",
        "compareAtPrice",
        "trackInventory",
        "availableQuantity",
        "allowOutOfStockPurchases",
    ] {
        if let Some(v) = p.get(k) {
            let key = if k == "type" && kind == "PriceCreate" {
                "priceType"
            } else {
                k
            };
            out.insert(key.into(), v.clone());
        }
    }
    Value::Object(out)
}

fn product_of(ctx: &Ctx<'_>, req: &Req) -> Result<Arc<Value>, ApiError> {
    ctx.find(PRODUCT, req.path("productId")?, "Product", req)
}

/// Inserts a product; shared by the handler and the seeder.
fn insert_product(
    ctx: &mut Ctx<'_>,
    location_id: &str,
    body: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let id = new_id();
    let now = iso(ctx.now_ms);
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let slug = unique_slug(
        ctx,
        location_id,
        None,
        body.get("slug").and_then(Value::as_str),
        &name,
    )?;
    let mut p = json!({
        "_id": id,
        "locationId": location_id,
        "name": name,
        "productType": body.get("productType").cloned().unwrap_or(json!("DIGITAL")),
        "availableInStore": false,
        "variants": [],
        "medias": [],
        "collectionIds": [],
        "isTaxesEnabled": false,
        "taxes": [],
        "createdAt": now,
        "updatedAt": now,
    });
    if let Some(obj) = p.as_object_mut() {
        for k in PRODUCT_FIELDS {
            if let Some(v) = body.get(*k).filter(|v| !v.is_null()) {
                obj.insert((*k).into(), v.clone());
            }
        }
        obj.insert("slug".into(), json!(slug));
    }
    ctx.put(PRODUCT, &id, Some(location_id), None, p.clone())?;
    ctx.emit("ProductCreate", location_id, product_event(&p));
    Ok(p)
}

/// Inserts a price under a product; shared by the handler and the seeder.
fn insert_price(
    ctx: &mut Ctx<'_>,
    location_id: &str,
    product_id: &str,
    body: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let id = new_id();
    let now = iso(ctx.now_ms);
    let mut p = json!({
        "_id": id,
        "locationId": location_id,
        "product": product_id,
        "membershipOffers": [],
        "variantOptionIds": [],
        "createdAt": now,
        "updatedAt": now,
    });
    if let Some(obj) = p.as_object_mut() {
        for k in PRICE_FIELDS {
            if let Some(v) = body.get(*k).filter(|v| !v.is_null()) {
                obj.insert((*k).into(), v.clone());
            }
        }
        if obj.get("type").and_then(Value::as_str) != Some("recurring") {
            obj.remove("recurring");
        }
    }
    ctx.put(PRICE, &id, Some(location_id), Some(product_id), p.clone())?;
    ctx.emit("PriceCreate", location_id, price_event("PriceCreate", &p));
    Ok(p)
}

fn list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let mut all: Vec<Arc<Value>> = ctx.list(PRODUCT, &location_id);
    if let Some(q) = req.query("search").filter(|q| !q.is_empty()) {
        let q = q.to_lowercase();
        all.retain(|p| str_of(p, "name").to_lowercase().contains(&q));
    }
    let ids: Vec<String> = req
        .query_all("productIds")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if !ids.is_empty() {
        all.retain(|p| ids.iter().any(|i| i == str_of(p, "_id")));
    }
    if let Some(cols) = req.query("collectionIds").filter(|c| !c.is_empty()) {
        let cols: Vec<&str> = cols.split(',').map(str::trim).collect();
        all.retain(|p| {
            p.get("collectionIds")
                .and_then(Value::as_array)
                .is_some_and(|a| {
                    a.iter()
                        .any(|c| c.as_str().is_some_and(|c| cols.contains(&c)))
                })
        });
    }
    for k in ["availableInStore", "includedInStore"] {
        if let Some(b) = req.query(k).and_then(|v| v.parse::<bool>().ok()) {
            all.retain(|p| {
                p.get("availableInStore")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    == b
            });
        }
    }
    // Newest first unless `sortOrder=asc`.
    if req.query("sortOrder") != Some("asc") {
        all.reverse();
    }
    let total = all.len();
    let items: Vec<Value> = page(req, &all)?.iter().map(|p| (**p).clone()).collect();
    ok(json!({ "products": items, "total": [{ "total": total }] }))
}

fn get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    location_scope(ctx, req)?;
    let p = product_of(ctx, req)?;
    ok((*p).clone())
}

fn create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["name", "locationId", "productType"])?;
    let body = req.body_object();
    validate_product(&body)?;
    let location_id = location_scope(ctx, req)?;
    let p = insert_product(ctx, &location_id, &body)?;
    created(p)
}

fn update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["name", "locationId", "productType"])?;
    let body = req.body_object();
    validate_product(&body)?;
    let location_id = location_scope(ctx, req)?;
    let old = product_of(ctx, req)?;
    let id = str_of(&old, "_id").to_string();
    let mut p = (*old).clone();
    if let Some(obj) = p.as_object_mut() {
        for k in PRODUCT_FIELDS {
            if let Some(v) = body.get(*k).filter(|v| !v.is_null()) {
                obj.insert((*k).into(), v.clone());
            }
        }
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let given = body.get("slug").and_then(Value::as_str);
        let keep = obj.get("slug").and_then(Value::as_str).map(str::to_string);
        let slug = match (given, keep) {
            (None, Some(s)) => s,
            (g, _) => unique_slug(ctx, &location_id, Some(&id), g, &name)?,
        };
        obj.insert("slug".into(), json!(slug));
        obj.insert("updatedAt".into(), json!(iso(ctx.now_ms)));
    }
    ctx.replace(PRODUCT, &id, p.clone())?;
    ctx.emit("ProductUpdate", &location_id, product_event(&p));
    // `prices` on update: price objects with an `_id` of this product are updated in place.
    for given in req
        .field("prices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(pid) = given
            .get("_id")
            .or_else(|| given.get("id"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let Some(old) = ctx
            .get(PRICE, pid)
            .filter(|d| d.parent_id.as_deref() == Some(id.as_str()))
            .map(|d| d.body.clone())
        else {
            continue;
        };
        let mut price = (*old).clone();
        if let (Some(obj), Some(patch)) = (price.as_object_mut(), given.as_object()) {
            for k in PRICE_FIELDS {
                if let Some(v) = patch.get(*k).filter(|v| !v.is_null()) {
                    obj.insert((*k).into(), v.clone());
                }
            }
            obj.insert("updatedAt".into(), json!(iso(ctx.now_ms)));
        }
        ctx.replace(PRICE, pid, price.clone())?;
        ctx.emit(
            "PriceUpdate",
            &location_id,
            price_event("PriceUpdate", &price),
        );
    }
    ok(p)
}

fn delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let p = product_of(ctx, req)?;
    let id = str_of(&p, "_id").to_string();
    for price in ctx.children(PRICE, &id) {
        let pid = str_of(&price, "_id").to_string();
        ctx.delete(PRICE, &pid)?;
        ctx.emit(
            "PriceDelete",
            &location_id,
            price_event("PriceDelete", &price),
        );
    }
    ctx.delete(PRODUCT, &id)?;
    ctx.emit("ProductDelete", &location_id, product_event(&p));
    ok(json!({ "status": true }))
}

fn price_of(ctx: &Ctx<'_>, req: &Req, product_id: &str) -> Result<Arc<Value>, ApiError> {
    let price_id = req.path("priceId")?;
    let doc = ctx
        .get(PRICE, price_id)
        .filter(|d| d.parent_id.as_deref() == Some(product_id))
        .ok_or_else(|| ApiError::not_found("Price"))?;
    super::check_location(doc, req)?;
    Ok(doc.body.clone())
}

fn prices_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    location_scope(ctx, req)?;
    let product = product_of(ctx, req)?;
    let mut all = ctx.children(PRICE, str_of(&product, "_id"));
    if let Some(ids) = req.query("ids").filter(|s| !s.is_empty()) {
        let ids: Vec<&str> = ids.split(',').map(str::trim).collect();
        all.retain(|p| ids.contains(&str_of(p, "_id")));
    }
    let total = all.len();
    let items: Vec<Value> = page(req, &all)?.iter().map(|p| (**p).clone()).collect();
    ok(json!({ "prices": items, "total": total }))
}

fn price_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    location_scope(ctx, req)?;
    let product = product_of(ctx, req)?;
    let p = price_of(ctx, req, str_of(&product, "_id"))?;
    ok((*p).clone())
}

fn price_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["name", "type", "currency", "amount", "locationId"])?;
    let body = req.body_object();
    validate_price(&body)?;
    let location_id = location_scope(ctx, req)?;
    let product = product_of(ctx, req)?;
    let p = insert_price(ctx, &location_id, str_of(&product, "_id"), &body)?;
    created(p)
}

fn price_update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["name", "type", "currency", "amount", "locationId"])?;
    let body = req.body_object();
    validate_price(&body)?;
    let location_id = location_scope(ctx, req)?;
    let product = product_of(ctx, req)?;
    let old = price_of(ctx, req, str_of(&product, "_id"))?;
    let mut p = (*old).clone();
    if let Some(obj) = p.as_object_mut() {
        for k in PRICE_FIELDS {
            if let Some(v) = body.get(*k).filter(|v| !v.is_null()) {
                obj.insert((*k).into(), v.clone());
            }
        }
        if obj.get("type").and_then(Value::as_str) != Some("recurring") {
            obj.remove("recurring");
        }
        obj.insert("updatedAt".into(), json!(iso(ctx.now_ms)));
    }
    let id = str_of(&p, "_id").to_string();
    ctx.replace(PRICE, &id, p.clone())?;
    ctx.emit("PriceUpdate", &location_id, price_event("PriceUpdate", &p));
    ok(p)
}

fn price_delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let location_id = location_scope(ctx, req)?;
    let product = product_of(ctx, req)?;
    let p = price_of(ctx, req, str_of(&product, "_id"))?;
    let id = str_of(&p, "_id").to_string();
    ctx.delete(PRICE, &id)?;
    ctx.emit("PriceDelete", &location_id, price_event("PriceDelete", &p));
    ok(json!({ "status": true }))
}

/// A seeded product: name, type, description and its prices (name, amount, recurring interval).
type CatalogEntry = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, f64, Option<&'static str>)],
);

/// Adds this area's demo data to the seeded location: five products with their prices.
///
/// Idempotent within one seeding: the invoices and payments seeders call it first so their
/// orders and invoices sell real products whatever order the seeders run in.
pub fn seed(ctx: &mut Ctx<'_>, seed: &mut Seed) -> Result<(), ApiError> {
    if !seed.ids("product").is_empty() {
        return Ok(());
    }
    let first_event = ctx.events.len();
    let loc = seed.location_id.clone();
    let catalog: [CatalogEntry; 5] = [
        (
            "Starter Consultation",
            "SERVICE",
            "A 30-minute call to scope your project.",
            &[("Single session", 49.0, None)],
        ),
        (
            "Growth Coaching",
            "SERVICE",
            "Weekly coaching with a growth expert.",
            &[
                ("Monthly plan", 199.0, Some("month")),
                ("Yearly plan", 1990.0, Some("year")),
            ],
        ),
        (
            "Marketing Playbook (PDF)",
            "DIGITAL",
            "The 120-page playbook we use with our clients.",
            &[("Download", 29.0, None)],
        ),
        (
            "Branded Water Bottle",
            "PHYSICAL",
            "Insulated steel bottle with your logo.",
            &[("Single", 24.0, None), ("Pack of 10", 199.0, None)],
        ),
        (
            "Website Care Plan",
            "SERVICE",
            "Hosting, backups and monthly updates.",
            &[
                ("Basic", 79.0, Some("month")),
                ("Pro", 149.0, Some("month")),
            ],
        ),
    ];
    let user = seed.ids("user").first().cloned();
    for (name, ty, description, prices) in catalog {
        let body = json!({
            "name": name,
            "productType": ty,
            "description": description,
            "availableInStore": seed.rng.random_bool(0.7),
            "image": format!("https://images.sandbox.test/products/{}.png", slugify(name)),
            "statementDescriptor": name.chars().filter(char::is_ascii_alphanumeric).take(10).collect::<String>().to_uppercase(),
        });
        let p = insert_product(ctx, &loc, body.as_object().unwrap_or(&Map::new()))?;
        let pid = str_of(&p, "_id").to_string();
        for (pname, amount, interval) in prices {
            let mut b = json!({
                "name": pname,
                "type": if interval.is_some() { "recurring" } else { "one_time" },
                "currency": "USD",
                "amount": amount,
            });
            if let Some(i) = interval {
                b["recurring"] = json!({ "interval": i, "intervalCount": 1 });
            }
            if ty == "PHYSICAL" {
                b["trackInventory"] = json!(true);
                b["availableQuantity"] = json!(seed.rng.random_range(20..200));
                b["allowOutOfStockPurchases"] = json!(false);
            }
            if let Some(u) = &user {
                b["userId"] = json!(u);
            }
            let price = insert_price(ctx, &loc, &pid, b.as_object().unwrap_or(&Map::new()))?;
            seed.ids
                .entry("price")
                .or_default()
                .push(str_of(&price, "_id").to_string());
        }
        seed.ids.entry("product").or_default().push(pid);
    }
    // Seeding is not a change anyone should be told about.
    ctx.events.truncate(first_event);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::call;
    use crate::store::Docs;
    use parking_lot::RwLock;

    use crate::handlers::testing::{body, status};

    #[test]
    fn product_crud_and_cascade() {
        let docs = RwLock::new(Docs::default());
        let (r, ev) = call(
            &docs,
            "products.create",
            &[],
            &[],
            json!({ "name": "Awesome Product", "locationId": "loc1", "productType": "DIGITAL" }),
        );
        assert_eq!(status(&r), 201);
        assert_eq!(ev[0].kind, "ProductCreate");
        let p = body(&r);
        let id = p["_id"].as_str().expect("id").to_string();
        assert_eq!(p["slug"], "awesome-product");
        let path = [("productId", id.as_str())];
        let q = [("locationId", "loc1")];
        let (r, _) = call(&docs, "products.get", &path, &q, Value::Null);
        assert_eq!(body(&r)["name"], "Awesome Product");
        let (r, ev) = call(
            &docs,
            "products.update",
            &path,
            &[],
            json!({ "name": "Renamed", "locationId": "loc1", "productType": "PHYSICAL" }),
        );
        assert_eq!(status(&r), 200);
        assert_eq!(ev[0].kind, "ProductUpdate");
        let (r, _) = call(&docs, "products.get", &path, &q, Value::Null);
        assert_eq!(body(&r)["productType"], "PHYSICAL");

        let (r, ev) = call(
            &docs,
            "products.prices.create",
            &path,
            &[],
            json!({ "name": "Monthly", "type": "recurring", "currency": "USD", "amount": 10,
                    "recurring": { "interval": "month", "intervalCount": 1 }, "locationId": "loc1" }),
        );
        assert_eq!(status(&r), 201);
        assert!(ev[0].payload.get("priceType").is_some());
        let price_id = body(&r)["_id"].as_str().expect("id").to_string();
        let ppath = [("productId", id.as_str()), ("priceId", price_id.as_str())];
        let (r, _) = call(
            &docs,
            "products.prices.update",
            &ppath,
            &[],
            json!({ "name": "Monthly+", "type": "recurring", "currency": "USD", "amount": 12,
                    "recurring": { "interval": "month", "intervalCount": 1 }, "locationId": "loc1" }),
        );
        assert_eq!(body(&r)["amount"], 12);
        let (r, _) = call(&docs, "products.prices.get", &ppath, &q, Value::Null);
        assert_eq!(body(&r)["name"], "Monthly+");
        let (r, _) = call(&docs, "products.prices.list", &path, &q, Value::Null);
        assert_eq!(body(&r)["total"], 1);

        let (r, ev) = call(&docs, "products.delete", &path, &q, Value::Null);
        assert_eq!(body(&r), json!({ "status": true }));
        assert!(ev.iter().any(|e| e.kind == "PriceDelete"));
        assert!(ev.iter().any(|e| e.kind == "ProductDelete"));
        let (r, _) = call(&docs, "products.get", &path, &q, Value::Null);
        assert_eq!(status(&r), 404);
        assert!(docs.read().get(PRICE, &price_id).is_none());
    }

    #[test]
    fn price_crud_and_validation() {
        let docs = RwLock::new(Docs::default());
        let (r, _) = call(
            &docs,
            "products.create",
            &[],
            &[],
            json!({ "name": "P", "locationId": "loc1", "productType": "WRONG" }),
        );
        assert_eq!(status(&r), 422);
        let (r, _) = call(
            &docs,
            "products.create",
            &[],
            &[],
            json!({ "locationId": "loc1" }),
        );
        assert_eq!(status(&r), 422);
        let (r, _) = call(
            &docs,
            "products.create",
            &[],
            &[],
            json!({ "name": "P", "locationId": "loc1", "productType": "SERVICE" }),
        );
        let id = body(&r)["_id"].as_str().expect("id").to_string();
        let path = [("productId", id.as_str())];
        let (r, _) = call(
            &docs,
            "products.prices.create",
            &path,
            &[],
            json!({ "name": "X", "type": "recurring", "currency": "USD", "amount": 5, "locationId": "loc1" }),
        );
        assert_eq!(status(&r), 422, "recurring needs its interval");
        let (r, _) = call(
            &docs,
            "products.prices.create",
            &path,
            &[],
            json!({ "name": "X", "type": "one_time", "currency": "USD", "amount": 5, "locationId": "loc1" }),
        );
        let price_id = body(&r)["_id"].as_str().expect("id").to_string();
        let ppath = [("productId", id.as_str()), ("priceId", price_id.as_str())];
        let q = [("locationId", "loc1")];
        let (r, ev) = call(&docs, "products.prices.delete", &ppath, &q, Value::Null);
        assert_eq!(body(&r), json!({ "status": true }));
        assert_eq!(ev[0].kind, "PriceDelete");
        let (r, _) = call(&docs, "products.prices.get", &ppath, &q, Value::Null);
        assert_eq!(status(&r), 404);
        // Another location's product is forbidden.
        let (r, _) = call(
            &docs,
            "products.get",
            &path,
            &[("locationId", "other")],
            Value::Null,
        );
        assert_eq!(status(&r), 403);
    }

    #[test]
    fn list_pages_and_filters() {
        let docs = RwLock::new(Docs::default());
        for i in 0..5 {
            let _ = call(
                &docs,
                "products.create",
                &[],
                &[],
                json!({ "name": format!("Item {i}"), "locationId": "loc1", "productType": "DIGITAL" }),
            );
        }
        let (r, _) = call(
            &docs,
            "products.list",
            &[],
            &[("locationId", "loc1"), ("limit", "2"), ("offset", "0")],
            Value::Null,
        );
        let b = body(&r);
        assert_eq!(b["total"], json!([{ "total": 5 }]));
        assert_eq!(b["products"][0]["name"], "Item 4", "newest first");
        let (r, _) = call(
            &docs,
            "products.list",
            &[],
            &[("locationId", "loc1"), ("limit", "2"), ("offset", "4")],
            Value::Null,
        );
        assert_eq!(body(&r)["products"][0]["name"], "Item 0");
        let (r, _) = call(
            &docs,
            "products.list",
            &[],
            &[("locationId", "loc1"), ("search", "item 3")],
            Value::Null,
        );
        assert_eq!(body(&r)["products"].as_array().map(Vec::len), Some(1));
    }
}
