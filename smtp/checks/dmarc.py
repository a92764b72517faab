"""DMARC (RFC 7489) after SPF and DKIM: record discovery at the From domain then its organisational domain,
relaxed/strict alignment, ``p``/``sp``/``pct``; ``facts["dmarc"]`` is the result."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from email.utils import getaddresses

from smtp.checks.authresults import authentication_results
from smtp.checks.base import Check, CheckContext, Stage
from smtp.checks.msgauth import (
    DMARC_LOOKUPS,
    DMARC_POLICIES,
    PCT_MAX,
    PCT_MIN,
    VERIFY_MARGIN,
    DkimResult,
    DmarcResult,
    TxtLookupError,
    _txt,
    aligned,
    org_domain,
)
from smtp.dns import DNS_LIFETIME, async_resolver
from tenants.platform.config import Config

log = logging.getLogger(__name__)


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
