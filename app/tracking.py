"""The message tracking center in the tenant portal (``/portal/tracking``: tenant_admin, tenant_auditor) and the MSP
console (``/console/tracking``: msp_admin, msp_helpdesk, across tenants with a tenant filter).

A filtered search paged by keyset cursor, one message's timeline (envelope, findings, verdict, every delivery attempt
with the remote reply) with its actions (release a held mail, allow or block its sender: the quarantine's services,
audited), and a streamed CSV export of a search with the same filters (at most
:data:`tenants.tracking.EXPORT_MAX_ROWS` rows). Every read goes through :mod:`tenants.tracking` in the request's
scope: another tenant's message is a 404 like a missing one. Opening a timeline is recorded as envelope-level access.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from flask import Response, abort, flash, redirect, render_template, request, stream_with_context, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from sqlalchemy import select
from wtforms import DateField, SelectField, StringField, SubmitField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length, Optional

from app import held
from app.access import MSP_ROLES, QUARANTINE_HELPDESK, allow
from app.actions import attempt
from app.audit import audit
from app.console import bp as console_bp
from app.extensions import config, db
from app.forms import GetForm
from app.portal import TENANT_ROLES
from app.portal import bp as portal_bp
from tenants import lists, tracking
from tenants import quarantine as q
from tenants.exceptions import PermissionDenied, ValidationError
from tenants.mailsort import Order
from tenants.models import DeliveryStatus, Role, Tenant
from tenants.scope import current_scope, reset_scope, set_scope

#: Longest text a filter field accepts.
FIELD_MAX = 320
#: What a tracked message's page may do (``action``): release it, allow or block its sender.
ACTIONS: tuple[str, ...] = ("release", "allow", "block")


def _choices(values: tuple[str, ...]) -> list[SelectChoice]:
    return [SelectChoice("", "any")] + [SelectChoice(v, v) for v in values]


class TrackingFilterForm(GetForm):
    """The tracking search's filters: a GET form (bookmarkable, no CSRF token: it changes nothing).

    Dates are days in UTC; "to" includes its whole day. ``tenant`` is shown in the MSP console only.
    """

    tenant = SelectField("Tenant", choices=[SelectChoice("", "all tenants")], validators=[Optional()], default="")
    sender = StringField("Sender contains", validators=[Optional(), Length(max=FIELD_MAX)])
    rcpt = StringField("Recipient", validators=[Optional(), Length(max=FIELD_MAX)])
    subject = StringField("Subject contains", validators=[Optional(), Length(max=200)])
    queue_id = StringField("Queue id", validators=[Optional(), Length(max=64)])
    message_id = StringField("Message-ID", validators=[Optional(), Length(max=998)])
    client_ip = StringField("Client IP", validators=[Optional(), Length(max=45)])
    since = DateField("From day (UTC)", validators=[Optional()])
    until = DateField("To day (UTC)", validators=[Optional()])
    verdict = SelectField("Verdict", choices=_choices(tracking.VERDICTS), validators=[Optional()], default="")
    direction = SelectField("Direction", choices=_choices(tracking.DIRECTIONS), validators=[Optional()], default="")
    status = SelectField("Delivery status", choices=_choices(tracking.STATUSES), validators=[Optional()], default="")
    submit = SubmitField("Search")


@dataclass(frozen=True)
class Audience:
    """Who a page serves: its blueprint's endpoints and whether it spans tenants."""

    prefix: str
    msp: bool

    def ep(self, name: str) -> str:
        return f"{self.prefix}.{name}"


PORTAL = Audience("portal", msp=False)
CONSOLE = Audience("console", msp=True)


def _form(audience: Audience) -> TrackingFilterForm:
    form = TrackingFilterForm(formdata=request.args)
    if audience.msp:
        names = db.session.execute(select(Tenant.id, Tenant.name).order_by(Tenant.name))
        form.tenant.choices = [SelectChoice("", "all tenants")] + [SelectChoice(str(i), n) for i, n in names]
    return form


def _day(value: object, days: int = 0) -> datetime | None:
    if value is None:
        return None
    return datetime.combine(value, time.min, UTC) + timedelta(days=days)  # type: ignore[arg-type]


def _filters(form: TrackingFilterForm, audience: Audience) -> tracking.Filters:
    """:class:`tenants.tracking.Filters` from a validated form (the tenant filter only in the MSP console)."""
    def text(field: StringField) -> str | None:
        return (field.data or "").strip() or None

    tenant = form.tenant.data if audience.msp else ""
    return tracking.Filters(
        sender=text(form.sender), rcpt=text(form.rcpt), subject=text(form.subject), queue_id=text(form.queue_id),
        message_id_header=text(form.message_id), client_ip=text(form.client_ip),
        since=_day(form.since.data), until=_day(form.until.data, 1),
        verdict=form.verdict.data or None, direction=form.direction.data or None, status=form.status.data or None,
        tenant_id=int(tenant) if tenant and str(tenant).isdigit() else None,
    )


def _tenant_names() -> dict[int, str]:
    return {i: n for i, n in db.session.execute(select(Tenant.id, Tenant.name))}


def _audit(action: str, target: str, detail: str = "", *, tenant_id: int | None) -> None:
    """An envelope-level access entry in the audit log (:mod:`tenants.audit`, through the web's helper that adds
    the actor, address and view-as tenant); the caller commits."""

    audit(action, target, detail, tenant_id=tenant_id)


def _describe(f: tracking.Filters) -> str:
    """The filters of a search in words, for the audit log."""
    return ", ".join(f"{k}={v.isoformat() if isinstance(v, datetime) else v}"
                     for k, v in vars(f).items() if v not in (None, "")) or "no filter"


def _search(audience: Audience) -> ResponseReturnValue:
    form = _form(audience)
    items: list = []  # type: ignore[type-arg]
    rcpts: dict[str, list[tuple[str, str]]] = {}
    cursor = None
    status = 200
    order, total = Order(), None
    if form.validate():
        try:
            order = held.order_of_request()
            filters = _filters(form, audience)
            items, cursor = tracking.search_page(db.session, filters, after=request.args.get("after") or None,
                                                 limit=held.page_size(), order=order)
            total = tracking.count(db.session, filters)
            rcpts = tracking.recipients(db.session, [m.id for m in items])
        except ValidationError as exc:
            flash(str(exc), "error")
            status = 400
    else:
        status = 422
    export_args = {k: v for k, v in request.args.items()
                   if k not in ("after", "limit", "submit", "sort", "dir") and v}
    return render_template("tracking/search.html", form=form, items=items, rcpts=rcpts, a=audience,
                           tenants=_tenant_names() if audience.msp else {}, next_args=held.page_args(cursor),
                           first_args=held.first_args(), export_args=export_args,
                           max_rows=tracking.EXPORT_MAX_ROWS, order=order, total=total), status


def _csv_line(row: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow([_defuse(v) for v in row])
    return out.getvalue()


def _defuse(value: str) -> str:
    """Keep a spreadsheet from running a cell as a formula (CSV injection): text such as a subject that starts
    with = + - @ gets a leading apostrophe."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _export(audience: Audience) -> ResponseReturnValue:
    form = _form(audience)
    if not form.validate():
        return Response("invalid filters\n", status=422, mimetype="text/plain")
    try:
        filters = _filters(form, audience)
        tracking.search_page(db.session, filters, limit=1)  # validates before the stream starts
    except ValidationError as exc:
        return Response(f"{exc}\n", status=400, mimetype="text/plain")
    scope = current_scope()
    session = db.session
    _audit("tracking.export", "message search", _describe(filters), tenant_id=scope.tenant_id)
    session.commit()

    def rows() -> Iterator[str]:
        token = set_scope(scope)  # the scope stays the request's while the body streams
        try:
            for row in tracking.export_rows(session, filters):
                yield _csv_line(row)
        finally:
            reset_scope(token)

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Response(stream_with_context(rows()), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="tracking-{stamp}.csv"'})


def _message(audience: Audience, message_id: str) -> ResponseReturnValue:
    s = db.session
    d = tracking.detail(s, message_id)  # NotFound (404) for another tenant's message
    tracking.record_view(s, d.message, current_user.email)
    _audit("tracking.view", f"message {d.message.id}", tenant_id=d.message.tenant_id)
    s.commit()
    tenant = s.get(Tenant, d.message.tenant_id) if audience.msp else None
    return render_template("tracking/message.html", d=d, m=d.message, steps=tracking.timeline(d), a=audience,
                           tenant=tenant, actions=_actions_on(d, audience))


def _allowed(audience: Audience) -> tuple[str, ...]:
    """What the viewer may do to a tracked message: admins all of :data:`ACTIONS`, the helpdesk (in the console, or
    viewing a tenant as it) releases only, as in the quarantine; a tenant's auditor nothing."""
    if audience.msp:
        return ACTIONS if current_user.role is Role.MSP_ADMIN else ("release",)
    if current_user.role is Role.TENANT_ADMIN:
        return ACTIONS
    return ("release",) if current_user.acting_as and current_user.real_role in QUARANTINE_HELPDESK else ()


def _actions_on(d: tracking.MessageDetail, audience: Audience) -> tuple[str, ...]:
    """The buttons a message's page shows: release while a recipient is held (never a virus: that is released from
    its quarantine page, after a confirmation); allow or block the sender of inbound mail."""
    m = d.message
    held_now = any(r.status == DeliveryStatus.QUARANTINED.value for r in d.deliveries)
    shown = []
    if held_now and m.quarantine_kind != "virus":
        shown.append("release")
    if m.direction == "inbound" and (m.header_from or m.mail_from):
        shown += ["allow"] if m.quarantine_kind != "virus" else []
        shown.append("block")
    return tuple(a for a in shown if a in _allowed(audience))


def _act(audience: Audience, message_id: str) -> ResponseReturnValue:
    """Release a tracked message, or allow or block its sender (releasing or deleting it while it is held), with the
    quarantine's services; audited like the quarantine's actions."""
    s, cfg, actor = db.session, config(), current_user.email
    d = tracking.detail(s, message_id)  # NotFound (404) for another tenant's message
    m, action = d.message, request.form.get("action", "")
    if action not in ACTIONS:
        abort(400)
    if action not in _allowed(audience):
        abort(404)  # as for a view the role may not call: no oracle of what exists
    back = redirect(url_for(audience.ep("tracking_message"), message_id=m.id))
    if action not in _actions_on(d, audience):
        flash("That action does not apply to this message.", "error")
        return back
    held_now = any(r.status == DeliveryStatus.QUARANTINED.value for r in d.deliveries)
    admin = current_user.role in (Role.TENANT_ADMIN, Role.MSP_ADMIN)
    with attempt(ValidationError, PermissionDenied) as done:
        if action == "release":
            said = f"Message {q.release(s, cfg, m.id, actor=actor, actor_is_admin=admin)}."
        elif held_now and action == "allow":
            entry, result = q.allow_sender_and_release(s, cfg, m.id, actor=actor, actor_is_admin=True)
            said = f"{entry.value} is on the tenant's allow list; message {result}."
        elif held_now:
            entry, gone = q.block_sender_and_delete(s, cfg, m.id, actor=actor)
            said = f"{entry.value} is on the tenant's block list; message deleted for {', '.join(gone)}."
        else:
            kind = "allow" if action == "allow" else "block"
            entry = lists.add_entry(s, kind=kind, value=lists.sender_of(m.mail_from, m.header_from),
                                    value_type="address", tenant_id=m.tenant_id, created_by=actor,
                                    comment=f"from tracked message {m.id}")
            lists.reload_after_commit(s, cfg)
            said = f"{entry.value} is on the tenant's {kind} list."
        _audit(f"tracking.{action}", f"message {m.id}", said, tenant_id=m.tenant_id)
    if done:
        flash(said, "success")
    return back


@portal_bp.route("/tracking")
@allow(*TENANT_ROLES)
def tracking_search() -> ResponseReturnValue:
    return _search(PORTAL)


@portal_bp.route("/tracking/export.csv")
@allow(*TENANT_ROLES)
def tracking_export() -> ResponseReturnValue:
    return _export(PORTAL)


@portal_bp.route("/tracking/<message_id>")
@allow(*TENANT_ROLES)
def tracking_message(message_id: str) -> ResponseReturnValue:
    return _message(PORTAL, message_id)


@portal_bp.route("/tracking/<message_id>/act", methods=["POST"])
@allow(Role.TENANT_ADMIN, viewing_as=QUARANTINE_HELPDESK)
def tracking_act(message_id: str) -> ResponseReturnValue:
    return _act(PORTAL, message_id)


@console_bp.route("/tracking", endpoint="tracking_search")
@allow(*MSP_ROLES)
def tracking_search_msp() -> ResponseReturnValue:
    return _search(CONSOLE)


@console_bp.route("/tracking/export.csv", endpoint="tracking_export")
@allow(*MSP_ROLES)
def tracking_export_msp() -> ResponseReturnValue:
    return _export(CONSOLE)


@console_bp.route("/tracking/<message_id>", endpoint="tracking_message")
@allow(*MSP_ROLES)
def tracking_message_msp(message_id: str) -> ResponseReturnValue:
    return _message(CONSOLE, message_id)


@console_bp.route("/tracking/<message_id>/act", endpoint="tracking_act", methods=["POST"])
@allow(*MSP_ROLES)
def tracking_act_msp(message_id: str) -> ResponseReturnValue:
    return _act(CONSOLE, message_id)
