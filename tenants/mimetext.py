"""Low-level MIME helpers shared by the ingress (``smtp.mime``) and the quarantine view (``tenants.preview``).

Standard library only, so ``tenants`` can use them without importing ``smtp``. Nothing here raises on a bad part:
problems become defects or empty values; only :func:`parse_message` raises, and its callers turn that into a defect.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.parser import BytesParser

#: Content types of a leaf part read as body text (unless it is an attachment or has a file name).
BODY_TYPES = ("text/plain", "text/html")


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


def parse_message(raw: bytes) -> EmailMessage:
    """The mail parsed with ``email.policy.default`` (so an :class:`EmailMessage`); raises on unparseable bytes."""
    return BytesParser(policy=email.policy.default).parsebytes(raw)  # type: ignore[return-value]


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


def split_parts(msg: Message, *, max_parts: int) -> MimeParts:
    """Walk at most ``max_parts`` parts of ``msg``: body texts and HTML decoded, other leaves with their bytes."""
    out = MimeParts()
    for n, part in enumerate(msg.walk()):
        if n >= max_parts:
            out.truncated = True
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
