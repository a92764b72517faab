"""``mailward domain verify DOMAIN``: look the domain's ownership record up now and record the answer;
``mailward domain remove DOMAIN --confirm DOMAIN``: remove a domain (:mod:`tenants.domains` says what becomes of its
mail).

Registered in :mod:`mailward.cli` as subcommands of the ``domain`` group. Exit status 0 when verified, 1 when not
(or when DNS could not be asked), so scripts can wait for a customer's record. A domain a tenant added itself
receives mail from the moment it is verified; one the MSP added received it already (vouched for).
"""

from __future__ import annotations

import sys

import click

from mailward.clicommon import cli_audit, db_session


@click.command("verify")
@click.argument("name", metavar="DOMAIN")
def verify(name: str) -> None:
    """Check DOMAIN's TXT record _mailward.DOMAIN and mark it verified when published (prints the record to publish)."""
    from sqlalchemy import select

    from tenants import verification
    from tenants.exceptions import NotFound
    from tenants.models import Domain
    from tenants.platform.config import get_config
    from tenants.platform.db import require_current_schema, session_scope
    from tenants.policy import normalize_domain
    from tenants.scope import msp_scope

    cfg = get_config()
    require_current_schema(cfg)
    with msp_scope(), session_scope(cfg) as session:
        domain = session.scalar(select(Domain).where(Domain.name == normalize_domain(name)))
        if domain is None:
            raise NotFound(f"no tenant domain {name!r}")
        was = domain.verified
        result = verification.check(cfg, domain)
        record = verification.zone_line(cfg, domain)
        changed, state = domain.verified != was, verification.state(domain)
    if changed:
        from tenants.platform.redisconn import bump_policy_version

        bump_policy_version(cfg)  # the ingresses route it from now on
    click.echo(result.message)
    click.echo(f"state: {state}")
    if not result.verified:
        click.echo(f"publish: {record}")
        sys.exit(1)


@click.command("remove")
@click.argument("name", metavar="DOMAIN")
@click.option("--confirm", "confirm", metavar="DOMAIN", default="",
              help="The domain's name again; without it, only what the removal would concern is printed.")
def remove(name: str, confirm: str) -> None:
    """Remove DOMAIN: it receives no more mail at once; mail queued for it is still delivered to its transport, and
    quarantined mail stays until its retention (and can be released). Audited."""
    from sqlalchemy import select

    from tenants import domains
    from tenants.exceptions import NotFound
    from tenants.models import Domain
    from tenants.platform.config import get_config
    from tenants.platform.redisconn import bump_policy_version
    from tenants.policy import normalize_domain

    cfg = get_config()
    with db_session(cfg) as session:
        domain = session.scalar(select(Domain).where(Domain.name == normalize_domain(name)))
        if domain is None:
            raise NotFound(f"no domain {name}")
        if not confirm:
            found = domains.impact(session, domain)
            click.echo(f"{domain.name}: {found.summary().replace(' deleted', ' to delete')}")
            click.echo(f"to remove it: mailward domain remove {domain.name} --confirm {domain.name}")
            sys.exit(1)
        dname, tenant_id = domain.name, domain.tenant_id
        found = domains.remove(session, domain, confirm)
        cli_audit(session, domains.REMOVE_ACTION, f"domain {dname}", found.summary(), tenant_id=tenant_id)
    bump_policy_version(cfg)  # every ingress forgets it: RCPT to it is refused from now on
    click.echo(f"domain {dname} removed: {found.summary()}")
