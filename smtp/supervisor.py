"""Process supervision: N ingress processes on one port, and the restart-with-back-off loop ``mailward run`` shares.

``mailward smtp`` with more than one process (``MAILWARD_SMTP_PROCESSES``, one per core by default) forks that many
children, each running :func:`smtp.server.serve` in its own event loop, all listening on the same port through
SO_REUSEPORT (the kernel spreads new connections over them). The parent only supervises: a child that dies is
started again after a back-off (1 s doubling to 30 s, back to 1 s once a child ran a minute); SIGTERM or SIGINT is
forwarded as SIGTERM so that every child drains (its listeners close, sessions in progress finish, running
deliveries finish or go back to the queue), and whatever still runs after :data:`DRAIN_TIMEOUT` is killed.
A child that stops on a configuration error stops the whole ingress with that error: restarting cannot fix it.

The connection caps of :mod:`smtp.limits` count per process, as does each process's heartbeat (its id holds the pid).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any, Protocol

from tenants import metrics
from tenants.exceptions import ConfigError, MailwardError
from tenants.platform.config import Config

log = logging.getLogger(__name__)

#: Seconds before the first restart of a child that died; doubled for each quick death in a row, up to BACKOFF_MAX.
BACKOFF_START = 1.0
#: Longest wait before a restart.
BACKOFF_MAX = 30.0
#: Seconds a child must have run for its death to count as a fresh failure (the back-off starts again at 1 s).
STABLE_AFTER = 60.0
#: Seconds stopping children get after SIGTERM before SIGKILL: an ingress child needs its delivery grace
#: (smtp.server.SHUTDOWN_GRACE, 10 s) plus :data:`SESSION_GRACE`.
DRAIN_TIMEOUT = 35.0
#: Seconds an ingress whose listeners closed waits for its open sessions (a DATA in progress gets its 250).
SESSION_GRACE = 20.0
#: Seconds between two looks at the children.
POLL_INTERVAL = 0.2
#: Exit status of a child that stopped on a configuration error (sysexits.h EX_CONFIG).
EX_CONFIG = 78
#: prctl(2) option: the signal a child gets when its parent dies.
PR_SET_PDEATHSIG = 1


class Child(Protocol):
    """What the supervisor needs of a running process (``subprocess.Popen`` has it; :class:`ForkedChild` too)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...


@dataclass
class Slot:
    """One supervised process: how to start it, the running child, and its restart state."""

    name: str
    start: Callable[[], Child]
    child: Child | None = None
    started: float = 0.0
    backoff: float = BACKOFF_START
    #: Monotonic time of the next start while the slot waits out its back-off; None while a child runs.
    restart_at: float | None = None


class Supervisor:
    """Keep a set of processes running until SIGTERM or SIGINT; restart the ones that die, with back-off.

    ``fatal_codes``: exit statuses that mean restarting is pointless (a configuration error): the supervisor stops
    everything and :meth:`run` returns a description of that exit instead of None.
    """

    def __init__(self, *, drain_timeout: float = DRAIN_TIMEOUT, backoff_start: float = BACKOFF_START,
                 backoff_max: float = BACKOFF_MAX, stable_after: float = STABLE_AFTER,
                 fatal_codes: frozenset[int] = frozenset()) -> None:
        if drain_timeout <= 0 or backoff_start <= 0 or backoff_max < backoff_start or stable_after <= 0:
            raise ValueError("supervisor timings must be positive, back-off start no more than its maximum")
        self.drain_timeout = drain_timeout
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.fatal_codes = fatal_codes
        self.slots: list[Slot] = []
        self.stopping = False

    def add(self, name: str, start: Callable[[], Child]) -> None:
        self.slots.append(Slot(name, start, backoff=self.backoff_start))

    def pids(self) -> dict[str, int]:
        """The running children's pids by slot name."""
        return {s.name: s.child.pid for s in self.slots if s.child is not None}

    def run(self, *, on_started: Callable[[], None] | None = None) -> str | None:
        """Start every slot and supervise until a signal; then stop all. None, or why a fatal exit stopped it."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        failure: str | None = None
        try:
            for slot in self.slots:
                self._start(slot)
            if on_started is not None:
                on_started()
            while not self.stopping and failure is None:
                failure = self.check()
                time.sleep(POLL_INTERVAL)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return failure

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def check(self) -> str | None:
        """Note the children that exited (logged, restart scheduled) and start those whose back-off is over."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.child is not None:
                code = slot.child.poll()
                if code is None:
                    continue
                ran = now - slot.started
                pid = slot.child.pid
                slot.child = None
                if code in self.fatal_codes:
                    log.error("%s (pid %d) exited with code %d: not restarting", slot.name, pid, code)
                    return f"{slot.name} exited with code {code}"
                if ran >= self.stable_after:
                    slot.backoff = self.backoff_start
                delay = slot.backoff
                slot.backoff = min(slot.backoff * 2, self.backoff_max)
                slot.restart_at = now + delay
                log.warning("%s (pid %d) exited with code %d after %.1fs; restarting in %gs",
                            slot.name, pid, code, ran, delay)
            elif slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot)
                if slot.child is not None:
                    log.warning("%s restarted as pid %d", slot.name, slot.child.pid)
        return None

    def _start(self, slot: Slot) -> None:
        slot.restart_at = None
        slot.started = time.monotonic()
        try:
            slot.child = slot.start()
        except OSError as exc:  # fork or exec failed (out of memory, process limit): try again later
            log.error("cannot start %s: %s; trying again in %gs", slot.name, exc, slot.backoff)
            slot.restart_at = slot.started + slot.backoff
            slot.backoff = min(slot.backoff * 2, self.backoff_max)

    def stop(self) -> None:
        """SIGTERM to every running child, wait up to the drain timeout for all of them, then SIGKILL the rest."""
        self.stopping = True
        running = [s for s in self.slots if s.child is not None and s.child.poll() is None]
        for slot in running:
            assert slot.child is not None
            slot.child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.drain_timeout
        while any(s.child is not None and s.child.poll() is None for s in running) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL / 2)
        for slot in running:
            assert slot.child is not None
            if slot.child.poll() is None:
                log.error("%s (pid %d) still running %gs after SIGTERM: killed", slot.name, slot.child.pid,
                          self.drain_timeout)
                slot.child.send_signal(signal.SIGKILL)
        for slot in running:
            while slot.child is not None and slot.child.poll() is None:
                time.sleep(POLL_INTERVAL / 2)
            slot.child = None
            slot.restart_at = None


# --- the ingress processes ----------------------------------------------------------------------------------------

def process_count(cfg: Config) -> int:
    """How many ingress processes to run: MAILWARD_SMTP_PROCESSES, else one per core this process may use."""
    if cfg.smtp_processes:
        return cfg.smtp_processes
    try:
        return max(1, len(os.sched_getaffinity(0)))  # the cores of a cpuset (a pinned container), not the host's
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ForkedChild:
    """A forked ingress child as a :class:`Child` (multiprocessing's exit codes are Popen's: -N for signal N)."""

    def __init__(self, proc: multiprocessing.process.BaseProcess) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def poll(self) -> int | None:
        if self.proc.is_alive():
            return None
        self.proc.join()
        return self.proc.exitcode

    def send_signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


async def serve_and_finish(cfg: Config) -> None:
    """Run the ingress until SIGTERM or SIGINT, then let the sessions still open finish (up to SESSION_GRACE).

    :func:`smtp.server.serve` closes its listeners and drains its deliveries when told to stop; sessions already
    connected keep going meanwhile, and this waits for them (and the deliveries they start) before the loop closes,
    so a client in the middle of DATA gets its reply instead of a reset.
    """
    from smtp.server import serve  # the parent of forked children never needs the ingress's imports

    await serve(cfg)
    me = asyncio.current_task()
    deadline = time.monotonic() + SESSION_GRACE
    while True:
        others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        left = deadline - time.monotonic()
        if not others:
            return
        if left <= 0:
            log.warning("%d session(s) or deliveries still running %gs after the stop: cut off", len(others),
                        SESSION_GRACE)
            return
        await asyncio.wait(others, timeout=left)


def _die_with_parent(parent: int) -> None:
    """Ask Linux for SIGTERM when the supervisor dies (even by SIGKILL), so no orphan keeps the port."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):  # not Linux: orphans then stop with their next SIGTERM
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _child_main(cfg: Config, parent: int, errors: Connection) -> None:
    """The body of one forked ingress process."""
    for sig in (signal.SIGTERM, signal.SIGINT):  # not the supervisor's handlers: default until serve() sets its own
        signal.signal(sig, signal.SIG_DFL)
    _die_with_parent(parent)
    try:
        asyncio.run(serve_and_finish(cfg))
    except MailwardError as exc:
        errors.send(str(exc))
        sys.exit(EX_CONFIG)


def run_ingress(cfg: Config) -> None:
    """``mailward smtp``: the ingress in this process (one process), or N forked children under a supervisor.

    Raises ConfigError when a child stops on a configuration error (after stopping the others).
    """
    n = process_count(cfg)
    cfg = replace(cfg, smtp_processes=n)  # serve() asks the kernel to share the port when n > 1
    if n == 1:
        server = metrics.serve_process_metrics(cfg)
        try:
            asyncio.run(serve_and_finish(cfg))
        finally:
            if server is not None:
                server.shutdown()
        return
    # Several processes: the children write their metrics to one directory, and this supervisor serves them merged.
    shared = metrics.enable_multiprocess() if cfg.metrics_listen is not None else None
    try:
        _supervise(cfg, n, metrics.serve_process_metrics(cfg, multiprocess_dir=shared))
    finally:
        if shared is not None:
            metrics.disable_multiprocess(shared)


def _supervise(cfg: Config, n: int, metrics_server: Any) -> None:
    """Fork ``n`` ingress children and supervise them until a signal (or a configuration error)."""
    import smtp.server  # noqa: F401 - imported once, before the forks: children (and restarts) start sooner
    ctx = multiprocessing.get_context("fork")  # cfg is used as parsed; nothing is imported again
    reader, writer = ctx.Pipe(duplex=False)
    parent = os.getpid()
    supervisor = Supervisor(fatal_codes=frozenset({EX_CONFIG}))

    def starter(index: int) -> Callable[[], Child]:
        def start() -> Child:
            proc = ctx.Process(target=_child_main, args=(cfg, parent, writer), name=f"smtp-{index}")
            proc.start()
            return ForkedChild(proc)
        return start

    for i in range(1, n + 1):
        supervisor.add(f"smtp process {i}", starter(i))
    log.info("SMTP ingress: supervising %d processes on %s", n, cfg.smtp_listen)
    try:
        failure = supervisor.run(on_started=lambda: log.info("SMTP ingress processes started: pids %s",
                                                             ", ".join(map(str, supervisor.pids().values()))))
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
    if failure is not None:
        raise ConfigError(reader.recv() if reader.poll(1) else failure)
    log.info("SMTP ingress stopped")
