"""The web forms (Flask-WTF: each carries a CSRF token).

Fields check only presence and length; the rules (domain syntax, transport, tenant names) live in
:mod:`tenants.services`, whose :class:`~tenants.exceptions.ValidationError` messages the views flash, so the CLI,
the consoles and later the API refuse the same input with the same words.
"""

from __future__ import annotations

from collections.abc import Callable

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
    DecimalField,
    Field,
    HiddenField,
    PasswordField,
    SelectField,
    SelectMultipleField,
    StringField,
    SubmitField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import AnyOf, DataRequired, Length, Optional, StopValidation
from wtforms.widgets import CheckboxInput, ListWidget

from tenants.apikeys import MAX_NAME as API_KEY_MAX_NAME
from tenants.apikeys import SCOPES as API_KEY_SCOPES
from tenants.models import TlsMode

TLS_CHOICES = [
    SelectChoice(TlsMode.NONE.value, "none"),
    SelectChoice(TlsMode.OPPORTUNISTIC.value, "opportunistic (STARTTLS if offered)"),
    SelectChoice(TlsMode.REQUIRED.value, "required (STARTTLS or defer)"),
]


class GetForm(FlaskForm):
    """The base of a form sent by GET (filters, searches: bookmarkable): no CSRF token, it changes nothing."""

    class Meta:
        csrf = False


class LoginForm(FlaskForm):
    email = StringField("E-mail", validators=[DataRequired(), Length(max=320)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])
    submit = SubmitField("Sign in")


class TenantForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=100)])
    submit = SubmitField("Create tenant")


class DomainForm(FlaskForm):
    tenant = SelectField("Tenant", coerce=int)  # choices: the tenants, set by the view
    name = StringField("Domain", validators=[DataRequired(), Length(max=253)])
    transport = StringField("Transport (host:port)", validators=[DataRequired(), Length(max=270)])
    tls = SelectField("TLS to transport", choices=TLS_CHOICES, default=TlsMode.OPPORTUNISTIC.value)
    submit = SubmitField("Add domain")


class PortalDomainForm(FlaskForm):
    """A tenant admin adds a domain to their own tenant (the tenant comes from the signed-in user, not the form)."""

    name = StringField("Domain", validators=[DataRequired(), Length(max=253)])
    transport = StringField("Your mail server (host:port)", validators=[DataRequired(), Length(max=270)])
    tls = SelectField("TLS to it", choices=TLS_CHOICES, default=TlsMode.OPPORTUNISTIC.value)
    submit = SubmitField("Add domain")


class TransportForm(FlaskForm):
    """Edit one domain's transport; built with ``prefix=transport_prefix(domain_id)`` so forms on one page differ."""

    host = StringField("Host", validators=[DataRequired(), Length(max=253)])
    port = StringField("Port", validators=[DataRequired(), Length(max=5)])
    tls = SelectField("TLS", choices=TLS_CHOICES)
    back = HiddenField(default="detail", validators=[AnyOf(["index", "detail"])])
    submit = SubmitField("Save")


def transport_prefix(domain_id: int) -> str:
    return f"d{domain_id}"


class QuarantineFilterForm(GetForm):
    """The quarantine list's filters: a GET form (bookmarkable, no CSRF token: it changes nothing).

    Build it with ``formdata=request.args``. Dates are days in UTC; "until" includes its whole day.
    """

    kind = SelectField("Kind", choices=[SelectChoice("", "any"), SelectChoice("spam", "spam"),
                                        SelectChoice("virus", "virus"), SelectChoice("attachment", "attachment")],
                       validators=[Optional()], default="")
    rcpt = StringField("Recipient", validators=[Optional(), Length(max=320)])
    sender = StringField("Sender contains", validators=[Optional(), Length(max=320)])
    subject = StringField("Subject contains", validators=[Optional(), Length(max=200)])
    since = DateField("From day (UTC)", validators=[Optional()])
    until = DateField("To day (UTC)", validators=[Optional()])
    min_score = DecimalField("Score from", validators=[Optional()], places=None)
    max_score = DecimalField("Score to", validators=[Optional()], places=None)
    submit = SubmitField("Filter")


class MyQuarantineFilterForm(GetForm):
    """The end user's search: sender or subject text (GET, no CSRF token)."""

    sender = StringField("Sender contains", validators=[Optional(), Length(max=320)])
    subject = StringField("Subject contains", validators=[Optional(), Length(max=200)])
    submit = SubmitField("Search")


class ListEntryForm(FlaskForm):
    """Add an allow- or block-list entry; the value's rules live in :func:`tenants.lists.validate_value`."""

    kind = SelectField("List", choices=[SelectChoice("allow", "allow"), SelectChoice("block", "block")])
    value = StringField("Address, domain or IP network", validators=[DataRequired(), Length(max=320)])
    comment = StringField("Comment", validators=[Optional(), Length(max=500)])
    submit = SubmitField("Add")


class BrandingForm(FlaskForm):
    """A tenant's branding; the rules live in :mod:`tenants.branding`."""

    name = StringField("Name shown to your users", validators=[Optional(), Length(max=200)])
    color = StringField("Accent colour (#rrggbb)", validators=[Optional(), Length(max=20)])
    logo_url = StringField("Logo URL (https)", validators=[Optional(), Length(max=500)])
    submit = SubmitField("Save branding")


def _at_least_one(message: str) -> Callable[[FlaskForm, Field], None]:
    """A validator for a multiple choice: one or more chosen (without the HTML ``required`` flag)."""

    def check(form: FlaskForm, field: Field) -> None:
        if not field.data:
            raise StopValidation(message)

    return check


class MultiCheckboxField(SelectMultipleField):
    """A multiple choice shown as one checkbox per choice (wtforms' documented recipe)."""

    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class ApiKeyForm(FlaskForm):
    """A new REST API key: a name to tell it apart and its scopes (the rules live in :mod:`tenants.apikeys`)."""

    name = StringField("Name (what it is for)", validators=[Optional(), Length(max=API_KEY_MAX_NAME)])
    # Not DataRequired: its "required" flag would mark every checkbox required, and a browser then refuses the form
    # unless all of them are ticked.
    scopes = MultiCheckboxField("Scopes", choices=[SelectChoice(s, s) for s in API_KEY_SCOPES],
                                validators=[_at_least_one("Choose at least one scope.")])
    expires_on = DateField("Expires on (optional: at 00:00 UTC that day)", validators=[Optional()])
    submit = SubmitField("Create key")


class NewUserForm(FlaskForm):
    """A new user (tenant user or MSP staff; the view sets the role choices of its level)."""

    email = StringField("E-mail", validators=[DataRequired(), Length(max=320)])
    role = SelectField("Role")
    password = PasswordField("Initial password (optional)", validators=[Optional(), Length(max=1024)])
    invite = BooleanField("Mail them an invitation link to set their own password instead")
    submit = SubmitField("Create user")
