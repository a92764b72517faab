"""A tenant's lifecycle after creation: suspend, resume, export everything it owns, delete everything it owns.

Suspended means: its domains are unknown at RCPT and its relay networks and SMTP logins are refused
(:mod:`tenants.policy`, :mod:`tenants.relay`), its users cannot sign in and its API keys get 403 (the web layer),
digests skip it (:mod:`worker.digest`); mail accepted before still delivers. Deleting is for a suspended tenant whose
data was exported after the suspension: the audit log holds both facts (actions :data:`SUSPEND_ACTION` and
:data:`EXPORT_ACTION`, recorded by the caller of :func:`suspend` and :func:`export`), so nothing is deleted that no one
could take away first. The caller owns the session, records the audit entries, commits, and bumps the policy version.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import IO, Any

from sqlalchemy import delete as sa_delete
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Mapper, Session

from tenants import stats
from tenants.blobs import blob_store
from tenants.exceptions import NotFound, ValidationError
from tenants.models import (
    PENDING_STATUSES,
    ApiKey,
    AuditEntry,
    Base,
    BayesCorpus,
    BayesToken,
    Blob,
    Delivery,
    DkimKey,
    Domain,
    Event,
    Finding,
    ListEntry,
    Message,
    MessageView,
    PolicySettings,
    RelayNetwork,
    SmtpCredential,
    StatHour,
    StatTop,
    Tenant,
    UsageMonth,
    User,
    UserAddress,
    utcnow,
)
from tenants.platform.config import Config
from tenants.scope import tenant_scope
from tenants.stats import Usage

#: Audit actions this module's rules read: a delete needs an export newer than the latest suspension.
SUSPEND_ACTION = "tenant.suspend"
RESUME_ACTION = "tenant.resume"
EXPORT_ACTION = "tenant.export"
DELETE_ACTION = "tenant.delete"
#: Version of the export's layout, written to its manifest (bump it when a file changes shape).
EXPORT_FORMAT = 1
#: Rows (or raw mails) read per round trip while exporting or deleting: bounds memory whatever the tenant's size.
BATCH = 500
#: Columns an export never contains: password and key hashes, encrypted secrets (TOTP, DKIM private keys, LDAP
#: passwords) by the naming rule of the models, and the raw mail column (it goes as ``messages/<id>.eml``).
SECRET_SUFFIXES = ("_hash", "_enc")
EXCLUDED_COLUMNS: dict[type, frozenset[str]] = {Blob: frozenset({"data"})}
#: JSON Lines files of the export: file name → model (one line per row; these grow with the mail).
JSONL_FILES: dict[str, type] = {
    "messages.jsonl": Message, "deliveries.jsonl": Delivery, "findings.jsonl": Finding, "events.jsonl": Event,
    "message_views.jsonl": MessageView, "audit.jsonl": AuditEntry, "stat_hours.jsonl": StatHour,
    "stat_tops.jsonl": StatTop, "usage_months.jsonl": UsageMonth, "bayes_tokens.jsonl": BayesToken,
}
#: Sections of ``tenant.json`` for the configuration tables; any other tenant table is a section named after itself.
SETTINGS_SECTIONS: dict[type, str] = {
    Domain: "domains", User: "users", UserAddress: "user_addresses", PolicySettings: "policy_settings",
    ListEntry: "lists", RelayNetwork: "relay_networks", SmtpCredential: "smtp_credentials", DkimKey: "dkim_keys",
    ApiKey: "api_keys", BayesCorpus: "bayes_corpus",
}
#: Tables the export leaves out: the raw mail is written as files instead of rows.
NOT_EXPORTED: frozenset[type] = frozenset({Blob})


# --- suspend and resume -------------------------------------------------------------------------------------------

def suspend(session: Session, tenant: Tenant) -> bool:
    """Suspend ``tenant``; False when it already was. The caller audits :data:`SUSPEND_ACTION` and commits."""
    if tenant.suspended:
        return False
    tenant.suspended = True
    session.flush()
    return True


def resume(session: Session, tenant: Tenant) -> bool:
    """Lift a suspension; False when the tenant was not suspended. The caller audits :data:`RESUME_ACTION`."""
    if not tenant.suspended:
        return False
    tenant.suspended = False
    session.flush()
    return True


# --- export -------------------------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """A column value as JSON: times in ISO 8601, everything else as it is."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        raise TypeError("binary columns are not exported as JSON")
    return value


def _columns(model: type) -> list[Any]:
    """The mapped columns of ``model`` an export may show (never a secret: see :data:`SECRET_SUFFIXES`)."""
    hidden = EXCLUDED_COLUMNS.get(model, frozenset())
    mapper: Mapper[Any] = inspect(model)
    return [getattr(model, a.key) for a in mapper.column_attrs
            if a.key not in hidden and not a.key.endswith(SECRET_SUFFIXES)]


def _rows(session: Session, model: type, tenant_id: int) -> Iterator[dict[str, Any]]:
    """Every row of one tenant-owned table as a dict, streamed in batches (plain rows: nothing in the identity map)."""
    mapper: Mapper[Any] = inspect(model)
    pk = [getattr(model, str(c.key)) for c in mapper.primary_key]
    stmt = (select(*_columns(model)).where(model.tenant_id == tenant_id)  # type: ignore[attr-defined]
            .order_by(*pk).execution_options(yield_per=BATCH))
    for row in session.execute(stmt):
        out = {k: _plain(v) for k, v in row._mapping.items()}
        if model is PolicySettings and isinstance(out.get("settings"), str):
            out["settings"] = json.loads(out["settings"] or "{}")
        yield out


def message_ids(session: Session, tenant_id: int, batch: int = BATCH) -> Iterator[list[str]]:
    """The tenant's message ids in batches, by keyset (``id > last``): no OFFSET, no cursor held open."""
    last = ""
    while True:
        ids = list(session.scalars(select(Message.id).where(Message.tenant_id == tenant_id, Message.id > last)
                                   .order_by(Message.id).limit(batch)))
        if not ids:
            return
        yield ids
        last = ids[-1]


def settings_models() -> list[type]:
    """The tenant tables ``tenant.json`` holds: every one not written as JSON Lines or files (new tables included)."""
    rest = [m for m in tenant_tables() if m not in JSONL_FILES.values() and m not in NOT_EXPORTED]
    known = [m for m in SETTINGS_SECTIONS if m in rest]
    return known + sorted((m for m in rest if m not in SETTINGS_SECTIONS), key=lambda m: m.__name__)


class _Hashing:
    """A write-only file that passes bytes on and keeps their SHA-256 and count (for the manifest)."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.target.write(data)


@dataclass
class ExportReport:
    """What an export wrote: rows per table (or file), and each file's SHA-256 and size."""

    counts: dict[str, int] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Messages whose raw mail was gone (purged while the export ran).
    missing_raw: list[str] = field(default_factory=list)


def export(session: Session, cfg: Config, tenant: Tenant, fileobj: IO[bytes]) -> ExportReport:
    """Write everything ``tenant`` owns as a ZIP to ``fileobj``: ``tenant.json`` (settings), JSON Lines per table,
    ``messages/<id>.eml`` (raw mail), and ``manifest.json`` (counts and a SHA-256 per file).

    Memory stays bounded: rows are streamed in batches and each mail is read and written on its own. No secret is
    written (see :data:`SECRET_SUFFIXES`). The caller audits :data:`EXPORT_ACTION` (a delete looks for it).
    """
    del cfg  # the blob store is the module's; the argument keeps the signature of an object-store backed export
    report = ExportReport()
    with tenant_scope(tenant.id), zipfile.ZipFile(fileobj, "w", compression=zipfile.ZIP_DEFLATED) as zf:

        def write(name: str, chunks: Iterator[bytes]) -> None:
            with zf.open(name, "w", force_zip64=True) as raw:
                out = _Hashing(raw)  # type: ignore[arg-type]
                for chunk in chunks:
                    out.write(chunk)
            report.files[name] = {"sha256": out.sha.hexdigest(), "bytes": out.size}

        settings: dict[str, Any] = {"tenant": {c.key: _plain(getattr(tenant, c.key))
                                               for c in inspect(Tenant).column_attrs}}
        for model in settings_models():
            key = SETTINGS_SECTIONS.get(model) or model.__tablename__  # type: ignore[attr-defined]
            settings[key] = list(_rows(session, model, tenant.id))
            report.counts[key] = len(settings[key])
        write("tenant.json", iter([json.dumps(settings, indent=2, ensure_ascii=False).encode()]))

        for name, model in JSONL_FILES.items():
            key = name.removesuffix(".jsonl")
            report.counts[key] = 0

            def lines(model: type = model, key: str = key) -> Iterator[bytes]:
                for row in _rows(session, model, tenant.id):
                    report.counts[key] += 1
                    yield json.dumps(row, ensure_ascii=False).encode() + b"\n"

            write(name, lines())

        report.counts["raw_messages"] = report.counts["refused_not_kept"] = 0
        for ids in message_ids(session, tenant.id):
            refused = set(session.scalars(select(Message.id).where(Message.id.in_(ids), Message.verdict == "reject")))
            for mid in ids:
                try:
                    data = blob_store.get(session, mid)
                except NotFound:
                    if mid in refused:  # refused mail is never stored: nothing is missing
                        report.counts["refused_not_kept"] += 1
                    else:
                        report.missing_raw.append(mid)
                    continue
                write(f"messages/{mid}.eml", iter([data]))
                report.counts["raw_messages"] += 1

        manifest = {"format": EXPORT_FORMAT, "tenant_id": tenant.id, "tenant": tenant.name,
                    "created_at": utcnow().isoformat(), "counts": report.counts, "files": report.files,
                    "missing_raw": report.missing_raw}
        zf.writestr("manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))
    return report


# --- delete -------------------------------------------------------------------------------------------------------

def _last_audit_id(session: Session, tenant_id: int, action: str) -> int | None:
    with tenant_scope(tenant_id):
        return session.scalar(select(func.max(AuditEntry.id)).where(AuditEntry.tenant_id == tenant_id,
                                                                    AuditEntry.action == action))


def check_deletable(session: Session, tenant: Tenant) -> None:
    """Raise :class:`ValidationError` saying what to do first, unless ``tenant`` is suspended and was exported
    after its latest suspension (both read from the audit log)."""
    suspended_at = _last_audit_id(session, tenant.id, SUSPEND_ACTION)
    if not tenant.suspended or suspended_at is None:
        raise ValidationError(f"tenant {tenant.name} is not suspended: suspend it, download an export, then delete it")
    exported_at = _last_audit_id(session, tenant.id, EXPORT_ACTION)
    if exported_at is None or exported_at < suspended_at:
        raise ValidationError(f"tenant {tenant.name} has no export made since it was suspended: "
                              "download an export first, then delete it")


def is_deletable(session: Session, tenant: Tenant) -> bool:
    try:
        check_deletable(session, tenant)
    except ValidationError:
        return False
    return True


@dataclass(frozen=True)
class Pending:
    """What a delete would take that is still in motion: messages, and deliveries not yet final."""

    messages: int
    queued_deliveries: int


def pending(session: Session, tenant: Tenant) -> Pending:
    with tenant_scope(tenant.id):
        messages = session.scalar(select(func.count()).select_from(Message)
                                  .where(Message.tenant_id == tenant.id)) or 0
        queued = session.scalar(select(func.count()).select_from(Delivery).where(
            Delivery.tenant_id == tenant.id, Delivery.status.in_([s.value for s in PENDING_STATUSES]))) or 0
    return Pending(int(messages), int(queued))


@dataclass(frozen=True)
class Overview:
    """One tenant at a glance, for the console's tenant page and the API: domains, this month's usage, what it holds,
    and whether it may be deleted now."""

    domains: list[Domain]
    month: str
    usage: Usage | None
    pending: Pending
    deletable: bool


def overview(session: Session, tenant: Tenant) -> Overview:
    with tenant_scope(tenant.id):
        domains = list(session.scalars(select(Domain).where(Domain.tenant_id == tenant.id).order_by(Domain.name)))
    month = utcnow().strftime("%Y-%m")
    usage = stats.usage(session, first=month, last=month, tenant_id=tenant.id)
    return Overview(domains, month, usage[0] if usage else None, pending(session, tenant),
                    is_deletable(session, tenant))


def tenant_tables() -> list[type]:
    """Every mapped model with a ``tenant_id`` (tenant-scoped or not, such as spent tokens), children first."""
    by_table = {m.local_table: m.class_ for m in Base.registry.mappers}
    out = []
    for table in reversed(Base.metadata.sorted_tables):
        cls = by_table.get(table)
        if cls is not None and "tenant_id" in table.c:
            out.append(cls)
    return out


def delete(session: Session, cfg: Config, tenant: Tenant) -> dict[str, int]:
    """Remove everything ``tenant`` owns, then the tenant: rows of every tenant table, children first, explicitly
    (SQLite may not enforce the foreign keys' cascades), and its raw mail through the blob store.

    Refused (:class:`ValidationError`) unless it is suspended and exported since (:func:`check_deletable`).
    Returns rows removed per table. The caller audits :data:`DELETE_ACTION` (at MSP level: the tenant is gone).
    """
    del cfg
    check_deletable(session, tenant)
    counts: dict[str, int] = {}
    tid = tenant.id
    with tenant_scope(tid):  # every statement below is limited to this tenant by the data layer as well
        # Raw mail through the store's interface (an object store would not see the table deletes below).
        counts["blob"] = sum(blob_store.delete(session, ids) for ids in message_ids(session, tid))
        for model in tenant_tables():
            done = session.execute(sa_delete(model).where(model.tenant_id == tid)  # type: ignore[attr-defined]
                                   .execution_options(synchronize_session=False))
            name = model.__tablename__  # type: ignore[attr-defined]
            counts[name] = counts.get(name, 0) + int(done.rowcount)  # type: ignore[attr-defined]
    done = session.execute(sa_delete(Tenant).where(Tenant.id == tid).execution_options(synchronize_session=False))
    counts["tenant"] = int(done.rowcount)  # type: ignore[attr-defined]
    session.expunge(tenant)  # gone from the database; its loaded values stay readable for the caller's messages
    return counts
