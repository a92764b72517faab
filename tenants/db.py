"""Engine and sessions on the configured database, and the schema-revision check every process runs at start."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from tenants.config import Config, get_config
from tenants.exceptions import SchemaNotCurrent

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
#: Seconds SQLite waits for a lock held by another process before it gives up.
SQLITE_BUSY_TIMEOUT = 30

_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT}, **kwargs)

        # The driver's own transaction handling stays on: it opens a transaction just before the first write, so
        # a session that only reads never holds SQLite's single write lock, and a writer waits on busy_timeout.
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, record: Any) -> None:
            # WAL: readers never block the writer; synchronous=FULL: a commit survives power loss (a 250 is durable).
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT * 1000}")
            cur.close()

        return engine
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if "poolclass" not in kwargs:
        kwargs.update(pool_size=10, max_overflow=20)
    return create_engine(url, pool_pre_ping=True, **kwargs)


def get_engine(cfg: Config | None = None) -> Engine:
    url = (cfg or get_config()).effective_database_url
    if url not in _engines:
        _engines[url] = make_engine(url)
    return _engines[url]


def session_factory(cfg: Config | None = None) -> sessionmaker[Session]:
    url = (cfg or get_config()).effective_database_url
    if url not in _factories:
        _factories[url] = sessionmaker(bind=get_engine(cfg), expire_on_commit=False)
    return _factories[url]


@contextmanager
def session_scope(cfg: Config | None = None) -> Iterator[Session]:
    """A session that commits at the end of the block and rolls back on error."""
    session = session_factory(cfg)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines() -> None:
    """Close every pooled connection (after fork, and in tests)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _factories.clear()


def alembic_config(cfg: Config | None = None) -> Any:
    from alembic.config import Config as AlembicConfig

    acfg = AlembicConfig()
    acfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    acfg.set_main_option("sqlalchemy.url", (cfg or get_config()).effective_database_url.replace("%", "%%"))
    return acfg


def migrate(cfg: Config | None = None, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (Alembic upgrade)."""
    from alembic import command

    command.upgrade(alembic_config(cfg), revision)


def schema_revisions(cfg: Config | None = None) -> tuple[str | None, str | None]:
    """(revision the database is at, revision the code expects)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(cfg)).get_current_head()
    with get_engine(cfg).connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, head


def require_current_schema(cfg: Config | None = None) -> None:
    """Refuse to run on a database the code's migrations have not been applied to."""
    current, head = schema_revisions(cfg)
    if current != head:
        where = (cfg or get_config()).effective_database_url.split("@")[-1]
        raise SchemaNotCurrent(
            f"database {where} is at schema revision {current or 'none (empty database)'}, "
            f"the code needs {head}: run 'mailward db upgrade' first"
        )
