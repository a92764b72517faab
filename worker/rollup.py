"""Statistics roll-up: turn raw messages into the small tables the statistics pages read (StatHour, StatTop,
UsageMonth), so no page ever scans the message table.

Each run reads from the watermark (``RollupState`` "stats") up to now minus a safety lag (a transaction that took
``received_at`` a moment before it committed is still caught), and **recomputes** every affected day from the raw
rows: it deletes that day's stat rows and writes them again, in one transaction per tenant. Re-running over the same
window therefore never double counts; the counters derive from what the ingress decided at receipt (verdict,
quarantine kind, size), which never changes afterwards.

What is counted: a message counts once, under one domain: for inbound mail its first recipient's domain, for
outbound mail and bounces the sender's domain. ``delivered`` means passed clean (verdict deliver), ``tagged`` passed
with a spam tag, ``spam``/``virus``/``attachment`` quarantined for that reason, ``rejected`` refused for this tenant
(at RCPT, one message per refused recipient; at DATA; or rejected by this tenant while another accepted).
Top lists per day: senders, spam sources (client IP, else the sender's domain), virus names (the CLAM_VIRUS
finding's reason) and reject reasons (:func:`tenants.tracking.reject_reason`: "recipient unknown", "spam", "DNSBL
<zone>"...) keep the :data:`TOP_KEEP` largest; inbound recipients are kept whole, because usage metering counts the
distinct protected mailboxes of a month from them. Refused recipients are not mailboxes, and refused mail is not
billed: a dictionary attack on a tenant must not grow its bill.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from tenants.models import (
    Delivery,
    DeliveryStatus,
    Finding,
    Message,
    RollupState,
    StatHour,
    StatTop,
    Tenant,
    UsageMonth,
    utcnow,
)
from tenants.platform.config import Config, get_config
from tenants.platform.db import session_scope
from tenants.platform.jobs import enqueue_once
from tenants.platform.redisconn import redis_client
from tenants.scope import msp_scope, tenant_scope
from tenants.tracking import reject_reason

log = logging.getLogger(__name__)

#: Name of the watermark row in ``rollup_state``.
STATE_NAME = "stats"
#: Seconds between roll-ups (the scheduler queues one job per interval).
ROLLUP_INTERVAL = 300
#: Mail younger than this is left for the next run: its transaction may not have committed yet.
SAFETY_LAG = timedelta(minutes=2)
#: Seconds one roll-up job may run.
ROLLUP_JOB_TIMEOUT = 1800
#: The RQ job the scheduler queues.
ROLLUP_JOB = "worker.rollup.rollup_job"
#: Entries kept per day and kind in the top lists (recipients excepted: see the module docstring).
TOP_KEEP = 100
#: Longest key a top list stores (the column's width).
KEY_MAX = 320
#: Rows read from the database per round trip.
FETCH_BATCH = 2000
#: Kinds of StatTop rows.
TOP_SENDER, TOP_RCPT, TOP_SPAM_SOURCE, TOP_VIRUS, TOP_REJECT = "sender", "rcpt", "spam_source", "virus", "reject_reason"
TOP_KINDS: tuple[str, ...] = (TOP_SENDER, TOP_RCPT, TOP_SPAM_SOURCE, TOP_VIRUS, TOP_REJECT)
#: The finding whose reason names the virus.
VIRUS_SYMBOL = "CLAM_VIRUS"
#: Domain of a message with no recipient row and no sender (a fully rejected or discarded mail, a bounce from <>).
NO_DOMAIN = "-"

_QUEUED_KEY = "mailward:rollup-queued"
_RUNNING_KEY = "mailward:rollup-running"


@dataclass
class Counters:
    mails: int = 0
    bytes: int = 0
    delivered: int = 0
    tagged: int = 0
    spam: int = 0
    virus: int = 0
    attachment: int = 0
    rejected: int = 0

    def add(self, size: int, verdict: str, kind: str | None) -> None:
        self.mails += 1
        self.bytes += size
        if verdict == "deliver":
            self.delivered += 1
        elif verdict == "tag":
            self.tagged += 1
        elif verdict == "reject":
            self.rejected += 1
        elif verdict == "quarantine" and kind in ("spam", "virus", "attachment"):
            setattr(self, kind, getattr(self, kind) + 1)


@dataclass
class TenantRollup:
    """What one run computed for one tenant."""

    hours: dict[tuple[datetime, str, str], Counters] = field(default_factory=lambda: defaultdict(Counters))
    tops: dict[tuple[datetime, str], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    messages: int = 0


def floor_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def floor_day(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def month_of(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m")


def _domain(address: str | None) -> str:
    if not address or "@" not in address:
        return NO_DOMAIN
    return address.rsplit("@", 1)[1].strip().strip(">").lower()[:253] or NO_DOMAIN


def _key(text: str) -> str:
    return text.strip()[:KEY_MAX]


def _compute(session: Session, since: datetime) -> TenantRollup:
    """Counters and top lists of the current tenant's mail received since ``since`` (a day boundary)."""
    out = TenantRollup()
    first_rcpt: dict[str, str] = {}
    day_rcpts: dict[str, list[str]] = defaultdict(list)
    rows = session.execute(select(Delivery.message_id, Delivery.rcpt, Delivery.status)
                           .join(Message, Message.id == Delivery.message_id)
                           .where(Message.received_at >= since).order_by(Delivery.id)
                           .execution_options(yield_per=FETCH_BATCH))
    for message_id, rcpt, status in rows:
        first_rcpt.setdefault(message_id, rcpt)
        if status != DeliveryStatus.REJECTED.value:  # a refused address is no protected mailbox
            day_rcpts[message_id].append(rcpt)
    viruses: dict[str, list[str]] = defaultdict(list)
    for message_id, reason in session.execute(
            select(Finding.message_id, Finding.reason).join(Message, Message.id == Finding.message_id)
            .where(Message.received_at >= since, Finding.symbol == VIRUS_SYMBOL)):
        viruses[message_id].append(reason)
    msgs = session.execute(
        select(Message.id, Message.received_at, Message.direction, Message.size, Message.verdict,
               Message.quarantine_kind, Message.mail_from, Message.client_ip, Message.explanation)
        .where(Message.received_at >= since).execution_options(yield_per=FETCH_BATCH))
    for mid, at, direction, size, verdict, kind, mail_from, client_ip, explanation in msgs:
        out.messages += 1
        domain = _domain(first_rcpt.get(mid)) if direction == "inbound" else _domain(mail_from)
        out.hours[(floor_hour(at), direction, domain)].add(int(size), verdict, kind)
        day = floor_day(at)
        if mail_from:
            out.tops[(day, TOP_SENDER)][_key(mail_from.lower())] += 1
        if direction == "inbound":
            for rcpt in dict.fromkeys(r.lower() for r in day_rcpts.get(mid, [])):
                out.tops[(day, TOP_RCPT)][_key(rcpt)] += 1
        why = reject_reason(explanation or "", virus=mid in viruses) if verdict == "reject" else None
        # A rejected mail is a spam source when it was spam, or its client is on a DNSBL (not an unknown recipient).
        spammy = why is not None and (why == "spam" or why.startswith("DNSBL"))
        if (kind == "spam" or verdict == "tag" or spammy) and mid not in viruses:
            source = client_ip or _domain(mail_from)
            out.tops[(day, TOP_SPAM_SOURCE)][_key(source)] += 1
        for name in viruses.get(mid, []):
            out.tops[(day, TOP_VIRUS)][_key(name or "unnamed")] += 1
        if why is not None:
            out.tops[(day, TOP_REJECT)][_key(why)] += 1
    return out


def _write(session: Session, tenant_id: int, since: datetime, data: TenantRollup) -> None:
    """Replace the tenant's stat rows from ``since`` on with ``data`` (the caller's transaction)."""
    session.execute(delete(StatHour).where(StatHour.hour >= since).execution_options(synchronize_session=False))
    session.execute(delete(StatTop).where(StatTop.day >= since).execution_options(synchronize_session=False))
    for (hour, direction, domain), c in data.hours.items():
        session.add(StatHour(tenant_id=tenant_id, hour=hour, direction=direction, domain=domain, mails=c.mails,
                             bytes=c.bytes, delivered=c.delivered, tagged=c.tagged, spam=c.spam, virus=c.virus,
                             attachment=c.attachment, rejected=c.rejected))
    for (day, kind), counts in data.tops.items():
        keep = counts.items() if kind == TOP_RCPT else counts.most_common(TOP_KEEP)
        for key, n in keep:
            session.add(StatTop(tenant_id=tenant_id, day=day, kind=kind, key=key, count=n))
    session.flush()


def _month_start(month: str) -> datetime:
    year, mon = (int(p) for p in month.split("-"))
    return datetime(year, mon, 1, tzinfo=UTC)


def _next_month(start: datetime) -> datetime:
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def _usage(session: Session, tenant_id: int, months: list[str]) -> None:
    """Recompute the tenant's usage rows of ``months`` from the stat tables (never from raw mail). Refused mail is not
    billed (its bytes are: StatHour keeps no bytes per outcome, and a refusal at RCPT has none)."""
    for month in months:
        start = _month_start(month)
        end = _next_month(start)
        mails, size = session.execute(select(func.coalesce(func.sum(StatHour.mails - StatHour.rejected), 0),
                                             func.coalesce(func.sum(StatHour.bytes), 0))
                                      .where(StatHour.hour >= start, StatHour.hour < end)).one()
        boxes = session.scalar(select(func.count(func.distinct(StatTop.key)))
                               .where(StatTop.kind == TOP_RCPT, StatTop.day >= start, StatTop.day < end)) or 0
        session.execute(delete(UsageMonth).where(UsageMonth.month == month)
                        .execution_options(synchronize_session=False))
        if mails or boxes:
            session.add(UsageMonth(tenant_id=tenant_id, month=month, mails=int(mails), bytes=int(size),
                                   mailboxes=int(boxes)))


def _months_between(start: datetime, end: datetime) -> list[str]:
    months, at = [], _month_start(month_of(start))
    while at <= end:
        months.append(month_of(at))
        at = _next_month(at)
    return months


@dataclass(frozen=True)
class RollupReport:
    """What a run did: from which day it recomputed, up to which moment, and how many messages it read."""

    since: datetime | None
    until: datetime
    messages: int
    tenants: int


def rollup(cfg: Config, *, now: datetime | None = None, since: datetime | None = None) -> RollupReport:
    """Recompute the statistics of every day from the watermark's (or ``since``'s) day up to ``now`` minus the safety
    lag, tenant by tenant, then move the watermark. Safe to run again over the same window."""
    upto = (now or utcnow()) - SAFETY_LAG
    with msp_scope(), session_scope(cfg) as session:
        state = session.get(RollupState, STATE_NAME)
        start = since or (state.until if state is not None else None)
        if start is None:
            start = session.scalar(select(func.min(Message.received_at)))
        tenant_ids = list(session.scalars(select(Tenant.id).order_by(Tenant.id)))
    if start is None:  # no mail at all yet
        _save_watermark(cfg, upto)
        return RollupReport(None, upto, 0, 0)
    day0 = floor_day(min(start, upto))
    months = _months_between(day0, upto)
    total = 0
    for tenant_id in tenant_ids:
        with tenant_scope(tenant_id), session_scope(cfg) as session:
            data = _compute(session, day0)
            _write(session, tenant_id, day0, data)
            _usage(session, tenant_id, months)
            total += data.messages
    _save_watermark(cfg, upto)
    log.info("statistics rolled up from %s to %s: %d message(s) of %d tenant(s)", day0.isoformat(),
             upto.isoformat(), total, len(tenant_ids))
    return RollupReport(day0, upto, total, len(tenant_ids))


def _save_watermark(cfg: Config, upto: datetime) -> None:
    with session_scope(cfg) as session:
        state = session.get(RollupState, STATE_NAME)
        if state is None:
            session.add(RollupState(name=STATE_NAME, until=upto))
        elif state.until < upto:
            state.until = upto


def rollup_job() -> str:
    """The RQ job the scheduler queues; one run at a time (a Redis lock), a second one meanwhile does nothing."""
    cfg = get_config()
    conn = redis_client(cfg)
    if not conn.set(_RUNNING_KEY, 1, nx=True, ex=ROLLUP_JOB_TIMEOUT):
        return "another roll-up is running"
    try:
        report = rollup(cfg)
    finally:
        conn.delete(_RUNNING_KEY)
    return f"{report.messages} message(s) of {report.tenants} tenant(s) since {report.since}"


def enqueue_rollup(cfg: Config) -> bool:
    """Queue a roll-up job unless one was queued within the interval; True if queued now."""
    return enqueue_once(cfg, _QUEUED_KEY, max(1, ROLLUP_INTERVAL - 30), ROLLUP_JOB, timeout=ROLLUP_JOB_TIMEOUT,
                        result_ttl=3600, description="roll up statistics")
