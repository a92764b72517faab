"""``mailward scheduler``: one process that runs or enqueues periodic work. A Redis lock keeps it to one at a time.

What runs when is one table, :func:`periodic_jobs`: the delivery sweeper every ``sweep_interval`` (in this process:
it only queues jobs), the retention purge hourly and the digest check every few minutes (each queues RQ jobs that
the workers run). A job that fails is logged and tried again at its next interval; it never stops the others.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import redis

from tenants.platform import heartbeat
from tenants.platform.config import Config
from tenants.platform.db import require_current_schema
from tenants.platform.redisconn import redis_client
from tenants.sarules.update import SA_UPDATE_INTERVAL
from worker.backup import BACKUP_INTERVAL, enqueue_backup
from worker.digest import DIGEST_CHECK_INTERVAL, schedule_digests
from worker.dnscheck import REFRESH_INTERVAL as DNS_REFRESH_INTERVAL
from worker.dnscheck import enqueue_refreshes
from worker.jobs import DIRECTORY_SYNC_INTERVAL, enqueue_directory_syncs, enqueue_sa_update
from worker.retention import PURGE_INTERVAL, enqueue_purge
from worker.rollup import ROLLUP_INTERVAL, enqueue_rollup
from worker.sweeper import sweep
from worker.verification import RECHECK_INTERVAL, enqueue_recheck

log = logging.getLogger(__name__)

LOCK_KEY = "mailward:scheduler:lock"
#: Seconds the scheduler lock lives without renewal; a dead scheduler is replaced after this.
LOCK_TTL = 60
#: Longest sleep between two looks at the table (so the lock is renewed well within its TTL).
MAX_TICK = 5.0


@dataclass
class PeriodicJob:
    """One row of the schedule: what to call with the configuration, and how many seconds apart."""

    name: str
    interval: Callable[[Config], float]
    run: Callable[[Config], object]
    #: Monotonic time of the next run; 0: at start.
    next_at: float = 0.0


def periodic_jobs() -> list[PeriodicJob]:
    """The schedule. Each entry runs once at start, then every interval."""
    return [
        PeriodicJob("sweep", lambda cfg: cfg.sweep_interval, sweep),
        PeriodicJob("purge", lambda cfg: PURGE_INTERVAL, enqueue_purge),
        PeriodicJob("digests", lambda cfg: DIGEST_CHECK_INTERVAL, schedule_digests),
        PeriodicJob("rollup", lambda cfg: ROLLUP_INTERVAL, enqueue_rollup),
        PeriodicJob("directory", lambda cfg: DIRECTORY_SYNC_INTERVAL, enqueue_directory_syncs),
        PeriodicJob("domain-verification", lambda cfg: RECHECK_INTERVAL, enqueue_recheck),
        PeriodicJob("sa-update", lambda cfg: SA_UPDATE_INTERVAL, enqueue_sa_update),
        PeriodicJob("backup", lambda cfg: BACKUP_INTERVAL, enqueue_backup),  # only with MAILWARD_BACKUP_KEY_FILE
        PeriodicJob("dns-checklists", lambda cfg: DNS_REFRESH_INTERVAL, enqueue_refreshes),
    ]


def run_due(cfg: Config, jobs: list[PeriodicJob], now: float) -> list[str]:
    """Run every job whose time has come (in table order) and set its next time; the names of those run."""
    ran = []
    for job in jobs:
        if job.next_at > now:
            continue
        job.next_at = now + job.interval(cfg)
        ran.append(job.name)
        try:
            job.run(cfg)
        except (redis.RedisError, OSError) as exc:
            log.warning("scheduler: %s: Redis unavailable (%s); retrying next time", job.name, exc)
        except Exception:
            log.exception("scheduler: %s failed", job.name)
    return ran


def run_scheduler(cfg: Config, *, stop: threading.Event | None = None) -> None:
    require_current_schema(cfg)
    stop = stop or threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    me = f"{socket.gethostname()}:{id(stop)}"
    client = redis_client(cfg)
    jobs = periodic_jobs()
    table = ", ".join(f"{j.name} every {j.interval(cfg):g}s" for j in jobs)
    print(f"mailward scheduler: {table}", flush=True)
    beat_as = heartbeat.Identity.here("scheduler")
    handled, next_beat = 0, 0.0
    while not stop.is_set():
        try:
            if _hold_lock(client, me):
                handled += len(run_due(cfg, jobs, time.monotonic()))
        except (redis.RedisError, OSError) as exc:
            log.warning("scheduler: Redis unavailable (%s); retrying", exc)
        if time.monotonic() >= next_beat:
            heartbeat.beat_once(cfg, beat_as, handled)
            next_beat = time.monotonic() + heartbeat.INTERVAL
        next_at = min(j.next_at for j in jobs)
        stop.wait(min(MAX_TICK, max(0.0, next_at - time.monotonic())))
    heartbeat.remove_once(cfg, beat_as)
    try:
        if client.get(LOCK_KEY) == me.encode():
            client.delete(LOCK_KEY)
    except (redis.RedisError, OSError):
        pass


def _hold_lock(client: redis.Redis, me: str) -> bool:
    if client.set(LOCK_KEY, me, nx=True, ex=LOCK_TTL):
        return True
    if client.get(LOCK_KEY) == me.encode():
        client.expire(LOCK_KEY, LOCK_TTL)
        return True
    return False
