"""Delivery: retries through the worker, bounces (RFC 3464), expiry, atomic claims, the queue commands."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import smtplib
from email.policy import default as default_policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select, update

from smtp.delivery import Deliverer
from smtp.mailstore import NewMessage, claim_due, store_message
from smtp.server import IngressHandler, IngressSMTP
from tenants.models import Delivery, Event, Message
from tenants.policy import DomainRoute, Policy
from tenants.scope import msp_scope, tenant_scope
from tests.integration.test_ingress import client, make_mail
from tests.support.servers import Process, Sink, free_port, run_cli, wait_for


@pytest.fixture
def processes(env, tmp_path: Path):
    """Ingress, worker and scheduler as real processes."""
    procs = [Process([name], env, tmp_path / f"{name}.log").start() for name in ("smtp", "worker", "scheduler")]
    from tests.integration.test_ingress import _connectable, smtp_port

    wait_for(lambda: _connectable(smtp_port(env)), 20, what="ingress")
    yield {p.args[0]: p for p in procs}
    for p in procs:
        p.stop()


def statuses(session) -> list[str]:
    session.rollback()
    with msp_scope():
        return session.scalars(select(Delivery.status).order_by(Delivery.id)).all()


def test_downstream_down_mail_waits_then_arrives(env, processes, factory, session):
    port = free_port()
    factory.tenant("Acme", ("acme.test",), transport_port=port)  # nothing listens there yet
    with client(env) as c:
        assert c.sendmail("a@sender.example", ["bob@acme.test"], make_mail("bob@acme.test", "waiting")) == {}
    wait_for(lambda: statuses(session) == ["deferred"], 20, what="deferred row")

    def deferred_listing() -> str | None:
        # The worker retries every second or two: a listing taken while it holds the row shows it delivering.
        listing = run_cli(["queue", "list"], env)
        assert listing.returncode == 0, listing.stderr
        return listing.stdout if "deferred" in listing.stdout else None

    shown = wait_for(deferred_listing, 30, interval=0.2, what="the deferred row in the queue listing")
    assert "bob@acme.test" in shown
    assert "Connection refused" in shown or "4.4.1" in shown
    sink = Sink(port).start()
    try:
        got = sink.wait_count(1, timeout=30)
        assert b"Subject: waiting" in got[0].data
        wait_for(lambda: statuses(session) == ["delivered"], 10, what="delivered row")
    finally:
        sink.stop()
    assert "queue is empty" in run_cli(["queue", "list"], env).stdout
    with msp_scope():
        kinds = session.scalars(select(Event.kind).order_by(Event.id)).all()
    assert kinds[0] == "received" and kinds[-1] == "delivered" and "deferred" in kinds


def test_permanent_failure_bounces_to_sender_with_rfc3464_report(env, tmp_path, factory, session, sink):
    relay = Sink().start()
    try:
        e = dict(env, MAILWARD_RELAYHOST=f"127.0.0.1:{relay.port}")
        procs = [Process([n], e, tmp_path / f"{n}.log").start() for n in ("smtp", "worker", "scheduler")]
        try:
            factory.tenant("Acme", ("acme.test",), transport_port=sink.port)
            sink.handler.rcpt_reply["gone@acme.test"] = "550 5.1.1 No such user here"
            from tests.integration.test_ingress import _connectable, smtp_port

            wait_for(lambda: _connectable(smtp_port(env)), 20, what="ingress")
            with client(env) as c:
                c.sendmail("alice@sender.example", ["gone@acme.test", "bob@acme.test"],
                           make_mail("gone@acme.test", "Important"))
            assert [m.rcpts for m in sink.wait_count(1)] == [["bob@acme.test"]]
            bounce = relay.wait_count(1)[0]
        finally:
            for p in procs:
                p.stop()
    finally:
        relay.stop()
    assert bounce.mail_from == "<>" and bounce.rcpts == ["alice@sender.example"]
    report = email.message_from_bytes(bounce.data, policy=default_policy)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = [p.get_content_type() for p in report.iter_parts()]
    assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = bounce.data.decode()
    assert "Final-Recipient: rfc822; gone@acme.test" in status
    assert "Action: failed" in status and "Status: 5.1.1" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1 No such user here" in status
    assert "Subject: Important" in status  # the original headers come back
    assert "bob@acme.test" not in status.split("Final-Recipient", 1)[1].split("\r\n\r\n")[0]
    assert statuses(session)[:2] == ["bounced", "delivered"]


def test_null_sender_never_gets_a_bounce(cfg, factory, session):
    acme = factory.tenant("Acme", ("acme.test",), transport_port=free_port())
    refuse = Sink().start()
    refuse.handler.reply = "554 5.7.1 Rejected"
    try:
        with tenant_scope(acme.id):
            from tenants.models import Domain

            d = session.scalars(select(Domain)).one()
            d.transport_port = refuse.port
            msg = store_message(session, NewMessage(tenant_id=acme.id, queue_id="Q", mail_from="",
                                                    rcpts=["bob@acme.test"], data=make_mail("bob@acme.test")))
            session.commit()
        from smtp.delivery import deliver_message

        assert deliver_message(cfg, acme.id, msg.id) == 1
    finally:
        refuse.stop()
    with msp_scope():
        session.expire_all()
        kinds = session.scalars(select(Event.kind).order_by(Event.id)).all()
        assert kinds == ["received", "bounced", "dsn_suppressed"]
        assert session.scalar(select(Message.id).where(Message.direction == "bounce")) is None


def test_queue_lifetime_expiry_bounces(cfg, factory, session):
    relay = Sink().start()
    try:
        c = dataclasses.replace(cfg, queue_lifetime=1, relayhost=_hp(relay.port))
        acme = factory.tenant("Acme", ("acme.test",), transport_port=free_port())  # never answers
        with tenant_scope(acme.id):
            msg = store_message(session, NewMessage(tenant_id=acme.id, queue_id="Q", mail_from="s@sender.example",
                                                    rcpts=["bob@acme.test"], data=make_mail("bob@acme.test")))
            session.commit()
        from smtp.delivery import deliver_message

        deliver_message(c, acme.id, msg.id)
        assert statuses(session) == ["deferred"]  # first failure: still young
        import time

        time.sleep(1.2)
        with tenant_scope(acme.id):
            session.execute(update(Delivery).values(next_attempt_at=Delivery.created_at))
            session.commit()
        deliver_message(c, acme.id, msg.id)
        st = statuses(session)
        assert st[0] == "bounced"
        with msp_scope():
            bounce_id = session.scalar(select(Message.id).where(Message.direction == "bounce"))
        assert bounce_id
        deliver_message(c, acme.id, bounce_id)
        dsn = relay.wait_count(1)[0]
    finally:
        relay.stop()
    assert b"Action: failed" in dsn.data and b"Final-Recipient: rfc822; bob@acme.test" in dsn.data


def _hp(port: int):
    from tenants.platform.config import HostPort

    return HostPort("127.0.0.1", port)


def test_claim_is_atomic_across_sessions(cfg, factory, session):
    """Two processes racing for the same due rows: exactly one gets them."""
    from tenants.platform.db import session_factory

    acme = factory.tenant("Acme", ("acme.test",))
    with tenant_scope(acme.id):
        msg = store_message(session, NewMessage(tenant_id=acme.id, queue_id="Q", mail_from="s@sender.example",
                                                rcpts=["a@acme.test", "b@acme.test"], data=b"Subject: x\r\n\r\n"))
        session.commit()
        other = session_factory(cfg)()
        try:
            first = claim_due(session, msg.id, "tok-one", 60)
            second = claim_due(other, msg.id, "tok-two", 60)
        finally:
            other.close()
    assert sorted(d.rcpt for d in first) == ["a@acme.test", "b@acme.test"]
    assert second == []


def test_store_down_answers_451_and_never_250(cfg, factory):
    """With the database gone after the domain cache was warm, DATA must tempfail: no 250 without a commit."""
    acme = factory.tenant("Acme", ("acme.test",))
    dead = dataclasses.replace(cfg, database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/none")

    async def scenario() -> tuple[int, bytes]:
        handler = IngressHandler(dead, Deliverer(dead))
        handler.cache.routes["acme.test"] = DomainRoute("acme.test", 1, acme.id, "127.0.0.1", 25, "none")
        handler.cache.policies[acme.id] = Policy()
        port = free_port()

        class _C(Controller):
            def factory(self):
                return IngressSMTP(self.handler, hostname="mx.mailward.test")

        ctl = _C(handler, hostname="127.0.0.1", port=port)
        ctl.start()
        try:
            def send() -> tuple[int, bytes]:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
                    c.ehlo()
                    c.mail("a@sender.example")
                    assert c.rcpt("bob@acme.test")[0] == 250
                    code2, reply2 = c.rcpt("new@uncached.test")  # needs the database: tempfail, not 550
                    assert code2 == 451, reply2
                    return c.data(make_mail("bob@acme.test"))

            return await asyncio.to_thread(send)
        finally:
            ctl.stop()

    code, reply = asyncio.run(scenario())
    assert code == 451 and reply.startswith(b"4.3.0")


def test_queue_flush_retries_deferred_now(env, cfg, factory, session, tmp_path):
    port = free_port()
    acme = factory.tenant("Acme", ("acme.test",), transport_port=port)
    with tenant_scope(acme.id):
        msg = store_message(session, NewMessage(tenant_id=acme.id, queue_id="Q", mail_from="s@sender.example",
                                                rcpts=["bob@acme.test"], data=make_mail("bob@acme.test")))
        session.commit()
    from smtp.delivery import deliver_message

    deliver_message(cfg, acme.id, msg.id)  # refused: deferred with the first retry delay
    assert statuses(session) == ["deferred"]
    sink = Sink(port).start()
    worker = Process(["worker"], env, tmp_path / "worker.log").start()
    try:
        r = run_cli(["queue", "flush"], env)
        assert r.returncode == 0 and r.stdout.startswith("1 delivery job")
        sink.wait_count(1, 30)
    finally:
        worker.stop()
        sink.stop()
