"""The web forms (Flask-WTF: each carries a CSRF token).

Fields check only presence and length; the rules (domain syntax, transport, tenant names) live in
:mod:`tenants.services`, whose :class:`~tenants.exceptions.ValidationError` messages the views flash, so the CLI,
the consoles and later the API refuse the same input with the same words.
"""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import HiddenField, PasswordField, SelectField, StringField, SubmitField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import AnyOf, DataRequired, Length

from tenants.models import TlsMode

TLS_CHOICES = [
    SelectChoice(TlsMode.NONE.value, "none"),
    SelectChoice(TlsMode.OPPORTUNISTIC.value, "opportunistic (STARTTLS if offered)"),
    SelectChoice(TlsMode.REQUIRED.value, "required (STARTTLS or defer)"),
]


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


class TransportForm(FlaskForm):
    """Edit one domain's transport; built with ``prefix=transport_prefix(domain_id)`` so forms on one page differ."""

    host = StringField("Host", validators=[DataRequired(), Length(max=253)])
    port = StringField("Port", validators=[DataRequired(), Length(max=5)])
    tls = SelectField("TLS", choices=TLS_CHOICES)
    back = HiddenField(default="detail", validators=[AnyOf(["index", "detail"])])
    submit = SubmitField("Save")


def transport_prefix(domain_id: int) -> str:
    return f"d{domain_id}"
