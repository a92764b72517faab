"""One view action: a service call and its audit entry committed together, or rolled back with the error shown.

A leaf module: it imports none of the audience packages. A view writes::

    with attempt() as done:
        entry = lists.add_entry(s, ...)
        audit("list.allow.add", entry.value)
    if done:
        flash(f"{entry.value} is on the allow list.", "success")
        return redirect(url_for(...))
    return page(form, status=422)

The body's work is committed when the body ends. A ``ValidationError`` (or the exceptions named) raised by the body
or by the commit rolls the session back, is flashed as an error (unless ``flash_error=False``: the view shows
``done.error`` itself, e.g. next to a form field) and is swallowed; the view goes on after the block with ``done``
false. Any other exception propagates, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flask import flash

from app.extensions import db
from tenants.exceptions import ValidationError


@dataclass
class Outcome:
    """How an attempt ended: true when committed; ``error`` is the refused message otherwise."""

    ok: bool = False
    error: str = ""

    def __bool__(self) -> bool:
        return self.ok


@contextmanager
def attempt(*errors: type[Exception], flash_error: bool = True) -> Iterator[Outcome]:
    """Run the block's service calls as one unit of work: commit it, or roll it back on a refusal (see the module)."""
    caught: tuple[type[Exception], ...] = errors or (ValidationError,)
    outcome = Outcome()
    session = db.session
    try:
        yield outcome
        session.commit()
    except caught as exc:
        session.rollback()
        outcome.error = str(exc)
        if flash_error:
            flash(outcome.error, "error")
    else:
        outcome.ok = True
