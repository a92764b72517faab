"""``mailward run``: the single-machine supervisor behind ``make run``.

Starts the private Valkey (when no Redis URL is set), migrates, creates the first MSP admin, then runs ingress,
worker, scheduler and web as child processes with the same environment, under the supervisor of
:mod:`smtp.supervisor`: one that dies is logged and started again after a back-off (1 s doubling to 30 s); only
Ctrl-C (or SIGTERM) stops them all. Everything runs under a umask of 077, with the data directory made private
first: raw mail, logs and Valkey's files are readable by their owner alone.

Virus scanning (unless ``MAILWARD_CLAMD`` names a scanner): a running system clamd is used; else, where ClamAV and its
signatures are installed, a private clamd is supervised with the others (:mod:`mailward.localclamd`) and the children
get its socket as ``MAILWARD_CLAMD`` at once. It loads its signatures while everything else starts; until it answers,
the ingress's virus check finds the scanner unavailable and the tenant's policy decides (451 by default).
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from mailward import localclamd
from smtp.supervisor import DRAIN_TIMEOUT, Child, Supervisor
from tenants.models import Role, User
from tenants.platform.config import Config
from tenants.platform.db import PRIVATE_UMASK, migrate, private_dir, secure_data_dir, session_scope
from tenants.platform.redisconn import ensure_redis, stop_private_redis
from tenants.scope import msp_scope
from tenants.services import create_user

PROCESSES = ("smtp", "worker", "scheduler", "web")
#: Seconds children get to stop after SIGTERM before they are killed: the ingress's own drain, and some margin.
STOP_GRACE = DRAIN_TIMEOUT + 10.0


def ensure_admin(cfg: Config) -> str | None:
    """Create the first MSP admin if there is none; returns the new password (shown once), else None."""
    with msp_scope(), session_scope(cfg) as session:
        if session.scalar(select(User.id).where(User.role == Role.MSP_ADMIN.value)) is not None:
            return None
        password = secrets.token_urlsafe(12)
        create_user(session, cfg.admin_email, Role.MSP_ADMIN.value, None, password)
        return password


def run_all(cfg: Config) -> int:
    os.umask(PRIVATE_UMASK)  # inherited by Valkey, clamd and the four children: what they create is private
    secure_data_dir(cfg)
    ensure_redis(cfg)
    migrate(cfg)
    password = ensure_admin(cfg)
    logs = private_dir(cfg.data_dir / "logs")

    env = dict(os.environ)
    # The supervisor's exits and restarts go to the terminal, with the time they happened.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mailward run: %(message)s")
    supervisor = Supervisor(drain_timeout=STOP_GRACE)
    virus_scan, watch = virus_scanning(cfg, env, supervisor, logs)
    for name in PROCESSES:
        supervisor.add(name, _starter(name, env, logs))
    try:
        supervisor.run(on_started=lambda: _started(cfg, logs, virus_scan, password, watch))
    finally:
        if watch is not None:
            watch.stop()
    stop_private_redis(cfg)
    print("stopped.")
    return 0


def virus_scanning(cfg: Config, env: dict[str, str], supervisor: Supervisor,
                   logs: Path) -> tuple[str, localclamd.ReadyWatch | None]:
    """Wire virus scanning into ``env`` (MAILWARD_CLAMD) and, for a private clamd, add it to ``supervisor`` (first,
    so that it starts loading its signatures before the others start). What the banner says, and the watch that
    notes when a private clamd answers (start it once the supervisor has started clamd)."""
    if cfg.clamd is not None:
        return f"ON (MAILWARD_CLAMD={cfg.clamd})", None
    plan = localclamd.plan(cfg.data_dir)
    if plan.address is not None:
        env["MAILWARD_CLAMD"] = plan.address
    if plan.private is None:
        return plan.banner, None
    supervisor.add("clamd", plan.private.starter(logs / "clamd.log"))
    return plan.banner, localclamd.ReadyWatch(plan.private.socket)


def _started(cfg: Config, logs: Path, virus_scan: str, password: str | None,
             watch: localclamd.ReadyWatch | None) -> None:
    _banner(cfg, logs, virus_scan, password)
    if watch is not None:
        watch.start()


def _starter(name: str, env: dict[str, str], logs: Path) -> Callable[[], Child]:
    """Start ``mailward NAME`` with its output appended to logs/NAME.log."""
    def start() -> Child:
        with open(logs / f"{name}.log", "ab") as log:  # the child keeps its own copy of the descriptor
            return subprocess.Popen([sys.executable, "-m", "mailward", name], env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
    return start


def _banner(cfg: Config, logs: Path, virus_scan: str, password: str | None) -> None:
    print()
    print("Mailward is running.")
    print(f"  SMTP ingress : {cfg.smtp_listen}")
    print(f"  Web console  : http://{cfg.web_listen}/")
    print(f"  Data         : {cfg.data_dir.resolve()} (logs in {logs.resolve()})")
    print(f"  Virus scan   : {virus_scan}")
    if password:
        print(f"  Admin login  : {cfg.admin_email} / {password}   (shown once; keep it)")
    else:
        print(f"  Admin login  : {cfg.admin_email} (password set on first start)")
    print("Press Ctrl-C to stop.", flush=True)
