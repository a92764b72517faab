"""The throwaway installation bench/throughput.py measures: a temporary folder, a private Redis, a database, the
bench tenant and domain (through the CLI, as an operator adds them), more tenants and domains in bulk when asked
(``--tenants``, ``--domains``), and ``mailward`` processes started as children of the benchmark.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.throughput_peers import START_TIMEOUT

#: Lines of the ingress log shown when it fails to start.
LOG_TAIL = 30
#: Rows per INSERT statement when tenants and domains are created in bulk.
BULK_ROWS = 1000


@contextlib.contextmanager
def workdir_of(parent: Path | None, keep: bool) -> Iterator[Path]:
    """A temporary folder for one run (under ``parent`` when given), removed afterwards unless ``keep``."""
    path = Path(tempfile.mkdtemp(prefix="mw-bench-", dir=parent))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def filesystem_of(path: Path) -> str:
    """The type of the filesystem ``path`` lives on (SQLite's fsync cost depends on it)."""
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


@dataclass
class Tenancy:
    """The tenants and domains of the installation: how many in all, and the domains the load is addressed to."""

    tenants: int
    domains: int
    load_domains: list[str]
    load_tenants: int  # how many tenants own the load's domains
    seconds: float = 0.0  # to create the bulk ones


def bulk_names(domain: str, suffix: str, tenants: int, domains: int) -> list[list[str]]:
    """Domain names by tenant: ``tenants`` tenants owning ``domains`` domains in all, spread evenly. The first
    tenant is the bench tenant with the bench domain ``domain``; domain j of the rest goes to tenant j % tenants."""
    by_tenant: list[list[str]] = [[domain]] + [[] for _ in range(tenants - 1)]
    for j in range(1, domains):
        t = j % tenants
        by_tenant[t].append(f"d{j:05d}-t{t:04d}{suffix}.bench.test")
    return by_tenant


def sample_domains(by_tenant: list[list[str]], count: int) -> list[str]:
    """``count`` domains spread over as many tenants as possible: one domain from each of ``count`` tenants picked
    evenly when there are enough tenants, else every tenant's domains in turn."""
    n = len(by_tenant)
    total = sum(len(ds) for ds in by_tenant)
    count = min(count, total)
    picked: list[str] = []
    if count <= n:
        for i in range(count):
            picked.append(by_tenant[(i * n) // count][0])
        return picked
    depth = 0
    while len(picked) < count:
        for ds in by_tenant:
            if depth < len(ds) and len(picked) < count:
                picked.append(ds[depth])
        depth += 1
    return picked


class Installation:
    """A throwaway Mailward: data dir, Redis, database, the bench tenant and domain (more in bulk), its processes."""

    def __init__(self, workdir: Path, stack: contextlib.ExitStack, *, database_url: str | None,
                 postgres: bool, extra_env: dict[str, str]) -> None:
        from tests.support.servers import free_port, start_postgres, start_redis

        self.workdir = workdir
        self.stack = stack
        redis_server = start_redis()
        stack.callback(redis_server.stop)
        self.database = "SQLite"
        if postgres:
            pg = start_postgres()
            stack.callback(pg.stop)
            database_url = pg.url()
        if database_url:
            self.database = "PostgreSQL" if database_url.startswith("postgres") else database_url.split(":", 1)[0]
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWARD_")}
        env.update({
            "MAILWARD_DATA_DIR": str(workdir / "var"),
            "MAILWARD_REDIS_URL": redis_server.url,
            "MAILWARD_HOSTNAME": "mx.bench.test",
            "MAILWARD_SMTP_LISTEN": f"127.0.0.1:{self.port}",
            "MAILWARD_WEB_LISTEN": f"127.0.0.1:{free_port()}",
            "MAILWARD_SECRET_KEY": "bench-secret-key-not-for-production",
            "MAILWARD_LOG_LEVEL": "INFO",
        })
        if database_url:
            env["MAILWARD_DATABASE_URL"] = database_url
        env.update(extra_env)
        self.env = env

    def cli(self, *args: str) -> str:
        from tests.support.servers import run_cli

        done = run_cli(list(args), self.env)
        if done.returncode != 0:
            raise RuntimeError(f"mailward {' '.join(args)} failed: {(done.stderr or done.stdout).strip()}")
        return done.stdout.strip()

    def set_up(self, transport_port: int, tenant: str, domain: str) -> None:
        self.cli("db", "upgrade")
        self.cli("tenant", "create", tenant)
        self.cli("domain", "add", tenant, domain, "--transport", f"127.0.0.1:{transport_port}", "--tls", "none")

    def populate(self, transport_port: int, tenant: str, domain: str, suffix: str, *, tenants: int, domains: int,
                 load_domains: int) -> Tenancy:
        """Bring the installation to ``tenants`` tenants and ``domains`` domains in all (the bench tenant and domain
        that :meth:`set_up` made included), every domain routed to ``transport_port`` as the bench domain is, and
        pick ``load_domains`` of them for the load. The new rows go in with a few multi-row INSERTs (in the MSP
        scope, as the operator's tools work), not one CLI call each: 10,000 domains take seconds, not an hour."""
        by_tenant = bulk_names(domain, suffix, tenants, domains)
        started = time.monotonic()
        if tenants > 1 or domains > 1:
            self._insert(by_tenant, transport_port, tenant)
        seconds = time.monotonic() - started
        sample = sample_domains(by_tenant, load_domains)
        owner = {d: t for t, ds in enumerate(by_tenant) for d in ds}
        return Tenancy(tenants, domains, sample, len({owner[d] for d in sample}), seconds)

    def _insert(self, by_tenant: list[list[str]], transport_port: int, tenant: str) -> None:
        from sqlalchemy import insert, select

        from tenants.models import Domain, Tenant, TlsMode
        from tenants.platform.config import Config
        from tenants.platform.db import dispose_engines, session_scope
        from tenants.platform.redisconn import bump_policy_version
        from tenants.scope import msp_scope
        from tenants.services import get_tenant, validate_domain_name

        cfg = Config.from_env(self.env)
        names = [f"{tenant} {t:04d}" for t in range(1, len(by_tenant))]
        try:
            with msp_scope(), session_scope(cfg) as session:
                bench = get_tenant(session, tenant)
                for first in range(0, len(names), BULK_ROWS):
                    session.execute(insert(Tenant), [{"name": name, "msp_id": bench.msp_id}
                                                     for name in names[first:first + BULK_ROWS]])
                ids: dict[str, int] = dict(session.execute(select(Tenant.name, Tenant.id)).tuples().all())
                rows: list[dict[str, Any]] = []
                for t, ds in enumerate(by_tenant):
                    tenant_id = ids[names[t - 1]] if t else bench.id
                    rows.extend({"tenant_id": tenant_id, "name": validate_domain_name(d), "vouched": True,
                                 "transport_host": "127.0.0.1", "transport_port": transport_port,
                                 "transport_tls": TlsMode.NONE.value, "transport_egress_exempt": True}
                                for d in ds[1 if t == 0 else 0:])
                for first in range(0, len(rows), BULK_ROWS):
                    session.execute(insert(Domain), rows[first:first + BULK_ROWS])
        finally:
            dispose_engines()  # the ingress alone holds the database from now on
        bump_policy_version(cfg)

    def start(self, command: str) -> Any:
        """Start ``mailward COMMAND`` as a child process; it is stopped when the benchmark ends."""
        from tests.support.servers import Process

        proc = Process([command], self.env, self.workdir / f"{command}.log").start()
        self.stack.callback(proc.stop)
        return proc

    def start_ingress(self) -> Any:
        from tests.support.servers import port_open

        proc = self.start("smtp")
        deadline = time.monotonic() + START_TIMEOUT
        while not port_open(self.port):
            if proc.proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(proc.log().splitlines()[-LOG_TAIL:])
                raise RuntimeError(f"the ingress did not start; its log ends with:\n{tail}")
            time.sleep(0.05)
        return proc
