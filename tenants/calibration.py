"""Calibrated symbol scores: the shipped scores refitted jointly on labelled training mail, the shipped ones as prior.

The verdict adds the scores of a mail's findings and compares the sum with the policy's thresholds. For the sum to
mean something stable, a point must be worth the same evidence whichever symbol brings it: here one point is
``1 / POINTS_PER_NAT`` nats of log-odds of spam (8 points multiply the odds by 1000, the default quarantine bar).

:func:`fit` finds the scores of the *fitted* symbols (Mailward's own: its rules, Bayes and content bands, MIME and
phishing findings) that best explain the labels under a logistic model, with

- the other findings (SpamAssassin's rules) as a fixed offset at their own scores,
- an L2 pull of each fitted score towards its shipped score (the prior), so a symbol that fires rarely, or whose
  evidence the data cannot separate from another's, keeps its hand-set score,
- each class weighted equally, and each collection equally within its class (no corpus's size or spam ratio decides),
- Bayes and content bands kept non-increasing from the most spammy band down.

:func:`calibrate` chooses the strength of the pull by leave-one-collection-out cross-validation on the training mail
(each corpus scored by scores fitted on the others: what a new tenant's mail looks like, not one collection's
habits), and keeps a change only where every fold's fit moves the score the same way by at least
:data:`MIN_CHANGE` (a change that rests on one collection alone is dropped). The scores it keeps are written as a
layer over the shipped ones (``tenants/scores/calibration.toml``, see :func:`tenants.symbols.symbol_table`), with
where they came from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from scipy.optimize import minimize
from scipy.sparse import csr_matrix

from tenants.content.model import BANDS as CONTENT_BANDS
from tenants.content.train import POINTS_PER_NAT

#: Band symbols ordered from the most spammy down; their calibrated scores must not increase along each chain.
BAYES_CHAIN = ("BAYES_99", "BAYES_95", "BAYES_80", "BAYES_60", "BAYES_50", "BAYES_40", "BAYES_20", "BAYES_05",
               "BAYES_00")
CONTENT_CHAIN = tuple(symbol for _, symbol in CONTENT_BANDS)
CHAINS = (BAYES_CHAIN, CONTENT_CHAIN)
#: Strengths of the pull towards the shipped scores tried by cross-validation (per point squared, against a loss
#: that sums to 1 over the training mail).
LAMBDAS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
#: Cross-validation folds when the training mail comes from one collection only.
FOLDS = 5
#: A change smaller than this (points) is not worth a line in the layer.
MIN_CHANGE = 0.1
#: A symbol seen on fewer training mails than this keeps its shipped score.
MIN_HITS = 10
#: Bounds of a calibrated score: no single symbol may reject (15) or whitelist on its own.
MAX_SCORE, MIN_SCORE = 10.0, -10.0


class CalibrationError(ValueError):
    """The training data cannot support a calibration (one class missing, nothing fitted); the message says why."""


@dataclass
class Data:
    """Training mail as seen by the verdict: each mail's symbols, its label and its collection."""

    symbols: list[list[str]]
    spam: np.ndarray  # bool per mail
    groups: np.ndarray  # collection name per mail


@dataclass
class Result:
    scores: dict[str, float]  # the calibrated score of each symbol whose change was confirmed
    fitted: dict[str, float]  # the full fit, confirmed or not
    prior: dict[str, float]
    dropped: dict[str, str]  # symbol -> why its change was not kept
    lam: float
    intercept: float  # log-odds of a mail with no evidence at equal class weights
    hits: dict[str, int]
    cv_loss: dict[float, float] = field(default_factory=dict)  # lambda -> cross-validated loss
    loss_prior: float = math.nan  # cross-validated loss of the shipped scores (intercept refitted only)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def threshold_for(self, likelihood_ratio: float) -> float:
        """The score at which a mail's evidence, from equal odds, reaches ``likelihood_ratio`` to one."""
        return POINTS_PER_NAT * (math.log(likelihood_ratio) - self.intercept)


def _weights(spam: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per-mail weights: half the total to each class, shared equally by the collections within it."""
    w = np.zeros(len(spam))
    for label in (True, False):
        names = sorted(set(groups[spam == label].tolist()))
        for name in names:
            mine = (spam == label) & (groups == name)
            w[mine] = 0.5 / len(names) / mine.sum()
    return w


def _design(data: Data, fitted: Sequence[str], prior: dict[str, float]) -> tuple[csr_matrix, np.ndarray]:
    """Indicator matrix of the fitted symbols and the fixed offset (points) of every other symbol."""
    column = {s: i for i, s in enumerate(fitted)}
    rows, cols = [], []
    offset = np.zeros(len(data.symbols))
    for r, symbols in enumerate(data.symbols):
        for s in set(symbols):
            if s in column:
                rows.append(r)
                cols.append(column[s])
            else:
                offset[r] += prior.get(s, 0.0)
    x = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(data.symbols), len(fitted)))
    return x, offset


def _solve(x: csr_matrix, offset: np.ndarray, y: np.ndarray, weight: np.ndarray, prior: np.ndarray,
           lam: float, free: bool = True) -> tuple[np.ndarray, float]:
    """Scores (points) and intercept minimising the weighted log-loss plus ``lam * |scores - prior|^2``."""
    k = POINTS_PER_NAT
    t = y.astype(float)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[:-1] if free else prior
        b = theta[-1]
        z = (offset + x @ w) / k + b
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))
        loss = float(np.sum(weight * (np.logaddexp(0.0, z) - t * z))) + lam * float(np.sum((w - prior) ** 2))
        g = weight * (p - t)
        grad_w = (x.T @ g) / k + 2 * lam * (w - prior) if free else np.zeros(len(prior))
        return loss, np.r_[grad_w, g.sum()]

    bounds = [(MIN_SCORE, MAX_SCORE)] * len(prior) + [(None, None)]
    start = np.r_[prior, 0.0]
    found = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds)
    theta = found.x
    return (theta[:-1] if free else prior.copy()), float(theta[-1])


def _loss(x: csr_matrix, offset: np.ndarray, y: np.ndarray, weight: np.ndarray, w: np.ndarray, b: float) -> float:
    z = (offset + x @ w) / POINTS_PER_NAT + b
    return float(np.sum(weight * (np.logaddexp(0.0, z) - y * z)) / weight.sum())


def monotone_chains(scores: dict[str, float], hits: dict[str, int]) -> dict[str, float]:
    """Band scores made non-increasing down each chain (pool-adjacent-violators, weighted by hits)."""
    out = dict(scores)
    for chain in CHAINS:
        names = [s for s in chain if s in out]
        blocks: list[list[float]] = []  # [value, weight, count]
        for s in names:
            blocks.append([out[s], float(max(1, hits.get(s, 0))), 1])
            while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
                v2, w2, n2 = blocks.pop()
                v1, w1, n1 = blocks.pop()
                blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
        values = [v for v, _, n in blocks for _ in range(int(n))]
        out.update(zip(names, values, strict=True))
    return out


def _folds(groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """Fold of each mail: its collection, or a random fold of :data:`FOLDS` when there is a single collection."""
    names = sorted(set(groups.tolist()))
    if len(names) > 1:
        return np.array([names.index(g) for g in groups.tolist()])
    return np.random.default_rng(seed).permutation(len(groups)) % FOLDS


def calibrate(data: Data, prior: dict[str, float], fittable: set[str]) -> Result:
    """Fit the ``fittable`` symbols' scores on ``data``; ``prior`` holds every symbol's shipped score."""
    y = np.asarray(data.spam, dtype=bool)
    if not y.any() or y.all():
        raise CalibrationError("calibration needs both spam and ham training mail")
    hits: dict[str, int] = {}
    for symbols in data.symbols:
        for s in set(symbols):
            hits[s] = hits.get(s, 0) + 1
    fitted = sorted(s for s in fittable if hits.get(s, 0) >= MIN_HITS)
    if not fitted:
        raise CalibrationError(f"no symbol of the fitted kind fired on {MIN_HITS} training mails or more")
    x, offset = _design(data, fitted, prior)
    p0 = np.array([prior.get(s, 0.0) for s in fitted])
    weight = _weights(y, data.groups)
    fold = _folds(np.asarray(data.groups))

    def cv(lam: float, free: bool = True) -> tuple[float, list[np.ndarray]]:
        total, fits = 0.0, []
        for f in sorted(set(fold.tolist())):
            tr, te = fold != f, fold == f
            if not y[tr].any() or y[tr].all():
                continue  # the others hold one class only: nothing to fit this fold on
            w, b = _solve(x[tr], offset[tr], y[tr], _weights(y[tr], data.groups[tr]), p0, lam, free)
            w = np.array([monotone_chains(dict(zip(fitted, w, strict=True)), hits)[s] for s in fitted])
            total += _loss(x[te], offset[te], y[te], weight[te], w, b) * weight[te].sum()
            fits.append(w)
        return total / weight.sum(), fits

    cv_loss: dict[float, float] = {}
    fold_fits: dict[float, list[np.ndarray]] = {}
    for lam in LAMBDAS:
        cv_loss[lam], fold_fits[lam] = cv(lam)
    loss_prior, _ = cv(LAMBDAS[0], free=False)
    lam = min(cv_loss, key=lambda k: cv_loss[k])
    w, b = _solve(x, offset, y, weight, p0, lam)
    full = monotone_chains({s: round(float(v), 2) for s, v in zip(fitted, w, strict=True)}, hits)

    kept: dict[str, float] = {}
    dropped: dict[str, str] = {}
    for i, s in enumerate(fitted):
        change = full[s] - prior.get(s, 0.0)
        if abs(change) < MIN_CHANGE:
            continue
        moves = [f[i] - p0[i] for f in fold_fits[lam]]
        if all(m * change > 0 and abs(m) >= MIN_CHANGE for m in moves):
            kept[s] = round(full[s], 2)
        else:
            dropped[s] = "not confirmed with each collection left out"
    # The intercept of the scores kept (the others at their prior): what the thresholds are derived from.
    final = np.array([kept.get(s, p0[i]) for i, s in enumerate(fitted)])
    _, b_final = _solve(x, offset, y, weight, final, lam, free=False)
    return Result(kept, {s: round(float(v), 2) for s, v in full.items()}, {s: prior.get(s, 0.0) for s in fitted},
                  dropped, lam, b_final, hits, cv_loss, loss_prior)


def layer_toml(result: Result, *, source: str, quarantine_ratio: float = 1000.0) -> str:
    """The text of ``tenants/scores/calibration.toml``: the confirmed scores and where they came from."""
    lines = [
        "# Calibrated scores: a layer over the shipped scores of tenants/scores/*.toml (the prior), written by",
        "# `bench/calibrate.py` (tenants/calibration.py). Only scores whose change held with each training collection",
        "# left out are listed; the MSP baseline and tenant overrides still win over them. Never fitted on the",
        "# held-out parts of the corpora.",
        f"# source: {source}",
        f"# created: {result.created}; L2 pull towards the prior: {result.lam:g}; cross-validated log-loss "
        f"{result.loss_prior:.4f} with the shipped scores, {result.cv_loss[result.lam]:.4f} calibrated",
        f"# intercept (log-odds with no evidence, classes weighted equally): {result.intercept:.3f}; the score at "
        f"which evidence reaches {quarantine_ratio:g}:1 is {result.threshold_for(quarantine_ratio):.2f}",
        "",
        "[scores]",
    ]
    for s in sorted(result.scores):
        lines.append(f"{s} = {result.scores[s]}  # shipped {result.prior[s]:g}, {result.hits[s]} training hits")
    return "\n".join(lines) + "\n"
