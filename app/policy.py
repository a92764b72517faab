"""Policy pages: the MSP baseline in the console (``/console/policy``) and a tenant's own policy in the portal
(``/portal/policy``).

msp_admin edits the baseline and which keys tenants may not change (``locked``), msp_helpdesk reads it; tenant_admin
edits what the baseline leaves open, tenant_auditor reads. The rules live in :mod:`tenants.policyedit`; every change
is audited and bumps the policy version so every ingress reloads.
"""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from app import console, portal
from app.access import MSP_ROLES, allow
from app.extensions import config, db
from app.security import audit
from tenants import policyedit
from tenants.exceptions import ValidationError
from tenants.models import Role
from tenants.redisconn import bump_policy_version


def _page(tenant_id: int | None, can_edit: bool, action: str, error: str | None = None,
          submitted: dict[str, str] | None = None, status: int = 200) -> ResponseReturnValue:
    settings = policyedit.settings_view(db.session, tenant_id)
    scores = policyedit.scores_view(db.session, tenant_id)
    values = {s.key: s.own for s in settings}
    score_values = {r.symbol: r.own for r in scores}
    locked = set(policyedit.locked_keys(db.session))
    if submitted is not None:
        values.update({k[len(policyedit.FIELD_PREFIX):]: v for k, v in submitted.items()
                       if k.startswith(policyedit.FIELD_PREFIX)})
        score_values.update({k[len(policyedit.SCORE_PREFIX):]: v for k, v in submitted.items()
                             if k.startswith(policyedit.SCORE_PREFIX)})
        if tenant_id is None:
            locked = set(request.form.getlist("locked"))
    return render_template("policy/edit.html", settings=settings, values=values, locked=locked, scores=scores,
                           score_values=score_values, scores_locked=policyedit.SCORES in locked,
                           baseline=tenant_id is None, can_edit=can_edit, action=action, error=error), status


def _save(tenant_id: int | None, action: str, back: str) -> ResponseReturnValue:
    s = db.session
    form = {k: v for k, v in request.form.items()
            if k.startswith((policyedit.FIELD_PREFIX, policyedit.SCORE_PREFIX))}
    # "Override another symbol": a symbol the table does not list (one of SpamAssassin's ~2,000 rules, which are
    # listed only once they have an override, so that the page stays a form of a few hundred fields).
    extra = request.form.get("new_symbol", "").strip().upper()
    if extra:
        form[policyedit.SCORE_PREFIX + extra] = request.form.get("new_score", "")
    locked = request.form.getlist("locked") if tenant_id is None else None
    try:
        changed = policyedit.apply_form(s, tenant_id, form, locked)
    except ValidationError as exc:
        s.rollback()
        return _page(tenant_id, True, action, error=str(exc), submitted=form, status=422)
    if not changed:
        flash("Nothing changed.", "info")
        return redirect(url_for(back))
    target = "MSP baseline" if tenant_id is None else f"tenant {current_user.tenant_name}"
    if tenant_id is None:
        audit("policy.update", target, "; ".join(changed), tenant_id=None)
    else:
        audit("policy.update", target, "; ".join(changed))
    s.commit()
    bump_policy_version(config())
    flash(f"Policy saved: {', '.join(changed)}.", "success")
    return redirect(url_for(back))


@console.bp.route("/policy")
@allow(*MSP_ROLES)
def policy() -> ResponseReturnValue:
    return _page(None, current_user.role is Role.MSP_ADMIN, url_for("console.save_policy"))


@console.bp.route("/policy", methods=["POST"])
@allow(Role.MSP_ADMIN)
def save_policy() -> ResponseReturnValue:
    return _save(None, url_for("console.save_policy"), "console.policy")


@portal.bp.route("/policy")
@allow(*portal.TENANT_ROLES)
def tenant_policy() -> ResponseReturnValue:
    return _page(current_user.tenant_id, current_user.role is Role.TENANT_ADMIN, url_for("portal.save_tenant_policy"))


@portal.bp.route("/policy", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def save_tenant_policy() -> ResponseReturnValue:
    return _save(current_user.tenant_id, url_for("portal.save_tenant_policy"), "portal.tenant_policy")
