"""MIME helpers that never raise on bad input: a malformed mail is still stored, scanned and delivered.

A mail over the MIME limits (:mod:`tenants.mail.mimescan`: parts, nesting, lines, header sizes) is never parsed: the
ingress refuses it at DATA with :data:`REPLY_OVER_LIMITS` before anything parses it (:func:`check_limits`), and
:func:`parse_mail` scans again (it has other callers) and returns such a mail unparsed, with ``over_limits`` set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import compat32
from html import unescape as html_unescape
from html.parser import HTMLParser

from tenants.mail.mimescan import LIMITS, Budget, MimeLimitExceeded, scan
from tenants.mail.mimetext import header_items, one_line, parse_message, split_parts
from tenants.policy import Policy
from tenants.symbols import lookup

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


@dataclass(frozen=True)
class OverLimits:
    """A mail over the MIME limits, as the ingress refuses it and records the refusal."""

    why: str
    headers: HeaderSummary

    @property
    def reply(self) -> str:
        return REPLY_OVER_LIMITS.format(why=self.why)

    @property
    def explanation(self) -> str:
        return EXPLAIN_OVER_LIMITS.format(why=self.why)

    def finding(self, policy: Policy) -> tuple[str, float, str]:
        """The (symbol, score, reason) the refusal record shows, scored under ``policy``."""
        return OVER_LIMITS_SYMBOL, policy.score_of(OVER_LIMITS_SYMBOL, lookup(OVER_LIMITS_SYMBOL).score), self.why


def check_limits(raw: bytes) -> OverLimits | None:
    """The pre-scan at DATA (linear, no parse): None for mail within the MIME limits, else why it is over and the
    headers of its refusal record (read from its own header block only)."""
    why = scan(raw).over
    return None if why is None else OverLimits(why, summarize_headers(top_header_block(raw)))


def top_header_block(raw: bytes) -> bytes:
    """The mail's own header block, at most ``max_header_block_bytes`` of it: enough for :func:`summarize_headers`
    of a mail that is not parsed (its body may hold millions of lines)."""
    head = raw[:LIMITS.max_header_block_bytes]
    end = re.search(rb"\r?\n\r?\n", head)
    return head[:end.start()] + b"\r\n\r\n" if end else head + b"\r\n\r\n"


def summarize_headers(data: bytes) -> HeaderSummary:
    """Subject, From and Message-ID of a raw mail, decoded; parse problems become defects, never exceptions. Only the
    mail's own header block is read (the parser would otherwise walk every line of the body as well)."""
    try:
        msg = BytesHeaderParser(policy=compat32).parsebytes(top_header_block(data))
    except Exception as exc:
        return HeaderSummary(None, None, None, (f"unparseable header block: {type(exc).__name__}",))
    defects = tuple(type(d).__name__ for d in msg.defects)
    mid = msg.get("Message-ID")
    return HeaderSummary(_decoded(msg.get("Subject")), _decoded(msg.get("From")),
                         " ".join(str(mid).split())[:MAX_HEADER_VALUE] if mid else None, defects)


# --- the parsed mail every content check reads --------------------------------------------------------------------

#: Most bytes of decoded text kept for the content checks (rules, Bayes); the raw mail is scanned whole by clamd.
MAX_TEXT = 512 * 1024
#: Most MIME parts walked (the scan refuses mail with more; should the parser still see more, the mail gets a
#: MIME_TOO_MANY_PARTS defect and the rest is not looked at).
MAX_PARTS = LIMITS.max_parts
#: The answer at DATA to mail over the MIME limits (RFC 3463 X.6.0: other or undefined media error), and how its
#: refusal record explains itself (":func:`tenants.tracking.reject_reason`" reads "mime" from it).
REPLY_OVER_LIMITS = "554 5.6.0 Message refused: its MIME structure is over our limits ({why})"
EXPLAIN_OVER_LIMITS = "reject (mime): over the MIME limits: {why}"
#: The symbol of a mail whose structure is over the limits (refused at DATA, or its parse stopped on its budget).
OVER_LIMITS_SYMBOL = "MIME_LIMIT"

_URI_RE = re.compile(r"""(?i)\b(?:https?://|www\.)[^\s<>"'()\[\]{}]+""")
_HREF_RE = re.compile(r"""(?i)\b(?:href|src|action)\s*=\s*["']?([^"'\s>]+)""")


@dataclass
class Attachment:
    """A leaf MIME part that is not body text: its declared name and type, and its decoded bytes."""

    filename: str | None
    declared_type: str
    data: bytes
    inline: bool = False


@dataclass
class ParsedMail:
    """One parse of a raw mail, shared by every content check. Built by :func:`parse_mail`, which never raises."""

    raw: bytes
    message: EmailMessage | None
    #: (name, value) of every top-level header in order, values decoded and unfolded.
    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str = ""  # decoded text/plain parts
    html: str = ""  # decoded text/html parts, as markup
    html_text: str = ""  # what the HTML shows (no tags, no script/style)
    uris: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    #: Which MIME limit the mail passes (then nothing, or only part of it, was parsed); None when within them.
    over_limits: str | None = None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        return next((v for n, v in self.headers if n.lower() == lname), None)

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]


class _HtmlText(HTMLParser):
    """Visible text of an HTML part: script and style are dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip += 1
        elif tag in ("br", "p", "div", "tr", "li"):
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.out.append(data)


def html_to_text(html: str) -> str:
    parser = _HtmlText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # HTMLParser is lenient; anything left is a broken mail, which keeps what was read
        pass
    return re.sub(r"[ \t\r\f\v]+", " ", "".join(parser.out)).strip()


def _header_value(value: object) -> str:
    try:
        return one_line(value)
    except Exception:
        return ""


def parse_mail(raw: bytes) -> ParsedMail:
    """Parse once (``email.policy.default``, bounded: see :mod:`tenants.mail.mimetext`); parse problems become
    ``defects``, never exceptions. A mail over the MIME limits is not parsed, or only as far as its budget went."""
    over = scan(raw).over
    if over is not None:
        return ParsedMail(raw, None, defects=[f"over the MIME limits: {over}"], over_limits=over)
    budget = Budget(LIMITS)
    try:
        msg = parse_message(raw, budget)
    except MimeLimitExceeded as exc:
        return ParsedMail(raw, None, defects=[f"over the MIME limits: {exc}"], over_limits=str(exc))
    except Exception as exc:
        return ParsedMail(raw, None, defects=[f"unparseable: {type(exc).__name__}"])
    out = ParsedMail(raw, msg)
    try:
        fields = header_items(msg, budget)
    except MimeLimitExceeded as exc:
        out.over_limits = str(exc)
        return out
    out.headers = [(name, _header_value(value) if value is not None else "") for name, value in fields]
    out.defects.extend(f"bad header: {name}" for name, value in fields if value is None)
    parts = split_parts(msg, max_parts=MAX_PARTS, budget=budget)
    out.defects.extend(parts.defects)
    out.over_limits = parts.over_limits
    if parts.truncated and parts.over_limits is None:
        out.defects.append("MIME_TOO_MANY_PARTS")
    out.attachments = [Attachment(leaf.filename, leaf.content_type, leaf.data, inline=leaf.disposition == "inline")
                       for leaf in parts.leaves]
    out.text = "\n".join(parts.texts)[:MAX_TEXT]
    out.html = "\n".join(parts.htmls)[:MAX_TEXT]
    out.html_text = html_to_text(out.html) if out.html else ""
    seen: dict[str, None] = {}
    for found in _URI_RE.findall(out.text + "\n" + out.html_text):
        seen[found.rstrip(".,;:!?")] = None
    for found in _HREF_RE.findall(out.html):
        if found.lower().startswith(("http:", "https:", "www.")):
            seen[html_unescape(found)] = None
    out.uris = list(seen)[:1000]
    return out


def prefix_subject(raw: bytes, prefix: str) -> bytes:
    """The mail with ``prefix`` put in front of its Subject (added when there is none); the body is untouched."""
    if not prefix:
        return raw
    end = raw.find(b"\r\n\r\n")
    sep = b"\r\n"
    if end < 0:
        end = raw.find(b"\n\n")
        sep = b"\n"
    head, body = (raw[:end], raw[end:]) if end >= 0 else (raw, b"")
    tag = prefix.encode("utf-8", "replace")
    match = re.search(rb"(?im)^subject:[ \t]*", head)
    if match is None:
        return head + sep + b"Subject: " + tag + body
    return head[:match.end()] + tag + b" " + head[match.end():] + body
