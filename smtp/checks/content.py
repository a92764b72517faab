"""The base content model, the MSP-level prior every tenant starts from: records the band of the spam probability.

The model (``tenants/content/data/base-model.npz``, trained by ``mailward model train``) is loaded once per process
and again only when its file changes. A missing or corrupt file raises :class:`~tenants.content.model.ModelError`,
which the pipeline records as ``CONTENT_TEMPFAIL`` (score 0): the mail is judged without the model, never lost.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from smtp.checks.base import Check, CheckContext, Stage
from tenants.config import Config
from tenants.content.features import vectorize
from tenants.content.model import BANDS, BASE_MODEL, ContentModel, ModelError, band_of, sigmoid

log = logging.getLogger(__name__)

#: Loaded models by path: (file identity (mtime, size, inode), the model or the error loading it gave).
_CACHE: dict[Path, tuple[tuple[int, int, int], ContentModel | ModelError]] = {}


def load_cached(path: Path) -> ContentModel:
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


class ContentCheck(Check):
    name = "content"
    stage = Stage.DATA
    timeout = 5.0
    symbols = tuple(symbol for _, symbol in BANDS)

    def __init__(self, cfg: Config, *, model_path: Path = BASE_MODEL) -> None:
        super().__init__(cfg)
        self.model_path = model_path
        try:  # load when the process starts, not on its first mail (a 250 must not wait seconds for it)
            load_cached(model_path)
        except ModelError:
            pass  # logged once by load_cached; each mail then records CONTENT_TEMPFAIL

    async def run(self, ctx: CheckContext) -> None:
        if ctx.mail is None:
            return
        model = load_cached(self.model_path)
        log_odds = float(model.log_odds(vectorize([ctx.mail]))[0])
        probability = sigmoid(log_odds)
        ctx.add(band_of(probability),
                f"probability {probability:.4f} (log-odds {log_odds:+.2f}, model {model.version})")
