"""``mailward rules``: mail rules of a tenant, or the MSP's baseline (``msp``), on the command line.

Registered in :mod:`mailward.cli` with ``cli.add_command(rules)``. ``TENANT`` is a tenant's name or id, or ``msp`` for
the baseline every tenant inherits. A tenant's list shows its provider's rules too (marked ``msp``); disabling an
unlocked one opts the tenant out of it, a locked one is refused. Every change goes through
:mod:`tenants.mailrules.service` (audited as ``cli``, the ingresses reload after the commit). Errors exit 1 with the
message.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import click
from sqlalchemy.orm import Session

from mailward.clicommon import CLI_ACTOR, db_session
from tenants.platform.config import Config, get_config

#: What names the MSP's baseline where a tenant is expected.
MSP_REF = "msp"


@click.group()
def rules() -> None:
    """Mail rules (who / what / when → actions): a tenant's, or the MSP's baseline ("msp")."""


@contextmanager
def _level(tenant_ref: str) -> Iterator[tuple[Session, Config, int | None]]:
    """A session (committed on success) in the scope of the named tenant, or the MSP's for ``msp``."""
    from tenants.scope import tenant_scope
    from tenants.services import get_tenant

    cfg = get_config()
    with db_session(cfg) as session:
        tenant_id = None if tenant_ref.strip().lower() == MSP_REF else get_tenant(session, tenant_ref).id
        with tenant_scope(tenant_id) if tenant_id is not None else nullcontext():
            yield session, cfg, tenant_id


def _read(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from None


@rules.command("list")
@click.argument("tenant_ref", metavar="TENANT|msp")
def rules_list(tenant_ref: str) -> None:
    """The rules in evaluation order: id, priority, name, direction, state, level (msp, locked), hits."""
    from tenants.mailrules.service import rule_views

    with _level(tenant_ref) as (session, cfg, tenant_id):
        for v in rule_views(session, cfg, tenant_id):
            state = "opted-out" if v.opted_out else ("active" if v.spec.active else "inactive")
            level = ("msp,locked" if v.spec.locked else "msp") if v.baseline else "own"
            click.echo(f"{v.id}\t{v.spec.priority}\t{v.spec.name}\t{v.spec.direction}\t{state}\t{level}\t{v.hits}")


@rules.command("add")
@click.argument("tenant_ref", metavar="TENANT|msp")
@click.option("--file", "path", required=True, metavar="FILE", help="One rule in YAML or JSON (- for stdin).")
def rules_add(tenant_ref: str, path: str) -> None:
    """Add one rule from a YAML or JSON file."""
    from tenants.mailrules.service import add_rule
    from tenants.mailrules.yamlio import load_rule

    raw = load_rule(_read(path))
    with _level(tenant_ref) as (session, cfg, tenant_id):
        row = add_rule(session, cfg, raw, tenant_id=tenant_id, actor=CLI_ACTOR)
        rule_id, name = row.id, row.name
    click.echo(f"rule {rule_id} {name!r} added")


@rules.command("remove")
@click.argument("tenant_ref", metavar="TENANT|msp")
@click.argument("ref", metavar="NAME_OR_ID")
def rules_remove(tenant_ref: str, ref: str) -> None:
    """Remove a rule (a tenant cannot remove its provider's rules: disable an unlocked one instead)."""
    from tenants.mailrules.service import find_rule_id, remove_rule

    with _level(tenant_ref) as (session, cfg, tenant_id):
        name = remove_rule(session, cfg, find_rule_id(session, ref, tenant_id), tenant_id=tenant_id, actor=CLI_ACTOR)
    click.echo(f"rule {name!r} removed")


def _set_active(tenant_ref: str, ref: str, active: bool) -> None:
    from tenants.mailrules.service import find_rule_id, set_active

    with _level(tenant_ref) as (session, cfg, tenant_id):
        name = set_active(session, cfg, find_rule_id(session, ref, tenant_id), active, tenant_id=tenant_id,
                          actor=CLI_ACTOR)
    click.echo(f"rule {name!r} {'enabled' if active else 'disabled'}")


@rules.command("enable")
@click.argument("tenant_ref", metavar="TENANT|msp")
@click.argument("ref", metavar="NAME_OR_ID")
def rules_enable(tenant_ref: str, ref: str) -> None:
    """Enable a rule (for a tenant and its provider's rule: end its opt-out)."""
    _set_active(tenant_ref, ref, True)


@rules.command("disable")
@click.argument("tenant_ref", metavar="TENANT|msp")
@click.argument("ref", metavar="NAME_OR_ID")
def rules_disable(tenant_ref: str, ref: str) -> None:
    """Disable a rule (for a tenant and its provider's unlocked rule: opt out of it; a locked one is refused)."""
    _set_active(tenant_ref, ref, False)


@rules.command("export")
@click.argument("tenant_ref", metavar="TENANT|msp")
def rules_export(tenant_ref: str) -> None:
    """Print the level's own rules as YAML (a tenant's without its provider's; msp: the baseline)."""
    from tenants.mailrules.yamlio import export_rules

    with _level(tenant_ref) as (session, cfg, tenant_id):
        text = export_rules(session, cfg, tenant_id)
    click.echo(text, nl=False)


@rules.command("import")
@click.argument("tenant_ref", metavar="TENANT|msp")
@click.argument("path", metavar="FILE")
@click.option("--replace", is_flag=True, help="Also remove the level's rules the file does not name.")
def rules_import(tenant_ref: str, path: str, replace: bool) -> None:
    """Add or update (by name) the rules of a YAML file; every rule is checked first and nothing is written when
    one is wrong."""
    from tenants.mailrules.yamlio import import_rules

    text = _read(path)
    with _level(tenant_ref) as (session, cfg, tenant_id):
        counts = import_rules(session, cfg, text, tenant_id, actor=CLI_ACTOR, replace=replace)
    click.echo(f"rules imported: {counts.summary()}")

__import__("mailward.rules_replay_cli", fromlist=["register"]).register(rules)  # rules replay: the dry-run
