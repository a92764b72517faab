"""Who calls the REST API: the request's bearer API key, its tenant scope, its scopes, and how often it calls.

:func:`app.access.enforce` hands every ``@allow_api(scope)`` view to :func:`check`, once per request, before the view
runs: ``Authorization: Bearer mw_...`` is verified (a missing, unknown or revoked key is 401 ``unauthorized``, an
expired one 401 ``key_expired``), counted against the
key's rate limit (429 with ``Retry-After``), refused while its tenant is suspended (403 ``tenant_suspended``), checked
for the view's scope (403 ``forbidden_scope``), and the key's
tenant scope — or the MSP scope for an MSP-wide key — is set for the rest of the request, as
:func:`app.auth.enter_scope` does for a signed-in session; :func:`leave_scope` resets it at teardown.

A session cookie is never a credential here: :class:`WithoutCookies` removes the ``Cookie`` header of every request
under ``/api/v1`` before Flask sees it, so a browser's session can neither call the API (it is exempt from CSRF) nor
be refreshed by it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import current_app, g, request
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from app.api.errors import ApiError
from app.extensions import db, redis
from tenants import apikeys
from tenants.scope import Scope, reset_scope, set_scope
from tenants.services import tenant_suspended

log = logging.getLogger(__name__)

#: Requests one key may make per window (a fixed window in Redis); ``app.config["MAILWARD_API_RATE_LIMIT"]``.
RATE_LIMIT = 600
#: Length of a rate-limit window in seconds; ``app.config["MAILWARD_API_RATE_WINDOW"]``.
RATE_WINDOW = 60
#: Redis key of one key's counter in one window.
RATE_KEY = "mailward:api:rate:{key_id}:{window}"
#: Realm named in the WWW-Authenticate header of a 401.
REALM = "mailward"
#: The rate limiter's clock, in seconds (a test holds it still so that no window ends mid-test).
clock = time.time


@dataclass(frozen=True)
class ApiCaller:
    """The key that authenticated the current request, as plain values."""

    key_id: int
    prefix: str
    tenant_id: int | None
    scopes: frozenset[str]

    @property
    def is_msp(self) -> bool:
        return self.tenant_id is None

    @property
    def actor(self) -> str:
        """How the caller appears in a message's timeline and on list entries."""
        return f"api key {self.prefix}"


def caller() -> ApiCaller:
    """The current request's API caller (set by :func:`check`; views run only after it)."""
    found = g.get("api_caller")
    if not isinstance(found, ApiCaller):
        raise RuntimeError("no API caller: the view is not declared with @allow_api")
    return found


def _unauthorized(message: str, error: str | None = None, code: str = "unauthorized") -> ApiError:
    challenge = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")
    return ApiError(401, code, message, headers={"WWW-Authenticate": challenge})


def _presented_key() -> str:
    header = request.headers.get("Authorization", "")
    kind, _, value = header.partition(" ")
    if not header:
        raise _unauthorized("send an API key: Authorization: Bearer <key>")
    if kind.lower() != "bearer" or not value.strip():
        raise _unauthorized("use the Bearer scheme: Authorization: Bearer <key>", "invalid_request")
    return value.strip()


def rate_limit(key_id: int) -> None:
    """Count one request of ``key_id`` in the current fixed window; :class:`ApiError` 429 over the limit.

    Without Redis the request passes (logged): the limit protects the service, the database stays the truth.
    """
    limit = int(current_app.config.get("MAILWARD_API_RATE_LIMIT", RATE_LIMIT))
    window = int(current_app.config.get("MAILWARD_API_RATE_WINDOW", RATE_WINDOW))
    now = clock()
    slot = int(now // window)
    name = RATE_KEY.format(key_id=key_id, window=slot)
    try:
        pipe = redis().pipeline()
        pipe.incr(name)
        pipe.expire(name, window + 1)
        count = int(pipe.execute()[0])
    except (RedisError, OSError) as exc:
        log.warning("API rate limit not applied (Redis: %s)", exc)
        return
    if count > limit:
        retry_after = max(1, math.ceil((slot + 1) * window - now))
        raise ApiError(429, "rate_limited", f"more than {limit} requests in {window} s with this key; "
                                            f"retry after {retry_after} s", headers={"Retry-After": str(retry_after)})


def check(scope: str) -> None:
    """Authenticate the request's bearer key for a view that needs ``scope``, and enter the key's tenant scope."""
    session = db.session
    key = apikeys.verify(session, _presented_key())
    if key is None:
        raise _unauthorized("unknown or revoked API key", "invalid_token")
    if apikeys.is_expired(key):
        raise _unauthorized(f"this API key expired at {key.expires_at:%Y-%m-%d %H:%M} UTC", "invalid_token",
                            code="key_expired")
    found = ApiCaller(key_id=key.id, prefix=key.prefix, tenant_id=key.tenant_id, scopes=frozenset(key.scope_list))
    rate_limit(found.key_id)
    if tenant_suspended(session, found.tenant_id):
        raise ApiError(403, "tenant_suspended", "this API key's organisation is suspended")
    if scope not in found.scopes:
        raise ApiError(403, "forbidden_scope", f"this API key lacks the {scope!r} scope")
    _touch(key)
    g.api_caller = found
    g.api_scope_token = set_scope(Scope(found.tenant_id))


def _touch(key: Any) -> None:
    """Record the key's use (at most once a minute); a failure to write it never fails the request."""
    session = db.session
    try:
        if apikeys.touch(session, key):
            session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        log.warning("last use of API key %s not recorded: %s", key.prefix, exc)


def leave_scope(exc: BaseException | None) -> None:
    """Teardown: reset the scope :func:`check` set (before :func:`app.auth.leave_scope` resets the session's)."""
    token = g.pop("api_scope_token", None)
    if token is not None:
        reset_scope(token)


class WithoutCookies:
    """WSGI middleware: requests under ``prefixes`` reach the application without their ``Cookie`` header."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], prefixes: Iterable[str]) -> None:
        self.wsgi_app = wsgi_app
        self.prefixes = tuple(prefixes)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if "HTTP_COOKIE" in environ and any(path == p or path.startswith(p + "/") for p in self.prefixes):
            environ = {k: v for k, v in environ.items() if k != "HTTP_COOKIE"}
        return self.wsgi_app(environ, start_response)
