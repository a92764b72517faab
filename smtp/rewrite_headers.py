"""Header edits for :mod:`smtp.rewrite` (and the :class:`EditResult` every edit returns): a header block is spliced,
never re-serialised.

Only the fields an edit touches change; every other byte of the mail stays as it came (a DKIM signature over the
untouched fields still verifies). Values are cleaned first (a control character, CR and LF included, becomes a space,
so no value can start a header field of its own), folded at 78 characters and RFC 2047 encoded when not ASCII.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.headerregistry import HeaderRegistry, UnstructuredHeader
from email.policy import SMTP

#: A field name (RFC 5322 2.2: printable US-ASCII except the colon), at most this long.
FIELD_NAME_RE = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")
#: A line that continues the header block the way ``email.feedparser`` reads it: a field or a continuation line.
_HEADER_LINE_RE = re.compile(rb"[\x21-\x39\x3b-\x7e]*:|[ \t]")
_LINE_END_RE = re.compile(rb"\r\n|\r|\n")
#: Fields that carry the MIME structure of the mail: editing them by rule would break every part under them.
MIME_STRUCTURE_FIELDS = frozenset({"content-type", "content-transfer-encoding", "mime-version"})
#: Longest line SMTP allows (RFC 5321 4.5.3.1.6: 1000 octets with the CRLF).
MAX_LINE = 998
#: Longest RFC 2047 encoded word (section 2: 75 characters, the charset and encoding markers included).
MAX_ENCODED_WORD = 75
#: Header classes that read every value as plain text (RFC 2047 words where needed).
_PLAIN = HeaderRegistry(default_class=UnstructuredHeader, use_default_map=False)


@dataclass(frozen=True)
class Field:
    """One header field of a header block: its name and the byte range of all its lines (line ends included)."""

    name: str
    start: int
    end: int


@dataclass(frozen=True)
class HeaderBlock:
    """Where an entity's header block lies in the raw bytes: fields in ``[start, end)``; the body starts at ``body``.

    ``separated`` is False when no empty line ends the block (the parser then reads the rest as body)."""

    start: int
    end: int
    body: int
    separated: bool
    fields: tuple[Field, ...]

    def find(self, name: str) -> list[Field]:
        lname = name.lower()
        return [f for f in self.fields if f.name.lower() == lname]


def read_block(raw: bytes, start: int = 0, end: int | None = None, *, top: bool = False) -> HeaderBlock:
    """The header block starting at ``start``, read like ``email.feedparser`` does: field and continuation lines up
    to an empty line (or up to the first other line, which starts the body). ``top`` allows an mbox ``From `` line."""
    end = len(raw) if end is None else end
    pos = start
    fields: list[Field] = []
    first = True
    while pos < end:
        m = _LINE_END_RE.search(raw, pos, end)
        line_end = m.end() if m else end
        line = raw[pos:m.start() if m else end]
        if not line:
            return HeaderBlock(start, pos, line_end, m is not None, tuple(fields))
        if first and top and line.startswith(b"From "):
            pos, first = line_end, False
            continue
        first = False
        if line[:1] in (b" ", b"\t") and fields:
            last = fields[-1]
            fields[-1] = Field(last.name, last.start, line_end)
        elif _HEADER_LINE_RE.match(line):
            name = line.split(b":", 1)[0].decode("ascii", "replace") if b":" in line else ""
            fields.append(Field(name, pos, line_end))
        else:
            return HeaderBlock(start, pos, pos, False, tuple(fields))
        pos = line_end
    return HeaderBlock(start, pos, pos, False, tuple(fields))


def clean_value(value: str) -> tuple[str, bool]:
    """``value`` on one line: every control or format character (CR, LF, NUL, ...) becomes a space, runs of white
    space one space. True when something had to change besides the white space."""
    cleaned = "".join(" " if unicodedata.category(ch)[0] == "C" and ch != "\t" else ch for ch in value)
    return " ".join(cleaned.split()), any(unicodedata.category(ch)[0] == "C" and ch != "\t" for ch in value)


def valid_name(name: str) -> bool:
    return bool(FIELD_NAME_RE.fullmatch(name))


def decoded(value: str) -> str:
    """A raw header value decoded (RFC 2047) and unfolded; on undecodable words the raw text."""
    try:
        text = str(make_header(decode_header(value)))
    except Exception:
        text = value
    return " ".join(text.split())


def fold_field(name: str, value: str) -> bytes:
    """``Name: value`` CRLF, folded at 78 characters, non-ASCII as RFC 2047 words: structured (addresses keep their
    angle brackets outside the encoded words) when the structured reading keeps the text, else as plain text."""
    out = ""
    try:
        out = SMTP.header_factory(name, value).fold(policy=SMTP)
        if decoded(out.split(":", 1)[1]) != " ".join(value.split()):
            out = ""
    except Exception:
        out = ""
    if not out:
        out = _PLAIN(name, value).fold(policy=SMTP)
    data = out.encode("ascii", "replace")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def field_value(raw: bytes, f: Field) -> str:
    """The raw value of a field (after the colon), unfolded, read as UTF-8 where it is 8-bit."""
    text = raw[f.start:f.end].decode("utf-8", "replace")
    return " ".join(text.split(":", 1)[1].split()) if ":" in text else ""


def splice(raw: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """``raw`` with each ``[start, end)`` replaced by its bytes; the ranges must not overlap."""
    out: list[bytes] = []
    pos = 0
    for start, end, data in sorted(edits, key=lambda e: (e[0], e[1])):
        out.append(raw[pos:start])
        out.append(data)
        pos = end
    out.append(raw[pos:])
    return b"".join(out)


def with_crlf(raw: bytes) -> bytes:
    """``raw`` with every LF made CRLF."""
    return raw.replace(b"\n", b"\r\n")


def lf_only(raw: bytes) -> bool:
    """True for a mail with LF line ends and no CRLF at all (read from a file). A bare LF inside a CRLF mail is
    content (an attachment's bytes, say), and is left alone."""
    return b"\n" in raw and b"\r\n" not in raw


def encoded_words(text: str) -> str:
    """``text`` as RFC 2047 encoded words (UTF-8, base64, whole characters per word, at most 75 characters each)
    when it is not ASCII; as it is when it is. Spaces at either end stay inside the words, so they stay text."""
    if text.isascii():
        return text
    words: list[str] = []
    chunk = ""
    for ch in text:
        if chunk and len(_word(chunk + ch)) > MAX_ENCODED_WORD:
            words.append(_word(chunk))
            chunk = ""
        chunk += ch
    words.append(_word(chunk))
    return "\r\n ".join(words)  # folded between words: the white space there is not text (RFC 2047 6.2)


def _word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="


def tagged_subject_field(raw: bytes, f: Field, tag: str) -> bytes:
    """The Subject field ``f`` with ``tag`` put in front of its value (folded after the tag when the line would pass
    78 characters). A non-ASCII tag becomes encoded words; when the value itself starts with an encoded word, the
    space after the tag goes inside the tag's words (white space between two encoded words is not text)."""
    data = raw[f.start:f.end]
    m = re.match(rb"[^:]*:[ \t]*", data)
    if m is None:  # never: read_block makes fields of lines with a colon only
        return data
    rest = data[m.end():]
    lead = data[:m.end()].rstrip(b" \t") + b" "
    starts_with_word = rest.startswith(b"=?")
    if tag.isascii():
        head, sep = tag.encode("ascii"), b" "
    elif starts_with_word:
        head, sep = encoded_words(tag + " ").encode("ascii"), b" "
    else:
        head, sep = encoded_words(tag).encode("ascii"), b" "
    if rest[:1] in (b"\r", b"\n", b""):  # an empty first line: the value (if any) is on continuation lines
        return lead + head + rest
    first_line = _LINE_END_RE.search(rest)
    first_len = len(lead) + len(head) + 1 + (first_line.start() if first_line else len(rest))
    if first_len > 78:
        sep = b"\r\n "
    return lead + head + sep + rest


# --- the edits ----------------------------------------------------------------------------------------------------

Edit = tuple[int, int, bytes]


@dataclass
class EditResult:
    data: bytes  # the new raw mail (CRLF)
    changed: bool
    notes: list[str]  # human-readable, e.g. "disclaimer skipped: the mail is signed (multipart/signed)"
    #: (filename, content type, decoded bytes) of removed attachments
    removed: list[tuple[str, str, bytes]] = field(default_factory=list)


def unchanged(raw: bytes, note: str) -> EditResult:
    return EditResult(raw, False, [note])


def on_crlf(raw: bytes, edit: Callable[[bytes], EditResult]) -> EditResult:
    """``edit`` applied to ``raw`` with CRLF line ends; ``raw`` itself (not converted) when nothing changed."""
    crlf = with_crlf(raw) if lf_only(raw) else raw
    result = edit(crlf)
    if not result.changed:
        return EditResult(raw, False, result.notes)
    if crlf is not raw:
        result.notes.insert(0, "line ends made CRLF")
    return result


# --- headers --------------------------------------------------------------------------------------------------------

def _check_field(action: str, name: str) -> str | None:
    if not valid_name(name):
        return f"header not {action}: {name!r} is not a valid field name"
    if name.lower() in MIME_STRUCTURE_FIELDS:
        return f"header not {action}: {name} carries the MIME structure"
    return None


def _clean(name: str, value: str, notes: list[str]) -> str:
    text, dirty = clean_value(value)
    if dirty:
        notes.append(f"control characters (line breaks) in the value of {name} became spaces")
    return text


def _top_insert(block: HeaderBlock) -> int:
    """Where a field goes "at the top": before the first field (so after an mbox ``From `` line)."""
    return block.fields[0].start if block.fields else block.end


def add_header(raw: bytes, name: str, value: str) -> EditResult:
    """The mail with ``Name: value`` added at the top of its header block."""
    return on_crlf(raw, lambda crlf: _write_header(crlf, name, value, replace=False))


def set_header(raw: bytes, name: str, value: str) -> EditResult:
    """The mail with every ``name`` field replaced by one ``Name: value`` (where the first stood; at the top when the
    mail has none)."""
    return on_crlf(raw, lambda crlf: _write_header(crlf, name, value, replace=True))


def _write_header(raw: bytes, name: str, value: str, *, replace: bool) -> EditResult:
    """``Name: value`` added at the top, or (``replace``) in place of the ``name`` fields when the mail has some."""
    refused = _check_field("set" if replace else "added", name)
    if refused:
        return unchanged(raw, refused)
    notes: list[str] = []
    text = _clean(name, value, notes)
    block = read_block(raw, top=True)
    found = block.find(name) if replace else []
    line = fold_field(name, text)
    if not found:
        pos = _top_insert(block)
        return EditResult(splice(raw, [(pos, pos, line)]), True, notes + [f"header {name} added"])
    edits: list[Edit] = [(found[0].start, found[0].end, line)] + [(f.start, f.end, b"") for f in found[1:]]
    out = splice(raw, edits)
    return EditResult(out, out != raw, notes + [f"header {name} set"])


def remove_header(raw: bytes, name: str) -> EditResult:
    """The mail without any ``name`` field (the name matched exactly, case aside)."""
    refused = _check_field("removed", name)
    if refused:
        return unchanged(raw, refused)
    block = read_block(raw, top=True)
    found = block.find(name)
    if not found:
        return unchanged(raw, f"header {name} not present")
    out = splice(raw, [(f.start, f.end, b"") for f in found])
    return EditResult(out, True, [f"header {name} removed ({len(found)} field{'s' if len(found) > 1 else ''})"])


def tag_subject(raw: bytes, tag: str) -> EditResult:
    """The mail with ``tag`` and a space put in front of its Subject, unless the Subject holds the tag already (any
    case, anywhere: "Re: [EXTERNAL] ..." is not tagged twice); a mail without one gets ``Subject: tag``."""
    return on_crlf(raw, lambda crlf: _tag_subject(crlf, tag))


def _tag_subject(raw: bytes, tag: str) -> EditResult:
    text, _ = clean_value(tag)
    if not text:
        return unchanged(raw, "subject not tagged: the tag is empty")
    notes: list[str] = []
    block = read_block(raw, top=True)
    found = block.find("Subject")
    if not found:
        return EditResult(splice(raw, [(block.end, block.end, fold_field("Subject", text))]), True,
                          notes + ["subject added with the tag"])
    if text.lower() in decoded(field_value(raw, found[0])).lower():
        return EditResult(raw, False, notes + ["subject already tagged"])
    first = found[0]
    out = splice(raw, [(first.start, first.end, tagged_subject_field(raw, first, text))])
    return EditResult(out, True, notes + ["subject tagged"])
