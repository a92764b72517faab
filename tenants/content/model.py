"""A trained content model: linear weights over the hashed features, a calibration, and what it was trained on.

The raw output is the linear log-odds ``w·x + b``; the calibration maps it to log-odds that mean what they say on
mail of collections the model never saw (fitted by ``train``, see there). The model is stored as a compressed
``.npz`` holding only the non-zero weights (as float16, a few MB at most) and its metadata as JSON.
"""

from __future__ import annotations

import json
import logging
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix

from tenants.content.features import FEATURE_CONFIG, N_FEATURES, config_hash
from tenants.exceptions import MailwardError

log = logging.getLogger(__name__)

#: Version of the file layout; a file of another layout is refused with a clear error.
FORMAT = 1
#: Where the base model shipped with the package lives.
BASE_MODEL = Path(__file__).resolve().parent / "data" / "base-model.npz"
#: Log-odds are clipped to this magnitude before turning into a probability (no 0 or 1 from float overflow).
MAX_LOG_ODDS = 30.0

#: Probability bands of the calibrated spam probability and the symbol each records (lower bound, symbol), highest
#: first; every mail falls in exactly one. CONTENT_HAM_xx names the ham probability (1 - p) the band starts at.
BANDS: tuple[tuple[float, str], ...] = (
    (0.999, "CONTENT_SPAM_999"),
    (0.99, "CONTENT_SPAM_99"),
    (0.95, "CONTENT_SPAM_95"),
    (0.80, "CONTENT_SPAM_80"),
    (0.50, "CONTENT_SPAM_50"),
    (0.20, "CONTENT_HAM_50"),
    (0.05, "CONTENT_HAM_80"),
    (0.01, "CONTENT_HAM_95"),
    (0.001, "CONTENT_HAM_99"),
    (0.0, "CONTENT_HAM_999"),
)


class ModelError(MailwardError):
    """A content model file is missing, unreadable, or made for other features; the message names the file."""


def band_of(probability: float) -> str:
    """The band symbol of a calibrated spam probability."""
    return next(symbol for bound, symbol in BANDS if probability >= bound)


def sigmoid(log_odds: float) -> float:
    """The probability of a log-odds value, clipped so it is never exactly 0 or 1."""
    return 1.0 / (1.0 + math.exp(-max(-MAX_LOG_ODDS, min(MAX_LOG_ODDS, log_odds))))


@dataclass
class ContentModel:
    """Weights (dense, one per hashed feature), bias, calibration ``(slope, intercept)`` and metadata."""

    weights: np.ndarray
    bias: float
    calibration: tuple[float, float] = (1.0, 0.0)
    meta: dict[str, Any] = field(default_factory=dict)

    def raw(self, x: csr_matrix) -> np.ndarray:
        """The linear log-odds of each row of ``x``."""
        return np.asarray(x @ self.weights, dtype=np.float64).ravel() + self.bias

    def log_odds(self, x: csr_matrix) -> np.ndarray:
        """Calibrated log-odds of each row of ``x``: what the model's evidence is worth on unseen collections."""
        slope, intercept = self.calibration
        return np.clip(slope * self.raw(x) + intercept, -MAX_LOG_ODDS, MAX_LOG_ODDS)

    def probability(self, x: csr_matrix) -> np.ndarray:
        """Calibrated spam probability of each row of ``x``."""
        return 1.0 / (1.0 + np.exp(-self.log_odds(x)))

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unversioned"))

    def save(self, path: Path) -> None:
        """Write the model as a compressed ``.npz`` (non-zero weights only, as float16); replaces ``path``."""
        nonzero = np.flatnonzero(self.weights).astype(np.int32)
        meta = dict(self.meta, format=FORMAT, feature_config=FEATURE_CONFIG, feature_hash=config_hash(),
                    bias=self.bias, calibration=list(self.calibration))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        with partial.open("wb") as out:
            np.savez_compressed(out, index=nonzero, weight=self.weights[nonzero].astype(np.float16),
                                meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8))
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> ContentModel:
        """Read a model file; raises :class:`ModelError` (naming the file and why) on anything amiss."""
        try:
            with np.load(path, allow_pickle=False) as data:
                index = np.asarray(data["index"], dtype=np.int64)
                values = np.asarray(data["weight"], dtype=np.float32)
                meta = json.loads(bytes(data["meta"]).decode())
        except FileNotFoundError as exc:
            raise ModelError(f"content model {path}: no such file (train one with `mailward model train`)") from exc
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, UnicodeDecodeError) as exc:
            raise ModelError(f"content model {path} is unreadable: {type(exc).__name__}: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ModelError(f"content model {path}: file format {meta.get('format')!r}, expected {FORMAT}")
        if meta.get("feature_hash") != config_hash():
            raise ModelError(f"content model {path} was trained on other features (hash {meta.get('feature_hash')}, "
                             f"these are {config_hash()}): train it again")
        if index.shape != values.shape or (index.size and (index.min() < 0 or index.max() >= N_FEATURES)):
            raise ModelError(f"content model {path}: weight indices out of range")
        weights = np.zeros(N_FEATURES, dtype=np.float32)
        weights[index] = values
        slope, intercept = (float(v) for v in meta.get("calibration", (1.0, 0.0)))
        return cls(weights, float(meta.get("bias", 0.0)), (slope, intercept), meta)


#: Loaded models by path: (file identity (mtime, size, inode), the model or the error loading it gave).
_CACHE: dict[Path, tuple[tuple[int, int, int], ContentModel | ModelError]] = {}


def load_cached(path: Path = BASE_MODEL) -> ContentModel:
    """The model at ``path``, read once per process and again when the file changes; raises :class:`ModelError`."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ModelError(f"content model {path}: {exc.strerror or exc} (train one with `mailward model train`)") \
            from exc
    ident = (st.st_mtime_ns, st.st_size, st.st_ino)
    cached = _CACHE.get(path)
    if cached is None or cached[0] != ident:
        loaded: ContentModel | ModelError
        try:
            model = ContentModel.load(path)
            log.info("content model %s loaded from %s", model.version, path)
            loaded = model
        except ModelError as exc:
            log.error("%s", exc)  # once per file version, not once per mail
            loaded = exc
        cached = (ident, loaded)
        _CACHE[path] = cached
    if isinstance(cached[1], ModelError):
        raise cached[1]
    return cached[1]
