"""Statistics for the pages and exports, read only from the roll-up tables (StatHour, StatTop, UsageMonth) that
:mod:`worker.rollup` fills: no function here touches the message table, so a page costs the same at ten million
messages as at ten. Works in the caller's scope (one tenant's, or the MSP's with an optional tenant filter).

Days and hours are UTC. A range is given as two days, both included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tenants.exceptions import ValidationError
from tenants.models import StatHour, StatTop, Tenant, UsageMonth

#: Longest range a page or export may cover, in days.
MAX_RANGE_DAYS = 400
#: Default range of the pages: the last this many days, today included.
DEFAULT_DAYS = 14
#: Entries of each top list shown.
TOP_LIMIT = 10
#: Counters of a StatHour row, in the order pages and exports show them.
COUNTERS: tuple[str, ...] = ("mails", "bytes", "delivered", "tagged", "spam", "virus", "attachment", "rejected")
#: Series of the stacked daily chart (each a counter), bottom up.
SERIES: tuple[str, ...] = ("delivered", "tagged", "spam", "virus", "attachment", "rejected")
#: Top list kinds and their titles.
TOP_TITLES: dict[str, str] = {
    "sender": "Top senders", "rcpt": "Top recipients", "spam_source": "Top spam sources",
    "virus": "Viruses", "reject_reason": "Reject reasons",
}


@dataclass
class Row:
    """The counters of one bucket (a day, an hour of the day, a domain)."""

    label: str
    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    def add(self, values: dict[str, int]) -> None:
        for name in COUNTERS:
            self.values[name] += int(values.get(name) or 0)

    def __getitem__(self, name: str) -> int:
        return self.values[name]


@dataclass(frozen=True)
class Span:
    """Days ``first`` to ``last``, both included (UTC)."""

    first: date
    last: date

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time.min, UTC)

    @property
    def end(self) -> datetime:
        """Exclusive: midnight after the last day."""
        return datetime.combine(self.last + timedelta(days=1), time.min, UTC)

    def days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range((self.last - self.first).days + 1)]


def span(first: date | None, last: date | None, *, today: date | None = None) -> Span:
    """A validated range; missing ends default to the last :data:`DEFAULT_DAYS` days."""
    today = today or datetime.now(UTC).date()
    last = last or today
    first = first or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise ValidationError("the first day of the range must not be after the last")
    if (last - first).days + 1 > MAX_RANGE_DAYS:
        raise ValidationError(f"a range covers at most {MAX_RANGE_DAYS} days")
    return Span(first, last)


def _sums() -> list:  # type: ignore[type-arg]
    return [func.coalesce(func.sum(getattr(StatHour, name)), 0).label(name) for name in COUNTERS]


def _hour_filter(stmt, s: Span, tenant_id: int | None, direction: str | None):  # type: ignore[no-untyped-def]
    stmt = stmt.where(StatHour.hour >= s.start, StatHour.hour < s.end)
    if tenant_id is not None:
        stmt = stmt.where(StatHour.tenant_id == tenant_id)
    if direction:
        stmt = stmt.where(StatHour.direction == direction)
    return stmt


def _by_hour(session: Session, s: Span, tenant_id: int | None, direction: str | None) -> list[tuple[datetime, dict]]:  # type: ignore[type-arg]
    stmt = _hour_filter(select(StatHour.hour, *_sums()), s, tenant_id, direction).group_by(StatHour.hour)
    out = []
    for row in session.execute(stmt):
        data = row._mapping
        out.append((data["hour"], {name: int(data[name]) for name in COUNTERS}))
    return out


@dataclass(frozen=True)
class Report:
    """Everything a statistics page shows for one range."""

    span: Span
    total: Row
    days: list[Row]
    hours: list[Row]
    domains: list[tuple[str, str, Row]]
    tops: dict[str, list[tuple[str, int]]]


def report(session: Session, s: Span, *, tenant_id: int | None = None, direction: str | None = None,
           top_limit: int = TOP_LIMIT) -> Report:
    """Totals, per day, per hour of the day, per (tenant name, domain), and the top lists of a range."""
    days = {d: Row(d.isoformat()) for d in s.days()}
    hours = [Row(f"{h:02d}") for h in range(24)]
    total = Row("total")
    for hour, values in _by_hour(session, s, tenant_id, direction):
        at = hour.astimezone(UTC)
        days[at.date()].add(values)
        hours[at.hour].add(values)
        total.add(values)
    return Report(s, total, list(days.values()), hours, domains(session, s, tenant_id=tenant_id, direction=direction),
                  {kind: top(session, s, kind, tenant_id=tenant_id, limit=top_limit) for kind in TOP_TITLES})


def domains(session: Session, s: Span, *, tenant_id: int | None = None,
            direction: str | None = None) -> list[tuple[str, str, Row]]:
    """(tenant name, domain, counters) of the range, most mail first."""
    stmt = _hour_filter(select(Tenant.name, StatHour.domain, *_sums()).join(Tenant, Tenant.id == StatHour.tenant_id),
                        s, tenant_id, direction).group_by(Tenant.name, StatHour.domain)
    out = []
    for row in session.execute(stmt):
        data = row._mapping
        r = Row(data["domain"])
        r.add({name: int(data[name]) for name in COUNTERS})
        out.append((str(data["name"]), str(data["domain"]), r))
    return sorted(out, key=lambda t: (-t[2]["mails"], t[0], t[1]))


def top(session: Session, s: Span, kind: str, *, tenant_id: int | None = None,
        limit: int = TOP_LIMIT) -> list[tuple[str, int]]:
    """The ``limit`` largest keys of one top list over the range, with their counts."""
    if kind not in TOP_TITLES:
        raise ValidationError(f"top list {kind!r}: use one of {', '.join(TOP_TITLES)}")
    total = func.sum(StatTop.count)
    stmt = (select(StatTop.key, total).where(StatTop.kind == kind, StatTop.day >= s.start, StatTop.day < s.end)
            .group_by(StatTop.key).order_by(total.desc(), StatTop.key).limit(limit))
    if tenant_id is not None:
        stmt = stmt.where(StatTop.tenant_id == tenant_id)
    return [(str(k), int(n)) for k, n in session.execute(stmt)]


@dataclass(frozen=True)
class Usage:
    """One tenant's metered usage in one month."""

    tenant_id: int
    tenant: str
    month: str
    mails: int
    bytes: int
    mailboxes: int


def month_key(value: str) -> str:
    """A validated ``YYYY-MM``."""
    try:
        datetime.strptime(value, "%Y-%m")
    except ValueError:
        raise ValidationError(f"month {value!r}: use YYYY-MM") from None
    return value


def usage(session: Session, *, first: str | None = None, last: str | None = None,
          tenant_id: int | None = None) -> list[Usage]:
    """Usage rows, month by month (newest first), then by tenant name; months as ``YYYY-MM``, both included."""
    stmt = select(UsageMonth, Tenant.name).join(Tenant, Tenant.id == UsageMonth.tenant_id)
    if first:
        stmt = stmt.where(UsageMonth.month >= month_key(first))
    if last:
        stmt = stmt.where(UsageMonth.month <= month_key(last))
    if tenant_id is not None:
        stmt = stmt.where(UsageMonth.tenant_id == tenant_id)
    rows = session.execute(stmt.order_by(UsageMonth.month.desc(), Tenant.name))
    return [Usage(u.tenant_id, str(name), u.month, int(u.mails), int(u.bytes), int(u.mailboxes)) for u, name in rows]
