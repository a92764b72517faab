"""Phishing: credential-harvest forms (in HTML attachments above all), QR codes that lead to a web page, lookalike
and deceptive IDN domains of the tenant's own domains and of well-known brands, display names that claim a brand or
a colleague, links that show a brand's address and lead elsewhere, words split by hidden text.

The features are pure functions in :mod:`smtp.phishing`; this check loads what it needs to know about each recipient
tenant (its domains and the addresses its directory knows), cached per tenant while the policy version in Redis
stays the same and for at most :data:`IDENTITY_CACHE_TTL` seconds, and runs the analysis in a worker thread. What
it could not analyse (a broken image or PDF, a bound reached) is recorded as ``PHISHING_TEMPFAIL`` with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from sqlalchemy import select

from smtp.checks.base import Check, CheckContext, Stage
from smtp.checks.tenantcache import TenantCache
from smtp.phishing.brands import load_brands
from smtp.phishing.lookalike import Targets, make_targets
from smtp.phishing.mail import TEMPFAIL, TenantIdentity, analyse_mail
from tenants.models import Domain, ValidRecipient
from tenants.platform.config import Config
from tenants.platform.db import session_factory
from tenants.policy import routing_domain
from tenants.scope import tenant_scope

#: Seconds a tenant's loaded identity is used at most, even when the policy version could not be read.
IDENTITY_CACHE_TTL = 300.0
#: Known recipient addresses read per tenant to recognise colleagues' names (a directory bigger than this is read
#: that far; the domains are always read whole).
MAX_COLLEAGUE_ADDRESSES = 50_000


class PhishingCheck(Check):
    name = "phishing"
    stage = Stage.DATA
    timeout = 15.0
    directions = ("inbound",)
    symbols = (
        "PHISH_HTML_ATTACH_FORM", "PHISH_HTML_ATTACH_REDIRECT", "PHISH_PASSWORD_FORM", "PHISH_QR_URL",
        "PHISH_QR_URL_SUSPICIOUS", "PHISH_LOOKALIKE_OWN_DOMAIN", "PHISH_LOOKALIKE_BRAND", "PHISH_PUNYCODE_URL",
        "PHISH_PUNYCODE_SENDER", "PHISH_DISPLAY_BRAND", "PHISH_DISPLAY_COLLEAGUE", "PHISH_LINK_MISMATCH",
        "PHISH_HIDDEN_TEXT", "PHISH_CREDENTIAL_URL", TEMPFAIL,
    )

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.brands = load_brands()
        self.brand_targets = Targets(t for b in self.brands for t in make_targets(b.domains, b.name))
        self._cache = TenantCache("phishing", IDENTITY_CACHE_TTL, self._load)

    def _load(self, tenant_ids: list[int]) -> dict[int, TenantIdentity]:
        """Each tenant's routing domains and known addresses: two indexed queries per tenant, in its own scope."""
        out = {}
        with session_factory(self.cfg)() as session:
            for tid in tenant_ids:
                with tenant_scope(tid):
                    domains = session.scalars(select(Domain.name).where(routing_domain())).all()
                    addresses = session.scalars(select(ValidRecipient.address).where(
                        ValidRecipient.address.contains("@")).limit(MAX_COLLEAGUE_ADDRESSES)).all()
                out[tid] = TenantIdentity.build(tid, domains, (a for a in addresses if not a.startswith("@")))
        return out

    async def identities(self, ctx: CheckContext, tenant_ids: Iterable[int]) -> list[TenantIdentity]:
        """Each tenant's identity, from the cache when it is current, else loaded (all missing ones in one thread)."""
        return list((await self._cache.get(ctx, tenant_ids)).values())

    async def run(self, ctx: CheckContext) -> None:
        mail = ctx.mail
        if mail is None or mail.message is None:
            return  # nothing was parsed (over the MIME limits): the MIME check has said so
        tenants = await self.identities(ctx, ctx.tenant_ids)
        found = await asyncio.to_thread(
            analyse_mail, mail, mail_from=ctx.mail_from, rcpts=ctx.rcpts, brands=self.brands,
            brand_targets=self.brand_targets, tenants=tenants)
        for symbol, reason, tenant_id in found:
            ctx.add(symbol, reason, tenant_id=tenant_id)
