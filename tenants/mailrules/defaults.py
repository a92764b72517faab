"""The baseline rules a new installation ships, in the spirit of Proxmox Mail Gateway's defaults.

They are written by migration 0012 as MSP baseline rules, all inactive: the policy's virus and attachment actions
already do what the first two say, so upgrading changes no verdict. The MSP turns them on (or edits them) in the
console; each is a default a tenant may disable for itself, not a locked rule.
"""

from __future__ import annotations

from typing import Any

DEFAULT_RULES: list[dict[str, Any]] = [
    {"name": "Block viruses", "priority": 90, "direction": "both", "active": False, "locked": False,
     "what": {"items": [{"virus": True}]},
     "actions": [{"quarantine": {"kind": "attachment", "reason": "virus {virus}"}}]},
    {"name": "Quarantine dangerous attachments", "priority": 80, "direction": "inbound", "active": False,
     "locked": False,
     "what": {"items": [{"symbol": "ATTACH_DANGEROUS"}, {"symbol": "ATTACH_DOUBLE_EXT"},
                        {"symbol": "OFFICE_MACRO_SUSPICIOUS"}]},
     "actions": [{"quarantine": {"kind": "attachment", "reason": "dangerous attachment"}}]},
    {"name": "Tag external mail", "priority": 20, "direction": "inbound", "active": False, "locked": False,
     "from": {"items": [{"internal": False}]},
     "actions": [{"tag_subject": {"tag": "[EXTERNAL]"}},
                 {"add_header": {"name": "X-External-Sender", "value": "{sender}"}}]},
    {"name": "Outbound disclaimer", "priority": 10, "direction": "outbound", "active": False, "locked": False,
     "actions": [{"disclaimer": {"text": "This message was sent by {sender} and checked by the mail gateway.",
                                 "position": "bottom", "signed": "skip"}}]},
]
