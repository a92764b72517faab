"""Records of the mail the ingress refuses, for the tracking center and the statistics, written before the reply.

A recipient refused at RCPT for a known tenant, and a mail refused at DATA, become a message with verdict ``reject``,
no content, a ``rejected`` delivery row per recipient carrying the exact reply, and a ``rejected`` event
(:func:`smtp.mailstore.store_refusal`). A refusal needs no durability: if recording fails or is slow, the reply is the
same and the failure is logged.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import Session
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from smtp.checks import CheckContext
from smtp.commit import Judged, one_transaction
from smtp.envelope import peer_ip
from smtp.mailstore import Refused, store_refusal
from smtp.mime import OverLimits, summarize_headers
from smtp.routing import Routing
from smtp.session import IngressSession, MailEnvelope
from smtp.verdict import Verdict
from tenants.scope import tenant_scope
from tenants.tracking import REFUSED_AT_RCPT

log = logging.getLogger(__name__)

#: Refused recipients recorded per connection: enough for a tenant to see why a partner's mail bounced; a dictionary
#: attack (hundreds of guesses on one connection) then costs one log line, not hundreds of rows.
RCPT_REFUSALS_RECORDED = 20
#: Seconds a refusal's reply waits for its record in the tracking center; past that the reply goes and the write
#: finishes (or fails, logged) on its own. A dead database must not hold every refused client.
RECORD_TIMEOUT = 5.0


def rejected_reply(verdict: Verdict, *, outbound: bool = False) -> str:
    """The 554 to a mail whose verdict is reject, saying why in general terms."""
    if verdict.kind == "virus":
        return f"554 5.7.1 Message rejected: virus found ({verdict.explanation[:200]})"
    if verdict.kind == "rule":
        return f"554 5.7.1 {verdict.reply or 'Message rejected by policy'}"
    if outbound:
        return "554 5.7.1 Message rejected: unsafe content"
    return "554 5.7.1 Message rejected as spam" + (" or unsafe content" if verdict.kind == "attachment" else "")


def _sender(envelope: MailEnvelope) -> str:
    return "" if envelope.mail_from in (None, "<>") else str(envelope.mail_from)


def _log_record_failure(work: asyncio.Future[None], what: str) -> None:
    """Log why recording a refusal failed (the reply is the same either way)."""
    if work.cancelled():
        log.warning("recording the %s was cancelled", what)
    elif work.exception() is not None:
        log.error("could not record the %s; the reply is unchanged", what, exc_info=work.exception())


class Refusals:
    """Builds and records refusals for the ingress's hooks."""

    def __init__(self, sessions: sessionmaker[DbSession], routing: Routing) -> None:
        self.sessions = sessions
        self.routing = routing

    async def at_rcpt(self, session: Session, envelope: MailEnvelope, tenant_id: int, rcpt: str, reply: str, *,
                      retention_days: int, direction: str = "inbound") -> None:
        """Record a recipient refused at RCPT (a small message with no subject and no size), up to
        :data:`RCPT_REFUSALS_RECORDED` per connection."""
        if isinstance(session, IngressSession):  # always, from the ingress's own server classes
            session.rcpt_refusals += 1
        count = session.rcpt_refusals if isinstance(session, IngressSession) else 1
        if count <= RCPT_REFUSALS_RECORDED:
            await self.record([Refused(
                tenant_id=tenant_id, rcpts=[rcpt], reply=reply, stage="RCPT", mail_from=_sender(envelope),
                client_ip=peer_ip(session), client_helo=session.host_name, direction=direction,
                route="transport" if direction == "inbound" else "mx", retention_days=retention_days,
                explanation=REFUSED_AT_RCPT + reply)])
        elif count == RCPT_REFUSALS_RECORDED + 1:
            log.warning("%s refused more than %d recipients on one connection (a dictionary attack?); recording "
                        "no more of them", peer_ip(session), RCPT_REFUSALS_RECORDED)

    async def rejected_inbound(self, session: Session, raw: bytes, queue_id: str, verdicts: dict[Judged, Verdict],
                               groups: dict[Judged, list[str]], ctx: CheckContext) -> str:
        """Record an inbound mail every recipient rejects (once per recipient group) and return the reply."""
        first = next(iter(verdicts.values()))
        log.info("%s from %s rejected: %s", queue_id, peer_ip(session), first.explanation)
        reply = rejected_reply(first)
        headers = summarize_headers(raw)
        await self.record([
            Refused(tenant_id=tid, rcpts=rcpts, reply=reply, stage="DATA", mail_from=ctx.mail_from,
                    client_ip=peer_ip(session), client_helo=session.host_name, queue_id=queue_id, size=len(raw),
                    header_from=headers.header_from, subject=headers.subject,
                    message_id_header=headers.message_id, score=verdicts[(tid, outcome)].score,
                    explanation=verdicts[(tid, outcome)].explanation,
                    findings=[(f.symbol, f.score, f.reason) for f in verdicts[(tid, outcome)].findings],
                    retention_days=ctx.policies[tid].retention_days(verdicts[(tid, outcome)].kind or "spam"))
            for (tid, outcome), rcpts in groups.items()
        ])
        return reply

    async def rejected_outbound(self, session: Session, envelope: MailEnvelope, raw: bytes, queue_id: str,
                                tenant_id: int, verdict: Verdict, ctx: CheckContext) -> str:
        """Record a sending tenant's mail its outbound policy rejects and return the reply."""
        reply = rejected_reply(verdict, outbound=True)
        headers = summarize_headers(raw)
        await self.record([Refused(
            tenant_id=tenant_id, rcpts=list(envelope.rcpt_tos), reply=reply, stage="DATA",
            mail_from=_sender(envelope), client_ip=peer_ip(session), client_helo=session.host_name,
            queue_id=queue_id, direction="outbound", route="mx", size=len(raw), header_from=headers.header_from,
            subject=headers.subject, message_id_header=headers.message_id, score=verdict.score,
            explanation=verdict.explanation, findings=[(f.symbol, f.score, f.reason) for f in verdict.findings],
            retention_days=ctx.policies[tenant_id].retention_days(verdict.kind or "spam"),
        )])
        return reply

    async def over_limits(self, session: Session, envelope: MailEnvelope, raw: bytes, queue_id: str,
                          by_tenant: dict[int, list[str]], over: OverLimits, *, direction: str = "inbound") -> str:
        """554 5.6.0 to a mail whose MIME structure is over the limits (nothing parsed it), recorded per tenant like
        any refusal at DATA."""
        client_ip = peer_ip(session)
        log.warning("%s from %s refused: over the MIME limits (%s)", queue_id, client_ip, over.why)
        refused = []
        for tid, rcpts in by_tenant.items():
            try:
                policy = await self.routing.policy(tid)
            except Exception:
                log.exception("policy lookup failed; the refusal of %s is not recorded for tenant %d", queue_id, tid)
                continue
            finding = over.finding(policy)
            refused.append(Refused(
                tenant_id=tid, rcpts=rcpts, reply=over.reply, stage="DATA", mail_from=_sender(envelope),
                client_ip=client_ip, client_helo=session.host_name, queue_id=queue_id, direction=direction,
                route="transport" if direction == "inbound" else "mx", size=len(raw),
                header_from=over.headers.header_from, subject=over.headers.subject,
                message_id_header=over.headers.message_id, score=finding[1], explanation=over.explanation,
                findings=[finding], retention_days=policy.retention_days("attachment")))
        if refused:
            await self.record(refused)
        return over.reply

    async def record(self, refused: list[Refused]) -> None:
        """Record refusals before their reply goes, off the event loop. A refusal needs no durability: a failure is
        logged, and a write slower than :data:`RECORD_TIMEOUT` goes on without the reply waiting for it."""
        work = asyncio.ensure_future(asyncio.to_thread(self._store, refused))
        done, _ = await asyncio.wait({work}, timeout=RECORD_TIMEOUT)
        what = f"refusal of {', '.join(r for item in refused for r in item.rcpts)} ({refused[0].reply})"
        if not done:
            log.warning("recording the %s takes longer than %gs; replying without waiting", what, RECORD_TIMEOUT)
            work.add_done_callback(lambda w: _log_record_failure(w, what))
            return
        _log_record_failure(work, what)

    def _store(self, refused: list[Refused]) -> None:
        """Store refusals (one message per tenant) in one transaction."""
        def work(session: DbSession) -> None:
            for item in refused:
                with tenant_scope(item.tenant_id):
                    store_refusal(session, item)
                    session.flush()

        one_transaction(self.sessions, work)
