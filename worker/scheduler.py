"""``mailward scheduler``: one process that enqueues periodic work. A Redis lock keeps it to one at a time."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from types import FrameType

import redis

from tenants.config import Config
from tenants.db import require_current_schema
from tenants.redisconn import redis_client
from worker.sweeper import sweep

log = logging.getLogger(__name__)

LOCK_KEY = "mailward:scheduler:lock"
#: Seconds the scheduler lock lives without renewal; a dead scheduler is replaced after this.
LOCK_TTL = 60


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
    print(f"mailward scheduler: sweeping the delivery queue every {cfg.sweep_interval:g}s", flush=True)
    while not stop.is_set():
        started = time.monotonic()
        try:
            if _hold_lock(client, me):
                sweep(cfg)
        except (redis.RedisError, OSError) as exc:
            log.warning("scheduler: Redis unavailable (%s); retrying", exc)
        except Exception:
            log.exception("scheduler: sweep failed")
        stop.wait(max(0.0, cfg.sweep_interval - (time.monotonic() - started)))
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
