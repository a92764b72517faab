"""The API blueprint and what its resource modules share: URL converters, an input guard, tenant selection and
id-keyset paging.

Resource modules add their views to :data:`bp` (one blueprint for the audience, one module per resource, as the
portal does). Every view declares ``@allow_api(scope)`` directly under ``@bp.route``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from flask import request
from flask_smorest import Blueprint
from sqlalchemy import Select, select
from sqlalchemy.orm import InstrumentedAttribute
from werkzeug.routing import BaseConverter, IntegerConverter, Map

from app.api import errors
from app.api.auth import caller
from app.api.errors import ApiError
from app.api.schemas import MAX_ID
from app.extensions import db
from tenants.exceptions import NotFound
from tenants.models import Tenant
from tenants.scope import tenant_scope

#: Where the API lives; the version is part of the path.
PREFIX = "/api/v1"
#: What a message id in a URL looks like (ids are 20 Crockford base32 characters).
MESSAGE_ID_PATTERN = "[0-9A-Za-z]{1,32}"


class RowIdConverter(IntegerConverter):
    """``<rowid:name>``: a row id from 1 to :data:`MAX_ID`; anything else matches no route (404)."""

    def __init__(self, map: Map) -> None:
        super().__init__(map, min=1, max=MAX_ID)


class MessageIdConverter(BaseConverter):
    """``<msgid:name>``: a message id (letters and digits); anything else matches no route (404)."""

    regex = MESSAGE_ID_PATTERN


#: URL converters the API's routes use, by name (registered on the application before the blueprint).
CONVERTERS: dict[str, type[BaseConverter]] = {"rowid": RowIdConverter, "msgid": MessageIdConverter}

bp = Blueprint("api", __name__, url_prefix=PREFIX, description="Mailward REST API v1")
errors.register(bp)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@bp.before_request
def refuse_nul_characters() -> None:
    """No NUL character in any query or body value: PostgreSQL cannot store or compare one, and no field needs it."""
    values = [*request.args.keys(), *request.args.values()]
    if request.is_json:
        values.extend(_strings(request.get_json(silent=True)))
    if any("\x00" in v for v in values):
        raise ApiError(422, "validation", "a value contains a NUL character")


def resolve_tenant(tenant_id: int | None) -> int | None:
    """The tenant a request is about: a tenant key's own (``tenant_id`` omitted or its own; any other is 404, as if
    it did not exist), or for an MSP key the given tenant (404 if there is none) or None for the MSP level."""
    who = caller()
    if not who.is_msp:
        if tenant_id is not None and tenant_id != who.tenant_id:
            raise NotFound(f"no tenant {tenant_id}")
        return who.tenant_id
    if tenant_id is None:
        return None
    if db.session.scalar(select(Tenant.id).where(Tenant.id == tenant_id)) is None:
        raise NotFound(f"no tenant {tenant_id}")
    return tenant_id


@contextmanager
def narrowed_to(tenant_id: int | None) -> Iterator[int | None]:
    """Run the block in one tenant's scope when an MSP key asked for one tenant; a tenant key is in its own already.
    The block gets the tenant the request is about (:func:`resolve_tenant`)."""
    tid = resolve_tenant(tenant_id)
    with tenant_scope(tid) if tid is not None and caller().is_msp else nullcontext():
        yield tid


def of_tenant(model: Any, tenant_id: int | None) -> Select[Any]:
    """The rows of ``model`` of the request's tenant (:func:`resolve_tenant`); an MSP key without ``tenant_id``: of
    every tenant."""
    stmt = select(model)
    tid = resolve_tenant(tenant_id)
    if tid is not None:
        stmt = stmt.where(model.tenant_id == tid)
    return stmt


def of_level(model: Any, tenant_id: int | None) -> Select[Any]:
    """The rows of ``model`` of the request's level: a tenant's own (:func:`resolve_tenant`), or for an MSP key
    without ``tenant_id`` the MSP-wide ones (``tenant_id`` null), not every tenant's."""
    tid = resolve_tenant(tenant_id)
    return select(model).where(model.tenant_id.is_(None) if tid is None else model.tenant_id == tid)


def encode_id_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_id_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raw = ""
    kind, _, value = raw.partition(":")
    if kind != "id" or not value.isdigit():
        raise ApiError(422, "validation", "bad page cursor", fields={"cursor": ["not a cursor this API returned"]})
    return int(value)


def id_page(stmt: Select[Any], column: InstrumentedAttribute[int], cursor: str | None,
            limit: int) -> dict[str, Any]:
    """One page of ``stmt`` in ascending ``column`` order after ``cursor``: ``{"items": [...], "next_cursor": ...}``.

    A keyset (``column > last``): no OFFSET and no COUNT, whatever the table's size.
    """
    if cursor:
        stmt = stmt.where(column > decode_id_cursor(cursor))
    rows: Sequence[Any] = list(db.session.scalars(stmt.order_by(column).limit(limit + 1)))
    page = list(rows[:limit])
    more = len(rows) > limit
    return {"items": page, "next_cursor": encode_id_cursor(getattr(page[-1], column.key)) if more and page else None}
