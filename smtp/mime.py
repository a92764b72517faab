"""MIME helpers that never raise on bad input: a malformed mail is still stored, scanned and delivered."""

from __future__ import annotations

from dataclasses import dataclass
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32

#: Header fields longer than this are cut when kept as metadata (the raw mail keeps them whole).
MAX_HEADER_VALUE = 998


@dataclass(frozen=True)
class HeaderSummary:
    subject: str | None
    header_from: str | None
    message_id: str | None
    defects: tuple[str, ...]


def _decoded(value: object) -> str | None:
    if value is None:
        return None
    raw = str(value)
    try:
        text = str(make_header(decode_header(raw)))
    except Exception:  # undecodable encoded-words: keep the raw text
        text = raw
    text = " ".join(text.split())
    return text[:MAX_HEADER_VALUE]


def summarize_headers(data: bytes) -> HeaderSummary:
    """Subject, From and Message-ID of a raw mail, decoded; parse problems become defects, never exceptions."""
    try:
        msg = BytesHeaderParser(policy=compat32).parsebytes(data)
    except Exception as exc:
        return HeaderSummary(None, None, None, (f"unparseable header block: {type(exc).__name__}",))
    defects = tuple(type(d).__name__ for d in msg.defects)
    mid = msg.get("Message-ID")
    return HeaderSummary(_decoded(msg.get("Subject")), _decoded(msg.get("From")),
                         " ".join(str(mid).split())[:MAX_HEADER_VALUE] if mid else None, defects)
