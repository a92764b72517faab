"""Run the registered checks of a stage: in dependency order, independent ones concurrently, each under its timeout.

A check that raises or times out records ``<NAME>_TEMPFAIL`` (score 0 unless its score file says otherwise) and a
log line; the session goes on. For a ``required`` check the TEMPFAIL symbol carries the ``tempfail`` effect, and the
tenant's policy decides between 451 and accepting (see :mod:`smtp.verdict`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from smtp.checks.base import Check, CheckContext, Stage
from tenants.metrics import CHECK_SECONDS

log = logging.getLogger(__name__)


def layers(checks: Sequence[Check]) -> list[list[Check]]:
    """Group checks into layers: each layer depends only on earlier ones. An unknown or cyclic dependency raises."""
    by_name = {c.name: c for c in checks}
    done: set[str] = set()
    remaining = list(checks)
    out: list[list[Check]] = []
    while remaining:
        ready = [c for c in remaining if all(d in done or d not in by_name for d in c.depends_on)]
        if not ready:
            raise ValueError(f"check dependencies form a cycle: {', '.join(c.name for c in remaining)}")
        out.append(ready)
        done.update(c.name for c in ready)
        remaining = [c for c in remaining if c not in ready]
    return out


async def _run_one(check: Check, ctx: CheckContext) -> None:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(check.timeout):
            await check.run(ctx)
    except TimeoutError:
        log.warning("check %s timed out after %.1fs (client %s)", check.name, check.timeout, ctx.client_ip)
        ctx.add(check.tempfail_symbol, f"{check.name} timed out after {check.timeout:g}s")
    except Exception as exc:
        log.exception("check %s failed (client %s)", check.name, ctx.client_ip)
        ctx.add(check.tempfail_symbol, f"{check.name} failed: {type(exc).__name__}: {exc}")
    finally:
        CHECK_SECONDS.labels(check.name).observe(time.perf_counter() - started)


async def run_stage(checks: Sequence[Check], ctx: CheckContext, stage: Stage) -> None:
    """Run every enabled check of ``stage`` that applies to the context's direction."""
    active = [c for c in checks if c.stage == stage and c.enabled and ctx.direction in c.directions]
    for layer in layers(active):
        await asyncio.gather(*(_run_one(c, ctx) for c in layer))
