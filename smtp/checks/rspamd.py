"""rspamd as an optional second opinion: the mail and its envelope go to ``/checkv2`` on rspamd's normal worker, its
score becomes one band symbol.

As with spamd, the check cannot add rspamd's score itself, only symbols whose scores are data
(``tenants/scores/rspamd.toml``): ``RSPAMD_0_2`` … ``RSPAMD_8_PLUS``, plus ``RSPAMD_ACTION_REJECT`` when rspamd
itself would reject (its reject score, or a forced action such as GTUBE). The reason carries rspamd's score, action
and symbols. The envelope travels as rspamd's request headers (IP, Helo, From, Rcpt, Hostname; User for outbound
mail, which tells rspamd the sender is authenticated). The HTTP/1.1 exchange is small and written here on asyncio
streams, so no HTTP library is needed. Off unless a URL is configured (``MAILWARD_RSPAMD``); when rspamd cannot
answer, ``RSPAMD_TEMPFAIL`` (score 0).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import urllib.parse
from dataclasses import dataclass

import dns.exception

from smtp.checks.address import ServiceCheck, service_client
from smtp.checks.base import CheckContext, Stage
from smtp.dns import async_resolver
from smtp.mime import ParsedMail
from tenants.platform.config import Config

#: rspamd's normal worker port, used when MAILWARD_RSPAMD gives no port with http.
DEFAULT_PORT = 11333
#: Seconds allowed to connect to rspamd.
CONNECT_TIMEOUT = 5.0
#: Seconds one scan may take, from connect to answer; rspamd's own task_timeout is 8 s.
SCAN_TIMEOUT = 15.0
#: Most bytes of the response head (status line and headers) we read.
MAX_HEAD = 16 * 1024
#: Most bytes of the JSON answer we read; one with every symbol and its options is a few tens of KB.
MAX_BODY = 4 * 1024 * 1024

#: Seconds the reverse lookup of the client may take in all; then the client counts as having no name.
RDNS_TIMEOUT = 3.0
#: Most PTR names of one address whose forward records are looked up.
MAX_PTR_NAMES = 3
#: ``ctx.facts`` key of the client's forward-confirmed reverse name: the running lookup (a future) that spamd and
#: rspamd share, or the name itself ("" for none) if something else recorded it.
RDNS_FACT = "client_hostname"

#: Band symbols by the lowest rspamd score they hold, highest first; a score below every bound is the first band.
BANDS: tuple[tuple[float, str], ...] = ((8.0, "RSPAMD_8_PLUS"), (5.0, "RSPAMD_5_8"), (2.0, "RSPAMD_2_5"))
LOW_BAND = "RSPAMD_0_2"
#: Recorded besides the band when rspamd's own action is this.
REJECT_ACTION = "reject"


class RspamdError(Exception):
    """rspamd could not be reached, timed out, or answered with an error or something that is not its JSON."""


# --- the client's reverse name --------------------------------------------------------------------------------------

async def forward_confirmed_name(cfg: Config, ip: str) -> str | None:
    """The client's reverse (PTR) name whose A/AAAA records lead back to ``ip``; None when there is none.

    What an MTA passes as the client's host name: an unconfirmed PTR can be set by whoever owns the address.
    A DNS failure or timeout also gives None.
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    resolver = async_resolver(cfg, lifetime=RDNS_TIMEOUT)
    qtype = "A" if addr.version == 4 else "AAAA"
    try:
        async with asyncio.timeout(RDNS_TIMEOUT):
            ptr = await resolver.resolve_address(ip)
            names = sorted({str(r.target).rstrip(".").lower() for r in ptr})[:MAX_PTR_NAMES]
            for name in names:
                try:
                    forward = await resolver.resolve(name, qtype)
                except dns.exception.DNSException:
                    continue
                if any(ipaddress.ip_address(r.address) == addr for r in forward):
                    return name
    except (dns.exception.DNSException, TimeoutError):
        return None
    return None


async def client_hostname(ctx: CheckContext) -> str | None:
    """The client's forward-confirmed reverse name, looked up once per transaction whichever check asks first."""
    known = ctx.facts.get(RDNS_FACT)
    if isinstance(known, str):  # recorded by whoever knew it first; "" for none
        return known or None
    if known is None:
        known = ctx.facts[RDNS_FACT] = asyncio.ensure_future(forward_confirmed_name(ctx.cfg, ctx.client_ip))
    # Shielded: a check that times out must not cancel the lookup another check is waiting for.
    result: str | None = await asyncio.shield(known)
    return result


# --- the HTTP client ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RspamdUrl:
    """rspamd's normal worker: ``http://host:port`` (or https), optionally under a path prefix behind a proxy."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @classmethod
    def parse(cls, value: str) -> RspamdUrl:
        value = value.strip()
        if "://" not in value:
            value = f"http://{value}"
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{value!r}: use an http:// or https:// URL")
        if not parts.hostname:
            raise ValueError(f"{value!r} has no host")
        if parts.query or parts.fragment or parts.username:
            raise ValueError(f"{value!r}: no query, fragment or credentials, please")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc}") from exc
        if port is None:
            port = DEFAULT_PORT if parts.scheme == "http" else 443
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"


def _header_value(value: str) -> str:
    """A request header value: control characters (CR, LF, NUL …) would end or break the header, so they go."""
    return "".join(ch for ch in value if ch >= " " and ch != "\x7f")


def request_headers(ctx: CheckContext, hostname: str | None) -> list[tuple[str, str]]:
    """rspamd's envelope headers for this transaction."""
    headers = [("IP", ctx.client_ip), ("Helo", ctx.helo), ("From", ctx.mail_from or "<>")]
    headers += [("Rcpt", rcpt) for rcpt in ctx.rcpts]
    if hostname:  # without it rspamd takes the client as having no (confirmed) reverse name
        headers.append(("Hostname", hostname))
    if ctx.direction == "outbound":  # an authenticated or relay-network sender: rspamd skips its inbound checks
        headers.append(("User", f"tenant-{ctx.tenant_ids[0]}" if ctx.tenant_ids else ctx.mail_from or "outbound"))
    return [(name, _header_value(value)) for name, value in headers if value]


@dataclass(frozen=True)
class RspamdResult:
    score: float
    required_score: float
    action: str
    #: rspamd's symbols that hit and their scores.
    symbols: dict[str, float]
    #: rspamd's SMTP message for the action, if any (e.g. "Gtube pattern").
    message: str = ""


def parse_result(body: bytes) -> RspamdResult:
    """The fields we use from a ``/checkv2`` JSON answer; raises RspamdError on anything else."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RspamdError(f"rspamd answered something that is not JSON: {body[:200]!r}") from exc
    if not isinstance(data, dict):
        raise RspamdError(f"rspamd answered unexpected JSON: {body[:200]!r}")
    if "error" in data:
        raise RspamdError(f"rspamd answered an error: {str(data['error'])[:300]}")
    score, action = data.get("score"), data.get("action")
    if not isinstance(score, int | float) or not isinstance(action, str):
        raise RspamdError(f"rspamd's answer has no score or action: {body[:200]!r}")
    required = data.get("required_score")
    symbols: dict[str, float] = {}
    raw_symbols = data.get("symbols")
    if isinstance(raw_symbols, dict):
        for name, info in raw_symbols.items():
            weight = info.get("score") if isinstance(info, dict) else None
            symbols[str(name)] = float(weight) if isinstance(weight, int | float) else 0.0
    messages = data.get("messages")
    message = messages.get("smtp_message", "") if isinstance(messages, dict) else ""
    return RspamdResult(float(score), float(required) if isinstance(required, int | float) else 0.0, action,
                        symbols, str(message))


class RspamdClient:
    """One ``POST /checkv2`` per mail, one connection each (``Connection: close``), on asyncio streams."""

    def __init__(self, url: str, *, connect_timeout: float = CONNECT_TIMEOUT, timeout: float = SCAN_TIMEOUT) -> None:
        if connect_timeout <= 0 or timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.url = RspamdUrl.parse(url)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._ssl = ssl.create_default_context() if self.url.scheme == "https" else None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await asyncio.open_connection(self.url.host, self.url.port, ssl=self._ssl, limit=MAX_HEAD)
        except TimeoutError as exc:
            raise RspamdError(f"rspamd at {self.url}: connect timed out after {self.connect_timeout:g}s") from exc
        except OSError as exc:
            raise RspamdError(f"rspamd at {self.url} unreachable: {exc.strerror or exc}") from exc

    async def check(self, message: bytes, headers: list[tuple[str, str]]) -> RspamdResult:
        """Score ``message`` with the envelope ``headers``; raises RspamdError when rspamd cannot answer."""
        try:
            async with asyncio.timeout(self.timeout):
                status, body = await self._exchange(message, headers)
        except TimeoutError as exc:
            raise RspamdError(f"rspamd at {self.url}: no answer within {self.timeout:g}s") from exc
        if status != 200:
            raise RspamdError(f"rspamd at {self.url} answered HTTP {status}: {body[:200]!r}")
        return parse_result(body)

    async def _exchange(self, message: bytes, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
        reader, writer = await self._connect()
        try:
            lines = [f"POST {self.url.path}/checkv2 HTTP/1.1", f"Host: {self.url.netloc}", "Connection: close",
                     f"Content-Length: {len(message)}"]
            lines += [f"{name}: {value}" for name, value in headers]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
            writer.write(message)
            await writer.drain()
            return await self._read_response(reader)
        except ConnectionResetError as exc:  # the peer hung up while we wrote or waited: no answer either way
            raise RspamdError(f"rspamd at {self.url} closed the connection without an answer") from exc
        except OSError as exc:
            raise RspamdError(f"rspamd at {self.url}: {exc.strerror or exc}") from exc
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def _read_response(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise RspamdError(f"rspamd at {self.url} closed the connection without an answer") from exc
        except asyncio.LimitOverrunError as exc:
            raise RspamdError(f"rspamd at {self.url}: response head over {MAX_HEAD} bytes") from exc
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise RspamdError(f"rspamd at {self.url} answered {status_line[:100]!r}, not HTTP")
        fields: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip().lower()] = value.strip()
        if "chunked" in fields.get("transfer-encoding", "").lower():
            raise RspamdError(f"rspamd at {self.url} sent a chunked answer, which this client does not read")
        length = fields.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > MAX_BODY:
                raise RspamdError(f"rspamd at {self.url}: bad or too large Content-Length {length[:20]!r}")
            try:
                body = await reader.readexactly(int(length))
            except asyncio.IncompleteReadError as exc:
                raise RspamdError(f"rspamd at {self.url} closed the connection mid-answer") from exc
        else:
            body = await self._read_to_end(reader)
        return int(code), body

    async def _read_to_end(self, reader: asyncio.StreamReader) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while chunk := await reader.read(64 * 1024):
            size += len(chunk)
            if size > MAX_BODY:
                raise RspamdError(f"rspamd at {self.url}: answer over {MAX_BODY} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


# --- the check ------------------------------------------------------------------------------------------------------

def band(score: float) -> str:
    """The band symbol of an rspamd score."""
    for bound, symbol in BANDS:
        if score >= bound:
            return symbol
    return LOW_BAND


def describe(result: RspamdResult) -> str:
    """``rspamd score 6.2/15.0, action add header (R_SPF_FAIL, ...)``: rspamd's scoring symbols first, highest first."""
    ranked = sorted(result.symbols.items(), key=lambda item: (item[1] == 0, -item[1], item[0]))
    names = ", ".join(name for name, _ in ranked) or "no symbols"
    text = f"rspamd score {result.score:.1f}/{result.required_score:.1f}, action {result.action}"
    if result.message:
        text += f": {result.message}"
    return f"{text} ({names})"


class RspamdCheck(ServiceCheck):
    """rspamd's score as a band symbol, and its reject action as a symbol of its own. Optional."""

    name = "rspamd"
    stage = Stage.DATA
    #: A little longer than the client's own timeout plus the reverse lookup, so the clearer error is recorded.
    timeout = SCAN_TIMEOUT + RDNS_TIMEOUT + 2.0
    symbols = ("RSPAMD_0_2", "RSPAMD_2_5", "RSPAMD_5_8", "RSPAMD_8_PLUS", "RSPAMD_ACTION_REJECT", "RSPAMD_TEMPFAIL")
    error = RspamdError

    def __init__(self, cfg: Config, *, rspamd: str | None = None) -> None:
        super().__init__(cfg)
        self.client = service_client(RspamdClient, rspamd if rspamd is not None else cfg.rspamd, "MAILWARD_RSPAMD")

    async def scan(self, ctx: CheckContext, mail: ParsedMail) -> None:
        headers = request_headers(ctx, await client_hostname(ctx))
        result = await self.client.check(mail.raw, headers)
        reason = describe(result)
        ctx.add(band(result.score), reason)
        if result.action == REJECT_ACTION:
            ctx.add("RSPAMD_ACTION_REJECT", reason)
