"""What a backup holds, as rows: which tables, how a row becomes a JSON line and back, and how rows go in again.

Every table of the models is configuration and goes into a backup unless it is named here as mail
(:data:`MAIL_TABLES`: only with ``--with-quarantine``, and then only mail still held in the quarantine) or as
something a running installation rebuilds or only logs (:data:`NOT_BACKED_UP`). A new table is therefore backed up
without anyone remembering to add it. Columns encrypted with the installation's secret (the ``_enc`` suffix: DKIM
private keys, TOTP secrets, LDAP bind passwords) travel decrypted inside the encrypted backup and are encrypted again
with the restoring installation's secret, so a backup opens on a new machine with a new ``MAILWARD_SECRET_KEY``.
Works in the MSP scope: Core statements on whole tables.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

from sqlalchemy import DateTime, LargeBinary, Table, delete, exists, func, insert, select
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

from tenants.dkimkeys import decrypt_private_key, encrypt_private_key
from tenants.models import Base, Delivery, DeliveryStatus, Message, Tenant
from tenants.platform.config import Config

#: Held mail and what hangs off it: in a backup only with ``--with-quarantine``.
MAIL_TABLES = ("message", "blob", "delivery", "finding", "event", "message_view")
#: Tables no backup holds, and why: processes announce themselves again; statistics and their roll-up watermark are
#: history rebuilt from new mail (an export of a tenant carries them); the audit log is a log (restoring writes an
#: entry of its own to it).
NOT_BACKED_UP = {
    "heartbeat": "processes announce themselves",
    "rollup_state": "roll-up watermark of the statistics",
    "stat_hour": "statistics", "stat_top": "statistics", "usage_month": "usage history",
    "audit_entry": "a log, not configuration",
}
#: Suffix of the columns encrypted with the installation's secret (see :mod:`tenants.dkimkeys`).
SECRET_SUFFIX = "_enc"
#: Rows read per round trip while dumping, and inserted per statement while restoring.
BATCH = 500


def config_tables() -> list[Table]:
    """The configuration tables, parents before children (foreign keys hold while restoring in this order)."""
    skip = set(MAIL_TABLES) | set(NOT_BACKED_UP)
    return [t for t in Base.metadata.sorted_tables if t.name not in skip]


def mail_tables() -> list[Table]:
    return [t for t in Base.metadata.sorted_tables if t.name in MAIL_TABLES]


def secret_columns(table: Table) -> list[str]:
    return [c.name for c in table.columns if c.name.endswith(SECRET_SUFFIX)]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def _line(table: Table, row: Any, cfg: Config) -> bytes:
    values = {k: _plain(v) for k, v in row._mapping.items()}
    for name in secret_columns(table):
        if values.get(name) is not None:
            values[name] = base64.b64encode(decrypt_private_key(cfg, values[name])).decode("ascii")
    return json.dumps({"t": table.name, "r": values}, separators=(",", ":")).encode() + b"\n"


def _ordered(table: Table) -> Any:
    return select(table).order_by(*table.primary_key.columns)


def dump_config(session: Session, cfg: Config) -> Iterator[bytes]:
    """Every row of every configuration table as JSON lines, table by table in restore order."""
    for table in config_tables():
        for row in session.execute(_ordered(table).execution_options(yield_per=BATCH)):
            yield _line(table, row, cfg)


def held_message_ids(session: Session) -> list[str]:
    """Ids of the mail still held in some quarantine (a recipient in state ``quarantined``)."""
    held = exists().where(Delivery.message_id == Message.id, Delivery.status == DeliveryStatus.QUARANTINED.value)
    return list(session.scalars(select(Message.id).where(held).order_by(Message.id)))


def dump_mail(session: Session, cfg: Config, ids: list[str]) -> Iterator[bytes]:
    """The held mail ``ids`` with its raw bytes, recipients, findings, timeline and views; a batch of messages at a
    time, each batch's messages before the rows that point at them."""
    for start in range(0, len(ids), BATCH):
        chunk = ids[start:start + BATCH]
        for table in mail_tables():
            column = table.c.id if table.name in ("message", "blob") else table.c.message_id
            for row in session.execute(_ordered(table).where(column.in_(chunk))):
                yield _line(table, row, cfg)


def manifest(session: Session, *, schema: str, with_quarantine: bool, held: int) -> dict[str, Any]:
    """The payload's first line: what follows, so a restore can check it fits this installation's schema."""
    tables = config_tables() + (mail_tables() if with_quarantine else [])
    return {"format": 1, "schema": schema, "with_quarantine": with_quarantine, "held_messages": held,
            "tenants": int(session.scalar(select(func.count()).select_from(Tenant)) or 0),
            "tables": {t.name: [c.name for c in t.columns] for t in tables},
            "secrets_decrypted": {t.name: secret_columns(t) for t in tables if secret_columns(t)}}


def check_fits(found: dict[str, Any]) -> None:
    """Refuse a payload with tables or columns this installation does not have (a backup of a newer Mailward);
    columns this installation added since take their defaults."""
    from tenants.backup_format import BackupError

    known = Base.metadata.tables
    for name, columns in found.get("tables", {}).items():
        if name not in known:
            raise BackupError(f"the backup has a table {name!r} this Mailward does not know (schema "
                              f"{found.get('schema')}): restore it with the version that made it")
        missing = sorted(set(columns) - {c.name for c in known[name].columns})
        if missing:
            raise BackupError(f"the backup's table {name} has columns this Mailward does not know "
                              f"({', '.join(missing)}; schema {found.get('schema')})")


def _value(column: Any, value: Any) -> Any:
    """A JSON value back as the column takes it: times from ISO 8601, bytes from base64."""
    if value is None:
        return None
    kind = column.type.impl if isinstance(column.type, TypeDecorator) else column.type
    if isinstance(kind, DateTime):
        return datetime.fromisoformat(value)
    if isinstance(kind, LargeBinary):
        return base64.b64decode(value)
    return value


class Loader:
    """Inserts the rows of a payload, in its order, in batches per table, ids as they were."""

    def __init__(self, session: Session, cfg: Config, secrets: dict[str, list[str]]) -> None:
        self.session, self.cfg, self.secrets = session, cfg, secrets
        self.counts: dict[str, int] = {}
        self._table: Table | None = None
        self._rows: list[dict[str, Any]] = []

    def add(self, table_name: str, row: dict[str, Any]) -> None:
        table = Base.metadata.tables[table_name]
        if table is not self._table or len(self._rows) >= BATCH:
            self.flush()
            self._table = table
        for name in self.secrets.get(table_name, ()):
            if row.get(name) is not None:
                row[name] = encrypt_private_key(self.cfg, base64.b64decode(row[name]))
        self._rows.append({k: _value(table.c[k], v) for k, v in row.items()})

    def flush(self) -> None:
        if self._table is not None and self._rows:
            self.session.execute(insert(self._table), self._rows)
            self.counts[self._table.name] = self.counts.get(self._table.name, 0) + len(self._rows)
        self._rows = []


def clear_msp_rows(session: Session) -> dict[str, int]:
    """Empty the configuration tables of an installation without tenants (what is left is MSP-level: the first
    admin ``make run`` created, the baseline policy...), children first; returns the rows removed per table."""
    removed = {}
    for table in reversed(config_tables()):
        done = session.execute(delete(table))
        if done.rowcount:  # type: ignore[attr-defined]
            removed[table.name] = int(done.rowcount)  # type: ignore[attr-defined]
    return removed


def reset_sequences(session: Session, tables: list[str]) -> None:
    """On PostgreSQL, move each restored table's id sequence past the ids it now holds (SQLite needs nothing)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for name in tables:
        pk = list(Base.metadata.tables[name].primary_key.columns)
        if len(pk) != 1 or pk[0].type.python_type is not int:
            continue
        col, highest = pk[0], func.max(pk[0])
        # setval is strict: for a table without a sequence (NULL) it does nothing.
        session.execute(select(func.setval(func.pg_get_serial_sequence(name, col.name), func.coalesce(highest, 1),
                                           highest.is_not(None))))
