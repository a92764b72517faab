"""Who may claim a domain name for a tenant, and what a refusal may say.

One name belongs to at most one tenant. The MSP (CLI, console, MSP API key) is the operator: it may put any free
name under any tenant and vouches for it, so the domain routes at once. A tenant adding a domain itself only makes
a claim: it routes once proven (:mod:`tenants.verification`), and it may not sit inside, or above, a domain that
routes for another tenant (``hr.beta.example`` when Beta has ``beta.example``, nor ``example`` when Beta has
``beta.example``); the closest routing parent decides, so a tenant may add subdomains of its own domains.

An unproven claim blocks its exact name only, and yields to the MSP, to the tenant whose routing domain is its
closest parent (the real owner), and to anyone once it is :data:`PENDING_CLAIM_DAYS` old. A tenant hears one
answer for every name it may not have, :func:`not_available`: never whose it is, nor whether anyone has it.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants.exceptions import ValidationError
from tenants.models import Domain, Tenant, utcnow
from tenants.policy import parent_domains, routing_domain
from tenants.scope import msp_scope

log = logging.getLogger(__name__)

#: Days an unproven claim of a name blocks another tenant from adding that name; after that it yields.
PENDING_CLAIM_DAYS = 7


def not_available(name: str) -> ValidationError:
    """The one refusal a tenant gets for a name it may not have (taken, inside another tenant's domain, reserved)."""
    return ValidationError(f"{name} is not available; if it is yours, ask your provider")


def _closest_routing_parent(session: Session, name: str) -> Domain | None:
    """The routing domain nearest above ``name`` (not ``name`` itself), of any tenant."""
    parents = parent_domains(name)[1:]
    if not parents:
        return None
    found = {d.name: d for d in session.scalars(select(Domain).where(Domain.name.in_(parents), routing_domain()))}
    return next((found[p] for p in parents if p in found), None)


def _routing_descendant_of_another(session: Session, tenant: Tenant, name: str) -> bool:
    return session.scalar(
        select(Domain.id).where(Domain.tenant_id != tenant.id, routing_domain(),
                                Domain.name.endswith("." + name, autoescape=True)).limit(1)
    ) is not None


def _stale(claim: Domain) -> bool:
    created = claim.created_at
    return created is not None and created < utcnow() - timedelta(days=PENDING_CLAIM_DAYS)


def make_room(session: Session, tenant: Tenant, name: str, *, operator: bool) -> None:
    """Refuse ``name`` for ``tenant`` unless it may claim it; remove another tenant's unproven claim of the name when
    that claim yields to this one. ``name`` is normalised; ``operator``: the MSP is adding it."""
    with msp_scope():  # claims are compared across all tenants; only the refusal's words depend on who asks
        same = session.scalar(select(Domain).where(Domain.name == name))
        if same is not None and same.tenant_id == tenant.id:
            raise ValidationError(f"domain {name} is already registered as one of {'its' if operator else 'your'} "
                                  "domains")
        parent = _closest_routing_parent(session, name)
        owns_parent = parent is not None and parent.tenant_id == tenant.id
        inside_another = parent is not None and not owns_parent
        if not operator and (inside_another or _routing_descendant_of_another(session, tenant, name)):
            raise not_available(name)
        if same is None:
            return
        if not same.routes and (operator or owns_parent or _stale(same)):
            why = "added by the MSP" if operator else "owner of its parent" if owns_parent else "the claim lapsed"
            log.warning("unproven claim of %s by tenant %d removed: it yields to tenant %d (%s)", name,
                        same.tenant_id, tenant.id, why)
            session.delete(same)
            session.flush()
            return
        if operator:
            owner = session.scalar(select(Tenant.name).where(Tenant.id == same.tenant_id))
            raise ValidationError(f"domain {name} is already registered to tenant {owner}")
        raise not_available(name)

