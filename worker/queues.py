"""RQ queues and how jobs are put on them."""

from __future__ import annotations

from typing import Any

from rq import Queue

from tenants.config import Config
from tenants.redisconn import redis_client

#: Queue names, most urgent first; a worker serves them in this order.
QUEUES = ("delivery", "default")
#: Seconds one delivery job may run (several hosts, each with the SMTP timeout per step).
DELIVERY_JOB_TIMEOUT = 900


def queue(cfg: Config, name: str = "default", connection: Any = None) -> Queue:
    return Queue(name, connection=connection or redis_client(cfg))


def enqueue_delivery(cfg: Config, tenant_id: int, message_id: str, connection: Any = None) -> bool:
    """Queue a delivery job for one message unless one was queued moments ago; True if queued now.

    The guard is a short-lived Redis key, not RQ's unique job ids: a job whose worker was killed stays "started"
    in RQ until its timeout, and must not block the retry. A second job for the same message is harmless, since
    the rows are claimed atomically in the database; the guard only keeps the queue short.
    """
    conn = connection or redis_client(cfg)
    if not conn.set(f"mailward:deliver-queued:{message_id}", 1, nx=True, ex=_guard_seconds(cfg)):
        return False
    queue(cfg, "delivery", conn).enqueue(
        "worker.jobs.deliver", tenant_id, message_id, job_timeout=DELIVERY_JOB_TIMEOUT, result_ttl=0,
        failure_ttl=86400, description=f"deliver {message_id}",
    )
    return True


def _guard_seconds(cfg: Config) -> int:
    return max(2, int(cfg.sweep_interval * 2))
