"""Request and response bodies of the REST API (marshmallow; flask-smorest turns them into the OpenAPI document).

Output schemas name every field a client sees; a field not named here (a password or key hash) is never sent.
Times are ISO 8601 in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, fields, validate

from tenants import lists, quarantine, tracking, verification
from tenants.apikeys import MAX_NAME, SCOPES
from tenants.models import Domain, TlsMode

#: The largest row id (PostgreSQL ``integer``): a larger number in a URL or a query is refused before any query.
MAX_ID = 2**31 - 1
#: Items per page unless ``limit`` asks otherwise, and the most a page may hold.
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


#: Times a query may name: wide enough for any mail, narrow enough to convert to UTC without overflow.
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)


def query_time(**kwargs: Any) -> fields.AwareDateTime:
    """A time in a query: ISO 8601; without a zone it is UTC."""
    return fields.AwareDateTime(default_timezone=UTC, validate=validate.Range(EARLIEST, LATEST), **kwargs)


# --- errors and pages ---------------------------------------------------------------------------------------------

class ErrorBodySchema(Schema):
    code = fields.String(required=True, metadata={"description": "Stable error code, e.g. not_found, validation"})
    message = fields.String(required=True, metadata={"description": "What went wrong, for people"})
    field_messages = fields.Dict(keys=fields.String(), data_key="fields",
                                 metadata={"description": "Field name → its messages (validation errors)"})


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)


class PageArgs(Schema):
    cursor = fields.String(metadata={"description": "next_cursor of the previous page"})
    limit = fields.Integer(load_default=PAGE_SIZE, validate=validate.Range(1, MAX_PAGE_SIZE))


class TenantPageArgs(PageArgs):
    tenant_id = fields.Integer(validate=validate.Range(1, MAX_ID), metadata={
        "description": "MSP keys: only this tenant (lists and API keys: this tenant's level instead of the MSP's). "
                       "Tenant keys: their own tenant only."})


def page_schema(item: type[Schema], name: str) -> type[Schema]:
    """The schema of one page of ``item``: its items and the cursor of the next page (null on the last)."""
    return Schema.from_dict({
        "items": fields.List(fields.Nested(item), required=True),
        "next_cursor": fields.String(required=True, allow_none=True,
                                     metadata={"description": "Pass as ?cursor= for the next page; null on the last"}),
    }, name=name)


# --- tenancy ------------------------------------------------------------------------------------------------------

class TenantSchema(Schema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)
    suspended = fields.Boolean(required=True)
    created_at = fields.DateTime(required=True)


def _verification_record(domain: Domain) -> str:
    from app.extensions import config  # the application's configuration, at serialisation time

    return verification.zone_line(config(), domain)


class DomainSchema(Schema):
    id = fields.Integer(required=True)
    tenant_id = fields.Integer(required=True)
    name = fields.String(required=True)
    verified = fields.Boolean(required=True, metadata={"description": "Ownership proven by the TXT record"})
    vouched = fields.Boolean(required=True, metadata={
        "description": "Added by the MSP, who vouches for it: receives mail without the TXT record"})
    state = fields.Function(verification.state, required=True, metadata={
        "type": "string", "enum": ["vouched", "verified", "pending"],
        "description": "pending: awaiting verification, receives no mail until the TXT record is published and "
                       "verified (in the portal, or by the scheduled re-check)"})
    receives_mail = fields.Boolean(required=True, attribute="routes", metadata={
        "description": "Mail for the domain is accepted (vouched or verified)"})
    verification_record = fields.Function(_verification_record, required=True, metadata={
        "type": "string", "description": "The TXT record that proves ownership, as a zone-file line"})
    transport_host = fields.String(required=True)
    transport_port = fields.Integer(required=True)
    transport_tls = fields.String(required=True)
    created_at = fields.DateTime(required=True)


class DomainCreateSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(1, 253))
    transport_host = fields.String(required=True, validate=validate.Length(1, 253))
    transport_port = fields.Integer(load_default=25, validate=validate.Range(1, 65535))
    transport_tls = fields.String(load_default=TlsMode.OPPORTUNISTIC.value,
                                  validate=validate.OneOf([m.value for m in TlsMode]))
    tenant_id = fields.Integer(validate=validate.Range(1, MAX_ID), metadata={
        "description": "The owning tenant: required for MSP keys, omitted (or the own tenant) for tenant keys"})


class UserSchema(Schema):
    id = fields.Integer(required=True)
    tenant_id = fields.Integer(required=True, allow_none=True)
    email = fields.String(required=True)
    role = fields.String(required=True)
    active = fields.Boolean(required=True)
    created_at = fields.DateTime(required=True)
    last_login_at = fields.DateTime(required=True, allow_none=True)


# --- lists --------------------------------------------------------------------------------------------------------

class ListEntrySchema(Schema):
    id = fields.Integer(required=True)
    tenant_id = fields.Integer(required=True, allow_none=True)
    kind = fields.String(required=True)
    value_type = fields.String(required=True)
    value = fields.String(required=True)
    comment = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    created_by = fields.String(required=True)


class ListArgs(TenantPageArgs):
    kind = fields.String(validate=validate.OneOf(lists.KINDS))


class ListEntryCreateSchema(Schema):
    kind = fields.String(required=True, validate=validate.OneOf(lists.KINDS))
    value = fields.String(required=True, validate=validate.Length(1, 320),
                          metadata={"description": "An address, a domain (matches subdomains) or an IP network"})
    value_type = fields.String(validate=validate.OneOf(lists.VALUE_TYPES),
                               metadata={"description": "Detected from the value when omitted"})
    comment = fields.String(load_default="", validate=validate.Length(0, lists.MAX_COMMENT))
    tenant_id = fields.Integer(validate=validate.Range(1, MAX_ID), metadata={
        "description": "MSP keys: this tenant's list (omitted: the MSP-wide list). Tenant keys: their own"})


# --- quarantine ---------------------------------------------------------------------------------------------------

class QuarantineArgs(TenantPageArgs):
    kind = fields.String(validate=validate.OneOf(quarantine.KINDS))
    rcpt = fields.String(metadata={"description": "Only mail held for this recipient"})
    sender = fields.String(metadata={"description": "Part of the envelope sender or the From header"})
    text = fields.String(metadata={"description": "Part of the subject"})
    since = query_time(metadata={"description": "Received at or after"})
    until = query_time(metadata={"description": "Received before"})
    min_score = fields.Float(allow_nan=False)
    max_score = fields.Float(allow_nan=False)
    held = fields.Boolean(load_default=True, metadata={"description": "false: include released and deleted mail"})


class QuarantineItemSchema(Schema):
    id = fields.String(required=True)
    tenant_id = fields.Integer(required=True)
    kind = fields.String(required=True)
    received_at = fields.DateTime(required=True)
    mail_from = fields.String(required=True)
    header_from = fields.String(required=True, allow_none=True)
    subject = fields.String(required=True, allow_none=True)
    score = fields.Float(required=True)
    expires_at = fields.DateTime(required=True, allow_none=True)
    rcpts = fields.List(fields.String(), required=True, metadata={"description": "Recipients still held"})


class FindingSchema(Schema):
    symbol = fields.String(required=True)
    score = fields.Float(required=True)
    reason = fields.String(required=True)


class RcptStatusSchema(Schema):
    rcpt = fields.String(required=True)
    status = fields.String(required=True)


class HeaderSchema(Schema):
    name = fields.String(required=True)
    value = fields.String(required=True)


class AttachmentSchema(Schema):
    filename = fields.String(required=True, allow_none=True)
    declared_type = fields.String(required=True)
    real_type = fields.String(required=True)
    size = fields.Integer(required=True)


class EventSchema(Schema):
    at = fields.DateTime(required=True)
    kind = fields.String(required=True)
    detail = fields.String(required=True)


class QuarantineDetailSchema(QuarantineItemSchema):
    queue_id = fields.String(required=True)
    client_ip = fields.String(required=True, allow_none=True)
    verdict = fields.String(required=True)
    explanation = fields.String(required=True)
    recipients = fields.List(fields.Nested(RcptStatusSchema), required=True)
    headers = fields.List(fields.Nested(HeaderSchema), required=True)
    findings = fields.List(fields.Nested(FindingSchema), required=True)
    positive_score = fields.Float(required=True)
    negative_score = fields.Float(required=True)
    attachments = fields.List(fields.Nested(AttachmentSchema), required=True)
    preview_text = fields.String(required=True, metadata={"description": "The text part, as plain text"})
    defects = fields.List(fields.String(), required=True)
    events = fields.List(fields.Nested(EventSchema), required=True)


class ReleaseSchema(Schema):
    to = fields.String(validate=validate.Length(1, 320),
                       metadata={"description": "Deliver a copy to this address instead of the recipients: one in "
                                                "the tenant's domains, or anywhere with the write scope too"})
    confirm_virus = fields.Boolean(load_default=False,
                                   metadata={"description": "Must be true to release a virus"})


class ReleaseResultSchema(Schema):
    message_id = fields.String(required=True)
    rcpts = fields.List(fields.String(), required=True)
    to = fields.String(required=True, allow_none=True)


class DeleteResultSchema(Schema):
    message_id = fields.String(required=True)
    rcpts = fields.List(fields.String(), required=True)


class ReportSchema(Schema):
    spam = fields.Boolean(required=True, metadata={"description": "true: train as spam; false: as ham"})


class ReportResultSchema(Schema):
    message_id = fields.String(required=True)
    spam = fields.Boolean(required=True)
    status = fields.String(required=True, metadata={"description": "queued: the worker trains the Bayes filter"})


# --- message tracking ---------------------------------------------------------------------------------------------

class MessageArgs(TenantPageArgs):
    sender = fields.String(metadata={"description": "Part of the envelope sender or the From header"})
    rcpt = fields.String(metadata={"description": "One recipient, exactly"})
    subject = fields.String(metadata={"description": "Part of the subject"})
    queue_id = fields.String(metadata={"description": "The queue id the ingress answered with"})
    since = query_time(metadata={"description": "Received at or after"})
    until = query_time(metadata={"description": "Received before"})
    message_id_header = fields.String(metadata={"description": "The Message-ID header, with or without <>"})
    client_ip = fields.String(metadata={"description": "The connecting client's address, exactly"})
    verdict = fields.String(validate=validate.OneOf(tracking.VERDICTS))
    direction = fields.String(validate=validate.OneOf(tracking.DIRECTIONS))
    status = fields.String(validate=validate.OneOf(tracking.STATUSES),
                           metadata={"description": "Some recipient (with rcpt: that one) is in this delivery status"})


class MessageSchema(Schema):
    id = fields.String(required=True)
    tenant_id = fields.Integer(required=True)
    queue_id = fields.String(required=True)
    direction = fields.String(required=True)
    received_at = fields.DateTime(required=True)
    mail_from = fields.String(required=True)
    header_from = fields.String(required=True, allow_none=True)
    subject = fields.String(required=True, allow_none=True)
    size = fields.Integer(required=True)
    verdict = fields.String(required=True)
    score = fields.Float(required=True)
    quarantine_kind = fields.String(required=True, allow_none=True)
    recipients = fields.List(fields.Nested(RcptStatusSchema), required=True)


class DeliverySchema(Schema):
    id = fields.Integer(required=True)
    rcpt = fields.String(required=True)
    route = fields.String(required=True)
    status = fields.String(required=True)
    attempts = fields.Integer(required=True)
    last_reply = fields.String(required=True, allow_none=True)
    next_attempt_at = fields.DateTime(required=True)
    delivered_at = fields.DateTime(required=True, allow_none=True)


class TimelineEventSchema(EventSchema):
    delivery_id = fields.Integer(required=True, allow_none=True)


class MessageDetailSchema(MessageSchema):
    client_ip = fields.String(required=True, allow_none=True)
    client_helo = fields.String(required=True, allow_none=True)
    message_id_header = fields.String(required=True, allow_none=True)
    explanation = fields.String(required=True)
    expires_at = fields.DateTime(required=True, allow_none=True)
    has_content = fields.Boolean(required=True, metadata={
        "description": "Whether the raw mail is stored (refused mail is not kept, only its envelope and verdict)"})
    findings = fields.List(fields.Nested(FindingSchema), required=True)
    deliveries = fields.List(fields.Nested(DeliverySchema), required=True)
    events = fields.List(fields.Nested(TimelineEventSchema), required=True)


# --- API keys -----------------------------------------------------------------------------------------------------

class ApiKeySchema(Schema):
    id = fields.Integer(required=True)
    tenant_id = fields.Integer(required=True, allow_none=True)
    name = fields.String(required=True)
    prefix = fields.String(required=True, metadata={"description": "The start of the key, to tell keys apart"})
    scopes = fields.List(fields.String(), required=True, attribute="scope_list")
    created_at = fields.DateTime(required=True)
    last_used_at = fields.DateTime(required=True, allow_none=True)
    revoked_at = fields.DateTime(required=True, allow_none=True)
    expires_at = fields.DateTime(required=True, allow_none=True, metadata={
        "description": "When the key stops working (401 key_expired from then on); null: never"})


class ApiKeyCreatedSchema(ApiKeySchema):
    key = fields.String(required=True, metadata={"description": "The full key: shown this once, never again"})


class ApiKeyCreateSchema(Schema):
    scopes = fields.List(fields.String(validate=validate.OneOf(SCOPES)), required=True,
                         validate=validate.Length(1, len(SCOPES)))
    name = fields.String(load_default="", validate=validate.Length(0, MAX_NAME))
    tenant_id = fields.Integer(validate=validate.Range(1, MAX_ID), metadata={
        "description": "MSP keys: a key for this tenant (omitted: another MSP-wide key). Tenant keys: their own"})
    expires_on = fields.Date(load_default=None, allow_none=True, metadata={
        "description": "YYYY-MM-DD, after today: the key stops working at 00:00 UTC that day (omitted: never)"})


TenantPage = page_schema(TenantSchema, "TenantPage")
DomainPage = page_schema(DomainSchema, "DomainPage")
UserPage = page_schema(UserSchema, "UserPage")
ListEntryPage = page_schema(ListEntrySchema, "ListEntryPage")
QuarantinePage = page_schema(QuarantineItemSchema, "QuarantinePage")
MessagePage = page_schema(MessageSchema, "MessagePage")
ApiKeyPage = page_schema(ApiKeySchema, "ApiKeyPage")
