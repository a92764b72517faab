"""Profile the DATA stage: CPU per mail of each check on a sample of held-out mail, and where that CPU goes.

Builds the checks the way ``bench/detection.py`` does (network checks left out, the tenant's Bayes trained on the
training split, the benchmark's content model) and runs them, one after the other so each check's CPU can be told
apart, on ``-n`` held-out mails spread evenly over every shared corpus. Worker-thread hops (``asyncio.to_thread``)
run inline here so the profiler sees the work they do. Prints ms per mail for parsing and for each check, then (with
``--profile``) the top entries of cProfile by cumulative and by own time.

The findings (symbols and reasons of every check, and the score under the default policy) can be recorded once
(``--record``) and compared on later runs (``--check``): a speed-up must leave every one of them unchanged.

    .venv/bin/python bench/detection.py                          # once: unpacks the corpora, trains Bayes
    .venv/bin/python bench/profile_data_stage.py --record        # findings of the sample, before a change
    .venv/bin/python bench/profile_data_stage.py --check --profile   # after: same findings? where does CPU go?
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import math
import pstats
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from email.utils import parseaddr
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from bench.detection import (  # noqa: E402
    BENCH_DIR,
    DEFAULT_CORPUS,
    DOMAIN,
    MODEL_CACHE,
    TENANT,
    evaluation_sets,
    pipeline_checks,
)
from smtp.checks import Check, CheckContext, Stage  # noqa: E402
from smtp.mime import parse_mail  # noqa: E402
from smtp.pipeline import layers  # noqa: E402
from smtp.sarules.engine import Engine  # noqa: E402
from smtp.sarules.matcher import Entry  # noqa: E402
from tenants.content.corpus import Sample, find_collections, read_mail  # noqa: E402
from tenants.content.model import BASE_MODEL  # noqa: E402
from tenants.content.train import training_digest  # noqa: E402
from tenants.platform.config import Config  # noqa: E402
from tenants.platform.db import dispose_engines, migrate, session_scope  # noqa: E402
from tenants.policy import Policy  # noqa: E402
from tenants.scope import msp_scope  # noqa: E402
from tenants.services import get_tenant  # noqa: E402
from tenants.symbols import lookup  # noqa: E402

#: Where ``--record`` writes the findings and ``--check`` reads them.
FINDINGS = BENCH_DIR / "profile-findings.json"
#: The SpamAssassin rules found too slow for Python ``re`` by the first run, skipped by the later ones as well.
SLOW_RULES = BENCH_DIR / "profile-slow-rules.json"
#: Profile entries printed per ordering.
TOP = 25
#: Mail size the CPU is also given for (the issue's budget: 10 ms per 10 KB mail).
BUDGET_BYTES = 10 * 1024

T = TypeVar("T")


async def _inline(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``asyncio.to_thread`` run in the calling thread, so that cProfile and the per-check clock see the work."""
    return func(*args, **kwargs)


def pin_slow_rules() -> None:
    """Skip the same slow SpamAssassin rules on every run. The engine times each rule at load and skips the slow
    ones, so on a busy machine the rule set (and a few findings) changes from one process to the next; the first run
    writes the rules it skipped to :data:`SLOW_RULES`, and later runs skip exactly those."""
    timed = Engine._fast_enough
    pinned: set[str] | None = set(json.loads(SLOW_RULES.read_text())) if SLOW_RULES.exists() else None
    found: set[str] = set()

    def fast_enough(engine: Engine, entries: list[Entry], kind: str) -> list[Entry]:
        if pinned is None:
            kept = timed(engine, entries, kind)
            found.update({e.name for e in entries} - {e.name for e in kept})
            SLOW_RULES.write_text(json.dumps(sorted(found)))
            return kept
        for entry in entries:
            if entry.name in pinned:
                engine._skip(engine.ruleset.rules[entry.name], "regex too slow (pinned by the profile)")
                engine.report.loaded[kind] -= 1
        return [e for e in entries if e.name not in pinned]

    Engine._fast_enough = fast_enough  # type: ignore[method-assign,assignment]


def sample(n: int) -> list[Sample]:
    """``n`` held-out mails spread evenly over every corpus's held-out part (the same ones on every run)."""
    collections = find_collections([DEFAULT_CORPUS])
    heldout = list({s.path: s for ev in evaluation_sets(collections) for s in ev.spam + ev.ham}.values())
    heldout.sort(key=lambda s: str(s.path))
    step = max(1, len(heldout) // n)
    return heldout[::step][:n]


def installation() -> tuple[Config, int]:
    """The benchmark's installation (Bayes trained on the training split), made by ``bench/detection.py``."""
    collections = find_collections([DEFAULT_CORPUS])
    home = BENCH_DIR / f"install-{training_digest(collections)}"
    if not (home / "ready").exists():
        sys.exit(f"profile: no benchmark installation at {home}: run bench/detection.py once first")
    cfg = Config(data_dir=home, database_url=f"sqlite:///{home}/mailward.db")
    migrate(cfg)
    with msp_scope(), session_scope(cfg) as session:
        tenant_id = get_tenant(session, TENANT).id
    return cfg, tenant_id


async def run_mail(checks: list[Check], cfg: Config, tenant_id: int, policy: Policy, raw: bytes,
                   cpu: dict[str, float]) -> dict[str, Any]:
    """Parse and run the DATA stage on one mail, check after check; adds each one's CPU seconds to ``cpu``."""
    started = time.process_time()
    mail = parse_mail(raw)
    cpu["(parse_mail)"] += time.process_time() - started
    sender = parseaddr(mail.header("Return-Path") or mail.header("From") or "")[1]
    ctx = CheckContext(cfg=cfg, client_ip="192.0.2.25", helo="mail.sender.example", mail_from=sender,
                       rcpts=[f"user@{DOMAIN}"], tenant_ids=[tenant_id], policies={tenant_id: policy}, mail=mail)
    by_check: dict[str, list[list[Any]]] = {}
    active = [c for c in checks if c.stage == Stage.DATA and c.enabled and ctx.direction in c.directions]
    for layer in layers(active):
        for check in layer:
            before = len(ctx.findings)
            started = time.process_time()
            try:
                await check.run(ctx)
            except Exception as exc:  # the pipeline records a TEMPFAIL; here the failure is a finding too
                ctx.add(check.tempfail_symbol, f"{type(exc).__name__}: {exc}")
            cpu[check.name] += time.process_time() - started
            by_check[check.name] = [[f.symbol, f.reason, f.tenant_id] for f in ctx.findings[before:]]
    mine = [f.symbol for f in ctx.findings if f.tenant_id in (None, tenant_id)]
    score = math.fsum(policy.score_of(s, lookup(s).score) for s in mine)
    return {"score": round(score, 6), "checks": by_check}


async def run_all(checks: list[Check], cfg: Config, tenant_id: int, mails: list[tuple[str, bytes]],
                  cpu: dict[str, float]) -> dict[str, Any]:
    policy = Policy()
    out = {}
    for name, raw in mails:
        out[name] = await run_mail(checks, cfg, tenant_id, policy, raw, cpu)
    return out


def profiled(run: Callable[[], Coroutine[Any, Any, T]], enabled: bool, dump: Path | None) -> T:
    if not enabled:
        return asyncio.run(run())
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return asyncio.run(run())
    finally:
        profiler.disable()
        if dump is not None:
            profiler.dump_stats(dump)
        for order in ("cumulative", "tottime"):
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(order).print_stats(TOP)
            print(f"\n--- top {TOP} by {order} ---")
            print("\n".join(line for line in text.getvalue().splitlines()
                            if line.strip() and not line.startswith(("   Ordered", "   List reduced"))))


def compare(recorded: dict[str, Any], now: dict[str, Any]) -> int:
    """Number of mails whose findings or score differ; prints the first few differences."""
    differing = 0
    for name in sorted(set(recorded) | set(now)):
        if recorded.get(name) != now.get(name):
            differing += 1
            if differing <= 5:
                before, after = recorded.get(name, {}), now.get(name, {})
                print(f"DIFFERS {name}: score {before.get('score')} -> {after.get('score')}")
                for check in sorted(set(before.get("checks", {})) | set(after.get("checks", {}))):
                    b, a = before.get("checks", {}).get(check), after.get("checks", {}).get(check)
                    if a != b:
                        print(f"  {check}: {b}\n  {' ' * len(check)}  -> {a}")
    return differing


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="held-out mails to run (spread over every corpus)")
    parser.add_argument("--profile", action="store_true", help="run under cProfile and print the top entries")
    parser.add_argument("--record", action="store_true", help=f"write the findings to {FINDINGS.relative_to(ROOT)}")
    parser.add_argument("--check", action="store_true", help="compare the findings with the recorded ones")
    parser.add_argument("--dump", type=Path, default=None, help="with --profile: also write the raw stats here")
    parser.add_argument("--skip", action="append", default=[], metavar="CHECK", help="leave a check out")
    args = parser.parse_args()

    asyncio.to_thread = _inline  # type: ignore[assignment]  # this process only: see the work in threads
    pin_slow_rules()
    cfg, tenant_id = installation()
    model_path = MODEL_CACHE if MODEL_CACHE.exists() else BASE_MODEL
    checks = pipeline_checks(cfg, model_path, set(args.skip))
    mails = [(f"{s.collection}/{s.folder}/{s.path.name}", read_mail(s.path)) for s in sample(args.n)]
    size = sum(len(raw) for _, raw in mails)
    print(f"{len(mails)} mails, {size / len(mails) / 1024:.1f} KB average; checks: "
          f"{', '.join(c.name for c in checks if c.stage == Stage.DATA)}")

    # One untimed mail first: models, rule sets and database connections load on first use.
    asyncio.run(run_all(checks, cfg, tenant_id, mails[:1], defaultdict(float)))
    cpu: dict[str, float] = defaultdict(float)
    started = time.process_time()
    results = profiled(lambda: run_all(checks, cfg, tenant_id, mails, cpu), args.profile, args.dump)
    total = time.process_time() - started
    for check in checks:
        asyncio.run(check.close())
    dispose_engines()

    print(f"\nCPU per mail{' (under cProfile: inflated)' if args.profile else ''}:")
    for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<16} {1000 * seconds / len(mails):8.2f} ms/mail")
    print(f"  {'total':<16} {1000 * total / len(mails):8.2f} ms/mail, "
          f"{1000 * total * BUDGET_BYTES / size:.2f} ms per 10 KB (budget 10)")

    if args.record:
        FINDINGS.write_text(json.dumps(results, sort_keys=True, indent=0))
        print(f"findings of {len(results)} mails recorded in {FINDINGS.relative_to(ROOT)}")
    if args.check:
        if not FINDINGS.exists():
            sys.exit(f"profile: nothing recorded yet ({FINDINGS.relative_to(ROOT)}): run with --record first")
        recorded = json.loads(FINDINGS.read_text())
        differing = compare(recorded, json.loads(json.dumps(results)))
        print(f"findings check: {len(results) - differing}/{len(results)} mails identical"
              f"{'' if differing else ' (every check, every symbol, reason and score)'}")
        if differing:
            sys.exit(1)


if __name__ == "__main__":
    main()
