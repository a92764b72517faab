"""Prometheus metrics: the web's /metrics (the cluster, from Redis and the database) and the ingress's metrics port.

Mail goes through the real ingress (a child process, as in tests/integration/test_ingress.py); the web is scraped
through the Flask test client; the ingress's port over HTTP.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text

from tenants.exceptions import ConfigError
from tenants.metrics import MAIL_COUNTS_KEY, count_in_redis
from tenants.models import Delivery, Message
from tenants.platform import db as tdb
from tenants.platform.config import Config, _networks
from tenants.scope import msp_scope
from tests.integration.test_ingress import client, make_mail, smtp_port
from tests.integration.test_ingress_processes import _start_ingress
from tests.support.held import hold
from tests.support.servers import Process, free_port, port_open, wait_for

TOKEN = "metrics-token-for-the-tests-0123456789"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition: (name, labels) → value."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def scrape_web(web: Any, token: str = TOKEN) -> Samples:
    res = web.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert res.status_code == 200, res.data
    assert res.mimetype == "text/plain"
    return parse(res.get_data(as_text=True))


def scrape_port(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as res:
        assert res.status == 200
        return parse(res.read().decode())


def send(env: dict[str, str], n: int, to: str = "bob@acme.test") -> None:
    for i in range(n):
        with client(env) as c:
            assert c.sendmail("alice@sender.example", [to], make_mail(to, f"Report {i}")) == {}


@pytest.fixture
def metrics_env(env: dict[str, str]) -> dict[str, str]:
    """The installation with the metrics port of the ingress on."""
    return {**env, "MAILWARD_METRICS_PORT": f"127.0.0.1:{free_port()}"}


def metrics_port(env: dict[str, str]) -> int:
    return int(env["MAILWARD_METRICS_PORT"].rsplit(":", 1)[1])


@pytest.fixture
def metered_ingress(metrics_env: dict[str, str], tmp_path: Path, cfg: Config) -> Iterator[Process]:
    """One ingress process with its metrics port."""
    proc = Process(["smtp"], metrics_env, tmp_path / "smtp.log").start()
    wait_for(lambda: port_open(smtp_port(metrics_env)) or proc.proc is None or proc.proc.poll() is not None, 60,
             what="ingress port")
    assert proc.proc is not None and proc.proc.poll() is None, proc.log()
    yield proc
    proc.stop()


@pytest.fixture
def web(cfg: Config) -> Any:
    from app import create_app

    return create_app(replace(cfg, metrics_token=TOKEN)).test_client()


def test_web_counts_every_mail_the_ingress_accepted_exactly(metrics_env, metered_ingress, acme, sink, web,
                                                            session) -> None:
    before = scrape_web(web)
    assert value(before, "mailward_metrics_source_up", source="redis") == 1
    assert value(before, "mailward_metrics_source_up", source="database") == 1
    assert total(before, "mailward_mails_total") == 0
    send(metrics_env, 3)
    sink.wait_count(3)
    with msp_scope():
        verdicts = Counter(session.scalars(select(Message.verdict)).all())
    assert sum(verdicts.values()) == 3
    # The ingress adds to Redis after its 250, from a task of its own: wait for it, then the counts must be exact.
    wait_for(lambda: total(scrape_web(web), "mailward_mails_total") >= 3, 10, what="mail counts in Redis")
    after = scrape_web(web)
    assert total(after, "mailward_mails_total") == 3
    for verdict, n in verdicts.items():
        assert value(after, "mailward_mails_total", direction="inbound", verdict=verdict) == n
    assert total(after, "mailward_mails_total", direction="outbound") == 0
    assert value(after, "mailward_rq_queue_length", queue="delivery") >= 0


def test_ingress_port_has_check_latencies_mail_counts_and_delivery_attempts(metrics_env, metered_ingress, acme,
                                                                           sink, session) -> None:
    send(metrics_env, 2)
    sink.wait_count(2)
    with msp_scope():
        wait_for(lambda: session.scalars(select(Delivery.status)).all() == ["delivered"] * 2 or session.rollback(),
                 10, what="delivered rows")
        verdicts = Counter(session.scalars(select(Message.verdict)).all())
    got = scrape_port(metrics_port(metrics_env))
    checks = {dict(ls)["check"] for (n, ls) in got if n == "mailward_check_duration_seconds_count"}
    assert {"spf", "dnsbl"} <= checks, checks
    for check in checks:  # a histogram per check: one observation per mail for checks that ran on each mail
        count = value(got, "mailward_check_duration_seconds_count", check=check)
        assert count >= 1
        assert value(got, "mailward_check_duration_seconds_bucket", check=check, le="+Inf") == count
    for verdict, n in verdicts.items():
        assert value(got, "mailward_ingress_mails_total", direction="inbound", verdict=verdict) == n
    assert value(got, "mailward_delivery_attempts_total", result="delivered") == 2
    assert total(got, "mailward_store_errors_total") == 0


def test_queue_depth_oldest_deferred_and_held_mail(metrics_env, metered_ingress, factory, cfg, session,
                                                   web) -> None:
    """A transport that refuses connections leaves the mail deferred; held mail counts by its quarantine kind."""
    dead = factory.tenant("Dead", ("dead.test",), transport_port=free_port())
    send(metrics_env, 1, to="carol@dead.test")
    with msp_scope():
        wait_for(lambda: session.scalars(select(Delivery.status)).all() == ["deferred"] or session.rollback(),
                 20, what="deferred row")
    hold(cfg, dead.id, rcpts=("carol@dead.test", "dave@dead.test"), kind="virus")
    hold(cfg, dead.id, rcpts=("carol@dead.test",), kind="spam")
    got = scrape_web(web)
    assert value(got, "mailward_queue_depth", status="deferred") == 1
    assert value(got, "mailward_queue_depth", status="queued") == 0
    assert value(got, "mailward_queue_oldest_deferred_age_seconds") > 0
    assert value(got, "mailward_held_mails", kind="virus") == 1  # mails, not recipients
    assert value(got, "mailward_held_mails", kind="spam") == 1
    port = scrape_port(metrics_port(metrics_env))
    assert value(port, "mailward_delivery_attempts_total", result="deferred") == 1


def test_metrics_are_refused_without_the_token(cfg, web) -> None:
    assert web.get("/metrics").status_code == 401
    assert web.get("/metrics").headers["WWW-Authenticate"].startswith("Bearer")
    assert web.get("/metrics", headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
    assert web.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert web.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_metrics_are_off_without_a_token_or_network_and_open_to_allowed_networks(cfg) -> None:
    from app import create_app
    off = create_app(cfg).test_client()
    assert off.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    allowed = create_app(replace(cfg, metrics_allow=_networks("127.0.0.0/8"))).test_client()
    assert allowed.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200
    assert allowed.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code == 404


def test_a_redis_outage_is_shown_and_does_not_break_the_scrape(cfg, tmp_path) -> None:
    from app import create_app

    down = replace(cfg, metrics_token=TOKEN, redis_url=f"unix://{tmp_path / 'no-such.sock'}")
    got = scrape_web(create_app(down).test_client())
    assert value(got, "mailward_metrics_source_up", source="redis") == 0
    assert value(got, "mailward_metrics_source_up", source="database") == 1
    assert ("mailward_queue_depth", frozenset({("status", "deferred")})) in got


def test_two_ingress_processes_are_served_merged_on_one_port(metrics_env, tmp_path, acme, sink, web) -> None:
    """Multiprocess mode: the supervisor serves the sum of its children's counters on the one metrics port."""
    ingress = _start_ingress(metrics_env, tmp_path / "smtp2.log", processes=2)
    try:
        send(metrics_env, 6)
        sink.wait_count(6)
        got = scrape_port(metrics_port(metrics_env))
        assert total(got, "mailward_ingress_mails_total", direction="inbound") == 6
        assert value(got, "mailward_check_duration_seconds_count", check="spf") == 6
        wait_for(lambda: total(scrape_web(web), "mailward_mails_total") >= 6, 10, what="mail counts in Redis")
        assert total(scrape_web(web), "mailward_mails_total") == 6
    finally:
        ingress.stop()
    assert not port_open(metrics_port(metrics_env))


def test_the_redis_counts_are_one_hash_of_direction_and_verdict(cfg, web, redis_server) -> None:
    redis_server.client().hset(MAIL_COUNTS_KEY, mapping={"inbound:deliver": 5, "outbound:quarantine": 2})
    got = scrape_web(web)
    assert value(got, "mailward_mails_total", direction="inbound", verdict="deliver") == 5
    assert value(got, "mailward_mails_total", direction="outbound", verdict="quarantine") == 2


@pytest.mark.parametrize(("name", "raw"), [
    ("MAILWARD_METRICS_PORT", "99999"),
    ("MAILWARD_METRICS_PORT", "metrics"),
    ("MAILWARD_METRICS_TOKEN", "short"),
    ("MAILWARD_METRICS_TOKEN", "has a space in the middle of it"),
    ("MAILWARD_METRICS_ALLOW", "10.0.0.1/8"),
])
def test_bad_metrics_settings_are_refused_with_their_name(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: raw})


def test_metrics_settings_parse() -> None:
    assert Config.from_env({}).metrics_listen is None
    assert Config.from_env({"MAILWARD_METRICS_PORT": "0"}).metrics_listen is None
    port_only = Config.from_env({"MAILWARD_METRICS_PORT": "9125"}).metrics_listen
    assert port_only is not None and (port_only.host, port_only.port) == ("0.0.0.0", 9125)
    local = Config.from_env({"MAILWARD_METRICS_PORT": "127.0.0.1:9125"}).metrics_listen
    assert local is not None and local.host == "127.0.0.1"
    assert Config.from_env({"MAILWARD_METRICS_TOKEN": TOKEN}).metrics_token == TOKEN


def test_a_failed_commit_gets_451_and_is_counted_as_a_database_error(metrics_env, metered_ingress, acme, sink,
                                                                     cfg, web) -> None:
    """The store breaks under a running ingress (a table it writes at commit is gone): 451, and the error counted."""
    send(metrics_env, 1)  # routes and policy are cached from here on: only the commit needs the database
    engine = tdb.get_engine(cfg)
    with msp_scope(), engine.begin() as conn:
        conn.execute(text("ALTER TABLE event RENAME TO event_gone"))
    try:
        with client(metrics_env) as c:
            c.ehlo()
            c.mail("alice@sender.example")
            assert c.rcpt("bob@acme.test")[0] == 250
            code, reply = c.data(make_mail("bob@acme.test", "Lost"))
        assert (code, reply[:5]) == (451, b"4.3.0")
    finally:
        with msp_scope(), engine.begin() as conn:
            conn.execute(text("ALTER TABLE event_gone RENAME TO event"))
    got = scrape_port(metrics_port(metrics_env))
    assert value(got, "mailward_store_errors_total", store="database", operation="commit") == 1
    assert total(got, "mailward_ingress_mails_total") == 1
    wait_for(lambda: total(scrape_web(web), "mailward_mails_total") >= 1, 10, what="mail counts in Redis")
    assert total(scrape_web(web), "mailward_mails_total") == 1


def test_a_redis_error_while_counting_is_logged_and_counted_never_raised(tmp_path) -> None:
    def errors() -> float:
        labels = {"store": "redis", "operation": "mail_count"}
        return REGISTRY.get_sample_value("mailward_store_errors_total", labels) or 0.0

    before = errors()
    dead = redis.asyncio.Redis(unix_socket_path=str(tmp_path / "no-such.sock"), socket_timeout=0.5)
    asyncio.run(count_in_redis(dead, {"inbound:deliver": 1}))
    assert errors() == before + 1
