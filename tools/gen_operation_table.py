#!/usr/bin/env python3
"""Regenerates crates/highlevel/src/operations/table.rs from the HighLevel reference data.

The operation table is hlbridge's own: ids, categories and the choice of operations are
ours; method, path, scope, Version, pagination and parameters are read from the official
OpenAPI specs (via catalog.json) so the table stays faithful. Run it from the repository
root with the reference folder beside the checkout:

    python3 tools/gen_operation_table.py ../shared/highlevel | rustfmt --edition 2024 > crates/highlevel/src/operations/table.rs

The conformance test in crates/highlevel/tests/it checks the result against the specs again.
"""
import json, os, re, sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "../shared/highlevel"

IDS = {
    "GET /contacts/{contactId}": "contacts.get",
    "POST /contacts/search": "contacts.search",
    "GET /contacts/business/{businessId}": "contacts.by_business",
    "GET /contacts/search/duplicate#4": "contacts.find_duplicate",
    "GET /contacts/{contactId}/appointments": "contacts.appointments.list",
    "GET /contacts/{contactId}/tasks": "contacts.tasks.list",
    "GET /contacts/{contactId}/tasks/{taskId}": "contacts.tasks.get",
    "GET /contacts/{contactId}/notes": "contacts.notes.list",
    "GET /contacts/{contactId}/notes/{id}": "contacts.notes.get",
    "GET /contacts/": "contacts.list",
    "POST /contacts/": "contacts.create",
    "PUT /contacts/{contactId}": "contacts.update",
    "GET /contacts/search/duplicate#13": "contacts.find",
    "DELETE /contacts/{contactId}": "contacts.delete",
    "POST /contacts/upsert": "contacts.upsert",
    "POST /contacts/{contactId}/tags": "contacts.tags.add",
    "DELETE /contacts/{contactId}/tags": "contacts.tags.remove",
    "POST /contacts/bulk/tags/update/{type}": "contacts.tags.bulk_update",
    "POST /contacts/{contactId}/tasks": "contacts.tasks.create",
    "PUT /contacts/{contactId}/tasks/{taskId}": "contacts.tasks.update",
    "PUT /contacts/{contactId}/tasks/{taskId}/completed": "contacts.tasks.complete",
    "DELETE /contacts/{contactId}/tasks/{taskId}": "contacts.tasks.delete",
    "POST /contacts/{contactId}/notes": "contacts.notes.create",
    "PUT /contacts/{contactId}/notes/{id}": "contacts.notes.update",
    "DELETE /contacts/{contactId}/notes/{id}": "contacts.notes.delete",
    "POST /contacts/{contactId}/campaigns/{campaignId}": "contacts.campaigns.add",
    "DELETE /contacts/{contactId}/campaigns/{campaignId}": "contacts.campaigns.remove",
    "DELETE /contacts/{contactId}/campaigns/removeAll": "contacts.campaigns.remove_all",
    "GET /calendars/groups": "calendars.groups.list",
    "GET /calendars/": "calendars.list",
    "GET /calendars/{calendarId}": "calendars.get",
    "GET /calendars/{calendarId}/free-slots": "calendars.free_slots",
    "GET /calendars/events": "calendars.events.list",
    "GET /calendars/blocked-slots": "calendars.blocked_slots.list",
    "GET /calendars/events/appointments/{eventId}": "calendars.appointments.get",
    "GET /calendars/appointments/{appointmentId}/notes": "calendars.appointments.notes.list",
    "GET /calendars/{calendarId}/notifications": "calendars.notifications.list",
    "GET /calendars/{calendarId}/notifications/{notificationId}": "calendars.notifications.get",
    "GET /calendars/resources/{resourceType}": "calendars.resources.list",
    "GET /calendars/resources/{resourceType}/{id}": "calendars.resources.get",
    "POST /calendars/groups": "calendars.groups.create",
    "PUT /calendars/groups/{groupId}": "calendars.groups.update",
    "PUT /calendars/groups/{groupId}/status": "calendars.groups.set_status",
    "DELETE /calendars/groups/{groupId}": "calendars.groups.delete",
    "POST /calendars/groups/validate-slug": "calendars.groups.validate_slug",
    "POST /calendars/": "calendars.create",
    "PUT /calendars/{calendarId}": "calendars.update",
    "DELETE /calendars/{calendarId}": "calendars.delete",
    "POST /calendars/events/appointments": "calendars.appointments.create",
    "PUT /calendars/events/appointments/{eventId}": "calendars.appointments.update",
    "DELETE /calendars/events/{eventId}": "calendars.events.delete",
    "POST /calendars/events/block-slots": "calendars.blocked_slots.create",
    "PUT /calendars/events/block-slots/{eventId}": "calendars.blocked_slots.update",
    "POST /calendars/appointments/{appointmentId}/notes": "calendars.appointments.notes.create",
    "PUT /calendars/appointments/{appointmentId}/notes/{noteId}": "calendars.appointments.notes.update",
    "DELETE /calendars/appointments/{appointmentId}/notes/{noteId}": "calendars.appointments.notes.delete",
    "POST /calendars/{calendarId}/notifications": "calendars.notifications.create",
    "PUT /calendars/{calendarId}/notifications/{notificationId}": "calendars.notifications.update",
    "DELETE /calendars/{calendarId}/notifications/{notificationId}": "calendars.notifications.delete",
    "POST /calendars/resources/{resourceType}": "calendars.resources.create",
    "PUT /calendars/resources/{resourceType}/{id}": "calendars.resources.update",
    "DELETE /calendars/resources/{resourceType}/{id}": "calendars.resources.delete",
    "GET /calendars/schedules/search": "calendars.schedules.list",
    "GET /opportunities/search": "opportunities.search",
    "GET /opportunities/{id}": "opportunities.get",
    "GET /opportunities/pipelines": "opportunities.pipelines.list",
    "POST /opportunities/": "opportunities.create",
    "PUT /opportunities/{id}": "opportunities.update",
    "DELETE /opportunities/{id}": "opportunities.delete",
    "PUT /opportunities/{id}/status": "opportunities.set_status",
    "POST /opportunities/upsert": "opportunities.upsert",
    "POST /opportunities/{id}/followers": "opportunities.followers.add",
    "DELETE /opportunities/{id}/followers": "opportunities.followers.remove",
    "GET /users/search": "users.search",
    "POST /users/search/filter-by-email": "users.filter_by_email",
    "GET /users/{userId}": "users.get",
    "GET /users/": "users.list",
    "POST /users/": "users.create",
    "PUT /users/{userId}": "users.update",
    "DELETE /users/{userId}": "users.delete",
    "GET /conversations/search": "conversations.search",
    "GET /conversations/{conversationId}": "conversations.get",
    "GET /conversations/messages/email/{id}": "conversations.emails.get",
    "GET /conversations/messages/{id}": "conversations.messages.get",
    "GET /conversations/{conversationId}/messages": "conversations.messages.list",
    "GET /conversations/messages/{messageId}/locations/{locationId}/recording": "conversations.messages.recording",
    "GET /conversations/locations/{locationId}/messages/{messageId}/transcription": "conversations.messages.transcription",
    "GET /conversations/locations/{locationId}/messages/{messageId}/transcription/download": "conversations.messages.transcription_download",
    "PUT /conversations/messages/{messageId}/status": "conversations.messages.set_status",
    "POST /conversations/providers/live-chat/typing": "conversations.live_chat.typing",
    "POST /conversations/messages": "conversations.messages.send",
    "POST /conversations/": "conversations.create",
    "GET /businesses/{businessId}": "businesses.get",
    "GET /businesses/": "businesses.list",
    "POST /businesses/": "businesses.create",
    "PUT /businesses/{businessId}": "businesses.update",
    "DELETE /businesses/{businessId}": "businesses.delete",
    "GET /workflows/": "workflows.list",
    "GET /snapshots/": "snapshots.list",
    "GET /campaigns/": "campaigns.list",
    "POST /contacts/{contactId}/workflow/{workflowId}": "contacts.workflows.add",
    "DELETE /contacts/{contactId}/workflow/{workflowId}": "contacts.workflows.remove",
    "POST /contacts/{contactId}/followers": "contacts.followers.add",
    "DELETE /contacts/{contactId}/followers": "contacts.followers.remove",
    "POST /contacts/bulk/business": "contacts.bulk_business",
    "GET /locations/search": "locations.search",
    "GET /locations/{locationId}/customFields": "locations.custom_fields.list",
    "GET /companies/{companyId}": "companies.get",
    "GET /associations/": "associations.list",
    "GET /associations/{associationId}": "associations.get",
    "GET /associations/key/{key_name}": "associations.get_by_key",
    "GET /associations/objectKey/{objectKey}": "associations.get_by_object_key",
    "GET /associations/relations/{recordId}": "associations.relations.list",
    "GET /blogs/posts/url-slug-exists": "blogs.posts.slug_exists",
    "GET /blogs/authors": "blogs.authors.list",
    "GET /blogs/categories": "blogs.categories.list",
    "GET /blogs/posts/all": "blogs.posts.list",
    "GET /blogs/site/all": "blogs.list",
    "GET /locations/{locationId}": "locations.get",
    "POST /locations/": "locations.create",
    "PUT /locations/{locationId}": "locations.update",
    "POST /associations/": "associations.create",
    "PUT /associations/{associationId}": "associations.update",
    "DELETE /associations/{associationId}": "associations.delete",
    "POST /associations/relations": "associations.relations.create",
    "DELETE /associations/relations/{relationId}": "associations.relations.delete",
    "POST /blogs/posts": "blogs.posts.create",
    "PUT /blogs/posts/{postId}": "blogs.posts.update",
    "GET /locations/{locationId}/customValues": "locations.custom_values.list",
    "GET /locations/{locationId}/customFields/{id}": "locations.custom_fields.get",
    "GET /locations/{locationId}/tags": "locations.tags.list",
    "GET /custom-fields/object-key/{objectKey}": "custom_fields.by_object_key",
    "GET /objects/": "objects.list",
    "GET /objects/{key}": "objects.get",
    "POST /locations/{locationId}/tasks/search": "locations.tasks.search",
    "GET /locations/{locationId}/tags/{tagId}": "locations.tags.get",
    "GET /locations/{locationId}/customValues/{id}": "locations.custom_values.get",
    "POST /locations/{locationId}/tags": "locations.tags.create",
    "PUT /locations/{locationId}/tags/{tagId}": "locations.tags.update",
    "DELETE /locations/{locationId}/tags/{tagId}": "locations.tags.delete",
    "POST /locations/{locationId}/customValues": "locations.custom_values.create",
    "PUT /locations/{locationId}/customValues/{id}": "locations.custom_values.update",
    "DELETE /locations/{locationId}/customValues/{id}": "locations.custom_values.delete",
    "POST /locations/{locationId}/customFields": "locations.custom_fields.create",
    "PUT /locations/{locationId}/customFields/{id}": "locations.custom_fields.update",
    "DELETE /locations/{locationId}/customFields/{id}": "locations.custom_fields.delete",
    "POST /objects/{schemaKey}/records/search": "objects.records.search",
    "GET /objects/{schemaKey}/records/{id}": "objects.records.get",
    "POST /objects/{schemaKey}/records": "objects.records.create",
    "PUT /objects/{schemaKey}/records/{id}": "objects.records.update",
    "DELETE /objects/{schemaKey}/records/{id}": "objects.records.delete",
    "GET /forms/": "forms.list",
    "GET /forms/submissions": "forms.submissions.list",
    "GET /surveys/": "surveys.list",
    "GET /surveys/submissions": "surveys.submissions.list",
    "POST /forms/upload-custom-files": "forms.upload_custom_files",
    "GET /invoices/": "invoices.list",
    "GET /invoices/{invoiceId}": "invoices.get",
    "GET /invoices/estimate/list": "invoices.estimates.list",
    "POST /invoices/": "invoices.create",
    "PUT /invoices/{invoiceId}": "invoices.update",
    "DELETE /invoices/{invoiceId}": "invoices.delete",
    "POST /invoices/{invoiceId}/send": "invoices.send",
    "POST /invoices/{invoiceId}/void": "invoices.void",
    "POST /invoices/{invoiceId}/record-payment": "invoices.record_payment",
    "POST /invoices/text2pay": "invoices.text2pay",
    "GET /payments/orders": "payments.orders.list",
    "GET /payments/orders/{orderId}": "payments.orders.get",
    "GET /payments/transactions": "payments.transactions.list",
    "GET /payments/transactions/{transactionId}": "payments.transactions.get",
    "GET /payments/subscriptions": "payments.subscriptions.list",
    "GET /payments/subscriptions/{subscriptionId}": "payments.subscriptions.get",
    "GET /payments/coupon/list": "payments.coupons.list",
    "POST /payments/orders/{orderId}/record-payment": "payments.orders.record_payment",
    "POST /payments/orders/{orderId}/fulfillments": "payments.orders.fulfill",
    "POST /payments/coupon": "payments.coupons.create",
    "PUT /payments/coupon": "payments.coupons.update",
    "DELETE /payments/coupon": "payments.coupons.delete",
    "GET /products/": "products.list",
    "GET /products/{productId}": "products.get",
    "GET /products/{productId}/price": "products.prices.list",
    "GET /products/{productId}/price/{priceId}": "products.prices.get",
    "POST /products/": "products.create",
    "PUT /products/{productId}": "products.update",
    "DELETE /products/{productId}": "products.delete",
    "POST /products/{productId}/price": "products.prices.create",
    "PUT /products/{productId}/price/{priceId}": "products.prices.update",
    "DELETE /products/{productId}/price/{priceId}": "products.prices.delete",
}

CATEGORY = {
    "Contacts": "Contacts",
    "Calendars & Appointments": "CalendarsAppointments",
    "Opportunities": "Opportunities",
    "Users": "Users",
    "Conversations & Messages": "ConversationsMessages",
    "Businesses": "Businesses",
    "Workflows & Campaigns": "WorkflowsCampaigns",
    "Other Operations": "OtherOperations",
    "Tags, Custom Fields & Custom Values": "TagsCustomFields",
    "Custom Objects": "CustomObjects",
    "Forms & Surveys": "FormsSurveys",
    "Invoices": "Invoices",
    "Payments": "Payments",
    "Products & Prices": "ProductsPrices",
}

PAGINATION = {
    "startAfter+startAfterId (query cursor)": "StartAfterId",
    "skip/limit": "SkipLimit",
    "offset/limit": "OffsetLimit",
    "page/limit": "PageLimit",
    "page/pageLimit|limit + searchAfter (POST body)": "SearchAfter",
    "startAfterDate (query cursor)": "StartAfterDate",
    "lastMessageId cursor (response lastMessageId + nextPage)": "LastMessageId",
}

# Operations whose list lives under a nested key or that the generic detection gets wrong.
ITEMS_KEY_OVERRIDE = {
    "contacts.search": "contacts",
    "conversations.messages.list": "messages.messages",
    "locations.tasks.search": "tasks",
    "objects.records.search": "records",
    "opportunities.search": "opportunities",
    # The spec types these as one association; HighLevel answers {associations|relations, total}.
    "associations.list": "associations",
    "associations.relations.list": "relations",
}

# The spec declares no body for POST /contacts/search; these are HighLevel's documented fields.
PAGINATION_OVERRIDE = {
    "contacts.search": ("SearchAfter", "body"),
}

specs = {}

def spec(name):
    if name not in specs:
        specs[name] = json.load(open(os.path.join(ROOT, "openapi/apps", name + ".json")))
    return specs[name]

def resolve(s, node, depth=0):
    while isinstance(node, dict) and "$ref" in node and depth < 20:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            return {}
        cur = s
        for part in ref[2:].split("/"):
            cur = cur.get(part, {})
        node = cur
        depth += 1
    if isinstance(node, dict) and "allOf" in node:
        merged = {"properties": {}, "required": []}
        for sub in node["allOf"]:
            r = resolve(s, sub, depth + 1)
            merged["properties"].update(r.get("properties", {}))
            merged["required"] += r.get("required", [])
        return merged
    return node

def items_key(s, op):
    resp = op.get("responses", {})
    for code in ("200", "201"):
        r = resp.get(code)
        if not r:
            continue
        sch = resolve(s, (r.get("content", {}).get("application/json", {}) or {}).get("schema", {}))
        if sch.get("type") == "array":
            return ""
        for k, v in (sch.get("properties") or {}).items():
            v = resolve(s, v)
            if v.get("type") == "array":
                return k
    return None

def rust_str(x):
    return json.dumps(x, ensure_ascii=False)

def main():
    cat = json.load(open(os.path.join(ROOT, "catalog.json")))
    entries = []
    seen = set()
    for o in cat["operations"]:
        entries.append((o, "seed"))
    for o in cat["proposed_additions"]:
        if o["group"].startswith("missing-category") and o["priority"] != "selected":
            continue
        entries.append((o, "proposal"))
    out = []
    out.append("//! The HighLevel operation table: every operation hlbridge offers, with the facts needed")
    out.append("//! to call it (method, path, scope, `Version`, pagination, parameters).")
    out.append("//!")
    out.append("//! Generated by `tools/gen_operation_table.py` from the official OpenAPI specs; the")
    out.append("//! integration test `spec_conformance` re-checks every entry against them.")
    out.append("")
    out.append("use super::{ApiVersion::*, Category::*, Kind::*, Method::*, Operation, Pagination, Param, ParamIn::*, TokenKind};")
    out.append("")
    out.append("/// Every operation of the table, in catalog order.")
    out.append("pub static OPERATIONS: &[Operation] = &[")
    for o, origin in entries:
        key = f"{o['method']} {o['path']}"
        oid = IDS.get(key) or IDS.get(f"{key}#{o['seq']}")
        if oid is None:
            sys.exit(f"no id for {key}")
        if oid in seen:
            sys.exit(f"duplicate id {oid}")
        seen.add(oid)
        s = spec(os.path.basename(o["spec_file"])[:-5])
        op = s["paths"][o["path"]][o["method"].lower()]
        params = []
        for name in re.findall(r"{([^}]+)}", o["path"]):
            params.append((name, "Path", True))
        for p in op.get("parameters", []):
            p = resolve(s, p)
            if p.get("in") == "query":
                params.append((p["name"], "Query", bool(p.get("required"))))
        if "requestBody" in op:
            body = resolve(s, op["requestBody"])
            sch = resolve(s, (body.get("content", {}).get("application/json", {}) or {}).get("schema", {}))
            req = set(sch.get("required", []))
            for name in (sch.get("properties") or {}):
                params.append((name, "Body", name in req))
        if oid == "contacts.search":
            params += [("locationId", "Body", True), ("page", "Body", False), ("pageLimit", "Body", False),
                       ("searchAfter", "Body", False), ("filters", "Body", False), ("sort", "Body", False),
                       ("query", "Body", False)]
        pag = None
        pin = None
        if o["pagination"]:
            pag = PAGINATION[o["pagination"]["style"]]
            pin = o["pagination"]["in"]
        if oid in PAGINATION_OVERRIDE:
            pag, pin = PAGINATION_OVERRIDE[oid]
        is_list = pag is not None or re.search(r"\.(list|search|by_business|by_object_key|filter_by_email)$", oid)
        ik = ITEMS_KEY_OVERRIDE.get(oid, items_key(s, op) if is_list else None)
        schemes = o.get("security_schemes") or []
        if any(x.startswith("Agency") for x in schemes) and not any(x in ("bearer", "Location-Access", "Location-Access-Only") for x in schemes):
            tk = "Agency"
        elif any(x.startswith("Agency") for x in schemes):
            tk = "Any"
        else:
            tk = "Location"
        ver = o["version_header"]
        vname = {"2021-07-28": "V2021_07_28", "2021-04-15": "V2021_04_15", None: None}[ver]
        cat_name = CATEGORY[o["category"]]
        out.append("    Operation {")
        out.append(f"        id: {rust_str(oid)},")
        out.append(f"        category: {cat_name},")
        out.append(f"        kind: {'Trigger' if o['kind'] == 'trigger' else 'Action'},")
        out.append(f"        name: {rust_str(o['name'])},")
        out.append(f"        description: {rust_str(o['description'])},")
        out.append(f"        method: {o['method'].capitalize()},")
        out.append(f"        path: {rust_str(o['path'])},")
        out.append(f"        scope: {rust_str(o['scope'])},")
        out.append(f"        version: {vname if vname else 'Unversioned'},")
        out.append(f"        token: TokenKind::{tk},")
        if pag:
            out.append(f"        pagination: Some(Pagination::{pag}),")
        else:
            out.append("        pagination: None,")
        out.append(f"        items_key: {('Some(' + rust_str(ik) + ')') if ik is not None else 'None'},")
        out.append("        params: &[")
        for name, where, req in params:
            out.append(f"            Param {{ name: {rust_str(name)}, location: {where}, required: {'true' if req else 'false'} }},")
        out.append("        ],")
        out.append(f"        spec: {rust_str(os.path.basename(o['spec_file'])[:-5])},")
        out.append(f"        spec_operation_id: {rust_str(o['operationId'])},")
        out.append(f"        deprecated: {'true' if o.get('deprecated') else 'false'},")
        out.append(f"        proposal: {'true' if origin == 'proposal' else 'false'},")
        out.append("    },")
    out.append("];")
    print("\n".join(out))

main()
