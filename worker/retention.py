"""Retention: purge mail whose time is up (``Message.expires_at``: quarantined mail, refused mail, sent digests),
tenant by tenant, in batches. Refused mail (verdict ``reject``: its rows are ``rejected``, final) is kept for the
tenant's spam retention, then goes like the rest; it has no blob, which the blob store's delete takes in its stride.

A purged message goes with everything that hangs off it: its raw bytes (the blob store), delivery rows, findings,
timeline events and views. The deletes are explicit, child tables first, rather than left to ``ON DELETE CASCADE``,
so the purge does not depend on the database enforcing foreign keys (SQLite does, with ``PRAGMA foreign_keys=ON``
from :mod:`tenants.platform.db`) and the blob store can be something else than a table. A message that still has a
delivery
under way (released late, retrying) is left for a later run.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime

from sqlalchemy import delete, select

from tenants.blobs import blob_store
from tenants.models import (
    PENDING_STATUSES,
    Delivery,
    Event,
    Finding,
    Message,
    MessageView,
    Tenant,
    UsedToken,
    utcnow,
)
from tenants.platform.config import Config, get_config
from tenants.platform.db import session_scope
from tenants.platform.jobs import enqueue_once
from tenants.scope import msp_scope, tenant_scope
from tenants.tokens import SPENT_TOKEN_KEEP

log = logging.getLogger(__name__)

#: Messages deleted per transaction: short transactions keep the ingress's commits flowing meanwhile.
PURGE_BATCH = 500
#: Seconds between purges (the scheduler queues one job per interval).
PURGE_INTERVAL = 3600
#: Seconds one purge job may run.
PURGE_JOB_TIMEOUT = 3600
#: The purge job (an RQ job on the default queue).
PURGE_JOB = "worker.retention.purge_job"
_QUEUED_KEY = "mailward:purge-queued"
#: The verdict of refused mail, and the key it is counted under in a purge report.
REJECT_VERDICT, REJECTED = "reject", "rejected"

Report = dict[str, dict[str, int]]


def purge_tenant(cfg: Config, tenant_id: int, *, now: datetime | None = None,
                 batch: int = PURGE_BATCH) -> dict[str, int]:
    """Purge one tenant's expired messages; returns {kind: count} (the quarantine kind, "rejected" for refused mail,
    else the direction, e.g. "digest": sent digests expire with their links)."""
    now = now or utcnow()
    counts: Counter[str] = Counter()
    pending = select(Delivery.id).where(Delivery.message_id == Message.id,
                                        Delivery.status.in_([s.value for s in PENDING_STATUSES]))
    with tenant_scope(tenant_id):
        while True:
            with session_scope(cfg) as session:
                rows = session.execute(
                    select(Message.id, Message.quarantine_kind, Message.direction, Message.verdict)
                    .where(Message.expires_at <= now, ~pending.exists())
                    .order_by(Message.expires_at).limit(batch)
                ).all()
                ids = [r[0] for r in rows]
                if ids:
                    for model in (MessageView, Event, Finding, Delivery):
                        session.execute(delete(model).where(model.message_id.in_(ids))  # type: ignore[attr-defined]
                                        .execution_options(synchronize_session=False))
                    blob_store.delete(session, ids)
                    session.execute(delete(Message).where(Message.id.in_(ids))
                                    .execution_options(synchronize_session=False))
                    counts.update(kind or (REJECTED if verdict == REJECT_VERDICT else direction)
                                  for _, kind, direction, verdict in rows)
            if len(rows) < batch:
                return dict(counts)


def purge(cfg: Config, *, now: datetime | None = None, batch: int = PURGE_BATCH) -> Report:
    """Purge every tenant's expired messages; returns {tenant name: {kind: count}} and logs one line per tenant.

    Also forgets spent digest-link tokens old enough to fail as expired anyway.
    """
    now = now or utcnow()
    with msp_scope(), session_scope(cfg) as session:
        due = session.execute(
            select(Tenant.id, Tenant.name).where(
                select(Message.id).where(Message.tenant_id == Tenant.id, Message.expires_at <= now).exists())
            .order_by(Tenant.id)
        ).all()
    report: Report = {}
    for tenant_id, name in due:
        counts = purge_tenant(cfg, tenant_id, now=now, batch=batch)
        if counts:
            report[name] = counts
            log.info("purged from tenant %s: %s", name, ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    with session_scope(cfg) as session:
        session.execute(delete(UsedToken).where(UsedToken.used_at < now - SPENT_TOKEN_KEEP))
    return report


def purge_job() -> Report:
    """The RQ job the scheduler queues hourly."""
    return purge(get_config())


def enqueue_purge(cfg: Config) -> bool:
    """Queue a purge job unless one was queued within the interval; True if queued now."""
    return enqueue_once(cfg, _QUEUED_KEY, PURGE_INTERVAL - 60, PURGE_JOB, timeout=PURGE_JOB_TIMEOUT, result_ttl=86400,
                        description="purge expired quarantined mail")
