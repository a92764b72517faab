"""From findings to a verdict, per tenant: scores under the tenant's policy, effects first, then thresholds.

A mail to two tenants is judged under each tenant's policy. Findings with an ``effect`` act whatever the score:
``virus`` quarantines or rejects (never delivers), ``attachment`` follows ``attachment_action``, ``tempfail`` (a
required check could not run) answers 451 unless the policy says to accept. Then the score sum meets the thresholds.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from smtp.checks.base import Finding
from tenants.policy import Policy
from tenants.policyedit import MAX_SUBJECT_PREFIX
from tenants.symbols import lookup


class Action(enum.StrEnum):
    DELIVER = "deliver"
    TAG = "tag"
    QUARANTINE = "quarantine"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True)
class Scored:
    symbol: str
    score: float
    reason: str


@dataclass
class Verdict:
    action: Action
    score: float
    findings: list[Scored] = field(default_factory=list)
    #: spam, virus or attachment, when the action is quarantine (or reject).
    kind: str | None = None
    explanation: str = ""
    #: What the tenant's mail rules matched and do to this recipient group (:class:`smtp.mailrules.RuleEffects`).
    rules: Any = None
    #: A rule blocked the mail by discarding it: recorded as rejected, but the client is told 250.
    discard: bool = False
    #: A rule's own words for the 554 (block with a message).
    reply: str | None = None

    @property
    def delivers(self) -> bool:
        return self.action in (Action.DELIVER, Action.TAG)

    @property
    def status(self) -> str:
        """The X-Mailward-Status value of delivered (or later released) mail."""
        if self.action == Action.QUARANTINE:
            return self.kind or "spam"
        return "spam" if self.action == Action.TAG else "clean"


#: How many of the largest scores the one-line explanation names.
EXPLAIN_TOP = 4


def score_findings(findings: Iterable[Finding], tenant_id: int, policy: Policy) -> list[Scored]:
    """The findings that apply to this tenant, scored under its policy (the first of a repeated symbol counts)."""
    out: list[Scored] = []
    seen: set[str] = set()
    for f in findings:
        if f.tenant_id is not None and f.tenant_id != tenant_id:
            continue
        if f.symbol in seen:
            continue
        seen.add(f.symbol)
        out.append(Scored(f.symbol, round(policy.score_of(f.symbol, lookup(f.symbol).score), 3), f.reason))
    return out


def decide(findings: Iterable[Finding], tenant_id: int, policy: Policy, *, outbound: bool = False) -> Verdict:
    """The verdict under ``policy``. ``outbound``: mail a tenant sends — a virus is always rejected, a score at or
    above the outbound threshold is held (quarantined), nothing is tagged or rejected for its score alone (the sender
    may be a compromised account, and a held mail shows the tenant admin what it tried to send)."""
    scored = score_findings(findings, tenant_id, policy)
    total = round(sum(s.score for s in scored), 2)
    effects = {lookup(s.symbol).effect: s for s in scored if lookup(s.symbol).effect}
    top = ", ".join(f"{s.symbol} {s.score:+g}" for s in sorted(scored, key=lambda s: -abs(s.score))[:EXPLAIN_TOP]
                    if s.score)

    def verdict(action: Action, kind: str | None, why: str) -> Verdict:
        detail = f"; {top}" if top else ""
        label = f"{'outbound ' if outbound else ''}{action.value}{f' ({kind})' if kind else ''}"
        return Verdict(action, total, scored, kind, f"{label}: {why}{detail}")

    if "virus" in effects:
        v = effects["virus"]
        action = Action.REJECT if outbound or policy.virus_action == "reject" else Action.QUARANTINE
        return verdict(action, "virus", f"virus {v.reason or v.symbol}")
    if "tempfail" in effects and policy.scanner_unavailable == "tempfail":
        t = effects["tempfail"]
        return verdict(Action.TEMPFAIL, None, f"{t.symbol}: {t.reason or 'a required check could not run'}")
    if "attachment" in effects and policy.attachment_action != "tag":
        a = effects["attachment"]
        action = Action.REJECT if policy.attachment_action == "reject" else Action.QUARANTINE
        return verdict(action, "attachment", f"{a.symbol}: {a.reason}")
    if outbound:
        threshold = policy.outbound_quarantine_threshold
        if total >= threshold:
            return verdict(Action.QUARANTINE, "spam", f"held: score {total:g} >= outbound quarantine {threshold:g}")
        return verdict(Action.DELIVER, None, f"score {total:g} below outbound quarantine {threshold:g}")
    if total >= policy.reject_threshold:
        return verdict(Action.REJECT, "spam", f"score {total:g} >= reject {policy.reject_threshold:g}")
    if total >= policy.quarantine_threshold:
        return verdict(Action.QUARANTINE, "spam", f"score {total:g} >= quarantine {policy.quarantine_threshold:g}")
    if total >= policy.tag_threshold:
        return verdict(Action.TAG, None, f"score {total:g} >= tag {policy.tag_threshold:g}")
    if "attachment" in effects:
        return verdict(Action.TAG, None, f"{effects['attachment'].symbol} (policy: tag)")
    return verdict(Action.DELIVER, None, f"score {total:g} below tag {policy.tag_threshold:g}")


def header_block(verdict: Verdict, hostname: str, extra: Iterable[str] = ()) -> bytes:
    """Header lines to put on top of a delivered mail: our results (Authentication-Results and the like) and score."""
    lines = list(extra)
    symbols = ", ".join(f"{s.symbol}={s.score:g}" for s in verdict.findings if s.score)
    lines.append(f"X-Mailward-Status: {verdict.status}, score={verdict.score:g}")
    lines.append(f"X-Mailward-Score: {verdict.score:g}" + (f" ({symbols})" if symbols else ""))
    return "".join(_fold(line) + "\r\n" for line in lines).encode("utf-8", "replace")


#: Longest RFC 2047 encoded word (section 2: 75 characters, the charset and encoding markers included).
MAX_ENCODED_WORD = 75


def subject_tag(prefix: str) -> str:
    """The policy's subject prefix as it may go into the Subject: one line, whatever was stored (a line break or other
    control character saved before they were refused becomes a space, so it cannot start a header field), at most
    ``MAX_SUBJECT_PREFIX`` characters, and non-ASCII text as RFC 2047 encoded words (UTF-8, base64)."""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in prefix).split())[:MAX_SUBJECT_PREFIX]
    if text.isascii():
        return text
    words: list[str] = []
    chunk = ""
    for ch in text:  # whole characters per word: a word never splits a character's UTF-8 bytes (RFC 2047 5)
        if chunk and len(_encoded_word(chunk + ch)) > MAX_ENCODED_WORD:
            words.append(_encoded_word(chunk))
            chunk = ""
        chunk += ch
    words.append(_encoded_word(chunk))
    return " ".join(words)  # the space between two encoded words is not part of the text (RFC 2047 6.2)


def _encoded_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="


def _fold(line: str, width: int = 78) -> str:
    """Fold a header line at spaces so no line exceeds ``width`` where it can be helped (RFC 5322 2.2.3)."""
    line = line.replace("\r", " ").replace("\n", " ")
    if len(line) <= width:
        return line
    out, current = [], ""
    for word in line.split(" "):
        if current and len(current) + 1 + len(word) > width:
            out.append(current)
            current = "\t" + word
        else:
            current = f"{current} {word}" if current else word
    out.append(current)
    return "\r\n".join(out)


def strip_header_block(data: bytes, hostname: str) -> bytes:
    """A stored mail as its sender sent it: without our Received line, our Authentication-Results and the
    X-Mailward-* fields that the ingress put on top (what Bayes training must see, as classification did)."""
    pos = 0
    received_seen = False
    ours_ar = b"authentication-results: " + hostname.lower().encode("ascii", "replace")
    while pos < len(data):
        end = pos
        while True:  # one header field: its line and the continuation lines after it
            nl = data.find(b"\n", end)
            if nl < 0:
                return data[pos:]
            end = nl + 1
            if data[end:end + 1] not in (b" ", b"\t"):
                break
        field = data[pos:end].lower()
        if field.startswith(b"received:") and not received_seen and b"(mailward)" in field:
            received_seen = True
        elif not field.startswith(b"x-mailward-") and not field.startswith(ours_ar):
            break
        pos = end
    return data[pos:]
