"""``mailward sarules``: SpamAssassin's rules as Mailward evaluates them: the load report, and sa-update.

Registered in :mod:`mailward.cli` with ``cli.add_command(sarules)``.
"""

from __future__ import annotations

import click

from mailward.clicommon import cli_audit, db_session
from tenants.platform.config import get_config


@click.group()
def sarules() -> None:
    """SpamAssassin's rules (evaluated natively by the ingress)."""


@sarules.command("report")
@click.option("--no-hyperscan", is_flag=True, help="Load as if the hyperscan wheel were not installed.")
def report(no_hyperscan: bool) -> None:
    """Load the configured rule files and print what was loaded and what was skipped, by kind and why."""
    from smtp.sarules import CACHE_SUBDIR, load_engine

    cfg = get_config()
    loaded = load_engine(cfg.sa_rules_dir, use_hyperscan=False if no_hyperscan else None,
                         cache_dir=cfg.data_dir / CACHE_SUBDIR)
    click.echo(loaded.report.format())
    if loaded.engine is None:
        raise SystemExit(1)


@sarules.command("update")
def update() -> None:
    """Run sa-update; when it installed new rules, every Mailward process reloads them."""
    from tenants.sarules import own_update_dir
    from tenants.sarules.update import bump_rules_version, run_sa_update

    cfg = get_config()
    result = run_sa_update(own_update_dir(cfg.data_dir))
    click.echo(f"sa-update: {result.message}")
    if result.updated:
        version = bump_rules_version(cfg)
        click.echo(f"rules version {version}: every process reloads" if version is not None
                   else "Redis unreachable: processes pick the new rules up when they restart")
    if not result.ok:
        raise SystemExit(1)


@sarules.command("score")
@click.argument("rule")
@click.argument("value", required=False, default="")
@click.option("--tenant", "tenant_ref", metavar="TENANT", help="That tenant's override (default: the MSP baseline).")
def score(rule: str, value: str, tenant_ref: str | None) -> None:
    """Override a rule's score (0 switches it off) for the baseline or one tenant; no VALUE: inherit again.

    The baseline's lock on symbol scores (policy page, ``scores`` locked) holds here too: a tenant's override of a
    locked score is refused.
    """
    from tenants import policyedit
    from tenants.exceptions import ValidationError
    from tenants.platform.redisconn import bump_policy_version
    from tenants.scope import tenant_scope
    from tenants.services import get_tenant

    cfg = get_config()
    with db_session(cfg) as session:
        tenant_id = get_tenant(session, tenant_ref).id if tenant_ref else None
        try:
            if tenant_id is None:
                changed = policyedit.apply_form(session, None, {policyedit.SCORE_PREFIX + rule: value})
            else:
                with tenant_scope(tenant_id):
                    changed = policyedit.apply_form(session, tenant_id, {policyedit.SCORE_PREFIX + rule: value})
        except ValidationError as exc:
            raise click.ClickException(str(exc)) from None
        target = f"tenant {tenant_ref}" if tenant_ref else "MSP baseline"
        if changed:
            cli_audit(session, "policy.update", target, "; ".join(changed), tenant_id=tenant_id)
    if changed:
        bump_policy_version(cfg)
    click.echo(f"{target}: {'; '.join(changed) if changed else 'nothing changed'}")
