"""RQ queues and how jobs are put on them (JSON-serialized: see :data:`tenants.jobs.SERIALIZER`)."""

from __future__ import annotations

from typing import Any

from rq import Queue

from tenants.config import Config
from tenants.jobs import DELIVERY_JOB_TIMEOUT, QUEUES, SERIALIZER, enqueue_delivery, job_queue

# Delivery jobs are queued through tenants.jobs, so that the web and services can ask for them too.
__all__ = ["QUEUES", "DELIVERY_JOB_TIMEOUT", "SERIALIZER", "queue", "enqueue_delivery"]


def queue(cfg: Config, name: str = "default", connection: Any = None) -> Queue:
    return job_queue(cfg, name, connection)
