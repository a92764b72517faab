"""The MSP console: its home is the dashboard (:mod:`tenants.dashboard`: mail, queue, held mail and what needs
attention) above the tenant list with its domains (searched, sorted and paged in SQL); msp_admin creates tenants and
adds domains, msp_helpdesk reads.

A tenant's page shows its domains, admins, this month's usage and its state; msp_admin suspends and resumes it,
downloads its export (only msp_admin: the export holds every mail) and, once it is suspended and exported, deletes it
(:mod:`tenants.lifecycle`). Requests here run in the MSP scope (set from the role in :func:`app.auth.enter_scope`),
so the lists span all tenants.
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from wtforms import BooleanField, StringField, SubmitField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length

from app import domain_removal
from app.access import MSP_ROLES, allow
from app.actions import attempt
from app.audit import audit
from app.exports import tenant_zip
from app.extensions import config, db, redis
from app.forms import DomainForm, TenantForm
from tenants import dashboard, lifecycle, services
from tenants.egress import EgressPolicy
from tenants.exceptions import NotFound, ValidationError
from tenants.models import Domain, Role, Tenant, User
from tenants.platform.redisconn import bump_policy_version
from tenants.scope import load, tenant_scope

bp = Blueprint("console", __name__, url_prefix="/console")


def _audit(action: str, target: str, detail: str = "", *, tenant_id: int | None) -> None:

    audit(action, target, detail, tenant_id=tenant_id)


def _list_args() -> tuple[dashboard.ListArgs, int]:
    """The tenant list's ``?q=&sort=&dir=&page=``; bad ones are flashed and the default list shown (400)."""
    a = request.args
    try:
        return dashboard.list_args(a.get("q"), a.get("sort"), a.get("dir"), a.get("page")), 200
    except ValidationError as exc:
        flash(str(exc), "error")
        return dashboard.ListArgs(), 400


def _page(tenant_form: TenantForm | None = None, domain_form: DomainForm | None = None,
          status: int = 200) -> ResponseReturnValue:
    """The console home; a form given here was submitted and is shown again with its values and errors."""
    s = db.session
    args, bad = _list_args()
    listing = dashboard.tenant_page(s, args)
    domains = dashboard.domains_of(s, [t.id for t in listing.rows])
    tenant_form = tenant_form or TenantForm(formdata=None, prefix="tenant")
    domain_form = domain_form or DomainForm(formdata=None, prefix="domain")
    domain_form.tenant.choices = [SelectChoice(i, n) for i, n in
                                  s.execute(select(Tenant.id, Tenant.name).order_by(Tenant.name))]
    return render_template("console/index.html", board=dashboard.build(s, config(), redis()), listing=listing,
                           domains=domains, sorts=dashboard.SORTS, default_dirs=dashboard.DEFAULT_DIRS,
                           duration=dashboard.duration, tenant_form=tenant_form, domain_form=domain_form,
                           can_edit=current_user.role is Role.MSP_ADMIN), max(status, bad)


@bp.route("/")
@allow(*MSP_ROLES)
def index() -> ResponseReturnValue:
    return _page()


@bp.route("/tenants", methods=["POST"])
@allow(Role.MSP_ADMIN)
def create_tenant() -> ResponseReturnValue:
    form = TenantForm(prefix="tenant")
    if form.validate_on_submit():
        s = db.session
        name = form.name.data or ""
        try:
            with attempt() as done:
                tenant = services.create_tenant(s, name)
                _audit("tenant.create", f"tenant {tenant.name}", tenant_id=tenant.id)
        except IntegrityError:  # created by someone else between the check and the commit
            s.rollback()
            flash(f"tenant {name.strip()!r} already exists", "error")
        if done:
            flash(f"Tenant {tenant.name} created.", "success")
            return redirect(url_for("console.index"))
    return _page(tenant_form=form, status=422)


@bp.route("/domains", methods=["POST"])
@allow(Role.MSP_ADMIN)
def add_domain() -> ResponseReturnValue:
    s = db.session
    form = DomainForm(prefix="domain")
    form.tenant.choices = [SelectChoice(t.id, t.name) for t in services.list_tenants(s)]
    if form.validate_on_submit():
        try:
            with attempt(ValidationError, NotFound) as done:
                tenant = services.get_tenant(s, form.tenant.data)
                host, port = services.parse_transport(form.transport.data or "")
                domain = services.add_domain(s, tenant, form.name.data or "", host, port, form.tls.data,
                                             egress=EgressPolicy(config()))
                _audit("domain.create", f"domain {domain.name}",
                       f"transport {domain.transport}, TLS {domain.transport_tls}", tenant_id=tenant.id)
        except IntegrityError:
            s.rollback()
            flash(f"domain {(form.name.data or '').strip()} is already registered", "error")
        if done:
            bump_policy_version(config())
            flash(f"Domain {domain.name} added to {tenant.name}; it receives mail at once (you vouch for it).",
                  "success")
            return redirect(url_for("console.index"))
    return _page(domain_form=form, status=422)


# --- one tenant: details, suspend / resume, export, delete -------------------------------------------------------

#: Roles listed as a tenant's admins on its page.
ADMIN_ROLES = (Role.TENANT_ADMIN.value, Role.TENANT_AUDITOR.value)


class ConfirmForm(FlaskForm):
    """Suspend or resume: a box to tick, so one click alone does not cut a customer off (no script: CSP)."""

    confirm = BooleanField("I am sure", validators=[DataRequired("Tick the box to confirm.")])
    submit = SubmitField("Confirm")


class DeleteTenantForm(FlaskForm):
    """Delete: the tenant's name typed again."""

    name = StringField("Type the tenant's name to confirm", validators=[DataRequired(), Length(max=200)])
    submit = SubmitField("Delete tenant and all its data")


def _tenant(tenant_id: int) -> Tenant:
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return tenant


def _tenant_page(tenant: Tenant, *, suspend_form: ConfirmForm | None = None,
                 delete_form: DeleteTenantForm | None = None, status: int = 200) -> ResponseReturnValue:
    s = db.session
    with tenant_scope(tenant.id):
        admins = list(s.scalars(select(User).where(User.tenant_id == tenant.id, User.role.in_(ADMIN_ROLES))
                                .order_by(User.email)))
    o = lifecycle.overview(s, tenant)
    can_edit = current_user.role is Role.MSP_ADMIN
    return render_template(
        "console/tenant.html", tenant=tenant, domains=o.domains, admins=admins, month=o.month, usage=o.usage,
        can_edit=can_edit, deletable=can_edit and o.deletable, pending=o.pending,
        suspend_form=suspend_form or ConfirmForm(formdata=None, prefix="state"),
        delete_form=delete_form or DeleteTenantForm(formdata=None, prefix="delete")), status


@bp.route("/tenants/<int:tenant_id>")
@allow(*MSP_ROLES)
def tenant_detail(tenant_id: int) -> ResponseReturnValue:
    return _tenant_page(_tenant(tenant_id))


def _change_state(tenant_id: int, suspended: bool) -> ResponseReturnValue:
    s = db.session
    t = _tenant(tenant_id)
    form = ConfirmForm(prefix="state")
    if not form.validate_on_submit():
        return _tenant_page(t, suspend_form=form, status=422)
    changed = lifecycle.suspend(s, t) if suspended else lifecycle.resume(s, t)
    if changed:
        _audit(lifecycle.SUSPEND_ACTION if suspended else lifecycle.RESUME_ACTION, f"tenant {t.name}", tenant_id=t.id)
    s.commit()
    bump_policy_version(config())  # the ingresses refuse (or accept again) its domains at once
    word = "suspended" if suspended else "resumed"
    flash(f"Tenant {t.name} {word}." if changed else f"Tenant {t.name} was already {word}.",
          "success" if changed else "info")
    return redirect(url_for("console.tenant_detail", tenant_id=t.id))


@bp.route("/tenants/<int:tenant_id>/suspend", methods=["POST"])
@allow(Role.MSP_ADMIN)
def suspend_tenant(tenant_id: int) -> ResponseReturnValue:
    return _change_state(tenant_id, True)


@bp.route("/tenants/<int:tenant_id>/resume", methods=["POST"])
@allow(Role.MSP_ADMIN)
def resume_tenant(tenant_id: int) -> ResponseReturnValue:
    return _change_state(tenant_id, False)


@bp.route("/tenants/<int:tenant_id>/export", methods=["POST"])
@allow(Role.MSP_ADMIN)
def export_tenant(tenant_id: int) -> ResponseReturnValue:
    """The tenant's export as a ZIP download (a POST: it is audited, and a delete depends on it)."""
    t = _tenant(tenant_id)
    return tenant_zip(db.session, config(), t, lambda summary: _audit(
        lifecycle.EXPORT_ACTION, f"tenant {t.name}", summary, tenant_id=t.id))


@bp.route("/tenants/<int:tenant_id>/delete", methods=["POST"])
@allow(Role.MSP_ADMIN)
def delete_tenant(tenant_id: int) -> ResponseReturnValue:
    s = db.session
    t = _tenant(tenant_id)
    form = DeleteTenantForm(prefix="delete")
    if not form.validate_on_submit():
        return _tenant_page(t, delete_form=form, status=422)
    if (form.name.data or "").strip() != t.name:
        form.name.errors = [f"That is not the name of this tenant: type {t.name} exactly."]
        return _tenant_page(t, delete_form=form, status=422)
    name, tid = t.name, t.id
    with attempt() as done:
        counts = lifecycle.delete(s, config(), t)
        detail = ", ".join(f"{table} {n}" for table, n in sorted(counts.items()) if n)
        _audit(lifecycle.DELETE_ACTION, f"tenant {name} (id {tid})", detail, tenant_id=None)  # the tenant is gone
    if not done:
        return _tenant_page(_tenant(tid), status=409)
    bump_policy_version(config())
    flash(f"Tenant {name} and all its data deleted.", "success")
    return redirect(url_for("console.index"))


@bp.route("/domains/<int:domain_id>/remove", methods=["GET", "POST"])
@allow(Role.MSP_ADMIN)
def remove_domain(domain_id: int) -> ResponseReturnValue:
    """Remove a tenant's domain after a confirmation that says what becomes of its mail (:mod:`tenants.domains`)."""
    d = load(db.session, Domain, domain_id)
    back = url_for("console.tenant_detail", tenant_id=d.tenant_id)
    action = url_for("console.remove_domain", domain_id=d.id)
    if request.method == "GET":
        return domain_removal.confirm_page(d, action, back)
    return domain_removal.remove(d, action, back, back, tenant_id=d.tenant_id)
