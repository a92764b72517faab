"""Which tenant a recipient domain belongs to, and that tenant's policy, as the ingress sees them: looked up in the
database off the event loop, cached until the policy version moves (any process that edits policy bumps it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from tenants.mailrules.evaluate import TenantRules
from tenants.mailrules.service import directory_groups, internal_domains, load_rules
from tenants.metrics import store_error
from tenants.policy import DomainRoute, Policy, find_domain_route, load_policy, normalize_domain
from tenants.scope import tenant_scope

log = logging.getLogger(__name__)

#: The reply when the database cannot tell (a route, a policy, a sender): the client comes again.
REPLY_LOOKUP_FAILED = "451 4.3.0 Temporary lookup failure, try again later"

K = TypeVar("K")
T = TypeVar("T")


async def _counting_errors(lookup: Awaitable[T]) -> T:
    """Await a database lookup; a failure is counted (``mailward_store_errors_total``) and raised."""
    try:
        return await lookup
    except Exception:
        store_error("database", "lookup")
        raise


async def _load_into(cache: dict[K, T], key: K, load: Callable[[K], T]) -> T:
    """A cache miss: ``load(key)`` in a thread (a failure counted and raised), kept in ``cache``."""
    value = await _counting_errors(asyncio.to_thread(load, key))
    cache[key] = value
    return value


class DomainCache:
    """Positive domain → route answers and tenant policies, dropped whenever the policy version moves."""

    def __init__(self) -> None:
        self.routes: dict[str, DomainRoute] = {}
        self.policies: dict[int, Policy] = {}
        self.rules: dict[int, TenantRules] = {}
        self.version: int | None = None

    def check_version(self, version: int | None) -> None:
        if version != self.version:
            self.routes.clear()
            self.policies.clear()
            self.rules.clear()
            self.version = version


class Routing:
    """Domain routes and tenant policies for the ingress's hooks. Both methods raise when the database cannot
    answer; the caller then answers :data:`REPLY_LOOKUP_FAILED` (never a final no)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.cache = DomainCache()

    async def route(self, domain: str) -> DomainRoute | None:
        """The route of a recipient domain (None: we do not receive mail for it). Unknown domains are not cached:
        a domain added a moment ago routes at once."""
        name = normalize_domain(domain)
        route = self.cache.routes.get(name)
        if route is None:
            route = await _counting_errors(asyncio.to_thread(self._lookup, name))
            if route is not None:
                self.cache.routes[name] = route
        return route

    async def policy(self, tenant_id: int) -> Policy:
        policy = self.cache.policies.get(tenant_id)
        return policy if policy is not None else await _load_into(self.cache.policies, tenant_id, self._load_policy)

    async def recipient_route(self, address: str) -> DomainRoute | None | str:
        """:meth:`route` of a recipient's domain for an SMTP hook: when the database cannot answer, the failure is
        logged and the reply is :data:`REPLY_LOOKUP_FAILED`."""
        try:
            return await self.route(address.rpartition("@")[2])
        except Exception:
            log.exception("recipient domain lookup failed")
            return REPLY_LOOKUP_FAILED

    async def policy_or_reply(self, tenant_id: int) -> Policy | str:
        """:meth:`policy` for an SMTP hook: when the database cannot answer, the failure is logged and the reply is
        :data:`REPLY_LOOKUP_FAILED`."""
        try:
            return await self.policy(tenant_id)
        except Exception:
            log.exception("policy lookup failed")
            return REPLY_LOOKUP_FAILED

    def _lookup(self, name: str) -> DomainRoute | None:
        session = self.sessions()
        try:
            return find_domain_route(session, name)
        finally:
            session.close()

    async def rules(self, tenant_id: int) -> TenantRules:
        """The tenant's mail rules in evaluation order, and its domains (cached like policies)."""
        rules = self.cache.rules.get(tenant_id)
        return rules if rules is not None else await _load_into(self.cache.rules, tenant_id, self._load_rules)

    def _load_rules(self, tenant_id: int) -> TenantRules:
        with tenant_scope(tenant_id):
            session = self.sessions()
            try:
                return TenantRules(tuple(load_rules(session, tenant_id)), internal_domains(session, tenant_id))
            finally:
                session.close()

    def groups(self, tenant_id: int, addresses: list[str]) -> dict[str, frozenset[str]]:
        """Directory groups of some addresses (blocking: call it in a thread). Not cached: a sync changes them."""
        with tenant_scope(tenant_id):
            session = self.sessions()
            try:
                return directory_groups(session, tenant_id, addresses)
            finally:
                session.close()

    def _load_policy(self, tenant_id: int) -> Policy:
        with tenant_scope(tenant_id):
            session = self.sessions()
            try:
                return load_policy(session, tenant_id)
            finally:
                session.close()
