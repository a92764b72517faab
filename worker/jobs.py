"""Job functions. Each takes the tenant as an explicit argument and runs inside that tenant's scope."""

from __future__ import annotations

import logging

from smtp.delivery import deliver_message
from tenants.config import get_config

log = logging.getLogger(__name__)


def deliver(tenant_id: int, message_id: str) -> int:
    """Attempt every due delivery row of one message; returns how many rows were attempted."""
    n = deliver_message(get_config(), tenant_id, message_id)
    log.info("message %s: %d delivery row(s) attempted", message_id, n)
    return n
