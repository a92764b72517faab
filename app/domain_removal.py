"""Removing a domain from the web: the confirmation page (what happens to its queued and quarantined mail, with
counts) and the removal itself, shared by the portal (a tenant admin, own domains) and the console (msp_admin).

The rules live in :mod:`tenants.domains`; the routes are declared in :mod:`app.portal` and :mod:`app.console`.
"""

from __future__ import annotations

from flask import flash, redirect, render_template
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from wtforms import StringField, SubmitField
from wtforms.validators import DataRequired, Length

from app.actions import attempt
from app.audit import audit
from app.extensions import config, db
from tenants import domains
from tenants.models import Domain
from tenants.platform.redisconn import bump_policy_version


class RemoveDomainForm(FlaskForm):
    """The domain's name typed again: one click alone never stops a customer's mail (no script: CSP)."""

    name = StringField("Type the domain's name to confirm", validators=[DataRequired(), Length(max=253)])
    submit = SubmitField("Remove domain")


def _page(domain: Domain, form: RemoveDomainForm, action: str, back: str, status: int = 200) -> ResponseReturnValue:
    return render_template("domain_remove.html", domain=domain, form=form, action=action, back=back,
                           impact=domains.impact(db.session, domain)), status


def confirm_page(domain: Domain, action: str, back: str) -> ResponseReturnValue:
    """What removing ``domain`` does, and the form that does it (posting to ``action``; ``back``: cancel)."""
    return _page(domain, RemoveDomainForm(formdata=None, prefix="remove"), action, back)


def remove(domain: Domain, action: str, back: str, done: str, *, tenant_id: int) -> ResponseReturnValue:
    """Remove ``domain`` once its name is typed, audit it for ``tenant_id``, tell the ingresses; go to ``done``."""

    s = db.session
    form = RemoveDomainForm(prefix="remove")
    if not form.validate_on_submit():
        return _page(domain, form, action, back, status=422)
    name = domain.name
    with attempt(flash_error=False) as removed:
        found = domains.remove(s, domain, form.name.data or "")
        audit(domains.REMOVE_ACTION, f"domain {name}", found.summary(), tenant_id=tenant_id)
    if not removed:
        form.name.errors = [removed.error]
        return _page(domain, form, action, back, status=422)
    bump_policy_version(config())  # every ingress forgets the domain: RCPT to it is refused from now on
    flash(f"Domain {name} removed: it receives no more mail. {found.queued} queued mail(s) are still delivered and "
          f"{found.quarantined} quarantined mail(s) stay until their retention.", "success")
    return redirect(done)
