"""``/api/v1/statistics`` and ``/api/v1/usage``: the numbers of the statistics and usage pages, through
:mod:`tenants.stats` (which reads only the roll-up tables, so a call costs the same at any mail volume).

A tenant key sees its own tenant; an MSP key the whole MSP or, with ``tenant_id``, one tenant. Days and hours are
UTC; a range names two days (or months), both included.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from marshmallow import RAISE, Schema, fields, validate

from app.access import allow_api
from app.api import schemas as sch
from app.api.blueprint import bp, resolve_tenant
from app.api.errors import ApiError
from app.extensions import db
from tenants import stats
from tenants.exceptions import ValidationError

#: ``direction`` values a client may send, and the direction the roll-ups store for each.
DIRECTIONS: dict[str, str] = {"in": "inbound", "out": "outbound", "inbound": "inbound", "outbound": "outbound"}
#: Days a range may name: any day of stored mail, and far enough from the calendar's end to add a day safely.
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(8999, 12, 31)
#: A month, ``YYYY-MM``.
MONTH_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])$"


def _day(description: str) -> fields.Date:
    return fields.Date(validate=validate.Range(FIRST_DAY, LAST_DAY), metadata={"description": description})


def _month(description: str) -> fields.String:
    return fields.String(validate=validate.Regexp(MONTH_PATTERN, error="use YYYY-MM"),
                         metadata={"description": description})


def _tenant_arg() -> fields.Integer:
    return fields.Integer(validate=validate.Range(1, sch.MAX_ID), metadata={
        "description": "MSP keys: only this tenant (omitted: the whole MSP). Tenant keys: their own tenant only."})


class StatisticsArgs(Schema):
    first = _day(f"First day, YYYY-MM-DD (default: {stats.DEFAULT_DAYS - 1} days before the last)")
    last = _day("Last day, YYYY-MM-DD, included (default: today, UTC)")
    direction = fields.String(validate=validate.OneOf(list(DIRECTIONS)),
                              metadata={"description": "in (inbound) or out (outbound); omitted: both"})
    tenant_id = _tenant_arg()


class UsageArgs(Schema):
    first = _month("First month, YYYY-MM")
    last = _month("Last month, YYYY-MM, included")
    tenant_id = _tenant_arg()


_COUNTERS: dict[str, fields.Field[Any]] = {name: fields.Integer(required=True) for name in stats.COUNTERS}
CountersSchema = Schema.from_dict(_COUNTERS, name="StatCounters")
BucketSchema = Schema.from_dict({"label": fields.String(required=True, metadata={
    "description": "The day (YYYY-MM-DD) or the hour of the day (00-23, UTC)"}), **_COUNTERS}, name="StatBucket")
DomainStatsSchema = Schema.from_dict({"tenant": fields.String(required=True), "domain": fields.String(required=True),
                                      **_COUNTERS}, name="StatDomain")
TopEntrySchema = Schema.from_dict({"key": fields.String(required=True), "count": fields.Integer(required=True)},
                                  name="StatTopEntry")


class TopsSchema(Schema):
    sender = fields.List(fields.Nested(TopEntrySchema), required=True, metadata={"description": "Top senders"})
    rcpt = fields.List(fields.Nested(TopEntrySchema), required=True, metadata={"description": "Top recipients"})
    spam_source = fields.List(fields.Nested(TopEntrySchema), required=True,
                              metadata={"description": "Client addresses that sent the most spam"})
    virus = fields.List(fields.Nested(TopEntrySchema), required=True, metadata={"description": "Virus names"})
    reject_reason = fields.List(fields.Nested(TopEntrySchema), required=True)


class StatisticsSchema(Schema):
    first = fields.Date(required=True)
    last = fields.Date(required=True)
    tenant_id = fields.Integer(required=True, allow_none=True)
    direction = fields.String(required=True, allow_none=True)
    total = fields.Nested(CountersSchema, required=True)
    days = fields.List(fields.Nested(BucketSchema), required=True)
    hours = fields.List(fields.Nested(BucketSchema), required=True,
                        metadata={"description": "Mail per hour of the day (UTC) over the range"})
    domains = fields.List(fields.Nested(DomainStatsSchema), required=True, metadata={"description": "Most mail first"})
    tops = fields.Nested(TopsSchema, required=True)


class UsageSchema(Schema):
    month = fields.String(required=True)
    tenant_id = fields.Integer(required=True)
    tenant = fields.String(required=True)
    mails = fields.Integer(required=True)
    bytes = fields.Integer(required=True)
    mailboxes = fields.Integer(required=True, metadata={"description": "Distinct protected recipients that month"})


class UsageListSchema(Schema):
    items = fields.List(fields.Nested(UsageSchema), required=True,
                        metadata={"description": "Newest month first, then by tenant name"})


def _range_error(exc: ValidationError) -> ApiError:
    return ApiError(422, "validation", str(exc), fields={"first": [str(exc)], "last": [str(exc)]})


@bp.route("/statistics", methods=["GET"], endpoint="get_statistics", tags=["statistics"])
@allow_api("read")
@bp.arguments(StatisticsArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, StatisticsSchema)
def get_statistics(first: date | None = None, last: date | None = None, direction: str | None = None,
                   tenant_id: int | None = None) -> dict[str, Any]:
    """Totals, mail per day and per hour of the day, per domain, and the top lists of a range of days."""
    tid = resolve_tenant(tenant_id)
    try:
        span = stats.span(first, last)
    except ValidationError as exc:
        raise _range_error(exc) from None
    stored = DIRECTIONS[direction] if direction else None
    rep = stats.report(db.session, span, tenant_id=tid, direction=stored)
    return {
        "first": span.first, "last": span.last, "tenant_id": tid, "direction": stored, "total": rep.total.values,
        "days": [{"label": r.label, **r.values} for r in rep.days],
        "hours": [{"label": r.label, **r.values} for r in rep.hours],
        "domains": [{"tenant": tenant, "domain": domain, **r.values} for tenant, domain, r in rep.domains],
        "tops": {kind: [{"key": k, "count": n} for k, n in rows] for kind, rows in rep.tops.items()},
    }


@bp.route("/usage", methods=["GET"], endpoint="get_usage", tags=["statistics"])
@allow_api("read")
@bp.arguments(UsageArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, UsageListSchema)
def get_usage(first: str | None = None, last: str | None = None, tenant_id: int | None = None) -> dict[str, Any]:
    """Metered usage per tenant per month (mails, bytes, protected mailboxes), for billing."""
    tid = resolve_tenant(tenant_id)
    if first and last and first > last:
        raise _range_error(ValidationError("the first month of the range must not be after the last"))
    return {"items": stats.usage(db.session, first=first, last=last, tenant_id=tid)}
