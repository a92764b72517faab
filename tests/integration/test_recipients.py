"""Recipient verification at RCPT: static list and catch-all through the real ingress, LDAP sync against a real slapd,
call-ahead against the real sink, mode off unchanged, and the portal, the API and the CLI with tenant isolation."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from typing import Any

import ldap3
import pytest
import redis
from rq import Queue
from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants import apikeys, directory, recipients
from tenants.exceptions import NotFound, ValidationError
from tenants.models import AuditEntry, RecipientVerification, ValidRecipient
from tenants.platform import db as tdb
from tenants.platform.jobs import SERIALIZER
from tenants.platform.redisconn import bump_policy_version
from tenants.scope import msp_scope, tenant_scope
from tests.support.servers import run_cli, wait_for
from tests.support.web import csrf_token, read, sign_in, text

API = "/api/v1"


# --- helpers --------------------------------------------------------------------------------------------------------

def as_tenant(cfg: Any, tenant_id: int, fn: Callable[[Session], Any]) -> Any:
    """Run ``fn`` in the tenant's scope and commit, then tell the ingresses (as the portal does)."""
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        out = fn(s)
    bump_policy_version(cfg)
    return out


def rcpt(env: dict[str, str], address: str) -> tuple[int, str]:
    """The ingress's reply to RCPT TO:<address> in a fresh session."""
    port = int(env["MAILWARD_SMTP_LISTEN"].rsplit(":", 1)[1])
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.sender.example", timeout=30) as c:
        c.ehlo()
        c.mail("alice@sender.example")
        code, reply = c.rcpt(address)
        c.rset()
    return code, reply.decode()


def eventually_rcpt(env: dict[str, str], address: str, code: int) -> str:
    """Wait until the ingress answers ``code`` (it reloads settings within a policy-version poll)."""
    seen: list[tuple[int, str]] = []

    def ok() -> bool:
        seen.append(rcpt(env, address))
        return seen[-1][0] == code

    try:
        wait_for(ok, 10, interval=0.3, what=f"{code} to {address}")
    except TimeoutError:
        raise AssertionError(f"{address}: expected {code}, got {seen[-1]}") from None
    return seen[-1][1]


def rows(cfg: Any, tenant_id: int, source: str | None = None) -> dict[str, str]:
    def get(s: Session) -> dict[str, str]:
        stmt = select(ValidRecipient.address, ValidRecipient.source).where(ValidRecipient.tenant_id == tenant_id)
        if source:
            stmt = stmt.where(ValidRecipient.source == source)
        return {a: src for a, src in s.execute(stmt)}

    return read(cfg, get)


def settings_row(cfg: Any, tenant_id: int) -> RecipientVerification:
    return read(cfg, lambda s: s.scalars(select(RecipientVerification)
                                         .where(RecipientVerification.tenant_id == tenant_id)).one())


def use_directory(cfg: Any, tenant_id: int, branch: Any, password: str | None = None, **kw: Any) -> None:
    as_tenant(cfg, tenant_id, lambda s: recipients.set_ldap(
        s, cfg, tenant_id, url=branch.url, base_dn=branch.base_dn, bind_dn=branch.bind_dn,
        password=branch.password if password is None else password, **kw))


def sync(cfg: Any, tenant_id: int) -> directory.SyncResult:
    return as_tenant(cfg, tenant_id, lambda s: directory.sync(s, cfg, tenant_id))


class CountingReplies(dict[str, str]):
    """The sink's ``rcpt_reply`` table, counting how often the sink was asked about each address."""

    def __init__(self, replies: dict[str, str]) -> None:
        super().__init__(replies)
        self.asked: dict[str, int] = {}

    def __contains__(self, address: object) -> bool:
        self.asked[str(address)] = self.asked.get(str(address), 0) + 1
        return super().__contains__(address)


@pytest.fixture
def acme_two(factory: Any, sink: Any) -> Any:
    """Acme with acme.test and acme2.test, delivering to the sink (no TLS)."""
    return factory.tenant("Acme", ("acme.test", "acme2.test"), transport_port=sink.port)


# --- static list and mode off through the ingress -------------------------------------------------------------------

def test_static_list_and_catch_all_at_rcpt_and_mode_off_unchanged(env, cfg, acme_two, ingress, sink):
    tid = acme_two.id
    assert rcpt(env, "nobody@acme.test")[0] == 250  # mode off (no row): every local part, as before
    assert rcpt(env, "victim@elsewhere.example")[0] == 550  # relaying is still denied

    def setup(s: Session) -> None:
        recipients.replace_static(s, tid, "Bob@acme.test\n# the whole second domain\n@acme2.test\n")
        recipients.set_mode(s, tid, "static")

    as_tenant(cfg, tid, setup)
    reply = eventually_rcpt(env, "nobody@acme.test", 550)
    assert reply.startswith("5.1.1 <nobody@acme.test>: recipient unknown")
    assert rcpt(env, "bob@acme.test")[0] == 250
    assert rcpt(env, "BOB@ACME.TEST")[0] == 250  # addresses compare case-insensitively
    assert rcpt(env, "bob+news@acme.test")[0] == 250  # subaddress of a listed address
    assert rcpt(env, "anyone@acme2.test")[0] == 250  # catch-all
    assert rcpt(env, "bobby@acme.test")[0] == 550

    as_tenant(cfg, tid, lambda s: recipients.set_mode(s, tid, "off"))
    eventually_rcpt(env, "nobody@acme.test", 250)


def test_ldap_mode_at_rcpt_accepts_until_first_sync_then_the_directory(env, cfg, acme_two, ldap_dir, ingress):
    tid = acme_two.id
    use_directory(cfg, tid, ldap_dir)
    as_tenant(cfg, tid, lambda s: recipients.set_mode(s, tid, "ldap"))
    # Never synced: nothing to compare with, so nobody is refused.
    assert rcpt(env, "stranger@acme.test")[0] == 250
    assert sync(cfg, tid).ok
    eventually_rcpt(env, "stranger@acme.test", 550)
    assert rcpt(env, "ally@acme.test")[0] == 250  # a proxyAddresses alias
    assert rcpt(env, "carol@acme2.test")[0] == 250
    as_tenant(cfg, tid, lambda s: recipients.add_static(s, tid, "postmaster@acme.test"))  # static extras count too
    eventually_rcpt(env, "postmaster@acme.test", 250)


def test_static_list_input_is_validated_and_nothing_is_lost(cfg, acme_two, factory):
    tid = acme_two.id
    beta = factory.tenant("Beta", ("beta.test",))
    with pytest.raises(ValidationError, match="static list is empty"):
        as_tenant(cfg, tid, lambda s: recipients.set_mode(s, tid, "static"))
    as_tenant(cfg, tid, lambda s: recipients.replace_static(s, tid, "a@acme.test\nb@acme.test"))
    with pytest.raises(ValidationError) as err:
        as_tenant(cfg, tid, lambda s: recipients.replace_static(s, tid, "c@acme.test\nnot an address\nx@beta.test"))
    assert "line 2" in str(err.value) and "line 3" in str(err.value) and "not one of your domains" in str(err.value)
    assert rows(cfg, tid) == {"a@acme.test": "static", "b@acme.test": "static"}  # the bad edit changed nothing
    with pytest.raises(ValidationError, match="not one of your domains"):
        as_tenant(cfg, beta.id, lambda s: recipients.add_static(s, beta.id, "@acme.test"))  # no claiming Acme's
    as_tenant(cfg, tid, lambda s: recipients.replace_static(s, tid, "a@acme.test"))
    as_tenant(cfg, tid, lambda s: recipients.set_mode(s, tid, "static"))
    with pytest.raises(ValidationError, match="last address"):
        as_tenant(cfg, tid, lambda s: recipients.remove_static(s, tid, "a@acme.test"))
    with pytest.raises(ValidationError, match="cannot be empty"):
        as_tenant(cfg, tid, lambda s: recipients.replace_static(s, tid, "\n# nothing\n"))
    with pytest.raises(ValidationError, match="mode"):
        as_tenant(cfg, tid, lambda s: recipients.set_mode(s, tid, "sometimes"))
    with pytest.raises(ValidationError, match="LDAP mode needs"):
        as_tenant(cfg, tid, lambda s: recipients.set_mode(s, tid, "ldap"))
    with pytest.raises(ValidationError, match=r"\{address\}"):
        as_tenant(cfg, tid, lambda s: recipients.set_ldap(s, cfg, tid, url="ldap://127.0.0.1", base_dn="dc=a",
                                                           search_filter="(mail=*)"))
    assert rows(cfg, tid) == {"a@acme.test": "static"}


# --- LDAP -----------------------------------------------------------------------------------------------------------

def test_ldap_sync_copies_the_directory_and_follows_removals(cfg, acme_two, ldap_dir):
    tid = acme_two.id
    use_directory(cfg, tid, ldap_dir)
    enc = settings_row(cfg, tid).ldap_password_enc
    assert enc and ldap_dir.password not in enc  # stored encrypted
    result = sync(cfg, tid)
    assert result.ok and (result.total, result.added, result.removed) == (4, 4, 0), result
    # mail and smtp:-prefixed proxyAddresses, lower-cased; x500: values and other tenants' domains left out
    assert rows(cfg, tid) == {a: "ldap" for a in ("alice@acme.test", "ally@acme.test", "bob@acme.test",
                                                  "carol@acme2.test")}
    row = settings_row(cfg, tid)
    assert row.last_sync_ok is True and row.last_sync_count == 4 and row.synced_at is not None

    ldap_dir.remove("bob")
    ldap_dir.add("dave", "dave@acme.test")
    result = sync(cfg, tid)
    assert result.ok and (result.added, result.removed) == (1, 1)
    assert set(rows(cfg, tid)) == {"alice@acme.test", "ally@acme.test", "carol@acme2.test", "dave@acme.test"}


def test_failed_ldap_sync_keeps_the_previous_rows_and_records_why(cfg, acme_two, ldap_dir):
    tid = acme_two.id
    use_directory(cfg, tid, ldap_dir)
    assert sync(cfg, tid).ok
    before = rows(cfg, tid)
    use_directory(cfg, tid, ldap_dir, password="wrong password")
    result = sync(cfg, tid)
    assert not result.ok and "bind" in result.message and "invalidCredentials" in result.message
    assert rows(cfg, tid) == before
    row = settings_row(cfg, tid)
    assert row.last_sync_ok is False and "kept the previous 4" in row.last_sync_result

    # An empty answer (a wrong base DN) is far likelier a mistake than a company without mailboxes: rows stay.
    ldap_dir.conn.add(f"ou=empty,{ldap_dir.base_dn}", ["organizationalUnit"], {"ou": "empty"})
    as_tenant(cfg, tid, lambda s: recipients.set_ldap(s, cfg, tid, url=ldap_dir.url, bind_dn=ldap_dir.bind_dn,
                                                       base_dn=f"ou=empty,{ldap_dir.base_dn}",
                                                       password=ldap_dir.password))
    result = sync(cfg, tid)
    assert not result.ok and rows(cfg, tid) == before


def test_ldap_filter_injection_in_an_address_is_escaped(cfg, acme_two, ldap_dir):
    """An address like ``*)(mail=*`` must not widen the tenant's filter into "every entry"."""
    tid = acme_two.id
    use_directory(cfg, tid, ldap_dir)
    attack = "*)(mail=*@acme.test"
    settings = read(cfg, lambda s: recipients.get_settings(s, tid))
    assert "\\2a\\29\\28mail=\\2a" in directory.address_filter(settings, attack)
    # The same filter with the address pasted in unescaped would match every person of the branch:
    naive = settings.ldap_filter.replace("{address}", attack)
    ldap_dir.conn.search(ldap_dir.base_dn, naive, ldap3.SUBTREE, attributes=["mail"])
    assert len(ldap_dir.conn.entries) >= 3
    with tenant_scope(tid), tdb.session_scope(cfg) as s:
        assert directory.lookup(s, cfg, tid, attack) is False
        assert directory.lookup(s, cfg, tid, "*") is False
        assert directory.lookup(s, cfg, tid, "ally@acme.test") is True  # the alias, through proxyAddresses
        assert directory.lookup(s, cfg, tid, "alice@acme.test") is True


def test_static_entry_survives_the_directory_dropping_it(cfg, acme_two, ldap_dir):
    tid = acme_two.id
    use_directory(cfg, tid, ldap_dir)
    assert sync(cfg, tid).ok
    as_tenant(cfg, tid, lambda s: recipients.add_static(s, tid, "bob@acme.test"))
    ldap_dir.remove("bob")
    assert sync(cfg, tid).ok
    assert rows(cfg, tid)["bob@acme.test"] == "static"


def test_cli_sync_and_the_scheduled_job(env, cfg, acme_two, ldap_dir, factory):
    from worker.jobs import DIRECTORY_SYNC_JOB, enqueue_directory_syncs, sync_directory

    tid = acme_two.id
    factory.tenant("Beta", ("beta.test",))  # mode off: never queued
    out = run_cli(["recipients", "mode", "Acme", "ldap"], env)
    assert out.returncode == 1 and "LDAP mode needs" in out.stderr
    out = run_cli(["recipients", "ldap", "Acme", "--url", ldap_dir.url, "--base-dn", ldap_dir.base_dn,
                   "--bind-dn", ldap_dir.bind_dn, "--password-stdin"], env, stdin=ldap_dir.password + "\n")
    assert out.returncode == 0, out.stderr
    assert run_cli(["recipients", "mode", "Acme", "ldap"], env).returncode == 0
    out = run_cli(["recipients", "sync", "Acme"], env)
    assert out.returncode == 0 and "4 address(es): 4 added" in out.stdout, out.stderr
    ldap_dir.remove("carol")
    assert sync_directory(tid).startswith("3 address(es)")
    assert "carol@acme2.test" not in rows(cfg, tid)

    conn = redis.Redis.from_url(cfg.effective_redis_url)
    assert enqueue_directory_syncs(cfg) == 1
    assert enqueue_directory_syncs(cfg) == 0  # already queued within the interval
    jobs = Queue("default", connection=conn, serializer=SERIALIZER).jobs
    assert [(j.func_name, list(j.args)) for j in jobs] == [(DIRECTORY_SYNC_JOB, [tid])]

    out = run_cli(["recipients", "add", "Acme", "sales@acme.test", "@acme2.test"], env)
    assert out.returncode == 0, out.stderr
    assert run_cli(["recipients", "remove", "Acme", "sales@acme.test"], env).returncode == 0
    assert rows(cfg, tid, "static") == {"@acme2.test": "static"}
    out = run_cli(["recipients", "add", "Acme", "someone@beta.test"], env)
    assert out.returncode == 1 and "not one of your domains" in out.stderr


# --- call-ahead -----------------------------------------------------------------------------------------------------

def test_callahead_asks_the_transport_once_and_fails_open(env, cfg, acme, ingress, sink):
    tid = acme.id
    replies = CountingReplies({"bob@acme.test": "250 2.1.5 OK", "gone@acme.test": "550 5.1.1 no such user",
                               "busy@acme.test": "451 4.3.0 directory busy"})
    sink.handler.rcpt_reply = replies
    as_tenant(cfg, tid, lambda s: recipients.set_mode(s, tid, "callahead"))
    eventually_rcpt(env, "gone@acme.test", 550)

    assert rcpt(env, "bob@acme.test")[0] == 250
    assert rcpt(env, "bob@acme.test")[0] == 250
    assert replies.asked["bob@acme.test"] == 1  # the second answer came from the cache
    code, reply = rcpt(env, "gone@acme.test")
    assert code == 550 and reply.startswith("5.1.1 <gone@acme.test>: recipient unknown")
    assert replies.asked["gone@acme.test"] == 1
    code, reply = rcpt(env, "busy@acme.test")
    assert code == 450 and reply.startswith("4.1.1")  # a temporary answer stays temporary...
    assert rcpt(env, "busy@acme.test")[0] == 450
    assert replies.asked["busy@acme.test"] == 2  # ...and is not cached
    assert not sink.messages  # probes never send a mail

    sink.stop()
    assert rcpt(env, "new@acme.test")[0] == 250  # transport unreachable: accept, the mail will queue
    assert rcpt(env, "gone@acme.test")[0] == 550  # what is known stays known


# --- portal ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("email,status,editable", [
    ("admin@acme.test", 200, True), ("auditor@acme.test", 200, False), ("user@acme.test", 404, False),
    ("admin@msp.test", 404, False), ("helpdesk@msp.test", 404, False)])
def test_portal_page_as_each_role(web_app, world, cfg, email, status, editable):
    tid = world["acme"].id
    as_tenant(cfg, tid, lambda s: recipients.add_static(s, tid, "listed@acme.test"))
    resp = sign_in(web_app, email).get("/portal/recipients")
    assert resp.status_code == status
    if status == 200:
        page = text(resp)
        assert "listed@acme.test" in page and "call-ahead" in page
        for form_field in ('name="mode-mode"', 'name="static-entries"', 'name="ldap-url"', 'name="sync-submit"'):
            assert (form_field in page) is editable, form_field


def test_portal_admin_edits_and_is_audited_auditor_and_other_tenant_cannot(web_app, world, cfg):
    acme, beta = world["acme"].id, world["beta"].id
    admin = sign_in(web_app, "admin@acme.test")
    token = csrf_token(text(admin.get("/portal/recipients")))
    resp = admin.post("/portal/recipients/static", data={"csrf_token": token, "static-entries": "bob@acme.test\nnope"})
    assert resp.status_code == 422
    page = text(resp)
    assert "line 2" in page and "bob@acme.test\nnope" in page  # the message, and the typed text kept
    resp = admin.post("/portal/recipients/mode", data={"csrf_token": token, "mode-mode": "static"})
    assert resp.status_code == 422 and "static list is empty" in text(resp)
    resp = admin.post("/portal/recipients/static", data={"csrf_token": token,
                                                         "static-entries": "bob@acme.test\n@acme2.test"})
    assert resp.status_code == 302
    assert admin.post("/portal/recipients/mode", data={"csrf_token": token, "mode-mode": "static"}).status_code == 302
    assert read(cfg, lambda s: recipients.get_settings(s, acme).mode) == "static"
    actions = read(cfg, lambda s: list(s.scalars(select(AuditEntry.action).where(
        AuditEntry.tenant_id == acme, AuditEntry.action.startswith("recipients.")).order_by(AuditEntry.id))))
    assert actions == ["recipients.static", "recipients.mode"]

    auditor = sign_in(web_app, "auditor@acme.test")
    token = csrf_token(text(auditor.get("/portal/recipients")))
    resp = auditor.post("/portal/recipients/mode", data={"csrf_token": token, "mode-mode": "off"})
    assert resp.status_code == 404
    assert read(cfg, lambda s: recipients.get_settings(s, acme).mode) == "static"

    other = sign_in(web_app, "admin@beta.test")
    page = text(other.get("/portal/recipients"))
    assert "bob@acme.test" not in page and "@acme2.test" not in page
    token = csrf_token(page)
    resp = other.post("/portal/recipients/static", data={"csrf_token": token, "static-entries": "bob@acme.test"})
    assert resp.status_code == 422 and "not one of your domains" in text(resp)
    assert other.post("/portal/recipients/mode", data={"csrf_token": token, "mode-mode": "off"}).status_code == 302
    assert read(cfg, lambda s: recipients.get_settings(s, acme).mode) == "static"  # Beta's change was Beta's
    assert read(cfg, lambda s: recipients.get_settings(s, beta).mode) == "off"


def test_portal_ldap_settings_test_and_sync(web_app, world, cfg, ldap_dir):
    tid = world["acme"].id
    admin = sign_in(web_app, "admin@acme.test")
    token = csrf_token(text(admin.get("/portal/recipients")))
    form = {"csrf_token": token, "ldap-url": ldap_dir.url, "ldap-base_dn": ldap_dir.base_dn,
            "ldap-bind_dn": ldap_dir.bind_dn, "ldap-password": ldap_dir.password,
            "ldap-search_filter": "", "ldap-attributes": ""}
    assert admin.post("/portal/recipients/ldap", data=form).status_code == 302
    page = text(admin.get("/portal/recipients"))
    assert ldap_dir.password not in page and "stored (encrypted)" in page
    resp = admin.post("/portal/recipients/ldap/test", data={"csrf_token": token, "test-address": "ally@acme.test"},
                      follow_redirects=True)
    assert "Test passed" in text(resp) and "ally@acme.test is in the directory" in text(resp)
    resp = admin.post("/portal/recipients/ldap/sync", data={"csrf_token": token}, follow_redirects=True)
    assert "Sync done: 4 address(es)" in text(resp)
    assert len(rows(cfg, tid, "ldap")) == 4
    form["ldap-password"] = "wrong"
    assert admin.post("/portal/recipients/ldap", data=form).status_code == 302
    resp = admin.post("/portal/recipients/ldap/test", data={"csrf_token": token, "test-address": ""},
                      follow_redirects=True)
    assert "Test failed" in text(resp) and "invalidCredentials" in text(resp)


# --- REST API -------------------------------------------------------------------------------------------------------

def make_key(cfg: Any, tenant_id: int | None, scopes: str = "read,write") -> dict[str, str]:
    with msp_scope(), tdb.session_scope(cfg) as s:
        from tenants.services import get_tenant

        secret = apikeys.create(s, get_tenant(s, tenant_id) if tenant_id else None, scopes, "test").secret
    return {"Authorization": f"Bearer {secret}"}


def test_api_settings_and_static_list_with_paging(web_app, world, cfg):
    acme = world["acme"].id
    key, client = make_key(cfg, acme), web_app.test_client()
    got = client.get(f"{API}/recipient-verification", headers=key)
    assert got.status_code == 200 and got.json["mode"] == "off" and got.json["tenant_id"] == acme
    resp = client.put(f"{API}/recipient-verification", headers=key, json={"mode": "static"})
    assert resp.status_code == 422 and resp.json["error"]["code"] == "validation"
    resp = client.put(f"{API}/recipient-verification", headers=key, json={"mode": "always"})
    assert resp.status_code == 422 and "mode" in resp.json["error"]["fields"]
    for address in ("a@acme.test", "b@acme.test", "@acme2.test"):
        resp = client.post(f"{API}/valid-recipients", headers=key, json={"address": address})
        assert resp.status_code == 201 and resp.json["source"] == "static"
    resp = client.post(f"{API}/valid-recipients", headers=key, json={"address": "x@beta.test"})
    assert resp.status_code == 422 and "not one of your domains" in resp.json["error"]["message"]
    page1 = client.get(f"{API}/valid-recipients?limit=2", headers=key).json
    page2 = client.get(f"{API}/valid-recipients?limit=2&cursor={page1['next_cursor']}", headers=key).json
    assert [i["address"] for i in page1["items"] + page2["items"]] == ["a@acme.test", "b@acme.test", "@acme2.test"]
    assert page2["next_cursor"] is None
    resp = client.put(f"{API}/recipient-verification", headers=key, json={
        "ldap_url": "ldap://127.0.0.1:1", "ldap_base_dn": "dc=acme,dc=test", "ldap_password": "s3cret",
        "mode": "ldap"})
    assert resp.status_code == 200 and resp.json["mode"] == "ldap" and resp.json["ldap_password_set"] is True
    assert "s3cret" not in resp.get_data(as_text=True) and "ldap_password" not in resp.json
    assert client.delete(f"{API}/valid-recipients/{page1['items'][0]['id']}", headers=key).status_code == 204
    assert rows(cfg, acme) == {"b@acme.test": "static", "@acme2.test": "static"}
    assert read(cfg, lambda s: s.scalar(select(AuditEntry.actor).where(AuditEntry.action == "recipients.update"))
                ).startswith("api key ")


def test_api_other_tenant_gets_404_everywhere(web_app, world, cfg):
    """Beta's key can neither read nor change Acme's settings or entries; an MSP key must name the tenant."""
    acme, beta = world["acme"].id, world["beta"].id
    row_id = as_tenant(cfg, acme, lambda s: recipients.add_static(s, acme, "a@acme.test").id)
    key, client = make_key(cfg, beta), web_app.test_client()
    for resp in (client.get(f"{API}/recipient-verification?tenant_id={acme}", headers=key),
                 client.put(f"{API}/recipient-verification", headers=key, json={"tenant_id": acme, "mode": "off"}),
                 client.get(f"{API}/valid-recipients?tenant_id={acme}", headers=key),
                 client.post(f"{API}/valid-recipients", headers=key,
                             json={"tenant_id": acme, "address": "z@acme.test"}),
                 client.delete(f"{API}/valid-recipients/{row_id}", headers=key)):
        assert resp.status_code == 404 and resp.json["error"]["code"] == "not_found", resp.json
    assert client.get(f"{API}/valid-recipients", headers=key).json["items"] == []  # its own list: empty
    assert rows(cfg, acme) == {"a@acme.test": "static"}

    msp = make_key(cfg, None)
    resp = client.get(f"{API}/recipient-verification", headers=msp)
    assert resp.status_code == 422 and "tenant_id" in resp.json["error"]["fields"]
    resp = client.get(f"{API}/valid-recipients?tenant_id={acme}", headers=msp)
    assert [i["address"] for i in resp.json["items"]] == ["a@acme.test"]
    read_only = make_key(cfg, acme, "read")
    resp = client.post(f"{API}/valid-recipients", headers=read_only, json={"address": "r@acme.test"})
    assert resp.status_code == 403


def test_directory_rows_cannot_be_deleted_by_id(cfg, world):
    acme = world["acme"].id
    as_tenant(cfg, acme, lambda s: recipients.replace_directory_rows(s, acme, ["dir@acme.test"]))
    row_id = read(cfg, lambda s: s.scalar(select(ValidRecipient.id).where(ValidRecipient.address == "dir@acme.test")))
    with pytest.raises(NotFound):
        as_tenant(cfg, acme, lambda s: recipients.remove_static_id(s, acme, row_id))
    assert rows(cfg, acme) == {"dir@acme.test": "ldap"}


def test_cli_adds_and_removes_static_entries(env, cfg, acme_two):
    out = run_cli(["recipients", "add", "Acme", "Ceo@acme.test", "@acme2.test"], env)
    assert out.returncode == 0 and "ceo@acme.test, @acme2.test added" in out.stdout, out.stderr
    assert rows(cfg, acme_two.id) == {"ceo@acme.test": "static", "@acme2.test": "static"}
    out = run_cli(["recipients", "remove", "Acme", "@acme2.test"], env)
    assert out.returncode == 0 and "@acme2.test removed" in out.stdout, out.stderr
    assert rows(cfg, acme_two.id) == {"ceo@acme.test": "static"}
    bad = run_cli(["recipients", "add", "Acme", "not an address"], env)
    assert bad.returncode != 0 and rows(cfg, acme_two.id) == {"ceo@acme.test": "static"}
