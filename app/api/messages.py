"""``/api/v1/messages``: the tracking center, through :mod:`tenants.tracking` — every accepted message, its verdict
and why, where each recipient's copy went, and its timeline."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE

from app.access import allow_api
from app.api import schemas as sch
from app.api.actions import committed
from app.api.audit import record
from app.api.auth import caller
from app.api.blueprint import bp, narrowed_to
from app.extensions import db
from tenants import tracking
from tenants.models import Message


def _summary(m: Message, recipients: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "id": m.id, "tenant_id": m.tenant_id, "queue_id": m.queue_id, "direction": m.direction,
        "received_at": m.received_at, "mail_from": m.mail_from, "header_from": m.header_from, "subject": m.subject,
        "size": m.size, "verdict": m.verdict, "score": m.score, "quarantine_kind": m.quarantine_kind,
        "recipients": [{"rcpt": r, "status": s} for r, s in recipients],
    }


@bp.route("/messages", methods=["GET"], endpoint="list_messages", tags=["messages"])
@allow_api("read")
@bp.arguments(sch.MessageArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, sch.MessagePage)
def list_messages(cursor: str | None = None, limit: int = sch.PAGE_SIZE, tenant_id: int | None = None,
                  **filters: Any) -> dict[str, Any]:
    """Messages by sender, recipient, subject, queue id, time or verdict, newest first (keyset paging: follow
    ``next_cursor`` until it is null)."""
    session = db.session
    with narrowed_to(tenant_id):
        page, next_cursor = tracking.search(session, after=cursor, limit=limit, **filters)
        rcpts = tracking.recipients(session, [m.id for m in page])
    return {"items": [_summary(m, rcpts.get(m.id, [])) for m in page], "next_cursor": next_cursor}


@bp.route("/messages/<msgid:message_id>", methods=["GET"], endpoint="get_message", tags=["messages"])
@allow_api("read")
@bp.response(200, sch.MessageDetailSchema)
def get_message(message_id: str) -> dict[str, Any]:
    """One message with its findings, deliveries and timeline (another tenant's is 404); the read is recorded as
    an envelope-level access, as the tracking center records a person's."""
    session = db.session
    d = tracking.detail(session, message_id)
    m = d.message
    with committed():
        tracking.record_view(session, m, caller().actor)
        record("tracking.view", f"message {m.id}", tenant_id=m.tenant_id)
    out = _summary(m, [(x.rcpt, x.status) for x in d.deliveries])
    out.update(client_ip=m.client_ip, client_helo=m.client_helo, message_id_header=m.message_id_header,
               explanation=m.explanation, expires_at=m.expires_at, has_content=d.has_content, findings=d.findings,
               deliveries=d.deliveries, events=d.events)
    return out
