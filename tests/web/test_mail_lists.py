"""The mail lists sort, count and page (the quarantine and the tracking center), and a tracked message has actions.

Sorting keeps keyset paging: every order walks all its pages without a duplicate or a gap. Counts are capped. The
actions of a tracked message (release, allow sender, block sender) go through the quarantine's services, are
audited, are offered only to those allowed, and another tenant's message is a 404.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tenants import quarantine as q
from tenants import tracking
from tenants.exceptions import ValidationError
from tenants.mailsort import SORTS, Order, capped_count
from tenants.models import AuditEntry, Delivery, ListEntry, Message
from tenants.platform import db as tdb
from tenants.scope import tenant_scope
from tests.support.held import hold
from tests.support.web import csrf_token, read, sign_in, text
from tests.web.test_tracking import BASE, put

ADMIN = "admin@acme.test"
SUBJECTS = ["delta", "Alpha", "charlie", None, "bravo", "echo", "alpha"]
SCORES = [5.0, 9.5, 5.0, 7.25, 12.0, 5.0, 6.0]


@pytest.fixture
def held_mail(cfg, world) -> list[str]:
    """Seven held mails of Acme with ties in score and subject (case) and one without a subject."""
    acme = world["acme"].id
    return [hold(cfg, acme, subject=subj or "", sender=f"s{i % 3}@junk{i}.example", score=score,
                 received_at=BASE + timedelta(minutes=i % 4))
            for i, (subj, score) in enumerate(zip(SUBJECTS, SCORES, strict=True))]


def _key(order: Order, m: Any) -> Any:
    if order.sort == "received":
        return m.received_at
    if order.sort == "score":
        return m.score
    return ((m.mail_from if order.sort == "sender" else m.subject) or "").lower()


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("descending", [True, False], ids=["desc", "asc"])
def test_every_order_pages_through_all_held_mail_without_gaps_or_repeats(cfg, world, held_mail, sort, descending):
    order = Order(sort, descending)
    with tenant_scope(world["acme"].id), tdb.session_scope(cfg) as s:
        seen, after = [], None
        for _ in range(10):
            items, after = q.search(s, after=after, limit=2, order=order)
            seen += [i.id for i in items]
            if after is None:
                break
        rows = list(s.scalars(select(Message).where(Message.id.in_(held_mail))))
        expected = sorted(rows, key=lambda m: (_key(order, m), m.id), reverse=descending)
        assert seen == [m.id for m in expected]
        assert q.count(s) == (7, False)
        assert q.count(s, min_score=7) == (3, False)


def test_a_cursor_of_another_order_or_a_bad_sort_is_refused(cfg, world, held_mail):
    with tenant_scope(world["acme"].id), tdb.session_scope(cfg) as s:
        _, after = q.search(s, limit=2, order=Order("score", True))
        assert after is not None
        with pytest.raises(ValidationError):
            q.search(s, after=after, limit=2, order=Order("subject", True))
        with pytest.raises(ValidationError):
            q.search(s, after=after, limit=2)  # the default order reads its own cursor format only
        with pytest.raises(ValidationError):
            Order.parse("size", None)
        with pytest.raises(ValidationError):
            Order.parse("score", "sideways")
        assert Order.parse("subject", None) == Order("subject", False), "text sorts A to Z first"
        assert Order.parse(None, None).is_default


def test_counts_are_capped(cfg, world, held_mail):
    with tenant_scope(world["acme"].id), tdb.session_scope(cfg) as s:
        assert capped_count(s, select(Message), cap=3) == (3, True)
        assert capped_count(s, select(Message), cap=7) == (7, False)


def test_tracking_sorts_pages_and_counts(cfg, world):
    acme = world["acme"].id
    ids = [put(cfg, acme, at=BASE + timedelta(minutes=i), subject=f"m{9 - i}", sender=f"x{i}@s.example")
           for i in range(5)]
    with tenant_scope(acme), tdb.session_scope(cfg) as s:
        seen, after = [], None
        for _ in range(5):
            page, after = tracking.search_page(s, tracking.Filters(), after=after, limit=2,
                                               order=Order("subject", False))
            seen += [m.id for m in page]
            if after is None:
                break
        assert seen == list(reversed(ids)), "m5 .. m9: the oldest mail has the largest subject"
        assert tracking.count(s, tracking.Filters()) == (5, False)
        assert tracking.count(s, tracking.Filters(subject="m9")) == (1, False)


def _row_ids(html: str) -> list[str]:
    return re.findall(r'<tr id="msg-(\w+)"', html)


def test_list_pages_sort_by_the_column_heads_and_say_how_many(web_app, cfg, world, held_mail):
    c = sign_in(web_app, ADMIN)
    page = text(c.get("/portal/quarantine/"))
    assert "7 messages" in page
    assert 'href="/portal/quarantine/?sort=score&amp;dir=desc"' in page, "a head links to its sort"
    asc = c.get("/portal/quarantine/?sort=score&dir=asc&kind=spam")
    assert asc.status_code == 200
    scores = read(cfg, lambda s: {m.id: m.score for m in s.scalars(select(Message))})
    shown = [scores[i] for i in _row_ids(text(asc))]
    assert shown == sorted(SCORES)
    assert 'aria-sort="ascending"' in text(asc)
    assert "dir=desc" in text(asc) and "kind=spam" in text(asc), "the active head turns the order, keeps filters"
    assert c.get("/portal/quarantine/?sort=size").status_code == 400
    assert "1 message<" in text(c.get("/portal/quarantine/?subject=charlie"))

    tracked = text(c.get("/portal/tracking?sort=score&dir=desc"))
    assert "7 messages" in tracked
    assert [scores[i] for i in _row_ids(tracked)] == sorted(SCORES, reverse=True)
    assert 'id="export-csv" href="/portal/tracking/export.csv"' in tracked, "the export ignores the order"


def test_user_quarantine_sorts_and_offers_select_all(web_app, cfg, world):
    acme = world["acme"].id
    for subject in ("b", "a", "c"):
        hold(cfg, acme, rcpts=("user@acme.test",), subject=subject)
    page = text(sign_in(web_app, "user@acme.test").get("/q/?sort=subject"))
    subjects = read(cfg, lambda s: {m.id: m.subject for m in s.scalars(select(Message))})
    assert [subjects[i] for i in _row_ids(page)] == ["a", "b", "c"]
    assert "3 messages" in page
    assert 'data-select-all="bulk"' in page and "/static/selectall.js" in page


def _act(c: Any, path: str, action: str) -> Any:
    token = csrf_token(text(c.get("/portal/quarantine/")))
    return c.post(path, data={"action": action, "csrf_token": token})


def _statuses(cfg: Any, mid: str) -> list[str]:
    return read(cfg, lambda s: sorted(s.scalars(select(Delivery.status).where(Delivery.message_id == mid))))


def _entries(cfg: Any) -> list[tuple[str, str, int | None]]:
    return read(cfg, lambda s: sorted((e.kind, e.value, e.tenant_id) for e in s.scalars(select(ListEntry))))


def test_tracked_message_actions_release_allow_and_block_audited(web_app, cfg, world):
    acme = world["acme"].id
    spam = hold(cfg, acme, sender="promo@junk.example", subject="held")
    other = hold(cfg, acme, sender="worse@junk.example", subject="held too")
    clean = put(cfg, acme, at=BASE, sender="partner@good.example")
    c = sign_in(web_app, ADMIN)
    page = text(c.get(f"/portal/tracking/{spam}"))
    assert 'id="message-actions"' in page and "Allow sender and release" in page
    assert "Block sender</button>" in text(c.get(f"/portal/tracking/{clean}")), "no release for delivered mail"

    resp = _act(c, f"/portal/tracking/{spam}/act", "release")
    assert resp.status_code == 302 and _statuses(cfg, spam) == ["queued"]
    assert "Release</button>" not in text(c.get(f"/portal/tracking/{spam}")), "nothing is held any more"
    assert _act(c, f"/portal/tracking/{clean}/act", "allow").status_code == 302
    assert _act(c, f"/portal/tracking/{other}/act", "block").status_code == 302
    assert _statuses(cfg, other) == ["discarded"]
    assert ("allow", "partner@good.example", acme) in _entries(cfg)
    assert ("block", "worse@junk.example", acme) in _entries(cfg)
    actions = read(cfg, lambda s: sorted(a.action for a in s.scalars(select(AuditEntry))
                                         if a.action.startswith("tracking.") and a.action != "tracking.view"))
    assert actions == ["tracking.allow", "tracking.block", "tracking.release"]
    assert _act(c, f"/portal/tracking/{clean}/act", "launch").status_code == 400


def test_tracked_message_actions_are_for_those_allowed_and_never_across_tenants(web_app, cfg, world):
    acme, beta = world["acme"].id, world["beta"].id
    spam = hold(cfg, acme, subject="held")
    virus = hold(cfg, acme, subject="virus", kind="virus")
    theirs = hold(cfg, beta, rcpts=("carol@beta.test",), subject="beta's")

    auditor = sign_in(web_app, "auditor@acme.test")
    assert 'id="message-actions"' not in text(auditor.get(f"/portal/tracking/{spam}"))
    assert _act(auditor, f"/portal/tracking/{spam}/act", "release").status_code in (403, 404)
    other_admin = sign_in(web_app, "admin@beta.test")
    assert _act(other_admin, f"/portal/tracking/{spam}/act", "release").status_code == 404
    assert _statuses(cfg, spam) == ["quarantined"]

    admin = sign_in(web_app, ADMIN)
    page = text(admin.get(f"/portal/tracking/{virus}"))
    assert "Release</button>" not in page and "Allow sender" not in page, "a virus is released from its own page"
    _act(admin, f"/portal/tracking/{virus}/act", "release")
    assert _statuses(cfg, virus) == ["quarantined"]

    helpdesk = sign_in(web_app, "helpdesk@msp.test")
    token = csrf_token(text(helpdesk.get(f"/console/tracking/{theirs}")))
    assert helpdesk.post(f"/console/tracking/{theirs}/act", data={"action": "block", "csrf_token": token}
                         ).status_code == 404, "the helpdesk releases but does not edit lists"
    assert helpdesk.post(f"/console/tracking/{theirs}/act", data={"action": "release", "csrf_token": token}
                         ).status_code == 302
    assert _statuses(cfg, theirs) == ["queued"]
    entry = read(cfg, lambda s: s.scalars(select(AuditEntry).where(AuditEntry.action == "tracking.release")).one())
    assert entry.actor == "helpdesk@msp.test" and entry.tenant_id == beta
