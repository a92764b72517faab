"""The DNS checklist in the background: look one domain's records up and cache them (:mod:`tenants.dnscache`), so
that no page waits on DNS; and the scheduler's refresh of results older than :data:`tenants.dnscache.REFRESH_AGE`."""

from __future__ import annotations

import logging

from sqlalchemy import select

from tenants import dnscache, dnsreadiness
from tenants.exceptions import NotFound
from tenants.models import Domain, Tenant
from tenants.platform.config import Config, get_config
from tenants.platform.db import session_scope
from tenants.platform.redisconn import redis_client
from tenants.scope import load, msp_scope, tenant_scope

log = logging.getLogger(__name__)

#: Seconds between two looks for domains whose checklist is due again (the scheduler's interval).
REFRESH_INTERVAL = 15 * 60
#: Most checks queued by one refresh (the rest are due at the next one: a thousand tenants do not flood the queue).
MAX_REFRESHES = 500


def check(cfg: Config, tenant_id: int, domain_id: int) -> str:
    """Look up the checklist of one of ``tenant_id``'s domains and cache it; a domain gone meanwhile is forgotten."""
    conn = redis_client(cfg)
    try:
        with tenant_scope(tenant_id), session_scope(cfg) as session:
            try:
                domain = load(session, Domain, domain_id)
            except NotFound:
                dnscache.forget(conn, domain_id)
                return f"domain {domain_id} of tenant {tenant_id} is gone"
            items = dnsreadiness.checklist(session, cfg, domain)
            dnscache.write(conn, domain, items, hostname=cfg.hostname, digest=dnscache.inputs(session, cfg, domain))
            name = domain.name
    finally:
        dnscache.release(conn, domain_id)
    summary = ", ".join(f"{item.name} {item.state}" for item in items)
    log.info("DNS checklist of %s: %s", name, summary)
    return f"{name}: {summary}"


def check_job(tenant_id: int, domain_id: int) -> str:
    """The RQ job (:data:`tenants.platform.jobs.DNSCHECK_JOB`) that pages and the scheduler queue."""
    return check(get_config(), tenant_id, domain_id)


def enqueue_refreshes(cfg: Config) -> int:
    """Queue a check of every active tenant's domain whose result is missing or older than the refresh age (at most
    :data:`MAX_REFRESHES`, the oldest first); how many were queued."""
    with msp_scope(), session_scope(cfg) as session:  # the MSP's periodic work looks at every tenant's domains
        domains = list(session.scalars(select(Domain).join(Tenant, Tenant.id == Domain.tenant_id)
                                       .where(Tenant.suspended.is_(False)).order_by(Domain.id)))
        session.expunge_all()
    conn = redis_client(cfg)
    due: list[tuple[float, Domain]] = []
    for start in range(0, len(domains), MAX_REFRESHES):
        chunk = domains[start:start + MAX_REFRESHES]
        found = dnscache.read_many(conn, chunk)
        for domain in chunk:
            cached = found[domain.id]
            if cached is None:
                due.append((0.0, domain))
            elif cached.age_seconds() >= dnscache.REFRESH_AGE:
                due.append((cached.checked_at.timestamp(), domain))
    due.sort(key=lambda pair: pair[0])
    queued = 0
    for _, domain in due[:MAX_REFRESHES]:
        if dnscache.request_check(cfg, domain, connection=conn):
            queued += 1
    if queued:
        log.info("DNS checklists: %d domain(s) queued for a fresh check", queued)
    return queued
