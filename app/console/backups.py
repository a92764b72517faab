"""The backups page of the MSP console (``/console/backups``): the backups in ``MAILWARD_BACKUP_DIR`` with their
status files (:mod:`tenants.backup`), whether scheduled backups are on, and the last error. MSP staff only."""

from __future__ import annotations

from flask import render_template
from flask.typing import ResponseReturnValue

from app.access import MSP_ROLES, allow
from app.console import bp
from app.extensions import config
from tenants import backup


@bp.route("/backups")
@allow(*MSP_ROLES)
def backups() -> ResponseReturnValue:
    cfg = config()
    entries = backup.list_backups(cfg.effective_backup_dir)
    return render_template("console/backups.html", entries=entries, directory=cfg.effective_backup_dir,
                           scheduled=cfg.backup_key_file is not None, keep=cfg.backup_keep,
                           last_error=next((e for e in entries if not e.ok), None),
                           last_ok=next((e for e in entries if e.ok), None))
