"""The mail rules' dry-run replay as an RQ job (:data:`tenants.mailrules.replayjobs.REPLAY_JOB`): it runs in the
tenant's scope, writes its progress as it goes and its report at the end (:mod:`tenants.mailrules.replayjobs`)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from tenants.exceptions import ValidationError
from tenants.mailrules.replay import replay
from tenants.mailrules.replayjobs import write_status
from tenants.platform.config import get_config
from tenants.platform.db import session_scope
from tenants.platform.redisconn import redis_client
from tenants.scope import tenant_scope

log = logging.getLogger(__name__)


def run(tenant_id: int, job_id: str, since_days: int, draft: list[dict[str, Any]] | None) -> str:
    """Replay the tenant's last ``since_days`` days under ``draft`` (None: its current rules) and store the report."""
    cfg = get_config()
    conn = redis_client(cfg)
    base = {"since_days": since_days}

    def progress(done: int, total: int) -> None:
        write_status(cfg, tenant_id, job_id, base | {"state": "running", "done": done, "total": total},
                     connection=conn)

    progress(0, 0)
    try:
        with tenant_scope(tenant_id), session_scope(cfg) as session:
            report = replay(session, cfg, tenant_id, timedelta(days=since_days), draft, progress=progress)
    except ValidationError as exc:
        write_status(cfg, tenant_id, job_id, base | {"state": "failed", "error": str(exc)}, connection=conn)
        return f"replay of tenant {tenant_id} refused: {exc}"
    except Exception:
        log.exception("rules replay %s of tenant %d failed", job_id, tenant_id)
        write_status(cfg, tenant_id, job_id, base | {"state": "failed", "error": "the replay failed (see the worker "
                                                                                   "log)"}, connection=conn)
        raise
    write_status(cfg, tenant_id, job_id, base | {"state": "done", "done": report.mails, "total": report.mails,
                                                 "report": report.as_dict()}, connection=conn)
    summary = f"{report.mails} mails, {report.recipients} recipients"
    log.info("rules replay %s of tenant %d: %s", job_id, tenant_id, summary)
    return summary
