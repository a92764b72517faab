"""The SMTP ingress: aiosmtpd protocol, recipient routing at RCPT, durable commit at DATA, fast-path delivery.

A ``250`` to DATA is sent only after the message, its blob, one delivery row per recipient and the tracking event
are committed in one transaction. Any failure of that commit answers ``451 4.3.0``.

Refusals are recorded for the tracking center and the statistics before their reply is sent: a recipient refused at
RCPT for a known tenant, and a mail every recipient rejects at DATA, become a message with verdict ``reject``, no
content, a ``rejected`` delivery row per recipient carrying the exact reply, and a ``rejected`` event. A refusal needs
no durability: if recording fails or is slow, the reply is the same and the failure is logged.

Mail is inbound unless the connection belongs to a sending tenant (a client in its relay network on port 25, or a
login on the submission listener): then it is outbound (see :mod:`smtp.submission`), judged under the tenant's
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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, TypeVar

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy.orm import Session as DbSession

from smtp import greylist
from smtp.callahead import RecipientVerifier
from smtp.checks import CheckContext, Stage, build_checks
from smtp.checks.auth import strip_spoofed_authres
from smtp.checks.lists import ListsCheck, findings_for_rcpt, rcpt_groups
from smtp.conform import prepare_for_relay
from smtp.delivery import Deliverer
from smtp.delivery import Envelope as DeliveryEnvelope
from smtp.dkimsign import header_from_domain
from smtp.limits import ConnectionLimits, QuietAcceptErrors
from smtp.mime import OverLimits, check_limits, parse_mail, prefix_subject, summarize_headers
from smtp.outbound import NextHop, Router
from smtp.pipeline import run_stage
from smtp.queue import NewMessage, Refused, add_rejected_rows, release_claim, store_message, store_refusal
from smtp.ratelimit import REPLY_LIMITED
from smtp.session import IngressSession, IngressSMTP, MailEnvelope, Submitter
from smtp.submission import REPLY_AUTH_REQUIRED, REPLY_SENDER_NOT_ALLOWED, Outbound, SubmissionSMTP, decide_outbound
from smtp.verdict import Action, Verdict, decide, header_block, subject_tag
from tenants import heartbeat
from tenants.config import Config
from tenants.db import require_current_schema, session_factory
from tenants.exceptions import ConfigError
from tenants.ids import new_id
from tenants.models import Delivery, DeliveryStatus
from tenants.policy import POLICY_VERSION_KEY, DomainRoute, Policy, find_domain_route, load_policy, normalize_domain
from tenants.redisconn import redis_client
from tenants.scope import msp_scope, tenant_scope
from tenants.tracking import REFUSED_AT_RCPT

log = logging.getLogger(__name__)

#: Most fast-path deliveries one ingress runs at once; more wait (their rows are already committed).
MAX_CONCURRENT_DELIVERIES = 200
#: Seconds between two reads of the policy version in Redis.
POLICY_POLL_INTERVAL = 1.0
#: Seconds a stopping ingress waits for its running deliveries before handing the rest back to the queue.
SHUTDOWN_GRACE = 10.0
#: Refused recipients recorded per connection: enough for a tenant to see why a partner's mail bounced; a dictionary
#: attack (hundreds of guesses on one connection) then costs one log line, not hundreds of rows.
RCPT_REFUSALS_RECORDED = 20
#: Seconds a refusal's reply waits for its record in the tracking center; past that the reply goes and the write
#: finishes (or fails, logged) on its own. A dead database must not hold every refused client.
RECORD_TIMEOUT = 5.0

#: What a recipient is judged as: its tenant, and its user's own list decision (None: the tenant's verdict).
Judged = tuple[int, str | None]

REPLY_STORE_FAILED = "451 4.3.0 Temporary storage failure, try again later"
REPLY_LOOKUP_FAILED = "451 4.3.0 Temporary lookup failure, try again later"
REPLY_BLOCKED = "550 5.7.1 Sender blocked by the recipient's policy"
REPLY_RELAY_DENIED = "550 5.7.1 Relaying denied: we do not accept mail for this domain"
REPLY_SIGNING_FAILED = "451 4.3.0 Temporary failure while signing, try again later"


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


T = TypeVar("T")


def one_transaction(sessions: Callable[[], DbSession], work: Callable[[DbSession], T]) -> T:
    """Run ``work`` in a fresh session and commit it (in the MSP scope: one transaction may hold several tenants'
    rows, each written in its own tenant scope); roll back on any error or cancellation, and always close."""
    session = sessions()
    try:
        result = work(session)
        with msp_scope():
            session.commit()
        return result
    except BaseException:
        with msp_scope():
            session.rollback()
        raise
    finally:
        session.close()


def _peer_ip(session: Session) -> str:
    return session.peer[0] if isinstance(session.peer, tuple) else "127.0.0.1"


def _log_record_failure(work: asyncio.Future[None], what: str) -> None:
    """Log why recording a refusal failed (the reply is the same either way)."""
    if work.cancelled():
        log.warning("recording the %s was cancelled", what)
    elif work.exception() is not None:
        log.error("could not record the %s; the reply is unchanged", what, exc_info=work.exception())


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
        self._lists = next((c for c in self.checks if isinstance(c, ListsCheck)), None)
        self.redis = redis_client(cfg, asyncio_client=True)
        self.outbound = Outbound(cfg, self.sessions, self.redis)
        self.recipients = RecipientVerifier(cfg, self.sessions, self.redis)
        self._delivery_slots = asyncio.Semaphore(MAX_CONCURRENT_DELIVERIES)
        self._in_flight: dict[asyncio.Task[None], tuple[str, list[Delivery]]] = {}
        self.accepted = 0

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
        if address != "<>" and not _valid_address(address):
            return "501 5.1.7 Bad sender address syntax"
        peer_ip = _peer_ip(session)
        if isinstance(server, IngressSMTP) and server.offers_auth:
            if not isinstance(session.auth_data, Submitter):
                return REPLY_AUTH_REQUIRED
            submitter: Submitter | None = session.auth_data
        else:
            submitter = await self._relay_submitter(session, peer_ip)
            try:  # someone else's mail from a tenant's relay network is inbound, like any client's (see submission)
                if submitter is not None and not await self.outbound.sends_out(submitter, address):
                    submitter = None
            except Exception:
                log.exception("outbound sender lookup failed")
                return REPLY_LOOKUP_FAILED
        policy = None
        if submitter is not None:
            try:
                policy = await self._policy(submitter.tenant_id)
                refusal = await self._outbound_sender_checks(submitter, address, policy)
            except Exception:
                log.exception("outbound sender lookup failed")
                return REPLY_LOOKUP_FAILED
            if refusal is not None:
                log.info("MAIL FROM <%s> of tenant %d (%s) from %s refused: %s", address, submitter.tenant_id,
                         submitter.via, peer_ip, refusal)
                return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.submitter = submitter
        envelope.ctx = CheckContext(
            cfg=self.cfg, client_ip=peer_ip, helo=session.host_name or "",
            mail_from="" if address == "<>" else address, redis=self.redis,
            direction="inbound" if submitter is None else "outbound",
        )
        if submitter is not None and policy is not None:
            envelope.ctx.tenant_ids = [submitter.tenant_id]
            envelope.ctx.policies = {submitter.tenant_id: policy}
        envelope.early = asyncio.create_task(run_stage(self.checks, envelope.ctx, Stage.MAIL))
        return "250 2.1.0 Ok"

    async def _relay_submitter(self, session: Session, peer_ip: str) -> Submitter | None:
        """The tenant whose relay network the client is in, looked up once per connection."""
        if not isinstance(session, IngressSession):
            return None
        if not session.relay_checked:
            try:
                session.submitter = await self.outbound.relay_submitter(peer_ip)
            except Exception as exc:
                # Not knowing is not "inbound": unknown recipient domains get 451 instead of 550 meanwhile.
                log.warning("relay networks unavailable (%s: %s); %s is treated as inbound for now",
                            type(exc).__name__, exc, peer_ip)
                session.relay_unknown = True
                return None
            session.relay_checked, session.relay_unknown = True, False
            if session.submitter is not None:
                log.info("%s relays for tenant %d (%s)", peer_ip, session.submitter.tenant_id, session.submitter.via)
        return session.submitter

    async def _outbound_sender_checks(self, submitter: Submitter, address: str, policy: Policy) -> str | None:
        """MAIL FROM of a sending tenant: a domain of its own (a null sender is checked at DATA), within its limits."""
        if address != "<>":
            domain = address.rpartition("@")[2]
            if not await self.outbound.may_send_as(submitter, domain):
                return REPLY_SENDER_NOT_ALLOWED.format(domain=normalize_domain(domain))
        if await self.outbound.limiter.check(submitter.tenant_id, address, policy) is not None:
            return REPLY_LIMITED
        return None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: MailEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.cfg.max_recipients:
            return "452 4.5.3 Too many recipients"
        if not _valid_address(address):
            return "501 5.1.3 Bad recipient address syntax"
        if envelope.submitter is not None and envelope.mail_from == "<>" and not envelope.rcpt_tos:
            try:
                route = await asyncio.to_thread(self._lookup, normalize_domain(address.rpartition("@")[2]))
            except Exception:
                log.exception("recipient domain lookup failed")
                return REPLY_LOOKUP_FAILED
            self._inbound_bounce(envelope, route)
        if envelope.submitter is not None:
            return await self._outbound_rcpt(session, envelope, envelope.submitter, address, rcpt_options)
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
            if isinstance(session, IngressSession) and session.relay_unknown:
                return REPLY_LOOKUP_FAILED  # the client may be a tenant's server: not a final no
            return REPLY_RELAY_DENIED
        try:
            policy = await self._policy(route.tenant_id)
        except Exception:
            log.exception("policy lookup failed")
            return REPLY_LOOKUP_FAILED
        refusal = await self.recipients.check(route, address, self.cache.version)
        if refusal is None:
            refusal = await self._envelope_checks(envelope, route.tenant_id, policy, address)
        if refusal is not None:
            if refusal.startswith("5"):  # a final no; a 4xx (greylisting, verification unavailable) comes again
                await self._record_rcpt_refusal(session, self._rcpt_refused(
                    session, envelope, route.tenant_id, policy, address, refusal))
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.routes[address] = route
        return "250 2.1.5 Ok"

    def _inbound_bounce(self, envelope: MailEnvelope, route: DomainRoute | None) -> None:
        """Turn a relay network's null-sender transaction inbound when its first recipient's domain is one we receive
        mail for (:meth:`smtp.submission.Outbound.bounce_is_inbound`): fresh inbound context, MAIL checks rerun."""
        ctx = envelope.ctx
        if envelope.submitter is None or ctx is None or not self.outbound.bounce_is_inbound(envelope.submitter, route):
            return
        envelope.submitter = None
        envelope.ctx = CheckContext(cfg=self.cfg, client_ip=ctx.client_ip, helo=ctx.helo, mail_from="",
                                    redis=self.redis)
        envelope.early = asyncio.create_task(run_stage(self.checks, envelope.ctx, Stage.MAIL))

    async def _outbound_rcpt(
        self, session: Session, envelope: MailEnvelope, submitter: Submitter, address: str, rcpt_options: list[str]
    ) -> str:
        """Any recipient domain is fine for a sending tenant, within its hourly recipient limits."""
        try:
            policy = await self._policy(submitter.tenant_id)
        except Exception:
            log.exception("policy lookup failed")
            return REPLY_LOOKUP_FAILED
        sender = envelope.mail_from if envelope.mail_from and envelope.mail_from != "<>" else ""
        if await self.outbound.limiter.take(submitter.tenant_id, sender or "<>", policy) is not None:
            # A 4xx, but the one a tenant admin must see: a throttled sender may be a compromised account.
            await self._record_rcpt_refusal(session, self._rcpt_refused(
                session, envelope, submitter.tenant_id, policy, address, REPLY_LIMITED, direction="outbound"))
            return REPLY_LIMITED
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    def _rcpt_refused(self, session: Session, envelope: MailEnvelope, tenant_id: int, policy: Policy, rcpt: str,
                      reply: str, *, direction: str = "inbound") -> Refused:
        """The record of one recipient refused at RCPT: a small message with no subject and no size."""
        sender = envelope.mail_from if envelope.mail_from and envelope.mail_from != "<>" else ""
        return Refused(tenant_id=tenant_id, rcpts=[rcpt], reply=reply, stage="RCPT", mail_from=sender,
                       client_ip=_peer_ip(session), client_helo=session.host_name, direction=direction,
                       route="transport" if direction == "inbound" else "mx",
                       retention_days=policy.retention_days("spam"), explanation=REFUSED_AT_RCPT + reply)

    async def _record_rcpt_refusal(self, session: Session, refused: Refused) -> None:
        """Record a recipient refused at RCPT, up to :data:`RCPT_REFUSALS_RECORDED` per connection."""
        if isinstance(session, IngressSession):  # always, from the ingress's own server classes
            session.rcpt_refusals += 1
        count = session.rcpt_refusals if isinstance(session, IngressSession) else 1
        if count <= RCPT_REFUSALS_RECORDED:
            await self._record([refused])
        elif count == RCPT_REFUSALS_RECORDED + 1:
            log.warning("%s refused more than %d recipients on one connection (a dictionary attack?); recording "
                        "no more of them", _peer_ip(session), RCPT_REFUSALS_RECORDED)

    async def _record(self, refused: list[Refused]) -> None:
        """Record refusals before their reply goes, off the event loop. A refusal needs no durability: a failure is
        logged, and a write slower than :data:`RECORD_TIMEOUT` goes on without the reply waiting for it."""
        work = asyncio.ensure_future(asyncio.to_thread(self._store_refused, refused))
        done, _ = await asyncio.wait({work}, timeout=RECORD_TIMEOUT)
        what = f"refusal of {', '.join(r for item in refused for r in item.rcpts)} ({refused[0].reply})"
        if not done:
            log.warning("recording the %s takes longer than %gs; replying without waiting", what, RECORD_TIMEOUT)
            work.add_done_callback(lambda w: _log_record_failure(w, what))
            return
        _log_record_failure(work, what)

    def _store_refused(self, refused: list[Refused]) -> None:
        """Store refusals (one message per tenant) in one transaction."""
        def work(session: DbSession) -> None:
            for item in refused:
                with tenant_scope(item.tenant_id):
                    store_refusal(session, item)
                    session.flush()

        one_transaction(self.sessions, work)

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
        """RCPT-time decisions under the recipient tenant's policy: the envelope against the allow/block lists (the
        recipient's own, then the tenant's and the MSP's), DNSBL zones marked reject, then greylisting. An allow-listed
        envelope skips DNSBL refusal and greylisting; its content is still checked at DATA (viruses included)."""
        ctx = envelope.ctx
        if ctx is None:
            return None
        listed = await self._envelope_list(ctx, tenant_id, rcpt)
        if listed == "block":
            return REPLY_BLOCKED
        if listed == "allow":
            return None
        if policy.dnsbl_reject or policy.greylisting:
            await envelope.early_done()
        if policy.dnsbl_reject and ctx.facts.get("dnsbl_reject"):
            zones = ", ".join(sorted({str(z) for z in ctx.facts["dnsbl_reject"]}))
            return f"554 5.7.1 Service unavailable; client host [{ctx.client_ip}] blocked using {zones}"
        spf = ctx.facts.get("spf")
        spf_pass = spf is not None and str(spf[0]) == "pass"
        return await greylist.check(self.redis, policy, tenant_id, ctx.client_ip, ctx.mail_from, rcpt, spf_pass)

    async def _envelope_list(self, ctx: CheckContext, tenant_id: int, rcpt: str) -> str | None:
        """"allow", "block" or None for the envelope (sender, client IP) as this recipient's lists say."""
        if self._lists is None:
            return None
        try:
            lists = (await self._lists.lists_for(ctx, [tenant_id]))[tenant_id]
        except Exception:
            log.exception("allow/block lists unavailable at RCPT; deciding at DATA")
            return None
        who: dict[str, str | None] = dict(sender=ctx.mail_from or None, header_from=None, client_ip=ctx.client_ip)
        found = lists.user_match(rcpt, **who) or lists.tenant_match(**who)
        return found.outcome if found is not None else None

    def _lookup(self, name: str) -> DomainRoute | None:
        session = self.sessions()
        try:
            return find_domain_route(session, name)
        finally:
            session.close()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: MailEnvelope) -> str:
        if envelope.submitter is not None:
            return await self._outbound_data(server, session, envelope, envelope.submitter)
        raw = envelope.original_content or b""
        queue_id = new_id()
        peer_ip = _peer_ip(session)
        received = self._received_header(session, envelope, queue_id, peer_ip, tls=server._tls_protocol is not None)
        by_tenant: dict[int, list[str]] = {}
        for rcpt in envelope.rcpt_tos:
            by_tenant.setdefault(envelope.routes[rcpt].tenant_id, []).append(rcpt)
        over = await asyncio.to_thread(check_limits, raw)  # before anything parses the mail
        if over is not None:
            return await self._refuse_over_limits(session, envelope, raw, queue_id, by_tenant, over)
        try:
            verdicts, groups, ctx = await self._judge(envelope, raw, by_tenant)
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
                reply = f"554 5.7.1 Message rejected: virus found ({first.explanation[:200]})"
            else:
                reply = "554 5.7.1 Message rejected as spam" + (
                    " or unsafe content" if first.kind == "attachment" else "")
            headers = summarize_headers(raw)
            await self._record([
                Refused(tenant_id=tid, rcpts=rcpts, reply=reply, stage="DATA", mail_from=ctx.mail_from,
                        client_ip=peer_ip, client_helo=session.host_name, queue_id=queue_id, size=len(raw),
                        header_from=headers.header_from, subject=headers.subject,
                        message_id_header=headers.message_id, score=verdicts[(tid, outcome)].score,
                        explanation=verdicts[(tid, outcome)].explanation,
                        findings=[(f.symbol, f.score, f.reason) for f in verdicts[(tid, outcome)].findings],
                        retention_days=ctx.policies[tid].retention_days(verdicts[(tid, outcome)].kind or "spam"))
                for (tid, outcome), rcpts in groups.items()
            ])
            return reply
        token = secrets.token_hex(8)
        mail_from = ctx.mail_from
        content = prepare_for_relay(strip_spoofed_authres(raw, self.cfg.hostname), queue_id)
        try:
            stored = await asyncio.to_thread(
                self._commit, queue_id, mail_from, groups, received, content, verdicts, ctx, peer_ip,
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
            hops = {normalize_domain(r.domain): Router.for_route(r)
                    for r in envelope.routes.values() if r.tenant_id == tenant_id}
            task = asyncio.create_task(self._deliver(env, rows, data, token, hops))
            self._in_flight[task] = (token, rows)
            task.add_done_callback(self._in_flight.pop)
        log.info("accepted %s from %s <%s> for %d recipient(s), %d bytes: %s", queue_id, peer_ip, mail_from,
                 len(envelope.rcpt_tos), len(raw), "; ".join(v.explanation for v in verdicts.values()))
        return f"250 2.0.0 Ok: queued as {queue_id}"

    async def _refuse_over_limits(self, session: Session, envelope: MailEnvelope, raw: bytes, queue_id: str,
                                  by_tenant: dict[int, list[str]], over: OverLimits, *,
                                  direction: str = "inbound") -> str:
        """554 5.6.0 to a mail whose MIME structure is over the limits (nothing parsed it), recorded per tenant like
        any refusal at DATA."""
        peer_ip = _peer_ip(session)
        log.warning("%s from %s refused: over the MIME limits (%s)", queue_id, peer_ip, over.why)
        mail_from = "" if envelope.mail_from in (None, "<>") else str(envelope.mail_from)
        refused = []
        for tid, rcpts in by_tenant.items():
            try:
                policy = await self._policy(tid)
            except Exception:
                log.exception("policy lookup failed; the refusal of %s is not recorded for tenant %d", queue_id, tid)
                continue
            finding = over.finding(policy)
            refused.append(Refused(
                tenant_id=tid, rcpts=rcpts, reply=over.reply, stage="DATA", mail_from=mail_from, client_ip=peer_ip,
                client_helo=session.host_name, queue_id=queue_id, direction=direction,
                route="transport" if direction == "inbound" else "mx", size=len(raw),
                header_from=over.headers.header_from, subject=over.headers.subject,
                message_id_header=over.headers.message_id, score=finding[1], explanation=over.explanation,
                findings=[finding], retention_days=policy.retention_days("attachment")))
        if refused:
            await self._record(refused)
        return over.reply

    async def _judge(
        self, envelope: MailEnvelope, raw: bytes, by_tenant: dict[int, list[str]]
    ) -> tuple[dict[Judged, Verdict], dict[Judged, list[str]], CheckContext]:
        """Run the DATA-stage checks once and judge the mail under each recipient tenant's policy."""
        ctx = envelope.ctx or CheckContext(cfg=self.cfg, client_ip="127.0.0.1", helo="", mail_from="")
        ctx.rcpts = list(envelope.rcpt_tos)
        ctx.tenant_ids = list(by_tenant)
        ctx.policies = {tid: await self._policy(tid) for tid in by_tenant}
        ctx.mail = await asyncio.to_thread(parse_mail, raw)
        await envelope.early_done()
        await run_stage(self.checks, ctx, Stage.DATA)
        # A recipient whose user has an own list decision is judged apart from the rest of its tenant.
        groups: dict[Judged, list[str]] = {}
        verdicts: dict[Judged, Verdict] = {}
        for tid, rcpts in by_tenant.items():
            for outcome, group in rcpt_groups(ctx, rcpts).items():
                findings = findings_for_rcpt(ctx, tid, group[0]) if outcome else ctx.findings
                groups[(tid, outcome)] = group
                verdicts[(tid, outcome)] = decide(findings, tid, ctx.policies[tid])
        return verdicts, groups, ctx

    def _tenant_content(
        self, received: bytes, content: bytes, verdict: Verdict, ctx: CheckContext, policy: Policy
    ) -> bytes:
        """What is stored (and later delivered) for one tenant: our trace and result headers on top, subject tagged."""
        data = received + header_block(verdict, self.cfg.hostname, ctx.add_headers) + content
        if verdict.action == Action.TAG and policy.subject_prefix:
            data = prefix_subject(data, subject_tag(policy.subject_prefix))  # one line, RFC 2047: no injection
        return data

    def _commit(
        self, queue_id: str, mail_from: str, groups: dict[Judged, list[str]], received: bytes, content: bytes,
        verdicts: dict[Judged, Verdict], ctx: CheckContext, peer_ip: str, helo: str | None, token: str,
    ) -> list[tuple[int, str, list[Delivery], bytes]]:
        assert ctx.mail is not None
        headers = summarize_headers(content)
        new = []
        for (tenant_id, outcome), rcpts in groups.items():
            verdict = verdicts[(tenant_id, outcome)]
            new.append(NewMessage(
                tenant_id=tenant_id, queue_id=queue_id, mail_from=mail_from, rcpts=rcpts,
                data=self._tenant_content(received, content, verdict, ctx, ctx.policies[tenant_id]),
                client_ip=peer_ip, client_helo=helo, header_from=headers.header_from,
                subject=headers.subject, message_id_header=headers.message_id,
                claim_token=token, lease_seconds=self.cfg.delivery_lease,
                verdict=verdict.action.value, score=verdict.score, explanation=verdict.explanation,
                quarantine_kind=verdict.kind if verdict.action == Action.QUARANTINE else None,
                findings=[(f.symbol, f.score, f.reason) for f in verdict.findings],
                deliver=verdict.delivers,
                # A rejected share (this tenant refused, another accepted) is purged like quarantined mail.
                retention_days=ctx.policies[tenant_id].retention_days(verdict.kind or "spam")
                if verdict.action in (Action.QUARANTINE, Action.REJECT) else None,
            ))
        return self._store_all(new)

    def _store_all(self, new: list[NewMessage]) -> list[tuple[int, str, list[Delivery], bytes]]:
        """Store one message per tenant in one transaction; (tenant, message id, delivery rows, bytes) of each."""
        def work(session: DbSession) -> list[tuple[int, str, list[Delivery], bytes]]:
            out = []
            for item in new:
                with tenant_scope(item.tenant_id):
                    msg = store_message(session, item)
                    if item.verdict == Action.REJECT.value:
                        add_rejected_rows(session, msg, item)
                    session.flush()
                # Only rows claimed for the fast path; quarantined rows wait for a release.
                claimed = [d for d in msg.deliveries if d.status == DeliveryStatus.DELIVERING.value]
                out.append((item.tenant_id, msg.id, claimed, item.data))
            return out

        return one_transaction(self.sessions, work)

    def _received_header(
        self, session: Session, envelope: Envelope, queue_id: str, peer_ip: str, *, tls: bool
    ) -> bytes:
        helo = (session.host_name or "unknown").replace("\r", "").replace("\n", "")[:255]
        proto = "ESMTP" if session.extended_smtp else "SMTP"
        if tls:
            proto += "S"
        if session.authenticated:
            proto += "A"  # RFC 3848: ESMTPA, ESMTPSA
        if envelope.smtp_utf8:
            proto = "UTF8" + proto.replace("ESMTP", "SMTP")
        for_clause = f"\r\n\tfor <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
        when = format_datetime(datetime.now(UTC))
        return (
            f"Received: from {helo} ([{peer_ip}])\r\n\tby {self.cfg.hostname} (Mailward) with {proto} "
            f"id {queue_id}{for_clause};\r\n\t{when}\r\n"
        ).encode("utf-8", "replace")

    # --- outbound -------------------------------------------------------------------------------------------------

    async def _outbound_data(
        self, server: SMTP, session: Session, envelope: MailEnvelope, submitter: Submitter
    ) -> str:
        """DATA of a sending tenant: check, judge under its outbound policy, sign, commit, deliver to the MX."""
        raw = envelope.original_content or b""
        queue_id = new_id()
        peer_ip = _peer_ip(session)
        tenant_id = submitter.tenant_id
        mail_from = "" if envelope.mail_from in (None, "<>") else str(envelope.mail_from)
        if not mail_from:  # the null sender (a bounce from the tenant's server): its From must be the tenant's
            from_domain = header_from_domain(raw)
            try:
                allowed = from_domain is not None and await self.outbound.may_send_as(submitter, from_domain)
            except Exception:
                log.exception("outbound sender lookup failed")
                return REPLY_LOOKUP_FAILED
            if not allowed:
                return REPLY_SENDER_NOT_ALLOWED.format(domain=from_domain or "(no From)")
        over = await asyncio.to_thread(check_limits, raw)  # before anything parses the mail
        if over is not None:
            return await self._refuse_over_limits(session, envelope, raw, queue_id,
                                                  {tenant_id: list(envelope.rcpt_tos)}, over, direction="outbound")
        try:
            verdict, ctx = await self._judge_outbound(envelope, raw, tenant_id)
        except Exception:
            log.exception("checks of outbound %s failed; answering 451", queue_id)
            return "451 4.3.0 Temporary failure while scanning, try again later"
        if verdict.action == Action.TEMPFAIL:
            log.warning("outbound %s of tenant %d deferred: %s", queue_id, tenant_id, verdict.explanation)
            return "451 4.7.0 Temporary failure: content scan unavailable, try again later"
        if verdict.action == Action.REJECT:
            log.warning("outbound %s of tenant %d (%s) rejected: %s", queue_id, tenant_id, submitter.via,
                        verdict.explanation)
            if verdict.kind == "virus":
                reply = f"554 5.7.1 Message rejected: virus found ({verdict.explanation[:200]})"
            else:
                reply = "554 5.7.1 Message rejected: unsafe content"
            headers = summarize_headers(raw)
            await self._record([Refused(
                tenant_id=tenant_id, rcpts=list(envelope.rcpt_tos), reply=reply, stage="DATA", mail_from=mail_from,
                client_ip=peer_ip, client_helo=session.host_name, queue_id=queue_id, direction="outbound",
                route="mx", size=len(raw), header_from=headers.header_from, subject=headers.subject,
                message_id_header=headers.message_id, score=verdict.score, explanation=verdict.explanation,
                findings=[(f.symbol, f.score, f.reason) for f in verdict.findings],
                retention_days=ctx.policies[tenant_id].retention_days(verdict.kind or "spam"),
            )])
            return reply
        received = self._received_header(session, envelope, queue_id, peer_ip, tls=server._tls_protocol is not None)
        try:
            data, signed = await self.outbound.sign(tenant_id, received + prepare_for_relay(raw, queue_id), mail_from)
        except Exception:
            log.exception("DKIM signing of outbound %s (tenant %d) failed; answering 451", queue_id, tenant_id)
            return REPLY_SIGNING_FAILED
        headers = summarize_headers(raw)
        token = secrets.token_hex(8)
        policy = ctx.policies[tenant_id]
        new = NewMessage(
            tenant_id=tenant_id, queue_id=queue_id, mail_from=mail_from, rcpts=list(envelope.rcpt_tos), data=data,
            route="mx", direction="outbound", client_ip=peer_ip, client_helo=session.host_name,
            header_from=headers.header_from, subject=headers.subject, message_id_header=headers.message_id,
            claim_token=token, lease_seconds=self.cfg.delivery_lease,
            verdict=verdict.action.value, score=verdict.score, explanation=verdict.explanation,
            quarantine_kind=verdict.kind if verdict.action == Action.QUARANTINE else None,
            findings=[(f.symbol, f.score, f.reason) for f in verdict.findings], deliver=verdict.delivers,
            retention_days=policy.retention_days(verdict.kind or "spam") if verdict.action == Action.QUARANTINE
            else None,
        )
        try:
            stored = await asyncio.to_thread(self._store_all, [new])
        except Exception:
            log.exception("commit of outbound %s failed; answering 451", queue_id)
            return REPLY_STORE_FAILED
        self.accepted += 1
        for tid, message_id, rows, stored_data in stored:
            if rows:
                env = DeliveryEnvelope(message_id, tid, mail_from)
                task = asyncio.create_task(self._deliver(env, rows, stored_data, token))
                self._in_flight[task] = (token, rows)
                task.add_done_callback(self._in_flight.pop)
        log.info("accepted outbound %s of tenant %d (%s) from %s <%s> for %d recipient(s), %d bytes, %s: %s",
                 queue_id, tenant_id, submitter.via, peer_ip, mail_from, len(envelope.rcpt_tos), len(raw), signed,
                 verdict.explanation)
        return f"250 2.0.0 Ok: queued as {queue_id}"

    async def _judge_outbound(self, envelope: MailEnvelope, raw: bytes, tenant_id: int) -> tuple[Verdict, CheckContext]:
        """Run the DATA-stage checks that apply to outbound mail and judge it under the sender's outbound policy."""
        ctx = envelope.ctx or CheckContext(cfg=self.cfg, client_ip="127.0.0.1", helo="", mail_from="",
                                           direction="outbound")
        policy = await self._policy(tenant_id)
        ctx.rcpts = list(envelope.rcpt_tos)
        ctx.tenant_ids = [tenant_id]
        ctx.policies = {tenant_id: policy}
        ctx.mail = await asyncio.to_thread(parse_mail, raw)
        await envelope.early_done()
        await run_stage(self.checks, ctx, Stage.DATA)
        return decide_outbound(ctx.findings, tenant_id, policy), ctx

    async def _deliver(
        self, env: DeliveryEnvelope, rows: Sequence[Delivery], data: bytes, token: str,
        hops: dict[str, NextHop] | None = None,
    ) -> None:
        async with self._delivery_slots:
            try:
                await self.deliverer.deliver(env, rows, data, token, hops)
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

    servers = [await loop.create_server(factory, host=cfg.smtp_listen.host, port=cfg.smtp_listen.port,
                                        family=socket.AF_UNSPEC, reuse_address=True)]
    addrs = _addresses(servers[0])
    if cfg.submission_listen is not None:
        servers.append(await loop.create_server(submission_factory, host=cfg.submission_listen.host,
                                                port=cfg.submission_listen.port, family=socket.AF_UNSPEC,
                                                reuse_address=True))
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
