"""Mail rules at DATA: after the checks and the verdict, each recipient is run through its tenant's rules
(:mod:`tenants.mailrules.evaluate`); recipients the rules treat alike form one group, stored as one message.

A final action changes the group's verdict: ``accept`` delivers (never a virus: a rule does not deliver one),
``block`` rejects (or discards: recorded as rejected, the client told 250), ``quarantine`` holds it as spam or
attachment (a virus stays a virus). The other actions ride on the verdict as :class:`RuleEffects` and are applied
to the stored content by :mod:`smtp.ruleactions`. Every matched rule is named in the verdict's explanation.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from email.utils import parseaddr

from smtp.checks import CheckContext
from smtp.commit import Judged
from smtp.routing import Routing
from smtp.verdict import Action, Verdict
from tenants.mailrules.evaluate import MailFacts, Outcome, TenantRules, evaluate
from tenants.mailrules.schema import expand
from tenants.symbols import lookup


@dataclass
class RuleEffects:
    """The rules' outcome for one recipient group, and what their templates may say about the mail."""

    outcome: Outcome
    facts: MailFacts
    #: The group's first recipient ({recipient} in templates).
    rcpt: str
    #: The verdict the checks gave, when a final action changed it (stored for the dry-run replay).
    before: str | None = None

    def macros(self, verdict: Verdict, *, rule: str = "", filename: str = "") -> dict[str, str]:
        facts = self.facts
        files = sorted(self.outcome.matched_files)
        return {
            "sender": facts.sender or "<>", "recipient": self.rcpt, "from": facts.header_from,
            "subject": facts.subject, "score": f"{verdict.score:g}", "verdict": verdict.action.value,
            "virus": facts.virus or "", "filename": filename or (files[0] if files else ""), "rule": rule,
            "queue_id": facts.queue_id, "client_ip": facts.client_ip,
            "date": facts.arrived.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }


def mail_facts(ctx: CheckContext, verdict: Verdict, rules: TenantRules, tenant_id: int, queue_id: str,
               groups: dict[str, frozenset[str]]) -> MailFacts:
    """What the rules see of this mail under this tenant's verdict."""
    mail = ctx.mail
    virus = next((s.reason or s.symbol for s in verdict.findings if lookup(s.symbol).effect == "virus"), None)
    return MailFacts(
        direction=ctx.direction, sender=ctx.mail_from, client_ip=ctx.client_ip,
        header_from=_address(mail.header("From") or "") if mail else "",
        subject=(mail.header("Subject") or "") if mail else "",
        headers=mail.headers if mail else (), size=len(mail.raw) if mail else 0,
        score=verdict.score, verdict=verdict.action.value, virus=virus,
        symbols=frozenset(s.symbol for s in verdict.findings),
        attachments=tuple(ctx.facts.get("attachments") or ()),
        archive_members=tuple(ctx.facts.get("archive_members") or ()),
        timezone=ctx.policies[tenant_id].timezone, internal_domains=rules.internal_domains, groups=groups,
        queue_id=queue_id,
    )


def _address(value: str) -> str:
    return parseaddr(value)[1].lower()


def apply_final(verdict: Verdict, outcome: Outcome, facts: MailFacts, rcpt: str) -> Verdict:
    """The group's verdict once its rules have spoken."""
    if not outcome.matched:
        return verdict
    effects = RuleEffects(outcome, facts, rcpt)
    names = ", ".join(r.label for r in outcome.matched)
    if outcome.final is None:
        return replace(verdict, rules=effects, explanation=f"{verdict.explanation}; matched {names}")
    rule, action = outcome.final
    effects.before = verdict.action.value
    was = verdict.explanation
    virus = verdict.kind == "virus"
    if action.kind == "accept":
        if virus:
            return replace(verdict, rules=effects,
                           explanation=f"{was}; {rule.label} accepts, but a rule never delivers a virus")
        return replace(verdict, action=Action.DELIVER, kind=None, rules=effects,
                       explanation=f"deliver: accepted by {rule.label} (was {was}); matched {names}")
    if action.kind == "block":
        discard = action.params["mode"] == "discard"
        message = expand(action.params["message"], effects.macros(verdict, rule=rule.spec.name)) \
            if action.params.get("message") else None
        return replace(verdict, action=Action.REJECT, kind="virus" if virus else "rule", rules=effects,
                       discard=discard, reply=message,
                       explanation=f"{'discard' if discard else 'reject'}: blocked by {rule.label} (was {was}); "
                                   f"matched {names}")
    kind = "virus" if virus else action.params["kind"]
    reason = expand(action.params.get("reason") or "", effects.macros(verdict, rule=rule.spec.name))
    return replace(verdict, action=Action.QUARANTINE, kind=kind, rules=effects,
                   explanation=f"quarantine ({kind}): {rule.label}{f': {reason}' if reason else ''} (was {was}); "
                               f"matched {names}")


async def judge_rules(routing: Routing, ctx: CheckContext, queue_id: str, verdicts: dict[Judged, Verdict],
                      groups: dict[Judged, list[str]]) -> tuple[dict[Judged, Verdict], dict[Judged, list[str]]]:
    """Split each tenant's recipient groups by what their rules do, and the verdict of each new group."""
    out_v: dict[Judged, Verdict] = {}
    out_g: dict[Judged, list[str]] = {}
    for (tenant_id, label), rcpts in groups.items():
        verdict = verdicts[(tenant_id, label)]
        rules = await routing.rules(tenant_id)
        if verdict.action == Action.TEMPFAIL or not any(
                r.spec.direction in (ctx.direction, "both") for r in rules.rules):
            out_v[(tenant_id, label)], out_g[(tenant_id, label)] = verdict, rcpts
            continue
        found = await asyncio.to_thread(routing.groups, tenant_id, rcpts) if rules.needs_groups else {}
        facts = mail_facts(ctx, verdict, rules, tenant_id, queue_id, found)
        by_key: dict[tuple[int, ...], tuple[Outcome, list[str]]] = {}
        for rcpt in rcpts:
            outcome = evaluate(rules.rules, facts, rcpt)
            by_key.setdefault(outcome.key, (outcome, []))[1].append(rcpt)
        for key, (outcome, members) in by_key.items():
            judged = (tenant_id, label if not key else f"{label or ''}#rules:{','.join(map(str, key))}")
            out_g[judged] = members
            out_v[judged] = apply_final(verdict, outcome, facts, members[0])
    return out_v, out_g
