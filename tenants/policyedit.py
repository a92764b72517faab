"""Editing policy settings from a form: the MSP baseline (its locks and preset definitions) or one tenant's settings.

A form sends text per key (``v_<key>``): a value sets the key in that layer, an empty value stops setting it (the
layer below applies again: the preset and the baseline for a tenant, the code default for the baseline), a key not
sent is left alone, and a key sent as the page showed it (its ``was_v_<key>`` twin) is not a change. Durations are
text in human units (``5m``, ``30d``, :mod:`tenants.durations`). A tenant may not change a key the baseline locks.
A baseline change that would make a tenant's stored settings or a preset invalid (say a tag threshold above the
tenant's quarantine threshold) is refused, naming the tenant or preset, so the ingress never meets a policy it
cannot load. The page has sections (:data:`SECTIONS`), each saved on its own; a section's lock boxes change only its
own locks. Symbol scores (``s_<SYMBOL>``) are edited the same way (:mod:`tenants.policyscores`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants.durations import format_duration, parse_duration
from tenants.exceptions import ValidationError
from tenants.models import PolicySettings, Tenant
from tenants.policy import _CHOICES, Policy, load_policy, policy_from, policy_layers, save_settings, stored_settings
from tenants.policyscores import SCORE_PREFIX as SCORE_PREFIX  # re-exported: forms and the CLI name score fields
from tenants.policyscores import SCORES, score_changes, scores_of, unchanged
from tenants.presets import DESCRIPTIONS, PRESET, PRESETS, PRESETS_KEY, SHIPPED_PRESETS, chosen_preset, presets_of
from tenants.scope import msp_scope

#: The settings the web pages edit, with their labels.
EDITABLE: dict[str, str] = {
    PRESET: "Preset",
    "tag_threshold": "Tag at score",
    "quarantine_threshold": "Quarantine at score",
    "reject_threshold": "Reject at score",
    "subject_prefix": "Subject prefix of tagged mail",
    "virus_action": "Virus",
    "attachment_action": "Dangerous attachment",
    "scanner_unavailable": "Virus scanner unavailable",
    "dnsbl_reject": "Refuse DNSBL hits at RCPT",
    "greylisting": "Greylisting",
    "greylist_delay": "Greylist delay",
    "greylist_retry_window": "Greylist retry window",
    "greylist_pass_ttl": "Greylist pass lifetime",
    "outbound_quarantine_threshold": "Hold outbound mail at score",
    "outbound_sender_hourly": "Outbound recipients per sender and hour",
    "outbound_tenant_hourly": "Outbound recipients per tenant and hour",
    "digest_enabled": "Quarantine digests",
    "digest_hour": "Digest hour (0-23, local)",
    "timezone": "Time zone",
    "digest_sender": "Digest sender",
    "retention_spam_days": "Keep quarantined spam",
    "retention_virus_days": "Keep quarantined viruses",
    "retention_attachment_days": "Keep quarantined attachments",
}
#: The sections of the policy page, each with its own Save: id → (title, keys).
SECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "preset": ("Preset", (PRESET,)),
    "scoring": ("Spam scores", ("tag_threshold", "quarantine_threshold", "reject_threshold", "subject_prefix")),
    "malware": ("Viruses and attachments", ("virus_action", "attachment_action", "scanner_unavailable")),
    "senders": ("Greylisting and blocklists", ("dnsbl_reject", "greylisting", "greylist_delay",
                                               "greylist_retry_window", "greylist_pass_ttl")),
    "outbound": ("Outbound mail", ("outbound_quarantine_threshold", "outbound_sender_hourly",
                                   "outbound_tenant_hourly")),
    "digests": ("Quarantine digests", ("digest_enabled", "digest_hour", "timezone", "digest_sender")),
    "retention": ("Quarantine retention", ("retention_spam_days", "retention_virus_days",
                                           "retention_attachment_days")),
}
#: Sections shown open; the others are folded (a <details>) until opened, saved or in error.
OPEN_SECTIONS = ("preset", "scoring", "malware")
#: Lock scope of the symbol-scores page.
ADVANCED = "advanced"
#: Settings shown as durations, with the unit they are stored in (``s`` seconds, ``d`` days).
DURATIONS: dict[str, str] = {"greylist_delay": "s", "greylist_retry_window": "s", "greylist_pass_ttl": "s",
                             "retention_spam_days": "d", "retention_virus_days": "d", "retention_attachment_days": "d"}
#: What a preset definition on the console page can set (a definition stored with other keys keeps them).
PRESET_KEYS: tuple[str, ...] = ("tag_threshold", "quarantine_threshold", "reject_threshold", "virus_action",
                                "attachment_action", "dnsbl_reject", "greylisting", "greylist_delay",
                                "outbound_quarantine_threshold")
#: Form field name of a key; of a preset definition's key (``p_strict.tag_threshold``).
FIELD_PREFIX, PRESET_FIELD_PREFIX = "v_", "p_"
#: What the baseline may lock: every setting on the page, and the score overrides as a whole.
LOCKABLE = frozenset(EDITABLE) | {SCORES}
#: Longest subject prefix: a tag like "[SPAM]", not a sentence (it goes in front of every tagged mail's Subject).
MAX_SUBJECT_PREFIX = 64
#: What a tenant sees as the source of a value.
DEFAULT, BASELINE, FROM_PRESET, TENANT = "default", "baseline", "preset", "tenant"
_ALL_CHOICES: dict[str, tuple[str, ...]] = {**_CHOICES, PRESET: PRESETS}


@dataclass(frozen=True)
class Setting:
    key: str
    label: str
    #: bool, choice, int, float, duration or text.
    kind: str
    choices: tuple[str, ...]
    #: The value in effect, as text.
    effective: str
    #: This layer's own value as form text ("" when the layer does not set it).
    own: str
    #: Where the effective value comes from: default, baseline, preset or tenant.
    source: str
    locked: bool


@dataclass(frozen=True)
class PresetView:
    """One preset as the pages show it: what it means and what it sets under the current baseline."""

    name: str
    description: str
    #: (label, value) of every setting it sets, in page order (keys locked by the baseline left out).
    sets: list[tuple[str, str]]
    #: key → value as form text, for the console's definitions table.
    values: dict[str, str]
    #: The MSP changed it from the shipped definition.
    redefined: bool


def _kind(key: str) -> str:
    if key in _ALL_CHOICES:
        return "choice"
    if key in DURATIONS:
        return "duration"
    default = getattr(Policy(), key)
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    return "text"


def text_of(key: str, value: Any) -> str:
    """A stored value as the page shows it (durations in human units)."""
    if value is None:
        return ""
    if key in DURATIONS and isinstance(value, int) and not isinstance(value, bool):
        return format_duration(value, unit=DURATIONS[key])
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    return str(value)


def _shown(key: str, value: Any) -> str:
    """A value for reading in a sentence: on/off for switches."""
    return {"true": "on", "false": "off"}.get(text_of(key, value), text_of(key, value))


def check_subject_prefix(value: str) -> str:
    """``value`` if it may go in front of a Subject: one line of printable characters, at most
    :data:`MAX_SUBJECT_PREFIX`; a CR or LF would end the Subject and start a header field of the editor's choosing
    in every tagged mail (header injection), so line breaks and other control characters are refused."""
    label = EDITABLE["subject_prefix"]
    if len(value) > MAX_SUBJECT_PREFIX:
        raise ValidationError(f"{label}: at most {MAX_SUBJECT_PREFIX} characters")
    if not value.isprintable():
        raise ValidationError(f"{label}: one line of text, without line breaks, tabs or control characters")
    return value


def parse(key: str, raw: str) -> Any:
    """The typed value of a form's text for a key; :class:`ValidationError` with the label when it is not one."""
    label = EDITABLE.get(key, key)
    raw = raw.strip()
    kind = _kind(key)
    if kind == "bool":
        if raw.lower() not in ("true", "false"):
            raise ValidationError(f"{label}: choose on or off")
        return raw.lower() == "true"
    if kind == "choice":
        if raw not in _ALL_CHOICES[key]:
            raise ValidationError(f"{label}: one of {', '.join(_ALL_CHOICES[key])}")
        return raw
    if kind == "duration":
        return parse_duration(raw, label, unit=DURATIONS[key])
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ValidationError(f"{label}: {raw!r} is not a whole number") from None
    if kind == "float":
        try:
            value = float(raw)
        except ValueError:
            raise ValidationError(f"{label}: {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise ValidationError(f"{label}: {raw!r} is not a number")
        return value
    if key == "subject_prefix":
        return check_subject_prefix(raw)
    return raw


def locked_keys(session: Session) -> list[str]:
    return [k for k in stored_settings(session, None).get("locked", ()) if isinstance(k, str)]


def settings_view(session: Session, tenant_id: int | None) -> list[Setting]:
    """Every editable setting of the baseline (None) or a tenant: effective value, own value, source, locked."""
    baseline = stored_settings(session, None)
    locked = set(locked_keys(session))
    if tenant_id is None:
        own, effective = baseline, asdict(policy_from(baseline))
        effective[PRESET] = chosen_preset(baseline, {})
        preset: dict[str, Any] = {}
    else:
        own = stored_settings(session, tenant_id)
        effective = asdict(policy_from(*policy_layers(baseline, own)))
        effective[PRESET] = chosen_preset(baseline, own)
        preset = policy_layers(baseline, own)[1]
    out = []
    for key, label in EDITABLE.items():
        if tenant_id is not None and key in own and key not in locked:
            source = TENANT
        elif key in preset:
            source = FROM_PRESET
        elif key in baseline:
            source = BASELINE
        else:
            source = DEFAULT
        out.append(Setting(key, label, _kind(key), _ALL_CHOICES.get(key, ()), text_of(key, effective[key]),
                           text_of(key, own.get(key)), source, key in locked))
    return out


def sections_view(settings: list[Setting]) -> list[tuple[str, str, list[Setting]]]:
    """The settings by page section: (id, title, settings)."""
    by_key = {s.key: s for s in settings}
    return [(sid, title, [by_key[k] for k in keys]) for sid, (title, keys) in SECTIONS.items()]


def presets_view(session: Session) -> list[PresetView]:
    """Each preset under the current baseline (locked keys left out of what it sets: the baseline's value holds)."""
    baseline = stored_settings(session, None)
    locked = set(locked_keys(session))
    stored = baseline.get(PRESETS_KEY, {})
    out = []
    for name, values in presets_of(baseline).items():
        sets = [(EDITABLE.get(k, k), _shown(k, values[k])) for k in EDITABLE if k in values and k not in locked]
        sets += [(k, _shown(k, v)) for k, v in values.items() if k not in EDITABLE and k not in locked]
        out.append(PresetView(name, DESCRIPTIONS[name], sets, {k: text_of(k, v) for k, v in values.items()},
                              isinstance(stored, dict) and name in stored))
    return out


def _check_tenants_still_load(session: Session) -> None:
    """Every tenant's stored settings must still make a valid policy over the (staged) baseline."""
    with msp_scope():
        session.flush()
        rows = session.execute(select(PolicySettings.tenant_id, Tenant.name)
                               .join(Tenant, Tenant.id == PolicySettings.tenant_id)
                               .where(PolicySettings.tenant_id.is_not(None))).all()
        for tenant_id, name in rows:
            if tenant_id is None:
                continue
            try:
                load_policy(session, tenant_id)
            except ValidationError as exc:
                raise ValidationError(f"this would make tenant {name}'s policy invalid: {exc}") from None


def _locks(locked: Sequence[str], scope: Sequence[str] | None, locked_now: set[str]) -> list[str] | None:
    """The new lock list when a form's lock boxes (``locked``, ticked among ``scope``) change it, else None."""
    unknown = sorted(set(locked) - LOCKABLE)
    if unknown:
        raise ValidationError(f"cannot lock unknown setting(s): {', '.join(unknown)}")
    shown = LOCKABLE if scope is None else set(scope) & LOCKABLE
    # Locks outside the form's scope (another section's, or keys set with the CLI) stay as they are.
    new_locked = sorted((locked_now - shown) | set(locked))
    return new_locked if new_locked != sorted(locked_now) else None


def apply_form(session: Session, tenant_id: int | None, form: Mapping[str, str],
               locked: Sequence[str] | None = None, lock_scope: Sequence[str] | None = None) -> list[str]:
    """Stage the changes a form asks for; returns what changed (``key=value``, ``key inherited``), [] for nothing.

    ``locked``: for the baseline, the ticked lock boxes (None leaves the locks alone); ``lock_scope``: the keys
    whose lock boxes the form showed (None: every lockable key).
    """
    own = stored_settings(session, tenant_id)
    locked_now = set(locked_keys(session))
    changes: dict[str, Any] = {}
    remove: list[str] = []
    described: list[str] = []
    inherited = "inherited" if tenant_id is not None else "default"
    for key in EDITABLE:
        name = FIELD_PREFIX + key
        if name not in form or unchanged(form, name):
            continue
        raw = form[name].strip()
        if raw == "":
            if key in own:
                remove.append(key)
                described.append(f"{key} {inherited}")
            continue
        value = parse(key, raw)
        if key in own and own[key] == value:
            continue
        changes[key] = value
        described.append(f"{key}={text_of(key, value)}")
    new_scores, cleared = score_changes(form, scores_of(own))
    if new_scores:
        changes[SCORES] = new_scores
        described += [f"{SCORES}.{k}={text_of(SCORES, v)}" for k, v in sorted(new_scores.items())]
    if cleared:
        remove += [f"{SCORES}.{k}" for k in cleared]
        described += [f"{SCORES}.{k} {inherited}" for k in cleared]
    if tenant_id is not None:
        refused = sorted({k.partition(".")[0] for k in [*changes, *remove]} & locked_now)
        if refused:
            raise ValidationError(f"locked by your provider: {', '.join(refused)}")
    if locked is not None:
        new_locked = _locks(locked, lock_scope, locked_now)
        if new_locked is not None:
            changes["locked"] = new_locked
            described.append(f"locked={','.join(new_locked) or '-'}")
    if not described:
        return []
    save_settings(session, tenant_id, changes, remove)
    if tenant_id is None:
        _check_tenants_still_load(session)
    return described


def apply_presets_form(session: Session, form: Mapping[str, str]) -> list[str]:
    """Stage the MSP's preset definitions from the console form (``p_<preset>.<key>``; empty: the preset does not
    set it; ``restore=<preset>``: the shipped definition again); returns what changed, [] for nothing."""
    baseline = stored_settings(session, None)
    current = presets_of(baseline)
    stored = baseline.get(PRESETS_KEY, {}) if isinstance(baseline.get(PRESETS_KEY), dict) else {}
    changes: dict[str, dict[str, Any]] = {}
    remove: list[str] = []
    described: list[str] = []
    restore = form.get("restore", "")
    if restore:
        if restore not in PRESETS:
            raise ValidationError(f"no preset {restore!r}")
        if restore in stored:
            remove.append(f"{PRESETS_KEY}.{restore}")
            described.append(f"{PRESETS_KEY}.{restore} shipped")
    for name in PRESETS:
        if name == restore:
            continue
        values = dict(current[name])
        for key in PRESET_KEYS:
            field = f"{PRESET_FIELD_PREFIX}{name}.{key}"
            if field not in form or unchanged(form, field):
                continue
            raw = form[field].strip()
            if raw == "":
                if values.pop(key, None) is not None:
                    described.append(f"{PRESETS_KEY}.{name}.{key} unset")
                continue
            value = parse(key, raw)
            if values.get(key) != value:
                values[key] = value
                described.append(f"{PRESETS_KEY}.{name}.{key}={text_of(key, value)}")
        if values == current[name]:
            continue
        if values == SHIPPED_PRESETS[name]:
            remove.append(f"{PRESETS_KEY}.{name}")  # back to the shipped definition: stop storing a copy
        else:
            changes[name] = values
    if not described:
        return []
    save_settings(session, None, {PRESETS_KEY: changes} if changes else {}, remove)
    _check_tenants_still_load(session)
    return described
