"""Low-level MIME helpers shared by the ingress (``smtp.mime``) and the quarantine view (``tenants.mail.preview``).

Standard library only, so ``tenants`` can use them without importing ``smtp``. Nothing here raises on a bad part:
problems become defects or empty values; only :func:`parse_message` raises, and its callers turn that into a defect.

Callers run :func:`tenants.mail.mimescan.scan` first and parse only mail within the limits. The parse and the walk are
bounded besides, for what the scan may read differently: :func:`parse_message` counts the parts the parser makes
(through its message factory) and the thread's CPU time (between chunks of input) against a
:class:`~tenants.mail.mimescan.Budget`; :func:`header_items` and :func:`split_parts` check the same budget before each
field and part they read (fields are parsed when read, by a :class:`BoundedPolicy`: once, and structurally only when
short). Memory is bounded by the mail's size (the ingress's size cap), the line and part limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.feedparser import BytesFeedParser
from email.headerregistry import HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage, Message
from email.policy import EmailPolicy, Policy
from typing import Any

from tenants.mail.mimescan import STRUCTURED_MAX_CHARS, Budget, MimeLimitExceeded

#: Content types of a leaf part read as body text (unless it is an attachment or has a file name).
BODY_TYPES = ("text/plain", "text/html")
#: Characters fed to the parser at a time; the CPU budget is checked between chunks (the size ``email.parser`` reads).
PARSE_CHUNK = 8192


@dataclass(frozen=True)
class LeafPart:
    """A leaf MIME part that is not body text: its declared name, type and disposition, and its decoded bytes."""

    filename: str | None
    content_type: str
    disposition: str | None
    data: bytes


@dataclass
class MimeParts:
    """A mail split into body texts, HTML parts and other leaf parts, in the order they stand in the mail."""

    texts: list[str] = field(default_factory=list)
    htmls: list[str] = field(default_factory=list)
    leaves: list[LeafPart] = field(default_factory=list)
    #: Class names of the parse defects of every part walked.
    defects: list[str] = field(default_factory=list)
    #: True when the mail had more parts than the walk was allowed to look at.
    truncated: bool = False
    #: Set when the walk stopped on its budget (see :class:`~tenants.mail.mimescan.Budget`): which bound it met.
    over_limits: str | None = None


#: Header classes for any name that read a value as plain text (RFC 2047 words decoded), in linear time.
_PLAIN = HeaderRegistry(default_class=UnstructuredHeader, use_default_map=False)


class BoundedPolicy(EmailPolicy):
    """``email.policy.default`` with bounded header reading: a field is parsed once per parse (the parser and the
    ``get_*`` helpers read Content-Type again and again), and structurally only up to :data:`STRUCTURED_MAX_CHARS`.
    Nothing in Mailward reads structured attributes (``.addresses``, ``.params``); only the text changes."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        object.__setattr__(self, "_read", {})

    def header_fetch_parse(self, name: str, value: str) -> str:
        if hasattr(value, "name"):
            return value
        read: dict[tuple[str, str], str] = self._read  # type: ignore[attr-defined]
        found = read.get((name, value))
        if found is None:
            unfolded = "".join(value.splitlines())
            factory = self.header_factory if len(unfolded) <= STRUCTURED_MAX_CHARS else _PLAIN
            found = read[(name, value)] = factory(name, unfolded)
        return found


class _CountingFactory:
    """The parser's message factory: every part it makes is counted against the budget (once armed: the parser calls
    the factory once when it is made, to learn its signature)."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.armed = False

    def __call__(self, *, policy: Policy) -> EmailMessage:
        if self.armed:
            self.budget.part()
        return EmailMessage(policy=policy)


def parse_message(raw: bytes, budget: Budget | None = None) -> EmailMessage:
    """The mail parsed with a :class:`BoundedPolicy` (so an :class:`EmailMessage`); raises on unparseable bytes, and
    :class:`~tenants.mail.mimescan.MimeLimitExceeded` when the parse makes more parts or takes more CPU than
    ``budget``."""
    budget = budget if budget is not None else Budget()
    factory = _CountingFactory(budget)
    parser = BytesFeedParser(_factory=factory, policy=BoundedPolicy())  # type: ignore[arg-type]
    factory.armed = True
    for start in range(0, len(raw), PARSE_CHUNK):
        parser.feed(raw[start:start + PARSE_CHUNK])
        budget.check()
    return parser.close()  # type: ignore[return-value]


def header_items(msg: Message, budget: Budget | None = None) -> list[tuple[str, object | None]]:
    """``msg.items()`` (each field read through the message's policy), checking ``budget`` before each field; None
    for a field the policy cannot read (deeply nested comments, say)."""
    out: list[tuple[str, object | None]] = []
    for name, value in msg.raw_items():
        if budget is not None:
            budget.check()
        try:
            out.append((name, msg.policy.header_fetch_parse(name, value)))  # type: ignore[attr-defined]
        except Exception:
            out.append((name, None))
    return out


def one_line(value: object) -> str:
    """A header value unfolded: runs of white space (line breaks too) become one space; raises what ``str()`` raises."""
    return " ".join(str(value).split())


def part_text(part: Message) -> str:
    """The decoded text of a text part; on a bad charset or encoding its raw payload read as Latin-1."""
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        return content if isinstance(content, str) else ""
    except Exception:
        payload = part.get_payload(decode=True)
        return payload.decode("latin-1", "replace") if isinstance(payload, bytes) else ""


def split_parts(msg: Message, *, max_parts: int, budget: Budget | None = None) -> MimeParts:
    """Walk at most ``max_parts`` parts of ``msg``: body texts and HTML decoded, other leaves with their bytes.
    With a ``budget``, the walk stops (``over_limits``) once the thread has used up its CPU seconds."""
    out = MimeParts()
    for n, part in enumerate(msg.walk()):
        if n >= max_parts:
            out.truncated = True
            break
        if budget is not None:
            try:
                budget.check()
            except MimeLimitExceeded as exc:
                out.truncated, out.over_limits = True, str(exc)
                break
        out.defects.extend(type(d).__name__ for d in part.defects)
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        disposition = part.get_content_disposition()
        try:
            filename = part.get_filename()
        except Exception:
            filename = None
        if disposition != "attachment" and not filename and ctype in BODY_TYPES:
            (out.texts if ctype == "text/plain" else out.htmls).append(part_text(part))
            continue
        if ctype == "message/rfc822" and part is not msg:
            continue  # walk() descends into it
        payload = part.get_payload(decode=True)
        out.leaves.append(LeafPart(filename, ctype, disposition, payload if isinstance(payload, bytes) else b""))
    return out
