"""Store outages under a steady SMTP load: the ingress (two processes), worker and scheduler keep running while
PostgreSQL is stopped (``pg_ctl stop -m immediate``, only with ``MAILWARD_TEST_DB=postgres``) and while Redis is
SIGKILLed, and both come back on the same port and socket. Each store is private to this test, so stopping it
breaks no other test running at the same time.

What must hold: while the database is away, DATA is answered 4xx and never 250 (the commit is the acceptance);
while Redis is away mail may still be accepted (Redis holds no mail: see ARCHITECTURE.md, "Stores"), and nothing
is ever refused 5xx for an outage. Every mail that got a 250 arrives at the downstream sink; no mail that was
answered 4xx arrives; a duplicate is only allowed from a delivery the database outage kept from being recorded;
and once a store is back, mail gets 250 and arrives again with no process restarted. The counts are printed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import smtplib
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.registry import StartedJobRegistry
from sqlalchemy import func, select

from tenants.models import Delivery, DeliveryStatus
from tenants.platform import db as tdb
from tenants.platform.config import Config
from tenants.scope import msp_scope
from tests.conftest import TEST_DB
from tests.integration.test_crash import _mail, _pending
from tests.integration.test_ingress import smtp_port
from tests.integration.test_ingress_processes import START_TIMEOUT, _children, _start_ingress
from tests.support.servers import PG_BIN, PostgresServer, Process, Sink, _as_postgres_argv, start_postgres, wait_for

pytestmark = pytest.mark.slow

#: Seconds PostgreSQL stays stopped, and Redis killed.
PG_DOWN = 20.0
REDIS_DOWN = 10.0
#: Seconds the downstream takes over each mail while Redis is killed (a worker job is then caught mid-delivery).
SLOW_DOWNSTREAM = 3.0
#: Clients sending at once, each one mail per connection, never retrying (a retry could itself duplicate).
SENDERS = 4
#: Bound on the seconds from a store's return to the first mail accepted again (a recovery, not a speed).
RECOVERY_TIMEOUT = 60.0
#: Seconds around the database outage within which a duplicate is explained: the fast path delivered the mail but
#: could not record it, so its claim ran out and the worker delivered it again (at-least-once, never lost).
DUPLICATE_MARGIN = 5.0


@dataclass
class Attempt:
    """One mail's try: the stage that ended it, the reply code there (0: the connection failed), and when the
    last command was sent and its reply came (monotonic)."""

    n: int
    stage: str
    code: int
    sent_at: float
    replied_at: float

    @property
    def message_id(self) -> str:
        return f"<crash-{self.n}@sender.example>"  # what tests.integration.test_crash._mail puts in


def _attempt(port: int, n: int) -> Attempt:
    stage, sent = "connect", time.monotonic()

    def end(code: int) -> Attempt:
        return Attempt(n, stage, code, sent, time.monotonic())

    try:
        c = smtplib.SMTP("127.0.0.1", port, local_hostname="client.sender.example", timeout=30)
    except smtplib.SMTPConnectError as exc:
        return end(exc.smtp_code)
    except (smtplib.SMTPException, OSError):
        return end(0)
    try:
        stage, sent = "ehlo", time.monotonic()
        code = c.ehlo()[0]
        if code != 250:
            return end(code)
        stage, sent = "mail", time.monotonic()
        code = c.mail("load@sender.example")[0]
        if code != 250:
            return end(code)
        stage, sent = "rcpt", time.monotonic()
        code = c.rcpt("bob@acme.test")[0]
        if code != 250:
            return end(code)
        stage, sent = "data", time.monotonic()
        try:
            return end(c.data(_mail(n))[0])
        except smtplib.SMTPDataError as exc:  # DATA itself refused (no 354)
            return end(exc.smtp_code)
    except (smtplib.SMTPException, OSError):
        return end(0)
    finally:
        try:
            c.quit()
        except (smtplib.SMTPException, OSError):
            c.close()


# --- private stores that can be stopped and started again ---------------------------------------------------------

class PrivateRedis:
    """A Redis (or Valkey) on a unix socket in ``workdir``, without persistence: a SIGKILL loses all its data, the
    hardest case (RQ's queues, greylisting, caches are gone); it comes back on the same socket."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            from tenants.platform.redisconn import server_binary

            binary = server_binary()
        self.sock = workdir / "redis.sock"
        self.argv = [binary, "--port", "0", "--unixsocket", str(self.sock), "--dir", str(workdir), "--save", "",
                     "--appendonly", "no", "--daemonize", "no"]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.sock))

    def _ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._ping, 20, what="redis")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _pg_stop_immediate(pg: PostgresServer) -> None:
    subprocess.run(_as_postgres_argv(f"{PG_BIN}/pg_ctl -D {pg.workdir}/data -m immediate -w stop"), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _pg_start(pg: PostgresServer) -> None:
    """Start it again on the same port, with the options of :func:`tests.support.servers.start_postgres`."""
    subprocess.run(_as_postgres_argv(
        f"{PG_BIN}/pg_ctl -D {pg.workdir}/data -l {pg.workdir}/log -w -o '-p {pg.port} -k {pg.workdir} "
        f"-c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300' start"),
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass
class Stores:
    redis: PrivateRedis
    pg: PostgresServer | None


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    """This test's own Redis, and on PostgreSQL its own migrated server."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    r = PrivateRedis(workdir).start()
    pg = None
    try:
        if TEST_DB == "postgres":
            pg = start_postgres()
            tdb.migrate(Config(database_url=pg.url()))
            tdb.dispose_engines()
        yield Stores(r, pg)
    finally:
        r.stop()
        if pg is not None:
            pg.stop()


@pytest.fixture
def env(env: dict[str, str], stores: Stores) -> dict[str, str]:
    """The usual installation, on the private stores (``cfg``, ``session`` and ``acme`` follow it)."""
    e = {**env, "MAILWARD_REDIS_URL": stores.redis.url}
    if stores.pg is not None:
        e["MAILWARD_DATABASE_URL"] = stores.pg.url()
    return e


# --- the load and the test ----------------------------------------------------------------------------------------

@dataclass
class Window:
    """A store away: from its stop having returned to its start being asked for (monotonic)."""

    name: str
    down: float
    up: float
    back: float = 0.0  # when it answered again
    recovered_after: float = 0.0  # seconds from ``back`` to the first mail sent after it that got a 250

    def holds(self, a: Attempt) -> bool:
        """The whole command and its reply happened while the store was away."""
        return a.sent_at >= self.down and a.replied_at <= self.up


class Load:
    """Clients sending numbered mails until stopped; every attempt is kept."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.numbers = itertools.count()
        self.attempts: list[Attempt] = []
        self.done = threading.Event()

    def sender(self) -> None:
        while not self.done.is_set():
            a = _attempt(self.port, next(self.numbers))
            self.attempts.append(a)
            if a.code != 250:
                time.sleep(0.1)  # a tempfailing installation is not hammered (nor are numbers burnt)

    def replies(self) -> dict[str, int]:
        return dict(Counter(f"{a.stage}:{a.code}" for a in list(self.attempts)))

    def accepted_since(self, t: float) -> int:
        return sum(1 for a in list(self.attempts) if a.code == 250 and a.sent_at >= t)

    def wait_recovered(self, window: Window) -> None:
        wait_for(lambda: self.accepted_since(window.back) >= 3, RECOVERY_TIMEOUT,
                 what=f"mail accepted again after {window.name} came back")
        first = min(a.replied_at for a in list(self.attempts) if a.code == 250 and a.sent_at >= window.back)
        window.recovered_after = first - window.back


class SlowDownstream:
    """Makes the sink take ``seconds`` over each DATA while they are above 0."""

    def __init__(self, sink: Sink) -> None:
        self.seconds = 0.0
        original = sink.handler.handle_DATA

        async def handle_data(server: Any, session: Any, envelope: Any) -> str:
            if self.seconds:
                await asyncio.sleep(self.seconds)
            return await original(server, session, envelope)

        sink.handler.handle_DATA = handle_data  # type: ignore[method-assign]


def _worker_busy(r: PrivateRedis) -> bool:
    """A delivery job started and not finished (RQ's registry of started jobs)."""
    return StartedJobRegistry("delivery", connection=r.client()).get_job_count(cleanup=False) > 0


def _retried(session: Any) -> int:
    """Delivery rows delivered on a later attempt than the first (the worker's, through RQ)."""
    session.rollback()
    with msp_scope():
        return int(session.scalar(select(func.count(Delivery.id)).where(
            Delivery.status == DeliveryStatus.DELIVERED.value, Delivery.attempts > 1)) or 0)


def test_store_outages_lose_no_mail_and_the_installation_recovers(
    env: dict[str, str], tmp_path: Path, stores: Stores, acme: Any, sink: Sink, session: Any
) -> None:
    ingress = _start_ingress(env, tmp_path / "smtp.log")
    assert ingress.proc is not None
    children = _children(ingress.proc.pid)
    helpers = {n: Process([n], env, tmp_path / f"{n}.log").start() for n in ("worker", "scheduler")}
    load = Load(smtp_port(env))
    slow = SlowDownstream(sink)
    windows: list[Window] = []
    try:
        with ThreadPoolExecutor(SENDERS) as pool:
            futures = [pool.submit(load.sender) for _ in range(SENDERS)]
            try:
                # The worker registered in Redis, the scheduler sweeping: both are past their start (a failed start is
                # another matter than an outage).
                wait_for(lambda: stores.redis.client().scard("rq:workers") >= 1, START_TIMEOUT, what="the worker")
                wait_for(lambda: "sweep every" in helpers["scheduler"].log(), START_TIMEOUT, what="the scheduler")
                try:
                    wait_for(lambda: load.accepted_since(0) >= 20, 60, what="mail flowing before the outages")
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}: {load.replies()}\n{ingress.log()[-3000:]}") from None
                if stores.pg is not None:
                    _pg_stop_immediate(stores.pg)
                    w = Window("postgresql", time.monotonic(), 0.0)
                    time.sleep(PG_DOWN)
                    w.up = time.monotonic()
                    _pg_start(stores.pg)  # -w: returns once it accepts connections
                    w.back = time.monotonic()
                    windows.append(w)
                    load.wait_recovered(w)
                # Redis dies while the worker is in the middle of a job: some mails are deferred (downstream
                # tempfails), then downstream answers slowly, and the kill comes while the worker delivers one.
                sink.handler.reply = "451 4.3.0 downstream busy"
                since = time.monotonic()
                wait_for(lambda: load.accepted_since(since) >= 2, 30, what="mail deferred before the kill")
                slow.seconds, sink.handler.reply = SLOW_DOWNSTREAM, None
                wait_for(lambda: _worker_busy(stores.redis), 30, what="the worker in the middle of a job")
                stores.redis.kill()
                w = Window("redis", time.monotonic(), 0.0)
                time.sleep(REDIS_DOWN)
                w.up = time.monotonic()
                slow.seconds = 0.0
                stores.redis.start()
                w.back = time.monotonic()
                windows.append(w)
                load.wait_recovered(w)
                # Downstream tempfails for a moment: those mails are deferred and only the worker, through RQ on
                # the new Redis (the scheduler's sweeper queues them), can deliver them.
                retried_before = _retried(session)
                sink.handler.reply = "451 4.3.0 downstream busy"
                wait_for(lambda: load.accepted_since(time.monotonic() - 0.5) >= 1, 30, what="mail during 451")
                time.sleep(1.5)
                sink.handler.reply = None
                time.sleep(2.0)
            finally:
                load.done.set()
            for f in futures:
                f.result()
        for name, p in helpers.items():
            assert p.proc is not None and p.proc.poll() is None, f"the {name} died:\n{p.log()[-3000:]}"
        attempts = list(load.attempts)
        accepted = {a.message_id for a in attempts if a.code == 250}
        sink.wait_count(len(accepted), timeout=90)
        wait_for(lambda: _pending(session) == 0, 90, what="empty queue")
        time.sleep(1)  # a late duplicate would land now
        retried = _retried(session) - retried_before
        alive = {n: p.proc.poll() is None for n, p in helpers.items() if p.proc is not None}
        assert ingress.proc.poll() is None, ingress.log()[-3000:]
        assert _children(ingress.proc.pid) == children, "an ingress process was restarted"
        assert "restarting in" not in ingress.log(), ingress.log()[-3000:]
    finally:
        ingress.stop(timeout=60)
        for p in helpers.values():
            p.stop(timeout=30)
    # SIGTERM still stops the worker cleanly (its work loop was replaced during the Redis outage).
    worker = helpers["worker"]
    assert worker.proc is not None and worker.proc.returncode == 0, worker.log()[-3000:]
    _report(attempts, accepted, windows, sink, retried, alive)


def _report(attempts: list[Attempt], accepted: set[str], windows: list[Window], sink: Sink, retried: int,
            alive: dict[str, bool]) -> None:
    received = sink.messages
    counts = Counter(m.message_id for m in received)
    tempfailed = {a.message_id for a in attempts if 400 <= a.code < 500}
    refused = [a for a in attempts if a.code >= 500]
    failed = [a for a in attempts if a.code == 0]
    missing = accepted - set(counts)
    delivered_after_4xx = tempfailed & set(counts)
    dups = {mid: n for mid, n in counts.items() if n > 1}
    pg = next((w for w in windows if w.name == "postgresql"), None)
    unexplained = [mid for mid in dups if pg is None or not any(
        pg.down - DUPLICATE_MARGIN <= m.at <= pg.back + DUPLICATE_MARGIN for m in received if m.message_id == mid)]
    print(f"\noutage: sent={len(attempts)} accepted={len(accepted)} tempfailed={len(tempfailed)} "
          f"refused={len(refused)} failed={len(failed)} arrived={len(counts)} missing={len(missing)} "
          f"duplicates={sum(n - 1 for n in dups.values())} unexplained_duplicates={len(unexplained)} "
          f"delivered_after_4xx={len(delivered_after_4xx)} retried_by_worker={retried}")
    during: dict[str, list[Attempt]] = {}
    for w in windows:
        during[w.name] = [a for a in attempts if w.holds(a)]
        by = Counter(f"{a.stage}:{a.code}" for a in during[w.name])
        print(f"outage[{w.name}]: down={w.up - w.down:.1f}s attempts={len(during[w.name])} "
              f"data_250={by.get('data:250', 0)} replies={dict(sorted(by.items()))} "
              f"recovered_after={w.recovered_after:.1f}s")
    assert all(alive.values()), f"a helper process died: {alive}"
    assert not missing, f"mails that got a 250 never arrived: {sorted(missing)[:10]}"
    assert not delivered_after_4xx, f"tempfailed mails were delivered: {sorted(delivered_after_4xx)[:10]}"
    assert not unexplained, f"duplicates not explained by the database outage: {unexplained[:10]}"
    assert not refused, f"an outage must never refuse mail for good: {[(a.stage, a.code) for a in refused][:10]}"
    assert not failed, f"connections failed (the ingress went away?): {[(a.stage, a.n) for a in failed][:10]}"
    if pg is not None:
        away = during["postgresql"]
        assert away, "no mail was tried while PostgreSQL was away"
        assert all(400 <= a.code < 500 for a in away), \
            f"while PostgreSQL was away: {Counter((a.stage, a.code) for a in away)}"
        assert any(a.stage == "data" for a in away), "DATA was never reached while PostgreSQL was away"
    assert during["redis"], "no mail was tried while Redis was away"
    assert all(a.code == 250 or 400 <= a.code < 500 for a in during["redis"])
    assert retried >= 1, "no deferred mail was delivered by the worker after Redis came back"
