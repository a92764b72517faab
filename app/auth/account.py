"""The signed-in user's own account security (``/account``): enrol, confirm and turn off the TOTP second factor.

Enrolment: a POST makes a new secret (stored encrypted, not yet in use) and the page shows it as an ``otpauth://``
URI and a QR code (an inline SVG from segno, no script, no image request); a code from the app confirms it and turns
the second factor on. Turning it off takes the password and a current code, and is refused while the MSP requires
a second factor of the user's role. Every change is audit-logged.
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from flask_wtf import FlaskForm
from markupsafe import Markup
from wtforms import PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Length

from app.access import ANY_ROLE, allow
from app.actions import attempt
from app.audit import audit
from app.auth import TOTP_ROLES
from app.extensions import config, db, redis
from app.security import TotpForm, msp_settings
from tenants import totp as otp
from tenants.models import User
from tenants.passwords import verify_password
from tenants.scope import msp_scope

bp = Blueprint("account", __name__, url_prefix="/account")


class DisableTotpForm(FlaskForm):
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])
    code = StringField("Current code", validators=[DataRequired(), Length(min=6, max=8)])
    submit = SubmitField("Turn off the second factor")


class StartTotpForm(FlaskForm):
    submit = SubmitField("Set up an authenticator app")


def _me() -> User:
    """The signed-in user's row (loaded as the MSP: an MSP user viewing as a tenant is not in that tenant)."""
    with msp_scope():
        user = db.session.get(User, current_user.user_id)
    assert user is not None, "a signed-in user exists (load_principal checked)"
    return user


def qr_svg(uri: str) -> Markup | None:
    """The URI as an inline SVG QR code, when segno (pure Python) is installed; else None (the URI text suffices)."""
    try:
        import segno
    except ImportError:
        return None
    svg = segno.make(uri, error="m").svg_inline(scale=4, dark="#1d2430", light="#ffffff", omitsize=False)
    return Markup(svg)  # generated from our own URI: no user markup in it


def _page(confirm: TotpForm | None = None, disable: DisableTotpForm | None = None,
          status: int = 200) -> ResponseReturnValue:
    user = _me()
    uri = None
    if not user.totp_enabled and user.totp_secret_enc:
        secret = otp.secret_of(config(), user)
        uri = otp.provisioning_uri(secret, user.email) if secret else None
    required = msp_settings()[0] and current_user.must_enrol_totp
    return render_template("account/totp.html", enabled=user.totp_enabled, uri=uri, qr=qr_svg(uri) if uri else None,
                           start=StartTotpForm(formdata=None), confirm=confirm or TotpForm(formdata=None),
                           disable=disable or DisableTotpForm(formdata=None), required=required), status


@bp.route("/totp")
@allow(*ANY_ROLE)
def totp() -> ResponseReturnValue:
    return _page()


@bp.route("/totp/start", methods=["POST"])
@allow(*ANY_ROLE)
def totp_start() -> ResponseReturnValue:
    form = StartTotpForm()
    if form.validate_on_submit():
        s = db.session
        user = _me()
        if user.totp_enabled:
            flash("The second factor is already on; turn it off first to enrol a new app.", "error")
            return redirect(url_for("account.totp"))
        with msp_scope():
            otp.store_pending(config(), user, otp.new_secret())
            s.commit()
    return redirect(url_for("account.totp"))


@bp.route("/totp/confirm", methods=["POST"])
@allow(*ANY_ROLE)
def totp_confirm() -> ResponseReturnValue:
    form = TotpForm()
    if not form.validate_on_submit():
        return _page(confirm=form, status=422)
    user = _me()
    with msp_scope():
        with attempt() as done:
            otp.enable(config(), redis(), user, form.code.data or "")
            audit("account.totp_enabled", target=user.email, tenant_id=user.tenant_id)
        if not done:
            return _page(status=422)
    flash("The second factor is on: you will be asked for a code at every sign-in.", "success")
    return redirect(url_for("auth.home"))


@bp.route("/totp/disable", methods=["POST"])
@allow(*ANY_ROLE)
def totp_disable() -> ResponseReturnValue:
    form = DisableTotpForm()
    if not form.validate_on_submit():
        return _page(disable=form, status=422)
    s = db.session
    user = _me()
    if user.role_enum in TOTP_ROLES and msp_settings()[0]:
        flash("Your MSP requires a second factor: it cannot be turned off.", "error")
        return _page(status=403)
    with msp_scope():
        right = bool(user.password_hash) and verify_password(user.password_hash or "", form.password.data or "")
        if not right or not otp.check_code(config(), redis(), user, form.code.data or ""):
            flash("The password or the code is not right.", "error")
            return _page(status=422)
        otp.disable(user)
        audit("account.totp_disabled", target=user.email, tenant_id=user.tenant_id)
        s.commit()
    flash("The second factor is off.", "success")
    return redirect(url_for("account.totp"))

