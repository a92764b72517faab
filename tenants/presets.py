"""Policy presets: lenient, normal and strict, each a set of policy values laid over the MSP baseline.

The MSP defines what each means (the baseline's ``presets``: name → settings, replacing the shipped definition of
that name as a whole); a tenant picks one (its ``preset``), the baseline's ``preset`` is the pick of tenants that
made none. Merge order (:func:`tenants.policy.load_policy`): code defaults → MSP baseline → the tenant's preset →
the tenant's own overrides; keys the baseline locks come from the baseline alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The presets, mildest first.
PRESETS: tuple[str, ...] = ("lenient", "normal", "strict")
#: The preset of a tenant when neither it nor the baseline picks one.
DEFAULT_PRESET = "normal"
#: Settings keys that are about presets rather than policy values: the pick and (baseline only) the definitions.
PRESET, PRESETS_KEY = "preset", "presets"

#: The shipped definitions. ``normal`` sets nothing: the baseline as the MSP made it (the code defaults until then).
SHIPPED_PRESETS: dict[str, dict[str, Any]] = {
    "lenient": {"tag_threshold": 6.0, "quarantine_threshold": 10.0, "reject_threshold": 20.0,
                "dnsbl_reject": False, "greylisting": False},
    "normal": {},
    "strict": {"tag_threshold": 4.0, "quarantine_threshold": 6.0, "reject_threshold": 12.0,
               "attachment_action": "quarantine", "dnsbl_reject": True, "greylisting": True,
               "greylist_delay": 300, "outbound_quarantine_threshold": 5.0},
}

#: One line per preset for the policy pages.
DESCRIPTIONS: dict[str, str] = {
    "lenient": "Fewer false alarms: mail is tagged and held only at higher scores; nothing refused on a DNSBL hit.",
    "normal": "Your provider's standard filtering.",
    "strict": "Catch more: lower scores tag and hold mail, attachments are held, unknown senders are greylisted.",
}


def presets_of(baseline: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What each preset sets under this baseline: the MSP's definition of a name, else the shipped one."""
    stored = baseline.get(PRESETS_KEY)
    stored = stored if isinstance(stored, dict) else {}
    return {name: dict(stored[name]) if isinstance(stored.get(name), dict) else dict(SHIPPED_PRESETS[name])
            for name in PRESETS}


def chosen_preset(baseline: Mapping[str, Any], own: Mapping[str, Any]) -> str:
    """The preset a tenant is on: its own pick unless the baseline locks the pick, else the baseline's, else normal."""
    locked = baseline.get("locked", ())
    if PRESET in own and PRESET not in locked:
        return str(own[PRESET])
    return str(baseline.get(PRESET, DEFAULT_PRESET))
