"""``mailward relay``, ``mailward smtp-credential`` and ``mailward dkim``: how tenants send mail out through Mailward.

Registered on the main command in :mod:`mailward.cli`. Every change that the ingress caches (relay networks, keys)
bumps the policy version, so running ingress replicas pick it up within a second.
"""

from __future__ import annotations

import secrets
import sys
from typing import TYPE_CHECKING

import click
from sqlalchemy.orm import Session

from mailward.clicommon import db_session
from tenants.platform.config import get_config

if TYPE_CHECKING:
    from tenants.models import Tenant

#: Bytes of randomness in a generated SMTP password (shown once).
GENERATED_PASSWORD_BYTES = 18


def _bump() -> None:
    from tenants.platform.redisconn import bump_policy_version

    bump_policy_version(get_config())


def _tenant_and_names(session: Session, tenant_ref: str | None) -> tuple[Tenant | None, dict[int, str]]:
    """A listing's tenant (None: every tenant's rows) and every tenant's name by id, for the listing's lines."""
    from tenants.services import get_tenant, list_tenants

    return (get_tenant(session, tenant_ref) if tenant_ref else None), {x.id: x.name for x in list_tenants(session)}


# --- relay networks -----------------------------------------------------------------------------------------------

@click.group()
def relay() -> None:
    """Networks of tenants' own servers, whose mail to any domain is outbound."""


@relay.command("add")
@click.argument("tenant_ref", metavar="TENANT")
@click.argument("cidr", metavar="CIDR")
def relay_add(tenant_ref: str, cidr: str) -> None:
    """Let the tenant's servers in CIDR send out through port 25 (as the tenant's domains only)."""
    from tenants.relay import add_relay_network
    from tenants.services import get_tenant

    with db_session() as session:
        t = get_tenant(session, tenant_ref)
        row = add_relay_network(session, t, cidr)
        click.echo(f"relay network {row.cidr} added to tenant {t.name}")
    _bump()


@relay.command("list")
@click.argument("tenant_ref", metavar="[TENANT]", required=False)
def relay_list(tenant_ref: str | None) -> None:
    from tenants.relay import list_relay_networks
    with db_session() as session:
        t, names = _tenant_and_names(session, tenant_ref)
        for row in list_relay_networks(session, t):
            click.echo(f"{row.cidr}\t{names.get(row.tenant_id, '?')}")


# --- SMTP AUTH credentials ----------------------------------------------------------------------------------------

@click.group("smtp-credential")
def smtp_credential() -> None:
    """SMTP AUTH logins for tenants' outbound mail (the submission listener)."""


@smtp_credential.command("create")
@click.argument("tenant_ref", metavar="TENANT")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def credential_create(tenant_ref: str, username: str, password_stdin: bool) -> None:
    """Create a login; without --password-stdin a random password is printed once."""
    from tenants.relay import create_smtp_credential
    from tenants.services import get_tenant

    password = (sys.stdin.readline().rstrip("\r\n") if password_stdin
                else secrets.token_urlsafe(GENERATED_PASSWORD_BYTES))
    with db_session() as session:
        t = get_tenant(session, tenant_ref)
        cred = create_smtp_credential(session, t, username, password)
        click.echo(f"SMTP login {cred.username} created for tenant {t.name}")
    if not password_stdin:
        click.echo(f"password: {password}")


@smtp_credential.command("list")
@click.argument("tenant_ref", metavar="[TENANT]", required=False)
def credential_list(tenant_ref: str | None) -> None:
    from tenants.relay import list_smtp_credentials
    with db_session() as session:
        t, names = _tenant_and_names(session, tenant_ref)
        for cred in list_smtp_credentials(session, t):
            state = f"revoked {cred.revoked_at:%Y-%m-%d %H:%M}Z" if cred.revoked_at else "active"
            click.echo(f"{cred.username}\t{names.get(cred.tenant_id, '?')}\t{state}")


@smtp_credential.command("revoke")
@click.argument("username")
def credential_revoke(username: str) -> None:
    """Refuse every further login with USERNAME."""
    from tenants.relay import revoke_smtp_credential

    with db_session() as session:
        cred = revoke_smtp_credential(session, username)
        click.echo(f"SMTP login {cred.username} revoked")


# --- DKIM keys ----------------------------------------------------------------------------------------------------

@click.group()
def dkim() -> None:
    """DKIM signing keys of tenants' domains."""


@dkim.command("keygen")
@click.argument("domain")
@click.option("--selector", required=True, help="The DKIM selector (s=), e.g. mw2025.")
@click.option("--bits", type=click.Choice(["1024", "2048", "3072", "4096"]), default="2048", show_default=True)
def dkim_keygen(domain: str, selector: str, bits: str) -> None:
    """Generate a key for DOMAIN (of the tenant owning it) and print the DNS record to publish."""
    from tenants.dkimkeys import generate_key, txt_record

    cfg = get_config()
    with db_session(cfg) as session:
        key = generate_key(session, cfg, domain, selector, bits=int(bits))
        record = txt_record(key)
        click.echo(f"DKIM key {key.selector} for {key.domain} generated ({bits} bits, active); publish:")
    click.echo(record)
    _bump()


@dkim.command("list")
@click.argument("tenant_ref", metavar="[TENANT]", required=False)
@click.option("--dns", "show_dns", is_flag=True, help="Print each key's DNS record too.")
def dkim_list(tenant_ref: str | None, show_dns: bool) -> None:
    from tenants.dkimkeys import list_keys, txt_record
    with db_session() as session:
        t, names = _tenant_and_names(session, tenant_ref)
        for key in list_keys(session, t.id if t else None):
            state = "active" if key.active else "inactive"
            click.echo(f"{key.domain}\t{key.selector}\t{names.get(key.tenant_id, '?')}\t{state}"
                       f"\t{key.created_at:%Y-%m-%d}")
            if show_dns:
                click.echo(f"  {txt_record(key)}")
