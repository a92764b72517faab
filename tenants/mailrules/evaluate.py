"""Which rules match one recipient of one mail, and what they do: pure functions over :class:`MailFacts`.

Rules run in one order across both levels: the MSP's locked baseline rules first (a tenant cannot outrank them),
then the tenant's rules and the MSP's unlocked defaults together, higher priority first (the baseline first on a
tie). Every matching rule's actions are collected until a rule with a final action (accept, block, quarantine):
that one decides the recipient's fate and the rules below it are not looked at. The collected actions then run in
:data:`~tenants.mailrules.schema.ACTION_ORDER`, whatever order the rules listed them in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from tenants.mailrules.schema import ACTION_ORDER, HAS_VALUES, Group, Item, RuleAction, RuleSpec


@dataclass(frozen=True)
class LoadedRule:
    """A rule as evaluation sees it: its row id, whether it is the MSP's, and its parsed definition."""

    id: int
    baseline: bool
    spec: RuleSpec

    @property
    def label(self) -> str:
        return f"{'MSP ' if self.baseline else ''}rule {self.spec.name!r}"


@dataclass(frozen=True)
class TenantRules:
    """What the ingress caches per tenant: its rules in evaluation order, and its own domains."""

    rules: tuple[LoadedRule, ...] = ()
    internal_domains: frozenset[str] = frozenset()

    @property
    def needs_groups(self) -> bool:
        """Whether a rule asks for directory groups (only then are they looked up)."""
        return any(item.kind == "ldap_group" for r in self.rules for g in r.spec.groups.values() for item in g.items)


def ordered(rules: Iterable[LoadedRule]) -> list[LoadedRule]:
    """The evaluation order (see the module's doc); inactive rules are left out."""
    active = [r for r in rules if r.spec.active]
    locked = sorted((r for r in active if r.baseline and r.spec.locked), key=lambda r: (-r.spec.priority, r.id))
    rest = sorted((r for r in active if not (r.baseline and r.spec.locked)),
                  key=lambda r: (-r.spec.priority, not r.baseline, r.id))
    return locked + rest


@dataclass
class MailFacts:
    """What rules look at in one mail (the same for every recipient)."""

    direction: str = "inbound"
    sender: str = ""
    header_from: str = ""
    client_ip: str = ""
    subject: str = ""
    headers: Sequence[tuple[str, str]] = ()
    size: int = 0
    score: float = 0.0
    verdict: str = "deliver"
    virus: str | None = None
    symbols: frozenset[str] = frozenset()
    #: (file name, real type by content, size) of each attachment.
    attachments: Sequence[tuple[str, str, int]] = ()
    #: (name, real type) of each file found inside archives.
    archive_members: Sequence[tuple[str, str]] = ()
    arrived: datetime = field(default_factory=lambda: datetime.now(UTC))
    timezone: str = "UTC"
    #: The tenant's own domains ("internal" senders and recipients).
    internal_domains: frozenset[str] = frozenset()
    #: Directory groups of an address (lower-cased), for the ldap_group condition.
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    queue_id: str = ""


@dataclass
class Outcome:
    """What the rules decided for one recipient."""

    matched: tuple[LoadedRule, ...] = ()
    #: The deciding rule and its final action, or None (the verdict stands).
    final: tuple[LoadedRule, RuleAction] | None = None
    #: The other actions of the matched rules, in the fixed order.
    actions: tuple[tuple[LoadedRule, RuleAction], ...] = ()
    #: File names the matched rules' attachment conditions picked (for ``remove_attachments: matched``).
    matched_files: frozenset[str] = frozenset()

    @property
    def key(self) -> tuple[int, ...]:
        """Recipients with the same key are treated alike."""
        return tuple(r.id for r in self.matched)


def _domain(addr: str) -> str:
    return addr.rpartition("@")[2].lower()


def in_domain(domain: str, parent: str) -> bool:
    return domain == parent or domain.endswith("." + parent)


def _who(item: Item, addr: str, facts: MailFacts, side: str) -> bool:
    addr = addr.lower()
    if item.kind == "address":
        return addr == item.value
    if item.kind == "domain":
        return bool(addr) and in_domain(_domain(addr), item.value)
    if item.kind == "regex":
        return bool(addr) and item.compiled.search(addr) is not None
    if item.kind == "ip":
        if side != "from" or not facts.client_ip:
            return False
        try:
            return ipaddress.ip_address(facts.client_ip) in item.compiled
        except ValueError:
            return False
    if item.kind == "internal":
        inside = bool(addr) and any(in_domain(_domain(addr), d) for d in facts.internal_domains)
        return inside == item.value
    if item.kind == "ldap_group":
        return item.value.lower() in facts.groups.get(addr, frozenset())
    return False


def _in_range(value: float, bounds: Mapping[str, float | None]) -> bool:
    low, high = bounds.get("min"), bounds.get("max")
    return (low is None or value >= low) and (high is None or value <= high)


def _what(item: Item, facts: MailFacts, files: set[str]) -> bool:
    kind = item.kind
    if kind == "score":
        return _in_range(facts.score, item.value)
    if kind == "size":
        return _in_range(facts.size, item.value)
    if kind == "virus":
        return (facts.virus is not None) == item.value
    if kind == "symbol":
        return item.value in facts.symbols
    if kind == "has":
        return any(s in facts.symbols for s in HAS_VALUES[item.value])
    if kind == "header":
        name = item.value["name"].lower()
        return any(n.lower() == name and item.compiled.search(v[:4000]) for n, v in facts.headers)
    if kind in ("filename", "content_type"):
        hits = {name for name, real, _ in facts.attachments
                if item.compiled.search(name if kind == "filename" else real)}
        files.update(hits)
        return bool(hits)
    if kind == "archive_member":
        name_re, type_re = item.compiled.get("name"), item.compiled.get("type")
        return any((name_re is None or name_re.search(name)) and (type_re is None or type_re.search(real))
                   for name, real in facts.archive_members)
    return False


def _when(item: Item, facts: MailFacts) -> bool:
    days, start, end = item.compiled
    local = facts.arrived.astimezone(ZoneInfo(facts.timezone))
    minute, weekday = local.hour * 60 + local.minute, local.weekday()
    if start < end:
        return weekday in days and start <= minute < end
    # The frame runs past midnight: its evening on a listed day, or its morning on the day after one.
    return (weekday in days and minute >= start) or ((weekday - 1) % 7 in days and minute < end)


def _group(group: Group, test: Callable[[Item], bool]) -> bool:
    results = (test(item) for item in group.items)
    hit = any(results) if group.match == "any" else all(results)
    return hit != group.invert


def matches(rule: RuleSpec, facts: MailFacts, rcpt: str, files: set[str] | None = None) -> bool:
    """Whether ``rule`` holds for ``rcpt``; the attachment names its conditions picked are added to ``files``."""
    picked: set[str] = set()
    sender = facts.sender or facts.header_from
    tests: list[bool] = []
    for name, group in rule.groups.items():
        if name == "from":
            tests.append(_group(group, lambda i: _who(i, sender, facts, "from")))
        elif name == "to":
            tests.append(_group(group, lambda i: _who(i, rcpt, facts, "to")))
        elif name == "what":
            tests.append(_group(group, lambda i: _what(i, facts, picked)))
        else:
            tests.append(_group(group, lambda i: _when(i, facts)))
    hit = all(tests) if rule.match == "all" else (any(tests) or not tests)
    if hit and files is not None:
        files.update(picked)
    return hit


def attachment_matcher(rule: LoadedRule, which: str, matched_files: frozenset[str]
                       ) -> Callable[[str, str], bool] | None:
    """Which attachments a rule's ``remove_attachments`` takes, as ``match(file name, content type)``: None for all
    (``which: all``, or a rule without file-name or content-type conditions), else those its own conditions pick."""
    if which == "all":
        return None
    items = [i for g in rule.spec.groups.values() for i in g.items if i.kind in ("filename", "content_type")]
    if not items:
        return None

    def match(filename: str, content_type: str) -> bool:
        if filename and filename in matched_files:
            return True
        for item in items:
            text = filename if item.kind == "filename" else content_type
            if text and item.compiled.search(text):
                return True
        return False

    return match


def evaluate(rules: Sequence[LoadedRule], facts: MailFacts, rcpt: str) -> Outcome:
    """The rules' outcome for one recipient; ``rules`` in :func:`ordered` order."""
    matched: list[LoadedRule] = []
    actions: list[tuple[LoadedRule, RuleAction]] = []
    files: set[str] = set()
    final = None
    for rule in rules:
        if rule.spec.direction not in (facts.direction, "both"):
            continue
        if not matches(rule.spec, facts, rcpt, files):
            continue
        matched.append(rule)
        for action in rule.spec.actions:
            if action.final:
                final = (rule, action)
            else:
                actions.append((rule, action))
        if final is not None:
            break
    actions.sort(key=lambda ra: ACTION_ORDER.index(ra[1].kind))
    return Outcome(tuple(matched), final, tuple(actions), frozenset(files))
