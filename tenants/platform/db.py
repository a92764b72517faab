"""Engine and sessions on the configured database, and the schema-revision check every process runs at start.

The data directory holds every mail as raw bytes (the SQLite database) and the installation's secrets, so what
Mailward makes there is its owner's alone: directories 0700, files 0600 (:func:`secure_data_dir`); the SQLite file is
created 0600, and SQLite gives its ``-wal`` and ``-shm`` files the database file's mode.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from tenants.exceptions import SchemaNotCurrent
from tenants.platform.config import Config, get_config
from tenants.scope import guard_engine

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
#: Mode of the data directory and the directories Mailward makes in it: only the owner may enter.
PRIVATE_DIR_MODE = 0o700
#: Mode of the files there (the SQLite database and its -wal/-shm, logs, the generated secret key).
PRIVATE_FILE_MODE = 0o600
#: The umask of ``mailward run`` and its children: whatever they create is the owner's alone.
PRIVATE_UMASK = 0o077
#: What the data directory holds besides the database: directories and files made private at start.
DATA_SUBDIRS = ("logs", "valkey", "clamav")
DATA_FILES = ("secret_key",)
#: Suffixes of the files SQLite keeps next to a database.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
#: Seconds SQLite waits for a lock held by another process before it gives up.
SQLITE_BUSY_TIMEOUT = 30

_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}


def _tighten(path: Path, mode: int) -> None:
    """Take away from ``path`` any permission beyond ``mode`` (a missing path is fine; another owner's is logged)."""
    try:
        current = path.stat().st_mode & 0o777
        if current & ~mode:
            path.chmod(current & mode)
    except FileNotFoundError:
        pass
    except PermissionError as exc:
        log.warning("cannot make %s private (%s): other local users may read it", path, exc.strerror)


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner may enter: created 0700 (parents too) if missing, tightened if not."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, PRIVATE_DIR_MODE)
    return path


def private_sqlite_file(path: Path) -> None:
    """Create the SQLite database file 0600 if it does not exist, and tighten it and its side files if they do
    (SQLite creates ``-wal`` and ``-shm`` with the database file's mode)."""
    if not path.parent.exists():
        private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE))
    except OSError as exc:
        log.warning("cannot create %s as a private file (%s)", path, exc.strerror)
    for name in ("", *SQLITE_SIDE_FILES):
        _tighten(path.with_name(path.name + name), PRIVATE_FILE_MODE)


def secure_data_dir(cfg: Config) -> None:
    """Make the data directory and what Mailward keeps in it (database, logs, private Valkey, clamd's files, the
    secret key) its owner's alone; an installation made before this keeps working, with tighter modes."""
    private_dir(cfg.data_dir)
    for sub in DATA_SUBDIRS:
        if (cfg.data_dir / sub).is_dir():
            private_dir(cfg.data_dir / sub)
    for name in DATA_FILES:
        _tighten(cfg.data_dir / name, PRIVATE_FILE_MODE)
    if not cfg.database_url:
        private_sqlite_file(cfg.sqlite_path)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine on ``url`` with the isolation guard on its connections (:func:`tenants.scope.guard_engine`)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:" and "mode=memory" not in path:
            private_sqlite_file(Path(path.split("?", 1)[0]))
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

        return guard_engine(engine)
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if "poolclass" not in kwargs:
        kwargs.update(pool_size=10, max_overflow=20)
    return guard_engine(create_engine(url, pool_pre_ping=True, **kwargs))


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
