"""What a check is: a small unit that states facts about a mail as symbols; policy turns them into a verdict.

A check has a ``name``, the ``stage`` it runs at, the checks it ``depends_on`` (DMARC after SPF and DKIM), a
``timeout``, the ``symbols`` it may emit (their scores live in ``tenants/scores/*.toml``), and ``run(ctx)``, which
only records findings with ``ctx.add(...)``. A check never returns a verdict.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from smtp.mime import ParsedMail
from tenants.platform.config import Config
from tenants.policy import Policy


class Stage(enum.StrEnum):
    #: The client IP, HELO and sender are known (after MAIL FROM): DNSBL, SPF. Runs while recipients arrive.
    MAIL = "mail"
    #: The whole mail is in and parsed: content, authentication, virus, Bayes.
    DATA = "data"


@dataclass
class Finding:
    """A symbol a check recorded; ``tenant_id`` set when it holds for one tenant only (e.g. that tenant's Bayes)."""

    symbol: str
    reason: str = ""
    tenant_id: int | None = None


@dataclass
class CheckContext:
    """Everything checks read about one SMTP transaction, and the findings they record."""

    cfg: Config
    client_ip: str
    helo: str
    #: The envelope sender; "" for the null sender.
    mail_from: str
    rcpts: list[str] = field(default_factory=list)
    #: Tenant of each recipient's domain (inbound) or the sending tenant (outbound).
    tenant_ids: list[int] = field(default_factory=list)
    #: The tenants' effective policies, by tenant id.
    policies: Mapping[int, Policy] = field(default_factory=dict)
    direction: str = "inbound"
    #: The parsed mail; None at the MAIL stage.
    mail: ParsedMail | None = None
    #: Async Redis client for caches and counters, or None when a check must do without.
    redis: Any = None
    #: Results checks share with the checks that depend on them, e.g. ``facts["spf"]`` for DMARC.
    facts: dict[str, Any] = field(default_factory=dict)
    #: Header lines (``Name: value``, no line end) that delivered mail should carry, e.g. Authentication-Results.
    add_headers: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def add(self, symbol: str, reason: str = "", *, tenant_id: int | None = None) -> None:
        self.findings.append(Finding(symbol, reason[:500], tenant_id))

    @property
    def sender_domain(self) -> str:
        return self.mail_from.rpartition("@")[2].lower() if self.mail_from else ""

    def has(self, symbol: str) -> bool:
        return any(f.symbol == symbol for f in self.findings)


class Check:
    """Base class of every check. Subclasses set the class attributes and implement :meth:`run`."""

    name: ClassVar[str]
    stage: ClassVar[Stage] = Stage.DATA
    depends_on: ClassVar[tuple[str, ...]] = ()
    #: Seconds the check may take; then it is cancelled and ``<NAME>_TEMPFAIL`` is recorded.
    timeout: ClassVar[float] = 10.0
    symbols: ClassVar[tuple[str, ...]] = ()
    #: A check that must not be skipped: its failure records a ``tempfail`` symbol and the policy decides (virus).
    required: ClassVar[bool] = False
    #: Directions the check runs for.
    directions: ClassVar[tuple[str, ...]] = ("inbound", "outbound")

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    @property
    def enabled(self) -> bool:
        """False when the check is switched off by configuration (e.g. no clamd address)."""
        return True

    @property
    def tempfail_symbol(self) -> str:
        return f"{self.name.upper()}_TEMPFAIL"

    async def run(self, ctx: CheckContext) -> None:
        raise NotImplementedError

    async def ready(self) -> None:
        """Wait until the check can judge mail at full strength (rules compiled, models loaded); the ingress awaits
        this before it listens, so that no mail is judged without it. Most checks are ready when built."""

    async def close(self) -> None:
        """Release connections the check keeps (called when the ingress stops)."""
