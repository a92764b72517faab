"""Tenant isolation, enforced once, in the data layer.

Every tenant-owned model inherits :class:`TenantScoped`. A context variable holds the current scope:
a tenant id, or the explicit MSP scope. Two session hooks act on every SQLAlchemy session in the process
(plain sessions in the ingress and the worker, Flask-SQLAlchemy's in the web):

- ``do_orm_execute`` adds ``tenant_id = <scope>`` to every SELECT, UPDATE and DELETE that touches a tenant-owned
  model, relationship loads included; with no scope set, such a statement raises.
- ``before_flush`` stamps ``tenant_id`` on new rows and refuses rows of another tenant.

The tenant filter only reaches ORM entities. Everything it cannot reach is refused outside :func:`msp_scope` (in a
tenant's scope and with no scope at all): a Core statement naming a tenant-owned table (``Message.__table__``,
``table("message")``), an ORM INSERT statement (it skips ``before_flush``), and ``text()`` — in a tenant scope always,
since the tables of raw SQL cannot be known; with no scope when it names a tenant-owned table. The session hook
checks what runs through a session; an engine hook (:func:`guard_engine`, on every engine :mod:`tenants.platform.db`
makes)
checks what runs on a bare connection, the ORM's own flush excepted. A statement that must run raw says why, with
the :data:`RAW_SQL` execution option or inside :func:`raw_sql`, and limits itself to the tenant. Driver SQL
(``exec_driver_sql``) is refused in a tenant scope; without one it is SQLAlchemy's own reflection and left alone.

``Session.get()`` may answer from the identity map without running a query; :func:`get_or_404`-style helpers
(:func:`load`) re-check the tenant, and that is the only way code loads a tenant-owned row by id.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import ColumnClause, Engine, Select, TableClause, TextClause, event, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.sql import ClauseElement

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

#: Execution option that lets one Core or ``text()`` statement past the isolation guard outside the MSP scope; its
#: value is the reason (``stmt.execution_options(mailward_raw_sql="why")``). The statement limits itself to the tenant.
RAW_SQL = "mailward_raw_sql"
#: Execution option the session hook sets on a statement it has checked (and filtered), so that the engine hook lets
#: it pass without a second look. Set by this module only.
_CHECKED = "_mailward_scope_checked"

_raw_reason: contextvars.ContextVar[str | None] = contextvars.ContextVar("mailward_raw_sql", default=None)


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


def _reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise TenantScopeError("raw SQL outside the MSP scope needs a reason: raw_sql('why') or mailward_raw_sql='why'")
    return reason


@contextmanager
def raw_sql(reason: str) -> Iterator[str]:
    """Let the block's Core and ``text()`` statements past the isolation guard; the code in it filters by tenant
    itself, and ``reason`` says why it cannot use the ORM (prefer the :data:`RAW_SQL` option on one statement)."""
    token = _raw_reason.set(_reason(reason))
    try:
        yield reason
    finally:
        _raw_reason.reset(token)


def _scoped_tables() -> dict[str, type]:
    """Table name → model for every tenant-owned model (found through the mixin's subclasses).

    By name, so that a lightweight ``table("message")`` or a second ``Table`` on the same name is caught as well.
    """
    out: dict[str, type] = {}
    stack = list(TenantScoped.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        table = getattr(cls, "__table__", None)
        if table is not None:
            out[table.name] = cls
    return out


@dataclass
class _References:
    """What a statement touches that the isolation guard cares about."""

    #: Tenant-owned models named through ORM entities (the loader criteria reach them).
    entities: dict[type, None] = field(default_factory=dict)
    #: Tenant-owned tables named bare, as Core does (the loader criteria do not reach them).
    tables: dict[str, None] = field(default_factory=dict)
    #: The SQL of every ``text()`` in it.
    texts: list[str] = field(default_factory=list)


def _orm_made(element: Any) -> bool:
    """Whether the ORM built this element for a mapped class (an entity, its columns, a relationship's join)."""
    return getattr(element, "_annotations", {}).get("parentmapper") is not None


def _children(element: Any) -> Iterator[Any]:
    """An element's sub-elements, but a SELECT's FROMs only where it names them (``select_from``, joins): those it
    infers from its columns are the bare tables behind ORM columns too, and columns are judged on their own."""
    if isinstance(element, Select):
        yield from super(Select, element).get_children(omit_attrs=("_from_obj", "_correlate", "_correlate_except"))
        yield from element._from_obj
    else:
        yield from element.get_children()


def _references(statement: Any) -> _References:
    """Walk the whole statement (columns, select_from, joins, subqueries, WHERE) for tenant tables and raw SQL.

    What the ORM built (entities, aliases, relationship joins) is not entered: the loader criteria reach it. A bare
    table is Core. A bare column counts as Core unless an ORM entity brings its table into the same SELECT (then it
    is that entity's filtered FROM, as in ``Session.get()``'s primary-key clause); each subquery is its own SELECT.
    """
    tables = _scoped_tables()
    refs = _References()
    levels = [statement]
    while levels:
        root = levels.pop()
        orm: set[str] = set()  # tenant tables an ORM entity puts, unaliased, into this SELECT's FROM
        columns: set[str] = set()  # tenant tables of bare columns in this SELECT
        stack = [root]
        seen: set[int] = set()
        while stack:
            element = stack.pop()
            if id(element) in seen:
                continue
            seen.add(id(element))
            if element is not root and isinstance(element, Select):
                levels.append(element)
                continue
            if isinstance(element, TextClause):
                refs.texts.append(element.text)
            table: Any = element.table if isinstance(element, ColumnClause) else element
            named = isinstance(table, TableClause) and table.name in tables
            if _orm_made(element):
                cls = element._annotations["parentmapper"].class_
                if issubclass(cls, TenantScoped):
                    refs.entities[cls] = None
                if named:
                    orm.add(table.name)
                continue
            if isinstance(element, ColumnClause):
                if named:
                    columns.add(table.name)
                elif table is not None and not isinstance(table, TableClause):
                    stack.append(table)  # a column of an alias or subquery: walk what it selects from
                continue
            if isinstance(element, TableClause):
                if named:
                    refs.tables[element.name] = None
                continue
            stack.extend(_children(element))
        for name in sorted(columns - orm):
            refs.tables[name] = None
    return refs


def _all_tables(refs: _References) -> list[str]:
    """Every tenant table a statement names, bare or through an entity (where no loader criteria will apply)."""
    return sorted({*refs.tables, *(c.__table__.name for c in refs.entities)})  # type: ignore[attr-defined]


def _names_tenant_table(sql: str) -> bool:
    """Whether raw SQL names a tenant-owned table as a word (the best that can be known without parsing it)."""
    names = "|".join(re.escape(name) for name in sorted(_scoped_tables()))
    return re.search(rf"\b(?:{names})\b", sql, re.IGNORECASE) is not None


def _refuse_raw(tables: list[str], texts: list[str], options: Mapping[str, Any], how: str) -> None:
    """Raise unless raw access is allowed: the MSP scope, or a reason given (option or :func:`raw_sql`).

    ``tables`` are tenant tables the tenant filter cannot reach, ``texts`` the raw SQL in the statement.
    """
    if not tables and not texts:
        return
    scope = _current.get()
    if scope is not None and scope.is_msp:
        return
    if RAW_SQL in options:
        _reason(options[RAW_SQL])
        return
    if _raw_reason.get() is not None:
        return
    where = "without a tenant scope" if scope is None else f"in the scope of tenant {scope.tenant_id}"
    if tables:
        raise TenantScopeError(
            f"{how} on tenant-owned {', '.join(sorted(set(tables)))} {where}: the tenant filter does not reach it; "
            "use the ORM models, msp_scope(), or raw_sql('why') and filter by tenant_id yourself")
    if scope is None and not any(_names_tenant_table(sql) for sql in texts):
        return
    raise TenantScopeError(
        f"raw SQL (text()) {where}: the tenant filter cannot reach it; use the ORM models, msp_scope(), "
        "or raw_sql('why') and filter by tenant_id yourself")


@event.listens_for(Session, "do_orm_execute")
def _add_tenant_criteria(state: ORMExecuteState) -> None:
    """Filter ORM statements by the scope's tenant; refuse what the filter cannot reach (see the module's doc)."""
    if state.is_orm_statement and state.is_column_load:
        # Refreshing an attribute of a row already loaded, by primary key (the row was filtered when it was loaded).
        state.update_execution_options(**{_CHECKED: True})
        return
    refs = _references(state.statement)
    if not state.is_orm_statement:
        _refuse_raw(_all_tables(refs), refs.texts, state.execution_options, "Core statement")
        state.update_execution_options(**{_CHECKED: True})
        return
    for mapper in state.all_mappers:
        if issubclass(mapper.class_, TenantScoped):
            refs.entities[mapper.class_] = None
    classes = list(refs.entities)
    if state.is_insert:
        # A bulk INSERT statement bypasses before_flush: nothing stamps or checks its tenant_id.
        _refuse_raw(_all_tables(refs), refs.texts, state.execution_options, "ORM INSERT statement")
    else:
        _refuse_raw(list(refs.tables), refs.texts, state.execution_options, "Core table in an ORM statement")
    state.update_execution_options(**{_CHECKED: True})
    if not (state.is_select or state.is_update or state.is_delete) or not classes:
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


def _is_flush(statement: Any, options: Mapping[str, Any]) -> bool:
    """Whether a statement is the ORM's own flush of a tenant-owned row (checked by :func:`_stamp_tenant`).

    The unit of work runs its INSERT, UPDATE and DELETE on the mapper's table with the mapper's statement cache as
    execution option; nothing else passes that cache. Should SQLAlchemy stop passing it, flushes are refused
    (loudly, in every test that writes), never let through.
    """
    cache = options.get("compiled_cache")
    table = getattr(statement, "table", None)
    if cache is None or not getattr(statement, "is_dml", False) or not isinstance(table, TableClause):
        return False
    cls = _scoped_tables().get(table.name)
    return cls is not None and cache is inspect(cls).base_mapper._compiled_cache


def _check_connection_statement(conn: Connection, statement: Any, multiparams: Any, params: Any,
                                options: Mapping[str, Any]) -> None:
    """Engine hook: a statement run on a connection, not through a session, gets no tenant filter at all."""
    if options.get(_CHECKED) or not isinstance(statement, ClauseElement):
        return
    if not (isinstance(statement, TextClause) or getattr(statement, "is_select", False)
            or getattr(statement, "is_dml", False)):
        return  # DDL, savepoints, defaults
    refs = _references(statement)
    if (refs.tables or refs.entities) and _is_flush(statement, options):
        return
    _refuse_raw(_all_tables(refs), refs.texts, options, "statement on a bare connection")


def _check_driver_sql(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any,
                      executemany: bool) -> None:
    """Engine hook: ``exec_driver_sql()`` strings skip the hook above (nothing compiled them): in a tenant scope they
    are refused as text() is. Without a scope they are left alone: SQLAlchemy reflects tables with them (DDL)."""
    if context is not None and context.compiled is None and current_scope_or_none() is not None:
        _refuse_raw([], [statement], context.execution_options, "driver SQL")


def guard_engine(engine: Engine) -> Engine:
    """Check every statement run on ``engine``'s connections outside a session (see the module's doc)."""
    if not event.contains(engine, "before_execute", _check_connection_statement):
        event.listen(engine, "before_execute", _check_connection_statement)
        event.listen(engine, "before_cursor_execute", _check_driver_sql)
    return engine


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
