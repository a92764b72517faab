"""Sorting and counting the mail lists (the quarantine and the tracking center) without giving up keyset paging.

A list is ordered by one of :data:`SORTS` and the message id (the tie-breaker), ascending or descending; the cursor
of the next page carries the sort, the last row's sort value and its id, so a deep page still costs what the first
does. The default order (newest first) keeps the quarantine's original cursor format, so links already handed out
still page. Counts are capped (:data:`COUNT_CAP`): a list says "10,000+ messages" rather than counting millions.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from tenants.exceptions import ValidationError
from tenants.models import Message

#: Sort keys a list accepts (``?sort=``), with the column each orders by; text sorts ignore case.
SORTS: tuple[str, ...] = ("received", "score", "sender", "subject")
#: The order of a list that asks for none: newest first.
DEFAULT_SORT = "received"
#: Most messages a list counts; beyond it the count reads "COUNT_CAP+".
COUNT_CAP = 10_000


def _column(sort: str) -> Any:
    if sort == "received":
        return Message.received_at
    if sort == "score":
        return Message.score
    if sort == "sender":
        return func.lower(func.coalesce(Message.mail_from, ""))
    return func.lower(func.coalesce(Message.subject, ""))


@dataclass(frozen=True)
class Order:
    """How a list is ordered: a key of :data:`SORTS`, descending or not."""

    sort: str = DEFAULT_SORT
    descending: bool = True

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            raise ValidationError(f"sort {self.sort!r}: use one of {', '.join(SORTS)}")

    @classmethod
    def parse(cls, sort: str | None, direction: str | None) -> Order:
        """An order from ``?sort=`` and ``?dir=`` (``asc``/``desc``; text sorts default to A to Z, others to the
        largest or newest first)."""
        key = sort or DEFAULT_SORT
        if direction not in (None, "", "asc", "desc"):
            raise ValidationError(f"dir {direction!r}: use asc or desc")
        descending = direction == "desc" if direction else key in ("received", "score")
        return cls(key, descending)

    @property
    def is_default(self) -> bool:
        return self.sort == DEFAULT_SORT and self.descending

    def apply(self, stmt: Any, after: str | None) -> Any:
        """``stmt`` (a SELECT of messages) ordered, and started after the cursor ``after`` of a previous page."""
        col = _column(self.sort)
        if after:
            value, last_id = self._decode(after)
            if self.descending:
                stmt = stmt.where(or_(col < value, and_(col == value, Message.id < last_id)))
            else:
                stmt = stmt.where(or_(col > value, and_(col == value, Message.id > last_id)))
        if self.descending:
            return stmt.order_by(col.desc(), Message.id.desc())
        return stmt.order_by(col.asc(), Message.id.asc())

    def cursor(self, msg: Message) -> str:
        """The cursor of the page that follows ``msg`` (the last row of a page)."""
        if self.is_default:
            return encode_cursor(msg.received_at, msg.id)
        value: Any
        if self.sort == "received":
            value = msg.received_at.isoformat()
        elif self.sort == "score":
            value = msg.score
        else:
            value = ((msg.mail_from if self.sort == "sender" else msg.subject) or "").lower()
        raw = json.dumps([self.sort, "desc" if self.descending else "asc", value, msg.id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _decode(self, cursor: str) -> tuple[Any, str]:
        if self.is_default:
            return decode_cursor(cursor)
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            sort, direction, value, message_id = json.loads(raw)
            if sort == "received":
                value = datetime.fromisoformat(value)
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
            raise ValidationError("bad page cursor") from None
        wanted = "desc" if self.descending else "asc"
        ok = isinstance(message_id, str) and message_id and (sort, direction) == (self.sort, wanted)
        if not ok or (sort == "score" and not isinstance(value, (int, float))) or (
                sort in ("sender", "subject") and not isinstance(value, str)):
            raise ValidationError("bad page cursor")
        return value, message_id


def encode_cursor(received_at: datetime, message_id: str) -> str:
    """An opaque keyset cursor of the default order: the position after the last item of a page."""
    raw = f"{received_at.isoformat()}|{message_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, message_id = raw.partition("|")
        when = datetime.fromisoformat(at)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationError("bad page cursor") from None
    if not message_id or when.tzinfo is None:
        raise ValidationError("bad page cursor")
    return when, message_id


def capped_count(session: Session, stmt: Any, cap: int = COUNT_CAP) -> tuple[int, bool]:
    """How many messages ``stmt`` (an unordered SELECT of messages) finds, counting at most ``cap``: (count, more)."""
    ids = stmt.with_only_columns(Message.id).order_by(None).limit(cap + 1).subquery()
    n = int(session.scalar(select(func.count()).select_from(ids)) or 0)
    return min(n, cap), n > cap
