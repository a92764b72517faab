"""Detection: spam recall and ham false positives of the DATA-stage checks on the SpamAssassin public corpus.

Fetches the corpus with ``/work/shared/corpus/fetch-spamassassin.sh`` (cached under ``var/corpus``), sets up a
throwaway SQLite installation with one tenant, trains its Bayes on easy-ham-1 + spam-1, then runs every mail of
easy-ham-2 + hard-ham-1 + spam-2 through the DATA stage of the check pipeline, network checks excluded (the
corpus is from 2002: its senders' DNS, SPF and DKIM are gone). A mail's score is the sum of its findings' scores
under the default policy, the tenant's own findings (Bayes) included. Prints figures; never pass/fail.

    .venv/bin/python bench/detection.py
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from email.utils import parseaddr
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from smtp.checks import Check, CheckContext, Stage, build_checks  # noqa: E402
from smtp.checks.bayes import BayesCheck  # noqa: E402
from smtp.checks.rules import RulesCheck  # noqa: E402
from smtp.mime import ParsedMail, parse_mail  # noqa: E402
from smtp.pipeline import run_stage  # noqa: E402
from tenants import bayes  # noqa: E402
from tenants.config import Config  # noqa: E402
from tenants.db import dispose_engines, migrate, session_scope  # noqa: E402
from tenants.policy import Policy  # noqa: E402
from tenants.scope import msp_scope, tenant_scope  # noqa: E402
from tenants.services import create_tenant  # noqa: E402
from tenants.symbols import lookup  # noqa: E402

FETCH_SCRIPT = Path("/work/shared/corpus/fetch-spamassassin.sh")
DEFAULT_CORPUS = ROOT / "var" / "corpus" / "spamassassin"
TRAIN_HAM, TRAIN_SPAM = ("easy-ham-1",), ("spam-1",)
TEST_HAM, TEST_SPAM = ("easy-ham-2", "hard-ham-1"), ("spam-2",)
#: Checks that need the network (or a scanner daemon) and are left out.
NETWORK_CHECKS = frozenset({"dnsbl", "uribl", "spf", "auth", "dkim", "dmarc", "arc", "clam", "clamav", "virus",
                            "spamd", "rspamd", "greylist"})
#: The false-positive rate the headline recall is measured at.
TARGET_FP = 0.001
TENANT = "Bench"
DOMAIN = "bench.test"


def fetch_corpus(dest: Path) -> Path:
    out = subprocess.run(["bash", str(FETCH_SCRIPT), str(dest)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def mails(corpus: Path, sets: tuple[str, ...]) -> Iterator[tuple[str, ParsedMail]]:
    for name in sets:
        for path in sorted((corpus / name).iterdir()):
            if path.is_file() and not path.name.startswith("."):
                yield name, parse_mail(path.read_bytes())


def pipeline_checks(cfg: Config) -> list[Check]:
    """The registered checks minus network ones; Bayes and rules added if the registry lacks them."""
    checks = [c for c in build_checks(cfg) if c.name not in NETWORK_CHECKS]
    names = {c.name for c in checks}
    checks += [cls(cfg) for cls in (BayesCheck, RulesCheck) if cls.name not in names]
    return checks


async def score_mail(checks: list[Check], cfg: Config, tenant_id: int, policy: Policy,
                     mail: ParsedMail) -> tuple[float, list[str]]:
    sender = parseaddr(mail.header("Return-Path") or mail.header("From") or "")[1]
    ctx = CheckContext(cfg=cfg, client_ip="192.0.2.25", helo="mail.sender.example", mail_from=sender,
                       rcpts=[f"user@{DOMAIN}"], tenant_ids=[tenant_id], policies={tenant_id: policy}, mail=mail)
    await run_stage(checks, ctx, Stage.DATA)
    mine = [f.symbol for f in ctx.findings if f.tenant_id in (None, tenant_id)]
    return math.fsum(policy.score_of(s, lookup(s).score) for s in mine), mine


def rate(scores: list[float], threshold: float) -> float:
    return sum(s >= threshold for s in scores) / len(scores) if scores else 0.0


#: Per corpus set, the (score, symbols) of each mail.
Results = dict[str, list[tuple[float, list[str]]]]


async def evaluate(cfg: Config, corpus: Path, tenant_id: int, policy: Policy) -> Results:
    checks = pipeline_checks(cfg)
    print(f"checks: {', '.join(sorted(c.name for c in checks if c.stage == Stage.DATA))}")
    results: Results = {}
    for name, mail in mails(corpus, TEST_HAM + TEST_SPAM):
        results.setdefault(name, []).append(await score_mail(checks, cfg, tenant_id, policy, mail))
    for check in checks:
        await check.close()
    return results


def at_fp(ham: list[float], spam: list[float]) -> tuple[float, float, float]:
    """(score bar, spam recall, ham false-positive rate) for the lowest bar that at most TARGET_FP of ham exceed."""
    allowed = math.floor(TARGET_FP * len(ham))  # ham mails that may score above the bar
    ranked = sorted(ham, reverse=True)
    bar = ranked[allowed] if allowed < len(ranked) else -math.inf
    return bar, sum(s > bar for s in spam) / len(spam), sum(s > bar for s in ham) / len(ham)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="where the corpus is cached")
    parser.add_argument("--symbols", type=int, default=40, help="symbols shown in the hit table (0: none)")
    args = parser.parse_args()

    corpus = fetch_corpus(args.corpus)
    policy = Policy()
    with tempfile.TemporaryDirectory(prefix="mw-detect-") as tmp:
        cfg = Config(data_dir=Path(tmp), database_url=f"sqlite:///{tmp}/mailward.db")
        migrate(cfg)
        with msp_scope(), session_scope(cfg) as session:
            tenant_id = create_tenant(session, TENANT).id

        started = time.monotonic()
        with tenant_scope(tenant_id), session_scope(cfg) as session:
            nham = bayes.train(session, tenant_id, (m for _, m in mails(corpus, TRAIN_HAM)), spam=False)
            nspam = bayes.train(session, tenant_id, (m for _, m in mails(corpus, TRAIN_SPAM)), spam=True)
        with tenant_scope(tenant_id), session_scope(cfg) as session:
            learnt = bayes.stats(session, tenant_id)
        print(f"trained {nham} ham + {nspam} spam ({learnt.tokens} tokens) in {time.monotonic() - started:.1f}s")

        started = time.monotonic()
        results = asyncio.run(evaluate(cfg, corpus, tenant_id, policy))
        elapsed = time.monotonic() - started
        dispose_engines()

    ham = [s for name in TEST_HAM for s, _ in results[name]]
    spam = [s for name in TEST_SPAM for s, _ in results[name]]
    total = len(ham) + len(spam)
    print(f"scored {total} mails in {elapsed:.1f}s ({1000 * elapsed / total:.1f} ms per mail)")

    if args.symbols:
        hits: dict[str, Counter[str]] = {name: Counter() for name in results}
        for name, rows in results.items():
            for _, symbols in rows:
                hits[name].update(set(symbols))
        every = Counter[str]()
        for counter in hits.values():
            every.update(counter)
        print(f"\n{'symbol':<26} {'score':>6} " + " ".join(f"{n:>11}" for n in results))
        for symbol, _ in every.most_common(args.symbols):
            cells = " ".join(f"{100 * hits[n][symbol] / len(results[n]):10.1f}%" for n in results)
            print(f"{symbol:<26} {policy.score_of(symbol, lookup(symbol).score):6.1f} {cells}")
        print()

    for label, threshold in (("tag", policy.tag_threshold), ("quarantine", policy.quarantine_threshold)):
        per_set = ", ".join(f"{n} {100 * rate([s for s, _ in results[n]], threshold):.1f}%" for n in results)
        print(f"at the {label} threshold {threshold:g}: spam recall {rate(spam, threshold):.4f}, "
              f"ham false positives {rate(ham, threshold):.4f} (at or above, by set: {per_set})")

    bar, recall_at, fp_at = at_fp(ham, spam)
    print(f"at <= {100 * TARGET_FP:g}% false positives ({math.floor(TARGET_FP * len(ham))} of {len(ham)} ham): "
          f"threshold > {bar:.2f}, spam recall {recall_at:.4f} (ham false positives {fp_at:.4f})")
    easy = [s for s, _ in results[TEST_HAM[0]]]
    easy_bar, easy_recall, _ = at_fp(easy, spam)
    print(f"  the same against {TEST_HAM[0]} alone ({len(easy)} ham): threshold > {easy_bar:.2f}, "
          f"spam recall {easy_recall:.4f}")
    ranked = sorted(ham, reverse=True)
    print(f"highest ham scores: {', '.join(f'{s:.1f}' for s in ranked[:10])}")

    threshold = policy.quarantine_threshold
    print(f"recall={rate(spam, threshold):.4f} fp={rate(ham, threshold):.4f} recall_at_fp_0.1pct={recall_at:.4f}")


if __name__ == "__main__":
    main()
