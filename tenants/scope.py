"""Tenant isolation, enforced once, in the data layer.

Every tenant-owned model inherits :class:`TenantScoped`. A context variable holds the current scope:
a tenant id, or the explicit MSP scope. Two session hooks act on every SQLAlchemy session in the process
(plain sessions in the ingress and the worker, Flask-SQLAlchemy's in the web):

- ``do_orm_execute`` adds ``tenant_id = <scope>`` to every SELECT, UPDATE and DELETE that touches a tenant-owned
  model, relationship loads included; with no scope set, such a statement raises.
- ``before_flush`` stamps ``tenant_id`` on new rows and refuses rows of another tenant.

``Session.get()`` may answer from the identity map without running a query; :func:`get_or_404`-style helpers
(:func:`load`) re-check the tenant, and that is the only way code loads a tenant-owned row by id.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Table, event
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.sql import visitors

from tenants.exceptions import NotFound, TenantScopeError


@dataclass(frozen=True)
class Scope:
    """Who the current code acts for: one tenant, or the whole MSP (``tenant_id is None``)."""

    tenant_id: int | None

    @property
    def is_msp(self) -> bool:
        return self.tenant_id is None


MSP = Scope(None)

_current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("mailward_scope", default=None)


class TenantScoped:
    """Mixin for models owned by a tenant; the class must map a ``tenant_id`` column."""

    __tenant_nullable__ = False  # True for rows the MSP itself may own (MSP users, MSP-wide API keys)
    tenant_id: Any


def current_scope() -> Scope:
    scope = _current.get()
    if scope is None:
        raise TenantScopeError("no tenant scope is set: use tenant_scope(...) or msp_scope()")
    return scope


def current_scope_or_none() -> Scope | None:
    return _current.get()


@contextmanager
def tenant_scope(tenant_id: int) -> Iterator[Scope]:
    """Run the block as one tenant: every tenant-owned query and write is limited to it."""
    if not isinstance(tenant_id, int):
        raise TenantScopeError(f"tenant id must be an int, not {tenant_id!r}")
    token = _current.set(Scope(tenant_id))
    try:
        yield Scope(tenant_id)
    finally:
        _current.reset(token)


@contextmanager
def msp_scope() -> Iterator[Scope]:
    """Run the block across all tenants. Only MSP-level code asks for this, and it says so here."""
    token = _current.set(MSP)
    try:
        yield MSP
    finally:
        _current.reset(token)


def set_scope(scope: Scope | None) -> contextvars.Token[Scope | None]:
    """Set the scope for the rest of a request; pair with :func:`reset_scope`."""
    return _current.set(scope)


def reset_scope(token: contextvars.Token[Scope | None]) -> None:
    _current.reset(token)


def _scoped_tables() -> dict[Any, type]:
    """Table → model for every tenant-owned model (found through the mixin's subclasses)."""
    out: dict[Any, type] = {}
    stack = list(TenantScoped.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        table = getattr(cls, "__table__", None)
        if table is not None:
            out[table] = cls
    return out


def _tenant_classes(state: ORMExecuteState) -> list[type]:
    """Tenant-owned models a statement touches, wherever they appear (entities, select_from, joins, subqueries).

    ``all_mappers`` misses tables named only in ``select_from`` (``select(func.count()).select_from(Domain)``),
    so the statement is walked for tables instead.
    """
    tables = _scoped_tables()
    found: dict[type, None] = {}
    for mapper in state.all_mappers:
        if issubclass(mapper.class_, TenantScoped):
            found[mapper.class_] = None
    for element in visitors.iterate(state.statement):  # type: ignore[arg-type]
        cls = tables.get(element) if isinstance(element, Table) else None
        if cls is not None:
            found[cls] = None
    return list(found)


@event.listens_for(Session, "do_orm_execute")
def _add_tenant_criteria(state: ORMExecuteState) -> None:
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.is_column_load:
        return
    if state.execution_options.get("mailward_skip_scope"):
        return
    classes = _tenant_classes(state)
    if not classes:
        return
    scope = _current.get()
    if scope is None:
        names = ", ".join(sorted(c.__name__ for c in classes))
        raise TenantScopeError(f"query on tenant-owned {names} without a tenant scope")
    if scope.is_msp:
        return
    tid = scope.tenant_id
    for cls in classes:
        # A plain expression, not a lambda: SQLAlchemy caches lambdas by code and would reuse the first tenant id.
        state.statement = state.statement.options(
            with_loader_criteria(cls, cls.tenant_id == tid, include_aliases=True)  # type: ignore[attr-defined]
        )


@event.listens_for(Session, "before_flush")
def _stamp_tenant(session: Session, flush_context: Any, instances: Any) -> None:
    changed = list(session.new) + list(session.dirty) + list(session.deleted)
    touched = [o for o in changed if isinstance(o, TenantScoped)]
    if not touched:
        return
    scope = _current.get()
    if scope is None:
        raise TenantScopeError("write to tenant-owned rows without a tenant scope")
    for obj in touched:
        if scope.is_msp:
            if obj.tenant_id is None and not type(obj).__tenant_nullable__ and obj in session.new:
                raise TenantScopeError(f"new {type(obj).__name__} in MSP scope needs an explicit tenant_id")
            continue
        if obj in session.new and obj.tenant_id is None:
            obj.tenant_id = scope.tenant_id
        if obj.tenant_id != scope.tenant_id:
            raise TenantScopeError(f"{type(obj).__name__} belongs to another tenant than the current scope")
        if obj in session.dirty:
            hist = _tenant_history(obj)
            if hist and any(v != scope.tenant_id for v in hist):
                raise TenantScopeError(f"{type(obj).__name__}: tenant_id cannot be moved to another tenant")


def _tenant_history(obj: Any) -> list[Any]:
    from sqlalchemy import inspect

    attr = inspect(obj).attrs.tenant_id.history
    return list(attr.deleted or ())


M = TypeVar("M")


def load(session: Session, model: type[M], ident: Any) -> M:
    """Load a row by primary key within the current scope; another tenant's row is :class:`NotFound`.

    ``Session.get`` can answer from the identity map without the tenant filter, so the tenant is checked again.
    """
    obj = session.get(model, ident)
    if obj is None:
        raise NotFound(f"{model.__name__} {ident} not found")
    if isinstance(obj, TenantScoped):
        scope = current_scope()
        if not scope.is_msp and obj.tenant_id != scope.tenant_id:
            raise NotFound(f"{model.__name__} {ident} not found")
    return obj
