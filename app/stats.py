"""Statistics pages: the tenant portal (``/portal/stats``: tenant_admin, tenant_auditor), the MSP console
(``/console/stats``, MSP-wide or one tenant) and usage metering for billing (``/console/usage`` with CSV and JSON:
MSP roles only).

Every number comes from :mod:`tenants.stats`, which reads only the roll-up tables. Charts are server-rendered SVG
(no script: the Content-Security-Policy allows none inline, and none is needed) drawn with presentation attributes
only (``style`` attributes would be blocked too), with the numbers in tables beside them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, datetime

from flask import Response, flash, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from markupsafe import Markup, escape
from sqlalchemy import select
from wtforms import DateField, SelectField, StringField, SubmitField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length, Optional

from app.access import MSP_ROLES, allow
from app.console import bp as console_bp
from app.extensions import db
from app.forms import GetForm
from app.portal import TENANT_ROLES
from app.portal import bp as portal_bp
from tenants import stats
from tenants.exceptions import ValidationError
from tenants.models import Tenant

#: Fill colour of each chart series (presentation attributes; readable on white, distinct in greyscale order).
COLORS: dict[str, str] = {
    "delivered": "#3a8f5c", "tagged": "#c9a227", "spam": "#d9822b", "virus": "#b23b3b",
    "attachment": "#7b4fa0", "rejected": "#5b6770", "mails": "#2f6db5",
}
#: Chart geometry in SVG user units (the SVG scales to its container).
CHART_WIDTH = 760
CHART_HEIGHT = 240
MARGIN_LEFT = 48
MARGIN_BOTTOM = 28
MARGIN_TOP = 10
#: Gap between bars as a fraction of a bar's slot.
BAR_GAP = 0.2
#: Horizontal grid lines (value ticks) on a chart.
TICKS = 4
#: Most day labels under the daily chart (others are skipped so labels do not overlap).
MAX_DAY_LABELS = 16


class StatsForm(GetForm):
    """The range picker: a GET form (bookmarkable, no CSRF token). ``tenant`` is shown in the MSP console only."""

    tenant = SelectField("Tenant", choices=[SelectChoice("", "all tenants")], validators=[Optional()], default="")
    since = DateField("From day (UTC)", validators=[Optional()])
    until = DateField("To day (UTC)", validators=[Optional()])
    direction = SelectField("Direction", choices=[SelectChoice("", "any"), SelectChoice("inbound", "inbound"),
                                                  SelectChoice("outbound", "outbound")],
                            validators=[Optional()], default="")
    submit = SubmitField("Show")


class UsageForm(GetForm):
    """Months to meter (``YYYY-MM``, both included) and an optional tenant: GET, no CSRF token."""

    tenant = SelectField("Tenant", choices=[SelectChoice("", "all tenants")], validators=[Optional()], default="")
    first = StringField("From month (YYYY-MM)", validators=[Optional(), Length(max=7)])
    last = StringField("To month (YYYY-MM)", validators=[Optional(), Length(max=7)])
    submit = SubmitField("Show")


def _tenant_choices(form: StatsForm | UsageForm) -> None:
    names = db.session.execute(select(Tenant.id, Tenant.name).order_by(Tenant.name))
    form.tenant.choices = [SelectChoice("", "all tenants")] + [SelectChoice(str(i), n) for i, n in names]


def _tenant_id(form: StatsForm | UsageForm, msp: bool) -> int | None:
    value = str(form.tenant.data or "") if msp else ""
    return int(value) if value.isdigit() else None


# --- SVG charts -----------------------------------------------------------------------------------------------------

def _nice_max(value: int) -> int:
    """The top of the value axis: :data:`TICKS` equal whole steps of 1, 2 or 5 × 10^n reaching ``value``, so that
    every grid line is labelled with its true value (1 mail: 0-1-2-3-4, not 0-0-0-0-1)."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step * TICKS >= value:
                return m * step * TICKS
        step *= 10


def _axis(top: int, plot_h: float) -> list[str]:
    parts = []
    for i in range(TICKS + 1):
        value = top * i // TICKS
        y = MARGIN_TOP + plot_h - plot_h * i / TICKS
        parts.append(f'<line x1="{MARGIN_LEFT}" y1="{y:.1f}" x2="{CHART_WIDTH}" y2="{y:.1f}" stroke="#dde3ea"/>')
        parts.append(f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                     f'fill="#5b6770">{value}</text>')
    return parts


def stacked_bars(rows: Sequence[stats.Row], series: Sequence[str], *, title: str,
                 max_labels: int = MAX_DAY_LABELS) -> Markup:
    """A stacked bar per row (one segment per series, bottom up), each segment titled with its number."""
    plot_w = CHART_WIDTH - MARGIN_LEFT
    plot_h = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    top = _nice_max(max((sum(r[s] for s in series) for r in rows), default=0))
    slot = plot_w / max(len(rows), 1)
    bar = slot * (1 - BAR_GAP)
    every = max(1, -(-len(rows) // max_labels))
    parts = [f'<svg class="chart" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">', f"<title>{escape(title)}</title>"]
    parts += _axis(top, plot_h)
    for i, row in enumerate(rows):
        x = MARGIN_LEFT + i * slot + (slot - bar) / 2
        y: float = MARGIN_TOP + plot_h
        for name in series:
            h = plot_h * row[name] / top
            if row[name] <= 0:
                continue
            y -= h
            parts.append(f'<rect class="bar {name}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                         f'fill="{COLORS.get(name, "#2f6db5")}"><title>{escape(row.label)} {name}: {row[name]}'
                         f"</title></rect>")
        if i % every == 0:
            label = row.label[5:] if len(row.label) == 10 else row.label  # 2026-11-25 → 11-25
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{CHART_HEIGHT - 8}" text-anchor="middle" font-size="11" '
                         f'fill="#5b6770">{escape(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def legend(series: Sequence[str]) -> Markup:
    """Colour keys of the series, as inline SVG swatches."""
    items = [f'<li><svg width="12" height="12" aria-hidden="true"><rect width="12" height="12" '
             f'fill="{COLORS.get(s, "#2f6db5")}"/></svg> {escape(s)}</li>' for s in series]
    return Markup('<ul class="legend plain">' + "".join(items) + "</ul>")


# --- pages ----------------------------------------------------------------------------------------------------------

def _report(msp: bool) -> tuple[StatsForm, stats.Report | None, int]:
    form = StatsForm(formdata=request.args)
    if msp:
        _tenant_choices(form)
    if not form.validate():
        return form, None, 422
    try:
        span = stats.span(form.since.data, form.until.data)
        return form, stats.report(db.session, span, tenant_id=_tenant_id(form, msp),
                                  direction=form.direction.data or None), 200
    except ValidationError as exc:
        flash(str(exc), "error")
        return form, None, 400


def _page(msp: bool) -> ResponseReturnValue:
    form, rep, status = _report(msp)
    charts = {}
    if rep is not None:
        charts = {"daily": stacked_bars(rep.days, stats.SERIES, title="Mails per day by outcome"),
                  "hourly": stacked_bars(rep.hours, ("mails",), title="Mails per hour of the day (UTC)",
                                         max_labels=24)}
    args = {k: v for k, v in request.args.items() if k != "submit" and v}
    return render_template("stats/stats.html", form=form, rep=rep, charts=charts, legend=legend(stats.SERIES),
                           series=stats.SERIES, titles=stats.TOP_TITLES, msp=msp, export_args=args,
                           export_ep="console.stats_export" if msp else "portal.stats_export",
                           page_ep="console.stats" if msp else "portal.stats_page"), status


def _csv(rows: Sequence[Sequence[object]], filename: str) -> Response:
    out = io.StringIO()
    writer = csv.writer(out)
    for row in rows:
        writer.writerow([_defuse(str(v)) for v in row])
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _defuse(value: str) -> str:
    """No cell a spreadsheet would run as a formula (a sender or reason may start with = + - @)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _export(msp: bool) -> ResponseReturnValue:
    form, rep, status = _report(msp)
    if rep is None:
        return Response("invalid range\n", status=status, mimetype="text/plain")
    rows: list[list[object]] = [["section", "key", *stats.COUNTERS]]
    rows += [["day", r.label, *(r[c] for c in stats.COUNTERS)] for r in rep.days]
    rows += [["hour", r.label, *(r[c] for c in stats.COUNTERS)] for r in rep.hours]
    rows += [["domain", f"{tenant}/{domain}" if msp else domain, *(r[c] for c in stats.COUNTERS)]
             for tenant, domain, r in rep.domains]
    rows += [["total", "", *(rep.total[c] for c in stats.COUNTERS)]]
    return _csv(rows, f"stats-{rep.span.first}-{rep.span.last}.csv")


@portal_bp.route("/stats")
@allow(*TENANT_ROLES)
def stats_page() -> ResponseReturnValue:
    return _page(msp=False)


@portal_bp.route("/stats/export.csv")
@allow(*TENANT_ROLES)
def stats_export() -> ResponseReturnValue:
    return _export(msp=False)


@console_bp.route("/stats", endpoint="stats")
@allow(*MSP_ROLES)
def console_stats() -> ResponseReturnValue:
    return _page(msp=True)


@console_bp.route("/stats/export.csv", endpoint="stats_export")
@allow(*MSP_ROLES)
def console_stats_export() -> ResponseReturnValue:
    return _export(msp=True)


# --- usage metering -------------------------------------------------------------------------------------------------

def _usage() -> tuple[UsageForm, list[stats.Usage], int]:
    form = UsageForm(formdata=request.args)
    _tenant_choices(form)
    if not form.validate():
        return form, [], 422
    try:
        rows = stats.usage(db.session, first=(form.first.data or "").strip() or None,
                           last=(form.last.data or "").strip() or None, tenant_id=_tenant_id(form, True))
    except ValidationError as exc:
        flash(str(exc), "error")
        return form, [], 400
    return form, rows, 200


@console_bp.route("/usage")
@allow(*MSP_ROLES)
def usage() -> ResponseReturnValue:
    form, rows, status = _usage()
    args = {k: v for k, v in request.args.items() if k != "submit" and v}
    return render_template("stats/usage.html", form=form, rows=rows, export_args=args), status


@console_bp.route("/usage.csv")
@allow(*MSP_ROLES)
def usage_csv() -> ResponseReturnValue:
    form, rows, status = _usage()
    if status != 200:
        return Response("invalid filters\n", status=status, mimetype="text/plain")
    table: list[list[object]] = [["month", "tenant_id", "tenant", "mails", "bytes", "mailboxes"]]
    table += [[u.month, u.tenant_id, u.tenant, u.mails, u.bytes, u.mailboxes] for u in rows]
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    return _csv(table, f"usage-{stamp}.csv")


@console_bp.route("/usage.json")
@allow(*MSP_ROLES)
def usage_json() -> ResponseReturnValue:
    form, rows, status = _usage()
    if status != 200:
        return jsonify({"error": "invalid filters"}), status
    return jsonify({"usage": [{"month": u.month, "tenant_id": u.tenant_id, "tenant": u.tenant, "mails": u.mails,
                               "bytes": u.bytes, "mailboxes": u.mailboxes} for u in rows]})
