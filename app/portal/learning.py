"""The content model's feedback learning in the portal (``portal`` blueprint): what the tenant's own learning holds,
a reset, and the opt-in to share reports with the MSP's model (:mod:`tenants.learning`).

tenant_admin resets and switches sharing (each audited); tenant_auditor reads.
"""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from app.access import allow
from app.audit import audit
from app.extensions import config, db
from app.portal import TENANT_ROLES, bp
from tenants import learning
from tenants.mail import bayes
from tenants.models import Role


@bp.route("/learning")
@allow(*TENANT_ROLES)
def learning_page() -> ResponseReturnValue:
    s, tid = db.session, current_user.tenant_id
    return render_template("portal/learning.html", status=learning.status(s, tid), bayes=bayes.stats(s, tid),
                           min_tenants=config().shared_learning_min_tenants,
                           can_edit=current_user.role is Role.TENANT_ADMIN)


@bp.route("/learning/reset", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def reset_learning() -> ResponseReturnValue:
    s, tid = db.session, current_user.tenant_id
    before = learning.status(s, tid)
    learning.reset(s, tid)
    audit("learning.reset", "content model learning", f"forgot {before.learned} learnt mails")
    s.commit()
    flash(f"Learning reset: the {before.learned} mails learnt so far no longer change your scores.", "success")
    return redirect(url_for("portal.learning_page"))


@bp.route("/learning/sharing", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def set_learning_sharing() -> ResponseReturnValue:
    share = request.form.get("share") == "1"
    s = db.session
    learning.set_sharing(s, current_user.tenant_id, share)
    audit("learning.sharing", "content model learning", "opted in" if share else "opted out")
    s.commit()
    flash("Your reports now help the shared model." if share
          else "Your reports are no longer shared; those waiting were withdrawn.", "success")
    return redirect(url_for("portal.learning_page"))
