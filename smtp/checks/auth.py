"""Message authentication: DKIM, ARC and DMARC (after SPF), and the Authentication-Results header we add.

dkimpy verifies signatures and ARC chains; it resolves synchronously, so the keys are fetched first, concurrently,
with the asyncio resolver on ``MAILWARD_DNS``, and dkimpy's ``dnsfunc`` answers from what was fetched (the
verification itself, CPU-bound, runs in a thread). DMARC (RFC 7489) is evaluated here: record discovery at the
From domain then its organisational domain (public suffix list), relaxed/strict alignment, ``p``/``sp``/``pct``.

:func:`strip_spoofed_authres` removes incoming Authentication-Results headers that claim to be ours (RFC 8601
section 5): the ingress calls it before it stores the mail.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import ipaddress
import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from functools import cache, lru_cache
from typing import Any

import dkim
import dns.asyncresolver
import dns.exception
import dns.resolver
from dkim.util import InvalidTagValueList, parse_tag_value
from publicsuffix2 import PublicSuffixList

from smtp.checks.base import Check, CheckContext, Stage
from smtp.dns import DNS_LIFETIME, async_resolver
from tenants.config import Config

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


def _header_fields(head: bytes) -> list[bytes]:
    """The header block as whole fields (first line plus continuation lines, line ends kept)."""
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


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
    for field in _header_fields(head):
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
    for field in _header_fields(_split_head(raw)[0]):
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


# --- DKIM ---------------------------------------------------------------------------------------------------------

def _verify_dkim(raw: bytes, sigs: Sequence[dict[bytes, bytes]], keys: KeyStore) -> list[DkimResult]:
    """Verify each signature (dkimpy; runs in a thread)."""
    out: list[DkimResult] = []
    try:
        verifier = dkim.DKIM(raw, minkey=MIN_KEY_BITS)
    except dkim.DKIMException as exc:
        return [DkimResult("permerror", _text(t.get(b"d")), _text(t.get(b"s")), "", f"unparseable mail: {exc}")
                for t in sigs]
    for idx, tags in enumerate(sigs):
        domain, selector = _text(tags.get(b"d")).lower(), _text(tags.get(b"s"))
        header_b = re.sub(r"\s+", "", _text(tags.get(b"b")))[:HEADER_B_CHARS]
        key = _key_name(tags)
        try:
            ok = verifier.verify(idx, dnsfunc=keys.dnsfunc)
        except dkim.ValidationError as exc:
            out.append(DkimResult("fail", domain, selector, header_b, str(exc)))
            continue
        except dkim.DKIMException as exc:
            out.append(DkimResult("permerror", domain, selector, header_b, str(exc)))
            continue
        if ok:
            result, reason = "pass", f"d={domain} s={selector}"
        elif key is not None and key in keys.failed:
            result, reason = "temperror", f"key lookup failed: {keys.failed[key]}"
        elif key is None or keys.records.get(key) is None:
            result, reason = "permerror", f"no key published at {key or 'an invalid name'}"
        else:
            result, reason = "fail", f"d={domain} s={selector}: signature did not verify"
        out.append(DkimResult(result, domain, selector, header_b, reason))
    return out


#: The symbol of each per-signature result.
_DKIM_SYMBOLS = {"pass": "DKIM_VALID", "fail": "DKIM_INVALID", "permerror": "DKIM_INVALID",
                 "temperror": "DKIM_TEMPFAIL"}


class DkimCheck(KeyedCheck):
    """Verifies every DKIM signature; ``facts["dkim"]`` is the list of :class:`DkimResult`."""

    name = "dkim"
    symbols = ("DKIM_VALID", "DKIM_INVALID", "DKIM_NONE", "DKIM_TEMPFAIL")

    async def run(self, ctx: CheckContext) -> None:
        if ctx.mail is None:
            return
        raw = ctx.mail.raw
        sigs = [_tags(v) for _, v in _raw_fields(raw, ("DKIM-Signature",))][:MAX_DKIM_SIGNATURES]
        if not sigs:
            ctx.facts["dkim"] = []
            ctx.add("DKIM_NONE", "no DKIM signature")
            return
        keys = await self.fetch_keys(sigs)
        results = await asyncio.to_thread(_verify_dkim, raw, sigs, keys)
        ctx.facts["dkim"] = results
        by_symbol: dict[str, list[str]] = {}
        for r in results:
            reason = r.reason if r.result == "pass" else f"d={r.domain}: {r.reason}"
            by_symbol.setdefault(_DKIM_SYMBOLS[r.result], []).append(reason)
        for symbol, reasons in by_symbol.items():
            ctx.add(symbol, "; ".join(reasons))


# --- ARC ----------------------------------------------------------------------------------------------------------

ARC_HEADERS = ("ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results")


def _verify_arc(raw: bytes, keys: KeyStore) -> tuple[bytes | None, list[dict[str, Any]], str]:
    try:
        cv, data, reason = dkim.arc_verify(raw, dnsfunc=keys.dnsfunc, minkey=MIN_KEY_BITS)
    except dkim.DKIMException as exc:
        return dkim.CV_Fail, [], str(exc)
    return cv, list(data), str(reason)


class ArcCheck(KeyedCheck):
    """Verifies the ARC chain (RFC 8617); ``facts["arc"]`` is an :class:`ArcResult`."""

    name = "arc"
    symbols = ("ARC_PASS", "ARC_FAIL", "ARC_NONE", "ARC_TEMPFAIL")

    async def run(self, ctx: CheckContext) -> None:
        if ctx.mail is None:
            return
        raw = ctx.mail.raw
        fields = _raw_fields(raw, ARC_HEADERS)
        if not fields:
            ctx.facts["arc"] = ArcResult("none", "no ARC headers")
            ctx.add("ARC_NONE", "no ARC headers")
            return
        signed = [_tags(v) for n, v in fields if n != "arc-authentication-results"]
        keys = await self.fetch_keys(signed)
        cv, data, reason = await asyncio.to_thread(_verify_arc, raw, keys)
        sealer = _text(data[0].get("as-domain")).lower() if data else ""
        if cv == dkim.CV_Pass:
            result = ArcResult("pass", f"{len(data)} ARC set(s), newest sealed by {sealer}", sealer, len(data))
        elif cv == dkim.CV_None:
            result = ArcResult("none", reason)
        elif keys.failed:
            result = ArcResult("temperror", "key lookup failed: " + "; ".join(keys.failed.values()), sealer)
        else:
            result = ArcResult("fail", reason, sealer, len(data))
        ctx.facts["arc"] = result
        symbol = {"pass": "ARC_PASS", "none": "ARC_NONE", "temperror": "ARC_TEMPFAIL"}.get(result.result, "ARC_FAIL")
        ctx.add(symbol, result.reason)


# --- DMARC --------------------------------------------------------------------------------------------------------

def parse_dmarc(record: str) -> dict[str, str] | None:
    """Tags of a DMARC record (names lower-case; p, sp, adkim, aspf values lower-case); None if not DMARC1."""
    parts = [p.strip() for p in record.strip().split(";")]
    if not parts or re.sub(r"\s+", "", parts[0]) != "v=DMARC1":
        return None
    tags: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep and key.strip():
            tags.setdefault(key.strip().lower(), value.strip())
    for key in ("p", "sp", "adkim", "aspf"):
        if key in tags:
            tags[key] = tags[key].lower()
    return tags


def _policy(value: str | None) -> str | None:
    return value if value in DMARC_POLICIES else None


def _pct(value: str | None) -> int:
    try:
        return max(PCT_MIN, min(PCT_MAX, int(value))) if value is not None else PCT_MAX
    except ValueError:
        return PCT_MAX


def from_domains(ctx: CheckContext) -> list[str]:
    """The distinct domains of the From header(s), lower-case, IDNA-encoded."""
    if ctx.mail is None:
        return []
    out: dict[str, None] = {}
    for _name, addr in getaddresses(ctx.mail.header_all("From")):
        domain = addr.rpartition("@")[2].strip().rstrip(".").strip("[]")
        if not addr or "@" not in addr or not domain:
            continue
        try:
            out[domain.encode("idna").decode("ascii").lower()] = None
        except UnicodeError:
            out[domain.lower()] = None
    return list(out)


#: How bad a per-domain DMARC outcome is, to pick the worst when a mail has several From domains.
_SEVERITY = {"pass": 0, "none": 1, "temperror": 2, "fail": 3}


class DmarcCheck(Check):
    """DMARC for the From domain(s); ``facts["dmarc"]`` is a :class:`DmarcResult`. Adds Authentication-Results."""

    name = "dmarc"
    stage = Stage.DATA
    depends_on = ("spf", "dkim", "arc")
    timeout = DMARC_LOOKUPS * DNS_LIFETIME + VERIFY_MARGIN
    symbols = ("DMARC_PASS", "DMARC_FAIL_REJECT", "DMARC_FAIL_QUARANTINE", "DMARC_FAIL_NONE", "DMARC_NONE",
               "DMARC_TEMPFAIL")
    directions = ("inbound",)

    def __init__(self, cfg: Config, *, dns_timeout: float = DNS_LIFETIME,
                 sample: random.Random | None = None) -> None:
        super().__init__(cfg)
        self.resolver = async_resolver(cfg, lifetime=dns_timeout)
        #: Random source of the pct sampling (a seeded one in tests).
        self.sample = sample or random.Random()

    async def record(self, domain: str) -> tuple[dict[str, str] | None, str]:
        """The DMARC record for ``domain`` and where it was found (the domain or its organisational domain)."""
        for candidate in dict.fromkeys((domain, org_domain(domain))):
            found = [t for t in (parse_dmarc(r.decode("utf-8", "replace"))
                                 for r in await _txt(self.resolver, f"_dmarc.{candidate}")) if t is not None]
            if len(found) == 1:
                return found[0], candidate
            if found:  # several records: as if none (RFC 7489 6.6.3)
                log.info("dmarc: %d records at _dmarc.%s, ignored", len(found), candidate)
        return None, ""

    async def evaluate(self, ctx: CheckContext, from_domain: str) -> DmarcResult:
        try:
            tags, where = await self.record(from_domain)
        except TxtLookupError as exc:
            return DmarcResult("temperror", from_domain, reason=str(exc))
        if tags is None:
            return DmarcResult("none", from_domain, reason=f"no DMARC record for {from_domain}")
        policy = _policy(tags.get("p")) or "none"
        if where != from_domain:
            policy = _policy(tags.get("sp")) or policy
        spf_result, spf_domain = ctx.facts.get("spf", ("none", ""))
        dkim_results: list[DkimResult] = ctx.facts.get("dkim", [])
        if spf_result == "pass" and aligned(spf_domain, from_domain, tags.get("aspf", "r")):
            return DmarcResult("pass", from_domain, policy, "none", f"{from_domain}: SPF aligned ({spf_domain})")
        for r in dkim_results:
            if r.result == "pass" and aligned(r.domain, from_domain, tags.get("adkim", "r")):
                return DmarcResult("pass", from_domain, policy, "none", f"{from_domain}: DKIM aligned (d={r.domain})")
        disposition = policy
        pct = _pct(tags.get("pct"))
        if policy != "none" and self.sample.randrange(PCT_MAX) >= pct:
            disposition = DMARC_POLICIES[DMARC_POLICIES.index(policy) - 1]
        dkim_domains = ",".join(r.domain for r in dkim_results if r.result == "pass") or "none"
        reason = (f"{from_domain}: no aligned SPF (spf={spf_result} for {spf_domain or 'no domain'}) or DKIM "
                  f"(valid d={dkim_domains}); p={policy}" + (f" pct={pct}" if pct != PCT_MAX else ""))
        return DmarcResult("fail", from_domain, policy, disposition, reason)

    async def run(self, ctx: CheckContext) -> None:
        domains = from_domains(ctx)
        if not domains:
            result = DmarcResult("none", "", reason="no From domain")
        else:
            results = await asyncio.gather(*(self.evaluate(ctx, d) for d in domains))
            result = max(results, key=lambda r: (_SEVERITY[r.result], DMARC_POLICIES.index(r.disposition or "none")))
        ctx.facts["dmarc"] = result
        if result.result == "pass":
            ctx.add("DMARC_PASS", result.reason)
        elif result.result == "fail":
            ctx.add(f"DMARC_FAIL_{result.disposition.upper()}", result.reason)
        elif result.result == "temperror":
            ctx.add("DMARC_TEMPFAIL", result.reason)
        else:
            ctx.add("DMARC_NONE", result.reason)
        ctx.add_headers.append(authentication_results(ctx, self.cfg.hostname))


# --- Authentication-Results (RFC 8601) ----------------------------------------------------------------------------

def _pvalue(value: str) -> str:
    """A property value: as is when it is a plain token, else a quoted-string; never a line break."""
    clean = "".join(ch for ch in value if ch.isprintable() and ch not in "\r\n")
    if clean and _PTOKEN_RE.match(clean):
        return clean
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    clean = "".join(ch for ch in text if ch.isprintable() and ch not in "()\\\r\n")
    return f" ({clean})" if clean else ""


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def authentication_results(ctx: CheckContext, authserv_id: str) -> str:
    """The ``Authentication-Results:`` line for what the checks found (missing facts: temperror)."""
    parts = [_pvalue(authserv_id)]
    spf_result, _spf_domain = ctx.facts.get("spf", ("temperror", ""))
    if ctx.mail_from:
        parts.append(f"spf={spf_result} smtp.mailfrom={_pvalue(ctx.mail_from)}")
    else:
        parts.append(f"spf={spf_result} smtp.helo={_pvalue(ctx.helo)}")
    dkim_results: list[DkimResult] | None = ctx.facts.get("dkim")
    if dkim_results is None:
        parts.append("dkim=temperror")
    elif not dkim_results:
        parts.append("dkim=none")
    for r in dkim_results or ():
        item = f"dkim={r.result}"
        if r.result != "pass":
            item += _comment(r.reason[:80])
        if r.domain:
            item += f" header.d={_pvalue(r.domain)}"
        if r.selector:
            item += f" header.s={_pvalue(r.selector)}"
        if r.header_b:
            item += f" header.b={_pvalue(r.header_b)}"
        parts.append(item)
    dmarc: DmarcResult | None = ctx.facts.get("dmarc")
    if dmarc is None:
        parts.append("dmarc=temperror")
    else:
        item = f"dmarc={dmarc.result}"
        if dmarc.policy:
            item += _comment(f"p={dmarc.policy} dis={dmarc.disposition}")
        if dmarc.from_domain:
            item += f" header.from={_pvalue(dmarc.from_domain)}"
        parts.append(item)
    arc: ArcResult | None = ctx.facts.get("arc")
    if arc is None:
        parts.append("arc=temperror")
    else:
        remote_ip = arc.result != "none" and _is_ip(ctx.client_ip)
        parts.append(f"arc={arc.result}" + (_comment(f"sealed by {arc.sealer}") if arc.sealer else "")
                     + (f" smtp.remote-ip={_pvalue(ctx.client_ip)}" if remote_ip else ""))
    return "Authentication-Results: " + "; ".join(parts)
