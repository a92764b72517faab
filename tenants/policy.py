"""Policy the ingress consumes: which tenant owns a recipient domain, and its transport.

Lookups are one indexed query; the ingress caches positive answers and drops the cache when the policy version
in Redis changes (see :data:`POLICY_VERSION_KEY`), so a domain added (or verified) elsewhere takes effect at once
and a removal within one poll interval. Only routing domains count: an unproven claim is as good as unknown.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from tenants.exceptions import ValidationError
from tenants.models import Domain, PolicySettings, Tenant, utcnow
from tenants.presets import PRESET, PRESETS, PRESETS_KEY, chosen_preset, presets_of
from tenants.scope import msp_scope

#: Redis key counting policy changes; every change INCRs it and ingress replicas reload when it moves.
POLICY_VERSION_KEY = "mailward:policy_version"


@dataclass(frozen=True)
class DomainRoute:
    domain: str
    domain_id: int
    tenant_id: int
    transport_host: str
    transport_port: int
    transport_tls: str
    #: The MSP's CLI set the transport: connections to it skip the tenant egress policy (tenants.egress).
    transport_egress_exempt: bool = False


def routing_domain() -> ColumnElement[bool]:
    """The SQL condition of a domain that receives mail (and may be sent as): vouched for or verified."""
    return or_(Domain.vouched.is_(True), Domain.verified.is_(True))


def normalize_domain(domain: str) -> str:
    d = domain.strip().rstrip(".").lower()
    try:
        return d.encode("idna").decode("ascii")
    except UnicodeError:
        return d


def parent_domains(domain: str) -> list[str]:
    """``a.b.example`` → ``[a.b.example, b.example]``: the name and its parents down to two labels."""
    labels = normalize_domain(domain).split(".")
    return [".".join(labels[i:]) for i in range(max(len(labels) - 1, 1))]


def find_domain_route(session: Session, domain: str) -> DomainRoute | None:
    """The tenant and transport for a recipient domain, or None if no (active) tenant owns it.

    A domain routes only once the MSP vouched for it or its owner proved it (:attr:`Domain.routes`); until then it
    answers like an unknown domain, so a claim nobody proved neither receives mail nor tells that it exists.
    """
    name = normalize_domain(domain)
    with msp_scope():
        row = session.execute(
            select(Domain, Tenant.suspended).join(Tenant, Tenant.id == Domain.tenant_id)
            .where(Domain.name == name, routing_domain())
        ).first()
    if row is None or row[1]:
        return None
    d = row[0]
    return DomainRoute(d.name, d.id, d.tenant_id, d.transport_host, d.transport_port, d.transport_tls,
                       d.transport_egress_exempt)


# --- filtering policy ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    """What a tenant's mail is judged by: code defaults, overlaid by the MSP baseline, the tenant's preset
    (:mod:`tenants.presets`) and the tenant's own settings.

    Stored as JSON in :class:`tenants.models.PolicySettings`; :func:`load_policy` merges and validates.
    """

    #: Score at or above which a delivered mail is tagged (X-Mailward-Status: spam, optional subject prefix).
    tag_threshold: float = 5.0
    #: Score at or above which the mail goes to the spam quarantine.
    quarantine_threshold: float = 8.0
    #: Score at or above which the mail is rejected at DATA (when every recipient's tenant rejects).
    reject_threshold: float = 15.0
    #: Put in front of the subject of tagged mail; empty: the subject is left alone.
    subject_prefix: str = ""
    #: Symbol → score, replacing the shipped default (rspamd's model).
    scores: dict[str, float] = field(default_factory=dict)
    #: What a virus gets: "quarantine" or "reject". Never delivered.
    virus_action: str = "quarantine"
    #: What a dangerous attachment gets: "quarantine", "reject" or "tag".
    attachment_action: str = "quarantine"
    #: When a check that must not be skipped (virus) could not run: "tempfail" (451) or "accept" (scored, logged).
    scanner_unavailable: str = "tempfail"
    #: DNSBL hits of zones marked reject are refused at RCPT when this is on.
    dnsbl_reject: bool = True
    greylisting: bool = False
    #: Seconds a new triplet must wait before a retry is accepted.
    greylist_delay: int = 300
    #: Seconds a new triplet may wait for its retry before it is forgotten.
    greylist_retry_window: int = 4 * 3600
    #: Seconds a passed triplet (and its client network) stays allowed.
    greylist_pass_ttl: int = 36 * 86400
    #: Outbound mail at or above this score is held (quarantined) instead of sent.
    outbound_quarantine_threshold: float = 6.0
    #: Outbound recipients per sender address per hour, and per tenant per hour (a mail to N people counts N);
    #: beyond that 451 at MAIL FROM or RCPT.
    outbound_sender_hourly: int = 300
    outbound_tenant_hourly: int = 5000
    #: Minimum trained mails of each class before Bayes scores.
    bayes_min_trained: int = 200
    #: Days a quarantined mail is kept, per kind, before the purge job removes it.
    retention_spam_days: int = 14
    retention_virus_days: int = 30
    retention_attachment_days: int = 30
    #: Quarantine digests: on or off, the local hour they go out, the tenant's time zone (IANA name).
    digest_enabled: bool = True
    digest_hour: int = 8
    timezone: str = "UTC"
    #: Sender (From and envelope) of the tenant's digests; empty: the installation's postmaster address.
    digest_sender: str = ""

    def retention_days(self, kind: str) -> int:
        return {"virus": self.retention_virus_days, "attachment": self.retention_attachment_days}.get(
            kind, self.retention_spam_days)

    def score_of(self, symbol: str, default: float) -> float:
        return self.scores.get(symbol, default)


#: Keys the MSP baseline may forbid tenants to change (``locked`` in the baseline JSON).
POLICY_KEYS: tuple[str, ...] = tuple(f for f in Policy.__dataclass_fields__)
#: Stored keys that are not policy values: the baseline's locks, the preset pick, the baseline's preset definitions.
META_KEYS = frozenset({"locked", PRESET, PRESETS_KEY})
#: Stored keys that hold an object merged entry by entry (``scores.SYMBOL``, ``presets.NAME``).
NESTED_KEYS = ("scores", PRESETS_KEY)
_SENDER_RE = re.compile(r"^[^@\s<>]{1,64}@[^@\s<>]{1,253}$")
_CHOICES = {
    "virus_action": ("quarantine", "reject"),
    "attachment_action": ("quarantine", "reject", "tag"),
    "scanner_unavailable": ("tempfail", "accept"),
}


def policy_from(*layers: dict[str, Any]) -> Policy:
    """Merge settings layers (later wins; ``scores`` merge key by key) into a validated :class:`Policy`."""
    values, scores = _merged(layers)
    base = Policy()
    policy = Policy(**{key: _coerced(key, value, getattr(base, key)) for key, value in values.items()}, scores=scores)
    _check(policy)
    return policy


def _merged(layers: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], dict[str, float]]:
    """The settings of the layers, later ones winning, and their scores merged symbol by symbol."""
    values: dict[str, Any] = {}
    scores: dict[str, float] = {}
    for layer in layers:
        for key, value in layer.items():
            if key in META_KEYS:
                continue
            if key not in Policy.__dataclass_fields__:
                raise ValidationError(f"unknown policy setting {key!r}")
            if key == "scores":
                if not isinstance(value, dict):
                    raise ValidationError("scores must be an object of symbol: number")
                scores.update({str(k): float(v) for k, v in value.items()})
            else:
                values[key] = value
    return values, scores


def _coerced(key: str, value: Any, default: Any) -> Any:
    """One setting's value as the type of its default, within its choices."""
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError("must be true or false")
            out: Any = value
        elif isinstance(default, int):
            out = int(value)
            if out < 0:
                raise ValueError("must not be negative")
        elif isinstance(default, float):
            out = float(value)
        else:
            out = str(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"policy setting {key}: {exc}") from exc
    if key in _CHOICES and out not in _CHOICES[key]:
        raise ValidationError(f"policy setting {key}: one of {', '.join(_CHOICES[key])}")
    return out


def _check(policy: Policy) -> None:
    """What no single setting can check alone: the sender, the hour, the time zone, the threshold order."""
    if policy.digest_sender and not _SENDER_RE.match(policy.digest_sender):
        raise ValidationError(f"policy setting digest_sender: {policy.digest_sender!r} is not an e-mail address")
    if not 0 <= policy.digest_hour <= 23:
        raise ValidationError("policy setting digest_hour: an hour from 0 to 23")
    try:
        ZoneInfo(policy.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"policy setting timezone: {policy.timezone!r} is not an IANA time zone") from exc
    if not policy.tag_threshold <= policy.quarantine_threshold <= policy.reject_threshold:
        raise ValidationError("thresholds must satisfy tag <= quarantine <= reject")


def _settings_row(session: Session, tenant_id: int | None) -> PolicySettings | None:
    """The stored settings of a tenant (through the current scope) or of the MSP baseline (which every tenant reads)."""
    if tenant_id is None:
        with msp_scope():
            return session.scalar(select(PolicySettings).where(PolicySettings.tenant_id.is_(None)))
    return session.scalar(select(PolicySettings).where(PolicySettings.tenant_id == tenant_id))


def _settings_of(session: Session, tenant_id: int | None) -> dict[str, Any]:
    row = _settings_row(session, tenant_id)
    return dict(json.loads(row.settings)) if row is not None else {}


def policy_layers(baseline: dict[str, Any], own: dict[str, Any]) -> list[dict[str, Any]]:
    """The layers of a tenant's policy over the code defaults: the baseline, the tenant's preset, its own settings;
    keys the baseline locks only from the baseline."""
    locked = set(baseline.get("locked", ()))
    name = chosen_preset(baseline, own)
    if name not in PRESETS:
        raise ValidationError(f"policy setting preset: {name!r} is not one of {', '.join(PRESETS)}")
    preset = {k: v for k, v in presets_of(baseline)[name].items() if k not in locked}
    return [baseline, preset, {k: v for k, v in own.items() if k not in locked}]


def load_policy(session: Session, tenant_id: int) -> Policy:
    """The tenant's effective policy: defaults, the MSP baseline, the tenant's preset, then what the baseline lets
    the tenant change."""
    return policy_from(*policy_layers(_settings_of(session, None), _settings_of(session, tenant_id)))


def _check_presets(baseline: dict[str, Any]) -> None:
    """The baseline's preset definitions: known names, policy keys only, each a valid policy over the baseline."""
    stored = baseline.get(PRESETS_KEY, {})
    if not isinstance(stored, dict):
        raise ValidationError("presets must be an object of preset name: settings")
    for name, values in stored.items():
        if name not in PRESETS:
            raise ValidationError(f"presets: {name!r} is not one of {', '.join(PRESETS)}")
        if not isinstance(values, dict) or META_KEYS & set(values):
            raise ValidationError(f"preset {name}: an object of policy settings")
    for name in PRESETS:
        try:
            policy_from(*policy_layers(baseline, {PRESET: name}))
        except ValidationError as exc:
            raise ValidationError(f"preset {name}: {exc}") from None


def stored_settings(session: Session, tenant_id: int | None) -> dict[str, Any]:
    """The settings stored for a tenant (or the baseline for None), as saved: only what that layer sets."""
    return _settings_of(session, tenant_id)


def save_settings(session: Session, tenant_id: int | None, changes: dict[str, Any],
                  remove: tuple[str, ...] | list[str] = ()) -> Policy:
    """Merge ``changes`` into the stored settings of a tenant (or the baseline for None), validate, and stage it.

    ``remove``: keys this layer stops setting (the layer below applies again); ``scores.SYMBOL`` stops overriding
    one symbol's score, ``presets.NAME`` (baseline) brings back the shipped definition of a preset.
    """
    current = _settings_of(session, tenant_id)
    merged = {k: v for k, v in {**current, **changes}.items() if k not in remove}
    for nested in NESTED_KEYS:
        if isinstance(changes.get(nested), dict) and isinstance(current.get(nested), dict) and nested not in remove:
            merged[nested] = {**current[nested], **changes[nested]}
        dropped = {k.partition(".")[2] for k in remove if k.startswith(nested + ".")}
        if dropped and isinstance(merged.get(nested), dict):
            merged[nested] = {k: v for k, v in merged[nested].items() if k not in dropped}
            if not merged[nested]:
                del merged[nested]
    if PRESET in merged and merged[PRESET] not in PRESETS:
        raise ValidationError(f"policy setting preset: {merged[PRESET]!r} is not one of {', '.join(PRESETS)}")
    if tenant_id is None:
        _check_presets(merged)
        policy = policy_from(merged)
    else:
        if PRESETS_KEY in merged:
            raise ValidationError("presets are defined by the provider; a tenant picks one with preset")
        policy = policy_from(*policy_layers(_settings_of(session, None), merged))
    row = _settings_row(session, tenant_id)
    if row is None:
        row = PolicySettings(tenant_id=tenant_id)
        session.add(row)
    row.settings = json.dumps(merged, sort_keys=True)
    row.updated_at = utcnow()
    if tenant_id is None:
        with msp_scope():
            session.flush()
    return policy
