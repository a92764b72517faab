"""Training the base content model on labelled corpora (``mailward model train``).

1. Read every corpus (:mod:`tenants.content.corpus`), split into training and held-out parts; training mail that
   shares a Message-ID or a body with any held-out mail (or with earlier training mail) is dropped.
2. Fit L2-regularised logistic regression (scikit-learn, liblinear) on the hashed features of the training parts.
3. Measure how the model generalises to a collection it never saw: for each corpus, a model fitted on the *other*
   corpora's training parts scores this corpus's training part (leave-one-collection-out; one corpus alone: 5-fold
   cross-validation). Content learnt from one collection overfits it (it learns list footers and header habits),
   so these out-of-collection scores, not the training fit, decide what the model's output is worth:
   - the calibration: Platt scaling of the out-of-collection raw log-odds of the corpora that have both ham and
     spam (its slope is the weight of the base model as a prior: below 1 where it generalises worse than its
     training fit claims);
   - the score of each probability band (``CONTENT_SPAM_99`` …): the band's log-likelihood ratio of spam to ham on
     the out-of-collection scores, made monotonic, in points (:data:`POINTS_PER_NAT`).
4. Report, never tune on, each corpus's held-out part: recall at 0.1 % and 1 % false positives, AUC.
The held-out parts are used for nothing else.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix, vstack
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from tenants.content.corpus import Collection, CorpusError, Sample, dedupe_keys, read_mail
from tenants.content.features import N_FEATURES, mail_text, vectorize
from tenants.content.model import BANDS, ContentModel

#: Inverse L2 strength of the logistic regression (liblinear's C); 10 did best out of collection on the training
#: parts (1 underfits the character n-grams, 100 overfits each collection's habits).
C = 10.0
#: Points per natural-log unit of evidence: evidence that multiplies the odds of spam by 1000 (what a bar at 0.1 %
#: false positives asks of a mail) is worth the default quarantine threshold (8 points) on its own.
POINTS_PER_NAT = 8.0 / math.log(1000)
#: Pseudo-count added to each band's spam and ham counts, so an empty band gets a finite, modest score.
BAND_PSEUDOCOUNT = 0.5
#: Bounds of a band's score in points: the content model alone never rejects (reject threshold 15) nor whitelists.
MAX_BAND_SCORE, MIN_BAND_SCORE = 8.0, -6.0
#: Folds of cross-validation when a single corpus is given (no other collection to hold out).
FOLDS = 5
#: Weights smaller than this are dropped from the saved model (they change no score by more than rounding).
MIN_WEIGHT = 1e-3
#: Mails each worker parses and vectorises at a time.
CHUNK = 64

Progress = Callable[[str], None]


@dataclass
class Figures:
    """How a model ranks one evaluation set: mails, recall at 0.1 % and 1 % false positives, AUC."""

    ham: int
    spam: int
    recall_at_fp_01: float
    recall_at_fp_1: float
    auc: float

    def line(self) -> str:
        return (f"{self.spam} spam / {self.ham} ham: recall {100 * self.recall_at_fp_01:.1f}% at <=0.1% FP, "
                f"{100 * self.recall_at_fp_1:.1f}% at <=1% FP, 1-AUC {100 * (1 - self.auc):.3f}%")


@dataclass
class Prepared:
    """Feature rows and labels of samples, with each sample's dedupe keys."""

    samples: list[Sample]
    x: csr_matrix
    y: np.ndarray
    keys: list[tuple[str | None, str | None]] = field(default_factory=list)


def _prepare_chunk(paths: list[Path]) -> tuple[csr_matrix, list[tuple[str | None, str | None]]]:
    """Parse, vectorise and key a chunk of mail files (runs in a worker process)."""
    raws = [read_mail(p) for p in paths]
    return vectorize(mail_text(r) for r in raws), [dedupe_keys(r) for r in raws]


def prepare(samples: Sequence[Sample], *, jobs: int = 0, progress: Progress | None = None) -> Prepared:
    """Feature rows of samples, parsed in ``jobs`` processes (0: one per core)."""
    chunks = [[s.path for s in samples[i:i + CHUNK]] for i in range(0, len(samples), CHUNK)]
    jobs = jobs or os.cpu_count() or 1
    rows: list[csr_matrix] = []
    keys: list[tuple[str | None, str | None]] = []
    if jobs == 1 or len(chunks) <= 1:
        results: Iterable[tuple[csr_matrix, list[tuple[str | None, str | None]]]] = map(_prepare_chunk, chunks)
        for n, (x, k) in enumerate(results):
            rows.append(x)
            keys += k
            if progress and n % 20 == 19:
                progress(f"read {len(keys)} of {len(samples)} mails")
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for n, (x, k) in enumerate(pool.map(_prepare_chunk, chunks)):
                rows.append(x)
                keys += k
                if progress and n % 20 == 19:
                    progress(f"read {len(keys)} of {len(samples)} mails")
    x = vstack(rows).tocsr() if rows else csr_matrix((0, N_FEATURES), dtype=np.float32)
    return Prepared(list(samples), x, np.array([s.spam for s in samples], dtype=bool), keys)


def dedupe(train: Prepared, heldout_keys: Iterable[tuple[str | None, str | None]]) -> tuple[np.ndarray, int]:
    """Which training rows to keep: none sharing a Message-ID or body hash with held-out mail or an earlier row."""
    seen = {k for pair in heldout_keys for k in pair if k}
    keep = np.ones(len(train.samples), dtype=bool)
    for i, pair in enumerate(train.keys):
        mine = [k for k in pair if k]
        if any(k in seen for k in mine):
            keep[i] = False
        seen.update(mine)
    return keep, int((~keep).sum())


def deduped_training(collections: Sequence[Collection]) -> list[Sample]:
    """The training samples :func:`train` keeps (no copies of held-out or earlier mail), read by their headers only."""
    samples = [s for col in collections for s in col.train]
    heldout = [dedupe_keys(read_mail(s.path)) for col in collections for s in col.heldout]
    keys = [dedupe_keys(read_mail(s.path)) for s in samples]
    keep, _ = dedupe(Prepared(samples, csr_matrix((len(samples), 1)), np.zeros(len(samples), dtype=bool), keys),
                     heldout)
    return [s for s, kept in zip(samples, keep, strict=True) if kept]


def fit(x: csr_matrix, y: np.ndarray, *, c: float = C) -> tuple[np.ndarray, float]:
    """Weights and bias of L2-regularised logistic regression on rows ``x`` with labels ``y``."""
    if y.all() or not y.any():
        raise CorpusError("training needs both spam and ham mail")
    used = np.unique(x.indices)  # liblinear's work grows with the columns; most hash buckets are empty
    model = LogisticRegression(C=c, solver="liblinear", max_iter=1000)
    model.fit(x[:, used], y)
    weights = np.zeros(x.shape[1], dtype=np.float32)
    weights[used] = model.coef_.ravel()
    return weights, float(model.intercept_[0])


def out_of_collection(x: csr_matrix, y: np.ndarray, groups: np.ndarray, *, c: float = C,
                      progress: Progress | None = None) -> np.ndarray:
    """Raw log-odds of each row from a model that never saw its collection (one collection: 5-fold CV)."""
    z = np.zeros(len(y))
    names = sorted(set(groups.tolist()))
    usable = [g for g in names if (~(groups == g) & y).any() and (~(groups == g) & ~y).any()]
    if len(names) >= 2 and len(usable) == len(names):
        splits = [(np.flatnonzero(groups != g), np.flatnonzero(groups == g), g) for g in names]
    else:
        folds = StratifiedKFold(n_splits=min(FOLDS, int(y.sum()), int((~y).sum())), shuffle=True, random_state=0)
        splits = [(a, b, f"fold {i + 1}") for i, (a, b) in enumerate(folds.split(np.zeros(len(y)), y))]
    for fit_rows, score_rows, name in splits:
        if progress:
            progress(f"scoring {name} with a model that never saw it")
        w, b = fit(x[fit_rows], y[fit_rows], c=c)
        z[score_rows] = x[score_rows] @ w + b
    return z


def platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) mapping raw log-odds to calibrated log-odds (Platt scaling, lightly regularised)."""
    model = LogisticRegression(C=1e4, solver="lbfgs")
    model.fit(z.reshape(-1, 1), y)
    slope = max(float(model.coef_[0, 0]), 1e-3)  # a model that ranks at all has a positive slope
    return slope, float(model.intercept_[0])


def _monotone(values: list[float], weights: list[float]) -> list[float]:
    """Pool-adjacent-violators: the closest non-increasing sequence (weighted least squares)."""
    blocks: list[list[float]] = []  # [value, weight, count]
    for v, w in zip(values, weights, strict=True):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    out: list[float] = []
    for v, _, n in blocks:
        out += [v] * int(n)
    return out


def band_scores(probability: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Score of each band in points: its spam-to-ham log-likelihood ratio, non-increasing from the top band down."""
    spam_total, ham_total = float(y.sum()), float((~y).sum())
    llrs: list[float] = []
    weights: list[float] = []
    upper = math.inf
    for bound, _ in BANDS:
        inside = (probability >= bound) & (probability < upper)
        spam, ham = float((inside & y).sum()), float((inside & ~y).sum())
        llrs.append(math.log((spam + BAND_PSEUDOCOUNT) / (spam_total + BAND_PSEUDOCOUNT * len(BANDS)))
                    - math.log((ham + BAND_PSEUDOCOUNT) / (ham_total + BAND_PSEUDOCOUNT * len(BANDS))))
        weights.append(spam + ham + 2 * BAND_PSEUDOCOUNT)
        upper = bound
    smooth = _monotone(llrs, weights)
    return {symbol: round(min(MAX_BAND_SCORE, max(MIN_BAND_SCORE, POINTS_PER_NAT * llr)), 2)
            for (_, symbol), llr in zip(BANDS, smooth, strict=True)}


def recall_at_fp(ham: np.ndarray, spam: np.ndarray, fp: float) -> float:
    """Share of spam scoring above the lowest bar that at most ``fp`` of ham exceed."""
    if not len(spam):
        return 0.0
    allowed = math.floor(fp * len(ham))
    ranked = np.sort(ham)[::-1]
    bar = ranked[allowed] if allowed < len(ranked) else -math.inf
    return float((spam > bar).mean())


def auc(ham: np.ndarray, spam: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN without both classes."""
    if not len(ham) or not len(spam):
        return float("nan")
    return float(roc_auc_score(np.r_[np.zeros(len(ham)), np.ones(len(spam))], np.r_[ham, spam]))


def figures(ham: np.ndarray, spam: np.ndarray) -> Figures:
    return Figures(len(ham), len(spam), recall_at_fp(ham, spam, 0.001), recall_at_fp(ham, spam, 0.01), auc(ham, spam))


def training_digest(collections: Sequence[Collection]) -> str:
    """A hash of which files are trained on and held out (names and sizes): the same split gives the same digest."""
    h = hashlib.sha256()
    for c in collections:
        for part, samples in (("train", c.train), ("heldout", c.heldout)):
            for s in samples:
                h.update(f"{c.name}/{part}/{s.folder}/{s.path.name}/{s.path.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class TrainResult:
    model: ContentModel
    #: Held-out figures by collection (spam-only sets are ranked against every held-out ham).
    heldout: dict[str, Figures]
    #: Out-of-collection figures of the training parts, by collection.
    out_of_collection: dict[str, Figures]
    #: Training mails dropped as copies of held-out or earlier mail.
    dropped: int
    #: Calibrated log-odds of each kept training mail by a model that never saw its collection (what the model
    #: is worth on it; :mod:`tenants.calibration` fits the other scores beside these).
    out_of_collection_log_odds: dict[Path, float] = field(default_factory=dict)


def _by_collection(z: np.ndarray, y: np.ndarray, groups: np.ndarray, spare_ham: np.ndarray) -> dict[str, Figures]:
    out: dict[str, Figures] = {}
    for name in sorted(set(groups.tolist())):
        mine = groups == name
        ham = z[mine & ~y]
        out[name] = figures(ham if len(ham) else spare_ham, z[mine & y])
    return out


def train(collections: Sequence[Collection], *, jobs: int = 0, c: float = C,
          progress: Progress | None = None) -> TrainResult:
    """Train a base model on the training parts of ``collections`` and measure it (see the module docstring)."""
    say = progress or (lambda _: None)
    train_samples = [s for col in collections for s in col.train]
    heldout_samples = [s for col in collections for s in col.heldout]
    say(f"reading {len(train_samples)} training and {len(heldout_samples)} held-out mails")
    prepared = prepare(train_samples + heldout_samples, jobs=jobs, progress=progress)
    n = len(train_samples)
    keep, dropped = dedupe(Prepared(train_samples, prepared.x[:n], prepared.y[:n], prepared.keys[:n]),
                           prepared.keys[n:])
    x, y = prepared.x[:n][keep], prepared.y[:n][keep]
    groups = np.array([s.collection for s in train_samples])[keep]
    say(f"training on {len(y)} mails ({int(y.sum())} spam, {int((~y).sum())} ham), {dropped} copies dropped")

    z_out = out_of_collection(x, y, groups, c=c, progress=progress)
    # Calibrate on the collections that bring their own ham: an unseen collection's ham against its own spam is
    # what a new tenant looks like; a spam-only set ranked against other collections' ham would flatter the model.
    paired = np.isin(groups, [g for g in set(groups.tolist()) if y[groups == g].any() and (~y[groups == g]).any()])
    if not (paired & y).any() or not (paired & ~y).any():
        paired = np.ones(len(y), dtype=bool)
    slope, intercept = platt(z_out[paired], y[paired])
    calibrated = 1.0 / (1.0 + np.exp(-np.clip(slope * z_out[paired] + intercept, -30, 30)))
    scores = band_scores(calibrated, y[paired])

    say("fitting the model on every training part")
    weights, bias = fit(x, y, c=c)
    weights[np.abs(weights) < MIN_WEIGHT] = 0.0
    weights = weights.astype(np.float16).astype(np.float32)  # as saved, so the saved model scores the same

    z_held = prepared.x[n:] @ weights + bias
    y_held = prepared.y[n:]
    held_groups = np.array([s.collection for s in heldout_samples])
    all_held_ham = z_held[~y_held]
    heldout = _by_collection(z_held, y_held, held_groups, all_held_ham) if len(heldout_samples) else {}
    outside = _by_collection(z_out, y, groups, z_out[~y])

    created = datetime.now(UTC)
    digest = hashlib.sha256(weights.tobytes() + np.float64(bias).tobytes()).hexdigest()[:8]
    counts: dict[str, dict[str, int]] = {}
    for s, kept in zip(train_samples, keep, strict=True):
        entry = counts.setdefault(s.collection, {"spam": 0, "ham": 0, "dropped": 0})
        entry["dropped" if not kept else "spam" if s.spam else "ham"] += 1
    meta: dict[str, Any] = {
        "version": f"{created:%Y%m%d}-{digest}",
        "created": created.isoformat(timespec="seconds"),
        "trained_on": counts,
        "training_digest": training_digest(collections),
        "c": c,
        "prior_weight": slope,
        "band_scores": scores,
        "out_of_collection": {k: vars(v) for k, v in outside.items()},
        "heldout": {k: vars(v) for k, v in heldout.items()},
    }
    model = ContentModel(weights, bias, (slope, intercept), meta)
    kept = [s for s, k in zip(train_samples, keep, strict=True) if k]
    oof = {s.path: float(v) for s, v in zip(kept, slope * z_out + intercept, strict=True)}
    return TrainResult(model, heldout, outside, dropped, oof)


def scores_toml(model: ContentModel) -> str:
    """The ``tenants/scores/content.toml`` text of a model's band scores, with where they came from."""
    meta = model.meta
    lines = [
        "# Scores of the base content model (smtp/checks/content.py), by the band its calibrated spam probability",
        "# falls in; exactly one band is recorded per mail. Written by `mailward model train --scores` from the",
        f"# training run of model {model.version}: each score is the band's spam-to-ham log-likelihood ratio on",
        "# out-of-collection predictions (each corpus scored by a model trained on the others), non-increasing down",
        f"# the bands, times {POINTS_PER_NAT:.3f} points per nat. Never fitted on the held-out parts.",
        "",
    ]
    upper = 1.0
    for bound, symbol in BANDS:
        lines += [f"[{symbol}]", f"score = {meta['band_scores'][symbol]}",
                  f'description = "Content model spam probability {100 * bound:g} to {100 * upper:g}%"', ""]
        upper = bound
    lines += ["[CONTENT_TEMPFAIL]", "score = 0.0",
              'description = "The content model could not be loaded or run: the mail is judged without it"', ""]
    return "\n".join(lines)
