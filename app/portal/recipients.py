"""Recipient verification in the portal (``portal`` blueprint): the mode, the static list, the LDAP directory.

tenant_admin changes everything (each change audited, and every ingress reloads at once); tenant_auditor reads.
"Test connection" and "Sync now" talk to the tenant's directory during the request, within the LDAP timeouts of
:mod:`tenants.directory`.
"""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, SelectField, StringField, SubmitField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional

from app.access import allow
from app.actions import attempt
from app.audit import audit
from app.extensions import config, db
from app.portal import TENANT_ROLES, bp
from tenants import directory, recipients
from tenants.exceptions import ValidationError
from tenants.models import Role

#: The modes as the page offers them.
MODE_CHOICES = [
    SelectChoice("off", "off: accept every address of my domains"),
    SelectChoice("static", "static list: only the addresses listed below"),
    SelectChoice("ldap", "LDAP directory: the addresses in my directory (and the static list)"),
    SelectChoice("callahead", "call-ahead: ask my mail server for each new address"),
]
#: Longest static list the text box takes, in characters (about the line limit of :mod:`tenants.recipients`).
MAX_STATIC_TEXT = recipients.MAX_STATIC_LINES * 64


class ModeForm(FlaskForm):
    mode = SelectField("Verify recipients", choices=MODE_CHOICES)
    submit = SubmitField("Save mode")


class StaticListForm(FlaskForm):
    entries = TextAreaField("Accepted addresses, one a line (@example.com accepts a whole domain)",
                            validators=[Optional(), Length(max=MAX_STATIC_TEXT)])
    submit = SubmitField("Save list")


class LdapForm(FlaskForm):
    url = StringField("Directory URL", validators=[DataRequired(), Length(max=recipients.MAX_SETTING)])
    base_dn = StringField("Base DN", validators=[DataRequired(), Length(max=recipients.MAX_SETTING)])
    bind_dn = StringField("Bind DN (empty: anonymous)", validators=[Optional(), Length(max=recipients.MAX_SETTING)])
    password = PasswordField("Bind password (empty: keep the stored one)", validators=[Optional(), Length(max=1024)])
    clear_password = BooleanField("Remove the stored password")
    search_filter = StringField("Search filter", validators=[Optional(), Length(max=recipients.MAX_SETTING)])
    attributes = StringField("Attributes holding addresses", validators=[Optional(),
                                                                         Length(max=recipients.MAX_SETTING)])
    submit = SubmitField("Save LDAP settings")


class LdapTestForm(FlaskForm):
    address = StringField("Look up an address (optional)", validators=[Optional(), Length(max=320)])
    submit = SubmitField("Test connection")


class SyncForm(FlaskForm):
    submit = SubmitField("Sync now")


def _forms(**given: FlaskForm) -> dict[str, FlaskForm]:
    """Every form of the page, filled from the stored settings unless the request's own (with errors) is given."""
    s, tid = db.session, current_user.tenant_id
    st = recipients.get_settings(s, tid)
    static = "\n".join(e.address for e in recipients.list_entries(s, tid, "static"))
    forms: dict[str, FlaskForm] = {
        "mode_form": ModeForm(formdata=None, prefix="mode", data={"mode": st.mode}),
        "static_form": StaticListForm(formdata=None, prefix="static", data={"entries": static}),
        "ldap_form": LdapForm(formdata=None, prefix="ldap", data={
            "url": st.ldap_url, "base_dn": st.ldap_base_dn, "bind_dn": st.ldap_bind_dn,
            "search_filter": st.ldap_filter, "attributes": st.ldap_attributes}),
        "test_form": LdapTestForm(formdata=None, prefix="test"),
        "sync_form": SyncForm(formdata=None, prefix="sync"),
    }
    forms.update(given)
    return forms


def _page(status: int = 200, **given: FlaskForm) -> ResponseReturnValue:
    s, tid = db.session, current_user.tenant_id
    row = recipients.find_row(s, tid)
    can_edit = current_user.role is Role.TENANT_ADMIN
    return render_template(
        "portal/recipients.html", settings=recipients.get_settings(s, tid), row=row, can_edit=can_edit,
        static_entries=recipients.list_entries(s, tid, "static"), ldap_count=recipients.count(s, tid, "ldap"),
        **(_forms(**given) if can_edit else {})), status


def _reload() -> None:
    """Every ingress reloads recipient verification once the request commits."""
    recipients.reload_after_commit(db.session, config())


@bp.route("/recipients")
@allow(*TENANT_ROLES)
def recipients_page() -> ResponseReturnValue:
    return _page()


@bp.route("/recipients/mode", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def set_recipient_mode() -> ResponseReturnValue:
    form = ModeForm(prefix="mode")
    if form.validate_on_submit():
        s = db.session
        with attempt() as done:
            before = recipients.get_settings(s, current_user.tenant_id).mode
            recipients.set_mode(s, current_user.tenant_id, form.mode.data or "off")
            audit("recipients.mode", "recipient verification", f"{before} -> {form.mode.data}")
            _reload()
        if done:
            flash(f"Recipient verification is now {form.mode.data}.", "success")
            return redirect(url_for("portal.recipients_page"))
    return _page(422, mode_form=form)


@bp.route("/recipients/static", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def save_static_list() -> ResponseReturnValue:
    form = StaticListForm(prefix="static")
    if form.validate_on_submit():
        with attempt() as done:
            added, removed = recipients.replace_static(db.session, current_user.tenant_id, form.entries.data or "")
            audit("recipients.static", "static recipient list", f"{added} added, {removed} removed")
            _reload()
        if done:
            flash(f"Static list saved: {added} added, {removed} removed.", "success")
            return redirect(url_for("portal.recipients_page"))
    return _page(422, static_form=form)


@bp.route("/recipients/ldap", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def save_ldap() -> ResponseReturnValue:
    form = LdapForm(prefix="ldap")
    if form.validate_on_submit():
        password = "" if form.clear_password.data else (form.password.data or None)
        with attempt() as done:
            recipients.set_ldap(db.session, config(), current_user.tenant_id, url=form.url.data or "",
                                base_dn=form.base_dn.data or "", bind_dn=form.bind_dn.data or "", password=password,
                                search_filter=form.search_filter.data or "", attributes=form.attributes.data or "")
            pw = "password removed" if password == "" else "password changed" if password else "password kept"
            audit("recipients.ldap", "LDAP directory", f"{form.url.data} base {form.base_dn.data} bind "
                  f"{form.bind_dn.data or 'anonymous'}, {pw}")
            _reload()
        if done:
            flash("LDAP settings saved.", "success")
            return redirect(url_for("portal.recipients_page"))
    return _page(422, ldap_form=form)


@bp.route("/recipients/ldap/test", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def test_ldap() -> ResponseReturnValue:
    form = LdapTestForm(prefix="test")
    if form.validate_on_submit():
        s = db.session
        address = (form.address.data or "").strip()
        try:
            said = directory.test_connection(s, config(), current_user.tenant_id, address)
        except (directory.DirectoryError, ValidationError) as exc:
            ok, said = False, str(exc)
        else:
            ok = True
        audit("recipients.ldap_test", "LDAP directory", f"{'ok' if ok else 'failed'}: {said}")
        s.commit()
        flash(f"Test {'passed' if ok else 'failed'}: {said}", "success" if ok else "error")
        return redirect(url_for("portal.recipients_page"))
    return _page(422, test_form=form)


@bp.route("/recipients/ldap/sync", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def sync_ldap() -> ResponseReturnValue:
    form = SyncForm(prefix="sync")
    if form.validate_on_submit():
        s = db.session
        result = directory.sync(s, config(), current_user.tenant_id)
        audit("recipients.ldap_sync", "LDAP directory", result.message)
        _reload()
        s.commit()
        flash(f"Sync {'done' if result.ok else 'failed'}: {result.message}", "success" if result.ok else "error")
        return redirect(url_for("portal.recipients_page"))
    return _page(422, sync_form=form)
