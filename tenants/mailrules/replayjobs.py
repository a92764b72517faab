"""The replay as a background job: queued by the portal, run by the worker (:mod:`worker.rules_replay`), its progress
and report kept in Redis for a day under a key that names the tenant, so one tenant never reads another's job.

The status is JSON: ``state`` (queued, running, done, failed), ``done`` and ``total`` mails, ``report`` (a
:class:`~tenants.mailrules.replay.ReplayReport` as a dict) once done, ``error`` when failed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tenants.exceptions import ValidationError
from tenants.ids import new_id
from tenants.mailrules.replay import MAX_DAYS, parse_draft
from tenants.platform.config import Config
from tenants.platform.jobs import enqueue_job
from tenants.platform.redisconn import redis_client

#: The RQ job (a dotted path in ``worker``).
REPLAY_JOB = "worker.rules_replay.run"
#: Seconds one replay may run (20,000 mails, some read from the blob store).
REPLAY_TIMEOUT = 1800
#: Seconds a job's status and report are kept.
STATUS_TTL = 86400
#: Redis key of one job's status.
STATUS_KEY = "mailward:rules-replay:{tenant_id}:{job_id}"
#: What a job id looks like (:func:`tenants.ids.new_id`); anything else is no job.
JOB_ID_RE = re.compile(r"^[0-9A-Za-z]{1,32}$")


def write_status(cfg: Config, tenant_id: int, job_id: str, status: dict[str, Any], connection: Any = None) -> None:
    conn = connection or redis_client(cfg)
    conn.set(STATUS_KEY.format(tenant_id=tenant_id, job_id=job_id), json.dumps({"tenant_id": tenant_id} | status),
             ex=STATUS_TTL)


def replay_status(cfg: Config, tenant_id: int, job_id: str) -> dict[str, Any] | None:
    """The status of one of ``tenant_id``'s replays; None for an unknown, expired or another tenant's job."""
    if not JOB_ID_RE.match(job_id or ""):
        return None
    raw = redis_client(cfg).get(STATUS_KEY.format(tenant_id=tenant_id, job_id=job_id))
    if raw is None:
        return None
    status = json.loads(raw)
    return status if status.get("tenant_id") == tenant_id else None


def enqueue_replay(cfg: Config, tenant_id: int, since_days: int, draft: list[Any] | None) -> str:
    """Check the draft, queue a replay of the tenant's last ``since_days`` days and return its job id."""
    if not 1 <= since_days <= MAX_DAYS:
        raise ValidationError(f"the replay window is 1 to {MAX_DAYS} days")
    rules = None if draft is None else [r.spec.as_dict() for r in parse_draft(draft)]
    job_id = new_id()
    conn = redis_client(cfg)
    write_status(cfg, tenant_id, job_id, {"state": "queued", "done": 0, "total": 0, "since_days": since_days},
                 connection=conn)
    enqueue_job(cfg, REPLAY_JOB, tenant_id, job_id, since_days, rules, connection=conn, job_id=job_id,
                timeout=REPLAY_TIMEOUT, result_ttl=0, description=f"rules replay of tenant {tenant_id}")
    return job_id
