"""The mail rules' non-final actions, applied when a recipient group's mail is stored (:mod:`smtp.commit`).

In this order, whatever order the rules listed them in: header edits (remove, set, add), subject tag, attachment
removal (the original kept in the attachment quarantine unless the rule says not to), disclaimer, reroute (the
group's rows go to the rule's transport), BCC (of the original or the processed mail; never of a virus), notify
(a new mail from the postmaster, with the null sender). Edits change only what is stored for this group; a
signed mail is left intact by a disclaimer that says ``signed: skip`` and wrapped by one that says ``wrap``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from smtp import rewrite
from smtp.mailstore import NewMessage
from smtp.verdict import Action, Verdict
from tenants.ids import new_id
from tenants.mailrules.evaluate import LoadedRule, attachment_matcher, in_domain
from tenants.mailrules.schema import expand
from tenants.models import utcnow
from tenants.platform.config import Config

#: A notification's body is cut to this many characters after its macros are expanded.
MAX_NOTICE = 20_000


@dataclass
class Applied:
    """What the rules made of one group's stored mail."""

    data: bytes
    #: Other mails the rules store with it: BCC copies, notifications, originals kept in the quarantine.
    extra: list[NewMessage] = field(default_factory=list)
    #: (kind, detail) events for the message's timeline.
    events: list[tuple[str, str]] = field(default_factory=list)
    #: ``host|port|tls`` of a reroute, or None.
    next_hop: str | None = None


def next_hop_of(params: dict[str, Any]) -> str:
    return f"{params['host']}|{params['port']}|{params['tls']}"


def parse_next_hop(value: str) -> tuple[str, int, str]:
    host, port, tls = value.split("|")
    return host, int(port), tls


def _route_for(address: str, internal: frozenset[str]) -> str:
    domain = address.rpartition("@")[2].lower()
    return "transport" if any(in_domain(domain, d) for d in internal) else "mx"


def _notice(cfg: Config, to: str, subject: str, body: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Mail gateway <{cfg.bounce_sender}>"
    msg["To"] = to
    msg["Subject"] = re.sub(r"[\r\n]+", " ", subject)[:200]
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = make_msgid(domain=cfg.hostname)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(body[:MAX_NOTICE])
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# Complexity (C901) by design: one branch per action kind.
def apply_actions(cfg: Config, verdict: Verdict, data: bytes, original: bytes, *, tenant_id: int,  # noqa: C901
                  rcpts: Sequence[str], admins: Callable[[], list[str]], retention_days: int | None) -> Applied:
    """Apply the group's non-final rule actions to ``data`` (what would be stored without rules); ``original`` is
    the mail as received with our trace header (for BCC of the original and the kept attachments)."""
    effects = verdict.rules
    out = Applied(data)
    if effects is None:
        return out
    for rule in effects.outcome.matched:
        final = effects.outcome.final
        what = f": {final[1].kind}" if final is not None and final[0] is rule else ""
        out.events.append(("rule", f"{rule.label} (priority {rule.spec.priority}) matched{what}"))
    facts = effects.facts
    delivers = verdict.action in (Action.DELIVER, Action.TAG)
    for rule, action in effects.outcome.actions:
        macros = effects.macros(verdict, rule=rule.spec.name)
        p = action.params
        label = rule.label
        if action.kind in ("remove_header", "set_header", "add_header", "tag_subject", "disclaimer",
                           "remove_attachments") and verdict.action == Action.REJECT:
            continue  # nothing is stored to deliver: edits would change nothing anyone receives
        if action.kind == "remove_header":
            out.data = _edit(out, rewrite.remove_header(out.data, p["name"]), label)
        elif action.kind == "set_header":
            out.data = _edit(out, rewrite.set_header(out.data, p["name"], expand(p["value"], macros)), label)
        elif action.kind == "add_header":
            out.data = _edit(out, rewrite.add_header(out.data, p["name"], expand(p["value"], macros)), label)
        elif action.kind == "tag_subject":
            out.data = _edit(out, rewrite.tag_subject(out.data, expand(p["tag"], macros)), label)
        elif action.kind == "remove_attachments":
            _remove(cfg, out, effects, verdict, rule, p, original, tenant_id, rcpts, retention_days)
        elif action.kind == "disclaimer":
            html = expand(p["html"], macros) if p.get("html") else None
            out.data = _edit(out, rewrite.add_disclaimer(out.data, text=expand(p["text"], macros), html=html,
                                                         position=p["position"], skip_signed=p["signed"] == "skip"),
                             label)
        elif action.kind == "reroute":
            out.next_hop = next_hop_of(dict(p))
            out.events.append(("rule", f"{label}: rerouted to {p['host']}:{p['port']}"))
        elif action.kind == "bcc":
            if verdict.kind == "virus":
                out.events.append(("rule", f"{label}: no BCC of a mail with a virus"))
                continue
            copy = original if p["copy"] == "original" else out.data
            out.extra.append(NewMessage(
                tenant_id=tenant_id, queue_id=new_id(), mail_from="", rcpts=[p["to"]], data=copy,
                route=_route_for(p["to"], facts.internal_domains), direction="copy",
                header_from=facts.header_from, subject=facts.subject,
                explanation=f"BCC of {facts.queue_id} ({p['copy']}) by {label}"))
            out.events.append(("rule", f"{label}: BCC ({p['copy']}) to {p['to']}"))
        elif action.kind == "notify":
            targets = _targets(p["to"], facts.sender, rcpts, admins)
            subject, body = expand(p["subject"], macros), expand(p["body"], macros)
            for to in targets:
                out.extra.append(NewMessage(
                    tenant_id=tenant_id, queue_id=new_id(), mail_from="", rcpts=[to],
                    data=_notice(cfg, to, subject, body), route=_route_for(to, facts.internal_domains),
                    direction="notice", header_from=cfg.bounce_sender, subject=subject[:200],
                    explanation=f"notification by {label} about {facts.queue_id}"))
            out.events.append(("rule", f"{label}: notified {', '.join(targets) or 'nobody (no address)'}"))
    if not delivers and out.next_hop:
        out.events.append(("rule", "the reroute applies when the mail is released"))
    return out


def _edit(out: Applied, result: rewrite.EditResult, label: str) -> bytes:
    for note in result.notes:
        out.events.append(("rule", f"{label}: {note}"))
    return result.data


def _remove(cfg: Config, out: Applied, effects: Any, verdict: Verdict, rule: LoadedRule, p: Mapping[str, Any],
            original: bytes, tenant_id: int, rcpts: Sequence[str], retention_days: int | None) -> None:
    matcher = attachment_matcher(rule, p["which"], effects.outcome.matched_files)
    replacement = expand(p["replacement"], effects.macros(verdict, rule=rule.spec.name) | {"filename": "{filename}"})
    result = rewrite.remove_attachments(out.data, matcher, replacement)
    out.data = _edit(out, result, rule.label)
    if not result.removed:
        return
    names = ", ".join(name or "(unnamed)" for name, _, _ in result.removed)
    out.events.append(("rule", f"{rule.label}: removed {names}"))
    if p["keep"]:
        facts = effects.facts
        out.extra.append(NewMessage(
            tenant_id=tenant_id, queue_id=new_id(), mail_from=facts.sender, rcpts=list(rcpts), data=original,
            header_from=facts.header_from, subject=facts.subject, verdict=Action.QUARANTINE.value,
            score=verdict.score, quarantine_kind="attachment", deliver=False, retention_days=retention_days or 30,
            explanation=f"quarantine (attachment): the original of {facts.queue_id}, whose attachments {names} "
                        f"{rule.label} removed"))


def _targets(to: str, sender: str, rcpts: Sequence[str], admins: Callable[[], list[str]]) -> list[str]:
    if to == "admin":
        return admins()
    if to == "sender":
        return [sender] if sender else []
    if to == "recipient":
        return list(rcpts)
    return [to]

