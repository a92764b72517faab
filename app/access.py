"""Who may call a view: every view declares it, and one request hook enforces it.

``@allow("msp_admin", "msp_helpdesk")`` or ``@allow_public`` goes directly under ``@bp.route`` (so the function the
route registers carries the mark). :func:`enforce` runs before every request: an undeclared view fails closed (500 and
an error in the log), an anonymous caller is sent to the login page, and a signed-in caller of the wrong role gets
404 — the same answer as a missing object, so a page never tells who may see what (no existence oracle). A session
opened by a digest's magic link reaches only the quarantine blueprint; anything else asks for the password. An admin
who must enrol a second factor (the MSP requires one) is sent to the enrolment page from everywhere else.
An MSP user viewing a tenant as it is admitted by the tenant role it is presented with, and also where a view names
its MSP role in ``viewing_as`` (the helpdesk's quarantine actions: README, "read and quarantine actions").
REST API views declare ``@allow_api(scope)`` instead: their caller is a bearer API key, never a session, and
:func:`enforce` hands them to the API's key check (:mod:`app.api.auth`).
``tests/web/test_web_routes.py`` lists every route and fails on any view without a declaration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import abort, current_app, redirect, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from tenants.apikeys import SCOPES as API_KEY_SCOPES
from tenants.models import Role

log = logging.getLogger(__name__)

#: Attribute on a view function that holds its :class:`Access`.
ACCESS_ATTR = "__mailward_access__"
#: Every role that can sign in (for views open to anyone signed in, like logout).
ANY_ROLE: tuple[Role, ...] = tuple(Role)
MSP_ROLES: tuple[Role, ...] = (Role.MSP_ADMIN, Role.MSP_HELPDESK)
#: Session key set when a digest's magic link signed the user in (see :func:`app.auth.start_session`).
LINK_SESSION = "via_link"
#: What a magic-link session may reach: the user's own quarantine, and signing out. A link in a mail proves access
#: to the mailbox, not the password: it must not open the tenant portal of an admin whose digest it came in.
LINK_BLUEPRINTS = frozenset({"quarantine"})
LINK_ENDPOINTS = frozenset({"auth.logout", "auth.home"})
#: What an admin reaches who must enrol a second factor first (the MSP requires one): enrolment, and signing out.
ENROL_ENDPOINTS = frozenset({"account.totp", "account.totp_start", "account.totp_confirm", "auth.logout",
                             "auth.home"})
#: MSP roles that act on a tenant's held mail while viewing the tenant as it (presented as its auditor: they read
#: everything else); an msp_admin views as the tenant's admin and needs no mention.
QUARANTINE_HELPDESK: tuple[Role, ...] = (Role.MSP_HELPDESK,)
#: Key in ``app.extensions`` of the API's bearer-key check, ``check(scope) -> response or None`` (set by app.api).
API_AUTH_EXT = "mailward_api_auth"

V = TypeVar("V", bound=Callable[..., Any])


@dataclass(frozen=True)
class Access:
    """A view's declaration: public, or the roles that may call it."""

    roles: frozenset[Role]
    public: bool = False
    #: A REST API view: the API key scope it needs (the roles are then empty: no session may call it).
    api_scope: str | None = None
    #: MSP roles admitted while they view a tenant as it, whatever tenant role they are presented with.
    viewing_as: frozenset[Role] = frozenset()

    def admits(self, role: Role, viewing_as: Role | None = None) -> bool:
        """Whether ``role`` may call the view; ``viewing_as``: the MSP role of a user viewing a tenant as it."""
        return self.public or role in self.roles or (viewing_as is not None and viewing_as in self.viewing_as)


def allow(*roles: Role | str, viewing_as: Iterable[Role | str] = ()) -> Callable[[V], V]:
    """Declare the roles that may call a view, and the MSP roles that may while viewing a tenant as it; an unknown
    role name fails at import, not at request time."""
    if not roles:
        raise ValueError("allow() needs at least one role; use @allow_public for public views")
    declared = frozenset(Role(r) for r in roles)
    msp_viewing = frozenset(Role(r) for r in viewing_as)
    if not all(r.is_msp for r in msp_viewing):
        raise ValueError("allow(viewing_as=...) names MSP roles: only they view a tenant as it")

    def mark(view: V) -> V:
        setattr(view, ACCESS_ATTR, Access(declared, viewing_as=msp_viewing))
        return view

    return mark


def allow_public(view: V) -> V:
    """Declare a view callable without signing in (login page, health probes)."""
    setattr(view, ACCESS_ATTR, Access(frozenset(), public=True))
    return view


def allow_api(scope: str) -> Callable[[V], V]:
    """Declare a REST API view and the API key scope it needs (read, write or quarantine)."""
    if scope not in API_KEY_SCOPES:
        raise ValueError(f"allow_api({scope!r}): use one of {', '.join(API_KEY_SCOPES)}")

    def mark(view: V) -> V:
        setattr(view, ACCESS_ATTR, Access(frozenset(), api_scope=scope))
        return view

    return mark


def access_of(view: Callable[..., Any]) -> Access | None:
    """The declaration a view carries, or None when it has none."""
    access = getattr(view, ACCESS_ATTR, None)
    return access if isinstance(access, Access) else None


def enforce() -> ResponseReturnValue | None:
    """Before-request hook: admit the caller to the matched view or stop the request."""
    endpoint = request.endpoint
    if endpoint is None:  # no route matched: Flask answers 404/405 itself
        return None
    if endpoint == "static" or endpoint.endswith(".static"):
        return None
    access = access_of(current_app.view_functions[endpoint])
    if access is None:
        log.error("view %s has no access declaration (@allow or @allow_public); refusing the request", endpoint)
        abort(500)
    if access.api_scope is not None:
        check = current_app.extensions.get(API_AUTH_EXT)
        if check is None:
            log.error("API view %s but no API key check is installed; refusing the request", endpoint)
            abort(500)
        return check(access.api_scope)  # type: ignore[no-any-return]
    if access.public:
        return None
    if not current_user.is_authenticated:
        return current_app.login_manager.unauthorized()  # type: ignore[attr-defined, no-any-return]
    if getattr(current_user, "must_enrol_totp", False) and endpoint not in ENROL_ENDPOINTS:
        return redirect(url_for("account.totp"))  # the MSP requires a second factor: enrol before anything else
    if not access.admits(current_user.role, current_user.real_role if getattr(current_user, "acting_as", None)
                         else None):
        abort(404)
    if session.get(LINK_SESSION) and request.blueprint not in LINK_BLUEPRINTS and endpoint not in LINK_ENDPOINTS:
        return current_app.login_manager.unauthorized()  # type: ignore[attr-defined, no-any-return]
    return None
