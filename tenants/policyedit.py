"""Editing policy settings from a form: the MSP baseline (and its locked keys) or one tenant's overrides.

A form sends text per key (``v_<key>``): a value sets the key in that layer, an empty value stops setting it (the
layer below applies again: the baseline for a tenant, the code default for the baseline), a key not sent is left
alone. A tenant may not change a key the baseline locks. A baseline change that would make a tenant's stored
overrides invalid (say a tag threshold above the tenant's quarantine threshold) is refused, naming the tenant, so
the ingress never meets a policy it cannot load. Symbol scores are edited the same way (``s_<SYMBOL>``): a number
overrides the shipped score (or the baseline's) in that layer, empty inherits again; the baseline may lock all score
overrides for tenants (``scores`` in ``locked``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants.exceptions import ValidationError
from tenants.models import PolicySettings, Tenant
from tenants.policy import (
    _CHOICES,
    Policy,
    load_policy,
    policy_from,
    save_settings,
    stored_settings,
)
from tenants.scope import msp_scope
from tenants.symbols import all_symbols, symbol_table

#: The settings the web pages edit, in the order shown, with their labels.
EDITABLE: dict[str, str] = {
    "tag_threshold": "Tag at score",
    "quarantine_threshold": "Quarantine at score",
    "reject_threshold": "Reject at score",
    "subject_prefix": "Subject prefix of tagged mail",
    "virus_action": "Virus",
    "attachment_action": "Dangerous attachment",
    "scanner_unavailable": "Virus scanner unavailable",
    "dnsbl_reject": "Refuse DNSBL hits at RCPT",
    "greylisting": "Greylisting",
    "greylist_delay": "Greylisting delay (seconds)",
    "greylist_retry_window": "Greylisting retry window (seconds)",
    "greylist_pass_ttl": "Greylisting pass lifetime (seconds)",
    "digest_enabled": "Quarantine digests",
    "digest_hour": "Digest hour (0-23, local)",
    "timezone": "Time zone",
    "digest_sender": "Digest sender",
    "retention_spam_days": "Keep quarantined spam (days)",
    "retention_virus_days": "Keep quarantined viruses (days)",
    "retention_attachment_days": "Keep quarantined attachments (days)",
}
#: Form field name of a key.
FIELD_PREFIX = "v_"
#: Form field name of a symbol's score override.
SCORE_PREFIX = "s_"
#: The policy key holding symbol score overrides; lockable as a whole.
SCORES = "scores"
#: What the baseline may lock: every setting on the page, and the score overrides as a whole.
LOCKABLE = frozenset(EDITABLE) | {SCORES}
#: Largest score override either way (the virus symbol ships at +100; beyond this is a typo, not a policy).
MAX_SCORE = 1000.0
#: Longest subject prefix: a tag like "[SPAM]", not a sentence (it goes in front of every tagged mail's Subject).
MAX_SUBJECT_PREFIX = 64
#: What a tenant sees as the source of a value.
DEFAULT, BASELINE, TENANT = "default", "baseline", "tenant"


@dataclass(frozen=True)
class Setting:
    key: str
    label: str
    #: bool, choice, int, float or text.
    kind: str
    choices: tuple[str, ...]
    #: The value in effect, as text.
    effective: str
    #: This layer's own value as form text ("" when the layer does not set it).
    own: str
    #: Where the effective value comes from: default, baseline or tenant.
    source: str
    locked: bool


@dataclass(frozen=True)
class ScoreRow:
    """One symbol on a policy page: its shipped score, the baseline's and this layer's override, the one in effect."""

    symbol: str
    description: str
    default: str
    #: The baseline's override as text ("" when it sets none).
    baseline: str
    #: This layer's own override as form text ("" when it sets none; for the baseline page, the baseline's).
    own: str
    effective: str


def _kind(key: str) -> str:
    if key in _CHOICES:
        return "choice"
    default = getattr(Policy(), key)
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    return "text"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    return "" if value is None else str(value)


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
        if raw not in _CHOICES[key]:
            raise ValidationError(f"{label}: one of {', '.join(_CHOICES[key])}")
        return raw
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
    else:
        own, effective = stored_settings(session, tenant_id), asdict(load_policy(session, tenant_id))
    out = []
    for key, label in EDITABLE.items():
        if tenant_id is not None and key in own and key not in locked:
            source = TENANT
        elif key in baseline:
            source = BASELINE
        else:
            source = DEFAULT
        out.append(Setting(key, label, _kind(key), _CHOICES.get(key, ()), _text(effective[key]),
                           _text(own.get(key)), source, key in locked))
    return out


def _scores(settings: Mapping[str, Any]) -> dict[str, float]:
    value = settings.get(SCORES, {})
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else {}


def scores_view(session: Session, tenant_id: int | None) -> list[ScoreRow]:
    """Every shipped symbol (and any other with an override, SpamAssassin's rules included), by name, for the
    baseline (None) or a tenant."""
    baseline = _scores(stored_settings(session, None))
    own = baseline if tenant_id is None else _scores(stored_settings(session, tenant_id))
    shipped_names = set(symbol_table())
    table = all_symbols()
    tenant_counts = tenant_id is not None and SCORES not in locked_keys(session)
    rows = []
    for name in sorted(shipped_names | set(baseline) | set(own)):
        shipped = table[name].score if name in table else 0.0
        effective = own[name] if tenant_counts and name in own else baseline.get(name, shipped)
        rows.append(ScoreRow(name, table[name].description if name in table else "", _text(shipped),
                             _text(baseline.get(name)), _text(own.get(name)), _text(effective)))
    return rows


def _score_changes(form: Mapping[str, str], own: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """The score overrides a form sets and the ones it clears (fields ``s_<SYMBOL>``; a symbol not sent is kept)."""
    known = set(all_symbols()) | set(own)
    changes: dict[str, float] = {}
    cleared: list[str] = []
    for name, raw in form.items():
        if not name.startswith(SCORE_PREFIX):
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


def _check_tenants_still_load(session: Session) -> None:
    """Every tenant's stored overrides must still make a valid policy over the (staged) baseline."""
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


def apply_form(session: Session, tenant_id: int | None, form: Mapping[str, str],
               locked: Sequence[str] | None = None) -> list[str]:
    """Stage the changes a form asks for; returns what changed (``key=value``, ``key inherited``), [] for nothing.

    ``locked``: for the baseline, which of :data:`EDITABLE` tenants may not change (None leaves the locks alone).
    """
    own = stored_settings(session, tenant_id)
    locked_now = set(locked_keys(session))
    changes: dict[str, Any] = {}
    remove: list[str] = []
    described: list[str] = []
    for key in EDITABLE:
        name = FIELD_PREFIX + key
        if name not in form:
            continue
        raw = form[name].strip()
        if raw == "":
            if key in own:
                remove.append(key)
                described.append(f"{key} {'inherited' if tenant_id is not None else 'default'}")
            continue
        value = parse(key, raw)
        if key in own and own[key] == value:
            continue
        changes[key] = value
        described.append(f"{key}={_text(value)}")
    score_changes, score_cleared = _score_changes(form, _scores(own))
    if score_changes:
        changes[SCORES] = score_changes
        described += [f"{SCORES}.{k}={_text(v)}" for k, v in sorted(score_changes.items())]
    if score_cleared:
        remove += [f"{SCORES}.{k}" for k in score_cleared]
        described += [f"{SCORES}.{k} {'inherited' if tenant_id is not None else 'default'}" for k in score_cleared]
    if tenant_id is not None:
        refused = sorted({k.partition(".")[0] for k in [*changes, *remove]} & locked_now)
        if refused:
            raise ValidationError(f"locked by your provider: {', '.join(refused)}")
    if locked is not None:
        unknown = sorted(set(locked) - LOCKABLE)
        if unknown:
            raise ValidationError(f"cannot lock unknown setting(s): {', '.join(unknown)}")
        # Locks on keys the page does not show (set with the CLI) stay as they are.
        new_locked = sorted(set(locked) | (locked_now - LOCKABLE))
        if new_locked != sorted(locked_now):
            changes["locked"] = new_locked
            described.append(f"locked={','.join(new_locked) or '-'}")
    if not described:
        return []
    save_settings(session, tenant_id, changes, remove)
    if tenant_id is None:
        _check_tenants_still_load(session)
    return described
