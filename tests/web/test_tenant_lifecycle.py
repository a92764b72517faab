"""A tenant's lifecycle: suspend (and what it means everywhere), resume, export, delete — through the service, the
MSP console, the REST API and the CLI, on a real database, the real ingress and the real CLI process."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from smtp.delivery import deliver_message
from smtp.mailstore import NewMessage, store_message
from tenants import apikeys, lifecycle
from tenants import audit as audit_log
from tenants.addresses import add_user_address
from tenants.blobs import blob_store
from tenants.dkimkeys import generate_key
from tenants.exceptions import ValidationError
from tenants.lists import add_entry
from tenants.models import (
    AuditEntry,
    BayesCorpus,
    BayesToken,
    Blob,
    Delivery,
    Message,
    MessageView,
    StatHour,
    StatTop,
    Tenant,
    UsageMonth,
    UsedToken,
    User,
)
from tenants.platform import db as tdb
from tenants.policy import save_settings
from tenants.relay import add_relay_network, create_smtp_credential, load_relay_networks, verify_smtp_login
from tenants.scope import TenantScoped, msp_scope, tenant_scope
from tenants.services import get_tenant
from tests.fixtures.api import API, auth, make_key
from tests.integration.test_ingress import client, make_mail
from tests.support.held import hold, raw_mail
from tests.support.servers import run_cli, wait_for
from tests.support.web import csrf_token, post_form, read, sign_in, text

SMTP_PASSWORD = "relay-password-long-enough"
#: Tables every populated tenant has rows in (the delete test proves each one is emptied, not just the empty ones).
POPULATED = {"domain", "user_account", "api_key", "message", "blob", "delivery", "event", "finding",
             "policy_settings", "bayes_token", "bayes_corpus", "dkim_key", "relay_network", "smtp_credential",
             "list_entry", "user_address", "message_view", "used_token", "audit_entry", "stat_hour", "stat_top",
             "usage_month"}


@dataclass
class Populated:
    """What :func:`populate` made for one tenant, with the secrets an export must never contain."""

    tenant_id: int
    held_id: str
    queued_id: str
    api_key: str
    secrets: list[bytes]


def populate(cfg: Any, tenant_id: int, *, domain: str, net: str, tag: str, user_email: str) -> Populated:
    """A row in every tenant table of one tenant: mail (held and queued), settings, keys, logins, statistics."""
    held_id = hold(cfg, tenant_id, rcpts=(user_email,), subject=f"held {tag}")
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        tenant = s.get(Tenant, tenant_id)
        assert tenant is not None
        queued = store_message(s, NewMessage(tenant_id=tenant_id, queue_id=f"Q{tag}", mail_from="a@sender.example",
                                             rcpts=[f"bob@{domain}"], data=make_mail(f"bob@{domain}", f"queued {tag}")))
        key = apikeys.create(s, tenant, "read,write,quarantine", f"key {tag}")
        cred = create_smtp_credential(s, tenant, f"relay-{tag}@{domain}", SMTP_PASSWORD)
        dkim = generate_key(s, cfg, domain, f"sel{tag}", bits=1024)  # the smallest: quick to make
        add_relay_network(s, tenant, net)
        save_settings(s, tenant_id, {"digest_hour": 0})
        user = s.scalars(select(User).where(User.email == user_email)).one()
        user.totp_secret_enc = f"totp-secret-{tag}-not-for-export"
        add_user_address(s, user.id, f"alias-{tag}@{domain}")
        add_entry(s, kind="block", value=f"bad-{tag}.example", tenant_id=tenant_id)
        s.add_all([
            MessageView(tenant_id=tenant_id, message_id=held_id, user_email=user_email),
            BayesToken(tenant_id=tenant_id, token=42, spam=1, ham=0),
            BayesCorpus(tenant_id=tenant_id, nspam=1, nham=0),
            StatHour(tenant_id=tenant_id, hour=now, direction="inbound", domain=domain, mails=2, bytes=100),
            StatTop(tenant_id=tenant_id, day=now.replace(hour=0), kind="sender", key="a@sender.example", count=2),
            UsageMonth(tenant_id=tenant_id, month=now.strftime("%Y-%m"), mails=2, bytes=100, mailboxes=1),
        ])
        audit_log.record(s, actor="test", action="test.populate", target=tag, tenant_id=tenant_id)
        s.flush()
        secrets = [key.key.key_hash.encode(), key.secret.encode(), cred.password_hash.encode(),
                   dkim.private_key_enc.encode(), user.password_hash.encode(), user.totp_secret_enc.encode(),
                   SMTP_PASSWORD.encode()]
        queued_id, api_key = queued.id, key.secret
    with msp_scope(), tdb.session_scope(cfg) as s:
        s.add(UsedToken(jti=f"jti-{tag}", tenant_id=tenant_id, result="released"))
    return Populated(tenant_id, held_id, queued_id, api_key, secrets)


def table_counts(cfg: Any, tenant_id: int) -> dict[str, int]:
    """Rows of ``tenant_id`` in every table that has a tenant_id."""
    def count(s: Any) -> dict[str, int]:
        return {m.__tablename__: int(s.scalar(select(func.count()).select_from(m).where(m.tenant_id == tenant_id)))
                for m in lifecycle.tenant_tables()}
    return read(cfg, count)


def audit(cfg: Any, tenant_id: int | None, action: str) -> None:
    with msp_scope(), tdb.session_scope(cfg) as s:
        audit_log.record(s, actor="test", action=action, target="t", tenant_id=tenant_id)


def do_export(cfg: Any, tenant_id: int, *, record: bool = True) -> bytes:
    """Export as the callers do: write the ZIP, then record the export in the audit log."""
    buf = io.BytesIO()
    with msp_scope(), tdb.session_scope(cfg) as s:
        lifecycle.export(s, cfg, get_tenant(s, tenant_id), buf)
    if record:
        audit(cfg, tenant_id, lifecycle.EXPORT_ACTION)
    return buf.getvalue()


def suspend(cfg: Any, tenant_id: int) -> None:
    with msp_scope(), tdb.session_scope(cfg) as s:
        assert lifecycle.suspend(s, get_tenant(s, tenant_id))
    audit(cfg, tenant_id, lifecycle.SUSPEND_ACTION)


def resume(cfg: Any, tenant_id: int) -> None:
    with msp_scope(), tdb.session_scope(cfg) as s:
        assert lifecycle.resume(s, get_tenant(s, tenant_id))


def delete(cfg: Any, tenant_id: int) -> dict[str, int]:
    with msp_scope(), tdb.session_scope(cfg) as s:
        return lifecycle.delete(s, cfg, get_tenant(s, tenant_id))


@pytest.fixture
def data(cfg, world) -> dict[str, Populated]:
    return {"acme": populate(cfg, world["acme"].id, domain="acme.test", net="198.51.100.0/24", tag="a",
                             user_email="user@acme.test"),
            "beta": populate(cfg, world["beta"].id, domain="beta.test", net="203.0.113.0/24", tag="b",
                             user_email="admin@beta.test")}


# --- the service ----------------------------------------------------------------------------------------------------

def test_every_tenant_owned_model_is_covered_by_delete_and_export():
    """A new tenant-owned table is deleted (and exported) without anyone remembering to add it here."""
    def subclasses(cls: type) -> set[type]:
        out = set()
        for sub in cls.__subclasses__():
            out |= {sub} | subclasses(sub)
        return out

    scoped = {c for c in subclasses(TenantScoped) if hasattr(c, "__table__")}
    tables = set(lifecycle.tenant_tables())
    assert scoped <= tables and UsedToken in tables and Tenant not in tables
    exported = set(lifecycle.JSONL_FILES.values()) | set(lifecycle.settings_models()) | lifecycle.NOT_EXPORTED
    assert tables <= exported


def test_export_holds_every_row_and_raw_mail_and_no_secret(cfg, data):
    acme, beta = data["acme"], data["beta"]
    blob = do_export(cfg, acme.tenant_id, record=False)
    zf = zipfile.ZipFile(io.BytesIO(blob))
    assert zf.testzip() is None
    manifest = json.loads(zf.read("manifest.json"))
    assert manifest["tenant_id"] == acme.tenant_id and manifest["format"] == lifecycle.EXPORT_FORMAT

    for name, meta in manifest["files"].items():  # every file is listed with its real hash and size
        content = zf.read(name)
        assert hashlib.sha256(content).hexdigest() == meta["sha256"] and len(content) == meta["bytes"], name
    assert set(zf.namelist()) == set(manifest["files"]) | {"manifest.json"}

    counts = table_counts(cfg, acme.tenant_id)
    for file_name, model in lifecycle.JSONL_FILES.items():
        lines = zf.read(file_name).decode().splitlines()
        assert len(lines) == manifest["counts"][file_name.removesuffix(".jsonl")] == counts[model.__tablename__]
        assert all(json.loads(line)["tenant_id"] == acme.tenant_id for line in lines)
    assert counts["message"] == 2 and manifest["counts"]["raw_messages"] == 2

    settings = json.loads(zf.read("tenant.json"))
    assert settings["tenant"]["name"] == "Acme"
    assert sorted(d["name"] for d in settings["domains"]) == ["acme.test", "acme2.test"]
    assert {u["email"] for u in settings["users"]} == {"admin@acme.test", "auditor@acme.test", "user@acme.test"}
    assert settings["policy_settings"][0]["settings"] == {"digest_hour": 0}
    assert [k["name"] for k in settings["api_keys"]] == ["key a"] and settings["dkim_keys"][0]["public_key"]
    assert [n["cidr"] for n in settings["relay_networks"]] == ["198.51.100.0/24"]
    assert [c["username"] for c in settings["smtp_credentials"]] == ["relay-a@acme.test"]
    assert manifest["counts"]["users"] == 3

    with tenant_scope(acme.tenant_id), tdb.session_scope(cfg) as s:
        stored = blob_store.get(s, acme.held_id)
    assert zf.read(f"messages/{acme.held_id}.eml") == stored and b"held a" in stored
    assert f"messages/{acme.queued_id}.eml" in zf.namelist()

    everything = b"".join(zf.read(n) for n in zf.namelist())
    for secret in acme.secrets:  # hashes, the key itself, encrypted private key and TOTP secret: none anywhere
        assert secret not in everything and secret not in blob, secret[:12]
    for column in (b"password_hash", b"key_hash", b"private_key_enc", b"totp_secret_enc"):
        assert column not in everything
    assert beta.held_id.encode() not in everything and b"beta.test" not in everything  # nothing of another tenant


def test_delete_is_refused_unless_suspended_and_exported_since(cfg, data):
    tid = data["acme"].tenant_id
    with pytest.raises(ValidationError, match="not suspended: suspend it"):
        delete(cfg, tid)
    do_export(cfg, tid)  # an export before the suspension does not count: data may have changed since
    suspend(cfg, tid)
    with pytest.raises(ValidationError, match="no export made since it was suspended: download an export"):
        delete(cfg, tid)
    assert table_counts(cfg, tid)["message"] == 2  # refused means nothing went
    do_export(cfg, tid)
    resume(cfg, tid)  # resumed: a delete is refused again, even with the export on record
    with pytest.raises(ValidationError, match="not suspended"):
        delete(cfg, tid)


def test_delete_removes_every_row_and_blob_of_the_tenant_and_nothing_of_another(cfg, data):
    acme, beta = data["acme"].tenant_id, data["beta"].tenant_id
    before_acme, before_beta = table_counts(cfg, acme), table_counts(cfg, beta)
    assert {t for t, n in before_acme.items() if n} >= POPULATED, "populate() must fill every table it names"
    suspend(cfg, acme)
    do_export(cfg, acme)
    counts = delete(cfg, acme)
    assert counts["tenant"] == 1 and counts["message"] == 2 and counts["blob"] == 2
    assert counts["domain"] == 2 and counts["user_account"] == 3
    assert all(n == 0 for n in table_counts(cfg, acme).values()), table_counts(cfg, acme)
    assert read(cfg, lambda s: s.scalar(select(func.count()).select_from(Blob).where(Blob.tenant_id == acme))) == 0
    assert read(cfg, lambda s: s.get(Tenant, acme)) is None
    assert table_counts(cfg, beta) == before_beta
    with tenant_scope(beta), tdb.session_scope(cfg) as s:
        assert b"held b" in blob_store.get(s, data["beta"].held_id)


# --- what suspended means -------------------------------------------------------------------------------------------

def test_suspended_tenant_cannot_sign_in_open_sessions_end_and_resume_restores(web_app, cfg, world):
    open_session = sign_in(web_app, "user@acme.test")
    assert open_session.get("/q/").status_code == 200
    suspend(cfg, world["acme"].id)

    browser = web_app.test_client()
    resp = post_form(browser, "/login", "/login", {"email": "admin@acme.test", "password": "correct horse battery"})
    assert resp.status_code == 200 and "your organisation&#39;s account is suspended" in text(resp).lower()
    assert browser.get("/portal/").status_code == 302  # not signed in

    wrong = post_form(web_app.test_client(), "/login", "/login",
                      {"email": "admin@acme.test", "password": "wrong password!"})
    assert "suspended" not in text(wrong)  # only the right password learns why: no oracle for guessers

    resp = open_session.get("/q/")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login")
    page = open_session.get(resp.headers["Location"])
    assert "account is suspended" in text(page)
    assert open_session.get("/q/").status_code == 302  # the session is gone, not just refused once

    assert sign_in(web_app, "admin@beta.test").get("/portal/").status_code == 200  # others are unaffected
    assert sign_in(web_app, "admin@msp.test").get("/console/").status_code == 200

    resume(cfg, world["acme"].id)
    assert sign_in(web_app, "admin@acme.test").get("/portal/").status_code == 200


def test_suspended_tenants_api_keys_get_403_tenant_suspended_until_resumed(web_app, cfg, data):
    client = web_app.test_client()
    headers = {"Authorization": f"Bearer {data['acme'].api_key}"}
    assert client.get(f"{API}/domains", headers=headers).status_code == 200
    suspend(cfg, data["acme"].tenant_id)
    resp = client.get(f"{API}/domains", headers=headers)
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "tenant_suspended"
    other = client.get(f"{API}/domains", headers={"Authorization": f"Bearer {data['beta'].api_key}"})
    assert other.status_code == 200
    resume(cfg, data["acme"].tenant_id)
    assert client.get(f"{API}/domains", headers=headers).status_code == 200


def test_suspended_tenants_domains_are_refused_at_rcpt_and_its_network_may_not_relay(env, cfg, acme, sink, ingress):
    """Through the real ingress: RCPT for its domain and relaying from its network get 550 while suspended."""
    def rcpt_codes() -> tuple[int, int]:
        with client(env) as c:
            c.ehlo()
            c.mail("alice@acme.test")
            inbound = c.rcpt("bob@acme.test")[0]
            c.rset()
            c.mail("alice@acme.test")
            relayed = c.rcpt("carol@external.example")[0]
            c.rset()
        return inbound, relayed

    assert run_cli(["relay", "add", "Acme", "127.0.0.0/8"], env).returncode == 0
    wait_for(lambda: rcpt_codes() == (250, 250), 15, what="Acme accepted and relaying")
    result = run_cli(["tenant", "suspend", "Acme"], env)
    assert result.returncode == 0 and "tenant Acme suspended" in result.stdout
    wait_for(lambda: rcpt_codes() == (550, 550), 15, what="Acme refused at RCPT")
    with client(env) as c:
        c.ehlo()
        c.mail("alice@sender.example")
        code, reply = c.rcpt("bob@acme.test")
        assert code == 550 and reply.startswith(b"5.7.1")
    assert run_cli(["tenant", "resume", "Acme"], env).returncode == 0
    wait_for(lambda: rcpt_codes() == (250, 250), 15, what="Acme accepted and relaying again")


def test_suspended_tenants_smtp_logins_and_relay_networks_are_refused(cfg, data, session):
    login = "relay-a@acme.test"
    with msp_scope():
        assert verify_smtp_login(session, login, SMTP_PASSWORD) is not None
        assert any(n.tenant_id == data["acme"].tenant_id for n in load_relay_networks(session))
    session.rollback()
    suspend(cfg, data["acme"].tenant_id)
    with msp_scope():
        assert verify_smtp_login(session, login, SMTP_PASSWORD) is None
        nets = load_relay_networks(session)
        assert all(n.tenant_id != data["acme"].tenant_id for n in nets) and nets  # Beta's still relays
        assert verify_smtp_login(session, "relay-b@beta.test", SMTP_PASSWORD) is not None


def test_suspended_tenant_gets_no_digests(cfg, data, session):
    from worker.digest import due_tenants

    evening = datetime.now(UTC).replace(hour=23, minute=0)
    acme, beta = data["acme"].tenant_id, data["beta"].tenant_id
    assert {t for t, _ in due_tenants(session, evening)} >= {acme, beta}
    session.rollback()
    suspend(cfg, acme)
    due = {t for t, _ in due_tenants(session, evening)}
    assert acme not in due and beta in due


def test_mail_accepted_before_the_suspension_is_still_delivered(cfg, factory, sink):
    acme = factory.tenant("Acme", ("acme.test",), transport_port=sink.port)
    with tenant_scope(acme.id), tdb.session_scope(cfg) as s:
        msg = store_message(s, NewMessage(tenant_id=acme.id, queue_id="Q1", mail_from="a@sender.example",
                                          rcpts=["bob@acme.test"], data=make_mail("bob@acme.test", "accepted")))
        message_id = msg.id
    suspend(cfg, acme.id)
    assert deliver_message(cfg, acme.id, message_id) == 1
    assert b"Subject: accepted" in sink.wait_count(1)[0].data


# --- the console ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("email,status", [("admin@msp.test", 200), ("helpdesk@msp.test", 200),
                                          ("admin@acme.test", 404), ("auditor@acme.test", 404),
                                          ("user@acme.test", 404)])
def test_tenant_page_is_for_msp_roles_and_only_msp_admin_may_act(web_app, cfg, data, email, status):
    client = sign_in(web_app, email)
    tid = data["acme"].tenant_id
    resp = client.get(f"/console/tenants/{tid}")
    assert resp.status_code == status
    if email != "admin@msp.test":  # everyone else: every action is 404, and nothing changes
        token = csrf_token(text(client.get("/", follow_redirects=True)))
        for action in ("suspend", "resume", "export", "delete"):
            posted = client.post(f"/console/tenants/{tid}/{action}",
                                 data={"csrf_token": token, "state-confirm": "y", "delete-name": "Acme"})
            assert posted.status_code == 404, (email, action)
    if status == 200:
        page = text(resp)
        assert "acme.test" in page and "admin@acme.test" in page and "auditor@acme.test" in page
        assert "user@acme.test" not in page  # admins, not every user
        assert "<dt>Mails</dt><dd>2</dd>" in page and "<dt>Protected mailboxes</dt><dd>1</dd>" in page  # usage
        assert ("Download export" in page) == (email == "admin@msp.test")
        assert ("Suspend tenant" in page) == (email == "admin@msp.test")
    assert not read(cfg, lambda s: s.get(Tenant, tid).suspended)
    index = text(sign_in(web_app, "admin@msp.test").get("/console/"))
    assert f'href="/console/tenants/{tid}"' in index


def test_console_suspend_export_delete_as_msp_admin(web_app, cfg, data):
    tid = data["acme"].tenant_id
    client = sign_in(web_app, "admin@msp.test")
    page = f"/console/tenants/{tid}"
    unconfirmed = post_form(client, page, f"{page}/suspend", {})
    assert unconfirmed.status_code == 422 and "Tick the box" in text(unconfirmed)
    assert not read(cfg, lambda s: s.get(Tenant, tid).suspended)
    assert post_form(client, page, f"{page}/suspend", {"state-confirm": "y"}).status_code == 302
    assert read(cfg, lambda s: s.get(Tenant, tid).suspended)
    shown = text(client.get(page))
    assert "suspended" in shown and 'name="delete-name"' not in shown  # no delete form before an export

    exported = post_form(client, page, f"{page}/export", {})
    assert exported.status_code == 200 and exported.mimetype == "application/zip"
    assert "attachment" in exported.headers["Content-Disposition"]
    zf = zipfile.ZipFile(io.BytesIO(exported.get_data()))
    assert json.loads(zf.read("manifest.json"))["counts"]["messages"] == 2

    shown = text(client.get(page))
    assert 'name="delete-name"' in shown and "2 messages" in shown and "1 queued delivery" in shown
    wrong = post_form(client, page, f"{page}/delete", {"delete-name": "acme"})
    assert wrong.status_code == 422 and "type Acme exactly" in text(wrong)
    assert read(cfg, lambda s: s.get(Tenant, tid)) is not None

    done = post_form(client, page, f"{page}/delete", {"delete-name": "Acme"})
    assert done.status_code == 302 and done.headers["Location"].endswith("/console/")
    assert read(cfg, lambda s: s.get(Tenant, tid)) is None
    assert all(n == 0 for n in table_counts(cfg, tid).values())
    entries = read(cfg, lambda s: [(e.action, e.tenant_id, e.actor) for e in s.scalars(
        select(AuditEntry).where(AuditEntry.action.like("tenant.%")).order_by(AuditEntry.id))])
    assert ("tenant.delete", None, "admin@msp.test") in entries  # kept at MSP level: the tenant's own log is gone
    assert client.get(page).status_code == 404


# --- the REST API ---------------------------------------------------------------------------------------------------

def test_api_tenant_routes_are_404_for_tenant_keys(web_app, cfg, data):
    client = web_app.test_client()
    tid = data["acme"].tenant_id
    for headers in (auth(make_key(cfg, tid)), auth(data["beta"].api_key)):
        calls = [client.post(f"{API}/tenants", json={"name": "Mine"}, headers=headers),
                 client.get(f"{API}/tenants/{tid}", headers=headers),
                 client.post(f"{API}/tenants/{tid}/suspend", headers=headers),
                 client.post(f"{API}/tenants/{tid}/resume", headers=headers),
                 client.get(f"{API}/tenants/{tid}/export", headers=headers),
                 client.delete(f"{API}/tenants/{tid}", json={"confirm": "Acme"}, headers=headers)]
        assert [r.status_code for r in calls] == [404] * 6
        assert all(r.get_json()["error"]["code"] == "not_found" for r in calls)
    assert not read(cfg, lambda s: s.get(Tenant, tid).suspended)


def test_api_tenant_lifecycle_with_an_msp_key(web_app, cfg, data):
    client = web_app.test_client()
    msp = auth(make_key(cfg, None))
    created = client.post(f"{API}/tenants", json={"name": "Gamma"}, headers=msp)
    assert created.status_code == 201 and created.get_json()["name"] == "Gamma"
    dup = client.post(f"{API}/tenants", json={"name": "gamma"}, headers=msp)
    assert dup.status_code == 422 and "already exists" in dup.get_json()["error"]["message"]

    tid = data["acme"].tenant_id
    detail = client.get(f"{API}/tenants/{tid}", headers=msp).get_json()
    assert detail["name"] == "Acme" and detail["messages"] == 2 and detail["queued_deliveries"] == 1
    assert [d["name"] for d in detail["domains"]] == ["acme.test", "acme2.test"] and detail["usage"]["mails"] == 2
    assert detail["deletable"] is False

    early = client.delete(f"{API}/tenants/{tid}", json={"confirm": "Acme"}, headers=msp)
    assert early.status_code == 409 and "suspend it" in early.get_json()["error"]["message"]
    suspended = client.post(f"{API}/tenants/{tid}/suspend", headers=msp)
    assert suspended.status_code == 200 and suspended.get_json()["suspended"] is True

    read_only = client.get(f"{API}/tenants/{tid}/export", headers=auth(make_key(cfg, None, "read")))
    assert read_only.status_code == 403 and read_only.get_json()["error"]["code"] == "forbidden_scope"
    no_export = client.delete(f"{API}/tenants/{tid}", json={"confirm": "Acme"}, headers=msp)
    assert no_export.status_code == 409 and "download an export" in no_export.get_json()["error"]["message"]
    exported = client.get(f"{API}/tenants/{tid}/export", headers=msp)
    assert exported.status_code == 200 and exported.mimetype == "application/zip"
    assert zipfile.ZipFile(io.BytesIO(exported.get_data())).read(f"messages/{data['acme'].held_id}.eml")
    assert client.get(f"{API}/tenants/{tid}", headers=msp).get_json()["deletable"] is True

    wrong = client.delete(f"{API}/tenants/{tid}", json={"confirm": "Beta"}, headers=msp)
    assert wrong.status_code == 422 and "confirm" in wrong.get_json()["error"]["fields"]
    missing = client.delete(f"{API}/tenants/{tid}", headers=msp)
    assert missing.status_code == 422
    gone = client.delete(f"{API}/tenants/{tid}", json={"confirm": "Acme"}, headers=msp)
    assert gone.status_code == 200, gone.get_json()
    assert gone.get_json()["deleted"]["message"] == 2 and gone.get_json()["deleted"]["tenant"] == 1
    assert client.get(f"{API}/tenants/{tid}", headers=msp).status_code == 404
    assert all(n == 0 for n in table_counts(cfg, tid).values())
    actors = read(cfg, lambda s: {e.action: e.actor for e in s.scalars(
        select(AuditEntry).where(AuditEntry.action == "tenant.delete"))})
    assert actors["tenant.delete"].startswith("api key mw_")


# --- the CLI --------------------------------------------------------------------------------------------------------

def test_cli_suspend_export_delete(env, cfg, data, tmp_path):
    out = tmp_path / "acme.zip"
    tid = data["acme"].tenant_id
    refused = run_cli(["tenant", "delete", "Acme", "--confirm", "Acme"], env)
    assert refused.returncode == 1 and "not suspended: suspend it" in refused.stderr

    assert run_cli(["tenant", "suspend", "Acme"], env).stdout.strip() == "tenant Acme suspended"
    assert run_cli(["tenant", "suspend", "Acme"], env).stdout.strip() == "tenant Acme was already suspended"
    assert "Acme (suspended)" in run_cli(["tenant", "list"], env).stdout

    exported = run_cli(["tenant", "export", "Acme", "--output", str(out)], env)
    assert exported.returncode == 0 and "2 message(s)" in exported.stdout, exported.stderr
    assert json.loads(zipfile.ZipFile(out).read("manifest.json"))["counts"]["raw_messages"] == 2
    assert not (tmp_path / "acme.zip.part").exists()

    wrong = run_cli(["tenant", "delete", "Acme", "--confirm", "Beta"], env)
    assert wrong.returncode == 2 and "--confirm must be the tenant's name" in wrong.stderr
    assert read(cfg, lambda s: s.get(Tenant, tid)) is not None
    deleted = run_cli(["tenant", "delete", "Acme", "--confirm", "Acme"], env)
    assert deleted.returncode == 0 and deleted.stdout.startswith("tenant Acme deleted:"), deleted.stderr
    assert read(cfg, lambda s: s.get(Tenant, tid)) is None
    assert all(n == 0 for n in table_counts(cfg, tid).values())
    assert "Acme" not in run_cli(["tenant", "list"], env).stdout
    entries = read(cfg, lambda s: [(e.action, e.actor) for e in s.scalars(
        select(AuditEntry).where(AuditEntry.tenant_id.is_(None)))])
    assert ("tenant.delete", "cli") in entries


def test_export_pages_messages_by_keyset_and_reports_mail_purged_meanwhile(cfg, data):
    """Message ids come in batches without repeats or gaps; a raw mail that vanished is reported, not fatal."""
    tid = data["acme"].tenant_id
    for i in range(3):
        hold(cfg, tid, rcpts=("user@acme.test",), subject=f"extra {i}", data=raw_mail(subject=f"extra {i}"))
    with tenant_scope(tid), tdb.session_scope(cfg) as s:
        batches = list(lifecycle.message_ids(s, tid, batch=2))
        expected = list(s.scalars(select(Message.id).where(Message.tenant_id == tid).order_by(Message.id)))
        assert [len(b) for b in batches] == [2, 2, 1] and sum(batches, []) == expected
        assert blob_store.delete(s, [data["acme"].held_id]) == 1  # purged while an export runs
    zf = zipfile.ZipFile(io.BytesIO(do_export(cfg, tid, record=False)))
    manifest = json.loads(zf.read("manifest.json"))
    assert manifest["counts"]["messages"] == 5 and manifest["counts"]["raw_messages"] == 4
    assert manifest["missing_raw"] == [data["acme"].held_id]
    assert len(zf.read("events.jsonl").splitlines()) == table_counts(cfg, tid)["event"] > 0
    assert {json.loads(x)["subject"] for x in zf.read("messages.jsonl").splitlines()} >= {"extra 0", "extra 2"}


def test_digest_links_of_a_suspended_tenant_neither_sign_in_nor_act(web_app, cfg, data):
    """A digest mailed before the suspension: its sign-in and one-click links are refused, the mail stays held."""
    from tenants.tokens import make_action_token, make_login_token

    acme = data["acme"]
    user = read(cfg, lambda s: s.scalars(select(User).where(User.email == "user@acme.test")).one())
    secret = cfg.resolve_secret_key()
    login = make_login_token(secret, tenant_id=acme.tenant_id, user_id=user.id, email=user.email)
    release = make_action_token(secret, tenant_id=acme.tenant_id, message_id=acme.held_id, rcpts=[user.email],
                                action="release", user_id=user.id)
    client = web_app.test_client()
    assert client.get(f"/q/action/{release}").status_code == 200  # before: the link asks for confirmation
    suspend(cfg, acme.tenant_id)
    for path in (f"/q/login/{login}", f"/q/action/{release}"):
        page = client.get(path)
        assert page.status_code == 400 and "account is suspended" in text(page), path
    token = csrf_token(text(client.get("/login")))
    for path in (f"/q/login/{login}", f"/q/action/{release}"):
        assert client.post(path, data={"csrf_token": token}).status_code == 400, path
    held = read(cfg, lambda s: s.scalars(select(Delivery.status).where(Delivery.message_id == acme.held_id)).all())
    assert held == ["quarantined"]
