"""A cheap pre-scan of a raw mail's MIME structure, so that no parser ever runs on a mail over the MIME limits.

The standard library parser builds an object per part and a string per line, and re-parses structured header fields
on every access: a 10 MB mail of a million empty parts costs it minutes of CPU and gigabytes of memory. This scan
walks the bytes the way ``email.feedparser`` reads them (header blocks, ``Content-Type`` boundaries, delimiter lines,
``message/*`` bodies, ``message/delivery-status`` blocks) with a few regular-expression searches per part, and stops
at the first limit it passes. The ingress refuses such mail at DATA; the quarantine views show "not rendered".

Edge cases the scan reads differently from the parser (encoded words in a boundary, say) cannot undo the bounds:
:func:`tenants.mail.mimetext.parse_message` counts parts and CPU time itself and stops the parse (see :class:`Budget`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.utils import collapse_rfc2231_value, decode_params, quote, unquote

#: Most MIME parts in one mail, the mail itself and every container and nested message included (as ``walk()``
#: yields them). The parser spends about 0.1 ms and a few KiB per part; real mail rarely has more than a few dozen.
MAX_PARTS = 500
#: Deepest nesting of multiparts and attached messages (the mail itself is level 0). The parser tests every line
#: against each enclosing boundary, so its cost per line grows with the depth; forwards of forwards stay far below.
MAX_DEPTH = 20
#: Most lines in the whole mail (CRLF, LF and CR each end one). The parser keeps a string per line (about 90 bytes
#: each, some 0.8 s per million); base64 at 76 characters a line puts a 50 MB mail at 650,000 lines.
MAX_LINES = 1_000_000
#: Most bytes in one header block (the mail's own, or one part's).
MAX_HEADER_BLOCK_BYTES = 256 * 1024
#: Most bytes in one header field, continuation lines included (decoding one takes time that grows faster than its
#: length: 0.3 s at 100 KiB, 14 s at 1 MiB).
MAX_HEADER_FIELD_BYTES = 64 * 1024
#: Most bytes in one Content-Type or Content-Disposition field: their parameters are split again on every read, in
#: time that grows with the square of the field's length (a long RFC 2231 file name takes about 1 KiB).
MAX_MIME_FIELD_BYTES = 4 * 1024
#: Most parameters (semicolons) in all the Content-Type and Content-Disposition fields of the mail together: each
#: costs about 0.1 ms every time a part's type, name or charset is read; real parts carry two to five.
MAX_MIME_PARAMS = 5_000
#: Most header lines in all the header blocks of the mail together (about 50 µs each to parse and read back).
MAX_HEADER_LINES = 10_000
#: Most boundary tests: the parser tests every line against the boundary of each multipart around it (about 0.25 µs
#: a test), so lines times that depth. A 50 MB attachment three multiparts deep makes two million.
MAX_LINE_TESTS = 5_000_000
#: CPU seconds one parse (and one walk of the parts) may use once the scan has passed, checked as the parser goes;
#: a 50 MB mail within the limits takes about 2.5 s.
PARSE_CPU_SECONDS = 5.0


@dataclass(frozen=True)
class MimeLimits:
    """The bounds a mail must keep to be parsed; the ingress and the quarantine views use the same ones."""

    max_parts: int = MAX_PARTS
    max_depth: int = MAX_DEPTH
    max_lines: int = MAX_LINES
    max_header_block_bytes: int = MAX_HEADER_BLOCK_BYTES
    max_header_field_bytes: int = MAX_HEADER_FIELD_BYTES
    max_mime_field_bytes: int = MAX_MIME_FIELD_BYTES
    max_mime_params: int = MAX_MIME_PARAMS
    max_header_lines: int = MAX_HEADER_LINES
    max_line_tests: int = MAX_LINE_TESTS
    parse_cpu_seconds: float = PARSE_CPU_SECONDS


LIMITS = MimeLimits()
#: Longest header value (unfolded) the parser reads structurally (addresses, MIME parameters); a longer one is read as
#: plain text (:class:`tenants.mail.mimetext.BoundedPolicy`). The structured reader takes time that grows with the
#: square
#: of a field's length on hostile input (comments, quotes, long phrases): 0.5 s for 4 KiB of comments, 7 s for 16 KiB;
#: at this length a few milliseconds.
STRUCTURED_MAX_CHARS = 512


@dataclass(frozen=True)
class MimeScan:
    """What the scan counted. ``over`` says which limit the mail passes (the scan stopped there), None if none."""

    parts: int
    depth: int
    lines: int
    header_lines: int
    over: str | None = None


class MimeLimitExceeded(Exception):
    """A mail is over the MIME limits; the message says which one, in words fit for a reply or a page."""


class Budget:
    """The parse's own bound, for what the scan may have read differently: parts made and CPU seconds used by this
    thread. :meth:`part` is called for every part the parser makes, :meth:`check` as it goes."""

    def __init__(self, limits: MimeLimits = LIMITS) -> None:
        self.limits = limits
        self.parts = 0
        self._deadline = time.thread_time() + limits.parse_cpu_seconds

    def part(self) -> None:
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise MimeLimitExceeded(f"more than {self.limits.max_parts} MIME parts")
        self.check()

    def check(self) -> None:
        if time.thread_time() > self._deadline:
            raise MimeLimitExceeded(f"parsing took more than {self.limits.parse_cpu_seconds:g} s of CPU")


# --- the scan -------------------------------------------------------------------------------------------------------

#: One header line as ``email.feedparser`` knows it (its ``headerRE``), then its end; a last line may have no end.
_HEADER_LINE = rb"(?:From |[\x21-\x39\x3b-\x7e]*:|[\t ])[^\r\n]*"
_HEADER_BLOCK = re.compile(rb"(?:" + _HEADER_LINE + rb"(?:\r\n|\r|\n))*(?:" + _HEADER_LINE + rb"\Z)?")
_LINE_END = re.compile(rb"\r\n|\r|\n")
#: The start of a field: a line that is not a continuation.
_FIELD_START = re.compile(rb"(?:\A|(?<=[\r\n]))[^\t \r\n]")
#: The first line of a Content-Type field, and a field's continuation lines.
_CONTENT_TYPE = re.compile(rb"(?:\A|(?<=[\r\n]))content-type:", re.IGNORECASE)
_MIME_FIELD = re.compile(rb"(?:\A|(?<=[\r\n]))content-(?:type|disposition):", re.IGNORECASE)
_FIELD_REST = re.compile(rb"[^\r\n]*(?:(?:\r\n|\r|\n)[\t ][^\r\n]*)*")
#: A line ending followed by another (each is one blank line; message/delivery-status makes a part of each).
_BLANK_AFTER_LINE = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?=[\r\n])")
#: The characters ``str.splitlines()`` removes when the parser unfolds a field (it reads bytes as ASCII).
_UNFOLD = b"\r\n\x0b\x0c\x1c\x1d\x1e"
#: One parameter of a Content-Type value and the semicolon after it: escaped quotes, quoted strings (which may hold
#: semicolons), any other character but a semicolon.
_PARAM_SEGMENT = re.compile(r'((?:\\"|"(?:\\"|[^"])*"?|\\|[^";\\])*)(;|\Z)')
#: Parameter values as ``email._header_value_parser`` reads them: blanks and comments first, then a quoted string or
#: a token (an RFC 2231 extended value, ``name*=utf-8''...``, may hold quotes and percent signs).
_CFWS = re.compile(r"(?:[ \t]|\((?:[^()\\]|\\.)*\))*")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"?')
_ESCAPED = re.compile(r"\\(.)")
_TOKEN = re.compile(r"""[^ \t()<>@,;:\\"/\[\]?=*']*""")
_EXTENDED_TOKEN = re.compile(r"""[^ \t()<>@,;:\\"/\[\]?=*]*""")
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[bBqQ]\?[^?]*\?=")


class _Over(Exception):
    pass


@dataclass(frozen=True)
class _Delimiter:
    start: int  # where its line starts
    end: int  # after its line ending
    boundary: bytes
    close: bool


class _Delimiters:
    """Finds delimiter lines (``--b`` or ``--b--``, then blanks) of any of some boundaries. The search looks for the
    literal first and checks that it starts a line (fast); after many that do not (a body built to mislead), it
    searches for a line ending followed by one instead, which stays linear."""

    #: Matches not at the start of a line before the search switches to the anchored pattern.
    FAST_MISSES = 32

    def __init__(self, boundaries: list[bytes]) -> None:
        names = b"|".join(re.escape(b) for b in sorted(set(boundaries), key=len, reverse=True))
        tail = rb"--(" + names + rb")(--)?[ \t]*(?:\r\n|\r|\n|\Z)"
        self._fast = re.compile(tail)
        self._anchored = re.compile(rb"[\r\n]" + tail)

    @staticmethod
    def _found(m: re.Match[bytes], start: int) -> _Delimiter:
        return _Delimiter(start, m.end(), m.group(1), m.group(2) is not None)

    def match(self, raw: bytes, pos: int) -> _Delimiter | None:
        """The delimiter line at ``pos`` (a line start), if it is one."""
        m = self._fast.match(raw, pos)
        return self._found(m, pos) if m is not None else None

    def search(self, raw: bytes, pos: int, endpos: int | None = None) -> _Delimiter | None:
        """The first delimiter line starting at or after ``pos`` (a line start) and ending by ``endpos``."""
        end = len(raw) if endpos is None else endpos
        for _ in range(self.FAST_MISSES):
            m = self._fast.search(raw, pos, end)
            if m is None:
                return None
            if m.start() == 0 or raw[m.start() - 1] in b"\r\n":
                return self._found(m, m.start())
            pos = m.start() + 1
        m = self._anchored.search(raw, pos, end)
        return self._found(m, m.start() + 1) if m is not None else None


def _split_params(value: str) -> list[str]:
    """``value`` split at semicolons outside quoted strings, as ``email.message._parseparam`` splits it (a quote after
    a backslash opens or closes none); one step per parameter."""
    return [m.group(1) for m in _PARAM_SEGMENT.finditer(value) if m.group(1) or m.group(2)]


def _decode_word(found: re.Match[str]) -> str:
    try:
        return str(make_header(decode_header(found.group())))
    except Exception:  # not a valid encoded word: the parser keeps the text
        return found.group()


def _param_value(text: str, extended: bool) -> str | None:
    """A parameter's value as the header parser reads it: comments skipped; a quoted string unescaped (encoded words
    in it decoded), else a token, which ends at a special character or a blank. None where it reads no value."""
    text = text[_CFWS.match(text).end():]  # type: ignore[union-attr]
    if text.startswith('"'):
        inner = _QUOTED.match(text).group(1)  # type: ignore[union-attr]
        value = _ESCAPED.sub(r"\1", inner)
        return _ENCODED_WORD.sub(_decode_word, value) if "=?" in value else value
    token = (_EXTENDED_TOKEN if extended else _TOKEN).match(text).group()  # type: ignore[union-attr]
    if not token or (not extended and text[len(token):].startswith("'")):
        return None
    return token


def content_type(value: bytes | None, default: str) -> tuple[str, bytes | None]:
    """The type and boundary the parser reads from a raw (folded) Content-Type value, as ``get_content_type()`` and
    ``get_boundary()`` do; ``default`` when there is no field. Unusual syntax may read otherwise (the parser
    re-renders the field first); :class:`Budget` bounds the parse whatever this says."""
    if value is None:
        return default, None
    text = value.translate(None, _UNFOLD).decode("ascii", "surrogateescape").lstrip(" \t")
    # A short field is read by the structured header parser, a long one as plain text
    # (tenants.mail.mimetext.BoundedPolicy).
    structured = len(text) <= STRUCTURED_MAX_CHARS
    ctype = text.partition(";")[0].strip().lower()
    if ctype.count("/") != 1:
        ctype = "text/plain"
    if not ctype.startswith("multipart/"):
        return ctype, None
    segments = _split_params(text)
    params: list[tuple[str, str]] = [("", "")]
    for seg in segments[1:]:
        name, eq, val = seg.partition("=")
        name = name.strip().lower()
        if not eq:
            continue
        found = _param_value(val, name.endswith("*")) if structured else val.strip()
        if found is not None:
            params.append((name, '"' + quote(found) + '"' if structured else found))
    try:
        decoded = decode_params(params)
    except Exception:  # a broken RFC 2231 continuation: the parser would read no boundary either
        return ctype, None
    for key, got in decoded[1:]:
        if key == "boundary":
            plain: str | tuple[str | None, str | None, str] = (
                (got[0], got[1], unquote(got[2])) if isinstance(got, tuple) else unquote(got))
            boundary = collapse_rfc2231_value(plain).rstrip()  # type: ignore[arg-type]
            try:
                return ctype, boundary.encode("ascii", "surrogateescape")
            except UnicodeEncodeError:  # decoded to a character no line can hold: no delimiter ever matches
                return ctype, None
    return ctype, None


class _Scanner:
    """One scan: walks the parts in the order the parser reads them, counting against the limits."""

    def __init__(self, raw: bytes, limits: MimeLimits) -> None:
        self.raw = raw
        self.limits = limits
        self.parts = 0
        self.depth = 0
        self.header_lines = 0
        self.mime_params = 0
        self.lines = 0
        self.line_tests = 0

    def _lines(self, start: int, end: int) -> int:
        """Lines from ``start`` to ``end`` (a last one without its ending counts too), added to the mail's count."""
        raw = self.raw
        lines = raw.count(b"\n", start, end) + raw.count(b"\r", start, end) - raw.count(b"\r\n", start, end)
        if end > start and raw[end - 1] not in b"\r\n":
            lines += 1
        self.lines += lines
        if self.lines > self.limits.max_lines:
            raise _Over(f"more than {self.limits.max_lines} lines")
        return lines

    def _tested(self, start: int, end: int, boundaries: int) -> None:
        """Count the lines of a body, preamble or epilogue, and the boundary tests the parser makes on them."""
        if end <= start:
            return
        self.line_tests += self._lines(start, end) * boundaries
        if self.line_tests > self.limits.max_line_tests:
            raise _Over(f"more than {self.limits.max_line_tests} boundary tests (lines times the multiparts "
                        "around them)")

    def _outer(self, bounds: _Delimiters | None, pos: int) -> int:
        """Where the first delimiter line of an enclosing multipart at or after ``pos`` starts (the parser's end of
        the current part), or the end of the mail."""
        found = bounds.search(self.raw, pos) if bounds is not None else None
        return found.start if found is not None else len(self.raw)

    def _headers(self, start: int, end: int) -> bytes | None:
        """Check one header block against the limits; its first Content-Type value (raw), if any."""
        block = self.raw[start:end]
        self.header_lines += self._lines(start, end)
        limits = self.limits
        if self.header_lines > limits.max_header_lines:
            raise _Over(f"more than {limits.max_header_lines} header lines")
        if len(block) > limits.max_header_block_bytes:
            raise _Over(f"a header block of more than {limits.max_header_block_bytes} bytes")
        if len(block) > limits.max_header_field_bytes:
            starts = [m.start() for m in _FIELD_START.finditer(block)] + [len(block)]
            if any(b - a > limits.max_header_field_bytes for a, b in zip(starts, starts[1:], strict=False)):
                raise _Over(f"a header field of more than {limits.max_header_field_bytes} bytes")
        for found in _MIME_FIELD.finditer(block):
            rest = _FIELD_REST.match(block, found.end())
            if rest is None:
                continue
            if rest.end() - found.start() > limits.max_mime_field_bytes:
                raise _Over(f"a Content-Type or Content-Disposition field of more than "
                            f"{limits.max_mime_field_bytes} bytes")
            self.mime_params += rest.group().count(b";")
            if self.mime_params > limits.max_mime_params:
                raise _Over(f"more than {limits.max_mime_params} Content-Type and Content-Disposition parameters")
        first = _CONTENT_TYPE.search(block)
        if first is None:
            return None
        rest = _FIELD_REST.match(block, first.end())
        return rest.group() if rest is not None else b""

    def entity(self, pos: int, bounds: _Delimiters | None, active: list[bytes], depth: int, default: str) -> int:
        """Scan the part at ``pos`` (inside the multiparts whose boundaries are ``active``); where it ends."""
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise _Over(f"more than {self.limits.max_parts} MIME parts")
        self.depth = max(self.depth, depth)
        if depth > self.limits.max_depth:
            raise _Over(f"MIME parts nested more than {self.limits.max_depth} deep")
        raw = self.raw
        header = _HEADER_BLOCK.match(raw, pos)
        hend = header.end() if header is not None else pos
        # A delimiter of an enclosing multipart ends the part even among its header lines (or right after them).
        # (The part is still of its type: a message/* part so cut short holds an empty message, and so on.)
        line_end = _LINE_END.search(raw, hend)
        cut = bounds.search(raw, pos, line_end.end() if line_end else len(raw)) if bounds is not None else None
        if cut is not None:
            hend = body = cut.start
        else:
            blank = _LINE_END.match(raw, hend)  # the blank line after the header block
            body = blank.end() if blank is not None else hend
        ctype, boundary = content_type(self._headers(pos, hend), default)
        if ctype == "message/delivery-status":
            return self.status_blocks(body, bounds, len(active))
        if ctype.startswith("message/"):
            return self.entity(body, bounds, active, depth + 1, "text/plain")
        if not ctype.startswith("multipart/") or boundary is None:
            end = self._outer(bounds, body)
            self._tested(body, end, len(active))
            return end
        return self.multipart(body, bounds, active, boundary, depth, ctype == "multipart/digest")

    def status_blocks(self, pos: int, bounds: _Delimiters | None, enclosing: int) -> int:
        """A message/delivery-status body: the parser makes a part of each block of header lines, and a blank line
        ends a block. A block may declare a type of its own (a multipart inside, say): then every line counts as a
        part, which is never fewer than the parser makes."""
        end = self._outer(bounds, pos)
        self._tested(pos, end, enclosing + 1)
        typed = _CONTENT_TYPE.search(self.raw, pos, end) is not None
        pattern = _LINE_END if typed else _BLANK_AFTER_LINE
        blocks = 2 if _LINE_END.match(self.raw, pos, end) else 1  # a blank first line counts too
        for _ in pattern.finditer(self.raw, pos, end):
            blocks += 1
            if self.parts + blocks > self.limits.max_parts:
                raise _Over(f"more than {self.limits.max_parts} MIME parts")
        self.parts += blocks
        return end

    def multipart(self, pos: int, bounds: _Delimiters | None, active: list[bytes], boundary: bytes,
                  depth: int, digest: bool) -> int:
        """The body of a multipart: preamble, parts between its delimiter lines, epilogue; where it ends."""
        raw = self.raw
        inner = [*active, boundary]
        both = _Delimiters(inner)
        outer = set(active)
        default = "message/rfc822" if digest else "text/plain"
        while True:
            found = both.search(raw, pos)
            self._tested(pos, found.start if found is not None else len(raw), len(inner))
            if found is None:
                return len(raw)
            if found.boundary in outer:
                return found.start  # an enclosing multipart's delimiter ends this one
            if found.close:  # the close delimiter: the rest up to the enclosing multipart's delimiter is epilogue
                end = self._outer(bounds, found.end)
                self._tested(found.end, end, len(active))
                return end
            # A run of delimiter lines opens one part; an enclosing delimiter stops the run (and this multipart).
            pos = found.end
            while pos < len(raw):
                again = both.match(raw, pos)
                if again is None or again.boundary in outer:
                    break
                pos = again.end
            pos = self.entity(pos, both, inner, depth + 1, default)
            if pos >= len(raw):
                return pos


def scan(raw: bytes, limits: MimeLimits = LIMITS) -> MimeScan:
    """Count the parts, nesting, lines and header lines of ``raw``, stopping at the first limit it passes.

    Linear in the size of the mail: a few C-level searches and counts per part and per header block, none per line
    (delimiter lines are not counted as lines: there are at most as many as parts).
    """
    scanner = _Scanner(raw, limits)
    over = None
    try:
        scanner.entity(0, None, [], 0, "text/plain")
    except _Over as exc:
        over = str(exc)
    except RecursionError:  # only with a limit above what the interpreter's stack allows
        over = f"MIME parts nested more than {limits.max_depth} deep"
    return MimeScan(parts=scanner.parts, depth=scanner.depth, lines=scanner.lines, header_lines=scanner.header_lines,
                    over=over)
