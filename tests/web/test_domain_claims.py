"""What a tenant may claim by itself (security issue 9): domains that route only once proven, no claims inside or
above another tenant's domain, relay networks of bounded size outside reserved ranges, a network's foreign mail
handled as inbound, and one answer for every name that is not available (no existence oracle).

Real components throughout: the web application in-process, the ingress as a child process, the loopback DNS
server for the ownership records, an SMTP sink as every tenant's mail server.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from tenants import verification
from tenants.claims import PENDING_CLAIM_DAYS
from tenants.models import Domain, Message, RelayNetwork, SmtpCredential, utcnow
from tests.fixtures.api import error
from tests.integration.test_ingress import client, make_mail
from tests.integration.test_outbound import running_ingress
from tests.support.servers import run_cli
from tests.support.web import post_form, read, sign_in, text
from worker.verification import recheck

#: The end of every "not available" answer (domains, relay networks, SMTP usernames): it names no owner.
NOT_AVAILABLE = "is not available; if it is yours, ask your provider"


@pytest.fixture
def tenants(factory: Any, sink: Any) -> dict[str, Any]:
    """Acme (acme.test) and Beta (beta.test), added by the MSP, delivering to the sink; an admin each, and the MSP's."""
    acme = factory.tenant("Acme", ("acme.test",), transport_port=sink.port)
    beta = factory.tenant("Beta", ("beta.test",), transport_port=sink.port)
    factory.user("admin@msp.test", "msp_admin")
    factory.user("admin@acme.test", "tenant_admin", acme)
    factory.user("admin@beta.test", "tenant_admin", beta)
    return {"acme": acme, "beta": beta}


def add_domain(client: Any, name: str, transport: str = "127.0.0.1:25") -> Any:
    """The portal's "Add a domain" form."""
    return post_form(client, "/portal/", "/portal/domains", {"add-name": name, "add-transport": transport,
                                                             "add-tls": "none"})


def owner(cfg: Any, name: str) -> int | None:
    return read(cfg, lambda s: s.scalar(select(Domain.tenant_id).where(Domain.name == name)))


def refusal(page: str, name: str) -> str:
    """The "not available" sentence the page shows for ``name``."""
    m = re.search(re.escape(name) + r" is not available[^<]*", page)
    assert m, page
    return m.group(0)


# --- domain claims ------------------------------------------------------------------------------------------------

def test_tenant_cannot_claim_a_subdomain_of_another_tenants_domain_and_the_owner_still_can(web_app, tenants, cfg):
    """Attack: Acme adds hr.beta.test (Beta owns beta.test) to receive payroll@hr.beta.test, and by holding the name
    blocks Beta from adding it. Refused with words that neither name Beta nor confirm anyone has it."""
    resp = add_domain(sign_in(web_app, "admin@acme.test"), "hr.beta.test")
    page = text(resp)
    assert resp.status_code == 422 and NOT_AVAILABLE in refusal(page, "hr.beta.test")
    assert "Beta" not in page and "registered" not in page
    assert owner(cfg, "hr.beta.test") is None
    resp = add_domain(sign_in(web_app, "admin@beta.test"), "hr.beta.test")
    assert resp.status_code == 302, text(resp)
    assert owner(cfg, "hr.beta.test") == tenants["beta"].id


def test_tenant_cannot_claim_a_parent_of_another_tenants_domain_and_hears_what_a_taken_name_hears(
        web_app, tenants, factory, cfg):
    """Attack: Acme adds gamma.test above Gamma's shop.gamma.test. The answer reads like the one for a name that is
    simply taken, so neither tells which tenant, or what kind of claim, is in the way."""
    factory.tenant("Gamma", ("shop.gamma.test",))
    admin = sign_in(web_app, "admin@acme.test")
    parent = add_domain(admin, "gamma.test")
    taken = add_domain(admin, "beta.test")
    assert parent.status_code == taken.status_code == 422
    assert refusal(text(parent), "gamma.test").replace("gamma.test", "X") == \
        refusal(text(taken), "beta.test").replace("beta.test", "X")
    assert owner(cfg, "gamma.test") is None and "Gamma" not in text(parent)


def test_tenant_may_add_subdomains_of_its_own_domains(web_app, tenants, cfg):
    resp = add_domain(sign_in(web_app, "admin@acme.test"), "eu.acme.test")
    assert resp.status_code == 302, text(resp)
    row = read(cfg, lambda s: s.scalars(select(Domain).where(Domain.name == "eu.acme.test")).one())
    assert (row.tenant_id, row.vouched, row.verified) == (tenants["acme"].id, False, False)


def test_msp_may_place_any_free_name_but_never_one_name_under_two_tenants(env, tenants, cfg):
    """The MSP knows its customers: it may put hr.beta.test under Acme (a delegated subdomain), vouched for at once;
    beta.test itself stays Beta's, and the MSP is told whose it is."""
    r = run_cli(["domain", "add", "Acme", "hr.beta.test", "--transport", "127.0.0.1:25"], env)
    assert r.returncode == 0, r.stderr
    row = read(cfg, lambda s: s.scalars(select(Domain).where(Domain.name == "hr.beta.test")).one())
    assert (row.tenant_id, row.vouched) == (tenants["acme"].id, True)
    r = run_cli(["domain", "add", "Acme", "beta.test", "--transport", "127.0.0.1:25"], env)
    assert r.returncode != 0 and "already registered to tenant Beta" in r.stderr
    assert owner(cfg, "beta.test") == tenants["beta"].id


def test_an_unproven_claim_yields_to_its_parents_owner_to_the_msp_and_after_a_week(web_app, env, tenants, cfg):
    """Squatting: Acme claims names before their owners join. A claim nobody proved blocks its exact name only, and
    only for a while: the owner of its parent domain, the MSP, or anyone after a week may take the name over."""
    acme = sign_in(web_app, "admin@acme.test")
    for name in ("hr.newco.test", "squat.test", "old.test"):
        assert add_domain(acme, name).status_code == 302
    assert run_cli(["domain", "add", "Beta", "newco.test", "--transport", "127.0.0.1:25"], env).returncode == 0
    beta = sign_in(web_app, "admin@beta.test")
    assert add_domain(beta, "hr.newco.test").status_code == 302, "the owner of newco.test takes its subdomain"
    assert owner(cfg, "hr.newco.test") == tenants["beta"].id

    resp = add_domain(beta, "squat.test")
    assert resp.status_code == 422 and NOT_AVAILABLE in refusal(text(resp), "squat.test"), "a fresh claim holds"
    r = run_cli(["domain", "add", "Beta", "squat.test", "--transport", "127.0.0.1:25"], env)
    assert r.returncode == 0, r.stderr
    assert owner(cfg, "squat.test") == tenants["beta"].id

    read(cfg, lambda s: s.execute(update(Domain).where(Domain.name == "old.test").values(
        created_at=utcnow() - timedelta(days=PENDING_CLAIM_DAYS + 1))))
    assert add_domain(beta, "old.test").status_code == 302, "a lapsed claim no longer holds the name"
    assert owner(cfg, "old.test") == tenants["beta"].id


def test_the_api_shows_a_domains_state_and_only_msp_keys_vouch(acme_api, msp_api, world):
    made = acme_api.post("/domains", {"name": "claim.test", "transport_host": "127.0.0.1"})
    assert made.status_code == 201, made.get_json()
    body = made.get_json()
    assert (body["state"], body["vouched"], body["verified"], body["receives_mail"]) == \
        ("pending", False, False, False)
    assert body["verification_record"].startswith('_mailward.claim.test. IN TXT "mailward-verification=')
    made = msp_api.post("/domains", {"name": "vouched.test", "transport_host": "127.0.0.1",
                                     "tenant_id": world["beta"].id})
    assert made.status_code == 201 and (made.get_json()["state"], made.get_json()["receives_mail"]) == \
        ("vouched", True)
    body = error(acme_api.post("/domains", {"name": "hr.beta.test", "transport_host": "127.0.0.1"}), 422,
                 "validation")
    assert body["message"] == f"hr.beta.test {NOT_AVAILABLE}"


# --- routing: only proven or vouched-for domains receive mail ------------------------------------------------------

def test_a_tenants_unverified_domain_is_refused_at_rcpt_like_an_unknown_one_until_verified(
        web_app, env, ingress, tenants, sink, cfg, dns):
    """Attack: a tenant claims a domain it does not own and its mail starts flowing to the tenant's server. Until the
    TXT record proves the claim, RCPT answers exactly as for a domain nobody has (no routing, no oracle)."""
    admin = sign_in(web_app, "admin@acme.test")
    assert add_domain(admin, "payroll.test", f"127.0.0.1:{sink.port}").status_code == 302
    with client(env) as c:
        c.ehlo()
        assert c.mail("boss@sender.example")[0] == 250
        claimed, unknown = c.rcpt("bob@payroll.test"), c.rcpt("bob@nobody-has-this.test")
    assert claimed[0] == 550 and claimed[1].startswith(b"5.7.1")
    assert claimed == unknown

    domain_id = read(cfg, lambda s: s.scalar(select(Domain.id).where(Domain.name == "payroll.test")))
    dns.add("_mailward.payroll.test", "TXT", "mailward-verification=" + verification.token(cfg, domain_id))
    assert post_form(admin, f"/portal/domains/{domain_id}", f"/portal/domains/{domain_id}/verify",
                     {}).status_code == 302
    with client(env) as c:
        assert c.sendmail("boss@sender.example", ["bob@payroll.test"], make_mail("bob@payroll.test")) == {}
    assert [m.rcpts for m in sink.wait_count(1)] == [["bob@payroll.test"]]


def test_a_domain_the_msp_adds_receives_mail_at_once(web_app, env, ingress, tenants, sink, cfg):
    resp = post_form(sign_in(web_app, "admin@msp.test"), "/console/", "/console/domains",
                     {"domain-tenant": str(tenants["beta"].id), "domain-name": "fresh.test",
                      "domain-transport": f"127.0.0.1:{sink.port}", "domain-tls": "none"})
    assert resp.status_code == 302, text(resp)
    with client(env) as c:
        assert c.sendmail("boss@sender.example", ["bob@fresh.test"], make_mail("bob@fresh.test")) == {}
    assert [m.rcpts for m in sink.wait_count(1)] == [["bob@fresh.test"]]


def test_the_scheduled_recheck_verifies_pending_domains_whose_record_is_published(web_app, tenants, cfg, dns):
    admin = sign_in(web_app, "admin@acme.test")
    for name in ("ready.test", "notyet.test"):
        assert add_domain(admin, name).status_code == 302
    ready_id = read(cfg, lambda s: s.scalar(select(Domain.id).where(Domain.name == "ready.test")))
    dns.add("_mailward.ready.test", "TXT", "mailward-verification=" + verification.token(cfg, ready_id))
    assert recheck(cfg) == ["ready.test"]
    states = dict(read(cfg, lambda s: s.execute(select(Domain.name, Domain.verified)).all()))
    assert (states["ready.test"], states["notyet.test"]) == (True, False)


# --- relay networks -----------------------------------------------------------------------------------------------

def test_tenant_cannot_claim_loopback_private_or_wide_relay_networks_but_the_msp_can(web_app, env, tenants, cfg):
    """Attack: a tenant claims 127.0.0.0/8 (or any /8) as its servers: the open-relay battery then relays from there
    and every other tenant's mail from those addresses was refused. A tenant gets at most a public /24 (IPv6 /48)."""
    admin = sign_in(web_app, "admin@acme.test")
    too_wide = ("127.0.0.0/8", "203.0.0.0/8", "198.51.100.0/23", "2001:db8::/32")
    reserved = ("127.0.0.0/24", "10.9.8.0/24", "169.254.1.0/24", "224.1.2.0/24", "0.0.0.0/24", "::1/128",
                "::ffff:127.0.0.0/120", "fe80::/64")
    for cidr, says in [(c, "too wide") for c in too_wide] + [(c, NOT_AVAILABLE) for c in reserved]:
        resp = post_form(admin, "/portal/outbound", "/portal/outbound/networks", {"cidr": cidr})
        assert resp.status_code == 422 and says in text(resp), (cidr, text(resp)[-2000:])
    for cidr in ("198.51.100.0/24", "2001:db8:5::/48"):
        resp = post_form(admin, "/portal/outbound", "/portal/outbound/networks", {"cidr": cidr})
        assert resp.status_code == 302, (cidr, text(resp)[-2000:])
    for cidr in ("127.0.0.0/8", "100.0.0.0/8"):  # the MSP knows its customers' allocations and its own networks
        r = run_cli(["relay", "add", "Beta", cidr], env)
        assert r.returncode == 0, r.stderr
    nets = read(cfg, lambda s: s.execute(select(RelayNetwork.cidr, RelayNetwork.tenant_id)).all())
    assert sorted(nets) == sorted([("198.51.100.0/24", tenants["acme"].id), ("2001:db8:5::/48", tenants["acme"].id),
                                   ("127.0.0.0/8", tenants["beta"].id), ("100.0.0.0/8", tenants["beta"].id)])


def test_a_taken_relay_network_or_smtp_username_gets_the_same_answer_as_any_name(web_app, tenants, cfg):
    """Existence oracle: "overlaps a network of another customer" and "username is taken" told a tenant what others
    have. Now every name a tenant may not have is simply not available."""
    acme = sign_in(web_app, "admin@acme.test")
    assert post_form(acme, "/portal/outbound", "/portal/outbound/networks",
                     {"cidr": "198.51.100.0/24"}).status_code == 302
    assert post_form(acme, "/portal/outbound", "/portal/outbound/credentials",
                     {"username": "relay@shared.test"}).status_code == 200
    beta = sign_in(web_app, "admin@beta.test")
    overlap = post_form(beta, "/portal/outbound", "/portal/outbound/networks", {"cidr": "198.51.100.128/25"})
    reserved = post_form(beta, "/portal/outbound", "/portal/outbound/networks", {"cidr": "127.0.0.0/24"})
    username = post_form(beta, "/portal/outbound", "/portal/outbound/credentials", {"username": "relay@shared.test"})
    assert overlap.status_code == reserved.status_code == username.status_code == 422
    assert refusal(text(overlap), "198.51.100.128/25").replace("198.51.100.128/25", "X") == \
        refusal(text(reserved), "127.0.0.0/24").replace("127.0.0.0/24", "X")
    assert NOT_AVAILABLE in refusal(text(username), "SMTP username relay@shared.test")
    for resp in (overlap, username):
        page = text(resp)
        assert "198.51.100.0/24" not in page and "Acme" not in page and "taken" not in page
        assert "another customer" not in page
    assert read(cfg, lambda s: s.scalars(select(SmtpCredential.tenant_id)).all()) == [tenants["acme"].id]


def test_mail_from_a_tenants_relay_network_for_another_tenant_is_inbound_not_refused(env, tenants, sink, cfg,
                                                                                      tmp_path):
    """Attack: Acme's relay network covers addresses other senders use too (here 127.0.0.0/8, as the MSP set it).
    Their mail to Beta was refused as "Sender not allowed". Now only Acme's own senders go out from there; the rest,
    bounces included, is inbound mail for its recipients, and still no relay to the world."""
    assert run_cli(["relay", "add", "Acme", "127.0.0.0/8"], env).returncode == 0
    with running_ingress(env, tmp_path / "smtp.log"):
        with client(env) as c:
            assert c.sendmail("news@shop.example", ["bob@beta.test"], make_mail("bob@beta.test", "Offer")) == {}
            assert c.sendmail("<>", ["bob@beta.test"], make_mail("bob@beta.test", "Undelivered",
                                                                  sender="MAILER-DAEMON@mx.shop.example")) == {}
            c.ehlo()
            assert c.mail("news@shop.example")[0] == 250
            code, reply = c.rcpt("carol@external.example")
            assert code == 550 and b"Relaying denied" in reply
            c.rset()
            assert c.mail("alice@acme.test")[0] == 250  # Acme's own sender still goes out from its network
            assert c.rcpt("carol@external.example")[0] == 250
            c.rset()
        got = sink.wait_count(2)
    assert sorted((m.mail_from, m.rcpts[0]) for m in got) == [("<>", "bob@beta.test"),
                                                               ("news@shop.example", "bob@beta.test")]
    stored = read(cfg, lambda s: s.execute(select(Message.tenant_id, Message.direction)).all())
    assert sorted(stored) == [(tenants["beta"].id, "inbound")] * 2
