"""The delivery sweeper: finds rows that are due (retries, and claims a crashed process left) and queues jobs."""

from __future__ import annotations

import logging

from tenants import deliveries
from tenants.platform.config import Config
from tenants.platform.db import session_scope
from tenants.scope import msp_scope
from worker.rqueues import enqueue_delivery

log = logging.getLogger(__name__)

#: Most messages one sweep queues; the rest wait for the next sweep.
SWEEP_BATCH = 5000


def sweep(cfg: Config) -> int:
    """Queue a delivery job for every message with a due row; returns how many jobs were queued."""
    with msp_scope(), session_scope(cfg) as session:
        due = deliveries.due_messages(session, SWEEP_BATCH)
    queued = sum(enqueue_delivery(cfg, tenant_id, message_id) for tenant_id, message_id in due)
    if queued:
        log.info("sweeper queued %d delivery job(s) of %d due message(s)", queued, len(due))
    return queued


def flush(cfg: Config) -> int:
    """Make every deferred row due now (``mailward queue flush``), then sweep; returns jobs queued."""
    with msp_scope(), session_scope(cfg) as session:
        deliveries.flush(session)
    return sweep(cfg)
