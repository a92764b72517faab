"""Detection: recall and false positives of the DATA-stage checks on the held-out part of every shared corpus.

Finds the corpora in ``../shared/corpus/`` beside the project (the SpamAssassin corpus through its fetch script,
the tarballs unpacked), all cached under ``var/corpus`` (never committed). Each corpus is split into a training and
a held-out part (:mod:`tenants.content.corpus`: SpamAssassin's README split; the last 20 % of each label folder of
the others). On the training parts only: the base content model is trained (or reused from ``var/bench`` when the
split and the features are unchanged) and a throwaway tenant's Bayes is trained. Then every held-out mail is parsed
and run through the DATA stage of the check pipeline, network checks excluded (old corpora: their senders' DNS,
SPF and DKIM are gone), and scored under the default policy. Spam-only sets are ranked against the held-out ham of
all sets. Prints figures per set, for the whole pipeline and for the content model alone; never pass/fail.

    .venv/bin/python bench/detection.py               # pipeline figures; the last line is the SpamAssassin split's
    .venv/bin/python bench/detection.py --feedback    # TREC immediate feedback through one tenant's online learner
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import math
import shutil
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from smtp.checks import Check, CheckContext, Stage, build_checks  # noqa: E402
from smtp.checks.bayes import BayesCheck  # noqa: E402
from smtp.checks.content import ContentCheck  # noqa: E402
from smtp.checks.rspamd import RDNS_FACT  # noqa: E402
from smtp.checks.rules import RulesCheck  # noqa: E402
from smtp.mime import ParsedMail, parse_mail  # noqa: E402
from smtp.pipeline import run_stage  # noqa: E402
from tenants.content import online  # noqa: E402
from tenants.content.corpus import (  # noqa: E402
    Collection,
    Sample,
    find_collections,  # noqa: E402
    read_mail,
)
from tenants.content.features import config_hash, vectorize  # noqa: E402
from tenants.content.model import BASE_MODEL, ContentModel, ModelError  # noqa: E402
from tenants.content.train import auc, deduped_training, prepare, recall_at_fp, train, training_digest  # noqa: E402
from tenants.mail import bayes  # noqa: E402
from tenants.platform.config import Config  # noqa: E402
from tenants.platform.db import dispose_engines, migrate, session_scope  # noqa: E402
from tenants.policy import Policy  # noqa: E402
from tenants.scope import msp_scope, tenant_scope  # noqa: E402
from tenants.services import create_tenant, get_tenant  # noqa: E402
from tenants.symbols import lookup, use_calibration  # noqa: E402

#: The shared corpora: beside the project, never an absolute path.
SHARED_CORPUS = ROOT.parent / "shared" / "corpus"
FETCH_SCRIPT = SHARED_CORPUS / "fetch-spamassassin.sh"
DEFAULT_CORPUS = ROOT / "var" / "corpus"
#: Where the benchmark keeps the model it trained, reused while the split and the features stay the same.
BENCH_DIR = ROOT / "var" / "bench"
MODEL_CACHE = BENCH_DIR / "detection-model.npz"
#: The headline set (the last line's figures).
HEADLINE = "spamassassin"
#: Checks that need the network (or a scanner daemon) and are left out.
NETWORK_CHECKS = frozenset({"dnsbl", "uribl", "spf", "auth", "dkim", "dmarc", "arc", "clam", "clamav", "virus",
                            "spamd", "rspamd", "greylist"})
#: The false-positive rates recall is measured at.
FP_RATES = (0.001, 0.01)
TENANT = "Bench"
DOMAIN = "bench.test"
#: The client every mail comes from (a public address: no rule fires on the address itself) and its name.
CLIENT_IP = "81.2.69.142"
CLIENT_NAME = "mail.sender.example"
#: Mail size the per-mail CPU time is also given for (the issue's budget: 10 ms per 10 KB mail).
BUDGET_BYTES = 10 * 1024


def prepare_corpora(dest: Path) -> Path:
    """The SpamAssassin corpus fetched and every shared tarball unpacked under ``dest``; returns ``dest``."""
    if not SHARED_CORPUS.is_dir():
        sys.exit(f"detection: no shared corpora at {SHARED_CORPUS} (the project's ../shared/corpus)")
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["bash", str(FETCH_SCRIPT), str(dest / "spamassassin")], check=True, capture_output=True)
    for tarball in sorted(SHARED_CORPUS.glob("*.tar.gz")):
        name = tarball.name.removesuffix(".tar.gz")
        if not (dest / name).is_dir():
            with tarfile.open(tarball) as tar:
                tar.extractall(dest, filter="data")
    return dest


def base_model(collections: Sequence[Collection], args: argparse.Namespace) -> tuple[ContentModel, Path]:
    """The model to evaluate: ``--model``, the cached one when it was trained on this very split, or a new one."""
    if args.model is not None:
        return ContentModel.load(args.model), args.model
    digest = training_digest(collections)
    for candidate in (MODEL_CACHE, BASE_MODEL):  # the shipped model, when it was trained on this very split
        if candidate.exists() and not args.retrain:
            try:
                cached = ContentModel.load(candidate)
            except ModelError as exc:
                print(f"model unusable ({exc})")
                continue
            if cached.meta.get("training_digest") == digest:
                print(f"content model {cached.version} reused from {candidate.relative_to(ROOT)} (same split)")
                return cached, candidate
    started = time.monotonic()
    result = train(collections, jobs=args.jobs, progress=lambda line: print(f"  {line}", flush=True))
    result.model.save(MODEL_CACHE)
    print(f"content model {result.model.version} trained in {time.monotonic() - started:.0f}s "
          f"(features {config_hash()}), saved to {MODEL_CACHE.relative_to(ROOT)}")
    return result.model, MODEL_CACHE


@dataclass
class EvalSet:
    """One evaluation set: its spam, and the ham it is ranked against (its own, or every set's held-out ham)."""

    name: str
    spam: list[Sample]
    ham: list[Sample]
    own_ham: bool


def evaluation_sets(collections: Sequence[Collection]) -> list[EvalSet]:
    pooled = [s for c in collections for s in c.heldout if not s.spam]
    out = []
    for c in collections:
        ham = [s for s in c.heldout if not s.spam]
        out.append(EvalSet(c.name, [s for s in c.heldout if s.spam], ham or pooled, bool(ham)))
    return out


def interleaved(streams: Sequence[Sequence[Sample]]) -> list[Sample]:
    """Streams merged so each is spread evenly over the whole (each keeps its own file order)."""
    keyed = [((i + 0.5) / len(stream), n, i, s) for n, stream in enumerate(streams) for i, s in enumerate(stream)]
    return [s for *_, s in sorted(keyed, key=lambda k: k[:3])]


def fmt(ham: np.ndarray, spam: np.ndarray) -> str:
    return (f"recall@0.1%FP {100 * recall_at_fp(ham, spam, FP_RATES[0]):5.1f}%  "
            f"recall@1%FP {100 * recall_at_fp(ham, spam, FP_RATES[1]):5.1f}%  "
            f"(1-ROCA) {100 * (1 - auc(ham, spam)):.3f}%")


# --- feedback mode ----------------------------------------------------------------------------------------------

def feedback(collections: Sequence[Collection], model: ContentModel, jobs: int) -> None:
    """TREC immediate feedback: each set's held-out mail, in order, scored by one tenant, then learnt with its label."""
    print("\nfeedback mode: each evaluation set played in order through one new tenant (base model + online delta); "
          "each mail scored before its label is learnt. Streams: every folder in file order, spread evenly.")
    headline = None
    for ev in evaluation_sets(collections):
        folders: dict[str, list[Sample]] = {}
        for s in ev.spam + ev.ham:
            folders.setdefault(f"{s.collection}/{s.folder}", []).append(s)
        stream = interleaved(list(folders.values()))
        x = prepare(stream, jobs=jobs).x
        labels = np.array([s.spam for s in stream])
        delta = online.Delta()
        learnt = np.empty(len(stream))
        started = time.process_time()
        for i in range(len(stream)):
            row = x[i]
            learnt[i] = online.update(model, delta, row, spam=bool(labels[i]))
        cpu = time.process_time() - started
        prior = model.log_odds(x)
        print(f"{ev.name:<30} {len(ev.spam):5d} spam / {len(ev.ham):5d} ham  "
              f"learning: {fmt(learnt[~labels], learnt[labels])}  |  base alone: {fmt(prior[~labels], prior[labels])}"
              f"  ({1000 * cpu / len(stream):.2f} ms per score+update, {delta.updates} updates, "
              f"{len(delta.weights)} delta weights)")
        if ev.name == HEADLINE:
            headline = learnt, labels
    if headline is not None:
        scores, labels = headline
        print(f"feedback_1-roca_pct={100 * (1 - auc(scores[~labels], scores[labels])):.4f} "
              f"recall_at_fp_0.1pct={recall_at_fp(scores[~labels], scores[labels], FP_RATES[0]):.4f}")


# --- pipeline mode ----------------------------------------------------------------------------------------------

def pipeline_checks(cfg: Config, model_path: Path, skip: set[str]) -> list[Check]:
    """The registered checks minus network ones and ``skip``, the content check reading the benchmark's model."""
    left_out = NETWORK_CHECKS | skip | {ContentCheck.name}
    checks = [c for c in build_checks(cfg) if c.name not in left_out]
    names = {c.name for c in checks}
    checks += [cls(cfg) for cls in (BayesCheck, RulesCheck) if cls.name not in names | skip]
    return checks if ContentCheck.name in skip else [*checks, ContentCheck(cfg, model_path=model_path)]


async def score_mail(checks: list[Check], cfg: Config, tenant_id: int, policy: Policy,
                     mail: ParsedMail) -> tuple[float, list[str]]:
    sender = parseaddr(mail.header("Return-Path") or mail.header("From") or "")[1]
    ctx = CheckContext(cfg=cfg, client_ip=CLIENT_IP, helo=CLIENT_NAME, mail_from=sender,
                       rcpts=[f"user@{DOMAIN}"], tenant_ids=[tenant_id], policies={tenant_id: policy}, mail=mail)
    # Every mail arrives from the same client, whose name resolves both ways as a real MTA's does: the same for ham
    # and spam, so that no rule scores the benchmark's own envelope (a documentation-range IP is "illegal" to
    # SpamAssassin's RCVD_ILLEGAL_IP, and no reverse name is RDNS_NONE: +2.6 on every mail otherwise).
    ctx.facts[RDNS_FACT] = CLIENT_NAME
    await run_stage(checks, ctx, Stage.DATA)
    mine = [f.symbol for f in ctx.findings if f.tenant_id in (None, tenant_id)]
    return math.fsum(policy.score_of(s, lookup(s).score) for s in mine), mine


@dataclass
class Scored:
    score: float
    symbols: list[str]
    content: float  # the content model's calibrated log-odds
    cpu: float  # seconds of CPU: parse + DATA stage
    size: int


async def evaluate(cfg: Config, samples: list[Sample], tenant_id: int, policy: Policy, model: ContentModel,
                   model_path: Path, *, skip: set[str]) -> dict[Path, Scored]:
    checks = pipeline_checks(cfg, model_path, skip)
    print(f"checks: {', '.join(sorted(c.name for c in checks if c.stage == Stage.DATA))}")
    await asyncio.gather(*(c.ready() for c in checks))  # as the ingress does before it listens (rules compiled)
    out: dict[Path, Scored] = {}
    for sample in samples:
        raw = read_mail(sample.path)
        started = time.process_time()
        mail = parse_mail(raw)
        score, symbols = await score_mail(checks, cfg, tenant_id, policy, mail)
        cpu = time.process_time() - started
        out[sample.path] = Scored(score, symbols, float(model.log_odds(vectorize([mail]))[0]), cpu, len(raw))
    for check in checks:
        await check.close()
    return out


def train_bayes(cfg: Config, tenant_id: int, collections: Sequence[Collection]) -> None:
    """Train the bench tenant's Bayes on every corpus's training part (copies of held-out mail left out)."""
    training = deduped_training(collections)
    with tenant_scope(tenant_id), session_scope(cfg) as session:
        for spam in (False, True):
            bayes.train(session, tenant_id, (parse_mail(read_mail(s.path)) for s in training if s.spam == spam),
                        spam=spam)


def rate(scores: np.ndarray, threshold: float) -> float:
    return float((scores >= threshold).mean()) if len(scores) else 0.0


def report(sets: list[EvalSet], results: dict[Path, Scored], policy: Policy, show_symbols: int) -> None:
    threshold = policy.quarantine_threshold
    print(f"\nper evaluation set (pipeline score; quarantine threshold {threshold:g}; spam-only sets against the "
          "held-out ham of every set):")
    headline = None
    for ev in sets:
        ham = np.array([results[s.path].score for s in ev.ham])
        spam = np.array([results[s.path].score for s in ev.spam])
        rows = [results[s.path] for s in ev.spam + (ev.ham if ev.own_ham else [])]
        cpu = sum(r.cpu for r in rows)
        size = sum(r.size for r in rows)
        print(f"{ev.name:<30} {len(spam):5d} spam / {len(ham):5d} ham{'' if ev.own_ham else ' (pooled)'}: "
              f"recall {100 * rate(spam, threshold):5.1f}% FP {100 * rate(ham, threshold):5.2f}% at the threshold  "
              f"{fmt(ham, spam)}  {1000 * cpu / len(rows):.2f} ms/mail "
              f"({1000 * cpu * BUDGET_BYTES / max(1, size):.2f} ms per 10 KB)")
        content_ham = np.array([results[s.path].content for s in ev.ham])
        content_spam = np.array([results[s.path].content for s in ev.spam])
        print(f"{'  content model alone':<30} {fmt(content_ham, content_spam)}")
        if ev.name == HEADLINE:
            headline = ham, spam
    everything = list(results.values())
    cpu, size = sum(r.cpu for r in everything), sum(r.size for r in everything)
    print(f"DATA stage CPU (parse + checks), every held-out mail: {1000 * cpu / len(everything):.2f} ms per mail, "
          f"{size / len(everything) / 1024:.1f} KB average, {1000 * cpu * BUDGET_BYTES / size:.2f} ms per 10 KB "
          f"(budget 10 ms per 10 KB)")

    if show_symbols:
        hits: dict[str, Counter[str]] = {}
        for ev in sets:
            for label, samples in (("spam", ev.spam), ("ham", ev.ham if ev.own_ham else [])):
                if samples:
                    counter = hits.setdefault(f"{ev.name[:8]}-{label}", Counter())
                    for s in samples:
                        counter.update(set(results[s.path].symbols))
        every = Counter[str]()
        for counter in hits.values():
            every.update(counter)
        sizes = {k: sum(1 for ev in sets for s in (ev.spam if k.endswith("spam") else ev.ham)
                        if f"{ev.name[:8]}-" + ("spam" if s.spam else "ham") == k) for k in hits}
        print(f"\n{'symbol':<26} {'score':>6} " + " ".join(f"{n:>14}" for n in hits))
        for symbol, _ in every.most_common(show_symbols):
            cells = " ".join(f"{100 * hits[n][symbol] / max(1, sizes[n]):13.1f}%" for n in hits)
            print(f"{symbol:<26} {policy.score_of(symbol, lookup(symbol).score):6.1f} {cells}")
    if headline is not None:
        ham, spam = headline
        print(f"recall={rate(spam, threshold):.4f} fp={rate(ham, threshold):.4f} "
              f"recall_at_fp_0.1pct={recall_at_fp(ham, spam, FP_RATES[0]):.4f}")


def rules_only(collections: Sequence[Collection], corpus: Path) -> None:
    """``--rules-only``: the SpamAssassin rules' own report, from ``bench/sa_fidelity.py`` when it exists."""
    try:
        module = importlib.import_module("bench.sa_fidelity")
    except ModuleNotFoundError:
        sys.exit("detection: --rules-only needs bench/sa_fidelity.py (rules_only_report), which is not there yet")
    report_fn = module.rules_only_report
    offered = {"collections": collections, "corpus": corpus, "corpus_dir": corpus}
    params = inspect.signature(report_fn).parameters
    report_fn(**{k: v for k, v in offered.items() if k in params})


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="where the corpora are unpacked")
    parser.add_argument("--model", type=Path, default=None, help="evaluate this model file instead of training one")
    parser.add_argument("--retrain", action="store_true", help="train the model even if the cached one fits")
    parser.add_argument("--feedback", action="store_true", help="TREC immediate-feedback run of the online learner")
    parser.add_argument("--rules-only", action="store_true", help="the SpamAssassin rules alone (bench/sa_fidelity)")
    parser.add_argument("--through-smtp", action="store_true",
                        help="send a sample of the held-out mail through a private installation over SMTP and read "
                             "the scores back from its API (bench/detection_smtp.py)")
    parser.add_argument("--limit", type=int, default=300,
                        help="--through-smtp: spam and ham mails sent per set, each (0: all; default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="--through-smtp: SMTP connections (default %(default)s)")
    parser.add_argument("--keep", action="store_true", help="--through-smtp: keep the installation's folder")
    parser.add_argument("--no-bayes", action="store_true", help="leave the tenant's Bayes untrained")
    parser.add_argument("--dump", type=Path, default=None, help="write every held-out mail's score (JSON) here")
    parser.add_argument("--uncalibrated", action="store_true",
                        help="score with the shipped scores alone, without tenants/scores/calibration.toml")
    parser.add_argument("--skip", action="append", default=[], metavar="CHECK",
                        help="leave a check out (repeatable), e.g. --skip sarules")
    parser.add_argument("--jobs", type=int, default=0, help="processes parsing mail for training (0: one per core)")
    parser.add_argument("--symbols", type=int, default=30, help="symbols shown in the hit table (0: none)")
    args = parser.parse_args()
    if args.uncalibrated:
        use_calibration(False)
    if args.through_smtp:
        from bench.detection_smtp import run as through_smtp

        through_smtp(args)
        return

    corpus = prepare_corpora(args.corpus)
    collections = find_collections([corpus])
    for c in collections:
        print(f"corpus {c.name}: {len(c.train)} training, {len(c.heldout)} held-out mails")
    if args.rules_only:
        rules_only(collections, corpus)
        return
    model, model_path = base_model(collections, args)
    for name, figures in model.meta.get("heldout", {}).items():
        print(f"  model's held-out figures at training, {name}: recall {100 * figures['recall_at_fp_01']:.1f}% at "
              f"<=0.1% FP, {100 * figures['recall_at_fp_1']:.1f}% at <=1% FP")
    if args.feedback:
        feedback(collections, model, args.jobs)
        return

    policy = Policy()
    sets = evaluation_sets(collections)
    heldout = list({s.path: s for ev in sets for s in ev.spam + ev.ham}.values())
    # The installation (its tenant's Bayes trained on this split) is kept under var/bench and reused: Bayes
    # training on SQLite takes minutes, and the same split gives the same tokens.
    digest = training_digest(collections)
    home = BENCH_DIR / f"install-{digest}{'-nobayes' if args.no_bayes else ''}"
    if args.retrain and home.exists():
        shutil.rmtree(home)
    fresh = not (home / "ready").exists()
    if fresh and home.exists():
        shutil.rmtree(home)  # a run stopped half-way
    home.mkdir(parents=True, exist_ok=True)
    cfg = Config(data_dir=home, database_url=f"sqlite:///{home}/mailward.db")
    migrate(cfg)
    with msp_scope(), session_scope(cfg) as session:
        tenant_id = create_tenant(session, TENANT).id if fresh else get_tenant(session, TENANT).id
    if fresh and not args.no_bayes:
        started = time.monotonic()
        train_bayes(cfg, tenant_id, collections)
        print(f"tenant Bayes trained in {time.monotonic() - started:.0f}s")
    (home / "ready").touch()
    with tenant_scope(tenant_id), session_scope(cfg) as session:
        learnt = bayes.stats(session, tenant_id)
    print(f"tenant Bayes: {learnt.nham} ham + {learnt.nspam} spam ({learnt.tokens} tokens), "
          f"installation {home.relative_to(ROOT)}")
    started = time.monotonic()
    results = asyncio.run(evaluate(cfg, heldout, tenant_id, policy, model, model_path, skip=set(args.skip)))
    print(f"scored {len(heldout)} held-out mails in {time.monotonic() - started:.0f}s")
    dispose_engines()
    report(sets, results, policy, args.symbols)
    if args.dump is not None:
        args.dump.write_text(json.dumps({ev.name: {"spam": [results[s.path].score for s in ev.spam],
                                                   "ham": [results[s.path].score for s in ev.ham]} for ev in sets}))
        print(f"scores written to {args.dump}")


if __name__ == "__main__":
    main()
