"""RQ queues and how jobs are put on them."""

from __future__ import annotations

from typing import Any

from rq import Queue
from rq.exceptions import DuplicateJobError

from tenants.config import Config
from tenants.redisconn import redis_client

#: Queue names, most urgent first; a worker serves them in this order.
QUEUES = ("delivery", "default")
#: Seconds one delivery job may run (several hosts, each with the SMTP timeout per step).
DELIVERY_JOB_TIMEOUT = 900


def queue(cfg: Config, name: str = "default", connection: Any = None) -> Queue:
    return Queue(name, connection=connection or redis_client(cfg))


def enqueue_delivery(cfg: Config, tenant_id: int, message_id: str, connection: Any = None) -> bool:
    """Queue a delivery job for one message unless one is already queued or running; True if queued now."""
    try:
        queue(cfg, "delivery", connection).enqueue(
            "worker.jobs.deliver", tenant_id, message_id, job_id=f"deliver-{message_id}", unique=True,
            job_timeout=DELIVERY_JOB_TIMEOUT, result_ttl=0, failure_ttl=86400,
            description=f"deliver {message_id}",
        )
        return True
    except DuplicateJobError:
        return False
