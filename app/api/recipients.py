"""``/api/v1/recipient-verification`` and ``/api/v1/valid-recipients``: a tenant's recipient verification, through
:mod:`tenants.recipients`.

A tenant key reads and changes its own tenant's; an MSP key names the tenant with ``tenant_id`` (there is no MSP-wide
setting). The LDAP bind password can be written, never read. The static list is paged by cursor; entries synced from
the directory are listed too (``source=ldap``) but change only with the directory.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, fields, validate
from sqlalchemy import select

from app.access import allow_api
from app.api import schemas as sch
from app.api.actions import committed
from app.api.audit import record
from app.api.blueprint import bp, id_page, resolve_tenant
from app.api.errors import ApiError
from app.extensions import config, db
from tenants import recipients
from tenants.models import ValidRecipient

# --- schemas ------------------------------------------------------------------------------------------------------

_TENANT_ID = fields.Integer(validate=validate.Range(1, sch.MAX_ID), metadata={
    "description": "MSP keys: the tenant (required). Tenant keys: their own (may be omitted)"})


class TenantArgs(Schema):
    tenant_id = _TENANT_ID


class VerificationSchema(Schema):
    tenant_id = fields.Integer(required=True)
    mode = fields.String(required=True, metadata={"description": "off, static, ldap or callahead"})
    ldap_url = fields.String(required=True)
    ldap_bind_dn = fields.String(required=True)
    ldap_base_dn = fields.String(required=True)
    ldap_filter = fields.String(required=True, metadata={"description": "Has an {address} placeholder"})
    ldap_attributes = fields.String(required=True, metadata={"description": "Comma-separated attribute names"})
    ldap_password_set = fields.Boolean(required=True, metadata={"description": "The password itself is never sent"})
    last_sync_at = fields.DateTime(required=True, allow_none=True)
    last_sync_ok = fields.Boolean(required=True, allow_none=True)
    last_sync_result = fields.String(required=True)
    last_sync_count = fields.Integer(required=True, allow_none=True)
    static_count = fields.Integer(required=True)
    ldap_count = fields.Integer(required=True)


class VerificationUpdateSchema(Schema):
    tenant_id = _TENANT_ID
    mode = fields.String(validate=validate.OneOf(recipients.MODES))
    ldap_url = fields.String(validate=validate.Length(1, recipients.MAX_SETTING))
    ldap_base_dn = fields.String(validate=validate.Length(1, recipients.MAX_SETTING))
    ldap_bind_dn = fields.String(validate=validate.Length(0, recipients.MAX_SETTING))
    ldap_password = fields.String(load_only=True, validate=validate.Length(0, 1024), metadata={
        "description": "Write-only; empty removes it (anonymous bind); omitted keeps it"})
    ldap_filter = fields.String(validate=validate.Length(0, recipients.MAX_SETTING))
    ldap_attributes = fields.String(validate=validate.Length(0, recipients.MAX_SETTING))


class ValidRecipientSchema(Schema):
    id = fields.Integer(required=True)
    tenant_id = fields.Integer(required=True)
    address = fields.String(required=True, metadata={"description": "An address, or @domain for a whole domain"})
    source = fields.String(required=True, metadata={"description": "static (typed in) or ldap (from the directory)"})
    created_at = fields.DateTime(required=True)


class ValidRecipientArgs(sch.TenantPageArgs):
    source = fields.String(validate=validate.OneOf(recipients.SOURCES), metadata={
        "description": "Only this source; omitted: both"})


class ValidRecipientCreateSchema(Schema):
    tenant_id = _TENANT_ID
    address = fields.String(required=True, validate=validate.Length(1, 320))


ValidRecipientPage = sch.page_schema(ValidRecipientSchema, "ValidRecipientPage")


# --- views --------------------------------------------------------------------------------------------------------

def _tenant(tenant_id: int | None) -> int:
    tid = resolve_tenant(tenant_id)
    if tid is None:
        raise ApiError(422, "validation", "name the tenant", fields={"tenant_id": ["required for MSP keys"]})
    return tid


def _view(tid: int) -> dict[str, Any]:
    s = db.session
    st = recipients.get_settings(s, tid)
    row = recipients.find_row(s, tid)
    return {
        "tenant_id": tid, "mode": st.mode, "ldap_url": st.ldap_url, "ldap_bind_dn": st.ldap_bind_dn,
        "ldap_base_dn": st.ldap_base_dn, "ldap_filter": st.ldap_filter, "ldap_attributes": st.ldap_attributes,
        "ldap_password_set": st.password_set, "last_sync_at": row.last_sync_at if row else None,
        "last_sync_ok": row.last_sync_ok if row else None, "last_sync_result": row.last_sync_result if row else "",
        "last_sync_count": row.last_sync_count if row else None,
        "static_count": recipients.count(s, tid, "static"), "ldap_count": recipients.count(s, tid, "ldap"),
    }


@bp.route("/recipient-verification", methods=["GET"], endpoint="get_recipient_verification",
          tags=["recipients"])
@allow_api("read")
@bp.arguments(TenantArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, VerificationSchema)
def get_recipient_verification(tenant_id: int | None = None) -> dict[str, Any]:
    """The tenant's recipient verification mode, its LDAP settings (no password) and the last directory sync."""
    return _view(_tenant(tenant_id))


@bp.route("/recipient-verification", methods=["PUT"], endpoint="put_recipient_verification",
          tags=["recipients"])
@allow_api("write")
@bp.arguments(VerificationUpdateSchema, unknown=RAISE)
@bp.response(200, VerificationSchema)
def put_recipient_verification(body: dict[str, Any]) -> dict[str, Any]:
    """Change the mode and/or the LDAP settings; fields left out keep their values. LDAP settings are saved before
    the mode, so one call can configure a directory and switch to it. The ingresses reload at once."""
    s, cfg = db.session, config()
    tid = _tenant(body.get("tenant_id"))
    ldap_keys = ("ldap_url", "ldap_base_dn", "ldap_bind_dn", "ldap_password", "ldap_filter", "ldap_attributes")
    changed = []
    with committed():
        if any(k in body for k in ldap_keys):
            st = recipients.get_settings(s, tid)
            recipients.set_ldap(s, cfg, tid, url=body.get("ldap_url", st.ldap_url),
                                base_dn=body.get("ldap_base_dn", st.ldap_base_dn),
                                bind_dn=body.get("ldap_bind_dn", st.ldap_bind_dn), password=body.get("ldap_password"),
                                search_filter=body.get("ldap_filter", st.ldap_filter),
                                attributes=body.get("ldap_attributes", st.ldap_attributes))
            changed.append("ldap " + ", ".join(k[5:] for k in ldap_keys if k in body))
        if "mode" in body:
            recipients.set_mode(s, tid, body["mode"])
            changed.append(f"mode {body['mode']}")
        record("recipients.update", "recipient verification", "; ".join(changed) or "nothing", tenant_id=tid)
        recipients.reload_after_commit(s, cfg)
    return _view(tid)


@bp.route("/valid-recipients", methods=["GET"], endpoint="list_valid_recipients", tags=["recipients"])
@allow_api("read")
@bp.arguments(ValidRecipientArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, ValidRecipientPage)
def list_valid_recipients(cursor: str | None = None, limit: int = sch.PAGE_SIZE, tenant_id: int | None = None,
                          source: str | None = None) -> dict[str, Any]:
    """The tenant's valid recipients (the static list and the addresses synced from its directory), by id."""
    tid = _tenant(tenant_id)
    stmt = select(ValidRecipient).where(ValidRecipient.tenant_id == tid)
    if source is not None:
        stmt = stmt.where(ValidRecipient.source == source)
    return id_page(stmt, ValidRecipient.id, cursor, limit)


@bp.route("/valid-recipients", methods=["POST"], endpoint="create_valid_recipient", tags=["recipients"])
@allow_api("write")
@bp.arguments(ValidRecipientCreateSchema, unknown=RAISE)
@bp.response(201, ValidRecipientSchema)
def create_valid_recipient(body: dict[str, Any]) -> ValidRecipient:
    """Add an address (or ``@domain``) of one of the tenant's domains to its static list; an address already there is
    returned as it is."""
    s = db.session
    tid = _tenant(body.get("tenant_id"))
    with committed():
        row = recipients.add_static(s, tid, body["address"])
        record("recipients.static.add", row.address, tenant_id=tid)
        recipients.reload_after_commit(s, config())
    return row


@bp.route("/valid-recipients/<rowid:recipient_id>", methods=["DELETE"], endpoint="delete_valid_recipient",
          tags=["recipients"])
@allow_api("write")
@bp.response(204)
def delete_valid_recipient(recipient_id: int) -> None:
    """Remove a static entry (another tenant's, or one synced from the directory, is 404)."""
    s = db.session
    row = s.scalar(select(ValidRecipient).where(ValidRecipient.id == recipient_id))  # the key's scope filters tenants
    if row is None or row.source != "static":
        raise ApiError(404, "not_found", "no such object")
    with committed():
        recipients.remove_static_id(s, row.tenant_id, recipient_id)
        record("recipients.static.remove", row.address, tenant_id=row.tenant_id)
        recipients.reload_after_commit(s, config())
