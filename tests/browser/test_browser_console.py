"""The admin side in a real browser: Chromium (Playwright) against the real web process, with mail sent over SMTP
to the real ingress and delivered to the real sink.

One tenant admin's afternoon: sign in, enrol a second factor, sign in again with password and TOTP code, add a
domain and read its DNS checklist, find a mail that was just sent in the tracking center and open its timeline, open
the statistics and see a chart that has bars in it, create an API key and call the API with it from a plain HTTP
client. Then the MSP operator's pages. Screenshots go to ``test-output/screenshots/`` for review.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pyotp

from tenants.models import utcnow
from tests.fixtures.browser import shot
from tests.integration.test_ingress import client as smtp_client
from tests.support.servers import run_cli
from worker import rollup

ADMIN = "admin@acme.test"
OPERATOR = "operator@msp.test"
PASSWORD = "correct horse battery"


def sign_in(page: Any, web: str, email: str, password: str = PASSWORD) -> None:
    page.goto(web + "/login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.locator("form [type=submit]").click()
    page.wait_for_load_state()


def fresh_code(totp: pyotp.TOTP, used: set[str]) -> str:
    """A code valid now that was not used yet (each step's code is accepted once)."""
    while True:
        code = totp.now()
        if code not in used:
            used.add(code)
            return code
        time.sleep(1)


def enrol_totp(page: Any, web: str, used: set[str]) -> pyotp.TOTP:
    page.goto(web + "/account/totp")
    page.locator("form[action$='/account/totp/start'] [type=submit]").click()
    uri = unquote(page.locator("#otpauth-uri").inner_text()).strip()
    assert page.locator(".qr svg").count() == 1, "the enrolment page shows a QR code"
    totp = pyotp.TOTP(parse_qs(urlsplit(uri).query)["secret"][0])
    page.fill("#code", fresh_code(totp, used))
    page.locator("form[action$='/account/totp/confirm'] [type=submit]").click()
    page.wait_for_load_state()
    page.goto(web + "/account/totp")
    assert "Every sign-in asks for a code" in page.content()
    return totp


def send_probe(env: dict[str, str], subject: str) -> None:
    with smtp_client(env) as c:
        c.sendmail("alice@sender.example", ["bob@acme.test"],
                   (f"From: Alice <alice@sender.example>\r\nTo: bob@acme.test\r\nSubject: {subject}\r\n"
                    f"Message-ID: <{uuid.uuid4().hex}@sender.example>\r\n"
                    "Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\nThe figures for this week.\r\n").encode())


def api_get(web: str, path: str, key: str) -> tuple[int, Any]:
    req = urllib.request.Request(web + path, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_tenant_admin_totp_domain_tracking_statistics_and_api_key(env, cfg, ingress, sink, web, acme, factory,
                                                                   page_of, dns):
    factory.user(ADMIN, "tenant_admin", acme)
    used: set[str] = set()

    # Enrol a second factor, then sign in again in a fresh browser: password, then the code.
    first = page_of()
    sign_in(first, web, ADMIN)
    first.wait_for_url(web + "/portal/")
    totp = enrol_totp(first, web, used)
    shot(first, "20-account-totp-on")
    page = page_of()
    sign_in(page, web, ADMIN)
    assert "/login/totp" in page.url and page.locator("#code").is_visible(), "the password alone is not enough"
    shot(page, "21-login-totp-step")
    page.fill("#code", fresh_code(totp, used))
    page.locator("form [type=submit]").click()
    page.wait_for_url(web + "/portal/")
    shot(page, "22-portal-domains")

    # Add a domain: the page that follows shows the ownership record and the DNS checklist.
    page.fill("#add-name", "acme-shop.test")
    page.fill("#add-transport", "mail.acme-shop.test:25")
    page.get_by_role("button", name="Add domain").click()
    page.wait_for_url(re.compile(re.escape(web) + r"/portal/domains/\d+$"))
    assert page.locator("#verification-record").inner_text().startswith("_mailward.acme-shop.test.")
    assert page.locator("#dns-checking").is_visible(), "the page queues the DNS check; it never looks DNS up itself"
    done = run_cli(["worker", "--burst"], env)
    assert done.returncode == 0, done.stderr
    page.reload()
    assert page.locator("#dns-checked").inner_text().startswith("Checked")
    rows = page.locator("#dns-checklist tr[data-item]")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.item)")) == ["DMARC", "MX", "Ownership", "SPF"]
    assert page.locator('#dns-checklist tr[data-item="MX"]').get_attribute("class") == "check-missing"
    assert "IN MX 10 mx.mailward.test." in page.locator('#dns-checklist tr[data-item="MX"]').inner_text()
    shot(page, "23-domain-dns-checklist")

    # A mail sent over SMTP just now: found in the tracking center by its subject, and its timeline.
    subject = f"Weekly figures {uuid.uuid4().hex[:8]}"
    send_probe(env, subject)
    sink.wait_count(1)
    page.goto(web + "/portal/tracking")
    page.fill("#subject", subject)
    page.locator("#tracking-filters [type=submit]").first.click()
    page.wait_for_load_state()
    results = page.locator("#tracking-results tbody tr")
    assert results.count() == 1
    shot(page, "24-tracking-search")
    page.get_by_role("link", name=subject).click()
    page.wait_for_url(re.compile(re.escape(web) + r"/portal/tracking/\w+$"))
    timeline = page.locator("#timeline tbody tr")
    kinds = timeline.evaluate_all("rs => rs.map(r => r.className)")
    assert kinds[:2] == ["step-connect", "step-received"] and "step-verdict" in kinds, kinds
    assert "bob@acme.test: delivered" in page.locator("#timeline").inner_text()
    assert "250" in page.locator("#deliveries").inner_text(), "the downstream server's reply is shown"
    shot(page, "25-tracking-timeline")

    # Statistics: the roll-up job counts the mail, and the chart has a bar for it.
    rollup.rollup(cfg, now=utcnow() + rollup.SAFETY_LAG + timedelta(minutes=1))
    page.goto(web + "/portal/stats")
    chart = page.locator("#daily svg.chart")
    assert chart.count() == 1
    box = chart.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 50
    bars = page.locator("#daily svg.chart rect.bar")
    assert bars.count() >= 1 and bars.first.bounding_box()["height"] > 0, "the chart draws the mail of today"
    assert page.locator("#totals").inner_text().count("1") >= 1
    shot(page, "26-statistics")

    # An API key made in the portal, used from a plain HTTP client, then revoked.
    page.goto(web + "/portal/apikeys")
    page.fill("#name", "billing export")
    page.locator("input[name=scopes][value=read]").check()
    page.get_by_role("button", name="Create key").click()
    page.wait_for_load_state()
    key = page.locator("#new-key").input_value().strip()
    assert key.startswith("mw_"), key
    shot(page, "27-api-key-created")
    status, body = api_get(web, "/api/v1/messages?subject=" + subject.replace(" ", "%20"), key)
    assert status == 200 and [m["subject"] for m in body["items"]] == [subject]
    status, body = api_get(web, "/api/v1/domains", key)
    assert status == 200 and "acme-shop.test" in [d["name"] for d in body["items"]]
    page.goto(web + "/portal/apikeys")
    assert key not in page.content(), "a key is shown once, never again"
    shot(page, "28-api-keys")

    # The rest of the portal renders for review, without a CSP violation.
    for path, name in (("/portal/users", "29a-users"), ("/portal/dkim", "29b-dkim"),
                       ("/portal/outbound", "29c-outbound"), ("/portal/recipients", "29d-recipients"),
                       ("/portal/policy", "29e-policy"),
                       ("/portal/lists", "29f-lists"), ("/portal/quarantine/", "29g-quarantine"),
                       ("/portal/audit", "29h-audit"), ("/portal/branding", "29i-branding")):
        resp = page.goto(web + path)
        assert resp is not None and resp.status == 200, path
        assert page.csp_violations == [], (path, page.csp_violations)
        shot(page, name)


def test_msp_console_pages(env, cfg, web, acme, factory, page_of, dns):
    """The operator's main pages render for review (tenants, cluster, tracking, statistics, usage, audit)."""
    factory.user(OPERATOR, "msp_admin")
    page = page_of()
    sign_in(page, web, OPERATOR)
    page.wait_for_url(web + "/console/")
    assert page.get_by_role("link", name="Acme", exact=True).is_visible()
    shot(page, "30-console-tenants")
    page.get_by_role("link", name="Acme", exact=True).click()
    page.wait_for_url(re.compile(re.escape(web) + r"/console/tenants/\d+$"))
    assert "acme.test" in page.content()
    shot(page, "30-console-tenant")
    for path, name in (("/console/cluster", "31-console-cluster"), ("/console/tracking", "32-console-tracking"),
                       ("/console/stats", "33-console-statistics"), ("/console/usage", "34-console-usage"),
                       ("/console/audit", "35-console-audit"), ("/console/policy", "36-console-policy"),
                       ("/console/apikeys", "37-console-api-keys"), ("/console/staff", "38-console-staff")):
        resp = page.goto(web + path)
        assert resp is not None and resp.status == 200, path
        assert page.csp_violations == [], (path, page.csp_violations)
        shot(page, name)
