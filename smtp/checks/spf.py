"""SPF (RFC 7208) with pyspf: the MAIL FROM identity (the HELO identity for the null sender), and HELO on its own.

pyspf resolves synchronously through its module-level driver function ``spf.DNSLookup`` (the hook its own pydns
driver and test suite replace). We install one driver, once, that answers with the dnspython resolver of the
running check (a context variable; ``asyncio.to_thread`` carries it into the worker thread) and falls back to
pyspf's own driver for any other caller. The evaluation runs in a thread, so it never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import re
from collections.abc import Callable
from typing import Any

import dns.exception
import dns.resolver
import spf

from smtp.checks.base import Check, CheckContext, Stage
from smtp.dns import DNS_LIFETIME, sync_resolver
from tenants.platform.config import Config

log = logging.getLogger(__name__)

#: Seconds one SPF evaluation (all its lookups, includes and redirects) may take; RFC 7208 4.6.4 suggests at
#: least 20, but the sender is waiting and a slow record is the sender's problem.
SPF_TOTAL_TIME = 12.0
#: Seconds beyond SPF_TOTAL_TIME the check may run (thread hand-off), so pyspf's own temperror comes first.
SPF_CHECK_MARGIN = 2.0
SPF_CHECK_TIMEOUT = SPF_TOTAL_TIME + SPF_CHECK_MARGIN

RESULTS: tuple[str, ...] = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")

_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}$")

#: The resolver pyspf's lookups use in this context; None: pyspf's own driver (the system resolver).
_RESOLVER: contextvars.ContextVar[dns.resolver.Resolver | None] = contextvars.ContextVar("spf_resolver",
                                                                                           default=None)
_PYSPF_LOOKUP: Callable[..., Any] = spf.DNSLookup


def _lookup(name: str, qtype: str, strict: Any = True, timeout: float = DNS_LIFETIME) -> list[tuple[Any, Any]]:
    """pyspf's driver interface: ``[((name, type), value), ...]``; DNS failures raise ``spf.TempError``."""
    resolver = _RESOLVER.get()
    if resolver is None:
        return list(_PYSPF_LOOKUP(name, qtype, strict, timeout))
    try:
        answer = resolver.resolve(name, qtype, lifetime=min(timeout, resolver.lifetime), search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise spf.TempError(f"DNS {exc}") from exc
    out: list[tuple[Any, Any]] = []
    for rdata in answer:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            out.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            out.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            out.append(((name, qtype), rdata.strings))
    return out


if getattr(spf.DNSLookup, "__module__", "") != __name__:
    spf.DNSLookup = _lookup


def _evaluate(resolver: dns.resolver.Resolver, ip: str, sender: str, helo: str) -> tuple[str, str]:
    """(result, explanation) of one SPF evaluation; runs in a worker thread."""
    token = _RESOLVER.set(resolver)
    try:
        query = spf.query(i=ip, s=sender, h=helo, timeout=resolver.lifetime, querytime=SPF_TOTAL_TIME)
        result, _code, explanation = query.check()
    finally:
        _RESOLVER.reset(token)
    result = str(result)
    return (result if result in RESULTS else "permerror"), str(explanation)


def valid_helo_domain(helo: str) -> bool:
    """True when the HELO name can carry an SPF record: a dotted host name, not an address literal."""
    name = helo.strip().rstrip(".")
    if not name or name.startswith("["):
        return False
    try:
        ipaddress.ip_address(name)
        return False
    except ValueError:
        return bool(_HOSTNAME_RE.match(name))


def reason(result: str, ip: str, domain: str, explanation: str) -> str:
    """A short human reason, e.g. ``203.0.113.9 not permitted for example.com``."""
    if result == "pass":
        return f"{ip} permitted for {domain}"
    if result == "fail":
        return f"{ip} not permitted for {domain}"
    if result == "softfail":
        return f"{ip} not permitted for {domain} (softfail)"
    if result == "neutral":
        return f"{domain} neither permits nor denies {ip}"
    if result == "none":
        return f"no SPF record for {domain}"
    return f"{domain}: {explanation}"


class SpfCheck(Check):
    """SPF of MAIL FROM (HELO for ``<>``) → ``SPF_*`` and ``facts["spf"] = (result, domain)``; HELO → ``SPF_HELO_*``.

    DMARC reads ``facts["spf"]``; ``facts["spf_helo"]`` holds the HELO identity's (result, domain).
    """

    name = "spf"
    stage = Stage.MAIL
    timeout = SPF_CHECK_TIMEOUT
    symbols = tuple(f"SPF_{r.upper()}" for r in RESULTS) + tuple(f"SPF_HELO_{r.upper()}" for r in RESULTS)
    directions = ("inbound",)

    def __init__(self, cfg: Config, *, dns_timeout: float = DNS_LIFETIME) -> None:
        super().__init__(cfg)
        self.resolver = sync_resolver(cfg, lifetime=dns_timeout)

    async def _check(self, ip: str, sender: str, helo: str) -> tuple[str, str]:
        return await asyncio.to_thread(_evaluate, self.resolver, ip, sender, helo)

    async def run(self, ctx: CheckContext) -> None:
        ip, helo = ctx.client_ip, ctx.helo.strip().rstrip(".").lower()
        helo_ok = valid_helo_domain(helo)
        if ctx.mail_from:
            domain = ctx.sender_domain
            jobs = [self._check(ip, ctx.mail_from, helo)]
            if helo_ok:
                jobs.append(self._check(ip, f"postmaster@{helo}", helo))
            done = await asyncio.gather(*jobs)
            result, explanation = done[0]
            ctx.facts["spf"] = (result, domain)
            ctx.add(f"SPF_{result.upper()}", reason(result, ip, domain, explanation))
            if helo_ok:
                helo_result, helo_explanation = done[1]
                ctx.facts["spf_helo"] = (helo_result, helo)
                ctx.add(f"SPF_HELO_{helo_result.upper()}", reason(helo_result, ip, helo, helo_explanation))
            return
        # The null sender (bounces): the HELO identity is the one SPF checks (RFC 7208 2.4).
        if not helo_ok:
            ctx.facts["spf"] = ("none", helo)
            ctx.add("SPF_NONE", f"null sender and HELO {helo!r} is not a domain")
            return
        result, explanation = await self._check(ip, "", helo)
        ctx.facts["spf"] = (result, helo)
        ctx.facts["spf_helo"] = (result, helo)
        ctx.add(f"SPF_{result.upper()}", reason(result, ip, helo, explanation))
