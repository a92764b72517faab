"""The end user's own allow and block lists (``/q/lists``, ``quarantine`` blueprint): the signed-in user adds and
removes entries that apply to mail for them; another user's entry answers 404 like a missing one.
"""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from app.access import allow
from app.actions import attempt
from app.extensions import config, db
from app.forms import ListEntryForm
from app.quarantine import OWNERS, bp
from tenants import lists


def _lists_page(form: ListEntryForm | None = None, status: int = 200) -> ResponseReturnValue:
    entries = lists.list_entries(db.session, user_id=current_user.user_id)
    return render_template("quarantine/lists.html", entries=entries, form=form or ListEntryForm(formdata=None)), status


@bp.route("/lists")
@allow(*OWNERS)
def my_lists() -> ResponseReturnValue:
    return _lists_page()


@bp.route("/lists", methods=["POST"])
@allow(*OWNERS)
def add_entry() -> ResponseReturnValue:
    form = ListEntryForm()
    if form.validate_on_submit():
        s = db.session
        with attempt() as done:
            entry = lists.add_entry(s, kind=form.kind.data, value=form.value.data or "", user_id=current_user.user_id,
                                    comment=(form.comment.data or "").strip(), created_by=current_user.email)
            lists.reload_after_commit(s, config())
        if done:
            flash(f"{entry.value} is on your {entry.kind} list.", "success")
            return redirect(url_for("quarantine.my_lists"))
    return _lists_page(form, status=422)


@bp.route("/lists/<int:entry_id>/delete", methods=["POST"])
@allow(*OWNERS)
def remove_entry(entry_id: int) -> ResponseReturnValue:
    s = db.session
    entry = lists.remove_entry(s, entry_id, user_id=current_user.user_id)  # another's entry: NotFound
    lists.reload_after_commit(s, config())
    s.commit()
    flash(f"{entry.value} is off your {entry.kind} list.", "success")
    return redirect(url_for("quarantine.my_lists"))
