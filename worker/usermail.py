"""Mail Mailward itself sends to one of a tenant's users (a quarantine digest, a set-password link): stored as the
tenant's mail and delivered by the worker's delivery path, with its retries, to the tenant's own mail server when
the address is in one of the tenant's domains, else to the address's MX."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from smtp.mailstore import NewMessage, store_message
from tenants.ids import new_id
from tenants.models import Domain
from tenants.platform.config import Config
from tenants.platform.jobs import request_delivery_after_commit


def queue_user_mail(session: Session, cfg: Config, tenant_id: int, to: str, *, sender: str, data: bytes,
                    direction: str, subject: str, explanation: str, retention_days: int) -> str:
    """Store ``data`` for ``to`` (a normalised address) in ``tenant_id``'s scope and ask for its delivery once the
    caller's transaction commits; the stored message's id."""
    own = session.scalar(select(Domain.id).where(Domain.tenant_id == tenant_id,
                                                 Domain.name == to.rpartition("@")[2]))
    msg = store_message(session, NewMessage(
        tenant_id=tenant_id, queue_id=new_id(), mail_from=sender, rcpts=[to], data=data,
        route="transport" if own is not None else "mx", direction=direction, header_from=sender,
        subject=subject, explanation=explanation, retention_days=retention_days,
    ))
    request_delivery_after_commit(session, cfg, tenant_id, msg.id)
    return msg.id
