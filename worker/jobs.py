"""Job functions. Each takes the tenant as an explicit argument and runs inside that tenant's scope."""

from __future__ import annotations

import logging

from sqlalchemy import select

from smtp.delivery import deliver_message
from smtp.mime import parse_mail
from smtp.verdict import strip_header_block
from tenants import directory, learning, quarantine
from tenants.blobs import blob_store
from tenants.models import RecipientVerification, Tenant
from tenants.platform.config import Config, get_config
from tenants.platform.db import session_scope
from tenants.platform.jobs import enqueue_once
from tenants.platform.redisconn import redis_client
from tenants.sarules import update as sarules_update
from tenants.scope import msp_scope, tenant_scope

log = logging.getLogger(__name__)

#: Seconds between two directory syncs of a tenant in LDAP mode (the scheduler queues one job per tenant).
DIRECTORY_SYNC_INTERVAL = 15 * 60
#: The RQ job that syncs one tenant's directory.
DIRECTORY_SYNC_JOB = "worker.jobs.sync_directory"
#: Seconds one directory sync may run (paging through a large directory with the LDAP timeouts per page).
DIRECTORY_SYNC_TIMEOUT = 600
#: Redis key that keeps a tenant's sync from being queued twice within one interval.
_SYNC_QUEUED_KEY = "mailward:directory-sync-queued:{tenant_id}"


def deliver(tenant_id: int, message_id: str) -> int:
    """Attempt every due delivery row of one message; returns how many rows were attempted."""
    n = deliver_message(get_config(), tenant_id, message_id)
    log.info("message %s: %d delivery row(s) attempted", message_id, n)
    return n


def report(tenant_id: int, message_id: str, spam: bool, actor: str) -> str:
    """Train the tenant's Bayes and content model with a stored mail as spam or ham (see
    :func:`tenants.quarantine.report`); then, if the tenant shares its reports, see whether enough tenants agree on
    this mail for the MSP's shared model to learn it (:func:`tenants.learning.consider_sharing`)."""
    cfg = get_config()
    with tenant_scope(tenant_id), session_scope(cfg) as session:
        raw = strip_header_block(blob_store.get(session, message_id), cfg.hostname)
        mail = parse_mail(raw)
        result = quarantine.report(session, message_id, spam=spam, actor=actor, mail=mail)
        offered = learning.fingerprint(mail) if learning.status(session, tenant_id).share else None
    if offered is not None:
        with msp_scope(), session_scope(cfg) as session:  # the agreement rule counts across tenants
            if learning.consider_sharing(session, offered, min_tenants=cfg.shared_learning_min_tenants):
                result += "; enough tenants agree: learnt by the shared model"
    log.info("message %s of tenant %d: %s", message_id, tenant_id, result)
    return result


def sync_directory(tenant_id: int) -> str:
    """Copy the tenant's LDAP directory into its valid recipients (see :func:`tenants.directory.sync`)."""
    cfg = get_config()
    with tenant_scope(tenant_id), session_scope(cfg) as session:
        result = directory.sync(session, cfg, tenant_id)
    return result.message


def enqueue_directory_syncs(cfg: Config) -> int:
    """Queue a directory sync for every active tenant in LDAP mode, unless one was queued within the interval."""
    with msp_scope(), session_scope(cfg) as session:  # the MSP's periodic work looks at every tenant's mode
        tenant_ids = list(session.scalars(
            select(RecipientVerification.tenant_id).join(Tenant, Tenant.id == RecipientVerification.tenant_id)
            .where(RecipientVerification.mode == "ldap", Tenant.suspended.is_(False))
            .order_by(RecipientVerification.tenant_id)))
    conn = redis_client(cfg)
    queued = 0
    for tenant_id in tenant_ids:
        queued += enqueue_once(cfg, _SYNC_QUEUED_KEY.format(tenant_id=tenant_id), max(1, DIRECTORY_SYNC_INTERVAL - 60),
                               DIRECTORY_SYNC_JOB, tenant_id, connection=conn, timeout=DIRECTORY_SYNC_TIMEOUT,
                               result_ttl=86400, description=f"sync the directory of tenant {tenant_id}")
    return queued


#: The RQ job that runs sa-update and, when it installed new rules, makes every process reload them.
SA_UPDATE_JOB = "worker.jobs.update_sa_rules"


def update_sa_rules() -> str:
    """Refresh SpamAssassin's rules with sa-update (see :mod:`tenants.sarules.update`); a failure is logged."""
    return sarules_update.update_rules(get_config()).message


def enqueue_sa_update(cfg: Config) -> bool:
    """Queue the daily sa-update run (once per interval across restarts of the scheduler)."""
    return enqueue_once(cfg, _SA_UPDATE_QUEUED_KEY, max(1, sarules_update.SA_UPDATE_INTERVAL - 60), SA_UPDATE_JOB,
                        timeout=sarules_update.SA_UPDATE_TIMEOUT + 60, result_ttl=86400,
                        description="refresh SpamAssassin's rules (sa-update)")


#: Redis key that keeps the sa-update job from being queued twice within one interval.
_SA_UPDATE_QUEUED_KEY = "mailward:sa-update-queued"
