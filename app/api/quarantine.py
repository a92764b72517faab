"""``/api/v1/quarantine``: find held mail, look into it, release, delete, report; through :mod:`tenants.quarantine`.

A key acts as an administrator of its scope (every recipient's rows); a virus is released only with
``"confirm_virus": true``, as the portal asks its admins to confirm. A copy released ``to`` another address stays
inside the mail's tenant (an address in one of its domains) unless the key also holds the ``write`` scope: a key
made for quarantine work cannot send the tenant's mail out of it. Actions are written to the mail's timeline as
``api key mw_...``.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE

from app.access import allow_api
from app.api import schemas as sch
from app.api.actions import committed
from app.api.audit import record
from app.api.auth import caller
from app.api.blueprint import bp, narrowed_to
from app.api.errors import ApiError
from app.extensions import config, db
from tenants import lists, tracking
from tenants import quarantine as q
from tenants.addresses import normalize_address

#: The scope a key needs, besides ``quarantine``, to release a copy to an address outside the mail's tenant.
RELEASE_OUTSIDE_SCOPE = "write"


@bp.route("/quarantine", methods=["GET"], endpoint="list_quarantine", tags=["quarantine"])
@allow_api("read")
@bp.arguments(sch.QuarantineArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, sch.QuarantinePage)
def list_quarantine(cursor: str | None = None, limit: int = sch.PAGE_SIZE, tenant_id: int | None = None,
                    held: bool = True, **filters: Any) -> dict[str, Any]:
    """Held mail, newest first, one page at a time (keyset paging: follow ``next_cursor`` until it is null)."""
    with narrowed_to(tenant_id):
        items, next_cursor = q.search(db.session, after=cursor, limit=limit, held_only=held, **filters)
    return {"items": items, "next_cursor": next_cursor}


@bp.route("/quarantine/<msgid:message_id>", methods=["GET"], endpoint="get_quarantined", tags=["quarantine"])
@allow_api("read")
@bp.response(200, sch.QuarantineDetailSchema)
def get_quarantined(message_id: str) -> dict[str, Any]:
    """One quarantined mail: envelope, headers, findings, attachments with their real types, the text, timeline.
    The read is recorded as an envelope-level access, as the portal records a person's."""
    session = db.session
    d = q.detail(session, message_id)
    m = d.message
    with committed():
        tracking.record_view(session, m, caller().actor)
        record("quarantine.view", f"message {m.id}",
               f"from {m.mail_from or '<>'}, subject {m.subject or ''!r}"[:1000], tenant_id=m.tenant_id)
    held = [rcpt for rcpt, status in d.rcpts if status == "quarantined"]
    return {
        "id": m.id, "tenant_id": m.tenant_id, "kind": m.quarantine_kind or "", "received_at": m.received_at,
        "mail_from": m.mail_from, "header_from": m.header_from, "subject": m.subject, "score": m.score,
        "expires_at": m.expires_at, "rcpts": held, "queue_id": m.queue_id, "client_ip": m.client_ip,
        "verdict": m.verdict, "explanation": m.explanation,
        "recipients": [{"rcpt": r, "status": s} for r, s in d.rcpts],
        "headers": [{"name": n, "value": v} for n, v in d.headers],
        "findings": d.findings, "positive_score": d.positive_score, "negative_score": d.negative_score,
        "attachments": d.attachments, "preview_text": d.preview.text, "defects": d.defects,
        "events": [{"at": at, "kind": kind, "detail": detail} for at, kind, detail in d.events],
    }


@bp.route("/quarantine/<msgid:message_id>/release", methods=["POST"], endpoint="release_quarantined",
          tags=["quarantine"])
@allow_api("quarantine")
@bp.arguments(sch.ReleaseSchema, required=False)
@bp.response(200, sch.ReleaseResultSchema)
def release_quarantined(body: dict[str, Any], message_id: str) -> dict[str, Any]:
    """Deliver a held mail to its held recipients (or a copy ``to`` another address: one in the tenant's domains, or
    anywhere with the ``write`` scope too, else 403). 409 if nothing is held."""
    session, cfg = db.session, config()
    to = body.get("to")
    if to is not None:
        lists.validate_value(normalize_address(to), "address")  # a bad address is 422, not a conflict
    if q.get(session, message_id).quarantine_kind == "virus" and not body.get("confirm_virus"):
        raise ApiError(409, "confirmation_required", "this mail carries a virus: send confirm_virus=true to release it")
    with committed(status=409, code="conflict"):  # nothing held (any more)
        result = q.release(session, cfg, message_id, actor=caller().actor, to=to, actor_is_admin=True,
                           outside_ok=RELEASE_OUTSIDE_SCOPE in caller().scopes)
    return {"message_id": result.message_id, "rcpts": list(result.rcpts), "to": result.to}


@bp.route("/quarantine/<msgid:message_id>/delete", methods=["POST"], endpoint="delete_quarantined", tags=["quarantine"])
@allow_api("quarantine")
@bp.response(200, sch.DeleteResultSchema)
def delete_quarantined(message_id: str) -> dict[str, Any]:
    """Never deliver a held mail (it stays listed as deleted until the purge). 409 if nothing is held."""
    with committed(status=409, code="conflict"):  # nothing held (any more)
        gone = q.delete(db.session, message_id, actor=caller().actor, cfg=config())
    return {"message_id": message_id, "rcpts": list(gone)}


@bp.route("/quarantine/<msgid:message_id>/report", methods=["POST"], endpoint="report_quarantined", tags=["quarantine"])
@allow_api("quarantine")
@bp.arguments(sch.ReportSchema)
@bp.response(202, sch.ReportResultSchema)
def report_quarantined(body: dict[str, Any], message_id: str) -> dict[str, Any]:
    """Train the tenant's Bayes filter with this mail as spam or as ham (the worker does it after the answer)."""
    with committed():
        q.request_report(db.session, config(), message_id, spam=body["spam"], actor=caller().actor)
    return {"message_id": message_id, "spam": body["spam"], "status": "queued"}
