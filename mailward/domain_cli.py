"""``mailward domain verify DOMAIN``: look the domain's ownership record up now and record the answer.

Registered in :mod:`mailward.cli` as a subcommand of the ``domain`` group. Exit status 0 when verified, 1 when not
(or when DNS could not be asked), so scripts can wait for a customer's record. A domain a tenant added itself
receives mail from the moment it is verified; one the MSP added received it already (vouched for).
"""

from __future__ import annotations

import sys

import click


@click.command("verify")
@click.argument("name", metavar="DOMAIN")
def verify(name: str) -> None:
    """Check DOMAIN's TXT record _mailward.DOMAIN and mark it verified when published (prints the record to publish)."""
    from sqlalchemy import select

    from tenants import verification
    from tenants.config import get_config
    from tenants.db import require_current_schema, session_scope
    from tenants.exceptions import NotFound
    from tenants.models import Domain
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
        from tenants.redisconn import bump_policy_version

        bump_policy_version(cfg)  # the ingresses route it from now on
    click.echo(result.message)
    click.echo(f"state: {state}")
    if not result.verified:
        click.echo(f"publish: {record}")
        sys.exit(1)
