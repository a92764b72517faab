"""The end user's quarantine (``/q``): their own held spam, a safe preview, release and delete, their own lists;
and the two pages digest links open, signing in by magic link and one-click actions.

Users (and tenant admins, for their own mail) see only mail held for their own addresses: their login e-mail and
aliases (:func:`tenants.addresses.user_addresses`), passed to every service call as ``rcpts``. Only the spam
quarantine is theirs: virus and attachment holds are for admins (the portal), as in the digests. Any other message
id — another user's, another tenant's, a virus — answers 404 like a missing one.

Digest links arrive in mailboxes whose link scanners fetch every URL: a GET never acts or spends a token. The login
link and the action link each show a page whose button POSTs; a used link says what it did, a tampered one is a 400,
an expired one a 410. The pages carry the tenant's branding (:mod:`tenants.branding`, :mod:`app.csp`).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from werkzeug.wrappers import Response

from app import held
from app.access import allow, allow_public
from app.audit import audit
from app.auth import SUSPENDED_LOGIN, start_session
from app.csp import CONTENT_SECURITY_POLICY, brand_css, branded_policy, preview_response
from app.extensions import config, db
from app.forms import ListEntryForm, MyQuarantineFilterForm
from tenants import lists
from tenants import quarantine as q
from tenants.addresses import user_addresses
from tenants.branding import Brand, brand_of
from tenants.exceptions import (
    NotFound,
    PermissionDenied,
    TokenError,
    TokenExpired,
    TokenInvalid,
    TokenUsed,
    ValidationError,
)
from tenants.models import Message, Role, Tenant, User
from tenants.scope import load, tenant_scope
from tenants.services import tenant_suspended
from tenants.tokens import redeem_login_token, spent_result, verify_action_token, verify_login_token

bp = Blueprint("quarantine", __name__, url_prefix="/q")

#: Who has a personal quarantine: users, and tenant admins for their own mail.
OWNERS = (Role.USER, Role.TENANT_ADMIN)
#: Kinds of quarantine an end user sees (virus and attachment holds are for admins).
USER_KINDS = ("spam",)
#: What the detail page's buttons post as ``action``.
ACTIONS = ("release", "delete", "allow_release", "block_delete")
#: Words for a digest link's action on its confirmation page.
LINK_ACTIONS = {
    "release": "Release this message to your mailbox",
    "delete": "Delete this message",
    "allow": "Allow the sender and release this message",
    "block": "Block the sender and delete this message",
}


# --- branding -------------------------------------------------------------------------------------------------------

def _brand_for(tenant_id: int | None) -> Brand | None:
    tenant = db.session.get(Tenant, tenant_id) if tenant_id is not None else None  # Tenant is not tenant-owned
    return brand_of(tenant) if tenant is not None else None


@bp.before_request
def _signed_in_brand() -> None:
    if current_user.is_authenticated and current_user.tenant_id is not None:
        g.brand = _brand_for(current_user.tenant_id)


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
    s, cfg, rcpts, actor = db.session, config(), _mine(), current_user.email
    action = request.form.get("action", "")
    if action not in ACTIONS:
        abort(400)
    mid = _own_message(message_id, rcpts).id
    try:
        if action == "release":
            done = f"Message {q.release(s, cfg, mid, actor=actor, rcpts=rcpts)}."
        elif action == "delete":
            done = f"Message deleted for {', '.join(q.delete(s, mid, actor=actor, rcpts=rcpts, cfg=cfg))}."
        elif action == "allow_release":
            entry, result = q.allow_sender_and_release(s, cfg, mid, actor=actor, rcpts=rcpts,
                                                       user_id=current_user.user_id)
            done = f"{entry.value} is on your allow list; message {result}."
        else:
            entry, gone = q.block_sender_and_delete(s, cfg, mid, actor=actor, rcpts=rcpts,
                                                    user_id=current_user.user_id)
            done = f"{entry.value} is on your block list; message deleted for {', '.join(gone)}."
        audit(f"quarantine.{action}", f"message {mid}", done)
        s.commit()
    except (ValidationError, PermissionDenied) as exc:
        s.rollback()
        flash(str(exc), "error")
    else:
        flash(done, "success")
    return redirect(url_for("quarantine.message", message_id=mid))


# --- the user's own lists ---------------------------------------------------------------------------------------------

def _lists_page(form: ListEntryForm | None = None, status: int = 200) -> ResponseReturnValue:
    entries = lists.list_entries(db.session, user_id=current_user.user_id)
    return render_template("quarantine/lists.html", entries=entries, form=form or ListEntryForm(formdata=None)), status


@bp.route("/lists")
@allow(*OWNERS)
def my_lists() -> ResponseReturnValue:
    return _lists_page()


@bp.route("/lists", methods=["POST"])
@allow(*OWNERS)
def add_entry() -> ResponseReturnValue:
    form = ListEntryForm()
    if form.validate_on_submit():
        s = db.session
        try:
            entry = lists.add_entry(s, kind=form.kind.data, value=form.value.data or "", user_id=current_user.user_id,
                                    comment=(form.comment.data or "").strip(), created_by=current_user.email)
            lists.reload_after_commit(s, config())
            s.commit()
        except ValidationError as exc:
            s.rollback()
            flash(str(exc), "error")
        else:
            flash(f"{entry.value} is on your {entry.kind} list.", "success")
            return redirect(url_for("quarantine.my_lists"))
    return _lists_page(form, status=422)


@bp.route("/lists/<int:entry_id>/delete", methods=["POST"])
@allow(*OWNERS)
def remove_entry(entry_id: int) -> ResponseReturnValue:
    s = db.session
    entry = lists.remove_entry(s, entry_id, user_id=current_user.user_id)  # another's entry: NotFound
    lists.reload_after_commit(s, config())
    s.commit()
    flash(f"{entry.value} is off your {entry.kind} list.", "success")
    return redirect(url_for("quarantine.my_lists"))


# --- digest links -----------------------------------------------------------------------------------------------------

def _refusal(exc: TokenError) -> ResponseReturnValue:
    """A link that cannot be used: 410 when it expired or was used, 400 when it is not ours (tampered, cut short)."""
    gone = isinstance(exc, TokenExpired | TokenUsed)
    return render_template("quarantine/link_refused.html", reason=str(exc), expired=isinstance(exc, TokenExpired),
                           used=isinstance(exc, TokenUsed)), 410 if gone else 400


def _suspended(tenant_id: int) -> TokenInvalid | None:
    """A digest link of a suspended tenant's user neither signs in nor acts (its mail is still delivered)."""
    if tenant_suspended(db.session, tenant_id):
        return TokenInvalid(SUSPENDED_LOGIN)
    return None


@bp.route("/login/<token>", methods=["GET", "POST"])
@allow_public
def login_link(token: str) -> ResponseReturnValue:
    """A digest's sign-in link: GET shows a button (spends nothing), POST signs in and opens the quarantine."""
    s, secret = db.session, config().resolve_secret_key()
    try:
        claim = verify_login_token(secret, token)
    except TokenError as exc:
        return _refusal(exc)
    g.brand = _brand_for(claim.tenant_id)
    if (refused := _suspended(claim.tenant_id)) is not None:
        return _refusal(refused)
    if request.method == "GET":
        if current_user.is_authenticated and current_user.user_id == claim.user_id:
            return redirect(url_for("quarantine.index"))
        if spent_result(s, claim.jti) is not None:
            return _refusal(TokenUsed("this link was already used: sign in again from a newer digest"))
        return render_template("quarantine/login_link.html", email=claim.email)
    with tenant_scope(claim.tenant_id):
        try:
            user = redeem_login_token(s, secret, token)
            if user.role_enum not in OWNERS:
                raise TokenInvalid("this link cannot sign you in: sign in with your password")
        except TokenError as exc:
            s.rollback()
            return _refusal(exc)
        start_session(s, user, via_link=True)
        s.commit()
    return redirect(url_for("quarantine.index"))


@bp.route("/action/<token>", methods=["GET", "POST"])
@allow_public
def action_link(token: str) -> ResponseReturnValue:
    """A digest's one-click action: GET asks for confirmation (link scanners fetch GETs), POST acts once."""
    s, cfg = db.session, config()
    try:
        claim = verify_action_token(cfg.resolve_secret_key(), token)
    except TokenError as exc:
        return _refusal(exc)
    g.brand = _brand_for(claim.tenant_id)
    if (refused := _suspended(claim.tenant_id)) is not None:
        return _refusal(refused)
    with tenant_scope(claim.tenant_id):
        if request.method == "POST":
            try:
                outcome = q.redeem_action(s, cfg, token)
            except TokenError as exc:  # expired between the check above and now
                s.rollback()
                return _refusal(exc)
            s.commit()
            return render_template("quarantine/action_link.html", done=outcome.done, result=outcome.message,
                                   msg=None, action=claim.action)
        previous = spent_result(s, claim.jti)
        try:
            msg = q.get(s, claim.message_id, rcpts=list(claim.rcpts))
        except NotFound:
            msg = None
        return render_template("quarantine/action_link.html", done=None,
                               result=f"already done: {previous}" if previous is not None else None, msg=msg,
                               action=claim.action, question=LINK_ACTIONS[claim.action], rcpts=claim.rcpts)
