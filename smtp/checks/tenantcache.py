"""What a check knows about each recipient tenant (its lists, its domains), cached per process: used while the
policy version in Redis stays the same (every policy, list and domain change bumps it) and for at most ``ttl``
seconds, so that a mail costs one Redis GET and a reload happens in one thread for all the tenants missing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from smtp.checks.base import CheckContext
from tenants.policy import POLICY_VERSION_KEY

log = logging.getLogger(__name__)

V = TypeVar("V")


class TenantCache(Generic[V]):
    """Per-tenant values loaded by ``load`` (blocking: run in a thread), kept while they are current."""

    def __init__(self, what: str, ttl: float, load: Callable[[list[int]], dict[int, V]]) -> None:
        #: What is cached, for the log line when the policy version cannot be read.
        self.what = what
        #: Seconds a loaded value is used at most, even when the policy version could not be read.
        self.ttl = ttl
        self.load = load
        #: tenant id → (policy version, monotonic load time, value)
        self.entries: dict[int, tuple[bytes | None, float, V]] = {}

    async def _version(self, ctx: CheckContext) -> bytes | None:
        if ctx.redis is None:
            return None
        try:
            raw = await ctx.redis.get(POLICY_VERSION_KEY)
        except Exception as exc:  # Redis down: the TTL alone bounds staleness
            log.debug("policy version unavailable for the %s cache: %s", self.what, exc)
            return None
        return bytes(raw) if raw is not None else b"0"

    async def get(self, ctx: CheckContext, tenant_ids: Iterable[int]) -> dict[int, V]:
        """Each tenant's value, from the cache when it is current, else loaded (all missing ones in one thread)."""
        version = await self._version(ctx)
        now = time.monotonic()
        out: dict[int, V] = {}
        missing: list[int] = []
        for tid in dict.fromkeys(tenant_ids):
            cached = self.entries.get(tid)
            # Redis unreadable (version None): the TTL alone bounds staleness, as it does for a value loaded then.
            if cached is not None and now - cached[1] < self.ttl and (version is None or cached[0] == version):
                out[tid] = cached[2]
            else:
                missing.append(tid)
        if missing:
            for tid, value in (await asyncio.to_thread(self.load, missing)).items():
                self.entries[tid] = (version, now, value)
                out[tid] = value
        return out
