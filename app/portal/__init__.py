"""The tenant portal: a tenant's own domains and their transports; tenant_admin edits, tenant_auditor reads.

Requests here run in the signed-in user's tenant scope, so lists need no tenant filter and an id of another tenant's
row loads as :class:`~tenants.exceptions.NotFound`, which the application answers with 404.
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from sqlalchemy.exc import IntegrityError

from app import domain_removal
from app.access import allow
from app.actions import attempt
from app.audit import audit
from app.extensions import config, db, redis
from app.forms import PortalDomainForm, TransportForm, transport_prefix
from tenants import claims, dnscache, onboarding, services, transportcheck, verification
from tenants.egress import EgressPolicy
from tenants.exceptions import ValidationError
from tenants.models import Domain, Role
from tenants.platform.redisconn import bump_policy_version
from tenants.scope import load

bp = Blueprint("portal", __name__, url_prefix="/portal")

TENANT_ROLES = (Role.TENANT_ADMIN, Role.TENANT_AUDITOR)


def _audit(action: str, target: str, detail: str = "") -> None:

    audit(action, target, detail)


def _can_edit() -> bool:
    return current_user.role is Role.TENANT_ADMIN


def _transport_form(domain: Domain, back: str) -> TransportForm:
    """An edit form filled from the row (not from the request)."""
    return TransportForm(formdata=None, prefix=transport_prefix(domain.id),
                         data={"host": domain.transport_host, "port": str(domain.transport_port),
                               "tls": domain.transport_tls, "back": back})


def _domain_page(domain: Domain, form: TransportForm | None, status: int = 200) -> ResponseReturnValue:
    """The domain's page; its DNS checklist comes from the worker's cache (:mod:`tenants.dnscache`), never live."""
    cfg = config()
    return render_template("portal/domain.html", domain=domain, form=form, can_edit=_can_edit(),
                           verification_record=verification.zone_line(cfg, domain),
                           dns=dnscache.for_page(db.session, cfg, redis(), domain)), status


def _index_page(add_form: PortalDomainForm | None = None, status: int = 200) -> ResponseReturnValue:
    domains = services.list_domains(db.session)
    editing = _can_edit()
    forms = {d.id: _transport_form(d, "index") for d in domains} if editing else {}
    if editing and add_form is None:
        add_form = PortalDomainForm(formdata=None, prefix="add")
    return render_template("portal/index.html", domains=domains, forms=forms,
                           add_form=add_form if editing else None), status


@bp.route("/")
@allow(*TENANT_ROLES)
def index() -> ResponseReturnValue:
    return _index_page()


@bp.route("/domains", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def add_domain() -> ResponseReturnValue:
    """Add a domain to the signed-in admin's tenant, then show its ownership record and DNS checklist.

    A tenant's own domain receives mail only once verified (its TXT record published, then Verify); a name another
    tenant has, or one inside another tenant's domain, is refused with the same words as any other taken name.
    """
    s = db.session
    form = PortalDomainForm(prefix="add")
    if form.validate_on_submit():
        try:
            tenant = services.get_tenant(s, current_user.tenant_id)
            host, port = services.parse_transport(form.transport.data or "")
            d = services.add_domain(s, tenant, form.name.data or "", host, port, form.tls.data,
                                    egress=EgressPolicy(config()))
            _audit("domain.create", f"domain {d.name}", f"transport {d.transport}, TLS {d.transport_tls}")
            s.commit()
        except ValidationError as exc:
            s.rollback()
            form.name.errors = [*form.name.errors, str(exc)]
        except IntegrityError:  # registered by someone else between the check and the commit
            s.rollback()
            form.name.errors = [*form.name.errors, str(claims.not_available((form.name.data or "").strip()))]
        else:
            bump_policy_version(config())
            flash(f"Domain {d.name} added. It receives mail once verified: publish the TXT record below, then "
                  "Verify.", "success")
            return redirect(url_for("portal.domain", domain_id=d.id))
    return _index_page(form, status=422)


@bp.route("/domains/<int:domain_id>")
@allow(*TENANT_ROLES)
def domain(domain_id: int) -> ResponseReturnValue:
    d = load(db.session, Domain, domain_id)
    return _domain_page(d, _transport_form(d, "detail") if _can_edit() else None)


@bp.route("/domains/<int:domain_id>/transport", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def update_transport(domain_id: int) -> ResponseReturnValue:
    s = db.session
    d = load(s, Domain, domain_id)
    form = TransportForm(prefix=transport_prefix(d.id))
    if form.validate_on_submit():
        with attempt() as done:
            services.update_transport(d, form.host.data or "", form.port.data or "", form.tls.data,
                                      egress=EgressPolicy(config()))
            _audit("domain.transport", f"domain {d.name}", f"transport {d.transport}, TLS {d.transport_tls}")
        if done:
            bump_policy_version(config())
            flash(f"Transport of {d.name} is now {d.transport} (TLS {d.transport_tls}).", "success")
            if form.back.data == "index":
                return redirect(url_for("portal.index"))
            return redirect(url_for("portal.domain", domain_id=d.id))
    return _domain_page(d, form, status=422)


@bp.route("/domains/<int:domain_id>/verify", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def verify_domain(domain_id: int) -> ResponseReturnValue:
    """Look the ownership record up now; once it is there the domain is verified and receives mail at once."""
    s = db.session
    d = load(s, Domain, domain_id)
    was = d.verified
    result = verification.check(config(), d)
    if d.verified != was:
        _audit("domain.verify", f"domain {d.name}", "verified")
    s.commit()
    if d.verified != was:
        bump_policy_version(config())  # the ingresses' sender-domain caches hold "nobody's" for it until then
    flash(result.message, "success" if result.verified else "error")
    dnscache.recheck(config(), redis(), d)  # the checklist's ownership row follows (Redis away: its card says so)
    return redirect(url_for("portal.domain", domain_id=d.id))


@bp.route("/domains/<int:domain_id>/transport-test", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def transport_test(domain_id: int) -> ResponseReturnValue:
    """Test connection: ask the saved transport whether it takes mail for the domain (:mod:`tenants.transportcheck`,
    through the egress policy; nothing is sent); the outcome is audited."""
    s = db.session
    d = load(s, Domain, domain_id)
    result = transportcheck.check_transport(config(), d, EgressPolicy(config()))
    _audit(onboarding.TRANSPORT_TEST_ACTION, onboarding.transport_test_target(d),
           onboarding.transport_test_detail(d, result))
    s.commit()
    flash(f"Connection tested: {result.message}." if result.ok else f"The connection test failed: {result.message}.",
          "success" if result.ok else "error")
    return redirect(url_for("portal.domain", domain_id=d.id))


@bp.route("/domains/<int:domain_id>/dns-check", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def recheck_dns(domain_id: int) -> ResponseReturnValue:
    """Have the worker look the domain's DNS records up again ("Re-check"); the page shows the result when ready."""
    d = load(db.session, Domain, domain_id)
    flash(*dnscache.recheck(config(), redis(), d))
    return redirect(url_for("portal.domain", domain_id=d.id))


@bp.route("/domains/<int:domain_id>/remove", methods=["GET", "POST"])
@allow(Role.TENANT_ADMIN)
def remove_domain(domain_id: int) -> ResponseReturnValue:
    """Remove one of the tenant's domains after a confirmation that says what becomes of its mail
    (:mod:`tenants.domains`); another tenant's domain is 404."""
    d = load(db.session, Domain, domain_id)
    action, back = url_for("portal.remove_domain", domain_id=d.id), url_for("portal.domain", domain_id=d.id)
    if request.method == "GET":
        return domain_removal.confirm_page(d, action, back)
    return domain_removal.remove(d, action, back, url_for("portal.index"), tenant_id=d.tenant_id)
