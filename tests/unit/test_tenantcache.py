"""The checks' per-tenant cache: reloaded when the policy version in Redis moves or the TTL passes; with Redis
unreadable the TTL alone bounds how stale a value gets (not a reload per mail)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import redis.asyncio

from smtp.checks import tenantcache
from smtp.checks.tenantcache import TenantCache
from tenants.policy import POLICY_VERSION_KEY


@dataclasses.dataclass
class _Ctx:
    """What the cache reads of a check context: its Redis client (None: unreadable)."""

    redis: Any = None


class _Loads:
    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, tenant_ids: list[int]) -> dict[int, str]:
        self.calls.append(sorted(tenant_ids))
        return {tid: f"value {tid} #{len(self.calls)}" for tid in tenant_ids}


def test_without_redis_a_value_is_kept_for_the_ttl_then_reloaded(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(tenantcache.time, "monotonic", lambda: clock[0])
    loads = _Loads()
    cache = TenantCache("test", 60.0, loads)
    ctx = _Ctx()

    async def run() -> None:
        assert await cache.get(ctx, [1, 2]) == {1: "value 1 #1", 2: "value 2 #1"}
        clock[0] += 59
        assert await cache.get(ctx, [2, 1, 2]) == {2: "value 2 #1", 1: "value 1 #1"}
        assert await cache.get(ctx, [1, 3]) == {1: "value 1 #1", 3: "value 3 #2"}  # only the missing one loads
        clock[0] += 2
        assert (await cache.get(ctx, [1]))[1] == "value 1 #3"

    asyncio.run(run())
    assert loads.calls == [[1, 2], [3], [1]]


def test_a_moved_policy_version_reloads_at_once(redis_server):
    loads = _Loads()
    cache = TenantCache("test", 3600.0, loads)

    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            await client.delete(POLICY_VERSION_KEY)
            ctx = _Ctx(client)
            assert await cache.get(ctx, [7]) == {7: "value 7 #1"}
            assert await cache.get(ctx, [7]) == {7: "value 7 #1"}
            await client.incr(POLICY_VERSION_KEY)
            assert await cache.get(ctx, [7]) == {7: "value 7 #2"}
            assert await cache.get(ctx, [7]) == {7: "value 7 #2"}
            # Redis unreadable for a moment: the value loaded under the last version is still used within the TTL.
            assert await cache.get(_Ctx(None), [7]) == {7: "value 7 #2"}
        finally:
            await client.aclose()

    asyncio.run(run())
    assert loads.calls == [[7], [7]]
