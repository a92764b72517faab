"""DNS block lists: the client IP against RBLs (MAIL stage) and the domains of the body's URIs against URIBLs (DATA).

A zone answers an A record in 127.0.0.0/8 for a listed name; which return codes count, and the symbol each becomes,
is configured per zone (:class:`Zone`). Other answers (Spamhaus' 127.255.255.x "query refused" codes, a wildcarding
resolver) are ignored with a log line. Every lookup of a mail runs concurrently, answers are cached in Redis, and
hits of entries marked ``reject`` go to ``ctx.facts["dnsbl_reject"]`` for the ingress to refuse at RCPT.

Zones are configured with a spec string (see :func:`parse_zones`), e.g. from ``MAILWARD_DNSBL_ZONES``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.resolver
from redis.exceptions import RedisError

from smtp.checks.base import Check, CheckContext, Stage
from smtp.checks.msgauth import org_domain
from smtp.dns import DNS_LIFETIME, async_resolver, is_ip
from tenants.exceptions import ConfigError
from tenants.platform.config import Config

log = logging.getLogger(__name__)

#: Redis key prefix of cached answers; the key ends with the queried name (``4.3.2.1.zen.spamhaus.org``).
CACHE_PREFIX = "mailward:dnsbl:"
#: Seconds a listing stays cached at most; a zone's shorter TTL wins.
CACHE_MAX_TTL = 3600
#: Seconds a listing stays cached at least, whatever the zone's TTL (a TTL of 0 would defeat the cache).
CACHE_MIN_TTL = 60
#: Seconds a "not listed" answer stays cached (short: a fresh listing should show soon).
CACHE_NEGATIVE_TTL = 300
#: Most distinct registrable domains of one mail's URIs that are looked up (a mail with thousands of links
#: must not turn into thousands of queries).
MAX_URI_DOMAINS = 20
#: Seconds the checks may run beyond one DNS lookup's lifetime (the lookups run concurrently, plus Redis).
CHECK_MARGIN = 1.0
#: DNSBL return codes live in 127.0.0.0/8; any other answer is not a listing.
RETURN_CODE_NET = ipaddress.ip_network("127.0.0.0/8")
#: Spamhaus' (and others') error answers: query refused (public resolver, volume), bad zone name.
ERROR_CODE_NET = ipaddress.ip_network("127.255.255.0/24")

_SCHEME_RE = re.compile(r"(?i)^[a-z][a-z0-9+.-]*://")
_SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_ZONE_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{1,63}$")

ZoneKind = Literal["ip", "uri"]
ZONE_KINDS: tuple[str, ...] = ("ip", "uri")


@dataclass(frozen=True)
class CodeRange:
    """Return codes ``first``..``last`` (inclusive) of a zone mean ``symbol``; ``reject``: refuse at RCPT."""

    first: ipaddress.IPv4Address
    last: ipaddress.IPv4Address
    symbol: str
    reject: bool = False

    def __contains__(self, code: object) -> bool:
        return isinstance(code, ipaddress.IPv4Address) and self.first <= code <= self.last


@dataclass(frozen=True)
class Zone:
    """One DNS list: ``kind`` ``ip`` (client addresses) or ``uri`` (registrable domains of links)."""

    name: str
    kind: ZoneKind
    codes: tuple[CodeRange, ...]

    def meaning(self, code: ipaddress.IPv4Address) -> CodeRange | None:
        return next((c for c in self.codes if code in c), None)

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.symbol for c in self.codes))


@dataclass(frozen=True)
class DnsblHit:
    """One listing: what was looked up (an IP or a domain), in which zone, the return code and what it means."""

    zone: str
    queried: str
    code: str
    symbol: str
    reject: bool

    def __str__(self) -> str:
        return f"{self.queried} listed in {self.zone} ({self.code})"


def _ip(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


def _codes(first: str, last: str, symbol: str, reject: bool = False) -> CodeRange:
    return CodeRange(_ip(first), _ip(last), symbol, reject)


#: The shipped zones. Spamhaus ZEN: 127.0.0.2-3 SBL/CSS, 4-7 XBL, 9 DROP, 10-11 PBL; SpamCop 127.0.0.2;
#: Spamhaus DBL: 127.0.1.2-99 spam/phish/malware/botnet domains, 127.0.1.102-199 abused legitimate domains;
#: SURBL multi: a bit mask in the last octet (any bit but 1 lists).
DEFAULT_ZONES: tuple[Zone, ...] = (
    Zone("zen.spamhaus.org", "ip", (
        _codes("127.0.0.2", "127.0.0.3", "RBL_SPAMHAUS_SBL", reject=True),
        _codes("127.0.0.4", "127.0.0.7", "RBL_SPAMHAUS_XBL", reject=True),
        _codes("127.0.0.9", "127.0.0.9", "RBL_SPAMHAUS_DROP", reject=True),
        _codes("127.0.0.10", "127.0.0.11", "RBL_SPAMHAUS_PBL"),
    )),
    Zone("bl.spamcop.net", "ip", (_codes("127.0.0.2", "127.0.0.2", "RBL_SPAMCOP"),)),
    Zone("dbl.spamhaus.org", "uri", (
        _codes("127.0.1.2", "127.0.1.99", "URIBL_DBL"),
        _codes("127.0.1.102", "127.0.1.199", "URIBL_DBL_ABUSED"),
    )),
    Zone("multi.surbl.org", "uri", (_codes("127.0.0.2", "127.0.0.255", "URIBL_SURBL"),)),
)

#: Writing :func:`parse_zones` accepts to switch every zone off.
NO_ZONES = "none"


def parse_zones(spec: str) -> tuple[Zone, ...]:
    """Parse a zone spec: ``KIND:ZONE=CODES:SYMBOL[:reject],...`` zones separated by ``;``.

    ``KIND`` is ``ip`` or ``uri``; ``CODES`` is one return code (``127.0.0.2``), a range of last octets
    (``127.0.0.4-7``) or of addresses (``127.0.1.2-127.0.1.99``). ``none`` means no zones. Example::

        ip:zen.spamhaus.org=127.0.0.2-3:RBL_SPAMHAUS_SBL:reject,127.0.0.10-11:RBL_SPAMHAUS_PBL;
        uri:dbl.spamhaus.org=127.0.1.2-99:URIBL_DBL

    Raises ValueError naming the bad part.
    """
    if spec.strip().lower() == NO_ZONES:
        return ()
    zones: list[Zone] = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        head, sep, body = part.partition("=")
        kind, sep2, name = head.strip().partition(":")
        kind, name = kind.strip().lower(), name.strip().lower().rstrip(".")
        if not sep or not sep2 or kind not in ZONE_KINDS:
            raise ValueError(f"{part!r}: write KIND:ZONE=CODES:SYMBOL[:reject],... with KIND ip or uri")
        if not _ZONE_RE.match(name):
            raise ValueError(f"{part!r}: {name!r} is not a DNS zone name")
        entries = tuple(_parse_entry(e.strip(), name) for e in body.split(",") if e.strip())
        if not entries:
            raise ValueError(f"{part!r}: no return codes for {name}")
        zones.append(Zone(name, "ip" if kind == "ip" else "uri", entries))
    if not zones:
        raise ValueError(f"no zones in {spec!r} (write {NO_ZONES!r} for none)")
    return tuple(zones)


def _parse_entry(entry: str, zone: str) -> CodeRange:
    fields = entry.split(":")
    if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2].strip().lower() != "reject"):
        raise ValueError(f"{zone}: {entry!r}: write CODES:SYMBOL or CODES:SYMBOL:reject")
    codes, symbol = fields[0].strip(), fields[1].strip()
    if not _SYMBOL_RE.match(symbol):
        raise ValueError(f"{zone}: {symbol!r} is not a symbol name (A-Z, 0-9, _)")
    first_s, dash, last_s = codes.partition("-")
    try:
        first = _ip(first_s.strip())
        if not dash:
            last = first
        elif "." in last_s:
            last = _ip(last_s.strip())
        else:
            last = _ip(first_s.strip().rsplit(".", 1)[0] + "." + last_s.strip())
    except ValueError as exc:
        raise ValueError(f"{zone}: {codes!r} is not a return code or range of them ({exc})") from None
    if first not in RETURN_CODE_NET or last not in RETURN_CODE_NET or last < first:
        raise ValueError(f"{zone}: {codes!r} must be an ascending range inside 127.0.0.0/8")
    return CodeRange(first, last, symbol, len(fields) == 3)


def zones_from_config(cfg: Config) -> tuple[Zone, ...]:
    """The zones of ``cfg.dnsbl_zones`` (a spec string, ``MAILWARD_DNSBL_ZONES``) or the shipped defaults."""
    spec = getattr(cfg, "dnsbl_zones", None)
    if not spec:
        return DEFAULT_ZONES
    try:
        return parse_zones(str(spec))
    except ValueError as exc:
        raise ConfigError(f"MAILWARD_DNSBL_ZONES: {exc}") from exc


def _client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address of a client IP as the session has it (perhaps in brackets), an IPv4-mapped IPv6 one as IPv4."""
    try:
        addr = ipaddress.ip_address(ip.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def reversed_ip(ip: str) -> str | None:
    """The DNSBL query label of an address: reversed octets (IPv4) or nibbles (IPv6); None if not an address."""
    addr = _client_address(ip)
    if addr is None:
        return None
    suffix = ".in-addr.arpa" if addr.version == 4 else ".ip6.arpa"
    return addr.reverse_pointer.removesuffix(suffix)


def is_listable(ip: str) -> bool:
    """False for addresses no public list carries (private, loopback, link-local, documentation, ...)."""
    addr = _client_address(ip)
    return addr is not None and addr.is_global


def uri_domains(uris: Iterable[str], limit: int = MAX_URI_DOMAINS) -> list[str]:
    """Distinct registrable domains of the URIs' hosts, in order of appearance; IP hosts and bare suffixes skipped."""
    out: dict[str, None] = {}
    for uri in uris:
        if len(out) >= limit:
            break
        text = uri.strip()
        if not _SCHEME_RE.match(text):
            text = "http://" + text
        try:
            host = (urlsplit(text).hostname or "").rstrip(".")
            host = host.encode("idna").decode("ascii").lower()
        except (ValueError, UnicodeError):
            continue
        if not host or "." not in host or is_ip(host):
            continue
        if _is_public_suffix(host):
            continue
        out[org_domain(host)] = None
    return list(out)


def _is_public_suffix(domain: str) -> bool:
    """True when ``domain`` has no registrable part of its own (``co.uk``, ``com``)."""
    return org_domain("x." + domain) == "x." + domain


# --- lookups ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Answer:
    codes: tuple[str, ...]
    ttl: int


class DnsblLookup:
    """Looks names up concurrently in DNS, through a Redis cache when there is one."""

    def __init__(self, cfg: Config, *, dns_timeout: float = DNS_LIFETIME) -> None:
        self.resolver: dns.asyncresolver.Resolver = async_resolver(cfg, lifetime=dns_timeout)

    async def lookup_all(self, qnames: Sequence[str], redis: Any) -> dict[str, tuple[str, ...]]:
        """Return codes per name; a name whose lookup failed (timeout, SERVFAIL) is missing from the result."""
        names = list(dict.fromkeys(qnames))
        found = await self._cache_get(redis, names)
        misses = [n for n in names if n not in found]
        answers = await asyncio.gather(*(self._query(n) for n in misses))
        fresh = {n: a for n, a in zip(misses, answers, strict=True) if a is not None}
        await self._cache_set(redis, fresh)
        found.update({n: a.codes for n, a in fresh.items()})
        return found

    async def _query(self, qname: str) -> _Answer | None:
        try:
            answer = await self.resolver.resolve(qname, "A", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return _Answer((), CACHE_NEGATIVE_TTL)
        except dns.exception.DNSException as exc:
            log.warning("dnsbl lookup of %s failed: %s", qname, exc)
            return None
        codes = tuple(sorted({r.address for r in answer}))
        ttl = answer.rrset.ttl if answer.rrset is not None else CACHE_MIN_TTL
        return _Answer(codes, max(CACHE_MIN_TTL, min(CACHE_MAX_TTL, ttl)))

    @staticmethod
    async def _cache_get(redis: Any, names: list[str]) -> dict[str, tuple[str, ...]]:
        if redis is None or not names:
            return {}
        try:
            values = await redis.mget([CACHE_PREFIX + n for n in names])
        except (RedisError, OSError) as exc:
            log.warning("dnsbl cache unavailable, looking up without it: %s", exc)
            return {}
        out: dict[str, tuple[str, ...]] = {}
        for name, value in zip(names, values, strict=True):
            if value is None:
                continue
            text = value.decode() if isinstance(value, bytes) else str(value)
            out[name] = tuple(c for c in text.split(",") if c)
        return out

    @staticmethod
    async def _cache_set(redis: Any, answers: dict[str, _Answer]) -> None:
        if redis is None or not answers:
            return
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for name, answer in answers.items():
                    pipe.set(CACHE_PREFIX + name, ",".join(answer.codes), ex=answer.ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("dnsbl cache not updated: %s", exc)


def _hits(zone: Zone, queried: str, codes: Iterable[str]) -> list[DnsblHit]:
    hits: list[DnsblHit] = []
    for code in codes:
        try:
            addr = ipaddress.ip_address(code)
        except ValueError:
            continue
        meaning = zone.meaning(addr) if isinstance(addr, ipaddress.IPv4Address) else None
        if meaning is None:
            why = "an error code (query refused?)" if addr in ERROR_CODE_NET else "not a listed return code"
            log.warning("dnsbl %s answered %s for %s: %s, ignored", zone.name, code, queried, why)
            continue
        hits.append(DnsblHit(zone.name, queried, code, meaning.symbol, meaning.reject))
    return hits


def _record(ctx: CheckContext, hits: Sequence[DnsblHit]) -> None:
    """One finding per symbol, its reason naming every listing behind it."""
    by_symbol: dict[str, list[str]] = {}
    for hit in hits:
        by_symbol.setdefault(hit.symbol, []).append(str(hit))
    for symbol, reasons in by_symbol.items():
        ctx.add(symbol, "; ".join(dict.fromkeys(reasons)))


def _record_failures(ctx: CheckContext, check: Check, failed: Sequence[str]) -> None:
    """Lookups that failed (timeout, SERVFAIL) leave a zero-score tempfail finding, so the gap shows."""
    if failed:
        ctx.add(check.tempfail_symbol, "lookup failed: " + ", ".join(failed))


def _all_symbols(zones: Iterable[Zone]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for z in zones for s in z.symbols))


# --- the checks ---------------------------------------------------------------------------------------------------

class _ZoneCheck(Check):
    """What the DNSBL and URIBL checks share: the configured zones of one ``kind``, asked through one lookup."""

    kind: ClassVar[ZoneKind]
    timeout = DNS_LIFETIME + CHECK_MARGIN

    def __init__(self, cfg: Config, *, zones: Sequence[Zone] | None = None, dns_timeout: float = DNS_LIFETIME) -> None:
        super().__init__(cfg)
        chosen = zones_from_config(cfg) if zones is None else tuple(zones)
        self.zones = tuple(z for z in chosen if z.kind == self.kind)
        self.lookup = DnsblLookup(cfg, dns_timeout=dns_timeout)

    @property
    def enabled(self) -> bool:
        return bool(self.zones)

    async def ask(self, ctx: CheckContext, queries: Sequence[tuple[Zone, str, str]]) -> list[DnsblHit]:
        """Look up each (zone, what is queried, query name); record one finding per symbol hit and a tempfail
        naming the lookups that failed, and return the hits."""
        answers = await self.lookup.lookup_all([q for _, _, q in queries], ctx.redis)
        hits = [h for zone, queried, q in queries for h in _hits(zone, queried, answers.get(q, ()))]
        _record(ctx, hits)
        _record_failures(ctx, self, list(dict.fromkeys(q for _, _, q in queries if q not in answers)))
        return hits


class DnsblCheck(_ZoneCheck):
    """The client IP against the ``ip`` zones; sets ``facts["dnsbl"]`` and ``facts["dnsbl_reject"]`` (hit lists)."""

    name = "dnsbl"
    kind = "ip"
    stage = Stage.MAIL
    symbols = _all_symbols(z for z in DEFAULT_ZONES if z.kind == "ip")
    directions = ("inbound",)

    def __init__(self, cfg: Config, *, zones: Sequence[Zone] | None = None, dns_timeout: float = DNS_LIFETIME,
                 check_private: bool = False) -> None:
        super().__init__(cfg, zones=zones, dns_timeout=dns_timeout)
        #: Look up private and reserved addresses too (never listed; for tests and odd networks).
        self.check_private = check_private

    async def run(self, ctx: CheckContext) -> None:
        ctx.facts["dnsbl"] = []
        ctx.facts["dnsbl_reject"] = []
        label = reversed_ip(ctx.client_ip)
        if label is None or not (self.check_private or is_listable(ctx.client_ip)):
            return
        hits = await self.ask(ctx, [(zone, ctx.client_ip, f"{label}.{zone.name}") for zone in self.zones])
        ctx.facts["dnsbl"] = hits
        ctx.facts["dnsbl_reject"] = [h for h in hits if h.reject]


class UriblCheck(_ZoneCheck):
    """Registrable domains of the links in the body against the ``uri`` zones; sets ``facts["uribl"]``."""

    name = "uribl"
    kind = "uri"
    stage = Stage.DATA
    symbols = _all_symbols(z for z in DEFAULT_ZONES if z.kind == "uri")

    def __init__(self, cfg: Config, *, zones: Sequence[Zone] | None = None, dns_timeout: float = DNS_LIFETIME,
                 max_domains: int = MAX_URI_DOMAINS) -> None:
        if max_domains <= 0:
            raise ValueError("max_domains must be positive")
        super().__init__(cfg, zones=zones, dns_timeout=dns_timeout)
        self.max_domains = max_domains

    async def run(self, ctx: CheckContext) -> None:
        ctx.facts["uribl"] = []
        if ctx.mail is None or not ctx.mail.uris:
            return
        domains = uri_domains(ctx.mail.uris, self.max_domains)
        ctx.facts["uribl"] = await self.ask(ctx, [(zone, domain, f"{domain}.{zone.name}")
                                                  for zone in self.zones for domain in domains])
