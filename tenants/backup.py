"""Encrypted backup and restore of an installation's configuration (and, when asked, its held mail).

:func:`create` writes one backup file (layout and encryption: :mod:`tenants.backup_format`; what it holds:
:mod:`tenants.backup_data`) from one consistent snapshot of the database, under a temporary name until complete.
:func:`restore` opens a backup onto an *empty* installation (no tenants): it first reads the whole file and checks
every tag, so a wrong key or a damaged file changes nothing; then, in one transaction, it replaces what MSP-level
rows a fresh installation has (the first admin) with the backup's rows, ids as they were, and moves PostgreSQL's
sequences past them. Each backup may have a status file beside it (``NAME.json``: when, how big, how many tenants,
ok or the error), which :func:`list_backups` and the console read. Key files are never written beside a backup.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tenants import audit
from tenants.backup_data import (
    Loader,
    check_fits,
    clear_msp_rows,
    dump_config,
    dump_mail,
    held_message_ids,
    manifest,
    reset_sequences,
)
from tenants.backup_format import BackupError, Header, decrypt_chunks, key_id, read_header, verify, write_backup
from tenants.models import Tenant, utcnow
from tenants.platform.config import Config
from tenants.platform.db import PRIVATE_FILE_MODE, require_current_schema, schema_revisions, session_scope
from tenants.scope import msp_scope

#: File name suffix of a backup, and of the status file beside it (``NAME.mwbak.json``).
SUFFIX = ".mwbak"
STATUS_SUFFIX = ".json"
#: Audit actions: a backup taken (it holds every tenant's configuration), and a restore (the restored installation's
#: log says where it came from).
CREATE_ACTION = "backup.create"
RESTORE_ACTION = "backup.restore"


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    tenants: int
    held_messages: int
    key_ids: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class RestoreResult:
    header: Header
    counts: dict[str, int]
    replaced: dict[str, int]
    tenants: int


@dataclass(frozen=True)
class BackupEntry:
    """One backup in a directory as the list and the console show it: from its status file and its header."""

    name: str
    created_at: str
    ok: bool
    size: int | None = None
    tenants: int | None = None
    seconds: float | None = None
    error: str | None = None
    key_ids: tuple[str, ...] = ()
    with_quarantine: bool = False
    #: The backup file is there (a failed run leaves only its status file).
    present: bool = True
    status: dict[str, Any] = field(default_factory=dict)


def status_path(path: Path) -> Path:
    return path.with_name(path.name + STATUS_SUFFIX)


def create(cfg: Config, output: Path, keys: list[bytes], *, with_quarantine: bool = False) -> BackupResult:
    """Write a backup of the installation to ``output`` (replaced only once the new one is complete)."""
    started = time.monotonic()
    require_current_schema(cfg)
    schema = schema_revisions(cfg)[0] or ""
    partial = output.with_name(output.name + ".part")
    with msp_scope(), session_scope(cfg) as session:
        _snapshot(session)
        ids = held_message_ids(session) if with_quarantine else []
        head = manifest(session, schema=schema, with_quarantine=with_quarantine, held=len(ids))

        def payload() -> Iterator[bytes]:
            yield json.dumps(head, separators=(",", ":")).encode() + b"\n"
            yield from dump_config(session, cfg)
            yield from dump_mail(session, cfg, ids)

        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
            with os.fdopen(fd, "wb") as out:
                size = write_backup(out, payload(), keys, created_at=utcnow().isoformat(timespec="seconds"),
                                    schema=schema, with_quarantine=with_quarantine)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, output)
        except OSError as exc:
            raise BackupError(f"cannot write the backup {output}: {exc.strerror or exc}") from exc
        finally:
            if partial.exists():
                partial.unlink()
    return BackupResult(output, size, head["tenants"], len(ids), tuple(key_id(k) for k in keys),
                        time.monotonic() - started)


def audit_created(cfg: Config, result: BackupResult, *, actor: str) -> None:
    """Log a backup taken, in a short transaction of its own (the snapshot's was read-only)."""
    with msp_scope(), session_scope(cfg) as session:
        audit.record(session, actor=actor, action=CREATE_ACTION, target=result.path.name, tenant_id=None,
                     detail=f"{result.size} bytes, {result.tenants} tenant(s), {result.held_messages} held mail(s), "
                            f"keys {', '.join(result.key_ids)}")


def _snapshot(session: Session) -> None:
    """Read every table from one snapshot, so that rows written meanwhile cannot leave a child without its parent."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    elif dialect == "sqlite":
        # The driver opens transactions only for writes; an explicit one keeps this snapshot (WAL) to the end.
        session.connection().exec_driver_sql("BEGIN")


def _lines(pieces: Iterator[bytes]) -> Iterator[bytes]:
    rest = b""
    for piece in pieces:
        rest += piece
        *done, rest = rest.split(b"\n")
        yield from (line for line in done if line)
    if rest:
        yield rest


def restore(cfg: Config, path: Path, key: bytes, *, actor: str = "cli") -> RestoreResult:
    """Rebuild the installation from the backup at ``path``; refuses a wrong key, a damaged file or an installation
    that has tenants, changing nothing."""
    header = verify(path, key)  # every tag first: a damaged file fails here, before the database is touched
    require_current_schema(cfg)
    with msp_scope(), session_scope(cfg) as session:
        tenants = int(session.scalar(select(func.count()).select_from(Tenant)) or 0)
        if tenants:
            raise BackupError(f"this installation has {tenants} tenant(s): a backup is restored only onto an empty "
                              "installation (a new database after 'mailward db upgrade')")
        replaced = clear_msp_rows(session)
        with open(path, "rb") as fh:
            _, pieces = decrypt_chunks(fh, key)
            lines = _lines(pieces)
            try:
                head = json.loads(next(lines))
            except (StopIteration, ValueError) as exc:
                raise BackupError("the backup's payload has no manifest") from exc
            check_fits(head)
            loader = Loader(session, cfg, head.get("secrets_decrypted", {}))
            for line in lines:
                item = json.loads(line)
                if item["t"] not in head["tables"]:
                    raise BackupError(f"the backup's payload has rows of an undeclared table {item['t']!r}")
                loader.add(item["t"], item["r"])
            loader.flush()
        reset_sequences(session, list(loader.counts))
        restored = int(session.scalar(select(func.count()).select_from(Tenant)) or 0)
        audit.record(session, actor=actor, action=RESTORE_ACTION, target=path.name, tenant_id=None,
                     detail=f"backup of {header.created_at} (schema {header.schema}): {restored} tenant(s), "
                            f"{sum(loader.counts.values())} row(s)")
    return RestoreResult(header, loader.counts, replaced, restored)


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Write the status file of the backup at ``path`` (atomically: a reader sees the old or the new one)."""
    target = status_path(path)
    partial = target.with_name(target.name + ".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w") as out:
        json.dump(status, out, indent=1, sort_keys=True)
    os.replace(partial, target)


def result_status(result: BackupResult) -> dict[str, Any]:
    return {"file": result.path.name, "finished_at": utcnow().isoformat(timespec="seconds"), "ok": True,
            "error": None, "size": result.size, "tenants": result.tenants, "held_messages": result.held_messages,
            "seconds": round(result.seconds, 3), "key_ids": list(result.key_ids)}


def list_backups(directory: Path) -> list[BackupEntry]:
    """The backups (and failed runs) in ``directory``, newest first; a missing directory has none."""
    if not directory.is_dir():
        return []
    names = {p.name for p in directory.glob(f"*{SUFFIX}")}
    names |= {p.name[:-len(STATUS_SUFFIX)] for p in directory.glob(f"*{SUFFIX}{STATUS_SUFFIX}")}
    entries = [_entry(directory / name) for name in names]
    return sorted(entries, key=lambda e: (e.created_at, e.name), reverse=True)


def _entry(path: Path) -> BackupEntry:
    status: dict[str, Any] = {}
    try:
        status = json.loads(status_path(path).read_text())
    except (OSError, ValueError):
        pass
    header: Header | None = None
    error = status.get("error")
    if path.is_file():
        try:
            with open(path, "rb") as fh:
                header = read_header(fh)[0]
        except (OSError, BackupError) as exc:
            error = error or str(exc)
    created = header.created_at if header else str(status.get("started_at") or status.get("finished_at") or "")
    size = path.stat().st_size if path.is_file() else None
    return BackupEntry(name=path.name, created_at=created, ok=bool(header) and status.get("ok", True) is True
                       and error is None, size=size, tenants=status.get("tenants"), seconds=status.get("seconds"),
                       error=error, key_ids=header.key_ids if header else (),
                       with_quarantine=header.with_quarantine if header else False, present=path.is_file(),
                       status=status)
