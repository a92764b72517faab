"""MIME edits the mail-rule actions make (issue 13): pure functions from raw RFC 5322 bytes to raw bytes.

Each edit splices only the bytes it changes: a header field, a body part's headers and body, an attachment replaced
whole. Everything else stays byte for byte as it came. None raises on broken MIME: an edit that cannot be applied
safely returns the mail unchanged with a note saying why. Output lines end in CRLF (a mail with LF line ends only is
converted when it is edited) and added lines stay within 998 octets; added text is quoted-printable or base64 where
the part's encoding needs it; a header value never carries a line break (control characters become spaces).

Header edits live in :mod:`smtp.rewrite_headers`, body edits in :mod:`smtp.rewrite_parts`, the byte map of the MIME
tree they share in :mod:`smtp.rewrite_tree`.
"""

from __future__ import annotations

from smtp.rewrite_headers import EditResult, add_header, remove_header, set_header, tag_subject
from smtp.rewrite_parts import POSITIONS, add_disclaimer, remove_attachments

__all__ = ["POSITIONS", "EditResult", "add_disclaimer", "add_header", "remove_attachments", "remove_header",
           "set_header", "tag_subject"]
