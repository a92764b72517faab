"""What a symbol is: its name, score, description and effect. A leaf, so that both the symbol table
(:mod:`tenants.symbols`) and SpamAssassin's rules (:mod:`tenants.sarules`), which the table takes in, build on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Effect = Literal["virus", "attachment", "tempfail"]
EFFECTS: tuple[str, ...] = ("virus", "attachment", "tempfail")


@dataclass(frozen=True)
class Symbol:
    name: str
    score: float
    description: str = ""
    effect: Effect | None = None
