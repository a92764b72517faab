"""The dry-run replay: what a draft of a tenant's mail rules would have done to its stored mail of the last days.

Each stored inbound and outbound mail (newest first, at most :data:`MAX_MAILS`, at most :data:`MAX_DAYS` back) is
evaluated for each of its recipients twice: under the tenant's rules as they are (:func:`service.load_rules`) and
under the draft (the draft's rules in place of the tenant's own; the provider's baseline rules and the tenant's
opt-outs stay). The facts are the stored ones (findings, score, verdict, envelope, arrival in the tenant's time
zone); the raw mail is read only when a rule looks at content (headers, attachment names and types, archive
members) or removes attachments (:mod:`tenants.mailrules.replaycontent`). Final actions map as the ingress maps them
(``smtp.mailrules.apply_final``): accept delivers unless the mail has a virus, block blocks, quarantine holds, no
final action leaves the verdict the checks gave. The stored verdict already carries the rules that ran when the mail
arrived; where a final action changed it, ``message.verdict_before_rules`` keeps the checks' verdict.

The report counts recipients (a mail to three recipients counts three times): per rule the hits now and with the
draft, and the recipients that would move deliver → quarantine, quarantine → deliver, deliver → block, gain a banner
(subject tag or disclaimer), lose an attachment, get a BCC or be rerouted, with up to :data:`MAX_SAMPLES` samples
each. Reads only the tenant's mail (the caller's tenant scope; every query names the tenant too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants.blobs import blob_store
from tenants.exceptions import NotFound, ValidationError
from tenants.mailrules.evaluate import LoadedRule, MailFacts, Outcome, attachment_matcher, evaluate, ordered
from tenants.mailrules.replaycontent import Content, read_content
from tenants.mailrules.schema import RuleAction, parse_rule
from tenants.mailrules.service import directory_groups, internal_domains, load_rules, parse_rule_list
from tenants.models import Delivery, Finding, Message
from tenants.platform.config import Config
from tenants.policy import load_policy
from tenants.symbols import lookup

#: Most mails replayed (the newest ones of the window).
MAX_MAILS = 20_000
#: Longest window, in days.
MAX_DAYS = 30
#: Samples kept per kind of change.
MAX_SAMPLES = 10
#: Draft rules get ids from ``1 - DRAFT_IDS`` up (below zero, in the draft's order).
DRAFT_IDS = 1_000_000
#: Mails loaded (with their findings and recipients) per query round.
BATCH = 500
#: The kinds of change the report counts, with their headings.
CHANGES = {
    "deliver_to_quarantine": "Delivered now, quarantined with the draft",
    "quarantine_to_deliver": "Quarantined now, delivered with the draft",
    "deliver_to_block": "Delivered now, blocked with the draft",
    "gain_banner": "Would gain a banner (subject tag or disclaimer)",
    "lose_attachment": "Would lose an attachment",
    "gain_bcc": "Would get a BCC",
    "reroute": "Would be rerouted",
}
#: Conditions that need the raw mail.
CONTENT_KINDS = ("header", "content_type", "filename", "archive_member")
#: Directions of the mail that rules judged (not BCC copies, notices or bounces).
DIRECTIONS = ("inbound", "outbound")

Progress = Callable[[int, int], None]


@dataclass
class Sample:
    message_id: str
    subject: str
    sender: str
    recipient: str
    change: str


@dataclass
class Change:
    count: int = 0
    samples: list[Sample] = field(default_factory=list)

    def add(self, sample: Sample) -> None:
        self.count += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(sample)


@dataclass
class RuleHits:
    """One rule's hits now and with the draft (None: the rule is not in that set)."""

    name: str
    provider: bool
    now: int | None
    draft: int | None


@dataclass
class ReplayReport:
    tenant_id: int
    since_days: float
    draft: bool
    mails: int = 0
    recipients: int = 0
    #: More mails were in the window than :data:`MAX_MAILS`: the oldest were left out.
    truncated: bool = False
    content_read: int = 0
    #: Mails whose content a rule needed but which had none stored or readable (their content conditions fail).
    content_missing: int = 0
    rules: list[RuleHits] = field(default_factory=list)
    changes: dict[str, Change] = field(default_factory=lambda: {k: Change() for k in CHANGES})
    #: Every change of fate, "deliver → quarantine" and the like, with its count.
    moves: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplayReport:
        out = cls(**{k: v for k, v in data.items() if k not in ("rules", "changes")})
        out.rules = [RuleHits(**r) for r in data.get("rules", [])]
        out.changes = {k: Change(c["count"], [Sample(**s) for s in c["samples"]])
                       for k, c in data.get("changes", {}).items()}
        return out

    def text(self) -> str:
        """The report as the command line prints it."""
        lines = [f"Replayed {self.mails} mail(s) to {self.recipients} recipient(s) of the last {self.since_days:g} "
                 f"day(s) under the current rules and {'the draft' if self.draft else 'the current rules again'}"
                 + (f" (only the newest {MAX_MAILS})" if self.truncated else "") + "."]
        if self.content_missing:
            lines.append(f"{self.content_missing} mail(s) had no readable content for content conditions.")
        lines += ["", "Rule hits (recipients): now -> with the draft"]
        for r in self.rules:
            now = "-" if r.now is None else str(r.now)
            draft = "-" if r.draft is None else str(r.draft)
            lines.append(f"  {now:>6} -> {draft:<6} {'[provider] ' if r.provider else ''}{r.name}")
        lines.append("")
        for key, heading in CHANGES.items():
            change = self.changes[key]
            lines.append(f"{heading}: {change.count}")
            for s in change.samples:
                lines.append(f"  {s.message_id}  {s.sender or '<>'} -> {s.recipient}  {s.subject!r}: {s.change}")
        if self.moves:
            lines += ["", "All changes of fate: " + ", ".join(f"{k} {v}" for k, v in sorted(self.moves.items()))]
        return "\n".join(lines) + "\n"


def parse_draft(draft: Sequence[Any]) -> list[LoadedRule]:
    """The draft's rules (a tenant's level), checked; their ids are below zero (never a stored rule's) and rise in the
    draft's order, which breaks ties of priority as the row ids of stored rules do."""
    specs = parse_rule_list(draft, parse_rule, kind="a draft", entry="draft entry", where="draft")
    return [LoadedRule(n - DRAFT_IDS, False, spec) for n, spec in enumerate(specs, start=1)]


def _needs(rules: Sequence[LoadedRule]) -> tuple[bool, bool]:
    """Whether the rules need the raw mail, and directory groups."""
    content = groups = False
    for rule in rules:
        for group in rule.spec.groups.values():
            for item in group.items:
                content = content or item.kind in CONTENT_KINDS
                groups = groups or item.kind == "ldap_group"
        content = content or any(a.kind == "remove_attachments" for a in rule.spec.actions)
    return content, groups


def bucket(verdict: str) -> str:
    """deliver, quarantine or block, from a stored verdict."""
    return {"deliver": "deliver", "tag": "deliver", "quarantine": "quarantine"}.get(verdict, "block")


def base_verdict(verdict: str, before_rules: str | None) -> str:
    """The verdict the checks gave, before the rules that ran when the mail arrived."""
    return before_rules or verdict


def fate(base: str, virus: bool, final: tuple[LoadedRule, RuleAction] | None) -> str:
    """What happens to a recipient (deliver, quarantine, block): ``smtp.mailrules.apply_final`` on verdict strings."""
    if final is None:
        return bucket(base)
    kind = final[1].kind
    if kind == "accept":
        return bucket(base) if virus else "deliver"
    return "block" if kind == "block" else "quarantine"


def _removes(outcome: Outcome, facts: MailFacts) -> list[str]:
    """Attachments the outcome's ``remove_attachments`` actions take (as :mod:`smtp.ruleactions` picks them)."""
    taken: list[str] = []
    for rule, action in outcome.actions:
        if action.kind != "remove_attachments":
            continue
        match = attachment_matcher(rule, action.params["which"], outcome.matched_files)
        taken += [name or real for name, real, _ in facts.attachments if match is None or match(name, real)]
    return taken


@dataclass(frozen=True)
class _Effect:
    fate: str
    banner: bool
    removed: tuple[str, ...]
    bcc: frozenset[str]
    reroute: str | None
    decided_by: str


def _effect(outcome: Outcome, facts: MailFacts, base: str) -> _Effect:
    virus = facts.virus is not None
    end = fate(base, virus, outcome.final)
    kinds = {a.kind for _, a in outcome.actions}
    stored = end != "block"  # a blocked mail is not stored: edits change nothing anyone receives
    reroute = next((f"{a.params['host']}:{a.params['port']}" for _, a in outcome.actions if a.kind == "reroute"),
                   None)
    return _Effect(
        fate=end, banner=stored and bool(kinds & {"tag_subject", "disclaimer"}),
        removed=tuple(_removes(outcome, facts)) if stored else (),
        bcc=frozenset() if virus else frozenset(a.params["to"] for _, a in outcome.actions if a.kind == "bcc"),
        reroute=reroute if stored else None,
        decided_by=outcome.final[0].spec.name if outcome.final is not None else "")


def _compare(report: ReplayReport, now: _Effect, draft: _Effect, base: Sample) -> None:
    def sample(change: str) -> Sample:
        return replace(base, change=change)

    if now.fate != draft.fate:
        move = f"{now.fate} → {draft.fate}"
        report.moves[move] = report.moves.get(move, 0) + 1
        key = f"{now.fate}_to_{draft.fate}"
        if key in report.changes:
            why = f" by rule {draft.decided_by!r}" if draft.decided_by else " (no rule decides)"
            report.changes[key].add(sample(move + why))
    if draft.banner and not now.banner:
        report.changes["gain_banner"].add(sample("gains a banner"))
    lost = [n for n in draft.removed if n not in now.removed]
    if lost:
        report.changes["lose_attachment"].add(sample("loses " + ", ".join(sorted(set(lost)))))
    gained = draft.bcc - now.bcc
    if gained:
        report.changes["gain_bcc"].add(sample("BCC to " + ", ".join(sorted(gained))))
    if draft.reroute is not None and draft.reroute != now.reroute:
        report.changes["reroute"].add(sample(f"rerouted to {draft.reroute}"))


def _window(since: timedelta) -> timedelta:
    if since <= timedelta(0):
        raise ValidationError("the replay window must be positive (e.g. 7d)")
    if since > timedelta(days=MAX_DAYS):
        raise ValidationError(f"the replay window is at most {MAX_DAYS} days")
    return since


def replay(session: Session, cfg: Config, tenant_id: int, since: timedelta, draft: list[dict[str, Any]] | None,
           progress: Progress | None = None) -> ReplayReport:
    """Replay the tenant's stored mail of the last ``since`` under its rules and under ``draft`` (None: the current
    rules again); ``progress(done, total)`` is called as mails are done. The caller sets the tenant's scope."""
    since = _window(since)
    current = load_rules(session, tenant_id)
    if draft is None:
        proposed = current
    else:
        proposed = ordered([r for r in current if r.baseline] + parse_draft(draft))
    report = ReplayReport(tenant_id, round(since.total_seconds() / 86400, 3), draft is not None)
    needs_content, needs_groups = _needs(current + proposed)
    timezone = load_policy(session, tenant_id).timezone
    internal = internal_domains(session, tenant_id)
    cutoff = datetime.now(UTC) - since
    ids = list(session.scalars(
        select(Message.id).where(Message.tenant_id == tenant_id, Message.received_at >= cutoff,
                                 Message.direction.in_(DIRECTIONS))
        .order_by(Message.received_at.desc(), Message.id.desc()).limit(MAX_MAILS + 1)))
    report.truncated = len(ids) > MAX_MAILS
    ids = ids[:MAX_MAILS]
    hits_now: dict[int, int] = {}
    hits_draft: dict[int, int] = {}
    for start in range(0, len(ids), BATCH):
        chunk = ids[start:start + BATCH]
        place = {mid: n for n, mid in enumerate(chunk)}
        messages = sorted(session.scalars(select(Message).where(Message.tenant_id == tenant_id,
                                                                Message.id.in_(chunk))), key=lambda m: place[m.id])
        findings: dict[str, list[str]] = {}
        for mid, symbol in session.execute(select(Finding.message_id, Finding.symbol).where(
                Finding.tenant_id == tenant_id, Finding.message_id.in_(chunk)).order_by(Finding.id)):
            findings.setdefault(mid, []).append(symbol)
        rcpts: dict[str, list[str]] = {}
        for mid, rcpt in session.execute(select(Delivery.message_id, Delivery.rcpt).where(
                Delivery.tenant_id == tenant_id, Delivery.message_id.in_(chunk)).order_by(Delivery.id)):
            if rcpt not in rcpts.setdefault(mid, []):
                rcpts[mid].append(rcpt)
        groups = directory_groups(session, tenant_id, sorted({r for rs in rcpts.values() for r in rs})) \
            if needs_groups else {}
        for msg in messages:
            if msg.verdict == "reject" and not msg.size:
                continue  # refused at RCPT: the rules never saw it
            targets = rcpts.get(msg.id, [])
            if not targets:
                continue
            symbols = findings.get(msg.id, [])
            content = _content(session, cfg, msg, report) if needs_content else Content()
            facts = MailFacts(
                direction=msg.direction, sender=msg.mail_from or "",
                header_from=parseaddr(msg.header_from or "")[1].lower(),
                client_ip=msg.client_ip or "", subject=msg.subject or "", headers=content.headers, size=msg.size,
                score=msg.score, verdict=base_verdict(msg.verdict, msg.verdict_before_rules),
                virus=next((s for s in symbols if lookup(s).effect == "virus"), None), symbols=frozenset(symbols),
                attachments=content.attachments, archive_members=content.archive_members,
                arrived=_aware(msg.received_at), timezone=timezone, internal_domains=internal, groups=groups,
                queue_id=msg.queue_id)
            report.mails += 1
            for rcpt in targets:
                report.recipients += 1
                now, then = evaluate(current, facts, rcpt), evaluate(proposed, facts, rcpt)
                for rule in now.matched:
                    hits_now[rule.id] = hits_now.get(rule.id, 0) + 1
                for rule in then.matched:
                    hits_draft[rule.id] = hits_draft.get(rule.id, 0) + 1
                _compare(report, _effect(now, facts, facts.verdict), _effect(then, facts, facts.verdict),
                         Sample(msg.id, msg.subject or "", msg.mail_from or "", rcpt, ""))
        session.expunge_all()  # a long window must not keep every mail it read in memory
        if progress is not None:
            progress(min(start + BATCH, len(ids)), len(ids))
    report.rules = _hit_table(current, proposed, hits_now, hits_draft)
    return report


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _content(session: Session, cfg: Config, msg: Message, report: ReplayReport) -> Content:
    try:
        raw = blob_store.get(session, msg.id)
    except NotFound:
        report.content_missing += 1
        return Content(problem="no content stored")
    content = read_content(raw, cfg.hostname)
    if content.problem is not None and not content.headers:
        report.content_missing += 1
    else:
        report.content_read += 1
    return content


def _hit_table(current: Sequence[LoadedRule], proposed: Sequence[LoadedRule], now: dict[int, int],
               draft: dict[int, int]) -> list[RuleHits]:
    """One row per rule in either set (the provider's by id, the tenant's by name), in the draft's order first."""
    rows: dict[tuple[bool, Any], RuleHits] = {}

    def key(rule: LoadedRule) -> tuple[bool, Any]:
        return (True, rule.id) if rule.baseline else (False, rule.spec.name.lower())

    for rule in proposed:
        rows[key(rule)] = RuleHits(rule.spec.name, rule.baseline, None, draft.get(rule.id, 0))
    for rule in current:
        row = rows.setdefault(key(rule), RuleHits(rule.spec.name, rule.baseline, None, None))
        row.now = now.get(rule.id, 0)
    return list(rows.values())
