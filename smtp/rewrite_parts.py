"""Body edits for :mod:`smtp.rewrite`: disclaimers in the text and HTML bodies, attachments replaced by a text.

The MIME tree comes from :func:`smtp.rewrite_tree.map_mail` (so a mail the parser and the byte walk read differently
is never edited); only the edited parts' bytes change, and the result is mapped again before it is returned (a
disclaimer's bodies must read back as the text intended, else the mail stays as it was).
"""

from __future__ import annotations

import codecs
import html as html_lib
import re
import secrets
from collections.abc import Callable

from smtp.rewrite_headers import (
    Edit,
    EditResult,
    HeaderBlock,
    clean_value,
    field_value,
    fold_field,
    on_crlf,
    splice,
    unchanged,
)
from smtp.rewrite_tree import (
    SIGNED_TYPES,
    Node,
    Unmapped,
    charset_of,
    cte_of,
    decode_body,
    encode_body,
    line_end_of,
    map_mail,
    replace_param,
    signed_reason,
)

#: Positions a disclaimer may take in a body.
POSITIONS = ("top", "bottom")
_BODY_OPEN_RE = re.compile(r"(?is)<body\b[^>]*>")
_BODY_CLOSE_RE = re.compile(r"(?is)</body\s*>")
_HTML_CLOSE_RE = re.compile(r"(?is)</html\s*>")
_HEAD_CLOSE_RE = re.compile(r"(?is)</head\s*>")
_HTML_OPEN_RE = re.compile(r"(?is)<html\b[^>]*>")

# --- disclaimers ------------------------------------------------------------------------------------------------------

def _set_fields(raw: bytes, block: HeaderBlock, values: dict[str, str]) -> list[Edit]:
    """Edits that set each field of ``values`` in ``block`` (the first occurrence replaced, others dropped, added
    at the end of the block when absent)."""
    edits: list[Edit] = []
    added = b""
    for name, value in values.items():
        found = block.find(name)
        line = fold_field(name, value)
        if found:
            edits.append((found[0].start, found[0].end, line))
            edits.extend((f.start, f.end, b"") for f in found[1:])
        else:
            added += line
    if added:
        edits.append((block.end, block.end, added))
    return edits


def _insert_text(content: str, snippet: str, position: str) -> str:
    nl = line_end_of(content)
    snippet = re.sub(r"\r\n|\r|\n", nl, snippet.strip("\r\n"))
    if position == "top":
        return snippet + nl + nl + content
    sep = nl if content and not content.endswith(nl) else ""
    return content + sep + (nl if content else "") + snippet + nl


def _insert_html(content: str, snippet: str, position: str) -> str:
    snippet = re.sub(r"\r\n|\r|\n", line_end_of(content), snippet)
    if position == "top":
        m = _BODY_OPEN_RE.search(content) or _HEAD_CLOSE_RE.search(content) or _HTML_OPEN_RE.search(content)
        at = m.end() if m else 0
    else:
        closes = list(_BODY_CLOSE_RE.finditer(content)) or list(_HTML_CLOSE_RE.finditer(content))
        at = closes[-1].start() if closes else len(content)
    return content[:at] + snippet + content[at:]


def _read_text(raw: bytes, node: Node) -> str:
    """A body part's text under its transfer encoding and charset; raises ValueError or LookupError."""
    charset = charset_of(node)
    codecs.lookup(charset)  # b"".decode() never looks the codec up
    return decode_body(raw[node.body:node.end], cte_of(node)).decode(charset)


def _content_type(raw: bytes, node: Node, charset: str) -> str:
    """The part's Content-Type with ``charset``; the type the parser read when the field is missing or garbled."""
    found = node.head.find("Content-Type")
    value = field_value(raw, found[0]) if found else ""
    if value.split(";", 1)[0].strip().lower() != node.ctype:
        value = node.ctype
    return replace_param(value, "charset", charset)


def _disclaim_part(raw: bytes, node: Node, text: str, html: str, position: str, *, root: bool
                   ) -> tuple[list[Edit], str | None, str | None]:
    """The edits that put the disclaimer into one body part and the text the part will then read as, or a note
    why that part is left as it is."""
    where = f"{node.ctype} part"
    if not node.head.separated and node.body < node.end:
        return [], None, f"disclaimer not added to a {where}: its header block has no end"
    cte, charset = cte_of(node), charset_of(node)
    try:
        content = _read_text(raw, node)
    except (ValueError, LookupError) as exc:  # UnicodeDecodeError is a ValueError
        return [], None, f"disclaimer not added to a {where}: its body cannot be read ({exc.__class__.__name__})"
    headers: dict[str, str] = {}
    if node.ctype == "text/html":
        new = _insert_html(content, html, position)
        data = new.encode(charset, "xmlcharrefreplace")  # the part keeps its charset (and its <meta> stays true)
        new = data.decode(charset)
    else:
        new = _insert_text(content, text, position)
        try:
            data = new.encode(charset)
        except UnicodeEncodeError:
            data = new.encode("utf-8")
            headers["Content-Type"] = _content_type(raw, node, "utf-8")
    body, new_cte = encode_body(data, cte)
    if new_cte != cte:
        headers["Content-Transfer-Encoding"] = new_cte
    edits = _set_fields(raw, node.head, headers)
    if headers and root and not node.head.find("MIME-Version"):
        edits.append((node.head.end, node.head.end, b"MIME-Version: 1.0\r\n"))
    if not node.head.separated:  # a mail of headers only: the body needs its empty line first
        body = (b"\r\n" if raw[:node.end].endswith(b"\n") else b"\r\n\r\n") + body
    edits.append((node.body, node.end, body))
    return edits, new, None


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n")


def _reads_as(out: bytes, expected: list[str | None]) -> str | None:
    """Why the edited mail does not read back with the bodies ``expected`` (None: not edited), or None when it does."""
    try:
        bodies = [n for n in map_mail(out).walk() if n.is_body()]
    except Unmapped as exc:
        return str(exc)
    if len(bodies) != len(expected):
        return "its body parts are counted differently"
    for node, text in zip(bodies, expected, strict=True):
        try:
            if text is not None and _lines(_read_text(out, node)) != _lines(text):
                return "a body part reads differently"
        except (ValueError, LookupError):
            return "a body part cannot be read"
    return None


def _html_of(text: str, html: str | None) -> str:
    if html is not None:
        return html
    return "<p>" + html_lib.escape(text).replace("\r\n", "\n").replace("\n", "<br>\n") + "</p>"


def _text_part(text: str) -> bytes:
    """A text/plain part (headers, empty line, body) of ``text``: US-ASCII 7bit when it can be, else UTF-8 and
    quoted-printable where a line needs it."""
    data = re.sub(r"\r\n|\r|\n", "\r\n", text).encode("utf-8")
    body, cte = encode_body(data, "")
    charset = "us-ascii" if data.isascii() else "utf-8"
    return (f"Content-Type: text/plain; charset=\"{charset}\"\r\n"
            f"Content-Transfer-Encoding: {cte or '7bit'}\r\nContent-Disposition: inline\r\n\r\n").encode() + body


def _boundary(raw: bytes) -> str:
    while True:
        boundary = "=_mailward_" + secrets.token_hex(12)
        if boundary.encode() not in raw:
            return boundary


def _wrap(raw: bytes, root: Node, text: str, position: str, reason: str, notes: list[str]) -> EditResult:
    """The signed mail as one part of a new multipart/mixed, the disclaimer as a text part before or after it: the
    signed entity (its Content-* fields and body) is moved byte for byte."""
    head = root.head
    if not head.separated:
        return unchanged(raw, f"disclaimer skipped: {reason}, and its header block has no end")
    content = [f for f in head.fields if f.name.lower().startswith("content-")]
    inner = b"".join(raw[f.start:f.end] for f in content) + b"\r\n" + raw[head.body:]
    boundary = _boundary(raw)
    delim = b"--" + boundary.encode()
    parts = [_text_part(text), inner] if position == "top" else [inner, _text_part(text)]
    body = (b"This is a multi-part message in MIME format.\r\n" + delim + b"\r\n" + parts[0] + b"\r\n" + delim
            + b"\r\n" + parts[1] + b"\r\n" + delim + b"--\r\n")
    new_fields = b"" if head.find("MIME-Version") else b"MIME-Version: 1.0\r\n"
    new_fields += f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n'.encode()
    edits: list[Edit] = [(f.start, f.end, b"") for f in content]
    edits.append((head.end, head.end, new_fields))
    edits.append((head.end, len(raw), b"\r\n" + body))
    return _checked(raw, splice(raw, edits), notes + [
        f"disclaimer added as a separate part: {reason}; the signed part is untouched"], "disclaimer skipped")


def _checked(raw: bytes, out: bytes, notes: list[str], failed: str,
             removed: list[tuple[str, str, bytes]] | None = None) -> EditResult:
    """``out`` when it maps as cleanly as the input did, else the input unchanged with a note."""
    try:
        map_mail(out)
    except Unmapped as exc:
        return unchanged(raw, f"{failed}: the edited mail would not read back ({exc})")
    return EditResult(out, out != raw, notes, removed or [])


def add_disclaimer(raw: bytes, *, text: str, html: str | None, position: str = "bottom",
                   skip_signed: bool = True) -> EditResult:
    """The mail with ``text`` in every text/plain body part and ``html`` (or ``text`` escaped in a paragraph) in
    every text/html body part, at the top or bottom. Attachments (a name, or disposition attachment) and attached
    messages are no bodies. A signed or encrypted mail is left intact (``skip_signed``) or wrapped in a new
    multipart/mixed with the disclaimer as its own part."""
    return on_crlf(raw, lambda crlf: _add_disclaimer(crlf, text, html, position, skip_signed))


def _add_disclaimer(raw: bytes, text: str, html: str | None, position: str, skip_signed: bool) -> EditResult:
    if position not in POSITIONS:
        return unchanged(raw, f"disclaimer skipped: unknown position {position!r}")
    if not text.strip() and not (html or "").strip():
        return unchanged(raw, "disclaimer skipped: its text is empty")
    notes: list[str] = []
    try:
        root = map_mail(raw)
    except Unmapped as exc:
        return unchanged(raw, f"disclaimer skipped: {exc}")
    reason = signed_reason(root, raw)
    if reason is not None:
        if skip_signed:
            return EditResult(raw, False, notes + [f"disclaimer skipped: {reason}"])
        return _wrap(raw, root, text, position, reason, notes)
    bodies = [n for n in root.walk() if n.is_body()]
    if not bodies:
        return EditResult(raw, False, notes + ["disclaimer skipped: the mail has no text body outside "
                                                     "attachments and signed parts"])
    edits: list[Edit] = []
    expected: list[str | None] = []
    for node in bodies:
        found, new, why = _disclaim_part(raw, node, text, _html_of(text, html), position, root=node is root)
        edits.extend(found)
        expected.append(new)
        if why:
            notes.append(why)
    if not edits:
        return EditResult(raw, False, notes)
    out = splice(raw, edits)
    wrong = _reads_as(out, expected)
    if wrong is not None:
        return unchanged(raw, f"disclaimer skipped: the edited mail would not read back as intended ({wrong})")
    done = sum(1 for new in expected if new is not None)
    return EditResult(out, True, notes + [f"disclaimer added to {done} body part(s)"])


# --- attachments ------------------------------------------------------------------------------------------------------

def _name(node: Node) -> str:
    text, _ = clean_value(node.filename or "")
    return text


def _decoded_payload(raw: bytes, node: Node) -> bytes:
    if not node.leaf or node.ctype.startswith("message/"):
        try:
            return decode_body(raw[node.body:node.end], cte_of(node))
        except ValueError:
            return raw[node.body:node.end]
    try:
        payload = node.part.get_payload(decode=True)
    except Exception:
        payload = None
    return payload if isinstance(payload, bytes) else raw[node.body:node.end]


def _is_attachment(node: Node, match: Callable[[str, str], bool] | None) -> bool:
    """Whether a leaf is an attachment to offer: with no matcher one with a name or disposition attachment, with a
    matcher every leaf that is no body text (a part without a name cannot hide from a content-type matcher)."""
    if node.ctype.startswith("message/"):
        return True
    if match is None:
        return bool(node.filename) or node.disposition == "attachment"
    return not (node.ctype in ("text/plain", "text/html") and node.disposition != "attachment"
                and not node.filename)


def _targets(node: Node, match: Callable[[str, str], bool] | None, out: list[tuple[Node, bool]], *,
             is_root: bool) -> None:
    """Collect the attachments to remove, each with whether it is the root entity of a message (the mail itself, or
    one inside an attached message: its content is replaced, its other header fields stay)."""
    if node.ctype == "multipart/encrypted" or (is_root and node.leaf and node.ctype in SIGNED_TYPES):
        return  # the encryption's or signature's own parts, not attachments
    offered = node.leaf if is_root else node.leaf or node.ctype.startswith("message/")
    if offered and _is_attachment(node, match) and (match is None or match(_name(node), node.ctype)):
        out.append((node, is_root))
        return
    for i, child in enumerate(node.children):
        if node.ctype == "multipart/signed" and i > 0:
            continue  # the signature itself
        _targets(child, match, out, is_root=node.ctype.startswith("message/"))


def _replace_content(raw: bytes, node: Node, part: bytes, *, top: bool) -> list[Edit]:
    """Edits that make a message's own content ``part`` (its Content-* fields and body); its other fields stay."""
    head = node.head
    fields, body = part.split(b"\r\n\r\n", 1)
    fields += b"\r\n"
    if top and not head.find("MIME-Version"):
        fields += b"MIME-Version: 1.0\r\n"
    if top and not body.endswith(b"\r\n"):
        body += b"\r\n"
    edits: list[Edit] = [(f.start, f.end, b"") for f in head.fields if f.name.lower().startswith("content-")]
    edits.append((head.end, head.end, fields + (b"" if head.separated else b"\r\n")))
    edits.append((head.body, node.end, body))
    return edits


def remove_attachments(raw: bytes, match: Callable[[str, str], bool] | None, replacement: str) -> EditResult:
    """The mail with each attachment ``match(filename, content_type)`` accepts (every one when ``match`` is None)
    replaced by a text/plain part of ``replacement`` (``{filename}`` there becomes the removed part's name). An
    attached message is one attachment; when it does not match, its own attachments are looked at. A mail (or an
    attached message) that is itself one attachment keeps its other header fields and gets the text as content.
    The signature of a signed mail and the parts of an encrypted one are never removed; ``match`` may raise."""
    return on_crlf(raw, lambda crlf: _remove_attachments(crlf, match, replacement))


def _remove_attachments(raw: bytes, match: Callable[[str, str], bool] | None, replacement: str) -> EditResult:
    notes: list[str] = []
    try:
        root = map_mail(raw)
    except Unmapped as exc:
        return unchanged(raw, f"attachments not removed: {exc}")
    targets: list[tuple[Node, bool]] = []
    _targets(root, match, targets, is_root=True)
    if not targets:
        return EditResult(raw, False, notes + ["no attachment to remove"])
    edits: list[Edit] = []
    removed: list[tuple[str, str, bytes]] = []
    for node, own_content in targets:
        name = _name(node)
        text = _text_part(replacement.replace("{filename}", name or f"unnamed {node.ctype}"))
        edits.extend(_replace_content(raw, node, text, top=node is root) if own_content
                     else [(node.start, node.end, text)])
        removed.append((name, node.ctype, _decoded_payload(raw, node)))
        notes.append(f"attachment removed: {name or 'unnamed'} ({node.ctype})")
    if root.sealed or any(n.sealed for n, _ in targets):
        notes.append("the mail's signature no longer verifies")
    return _checked(raw, splice(raw, edits), notes, "attachments not removed", removed)
