"""``POST /api/v1/users`` and ``PATCH /api/v1/users/<id>``: create users (with a password, or invited by mail to set
one) and change their role or state, through :mod:`tenants.users`; ``POST /api/v1/users/<id>/reset`` mails a
set-password link through :mod:`tenants.accounts` (the list is in :mod:`app.api.tenancy`).

A tenant key manages its tenant's users; an MSP key names ``tenant_id`` for a tenant's user, or creates MSP staff
(``msp_admin``, ``msp_helpdesk``) without it. As with keys (a key never grants scopes it lacks), only a key holding
every scope may create or promote an admin: an admin can make keys with every scope.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from app.access import allow_api
from app.api import schemas as sch
from app.api.actions import committed, refused
from app.api.audit import record
from app.api.auth import caller
from app.api.blueprint import bp, resolve_tenant
from app.api.errors import ApiError
from app.extensions import config, db
from tenants import accounts, services, users
from tenants.apikeys import SCOPES
from tenants.models import Role, User
from tenants.scope import load
from tenants.services import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH


class UserCreateSchema(Schema):
    email = fields.String(required=True, validate=validate.Length(3, 320),
                          metadata={"description": "Login address; a tenant user's is in one of the tenant's domains"})
    role = fields.String(required=True, validate=validate.OneOf([r.value for r in Role]), metadata={
        "description": "tenant_admin, tenant_auditor or user for a tenant's user; msp_admin or msp_helpdesk for "
                       "MSP staff (MSP keys, no tenant_id)"})
    password = fields.String(load_only=True, validate=validate.Length(MIN_PASSWORD_LENGTH, MAX_PASSWORD_LENGTH),
                             metadata={"description": "Initial password; omitted: the user signs in by the links "
                                                      "in their quarantine digest only (or, with invite, sets one)"})
    invite = fields.Boolean(load_default=False, metadata={
        "description": "true (and no password): mail the user an invitation link to set their own password"})
    tenant_id = fields.Integer(validate=validate.Range(1, sch.MAX_ID), metadata={
        "description": "MSP keys: the user's tenant (omitted: MSP staff). Tenant keys: their own"})


class LinkMailedSchema(Schema):
    user_id = fields.Integer(required=True)
    email = fields.String(required=True, metadata={"description": "Where the link is mailed"})
    purpose = fields.String(required=True, metadata={"description": "reset or invite"})
    status = fields.String(required=True, metadata={"description": "queued: the worker mails it"})


class UserUpdateSchema(Schema):
    role = fields.String(validate=validate.OneOf([r.value for r in Role]),
                         metadata={"description": "Another role of the same level (tenant or MSP)"})
    active = fields.Boolean(metadata={"description": "false: the user can no longer sign in"})


def _may_grant(role: Role) -> None:
    """403 ``forbidden_scope`` when a key lacking some scope would create or promote an admin."""
    missing = [s for s in SCOPES if s not in caller().scopes]
    if role in users.ADMIN_ROLES and missing:
        raise ApiError(403, "forbidden_scope", f"only a key with every scope may make an admin ({role.value}); "
                                               f"this key lacks {', '.join(missing)}")


def _audit(action: str, user: User, detail: str = "") -> None:
    record(action, f"user {user.email}", detail, tenant_id=user.tenant_id)


@bp.route("/users", methods=["POST"], endpoint="create_user", tags=["users"])
@allow_api("write")
@bp.arguments(UserCreateSchema)
@bp.response(201, sch.UserSchema)
def create_user(body: dict[str, Any]) -> User:
    """Create a user of the key's tenant (MSP keys: of ``tenant_id``, or MSP staff without it)."""
    session = db.session
    tid = resolve_tenant(body.get("tenant_id"))
    with refused(fields=("role",)):
        role = users.parse_role(body["role"], tid)
    _may_grant(role)
    if body["invite"] and body.get("password"):
        message = "either set an initial password or send an invitation, not both"
        raise ApiError(422, "validation", message, fields={"invite": [message]})
    tenant = services.get_tenant(session, tid) if tid is not None else None
    with committed():
        user = users.create_user(session, body["email"], role.value, tenant, body.get("password"))
        how = "initial password set" if user.password_hash else "invited" if body["invite"] else "no password"
        _audit("user.create", user, f"role {user.role}, {how}")
        if body["invite"]:
            _audit("user.invite", user, "invitation link mailed")
            accounts.queue_link(session, config(), user, "invite")
    return user


@bp.route("/users/<rowid:user_id>/reset", methods=["POST"], endpoint="reset_user", tags=["users"])
@allow_api("write")
@bp.response(202, LinkMailedSchema)
def reset_user(user_id: int) -> dict[str, Any]:
    """Reset a user's password: it stops working at once, their sessions end, and the worker mails them a link to
    set a new one (single use, expiring). A deactivated user is 422."""
    session = db.session
    user = load(session, User, user_id)  # another tenant's user (or, for a tenant key, MSP staff) is 404
    with committed():
        accounts.start_reset(user, actor_id=None)
        _audit("user.password_reset", user, "reset link mailed")
        accounts.queue_link(session, config(), user, "reset")
    return {"user_id": user.id, "email": user.email, "purpose": "reset", "status": "queued"}


@bp.route("/users/<rowid:user_id>", methods=["PATCH"], endpoint="update_user", tags=["users"])
@allow_api("write")
@bp.arguments(UserUpdateSchema)
@bp.response(200, sch.UserSchema)
def update_user(body: dict[str, Any], user_id: int) -> User:
    """Change a user's role (within its level) or deactivate / reactivate it; omitted fields stay as they are."""
    session = db.session
    user = load(session, User, user_id)  # another tenant's user (or, for a tenant key, MSP staff) is 404
    with committed():
        if "role" in body:
            old = user.role
            with refused(fields=("role",)):
                role = users.parse_role(body["role"], user.tenant_id)
            if role.value != old:
                _may_grant(role)
            if users.set_role(user, role.value, actor_id=None):
                _audit("user.role", user, f"{old} → {user.role}")
        if "active" in body and users.set_active(user, bool(body["active"]), actor_id=None):
            _audit("user.activate" if user.active else "user.deactivate", user)
    return user
