"""The default symbol table: score, description and effect of every symbol a check may emit.

Scores are data: ``tenants/scores/*.toml`` ship with the package (one file per check group), the MSP baseline and
each tenant override scores through :class:`tenants.policy.Policy`. A symbol that no file names scores 0.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import replace
from functools import cache
from pathlib import Path

from tenants.sarules import sa_symbols
from tenants.symboltype import EFFECTS as EFFECTS
from tenants.symboltype import Effect as Effect
from tenants.symboltype import Symbol as Symbol

SCORES_DIR = Path(__file__).resolve().parent / "scores"
#: Calibrated scores (``[scores] NAME = value``), a layer over the shipped ones written by ``bench/calibrate.py``
#: (:mod:`tenants.calibration`); the shipped score files stay the prior it was fitted towards.
CALIBRATION_FILE = SCORES_DIR / "calibration.toml"



@cache
def symbol_table() -> dict[str, Symbol]:
    """Every shipped symbol by name, calibrated scores applied; a name defined in two files is an error (it fails at
    start, not at random), and so is a calibrated score for a symbol no file defines."""
    table = dict(shipped_table())
    for name, score in calibrated_scores().items():
        if name not in table:
            raise ValueError(f"{CALIBRATION_FILE.name}: {name} is not a shipped symbol")
        table[name] = replace(table[name], score=score)
    return table


@cache
def calibrated_scores() -> dict[str, float]:
    """The calibration layer's scores (none when the file is absent)."""
    if not CALIBRATION_FILE.exists():
        return {}
    scores = tomllib.loads(CALIBRATION_FILE.read_text()).get("scores", {})
    return {str(k): float(v) for k, v in scores.items()}


def use_calibration(enabled: bool) -> None:
    """Score with (the default) or without the calibration layer, e.g. to compare the two in a benchmark."""
    global CALIBRATION_FILE
    CALIBRATION_FILE = SCORES_DIR / ("calibration.toml" if enabled else "calibration.off")
    for cached in (symbol_table, calibrated_scores):
        cached.cache_clear()


@cache
def shipped_table() -> dict[str, Symbol]:
    """Every symbol as the score files define it (the prior of the calibration)."""
    table: dict[str, Symbol] = {}
    for path in sorted(SCORES_DIR.glob("*.toml")):
        if path.name == "calibration.toml":
            continue
        data = tomllib.loads(path.read_text())
        for name, spec in data.items():
            if name in table:
                raise ValueError(f"{path.name}: symbol {name} is already defined in another score file")
            effect = spec.get("effect")
            if effect is not None and effect not in EFFECTS:
                raise ValueError(f"{path.name}: {name}: effect must be one of {', '.join(EFFECTS)}")
            table[name] = Symbol(name, float(spec.get("score", 0.0)), str(spec.get("description", "")), effect)
    return table


def rule_symbols() -> Mapping[str, Symbol]:
    """SpamAssassin's rules as symbols (score and ``describe`` from the installed rule files, see tenants.sarules)."""
    return sa_symbols()


def all_symbols() -> dict[str, Symbol]:
    """The shipped symbols and SpamAssassin's rules; a shipped symbol wins over a rule of the same name."""
    return {**rule_symbols(), **symbol_table()}


def lookup(name: str) -> Symbol:
    """The definition of a symbol: shipped, else a SpamAssassin rule; ``*_TEMPFAIL`` symbols not named in a file
    score 0 with no effect."""
    found = symbol_table().get(name)
    if found is None:
        found = rule_symbols().get(name)
    return found if found is not None else Symbol(name, 0.0)
