"""Refreshing SpamAssassin's rules: run ``sa-update``, and tell every process to reload when the rules changed.

``sa-update`` exits 0 when it installed new rules, 1 when there were none, and 2 or more on an error (4: it could
not reach the update mirrors, as on a network that allows no outside access). Only an installed update bumps the
rules version in Redis (:data:`~tenants.sarules.SA_RULES_VERSION_KEY`); ingress processes poll it and reload.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import redis

from tenants.platform.config import Config
from tenants.platform.redisconn import redis_client
from tenants.sarules import SA_RULES_VERSION_KEY, own_update_dir

log = logging.getLogger(__name__)

#: Seconds sa-update may run (it fetches and verifies a few MB of rules and compiles them).
SA_UPDATE_TIMEOUT = 600
#: Seconds between two scheduled sa-update runs (SpamAssassin publishes rule updates about daily).
SA_UPDATE_INTERVAL = 24 * 3600
#: The sa-update program (Debian's spamassassin package installs it on PATH).
SA_UPDATE = "sa-update"


@dataclass(frozen=True)
class UpdateResult:
    """What a run of sa-update did: ``updated`` when new rules were installed; ``message`` says what happened."""

    updated: bool
    ok: bool
    message: str


def run_sa_update(update_dir: Path, *, program: str = SA_UPDATE, timeout: float = SA_UPDATE_TIMEOUT) -> UpdateResult:
    """Run sa-update once, writing to ``update_dir`` (Mailward's own, never the system's). Never raises: a missing
    program, a timeout or a network failure is in the result."""
    path = shutil.which(program)
    if path is None:
        return UpdateResult(False, False, f"{program} is not installed (Debian package spamassassin)")
    try:
        update_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        done = subprocess.run([path, "--updatedir", str(update_dir)], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return UpdateResult(False, False, f"{program} did not finish within {timeout:g}s")
    except OSError as exc:
        return UpdateResult(False, False, f"{program} could not run: {exc.strerror or exc}")
    detail = " ".join((done.stderr or done.stdout or "").split())[:300]
    if done.returncode == 0:
        return UpdateResult(True, True, "new rules installed")
    if done.returncode == 1:
        return UpdateResult(False, True, "no new rules")
    return UpdateResult(False, False, f"{program} failed (exit {done.returncode}){': ' + detail if detail else ''}")


def bump_rules_version(cfg: Config) -> int | None:
    """Tell every process to reload SpamAssassin's rules; the new version, None when Redis is unreachable."""
    try:
        return int(redis_client(cfg).incr(SA_RULES_VERSION_KEY))
    except (redis.RedisError, OSError) as exc:
        log.warning("could not bump the SpamAssassin rules version: %s", exc)
        return None


def update_rules(cfg: Config, *, program: str = SA_UPDATE) -> UpdateResult:
    """sa-update, then a reload everywhere when it installed new rules; a failure is logged, never raised."""
    result = run_sa_update(own_update_dir(cfg.data_dir), program=program)
    if result.updated:
        bump_rules_version(cfg)
    (log.info if result.ok else log.warning)("sa-update: %s", result.message)
    return result
