"""The scheduled re-check of pending domains: a domain a tenant added routes as soon as its TXT record is published,
without anyone pressing "Check now" (see :func:`tenants.verification.recheck_pending`)."""

from __future__ import annotations

import logging

from tenants.platform.config import Config, get_config
from tenants.platform.db import session_scope
from tenants.platform.jobs import enqueue_once
from tenants.platform.redisconn import bump_policy_version
from tenants.scope import msp_scope
from tenants.verification import recheck_pending

log = logging.getLogger(__name__)

#: Seconds between two re-checks (the scheduler queues one job per interval).
RECHECK_INTERVAL = 600
#: Seconds one re-check job may run (a lookup takes at most :data:`tenants.dnslookup.LOOKUP_TIMEOUT`).
RECHECK_JOB_TIMEOUT = 1200
#: The re-check job (an RQ job on the default queue).
RECHECK_JOB = "worker.verification.recheck_job"
_QUEUED_KEY = "mailward:domain-recheck-queued"


def recheck(cfg: Config) -> list[str]:
    """Verify the pending domains whose record is now published; the ingresses see them at once."""
    with msp_scope(), session_scope(cfg) as session:  # the MSP's periodic work looks at every tenant's domains
        verified = recheck_pending(session, cfg)
    if verified:
        bump_policy_version(cfg)
        log.info("domains verified by the scheduled re-check: %s", ", ".join(verified))
    return verified


def recheck_job() -> list[str]:
    """The RQ job the scheduler queues every :data:`RECHECK_INTERVAL`."""
    return recheck(get_config())


def enqueue_recheck(cfg: Config) -> bool:
    """Queue a re-check unless one was queued within the interval; True if queued now."""
    return enqueue_once(cfg, _QUEUED_KEY, RECHECK_INTERVAL - 60, RECHECK_JOB, timeout=RECHECK_JOB_TIMEOUT,
                        result_ttl=86400, description="re-check pending domain ownership records")
