"""The SMTP ingress: aiosmtpd's handler hooks (EHLO, MAIL, RCPT, DATA), the server, and its drain on SIGTERM.

Each hook hands its work to a collaborator with one job: :mod:`smtp.routing` (recipient domain → tenant, and the
tenant's policy, cached), :mod:`smtp.envelope` (address syntax and the RCPT-time lists, DNSBL and greylisting),
:mod:`smtp.refusals` (records of refused mail, written before the reply), :mod:`smtp.judge` (the verdict at DATA),
:mod:`smtp.commit` (the one transaction that accepts a mail: ``250`` only after it commits, ``451 4.3.0`` if it
fails), :mod:`smtp.fastpath` (delivery right after the commit) and :mod:`smtp.sending` (mail a tenant sends out).

Mail is inbound unless the connection belongs to a sending tenant (a client in its relay network on port 25, or a
login on the submission listener): then it is outbound (see :mod:`smtp.sending`), judged under the tenant's
outbound policy, DKIM-signed and routed to the recipients' MX. Nothing else is ever relayed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import socket
import ssl
import time
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from smtp.callahead import RecipientVerifier
from smtp.checks import Check, CheckContext, Stage, build_checks
from smtp.checks.lists import ListsCheck
from smtp.checks.msgauth import strip_spoofed_authres
from smtp.commit import REPLY_STORE_FAILED, Commit, received_header
from smtp.conform import prepare_for_relay
from smtp.delivery import Deliverer
from smtp.delivery import Envelope as DeliveryEnvelope
from smtp.envelope import EnvelopeChecks, peer_ip, valid_address
from smtp.fastpath import FastPath
from smtp.judge import Judge
from smtp.limits import ConnectionLimits, QuietAcceptErrors
from smtp.mime import check_limits
from smtp.outbound import Router
from smtp.pipeline import run_stage
from smtp.refusals import RCPT_REFUSALS_RECORDED as RCPT_REFUSALS_RECORDED  # re-exported for tests
from smtp.refusals import Refusals
from smtp.routing import REPLY_LOOKUP_FAILED, Routing
from smtp.sending import SendingHandler
from smtp.session import IngressSession, IngressSMTP, MailEnvelope
from smtp.submission import Outbound, SubmissionSMTP
from smtp.verdict import Action
from tenants.deliveries import release_claim
from tenants.exceptions import ConfigError
from tenants.ids import new_id
from tenants.models import Delivery
from tenants.platform import heartbeat
from tenants.platform.config import Config
from tenants.platform.db import require_current_schema, session_factory
from tenants.platform.redisconn import redis_client
from tenants.policy import POLICY_VERSION_KEY, normalize_domain
from tenants.scope import tenant_scope

log = logging.getLogger(__name__)

#: Seconds between two reads of the policy version in Redis.
POLICY_POLL_INTERVAL = 1.0
#: Seconds a stopping ingress waits for its running deliveries before handing the rest back to the queue.
SHUTDOWN_GRACE = 10.0

REPLY_RELAY_DENIED = "550 5.7.1 Relaying denied: we do not accept mail for this domain"


class IngressHandler:
    """aiosmtpd handler: envelope checks at RCPT, judge and commit at DATA, then hand off to the fast path."""

    def __init__(self, cfg: Config, deliverer: Deliverer) -> None:
        self.cfg = cfg
        self.deliverer = deliverer
        self.sessions = session_factory(cfg)
        self.checks = build_checks(cfg)
        self.redis = redis_client(cfg, asyncio_client=True)
        self.routing = Routing(self.sessions)
        #: Routes and policies (the routing's cache), dropped whenever the policy version moves.
        self.cache = self.routing.cache
        self.outbound = Outbound(cfg, self.sessions, self.redis)
        self.recipients = RecipientVerifier(cfg, self.sessions, self.redis)
        lists = next((c for c in self.checks if isinstance(c, ListsCheck)), None)
        self.envelope_checks = EnvelopeChecks(self.redis, lists)
        self.refusals = Refusals(self.sessions, self.routing)
        self.judge = Judge(cfg, self.checks, self.routing)
        self.commit = Commit(cfg, self.sessions, self.redis)
        self.fastpath = FastPath(deliverer)
        self._in_flight = self.fastpath.in_flight  # what drain() waits for and gives back
        self.sending = SendingHandler(cfg, outbound=self.outbound, routing=self.routing, refusals=self.refusals,
                                      judge=self.judge, commit=self.commit, fastpath=self.fastpath,
                                      checks=self.checks, redis=self.redis)

    @property
    def accepted(self) -> int:
        """Mails committed since the process started."""
        return self.commit.accepted

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd handles pipelined commands; it just does not say so. Port 25 offers no AUTH (submission does).
        offers_auth = isinstance(server, IngressSMTP) and server.offers_auth
        out = [r for r in responses if (offers_auth or not r.startswith("250-AUTH")) and r != "250 HELP"]
        out.append("250-PIPELINING")
        out.append("250 HELP")
        return out

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: MailEnvelope, address: str, mail_options: list[str]
    ) -> str:
        # The null sender of bounces stays "<>" in the envelope (aiosmtpd reads an empty one as "no MAIL yet").
        if address != "<>" and not valid_address(address):
            return "501 5.1.7 Bad sender address syntax"
        submitter = await self.sending.submitter(server, session, address)
        if isinstance(submitter, str):
            return submitter
        policy = None
        if submitter is not None:
            checked = await self.sending.mail_from(session, submitter, address)
            if isinstance(checked, str):
                return checked
            policy = checked
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.submitter = submitter
        envelope.ctx = CheckContext(
            cfg=self.cfg, client_ip=peer_ip(session), helo=session.host_name or "",
            mail_from="" if address == "<>" else address, redis=self.redis,
            direction="inbound" if submitter is None else "outbound",
        )
        if submitter is not None and policy is not None:
            envelope.ctx.tenant_ids = [submitter.tenant_id]
            envelope.ctx.policies = {submitter.tenant_id: policy}
        envelope.early = asyncio.create_task(run_stage(self.checks, envelope.ctx, Stage.MAIL))
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: MailEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.cfg.max_recipients:
            return "452 4.5.3 Too many recipients"
        if not valid_address(address):
            return "501 5.1.3 Bad recipient address syntax"
        if envelope.submitter is not None:
            reply = await self.sending.rcpt(session, envelope, envelope.submitter, address, rcpt_options)
            if reply is not None:
                return reply  # else a relay network's bounce to one of our domains: inbound from here on
        route = await self.routing.recipient_route(address)
        if isinstance(route, str):
            return route
        if route is None:
            if isinstance(session, IngressSession) and session.relay_unknown:
                return REPLY_LOOKUP_FAILED  # the client may be a tenant's server: not a final no
            return REPLY_RELAY_DENIED
        policy = await self.routing.policy_or_reply(route.tenant_id)
        if isinstance(policy, str):
            return policy
        refusal = await self.recipients.check(route, address, self.cache.version)
        if refusal is None:
            refusal = await self.envelope_checks.check(envelope, route.tenant_id, policy, address)
        if refusal is not None:
            if refusal.startswith("5"):  # a final no; a 4xx (greylisting, verification unavailable) comes again
                await self.refusals.at_rcpt(session, envelope, route.tenant_id, address, refusal,
                                            retention_days=policy.retention_days("spam"))
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.routes[address] = route
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: MailEnvelope) -> str:
        if envelope.submitter is not None:
            return await self.sending.data(server, session, envelope, envelope.submitter)
        raw = envelope.original_content or b""
        queue_id = new_id()
        client_ip = peer_ip(session)
        received = received_header(self.cfg, session, envelope, queue_id, client_ip,
                                   tls=server._tls_protocol is not None)
        by_tenant: dict[int, list[str]] = {}
        for rcpt in envelope.rcpt_tos:
            by_tenant.setdefault(envelope.routes[rcpt].tenant_id, []).append(rcpt)
        over = await asyncio.to_thread(check_limits, raw)  # before anything parses the mail
        if over is not None:
            return await self.refusals.over_limits(session, envelope, raw, queue_id, by_tenant, over)
        try:
            verdicts, groups, ctx = await self.judge.inbound(envelope, raw, by_tenant, queue_id)
        except Exception:
            log.exception("checks of %s failed; answering 451", queue_id)
            return "451 4.3.0 Temporary failure while scanning, try again later"
        if any(v.action == Action.TEMPFAIL for v in verdicts.values()):
            why = next(v.explanation for v in verdicts.values() if v.action == Action.TEMPFAIL)
            log.warning("%s from %s deferred: %s", queue_id, client_ip, why)
            return "451 4.7.0 Temporary failure: content scan unavailable, try again later"
        if all(v.action == Action.REJECT and not v.discard for v in verdicts.values()):
            return await self.refusals.rejected_inbound(session, raw, queue_id, verdicts, groups, ctx)
        token = secrets.token_hex(8)
        mail_from = ctx.mail_from
        content = prepare_for_relay(strip_spoofed_authres(raw, self.cfg.hostname), queue_id)
        try:
            stored = await self.commit.inbound(queue_id, mail_from, groups, received, content, verdicts, ctx,
                                               client_ip, session.host_name, token)
        except Exception:
            log.exception("commit of %s failed; answering 451", queue_id)
            return REPLY_STORE_FAILED
        for tenant_id, message_id, rows, data in stored:
            if rows:
                hops = {normalize_domain(r.domain): Router.for_route(r)
                        for r in envelope.routes.values() if r.tenant_id == tenant_id}
                self.fastpath.start(DeliveryEnvelope(message_id, tenant_id, mail_from), rows, data, token, hops)
        log.info("accepted %s from %s <%s> for %d recipient(s), %d bytes: %s", queue_id, client_ip, mail_from,
                 len(envelope.rcpt_tos), len(raw), "; ".join(v.explanation for v in verdicts.values()))
        return f"250 2.0.0 Ok: queued as {queue_id}"

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
                version: int | None = int(raw) if raw else 0
            except Exception as exc:  # Redis down: keep the cache; mail still flows
                log.debug("policy version poll failed: %s", exc)
                version = None
            self.cache.check_version(version)
            self.outbound.cache.check_version(version)
            await asyncio.sleep(POLICY_POLL_INTERVAL)


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    if not cfg.tls_cert or not cfg.tls_key:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    return ctx


def _addresses(server: asyncio.Server) -> str:
    return ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets)


async def _heartbeat(cfg: Config, me: heartbeat.Identity, handler: IngressHandler) -> None:
    """Announce this ingress in the cluster view, with the mails it accepted (the database call runs in a thread)."""
    while True:
        await asyncio.to_thread(heartbeat.beat_once, cfg, me, handler.accepted)
        await asyncio.sleep(heartbeat.INTERVAL)


async def _checks_ready(checks: list[Check]) -> None:
    """Wait for every check to be ready before listening (SpamAssassin's rules compile once per process): a mail
    accepted earlier would be judged without them. Senders meanwhile find the port closed and try again later."""
    started = time.monotonic()
    await asyncio.gather(*(check.ready() for check in checks))
    if (took := time.monotonic() - started) >= 1.0:
        log.info("checks ready after %.1fs", took)


async def serve(cfg: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run the ingress (port 25, and the submission listener when configured) until SIGTERM or SIGINT."""
    cfg.check_submission()
    require_current_schema(cfg)
    tls = tls_context(cfg)
    if cfg.submission_listen is not None and tls is None:
        raise ConfigError("MAILWARD_SUBMISSION_LISTEN needs MAILWARD_TLS_CERT and MAILWARD_TLS_KEY")
    limits = ConnectionLimits.from_config(cfg)  # shared by both listeners
    deliverer = Deliverer(cfg)
    handler = IngressHandler(cfg, deliverer)
    loop = asyncio.get_running_loop()
    QuietAcceptErrors(loop).install(loop)
    common: dict[str, Any] = dict(data_size_limit=cfg.max_message_size, enable_SMTPUTF8=True, hostname=cfg.hostname,
                                  ident="Mailward ESMTP", tls_context=tls, limits=limits, loop=loop)

    def factory() -> IngressSMTP:
        return IngressSMTP(handler, **common)

    def submission_factory() -> SubmissionSMTP:
        return SubmissionSMTP(handler, login=handler.outbound.login, **common)

    await _checks_ready(handler.checks)
    servers = [await loop.create_server(factory, host=cfg.smtp_listen.host, port=cfg.smtp_listen.port,
                                        family=socket.AF_UNSPEC, reuse_address=True,
                                        reuse_port=cfg.smtp_processes > 1)]
    addrs = _addresses(servers[0])
    if cfg.submission_listen is not None:
        servers.append(await loop.create_server(submission_factory, host=cfg.submission_listen.host,
                                                port=cfg.submission_listen.port, family=socket.AF_UNSPEC,
                                                reuse_address=True, reuse_port=cfg.smtp_processes > 1))
        log.info("SMTP submission listening on %s (STARTTLS, then AUTH)", _addresses(servers[1]))
        addrs += f"; submission on {_addresses(servers[1])}"
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    poller = asyncio.create_task(handler.poll_policy_version())
    me = heartbeat.Identity.here("ingress")
    beats = asyncio.create_task(_heartbeat(cfg, me, handler))
    log.info("SMTP ingress listening on %s as %s (%s)", addrs, cfg.hostname, limits)
    print(f"mailward smtp: listening on {addrs}", flush=True)
    if ready is not None:
        ready.set()
    started = time.monotonic()
    try:
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        poller.cancel()
        beats.cancel()
        await handler.drain(SHUTDOWN_GRACE)
        await asyncio.to_thread(heartbeat.remove_once, cfg, me)
        await deliverer.close()
        log.info("SMTP ingress stopped after %.0fs, %d mails accepted", time.monotonic() - started, handler.accepted)
