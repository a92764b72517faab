"""The web's audit helper: stage an entry for the current request (who, from which address, acting as whom).

A leaf module: it imports none of the audience packages, so every view module imports it at the top.
"""

from __future__ import annotations

from flask import request
from flask_login import current_user

from app.extensions import db
from tenants import audit as audit_log
from tenants.scope import current_scope_or_none

_SCOPE_TENANT = object()


def audit(action: str, target: str = "", detail: str = "", *, tenant_id: int | None | object = _SCOPE_TENANT,
          actor: str | None = None) -> None:
    """Stage an audit entry for the current request in its session (the view commits it with its work).

    ``tenant_id`` defaults to the request's tenant scope (None in the MSP scope: an MSP-level entry).
    """
    if tenant_id is _SCOPE_TENANT:
        scope = current_scope_or_none()
        tenant_id = scope.tenant_id if scope is not None else None
    signed_in = current_user.is_authenticated
    audit_log.record(db.session, actor=actor or (current_user.email if signed_in else "anonymous"),
                     action=action, target=target, detail=detail, tenant_id=tenant_id,  # type: ignore[arg-type]
                     ip=request.remote_addr, acting_as=getattr(current_user, "acting_as", None) if signed_in else None)
