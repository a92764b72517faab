"""Durations in human units for the policy pages: ``90s``, ``5m``, ``2h``, ``30d``, ``2w`` (or ``1h30m``).

Settings store whole seconds or whole days (:class:`tenants.policy.Policy`); these helpers turn them into the
largest unit that states them exactly and back, with errors that name the field being edited.
"""

from __future__ import annotations

import re

from tenants.exceptions import ValidationError

#: Seconds per unit, largest first (the order :func:`format_duration` tries them in).
UNITS: dict[str, int] = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
#: The example every error message gives.
EXAMPLES = "use e.g. 90s, 5m, 2h, 7d"
#: Longest duration a setting may take (ten years): beyond that is a typo, and it keeps the numbers small.
MAX_SECONDS = 3650 * 86400

_PART = re.compile(r"(\d+)\s*([wdhms])", re.I)
_WHOLE = re.compile(r"(?:\s*\d+\s*[wdhms])+\s*", re.I)


def parse_duration(raw: str, field: str, *, unit: str = "s") -> int:
    """The value of ``raw`` counted in ``unit`` (``s`` or ``d``, the unit the setting is stored in).

    A bare number counts in ``unit``. :class:`ValidationError` naming ``field`` when ``raw`` is not a duration, is
    not a whole number of ``unit``, or is longer than :data:`MAX_SECONDS`.
    """
    text = raw.strip()
    if text.isdigit():
        seconds = int(text) * UNITS[unit]
    elif _WHOLE.fullmatch(text):
        seconds = sum(int(n) * UNITS[u.lower()] for n, u in _PART.findall(text))
    else:
        raise ValidationError(f"{field}: {raw.strip()!r} is not a duration ({EXAMPLES})")
    if seconds > MAX_SECONDS:
        raise ValidationError(f"{field}: {raw.strip()!r} is longer than {MAX_SECONDS // 86400} days")
    if seconds % UNITS[unit]:
        name = {"d": "days", "h": "hours", "m": "minutes"}.get(unit, "seconds")
        raise ValidationError(f"{field}: {raw.strip()!r} is not a whole number of {name}")
    return seconds // UNITS[unit]


def format_duration(value: int, *, unit: str = "s") -> str:
    """``value`` (counted in ``unit``) in the largest unit that states it exactly: 300 → ``5m``, 129600 → ``36h``."""
    seconds = int(value) * UNITS[unit]
    if seconds == 0:
        return f"0{unit}"
    for name, size in UNITS.items():
        if name == "w":
            continue  # weeks read worse than days ("2w" vs "14d"); accepted on input only
        if seconds % size == 0:
            return f"{seconds // size}{name}"
    return f"{seconds}s"  # pragma: no cover - "s" always divides
