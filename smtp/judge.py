"""The verdict at DATA: parse the mail once, run the DATA-stage checks once, and judge it under each tenant's policy
(a mail to two tenants is judged under each; a recipient with its own list decision is judged apart)."""

from __future__ import annotations

import asyncio

from smtp.checks import Check, CheckContext, Stage
from smtp.checks.lists import findings_for_rcpt, rcpt_groups
from smtp.commit import Judged
from smtp.mailrules import judge_rules
from smtp.mime import parse_mail
from smtp.pipeline import run_stage
from smtp.routing import Routing
from smtp.session import MailEnvelope
from smtp.submission import decide_outbound
from smtp.verdict import Verdict, decide
from tenants.platform.config import Config


class Judge:
    def __init__(self, cfg: Config, checks: list[Check], routing: Routing) -> None:
        self.cfg = cfg
        self.checks = checks
        self.routing = routing

    async def inbound(
        self, envelope: MailEnvelope, raw: bytes, by_tenant: dict[int, list[str]], queue_id: str = ""
    ) -> tuple[dict[Judged, Verdict], dict[Judged, list[str]], CheckContext]:
        """Verdicts and recipients of each (tenant, own list decision, rules matched) group, and the checks'
        context."""
        ctx = envelope.ctx or CheckContext(cfg=self.cfg, client_ip="127.0.0.1", helo="", mail_from="")
        ctx.rcpts = list(envelope.rcpt_tos)
        ctx.tenant_ids = list(by_tenant)
        ctx.policies = {tid: await self.routing.policy(tid) for tid in by_tenant}
        ctx.mail = await asyncio.to_thread(parse_mail, raw)
        await envelope.early_done()
        await run_stage(self.checks, ctx, Stage.DATA)
        groups: dict[Judged, list[str]] = {}
        verdicts: dict[Judged, Verdict] = {}
        for tid, rcpts in by_tenant.items():
            for outcome, group in rcpt_groups(ctx, rcpts).items():
                findings = findings_for_rcpt(ctx, tid, group[0]) if outcome else ctx.findings
                groups[(tid, outcome)] = group
                verdicts[(tid, outcome)] = decide(findings, tid, ctx.policies[tid])
        verdicts, groups = await judge_rules(self.routing, ctx, queue_id, verdicts, groups)
        return verdicts, groups, ctx

    async def outbound(self, envelope: MailEnvelope, raw: bytes, tenant_id: int) -> tuple[Verdict, CheckContext]:
        """The verdict on a sending tenant's mail under its outbound policy (the DATA checks that apply to it)."""
        ctx = envelope.ctx or CheckContext(cfg=self.cfg, client_ip="127.0.0.1", helo="", mail_from="",
                                           direction="outbound")
        policy = await self.routing.policy(tenant_id)
        ctx.rcpts = list(envelope.rcpt_tos)
        ctx.tenant_ids = [tenant_id]
        ctx.policies = {tenant_id: policy}
        ctx.mail = await asyncio.to_thread(parse_mail, raw)
        await envelope.early_done()
        await run_stage(self.checks, ctx, Stage.DATA)
        return decide_outbound(ctx.findings, tenant_id, policy), ctx
