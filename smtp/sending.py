"""The ingress's hooks for mail a tenant sends out: who sends (a relay network on port 25, a login on the submission
listener), MAIL and RCPT within the tenant's limits, and DATA judged under its outbound policy, DKIM-signed,
committed and delivered to the recipients' MX. Who may send as whom is :class:`smtp.submission.Outbound`'s.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from aiosmtpd.smtp import SMTP, Session

from smtp.checks import Check, CheckContext, Stage
from smtp.commit import REPLY_STORE_FAILED, Commit, received_header
from smtp.conform import prepare_for_relay
from smtp.delivery import Envelope as DeliveryEnvelope
from smtp.dkimsign import header_from_domain
from smtp.envelope import peer_ip
from smtp.fastpath import FastPath
from smtp.judge import Judge
from smtp.mailrules import judge_rules
from smtp.mailstore import NewMessage
from smtp.mime import check_limits, summarize_headers
from smtp.pipeline import run_stage
from smtp.ratelimit import REPLY_LIMITED
from smtp.refusals import Refusals
from smtp.routing import REPLY_LOOKUP_FAILED, Routing
from smtp.ruleactions import apply_actions
from smtp.session import IngressSession, IngressSMTP, MailEnvelope, Submitter
from smtp.submission import REPLY_AUTH_REQUIRED, REPLY_SENDER_NOT_ALLOWED, Outbound
from smtp.verdict import Action
from tenants.ids import new_id
from tenants.platform.config import Config
from tenants.policy import Policy, normalize_domain

log = logging.getLogger(__name__)

REPLY_SIGNING_FAILED = "451 4.3.0 Temporary failure while signing, try again later"


class SendingHandler:
    """MAIL, RCPT and DATA of a transaction that belongs to a sending tenant (:class:`~smtp.session.Submitter`)."""

    def __init__(self, cfg: Config, *, outbound: Outbound, routing: Routing, refusals: Refusals, judge: Judge,
                 commit: Commit, fastpath: FastPath, checks: list[Check], redis: Any) -> None:
        self.cfg = cfg
        self.outbound = outbound
        self.routing = routing
        self.refusals = refusals
        self.judge = judge
        self.commit = commit
        self.fastpath = fastpath
        self.checks = checks
        self.redis = redis

    # --- MAIL -----------------------------------------------------------------------------------------------------

    async def submitter(self, server: SMTP, session: Session, address: str) -> Submitter | str | None:
        """Who sends this transaction out: the login's tenant on the submission listener, the relay network's on
        port 25 when the envelope sender is its own; None for inbound mail; or the reply refusing MAIL."""
        if isinstance(server, IngressSMTP) and server.offers_auth:
            return session.auth_data if isinstance(session.auth_data, Submitter) else REPLY_AUTH_REQUIRED
        submitter = await self._relay_submitter(session, peer_ip(session))
        try:  # someone else's mail from a tenant's relay network is inbound, like any client's (see submission)
            if submitter is not None and not await self.outbound.sends_out(submitter, address):
                return None
        except Exception:
            log.exception("outbound sender lookup failed")
            return REPLY_LOOKUP_FAILED
        return submitter

    async def _relay_submitter(self, session: Session, client_ip: str) -> Submitter | None:
        """The tenant whose relay network the client is in, looked up once per connection."""
        if not isinstance(session, IngressSession):
            return None
        if not session.relay_checked:
            try:
                session.submitter = await self.outbound.relay_submitter(client_ip)
            except Exception as exc:
                # Not knowing is not "inbound": unknown recipient domains get 451 instead of 550 meanwhile.
                log.warning("relay networks unavailable (%s: %s); %s is treated as inbound for now",
                            type(exc).__name__, exc, client_ip)
                session.relay_unknown = True
                return None
            session.relay_checked, session.relay_unknown = True, False
            if session.submitter is not None:
                log.info("%s relays for tenant %d (%s)", client_ip, session.submitter.tenant_id, session.submitter.via)
        return session.submitter

    async def mail_from(self, session: Session, submitter: Submitter, address: str) -> Policy | str:
        """MAIL FROM of a sending tenant: its policy, or the reply refusing the sender (a domain not its own; the
        null sender is checked at DATA) or its rate."""
        try:
            policy = await self.routing.policy(submitter.tenant_id)
            refusal = await self._sender_refusal(submitter, address, policy)
        except Exception:
            log.exception("outbound sender lookup failed")
            return REPLY_LOOKUP_FAILED
        if refusal is not None:
            log.info("MAIL FROM <%s> of tenant %d (%s) from %s refused: %s", address, submitter.tenant_id,
                     submitter.via, peer_ip(session), refusal)
            return refusal
        return policy

    async def _sender_refusal(self, submitter: Submitter, address: str, policy: Policy) -> str | None:
        if address != "<>":
            domain = address.rpartition("@")[2]
            if not await self.outbound.may_send_as(submitter, domain):
                return REPLY_SENDER_NOT_ALLOWED.format(domain=normalize_domain(domain))
        if await self.outbound.limiter.check(submitter.tenant_id, address, policy) is not None:
            return REPLY_LIMITED
        return None

    # --- RCPT -----------------------------------------------------------------------------------------------------

    async def rcpt(self, session: Session, envelope: MailEnvelope, submitter: Submitter, address: str,
                   rcpt_options: list[str]) -> str | None:
        """RCPT of a sending tenant: any recipient domain, within its hourly recipient limits. None when the
        transaction turned out inbound (a relay network's bounce to a domain we receive mail for): the caller goes
        on with it as inbound mail."""
        if envelope.mail_from == "<>" and not envelope.rcpt_tos:
            route = await self.routing.recipient_route(address)
            if isinstance(route, str):
                return route
            ctx = envelope.ctx
            if ctx is not None and self.outbound.bounce_is_inbound(submitter, route):
                envelope.submitter = None  # inbound from here on: fresh context, MAIL checks rerun
                envelope.ctx = CheckContext(cfg=self.cfg, client_ip=ctx.client_ip, helo=ctx.helo, mail_from="",
                                            redis=self.redis)
                envelope.early = asyncio.create_task(run_stage(self.checks, envelope.ctx, Stage.MAIL))
                return None
        policy = await self.routing.policy_or_reply(submitter.tenant_id)
        if isinstance(policy, str):
            return policy
        sender = envelope.mail_from if envelope.mail_from and envelope.mail_from != "<>" else ""
        if await self.outbound.limiter.take(submitter.tenant_id, sender or "<>", policy) is not None:
            # A 4xx, but the one a tenant admin must see: a throttled sender may be a compromised account.
            await self.refusals.at_rcpt(session, envelope, submitter.tenant_id, address, REPLY_LIMITED,
                                        retention_days=policy.retention_days("spam"), direction="outbound")
            return REPLY_LIMITED
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    # --- DATA -----------------------------------------------------------------------------------------------------

    async def data(self, server: SMTP, session: Session, envelope: MailEnvelope, submitter: Submitter) -> str:
        """DATA of a sending tenant: check, judge under its outbound policy, sign, commit, deliver to the MX."""
        raw = envelope.original_content or b""
        queue_id = new_id()
        client_ip = peer_ip(session)
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
            return await self.refusals.over_limits(session, envelope, raw, queue_id,
                                                   {tenant_id: list(envelope.rcpt_tos)}, over, direction="outbound")
        try:
            verdict, ctx = await self.judge.outbound(envelope, raw, tenant_id)
        except Exception:
            log.exception("checks of outbound %s failed; answering 451", queue_id)
            return "451 4.3.0 Temporary failure while scanning, try again later"
        if verdict.action == Action.TEMPFAIL:
            log.warning("outbound %s of tenant %d deferred: %s", queue_id, tenant_id, verdict.explanation)
            return "451 4.7.0 Temporary failure: content scan unavailable, try again later"
        if verdict.action == Action.REJECT:
            log.warning("outbound %s of tenant %d (%s) rejected: %s", queue_id, tenant_id, submitter.via,
                        verdict.explanation)
            return await self.refusals.rejected_outbound(session, envelope, raw, queue_id, tenant_id, verdict, ctx)
        received = received_header(self.cfg, session, envelope, queue_id, client_ip,
                                   tls=server._tls_protocol is not None)
        try:
            verdicts, groups = await judge_rules(self.routing, ctx, queue_id, {(tenant_id, None): verdict},
                                                 {(tenant_id, None): list(envelope.rcpt_tos)})
        except Exception:
            log.exception("mail rules of outbound %s failed; answering 451", queue_id)
            return "451 4.3.0 Temporary failure while scanning, try again later"
        if all(v.action == Action.REJECT and not v.discard for v in verdicts.values()):
            first = next(iter(verdicts.values()))
            return await self.refusals.rejected_outbound(session, envelope, raw, queue_id, tenant_id, first, ctx)
        headers = summarize_headers(raw)
        token = secrets.token_hex(8)
        policy = ctx.policies[tenant_id]
        original = received + prepare_for_relay(raw, queue_id)
        new: list[NewMessage] = []
        signed = ""
        for judged, rcpts in groups.items():
            v = verdicts[judged]
            applied = apply_actions(self.cfg, v, original, original, tenant_id=tenant_id, rcpts=rcpts,
                                    admins=lambda: self.commit.admins(tenant_id),
                                    retention_days=policy.retention_days("attachment"))
            try:  # signed after the rules' edits (a disclaimer), so the signature covers what is sent
                data, signed = await self.outbound.sign(tenant_id, applied.data, mail_from)
            except Exception:
                log.exception("DKIM signing of outbound %s (tenant %d) failed; answering 451", queue_id, tenant_id)
                return REPLY_SIGNING_FAILED
            new.append(NewMessage(
                tenant_id=tenant_id, queue_id=queue_id, mail_from=mail_from, rcpts=rcpts, data=data,
                route="mx", direction="outbound", client_ip=client_ip, client_helo=session.host_name,
                header_from=headers.header_from, subject=headers.subject, message_id_header=headers.message_id,
                claim_token=token, lease_seconds=self.cfg.delivery_lease,
                verdict=v.action.value, score=v.score, explanation=v.explanation,
                quarantine_kind=v.kind if v.action == Action.QUARANTINE else None,
                findings=[(f.symbol, f.score, f.reason) for f in v.findings], deliver=v.delivers,
                retention_days=policy.retention_days(v.kind or "spam")
                if v.action in (Action.QUARANTINE, Action.REJECT) else None,
                next_hop=applied.next_hop, events=applied.events,
                verdict_before_rules=v.rules.before if v.rules is not None else None,
            ))
            new.extend(applied.extra)
        try:
            stored = await self.commit.outbound(new, verdicts)
        except Exception:
            log.exception("commit of outbound %s failed; answering 451", queue_id)
            return REPLY_STORE_FAILED
        for tid, message_id, rows, stored_data in stored:
            if rows:
                self.fastpath.start(DeliveryEnvelope(message_id, tid, mail_from), rows, stored_data, token)
        log.info("accepted outbound %s of tenant %d (%s) from %s <%s> for %d recipient(s), %d bytes, %s: %s",
                 queue_id, tenant_id, submitter.via, client_ip, mail_from, len(envelope.rcpt_tos), len(raw), signed,
                 verdict.explanation)
        return f"250 2.0.0 Ok: queued as {queue_id}"
