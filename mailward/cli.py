"""The ``mailward`` command: administration, and the entry point of every process.

This package is the composition root: the only place that wires ``app``, ``smtp`` and ``worker`` together, each
imported lazily by the command that runs it (so ``mailward smtp`` never imports Flask).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from mailward.clicommon import cli_audit, db_session
from tenants.exceptions import MailwardError
from tenants.platform.config import Config, get_config


def _setup_logging(cfg: Config) -> None:
    logging.basicConfig(level=cfg.log_level, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    quiet = max(logging.WARNING, logging.getLevelName(cfg.log_level))
    for name in ("mail.log", "alembic", "rq.worker"):  # per-command chatter; our own lines say what happened
        logging.getLogger(name).setLevel(quiet if name != "rq.worker" else logging.INFO)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Mailward: a multi-tenant email security gateway."""


# --- database -----------------------------------------------------------------------------------------------------

@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration the database lacks."""
    from tenants.platform.db import migrate, schema_revisions, secure_data_dir

    cfg = get_config()
    if not cfg.database_url or cfg.uses_private_redis:
        secure_data_dir(cfg)  # it holds the SQLite database (all raw mail) or the private Valkey: owner only
    migrate(cfg)
    click.echo(f"database at revision {schema_revisions(cfg)[0]}")


@db.command("current")
def db_current() -> None:
    """Show the database's and the code's schema revisions."""
    from tenants.platform.db import schema_revisions

    current, head = schema_revisions(get_config())
    click.echo(f"database: {current or 'none'}  code: {head}")


# --- tenants, domains, users --------------------------------------------------------------------------------------

@cli.group()
def tenant() -> None:
    """Tenants (customer organisations)."""


@tenant.command("create")
@click.argument("name")
def tenant_create(name: str) -> None:
    from tenants.services import create_tenant

    with db_session() as session:
        t = create_tenant(session, name)
        click.echo(f"tenant {t.id} {t.name} created")


@tenant.command("list")
def tenant_list() -> None:
    from tenants.services import list_domains, list_tenants

    with db_session() as session:
        for t in list_tenants(session):
            domains = ", ".join(d.name for d in list_domains(session, t)) or "-"
            state = " (suspended)" if t.suspended else ""
            click.echo(f"{t.id}\t{t.name}{state}\t{domains}")


@tenant.command("suspend")
@click.argument("tenant_ref", metavar="TENANT")
def tenant_suspend(tenant_ref: str) -> None:
    """Suspend a tenant: its domains refuse mail, its users and API keys are locked out; queued mail still goes."""
    _tenant_state(tenant_ref, suspended=True)


@tenant.command("resume")
@click.argument("tenant_ref", metavar="TENANT")
def tenant_resume(tenant_ref: str) -> None:
    """Lift a tenant's suspension."""
    _tenant_state(tenant_ref, suspended=False)


def _tenant_state(tenant_ref: str, *, suspended: bool) -> None:
    from tenants import lifecycle
    from tenants.platform.redisconn import bump_policy_version
    from tenants.services import get_tenant

    cfg = get_config()
    with db_session(cfg) as session:
        t = get_tenant(session, tenant_ref)
        changed = lifecycle.suspend(session, t) if suspended else lifecycle.resume(session, t)
        if changed:
            cli_audit(session, lifecycle.SUSPEND_ACTION if suspended else lifecycle.RESUME_ACTION,
                       f"tenant {t.name}", tenant_id=t.id)
        name = t.name
    bump_policy_version(cfg)
    word = "suspended" if suspended else "resumed"
    click.echo(f"tenant {name} {word}" if changed else f"tenant {name} was already {word}")


@tenant.command("export")
@click.argument("tenant_ref", metavar="TENANT")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, writable=True),
              metavar="FILE.zip", help="Where to write the ZIP (an existing file is replaced).")
def tenant_export(tenant_ref: str, output: str) -> None:
    """Write everything a tenant owns (settings, metadata, audit log, statistics, raw mail) to a ZIP file."""
    import os

    from tenants import lifecycle
    from tenants.services import get_tenant

    cfg = get_config()
    partial = f"{output}.part"
    with db_session(cfg) as session:
        t = get_tenant(session, tenant_ref)
        try:
            with open(partial, "wb") as out:
                report = lifecycle.export(session, cfg, t, out)
            os.replace(partial, output)  # a half-written export never stands under the asked name
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        cli_audit(session, lifecycle.EXPORT_ACTION, f"tenant {t.name}",
                   f"{report.counts.get('messages', 0)} messages to {output}", tenant_id=t.id)
        click.echo(f"tenant {t.name} exported to {output}: {report.counts.get('messages', 0)} message(s), "
                   f"{report.counts.get('raw_messages', 0)} raw mail(s), {len(report.files) + 1} file(s)")


@tenant.command("delete")
@click.argument("tenant_ref", metavar="TENANT")
@click.option("--confirm", required=True, metavar="NAME", help="The tenant's name again.")
def tenant_delete(tenant_ref: str, confirm: str) -> None:
    """Delete a suspended, exported tenant and everything it owns, for good."""
    from tenants import lifecycle
    from tenants.platform.redisconn import bump_policy_version
    from tenants.services import get_tenant

    cfg = get_config()
    with db_session(cfg) as session:
        t = get_tenant(session, tenant_ref)
        if confirm.strip() != t.name:
            raise click.UsageError(f"--confirm must be the tenant's name, exactly: {t.name}")
        name, tid = t.name, t.id
        counts = lifecycle.delete(session, cfg, t)
        detail = ", ".join(f"{table} {n}" for table, n in sorted(counts.items()) if n)
        cli_audit(session, lifecycle.DELETE_ACTION, f"tenant {name} (id {tid})", detail, tenant_id=None)
    bump_policy_version(cfg)
    click.echo(f"tenant {name} deleted: {detail or 'nothing else'}")


@cli.group()
def domain() -> None:
    """Tenant domains and their transports."""


@domain.command("add")
@click.argument("tenant_ref", metavar="TENANT")
@click.argument("name", metavar="DOMAIN")
@click.option("--transport", required=True, metavar="HOST:PORT", help="The tenant's own mail server.")
@click.option("--tls", type=click.Choice(["none", "opportunistic", "required"]), default="opportunistic",
              show_default=True)
def domain_add(tenant_ref: str, name: str, transport: str, tls: str) -> None:
    """Add a domain to a tenant. The MSP on the command line may name any transport (no egress policy)."""
    from tenants.egress import EgressPolicy
    from tenants.platform.redisconn import bump_policy_version
    from tenants.services import add_domain, get_tenant, parse_transport

    cfg = get_config()
    host, port = parse_transport(transport)
    with db_session(cfg) as session:
        d = add_domain(session, get_tenant(session, tenant_ref), name, host, port, tls,
                       egress=EgressPolicy.unchecked(cfg))
        click.echo(f"domain {d.name} added to tenant {tenant_ref}, transport {d.transport} (TLS {d.transport_tls})")
    bump_policy_version(cfg)


@domain.command("transport")
@click.argument("name", metavar="DOMAIN")
@click.argument("transport", metavar="HOST:PORT")
@click.option("--tls", type=click.Choice(["none", "opportunistic", "required"]), default="opportunistic",
              show_default=True)
def domain_transport(name: str, transport: str, tls: str) -> None:
    """Replace a domain's transport; as on `domain add`, any host (the tenant egress policy binds tenants and keys)."""
    from sqlalchemy import select

    from tenants.egress import EgressPolicy
    from tenants.exceptions import NotFound
    from tenants.models import Domain
    from tenants.platform.redisconn import bump_policy_version
    from tenants.policy import normalize_domain
    from tenants.services import parse_transport, update_transport

    cfg = get_config()
    host, port = parse_transport(transport)
    with db_session(cfg) as session:
        d = session.scalar(select(Domain).where(Domain.name == normalize_domain(name)))
        if d is None:
            raise NotFound(f"no domain {name}")
        update_transport(d, host, port, tls, egress=EgressPolicy.unchecked(cfg))
        click.echo(f"domain {d.name}: transport {d.transport} (TLS {d.transport_tls})")
    bump_policy_version(cfg)


@domain.command("list")
@click.argument("tenant_ref", metavar="[TENANT]", required=False)
def domain_list(tenant_ref: str | None) -> None:
    from tenants.services import get_tenant, list_domains

    with db_session() as session:
        t = get_tenant(session, tenant_ref) if tenant_ref else None
        names = {} if t else {x.id: x.name for x in _all_tenants(session)}
        for d in list_domains(session, t):
            owner = t.name if t else names.get(d.tenant_id, "?")
            verified = "verified" if d.verified else "unverified"
            click.echo(f"{d.name}\t{owner}\t{d.transport}\t{d.transport_tls}\t{verified}")


def _all_tenants(session: Session) -> list[Any]:
    from tenants.services import list_tenants

    return list_tenants(session)


@cli.group()
def user() -> None:
    """Console and portal users."""


# --- queue --------------------------------------------------------------------------------------------------------

@cli.group()
def queue() -> None:
    """The delivery queue."""


@queue.command("list")
def queue_list() -> None:
    """Show every recipient still waiting for delivery, and why."""
    from tenants.models import PENDING_STATUSES, Delivery, Message

    with db_session() as session:
        rows = session.execute(
            select(Delivery, Message.queue_id, Message.mail_from).join(Message, Message.id == Delivery.message_id)
            .where(Delivery.status.in_([s.value for s in PENDING_STATUSES]))
            .order_by(Delivery.next_attempt_at).limit(10000)
        ).all()
        if not rows:
            click.echo("queue is empty")
            return
        for d, queue_id, mail_from in rows:
            when = d.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S")
            why = d.last_reply or "not tried yet"
            click.echo(f"{queue_id}\t{d.status}\t{mail_from or '<>'} -> {d.rcpt}\tattempts={d.attempts}"
                       f"\tnext={when}Z\t{why}")
        click.echo(f"{len(rows)} recipient(s) waiting")


@queue.command("flush")
def queue_flush() -> None:
    """Retry every deferred recipient now."""
    from tenants.platform.db import require_current_schema
    from tenants.platform.redisconn import ensure_redis
    from worker.sweeper import flush

    cfg = get_config()
    require_current_schema(cfg)
    ensure_redis(cfg)
    click.echo(f"{flush(cfg)} delivery job(s) queued")


# --- messages and policy ------------------------------------------------------------------------------------------

@cli.group()
def message() -> None:
    """Accepted messages: verdicts, findings, timeline."""


@message.command("show")
@click.argument("ident", metavar="ID")
def message_show(ident: str) -> None:
    """Show a message (its id or queue id): envelope, verdict, every finding with its score, and its timeline."""
    from tenants.models import Event, Message

    with db_session() as session:
        msgs = session.scalars(select(Message).where((Message.id == ident) | (Message.queue_id == ident))
                               .order_by(Message.tenant_id)).all()
        if not msgs:
            raise click.ClickException(f"no message {ident!r}")
        for m in msgs:
            click.echo(f"message {m.id} (queue id {m.queue_id}, tenant {m.tenant_id}, {m.direction})")
            click.echo(f"  received  {m.received_at:%Y-%m-%d %H:%M:%S}Z from [{m.client_ip}] helo {m.client_helo}")
            click.echo(f"  from      {m.mail_from or '<>'}  header From: {m.header_from or '-'}")
            click.echo(f"  subject   {m.subject or '-'}")
            kind = f" ({m.quarantine_kind})" if m.quarantine_kind else ""
            click.echo(f"  verdict   {m.verdict}{kind}, score {m.score:g}")
            click.echo(f"  why       {m.explanation or '-'}")
            for f in sorted(m.findings, key=lambda f: -abs(f.score)):
                click.echo(f"  finding   {f.symbol:<24} {f.score:+7.2f}  {f.reason}")
            for d in m.deliveries:
                click.echo(f"  delivery  {d.rcpt}: {d.status} after {d.attempts} attempt(s) {d.last_reply or ''}")
            events = session.scalars(select(Event).where(Event.message_id == m.id).order_by(Event.id))
            for e in events:
                click.echo(f"  event     {e.at:%H:%M:%S} {e.kind}: {e.detail}")


@cli.group()
def policy() -> None:
    """Filtering policy: the MSP baseline and each tenant's overrides."""


@policy.command("show")
@click.argument("tenant_ref", metavar="[TENANT]", required=False)
def policy_show(tenant_ref: str | None) -> None:
    """Show the effective policy of a tenant (or the MSP baseline)."""
    import dataclasses

    from tenants.policy import Policy, load_policy, policy_from
    from tenants.policy import _settings_of as settings_of
    from tenants.services import get_tenant

    with db_session() as session:
        if tenant_ref:
            effective: Policy = load_policy(session, get_tenant(session, tenant_ref).id)
        else:
            effective = policy_from(settings_of(session, None))
        for key, value in dataclasses.asdict(effective).items():
            click.echo(f"{key} = {value}")


@policy.command("set")
@click.argument("tenant_ref", metavar="TENANT|--msp")
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...")
def policy_set(tenant_ref: str, assignments: tuple[str, ...]) -> None:
    """Change settings, e.g. `policy set Acme greylisting=true tag_threshold=4 scores.BAYES_99=5`.

    TENANT may be `msp` for the baseline (its `locked=key1,key2` forbids tenants to change those keys).
    """
    import json

    from tenants.platform.redisconn import bump_policy_version
    from tenants.policy import save_settings
    from tenants.services import get_tenant

    changes: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.UsageError(f"{item!r}: write KEY=VALUE")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        if key == "locked":
            value = [k for k in str(raw).split(",") if k]
        if key.startswith("scores."):
            changes.setdefault("scores", {})[key[len("scores."):]] = float(value)
        else:
            changes[key] = value
    if "subject_prefix" in changes:  # checked as the policy pages check it (no line breaks: header injection)
        from tenants.policyedit import check_subject_prefix

        changes["subject_prefix"] = check_subject_prefix(str(changes["subject_prefix"]))
    cfg = get_config()
    with db_session(cfg) as session:
        tenant_id = None if tenant_ref.lower() == "msp" else get_tenant(session, tenant_ref).id
        save_settings(session, tenant_id, changes)
    bump_policy_version(cfg)
    click.echo(f"policy of {tenant_ref} updated: {', '.join(sorted(changes))}")


# --- processes ----------------------------------------------------------------------------------------------------

def _process_config() -> Config:
    """The configuration a long-running process starts with, once its logging is set up and Redis is reachable."""
    from tenants.platform.redisconn import ensure_redis

    cfg = get_config()
    _setup_logging(cfg)
    ensure_redis(cfg)
    return cfg


@cli.command()
def smtp() -> None:
    """Run the SMTP ingress (MAILWARD_SMTP_PROCESSES processes on one port, one per core by default)."""
    from smtp.supervisor import run_ingress

    run_ingress(_process_config())


@cli.command()
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
def worker(burst: bool) -> None:
    """Run a background worker (RQ)."""
    from worker.runner import run_worker

    run_worker(_process_config(), burst=burst)


@cli.command()
def scheduler() -> None:
    """Run the scheduler (one per installation)."""
    from worker.scheduler import run_scheduler

    run_scheduler(_process_config())


@cli.command()
@click.option("--threads", default=8, show_default=True, help="Request threads.")
def web(threads: int) -> None:
    """Run the web consoles and API (waitress; use gunicorn 'app:create_app()' in production)."""
    from waitress import serve as wsgi_serve

    from app import create_app

    cfg = _process_config()
    application = create_app(cfg, heartbeat=True)
    click.echo(f"mailward web: listening on http://{cfg.web_listen}/")
    wsgi_serve(application, host=cfg.web_listen.host, port=cfg.web_listen.port, threads=threads, ident="Mailward")


@cli.command()
def run() -> None:
    """Run everything on this machine (make run): migrate, then ingress, worker, scheduler and web."""
    from mailward.devserver import run_all

    sys.exit(run_all(get_config()))


from mailward import outbound_cli  # noqa: E402  (relay networks, SMTP credentials, DKIM keys)

cli.add_command(outbound_cli.relay)
cli.add_command(outbound_cli.smtp_credential)
cli.add_command(outbound_cli.dkim)


from mailward.bayes_cli import bayes  # noqa: E402  (per-tenant Bayes training)

cli.add_command(bayes)

from mailward.model_cli import model  # noqa: E402  (the base content model)

cli.add_command(model)

from mailward import quarantine_cli  # noqa: E402  (quarantine, allow/block lists, digests)

cli.add_command(quarantine_cli.quarantine)
cli.add_command(quarantine_cli.lists)
cli.add_command(quarantine_cli.digest)

from mailward.apikey_cli import apikey  # noqa: E402  (REST API keys)

cli.add_command(apikey)


from mailward.stats_cli import stats  # noqa: E402  (statistics roll-up)

cli.add_command(stats)

from mailward.backup_cli import backup  # noqa: E402  (encrypted backup and restore)

cli.add_command(backup)

from mailward.sarules_cli import sarules  # noqa: E402  (SpamAssassin's rules: load report, sa-update)

cli.add_command(sarules)

from mailward.rules_cli import rules  # noqa: E402  (mail rules: list, add, remove, enable, disable, export, import)

cli.add_command(rules)

from mailward.domain_cli import remove as domain_remove  # noqa: E402  (domain removal)
from mailward.domain_cli import verify as domain_verify  # noqa: E402  (domain ownership proof)

domain.add_command(domain_verify)

from mailward import user_cli  # noqa: E402  (creating and inviting users, passwords, reset links, disabling, deleting)

for _command in user_cli.COMMANDS:
    user.add_command(_command)
domain.add_command(domain_remove)


# --- recipient verification ---------------------------------------------------------------------------------------

@cli.group()
def recipients() -> None:
    """Recipient verification at RCPT: off, a static list, an LDAP directory, or call-ahead to the transport."""


@recipients.command("mode")
@click.argument("tenant_ref", metavar="TENANT")
@click.argument("mode", type=click.Choice(["off", "static", "ldap", "callahead"]))
def recipients_mode(tenant_ref: str, mode: str) -> None:
    """Switch a tenant's verification mode."""
    from tenants import recipients as rcpt
    from tenants.services import get_tenant

    cfg = get_config()
    with db_session(cfg) as session:
        t = get_tenant(session, tenant_ref)
        rcpt.set_mode(session, t.id, mode)
        rcpt.reload_after_commit(session, cfg)
    click.echo(f"recipient verification of {t.name} is now {mode}")


def _edit_static(tenant_ref: str, addresses: tuple[str, ...], remove: bool) -> None:
    """Add addresses to, or remove them from, a tenant's static list; ingresses reload after the commit."""
    from tenants import recipients as rcpt
    from tenants.services import get_tenant

    edit = rcpt.remove_static if remove else rcpt.add_static
    cfg = get_config()
    with db_session(cfg) as session:
        t = get_tenant(session, tenant_ref)
        done = [edit(session, t.id, a).address for a in addresses]
        rcpt.reload_after_commit(session, cfg)
    click.echo(f"static list of {t.name}: {', '.join(done)} {'removed' if remove else 'added'}")


@recipients.command("add")
@click.argument("tenant_ref", metavar="TENANT")
@click.argument("addresses", nargs=-1, required=True, metavar="ADDRESS...")
def recipients_add(tenant_ref: str, addresses: tuple[str, ...]) -> None:
    """Add addresses (or @domain for a whole domain) to a tenant's static list."""
    _edit_static(tenant_ref, addresses, remove=False)


@recipients.command("remove")
@click.argument("tenant_ref", metavar="TENANT")
@click.argument("addresses", nargs=-1, required=True, metavar="ADDRESS...")
def recipients_remove(tenant_ref: str, addresses: tuple[str, ...]) -> None:
    """Remove addresses from a tenant's static list."""
    _edit_static(tenant_ref, addresses, remove=True)


@recipients.command("ldap")
@click.argument("tenant_ref", metavar="TENANT")
@click.option("--url", required=True, help="ldap://host:389 or ldaps://host:636")
@click.option("--base-dn", required=True)
@click.option("--bind-dn", default="", help="Empty: anonymous bind.")
@click.option("--password-stdin", is_flag=True, help="Read the bind password from standard input.")
@click.option("--filter", "search_filter", default="", help="With {address}; default: mail or smtp: proxyAddresses.")
@click.option("--attributes", default="", help="Comma-separated; default: mail,proxyAddresses.")
def recipients_ldap(tenant_ref: str, url: str, base_dn: str, bind_dn: str, password_stdin: bool, search_filter: str,
                    attributes: str) -> None:
    """Set a tenant's LDAP directory (without --password-stdin the stored password is kept); any host, as the
    MSP on the command line is not held to the tenant egress policy."""
    from tenants import recipients as rcpt
    from tenants.egress import EgressPolicy
    from tenants.services import get_tenant

    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    cfg = get_config()
    with db_session(cfg) as session:
        t = get_tenant(session, tenant_ref)
        rcpt.set_ldap(session, cfg, t.id, url=url, base_dn=base_dn, bind_dn=bind_dn, password=password,
                      search_filter=search_filter, attributes=attributes, egress=EgressPolicy.unchecked(cfg))
        rcpt.reload_after_commit(session, cfg)
    click.echo(f"LDAP directory of {t.name}: {url} {base_dn}")


@recipients.command("sync")
@click.argument("tenant_ref", metavar="TENANT")
def recipients_sync(tenant_ref: str) -> None:
    """Copy a tenant's LDAP directory into its valid recipients now; exits 1 if the sync failed."""
    from tenants import directory
    from tenants import recipients as rcpt
    from tenants.services import get_tenant

    cfg = get_config()
    with db_session(cfg) as session:
        t = get_tenant(session, tenant_ref)
        result = directory.sync(session, cfg, t.id)
        rcpt.reload_after_commit(session, cfg)
    if not result.ok:
        raise click.ClickException(f"directory sync of {t.name} failed: {result.message}")
    click.echo(f"directory of {t.name} synced: {result.message}")


# --- entry point --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every error becomes one line on stderr and a non-zero exit."""
    try:
        cli.main(args=argv, prog_name="mailward", standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.UsageError as exc:
        where = f"{exc.ctx.command_path}: " if exc.ctx else ""
        _fail(f"{where}{exc.format_message()}", 2)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except MailwardError as exc:
        _fail(str(exc), 1)
    except OperationalError as exc:
        _fail(f"database unavailable: {str(exc.orig).strip().splitlines()[0]}", 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _fail(message: str, code: int) -> None:
    click.echo(f"mailward: error: {message}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
