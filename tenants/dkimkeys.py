"""DKIM keys of tenants' domains: generated here, private halves stored encrypted, public halves published in DNS.

The private key is kept as a Fernet token (AES-128-CBC + HMAC-SHA256, from ``cryptography``) whose key is derived
with HKDF-SHA256 from ``MAILWARD_DKIM_KEY_SECRET``, or from ``MAILWARD_SECRET_KEY`` when that is unset. A database
dump alone therefore does not give away anyone's signing keys. Changing the secret makes the stored keys unreadable:
signing then fails loudly (451 to the sending client) rather than sending unsigned mail.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants.exceptions import ConfigError, NotFound, ValidationError
from tenants.models import DkimKey, Domain
from tenants.platform.config import Config
from tenants.policy import normalize_domain
from tenants.scope import load, msp_scope

#: RSA sizes keygen accepts: RFC 8301 forbids less than 1024; above 4096 the TXT record gets unwieldy.
KEY_SIZES = (1024, 2048, 3072, 4096)
#: The size keygen uses unless told otherwise (RFC 8301 recommends at least 2048).
DEFAULT_KEY_BITS = 2048
#: RSA public exponent (the only one anyone uses).
RSA_EXPONENT = 65537
#: HKDF context label: binds the derived key to this one purpose, so the same secret can feed other keys safely.
HKDF_INFO = b"mailward dkim private key encryption v1"
#: HKDF salt; fixed, because the input secret is already random (RFC 5869 3.1 allows no salt).
HKDF_SALT = b"mailward-dkim"
#: Longest character-string in a TXT record (RFC 1035 3.3); a 2048-bit key needs two.
TXT_STRING_MAX = 255

_SELECTOR_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SELECTOR_RE = re.compile(rf"^{_SELECTOR_LABEL}(?:\.{_SELECTOR_LABEL})*$")
#: Longest selector (the column's width).
SELECTOR_MAX = 63


@dataclass(frozen=True)
class SigningKey:
    """What signing needs of a stored key: the ``d=`` domain, the ``s=`` selector and the PKCS#1 PEM private key."""

    domain: str
    selector: str
    private_pem: bytes


def _fernet(cfg: Config) -> Fernet:
    secret = cfg.dkim_key_secret or cfg.resolve_secret_key()
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=HKDF_INFO).derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt_private_key(cfg: Config, pem: bytes) -> str:
    return _fernet(cfg).encrypt(pem).decode("ascii")


def decrypt_private_key(cfg: Config, token: str) -> bytes:
    """The PEM of a stored key; a wrong secret is a configuration error and says which variable to look at."""
    try:
        return _fernet(cfg).decrypt(token.encode("ascii"))
    except (InvalidToken, ValueError) as exc:
        raise ConfigError("MAILWARD_DKIM_KEY_SECRET: a stored DKIM key cannot be decrypted; the secret (or "
                          "MAILWARD_SECRET_KEY it is derived from) changed since the key was generated") from exc


def validate_selector(selector: str) -> str:
    s = selector.strip().lower()
    if len(s) > SELECTOR_MAX or not _SELECTOR_RE.match(s):
        raise ValidationError(f"selector {selector!r}: use letters, digits, '-' and dots, at most {SELECTOR_MAX}")
    return s


def record_value(public_key: str) -> str:
    """The TXT record's text: ``v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>``."""
    return f"v=DKIM1; k=rsa; p={public_key}"


def txt_record(key: DkimKey) -> str:
    """A zone-file line publishing the key, its text split into strings of at most 255 characters."""
    value = record_value(key.public_key)
    strings = " ".join(f'"{value[i:i + TXT_STRING_MAX]}"' for i in range(0, len(value), TXT_STRING_MAX))
    return f"{key.selector}._domainkey.{key.domain}. IN TXT {strings}"


def generate_key(session: Session, cfg: Config, domain: str, selector: str, *, bits: int = DEFAULT_KEY_BITS) -> DkimKey:
    """Generate an RSA key for a registered domain (of the tenant that owns it) and stage it, active; no commit.

    The newest active key of a domain signs. Publish its record before mail goes out, or receivers see a
    signature they cannot check (harmless for DMARC while SPF aligns, but not what you want).
    """
    if bits not in KEY_SIZES:
        raise ValidationError(f"key size {bits}: one of {', '.join(map(str, KEY_SIZES))}")
    name = normalize_domain(domain)
    sel = validate_selector(selector)
    owner = session.scalar(select(Domain).where(Domain.name == name))
    if owner is None:
        raise NotFound(f"no tenant domain {name!r}")
    with msp_scope():  # (domain, selector) is unique across tenants
        if session.scalar(select(DkimKey.id).where(DkimKey.domain == name, DkimKey.selector == sel)) is not None:
            raise ValidationError(f"{name} already has a key with selector {sel!r}; choose another selector")
    private = rsa.generate_private_key(public_exponent=RSA_EXPONENT, key_size=bits)
    # dkimpy reads PKCS#1 ("BEGIN RSA PRIVATE KEY"), not PKCS#8.
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    key = DkimKey(tenant_id=owner.tenant_id, domain=name, selector=sel, active=True,
                  private_key_enc=encrypt_private_key(cfg, pem), public_key=base64.b64encode(spki).decode("ascii"))
    session.add(key)
    session.flush()
    return key


def list_keys(session: Session, tenant_id: int | None = None) -> list[DkimKey]:
    stmt = select(DkimKey).order_by(DkimKey.domain, DkimKey.created_at, DkimKey.id)
    if tenant_id is not None:
        stmt = stmt.where(DkimKey.tenant_id == tenant_id)
    return list(session.scalars(stmt))


def find_signing_key(session: Session, cfg: Config, domains: Sequence[str]) -> SigningKey | None:
    """The newest active key of the first of ``domains`` that has one, in the current (sending tenant's) scope."""
    if not domains:
        return None
    keys = session.scalars(
        select(DkimKey).where(DkimKey.domain.in_(list(domains)), DkimKey.active.is_(True))
        .order_by(DkimKey.created_at.desc(), DkimKey.id.desc())
    ).all()
    for name in domains:
        key = next((k for k in keys if k.domain == name), None)
        if key is not None:
            return SigningKey(key.domain, key.selector, decrypt_private_key(cfg, key.private_key_enc))
    return None


def record_name(key: DkimKey) -> str:
    """The DNS name the key's TXT record is published at: ``<selector>._domainkey.<domain>``."""
    return f"{key.selector}._domainkey.{key.domain}"


def key_bits(key: DkimKey) -> int | None:
    """The RSA key size, read from the stored public key (the table keeps no separate column for it); None when
    the stored value is not an RSA public key we can read (shown as unknown, never a failure)."""
    try:
        public = serialization.load_der_public_key(base64.b64decode(key.public_key))
    except (ValueError, binascii.Error):
        return None
    return public.key_size if isinstance(public, rsa.RSAPublicKey) else None


def get_key(session: Session, key_id: int) -> DkimKey:
    """A key by id in the current scope (another tenant's key is :class:`~tenants.exceptions.NotFound`)."""
    return load(session, DkimKey, key_id)


def set_key_active(session: Session, key_id: int, active: bool) -> DkimKey:
    """Retire a key (it stops signing; the newest other active key of its domain signs) or put it back in use."""
    key = get_key(session, key_id)
    key.active = active
    session.flush()
    return key


def remove_key(session: Session, key_id: int) -> DkimKey:
    """Delete a key for good (its private half is gone; unpublish its DNS record afterwards). No commit."""
    key = get_key(session, key_id)
    session.delete(key)
    session.flush()
    return key
