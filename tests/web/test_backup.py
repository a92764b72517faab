"""Encrypted backup and restore (issue 12): a backup of a seeded installation restored onto a fresh, empty one holds
the same rows, table by table; a wrong key, a flipped byte anywhere or a truncated file is refused and changes nothing;
a master key opens it too; the daily job keeps N; the console lists backups to MSP staff only; a bad key file stops
the start naming the variable. Real databases (SQLite and PostgreSQL), the real CLI entry point."""

from __future__ import annotations

import base64
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from mailward.cli import main
from smtp.mailstore import NewMessage, store_message
from tenants import apikeys, backup, backup_data, backup_format, totp
from tenants import recipients as rcpt
from tenants.addresses import add_user_address
from tenants.backup_format import BackupError
from tenants.dkimkeys import decrypt_private_key, generate_key
from tenants.domains import remove as remove_domain
from tenants.egress import EgressPolicy
from tenants.exceptions import ConfigError
from tenants.lists import add_entry
from tenants.models import Base, BayesCorpus, BayesToken, Domain, Tenant, User
from tenants.platform import db as tdb
from tenants.platform.config import Config, set_config
from tenants.policy import save_settings
from tenants.relay import add_relay_network, create_smtp_credential
from tenants.scope import msp_scope, tenant_scope
from tenants.services import create_tenant, create_user
from tests.conftest import _fresh_database
from tests.support.held import hold
from tests.support.web import sign_in, text
from worker import backup as backup_job

LDAP_PASSWORD = "bind-password-of-acme"
TOTP_SECRET = "JBSWY3DPEHPK3PXP"


def mailward(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the ``mailward`` command in process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def seed(cfg: Config, world: dict[str, Any]) -> dict[str, Any]:
    """Rows in every configuration table through the services: branding, policies (the MSP baseline too), lists at
    every level, DKIM and API keys, SMTP logins, relay networks, recipients and LDAP, TOTP, a removed domain."""
    acme, beta = world["acme"], world["beta"]
    with msp_scope(), tdb.session_scope(cfg) as s:
        save_settings(s, None, {"tag_threshold": 4.5, "locked": ["scores"]})
        add_entry(s, kind="block", value="msp-blocked.example", created_by="admin@msp.test")
        msp_key = apikeys.create(s, None, "read", "msp monitoring")
        t = s.get(Tenant, acme.id)
        assert t is not None
        t.brand_name, t.brand_color = "Acme Mail", "#123456"
    with tenant_scope(acme.id), tdb.session_scope(cfg) as s:
        t = s.get(Tenant, acme.id)
        assert t is not None
        save_settings(s, acme.id, {"greylisting": True, "scores": {"BAYES_99": 5.0}})
        user = s.scalars(select(User).where(User.email == "user@acme.test")).one()
        add_entry(s, kind="allow", value="partner.example", tenant_id=acme.id)
        add_entry(s, kind="block", value="pest@junk.example", tenant_id=acme.id, user_id=user.id)
        add_user_address(s, user.id, "sales@acme.test")
        key = apikeys.create(s, t, "read,write", "acme key")
        create_smtp_credential(s, t, "relay@acme.test", "relay-password-long-enough")
        dkim = generate_key(s, cfg, "acme.test", "sel1", bits=1024)
        add_relay_network(s, t, "198.51.100.0/24")
        rcpt.add_static(s, acme.id, "bob@acme.test")
        rcpt.set_ldap(s, cfg, acme.id, url="ldap://127.0.0.1:389", base_dn="dc=acme,dc=test",
                      bind_dn="cn=reader,dc=acme,dc=test", password=LDAP_PASSWORD, search_filter="",
                      attributes="", egress=EgressPolicy.unchecked(cfg))
        admin = s.scalars(select(User).where(User.email == "admin@acme.test")).one()
        totp.store_pending(cfg, admin, TOTP_SECRET)
        s.add_all([BayesToken(tenant_id=acme.id, token=42, spam=3, ham=1), BayesCorpus(tenant_id=acme.id, nspam=3,
                                                                                    nham=1)])
        d2 = s.scalars(select(Domain).where(Domain.name == "acme2.test")).one()
        remove_domain(s, d2, "acme2.test")
        pem = decrypt_private_key(cfg, dkim.private_key_enc)
        key_hash = key.key.key_hash
    held = hold(cfg, acme.id, rcpts=("bob@acme.test",), subject="held for the backup")
    with tenant_scope(beta.id), tdb.session_scope(cfg) as s:
        delivered = store_message(s, NewMessage(tenant_id=beta.id, queue_id="QBETA", mail_from="a@sender.example",
                                                rcpts=["x@beta.test"], data=b"Subject: queued\r\n\r\nhi\r\n"))
        delivered_id = delivered.id
    return {"dkim_pem": pem, "key_hash": key_hash, "msp_key_hash": msp_key.key.key_hash, "held": held,
            "queued": delivered_id}


@pytest.fixture
def empty_env(env: dict[str, str], tmp_path: Path, pg_server: Any, db_template: str) -> dict[str, str]:
    """A second, fresh installation (its own database and data directory, another secret key)."""
    data_dir = tmp_path / "other"
    url = _fresh_database(pg_server, db_template, data_dir)
    other = {**env, "MAILWARD_DATA_DIR": str(data_dir), "MAILWARD_SECRET_KEY": "another-installations-secret"}
    other.pop("MAILWARD_DATABASE_URL", None)
    if url:
        other["MAILWARD_DATABASE_URL"] = url
    return other


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    """A backup key and a master key made by ``mailward backup keygen``, in a folder of their own."""
    folder = tmp_path / "keys"
    folder.mkdir()
    out = {}
    for name in ("backup", "master", "other"):
        out[name] = folder / f"{name}.key"
        code, stdout, err = mailward(capsys, "backup", "keygen", "--output", str(out[name]))
        assert code == 0, err
        assert backup_format.key_id(backup_format.read_key_file(out[name])) in stdout
    return out


def rows(cfg: Config, tables: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """Every row of ``tables``, ordered by primary key; encrypted columns decrypted with the installation's secret."""
    out = {}
    with msp_scope(), tdb.session_scope(cfg) as s:
        for table in tables:
            got = []
            for row in s.execute(select(table).order_by(*table.primary_key.columns)):
                values = dict(row._mapping)
                for name in backup_data.secret_columns(table):
                    if values[name] is not None:
                        values[name] = decrypt_private_key(cfg, values[name])
                got.append(values)
            out[table.name] = got
    return out


def tenant_count(cfg: Config) -> int:
    with msp_scope(), tdb.session_scope(cfg) as s:
        return int(s.scalar(select(func.count()).select_from(Tenant)) or 0)


def test_every_configuration_table_is_in_a_backup() -> None:
    """What an MSP configures is backed up: a table the models gain is too, unless named as mail or history."""
    names = {t.name for t in backup_data.config_tables()}
    assert {"msp", "tenant", "domain", "retired_transport", "user_account", "api_key", "policy_settings",
            "list_entry", "dkim_key", "relay_network", "smtp_credential", "user_address", "recipient_verification",
            "valid_recipient", "bayes_token", "bayes_corpus", "used_token"} <= names
    assert not names & set(backup_data.MAIL_TABLES)
    assert names | set(backup_data.MAIL_TABLES) | set(backup_data.NOT_BACKED_UP) == set(Base.metadata.tables)


def test_restore_onto_a_fresh_installation_gives_the_same_rows(cfg: Config, world: dict[str, Any],
                                                               empty_env: dict[str, str], keys: dict[str, Path],
                                                               tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    seeded = seed(cfg, world)
    out = tmp_path / "backups" / "acme.mwbak"
    out.parent.mkdir()
    code, stdout, err = mailward(capsys, "backup", "create", "--output", str(out), "--key-file", str(keys["backup"]))
    assert code == 0, err
    assert "2 tenant(s)" in stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert backup.status_path(out).is_file()
    raw = out.read_bytes()
    for secret in (b"acme.test", b"Acme Mail", seeded["key_hash"].encode(), LDAP_PASSWORD.encode(),
                   seeded["dkim_pem"][30:80]):
        assert secret not in raw  # encrypted, not merely encoded
    before = rows(cfg, backup_data.config_tables())

    target = Config.from_env(empty_env)
    with msp_scope(), tdb.session_scope(target) as s:  # what `make run` leaves in a new installation: its first admin
        create_user(s, "first@new.test", "msp_admin", None, "first admin password")
    set_config(target)
    code, stdout, err = mailward(capsys, "backup", "restore", str(out), "--key-file", str(keys["backup"]))
    assert code == 0, err
    assert "2 tenant(s)" in stdout and "user_account 1" in stdout
    after = rows(target, backup_data.config_tables())
    for table in backup_data.config_tables():
        assert after[table.name] == before[table.name], table.name
    assert before["dkim_key"] and before["retired_transport"] and before["recipient_verification"]
    assert {r["tenant_id"] for r in after["policy_settings"]} >= {None, world["acme"].id}
    with msp_scope(), tdb.session_scope(target) as s:  # secrets re-encrypted under the new installation's secret
        assert s.scalars(select(User).where(User.email == "first@new.test")).first() is None
        admin = s.scalars(select(User).where(User.email == "admin@acme.test")).one()
        assert totp.secret_of(target, admin) == TOTP_SECRET
        # ids keep being handed out after the restored ones (PostgreSQL: the sequences moved)
        newest = create_tenant(s, "After Restore")
        assert newest.id > max(world["acme"].id, world["beta"].id)
    stored = rows_raw(target, "dkim_key")[0]["private_key_enc"]
    assert decrypt_private_key(target, stored) == seeded["dkim_pem"]
    with pytest.raises(ConfigError):
        decrypt_private_key(cfg, stored)  # encrypted again, under the restoring installation's secret
    code, stdout, _ = mailward(capsys, "backup", "list", "--dir", str(out.parent))
    assert code == 0 and "acme.mwbak" in stdout and "ok" in stdout
    taken = [a for a in rows_raw(cfg, "audit_entry") if a["action"] == backup.CREATE_ACTION]
    restored = [a for a in rows_raw(target, "audit_entry") if a["action"] == backup.RESTORE_ACTION]
    assert [a["target"] for a in taken] == ["acme.mwbak"] and [a["target"] for a in restored] == ["acme.mwbak"]


def rows_raw(cfg: Config, name: str) -> list[dict[str, Any]]:
    table = Base.metadata.tables[name]
    with msp_scope(), tdb.session_scope(cfg) as s:
        return [dict(r._mapping) for r in s.execute(select(table))]


def test_held_mail_travels_with_its_bytes_only_when_asked(cfg: Config, world: dict[str, Any],
                                                          empty_env: dict[str, str], keys: dict[str, Path],
                                                          tmp_path: Path) -> None:
    seeded = seed(cfg, world)
    key = backup_format.read_key_file(keys["backup"])
    plain, full = tmp_path / "plain.mwbak", tmp_path / "full.mwbak"
    assert backup.create(cfg, plain, [key]).held_messages == 0
    assert backup.create(cfg, full, [key], with_quarantine=True).held_messages == 1
    mail = backup_data.mail_tables()
    before = rows(cfg, mail)
    target = Config.from_env(empty_env)
    backup.restore(target, full, key)
    after = rows(target, mail)
    assert [r["id"] for r in after["message"]] == [seeded["held"]]  # held mail only: not the queued one
    assert after["blob"] and after["blob"] == [r for r in before["blob"] if r["id"] == seeded["held"]]
    for name in ("delivery", "finding", "event"):
        assert after[name] == [r for r in before[name] if r["message_id"] == seeded["held"]], name
        assert after[name]


def test_a_wrong_key_is_refused_and_nothing_is_written(cfg: Config, world: dict[str, Any],
                                                        empty_env: dict[str, str], keys: dict[str, Path],
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed(cfg, world)
    out = tmp_path / "b.mwbak"
    backup.create(cfg, out, [backup_format.read_key_file(keys["backup"])])
    target = Config.from_env(empty_env)
    set_config(target)
    code, _, err = mailward(capsys, "backup", "restore", str(out), "--key-file", str(keys["other"]))
    assert code == 1
    assert "wrong key" in err and "mailward: error:" in err
    assert tenant_count(target) == 0 and rows_raw(target, "user_account") == []


def test_a_flipped_byte_anywhere_or_a_cut_is_refused(cfg: Config, world: dict[str, Any], empty_env: dict[str, str],
                                                      keys: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Tampering: every single flipped byte of the file (header, wrapped keys, payload, tags) and every cut is
    refused by the check that runs before the database is touched."""
    seed(cfg, world)
    key = backup_format.read_key_file(keys["backup"])
    out = tmp_path / "b.mwbak"
    backup.create(cfg, out, [key])
    good = out.read_bytes()
    bad = tmp_path / "bad.mwbak"
    header_end = 13 + int.from_bytes(good[9:13], "big")  # magic, version, length, header: every byte of it
    step = max(1, (len(good) - header_end) // 500)  # and 500 places spread over the chunks and their tags
    for pos in [*range(header_end + 1), *range(header_end, len(good), step), len(good) - 1]:
        damaged = bytearray(good)
        damaged[pos] ^= 0x01
        bad.write_bytes(bytes(damaged))
        with pytest.raises(BackupError):
            backup_format.verify(bad, key)
    for cut in (1, 16, 17, len(good) // 2, len(good) - 20):
        bad.write_bytes(good[:cut])
        with pytest.raises(BackupError):
            backup_format.verify(bad, key)
    bad.write_bytes(good + b"\0")
    with pytest.raises(BackupError):
        backup_format.verify(bad, key)
    damaged = bytearray(good)
    damaged[-5] ^= 0x80
    bad.write_bytes(bytes(damaged))
    target = Config.from_env(empty_env)
    set_config(target)
    code, _, err = mailward(capsys, "backup", "restore", str(bad), "--key-file", str(keys["backup"]))
    assert code == 1 and "damaged" in err
    assert tenant_count(target) == 0 and rows_raw(target, "user_account") == []
    backup.restore(target, out, key)  # the intact file still opens
    assert tenant_count(target) == 2


def test_a_large_payload_spans_chunks_and_a_dropped_chunk_is_refused(tmp_path: Path) -> None:
    key = os.urandom(32)
    payload = [os.urandom(700_000) for _ in range(4)]  # incompressible: several chunks
    out = tmp_path / "big.mwbak"
    with open(out, "wb") as fh:
        backup_format.write_backup(fh, iter(payload), [key], created_at="x", schema="s", with_quarantine=False)
    with open(out, "rb") as fh:
        _, pieces = backup_format.decrypt_chunks(fh, key)
        assert b"".join(pieces) == b"".join(payload)
    good = out.read_bytes()
    header_len = 13 + int.from_bytes(good[9:13], "big")
    sealed = backup_format.CHUNK + backup_format.TAG_LENGTH
    out.write_bytes(good[:header_len + sealed])  # cut exactly after the first chunk: it was not sealed as the last
    with pytest.raises(BackupError, match="does not verify"):
        backup_format.verify(out, key)
    out.write_bytes(good[:header_len] + good[header_len + sealed:])  # the first chunk dropped
    with pytest.raises(BackupError):
        backup_format.verify(out, key)


def test_the_master_key_opens_it_too(cfg: Config, world: dict[str, Any], empty_env: dict[str, str],
                                      keys: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    seed(cfg, world)
    out = tmp_path / "b.mwbak"
    code, stdout, err = mailward(capsys, "backup", "create", "--output", str(out), "--key-file", str(keys["backup"]),
                                 "--master-key-file", str(keys["master"]))
    assert code == 0, err
    ids = [backup_format.key_id(backup_format.read_key_file(keys[n])) for n in ("backup", "master")]
    assert all(i in stdout for i in ids)
    assert backup_format.verify(out, backup_format.read_key_file(keys["backup"])).key_ids == tuple(ids)
    with pytest.raises(BackupError, match="wrong key"):
        backup_format.verify(out, backup_format.read_key_file(keys["other"]))
    set_config(Config.from_env(empty_env))
    code, stdout, err = mailward(capsys, "backup", "restore", str(out), "--key-file", str(keys["master"]))
    assert code == 0, err
    assert tenant_count(Config.from_env(empty_env)) == 2


def test_restore_refuses_an_installation_that_has_tenants(cfg: Config, world: dict[str, Any], keys: dict[str, Path],
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.mwbak"
    backup.create(cfg, out, [backup_format.read_key_file(keys["backup"])])
    before = rows(cfg, backup_data.config_tables())
    code, _, err = mailward(capsys, "backup", "restore", str(out), "--key-file", str(keys["backup"]))
    assert code == 1 and "2 tenant(s)" in err and "empty installation" in err
    assert rows(cfg, backup_data.config_tables()) == before


def test_keygen_makes_a_private_key_file_and_never_replaces_one(keys: dict[str, Path],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert stat.S_IMODE(keys["backup"].stat().st_mode) == 0o600
    assert len(base64.b64decode(keys["backup"].read_bytes())) == 32
    before = keys["backup"].read_bytes()
    code, _, err = mailward(capsys, "backup", "keygen", "--output", str(keys["backup"]))
    assert code == 1 and "never overwritten" in err
    assert keys["backup"].read_bytes() == before


def test_a_key_file_beside_the_backup_is_refused(cfg: Config, keys: dict[str, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = keys["backup"].parent / "b.mwbak"
    code, _, err = mailward(capsys, "backup", "create", "--output", str(out), "--key-file", str(keys["backup"]))
    assert code == 1 and "keep keys away from backups" in err
    assert not out.exists()


@pytest.mark.parametrize(("content", "why"), [(None, "no such key file"), (b"too short\n", "32-byte key"),
                                              (b"A" * 31, "32-byte key")])
def test_a_bad_backup_key_file_stops_the_start_naming_the_variable(env: dict[str, str], tmp_path: Path,
                                                                  content: bytes | None, why: str) -> None:
    path = tmp_path / "bad.key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match="MAILWARD_BACKUP_KEY_FILE") as caught:
        Config.from_env({**env, "MAILWARD_BACKUP_KEY_FILE": str(path)})
    assert why in str(caught.value)


def test_a_backup_key_inside_the_backup_directory_stops_the_start(env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "backups"
    folder.mkdir()
    backup_format.write_key_file(folder / "k")
    with pytest.raises(ConfigError, match="MAILWARD_BACKUP_KEY_FILE: the key is in the backup directory"):
        Config.from_env({**env, "MAILWARD_BACKUP_KEY_FILE": str(folder / "k"), "MAILWARD_BACKUP_DIR": str(folder)})
    hex_key = tmp_path / "hex.key"
    hex_key.write_text(os.urandom(32).hex())
    cfg = Config.from_env({**env, "MAILWARD_BACKUP_KEY_FILE": str(hex_key), "MAILWARD_BACKUP_KEEP": "3"})
    assert cfg.backup_keep == 3 and cfg.effective_backup_dir == cfg.data_dir / "backups"


def scheduled(env: dict[str, str], keys: dict[str, Path], keep: int) -> Config:
    cfg = Config.from_env({**env, "MAILWARD_BACKUP_KEY_FILE": str(keys["backup"]),
                           "MAILWARD_BACKUP_MASTER_KEY_FILE": str(keys["master"]), "MAILWARD_BACKUP_KEEP": str(keep)})
    set_config(cfg)
    return cfg


def test_the_daily_backup_keeps_the_newest_n_and_records_its_status(env: dict[str, str], cfg: Config,
                                                                   world: dict[str, Any],
                                                                   keys: dict[str, Path]) -> None:
    sched = scheduled(env, keys, keep=2)
    assert backup_job.enqueue_backup(sched) is True
    assert backup_job.enqueue_backup(sched) is False  # once a day, across scheduler restarts
    assert backup_job.enqueue_backup(cfg) is False  # no key: no scheduled backups
    private = sched.effective_backup_dir
    private.mkdir(parents=True)
    backup.write_status(private / "mailward-20200101T000000Z.mwbak",  # a failed run long ago: goes with the oldest
                        {"ok": False, "error": "disk full", "started_at": "2020-01-01T00:00:00+00:00"})
    names = []
    for _ in range(3):
        names.append(backup_job.backup_job()["file"])
        time.sleep(1.05)  # one backup a second at most: names carry the time
    left = sorted(p.name for p in sched.effective_backup_dir.iterdir())
    assert left == sorted([names[1], names[1] + ".json", names[2], names[2] + ".json"])
    entries = backup.list_backups(sched.effective_backup_dir)
    assert [e.name for e in entries] == [names[2], names[1]]
    assert all(e.ok and e.tenants == 2 and e.size and len(e.key_ids) == 2 for e in entries)
    assert backup_format.verify(sched.effective_backup_dir / names[2], backup_format.read_key_file(keys["master"]))


def test_a_failed_daily_backup_leaves_its_error_for_the_console(env: dict[str, str], cfg: Config,
                                                               world: dict[str, Any], keys: dict[str, Path],
                                                               web_app: Any) -> None:
    sched = scheduled(env, keys, keep=3)
    ok = backup_job.run_backup(sched)
    time.sleep(1.05)
    keys["master"].unlink()  # taken away after the start
    with pytest.raises(BackupError):
        backup_job.run_backup(sched)
    entries = backup.list_backups(sched.effective_backup_dir)
    assert not entries[0].ok and "no such key file" in (entries[0].error or "") and not entries[0].present
    assert entries[1].name == ok["file"] and entries[1].ok
    web_app.extensions["mailward"]["config"] = sched
    page = sign_in(web_app, "admin@msp.test").get("/console/backups")
    assert page.status_code == 200
    body = text(page)
    assert ok["file"] in body and "no such key file" in body and 'id="last-error"' in body
    assert "A backup is taken daily" in body


def test_the_backups_page_is_for_msp_staff_only(cfg: Config, world: dict[str, Any], web_app: Any) -> None:
    assert sign_in(web_app, "helpdesk@msp.test").get("/console/backups").status_code == 200
    assert "No backups yet" in text(sign_in(web_app, "admin@msp.test").get("/console/backups"))
    assert 'href="/console/backups"' in text(sign_in(web_app, "admin@msp.test").get("/console/"))
    for who in ("admin@acme.test", "auditor@acme.test", "user@acme.test"):
        assert sign_in(web_app, who).get("/console/backups").status_code == 404, who
