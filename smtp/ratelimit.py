"""Outbound rate limits: recipients per sender address per hour and per tenant per hour, counted in Redis.

Fixed one-hour windows. Each accepted recipient counts once against both the sender's and the tenant's counter; one
Lua script checks both limits and counts both (INCRBY + EXPIRE) atomically, so replicas never overshoot. MAIL FROM
is refused when the sender or the tenant is already at its limit, RCPT when one more recipient would pass it, with
``451 4.7.1``: a compromised account is throttled while its server keeps the mail queued.

The first refusal in a window logs a warning and sets a Redis flag, so the tenant admin is notified once per window.
That notification is the log line for now: :class:`tenants.models.Event` needs a message, and a refused mail has none.

With Redis unreachable nothing is limited (logged): mail is not held hostage to a counter.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from tenants.policy import Policy

log = logging.getLogger(__name__)

#: Length of a counting window, in seconds.
WINDOW = 3600
#: Prefix of every rate-limit key. The tenant part is a hash tag ({t42}) so a tenant's keys share a Redis Cluster slot.
KEY_PREFIX = "mailward:rl"
REPLY_LIMITED = "451 4.7.1 Rate limit exceeded: too many recipients this hour, try again later"

#: KEYS: sender counter, tenant counter. ARGV: sender limit, tenant limit, recipients to add (0: only check), TTL.
#: Returns 0 when counted (or under both limits), 1 when the sender is over, 2 when the tenant is over.
_TAKE = """
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local n = tonumber(ARGV[3])
for i = 1, 2 do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used + math.max(n, 1) > limits[i] then return i end
end
if n > 0 then
  for i = 1, 2 do
    redis.call('INCRBY', KEYS[i], n)
    redis.call('EXPIRE', KEYS[i], ARGV[4])
  end
end
return 0
"""


@dataclass(frozen=True)
class Exceeded:
    """Which limit a sender hit: ``kind`` is "sender" or "tenant"."""

    kind: str
    limit: int


def _h(value: str) -> str:
    return hashlib.blake2b(value.lower().encode(), digest_size=12).hexdigest()


class RateLimiter:
    """Per-sender and per-tenant hourly recipient counters on an asyncio Redis client."""

    def __init__(self, redis: Any, *, window: int = WINDOW) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self.redis = redis
        self.window = window
        self._script = redis.register_script(_TAKE) if redis is not None else None

    def _keys(self, tenant_id: int, sender: str, now: float) -> tuple[str, str, int]:
        start = int(now) // self.window * self.window
        tag = f"{KEY_PREFIX}:{{t{tenant_id}}}"
        return f"{tag}:s:{start}:{_h(sender or '<>')}", f"{tag}:t:{start}", start

    async def check(self, tenant_id: int, sender: str, policy: Policy, *, now: float | None = None) -> Exceeded | None:
        """At MAIL FROM: is the sender or the tenant already at its limit? Counts nothing."""
        return await self._run(tenant_id, sender, policy, 0, now)

    async def take(self, tenant_id: int, sender: str, policy: Policy, *, recipients: int = 1,
                   now: float | None = None) -> Exceeded | None:
        """At RCPT: count ``recipients`` against both limits, or refuse (and count nothing) if that would pass one."""
        return await self._run(tenant_id, sender, policy, recipients, now)

    async def _run(self, tenant_id: int, sender: str, policy: Policy, n: int, now: float | None) -> Exceeded | None:
        if self._script is None:
            return None
        now = time.time() if now is None else now
        sender_key, tenant_key, start = self._keys(tenant_id, sender, now)
        limits = (policy.outbound_sender_hourly, policy.outbound_tenant_hourly)
        try:
            over = int(await self._script(keys=[sender_key, tenant_key], args=[*limits, n, self.window * 2]))
        except Exception as exc:  # Redis down: not limited
            log.warning("outbound rate limit not checked for tenant %d: %s", tenant_id, exc)
            return None
        if over == 0:
            return None
        hit = Exceeded("sender" if over == 1 else "tenant", limits[over - 1])
        await self._notify_once(tenant_id, sender, hit, start)
        return hit

    async def _notify_once(self, tenant_id: int, sender: str, hit: Exceeded, start: int) -> None:
        who = _h(sender or "<>") if hit.kind == "sender" else "all"
        flag = f"{KEY_PREFIX}:{{t{tenant_id}}}:notified:{hit.kind}:{start}:{who}"
        try:
            first = await self.redis.set(flag, 1, nx=True, ex=self.window * 2)
        except Exception:
            first = True  # better a repeated warning than none
        if first:
            # The tenant admin's notification, once per window and limit (see the module docstring).
            what = f"sender <{sender or ''}>" if hit.kind == "sender" else "the tenant"
            log.warning("outbound rate limit: tenant %d: %s reached its limit of %d recipients this hour; more mail "
                        "gets 451 until the hour ends (tenant admin to be notified)", tenant_id, what, hit.limit)
