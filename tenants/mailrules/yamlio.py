"""Mail rules as YAML files (``mailward rules export|import``), and the lookups the interfaces share.

An export is a YAML list of rules in :meth:`~tenants.mailrules.schema.RuleSpec.as_dict` form, in evaluation order,
under a comment naming whose rules they are: a tenant's own rules only (its provider's are not its to export), or
the MSP's baseline with ``locked``. An import parses and checks every rule first and writes nothing when one is
wrong (the message names the rule and the field); then rules are matched by name: a known name is updated, a new one
added, and with ``replace`` the level's rules the file does not name are removed. Export, import, export gives the
same text. JSON is YAML, so a JSON file imports too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from sqlalchemy.orm import Session

from tenants.exceptions import NotFound, PermissionDenied, ValidationError
from tenants.mailrules.schema import RuleSpec, parse_rule
from tenants.mailrules.service import (
    MAX_RULES,
    RuleView,
    add_rule,
    check_spec,
    parse_rule_list,
    remove_rule,
    rule_views,
    update_rule,
)
from tenants.platform.config import Config

#: Largest rule file or rule text accepted (a rule set of :data:`MAX_RULES` rules fits with room to spare).
MAX_TEXT = 2_000_000


@dataclass(frozen=True)
class ImportCounts:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0

    def summary(self) -> str:
        return f"{self.added} added, {self.updated} updated, {self.removed} removed, {self.unchanged} unchanged"


def load_text(text: str) -> Any:
    """YAML (or JSON) text as data; a syntax error becomes a :class:`ValidationError` with its line."""
    if len(text) > MAX_TEXT:
        raise ValidationError(f"the rule text is longer than {MAX_TEXT} characters")
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValidationError(f"invalid YAML{where}: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ValidationError(f"invalid YAML: {exc}") from None


def load_rule(text: str) -> dict[str, Any]:
    """One rule's dict form from YAML or JSON text (the web form's textarea, ``rules add --file``); not yet checked."""
    raw = load_text(text)
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    if not isinstance(raw, dict):
        raise ValidationError("a rule is a mapping of name, priority, direction, groups and actions")
    return raw


def dump_rule(view: RuleView) -> str:
    """One rule as YAML (what the edit form starts from)."""
    return yaml.safe_dump(view.spec.as_dict(baseline=view.baseline), sort_keys=False, allow_unicode=True,
                          default_flow_style=False, width=100)


# --- lookups the web pages, the API and the CLI share --------------------------------------------------------------

def find_view(session: Session, cfg: Config, rule_id: int, tenant_id: int | None) -> RuleView:
    """One rule of the list the caller sees (a tenant: the baseline and its own; the MSP: the baseline); any other
    id, another tenant's included, is :class:`NotFound`."""
    for view in rule_views(session, cfg, tenant_id):
        if view.id == rule_id:
            return view
    raise NotFound(f"no rule {rule_id}")


def editable_view(session: Session, cfg: Config, rule_id: int, tenant_id: int | None) -> RuleView:
    """A rule the caller may edit or remove: a tenant is refused its provider's rules (403, they are only seen and,
    unless locked, disabled), the MSP has only the baseline."""
    view = find_view(session, cfg, rule_id, tenant_id)
    if tenant_id is not None and view.baseline:
        if view.spec.locked:
            raise PermissionDenied(f"rule {view.spec.name!r} is locked by your provider: it cannot be changed here")
        raise PermissionDenied(f"rule {view.spec.name!r} is your provider's: it cannot be changed here (you may "
                               "disable it for your tenant)")
    return view


# --- export and import ----------------------------------------------------------------------------------------------

def _header(session: Session, tenant_id: int | None) -> str:
    if tenant_id is None:
        return ("# Mailward MSP baseline mail rules: every tenant inherits them (locked: a tenant cannot disable or\n"
                "# outrank the rule). Import with: mailward rules import msp FILE [--replace]\n")
    from tenants.services import get_tenant

    tenant = get_tenant(session, tenant_id)
    return (f"# Mailward mail rules of tenant {tenant.name} (id {tenant.id}); your provider's baseline rules are not\n"
            f"# included. Import with: mailward rules import {tenant.id} FILE [--replace]\n")


def own_views(session: Session, cfg: Config, tenant_id: int | None) -> list[RuleView]:
    """The rules of one level only, in evaluation order: a tenant's own, or the baseline (``tenant_id`` None)."""
    return [v for v in rule_views(session, cfg, tenant_id) if v.baseline == (tenant_id is None)]


def export_rules(session: Session, cfg: Config, tenant_id: int | None) -> str:
    """The level's rules as YAML text, headed by a comment naming the tenant (or the MSP's baseline)."""
    baseline = tenant_id is None
    rules = [v.spec.as_dict(baseline=baseline) for v in own_views(session, cfg, tenant_id)]
    body = yaml.safe_dump(rules, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100) \
        if rules else "[]\n"
    return _header(session, tenant_id) + body


def parse_rules(cfg: Config, text: str, tenant_id: int | None) -> list[RuleSpec]:
    """Every rule of a file, checked; the first problem is a :class:`ValidationError` naming the entry and rule."""
    raw = load_text(text)
    if raw is None:
        raw = []

    def checked(entry: Any) -> RuleSpec:
        spec = parse_rule(entry, baseline=tenant_id is None)
        check_spec(cfg, spec, tenant_id=tenant_id)
        return spec

    return parse_rule_list(raw, checked, kind="a rule file", entry="entry", where="file")


def import_rules(session: Session, cfg: Config, text: str, tenant_id: int | None, *, actor: str,
                 replace: bool = False) -> ImportCounts:
    """Add or update the file's rules at one level (by name), and with ``replace`` remove the level's rules the
    file does not name. Nothing is written when any rule is wrong; the caller commits (or rolls back on error)."""
    specs = parse_rules(cfg, text, tenant_id)
    baseline = tenant_id is None
    existing = {v.spec.name.lower(): v for v in own_views(session, cfg, tenant_id)}
    wanted = {s.name.lower() for s in specs}
    kept = len([n for n in existing if n in wanted or not replace])
    if kept + len(wanted - set(existing)) > MAX_RULES:
        raise ValidationError(f"at most {MAX_RULES} rules")
    removed = 0
    if replace:
        for name, view in existing.items():
            if name not in wanted:
                remove_rule(session, cfg, view.id, tenant_id=tenant_id, actor=actor)
                removed += 1
    added = updated = unchanged = 0
    for spec in specs:
        raw = spec.as_dict(baseline=baseline)
        old = existing.get(spec.name.lower())
        if old is None:
            add_rule(session, cfg, raw, tenant_id=tenant_id, actor=actor)
            added += 1
        elif old.spec.as_dict(baseline=baseline) == raw:
            unchanged += 1  # no audit entry, no reload for a rule the file leaves as it is
        else:
            update_rule(session, cfg, old.id, raw, tenant_id=tenant_id, actor=actor)
            updated += 1
    return ImportCounts(added, updated, removed, unchanged)
