"""``mailward worker``: an RQ worker on Mailward's queues."""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import suppress
from types import FrameType
from typing import Any

import redis
from rq import SimpleWorker

from tenants.metrics import serve_process_metrics
from tenants.platform.config import Config
from tenants.platform.db import require_current_schema
from tenants.platform.heartbeat import HeartbeatThread
from tenants.platform.redisconn import redis_client
from worker.rqueues import QUEUES, SERIALIZER, queue

log = logging.getLogger(__name__)

#: Seconds before a new work loop after RQ's quit (doubled while it keeps quitting, up to the maximum).
SERVE_AGAIN_START = 1.0
SERVE_AGAIN_MAX = 16.0


class MailwardWorker(SimpleWorker):
    """Runs jobs in the worker process itself (no fork per job): jobs are I/O-bound, and a pooled database
    engine must not be shared across a fork. A job still has its timeout; a crash loses no mail, since the
    database rows stay due and the sweeper queues them again. Jobs are read as JSON only: a pickled job written
    into Redis by anyone else fails to load instead of running code."""

    #: Jobs this process ran (successful or not), for the cluster view.
    handled = 0

    #: Set by SIGTERM or SIGINT: the work loop ended because it was asked to.
    stop_asked: threading.Event | None = None

    def execute_job(self, job: Any, queue: Any) -> Any:
        try:
            return super().execute_job(job, queue)
        finally:
            self.handled += 1

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_asked is not None:
            self.stop_asked.set()
        super().request_stop(signum, frame)


def _paused(seconds: float, stop: threading.Event) -> bool:
    """Sleep ``seconds`` in short steps (a signal handler sets ``stop``; it never waits on it); whether stopped."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < deadline:
        time.sleep(0.1)
    return stop.is_set()


def run_worker(cfg: Config, *, burst: bool = False) -> bool:
    """Serve the queues until SIGTERM or SIGINT (``burst``: until they are empty); whether any job ran.

    RQ's work loop quits when Redis goes away at the wrong moment (in the middle of a job, its bookkeeping fails),
    and its teardown then raises: a new loop takes over once Redis answers again, so a Redis outage needs no
    restart of the worker."""
    require_current_schema(cfg)
    conn = redis_client(cfg)
    worker = MailwardWorker([queue(cfg, name, conn) for name in QUEUES], connection=conn, serializer=SERIALIZER)
    print(f"mailward worker: serving queues {', '.join(QUEUES)}", flush=True)
    done = [0]  # jobs of the work loops before the current one
    beats = HeartbeatThread(cfg, "worker", lambda: done[0] + worker.handled)
    beats.start()
    metrics_server = serve_process_metrics(cfg)  # one process: jobs run in it (no fork per job)
    try:
        if burst:
            return worker.work(burst=True, logging_level=cfg.log_level, with_scheduler=False)
        stop = threading.Event()
        delay = SERVE_AGAIN_START
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        while True:
            for sig, handler in handlers.items():  # as at the start, until RQ installs its own
                signal.signal(sig, handler)
            worker.stop_asked = stop
            started = time.monotonic()
            try:
                worker.work(logging_level=cfg.log_level, with_scheduler=False)
            except redis.RedisError as exc:  # Redis away at the loop's start, or in RQ's teardown after its quit
                log.warning("worker: Redis unavailable (%s)", exc)
                with suppress(Exception):
                    worker.unsubscribe()
            if stop.is_set():
                return done[0] + worker.handled > 0
            # RQ quits its loop on an error outside a job (Redis gone in the middle of one, most often): a new loop
            # serves the queues once Redis answers, without a restart of the process. Signals meanwhile stop it.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda signum, frame: stop.set())
            ran = time.monotonic() - started
            delay = SERVE_AGAIN_START if ran > SERVE_AGAIN_MAX else min(delay * 2, SERVE_AGAIN_MAX)
            log.warning("worker: the work loop quit; serving again in %gs", delay)
            while not _paused(delay, stop):
                done[0] += worker.handled
                worker.handled = 0
                try:
                    # A new name: the old one may still look alive in Redis (its teardown failed).
                    worker = MailwardWorker([queue(cfg, name, conn) for name in QUEUES], connection=conn,
                                            serializer=SERIALIZER)
                    break
                except redis.RedisError as exc:
                    log.warning("worker: Redis unavailable (%s); trying again in %gs", exc, delay)
                    delay = min(delay * 2, SERVE_AGAIN_MAX)
            if stop.is_set():
                return done[0] + worker.handled > 0
    finally:
        beats.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
