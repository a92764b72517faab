"""The console's onboarding wizard (tenant → domain and tested transport → invited admin → DNS checklist), its
resumption from the data, and the DNS checklists the worker caches so that no page looks DNS up.

Real servers throughout: the SMTP sink as the customer's mail server, the loopback DNS server, Redis, and the real
worker (``mailward worker --burst``) for the invitation mail and the DNS check jobs.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import time
from email import message_from_bytes, policy
from typing import Any

import pytest
from sqlalchemy import select

from tenants import dnscache, dnslookup, onboarding, services, verification
from tenants.dkimkeys import generate_key
from tenants.dnsreadiness import Item
from tenants.egress import EgressPolicy
from tenants.models import AuditEntry, Domain, Tenant, User
from tenants.platform.config import Config, HostPort
from tenants.platform.db import session_scope
from tenants.platform.jobs import DNSCHECK_JOB, job_queue
from tenants.platform.redisconn import redis_client
from tenants.scope import load, msp_scope
from tenants.transportcheck import check_transport
from tests.support.servers import free_port, run_cli
from tests.support.web import csrf_token, post_form, read, sign_in, text

HOST = "mx.mailward.test"  # MAILWARD_HOSTNAME of every test installation
LINK = re.compile(r"http://\S+/password/set/(\S+)")


@pytest.fixture
def msp(factory: Any) -> None:
    factory.user("admin@msp.test", "msp_admin")
    factory.user("helpdesk@msp.test", "msp_helpdesk")


def tenant_id(cfg: Config, name: str) -> int:
    return int(read(cfg, lambda s: s.scalars(select(Tenant.id).where(Tenant.name == name)).one()))


def domain_of(cfg: Config, name: str) -> Domain:
    return read(cfg, lambda s: s.scalars(select(Domain).where(Domain.name == name)).one())


def step_of(page: str) -> str:
    found = re.search(r'<section class="card" id="step-(\w+)">', page)
    assert found, page
    return found.group(1)


def row(page: str, item: str) -> str:
    m = re.search(rf'<tr class="check-(\w+)" data-item="{re.escape(item)}">(.*?)</tr>', page, re.S)
    assert m, f"no checklist row {item!r}"
    return f"{m.group(1)} {m.group(2)}"


def dns_jobs(cfg: Config) -> list[list[Any]]:
    return [list(j.args) for j in job_queue(cfg).get_jobs() if j.func_name == DNSCHECK_JOB]


def run_worker(env: dict[str, str]) -> None:
    done = run_cli(["worker", "--burst"], env)
    assert done.returncode == 0, done.stderr


def publish(dns: Any, cfg: Config, domain: Domain) -> None:
    """Every record the checklist asks for, as the customer would publish them."""
    dns.add(f"_mailward.{domain.name}", "TXT", "mailward-verification=" + verification.token(cfg, domain.id))
    dns.add(domain.name, "MX", f"10 {HOST}")
    dns.add(domain.name, "TXT", f"v=spf1 a:{HOST} -all")
    dns.add(f"_dmarc.{domain.name}", "TXT", "v=DMARC1; p=quarantine")


# --- the whole wizard -------------------------------------------------------------------------------------------------

def test_the_wizard_creates_a_customer_tests_its_server_invites_its_admin_and_shows_its_dns(
        env, cfg, web_app, msp, sink, dns):
    client = sign_in(web_app, "admin@msp.test")
    start = client.get("/console/onboarding")
    assert start.status_code == 200 and step_of(text(start)) == "tenant"
    assert 'href="/console/onboarding"' in text(client.get("/console/")), "the nav offers New customer"

    resp = post_form(client, "/console/onboarding", "/console/onboarding", {"name": "Globex"})
    tid = tenant_id(cfg, "Globex")
    assert resp.status_code == 302 and resp.headers["Location"].endswith(f"/console/onboarding/{tid}")
    page = text(client.get(f"/console/onboarding/{tid}"))
    assert step_of(page) == "domain" and 'data-step="tenant" data-state="done"' in page

    # Domain and transport: the connection test talks to the customer's server (the sink) and passes.
    resp = post_form(client, f"/console/onboarding/{tid}", f"/console/onboarding/{tid}/domain",
                     {"name": "Globex.test", "transport": f"127.0.0.1:{sink.port}", "tls": "opportunistic"})
    assert resp.status_code == 302
    page = text(client.get(f"/console/onboarding/{tid}"))
    assert "Connection tested" in page and f"127.0.0.1:{sink.port} takes mail for postmaster@globex.test" in page
    assert step_of(page) == "admin" and "badge ok\">tested" in page
    domain = domain_of(cfg, "globex.test")
    assert (domain.tenant_id, domain.vouched, domain.transport_port) == (tid, True, sink.port)
    tests = read(cfg, lambda s: list(s.scalars(select(AuditEntry.detail).where(
        AuditEntry.action == onboarding.TRANSPORT_TEST_ACTION, AuditEntry.tenant_id == tid))))
    assert len(tests) == 1 and tests[0].startswith(f"ok 127.0.0.1:{sink.port} TLS opportunistic:")
    assert not sink.messages, "the test sends no mail"

    # Leaving and coming back: the tenant page offers "Continue setup", which opens at the admin step.
    tenant_page = text(client.get(f"/console/tenants/{tid}"))
    assert 'id="continue-setup"' in tenant_page and "next: First admin" in tenant_page
    assert step_of(text(client.get(f"/console/onboarding/{tid}"))) == "admin"

    # The first admin: invited by mail through the delivery path, to the customer's server.
    outside = post_form(client, f"/console/onboarding/{tid}", f"/console/onboarding/{tid}/admin",
                        {"email": "boss@elsewhere.test"})
    assert outside.status_code == 422 and "is not a domain of this tenant" in text(outside)
    resp = post_form(client, f"/console/onboarding/{tid}", f"/console/onboarding/{tid}/admin",
                     {"email": "Boss@Globex.test"})
    assert resp.status_code == 302
    boss = read(cfg, lambda s: s.scalars(select(User).where(User.email == "boss@globex.test")).one())
    assert (boss.tenant_id, boss.role, boss.password_hash) == (tid, "tenant_admin", None)
    for _ in range(3):
        run_worker(env)
        if sink.messages:
            break
    (got,) = sink.wait_count(1, timeout=10)
    assert got.rcpts == ["boss@globex.test"]
    mail = message_from_bytes(got.data, policy=policy.default)
    assert "invited" in mail["Subject"]
    token = LINK.search(mail.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert token and web_app.test_client().get(f"/password/set/{token.group(1)}").status_code == 200

    # DNS: the first view finds no cache, queues one check and says "checking…"; the worker fills the cache.
    publish(dns, cfg, domain)
    page = text(client.get(f"/console/onboarding/{tid}"))
    assert step_of(page) == "dns" and 'id="dns-checking"' in page and "data-item=" not in page
    assert dns_jobs(cfg) == [[tid, domain.id]]
    client.get(f"/console/onboarding/{tid}")
    assert len(dns_jobs(cfg)) == 1, "one check at a time per domain"
    run_worker(env)
    page = text(client.get(f"/console/onboarding/{tid}"))
    assert "Checked just now" in page and 'id="dns-checking"' not in page
    for item in ("Ownership", "MX", "SPF", "DMARC"):
        assert row(page, item).startswith("ok"), row(page, item)
    assert f"globex.test. IN MX 10 {HOST}." in row(page, "MX")
    assert len(re.findall(r'<code id="(record-\d)">[^<]+</code><button type="button" class="copy small" '
                          r'data-copy-target="\1"', page)) == 4
    assert "copy.js" in page and 'id="hostname-warning"' not in page

    tenant_page = text(client.get(f"/console/tenants/{tid}"))
    assert 'id="continue-setup"' not in tenant_page and "DNS records of globex.test" in tenant_page
    actions = read(cfg, lambda s: list(s.scalars(select(AuditEntry.action).where(AuditEntry.tenant_id == tid))))
    assert {"tenant.create", "domain.create", onboarding.TRANSPORT_TEST_ACTION, "user.create",
            "user.invite"} <= set(actions)


def test_a_failed_test_keeps_the_wizard_at_the_transport_until_a_test_passes(env, cfg, web_app, msp, sink):
    client = sign_in(web_app, "admin@msp.test")
    post_form(client, "/console/onboarding", "/console/onboarding", {"name": "Initech"})
    tid = tenant_id(cfg, "Initech")
    closed = free_port()
    post_form(client, f"/console/onboarding/{tid}", f"/console/onboarding/{tid}/domain",
              {"name": "initech.test", "transport": f"127.0.0.1:{closed}", "tls": "none"})
    page = text(client.get(f"/console/onboarding/{tid}"))
    assert step_of(page) == "transport" and "The connection test failed" in page and "unreachable" in page
    assert 'value="127.0.0.1"' in page and f'value="{closed}"' in page

    # TLS required, and the sink offers no STARTTLS: refused, and the wizard stays.
    post_form(client, f"/console/onboarding/{tid}", f"/console/onboarding/{tid}/transport",
              {"host": "127.0.0.1", "port": str(sink.port), "tls": "required"})
    page = text(client.get(f"/console/onboarding/{tid}"))
    assert step_of(page) == "transport" and "offers no STARTTLS" in page

    post_form(client, f"/console/onboarding/{tid}", f"/console/onboarding/{tid}/transport",
              {"host": "127.0.0.1", "port": str(sink.port), "tls": "opportunistic"})
    assert step_of(text(client.get(f"/console/onboarding/{tid}"))) == "admin"
    assert domain_of(cfg, "initech.test").transport_port == sink.port
    details = read(cfg, lambda s: list(s.scalars(select(AuditEntry.detail).where(
        AuditEntry.action == onboarding.TRANSPORT_TEST_ACTION).order_by(AuditEntry.id))))
    assert [d.split(" ", 1)[0] for d in details] == ["failed", "failed", "ok"]

    # A domain step posted again (a second tab, a double click) adds nothing.
    post_form(client, f"/console/onboarding/{tid}", f"/console/onboarding/{tid}/domain",
              {"name": "second.test", "transport": f"127.0.0.1:{sink.port}", "tls": "none"})
    assert read(cfg, lambda s: s.scalars(select(Domain.name).where(Domain.tenant_id == tid)).all()) == \
        ["initech.test"]


def test_the_steps_are_read_off_the_data_wherever_it_was_entered(cfg, factory, sink):
    """A tenant set up partly elsewhere (the console's forms, the CLI) opens at the step its data says; a changed
    transport counts as untested again, and an admin added anywhere ends the admin step."""
    acme = factory.tenant("Acme")
    with msp_scope(), session_scope(cfg) as s:
        t = load(s, Tenant, acme.id)
        assert onboarding.progress(s, t).step == onboarding.DOMAIN
        d = services.add_domain(s, t, "acme.test", "127.0.0.1", sink.port, "none", egress=EgressPolicy(cfg))
        assert onboarding.progress(s, t).step == onboarding.TRANSPORT
        result = check_transport(cfg, d, EgressPolicy(cfg))
        assert result.ok, result.message
        s.add(AuditEntry(tenant_id=t.id, actor="test", action=onboarding.TRANSPORT_TEST_ACTION,
                         target=onboarding.transport_test_target(d),
                         detail=onboarding.transport_test_detail(d, result)))
        s.flush()
        assert onboarding.progress(s, t).step == onboarding.ADMIN
        services.update_transport(d, "127.0.0.1", sink.port, "opportunistic", egress=EgressPolicy(cfg))
        assert onboarding.progress(s, t).step == onboarding.TRANSPORT, "another TLS mode was never tested"
        services.update_transport(d, "127.0.0.1", sink.port, "none", egress=EgressPolicy(cfg))
        assert onboarding.progress(s, t).step == onboarding.ADMIN
    factory.user("admin@acme.test", "tenant_admin", acme)
    with msp_scope(), session_scope(cfg) as s:
        progress = onboarding.progress(s, load(s, Tenant, acme.id))
        assert progress.step == onboarding.DNS and progress.complete and progress.admin is not None


def test_the_connection_test_goes_through_the_egress_policy_and_never_connects_to_a_refused_address(
        cfg, factory, dns):
    """DNS rebinding: a transport name that resolved to a public address when saved and to loopback now is refused
    by the test, which connects to nothing."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    dns.add("mail.acme.test", "A", "192.0.2.10")
    strict = dataclasses.replace(cfg, tenant_egress_allow=())
    acme = factory.tenant("Acme")
    with msp_scope(), session_scope(cfg) as s:
        d = services.add_domain(s, load(s, Tenant, acme.id), "acme.test", "mail.acme.test", port, "none",
                                egress=EgressPolicy(strict))
        dns.set("mail.acme.test", "A", "127.0.0.1")
        result = check_transport(strict, d, EgressPolicy(strict))
    assert not result.ok and "refused by the egress policy" in result.message
    listener.settimeout(0.3)
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


def test_the_wizard_is_the_msp_admins_only(cfg, web_app, world):
    acme, beta = world["acme"].id, world["beta"].id
    for who in ("helpdesk@msp.test", "admin@acme.test", "auditor@acme.test", "user@acme.test"):
        client = sign_in(web_app, who)
        token = csrf_token(text(client.get("/account/totp")))
        for path in ("/console/onboarding", f"/console/onboarding/{acme}", f"/console/onboarding/{beta}"):
            assert client.get(path).status_code == 404, (who, path)
        for path in ("/console/onboarding", f"/console/onboarding/{acme}/domain", f"/console/onboarding/{acme}/admin",
                     f"/console/onboarding/{acme}/transport", f"/console/onboarding/{acme}/dns-check"):
            resp = client.post(path, data={"csrf_token": token, "name": "Evil", "email": "x@acme.test",
                                           "transport": "127.0.0.1:25", "tls": "none"})
            assert resp.status_code == 404, (who, path)
    assert web_app.test_client().get("/console/onboarding").status_code == 302  # to the sign-in page
    assert read(cfg, lambda s: s.scalars(select(Tenant.name).order_by(Tenant.name)).all()) == ["Acme", "Beta"]
    msp = sign_in(web_app, "admin@msp.test")
    assert msp.get("/console/onboarding/999999").status_code == 404
    assert 'id="continue-setup"' not in text(sign_in(web_app, "helpdesk@msp.test").get(f"/console/tenants/{acme}"))


def test_the_wizard_warns_when_the_hostname_is_not_public_and_never_proposes_mx_localhost(
        env, cfg, factory, sink, dns):
    from app import create_app

    local = {**env, "MAILWARD_HOSTNAME": "localhost"}
    app = create_app(Config.from_env(local))
    factory.user("admin@msp.test", "msp_admin")
    acme = factory.tenant("Acme", ("acme.test",), transport_port=sink.port)
    factory.user("admin@acme.test", "tenant_admin", acme)
    client = sign_in(app, "admin@msp.test")
    post_form(client, f"/console/onboarding/{acme.id}", f"/console/onboarding/{acme.id}/transport",
              {"host": "127.0.0.1", "port": str(sink.port), "tls": "none"})
    page = text(client.get(f"/console/onboarding/{acme.id}"))
    assert step_of(page) == "dns" and 'id="hostname-warning"' in page and "localhost" in page
    run_worker(local)
    page = text(client.get(f"/console/onboarding/{acme.id}"))
    assert row(page, "MX").startswith("unset") and "MX 10 localhost" not in page


# --- the cache: pages never look DNS up -------------------------------------------------------------------------------

def test_the_domain_page_reads_the_cache_and_needs_no_dns_server(env, cfg, world, dns):
    from app import create_app

    domain = domain_of(cfg, "acme.test")
    publish(dns, cfg, domain)
    admin = sign_in(create_app(cfg), "admin@acme.test")
    page = text(admin.get(f"/portal/domains/{domain.id}"))
    assert 'id="dns-checking"' in page and dns_jobs(cfg) == [[domain.tenant_id, domain.id]]
    assert dns.query_count() == 0, "the page looked DNS up"
    run_worker(env)
    assert dns.query_count() > 0

    # The resolver gone (a port where nothing answers): the page still shows the checklist, at once.
    dead = create_app(dataclasses.replace(cfg, dns=HostPort("127.0.0.1", free_port())))
    client = sign_in(dead, "admin@acme.test")
    before = dns.query_count()
    started = time.monotonic()
    page = text(client.get(f"/portal/domains/{domain.id}"))
    assert time.monotonic() - started < dnslookup.LOOKUP_TIMEOUT, "no lookup waited on the dead resolver"
    for item in ("Ownership", "MX", "SPF", "DMARC"):
        assert row(page, item).startswith("ok"), row(page, item)
    assert "Checked just now" in page and "could not check" not in page and dns.query_count() == before

    # Re-check queues one job; pressing it again while it waits says so.
    resp = post_form(client, f"/portal/domains/{domain.id}", f"/portal/domains/{domain.id}/dns-check", {})
    assert resp.status_code == 302
    assert "Checking the DNS records of acme.test" in text(client.get(f"/portal/domains/{domain.id}"))
    post_form(client, f"/portal/domains/{domain.id}", f"/portal/domains/{domain.id}/dns-check", {})
    assert "already under way" in text(client.get(f"/portal/domains/{domain.id}"))
    assert len(dns_jobs(cfg)) == 1


def test_rechecking_another_tenants_domain_is_a_404_and_the_auditor_cannot(cfg, web_app, world):
    beta = domain_of(cfg, "beta.test")
    own = domain_of(cfg, "acme.test")
    admin = sign_in(web_app, "admin@acme.test")
    assert post_form(admin, f"/portal/domains/{own.id}", f"/portal/domains/{beta.id}/dns-check", {}) \
        .status_code == 404
    auditor = sign_in(web_app, "auditor@acme.test")
    page = text(auditor.get(f"/portal/domains/{own.id}"))
    assert ">Re-check</button>" not in page
    assert post_form(auditor, f"/portal/domains/{own.id}", f"/portal/domains/{own.id}/dns-check", {}) \
        .status_code == 404
    assert [args for args in dns_jobs(cfg) if args[1] == beta.id] == []


def test_a_result_for_another_hostname_or_other_dkim_keys_is_not_shown(cfg, world):
    """The cache knows what it was checked for: a new DKIM key, or another MAILWARD_HOSTNAME, asks for a check."""
    conn = redis_client(cfg)
    domain = domain_of(cfg, "acme.test")
    with msp_scope(), session_scope(cfg) as s:
        d = load(s, Domain, domain.id)
        dnscache.write(conn, d, [Item("MX", "ok", "fine", "")], hostname=HOST, digest=dnscache.inputs(s, cfg, d))
        shown = dnscache.for_page(s, cfg, conn, d)
        assert shown.cached is not None and not shown.checking and dns_jobs(cfg) == []
        other = dataclasses.replace(cfg, hostname="gw.example.net")
        assert dnscache.for_page(s, other, conn, d).cached is None and len(dns_jobs(cfg)) == 1
        dnscache.release(conn, d.id)
        generate_key(s, cfg, "acme.test", "mw1", bits=1024)
        s.flush()
        again = dnscache.for_page(s, cfg, conn, d)
        assert again.cached is None and again.checking and len(dns_jobs(cfg)) == 2


def test_the_scheduler_refreshes_missing_and_old_results_only(cfg, world):
    from worker.dnscheck import enqueue_refreshes

    conn = redis_client(cfg)
    acme, acme2 = domain_of(cfg, "acme.test"), domain_of(cfg, "acme2.test")
    beta = domain_of(cfg, "beta.test")
    with msp_scope(), session_scope(cfg) as s:
        digest = dnscache.inputs(s, cfg, acme)
        load(s, Tenant, world["beta"].id).suspended = True
    dnscache.write(conn, acme, [], hostname=HOST, digest=digest)
    dnscache.write(conn, acme2, [], hostname=HOST, digest=digest,
                   checked_at=time.time() - dnscache.REFRESH_AGE - 60)
    old = dnscache.read(conn, acme2)
    assert old is not None and old.ago() == "6 h ago"
    assert enqueue_refreshes(cfg) == 1
    assert dns_jobs(cfg) == [[acme2.tenant_id, acme2.id]]
    assert enqueue_refreshes(cfg) == 0, "already queued"
    assert beta.id not in [args[1] for args in dns_jobs(cfg)], "a suspended tenant's domains wait"


def test_the_domain_page_tests_the_connection_and_the_wizard_counts_it(cfg, web_app, world, sink):
    """"Test connection" on the portal's domain page: the same test, audited the same way, so the MSP's wizard for
    the tenant moves past the transport step; another tenant's domain is a 404."""
    factory_domain = domain_of(cfg, "acme.test")  # the factory's transport: 127.0.0.1:25
    beta = domain_of(cfg, "beta.test")
    with msp_scope(), session_scope(cfg) as s:
        services.update_transport(load(s, Domain, factory_domain.id), "127.0.0.1", free_port(), "none",
                                  egress=EgressPolicy(cfg))
    admin = sign_in(web_app, "admin@acme.test")
    page = f"/portal/domains/{factory_domain.id}"
    assert ">Test connection</button>" in text(admin.get(page))
    resp = post_form(admin, page, f"{page}/transport-test", {})
    assert resp.status_code == 302
    assert "The connection test failed" in text(admin.get(page)), "nothing listens on that port"
    with msp_scope(), session_scope(cfg) as s:
        d = load(s, Domain, factory_domain.id)
        services.update_transport(d, "127.0.0.1", sink.port, "none", egress=EgressPolicy(cfg))
    post_form(admin, page, f"{page}/transport-test", {})
    assert "Connection tested" in text(admin.get(page))
    assert post_form(admin, page, f"/portal/domains/{beta.id}/transport-test", {}).status_code == 404
    msp = sign_in(web_app, "admin@msp.test")
    assert step_of(text(msp.get(f"/console/onboarding/{world['acme'].id}"))) == "dns"
    assert step_of(text(msp.get(f"/console/onboarding/{world['beta'].id}"))) == "transport"
