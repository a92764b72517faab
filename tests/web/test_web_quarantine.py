"""The quarantine on the web: the tenant portal's (admins act, auditors read), the end user's (/q, own addresses
only), the pages digest links open, the lists and the branding. Flask's test client against a real migrated database
and real Redis, CSRF on: every POST carries the token of the page that shows its form, as a browser sends it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, update

from app.csp import PREVIEW_CSP
from tenants.addresses import add_user_address
from tenants.models import Delivery, Event, ListEntry, MessageView, Tenant, User
from tenants.platform.redisconn import redis_client
from tenants.scope import tenant_scope
from tenants.tokens import make_action_token, make_login_token
from tests.support.held import hold, raw_mail
from tests.support.web import csrf_token, post_form, read, sign_in, text

ADMIN, AUDITOR, USER = "admin@acme.test", "auditor@acme.test", "user@acme.test"


# --- helpers --------------------------------------------------------------------------------------------------------

class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.append(dict(attrs))


def next_link(html: str) -> str | None:
    parser = _Links()
    parser.feed(html)
    return next((a["href"] for a in parser.links if a.get("rel") == "next"), None)


def statuses(cfg, message_id: str) -> dict[str, str]:
    rows = read(cfg, lambda s: s.execute(select(Delivery.rcpt, Delivery.status)
                                         .where(Delivery.message_id == message_id)).all())
    return dict(rows)


#: A CSRF token field's value. Flask-WTF signs the session's token anew for every request, with a timestamp of one
#: second's resolution: two renderings of one page differ there whenever a second boundary falls between them.
_CSRF_VALUE = re.compile(r'(<input[^>]*name="[^"]*csrf_token"[^>]*value=")[^"]*"')


def without_csrf(resp: Any) -> str:
    """A response's HTML with its CSRF token values blanked: what the page tells, comparable across requests."""
    return _CSRF_VALUE.sub(r'\1"', text(resp))


def user_id(cfg, email: str) -> int:
    return read(cfg, lambda s: s.scalar(select(User.id).where(User.email == email)))


def act(client, page: str, action: str, **extra: str) -> Any:
    """Press an action button on a message page (a POST to ``page + '/act'`` with the page's CSRF token)."""
    return post_form(client, page, page + "/act", {"action": action, **extra})


@pytest.fixture
def mail(cfg, world, session):
    """Held mail of Acme, newest last: spam for the user (one via the alias sales@acme2.test, shared with carol),
    spam for carol only, a virus for the user, an attachment hold; and spam of Beta."""
    acme, beta = world["acme"].id, world["beta"].id
    with tenant_scope(acme):
        add_user_address(session, user_id(cfg, USER), "sales@acme2.test")
        session.commit()
    base = datetime.now(UTC) - timedelta(days=3)
    return {
        "mine": hold(cfg, acme, rcpts=(USER,), sender="a@junk.example", subject="Cheap pills", score=9,
                     received_at=base,
                     findings=[("BAYES_99", 3.5, "p=0.99"), ("DKIM_VALID", -0.5, "good signature"),
                               ("MIME_DEFECT", 6.0, "broken boundary")]),
        "alias": hold(cfg, acme, rcpts=("Sales@acme2.test", "carol@acme.test"), sender="b@junk.example",
                      subject="Lottery WIN", score=12, received_at=base + timedelta(days=1)),
        "carol": hold(cfg, acme, rcpts=("carol@acme.test",), sender="c@spam.example", subject="For carol only",
                      score=8.5, received_at=base + timedelta(days=1, hours=1)),
        "virus": hold(cfg, acme, kind="virus", rcpts=(USER,), sender="d@bad.example", subject="Invoice attached",
                      score=100, received_at=base + timedelta(days=2),
                      findings=[("CLAM_VIRUS", 100.0, "Eicar-Test-Signature")]),
        "attach": hold(cfg, acme, kind="attachment", rcpts=("bob@acme.test",), sender="e@bad.example",
                       subject="Document", score=3, received_at=base + timedelta(days=2, hours=1)),
        "beta": hold(cfg, beta, rcpts=("dave@beta.test",), sender="f@junk.example", subject="Beta secret",
                     received_at=base + timedelta(days=2, hours=2)),
    }


# --- the portal's list: filters and paging --------------------------------------------------------------------------

def test_admin_list_shows_the_tenants_held_mail_and_filters_it(web_app, mail):
    client = sign_in(web_app, ADMIN)

    def subjects(query: str = "") -> set[str]:
        resp = client.get("/portal/quarantine/" + query)
        assert resp.status_code == 200, text(resp)
        return {s for s in ("Cheap pills", "Lottery WIN", "For carol only", "Invoice attached", "Document",
                            "Beta secret") if s in text(resp)}

    assert subjects() == {"Cheap pills", "Lottery WIN", "For carol only", "Invoice attached", "Document"}
    assert subjects("?kind=virus") == {"Invoice attached"}
    assert subjects("?kind=attachment") == {"Document"}
    assert subjects("?rcpt=carol@acme.test") == {"Lottery WIN", "For carol only"}
    assert subjects("?sender=bad.example") == {"Invoice attached", "Document"}
    assert subjects("?subject=lottery") == {"Lottery WIN"}
    assert subjects("?min_score=9&max_score=50") == {"Cheap pills", "Lottery WIN"}
    day = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()
    assert subjects(f"?since={day}&until={day}") == {"Lottery WIN", "For carol only"}
    assert subjects("?subject=100%25_") == set()  # LIKE wildcards are literal
    bad = client.get("/portal/quarantine/?min_score=lots&since=yesterday")
    assert bad.status_code == 422 and "Cheap pills" not in text(bad)
    assert client.get("/portal/quarantine/?after=garbage").status_code == 400


def test_admin_list_pages_by_cursor_following_the_next_link(web_app, cfg, world):
    acme = world["acme"].id
    start = datetime.now(UTC) - timedelta(hours=10)
    subjects = [f"Paged mail {n:02d}" for n in range(7)]
    for n, subject in enumerate(subjects):
        hold(cfg, acme, subject=subject, received_at=start + timedelta(minutes=n))
    client = sign_in(web_app, AUDITOR)
    seen: list[list[str]] = []
    link: str | None = "/portal/quarantine/?limit=3&subject=Paged"
    while link:
        assert "offset" not in link.lower()
        page = text(client.get(link))
        seen.append([s for s in reversed(subjects) if s in page])
        link = next_link(page)
        if link:
            assert "after=" in link and "subject=Paged" in link and "limit=3" in link
    assert [len(p) for p in seen] == [3, 3, 1]
    assert [s for p in seen for s in p] == list(reversed(subjects))  # newest first, none twice, none lost


# --- the portal's detail page ---------------------------------------------------------------------------------------

def test_detail_shows_envelope_findings_with_sums_and_who_has_seen_it(web_app, cfg, mail):
    admin = sign_in(web_app, ADMIN)
    page = text(admin.get(f"/portal/quarantine/{mail['mine']}"))
    assert "Cheap pills" in page and "a@junk.example" in page and "203.0.113.9" in page
    for symbol in ("MIME_DEFECT", "BAYES_99", "DKIM_VALID", "broken boundary"):
        assert symbol in page
    sums = re.search(r'class="sums">(.*?)</p>', page, re.S)
    assert sums is not None
    assert re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", sums.group(1))).strip() == \
        "Against it: +9.5 For it: -0.5 Total score: +9"
    assert 'value="release"' in page and "Download .eml" in page

    auditor = sign_in(web_app, AUDITOR)
    page = text(auditor.get(f"/portal/quarantine/{mail['mine']}"))
    assert "Read only" in page and 'value="release"' not in page and "Download .eml" not in page
    seen = page[page.index('id="seen-by"'):]
    assert ADMIN in seen and AUDITOR in seen
    views = read(cfg, lambda s: s.scalars(select(MessageView.user_email).where(MessageView.message_id == mail["mine"]))
                 .all())
    assert sorted(views) == [ADMIN, AUDITOR]


def _html_mail(body_html: str, to: str = USER) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "x@junk.example", to, "Hostile HTML"
    msg.set_content(body_html, subtype="html")
    return msg.as_bytes()


def test_preview_frame_is_sanitised_and_served_under_its_own_strict_csp(web_app, cfg, world):
    """Attack: script, handlers and remote content in a held mail's HTML. The frame's document keeps none of it and
    its policy would stop it anyway: nothing loads, nothing runs, and the frame is sandboxed even opened directly."""
    payload = ('<p onclick="parent.pwned=1">Pay <a href="javascript:alert(1)">now</a> or '
               '<a href="https://evil.example/pay">here</a></p><script>alert(1)</script>'
               '<img src="https://tracker.example/p.gif" onerror="alert(2)"><svg onload="alert(3)"></svg>'
               '<iframe src="https://evil.example/"></iframe><link rel=stylesheet href="https://evil.example/x.css">')
    mid = hold(cfg, world["acme"].id, rcpts=(USER,), data=_html_mail(payload))
    for email, page, frame in ((ADMIN, f"/portal/quarantine/{mid}", f"/portal/quarantine/{mid}/preview"),
                               (USER, f"/q/{mid}", f"/q/{mid}/preview")):
        client = sign_in(web_app, email)
        html = text(client.get(page))
        assert f'<iframe class="preview" sandbox="" src="{frame}"' in html
        resp = client.get(frame)
        assert resp.status_code == 200 and resp.mimetype == "text/html"
        assert resp.headers["Content-Security-Policy"] == PREVIEW_CSP
        assert resp.headers["X-Frame-Options"] == "SAMEORIGIN"
        csp = {d.split()[0]: d.split()[1:] for d in PREVIEW_CSP.split("; ")}
        assert csp["default-src"] == ["'none'"] and csp["img-src"] == ["'none'"] and "sandbox" in csp
        assert all(s.startswith("'sha256-") for s in csp["style-src"])
        body = text(resp)
        for bad in ("<script", "onclick", "onerror", "onload", "javascript:", "<img", "<svg", "<iframe", "<link",
                    "href="):
            assert bad not in body, bad
        assert 'title="https://evil.example/pay"' in body and "mw-img-blocked" in body
        style = re.search(r"<style>(.*?)</style>", body, re.S).group(1)  # type: ignore[union-attr]
        digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
        assert csp["style-src"] == [f"'sha256-{digest}'"], "the frame's one style block must match its hash"


def test_raw_download_is_for_admins_only_and_recorded(web_app, cfg, mail):
    resp = sign_in(web_app, ADMIN).get(f"/portal/quarantine/{mail['mine']}/raw")
    assert resp.status_code == 200
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{mail["mine"]}.eml"'
    assert resp.mimetype == "application/octet-stream"
    assert b"Subject: Cheap pills" in resp.data
    assert read(cfg, lambda s: s.scalar(select(Event.detail).where(Event.message_id == mail["mine"],
                                                                   Event.kind == "downloaded"))) == \
        f"raw message downloaded by {ADMIN}"
    assert read(cfg, lambda s: s.scalar(select(MessageView.user_email).where(MessageView.message_id == mail["mine"]))) \
        == ADMIN
    for email in (AUDITOR, USER, "admin@msp.test"):
        assert sign_in(web_app, email).get(f"/portal/quarantine/{mail['mine']}/raw").status_code == 404, email
    assert sign_in(web_app, ADMIN).get(f"/portal/quarantine/{mail['beta']}/raw").status_code == 404


# --- the portal's actions -------------------------------------------------------------------------------------------

def test_admin_actions_go_through_forms_with_csrf(web_app, cfg, world, mail):
    client = sign_in(web_app, ADMIN)
    page = f"/portal/quarantine/{mail['mine']}"
    assert client.post(page + "/act", data={"action": "release"}).status_code == 400  # no CSRF token
    assert statuses(cfg, mail["mine"]) == {USER: "quarantined"}

    resp = act(client, page, "release")
    assert resp.status_code == 302 and resp.headers["Location"] == page
    assert statuses(cfg, mail["mine"]) == {USER: "queued"}
    assert f"Message released to {USER}." in text(client.get(page))
    assert "no longer in the quarantine" in text(client.get(act(client, page, "release").headers["Location"]))

    alias = f"/portal/quarantine/{mail['alias']}"
    act(client, alias, "release_to", to="Security@acme.test")
    assert statuses(cfg, mail["alias"]) == {"Sales@acme2.test": "quarantined", "carol@acme.test": "quarantined",
                                            "security@acme.test": "queued"}
    assert "not an e-mail address" in text(client.get(act(client, alias, "release_to", to="nope").headers["Location"]))

    act(client, alias, "block_delete")
    assert statuses(cfg, mail["alias"])["carol@acme.test"] == "discarded"
    carol = f"/portal/quarantine/{mail['carol']}"
    act(client, carol, "allow_release")
    entries = read(cfg, lambda s: s.execute(select(ListEntry.kind, ListEntry.value, ListEntry.user_id)
                                            .where(ListEntry.tenant_id == world["acme"].id)).all())
    assert sorted(entries) == [("allow", "c@spam.example", None), ("block", "b@junk.example", None)]

    before = redis_client(cfg).llen("rq:queue:default")
    resp = act(client, carol, "report_ham")
    assert "Reported as not spam" in text(client.get(resp.headers["Location"]))
    assert redis_client(cfg).llen("rq:queue:default") == before + 1  # the worker trains the tenant's Bayes

    act(client, f"/portal/quarantine/{mail['attach']}", "delete")
    assert statuses(cfg, mail["attach"]) == {"bob@acme.test": "discarded"}


def test_auditor_cannot_act_and_nobody_acts_across_tenants(web_app, cfg, mail):
    auditor = sign_in(web_app, AUDITOR)
    token = csrf_token(text(auditor.get("/portal/quarantine/")))
    assert auditor.post(f"/portal/quarantine/{mail['mine']}/act",
                        data={"action": "release", "csrf_token": token}).status_code == 404
    assert auditor.post("/portal/quarantine/bulk", data={"action": "release", "ids": mail["mine"],
                                                         "csrf_token": token}).status_code == 404
    admin = sign_in(web_app, ADMIN)
    token = csrf_token(text(admin.get("/portal/quarantine/")))
    theirs = admin.get(f"/portal/quarantine/{mail['beta']}")
    missing = admin.get("/portal/quarantine/0000000000NOSUCHMSG")
    assert theirs.status_code == missing.status_code == 404 and without_csrf(theirs) == without_csrf(missing)
    assert admin.get(f"/portal/quarantine/{mail['beta']}/preview").status_code == 404
    assert admin.post(f"/portal/quarantine/{mail['beta']}/act",
                      data={"action": "release", "csrf_token": token}).status_code == 404
    admin.post("/portal/quarantine/bulk", data={"action": "delete", "ids": mail["beta"], "csrf_token": token})
    assert statuses(cfg, mail["mine"]) == {USER: "quarantined"}
    assert statuses(cfg, mail["beta"]) == {"dave@beta.test": "quarantined"}


def test_a_virus_is_released_by_an_admin_only_after_a_confirmation(web_app, cfg, mail):
    client = sign_in(web_app, ADMIN)
    page = f"/portal/quarantine/{mail['virus']}"
    assert 'value="allow_release"' not in text(client.get(page))
    resp = act(client, page, "release")
    assert resp.status_code == 200 and "Release a virus?" in text(resp)
    assert 'name="confirm" value="1"' in text(resp)
    assert statuses(cfg, mail["virus"]) == {USER: "quarantined"}, "the first POST only asks"

    resp = act(client, page, "allow_release", confirm="1")
    assert "not put on the allow list" in text(client.get(resp.headers["Location"]))

    resp = post_form(client, page, "/portal/quarantine/bulk", {"action": "release", "ids": mail["virus"]})
    assert "one at a time" in text(client.get(resp.headers["Location"]))
    assert statuses(cfg, mail["virus"]) == {USER: "quarantined"}, "bulk never releases a virus"

    confirm = act(client, page, "release")
    token = csrf_token(text(confirm))
    resp = client.post(page + "/act", data={"action": "release", "confirm": "1", "csrf_token": token})
    assert resp.status_code == 302
    assert statuses(cfg, mail["virus"]) == {USER: "queued"}

    user = sign_in(web_app, USER)  # the virus was held for the user, who still never sees it
    assert user.get(f"/q/{mail['virus']}").status_code == 404
    token = csrf_token(text(user.get("/q/")))
    assert user.post(f"/q/{mail['virus']}/act", data={"action": "release", "csrf_token": token}).status_code == 404


def test_bulk_release_and_delete_keep_the_filters(web_app, cfg, mail):
    client = sign_in(web_app, ADMIN)
    listing = "/portal/quarantine/?kind=spam&sender=junk"
    resp = post_form(client, listing, "/portal/quarantine/bulk",
                     {"action": "release", "ids": [mail["mine"], mail["alias"], "NOSUCHID0000"],  # type: ignore[dict-item]
                      "back": "kind=spam&sender=junk"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/portal/quarantine/?kind=spam&sender=junk"
    page = text(client.get(resp.headers["Location"]))
    assert "Released 2 message(s)." in page and "1 message(s) not released: NOSUCHID0000" in page
    assert statuses(cfg, mail["mine"]) == {USER: "queued"}
    assert set(statuses(cfg, mail["alias"]).values()) == {"queued"}
    resp = post_form(client, listing, "/portal/quarantine/bulk",
                     {"action": "delete", "ids": mail["carol"], "back": "https://evil.example/\r\nX-Evil: 1"})
    assert urlsplit(resp.headers["Location"]).netloc == "" and resp.headers["Location"].startswith(
        "/portal/quarantine/")
    assert statuses(cfg, mail["carol"]) == {"carol@acme.test": "discarded"}


# --- the end user's quarantine --------------------------------------------------------------------------------------

def test_user_sees_only_spam_held_for_their_own_addresses_and_aliases(web_app, cfg, mail):
    client = sign_in(web_app, USER)
    page = text(client.get("/q/"))
    assert "Cheap pills" in page and "Lottery WIN" in page
    for other in ("For carol only", "Invoice attached", "Document", "Beta secret"):
        assert other not in page
    detail = text(client.get(f"/q/{mail['alias']}"))
    assert "Sales@acme2.test" in detail and "carol@acme.test" not in detail, "only the user's own rows are shown"


def test_user_probing_other_users_and_other_tenants_mail_gets_404(web_app, cfg, mail):
    """Attack: a user guesses message ids of a colleague's and of another tenant's quarantine."""
    client = sign_in(web_app, USER)
    token = csrf_token(text(client.get("/q/")))
    missing = client.get("/q/0000000000NOSUCHMSG")
    for other in (mail["carol"], mail["beta"], mail["attach"]):
        resp = client.get(f"/q/{other}")
        assert resp.status_code == 404 and without_csrf(resp) == without_csrf(missing)
        assert client.get(f"/q/{other}/preview").status_code == 404
        for action in ("release", "delete", "allow_release", "block_delete"):
            assert client.post(f"/q/{other}/act", data={"action": action, "csrf_token": token}).status_code == 404
    for action in ("release", "delete"):
        client.post("/q/bulk", data={"action": action, "ids": [mail["carol"], mail["beta"], mail["attach"]],
                                     "csrf_token": token})
    assert statuses(cfg, mail["carol"]) == {"carol@acme.test": "quarantined"}
    assert statuses(cfg, mail["beta"]) == {"dave@beta.test": "quarantined"}
    assert statuses(cfg, mail["attach"]) == {"bob@acme.test": "quarantined"}
    assert client.get(f"/portal/quarantine/{mail['mine']}").status_code == 404  # the portal is not theirs


def test_user_releases_deletes_and_lists_senders_for_their_own_rows_only(web_app, cfg, mail):
    client = sign_in(web_app, USER)
    resp = act(client, f"/q/{mail['alias']}", "release")
    assert resp.status_code == 302 and resp.headers["Location"] == f"/q/{mail['alias']}"
    assert "Message released to Sales@acme2.test." in text(client.get(resp.headers["Location"]))
    assert statuses(cfg, mail["alias"]) == {"Sales@acme2.test": "queued", "carol@acme.test": "quarantined"}

    act(client, f"/q/{mail['mine']}", "allow_release")
    assert statuses(cfg, mail["mine"]) == {USER: "queued"}
    uid = user_id(cfg, USER)
    entries = read(cfg, lambda s: s.execute(select(ListEntry.kind, ListEntry.value).where(ListEntry.user_id == uid))
                   .all())
    assert entries == [("allow", "a@junk.example")]
    assert "a@junk.example" in text(client.get("/q/lists"))


def test_user_bulk_acts_on_own_mail(web_app, cfg, mail):
    client = sign_in(web_app, USER)
    resp = post_form(client, "/q/", "/q/bulk", {"action": "delete", "ids": [mail["mine"], mail["carol"]]})  # type: ignore[dict-item]
    page = text(client.get(resp.headers["Location"]))
    assert "Deleted 1 message(s)." in page and "not deleted" in page
    assert statuses(cfg, mail["mine"]) == {USER: "discarded"}
    assert statuses(cfg, mail["carol"]) == {"carol@acme.test": "quarantined"}


def test_user_manages_own_list_and_cannot_touch_anyone_elses(web_app, cfg, world, mail):
    client = sign_in(web_app, USER)
    resp = post_form(client, "/q/lists", "/q/lists", {"kind": "block", "value": "@Pushy.example", "comment": "ads"})
    assert resp.status_code == 302
    page = text(client.get("/q/lists"))
    assert "pushy.example" in page and "ads" in page
    resp = post_form(client, "/q/lists", "/q/lists", {"kind": "allow", "value": "not a value!"})
    assert resp.status_code == 422 and "not a domain name" in text(resp)

    uid = user_id(cfg, USER)
    mine = read(cfg, lambda s: s.scalar(select(ListEntry.id).where(ListEntry.user_id == uid)))
    tenant_entry = _entry(cfg, world["acme"].id, None, "tenant.example")
    admins_entry = _entry(cfg, world["acme"].id, user_id(cfg, ADMIN), "admins.example")
    token = csrf_token(page)
    for other in (tenant_entry, admins_entry, 999999):
        assert client.post(f"/q/lists/{other}/delete", data={"csrf_token": token}).status_code == 404
    assert client.post(f"/q/lists/{mine}/delete", data={"csrf_token": token}).status_code == 302
    remaining = read(cfg, lambda s: s.scalars(select(ListEntry.value)).all())
    assert sorted(remaining) == ["admins.example", "tenant.example"]


def _entry(cfg, tenant_id: int, owner: int | None, value: str) -> int:
    from tenants.lists import add_entry
    from tenants.platform.db import session_scope

    with tenant_scope(tenant_id), session_scope(cfg) as s:
        return add_entry(s, kind="block", value=value, tenant_id=None if owner else tenant_id, user_id=owner).id


# --- the portal's lists and branding ----------------------------------------------------------------------------------

def test_tenant_lists_are_shown_added_and_removed_by_the_admin_only(web_app, cfg, world):
    acme, beta = world["acme"].id, world["beta"].id
    admin = sign_in(web_app, ADMIN)
    resp = post_form(admin, "/portal/lists", "/portal/lists",
                     {"kind": "allow", "value": "partner.example", "comment": "our supplier"})
    assert resp.status_code == 302
    assert "partner.example" in text(admin.get("/portal/lists"))
    resp = post_form(admin, "/portal/lists", "/portal/lists", {"kind": "allow", "value": "0.0.0.0/4"})
    assert resp.status_code == 422 and "too broad" in text(resp)

    auditor = sign_in(web_app, AUDITOR)
    page = text(auditor.get("/portal/lists"))
    assert "partner.example" in page and "Add an entry" not in page and "Remove" not in page
    token = csrf_token(page)
    assert auditor.post("/portal/lists", data={"kind": "block", "value": "x.example",
                                               "csrf_token": token}).status_code == 404

    entry = read(cfg, lambda s: s.scalar(select(ListEntry.id).where(ListEntry.value == "partner.example")))
    users_entry = _entry(cfg, acme, user_id(cfg, USER), "users-own.example")
    betas_entry = _entry(cfg, beta, None, "beta-only.example")
    assert "users-own.example" not in text(admin.get("/portal/lists"))
    token = csrf_token(text(admin.get("/portal/lists")))
    assert auditor.post(f"/portal/lists/{entry}/delete", data={"csrf_token": token}).status_code in (400, 404)
    for other in (users_entry, betas_entry):
        assert admin.post(f"/portal/lists/{other}/delete", data={"csrf_token": token}).status_code == 404
    assert admin.post(f"/portal/lists/{entry}/delete", data={"csrf_token": token}).status_code == 302
    assert sorted(read(cfg, lambda s: s.scalars(select(ListEntry.value)).all())) == ["beta-only.example",
                                                                                     "users-own.example"]


def test_branding_is_validated_and_shown_on_the_users_pages_only(web_app, cfg, world, mail):
    admin = sign_in(web_app, ADMIN)
    for color, logo, error in (("red", "", "write it as #rrggbb"),
                               ("#aa3300", "http://cdn.acme.test/logo.png", "use an https:// address"),
                               ("#aa3300", 'https://cdn.acme.test/"onerror=x', "use an https:// address")):
        resp = post_form(admin, "/portal/branding", "/portal/branding",
                         {"name": "Acme Mail", "color": color, "logo_url": logo})
        assert resp.status_code == 422 and error in text(resp)
    resp = post_form(admin, "/portal/branding", "/portal/branding",
                     {"name": "  Acme <b>Mail</b> ", "color": "#AA3300", "logo_url": "https://cdn.acme.test/logo.png"})
    assert resp.status_code == 302
    tenant = read(cfg, lambda s: s.get(Tenant, world["acme"].id))
    assert (tenant.brand_name, tenant.brand_color, tenant.brand_logo_url) == \
        ("Acme <b>Mail</b>", "#aa3300", "https://cdn.acme.test/logo.png")

    resp = sign_in(web_app, USER).get("/q/")
    page = text(resp)
    assert "Acme &lt;b&gt;Mail&lt;/b&gt;" in page and "<b>Mail" not in page
    css = ":root{--brand:#aa3300;--brand-ink:#ffffff}"
    assert f"<style>{css}</style>" in page
    assert '<img class="logo" src="https://cdn.acme.test/logo.png"' in page
    csp = resp.headers["Content-Security-Policy"]
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    assert f"style-src 'self' 'sha256-{digest}'" in csp
    assert "img-src 'self' data: https://cdn.acme.test;" in csp
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp

    portal = admin.get("/portal/quarantine/")
    assert "sha256" not in portal.headers["Content-Security-Policy"] and "<style>" not in text(portal)
    assert sign_in(web_app, AUDITOR).get("/portal/branding").status_code == 404

    # A value stored by other means (the CLI, an older version) is validated again before it is shown.
    def corrupt(s: Any) -> None:
        s.execute(update(Tenant).where(Tenant.id == world["acme"].id)
                  .values(brand_color="red;}p{", brand_logo_url="javascript:alert(1)"))  # 7 chars: the column's size

    read(cfg, corrupt)
    resp = sign_in(web_app, USER).get("/q/")
    assert "red;" not in text(resp) and "javascript:" not in text(resp) and "--brand:#1f6feb" in text(resp)
    assert "img-src 'self' data:;" in resp.headers["Content-Security-Policy"]


# --- digest links: magic sign-in ------------------------------------------------------------------------------------

def _login_token(cfg, world, email: str = USER, **kwargs: Any) -> str:
    return make_login_token(cfg.resolve_secret_key(), tenant_id=world["acme"].id, user_id=user_id(cfg, email),
                            email=email, **kwargs)


def test_magic_link_signs_in_once_with_a_post_never_on_get(web_app, cfg, world, mail):
    token = _login_token(cfg, world)
    client = web_app.test_client()
    page = client.get(f"/q/login/{token}")
    assert page.status_code == 200 and f"Sign in as <strong>{USER}</strong>" in text(page)
    assert client.get(f"/q/login/{token}").status_code == 200, "a GET (a link scanner) spends nothing"
    assert client.get("/q/").status_code == 302
    resp = client.post(f"/q/login/{token}", data={"csrf_token": csrf_token(text(page))})
    assert resp.status_code == 302 and resp.headers["Location"] == "/q/"
    assert "Cheap pills" in text(client.get("/q/"))
    assert read(cfg, lambda s: s.scalar(select(User.last_login_at).where(User.email == USER))) is not None
    assert client.get(f"/q/login/{token}").headers["Location"] == "/q/"  # already signed in as that user

    other = web_app.test_client()
    used = other.get(f"/q/login/{token}")
    assert used.status_code == 410 and "already used" in text(used)
    resp = other.post(f"/q/login/{token}", data={"csrf_token": csrf_token(text(other.get("/login")))})
    assert resp.status_code == 410 and other.get("/q/").status_code == 302


def test_magic_link_refuses_tampered_expired_and_wrong_role_tokens(web_app, cfg, world):
    client = web_app.test_client()
    token = _login_token(cfg, world)
    payload, rest = token.split(".", 1)
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["u"], data["e"] = user_id(cfg, ADMIN), ADMIN
    forged = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")
    for bad in (forged + "." + rest, token[:-3], "garbage"):
        resp = client.get(f"/q/login/{bad}")
        assert resp.status_code == 400 and "This link is not valid" in text(resp), bad
        assert "Traceback" not in text(resp)
    expired = _login_token(cfg, world, issued_at=time.time() - 8 * 86400)
    resp = client.get(f"/q/login/{expired}")
    assert resp.status_code == 410 and "This link has expired" in text(resp)
    auditor = _login_token(cfg, world, AUDITOR)
    page = client.get(f"/q/login/{auditor}")
    resp = client.post(f"/q/login/{auditor}", data={"csrf_token": csrf_token(text(page))})
    assert resp.status_code == 400 and client.get("/portal/").status_code == 302
    resp = client.post(f"/q/login/{_login_token(cfg, world)}", data={})
    assert resp.status_code == 400 and "CSRF" in text(resp), "login CSRF: the POST needs the page's token"


def test_a_magic_link_session_reaches_only_the_own_quarantine(web_app, cfg, world, mail):
    """A link in a mail proves access to the mailbox, not the password: an admin's digest link must not open the
    portal. The password sign-in still works from there."""
    hold(cfg, world["acme"].id, rcpts=(ADMIN,), subject="Admin's own spam")
    client = web_app.test_client()
    token = _login_token(cfg, world, ADMIN)
    client.post(f"/q/login/{token}", data={"csrf_token": csrf_token(text(client.get(f"/q/login/{token}")))})
    assert "Admin&#39;s own spam" in text(client.get("/q/"))
    for page in ("/portal/", "/portal/quarantine/", f"/portal/quarantine/{mail['mine']}/raw", "/portal/branding"):
        resp = client.get(page)
        assert resp.status_code == 302 and resp.headers["Location"].startswith("/login"), page
    assert client.get("/").headers["Location"] == "/q/"
    resp = post_form(client, "/login", "/login", {"email": ADMIN, "password": "correct horse battery"})
    assert resp.headers["Location"] == "/portal/"
    assert client.get("/portal/quarantine/").status_code == 200


# --- digest links: one-click actions --------------------------------------------------------------------------------

def _action_token(cfg, world, message_id: str, action: str = "release", rcpts: tuple[str, ...] = (USER,),
                  **kwargs: Any) -> str:
    return make_action_token(cfg.resolve_secret_key(), tenant_id=world["acme"].id, message_id=message_id,
                             rcpts=rcpts, action=action, user_id=user_id(cfg, USER), **kwargs)


def test_an_action_link_asks_on_get_acts_once_on_post_and_then_says_already_done(web_app, cfg, world, mail):
    token = _action_token(cfg, world, mail["mine"])
    client = web_app.test_client()  # nobody signed in: the link is the authority
    page = client.get(f"/q/action/{token}")
    assert page.status_code == 200
    assert "Release this message to your mailbox?" in text(page) and "Cheap pills" in text(page)
    assert client.get(f"/q/action/{token}").status_code == 200
    assert statuses(cfg, mail["mine"]) == {USER: "quarantined"}, "a GET (a link scanner) changes nothing"
    resp = client.post(f"/q/action/{token}", data={"csrf_token": csrf_token(text(page))})
    assert resp.status_code == 200 and f"Done: released to {USER}." in text(resp)
    assert statuses(cfg, mail["mine"]) == {USER: "queued"}
    again = client.post(f"/q/action/{token}", data={"csrf_token": csrf_token(text(page))})
    assert f"Already done: released to {USER}." in text(again)
    assert f"Already done: released to {USER}." in text(web_app.test_client().get(f"/q/action/{token}"))

    block = _action_token(cfg, world, mail["alias"], "block", rcpts=("Sales@acme2.test",))
    resp = client.post(f"/q/action/{block}", data={"csrf_token": csrf_token(text(page))})
    assert "Done: b@junk.example blocked; deleted for Sales@acme2.test." in text(resp)
    assert statuses(cfg, mail["alias"]) == {"Sales@acme2.test": "discarded", "carol@acme.test": "quarantined"}


def test_tampered_or_expired_action_links_are_refused_with_a_clear_page(web_app, cfg, world, mail):
    """Attack: a user edits a digest link to point at a colleague's mail (or a virus), keeping the signature."""
    client = web_app.test_client()
    token = _action_token(cfg, world, mail["mine"])
    payload, rest = token.split(".", 1)
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["m"], data["r"] = mail["carol"], ["carol@acme.test"]
    forged = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")
    csrf = csrf_token(text(client.get(f"/q/action/{token}")))
    login = _login_token(cfg, world)
    for bad in (forged + "." + rest, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), login):
        for resp in (client.get(f"/q/action/{bad}"), client.post(f"/q/action/{bad}", data={"csrf_token": csrf})):
            assert resp.status_code == 400 and "This link is not valid" in text(resp)
    expired = _action_token(cfg, world, mail["mine"], issued_at=time.time() - 8 * 86400)
    for resp in (client.get(f"/q/action/{expired}"), client.post(f"/q/action/{expired}", data={"csrf_token": csrf})):
        assert resp.status_code == 410 and "This link has expired" in text(resp)
    assert statuses(cfg, mail["carol"]) == {"carol@acme.test": "quarantined"}
    assert statuses(cfg, mail["mine"]) == {USER: "quarantined"}


def test_action_pages_carry_the_tenants_branding(web_app, cfg, world, mail):
    def brand(s: Any) -> None:
        s.execute(update(Tenant).where(Tenant.id == world["acme"].id).values(brand_name="Acme Secure",
                                                                             brand_color="#ffcc00"))

    read(cfg, brand)
    resp = web_app.test_client().get(f"/q/action/{_action_token(cfg, world, mail['mine'])}")
    assert "Acme Secure" in text(resp) and "--brand:#ffcc00;--brand-ink:#1d2430" in text(resp)
    assert "Acme Secure" not in text(web_app.test_client().get("/q/action/garbage"))


# --- every new page holds to the CSP --------------------------------------------------------------------------------

def test_quarantine_pages_use_no_inline_script_or_style_attributes(web_app, cfg, world, mail):
    texty = hold(cfg, world["acme"].id, rcpts=(USER,), data=raw_mail(body="<script>alert(1)</script>"))
    pages = [(USER, f"/q/{texty}"), (ADMIN, "/portal/quarantine/"), (ADMIN, f"/portal/quarantine/{mail['mine']}"),
             (ADMIN, f"/portal/quarantine/{mail['virus']}"), (ADMIN, "/portal/lists"), (ADMIN, "/portal/branding"),
             (AUDITOR, f"/portal/quarantine/{mail['mine']}"), (USER, "/q/"), (USER, f"/q/{mail['mine']}"),
             (USER, "/q/lists"), (None, f"/q/action/{_action_token(cfg, world, mail['mine'])}"),
             (None, f"/q/login/{_login_token(cfg, world)}"), (None, "/q/action/garbage")]
    for email, path in pages:
        client = sign_in(web_app, email) if email else web_app.test_client()
        resp = client.get(path)
        assert resp.status_code in (200, 400), path
        html = text(resp)
        # A script file of our own (static/selectall.js) is allowed; inline script never.
        assert not re.search(r"<script(?![^>]*\ssrc=\"/static/)|\sstyle=|\son[a-z]+=|javascript:", html, re.I), path
        assert "/static/mailward.css" in html
