"""The SMTP ingress: aiosmtpd protocol, recipient routing at RCPT, durable commit at DATA, fast-path delivery.

A ``250`` to DATA is sent only after the message, its blob, one delivery row per recipient and the tracking event
are committed in one transaction. Any failure of that commit answers ``451 4.3.0``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import socket
import ssl
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime

from aiosmtpd.smtp import SMTP, Envelope, Session

from smtp import authres, greylist
from smtp.checks import CheckContext, Stage, build_checks
from smtp.delivery import Deliverer
from smtp.delivery import Envelope as DeliveryEnvelope
from smtp.mime import parse_mail, prefix_subject, summarize_headers
from smtp.pipeline import run_stage
from smtp.queue import NewMessage, release_claim, store_message
from smtp.verdict import Action, Verdict, decide, header_block
from tenants.config import Config
from tenants.db import require_current_schema, session_factory
from tenants.ids import new_id
from tenants.models import Delivery, DeliveryStatus
from tenants.policy import POLICY_VERSION_KEY, DomainRoute, Policy, find_domain_route, load_policy, normalize_domain
from tenants.redisconn import redis_client
from tenants.scope import msp_scope, tenant_scope

log = logging.getLogger(__name__)

#: Most fast-path deliveries one ingress runs at once; more wait (their rows are already committed).
MAX_CONCURRENT_DELIVERIES = 200
#: Seconds between two reads of the policy version in Redis.
POLICY_POLL_INTERVAL = 1.0
#: Seconds a stopping ingress waits for its running deliveries before handing the rest back to the queue.
SHUTDOWN_GRACE = 10.0
#: Seconds a client may stay silent before the ingress hangs up (RFC 5321 4.5.3.2 suggests 5 minutes).
CLIENT_TIMEOUT = 300

REPLY_STORE_FAILED = "451 4.3.0 Temporary storage failure, try again later"
REPLY_LOOKUP_FAILED = "451 4.3.0 Temporary lookup failure, try again later"


def _valid_address(address: str) -> bool:
    """local@domain with no spaces or control characters (RFC 5321 4.1.2, leniently: real senders vary)."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or len(address) > 320:
        return False
    if any(c.isspace() or ord(c) < 32 or c in "<>" for c in address):
        return False
    if domain.startswith("["):
        return domain.endswith("]")
    return "." in domain and all(label for label in domain.split("."))


class MailEnvelope(Envelope):
    """Per-transaction state: aiosmtpd's envelope, the route of each recipient, and the checks' context."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, DomainRoute] = {}
        self.ctx: CheckContext | None = None
        #: The MAIL-stage checks (DNSBL, SPF), started at MAIL FROM and awaited when their answer is needed.
        self.early: asyncio.Task[None] | None = None

    async def early_done(self) -> None:
        if self.early is not None:
            await asyncio.shield(self.early)


class IngressSMTP(SMTP):
    def _create_envelope(self) -> MailEnvelope:
        return MailEnvelope()


class DomainCache:
    """Positive domain → route answers and tenant policies, dropped whenever the policy version moves."""

    def __init__(self) -> None:
        self.routes: dict[str, DomainRoute] = {}
        self.policies: dict[int, Policy] = {}
        self.version: int | None = None

    def check_version(self, version: int | None) -> None:
        if version != self.version:
            self.routes.clear()
            self.policies.clear()
            self.version = version


class IngressHandler:
    """aiosmtpd handler: envelope checks at RCPT, commit at DATA, then hand off to the deliverer."""

    def __init__(self, cfg: Config, deliverer: Deliverer) -> None:
        self.cfg = cfg
        self.deliverer = deliverer
        self.cache = DomainCache()
        self.sessions = session_factory(cfg)
        self.checks = build_checks(cfg)
        self.redis = redis_client(cfg, asyncio_client=True)
        self._delivery_slots = asyncio.Semaphore(MAX_CONCURRENT_DELIVERIES)
        self._in_flight: dict[asyncio.Task[None], tuple[str, list[Delivery]]] = {}
        self.accepted = 0

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd handles pipelined commands; it just does not say so. Inbound port 25 offers no AUTH.
        out = [r for r in responses if not r.startswith("250-AUTH") and r != "250 HELP"]
        out.append("250-PIPELINING")
        out.append("250 HELP")
        return out

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: MailEnvelope, address: str, mail_options: list[str]
    ) -> str:
        # The null sender of bounces stays "<>" in the envelope (aiosmtpd reads an empty one as "no MAIL yet").
        if address != "<>" and not _valid_address(address):
            return "501 5.1.7 Bad sender address syntax"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        peer_ip = session.peer[0] if isinstance(session.peer, tuple) else "127.0.0.1"
        envelope.ctx = CheckContext(
            cfg=self.cfg, client_ip=peer_ip, helo=session.host_name or "",
            mail_from="" if address == "<>" else address, redis=self.redis,
        )
        envelope.early = asyncio.create_task(run_stage(self.checks, envelope.ctx, Stage.MAIL))
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: MailEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.cfg.max_recipients:
            return "452 4.5.3 Too many recipients"
        if not _valid_address(address):
            return "501 5.1.3 Bad recipient address syntax"
        domain = address.rpartition("@")[2]
        name = normalize_domain(domain)
        route = self.cache.routes.get(name)
        if route is None:
            try:
                route = await asyncio.to_thread(self._lookup, name)
            except Exception:
                log.exception("recipient domain lookup failed")
                return REPLY_LOOKUP_FAILED
            if route is not None:
                self.cache.routes[name] = route
        if route is None:
            return "550 5.7.1 Relaying denied: we do not accept mail for this domain"
        try:
            policy = await self._policy(route.tenant_id)
        except Exception:
            log.exception("policy lookup failed")
            return REPLY_LOOKUP_FAILED
        refusal = await self._envelope_checks(envelope, route.tenant_id, policy, address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.routes[address] = route
        return "250 2.1.5 Ok"

    async def _policy(self, tenant_id: int) -> Policy:
        policy = self.cache.policies.get(tenant_id)
        if policy is None:
            policy = await asyncio.to_thread(self._load_policy, tenant_id)
            self.cache.policies[tenant_id] = policy
        return policy

    def _load_policy(self, tenant_id: int) -> Policy:
        with tenant_scope(tenant_id):
            session = self.sessions()
            try:
                return load_policy(session, tenant_id)
            finally:
                session.close()

    async def _envelope_checks(self, envelope: MailEnvelope, tenant_id: int, policy: Policy, rcpt: str) -> str | None:
        """RCPT-time refusals under the recipient tenant's policy: DNSBL zones marked reject, then greylisting."""
        ctx = envelope.ctx
        if ctx is None:
            return None
        if policy.dnsbl_reject or policy.greylisting:
            await envelope.early_done()
        if policy.dnsbl_reject and ctx.facts.get("dnsbl_reject"):
            zones = ", ".join(sorted({str(z) for z in ctx.facts["dnsbl_reject"]}))
            return f"554 5.7.1 Service unavailable; client host [{ctx.client_ip}] blocked using {zones}"
        spf = ctx.facts.get("spf")
        spf_pass = spf is not None and str(spf[0]) == "pass"
        return await greylist.check(self.redis, policy, tenant_id, ctx.client_ip, ctx.mail_from, rcpt, spf_pass)

    def _lookup(self, name: str) -> DomainRoute | None:
        session = self.sessions()
        try:
            return find_domain_route(session, name)
        finally:
            session.close()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: MailEnvelope) -> str:
        raw = envelope.original_content or b""
        queue_id = new_id()
        peer_ip = session.peer[0] if isinstance(session.peer, tuple) else "127.0.0.1"
        received = self._received_header(session, envelope, queue_id, peer_ip, tls=server._tls_protocol is not None)
        by_tenant: dict[int, list[str]] = {}
        for rcpt in envelope.rcpt_tos:
            by_tenant.setdefault(envelope.routes[rcpt].tenant_id, []).append(rcpt)
        try:
            verdicts, ctx = await self._judge(envelope, raw, by_tenant)
        except Exception:
            log.exception("checks of %s failed; answering 451", queue_id)
            return "451 4.3.0 Temporary failure while scanning, try again later"
        if any(v.action == Action.TEMPFAIL for v in verdicts.values()):
            why = next(v.explanation for v in verdicts.values() if v.action == Action.TEMPFAIL)
            log.warning("%s from %s deferred: %s", queue_id, peer_ip, why)
            return "451 4.7.0 Temporary failure: content scan unavailable, try again later"
        if all(v.action == Action.REJECT for v in verdicts.values()):
            first = next(iter(verdicts.values()))
            log.info("%s from %s rejected: %s", queue_id, peer_ip, first.explanation)
            if first.kind == "virus":
                return f"554 5.7.1 Message rejected: virus found ({first.explanation[:200]})"
            return "554 5.7.1 Message rejected as spam" + (" or unsafe content" if first.kind == "attachment" else "")
        token = secrets.token_hex(8)
        mail_from = ctx.mail_from
        content = authres.strip_ours(raw, self.cfg.hostname)
        try:
            stored = await asyncio.to_thread(
                self._commit, queue_id, mail_from, by_tenant, received, content, verdicts, ctx, peer_ip,
                session.host_name, token,
            )
        except Exception:
            log.exception("commit of %s failed; answering 451", queue_id)
            return REPLY_STORE_FAILED
        self.accepted += 1
        for tenant_id, message_id, rows, data in stored:
            if not rows:
                continue
            env = DeliveryEnvelope(message_id, tenant_id, mail_from)
            task = asyncio.create_task(self._deliver(env, rows, data, token))
            self._in_flight[task] = (token, rows)
            task.add_done_callback(self._in_flight.pop)
        log.info("accepted %s from %s <%s> for %d recipient(s), %d bytes: %s", queue_id, peer_ip, mail_from,
                 len(envelope.rcpt_tos), len(raw), "; ".join(v.explanation for v in verdicts.values()))
        return f"250 2.0.0 Ok: queued as {queue_id}"

    async def _judge(
        self, envelope: MailEnvelope, raw: bytes, by_tenant: dict[int, list[str]]
    ) -> tuple[dict[int, Verdict], CheckContext]:
        """Run the DATA-stage checks once and judge the mail under each recipient tenant's policy."""
        ctx = envelope.ctx or CheckContext(cfg=self.cfg, client_ip="127.0.0.1", helo="", mail_from="")
        ctx.rcpts = list(envelope.rcpt_tos)
        ctx.tenant_ids = list(by_tenant)
        ctx.policies = {tid: await self._policy(tid) for tid in by_tenant}
        ctx.mail = await asyncio.to_thread(parse_mail, raw)
        await envelope.early_done()
        await run_stage(self.checks, ctx, Stage.DATA)
        return {tid: decide(ctx.findings, tid, ctx.policies[tid]) for tid in by_tenant}, ctx

    def _tenant_content(
        self, received: bytes, content: bytes, verdict: Verdict, ctx: CheckContext, policy: Policy
    ) -> bytes:
        """What is stored (and later delivered) for one tenant: our trace and result headers on top, subject tagged."""
        data = received + header_block(verdict, self.cfg.hostname, ctx.add_headers) + content
        if verdict.action == Action.TAG and policy.subject_prefix:
            data = prefix_subject(data, policy.subject_prefix)
        return data

    def _commit(
        self, queue_id: str, mail_from: str, by_tenant: dict[int, list[str]], received: bytes, content: bytes,
        verdicts: dict[int, Verdict], ctx: CheckContext, peer_ip: str, helo: str | None, token: str,
    ) -> list[tuple[int, str, list[Delivery], bytes]]:
        assert ctx.mail is not None
        headers = summarize_headers(content)
        session = self.sessions()
        out = []
        try:
            for tenant_id, rcpts in by_tenant.items():
                verdict = verdicts[tenant_id]
                data = self._tenant_content(received, content, verdict, ctx, ctx.policies[tenant_id])
                with tenant_scope(tenant_id):
                    msg = store_message(session, NewMessage(
                        tenant_id=tenant_id, queue_id=queue_id, mail_from=mail_from, rcpts=rcpts, data=data,
                        client_ip=peer_ip, client_helo=helo, header_from=headers.header_from,
                        subject=headers.subject, message_id_header=headers.message_id,
                        claim_token=token, lease_seconds=self.cfg.delivery_lease,
                        verdict=verdict.action.value, score=verdict.score, explanation=verdict.explanation,
                        quarantine_kind=verdict.kind if verdict.action == Action.QUARANTINE else None,
                        findings=[(f.symbol, f.score, f.reason) for f in verdict.findings],
                        deliver=verdict.delivers,
                        retention_days=ctx.policies[tenant_id].retention_days(verdict.kind or "spam")
                        if verdict.action == Action.QUARANTINE else None,
                    ))
                    session.flush()
                # Only rows claimed for the fast path; quarantined rows wait for a release.
                claimed = [d for d in msg.deliveries if d.status == DeliveryStatus.DELIVERING.value]
                out.append((tenant_id, msg.id, claimed, data))
            with msp_scope():
                session.commit()
            return out
        except BaseException:
            with msp_scope():
                session.rollback()
            raise
        finally:
            session.close()

    def _received_header(
        self, session: Session, envelope: Envelope, queue_id: str, peer_ip: str, *, tls: bool
    ) -> bytes:
        helo = (session.host_name or "unknown").replace("\r", "").replace("\n", "")[:255]
        proto = "ESMTP" if session.extended_smtp else "SMTP"
        if tls:
            proto += "S"
        if envelope.smtp_utf8:
            proto = "UTF8" + proto.replace("ESMTP", "SMTP")
        for_clause = f"\r\n\tfor <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
        when = format_datetime(datetime.now(UTC))
        return (
            f"Received: from {helo} ([{peer_ip}])\r\n\tby {self.cfg.hostname} (Mailward) with {proto} "
            f"id {queue_id}{for_clause};\r\n\t{when}\r\n"
        ).encode("utf-8", "replace")

    async def _deliver(self, env: DeliveryEnvelope, rows: Sequence[Delivery], data: bytes, token: str) -> None:
        async with self._delivery_slots:
            try:
                await self.deliverer.deliver(env, rows, data, token)
            except Exception:
                # The rows stay claimed until their lease ends; then the worker's sweeper retries them.
                log.exception("fast-path delivery of %s failed; the worker will retry", env.message_id)

    async def drain(self, grace: float) -> None:
        """Let running deliveries finish for ``grace`` seconds, then give unfinished rows back to the queue."""
        tasks = list(self._in_flight)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        held = [self._in_flight[t] for t in pending if t in self._in_flight]
        for task in pending:
            task.cancel()
        for token, rows in held:
            by_tenant: dict[int, list[Delivery]] = {}
            for row in rows:
                by_tenant.setdefault(row.tenant_id, []).append(row)
            for tenant_id, trows in by_tenant.items():
                await asyncio.to_thread(self._release, tenant_id, token, trows)

    def _release(self, tenant_id: int, token: str, rows: list[Delivery]) -> None:
        with tenant_scope(tenant_id):
            session = self.sessions()
            try:
                release_claim(session, token, rows)
            finally:
                session.close()

    async def poll_policy_version(self) -> None:
        """Keep the domain cache in step with policy changes made by any process."""
        client = redis_client(self.cfg, asyncio_client=True)
        while True:
            try:
                raw = await client.get(POLICY_VERSION_KEY)
                self.cache.check_version(int(raw) if raw else 0)
            except Exception as exc:  # Redis down: keep the cache; mail still flows
                log.debug("policy version poll failed: %s", exc)
                self.cache.check_version(None)
            await asyncio.sleep(POLICY_POLL_INTERVAL)


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    if not cfg.tls_cert or not cfg.tls_key:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    return ctx


async def serve(cfg: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run the ingress until SIGTERM or SIGINT."""
    require_current_schema(cfg)
    deliverer = Deliverer(cfg)
    handler = IngressHandler(cfg, deliverer)
    tls = tls_context(cfg)
    loop = asyncio.get_running_loop()

    def factory() -> IngressSMTP:
        return IngressSMTP(
            handler, data_size_limit=cfg.max_message_size, enable_SMTPUTF8=True, hostname=cfg.hostname,
            ident="Mailward ESMTP", tls_context=tls, timeout=CLIENT_TIMEOUT, loop=loop,
        )

    server = await loop.create_server(factory, host=cfg.smtp_listen.host, port=cfg.smtp_listen.port,
                                      family=socket.AF_UNSPEC, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    poller = asyncio.create_task(handler.poll_policy_version())
    addrs = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets)
    log.info("SMTP ingress listening on %s as %s", addrs, cfg.hostname)
    print(f"mailward smtp: listening on {addrs}", flush=True)
    if ready is not None:
        ready.set()
    started = time.monotonic()
    try:
        await stop.wait()
    finally:
        server.close()
        poller.cancel()
        await handler.drain(SHUTDOWN_GRACE)
        await deliverer.close()
        log.info("SMTP ingress stopped after %.0fs, %d mails accepted", time.monotonic() - started, handler.accepted)
