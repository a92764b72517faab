"""The cluster view: processes announce themselves with heartbeats; silent ones show as down; old rows go away."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from tenants.models import Heartbeat, utcnow
from tenants.platform import db as tdb
from tenants.platform import heartbeat
from tests.support.servers import wait_for
from tests.support.web import read, sign_in, text


def _rows(cfg: Any) -> list[Heartbeat]:
    return read(cfg, lambda s: list(s.scalars(select(Heartbeat).order_by(Heartbeat.id))))


def test_cluster_view_lists_a_running_ingress(web_app, world, cfg, ingress):
    row = wait_for(lambda: next((r for r in _rows(cfg) if r.kind == "ingress"), None), 20, what="ingress heartbeat")
    assert row.id == f"ingress:{row.host}:{ingress.proc.pid}"
    client = sign_in(web_app, "admin@msp.test")
    page = text(client.get("/console/cluster"))
    assert f'id="proc-{row.id}"' in page
    line = page.split(f'id="proc-{row.id}"', 1)[1].split("</tr>", 1)[0]
    assert "ingress" in page and "badge ok" in line and str(ingress.proc.pid) in line


def test_a_silent_process_is_shown_as_down(web_app, world, cfg):
    now = utcnow()
    me = heartbeat.Identity("worker", "node-7", 4242, now - timedelta(hours=1))
    with tdb.session_scope(cfg) as s:
        heartbeat.beat(s, me, 17, now=now - heartbeat.STALE_AFTER - timedelta(seconds=5))
        heartbeat.beat(s, heartbeat.Identity("web", "node-8", 1, now), 3, now=now)
    client = sign_in(web_app, "helpdesk@msp.test")
    page = text(client.get("/console/cluster"))
    stale = page.split('id="proc-worker:node-7:4242"', 1)[1].split("</tr>", 1)[0]
    fresh = page.split('id="proc-web:node-8:1"', 1)[1].split("</tr>", 1)[0]
    assert "badge bad" in stale and ">down<" in stale and "17" in stale
    assert "badge ok" in fresh


def test_tenant_roles_cannot_see_the_cluster(web_app, world):
    for email in ("admin@acme.test", "auditor@acme.test", "user@acme.test"):
        assert sign_in(web_app, email).get("/console/cluster").status_code == 404


def test_long_silent_rows_are_pruned_by_the_next_beat(cfg):
    now = utcnow()
    old = heartbeat.Identity("scheduler", "gone", 9, now - timedelta(days=3))
    with tdb.session_scope(cfg) as s:
        heartbeat.beat(s, old, 0, now=now - heartbeat.PRUNE_AFTER - timedelta(minutes=1))
    assert [r.id for r in _rows(cfg)] == ["scheduler:gone:9"]
    with tdb.session_scope(cfg) as s:
        heartbeat.beat(s, heartbeat.Identity("worker", "here", 1, now), 5, now=now)
    assert [(r.id, r.handled) for r in _rows(cfg)] == [("worker:here:1", 5)]


def test_heartbeat_thread_beats_and_removes_its_row_on_stop(cfg):
    count = iter(range(100))
    thread = heartbeat.HeartbeatThread(cfg, "worker", lambda: next(count), interval=0.05)
    thread.start()
    wait_for(lambda: any(r.id == thread.me.id and r.handled >= 2 for r in _rows(cfg)), 10, what="beats")
    thread.stop()
    assert all(r.id != thread.me.id for r in _rows(cfg))


def test_web_process_beats_only_when_asked(cfg):
    from app import create_app

    create_app(cfg)
    assert _rows(cfg) == []
