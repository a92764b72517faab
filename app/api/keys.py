"""``/api/v1/apikeys``: list, create and revoke API keys, through :mod:`tenants.apikeys`.

A tenant key manages its tenant's keys; an MSP key the MSP-wide keys, or with ``tenant_id`` that tenant's. A key
never creates a key with a scope it does not hold itself (403 ``forbidden_scope``), so a key cannot raise its own
rights. The full key is in the creation answer only.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE

from app.access import allow_api
from app.api import schemas as sch
from app.api.actions import committed
from app.api.auth import caller
from app.api.blueprint import bp, id_page, of_level, resolve_tenant
from app.api.errors import ApiError
from app.extensions import db
from tenants import apikeys, services
from tenants.models import ApiKey


@bp.route("/apikeys", methods=["GET"], endpoint="list_apikeys", tags=["apikeys"])
@allow_api("read")
@bp.arguments(sch.TenantPageArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, sch.ApiKeyPage)
def list_apikeys(cursor: str | None = None, limit: int = sch.PAGE_SIZE,
                 tenant_id: int | None = None) -> dict[str, Any]:
    """The keys of the key's level, revoked ones included (never their secrets)."""
    return id_page(of_level(ApiKey, tenant_id), ApiKey.id, cursor, limit)


@bp.route("/apikeys", methods=["POST"], endpoint="create_apikey", tags=["apikeys"])
@allow_api("write")
@bp.arguments(sch.ApiKeyCreateSchema)
@bp.response(201, sch.ApiKeyCreatedSchema)
def create_apikey(body: dict[str, Any]) -> dict[str, Any]:
    """Create a key with some of the calling key's scopes; the answer's ``key`` is the only time it is shown."""
    who = caller()
    wanted = apikeys.parse_scopes(body["scopes"])
    beyond = [s for s in wanted if s not in who.scopes]
    if beyond:
        raise ApiError(403, "forbidden_scope", f"a key cannot grant scopes it lacks: {', '.join(beyond)}")
    session = db.session
    tid = resolve_tenant(body.get("tenant_id"))
    tenant = services.get_tenant(session, tid) if tid is not None else None
    with committed():
        new = apikeys.create(session, tenant, wanted, body["name"],
                             expires_at=apikeys.parse_expiry(body["expires_on"]))
    shown = ("id", "tenant_id", "name", "prefix", "scope_list", "created_at", "last_used_at", "revoked_at",
             "expires_at")
    return {**{name: getattr(new.key, name) for name in shown}, "key": new.secret}


@bp.route("/apikeys/<rowid:key_id>", methods=["DELETE"], endpoint="revoke_apikey", tags=["apikeys"])
@allow_api("write")
@bp.response(204)
def revoke_apikey(key_id: int) -> None:
    """Revoke a key at once: its next request is 401. Revoking a revoked key changes nothing."""
    with committed():
        apikeys.revoke(db.session, key_id)
