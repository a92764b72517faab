"""The message tracking center: search filters, keyset paging, timelines, CSV export, tenant isolation."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from smtp.mailstore import NewMessage, store_message
from tenants import tracking
from tenants.exceptions import NotFound, ValidationError
from tenants.ids import new_id
from tenants.models import AuditEntry, Delivery, Message, MessageView
from tenants.platform import db as tdb
from tenants.platform.config import Config
from tenants.scope import msp_scope, tenant_scope
from tests.integration.test_ingress import client, make_mail
from tests.support.servers import wait_for
from tests.support.web import read, sign_in, text

#: A fixed moment well inside the default ranges of the pages (yesterday, 10:00 UTC).
BASE = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0) - timedelta(days=1)


def put(cfg: Config, tenant_id: int, *, at: datetime, rcpts: Sequence[str] = ("bob@acme.test",),
        sender: str = "alice@sender.example", subject: str = "Hello", verdict: str = "deliver",
        kind: str | None = None, client_ip: str | None = "198.51.100.7", direction: str = "inbound",
        findings: Sequence[tuple[str, float, str]] = (), size: int = 100, explanation: str = "",
        message_id_header: str | None = None, status: str | None = None) -> str:
    """Store one message the way the ingress does (smtp.mailstore.store_message), received at ``at``; its id."""
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        msg = store_message(s, NewMessage(
            tenant_id=tenant_id, queue_id=new_id(), mail_from=sender, rcpts=list(rcpts), data=b"x" * size,
            client_ip=client_ip, client_helo="client.sender.example", header_from=sender, subject=subject,
            message_id_header=message_id_header or f"<{new_id()}@sender.example>", verdict=verdict,
            quarantine_kind=kind, findings=findings, explanation=explanation or verdict, direction=direction,
            deliver=verdict in ("deliver", "tag"), retention_days=14 if kind else None,
        ))
        s.flush()
        s.execute(update(Message).where(Message.id == msg.id).values(received_at=at))
        if status:
            s.execute(update(Delivery).where(Delivery.message_id == msg.id).values(status=status))
        return msg.id


def walk(cfg: Config, as_tenant: int | None, limit: int, **filters: Any) -> list[str]:
    """Every page of a search, following the cursors; the ids in the order the pages gave them."""
    out: list[str] = []
    after = None
    scope = msp_scope() if as_tenant is None else tenant_scope(as_tenant)
    with scope, tdb.session_scope(cfg) as s:
        for _ in range(1000):
            page, after = tracking.search_page(s, tracking.Filters(**filters), after=after, limit=limit)
            out += [m.id for m in page]
            if after is None:
                return out
    raise AssertionError("paging did not end")


@pytest.fixture
def mails(cfg, world) -> dict[str, Any]:
    """Acme: 9 mails over three hours, three of them in the same second (ties on received_at); Beta: 3."""
    acme, beta = world["acme"].id, world["beta"].id
    same = BASE + timedelta(hours=1)
    ids = {
        "a1": put(cfg, acme, at=BASE, subject="Invoice 1", sender="billing@vendor.example"),
        "a2": put(cfg, acme, at=BASE + timedelta(minutes=5), subject="Lunch", rcpts=("carol@acme.test",)),
        "t1": put(cfg, acme, at=same, subject="Tie one"),
        "t2": put(cfg, acme, at=same, subject="Tie two", rcpts=("carol@acme.test", "bob@acme.test")),
        "t3": put(cfg, acme, at=same, subject="Tie three"),
        "spam": put(cfg, acme, at=BASE + timedelta(hours=2), subject="Cheap pills", verdict="quarantine",
                    kind="spam", client_ip="203.0.113.9", findings=[("BAYES_99", 4.0, "bayes 0.99")]),
        "mid": put(cfg, acme, at=BASE + timedelta(hours=2, minutes=1), message_id_header="<find-me@sender.example>"),
        "bounced": put(cfg, acme, at=BASE + timedelta(hours=2, minutes=2), status="bounced"),
        "out": put(cfg, acme, at=BASE + timedelta(hours=2, minutes=3), direction="outbound",
                   sender="it@acme.test", rcpts=("someone@else.example",)),
        "b1": put(cfg, beta, at=BASE, subject="Beta secret", rcpts=("bob@beta.test",)),
        "b2": put(cfg, beta, at=same, subject="Beta tie", rcpts=("bob@beta.test",)),
        "b3": put(cfg, beta, at=BASE + timedelta(hours=2), subject="Beta late", rcpts=("bob@beta.test",)),
    }
    return {"acme": acme, "beta": beta, "ids": ids}


def expected(cfg: Config, tenant_id: int | None) -> list[str]:
    """Every message of the scope, newest first, ties by id descending: what paging must reproduce."""
    def q(s: Any) -> list[str]:
        stmt = select(Message.id).order_by(Message.received_at.desc(), Message.id.desc())
        if tenant_id is not None:
            stmt = stmt.where(Message.tenant_id == tenant_id)
        return list(s.scalars(stmt))
    return read(cfg, q)


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 50])
def test_keyset_paging_returns_every_message_once_in_order(cfg, mails, limit):
    acme = mails["acme"]
    got = walk(cfg, acme, limit)
    assert got == expected(cfg, acme)
    assert len(got) == len(set(got)) == 9


def test_msp_paging_spans_tenants_and_filters_by_tenant(cfg, mails):
    assert walk(cfg, None, 2) == expected(cfg, None)
    assert len(walk(cfg, None, 2)) == 12
    assert walk(cfg, None, 2, tenant_id=mails["beta"]) == expected(cfg, mails["beta"])


def test_filters_each_narrow_the_search(cfg, mails):
    ids, acme = mails["ids"], mails["acme"]

    def find(**f: Any) -> set[str]:
        return set(walk(cfg, acme, 2, **f))

    assert find(sender="vendor.example") == {ids["a1"]}
    assert find(rcpt="CAROL@acme.test") == {ids["a2"], ids["t2"]}
    assert find(subject="tie") == {ids["t1"], ids["t2"], ids["t3"]}
    assert find(queue_id=read(cfg, lambda s: s.get(Message, ids["a2"]).queue_id)) == {ids["a2"]}
    assert find(message_id_header="find-me@sender.example") == {ids["mid"]}
    assert find(message_id_header="<find-me@sender.example>") == {ids["mid"]}
    assert find(client_ip="203.0.113.9") == {ids["spam"]}
    assert find(verdict="quarantine") == {ids["spam"]}
    assert find(status="bounced") == {ids["bounced"]}
    assert find(rcpt="bob@acme.test", status="bounced") == {ids["bounced"]}
    assert find(direction="outbound") == {ids["out"]}
    assert find(since=BASE + timedelta(hours=1), until=BASE + timedelta(hours=2)) == {ids["t1"], ids["t2"], ids["t3"]}
    assert find(subject="pill", verdict="deliver") == set()


def test_bad_filters_are_refused_with_a_reason(cfg, mails):
    with tenant_scope(mails["acme"]), tdb.session_scope(cfg) as s:
        for bad in ({"verdict": "maybe"}, {"direction": "sideways"}, {"status": "lost"}):
            with pytest.raises(ValidationError):
                tracking.search_page(s, tracking.Filters(**bad))
        with pytest.raises(ValidationError):
            tracking.search_page(s, tracking.Filters(), after="not-a-cursor")
        with pytest.raises(ValidationError):
            tracking.search_page(s, tracking.Filters(), limit=tracking.MAX_LIMIT + 1)


def test_tenant_search_never_shows_another_tenants_mail(cfg, mails):
    """Attack: a tenant searches for another tenant's recipient, subject or tenant id."""
    acme, ids = mails["acme"], mails["ids"]
    beta_ids = {ids["b1"], ids["b2"], ids["b3"]}
    assert not beta_ids & set(walk(cfg, acme, 3))
    assert walk(cfg, acme, 3, rcpt="bob@beta.test") == []
    assert walk(cfg, acme, 3, subject="Beta") == []
    assert walk(cfg, acme, 3, tenant_id=mails["beta"]) == []


def test_timeline_of_another_tenants_message_is_not_found(cfg, mails):
    with tenant_scope(mails["acme"]), tdb.session_scope(cfg) as s:
        with pytest.raises(NotFound):
            tracking.detail(s, mails["ids"]["b1"])


def test_timeline_tells_the_whole_story(cfg, mails):
    with tenant_scope(mails["acme"]), tdb.session_scope(cfg) as s:
        steps = tracking.timeline(tracking.detail(s, mails["ids"]["spam"]))
    kinds = [st.kind for st in steps]
    assert kinds[:2] == ["connect", "received"]
    assert "203.0.113.9" in steps[0].detail and "client.sender.example" in steps[0].detail
    finding = next(st for st in steps if st.kind == "finding")
    assert finding.detail == "BAYES_99: bayes 0.99" and finding.score == 4.0
    assert any(st.kind == "verdict" and "quarantine (spam)" in st.detail for st in steps)
    assert any(st.kind == "status" and "bob@acme.test: quarantined" in st.detail for st in steps)


def test_csv_export_has_every_match_and_defuses_formulas(cfg, world, web_app):
    acme = world["acme"].id
    for i in range(5):
        put(cfg, acme, at=BASE + timedelta(minutes=i), subject=f"Report {i}")
    put(cfg, acme, at=BASE + timedelta(minutes=9), subject="=HYPERLINK(\"http://evil.example\")")
    put(cfg, world["beta"].id, at=BASE, subject="Report beta", rcpts=("bob@beta.test",))
    c = sign_in(web_app, "auditor@acme.test")
    resp = c.get("/portal/tracking/export.csv?subject=Report")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(text(resp))))
    assert rows[0] == list(tracking.EXPORT_COLUMNS)
    assert [r[8] for r in rows[1:]] == [f"Report {i}" for i in reversed(range(5))]
    everything = list(csv.reader(io.StringIO(text(c.get("/portal/tracking/export.csv")))))
    assert len(everything) == 1 + 6
    assert "'=HYPERLINK(\"http://evil.example\")" in [r[8] for r in everything]
    with tenant_scope(acme), tdb.session_scope(cfg) as s:
        assert len(list(tracking.export_rows(s, tracking.Filters(), max_rows=2))) == 1 + 2


def test_portal_pages_search_show_timeline_and_record_the_view(cfg, mails, web_app):
    ids = mails["ids"]
    c = sign_in(web_app, "admin@acme.test")
    page = text(c.get("/portal/tracking?subject=tie&limit=2"))
    assert "Tie one" in page or "Tie two" in page or "Tie three" in page
    assert 'rel="next"' in page
    assert "Beta" not in page
    resp = c.get(f"/portal/tracking/{ids['spam']}")
    assert resp.status_code == 200
    body = text(resp)
    assert "BAYES_99" in body and "bayes 0.99" in body and "203.0.113.9" in body
    views = read(cfg, lambda s: [(v.user_email, v.tenant_id) for v in
                                 s.scalars(select(MessageView).where(MessageView.message_id == ids["spam"]))])
    assert views == [("admin@acme.test", mails["acme"])]
    c.get("/portal/tracking/export.csv?verdict=quarantine")
    audit = read(cfg, lambda s: [(a.actor, a.action, a.target, a.detail, a.tenant_id) for a in
                                 s.scalars(select(AuditEntry).where(AuditEntry.action.like("tracking.%"))
                                           .order_by(AuditEntry.id))])
    assert audit == [("admin@acme.test", "tracking.view", f"message {ids['spam']}", "", mails["acme"]),
                     ("admin@acme.test", "tracking.export", "message search", "verdict=quarantine", mails["acme"])]
    assert c.get("/portal/tracking?verdict=maybe").status_code == 422


def test_other_tenants_timeline_is_404_in_the_portal(cfg, mails, web_app):
    """Attack: Beta's admin opens Acme's message by id (guessed or leaked); same answer as a missing one."""
    c = sign_in(web_app, "admin@beta.test")
    assert c.get(f"/portal/tracking/{mails['ids']['a1']}").status_code == 404
    assert c.get("/portal/tracking/NOSUCHMESSAGE").status_code == 404
    assert "Invoice 1" not in text(c.get("/portal/tracking"))
    assert "Invoice 1" not in text(c.get("/portal/tracking/export.csv"))
    assert read(cfg, lambda s: s.scalars(select(MessageView)).all()) == []
    viewed = select(AuditEntry.action).where(AuditEntry.action == "tracking.view")
    assert read(cfg, lambda s: s.scalars(viewed).all()) == []


def test_console_searches_across_tenants_with_a_tenant_filter(cfg, mails, web_app):
    ids = mails["ids"]
    c = sign_in(web_app, "helpdesk@msp.test")
    page = text(c.get("/console/tracking?limit=50"))
    assert "Invoice 1" in page and "Beta secret" in page
    only_beta = text(c.get(f"/console/tracking?tenant={mails['beta']}"))
    assert "Beta secret" in only_beta and "Invoice 1" not in only_beta
    resp = c.get(f"/console/tracking/{ids['b1']}")
    assert resp.status_code == 200 and "Beta" in text(resp)
    rows = list(csv.reader(io.StringIO(text(c.get(f"/console/tracking/export.csv?tenant={mails['beta']}")))))
    assert len(rows) == 1 + 3


@pytest.mark.parametrize("path", ["/console/tracking", "/console/tracking/export.csv"])
def test_console_tracking_is_404_for_tenant_roles(web_app, world, path):
    for email in ("admin@acme.test", "auditor@acme.test", "user@acme.test"):
        assert sign_in(web_app, email).get(path).status_code == 404


def test_portal_tracking_is_404_for_end_users(web_app, world):
    c = sign_in(web_app, "user@acme.test")
    assert c.get("/portal/tracking").status_code == 404
    assert c.get("/portal/tracking/export.csv").status_code == 404


def test_mail_through_the_ingress_shows_up_with_findings_and_the_delivery_reply(env, cfg, ingress, acme, sink,
                                                                                  factory, web_app):
    factory.user("admin@acme.test", "tenant_admin", acme)
    with client(env) as c:
        assert c.sendmail("alice@sender.example", ["bob@acme.test"], make_mail("bob@acme.test", "Tracked")) == {}
    sink.wait_count(1)

    def delivered() -> bool:
        return read(cfg, lambda s: s.scalars(select(Delivery.status)).all()) == ["delivered"]

    wait_for(delivered, 10, what="delivered row")
    mid = read(cfg, lambda s: s.scalars(select(Message.id)).one())
    findings = read(cfg, lambda s: [(f.symbol, f.reason) for f in
                                    tracking.detail(s, mid).findings])
    browser = sign_in(web_app, "admin@acme.test")
    page = text(browser.get("/portal/tracking?rcpt=bob@acme.test&sender=alice"))
    assert "Tracked" in page and f"/portal/tracking/{mid}" in page
    body = text(browser.get(f"/portal/tracking/{mid}"))
    assert "250 2.0.0 Ok: sunk" in body  # the remote reply of the delivery attempt
    assert "127.0.0.1" in body and "client.sender.example" in body
    assert findings  # the checks always say something (SPF, DMARC, ... of a loopback sender)
    for symbol, _ in findings:
        assert symbol in body
    assert "delivered" in body


def test_substring_searches_have_trigram_indexes_on_postgresql(cfg, session):
    """Sender, header From and subject "contains" searches use pg_trgm GIN indexes on PostgreSQL (migration 0007);
    SQLite has none (and needs none at its size)."""
    from sqlalchemy import inspect

    names = {ix["name"] for ix in inspect(session.get_bind()).get_indexes("message")}
    trigram = {"ix_message_mail_from_trgm", "ix_message_header_from_trgm", "ix_message_subject_trgm"}
    if cfg.effective_database_url.startswith("postgresql"):
        assert trigram <= names
    else:
        assert not trigram & names
