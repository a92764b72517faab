"""Quarantined mail for tests, stored through the function the ingress commits with (smtp.mailstore.store_message)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from email.message import EmailMessage

from sqlalchemy import update

from smtp.mailstore import NewMessage, store_message
from tenants.ids import new_id
from tenants.models import Message
from tenants.platform import db as tdb
from tenants.platform.config import Config
from tenants.scope import tenant_scope


def raw_mail(sender: str = "spammer@junk.example", subject: str = "Cheap pills", to: str = "bob@acme.test",
             body: str = "Buy now.\n") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = f"<{new_id()}@junk.example>"
    msg.set_content(body)
    return msg.as_bytes()


def hold(cfg: Config, tenant_id: int, *, rcpts: Sequence[str] = ("bob@acme.test",), kind: str = "spam",
         sender: str = "spammer@junk.example", subject: str = "Cheap pills", score: float = 9.0,
         received_at: datetime | None = None, expires_in: timedelta = timedelta(days=14),
         findings: Sequence[tuple[str, float, str]] = (("MIME_DEFECT", 9.0, "broken"),),
         data: bytes | None = None) -> str:
    """Store one quarantined mail (rows held) for ``tenant_id`` and commit; returns the message id."""
    data = data or raw_mail(sender, subject, rcpts[0])
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        msg = store_message(s, NewMessage(
            tenant_id=tenant_id, queue_id=new_id(), mail_from=sender, rcpts=list(rcpts), data=data,
            client_ip="203.0.113.9", header_from=sender, subject=subject, verdict="quarantine", score=score,
            explanation=f"quarantine ({kind})", quarantine_kind=kind, findings=findings, deliver=False,
            retention_days=14,
        ))
        s.flush()
        when = received_at or msg.received_at
        s.execute(update(Message).where(Message.id == msg.id)
                  .values(received_at=when, expires_at=when + expires_in))
        return msg.id
