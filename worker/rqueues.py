"""RQ queues and how jobs are put on them (JSON-serialized: see :data:`tenants.platform.jobs.SERIALIZER`)."""

from __future__ import annotations

from typing import Any

from rq import Queue

from tenants.platform.config import Config
from tenants.platform.jobs import DELIVERY_JOB_TIMEOUT, QUEUES, SERIALIZER, enqueue_delivery, job_queue

# Delivery jobs are queued through tenants.platform.jobs, so that the web and services can ask for them too.
__all__ = ["QUEUES", "DELIVERY_JOB_TIMEOUT", "SERIALIZER", "queue", "enqueue_delivery"]


def queue(cfg: Config, name: str = "default", connection: Any = None) -> Queue:
    return job_queue(cfg, name, connection)
