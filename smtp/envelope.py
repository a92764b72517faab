"""What the ingress decides from the envelope alone, before any content: address syntax, and for each inbound
recipient its allow/block lists, DNSBL refusal and greylisting under the recipient tenant's policy."""

from __future__ import annotations

import logging
from typing import Any

from aiosmtpd.smtp import Session

from smtp import greylist
from smtp.checks import CheckContext
from smtp.checks.lists import ListsCheck
from smtp.session import MailEnvelope
from tenants.policy import Policy

log = logging.getLogger(__name__)

REPLY_BLOCKED = "550 5.7.1 Sender blocked by the recipient's policy"


def valid_address(address: str) -> bool:
    """local@domain with no spaces or control characters (RFC 5321 4.1.2, leniently: real senders vary)."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or len(address) > 320:
        return False
    if any(c.isspace() or ord(c) < 32 or c in "<>" for c in address):
        return False
    if domain.startswith("["):
        return domain.endswith("]")
    return "." in domain and all(label for label in domain.split("."))


def peer_ip(session: Session) -> str:
    """The client's IP address of the connection."""
    return session.peer[0] if isinstance(session.peer, tuple) else "127.0.0.1"


class EnvelopeChecks:
    """RCPT-time decisions under the recipient tenant's policy (the check pipeline's facts, the policy's say)."""

    def __init__(self, redis: Any, lists: ListsCheck | None) -> None:
        self.redis = redis
        self.lists = lists

    async def check(self, envelope: MailEnvelope, tenant_id: int, policy: Policy, rcpt: str) -> str | None:
        """The refusal of ``rcpt``, or None: the envelope against the allow/block lists (the recipient's own, then
        the tenant's and the MSP's), DNSBL zones marked reject, then greylisting. An allow-listed envelope skips
        DNSBL refusal and greylisting; its content is still checked at DATA (viruses included)."""
        ctx = envelope.ctx
        if ctx is None:
            return None
        listed = await self._listed(ctx, tenant_id, rcpt)
        if listed == "block":
            return REPLY_BLOCKED
        if listed == "allow":
            return None
        if policy.dnsbl_reject or policy.greylisting:
            await envelope.early_done()
        if policy.dnsbl_reject and ctx.facts.get("dnsbl_reject"):
            zones = ", ".join(sorted({str(z) for z in ctx.facts["dnsbl_reject"]}))
            return f"554 5.7.1 Service unavailable; client host [{ctx.client_ip}] blocked using {zones}"
        spf = ctx.facts.get("spf")
        spf_pass = spf is not None and str(spf[0]) == "pass"
        return await greylist.check(self.redis, policy, tenant_id, ctx.client_ip, ctx.mail_from, rcpt, spf_pass)

    async def _listed(self, ctx: CheckContext, tenant_id: int, rcpt: str) -> str | None:
        """"allow", "block" or None for the envelope (sender, client IP) as this recipient's lists say."""
        if self.lists is None:
            return None
        try:
            lists = (await self.lists.lists_for(ctx, [tenant_id]))[tenant_id]
        except Exception:
            log.exception("allow/block lists unavailable at RCPT; deciding at DATA")
            return None
        who: dict[str, str | None] = dict(sender=ctx.mail_from or None, header_from=None, client_ip=ctx.client_ip)
        found = lists.user_match(rcpt, **who) or lists.tenant_match(**who)
        return found.outcome if found is not None else None
