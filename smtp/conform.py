"""What the ingress changes in a mail it accepts: line ends, line lengths, and X-Mailward fields a sender wrote.

Real MTAs send lines of thousands of octets (HTML) and some clients send bare-LF line ends; Postfix takes both, and
so does the ingress. What it stores (which is what every delivery, release and bounce sends) is RFC-valid:

* :func:`normalize_data`, right after DATA, so the checks see it too: SMTP dot-unstuffing, and CRLF line ends. A bare
  LF ends a line like CRLF does (Postfix ``smtpd_forbid_bare_newline = normalize``); only CRLF ``.`` CRLF ends the
  data, which the reader in :mod:`smtp.session` decides before this runs (no SMTP smuggling). A bare CR is content:
  it becomes CRLF (as every relay would make it) but starts no SMTP line.
* :func:`prepare_for_relay`, after the checks (DKIM verification sees the mail as sent) and before the commit (and
  before outbound DKIM signing): forged ``X-Mailward-*`` fields are removed, because downstream rules trust ours;
  and no line may be longer than 998 octets (RFC 5322 2.1.1). A mail without such a line is left byte for byte as
  it came (its DKIM signatures stay valid). Otherwise only what holds such a line changes: a leaf part is re-encoded
  (text as quoted-printable, anything else as base64; its decoded content is the same), an over-long header line
  is folded at white space. That breaks a DKIM signature over the body, so it is logged and marked with an
  ``X-Mailward-Reencoded`` field.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

log = logging.getLogger(__name__)

#: Longest line RFC 5322 2.1.1 allows, without its CRLF.
MAX_LINE = 998
#: Line length of the base64 and quoted-printable text written here (RFC 2045 6.7 and 6.8).
ENCODED_LINE = 76
#: Deepest MIME nesting walked; a part below it with an over-long line has that line broken instead.
MAX_DEPTH = 20
#: The field that records a change made here (one of ours: it stays when forged ones are removed).
REENCODED_FIELD = "X-Mailward-Reencoded"

_STUFFED_DOT = re.compile(rb"(?:\A|(?<=\n))\.")
_BARE_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_ANY_LINE_END = re.compile(rb"\r\n|\r|\n")
_HEADER_END = re.compile(rb"\r\n\r\n")


def normalize_data(raw: bytes) -> bytes:
    """The DATA bytes as a mail: one leading dot removed from every line (CRLF- or LF-terminated, RFC 5321 4.5.2),
    and every line end CRLF."""
    data = _STUFFED_DOT.sub(b"", raw)
    if _BARE_LINE_END.search(data) is None:
        return data
    return _ANY_LINE_END.sub(b"\r\n", data)


def has_long_line(data: bytes) -> bool:
    """Whether a line of ``data`` (CRLF line ends) is longer than :data:`MAX_LINE` octets."""
    return len(data) > MAX_LINE and max(map(len, data.split(b"\r\n"))) > MAX_LINE


def prepare_for_relay(data: bytes, queue_id: str) -> bytes:
    """The accepted mail as it is stored and relayed: forged X-Mailward fields removed and, where a line is longer
    than RFC 5322 allows, that part re-encoded (logged, and recorded in an ``X-Mailward-Reencoded`` field)."""
    data = strip_foreign_fields(data)
    if not has_long_line(data):
        return data
    notes: list[str] = []
    try:
        fitted = _fit_entity(data, 0, notes)
    except Exception:  # a bug here must not lose the mail: break the long lines instead
        log.exception("%s: re-encoding the parts with long lines failed; breaking those lines instead", queue_id)
        fitted, notes = _break_long_lines(data), ["long lines broken"]
    what = "; ".join(dict.fromkeys(notes))
    log.info("%s has lines over %d octets: %s (a DKIM signature over them no longer verifies)", queue_id, MAX_LINE,
             what)
    return f"{REENCODED_FIELD}: {what}\r\n".encode("ascii", "replace") + fitted


def strip_foreign_fields(data: bytes) -> bytes:
    """The mail without any ``X-Mailward-*`` field in its header: a sender could otherwise put its own status or
    score next to ours, and a downstream rule trusting them would be fooled. Every other byte is kept."""
    head, rest = _split_head(data)
    if b"x-mailward-" not in head.lower():
        return data
    kept = [f for f in header_fields(head) if not _field_name(f).startswith(b"x-mailward-")]
    return b"".join(kept) + rest


# --- the MIME walk --------------------------------------------------------------------------------------------------

def _split_head(entity: bytes) -> tuple[bytes, bytes]:
    """(header block with the CRLF of its last line, the rest from the blank line on); no blank line: all header."""
    if entity.startswith(b"\r\n"):
        return b"", entity
    m = _HEADER_END.search(entity)
    if m is None:
        return entity, b""
    return entity[:m.start() + 2], entity[m.start() + 2:]


def header_fields(head: bytes) -> list[bytes]:
    """The header block as whole fields: a line and its continuation lines, line ends kept."""
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def _field_name(field: bytes) -> bytes:
    name, sep, _ = field.partition(b":")
    return name.strip().lower() if sep else b""


def _fit_entity(entity: bytes, depth: int, notes: list[str]) -> bytes:
    """``entity`` (a mail or a MIME part) with no line over :data:`MAX_LINE` octets, changed only where needed."""
    if not has_long_line(entity):
        return entity
    head, rest = _split_head(entity)
    if has_long_line(head):
        head = b"\r\n".join(_fold_header_line(line) for line in head.split(b"\r\n"))
        notes.append("long header lines folded")
    if not has_long_line(rest):
        return head + rest
    body = rest[2:]  # after the blank line
    info: Message = BytesHeaderParser(policy=compat32).parsebytes(head + b"\r\n")
    cte = str(info.get("content-transfer-encoding", "7bit")).strip().lower()
    if depth >= MAX_DEPTH:
        notes.append("long lines broken (nested too deep)")
        return head + b"\r\n" + _break_long_lines(body)
    boundary = info.get_boundary()
    if info.get_content_maintype() == "multipart" and boundary:
        body = _fit_multipart(body, boundary.encode("utf-8", "surrogateescape"), depth, notes)
    elif info.get_content_type() in ("message/rfc822", "message/global") and cte in ("7bit", "8bit", "binary"):
        body = _fit_entity(body, depth + 1, notes)
    else:
        head, body = _reencode_leaf(head, body, info, cte, notes)
        if depth == 0 and info.get("mime-version") is None:
            head = b"MIME-Version: 1.0\r\n" + head
    return head + b"\r\n" + body


def _fit_multipart(body: bytes, boundary: bytes, depth: int, notes: list[str]) -> bytes:
    """A multipart body with each part fitted; delimiter lines, preamble and epilogue as they were (their long lines,
    which no reader shows, broken)."""
    lines = body.split(b"\r\n")
    delimiter = b"--" + boundary
    cuts: list[int] = []
    for i, line in enumerate(lines):
        if line.startswith(delimiter):
            tail = line[len(delimiter):].rstrip(b" \t")
            if tail in (b"", b"--"):
                cuts.append(i)
                if tail == b"--":
                    break
    if not cuts:
        notes.append("long lines broken (multipart without its boundary)")
        return _break_long_lines(body)
    segments: list[bytes] = []
    if cuts[0] > 0:
        segments.append(_break_long_lines(b"\r\n".join(lines[:cuts[0]])))
    for n, cut in enumerate(cuts):
        segments.append(lines[cut])
        last = n + 1 == len(cuts)
        end = len(lines) if last else cuts[n + 1]
        if cut + 1 >= end:
            continue
        part = b"\r\n".join(lines[cut + 1:end])
        if last and lines[cut].rstrip(b" \t").endswith(delimiter + b"--"):
            segments.append(_break_long_lines(part))  # the epilogue
        else:
            segments.append(_fit_entity(part, depth + 1, notes))
    return b"\r\n".join(segments)


def _reencode_leaf(head: bytes, body: bytes, info: Message, cte: str, notes: list[str]) -> tuple[bytes, bytes]:
    """A leaf part with a line over the limit, re-encoded: its content decoded, then text as quoted-printable and
    anything else as base64. An encoding this does not know has its lines broken instead."""
    ctype = info.get_content_type()
    if cte == "base64":  # white space means nothing in base64: re-wrapping loses nothing, even in broken base64
        text = b"".join(body.split())
        trailer = b"\r\n" if body.endswith(b"\r\n") else b""
        notes.append(f"{ctype} base64 re-wrapped")
        return head, b"\r\n".join(text[i:i + ENCODED_LINE] for i in range(0, len(text), ENCODED_LINE)) + trailer
    if cte == "quoted-printable":
        content = binascii.a2b_qp(body)
    elif cte in ("7bit", "8bit", "binary"):
        content = body
    else:
        notes.append(f"long lines of a {cte} part broken")
        return head, _break_long_lines(body)
    if info.get_content_maintype() == "text":
        encoded, name = _quoted_printable(content), "quoted-printable"
    else:
        encoded, name = _base64(content), "base64"
    kept = [f for f in header_fields(head) if _field_name(f) != b"content-transfer-encoding"]
    notes.append(f"{ctype} as {name}")
    return b"".join(kept) + f"Content-Transfer-Encoding: {name}\r\n".encode("ascii"), encoded


def _quoted_printable(content: bytes) -> bytes:
    """Quoted-printable with CRLF hard line breaks kept as line breaks (text), or encoded when the content has bare
    CR or LF (so they come back as they were)."""
    as_text = _BARE_LINE_END.search(content) is None
    encoded = binascii.b2a_qp(content, quotetabs=False, istext=as_text, header=False)
    return _ANY_LINE_END.sub(b"\r\n", encoded)  # soft breaks follow the content's line ends; CRLF when there are none


def _base64(content: bytes) -> bytes:
    text = base64.b64encode(content)
    return b"".join(text[i:i + ENCODED_LINE] + b"\r\n" for i in range(0, len(text), ENCODED_LINE))


def _fold_header_line(line: bytes) -> bytes:
    """A header line over the limit folded at white space (RFC 5322 2.2.3: unfolding restores it); where a run has
    no white space, it is broken and the break gets a space (as Postfix does)."""
    out: list[bytes] = []
    while len(line) > MAX_LINE:
        cut = max(line.rfind(b" ", 1, MAX_LINE + 1), line.rfind(b"\t", 1, MAX_LINE + 1))
        if cut > 0 and line[:cut].strip():
            out.append(line[:cut])
            line = line[cut:]
        else:
            out.append(line[:MAX_LINE])
            line = b" " + line[MAX_LINE:]
    out.append(line)
    return b"\r\n".join(out)


def _break_long_lines(data: bytes) -> bytes:
    """Every line over the limit broken into lines of :data:`MAX_LINE` octets (for text no reader shows, and as the
    fallback when a part cannot be re-encoded)."""
    if not has_long_line(data):
        return data
    out: list[bytes] = []
    for line in data.split(b"\r\n"):
        out.extend([line[i:i + MAX_LINE] for i in range(0, len(line), MAX_LINE)] or [b""])
    return b"\r\n".join(out)
