"""The console's onboarding wizard for a new customer (``console`` blueprint, msp_admin): tenant → first domain and
its transport, tested → first admin, invited → DNS checklist.

``/console/onboarding`` creates the tenant; ``/console/onboarding/<tenant_id>`` opens at the step the tenant's data
says is next (:func:`tenants.onboarding.progress`): nothing remembers the wizard, so it resumes wherever it was left,
and the tenant's page offers "Continue setup" until the steps before the DNS checklist are done. The checklist is read
from the cache the worker fills (:mod:`tenants.dnscache`); no page looks DNS up.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from sqlalchemy.exc import IntegrityError
from wtforms import Field, SelectField, StringField, SubmitField
from wtforms.validators import DataRequired, Length

from app.access import allow
from app.actions import Outcome, attempt
from app.audit import audit
from app.auth import passwords
from app.console import bp
from app.extensions import config, db, redis
from app.forms import TLS_CHOICES
from tenants import claims, dnscache, dnsreadiness, onboarding, services, transportcheck
from tenants.egress import EgressPolicy
from tenants.exceptions import NotFound
from tenants.models import Domain, Role, Tenant, TlsMode
from tenants.platform.redisconn import bump_policy_version


class TenantStepForm(FlaskForm):
    name = StringField("Customer name", validators=[DataRequired(), Length(max=100)])
    submit = SubmitField("Create customer")


class DomainStepForm(FlaskForm):
    name = StringField("Domain", validators=[DataRequired(), Length(max=253)])
    transport = StringField("Customer's mail server (host:port)", validators=[DataRequired(), Length(max=270)])
    tls = SelectField("TLS to it", choices=TLS_CHOICES, default=TlsMode.OPPORTUNISTIC.value)
    submit = SubmitField("Add domain and test connection")


class TransportStepForm(FlaskForm):
    host = StringField("Host", validators=[DataRequired(), Length(max=253)])
    port = StringField("Port", validators=[DataRequired(), Length(max=5)])
    tls = SelectField("TLS to it", choices=TLS_CHOICES)
    submit = SubmitField("Test connection")


class AdminStepForm(FlaskForm):
    email = StringField("Admin's e-mail address", validators=[DataRequired(), Length(max=320)])
    submit = SubmitField("Invite admin")


def _audit(action: str, target: str, detail: str = "", *, tenant_id: int | None) -> None:

    audit(action, target, detail, tenant_id=tenant_id)


def _tenant(tenant_id: int) -> Tenant:
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return tenant


def _progress(tenant_id: int) -> tuple[Tenant, onboarding.Progress]:
    """A wizard step's tenant (404 for none) and how far its setup is."""
    tenant = _tenant(tenant_id)
    return tenant, onboarding.progress(db.session, tenant)


@contextmanager
def _step(field: Field, taken: str = "") -> Iterator[Outcome]:
    """A step's work, committed as by :func:`~app.actions.attempt`; a refusal is shown under ``field``, and so is
    ``taken`` when the commit finds the name registered by someone else between the check and the commit."""
    try:
        with attempt(flash_error=False) as done:
            yield done
    except IntegrityError:
        if not taken:
            raise
        db.session.rollback()
        done.error = taken
    if not done:
        field.errors = [*field.errors, done.error]


def _wizard(tenant_id: int) -> ResponseReturnValue:
    return redirect(url_for("console.onboarding_step", tenant_id=tenant_id))


@bp.app_template_global("onboarding_progress")
def onboarding_progress(tenant: Tenant) -> onboarding.Progress:
    """The tenant's setup, for its console page ("Continue setup" while incomplete)."""
    return onboarding.progress(db.session, tenant)


def _page(tenant: Tenant | None, *, tenant_form: TenantStepForm | None = None,
          domain_form: DomainStepForm | None = None, transport_form: TransportStepForm | None = None,
          admin_form: AdminStepForm | None = None, status: int = 200) -> ResponseReturnValue:
    """The wizard at the tenant's current step (``tenant`` None: the first step, naming the customer)."""
    cfg = config()
    if tenant is None:
        return render_template("console/onboarding.html", tenant=None, progress=None, step=onboarding.TENANT,
                               steps=onboarding.STEPS, tenant_form=tenant_form or TenantStepForm(formdata=None),
                               hostname=cfg.hostname), status
    progress = onboarding.progress(db.session, tenant)
    checklist = None
    if progress.step == onboarding.TRANSPORT and transport_form is None and progress.domain is not None:
        d = progress.domain
        transport_form = TransportStepForm(formdata=None, data={"host": d.transport_host,
                                                                "port": str(d.transport_port),
                                                                "tls": d.transport_tls})
    if progress.step == onboarding.DNS and progress.domain is not None:
        checklist = dnscache.for_page(db.session, cfg, redis(), progress.domain)
    return render_template(
        "console/onboarding.html", tenant=tenant, progress=progress, step=progress.step, steps=onboarding.STEPS,
        domain_form=domain_form or DomainStepForm(formdata=None), transport_form=transport_form,
        admin_form=admin_form or AdminStepForm(formdata=None), checklist=checklist, hostname=cfg.hostname,
        hostname_usable=dnsreadiness.hostname_usable(cfg.hostname)), status


def _test_transport(domain: Domain) -> transportcheck.TransportCheck:
    """Test the domain's transport now, record the outcome in the audit log (it decides the step), and say it."""
    s = db.session
    result = transportcheck.check_transport(config(), domain, EgressPolicy(config()))
    _audit(onboarding.TRANSPORT_TEST_ACTION, onboarding.transport_test_target(domain),
           onboarding.transport_test_detail(domain, result), tenant_id=domain.tenant_id)
    s.commit()
    if result.ok:
        flash(f"Connection tested: {result.message}.", "success")
    else:
        flash(f"The connection test failed: {result.message}. Correct the transport, or have the customer's mail "
              "server accept Mailward, then test again.", "error")
    return result


# --- the customer ---------------------------------------------------------------------------------------------------

@bp.route("/onboarding")
@allow(Role.MSP_ADMIN)
def onboarding_start() -> ResponseReturnValue:
    return _page(None)


@bp.route("/onboarding", methods=["POST"])
@allow(Role.MSP_ADMIN)
def onboarding_create_tenant() -> ResponseReturnValue:
    form = TenantStepForm()
    if not form.validate_on_submit():
        return _page(None, tenant_form=form, status=422)
    s = db.session
    name = (form.name.data or "").strip()
    with _step(form.name, taken=f"tenant {name!r} already exists") as done:
        tenant = services.create_tenant(s, name)
        _audit("tenant.create", f"tenant {tenant.name}", "onboarding wizard", tenant_id=tenant.id)
    if not done:
        return _page(None, tenant_form=form, status=422)
    flash(f"Customer {tenant.name} created. Next: its first domain.", "success")
    return _wizard(tenant.id)


@bp.route("/onboarding/<int:tenant_id>")
@allow(Role.MSP_ADMIN)
def onboarding_step(tenant_id: int) -> ResponseReturnValue:
    """The wizard, at the step the tenant's data says is next."""
    return _page(_tenant(tenant_id))


# --- the first domain and its transport -----------------------------------------------------------------------------

@bp.route("/onboarding/<int:tenant_id>/domain", methods=["POST"])
@allow(Role.MSP_ADMIN)
def onboarding_domain(tenant_id: int) -> ResponseReturnValue:
    tenant, progress = _progress(tenant_id)
    if progress.step != onboarding.DOMAIN:
        flash(f"{tenant.name} has a domain already; add more on its page later.", "info")
        return _wizard(tenant.id)
    form = DomainStepForm()
    if not form.validate_on_submit():
        return _page(tenant, domain_form=form, status=422)
    cfg = config()
    with _step(form.name, taken=str(claims.not_available((form.name.data or "").strip()))) as done:
        host, port = services.parse_transport(form.transport.data or "")
        domain = services.add_domain(db.session, tenant, form.name.data or "", host, port, form.tls.data,
                                     egress=EgressPolicy(cfg))
        _audit("domain.create", f"domain {domain.name}", f"transport {domain.transport}, TLS {domain.transport_tls}",
               tenant_id=tenant.id)
    if not done:
        return _page(tenant, domain_form=form, status=422)
    bump_policy_version(cfg)
    flash(f"Domain {domain.name} added to {tenant.name}; it receives mail at once (you vouch for it).", "success")
    _test_transport(domain)
    return _wizard(tenant.id)


@bp.route("/onboarding/<int:tenant_id>/transport", methods=["POST"])
@allow(Role.MSP_ADMIN)
def onboarding_transport(tenant_id: int) -> ResponseReturnValue:
    """Save the transport when it was changed, then test it."""
    tenant, progress = _progress(tenant_id)
    domain = progress.domain
    if domain is None:
        return _wizard(tenant.id)
    form = TransportStepForm()
    if not form.validate_on_submit():
        return _page(tenant, transport_form=form, status=422)
    cfg = config()
    before = (domain.transport_host, domain.transport_port, domain.transport_tls)
    with _step(form.host) as done:
        services.update_transport(domain, form.host.data or "", form.port.data or "", form.tls.data or "",
                                  egress=EgressPolicy(cfg))
        if (domain.transport_host, domain.transport_port, domain.transport_tls) != before:
            _audit("domain.transport", f"domain {domain.name}",
                   f"transport {domain.transport}, TLS {domain.transport_tls}", tenant_id=tenant.id)
    if not done:
        return _page(tenant, transport_form=form, status=422)
    if (domain.transport_host, domain.transport_port, domain.transport_tls) != before:
        bump_policy_version(cfg)
    _test_transport(domain)
    return _wizard(tenant.id)


# --- the first admin ------------------------------------------------------------------------------------------------

@bp.route("/onboarding/<int:tenant_id>/admin", methods=["POST"])
@allow(Role.MSP_ADMIN)
def onboarding_admin(tenant_id: int) -> ResponseReturnValue:
    """Create the tenant's first admin without a password and mail them an invitation link."""
    tenant, progress = _progress(tenant_id)
    if progress.admin is not None:
        flash(f"{tenant.name} has an admin already: {progress.admin.email}.", "info")
        return _wizard(tenant.id)
    form = AdminStepForm()
    if not form.validate_on_submit():
        return _page(tenant, admin_form=form, status=422)
    with _step(form.email, taken=f"user {(form.email.data or '').strip().lower()} already exists") as done:
        user = onboarding.invite_admin(db.session, tenant, form.email.data or "")
        _audit("user.create", f"user {user.email}", f"role {user.role}, invited", tenant_id=tenant.id)
        passwords.invite(user)
    if not done:
        return _page(tenant, admin_form=form, status=422)
    flash(f"{user.email} is {tenant.name}'s admin: an invitation to choose a password is on its way.", "success")
    return _wizard(tenant.id)


# --- the DNS checklist ----------------------------------------------------------------------------------------------

@bp.route("/onboarding/<int:tenant_id>/dns-check", methods=["POST"])
@allow(Role.MSP_ADMIN)
def onboarding_dns_check(tenant_id: int) -> ResponseReturnValue:
    """Have the worker look the wizard domain's records up again ("Re-check")."""
    tenant, progress = _progress(tenant_id)
    if progress.domain is not None:
        flash(*dnscache.recheck(config(), redis(), progress.domain))
    return _wizard(tenant.id)
