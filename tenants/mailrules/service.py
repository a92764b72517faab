"""Changing and reading mail rules: a tenant's own, and the MSP's baseline (``tenant_id`` None).

Every change is checked by :func:`tenants.mailrules.schema.parse_rule`, audited in the caller's session and bumps
the policy version once the caller commits, so every ingress process evaluates the new rules for its next mail. A
tenant cannot change, remove or disable a locked baseline rule; an unlocked one it may disable for itself (an
opt-out row), which is all it may do to the MSP's rules. Rule hits are counted in Redis (per tenant, per rule) after
each commit: a statistic, never on the path of the 250.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants import audit
from tenants.egress import SMTP, EgressPolicy
from tenants.exceptions import NotFound, PermissionDenied, ValidationError
from tenants.mailrules.evaluate import LoadedRule, ordered
from tenants.mailrules.model import DirectoryGroupMember, MailRule, MailRuleOptOut
from tenants.mailrules.schema import RuleSpec, load_definition, parse_rule
from tenants.models import Domain, utcnow
from tenants.platform.config import Config
from tenants.platform.jobs import after_commit
from tenants.platform.redisconn import bump_policy_version, redis_client
from tenants.scope import msp_scope

#: Redis hash of a tenant's rule hits (field: rule id).
HITS_KEY = "mailward:rule_hits:{tenant_id}"
MAX_RULES = 200


@dataclass(frozen=True)
class RuleView:
    """A rule as a tenant (or the MSP) sees it in the one list."""

    id: int
    baseline: bool
    spec: RuleSpec
    #: The tenant disabled this (unlocked) baseline rule for itself.
    opted_out: bool = False
    hits: int = 0

    @property
    def effective_active(self) -> bool:
        return self.spec.active and not self.opted_out


def spec_of(row: MailRule) -> RuleSpec:
    return load_definition(row.name, row.priority, row.direction, row.active, row.locked, row.definition)


def _baseline_rows(session: Session) -> list[MailRule]:
    with msp_scope():
        return list(session.scalars(select(MailRule).where(MailRule.tenant_id.is_(None)).order_by(MailRule.id)))


def _tenant_rows(session: Session, tenant_id: int) -> list[MailRule]:
    return list(session.scalars(select(MailRule).where(MailRule.tenant_id == tenant_id).order_by(MailRule.id)))


def _opt_outs(session: Session, tenant_id: int) -> set[int]:
    return set(session.scalars(select(MailRuleOptOut.rule_id).where(MailRuleOptOut.tenant_id == tenant_id)))


def load_rules(session: Session, tenant_id: int) -> list[LoadedRule]:
    """The rules the ingress evaluates for a tenant, in evaluation order (inactive and opted-out ones left out)."""
    skip = _opt_outs(session, tenant_id)
    rules = [LoadedRule(r.id, True, spec_of(r)) for r in _baseline_rows(session)
             if r.locked or r.id not in skip]
    rules += [LoadedRule(r.id, False, spec_of(r)) for r in _tenant_rows(session, tenant_id)]
    return ordered(rules)


def internal_domains(session: Session, tenant_id: int) -> frozenset[str]:
    return frozenset(session.scalars(select(Domain.name).where(Domain.tenant_id == tenant_id)))


def directory_groups(session: Session, tenant_id: int, addresses: list[str]) -> dict[str, frozenset[str]]:
    """Directory groups of each address (lower-cased), for the ldap_group condition."""
    out: dict[str, set[str]] = {}
    wanted = [a.lower() for a in addresses]
    rows = session.execute(select(DirectoryGroupMember.address, DirectoryGroupMember.group_name).where(
        DirectoryGroupMember.tenant_id == tenant_id, DirectoryGroupMember.address.in_(wanted)))
    for address, group in rows:
        out.setdefault(address.lower(), set()).add(group.lower())
    return {a: frozenset(g) for a, g in out.items()}


def replace_directory_groups(session: Session, tenant_id: int, members: dict[str, set[str]]) -> int:
    """Replace a tenant's directory group memberships (address → group names) as a directory sync found them."""
    for row in session.scalars(select(DirectoryGroupMember).where(DirectoryGroupMember.tenant_id == tenant_id)):
        session.delete(row)
    count = 0
    for address, groups in members.items():
        for group in sorted(groups):
            session.add(DirectoryGroupMember(tenant_id=tenant_id, address=address.lower()[:320],
                                             group_name=group[:256]))
            count += 1
    return count


def rule_views(session: Session, cfg: Config, tenant_id: int | None) -> list[RuleView]:
    """The one list a tenant sees (the baseline and its own, in evaluation order, inactive ones where they would
    run), or the MSP's baseline alone (``tenant_id`` None)."""
    hits = rule_hits(cfg, tenant_id) if tenant_id is not None else {}
    skip = _opt_outs(session, tenant_id) if tenant_id is not None else set()
    views = [RuleView(r.id, True, spec_of(r), r.id in skip and not r.locked, hits.get(r.id, 0))
             for r in _baseline_rows(session)]
    if tenant_id is not None:
        views += [RuleView(r.id, False, spec_of(r), False, hits.get(r.id, 0)) for r in _tenant_rows(session, tenant_id)]
    order = {r.id: n for n, r in enumerate(ordered(
        LoadedRule(v.id, v.baseline, _as_active(v.spec)) for v in views))}
    return sorted(views, key=lambda v: order[v.id])


def _as_active(spec: RuleSpec) -> RuleSpec:
    return replace(spec, active=True)


def _get(session: Session, rule_id: int, tenant_id: int | None) -> MailRule:
    """The rule ``rule_id`` the caller may change: its own (a tenant) or a baseline rule (the MSP)."""
    if tenant_id is None:
        with msp_scope():
            row = session.get(MailRule, rule_id)
        if row is None or row.tenant_id is not None:
            raise NotFound(f"no baseline rule {rule_id}")
        return row
    row = session.scalars(select(MailRule).where(MailRule.id == rule_id, MailRule.tenant_id == tenant_id)).first()
    if row is None:
        raise NotFound(f"no rule {rule_id}")
    return row


def _baseline_for_tenant(session: Session, rule_id: int) -> MailRule | None:
    with msp_scope():
        row = session.get(MailRule, rule_id)
    return row if row is not None and row.tenant_id is None else None


def check_spec(cfg: Config, spec: RuleSpec, *, tenant_id: int | None) -> None:
    """What the schema cannot know: a reroute must not loop back into Mailward and, for a tenant, must pass the
    MSP's egress policy; a BCC must not be Mailward's own address."""
    for action in spec.actions:
        if action.kind == "reroute":
            host, port = action.params["host"].rstrip(".").lower(), action.params["port"]
            listen = cfg.smtp_listen
            ours = {(listen.host.lower(), listen.port), (cfg.hostname.lower(), listen.port), (cfg.hostname.lower(), 25)}
            if (host, port) in ours:
                raise ValidationError(f"rule {spec.name!r}: reroute to {host} would send the mail back into Mailward "
                                      "(a loop)")
            policy = EgressPolicy(cfg) if tenant_id is not None else EgressPolicy.unchecked(cfg)
            policy.vet(SMTP, host, action.params["port"], label="reroute host")
        if action.kind == "bcc" and action.params["to"] == cfg.bounce_sender.lower():
            raise ValidationError(f"rule {spec.name!r}: BCC to Mailward's own postmaster address is not allowed")


def parse_rule_list(raw: Any, parse: Callable[[Any], RuleSpec], *, kind: str, entry: str,
                    where: str) -> list[RuleSpec]:
    """The rules of a YAML list (a rule file, a replay's draft), each read by ``parse``; the first problem is a
    :class:`ValidationError` naming the entry (``{entry} 3 ('name')``), as is a name given twice in the ``where``."""
    if not isinstance(raw, list):
        raise ValidationError(f"{kind} is a YAML list of rules (- name: ...)")
    if len(raw) > MAX_RULES:
        raise ValidationError(f"at most {MAX_RULES} rules")
    specs: list[RuleSpec] = []
    seen: set[str] = set()
    for n, item in enumerate(raw, start=1):
        name = item.get("name") if isinstance(item, dict) else None
        label = f"{entry} {n}" + (f" ({name!r})" if isinstance(name, str) else "")
        try:
            spec = parse(item)
        except ValidationError as exc:
            raise ValidationError(f"{label}: {exc}") from None
        if spec.name.lower() in seen:
            raise ValidationError(f"{label}: the name {spec.name!r} appears twice in the {where}")
        seen.add(spec.name.lower())
        specs.append(spec)
    return specs


def _names(session: Session, tenant_id: int | None) -> dict[str, int]:
    rows = _baseline_rows(session) if tenant_id is None else _tenant_rows(session, tenant_id)
    return {r.name.lower(): r.id for r in rows}


def _changed(session: Session, cfg: Config, *, actor: str, action: str, target: str, detail: str,
             tenant_id: int | None) -> None:
    audit.record(session, actor=actor, action=action, target=target, detail=detail[:2000], tenant_id=tenant_id)
    after_commit(session, lambda: bump_policy_version(cfg))


def add_rule(session: Session, cfg: Config, raw: dict[str, Any], *, tenant_id: int | None, actor: str) -> MailRule:
    """Add a rule from its dict form (MSP baseline when ``tenant_id`` is None); the caller commits."""
    spec = parse_rule(raw, baseline=tenant_id is None)
    check_spec(cfg, spec, tenant_id=tenant_id)
    names = _names(session, tenant_id)
    if spec.name.lower() in names:
        raise ValidationError(f"a rule named {spec.name!r} already exists")
    if len(names) >= MAX_RULES:
        raise ValidationError(f"at most {MAX_RULES} rules")
    row = MailRule(tenant_id=tenant_id, name=spec.name, priority=spec.priority, direction=spec.direction,
                   active=spec.active, locked=spec.locked, definition=json.dumps(spec.definition()))
    with _rule_scope(tenant_id):
        session.add(row)
        session.flush()
    _changed(session, cfg, actor=actor, action="rule.add", target=spec.name,
             detail=json.dumps(spec.as_dict(baseline=tenant_id is None)), tenant_id=tenant_id)
    return row


def update_rule(session: Session, cfg: Config, rule_id: int, raw: dict[str, Any], *, tenant_id: int | None,
                actor: str) -> MailRule:
    """Replace a rule's definition; a tenant cannot touch a baseline rule (404 for its id)."""
    row = _get(session, rule_id, tenant_id)
    spec = parse_rule(raw, baseline=tenant_id is None)
    check_spec(cfg, spec, tenant_id=tenant_id)
    other = _names(session, tenant_id).get(spec.name.lower())
    if other is not None and other != row.id:
        raise ValidationError(f"a rule named {spec.name!r} already exists")
    row.name, row.priority, row.direction = spec.name, spec.priority, spec.direction
    row.active, row.locked, row.definition = spec.active, spec.locked, json.dumps(spec.definition())
    row.updated_at = utcnow()
    _write(session, row)
    _changed(session, cfg, actor=actor, action="rule.update", target=spec.name,
             detail=json.dumps(spec.as_dict(baseline=tenant_id is None)), tenant_id=tenant_id)
    return row


def _rule_scope(tenant_id: int | None) -> AbstractContextManager[object]:
    """The scope a rule row is written in: the MSP's for a baseline rule (no tenant), else the caller's."""
    return msp_scope() if tenant_id is None else nullcontext()


def _write(session: Session, row: MailRule) -> None:
    with _rule_scope(row.tenant_id):
        session.flush()


def remove_rule(session: Session, cfg: Config, rule_id: int, *, tenant_id: int | None, actor: str) -> str:
    """Remove a rule; its name. A tenant asking to remove a baseline rule is told it cannot."""
    if tenant_id is not None and _baseline_for_tenant(session, rule_id) is not None:
        raise PermissionDenied("this is your provider's rule: it cannot be removed here (disable it instead, "
                               "unless it is locked)")
    row = _get(session, rule_id, tenant_id)
    name = row.name
    with _rule_scope(row.tenant_id):
        session.delete(row)
        session.flush()
    _changed(session, cfg, actor=actor, action="rule.remove", target=name, detail="", tenant_id=tenant_id)
    return name


def set_active(session: Session, cfg: Config, rule_id: int, active: bool, *, tenant_id: int | None,
               actor: str) -> str:
    """Enable or disable a rule; for a tenant and a baseline rule, its own opt-out (refused when locked)."""
    verb = "rule.enable" if active else "rule.disable"
    if tenant_id is not None:
        base = _baseline_for_tenant(session, rule_id)
        if base is not None:
            if base.locked:
                raise PermissionDenied(f"rule {base.name!r} is locked by your provider and cannot be disabled")
            existing = session.get(MailRuleOptOut, (tenant_id, rule_id))
            if active and existing is not None:
                session.delete(existing)
            elif not active and existing is None:
                session.add(MailRuleOptOut(tenant_id=tenant_id, rule_id=rule_id))
            session.flush()
            _changed(session, cfg, actor=actor, action=verb, target=base.name, detail="provider rule",
                     tenant_id=tenant_id)
            return base.name
    row = _get(session, rule_id, tenant_id)
    row.active = active
    row.updated_at = utcnow()
    _write(session, row)
    _changed(session, cfg, actor=actor, action=verb, target=row.name, detail="", tenant_id=tenant_id)
    return row.name


def find_rule_id(session: Session, name_or_id: str, tenant_id: int | None) -> int:
    """A rule's id from its id or (case-insensitive) name, among the rules the caller sees."""
    if name_or_id.isdigit():
        return int(name_or_id)
    views = _baseline_rows(session) + (_tenant_rows(session, tenant_id) if tenant_id is not None else [])
    own_first = sorted(views, key=lambda r: r.tenant_id is None)
    for row in own_first:
        if row.name.lower() == name_or_id.strip().lower():
            return row.id
    raise NotFound(f"no rule named {name_or_id!r}")


# --- hit counts -----------------------------------------------------------------------------------------------------

def rule_hits(cfg: Config, tenant_id: int) -> dict[int, int]:
    """How often each rule matched a recipient group of the tenant's mail (empty when Redis is away)."""
    try:
        raw = redis_client(cfg).hgetall(HITS_KEY.format(tenant_id=tenant_id))
    except Exception:
        return {}
    return {int(k): int(v) for k, v in raw.items()}


async def count_hits(redis: Any, hits: dict[int, list[int]]) -> None:
    """Add hits (tenant → matched rule ids) to Redis; best effort (an outage costs counts, never mail)."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for tenant_id, ids in hits.items():
                for rule_id in ids:
                    pipe.hincrby(HITS_KEY.format(tenant_id=tenant_id), str(rule_id), 1)
            await pipe.execute()
    except Exception:
        pass
