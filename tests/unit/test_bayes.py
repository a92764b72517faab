"""Per-tenant Bayes: the tokenizer, training and classification on the real database, tenant isolation, the check,
and ``mailward bayes`` training from a directory and from an mbox."""

from __future__ import annotations

import asyncio
import base64
import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from mailward.bayes_cli import bayes as bayes_cli
from smtp.checks.base import CheckContext
from smtp.checks.bayes import BayesCheck, band_symbols
from smtp.mime import ParsedMail, parse_mail
from tenants.exceptions import TenantScopeError
from tenants.mail import bayes
from tenants.models import BayesToken
from tenants.policy import Policy
from tenants.scope import msp_scope, tenant_scope

SPAM_WORDS = ("viagra pills discount offer winner prize cash casino mortgage refinance lottery bonus cheap deal "
              "unlimited guaranteed exclusive investment opportunity").split()
HAM_WORDS = ("meeting agenda minutes release branch review schedule lunch project report budget draft invoice "
             "deploy ticket sprint roadmap migration").split()
COMMON_WORDS = "the and you for this with have from your will about please today thanks".split()
#: Mails of each class trained in the tests; the classifier's minimum is set to this.
N_TRAIN = 30


def make_mail(words: list[str], *, subject: str, sender: str, url: str) -> bytes:
    body = " ".join(words)
    return (f"From: {sender}\r\nTo: user@acme.test\r\nSubject: {subject}\r\n"
            f"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMessage-ID: <{random.random()}@example.net>\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n{url}\r\n").encode()


def synthetic(spam: bool, n: int, seed: int) -> list[bytes]:
    """Mails drawn from a spam or a ham vocabulary (plus common words), reproducibly."""
    rng = random.Random(seed)
    words = SPAM_WORDS if spam else HAM_WORDS
    out = []
    for i in range(n):
        chosen = rng.sample(words, 8) + rng.sample(COMMON_WORDS, 6)
        rng.shuffle(chosen)
        if spam:
            out.append(make_mail(chosen, subject=f"{rng.choice(SPAM_WORDS).upper()} for you",
                                 sender=f"promo{i}@deals{rng.randint(1, 99)}.example", url="http://cheap.example/x"))
        else:
            out.append(make_mail(chosen, subject=f"{rng.choice(HAM_WORDS)} notes",
                                 sender="Colleague <colleague@acme.test>", url="https://wiki.acme.test/page"))
    return out


def parsed(raws: list[bytes]) -> list[ParsedMail]:
    return [parse_mail(r) for r in raws]


def train_tenant(session, tenant_id: int, *, seed: int = 1, flip: bool = False) -> None:
    """Train N_TRAIN spam and N_TRAIN ham (labels swapped when ``flip``) and commit."""
    with tenant_scope(tenant_id):
        bayes.train(session, tenant_id, parsed(synthetic(True, N_TRAIN, seed)), spam=not flip)
        bayes.train(session, tenant_id, parsed(synthetic(False, N_TRAIN, seed + 1)), spam=flip)
        session.commit()


def classify(session, tenant_id: int, raw: bytes, min_trained: int = N_TRAIN) -> float | None:
    with tenant_scope(tenant_id):
        return bayes.classify(session, tenant_id, parse_mail(raw), min_trained=min_trained)


# --- tokenizer ------------------------------------------------------------------------------------------------------

def test_tokenizer_reads_decoded_text_never_base64_payloads() -> None:
    secret = "zanzibarquux " * 20
    text_b64 = base64.encodebytes(b"hello decodedword there").decode()
    attachment = base64.encodebytes((secret * 10).encode()).decode()
    pasted = base64.b64encode(b"x" * 300).decode()
    raw = ("From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: Files\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
           "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           f"{text_b64}\r\n"
           "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           f"see below\r\n{pasted[:76]}\r\n{pasted[76:152]}\r\n"
           "--b\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n"
           "Content-Disposition: attachment; filename=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           f"{attachment}\r\n--b--\r\n").encode()
    tokens = bayes.tokenize(parse_mail(raw))
    assert "decodedword" in tokens and "hello" in tokens  # the base64 text part, decoded
    assert "ext:bin" in tokens and "cte:text:base64" in tokens
    assert not any("zanzibar" in t for t in tokens)  # the attachment's content is never read
    assert not any(t.startswith("skip:") for t in tokens)  # neither encoded lines nor pasted base64 runs
    for chunk in (text_b64.split()[0], attachment.split()[0], pasted[:76]):
        assert not any(chunk.lower()[:20] in t for t in tokens)


def test_tokenizer_prefixes_header_tokens_and_url_hosts() -> None:
    raw = make_mail(["hello", "world"], subject="Quarterly figures", sender="Big Shop <news@mail.bigshop.example>",
                    url="https://click.bigshop.example/offer/spring")
    tokens = set(bayes.tokenize(parse_mail(raw)))
    assert {"s:quarterly", "s:figures", "fn:big", "fd:mail.bigshop.example", "fd:.bigshop.example",
            "u:click.bigshop.example", "u:.bigshop.example", "up:offer", "u:<from-domain>", "hello"} <= tokens
    assert "quarterly" not in tokens  # subject words are their own tokens
    assert {"hdr:received:0", "hdr:message-id:1", "hdr:subject:1"} <= tokens  # SpamBayes' header counts


def test_tokenizer_makes_subject_punctuation_skip_and_bigram_tokens() -> None:
    raw = make_mail(["click", "here", "supercalifragilistic", "now"], subject="FREE money!!! $$$",
                    sender="x@y.example", url="")
    tokens = set(bayes.tokenize(parse_mail(raw)))
    assert {"s:free", "s:money", "s:!!!", "s:$$$", "bi:click here", "skip:s 20"} <= tokens
    assert "bi:here now" not in tokens  # a skipped long word breaks the pair


def test_token_hash_is_a_signed_64_bit_integer() -> None:
    values = {bayes.token_hash(t) for t in ("a", "b", "s:hello", "hello", "ünïcode")}
    assert len(values) == 5
    assert all(-(2 ** 63) <= v < 2 ** 63 for v in values)
    assert bayes.token_hash("hello") == bayes.token_hash("hello")


def test_combination_is_symmetric_and_ignores_weak_tokens() -> None:
    assert bayes.combine([]) == 0.5
    assert bayes.combine([0.55, 0.45, 0.52]) == 0.5  # all within MIN_PROB_STRENGTH of 0.5
    spammy = bayes.combine([0.99] * 20)
    hammy = bayes.combine([0.01] * 20)
    assert spammy > 0.99 and hammy < 0.01
    assert abs(spammy + hammy - 1.0) < 1e-9
    assert bayes.token_probability(0, 0, 10, 10) == 0.5
    # One sighting, shrunk towards 0.5 with SpamBayes' strength 0.45: (0.45 * 0.5 + 1) / 1.45.
    assert bayes.token_probability(1, 0, 10, 10) == pytest.approx(0.8448, abs=1e-4)
    # Counts are compared as ratios of each class's trained mails (Robinson): 5 of 100 spam vs 5 of 400 ham.
    assert bayes.token_probability(5, 5, 100, 400) == pytest.approx((0.225 + 10 * 0.8) / 10.45)


# --- store ----------------------------------------------------------------------------------------------------------

def test_train_and_classify(session, factory) -> None:
    acme = factory.tenant("Acme", ("acme.test",))
    train_tenant(session, acme.id)
    for raw in synthetic(True, 10, seed=100):
        assert classify(session, acme.id, raw) > 0.95
    for raw in synthetic(False, 10, seed=200):
        assert classify(session, acme.id, raw) < 0.05
    with tenant_scope(acme.id):
        learnt = bayes.stats(session, acme.id)
    assert (learnt.nspam, learnt.nham) == (N_TRAIN, N_TRAIN)
    assert learnt.tokens > 50


def test_no_score_below_the_minimum_of_each_class(session, factory) -> None:
    acme = factory.tenant("Acme", ("acme.test",))
    spam = synthetic(True, 1, seed=5)[0]
    assert classify(session, acme.id, spam) is None  # nothing trained
    with tenant_scope(acme.id):
        bayes.train(session, acme.id, parsed(synthetic(True, N_TRAIN, 1)), spam=True)
        session.commit()
    assert classify(session, acme.id, spam) is None  # spam only
    with tenant_scope(acme.id):
        bayes.train(session, acme.id, parsed(synthetic(False, N_TRAIN - 1, 2)), spam=False)
        session.commit()
    assert classify(session, acme.id, spam) is None  # one ham short
    assert classify(session, acme.id, spam, min_trained=N_TRAIN - 1) is not None
    assert classify(session, acme.id, spam, min_trained=Policy().bayes_min_trained) is None


def test_training_twice_adds_counts(session, factory) -> None:
    acme = factory.tenant("Acme", ("acme.test",))
    mails = parsed(synthetic(True, 3, seed=9))
    token = bayes.token_hash("s:" + (mails[0].header("Subject") or "").split()[0].lower())
    with tenant_scope(acme.id):
        bayes.train(session, acme.id, mails, spam=True)
        first = session.scalar(select(BayesToken.spam).where(BayesToken.token == token))
        bayes.train(session, acme.id, mails, spam=True)
        second = session.scalar(select(BayesToken.spam).where(BayesToken.token == token))
        assert first is not None and second == 2 * first
        assert bayes.stats(session, acme.id).nspam == 6


def test_untrain_takes_training_back(session, factory) -> None:
    acme = factory.tenant("Acme", ("acme.test",))
    spam, ham = parsed(synthetic(True, 5, 1)), parsed(synthetic(False, 5, 2))
    with tenant_scope(acme.id):
        bayes.train(session, acme.id, spam, spam=True)
        bayes.train(session, acme.id, ham, spam=False)
        assert bayes.untrain(session, acme.id, spam, spam=True) == 5
        learnt = bayes.stats(session, acme.id)
        assert (learnt.nspam, learnt.nham) == (0, 5)
        assert session.scalar(select(func.count()).select_from(BayesToken).where(BayesToken.spam > 0)) == 0
        assert bayes.untrain(session, acme.id, ham, spam=False) == 5
        assert bayes.stats(session, acme.id) == bayes.BayesStats(0, 0, 0)


def test_tenant_b_training_does_not_change_tenant_a(session, factory) -> None:
    """Tenant B trains the same kind of mails with the opposite labels; A's verdicts and counts stay exactly as
    they were."""
    acme = factory.tenant("Acme", ("acme.test",))
    beta = factory.tenant("Beta", ("beta.test",))
    train_tenant(session, acme.id)
    probes = synthetic(True, 3, seed=300) + synthetic(False, 3, seed=301)
    before = [classify(session, acme.id, raw) for raw in probes]
    with tenant_scope(acme.id):
        tokens_before = bayes.stats(session, acme.id)
    train_tenant(session, beta.id, flip=True)
    after = [classify(session, acme.id, raw) for raw in probes]
    assert after == before
    with tenant_scope(acme.id):
        assert bayes.stats(session, acme.id) == tokens_before
        # A's scope sees only A's rows, even without a tenant_id condition of its own
        assert session.scalar(select(func.count()).select_from(BayesToken)) == tokens_before.tokens
    beta_says = [classify(session, beta.id, raw) for raw in probes]
    assert beta_says[0] < 0.05 and beta_says[-1] > 0.95  # B learnt the opposite


def test_a_tenant_scope_cannot_read_or_train_another_tenant(session, factory) -> None:
    acme = factory.tenant("Acme", ("acme.test",))
    beta = factory.tenant("Beta", ("beta.test",))
    with tenant_scope(acme.id):
        with pytest.raises(TenantScopeError):
            bayes.train(session, beta.id, parsed(synthetic(True, 1, 1)), spam=True)
        with pytest.raises(TenantScopeError):
            bayes.classify(session, beta.id, parse_mail(synthetic(True, 1, 1)[0]), min_trained=0)
    with msp_scope():  # the operator may act for any tenant
        assert bayes.train(session, beta.id, parsed(synthetic(True, 1, 1)), spam=True) == 1


# --- the check ------------------------------------------------------------------------------------------------------

def test_band_symbols() -> None:
    assert band_symbols(0.0) == ["BAYES_00"]
    assert band_symbols(0.03) == ["BAYES_05"]
    assert band_symbols(0.5) == ["BAYES_50"]
    assert band_symbols(0.97) == ["BAYES_95"]
    assert band_symbols(0.995) == ["BAYES_99"]
    assert band_symbols(0.9995) == ["BAYES_99", "BAYES_999"]


def test_check_records_a_symbol_per_trained_tenant(cfg, session, factory) -> None:
    acme = factory.tenant("Acme", ("acme.test",))
    beta = factory.tenant("Beta", ("beta.test",))  # untrained: no Bayes symbol
    train_tenant(session, acme.id)
    policies = {acme.id: Policy(bayes_min_trained=N_TRAIN), beta.id: Policy(bayes_min_trained=N_TRAIN)}

    def run(raw: bytes) -> CheckContext:
        ctx = CheckContext(cfg=cfg, client_ip="192.0.2.1", helo="mx.example.net", mail_from="x@example.net",
                           rcpts=["u@acme.test", "u@beta.test"], tenant_ids=[acme.id, beta.id], policies=policies,
                           mail=parse_mail(raw))
        asyncio.run(BayesCheck(cfg).run(ctx))
        return ctx

    spam_ctx = run(synthetic(True, 1, seed=400)[0])
    assert {(f.symbol, f.tenant_id) for f in spam_ctx.findings} == {("BAYES_99", acme.id), ("BAYES_999", acme.id)}
    assert spam_ctx.findings[0].reason.startswith("probability ")
    ham_ctx = run(synthetic(False, 1, seed=401)[0])
    assert {(f.symbol, f.tenant_id) for f in ham_ctx.findings} == {("BAYES_00", acme.id)}


def test_check_is_inbound_only() -> None:
    assert BayesCheck.directions == ("inbound",)


# --- mailward bayes -------------------------------------------------------------------------------------------------

def test_cli_trains_from_a_directory_and_an_mbox(cfg, session, factory, tmp_path: Path) -> None:
    acme = factory.tenant("Acme", ("acme.test",))
    spam_dir = tmp_path / "spam"
    (spam_dir / "sub").mkdir(parents=True)
    for i, raw in enumerate(synthetic(True, N_TRAIN, seed=1)):
        (spam_dir / ("sub" if i % 2 else ".") / f"{i:03}.eml").write_bytes(raw)
    (spam_dir / ".complete").write_text("")  # hidden files are not mails
    mbox = tmp_path / "ham.mbox"
    with mbox.open("wb") as f:
        for raw in synthetic(False, N_TRAIN, seed=2):
            f.write(b"From colleague@acme.test Mon Mar  2 10:00:00 2026\n" + raw.replace(b"\r\n", b"\n") + b"\n")

    runner = CliRunner()
    result = runner.invoke(bayes_cli, ["train", "Acme", "--spam", str(spam_dir), "--ham", str(mbox)])
    assert result.exit_code == 0, result.output
    assert f"trained {N_TRAIN} spam mail(s)" in result.output
    assert f"trained {N_TRAIN} ham mail(s)" in result.output
    assert f"{N_TRAIN} spam and {N_TRAIN} ham trained" in result.output
    with tenant_scope(acme.id):
        learnt = bayes.stats(session, acme.id)
    assert (learnt.nspam, learnt.nham) == (N_TRAIN, N_TRAIN)
    assert classify(session, acme.id, synthetic(True, 1, seed=500)[0]) > 0.95

    result = runner.invoke(bayes_cli, ["stats", "Acme"])
    assert result.exit_code == 0, result.output
    assert f"{N_TRAIN} spam, {N_TRAIN} ham" in result.output and "inactive until 200" in result.output


def test_cli_needs_spam_or_ham_and_a_known_tenant(cfg, factory, tmp_path: Path) -> None:
    factory.tenant("Acme", ("acme.test",))
    runner = CliRunner()
    result = runner.invoke(bayes_cli, ["train", "Acme"])
    assert result.exit_code == 2 and "--spam PATH and/or --ham PATH" in result.output
    result = runner.invoke(bayes_cli, ["train", "Nobody", "--spam", str(tmp_path)])
    assert result.exit_code != 0 and "no tenant 'Nobody'" in str(result.exception)
