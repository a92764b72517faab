"""A tenant's export as a ZIP download, for the console and the REST API alike (:func:`tenants.lifecycle.export`)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable

from flask import Response, send_file
from sqlalchemy.orm import Session

from tenants import lifecycle
from tenants.models import Tenant, utcnow
from tenants.platform.config import Config

#: Exports are written to a temporary file first (bounded memory); past this size it leaves memory for the disk.
EXPORT_SPOOL_BYTES = 8 * 1024 * 1024


def tenant_zip(session: Session, cfg: Config, tenant: Tenant, record: Callable[[str], None]) -> Response:
    """Write the export, ``record`` it (the audit entry a delete later looks for, given a one-line summary), commit,
    and answer the file as an attachment."""
    out = tempfile.SpooledTemporaryFile(max_size=EXPORT_SPOOL_BYTES)  # noqa: SIM115 - send_file closes it
    report = lifecycle.export(session, cfg, tenant, out)
    record(f"{report.counts.get('messages', 0)} messages, {len(report.files) + 1} files")
    session.commit()
    out.seek(0)
    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    return send_file(out, mimetype="application/zip", as_attachment=True,  # type: ignore[arg-type]
                     download_name=f"mailward-tenant-{tenant.id}-{stamp}.zip")
