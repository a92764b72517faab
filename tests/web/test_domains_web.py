"""Domain ownership proof and the DNS readiness checklist, against the real loopback DNS server (``dns`` fixture).

The domain page never looks DNS up: it shows what the worker's check job cached (:mod:`tenants.dnscache`), so these
tests open the page (which queues the check), run the queued check jobs, and open it again (:func:`_checked_page`).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from tenants import dnslookup, verification
from tenants.dkimkeys import generate_key
from tenants.models import AuditEntry, Domain
from tenants.platform.config import Config
from tenants.platform.jobs import DNSCHECK_JOB, job_queue
from tests.support.servers import run_cli
from tests.support.web import domain_row, post_form, read, sign_in, text
from worker import dnscheck

HOST = "mx.mailward.test"  # MAILWARD_HOSTNAME of every test installation


def _verified(cfg, name: str) -> bool:
    return bool(read(cfg, lambda s: s.scalars(select(Domain).where(Domain.name == name)).one().verified))


def _record_value(page: str) -> str:
    m = re.search(r'_mailward\.acme\.test\. IN TXT &#34;(mailward-verification=[0-9a-f]+)&#34;', page) or \
        re.search(r'_mailward\.acme\.test\. IN TXT "(mailward-verification=[0-9a-f]+)"', page)
    assert m, page
    return m.group(1)


def _run_dns_checks(cfg: Config) -> int:
    """Run the DNS check jobs the pages queued, as the worker runs them (its job function, in this process, so that a
    monkeypatched lookup timeout applies); how many ran."""
    jobs = [j for j in job_queue(cfg).get_jobs() if j.func_name == DNSCHECK_JOB]
    for job in jobs:
        dnscheck.check(cfg, *job.args)
        job.delete()
    return len(jobs)


def _checked_page(client: Any, cfg: Config, domain_id: int) -> str:
    """The domain page once the checks it asked for have run."""
    client.get(f"/portal/domains/{domain_id}")
    _run_dns_checks(cfg)
    return text(client.get(f"/portal/domains/{domain_id}"))


def _row(page: str, item: str) -> str:
    m = re.search(rf'<tr class="check-(\w+)" data-item="{re.escape(item)}">(.*?)</tr>', page, re.S)
    assert m, f"no checklist row {item!r}"
    return f"{m.group(1)} {m.group(2)}"


def test_domain_page_shows_the_record_and_verify_verifies(web_app, world, cfg, dns):
    domain_id = domain_row(cfg, "acme.test")[0]
    client = sign_in(web_app, "admin@acme.test")
    page = text(client.get(f"/portal/domains/{domain_id}"))
    value = _record_value(page)
    assert value == "mailward-verification=" + verification.token(cfg, domain_id)
    assert 'data-state="vouched"' in page, "the MSP added acme.test: it receives mail, vouched for"

    dns.add("_mailward.acme.test", "TXT", value)
    resp = post_form(client, f"/portal/domains/{domain_id}", f"/portal/domains/{domain_id}/verify", {})
    assert resp.status_code == 302
    assert _verified(cfg, "acme.test")
    assert _run_dns_checks(cfg) == 1, "Verify asks for a fresh checklist"
    page = text(client.get(f"/portal/domains/{domain_id}"))
    assert "acme.test is verified" in page and "ok" in _row(page, "Ownership")
    actions = read(cfg, lambda s: list(s.scalars(select(AuditEntry.action))))
    assert "domain.verify" in actions


def test_a_wrong_token_does_not_verify_and_says_so(web_app, world, cfg, dns):
    domain_id = domain_row(cfg, "acme.test")[0]
    dns.add("_mailward.acme.test", "TXT", "mailward-verification=" + "0" * 32)
    client = sign_in(web_app, "admin@acme.test")
    post_form(client, f"/portal/domains/{domain_id}", f"/portal/domains/{domain_id}/verify", {})
    assert "another token" in text(client.get(f"/portal/domains/{domain_id}"))
    page = _checked_page(client, cfg, domain_id)
    assert not _verified(cfg, "acme.test")
    assert _row(page, "Ownership").startswith("wrong")


def test_another_tenants_token_does_not_verify_this_domain(web_app, world, cfg, dns):
    """Tokens are per domain: publishing beta.test's token at acme.test proves nothing about acme.test."""
    acme_id, beta_id = domain_row(cfg, "acme.test")[0], domain_row(cfg, "beta.test")[0]
    dns.add("_mailward.acme.test", "TXT", "mailward-verification=" + verification.token(cfg, beta_id))
    client = sign_in(web_app, "admin@acme.test")
    post_form(client, f"/portal/domains/{acme_id}", f"/portal/domains/{acme_id}/verify", {})
    assert not _verified(cfg, "acme.test")


def test_a_verified_domain_stays_verified_when_its_record_is_gone(web_app, world, cfg, dns):
    """A zone clean-up that drops the TXT record must not stop a customer's mail: the proof, once given, is kept."""
    domain_id = domain_row(cfg, "acme.test")[0]
    dns.add("_mailward.acme.test", "TXT", "mailward-verification=" + verification.token(cfg, domain_id))
    client = sign_in(web_app, "admin@acme.test")
    post_form(client, f"/portal/domains/{domain_id}", f"/portal/domains/{domain_id}/verify", {})
    assert _verified(cfg, "acme.test")
    dns.clear()
    post_form(client, f"/portal/domains/{domain_id}", f"/portal/domains/{domain_id}/verify", {})
    page = text(client.get(f"/portal/domains/{domain_id}"))
    assert _verified(cfg, "acme.test") and "stays verified" in page


def test_auditor_sees_the_record_but_cannot_check(web_app, world, cfg, dns):
    domain_id = domain_row(cfg, "acme.test")[0]
    client = sign_in(web_app, "auditor@acme.test")
    page = text(client.get(f"/portal/domains/{domain_id}"))
    assert "_mailward.acme.test." in page and ">Verify</button>" not in page
    resp = post_form(client, f"/portal/domains/{domain_id}", f"/portal/domains/{domain_id}/verify", {})
    assert resp.status_code == 404


def test_checking_another_tenants_domain_is_a_404(web_app, world, cfg, dns):
    beta_id = domain_row(cfg, "beta.test")[0]
    dns.add("_mailward.beta.test", "TXT", "mailward-verification=" + verification.token(cfg, beta_id))
    client = sign_in(web_app, "admin@acme.test")
    own = domain_row(cfg, "acme.test")[0]
    assert client.get(f"/portal/domains/{beta_id}").status_code == 404
    resp = post_form(client, f"/portal/domains/{own}", f"/portal/domains/{beta_id}/verify", {})
    assert resp.status_code == 404
    assert not _verified(cfg, "beta.test")


def test_console_shows_each_domains_ownership_state(web_app, world, cfg, dns):
    acme_id = domain_row(cfg, "acme.test")[0]
    dns.add("_mailward.acme.test", "TXT", "mailward-verification=" + verification.token(cfg, acme_id))
    admin = sign_in(web_app, "admin@acme.test")
    post_form(admin, f"/portal/domains/{acme_id}", f"/portal/domains/{acme_id}/verify", {})
    post_form(admin, "/portal/", "/portal/domains", {"add-name": "claim.test", "add-transport": "127.0.0.1:25",
                                                     "add-tls": "none"})
    page = text(sign_in(web_app, "admin@msp.test").get("/console/"))
    states = re.findall(r'<td>([a-z0-9.]+)</td>\s*<td><code>[^<]*</code></td>\s*<td>\w+</td>\s*<td><span class="badge '
                        r'\w+ domain-state" data-state="(\w+)"', page)
    assert sorted(states) == [("acme.test", "verified"), ("acme2.test", "vouched"), ("beta.test", "vouched"),
                              ("claim.test", "pending")]


def test_cli_verify(world, cfg, env, dns):
    domain_id = domain_row(cfg, "acme.test")[0]
    result = run_cli(["domain", "verify", "acme.test"], env)
    assert result.returncode == 1, result.stderr
    assert "no verification record" in result.stdout and "_mailward.acme.test. IN TXT" in result.stdout
    dns.add("_mailward.acme.test", "TXT", "mailward-verification=" + verification.token(cfg, domain_id))
    result = run_cli(["domain", "verify", "ACME.test"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _verified(cfg, "acme.test") and "state: verified" in result.stdout
    result = run_cli(["domain", "verify", "nowhere.test"], env)
    assert result.returncode == 1 and "no tenant domain" in result.stderr


# --- DNS readiness ------------------------------------------------------------------------------------------------

def test_checklist_all_ok(web_app, world, cfg, dns):
    domain_id = domain_row(cfg, "acme.test")[0]
    key = read(cfg, lambda s: generate_key(s, cfg, "acme.test", "mw1", bits=1024).public_key)
    dns.add("_mailward.acme.test", "TXT", "mailward-verification=" + verification.token(cfg, domain_id))
    dns.add("acme.test", "MX", f"10 {HOST}")
    dns.add("acme.test", "TXT", f"v=spf1 a:{HOST} -all")
    dns.add("mw1._domainkey.acme.test", "TXT", f"v=DKIM1; k=rsa; p={key}")
    dns.add("_dmarc.acme.test", "TXT", "v=DMARC1; p=reject")
    page = _checked_page(sign_in(web_app, "auditor@acme.test"), cfg, domain_id)
    for item in ("Ownership", "MX", "SPF", "DKIM mw1", "DMARC"):
        assert _row(page, item).startswith("ok"), _row(page, item)


def test_checklist_missing_records_show_what_to_publish(web_app, world, cfg, dns):
    domain_id = domain_row(cfg, "acme.test")[0]
    read(cfg, lambda s: generate_key(s, cfg, "acme.test", "mw1", bits=1024))
    page = _checked_page(sign_in(web_app, "admin@acme.test"), cfg, domain_id)
    for item in ("Ownership", "MX", "SPF", "DKIM mw1", "DMARC"):
        assert _row(page, item).startswith("missing"), _row(page, item)
    assert f"acme.test. IN MX 10 {HOST}." in _row(page, "MX")
    assert f"v=spf1 mx a:{HOST} ~all" in _row(page, "SPF")
    assert "mw1._domainkey.acme.test. IN TXT" in _row(page, "DKIM mw1")
    assert "v=DMARC1; p=quarantine; rua=mailto:postmaster@acme.test" in _row(page, "DMARC")


def test_checklist_wrong_records(web_app, world, cfg, dns):
    domain_id = domain_row(cfg, "acme.test")[0]
    read(cfg, lambda s: generate_key(s, cfg, "acme.test", "mw1", bits=1024))
    dns.add("acme.test", "MX", "10 mail.elsewhere.test")
    dns.add("acme.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    dns.add("mw1._domainkey.acme.test", "TXT", "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDstale")
    dns.add("_dmarc.acme.test", "TXT", "v=DMARC1; p=maybe")
    page = _checked_page(sign_in(web_app, "admin@acme.test"), cfg, domain_id)
    for item in ("MX", "SPF", "DKIM mw1", "DMARC"):
        assert _row(page, item).startswith("wrong"), _row(page, item)
    assert "mail.elsewhere.test" in _row(page, "MX")
    assert f"v=spf1 a:{HOST} ip4:192.0.2.1 -all" in _row(page, "SPF")  # their record, with us added


def test_dns_down_shows_could_not_check_not_an_error(web_app, world, cfg, dns, monkeypatch):
    """A resolver that never answers must not break the page: each item says it could not check."""
    monkeypatch.setattr(dnslookup, "LOOKUP_TIMEOUT", 0.5)
    domain_id = domain_row(cfg, "acme.test")[0]
    for name in ("acme.test", "_mailward.acme.test", "_dmarc.acme.test"):
        dns.drop(name)
    client = sign_in(web_app, "admin@acme.test")
    page = _checked_page(client, cfg, domain_id)
    for item in ("Ownership", "MX", "SPF", "DMARC"):
        assert _row(page, item).startswith("unknown") and "could not check" in _row(page, item)
    resp = post_form(client, f"/portal/domains/{domain_id}", f"/portal/domains/{domain_id}/verify", {})
    assert resp.status_code == 302 and not _verified(cfg, "acme.test")
    assert "could not check" in text(client.get(f"/portal/domains/{domain_id}"))


def test_checklist_never_proposes_mx_localhost_when_the_hostname_is_not_public(world, cfg, dns):
    """MAILWARD_HOSTNAME defaulted to ``localhost`` (or a bare name): MX and SPF say the record is not known yet
    instead of proposing ``MX 10 localhost.``; the other items are checked as usual."""
    import dataclasses

    from app import create_app

    domain_id = domain_row(cfg, "acme.test")[0]
    dns.add("_dmarc.acme.test", "TXT", "v=DMARC1; p=reject")
    for bad in ("localhost", "mailhost"):
        bad_cfg = dataclasses.replace(cfg, hostname=bad)
        app = create_app(bad_cfg)
        page = _checked_page(sign_in(app, "admin@acme.test"), bad_cfg, domain_id)
        for item in ("MX", "SPF"):
            row = _row(page, item)
            assert row.startswith("unset") and "not known yet" in row and "not configured" in row, row
            assert bad not in row, row
        assert f"MX 10 {bad}" not in page and f"a:{bad}" not in page
        assert _row(page, "DMARC").startswith("ok") and _row(page, "Ownership").startswith("missing")


# --- a tenant admin adds a domain ---------------------------------------------------------------------------------

def test_tenant_admin_adds_a_domain_and_lands_on_its_checklist(web_app, world, cfg, dns):
    client = sign_in(web_app, "admin@acme.test")
    resp = post_form(client, "/portal/", "/portal/domains",
                     {"add-name": "New-Acme.test", "add-transport": "mail.acme.test:2525", "add-tls": "required"})
    assert resp.status_code == 302
    row = read(cfg, lambda s: s.scalars(select(Domain).where(Domain.name == "new-acme.test")).one())
    assert (row.tenant_id, row.transport_host, row.transport_port, row.transport_tls, row.verified, row.vouched) == \
        (world["acme"].id, "mail.acme.test", 2525, "required", False, False)
    assert resp.headers["Location"].endswith(f"/portal/domains/{row.id}")
    page = text(client.get(resp.headers["Location"]))
    assert "_mailward.new-acme.test." in page and 'id="dns-checking"' in page
    page = _checked_page(client, cfg, row.id)
    assert _row(page, "MX").startswith("missing")
    assert 'data-state="pending"' in page and "Awaiting verification: new-acme.test receives no mail yet" in page
    actions = read(cfg, lambda s: s.scalars(
        select(AuditEntry.action).where(AuditEntry.target == "domain new-acme.test")).all())
    assert actions == ["domain.create"]


def test_adding_a_domain_another_tenant_has_is_refused_without_saying_whose(web_app, world, cfg):
    client = sign_in(web_app, "admin@acme.test")
    resp = post_form(client, "/portal/", "/portal/domains",
                     {"add-name": "beta.test", "add-transport": "mail.acme.test", "add-tls": "none"})
    page = text(resp)
    assert resp.status_code == 422 and "beta.test is not available" in page and "Beta" not in page
    assert "registered" not in page
    owner = read(cfg, lambda s: s.scalars(select(Domain.tenant_id).where(Domain.name == "beta.test")).one())
    assert owner == world["beta"].id
    bad = post_form(client, "/portal/", "/portal/domains",
                    {"add-name": "not a domain", "add-transport": "mail.acme.test", "add-tls": "none"})
    assert bad.status_code == 422 and "is not a valid domain name" in text(bad)


def test_auditor_cannot_add_a_domain(web_app, world, cfg):
    client = sign_in(web_app, "auditor@acme.test")
    assert 'id="add-domain"' not in text(client.get("/portal/"))
    resp = post_form(client, "/portal/", "/portal/domains",
                     {"add-name": "sneaky.test", "add-transport": "mail.acme.test", "add-tls": "none"})
    assert resp.status_code == 404
    assert read(cfg, lambda s: s.scalars(select(Domain).where(Domain.name == "sneaky.test")).first()) is None
