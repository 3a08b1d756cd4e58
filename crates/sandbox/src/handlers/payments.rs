//! Payments (`payments.json`): orders (list/get, manual payments, fulfillments), transactions
//! and subscriptions (list/get), and coupons (CRUD + list). Payments scope the location with
//! `altId` + `altType=location` (query, or body for writes); lists page with offset/limit and
//! answer `{ data, totalCount }`. Recording an order payment creates its transaction and emits
//! OrderStatusUpdate when the order's status changes; seeded orders emit OrderCreate.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;
use serde_json::{Map, Value, json};

use super::{
    Ctx, HResult, Handler, Req, Seed, UserType, created, forbidden_location, iso, new_id, ok,
    parse_time_ms,
};
use crate::error::ApiError;

/// An order.
pub const ORDER: &str = "order";
/// A payment transaction (of an order, invoice or subscription).
pub const TRANSACTION: &str = "transaction";
/// A subscription.
pub const SUBSCRIPTION: &str = "subscription";
/// A coupon.
pub const COUPON: &str = "coupon";
/// A fulfillment of an order (parent: the order).
pub const FULFILLMENT: &str = "fulfillment";
/// Contacts (owned by the contacts module; read for snapshots).
const CONTACT: &str = "contact";
const LOCATION: &str = "location";

/// Registers the handlers of this module.
pub fn register(map: &mut HashMap<&'static str, Handler>) {
    map.insert("payments.orders.list", orders_list);
    map.insert("payments.orders.get", order_get);
    map.insert("payments.orders.record_payment", order_record_payment);
    map.insert("payments.orders.fulfill", order_fulfill);
    map.insert("payments.transactions.list", transactions_list);
    map.insert("payments.transactions.get", transaction_get);
    map.insert("payments.subscriptions.list", subscriptions_list);
    map.insert("payments.subscriptions.get", subscription_get);
    map.insert("payments.coupons.list", coupons_list);
    map.insert("payments.coupons.create", coupon_create);
    map.insert("payments.coupons.update", coupon_update);
    map.insert("payments.coupons.delete", coupon_delete);
}

/// Manual payment modes.
pub const PAYMENT_MODES: &[&str] = &["cash", "card", "cheque", "bank_transfer", "other"];

fn str_of<'v>(v: &'v Value, k: &str) -> &'v str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn num_of(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

/// Rounds money to cents.
pub fn money(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The location of a payments request: `altId` (query or body) with `altType=location`, or
/// `locationId`, or the token's; 422 on another `altType`, 403 when the token belongs to
/// another location.
pub fn alt_scope(ctx: &Ctx<'_>, req: &Req) -> Result<String, ApiError> {
    let alt_type = req.query("altType").or_else(|| req.field_str("altType"));
    if let Some(t) = alt_type
        && t != "location"
    {
        return Err(ApiError::unprocessable(vec![
            "altType must be one of the following values: location".into(),
        ]));
    }
    let explicit = req
        .query("altId")
        .or_else(|| req.field_str("altId"))
        .or_else(|| req.query("locationId"))
        .filter(|s| !s.is_empty());
    let loc = match (explicit, &req.caller.location_id) {
        (Some(l), _) => l.to_string(),
        (None, Some(l)) => l.clone(),
        (None, None) => {
            return Err(ApiError::unprocessable(vec![
                "altId should not be empty".into(),
            ]));
        }
    };
    if req.caller.location_id.as_deref().is_some_and(|l| l != loc) {
        return Err(forbidden_location());
    }
    // An agency token may act on its own company's locations only.
    if req.caller.user_type == UserType::Company
        && let Some(doc) = ctx.get(LOCATION, &loc)
        && doc.body.get("companyId").and_then(Value::as_str) != req.caller.company_id.as_deref()
    {
        return Err(forbidden_location());
    }
    Ok(loc)
}

/// Start of a `YYYY-MM-DD` (or RFC 3339) date, epoch ms.
pub fn day_start_ms(s: &str) -> Option<i64> {
    if s.len() == 10 {
        parse_time_ms(&json!(format!("{s}T00:00:00Z")))
    } else {
        parse_time_ms(&json!(s))
    }
}

/// End of a `YYYY-MM-DD` day (inclusive), or an RFC 3339 instant, epoch ms.
pub fn day_end_ms(s: &str) -> Option<i64> {
    if s.len() == 10 {
        parse_time_ms(&json!(format!("{s}T23:59:59.999Z")))
    } else {
        parse_time_ms(&json!(s))
    }
}

/// Keeps the items whose `field` date lies in the query's `startAt`..`endAt`.
pub fn date_filter(req: &Req, items: &mut Vec<Arc<Value>>, field: &str) -> Result<(), ApiError> {
    let bad =
        |k: &str| ApiError::unprocessable(vec![format!("{k} must be a valid date (YYYY-MM-DD)")]);
    let start = match req.query("startAt").filter(|s| !s.is_empty()) {
        Some(s) => Some(day_start_ms(s).ok_or_else(|| bad("startAt"))?),
        None => None,
    };
    let end = match req.query("endAt").filter(|s| !s.is_empty()) {
        Some(s) => Some(day_end_ms(s).ok_or_else(|| bad("endAt"))?),
        None => None,
    };
    if start.is_some() || end.is_some() {
        items.retain(|i| {
            let t = i.get(field).and_then(parse_time_ms).unwrap_or(0);
            start.is_none_or(|s| t >= s) && end.is_none_or(|e| t <= e)
        });
    }
    Ok(())
}

/// Offset/limit with the payments service's defaults (10, at most 100 unless `max` says otherwise).
fn page(
    req: &Req,
    items: &[Arc<Value>],
    default: usize,
    max: usize,
) -> Result<Vec<Value>, ApiError> {
    let offset = req.query_usize("offset", 0, usize::MAX)?;
    let limit = req.query_usize("limit", default, max)?;
    Ok(items
        .iter()
        .skip(offset)
        .take(limit)
        .map(|v| (**v).clone())
        .collect())
}

fn eq_filter(req: &Req, items: &mut Vec<Arc<Value>>, param: &str, field: &str) {
    if let Some(want) = req.query(param).filter(|s| !s.is_empty()) {
        items.retain(|i| str_of(i, field) == want);
    }
}

fn mode_filter(req: &Req, items: &mut Vec<Arc<Value>>) {
    if let Some(mode) = req
        .query("paymentMode")
        .filter(|s| !s.is_empty() && *s != "default")
    {
        let live = mode == "live";
        items.retain(|i| i.get("liveMode").and_then(Value::as_bool).unwrap_or(false) == live);
    }
}

fn search_filter(req: &Req, items: &mut Vec<Arc<Value>>, fields: &[&str]) {
    if let Some(q) = req.query("search").filter(|s| !s.is_empty()) {
        let q = q.to_lowercase();
        items.retain(|i| {
            fields
                .iter()
                .any(|f| str_of(i, f).to_lowercase().contains(&q))
        });
    }
}

/// Newest first, as the payments lists sort.
fn newest_first(mut items: Vec<Arc<Value>>) -> Vec<Arc<Value>> {
    items.reverse();
    items
}

fn trace_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The contact snapshot payments keep on orders, transactions and subscriptions.
pub fn contact_snapshot(ctx: &Ctx<'_>, contact_id: &str) -> Option<Value> {
    let c = ctx.get(CONTACT, contact_id)?.body.clone();
    let mut out = Map::new();
    for k in [
        "id",
        "locationId",
        "firstName",
        "lastName",
        "email",
        "phone",
        "dnd",
        "source",
        "address1",
        "city",
        "state",
        "postalCode",
        "tags",
        "country",
        "dateAdded",
    ] {
        if let Some(v) = c.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    Some(Value::Object(out))
}

fn contact_name(snapshot: &Value) -> String {
    format!(
        "{} {}",
        str_of(snapshot, "firstName"),
        str_of(snapshot, "lastName")
    )
    .trim()
    .to_string()
}

fn order_event(kind: &str, o: &Value) -> Value {
    let mut out = Map::new();
    out.insert("type".into(), json!(kind));
    out.insert(
        "locationId".into(),
        o.get("altId").cloned().unwrap_or(Value::Null),
    );
    for k in [
        "_id",
        "altId",
        "altType",
        "contactId",
        "contactSnapshot",
        "status",
        "fulfillmentStatus",
        "currency",
        "amount",
        "liveMode",
        "items",
        "amountSummary",
        "taxSummary",
        "source",
        "createdAt",
        "updatedAt",
    ] {
        if let Some(v) = o.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    Value::Object(out)
}

/// One line of an order: a product and price snapshot with a quantity.
pub struct OrderLine {
    /// The product document.
    pub product: Value,
    /// The price document.
    pub price: Value,
    /// Quantity.
    pub qty: u32,
}

/// Creates an order (as funnels, stores and invoices do) and emits OrderCreate.
pub fn create_order(
    ctx: &mut Ctx<'_>,
    location_id: &str,
    contact_id: &str,
    lines: &[OrderLine],
    source: Value,
    live_mode: bool,
) -> Result<Value, ApiError> {
    let id = new_id();
    let now = iso(ctx.now_ms);
    let snapshot = contact_snapshot(ctx, contact_id).unwrap_or_else(|| json!({ "id": contact_id }));
    let mut subtotal = 0.0;
    let mut items = Vec::new();
    let (mut onetime, mut recurring) = (0, 0);
    let mut currency = "USD".to_string();
    for l in lines {
        let amount = num_of(&l.price, "amount");
        subtotal += amount * f64::from(l.qty);
        if str_of(&l.price, "type") == "recurring" {
            recurring += 1;
        } else {
            onetime += 1;
        }
        if let Some(c) = l.price.get("currency").and_then(Value::as_str) {
            currency = c.to_string();
        }
        items.push(json!({
            "_id": new_id(),
            "name": format!("{} - {}", str_of(&l.product, "name"), str_of(&l.price, "name")),
            "qty": l.qty,
            "product": l.product,
            "price": l.price,
        }));
    }
    let subtotal = money(subtotal);
    let mut o = json!({
        "_id": id,
        "altId": location_id,
        "altType": "location",
        "contactId": contact_id,
        "contactName": contact_name(&snapshot),
        "contactEmail": str_of(&snapshot, "email"),
        "contactSnapshot": snapshot,
        "currency": currency,
        "amount": subtotal,
        "subtotal": subtotal,
        "discount": 0,
        "amountPaid": 0,
        "status": "pending",
        "paymentStatus": "unpaid",
        "liveMode": live_mode,
        "totalProducts": lines.len(),
        "onetimeProducts": onetime,
        "recurringProducts": recurring,
        "sourceType": str_of(&source, "type"),
        "sourceName": str_of(&source, "name"),
        "sourceId": str_of(&source, "id"),
        "source": source,
        "items": items,
        "amountSummary": { "subtotal": subtotal, "discount": 0, "tax": 0, "shipping": 0 },
        "taxSummary": [],
        "fulfillmentStatus": "unfulfilled",
        "createdAt": now,
        "updatedAt": now,
    });
    if let Some(sub) = o["source"].get("subType").cloned() {
        o["sourceSubType"] = sub;
    }
    ctx.put(ORDER, &id, Some(location_id), None, o.clone())?;
    ctx.emit("OrderCreate", location_id, order_event("OrderCreate", &o));
    Ok(o)
}

/// What a new transaction records.
pub struct NewTransaction<'a> {
    /// Location.
    pub location_id: &'a str,
    /// Paying contact.
    pub contact_id: &'a str,
    /// Amount.
    pub amount: f64,
    /// Currency.
    pub currency: &'a str,
    /// Live or test.
    pub live_mode: bool,
    /// `order`, `invoice` or `subscription`.
    pub entity_type: &'a str,
    /// Id of that entity.
    pub entity_id: &'a str,
    /// Where the payment came from (`{type, subType?, id, name?}`).
    pub source: Value,
    /// Manual payment mode (`cash`, `card`, …), `None` for a provider charge.
    pub mode: Option<&'a str>,
    /// Card details of a manual card payment.
    pub card: Option<Value>,
    /// Subscription id, for subscription charges.
    pub subscription_id: Option<&'a str>,
    /// Notes.
    pub notes: Option<&'a str>,
}

/// Records a succeeded transaction (manual payments and seeded charges).
pub fn create_transaction(ctx: &mut Ctx<'_>, t: NewTransaction<'_>) -> Result<Value, ApiError> {
    let id = new_id();
    let now = iso(ctx.now_ms);
    let snapshot =
        contact_snapshot(ctx, t.contact_id).unwrap_or_else(|| json!({ "id": t.contact_id }));
    let provider = if t.mode.is_some() { "manual" } else { "stripe" };
    let mut x = json!({
        "_id": id,
        "altId": t.location_id,
        "altType": "location",
        "contactId": t.contact_id,
        "contactName": contact_name(&snapshot),
        "contactEmail": str_of(&snapshot, "email"),
        "contactSnapshot": snapshot,
        "currency": t.currency,
        "amount": money(t.amount),
        "status": "succeeded",
        "liveMode": t.live_mode,
        "entityType": t.entity_type,
        "entityId": t.entity_id,
        "entitySourceType": str_of(&t.source, "type"),
        "entitySourceName": str_of(&t.source, "name"),
        "entitySourceId": str_of(&t.source, "id"),
        "entitySource": t.source,
        "chargeId": format!("ch_{}", new_id()),
        "paymentProviderType": provider,
        "paymentProvider": { "type": provider },
        "amountRefunded": 0,
        "createdAt": now,
        "updatedAt": now,
        "fulfilledAt": now,
    });
    if let Some(st) = t.source.get("subType").cloned() {
        x["entitySourceSubType"] = st;
    }
    if let Some(mode) = t.mode {
        x["paymentMethod"] = match &t.card {
            Some(card) => json!({ "type": mode, "card": card }),
            None => json!({ "type": mode }),
        };
    }
    if let Some(s) = t.subscription_id {
        x["subscriptionId"] = json!(s);
    }
    if t.entity_type == "invoice" {
        x["invoiceId"] = json!(t.entity_id);
    }
    if let Some(n) = t.notes {
        x["meta"] = json!({ "notes": n });
    }
    ctx.put(TRANSACTION, &id, Some(t.location_id), None, x.clone())?;
    Ok(x)
}

fn order_of(ctx: &Ctx<'_>, req: &Req) -> Result<Arc<Value>, ApiError> {
    ctx.find(ORDER, req.path("orderId")?, "Order", req)
}

fn orders_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = alt_scope(ctx, req)?;
    let mut all = ctx.list(ORDER, &loc);
    eq_filter(req, &mut all, "status", "status");
    eq_filter(req, &mut all, "paymentStatus", "paymentStatus");
    eq_filter(req, &mut all, "contactId", "contactId");
    eq_filter(req, &mut all, "sourceId", "sourceId");
    mode_filter(req, &mut all);
    date_filter(req, &mut all, "createdAt")?;
    if let Some(q) = req.query("search").filter(|s| !s.is_empty()) {
        let q = q.to_lowercase();
        all.retain(|o| {
            ["_id", "contactName", "contactEmail", "sourceName"]
                .iter()
                .any(|f| str_of(o, f).to_lowercase().contains(&q))
                || o["items"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|i| str_of(i, "name").to_lowercase().contains(&q))
                })
        });
    }
    if let Some(ids) = req.query("funnelProductIds").filter(|s| !s.is_empty()) {
        let ids: Vec<&str> = ids.split(',').map(str::trim).collect();
        all.retain(|o| {
            o["items"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|i| ids.contains(&i["product"]["_id"].as_str().unwrap_or_default()))
            })
        });
    }
    let all = newest_first(all);
    let data = page(req, &all, 10, 100)?;
    ok(json!({ "data": data, "totalCount": all.len() }))
}

fn order_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    alt_scope(ctx, req)?;
    let o = order_of(ctx, req)?;
    ok((*o).clone())
}

fn check_mode(req: &Req) -> Result<&str, ApiError> {
    let mode = req.field_str("mode").unwrap_or_default();
    if !PAYMENT_MODES.contains(&mode) {
        return Err(ApiError::unprocessable(vec![format!(
            "mode must be one of the following values: {}",
            PAYMENT_MODES.join(", ")
        )]));
    }
    // `card` and `cheque` details are optional for orders (PostRecordOrderPaymentBody).
    let mut errs = Vec::new();
    if let Some(a) = req.field("amount")
        && !a.as_f64().is_some_and(|a| a > 0.0)
    {
        errs.push("amount must be a positive number".to_string());
    }
    if errs.is_empty() {
        Ok(mode)
    } else {
        Err(ApiError::unprocessable(errs))
    }
}

fn order_record_payment(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["altId", "altType", "mode"])?;
    let mode = check_mode(req)?;
    let loc = alt_scope(ctx, req)?;
    let old = order_of(ctx, req)?;
    let total = num_of(&old, "amount");
    let paid = num_of(&old, "amountPaid");
    let due = money(total - paid);
    if due <= 0.0 || str_of(&old, "paymentStatus") == "paid" {
        return Err(ApiError::bad_request("Order is already paid"));
    }
    // Without an amount the whole amount due is paid; a smaller amount (`isPartialPayment`)
    // leaves the order partially paid.
    let amount = req
        .field("amount")
        .and_then(Value::as_f64)
        .map_or(due, money);
    if amount > due {
        return Err(ApiError::bad_request(
            "Amount cannot be more than the amount due",
        ));
    }
    let id = str_of(&old, "_id").to_string();
    let source = json!({ "type": str_of(&old, "sourceType"), "id": str_of(&old, "sourceId"), "name": str_of(&old, "sourceName") });
    create_transaction(
        ctx,
        NewTransaction {
            location_id: &loc,
            contact_id: str_of(&old, "contactId"),
            amount,
            currency: str_of(&old, "currency"),
            live_mode: old
                .get("liveMode")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            entity_type: "order",
            entity_id: &id,
            source,
            mode: Some(mode),
            card: req.field("card").cloned(),
            subscription_id: None,
            notes: req.field_str("notes"),
        },
    )?;
    let mut o = (*old).clone();
    let new_paid = money(paid + amount);
    let fully = new_paid >= money(total);
    o["amountPaid"] = json!(new_paid);
    o["paymentStatus"] = json!(if fully { "paid" } else { "partially_paid" });
    if fully {
        o["status"] = json!("completed");
    }
    o["updatedAt"] = json!(iso(ctx.now_ms));
    ctx.replace(ORDER, &id, o.clone())?;
    if o["status"] != old["status"] {
        ctx.emit(
            "OrderStatusUpdate",
            &loc,
            order_event("OrderStatusUpdate", &o),
        );
    }
    ok(json!({ "success": true }))
}

fn order_fulfill(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["altId", "altType", "trackings", "items", "notifyCustomer"])?;
    let loc = alt_scope(ctx, req)?;
    let mut errs = Vec::new();
    if !req.field("trackings").is_some_and(Value::is_array) {
        errs.push("trackings must be an array".to_string());
    }
    let given: Vec<Value> = req
        .field("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if given.is_empty() {
        errs.push("items should not be empty".to_string());
    }
    for (i, it) in given.iter().enumerate() {
        if it
            .get("priceId")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errs.push(format!("items.{i}.priceId should not be empty"));
        }
        if !it
            .get("qty")
            .and_then(Value::as_f64)
            .is_some_and(|q| q >= 1.0)
        {
            errs.push(format!("items.{i}.qty must be a positive number"));
        }
    }
    if !req.field("notifyCustomer").is_some_and(Value::is_boolean) {
        errs.push("notifyCustomer must be a boolean value".to_string());
    }
    if !errs.is_empty() {
        return Err(ApiError::unprocessable(errs));
    }
    let old = order_of(ctx, req)?;
    let order_id = str_of(&old, "_id").to_string();
    // Quantities already fulfilled, by price id.
    let mut done: HashMap<String, f64> = HashMap::new();
    for f in ctx.children(FULFILLMENT, &order_id) {
        for it in f["items"].as_array().into_iter().flatten() {
            *done
                .entry(it["price"]["_id"].as_str().unwrap_or_default().to_string())
                .or_default() += num_of(it, "qty");
        }
    }
    let order_items: Vec<Value> = old["items"].as_array().cloned().unwrap_or_default();
    let mut fulfilled_items = Vec::new();
    for it in &given {
        let price_id = str_of(it, "priceId");
        let qty = num_of(it, "qty");
        let Some(line) = order_items
            .iter()
            .find(|l| l["price"]["_id"].as_str() == Some(price_id))
        else {
            return Err(ApiError::bad_request(format!(
                "Item with price {price_id} is not part of this order"
            )));
        };
        let remaining = num_of(line, "qty") - done.get(price_id).copied().unwrap_or(0.0);
        if qty > remaining {
            return Err(ApiError::bad_request(format!(
                "Cannot fulfill {qty} of price {price_id}: only {remaining} left to fulfill"
            )));
        }
        *done.entry(price_id.to_string()).or_default() += qty;
        fulfilled_items.push(json!({
            "_id": line.get("_id").cloned().unwrap_or_else(|| json!(new_id())),
            "name": line.get("name").cloned().unwrap_or(json!("")),
            "product": line.get("product").cloned().unwrap_or(json!({})),
            "price": line.get("price").cloned().unwrap_or(json!({})),
            "qty": it.get("qty").cloned().unwrap_or(json!(1)),
        }));
    }
    let now = iso(ctx.now_ms);
    let fid = new_id();
    let f = json!({
        "_id": fid,
        "altId": loc,
        "altType": "location",
        "trackings": req.field("trackings").cloned().unwrap_or(json!([])),
        "items": fulfilled_items,
        "notifyCustomer": req.field("notifyCustomer").cloned().unwrap_or(json!(false)),
        "createdAt": now,
        "updatedAt": now,
    });
    ctx.put(FULFILLMENT, &fid, Some(&loc), Some(&order_id), f.clone())?;
    let all_done = order_items.iter().all(|l| {
        done.get(l["price"]["_id"].as_str().unwrap_or_default())
            .copied()
            .unwrap_or(0.0)
            >= num_of(l, "qty")
    });
    let mut o = (*old).clone();
    o["fulfillmentStatus"] = json!(if all_done {
        "fulfilled"
    } else {
        "partially_fulfilled"
    });
    o["updatedAt"] = json!(now);
    ctx.replace(ORDER, &order_id, o)?;
    ok(json!({ "status": true, "data": f }))
}

fn transactions_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = alt_scope(ctx, req)?;
    let mut all = ctx.list(TRANSACTION, &loc);
    eq_filter(req, &mut all, "entitySourceType", "entitySourceType");
    eq_filter(req, &mut all, "entitySourceSubType", "entitySourceSubType");
    eq_filter(req, &mut all, "subscriptionId", "subscriptionId");
    eq_filter(req, &mut all, "entityId", "entityId");
    eq_filter(req, &mut all, "contactId", "contactId");
    mode_filter(req, &mut all);
    date_filter(req, &mut all, "createdAt")?;
    search_filter(
        req,
        &mut all,
        &["_id", "contactName", "contactEmail", "entitySourceName"],
    );
    let all = newest_first(all);
    let data = page(req, &all, 10, 100)?;
    ok(json!({ "data": data, "totalCount": all.len() }))
}

fn transaction_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    alt_scope(ctx, req)?;
    let t = ctx.find(TRANSACTION, req.path("transactionId")?, "Transaction", req)?;
    ok((*t).clone())
}

fn subscriptions_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = alt_scope(ctx, req)?;
    let mut all = ctx.list(SUBSCRIPTION, &loc);
    eq_filter(req, &mut all, "entityId", "entityId");
    eq_filter(req, &mut all, "entitySourceType", "entitySourceType");
    eq_filter(req, &mut all, "contactId", "contactId");
    eq_filter(req, &mut all, "id", "_id");
    mode_filter(req, &mut all);
    date_filter(req, &mut all, "createdAt")?;
    search_filter(
        req,
        &mut all,
        &[
            "_id",
            "contactName",
            "contactEmail",
            "entitySourceName",
            "subscriptionId",
        ],
    );
    let all = newest_first(all);
    let mut data = page(req, &all, 10, 100)?;
    if req.query("getPaymentsCollectedCount") == Some("true") {
        for s in &mut data {
            let sid = str_of(s, "_id").to_string();
            let n = ctx
                .list(TRANSACTION, &loc)
                .iter()
                .filter(|t| str_of(t, "subscriptionId") == sid)
                .count();
            s["paymentsCollectedCount"] = json!(n);
        }
    }
    ok(json!({ "data": data, "totalCount": all.len() }))
}

fn subscription_get(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    alt_scope(ctx, req)?;
    let s = ctx.find(
        SUBSCRIPTION,
        req.path("subscriptionId")?,
        "Subscription",
        req,
    )?;
    ok((*s).clone())
}

/// `scheduled` before its start, `expired` after its end, else `active`.
fn coupon_status(c: &Value, now_ms: i64) -> &'static str {
    let start = c.get("startDate").and_then(parse_time_ms).unwrap_or(0);
    let end = c.get("endDate").and_then(parse_time_ms);
    let used_up = c
        .get("usageLimit")
        .and_then(Value::as_f64)
        .is_some_and(|l| l > 0.0 && num_of(c, "usageCount") >= l);
    if now_ms < start {
        "scheduled"
    } else if end.is_some_and(|e| now_ms > e) || used_up {
        "expired"
    } else {
        "active"
    }
}

fn with_status(c: &Value, now_ms: i64) -> Value {
    let mut c = c.clone();
    c["status"] = json!(coupon_status(&c, now_ms));
    c
}

fn validate_coupon(req: &Req) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    let ty = req.field_str("discountType").unwrap_or_default();
    if !["percentage", "amount"].contains(&ty) {
        errs.push(
            "discountType must be one of the following values: percentage, amount".to_string(),
        );
    }
    match req.field("discountValue").and_then(Value::as_f64) {
        None => errs
            .push("discountValue must be a number conforming to the specified constraints".into()),
        Some(v) if v <= 0.0 => errs.push("discountValue must be a positive number".into()),
        Some(v) if ty == "percentage" && v > 100.0 => {
            errs.push("discountValue must not be greater than 100".into());
        }
        _ => {}
    }
    let start = req.field("startDate").and_then(parse_time_ms);
    if start.is_none() {
        errs.push("startDate must be a valid ISO 8601 date string".into());
    }
    if let Some(e) = req.field("endDate") {
        match parse_time_ms(e) {
            None => errs.push("endDate must be a valid ISO 8601 date string".into()),
            Some(e) if start.is_some_and(|s| e < s) => {
                errs.push("endDate must be after startDate".into())
            }
            _ => {}
        }
    }
    if let Some(cfg) = req.field("applyToFuturePaymentsConfig").map(future_config)
        && !cfg
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| ["forever", "fixed"].contains(&t))
    {
        errs.push(
            "applyToFuturePaymentsConfig.type must be one of the following values: forever, fixed"
                .into(),
        );
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(errs))
    }
}

/// `applyToFuturePaymentsConfig` is an object; the spec's example sends a list of them, whose
/// first entry is taken.
fn future_config(v: &Value) -> Value {
    match v {
        Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
        other => other.clone(),
    }
}

fn coupon_code_taken(ctx: &Ctx<'_>, loc: &str, code: &str, own: Option<&str>) -> bool {
    ctx.list(COUPON, loc)
        .iter()
        .any(|c| str_of(c, "code").eq_ignore_ascii_case(code) && Some(str_of(c, "_id")) != own)
}

/// Copies the writable coupon fields of `body` onto `c`.
fn apply_coupon_fields(c: &mut Value, body: &Map<String, Value>) {
    for k in [
        "name",
        "code",
        "discountType",
        "discountValue",
        "endDate",
        "usageLimit",
        "productIds",
        "applyToFuturePayments",
    ] {
        if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
            c[k] = v.clone();
        }
    }
    if let Some(cfg) = body
        .get("applyToFuturePaymentsConfig")
        .map(future_config)
        .filter(Value::is_object)
    {
        c["applyToFuturePaymentsConfig"] = cfg;
    }
    if let Some(s) = body.get("startDate").and_then(parse_time_ms) {
        c["startDate"] = json!(iso(s));
    }
    if let Some(e) = body.get("endDate").and_then(parse_time_ms) {
        c["endDate"] = json!(iso(e));
    }
    // The request's `limitPerCustomer` is a flag; the stored coupon counts uses per customer.
    match body.get("limitPerCustomer") {
        Some(Value::Bool(b)) => c["limitPerCustomer"] = json!(i32::from(*b)),
        Some(Value::Number(n)) => c["limitPerCustomer"] = json!(n),
        _ => {}
    }
}

/// Inserts a coupon; shared by the handler and the seeder.
fn insert_coupon(
    ctx: &mut Ctx<'_>,
    loc: &str,
    body: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let id = new_id();
    let now = iso(ctx.now_ms);
    let mut c = json!({
        "_id": id,
        "altId": loc,
        "altType": "location",
        "usageCount": 0,
        "limitPerCustomer": 0,
        "applyToFuturePayments": false,
        "applyToFuturePaymentsConfig": { "type": "forever" },
        "productIds": [],
        "createdAt": now,
        "updatedAt": now,
    });
    apply_coupon_fields(&mut c, body);
    ctx.put(COUPON, &id, Some(loc), None, c.clone())?;
    Ok(c)
}

fn coupons_list(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    let loc = alt_scope(ctx, req)?;
    let now = ctx.now_ms;
    let mut all: Vec<Arc<Value>> = ctx
        .list(COUPON, &loc)
        .iter()
        .map(|c| Arc::new(with_status(c, now)))
        .collect();
    if let Some(s) = req.query("status").filter(|s| !s.is_empty()) {
        if !["scheduled", "active", "expired"].contains(&s) {
            return Err(ApiError::unprocessable(vec![
                "status must be one of the following values: scheduled, active, expired".into(),
            ]));
        }
        all.retain(|c| str_of(c, "status") == s);
    }
    search_filter(req, &mut all, &["name", "code"]);
    let all = newest_first(all);
    let data = page(req, &all, 100, 100)?;
    ok(json!({ "data": data, "totalCount": all.len(), "traceId": trace_id() }))
}

fn coupon_create(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&[
        "altId",
        "altType",
        "name",
        "code",
        "discountType",
        "discountValue",
        "startDate",
    ])?;
    validate_coupon(req)?;
    let loc = alt_scope(ctx, req)?;
    let code = req.field_str("code").unwrap_or_default();
    if coupon_code_taken(ctx, &loc, code, None) {
        return Err(ApiError::bad_request(format!(
            "Coupon with code {code} already exists"
        )));
    }
    let c = insert_coupon(ctx, &loc, &req.body_object())?;
    let mut out = with_status(&c, ctx.now_ms);
    out["traceId"] = json!(trace_id());
    created(out)
}

fn coupon_of(ctx: &Ctx<'_>, req: &Req) -> Result<Arc<Value>, ApiError> {
    let id = req
        .field_str("id")
        .or_else(|| req.query("id"))
        .ok_or_else(|| ApiError::unprocessable(vec!["id should not be empty".into()]))?;
    ctx.find(COUPON, id, "Coupon", req)
}

fn coupon_update(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&[
        "altId",
        "altType",
        "name",
        "code",
        "discountType",
        "discountValue",
        "startDate",
        "id",
    ])?;
    validate_coupon(req)?;
    let loc = alt_scope(ctx, req)?;
    let old = coupon_of(ctx, req)?;
    let id = str_of(&old, "_id").to_string();
    let code = req.field_str("code").unwrap_or_default();
    if coupon_code_taken(ctx, &loc, code, Some(&id)) {
        return Err(ApiError::bad_request(format!(
            "Coupon with code {code} already exists"
        )));
    }
    let mut c = (*old).clone();
    apply_coupon_fields(&mut c, &req.body_object());
    c["updatedAt"] = json!(iso(ctx.now_ms));
    if let Some(obj) = c.as_object_mut() {
        obj.remove("status");
    }
    ctx.replace(COUPON, &id, c.clone())?;
    let mut out = with_status(&c, ctx.now_ms);
    out["traceId"] = json!(trace_id());
    ok(out)
}

fn coupon_delete(ctx: &mut Ctx<'_>, req: &Req) -> HResult {
    req.require_fields(&["altId", "altType", "id"])?;
    alt_scope(ctx, req)?;
    let c = coupon_of(ctx, req)?;
    ctx.delete(COUPON, str_of(&c, "_id"))?;
    ok(json!({ "success": true, "traceId": trace_id() }))
}

/// A product/price pair to sell in seeded orders: the seeded catalog, or a stand-in when the
/// products seeder has not run.
fn catalog(ctx: &Ctx<'_>, loc: &str) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for p in ctx.list(super::products::PRODUCT, loc) {
        for price in ctx.children(super::products::PRICE, str_of(&p, "_id")) {
            out.push(((*p).clone(), (*price).clone()));
        }
    }
    if out.is_empty() {
        let now = iso(ctx.now_ms);
        let pid = new_id();
        out.push((
            json!({ "_id": pid, "locationId": loc, "name": "Consultation", "productType": "SERVICE", "createdAt": now, "updatedAt": now }),
            json!({ "_id": new_id(), "locationId": loc, "product": pid, "name": "Single session", "type": "one_time", "currency": "USD", "amount": 99, "createdAt": now, "updatedAt": now }),
        ));
    }
    out
}

/// Adds this area's demo data to the seeded location: orders (some paid, some fulfilled) with
/// their transactions, subscriptions for recurring prices, and three coupons.
pub fn seed(ctx: &mut Ctx<'_>, seed: &mut Seed) -> Result<(), ApiError> {
    super::products::seed(ctx, seed)?;
    let first_event = ctx.events.len();
    let loc = seed.location_id.clone();
    let contacts: Vec<String> = seed.ids("contact").to_vec();
    let items = catalog(ctx, &loc);
    let day = 86_400_000_i64;
    let base = ctx.now_ms;
    let sources = [
        json!({ "type": "funnel", "subType": "two_step_order_form", "id": new_id(), "name": "Spring Offer Funnel" }),
        json!({ "type": "website", "subType": "store", "id": new_id(), "name": "Online Store" }),
        json!({ "type": "payment_link", "id": new_id(), "name": "Payment Link" }),
    ];
    for i in 0..12 {
        let contact = match contacts.len() {
            0 => new_id(),
            n => contacts[seed.rng.random_range(0..n)].clone(),
        };
        // Orders are spread over the last 60 days, oldest first.
        ctx.now_ms = base - day * (60 - i64::from(i) * 5);
        let (product, price) = items[seed.rng.random_range(0..items.len())].clone();
        let qty = seed.rng.random_range(1..=3);
        let source = sources[usize::try_from(i).unwrap_or(0) % sources.len()].clone();
        let live = i % 4 != 0;
        let recurring = str_of(&price, "type") == "recurring";
        let o = create_order(
            ctx,
            &loc,
            &contact,
            &[OrderLine {
                product: product.clone(),
                price: price.clone(),
                qty,
            }],
            source.clone(),
            live,
        )?;
        let oid = str_of(&o, "_id").to_string();
        seed.ids.entry("order").or_default().push(oid.clone());
        if i % 3 == 0 {
            continue; // left unpaid
        }
        let amount = num_of(&o, "amount");
        let mut sub_id = None;
        if recurring {
            let sid = new_id();
            let now = iso(ctx.now_ms);
            let snapshot =
                contact_snapshot(ctx, &contact).unwrap_or_else(|| json!({ "id": contact }));
            let s = json!({
                "_id": sid,
                "altId": loc,
                "altType": "location",
                "contactId": contact,
                "contactName": contact_name(&snapshot),
                "contactEmail": str_of(&snapshot, "email"),
                "contactSnapshot": snapshot,
                "currency": str_of(&price, "currency"),
                "amount": amount,
                "status": if i % 5 == 0 { "canceled" } else { "active" },
                "liveMode": live,
                "entityType": "order",
                "entityId": oid,
                "entitySourceType": str_of(&source, "type"),
                "entitySourceName": str_of(&source, "name"),
                "entitySourceId": str_of(&source, "id"),
                "entitySource": source,
                "subscriptionId": format!("sub_{}", new_id()),
                "subscriptionSnapshot": { "status": "active", "items": [{ "price": price["_id"], "quantity": qty }] },
                "paymentProviderType": "stripe",
                "paymentProvider": { "type": "stripe" },
                "recurringProduct": { "locationId": loc, "product": product, "price": price, "qty": qty },
                "createdAt": now,
                "updatedAt": now,
            });
            ctx.put(SUBSCRIPTION, &sid, Some(&loc), None, s)?;
            seed.ids
                .entry("subscription")
                .or_default()
                .push(sid.clone());
            sub_id = Some(sid);
        }
        let t = create_transaction(
            ctx,
            NewTransaction {
                location_id: &loc,
                contact_id: &contact,
                amount,
                currency: str_of(&o, "currency"),
                live_mode: live,
                entity_type: "order",
                entity_id: &oid,
                source: source.clone(),
                mode: None,
                card: None,
                subscription_id: sub_id.as_deref(),
                notes: None,
            },
        )?;
        seed.ids
            .entry("transaction")
            .or_default()
            .push(str_of(&t, "_id").to_string());
        let mut paid = o.clone();
        paid["amountPaid"] = json!(amount);
        paid["paymentStatus"] = json!("paid");
        paid["status"] = json!("completed");
        if i % 2 == 0 && str_of(&product, "productType") == "PHYSICAL" {
            paid["fulfillmentStatus"] = json!("fulfilled");
        }
        paid["updatedAt"] = json!(iso(ctx.now_ms));
        ctx.replace(ORDER, &oid, paid)?;
    }
    ctx.now_ms = base;
    let coupons = [
        ("Welcome 10%", "WELCOME10", "percentage", 10.0, -30, None),
        ("Spring Sale", "SPRING25", "amount", 25.0, -10, Some(20)),
        ("Black Friday", "BF50", "percentage", 50.0, 30, Some(34)),
    ];
    for (name, code, ty, value, start_days, end_days) in coupons {
        let mut b = json!({
            "name": name, "code": code, "discountType": ty, "discountValue": value,
            "startDate": iso(base + day * start_days),
            "usageLimit": 100,
            "limitPerCustomer": true,
        });
        if let Some(e) = end_days {
            b["endDate"] = json!(iso(base + day * e));
        }
        let c = insert_coupon(ctx, &loc, b.as_object().unwrap_or(&Map::new()))?;
        let mut c2 = c.clone();
        c2["usageCount"] = json!(seed.rng.random_range(0..40));
        ctx.replace(COUPON, str_of(&c, "_id"), c2)?;
        seed.ids
            .entry("coupon")
            .or_default()
            .push(str_of(&c, "_id").to_string());
    }
    // Seeding is not a change anyone should be told about.
    ctx.events.truncate(first_event);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::Guard;
    use crate::handlers::testing::call;
    use crate::store::Docs;
    use parking_lot::RwLock;

    use crate::handlers::testing::{body, status};

    const ALT: [(&str, &str); 2] = [("altId", "loc1"), ("altType", "location")];

    fn make_order(docs: &RwLock<Docs>, qty: u32) -> String {
        let mut ctx = Ctx::new(Guard::Write(docs.write()), 1_700_000_000_000);
        let product = json!({ "_id": "p1", "locationId": "loc1", "name": "Bottle", "productType": "PHYSICAL", "createdAt": "x", "updatedAt": "x" });
        let price = json!({ "_id": "pr1", "name": "Single", "type": "one_time", "currency": "USD", "amount": 20 });
        let o = create_order(
            &mut ctx,
            "loc1",
            "c1",
            &[OrderLine {
                product,
                price,
                qty,
            }],
            json!({ "type": "website", "id": "s1", "name": "Store" }),
            false,
        )
        .expect("order");
        assert_eq!(ctx.events[0].kind, "OrderCreate");
        o["_id"].as_str().unwrap_or_default().to_string()
    }

    #[test]
    fn order_payment_and_fulfillment() {
        let docs = RwLock::new(Docs::default());
        let oid = make_order(&docs, 2);
        let path = [("orderId", oid.as_str())];
        let (r, _) = call(
            &docs,
            "payments.orders.get",
            &path,
            &[("altId", "loc1")],
            Value::Null,
        );
        assert_eq!(body(&r)["amount"], 40.0);
        let (r, _) = call(
            &docs,
            "payments.orders.list",
            &[],
            &[("altId", "loc1")],
            Value::Null,
        );
        assert_eq!(body(&r)["totalCount"], 1);

        let (r, ev) = call(
            &docs,
            "payments.orders.record_payment",
            &path,
            &[],
            json!({ "altId": "loc1", "altType": "location", "mode": "cash", "amount": 10, "isPartialPayment": true }),
        );
        assert_eq!(body(&r), json!({ "success": true }));
        assert!(ev.is_empty(), "status unchanged on a partial payment");
        let (r, _) = call(
            &docs,
            "payments.orders.get",
            &path,
            &[("altId", "loc1")],
            Value::Null,
        );
        assert_eq!(body(&r)["paymentStatus"], "partially_paid");
        let (r, ev) = call(
            &docs,
            "payments.orders.record_payment",
            &path,
            &[],
            json!({ "altId": "loc1", "altType": "location", "mode": "card", "card": { "type": "visa", "last4": "4242" } }),
        );
        assert_eq!(status(&r), 200);
        assert_eq!(ev[0].kind, "OrderStatusUpdate");
        assert_eq!(ev[0].payload["status"], "completed");
        let (r, _) = call(
            &docs,
            "payments.orders.record_payment",
            &path,
            &[],
            json!({ "altId": "loc1", "altType": "location", "mode": "cash" }),
        );
        assert_eq!(status(&r), 400, "already paid");
        let (r, _) = call(&docs, "payments.transactions.list", &[], &ALT, Value::Null);
        let b = body(&r);
        assert_eq!(b["totalCount"], 2);
        let tid = b["data"][0]["_id"].as_str().unwrap_or_default().to_string();
        let (r, _) = call(
            &docs,
            "payments.transactions.get",
            &[("transactionId", tid.as_str())],
            &ALT,
            Value::Null,
        );
        assert_eq!(body(&r)["entityId"], oid.as_str());

        let fulfil = |qty: u32| {
            json!({ "altId": "loc1", "altType": "location", "notifyCustomer": false,
                    "trackings": [{ "trackingNumber": "1Z", "shippingCarrier": "UPS" }],
                    "items": [{ "priceId": "pr1", "qty": qty }] })
        };
        let (r, _) = call(&docs, "payments.orders.fulfill", &path, &[], fulfil(1));
        let b = body(&r);
        assert_eq!(b["status"], true);
        assert_eq!(b["data"]["items"][0]["price"]["_id"], "pr1");
        let (r, _) = call(
            &docs,
            "payments.orders.get",
            &path,
            &[("altId", "loc1")],
            Value::Null,
        );
        assert_eq!(body(&r)["fulfillmentStatus"], "partially_fulfilled");
        let (r, _) = call(&docs, "payments.orders.fulfill", &path, &[], fulfil(2));
        assert_eq!(status(&r), 400, "only one left");
        let _ = call(&docs, "payments.orders.fulfill", &path, &[], fulfil(1));
        let (r, _) = call(
            &docs,
            "payments.orders.get",
            &path,
            &[("altId", "loc1")],
            Value::Null,
        );
        assert_eq!(body(&r)["fulfillmentStatus"], "fulfilled");
        let (r, _) = call(
            &docs,
            "payments.orders.get",
            &[("orderId", "nope")],
            &[("altId", "loc1")],
            Value::Null,
        );
        assert_eq!(status(&r), 404);
    }

    #[test]
    fn coupon_crud() {
        let docs = RwLock::new(Docs::default());
        let new = json!({ "altId": "loc1", "altType": "location", "name": "Sale", "code": "SALE10",
                          "discountType": "percentage", "discountValue": 10,
                          "startDate": "2023-01-01T00:00:00.000Z", "limitPerCustomer": true });
        let (r, _) = call(&docs, "payments.coupons.create", &[], &[], new.clone());
        assert_eq!(status(&r), 201);
        let c = body(&r);
        assert_eq!(c["status"], "active");
        assert_eq!(c["limitPerCustomer"], 1);
        let id = c["_id"].as_str().unwrap_or_default().to_string();
        let (r, _) = call(&docs, "payments.coupons.create", &[], &[], new.clone());
        assert_eq!(status(&r), 400, "duplicate code");
        let mut upd = new.clone();
        upd["id"] = json!(id);
        upd["discountValue"] = json!(20);
        upd["endDate"] = json!("2023-02-01T00:00:00.000Z");
        let (r, _) = call(&docs, "payments.coupons.update", &[], &[], upd);
        assert_eq!(body(&r)["status"], "expired");
        let (r, _) = call(&docs, "payments.coupons.list", &[], &ALT, Value::Null);
        let b = body(&r);
        assert_eq!(b["totalCount"], 1);
        assert_eq!(b["data"][0]["discountValue"], 20);
        let (r, _) = call(
            &docs,
            "payments.coupons.list",
            &[],
            &[
                ("altId", "loc1"),
                ("altType", "location"),
                ("status", "active"),
            ],
            Value::Null,
        );
        assert_eq!(body(&r)["totalCount"], 0);
        let del = json!({ "altId": "loc1", "altType": "location", "id": id });
        let (r, _) = call(&docs, "payments.coupons.delete", &[], &[], del.clone());
        assert_eq!(body(&r)["success"], true);
        let (r, _) = call(&docs, "payments.coupons.delete", &[], &[], del);
        assert_eq!(status(&r), 404);
        let mut bad = new;
        bad["discountValue"] = json!(150);
        let (r, _) = call(&docs, "payments.coupons.create", &[], &[], bad);
        assert_eq!(status(&r), 422);
        let (r, _) = call(
            &docs,
            "payments.coupons.list",
            &[],
            &[("altId", "loc2"), ("altType", "location")],
            Value::Null,
        );
        assert_eq!(status(&r), 403);
    }

    #[test]
    fn lists_page_newest_first() {
        let docs = RwLock::new(Docs::default());
        let ids: Vec<String> = (0..3).map(|_| make_order(&docs, 1)).collect();
        let (r, _) = call(
            &docs,
            "payments.orders.list",
            &[],
            &[("altId", "loc1"), ("limit", "2")],
            Value::Null,
        );
        let b = body(&r);
        assert_eq!(b["totalCount"], 3);
        assert_eq!(b["data"][0]["_id"], ids[2].as_str());
        let (r, _) = call(
            &docs,
            "payments.orders.list",
            &[],
            &[("altId", "loc1"), ("limit", "2"), ("offset", "2")],
            Value::Null,
        );
        assert_eq!(body(&r)["data"][0]["_id"], ids[0].as_str());
        let (r, _) = call(&docs, "payments.subscriptions.list", &[], &ALT, Value::Null);
        assert_eq!(body(&r), json!({ "data": [], "totalCount": 0 }));
    }
}
