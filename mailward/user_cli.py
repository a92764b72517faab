"""``mailward user create|passwd|reset|disable|delete``: the operator's account tools (the ``user`` group).

Each acts across tenants (the CLI is the operator's tool), keeps the last active admin of a tenant or of the MSP
(:mod:`tenants.users`), ends the user's web sessions where it should, and writes an audit entry naming ``cli``.
Reset and invitation links are mailed at once: a tenant's user's through the delivery path, as the worker would.
"""

from __future__ import annotations

import secrets
import sys

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailward.clicommon import cli_audit, db_session
from tenants.exceptions import NotFound, ValidationError
from tenants.models import Role, User
from tenants.platform.config import Config


def _user(session: Session, email: str) -> User:
    user = session.scalars(select(User).where(User.email == email.strip().lower())).first()
    if user is None:
        raise NotFound(f"no user {email}")
    return user


def _audit(session: Session, action: str, user: User, detail: str = "") -> None:

    cli_audit(session, action, f"user {user.email}", detail, tenant_id=user.tenant_id)


def _mail_link(cfg: Config, user_id: int, email: str, purpose: str) -> str:
    """Send a reset or invitation link now (a tenant's user: stored, then delivered); where it went."""
    from smtp.delivery import deliver_message
    from worker.accountmail import send_link

    sent = send_link(cfg, user_id, purpose)
    if sent is None:
        raise ValidationError(f"{email}: no active user to mail")
    if sent.message_id is not None and sent.tenant_id is not None:
        deliver_message(cfg, sent.tenant_id, sent.message_id)
    return str(sent)


@click.command("create")
@click.argument("email")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option("--tenant", "tenant_ref", metavar="TENANT", help="The tenant (for tenant roles).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--invite", is_flag=True, help="Set no password: mail EMAIL an invitation link to choose one.")
def user_create(email: str, role: str, tenant_ref: str | None, password_stdin: bool, invite: bool) -> None:
    """Create a user; without --password-stdin or --invite a random password is printed once."""
    from tenants.platform.config import get_config
    from tenants.platform.redisconn import ensure_redis
    from tenants.services import create_user, get_tenant

    if invite and password_stdin:
        raise click.UsageError("--invite and --password-stdin exclude each other: the invited user chooses one")
    cfg = get_config()
    password = None if invite else sys.stdin.readline().rstrip("\r\n") if password_stdin else secrets.token_urlsafe(12)
    if invite:
        ensure_redis(cfg)
    with db_session(cfg) as session:
        t = get_tenant(session, tenant_ref) if tenant_ref else None
        u = create_user(session, email, role, t, password)
        _audit(session, "user.create", u, f"role {u.role}, {'invited' if invite else 'initial password set'}")
        if invite:
            _audit(session, "user.invite", u, "invitation link mailed by the operator")
        user_id, address = u.id, u.email
        click.echo(f"user {u.email} created with role {u.role}" + (f" in tenant {t.name}" if t else ""))
    if invite:
        click.echo(f"invitation mailed to {_mail_link(cfg, user_id, address, 'invite')}")
    elif not password_stdin:
        click.echo(f"password: {password}")


@click.command("passwd")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input.")
def user_passwd(email: str, password_stdin: bool) -> None:
    """Set EMAIL's password (asked twice, unless read from standard input); their sessions end."""
    from tenants.accounts import set_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("New password", hide_input=True, confirmation_prompt="Repeat it")
    with db_session() as session:
        user = _user(session, email)
        set_password(user, password)
        _audit(session, "user.password_set", user, "by the operator")
    click.echo(f"password of {user.email} changed; their sessions are ended")


@click.command("reset")
@click.argument("email")
@click.option("--print-link", is_flag=True, help="Also print the link (it sets the password: hand it over safely).")
def user_reset(email: str, print_link: bool) -> None:
    """Reset EMAIL's password: it stops working, their sessions end, and a link to set a new one is mailed."""
    from tenants.accounts import link_url, make_link_token, start_reset
    from tenants.platform.config import get_config
    from tenants.platform.redisconn import ensure_redis

    cfg = get_config()
    ensure_redis(cfg)
    with db_session(cfg) as session:
        user = _user(session, email)
        start_reset(user, actor_id=None)
        _audit(session, "user.password_reset", user, "reset link mailed by the operator")
        user_id = user.id
        link = link_url(cfg, make_link_token(cfg, user, "reset")) if print_link else None
    if link:
        click.echo(f"link: {link}")
    click.echo(f"reset link mailed to {_mail_link(cfg, user_id, email, 'reset')}")


@click.command("disable")
@click.argument("email")
def user_disable(email: str) -> None:
    """Deactivate EMAIL: they can no longer sign in, and their open sessions end (their mail is still filtered)."""
    from tenants.users import set_active

    with db_session() as session:
        user = _user(session, email)
        if set_active(user, False, actor_id=None):
            _audit(session, "user.deactivate", user)
            click.echo(f"{user.email} deactivated")
        else:
            click.echo(f"{user.email} was already deactivated")


@click.command("delete")
@click.argument("email")
@click.option("--confirm", "confirm", required=True, metavar="EMAIL", help="The same address again.")
def user_delete(email: str, confirm: str) -> None:
    """Delete EMAIL's account for good (their aliases and own list entries go with it)."""
    from tenants.accounts import delete_user

    if confirm.strip().lower() != email.strip().lower():
        raise click.UsageError("--confirm must repeat the address of the user to delete")
    with db_session() as session:
        user = _user(session, email)
        _audit(session, "user.delete", user, f"role {user.role}")
        delete_user(session, user, actor_id=None)
    click.echo(f"user {email.strip().lower()} deleted")


#: The commands this module adds to ``mailward user``.
COMMANDS = (user_create, user_passwd, user_reset, user_disable, user_delete)
