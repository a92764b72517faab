"""The end user's quarantine (``/q``): their own held spam, a safe preview, release and delete; their own lists
(:mod:`app.quarantine.lists`) and the two pages digest links open (:mod:`app.quarantine.links`) join this blueprint.

Users (and tenant admins, for their own mail) see only mail held for their own addresses: their login e-mail and
aliases (:func:`tenants.addresses.user_addresses`), passed to every service call as ``rcpts``. Only the spam
quarantine is theirs: virus and attachment holds are for admins (the portal), as in the digests. Any other message
id — another user's, another tenant's, a virus — answers 404 like a missing one.

Every page of the blueprint carries the tenant's branding (:mod:`tenants.branding`, :mod:`app.csp`).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from werkzeug.wrappers import Response

from app import held, held_actions
from app.access import allow
from app.actions import attempt
from app.audit import audit
from app.csp import CONTENT_SECURITY_POLICY, brand_css, branded_policy, preview_response
from app.extensions import config, db
from app.forms import MyQuarantineFilterForm
from tenants import quarantine as q
from tenants.addresses import user_addresses
from tenants.branding import Brand, brand_of
from tenants.exceptions import NotFound, PermissionDenied, ValidationError
from tenants.models import Message, Role, Tenant, User
from tenants.scope import load

bp = Blueprint("quarantine", __name__, url_prefix="/q")

#: Who has a personal quarantine: users, and tenant admins for their own mail.
OWNERS = (Role.USER, Role.TENANT_ADMIN)
#: Kinds of quarantine an end user sees (virus and attachment holds are for admins).
USER_KINDS = ("spam",)
#: What the detail page's buttons post as ``action``.
ACTIONS = held_actions.ACTIONS


# --- branding -------------------------------------------------------------------------------------------------------

def brand_for(tenant_id: int | None) -> Brand | None:
    tenant = db.session.get(Tenant, tenant_id) if tenant_id is not None else None  # Tenant is not tenant-owned
    return brand_of(tenant) if tenant is not None else None


@bp.before_request
def _signed_in_brand() -> None:
    if current_user.is_authenticated and current_user.tenant_id is not None:
        g.brand = brand_for(current_user.tenant_id)


@bp.context_processor
def _brand_context() -> dict[str, object]:
    brand = g.get("brand")
    return {"brand": brand, "brand_css": brand_css(brand) if brand else None}


@bp.after_request
def _brand_policy(response: Response) -> Response:
    """Allow the brand's style block and logo origin; a response with its own policy (the preview) keeps it."""
    brand = g.get("brand")
    if brand is not None:
        response.headers.setdefault("Content-Security-Policy", branded_policy(CONTENT_SECURITY_POLICY, brand))
    return response


# --- the signed-in user's quarantine --------------------------------------------------------------------------------

def _me() -> User:
    return load(db.session, User, current_user.user_id)


def _mine() -> list[str]:
    """The addresses whose held mail the signed-in user may see and act on."""
    return user_addresses(db.session, _me())


def _own_message(message_id: str, rcpts: list[str]) -> Message:
    msg = q.get(db.session, message_id, rcpts=rcpts)
    if msg.quarantine_kind not in USER_KINDS:
        raise NotFound(f"Message {message_id} not found")
    return msg


def _my_filters(form: MyQuarantineFilterForm) -> dict[str, Any]:
    """:func:`tenants.quarantine.search` arguments from a validated filter form: only the user's own spam."""
    return {
        "kind": USER_KINDS[0],
        "rcpts": _mine(),
        "sender": (form.sender.data or "").strip() or None,
        "text": (form.subject.data or "").strip() or None,
    }


@bp.route("/")
@allow(*OWNERS)
def index() -> ResponseReturnValue:
    return held.list_page(db.session, "quarantine/index.html", MyQuarantineFilterForm, _my_filters,
                          addresses=_mine())


@bp.route("/bulk", methods=["POST"])
@allow(*OWNERS)
def bulk() -> ResponseReturnValue:
    s, rcpts = db.session, _mine()
    action = request.form.get("action")
    if action not in ("release", "delete"):
        abort(400)
    back = url_for("quarantine.index")
    query = held.safe_query(request.form.get("back", ""))
    if query:
        back += "?" + query
    ids = held.selected_ids()
    if not ids:
        flash("Select at least one message.", "error")
        return redirect(back)
    kinds = held.kinds_of(s, ids)
    refused = {i: f"Message {i} not found" for i in ids if kinds.get(i) not in USER_KINDS}
    ids = [i for i in ids if i not in refused]
    if action == "release":
        result = q.release_many(s, config(), ids, actor=current_user.email, rcpts=rcpts)
    else:
        result = q.delete_many(s, ids, actor=current_user.email, rcpts=rcpts, cfg=config())
    audit(f"quarantine.bulk_{action}", ", ".join(ids)[:500], f"own quarantine, {len(ids)} selected")
    s.commit()
    held.flash_bulk(result, "released" if action == "release" else "deleted", refused)
    return redirect(back)


@bp.route("/<message_id>")
@allow(*OWNERS)
def message(message_id: str) -> ResponseReturnValue:
    s, rcpts = db.session, _mine()
    _own_message(message_id, rcpts)
    q.mark_seen(s, message_id, current_user.email, rcpts=rcpts)
    detail = q.detail(s, message_id, rcpts=rcpts)
    audit("quarantine.view", f"message {message_id}", "own quarantine")
    s.commit()
    return render_template("quarantine/message.html", d=detail, m=detail.message,
                           held_rcpts=[r for r, status in detail.rcpts if status == "quarantined"])


@bp.route("/<message_id>/preview")
@allow(*OWNERS)
def preview(message_id: str) -> ResponseReturnValue:
    rcpts = _mine()
    _own_message(message_id, rcpts)
    response = preview_response(held.preview_of(db.session, message_id, rcpts=rcpts))
    audit("quarantine.preview", f"message {message_id}", "own quarantine")
    db.session.commit()
    return response


@bp.route("/<message_id>/act", methods=["POST"])
@allow(*OWNERS)
def act(message_id: str) -> ResponseReturnValue:
    rcpts = _mine()
    action = request.form.get("action", "")
    if action not in ACTIONS:
        abort(400)
    mid = _own_message(message_id, rcpts).id
    with attempt(ValidationError, PermissionDenied) as outcome:
        done = held_actions.perform(db.session, config(), mid, action, actor=current_user.email, rcpts=rcpts,
                                    user_id=current_user.user_id)
        audit(f"quarantine.{action}", f"message {mid}", done)
    if outcome:
        flash(done, "success")
    return redirect(url_for("quarantine.message", message_id=mid))

