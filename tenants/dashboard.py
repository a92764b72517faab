"""The MSP dashboard (the console's home) and its tenant list: a few aggregate queries over every tenant.

What needs the MSP's attention, each figure from stored state only (no DNS, no clamd, no Redis on a page load):
mail of the last 24 hours by direction and verdict, the delivery queue and its oldest deferred mail, held mail by
kind (:func:`tenants.metrics.queue_state`), tenants with domains that do not route yet (ownership never proved and
not vouched for), processes down (:mod:`tenants.platform.heartbeat`) and whether the virus scanner works
(configured, and no
``CLAM_TEMPFAIL`` in recent mail).

Mail counts read the statistics roll-up (:class:`StatHour`, :mod:`worker.rollup`) for whole hours before the
roll-up's watermark hour and the message table only after it (at most about an hour of mail while the roll-up runs),
so a page costs the same at any volume and still counts the mail of the last minutes. The number of queries does not
grow with the number of tenants: the tenant list is filtered, sorted, counted and paged in SQL.
Every function runs in the caller's MSP scope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, Select, and_, case, exists, func, literal, or_, select, true, union_all
from sqlalchemy.orm import Session

from tenants import dnscache, dnsreadiness
from tenants.exceptions import ValidationError
from tenants.metrics import QUEUE_STATUSES, queue_state
from tenants.models import Domain, Finding, Message, RollupState, StatHour, Tenant, utcnow
from tenants.platform import heartbeat
from tenants.platform.config import Config
from tenants.scope import current_scope

#: How far back the mail figures look.
WINDOW = timedelta(hours=24)
#: The watermark row of the statistics roll-up (worker.rollup.STATE_NAME; tenants imports no worker module).
ROLLUP_STATE = "stats"
#: Verdicts in the order the dashboard shows them.
VERDICTS: tuple[str, ...] = ("deliver", "tag", "quarantine", "reject")
#: Directions counted (bounces: the DSNs Mailward wrote).
DIRECTIONS: tuple[str, ...] = ("inbound", "outbound", "bounce")
#: Quarantine kinds the roll-up counts under the quarantine verdict.
HELD_KINDS: tuple[str, ...] = ("spam", "virus", "attachment")
#: Recent mail looked at for scanner failures (``CLAM_TEMPFAIL``: clamd did not answer).
SCANNER_WINDOW = timedelta(minutes=15)
#: The finding the virus check records when clamd cannot answer (smtp.checks.virus).
SCANNER_TEMPFAIL = "CLAM_TEMPFAIL"
#: Process kinds that must run somewhere for mail to flow (the web serving this page is evidently up).
REQUIRED_KINDS: tuple[str, ...] = ("ingress", "worker", "scheduler")
#: Checklist states that count as a failing DNS check (not "unknown": DNS could not be asked; not "unset").
FAILING_STATES: frozenset[str] = frozenset({dnsreadiness.MISSING, dnsreadiness.WRONG})
#: The checklist item left out of "failing DNS checks": ownership has its own line (domains not verified).
OWNERSHIP_ITEM = "Ownership"
#: Domains whose cached checklists are read per Redis round trip.
CACHE_BATCH = 500
#: Tenants named on the dashboard per problem (the rest are counted).
FLAG_LIMIT = 10
#: Tenants per page of the tenant list.
PAGE_SIZE = 50
#: Longest search text.
MAX_QUERY = 200


# --- mail of the last 24 hours ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MailWindow:
    """Mails accepted since ``since``: by direction, and by verdict (one per tenant share)."""

    since: datetime
    directions: dict[str, int]
    verdicts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.directions.values())

    def percent(self, verdict: str) -> float:
        """The verdict's share of the mails with one of :data:`VERDICTS`, in percent (0 when there is none)."""
        judged = sum(self.verdicts.values())
        return 100.0 * self.verdicts.get(verdict, 0) / judged if judged else 0.0


def floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def _window(session: Session, now: datetime) -> tuple[datetime, datetime]:
    """(start of the window, the moment from which the message table is read instead of the roll-up)."""
    since = floor_hour(now - WINDOW) + timedelta(hours=1)  # 23 whole hours and the current one
    until = session.scalar(select(RollupState.until).where(RollupState.name == ROLLUP_STATE))
    cut = since if until is None else min(max(floor_hour(until), since), floor_hour(now))
    return since, cut


def _verdict_sums() -> list[ColumnElement[int]]:
    quarantined = StatHour.spam + StatHour.virus + StatHour.attachment
    return [func.coalesce(func.sum(c), 0) for c in (StatHour.delivered, StatHour.tagged, quarantined,
                                                      StatHour.rejected)]


def mail_window(session: Session, *, now: datetime | None = None) -> MailWindow:
    """Mail of the last 24 hours: two grouped queries (roll-up hours, then the raw tail)."""
    now = now or utcnow()
    since, cut = _window(session, now)
    directions = dict.fromkeys(DIRECTIONS, 0)
    verdicts = dict.fromkeys(VERDICTS, 0)
    rolled = session.execute(
        select(StatHour.direction, func.coalesce(func.sum(StatHour.mails), 0), *_verdict_sums())
        .where(StatHour.hour >= since, StatHour.hour < cut).group_by(StatHour.direction))
    for direction, mails, *counts in rolled:
        directions[str(direction)] = directions.get(str(direction), 0) + int(mails)
        for verdict, n in zip(VERDICTS, counts, strict=True):
            verdicts[verdict] += int(n)
    raw = session.execute(
        select(Message.direction, Message.verdict, Message.quarantine_kind, func.count())
        .where(Message.received_at >= cut)
        .group_by(Message.direction, Message.verdict, Message.quarantine_kind))
    for direction, verdict, kind, n in raw:
        directions[str(direction)] = directions.get(str(direction), 0) + int(n)
        if verdict in VERDICTS and (verdict != "quarantine" or kind in HELD_KINDS):  # as worker.rollup counts
            verdicts[str(verdict)] += int(n)
    return MailWindow(since, directions, verdicts)


def _mail_by_tenant(session: Session, now: datetime) -> Select[tuple[int, int]]:
    """(tenant id, mails of the last 24 hours) for tenants with mail: a subquery for the tenant list's joins."""
    since, cut = _window(session, now)
    parts = union_all(
        select(StatHour.tenant_id.label("tenant_id"), StatHour.mails.label("mails"))
        .where(StatHour.hour >= since, StatHour.hour < cut),
        select(Message.tenant_id.label("tenant_id"), literal(1).label("mails")).where(Message.received_at >= cut),
    ).subquery()
    return select(parts.c.tenant_id, func.sum(parts.c.mails).label("mails")).group_by(parts.c.tenant_id)


# --- the queue, processes, scanner, tenants to look at ---------------------------------------------------------------

@dataclass(frozen=True)
class QueueState:
    by_status: dict[str, int]
    oldest_deferred: datetime | None
    held: dict[str, int]
    now: datetime

    @property
    def depth(self) -> int:
        return sum(self.by_status.values())

    @property
    def oldest_age(self) -> timedelta | None:
        return None if self.oldest_deferred is None else max(self.now - self.oldest_deferred, timedelta(0))

    @property
    def held_total(self) -> int:
        return sum(self.held.values())


@dataclass(frozen=True)
class Scanner:
    """Whether mail is scanned for viruses: ``on``, and why not when it is not."""

    on: bool
    reason: str = ""
    #: Recent mails whose scan failed (clamd did not answer).
    failed: int = 0


@dataclass(frozen=True)
class FlaggedTenant:
    id: int
    name: str
    #: How many of its domains have the problem.
    domains: int
    #: What fails, in words (the checklist items), when it says more than the count.
    detail: str = ""


@dataclass(frozen=True)
class Flagged:
    """Tenants with one problem: the first :data:`FLAG_LIMIT` by name and how many there are in all."""

    tenants: list[FlaggedTenant]
    total: int
    #: Why the figure could not be read (a store away); empty when it was.
    error: str = ""

    @property
    def more(self) -> int:
        return self.total - len(self.tenants)


@dataclass(frozen=True)
class Processes:
    down: list[heartbeat.ProcessState]
    up: int
    #: Kinds of :data:`REQUIRED_KINDS` with no process up anywhere.
    missing: list[str]

    @property
    def ok(self) -> bool:
        return not self.down and not self.missing


def scanner(session: Session, clamd_configured: bool, *, now: datetime | None = None) -> Scanner:
    """Off when clamd is not configured; failing when recent mail carries ``CLAM_TEMPFAIL`` (one query)."""
    if not clamd_configured:
        return Scanner(False, "MAILWARD_CLAMD is not set: no mail is scanned for viruses")
    now = now or utcnow()
    failed = int(session.scalar(
        select(func.count(func.distinct(Finding.message_id))).join(Message, Message.id == Finding.message_id)
        .where(Message.received_at >= now - SCANNER_WINDOW, Finding.symbol == SCANNER_TEMPFAIL)) or 0)
    if failed:
        minutes = int(SCANNER_WINDOW.total_seconds() // 60)
        return Scanner(False, f"clamd did not answer for {failed} mail(s) in the last {minutes} minutes", failed)
    return Scanner(True)


def processes(session: Session, *, now: datetime | None = None) -> Processes:
    states = heartbeat.cluster(session, now=now)
    up_kinds = {p.kind for p in states if p.up}
    return Processes(down=[p for p in states if not p.up], up=sum(p.up for p in states),
                     missing=[k for k in REQUIRED_KINDS if k not in up_kinds])


def unverified(session: Session, *, limit: int = FLAG_LIMIT) -> Flagged:
    """Tenants with domains that receive no mail yet: ownership not proved and not vouched for by the MSP."""
    pending = and_(Domain.verified.is_(False), Domain.vouched.is_(False))
    n = func.count(Domain.id)
    rows = session.execute(select(Tenant.id, Tenant.name, n).join(Domain, Domain.tenant_id == Tenant.id)
                           .where(pending).group_by(Tenant.id, Tenant.name).order_by(Tenant.name).limit(limit))
    total = session.scalar(select(func.count(func.distinct(Domain.tenant_id))).where(pending)) or 0
    return Flagged([FlaggedTenant(int(i), str(name), int(c)) for i, name, c in rows], int(total))


def dns_failing(session: Session, cfg: Config, redis: Any, *, limit: int = FLAG_LIMIT) -> Flagged:
    """Tenants whose domains' cached DNS checklists (:mod:`tenants.dnscache`, filled by the worker) have an item
    missing or wrong. Reads only the cache, never DNS: one query for the domains, one Redis MGET per
    :data:`CACHE_BATCH` domains (never a query per domain); a result checked for another host name, or none yet,
    is not counted."""
    rows = list(session.execute(select(Domain, Tenant.name).join(Tenant, Tenant.id == Domain.tenant_id)
                                .order_by(Tenant.name, Tenant.id, Domain.name)))
    failing: dict[int, tuple[str, int, set[str]]] = {}
    try:
        for start in range(0, len(rows), CACHE_BATCH):
            chunk = rows[start:start + CACHE_BATCH]
            found = dnscache.read_many(redis, [d for d, _ in chunk])
            for d, tenant_name in chunk:
                cached = found.get(d.id)
                if cached is None or cached.hostname != cfg.hostname:  # checked for another gateway name
                    continue
                bad = {i.name for i in cached.items if i.name != OWNERSHIP_ITEM and i.state in FAILING_STATES}
                if bad:
                    name, n, items = failing.get(d.tenant_id, (str(tenant_name), 0, set()))
                    failing[d.tenant_id] = (name, n + 1, items | bad)
    except (RedisError, OSError) as exc:
        return Flagged([], 0, f"the DNS check results cannot be read right now ({type(exc).__name__})")
    flagged = [FlaggedTenant(tid, name, n, ", ".join(sorted(items))) for tid, (name, n, items) in failing.items()]
    return Flagged(flagged[:limit], len(flagged))


@dataclass(frozen=True)
class Dashboard:
    now: datetime
    mail: MailWindow
    queue: QueueState
    processes: Processes
    scanner: Scanner
    unverified: Flagged
    dns: Flagged
    tenants: int
    suspended: int
    #: Problems in words, for the summary line; empty: all is well.
    problems: list[str] = field(default_factory=list)


def build(session: Session, cfg: Config, redis: Any, *, now: datetime | None = None) -> Dashboard:
    """Every figure of the dashboard, in a fixed number of queries whatever the number of tenants (``redis``: the
    client the cached DNS checklists are read with)."""
    if not current_scope().is_msp:
        raise PermissionError("the dashboard spans every tenant: it needs the MSP scope")
    now = now or utcnow()
    by_status, oldest, held = queue_state(session)
    queue = QueueState({s.value: by_status.get(s.value, 0) for s in QUEUE_STATUSES}, oldest, held, now)
    procs = processes(session, now=now)
    scan = scanner(session, cfg.clamd is not None, now=now)
    flagged = unverified(session)
    dns = dns_failing(session, cfg, redis)
    tenants, suspended = session.execute(
        select(func.count(Tenant.id), func.coalesce(func.sum(case((Tenant.suspended.is_(True), 1), else_=0)), 0))
    ).one()
    problems = []
    if procs.down or procs.missing:
        problems.append("processes down")
    if not scan.on:
        problems.append("virus scanning off")
    if flagged.total:
        problems.append("domains not verified")
    if dns.total or dns.error:
        problems.append("DNS checks failing")
    return Dashboard(now, mail_window(session, now=now), queue, procs, scan, flagged, dns, int(tenants),
                     int(suspended), problems)


def duration(delta: timedelta | None) -> str:
    """A short human age: ``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``."""
    if delta is None:
        return ""
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


# --- the tenant list ------------------------------------------------------------------------------------------------

#: Sort keys of the tenant list (``?sort=``) and their titles.
SORTS: dict[str, str] = {"name": "Tenant", "created": "Created", "domains": "Domains", "mail": "Mail 24 h",
                         "status": "Status"}
#: The direction a column sorts in when first chosen (counts and dates: largest, newest first).
DEFAULT_DIRS: dict[str, str] = {"name": "asc", "created": "desc", "domains": "desc", "mail": "desc",
                                "status": "desc"}


@dataclass(frozen=True)
class TenantRow:
    id: int
    name: str
    suspended: bool
    created_at: datetime
    domains: int
    mail: int

    @property
    def status(self) -> str:
        return "suspended" if self.suspended else "active"


@dataclass(frozen=True)
class ListArgs:
    """A validated request for one page of the tenant list."""

    q: str = ""
    sort: str = "name"
    dir: str = "asc"
    page: int = 1


@dataclass(frozen=True)
class TenantPage:
    args: ListArgs
    rows: list[TenantRow]
    total: int
    page: int
    pages: int
    per_page: int

    @property
    def first(self) -> int:
        """1-based position of the first row shown (0 when none)."""
        return (self.page - 1) * self.per_page + 1 if self.rows else 0

    @property
    def last(self) -> int:
        return (self.page - 1) * self.per_page + len(self.rows)


def list_args(q: str | None = None, sort: str | None = None, direction: str | None = None,
              page: str | None = None) -> ListArgs:
    """Validate the list's query arguments (as strings from a URL); unknown values raise :class:`ValidationError`."""
    text = (q or "").strip()
    if len(text) > MAX_QUERY:
        raise ValidationError(f"search text: at most {MAX_QUERY} characters")
    key = (sort or "name").strip()
    if key not in SORTS:
        raise ValidationError(f"sort {key!r}: use one of {', '.join(SORTS)}")
    how = (direction or DEFAULT_DIRS[key]).strip()
    if how not in ("asc", "desc"):
        raise ValidationError(f"direction {how!r}: use asc or desc")
    raw = (page or "1").strip()
    if not raw.isdigit() or int(raw) < 1:
        raise ValidationError(f"page {raw!r}: a page number from 1")
    return ListArgs(text, key, how, int(raw))


def _like(text: str) -> str:
    return "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def tenant_page(session: Session, args: ListArgs, *, per_page: int = PAGE_SIZE,
                now: datetime | None = None) -> TenantPage:
    """One page of tenants matching ``args.q`` (a substring of the tenant's name or of one of its domains), sorted
    and counted in SQL: three queries (count, page, nothing per tenant)."""
    if not current_scope().is_msp:
        raise PermissionError("the tenant list spans every tenant: it needs the MSP scope")
    now = now or utcnow()
    match: ColumnElement[bool] = true()
    if args.q:
        pattern = _like(args.q)
        match = or_(func.lower(Tenant.name).like(pattern, escape="\\"),
                    exists().where(Domain.tenant_id == Tenant.id, Domain.name.like(pattern, escape="\\")))
    total = int(session.scalar(select(func.count(Tenant.id)).where(match)) or 0)
    pages = max(1, math.ceil(total / per_page))
    page = min(args.page, pages)
    domains = (select(Domain.tenant_id, func.count(Domain.id).label("n")).group_by(Domain.tenant_id)).subquery()
    mail = _mail_by_tenant(session, now).subquery()
    n_domains = func.coalesce(domains.c.n, 0)
    n_mail = func.coalesce(mail.c.mails, 0)
    keys: dict[str, Any] = {"name": func.lower(Tenant.name), "created": Tenant.created_at, "domains": n_domains,
                            "mail": n_mail, "status": Tenant.suspended}
    key = keys[args.sort]
    order = [key.desc() if args.dir == "desc" else key.asc()]
    if args.sort != "name":
        order.append(func.lower(Tenant.name).asc())
    order.append(Tenant.id.asc())
    stmt = (select(Tenant.id, Tenant.name, Tenant.suspended, Tenant.created_at, n_domains, n_mail)
            .outerjoin(domains, domains.c.tenant_id == Tenant.id).outerjoin(mail, mail.c.tenant_id == Tenant.id)
            .where(match).order_by(*order).limit(per_page).offset((page - 1) * per_page))
    rows = [TenantRow(int(i), str(name), bool(susp), created, int(nd), int(nm))
            for i, name, susp, created, nd, nm in session.execute(stmt)]
    return TenantPage(args, rows, total, page, pages, per_page)


def domains_of(session: Session, tenant_ids: list[int]) -> dict[int, list[Domain]]:
    """The domains of the tenants on one page, by tenant, by name: one query."""
    out: dict[int, list[Domain]] = {i: [] for i in tenant_ids}
    if tenant_ids:
        for d in session.scalars(select(Domain).where(Domain.tenant_id.in_(tenant_ids)).order_by(Domain.name)):
            out[d.tenant_id].append(d)
    return out

