"""Greylisting against a real Redis: triplets, the delay, the retry window, auto-allow, and known-good senders."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio

from smtp import greylist
from tenants.policy import Policy

POLICY = Policy(greylisting=True, greylist_delay=300, greylist_retry_window=3600, greylist_pass_ttl=86400)
T0 = 1_800_000_000.0


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def check(redis_url: str, *, ip: str = "203.0.113.9", sender: str = "a@sender.example", rcpt: str = "bob@acme.test",
          spf_pass: bool = False, now: float = T0, tenant: int = 1, policy: Policy = POLICY) -> str | None:
    async def go() -> str | None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            return await greylist.check(client, policy, tenant, ip, sender, rcpt, spf_pass, now=now)
        finally:
            await client.aclose()

    return run(go())


def test_new_triplet_waits_for_the_delay_then_passes(redis_server: Any) -> None:
    redis.Redis.from_url(redis_server.url).flushall()
    assert check(redis_server.url) == greylist.REPLY_GREY
    assert check(redis_server.url, now=T0 + 299) == greylist.REPLY_GREY  # too early
    assert check(redis_server.url, now=T0 + 301) is None


def test_a_passed_sender_is_allowed_from_the_same_network_for_any_recipient(redis_server: Any) -> None:
    redis.Redis.from_url(redis_server.url).flushall()
    check(redis_server.url)
    assert check(redis_server.url, now=T0 + 400) is None
    # Another host of the same /24 pool, another recipient: auto-allowed.
    assert check(redis_server.url, ip="203.0.113.77", rcpt="carol@acme.test", now=T0 + 500) is None
    # Another network is a new triplet.
    assert check(redis_server.url, ip="198.51.100.1", now=T0 + 500) == greylist.REPLY_GREY


def test_known_good_sender_domain_with_spf_pass_skips_greylisting(redis_server: Any) -> None:
    redis.Redis.from_url(redis_server.url).flushall()
    check(redis_server.url, spf_pass=True)
    assert check(redis_server.url, spf_pass=True, now=T0 + 400) is None  # passes once, with SPF pass
    other = dict(ip="198.51.100.1", sender="b@sender.example", rcpt="dave@acme.test", now=T0 + 500)
    assert check(redis_server.url, spf_pass=True, **other) is None  # same domain, SPF pass: known good
    assert check(redis_server.url, spf_pass=False, **other) == greylist.REPLY_GREY  # without SPF pass: not


def test_tenants_greylist_apart_and_policy_off_never_greylists(redis_server: Any) -> None:
    redis.Redis.from_url(redis_server.url).flushall()
    check(redis_server.url, tenant=1)
    check(redis_server.url, tenant=1, now=T0 + 400)
    assert check(redis_server.url, tenant=2, now=T0 + 500) == greylist.REPLY_GREY
    assert check(redis_server.url, tenant=3, policy=Policy()) is None


def test_redis_down_never_holds_mail_hostage() -> None:
    assert check("redis://127.0.0.1:1/0") is None


def test_ipv6_clients_are_greylisted_per_64() -> None:
    assert greylist.client_network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert greylist.client_network("192.0.2.200") == "192.0.2.0/24"
