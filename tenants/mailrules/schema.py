"""A mail rule's definition: the one format the web forms, the API, the CLI and YAML files share, parsed and checked.

A rule is ``name``, ``priority`` (0-100, higher first), ``direction`` (inbound, outbound, both), ``active``, and
for the MSP's baseline ``locked``; then up to four object groups and the actions::

    match: all            # how the groups combine: all (AND) or any (OR)
    from:  {match: any, invert: false, items: [{domain: example.com}, {ip: 192.0.2.0/24}]}
    to:    {items: [{ldap_group: Finance}]}
    what:  {items: [{symbol: OLE_MACRO}, {filename: '\\.(docm|xlsm)$'}]}
    when:  {items: [{frame: {days: [sat, sun], start: "00:00", end: "24:00"}}]}
    actions: [{remove_attachments: {which: matched, replacement: "Removed {filename}"}}, {bcc: {to: audit@example.com}}]

Each item and each action is a one-key mapping. A group matches when any (``match: any``, the default) or all of its
items do, and ``invert`` turns that round; an empty or absent group does not take part. Regular expressions are RE2
(linear time: a tenant's pattern cannot stall the ingress), case-insensitive, at most :data:`MAX_REGEX` characters.
Templates (notify, disclaimer, header values, replacement text) take the macros in :data:`MACROS`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import re2

from tenants.exceptions import ValidationError

MAX_REGEX = 300
MAX_TEXT = 20_000
MAX_ITEMS = 50
MAX_ACTIONS = 20
DIRECTIONS = ("inbound", "outbound", "both")
GROUPS = ("from", "to", "what", "when")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: Macros a template may use, with what they stand for (the rules page lists them).
MACROS = {
    "sender": "the envelope sender",
    "recipient": "the recipient the rule was evaluated for",
    "from": "the From header",
    "subject": "the subject",
    "score": "the spam score",
    "verdict": "the verdict (deliver, tag, quarantine, reject)",
    "virus": "the virus found, or empty",
    "filename": "the matched attachment's file name, or the removed one's",
    "rule": "the rule's name",
    "queue_id": "the mail's queue id",
    "client_ip": "the sending server's address",
    "date": "the date and time the mail arrived",
}
_MACRO_RE = re.compile(r"\{([^{}]*)\}")

#: Who-items: what each takes.
WHO_KINDS = ("address", "domain", "regex", "ip", "internal", "ldap_group")
WHAT_KINDS = ("score", "virus", "symbol", "header", "content_type", "filename", "archive_member", "size", "has")
HAS_VALUES = {"qr_code": ("PHISH_QR_URL", "PHISH_QR_URL_SUSPICIOUS"),
              "html_form": ("PHISH_HTML_ATTACH_FORM", "PHISH_PASSWORD_FORM")}
#: Final actions decide the recipient's fate and stop lower rules; the others add to it.
FINAL_ACTIONS = ("accept", "block", "quarantine")
ACTION_KINDS = FINAL_ACTIONS + ("notify", "add_header", "set_header", "remove_header", "tag_subject", "disclaimer",
                                "remove_attachments", "bcc", "reroute")
#: The order actions run in, whatever order a rule lists them in (documented on the rules page and in the README).
ACTION_ORDER = ("accept", "block", "quarantine", "remove_header", "set_header", "add_header", "tag_subject",
                "remove_attachments", "disclaimer", "reroute", "bcc", "notify")
_HEADER_NAME_RE = re.compile(r"^[!-9;-~]{1,76}$")
_ADDRESS_RE = re.compile(r"^[^@\s<>]{1,64}@[A-Za-z0-9.-]{1,253}$")
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9-]{1,63}\.)+[A-Za-z0-9-]{1,63}$")
_TIME_RE = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)$")


def compile_regex(pattern: str, where: str) -> Any:
    """An RE2 pattern, case-insensitive; a pattern RE2 cannot take is refused with the reason."""
    if not isinstance(pattern, str) or not pattern:
        raise ValidationError(f"{where}: a regular expression is required")
    if len(pattern) > MAX_REGEX:
        raise ValidationError(f"{where}: the regular expression is longer than {MAX_REGEX} characters")
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValidationError(f"{where}: invalid regular expression {pattern!r}: {reason}") from exc


def check_template(text: Any, where: str, *, limit: int = MAX_TEXT, one_line: bool = False) -> str:
    """A template text: a string, not too long, only known macros; one line (no CR or LF) for header values."""
    if not isinstance(text, str):
        raise ValidationError(f"{where}: a text is required")
    if len(text) > limit:
        raise ValidationError(f"{where}: longer than {limit} characters")
    if one_line and ("\r" in text or "\n" in text):
        raise ValidationError(f"{where}: must be one line (no line breaks)")
    for name in _MACRO_RE.findall(text):
        if name not in MACROS:
            raise ValidationError(f"{where}: unknown macro {{{name}}} (known: "
                                  + ", ".join("{" + m + "}" for m in MACROS) + ")")
    return text


def expand(text: str, values: Mapping[str, str]) -> str:
    """A template with its macros replaced (an unknown one is left as written; :func:`check_template` refuses them)."""
    return _MACRO_RE.sub(lambda m: values.get(m.group(1), m.group(0)), text)


@dataclass(frozen=True)
class Item:
    """One condition of a group: its kind, its value as written (JSON), and what evaluation needs (compiled)."""

    kind: str
    value: Any
    compiled: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class Group:
    match: str = "any"
    invert: bool = False
    items: tuple[Item, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"match": self.match, "invert": self.invert, "items": [{i.kind: i.value} for i in self.items]}


@dataclass(frozen=True)
class RuleAction:
    kind: str
    params: Mapping[str, Any]

    @property
    def final(self) -> bool:
        return self.kind in FINAL_ACTIONS


@dataclass(frozen=True)
class RuleSpec:
    """A parsed rule (id, tenant and level come from its row)."""

    name: str
    priority: int = 50
    direction: str = "inbound"
    active: bool = True
    locked: bool = False
    match: str = "all"
    groups: Mapping[str, Group] = field(default_factory=dict)
    actions: tuple[RuleAction, ...] = ()

    @property
    def final(self) -> RuleAction | None:
        return next((a for a in self.actions if a.final), None)

    def definition(self) -> dict[str, Any]:
        """The JSON stored in ``mail_rule.definition``."""
        out: dict[str, Any] = {"match": self.match}
        for name in GROUPS:
            if name in self.groups:
                out[name] = self.groups[name].as_dict()
        out["actions"] = [{a.kind: dict(a.params)} for a in self.actions]
        return out

    def as_dict(self, *, baseline: bool = False) -> dict[str, Any]:
        """The whole rule as the API and YAML files show it."""
        head: dict[str, Any] = {"name": self.name, "priority": self.priority, "direction": self.direction,
                                "active": self.active}
        if baseline:
            head["locked"] = self.locked
        return head | self.definition()


def _one_key(entry: Any, where: str) -> tuple[str, Any]:
    if not isinstance(entry, Mapping) or len(entry) != 1:
        raise ValidationError(f"{where}: each entry is a mapping with one key, e.g. {{domain: example.com}}")
    ((key, value),) = entry.items()
    return str(key), value


def _range(value: Any, where: str) -> dict[str, float | None]:
    if not isinstance(value, Mapping) or not set(value) <= {"min", "max"} or not value:
        raise ValidationError(f"{where}: give min and/or max, e.g. {{min: 5}}")
    out: dict[str, float | None] = {}
    for k in ("min", "max"):
        v = value.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValidationError(f"{where}: {k} must be a number, not {v!r}")
        out[k] = v
    if out.get("min") is not None and out.get("max") is not None and out["min"] > out["max"]:  # type: ignore[operator]
        raise ValidationError(f"{where}: min is above max")
    return out


def _who_item(kind: str, value: Any, where: str) -> Item:
    if kind == "address":
        if not isinstance(value, str) or not _ADDRESS_RE.match(value.strip()):
            raise ValidationError(f"{where}: {value!r} is not a mail address")
        return Item(kind, value.strip().lower())
    if kind == "domain":
        if not isinstance(value, str) or not _DOMAIN_RE.match(value.strip().rstrip(".")):
            raise ValidationError(f"{where}: {value!r} is not a domain")
        return Item(kind, value.strip().rstrip(".").lower())
    if kind == "regex":
        return Item(kind, value, compile_regex(value, where))
    if kind == "ip":
        try:
            net = ipaddress.ip_network(str(value).strip(), strict=False)
        except ValueError as exc:
            raise ValidationError(f"{where}: {value!r} is not an IP address or network") from exc
        return Item(kind, str(net), net)
    if kind == "internal":
        if not isinstance(value, bool):
            raise ValidationError(f"{where}: internal is true or false")
        return Item(kind, value)
    if kind == "ldap_group":
        if not isinstance(value, str) or not value.strip() or len(value) > 256:
            raise ValidationError(f"{where}: a directory group name is required")
        return Item(kind, value.strip())
    raise ValidationError(f"{where}: unknown condition {kind!r} (one of {', '.join(WHO_KINDS)})")


def _what_item(kind: str, value: Any, where: str) -> Item:
    if kind in ("score", "size"):
        return Item(kind, _range(value, where))
    if kind == "virus":
        if not isinstance(value, bool):
            raise ValidationError(f"{where}: virus is true or false")
        return Item(kind, value)
    if kind == "symbol":
        if not isinstance(value, str) or not re.fullmatch(r"[A-Z0-9_]{1,64}", value):
            raise ValidationError(f"{where}: {value!r} is not a symbol name (capitals, digits, _)")
        return Item(kind, value)
    if kind in ("content_type", "filename"):
        return Item(kind, value, compile_regex(value, where))
    if kind == "header":
        if not isinstance(value, Mapping) or set(value) != {"name", "regex"}:
            raise ValidationError(f"{where}: header takes name and regex")
        if not isinstance(value["name"], str) or not _HEADER_NAME_RE.match(value["name"]):
            raise ValidationError(f"{where}: {value['name']!r} is not a header name")
        return Item(kind, dict(value), compile_regex(value["regex"], where))
    if kind == "archive_member":
        if not isinstance(value, Mapping) or not value or not set(value) <= {"name", "type"}:
            raise ValidationError(f"{where}: archive_member takes name and/or type (regular expressions)")
        compiled = {k: compile_regex(v, f"{where} {k}") for k, v in value.items()}
        return Item(kind, dict(value), compiled)
    if kind == "has":
        if value not in HAS_VALUES:
            raise ValidationError(f"{where}: has is one of {', '.join(HAS_VALUES)}")
        return Item(kind, value)
    raise ValidationError(f"{where}: unknown condition {kind!r} (one of {', '.join(WHAT_KINDS)})")


def _time(value: Any, where: str) -> int:
    m = _TIME_RE.match(str(value)) if isinstance(value, str) else None
    if m is None or (int(m.group(1)) == 24 and m.group(2) != "00"):
        raise ValidationError(f"{where}: {value!r} is not a time (HH:MM, 00:00 to 24:00)")
    return int(m.group(1)) * 60 + int(m.group(2))


def _when_item(kind: str, value: Any, where: str) -> Item:
    if kind != "frame":
        raise ValidationError(f"{where}: unknown condition {kind!r} (a time frame: frame)")
    if not isinstance(value, Mapping) or not set(value) <= {"days", "start", "end"}:
        raise ValidationError(f"{where}: a frame takes days, start and end")
    days = value.get("days", list(WEEKDAYS))
    if not isinstance(days, Sequence) or isinstance(days, str) or not days \
            or any(d not in WEEKDAYS for d in days):
        raise ValidationError(f"{where}: days are some of {', '.join(WEEKDAYS)}")
    start, end = _time(value.get("start", "00:00"), where), _time(value.get("end", "24:00"), where)
    if start == end:
        raise ValidationError(f"{where}: start and end are the same time")
    norm = {"days": [d for d in WEEKDAYS if d in days], "start": value.get("start", "00:00"),
            "end": value.get("end", "24:00")}
    return Item(kind, norm, (frozenset(WEEKDAYS.index(d) for d in days), start, end))


_ITEM_PARSERS = {"from": _who_item, "to": _who_item, "what": _what_item, "when": _when_item}


def _group(name: str, raw: Any) -> Group | None:
    where = f"{name}"
    if raw is None:
        return None
    if isinstance(raw, Sequence) and not isinstance(raw, str):
        raw = {"items": raw}
    if not isinstance(raw, Mapping) or not set(raw) <= {"match", "invert", "items"}:
        raise ValidationError(f"{where}: a group takes match (any/all), invert (true/false) and items")
    match = raw.get("match", "any")
    if match not in ("any", "all"):
        raise ValidationError(f"{where}: match is any or all")
    invert = raw.get("invert", False)
    if not isinstance(invert, bool):
        raise ValidationError(f"{where}: invert is true or false")
    items_raw = raw.get("items") or []
    if not isinstance(items_raw, Sequence) or isinstance(items_raw, str) or len(items_raw) > MAX_ITEMS:
        raise ValidationError(f"{where}: items is a list of at most {MAX_ITEMS} conditions")
    items = []
    for n, entry in enumerate(items_raw, start=1):
        kind, value = _one_key(entry, f"{where} item {n}")
        if name == "to" and kind == "ip":
            raise ValidationError(f"{where} item {n}: ip is the sending server's address; use it under from")
        items.append(_ITEM_PARSERS[name](kind, value, f"{where} item {n} ({kind})"))
    if not items:
        return None
    return Group(match, invert, tuple(items))


def _params(value: Any, allowed: Mapping[str, bool], where: str) -> dict[str, Any]:
    """An action's parameters: ``allowed`` maps each name to whether it is required."""
    value = {} if value is None else value
    if not isinstance(value, Mapping):
        raise ValidationError(f"{where}: parameters are a mapping")
    unknown = set(value) - set(allowed)
    if unknown:
        raise ValidationError(f"{where}: unknown parameter {sorted(unknown)[0]!r} (allowed: {', '.join(allowed)})")
    missing = [k for k, required in allowed.items() if required and k not in value]
    if missing:
        raise ValidationError(f"{where}: {missing[0]} is required")
    return dict(value)


def _choice(params: dict[str, Any], key: str, choices: Sequence[str], where: str) -> None:
    if params[key] not in choices:
        raise ValidationError(f"{where}: {key} is one of {', '.join(choices)}")


def _action(kind: str, value: Any, where: str) -> RuleAction:  # noqa: C901 - one branch per action kind
    if kind == "accept":
        p = _params(value, {}, where)
    elif kind == "block":
        p = {"mode": "reject"} | _params(value, {"mode": False, "message": False}, where)
        _choice(p, "mode", ("reject", "discard"), where)
        if "message" in p:
            p["message"] = check_template(p["message"], f"{where} message", limit=200, one_line=True)
    elif kind == "quarantine":
        p = {"kind": "spam"} | _params(value, {"kind": False, "reason": False}, where)
        _choice(p, "kind", ("spam", "attachment"), where)
        if "reason" in p:
            p["reason"] = check_template(p["reason"], f"{where} reason", limit=300, one_line=True)
    elif kind == "notify":
        p = _params(value, {"to": True, "subject": True, "body": True}, where)
        if p["to"] not in ("admin", "sender", "recipient") and not (
                isinstance(p["to"], str) and _ADDRESS_RE.match(p["to"])):
            raise ValidationError(f"{where}: to is admin, sender, recipient or a mail address")
        p["subject"] = check_template(p["subject"], f"{where} subject", limit=200, one_line=True)
        p["body"] = check_template(p["body"], f"{where} body")
    elif kind in ("add_header", "set_header", "remove_header"):
        p = _params(value, {"name": True, "value": kind != "remove_header"}, where)
        if not isinstance(p["name"], str) or not _HEADER_NAME_RE.match(p["name"]):
            raise ValidationError(f"{where}: {p['name']!r} is not a header name")
        if p["name"].lower().startswith("x-mailward-") or p["name"].lower() in ("received", "dkim-signature"):
            raise ValidationError(f"{where}: {p['name']} is Mailward's own or a trace header and cannot be changed")
        if "value" in p:
            p["value"] = check_template(p["value"], f"{where} value", limit=900, one_line=True)
    elif kind == "tag_subject":
        p = _params(value, {"tag": True}, where)
        p["tag"] = check_template(p["tag"], f"{where} tag", limit=60, one_line=True)
    elif kind == "disclaimer":
        p = {"position": "bottom", "signed": "skip"} | _params(
            value, {"text": True, "html": False, "position": False, "signed": False}, where)
        p["text"] = check_template(p["text"], f"{where} text")
        if p.get("html") is not None:
            p["html"] = check_template(p["html"], f"{where} html")
        _choice(p, "position", ("top", "bottom"), where)
        _choice(p, "signed", ("skip", "wrap"), where)
    elif kind == "remove_attachments":
        p = {"which": "matched", "replacement": "The attachment {filename} was removed.", "keep": True} | _params(
            value, {"which": False, "replacement": False, "keep": False}, where)
        _choice(p, "which", ("all", "matched"), where)
        p["replacement"] = check_template(p["replacement"], f"{where} replacement", limit=2000)
        if not isinstance(p["keep"], bool):
            raise ValidationError(f"{where}: keep is true or false")
    elif kind == "bcc":
        p = {"copy": "original"} | _params(value, {"to": True, "copy": False}, where)
        if not isinstance(p["to"], str) or not _ADDRESS_RE.match(p["to"]):
            raise ValidationError(f"{where}: to must be a mail address")
        p["to"] = p["to"].lower()
        _choice(p, "copy", ("original", "processed"), where)
    elif kind == "reroute":
        p = {"port": 25, "tls": "opportunistic"} | _params(value, {"host": True, "port": False, "tls": False}, where)
        if not isinstance(p["host"], str) or not (_DOMAIN_RE.match(p["host"]) or _is_ip(p["host"])):
            raise ValidationError(f"{where}: {p['host']!r} is not a host name or address")
        if isinstance(p["port"], bool) or not isinstance(p["port"], int) or not 1 <= p["port"] <= 65535:
            raise ValidationError(f"{where}: port is a number from 1 to 65535")
        _choice(p, "tls", ("none", "opportunistic", "required"), where)
    else:
        raise ValidationError(f"{where}: unknown action {kind!r} (one of {', '.join(ACTION_KINDS)})")
    return RuleAction(kind, p)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# Complexity (C901) by design: a parser: one branch per rule field.
def parse_rule(raw: Any, *, baseline: bool = False) -> RuleSpec:  # noqa: C901
    """A rule from its dict form (API body, YAML entry, form fields gathered); refuses anything it does not know."""
    if not isinstance(raw, Mapping):
        raise ValidationError("a rule is a mapping of name, priority, direction, groups and actions")
    known = {"name", "priority", "direction", "active", "match", "actions", *GROUPS}
    if baseline:
        known.add("locked")
    unknown = set(raw) - known
    if unknown:
        raise ValidationError(f"unknown rule field {sorted(unknown)[0]!r} (fields: {', '.join(sorted(known))})")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 100 or "\n" in name:
        raise ValidationError("name: a rule needs a name of at most 100 characters")
    where = f"rule {name.strip()!r}"
    priority = raw.get("priority", 50)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
        raise ValidationError(f"{where}: priority is a whole number from 0 to 100")
    direction = raw.get("direction", "inbound")
    if direction not in DIRECTIONS:
        raise ValidationError(f"{where}: direction is one of {', '.join(DIRECTIONS)}")
    active, locked = raw.get("active", True), raw.get("locked", False)
    if not isinstance(active, bool) or not isinstance(locked, bool):
        raise ValidationError(f"{where}: active and locked are true or false")
    match = raw.get("match", "all")
    if match not in ("all", "any"):
        raise ValidationError(f"{where}: match is all or any")
    groups = {}
    for gname in GROUPS:
        try:
            group = _group(gname, raw.get(gname))
        except ValidationError as exc:
            raise ValidationError(f"{where}: {exc}") from None
        if group is not None:
            groups[gname] = group
    actions_raw = raw.get("actions") or []
    if not isinstance(actions_raw, Sequence) or isinstance(actions_raw, str) or not actions_raw \
            or len(actions_raw) > MAX_ACTIONS:
        raise ValidationError(f"{where}: actions is a list of 1 to {MAX_ACTIONS} actions")
    actions = []
    for n, entry in enumerate(actions_raw, start=1):
        kind, value = _one_key(entry, f"{where} action {n}")
        actions.append(_action(kind, value, f"{where} action {n} ({kind})"))
    finals = [a.kind for a in actions if a.final]
    if len(finals) > 1:
        raise ValidationError(f"{where}: at most one of accept, block and quarantine ({', '.join(finals)} given)")
    kinds = [a.kind for a in actions]
    if kinds.count("reroute") > 1 or kinds.count("disclaimer") > 1:
        raise ValidationError(f"{where}: reroute and disclaimer may appear once each")
    if "block" in finals and set(kinds) - {"block", "notify"}:
        raise ValidationError(f"{where}: a blocked mail is not delivered; only notify may go with block")
    actions.sort(key=lambda a: ACTION_ORDER.index(a.kind))
    return RuleSpec(name.strip(), priority, direction, active, locked if baseline else False, match, groups,
                    tuple(actions))


def load_definition(name: str, priority: int, direction: str, active: bool, locked: bool, definition: str) -> RuleSpec:
    """A stored rule, parsed again (rows are written only through :func:`parse_rule`)."""
    body = json.loads(definition or "{}")
    return parse_rule({"name": name, "priority": priority, "direction": direction, "active": active,
                       "locked": locked} | body, baseline=True)
