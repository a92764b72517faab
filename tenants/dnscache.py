"""The DNS checklist of each domain (:mod:`tenants.dnsreadiness`), cached in Redis: the worker looks records up, pages
only read what it found.

One key per domain (:data:`KEY`, by domain id) holds the items, when they were checked and a digest of what they
were checked for (:func:`inputs`: ``MAILWARD_HOSTNAME`` and the domain's active DKIM keys), with :data:`CACHE_TTL`;
the value names its domain and tenant, so a domain removed and another added under a reused id never shows the old
one's results. A page that finds nothing current (never checked, expired, or checked for another host name or other
keys) asks for a check (:func:`request_check`) and says "checking…"; "Re-check" asks for one too. At most one
check per domain is queued at a time (:data:`QUEUED_KEY`, a guard the job drops when it is done, or that expires
after :data:`QUEUED_TTL` if no worker ever ran it). The scheduler has every domain re-checked whose result is older
than :data:`REFRESH_AGE` (:func:`worker.dnscheck.enqueue_refreshes`).

Redis is a cache here: losing it loses nothing but "checked N min ago"; the next page view asks again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants.dnsreadiness import Item
from tenants.models import DkimKey, Domain
from tenants.platform.config import Config
from tenants.platform.jobs import DNSCHECK_JOB, enqueue_job
from tenants.platform.redisconn import redis_client

#: Redis key of one domain's cached checklist.
KEY = "mailward:dnscheck:{domain_id}"
#: Redis key set while a check of the domain is queued or running (its value: when it was queued, epoch seconds).
QUEUED_KEY = "mailward:dnscheck-queued:{domain_id}"
#: Seconds a result is kept; a page finding none asks for a new check.
CACHE_TTL = 7 * 24 * 3600
#: Seconds after which the scheduler has a domain checked again.
REFRESH_AGE = 6 * 3600
#: Seconds a queued check blocks another one for the same domain (longer than the job may run).
QUEUED_TTL = 300
#: Seconds one check job may run (every lookup of a checklist runs concurrently, each with its own timeout).
JOB_TIMEOUT = 120


@dataclass(frozen=True)
class Cached:
    """A domain's checklist as the worker found it at ``checked_at``, for ``hostname`` and the :func:`inputs`
    digest ``inputs``."""

    items: list[Item]
    checked_at: datetime
    hostname: str
    inputs: str

    def age_seconds(self, now: datetime | None = None) -> float:
        return max(0.0, ((now or datetime.now(UTC)) - self.checked_at).total_seconds())

    def ago(self, now: datetime | None = None) -> str:
        """"just now", "N min ago", "N h ago" or "N days ago"."""
        seconds = self.age_seconds(now)
        if seconds < 60:
            return "just now"
        if seconds < 3600:
            return f"{int(seconds // 60)} min ago"
        if seconds < 2 * 86400:
            return f"{int(seconds // 3600)} h ago"
        return f"{int(seconds // 86400)} days ago"

    @property
    def all_ok(self) -> bool:
        return all(item.state == "ok" for item in self.items)


@dataclass(frozen=True)
class Checklist:
    """What a page shows of a domain's checklist: the cached result if any, whether a check is under way, and why
    the cache could not be read (Redis away)."""

    cached: Cached | None
    checking: bool
    error: str = ""


def _key(domain_id: int) -> str:
    return KEY.format(domain_id=domain_id)


def _queued_key(domain_id: int) -> str:
    return QUEUED_KEY.format(domain_id=domain_id)


def _decode(raw: Any, domain: Domain) -> Cached | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        if data.get("domain") != domain.name or data.get("tenant_id") != domain.tenant_id:
            return None
        return Cached([Item(str(i["name"]), str(i["state"]), str(i["detail"]), str(i["record"]))
                       for i in data["items"]],
                      datetime.fromtimestamp(float(data["checked_at"]), UTC), str(data["hostname"]),
                      str(data["inputs"]))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def read(redis: Any, domain: Domain) -> Cached | None:
    """The cached checklist of ``domain``, or None (never checked, expired, or unreadable)."""
    return _decode(redis.get(_key(domain.id)), domain)


def read_many(redis: Any, domains: list[Domain]) -> dict[int, Cached | None]:
    """:func:`read` for many domains in one round trip, by domain id."""
    if not domains:
        return {}
    raws = redis.mget([_key(d.id) for d in domains])
    return {d.id: _decode(raw, d) for d, raw in zip(domains, raws, strict=True)}


def inputs(session: Session, cfg: Config, domain: Domain) -> str:
    """A digest of what a domain's checklist depends on besides DNS: the gateway's host name (MX, SPF) and the
    domain's active DKIM keys. A result checked for other inputs is not shown."""
    keys = session.execute(select(DkimKey.selector, DkimKey.public_key)
                           .where(DkimKey.domain == domain.name, DkimKey.active.is_(True))
                           .order_by(DkimKey.selector)).all()
    text = "\n".join([cfg.hostname.rstrip(".").lower(), *(f"{sel}:{key}" for sel, key in keys)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def write(redis: Any, domain: Domain, items: list[Item], *, hostname: str, digest: str,
          checked_at: float | None = None) -> None:
    """Store a checklist the worker just looked up (``checked_at``: epoch seconds, now by default; ``digest``: the
    :func:`inputs` it was looked up for)."""
    value = {"domain": domain.name, "tenant_id": domain.tenant_id, "hostname": hostname, "inputs": digest,
             "checked_at": time.time() if checked_at is None else checked_at,
             "items": [asdict(item) for item in items]}
    redis.set(_key(domain.id), json.dumps(value), ex=CACHE_TTL)


def forget(redis: Any, domain_id: int) -> None:
    """Drop a domain's cached checklist and its guard (the domain is gone)."""
    redis.delete(_key(domain_id), _queued_key(domain_id))


def release(redis: Any, domain_id: int) -> None:
    """The check of a domain is done: another may be queued."""
    redis.delete(_queued_key(domain_id))


def checking(redis: Any, domain_id: int) -> bool:
    """Whether a check of the domain is queued or running."""
    return bool(redis.exists(_queued_key(domain_id)))


def recheck(cfg: Config, redis: Any, domain: Domain) -> tuple[str, str]:
    """"Re-check": queue a check of the domain and say so, as a message and its kind (``info`` or ``error``)."""
    try:
        queued = request_check(cfg, domain, connection=redis)
    except (RedisError, OSError) as exc:
        return (f"The DNS records cannot be checked right now ({type(exc).__name__}); try again in a minute.",
                "error")
    if queued:
        return f"Checking the DNS records of {domain.name}: the results appear here in a moment.", "info"
    return f"A check of {domain.name}'s DNS records is already under way.", "info"


def request_check(cfg: Config, domain: Domain, *, connection: Any = None) -> bool:
    """Queue a check of ``domain`` for the worker unless one is queued already; True if queued now."""
    conn = connection or redis_client(cfg)
    guard = _queued_key(domain.id)
    if not conn.set(guard, int(time.time()), nx=True, ex=QUEUED_TTL):
        return False
    try:
        enqueue_job(cfg, DNSCHECK_JOB, domain.tenant_id, domain.id, connection=conn, timeout=JOB_TIMEOUT,
                    result_ttl=3600, description=f"check the DNS records of {domain.name}")
    except BaseException:
        conn.delete(guard)
        raise
    return True


def current(cached: Cached | None, digest: str) -> Cached | None:
    """``cached`` if it was checked for these :func:`inputs`, else None (it cannot be shown as this domain's)."""
    return cached if cached is not None and cached.inputs == digest else None


def for_page(session: Session, cfg: Config, redis: Any, domain: Domain) -> Checklist:
    """What a page shows for ``domain``: the cached checklist; with none current a check is queued and the page says
    "checking…". Never looks DNS up and never raises for Redis trouble."""
    try:
        cached = current(read(redis, domain), inputs(session, cfg, domain))
        if cached is None:
            request_check(cfg, domain, connection=redis)
        return Checklist(cached, checking(redis, domain.id))
    except (RedisError, OSError) as exc:
        return Checklist(None, False, f"the DNS check results cannot be read right now ({type(exc).__name__}); "
                                      "reload the page in a minute")
