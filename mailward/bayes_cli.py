"""``mailward bayes``: train a tenant's Bayes classifier from mail files and show what it has learnt.

Registered in :mod:`mailward.cli` with ``cli.add_command(bayes)``.
"""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import TypeVar

import click

from mailward.clicommon import db_session

#: The first bytes of an mbox file: its first message's "From " separator line.
MBOX_MAGIC = b"From "
T = TypeVar("T")
#: Mails parsed and trained at a time (Bayes counts a batch in one pass).
TRAIN_BATCH = 200


def _is_mbox(path: Path) -> bool:
    """An mbox holds messages separated by "From " lines; a single mail starts with a header field instead (a
    "From " envelope line on one mail, as some tools save it, makes it a one-message mbox: the same mail)."""
    with path.open("rb") as f:
        return f.read(len(MBOX_MAGIC)) == MBOX_MAGIC


def mail_files(path: Path) -> Iterator[Path]:
    """Every regular, non-hidden file under a directory (sorted), or the path itself."""
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and not any(part.startswith(".") for part in child.relative_to(path).parts):
                yield child
    else:
        yield path


def raw_mails(path: Path) -> Iterator[bytes]:
    """The raw mails of a path: a directory of mail files (one mail each), an mbox file, or one mail file."""
    if path.is_file() and _is_mbox(path):
        box = mailbox.mbox(str(path), create=False)
        try:
            for key in box.iterkeys():
                yield box.get_bytes(key)
        finally:
            box.close()
        return
    for file in mail_files(path):
        yield file.read_bytes()


@click.group()
def bayes() -> None:
    """Per-tenant Bayes classifier."""


def batched(items: Iterator[T], size: int) -> Iterator[list[T]]:
    """Lists of ``size`` items (the last one shorter) until ``items`` runs out."""
    while chunk := list(islice(items, size)):
        yield chunk


@bayes.command("train")
@click.argument("tenant_ref", metavar="TENANT")
@click.option("--spam", "spam_paths", multiple=True, metavar="PATH",
              type=click.Path(exists=True, path_type=Path), help="A directory of mail files or an mbox of spam.")
@click.option("--ham", "ham_paths", multiple=True, metavar="PATH",
              type=click.Path(exists=True, path_type=Path), help="A directory of mail files or an mbox of ham.")
def bayes_train(tenant_ref: str, spam_paths: tuple[Path, ...], ham_paths: tuple[Path, ...]) -> None:
    """Train TENANT's Bayes on spam and/or ham (each option may be given more than once)."""
    from smtp.mime import parse_mail
    from tenants import learning
    from tenants.mail.bayes import stats, train
    from tenants.scope import tenant_scope
    from tenants.services import get_tenant

    if not spam_paths and not ham_paths:
        raise click.UsageError("give --spam PATH and/or --ham PATH")
    with db_session() as session:
        tenant = get_tenant(session, tenant_ref)
        for label, paths in (("spam", spam_paths), ("ham", ham_paths)):
            for path in paths:
                n = 0
                try:
                    for chunk in batched((parse_mail(raw) for raw in raw_mails(path)), TRAIN_BATCH):
                        n += train(session, tenant.id, chunk, spam=label == "spam")
                        with tenant_scope(tenant.id):  # the content model's feedback learning too
                            for mail in chunk:
                                learning.learn(session, tenant.id, mail, spam=label == "spam")
                except OSError as exc:
                    raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from exc
                click.echo(f"trained {n} {label} mail(s) from {path}")
        learnt = stats(session, tenant.id)
        with tenant_scope(tenant.id):
            content = learning.status(session, tenant.id)
        click.echo(f"tenant {tenant.name}: {learnt.nspam} spam and {learnt.nham} ham trained, {learnt.tokens} tokens; "
                   f"content model learnt {content.learned} mails ({content.changed} changed it)")


@bayes.command("stats")
@click.argument("tenant_ref", metavar="TENANT")
def bayes_stats(tenant_ref: str) -> None:
    """Show how much TENANT's Bayes has learnt, and whether it scores mail yet."""
    from tenants.mail.bayes import stats
    from tenants.policy import load_policy
    from tenants.scope import tenant_scope
    from tenants.services import get_tenant

    with db_session() as session:
        tenant = get_tenant(session, tenant_ref)
        learnt = stats(session, tenant.id)
        with tenant_scope(tenant.id):
            needed = load_policy(session, tenant.id).bayes_min_trained
    active = learnt.nspam >= needed and learnt.nham >= needed
    state = "active" if active else f"inactive until {needed} spam and {needed} ham are trained"
    click.echo(f"tenant {tenant.name}: {learnt.nspam} spam, {learnt.nham} ham, {learnt.tokens} tokens; {state}")
