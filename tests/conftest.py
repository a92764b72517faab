"""Fixtures: real Redis, real PostgreSQL (``MAILWARD_TEST_DB=postgres``) or SQLite, a real SMTP sink, factories.

The database schema is migrated once per run into a template; each test gets a fresh copy (a file copy on SQLite,
``CREATE DATABASE ... TEMPLATE`` on PostgreSQL) and a flushed Redis.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text

from tenants.platform import db as tdb
from tenants.platform.config import Config, set_config
from tenants.scope import msp_scope
from tests.support.servers import Process, Sink, free_port, running, start_postgres, start_redis, wait_for

#: Fixture modules of the real servers the checks need (DNS, clamd, spamd, rspamd), usable from every test module.
pytest_plugins = ["tests.fixtures.dns", "tests.fixtures.av", "tests.fixtures.peers", "tests.fixtures.browser",
                  "tests.fixtures.api", "tests.fixtures.ldap"]

TEST_DB = os.environ.get("MAILWARD_TEST_DB", "sqlite")
#: The tenant egress allowance of the test installations: loopback on any port (where the test servers listen).
LOOPBACK_EGRESS = {"MAILWARD_TENANT_EGRESS_ALLOW": "127.0.0.0/8,::1/128", "MAILWARD_TENANT_SMTP_PORTS": "1-65535",
                   "MAILWARD_TENANT_LDAP_PORTS": "1-65535"}
_counter = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    yield from running(start_redis())


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    if TEST_DB != "postgres":
        yield None
        return
    yield from running(start_postgres())


@pytest.fixture(scope="session")
def db_template(pg_server: Any) -> Iterator[str]:
    """A migrated database to copy from: a file path (SQLite) or a database name (PostgreSQL)."""
    if pg_server is not None:
        engine = create_engine(pg_server.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("CREATE DATABASE mw_template"))
        engine.dispose()
        tdb.migrate(Config(database_url=pg_server.url("mw_template")))
        tdb.dispose_engines()
        yield "mw_template"
        return
    workdir = Path(tempfile.mkdtemp(prefix="mw-template-"))
    path = workdir / "template.db"
    tdb.migrate(Config(database_url=f"sqlite:///{path}"))
    tdb.dispose_engines()
    yield str(path)
    shutil.rmtree(workdir, ignore_errors=True)


def _fresh_database(pg_server: Any, template: str, data_dir: Path) -> str:
    if pg_server is not None:
        name = f"mw_test_{os.getpid()}_{next(_counter)}"
        engine = create_engine(pg_server.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE mw_template'))
        engine.dispose()
        return pg_server.url(name)
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, data_dir / "mailward.db")
    return ""  # the default: the SQLite file under MAILWARD_DATA_DIR


@pytest.fixture
def env(tmp_path: Path, redis_server: Any, pg_server: Any, db_template: str, dns: Any) -> Iterator[dict[str, str]]:
    """The environment of a fresh installation: the CLI and every child process read it.

    Its resolver is the loopback DNS server (emptied for each test): nothing a test does asks the internet.
    """
    data_dir = tmp_path / "var"
    database_url = _fresh_database(pg_server, db_template, data_dir)
    redis.Redis.from_url(redis_server.url).flushall()
    e = {k: v for k, v in os.environ.items() if not k.startswith("MAILWARD_")}
    e.update({
        "MAILWARD_DATA_DIR": str(data_dir),
        "MAILWARD_REDIS_URL": redis_server.url,
        "MAILWARD_HOSTNAME": "mx.mailward.test",
        "MAILWARD_SMTP_LISTEN": f"127.0.0.1:{free_port()}",
        # One ingress process, so that per-process caps and logs are exact;
        # tests/integration/test_ingress_processes.py runs more.
        "MAILWARD_SMTP_PROCESSES": "1",
        "MAILWARD_WEB_LISTEN": f"127.0.0.1:{free_port()}",
        "MAILWARD_SECRET_KEY": "test-secret-key-not-for-production",
        "MAILWARD_DELIVERY_LEASE": "5",
        "MAILWARD_SWEEP_INTERVAL": "0.5",
        "MAILWARD_RETRY_SCHEDULE": "1,1,2",
        "MAILWARD_SMTP_TIMEOUT": "10",
        "MAILWARD_LOG_LEVEL": "INFO",
        "MAILWARD_DNS": f"127.0.0.1:{dns.port}",
        # SpamAssassin's stock rules take seconds to compile: only the tests of the rule engine load rules.
        "MAILWARD_SA_RULES_DIR": "none",
        # The sink, slapd and the other test servers listen on loopback at random ports: tenants may reach them here.
        # Security tests of the egress policy use ``strict_egress`` (none of this allowance).
        **LOOPBACK_EGRESS,
    })
    if database_url:
        e["MAILWARD_DATABASE_URL"] = database_url
    yield e


@pytest.fixture
def cfg(env: dict[str, str]) -> Iterator[Config]:
    """The same installation as ``env``, as this process's configuration."""
    c = Config.from_env(env)
    set_config(c)
    yield c
    set_config(None)
    tdb.dispose_engines()


@pytest.fixture
def session(cfg: Config) -> Iterator[Any]:
    s = tdb.session_factory(cfg)()
    yield s
    s.rollback()
    s.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink().start()
    yield s
    s.stop()


class Factory:
    """Creates tenants, domains and users through the same services the CLI and web use."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def tenant(self, name: str, domains: tuple[str, ...] = (), transport_port: int = 25,
               tls: str = "none") -> Any:
        from tenants.egress import EgressPolicy
        from tenants.services import add_domain, create_tenant

        with msp_scope(), tdb.session_scope(self.cfg) as s:
            t = create_tenant(s, name)
            for d in domains:
                add_domain(s, t, d, "127.0.0.1", transport_port, tls, egress=EgressPolicy(self.cfg))
            s.flush()
            s.expunge_all()
        return t

    def user(self, email: str, role: str, tenant: Any = None, password: str = "correct horse battery") -> Any:
        from tenants.services import create_user

        with msp_scope(), tdb.session_scope(self.cfg) as s:
            u = create_user(s, email, role, tenant, password)
            s.flush()
            s.expunge_all()
        return u


@pytest.fixture
def factory(cfg: Config) -> Factory:
    return Factory(cfg)


@pytest.fixture
def web_app(cfg: Config) -> Any:
    """The web application on this test's installation."""
    from app import create_app

    return create_app(cfg)


@pytest.fixture
def world(factory: Any) -> dict[str, Any]:
    """Two tenants, Acme (two domains) and Beta (one), with a user of every role."""
    acme = factory.tenant("Acme", ("acme.test", "acme2.test"))
    beta = factory.tenant("Beta", ("beta.test",))
    factory.user("admin@msp.test", "msp_admin")
    factory.user("helpdesk@msp.test", "msp_helpdesk")
    factory.user("admin@acme.test", "tenant_admin", acme)
    factory.user("auditor@acme.test", "tenant_auditor", acme)
    factory.user("user@acme.test", "user", acme)
    factory.user("admin@beta.test", "tenant_admin", beta)
    return {"acme": acme, "beta": beta}


@pytest.fixture
def ingress(env: dict[str, str], tmp_path: Path, cfg: Config) -> Iterator[Process]:
    """The SMTP ingress as a real child process on this test's installation."""
    proc = Process(["smtp"], env, tmp_path / "smtp.log").start()
    port = int(env["MAILWARD_SMTP_LISTEN"].rsplit(":", 1)[1])

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            assert proc.proc is not None and proc.proc.poll() is None, proc.log()
            return False

    wait_for(up, 20, what="ingress port")
    yield proc
    proc.stop()


@pytest.fixture
def acme(factory: Factory, sink: Sink) -> Any:
    """Tenant Acme owning acme.test, delivering to the test's sink."""
    return factory.tenant("Acme", ("acme.test",), transport_port=sink.port)
