"""Mail rules pages: ``/portal/rules`` (a tenant's one list: its provider's baseline rules and its own; tenant_admin
changes its own and opts out of unlocked baseline rules, tenant_auditor reads) and ``/console/rules`` (the MSP's
baseline; msp_admin edits, msp_helpdesk reads).

A rule is written in the format of :mod:`tenants.mailrules.schema` (YAML or JSON in a text area; the page lists the
conditions, actions and macros). Views load, authorise, call :mod:`tenants.mailrules` (which audits and makes the
ingresses reload) and render. The regex tester compiles with the rules' own RE2 options, server side: no script.
"""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import HiddenField, StringField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length

from app.access import MSP_ROLES, allow
from app.actions import attempt
from app.console import bp as console_bp
from app.extensions import config, db
from app.portal import TENANT_ROLES
from app.portal import bp as portal_bp
from tenants.exceptions import NotFound, PermissionDenied, ValidationError
from tenants.mailrules import schema, service
from tenants.mailrules.service import RuleView
from tenants.mailrules.yamlio import MAX_TEXT, dump_rule, editable_view, find_view, load_rule
from tenants.models import Role

#: Longest sample text the regex tester takes.
MAX_SAMPLE = 10_000
#: Longest summary of a rule's conditions or actions in the list (the whole rule is a click away).
MAX_SUMMARY = 160
#: The parameter that says most about an action, in the list (the first an action has).
HINTS = ("to", "tag", "name", "host", "kind", "mode", "which", "position")
#: A new rule's text in the add form: a working example to edit.
EXAMPLE = """name: Tag external mail to finance
priority: 50
direction: inbound
from: {items: [{internal: false}]}
to: {items: [{ldap_group: Finance}]}
actions:
  - tag_subject: {tag: "[EXTERNAL]"}
"""


class RuleForm(FlaskForm):
    text = TextAreaField("Rule (YAML or JSON)", validators=[DataRequired("Write the rule."), Length(max=MAX_TEXT)])
    submit = SubmitField("Save rule")


class RegexForm(FlaskForm):
    pattern = StringField("Regular expression", validators=[DataRequired("Give a pattern."),
                                                            Length(max=schema.MAX_REGEX * 2)])
    sample = TextAreaField("Sample text", validators=[Length(max=MAX_SAMPLE)])
    submit = SubmitField("Test")


class ConfirmForm(FlaskForm):
    """A removal's second step: ``confirm=1`` removes, without it the view asks first."""

    confirm = HiddenField(default="")


def _level() -> tuple[int | None, bool]:
    """The level of the page (the signed-in tenant's, or None for the console's baseline) and whether the caller
    may change it."""
    if request.blueprint == "console":
        return None, current_user.role is Role.MSP_ADMIN
    return current_user.tenant_id, current_user.role is Role.TENANT_ADMIN


def _endpoint(name: str) -> str:
    return f"{request.blueprint}.{name}"


def _items(group: schema.Group) -> str:
    joined = (" and " if group.match == "all" else " or ").join(
        f"{i.kind} {_short(i.value)}" for i in group.items)
    return ("not " if group.invert else "") + joined


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_short(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "/".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_SUMMARY else text[:MAX_SUMMARY - 1] + "…"


def summary(spec: schema.RuleSpec) -> dict[str, str]:
    """A rule's conditions and actions in a line each, for the list."""
    groups = [f"{name}: {_items(spec.groups[name])}" for name in schema.GROUPS if name in spec.groups]
    conditions = (" AND " if spec.match == "all" else " OR ").join(groups) or "every mail"
    actions = ", ".join(a.kind + next((f" ({_short(a.params[k])})" for k in HINTS if k in a.params), "")
                        for a in spec.actions)
    return {"conditions": _clip(conditions), "actions": _clip(actions)}


def _page(*, form: RuleForm | None = None, shown: RuleView | None = None, regex: RegexForm | None = None,
          regex_result: str | None = None, status: int = 200) -> ResponseReturnValue:
    tid, can_edit = _level()
    views = service.rule_views(db.session, config(), tid)
    shown_id = request.args.get("rule", "")
    if shown is None and shown_id:
        if not shown_id.isdigit():
            raise NotFound(f"no rule {shown_id!r}")
        shown = find_view(db.session, config(), int(shown_id), tid)
    editable = shown is not None and can_edit and (tid is None or not shown.baseline)
    if shown is not None and form is None:
        form = RuleForm(formdata=None, data={"text": dump_rule(shown)})
    if form is None and can_edit:
        form = RuleForm(formdata=None, data={"text": EXAMPLE})
    return render_template(
        "rules/index.html", views=views, summaries={v.id: summary(v.spec) for v in views}, form=form,
        shown=shown, editable=editable, can_edit=can_edit, msp_level=tid is None,
        regex=regex or RegexForm(formdata=None), regex_result=regex_result, macros=schema.MACROS,
        who_kinds=schema.WHO_KINDS, what_kinds=schema.WHAT_KINDS, action_kinds=schema.ACTION_KINDS,
        action_order=schema.ACTION_ORDER, final_actions=schema.FINAL_ACTIONS,
        max_regex=schema.MAX_REGEX), status


def _editable(rule_id: int) -> tuple[int | None, RuleView | None]:
    """The page's level and the rule as this level may change it; None for the rule, its refusal flashed, when this
    level may not (a tenant and its provider's locked rules, say), and the caller answers 403."""
    tid, _ = _level()
    try:
        return tid, editable_view(db.session, config(), rule_id, tid)
    except PermissionDenied as exc:
        db.session.rollback()
        flash(str(exc), "error")
        return tid, None


def page() -> ResponseReturnValue:
    """The list in evaluation order, the add (or ``?rule=ID``: the shown rule's edit) form and the regex tester."""
    return _page()


def add() -> ResponseReturnValue:
    tid, _ = _level()
    form = RuleForm()
    if not form.validate_on_submit():
        return _page(form=form, status=422)
    with attempt() as done:
        row = service.add_rule(db.session, config(), load_rule(form.text.data or ""), tenant_id=tid,
                               actor=current_user.email)
        name = row.name
    if not done:
        return _page(form=form, status=422)
    flash(f"Rule {name!r} added.", "success")
    return redirect(url_for(_endpoint("rules_page")))


def update(rule_id: int) -> ResponseReturnValue:
    tid, shown = _editable(rule_id)
    if shown is None:
        return _page(status=403)
    form = RuleForm()
    if not form.validate_on_submit():
        return _page(form=form, shown=shown, status=422)
    with attempt() as done:
        row = service.update_rule(db.session, config(), rule_id, load_rule(form.text.data or ""), tenant_id=tid,
                                  actor=current_user.email)
        name = row.name
    if not done:
        return _page(form=form, shown=shown, status=422)
    flash(f"Rule {name!r} saved.", "success")
    return redirect(url_for(_endpoint("rules_page"), rule=rule_id))


def set_active(rule_id: int, active: bool) -> ResponseReturnValue:
    tid, _ = _level()
    s, cfg = db.session, config()
    find_view(s, cfg, rule_id, tid)  # another tenant's rule is 404 before anything else
    form = ConfirmForm()
    if not form.validate_on_submit():
        flash("Bad request: reload the page and try again.", "error")
        return redirect(url_for(_endpoint("rules_page")))
    with attempt(PermissionDenied) as done:
        name = service.set_active(s, cfg, rule_id, active, tenant_id=tid, actor=current_user.email)
    if not done:
        return _page(status=403)
    flash(f"Rule {name!r} {'enabled' if active else 'disabled'}.", "success")
    return redirect(url_for(_endpoint("rules_page")))


def remove(rule_id: int) -> ResponseReturnValue:
    """Remove a rule after a confirmation step; a tenant cannot remove its provider's rules (403)."""
    tid, view = _editable(rule_id)
    if view is None:
        return _page(status=403)
    form = ConfirmForm()
    if not form.validate_on_submit():
        flash("Bad request: reload the page and try again.", "error")
        return redirect(url_for(_endpoint("rules_page")))
    if form.confirm.data != "1":
        return render_template("rules/remove.html", view=view, back=_endpoint("rules_page"))
    s = db.session
    name = service.remove_rule(s, config(), rule_id, tenant_id=tid, actor=current_user.email)
    s.commit()
    flash(f"Rule {name!r} removed.", "success")
    return redirect(url_for(_endpoint("rules_page")))


def regex_tester() -> ResponseReturnValue:
    """Compile a pattern as rules do (RE2, case-insensitive) and search the sample: matches, no match, or why not."""
    form = RegexForm()
    if not form.validate_on_submit():
        return _page(regex=form, status=422)
    try:
        found = schema.compile_regex(form.pattern.data or "", "pattern").search(form.sample.data or "")
    except ValidationError as exc:
        return _page(regex=form, regex_result=f"error: {exc}", status=422)
    result = f"matches: {found.group(0)!r}" if found is not None else "no match"
    return _page(regex=form, regex_result=result)


# --- the tenant portal: its one list --------------------------------------------------------------------------------

@portal_bp.route("/rules")
@allow(*TENANT_ROLES)
def rules_page() -> ResponseReturnValue:
    return page()


@portal_bp.route("/rules", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def add_rule() -> ResponseReturnValue:
    return add()


@portal_bp.route("/rules/<int:rule_id>", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def update_rule(rule_id: int) -> ResponseReturnValue:
    return update(rule_id)


@portal_bp.route("/rules/<int:rule_id>/enable", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def enable_rule(rule_id: int) -> ResponseReturnValue:
    return set_active(rule_id, True)


@portal_bp.route("/rules/<int:rule_id>/disable", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def disable_rule(rule_id: int) -> ResponseReturnValue:
    return set_active(rule_id, False)


@portal_bp.route("/rules/<int:rule_id>/delete", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def remove_rule(rule_id: int) -> ResponseReturnValue:
    return remove(rule_id)


@portal_bp.route("/rules/regex", methods=["POST"])
@allow(*TENANT_ROLES)
def rules_regex() -> ResponseReturnValue:
    return regex_tester()


# --- the MSP console: the baseline ----------------------------------------------------------------------------------

@console_bp.route("/rules", endpoint="rules_page")
@allow(*MSP_ROLES)
def console_rules_page() -> ResponseReturnValue:
    return page()


@console_bp.route("/rules", methods=["POST"], endpoint="add_rule")
@allow(Role.MSP_ADMIN)
def console_add_rule() -> ResponseReturnValue:
    return add()


@console_bp.route("/rules/<int:rule_id>", methods=["POST"], endpoint="update_rule")
@allow(Role.MSP_ADMIN)
def console_update_rule(rule_id: int) -> ResponseReturnValue:
    return update(rule_id)


@console_bp.route("/rules/<int:rule_id>/enable", methods=["POST"], endpoint="enable_rule")
@allow(Role.MSP_ADMIN)
def console_enable_rule(rule_id: int) -> ResponseReturnValue:
    return set_active(rule_id, True)


@console_bp.route("/rules/<int:rule_id>/disable", methods=["POST"], endpoint="disable_rule")
@allow(Role.MSP_ADMIN)
def console_disable_rule(rule_id: int) -> ResponseReturnValue:
    return set_active(rule_id, False)


@console_bp.route("/rules/<int:rule_id>/delete", methods=["POST"], endpoint="remove_rule")
@allow(Role.MSP_ADMIN)
def console_remove_rule(rule_id: int) -> ResponseReturnValue:
    return remove(rule_id)


@console_bp.route("/rules/regex", methods=["POST"], endpoint="rules_regex")
@allow(*MSP_ROLES)
def console_rules_regex() -> ResponseReturnValue:
    return regex_tester()
