"""Greylisting per tenant policy: a new (client network, sender, recipient) triplet is told to come back later.

Triplets live in Redis: first sight → ``451 4.7.1`` until ``greylist_delay`` has passed (the entry lasts
``greylist_retry_window``); a retry after the delay passes, and the client network + sender are then allowed for
``greylist_pass_ttl`` (auto-allow). A sender domain whose mail once passed with SPF ``pass`` is known good: its
SPF-passing mail skips greylisting. With Redis unreachable nothing is greylisted (mail is not held hostage to a cache).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from typing import Any

from tenants.policy import Policy

log = logging.getLogger(__name__)

REPLY_GREY = "451 4.7.1 Greylisted: please try again later"
#: Prefix of every greylisting key in Redis.
KEY_PREFIX = "mailward:grey"
#: Client networks are greylisted as a whole (senders retry from another host of the same pool): IPv4 /24, IPv6 /64.
V4_PREFIX = 24
V6_PREFIX = 64


def client_network(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    prefix = V4_PREFIX if addr.version == 4 else V6_PREFIX
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def _h(*parts: str) -> str:
    return hashlib.blake2b("\0".join(parts).lower().encode(), digest_size=12).hexdigest()


async def check(redis: Any, policy: Policy, tenant_id: int, client_ip: str, sender: str, rcpt: str,
                spf_pass: bool, now: float | None = None) -> str | None:
    """None if the recipient may be accepted now, else the 451 reply."""
    if not policy.greylisting or redis is None:
        return None
    now = time.time() if now is None else now
    net = client_network(client_ip)
    sender_domain = sender.rpartition("@")[2].lower()
    allow_key = f"{KEY_PREFIX}:allow:{tenant_id}:{_h(net, sender)}"
    good_key = f"{KEY_PREFIX}:good:{tenant_id}:{_h(sender_domain)}"
    triplet_key = f"{KEY_PREFIX}:t:{tenant_id}:{_h(net, sender, rcpt)}"
    try:
        if await redis.exists(allow_key) or (spf_pass and sender_domain and await redis.exists(good_key)):
            return None
        first = await redis.get(triplet_key)
        if first is None:
            await redis.set(triplet_key, int(now), ex=policy.greylist_retry_window, nx=True)
            return REPLY_GREY
        if now - int(first) < policy.greylist_delay:
            return REPLY_GREY
        await redis.set(allow_key, 1, ex=policy.greylist_pass_ttl)
        if spf_pass and sender_domain:
            await redis.set(good_key, 1, ex=policy.greylist_pass_ttl)
        await redis.delete(triplet_key)
        return None
    except Exception as exc:
        log.warning("greylisting skipped, Redis unavailable: %s", exc)
        return None
