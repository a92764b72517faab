"""Every page fits its screen: Chromium at 1366x900 and 390x844 visits every page of the MSP console, the tenant
portal and the end user's quarantine (and the public pages), with tables full of long subjects and addresses.

The pages come from the Flask url_map, not from a list kept by hand: every GET route a viewer may call, with the
ids of seeded data filled in, so a new page is visited as soon as it exists (a route with an argument this test
cannot fill fails it: teach :data:`ARGS` the argument). A page fails when it is wider than the window
(``document.documentElement.scrollWidth > innerWidth``), when a checkbox's label is not beside it, or when a link
of a mail list (the quarantine's subject, the only way into a mail) lies off screen.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from werkzeug.routing import Rule

from app.access import access_of
from smtp.mailstore import NewMessage, store_message
from tenants import apikeys, lists
from tenants.ids import new_id
from tenants.models import Domain, Role, Tenant, User, utcnow
from tenants.platform import db as tdb
from tenants.scope import msp_scope, tenant_scope
from tenants.tokens import make_action_token, make_login_token
from tests.browser.test_browser_console import sign_in
from tests.fixtures.browser import shot
from tests.support.held import hold, raw_mail
from worker import rollup

WIDTHS = [(1366, 900), (390, 844)]
OPERATOR = "operator@msp.test"
ADMIN = "admin@acme.test"
USER = "user@acme.test"
VIEWERS = {Role.MSP_ADMIN: OPERATOR, Role.TENANT_ADMIN: ADMIN, Role.USER: USER}
#: How far (px) a checkbox's label may be from it, across and down.
NEAR = 40
#: GET routes that are not pages: downloads, feeds, frames shown inside a page, probes.
NOT_PAGES = re.compile(r"(\.csv|\.json|/raw|/preview|^/metrics|^/healthz|^/readyz)$")
#: Pages whose screenshots are kept for review even when they pass (the mail lists and a tracked message).
REVIEW = re.compile(r"^/(q/|portal/quarantine/|portal/tracking|console/tracking|console/$|portal/apikeys$)")
#: Long words that a table must break or cut, never let widen the page.
LONG_SUBJECT = ("Quarterly reconciliation of the outstanding supplier invoices for the northern region warehouses "
                "and the subsidiaries-overseas-consolidated-balance-sheet-2026-Q4-final-final-v3.xlsx")
LONG_SENDER = "accounts-receivable.notifications.automated-mailer@billing.subsidiary-overseas-example-holdings.example"
LONG_RCPTS = ["procurement.department.northern-region-warehouses@acme.test", "user@acme.test",
              "a.very.long.distribution.list.name.for.finance@acme.test"]

#: What the page reports: its width, the widest leaf elements, checkboxes far from their labels, off-screen links.
CHECK_JS = """() => {
  const vw = window.innerWidth;
  const out = {scrollWidth: document.documentElement.scrollWidth, innerWidth: vw, wide: [], far: [], hidden: []};
  const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (typeof el.className === 'string' && el.className ? '.' + el.className.trim().split(/\\s+/).join('.') : '');
  if (out.scrollWidth > vw) {
    for (const el of document.body.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      if (r.width && r.right > vw + 1 && el.children.length === 0 && el.checkVisibility()) {
        out.wide.push(name(el) + ' right=' + Math.round(r.right) + ' ' + (el.textContent || '').trim().slice(0, 30));
        if (out.wide.length >= 6) break;
      }
    }
  }
  for (const box of document.querySelectorAll('input[type=checkbox], input[type=radio]')) {
    const b = box.getBoundingClientRect();
    if (!b.width || !b.height) continue;  // not shown (a closed menu, a hidden label)
    for (const label of box.labels || []) {
      const l = label.getBoundingClientRect();
      if (!l.width) continue;
      const dx = Math.max(0, l.left - b.right, b.left - l.right);
      const dy = Math.max(0, l.top - b.bottom, b.top - l.bottom);
      if (dx > NEAR || dy > NEAR) {
        out.far.push((box.name || box.id) + ' / "' + label.textContent.trim().slice(0, 40) + '" dx=' +
                     Math.round(dx) + ' dy=' + Math.round(dy));
      }
    }
  }
  for (const a of document.querySelectorAll('table.stack a')) {
    const r = a.getBoundingClientRect();
    if (r.left < 0 || r.left + Math.min(r.width, NEAR) > vw) {
      out.hidden.push(a.textContent.trim().slice(0, 40) + ' left=' + Math.round(r.left));
    }
  }
  return out;
}""".replace("NEAR", str(NEAR))


# --- seeded data ----------------------------------------------------------------------------------------------------

def _track(cfg: Any, tenant_id: int, *, subject: str, sender: str, rcpts: list[str], verdict: str = "deliver",
           direction: str = "inbound", kind: str | None = None, score: float = 1.5) -> str:
    """A message in the tracking center as the ingress stores it (its rows stay queued: no worker runs here)."""
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        msg = store_message(s, NewMessage(
            tenant_id=tenant_id, queue_id=new_id(), mail_from=sender, rcpts=rcpts,
            data=raw_mail(sender, subject, rcpts[0]), client_ip="2001:db8:ffff:1234:5678:9abc:def0:1234",
            client_helo="mail-out-17.bulk.subsidiary-overseas-example-holdings.example", header_from=sender,
            subject=subject, message_id_header=f"<{uuid.uuid4().hex}{uuid.uuid4().hex}@billing.example>",
            verdict=verdict, direction=direction, quarantine_kind=kind, score=score, explanation=verdict,
            findings=(("BAYES_SPAM_PROBABILITY_VERY_HIGH_WITH_A_LONG_NAME", 3.5, "a long reason " * 8),),
            deliver=verdict in ("deliver", "tag"), retention_days=14 if kind else None,
        ))
        return msg.id


@pytest.fixture
def seeded(cfg, acme, factory) -> dict[str, Any]:
    """A tenant with mail in every list: tracked mail with long subjects and addresses, held mail of every kind for
    the user and the admin, list entries at every level, API keys, a DKIM key, and statistics rolled up."""
    factory.user(OPERATOR, "msp_admin")
    factory.user(ADMIN, "tenant_admin", acme)
    factory.user(USER, "user", acme)
    factory.user("procurement.department.northern-region-warehouses@acme.test", "user", acme)
    ids: dict[str, Any] = {"tenant_id": acme.id}
    held = [hold(cfg, acme.id, rcpts=(USER, ADMIN), sender=LONG_SENDER, subject=f"{LONG_SUBJECT} {i}",
                 score=7.0 + i) for i in range(6)]
    hold(cfg, acme.id, rcpts=LONG_RCPTS, kind="virus", sender=LONG_SENDER, subject="Invoice " + "x" * 90)
    hold(cfg, acme.id, rcpts=(ADMIN,), kind="attachment", subject="Payroll.docm", sender="hr@partner.example")
    ids["held"] = held[0]
    tracked = [_track(cfg, acme.id, subject=f"{LONG_SUBJECT} tracked {i}", sender=LONG_SENDER, rcpts=LONG_RCPTS)
               for i in range(4)]
    _track(cfg, acme.id, subject="Re: " + LONG_SUBJECT, sender=USER, rcpts=[LONG_SENDER], direction="outbound")
    _track(cfg, acme.id, subject="Cheap pills " * 12, sender=LONG_SENDER, rcpts=LONG_RCPTS[:2],
           verdict="quarantine", kind="attachment", score=12.0)
    ids["tracked"] = tracked[0]
    with msp_scope(), tdb.session_scope(cfg) as s:
        ids["domain_id"] = s.query(Domain.id).filter(Domain.tenant_id == acme.id).scalar()
        user_id = s.query(User.id).filter(User.email == USER).scalar()
        lists.add_entry(s, kind="block", value="bulk-mailer.subsidiary-overseas-example-holdings.example",
                        comment="MSP-wide: a long comment about why this sender is blocked " * 2)
        lists.add_entry(s, kind="allow", value=LONG_SENDER, tenant_id=acme.id, comment="the tenant's supplier")
        lists.add_entry(s, kind="block", value="203.0.113.0/24", tenant_id=acme.id, comment="a spam network")
        lists.add_entry(s, kind="allow", value="newsletter@long-subdomain.partner-example.example", user_id=user_id)
        apikeys.create(s, None, ["read"], "MSP-wide monitoring key with a long name for the dashboard")
    with tenant_scope(acme.id), tdb.session_scope(cfg) as s:
        apikeys.create(s, s.get(Tenant, acme.id), ["read", "write", "quarantine"], "billing export")
        from tenants.dkimkeys import generate_key

        generate_key(s, cfg, "acme.test", "mw2026")
    rollup.rollup(cfg, now=utcnow() + rollup.SAFETY_LAG + timedelta(minutes=1))
    secret = cfg.resolve_secret_key()
    ids["login_token"] = make_login_token(secret, tenant_id=acme.id, user_id=user_id, email=USER)
    ids["action_token"] = make_action_token(secret, tenant_id=acme.id, message_id=held[0], rcpts=[USER],
                                            action="release", user_id=user_id)
    return ids


# --- the pages ------------------------------------------------------------------------------------------------------

#: Argument name -> how to fill it from the seeded ids, given the endpoint.
ARGS: dict[str, Callable[[str, dict[str, Any]], str]] = {
    "tenant_id": lambda ep, ids: str(ids["tenant_id"]),
    "domain_id": lambda ep, ids: str(ids["domain_id"]),
    "message_id": lambda ep, ids: ids["tracked"] if "tracking" in ep else ids["held"],
    "token": lambda ep, ids: ids["login_token"] if ep.endswith("login_link") else (
        ids["action_token"] if ep.endswith("action_link") else "not-a-token"),
    "job_id": lambda ep, ids: "0",  # a rules preview that does not exist: its 404 page
}

#: Arguments this walk cannot fill, and why (their pages are left to their own tests).
UNFILLED = {"job_id": "a mail-rules replay's page needs a replay job running in a worker"}


def pages(app: Any, ids: dict[str, Any]) -> list[tuple[Role | None, str]]:
    """(viewer role or None for anonymous, path) of every page: each GET route once per seeded viewer it admits."""
    out = []
    rules: list[Rule] = sorted(app.url_map.iter_rules(), key=lambda r: r.rule)
    for rule in rules:
        if rule.endpoint == "static" or "GET" not in (rule.methods or ()) or NOT_PAGES.search(rule.rule):
            continue
        access = access_of(app.view_functions[rule.endpoint])
        if access is None or access.api_scope:
            continue  # the REST API: JSON for API keys, no page
        if any(a in UNFILLED for a in rule.arguments):
            continue
        missing = [a for a in rule.arguments if a not in ARGS]
        assert not missing, f"teach ARGS how to fill {missing} of {rule.rule} ({rule.endpoint})"
        path = rule.build({a: ARGS[a](rule.endpoint, ids) for a in rule.arguments}, append_unknown=False)[1]
        if access.public:
            out.append((None, path))
        out += [(role, path) for role in VIEWERS if role in access.roles]
    return out


def test_pages_are_listed_from_the_url_map(web_app, cfg, seeded):
    """The walk below covers the three audiences and their detail pages (a sanity check of :func:`pages`)."""
    listed = {path for _, path in pages(web_app, seeded)}
    for path in ("/console/", "/console/tracking", f"/console/tenants/{seeded['tenant_id']}", "/portal/quarantine/",
                 f"/portal/quarantine/{seeded['held']}", f"/portal/tracking/{seeded['tracked']}", "/q/", "/q/lists",
                 f"/q/{seeded['held']}", "/account/password", "/login"):
        assert path in listed, path
    assert not any(p.endswith(".csv") or p.startswith("/api/v1/messages") for p in listed)


@pytest.mark.parametrize("width,height", WIDTHS, ids=[f"{w}px" for w, _ in WIDTHS])
def test_every_page_fits_the_window_and_keeps_checkboxes_by_their_labels(web, web_app, seeded, browser,
                                                                        width, height):
    by_viewer: dict[Role | None, list[str]] = {}
    for role, path in pages(web_app, seeded):
        by_viewer.setdefault(role, []).append(path)
    problems: list[str] = []
    visited = 0
    for role, paths in by_viewer.items():
        context = browser.new_context(viewport={"width": width, "height": height})
        try:
            page = context.new_page()
            if role is not None:
                sign_in(page, web, VIEWERS[role])
                assert "/login" not in page.url, f"{VIEWERS[role]} could not sign in"
            for path in paths:
                resp = page.goto(web + path)
                status = resp.status if resp is not None else 0
                who = VIEWERS.get(role, "anonymous") if role else "anonymous"
                if status >= 500 or (status >= 400 and role is not None):
                    problems.append(f"{who} {path}: HTTP {status}")
                    continue
                found = page.evaluate(CHECK_JS)
                visited += 1
                bad = []
                if found["scrollWidth"] > found["innerWidth"]:
                    bad.append(f"{found['scrollWidth']} px wide in {found['innerWidth']}: {found['wide']}")
                if found["far"]:
                    bad.append(f"checkbox away from its label: {found['far']}")
                if found["hidden"]:
                    bad.append(f"list links off screen: {found['hidden']}")
                if bad:
                    problems.append(f"{who} {path}: " + "; ".join(bad))
                if bad or REVIEW.search(path):
                    shot(page, f"width-{width}-{re.sub(r'[^a-z0-9]+', '-', path.lower()).strip('-')[:40] or 'home'}")
        finally:
            context.close()
    assert problems == [], "\n".join(problems)
    assert visited >= 30, f"only {visited} pages visited: { {str(r): len(p) for r, p in by_viewer.items()} }"


def test_narrow_nav_folds_behind_menu_and_opens(web, seeded, browser):
    """At 390 px the nav is behind "Menu" and opens on a click (no script); at 1366 px its links show at once."""
    narrow = browser.new_context(viewport={"width": 390, "height": 844})
    wide = browser.new_context(viewport={"width": 1366, "height": 900})
    try:
        page = narrow.new_page()
        sign_in(page, web, OPERATOR)
        tracking = page.locator("nav.nav a", has_text="Tracking")
        assert not tracking.is_visible(), "the nav is folded at 390 px"
        page.locator(".navmenu > summary").click()
        assert tracking.is_visible()
        tracking.click()
        page.wait_for_url(web + "/console/tracking")
        page = wide.new_page()
        sign_in(page, web, OPERATOR)
        assert page.locator("nav.nav a", has_text="Tracking").is_visible()
        assert not page.locator(".navmenu > summary").is_visible()
    finally:
        narrow.close()
        wide.close()


def test_select_all_ticks_every_row_and_the_list_works_without_script(web, seeded, browser):
    """Progressive: without script the select-all box stays hidden and rows are ticked one by one; with it, one box
    ticks the page (and shows a partial selection), and the bulk release takes them all."""
    plain = browser.new_context(viewport={"width": 390, "height": 844}, java_script_enabled=False)
    scripted = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = plain.new_page()
        sign_in(page, web, USER)
        page.goto(web + "/q/")
        assert not page.locator("input[data-select-all]").is_visible()
        page.locator("input[name=ids]").first.check()
        page.get_by_role("button", name="Delete").click()
        page.wait_for_load_state()
        assert "Deleted 1 message(s)." in page.content()

        page = scripted.new_page()
        sign_in(page, web, USER)
        page.goto(web + "/q/")
        rows, everything = page.locator("input[name=ids]"), page.locator("input[data-select-all]")
        assert rows.count() == 5 and "5 messages" in page.locator("#result-count").inner_text()
        everything.check()
        assert rows.evaluate_all("boxes => boxes.every(b => b.checked)")
        rows.first.uncheck()
        assert everything.evaluate("b => b.indeterminate && !b.checked")
        everything.check()
        page.get_by_role("button", name="Release").click()
        page.wait_for_load_state()
        assert "Released 5 message(s)." in page.content()
    finally:
        plain.close()
        scripted.close()
