"""Deliver claimed rows: group recipients by next hop, send once per hop, record every outcome.

The ingress calls :meth:`Deliverer.deliver` right after its commit (the fast path); worker jobs call
:func:`deliver_message` for anything due (retries, and rows a crashed process left behind).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from smtp.mailstore import record_results
from smtp.outbound import NextHop, RcptResult, Router, SendResult, SmtpPool
from smtp.ruleactions import parse_next_hop
from tenants.blobs import blob_store
from tenants.deliveries import claim_due
from tenants.domains import retired_transports
from tenants.models import Delivery, Domain, Message
from tenants.platform.config import Config
from tenants.platform.db import session_factory
from tenants.scope import load, tenant_scope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Envelope:
    """What delivery needs of a stored message."""

    message_id: str
    tenant_id: int
    mail_from: str


def _domain_of(addr: str) -> str:
    return addr.rpartition("@")[2].lower()


class Deliverer:
    def __init__(self, cfg: Config, *, pool: SmtpPool | None = None, router: Router | None = None) -> None:
        self.cfg = cfg
        self.pool = pool or SmtpPool(cfg)
        self.router = router or Router(cfg)

    async def deliver(
        self, env: Envelope, rows: Sequence[Delivery], data: bytes, token: str,
        hops: dict[str, NextHop] | None = None,
    ) -> None:
        """Send ``data`` to every claimed row and record the outcomes (the claim is ``token``).

        ``hops``: transports already known by recipient domain (the ingress found them at RCPT), so the database is
        not asked again.
        """
        with tenant_scope(env.tenant_id):
            groups = await self._group(env, rows, hops or {})
            await asyncio.gather(*(self._send_group(env, hop, group, data, token) for hop, group in groups))

    async def _group(
        self, env: Envelope, rows: Sequence[Delivery], known: dict[str, NextHop]
    ) -> list[tuple[NextHop, list[Delivery]]]:
        transport_domains = {_domain_of(r.rcpt) for r in rows if r.route == "transport"} - set(known)
        transports = dict(known)
        if transport_domains:
            transports.update(await asyncio.to_thread(_load_transports, self.cfg, transport_domains))
        by_hop: dict[NextHop, list[Delivery]] = defaultdict(list)
        for row in rows:
            domain = _domain_of(row.rcpt)
            if row.next_hop:  # a mail rule rerouted it
                host, port, tls = parse_next_hop(row.next_hop)
                hop = Router.transport(host, port, tls)
            elif row.route == "transport":
                hop = transports.get(domain) or NextHop((), failure=(451, f"4.3.5 no transport for {domain}"))
            else:
                hop = await self.router.mx(domain)
            by_hop[hop].append(row)
        return list(by_hop.items())

    async def _send_group(self, env: Envelope, hop: NextHop, rows: list[Delivery], data: bytes, token: str) -> None:
        rcpts = [r.rcpt for r in rows]
        try:
            result = await self.pool.send(hop, env.mail_from, rcpts, data)
        except Exception as exc:  # a bug or an unexpected library error must not lose the rows: they are retried
            log.exception("delivery of %s failed unexpectedly", env.message_id)
            result = SendResult({r: RcptResult(451, f"4.3.0 internal error: {type(exc).__name__}") for r in rcpts})
        await asyncio.to_thread(_record, self.cfg, env.tenant_id, token, rows, result)

    async def close(self) -> None:
        await self.pool.close()


def _load_transports(cfg: Config, domains: set[str]) -> dict[str, NextHop]:
    session = session_factory(cfg)()
    try:
        found = session.scalars(select(Domain).where(Domain.name.in_(domains)))
        hops = {d.name: Router.transport(d.transport_host, d.transport_port, d.transport_tls,
                                         egress_checked=not d.transport_egress_exempt) for d in found}
        # A domain the tenant removed: mail accepted for it before is still delivered where it was meant to go.
        for name, r in retired_transports(session, domains - set(hops)).items():
            hops[name] = Router.transport(r.transport_host, r.transport_port, r.transport_tls,
                                          egress_checked=not r.transport_egress_exempt)
        return hops
    finally:
        session.close()


def _record(cfg: Config, tenant_id: int, token: str, rows: list[Delivery], result: SendResult) -> None:
    with tenant_scope(tenant_id):
        session = session_factory(cfg)()
        try:
            record_results(session, cfg, token, rows, result.per_rcpt, result.host)
        finally:
            session.close()


def deliver_message(cfg: Config, tenant_id: int, message_id: str) -> int:
    """Claim the due rows of one message, deliver them, record outcomes; returns how many rows were attempted."""
    token = secrets.token_hex(8)
    with tenant_scope(tenant_id):
        session = session_factory(cfg)()
        try:
            rows = claim_due(session, message_id, token, cfg.delivery_lease)
            if not rows:
                return 0
            msg = load(session, Message, message_id)
            data = blob_store.get(session, message_id)
            env = Envelope(msg.id, msg.tenant_id, msg.mail_from)
        finally:
            session.close()

        async def run() -> None:
            deliverer = Deliverer(cfg)
            try:
                await deliverer.deliver(env, rows, data, token)
            finally:
                await deliverer.close()

        asyncio.run(run())
        return len(rows)
