"""The tenant's own allow and block lists, and its branding, in the portal (``portal`` blueprint).

tenant_admin adds and removes tenant-level entries and edits the branding; tenant_auditor reads the lists. The MSP's
entries are shown for context (they apply unless a tenant or user entry decides first) but cannot be changed here.
Users' own entries are theirs: they manage them in their quarantine (``/q/lists``).
"""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from app.access import allow
from app.actions import attempt
from app.audit import audit
from app.extensions import config, db
from app.forms import BrandingForm, ListEntryForm
from app.portal import TENANT_ROLES, bp
from tenants import lists, services
from tenants.branding import brand_of, set_branding
from tenants.egress import EgressPolicy
from tenants.exceptions import NotFound
from tenants.models import Role


def lists_page_for(template: str, tenant_id: int | None, can_edit: bool, form: ListEntryForm | None = None,
                   status: int = 200) -> ResponseReturnValue:
    """A lists page of one level: the tenant's (``tenant_id``) or the MSP's (None), with the MSP's for context."""
    s = db.session
    form = form or (ListEntryForm(formdata=None) if can_edit else None)
    entries = lists.list_entries(s, tenant_id=tenant_id) if tenant_id is not None else lists.list_entries(s)
    return render_template(template, entries=entries, msp_entries=lists.list_entries(s), form=form,
                           can_edit=can_edit), status


def add_entry_for(tenant_id: int | None, template: str, back: str) -> ResponseReturnValue:
    """Add an entry at one level (the tenant's, or the MSP's for None); audited; the ingresses reload."""
    form = ListEntryForm()
    if form.validate_on_submit():
        s = db.session
        with attempt() as done:
            entry = lists.add_entry(s, kind=form.kind.data, value=form.value.data or "", tenant_id=tenant_id,
                                    comment=(form.comment.data or "").strip(), created_by=current_user.email)
            audit(f"list.{entry.kind}.add", entry.value, entry.comment, tenant_id=tenant_id)
            lists.reload_after_commit(s, config())
        if done:
            flash(f"{entry.value} is on the {entry.kind} list.", "success")
            return redirect(url_for(back))
    return lists_page_for(template, tenant_id, True, form, status=422)


def remove_entry_for(entry_id: int, tenant_id: int | None, back: str) -> ResponseReturnValue:
    """Remove an entry of exactly this level: a user's own entry, or another level's, is 404 here."""
    s = db.session
    entry = lists.get_entry(s, entry_id)
    if entry.user_id is not None or entry.tenant_id != tenant_id:
        raise NotFound(f"ListEntry {entry_id} not found")
    lists.remove_entry(s, entry_id)
    audit(f"list.{entry.kind}.remove", entry.value, tenant_id=tenant_id)
    lists.reload_after_commit(s, config())
    s.commit()
    flash(f"{entry.value} is off the {entry.kind} list.", "success")
    return redirect(url_for(back))


@bp.route("/lists")
@allow(*TENANT_ROLES)
def lists_page() -> ResponseReturnValue:
    return lists_page_for("lists_level.html", current_user.tenant_id, current_user.role is Role.TENANT_ADMIN)


@bp.route("/lists", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def add_list_entry() -> ResponseReturnValue:
    return add_entry_for(current_user.tenant_id, "lists_level.html", "portal.lists_page")


@bp.route("/lists/<int:entry_id>/delete", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def remove_list_entry(entry_id: int) -> ResponseReturnValue:
    return remove_entry_for(entry_id, current_user.tenant_id, "portal.lists_page")


def _branding_page(form: BrandingForm | None, status: int = 200) -> ResponseReturnValue:
    tenant = services.get_tenant(db.session, current_user.tenant_id)
    if form is None:
        form = BrandingForm(formdata=None, data={"name": tenant.brand_name or "", "color": tenant.brand_color or "",
                                                 "logo_url": tenant.brand_logo_url or ""})
    return render_template("portal/branding.html", form=form, current=brand_of(tenant), tenant=tenant), status


@bp.route("/branding")
@allow(Role.TENANT_ADMIN)
def branding() -> ResponseReturnValue:
    return _branding_page(None)


@bp.route("/branding", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def save_branding() -> ResponseReturnValue:
    form = BrandingForm()
    if form.validate_on_submit():
        tenant = services.get_tenant(db.session, current_user.tenant_id)
        with attempt() as done:
            set_branding(tenant, name=form.name.data or "", color=form.color.data or "",
                         logo_url=form.logo_url.data or "", egress=EgressPolicy(config()))
            audit("branding.update", f"tenant {tenant.name}", f"name {tenant.brand_name or ''!r}, "
                  f"colour {tenant.brand_color or ''}, logo {tenant.brand_logo_url or ''}")
        if done:
            flash("Branding saved: your users see it in their quarantine.", "success")
            return redirect(url_for("portal.branding"))
    return _branding_page(form, status=422)
