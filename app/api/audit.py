"""``/api/v1/audit``: the audit log (who did what, who looked at which mail), through :mod:`tenants.audit`; and
:func:`record`, how the API's own actions and envelope-level reads get into it.

A tenant key reads its tenant's entries; an MSP key every entry (MSP-level ones included) or, with ``tenant_id``,
one tenant's. The tenant scope filters the rows, as on the audit pages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marshmallow import RAISE, Schema, fields, validate

from app.access import allow_api
from app.api import schemas as sch
from app.api.actions import refused
from app.api.auth import caller
from app.api.blueprint import bp, resolve_tenant
from app.audit import audit
from app.extensions import db
from tenants import audit as audit_log


def record(action: str, target: str, detail: str = "", *, tenant_id: int | None) -> None:
    """Stage an audit entry for the calling key (actor ``api key <prefix>``) in the request's session; the view
    commits it with its work."""

    audit(action, target, detail, tenant_id=tenant_id, actor=caller().actor)


class AuditArgs(sch.TenantPageArgs):
    cursor = fields.String(validate=validate.Regexp(r"^[0-9]{1,18}$", error="not a cursor this API returned"),
                           metadata={"description": "next_cursor of the previous page"})
    actor = fields.String(validate=validate.Length(1, 320),
                          metadata={"description": "Part of the actor (an e-mail address or 'api key mw_...')"})
    action = fields.String(validate=validate.Length(1, 60),
                           metadata={"description": "The action starts with this, e.g. quarantine."})
    since = sch.query_time(metadata={"description": "At or after"})
    until = sch.query_time(metadata={"description": "Before"})


class AuditEntrySchema(Schema):
    id = fields.Integer(required=True)
    tenant_id = fields.Integer(required=True, allow_none=True,
                               metadata={"description": "The tenant the entry concerns; null: the MSP alone"})
    at = fields.DateTime(required=True)
    actor = fields.String(required=True)
    acting_as = fields.String(required=True, allow_none=True,
                              metadata={"description": "The tenant an MSP user was viewing as"})
    action = fields.String(required=True)
    target = fields.String(required=True)
    detail = fields.String(required=True)
    ip = fields.String(required=True, allow_none=True)


AuditPage = sch.page_schema(AuditEntrySchema, "AuditPage")


@bp.route("/audit", methods=["GET"], endpoint="list_audit", tags=["audit"])
@allow_api("read")
@bp.arguments(AuditArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, AuditPage)
def list_audit(cursor: str | None = None, limit: int = sch.PAGE_SIZE, tenant_id: int | None = None,
               actor: str | None = None, action: str | None = None, since: datetime | None = None,
               until: datetime | None = None) -> dict[str, Any]:
    """Audit entries, newest first, filtered by actor, action prefix and time (keyset paging: follow
    ``next_cursor`` until it is null)."""
    f = audit_log.AuditFilter(actor=actor, action=action, since=since, until=until,
                              tenant_id=resolve_tenant(tenant_id))
    with refused(fields=("cursor",)):
        items, next_cursor = audit_log.search(db.session, f, after=cursor, limit=limit)
    return {"items": items, "next_cursor": next_cursor}
