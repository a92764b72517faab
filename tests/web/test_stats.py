"""Statistics: the roll-up job's counts, its idempotence, usage metering, and the pages and exports built on it."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any
from xml.etree import ElementTree

import pytest
from sqlalchemy import func, select

from tenants import stats
from tenants.models import RollupState, StatHour, StatTop, UsageMonth, utcnow
from tenants.platform import db as tdb
from tenants.scope import tenant_scope
from tests.integration.test_ingress import client, make_mail
from tests.support.web import read, sign_in, text
from tests.web.test_tracking import BASE, put
from worker import rollup as r
from worker.scheduler import periodic_jobs

NOW = BASE + timedelta(days=1)


@pytest.fixture
def mails(cfg, world) -> dict[str, Any]:
    """Known mail of Acme over two hours of one day, and one mail of Beta."""
    acme, beta = world["acme"].id, world["beta"].id
    h0, h1 = BASE, BASE + timedelta(hours=1)
    put(cfg, acme, at=h0, size=100, rcpts=("bob@acme.test", "Carol@acme.test"), sender="news@vendor.example")
    put(cfg, acme, at=h0 + timedelta(minutes=10), size=200, rcpts=("bob@acme.test",), sender="news@vendor.example")
    put(cfg, acme, at=h0 + timedelta(minutes=20), size=300, rcpts=("dave@acme2.test",), verdict="tag")
    put(cfg, acme, at=h1, size=400, verdict="quarantine", kind="spam", client_ip="203.0.113.9")
    put(cfg, acme, at=h1 + timedelta(minutes=1), size=500, verdict="quarantine", kind="virus",
        findings=[("CLAM_VIRUS", 100.0, "Eicar-Test-Signature")])
    put(cfg, acme, at=h1 + timedelta(minutes=2), size=600, verdict="reject",
        explanation="reject (spam): score 20 >= reject 15")
    put(cfg, acme, at=h1 + timedelta(minutes=3), size=700, direction="outbound", sender="it@acme.test",
        rcpts=("someone@else.example",))
    put(cfg, beta, at=h0, size=1000, rcpts=("bob@beta.test",))
    return {"acme": acme, "beta": beta}


def hours(cfg, tenant_id: int) -> dict[tuple[Any, str, str], dict[str, int]]:
    def q(s: Any) -> dict[tuple[Any, str, str], dict[str, int]]:
        rows = s.scalars(select(StatHour).where(StatHour.tenant_id == tenant_id))
        return {(h.hour, h.direction, h.domain): {c: getattr(h, c) for c in stats.COUNTERS} for h in rows}
    return read(cfg, q)


def tops(cfg, tenant_id: int, kind: str) -> dict[str, int]:
    return read(cfg, lambda s: {t.key: t.count for t in s.scalars(
        select(StatTop).where(StatTop.tenant_id == tenant_id, StatTop.kind == kind))})


def usage_rows(cfg) -> dict[tuple[int, str], tuple[int, int, int]]:
    return read(cfg, lambda s: {(u.tenant_id, u.month): (u.mails, u.bytes, u.mailboxes)
                                for u in s.scalars(select(UsageMonth))})


def test_rollup_counts_match_the_mail(cfg, mails):
    report = r.rollup(cfg, now=NOW)
    assert report.messages == 8 and report.tenants >= 2
    acme = mails["acme"]
    got = hours(cfg, acme)
    h0, h1 = BASE, BASE + timedelta(hours=1)
    assert got[(h0, "inbound", "acme.test")] == {"mails": 2, "bytes": 300, "delivered": 2, "tagged": 0, "spam": 0,
                                                 "virus": 0, "attachment": 0, "rejected": 0}
    assert got[(h0, "inbound", "acme2.test")]["tagged"] == 1
    spammy = got[(h1, "inbound", "acme.test")]
    assert (spammy["mails"], spammy["spam"], spammy["virus"], spammy["bytes"]) == (2, 1, 1, 900)
    assert got[(h1, "inbound", r.NO_DOMAIN)]["rejected"] == 1  # a rejected mail has no recipient row
    assert got[(h1, "outbound", "acme.test")]["mails"] == 1  # outbound counts under the sender's domain
    assert sum(v["mails"] for v in got.values()) == 7
    assert tops(cfg, acme, "virus") == {"Eicar-Test-Signature": 1}
    assert tops(cfg, acme, "reject_reason") == {"spam": 1}  # a short stable reason (tenants.tracking.reject_reason)
    assert tops(cfg, acme, "spam_source")["203.0.113.9"] == 1
    assert tops(cfg, acme, "sender")["news@vendor.example"] == 2
    assert tops(cfg, acme, "rcpt") == {"bob@acme.test": 4, "carol@acme.test": 1, "dave@acme2.test": 1}
    month = BASE.strftime("%Y-%m")
    assert usage_rows(cfg)[(acme, month)] == (6, 2800, 3)  # refused mail is not billed (its bytes are)
    assert usage_rows(cfg)[(mails["beta"], month)] == (1, 1000, 1)
    assert read(cfg, lambda s: s.get(RollupState, r.STATE_NAME).until) == NOW - r.SAFETY_LAG


def test_rerunning_the_rollup_does_not_double_count(cfg, mails):
    r.rollup(cfg, now=NOW)
    first = (hours(cfg, mails["acme"]), tops(cfg, mails["acme"], "rcpt"), usage_rows(cfg))
    r.rollup(cfg, now=NOW)
    r.rollup(cfg, now=NOW, since=BASE - timedelta(days=3))  # an explicit re-run over an older window
    assert (hours(cfg, mails["acme"]), tops(cfg, mails["acme"], "rcpt"), usage_rows(cfg)) == first


def test_new_mail_after_the_watermark_is_added_once(cfg, world):
    acme = world["acme"].id
    now = utcnow()
    put(cfg, acme, at=now - timedelta(minutes=30), size=10)
    r.rollup(cfg, now=now)
    put(cfg, acme, at=now - timedelta(minutes=1), size=10)  # inside the safety lag of the next run
    for later in (0, 5, 10):
        r.rollup(cfg, now=now + timedelta(minutes=later))
        total = read(cfg, lambda s: s.scalar(select(func.sum(StatHour.mails)).where(StatHour.tenant_id == acme)))
        assert total == 2


def test_usage_counts_distinct_mailboxes_over_the_month(cfg, world):
    acme = world["acme"].id
    start = BASE.replace(day=1, hour=12)
    for i, rcpt in enumerate(["bob@acme.test", "BOB@acme.test", "carol@acme.test", "bob@acme.test"]):
        put(cfg, acme, at=start + timedelta(days=i % 2, hours=i), rcpts=(rcpt,), size=1)
    put(cfg, acme, at=start, direction="outbound", sender="bob@acme.test", rcpts=("x@else.example",), size=1)
    r.rollup(cfg, now=NOW)
    assert usage_rows(cfg)[(acme, BASE.strftime("%Y-%m"))] == (5, 5, 2)  # outbound recipients are not mailboxes


def test_stats_reads_only_the_rollup_tables(cfg, mails):
    r.rollup(cfg, now=NOW)
    with tenant_scope(mails["acme"]), tdb.session_scope(cfg) as s:
        rep = stats.report(s, stats.span(BASE.date(), BASE.date()))
    assert rep.total["mails"] == 7 and rep.total["virus"] == 1
    assert rep.hours[BASE.hour]["mails"] == 3 and rep.hours[BASE.hour + 1]["mails"] == 4
    assert [d.label for d in rep.days] == [BASE.date().isoformat()]
    assert {d for _, d, _ in rep.domains} == {"acme.test", "acme2.test", r.NO_DOMAIN}
    assert rep.tops["virus"] == [("Eicar-Test-Signature", 1)]


def test_stats_page_draws_svg_charts_with_the_numbers(cfg, mails, web_app):
    r.rollup(cfg, now=NOW)
    c = sign_in(web_app, "auditor@acme.test")
    day = BASE.date().isoformat()
    resp = c.get(f"/portal/stats?since={day}&until={day}")
    assert resp.status_code == 200
    page = text(resp)
    assert page.count("<svg class=\"chart\"") == 2
    assert 'class="bar delivered"' in page and 'class="bar virus"' in page and 'class="bar mails"' in page
    assert "<script" not in page and "style=" not in page  # CSP: no inline script or style needed
    start = page.index('<svg class="chart"')
    daily = page[start:page.index("</svg>", start) + len("</svg>")]
    bars = ElementTree.fromstring(daily).findall("{http://www.w3.org/2000/svg}rect")
    # One day, one stacked bar: a segment per outcome that happened (no attachment), each titled with its number.
    assert [b.get("class") for b in bars] == [f"bar {x}" for x in ("delivered", "tagged", "spam", "virus", "rejected")]
    assert bars[0].findtext("{http://www.w3.org/2000/svg}title") == f"{day} delivered: 3"
    assert "Eicar-Test-Signature" in page and "acme2.test" in page
    assert "bob@beta.test" not in page and "beta.test" not in page
    rows = list(csv.reader(io.StringIO(text(c.get(f"/portal/stats/export.csv?since={day}&until={day}")))))
    assert rows[0] == ["section", "key", *stats.COUNTERS]
    assert ["total", "", "7", "2800", "3", "1", "1", "1", "0", "1"] in rows
    assert c.get("/portal/stats?since=2026-02-10&until=2026-01-01").status_code == 400


def test_console_stats_msp_wide_and_per_tenant(cfg, mails, web_app):
    r.rollup(cfg, now=NOW)
    c = sign_in(web_app, "admin@msp.test")
    day = BASE.date().isoformat()
    everyone = list(csv.reader(io.StringIO(text(c.get(f"/console/stats/export.csv?since={day}&until={day}")))))
    assert next(row for row in everyone if row[0] == "total")[2] == "8"
    beta = list(csv.reader(io.StringIO(text(
        c.get(f"/console/stats/export.csv?since={day}&until={day}&tenant={mails['beta']}")))))
    assert next(row for row in beta if row[0] == "total")[2] == "1"
    assert ["domain", "Beta/beta.test"] == next(row for row in beta if row[0] == "domain")[:2]
    page = text(c.get(f"/console/stats?since={day}&until={day}"))
    assert "<svg" in page and "Beta" in page and "Acme" in page


def test_usage_exports_for_the_msp(cfg, mails, web_app):
    r.rollup(cfg, now=NOW)
    c = sign_in(web_app, "helpdesk@msp.test")
    month = BASE.strftime("%Y-%m")
    data = c.get(f"/console/usage.json?first={month}&last={month}").get_json()
    got = {u["tenant"]: (u["mails"], u["bytes"], u["mailboxes"]) for u in data["usage"]}
    assert got == {"Acme": (6, 2800, 3), "Beta": (1, 1000, 1)}  # the rejected mail is not billed
    rows = list(csv.reader(io.StringIO(text(c.get(f"/console/usage.csv?tenant={mails['beta']}")))))
    assert rows == [["month", "tenant_id", "tenant", "mails", "bytes", "mailboxes"],
                    [month, str(mails["beta"]), "Beta", "1", "1000", "1"]]
    assert "Acme" in text(c.get("/console/usage"))
    assert c.get("/console/usage.json?first=2026-13").status_code == 400


@pytest.mark.parametrize("path", ["/console/usage", "/console/usage.csv", "/console/usage.json", "/console/stats",
                                  "/console/stats/export.csv"])
def test_msp_statistics_are_404_for_tenant_roles(web_app, world, path):
    for email in ("admin@acme.test", "auditor@acme.test", "user@acme.test"):
        assert sign_in(web_app, email).get(path).status_code == 404, email


def test_portal_statistics_are_404_for_end_users(web_app, world):
    c = sign_in(web_app, "user@acme.test")
    assert c.get("/portal/stats").status_code == 404
    assert c.get("/portal/stats/export.csv").status_code == 404


def test_the_scheduler_runs_the_rollup_every_few_minutes():
    job = next(j for j in periodic_jobs() if j.name == "rollup")
    assert job.run is r.enqueue_rollup and job.interval(None) == r.ROLLUP_INTERVAL <= 600  # type: ignore[arg-type]


def test_mail_through_the_ingress_is_counted(env, cfg, ingress, acme, sink):
    with client(env) as c:
        c.sendmail("alice@sender.example", ["bob@acme.test"], make_mail("bob@acme.test", "Counted"))
    sink.wait_count(1)
    r.rollup(cfg, now=utcnow() + r.SAFETY_LAG)
    with tenant_scope(acme.id), tdb.session_scope(cfg) as s:
        rep = stats.report(s, stats.span(None, None))
    assert rep.total["mails"] == 1 and rep.total["delivered"] + rep.total["tagged"] == 1
    assert rep.tops["rcpt"] == [("bob@acme.test", 1)]


def test_chart_axis_labels_are_true_values_at_their_lines():
    """Every grid line's label is the value at that height: whole, evenly spaced, reaching the tallest bar."""
    import re

    from app.stats import TICKS, _axis, _nice_max

    for tallest in (0, 1, 3, 4, 5, 7, 9, 130, 999, 1001, 25_000):
        top = _nice_max(tallest)
        assert top >= tallest and top % TICKS == 0, tallest
        labels = [int(v) for v in re.findall(r">(\d+)</text>", "".join(_axis(top, 100.0)))]
        step = top // TICKS
        assert labels == [i * step for i in range(TICKS + 1)], (tallest, labels)
