"""The MSP's own administration in the console (``console`` blueprint): MSP-wide API keys, MSP staff, and the
default allow and block lists every tenant inherits.

msp_admin creates and revokes keys and creates, deactivates, reactivates and deletes staff; msp_helpdesk reads.
Requests here run in the MSP scope; the pages touch only MSP-level rows (keys and users without a tenant): a
tenant's key or user id posted here is 404. Tenants manage their own keys and users in the portal
(:mod:`app.portal.admin`).
"""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from app.access import MSP_ROLES, allow
from app.actions import attempt
from app.audit import audit
from app.auth import passwords
from app.console import bp
from app.extensions import db
from app.forms import NewUserForm
from app.portal import admin as portal_admin
from app.portal.lists import add_entry_for, lists_page_for, remove_entry_for
from tenants import users
from tenants.exceptions import ValidationError
from tenants.models import Role


def _can_edit() -> bool:
    return current_user.role is Role.MSP_ADMIN


# --- MSP-wide API keys ----------------------------------------------------------------------------------------------

@bp.route("/apikeys")
@allow(*MSP_ROLES)
def apikeys_list() -> ResponseReturnValue:
    return portal_admin.apikeys_page("console/apikeys.html", None, _can_edit())


@bp.route("/apikeys", methods=["POST"])
@allow(Role.MSP_ADMIN)
def create_apikey() -> ResponseReturnValue:
    return portal_admin.create_apikey_for(None, "console/apikeys.html", "console.apikeys_list")


@bp.route("/apikeys/<int:key_id>/revoke", methods=["POST"])
@allow(Role.MSP_ADMIN)
def revoke_apikey(key_id: int) -> ResponseReturnValue:
    return portal_admin.revoke_apikey_of(key_id, None, "console.apikeys_list")


# --- MSP staff ------------------------------------------------------------------------------------------------------

def _staff_page(form: NewUserForm | None = None, status: int = 200) -> ResponseReturnValue:
    can_edit = _can_edit()
    if form is None and can_edit:
        form = portal_admin.user_form(users.MSP_STAFF_ROLES, formdata=False)
    return render_template("console/staff.html", users=users.list_users(db.session, None), form=form,
                           can_edit=can_edit, is_locked=users.is_locked, me=current_user.user_id), status


@bp.route("/staff")
@allow(*MSP_ROLES)
def staff() -> ResponseReturnValue:
    return _staff_page()


@bp.route("/staff", methods=["POST"])
@allow(Role.MSP_ADMIN)
def create_staff() -> ResponseReturnValue:
    form = portal_admin.user_form(users.MSP_STAFF_ROLES)
    if form.validate_on_submit():
        s = db.session
        with attempt() as done:
            if bool(form.password.data) == bool(form.invite.data):  # staff get no digest, so no link from one either
                raise ValidationError("staff sign in with a password: set an initial one, or send an invitation")
            user = users.create_user(s, form.email.data or "", form.role.data or "", None, form.password.data or None)
            audit("user.create", f"user {user.email}",
                  f"role {user.role}, {'initial password set' if user.password_hash else 'invited'}", tenant_id=None)
            if form.invite.data:
                passwords.invite(user)
        if done:
            flash(f"Staff member {user.email} created ({user.role}).", "success")
            return redirect(url_for("console.staff"))
    return _staff_page(form, status=422)


@bp.route("/staff/<int:user_id>/active", methods=["POST"])
@allow(Role.MSP_ADMIN)
def staff_active(user_id: int) -> ResponseReturnValue:
    return portal_admin.set_user_active(user_id, None, "console.staff")


@bp.route("/staff/<int:user_id>/unlock", methods=["POST"])
@allow(Role.MSP_ADMIN)
def staff_unlock(user_id: int) -> ResponseReturnValue:
    return portal_admin.unlock_user(user_id, None, "console.staff")


@bp.route("/staff/<int:user_id>/delete", methods=["POST"])
@allow(Role.MSP_ADMIN)
def staff_delete(user_id: int) -> ResponseReturnValue:
    return portal_admin.delete_user_of(user_id, None, "console.staff")


# --- MSP-wide allow and block lists ---------------------------------------------------------------------------------

@bp.route("/lists")
@allow(*MSP_ROLES)
def lists_page() -> ResponseReturnValue:
    """The MSP's own entries: every tenant inherits them (a tenant's or a user's entry decides first)."""
    return lists_page_for("lists_level.html", None, current_user.role is Role.MSP_ADMIN)


@bp.route("/lists", methods=["POST"])
@allow(Role.MSP_ADMIN)
def add_list_entry() -> ResponseReturnValue:
    return add_entry_for(None, "lists_level.html", "console.lists_page")


@bp.route("/lists/<int:entry_id>/delete", methods=["POST"])
@allow(Role.MSP_ADMIN)
def remove_list_entry(entry_id: int) -> ResponseReturnValue:
    return remove_entry_for(entry_id, None, "console.lists_page")
