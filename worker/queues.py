"""RQ queues and how jobs are put on them."""

from __future__ import annotations

from typing import Any

from rq import Queue

from tenants.config import Config
from tenants.jobs import DELIVERY_JOB_TIMEOUT, QUEUES, enqueue_delivery
from tenants.redisconn import redis_client

# Delivery jobs are queued through tenants.jobs, so that the web and services can ask for them too.
__all__ = ["QUEUES", "DELIVERY_JOB_TIMEOUT", "queue", "enqueue_delivery"]


def queue(cfg: Config, name: str = "default", connection: Any = None) -> Queue:
    return Queue(name, connection=connection or redis_client(cfg))
