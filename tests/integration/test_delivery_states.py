"""The delivery-row state machine (tenants.deliveries): every allowed transition on a real database, illegal ones
refused, lost claims left alone, and release, retry, bounce and delivery going through it from the real callers."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from smtp.delivery import deliver_message
from smtp.mailstore import NewMessage, store_message
from tenants import deliveries
from tenants import quarantine as q
from tenants.deliveries import INITIAL, TRANSITIONS
from tenants.exceptions import IllegalTransition
from tenants.ids import new_id
from tenants.models import Delivery, DeliveryStatus, Event, Message, utcnow
from tenants.platform.config import Config
from tenants.scope import tenant_scope
from tests.support.held import hold
from tests.support.servers import Sink, free_port

S = DeliveryStatus
ROOT = Path(__file__).resolve().parents[2]


def _store(session: Session, tenant_id: int, *, token: str | None = None, held: bool = False,
           rcpt: str = "bob@acme.test") -> str:
    """One message stored the way the ingress stores it; born queued, claimed by ``token``, or held."""
    msg = store_message(session, NewMessage(
        tenant_id=tenant_id, queue_id=new_id(), mail_from="s@sender.example", rcpts=[rcpt],
        data=b"From: s@sender.example\r\nSubject: states\r\n\r\nhello\r\n", claim_token=token, lease_seconds=60,
        deliver=not held, quarantine_kind="spam" if held else None,
    ))
    session.commit()
    return msg.id


def _row(session: Session, message_id: str) -> Delivery:
    session.expire_all()
    return session.scalars(select(Delivery).where(Delivery.message_id == message_id)).one()


def _set(session: Session, message_id: str, **values: object) -> None:
    """Test setup only: move a row's clock (due times, leases, age)."""
    session.execute(update(Delivery).where(Delivery.message_id == message_id).values(**values))
    session.commit()


# --- one performer per allowed transition: set a row up in the "from" status, move it, return it -------------------

def _claim_queued(session: Session, cfg: Config, tid: int) -> Delivery:
    mid = _store(session, tid)
    assert _row(session, mid).status == S.QUEUED
    assert [r.rcpt for r in deliveries.claim_due(session, mid, "t1", 60)] == ["bob@acme.test"]
    row = _row(session, mid)
    assert row.claim_token == "t1" and row.lease_until is not None and row.lease_until > utcnow()
    return row


def _claim_deferred(session: Session, cfg: Config, tid: int) -> Delivery:
    mid = _store(session, tid, token="t0")
    assert deliveries.deferred(session, _row(session, mid), "t0", reply="451 4.3.0 busy",
                               retry_at=utcnow() + timedelta(hours=1))
    session.commit()
    assert deliveries.claim_due(session, mid, "t1", 60) == []  # not due yet
    _set(session, mid, next_attempt_at=utcnow() - timedelta(seconds=1))
    assert len(deliveries.claim_due(session, mid, "t1", 60)) == 1
    return _row(session, mid)


def _take_over(session: Session, cfg: Config, tid: int) -> Delivery:
    mid = _store(session, tid, token="t0")
    assert deliveries.claim_due(session, mid, "t1", 60) == []  # the lease still holds
    _set(session, mid, lease_until=utcnow() - timedelta(seconds=1))
    assert len(deliveries.claim_due(session, mid, "t1", 60)) == 1
    row = _row(session, mid)
    assert row.claim_token == "t1"
    return row


def _deliver(session: Session, cfg: Config, tid: int) -> Delivery:
    mid = _store(session, tid, token="t0")
    out = deliveries.record_attempt(session, cfg, _row(session, mid), "t0", ok=True, permanent=False,
                                    reply="250 2.0.0 Ok")
    session.commit()
    assert out == deliveries.Outcome(S.DELIVERED, 1)
    row = _row(session, mid)
    assert row.delivered_at is not None and row.claim_token is None and row.last_reply == "250 2.0.0 Ok"
    return row


def _defer(session: Session, cfg: Config, tid: int) -> Delivery:
    mid = _store(session, tid, token="t0")
    before = utcnow()
    out = deliveries.record_attempt(session, cfg, _row(session, mid), "t0", ok=False, permanent=False,
                                    reply="451 4.4.1 refused")
    session.commit()
    delay = deliveries.retry_delay(cfg, 1)
    assert out == deliveries.Outcome(S.DEFERRED, 1, delay=delay)
    row = _row(session, mid)
    assert row.next_attempt_at >= before + timedelta(seconds=delay) and row.attempts == 1
    assert row.claim_token is None and row.lease_until is None
    return row


def _bounce(session: Session, cfg: Config, tid: int) -> Delivery:
    mid = _store(session, tid, token="t0")
    out = deliveries.record_attempt(session, cfg, _row(session, mid), "t0", ok=False, permanent=True,
                                    reply="550 5.1.1 no such user")
    session.commit()
    assert out == deliveries.Outcome(S.BOUNCED, 1)
    return _row(session, mid)


def _give_back(session: Session, cfg: Config, tid: int) -> Delivery:
    mid = _store(session, tid, token="t0")
    deliveries.release_claim(session, "t0", [_row(session, mid)])
    row = _row(session, mid)
    assert row.claim_token is None and row.lease_until is None and row.attempts == 0
    return row


def _flush(session: Session, cfg: Config, tid: int) -> Delivery:
    mid = _store(session, tid, token="t0")
    deliveries.deferred(session, _row(session, mid), "t0", reply="451 busy", retry_at=utcnow() + timedelta(hours=1))
    session.commit()
    assert deliveries.flush(session) == 1
    session.commit()
    row = _row(session, mid)
    assert row.next_attempt_at <= utcnow()
    return row


def _release(session: Session, cfg: Config, tid: int) -> Delivery:
    mid = _store(session, tid, held=True)
    _set(session, mid, created_at=utcnow() - timedelta(days=6))
    assert [r.rcpt for r in deliveries.release_held(session, [_row(session, mid)])] == ["bob@acme.test"]
    session.commit()
    row = _row(session, mid)
    assert row.created_at > utcnow() - timedelta(minutes=1)  # the queue lifetime counts from the release
    return row


def _discard(session: Session, cfg: Config, tid: int) -> Delivery:
    mid = _store(session, tid, held=True)
    assert len(deliveries.discard_held(session, [_row(session, mid)])) == 1
    session.commit()
    return _row(session, mid)


PERFORMERS: dict[tuple[DeliveryStatus, DeliveryStatus], Callable[[Session, Config, int], Delivery]] = {
    (S.QUEUED, S.DELIVERING): _claim_queued,
    (S.DEFERRED, S.DELIVERING): _claim_deferred,
    (S.DELIVERING, S.DELIVERING): _take_over,
    (S.DELIVERING, S.DELIVERED): _deliver,
    (S.DELIVERING, S.DEFERRED): _defer,
    (S.DELIVERING, S.BOUNCED): _bounce,
    (S.DELIVERING, S.QUEUED): _give_back,
    (S.DEFERRED, S.DEFERRED): _flush,
    (S.QUARANTINED, S.QUEUED): _release,
    (S.QUARANTINED, S.DISCARDED): _discard,
}


def test_every_allowed_transition_has_a_test() -> None:
    assert set(PERFORMERS) == set(TRANSITIONS)


@pytest.mark.parametrize("move", list(PERFORMERS), ids=lambda m: f"{m[0].value}-{m[1].value}")
def test_allowed_transition(move, cfg, factory, session) -> None:
    acme = factory.tenant("Acme", ("acme.test",))
    with tenant_scope(acme.id):
        row = PERFORMERS[move](session, cfg, acme.id)
    assert row.status == move[1].value


def test_the_table_agrees_with_the_model() -> None:
    """Final statuses have no way out, and every status is born or reached."""
    for status in S:
        outgoing = [to for frm, to in TRANSITIONS if frm == status]
        assert (outgoing == []) == status.is_final, status
        assert status in INITIAL or any(to == status for _, to in TRANSITIONS), status


@pytest.mark.parametrize("frm,to", [(f, t) for f in S for t in S if (f, t) not in TRANSITIONS],
                         ids=lambda s: s.value)
def test_illegal_transition_refused(frm, to) -> None:
    with pytest.raises(IllegalTransition, match=f"{frm.value} → {to.value} is not an allowed"):
        deliveries.require(frm, to)


def test_illegal_move_of_a_real_row_is_refused_and_writes_nothing(cfg, factory, session) -> None:
    acme = factory.tenant("Acme", ("acme.test",))
    with tenant_scope(acme.id):
        row = _deliver(session, cfg, acme.id)
        with pytest.raises(IllegalTransition, match=r"delivery \d+ \(bob@acme.test\): delivered → queued .*none"):
            deliveries.release_held(session, [row])
        with pytest.raises(IllegalTransition, match="delivered → bounced"):
            deliveries.bounced(session, row, "t0", reply="550 late")
        session.rollback()
        held = _row(session, _store(session, acme.id, held=True))
        with pytest.raises(IllegalTransition, match="quarantined → queued is not giving a claim back"):
            deliveries.release_claim(session, "t0", [held])  # a claim given back is not a release
        msg = session.get(Message, held.message_id)
        assert msg is not None
        with pytest.raises(IllegalTransition, match="cannot be created delivered"):
            deliveries.create(session, msg, "x@acme.test", S.DELIVERED, route="transport")
        with pytest.raises(IllegalTransition, match="created claimed"):
            deliveries.create(session, msg, "x@acme.test", S.DELIVERING, route="transport")
        session.rollback()
        assert _row(session, row.message_id).status == S.DELIVERED
        assert _row(session, held.message_id).status == S.QUARANTINED


def test_a_lost_claim_is_left_alone(cfg, factory, session) -> None:
    """A process whose lease ran out and was taken over records nothing over the new owner's claim."""
    acme = factory.tenant("Acme", ("acme.test",))
    with tenant_scope(acme.id):
        stale = _row(session, mid := _store(session, acme.id, token="old"))
        _set(session, mid, lease_until=utcnow() - timedelta(seconds=1))
        assert len(deliveries.claim_due(session, mid, "new", 60)) == 1
        assert deliveries.record_attempt(session, cfg, stale, "old", ok=True, permanent=False, reply="250") is None
        session.commit()
        row = _row(session, mid)
    assert (row.status, row.claim_token, row.attempts) == (S.DELIVERING, "new", 0)


def test_queue_lifetime_over_bounces_a_temporary_failure(cfg, factory, session) -> None:
    acme = factory.tenant("Acme", ("acme.test",))
    with tenant_scope(acme.id):
        mid = _store(session, acme.id, token="t0")
        _set(session, mid, created_at=utcnow() - timedelta(seconds=cfg.queue_lifetime + 1))
        out = deliveries.record_attempt(session, cfg, _row(session, mid), "t0", ok=False, permanent=False,
                                        reply="451 4.4.1 still down")
        session.commit()
    assert out == deliveries.Outcome(S.BOUNCED, 1, expired=True)


# --- the real callers go through the module -------------------------------------------------------------------------

def test_release_then_delivery(cfg, factory, session, sink) -> None:
    """A quarantine release queues the rows due now (tenants.quarantine → release_held); the worker's delivery
    claims and delivers them (claim_due → record_attempt)."""
    acme = factory.tenant("Acme", ("acme.test",), transport_port=sink.port)
    mid = hold(cfg, acme.id)
    with tenant_scope(acme.id):
        q.release(session, cfg, mid, actor="test")
        session.commit()
        assert _row(session, mid).status == S.QUEUED
        with pytest.raises(Exception, match="no longer in the quarantine"):
            q.release(session, cfg, mid, actor="test")  # the row left "quarantined": nothing moves twice
        session.rollback()
    assert deliver_message(cfg, acme.id, mid) == 1
    assert [m.rcpts for m in sink.wait_count(1)] == [["bob@acme.test"]]
    with tenant_scope(acme.id):
        row = _row(session, mid)
        assert (row.status, row.attempts) == (S.DELIVERED, 1)
        assert session.scalars(select(Event.kind).where(Event.message_id == mid).order_by(Event.id)).all()[-2:] == [
            "released", "delivered"]


def test_delete_discards(cfg, factory, session) -> None:
    acme = factory.tenant("Acme", ("acme.test",))
    mid = hold(cfg, acme.id)
    with tenant_scope(acme.id):
        assert q.delete(session, mid, actor="test") == ("bob@acme.test",)
        session.commit()
        assert _row(session, mid).status == S.DISCARDED
    assert deliver_message(cfg, acme.id, mid) == 0  # a discarded row is never claimed


def test_retry_then_bounce_through_the_worker_delivery(cfg, factory, session) -> None:
    """Nothing listening: the row is deferred with the first retry delay; once the next hop refuses for good it
    bounces and a DSN is queued to the sender."""
    port = free_port()
    acme = factory.tenant("Acme", ("acme.test",), transport_port=port)
    with tenant_scope(acme.id):
        mid = _store(session, acme.id)
    assert deliver_message(cfg, acme.id, mid) == 1
    with tenant_scope(acme.id):
        row = _row(session, mid)
        assert (row.status, row.attempts) == (S.DEFERRED, 1)
        assert row.next_attempt_at > utcnow() + timedelta(seconds=deliveries.retry_delay(cfg, 1) - 60)
    assert deliver_message(cfg, acme.id, mid) == 0  # not due yet
    refusing = Sink(port)
    refusing.handler.rcpt_reply["bob@acme.test"] = "550 5.1.1 No such user here"
    refusing.start()
    try:
        with tenant_scope(acme.id):
            _set(session, mid, next_attempt_at=utcnow() - timedelta(seconds=1))
        assert deliver_message(cfg, acme.id, mid) == 1
    finally:
        refusing.stop()
    with tenant_scope(acme.id):
        row = _row(session, mid)
        assert (row.status, row.attempts) == (S.BOUNCED, 2)
        assert row.last_reply is not None and row.last_reply.startswith("550 5.1.1")
        assert session.scalar(select(Message.id).where(Message.direction == "bounce")) is not None


#: A row created, updated, or given a status by keyword or by attribute (``self.status`` of other classes aside).
WRITES = re.compile(r"update\(Delivery\)|(?<![\w.])Delivery\(|\bstatus=DeliveryStatus|(?<!self)\.status\s*=(?!=)")


def test_no_other_module_writes_a_delivery_row() -> None:
    """The one owner: no production module but tenants/deliveries.py creates a row or updates one."""
    offenders = []
    for package in ("tenants", "smtp", "worker", "app", "mailward"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() in ("tenants/deliveries.py", "tenants/models.py"):
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if WRITES.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
