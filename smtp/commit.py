"""The durable commit of accepted mail: what is stored for each tenant, written in one transaction.

A ``250`` to DATA is sent only after the message, its blob, one delivery row per recipient, the findings and the
tracking events are committed together (:func:`one_transaction`). If the commit fails the client gets
:data:`REPLY_STORE_FAILED` and sends again; nothing was accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import partial
from typing import Any, TypeVar

from aiosmtpd.smtp import Envelope, Session
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from smtp.checks import CheckContext
from smtp.mailstore import NewMessage, add_rejected_rows, store_message
from smtp.mime import prefix_subject, summarize_headers
from smtp.ruleactions import apply_actions
from smtp.verdict import Action, Verdict, header_block, subject_tag
from tenants import metrics
from tenants.mailrules.service import count_hits
from tenants.models import Delivery, DeliveryStatus, Role, User
from tenants.platform.config import Config
from tenants.platform.jobs import request_delivery_after_commit
from tenants.policy import Policy
from tenants.scope import msp_scope, tenant_scope

REPLY_STORE_FAILED = "451 4.3.0 Temporary storage failure, try again later"

#: What a recipient is judged as: its tenant, and its user's own list decision (None: the tenant's verdict).
Judged = tuple[int, str | None]
#: What the commit stored for one tenant: (tenant id, message id, the rows claimed for the fast path, the bytes).
Stored = tuple[int, str, list[Delivery], bytes]

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


def received_header(cfg: Config, session: Session, envelope: Envelope, queue_id: str, peer_ip: str, *,
                    tls: bool) -> bytes:
    """Our ``Received:`` trace header (RFC 5321 4.4, with RFC 3848's protocol names)."""
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
        f"Received: from {helo} ([{peer_ip}])\r\n\tby {cfg.hostname} (Mailward) with {proto} "
        f"id {queue_id}{for_clause};\r\n\t{when}\r\n"
    ).encode("utf-8", "replace")


class Commit:
    """Stores accepted mail, one message per tenant, in one transaction off the event loop, and counts the mails
    accepted. Raises when the commit fails (the caller answers :data:`REPLY_STORE_FAILED`)."""

    def __init__(self, cfg: Config, sessions: sessionmaker[DbSession], redis: Any = None) -> None:
        self.cfg = cfg
        self.sessions = sessions
        #: Mails committed since the process started (the cluster view shows it).
        self.accepted = 0
        #: Where the cluster's mail counts go after each commit (:mod:`tenants.metrics`); None: this process only.
        self.redis = redis
        #: Mail-count writes still running (held here so that none is collected mid-flight).
        self._counting: set[asyncio.Task[None]] = set()

    async def inbound(
        self, queue_id: str, mail_from: str, groups: dict[Judged, list[str]], received: bytes, content: bytes,
        verdicts: dict[Judged, Verdict], ctx: CheckContext, peer_ip: str, helo: str | None, token: str,
    ) -> list[Stored]:
        """Store an inbound mail under each recipient group's verdict; rows to deliver are born claimed by
        ``token`` for the fast path."""
        stored = await self._committed(asyncio.to_thread(self._inbound, queue_id, mail_from, groups, received,
                                                         content, verdicts, ctx, peer_ip, helo, token))
        self._count("inbound", [verdicts[judged].action.value for judged in groups])
        self._count_hits(verdicts)
        return stored

    def _count_hits(self, verdicts: dict[Judged, Verdict]) -> None:
        """Count the matched rules in Redis from a task of its own (the rules page shows the hits)."""
        hits: dict[int, list[int]] = {}
        for (tenant_id, _), verdict in verdicts.items():
            if verdict.rules is not None:
                hits.setdefault(tenant_id, []).extend(r.id for r in verdict.rules.outcome.matched)
        if hits and self.redis is not None:
            self._background(count_hits(self.redis, hits))

    async def outbound(self, new: list[NewMessage], verdicts: dict[Judged, Verdict]) -> list[Stored]:
        """Store a sending tenant's signed mail (one message per group its rules made, and what the rules add)."""
        stored = await self._committed(asyncio.to_thread(self.store_all, new))
        self._count("outbound", [v.action.value for v in verdicts.values()])
        self._count_hits(verdicts)
        return stored

    async def _committed(self, commit: Awaitable[list[Stored]]) -> list[Stored]:
        """Await the commit; a failure is counted as a database error and raised (the caller answers 451)."""
        try:
            stored = await commit
        except Exception:
            metrics.store_error("database", "commit")
            raise
        self.accepted += 1
        return stored

    def _count(self, direction: str, verdicts: list[str]) -> None:
        """Count a committed mail here, and in Redis from a task of its own: the 250 never waits for it."""
        counts = metrics.count_accepted(direction, verdicts)
        if self.redis is not None:
            self._background(metrics.count_in_redis(self.redis, counts))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._counting.add(task)
        task.add_done_callback(self._counting.discard)

    def _inbound(
        self, queue_id: str, mail_from: str, groups: dict[Judged, list[str]], received: bytes, content: bytes,
        verdicts: dict[Judged, Verdict], ctx: CheckContext, peer_ip: str, helo: str | None, token: str,
    ) -> list[Stored]:
        assert ctx.mail is not None
        headers = summarize_headers(content)
        new = []
        for (tenant_id, outcome), rcpts in groups.items():
            verdict = verdicts[(tenant_id, outcome)]
            policy = ctx.policies[tenant_id]
            applied = apply_actions(
                self.cfg, verdict, self._tenant_content(received, content, verdict, ctx, policy), received + content,
                tenant_id=tenant_id, rcpts=rcpts, admins=partial(self.admins, tenant_id),
                retention_days=policy.retention_days("attachment"))
            new.append(NewMessage(
                tenant_id=tenant_id, queue_id=queue_id, mail_from=mail_from, rcpts=rcpts, data=applied.data,
                client_ip=peer_ip, client_helo=helo, header_from=headers.header_from,
                subject=headers.subject, message_id_header=headers.message_id,
                claim_token=token, lease_seconds=self.cfg.delivery_lease,
                verdict=verdict.action.value, score=verdict.score, explanation=verdict.explanation,
                quarantine_kind=verdict.kind if verdict.action == Action.QUARANTINE else None,
                findings=[(f.symbol, f.score, f.reason) for f in verdict.findings],
                deliver=verdict.delivers,
                # A rejected share (this tenant refused, another accepted) is purged like quarantined mail.
                retention_days=policy.retention_days(verdict.kind or "spam")
                if verdict.action in (Action.QUARANTINE, Action.REJECT) else None,
                next_hop=applied.next_hop, events=applied.events,
                verdict_before_rules=verdict.rules.before if verdict.rules is not None else None,
            ))
            new.extend(applied.extra)
        return self.store_all(new)

    def _tenant_content(
        self, received: bytes, content: bytes, verdict: Verdict, ctx: CheckContext, policy: Policy
    ) -> bytes:
        """What is stored (and later delivered) for one tenant: our trace and result headers on top, subject tagged."""
        data = received + header_block(verdict, self.cfg.hostname, ctx.add_headers) + content
        if verdict.action == Action.TAG and policy.subject_prefix:
            data = prefix_subject(data, subject_tag(policy.subject_prefix))  # one line, RFC 2047: no injection
        return data

    def admins(self, tenant_id: int) -> list[str]:
        """The tenant's active admins' addresses (a rule notifies them)."""
        with tenant_scope(tenant_id):
            session = self.sessions()
            try:
                return list(session.scalars(select(User.email).where(
                    User.tenant_id == tenant_id, User.role == Role.TENANT_ADMIN.value, User.active.is_(True))))
            finally:
                session.close()

    def store_all(self, new: list[NewMessage]) -> list[Stored]:
        """Store one message per tenant in one transaction; (tenant, message id, claimed rows, bytes) of each."""
        def work(session: DbSession) -> list[Stored]:
            out = []
            for item in new:
                with tenant_scope(item.tenant_id):
                    msg = store_message(session, item)
                    if item.verdict == Action.REJECT.value:
                        add_rejected_rows(session, msg, item)
                    elif item.claim_token is None and item.deliver:  # a rule's copy or notification
                        request_delivery_after_commit(session, self.cfg, item.tenant_id, msg.id)
                    session.flush()
                # Only rows claimed for the fast path; quarantined rows wait for a release.
                claimed = [d for d in msg.deliveries if d.status == DeliveryStatus.DELIVERING.value]
                out.append((item.tenant_id, msg.id, claimed, item.data))
            return out

        return one_transaction(self.sessions, work)
