"""Sign-in, sign-out, and the request's identity and tenant scope.

The signed-in user is a :class:`Principal` of plain values, loaded under the MSP scope (``User`` is tenant-owned and
the tenant is not known before the user is). From it, :func:`enter_scope` sets the tenant scope once per request:
MSP roles act across tenants, every other role inside its own tenant; :func:`leave_scope` resets it at teardown.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_user, logout_user
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.access import ANY_ROLE, LINK_SESSION, allow, allow_public
from app.extensions import db
from app.forms import LoginForm
from tenants.models import Role, Tenant, User, utcnow
from tenants.passwords import hash_password, needs_rehash, verify_password
from tenants.scope import MSP, Scope, msp_scope, reset_scope, set_scope

bp = Blueprint("auth", __name__)

#: The one answer to a failed sign-in, whether the address is unknown, inactive or the password wrong.
INVALID_LOGIN = "Invalid e-mail or password"


class Principal:
    """The signed-in user as plain values, so no ORM object outlives the session that loaded it."""

    is_authenticated = True
    is_active = True
    is_anonymous = False

    def __init__(self, *, user_id: int, email: str, role: Role, tenant_id: int | None, tenant_name: str | None,
                 token: str) -> None:
        self.user_id = user_id
        self.email = email
        self.role = role
        self.tenant_id = tenant_id
        self.tenant_name = tenant_name
        self._token = token

    def get_id(self) -> str:
        """What the session cookie keeps: the id and a token that changes with the password (see :func:`_token`)."""
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
    # Bound to the password hash: changing or clearing a password ends every session signed in with the old one.
    msg = f"{user.id}:{user.password_hash or ''}".encode()
    return hmac.new(current_app.secret_key.encode(), msg, hashlib.sha256).hexdigest()[:32]  # type: ignore[union-attr]


def _principal(session: Session, user: User) -> Principal:
    tenant_name = session.scalar(select(Tenant.name).where(Tenant.id == user.tenant_id)) if user.tenant_id else None
    return Principal(user_id=user.id, email=user.email, role=user.role_enum, tenant_id=user.tenant_id,
                     tenant_name=tenant_name, token=_token(user))


def load_principal(value: str) -> Principal | None:
    """Flask-Login user loader: the session's user if it still exists, is active and its password is unchanged."""
    uid, _, token = value.partition(":")
    if not uid.isdigit():
        return None
    with db.new_session() as s, msp_scope():
        user = s.get(User, int(uid))
        if user is None or not user.active or not hmac.compare_digest(token, _token(user)):
            return None
        return _principal(s, user)


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


def authenticate(email: str, password: str) -> Principal | None:
    """Check the credentials and record the sign-in; None for any failure, in about the same time."""
    s = db.session
    with msp_scope():
        user = s.scalars(select(User).where(User.email == email.strip().lower())).first()
        if user is None or not user.active or not user.password_hash:
            verify_password(_dummy_hash(), password)  # spend the same time as a real check: no user enumeration
            return None
        if not verify_password(user.password_hash, password):
            return None
        if needs_rehash(user.password_hash):
            user.password_hash = hash_password(password)
        user.last_login_at = utcnow()
        s.commit()
        return _principal(s, user)


def start_session(session_db: Session, user: User, *, via_link: bool = False) -> Principal:
    """Sign ``user`` in to a fresh session (and CSRF token); the caller commits the recorded login time.

    ``via_link``: signed in by a digest's magic link, which proves only access to the mailbox; such a session
    reaches the user's own quarantine and nothing else (see :func:`app.access.enforce`).
    """
    user.last_login_at = utcnow()
    principal = _principal(session_db, user)
    session.clear()
    login_user(principal)
    session.permanent = True  # expires after PERMANENT_SESSION_LIFETIME, checked on the signed cookie
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
def login() -> ResponseReturnValue:
    if current_user.is_authenticated and not session.get(LINK_SESSION):  # a link session may sign in fully
        return redirect(home_url(current_user))
    form = LoginForm()
    if form.validate_on_submit():
        principal = authenticate(form.email.data or "", form.password.data or "")
        if principal is not None:
            session.clear()  # a fresh session (and CSRF token) for the signed-in user
            login_user(principal)
            session.permanent = True  # expires after PERMANENT_SESSION_LIFETIME, checked on the signed cookie
            return redirect(safe_next(request.args.get("next")) or home_url(principal))
        flash(INVALID_LOGIN, "error")
    return render_template("auth/login.html", form=form)


@bp.route("/logout", methods=["POST"])
@allow(*ANY_ROLE)
def logout() -> ResponseReturnValue:
    logout_user()
    session.clear()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))
