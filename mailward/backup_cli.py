"""``mailward backup``: make a key, take an encrypted backup, restore one onto an empty installation, list them.

Registered in :mod:`mailward.cli` with ``cli.add_command(...)``. The work is :mod:`tenants.backup`'s; this module
reads key files, names files and prints. A refused restore (wrong key, damaged file, an installation with tenants)
exits 1 with one line saying why, and changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import click

from mailward.clicommon import CLI_ACTOR

KEY_FILE = click.Path(exists=False, dir_okay=False, path_type=Path)


def _keys(key_file: Path, master_key_file: Path | None) -> list[bytes]:
    from tenants.backup_format import read_key_file

    keys = [read_key_file(key_file)]
    if master_key_file is not None:
        keys.append(read_key_file(master_key_file))
    return keys


@click.group("backup")
def backup() -> None:
    """Encrypted backups of the installation's configuration (and, optionally, held mail)."""


@backup.command("keygen")
@click.option("--output", "-o", required=True, type=KEY_FILE, metavar="KEY",
              help="The new key file (mode 0600; an existing file is never replaced).")
def backup_keygen(output: Path) -> None:
    """Make a new random backup key (32 bytes, base64). Keep it away from the backups: it is what opens them."""
    from tenants.backup_format import key_id, write_key_file

    key = write_key_file(output)
    click.echo(f"backup key {key_id(key)} written to {output}")


@backup.command("create")
@click.option("--output", "-o", required=True, type=KEY_FILE, metavar="FILE", help="The backup file to write.")
@click.option("--key-file", required=True, type=KEY_FILE, metavar="KEY", help="The backup key (see keygen).")
@click.option("--master-key-file", type=KEY_FILE, metavar="KEY",
              help="An MSP master key that can open the backup too.")
@click.option("--with-quarantine", is_flag=True, help="Also the mail held in the quarantines (raw bytes included).")
def backup_create(output: Path, key_file: Path, master_key_file: Path | None, with_quarantine: bool) -> None:
    """Write an encrypted backup of tenants, domains, users, policies, lists, rules, DKIM and API key records,
    branding... to FILE."""
    from tenants import backup as service
    from tenants.backup_format import BackupError
    from tenants.platform.config import get_config

    keys = _keys(key_file, master_key_file)
    for k in (key_file, master_key_file):
        if k is not None and k.resolve().parent == output.resolve().parent:
            raise BackupError(f"the key file {k} is in the backup's directory: keep keys away from backups")
    cfg = get_config()
    result = service.create(cfg, output, keys, with_quarantine=with_quarantine)
    service.write_status(output, service.result_status(result))
    service.audit_created(cfg, result, actor=CLI_ACTOR)
    held = f", {result.held_messages} held mail(s)" if with_quarantine else ""
    click.echo(f"backup written to {output}: {result.size} bytes, {result.tenants} tenant(s){held}, "
               f"opens with key {' or '.join(result.key_ids)}")


@backup.command("restore")
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key-file", required=True, type=KEY_FILE, metavar="KEY", help="The backup key or the master key.")
def backup_restore(path: Path, key_file: Path) -> None:
    """Rebuild an empty installation (no tenants) from FILE, in one transaction, ids as they were."""
    from tenants import backup as service
    from tenants.backup_format import read_key_file
    from tenants.platform.config import get_config
    from tenants.platform.redisconn import bump_policy_version

    cfg = get_config()
    result = service.restore(cfg, path, read_key_file(key_file), actor=CLI_ACTOR)
    bump_policy_version(cfg)  # every running ingress loads the restored domains and policies
    replaced = ", ".join(f"{t} {n}" for t, n in sorted(result.replaced.items()))
    click.echo(f"restored {path.name} (taken {result.header.created_at}): {result.tenants} tenant(s), "
               f"{sum(result.counts.values())} row(s) in {len(result.counts)} table(s)")
    if replaced:
        click.echo(f"replaced what the empty installation had: {replaced}")


@backup.command("list")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Default: MAILWARD_BACKUP_DIR (<data dir>/backups).")
def backup_list(directory: Path | None) -> None:
    """The backups in the backup directory, newest first, with their status."""
    from tenants import backup as service
    from tenants.platform.config import get_config

    where = directory or get_config().effective_backup_dir
    entries = service.list_backups(where)
    if not entries:
        click.echo(f"no backups in {where}")
    for e in entries:
        state = "ok" if e.ok else f"FAILED: {e.error}"
        size = f"{e.size} bytes" if e.size is not None else "-"
        tenants = f"{e.tenants} tenant(s)" if e.tenants is not None else "-"
        keys = ",".join(e.key_ids) or "-"
        click.echo(f"{e.name}\t{e.created_at}\t{size}\t{tenants}\tkeys {keys}\t{state}")
