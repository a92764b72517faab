"""Mail tenants send out through Mailward: who may (relay networks, SMTP AUTH), as whom, how much, and the verdict.

Port 25 treats a client inside a tenant's relay network as that tenant's server. The submission listener
(``MAILWARD_SUBMISSION_LISTEN``) requires STARTTLS, then AUTH PLAIN or LOGIN with a tenant's SMTP credential, before
MAIL. Either way the connection belongs to one tenant (:class:`~smtp.session.Submitter`), whose domains are the only
envelope senders it may use; its mail is checked (``direction="outbound"``), rate-limited, DKIM-signed and delivered
to the recipient domain's MX.

A network is weaker proof than a login: other hosts may share it. So a relay-network client sends out only with an
envelope sender of the tenant's own (:meth:`Outbound.sends_out`); anything else it sends is inbound mail, judged like
any stranger's, and never refused on that tenant's account: a network claim cannot block other tenants' mail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy.orm import Session, sessionmaker

from smtp import dkimsign
from smtp.checks.base import Finding
from smtp.ratelimit import RateLimiter
from smtp.session import IngressSMTP, Submitter
from smtp.verdict import Verdict, decide
from tenants.dkimkeys import SigningKey, find_signing_key
from tenants.platform.config import Config
from tenants.policy import DomainRoute, Policy, normalize_domain
from tenants.relay import RelayNet, load_relay_networks, match_relay_network, sender_domain_owner, verify_smtp_login
from tenants.scope import tenant_scope

log = logging.getLogger(__name__)

REPLY_AUTH_REQUIRED = "530 5.7.0 Authentication required"
REPLY_AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
REPLY_AUTH_THROTTLED = "454 4.7.0 Too many failed logins from your address, try again later"
REPLY_AUTH_TEMPFAIL = "454 4.7.0 Temporary authentication failure, try again later"
REPLY_SENDER_NOT_ALLOWED = "550 5.7.1 Sender not allowed: {domain} is not a domain of your organisation"

#: Failed logins one client IP may make per window before every AUTH it sends is refused (password guessing).
MAX_AUTH_FAILURES = 10
#: Seconds a client IP's failed logins are remembered.
AUTH_FAILURE_WINDOW = 900
#: Prefix of the failed-login counters in Redis.
AUTH_FAILURE_PREFIX = "mailward:authfail"
#: Most entries a cache of sender-domain owners or signing keys holds before it is emptied (a client cycling through
#: random sender domains must not grow the ingress's memory without bound).
MAX_CACHED = 10_000

#: The coroutine the submission listener checks a login with: a :class:`Submitter`, or the reply refusing it.
LoginCheck = Callable[[bytes, bytes, str], Awaitable[Submitter | str]]
#: How a relay-network :class:`Submitter` says where it comes from (``via``), followed by the network.
VIA_NETWORK = "network"


def by_network(submitter: Submitter) -> bool:
    """Whether the sending tenant is known from the client's network (port 25), not from a login."""
    return submitter.via.startswith(VIA_NETWORK + " ")


def decide_outbound(findings: Iterable[Finding], tenant_id: int, policy: Policy) -> Verdict:
    """The verdict on mail a tenant sends (see :func:`smtp.verdict.decide` with ``outbound``)."""
    return decide(findings, tenant_id, policy, outbound=True)


class OutboundCache:
    """Relay networks, sender-domain owners and signing keys, dropped whenever the policy version moves."""

    def __init__(self) -> None:
        self.networks: list[RelayNet] | None = None
        self.owners: dict[str, int | None] = {}
        self.keys: dict[tuple[int, tuple[str, ...]], SigningKey | None] = {}
        self.version: int | None = None

    def check_version(self, version: int | None) -> None:
        if version != self.version:
            self.networks = None
            self.owners.clear()
            self.keys.clear()
            self.version = version


class Outbound:
    """The outbound side of the ingress, shared by port 25 (relay networks) and the submission listener (logins)."""

    def __init__(self, cfg: Config, sessions: sessionmaker[Session], redis: Any) -> None:
        self.cfg = cfg
        self.sessions = sessions
        self.redis = redis
        self.limiter = RateLimiter(redis)
        self.cache = OutboundCache()

    # --- who sends ------------------------------------------------------------------------------------------------

    async def relay_submitter(self, peer_ip: str) -> Submitter | None:
        """The tenant whose relay network holds ``peer_ip``, or None. Raises when the networks cannot be read."""
        networks: list[RelayNet] | None = self.cache.networks
        if networks is None:
            loaded: list[RelayNet] = await asyncio.to_thread(self._in_session, load_relay_networks)
            networks = self.cache.networks = loaded
        net = match_relay_network(networks, peer_ip)
        return Submitter(net.tenant_id, f"{VIA_NETWORK} {net.network}") if net is not None else None

    async def login(self, username: bytes, password: bytes, peer_ip: str) -> Submitter | str:
        """Check an SMTP AUTH login: the tenant's :class:`Submitter`, or the reply refusing it."""
        fail_key = f"{AUTH_FAILURE_PREFIX}:{peer_ip}"
        try:
            failures = int(await self.redis.get(fail_key) or 0)
        except Exception:  # Redis down: no throttling, the password check still runs
            failures = 0
        if failures >= MAX_AUTH_FAILURES:
            log.warning("SMTP AUTH from %s refused: %d failed logins in %ds", peer_ip, failures, AUTH_FAILURE_WINDOW)
            return REPLY_AUTH_THROTTLED
        try:
            user, secret = username.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            user, secret = "", ""
        try:
            found = await asyncio.to_thread(self._in_session, verify_smtp_login, user, secret) if user else None
        except Exception:
            log.exception("SMTP AUTH lookup failed")
            return REPLY_AUTH_TEMPFAIL
        if found is None:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    await pipe.incr(fail_key).expire(fail_key, AUTH_FAILURE_WINDOW).execute()
            except Exception as exc:
                log.debug("failed-login counter not updated: %s", exc)
            log.info("SMTP AUTH failed for %r from %s", user[:100], peer_ip)
            return REPLY_AUTH_INVALID
        log.info("SMTP AUTH: %s (tenant %d) from %s", found.username, found.tenant_id, peer_ip)
        return Submitter(found.tenant_id, f"login {found.username}")

    # --- as whom --------------------------------------------------------------------------------------------------

    async def sends_out(self, submitter: Submitter, address: str) -> bool:
        """Whether a transaction with envelope sender ``address`` is the submitter's outbound mail. A login's always
        is (a foreign sender is refused then); a relay network's only with the tenant's own sender domain, or the
        null sender (its bounces; see :meth:`bounce_is_inbound`). Raises on lookup failure."""
        if not by_network(submitter) or address == "<>":
            return True
        return await self.may_send_as(submitter, address.rpartition("@")[2])

    @staticmethod
    def bounce_is_inbound(submitter: Submitter, route: DomainRoute | None) -> bool:
        """Whether a relay network's null-sender mail whose first recipient has ``route`` is inbound mail: a bounce
        to a domain Mailward receives mail for goes to that domain's tenant, never refused as the network's."""
        return by_network(submitter) and route is not None

    async def may_send_as(self, submitter: Submitter, domain: str) -> bool:
        """Whether the sending tenant owns ``domain`` (or its closest registered parent). Raises on lookup failure."""
        name = normalize_domain(domain)
        if name not in self.cache.owners:
            owner = await asyncio.to_thread(self._in_session, sender_domain_owner, name)
            if len(self.cache.owners) >= MAX_CACHED:
                self.cache.owners.clear()
            self.cache.owners[name] = owner
        return self.cache.owners[name] == submitter.tenant_id

    # --- signing --------------------------------------------------------------------------------------------------

    async def sign(self, tenant_id: int, data: bytes, mail_from: str) -> tuple[bytes, str]:
        """``data`` DKIM-signed with the tenant's key for the sender's domain (unchanged when it has none), and what
        was done, for the log ("DKIM d=example.com s=mw1" or "unsigned: why").

        A key that cannot be read or used raises (the client gets 451); a mail too broken to sign goes out unsigned.
        """
        domains = tuple(dkimsign.signing_domains(dkimsign.header_from_domain(data), mail_from))
        cache_key = (tenant_id, domains)
        if cache_key not in self.cache.keys:
            key = await asyncio.to_thread(self._signing_key, tenant_id, domains)
            if len(self.cache.keys) >= MAX_CACHED:
                self.cache.keys.clear()
            self.cache.keys[cache_key] = key
        key = self.cache.keys[cache_key]
        if key is None:
            return data, f"unsigned: no DKIM key for {', '.join(domains) or 'the null sender'}"
        try:
            return await asyncio.to_thread(dkimsign.sign, data, key), f"DKIM d={key.domain} s={key.selector}"
        except dkimsign.MessageNotSignable as exc:
            log.warning("mail of tenant %d not DKIM-signed: %s", tenant_id, exc)
            return data, f"unsigned: {exc}"

    def _signing_key(self, tenant_id: int, domains: tuple[str, ...]) -> SigningKey | None:
        with tenant_scope(tenant_id):
            return self._in_session(find_signing_key, self.cfg, domains)

    def _in_session(self, fn: Callable[..., Any], *args: Any) -> Any:
        session = self.sessions()
        try:
            return fn(session, *args)
        finally:
            session.close()


@dataclass(frozen=True)
class _PendingLogin:
    """Credentials aiosmtpd decoded, waiting for the (async) check."""

    mechanism: str
    credentials: LoginPassword


class SubmissionSMTP(IngressSMTP):
    """The submission listener: STARTTLS first, then AUTH PLAIN or LOGIN, then mail for the login's tenant."""

    offers_auth = True

    def __init__(self, handler: Any, *, login: LoginCheck, **kwargs: Any) -> None:
        if kwargs.get("tls_context") is None:
            raise ValueError("the submission listener needs a TLS context (STARTTLS before AUTH)")
        super().__init__(handler, auth_required=True, auth_require_tls=True, require_starttls=True, **kwargs)
        self._login = login

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd's PLAIN and LOGIN call this synchronously; the password check (argon2, the database) must not block
        # the event loop, so the credentials are handed back to auth_PLAIN / auth_LOGIN below and checked there.
        return AuthResult(success=False, handled=False, auth_data=_PendingLogin(mechanism, auth_data))

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._check(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._check(await super().auth_LOGIN(_, args))

    async def _check(self, result: AuthResult) -> AuthResult:
        pending = result.auth_data
        if not isinstance(pending, _PendingLogin):
            return result  # the exchange itself failed and was answered (bad base64, '*')
        peer = self.session.peer if self.session is not None else None
        peer_ip = peer[0] if isinstance(peer, tuple) else ""
        outcome = await self._login(pending.credentials.login, pending.credentials.password, peer_ip)
        if isinstance(outcome, Submitter):
            return AuthResult(success=True, auth_data=outcome)
        return AuthResult(success=False, handled=False, message=outcome)
