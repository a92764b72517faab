"""What every eval test shares: the registry, the environment evals read, and small helpers."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from smtp.sarules.perlre import Untranslatable, compile_perl
from tenants.sarules.parser import RuleSet


@dataclass
class EvalEnv:
    """What evals read besides the mail: the rule set's lists, and the time of the check."""

    ruleset: RuleSet
    now: float = field(default_factory=time.time)
    #: Regexes given as eval arguments (html_text_match), compiled once per process.
    regexes: dict[str, re.Pattern[bytes]] = field(default_factory=dict)
    _freemail: tuple[frozenset[str], tuple[str, ...]] | None = None

    def freemail(self) -> tuple[frozenset[str], tuple[str, ...]]:
        """The rule set's freemail domains: exact names, and the ``*`` patterns (computed once)."""
        if self._freemail is None:
            domains = self.ruleset.freemail_domains
            self._freemail = (frozenset(d for d in domains if "*" not in d), tuple(d for d in domains if "*" in d))
        return self._freemail

    def compiled_regex(self, perl: str) -> re.Pattern[bytes]:
        """A Perl regex given as an eval argument, compiled (cached); raises re.error when it cannot be."""
        found = self.regexes.get(perl)
        if found is None:
            try:
                found = compile_perl(perl, "")
            except Untranslatable as exc:
                raise re.error(str(exc)) from exc
            self.regexes[perl] = found
        return found


EvalFn = Callable[..., Any]
#: eval name -> implementation.
EVALS: dict[str, EvalFn] = {}


def register(name: str) -> Callable[[EvalFn], EvalFn]:
    def wrap(fn: EvalFn) -> EvalFn:
        EVALS[name] = fn
        return fn
    return wrap


def num(value: str | None, default: float | None = None) -> float | None:
    if value is None or value == "undef":
        return default
    try:
        return float(value)
    except ValueError:
        return default


def in_range(value: float, low: str | None, high: str | None) -> bool:
    lo, hi = num(low, -math.inf), num(high, math.inf)
    assert lo is not None and hi is not None
    return lo <= value < hi if hi != math.inf else value >= lo


def text_of(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value is not None else ""


