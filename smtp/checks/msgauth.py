"""Message authentication (DKIM, ARC, DMARC), the pieces the three checks share: organisational domains (public
suffix list), raw header fields, the DNS key store dkimpy reads from, and the results the checks leave in
``ctx.facts``. Incoming Authentication-Results that claim to be ours are stripped here too
(:func:`strip_spoofed_authres`, RFC 8601 section 5).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache

import dkim
import dns.asyncresolver
import dns.exception
import dns.resolver
from dkim.util import InvalidTagValueList, parse_tag_value
from publicsuffix2 import PublicSuffixList

from smtp.checks.base import Check, Stage
from smtp.conform import header_fields
from smtp.dns import DNS_LIFETIME, async_resolver
from tenants.platform.config import Config

log = logging.getLogger(__name__)

#: Smallest RSA key accepted for a DKIM or ARC signature, in bits (RFC 8301 section 3.2).
MIN_KEY_BITS = 1024
#: Most DKIM signatures of one mail that are verified (and listed in Authentication-Results); more is abuse.
MAX_DKIM_SIGNATURES = 10
#: Characters of a signature's ``b=`` shown as ``header.b`` to tell signatures of one domain apart (RFC 6008).
HEADER_B_CHARS = 8
#: Organisational domains remembered (the public suffix list walk is cheap, but mail repeats domains).
ORG_DOMAIN_CACHE = 4096
#: Seconds a check may take beyond its DNS lookups: verification in a thread (RSA, hashing a large body).
VERIFY_MARGIN = 2.0
#: DMARC record discovery is at most two lookups in a row: the From domain, then its organisational domain.
DMARC_LOOKUPS = 2
#: DMARC ``pct`` bounds and default (RFC 7489 section 6.3).
PCT_MIN, PCT_MAX = 0, 100
#: The strictness order of DMARC policies; a mail outside ``pct`` gets the next weaker one (RFC 7489 6.6.4).
DMARC_POLICIES: tuple[str, ...] = ("none", "quarantine", "reject")

_LABEL_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_PTOKEN_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+\-./=?^_`{|}~@]+$")
_HEADER_END_RE = re.compile(rb"\n\r?\n")
_COMMENT_RE = re.compile(r"\([^()]*\)")


# --- organisational domains ---------------------------------------------------------------------------------------

@cache
def _psl() -> PublicSuffixList:
    """The public suffix list: authheaders' copy (newer), else the one publicsuffix2 ships."""
    try:
        text = (importlib.resources.files("authheaders") / "public_suffix_list.txt").read_text(encoding="utf-8")
    except (OSError, ModuleNotFoundError):
        return PublicSuffixList()
    return PublicSuffixList(text.splitlines())


@lru_cache(maxsize=ORG_DOMAIN_CACHE)
def org_domain(domain: str) -> str:
    """The organisational (registrable) domain: the public suffix plus one label (RFC 7489 section 3.2).

    A name under a suffix the list does not know takes its last label as the suffix (the list's ``*`` rule), so
    ``mail.acme.test`` → ``acme.test``. A public suffix is its own organisational domain.
    """
    name = domain.strip().rstrip(".").lower()
    if not name:
        return name
    suffix = _psl().get_tld(name) or name.rsplit(".", 1)[-1]
    labels = name.split(".")
    keep = suffix.count(".") + 2
    return ".".join(labels[-keep:]) if len(labels) >= keep else name


def aligned(domain: str, from_domain: str, mode: str) -> bool:
    """Identifier alignment (RFC 7489 3.1): ``s`` exact match, ``r`` same organisational domain."""
    a, b = domain.rstrip(".").lower(), from_domain.rstrip(".").lower()
    if not a or not b:
        return False
    return a == b if mode == "s" else org_domain(a) == org_domain(b)


# --- raw header helpers -------------------------------------------------------------------------------------------

def _split_head(raw: bytes) -> tuple[bytes, bytes]:
    """(header block with its last line end, the rest from the blank line on); no blank line: all header."""
    if raw.startswith((b"\r\n", b"\n")):
        return b"", raw
    m = _HEADER_END_RE.search(raw)
    if m is None:
        return raw, b""
    return raw[:m.start() + 1], raw[m.start() + 1:]


def _authserv_id(value: str) -> str:
    """The authserv-id of an Authentication-Results value: comments dropped, up to the first ``;`` or space."""
    text = " ".join(value.split())
    while True:
        stripped = _COMMENT_RE.sub(" ", text)
        if stripped == text:
            break
        text = stripped
    first = text.split(";", 1)[0].strip()
    token = first.split()[0] if first.split() else ""
    return token.strip('"').rstrip(".").lower()


def strip_spoofed_authres(raw: bytes, hostname: str) -> bytes:
    """Remove incoming Authentication-Results headers whose authserv-id is ``hostname`` (any case).

    A sender could otherwise add ``Authentication-Results: <our name>; dkim=pass`` and have downstream filters
    and mail clients trust it. Headers of other authserv-ids, and every other byte of the mail, are kept.
    """
    ours = hostname.strip().rstrip(".").lower()
    head, rest = _split_head(raw)
    if not ours or b"authentication-results" not in head.lower():
        return raw
    kept: list[bytes] = []
    for field in header_fields(head):
        name, sep, value = field.partition(b":")
        if sep and name.strip().lower() == b"authentication-results" and \
                _authserv_id(value.decode("latin-1")) == ours:
            continue
        kept.append(field)
    return b"".join(kept) + rest


def _raw_fields(raw: bytes, names: Iterable[str]) -> list[tuple[str, bytes]]:
    """(lower-case name, unfolded value) of the header fields named ``names``, in order, from the raw mail."""
    wanted = {n.lower() for n in names}
    out: list[tuple[str, bytes]] = []
    for field in header_fields(_split_head(raw)[0]):
        name, sep, value = field.partition(b":")
        lname = name.strip().decode("latin-1").lower()
        if sep and lname in wanted:
            out.append((lname, re.sub(rb"\r?\n[ \t]", b" ", value).strip()))
    return out


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return parse_tag_value(value)
    except (InvalidTagValueList, ValueError):
        return {}


def _key_name(tags: dict[bytes, bytes]) -> str | None:
    """``selector._domainkey.domain`` of a signature, or None when s= or d= is missing or not a DNS name."""
    try:
        selector = tags[b"s"].decode("ascii").lower()
        domain = tags[b"d"].decode("ascii").lower().rstrip(".")
    except (KeyError, UnicodeDecodeError):
        return None
    labels = selector.split(".") + domain.split(".")
    if not all(_LABEL_RE.match(label) for label in labels):
        return None
    return f"{selector}._domainkey.{domain}"


# --- DNS ----------------------------------------------------------------------------------------------------------

class TxtLookupError(Exception):
    """A TXT lookup failed (timeout, SERVFAIL): the result is a temperror, not a fail."""


async def _txt(resolver: dns.asyncresolver.Resolver, name: str) -> list[bytes]:
    """The TXT records of ``name`` (each one's strings joined); [] for NXDOMAIN/no data."""
    try:
        answer = await resolver.resolve(name, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise TxtLookupError(f"{name}: {exc}") from exc
    return [b"".join(r.strings) for r in answer]


@dataclass
class KeyStore:
    """DKIM/ARC key records fetched ahead of verification; ``dnsfunc`` is what dkimpy calls."""

    records: dict[str, bytes | None]
    failed: dict[str, str]

    @classmethod
    async def fetch(cls, resolver: dns.asyncresolver.Resolver, names: Iterable[str]) -> KeyStore:
        unique = list(dict.fromkeys(names))
        results = await asyncio.gather(*(_txt(resolver, n) for n in unique), return_exceptions=True)
        store = cls({}, {})
        for name, result in zip(unique, results, strict=True):
            if isinstance(result, TxtLookupError):
                store.failed[name] = str(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                store.records[name] = result[0] if result else None
        return store

    def dnsfunc(self, name: bytes | str, timeout: float = DNS_LIFETIME) -> bytes | None:
        key = (name.decode("ascii", "replace") if isinstance(name, bytes) else name).rstrip(".").lower()
        if key in self.failed:
            raise dkim.DnsTimeoutError(self.failed[key])
        return self.records.get(key)


class KeyedCheck(Check):
    """What DKIM and ARC share: inbound at DATA, and the keys their signatures name fetched ahead of dkimpy."""

    stage = Stage.DATA
    timeout = DNS_LIFETIME + VERIFY_MARGIN
    directions = ("inbound",)

    def __init__(self, cfg: Config, *, dns_timeout: float = DNS_LIFETIME) -> None:
        super().__init__(cfg)
        self.resolver = async_resolver(cfg, lifetime=dns_timeout)

    async def fetch_keys(self, signatures: Iterable[dict[bytes, bytes]]) -> KeyStore:
        """The key records the signatures' ``s=`` and ``d=`` name (an unnameable one is skipped), fetched at once."""
        return await KeyStore.fetch(self.resolver, [k for k in map(_key_name, signatures) if k is not None])


# --- results shared through ctx.facts -----------------------------------------------------------------------------

@dataclass(frozen=True)
class DkimResult:
    """One signature: result is pass, fail, permerror or temperror (RFC 8601 names)."""

    result: str
    domain: str
    selector: str
    header_b: str
    reason: str


@dataclass(frozen=True)
class ArcResult:
    """The chain: result is pass, fail, none or temperror; ``sealer`` the d= of the newest ARC-Seal."""

    result: str
    reason: str
    sealer: str = ""
    instances: int = 0


@dataclass(frozen=True)
class DmarcResult:
    """result: pass, fail, none, temperror; ``policy`` the published one that applies, ``disposition`` after pct."""

    result: str
    from_domain: str
    policy: str = ""
    disposition: str = ""
    reason: str = ""


def _text(value: bytes | None) -> str:
    return value.decode("ascii", "replace") if value else ""
