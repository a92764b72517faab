"""Managing people: a tenant's users (portal, API) and the MSP's staff (console, API).

Creation goes through :func:`tenants.services.create_user`; this module adds what the web and the API need on top:
the roles each level may hand out, a tenant user's login address in one of the tenant's own domains (no tenant can
claim, or probe for, another tenant's addresses), role changes and (de)activation that never let an admin lock
themselves out, lifting a sign-in lockout, and ending a user's web sessions. The caller owns the session and the
scope, and commits.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, object_session

from tenants.exceptions import NotFound, ValidationError
from tenants.models import Domain, Role, Tenant, User, utcnow
from tenants.scope import load
from tenants.services import create_user as _create_user

#: Roles a tenant's admin (or a tenant API key) may give a user of the tenant.
TENANT_USER_ROLES: tuple[Role, ...] = (Role.TENANT_ADMIN, Role.TENANT_AUDITOR, Role.USER)
#: Roles of the MSP's own staff.
MSP_STAFF_ROLES: tuple[Role, ...] = (Role.MSP_ADMIN, Role.MSP_HELPDESK)
#: Roles that can create API keys with every scope (and so hold every right of their level).
ADMIN_ROLES = frozenset({Role.MSP_ADMIN, Role.TENANT_ADMIN})


def roles_for(tenant_id: int | None) -> tuple[Role, ...]:
    """The roles a user of this level may have: a tenant's (``tenant_id``) or the MSP's staff (None)."""
    return MSP_STAFF_ROLES if tenant_id is None else TENANT_USER_ROLES


def parse_role(role: str, tenant_id: int | None) -> Role:
    """``role`` as a :class:`Role` allowed at this level; anything else is a :class:`ValidationError`."""
    allowed = roles_for(tenant_id)
    for r in allowed:
        if r.value == str(role).strip():
            return r
    who = "MSP staff" if tenant_id is None else "a tenant's users"
    raise ValidationError(f"role {role!r}: {who} take one of {', '.join(x.value for x in allowed)}")


def list_users(session: Session, tenant_id: int | None) -> list[User]:
    """A tenant's users, or the MSP's staff (``tenant_id`` None; MSP scope only), by e-mail."""
    cond = User.tenant_id.is_(None) if tenant_id is None else User.tenant_id == tenant_id
    return list(session.scalars(select(User).where(cond).order_by(User.email)))


def get_user(session: Session, user_id: int, tenant_id: int | None) -> User:
    """A user of this level by id; another tenant's user, or a tenant user asked for as staff, is :class:`NotFound`."""
    user = load(session, User, user_id)
    if user.tenant_id != tenant_id:
        raise NotFound(f"User {user_id} not found")
    return user


def _check_own_domain(session: Session, tenant: Tenant, email: str) -> None:
    domain = email.rpartition("@")[2]
    owned = session.scalar(select(Domain.id).where(Domain.tenant_id == tenant.id, Domain.name == domain))
    if owned is None:
        raise ValidationError(f"{email}: {domain or '(no domain)'} is not a domain of this tenant; a user's "
                              f"address is in one of the tenant's domains")


def create_user(session: Session, email: str, role: str, tenant: Tenant | None,
                password: str | None = None) -> User:
    """A new user of ``tenant`` (or MSP staff with None); no password: the user signs in by a digest's link only."""
    r = parse_role(role, tenant.id if tenant else None)
    if tenant is not None:
        _check_own_domain(session, tenant, email.strip().lower())
    return _create_user(session, email, r.value, tenant, password or None)


def keep_an_admin(user: User) -> None:
    """Refuse to take away the last active admin of a tenant (or of the MSP): nobody could manage it any more."""
    if not (user.active and Role(user.role) in ADMIN_ROLES):
        return
    session = object_session(user)
    assert session is not None, "a user loaded from a session"
    level = User.tenant_id == user.tenant_id if user.tenant_id is not None else User.tenant_id.is_(None)
    others = session.scalar(select(func.count()).select_from(User).where(
        level, User.role == user.role, User.active.is_(True), User.id != user.id))
    if not others:
        raise ValidationError(f"{user.email} is the last active {user.role}; make another user {user.role} first")


def set_role(user: User, role: str, *, actor_id: int | None) -> bool:
    """Give ``user`` another role of its level; True if it changed. Nobody demotes themselves (``actor_id``), and
    the last active admin stays one."""
    r = parse_role(role, user.tenant_id)
    if r.value == user.role:
        return False
    if user.id == actor_id:
        raise ValidationError("you cannot change your own role; ask another admin")
    keep_an_admin(user)
    user.role = r.value
    return True


def set_active(user: User, active: bool, *, actor_id: int | None) -> bool:
    """(De)activate ``user``; True if it changed. A deactivated user's sessions end at their next request. Nobody
    deactivates themselves, nor the last active admin."""
    if bool(user.active) == active:
        return False
    if not active and user.id == actor_id:
        raise ValidationError("you cannot deactivate your own account; ask another admin")
    if not active:
        keep_an_admin(user)
        end_sessions(user)
    user.active = active
    return True


def end_sessions(user: User) -> None:
    """End every web session ``user`` signed in before now (sign-out, deactivation): sessions carry the session
    version they were signed in with, and a session whose version is not the user's current one is refused."""
    user.session_version = (user.session_version or 0) + 1


def is_locked(user: User, now: datetime | None = None) -> bool:
    """Whether too many failed sign-ins lock the account right now."""
    return user.locked_until is not None and user.locked_until > (now or utcnow())


def unlock(user: User) -> bool:
    """Lift a sign-in lockout and forget the failed attempts; True if there was anything to clear."""
    changed = bool(user.failed_logins) or user.locked_until is not None
    user.failed_logins = 0
    user.locked_until = None
    return changed
