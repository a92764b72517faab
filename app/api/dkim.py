"""``/api/v1/dkim-keys``: the DKIM signing keys of a tenant's domains, through :mod:`tenants.dkimkeys`.

A key is generated for a domain of the calling key's tenant (an MSP key: of any tenant; the key belongs to the
domain's owner). Answers carry the DNS record to publish; the private half never leaves the database.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, fields, validate

from app.access import allow_api
from app.api import schemas as sch
from app.api.actions import committed
from app.api.audit import record
from app.api.blueprint import bp, id_page, of_tenant
from app.extensions import config, db
from tenants import dkimkeys
from tenants.models import DkimKey
from tenants.platform.redisconn import bump_policy_version
from tenants.scope import load

#: Longest domain name (RFC 1035).
MAX_DOMAIN = 253


class DkimKeySchema(Schema):
    id = fields.Integer(required=True)
    tenant_id = fields.Integer(required=True)
    domain = fields.String(required=True)
    selector = fields.String(required=True)
    bits = fields.Integer(required=True, allow_none=True, metadata={"description": "RSA key size"})
    active = fields.Boolean(required=True, metadata={"description": "The newest active key of a domain signs"})
    created_at = fields.DateTime(required=True)
    record_name = fields.String(required=True, metadata={"description": "Where to publish: <selector>._domainkey."
                                                                        "<domain>, a TXT record"})
    record_value = fields.String(required=True, metadata={"description": "The TXT record's text (v=DKIM1; ...)"})


class DkimKeyCreateSchema(Schema):
    domain = fields.String(required=True, validate=validate.Length(1, MAX_DOMAIN),
                           metadata={"description": "A registered domain of the key's tenant"})
    selector = fields.String(required=True, validate=validate.Length(1, dkimkeys.SELECTOR_MAX),
                             metadata={"description": "The s= selector, e.g. mw2026"})
    bits = fields.Integer(load_default=dkimkeys.DEFAULT_KEY_BITS, validate=validate.OneOf(dkimkeys.KEY_SIZES))


DkimKeyPage = sch.page_schema(DkimKeySchema, "DkimKeyPage")


def _shown(key: DkimKey) -> dict[str, Any]:
    return {"id": key.id, "tenant_id": key.tenant_id, "domain": key.domain, "selector": key.selector,
            "bits": dkimkeys.key_bits(key), "active": key.active, "created_at": key.created_at,
            "record_name": dkimkeys.record_name(key),
            "record_value": dkimkeys.record_value(key.public_key)}


@bp.route("/dkim-keys", methods=["GET"], endpoint="list_dkim_keys", tags=["dkim"])
@allow_api("read")
@bp.arguments(sch.TenantPageArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, DkimKeyPage)
def list_dkim_keys(cursor: str | None = None, limit: int = sch.PAGE_SIZE,
                   tenant_id: int | None = None) -> dict[str, Any]:
    """The DKIM keys of the key's tenant (MSP keys: of every tenant, or of ``tenant_id``), oldest first."""
    page = id_page(of_tenant(DkimKey, tenant_id), DkimKey.id, cursor, limit)
    return {"items": [_shown(k) for k in page["items"]], "next_cursor": page["next_cursor"]}


@bp.route("/dkim-keys", methods=["POST"], endpoint="create_dkim_key", tags=["dkim"])
@allow_api("write")
@bp.arguments(DkimKeyCreateSchema)
@bp.response(201, DkimKeySchema)
def create_dkim_key(body: dict[str, Any]) -> dict[str, Any]:
    """Generate a key for a domain of the key's tenant, active at once: publish ``record_value`` at
    ``record_name`` before mail goes out. A domain that is not the tenant's is 404."""
    cfg = config()
    with committed(fields=("selector",)):  # a bad selector, or one the domain has already
        key = dkimkeys.generate_key(db.session, cfg, body["domain"], body["selector"], bits=body["bits"])
        shown = _shown(key)
        record("dkim.generate", f"domain {key.domain}", f"selector {key.selector}, {shown['bits']} bits",
               tenant_id=key.tenant_id)
    bump_policy_version(cfg)
    return shown


@bp.route("/dkim-keys/<rowid:dkim_key_id>", methods=["GET"], endpoint="get_dkim_key", tags=["dkim"])
@allow_api("read")
@bp.response(200, DkimKeySchema)
def get_dkim_key(dkim_key_id: int) -> dict[str, Any]:
    """One DKIM key of the key's tenant (another tenant's is 404)."""
    return _shown(load(db.session, DkimKey, dkim_key_id))
