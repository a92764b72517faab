"""The MSP console: every tenant and its domains; msp_admin creates tenants and adds domains, msp_helpdesk reads.

Requests here run in the MSP scope (set from the role in :func:`app.auth.enter_scope`), so the lists span all tenants.
"""

from __future__ import annotations

from collections import defaultdict

from flask import Blueprint, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from sqlalchemy.exc import IntegrityError
from wtforms.fields.choices import SelectChoice

from app.access import MSP_ROLES, allow
from app.extensions import config, db
from app.forms import DomainForm, TenantForm
from tenants import services
from tenants.exceptions import NotFound, ValidationError
from tenants.models import Domain, Role, Tenant
from tenants.redisconn import bump_policy_version

bp = Blueprint("console", __name__, url_prefix="/console")


def _audit(action: str, target: str, detail: str = "", *, tenant_id: int | None) -> None:
    from app.security import audit  # app.security adds its views to this blueprint: import it late

    audit(action, target, detail, tenant_id=tenant_id)


def _page(tenant_form: TenantForm | None = None, domain_form: DomainForm | None = None,
          status: int = 200) -> ResponseReturnValue:
    """The console page; a form given here was submitted and is shown again with its values and errors."""
    s = db.session
    tenants: list[Tenant] = services.list_tenants(s)
    domains: dict[int, list[Domain]] = defaultdict(list)
    for d in services.list_domains(s):
        domains[d.tenant_id].append(d)
    tenant_form = tenant_form or TenantForm(formdata=None, prefix="tenant")
    domain_form = domain_form or DomainForm(formdata=None, prefix="domain")
    domain_form.tenant.choices = [SelectChoice(t.id, t.name) for t in tenants]
    return render_template("console/index.html", tenants=tenants, domains=domains, tenant_form=tenant_form,
                           domain_form=domain_form, can_edit=current_user.role is Role.MSP_ADMIN), status


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
            tenant = services.create_tenant(s, name)
            _audit("tenant.create", f"tenant {tenant.name}", tenant_id=tenant.id)
            s.commit()
        except ValidationError as exc:
            s.rollback()
            flash(str(exc), "error")
        except IntegrityError:  # created by someone else between the check and the commit
            s.rollback()
            flash(f"tenant {name.strip()!r} already exists", "error")
        else:
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
            tenant = services.get_tenant(s, form.tenant.data)
            host, port = services.parse_transport(form.transport.data or "")
            domain = services.add_domain(s, tenant, form.name.data or "", host, port, form.tls.data)
            _audit("domain.create", f"domain {domain.name}",
                   f"transport {domain.transport}, TLS {domain.transport_tls}", tenant_id=tenant.id)
            s.commit()
        except (ValidationError, NotFound) as exc:
            s.rollback()
            flash(str(exc), "error")
        except IntegrityError:
            s.rollback()
            flash(f"domain {(form.name.data or '').strip()} is already registered", "error")
        else:
            bump_policy_version(config())
            flash(f"Domain {domain.name} added to {tenant.name}.", "success")
            return redirect(url_for("console.index"))
    return _page(domain_form=form, status=422)
