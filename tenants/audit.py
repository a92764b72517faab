"""The audit log: who did what, and who looked at which mail.

Every admin action (tenants, domains, transports, lists, quarantine actions, branding, security settings, API keys)
and every envelope-level access (a quarantined mail's detail page, preview or raw download) is one
:class:`~tenants.models.AuditEntry`. Entries belong to the tenant they concern (the tenant's admins and auditors see
them) or to the MSP alone (``tenant_id`` None: MSP-wide settings). The tenant scope filters them like any tenant-owned
row, so a tenant never sees another's entries. ``acting_as`` names the tenant an MSP user was viewing as.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from tenants.exceptions import ValidationError
from tenants.models import AuditEntry

#: Column widths of :class:`AuditEntry` (longer values are cut, never refused: the log must not fail the action).
_WIDTH = {"actor": 320, "acting_as": 200, "action": 60, "target": 500, "ip": 45}
#: Most entries one CSV export holds (newest first).
EXPORT_LIMIT = 100_000
#: The CSV's columns.
CSV_COLUMNS = ("at", "tenant_id", "actor", "acting_as", "action", "target", "detail", "ip")


def _cut(field: str, value: str | None) -> str | None:
    return value[: _WIDTH[field]] if value is not None else None


def record(session: Session, *, actor: str, action: str, target: str = "", detail: str = "",
           tenant_id: int | None, ip: str | None = None, acting_as: str | None = None) -> AuditEntry:
    """Stage one entry in the caller's session (committed with the action it records, or not at all)."""
    entry = AuditEntry(tenant_id=tenant_id, actor=_cut("actor", actor) or "", action=_cut("action", action) or "",
                       target=_cut("target", target) or "", detail=detail, ip=_cut("ip", ip),
                       acting_as=_cut("acting_as", acting_as))
    session.add(entry)
    return entry


@dataclass(frozen=True)
class AuditFilter:
    """What the audit pages filter on; empty fields filter nothing. ``until`` is exclusive."""

    actor: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    tenant_id: int | None = None


def _query(f: AuditFilter) -> Select[AuditEntry]:
    stmt = select(AuditEntry)
    if f.actor:
        stmt = stmt.where(AuditEntry.actor.contains(f.actor.strip().lower(), autoescape=True))
    if f.action:
        stmt = stmt.where(AuditEntry.action.startswith(f.action.strip(), autoescape=True))
    if f.since:
        stmt = stmt.where(AuditEntry.at >= f.since)
    if f.until:
        stmt = stmt.where(AuditEntry.at < f.until)
    if f.tenant_id is not None:
        stmt = stmt.where(AuditEntry.tenant_id == f.tenant_id)
    return stmt.order_by(AuditEntry.id.desc())


def search(session: Session, f: AuditFilter, *, after: str | None = None,
           limit: int = 50) -> tuple[list[AuditEntry], str | None]:
    """A page of entries, newest first, and the cursor of the next page (None on the last).

    Keyset paging on the id (entries only ever get newer ids), so a page stays cheap however deep it is.
    """
    stmt = _query(f)
    if after:
        if not after.isdigit():
            raise ValidationError("bad page cursor")
        stmt = stmt.where(AuditEntry.id < int(after))
    rows = list(session.scalars(stmt.limit(limit + 1)))
    cursor = str(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], cursor


def export(session: Session, f: AuditFilter) -> Iterator[AuditEntry]:
    yield from session.scalars(_query(f).limit(EXPORT_LIMIT))


def _safe_cell(value: object) -> str:
    """A cell a spreadsheet shows as text: a leading = + - @ would run as a formula (CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_lines(entries: Iterable[AuditEntry]) -> Iterator[str]:
    """The CSV export, a line at a time (streamed to the browser)."""
    buf = io.StringIO()
    writer = csv.writer(buf)

    def flush() -> str:
        out = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        return out

    writer.writerow(CSV_COLUMNS)
    yield flush()
    for e in entries:
        writer.writerow([e.at.isoformat(), e.tenant_id if e.tenant_id is not None else ""]
                        + [_safe_cell(v) for v in (e.actor, e.acting_as, e.action, e.target, e.detail, e.ip)])
        yield flush()
