"""The tenant's quarantine in the portal: tenant_admin acts, tenant_auditor reads, and msp_helpdesk viewing the tenant
as it releases, deletes and reports (README: "read and quarantine actions") but neither edits the tenant's lists nor
releases a virus or a copy to another address, nor downloads the raw mail: those stay with admins.

Routes on the ``portal`` blueprint (``/portal/quarantine``): a filtered list paged by keyset cursor, bulk release
and delete, one mail's detail (envelope, findings with their positive and negative sums, attachments, headers,
timeline, who has seen it) with a safe preview in a sandboxed frame, the raw mail for admins, and the actions.
A virus is released only by an admin, one at a time, after a confirmation (a second POST with ``confirm=1``).
Everything runs in the signed-in user's tenant scope: another tenant's message id is a 404 like a missing one.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time, timedelta
from typing import Any

from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from app import held, held_actions
from app.access import QUARANTINE_HELPDESK, allow
from app.actions import attempt
from app.audit import audit
from app.csp import preview_response
from app.extensions import config, db
from app.forms import QuarantineFilterForm
from app.portal import TENANT_ROLES, bp
from tenants import quarantine as q
from tenants.blobs import blob_store
from tenants.exceptions import PermissionDenied, ValidationError
from tenants.models import Event, Role

log = logging.getLogger(__name__)

#: What the detail page's buttons post as ``action``.
ACTIONS = ("release", "release_to", "delete", "allow_release", "block_delete", "report_spam", "report_ham")
#: Actions that deliver the mail (a virus needs a confirmation for them).
RELEASES = ("release", "release_to")
#: What the helpdesk may do to one held mail (the list actions administer the tenant; a copy elsewhere is an admin's).
HELPDESK_ACTIONS = ("release", "delete", "report_spam", "report_ham")


def _envelope(msg: Any) -> str:
    """What an access entry says about the mail: its envelope, never its content."""
    return f"from {msg.mail_from or '<>'}, subject {msg.subject or ''!r}"[:1000]


def _is_admin() -> bool:
    return current_user.role is Role.TENANT_ADMIN


def _can_act() -> bool:
    """Admins, and the helpdesk viewing the tenant as it, act on held mail."""
    return _is_admin() or (bool(current_user.acting_as) and current_user.real_role in QUARANTINE_HELPDESK)


def _filters(form: QuarantineFilterForm) -> dict[str, Any]:
    """:func:`tenants.quarantine.search` arguments from a validated filter form."""
    return {
        "kind": form.kind.data or None,
        "rcpt": (form.rcpt.data or "").strip() or None,
        "sender": (form.sender.data or "").strip() or None,
        "text": (form.subject.data or "").strip() or None,
        "since": datetime.combine(form.since.data, time.min, UTC) if form.since.data else None,
        "until": datetime.combine(form.until.data + timedelta(days=1), time.min, UTC) if form.until.data else None,
        "min_score": float(form.min_score.data) if form.min_score.data is not None else None,
        "max_score": float(form.max_score.data) if form.max_score.data is not None else None,
    }


@bp.route("/quarantine/")
@allow(*TENANT_ROLES)
def quarantine() -> ResponseReturnValue:
    return held.list_page(db.session, "portal/quarantine.html", QuarantineFilterForm, _filters, can_act=_can_act())


@bp.route("/quarantine/bulk", methods=["POST"])
@allow(Role.TENANT_ADMIN, viewing_as=QUARANTINE_HELPDESK)
def quarantine_bulk() -> ResponseReturnValue:
    s = db.session
    ids = held.selected_ids()
    action = request.form.get("action")
    back = url_for("portal.quarantine")
    query = held.safe_query(request.form.get("back", ""))
    if query:
        back += "?" + query
    if action not in ("release", "delete"):
        abort(400)
    if not ids:
        flash("Select at least one message.", "error")
        return redirect(back)
    if action == "release":
        kinds = held.kinds_of(s, ids)
        refused = {i: "a virus is released one at a time, from its own page, after a confirmation"
                   for i in ids if kinds.get(i) == "virus"}
        result = q.release_many(s, config(), [i for i in ids if i not in refused], actor=current_user.email,
                                actor_is_admin=_is_admin())
        audit("quarantine.bulk_release", ", ".join(ids)[:500], f"{len(ids)} selected")
        s.commit()
        held.flash_bulk(result, "released", refused)
    else:
        result = q.delete_many(s, ids, actor=current_user.email, cfg=config())
        audit("quarantine.bulk_delete", ", ".join(ids)[:500], f"{len(ids)} selected")
        s.commit()
        held.flash_bulk(result, "deleted")
    return redirect(back)


@bp.route("/quarantine/<message_id>")
@allow(*TENANT_ROLES)
def quarantine_message(message_id: str) -> ResponseReturnValue:
    s = db.session
    q.mark_seen(s, message_id, current_user.email)  # first, so "seen by" lists this visit too
    detail = q.detail(s, message_id)
    audit("quarantine.view", f"message {detail.message.id}", _envelope(detail.message))
    s.commit()
    return render_template("portal/quarantine_message.html", d=detail, m=detail.message, can_act=_can_act(),
                           is_admin=_is_admin(),
                           held_rcpts=[r for r, status in detail.rcpts if status == "quarantined"])


@bp.route("/quarantine/<message_id>/preview")
@allow(*TENANT_ROLES)
def quarantine_preview(message_id: str) -> ResponseReturnValue:
    """The preview frame's document (sanitised HTML or the text), under its own strict CSP."""
    s = db.session
    response = preview_response(held.preview_of(s, message_id))
    audit("quarantine.preview", f"message {message_id}")
    s.commit()
    return response


@bp.route("/quarantine/<message_id>/raw")
@allow(Role.TENANT_ADMIN)
def quarantine_raw(message_id: str) -> ResponseReturnValue:
    """The mail as received, as a download (never shown inline); the access is recorded."""
    s = db.session
    msg = q.get(s, message_id)
    data = blob_store.get(s, msg.id)
    q.mark_seen(s, msg.id, current_user.email)
    s.add(Event(tenant_id=msg.tenant_id, message_id=msg.id, kind="downloaded",
                detail=f"raw message downloaded by {current_user.email}"))
    audit("quarantine.raw", f"message {msg.id}", _envelope(msg))
    s.commit()
    log.info("raw message %s downloaded by %s", msg.id, current_user.email)
    return Response(data, mimetype="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{msg.id}.eml"'})


def _perform(message_id: str, action: str, to: str | None) -> str:
    """Carry out one action in the request's session (the caller commits); what it did, in words."""
    s, cfg, actor, admin = db.session, config(), current_user.email, _is_admin()
    if action in held_actions.ACTIONS:  # allow_release and block_delete come from admins only (HELPDESK_ACTIONS)
        return held_actions.perform(s, cfg, message_id, action, actor=actor, admin=admin)
    if action == "release_to":
        if not to:
            raise ValidationError("give the address to release the message to")
        # A tenant's admin may send a copy anywhere (it can download the raw mail as well).
        copy = q.release(s, cfg, message_id, actor=actor, to=to, actor_is_admin=admin, outside_ok=admin)
        return f"Message {copy}."
    spam = action == "report_spam"
    q.request_report(s, cfg, message_id, spam=spam, actor=actor)
    return f"Reported as {'spam' if spam else 'not spam'}: the filter learns from it shortly."


@bp.route("/quarantine/<message_id>/act", methods=["POST"])
@allow(Role.TENANT_ADMIN, viewing_as=QUARANTINE_HELPDESK)
def quarantine_act(message_id: str) -> ResponseReturnValue:
    action = request.form.get("action", "")
    if action not in ACTIONS:
        abort(400)
    if not _is_admin() and action not in HELPDESK_ACTIONS:
        abort(404)  # as for a view the role may not call: no oracle of what exists
    msg = q.get(db.session, message_id)
    mid, kind = msg.id, msg.quarantine_kind
    to = (request.form.get("to") or "").strip() or None
    if kind == "virus" and action in RELEASES and not _is_admin():
        flash("A virus can only be released by an administrator.", "error")
        return redirect(url_for("portal.quarantine_message", message_id=mid))
    if kind == "virus" and action == "allow_release":
        flash("The sender of a virus is not put on the allow list; release the message on its own if you must.",
              "error")
        return redirect(url_for("portal.quarantine_message", message_id=mid))
    if kind == "virus" and action in RELEASES and request.form.get("confirm") != "1":
        return render_template("portal/quarantine_confirm.html", m=msg, action=action, to=to)
    with attempt(ValidationError, PermissionDenied) as outcome:
        done = _perform(mid, action, to)
        audit(f"quarantine.{action}", f"message {mid}", done)
    if outcome:
        flash(done, "success")
    return redirect(url_for("portal.quarantine_message", message_id=mid))
