"""``mailward run``: the single-machine supervisor behind ``make run``.

Starts the private Valkey (when no Redis URL is set), migrates, creates the first MSP admin, then runs ingress,
worker, scheduler and web as child processes with the same environment. Ctrl-C (or SIGTERM) stops all of them;
if one dies, the rest are stopped too and the exit code says so. Everything runs under a umask of 077, with the data
directory made private first: raw mail, logs and Valkey's files are readable by their owner alone.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from types import FrameType

from sqlalchemy import select

from mailward.localclamd import find_or_start
from tenants.config import Config
from tenants.db import PRIVATE_UMASK, migrate, private_dir, secure_data_dir, session_scope
from tenants.models import Role, User
from tenants.redisconn import ensure_redis, stop_private_redis
from tenants.scope import msp_scope
from tenants.services import create_user

PROCESSES = ("smtp", "worker", "scheduler", "web")
#: Seconds children get to stop after SIGTERM before they are killed.
STOP_GRACE = 15.0


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

    children: dict[str, subprocess.Popen[bytes]] = {}
    env = dict(os.environ)
    clamd_proc = None
    if cfg.clamd is None:
        clamd, virus_scan, clamd_proc = find_or_start(cfg.data_dir)
        if clamd:
            env["MAILWARD_CLAMD"] = clamd
    else:
        virus_scan = f"clamd at {cfg.clamd}"
    for name in PROCESSES:
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it for its lifetime
        children[name] = subprocess.Popen([sys.executable, "-m", "mailward", name], env=env, stdout=log,
                                          stderr=subprocess.STDOUT)

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

    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    failed: str | None = None
    while not stopping:
        for name, proc in children.items():
            if proc.poll() is not None:
                failed = f"{name} exited with code {proc.returncode}; see {logs / (name + '.log')}"
                stopping = True
                break
        time.sleep(0.2)

    print("\nstopping...", flush=True)
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for proc in children.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if clamd_proc is not None:
        clamd_proc.terminate()
        clamd_proc.wait(STOP_GRACE)
    stop_private_redis(cfg)
    if failed:
        print(f"mailward: error: {failed}", file=sys.stderr)
        return 1
    print("stopped.")
    return 0
