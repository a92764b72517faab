"""SpamAssassin's rules, evaluated natively: one symbol per rule that hits, named as the rule, scored as
SpamAssassin scores it (MSP baseline and tenant overrides apply like to any symbol), its ``describe`` as reason.

The rules are compiled once per process, in a thread started with the check, so the first mails do not wait for a
cold compile longer than they must; every :data:`VERSION_POLL` seconds the check looks at the rule-files version in
Redis (bumped by ``mailward sarules update`` and the daily sa-update job) and rebuilds the engine in the background
when it moved, mail going on with the old engine meanwhile. Without rule files the check is off and says why once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any

from smtp.checks.base import Check, CheckContext, Stage
from smtp.checks.rspamd import client_hostname
from smtp.sarules import CACHE_SUBDIR, Envelope, Loaded, SaMessage, shared_engine
from tenants.platform.config import Config
from tenants.sarules import SA_RULES_VERSION_KEY, forget_symbols, locate

log = logging.getLogger(__name__)

#: Seconds between two looks at the rule-files version in Redis.
VERSION_POLL = 30.0
#: Most characters of a rule's description quoted as the finding's reason.
MAX_REASON = 200


class SaRulesCheck(Check):
    """Records SpamAssassin's rule hits as symbols."""

    name = "sarules"
    stage = Stage.DATA
    #: A cold compile of the stock rules takes a few seconds on a busy core; a mail waits for it at most this long.
    timeout = 30.0
    symbols = ("SARULES_TEMPFAIL",)

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.setting = cfg.sa_rules_dir
        self.location = locate(self.setting)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loading: concurrent.futures.Future[Loaded] | None = None
        #: The engine in use (None until the first load finished).
        self._current: Loaded | None = None
        self._version: bytes | None = None
        self._polled = 0.0
        if self.location.rules_dir is None:
            log.warning("SpamAssassin rules off: %s", self.location.reason)
        else:
            self._start_load(reload=False)

    @property
    def enabled(self) -> bool:
        return self.location.rules_dir is not None

    def _start_load(self, *, reload: bool) -> None:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sarules")
        self._loading = self._pool.submit(shared_engine, self.setting, reload=reload,
                                          cache_dir=self.cfg.data_dir / CACHE_SUBDIR)

    async def ready(self) -> None:
        """The first compile of the rules (seconds with Hyperscan's cache, tens of seconds cold); a failed load is
        logged here and recorded as SARULES_TEMPFAIL on each mail, as before."""
        if self._loading is None or self._current is not None:
            return
        try:
            self._current = await asyncio.wrap_future(self._loading)
        except Exception as exc:
            log.error("SpamAssassin rules could not be loaded: %s", exc)

    async def _poll_version(self, redis: Any) -> None:
        """Reload when the rule-files version in Redis moved (another process updated the rules)."""
        now = time.monotonic()
        if redis is None or now - self._polled < VERSION_POLL:
            return
        self._polled = now
        try:
            version = await redis.get(SA_RULES_VERSION_KEY)
        except Exception as exc:  # Redis down: keep the rules we have
            log.debug("sarules version poll failed: %s", exc)
            return
        if self._version is None:
            self._version = version or b"0"
            return
        if (version or b"0") != self._version and self._loading is not None and self._loading.done():
            self._version = version or b"0"
            log.info("SpamAssassin rules changed (version %s): reloading", self._version.decode())
            forget_symbols()
            self.location = locate(self.setting)
            self._start_load(reload=True)

    async def run(self, ctx: CheckContext) -> None:
        if ctx.mail is None or self._loading is None:
            return
        await self._poll_version(ctx.redis)
        if self._loading.done() or self._current is None:
            # the first load is awaited (a failed load raises here: SARULES_TEMPFAIL); a reload is not
            self._current = await asyncio.wrap_future(self._loading)
        engine = self._current.engine
        if engine is None:
            return
        rdns = await client_hostname(ctx) if ctx.client_ip else None
        envelope = Envelope(client_ip=ctx.client_ip, helo=ctx.helo, rdns=rdns or "", mail_from=ctx.mail_from,
                            rcpts=tuple(ctx.rcpts), hostname=self.cfg.hostname,
                            authenticated=ctx.direction == "outbound")
        message = SaMessage(ctx.mail.raw, envelope, ctx.mail.message)
        for hit in await asyncio.to_thread(engine.check, message):
            ctx.add(hit.name, hit.description[:MAX_REASON] or hit.name)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
