"""SpamAssassin as an optional second opinion: the mail goes to spamd (``SYMBOLS`` over aiospamc), its score becomes
one band symbol.

A check cannot add an arbitrary score, only symbols whose scores are data (``tenants/scores/spamd.toml``), so
spamd's score is mapped to a band: ``SPAMD_0_2`` … ``SPAMD_8_PLUS``; the reason carries the exact score, spamd's
threshold and the rules that hit. spamd sees the mail as delivered to it, so a ``Received`` header naming the client
(HELO, verified reverse name, IP) is put in front: without it SpamAssassin would not know the last relay.
Off unless an address is configured (``MAILWARD_SPAMD``); when spamd cannot answer, ``SPAMD_TEMPFAIL`` (score 0).
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from pathlib import Path

import aiospamc
from aiospamc.exceptions import AIOSpamcConnectionFailed, ClientException, TimeoutException
from aiospamc.responses import ResponseException

from smtp.checks.address import ServiceAddress, ServiceCheck, service_client
from smtp.checks.base import CheckContext, Stage
from smtp.checks.rspamd import RDNS_TIMEOUT, client_hostname
from smtp.mime import ParsedMail
from tenants.platform.config import Config

#: spamd's usual TCP port, used when MAILWARD_SPAMD names a host without one.
DEFAULT_PORT = 783
#: Seconds allowed to connect to spamd.
CONNECT_TIMEOUT = 5.0
#: Seconds one scan may take, from connect to answer. Network rules (DNSBL, Razor, Pyzor) can take ten seconds or more.
SCAN_TIMEOUT = 30.0
#: Mails larger than this are not sent (spamc's own default limit is 500 KB): big mails are rarely spam, and
#: SpamAssassin's time grows with size. They get SPAMD_SKIPPED (score 0).
MAX_SIZE = 512 * 1024
#: Most characters of the HELO name put in the Received header.
MAX_HELO = 255

#: Band symbols by the lowest spamd score they hold, highest first; a score below every bound is the first band.
BANDS: tuple[tuple[float, str], ...] = ((8.0, "SPAMD_8_PLUS"), (5.0, "SPAMD_5_8"), (2.0, "SPAMD_2_5"))
LOW_BAND = "SPAMD_0_2"


class SpamdError(Exception):
    """spamd could not be reached, timed out, or answered with an error."""


class SpamdAddress(ServiceAddress):
    """Where spamd listens (see :class:`~smtp.checks.address.ServiceAddress`); a bare host means its default port."""

    @classmethod
    def parse(cls, value: str, *, default_port: int = DEFAULT_PORT) -> ServiceAddress:
        return super().parse(value, default_port=default_port)


@dataclass(frozen=True)
class SpamdResult:
    score: float
    threshold: float
    #: Names of the SpamAssassin rules that hit, in spamd's order.
    rules: tuple[str, ...]


def band(score: float) -> str:
    """The band symbol of a spamd score."""
    for bound, symbol in BANDS:
        if score >= bound:
            return symbol
    return LOW_BAND


class SpamdClient:
    """One ``SYMBOLS`` request per mail through aiospamc (TCP or unix socket)."""

    def __init__(self, address: str, *, connect_timeout: float = CONNECT_TIMEOUT,
                 timeout: float = SCAN_TIMEOUT) -> None:
        if connect_timeout <= 0 or timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.address = SpamdAddress.parse(address)
        self.connect_timeout = connect_timeout
        self.timeout = timeout

    async def symbols(self, message: bytes) -> SpamdResult:
        """Score ``message``; raises SpamdError when spamd cannot answer."""
        where = self.address
        try:
            response = await aiospamc.symbols(
                message,
                host=where.host or "localhost", port=where.port,
                socket_path=Path(where.path) if where.path is not None else None,
                timeout=aiospamc.Timeout(total=self.timeout, connection=self.connect_timeout,
                                         response=self.timeout),
            )
        except TimeoutError as exc:  # aiospamc's total timeout
            raise SpamdError(f"spamd at {where}: no answer within {self.timeout:g}s") from exc
        except TimeoutException as exc:  # its connect or response timeout, or spamd's own
            raise SpamdError(f"spamd at {where} timed out: {exc or type(exc).__name__}") from exc
        except ResponseException as exc:
            raise SpamdError(f"spamd at {where} answered an error: {exc}") from exc
        except AIOSpamcConnectionFailed as exc:
            raise SpamdError(f"spamd at {where} unreachable: {exc.__cause__ or exc}") from exc
        except ClientException as exc:  # an answer that is not spamd's protocol
            cause = exc.__cause__ or exc
            raise SpamdError(f"spamd at {where}: {type(exc).__name__}: {cause}") from exc
        except OSError as exc:
            raise SpamdError(f"spamd at {where}: {exc.strerror or exc}") from exc
        spam = response.headers.spam
        if spam is None:
            raise SpamdError(f"spamd at {where} answered without a Spam header")
        names = response.body.decode("ascii", "replace").strip()
        rules = tuple(n.strip() for n in names.split(",") if n.strip())
        return SpamdResult(float(spam.score), float(spam.threshold), rules)


def _token(value: str) -> str:
    """A HELO as one harmless token: a line break in it would put a forged header above ours, so such things go."""
    return "".join(ch for ch in value if ch > " " and ch not in "()\x7f")[:MAX_HELO]


def received_header(ctx: CheckContext, hostname: str | None, crlf: bool) -> bytes:
    """The trace header our MTA would add, so SpamAssassin sees the client as the last relay."""
    helo = _token(ctx.helo) or "unknown"
    rdns = f"{hostname} " if hostname else ""
    line_end = "\r\n" if crlf else "\n"
    value = (f"Received: from {helo} ({rdns}[{ctx.client_ip}]){line_end}\tby {ctx.cfg.hostname} (Mailward) "
             f"with ESMTP; {email.utils.formatdate(localtime=False)}{line_end}")
    return value.encode("utf-8", "replace")


class SpamdCheck(ServiceCheck):
    """SpamAssassin's score as a band symbol. Optional, inbound only: SpamAssassin has no notion of a submitter."""

    name = "spamd"
    stage = Stage.DATA
    #: A little longer than the client's own timeout plus the reverse lookup, so the clearer error is recorded.
    timeout = SCAN_TIMEOUT + RDNS_TIMEOUT + 2.0
    symbols = ("SPAMD_0_2", "SPAMD_2_5", "SPAMD_5_8", "SPAMD_8_PLUS", "SPAMD_SKIPPED", "SPAMD_TEMPFAIL")
    directions = ("inbound",)
    error = SpamdError

    def __init__(self, cfg: Config, *, spamd: str | None = None, max_size: int = MAX_SIZE) -> None:
        super().__init__(cfg)
        self.max_size = max_size
        self.client = service_client(SpamdClient, spamd if spamd is not None else cfg.spamd, "MAILWARD_SPAMD")

    async def scan(self, ctx: CheckContext, mail: ParsedMail) -> None:
        raw = mail.raw
        if len(raw) > self.max_size:
            ctx.add("SPAMD_SKIPPED", f"{len(raw)} bytes, over the {self.max_size} byte limit for spamd")
            return
        hostname = await client_hostname(ctx)
        first_line = raw.split(b"\n", 1)[0]
        message = received_header(ctx, hostname, first_line.endswith(b"\r")) + raw
        result = await self.client.symbols(message)
        rules = ", ".join(result.rules) or "no rules"
        ctx.add(band(result.score), f"spamd score {result.score:.1f}/{result.threshold:.1f} ({rules})")
