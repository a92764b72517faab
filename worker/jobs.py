"""Job functions. Each takes the tenant as an explicit argument and runs inside that tenant's scope."""

from __future__ import annotations

import logging

from smtp.delivery import deliver_message
from smtp.mime import parse_mail
from smtp.verdict import strip_header_block
from tenants import quarantine
from tenants.blobs import blob_store
from tenants.config import get_config
from tenants.db import session_scope
from tenants.scope import tenant_scope

log = logging.getLogger(__name__)


def deliver(tenant_id: int, message_id: str) -> int:
    """Attempt every due delivery row of one message; returns how many rows were attempted."""
    n = deliver_message(get_config(), tenant_id, message_id)
    log.info("message %s: %d delivery row(s) attempted", message_id, n)
    return n


def report(tenant_id: int, message_id: str, spam: bool, actor: str) -> str:
    """Train the tenant's Bayes with a stored mail as spam or ham (see :func:`tenants.quarantine.report`)."""
    cfg = get_config()
    with tenant_scope(tenant_id), session_scope(cfg) as session:
        raw = strip_header_block(blob_store.get(session, message_id), cfg.hostname)
        result = quarantine.report(session, message_id, spam=spam, actor=actor, mail=parse_mail(raw))
    log.info("message %s of tenant %d: %s", message_id, tenant_id, result)
    return result
