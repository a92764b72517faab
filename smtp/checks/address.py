"""External scanning daemons (clamd, spamd, rspamd): where one listens (a unix socket path, or a TCP host and port),
its client when configured, and :class:`ServiceCheck`, the one base of the checks that ask one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from smtp.checks.base import Check, CheckContext
from smtp.mime import ParsedMail
from tenants.exceptions import ConfigError
from tenants.platform.config import parse_hostport

log = logging.getLogger(__name__)

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


class ServiceCheck(Check):
    """A check that asks an external scanning daemon (clamd, spamd, rspamd): off when no address is configured, and
    when the daemon cannot answer (its client raises ``error``) the check records its ``<NAME>_TEMPFAIL`` symbol and
    the policy decides. Subclasses set ``client`` in ``__init__`` (:func:`service_client`) and write :meth:`scan`."""

    #: What the client raises when the daemon cannot answer.
    error: ClassVar[type[Exception]] = OSError
    client: Any = None

    @property
    def enabled(self) -> bool:
        return self.client is not None

    async def run(self, ctx: CheckContext) -> None:
        if ctx.mail is None or self.client is None:
            return
        try:
            await self.scan(ctx, ctx.mail)
        except self.error as exc:
            log.warning("%s check failed (client %s): %s", self.name, ctx.client_ip, exc)
            ctx.add(self.tempfail_symbol, str(exc))

    async def scan(self, ctx: CheckContext, mail: ParsedMail) -> None:
        """Ask the daemon about ``mail`` and record what it says (its client's ``error`` is handled by :meth:`run`)."""
        raise NotImplementedError
