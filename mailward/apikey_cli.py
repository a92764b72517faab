"""``mailward apikey``: create, list and revoke REST API keys (:mod:`tenants.apikeys`).

Registered in :mod:`mailward.cli` with ``cli.add_command(...)``. A new key is printed once, alone on the last line
of the output (scripts take ``tail -n 1``); only its hash is stored.
"""

from __future__ import annotations

import click

from mailward.clicommon import db_session
from tenants.apikeys import SCOPES


@click.group("apikey")
def apikey() -> None:
    """REST API keys (per tenant, or MSP-wide)."""


@apikey.command("create")
@click.argument("tenant_ref", metavar="TENANT", required=False)
@click.option("--msp", is_flag=True, help="An MSP-wide key (all tenants) instead of a tenant's.")
@click.option("--scopes", required=True, metavar="SCOPES",
              help=f"Comma-separated, from {','.join(SCOPES)}: read for GET, write for changes, quarantine for "
                   "quarantine actions.")
@click.option("--name", default="", help="What the key is for (shown in lists).")
@click.option("--expires", default="", metavar="YYYY-MM-DD",
              help="The key stops working at 00:00 UTC that day (a date after today); default: never.")
def apikey_create(tenant_ref: str | None, msp: bool, scopes: str, name: str, expires: str) -> None:
    """Create a key for TENANT (or --msp); the key is printed once, on the last line."""
    from tenants.apikeys import create, parse_expiry
    from tenants.services import get_tenant

    if msp == bool(tenant_ref):
        raise click.UsageError("name a TENANT or give --msp (not both)")
    with db_session() as session:
        tenant = get_tenant(session, tenant_ref) if tenant_ref else None
        new = create(session, tenant, scopes, name, expires_at=parse_expiry(expires))
        owner = f"tenant {tenant.name}" if tenant else "the MSP (all tenants)"
        key_id, prefix, granted, until = new.key.id, new.key.prefix, new.key.scopes, new.key.expires_at
    expiry = f", expires {until:%Y-%m-%d %H:%M}Z" if until else ""
    click.echo(f"api key {key_id} ({prefix}) created for {owner} with scopes {granted}{expiry}")
    click.echo("the key is shown only now; store it safely:")
    click.echo(new.secret)


@apikey.command("list")
@click.argument("tenant_ref", metavar="TENANT", required=False)
@click.option("--msp", is_flag=True, help="The MSP-wide keys.")
def apikey_list(tenant_ref: str | None, msp: bool) -> None:
    """One line per key of TENANT (or --msp): id, prefix, scopes, name, created, last used, expiry, state."""
    from tenants.apikeys import is_expired, list_keys
    from tenants.services import get_tenant

    if msp == bool(tenant_ref):
        raise click.UsageError("name a TENANT or give --msp (not both)")
    with db_session() as session:
        tenant_id = get_tenant(session, tenant_ref).id if tenant_ref else None
        keys = list_keys(session, tenant_id)
        if not keys:
            click.echo("no API keys")
        for k in keys:
            used = f"{k.last_used_at:%Y-%m-%d %H:%M}Z" if k.last_used_at else "never used"
            state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}Z" if k.revoked_at else \
                "expired" if is_expired(k) else "active"
            expiry = f"expires {k.expires_at:%Y-%m-%d %H:%M}Z" if k.expires_at else "never expires"
            click.echo(f"{k.id}\t{k.prefix}\t{k.scopes}\t{k.name or '-'}\tcreated {k.created_at:%Y-%m-%d}"
                       f"\t{used}\t{expiry}\t{state}")


@apikey.command("revoke")
@click.argument("key_id", metavar="ID", type=int)
def apikey_revoke(key_id: int) -> None:
    """Revoke a key at once (its next request is refused)."""
    from tenants.apikeys import revoke

    with db_session() as session:
        key = revoke(session, key_id)
        click.echo(f"api key {key.id} ({key.prefix}) revoked")
