"""DKIM signing of outbound mail with dkimpy: rsa-sha256, relaxed/relaxed, the sender domain's key.

The key is the sending tenant's newest active key for the header From domain (the one DMARC aligns with), else for a
parent of it, else for the envelope sender's domain or a parent (see :func:`signing_domains`).
"""

from __future__ import annotations

from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

import dkim

from tenants.dkimkeys import SigningKey
from tenants.relay import parent_domains

#: Header fields signed when the mail has them: RFC 6376 5.4.1's list, trimmed to fields no relay changes.
SIGNED_HEADERS = (
    "from", "to", "cc", "subject", "date", "message-id", "reply-to", "in-reply-to", "references",
    "mime-version", "content-type", "content-transfer-encoding",
)
#: Fields signed once more than they occur, so nobody can add a second one without breaking the signature.
OVERSIGNED = ("from",)
#: Canonicalization of header and body: relaxed survives the whitespace changes relays make.
CANONICALIZE = (b"relaxed", b"relaxed")
SIGNATURE_ALGORITHM = b"rsa-sha256"


class MessageNotSignable(Exception):
    """The mail's header block is too broken to sign; it goes out unsigned."""


def _headers(data: bytes) -> tuple[set[str], str | None]:
    """Lower-cased names of the header fields present, and the raw From value."""
    msg = BytesHeaderParser(policy=compat32).parsebytes(data)
    names = {k.lower() for k in msg.keys()}
    from_value = msg.get("From")
    return names, str(from_value) if from_value is not None else None


def header_from_domain(data: bytes) -> str | None:
    """The domain of the first address in the From header, or None."""
    try:
        _, raw = _headers(data)
    except Exception:
        return None
    if not raw:
        return None
    for _, addr in getaddresses([raw]):
        domain = addr.rpartition("@")[2].strip().lower()
        if "@" in addr and domain:
            return domain
    return None


def signing_domains(header_from: str | None, mail_from: str) -> list[str]:
    """Domains whose key may sign, best first: the From domain and its parents, then the envelope sender's."""
    out: list[str] = []
    envelope_domain = mail_from.rpartition("@")[2] if "@" in mail_from else ""
    for domain in (header_from, envelope_domain):
        if domain:
            out.extend(d for d in parent_domains(domain) if d not in out)
    return out


def sign(data: bytes, key: SigningKey) -> bytes:
    """``data`` with a DKIM-Signature field on top. Raises :class:`MessageNotSignable` for unparseable mail."""
    try:
        present, _ = _headers(data)
    except Exception as exc:
        raise MessageNotSignable(f"header block unparseable: {type(exc).__name__}") from exc
    include = [h for h in SIGNED_HEADERS if h in present] + list(OVERSIGNED)
    try:
        signature = dkim.sign(
            data, key.selector.encode("ascii"), key.domain.encode("ascii"), key.private_pem,
            canonicalize=CANONICALIZE, signature_algorithm=SIGNATURE_ALGORITHM,
            include_headers=[h.encode("ascii") for h in include],
        )
    except dkim.MessageFormatError as exc:
        raise MessageNotSignable(str(exc)) from exc
    return bytes(signature) + data
