"""Security of the web side: TOTP second factor, lockout and per-IP limits, the consent banner, "view as" a tenant.

Flask's test client against ``create_app`` on a real database and Redis, CSRF on, as in ``tests/web/test_web.py``.
"""

from __future__ import annotations

import dataclasses
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pyotp
from sqlalchemy import select
from sqlalchemy import text as sa_text

from tenants.models import AuditEntry, Delivery, ListEntry, Msp, User, utcnow
from tenants.platform import db as tdb
from tenants.policy import stored_settings
from tests.fixtures.api import Client as ApiClient
from tests.fixtures.api import error as api_error
from tests.fixtures.api import make_key
from tests.support.held import hold
from tests.support.servers import run_cli
from tests.support.web import PASSWORD, csrf_token, post_form, read, sign_in, text


def _user(cfg: Any, email: str) -> User:
    return read(cfg, lambda s: s.scalars(select(User).where(User.email == email)).one())


def _enrol(client: Any) -> pyotp.TOTP:
    """Enrol a second factor for the signed-in user through the pages; the app's TOTP (confirmed with a code)."""
    post_form(client, "/account/totp", "/account/totp/start", {})
    page = text(client.get("/account/totp"))
    uri = unquote(re.search(r'<code id="otpauth-uri">([^<]+)</code>', page).group(1)).replace("&amp;", "&")
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    app = pyotp.TOTP(secret)
    resp = post_form(client, "/account/totp", "/account/totp/confirm", {"code": _fresh(app)})
    assert resp.status_code == 302, text(resp)
    return app


_spent: dict[str, set[str]] = {}


def _fresh(app: pyotp.TOTP) -> str:
    """A code valid now that this test has not used yet (each step's code is accepted once)."""
    spent = _spent.setdefault(app.secret, set())
    now = time.time()
    code = next(c for c in (app.at(now), app.at(now + 30), app.at(now - 30)) if c not in spent)
    spent.add(code)
    return code


def _password_step(web_app: Any, email: str, password: str = PASSWORD, **kw: Any) -> tuple[Any, Any]:
    client = web_app.test_client(**kw)
    resp = post_form(client, "/login", "/login", {"email": email, "password": password})
    return client, resp


def _other_code(app: pyotp.TOTP, *avoid: str) -> str:
    """A six-digit code valid in no step near now (and none of ``avoid``)."""
    valid = {app.at(time.time() + d) for d in (-60, -30, 0, 30, 60)} | set(avoid)
    return next(c for c in (f"{n:06d}" for n in range(1000)) if c not in valid)


# --- TOTP ---------------------------------------------------------------------------------------------------------

def test_totp_enrolment_shows_uri_and_stores_the_secret_encrypted(web_app, world, cfg):
    client = sign_in(web_app, "admin@acme.test")
    assert "Set up an authenticator app" in text(client.get("/account/totp"))
    app = _enrol(client)
    user = _user(cfg, "admin@acme.test")
    assert user.totp_enabled
    assert user.totp_secret_enc and app.secret not in user.totp_secret_enc
    page = text(client.get("/account/totp"))
    assert "otpauth://" not in page, "a confirmed secret is never shown again"
    entries = read(cfg, lambda s: list(s.scalars(select(AuditEntry.action))))
    assert "account.totp_enabled" in entries


def test_enrolment_page_shows_a_qr_code_without_breaking_the_csp(web_app, world):
    client = sign_in(web_app, "admin@acme.test")
    post_form(client, "/account/totp", "/account/totp/start", {})
    resp = client.get("/account/totp")
    page = text(resp)
    assert "<svg" in page and "otpauth://totp/" in page
    assert "<script" not in page and "style=" not in page
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]


def test_sign_in_with_totp_needs_the_code_and_refuses_a_wrong_one(web_app, world, cfg):
    app = _enrol(sign_in(web_app, "admin@acme.test"))
    client, resp = _password_step(web_app, "admin@acme.test")
    assert resp.status_code == 302 and resp.headers["Location"] == "/login/totp"
    assert client.get("/portal/").status_code == 302, "not signed in before the code passes"
    wrong = post_form(client, "/login/totp", "/login/totp", {"code": _other_code(app)})
    assert wrong.status_code == 200 and "That code is not right" in text(wrong)
    assert client.get("/portal/").status_code == 302
    code = _fresh(app)
    ok = post_form(client, "/login/totp", "/login/totp", {"code": code})
    assert ok.status_code == 302 and ok.headers["Location"] == "/portal/"
    assert client.get("/portal/").status_code == 200
    assert _user(cfg, "admin@acme.test").failed_logins == 0


def test_a_replayed_totp_code_is_refused(web_app, world):
    """An attacker who saw a code (over a shoulder, in a proxy log) cannot sign in with it a second time."""
    app = _enrol(sign_in(web_app, "admin@acme.test"))
    code = _fresh(app)
    first, _ = _password_step(web_app, "admin@acme.test")
    assert post_form(first, "/login/totp", "/login/totp", {"code": code}).status_code == 302
    second, _ = _password_step(web_app, "admin@acme.test")
    replay = post_form(second, "/login/totp", "/login/totp", {"code": code})
    assert replay.status_code == 200 and "already used" in text(replay)
    assert second.get("/portal/").status_code == 302


def test_the_totp_step_cannot_be_reached_without_the_password(web_app, world):
    client = web_app.test_client()
    assert client.get("/login/totp").headers["Location"] == "/login"


def test_disabling_totp_needs_password_and_code(web_app, world, cfg):
    client = sign_in(web_app, "admin@acme.test")
    app = _enrol(client)
    bad = post_form(client, "/account/totp", "/account/totp/disable",
                    {"password": "wrong password!", "code": _fresh(app)})
    assert bad.status_code == 422 and _user(cfg, "admin@acme.test").totp_enabled
    ok = post_form(client, "/account/totp", "/account/totp/disable", {"password": PASSWORD,
                                                                     "code": _fresh(app)})
    assert ok.status_code == 302, text(ok)
    user = _user(cfg, "admin@acme.test")
    assert not user.totp_enabled and user.totp_secret_enc is None


def _require_totp(web_app: Any, on: bool = True, banner: str = "") -> None:
    admin = sign_in(web_app, "admin@msp.test")
    data = {"consent_banner": banner}
    if on:
        data["require_totp"] = "y"
    resp = post_form(admin, "/console/settings", "/console/settings", data)
    assert resp.status_code == 302, text(resp)


def test_msp_requirement_sends_admins_to_enrolment_and_nowhere_else(web_app, world, cfg):
    _require_totp(web_app)
    assert read(cfg, lambda s: s.scalars(select(Msp)).first().require_totp)
    client, resp = _password_step(web_app, "admin@acme.test")
    assert resp.status_code == 302
    for path in ("/portal/", "/portal/quarantine/", "/portal/lists", "/portal/audit", "/q/"):
        r = client.get(path)
        assert r.status_code == 302 and r.headers["Location"] == "/account/totp", path
    page = text(client.get("/account/totp"))
    assert "requires a second factor" in page
    app = _enrol(client)
    assert client.get("/portal/").status_code == 200
    off = post_form(client, "/account/totp", "/account/totp/disable", {"password": PASSWORD,
                                                                      "code": _fresh(app)})
    assert off.status_code == 403 and _user(cfg, "admin@acme.test").totp_enabled
    # End users are not admins: the requirement leaves them alone.
    user = sign_in(web_app, "user@acme.test")
    assert user.get("/q/").status_code == 200


# --- lockout and rate limits --------------------------------------------------------------------------------------

LOCKED = re.compile(r"Too many failed sign-ins; try again in (\d+) minutes?")


def test_account_locks_after_ten_failures_with_a_generic_message(web_app, world, cfg):
    client = web_app.test_client()
    for _ in range(9):
        resp = post_form(client, "/login", "/login", {"email": "admin@acme.test", "password": "wrong password!"})
        assert "Invalid e-mail or password" in text(resp)
    tenth = post_form(client, "/login", "/login", {"email": "admin@acme.test", "password": "wrong password!"})
    assert LOCKED.search(text(tenth)) and LOCKED.search(text(tenth)).group(1) == "15"
    right = post_form(client, "/login", "/login", {"email": "admin@acme.test", "password": PASSWORD})
    assert LOCKED.search(text(right)), "a locked account refuses even the right password"
    assert client.get("/portal/").status_code == 302
    user = _user(cfg, "admin@acme.test")
    assert user.locked_until is not None and user.locked_until > utcnow() + timedelta(minutes=14)


def test_unknown_address_locks_just_like_a_real_account(web_app, world):
    """The lock message must not tell an attacker which addresses have accounts."""
    client = web_app.test_client()
    answers = [text(post_form(client, "/login", "/login", {"email": "ghost@acme.test", "password": "whatever pw"}))
               for _ in range(10)]
    assert all("Invalid e-mail or password" in a for a in answers[:9])
    assert LOCKED.search(answers[9]) and LOCKED.search(answers[9]).group(1) == "15"
    again = text(post_form(client, "/login", "/login", {"email": "ghost@acme.test", "password": "whatever pw"}))
    assert LOCKED.search(again)


def test_lock_lifts_after_its_time(web_app, world, cfg):
    def lock(s: Any) -> None:
        u = s.scalars(select(User).where(User.email == "admin@acme.test")).one()
        u.failed_logins, u.locked_until = 10, utcnow() + timedelta(minutes=5)

    read(cfg, lock)
    _, resp = _password_step(web_app, "admin@acme.test")
    assert "try again in 5 minutes" in text(resp)

    def expire(s: Any) -> None:
        s.scalars(select(User).where(User.email == "admin@acme.test")).one().locked_until = \
            utcnow() - timedelta(seconds=1)

    read(cfg, expire)
    client, resp = _password_step(web_app, "admin@acme.test")
    assert resp.status_code == 302 and client.get("/portal/").status_code == 200
    user = _user(cfg, "admin@acme.test")
    assert user.failed_logins == 0 and user.locked_until is None


def test_wrong_totp_codes_count_towards_the_lockout(web_app, world, cfg):
    app = _enrol(sign_in(web_app, "admin@acme.test"))
    client, _ = _password_step(web_app, "admin@acme.test")
    for _ in range(9):
        post_form(client, "/login/totp", "/login/totp", {"code": _other_code(app)})
    last = post_form(client, "/login/totp", "/login/totp", {"code": _other_code(app)})
    assert last.status_code == 302 and last.headers["Location"] == "/login"
    assert LOCKED.search(text(client.get("/login")))
    assert _user(cfg, "admin@acme.test").locked_until is not None


def _from_ip(web_app: Any, ip: str) -> Any:
    client = web_app.test_client()
    client.environ_base["REMOTE_ADDR"] = ip
    return client


def test_one_ip_is_limited_across_addresses_with_429(web_app, world):
    """Spraying many addresses from one IP (each below the account lock) hits the per-IP limit."""
    from app.security import IP_LIMIT

    client = _from_ip(web_app, "198.51.100.7")
    for n in range(IP_LIMIT):
        resp = post_form(client, "/login", "/login", {"email": f"guess{n}@acme.test", "password": "Password1!"})
        assert resp.status_code == 200
    limited = post_form(client, "/login", "/login", {"email": "admin@acme.test", "password": PASSWORD})
    assert limited.status_code == 429 and "Too many failed sign-ins from your network" in text(limited)
    assert int(limited.headers["Retry-After"]) > 0
    other = _from_ip(web_app, "198.51.100.8")
    assert post_form(other, "/login", "/login", {"email": "admin@acme.test", "password": PASSWORD}).status_code == 302


def test_successful_sign_ins_are_not_counted_by_the_ip_limit(web_app, world):
    """An office behind one address signs in all day: only failures count towards the per-IP wall."""
    from app.security import IP_LIMIT

    for _ in range(IP_LIMIT + 5):
        client = _from_ip(web_app, "198.51.100.9")
        resp = post_form(client, "/login", "/login", {"email": "admin@acme.test", "password": PASSWORD})
        assert resp.status_code == 302


# --- cookies, headers, consent banner ---------------------------------------------------------------------------

def test_session_cookie_is_secure_on_https_and_pages_forbid_framing(web_app, world):
    client = web_app.test_client()
    token = csrf_token(text(client.get("/login", base_url="https://mw.test")))
    resp = client.post("/login", base_url="https://mw.test",
                       data={"email": "admin@acme.test", "password": PASSWORD, "csrf_token": token})
    cookie = next(h for h in resp.headers.getlist("Set-Cookie") if h.startswith("mailward_session="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    csp = resp.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")


def test_consent_banner_is_shown_on_the_login_page(web_app, world, cfg):
    assert "consent-banner" not in text(web_app.test_client().get("/login"))
    _require_totp(web_app, on=False, banner="Authorised use only. <b>Activity is logged.</b>")
    page = text(web_app.test_client().get("/login"))
    assert "Authorised use only. &lt;b&gt;Activity is logged.&lt;/b&gt;" in page
    actions = read(cfg, lambda s: list(s.scalars(select(AuditEntry.action).where(AuditEntry.tenant_id.is_(None)))))
    assert "settings.security" in actions


def test_helpdesk_reads_the_settings_but_cannot_change_them(web_app, world, cfg):
    client = sign_in(web_app, "helpdesk@msp.test")
    assert client.get("/console/settings").status_code == 200
    token = csrf_token(text(client.get("/console/settings")))
    resp = client.post("/console/settings", data={"csrf_token": token, "require_totp": "y"})
    assert resp.status_code == 404
    assert not read(cfg, lambda s: s.scalars(select(Msp)).first().require_totp)


# --- view as a tenant -------------------------------------------------------------------------------------------

def _view_as(client: Any, tenant_id: int) -> Any:
    return post_form(client, "/console/", "/console/view-as", {"tenant_id": str(tenant_id)})


def test_msp_admin_views_as_a_tenant_and_every_action_is_audited(web_app, world, cfg):
    client = sign_in(web_app, "admin@msp.test")
    resp = _view_as(client, world["acme"].id)
    assert resp.status_code == 302 and resp.headers["Location"] == "/portal/"
    page = text(client.get("/portal/"))
    assert "Viewing as tenant Acme" in page
    assert "acme.test" in page and "beta.test" not in page, "the scope is the tenant's"
    assert "Viewing as tenant Acme" in text(client.get("/portal/lists"))
    assert client.get("/console/").status_code == 404, "the console waits until the viewing stops"
    added = post_form(client, "/portal/lists", "/portal/lists", {"kind": "block", "value": "spam.example"})
    assert added.status_code == 302
    entry = read(cfg, lambda s: s.scalars(select(AuditEntry).where(AuditEntry.action == "list.block.add")).one())
    assert (entry.actor, entry.acting_as, entry.tenant_id) == ("admin@msp.test", "Acme", world["acme"].id)
    stop = post_form(client, "/portal/", "/console/view-as/stop", {})
    assert stop.status_code == 302
    console = client.get("/console/")
    assert console.status_code == 200 and "Viewing as tenant" not in text(console)
    actions = read(cfg, lambda s: list(s.scalars(select(AuditEntry.action).order_by(AuditEntry.id))))
    assert actions[0] == "login" and "view_as.start" in actions and actions[-1] == "view_as.stop"


def test_helpdesk_views_as_a_tenant_read_only(web_app, world, cfg):
    client = sign_in(web_app, "helpdesk@msp.test")
    _view_as(client, world["acme"].id)
    assert "Viewing as tenant Acme" in text(client.get("/portal/lists"))
    token = csrf_token(text(client.get("/portal/lists")))
    resp = client.post("/portal/lists", data={"csrf_token": token, "kind": "block", "value": "spam.example"})
    assert resp.status_code == 404
    assert client.get("/portal/branding").status_code == 404


def test_tenant_admin_cannot_view_as_another_tenant(web_app, world, cfg):
    """The view-as session key means nothing to a tenant role: Acme's admin stays in Acme."""
    client = sign_in(web_app, "admin@acme.test")
    token = csrf_token(text(client.get("/portal/")))
    assert client.post("/console/view-as", data={"csrf_token": token,
                                                 "tenant_id": str(world["beta"].id)}).status_code == 404
    with client.session_transaction() as sess:
        sess["view_as"] = world["beta"].id
    page = text(client.get("/portal/"))
    assert "acme.test" in page and "beta.test" not in page and "Viewing as" not in page


# --- the helpdesk's quarantine actions (README: "read and quarantine actions across tenants") -------------------

def _helpdesk_in(web_app: Any, tenant_id: int) -> Any:
    client = sign_in(web_app, "helpdesk@msp.test")
    assert _view_as(client, tenant_id).status_code == 302
    return client


def _rows(cfg: Any, message_id: str) -> list[tuple[str, str]]:
    return read(cfg, lambda s: [(d.rcpt, d.status) for d in s.scalars(
        select(Delivery).where(Delivery.message_id == message_id).order_by(Delivery.id))])


def test_helpdesk_viewing_as_a_tenant_releases_deletes_and_reports_held_mail(web_app, world, cfg):
    """The documented role: msp_helpdesk acts on a tenant's quarantine (as the tenant sees it, audited as itself)."""
    acme = world["acme"].id
    released, deleted, reported = hold(cfg, acme), hold(cfg, acme), hold(cfg, acme)
    client = _helpdesk_in(web_app, acme)
    listing = text(client.get("/portal/quarantine/"))
    assert 'action="/portal/quarantine/bulk"' in listing, "the helpdesk gets the bulk actions"
    page = f"/portal/quarantine/{released}"
    detail = text(client.get(page))
    assert 'value="release"' in detail and 'value="report_spam"' in detail
    assert 'value="allow_release"' not in detail and 'name="to"' not in detail and "Download .eml" not in detail

    assert post_form(client, page, page + "/act", {"action": "release"}).status_code == 302
    assert _rows(cfg, released) == [("bob@acme.test", "queued")]
    page = f"/portal/quarantine/{deleted}"
    assert post_form(client, page, page + "/act", {"action": "delete"}).status_code == 302
    assert _rows(cfg, deleted) == [("bob@acme.test", "discarded")]
    page = f"/portal/quarantine/{reported}"
    assert post_form(client, page, page + "/act", {"action": "report_spam"}).status_code == 302
    assert "Reported as spam" in text(client.get(page))

    entry = read(cfg, lambda s: s.scalars(select(AuditEntry).where(AuditEntry.action == "quarantine.release")).one())
    assert (entry.actor, entry.acting_as, entry.tenant_id) == ("helpdesk@msp.test", "Acme", acme)


def test_helpdesk_bulk_release_and_delete(web_app, world, cfg):
    acme = world["acme"].id
    first, second = hold(cfg, acme), hold(cfg, acme)
    client = _helpdesk_in(web_app, acme)
    resp = post_form(client, "/portal/quarantine/", "/portal/quarantine/bulk", {"action": "release", "ids": first})
    assert resp.status_code == 302
    resp = post_form(client, "/portal/quarantine/", "/portal/quarantine/bulk", {"action": "delete", "ids": second})
    assert resp.status_code == 302
    assert _rows(cfg, first) == [("bob@acme.test", "queued")] and _rows(cfg, second) == [("bob@acme.test",
                                                                                         "discarded")]


def test_helpdesk_cannot_administer_the_tenant_through_the_quarantine(web_app, world, cfg):
    """Privilege escalation: quarantine actions, not administration: no list edits, no copy sent elsewhere, no virus
    release, no raw mail, however the request is made."""
    acme = world["acme"].id
    spam, virus = hold(cfg, acme), hold(cfg, acme, kind="virus", score=100)
    client = _helpdesk_in(web_app, acme)
    page = f"/portal/quarantine/{spam}"
    for data in ({"action": "allow_release"}, {"action": "block_delete"},
                 {"action": "release_to", "to": "security@acme.test"}):
        assert post_form(client, page, page + "/act", data).status_code == 404, data
    assert client.get(page + "/raw").status_code == 404
    assert _rows(cfg, spam) == [("bob@acme.test", "quarantined")]
    assert read(cfg, lambda s: s.scalars(select(ListEntry)).all()) == []
    page = f"/portal/quarantine/{virus}"
    resp = post_form(client, page, page + "/act", {"action": "release", "confirm": "1"})
    assert resp.status_code == 302
    assert "A virus can only be released by an administrator" in text(client.get(page))
    assert _rows(cfg, virus) == [("bob@acme.test", "quarantined")]


def test_helpdesk_cannot_change_policy_as_a_tenant_or_as_the_msp(web_app, world, cfg):
    """Acting on the quarantine gives the helpdesk nothing else: the tenant's and the MSP's policy stay read-only."""
    acme = world["acme"].id
    client = _helpdesk_in(web_app, acme)
    assert client.get("/portal/policy").status_code == 200
    assert post_form(client, "/portal/policy", "/portal/policy", {"v_tag_threshold": "1"}).status_code == 404
    post_form(client, "/portal/", "/console/view-as/stop", {})
    assert post_form(client, "/console/policy", "/console/policy", {"v_tag_threshold": "1"}).status_code == 404
    assert read(cfg, lambda s: (stored_settings(s, None), stored_settings(s, acme))) == ({}, {})


def test_helpdesk_acts_on_a_tenants_quarantine_only_while_viewing_as_it(web_app, world, cfg):
    """Without "view as" the helpdesk is in the MSP scope: the portal's quarantine actions are not its to call."""
    spam = hold(cfg, world["acme"].id)
    client = sign_in(web_app, "helpdesk@msp.test")
    token = csrf_token(text(client.get("/console/")))
    resp = client.post(f"/portal/quarantine/{spam}/act", data={"action": "release", "csrf_token": token})
    assert resp.status_code == 404
    assert _rows(cfg, spam) == [("bob@acme.test", "quarantined")]


def test_a_tenant_auditor_still_cannot_act_on_held_mail(web_app, world, cfg):
    """The helpdesk is presented as the tenant's auditor; the auditor's own role stays read-only."""
    spam = hold(cfg, world["acme"].id)
    client = sign_in(web_app, "auditor@acme.test")
    page = f"/portal/quarantine/{spam}"
    assert post_form(client, page, page + "/act", {"action": "release"}).status_code == 404
    assert _rows(cfg, spam) == [("bob@acme.test", "quarantined")]


# --- releasing a copy elsewhere ---------------------------------------------------------------------------------

def test_a_quarantine_scoped_key_cannot_release_a_copy_out_of_the_tenant(web_app, world, cfg):
    """Exfiltration: a key made for quarantine work (read, quarantine) must not deliver held mail to an address of
    its holder's choosing outside the tenant; a copy to the tenant's own addresses is fine."""
    acme = world["acme"].id
    spam = hold(cfg, acme)
    api = ApiClient(web_app, make_key(cfg, acme, "read,quarantine"))
    body = api_error(api.post(f"/quarantine/{spam}/release", {"to": "collector@evil.example"}), 403, "forbidden")
    assert "not in one of the tenant's domains" in body["message"]
    assert _rows(cfg, spam) == [("bob@acme.test", "quarantined")], "no copy was queued"
    ok = api.post(f"/quarantine/{spam}/release", {"to": "security@acme2.test"})
    assert ok.status_code == 200 and ok.get_json()["to"] == "security@acme2.test"

    msp = ApiClient(web_app, make_key(cfg, None, "read,quarantine"))
    api_error(msp.post(f"/quarantine/{spam}/release", {"to": "security@beta.test"}), 403, "forbidden")


def test_a_key_with_the_write_scope_may_release_a_copy_anywhere(web_app, world, cfg):
    spam = hold(cfg, world["acme"].id)
    api = ApiClient(web_app, make_key(cfg, world["acme"].id, "read,write,quarantine"))
    resp = api.post(f"/quarantine/{spam}/release", {"to": "analyst@partner.example"})
    assert resp.status_code == 200 and resp.get_json()["to"] == "analyst@partner.example"
    assert ("analyst@partner.example", "queued") in _rows(cfg, spam)


def test_a_tenant_admin_may_release_a_copy_outside_the_tenant_in_the_portal(web_app, world, cfg):
    """The portal's admin can download the raw mail anyway; a copy elsewhere is its decision (audited)."""
    spam = hold(cfg, world["acme"].id)
    client = sign_in(web_app, "admin@acme.test")
    page = f"/portal/quarantine/{spam}"
    resp = post_form(client, page, page + "/act", {"action": "release_to", "to": "analyst@partner.example"})
    assert resp.status_code == 302
    assert ("analyst@partner.example", "queued") in _rows(cfg, spam)


# --- the data directory -----------------------------------------------------------------------------------------

def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_new_data_dir_keeps_the_raw_mail_to_its_owner(env, tmp_path):
    """Local disclosure: the SQLite database holds every mail; another local user must not read it (0600 in a 0700
    directory), nor the -wal/-shm files SQLite writes next to it."""
    data_dir = tmp_path / "fresh" / "var"
    fresh = {k: v for k, v in env.items() if k != "MAILWARD_DATABASE_URL"}
    fresh["MAILWARD_DATA_DIR"] = str(data_dir)
    result = run_cli(["db", "upgrade"], fresh)
    assert result.returncode == 0, result.stderr
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "mailward.db") == 0o600

    engine = tdb.make_engine(f"sqlite:///{data_dir / 'mailward.db'}")
    try:
        with engine.begin() as conn:
            conn.execute(sa_text("CREATE TABLE probe (x INTEGER)"))
            for suffix in ("-wal", "-shm"):
                side = data_dir / f"mailward.db{suffix}"
                assert side.exists() and _mode(side) == 0o600, suffix
    finally:
        engine.dispose()


def test_an_existing_loose_data_dir_is_made_private_at_start(cfg, tmp_path):
    """An installation made before (0755 directories, 0644 files) is tightened by what `mailward run` calls first."""
    data_dir = tmp_path / "old"
    for sub in ("", "logs", "valkey"):
        (data_dir / sub).mkdir(mode=0o755, exist_ok=True)
        (data_dir / sub).chmod(0o755)
    for name in ("mailward.db", "mailward.db-wal", "secret_key", "logs/web.log"):
        (data_dir / name).write_bytes(b"")
        (data_dir / name).chmod(0o644)
    tdb.secure_data_dir(dataclasses.replace(cfg, data_dir=data_dir, database_url=""))
    assert [_mode(data_dir / d) for d in ("", "logs", "valkey")] == [0o700] * 3
    assert [_mode(data_dir / f) for f in ("mailward.db", "mailward.db-wal", "secret_key")] == [0o600] * 3


# --- behind a reverse proxy -------------------------------------------------------------------------------------

def _via_proxy(app: Any, forwarded_for: str) -> Any:
    """A client whose requests arrive from one proxy address, naming the real client in X-Forwarded-For."""
    client = app.test_client()
    client.environ_base.update(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=forwarded_for)
    return client


def _spray(client: Any, n: int) -> None:
    for i in range(n):
        post_form(client, "/login", "/login", {"email": f"guess{i}@acme.test", "password": "Password1!"})


def test_behind_a_trusted_proxy_the_per_ip_limit_counts_the_forwarded_client(cfg, world):
    """With MAILWARD_TRUSTED_PROXIES=1 one sprayer behind the proxy is limited, and other clients of the same proxy
    are not (without it every user behind the ingress would share one limit)."""
    import dataclasses

    from app import create_app
    from app.security import IP_LIMIT

    app = create_app(dataclasses.replace(cfg, trusted_proxies=1))
    _spray(_via_proxy(app, "203.0.113.5"), IP_LIMIT)
    sprayer = _via_proxy(app, "203.0.113.5")
    assert post_form(sprayer, "/login", "/login", {"email": "admin@acme.test", "password": PASSWORD}).status_code == 429
    neighbour = _via_proxy(app, "203.0.113.6")
    assert post_form(neighbour, "/login", "/login",
                     {"email": "admin@acme.test", "password": PASSWORD}).status_code == 302


def test_without_trusted_proxies_a_forged_forwarded_for_does_not_dodge_the_limit(web_app, world):
    """A direct client that invents a new X-Forwarded-For on every request is still counted by its own address."""
    from app.security import IP_LIMIT

    for i in range(IP_LIMIT):
        post_form(_via_proxy(web_app, f"192.0.2.{i}"), "/login", "/login",
                  {"email": f"guess{i}@acme.test", "password": "Password1!"})
    forged = _via_proxy(web_app, "192.0.2.250")
    assert post_form(forged, "/login", "/login", {"email": "admin@acme.test", "password": PASSWORD}).status_code == 429


def test_trusted_proxies_is_validated_at_start():
    import pytest

    from tenants.exceptions import ConfigError
    from tenants.platform.config import Config

    assert Config.from_env({"MAILWARD_TRUSTED_PROXIES": "1"}).trusted_proxies == 1
    for bad in ("-1", "many", "99"):
        with pytest.raises(ConfigError, match="MAILWARD_TRUSTED_PROXIES"):
            Config.from_env({"MAILWARD_TRUSTED_PROXIES": bad})
