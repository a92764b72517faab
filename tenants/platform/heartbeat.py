"""Process heartbeats for the cluster view: every ingress, worker, scheduler and web process writes one row.

A row's id is ``kind:host:pid``. Each process beats every :data:`INTERVAL` seconds (a thread in the worker, the
scheduler and the web process, an asyncio task in the ingress) with how much it has handled (mails accepted, jobs
run, requests served). A row not beaten for :data:`STALE_AFTER` is shown as down; one silent for :data:`PRUNE_AFTER`
is deleted by the next beat of any process. ``Heartbeat`` is not tenant-owned: no scope is needed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import metadata

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tenants.models import Heartbeat, utcnow
from tenants.platform.config import Config
from tenants.platform.db import session_factory

log = logging.getLogger(__name__)

#: Seconds between two beats of one process.
INTERVAL = 15.0
#: A process silent for longer than three beats is shown as down.
STALE_AFTER = timedelta(seconds=3 * INTERVAL)
#: Rows silent this long are deleted (a process that went away for good).
PRUNE_AFTER = timedelta(days=1)
#: The process kinds, in the order the cluster view lists them.
KINDS = ("ingress", "worker", "scheduler", "web")


def version() -> str:
    try:
        return metadata.version("mailward")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Identity:
    """Who beats: the process kind, host and pid (the row id joins them)."""

    kind: str
    host: str
    pid: int
    started_at: datetime

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.host}:{self.pid}"

    @classmethod
    def here(cls, kind: str) -> Identity:
        if kind not in KINDS:
            raise ValueError(f"process kind {kind!r}: one of {', '.join(KINDS)}")
        return cls(kind, socket.gethostname(), os.getpid(), utcnow())


def beat(session: Session, me: Identity, handled: int, *, now: datetime | None = None) -> None:
    """Write this process's row (insert or update) and prune long-silent ones; the caller commits."""
    now = now or utcnow()
    row = session.get(Heartbeat, me.id)
    if row is None:
        row = Heartbeat(id=me.id, kind=me.kind, host=me.host, version=version()[:40], started_at=me.started_at)
        session.add(row)
    row.last_seen_at = now
    row.handled = handled
    session.execute(delete(Heartbeat).where(Heartbeat.last_seen_at < now - PRUNE_AFTER))


def remove(session: Session, me: Identity) -> None:
    """Drop this process's row on a clean stop (a crashed one goes stale instead); the caller commits."""
    session.execute(delete(Heartbeat).where(Heartbeat.id == me.id))


@dataclass(frozen=True)
class ProcessState:
    """One row of the cluster view."""

    id: str
    kind: str
    host: str
    pid: str
    version: str
    started_at: datetime
    last_seen_at: datetime
    handled: int
    up: bool


def cluster(session: Session, *, now: datetime | None = None) -> list[ProcessState]:
    """Every known process, by kind then host; ``up`` is False for one silent longer than :data:`STALE_AFTER`."""
    now = now or utcnow()
    rows = session.scalars(select(Heartbeat).order_by(Heartbeat.kind, Heartbeat.host, Heartbeat.id)).all()
    order = {k: i for i, k in enumerate(KINDS)}
    out = [ProcessState(id=r.id, kind=r.kind, host=r.host, pid=r.id.rsplit(":", 1)[-1], version=r.version,
                        started_at=r.started_at, last_seen_at=r.last_seen_at, handled=r.handled,
                        up=now - r.last_seen_at <= STALE_AFTER) for r in rows]
    return sorted(out, key=lambda p: (order.get(p.kind, len(order)), p.host, p.id))


def beat_once(cfg: Config, me: Identity, handled: int) -> None:
    """One beat in a short session of its own; a database error is logged, never raised (beats are best effort)."""
    try:
        with session_factory(cfg)() as s:
            beat(s, me, handled)
            s.commit()
    except Exception as exc:  # the process keeps working while the database is away
        log.warning("heartbeat of %s failed: %s", me.id, exc)


def remove_once(cfg: Config, me: Identity) -> None:
    try:
        with session_factory(cfg)() as s:
            remove(s, me)
            s.commit()
    except Exception as exc:
        log.warning("removing heartbeat of %s failed: %s", me.id, exc)


class HeartbeatThread(threading.Thread):
    """A daemon thread that beats every :data:`INTERVAL` until :meth:`stop` (worker, scheduler, web)."""

    def __init__(self, cfg: Config, kind: str, handled: Callable[[], int], *, interval: float = INTERVAL) -> None:
        super().__init__(name=f"mailward-heartbeat-{kind}", daemon=True)
        self.cfg = cfg
        self.me = Identity.here(kind)
        self.handled = handled
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            beat_once(self.cfg, self.me, self.handled())
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)
        remove_once(self.cfg, self.me)
