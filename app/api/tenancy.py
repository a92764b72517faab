"""``/api/v1/tenants``, ``/domains`` and ``/users``: the tenancy model, through :mod:`tenants.services`.

The tenant routes are the MSP's (a tenant key gets 404): create, details, suspend, resume, export and delete, through
:mod:`tenants.lifecycle`, each change audited with the key as the actor.
"""

from __future__ import annotations

from typing import Any

from flask import Response
from marshmallow import RAISE
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.access import allow_api
from app.api import schemas as sch
from app.api import schemas_tenants as tsch
from app.api.actions import committed
from app.api.audit import record
from app.api.auth import caller
from app.api.blueprint import bp, id_page, of_tenant, resolve_tenant
from app.api.errors import ApiError
from app.exports import tenant_zip
from app.extensions import config, db
from tenants import domains, lifecycle, services
from tenants.egress import EgressPolicy
from tenants.exceptions import NotFound
from tenants.models import Domain, Tenant, User
from tenants.platform.redisconn import bump_policy_version
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


def _msp_tenant(tenant_id: int) -> Tenant:
    """A tenant for an MSP key; for a tenant key every tenant route is 404, as if it did not exist."""
    if not caller().is_msp:
        raise NotFound("no such route for a tenant key")
    found = db.session.get(Tenant, tenant_id)
    if found is None:
        raise NotFound(f"no tenant {tenant_id}")
    return found


@bp.route("/tenants", methods=["POST"], endpoint="create_tenant", tags=["tenants"])
@allow_api("write")
@bp.arguments(tsch.TenantCreateSchema)
@bp.response(201, sch.TenantSchema)
def create_tenant(body: dict[str, Any]) -> Tenant:
    """Create a tenant (MSP keys only); add its domains with ``POST /domains``."""
    if not caller().is_msp:
        raise NotFound("no such route for a tenant key")
    taken = f"tenant {body['name'].strip()!r} already exists"  # created by another request since the service checked
    with committed(IntegrityError, status=409, code="conflict", message=taken):
        created = services.create_tenant(db.session, body["name"])
        record("tenant.create", f"tenant {created.name}", tenant_id=created.id)
    return created


@bp.route("/tenants/<rowid:tenant_id>", methods=["GET"], endpoint="get_tenant", tags=["tenants"])
@allow_api("read")
@bp.response(200, tsch.TenantDetailSchema)
def get_tenant(tenant_id: int) -> dict[str, Any]:
    """A tenant with its domains, this month's usage, what it holds, and whether it may be deleted (MSP keys)."""
    found = _msp_tenant(tenant_id)
    o = lifecycle.overview(db.session, found)
    return {"id": found.id, "name": found.name, "suspended": found.suspended, "created_at": found.created_at,
            "domains": o.domains, "usage": o.usage, "messages": o.pending.messages,
            "queued_deliveries": o.pending.queued_deliveries, "deletable": o.deletable}


def _set_suspended(tenant_id: int, suspended: bool) -> Tenant:
    session = db.session
    found = _msp_tenant(tenant_id)
    with committed():
        changed = lifecycle.suspend(session, found) if suspended else lifecycle.resume(session, found)
        if changed:
            record(lifecycle.SUSPEND_ACTION if suspended else lifecycle.RESUME_ACTION, f"tenant {found.name}",
                   tenant_id=found.id)
    bump_policy_version(config())  # the ingresses refuse (or accept again) its domains at once
    return found


@bp.route("/tenants/<rowid:tenant_id>/suspend", methods=["POST"], endpoint="suspend_tenant", tags=["tenants"])
@allow_api("write")
@bp.response(200, sch.TenantSchema)
def suspend_tenant(tenant_id: int) -> Tenant:
    """Suspend a tenant: its domains refuse mail, its users and keys are locked out; queued mail still delivers.
    Idempotent."""
    return _set_suspended(tenant_id, True)


@bp.route("/tenants/<rowid:tenant_id>/resume", methods=["POST"], endpoint="resume_tenant", tags=["tenants"])
@allow_api("write")
@bp.response(200, sch.TenantSchema)
def resume_tenant(tenant_id: int) -> Tenant:
    """Lift a tenant's suspension. Idempotent."""
    return _set_suspended(tenant_id, False)


@bp.route("/tenants/<rowid:tenant_id>/export", methods=["GET"], endpoint="export_tenant", tags=["tenants"])
@allow_api("read")
@bp.response(200, tsch.ZIP_BODY, content_type="application/zip")
def export_tenant(tenant_id: int) -> Response:
    """Everything the tenant owns as a ZIP (MSP keys). Needs the ``read`` and the ``quarantine`` scope: the ZIP holds
    every stored mail, which a read-only key never reaches otherwise. Audited; a delete needs one since suspension."""
    session = db.session
    found = _msp_tenant(tenant_id)
    if "quarantine" not in caller().scopes:
        raise ApiError(403, "forbidden_scope", "an export holds raw mail: this API key lacks the 'quarantine' scope")
    return tenant_zip(session, config(), found, lambda summary: record(
        lifecycle.EXPORT_ACTION, f"tenant {found.name}", summary, tenant_id=found.id))


@bp.route("/tenants/<rowid:tenant_id>", methods=["DELETE"], endpoint="delete_tenant", tags=["tenants"])
@allow_api("write")
@bp.arguments(tsch.TenantDeleteSchema)
@bp.response(200, tsch.TenantDeletedSchema)
def delete_tenant(body: dict[str, Any], tenant_id: int) -> dict[str, Any]:
    """Delete a tenant and everything it owns (MSP keys). ``confirm`` must be its name; it must be suspended and
    exported since (else 409 ``conflict`` saying what to do first)."""
    session = db.session
    found = _msp_tenant(tenant_id)
    if body["confirm"].strip() != found.name:
        raise ApiError(422, "validation", "confirm must be the tenant's name, exactly",
                       fields={"confirm": [f"type {found.name}"]})
    name, tid = found.name, found.id
    with committed(status=409, code="conflict"):
        counts = lifecycle.delete(session, config(), found)
        detail = ", ".join(f"{table} {n}" for table, n in sorted(counts.items()) if n)
        record(lifecycle.DELETE_ACTION, f"tenant {name} (id {tid})", detail, tenant_id=None)  # the tenant is gone
    bump_policy_version(config())
    return {"id": tid, "name": name, "deleted": counts}


@bp.route("/domains", methods=["GET"], endpoint="list_domains", tags=["domains"])
@allow_api("read")
@bp.arguments(sch.TenantPageArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, sch.DomainPage)
def list_domains(cursor: str | None = None, limit: int = sch.PAGE_SIZE,
                 tenant_id: int | None = None) -> dict[str, Any]:
    """The domains of the key's tenant (MSP keys: of every tenant, or of ``tenant_id``)."""
    return id_page(of_tenant(Domain, tenant_id), Domain.id, cursor, limit)


@bp.route("/domains", methods=["POST"], endpoint="create_domain", tags=["domains"])
@allow_api("write")
@bp.arguments(sch.DomainCreateSchema)
@bp.response(201, sch.DomainSchema)
def create_domain(body: dict[str, Any]) -> Domain:
    """Add a domain and its transport (the tenant's own mail server). An MSP key vouches for it: the ingresses
    accept its mail at once. A tenant key makes a claim (``state`` pending): mail is accepted once the TXT record
    in ``verification_record`` is published and verified. A name that is taken, or inside another tenant's domain,
    is refused as not available (422), whoever has it."""
    tid = resolve_tenant(body.get("tenant_id"))
    if tid is None:
        raise ApiError(422, "validation", "an MSP key must say which tenant the domain is for",
                       fields={"tenant_id": ["required for MSP keys"]})
    session, cfg = db.session, config()
    tenant = services.get_tenant(session, tid)
    with committed():
        domain = services.add_domain(session, tenant, body["name"], body["transport_host"], body["transport_port"],
                                     body["transport_tls"], egress=EgressPolicy(cfg))
    bump_policy_version(cfg)
    return domain


@bp.route("/domains/<rowid:domain_id>", methods=["GET"], endpoint="get_domain", tags=["domains"])
@allow_api("read")
@bp.response(200, sch.DomainSchema)
def get_domain(domain_id: int) -> Domain:
    """One domain of the key's tenant (another tenant's is 404)."""
    return load(db.session, Domain, domain_id)


def _removal(domain: Domain, found: domains.RemovalImpact, removed: bool) -> dict[str, Any]:
    return {"id": domain.id, "name": domain.name, "queued": found.queued, "quarantined": found.quarantined,
            "dkim_keys": found.dkim_keys, "removed": removed}


@bp.route("/domains/<rowid:domain_id>/removal", methods=["GET"], endpoint="domain_removal", tags=["domains"])
@allow_api("read")
@bp.response(200, tsch.DomainRemovalSchema)
def domain_removal(domain_id: int) -> dict[str, Any]:
    """What removing the domain would concern: mail queued for it, quarantined mail addressed to it, DKIM keys."""
    found = load(db.session, Domain, domain_id)
    return _removal(found, domains.impact(db.session, found), False)


@bp.route("/domains/<rowid:domain_id>", methods=["DELETE"], endpoint="remove_domain", tags=["domains"])
@allow_api("write")
@bp.arguments(tsch.DomainRemoveSchema)
@bp.response(200, tsch.DomainRemovalSchema)
def remove_domain(body: dict[str, Any], domain_id: int) -> dict[str, Any]:
    """Remove a domain (``confirm``: its name). RCPT to it is refused at once, like any unknown domain's; mail
    queued for it is still delivered to its transport, quarantined mail stays until its retention and can be
    released; its DKIM keys are deleted. Audited. Another tenant's domain is 404."""
    session = db.session
    found = load(session, Domain, domain_id)
    name, tid = found.name, found.tenant_id
    with committed(fields=("confirm",), hint=f"type {name}"):
        impact = domains.remove(session, found, body["confirm"])
        record(domains.REMOVE_ACTION, f"domain {name}", impact.summary(), tenant_id=tid)
    bump_policy_version(config())  # every ingress forgets the domain
    return {"id": domain_id, "name": name, "queued": impact.queued, "quarantined": impact.quarantined,
            "dkim_keys": impact.dkim_keys, "removed": True}


@bp.route("/users", methods=["GET"], endpoint="list_users", tags=["users"])
@allow_api("read")
@bp.arguments(sch.TenantPageArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, sch.UserPage)
def list_users(cursor: str | None = None, limit: int = sch.PAGE_SIZE, tenant_id: int | None = None) -> dict[str, Any]:
    """The users of the key's tenant (MSP keys: every user, MSP staff included, or those of ``tenant_id``)."""
    return id_page(of_tenant(User, tenant_id), User.id, cursor, limit)
