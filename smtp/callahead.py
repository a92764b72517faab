"""Recipient verification at RCPT, for the ingress: the tenant's list (static or synced from LDAP), or a call-ahead.

:class:`RecipientVerifier` is the one thing :meth:`smtp.server.IngressHandler.handle_RCPT` calls once the recipient's
tenant is known. It caches each tenant's mode (dropped when the policy version moves, and after
:data:`SETTINGS_CACHE_TTL` at most) and answers:

- ``static`` / ``ldap``: one indexed lookup of :class:`~tenants.models.ValidRecipient` per RCPT, in a thread. A
  per-tenant in-memory copy was the alternative: it saves well under a millisecond per RCPT but costs every replica
  the tenant's whole address list in memory and a full reload on every policy change anywhere; the query is simpler
  and always current.
- ``callahead``: :func:`probe` asks the domain's transport — EHLO, ``MAIL FROM:<>``, ``RCPT TO:<addr>``, RSET, QUIT —
  and the answer is cached in Redis per tenant and address (:data:`VALID_TTL`, :data:`INVALID_TTL`); concurrent RCPTs
  for one address in this process share one probe. 2xx → accept, 5xx → ``550 5.1.1``, 4xx → ``450 4.1.1``.

The transport is held to the egress policy (:mod:`tenants.egress`) like delivery: resolved, checked, and the probe
connects to the checked address; a refused one is never connected to (no answer: the recipient is accepted, and the
mail then waits in the queue, refused the same way).

Anything that is not a definite answer fails open: an unreachable or timed-out transport, a refused ``MAIL FROM:<>``,
Redis or the database down → the recipient is accepted (and logged); the mail then queues or bounces like any other.
Only a 5xx to RCPT itself, or an address missing from a list, is ever a 5xx here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiosmtplib
from sqlalchemy.orm import Session

from tenants import recipients
from tenants.egress import SMTP, EgressError, EgressPolicy
from tenants.models import TlsMode
from tenants.platform.config import Config
from tenants.policy import DomainRoute
from tenants.scope import tenant_scope

log = logging.getLogger(__name__)

#: Seconds one whole call-ahead conversation may take; past it the recipient is accepted (the mail will queue).
PROBE_TIMEOUT = 10.0
#: Seconds a transport's "yes, that mailbox exists" is believed.
VALID_TTL = 24 * 3600
#: Seconds a transport's "no such mailbox" is believed (shorter: a new mailbox should start receiving soon).
INVALID_TTL = 3600
#: Seconds a transport that could not be reached is not asked again (a burst must not wait on a dead host each time).
UNREACHABLE_TTL = 60
#: Seconds a tenant's cached mode is used at most, even when the policy version could not be read.
SETTINGS_CACHE_TTL = 60.0
#: Prefix of the call-ahead cache keys in Redis.
KEY_PREFIX = "mailward:callahead"

REPLY_UNKNOWN = "550 5.1.1 <{address}>: recipient unknown"
REPLY_TRY_LATER = "450 4.1.1 <{address}>: recipient verification failed temporarily, try again later"


@dataclass(frozen=True)
class ProbeResult:
    """What the transport said to ``RCPT TO``: its code and text; code 0 when there was no answer to judge."""

    code: int
    text: str

    @property
    def verdict(self) -> str:
        """``valid``, ``invalid``, ``tempfail`` or ``unknown`` (no answer: fail open)."""
        if 200 <= self.code < 300:
            return "valid"
        if 500 <= self.code < 600:
            return "invalid"
        if 400 <= self.code < 500:
            return "tempfail"
        return "unknown"


def _tls_context() -> ssl.SSLContext:
    """Opportunistic TLS between MTAs does not verify certificates (RFC 7435), like delivery itself."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def probe(route: DomainRoute, address: str, *, helo: str, egress: EgressPolicy,
                timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """Ask the domain's transport whether it takes mail for ``address``; never sends DATA. Unless the MSP's CLI set
    the transport, the probe goes to an address ``egress`` checked just now."""
    host = route.transport_host
    if not route.transport_egress_exempt:
        try:
            host = (await egress.pin_async(SMTP, host, route.transport_port, label="transport"))[0]
        except EgressError as exc:
            return ProbeResult(0, f"refused by the egress policy: {exc}")
    client = aiosmtplib.SMTP(hostname=host, port=route.transport_port, timeout=timeout, local_hostname=helo,
                             start_tls=False, tls_context=_tls_context())
    try:
        async with asyncio.timeout(timeout):
            await client.connect()
            await client.ehlo()
            tls = TlsMode(route.transport_tls)
            if tls != TlsMode.NONE and client.supports_extension("starttls"):
                await client.starttls()
                await client.ehlo()
            elif tls == TlsMode.REQUIRED:
                return ProbeResult(0, "transport offers no STARTTLS and TLS is required")
            try:
                await client.mail("")
            except aiosmtplib.SMTPResponseException as exc:
                return ProbeResult(0, f"MAIL FROM:<> refused: {exc.code} {exc.message}")
            try:
                reply = await client.rcpt(address)
                result = ProbeResult(reply.code, reply.message)
            except aiosmtplib.SMTPResponseException as exc:
                result = ProbeResult(exc.code, exc.message)
            try:
                await client.rset()
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                pass
            return result
    except (TimeoutError, aiosmtplib.SMTPException, OSError, UnicodeError, ValueError) as exc:
        return ProbeResult(0, f"transport {route.transport_host}:{route.transport_port} unreachable: "
                              f"{type(exc).__name__}: {exc}")
    finally:
        client.close()


def _key(tenant_id: int, address: str) -> str:
    digest = hashlib.blake2b(address.lower().encode(), digest_size=12).hexdigest()
    return f"{KEY_PREFIX}:{tenant_id}:{digest}"


def _down_key(route: DomainRoute) -> str:
    return f"{KEY_PREFIX}:down:{route.transport_host}:{route.transport_port}"


class RecipientVerifier:
    """The ingress's recipient verification: :meth:`check` returns None to accept, or the SMTP reply to refuse."""

    def __init__(self, cfg: Config, sessions: Callable[[], Session], redis: Any,
                 prober: Callable[..., Any] = probe) -> None:
        self.cfg = cfg
        self.sessions = sessions
        self.redis = redis
        self.prober = prober
        self.egress = EgressPolicy(cfg)
        #: tenant id → (policy version, monotonic load time, settings)
        self._settings: dict[int, tuple[int | None, float, recipients.Settings]] = {}
        #: (tenant id, address) → the probe running for it, shared by concurrent RCPTs
        self._running: dict[tuple[int, str], asyncio.Task[ProbeResult]] = {}

    async def check(self, route: DomainRoute, address: str, version: int | None) -> str | None:
        """None if the tenant accepts ``address`` (or we cannot tell), else the 550/450 reply."""
        try:
            settings = await self._settings_of(route.tenant_id, version)
            if settings.mode == "callahead":
                return await self._callahead(route, address)
            if recipients.sources_for(settings) is None:
                return None
            listed = await asyncio.to_thread(self._listed, settings, address)
        except Exception:
            log.exception("recipient verification of <%s> unavailable; accepting it", address)
            return None
        return None if listed else REPLY_UNKNOWN.format(address=address)

    async def _settings_of(self, tenant_id: int, version: int | None) -> recipients.Settings:
        now = time.monotonic()
        cached = self._settings.get(tenant_id)
        if cached is not None and cached[0] == version and now - cached[1] < SETTINGS_CACHE_TTL:
            return cached[2]
        settings = await asyncio.to_thread(self._load_settings, tenant_id)
        self._settings[tenant_id] = (version, now, settings)
        return settings

    def _load_settings(self, tenant_id: int) -> recipients.Settings:
        with tenant_scope(tenant_id):
            session = self.sessions()
            try:
                return recipients.get_settings(session, tenant_id)
            finally:
                session.close()

    def _listed(self, settings: recipients.Settings, address: str) -> bool:
        sources = recipients.sources_for(settings) or recipients.SOURCES
        with tenant_scope(settings.tenant_id):
            session = self.sessions()
            try:
                return recipients.is_listed(session, settings.tenant_id, address, sources)
            finally:
                session.close()

    async def _callahead(self, route: DomainRoute, address: str) -> str | None:
        key = _key(route.tenant_id, address)
        try:
            cached = await self.redis.get(key)
            if cached is None and await self.redis.exists(_down_key(route)):
                return None
        except Exception as exc:
            log.warning("call-ahead cache unavailable (%s); asking the transport", exc)
            cached = None
        if cached is not None:
            return None if cached == b"valid" else REPLY_UNKNOWN.format(address=address)
        flight = (route.tenant_id, address.lower())
        task = self._running.get(flight)
        if task is None:
            task = asyncio.ensure_future(self.prober(route, address, helo=self.cfg.hostname, egress=self.egress))
            self._running[flight] = task
            task.add_done_callback(lambda _: self._running.pop(flight, None))
            result: ProbeResult = await asyncio.shield(task)
            await self._remember(route, key, result, address)
        else:
            result = await asyncio.shield(task)
        verdict = result.verdict
        if verdict == "valid":
            return None
        if verdict == "invalid":
            return REPLY_UNKNOWN.format(address=address)
        if verdict == "tempfail":
            return REPLY_TRY_LATER.format(address=address)
        return None

    async def _remember(self, route: DomainRoute, key: str, result: ProbeResult, address: str) -> None:
        """Cache a definite answer; a temporary one is asked again next time, no answer marks the transport down."""
        verdict = result.verdict
        try:
            if verdict == "valid":
                await self.redis.set(key, b"valid", ex=VALID_TTL)
            elif verdict == "invalid":
                await self.redis.set(key, b"invalid", ex=INVALID_TTL)
            elif verdict == "unknown":
                await self.redis.set(_down_key(route), 1, ex=UNREACHABLE_TTL)
        except Exception as exc:
            log.warning("call-ahead cache unavailable (%s); not remembering <%s>", exc, address)
        if verdict == "unknown":
            log.warning("call-ahead for <%s> of tenant %d gave no answer (%s); accepting", address, route.tenant_id,
                        result.text)
        else:
            log.info("call-ahead for <%s> of tenant %d: %d %s", address, route.tenant_id, result.code, result.text)
