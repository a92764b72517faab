"""Connection limits of the SMTP ingress: per-client and global caps, and quiet logging when descriptors run out.

One client address must not take the ingress from everyone else. Each connection takes a slot when it is made:
over :attr:`ConnectionLimits.per_ip` for its client (an IPv4 address, an IPv6 /64, since one host owns a whole /64)
or over :attr:`ConnectionLimits.total`, it gets ``421 4.7.0`` and is closed before any SMTP is spoken. The global
cap sits below the process's open-file limit, so that accepting never fails for want of a descriptor and the
ingress keeps room for what it opens itself (deliveries, database, Redis, the checks' DNS and clamd sockets).

Should ``accept()`` fail anyway (EMFILE: something else used the descriptors up), asyncio logs a traceback per
failed call, hundreds a second; :class:`QuietAcceptErrors` turns that into one line a second.
The caps count per process: the listeners of one ingress process (port 25 and submission) share them.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import resource
import time
from dataclasses import dataclass, field
from typing import Any

from tenants.exceptions import ConfigError
from tenants.platform.config import Config

log = logging.getLogger(__name__)

#: Descriptors never given to clients, however low the open-file limit: listeners, logs, database and Redis pools.
FD_RESERVE_MIN = 64
#: Share of the open-file limit kept for what the ingress opens itself while it works: fast-path deliveries (up to
#: 200 at once), the checks' DNS, clamd and spamd sockets. The rest is for client connections.
FD_RESERVE_SHARE = 0.2
#: Open-file limit assumed when the process has none (RLIM_INFINITY).
FD_UNLIMITED = 1 << 20
#: Most connections a derived global cap allows, however high the open-file limit (containers often have a million):
#: an idle session costs about 11 KB (measured), so 16k of them stay well inside the chart's 512 MiB.
DERIVED_CAP_MAX = 16384
#: Prefix length an IPv6 client is counted by: one host (one customer line) gets a whole /64.
IPV6_CLIENT_PREFIX = 64
#: Seconds between two log lines about the same kind of refusal or accept error (the rest are counted).
LOG_INTERVAL = 1.0
#: errno values of an accept() that failed for want of resources (asyncio retries them after a second).
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def open_file_limit() -> int:
    """This process's soft limit of open descriptors (RLIMIT_NOFILE)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FD_UNLIMITED if soft == resource.RLIM_INFINITY else int(soft)


def global_cap(configured: int, fd_limit: int) -> int:
    """The most connections at once: ``configured`` (MAILWARD_SMTP_MAX_CONNECTIONS), or derived from the open-file
    limit when it is 0 (up to :data:`DERIVED_CAP_MAX`). Raises ConfigError when the limit leaves no room for the
    ingress's own descriptors."""
    if configured:
        if configured > fd_limit - FD_RESERVE_MIN:
            raise ConfigError(f"MAILWARD_SMTP_MAX_CONNECTIONS: {configured} leaves fewer than {FD_RESERVE_MIN} of the "
                              f"{fd_limit} open files (ulimit -n) for the ingress itself; lower it or raise the limit")
        return configured
    cap = min(fd_limit - max(FD_RESERVE_MIN, int(fd_limit * FD_RESERVE_SHARE)), DERIVED_CAP_MAX)
    if cap < 1:
        raise ConfigError(f"the open-file limit ({fd_limit}, ulimit -n) is too low for the SMTP ingress; raise it")
    return cap


def client_key(peer: Any) -> str:
    """What a connection counts against: its IPv4 address (an IPv4-mapped IPv6 one too) or its IPv6 /64."""
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    try:
        addr = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)  # a unix socket or something unforeseen: counted by its name
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, IPV6_CLIENT_PREFIX), strict=False))
    return str(addr)


@dataclass
class Throttle:
    """At most one log line per key every :data:`LOG_INTERVAL` seconds; counts what it held back meanwhile."""

    interval: float = LOG_INTERVAL
    _last: dict[str, float] = field(default_factory=dict)
    _held: dict[str, int] = field(default_factory=dict)

    def ready(self, key: str) -> int | None:
        """None when this line must be held back; else how many lines of this key were held back since the last."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        if len(self._last) > 10_000:  # many keys (a scan from many addresses): forget the old ones
            self._last.clear()
        self._last[key] = now
        return self._held.pop(key, 0)


class ConnectionLimits:
    """Open connections by client and in all; shared by every listener of one ingress process."""

    def __init__(self, *, per_ip: int, total: int, greeting_timeout: float, idle_timeout: float) -> None:
        if per_ip < 1 or total < 1 or greeting_timeout <= 0 or idle_timeout <= 0:
            raise ValueError("connection limits and timeouts must be positive")
        self.per_ip = per_ip
        self.total = total
        #: Seconds a new client has for its first command.
        self.greeting_timeout = greeting_timeout
        #: Seconds a client may stay silent afterwards (between commands and while it sends DATA).
        self.idle_timeout = idle_timeout
        self.open = 0
        self.by_client: dict[str, int] = {}
        self._throttle = Throttle()

    @classmethod
    def from_config(cls, cfg: Config, fd_limit: int | None = None) -> ConnectionLimits:
        """The limits ``cfg`` sets, the global cap derived from this process's open-file limit when unset."""
        fd_limit = open_file_limit() if fd_limit is None else fd_limit
        return cls(per_ip=cfg.smtp_max_connections_per_ip, total=global_cap(cfg.smtp_max_connections, fd_limit),
                   greeting_timeout=cfg.smtp_greeting_timeout, idle_timeout=cfg.smtp_idle_timeout)

    def __str__(self) -> str:
        return (f"at most {self.per_ip} connections per client and {self.total} in all; {self.greeting_timeout:g}s "
                f"for the first command, {self.idle_timeout:g}s idle")

    def admit(self, peer: Any) -> str | None:
        """Take a slot for a new connection from ``peer``: its client key, or None when a cap is reached (the caller
        answers :func:`refusal` and closes). Every key returned must be given back with :meth:`release`."""
        key = client_key(peer)
        if self.open >= self.total:
            self._log_refusal("*", f"{self.open} connections open, the most this ingress takes (from {key} and others)")
            return None
        held = self.by_client.get(key, 0)
        if held >= self.per_ip:
            self._log_refusal(key, f"{key} already holds {held} connections, the most one client may")
            return None
        self.by_client[key] = held + 1
        self.open += 1
        return key

    def release(self, key: str) -> None:
        """Give back the slot :meth:`admit` returned ``key`` for."""
        self.open -= 1
        left = self.by_client.get(key, 0) - 1
        if left > 0:
            self.by_client[key] = left
        else:
            self.by_client.pop(key, None)

    def _log_refusal(self, key: str, why: str) -> None:
        held = self._throttle.ready(key)
        if held is not None:
            log.warning("connection refused with 421: %s%s", why,
                        f" ({held} more refused since the last line)" if held else "")


def refusal(hostname: str) -> bytes:
    """The reply that closes a connection over a cap (RFC 5321 3.8: 421 and close, the client tries again later)."""
    return f"421 4.7.0 {hostname} Too many connections, try again later\r\n".encode("ascii", "replace")


class QuietAcceptErrors:
    """An event-loop exception handler: accept() failures for want of descriptors (and asyncio's retries of the
    listener after them) make one log line a second without a traceback; anything else goes to the previous handler."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._previous = loop.get_exception_handler()
        self._throttle = Throttle()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.set_exception_handler(self)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and self._about_accepting(context, exc):
            held = self._throttle.ready("accept")
            if held is not None:
                log.error("cannot accept connections: %s (%s)%s", exc.strerror or exc, context.get("message"),
                          f"; {held} more such errors since the last line" if held else "")
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    @staticmethod
    def _about_accepting(context: dict[str, Any], exc: OSError) -> bool:
        """The listener's accept failing for want of resources, or asyncio's retry of a listener since closed."""
        if "socket.accept()" in str(context.get("message", "")):
            return True
        return exc.errno in RESOURCE_ERRNOS or (exc.errno == errno.EBADF and "_start_serving" in repr(
            context.get("handle", "")))
