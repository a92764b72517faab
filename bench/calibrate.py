"""Calibrate Mailward's own symbol scores on the training parts of the shared corpora (tenants/calibration.py).

Every training mail (copies of held-out mail dropped) is run through the DATA-stage checks as ``bench/detection.py``
runs held-out mail, with what a learnt check would say of a mail it never saw:

- Bayes is cross-fitted: each training folder is cut in two halves by file order (older and newer mail, as far as
  file order follows time), one tenant's Bayes is trained on each, and every mail is scored by the tenant trained
  on the other half: a Bayes that has not seen the same weeks' mail, as a tenant's has not seen next month's;
- the content model's band is the one of its out-of-collection log-odds (a model trained on the other corpora,
  :func:`tenants.content.train.train`).

The findings, the labels and the shipped scores go to :func:`tenants.calibration.calibrate`, which refits Mailward's
own symbols (SpamAssassin's rules stay at their own scores) towards the shipped scores and keeps the changes that
every fit with one collection left out confirms. The held-out parts are never read here but to drop their copies
from training; ``bench/detection.py`` then measures them with (default) and without (``--uncalibrated``) the layer.

    .venv/bin/python bench/calibrate.py            # fit and print; nothing written
    .venv/bin/python bench/calibrate.py --write    # also write tenants/scores/calibration.toml
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from bench.detection import BENCH_DIR, DEFAULT_CORPUS, MODEL_CACHE, pipeline_checks, prepare_corpora, score_mail  # noqa: E402
from smtp.checks import Stage  # noqa: E402
from smtp.checks.content import ContentCheck  # noqa: E402
from smtp.mime import parse_mail  # noqa: E402
from tenants.calibration import Data, calibrate, layer_toml  # noqa: E402
from tenants.content.corpus import Sample, find_collections, read_mail  # noqa: E402
from tenants.content.model import band_of, sigmoid  # noqa: E402
from tenants.content.train import train, training_digest  # noqa: E402
from tenants.mail import bayes  # noqa: E402
from tenants.platform.config import Config  # noqa: E402
from tenants.platform.db import dispose_engines, migrate, session_scope  # noqa: E402
from tenants.policy import Policy  # noqa: E402
from tenants.scope import msp_scope, tenant_scope  # noqa: E402
from tenants.services import create_tenant, get_tenant  # noqa: E402
from tenants.symbols import CALIBRATION_FILE, lookup, shipped_table, use_calibration  # noqa: E402


def halves(samples: list[Sample]) -> dict[Path, int]:
    """The cross-fitting half of each training mail: the first or the second half of its folder in file order."""
    folders: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        folders.setdefault((s.collection, s.folder), []).append(s)
    out: dict[Path, int] = {}
    for members in folders.values():
        ordered = sorted(members, key=lambda s: s.path.name)
        for i, s in enumerate(ordered):
            out[s.path] = 0 if i < len(ordered) // 2 else 1
    return out


def installation(home: Path, samples: list[Sample], half: dict[Path, int], fresh: bool
                 ) -> tuple[Config, dict[int, int]]:
    """A throwaway installation with one tenant per half, each tenant's Bayes trained on its own half."""
    cfg = Config(data_dir=home, database_url=f"sqlite:///{home}/mailward.db")
    migrate(cfg)
    tenants: dict[int, int] = {}
    for h in (0, 1):
        with msp_scope(), session_scope(cfg) as session:
            name = f"Half{h}"
            tenants[h] = create_tenant(session, name).id if fresh else get_tenant(session, name).id
        if fresh:
            mine = [s for s in samples if half[s.path] == h]
            with tenant_scope(tenants[h]), session_scope(cfg) as session:
                for spam in (False, True):
                    bayes.train(session, tenants[h],
                                (parse_mail(read_mail(s.path)) for s in mine if s.spam == spam), spam=spam)
    return cfg, tenants


async def findings(cfg: Config, samples: list[Sample], half: dict[Path, int], tenants: dict[int, int],
                   oof: dict[Path, float]) -> list[list[str]]:
    """Each mail's symbols: the DATA-stage checks with the other half's Bayes, and its out-of-collection band."""
    checks = pipeline_checks(cfg, MODEL_CACHE, {ContentCheck.name})
    print(f"checks: {', '.join(sorted(c.name for c in checks if c.stage == Stage.DATA))}", flush=True)
    await asyncio.gather(*(c.ready() for c in checks))
    policy = Policy()
    out: list[list[str]] = []
    started = time.monotonic()
    for i, sample in enumerate(samples):
        mail = parse_mail(read_mail(sample.path))
        _, symbols = await score_mail(checks, cfg, tenants[1 - half[sample.path]], policy, mail)
        out.append([*symbols, band_of(sigmoid(oof[sample.path]))])
        if (i + 1) % 500 == 0:
            print(f"  {i + 1}/{len(samples)} mails scored ({time.monotonic() - started:.0f}s)", flush=True)
    for check in checks:
        await check.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="where the corpora are unpacked")
    parser.add_argument("--write", action="store_true", help=f"write {CALIBRATION_FILE.relative_to(ROOT)}")
    parser.add_argument("--rescore", action="store_true", help="score the training mail again (no cached findings)")
    parser.add_argument("--jobs", type=int, default=0, help="processes parsing mail for training (0: one per core)")
    args = parser.parse_args()
    use_calibration(False)  # fit towards the shipped scores, never towards an earlier calibration

    collections = find_collections([prepare_corpora(args.corpus)])
    digest = training_digest(collections)
    home = BENCH_DIR / f"calibrate-{digest}-byorder"
    cache = home / "findings.json"
    if args.rescore and home.exists():
        shutil.rmtree(home)
    if cache.exists():
        saved = json.loads(cache.read_text())
        symbols, spam, groups = saved["symbols"], saved["spam"], saved["groups"]
        print(f"findings of {len(symbols)} training mails reused from {cache.relative_to(ROOT)}")
    else:
        started = time.monotonic()
        result = train(collections, jobs=args.jobs, progress=lambda line: print(f"  {line}", flush=True))
        result.model.save(MODEL_CACHE)
        print(f"content model trained in {time.monotonic() - started:.0f}s (out-of-collection log-odds kept)")
        samples = [s for c in collections for s in c.train if s.path in result.out_of_collection_log_odds]
        fresh = not (home / "ready").exists()
        if fresh and home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        half = halves(samples)
        cfg, tenants = installation(home, samples, half, fresh)
        (home / "ready").touch()
        print(f"two half-trained Bayes tenants ready in {time.monotonic() - started:.0f}s", flush=True)
        symbols = asyncio.run(findings(cfg, samples, half, tenants, result.out_of_collection_log_odds))
        dispose_engines()
        spam = [s.spam for s in samples]
        groups = [s.collection for s in samples]
        cache.write_text(json.dumps({"symbols": symbols, "spam": spam, "groups": groups}))

    data = Data(symbols, np.array(spam, dtype=bool), np.array(groups))
    shipped = shipped_table()
    seen = {s for row in symbols for s in row}
    prior = {s: lookup(s).score for s in seen}
    fittable = {s for s, sym in shipped.items() if sym.effect is None and not s.endswith("_TEMPFAIL")}
    started = time.monotonic()
    result = calibrate(data, prior, fittable)
    print(f"\ncalibrated on {len(symbols)} training mails ({int(data.spam.sum())} spam) in "
          f"{time.monotonic() - started:.0f}s; {len(result.fitted)} symbols fitted (>= 10 hits), pull {result.lam:g}")
    for lam, loss in result.cv_loss.items():
        print(f"  cross-validated log-loss at pull {lam:g}: {loss:.4f}")
    print(f"  cross-validated log-loss with the shipped scores: {result.loss_prior:.4f}")
    print(f"  intercept {result.intercept:.3f}: evidence reaches 1000:1 at {result.threshold_for(1000):.2f} points, "
          f"100:1 at {result.threshold_for(100):.2f}")
    print(f"\n{'symbol':<26} {'hits':>6} {'shipped':>8} {'fit':>7} {'kept':>7}")
    for s in sorted(result.fitted, key=lambda k: -abs(result.fitted[k] - result.prior[k])):
        kept = f"{result.scores[s]:7.2f}" if s in result.scores else "      -"
        print(f"{s:<26} {result.hits[s]:6d} {result.prior[s]:8.2f} {result.fitted[s]:7.2f} {kept}"
              f"{'  (' + result.dropped[s] + ')' if s in result.dropped else ''}")
    if args.write:
        source = (f"training parts of {', '.join(c.name for c in collections)} (split {digest}), "
                  f"{len(symbols)} mails, Bayes cross-fitted in halves, content out of collection")
        CALIBRATION_FILE.write_text(layer_toml(result, source=source))
        print(f"\nwrote {CALIBRATION_FILE.relative_to(ROOT)} ({len(result.scores)} scores)")
    else:
        print("\n(nothing written; --write writes the layer)")


if __name__ == "__main__":
    main()
