"""Several ingress processes on one port, and the supervisors that keep them (and ``mailward run``) running.

``mailward smtp`` with MAILWARD_SMTP_PROCESSES=2 forks two children sharing the port (SO_REUSEPORT); a killed child
is replaced, and a SIGTERM to the parent drains every child. ``mailward run`` restarts a killed ingress.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import select

from smtp.supervisor import EX_CONFIG, Supervisor
from tenants.models import Heartbeat
from tenants.scope import msp_scope
from tests.integration.test_crash import _check, _mail, _pending, _send_one
from tests.integration.test_ingress import smtp_port
from tests.support.servers import Process, port_open, run_cli, wait_for

pytestmark = pytest.mark.slow

#: Seconds a child started by a supervisor may take to listen (imports, checks, database) on a busy 2-core machine
#: (seen: over 20 s while other test runs loaded it).
START_TIMEOUT = 120


def _children(pid: int) -> set[int]:
    """The live child processes of ``pid``."""
    try:
        return {c.pid for c in psutil.Process(pid).children() if c.status() != psutil.STATUS_ZOMBIE}
    except psutil.NoSuchProcess:
        return set()


def _accepting_pids(log: str) -> Counter[int]:
    """Mails accepted per ingress process, from the log's ``<time> <pid> INFO smtp.server: accepted`` lines."""
    return Counter(int(m) for m in re.findall(r"^\S+ \S+ (\d+) INFO smtp\.server: accepted ", log, re.M))


def _start_ingress(env: dict[str, str], log: Path, processes: int = 2) -> Process:
    ingress = Process(["smtp"], {**env, "MAILWARD_SMTP_PROCESSES": str(processes)}, log).start()
    assert ingress.proc is not None
    pid = ingress.proc.pid
    wait_for(lambda: len(_children(pid)) == processes, START_TIMEOUT, what=f"{processes} ingress children")
    # Every child listens once each has logged it (the port alone answers as soon as the first one does).
    wait_for(lambda: ingress.log().count("mailward smtp: listening on") >= processes, START_TIMEOUT,
             what="every child listening")
    return ingress


def test_two_processes_share_the_port_and_deliver(env, tmp_path: Path, acme, sink, session):
    """Both children accept mail on the one port; each announces itself with its own heartbeat id."""
    ingress = _start_ingress(env, tmp_path / "smtp.log")
    assert ingress.proc is not None
    try:
        children = _children(ingress.proc.pid)
        assert len(children) == 2
        port = smtp_port(env)
        # Separate connections: the kernel hashes each one to a child; 24 all landing on one has odds of 2^-23.
        with ThreadPoolExecutor(4) as pool:
            accepted = [r for r in pool.map(lambda n: _send_one(port, n), range(24)) if r]
        assert len(accepted) == 24
        arrived = sink.wait_count(24)
        assert {m.message_id for m in arrived} == set(accepted)
        by_pid = _accepting_pids(ingress.log())
        assert set(by_pid) == children, f"accepted per process: {dict(by_pid)}, children {children}"

        def beats() -> set[str]:
            session.rollback()
            with msp_scope():
                return set(session.scalars(select(Heartbeat.id).where(Heartbeat.kind == "ingress")))

        ids = wait_for(lambda: beats() if len(beats()) == 2 else None, 20, what="two ingress heartbeats")
        assert {int(i.rsplit(":", 1)[1]) for i in ids} == children
    finally:
        ingress.stop(timeout=60)
    assert ingress.proc.returncode == 0, ingress.log()[-3000:]


def test_killed_child_is_replaced_and_no_accepted_mail_is_lost(env, tmp_path: Path, acme, sink, session):
    """SIGKILL of one child under load: every mail that got a 250 arrives (a duplicate only from a kill between the
    downstream's 250 and our record of it, as in tests/integration/test_crash.py), and the supervisor starts a new
    child."""
    log = tmp_path / "smtp.log"
    ingress = _start_ingress(env, log)
    assert ingress.proc is not None
    parent = ingress.proc.pid
    # The killed child's committed but undelivered mail waits for its lease; the scheduler and worker take it.
    helpers = [Process([n], env, tmp_path / f"{n}.log").start() for n in ("worker", "scheduler")]
    port = smtp_port(env)
    numbers = itertools.count()
    results: list[str | None] = []
    done = threading.Event()

    def sender() -> None:
        while not done.is_set():
            results.append(_send_one(port, next(numbers)))

    kills: list[float] = []
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(sender) for _ in range(4)]
            try:
                wait_for(lambda: sum(1 for r in results if r) >= 10, 60, what="mail flowing before the kill")
                before = _children(parent)
                victim = min(before)
                os.kill(victim, signal.SIGKILL)
                kills.append(time.monotonic())
                after = wait_for(lambda: (c if len(c := _children(parent)) == 2 and victim not in c else None),
                                 START_TIMEOUT, what="a replacement child")
                new_child = (after - before).pop()
                # The load goes on until the replacement has taken some of it.
                wait_for(lambda: new_child in _accepting_pids(ingress.log()), START_TIMEOUT,
                         what="mail accepted by the replacement")
            finally:
                done.set()
            for f in futures:
                f.result()
        accepted = {r for r in results if r}
        assert after - before == {new_child}
        assert re.search(rf"smtp process \d \(pid {victim}\) exited with code -9 after [\d.]+s; restarting in 1s",
                         ingress.log()), ingress.log()[-3000:]
        assert re.search(r"smtp process \d restarted as pid \d+", ingress.log())
        assert len(accepted) >= 10, "too few mails accepted to tell anything"
        sink.wait_count(len(accepted), timeout=90)
        wait_for(lambda: _pending(session) == 0, 60, what="empty queue")
        time.sleep(1)  # a late duplicate would land now
    finally:
        ingress.stop(timeout=60)
        for p in helpers:
            p.stop()
    _check(sink, accepted, kills, "child kill")


def test_sigterm_drains_a_data_transfer_in_progress(env, tmp_path: Path, acme, sink):
    """SIGTERM to the parent while a client is half-way through DATA: the listeners close, the mail still gets its
    250 and arrives, and the parent and both children exit with status 0."""
    ingress = _start_ingress(env, tmp_path / "smtp.log")
    assert ingress.proc is not None
    parent = ingress.proc.pid
    children = _children(parent)
    port = smtp_port(env)
    body = _mail(900)
    half = len(body) // 2
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.ehlo("client.sender.example")
            assert c.mail("load@sender.example")[0] == 250
            assert c.rcpt("bob@acme.test")[0] == 250
            assert c.docmd("DATA")[0] == 354
            c.send(body[:half])
            os.kill(parent, signal.SIGTERM)
            wait_for(lambda: not port_open(port), 20, what="the listeners closed")
            assert ingress.proc.poll() is None  # still draining: our session holds it
            c.send(body[half:] + b"\r\n.\r\n")
            code, reply = c.getreply()
            assert code == 250, reply
            c.quit()
        ingress.proc.wait(60)
    finally:
        ingress.stop(timeout=60)
    assert ingress.proc.returncode == 0, ingress.log()[-3000:]
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in children)
    assert [m.message_id for m in sink.wait_count(1)] == ["<crash-900@sender.example>"]


def test_mailward_run_restarts_a_killed_ingress(env, tmp_path: Path, acme, sink, clamd_server):
    """``mailward run`` keeps going when its ingress is SIGKILLed: it logs the exit, starts a new ingress after the
    back-off, mail flows again, and only SIGTERM stops everything (status 0)."""
    run_env = {**env, "MAILWARD_CLAMD": clamd_server.address, "MAILWARD_SMTP_PROCESSES": "2"}
    log = tmp_path / "run.log"
    run = Process(["run"], run_env, log).start()
    assert run.proc is not None
    port = smtp_port(env)

    def ingress_pid() -> int | None:
        for child in psutil.Process(run.proc.pid).children():  # type: ignore[union-attr]
            try:
                if child.cmdline()[-1:] == ["smtp"]:
                    return int(child.pid)
            except psutil.Error:  # a killed ingress not reaped yet (a zombie has no command line) or gone
                continue
        return None

    try:
        wait_for(lambda: "Mailward is running." in run.log(), 90, what="mailward run started")
        first = wait_for(ingress_pid, START_TIMEOUT, what="the ingress")
        wait_for(lambda: port_open(port), START_TIMEOUT, what="the ingress port")
        assert _send_one(port, 1) is not None
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: (p if (p := ingress_pid()) not in (None, first) else None), START_TIMEOUT,
                          what="a new ingress")
        assert run.proc.poll() is None
        # The killed ingress's children got SIGTERM from the kernel (they asked for it) and drain; the new ones serve.
        wait_for(lambda: len(_children(second)) == 2, START_TIMEOUT, what="the new ingress's children")
        wait_for(lambda: _send_one(port, 2) is not None, START_TIMEOUT, what="mail accepted again")
        sink.wait_count(2, timeout=60)
        assert re.search(rf"smtp \(pid {first}\) exited with code -9 after [\d.]+s; restarting in 1s", run.log()), \
            run.log()[-3000:]
        run.proc.send_signal(signal.SIGTERM)
        run.proc.wait(90)
    finally:
        run.stop(timeout=90)
    assert run.proc.returncode == 0, run.log()[-3000:]
    assert not psutil.pid_exists(second) or psutil.Process(second).status() == psutil.STATUS_ZOMBIE



def test_helm_sets_the_processes_per_pod_from_a_value() -> None:
    """Unset by default (one per core); ``ingress.processes`` becomes MAILWARD_SMTP_PROCESSES of the ingress only."""
    from tests.integration.test_helm import deployment, env_of, render

    def env(docs: list[dict[str, Any]], component: str) -> dict[str, dict[str, Any]]:
        return env_of(deployment(docs, component)["spec"]["template"]["spec"]["containers"][0])

    assert "MAILWARD_SMTP_PROCESSES" not in env(render(), "ingress")
    docs = render({"ingress": {"processes": 4}})
    assert env(docs, "ingress")["MAILWARD_SMTP_PROCESSES"]["value"] == "4"
    assert "MAILWARD_SMTP_PROCESSES" not in env(docs, "worker")


def test_a_configuration_error_in_the_children_stops_the_ingress_with_its_name(env):
    """Restarting cannot fix a bad value: the parent stops every child and fails with the child's error."""
    result = run_cli(["smtp"], {**env, "MAILWARD_SMTP_PROCESSES": "2", "MAILWARD_DNSBL_ZONES": "ip:bad"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("mailward: error: MAILWARD_DNSBL_ZONES:"), result.stderr
    assert "restarting in" not in result.stderr


def _supervise_until(supervisor: Supervisor, exits: int, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Run the supervisor's checks until it logged ``exits`` exits; the back-off of each, as logged."""
    def delays() -> list[str]:
        return re.findall(r"restarting in (\S+)s", caplog.text)

    try:
        for slot in supervisor.slots:
            supervisor._start(slot)
        wait_for(lambda: supervisor.check() is None and len(delays()) >= exits, 60, interval=0.01,
                 what=f"{exits} exits")
    finally:
        supervisor.stop()
    return delays()[:exits]


def test_back_off_doubles_up_to_its_maximum_and_starts_again_after_a_long_run(caplog):
    """A process that keeps dying waits longer each time (start, doubled, capped); one that ran ``stable_after``
    seconds before dying is restarted after the first delay again."""
    caplog.set_level(logging.WARNING, logger="smtp.supervisor")
    dies = [sys.executable, "-c", "raise SystemExit(3)"]
    quick = Supervisor(backoff_start=0.05, backoff_max=0.2, stable_after=60, drain_timeout=5)
    quick.add("dies", lambda: subprocess.Popen(dies))
    assert _supervise_until(quick, 5, caplog) == ["0.05", "0.1", "0.2", "0.2", "0.2"]
    assert "dies (pid" in caplog.text and "exited with code 3" in caplog.text and "dies restarted as pid" in caplog.text

    caplog.clear()
    runs_a_while = [sys.executable, "-c", "import time; time.sleep(0.5); raise SystemExit(3)"]
    stable = Supervisor(backoff_start=0.05, backoff_max=0.2, stable_after=0.3, drain_timeout=5)
    stable.add("lives", lambda: subprocess.Popen(runs_a_while))
    assert _supervise_until(stable, 3, caplog) == ["0.05", "0.05", "0.05"]


def test_a_fatal_exit_stops_supervising(caplog):
    """An exit status listed as fatal (a configuration error) is not restarted: check() says why."""
    supervisor = Supervisor(fatal_codes=frozenset({EX_CONFIG}), drain_timeout=5)
    supervisor.add("bad config", lambda: subprocess.Popen([sys.executable, "-c", f"raise SystemExit({EX_CONFIG})"]))
    supervisor.add("fine", lambda: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
    try:
        for slot in supervisor.slots:
            supervisor._start(slot)
        failure = wait_for(supervisor.check, 30, what="the fatal exit")
    finally:
        supervisor.stop()
    assert failure == f"bad config exited with code {EX_CONFIG}"
    assert not supervisor.pids()  # the other one was stopped too
