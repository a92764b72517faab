"""Signed, expiring, single-use tokens for the links in quarantine digests: one-click actions and portal logins.

A token is an itsdangerous ``URLSafeTimedSerializer`` payload signed with the installation's secret key and a salt
per purpose, so an action token can never pass as a login token or the other way round. Each carries a random
``jti``; :func:`spend` records it in :class:`~tenants.models.UsedToken` with what the click did, so a second click
changes nothing and can say "already done: <result>".
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session

from tenants.exceptions import NotFound, TokenExpired, TokenInvalid, TokenUsed
from tenants.models import UsedToken, User, utcnow
from tenants.platform.config import Config
from tenants.scope import load, tenant_scope

ACTION_SALT = "mailward.quarantine-action.v1"
LOGIN_SALT = "mailward.portal-login.v1"
#: What a digest link may do to a quarantined mail.
ACTIONS: tuple[str, ...] = ("release", "delete", "allow", "block")
#: Lifetime of a digest's action links (the digest lists mail of the last days; the quarantine keeps it longer).
ACTION_TOKEN_MAX_AGE = timedelta(days=7)
#: Lifetime of a digest's portal login link.
LOGIN_TOKEN_MAX_AGE = timedelta(days=7)
#: Paths of the web pages digest links open, ``{token}`` filled in (the web serves them; digests build them).
ACTION_PATH = "/q/action/{token}"
LOGIN_PATH = "/q/login/{token}"
#: A spent token is remembered this long; older ones fail as expired anyway, so the purge job may forget them.
SPENT_TOKEN_KEEP = max(ACTION_TOKEN_MAX_AGE, LOGIN_TOKEN_MAX_AGE) + timedelta(days=1)


def action_url(cfg: Config, token: str) -> str:
    """The full one-click link (``MAILWARD_PUBLIC_URL``, else the web listen address)."""
    return cfg.web_url + ACTION_PATH.format(token=token)


def login_url(cfg: Config, token: str) -> str:
    return cfg.web_url + LOGIN_PATH.format(token=token)


@dataclass(frozen=True)
class ActionClaim:
    """What an action token says: do ``action`` to ``message_id`` of ``tenant_id`` for the user's ``rcpts``."""

    tenant_id: int
    message_id: str
    rcpts: tuple[str, ...]
    action: str
    user_id: int
    jti: str


@dataclass(frozen=True)
class LoginClaim:
    """What a login token says: sign ``user_id`` (of ``tenant_id``) in to the quarantine portal."""

    tenant_id: int
    user_id: int
    email: str
    jti: str


def serializer(secret_key: str, salt: str, issued_at: float | None = None) -> URLSafeTimedSerializer:
    if not secret_key:
        raise TokenInvalid("no secret key configured to sign links")
    if issued_at is None:
        return URLSafeTimedSerializer(secret_key, salt=salt)
    stamp = int(issued_at)

    class _StampedAt(TimestampSigner):
        """Stamps the given issue time instead of now."""

        def get_timestamp(self) -> int:
            return stamp

    return URLSafeTimedSerializer(secret_key, salt=salt, signer=_StampedAt)


def _loads(secret_key: str, salt: str, token: str, max_age: timedelta) -> dict[str, Any]:
    try:
        data = serializer(secret_key, salt).loads(token, max_age=int(max_age.total_seconds()))
    except SignatureExpired:
        raise TokenExpired("this link has expired") from None
    except BadSignature:
        raise TokenInvalid("this link is not valid") from None
    if not isinstance(data, dict):
        raise TokenInvalid("this link is not valid")
    return data


def make_action_token(secret_key: str, *, tenant_id: int, message_id: str, rcpts: tuple[str, ...] | list[str],
                      action: str, user_id: int, issued_at: float | None = None) -> str:
    """A one-click link token for ``action`` (release, delete, allow, block) on one quarantined mail."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    payload = {"t": tenant_id, "m": message_id, "r": list(rcpts), "a": action, "u": user_id,
               "j": secrets.token_urlsafe(16)}
    return str(serializer(secret_key, ACTION_SALT, issued_at).dumps(payload))


def verify_action_token(secret_key: str, token: str, *, max_age: timedelta = ACTION_TOKEN_MAX_AGE) -> ActionClaim:
    """The claim of a good action token; :class:`TokenExpired` or :class:`TokenInvalid` (tampered, wrong purpose)."""
    data = _loads(secret_key, ACTION_SALT, token, max_age)
    try:
        claim = ActionClaim(int(data["t"]), str(data["m"]), tuple(str(r) for r in data["r"]), str(data["a"]),
                            int(data["u"]), str(data["j"]))
    except (KeyError, TypeError, ValueError):
        raise TokenInvalid("this link is not valid") from None
    if claim.action not in ACTIONS:
        raise TokenInvalid("this link is not valid")
    return claim


def make_login_token(secret_key: str, *, tenant_id: int, user_id: int, email: str,
                     issued_at: float | None = None) -> str:
    """A magic-link token that signs a user in to the quarantine portal once."""
    payload = {"t": tenant_id, "u": user_id, "e": email, "j": secrets.token_urlsafe(16)}
    return str(serializer(secret_key, LOGIN_SALT, issued_at).dumps(payload))


def verify_login_token(secret_key: str, token: str, *, max_age: timedelta = LOGIN_TOKEN_MAX_AGE) -> LoginClaim:
    data = _loads(secret_key, LOGIN_SALT, token, max_age)
    try:
        return LoginClaim(int(data["t"]), int(data["u"]), str(data["e"]), str(data["j"]))
    except (KeyError, TypeError, ValueError):
        raise TokenInvalid("this link is not valid") from None


def spent_result(session: Session, jti: str) -> str | None:
    """What the token did when it was spent, or None if it was not spent yet."""
    return session.scalar(select(UsedToken.result).where(UsedToken.jti == jti))


def spend(session: Session, jti: str, result: str, *, tenant_id: int) -> str | None:
    """Mark a token spent with ``result``; returns None when this call spent it, else the earlier result (a replay).

    One ``INSERT ... ON CONFLICT DO NOTHING``: of two concurrent clicks exactly one spends the token (PostgreSQL
    makes the second wait for the first's commit; SQLite has one writer). Call it before acting, in the action's
    transaction, and :func:`record_result` after: an action that fails rolls the spending back with it.
    """
    dialect = session.get_bind().dialect.name
    table: Table = UsedToken.__table__  # type: ignore[assignment]
    values = {"jti": jti, "tenant_id": tenant_id, "used_at": utcnow(), "result": result[:200]}
    stmt: Any
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(table).values(**values).on_conflict_do_nothing(index_elements=["jti"])
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table).values(**values).on_conflict_do_nothing(index_elements=["jti"])
    else:
        stmt = insert(table).values(**values)
    # RETURNING says whether this statement inserted the row (rowcount is not reliable across drivers).
    if session.execute(stmt.returning(table.c.jti)).first() is not None:
        return None
    return spent_result(session, jti) or "done"


def record_result(session: Session, jti: str, result: str) -> None:
    """Say what a spent token did (shown to whoever clicks it again)."""
    session.execute(update(UsedToken).where(UsedToken.jti == jti).values(result=result[:200])
                    .execution_options(synchronize_session=False))


def redeem_login_token(session: Session, secret_key: str, token: str) -> User:
    """The active user a magic login link (``/q/login/<token>``) signs in, spending it; raises
    :class:`TokenExpired`, :class:`TokenInvalid`, or :class:`TokenUsed` on a second use. The caller commits."""
    claim = verify_login_token(secret_key, token)
    with tenant_scope(claim.tenant_id):
        try:
            user = load(session, User, claim.user_id)
        except NotFound:
            raise TokenInvalid("this link is not valid") from None
        if not user.active or user.email != claim.email:
            raise TokenInvalid("this link is not valid")
        if spend(session, claim.jti, f"signed in {user.email}", tenant_id=claim.tenant_id) is not None:
            raise TokenUsed("this link was already used: sign in again from a newer digest")
    return user
