"""The mail store in the database: store accepted and refused mail, record the outcomes of delivery attempts, bounce.

The database is the truth. A row is delivered only by the process holding its claim (``claim_token`` with a lease);
a claim is taken with one conditional UPDATE, which is atomic on SQLite and on PostgreSQL alike (PostgreSQL re-checks
the WHERE clause on the row it locked), so two processes never deliver the same row. The window in which a crash can
cause a duplicate is between the next hop's 250 and the single UPDATE that records it. Every status a row is born in
and every move of it is :mod:`tenants.deliveries`'s; this module adds the message, its blob, findings, events and DSNs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.orm import Session

from smtp.dsn import build_dsn
from smtp.outbound import RcptResult
from smtp.verdict import Action
from tenants import deliveries
from tenants.blobs import blob_store
from tenants.deliveries import claim_due as claim_due  # re-exported: claims are tenants.deliveries'
from tenants.ids import new_id
from tenants.models import Delivery, DeliveryStatus, Event, Finding, Message, utcnow
from tenants.platform.config import Config
from tenants.scope import load

log = logging.getLogger(__name__)


@dataclass
class NewMessage:
    """What the ingress (or a bounce) hands to :func:`store_message` for one tenant."""

    tenant_id: int
    queue_id: str
    mail_from: str
    rcpts: Sequence[str]
    data: bytes
    route: str = "transport"
    direction: str = "inbound"
    client_ip: str | None = None
    client_helo: str | None = None
    header_from: str | None = None
    subject: str | None = None
    message_id_header: str | None = None
    verdict: str = "deliver"
    score: float = 0.0
    explanation: str = ""
    quarantine_kind: str | None = None
    #: (symbol, score, reason) of every finding under the tenant's policy.
    findings: Sequence[tuple[str, float, str]] = ()
    #: False for mail that is quarantined (rows held as ``quarantined``) or dropped (no rows).
    deliver: bool = True
    #: Days a quarantined mail is kept (sets ``expires_at``).
    retention_days: int | None = None
    #: If set, the rows are written already claimed by this token (the ingress delivers them itself at once).
    claim_token: str | None = None
    lease_seconds: int = 0
    #: ``host|port|tls`` when a mail rule rerouted the recipients (:mod:`smtp.ruleactions`).
    next_hop: str | None = None
    #: The checks' verdict when a mail rule's final action changed it.
    verdict_before_rules: str | None = None
    #: More (kind, detail) timeline events, e.g. the mail rules that matched.
    events: Sequence[tuple[str, str]] = ()


def store_message(session: Session, new: NewMessage) -> Message:
    """Add message, blob, one delivery row per recipient and the 'received' event to the session (no commit)."""
    now = utcnow()
    msg = Message(
        id=new_id(), tenant_id=new.tenant_id, queue_id=new.queue_id, direction=new.direction, received_at=now,
        client_ip=new.client_ip, client_helo=new.client_helo, mail_from=new.mail_from,
        header_from=_clip(new.header_from), subject=_clip(new.subject), message_id_header=_clip(new.message_id_header),
        size=len(new.data), verdict=new.verdict, verdict_before_rules=new.verdict_before_rules, score=new.score,
        explanation=new.explanation,
        quarantine_kind=new.quarantine_kind, deliveries=[], findings=[],  # known empty: no lazy load later
        expires_at=now + timedelta(days=new.retention_days) if new.retention_days is not None else None,
    )
    session.add(msg)
    blob_store.put(session, msg.id, new.tenant_id, new.data)
    for symbol, score, reason in new.findings:
        session.add(Finding(tenant_id=new.tenant_id, message=msg, symbol=symbol, score=score, reason=reason))
    held = not new.deliver and new.quarantine_kind is not None
    claimed = new.claim_token is not None and new.deliver
    if claimed:
        status = DeliveryStatus.DELIVERING
    elif held:
        status = DeliveryStatus.QUARANTINED
    else:
        status = DeliveryStatus.QUEUED
    for rcpt in new.rcpts if new.deliver or held else ():
        deliveries.create(session, msg, rcpt, status, route=new.route, now=now,
                          claim_token=new.claim_token if claimed else None, lease_seconds=new.lease_seconds,
                          next_hop=new.next_hop)
    rcpt_list = ", ".join(new.rcpts)
    sender = new.mail_from or "<>"
    session.add(Event(tenant_id=new.tenant_id, message=msg, at=now, kind="received",
                      detail=f"from {sender} to {rcpt_list} ({len(new.data)} bytes)"))
    if new.explanation and new.direction in ("inbound", "outbound"):
        session.add(Event(tenant_id=new.tenant_id, message=msg, at=now, kind="scanned", detail=new.explanation))
    for kind, detail in new.events:
        session.add(Event(tenant_id=new.tenant_id, message=msg, at=now, kind=kind, detail=detail))
    return msg


def _clip(value: str | None, limit: int = 998) -> str | None:
    return value[:limit] if value else value


@dataclass(frozen=True)
class Refused:
    """A refusal to record for one tenant: the envelope, the verdict and the exact reply the sender got. Its content
    is not kept: we refuse to store mail we did not accept."""

    tenant_id: int
    rcpts: Sequence[str]
    reply: str
    #: The SMTP stage that refused: "RCPT" or "DATA".
    stage: str
    mail_from: str
    client_ip: str | None
    client_helo: str | None
    #: Days the record is kept before the purge job removes it (the tenant's spam retention).
    retention_days: int
    explanation: str
    queue_id: str = field(default_factory=new_id)
    direction: str = "inbound"
    route: str = "transport"
    size: int = 0
    header_from: str | None = None
    subject: str | None = None
    message_id_header: str | None = None
    score: float = 0.0
    #: (symbol, score, reason) of every finding under the tenant's policy.
    findings: Sequence[tuple[str, float, str]] = ()


def store_refusal(session: Session, r: Refused) -> Message:
    """Add a refused message, its findings, one ``rejected`` delivery row per recipient (its reply kept) and the
    ``rejected`` event to the session (no blob, no commit). A refusal at DATA also gets the usual receipt events."""
    now = utcnow()
    msg = Message(
        id=new_id(), tenant_id=r.tenant_id, queue_id=r.queue_id, direction=r.direction, received_at=now,
        client_ip=r.client_ip, client_helo=r.client_helo, mail_from=r.mail_from, header_from=_clip(r.header_from),
        subject=_clip(r.subject), message_id_header=_clip(r.message_id_header), size=r.size,
        verdict=Action.REJECT.value, score=r.score, explanation=r.explanation, quarantine_kind=None,
        expires_at=now + timedelta(days=r.retention_days), deliveries=[], findings=[],
    )
    session.add(msg)
    for symbol, score, reason in r.findings:
        session.add(Finding(tenant_id=r.tenant_id, message=msg, symbol=symbol, score=score, reason=reason))
    for rcpt in r.rcpts:
        deliveries.create(session, msg, rcpt, DeliveryStatus.REJECTED, route=r.route, now=now, last_reply=r.reply)
    rcpts = ", ".join(r.rcpts)
    if r.stage == "DATA":
        session.add(Event(tenant_id=r.tenant_id, message=msg, at=now, kind="received",
                          detail=f"from {r.mail_from or '<>'} to {rcpts} ({r.size} bytes, not kept)"))
        if r.explanation:
            session.add(Event(tenant_id=r.tenant_id, message=msg, at=now, kind="scanned", detail=r.explanation))
    session.add(Event(tenant_id=r.tenant_id, message=msg, at=now, kind="rejected",
                      detail=f"refused at {r.stage} for {rcpts}: {r.reply}"))
    return msg


def add_rejected_rows(session: Session, msg: Message, item: NewMessage) -> None:
    """Rows for the recipients a tenant rejected in a mail that another tenant accepted: the sender got 250 for the
    transaction, so no reply carried this refusal (``last_reply`` stays empty)."""
    now = utcnow()
    for rcpt in item.rcpts:
        deliveries.create(session, msg, rcpt, DeliveryStatus.REJECTED, route=item.route, now=now)
    session.add(Event(tenant_id=item.tenant_id, message=msg, at=now, kind="rejected",
                      detail=f"not delivered to {', '.join(item.rcpts)}: rejected under this tenant's policy; the "
                             "mail was accepted for other recipients, so the sender was not told"))


def record_results(
    session: Session, cfg: Config, token: str, rows: Iterable[Delivery], results: dict[str, RcptResult], host: str = ""
) -> None:
    """Move each claimed row by its attempt's outcome (:func:`tenants.deliveries.record_attempt`), add its event, queue
    the DSNs of bounced rows, and commit. A row whose claim was lost to another process is left alone."""
    now = utcnow()
    bounced: dict[str, list[tuple[str, RcptResult]]] = {}
    for row in rows:
        res = results.get(row.rcpt) or RcptResult(451, "4.3.0 no reply recorded")
        via = f" via {host}" if host else ""
        reply = f"{res.code} {res.reply}".strip()
        out = deliveries.record_attempt(session, cfg, row, token, ok=res.ok, permanent=res.permanent, reply=reply,
                                        now=now)
        if out is None:
            log.warning("delivery %s: claim lost before its outcome (%s) was recorded", row.id, reply)
            continue
        kind = out.status.value
        if out.status == DeliveryStatus.DELIVERED:
            detail = f"to {row.rcpt}{via}: {reply}"
        elif out.status == DeliveryStatus.BOUNCED:
            detail = f"to {row.rcpt}{via}: " + (f"queue lifetime over, last reply: {reply}" if out.expired else reply)
            bounced.setdefault(row.message_id, []).append((row.rcpt, res))
        else:
            detail = f"to {row.rcpt}{via}: {reply}; next attempt in {out.delay}s"
        session.add(Event(tenant_id=row.tenant_id, message_id=row.message_id, delivery_id=row.id, at=now,
                          kind=kind, detail=detail))
    for message_id, failures in bounced.items():
        _queue_bounce(session, cfg, message_id, failures)
    session.commit()


def _queue_bounce(session: Session, cfg: Config, message_id: str, failures: list[tuple[str, RcptResult]]) -> None:
    """Queue a DSN to the original sender in the current transaction; never to the null sender."""
    msg = load(session, Message, message_id)
    if not msg.mail_from:
        session.add(Event(tenant_id=msg.tenant_id, message_id=msg.id, kind="dsn_suppressed",
                          detail="null sender: no bounce is sent"))
        return
    original = blob_store.get(session, msg.id)
    dsn = build_dsn(cfg, msg, original, failures)
    bounce = store_message(session, NewMessage(
        tenant_id=msg.tenant_id, queue_id=new_id(), mail_from="", rcpts=[msg.mail_from], data=dsn, route="mx",
        direction="bounce", subject="Undelivered Mail Returned to Sender", header_from=cfg.bounce_sender,
        explanation=f"delivery status notification for {msg.id}",
    ))
    session.add(Event(tenant_id=msg.tenant_id, message_id=msg.id, kind="dsn_queued",
                      detail=f"bounce {bounce.id} to {msg.mail_from}"))
