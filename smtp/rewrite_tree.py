"""The MIME tree of a raw mail as byte ranges, and body re-encoding, for :mod:`smtp.rewrite_parts`.

The standard library parser (bounded: :func:`tenants.mail.mimetext.parse_message`) says what each part is;
:func:`map_mail`
finds where each part lies in the raw bytes, walking the parse and the bytes together, and checks every leaf's bytes
against the parser's payload: when the two readings disagree anywhere (broken MIME read differently), the mail is
not mapped and so not edited. An edit then replaces the bytes of the parts it changes and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message

from smtp.rewrite_headers import MAX_LINE, HeaderBlock, read_block
from tenants.mail.mimescan import LIMITS, Budget, scan
from tenants.mail.mimetext import BODY_TYPES, parse_message

#: Types whose content is covered by a signature or encryption: nothing under them is edited.
SIGNED_TYPES = frozenset({"multipart/signed", "multipart/encrypted", "application/pkcs7-mime",
                          "application/x-pkcs7-mime"})
#: Inline PGP armour in a text body (RFC 4880 7: cleartext signatures; 6.2: encrypted messages).
PGP_RE = re.compile(rb"^-----BEGIN PGP (SIGNED )?MESSAGE-----", re.M)
_LINE_END_RE = re.compile(rb"\r\n|\r|\n")
_NO_TEXT_CTE = frozenset({"7bit", "8bit", "binary", ""})


class Unmapped(Exception):
    """The byte walk and the parser read the mail differently: it is not edited."""


@dataclass
class Node:
    """One MIME entity: its parsed part, its header block and body byte range, and its children (a multipart's
    parts, or the message inside a ``message/*`` part)."""

    part: Message
    head: HeaderBlock
    end: int
    ctype: str
    children: list[Node] = field(default_factory=list)
    #: True when the parser read it as a leaf (a non-multipart, or a broken multipart it kept as text).
    leaf: bool = True
    #: Under a signature or encryption (or the signed entity itself).
    sealed: bool = False
    #: Inside an attached message (``message/*``), or that part itself.
    in_message: bool = False

    @property
    def start(self) -> int:
        return self.head.start

    @property
    def body(self) -> int:
        return self.head.body

    @property
    def disposition(self) -> str | None:
        return _tolerant(self.part.get_content_disposition)

    @property
    def filename(self) -> str | None:
        return _tolerant(self.part.get_filename)

    def is_body(self) -> bool:
        """Body text (what split_parts reads as text or HTML): a text leaf that is no attachment and has no name."""
        return (self.leaf and self.ctype in BODY_TYPES and self.disposition != "attachment" and not self.filename
                and not self.in_message and not self.sealed)

    def walk(self) -> list[Node]:
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out


def map_mail(raw: bytes) -> Node:
    """The mail's tree of byte ranges; raises :class:`Unmapped` when it cannot be mapped safely (over the MIME
    limits, unparseable, or read differently by the parser and the byte walk)."""
    over = scan(raw).over
    if over is not None:
        raise Unmapped(f"the mail is over the MIME limits ({over})")
    try:
        msg = parse_message(raw, Budget(LIMITS))
    except Exception as exc:
        raise Unmapped(f"the mail cannot be parsed ({type(exc).__name__})") from exc
    return _map(raw, msg, 0, len(raw), top=True, sealed=False, in_message=False)


def _tolerant(read: Callable[[], str | None]) -> str | None:
    """What a part's header accessor says, or None when the header is too broken for the email package to read."""
    try:
        return read()
    except Exception:
        return None


def _ctype(part: Message) -> str:
    return _tolerant(part.get_content_type) or "text/plain"


def _map(raw: bytes, part: Message, start: int, end: int, *, top: bool, sealed: bool, in_message: bool) -> Node:
    head = read_block(raw, start, end, top=top)
    ctype = _ctype(part)
    sealed = sealed or ctype in SIGNED_TYPES
    node = Node(part, head, end, ctype, sealed=sealed, in_message=in_message)
    payload = part._payload  # type: ignore[attr-defined]  # the parser's raw text, so no decoding on the way
    if not part.is_multipart():
        if not isinstance(payload, str) or payload.encode("ascii", "surrogateescape") != raw[head.body:end]:
            raise Unmapped("the MIME structure is ambiguous (a part's bytes are not where the parser read them)")
        return node
    node.leaf = False
    subparts = list(payload)
    if ctype.startswith("message/"):
        if ctype == "message/delivery-status":
            node.leaf = True  # header blocks, not a message: nothing in it is edited, it only moves whole
            return node
        if len(subparts) != 1:
            raise Unmapped("the MIME structure is ambiguous (a message part holds more than one message)")
        node.children = [_map(raw, subparts[0], head.body, end, top=False, sealed=sealed, in_message=True)]
        return node
    boundary = part.get_boundary()
    if not boundary:
        raise Unmapped("the MIME structure is ambiguous (a multipart without a boundary)")
    delim = re.compile(rb"(?m)^--" + re.escape(boundary.encode("utf-8", "surrogateescape"))
                       + rb"(--)?[ \t]*(?:\r\n|\r|\n|\Z)")
    ranges: list[tuple[int, int]] = []
    begin: int | None = None
    for m in delim.finditer(raw, head.body, end):
        if begin is not None:
            ranges.append((begin, _before_line_end(raw, begin, m.start())))
        if m.group(1):
            begin = None
            break
        begin = m.end()
    if begin is not None:  # no close delimiter: the last part runs to the end, less its last line end (as parsed)
        ranges.append((begin, _before_line_end(raw, begin, end)))
    if len(ranges) != len(subparts):
        raise Unmapped("the MIME structure is ambiguous (parts counted differently)")
    node.children = [_map(raw, sub, s, e, top=False, sealed=sealed, in_message=in_message)
                     for sub, (s, e) in zip(subparts, ranges, strict=True)]
    return node


def _before_line_end(raw: bytes, begin: int, pos: int) -> int:
    """``pos`` (a delimiter line's start) less the line end before it, which belongs to the delimiter (RFC 2046)."""
    if pos - 2 >= begin and raw[pos - 2:pos] == b"\r\n":
        return pos - 2
    if pos - 1 >= begin and raw[pos - 1:pos] in (b"\n", b"\r"):
        return pos - 1
    return pos


def signed_reason(root: Node, raw: bytes) -> str | None:
    """Why the mail counts as signed or encrypted as a whole (its top entity is), or None."""
    if root.ctype in SIGNED_TYPES:
        kind = {"multipart/signed": "signed", "multipart/encrypted": "encrypted"}.get(root.ctype, "signed or encrypted")
        return f"the mail is {kind} ({root.ctype})"
    bodies = [n for n in root.walk() if n.leaf and n.ctype in BODY_TYPES and not n.in_message]
    if any(PGP_RE.search(raw, n.body, n.end) for n in bodies):
        return "the mail is signed or encrypted (inline PGP)"
    return None


# --- body decoding and encoding -----------------------------------------------------------------------------------

def cte_of(node: Node) -> str:
    value = node.part.get("Content-Transfer-Encoding")
    return " ".join(str(value).split()).lower() if value is not None else ""


def charset_of(node: Node) -> str:
    return _tolerant(node.part.get_content_charset) or "us-ascii"


def decode_body(data: bytes, cte: str) -> bytes:
    """The body bytes under their transfer encoding; raises ValueError on an encoding it does not know or bad
    base64 (a part it cannot read is not rewritten)."""
    if cte in _NO_TEXT_CTE:
        return data
    if cte == "quoted-printable":
        return quopri.decodestring(data)
    if cte == "base64":
        try:
            return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", data), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("bad base64") from exc
    raise ValueError(f"unknown transfer encoding {cte!r}")


def line_end_of(text: str) -> str:
    return "\n" if "\n" in text and "\r\n" not in text else "\r\n"


def encode_body(data: bytes, cte: str) -> tuple[bytes, str]:
    """``data`` encoded for the body of a part that had transfer encoding ``cte``: base64 stays base64,
    quoted-printable stays so; plain bodies stay plain while 7-bit-safe (8-bit when they were 8-bit already) with
    lines of at most 998 octets, else become quoted-printable. Returns the body and its (new) encoding."""
    if cte == "base64":
        return base64.encodebytes(data).replace(b"\n", b"\r\n"), cte
    if cte in _NO_TEXT_CTE:
        long_line = any(len(line) > MAX_LINE for line in _LINE_END_RE.split(data))
        eight_bit = not data.isascii()
        if not long_line and (not eight_bit or cte in ("8bit", "binary")):
            return data, cte
    data = re.sub(rb"\r?\n", b"\r\n", data)  # text in canonical form (RFC 2045 6.7): line breaks are CRLF
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    return re.sub(rb"(?<!\r)\n", b"\r\n", encoded), "quoted-printable"  # its soft breaks use LF without a CRLF


def replace_param(value: str, name: str, new: str) -> str:
    """A Content-Type value with parameter ``name`` set to ``new`` (others kept as they are, RFC 2231 forms of
    ``name`` dropped)."""
    parts = [p for p in _split_params(value)]
    kept = [parts[0].strip()] + [p.strip() for p in parts[1:]
                                  if p.strip() and not re.match(rf"(?i){re.escape(name)}\*?(\*\d+\*?)?\s*=", p.strip())]
    return "; ".join(kept + [f'{name}="{new}"'])


def _split_params(value: str) -> list[str]:
    """A MIME field value split at the semicolons outside quoted strings."""
    out, cur, quoted, escaped = [], "", False, False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    out.append(cur)
    return out
