"""What the two quarantine audiences share: tenant admins in the portal (``/portal/quarantine``) and end users in
their own quarantine (``/q``). Both call :mod:`tenants.quarantine` for every read and action; this module only turns
requests into its arguments and its results into pages (paging links, bulk summaries, time and score formats).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from flask import Flask, flash, render_template, request
from flask_wtf import FlaskForm
from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants import quarantine as q
from tenants.blobs import blob_store
from tenants.exceptions import ValidationError
from tenants.mail.preview import Preview, parse_view
from tenants.mailsort import Order
from tenants.models import Message
from tenants.quarantine import BulkResult

#: Mail per page unless ``?limit=`` asks otherwise, and the most one page may show.
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
#: Most messages one bulk action takes (a page holds at most MAX_PAGE_SIZE).
MAX_BULK = MAX_PAGE_SIZE
#: Most per-message failures a bulk summary names.
MAX_FAILURES_SHOWN = 10

#: The filter form of a list page (each audience has its own fields).
FormT = TypeVar("FormT", bound=FlaskForm)


def page_size() -> int:
    """``?limit=`` within 1..MAX_PAGE_SIZE, else the default."""
    value = request.args.get("limit", "")
    return min(max(int(value), 1), MAX_PAGE_SIZE) if value.isdigit() else PAGE_SIZE


def page_args(cursor: str | None) -> dict[str, str] | None:
    """The current query with ``after`` set to ``cursor`` (the next page's link), or None on the last page."""
    if cursor is None:
        return None
    args = {k: v for k, v in request.args.items() if k != "after" and v}
    args["after"] = cursor
    return args


def first_args() -> dict[str, str] | None:
    """The current query without ``after`` (the first page's link), or None when this is the first page."""
    if not request.args.get("after"):
        return None
    return {k: v for k, v in request.args.items() if k != "after" and v}


def list_page(session: Session, template: str, form_class: type[FormT],
              filters: Callable[[FormT], Mapping[str, Any]], **context: Any) -> tuple[str, int]:
    """A list page of either audience: the filter form from the query, one page of :func:`tenants.quarantine.search`
    with ``filters(form)`` after the ``after`` cursor, then ``template`` with paging links and ``context``.

    A bad form answers 422 and a refused search (a bad cursor, say) 400 with its message, both with the form kept.
    """
    form = form_class(formdata=request.args)
    items: list[q.QuarantineItem] = []
    cursor = None
    status = 200
    order, total = Order(), None
    if form.validate():
        try:
            order = order_of_request()
            items, cursor = q.search(session, **filters(form), after=request.args.get("after") or None,
                                     limit=page_size(), order=order)
            total = q.count(session, **filters(form))
        except ValidationError as exc:
            flash(str(exc), "error")
            status = 400
    else:
        status = 422
    return render_template(template, form=form, items=items, next_args=page_args(cursor), first_args=first_args(),
                           back=request.query_string.decode("latin-1"), order=order, total=total,
                           **context), status


def order_of_request() -> Order:
    """The list order that ``?sort=`` and ``?dir=`` ask for (ValidationError for an unknown one)."""
    return Order.parse(request.args.get("sort"), request.args.get("dir"))


def sort_args(order: Order, key: str) -> dict[str, str]:
    """The current query for a column head's link: sorted by ``key`` (the other way round if it already is), from
    the first page. The default order (newest first) carries no ``sort``/``dir``."""
    args = {k: v for k, v in request.args.items() if k not in ("after", "sort", "dir", "submit") and v}
    wanted = Order(key, not order.descending) if key == order.sort else Order.parse(key, None)
    if not wanted.is_default:
        args.update(sort=wanted.sort, dir="desc" if wanted.descending else "asc")
    return args


def count_words(total: tuple[int, bool] | None, noun: str = "message") -> str:
    """"1 message", "12 messages", "10,000+ messages" for a capped count."""
    if total is None:
        return ""
    n, more = total
    return f"{n:,}{'+' if more else ''} {noun}{'' if n == 1 and not more else 's'}"


def safe_query(raw: str) -> str:
    """A query string posted back by a form (to return to the same list page), re-encoded: only names and values
    survive, so nothing but a query can follow the list's fixed path in a redirect."""
    pairs = parse_qsl(raw[:4000], keep_blank_values=False)
    return urlencode(pairs)


def selected_ids() -> list[str]:
    """The distinct message ids ticked in a bulk form (at most :data:`MAX_BULK`)."""
    return list(dict.fromkeys(i for i in request.form.getlist("ids") if i and len(i) <= 64))[:MAX_BULK]


def kinds_of(session: Session, ids: list[str]) -> dict[str, str | None]:
    """Quarantine kind of each id visible in the current scope (others are missing from the answer)."""
    if not ids:
        return {}
    rows = session.execute(select(Message.id, Message.quarantine_kind).where(Message.id.in_(ids)))
    return {mid: kind for mid, kind in rows}


def preview_of(session: Session, message_id: str, *, rcpts: Sequence[str] | None = None) -> Preview:
    """The safe preview of a held mail the caller may see (:class:`~tenants.exceptions.NotFound` otherwise), without
    the rest of :func:`tenants.quarantine.detail` (findings, timeline) that the preview frame does not show."""
    msg = q.get(session, message_id, rcpts=rcpts)
    return parse_view(blob_store.get(session, msg.id)).preview


def flash_bulk(result: BulkResult, verb: str, refused: Mapping[str, str] | None = None) -> None:
    """One success line (how many were ``verb``) and one error line naming the first failures and why."""
    failed = {**(refused or {}), **result.failed}
    if result.done:
        flash(f"{verb.capitalize()} {len(result.done)} message(s).", "success")
    if failed:
        shown = "; ".join(f"{mid}: {why}" for mid, why in list(failed.items())[:MAX_FAILURES_SHOWN])
        more = f" (and {len(failed) - MAX_FAILURES_SHOWN} more)" if len(failed) > MAX_FAILURES_SHOWN else ""
        flash(f"{len(failed)} message(s) not {verb}: {shown}{more}", "error")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


def _score(value: float | None) -> str:
    """A score with its sign and no needless zeros: +9, -0.5, 0."""
    if value is None:
        return ""
    text = f"{value:+.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("+0", "-0") else text


def _sentence(text: str) -> str:
    """Upper-case the first letter only (Jinja's ``capitalize`` lowers the rest, addresses included)."""
    return text[:1].upper() + text[1:]


def init_app(app: Flask) -> None:
    app.add_template_filter(_when, "when")
    app.add_template_filter(_score, "score")
    app.add_template_filter(_sentence, "sentence")
    app.add_template_global(sort_args, "sort_args")
    app.add_template_global(count_words, "count_words")
