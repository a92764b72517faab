"""“Preview changes” on the portal's rules page: the dry-run replay of a draft of the tenant's rules over its stored
mail (:mod:`tenants.mailrules.replay`), run by the worker; its page shows a progress bar (refreshed by the page
itself: the CSP allows no inline script) and then the report with samples.

The tenant admin starts a preview; the auditor may read its result. A job id is looked up under the signed-in tenant
only (:func:`tenants.mailrules.replayjobs.replay_status`): another tenant's job is a 404.
"""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import SelectField, SubmitField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length

from app.access import allow
from app.extensions import config, db
from app.portal import TENANT_ROLES
from app.portal import bp as portal_bp
from tenants.exceptions import ValidationError
from tenants.mailrules.replay import CHANGES, ReplayReport
from tenants.mailrules.replayjobs import enqueue_replay, replay_status
from tenants.mailrules.yamlio import MAX_TEXT, export_rules, load_text
from tenants.models import Role

#: The windows the form offers, in days.
WINDOWS = [SelectChoice("1", "the last day"), SelectChoice("7", "the last 7 days"),
           SelectChoice("30", "the last 30 days")]


class PreviewForm(FlaskForm):
    draft = TextAreaField("Draft of your rules (YAML, as exported)", validators=[Length(max=MAX_TEXT)])
    since = SelectField("Replay the mail of", choices=WINDOWS, default="7")
    submit = SubmitField("Preview changes")


def _form_page(form: PreviewForm, status: int = 200) -> ResponseReturnValue:
    return render_template("rules/preview_form.html", form=form), status


@portal_bp.route("/rules/preview")
@allow(Role.TENANT_ADMIN)
def rules_preview_form() -> ResponseReturnValue:
    """The draft form, filled with the tenant's own rules as they are (edit them, then preview)."""
    text = export_rules(db.session, config(), current_user.tenant_id)
    return _form_page(PreviewForm(formdata=None, data={"draft": text, "since": "7"}))


@portal_bp.route("/rules/preview", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def rules_preview_start() -> ResponseReturnValue:
    form = PreviewForm()
    if not form.validate_on_submit():
        return _form_page(form, 422)
    try:
        raw = load_text(form.draft.data or "")
        draft = [] if raw is None else raw
        if not isinstance(draft, list):
            raise ValidationError("a draft is a YAML list of rules (- name: ...)")
        job_id = enqueue_replay(config(), current_user.tenant_id, int(form.since.data or "7"), draft)
    except ValidationError as exc:
        flash(str(exc), "error")
        return _form_page(form, 422)
    except Exception:  # Redis away: nothing was queued
        flash("The preview could not be queued right now; try again in a moment.", "error")
        return _form_page(form, 503)
    return redirect(url_for("portal.rules_preview", job_id=job_id))


@portal_bp.route("/rules/preview/<job_id>")
@allow(*TENANT_ROLES)
def rules_preview(job_id: str) -> ResponseReturnValue:
    """A replay's progress, then its report; an unknown, expired or another tenant's job is 404."""
    status = replay_status(config(), current_user.tenant_id, job_id)
    if status is None:
        abort(404)
    report = ReplayReport.from_dict(status["report"]) if status.get("report") else None
    return render_template("rules/preview.html", status=status, report=report, changes=CHANGES,
                           running=status["state"] in ("queued", "running"))
