"""``mailward quarantine``, ``mailward list`` and ``mailward digest``: the quarantine, allow/block lists, digests.

Registered in :mod:`mailward.cli` with ``cli.add_command(...)``. The CLI is the operator's tool: it acts as an
administrator (``actor`` "cli"), in the MSP scope, or in a tenant's scope where it names one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mailward.clicommon import CLI_ACTOR, db_session

if TYPE_CHECKING:
    from sqlalchemy.orm import Session



def _one_line(value: str | None, width: int = 60) -> str:
    text = " ".join((value or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"


# --- quarantine -----------------------------------------------------------------------------------------------------

@click.group()
def quarantine() -> None:
    """Quarantined mail: list, release, delete."""


@quarantine.command("list")
@click.argument("tenant_ref", metavar="TENANT")
@click.option("--kind", type=click.Choice(["spam", "virus", "attachment"]), help="Only this kind.")
@click.option("--rcpt", metavar="ADDR", help="Only mail held for this recipient.")
@click.option("--sender", metavar="TEXT", help="Only senders containing TEXT.")
@click.option("--limit", default=50, show_default=True, help="Items per page.")
@click.option("--after", metavar="CURSOR", help="The page after CURSOR (printed at the end of a full page).")
def quarantine_list(tenant_ref: str, kind: str | None, rcpt: str | None, sender: str | None, limit: int,
                    after: str | None) -> None:
    """One line per held mail: id, kind, recipients, sender, subject, score."""
    from tenants.quarantine import search
    from tenants.scope import tenant_scope
    from tenants.services import get_tenant

    with db_session() as session:
        tenant = get_tenant(session, tenant_ref)
        with tenant_scope(tenant.id):
            items, cursor = search(session, kind=kind, rcpt=rcpt, sender=sender, limit=limit, after=after)
        if not items:
            click.echo("quarantine is empty" if not after else "no more items")
        for item in items:
            click.echo(f"{item.id}\t{item.kind}\t{','.join(item.rcpts)}\t{item.header_from or item.mail_from or '<>'}"
                       f"\t{_one_line(item.subject)}\t{item.score:g}")
        if cursor:
            click.echo(f"more: --after {cursor}")


@quarantine.command("release")
@click.argument("message_id", metavar="ID")
@click.option("--to", "to", metavar="ADDR", help="Deliver a copy to this address instead of the recipients.")
def quarantine_release(message_id: str, to: str | None) -> None:
    """Deliver a held mail to its recipients (or --to another address); viruses too (the CLI acts as an admin)."""
    from tenants.platform.config import get_config
    from tenants.platform.redisconn import ensure_redis
    from tenants.quarantine import release

    cfg = get_config()
    ensure_redis(cfg)  # delivery is queued after the commit
    with db_session(cfg) as session:
        result = release(session, cfg, message_id, to=to, actor=CLI_ACTOR, actor_is_admin=True,
                         outside_ok=True)
    click.echo(f"message {result.message_id} {result}")


@quarantine.command("delete")
@click.argument("message_id", metavar="ID")
def quarantine_delete(message_id: str) -> None:
    """Never deliver a held mail (it stays listed as deleted until the purge)."""
    from tenants.platform.config import get_config
    from tenants.quarantine import delete

    with db_session() as session:
        gone = delete(session, message_id, actor=CLI_ACTOR, cfg=get_config())
    click.echo(f"message {message_id} deleted for {', '.join(gone)}")


# --- allow and block lists ------------------------------------------------------------------------------------------

@click.group("list")
def lists() -> None:
    """Allow and block lists: MSP-wide, per tenant, per user."""


def _level(session: Session, tenant_ref: str | None, user_email: str | None) -> tuple[int | None, int | None, str]:
    """(tenant id, user id, description) of the level the options name; none: the MSP-wide lists."""
    from sqlalchemy import select

    from tenants.exceptions import NotFound
    from tenants.models import User
    from tenants.services import get_tenant

    tenant = get_tenant(session, tenant_ref) if tenant_ref else None
    if user_email:
        stmt = select(User).where(User.email == user_email.strip().lower())
        if tenant is not None:
            stmt = stmt.where(User.tenant_id == tenant.id)
        user = session.scalars(stmt).first()
        if user is None:
            raise NotFound(f"no user {user_email}" + (f" in tenant {tenant.name}" if tenant else ""))
        return user.tenant_id, user.id, f"user {user.email}"
    if tenant is not None:
        return tenant.id, None, f"tenant {tenant.name}"
    return None, None, "MSP-wide"


@lists.command("add")
@click.argument("kind", type=click.Choice(["allow", "block"]))
@click.argument("value")
@click.option("--tenant", "tenant_ref", metavar="TENANT", help="The tenant's list (default: MSP-wide).")
@click.option("--user", "user_email", metavar="EMAIL", help="The user's own list.")
@click.option("--type", "value_type", type=click.Choice(["address", "domain", "ip"]),
              help="What VALUE is (default: guessed: an @ is an address, a network an ip, else a domain).")
@click.option("--comment", default="", help="Why the entry is there.")
def list_add(kind: str, value: str, tenant_ref: str | None, user_email: str | None, value_type: str | None,
             comment: str) -> None:
    """Add VALUE (address, domain with its subdomains, or IP network) to an allow or block list."""
    from tenants.lists import add_entry, reload_after_commit
    from tenants.platform.config import get_config

    cfg = get_config()
    with db_session(cfg) as session:
        tenant_id, user_id, where = _level(session, tenant_ref, user_email)
        entry = add_entry(session, kind=kind, value=value, tenant_id=tenant_id, user_id=user_id,
                          value_type=value_type, comment=comment, created_by=CLI_ACTOR)
        reload_after_commit(session, cfg)
        click.echo(f"entry {entry.id}: {entry.kind} {entry.value_type} {entry.value} ({where})")


@lists.command("remove")
@click.argument("entry_id", type=int, metavar="ID")
def list_remove(entry_id: int) -> None:
    """Remove the entry ID (as `list show` prints it)."""
    from tenants.lists import reload_after_commit, remove_entry
    from tenants.platform.config import get_config

    cfg = get_config()
    with db_session(cfg) as session:
        entry = remove_entry(session, entry_id)
        reload_after_commit(session, cfg)
        click.echo(f"entry {entry_id} removed: {entry.kind} {entry.value}")


@lists.command("show")
@click.option("--tenant", "tenant_ref", metavar="TENANT", help="The tenant's list (default: MSP-wide).")
@click.option("--user", "user_email", metavar="EMAIL", help="The user's own list.")
def list_show(tenant_ref: str | None, user_email: str | None) -> None:
    """One line per entry of one level: id, kind, type, value, comment."""
    from tenants.lists import list_entries

    with db_session() as session:
        tenant_id, user_id, where = _level(session, tenant_ref, user_email)
        entries = list_entries(session, tenant_id=tenant_id if user_id is None else None, user_id=user_id)
        if not entries:
            click.echo(f"no entries ({where})")
        for e in entries:
            click.echo(f"{e.id}\t{e.kind}\t{e.value_type}\t{e.value}\t{e.comment or '-'}")


# --- digests --------------------------------------------------------------------------------------------------------

@click.group()
def digest() -> None:
    """Quarantine digests."""


@digest.command("send")
@click.argument("tenant_ref", metavar="TENANT")
@click.option("--user", "user_email", metavar="EMAIL", help="Only this user's digest.")
@click.option("--now", "inline", is_flag=True, help="Build and deliver here and now instead of queueing jobs.")
def digest_send(tenant_ref: str, user_email: str | None, inline: bool) -> None:
    """Send TENANT's digests of new spam (whatever the hour; each user gets mail held since their last one)."""
    from sqlalchemy import select

    from smtp.delivery import deliver_message
    from tenants.addresses import normalize_address
    from tenants.exceptions import NotFound
    from tenants.models import User
    from tenants.platform.config import get_config
    from tenants.platform.jobs import enqueue_job
    from tenants.platform.redisconn import ensure_redis
    from tenants.scope import tenant_scope
    from tenants.services import get_tenant
    from worker.digest import DIGEST_JOB_TIMEOUT, DIGEST_TENANT_JOB, digest_users, send_user_digest

    cfg = get_config()
    ensure_redis(cfg)
    with db_session(cfg) as session:
        tenant = get_tenant(session, tenant_ref)
        with tenant_scope(tenant.id):
            user_ids = digest_users(session, tenant.id)
            if user_email:
                wanted = session.scalar(select(User.id).where(User.email == user_email.strip().lower()))
                if wanted is None:
                    raise NotFound(f"no user {user_email} in tenant {tenant.name}")
                user_ids = [u for u in user_ids if u == wanted]
            emails = dict(session.execute(select(User.id, User.email).where(User.id.in_(user_ids))).tuples().all())
    if not inline:
        enqueue_job(cfg, DIGEST_TENANT_JOB, tenant.id, user_email, timeout=DIGEST_JOB_TIMEOUT,
                    description=f"digests of {tenant.name}")
        click.echo(f"digest job queued for tenant {tenant.name} ({len(user_ids)} user(s) have new held mail now)")
        return
    sent = 0
    for user_id in user_ids:
        message_id = send_user_digest(cfg, tenant.id, user_id)
        if message_id is not None:
            deliver_message(cfg, tenant.id, message_id)
            sent += 1
            click.echo(f"digest {message_id} sent to {normalize_address(emails[user_id])}")
    click.echo(f"{sent} digest(s) sent for tenant {tenant.name}")
