"""The quarantine in a real browser: Chromium (Playwright) against the real web process, with mail quarantined by the
real ingress over SMTP and released to the real sink through the worker.

A hostile HTML mail tries every way we know to run script or load something (script tags, event handlers,
javascript: URLs, SVG, CSS url()/expression()/@import, remote images, link, meta refresh, base, iframes, objects,
forms); each payload points at a loopback HTTP server that must see no request at all, no dialog may open and a
global the payloads set must stay unset. Screenshots of the main pages go to ``test-output/screenshots/``.

Chromium is Debian's (``/usr/bin/chromium``), never a downloaded one. In CI (``CI=true``) a browser that cannot
start fails the run; elsewhere the tests skip with the reason.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from tenants.models import Delivery, Message
from tenants.scope import msp_scope
from tenants.tokens import action_url, login_url, make_action_token, make_login_token
from tests.fixtures.browser import shot
from tests.integration.test_verdicts import BROKEN, send, set_policy
from tests.support.servers import free_port, run_cli, wait_for

USER = "user@acme.test"
PASSWORD = "correct horse battery"


# --- servers --------------------------------------------------------------------------------------------------------

class Tripwire:
    """A loopback HTTP server that hostile payloads point at: every request it gets is a failure of the preview."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"x")

            do_POST = do_GET  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tripwire() -> Iterator[Tripwire]:
    t = Tripwire()
    yield t
    t.stop()


# --- mail -------------------------------------------------------------------------------------------------------

def hostile_mail(origin: str) -> bytes:
    """An HTML-only mail whose multipart is left open (MIME_DEFECT: quarantined), full of payloads aimed at
    ``origin``."""
    o = origin
    html = [
        "<html><head>",
        f'<meta http-equiv="refresh" content="0;url={o}/meta-refresh">',
        f'<link rel="stylesheet" href="{o}/link.css"><link rel="prefetch" href="{o}/prefetch">',
        f"<style>@import url({o}/import.css); body{{background:url({o}/style-bg.png)}} "
        "p{width:expression(alert('expression'))}</style>",
        f'<base href="{o}/base/">',
        "<script>window.top.pwned = 'script'; alert('script')</script>",
        f'<script src="{o}/script.js"></script>',
        "</head>",
        f'<body onload="window.top.pwned=\'body\';alert(\'body\')" background="{o}/body-bg.png">',
        f'<p style="background-image:url({o}/inline.png)">Dear customer, your <b>invoice</b> is ready.</p>',
        f'<img src="{o}/pixel.gif" onerror="window.top.pwned=\'img\';alert(\'img\')" alt="logo">',
        "<img src=x onerror=\"window.top.pwned='img2';alert('img2')\">",
        f'<img srcset="{o}/srcset.png 1x">',
        f"<svg onload=\"window.top.pwned='svg';alert('svg')\"><image href=\"{o}/svg.png\"/></svg>",
        f'<iframe src="{o}/iframe.html"></iframe>',
        "<iframe srcdoc=\"<script>top.pwned='srcdoc';alert('srcdoc')</script>\"></iframe>",
        f'<object data="{o}/object.swf"></object><embed src="{o}/embed.swf">',
        f'<video poster="{o}/poster.png" src="{o}/video.mp4" autoplay></video><audio src="{o}/a.mp3" autoplay></audio>',
        f'<form action="{o}/form"><input type="image" src="{o}/input.png"><button>Go</button></form>',
        "<a id=\"js\" href=\"javascript:window.top.pwned='js';alert('js')\">Click for your refund</a>",
        f'<a href="{o}/phish">Verify your account</a>',
        f'<table background="{o}/table-bg.png"><tr><td>cell</td></tr></table>',
        "<details open ontoggle=\"window.top.pwned='toggle';alert('toggle')\">details</details>",
        f'<div style="behavior:url({o}/x.htc)">ie</div>',
        "</body></html>",
    ]
    head = ("From: \"<img src=x onerror=alert('from')>\" <billing@sender.example>\r\nTo: user@acme.test\r\n"
            "Subject: <script>alert('subject')</script> Your invoice\r\nMessage-ID: <hostile-1@sender.example>\r\n"
            "Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/html; charset=utf-8\r\n\r\n")
    return (head + "\r\n".join(html) + "\r\n").encode()


def broken_mail(subject: str) -> bytes:
    return BROKEN.replace(b"Subject: Broken report", f"Subject: {subject}".encode()).replace(
        b"<broken-1@", f"<{abs(hash(subject))}@".encode())


def held_id(session: Any, subject_part: str) -> str:
    def find() -> str | None:
        session.rollback()
        with msp_scope():
            return session.scalar(select(Message.id).where(Message.subject.contains(subject_part),
                                                           Message.quarantine_kind.is_not(None)))

    return str(wait_for(find, 15, what=f"held mail {subject_part!r}"))


def statuses(session: Any, message_id: str) -> dict[str, str]:
    session.rollback()
    with msp_scope():
        return dict(session.execute(select(Delivery.rcpt, Delivery.status)
                                    .where(Delivery.message_id == message_id)).all())


def run_worker(env: dict[str, str]) -> None:
    result = run_cli(["worker", "--burst"], env)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def quarantining(env: dict[str, str], acme: Any, factory: Any) -> Any:
    """Acme quarantines malformed mail (and rejects nothing); its user and admin exist."""
    set_policy(env, "scores.MIME_DEFECT=9", "reject_threshold=1000")
    return {"user": factory.user(USER, "user", acme), "admin": factory.user("admin@acme.test", "tenant_admin", acme)}


# --- the tests ------------------------------------------------------------------------------------------------------

def test_digest_login_preview_of_hostile_mail_and_release_to_the_sink(env, cfg, ingress, sink, web, session,
                                                                      quarantining, tripwire, page_of):
    """Attack: a quarantined mail's HTML tries to run script and load from the network inside the preview."""
    send(env, broken_mail("Quarterly report"), rcpts=(USER,))
    send(env, hostile_mail(tripwire.origin), rcpts=(USER,))
    report, hostile = held_id(session, "Quarterly report"), held_id(session, "Your invoice")
    user = quarantining["user"]
    token = make_login_token(cfg.resolve_secret_key(), tenant_id=user.tenant_id, user_id=user.id, email=USER)

    page = page_of()
    page.goto(login_url(cfg, token))
    assert page.get_by_text(f"Sign in as {USER}").is_visible()
    shot(page, "01-digest-login-link")
    page.get_by_role("button", name="Sign in and open my quarantine").click()
    page.wait_for_url(web + "/q/")
    assert page.get_by_role("link", name="Quarterly report").is_visible()
    assert page.get_by_role("link", name="<script>alert('subject')</script> Your invoice").is_visible()
    shot(page, "02-user-quarantine")

    page.get_by_role("link", name="<script>alert('subject')</script> Your invoice").click()
    page.wait_for_url(web + f"/q/{hostile}")
    frame_element = page.locator("iframe.preview")
    assert frame_element.get_attribute("sandbox") == ""
    frame = page.frame_locator("iframe.preview")
    frame.get_by_text("Dear customer").wait_for()
    assert frame.locator("script, img, svg, iframe, object, embed, form, link, meta[http-equiv], base, a, video, "
                         "audio, input, button").count() == 0
    frame.get_by_text("Click for your refund").click()  # an inert span now: nothing runs, nothing opens
    frame.get_by_text("Verify your account").click()
    page.wait_for_timeout(1500)  # time for anything that would load or fire late
    shot(page, "03-user-preview-hostile")
    assert page.dialogs == [], "a payload opened a dialog"
    assert page.evaluate("() => window.pwned") is None, "a payload ran script in the page"
    assert tripwire.hits == [], f"the preview loaded {tripwire.hits}"
    assert not [u for u in page.requests if not u.startswith(web)], "only our own site may be asked for anything"
    assert page.url == web + f"/q/{hostile}"

    page.goto(web + f"/q/{report}")
    assert page.locator("pre.mailtext").inner_text().strip() == "hello"
    shot(page, "04-user-message")
    page.get_by_role("button", name="Release to my mailbox").click()
    page.get_by_text(f"Message released to {USER}.").wait_for()
    shot(page, "05-user-released")
    run_worker(env)
    (got,) = sink.wait_count(1)
    assert got.rcpts == [USER] and b"Subject: Quarterly report" in got.data
    assert statuses(session, report) == {USER: "delivered"}
    assert statuses(session, hostile) == {USER: "quarantined"}


def test_digest_action_link_releases_once_then_says_already_done_and_refuses_a_tampered_link(
        env, cfg, ingress, sink, web, session, quarantining, page_of):
    send(env, broken_mail("Weekly newsletter"), rcpts=(USER,))
    mid = held_id(session, "Weekly newsletter")
    user = quarantining["user"]
    token = make_action_token(cfg.resolve_secret_key(), tenant_id=user.tenant_id, message_id=mid, rcpts=[USER],
                              action="release", user_id=user.id)
    first, second = page_of(), page_of()  # the digest link opened twice (two tabs, or a scanner and the user)
    first.goto(action_url(cfg, token))
    second.goto(action_url(cfg, token))
    assert first.get_by_role("heading", name="Release this message to your mailbox?").is_visible()
    assert first.get_by_text("Weekly newsletter").is_visible()
    shot(first, "06-action-link-confirm")
    assert statuses(session, mid) == {USER: "quarantined"}, "opening the link must not act"

    first.get_by_role("button", name="Release this message to your mailbox").click()
    first.get_by_text(f"Done: released to {USER}.").wait_for()
    shot(first, "07-action-link-done")
    run_worker(env)
    (got,) = sink.wait_count(1)
    assert got.rcpts == [USER] and b"Subject: Weekly newsletter" in got.data

    second.get_by_role("button", name="Release this message to your mailbox").click()
    second.get_by_text(f"Already done: released to {USER}.").wait_for()
    shot(second, "08-action-link-already-done")
    run_worker(env)
    assert len(sink.messages) == 1, "a second click delivers nothing more"

    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    page = page_of()
    resp = page.goto(action_url(cfg, tampered))
    assert resp is not None and resp.status == 400
    assert page.get_by_role("heading", name="This link is not valid").is_visible()
    shot(page, "09-action-link-tampered")


def test_admin_portal_quarantine_pages(env, cfg, ingress, sink, web, session, quarantining, tripwire, page_of):
    """The tenant admin's list and detail in the browser: findings with their sums, the preview frame, a virus
    release behind its confirmation (the virus here is the hostile HTML mail, marked as one for the test)."""
    from sqlalchemy import update

    send(env, broken_mail("Quarterly report"), rcpts=(USER, "carol@acme.test"))
    send(env, hostile_mail(tripwire.origin), rcpts=("carol@acme.test",))
    report, hostile = held_id(session, "Quarterly report"), held_id(session, "Your invoice")
    with msp_scope():
        session.execute(update(Message).where(Message.id == hostile).values(quarantine_kind="virus"))
        session.commit()

    page = page_of()
    page.goto(web + "/login")
    page.get_by_label("E-mail").fill("admin@acme.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(web + "/portal/")
    page.get_by_role("link", name="Quarantine", exact=True).click()
    page.wait_for_url(web + "/portal/quarantine/")
    assert page.locator("table.held tbody tr").count() == 2
    shot(page, "10-admin-quarantine")

    page.get_by_role("link", name="Quarterly report").click()
    page.locator("#findings").get_by_text("MIME_DEFECT", exact=True).wait_for()
    assert "Against it: +9" in page.locator(".sums").inner_text()
    shot(page, "11-admin-message")

    page.goto(web + f"/portal/quarantine/{hostile}")
    page.frame_locator("iframe.preview").get_by_text("Dear customer").wait_for()
    page.get_by_role("button", name="Release", exact=True).click()
    page.get_by_role("heading", name="Release a virus?").wait_for()
    shot(page, "12-admin-virus-confirm")
    assert statuses(session, hostile) == {"carol@acme.test": "quarantined"}
    page.get_by_role("button", name="Yes, release the virus").click()
    page.get_by_text("Message released to carol@acme.test.").wait_for()
    assert statuses(session, hostile) == {"carol@acme.test": "queued"}
    assert page.dialogs == [] and tripwire.hits == []
    assert statuses(session, report)[USER] == "quarantined"

    # Branding: the colour reaches the users' pages through the one style block the page's policy allows by hash.
    page.locator("details.menu summary", has_text="Administration").click()  # the menu of admin pages
    page.get_by_role("link", name="Branding").click()
    page.get_by_label("Name shown to your users").fill("Acme Secure Mail")
    page.get_by_label("Accent colour (#rrggbb)").fill("#aa3300")
    page.get_by_role("button", name="Save branding").click()
    page.get_by_text("Branding saved").wait_for()
    shot(page, "13-admin-branding")
    page.csp_violations.clear()
    page.get_by_role("link", name="My quarantine").click()
    page.wait_for_url(web + "/q/")
    assert page.locator(".topbar .brand").inner_text().strip() == "Acme Secure Mail"
    assert page.locator(".topbar").evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(170, 51, 0)"
    assert page.csp_violations == [], "the brand's style block must pass the page's CSP"
    shot(page, "14-branded-own-quarantine")
