"""Policy the ingress consumes: which tenant owns a recipient domain, and its transport.

Lookups are one indexed query; the ingress caches positive answers and drops the cache when the policy version
in Redis changes (see :data:`POLICY_VERSION_KEY`), so a domain added or removed elsewhere takes effect at once
for new domains and within one poll interval for removals.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants.models import Domain, Tenant
from tenants.scope import msp_scope

#: Redis key counting policy changes; every change INCRs it and ingress replicas reload when it moves.
POLICY_VERSION_KEY = "mailward:policy_version"


@dataclass(frozen=True)
class DomainRoute:
    domain: str
    domain_id: int
    tenant_id: int
    transport_host: str
    transport_port: int
    transport_tls: str


def normalize_domain(domain: str) -> str:
    d = domain.strip().rstrip(".").lower()
    try:
        return d.encode("idna").decode("ascii")
    except UnicodeError:
        return d


def find_domain_route(session: Session, domain: str) -> DomainRoute | None:
    """The tenant and transport for a recipient domain, or None if no (active) tenant owns it."""
    name = normalize_domain(domain)
    with msp_scope():
        row = session.execute(
            select(Domain, Tenant.suspended).join(Tenant, Tenant.id == Domain.tenant_id).where(Domain.name == name)
        ).first()
    if row is None or row[1]:
        return None
    d = row[0]
    return DomainRoute(d.name, d.id, d.tenant_id, d.transport_host, d.transport_port, d.transport_tls)
