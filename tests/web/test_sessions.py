"""Web sessions end on the server's word: signing out, deactivation and the absolute lifetime refuse a session cookie,
a copy of it included, although the cookie itself is still validly signed.

Flask's test client against ``create_app`` on a real database and Redis, and one test over real HTTP against
``mailward web`` as a child process.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookies import SimpleCookie
from typing import Any

import pytest
from sqlalchemy import select

from app import create_app
from app.auth import SIGNED_IN_AT
from tenants import users
from tenants.exceptions import ConfigError
from tenants.models import AuditEntry, User
from tenants.platform.config import Config
from tenants.tokens import make_login_token
from tests.support.web import PASSWORD, csrf_token, post_form, read, sign_in, text

COOKIE = "mailward_session"


def _cookie(client: Any) -> str:
    found = client.get_cookie(COOKIE)
    assert found is not None, "signed in: the session cookie is set"
    return str(found.value)


def _browser_with(web_app: Any, cookie: str) -> Any:
    """Another browser that presents a copied session cookie (an attacker's replay)."""
    other = web_app.test_client()
    other.set_cookie(COOKIE, cookie)
    return other


def _version(cfg: Any, email: str) -> int:
    return read(cfg, lambda s: s.scalar(select(User.session_version).where(User.email == email)))


def test_a_cookie_copied_before_logout_is_refused_after_it(web_app, world, cfg):
    """Session replay: a cookie stolen while signed in (proxy log, shared machine, XSS elsewhere) stops working when
    its owner signs out, although its signature and idle time are still good."""
    client = sign_in(web_app, "admin@msp.test")
    stolen = _cookie(client)
    assert _browser_with(web_app, stolen).get("/console/").status_code == 200, "the copy works while signed in"
    before = _version(cfg, "admin@msp.test")

    resp = post_form(client, "/console/", "/logout", {})
    assert resp.status_code == 302 and resp.headers["Location"] == "/login"
    assert _version(cfg, "admin@msp.test") == before + 1

    replay = _browser_with(web_app, stolen).get("/console/")
    assert replay.status_code == 302 and replay.headers["Location"].startswith("/login")
    assert client.get("/console/").status_code == 302
    actions = read(cfg, lambda s: list(s.scalars(select(AuditEntry.action).order_by(AuditEntry.id))))
    assert actions[-1] == "logout"


def test_signing_out_ends_the_users_sessions_in_other_browsers_too(web_app, world):
    """One version per user: signing out anywhere ends every session signed in before (no list of sessions kept)."""
    laptop = sign_in(web_app, "admin@acme.test")
    phone = sign_in(web_app, "admin@acme.test")
    other_user = sign_in(web_app, "auditor@acme.test")
    post_form(laptop, "/portal/", "/logout", {})
    assert phone.get("/portal/").status_code == 302
    assert other_user.get("/portal/").status_code == 200, "another user's session is not touched"
    again = sign_in(web_app, "admin@acme.test")
    assert again.get("/portal/").status_code == 200, "signing in afresh works"


def test_a_replayed_cookie_after_logout_is_refused_over_real_http(web, world):
    """The replay of a signed-out cookie against the real web process (waitress), with raw HTTP requests."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    jar: dict[str, str] = {}

    def call(path: str, data: dict[str, str] | None = None, cookie: str | None = None) -> tuple[int, str, str]:
        header = cookie if cookie is not None else "; ".join(f"{k}={v}" for k, v in jar.items())
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(web + path, data=body, headers={"Cookie": header} if header else {})
        try:
            with opener.open(req, timeout=10) as resp:
                status, headers, page = resp.status, resp.headers, resp.read().decode()
        except urllib.error.HTTPError as exc:
            status, headers, page = exc.code, exc.headers, exc.read().decode()
        for value in headers.get_all("Set-Cookie") or []:
            jar.update({k: m.value for k, m in SimpleCookie(value).items()})
        return status, headers.get("Location", ""), page

    token = csrf_token(call("/login")[2])
    status, location, _ = call("/login", {"email": "admin@msp.test", "password": PASSWORD, "csrf_token": token})
    assert status == 302 and location.endswith("/console/")
    status, _, page = call("/console/")
    assert status == 200
    stolen = f"{COOKIE}={jar[COOKIE]}"
    assert call("/console/", cookie=stolen)[0] == 200

    status, location, _ = call("/logout", {"csrf_token": csrf_token(page)})
    assert status == 302 and location.endswith("/login")
    status, location, _ = call("/console/", cookie=stolen)
    assert status == 302 and "/login" in location, "the signed-out cookie is refused by the server"


def test_a_session_ends_at_its_absolute_lifetime_however_active(cfg, world):
    """The idle lifetime slides with every request; the absolute one does not: a busy stolen session ends too."""
    app = create_app(dataclasses.replace(cfg, session_max_age=3))
    client = sign_in(app, "admin@msp.test")
    # Timed from the session's own sign-in second (whole seconds), not from when sign_in() returned: on a loaded
    # machine the sign-in's requests take a while, and the lifetime runs from the second it was stamped.
    with client.session_transaction() as sess:
        signed_in_at = sess[SIGNED_IN_AT]
    checked = 0
    while checked == 0 or time.time() < signed_in_at + 2:
        assert client.get("/console/").status_code == 200, "active within the lifetime"
        checked += 1
        time.sleep(0.3)
    time.sleep(max(0.0, signed_in_at + 3.3 - time.time()))
    resp = client.get("/console/")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login")
    assert "Your session has expired" in text(client.get("/login"))
    assert sign_in(app, "admin@msp.test").get("/console/").status_code == 200


def test_a_cookie_signed_in_thirteen_hours_ago_is_refused(web_app, world, cfg):
    """A session kept alive by requests for longer than MAILWARD_SESSION_MAX_AGE (12 hours by default) is refused,
    although its idle time (the cookie's own signed timestamp) is fresh."""
    assert cfg.session_max_age == 12 * 3600
    client = sign_in(web_app, "admin@acme.test")
    with client.session_transaction() as sess:
        sess[SIGNED_IN_AT] = int(time.time()) - 13 * 3600
    assert client.get("/portal/").status_code == 302
    fresh = sign_in(web_app, "admin@acme.test")
    with fresh.session_transaction() as sess:
        sess[SIGNED_IN_AT] = int(time.time()) - 11 * 3600
    assert fresh.get("/portal/").status_code == 200


def test_a_session_that_does_not_say_when_it_signed_in_is_refused(web_app, world):
    """A cookie from before the absolute lifetime existed has no sign-in time: it cannot be bounded, so it ends."""
    client = sign_in(web_app, "admin@acme.test")
    with client.session_transaction() as sess:
        del sess[SIGNED_IN_AT]
    assert client.get("/portal/").status_code == 302


def test_deactivation_ends_sessions_and_reactivation_does_not_revive_them(web_app, world, cfg):
    """A deactivated user's cookie stays refused after the account is active again: the version moved on."""
    client = sign_in(web_app, "auditor@acme.test")
    assert client.get("/portal/").status_code == 200

    def toggle(active: bool) -> None:
        def change(s: Any) -> None:
            user = s.scalars(select(User).where(User.email == "auditor@acme.test")).one()
            users.set_active(user, active, actor_id=None)

        read(cfg, change)

    toggle(False)
    toggle(True)
    assert client.get("/portal/").status_code == 302
    assert sign_in(web_app, "auditor@acme.test").get("/portal/").status_code == 200


def test_a_digest_link_session_ends_at_logout_too(web_app, world, cfg):
    """A session opened by a digest's magic link is a session like the others: its copied cookie dies at logout."""
    uid = read(cfg, lambda s: s.scalar(select(User.id).where(User.email == "user@acme.test")))
    token = make_login_token(cfg.resolve_secret_key(), tenant_id=world["acme"].id, user_id=uid,
                             email="user@acme.test")
    client = web_app.test_client()
    page = client.get(f"/q/login/{token}")
    assert client.post(f"/q/login/{token}", data={"csrf_token": csrf_token(text(page))}).status_code == 302
    assert client.get("/q/").status_code == 200
    stolen = _cookie(client)
    post_form(client, "/q/", "/logout", {})
    assert _browser_with(web_app, stolen).get("/q/").status_code == 302


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_session_max_age_is_validated_at_start(value):
    with pytest.raises(ConfigError, match="MAILWARD_SESSION_MAX_AGE"):
        Config.from_env({"MAILWARD_SESSION_MAX_AGE": value})
    assert Config.from_env({"MAILWARD_SESSION_MAX_AGE": "3600"}).session_max_age == 3600

