"""The load report: how many of SpamAssassin's rules were loaded and how many skipped, by kind and why."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

#: Names listed per skip reason before "and N more".
NAMES_SHOWN = 8


@dataclass
class LoadReport:
    """What one load of the rule files gave: per kind the rules loaded, per (kind, reason) the rules skipped."""

    source: str = ""
    score_set: int = 0
    files: int = 0
    #: Why there are no rules at all (no directory, switched off, unreadable), "" when there are.
    unavailable: str = ""
    loaded: Counter[str] = field(default_factory=Counter)
    skipped: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    #: Rules not run at all, by (kind, reason): score 0, or a sub-rule no scored rule reads.
    not_run: Counter[tuple[str, str]] = field(default_factory=Counter)
    problems: list[tuple[str, str]] = field(default_factory=list)
    #: Eval functions whose rules were skipped, by reason.
    skipped_evals: dict[str, set[str]] = field(default_factory=dict)
    shadowed: list[str] = field(default_factory=list)
    emitting: int = 0
    matcher: str = "re"
    prefiltered: dict[str, int] = field(default_factory=dict)
    guarded: dict[str, int] = field(default_factory=dict)
    unguarded: dict[str, int] = field(default_factory=dict)
    compile_seconds: float = 0.0

    def load(self, kind: str) -> None:
        self.loaded[kind] += 1

    def skip(self, kind: str, name: str, reason: str) -> None:
        self.skipped[(kind, reason)].append(name)

    def skip_eval(self, function: str, reason: str) -> None:
        self.skipped_evals.setdefault(reason, set()).add(function)

    def count(self, kind: str, reason: str) -> None:
        self.not_run[(kind, reason)] += 1

    @property
    def total_loaded(self) -> int:
        return sum(self.loaded.values())

    @property
    def total_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def summary(self) -> str:
        """One line: rules loaded, skipped, matcher."""
        if self.unavailable:
            return f"SpamAssassin rules: none loaded: {self.unavailable}"
        return (f"SpamAssassin rules from {self.source}: {self.total_loaded} loaded ({self.emitting} scoring), "
                f"{self.total_skipped} skipped, score set {self.score_set}, matcher {self.matcher}, "
                f"compiled in {self.compile_seconds:.1f}s")

    def format(self) -> str:
        """The whole report, for ``mailward sarules report`` and the log."""
        lines = [self.summary()]
        if self.unavailable:
            return lines[0]
        lines.append("")
        lines.append("loaded by kind:")
        for kind, n in sorted(self.loaded.items()):
            lines.append(f"  {kind:<16} {n:5d}")
        lines.append("")
        lines.append("skipped by kind and reason:")
        for (kind, reason), names in sorted(self.skipped.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            shown = ", ".join(sorted(names)[:NAMES_SHOWN])
            more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
            lines.append(f"  {kind:<16} {len(names):5d}  {reason}: {shown}{more}")
        if self.skipped_evals:
            lines.append("")
            lines.append("eval functions skipped:")
            for reason, functions in sorted(self.skipped_evals.items()):
                lines.append(f"  {reason}: {', '.join(sorted(functions))}")
        if self.not_run:
            lines.append("")
            lines.append("not run:")
            for (kind, reason), n in sorted(self.not_run.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {kind:<16} {n:5d}  {reason}")
        if self.shadowed:
            lines.append("")
            lines.append(f"evaluated but not recorded (Mailward's own symbol of the same name): "
                         f"{', '.join(self.shadowed)}")
        lines.append("")
        lines.append(f"multi-pattern pass ({self.matcher}), rules by prefilter (pattern / literal guard / none):")
        for kind in sorted(self.guarded):
            lines.append(f"  {kind:<16} {self.prefiltered.get(kind, 0):5d} / {self.guarded.get(kind, 0):5d} / "
                         f"{self.unguarded.get(kind, 0):5d}")
        if self.problems:
            lines.append("")
            lines.append(f"lines that could not be read ({len(self.problems)}):")
            for where, problem in self.problems[:20]:
                lines.append(f"  {where}: {problem}")
        return "\n".join(lines)
