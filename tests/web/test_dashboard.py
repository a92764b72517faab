"""The MSP dashboard on the console home (tenants/dashboard.py): mail and verdicts of the last 24 hours, the queue,
held mail, processes down, the virus scanner, unverified domains and failing DNS checks, each linked to its page;
and the tenant list, searched, sorted and paged in SQL for a thousand tenants."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import event, insert, select, update
from sqlalchemy.engine import Engine

from app import create_app
from tenants import dashboard, dnscache, dnsreadiness
from tenants.models import Delivery, Domain, Heartbeat, Msp, RollupState, StatHour, Tenant, utcnow
from tenants.platform import db as tdb
from tenants.scope import msp_scope, tenant_scope
from tests.support.web import read, sign_in, text
from tests.web.test_tracking import put
from worker import rollup

NOW = utcnow()


def board(cfg: Any, **kwargs: Any) -> dashboard.Dashboard:
    client = redis.Redis.from_url(cfg.effective_redis_url)
    with msp_scope(), tdb.session_scope(cfg) as s:
        return dashboard.build(s, cfg, client, **kwargs)


def tenant_page(cfg: Any, **query: str) -> dashboard.TenantPage:
    with msp_scope(), tdb.session_scope(cfg) as s:
        return dashboard.tenant_page(s, dashboard.list_args(query.get("q"), query.get("sort"), query.get("dir"),
                                                            query.get("page")))


def cache(cfg: Any, client: Any, domain: Domain, items: list[Any], hostname: str | None = None) -> None:
    """Store a domain's checklist as the worker does (tenants.dnscache, worker.dnscheck)."""
    digest = read(cfg, lambda s: dnscache.inputs(s, cfg, s.get(Domain, domain.id)))
    dnscache.write(client, domain, items, hostname=hostname or cfg.hostname, digest=digest)


def write(cfg: Any, fn: Any) -> None:
    with msp_scope(), tdb.session_scope(cfg) as s:
        fn(s)


@pytest.fixture
def mails(cfg: Any, world: dict[str, Any]) -> dict[str, Any]:
    """Known mail: some rolled up by the statistics job, some after its watermark, some older than 24 hours."""
    acme, beta = world["acme"].id, world["beta"].id
    now = utcnow()
    ids = {
        "old": put(cfg, acme, at=now - timedelta(hours=30), status="delivered"),  # outside the window
        "d1": put(cfg, acme, at=now - timedelta(hours=5), status="delivered"),
        "d2": put(cfg, beta, at=now - timedelta(hours=4), status="delivered"),
        "tag": put(cfg, acme, at=now - timedelta(hours=3), verdict="tag", status="delivered"),
        "spam": put(cfg, acme, at=now - timedelta(hours=3), verdict="quarantine", kind="spam"),
        "out": put(cfg, acme, at=now - timedelta(hours=2), direction="outbound", sender="it@acme.test",
                   rcpts=("x@else.example",), status="delivered"),
    }
    rollup.rollup(cfg, now=now)
    # After the roll-up: read from the message table.
    later = utcnow()
    ids["virus"] = put(cfg, acme, at=later, verdict="quarantine", kind="virus",
                       findings=[("CLAM_VIRUS", 100.0, "Eicar-Test-Signature")])
    ids["reject"] = put(cfg, beta, at=later, verdict="reject", explanation="reject (spam): score 20 >= reject 15")
    ids["deferred"] = put(cfg, acme, at=later, status="deferred")
    write(cfg, lambda s: s.execute(update(Delivery).where(Delivery.message_id == ids["deferred"])
                                   .values(created_at=later - timedelta(hours=3, minutes=5))))
    return {"acme": acme, "beta": beta, **ids}


def test_mail_verdicts_queue_and_held_figures(cfg, mails):
    b = board(cfg)
    assert b.mail.directions == {"inbound": 7, "outbound": 1, "bounce": 0}
    assert b.mail.verdicts == {"deliver": 4, "tag": 1, "quarantine": 2, "reject": 1}
    assert b.mail.percent("deliver") == 50.0 and b.mail.percent("reject") == 12.5
    assert b.queue.by_status["deferred"] == 1 and b.queue.depth == 1
    assert b.queue.oldest_age is not None and timedelta(hours=3) <= b.queue.oldest_age < timedelta(hours=4)
    assert dashboard.duration(b.queue.oldest_age).startswith("3 h")
    assert b.queue.held == {"spam": 1, "virus": 1}
    assert (b.tenants, b.suspended) == (2, 0)


def test_mail_is_counted_once_whether_rolled_up_or_not(cfg, mails):
    """Running the roll-up again (now covering the newer mail too) changes no figure: no mail counted twice."""
    before = board(cfg).mail
    rollup.rollup(cfg, now=utcnow() + rollup.SAFETY_LAG + timedelta(seconds=1))
    after = board(cfg).mail
    assert (after.directions, after.verdicts) == (before.directions, before.verdicts)


def test_the_page_shows_the_figures_with_links_to_what_fixes_them(cfg, mails, web_app):
    page = text(sign_in(web_app, "helpdesk@msp.test").get("/console/"))
    assert re.search(r'data-dir="inbound">7<', page) and re.search(r'data-dir="outbound">1<', page)
    mix = page[page.index('id="dash-verdicts"'):page.index('id="dash-queue"')]
    for verdict, n, share in (("deliver", 4, "50.0"), ("reject", 1, "12.5")):
        assert re.search(rf'verdict={verdict}[^"]*">{verdict}</a></th>\s*<td class="num">{n}</td>\s*'
                         rf'<td class="num nowrap">{share} %', mix), verdict
    assert 'data-status="deferred">1<' in page and 'href="/console/tracking?status=deferred"' in page
    assert 'data-kind="virus">1<' in page and 'href="/console/tracking?status=quarantined"' in page
    oldest = page[page.index('id="dash-oldest"'):]
    assert re.match(r'id="dash-oldest">Oldest deferred:\s*<strong>3 h \d+ min</strong>', oldest)
    assert 'href="/console/stats"' in page
    # No process announced itself in this test, and MAILWARD_CLAMD is unset: both named, each with its page.
    issue = page[page.index('id="issue-processes"'):]
    assert 'href="/console/cluster"' in issue[:300] and "no ingress, worker, scheduler running" in issue[:400]
    assert 'id="issue-scanner"' in page and "MAILWARD_CLAMD is not set" in page
    # Mail per tenant in the list: Acme 6 (5 in, 1 out) in the window, Beta 2.
    assert re.search(rf'id="tenant-{mails["acme"]}">.*?data-mail="6"', page, re.S)
    assert re.search(rf'id="tenant-{mails["beta"]}">.*?data-mail="2"', page, re.S)


def test_processes_down_and_missing_kinds(cfg, world):
    now = utcnow()

    def beats(s: Any) -> None:
        for kind, seen in (("ingress", now), ("worker", now - timedelta(minutes=10)), ("scheduler", now)):
            s.add(Heartbeat(id=f"{kind}:h1:1", kind=kind, host="h1", version="t", started_at=now - timedelta(hours=1),
                            last_seen_at=seen, handled=0))
    write(cfg, beats)
    b = board(cfg, now=now)
    assert [p.kind for p in b.processes.down] == ["worker"] and b.processes.missing == ["worker"]
    assert b.processes.up == 2 and "processes down" in b.problems
    write(cfg, lambda s: s.execute(update(Heartbeat).values(last_seen_at=now)))
    b = board(cfg, now=now)
    assert b.processes.ok and "processes down" not in b.problems


def test_scanner_off_when_not_configured_or_not_answering(cfg, world):
    assert not board(cfg).scanner.on  # MAILWARD_CLAMD unset in the tests' environment
    clam = dataclasses.replace(cfg, clamd="127.0.0.1:3310")
    assert board(clam).scanner.on
    put(cfg, world["acme"].id, at=utcnow() - timedelta(minutes=20), findings=[("CLAM_TEMPFAIL", 0.0, "timeout")])
    assert board(clam).scanner.on, "a failure older than the window is over"
    put(cfg, world["acme"].id, at=utcnow(), findings=[("CLAM_TEMPFAIL", 0.0, "connection refused")])
    s = board(clam).scanner
    assert not s.on and s.failed == 1 and "clamd did not answer for 1 mail" in s.reason
    page = text(sign_in(create_app(clam), "admin@msp.test").get("/console/"))
    assert 'id="issue-scanner"' in page and "clamd did not answer" in page


def test_unverified_domains_and_failing_dns_checks_name_their_tenants(cfg, world, web_app):
    acme, beta = world["acme"].id, world["beta"].id
    write(cfg, lambda s: s.execute(update(Domain).where(Domain.name == "acme2.test").values(vouched=False)))
    client = redis.Redis.from_url(cfg.effective_redis_url)
    domains = read(cfg, lambda s: {d.name: d for d in s.scalars(select(Domain))})
    item = dnsreadiness.Item
    ok = [item("Ownership", "missing", "", ""), item("MX", "ok", "", ""), item("SPF", "ok", "", "")]
    cache(cfg, client, domains["acme.test"], ok)  # ownership alone: it has its own line
    cache(cfg, client, domains["beta.test"], [item("MX", "wrong", "", ""), item("DMARC", "missing", "", "")])
    b = board(cfg)
    assert [(t.id, t.domains) for t in b.unverified.tenants] == [(acme, 1)] and b.unverified.total == 1
    assert [(t.id, t.detail) for t in b.dns.tenants] == [(beta, "DMARC, MX")] and b.dns.total == 1
    page = text(sign_in(web_app, "admin@msp.test").get("/console/"))
    unverified = page[page.index('id="issue-unverified"'):]
    assert f'href="/console/tenants/{acme}">Acme</a> (1)' in unverified[:600]
    dns = page[page.index('id="issue-dns"'):]
    assert f'href="/console/tenants/{beta}">Beta</a> (DMARC, MX)' in dns[:600]
    # A result checked for another host name is not current: not counted.
    cache(cfg, client, domains["beta.test"], [item("MX", "wrong", "", "")], hostname="old.example")
    assert board(cfg).dns.total == 0


def test_dashboard_and_list_are_msp_only(cfg, web_app, world):
    for email in ("admin@acme.test", "auditor@acme.test", "user@acme.test"):
        c = sign_in(web_app, email)
        assert c.get("/console/").status_code == 404, email
        assert c.get("/console/?q=acme&sort=mail&dir=desc&page=1").status_code == 404, email
    with tenant_scope(world["acme"].id), tdb.session_scope(cfg) as s:
        with pytest.raises(PermissionError):
            dashboard.tenant_page(s, dashboard.ListArgs())
        with pytest.raises(PermissionError):
            dashboard.build(s, cfg, redis.Redis.from_url(cfg.effective_redis_url))


def test_bad_list_arguments_are_refused_with_a_message(web_app, world):
    c = sign_in(web_app, "admin@msp.test")
    for query, why in (("sort=size", "sort &#39;size&#39;"), ("dir=up", "direction &#39;up&#39;"),
                       ("page=0", "page &#39;0&#39;"), ("page=x", "page &#39;x&#39;")):
        resp = c.get(f"/console/?{query}")
        assert resp.status_code == 400 and why in text(resp), query
        assert "Acme" in text(resp), "the default list is still shown"


# --- a thousand tenants ---------------------------------------------------------------------------------------------

N = 1000


@pytest.fixture
def thousand(cfg: Any, factory: Any) -> dict[str, Any]:
    """1,000 tenants inserted in bulk: tenant i owns i % 4 domains ``tNNNN-k.example``, was created i minutes after
    a base time, every 7th is suspended, and tenant 0500 had the most mail in the last hours (roll-up rows)."""
    factory.user("admin@msp.test", "msp_admin")
    base = utcnow() - timedelta(days=30)
    hour = utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)

    def fill(s: Any) -> None:
        msp_id = s.scalar(select(Msp.id))
        if msp_id is None:
            s.add(Msp(name="MSP"))
            s.flush()
            msp_id = s.scalar(select(Msp.id))
        s.execute(insert(Tenant), [{"msp_id": msp_id, "name": f"Tenant {i:04d}", "suspended": i % 7 == 0,
                                    "created_at": base + timedelta(minutes=i)} for i in range(N)])
        ids = {name: tid for tid, name in s.execute(select(Tenant.id, Tenant.name))}
        s.execute(insert(Domain), [{"tenant_id": ids[f"Tenant {i:04d}"], "name": f"t{i:04d}-{k}.example",
                                    "transport_host": "127.0.0.1", "transport_port": 25, "transport_tls": "none",
                                    "vouched": True, "verified": False, "created_at": base}
                                   for i in range(N) for k in range(i % 4)])
        s.execute(insert(StatHour), [{"tenant_id": ids[f"Tenant {i:04d}"], "hour": hour, "direction": "inbound",
                                      "domain": f"t{i:04d}-1.example", "mails": 1000 if i == 500 else i % 10,
                                      "bytes": 0, "delivered": 0, "tagged": 0, "spam": 0, "virus": 0,
                                      "attachment": 0, "rejected": 0} for i in range(N)])
        s.merge(RollupState(name=rollup.STATE_NAME, until=utcnow()))  # the roll-up has read up to now
    write(cfg, fill)
    return {"ids": read(cfg, lambda s: {n: i for i, n in s.execute(select(Tenant.id, Tenant.name))})}


def test_thousand_tenants_count_page_and_search(cfg, thousand):
    first = tenant_page(cfg)
    assert first.total == N and first.pages == 20 and len(first.rows) == 50
    assert [r.name for r in first.rows[:3]] == ["Tenant 0000", "Tenant 0001", "Tenant 0002"]
    assert first.rows[3].domains == 3 and first.rows[0].suspended and not first.rows[1].suspended
    last = tenant_page(cfg, page="20")
    assert last.rows[-1].name == "Tenant 0999" and (last.first, last.last) == (951, 1000)
    assert tenant_page(cfg, page="999").page == 20, "a page past the end shows the last one"
    seen = set()
    for p in range(1, 21):
        seen |= {r.id for r in tenant_page(cfg, page=str(p)).rows}
    assert len(seen) == N, "paging shows every tenant exactly once"
    by_domain = tenant_page(cfg, q="T0999-2.EXAMPLE")  # a domain's name, any case
    assert [r.name for r in by_domain.rows] == ["Tenant 0999"] and by_domain.total == 1
    by_name = tenant_page(cfg, q="tenant 09")
    assert by_name.total == 100 and by_name.pages == 2
    assert tenant_page(cfg, q="100%").total == 0, "LIKE wildcards in the search are plain characters"
    assert tenant_page(cfg, q="0_0").total == 0


def test_thousand_tenants_sort_in_sql(cfg, thousand):
    assert tenant_page(cfg, sort="mail").rows[0].name == "Tenant 0500"  # most mail first by default
    assert tenant_page(cfg, sort="mail", dir="desc").rows[0].mail == 1000
    assert tenant_page(cfg, sort="created").rows[0].name == "Tenant 0999"  # newest first
    assert tenant_page(cfg, sort="created", dir="asc").rows[0].name == "Tenant 0000"
    most = tenant_page(cfg, sort="domains")
    assert {r.domains for r in most.rows} == {3} and most.rows[0].name == "Tenant 0003"
    fewest = tenant_page(cfg, sort="domains", dir="asc", page="5")
    assert {r.domains for r in fewest.rows} == {0}
    suspended = tenant_page(cfg, sort="status")
    assert all(r.suspended for r in suspended.rows) and suspended.rows[0].name == "Tenant 0000"
    assert tenant_page(cfg, sort="name", dir="desc").rows[0].name == "Tenant 0999"


@pytest.fixture
def statements(cfg: Any) -> Iterator[list[str]]:
    """Every SQL statement executed while the list is open."""
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)
    event.listen(Engine, "before_cursor_execute", count)
    yield seen
    event.remove(Engine, "before_cursor_execute", count)


def test_thousand_tenants_page_renders_with_count_and_links(cfg, thousand, web_app, statements):
    c = sign_in(web_app, "admin@msp.test")
    c.get("/console/")  # warm up (first-request look-ups)
    statements.clear()
    resp = c.get("/console/?sort=name&dir=asc&page=2")
    fifty = len(statements)
    assert resp.status_code == 200
    page = text(resp)
    assert "1,000 tenants" in page and "51–100 shown, page 2 of 20" in page
    assert page.count('<tbody class="tenant"') == 50
    assert 'rel="prev" href="/console/?sort=name&amp;dir=asc&amp;page=1#tenants"' in page
    assert 'rel="next" href="/console/?sort=name&amp;dir=asc&amp;page=3#tenants"' in page
    table = page[page.index('id="tenant-list"'):page.index("</table>", page.index('id="tenant-list"'))]
    assert "Tenant 0050" in table and "Tenant 0099" in table and "Tenant 0100" not in table
    assert "t0051-1.example" in table
    statements.clear()
    found = text(c.get("/console/?q=t0777"))
    # A fixed number of queries: nothing is asked per tenant (fifty tenants on a page cost what one does).
    assert len(statements) == fifty, (len(statements), fifty)
    assert "1 tenant matching" in found and "Tenant 0777" in found and 'rel="next"' not in found
    assert "No tenant's name or domain contains" in text(c.get("/console/?q=nothing-like-this"))
