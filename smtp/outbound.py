"""Outbound SMTP client: one conversation per (message, next hop), per-recipient replies, pooled connections.

Used by the ingress fast path (inside its event loop) and by worker jobs (``asyncio.run``). Every step has the
configured timeout. A tenant's transport is held to the egress policy (:mod:`tenants.egress`) at every delivery: its
host is resolved and checked, and the connection goes to the checked address; a refused one is never connected to.
A reused connection that turns out dead before MAIL FROM is replaced once; nothing is retried after DATA started, so
a retry can never duplicate a mail.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosmtplib
import dns.exception
import dns.resolver

from smtp.dns import async_resolver
from tenants.egress import SMTP, EgressError, EgressPolicy, EgressRefused
from tenants.models import TlsMode
from tenants.platform.config import Config, HostPort
from tenants.policy import DomainRoute

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NextHop:
    """Where a group of recipients goes: the hosts to try in order, and how strictly to use TLS."""

    hosts: tuple[HostPort, ...]
    tls: TlsMode = TlsMode.OPPORTUNISTIC
    #: Why there is no host, as a reply (code, text); a 5xx bounces at once, a 4xx waits.
    failure: tuple[int, str] | None = None
    #: A tenant's transport: each host is resolved and checked by the egress policy just before connecting.
    egress_checked: bool = False


@dataclass
class RcptResult:
    code: int
    reply: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600


@dataclass
class SendResult:
    """Reply per recipient; a transport failure gives every recipient the same temporary reply."""

    per_rcpt: dict[str, RcptResult] = field(default_factory=dict)
    host: str = ""


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One client context for every connection (building one costs ~17 ms; it is shared, never changed).

    Opportunistic TLS between MTAs does not verify certificates (RFC 7435); "required" verifies nothing more
    here either until DANE/MTA-STS arrive, but it refuses to send in clear text.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


#: Enhanced status of a delivery the egress policy refused (a security policy status, RFC 3463), and of a transport
#: whose name did not resolve at delivery time; both are temporary, so the tenant can fix the transport in time.
EGRESS_REFUSED_STATUS = "4.7.0"
EGRESS_UNRESOLVED_STATUS = "4.4.3"

#: Most simultaneous connections to one next-hop host; more deliveries wait for a free one. The idle pool keeps as
#: many, so a burst reuses its connections instead of closing and reopening them.
MAX_CONNECTIONS_PER_HOST = 16


class _PooledConnection:
    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
        self.idle_since = time.monotonic()


class SmtpPool:
    """Idle connections per next-hop host, reused for the next mail to the same transport."""

    def __init__(self, cfg: Config, *, max_per_host: int = MAX_CONNECTIONS_PER_HOST) -> None:
        self.cfg = cfg
        self.max_idle_per_host = max_per_host
        self.max_per_host = max_per_host
        self._idle: dict[tuple[str, int, str], list[_PooledConnection]] = {}
        self._slots: dict[tuple[str, int], asyncio.Semaphore] = {}
        self.egress = EgressPolicy(cfg)

    def _host_slots(self, hp: HostPort) -> asyncio.Semaphore:
        key = (hp.host, hp.port)
        if key not in self._slots:
            self._slots[key] = asyncio.Semaphore(self.max_per_host)
        return self._slots[key]

    async def _connect(self, hp: HostPort, tls: TlsMode) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=hp.host, port=hp.port, timeout=self.cfg.smtp_timeout, local_hostname=self.cfg.hostname,
            start_tls=False, tls_context=_tls_context(),
        )
        await client.connect()
        await client.ehlo()
        if tls != TlsMode.NONE and client.supports_extension("starttls"):
            await client.starttls()
            await client.ehlo()
        elif tls == TlsMode.REQUIRED:
            client.close()
            raise aiosmtplib.SMTPException(f"{hp} offers no STARTTLS and TLS is required")
        return client

    async def acquire(self, hp: HostPort, tls: TlsMode) -> tuple[aiosmtplib.SMTP, bool]:
        """A connection to ``hp`` and whether it was reused."""
        key = (hp.host, hp.port, tls.value)
        idle = self._idle.get(key, [])
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.client.is_connected and now - conn.idle_since < self.cfg.pool_idle:
                return conn.client, True
            conn.client.close()
        return await self._connect(hp, tls), False

    def release(self, hp: HostPort, tls: TlsMode, client: aiosmtplib.SMTP) -> None:
        key = (hp.host, hp.port, tls.value)
        idle = self._idle.setdefault(key, [])
        if client.is_connected and len(idle) < self.max_idle_per_host:
            idle.append(_PooledConnection(client))
        else:
            client.close()

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                try:
                    await asyncio.wait_for(conn.client.quit(), 2)
                except Exception:
                    conn.client.close()
        self._idle.clear()

    async def send(self, hop: NextHop, sender: str, rcpts: Sequence[str], data: bytes) -> SendResult:
        """Try the hop's hosts in order until one gives a reply to DATA (or refuses every recipient)."""
        if not hop.hosts and hop.failure:
            return SendResult({r: RcptResult(*hop.failure) for r in rcpts})
        hosts = hop.hosts
        if hop.egress_checked:
            try:
                hosts = await self._checked_hosts(hop)
            except EgressError as exc:
                # Decided before any connection: the same words whether anything listens at the address or not.
                status = EGRESS_REFUSED_STATUS if isinstance(exc, EgressRefused) else EGRESS_UNRESOLVED_STATUS
                log.warning("delivery to %s refused by the egress policy: %s", hop.hosts[0], exc)
                return SendResult({r: RcptResult(451, f"{status} {exc}") for r in rcpts})
        last_error = "no host to deliver to"
        for hp in hosts:
            try:
                return await self._send_via(hp, hop.tls, sender, rcpts, data)
            except _HostFailed as exc:
                last_error = f"{hp}: {exc}"
                log.info("delivery via %s failed: %s", hp, exc)
        return SendResult({r: RcptResult(451, f"4.4.1 {last_error}") for r in rcpts})

    async def _checked_hosts(self, hop: NextHop) -> tuple[HostPort, ...]:
        """The hop's hosts as the addresses the egress policy checked just now (the name is never handed on)."""
        out: list[HostPort] = []
        for hp in hop.hosts:
            addresses = await self.egress.pin_async(SMTP, hp.host, hp.port, label="transport")
            out.extend(HostPort(address, hp.port) for address in addresses)
        return tuple(out)

    async def _send_via(self, hp: HostPort, tls: TlsMode, sender: str, rcpts: Sequence[str], data: bytes) -> SendResult:
        async with self._host_slots(hp):
            return await self._send_via_slot(hp, tls, sender, rcpts, data)

    async def _send_via_slot(
        self, hp: HostPort, tls: TlsMode, sender: str, rcpts: Sequence[str], data: bytes
    ) -> SendResult:
        for _ in range(2):
            try:
                client, reused = await self.acquire(hp, tls)
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                raise _HostFailed(str(exc) or type(exc).__name__) from exc
            try:
                await client.mail(sender, options=self._mail_options(client, data))
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, OSError) as exc:
                client.close()
                if reused:
                    continue  # a pooled connection the server had closed: nothing was sent yet, try a fresh one
                raise _HostFailed(str(exc) or type(exc).__name__) from exc
            except aiosmtplib.SMTPResponseException as exc:
                await _reset(client)
                self.release(hp, tls, client)
                return SendResult({r: RcptResult(exc.code, exc.message) for r in rcpts}, str(hp))
            break
        else:
            raise _HostFailed("connection lost")
        return await self._transaction(client, hp, tls, rcpts, data)

    @staticmethod
    def _mail_options(client: aiosmtplib.SMTP, data: bytes) -> list[str]:
        opts = []
        if client.supports_extension("size"):
            opts.append(f"SIZE={len(data)}")
        if client.supports_extension("8bitmime") and not data[:65536].isascii():
            opts.append("BODY=8BITMIME")
        return opts

    async def _transaction(
        self, client: aiosmtplib.SMTP, hp: HostPort, tls: TlsMode, rcpts: Sequence[str], data: bytes
    ) -> SendResult:
        result = SendResult(host=str(hp))
        accepted: list[str] = []
        try:
            for rcpt in rcpts:
                try:
                    r = await client.rcpt(rcpt)
                    accepted.append(rcpt)
                    result.per_rcpt[rcpt] = RcptResult(r.code, r.message)
                except aiosmtplib.SMTPResponseException as exc:
                    result.per_rcpt[rcpt] = RcptResult(exc.code, exc.message)
            if not accepted:
                await _reset(client)
                self.release(hp, tls, client)
                return result
            try:
                r = await client.data(data)
                reply = RcptResult(r.code, r.message)
            except aiosmtplib.SMTPResponseException as exc:
                reply = RcptResult(exc.code, exc.message)
            for rcpt in accepted:
                result.per_rcpt[rcpt] = reply
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            # The outcome of DATA is unknown: treat as temporary. A resend may duplicate only if the server had
            # accepted the mail and the reply was lost, which SMTP cannot rule out (RFC 1047).
            for rcpt in rcpts:
                if rcpt not in result.per_rcpt or rcpt in accepted:
                    result.per_rcpt[rcpt] = RcptResult(451, f"4.4.2 {hp}: {exc or type(exc).__name__}")
            return result
        self.release(hp, tls, client)
        return result


class _HostFailed(Exception):
    """This host could not take the mail (connect, TLS or greeting failed); the next host may."""


async def _reset(client: aiosmtplib.SMTP) -> None:
    try:
        await client.rset()
    except Exception:
        client.close()


class Router:
    """Next hop for a recipient domain: the tenant's transport, the relay host, or the domain's MX records."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.resolver = async_resolver(cfg, lifetime=min(cfg.smtp_timeout, 30.0))

    @staticmethod
    def transport(host: str, port: int, tls: str, *, egress_checked: bool = True) -> NextHop:
        """A tenant's transport; held to the egress policy unless the MSP's CLI set it (``egress_checked`` False)."""
        return NextHop((HostPort(host, port),), TlsMode(tls), egress_checked=egress_checked)

    @staticmethod
    def for_route(route: DomainRoute) -> NextHop:
        """The transport of a recipient domain the ingress looked up."""
        return Router.transport(route.transport_host, route.transport_port, route.transport_tls,
                                egress_checked=not route.transport_egress_exempt)

    async def mx(self, domain: str) -> NextHop:
        if self.cfg.relayhost is not None:
            return NextHop((self.cfg.relayhost,), TlsMode.OPPORTUNISTIC)
        try:
            answer = await self.resolver.resolve(domain, "MX")
            records = sorted(answer, key=lambda r: r.preference)  # type: ignore[attr-defined]
            hosts = [str(r.exchange).rstrip(".") for r in records]  # type: ignore[attr-defined]
            if hosts == [""]:
                return NextHop((), failure=(556, f"5.1.10 {domain} accepts no mail (null MX)"))
        except dns.resolver.NoAnswer:
            hosts = [domain]  # implicit MX (RFC 5321 5.1)
        except dns.resolver.NXDOMAIN:
            return NextHop((), failure=(550, f"5.1.2 domain {domain} does not exist"))
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            return NextHop((), failure=(451, f"4.4.3 MX lookup for {domain} failed: {exc}"))
        return NextHop(tuple(HostPort(h, 25) for h in hosts), TlsMode.OPPORTUNISTIC)
