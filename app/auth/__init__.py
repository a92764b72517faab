"""Sign-in, sign-out, and the request's identity and tenant scope.

The signed-in user is a :class:`Principal` of plain values, loaded under the MSP scope (``User`` is tenant-owned and
the tenant is not known before the user is). From it, :func:`enter_scope` sets the tenant scope once per request:
MSP roles act across tenants, every other role inside its own tenant; :func:`leave_scope` resets it at teardown.

Signing in is the password, then (when the user enrolled one) a TOTP code on its own page: the session is signed in
only once the code passes. Failures count towards the account lockout and the per-IP limit (:mod:`app.security`).
A session is a signed cookie, so it ends on the server's word: it carries the user's ``session_version`` (inside the
token of :meth:`Principal.get_id`), which signing out bumps, ending every session of the user, a copied cookie
included; and the time of the sign-in, after which it lasts at most ``MAILWARD_SESSION_MAX_AGE`` however active it
is (the idle limit, ``PERMANENT_SESSION_LIFETIME``, ends it sooner).
An admin whose MSP requires a second factor and who has none is signed in, but reaches nothing but the enrolment page
(:func:`app.access.enforce`). An MSP user "viewing as" a tenant is presented as that tenant's admin (or auditor).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_user, logout_user
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import security
from app.access import ANY_ROLE, LINK_SESSION, allow, allow_public
from app.extensions import config, db, redis
from app.forms import LoginForm
from tenants import totp
from tenants.models import Msp, Role, Tenant, User, utcnow
from tenants.passwords import hash_password, needs_rehash, verify_password
from tenants.scope import MSP, Scope, msp_scope, reset_scope, set_scope
from tenants.services import tenant_suspended
from tenants.users import end_sessions

bp = Blueprint("auth", __name__)

#: The one answer to a failed sign-in, whether the address is unknown, inactive or the password wrong.
INVALID_LOGIN = "Invalid e-mail or password"
#: Roles that must sign in with a second factor when their MSP requires it (everyone but end users).
TOTP_ROLES = frozenset({Role.MSP_ADMIN, Role.MSP_HELPDESK, Role.TENANT_ADMIN, Role.TENANT_AUDITOR})
#: The answer to a right password of a user whose tenant is suspended (and the notice when a session is ended).
SUSPENDED_LOGIN = "Your organisation's account is suspended; ask your provider."
#: Session key of a sign-in waiting for its TOTP code: the user id, its session token, the next URL, when.
PENDING_TOTP = "pending_totp"
#: Seconds the TOTP step waits after the password before the password is asked again.
PENDING_TOTP_TTL = 300
#: Session key of the time (epoch seconds) the session was signed in: it ends ``session_max_age`` later.
SIGNED_IN_AT = "signed_in_at"
#: The notice when a session reached its absolute lifetime.
SESSION_EXPIRED = "Your session has expired; sign in again."


class Principal:
    """The signed-in user as plain values, so no ORM object outlives the session that loaded it."""

    is_authenticated = True
    is_active = True
    is_anonymous = False

    def __init__(self, *, user_id: int, email: str, role: Role, tenant_id: int | None, tenant_name: str | None,
                 token: str, totp_enabled: bool = False, must_enrol_totp: bool = False) -> None:
        self.user_id = user_id
        self.email = email
        self.role = role
        self.tenant_id = tenant_id
        self.tenant_name = tenant_name
        self._token = token
        self.totp_enabled = totp_enabled
        #: Signed in, but the MSP requires a second factor this admin has not enrolled: enrolment is all it reaches.
        self.must_enrol_totp = must_enrol_totp
        #: The tenant an MSP user is viewing as (its name), and the MSP role behind the tenant role shown.
        self.acting_as: str | None = None
        self.real_role: Role = role

    def view_as(self, tenant: Tenant) -> None:
        """Present this MSP user as ``tenant``'s admin (helpdesk: auditor), in that tenant's scope."""
        self.real_role = self.role
        self.role = security.VIEW_AS_ROLE[self.role]
        self.tenant_id = tenant.id
        self.tenant_name = tenant.name
        self.acting_as = tenant.name

    def get_id(self) -> str:
        """What the session cookie keeps: the id and a token that changes with the password and the session version
        (see :func:`_token`)."""
        return f"{self.user_id}:{self._token}"

    @property
    def is_msp(self) -> bool:
        return self.role.is_msp

    @property
    def scope(self) -> Scope:
        if self.role.is_msp:
            return MSP
        assert self.tenant_id is not None, "a tenant role always has a tenant"
        return Scope(self.tenant_id)


def _token(user: User) -> str:
    # Bound to the password hash: changing or clearing a password ends every session signed in with the old one; and
    # to the session version: signing out (or a deactivation) bumps it and ends every session signed in before.
    msg = f"{user.id}:{user.password_hash or ''}:{user.session_version or 0}".encode()
    return hmac.new(current_app.secret_key.encode(), msg, hashlib.sha256).hexdigest()[:32]  # type: ignore[union-attr]


def _totp_required(session: Session, user: User) -> bool:
    """Whether the user's MSP requires a second factor of the user's role."""
    if user.role_enum not in TOTP_ROLES:
        return False
    stmt = select(Msp.require_totp)
    if user.tenant_id is not None:
        stmt = stmt.join(Tenant, Tenant.msp_id == Msp.id).where(Tenant.id == user.tenant_id)
    return bool(session.scalar(stmt.order_by(Msp.id).limit(1)))


def _principal(session: Session, user: User) -> Principal:
    tenant_name = session.scalar(select(Tenant.name).where(Tenant.id == user.tenant_id)) if user.tenant_id else None
    return Principal(user_id=user.id, email=user.email, role=user.role_enum, tenant_id=user.tenant_id,
                     tenant_name=tenant_name, token=_token(user), totp_enabled=bool(user.totp_enabled),
                     must_enrol_totp=not user.totp_enabled and _totp_required(session, user))


def _expired() -> bool:
    """Whether the session is older than the absolute lifetime (or does not say when it was signed in)."""
    started = session.get(SIGNED_IN_AT)
    if not isinstance(started, int) or isinstance(started, bool):
        return True
    return not 0 <= time.time() - started <= config().session_max_age


def load_principal(value: str) -> Principal | None:
    """Flask-Login user loader: the session's user if it still exists, is active, its password and session version
    are those the session was signed in with, and the session is within its absolute lifetime."""
    uid, _, token = value.partition(":")
    if not uid.isdigit():
        return None
    if _expired():
        session.clear()
        flash(SESSION_EXPIRED, "info")
        return None
    with db.new_session() as s, msp_scope():
        user = s.get(User, int(uid))
        if user is None or not user.active or not hmac.compare_digest(token, _token(user)):
            return None
        if tenant_suspended(s, user.tenant_id):  # a session open at the suspension ends at its next request
            session.clear()
            flash(SUSPENDED_LOGIN, "error")
            return None
        principal = _principal(s, user)
    tenant = security.viewing_tenant(principal.role)
    if tenant is not None:
        principal.view_as(tenant)
    return principal


def enter_scope() -> None:
    """Before-request: set the tenant scope from the signed-in user (none for an anonymous caller)."""
    g.scope_token = set_scope(current_user.scope if current_user.is_authenticated else None)


def leave_scope(exc: BaseException | None) -> None:
    token = g.pop("scope_token", None)
    if token is not None:
        reset_scope(token)


def home_url(principal: Any) -> str:
    """Where a role lands after sign-in (a digest-link sign-in lands in the user's own quarantine)."""
    if session.get(LINK_SESSION):
        return url_for("quarantine.index")
    if principal.role.is_msp:
        return url_for("console.index")
    if principal.role in (Role.TENANT_ADMIN, Role.TENANT_AUDITOR):
        return url_for("portal.index")
    return url_for("quarantine.index")


@cache
def _dummy_hash() -> str:
    return hash_password("mailward-dummy-password")


@dataclass
class SignIn:
    """What the password step decided: signed in, a TOTP code to ask for, or the error to show."""

    principal: Principal | None = None
    needs_totp: bool = False
    error: str = INVALID_LOGIN


def authenticate(email: str, password: str) -> SignIn:
    """Check the credentials and count the outcome; any failure in about the same time, with the same words
    whether or not the account exists (a locked account and an unknown address that failed as often read alike)."""
    s = db.session
    address = email.strip().lower()
    with msp_scope():
        user = s.scalars(select(User).where(User.email == address)).first()
        if user is None or not user.active or not user.password_hash:
            verify_password(_dummy_hash(), password)  # spend the same time as a real check: no user enumeration
            wait = security.unknown_wait(address) or security.fail_unknown(address)
            return SignIn(error=security.locked_message(wait) if wait else INVALID_LOGIN)
        wait = security.account_wait(user)
        if wait is not None:
            verify_password(_dummy_hash(), password)
            security.count_ip_failure()
            s.commit()
            return SignIn(error=security.locked_message(wait))
        if not verify_password(user.password_hash, password):
            wait = security.fail_account(user)
            security.audit("login.failed", target=user.email, tenant_id=user.tenant_id, actor=user.email)
            s.commit()
            return SignIn(error=security.locked_message(wait) if wait else INVALID_LOGIN)
        if tenant_suspended(s, user.tenant_id):  # told only after the right password: no oracle for guessers
            security.clear_failures(user)
            security.audit("login.suspended", target=user.email, tenant_id=user.tenant_id, actor=user.email)
            s.commit()
            return SignIn(error=SUSPENDED_LOGIN)
        if needs_rehash(user.password_hash):
            user.password_hash = hash_password(password)
        if user.totp_enabled:
            s.commit()
            return SignIn(principal=_principal(s, user), needs_totp=True)
        security.clear_failures(user)
        user.last_login_at = utcnow()
        security.audit("login", target=user.email, tenant_id=user.tenant_id, actor=user.email)
        s.commit()
        return SignIn(principal=_principal(s, user))


def start_session(session_db: Session, user: User, *, via_link: bool = False) -> Principal:
    """Sign ``user`` in to a fresh session (and CSRF token); the caller commits the recorded login time.

    ``via_link``: signed in by a digest's magic link, which proves only access to the mailbox; such a session
    reaches the user's own quarantine and nothing else (see :func:`app.access.enforce`).
    """
    user.last_login_at = utcnow()
    principal = _principal(session_db, user)
    _sign_in(principal)
    if via_link:
        session[LINK_SESSION] = True
    return principal


def safe_next(target: str | None) -> str | None:
    """The path of a same-site ``next`` URL, or None: never redirect off this site after sign-in (open redirect)."""
    if not target or "\\" in target:
        return None
    parts = urlsplit(target)
    if parts.scheme not in ("", "http", "https") or (parts.netloc and parts.netloc != request.host):
        return None
    if not parts.path.startswith("/") or parts.path.startswith("//"):
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")


@bp.route("/")
@allow_public
def home() -> ResponseReturnValue:
    """Send each caller to its start page."""
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login"))
    return redirect(home_url(current_user))


@bp.route("/login", methods=["GET", "POST"])
@allow_public
@security.sign_in_limit
def login() -> ResponseReturnValue:
    if current_user.is_authenticated and not session.get(LINK_SESSION):  # a link session may sign in fully
        return redirect(home_url(current_user))
    form = LoginForm()
    if form.validate_on_submit():
        outcome = authenticate(form.email.data or "", form.password.data or "")
        principal = outcome.principal
        if principal is not None and outcome.needs_totp:
            session.clear()  # nothing of an earlier session survives into the half-signed-in one
            session[PENDING_TOTP] = {"uid": principal.user_id, "token": principal.get_id(), "at": int(time.time()),
                                     "next": safe_next(request.args.get("next"))}
            return redirect(url_for("auth.login_totp"))
        if principal is not None:
            _sign_in(principal)
            return redirect(safe_next(request.args.get("next")) or home_url(principal))
        flash(outcome.error, "error")
    return render_template("auth/login.html", form=form, consent_banner=security.msp_settings()[1])


def _sign_in(principal: Principal) -> None:
    session.clear()  # a fresh session (and CSRF token) for the signed-in user
    login_user(principal)
    session.permanent = True  # ends after PERMANENT_SESSION_LIFETIME without a request (the signed cookie's age)
    session[SIGNED_IN_AT] = int(time.time())  # and session_max_age from now, however active (load_principal)


@bp.route("/login/totp", methods=["GET", "POST"])
@allow_public
@security.sign_in_limit
def login_totp() -> ResponseReturnValue:
    """The second step: the code from the authenticator app. Not signed in until it passes; a code works once."""
    pending = session.get(PENDING_TOTP)
    if not isinstance(pending, dict) or time.time() - pending.get("at", 0) > PENDING_TOTP_TTL:
        session.pop(PENDING_TOTP, None)
        if request.method == "POST":
            flash("Sign in again: the code was not entered in time.", "error")
        return redirect(url_for("auth.login"))
    form = security.TotpForm()
    if form.validate_on_submit():
        s = db.session
        with msp_scope():
            user = s.get(User, pending.get("uid"))
            if user is None or not user.active or pending.get("token") != f"{user.id}:{_token(user)}":
                session.pop(PENDING_TOTP, None)
                return redirect(url_for("auth.login"))
            wait_td = security.account_wait(user)
            if wait_td is None and totp.check_code(config(), redis(), user, form.code.data or ""):
                security.clear_failures(user)
                user.last_login_at = utcnow()
                security.audit("login", target=user.email, detail="with TOTP", tenant_id=user.tenant_id,
                               actor=user.email)
                principal = _principal(s, user)
                s.commit()
                next_url = pending.get("next")
                _sign_in(principal)
                return redirect(safe_next(next_url) or home_url(principal))
            if wait_td is None:
                wait_td = security.fail_account(user)
                security.audit("login.totp_failed", target=user.email, tenant_id=user.tenant_id, actor=user.email)
            else:
                security.count_ip_failure()
            s.commit()
        if wait_td is not None:
            session.pop(PENDING_TOTP, None)
            flash(security.locked_message(wait_td), "error")
            return redirect(url_for("auth.login"))
        flash("That code is not right (or was already used): enter the current code from your app.", "error")
    return render_template("auth/totp.html", form=form), 200


@bp.route("/logout", methods=["POST"])
@allow(*ANY_ROLE)
def logout() -> ResponseReturnValue:
    """Sign out: the user's session version moves on, so this session's cookie (and any copy of it, and the user's
    sessions elsewhere) is refused from now on, not merely forgotten by this browser."""
    s = db.session
    with msp_scope():
        user = s.get(User, current_user.user_id)
        if user is not None:
            end_sessions(user)
            security.audit("logout", target=user.email, tenant_id=user.tenant_id, actor=user.email)
            s.commit()
    logout_user()
    session.clear()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))
