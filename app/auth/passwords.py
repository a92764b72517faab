"""Passwords on the web: change one's own (``/account/password``), "forgot password?" on the sign-in page, the page a
set-password link opens (``/password/set/<token>``), and an admin's reset of a user (portal: the tenant's users;
console: MSP staff; an msp_admin resets a tenant's user by viewing the tenant as it).

The rules and the links are :mod:`tenants.accounts`'; the mail goes out through the worker (:mod:`worker.accountmail`).
"Forgot password?" answers the same whatever the address (no account enumeration), counts towards the per-IP
sign-in limit, and mails one user at most once per :data:`tenants.accounts.FORGOT_INTERVAL`. Everything is audited.
"""

from __future__ import annotations

import logging

from flask import flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, EqualTo, Length

from app import auth, console, portal, security
from app.access import ANY_ROLE, allow, allow_public
from app.actions import attempt
from app.audit import audit
from app.auth import account
from app.extensions import config, db, redis
from tenants import accounts, users
from tenants.exceptions import MailwardError, TokenExpired, TokenInvalid, TokenUsed, ValidationError
from tenants.models import Role, User
from tenants.scope import msp_scope
from tenants.services import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH

log = logging.getLogger(__name__)

#: The one answer of "forgot password?", whether or not the address has an account.
FORGOT_ANSWER = ("If an account exists for that address, a link to set a new password is on its way. "
                 "Check your mailbox (and its spam folder).")


def _new_password_fields(label: str = "New password") -> tuple[PasswordField, PasswordField]:
    new = PasswordField(label, validators=[DataRequired(), Length(min=MIN_PASSWORD_LENGTH,
                                                                   max=MAX_PASSWORD_LENGTH)])
    again = PasswordField("Repeat it", validators=[DataRequired(), EqualTo("new", "The two passwords differ.")])
    return new, again


class ChangePasswordForm(FlaskForm):
    current = PasswordField("Current password", validators=[DataRequired(), Length(max=MAX_PASSWORD_LENGTH)])
    new, again = _new_password_fields()
    submit = SubmitField("Change password")


class SetPasswordForm(FlaskForm):
    new, again = _new_password_fields("Your new password")
    submit = SubmitField("Set password")


class ForgotForm(FlaskForm):
    email = StringField("E-mail", validators=[DataRequired(), Length(max=320)])
    submit = SubmitField("Send me a link")


# --- one's own password ---------------------------------------------------------------------------------------------

@account.bp.route("/password", methods=["GET", "POST"])
@allow(*ANY_ROLE)
def change_password() -> ResponseReturnValue:
    """Change one's own password: other sessions end; this one goes on (signed in afresh)."""
    form = ChangePasswordForm()
    if not form.validate_on_submit():
        return render_template("account/password.html", form=form), 422 if form.is_submitted() else 200
    s = db.session
    with msp_scope():
        user = account._me()
        with attempt(flash_error=False) as done:
            accounts.change_password(user, form.current.data or "", form.new.data or "")
            audit("account.password_changed", target=user.email, tenant_id=user.tenant_id)
        if not done:
            audit("account.password_change_failed", target=user.email, detail=done.error, tenant_id=user.tenant_id)
            s.commit()
            flash(done.error, "error")
            return render_template("account/password.html", form=form), 422
        auth.start_session(s, user)
        s.commit()
    flash("Your password is changed; your other sessions are signed out.", "success")
    return redirect(url_for("auth.home"))


# --- forgot password, and the link's page ---------------------------------------------------------------------------

@auth.bp.route("/password/forgot", methods=["GET", "POST"])
@allow_public
@security.sign_in_limit
def forgot_password() -> ResponseReturnValue:
    form = ForgotForm()
    if form.validate_on_submit():
        security.count_ip_failure()  # every request counts towards the per-IP sign-in limit: no mail flood
        s = db.session
        user = accounts.find_for_reset(s, form.email.data or "")
        if user is not None and accounts.forgot_allowed(redis(), user):
            with msp_scope():
                audit("account.password_forgot", target=user.email, detail="reset link mailed",
                      tenant_id=user.tenant_id, actor="anonymous")
                accounts.queue_link(s, config(), user, "reset")
                s.commit()
        elif user is None:
            log.info("forgotten-password request for an address without an active account")
        flash(FORGOT_ANSWER, "info")
        return redirect(url_for("auth.login"))
    return render_template("auth/forgot.html", form=form), 422 if form.is_submitted() else 200


def _link_refused(exc: MailwardError) -> ResponseReturnValue:
    return render_template("errors/error.html", code=400, title="Link not valid",
                           message=f"{str(exc)[:1].upper()}{str(exc)[1:]}."), 400


@auth.bp.route("/password/set/<token>", methods=["GET", "POST"])
@allow_public
@security.sign_in_limit
def set_password(token: str) -> ResponseReturnValue:
    """The page a reset or invitation link opens: choose a password, then sign in with it."""
    s = db.session
    cfg = config()
    try:
        user, purpose = accounts.link_user(s, cfg, token)
    except (TokenExpired, TokenInvalid, TokenUsed) as exc:
        security.count_ip_failure()
        return _link_refused(exc)
    form = SetPasswordForm()
    if form.validate_on_submit():
        try:
            user, purpose = accounts.redeem_link(s, cfg, token, form.new.data or "")
        except ValidationError as exc:
            s.rollback()
            flash(str(exc), "error")
        else:
            with msp_scope():
                audit("account.password_set", target=user.email, detail=f"by {purpose} link",
                      tenant_id=user.tenant_id, actor=user.email)
                s.commit()
            flash("Your password is set: sign in with it.", "success")
            return redirect(url_for("auth.login"))
    return render_template("auth/set_password.html", form=form, email=user.email, invite=purpose == "invite"), \
        422 if form.is_submitted() else 200


# --- an admin's reset -----------------------------------------------------------------------------------------------

def reset_user(user_id: int, tenant_id: int | None, endpoint: str) -> ResponseReturnValue:
    """Reset a user of this level (another tenant's id is 404): the password stops working, sessions end, and a link
    to set a new one is mailed."""
    s = db.session
    user = users.get_user(s, user_id, tenant_id)
    if not FlaskForm().validate_on_submit():
        flash("Bad request: reload the page and try again.", "error")
        return redirect(url_for(endpoint))
    with attempt() as done:
        accounts.start_reset(user, actor_id=current_user.user_id)
        audit("user.password_reset", f"user {user.email}", "reset link mailed", tenant_id=user.tenant_id)
        accounts.queue_link(s, config(), user, "reset")
    if not done:
        return redirect(url_for(endpoint))
    flash(f"The password of {user.email} no longer works; a link to set a new one is on its way to them.", "success")
    return redirect(url_for(endpoint))


@portal.bp.route("/users/<int:user_id>/reset", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def user_reset(user_id: int) -> ResponseReturnValue:
    return reset_user(user_id, current_user.tenant_id, "portal.users_page")


@console.bp.route("/staff/<int:user_id>/reset", methods=["POST"])
@allow(Role.MSP_ADMIN)
def staff_reset(user_id: int) -> ResponseReturnValue:
    return reset_user(user_id, None, "console.staff")


def invite(user: User) -> None:
    """Mail a user just created without a password an invitation to set one (the caller commits)."""
    audit("user.invite", f"user {user.email}", "invitation link mailed", tenant_id=user.tenant_id)
    accounts.queue_link(db.session, config(), user, "invite")
