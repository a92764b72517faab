"""Spoof protection for Authentication-Results (RFC 8601 section 5): incoming copies that claim our hostname go.

A downstream server trusts ``Authentication-Results: <our hostname>; ...`` because only we should write it; a sender
could forge one to look authenticated, so every such header of an incoming mail is removed before we add our own.
"""

from __future__ import annotations

import re

_NAME = b"authentication-results"
_COMMENT = re.compile(rb"\([^()]*\)")


def _authserv_id(value: bytes) -> str:
    """The authserv-id of a header value: the first token before ';' (comments and folding dropped)."""
    first = _COMMENT.sub(b" ", value).split(b";", 1)[0]
    tokens = first.split()
    return tokens[0].decode("ascii", "replace").strip().rstrip(".").lower() if tokens else ""


def strip_ours(raw: bytes, hostname: str) -> bytes:
    """The mail without header fields ``Authentication-Results`` whose authserv-id is ``hostname``."""
    end = raw.find(b"\r\n\r\n")
    nl = b"\r\n"
    if end < 0:
        end = raw.find(b"\n\n")
        nl = b"\n"
    if end < 0:
        head, body = raw, b""
    else:
        head, body = raw[:end + len(nl)], raw[end + len(nl):]
    if _NAME not in head.lower():
        return raw
    ours = hostname.rstrip(".").lower()
    fields: list[list[bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = []
    for field in fields:
        name, sep, value = b"".join(field).partition(b":")
        if sep and name.strip().lower() == _NAME and _authserv_id(value) == ours:
            continue
        kept.append(b"".join(field))
    return b"".join(kept) + body
