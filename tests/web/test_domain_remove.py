"""Removing a domain (issue 12): the confirmation tells what becomes of its queued and quarantined mail, with counts;
after removal RCPT to it is refused like any unknown domain's (through the real ingress), the mail accepted before
is still delivered to its transport (released quarantined mail too), every removal is audited, and another tenant's
domain is 404 on the web, the API and nothing changes.

Real components: the web application in-process, the ingress as a child process, an SMTP sink as the tenants' mail
server, the CLI as a subprocess.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import select

from smtp.delivery import deliver_message
from smtp.mailstore import NewMessage, store_message
from tenants import quarantine
from tenants.dkimkeys import generate_key
from tenants.models import AuditEntry, DkimKey, Domain, RetiredTransport
from tenants.platform import db as tdb
from tenants.scope import msp_scope, tenant_scope
from tests.fixtures.api import Client, error, make_key
from tests.integration.test_ingress import client, make_mail
from tests.support.held import hold
from tests.support.servers import run_cli, wait_for
from tests.support.web import csrf_token, policy_version, post_form, read, sign_in, text


@pytest.fixture
def tenants(factory: Any, sink: Any) -> dict[str, Any]:
    """Acme (acme.test, acme2.test) and Beta (beta.test), delivering to the sink; people of each role."""
    acme = factory.tenant("Acme", ("acme.test", "acme2.test"), transport_port=sink.port)
    beta = factory.tenant("Beta", ("beta.test",), transport_port=sink.port)
    factory.user("admin@msp.test", "msp_admin")
    factory.user("helpdesk@msp.test", "msp_helpdesk")
    factory.user("admin@acme.test", "tenant_admin", acme)
    factory.user("auditor@acme.test", "tenant_auditor", acme)
    factory.user("admin@beta.test", "tenant_admin", beta)
    return {"acme": acme, "beta": beta}


def domain_id(cfg: Any, name: str) -> int | None:
    with msp_scope():
        return read(cfg, lambda s: s.scalar(select(Domain.id).where(Domain.name == name)))


def queue_mail(cfg: Any, tenant_id: int, rcpt: str, subject: str) -> str:
    """A mail accepted for ``rcpt`` and queued for delivery (stored as the ingress stores it)."""
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        msg = store_message(s, NewMessage(tenant_id=tenant_id, queue_id=f"Q{subject.replace(' ', '')}",
                                          mail_from="a@sender.example", rcpts=[rcpt], data=make_mail(rcpt, subject)))
        return msg.id


def audits(cfg: Any, action: str) -> list[AuditEntry]:
    with msp_scope():
        return read(cfg, lambda s: list(s.scalars(select(AuditEntry).where(AuditEntry.action == action))))


def fact(page: str, ident: str) -> str:
    m = re.search(rf'<dd id="{ident}">(.*?)</dd>', page, re.S)
    assert m, page
    return " ".join(m.group(1).split())


def remove_form(client: Any, path: str, name: str) -> Any:
    return post_form(client, path, path, {"remove-name": name})


def rcpt_code(env: dict[str, str], rcpt: str) -> tuple[int, bytes]:
    with client(env) as c:
        c.ehlo()
        assert c.mail("boss@sender.example")[0] == 250
        code, reply = c.rcpt(rcpt)
    return code, reply


# --- the portal, through the real ingress and delivery ---------------------------------------------------------------

def test_tenant_admin_removes_a_domain_mail_before_is_kept_and_rcpt_is_refused_after(
        web_app, env, ingress, tenants, sink, cfg):
    acme = tenants["acme"].id
    queued = queue_mail(cfg, acme, "bob@acme.test", "accepted before")
    held = hold(cfg, acme, rcpts=("carol@acme.test",), subject="held before")
    queue_mail(cfg, acme, "dave@acme2.test", "other domain")  # another domain's mail is not counted
    with tenant_scope(acme), tdb.session_scope(cfg) as s:
        generate_key(s, cfg, "acme.test", "sel1", bits=1024)
    did = domain_id(cfg, "acme.test")
    wait_for(lambda: rcpt_code(env, "bob@acme.test")[0] == 250, 15, what="acme.test accepted")

    admin = sign_in(web_app, "admin@acme.test")
    assert f"/portal/domains/{did}/remove" in text(admin.get(f"/portal/domains/{did}"))
    page = text(admin.get(f"/portal/domains/{did}/remove"))
    assert fact(page, "impact-queued").startswith("1 — still delivered")
    assert fact(page, "impact-quarantined").startswith("1 — kept until their retention")
    assert fact(page, "impact-dkim").startswith("1 — deleted")

    resp = remove_form(admin, f"/portal/domains/{did}/remove", "acme2.test")
    assert resp.status_code == 422 and "type the domain&#39;s name, acme.test" in text(resp)
    assert domain_id(cfg, "acme.test") == did

    before = policy_version(cfg)
    resp = remove_form(admin, f"/portal/domains/{did}/remove", "ACME.test")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/portal/")
    assert domain_id(cfg, "acme.test") is None and domain_id(cfg, "acme2.test") is not None
    assert policy_version(cfg) > before, "the ingresses are told to forget the domain"
    entry, = audits(cfg, "domain.remove")
    assert entry.actor == "admin@acme.test" and entry.tenant_id == acme and entry.target == "domain acme.test"
    assert "1 queued" in entry.detail and "1 quarantined" in entry.detail
    with tenant_scope(acme):
        assert read(cfg, lambda s: s.scalars(select(DkimKey)).all()) == []

    unknown = rcpt_code(env, "bob@nobody-has-this.test")
    assert unknown[0] == 550
    wait_for(lambda: rcpt_code(env, "bob@acme.test") == unknown, 15, what="acme.test refused like an unknown domain")
    assert rcpt_code(env, "bob@acme2.test")[0] == 250

    # The mail accepted before still reaches the transport it was accepted with, and so does a release.
    assert deliver_message(cfg, acme, queued) == 1
    assert b"Subject: accepted before" in sink.wait_count(1)[0].data
    with tenant_scope(acme), tdb.session_scope(cfg) as s:
        quarantine.release(s, cfg, held, actor="admin@acme.test", actor_is_admin=True)
    assert deliver_message(cfg, acme, held) == 1
    got = sink.wait_count(2)
    assert [m.rcpts for m in got] == [["bob@acme.test"], ["carol@acme.test"]]


def test_auditor_and_another_tenant_get_404_and_nothing_changes(web_app, tenants, cfg):
    acme_id, beta_id = domain_id(cfg, "acme.test"), domain_id(cfg, "beta.test")
    auditor = sign_in(web_app, "auditor@acme.test")
    assert "/remove" not in text(auditor.get(f"/portal/domains/{acme_id}"))
    assert auditor.get(f"/portal/domains/{acme_id}/remove").status_code == 404
    admin = sign_in(web_app, "admin@acme.test")
    assert admin.get(f"/portal/domains/{beta_id}/remove").status_code == 404
    token = csrf_token(text(admin.get("/portal/")))
    resp = admin.post(f"/portal/domains/{beta_id}/remove", data={"csrf_token": token, "remove-name": "beta.test"})
    assert resp.status_code == 404
    helpdesk = sign_in(web_app, "helpdesk@msp.test")
    assert helpdesk.get(f"/console/domains/{beta_id}/remove").status_code == 404
    assert domain_id(cfg, "beta.test") == beta_id and domain_id(cfg, "acme.test") == acme_id
    assert audits(cfg, "domain.remove") == []


def test_msp_admin_removes_a_tenants_domain_from_the_console(web_app, tenants, cfg):
    beta_id = domain_id(cfg, "beta.test")
    msp = sign_in(web_app, "admin@msp.test")
    tenant_page = text(msp.get(f"/console/tenants/{tenants['beta'].id}"))
    assert f"/console/domains/{beta_id}/remove" in tenant_page
    page = text(msp.get(f"/console/domains/{beta_id}/remove"))
    assert fact(page, "impact-queued").startswith("0 ") and "Remove beta.test?" in page
    resp = remove_form(msp, f"/console/domains/{beta_id}/remove", "beta.test")
    assert resp.status_code == 302 and resp.headers["Location"].endswith(f"/console/tenants/{tenants['beta'].id}")
    assert domain_id(cfg, "beta.test") is None
    entry, = audits(cfg, "domain.remove")
    assert entry.actor == "admin@msp.test" and entry.tenant_id == tenants["beta"].id
    with tenant_scope(tenants["beta"].id):
        kept = read(cfg, lambda s: s.scalars(select(RetiredTransport)).one())
    assert (kept.domain, kept.transport_host) == ("beta.test", "127.0.0.1")


def test_a_domain_removed_and_added_again_delivers_to_its_new_transport(tenants, cfg, sink, factory):
    """The kept transport is only a fallback: a live domain of the tenant wins."""
    from tenants import domains
    from tenants.egress import EgressPolicy
    from tenants.services import add_domain, get_tenant

    acme = tenants["acme"].id
    queued = queue_mail(cfg, acme, "bob@acme.test", "after re-add")
    with msp_scope(), tdb.session_scope(cfg) as s:
        d = s.scalars(select(Domain).where(Domain.name == "acme.test")).one()
        d.transport_port = 9  # the old transport: nothing listens there
        s.flush()
        domains.remove(s, d, "acme.test")
        add_domain(s, get_tenant(s, acme), "acme.test", "127.0.0.1", sink.port, "none", egress=EgressPolicy(cfg))
    assert deliver_message(cfg, acme, queued) == 1
    assert b"Subject: after re-add" in sink.wait_count(1)[0].data


# --- the API --------------------------------------------------------------------------------------------------------

def test_api_delete_domain_needs_its_name_and_is_404_for_another_tenant(web_app, tenants, cfg):
    acme_api = Client(web_app, make_key(cfg, tenants["acme"].id))
    beta_api = Client(web_app, make_key(cfg, tenants["beta"].id))
    acme_id = domain_id(cfg, "acme.test")
    queue_mail(cfg, tenants["acme"].id, "bob@acme.test", "queued")

    error(beta_api.delete(f"/domains/{acme_id}", json={"confirm": "acme.test"}), 404, "not_found")
    error(beta_api.get(f"/domains/{acme_id}/removal"), 404, "not_found")
    error(acme_api.delete(f"/domains/{acme_id}", json={"confirm": "beta.test"}), 422, "validation")
    error(acme_api.delete(f"/domains/{acme_id}", json={}), 422, "validation")
    assert domain_id(cfg, "acme.test") == acme_id

    preview = acme_api.get(f"/domains/{acme_id}/removal").get_json()
    assert preview == {"id": acme_id, "name": "acme.test", "queued": 1, "quarantined": 0, "dkim_keys": 0,
                       "removed": False}
    before = policy_version(cfg)
    resp = acme_api.delete(f"/domains/{acme_id}", json={"confirm": "acme.test"})
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {**preview, "removed": True}
    assert policy_version(cfg) > before
    error(acme_api.get(f"/domains/{acme_id}"), 404, "not_found")
    entry, = audits(cfg, "domain.remove")
    assert entry.actor.startswith("api key mw_") and entry.tenant_id == tenants["acme"].id


def test_api_msp_key_removes_any_tenants_domain_and_a_read_key_may_not(web_app, tenants, cfg):
    beta_id = domain_id(cfg, "beta.test")
    reader = Client(web_app, make_key(cfg, None, "read"))
    error(reader.delete(f"/domains/{beta_id}", json={"confirm": "beta.test"}), 403, "forbidden_scope")
    msp = Client(web_app, make_key(cfg, None))
    assert msp.delete(f"/domains/{beta_id}", json={"confirm": "beta.test"}).status_code == 200
    assert domain_id(cfg, "beta.test") is None


# --- the CLI --------------------------------------------------------------------------------------------------------

def test_cli_remove_shows_what_it_concerns_then_removes_with_confirm(env, tenants, cfg):
    acme = tenants["acme"].id
    hold(cfg, acme, rcpts=("carol@acme.test",))
    dry = run_cli(["domain", "remove", "acme.test"], env)
    assert dry.returncode == 1 and "0 queued" in dry.stdout and "1 quarantined" in dry.stdout
    assert "--confirm acme.test" in dry.stdout and domain_id(cfg, "acme.test") is not None
    wrong = run_cli(["domain", "remove", "acme.test", "--confirm", "beta.test"], env)
    assert wrong.returncode == 1 and "type the domain's name" in wrong.stderr
    assert domain_id(cfg, "acme.test") is not None
    done = run_cli(["domain", "remove", "acme.test", "--confirm", "acme.test"], env)
    assert done.returncode == 0, done.stderr
    assert "domain acme.test removed" in done.stdout and domain_id(cfg, "acme.test") is None
    entry, = audits(cfg, "domain.remove")
    assert entry.actor == "cli" and entry.tenant_id == acme
    assert run_cli(["domain", "remove", "nobody.test"], env).returncode == 1
