"""Where a scanning daemon listens (clamd, spamd): a unix socket path, or a TCP host and port."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenants.config import parse_hostport
from tenants.exceptions import ConfigError

#: Prefix a path needs to be taken as a unix socket when it contains no slash.
UNIX_PREFIX = "unix:"


@dataclass(frozen=True)
class ServiceAddress:
    path: str | None = None
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, value: str, *, default_port: int) -> ServiceAddress:
        """``/run/x.sock``, ``unix:x.sock``, ``host``, ``host:port`` or ``[v6]:port``; raises ValueError."""
        value = value.strip()
        if value.startswith(UNIX_PREFIX):
            return cls(path=value[len(UNIX_PREFIX):])
        if "/" in value:
            return cls(path=value)
        hp = parse_hostport(value, default_port=default_port)
        return cls(host=hp.host, port=hp.port)

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


C = TypeVar("C")


def service_client(factory: Callable[[str], C], address: str | None, setting: str) -> C | None:
    """The client of an optional daemon at ``address``, or None when none is configured (the check is then off).

    A malformed address stops the process at start with the setting's name (``ValueError`` → :class:`ConfigError`).
    """
    if not address:
        return None
    try:
        return factory(address)
    except ValueError as exc:
        raise ConfigError(f"{setting}: {exc}") from exc
