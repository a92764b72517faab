"""SpamAssassin's rule knowledge, evaluated natively (rspamd's spamassassin module in Python): the rule files are
parsed by :mod:`tenants.sarules`, compiled here once per process into an :class:`~smtp.sarules.engine.Engine`, and
checked against each mail by :mod:`smtp.checks.sarules` without a spamd round-trip.

:func:`load_engine` builds the engine of the configured rule directory; :func:`shared_engine` keeps one per process
and rebuilds it when the rule files change.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from smtp.sarules.engine import Engine, Hit
from smtp.sarules.message import Envelope, SaMessage
from smtp.sarules.report import LoadReport
from tenants.sarules import SCORE_SET, RulesLocation, load_ruleset, locate
from tenants.symbols import symbol_table

log = logging.getLogger(__name__)

#: Where compiled Hyperscan databases are kept, under the data directory (rebuilt when the rules change).
CACHE_SUBDIR = "sarules-cache"

__all__ = ["Engine", "Envelope", "Hit", "LoadReport", "SaMessage", "Loaded", "load_engine", "shared_engine"]


@dataclass(frozen=True)
class Loaded:
    """An engine (None when there are no rules) and its load report, for one rule directory's files."""

    engine: Engine | None
    report: LoadReport
    location: RulesLocation
    signature: tuple[tuple[str, int, int], ...]


def load_engine(setting: str | None, *, score_set: int = SCORE_SET, use_hyperscan: bool | None = None,
                location: RulesLocation | None = None, cache_dir: Path | None = None) -> Loaded:
    """Parse and compile the rules of a ``MAILWARD_SA_RULES_DIR`` value. Never raises for a missing or unreadable
    directory: the report says why there are no rules."""
    location = location if location is not None else locate(setting)
    signature = location.signature()
    if location.rules_dir is None:
        return Loaded(None, LoadReport(unavailable=location.reason), location, signature)
    try:
        ruleset = load_ruleset(location)
    except OSError as exc:
        reason = f"cannot read {location.rules_dir}: {exc.strerror or exc}"
        return Loaded(None, LoadReport(unavailable=reason), location, signature)
    if not ruleset.rules:
        return Loaded(None, LoadReport(unavailable=f"no rules defined in {location.rules_dir}"), location, signature)
    source = f"{location.rules_dir} ({location.source})" if location.source else str(location.rules_dir)
    engine = Engine(ruleset, score_set=score_set, use_hyperscan=use_hyperscan, shadowed=symbol_table(),
                    source=source, cache_dir=cache_dir)
    return Loaded(engine, engine.report, location, signature)


_lock = threading.Lock()
_shared: dict[str | None, Loaded] = {}


def shared_engine(setting: str | None, *, reload: bool = False, cache_dir: Path | None = None) -> Loaded:
    """The process's engine for a setting, built on first use and rebuilt when ``reload`` is asked and the rule
    files changed on disk (sa-update)."""
    with _lock:
        current = _shared.get(setting)
    if current is not None:
        if not reload:
            return current
        location = locate(setting)
        if location == current.location and location.signature() == current.signature:
            return current
    # outside the lock: compiling takes seconds, checks keep the old engine meanwhile
    loaded = load_engine(setting, cache_dir=cache_dir)
    log.info("%s", loaded.report.summary())
    with _lock:
        _shared[setting] = loaded
    return loaded
