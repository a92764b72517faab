"""A tenant's own content learning: a sparse weight delta on top of the base model, updated one labelled mail at a time.

The tenant's log-odds of a mail are the base model's calibrated log-odds (the MSP-level prior) plus the delta's
``d·x + d0``. Each labelled mail (a report, a release, a trained folder) takes one step of online logistic
regression on the delta only, with the base's log-odds as a fixed offset and an L2 pull of the touched weights
towards zero, so the delta says only what the tenant's mail adds to the base (Goodman & Yih 2006, Sculley & Wachman
2007: online logistic regression over hashed features is what ranked best in the TREC spam tracks). A delta is
small, tenant-owned data; :meth:`Delta.dumps` / :meth:`Delta.loads` turn it into bytes for storage.

    delta = Delta()
    log_odds = score(base, delta, x)          # before the label is known
    update(base, delta, x, spam=True)         # once it is
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field

from scipy.sparse import csr_matrix

from tenants.content.model import MAX_LOG_ODDS, ContentModel, sigmoid

#: Step size of each update; rows are L2-normalised, so one mistake moves its own log-odds by about this much × 2.
LEARNING_RATE = 1.0
#: L2 pull of a touched delta weight towards zero at each update (keeps the delta small and the base in charge).
L2 = 1e-5
#: Mails whose base-plus-delta log-odds already agree with their label by more than this margin are not learnt
#: from (TREC's "train on error or near miss": spares the delta from growing on mail it already gets right).
MARGIN = 6.0


@dataclass
class Delta:
    """A tenant's sparse weight delta (hashed feature index → weight) and bias, and how many mails it has learnt."""

    weights: dict[int, float] = field(default_factory=dict)
    bias: float = 0.0
    updates: int = 0

    def dot(self, x: csr_matrix) -> float:
        """``d·x + d0`` for one feature row."""
        get = self.weights.get
        return self.bias + sum(get(int(j), 0.0) * float(v) for j, v in zip(x.indices, x.data, strict=True))

    def dumps(self) -> bytes:
        """The delta as compressed JSON bytes (for a database column)."""
        data = {"bias": self.bias, "updates": self.updates, "weights": {str(k): round(v, 6)
                                                                        for k, v in self.weights.items() if v}}
        return zlib.compress(json.dumps(data, separators=(",", ":")).encode())

    @classmethod
    def loads(cls, blob: bytes) -> Delta:
        """A delta from :meth:`dumps` bytes."""
        data = json.loads(zlib.decompress(blob))
        return cls({int(k): float(v) for k, v in data["weights"].items()}, float(data["bias"]), int(data["updates"]))


def score(base: ContentModel, delta: Delta | None, x: csr_matrix, *, offset: float = 0.0) -> float:
    """The tenant's log-odds that the mail of feature row ``x`` (one row) is spam: base prior plus the delta
    (``offset``: log-odds added to the prior, e.g. the MSP's shared delta)."""
    prior = float(base.log_odds(x)[0]) + offset
    return max(-MAX_LOG_ODDS, min(MAX_LOG_ODDS, prior + (delta.dot(x) if delta is not None else 0.0)))


def update(base: ContentModel, delta: Delta, x: csr_matrix, *, spam: bool, rate: float = LEARNING_RATE,
           l2: float = L2, margin: float = MARGIN, offset: float = 0.0) -> float:
    """Learn one labelled mail into ``delta`` (in place); returns the log-odds the mail had before the step.
    ``delta.updates`` counts the steps taken: a mail already right by more than ``margin`` takes none."""
    before = score(base, delta, x, offset=offset)
    target = 1.0 if spam else 0.0
    if (before if spam else -before) > margin:
        return before
    gradient = sigmoid(before) - target
    weights = delta.weights
    for j, v in zip(x.indices, x.data, strict=True):
        key = int(j)
        w = weights.get(key, 0.0)
        w -= rate * (gradient * float(v) + l2 * w)
        if w:
            weights[key] = w
        else:
            weights.pop(key, None)
    delta.bias -= rate * gradient * 0.1  # the bias moves slowly: one tenant's mix is no reason to doubt every mail
    delta.updates += 1
    if not math.isfinite(delta.bias):
        raise ValueError("content delta diverged (learning rate too high)")
    return before


def prune(delta: Delta, max_weights: int) -> int:
    """Keep the ``max_weights`` largest weights of ``delta`` (by magnitude); returns how many were dropped. A tenant's
    delta stays small however much it learns: the features that matter most keep their weights."""
    extra = len(delta.weights) - max_weights
    if extra <= 0:
        return 0
    keep = sorted(delta.weights.items(), key=lambda item: abs(item[1]), reverse=True)[:max_weights]
    delta.weights = dict(keep)
    return extra
