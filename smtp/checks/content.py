"""The content model: the base model (the MSP-level prior every tenant starts from), plus the MSP's shared delta and
each recipient tenant's own delta learnt from its feedback (:mod:`tenants.learning`); records the band of the spam
probability.

The base model (``tenants/content/data/base-model.npz``, trained by ``mailward model train``) is loaded once per
process and again only when its file changes. A missing or corrupt file raises
:class:`~tenants.content.model.ModelError`, which the pipeline records as ``CONTENT_TEMPFAIL`` (score 0): the mail is
judged without the model, never lost.

The deltas are read from the database at most every :data:`DELTA_RECHECK` seconds per tenant (a version number
first, the delta itself only when it moved), in a worker thread. When no recipient tenant has learnt anything the band
is one finding for all; otherwise each tenant gets its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from scipy.sparse import csr_matrix
from sqlalchemy.exc import SQLAlchemyError

from smtp.checks.base import Check, CheckContext, Stage
from tenants import learning
from tenants.content.features import vectorize
from tenants.content.model import (
    BANDS,
    BASE_MODEL,
    MAX_LOG_ODDS,
    ContentModel,
    ModelError,
    band_of,
    load_cached,
    sigmoid,
)
from tenants.content.online import Delta
from tenants.platform.config import Config
from tenants.platform.db import session_factory
from tenants.scope import msp_scope, tenant_scope

log = logging.getLogger(__name__)

#: Seconds a loaded delta is used before its version is looked up again (a report takes effect within this).
DELTA_RECHECK = 10.0
#: The cache key of the MSP's shared delta (tenant ids are positive).
SHARED = 0


@dataclass
class _Cached:
    checked: float
    version: int
    delta: Delta | None


class DeltaCache:
    """Deltas by tenant id (:data:`SHARED`: the MSP's), each re-checked every :data:`DELTA_RECHECK` seconds."""

    def __init__(self, cfg: Config, *, recheck: float = DELTA_RECHECK) -> None:
        self.cfg = cfg
        self.recheck = recheck
        self.cached: dict[int, _Cached] = {}

    def get(self, tenant_ids: list[int]) -> dict[int, Delta | None]:
        """The shared delta and each tenant's (blocking: run it in a thread)."""
        now = time.monotonic()
        stale = [tid for tid in [SHARED, *tenant_ids]
                 if (c := self.cached.get(tid)) is None or now - c.checked >= self.recheck]
        if stale:
            try:
                self._load(stale, now)
            except SQLAlchemyError as exc:  # score with what is cached (or the base alone), look again later
                log.warning("content learning unavailable, scoring without the newest deltas: %s", exc)
                for tid in stale:
                    self.cached[tid] = _Cached(now, (c := self.cached.get(tid)) and c.version or -1,
                                               c.delta if c is not None else None)
        return {tid: self.cached[tid].delta for tid in [SHARED, *tenant_ids]}

    def _load(self, stale: list[int], now: float) -> None:
        with session_factory(self.cfg)() as session:
            for tid in stale:
                with msp_scope() if tid == SHARED else tenant_scope(tid):
                    version = learning.shared_version(session) if tid == SHARED \
                        else learning.tenant_version(session, tid)
                    cached = self.cached.get(tid)
                    if cached is None or cached.version != version:
                        _, delta = learning.shared_delta(session) if tid == SHARED \
                            else learning.tenant_delta(session, tid)
                        cached = _Cached(now, version, delta)
                    cached.checked = now
                    self.cached[tid] = cached
                session.rollback()  # end the read transaction before the next scope

    def peek(self, tenant_ids: list[int]) -> dict[int, Delta | None] | None:
        """The deltas when none needs a look at the database (no thread needed), else None."""
        now = time.monotonic()
        out: dict[int, Delta | None] = {}
        for tid in [SHARED, *tenant_ids]:
            cached = self.cached.get(tid)
            if cached is None or now - cached.checked >= self.recheck:
                return None
            out[tid] = cached.delta
        return out

    def forget(self) -> None:
        self.cached.clear()


def _dot(delta: Delta | None, x: csr_matrix) -> float:
    return delta.dot(x) if delta is not None else 0.0


class ContentCheck(Check):
    name = "content"
    stage = Stage.DATA
    timeout = 5.0
    symbols = tuple(symbol for _, symbol in BANDS)

    def __init__(self, cfg: Config, *, model_path: Path = BASE_MODEL) -> None:
        super().__init__(cfg)
        self.model_path = model_path
        self.deltas = DeltaCache(cfg)
        try:  # load when the process starts, not on its first mail (a 250 must not wait seconds for it)
            load_cached(model_path)
        except ModelError:
            pass  # logged once by load_cached; each mail then records CONTENT_TEMPFAIL

    async def run(self, ctx: CheckContext) -> None:
        if ctx.mail is None:
            return
        model = load_cached(self.model_path)
        x = vectorize([ctx.mail])
        base = float(model.log_odds(x)[0])
        tenant_ids = list(dict.fromkeys(ctx.tenant_ids))
        deltas = self.deltas.peek(tenant_ids)
        if deltas is None:
            deltas = await asyncio.to_thread(self.deltas.get, tenant_ids)
        shared = _dot(deltas[SHARED], x)
        own = {tid: _dot(deltas[tid], x) for tid in tenant_ids if deltas[tid] is not None}
        if not own:
            ctx.add(*self._finding(model, base, shared, None))
            return
        for tid in tenant_ids:
            symbol, reason = self._finding(model, base, shared, own.get(tid))
            ctx.add(symbol, reason, tenant_id=tid)

    @staticmethod
    def _finding(model: ContentModel, base: float, shared: float, own: float | None) -> tuple[str, str]:
        log_odds = max(-MAX_LOG_ODDS, min(MAX_LOG_ODDS, base + shared + (own or 0.0)))
        probability = sigmoid(log_odds)
        parts = [f"base {base:+.2f}"]
        if shared:
            parts.append(f"shared learning {shared:+.2f}")
        if own is not None:
            parts.append(f"own learning {own:+.2f}")
        return band_of(probability), (f"probability {probability:.4f} (log-odds {log_odds:+.2f}: "
                                      f"{', '.join(parts)}; model {model.version})")
