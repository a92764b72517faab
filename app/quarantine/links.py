"""The two pages digest links open (``quarantine`` blueprint): signing in by magic link (``/q/login/<token>``) and
one-click actions (``/q/action/<token>``).

Digest links arrive in mailboxes whose link scanners fetch every URL: a GET never acts or spends a token. The login
link and the action link each show a page whose button POSTs; a used link says what it did, a tampered one is a 400,
an expired one a 410. The pages carry the tenant's branding (:mod:`tenants.branding`, :mod:`app.csp`).
"""

from __future__ import annotations

from flask import g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from app.access import allow_public
from app.auth import SUSPENDED_LOGIN, start_session
from app.extensions import config, db
from app.quarantine import OWNERS, bp, brand_for
from tenants import quarantine as q
from tenants.exceptions import NotFound, TokenError, TokenExpired, TokenInvalid, TokenUsed
from tenants.scope import tenant_scope
from tenants.services import tenant_suspended
from tenants.tokens import redeem_login_token, spent_result, verify_action_token, verify_login_token

#: Words for a digest link's action on its confirmation page.
LINK_ACTIONS = {
    "release": "Release this message to your mailbox",
    "delete": "Delete this message",
    "allow": "Allow the sender and release this message",
    "block": "Block the sender and delete this message",
}


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
    g.brand = brand_for(claim.tenant_id)
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
    g.brand = brand_for(claim.tenant_id)
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
