"""API keys for the REST API: created once, stored hashed, scoped, revocable, with a last-used time.

A key reads ``mw_<prefix>_<secret>``. The prefix (8 hex characters) is stored in clear and shown in lists, so an
operator can tell keys apart and the API finds the row with one indexed lookup; the whole key is stored only as its
SHA-256. The secret is 256 random bits, so there is no dictionary to attack and a slow password hash (argon2) would
only cost every request tens of milliseconds; and an unkeyed hash keeps every key valid when the secret key is
rotated. Checking a key compares hashes in constant time.

A key belongs to one tenant (``tenant_id``) or, with no tenant, to the whole MSP. Its scopes are a subset of
:data:`SCOPES`: ``read`` for every GET, ``write`` for changes to domains, lists and keys, ``quarantine`` for
quarantine actions. A key may carry an expiry (:func:`parse_expiry`): from then on it is refused, as
``key_expired``. The caller owns the session and the scope, and commits.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from tenants.exceptions import PermissionDenied, ValidationError
from tenants.models import ApiKey, Tenant, utcnow
from tenants.scope import current_scope, load, msp_scope

#: Every scope a key may hold.
SCOPES: tuple[str, ...] = ("read", "write", "quarantine")
#: What every key starts with (and what tells a Mailward key in a secret scanner's findings).
KEY_MARK = "mw"
#: Random bytes of the stored, shown prefix, and of the secret part.
PREFIX_BYTES = 4
SECRET_BYTES = 32
#: ``last_used_at`` is written at most this often per key: a write on every request would make reads write.
TOUCH_INTERVAL = timedelta(minutes=1)
#: Longest key name.
MAX_NAME = 200
#: Furthest expiry a key may be given, from today.
MAX_EXPIRY = timedelta(days=5 * 366)


@dataclass(frozen=True)
class NewApiKey:
    """A key just created: the row, and the full key to show once (it is never stored)."""

    key: ApiKey
    secret: str


def parse_scopes(value: str | Iterable[str]) -> list[str]:
    """Scopes from ``"read,write"`` or a list, validated and without duplicates, in the order of :data:`SCOPES`."""
    items = value.split(",") if isinstance(value, str) else list(value)
    wanted = [s.strip().lower() for s in items if s.strip()]
    bad = [s for s in wanted if s not in SCOPES]
    if bad or not wanted:
        shown = ",".join(bad or wanted) or "(none)"
        raise ValidationError(f"scopes {shown}: choose one or more of {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in wanted]


def hash_key(full_key: str) -> str:
    """The stored form of a key: SHA-256 of the whole key, hex."""
    return hashlib.sha256(full_key.encode()).hexdigest()


def split_key(full_key: str) -> str | None:
    """The stored prefix (``mw_<hex>``) of a presented key, or None when it is not shaped like a Mailward key."""
    mark, sep, rest = full_key.partition("_")
    prefix_hex, sep2, secret = rest.partition("_")
    if mark != KEY_MARK or not sep or not sep2 or not secret or len(prefix_hex) != PREFIX_BYTES * 2:
        return None
    if any(c not in "0123456789abcdef" for c in prefix_hex):
        return None
    return f"{KEY_MARK}_{prefix_hex}"


def parse_expiry(value: str | date | None, now: datetime | None = None) -> datetime | None:
    """The expiry of a key from a date (``YYYY-MM-DD``; empty or None: never): the key stops working at 00:00 UTC
    that day, which must come after today and within :data:`MAX_EXPIRY`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text)
        except ValueError:
            raise ValidationError(f"expiry {text!r}: write a date as YYYY-MM-DD") from None
    now = now or utcnow()
    if value <= now.date():
        raise ValidationError(f"expiry {value.isoformat()}: choose a date after today ({now.date().isoformat()}, UTC)")
    if value > (now + MAX_EXPIRY).date():
        raise ValidationError(f"expiry {value.isoformat()}: at most {MAX_EXPIRY.days // 366} years ahead")
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def is_expired(key: ApiKey, now: datetime | None = None) -> bool:
    """Whether ``key`` has passed its expiry (a key without one never expires)."""
    return key.expires_at is not None and key.expires_at <= (now or utcnow())


def create(session: Session, tenant: Tenant | None, scopes: str | Iterable[str], name: str = "", *,
           expires_at: datetime | None = None) -> NewApiKey:
    """A new key for ``tenant``, or an MSP-wide key (``tenant`` None: MSP scope only). Shown once: keep ``secret``.

    ``expires_at``: when it stops working (from :func:`parse_expiry`); None: never."""
    wanted = parse_scopes(scopes)
    if expires_at is not None and expires_at <= utcnow():
        raise ValidationError("the expiry must be in the future")
    name = name.strip()
    if len(name) > MAX_NAME:
        raise ValidationError(f"key name too long: at most {MAX_NAME} characters")
    scope = current_scope()
    if tenant is None and not scope.is_msp:
        raise PermissionDenied("MSP-wide API keys can only be created by the MSP")
    while True:
        prefix = f"{KEY_MARK}_{secrets.token_hex(PREFIX_BYTES)}"
        with msp_scope():  # prefixes are unique across tenants
            if session.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) is None:
                break
    full_key = f"{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    key = ApiKey(tenant_id=tenant.id if tenant else None, prefix=prefix, key_hash=hash_key(full_key),
                 scopes=",".join(wanted), name=name, expires_at=expires_at)
    session.add(key)
    session.flush()
    return NewApiKey(key, full_key)


def verify(session: Session, full_key: str) -> ApiKey | None:
    """The unrevoked key a client presented, or None. Looks across tenants: the key tells the tenant. An expired key
    is returned too, so that the caller can say so (:func:`is_expired`)."""
    prefix = split_key(full_key.strip())
    if prefix is None:
        return None
    with msp_scope():
        key = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).first()
    if key is None or key.revoked_at is not None:
        return None
    if not secrets.compare_digest(key.key_hash, hash_key(full_key.strip())):
        return None
    return key


def touch(session: Session, key: ApiKey, now: datetime | None = None) -> bool:
    """Record that ``key`` was used, unless that was done less than :data:`TOUCH_INTERVAL` ago; True if written.

    One conditional UPDATE, so concurrent requests write at most once per interval between them. The caller commits.
    """
    now = now or utcnow()
    if key.last_used_at is not None and now - key.last_used_at < TOUCH_INTERVAL:
        return False
    with msp_scope():
        done = session.execute(
            update(ApiKey).where(ApiKey.id == key.id, or_(ApiKey.last_used_at.is_(None),
                                                          ApiKey.last_used_at < now - TOUCH_INTERVAL))
            .values(last_used_at=now).execution_options(synchronize_session=False))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def get(session: Session, key_id: int) -> ApiKey:
    """A key by id in the current scope (another tenant's key is :class:`~tenants.exceptions.NotFound`)."""
    return load(session, ApiKey, key_id)


def revoke(session: Session, key_id: int) -> ApiKey:
    """Revoke a key of the current scope at once (idempotent: a revoked key keeps its first revocation time)."""
    key = get(session, key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def list_keys(session: Session, tenant_id: int | None = None, *, include_revoked: bool = True) -> list[ApiKey]:
    """The keys of one tenant, or the MSP-wide keys (``tenant_id`` None, MSP scope only), oldest first."""
    stmt = select(ApiKey).order_by(ApiKey.id)
    if tenant_id is None:
        if not current_scope().is_msp:
            raise PermissionDenied("MSP-wide API keys can only be listed by the MSP")
        stmt = stmt.where(ApiKey.tenant_id.is_(None))
    else:
        stmt = stmt.where(ApiKey.tenant_id == tenant_id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(stmt))
