"""``/api/v1/lists``: allow and block entries of one level, through :mod:`tenants.lists`.

A tenant key sees and changes its tenant's own list (not its users' lists); an MSP key the MSP-wide list, or with
``tenant_id`` that tenant's list. An entry of any other level is 404.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE

from app.access import allow_api
from app.api import schemas as sch
from app.api.actions import committed
from app.api.auth import caller
from app.api.blueprint import bp, id_page, of_level, resolve_tenant
from app.extensions import config, db
from tenants import lists
from tenants.exceptions import NotFound
from tenants.models import ListEntry


@bp.route("/lists", methods=["GET"], endpoint="list_entries", tags=["lists"])
@allow_api("read")
@bp.arguments(sch.ListArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, sch.ListEntryPage)
def list_entries(cursor: str | None = None, limit: int = sch.PAGE_SIZE, tenant_id: int | None = None,
                 kind: str | None = None) -> dict[str, Any]:
    """The entries of the key's level (tenant keys: their tenant's list; MSP keys: the MSP-wide list or, with
    ``tenant_id``, that tenant's)."""
    stmt = of_level(ListEntry, tenant_id).where(ListEntry.user_id.is_(None))
    if kind is not None:
        stmt = stmt.where(ListEntry.kind == kind)
    return id_page(stmt, ListEntry.id, cursor, limit)


@bp.route("/lists", methods=["POST"], endpoint="create_list_entry", tags=["lists"])
@allow_api("write")
@bp.arguments(sch.ListEntryCreateSchema)
@bp.response(201, sch.ListEntrySchema)
def create_list_entry(body: dict[str, Any]) -> ListEntry:
    """Allow- or block-list an address, a domain or a network at the key's level. The same value again returns the
    entry; the opposite kind flips it (block beats allow within a level). The ingresses reload at once."""
    session, cfg = db.session, config()
    tid = resolve_tenant(body.get("tenant_id"))
    with committed():
        entry = lists.add_entry(session, kind=body["kind"], value=body["value"], value_type=body.get("value_type"),
                                tenant_id=tid, comment=body["comment"], created_by=caller().actor)
        lists.reload_after_commit(session, cfg)
    return entry


@bp.route("/lists/<rowid:entry_id>", methods=["DELETE"], endpoint="delete_list_entry", tags=["lists"])
@allow_api("write")
@bp.response(204)
def delete_list_entry(entry_id: int) -> None:
    """Remove an entry of the key's level (a tenant key: its tenant's list; an MSP key: any tenant's or the MSP's)."""
    session, cfg = db.session, config()
    entry = lists.get_entry(session, entry_id)
    if entry.user_id is not None:
        raise NotFound(f"ListEntry {entry_id} not found")  # users' own lists are theirs, not the API's
    with committed():
        lists.remove_entry(session, entry_id)
        lists.reload_after_commit(session, cfg)
