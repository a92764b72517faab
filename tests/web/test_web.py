"""The web process end to end: Flask's test client against ``create_app`` on a real migrated database and real Redis.

CSRF stays on: every POST carries the token parsed from the page that shows the form, as a browser would send it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import create_app
from tenants.exceptions import SchemaNotCurrent
from tenants.models import Domain, Tenant, User
from tenants.passwords import hash_password
from tests.support.web import (
    PASSWORD,
    csrf_token,
    domain_row,
    input_value,
    policy_version,
    post_form,
    read,
    sign_in,
    text,
)
from tests.web.test_web_quarantine import without_csrf

# --- sign-in ------------------------------------------------------------------------------------------------------

def test_msp_admin_signs_in_to_console_and_last_login_is_recorded(web_app, world, cfg):
    client = web_app.test_client()
    resp = post_form(client, "/login", "/login", {"email": "Admin@MSP.test", "password": PASSWORD})
    assert resp.status_code == 302
    assert resp.headers["Location"] == "/console/"
    page = client.get("/console/")
    assert page.status_code == 200
    assert "admin@msp.test" in text(page) and "msp_admin" in text(page)
    last = read(cfg, lambda s: s.scalars(select(User).where(User.email == "admin@msp.test")).one().last_login_at)
    assert last is not None


@pytest.mark.parametrize(("email", "home"), [("admin@acme.test", "/portal/"), ("auditor@acme.test", "/portal/"),
                                             ("user@acme.test", "/q/")])
def test_tenant_roles_sign_in_to_the_portal(web_app, world, email, home):
    client = web_app.test_client()
    resp = post_form(client, "/login", "/login", {"email": email, "password": PASSWORD})
    assert resp.headers["Location"] == home
    assert client.get(home).status_code == 200


def test_failed_sign_in_gives_one_generic_message(web_app, world, cfg):
    """Unknown address and wrong password read the same: the form does not confirm who has an account."""
    client = web_app.test_client()
    wrong = post_form(client, "/login", "/login", {"email": "admin@msp.test", "password": "not the password"})
    unknown = post_form(client, "/login", "/login", {"email": "nobody@msp.test", "password": PASSWORD})
    for resp in (wrong, unknown):
        assert resp.status_code == 200
        assert "Invalid e-mail or password" in text(resp)
    assert client.get("/console/").status_code == 302
    assert read(cfg, lambda s: s.scalars(select(User).where(User.email == "admin@msp.test")).one().last_login_at) \
        is None


def test_inactive_user_cannot_sign_in(web_app, world, cfg):
    def deactivate(s: Session) -> None:
        s.scalars(select(User).where(User.email == "admin@acme.test")).one().active = False

    read(cfg, deactivate)
    client = web_app.test_client()
    resp = post_form(client, "/login", "/login", {"email": "admin@acme.test", "password": PASSWORD})
    assert "Invalid e-mail or password" in text(resp)


def test_anonymous_is_sent_to_login_and_back_after_sign_in(web_app, world):
    client = web_app.test_client()
    for path in ("/console/", "/portal/", "/portal/domains/1"):
        resp = client.get(path)
        assert resp.status_code == 302
        assert resp.headers["Location"].startswith("/login?next=")
    resp = post_form(client, "/login", "/login", {"email": "admin@msp.test", "password": PASSWORD},
                     query={"next": "/console/"})
    assert resp.headers["Location"] == "/console/"


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x"])
def test_sign_in_never_redirects_off_site(web_app, world, target):
    """Open redirect: a crafted ?next= must not send a freshly signed-in user to another site."""
    client = web_app.test_client()
    resp = post_form(client, "/login", "/login", {"email": "admin@msp.test", "password": PASSWORD},
                     query={"next": target})
    assert resp.headers["Location"] == "/console/"


def test_post_without_csrf_token_is_refused(web_app, world, cfg):
    """Cross-site request forgery: a form post without the session's token is a 400 and changes nothing."""
    client = sign_in(web_app, "admin@msp.test")
    resp = client.post("/console/tenants", data={"tenant-name": "Forged"})
    assert resp.status_code == 400
    assert "CSRF" in text(resp)
    resp = client.post("/console/tenants", data={"tenant-name": "Forged", "tenant-csrf_token": "bogus"})
    assert resp.status_code == 400
    assert read(cfg, lambda s: s.scalar(select(Tenant.id).where(Tenant.name == "Forged"))) is None


def test_logout_is_a_post_with_csrf(web_app, world):
    client = sign_in(web_app, "admin@msp.test")
    assert client.get("/logout").status_code == 405
    assert client.post("/logout").status_code == 400
    assert client.get("/console/").status_code == 200
    resp = post_form(client, "/console/", "/logout", {})
    assert resp.status_code == 302 and resp.headers["Location"] == "/login"
    assert client.get("/console/").status_code == 302


def test_password_change_ends_existing_sessions(web_app, world, cfg):
    """A stolen session cookie stops working once the password is changed."""
    client = sign_in(web_app, "admin@acme.test")
    assert client.get("/portal/").status_code == 200

    def change(s: Session) -> None:
        user = s.scalars(select(User).where(User.email == "admin@acme.test")).one()
        user.password_hash = hash_password("new pw 12345")

    read(cfg, change)
    assert client.get("/portal/").status_code == 302


# --- MSP console --------------------------------------------------------------------------------------------------

def test_msp_admin_creates_tenant_and_domain_through_the_forms(web_app, world, cfg):
    client = sign_in(web_app, "admin@msp.test")
    resp = post_form(client, "/console/", "/console/tenants", {"tenant-name": "Gamma Corp"})
    assert resp.status_code == 302
    page = text(client.get("/console/"))
    assert "Tenant Gamma Corp created." in page
    gamma_id = read(cfg, lambda s: s.scalar(select(Tenant.id).where(Tenant.name == "Gamma Corp")))
    assert gamma_id is not None

    before = policy_version(cfg)
    resp = post_form(client, "/console/", "/console/domains",
                     {"domain-tenant": str(gamma_id), "domain-name": "Gamma.Example",
                      "domain-transport": "mx.gamma.example:2525", "domain-tls": "required"})
    assert resp.status_code == 302, text(resp)
    page = text(client.get("/console/"))
    assert "gamma.example" in page and "mx.gamma.example:2525" in page
    d = read(cfg, lambda s: s.scalars(select(Domain).where(Domain.name == "gamma.example")).one())
    assert (d.tenant_id, d.transport_host, d.transport_port, d.transport_tls) == \
        (gamma_id, "mx.gamma.example", 2525, "required")
    assert policy_version(cfg) == before + 1, "ingress replicas must be told that domains changed"


def test_console_lists_every_tenant_with_its_domains(web_app, world):
    page = text(sign_in(web_app, "helpdesk@msp.test").get("/console/"))
    for name in ("Acme", "Beta", "acme.test", "acme2.test", "beta.test", "127.0.0.1:25"):
        assert name in page


def test_console_shows_validation_errors_and_keeps_the_values(web_app, world, cfg):
    client = sign_in(web_app, "admin@msp.test")
    acme_id = world["acme"].id
    resp = post_form(client, "/console/", "/console/domains",
                     {"domain-tenant": str(acme_id), "domain-name": "not a domain",
                      "domain-transport": "mx.acme.test:25", "domain-tls": "none"})
    assert resp.status_code == 422
    page = text(resp)
    assert "&#39;not a domain&#39; is not a valid domain name" in page
    assert input_value(page, "domain-name") == "not a domain"
    assert input_value(page, "domain-transport") == "mx.acme.test:25"

    resp = post_form(client, "/console/", "/console/domains",
                     {"domain-tenant": str(acme_id), "domain-name": "beta.test",
                      "domain-transport": "mx.acme.test:25", "domain-tls": "none"})
    assert resp.status_code == 422 and "domain beta.test is already registered" in text(resp)
    assert domain_row(cfg, "beta.test")[1] == "127.0.0.1"

    resp = post_form(client, "/console/", "/console/tenants", {"tenant-name": "acme"})
    assert resp.status_code == 422
    assert "already exists" in text(resp) and input_value(text(resp), "tenant-name") == "acme"


def test_helpdesk_sees_the_console_but_cannot_create(web_app, world, cfg):
    client = sign_in(web_app, "helpdesk@msp.test")
    page = text(client.get("/console/"))
    assert "New tenant" not in page and "Add a domain" not in page
    token = csrf_token(page)
    resp = client.post("/console/tenants", data={"tenant-name": "Sneaky", "csrf_token": token})
    assert resp.status_code == 404
    resp = client.post("/console/domains", data={"domain-tenant": str(world["acme"].id), "domain-name": "sneaky.test",
                                                 "domain-transport": "h:25", "domain-tls": "none",
                                                 "csrf_token": token})
    assert resp.status_code == 404
    assert read(cfg, lambda s: s.scalar(select(Tenant.id).where(Tenant.name == "Sneaky"))) is None
    assert read(cfg, lambda s: s.scalar(select(Domain.id).where(Domain.name == "sneaky.test"))) is None


@pytest.mark.parametrize("email", ["admin@acme.test", "auditor@acme.test", "user@acme.test"])
def test_tenant_roles_cannot_open_the_console(web_app, world, email):
    """The MSP console answers 404 to every tenant role: it does not even admit that it exists."""
    client = sign_in(web_app, email)
    assert client.get("/console/").status_code == 404
    token = csrf_token(text(client.get("/login", follow_redirects=True)))
    assert client.post("/console/tenants", data={"tenant-name": "X", "csrf_token": token}).status_code == 404


@pytest.mark.parametrize("email", ["admin@msp.test", "helpdesk@msp.test", "user@acme.test"])
def test_portal_is_for_tenant_admins_and_auditors_only(web_app, world, email):
    assert sign_in(web_app, email).get("/portal/").status_code == 404


# --- tenant portal ------------------------------------------------------------------------------------------------

def test_tenant_admin_sees_only_own_domains(web_app, world):
    page = text(sign_in(web_app, "admin@acme.test").get("/portal/"))
    assert "acme.test" in page and "acme2.test" in page
    assert "beta.test" not in page and "Beta" not in page
    page = text(sign_in(web_app, "admin@beta.test").get("/portal/"))
    assert "beta.test" in page and "acme" not in page


def test_tenant_admin_changes_own_transport(web_app, world, cfg):
    client = sign_in(web_app, "admin@acme.test")
    did = domain_row(cfg, "acme.test")[0]
    before = policy_version(cfg)
    resp = post_form(client, f"/portal/domains/{did}", f"/portal/domains/{did}/transport",
                     {f"d{did}-host": "mail.acme.test", f"d{did}-port": "587", f"d{did}-tls": "required",
                      f"d{did}-back": "detail"})
    assert resp.status_code == 302 and resp.headers["Location"] == f"/portal/domains/{did}"
    assert domain_row(cfg, "acme.test")[1:] == ("mail.acme.test", 587, "required")
    assert policy_version(cfg) == before + 1
    assert "mail.acme.test:587" in text(client.get(resp.headers["Location"]))

    resp = post_form(client, "/portal/", f"/portal/domains/{did}/transport",
                     {f"d{did}-host": "mail.acme.test", f"d{did}-port": "70000", f"d{did}-tls": "required",
                      f"d{did}-back": "index"})
    assert resp.status_code == 422
    assert "transport port 70000 is outside 1-65535" in text(resp)
    assert input_value(text(resp), f"d{did}-port") == "70000"
    assert domain_row(cfg, "acme.test")[2] == 587


def test_cross_tenant_probe_answers_404_and_changes_nothing(web_app, world, cfg):
    """Tenant A's admin guesses the id of tenant B's domain: viewing and editing it answer exactly like a missing id."""
    client = sign_in(web_app, "admin@acme.test")
    beta_id, *beta_before = domain_row(cfg, "beta.test")
    missing_id = beta_id + 1000

    other = client.get(f"/portal/domains/{beta_id}")
    missing = client.get(f"/portal/domains/{missing_id}")
    assert other.status_code == missing.status_code == 404
    assert without_csrf(other) == without_csrf(missing), "another tenant's domain must look exactly like no domain"
    assert "beta.test" not in text(other)

    token = csrf_token(text(client.get("/portal/")))
    resp = client.post(f"/portal/domains/{beta_id}/transport",
                       data={f"d{beta_id}-host": "evil.example", f"d{beta_id}-port": "25",
                             f"d{beta_id}-tls": "none", f"d{beta_id}-back": "detail", "csrf_token": token})
    assert resp.status_code == 404
    assert list(domain_row(cfg, "beta.test")[1:]) == beta_before


def test_tenant_auditor_sees_but_cannot_edit(web_app, world, cfg):
    client = sign_in(web_app, "auditor@acme.test")
    did, *before = domain_row(cfg, "acme.test")
    index = text(client.get("/portal/"))
    assert "acme.test" in index and "/transport" not in index
    detail = client.get(f"/portal/domains/{did}")
    assert detail.status_code == 200 and "Change transport" not in text(detail)
    token = csrf_token(index)
    resp = client.post(f"/portal/domains/{did}/transport",
                       data={f"d{did}-host": "evil.example", f"d{did}-port": "25", f"d{did}-tls": "none",
                             f"d{did}-back": "detail", "csrf_token": token})
    assert resp.status_code == 404
    assert list(domain_row(cfg, "acme.test")[1:]) == before


# --- health -------------------------------------------------------------------------------------------------------

def test_healthz_answers_ok(web_app):
    resp = web_app.test_client().get("/healthz")
    assert resp.status_code == 200 and text(resp) == "ok"


def test_readyz_is_ok_with_database_and_redis(web_app):
    resp = web_app.test_client().get("/readyz")
    assert resp.status_code == 200
    assert resp.get_json() == {"database": "ok", "redis": "ok"}


def test_readyz_is_503_when_redis_is_down(cfg):
    dead = dataclasses.replace(cfg, redis_url="unix:///nonexistent.sock")
    resp = create_app(dead).test_client().get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json() == {"database": "ok", "redis": "unavailable"}


# --- start-up and headers -----------------------------------------------------------------------------------------

def test_unmigrated_database_is_refused_at_start(cfg, tmp_path: Path):
    empty = dataclasses.replace(cfg, database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(SchemaNotCurrent, match="mailward db upgrade"):
        create_app(empty)


def test_security_headers_and_session_cookie_flags(web_app, world):
    client = web_app.test_client()
    resp = client.get("/login")
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "same-origin"
    assert resp.headers["Cache-Control"] == "no-store"
    resp = post_form(client, "/login", "/login", {"email": "admin@msp.test", "password": PASSWORD})
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("mailward_session=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie
    over_https = web_app.test_client()
    resp = post_form(over_https, "https://localhost/login", "https://localhost/login",
                     {"email": "admin@msp.test", "password": PASSWORD})
    assert "Secure" in resp.headers["Set-Cookie"]
    assert "Strict-Transport-Security" in resp.headers


def test_pages_hold_to_the_csp_no_inline_script_or_style(web_app, world):
    """The CSP forbids inline script and style; a page that used them would break in the browser."""
    pages = [(None, "/login"), ("admin@msp.test", "/console/"), ("admin@acme.test", "/portal/"),
             ("admin@acme.test", "/portal/domains/999999"), ("user@acme.test", "/q/")]
    for email, path in pages:
        client = sign_in(web_app, email) if email else web_app.test_client()
        html = text(client.get(path))
        # Only our own static scripts, empty tags (the CSP's script-src 'self'); nothing inline.
        assert not re.search(r"<script(?!\s+src=\"/static/[\w.-]+\.js\"></script>)|\sstyle=|\son[a-z]+=|javascript:",
                             html, re.I), path
        assert "/static/mailward.css" in html


def test_console_warns_when_virus_scanning_is_off_but_tenant_pages_do_not(web_app, world, cfg):
    """No clamd configured (the embedded default without ClamAV): the MSP staff see it on every console page; tenant
    admins, end users and an MSP admin viewing as a tenant do not (a setting customers cannot act on)."""
    assert cfg.clamd is None
    for email in ("admin@msp.test", "helpdesk@msp.test"):
        body = text(sign_in(web_app, email).get("/console/"))
        assert "Virus scanning is off" in body and "MAILWARD_CLAMD" in body, email
    for email, page in (("admin@acme.test", "/portal/"), ("admin@acme.test", "/portal/lists"),
                        ("auditor@acme.test", "/portal/"), ("user@acme.test", "/q/")):
        resp = sign_in(web_app, email).get(page)
        assert resp.status_code == 200, page
        body = text(resp)
        assert "Virus scanning is off" not in body and "MAILWARD_" not in body, (email, page)
    viewing = sign_in(web_app, "admin@msp.test")
    assert post_form(viewing, "/console/", "/console/view-as", {"tenant_id": str(world["acme"].id)}).status_code == 302
    body = text(viewing.get("/portal/"))
    assert "Viewing as tenant Acme" in body and "Virus scanning is off" not in body


def test_console_warns_when_the_hostname_is_not_a_public_name(cfg, world):
    """MAILWARD_HOSTNAME left to a default like ``localhost``: the console names the setting; a proper name: no warning;
    tenant pages never show it."""
    assert "MAILWARD_HOSTNAME" not in text(sign_in(create_app(cfg), "admin@msp.test").get("/console/"))
    for bad in ("localhost", "mailhost", "localhost.localdomain"):
        app = create_app(dataclasses.replace(cfg, hostname=bad))
        body = text(sign_in(app, "admin@msp.test").get("/console/"))
        assert "MAILWARD_HOSTNAME" in body and bad in body, bad
        assert "MAILWARD_HOSTNAME" not in text(sign_in(app, "admin@acme.test").get("/portal/")), bad


def test_no_virus_warning_when_clamd_is_configured(cfg, world):
    import dataclasses

    app = create_app(dataclasses.replace(cfg, clamd="127.0.0.1:3310"))
    assert "Virus scanning is off" not in text(sign_in(app, "admin@msp.test").get("/console/"))
