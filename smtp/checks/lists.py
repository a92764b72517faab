"""Allow and block lists at DATA (see :mod:`tenants.lists` for levels and precedence).

For each recipient tenant the check records ``LIST_ALLOW`` or ``LIST_BLOCK`` (for that tenant only) when the MSP's or
the tenant's lists match the envelope sender, the header From or the client IP. Users' own lists differ per
recipient, so they are stated as a fact, ``ctx.facts["user_lists"] = {rcpt: "allow" | "block"}``, which the ingress
applies per recipient with :func:`findings_for_rcpt` (the user's decision replaces the tenant's list symbol).

Lists are loaded in a thread and cached per tenant while the policy version in Redis stays the same (every list
change bumps it), and for at most :data:`LIST_CACHE_TTL` seconds: a mail costs one Redis GET, and a reload three
indexed queries per tenant.
"""

from __future__ import annotations

from collections.abc import Iterable

from smtp.checks.base import Check, CheckContext, Finding, Stage
from smtp.checks.tenantcache import TenantCache
from tenants.lists import Match, TenantLists, load_tenant_lists
from tenants.platform.config import Config
from tenants.platform.db import session_factory

LIST_ALLOW = "LIST_ALLOW"
LIST_BLOCK = "LIST_BLOCK"
#: The symbol of each outcome.
SYMBOLS = {"allow": LIST_ALLOW, "block": LIST_BLOCK}
#: ``ctx.facts`` key of the per-recipient user-list outcomes, and of their reasons.
USER_LISTS_FACT = "user_lists"
USER_LIST_REASONS_FACT = "user_list_reasons"
#: Seconds a tenant's loaded lists are used at most, even when the policy version could not be read.
LIST_CACHE_TTL = 60.0


class ListsCheck(Check):
    name = "lists"
    stage = Stage.DATA
    timeout = 5.0
    directions = ("inbound",)
    symbols = (LIST_ALLOW, LIST_BLOCK)

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self._cache = TenantCache("lists", LIST_CACHE_TTL, self._load)

    def _load(self, tenant_ids: list[int]) -> dict[int, TenantLists]:
        with session_factory(self.cfg)() as session:
            return {tid: load_tenant_lists(session, tid) for tid in tenant_ids}

    async def lists_for(self, ctx: CheckContext, tenant_ids: Iterable[int]) -> dict[int, TenantLists]:
        """Each tenant's lists, from the cache when it is current, else loaded (all missing ones in one thread)."""
        return await self._cache.get(ctx, tenant_ids)

    async def run(self, ctx: CheckContext) -> None:
        if not ctx.tenant_ids:
            return
        header_from = ctx.mail.header("From") if ctx.mail is not None else None
        who = dict(sender=ctx.mail_from or None, header_from=header_from, client_ip=ctx.client_ip)
        outcomes: dict[str, str] = {}
        reasons: dict[str, str] = {}
        for tenant_id, lists in (await self._cache.get(ctx, ctx.tenant_ids)).items():
            found = lists.tenant_match(**who)
            if found is not None:
                ctx.add(SYMBOLS[found.outcome], found.reason, tenant_id=tenant_id)
            for rcpt in ctx.rcpts:
                mine: Match | None = lists.user_match(rcpt, **who)
                if mine is not None:
                    outcomes[rcpt] = mine.outcome
                    reasons[rcpt] = f"{mine.reason} of {rcpt}"
        ctx.facts[USER_LISTS_FACT] = outcomes
        ctx.facts[USER_LIST_REASONS_FACT] = reasons


def findings_for_rcpt(ctx: CheckContext, tenant_id: int, rcpt: str) -> list[Finding]:
    """The findings one recipient is judged by: when the recipient's user has a list decision, it replaces the
    tenant's (and MSP's) list symbol for that tenant; every other finding (a virus above all) stays."""
    outcome = ctx.facts.get(USER_LISTS_FACT, {}).get(rcpt)
    if outcome is None:
        return list(ctx.findings)
    kept = [f for f in ctx.findings
            if not (f.symbol in (LIST_ALLOW, LIST_BLOCK) and f.tenant_id in (None, tenant_id))]
    kept.append(Finding(SYMBOLS[outcome], ctx.facts.get(USER_LIST_REASONS_FACT, {}).get(rcpt, ""), tenant_id))
    return kept


def rcpt_groups(ctx: CheckContext, rcpts: Iterable[str]) -> dict[str | None, list[str]]:
    """A tenant's recipients grouped by their user-list outcome (None: no user decision, the tenant's verdict)."""
    groups: dict[str | None, list[str]] = {}
    outcomes = ctx.facts.get(USER_LISTS_FACT, {})
    for rcpt in rcpts:
        groups.setdefault(outcomes.get(rcpt), []).append(rcpt)
    return groups
