"""Policy pages: the MSP baseline in the console (``/console/policy``) and a tenant's own policy in the portal
(``/portal/policy``), each a short page (preset, then the main settings in sections with a Save each) and an
"Advanced" page of symbol scores (``.../policy/advanced``, searchable with ``?q=`` and by ``?group=``).

msp_admin edits the baseline, which keys tenants may not change (``locked``) and what each preset means;
msp_helpdesk reads them; tenant_admin edits what the baseline leaves open, tenant_auditor reads. The rules live in
:mod:`tenants.policyedit`; every change is audited and bumps the policy version so every ingress reloads.
"""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from app import console, portal
from app.access import MSP_ROLES, allow
from app.audit import audit
from app.extensions import config, db
from tenants import policyedit, policyscores
from tenants.exceptions import ValidationError
from tenants.models import Role
from tenants.platform.redisconn import bump_policy_version
from tenants.policy import stored_settings

#: Longest search text on the advanced page.
MAX_QUERY = 100
_FORM_PREFIXES = (policyedit.FIELD_PREFIX, policyscores.SCORE_PREFIX, policyscores.WAS_PREFIX,
                  policyedit.PRESET_FIELD_PREFIX)


def _endpoints(tenant_id: int | None) -> dict[str, str]:
    if tenant_id is None:
        return {"page": "console.policy", "save": "console.save_policy", "advanced": "console.policy_advanced",
                "save_advanced": "console.save_policy_advanced", "presets": "console.save_policy_presets"}
    return {"page": "portal.tenant_policy", "save": "portal.save_tenant_policy",
            "advanced": "portal.tenant_policy_advanced", "save_advanced": "portal.save_tenant_policy_advanced"}


def _page(tenant_id: int | None, can_edit: bool, error: str | None = None, submitted: dict[str, str] | None = None,
          status: int = 200) -> ResponseReturnValue:
    settings = policyedit.settings_view(db.session, tenant_id)
    values = {s.key: s.own for s in settings}
    locked = set(policyedit.locked_keys(db.session))
    presets = policyedit.presets_view(db.session)
    preset_values = {f"{p.name}.{k}": p.values.get(k, "") for p in presets for k in policyedit.PRESET_KEYS}
    if submitted is not None:
        values.update({k[len(policyedit.FIELD_PREFIX):]: v for k, v in submitted.items()
                       if k.startswith(policyedit.FIELD_PREFIX)})
        preset_values.update({k[len(policyedit.PRESET_FIELD_PREFIX):]: v for k, v in submitted.items()
                              if k.startswith(policyedit.PRESET_FIELD_PREFIX)})
        if tenant_id is None and "section" in request.form:
            section = request.form["section"]
            shown = set(policyedit.SECTIONS.get(section, ("", ()))[1])
            locked = (locked - shown) | set(request.form.getlist("locked"))
    baseline = stored_settings(db.session, None)
    own = baseline if tenant_id is None else stored_settings(db.session, tenant_id)
    overrides = policyscores.score_rows(baseline, None if tenant_id is None else own,
                                        policyedit.SCORES not in locked)
    return render_template("policy/edit.html", sections=policyedit.sections_view(settings), values=values,
                           locked=locked, presets=presets, preset_keys=policyedit.PRESET_KEYS,
                           preset_values=preset_values, labels=policyedit.EDITABLE,
                           kinds={s.key: s for s in settings},
                           open_sections=policyedit.OPEN_SECTIONS,
                           open_section=request.args.get("open") or request.form.get("section", ""),
                           current_preset=next(s.effective for s in settings if s.key == policyedit.PRESET),
                           overrides=[r for r in overrides if r.own], scores_locked=policyedit.SCORES in locked,
                           baseline=tenant_id is None, can_edit=can_edit, ep=_endpoints(tenant_id),
                           error=error), status


def _advanced(tenant_id: int | None, can_edit: bool, error: str | None = None,
              submitted: dict[str, str] | None = None, status: int = 200) -> ResponseReturnValue:
    q = request.values.get("q", "").strip()[:MAX_QUERY]
    group = request.values.get("group", "").strip()
    locked = set(policyedit.locked_keys(db.session))
    baseline = stored_settings(db.session, None)
    own = None if tenant_id is None else stored_settings(db.session, tenant_id)
    rows = policyscores.score_rows(baseline, own, policyedit.SCORES not in locked, q=q, group=group)
    score_values = {r.symbol: r.own for r in rows}
    scores_locked = policyedit.SCORES in locked
    if submitted is not None:
        score_values.update({k[len(policyscores.SCORE_PREFIX):]: v for k, v in submitted.items()
                             if k.startswith(policyscores.SCORE_PREFIX)})
        if tenant_id is None:
            scores_locked = policyedit.SCORES in request.form.getlist("locked")
    all_groups = policyscores.grouped(policyscores.score_rows(baseline, own, False))
    return render_template("policy/advanced.html", groups=policyscores.grouped(rows), count=len(rows), q=q,
                           group=group, all_groups=[(g.key, g.title, len(g.rows)) for g in all_groups],
                           score_values=score_values, scores_locked=scores_locked, baseline=tenant_id is None,
                           can_edit=can_edit, ep=_endpoints(tenant_id), error=error), status


def _commit(tenant_id: int | None, changed: list[str]) -> None:
    target = "MSP baseline" if tenant_id is None else f"tenant {current_user.tenant_name}"
    if tenant_id is None:
        audit("policy.update", target, "; ".join(changed), tenant_id=None)
    else:
        audit("policy.update", target, "; ".join(changed))
    db.session.commit()
    bump_policy_version(config())
    flash(f"Policy saved: {', '.join(changed)}.", "success")


def _form() -> dict[str, str]:
    form = {k: v for k, v in request.form.items() if k.startswith(_FORM_PREFIXES)}
    # "Override another symbol": a symbol the table does not list (one of SpamAssassin's ~2,000 rules, which are
    # listed only once they have an override).
    extra = request.form.get("new_symbol", "").strip().upper()
    if extra:
        form[policyscores.SCORE_PREFIX + extra] = request.form.get("new_score", "")
    return form


def _lock_scope() -> list[str] | None:
    section = request.form.get("section", "")
    if section == policyedit.ADVANCED:
        return [policyedit.SCORES]
    return list(policyedit.SECTIONS[section][1]) if section in policyedit.SECTIONS else None


def _save(tenant_id: int | None, advanced: bool = False) -> ResponseReturnValue:
    form = _form()
    locked = request.form.getlist("locked") if tenant_id is None else None
    render = _advanced if advanced else _page
    try:
        changed = policyedit.apply_form(db.session, tenant_id, form, locked, _lock_scope())
    except ValidationError as exc:
        db.session.rollback()
        return render(tenant_id, True, error=str(exc), submitted=form, status=422)
    ep = _endpoints(tenant_id)
    if changed:
        _commit(tenant_id, changed)
    else:
        flash("Nothing changed.", "info")
    if advanced:
        args: dict[str, Any] = {k: request.form[k] for k in ("q", "group") if request.form.get(k)}
        return redirect(url_for(ep["advanced"], **args))
    section = request.form.get("section", "")
    if section not in policyedit.SECTIONS:
        return redirect(url_for(ep["page"]))
    folded: dict[str, Any] = {} if section in policyedit.OPEN_SECTIONS else {"open": section}  # saved: stays open
    return redirect(url_for(ep["page"], **folded) + f"#{section}")


@console.bp.route("/policy")
@allow(*MSP_ROLES)
def policy() -> ResponseReturnValue:
    return _page(None, current_user.role is Role.MSP_ADMIN)


@console.bp.route("/policy", methods=["POST"])
@allow(Role.MSP_ADMIN)
def save_policy() -> ResponseReturnValue:
    return _save(None)


@console.bp.route("/policy/presets", methods=["POST"])
@allow(Role.MSP_ADMIN)
def save_policy_presets() -> ResponseReturnValue:
    try:
        changed = policyedit.apply_presets_form(db.session, _form() | {"restore": request.form.get("restore", "")})
    except ValidationError as exc:
        db.session.rollback()
        return _page(None, True, error=str(exc), submitted=_form(), status=422)
    if changed:
        _commit(None, changed)
    else:
        flash("Nothing changed.", "info")
    return redirect(url_for("console.policy") + "#presets")


@console.bp.route("/policy/advanced")
@allow(*MSP_ROLES)
def policy_advanced() -> ResponseReturnValue:
    return _advanced(None, current_user.role is Role.MSP_ADMIN)


@console.bp.route("/policy/advanced", methods=["POST"])
@allow(Role.MSP_ADMIN)
def save_policy_advanced() -> ResponseReturnValue:
    return _save(None, advanced=True)


@portal.bp.route("/policy")
@allow(*portal.TENANT_ROLES)
def tenant_policy() -> ResponseReturnValue:
    return _page(current_user.tenant_id, current_user.role is Role.TENANT_ADMIN)


@portal.bp.route("/policy", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def save_tenant_policy() -> ResponseReturnValue:
    return _save(current_user.tenant_id)


@portal.bp.route("/policy/advanced")
@allow(*portal.TENANT_ROLES)
def tenant_policy_advanced() -> ResponseReturnValue:
    return _advanced(current_user.tenant_id, current_user.role is Role.TENANT_ADMIN)


@portal.bp.route("/policy/advanced", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def save_tenant_policy_advanced() -> ResponseReturnValue:
    return _save(current_user.tenant_id, advanced=True)
