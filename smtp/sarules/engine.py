"""SpamAssassin's rules, compiled once and evaluated natively on each mail: header, body, rawbody, uri, full,
mimeheader, eval and meta rules, with SpamAssassin's scores (one score set) and descriptions.

:class:`Engine` is built from a parsed :class:`~tenants.sarules.parser.RuleSet` once per process (and again when
the rule files change); :meth:`Engine.check` then reads one :class:`~smtp.sarules.message.SaMessage`. What could not
be loaded, and why, is in :attr:`Engine.report`.

As in SpamAssassin, a rule whose score is 0 does not run (a ``__`` sub-rule scores 1 internally unless set to 0),
a meta rule reads the hit counts of the rules it names (0 for one that did not run or was skipped), and a rule
named by ``replace_rules`` has its ``<TAG>`` s expanded first.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtp.sarules.evals import EVALS, SKIPPED_BY_DESIGN, EvalEnv
from smtp.sarules.matcher import Entry, PatternSet
from smtp.sarules.message import SaMessage
from smtp.sarules.meta import MetaError, MetaRule, compile_meta, compile_metas
from smtp.sarules.perlre import Untranslatable, compile_perl, split_regex
from smtp.sarules.replace import replace_tags
from smtp.sarules.report import LoadReport
from tenants.sarules import SCORE_SET
from tenants.sarules.parser import RuleDef, RuleSet

log = logging.getLogger(__name__)

#: Matches counted at most for a ``tflags multiple`` rule without ``maxhits``.
DEFAULT_MAX_HITS = 1000
#: Header modifiers the engine reads (``From:addr``); a rule with another is skipped.
HEADER_MODIFIERS = frozenset({"raw", "addr", "name", "first", "last", "host", "domain"})
#: Rule kinds searched in one multi-pattern pass over one text each.
TEXT_KINDS = ("body", "rawbody", "full", "uri")
#: A body, rawbody or full rule whose regex takes longer than this (seconds of CPU) on :data:`PROBE` is skipped:
#: Python's ``re`` lacks Perl's optimiser, and a few of SpamAssassin's patterns (the FILL_THIS_FORM family, long
#: fuzzy-word alternations) cost tens of milliseconds per mail in it, more than all other rules together.
SLOW_RULE_SECONDS = 0.002
#: Header rules searching the same header from which they get one prefilter pass (Hyperscan) instead of one regex
#: each: the Subject, the relays pseudo-header and ALL are each searched by dozens of rules.
HEADER_SET_MIN = 8
#: Timings of a rule on :data:`PROBE` taken at most before it is found too slow (the fastest counts).
PROBE_TRIES = 3
#: A rule with no prefilter at all (no relaxed pattern Hyperscan takes, no guard literal) runs on every mail; one
#: whose pattern is longer than this (the replace-tag expansions of the fuzzy-word rules: 3 to 12 KB) costs about a
#: millisecond per mail each in Python's ``re``, so it is skipped (and listed) rather than let run.
MAX_UNFILTERED_PATTERN = 1500
#: About 10 KB of ordinary mail text with the usual form words, links and numbers: what a rule is timed on at load.
PROBE = (b"Dear customer, thank you for your order of 12 items at $45.00 each. Your account number is 123456. "
         b"Please reply with your full name, address, phone number and country so we can ship it. "
         b"Visit http://www.example.com/offer?id=42 or write to sales@example.com for details.\n"
         b"The meeting is on Monday at 10:30; bring the report and the figures from last year.\n") * 25


@dataclass(frozen=True)
class Hit:
    """A rule that hit: its name, SpamAssassin score (in the engine's score set), description and hit count."""

    name: str
    score: float
    description: str
    count: int = 1


@dataclass
class _HeaderRule:
    name: str
    spec: str
    pattern: re.Pattern[bytes] | None
    negate: bool
    exists: bool
    if_unset: bytes | None


@dataclass
class _HeaderGroup:
    """The header rules reading one header (``spec``), and what they need per mail."""

    spec: str
    rules: list[_HeaderRule]
    #: The rules that hit when the header is absent (a negated rule, one with ``if-unset``): the same on every mail.
    absent: tuple[str, ...]
    #: One prefilter pass for the rules' regexes, when enough rules search this header.
    patterns: PatternSet | None


@dataclass
class _EvalRule:
    name: str
    fn: Callable[..., Any]
    args: tuple[str, ...]


@dataclass
class _Compiled:
    headers: list[_HeaderRule] = field(default_factory=list)
    mimeheaders: list[_HeaderRule] = field(default_factory=list)
    texts: dict[str, list[Entry]] = field(default_factory=dict)
    nosubject: list[Entry] = field(default_factory=list)
    evals: list[_EvalRule] = field(default_factory=list)
    metas: list[MetaRule] = field(default_factory=list)


def _internal_score(rs: RuleSet, name: str, score_set: int) -> float:
    """The score SpamAssassin decides whether a rule runs by: a ``__`` rule without one scores 1."""
    if name.startswith("__") and name not in rs.scores:
        return 1.0
    return rs.score(name, score_set)


def _probe_seconds(pattern: re.Pattern[bytes]) -> float:
    """CPU seconds ``pattern`` takes on :data:`PROBE`: this thread's only (the process clock would count whatever
    other threads do meanwhile), and the least of :data:`PROBE_TRIES` runs when over :data:`SLOW_RULE_SECONDS`, so a
    busy machine does not make the set of rules that run change from one process to the next."""
    best = math.inf
    for _ in range(PROBE_TRIES):
        started = time.thread_time()
        pattern.search(PROBE)
        best = min(best, time.thread_time() - started)
        if best <= SLOW_RULE_SECONDS:
            break
    return best


def _max_hits(flags: frozenset[str]) -> int:
    if "multiple" not in flags:
        return 1
    for flag in flags:
        if flag.startswith("maxhits="):
            try:
                return max(1, int(flag.partition("=")[2]))
            except ValueError:
                break
    return DEFAULT_MAX_HITS


class Engine:
    """SpamAssassin's rules compiled for one process."""

    def __init__(self, ruleset: RuleSet, *, score_set: int = SCORE_SET, use_hyperscan: bool | None = None,
                 shadowed: Iterable[str] = (), source: str = "", cache_dir: Path | None = None) -> None:
        started = time.process_time()
        self.ruleset = ruleset
        self.score_set = score_set
        self.shadowed = frozenset(shadowed)
        self.report = LoadReport(source=source, score_set=score_set, files=len(ruleset.files),
                                 problems=list(ruleset.problems))
        self.env = EvalEnv(ruleset)
        self.scores = {name: ruleset.score(name, score_set) for name in ruleset.rules}
        needed = self._needed()
        compiled = _Compiled()
        self._skipped: set[str] = set()
        for name in needed:
            self._compile_rule(ruleset.rules[name], compiled)
        compiled.metas = self._order_metas(compiled.metas)
        #: Every meta rule in that order, as one function recording the ones that hit.
        self._run_metas = compile_metas(compiled.metas)
        self.compiled = compiled
        for kind in ("body", "rawbody", "full"):
            compiled.texts[kind] = self._fast_enough(compiled.texts.get(kind, []), kind)
        self.patterns = {kind: PatternSet(compiled.texts.get(kind, []), use_hyperscan=use_hyperscan,
                                          cache_dir=cache_dir) for kind in TEXT_KINDS}
        for kind, patterns in self.patterns.items():
            patterns.always = [e for e in patterns.always if self._affordable(e, kind)]
        self._header_groups = self._group_headers(compiled.headers, use_hyperscan, cache_dir)
        self.report.matcher = self.patterns["body"].engine
        self.report.prefiltered = {kind: p.prefiltered for kind, p in self.patterns.items()}
        self.report.guarded = {kind: len(p.guarded) for kind, p in self.patterns.items()}
        self.report.unguarded = {kind: len(p.always) for kind, p in self.patterns.items()}
        #: Rules that record a symbol when they hit: scored, not ``__``, not one of Mailward's own symbols.
        self.emitting = frozenset(n for n in needed if not n.startswith("__") and self.scores[n] != 0
                                  and n not in self.shadowed and n not in self._skipped)
        self.report.shadowed = sorted(n for n in needed if n in self.shadowed)
        self.report.emitting = len(self.emitting)
        self.report.compile_seconds = time.process_time() - started

    # --- loading ------------------------------------------------------------------------------------------------
    def _needed(self) -> list[str]:
        """Rules that can matter: every scored rule that runs, and what the meta rules among them read."""
        rs = self.ruleset
        out: dict[str, None] = {}
        stack = [n for n in rs.rules if not n.startswith("__")]
        for name in rs.rules:
            if _internal_score(rs, name, self.score_set) == 0:
                self.report.count(rs.rules[name].kind, "disabled (score 0)")
        while stack:
            name = stack.pop()
            rule = rs.rules.get(name)
            if name in out or rule is None or _internal_score(rs, name, self.score_set) == 0:
                continue
            out[name] = None
            if rule.kind == "meta":
                stack.extend(re.findall(r"\b[A-Za-z_][A-Za-z0-9_]*\b", rule.expr))
        unused = [n for n in rs.rules if n.startswith("__") and n not in out
                  and _internal_score(rs, n, self.score_set) != 0]
        for name in unused:
            self.report.count(rs.rules[name].kind, "unused sub-rule (no scored rule reads it)")
        return list(out)

    def _skip(self, rule: RuleDef, reason: str) -> None:
        self._skipped.add(rule.name)
        self.report.skip(rule.kind if not rule.eval_fn else f"{rule.kind} eval", rule.name, reason)

    def _compile_rule(self, rule: RuleDef, out: _Compiled) -> None:
        flags = self.ruleset.tflags.get(rule.name, frozenset())
        if rule.eval_fn:
            if rule.eval_fn in SKIPPED_BY_DESIGN:
                self._skip(rule, f"skipped: {SKIPPED_BY_DESIGN[rule.eval_fn]}")
                self.report.skip_eval(rule.eval_fn, f"skipped: {SKIPPED_BY_DESIGN[rule.eval_fn]}")
            elif rule.eval_fn not in EVALS:
                self._skip(rule, "eval not implemented")
                self.report.skip_eval(rule.eval_fn, "not implemented")
            else:
                out.evals.append(_EvalRule(rule.name, EVALS[rule.eval_fn], rule.eval_args))
                self.report.load(f"{rule.kind} eval")
            return
        if rule.kind == "meta":
            try:
                out.metas.append(compile_meta(rule.name, rule.expr))
            except (MetaError, SyntaxError) as exc:
                self._skip(rule, f"meta: {exc}")
                return
            self.report.load("meta")
            return
        if "net" in flags and rule.kind != "meta":
            self._skip(rule, f"skipped: {SKIPPED_BY_DESIGN.get('check_rbl', 'network')}")
            return
        try:
            pattern = self._pattern(rule)
        except Untranslatable as exc:
            self._skip(rule, f"regex: {exc}")
            return
        if rule.kind in ("header", "mimeheader"):
            mods = set(rule.header.split(":")[1:])
            if mods - HEADER_MODIFIERS:
                self._skip(rule, f"header modifier :{','.join(sorted(mods - HEADER_MODIFIERS))}")
                return
            unset = rule.if_unset.encode("utf-8") if rule.if_unset is not None else None
            target = out.headers if rule.kind == "header" else out.mimeheaders
            target.append(_HeaderRule(rule.name, rule.header, pattern, rule.negate, rule.exists, unset))
        elif rule.kind == "body" and "nosubject" in flags:
            assert pattern is not None
            out.nosubject.append(Entry(rule.name, pattern, _max_hits(flags)))
        else:
            assert pattern is not None
            out.texts.setdefault(rule.kind, []).append(Entry(rule.name, pattern, _max_hits(flags)))
        self.report.load(rule.kind)

    def _pattern(self, rule: RuleDef) -> re.Pattern[bytes] | None:
        if rule.exists:
            return None
        perl = split_regex(rule.regex)
        source = replace_tags(perl.source, self.ruleset) if rule.name in self.ruleset.replace_rules else perl.source
        # Body text is one paragraph per line: ^ and $ anchor at paragraph ends, as SpamAssassin's per-line match.
        extra = re.MULTILINE if rule.kind == "body" else 0
        return compile_perl(source, perl.flags, extra=extra)

    def _fast_enough(self, entries: list[Entry], kind: str) -> list[Entry]:
        """The entries whose regex runs on :data:`PROBE` within :data:`SLOW_RULE_SECONDS`; the rest are skipped."""
        kept = []
        for entry in entries:
            if _probe_seconds(entry.pattern) > SLOW_RULE_SECONDS:
                self._skip(self.ruleset.rules[entry.name], "regex too slow for Python re (> "
                           f"{SLOW_RULE_SECONDS * 1000:g} ms on 10 KB)")
                self.report.loaded[kind] -= 1
                continue
            kept.append(entry)
        return kept

    def _affordable(self, entry: Entry, kind: str) -> bool:
        if len(entry.pattern.pattern) <= MAX_UNFILTERED_PATTERN:
            return True
        self._skip(self.ruleset.rules[entry.name], f"no prefilter and a {MAX_UNFILTERED_PATTERN}+ byte pattern: "
                   "too slow for Python re on every mail")
        self.report.loaded[kind] -= 1
        return False

    @staticmethod
    def _group_headers(rules: list[_HeaderRule], use_hyperscan: bool | None,
                       cache_dir: Path | None) -> list[_HeaderGroup]:
        """The header rules by the header they read: one value lookup per header, the answer when it is absent
        worked out once, and one prefilter pass where :data:`HEADER_SET_MIN` or more rules search the same header."""
        by_spec: dict[str, list[_HeaderRule]] = {}
        for rule in rules:
            by_spec.setdefault(rule.spec, []).append(rule)
        groups = []
        for spec, members in by_spec.items():
            searched = [Entry(r.name, r.pattern) for r in members if not r.exists and r.pattern is not None]
            patterns = (PatternSet(searched, use_hyperscan=use_hyperscan, cache_dir=cache_dir)
                        if len(searched) >= HEADER_SET_MIN else None)
            absent = tuple(r.name for r in members if Engine._header_hit(r, None))
            groups.append(_HeaderGroup(spec, members, absent, patterns))
        return groups

    def _order_metas(self, metas: list[MetaRule]) -> list[MetaRule]:
        """Meta rules in dependency order; a meta in a cycle is skipped."""
        by_name = {m.name: m for m in metas}
        ordered: list[MetaRule] = []
        state: dict[str, int] = {}

        def visit(name: str, depth: int = 0) -> bool:
            if state.get(name) == 2:
                return True
            if state.get(name) == 1 or depth > 200:
                return False
            state[name] = 1
            meta = by_name[name]
            ok = all(visit(d, depth + 1) for d in meta.deps if d in by_name)
            state[name] = 2
            if ok:
                ordered.append(meta)
            return ok

        for name in by_name:
            if not visit(name):
                rule = self.ruleset.rules[name]
                self._skip(rule, "meta: circular dependency")
        return ordered

    # --- checking -----------------------------------------------------------------------------------------------
    def check(self, msg: SaMessage, *, now: float | None = None) -> list[Hit]:
        """Every emitting rule that hits ``msg``, highest score first."""
        counts = self.counts(msg, now=now)
        hits = [Hit(n, self.scores[n], self.ruleset.describe.get(n, ""), c) for n, c in counts.items()
                if n in self.emitting]
        return sorted(hits, key=lambda h: (-abs(h.score), h.name))

    def counts(self, msg: SaMessage, *, now: float | None = None) -> dict[str, int]:
        """Hit count of every rule that hit (sub-rules and unscored ones included)."""
        c = self.compiled
        hits: dict[str, int] = {}
        header_hits = self._header_hits(msg)
        for header_rule in c.headers:  # in rule order, as one rule after the other would record them
            if header_rule.name in header_hits:
                hits[header_rule.name] = 1
        if c.mimeheaders:
            self._mimeheaders(msg, hits)
        for kind in ("body", "rawbody", "full"):
            hits.update(self.patterns[kind].matches(getattr(msg, kind)))
        for entry in c.nosubject:
            if entry.pattern.search(msg.body_nosubject):
                hits[entry.name] = 1
        uri_set = self.patterns["uri"]
        if uri_set.entries and msg.uris:
            for uri in msg.uris:
                for name in uri_set.matches(uri):
                    hits[name] = 1
        env = self.env if now is None else EvalEnv(self.ruleset, now=now, regexes=self.env.regexes)
        for rule in c.evals:
            try:
                value = rule.fn(msg, env, *rule.args)
            except Exception:  # a malformed mail must not stop the other rules
                log.debug("eval %s failed", rule.name, exc_info=True)
                continue
            if value:
                hits[rule.name] = int(value) if not isinstance(value, bool) else 1
        self._run_metas(hits)
        return hits

    def _header_hits(self, msg: SaMessage) -> set[str]:
        """The header rules that hit ``msg``: per header, its value read once, then each rule's regex (or the ones
        the header's prefilter lets through)."""
        out: set[str] = set()
        for group in self._header_groups:
            value = msg.get(group.spec)
            if value is None:
                out.update(group.absent)
            elif group.patterns is None:
                out.update(r.name for r in group.rules if self._header_hit(r, value))
            else:
                found = group.patterns.matches(value)
                out.update(r.name for r in group.rules if r.exists or (r.name in found) != r.negate)
        return out

    @staticmethod
    def _header_hit(rule: _HeaderRule, value: bytes | None) -> bool:
        if rule.exists:
            return value is not None
        if value is None:
            value = rule.if_unset
        assert rule.pattern is not None
        found = rule.pattern.search(value if value is not None else b"") is not None
        return found != rule.negate

    def _mimeheaders(self, msg: SaMessage, hits: dict[str, int]) -> None:
        parts = [self._part_headers(p.headers) for p in msg.parts]
        for rule in self.compiled.mimeheaders:
            name = rule.spec.partition(":")[0].lower()
            for headers in parts:
                values = headers.get(name)
                if rule.exists:
                    found = bool(values)
                elif not values:
                    continue
                else:
                    assert rule.pattern is not None
                    found = any((rule.pattern.search(v) is not None) != rule.negate for v in values)
                if found:
                    hits[rule.name] = 1
                    break

    @staticmethod
    def _part_headers(headers: list[tuple[str, str]]) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {}
        for key, value in headers:
            out.setdefault(key.lower(), []).append(value.encode("utf-8", "replace"))
        return out
