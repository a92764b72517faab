"""Durability under crash: SIGKILL the ingress (and, in a second run, the worker) while mail flows.

Every mail that got a 250 must arrive at the real downstream server. A duplicate may only come from a kill between
the downstream's 250 and our record of it (one small UPDATE); each duplicate must have a kill within
``DUPLICATE_WINDOW`` seconds after its first arrival, or the test fails. The counts are printed for the notes.
"""

from __future__ import annotations

import itertools
import random
import smtplib
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import pytest
from sqlalchemy import select

from tenants.models import PENDING_STATUSES, Delivery
from tenants.scope import msp_scope
from tests.integration.test_ingress import _connectable, smtp_port
from tests.support.servers import Process, wait_for

pytestmark = pytest.mark.slow

#: Seconds after a first arrival within which a kill explains a duplicate (the record is one UPDATE, but a loaded
#: SQLite or a busy 2-core machine can delay it).
DUPLICATE_WINDOW = 3.0
#: Mails that must get a 250 in the ingress test for its count of lost ones to mean anything.
ENOUGH_ACCEPTED = 100


def _mail(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "load@sender.example"
    msg["To"] = "bob@acme.test"
    msg["Subject"] = f"crash test {n}"
    msg["Message-ID"] = f"<crash-{n}@sender.example>"
    msg.set_content(f"mail number {n}\n" + "x" * 2000)
    return msg.as_bytes(policy=SMTP_POLICY)


def _send_one(port: int, n: int) -> str | None:
    """Send mail n once (no retry: a client retry could itself duplicate); its Message-ID if it got a 250."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
            c.sendmail("load@sender.example", ["bob@acme.test"], _mail(n))
        return f"<crash-{n}@sender.example>"
    except (smtplib.SMTPException, OSError):
        return None


def _pending(session) -> int:
    session.rollback()
    with msp_scope():
        return len(session.scalars(select(Delivery.id).where(
            Delivery.status.in_([s.value for s in PENDING_STATUSES]))).all())


def _check(sink, accepted: set[str], kills: list[float], label: str) -> None:
    received = sink.messages
    counts = Counter(m.message_id for m in received)
    missing = accepted - set(counts)
    dups = {mid: n for mid, n in counts.items() if n > 1}
    unexplained = []
    for mid in dups:
        first = min(m.at for m in received if m.message_id == mid)
        if not any(first - 0.5 <= k <= first + DUPLICATE_WINDOW for k in kills):
            unexplained.append(mid)
    print(f"\n[{label}] accepted(250)={len(accepted)} arrived={len(counts)} missing={len(missing)} "
          f"duplicates={sum(n - 1 for n in dups.values())} unexplained_duplicates={len(unexplained)} "
          f"kills={len(kills)}")
    assert not missing, f"mails that got a 250 never arrived: {sorted(missing)[:10]}"
    assert not unexplained, f"duplicates with no kill in the window: {unexplained}"


def test_ingress_sigkill_loses_no_accepted_mail(env, tmp_path: Path, factory, sink, session):
    factory.tenant("Acme", ("acme.test",), transport_port=sink.port)
    port = smtp_port(env)
    log = tmp_path / "smtp.log"
    ingress = Process(["smtp"], env, log).start()
    helpers = [Process([n], env, tmp_path / f"{n}.log").start() for n in ("worker", "scheduler")]
    wait_for(lambda: _connectable(port), 20, what="ingress")
    kills: list[float] = []
    done = threading.Event()

    numbers = itertools.count()
    results: list[str | None] = []

    def sender() -> None:
        # Send until the killer is done; while the ingress is down, wait a little instead of burning numbers.
        while not done.is_set():
            r = _send_one(port, next(numbers))
            results.append(r)
            if r is None:
                time.sleep(0.1)

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(sender) for _ in range(16)]
        try:
            rnd = random.Random(7)
            # Five kills at least, and more until enough mail got a 250 to tell anything: a loaded machine accepts
            # fewer mails between two kills (the count is what the test needs, not a speed).
            deadline = time.monotonic() + 300
            while len(kills) < 5 or (sum(1 for r in list(results) if r) < ENOUGH_ACCEPTED
                                     and time.monotonic() < deadline):
                time.sleep(rnd.uniform(2.0, 3.5))
                ingress.kill()
                kills.append(time.monotonic())
                ingress = Process(["smtp"], env, log).start()
                wait_for(lambda: _connectable(port), 20, what="ingress restart")
            time.sleep(1.0)
        finally:
            done.set()
        for f in futures:
            f.result()
    accepted = {r for r in results if r}
    try:
        assert len(kills) >= 3, "the load ended before the ingress was killed several times"
        assert len(accepted) >= ENOUGH_ACCEPTED, "too few mails accepted to tell anything"
        sink.wait_count(len(accepted), timeout=90)
        wait_for(lambda: _pending(session) == 0, 60, what="empty queue")
        time.sleep(1)  # a late duplicate would land now
    finally:
        ingress.stop()
        for p in helpers:
            p.stop()
    _check(sink, accepted, kills, "ingress kill")


def test_worker_sigkill_loses_no_accepted_mail(env, tmp_path: Path, factory, sink, session):
    """All mail is deferred first (downstream tempfails), then the worker delivers it while being killed."""
    factory.tenant("Acme", ("acme.test",), transport_port=sink.port)
    port = smtp_port(env)
    sink.handler.reply = "451 4.3.0 downstream busy"
    ingress = Process(["smtp"], env, tmp_path / "smtp.log").start()
    scheduler = Process(["scheduler"], env, tmp_path / "scheduler.log").start()
    wlog = tmp_path / "worker.log"
    worker = Process(["worker"], env, wlog).start()
    wait_for(lambda: _connectable(port), 20, what="ingress")
    kills: list[float] = []
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda n: _send_one(port, n), range(200)))
        accepted = {r for r in results if r}
        assert len(accepted) == 200  # nothing is killed yet: every mail is accepted
        wait_for(lambda: _pending(session) == 200, 30, what="200 queued rows")
        sink.handler.reply = None
        rnd = random.Random(11)
        for _ in range(5):
            time.sleep(rnd.uniform(0.4, 1.0))
            worker.kill()
            kills.append(time.monotonic())
            worker = Process(["worker"], env, wlog).start()
        sink.wait_count(len(accepted), timeout=120)
        wait_for(lambda: _pending(session) == 0, 60, what="empty queue")
        time.sleep(1)
    finally:
        worker.stop()
        ingress.stop()
        scheduler.stop()
    _check(sink, accepted, kills, "worker kill")
