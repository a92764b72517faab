"""The daily encrypted backup (when ``MAILWARD_BACKUP_KEY_FILE`` is set) and its retention.

The scheduler queues :data:`BACKUP_JOB` once a day; the worker writes ``mailward-<UTC time>.mwbak`` into
``MAILWARD_BACKUP_DIR`` with a status file beside it (ok or the error, size, tenants, duration), then keeps the
newest ``MAILWARD_BACKUP_KEEP`` backups and deletes the older ones. A failed run is logged and leaves its status file
(the console shows the last error); the next day tries again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tenants import backup
from tenants.backup_format import read_key_file
from tenants.models import utcnow
from tenants.platform.config import Config, get_config
from tenants.platform.db import private_dir
from tenants.platform.jobs import enqueue_once

log = logging.getLogger(__name__)

#: Seconds between two scheduled backups.
BACKUP_INTERVAL = 24 * 3600
#: Seconds one backup job may run (held mail is not part of the daily one: configuration is small).
BACKUP_JOB_TIMEOUT = 3600
BACKUP_JOB = "worker.backup.backup_job"
_QUEUED_KEY = "mailward:backup-queued"
#: Who the audit log names for a scheduled backup.
SCHEDULER_ACTOR = "scheduler"
#: File names of scheduled backups: sortable by time.
NAME_FORMAT = "mailward-%Y%m%dT%H%M%SZ"


def run_backup(cfg: Config) -> dict[str, Any]:
    """Take one backup into the backup directory, write its status file and apply retention; returns the status."""
    if cfg.backup_key_file is None:
        raise ValueError("MAILWARD_BACKUP_KEY_FILE is not set")
    directory = private_dir(cfg.effective_backup_dir)
    started = utcnow()
    path = directory / (started.strftime(NAME_FORMAT) + backup.SUFFIX)
    status: dict[str, Any] = {"file": path.name, "started_at": started.isoformat(timespec="seconds")}
    began = time.monotonic()
    try:
        keys = [read_key_file(cfg.backup_key_file)]
        if cfg.backup_master_key_file is not None:
            keys.append(read_key_file(cfg.backup_master_key_file))
        result = backup.create(cfg, path, keys)
        status.update(backup.result_status(result))
        backup.audit_created(cfg, result, actor=SCHEDULER_ACTOR)
        log.info("backup %s written: %d bytes, %s tenant(s)", path.name, status["size"], status["tenants"])
    except Exception as exc:  # recorded for the console, and the job still fails loudly in RQ's registry
        status.update(ok=False, error=f"{type(exc).__name__}: {exc}", seconds=round(time.monotonic() - began, 3),
                      finished_at=utcnow().isoformat(timespec="seconds"))
        backup.write_status(path, status)
        log.error("backup %s failed: %s", path.name, exc)
        raise
    backup.write_status(path, status)
    removed = prune(directory, cfg.backup_keep)
    if removed:
        log.info("backup retention removed %s", ", ".join(removed))
    return status


def prune(directory: Path, keep: int) -> list[str]:
    """Keep the newest ``keep`` backups; delete older ones and their status files, and the status files of failed
    runs older than the oldest backup kept. Returns the names removed."""
    entries = backup.list_backups(directory)  # newest first
    kept = [e for e in entries if e.present][:keep]
    kept_names = {e.name for e in kept}
    oldest = kept[-1].created_at if len(kept) == keep and kept else ""
    removed = []
    for e in entries:
        if e.name in kept_names or (not e.present and e.created_at >= oldest):
            continue
        for p in (directory / e.name, backup.status_path(directory / e.name)):
            p.unlink(missing_ok=True)
        removed.append(e.name)
    return removed


def backup_job() -> dict[str, Any]:
    """The RQ job the scheduler queues daily."""
    return run_backup(get_config())


def enqueue_backup(cfg: Config) -> bool:
    """Queue the daily backup when a backup key is configured (once per interval across scheduler restarts)."""
    if cfg.backup_key_file is None:
        return False
    return enqueue_once(cfg, _QUEUED_KEY, BACKUP_INTERVAL - 60, BACKUP_JOB, timeout=BACKUP_JOB_TIMEOUT,
                        result_ttl=86400, description="daily encrypted backup")
