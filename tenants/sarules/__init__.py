"""SpamAssassin's rule files as data: where they are, the parsed rule set, and the symbols (score, description)
they define. The engine that evaluates them is :mod:`smtp.sarules`; this package is in ``tenants`` so that the score
table is known to every process (the policy pages, the verdict) without importing ``smtp``.

The directory is ``MAILWARD_SA_RULES_DIR``; unset, the rules Mailward's own ``sa-update`` run fetched (under the data
directory), else the newest system ``sa-update`` directory, else the rules of Debian's ``spamassassin`` package;
``none`` switches SpamAssassin's rules off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tenants.sarules.parser import SCORE_SETS, RuleDef, RuleSet, parse_files
from tenants.symboltype import Symbol

#: Where the system's ``sa-update`` keeps the rules it fetched: ``<this>/<version>/updates_spamassassin_org``.
SA_UPDATE_ROOT = Path("/var/lib/spamassassin")
#: Mailward's own sa-update directory under the data directory (``sa-update --updatedir``): its runs never touch the
#: system's rules, which a spamd on the same machine reads (an interrupted run leaves an empty directory it refuses).
OWN_UPDATE_SUBDIR = "sa-update"
#: The sa-update channel directory under a version directory.
UPDATE_CHANNEL = "updates_spamassassin_org"
#: Where Debian's ``spamassassin`` package installs the stock rules (SpamAssassin's DEF_RULES_DIR).
SA_SHARE_DIR = Path("/usr/share/spamassassin")
#: The site configuration read after the rules (``local.cf``: the MSP's own SpamAssassin settings, optional).
SA_SITE_DIR = Path("/etc/spamassassin")
#: The score set Mailward uses. SpamAssassin tunes four: 0 (no network tests, no Bayes), 1 (network tests),
#: 2 (Bayes), 3 (both). Mailward runs its own network checks (DNSBL, URIBL, SPF, DKIM, DMARC) whose symbols take the
#: place of SpamAssassin's network rules, and its own content model instead of SpamAssassin's Bayes: set 1.
SCORE_SET = 1
#: Redis key counting rule-file updates (``mailward sarules update``, the daily sa-update job); every process reloads
#: its rules when it moves.
SA_RULES_VERSION_KEY = "mailward:sarules_version"
#: Seconds between two looks at whether the rule files changed on disk (for processes that only need the scores).
RECHECK_INTERVAL = 60.0
#: The setting value that switches the rules off.
OFF = "none"

__all__ = ["RuleDef", "RuleSet", "RulesLocation", "SCORE_SET", "SA_RULES_VERSION_KEY", "locate", "load_ruleset",
           "sa_symbols"]


@dataclass(frozen=True)
class RulesLocation:
    """The rule directory in use (None: no rules, ``reason`` says why) and the site directory read after it."""

    rules_dir: Path | None
    site_dir: Path | None
    reason: str = ""
    #: How the directory was chosen: "setting", "sa-update", "package".
    source: str = ""

    def files(self) -> list[Path]:
        """The ``*.cf`` files read, in SpamAssassin's order: the rules sorted by name, then the site's."""
        if self.rules_dir is None:
            return []
        out = sorted(self.rules_dir.glob("*.cf"))
        if self.site_dir is not None and self.site_dir.is_dir():
            out += sorted(self.site_dir.glob("*.cf"))
        return out

    def signature(self) -> tuple[tuple[str, int, int], ...]:
        """Name, size and modification time of every file read: it changes when sa-update replaces the rules."""
        out = []
        for path in self.files():
            try:
                st = path.stat()
            except OSError:
                continue
            out.append((str(path), st.st_size, st.st_mtime_ns))
        return tuple(out)


def _version_key(path: Path) -> tuple[float, str]:
    try:
        return float(path.name), path.name
    except ValueError:
        return -1.0, path.name


def newest_update_dir(root: Path = SA_UPDATE_ROOT) -> Path | None:
    """The channel directory of the newest SpamAssassin version sa-update wrote rules for, or None."""
    if not root.is_dir():
        return None
    for version_dir in sorted((p for p in root.iterdir() if p.is_dir()), key=_version_key, reverse=True):
        channel = version_dir / UPDATE_CHANNEL
        if channel.is_dir() and any(channel.glob("*.cf")):
            return channel
    return None


def own_update_dir(data_dir: Path) -> Path:
    """The directory Mailward's sa-update runs write to (``--updatedir``)."""
    return data_dir / OWN_UPDATE_SUBDIR


def _own_rules() -> Path | None:
    from tenants.platform.config import get_config  # late: the configuration is read once, by whoever asks first

    channel = own_update_dir(get_config().data_dir) / UPDATE_CHANNEL
    return channel if channel.is_dir() and any(channel.glob("*.cf")) else None


def locate(setting: str | None, *, update_root: Path = SA_UPDATE_ROOT, share_dir: Path = SA_SHARE_DIR,
           site_dir: Path = SA_SITE_DIR, own: bool = True) -> RulesLocation:
    """Where the rules are for a ``MAILWARD_SA_RULES_DIR`` value (None: found automatically; ``own``: look at
    Mailward's own sa-update directory first)."""
    if setting is not None and setting.strip().lower() == OFF:
        return RulesLocation(None, None, "switched off (MAILWARD_SA_RULES_DIR=none)", "setting")
    if setting:
        path = Path(setting)
        if not path.is_dir():
            return RulesLocation(None, None, f"MAILWARD_SA_RULES_DIR={setting}: no such directory", "setting")
        if not any(path.glob("*.cf")):
            return RulesLocation(None, None, f"MAILWARD_SA_RULES_DIR={setting}: no *.cf rule files in it", "setting")
        return RulesLocation(path, None, "", "setting")
    updated = (_own_rules() if own else None) or newest_update_dir(update_root)
    if updated is not None:
        return RulesLocation(updated, site_dir, "", "sa-update")
    if share_dir.is_dir() and any(share_dir.glob("*.cf")):
        return RulesLocation(share_dir, site_dir, "", "package")
    return RulesLocation(None, None, f"no SpamAssassin rules found (neither sa-update's {update_root} nor "
                                     f"{share_dir}): install Debian's spamassassin package", "")


_lock = threading.Lock()
_parsed: dict[tuple[RulesLocation, tuple[tuple[str, int, int], ...]], RuleSet] = {}


def load_ruleset(location: RulesLocation) -> RuleSet:
    """The parsed rules of a location, read once per process and again only when the files change."""
    key = (location, location.signature())
    with _lock:
        found = _parsed.get(key)
        if found is None:
            found = parse_files(location.files())
            _parsed.clear()  # keep one parse: the previous files are gone or replaced
            _parsed[key] = found
        return found


def symbols_of(ruleset: RuleSet, score_set: int = SCORE_SET) -> dict[str, Symbol]:
    """The symbols of a rule set: every rule but ``__`` sub-rules, with its score in the set and its description."""
    if not 0 <= score_set < SCORE_SETS:
        raise ValueError(f"score set must be 0 to {SCORE_SETS - 1}")
    return {name: Symbol(name, ruleset.score(name, score_set), ruleset.describe.get(name, ""))
            for name in ruleset.rules if not name.startswith("__")}


_symbols: tuple[float, RulesLocation | None, dict[str, Symbol]] = (0.0, None, {})


def sa_symbols(setting: str | None = None, *, use_config: bool = True) -> Mapping[str, Symbol]:
    """SpamAssassin's rules as symbols for the configured rule directory; looked up again every
    :data:`RECHECK_INTERVAL` seconds (cheap: the parse is kept while the files stay the same)."""
    global _symbols
    checked, _, table = _symbols
    if time.monotonic() - checked < RECHECK_INTERVAL:
        return table
    if use_config and setting is None:
        from tenants.platform.config import get_config  # late: the configuration is read once, by whoever asks first

        setting = get_config().sa_rules_dir
    location = locate(setting)
    try:
        table = symbols_of(load_ruleset(location)) if location.rules_dir is not None else {}
    except OSError:
        table = {}
    _symbols = (time.monotonic(), location, table)
    return table


def forget_symbols() -> None:
    """Read the rule files again on the next :func:`sa_symbols` (after a reload, and in tests)."""
    global _symbols
    _symbols = (0.0, None, {})
