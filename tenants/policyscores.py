"""Symbol scores on the policy pages ("Advanced"): every symbol by group, a search, and the overrides a form sets.

A symbol's group is the shipped score file that defines it (``tenants/scores/<group>.toml``); SpamAssassin's rules
form a group of their own and are listed only once overridden (there are ~2,000). A form sends ``s_<SYMBOL>`` for
the symbols it shows and ``was_s_<SYMBOL>`` with the value it showed: a field left as it was is not a change, so a
page opened before someone else's edit does not write its stale values back (only what the user changed is saved).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from tenants.exceptions import ValidationError
from tenants.symbols import SCORES_DIR, all_symbols, symbol_table

#: Form field name of a symbol's score override.
SCORE_PREFIX = "s_"
#: Form field of the value a field showed when the page was rendered (``was_s_BAYES_99``, ``was_v_tag_threshold``).
WAS_PREFIX = "was_"
#: The policy key holding symbol score overrides; lockable as a whole.
SCORES = "scores"
#: Largest score override either way (the virus symbol ships at +100; beyond this is a typo, not a policy).
MAX_SCORE = 1000.0
#: Group of a symbol no shipped score file defines (SpamAssassin's rules).
RULES_GROUP = "spamassassin"
#: Group titles, in the order the page shows them.
GROUP_TITLES: dict[str, str] = {
    "auth": "Sender authentication (SPF, DKIM, DMARC, ARC)",
    "dnsbl": "DNS blocklists",
    "content": "Content model",
    "bayes": "Bayes",
    "phishing": "Phishing and links",
    "rules": "Mailward rules",
    "attachments": "Attachments",
    "virus": "Viruses",
    "mime": "MIME structure",
    "lists": "Allow and block lists",
    "core": "Core",
    "spamd": "SpamAssassin spamd",
    "rspamd": "rspamd",
    "sarules": "SpamAssassin rule engine",
    RULES_GROUP: "SpamAssassin rules",
}


@dataclass(frozen=True)
class ScoreRow:
    """One symbol on a policy page: its shipped score, the baseline's and this layer's override, the one in effect."""

    symbol: str
    description: str
    group: str
    default: str
    #: The baseline's override as text ("" when it sets none).
    baseline: str
    #: This layer's own override as form text ("" when it sets none; for the baseline page, the baseline's).
    own: str
    effective: str


@dataclass(frozen=True)
class ScoreGroup:
    key: str
    title: str
    rows: list[ScoreRow]


def number_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    return "" if value is None else str(value)


@cache
def symbol_groups() -> dict[str, str]:
    """Shipped symbol → its group (the score file's name)."""
    groups: dict[str, str] = {}
    for path in sorted(SCORES_DIR.glob("*.toml")):
        if path.name != "calibration.toml":
            groups.update(dict.fromkeys(tomllib.loads(path.read_text()), path.stem))
    return groups


def scores_of(settings: Mapping[str, Any]) -> dict[str, float]:
    value = settings.get(SCORES, {})
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _matches(row: ScoreRow, words: list[str]) -> bool:
    hay = f"{row.symbol} {row.description}".lower()
    return all(w in hay for w in words)


def score_rows(baseline_settings: Mapping[str, Any], own_settings: Mapping[str, Any] | None, tenant_counts: bool,
               q: str = "", group: str = "") -> list[ScoreRow]:
    """Every shipped symbol (and any other with an override), by name, filtered by ``q`` (words in the name or the
    meaning) and ``group``. ``own_settings`` None: the baseline's page; ``tenant_counts``: the tenant's overrides
    apply (the baseline does not lock them)."""
    baseline = scores_of(baseline_settings)
    own = baseline if own_settings is None else scores_of(own_settings)
    table, groups = all_symbols(), symbol_groups()
    words = q.lower().split()
    rows = []
    for name in sorted(set(symbol_table()) | set(baseline) | set(own)):
        shipped = table[name].score if name in table else 0.0
        effective = own[name] if tenant_counts and name in own else baseline.get(name, shipped)
        row = ScoreRow(name, table[name].description if name in table else "", groups.get(name, RULES_GROUP),
                       number_text(shipped), number_text(baseline.get(name)), number_text(own.get(name)),
                       number_text(effective))
        if (not group or row.group == group) and _matches(row, words):
            rows.append(row)
    return rows


def grouped(rows: list[ScoreRow]) -> list[ScoreGroup]:
    """Rows by group, in :data:`GROUP_TITLES` order (an unknown group last, by name)."""
    order = list(GROUP_TITLES)
    keys = sorted({r.group for r in rows}, key=lambda g: (order.index(g) if g in order else len(order), g))
    return [ScoreGroup(k, GROUP_TITLES.get(k, k), [r for r in rows if r.group == k]) for k in keys]


def unchanged(form: Mapping[str, str], name: str) -> bool:
    """The field ``name`` still holds the value the page showed (its ``was_`` twin): not a change."""
    was = form.get(WAS_PREFIX + name)
    return was is not None and was.strip() == form.get(name, "").strip()


def score_changes(form: Mapping[str, str], own: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """The score overrides a form sets and the ones it clears (fields ``s_<SYMBOL>``; a symbol not sent, or sent as
    it was shown, is kept)."""
    known = set(all_symbols()) | set(own)
    changes: dict[str, float] = {}
    cleared: list[str] = []
    for name, raw in form.items():
        if not name.startswith(SCORE_PREFIX) or unchanged(form, name):
            continue
        symbol, raw = name[len(SCORE_PREFIX):], raw.strip()
        if symbol not in known:
            raise ValidationError(f"score of {symbol}: there is no such symbol")
        if raw == "":
            if symbol in own:
                cleared.append(symbol)
            continue
        try:
            value = float(raw)
        except ValueError:
            raise ValidationError(f"score of {symbol}: {raw!r} is not a number") from None
        if not math.isfinite(value) or abs(value) > MAX_SCORE:
            raise ValidationError(f"score of {symbol}: use a number from -{MAX_SCORE:g} to {MAX_SCORE:g}")
        if own.get(symbol) != value:
            changes[symbol] = value
    return changes, sorted(cleared)
