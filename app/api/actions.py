"""One API action: a view's service calls and their audit entries committed together, or rolled back and answered
with an error — the API's counterpart of :mod:`app.actions` (which flashes the error on a page instead).

A view writes::

    with committed(fields=("host",)):
        services.update_transport(domain, ...)
        record("domain.transport", ...)
    bump_policy_version(config())

The block's work is committed when the block ends. A refusal (a ``ValidationError``, or the exceptions named) raised
by the block or by the commit rolls the session back and is answered as an :class:`~app.api.errors.ApiError`:
``status`` and ``code`` (422 ``validation`` unless told), the refusal's text as the message (or ``message``), and
for each field in ``fields`` that text (or ``hint``) as its message. Without ``fields`` a refused ``ValidationError``
gets the same answer as one the blueprint's handler turns into JSON. Any other exception propagates, as before.

:func:`refused` is the same without the commit, for a refusal before any change (a bad argument of a read).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from app.api.errors import ApiError
from app.extensions import db
from tenants.exceptions import ValidationError


@contextmanager
def refused(*errors: type[Exception], status: int = 422, code: str = "validation", message: str | None = None,
            fields: tuple[str, ...] = (), hint: str | None = None) -> Iterator[None]:
    """Answer a refusal raised by the block as an API error, the session rolled back (see the module)."""
    caught: tuple[type[Exception], ...] = errors or (ValidationError,)
    try:
        yield
    except caught as exc:
        db.session.rollback()
        text = str(exc) if message is None else message
        raise ApiError(status, code, text, fields={name: [text if hint is None else hint] for name in fields}) from None


@contextmanager
def committed(*errors: type[Exception], status: int = 422, code: str = "validation", message: str | None = None,
              fields: tuple[str, ...] = (), hint: str | None = None) -> Iterator[None]:
    """Run the block's service calls and audit entries as one unit of work: commit it, or roll it back and answer
    the refusal as an API error (see the module)."""
    with refused(*errors, status=status, code=code, message=message, fields=fields, hint=hint):
        yield
        db.session.commit()
