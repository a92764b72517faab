"""DNSBL/URIBL and SPF checks against a real DNS server on loopback (and a real Redis for the answer cache)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
import redis.asyncio

from smtp.checks.base import Check, CheckContext, Stage
from smtp.checks.dnsbl import (
    CACHE_PREFIX,
    DEFAULT_ZONES,
    DnsblCheck,
    DnsblHit,
    UriblCheck,
    parse_zones,
    reversed_ip,
    uri_domains,
    zones_from_config,
)
from smtp.checks.spf import SpfCheck, valid_helo_domain
from smtp.mime import parse_mail
from smtp.pipeline import run_stage
from tenants.platform.config import Config, HostPort
from tests.support.dnsserver import LoopbackDNS

#: The loopback DNS fixtures (the session's server, and that server emptied for each test).

#: A public address (so the DNSBL check looks it up); reversed for the zone names.
CLIENT = "81.2.69.160"
CLIENT_REV = "160.69.2.81"
CLIENT6 = "2a01:4f8:c0c:1234::25"
#: Short DNS timeout for tests of a server that does not answer.
SHORT_TIMEOUT = 0.5


def make_cfg(server: LoopbackDNS) -> Config:
    return Config(dns=HostPort("127.0.0.1", server.port), hostname="mx.mailward.test")


def make_ctx(cfg: Config, *, ip: str = CLIENT, helo: str = "mail.example.test", mail_from: str = "a@example.test",
             raw: bytes | None = None, redis_client: Any = None) -> CheckContext:
    return CheckContext(cfg=cfg, client_ip=ip, helo=helo, mail_from=mail_from, rcpts=["u@acme.test"],
                        mail=parse_mail(raw) if raw is not None else None, redis=redis_client)


def symbols(ctx: CheckContext) -> set[str]:
    return {f.symbol for f in ctx.findings}


def reason_of(ctx: CheckContext, symbol: str) -> str:
    return next(f.reason for f in ctx.findings if f.symbol == symbol)


def run(check: Check, ctx: CheckContext) -> CheckContext:
    asyncio.run(check.run(ctx))
    return ctx


# --- DNSBL on the client IP ---------------------------------------------------------------------------------------

def test_reversed_ip_labels() -> None:
    assert reversed_ip("81.2.69.160") == CLIENT_REV
    assert reversed_ip("2001:db8::1") == "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    assert reversed_ip("::ffff:81.2.69.160") == CLIENT_REV
    assert reversed_ip("not-an-ip") is None


def test_listed_ip_records_symbol_and_reject_fact(dns: LoopbackDNS) -> None:
    dns.add(f"{CLIENT_REV}.zen.spamhaus.org", "A", "127.0.0.2")
    dns.add(f"{CLIENT_REV}.zen.spamhaus.org", "A", "127.0.0.10")
    dns.add(f"{CLIENT_REV}.bl.spamcop.net", "A", "127.0.0.2")
    ctx = run(DnsblCheck(make_cfg(dns)), make_ctx(make_cfg(dns)))
    assert symbols(ctx) == {"RBL_SPAMHAUS_SBL", "RBL_SPAMHAUS_PBL", "RBL_SPAMCOP"}
    assert reason_of(ctx, "RBL_SPAMHAUS_SBL") == f"{CLIENT} listed in zen.spamhaus.org (127.0.0.2)"
    rejects = ctx.facts["dnsbl_reject"]
    assert [(h.zone, h.symbol) for h in rejects] == [("zen.spamhaus.org", "RBL_SPAMHAUS_SBL")]
    assert all(isinstance(h, DnsblHit) for h in ctx.facts["dnsbl"]) and len(ctx.facts["dnsbl"]) == 3


def test_xbl_and_drop_codes(dns: LoopbackDNS) -> None:
    dns.set(f"{CLIENT_REV}.zen.spamhaus.org", "A", ["127.0.0.4", "127.0.0.9"])
    ctx = run(DnsblCheck(make_cfg(dns)), make_ctx(make_cfg(dns)))
    assert symbols(ctx) == {"RBL_SPAMHAUS_XBL", "RBL_SPAMHAUS_DROP"}
    assert {h.symbol for h in ctx.facts["dnsbl_reject"]} == {"RBL_SPAMHAUS_XBL", "RBL_SPAMHAUS_DROP"}


def test_unlisted_ip_records_nothing(dns: LoopbackDNS) -> None:
    ctx = run(DnsblCheck(make_cfg(dns)), make_ctx(make_cfg(dns)))
    assert ctx.findings == []
    assert ctx.facts["dnsbl_reject"] == []
    assert dns.query_count(f"{CLIENT_REV}.zen.spamhaus.org", "A") == 1
    assert dns.query_count(f"{CLIENT_REV}.bl.spamcop.net", "A") == 1


def test_error_return_codes_are_ignored_with_a_log_line(dns: LoopbackDNS, caplog: pytest.LogCaptureFixture) -> None:
    """127.255.255.254 means "query via public resolver refused": it must never count as a listing."""
    dns.add(f"{CLIENT_REV}.zen.spamhaus.org", "A", "127.255.255.254")
    dns.add(f"{CLIENT_REV}.bl.spamcop.net", "A", "10.0.0.1")  # not a return code at all (wildcarding resolver)
    with caplog.at_level(logging.WARNING, logger="smtp.checks.dnsbl"):
        ctx = run(DnsblCheck(make_cfg(dns)), make_ctx(make_cfg(dns)))
    assert ctx.findings == []
    assert ctx.facts["dnsbl_reject"] == []
    assert "127.255.255.254" in caplog.text and "ignored" in caplog.text
    assert "10.0.0.1" in caplog.text


def test_ipv6_client_is_looked_up_by_nibbles(dns: LoopbackDNS) -> None:
    label = reversed_ip(CLIENT6)
    assert label is not None and len(label.split(".")) == 32
    dns.add(f"{label}.zen.spamhaus.org", "A", "127.0.0.3")
    ctx = run(DnsblCheck(make_cfg(dns)), make_ctx(make_cfg(dns), ip=CLIENT6))
    assert symbols(ctx) == {"RBL_SPAMHAUS_SBL"}
    assert ctx.facts["dnsbl_reject"][0].queried == CLIENT6


def test_private_client_is_not_looked_up(dns: LoopbackDNS) -> None:
    for ip in ("10.1.2.3", "127.0.0.1", "192.168.1.5", "fe80::1"):
        ctx = run(DnsblCheck(make_cfg(dns)), make_ctx(make_cfg(dns), ip=ip))
        assert ctx.findings == []
    assert dns.query_count() == 0


def test_cached_answers_do_not_reach_dns(dns: LoopbackDNS, redis_server: Any) -> None:
    dns.add(f"{CLIENT_REV}.zen.spamhaus.org", "A", "127.0.0.2", ttl=600)
    cfg = make_cfg(dns)
    check = DnsblCheck(cfg)

    async def scenario() -> tuple[CheckContext, CheckContext, int, int, list[int]]:
        client: Any = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            await client.delete(*[CACHE_PREFIX + f"{CLIENT_REV}.{z.name}" for z in DEFAULT_ZONES])
            first = make_ctx(cfg, redis_client=client)
            await check.run(first)
            after_first = dns.query_count()
            second = make_ctx(cfg, redis_client=client)
            await check.run(second)
            ttls = [await client.ttl(CACHE_PREFIX + f"{CLIENT_REV}.zen.spamhaus.org"),
                    await client.ttl(CACHE_PREFIX + f"{CLIENT_REV}.bl.spamcop.net")]
            return first, second, after_first, dns.query_count(), ttls
        finally:
            await client.aclose()

    first, second, after_first, after_second, ttls = asyncio.run(scenario())
    assert after_first == 2  # zen (listed) and spamcop (not listed)
    assert after_second == after_first  # both answers, positive and negative, came from Redis
    assert symbols(first) == symbols(second) == {"RBL_SPAMHAUS_SBL"}
    assert [h.symbol for h in second.facts["dnsbl_reject"]] == ["RBL_SPAMHAUS_SBL"]
    assert 0 < ttls[0] <= 600 and 0 < ttls[1] <= 300


def test_unanswered_zone_is_a_tempfail_and_other_zones_still_count(dns: LoopbackDNS) -> None:
    dns.drop(f"{CLIENT_REV}.bl.spamcop.net")
    dns.add(f"{CLIENT_REV}.zen.spamhaus.org", "A", "127.0.0.2")
    started = time.monotonic()
    ctx = run(DnsblCheck(make_cfg(dns), dns_timeout=SHORT_TIMEOUT), make_ctx(make_cfg(dns)))
    assert time.monotonic() - started < DnsblCheck.timeout
    assert symbols(ctx) == {"RBL_SPAMHAUS_SBL", "DNSBL_TEMPFAIL"}
    assert "bl.spamcop.net" in reason_of(ctx, "DNSBL_TEMPFAIL")


def test_zone_spec_configures_zones_codes_and_reject(dns: LoopbackDNS) -> None:
    zones = parse_zones("ip:rbl.example.test=127.0.0.2-5:RBL_EXAMPLE:reject,127.0.0.20:RBL_EXAMPLE_SOFT;"
                        " uri:uri.example.test=127.0.1.2-127.0.1.9:URIBL_EXAMPLE")
    assert [(z.name, z.kind) for z in zones] == [("rbl.example.test", "ip"), ("uri.example.test", "uri")]
    dns.add(f"{CLIENT_REV}.rbl.example.test", "A", "127.0.0.20")
    dns.add(f"{CLIENT_REV}.rbl.example.test", "A", "127.0.0.6")  # outside every range: ignored
    ctx = run(DnsblCheck(make_cfg(dns), zones=zones), make_ctx(make_cfg(dns)))
    assert symbols(ctx) == {"RBL_EXAMPLE_SOFT"}
    assert ctx.facts["dnsbl_reject"] == []
    assert dns.query_count(f"{CLIENT_REV}.zen.spamhaus.org") == 0  # only the configured zone


@pytest.mark.parametrize("spec", [
    "zen.spamhaus.org=127.0.0.2:X",  # no kind
    "ip:zen.spamhaus.org",  # no codes
    "dns:zen.spamhaus.org=127.0.0.2:RBL_X",  # bad kind
    "ip:zen.spamhaus.org=127.0.0.2:lower_case",  # bad symbol
    "ip:zen.spamhaus.org=10.0.0.2:RBL_X",  # not in 127/8
    "ip:zen.spamhaus.org=127.0.0.9-3:RBL_X",  # descending
    "ip:zen.spamhaus.org=127.0.0.2:RBL_X:block",  # unknown flag
    "ip:bad_zone!=127.0.0.2:RBL_X",
    " ; ",
])
def test_bad_zone_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_zones(spec)


def test_zones_from_config_defaults_and_none() -> None:
    assert zones_from_config(Config()) == DEFAULT_ZONES
    assert parse_zones("none") == ()
    assert not DnsblCheck(Config(), zones=()).enabled


def test_dnsbl_runs_at_the_mail_stage_through_the_pipeline(dns: LoopbackDNS) -> None:
    dns.add(f"{CLIENT_REV}.zen.spamhaus.org", "A", "127.0.0.2")
    cfg = make_cfg(dns)
    checks = [DnsblCheck(cfg), UriblCheck(cfg)]
    ctx = make_ctx(cfg)
    asyncio.run(run_stage(checks, ctx, Stage.MAIL))
    assert symbols(ctx) == {"RBL_SPAMHAUS_SBL"}
    assert dns.query_count("dbl.spamhaus.org") == 0


# --- URIBL on the domains of links --------------------------------------------------------------------------------

LINK_MAIL = (
    b"From: a@example.test\r\nTo: u@acme.test\r\nSubject: links\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    b'<p>Win <a href="http://click.spam-domain.test/win?x=1">here</a> or '
    b'<a href="https://login.phish.example.co.uk/account">there</a>, '
    b'<a href="http://198.51.100.7/x">raw ip</a>, and <a href="https://docs.clean.test/">docs</a>.</p>\r\n'
)


def test_uri_domains_are_registrable_and_distinct() -> None:
    uris = ["http://a.b.example.co.uk/x", "https://EXAMPLE.co.uk", "www.foo.test/path", "http://198.51.100.7/",
            "http://[2001:db8::1]/", "https://co.uk/", "http://localhost/", "https://x.y.z.blogspot.com/"]
    assert uri_domains(uris) == ["example.co.uk", "foo.test", "z.blogspot.com"]
    assert uri_domains([f"http://d{i}.test/" for i in range(50)], limit=3) == ["d0.test", "d1.test", "d2.test"]


def test_uribl_listed_domains(dns: LoopbackDNS) -> None:
    dns.add("spam-domain.test.dbl.spamhaus.org", "A", "127.0.1.2")
    dns.add("example.co.uk.dbl.spamhaus.org", "A", "127.0.1.104")
    dns.add("example.co.uk.multi.surbl.org", "A", "127.0.0.8")
    dns.add("clean.test.dbl.spamhaus.org", "A", "127.255.255.252")  # an error code: ignored
    ctx = run(UriblCheck(make_cfg(dns)), make_ctx(make_cfg(dns), raw=LINK_MAIL))
    assert symbols(ctx) == {"URIBL_DBL", "URIBL_DBL_ABUSED", "URIBL_SURBL"}
    assert reason_of(ctx, "URIBL_DBL") == "spam-domain.test listed in dbl.spamhaus.org (127.0.1.2)"
    assert "dnsbl_reject" not in ctx.facts
    assert {h.queried for h in ctx.facts["uribl"]} == {"spam-domain.test", "example.co.uk"}
    assert dns.query_count("click.spam-domain.test.dbl.spamhaus.org") == 0  # looked up by registrable domain
    assert dns.query_count("7.100.51.198.dbl.spamhaus.org") == 0


def test_uribl_clean_mail_and_cache(dns: LoopbackDNS, redis_server: Any) -> None:
    cfg = make_cfg(dns)
    check = UriblCheck(cfg)

    async def scenario() -> tuple[CheckContext, int, int]:
        client: Any = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            keys = [CACHE_PREFIX + f"{d}.{z}" for d in ("spam-domain.test", "example.co.uk", "clean.test")
                    for z in ("dbl.spamhaus.org", "multi.surbl.org")]
            await client.delete(*keys)
            ctx = make_ctx(cfg, raw=LINK_MAIL, redis_client=client)
            await check.run(ctx)
            first = dns.query_count()
            await check.run(make_ctx(cfg, raw=LINK_MAIL, redis_client=client))
            return ctx, first, dns.query_count()
        finally:
            await client.aclose()

    ctx, first, second = asyncio.run(scenario())
    assert ctx.findings == []
    assert first == 6  # three domains in two zones
    assert second == first


def test_uribl_without_links_does_nothing(dns: LoopbackDNS) -> None:
    raw = b"From: a@example.test\r\nSubject: hi\r\n\r\nno links here\r\n"
    ctx = run(UriblCheck(make_cfg(dns)), make_ctx(make_cfg(dns), raw=raw))
    assert ctx.findings == [] and dns.query_count() == 0


# --- SPF ----------------------------------------------------------------------------------------------------------

def spf_ctx(dns: LoopbackDNS, mail_from: str = "alice@example.test", helo: str = "mail.example.test",
            ip: str = CLIENT) -> CheckContext:
    return make_ctx(make_cfg(dns), ip=ip, helo=helo, mail_from=mail_from)


def test_spf_pass_via_include_and_mx(dns: LoopbackDNS) -> None:
    dns.add("example.test", "TXT", "v=spf1 include:_spf.example.test mx -all")
    dns.add("_spf.example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    dns.add("example.test", "MX", "10 mx1.example.test")
    dns.add("mx1.example.test", "A", CLIENT)
    ctx = run(SpfCheck(make_cfg(dns)), spf_ctx(dns))
    assert "SPF_PASS" in symbols(ctx)
    assert reason_of(ctx, "SPF_PASS") == f"{CLIENT} permitted for example.test"
    assert ctx.facts["spf"] == ("pass", "example.test")
    assert dns.query_count("mx1.example.test", "A") >= 1


def test_spf_fail(dns: LoopbackDNS) -> None:
    dns.add("example.test", "TXT", "v=spf1 ip4:203.0.113.0/24 -all")
    ctx = run(SpfCheck(make_cfg(dns)), spf_ctx(dns))
    assert "SPF_FAIL" in symbols(ctx)
    assert reason_of(ctx, "SPF_FAIL") == f"{CLIENT} not permitted for example.test"
    assert ctx.facts["spf"] == ("fail", "example.test")


@pytest.mark.parametrize(("record", "symbol"), [
    ("v=spf1 ip4:203.0.113.0/24 ~all", "SPF_SOFTFAIL"),
    ("v=spf1 ip4:203.0.113.0/24 ?all", "SPF_NEUTRAL"),
    ("v=spf1 ip4:203.0.113.0/24 bogus:mechanism -all", "SPF_PERMERROR"),
    (None, "SPF_NONE"),
])
def test_spf_other_results(dns: LoopbackDNS, record: str | None, symbol: str) -> None:
    if record is not None:
        dns.add("example.test", "TXT", record)
    dns.add("example.test", "TXT", "google-site-verification=abc")  # unrelated TXT records are ignored
    ctx = run(SpfCheck(make_cfg(dns)), spf_ctx(dns))
    assert symbol in symbols(ctx)
    assert not symbols(ctx) & ({"SPF_PASS", "SPF_FAIL", "SPF_SOFTFAIL", "SPF_NEUTRAL", "SPF_NONE",
                                "SPF_PERMERROR", "SPF_TEMPERROR"} - {symbol})
    assert ctx.facts["spf"][0] == symbol.removeprefix("SPF_").lower()


def test_spf_two_records_are_a_permerror(dns: LoopbackDNS) -> None:
    dns.add("example.test", "TXT", "v=spf1 -all")
    dns.add("example.test", "TXT", "v=spf1 +all")
    ctx = run(SpfCheck(make_cfg(dns)), spf_ctx(dns))
    assert "SPF_PERMERROR" in symbols(ctx)


def test_spf_ipv6_client(dns: LoopbackDNS) -> None:
    dns.add("example.test", "TXT", "v=spf1 a:out.example.test -all")
    dns.add("out.example.test", "AAAA", CLIENT6)
    ctx = run(SpfCheck(make_cfg(dns)), spf_ctx(dns, ip=CLIENT6))
    assert "SPF_PASS" in symbols(ctx)


def test_spf_temperror_when_dns_does_not_answer_and_loop_stays_free(dns: LoopbackDNS) -> None:
    dns.drop("example.test")
    dns.add("mail.example.test", "TXT", "v=spf1 ip4:81.2.69.0/24 -all")
    check = SpfCheck(make_cfg(dns), dns_timeout=SHORT_TIMEOUT)
    ctx = spf_ctx(dns)

    async def scenario() -> int:
        ticks = 0
        task = asyncio.create_task(check.run(ctx))
        while not task.done():
            await asyncio.sleep(0.02)
            ticks += 1
        await task
        return ticks

    ticks = asyncio.run(scenario())
    assert "SPF_TEMPERROR" in symbols(ctx)
    assert ctx.facts["spf"] == ("temperror", "example.test")
    assert "SPF_HELO_PASS" in symbols(ctx)  # the HELO identity was evaluated alongside
    assert ticks >= 5  # the event loop kept running while pyspf waited in its thread


def test_spf_null_sender_uses_helo_identity(dns: LoopbackDNS) -> None:
    dns.add("mail.example.test", "TXT", "v=spf1 a -all")
    dns.add("mail.example.test", "A", CLIENT)
    ctx = run(SpfCheck(make_cfg(dns)), spf_ctx(dns, mail_from=""))
    assert symbols(ctx) == {"SPF_PASS"}
    assert ctx.facts["spf"] == ("pass", "mail.example.test")
    assert reason_of(ctx, "SPF_PASS") == f"{CLIENT} permitted for mail.example.test"


def test_spf_helo_result_recorded_separately(dns: LoopbackDNS) -> None:
    dns.add("example.test", "TXT", "v=spf1 ip4:81.2.69.160 -all")
    dns.add("mail.example.test", "TXT", "v=spf1 -all")
    ctx = run(SpfCheck(make_cfg(dns)), spf_ctx(dns))
    assert symbols(ctx) == {"SPF_PASS", "SPF_HELO_FAIL"}
    assert ctx.facts["spf_helo"] == ("fail", "mail.example.test")


def test_spf_helo_address_literal_is_not_looked_up(dns: LoopbackDNS) -> None:
    assert not valid_helo_domain("[81.2.69.160]") and not valid_helo_domain("localhost")
    assert valid_helo_domain("mail.example.test")
    ctx = run(SpfCheck(make_cfg(dns)), spf_ctx(dns, mail_from="", helo="[81.2.69.160]"))
    assert symbols(ctx) == {"SPF_NONE"}
    assert dns.query_count() == 0


def test_every_symbol_has_a_shipped_score() -> None:
    from tenants.symbols import symbol_table

    table = symbol_table()
    for check in (DnsblCheck, UriblCheck, SpfCheck):
        for symbol in (*check.symbols, f"{check.name.upper()}_TEMPFAIL"):
            assert symbol in table, symbol
