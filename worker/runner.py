"""``mailward worker``: an RQ worker on Mailward's queues."""

from __future__ import annotations

from typing import Any

from rq import SimpleWorker

from tenants.config import Config
from tenants.db import require_current_schema
from tenants.heartbeat import HeartbeatThread
from tenants.redisconn import redis_client
from worker.queues import QUEUES, SERIALIZER, queue


class MailwardWorker(SimpleWorker):
    """Runs jobs in the worker process itself (no fork per job): jobs are I/O-bound, and a pooled database
    engine must not be shared across a fork. A job still has its timeout; a crash loses no mail, since the
    database rows stay due and the sweeper queues them again. Jobs are read as JSON only: a pickled job written
    into Redis by anyone else fails to load instead of running code."""

    #: Jobs this process ran (successful or not), for the cluster view.
    handled = 0

    def execute_job(self, job: Any, queue: Any) -> Any:
        try:
            return super().execute_job(job, queue)
        finally:
            self.handled += 1


def run_worker(cfg: Config, *, burst: bool = False) -> bool:
    require_current_schema(cfg)
    conn = redis_client(cfg)
    worker = MailwardWorker([queue(cfg, name, conn) for name in QUEUES], connection=conn, serializer=SERIALIZER)
    print(f"mailward worker: serving queues {', '.join(QUEUES)}", flush=True)
    beats = HeartbeatThread(cfg, "worker", lambda: worker.handled)
    beats.start()
    try:
        return worker.work(burst=burst, logging_level=cfg.log_level, with_scheduler=False)
    finally:
        beats.stop()
