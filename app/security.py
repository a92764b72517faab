"""Security of the web side: sign-in throttling and lockout, the audit log (helper and pages), the MSP's security
settings (TOTP requirement, consent banner) and "view as" a tenant.

Throttling has two walls. Per account: :data:`LOCK_AFTER` failed sign-ins in a row (passwords or second-factor codes)
lock it for :data:`LOCK_FOR`; an unknown address gets the very same answers from a Redis counter, so the message never
tells whether an account exists. Per client IP: Flask-Limiter on Redis counts failed sign-ins in a fixed window; past
:data:`IP_LIMIT` in :data:`IP_WINDOW` seconds the sign-in forms answer 429. Redis being away opens the IP wall (the
account lockout in the database still holds) rather than locking everyone out.

"View as": an msp_admin (or msp_helpdesk, who reads and acts on held mail only) opens a tenant's portal as that
tenant. The session keeps the tenant id; :func:`app.auth.load_principal` then presents the MSP user as the tenant's
admin (helpdesk: auditor, admitted besides to the quarantine actions, see :data:`app.access.QUARANTINE_HELPDESK`) in
that tenant's scope, every page shows a banner to stop, and every audit entry names the tenant in ``acting_as``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any

import redis as redis_lib
from flask import (
    Response,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_limiter import RequestLimit
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import BooleanField, DateField, SelectField, StringField, SubmitField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional

from app import console, held, portal
from app.access import MSP_ROLES, allow
from app.audit import audit
from app.extensions import db, limiter, redis
from app.forms import GetForm
from tenants import audit as audit_log
from tenants import services
from tenants.exceptions import NotFound, ValidationError
from tenants.models import Msp, Role, Tenant, User, utcnow
from tenants.scope import current_scope_or_none, msp_scope

log = logging.getLogger(__name__)

#: Failed sign-ins in a row that lock an account (or an unknown address).
LOCK_AFTER = 10
#: How long a locked account stays locked.
LOCK_FOR = timedelta(minutes=15)
#: Failed sign-ins one client IP may make per window before the sign-in forms answer 429.
IP_LIMIT = 20
#: The IP window, in seconds (fixed windows: the count starts again at each multiple).
IP_WINDOW = 300
#: Redis key of one unknown address's failures (hashed: no addresses in Redis).
UNKNOWN_KEY = "mailward:login:unknown:{digest}"
#: Session key holding the tenant id an MSP user is viewing as.
VIEW_AS = "view_as"
#: Who views a tenant as which tenant role: the helpdesk reads (and acts on held mail, where a view admits it).
VIEW_AS_ROLE = {Role.MSP_ADMIN: Role.TENANT_ADMIN, Role.MSP_HELPDESK: Role.TENANT_AUDITOR}
#: Entries per audit page.
AUDIT_PAGE = 50


# --- lockout and the per-IP limit -----------------------------------------------------------------------------------

def locked_message(wait: timedelta) -> str:
    minutes = max(1, math.ceil(wait.total_seconds() / 60))
    return f"Too many failed sign-ins; try again in {minutes} minute{'s' if minutes != 1 else ''}."


def client_ip() -> str:
    return request.remote_addr or "unknown"


def count_ip_failure() -> None:
    """Mark this request a failed sign-in: the per-IP limit counts it when the response goes out."""
    g.sign_in_failed = True


def _failed(response: Response) -> bool:
    return bool(g.get("sign_in_failed"))


def _too_many_requests(limit: RequestLimit) -> Response:
    """The answer once the client's network is over the limit: a page that says how long to wait."""
    wait = max(1, math.ceil(limit.reset_at - time.time()))
    minutes = max(1, math.ceil(wait / 60))
    body = render_template("errors/error.html", code=429, title="Too many requests",
                           message=f"Too many failed sign-ins from your network; try again in {minutes} minute"
                                   f"{'s' if minutes != 1 else ''}.")
    return make_response(body, 429, {"Retry-After": str(wait)})


#: The sign-in forms' per-IP wall (password and second-factor steps share one count): Flask-Limiter tests the count
#: before each POST and adds one only for a failed attempt, so people who sign in fine are never counted.
sign_in_limit = limiter.shared_limit(f"{IP_LIMIT} per {IP_WINDOW} seconds", scope="sign-in", methods=["POST"],
                                     deduct_when=_failed, on_breach=_too_many_requests)


def account_wait(user: User, now: datetime | None = None) -> timedelta | None:
    """How long the account stays locked, or None; an expired lock is lifted (and its count cleared) here."""
    now = now or utcnow()
    if user.locked_until is None:
        return None
    if user.locked_until > now:
        return user.locked_until - now
    user.locked_until = None
    user.failed_logins = 0
    return None


def fail_account(user: User) -> timedelta | None:
    """Count a failed sign-in of a known account; the lock's length when this one locked it."""
    count_ip_failure()
    user.failed_logins = (user.failed_logins or 0) + 1
    if user.failed_logins >= LOCK_AFTER:
        user.locked_until = utcnow() + LOCK_FOR
        return LOCK_FOR
    return None


def clear_failures(user: User) -> None:
    user.failed_logins = 0
    user.locked_until = None


def fail_unknown(address: str) -> timedelta | None:
    """Count a failed sign-in for an address with no (active) account, exactly as :func:`fail_account` would."""
    count_ip_failure()
    key = UNKNOWN_KEY.format(digest=hashlib.sha256(address.encode()).hexdigest()[:32])
    try:
        r = redis()
        count = int(r.incr(key))
        if count == 1 or count == LOCK_AFTER:
            r.expire(key, int(LOCK_FOR.total_seconds()))
        if count >= LOCK_AFTER:
            ttl = int(r.ttl(key))
            return timedelta(seconds=ttl if ttl > 0 else LOCK_FOR.total_seconds())
    except (redis_lib.RedisError, OSError) as exc:
        log.warning("sign-in counter unavailable (Redis: %s)", exc)
    return None


def unknown_wait(address: str) -> timedelta | None:
    """The lock an unknown address is under (the answer a locked real account would give), or None."""
    key = UNKNOWN_KEY.format(digest=hashlib.sha256(address.encode()).hexdigest()[:32])
    try:
        r = redis()
        if int(r.get(key) or 0) >= LOCK_AFTER:
            ttl = int(r.ttl(key))
            return timedelta(seconds=ttl) if ttl > 0 else None
    except (redis_lib.RedisError, OSError) as exc:
        log.warning("sign-in counter unavailable (Redis: %s)", exc)
    return None


# --- the MSP's settings ---------------------------------------------------------------------------------------------

def msp_settings() -> tuple[bool, str]:
    """(require_totp, consent_banner) of the installation's MSP."""
    with msp_scope():
        row = db.session.execute(select(Msp.require_totp, Msp.consent_banner).order_by(Msp.id).limit(1)).first()
    return (bool(row[0]), row[1] or "") if row else (False, "")


class TotpForm(FlaskForm):
    """A six-digit code from the authenticator app (sign-in step, enrolment confirmation)."""

    code = StringField("Code from your authenticator app", validators=[DataRequired(), Length(min=6, max=8)])
    submit = SubmitField("Verify")


class AuditFilterForm(GetForm):
    """The audit pages' filters (a GET form: no CSRF token, it changes nothing)."""

    actor = StringField("Actor contains", validators=[Optional(), Length(max=320)])
    action = StringField("Action starts with", validators=[Optional(), Length(max=60)])
    since = DateField("From day (UTC)", validators=[Optional()])
    until = DateField("To day (UTC)", validators=[Optional()])
    tenant = SelectField("Tenant", validators=[Optional()], default="")  # console only; choices set by the view
    submit = SubmitField("Filter")


def _audit_filter(form: AuditFilterForm, *, console_view: bool) -> audit_log.AuditFilter:
    tenant_id = None
    if console_view and form.tenant.data and str(form.tenant.data).isdigit():
        tenant_id = int(form.tenant.data)
    return audit_log.AuditFilter(
        actor=form.actor.data or None, action=form.action.data or None,
        since=datetime.combine(form.since.data, dtime.min, UTC) if form.since.data else None,
        until=datetime.combine(form.until.data + timedelta(days=1), dtime.min, UTC) if form.until.data else None,
        tenant_id=tenant_id)


def _audit_form(console_view: bool) -> AuditFilterForm:
    form = AuditFilterForm(formdata=request.args)
    choices = [SelectChoice("", "any")]
    if console_view:
        choices += [SelectChoice(str(t.id), t.name) for t in services.list_tenants(db.session)]
    form.tenant.choices = choices
    return form


def _audit_page(endpoint: str, csv_endpoint: str, console_view: bool) -> ResponseReturnValue:
    form = _audit_form(console_view)
    entries: list[object] = []
    cursor = None
    status = 200
    if form.validate():
        try:
            entries, cursor = audit_log.search(db.session, _audit_filter(form, console_view=console_view),  # type: ignore[assignment]
                                               after=request.args.get("after") or None, limit=AUDIT_PAGE)
        except ValidationError as exc:
            flash(str(exc), "error")
            status = 400
    else:
        status = 422
    names = {t.id: t.name for t in services.list_tenants(db.session)} if console_view else {}
    export_args: dict[str, Any] = {k: v for k, v in request.args.items() if k != "after" and v}
    return render_template("audit/index.html", form=form, entries=entries, endpoint=endpoint,
                           csv_url=url_for(csv_endpoint, **export_args), next_args=held.page_args(cursor),
                           first_args=held.first_args(), console_view=console_view, tenant_names=names), status


def _audit_csv(console_view: bool, name: str) -> ResponseReturnValue:
    form = _audit_form(console_view)
    if not form.validate():
        return render_template("errors/error.html", code=422, title="Bad filter",
                               message="Fix the filter and export again."), 422
    f = _audit_filter(form, console_view=console_view)
    s = db.session
    scope = current_scope_or_none()

    def lines():  # type: ignore[no-untyped-def]
        # The response streams after the view returns: keep the request's scope around the query.
        from tenants.scope import reset_scope, set_scope

        token = set_scope(scope)
        try:
            yield from audit_log.csv_lines(audit_log.export(s, f))
        finally:
            reset_scope(token)

    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    return Response(stream_with_context(lines()), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}-audit-{stamp}.csv"'})


@portal.bp.route("/audit")
@allow(*portal.TENANT_ROLES)
def portal_audit() -> ResponseReturnValue:
    return _audit_page("portal.portal_audit", "portal.portal_audit_csv", console_view=False)


@portal.bp.route("/audit.csv")
@allow(*portal.TENANT_ROLES)
def portal_audit_csv() -> ResponseReturnValue:
    return _audit_csv(False, "tenant")


@console.bp.route("/audit")
@allow(*MSP_ROLES)
def console_audit() -> ResponseReturnValue:
    return _audit_page("console.console_audit", "console.console_audit_csv", console_view=True)


@console.bp.route("/audit.csv")
@allow(*MSP_ROLES)
def console_audit_csv() -> ResponseReturnValue:
    return _audit_csv(True, "msp")


# --- the MSP's security settings ------------------------------------------------------------------------------------

class SecuritySettingsForm(FlaskForm):
    require_totp = BooleanField("Every admin signs in with a second factor (TOTP)")
    consent_banner = TextAreaField("Notice shown on the sign-in page (empty: none)",
                                   validators=[Optional(), Length(max=4000)])
    submit = SubmitField("Save settings")


@console.bp.route("/settings")
@allow(*MSP_ROLES)
def settings() -> ResponseReturnValue:
    require, banner = msp_settings()
    form = SecuritySettingsForm(formdata=None, data={"require_totp": require, "consent_banner": banner})
    return render_template("console/settings.html", form=form, can_edit=current_user.role is Role.MSP_ADMIN)


@console.bp.route("/settings", methods=["POST"])
@allow(Role.MSP_ADMIN)
def save_settings() -> ResponseReturnValue:
    form = SecuritySettingsForm()
    if not form.validate_on_submit():
        return render_template("console/settings.html", form=form, can_edit=True), 422
    s = db.session
    msp = services.default_msp(s)
    changes = []
    if bool(msp.require_totp) != bool(form.require_totp.data):
        changes.append(f"require_totp={'on' if form.require_totp.data else 'off'}")
    banner = (form.consent_banner.data or "").strip()
    if (msp.consent_banner or "") != banner:
        changes.append("consent banner changed")
    msp.require_totp = bool(form.require_totp.data)
    msp.consent_banner = banner
    if changes:
        audit("settings.security", target="msp", detail="; ".join(changes), tenant_id=None)
    s.commit()
    flash("Settings saved.", "success")
    return redirect(url_for("console.settings"))


# --- view as a tenant -----------------------------------------------------------------------------------------------

@console.bp.route("/view-as", methods=["POST"])
@allow(*MSP_ROLES)
def start_view_as() -> ResponseReturnValue:
    """Open a tenant's portal as that tenant (msp_admin as its admin, msp_helpdesk as its auditor that may also act
    on held mail)."""
    raw = request.form.get("tenant_id", "")
    s = db.session
    try:
        tenant = services.get_tenant(s, int(raw)) if raw.isdigit() else None
    except NotFound:
        tenant = None
    if tenant is None:
        raise NotFound(f"Tenant {raw} not found")
    audit("view_as.start", target=f"tenant {tenant.name}", tenant_id=tenant.id)
    s.commit()
    session[VIEW_AS] = tenant.id
    return redirect(url_for("portal.index"))


@console.bp.route("/view-as/stop", methods=["POST"])
@allow(*portal.TENANT_ROLES, *MSP_ROLES)
def stop_view_as() -> ResponseReturnValue:
    if getattr(current_user, "acting_as", None):
        audit("view_as.stop", target=f"tenant {current_user.acting_as}")
        db.session.commit()
    session.pop(VIEW_AS, None)
    return redirect(url_for("auth.home"))


def viewing_tenant(user_role: Role) -> Tenant | None:
    """The tenant the session views as, for an MSP role; None otherwise (a stale or forged value is dropped)."""
    tid = session.get(VIEW_AS)
    if tid is None:
        return None
    if user_role not in VIEW_AS_ROLE or not isinstance(tid, int):
        session.pop(VIEW_AS, None)
        return None
    with db.new_session() as s:
        tenant = s.get(Tenant, tid)
        if tenant is None:
            session.pop(VIEW_AS, None)
            return None
        s.expunge(tenant)
        return tenant
