"""TOTP second factor (RFC 6238, pyotp): secrets stored encrypted, codes checked once.

The secret is kept Fernet-encrypted with the same key derivation as the DKIM private keys
(:mod:`tenants.dkimkeys`), so a database dump alone does not give away anyone's second factor. A code is accepted
within one 30-second step either side of now, and only once: the step it matched is remembered in Redis until the
window has passed, so a code seen over a shoulder (or replayed from a proxy log) does not sign in a second time.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import pyotp

from tenants.dkimkeys import decrypt_private_key, encrypt_private_key
from tenants.exceptions import ConfigError, ValidationError
from tenants.models import User
from tenants.platform.config import Config

#: Name shown in authenticator apps next to the account.
ISSUER = "Mailward"
#: Steps of 30 s accepted either side of now (clock drift of the phone).
VALID_WINDOW = 1
#: Seconds a used step is remembered: longer than the whole window it could be accepted in.
USED_TTL = 30 * (2 * VALID_WINDOW + 2)
#: Redis key of a used step of one user.
USED_KEY = "mailward:totp:used:{user_id}:{step}"


def new_secret() -> str:
    """A fresh random base32 secret (160 bits, RFC 4226's recommendation)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, email: str) -> str:
    """The ``otpauth://`` URI authenticator apps read (as text or as a QR code)."""
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER)


def store_pending(cfg: Config, user: User, secret: str) -> None:
    """Keep a new, not yet confirmed secret (encrypted); the second factor stays off until :func:`enable`."""
    user.totp_secret_enc = encrypt_private_key(cfg, secret.encode("ascii"))
    user.totp_enabled = False


def secret_of(cfg: Config, user: User) -> str | None:
    if not user.totp_secret_enc:
        return None
    try:
        return decrypt_private_key(cfg, user.totp_secret_enc).decode("ascii")
    except ConfigError as exc:
        raise ConfigError("MAILWARD_DKIM_KEY_SECRET: a stored TOTP secret cannot be decrypted; the secret (or "
                          "MAILWARD_SECRET_KEY it is derived from) changed since it was enrolled") from exc


def matching_step(secret: str, code: str, *, at: float | None = None) -> int | None:
    """The time step ``code`` is valid for (within :data:`VALID_WINDOW`), or None."""
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    now = time.time() if at is None else at
    step = int(now // totp.interval)
    for s in range(step - VALID_WINDOW, step + VALID_WINDOW + 1):
        if hmac.compare_digest(totp.generate_otp(s), code):
            return s
    return None


def check_code(cfg: Config, redis: Any, user: User, code: str, *, secret: str | None = None) -> bool:
    """True once for a right code: the step it matched is marked used (atomically), so a replay is refused.

    ``secret``: check against this one (enrolment confirms the pending secret), else the user's stored one.
    """
    secret = secret or secret_of(cfg, user)
    if not secret:
        return False
    step = matching_step(secret, code)
    if step is None:
        return False
    return bool(redis.set(USED_KEY.format(user_id=user.id, step=step), "1", nx=True, ex=USED_TTL))


def enable(cfg: Config, redis: Any, user: User, code: str) -> None:
    """Turn the second factor on once the user proved their app has the pending secret."""
    if not user.totp_secret_enc or user.totp_enabled:
        raise ValidationError("start the enrolment again: there is no pending secret")
    if not check_code(cfg, redis, user, code):
        raise ValidationError("that code is not right: check the time on your phone and try the current code")
    user.totp_enabled = True


def disable(user: User) -> None:
    user.totp_secret_enc = None
    user.totp_enabled = False
