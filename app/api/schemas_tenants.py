"""Request and response bodies of the tenant lifecycle routes (create, details, suspend, resume, export, delete).

Kept apart from :mod:`app.api.schemas` (one module per concept); the tenant and domain shapes are reused from there.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from app.api.schemas import DomainSchema, TenantSchema

#: Longest tenant name (as :mod:`tenants.services` allows).
MAX_TENANT_NAME = 100
#: The export's body in the OpenAPI document: a ZIP file.
ZIP_BODY = {"type": "string", "format": "binary"}


class TenantCreateSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(1, MAX_TENANT_NAME),
                         metadata={"description": "Letters, digits, spaces, '.', '_' or '-'; unique"})


class TenantUsageSchema(Schema):
    month = fields.String(required=True, metadata={"description": "YYYY-MM"})
    mails = fields.Integer(required=True)
    bytes = fields.Integer(required=True)
    mailboxes = fields.Integer(required=True, metadata={"description": "Distinct recipients protected"})


class TenantDetailSchema(TenantSchema):
    domains = fields.List(fields.Nested(DomainSchema), required=True)
    usage = fields.Nested(TenantUsageSchema, required=True, allow_none=True,
                          metadata={"description": "This month's metered usage (null: none yet)"})
    messages = fields.Integer(required=True, metadata={"description": "Messages stored"})
    queued_deliveries = fields.Integer(required=True, metadata={"description": "Deliveries not yet final"})
    deletable = fields.Boolean(required=True, metadata={
        "description": "Suspended, and exported since: DELETE would be accepted"})


class TenantDeleteSchema(Schema):
    confirm = fields.String(required=True, validate=validate.Length(1, MAX_TENANT_NAME),
                            metadata={"description": "The tenant's name, exactly, to confirm"})


class TenantDeletedSchema(Schema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)
    deleted = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True,
                          metadata={"description": "Rows removed per table"})


class DomainRemovalSchema(Schema):
    """What removing a domain concerns; nothing is lost: see ``DELETE /domains/{domain_id}``."""

    id = fields.Integer(required=True)
    name = fields.String(required=True)
    queued = fields.Integer(required=True, metadata={
        "description": "Mail queued for delivery to it: still delivered (and retried) to its transport"})
    quarantined = fields.Integer(required=True, metadata={
        "description": "Quarantined mail addressed to it: kept until its retention; a release delivers it to its "
                       "transport"})
    dkim_keys = fields.Integer(required=True, metadata={"description": "Its DKIM keys: deleted with it"})
    removed = fields.Boolean(required=True, metadata={"description": "Whether this answer is a removal's"})


class DomainRemoveSchema(Schema):
    confirm = fields.String(required=True, validate=validate.Length(1, 253),
                            metadata={"description": "The domain's name, to confirm"})
