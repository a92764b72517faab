"""``/api/v1/tenants``, ``/domains`` and ``/users``: the tenancy model, through :mod:`tenants.services`."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE
from sqlalchemy import select

from app.access import allow_api
from app.api import schemas as sch
from app.api.auth import caller
from app.api.blueprint import bp, id_page, resolve_tenant
from app.api.errors import ApiError
from app.extensions import config, db
from tenants import services
from tenants.exceptions import NotFound
from tenants.models import Domain, Tenant, User
from tenants.redisconn import bump_policy_version
from tenants.scope import load


@bp.route("/tenants", methods=["GET"], endpoint="list_tenants", tags=["tenants"])
@allow_api("read")
@bp.arguments(sch.PageArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, sch.TenantPage)
def list_tenants(cursor: str | None = None, limit: int = sch.PAGE_SIZE) -> dict[str, Any]:
    """The MSP's tenants (MSP keys only; a tenant key gets 404, as for any page not its own)."""
    if not caller().is_msp:
        raise NotFound("no such route for a tenant key")
    return id_page(select(Tenant), Tenant.id, cursor, limit)


@bp.route("/domains", methods=["GET"], endpoint="list_domains", tags=["domains"])
@allow_api("read")
@bp.arguments(sch.TenantPageArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, sch.DomainPage)
def list_domains(cursor: str | None = None, limit: int = sch.PAGE_SIZE,
                 tenant_id: int | None = None) -> dict[str, Any]:
    """The domains of the key's tenant (MSP keys: of every tenant, or of ``tenant_id``)."""
    stmt = select(Domain)
    tid = resolve_tenant(tenant_id)
    if tid is not None:
        stmt = stmt.where(Domain.tenant_id == tid)
    return id_page(stmt, Domain.id, cursor, limit)


@bp.route("/domains", methods=["POST"], endpoint="create_domain", tags=["domains"])
@allow_api("write")
@bp.arguments(sch.DomainCreateSchema)
@bp.response(201, sch.DomainSchema)
def create_domain(body: dict[str, Any]) -> Domain:
    """Add a domain and its transport (the tenant's own mail server); the ingresses accept mail for it at once."""
    tid = resolve_tenant(body.get("tenant_id"))
    if tid is None:
        raise ApiError(422, "validation", "an MSP key must say which tenant the domain is for",
                       fields={"tenant_id": ["required for MSP keys"]})
    session, cfg = db.session, config()
    tenant = services.get_tenant(session, tid)
    domain = services.add_domain(session, tenant, body["name"], body["transport_host"], body["transport_port"],
                                 body["transport_tls"])
    session.commit()
    bump_policy_version(cfg)
    return domain


@bp.route("/domains/<rowid:domain_id>", methods=["GET"], endpoint="get_domain", tags=["domains"])
@allow_api("read")
@bp.response(200, sch.DomainSchema)
def get_domain(domain_id: int) -> Domain:
    """One domain of the key's tenant (another tenant's is 404)."""
    return load(db.session, Domain, domain_id)


@bp.route("/users", methods=["GET"], endpoint="list_users", tags=["users"])
@allow_api("read")
@bp.arguments(sch.TenantPageArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, sch.UserPage)
def list_users(cursor: str | None = None, limit: int = sch.PAGE_SIZE, tenant_id: int | None = None) -> dict[str, Any]:
    """The users of the key's tenant (MSP keys: every user, MSP staff included, or those of ``tenant_id``)."""
    stmt = select(User)
    tid = resolve_tenant(tenant_id)
    if tid is not None:
        stmt = stmt.where(User.tenant_id == tid)
    return id_page(stmt, User.id, cursor, limit)
