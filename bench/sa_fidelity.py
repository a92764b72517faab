"""SpamAssassin fidelity: Mailward's native rule engine against Debian's spamd on the same mails and rule files.

Runs a corpus (default: the SpamAssassin public corpus's evaluation split, easy-ham-2 + hard-ham-1 + spam-2, fetched
by ``../shared/corpus/fetch-spamassassin.sh`` and cached under ``var/corpus``) through Mailward's engine and through
a local spamd (``-L``: no network tests; Bayes off), and prints: agreement of the rule hits per rule kind (precision
and recall of Mailward's hit set against spamd's, network/Bayes/list rules left out since neither runs them), the
correlation of the scores, spam recall at <= 0.1 % false positives for each, and CPU milliseconds per mail.
Figures only, never pass/fail.

    .venv/bin/python bench/sa_fidelity.py                 # the whole evaluation split (several minutes)
    .venv/bin/python bench/sa_fidelity.py --limit 300     # the first 300 mails of each set
    .venv/bin/python bench/sa_fidelity.py --no-spamd      # Mailward's figures alone

``rules_only_report(corpus=...)`` prints the Mailward-only figures for ``bench/detection.py --rules-only``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from smtp.checks.spamd import SpamdClient, SpamdError  # noqa: E402
from smtp.sarules import Engine, SaMessage, load_engine  # noqa: E402
from smtp.sarules.message import Envelope  # noqa: E402
from tenants.mail.mimetext import parse_message  # noqa: E402
from tenants.platform.config import get_config  # noqa: E402
from tenants.sarules import SCORE_SET, locate  # noqa: E402

FETCH_SCRIPT = ROOT.parent / "shared" / "corpus" / "fetch-spamassassin.sh"
DEFAULT_CORPUS = ROOT / "var" / "corpus" / "spamassassin"
HAM_SETS, SPAM_SETS = ("easy-ham-2", "hard-ham-1"), ("spam-2",)
#: The false-positive rate the headline recall is measured at.
TARGET_FP = 0.001
#: spamd's score set with -L and Bayes off; Mailward's engine is also run with it for a like-for-like comparison.
SPAMD_SCORE_SET = 0


@dataclass
class Outcome:
    """One engine's results on the corpus."""

    name: str
    scores: dict[str, float] = field(default_factory=dict)
    hits: dict[str, frozenset[str]] = field(default_factory=dict)
    cpu: float = 0.0
    mails: int = 0


def fetch_corpus(dest: Path) -> Path:
    if (dest / ".complete").exists() or all((dest / s).is_dir() for s in HAM_SETS + SPAM_SETS):
        return dest
    out = subprocess.run(["bash", str(FETCH_SCRIPT), str(dest)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def corpus_mails(corpus: Path, sets: Sequence[str], limit: int) -> Iterator[tuple[str, str, bytes]]:
    """(set, mail id, raw bytes) of the first ``limit`` mails (0: all) of each set, in file-name order."""
    for name in sets:
        paths = sorted(p for p in (corpus / name).iterdir() if p.is_file() and not p.name.startswith("."))
        for path in paths[:limit or None]:
            yield name, f"{name}/{path.name}", path.read_bytes()


def run_mailward(engine: Engine, mails: list[tuple[str, str, bytes]], label: str) -> Outcome:
    """Every mail through the engine; CPU counts the SpamAssassin view of the mail and the rules (the MIME parse
    is shared with the other checks in the pipeline and timed apart)."""
    out = Outcome(label)
    parse_cpu = 0.0
    for _, key, raw in mails:
        started = time.process_time()
        message = parse_message(raw)
        parse_cpu += time.process_time() - started
        started = time.process_time()
        counts = engine.counts(SaMessage(raw, Envelope(), message))
        out.cpu += time.process_time() - started
        names = frozenset(n for n in counts if not n.startswith("__"))
        out.hits[key] = names
        out.scores[key] = math.fsum(engine.scores.get(n, 0.0) for n in names)
        out.mails += 1
    print(f"{label}: {out.cpu / max(out.mails, 1) * 1000:.2f} ms CPU per mail for the rules "
          f"(+ {parse_cpu / max(out.mails, 1) * 1000:.2f} ms for the MIME parse shared with the other checks)")
    return out


def _process_cpu(pid: int) -> float:
    """CPU seconds of a process and its children that are still running (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def start_spamd(rules_dir: Path) -> Any:
    """spamd as tests/support/peers.py starts it (-L, Bayes off), reading the rule directory Mailward's engine reads."""
    from tests.support.peers import start_spamd as start

    return start(rules_dir=rules_dir, children=1, timeout=120)


def run_spamd(mails: list[tuple[str, str, bytes]], rules_dir: Path) -> Outcome:
    server = start_spamd(rules_dir)
    out = Outcome("spamd -L")
    client = SpamdClient(server.address, timeout=120)
    try:
        before = _process_cpu(server.proc.pid)

        async def scan() -> None:
            for _, key, raw in mails:
                try:
                    result = await client.symbols(raw)
                except SpamdError as exc:
                    print(f"spamd: {key}: {exc}")
                    continue
                out.scores[key] = result.score
                out.hits[key] = frozenset(result.rules)
                out.mails += 1

        asyncio.run(scan())
        out.cpu = _process_cpu(server.proc.pid) - before
    finally:
        server.stop()
    print(f"spamd -L: {out.cpu / max(out.mails, 1) * 1000:.2f} ms CPU per mail (spamd's processes)")
    return out


def recall_at_fp(ham: list[float], spam: list[float], fp_rate: float = TARGET_FP) -> tuple[float, float]:
    """(spam recall, threshold) at the lowest threshold whose ham false-positive rate is at most ``fp_rate``."""
    allowed = math.floor(len(ham) * fp_rate)
    ranked = sorted(ham, reverse=True)
    threshold = ranked[allowed] + 1e-9 if allowed < len(ranked) else -math.inf
    return sum(1 for s in spam if s >= threshold) / max(len(spam), 1), threshold


def pearson(a: list[float], b: list[float]) -> float:
    n = len(a)
    if n < 2:
        return float("nan")
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    va = math.sqrt(sum((x - ma) ** 2 for x in a))
    vb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return cov / (va * vb) if va and vb else float("nan")


def print_detection(outcome: Outcome, mails: list[tuple[str, str, bytes]]) -> None:
    ham = [outcome.scores[k] for s, k, _ in mails if s in HAM_SETS and k in outcome.scores]
    spam = [outcome.scores[k] for s, k, _ in mails if s in SPAM_SETS and k in outcome.scores]
    recall, threshold = recall_at_fp(ham, spam)
    at5 = sum(1 for s in spam if s >= 5.0) / max(len(spam), 1)
    fp5 = sum(1 for h in ham if h >= 5.0) / max(len(ham), 1)
    print(f"  {outcome.name:<28} recall@<=0.1%FP {recall:.3f} (threshold {threshold:.2f});  "
          f"at 5.0: recall {at5:.3f}, FP {fp5:.4f}  ({len(ham)} ham, {len(spam)} spam)")


def print_agreement(engine: Engine, ours: Outcome, spamd: Outcome) -> None:
    """Micro precision / recall of Mailward's hit sets against spamd's, per rule kind, over rules both can run."""
    rules = engine.ruleset.rules
    skipped = {n for names in engine.report.skipped.values() for n in names}
    comparable = {n for n in rules if n not in skipped and not n.startswith("__")}
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    extra: Counter[str] = Counter()
    missed: Counter[str] = Counter()
    keys = [k for k in spamd.hits if k in ours.hits]
    for key in keys:
        mine, theirs = ours.hits[key] & comparable, spamd.hits[key] & comparable
        for name in mine | theirs:
            rule = rules[name]
            kind = f"{rule.kind} eval" if rule.eval_fn else rule.kind
            if name in mine and name in theirs:
                tp[kind] += 1
            elif name in mine:
                fp[kind] += 1
                extra[name] += 1
            else:
                fn[kind] += 1
                missed[name] += 1
    print(f"rule-hit agreement over {len(keys)} mails ({len(comparable)} comparable rules; network/Bayes/list and "
          "skipped rules left out):")
    print(f"  {'kind':<14} {'precision':>9} {'recall':>7} {'both':>7} {'only us':>8} {'only spamd':>10}")
    for kind in sorted(set(tp) | set(fp) | set(fn)):
        p = tp[kind] / (tp[kind] + fp[kind]) if tp[kind] + fp[kind] else float("nan")
        r = tp[kind] / (tp[kind] + fn[kind]) if tp[kind] + fn[kind] else float("nan")
        print(f"  {kind:<14} {p:9.3f} {r:7.3f} {tp[kind]:7d} {fp[kind]:8d} {fn[kind]:10d}")
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    print(f"  {'all':<14} {total_tp / max(total_tp + total_fp, 1):9.3f} {total_tp / max(total_tp + total_fn, 1):7.3f}"
          f" {total_tp:7d} {total_fp:8d} {total_fn:10d}")
    print("  most frequent only-ours: " + ", ".join(f"{n} {c}" for n, c in extra.most_common(10)))
    print("  most frequent only-spamd: " + ", ".join(f"{n} {c}" for n, c in missed.most_common(10)))
    print(f"score correlation (Pearson, set {SPAMD_SCORE_SET}): "
          f"{pearson([ours.scores[k] for k in keys], [spamd.scores[k] for k in keys]):.3f}")


def rules_only_report(corpus: Path | None = None, limit: int = 0) -> None:
    """Mailward's SpamAssassin rules alone on the evaluation split: recall at <= 0.1 % FP and CPU per mail (for
    ``bench/detection.py --rules-only``)."""
    corpus = corpus if corpus is not None else DEFAULT_CORPUS
    if (corpus / "spamassassin").is_dir():
        corpus = corpus / "spamassassin"
    corpus = fetch_corpus(corpus)
    mails = list(corpus_mails(corpus, HAM_SETS + SPAM_SETS, limit))
    engine = _engine(score_set=None)
    print(engine.report.summary())
    print_detection(run_mailward(engine, mails, "SpamAssassin rules (Mailward)"), mails)


def _engine(score_set: int | None) -> Engine:
    from smtp.sarules import CACHE_SUBDIR

    cfg = get_config()
    kwargs = {} if score_set is None else {"score_set": score_set}
    loaded = load_engine(cfg.sa_rules_dir, cache_dir=cfg.data_dir / CACHE_SUBDIR, **kwargs)
    if loaded.engine is None:
        sys.exit(f"sa_fidelity: {loaded.report.unavailable}")
    return loaded.engine


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="where the corpus is cached")
    parser.add_argument("--limit", type=int, default=0, help="mails per set (0: all)")
    parser.add_argument("--no-spamd", action="store_true", help="Mailward's engine alone")
    args = parser.parse_args()
    corpus = fetch_corpus(args.corpus)
    mails = list(corpus_mails(corpus, HAM_SETS + SPAM_SETS, args.limit))
    print(f"{len(mails)} mails from {', '.join(HAM_SETS + SPAM_SETS)}")
    same_set = _engine(SPAMD_SCORE_SET)
    print(same_set.report.summary())
    ours = run_mailward(same_set, mails, f"Mailward engine, score set {SPAMD_SCORE_SET}")
    # the same hits scored with the set Mailward runs with (rules of score 0 in set 0 are network rules: skipped)
    rs = same_set.ruleset
    in_use = Outcome(f"Mailward engine, score set {SCORE_SET}", hits=ours.hits, cpu=ours.cpu, mails=ours.mails,
                     scores={k: math.fsum(rs.score(n, SCORE_SET) for n in names) for k, names in ours.hits.items()})
    rules_dir = locate(get_config().sa_rules_dir).rules_dir
    assert rules_dir is not None
    spamd = None if args.no_spamd else run_spamd(mails, rules_dir)
    print()
    print("detection (SpamAssassin's rules alone; network tests and Bayes off):")
    print_detection(ours, mails)
    print_detection(in_use, mails)
    if spamd is not None:
        print_detection(spamd, mails)
        print()
        print_agreement(same_set, ours, spamd)


if __name__ == "__main__":
    main()
