"""One multi-pattern pass over a text instead of one regex per rule: a prefilter finds the few rules that can
match, and only those run their regex (Python ``re``, whose semantics are the ones in force).

With Hyperscan (the ``hyperscan`` wheel) every rule of a kind contributes a *relaxed* copy of its pattern to one
database: look-arounds and back-references dropped, long bounded repeats widened, so it matches at least what the
rule matches and compiles in seconds (SpamAssassin's patterns as written take Hyperscan minutes: ``[^>]{0,2048}``).
A rule whose relaxed pattern is too long (replace-tag expansions of several KB) contributes its *guard* instead:
literals one of which every match contains. Compiled databases are cached on disk by content, so later processes
load them at once. Without Hyperscan the guards are substring tests on the lower-cased text. A rule with neither
prefilter always runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

hyperscan: Any
try:  # the optional fast path
    import hyperscan
except ImportError:  # without it every prefilter is a substring test (tests force that path too)
    hyperscan = None

log = logging.getLogger(__name__)

#: Shortest guard literal worth testing: shorter ones are in nearly every text.
MIN_LITERAL = 3
#: Most alternatives a guard may have (a pattern of many alternations is cheaper to just run).
MAX_ALTERNATIVES = 24

_parser: Any = getattr(re, "_parser", None)
_constants: Any = getattr(re, "_constants", None)


def hyperscan_available() -> bool:
    return hyperscan is not None


def _seq_guard(items: Any) -> frozenset[bytes] | None:
    """The best guard of a parsed sequence: the set of literals one of which every match contains, or None."""
    c = _constants
    best: frozenset[bytes] | None = None
    run = bytearray()

    def consider(candidate: frozenset[bytes] | None) -> None:
        nonlocal best
        if not candidate or len(candidate) > MAX_ALTERNATIVES or min(map(len, candidate)) < MIN_LITERAL:
            return
        if best is None or min(map(len, candidate)) > min(map(len, best)):
            best = candidate

    for op, av in items:
        if op is c.LITERAL:
            run.append(av)
            continue
        consider(frozenset({bytes(run).lower()}) if run else None)
        run = bytearray()
        if op is c.SUBPATTERN:
            consider(_seq_guard(av[3]))
        elif op is c.ATOMIC_GROUP:
            consider(_seq_guard(av))
        elif op is c.BRANCH:
            alternatives = [_seq_guard(branch) for branch in av[1]]
            if all(a is not None for a in alternatives):
                consider(frozenset().union(*[a for a in alternatives if a is not None]))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT) and av[0] >= 1:
            consider(_seq_guard(av[2]))
    consider(frozenset({bytes(run).lower()}) if run else None)
    return best


def guard_of(pattern: re.Pattern[bytes]) -> frozenset[bytes] | None:
    """Lower-cased literals one of which occurs in every text ``pattern`` matches (any case), or None."""
    if _parser is None or _constants is None:
        return None
    try:
        parsed = _parser.parse(pattern.pattern, pattern.flags)
    except Exception:  # an internal API: any surprise just means no guard
        return None
    return _seq_guard(parsed)


# --- relaxed patterns: a superset Hyperscan compiles fast ------------------------------------------------------------

#: Longest relaxed pattern given to Hyperscan; longer ones (replace-tag expansions of several KB) compile for
#: minutes there, and are guarded by a literal instead.
HS_MAX_PATTERN = 600
#: Bounded repeats above this become unbounded in the relaxed pattern (Hyperscan compiles ``{0,2048}`` slowly).
HS_MAX_REPEAT = 16


def _byte(value: int) -> str:
    ch = chr(value)
    return ch if ch.isalnum() and value < 128 else f"\\x{value:02x}"


def _category(av: Any) -> str | None:
    c = _constants
    return {c.CATEGORY_DIGIT: r"\d", c.CATEGORY_NOT_DIGIT: r"\D", c.CATEGORY_SPACE: r"\s",
            c.CATEGORY_NOT_SPACE: r"\S", c.CATEGORY_WORD: r"\w", c.CATEGORY_NOT_WORD: r"\W"}.get(av)


def _relax_class(items: Any) -> str | None:
    c = _constants
    out, negate = [], False
    for op, av in items:
        if op is c.NEGATE:
            negate = True
        elif op is c.LITERAL:
            out.append(_byte(av))
        elif op is c.RANGE:
            out.append(f"{_byte(av[0])}-{_byte(av[1])}")
        elif op is c.CATEGORY and _category(av) is not None:
            out.append(_category(av) or "")
        else:
            return None
    return "[" + ("^" if negate else "") + "".join(out) + "]"


# Complexity (C901) by design: a regex rewriter: one branch per node kind.
def _relax(items: Any) -> str | None:  # noqa: C901
    """A pattern matching at least what the parsed pattern matches, in syntax Hyperscan reads without look-arounds,
    back-references or long bounded repeats (those are dropped or widened: a superset, confirmed by ``re``)."""
    c = _constants
    out: list[str] = []
    for op, av in items:
        if op is c.LITERAL:
            out.append(_byte(av))
        elif op is c.NOT_LITERAL:
            out.append(f"[^{_byte(av)}]")
        elif op is c.ANY:
            out.append(".")
        elif op is c.IN:
            cls = _relax_class(av)
            if cls is None:
                return None
            out.append(cls)
        elif op in (c.SUBPATTERN, c.ATOMIC_GROUP):
            inner = _relax(av[3] if op is c.SUBPATTERN else av)
            if inner is None:
                return None
            out.append(f"(?:{inner})")
        elif op is c.BRANCH:
            branches = [_relax(b) for b in av[1]]
            if any(b is None for b in branches):
                return None
            out.append("(?:" + "|".join(b for b in branches if b is not None) + ")")
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            low, high, sub = av
            inner = _relax(sub)
            if inner is None:
                return None
            if high is c.MAXREPEAT or high > HS_MAX_REPEAT:
                out.append(f"(?:{inner}){{{min(low, HS_MAX_REPEAT)},}}")
            else:
                out.append(f"(?:{inner}){{{low},{high}}}")
        elif op in (c.ASSERT, c.ASSERT_NOT):
            continue
        elif op is c.AT:
            if av is c.AT_BOUNDARY:
                out.append(r"\b")
            elif av is c.AT_NON_BOUNDARY:
                out.append(r"\B")
        elif op in (c.GROUPREF, c.GROUPREF_EXISTS):
            out.append(".*")
        elif op is c.CATEGORY and _category(av) is not None:
            out.append(_category(av) or "")
        else:
            return None
    return "".join(out)


def relaxed_of(pattern: re.Pattern[bytes]) -> str | None:
    """The Hyperscan prefilter of a pattern, or None when it has none (too long, or a construct not handled)."""
    if _parser is None or _constants is None:
        return None
    try:
        relaxed = _relax(_parser.parse(pattern.pattern, pattern.flags))
    except Exception:  # an internal API: any surprise just means no prefilter
        return None
    if relaxed is None or len(relaxed) > HS_MAX_PATTERN:
        return None
    return relaxed


@dataclass(frozen=True)
class Entry:
    """One rule in a pattern set."""

    name: str
    pattern: re.Pattern[bytes]
    #: Count every match up to this many (tflags multiple / maxhits); 1 for a yes/no rule.
    max_hits: int = 1


class PatternSet:
    """The rules of one kind (body, rawbody, full, uri) over one text, prefiltered by one scan.

    With Hyperscan each rule contributes its relaxed pattern (or, failing that, its guard literals) to one database;
    without it, each guard is a substring test on the lower-cased text. Rules with neither always run.
    ``cache_dir``: where compiled databases are kept between processes (keyed by their patterns).
    """

    def __init__(self, entries: Iterable[Entry], *, use_hyperscan: bool | None = None,
                 cache_dir: Path | None = None) -> None:
        self.entries = list(entries)
        want = hyperscan_available() if use_hyperscan is None else use_hyperscan and hyperscan_available()
        self.always: list[Entry] = []
        self.guarded: list[tuple[Entry, frozenset[bytes]]] = []
        self.prefiltered = 0
        #: Some guarded rules are not in the database (their prefilter was refused): test guards by substring too.
        self._fallback_guards = False
        #: Hyperscan expressions (pattern text, flags) and the entries each id points at.
        expressions: list[tuple[bytes, int]] = []
        targets: list[list[Entry]] = []
        literal_ids: dict[bytes, int] = {}
        for entry in self.entries:
            relaxed = relaxed_of(entry.pattern) if want else None
            if relaxed is not None:
                assert hyperscan is not None
                flags = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_ALLOWEMPTY | hyperscan.HS_FLAG_DOTALL
                if entry.pattern.flags & re.IGNORECASE or b"(?i" in entry.pattern.pattern:
                    flags |= hyperscan.HS_FLAG_CASELESS
                expressions.append((relaxed.encode("latin-1"), flags))
                targets.append([entry])
                self.prefiltered += 1
                continue
            guard = guard_of(entry.pattern)
            if guard is None:
                self.always.append(entry)
                continue
            self.guarded.append((entry, guard))
            if want:
                assert hyperscan is not None
                for lit in guard:
                    if lit not in literal_ids:
                        literal_ids[lit] = len(expressions)
                        literal_flags = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SINGLEMATCH
                        expressions.append((_hs_literal(lit), literal_flags))
                        targets.append([])
                    targets[literal_ids[lit]].append(entry)
        self.database: Any = None
        self._local = threading.local()
        if want and expressions:
            self.database, rejected = _database(expressions, cache_dir)
            for expr_id in sorted(rejected):  # a refused relaxed pattern: its rule falls back to its guard
                for entry in targets[expr_id]:
                    guard = guard_of(entry.pattern)
                    if guard is None:
                        self.always.append(entry)
                    else:
                        self.guarded.append((entry, guard))
                        self._fallback_guards = True
                targets[expr_id] = []
            self.prefiltered -= len(rejected)
        self.targets = targets

    @property
    def engine(self) -> str:
        return "hyperscan" if self.database is not None else "re"

    def _scratch(self) -> Any:
        """This thread's Hyperscan scratch space: a scratch serves one scan at a time, and mails are scanned in
        several threads at once (ScratchInUseError otherwise)."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            assert hyperscan is not None
            scratch = self._local.scratch = hyperscan.Scratch(self.database)
        return scratch

    def candidates(self, text: bytes) -> list[Entry]:
        """The rules the prefilter lets through for ``text`` (and those without a prefilter)."""
        found: dict[str, Entry] = {e.name: e for e in self.always}
        if self.database is not None:
            hits: list[int] = []

            def on_match(expr_id: int, start: int, end: int, flags: int, context: Any) -> None:
                hits.append(expr_id)

            self.database.scan(text, match_event_handler=on_match, scratch=self._scratch())
            for expr_id in hits:
                for entry in self.targets[expr_id]:
                    found[entry.name] = entry
        if self.database is None or self._fallback_guards:
            lower = text.lower()
            for entry, guard in self.guarded:
                if any(lit in lower for lit in guard):
                    found[entry.name] = entry
        return list(found.values())

    def matches(self, text: bytes) -> dict[str, int]:
        """Rule name -> number of matches (1 for a yes/no rule) of every rule that matches ``text``."""
        out: dict[str, int] = {}
        for entry in self.candidates(text):
            if entry.max_hits <= 1:
                if entry.pattern.search(text) is not None:
                    out[entry.name] = 1
                continue
            count = 0
            for _ in entry.pattern.finditer(text):
                count += 1
                if count >= entry.max_hits:
                    break
            if count:
                out[entry.name] = count
        return out


def _hs_literal(lit: bytes) -> bytes:
    return "".join(_byte(b) for b in lit).encode("latin-1")


def _compile(expressions: list[tuple[bytes, int]], ids: list[int] | None = None) -> Any:
    assert hyperscan is not None
    db = hyperscan.Database()
    db.compile(expressions=[e for e, _ in expressions], ids=ids if ids is not None else list(range(len(expressions))),
               elements=len(expressions), flags=[f for _, f in expressions])
    return db


def _database(expressions: list[tuple[bytes, int]], cache_dir: Path | None) -> tuple[Any, set[int]]:
    """One Hyperscan database of ``expressions`` (loaded from the cache when compiled before) and the ids of those
    Hyperscan refused (left out of it)."""
    assert hyperscan is not None
    key = hashlib.sha256(repr((getattr(hyperscan, "__version__", ""), expressions)).encode()).hexdigest()[:32]
    path = cache_dir / f"{key}.hsdb" if cache_dir is not None else None
    rejected: set[int] = set()
    if path is not None and path.is_file():
        try:
            data = path.read_bytes()
            count = int.from_bytes(data[:4], "big")
            rejected = {int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(count)}
            db = hyperscan.loadb(data[4 + 4 * count:], hyperscan.HS_MODE_BLOCK)
            db.scratch = hyperscan.Scratch(db)  # a loaded database comes without the scratch space scans need
            return db, rejected
        except Exception:  # a damaged or foreign cache file: compile again
            log.info("hyperscan cache %s unusable; compiling", path)
            rejected = set()
    try:
        db = _compile(expressions)
    except Exception:  # hyperscan.error: find the expressions it refuses, compile the rest
        for n, expression in enumerate(expressions):
            try:
                _compile([expression])
            except Exception:
                rejected.add(n)
        kept = [n for n in range(len(expressions)) if n not in rejected]
        if not kept:
            return None, rejected
        try:
            db = _compile([expressions[n] for n in kept], kept)
        except Exception as exc:
            log.warning("hyperscan could not compile %d prefilters (%s)", len(expressions), exc)
            return None, set(range(len(expressions)))
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            header = len(rejected).to_bytes(4, "big") + b"".join(i.to_bytes(4, "big") for i in sorted(rejected))
            tmp.write_bytes(header + hyperscan.dumpb(db))
            tmp.replace(path)
        except OSError as exc:
            log.info("hyperscan cache not written (%s)", exc)
    return db, rejected
