"""The tracking center: find any message of the scope and tell its story (verdict, findings, deliveries, timeline).
Shared by the API and the consoles; works in the caller's scope (a tenant's, or the MSP's). It writes only the
envelope-level access record (:func:`record_view`).

Refused mail is here too: a recipient refused at RCPT, or a mail refused at DATA, is a message with verdict
``reject``, no stored content, and a ``rejected`` delivery row per recipient whose ``last_reply`` is the reply the
sender got. :func:`reject_reason` names why, in the short stable words the statistics count.

Paging is a keyset on (received_at, id), newest first, with the same opaque cursor as the quarantine: no OFFSET and
no COUNT, so a deep page costs what the first does on a table of millions of rows. Indexes that serve the filters
(migration 0005): (tenant_id, received_at) and (received_at, id) for the order, queue_id, message_id_header,
(client_ip, received_at), and lower(delivery.rcpt) for a recipient. Substring filters (sender, subject) are not
indexable with a b-tree; they only narrow what the ordered index scan returns, so give them a date range.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from tenants.addresses import normalize_address, rcpt_in
from tenants.exceptions import ValidationError
from tenants.mailsort import Order, capped_count
from tenants.models import Blob, Delivery, DeliveryStatus, Event, Finding, Message, MessageView, utcnow
from tenants.scope import load

#: Verdicts a message can carry (smtp.verdict.Action).
VERDICTS: tuple[str, ...] = ("deliver", "tag", "quarantine", "reject")
#: Directions: mail to a tenant, mail from a tenant, and bounces (DSNs) Mailward wrote.
DIRECTIONS: tuple[str, ...] = ("inbound", "outbound", "bounce")
#: Delivery statuses a recipient can be in (filter "any recipient in this status").
STATUSES: tuple[str, ...] = tuple(s.value for s in DeliveryStatus)
#: How the explanation of a recipient refused at RCPT starts (the reply the sender got follows).
REFUSED_AT_RCPT = "refused at RCPT: "
#: Reasons of refusals at RCPT, by a stable part of the reply (first match wins); see :func:`reject_reason`.
RCPT_REASONS: tuple[tuple[str, str], ...] = (
    (" 5.1.1 ", "recipient unknown"),  # RFC 3463 X.1.1: bad destination mailbox address
    ("sender blocked", "blocked sender"),
    ("rate limit", "rate limit"),
)
#: A DNSBL refusal names its zones after this (smtp.server's reply).
DNSBL_MARK = "blocked using "
#: The label smtp.verdict.decide() puts first in a rejected mail's explanation: "reject (spam): ...".
_DECIDED = re.compile(r"^(?:outbound )?reject \((\w+)\)")
#: Page size unless asked otherwise, and the most one page may hold.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: Most rows one CSV export writes (a bigger export asks for a narrower filter).
EXPORT_MAX_ROWS = 100_000
#: A repeated view of the same message by the same person within this window is recorded once.
VIEW_DEDUP = timedelta(minutes=5)
#: Columns of a CSV export, in order.
EXPORT_COLUMNS: tuple[str, ...] = (
    "received_at", "id", "tenant_id", "queue_id", "direction", "client_ip", "mail_from", "header_from", "subject",
    "message_id_header", "size", "verdict", "score", "quarantine_kind", "recipients",
)


@dataclass(frozen=True)
class MessageDetail:
    """One message with everything that explains it; rows are ORM objects of the caller's session."""

    message: Message
    deliveries: list[Delivery]
    findings: list[Finding]
    events: list[Event]
    #: False when no content was kept (refused mail): nothing to show or download.
    has_content: bool = True


@dataclass(frozen=True)
class Step:
    """One line of a message's timeline: when, what kind of step, and what happened, in words."""

    at: datetime
    kind: str
    detail: str
    #: The score a finding added (None for other steps).
    score: float | None = None


@dataclass(frozen=True)
class Filters:
    """A tracking search; every field narrows the result, None (or empty) means any."""

    sender: str | None = None
    rcpt: str | None = None
    subject: str | None = None
    queue_id: str | None = None
    message_id_header: str | None = None
    client_ip: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    verdict: str | None = None
    direction: str | None = None
    status: str | None = None
    #: One tenant (meaningful in the MSP scope; in a tenant's scope another tenant's id matches nothing).
    tenant_id: int | None = None


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _message_id_forms(value: str) -> list[str]:
    """A Message-ID as stored (with angle brackets) and as people paste it (often without)."""
    bare = value.strip().strip("<>").strip()
    return [f"<{bare}>", bare]


def search(session: Session, *, sender: str | None = None, rcpt: str | None = None, subject: str | None = None,
           queue_id: str | None = None, since: datetime | None = None, until: datetime | None = None,
           verdict: str | None = None, direction: str | None = None, after: str | None = None,
           limit: int = DEFAULT_LIMIT, message_id_header: str | None = None, client_ip: str | None = None,
           status: str | None = None, tenant_id: int | None = None) -> tuple[list[Message], str | None]:
    """Messages of the current scope, newest first: (page, cursor of the next page or None).

    ``sender`` matches part of the envelope sender or the From header, ``subject`` part of the subject, ``rcpt`` one
    recipient exactly (any of its delivery rows; with ``status``, that recipient in that status), ``queue_id`` the
    ingress's queue id, ``message_id_header`` the Message-ID (with or without <>), ``client_ip`` the connecting
    address exactly; ``since``/``until`` bound the receipt time (until exclusive). ``after`` is the cursor a previous
    page returned.
    """
    f = Filters(sender=sender, rcpt=rcpt, subject=subject, queue_id=queue_id, message_id_header=message_id_header,
                client_ip=client_ip, since=since, until=until, verdict=verdict, direction=direction, status=status,
                tenant_id=tenant_id)
    return search_page(session, f, after=after, limit=limit)


def search_page(session: Session, f: Filters, *, after: str | None = None, limit: int = DEFAULT_LIMIT,
                order: Order | None = None) -> tuple[list[Message], str | None]:
    """One page of :class:`Filters` results, newest first (or in ``order``), and the next page's cursor (None on
    the last)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"page size {limit}: from 1 to {MAX_LIMIT}")
    order = order or Order()
    found = list(session.scalars(order.apply(_statement(f), after).limit(limit + 1)))
    page = found[:limit]
    more = len(found) > limit
    return page, order.cursor(page[-1]) if more and page else None


def count(session: Session, f: Filters) -> tuple[int, bool]:
    """How many messages a search finds in all its pages, capped (:data:`tenants.mailsort.COUNT_CAP`):
    (count, more than that)."""
    return capped_count(session, _statement(f))


# Complexity (C901) by design: one branch per search filter.
def _statement(f: Filters):  # type: ignore[no-untyped-def]  # noqa: C901
    """The filtered SELECT of messages (no order, no paging); validates the enumerated filters."""
    if f.verdict is not None and f.verdict not in VERDICTS:
        raise ValidationError(f"verdict {f.verdict!r}: use one of {', '.join(VERDICTS)}")
    if f.direction is not None and f.direction not in DIRECTIONS:
        raise ValidationError(f"direction {f.direction!r}: use one of {', '.join(DIRECTIONS)}")
    if f.status is not None and f.status not in STATUSES:
        raise ValidationError(f"delivery status {f.status!r}: use one of {', '.join(STATUSES)}")
    if f.since is not None and f.until is not None and f.until <= f.since:
        raise ValidationError("the end of the date range must be after its start")
    stmt = select(Message)
    if f.tenant_id is not None:
        stmt = stmt.where(Message.tenant_id == f.tenant_id)
    if f.sender:
        stmt = stmt.where(or_(Message.mail_from.ilike(_like(f.sender), escape="\\"),
                              Message.header_from.ilike(_like(f.sender), escape="\\")))
    if f.subject:
        stmt = stmt.where(Message.subject.ilike(_like(f.subject), escape="\\"))
    if f.rcpt or f.status:
        # An IN over the recipient index (lower(rcpt)) rather than a correlated EXISTS probed per message: a rare
        # recipient then costs its own rows, not a walk over every message of the range.
        rows = select(Delivery.message_id)
        if f.rcpt:
            rows = rows.where(rcpt_in(Delivery.rcpt, [normalize_address(f.rcpt)]))
        if f.status:
            rows = rows.where(Delivery.status == f.status)
        if f.tenant_id is not None:
            rows = rows.where(Delivery.tenant_id == f.tenant_id)
        stmt = stmt.where(Message.id.in_(rows))
    if f.queue_id:
        stmt = stmt.where(Message.queue_id == f.queue_id.strip())
    if f.message_id_header:
        stmt = stmt.where(Message.message_id_header.in_(_message_id_forms(f.message_id_header)))
    if f.client_ip:
        stmt = stmt.where(Message.client_ip == f.client_ip.strip())
    if f.since is not None:
        stmt = stmt.where(Message.received_at >= f.since)
    if f.until is not None:
        stmt = stmt.where(Message.received_at < f.until)
    if f.verdict is not None:
        stmt = stmt.where(Message.verdict == f.verdict)
    if f.direction is not None:
        stmt = stmt.where(Message.direction == f.direction)
    return stmt


def recipients(session: Session, message_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    """(recipient, delivery status) of each message, in delivery order: one query for a whole page."""
    out: dict[str, list[tuple[str, str]]] = {}
    if not message_ids:
        return out
    rows = session.execute(select(Delivery.message_id, Delivery.rcpt, Delivery.status)
                           .where(Delivery.message_id.in_(message_ids)).order_by(Delivery.id))
    for message_id, rcpt, status in rows:
        out.setdefault(message_id, []).append((rcpt, status))
    return out


def export_rows(session: Session, f: Filters, *, max_rows: int = EXPORT_MAX_ROWS) -> Iterator[list[str]]:
    """CSV rows (header first) of every message a search finds, newest first, at most ``max_rows``; read page by
    page with the keyset, so memory stays flat however large the export."""
    yield list(EXPORT_COLUMNS)
    left, after = max_rows, None
    while left > 0:
        page, after = search_page(session, f, after=after, limit=min(MAX_LIMIT, left))
        rcpts = recipients(session, [m.id for m in page])
        for m in page:
            yield [m.received_at.isoformat(), m.id, str(m.tenant_id), m.queue_id, m.direction, m.client_ip or "",
                   m.mail_from, m.header_from or "", m.subject or "", m.message_id_header or "", str(m.size),
                   m.verdict, f"{m.score:g}", m.quarantine_kind or "",
                   " ".join(f"{r}:{s}" for r, s in rcpts.get(m.id, []))]
        left -= len(page)
        session.expunge_all()  # a long export must not keep every row it wrote in the identity map
        if after is None:
            return


def detail(session: Session, message_id: str) -> MessageDetail:
    """A message of the current scope with its deliveries, findings (largest effect first) and timeline (oldest
    first); :class:`~tenants.exceptions.NotFound` for an unknown id or another tenant's message."""
    msg = load(session, Message, message_id)
    deliveries = list(session.scalars(select(Delivery).where(Delivery.message_id == msg.id).order_by(Delivery.id)))
    findings = list(session.scalars(select(Finding).where(Finding.message_id == msg.id).order_by(Finding.id)))
    findings.sort(key=lambda f: -abs(f.score))
    events = list(session.scalars(select(Event).where(Event.message_id == msg.id).order_by(Event.at, Event.id)))
    # The blob store is a table today; an object store behind tenants.blobs will need an "exists" of its own.
    stored = session.scalar(select(Blob.id).where(Blob.id == msg.id)) is not None
    return MessageDetail(msg, deliveries, findings, events, has_content=stored)


def timeline(d: MessageDetail) -> list[Step]:
    """The message's story, oldest first: the connection, the receipt, every finding with its score, the verdict
    and its explanation, then every recorded event (delivery attempts with the remote reply, deferrals, bounces,
    releases, deletions, downloads) and where each recipient stands now."""
    m = d.message
    steps = []
    client = m.client_ip or "unknown address"
    helo = f" (HELO {m.client_helo})" if m.client_helo else ""
    steps.append(Step(m.received_at, "connect", f"client {client}{helo}, queue id {m.queue_id}"))
    received = [e for e in d.events if e.kind == "received"]
    later = [e for e in d.events if e.kind not in ("received", "scanned")]
    for e in received:
        steps.append(Step(e.at, e.kind, e.detail))
    for f in d.findings:
        steps.append(Step(m.received_at, "finding", f"{f.symbol}: {f.reason}" if f.reason else f.symbol, f.score))
    verdict = m.verdict + (f" ({m.quarantine_kind})" if m.quarantine_kind else "")
    why = f": {m.explanation}" if m.explanation else ""
    steps.append(Step(m.received_at, "verdict", f"{verdict}, score {m.score:g}{why}"))
    after = [Step(e.at, e.kind, e.detail) for e in later]
    for row in d.deliveries:
        if row.status == DeliveryStatus.REJECTED.value:
            told = f", the sender was told: {row.last_reply}" if row.last_reply else ", the sender was not told"
            after.append(Step(row.updated_at, "status", f"{row.rcpt}: rejected{told}"))
            continue
        reply = f", last reply: {row.last_reply}" if row.last_reply else ""
        after.append(Step(row.updated_at, "status",
                          f"{row.rcpt}: {row.status} after {row.attempts} attempt(s){reply}"))
    # The receipt steps happen in one moment, in the order above; what followed, by time (stable for ties).
    return steps + sorted(after, key=lambda s: s.at)


def record_view(session: Session, msg: Message, user_email: str) -> None:
    """Record that a person opened a message's envelope and timeline (access audit), once per
    :data:`VIEW_DEDUP`; the caller commits."""
    email = user_email.strip().lower()
    recent = session.scalar(select(MessageView.id).where(MessageView.message_id == msg.id,
                                                         MessageView.user_email == email,
                                                         MessageView.at > utcnow() - VIEW_DEDUP).limit(1))
    if recent is None:
        session.add(MessageView(tenant_id=msg.tenant_id, message_id=msg.id, user_email=email))


def count_views(session: Session, message_id: str) -> int:
    """How many access records a message has (for tests and the page's "viewed" note)."""
    return int(session.scalar(select(func.count()).select_from(MessageView)
                              .where(MessageView.message_id == message_id)) or 0)


def reject_reason(explanation: str, *, virus: bool = False) -> str:
    """Why a message was rejected, in short stable words for the "rejected by reason" statistics: "recipient
    unknown", "blocked sender", "DNSBL <zones>", "rate limit" (refused at RCPT), "spam", "virus", "attachment"
    (refused at DATA); ``virus``: the message has a virus finding."""
    if explanation.startswith(REFUSED_AT_RCPT):
        reply = explanation[len(REFUSED_AT_RCPT):]
        if DNSBL_MARK in reply:
            return "DNSBL " + reply.split(DNSBL_MARK, 1)[1].strip()
        lowered = reply.lower()
        return next((reason for mark, reason in RCPT_REASONS if mark in lowered), "refused at RCPT")
    if virus:
        return "virus"
    decided = _DECIDED.match(explanation)
    return decided.group(1) if decided else "rejected"
