"""Calibrated symbol scores (tenants/calibration.py) and their layer over the shipped scores (tenants/symbols.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tenants import symbols
from tenants.calibration import BAYES_CHAIN, CalibrationError, Data, calibrate, layer_toml, monotone_chains


def _data(rows: list[tuple[list[str], bool, str]]) -> Data:
    return Data([r[0] for r in rows], np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))


def _corpus(seed: int = 1) -> Data:
    """Two collections: STRONG fires on 60 % of spam and 1 % of ham, WEAK equally on both, RARE five times."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[list[str], bool, str]] = []
    for collection in ("a", "b"):
        for spam in (True, False):
            for _ in range(600):
                found = []
                if rng.random() < (0.6 if spam else 0.01):
                    found.append("STRONG")
                if rng.random() < 0.3:
                    found.append("WEAK")
                found.append("BAYES_99" if spam and rng.random() < 0.7 else "BAYES_00" if not spam else "BAYES_50")
                rows.append((found, spam, collection))
    for i in range(5):
        rows[i][0].append("RARE")
    return _data(rows)


PRIOR = {"STRONG": 0.5, "WEAK": 3.0, "RARE": 4.0, "BAYES_99": 1.0, "BAYES_50": 0.8, "BAYES_00": -3.0}


def test_scores_move_towards_the_evidence_and_rare_symbols_keep_their_prior() -> None:
    result = calibrate(_corpus(), PRIOR, set(PRIOR))
    # STRONG multiplies the odds of spam by about 60: worth far more than its shipped half point, even beside a
    # Bayes that separates most of the mail on its own.
    assert result.scores["STRONG"] > 1.5
    # WEAK says nothing: its 3 points are pulled down.
    assert result.scores["WEAK"] < 1.5
    # RARE fired five times: not fitted, its shipped score stays (no line in the layer).
    assert "RARE" not in result.fitted and "RARE" not in result.scores
    # The layer's text names every kept score with its shipped prior.
    text = layer_toml(result, source="test")
    assert "STRONG = " in text and "shipped 0.5" in text


def test_a_strong_prior_pull_keeps_the_shipped_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tenants.calibration.LAMBDAS", (1e3,))
    result = calibrate(_corpus(), PRIOR, set(PRIOR))
    for name, score in result.fitted.items():
        assert abs(score - PRIOR[name]) < 0.1, name
    assert result.scores == {}


def test_band_scores_are_monotonic_down_each_chain() -> None:
    raw = {"BAYES_99": 2.0, "BAYES_95": 3.0, "BAYES_80": 1.0, "BAYES_50": 1.5, "BAYES_00": -2.0}
    out = monotone_chains(raw, {s: 10 for s in raw})
    chain = [out[s] for s in BAYES_CHAIN if s in out]
    assert chain == sorted(chain, reverse=True)
    assert out["BAYES_99"] == out["BAYES_95"] == pytest.approx(2.5)
    # A fit on data where BAYES_50 looks spammier than BAYES_99 still ranks the bands in order.
    rows = [(["BAYES_50"], True, "a")] * 50 + [(["BAYES_99"], True, "a")] * 20 + [(["BAYES_99"], False, "a")] * 20 \
        + [(["BAYES_00"], False, "a")] * 60
    result = calibrate(_data(rows), PRIOR, set(PRIOR))
    assert result.fitted["BAYES_99"] >= result.fitted["BAYES_50"] >= result.fitted["BAYES_00"]


def test_one_class_alone_cannot_be_calibrated() -> None:
    with pytest.raises(CalibrationError, match="both spam and ham"):
        calibrate(_data([(["STRONG"], True, "a")] * 20), PRIOR, set(PRIOR))
    with pytest.raises(CalibrationError, match="no symbol"):
        calibrate(_data([(["STRONG"], True, "a"), (["WEAK"], False, "a")]), PRIOR, set(PRIOR))


def test_the_layer_changes_the_default_score_and_refuses_unknown_names(tmp_path, monkeypatch) -> None:
    layer = tmp_path / "calibration.toml"
    monkeypatch.setattr(symbols, "CALIBRATION_FILE", layer)
    shipped = symbols.shipped_table()["MISSING_DATE"].score
    try:
        layer.write_text("[scores]\nMISSING_DATE = 2.25\n")
        symbols.symbol_table.cache_clear()
        symbols.calibrated_scores.cache_clear()
        assert symbols.lookup("MISSING_DATE").score == 2.25
        assert symbols.shipped_table()["MISSING_DATE"].score == shipped  # the prior is untouched
        layer.write_text("[scores]\nNO_SUCH_SYMBOL = 1.0\n")
        symbols.symbol_table.cache_clear()
        symbols.calibrated_scores.cache_clear()
        with pytest.raises(ValueError, match="NO_SUCH_SYMBOL is not a shipped symbol"):
            symbols.symbol_table()
    finally:
        monkeypatch.undo()
        symbols.symbol_table.cache_clear()
        symbols.calibrated_scores.cache_clear()
    assert symbols.lookup("MISSING_DATE").score == symbols.symbol_table()["MISSING_DATE"].score
