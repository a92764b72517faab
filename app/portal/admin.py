"""The tenant's administration in the portal (``portal`` blueprint): users and roles, API keys, DKIM keys and the
outbound relay (relay networks and SMTP AUTH logins).

tenant_admin edits, tenant_auditor reads; an MSP user reaches these pages through "view as". Every request runs in the
tenant's scope, so another tenant's id loads as :class:`~tenants.exceptions.NotFound` (404). Secrets made here (an
API key, an SMTP password) are shown once, on the page that answers the POST: never flashed (flashes live in the
session cookie), logged or audited.
"""

from __future__ import annotations

import secrets

from flask import flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import HiddenField, SelectField, StringField, SubmitField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import AnyOf, DataRequired, Length

from app.access import allow
from app.actions import attempt
from app.audit import audit
from app.auth import passwords
from app.extensions import config, db
from app.forms import ApiKeyForm, NewUserForm
from app.portal import TENANT_ROLES, bp
from tenants import accounts, apikeys, dkimkeys, relay, services, users
from tenants.exceptions import NotFound, ValidationError
from tenants.models import RelayNetwork, Role, SmtpCredential, Tenant, utcnow
from tenants.platform.redisconn import bump_policy_version
from tenants.scope import load

#: Bytes of randomness in a generated SMTP password (shown once; 24 URL-safe characters).
SMTP_PASSWORD_BYTES = 18
#: The public submission port tenants' servers log in on (SMTP AUTH after STARTTLS; the Helm chart's Service maps it
#: to ``MAILWARD_SUBMISSION_LISTEN``).
SUBMISSION_PORT = 587


def _can_edit() -> bool:
    return current_user.role is Role.TENANT_ADMIN


def _tenant() -> Tenant:
    return services.get_tenant(db.session, current_user.tenant_id)


class ChangeRoleForm(FlaskForm):
    role = SelectField("Role", choices=[SelectChoice(r.value, r.value) for r in users.TENANT_USER_ROLES])


class ActiveForm(FlaskForm):
    """Deactivate ("0") or reactivate ("1") an account."""

    active = HiddenField(validators=[AnyOf(["0", "1"])])


class ConfirmForm(FlaskForm):
    """A destructive action's second step: ``confirm=1`` does it, without it the view asks first."""

    confirm = HiddenField(default="")


class DkimKeyForm(FlaskForm):
    domain = SelectField("Domain")  # choices: the tenant's domains, set by the view
    selector = StringField("Selector", validators=[DataRequired(), Length(max=dkimkeys.SELECTOR_MAX)])
    bits = SelectField("Key size", choices=[SelectChoice(str(b), f"{b} bits") for b in dkimkeys.KEY_SIZES],
                       default=str(dkimkeys.DEFAULT_KEY_BITS))
    submit = SubmitField("Generate key")


class RelayNetworkForm(FlaskForm):
    cidr = StringField("Network (CIDR)", validators=[DataRequired(), Length(max=50)])
    submit = SubmitField("Add network")


class SmtpCredentialForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=relay.USERNAME_MAX)])
    submit = SubmitField("Create login")


# --- users and roles ------------------------------------------------------------------------------------------------

def user_form(choices: tuple[Role, ...], formdata: bool = True) -> NewUserForm:
    form = NewUserForm() if formdata else NewUserForm(formdata=None)
    form.role.choices = [SelectChoice(r.value, r.value) for r in choices]
    return form


def _users_page(form: NewUserForm | None = None, status: int = 200) -> ResponseReturnValue:
    can_edit = _can_edit()
    if form is None and can_edit:
        form = user_form(users.TENANT_USER_ROLES, formdata=False)
    return render_template("portal/users.html", users=users.list_users(db.session, current_user.tenant_id),
                           form=form, can_edit=can_edit, roles=[r.value for r in users.TENANT_USER_ROLES],
                           is_locked=users.is_locked, me=current_user.user_id), status


@bp.route("/users")
@allow(*TENANT_ROLES)
def users_page() -> ResponseReturnValue:
    return _users_page()


@bp.route("/users", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def create_user() -> ResponseReturnValue:
    form = user_form(users.TENANT_USER_ROLES)
    if form.validate_on_submit():
        with attempt() as done:
            if form.invite.data and form.password.data:
                raise ValidationError("either set an initial password or send an invitation, not both")
            user = users.create_user(db.session, form.email.data or "", form.role.data or "", _tenant(),
                                     form.password.data or None)
            audit("user.create", f"user {user.email}",
                  f"role {user.role}, {'initial password set' if user.password_hash else 'no password'}")
            if form.invite.data:
                passwords.invite(user)
        if done:
            how = "with the password you set" if form.password.data else "from the links in their quarantine digest"
            if form.invite.data:
                how = "once they chose a password with the invitation link mailed to them"
            flash(f"User {user.email} created ({user.role}); they sign in {how}.", "success")
            return redirect(url_for("portal.users_page"))
    return _users_page(form, status=422)


@bp.route("/users/<int:user_id>/role", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def user_role(user_id: int) -> ResponseReturnValue:
    s = db.session
    user = users.get_user(s, user_id, current_user.tenant_id)
    form = ChangeRoleForm()
    if not form.validate_on_submit():
        flash(f"Choose one of {', '.join(r.value for r in users.TENANT_USER_ROLES)}.", "error")
        return redirect(url_for("portal.users_page"))
    old = user.role
    with attempt() as done:
        changed = users.set_role(user, form.role.data or "", actor_id=current_user.user_id)
        if changed:
            audit("user.role", f"user {user.email}", f"{old} → {user.role}")
    if done and changed:
        flash(f"{user.email} is now {user.role}.", "success")
    return redirect(url_for("portal.users_page"))


def set_user_active(user_id: int, tenant_id: int | None, endpoint: str) -> ResponseReturnValue:
    """(De)activate a user of this level (shared with the console's staff page)."""
    s = db.session
    user = users.get_user(s, user_id, tenant_id)
    form = ActiveForm()
    if form.validate_on_submit():
        active = form.active.data == "1"
        with attempt() as done:
            changed = users.set_active(user, active, actor_id=current_user.user_id)
            if changed:
                audit("user.activate" if active else "user.deactivate", f"user {user.email}")
        if done and changed:
            flash(f"{user.email} is {'active again' if active else 'deactivated: they can no longer sign in'}.",
                  "success")
    else:
        flash("Bad request: reload the page and try again.", "error")
    return redirect(url_for(endpoint))


@bp.route("/users/<int:user_id>/active", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def user_active(user_id: int) -> ResponseReturnValue:
    return set_user_active(user_id, current_user.tenant_id, "portal.users_page")


def unlock_user(user_id: int, tenant_id: int | None, endpoint: str) -> ResponseReturnValue:
    """Lift a lockout after too many failed sign-ins, so the user may try again at once (shared with the console)."""
    s = db.session
    user = users.get_user(s, user_id, tenant_id)
    if users.unlock(user):
        audit("user.unlock", f"user {user.email}")
        s.commit()
    flash(f"{user.email} may sign in again.", "success")
    return redirect(url_for(endpoint))


@bp.route("/users/<int:user_id>/unlock", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def user_unlock(user_id: int) -> ResponseReturnValue:
    return unlock_user(user_id, current_user.tenant_id, "portal.users_page")


def delete_user_of(user_id: int, tenant_id: int | None, endpoint: str) -> ResponseReturnValue:
    """Delete a user of this level after a confirmation step (shared with the console's staff page). Nobody deletes
    themselves or the last active admin; the user's sessions end with the account."""
    s = db.session
    user = users.get_user(s, user_id, tenant_id)
    form = ConfirmForm()
    if not form.validate_on_submit():
        flash("Bad request: reload the page and try again.", "error")
        return redirect(url_for(endpoint))
    email, role, confirmed = user.email, user.role, form.confirm.data == "1"
    with attempt() as done:
        if not confirmed:
            users.keep_an_admin(user)  # say so now, not after the confirmation
        else:
            accounts.delete_user(s, user, actor_id=current_user.user_id)
            audit("user.delete", f"user {email}", f"role {role}", tenant_id=tenant_id)
    if not done:
        return redirect(url_for(endpoint))
    if not confirmed:
        return render_template("user_delete.html", user=user, back=endpoint)
    flash(f"User {email} is deleted: they can no longer sign in.", "success")
    return redirect(url_for(endpoint))


@bp.route("/users/<int:user_id>/delete", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def user_delete(user_id: int) -> ResponseReturnValue:
    return delete_user_of(user_id, current_user.tenant_id, "portal.users_page")


# --- API keys -------------------------------------------------------------------------------------------------------

def apikeys_page(template: str, tenant_id: int | None, can_edit: bool, form: ApiKeyForm | None = None,
                 status: int = 200) -> ResponseReturnValue:
    """The key list of a tenant, or of the MSP (``tenant_id`` None), with the creation form for those who may."""
    if form is None and can_edit:
        form = ApiKeyForm(formdata=None)
    return render_template(template, keys=apikeys.list_keys(db.session, tenant_id), form=form,
                           can_edit=can_edit, now=utcnow()), status


def create_apikey_for(tenant: Tenant | None, template: str, back: str) -> ResponseReturnValue:
    """Create a key from the posted form and show it once (shared with the console's MSP-wide keys)."""
    form = ApiKeyForm()
    if form.validate_on_submit():
        with attempt() as done:
            new = apikeys.create(db.session, tenant, form.scopes.data or [], form.name.data or "",
                                 expires_at=apikeys.parse_expiry(form.expires_on.data))
            expiry = f", expires {new.key.expires_at:%Y-%m-%d}" if new.key.expires_at else ""
            audit("apikey.create", f"api key {new.key.prefix}",
                  f"name {new.key.name!r}, scopes {new.key.scopes}{expiry}")
        if done:
            # The one time the full key is shown: in this answer only (no flash, no session, no log).
            return render_template("portal/apikey_created.html", key=new.key, secret=new.secret, back=back)
    return apikeys_page(template, tenant.id if tenant else None, True, form, status=422)


def revoke_apikey_of(key_id: int, tenant_id: int | None, back: str) -> ResponseReturnValue:
    """Revoke a key of this level after a confirmation step (shared with the console)."""
    s = db.session
    key = apikeys.get(s, key_id)
    if key.tenant_id != tenant_id:  # the console manages MSP-wide keys only
        raise NotFound(f"ApiKey {key_id} not found")
    form = ConfirmForm()
    if not form.validate_on_submit():
        flash("Bad request: reload the page and try again.", "error")
        return redirect(url_for(back))
    if form.confirm.data != "1":
        return render_template("portal/apikey_revoke.html", key=key, back=back)
    if key.revoked_at is None:
        apikeys.revoke(s, key_id)
        audit("apikey.revoke", f"api key {key.prefix}", f"name {key.name!r}")
        s.commit()
    flash(f"API key {key.prefix} is revoked: it no longer works.", "success")
    return redirect(url_for(back))


@bp.route("/apikeys")
@allow(*TENANT_ROLES)
def apikeys_list() -> ResponseReturnValue:
    return apikeys_page("portal/apikeys.html", current_user.tenant_id, _can_edit())


@bp.route("/apikeys", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def create_apikey() -> ResponseReturnValue:
    return create_apikey_for(_tenant(), "portal/apikeys.html", "portal.apikeys_list")


@bp.route("/apikeys/<int:key_id>/revoke", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def revoke_apikey(key_id: int) -> ResponseReturnValue:
    return revoke_apikey_of(key_id, current_user.tenant_id, "portal.apikeys_list")


# --- DKIM keys ------------------------------------------------------------------------------------------------------

def _dkim_form(formdata: bool = True) -> DkimKeyForm:
    form = DkimKeyForm() if formdata else DkimKeyForm(formdata=None)
    form.domain.choices = [SelectChoice(d.name, d.name) for d in services.list_domains(db.session)]
    return form


def _dkim_page(form: DkimKeyForm | None = None, status: int = 200) -> ResponseReturnValue:
    can_edit = _can_edit()
    if form is None and can_edit:
        form = _dkim_form(formdata=False)
    keys = dkimkeys.list_keys(db.session, current_user.tenant_id)
    rows = [{"key": k, "bits": dkimkeys.key_bits(k), "name": dkimkeys.record_name(k),
             "value": dkimkeys.record_value(k.public_key), "zone": dkimkeys.txt_record(k)} for k in keys]
    return render_template("portal/dkim.html", rows=rows, form=form, can_edit=can_edit,
                           domains=[d.name for d in services.list_domains(db.session)]), status


@bp.route("/dkim")
@allow(*TENANT_ROLES)
def dkim() -> ResponseReturnValue:
    return _dkim_page()


@bp.route("/dkim", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def create_dkim_key() -> ResponseReturnValue:
    """Generate a key for one of the tenant's own domains (the form offers only those; anything else is refused
    as an invalid choice, without saying whose it is)."""
    form = _dkim_form()
    if form.validate_on_submit():
        cfg = config()
        with attempt() as done:
            key = dkimkeys.generate_key(db.session, cfg, form.domain.data or "", form.selector.data or "",
                                        bits=int(form.bits.data or dkimkeys.DEFAULT_KEY_BITS))
            audit("dkim.create", f"dkim {key.selector} {key.domain}", f"{form.bits.data} bits, active")
        if done:
            bump_policy_version(cfg)
            flash(f"Key {key.selector} for {key.domain} generated and active: publish its TXT record below.",
                  "success")
            return redirect(url_for("portal.dkim") + f"#dkim-{key.id}")
    return _dkim_page(form, status=422)


@bp.route("/dkim/<int:dkim_id>/active", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def dkim_key_active(dkim_id: int) -> ResponseReturnValue:
    """Retire a key (it stops signing) or put a retired key back in use."""
    s, cfg = db.session, config()
    dkimkeys.get_key(s, dkim_id)
    form = ActiveForm()
    if not form.validate_on_submit():
        flash("Bad request: reload the page and try again.", "error")
        return redirect(url_for("portal.dkim"))
    active = form.active.data == "1"
    key = dkimkeys.set_key_active(s, dkim_id, active)
    audit("dkim.activate" if active else "dkim.retire", f"dkim {key.selector} {key.domain}")
    s.commit()
    bump_policy_version(cfg)
    flash(f"Key {key.selector} of {key.domain} is {'active' if active else 'retired: it no longer signs'}.",
          "success")
    return redirect(url_for("portal.dkim"))


@bp.route("/dkim/<int:dkim_id>/delete", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def delete_dkim_key(dkim_id: int) -> ResponseReturnValue:
    s, cfg = db.session, config()
    key = dkimkeys.get_key(s, dkim_id)
    form = ConfirmForm()
    if not form.validate_on_submit():
        flash("Bad request: reload the page and try again.", "error")
        return redirect(url_for("portal.dkim"))
    if form.confirm.data != "1":
        return render_template("portal/dkim_delete.html", key=key)
    selector, domain = key.selector, key.domain
    dkimkeys.remove_key(s, dkim_id)
    audit("dkim.remove", f"dkim {selector} {domain}")
    s.commit()
    bump_policy_version(cfg)
    flash(f"Key {selector} of {domain} is removed; you may unpublish {selector}._domainkey.{domain}.", "success")
    return redirect(url_for("portal.dkim"))


# --- outbound relay -------------------------------------------------------------------------------------------------

def _outbound_page(net_form: RelayNetworkForm | None = None, cred_form: SmtpCredentialForm | None = None,
                   created: tuple[str, str] | None = None, status: int = 200) -> ResponseReturnValue:
    s = db.session
    can_edit = _can_edit()
    tenant = _tenant()
    if can_edit:
        net_form = net_form or RelayNetworkForm(formdata=None)
        cred_form = cred_form or SmtpCredentialForm(formdata=None)
    return render_template("portal/outbound.html", networks=relay.list_relay_networks(s, tenant),
                           credentials=relay.list_smtp_credentials(s, tenant), net_form=net_form,
                           cred_form=cred_form, can_edit=can_edit, created=created, port=SUBMISSION_PORT,
                           tenant_prefix=relay.TENANT_MIN_PREFIX,
                           hostname=config().hostname,
                           submission_on=config().submission_listen is not None), status


@bp.route("/outbound")
@allow(*TENANT_ROLES)
def outbound() -> ResponseReturnValue:
    return _outbound_page()


@bp.route("/outbound/networks", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def add_relay_network() -> ResponseReturnValue:
    form = RelayNetworkForm()
    if form.validate_on_submit():
        tenant = _tenant()
        with attempt() as done:
            row = relay.add_relay_network(db.session, tenant, form.cidr.data or "")
            audit("relay.network.add", f"relay network {row.cidr}")
        if done:
            bump_policy_version(config())
            flash(f"Your servers in {row.cidr} may now send out through Mailward.", "success")
            return redirect(url_for("portal.outbound"))
    return _outbound_page(net_form=form, status=422)


@bp.route("/outbound/networks/<int:network_id>/delete", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def remove_relay_network(network_id: int) -> ResponseReturnValue:
    s, cfg = db.session, config()
    row = load(s, RelayNetwork, network_id)
    cidr = row.cidr
    s.delete(row)
    audit("relay.network.remove", f"relay network {cidr}")
    s.commit()
    bump_policy_version(cfg)
    flash(f"{cidr} is no longer a relay network.", "success")
    return redirect(url_for("portal.outbound"))


@bp.route("/outbound/credentials", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def create_smtp_credential() -> ResponseReturnValue:
    form = SmtpCredentialForm()
    if form.validate_on_submit():
        password = secrets.token_urlsafe(SMTP_PASSWORD_BYTES)
        with attempt() as done:
            cred = relay.create_smtp_credential(db.session, _tenant(), form.username.data or "", password)
            audit("relay.login.create", f"smtp login {cred.username}", "password generated")
        if done:
            # The one time the password is shown: in this answer only (no flash, no session, no log).
            return _outbound_page(created=(cred.username, password))
    return _outbound_page(cred_form=form, status=422)


@bp.route("/outbound/credentials/<int:credential_id>/revoke", methods=["POST"])
@allow(Role.TENANT_ADMIN)
def revoke_smtp_credential(credential_id: int) -> ResponseReturnValue:
    s = db.session
    cred = load(s, SmtpCredential, credential_id)
    if cred.revoked_at is None:
        relay.revoke_smtp_credential(s, cred.username)
        audit("relay.login.revoke", f"smtp login {cred.username}")
        s.commit()
    flash(f"SMTP login {cred.username} is revoked.", "success")
    return redirect(url_for("portal.outbound"))
