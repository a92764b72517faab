"""Extension singletons, bound to an application with ``init_app`` in :func:`app.create_app`.

The database is not Flask-SQLAlchemy. Its engine comes from ``engine_from_config`` and would miss what
:func:`tenants.platform.db.make_engine` adds on SQLite (WAL, ``synchronous=FULL``, ``busy_timeout`` and ``BEGIN
IMMEDIATE``,
which let the web, the ingress and the worker write one file without ``database is locked`` errors mid-transaction);
hooking those in means copying them or overriding its private ``_make_engine``, and it would open a second pool on
the same database. Its model base and query helpers would go unused too: the models are plain SQLAlchemy in
``tenants``. So :class:`Database` hands out one session per request from
:func:`tenants.platform.db.session_factory`, the
same engine and sessions as the CLI, the ingress and the worker. The tenant scope hooks listen on every
``Session``, so they guard these sessions as they guard the others.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, g
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tenants.platform import db as tdb
from tenants.platform.config import Config
from tenants.platform.redisconn import redis_client

_EXT = "mailward"


class Database:
    """One SQLAlchemy session per request, opened on first use and closed (rolled back if uncommitted) at teardown."""

    def init_app(self, app: Flask, cfg: Config) -> None:
        state = app.extensions.setdefault(_EXT, {})
        state["engine"] = tdb.get_engine(cfg)
        state["sessions"] = tdb.session_factory(cfg)
        app.teardown_appcontext(self._close)

    @property
    def session(self) -> Session:
        """The current request's session; views commit it themselves."""
        if "db_session" not in g:
            g.db_session = self.new_session()
        return g.db_session  # type: ignore[no-any-return]

    @property
    def engine(self) -> Engine:
        return current_app.extensions[_EXT]["engine"]  # type: ignore[no-any-return]

    def new_session(self) -> Session:
        """A session outside the request's unit of work (the caller closes it)."""
        factory: sessionmaker[Session] = current_app.extensions[_EXT]["sessions"]
        return factory()

    @staticmethod
    def _close(exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()


def init_mailward(app: Flask, cfg: Config) -> None:
    """Keep the configuration and a Redis client (it connects lazily, on first command) on the application."""
    state = app.extensions.setdefault(_EXT, {})
    state["config"] = cfg
    state["redis"] = redis_client(cfg)


def config() -> Config:
    """The Mailward configuration of the current application."""
    return current_app.extensions[_EXT]["config"]  # type: ignore[no-any-return]


def redis() -> Any:
    """The current application's Redis client."""
    return current_app.extensions[_EXT]["redis"]


def limiter_storage_uri(cfg: Config) -> str:
    """The Redis URL in the form the ``limits`` library takes (a unix socket is ``redis+unix://``)."""
    url = cfg.effective_redis_url
    return "redis+unix://" + url[len("unix://"):] if url.startswith("unix://") else url


db = Database()
login_manager = LoginManager()
csrf = CSRFProtect()
#: Request rate limits (Flask-Limiter on the installation's Redis), keyed by client address: the sign-in forms'
#: per-IP wall (:mod:`app.security`). Redis being away lets requests through (``RATELIMIT_SWALLOW_ERRORS``).
limiter = Limiter(key_func=get_remote_address)
