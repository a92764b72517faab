"""Passwords people set themselves: changing one's own, reset links, invitations, and removing an account.

A set-password link carries an itsdangerous token (signed with the installation's secret key, timestamped) over the
user's id, the link's purpose (``reset`` or ``invite``) and a fingerprint of the user's current password hash. No
table remembers links: setting a password changes the hash, so the link (and every other link sent before) stops
working the moment it is used; and it expires after ``MAILWARD_RESET_LINK_MAX_AGE`` (reset) or
``MAILWARD_INVITE_LINK_MAX_AGE`` (invitation) seconds. A new password ends every session signed in with the old one
(sessions are bound to the password hash and the session version, see :func:`tenants.users.end_sessions`).

The mail itself is built and sent by the worker (:mod:`worker.accountmail`); :func:`queue_link` asks for it once the
caller's transaction commits. Callers own the session and the scope, audit, and commit.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from itsdangerous import BadSignature, SignatureExpired
from redis.exceptions import RedisError
from rq import Retry
from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants.exceptions import TokenExpired, TokenInvalid, TokenUsed, ValidationError
from tenants.models import User
from tenants.passwords import hash_password, verify_password
from tenants.platform.config import Config
from tenants.platform.jobs import after_commit, enqueue_job
from tenants.scope import msp_scope
from tenants.services import check_new_password
from tenants.tokens import serializer
from tenants.users import end_sessions, keep_an_admin, unlock

#: Salt of set-password tokens: a digest's action or login token never passes as one.
LINK_SALT = "mailward.set-password.v1"
#: What a link is for: a reset of a forgotten password, or an invitation to set the first one.
PURPOSES: tuple[str, ...] = ("reset", "invite")
#: Path of the page a link opens, ``{token}`` filled in.
SET_PASSWORD_PATH = "/password/set/{token}"
#: The worker job that builds and sends a link's mail.
LINK_JOB = "worker.accountmail.link_job"
#: Seconds the link job may run, and how often it is retried.
LINK_JOB_TIMEOUT = 120
LINK_JOB_RETRIES = 3
#: Redis key marking that a forgotten-password mail went to this user recently (by id: no addresses in Redis).
FORGOT_KEY = "mailward:password:forgot:{user_id}"
#: Seconds between two forgotten-password mails to one user (more requests are answered alike and send nothing).
FORGOT_INTERVAL = 300
#: The one answer of a link that does not work (used, superseded by a newer password, or of a removed user).
LINK_SPENT = "this link was already used or is no longer valid: ask for a new one"


def set_password(user: User, password: str) -> None:
    """Give ``user`` a new password: every session signed in before ends, and a sign-in lockout is lifted."""
    check_new_password(password)
    user.password_hash = hash_password(password)
    end_sessions(user)
    unlock(user)


def change_password(user: User, current: str, new: str) -> None:
    """Change one's own password; the current one must be right (:class:`ValidationError` otherwise)."""
    if not user.password_hash or not verify_password(user.password_hash, current):
        raise ValidationError("the current password is not right")
    if current == new:
        raise ValidationError("the new password is the current one: choose another")
    set_password(user, new)


# --- links ----------------------------------------------------------------------------------------------------------

def fingerprint(user: User) -> str:
    """A short digest of the user's address and password hash: it changes whenever a password is set."""
    return hashlib.sha256(f"{user.id}:{user.email}:{user.password_hash or ''}".encode()).hexdigest()[:24]


def max_age(cfg: Config, purpose: str) -> timedelta:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown link purpose {purpose!r}")
    return timedelta(seconds=cfg.reset_link_max_age if purpose == "reset" else cfg.invite_link_max_age)


def make_link_token(cfg: Config, user: User, purpose: str, *, issued_at: float | None = None) -> str:
    """A set-password token for ``user`` (``purpose`` reset or invite), valid until the password changes."""
    max_age(cfg, purpose)
    payload = {"u": user.id, "p": purpose, "f": fingerprint(user)}
    return str(serializer(cfg.resolve_secret_key(), LINK_SALT, issued_at).dumps(payload))


def link_url(cfg: Config, token: str) -> str:
    """The full link (``MAILWARD_PUBLIC_URL``, else the web listen address)."""
    return cfg.web_url + SET_PASSWORD_PATH.format(token=token)


@dataclass(frozen=True)
class LinkClaim:
    user_id: int
    purpose: str
    fingerprint: str


def _claim(cfg: Config, token: str) -> LinkClaim:
    longest = max(cfg.reset_link_max_age, cfg.invite_link_max_age)
    try:
        data: Any
        data, stamp = serializer(cfg.resolve_secret_key(), LINK_SALT).loads(token, max_age=longest,
                                                                             return_timestamp=True)
    except SignatureExpired:
        raise TokenExpired("this link has expired: ask for a new one") from None
    except BadSignature:
        raise TokenInvalid("this link is not valid") from None
    try:
        claim = LinkClaim(int(data["u"]), str(data["p"]), str(data["f"]))
    except (KeyError, TypeError, ValueError):
        raise TokenInvalid("this link is not valid") from None
    if claim.purpose not in PURPOSES:
        raise TokenInvalid("this link is not valid")
    if time.time() - stamp.timestamp() > max_age(cfg, claim.purpose).total_seconds():
        raise TokenExpired("this link has expired: ask for a new one")
    return claim


def link_user(session: Session, cfg: Config, token: str) -> tuple[User, str]:
    """The active user a set-password link is for, and its purpose; raises :class:`TokenExpired`,
    :class:`TokenInvalid`, or :class:`TokenUsed` once a password was set since the link was made."""
    claim = _claim(cfg, token)
    with msp_scope():
        user = session.get(User, claim.user_id)
    if user is None or not user.active or fingerprint(user) != claim.fingerprint:
        raise TokenUsed(LINK_SPENT)
    return user, claim.purpose


def redeem_link(session: Session, cfg: Config, token: str, password: str) -> tuple[User, str]:
    """Set the password a link is for; the user and the link's purpose. The caller audits and commits."""
    user, purpose = link_user(session, cfg, token)
    with msp_scope():
        set_password(user, password)
    return user, purpose


def queue_link(session: Session, cfg: Config, user: User, purpose: str) -> None:
    """Have the worker mail ``user`` a fresh set-password link once the caller's transaction commits."""
    max_age(cfg, purpose)
    user_id = user.id

    def send() -> None:
        enqueue_job(cfg, LINK_JOB, user_id, purpose, timeout=LINK_JOB_TIMEOUT, retry=Retry(max=LINK_JOB_RETRIES),
                    description=f"{purpose} link of user {user_id}")

    after_commit(session, send)


# --- what admins and the sign-in page do ----------------------------------------------------------------------------

def start_reset(user: User, *, actor_id: int | None) -> None:
    """An admin's reset: the password stops working at once and every session ends; a link sets a new one.
    Admins change their own password on their account page instead."""
    if user.id == actor_id:
        raise ValidationError("change your own password on your account page")
    if not user.active:
        raise ValidationError(f"{user.email} is deactivated: reactivate the account first")
    user.password_hash = None
    end_sessions(user)


def find_for_reset(session: Session, email: str) -> User | None:
    """The active user with this sign-in address, or None (unknown and inactive read alike to the caller)."""
    with msp_scope():
        user = session.scalars(select(User).where(User.email == email.strip().lower())).first()
    return user if user is not None and user.active else None


def forgot_allowed(redis: Any, user: User) -> bool:
    """Whether a forgotten-password mail may go to ``user`` now (one per :data:`FORGOT_INTERVAL`); Redis being away
    allows it (the per-IP sign-in limit still holds)."""
    try:
        return bool(redis.set(FORGOT_KEY.format(user_id=user.id), 1, nx=True, ex=FORGOT_INTERVAL))
    except (RedisError, OSError):
        return True


def delete_user(session: Session, user: User, *, actor_id: int | None) -> None:
    """Remove an account for good (its aliases and own list entries go with it). Nobody deletes themselves, nor the
    last active admin of a tenant or of the MSP."""
    if user.id == actor_id:
        raise ValidationError("you cannot delete your own account; ask another admin")
    keep_an_admin(user)
    session.delete(user)
    session.flush()
