"""The one owner of a delivery row's state: the statuses a row is created in, every move between statuses, and the
queries that find rows due. Nothing else writes ``Delivery.status``.

A delivery row is one recipient of one message (:class:`~tenants.models.Delivery`). Its statuses
(:class:`~tenants.models.DeliveryStatus`) form a small state machine, written down as data in :data:`INITIAL` and
:data:`TRANSITIONS`::

    queued ─claim─▶ delivering ─▶ delivered | deferred | bounced      deferred ─claim─▶ delivering
    delivering ─lease over─▶ delivering (taken over)                    delivering ─give back─▶ queued
    quarantined ─release─▶ queued                                       quarantined ─delete─▶ discarded
    deferred ─flush─▶ deferred (due now)                                rejected: final from birth

Each move is one conditional UPDATE whose WHERE clause names the status the row must still be in (and, for a claimed
row, its claim token), so of two processes racing for a row only one moves it; the other's UPDATE matches nothing and
the row is reported as not moved. Asking for a move the table does not allow (from the status the caller read) is a
bug: it raises :class:`~tenants.exceptions.IllegalTransition` before anything is written.

Functions work in the caller's scope and session; only the claim functions commit (a claim must be visible to other
processes before the attempt starts), and they say so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from tenants import metrics
from tenants.exceptions import IllegalTransition
from tenants.models import Delivery, DeliveryStatus, Message, utcnow
from tenants.platform.config import Config

log = logging.getLogger(__name__)

S = DeliveryStatus

#: Longest reply text kept on a delivery row.
REPLY_MAX = 2000

#: The statuses a row may be created in, and what each means at birth.
INITIAL: dict[DeliveryStatus, str] = {
    S.QUEUED: "accepted; the worker delivers it",
    S.DELIVERING: "accepted and claimed at once by the ingress's fast path",
    S.QUARANTINED: "held in the quarantine until a release or a delete",
    S.REJECTED: "refused (at RCPT, at DATA, or by one tenant of a mail others accepted); final from birth",
}

#: Every allowed move of a row: (from, to) → what it is. A pair not here never happens.
TRANSITIONS: dict[tuple[DeliveryStatus, DeliveryStatus], str] = {
    (S.QUEUED, S.DELIVERING): "claimed for its first attempt",
    (S.DEFERRED, S.DELIVERING): "claimed for a retry",
    (S.DELIVERING, S.DELIVERING): "a claim whose lease ran out (its process crashed or hangs), taken over",
    (S.DELIVERING, S.DELIVERED): "the next hop accepted it",
    (S.DELIVERING, S.DEFERRED): "a temporary failure: tried again at next_attempt_at",
    (S.DELIVERING, S.BOUNCED): "a permanent failure, or the queue lifetime is over: a DSN goes to the sender",
    (S.DELIVERING, S.QUEUED): "the claim given back untried (the process is stopping)",
    (S.DEFERRED, S.DEFERRED): "made due now (queue flush)",
    (S.QUARANTINED, S.QUEUED): "released from the quarantine, due now",
    (S.QUARANTINED, S.DISCARDED): "deleted from the quarantine; never delivered",
}


def allowed(frm: DeliveryStatus, to: DeliveryStatus) -> bool:
    return (frm, to) in TRANSITIONS


def require(frm: DeliveryStatus | str, to: DeliveryStatus, what: str = "a delivery row") -> None:
    """Raise :class:`IllegalTransition` unless ``frm`` → ``to`` is in :data:`TRANSITIONS`."""
    frm = S(frm)
    if not allowed(frm, to):
        nexts = ", ".join(sorted(t.value for f, t in TRANSITIONS if f == frm)) or "none: it is final"
        raise IllegalTransition(f"{what}: {frm.value} → {to.value} is not an allowed delivery transition "
                                f"(from {frm.value}: {nexts})")


def _sources(to: DeliveryStatus) -> tuple[DeliveryStatus, ...]:
    """The statuses :data:`TRANSITIONS` allows to move to ``to``."""
    return tuple(f for f, t in TRANSITIONS if t == to)


def _check_rows(rows: Iterable[Delivery], frm: Sequence[DeliveryStatus], to: DeliveryStatus,
                move: str) -> list[Delivery]:
    """The rows, once each one's status (as the caller read it) may make this ``move`` to ``to``."""
    out = list(rows)
    for row in out:
        what = f"delivery {row.id} ({row.rcpt})"
        require(row.status, to, what)
        if S(row.status) not in frm:
            raise IllegalTransition(f"{what}: {row.status} → {to.value} is not {move} (which moves "
                                    f"{' or '.join(f.value for f in frm)} rows)")
    return out


def _move(session: Session, to: DeliveryStatus, frm: Sequence[DeliveryStatus], where: Sequence[ColumnElement[bool]],
          values: dict[str, Any]) -> int:
    """One conditional UPDATE of the rows still in ``frm`` that match ``where``; how many moved."""
    for f in frm:
        require(f, to)
    done = session.execute(
        update(Delivery).where(Delivery.status.in_([f.value for f in frm]), *where)
        .values(status=to.value, **values).execution_options(synchronize_session=False)
    )
    return int(done.rowcount)  # type: ignore[attr-defined]


# --- birth ----------------------------------------------------------------------------------------------------------

def create(session: Session, msg: Message, rcpt: str, status: DeliveryStatus, *, route: str,
           now: datetime | None = None, claim_token: str | None = None, lease_seconds: int = 0,
           last_reply: str | None = None, next_hop: str | None = None) -> Delivery:
    """Add a new row for ``rcpt`` of ``msg`` in one of the :data:`INITIAL` statuses (no flush). A row is born
    ``delivering`` exactly when it is born claimed (``claim_token``, held for ``lease_seconds``)."""
    if status not in INITIAL:
        raise IllegalTransition(f"a delivery row cannot be created {status.value} (only "
                                f"{', '.join(s.value for s in INITIAL)})")
    if (status == S.DELIVERING) != (claim_token is not None):
        raise IllegalTransition("a delivery row is created delivering exactly when it is created claimed")
    now = now or utcnow()
    row = Delivery(tenant_id=msg.tenant_id, message=msg, rcpt=rcpt, route=route, status=status.value,
                   claim_token=claim_token, next_hop=next_hop,
                   lease_until=now + timedelta(seconds=lease_seconds) if claim_token is not None else None,
                   last_reply=last_reply[:REPLY_MAX] if last_reply is not None else None,
                   next_attempt_at=now, created_at=now, updated_at=now)
    session.add(row)
    return row


# --- claims ---------------------------------------------------------------------------------------------------------

def due_condition(now: datetime) -> ColumnElement[bool]:
    """Rows an attempt may claim now: waiting ones whose next attempt time has come, and claimed ones whose lease ran
    out (taken over)."""
    waiting = [s.value for s in _sources(S.DELIVERING) if s != S.DELIVERING]
    return or_(
        and_(Delivery.status.in_(waiting), Delivery.next_attempt_at <= now),
        and_(Delivery.status == S.DELIVERING.value, Delivery.lease_until < now),
    )


def claim_due(session: Session, message_id: str, token: str, lease_seconds: int) -> list[Delivery]:
    """Claim every due row of one message for ``token`` (queued, deferred, or delivering past its lease) and
    **commit**; returns the rows now held. One UPDATE: of two processes racing, one gets each row."""
    now = utcnow()
    session.execute(
        update(Delivery).where(Delivery.message_id == message_id, due_condition(now))
        .values(status=S.DELIVERING.value, claim_token=token, lease_until=now + timedelta(seconds=lease_seconds),
                updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return list(session.scalars(select(Delivery).where(Delivery.message_id == message_id,
                                                       Delivery.claim_token == token,
                                                       Delivery.status == S.DELIVERING.value)))


def due_messages(session: Session, limit: int = 1000) -> list[tuple[int, str]]:
    """(tenant id, message id) of messages with a row due now; the caller runs in the MSP scope."""
    rows = session.execute(
        select(Delivery.tenant_id, Delivery.message_id).where(due_condition(utcnow()))
        .group_by(Delivery.tenant_id, Delivery.message_id).limit(limit)
    )
    return [(int(t), str(m)) for t, m in rows]


def release_claim(session: Session, token: str, rows: Iterable[Delivery]) -> None:
    """Give claimed rows back to the queue untried (the process is stopping before it could try them) and
    **commit**. Rows whose claim ``token`` no longer holds are left alone."""
    ids = [r.id for r in _check_rows(rows, (S.DELIVERING,), S.QUEUED, "giving a claim back")]
    if ids:
        _move(session, S.QUEUED, (S.DELIVERING,), [Delivery.id.in_(ids), Delivery.claim_token == token],
              dict(claim_token=None, lease_until=None))
        session.commit()


def flush(session: Session) -> int:
    """Make every deferred row of the scope due now (``mailward queue flush``); how many."""
    return _move(session, S.DEFERRED, (S.DEFERRED,), [], dict(next_attempt_at=utcnow()))


# --- outcomes of an attempt -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """Where one attempt left a row."""

    status: DeliveryStatus
    attempts: int
    #: Seconds until the next attempt (deferred only).
    delay: int | None = None
    #: A temporary failure that bounced because the queue lifetime is over.
    expired: bool = False


def retry_delay(cfg: Config, attempts: int) -> int:
    """Seconds before the next attempt after ``attempts`` failed ones (``MAILWARD_RETRY_SCHEDULE``)."""
    schedule = cfg.retry_schedule
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


def _finish(session: Session, row: Delivery, token: str, to: DeliveryStatus, reply: str,
            values: dict[str, Any], now: datetime) -> bool:
    """Move a row claimed by ``token`` out of ``delivering`` after an attempt; False if the claim was lost."""
    _check_rows([row], (S.DELIVERING,), to, "the outcome of an attempt")
    moved = _move(session, to, (S.DELIVERING,), [Delivery.id == row.id, Delivery.claim_token == token],
                  dict(attempts=row.attempts + 1, last_reply=reply[:REPLY_MAX], updated_at=now, claim_token=None,
                       lease_until=None, **values))
    return moved == 1


def delivered(session: Session, row: Delivery, token: str, *, reply: str, now: datetime | None = None) -> bool:
    """The next hop accepted the row: ``delivering`` → ``delivered``. False if ``token`` lost the claim."""
    now = now or utcnow()
    return _finish(session, row, token, S.DELIVERED, reply, dict(delivered_at=now), now)


def deferred(session: Session, row: Delivery, token: str, *, reply: str, retry_at: datetime,
             now: datetime | None = None) -> bool:
    """A temporary failure: ``delivering`` → ``deferred``, due again at ``retry_at``. False if the claim was lost."""
    return _finish(session, row, token, S.DEFERRED, reply, dict(next_attempt_at=retry_at), now or utcnow())


def bounced(session: Session, row: Delivery, token: str, *, reply: str, now: datetime | None = None) -> bool:
    """A permanent failure or the end of the queue lifetime: ``delivering`` → ``bounced`` (the caller queues the
    DSN). False if the claim was lost."""
    return _finish(session, row, token, S.BOUNCED, reply, {}, now or utcnow())


def record_attempt(session: Session, cfg: Config, row: Delivery, token: str, *, ok: bool, permanent: bool,
                   reply: str, now: datetime | None = None) -> Outcome | None:
    """Move a claimed row after one attempt: delivered; bounced on a permanent failure or once the queue lifetime
    (counted from the row's creation or release) is over; else deferred by :func:`retry_delay`. None when ``token``
    lost the claim (another process took it over): the row is left alone. Counted in
    ``mailward_delivery_attempts_total{result}`` (the caller's commit follows)."""
    out = _outcome(session, cfg, row, token, ok=ok, permanent=permanent, reply=reply, now=now or utcnow())
    metrics.DELIVERY_ATTEMPTS.labels(out.status.value if out is not None else "claim_lost").inc()
    return out


def _outcome(session: Session, cfg: Config, row: Delivery, token: str, *, ok: bool, permanent: bool,
             reply: str, now: datetime) -> Outcome | None:
    attempts = row.attempts + 1
    if ok:
        return Outcome(S.DELIVERED, attempts) if delivered(session, row, token, reply=reply, now=now) else None
    expired = not permanent and now - row.created_at >= timedelta(seconds=cfg.queue_lifetime)
    if permanent or expired:
        return Outcome(S.BOUNCED, attempts, expired=expired) if bounced(session, row, token, reply=reply,
                                                                           now=now) else None
    delay = retry_delay(cfg, attempts)
    moved = deferred(session, row, token, reply=reply, retry_at=now + timedelta(seconds=delay), now=now)
    return Outcome(S.DEFERRED, attempts, delay=delay) if moved else None


# --- the quarantine -------------------------------------------------------------------------------------------------

def _from_held(session: Session, rows: Iterable[Delivery], to: DeliveryStatus,
               values: dict[str, Any]) -> list[Delivery]:
    """Move held rows with one conditional UPDATE each (a row another click moved first is skipped); the moved ones,
    expired in the session so that they read their new state."""
    moved = [row for row in _check_rows(rows, (S.QUARANTINED,), to, "a quarantine action")
             if _move(session, to, (S.QUARANTINED,), [Delivery.id == row.id], values) == 1]
    for row in moved:
        session.expire(row)
    return moved


def release_held(session: Session, rows: Iterable[Delivery]) -> list[Delivery]:
    """Release held rows: ``quarantined`` → ``queued``, due now; the rows moved. The queue lifetime counts from the
    release, not from the mail's arrival days ago."""
    now = utcnow()
    return _from_held(session, rows, S.QUEUED, dict(updated_at=now, next_attempt_at=now, created_at=now,
                                                    claim_token=None, lease_until=None))


def discard_held(session: Session, rows: Iterable[Delivery]) -> list[Delivery]:
    """Delete held rows from the quarantine: ``quarantined`` → ``discarded`` (never delivered); the rows moved."""
    return _from_held(session, rows, S.DISCARDED, dict(updated_at=utcnow()))
