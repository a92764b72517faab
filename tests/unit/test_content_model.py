"""The base content model: features, real training on a crafted corpus, the saved file, the online learner, the check
and ``mailward model train``. The crafted corpus is built here (a few dozen mails), never the shared corpora."""

from __future__ import annotations

import asyncio
import random
import tomllib
from pathlib import Path

import numpy as np
import pytest

from mailward.cli import main
from smtp.checks.base import CheckContext, Stage
from smtp.checks.content import ContentCheck
from smtp.checks.mimecheck import MimeCheck
from smtp.checks.rules import RulesCheck
from smtp.mime import parse_mail
from smtp.pipeline import run_stage
from smtp.verdict import Action, decide
from tenants.content import online
from tenants.content.corpus import CorpusError, find_collections, read_mail
from tenants.content.features import mail_text, tokens, vectorize
from tenants.content.model import BANDS, BASE_MODEL, ContentModel, ModelError
from tenants.content.train import TrainResult, band_scores, train
from tenants.platform.config import Config
from tenants.policy import Policy
from tenants.symbols import SCORES_DIR, lookup, symbol_table

SPAM_WORDS = ("viagra pills discount offer winner prize cash casino mortgage refinance lottery bonus cheap deal "
              "unlimited guaranteed exclusive investment opportunity").split()
HAM_WORDS = ("meeting agenda minutes release branch review schedule lunch project report budget draft invoice "
             "deploy ticket sprint roadmap migration").split()
COMMON_WORDS = "the and you for this with have from your will about please today thanks".split()
#: Mails of each label in the crafted corpus (the last 20 % of each are held out).
N_MAILS = 30


def crafted(spam: bool, n: int, seed: int) -> list[bytes]:
    """Mails drawn from a spam or a ham vocabulary (plus common words), reproducibly; spam is HTML with a link."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.sample(SPAM_WORDS if spam else HAM_WORDS, 8) + rng.sample(COMMON_WORDS, 6)
        rng.shuffle(words)
        text = " ".join(words)
        if spam:
            subject = f"{rng.choice(SPAM_WORDS).upper()} for you"
            body = (f"Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><font size=4>{text}</font>"
                    f'<a href="http://cheap{rng.randint(1, 99)}.example/x?id={i}">click</a></body></html>\r\n')
            sender = f"promo{i}@deals{rng.randint(1, 99)}.example"
        else:
            subject = f"{rng.choice(HAM_WORDS)} notes"
            body = f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\nhttps://wiki.acme.test/page\r\n"
            sender = "Colleague <colleague@acme.test>"
        out.append((f"From: {sender}\r\nTo: user@acme.test\r\nSubject: {subject}\r\n"
                    f"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMessage-ID: <{seed}.{i}@example.net>\r\n"
                    f"MIME-Version: 1.0\r\n{body}").encode())
    return out


def write_corpus(root: Path, name: str = "crafted") -> Path:
    """A corpus in the tarball layout: ``name/ham/*.eml`` and ``name/spam/*.eml``."""
    for label, spam, seed in (("ham", False, 1), ("spam", True, 2)):
        folder = root / name / label
        folder.mkdir(parents=True)
        for i, raw in enumerate(crafted(spam, N_MAILS, seed)):
            (folder / f"{i:03d}.eml").write_bytes(raw)
    return root / name


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, Path]:
    """A model really trained on the crafted corpus, and the file it was saved to."""
    root = tmp_path_factory.mktemp("corpus")
    result = train(find_collections([write_corpus(root)]), jobs=1)
    path = root / "model.npz"
    result.model.save(path)
    return result, path


def config(tmp_path: Path) -> Config:
    return Config(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/mailward.db")


def run_checks(checks: list, raw: bytes, tmp_path: Path) -> CheckContext:
    ctx = CheckContext(cfg=config(tmp_path), client_ip="192.0.2.25", helo="mail.sender.example",
                       mail_from="sender@example.net", rcpts=["user@acme.test"], tenant_ids=[1],
                       policies={1: Policy()}, mail=parse_mail(raw))
    asyncio.run(run_stage(checks, ctx, Stage.DATA))
    return ctx


# --- features -----------------------------------------------------------------------------------------------------

def test_a_redacted_address_and_a_real_address_give_the_same_features() -> None:
    """A corpus whose addresses were redacted to ``[removed]`` must not teach the model the redaction."""
    head = "From: a@b.example\r\nSubject: hello\r\nContent-Type: text/plain\r\n\r\n"
    real = mail_text(f"{head}write to alice@example.org today\r\n".encode())
    redacted = mail_text(f"{head}write to [removed] today\r\n".encode())
    assert tokens(real) == tokens(redacted)
    assert (vectorize([real]) != vectorize([redacted])).nnz == 0


def test_the_mbox_separator_line_of_an_export_is_not_part_of_the_mail(tmp_path: Path) -> None:
    """A Thunderbird ``From - <date>`` line (on one label only in a corpus) is dropped before parsing."""
    raw = crafted(True, 1, 7)[0]
    path = tmp_path / "one.eml"
    path.write_bytes(b"From - Tue Oct 27 10:23:55 2009\n" + raw)
    assert read_mail(path) == raw


def test_feature_rows_are_the_same_from_the_ingress_parse_and_from_raw_bytes() -> None:
    """Training (raw bytes) and the check (smtp.mime.ParsedMail) must see the same vector."""
    raw = crafted(True, 1, 3)[0]
    assert (vectorize([parse_mail(raw)]) != vectorize([mail_text(raw)])).nnz == 0


# --- training, the file, calibration ------------------------------------------------------------------------------

def test_training_on_a_crafted_corpus_ranks_held_out_spam_above_ham(trained: tuple[TrainResult, Path]) -> None:
    result, _ = trained
    figures = result.heldout["crafted"]
    assert (figures.spam, figures.ham) == (N_MAILS // 5, N_MAILS // 5)
    assert figures.auc > 0.95
    model = result.model
    new_spam, new_ham = crafted(True, 5, 11), crafted(False, 5, 12)
    p_spam = model.probability(vectorize(mail_text(r) for r in new_spam))
    p_ham = model.probability(vectorize(mail_text(r) for r in new_ham))
    assert p_spam.min() > p_ham.max()
    assert model.meta["trained_on"]["crafted"] == {"spam": 24, "ham": 24, "dropped": 0}


def test_training_drops_copies_of_held_out_mail(tmp_path: Path) -> None:
    """A training mail with a held-out mail's Message-ID or body must not be trained on (corpora overlap)."""
    corpus = write_corpus(tmp_path)
    held = sorted((corpus / "spam").iterdir())[-1].read_bytes()
    (corpus / "spam" / "000a.eml").write_bytes(held)  # sorts into the training part
    result = train(find_collections([corpus]), jobs=1)
    assert result.dropped == 1
    assert result.model.meta["trained_on"]["crafted"]["dropped"] == 1


def test_save_and_load_give_identical_scores(trained: tuple[TrainResult, Path]) -> None:
    result, path = trained
    loaded = ContentModel.load(path)
    rows = vectorize(mail_text(r) for r in crafted(True, 5, 21) + crafted(False, 5, 22))
    assert np.array_equal(loaded.log_odds(rows), result.model.log_odds(rows))
    assert loaded.version == result.model.version
    assert loaded.calibration == result.model.calibration


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_a_corrupt_or_missing_model_file_is_a_clear_error(trained: tuple[TrainResult, Path], tmp_path: Path,
                                                           damage: str) -> None:
    _, good = trained
    bad = tmp_path / "model.npz"
    if damage == "garbage":
        bad.write_bytes(b"not a model at all")
    elif damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError, match=str(bad)):
        ContentModel.load(bad)


def test_a_corrupt_model_records_content_tempfail_and_the_mail_still_gets_a_verdict(tmp_path: Path) -> None:
    """A broken model file must never lose or block mail: the check fails into CONTENT_TEMPFAIL (score 0)."""
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"PK\x03\x04 broken")
    cfg = config(tmp_path)
    ctx = run_checks([MimeCheck(cfg), RulesCheck(cfg), ContentCheck(cfg, model_path=bad)], crafted(False, 1, 5)[0],
                     tmp_path)
    assert [f.symbol for f in ctx.findings if f.symbol.startswith("CONTENT_")] == ["CONTENT_TEMPFAIL"]
    verdict = decide(ctx.findings, 1, Policy())
    assert verdict.action == Action.DELIVER
    assert lookup("CONTENT_TEMPFAIL").score == 0.0


def test_band_scores_never_fall_as_the_probability_rises() -> None:
    """Calibration is monotonic even where the data is not: a middle band full of ham is pooled with its neighbours."""
    rng = np.random.default_rng(0)
    probability = np.concatenate([rng.uniform(0.9995, 1, 50), rng.uniform(0.96, 0.98, 40), rng.uniform(0, 0.01, 200)])
    y = np.concatenate([np.ones(50, bool), np.zeros(40, bool), np.zeros(200, bool)])
    scores = band_scores(probability, y)
    ordered = [scores[symbol] for _, symbol in BANDS]
    assert all(a >= b for a, b in zip(ordered, ordered[1:], strict=False))
    assert scores["CONTENT_SPAM_999"] > 0 > scores["CONTENT_HAM_999"]


def test_the_shipped_score_file_is_monotonic_and_matches_the_shipped_model() -> None:
    shipped = tomllib.loads((SCORES_DIR / "content.toml").read_text())
    ordered = [shipped[symbol]["score"] for _, symbol in BANDS]
    assert all(a >= b for a, b in zip(ordered, ordered[1:], strict=False))
    model = ContentModel.load(BASE_MODEL)
    assert {s: shipped[s]["score"] for _, s in BANDS} == model.meta["band_scores"]
    assert BASE_MODEL.stat().st_size < 5_000_000
    assert 0 < model.meta["prior_weight"]


# --- the online learner -------------------------------------------------------------------------------------------

def test_an_online_update_moves_the_score_towards_the_label(trained: tuple[TrainResult, Path]) -> None:
    model = trained[0].model
    x = vectorize([mail_text(crafted(False, 1, 31)[0])])
    spam_delta, ham_delta = online.Delta(), online.Delta()
    before = online.score(model, None, x)
    online.update(model, spam_delta, x, spam=True)
    online.update(model, ham_delta, x, spam=False, margin=float("inf"))
    assert online.score(model, spam_delta, x) > before
    assert online.score(model, ham_delta, x) < before
    assert online.Delta.loads(spam_delta.dumps()).dot(x) == pytest.approx(spam_delta.dot(x), abs=1e-5)


def test_one_tenants_delta_does_not_change_another_tenants_score(trained: tuple[TrainResult, Path]) -> None:
    """Feedback of tenant A (reporting a mail as spam) must not move tenant B's score of the same mail."""
    model = trained[0].model
    x = vectorize([mail_text(crafted(False, 1, 41)[0])])
    tenant_a, tenant_b = online.Delta(), online.Delta()
    b_before = online.score(model, tenant_b, x)
    for _ in range(5):
        online.update(model, tenant_a, x, spam=True)
    assert online.score(model, tenant_a, x) > b_before + 1
    assert online.score(model, tenant_b, x) == b_before
    assert tenant_b.weights == {} and tenant_b.updates == 0


# --- the check ----------------------------------------------------------------------------------------------------

def test_the_check_records_a_spam_band_on_spam_and_a_ham_band_on_ham(trained: tuple[TrainResult, Path],
                                                                     tmp_path: Path) -> None:
    _, path = trained
    check = ContentCheck(config(tmp_path), model_path=path)
    spam = run_checks([check], crafted(True, 1, 51)[0], tmp_path).findings
    ham = run_checks([check], crafted(False, 1, 52)[0], tmp_path).findings
    assert len(spam) == 1 and spam[0].symbol.startswith("CONTENT_SPAM_")
    assert len(ham) == 1 and ham[0].symbol.startswith("CONTENT_HAM_")
    assert "probability" in spam[0].reason and spam[0].tenant_id is None
    assert lookup(spam[0].symbol).score > 0 > lookup(ham[0].symbol).score
    assert all(s in symbol_table() for s in (*ContentCheck.symbols, check.tempfail_symbol))


def test_the_shipped_model_loads_and_scores_through_the_registered_check(tmp_path: Path) -> None:
    from smtp.checks import build_checks

    checks = [c for c in build_checks(config(tmp_path)) if c.name == "content"]
    assert len(checks) == 1
    findings = run_checks(checks, crafted(True, 1, 61)[0], tmp_path).findings
    assert len(findings) == 1 and findings[0].symbol in {s for _, s in BANDS}


# --- the command --------------------------------------------------------------------------------------------------

def mailward(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the ``mailward`` command in process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_model_train_refuses_an_empty_corpus_with_a_clear_error(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = mailward(capsys, "model", "train", "--corpus", str(tmp_path / "empty"),
                            "--out", str(tmp_path / "m.npz"))
    assert code != 0
    assert "mailward: error:" in err and "no labelled mail here" in err
    (tmp_path / "labelled" / "ham").mkdir(parents=True)
    (tmp_path / "labelled" / "spam").mkdir()
    code, _, err = mailward(capsys, "model", "train", "--corpus", str(tmp_path / "labelled"),
                            "--out", str(tmp_path / "m.npz"))
    assert code != 0
    assert "no mail files to train on" in err
    assert not (tmp_path / "m.npz").exists()


def test_model_train_writes_a_model_that_model_info_reads(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    corpus = write_corpus(tmp_path)
    out, scores = tmp_path / "m.npz", tmp_path / "content.toml"
    code, stdout, err = mailward(capsys, "model", "train", "--corpus", str(corpus), "--out", str(out),
                                 "--scores", str(scores), "--jobs", "1")
    assert code == 0, err
    assert "held out crafted: 6 spam / 6 ham" in stdout
    written = tomllib.loads(scores.read_text())
    assert set(written) == {s for _, s in BANDS} | {"CONTENT_TEMPFAIL"}
    code, stdout, _ = mailward(capsys, "model", "info", "--model", str(out))
    assert code == 0 and ContentModel.load(out).version in stdout


def test_corpus_layout_errors_name_the_directory(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not a directory"):
        find_collections([tmp_path / "nowhere"])
