"""The native SpamAssassin rule engine on SpamAssassin's real rule files (Debian's spamassassin package): parsing,
Perl regex translation, each rule kind, meta rules, the load report, scores as policy data, and the check."""

from __future__ import annotations

import asyncio
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from smtp.checks.base import CheckContext, Stage
from smtp.checks.sarules import SaRulesCheck
from smtp.mime import parse_mail
from smtp.pipeline import run_stage
from smtp.sarules import load_engine
from smtp.sarules.engine import Engine
from smtp.sarules.matcher import hyperscan_available
from smtp.sarules.message import Envelope, SaMessage, parse_received
from smtp.sarules.meta import MetaError, compile_meta
from smtp.sarules.perlre import Untranslatable, compile_perl, split_regex, translate
from smtp.verdict import score_findings
from tenants.exceptions import ConfigError
from tenants.platform.config import Config
from tenants.policy import policy_from
from tenants.sarules import SA_RULES_VERSION_KEY, SA_SHARE_DIR, forget_symbols, load_ruleset, locate
from tenants.sarules.parser import evaluate_condition, parse_files
from tenants.sarules.update import bump_rules_version, run_sa_update
from tenants.symbols import lookup

#: Real rule files of the stock rule set, copied whole into the test's rule directory.
REAL_FILES = ("20_head_tests.cf", "20_body_tests.cf", "20_phrases.cf", "20_uri_tests.cf", "20_html_tests.cf",
              "20_meta_tests.cf", "20_ratware.cf", "20_dnsbl_tests.cf", "25_dnswl.cf", "25_replace.cf", "50_scores.cf")
#: Rules taken line for line out of 72_active.cf (the sa-update rules Debian ships): a full rule, a mimeheader
#: rule, and a header rule whose Perl regex has a mid-pattern (?i) Python refuses as written.
FROM_ACTIVE = ("NULL_IN_BODY", "OBFU_TEXT_ATTACH", "__HELO_NOT_RDNS", "HELO_NOT_RDNS_TEST")


def build_rules_dir(dest: Path) -> Path:
    assert SA_SHARE_DIR.is_dir(), f"{SA_SHARE_DIR} missing: install Debian's spamassassin package (make system-deps)"
    dest.mkdir(parents=True, exist_ok=True)
    for name in REAL_FILES:
        shutil.copy(SA_SHARE_DIR / name, dest / name)
    lines = []
    for raw in (SA_SHARE_DIR / "72_active.cf").read_bytes().decode("latin-1").splitlines():
        words = raw.split()
        if len(words) >= 2 and words[1] in FROM_ACTIVE and words[0] in ("full", "mimeheader", "header", "describe",
                                                                         "score", "tflags"):
            lines.append(raw.strip())
    # a scored rule reading the sub-rule, so that it runs (sub-rules nobody reads are not evaluated)
    lines.append("meta HELO_NOT_RDNS_TEST __HELO_NOT_RDNS")
    lines.append("score HELO_NOT_RDNS_TEST 0.5")
    (dest / "72_active_subset.cf").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return dest


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rules_dir(tmp_path_factory.mktemp("sa") / "rules")


@pytest.fixture(scope="module")
def hs_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hs")


@pytest.fixture(scope="module")
def engine(rules_dir: Path, hs_cache: Path) -> Engine:
    loaded = load_engine(str(rules_dir), cache_dir=hs_cache)
    assert loaded.engine is not None, loaded.report.unavailable
    return loaded.engine


@pytest.fixture(scope="module")
def re_engine(rules_dir: Path) -> Engine:
    loaded = load_engine(str(rules_dir), use_hyperscan=False)
    assert loaded.engine is not None
    return loaded.engine


def mail(headers: str, body: str = "Hello,\nsee you soon.\n", *, ctype: str = "text/plain") -> bytes:
    base = ("From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: Lunch\n"
            "Date: Mon, 02 Dec 2024 10:00:00 +0000\nMessage-ID: <a1b2c3d4e5@example.org>\n")
    return (base + headers + f"MIME-Version: 1.0\nContent-Type: {ctype}; charset=us-ascii\n\n" + body).encode()


def hits(engine: Engine, raw: bytes, **envelope: Any) -> dict[str, float]:
    return {h.name: h.score for h in engine.check(SaMessage(raw, Envelope(**envelope)))}


# --- parsing and translation --------------------------------------------------------------------------------------

def test_conditionals_follow_a_stock_spamassassin_4() -> None:
    assert evaluate_condition("(version >= 3.004002)")
    assert not evaluate_condition("!(version >= 3.004000)")
    assert evaluate_condition("can(Mail::SpamAssassin::Conf::feature_bug6558_free)")
    assert not evaluate_condition("!plugin(Mail::SpamAssassin::Plugin::ReplaceTags)")
    with pytest.raises(ValueError):
        evaluate_condition("system('rm -rf /')")


def test_parser_reads_rules_scores_and_descriptions_of_the_real_files(rules_dir: Path) -> None:
    rs = parse_files(sorted(rules_dir.glob("*.cf")))
    assert rs.rules["GUARANTEED_100_PERCENT"].kind == "body"
    assert rs.describe["GUARANTEED_100_PERCENT"] == "One hundred percent guaranteed"
    assert rs.scores["GUARANTEED_100_PERCENT"] == (2.699, 2.699, 2.480, 2.699)
    assert rs.score("FROM_NO_USER", 1) == 2.599 and rs.score("FROM_NO_USER", 0) == 0.001
    no_user = rs.rules["FROM_NO_USER"]
    assert (no_user.header, no_user.if_unset) == ("From", "unset@unset.unset")
    assert rs.rules["RCVD_IN_SBL"].eval_fn == "check_rbl_sub"
    assert "nice" in rs.tflags["RCVD_IN_DNSWL_HI"]
    assert rs.score("__FROM_ENDS_IN_NUMS", 1) == 0.0  # sub-rules never score
    assert rs.replace_tags["A"].startswith("(?:[aA")
    assert not rs.problems, rs.problems


@pytest.mark.parametrize(("perl", "python"), [
    (r"foo\z", r"foo\Z"),
    (r"foo\Z", r"foo(?=\n?\Z)"),
    (r"(?<word>ab)\k<word>", r"(?P<word>ab)(?P=word)"),
    (r"a(?i)b|c", r"a(?i:b)|(?i:c)"),
    (r"x\h+y", r"x[ \t]+y"),
    (r"\Qa.b\E+", r"a\.b+"),
    (r"[[:xdigit:]]{2}", r"[0-9A-Fa-f]{2}"),
    (r"a{,3}", r"a\{,3\}"),
    (r"\y", r"y"),
])
def test_perl_regex_is_translated(perl: str, python: str) -> None:
    assert translate(perl) == python


@pytest.mark.parametrize("perl", [r"\p{Lu}", r"foo\Kbar", r"(?|a(b)|c(d))"])
def test_what_python_cannot_run_is_refused_with_a_reason(perl: str) -> None:
    with pytest.raises(Untranslatable):
        compile_perl(perl, "")


def test_regex_delimiters_and_modifiers() -> None:
    assert split_regex(r"m{^https?://\d+}i").flags == "i"
    assert split_regex(r"/a\/b/ism").source == r"a\/b"
    pattern = compile_perl(r"^from\s+(\S+)$", "im")
    assert pattern.search(b"x\nFROM  host\ny")


def test_meta_expressions_keep_perl_precedence() -> None:
    meta = compile_meta("M", "(A + B + C > 1) && !D || (E * 2 >= 4)")
    assert meta.deps == ("A", "B", "C", "D", "E")
    assert meta.evaluate({"A": 1, "B": 1})
    assert not meta.evaluate({"A": 1, "B": 1, "D": 1})
    assert meta.evaluate({"E": 2})
    assert not compile_meta("N", "!A + B").evaluate({"A": 1})  # (!A) + B, as Perl reads it: 0 + 0
    with pytest.raises(MetaError):
        compile_meta("X", "A && __import__('os')")


def test_received_headers_become_relays() -> None:
    relay = parse_received("from mail.example.org (mail.example.org [192.0.2.7]) by mx.example.net "
                           "(Postfix) with ESMTP id 4AB12; Mon, 2 Dec 2024 10:00:00 +0000")
    assert relay is not None
    assert (relay.ip, relay.rdns, relay.helo, relay.by, relay.id) == ("192.0.2.7", "mail.example.org",
                                                                       "mail.example.org", "mx.example.net", "4AB12")
    assert parse_received("by mx.example.net with LMTP") is None


# --- the load report -------------------------------------------------------------------------------------------

def test_load_report_lists_what_was_loaded_and_skipped_by_kind_and_why(engine: Engine) -> None:
    report = engine.report
    for kind in ("header", "body", "rawbody", "uri", "full", "meta", "mimeheader", "header eval", "body eval"):
        assert report.loaded[kind] > 0, kind
    network = report.skipped[("header eval", "skipped: network/bayes (Mailward's own checks)")]
    assert "RCVD_IN_SBL" in network
    assert "check_rbl_sub" in report.skipped_evals["skipped: network/bayes (Mailward's own checks)"]
    text = report.format()
    assert "eval functions skipped" in text and "check_rbl_sub" in text
    assert "no prefilter and a 1500+ byte pattern" in text  # the fuzzy-word rules of 25_replace.cf
    assert report.summary().startswith("SpamAssassin rules from")


def test_a_missing_or_switched_off_rules_dir_gives_a_clear_report(tmp_path: Path) -> None:
    missing = load_engine(str(tmp_path / "nowhere"))
    assert missing.engine is None and "no such directory" in missing.report.unavailable
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no *.cf rule files" in load_engine(str(empty)).report.unavailable
    assert "switched off" in load_engine("none").report.summary()


def test_config_validates_the_rules_dir(tmp_path: Path) -> None:
    assert Config.from_env({"MAILWARD_SA_RULES_DIR": "none"}).sa_rules_dir == "none"
    assert Config.from_env({}).sa_rules_dir is None
    afile = tmp_path / "local.cf"
    afile.write_text("score X 1\n")
    with pytest.raises(ConfigError, match="MAILWARD_SA_RULES_DIR"):
        Config.from_env({"MAILWARD_SA_RULES_DIR": str(afile)})


# --- each rule kind on crafted mail -----------------------------------------------------------------------------

def test_a_known_body_rule_fires_with_its_spamassassin_score(engine: Engine) -> None:
    found = hits(engine, mail("", "Our pills are 100% guaranteed to work!\n"))
    assert found["GUARANTEED_100_PERCENT"] == 2.699  # score set 1 of 50_scores.cf
    assert "GUARANTEED_100_PERCENT" not in hits(engine, mail(""))


def test_header_rules_with_modifiers_and_if_unset(engine: Engine) -> None:
    assert "FROM_OFFERS" in hits(engine, mail("").replace(b"alice@example.org>", b"deals@best-offers.example>"))
    no_from = b"\n".join(line for line in mail("").split(b"\n") if not line.startswith(b"From:"))
    assert "FROM_NO_USER" not in hits(engine, no_from)  # if-unset: unset@unset.unset has a user
    assert "FROM_NO_USER" in hits(engine, mail("").replace(b"Alice <alice@example.org>", b"<@example.org>"))


def test_uri_rawbody_full_and_mimeheader_rules(engine: Engine) -> None:
    assert "NORMAL_HTTP_TO_IP" in hits(engine, mail("", "Click http://203.0.113.9/login now\n"))
    assert "NORMAL_HTTP_TO_IP" not in hits(engine, mail("", "Click http://192.168.1.1/login now\n"))
    html = '<html><body><a href="x" onMouseOver="window.status=\'paypal\'">here</a></body></html>\n'
    assert "HIDE_WIN_STATUS" in hits(engine, mail("", html, ctype="text/html"))
    assert "NULL_IN_BODY" in hits(engine, mail("", "nul\x00byte\n"))
    multipart = ("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b1\n\n--b1\nContent-Type: text/plain\n\n"
                 "hi\n--b1\nContent-Type: application/octet-stream; name=\"notes.txt\"\n"
                 "Content-Transfer-Encoding: base64\n\naGVsbG8=\n--b1--\n")
    raw = mail("").split(b"MIME-Version")[0] + multipart.encode()
    assert "OBFU_TEXT_ATTACH" in hits(engine, raw)


def test_a_rule_whose_perl_regex_needs_translating_fires(engine: Engine) -> None:
    """__HELO_NOT_RDNS reads ``(?!(?i)\\1)``: a mid-pattern flag Python refuses until it is scoped."""
    found = hits(engine, mail(""), client_ip="192.0.2.7", rdns="mail.example.org", helo="other.example.com")
    assert "HELO_NOT_RDNS_TEST" in found
    same = hits(engine, mail(""), client_ip="192.0.2.7", rdns="mail.example.org", helo="MAIL.example.org")
    assert "HELO_NOT_RDNS_TEST" not in same


def test_meta_rules_with_and_or_and_arithmetic(engine: Engine) -> None:
    empty = hits(engine, mail("", ""))
    assert "EMPTY_MESSAGE" in empty  # !__MIME_ATTACHMENT && !__NONEMPTY_BODY
    assert "EMPTY_MESSAGE" not in hits(engine, mail(""))
    assert "PERCENT_RANDOM" in hits(engine, mail("", "Dear %RND_NAME, buy now\n"))  # __PC_RND_HEADER || ..._RAWBODY
    meta = engine.ruleset.rules["LONGWORDS"]
    assert "+" in meta.expr and ">" in meta.expr
    seven = " ".join(["abcdefghijkl"] * 7)  # only __LONGWORDS_A: 1, not > 1
    assert "LONGWORDS" not in hits(engine, mail("", seven + "\n"))
    ten = " ".join(["abcdefghijkl"] * 10)  # all three: 3 > 1
    assert hits(engine, mail("", ten + "\n"))["LONGWORDS"] == 1.844


def test_evals_html_and_headers(engine: Engine) -> None:
    html = "<html><body><p>Hello <b>there</b></p></body></html>\n"
    found = hits(engine, mail("", html, ctype="text/html"))
    assert "HTML_MESSAGE" in found
    assert "MISSING_HEADERS" in hits(engine, mail("").replace(b"To: bob@example.net\n", b""))


def test_hyperscan_and_re_paths_agree(engine: Engine, re_engine: Engine, rules_dir: Path, hs_cache: Path) -> None:
    """The same hits with the Hyperscan prefilter (compiled, and loaded back from its cache) and with plain re."""
    assert re_engine.report.matcher == "re"
    cached = load_engine(str(rules_dir), cache_dir=hs_cache).engine
    assert cached is not None
    if hyperscan_available():
        assert engine.report.matcher == "hyperscan" and list(hs_cache.glob("*.hsdb"))
    samples = [mail("", "Our pills are 100% guaranteed!\n"), mail("", "Click http://203.0.113.9/x\n"),
               mail("", "<html><body>hi</body></html>\n", ctype="text/html"), mail("", "")]
    for raw in samples:
        assert hits(engine, raw) == hits(re_engine, raw) == hits(cached, raw)
    assert "GUARANTEED_100_PERCENT" in hits(cached, samples[0])


# --- scores are policy data ---------------------------------------------------------------------------------------

@pytest.fixture
def sa_cfg(cfg: Config, rules_dir: Path) -> Iterator[Config]:
    """The test installation with the test rule directory configured."""
    from dataclasses import replace

    from tenants.platform.config import set_config

    c = replace(cfg, sa_rules_dir=str(rules_dir))
    set_config(c)
    forget_symbols()
    yield c
    set_config(cfg)
    forget_symbols()


def test_rule_symbols_take_spamassassin_scores_and_policy_overrides(sa_cfg: Config) -> None:
    from smtp.checks.base import Finding

    symbol = lookup("GUARANTEED_100_PERCENT")
    assert (symbol.score, symbol.description) == (2.699, "One hundred percent guaranteed")
    assert lookup("__FROM_ENDS_IN_NUMS").score == 0.0
    found = [Finding("GUARANTEED_100_PERCENT", "One hundred percent guaranteed")]
    assert score_findings(found, 1, policy_from({}))[0].score == 2.699
    baseline = {"scores": {"GUARANTEED_100_PERCENT": 4.0}}
    assert score_findings(found, 1, policy_from(baseline))[0].score == 4.0
    disabled = policy_from(baseline, {"scores": {"GUARANTEED_100_PERCENT": 0}})  # a tenant switches it off
    assert score_findings(found, 1, disabled)[0].score == 0.0


def test_msp_lock_keeps_tenants_from_changing_rule_scores(sa_cfg: Config, factory: Any, session: Any) -> None:
    """A tenant's override of a SpamAssassin rule's score counts only while the MSP leaves scores unlocked."""
    from tenants.policy import load_policy, save_settings
    from tenants.scope import tenant_scope

    acme = factory.tenant("Acme", ("acme.test",))
    save_settings(session, None, {"scores": {"GUARANTEED_100_PERCENT": 4.0}})
    with tenant_scope(acme.id):
        save_settings(session, acme.id, {"scores": {"GUARANTEED_100_PERCENT": 0.0}})
        session.commit()
        assert load_policy(session, acme.id).score_of("GUARANTEED_100_PERCENT", 2.699) == 0.0
    save_settings(session, None, {"locked": ["scores"]})
    session.commit()
    with tenant_scope(acme.id):
        assert load_policy(session, acme.id).score_of("GUARANTEED_100_PERCENT", 2.699) == 4.0


def test_the_policy_page_adds_an_override_for_a_rule_it_does_not_list(sa_cfg: Config, world: Any) -> None:
    """SpamAssassin's ~2,000 rules are not all fields of the page (a form that size is refused); the "override another
    symbol" row adds one, which is listed from then on."""
    from app import create_app
    from tenants.policy import stored_settings
    from tests.support.web import post_form, read, sign_in, text

    web_app = create_app(sa_cfg)
    admin = sign_in(web_app, "admin@msp.test")
    assert 'data-symbol="GUARANTEED_100_PERCENT"' not in text(admin.get("/console/policy"))
    resp = post_form(admin, "/console/policy", "/console/policy",
                     {"new_symbol": "guaranteed_100_percent", "new_score": "0"})
    assert resp.status_code == 302, text(resp)
    assert read(sa_cfg, lambda s: stored_settings(s, None))["scores"] == {"GUARANTEED_100_PERCENT": 0.0}
    assert 'data-symbol="GUARANTEED_100_PERCENT"' in text(admin.get("/console/policy"))
    refused = post_form(admin, "/console/policy", "/console/policy", {"new_symbol": "NO_SUCH_RULE", "new_score": "1"})
    assert refused.status_code == 422 and "there is no such symbol" in text(refused)


# --- the check in the pipeline --------------------------------------------------------------------------------------

def context(cfg: Config, raw: bytes) -> CheckContext:
    ctx = CheckContext(cfg=cfg, client_ip="", helo="mail.example.org", mail_from="alice@example.org",
                       rcpts=["bob@example.net"], mail=parse_mail(raw))
    return ctx


def test_check_records_one_symbol_per_rule_with_its_description(sa_cfg: Config) -> None:
    check = SaRulesCheck(sa_cfg)
    assert check.enabled
    ctx = context(sa_cfg, mail("", "Our pills are 100% guaranteed to work!\n"))
    asyncio.run(run_stage([check], ctx, Stage.DATA))
    reasons = {f.symbol: f.reason for f in ctx.findings}
    assert reasons["GUARANTEED_100_PERCENT"] == "One hundred percent guaranteed"
    assert not any(s.endswith("TEMPFAIL") for s in reasons)
    asyncio.run(check.close())


def test_check_without_rules_is_off_and_a_broken_load_is_a_tempfail(cfg: Config, tmp_path: Path) -> None:
    from dataclasses import replace

    off = SaRulesCheck(replace(cfg, sa_rules_dir=str(tmp_path / "missing")))
    assert not off.enabled
    ctx = context(cfg, mail(""))
    asyncio.run(run_stage([off], ctx, Stage.DATA))
    assert ctx.findings == []
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "10_rules.cf").write_text("body X /x/\n")
    (broken / "10_rules.cf").chmod(0)
    check = SaRulesCheck(replace(cfg, sa_rules_dir=str(broken)))
    ctx = context(cfg, mail(""))
    asyncio.run(run_stage([check], ctx, Stage.DATA))
    if (broken / "10_rules.cf").stat().st_mode & stat.S_IRUSR or _is_root():
        return  # root reads a file of mode 0 anyway: nothing broken to see
    assert [f.symbol for f in ctx.findings] == []  # an unreadable file: reported, no rules, no crash


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def test_a_failing_engine_records_sarules_tempfail(sa_cfg: Config) -> None:
    """A rule engine that raises on a mail must not crash the session: SARULES_TEMPFAIL (score 0) and a log line."""
    check = SaRulesCheck(sa_cfg)
    ctx = context(sa_cfg, mail(""))
    asyncio.run(run_stage([check], ctx, Stage.DATA))
    assert check._current is not None and check._current.engine is not None
    check._current.engine.compiled.evals.insert(0, None)  # type: ignore[arg-type]  # a defect inside the engine
    ctx = context(sa_cfg, mail(""))
    asyncio.run(run_stage([check], ctx, Stage.DATA))
    assert [f.symbol for f in ctx.findings] == ["SARULES_TEMPFAIL"]
    assert lookup("SARULES_TEMPFAIL").score == 0.0
    check._current.engine.compiled.evals.pop(0)


def test_rules_version_bump_makes_the_check_reload(sa_cfg: Config, rules_dir: Path) -> None:
    """sa-update bumps the version in Redis; a running check sees it and builds its engine again."""
    from smtp.checks import sarules as module

    check = SaRulesCheck(sa_cfg)
    client = redis.asyncio.Redis.from_url(sa_cfg.effective_redis_url)
    ctx = context(sa_cfg, mail(""))
    ctx.redis = client

    async def scenario() -> Any:
        module_poll = module.VERSION_POLL
        module.VERSION_POLL = 0.0
        try:
            await run_stage([check], ctx, Stage.DATA)  # first poll: remembers the version
            first = check._loading
            assert bump_rules_version(sa_cfg) == 1
            again = context(sa_cfg, mail(""))
            again.redis = client
            await run_stage([check], again, Stage.DATA)
            return first, check._loading
        finally:
            module.VERSION_POLL = module_poll
            await client.aclose()

    first, second = asyncio.run(scenario())
    assert second is not first
    assert second.result().engine is not None
    asyncio.run(check.close())


def test_sa_update_failure_is_reported_not_raised(tmp_path: Path, cfg: Config) -> None:
    script = tmp_path / "sa-update-offline"
    script.write_text("#!/bin/sh\necho \"channel: could not reach the mirrors ($1 $2)\" >&2\nexit 4\n")
    script.chmod(0o755)
    result = run_sa_update(tmp_path / "own", program=str(script))
    assert not result.ok and not result.updated and "exit 4" in result.message and "mirrors" in result.message
    assert f"--updatedir {tmp_path / 'own'}" in result.message  # never the system's /var/lib/spamassassin
    assert not run_sa_update(tmp_path / "own", program=str(tmp_path / "absent")).ok
    redis.Redis.from_url(cfg.effective_redis_url).delete(SA_RULES_VERSION_KEY)
    assert bump_rules_version(cfg) == 1


def test_stock_rules_load_from_the_package_dir() -> None:
    location = locate(None, update_root=Path("/nonexistent"), own=False)
    assert location.rules_dir == SA_SHARE_DIR and location.source == "package"
    assert len(load_ruleset(location).rules) > 2000


def test_own_sa_update_rules_come_first(cfg: Config, rules_dir: Path) -> None:
    """Rules Mailward's sa-update fetched into its data directory win over the system's and the package's."""
    from tenants.sarules import UPDATE_CHANNEL, own_update_dir

    channel = own_update_dir(cfg.data_dir) / UPDATE_CHANNEL
    channel.mkdir(parents=True)
    assert locate(None, update_root=Path("/nonexistent")).source == "package"  # empty: an interrupted run
    (channel / "72_active.cf").write_text((rules_dir / next(p.name for p in rules_dir.glob("*.cf"))).read_text())
    location = locate(None, update_root=Path("/nonexistent"))
    assert location.rules_dir == channel and location.source == "sa-update"


def test_console_says_when_no_spamassassin_rules_were_found(cfg: Config, world: Any, tmp_path: Path,
                                                            rules_dir: Path) -> None:
    """Like a missing clamd: an installation without rule files says so on every signed-in page."""
    from dataclasses import replace

    from app import create_app
    from tests.support.web import sign_in, text

    missing = create_app(replace(cfg, sa_rules_dir=str(tmp_path / "gone")))
    body = text(sign_in(missing, "admin@msp.test").get("/console/"))
    assert "SpamAssassin rules are off" in body and "no such directory" in body
    present = create_app(replace(cfg, sa_rules_dir=str(rules_dir)))
    assert "SpamAssassin rules are off" not in text(sign_in(present, "admin@msp.test").get("/console/"))


def test_cli_sets_rule_scores_within_the_msp_lock(sa_cfg: Config, factory: Any, session: Any) -> None:
    """``mailward sarules score``: the MSP overrides a rule at the baseline; a tenant's override of a locked score is
    refused."""
    from click.testing import CliRunner

    from mailward.cli import cli
    from tenants.policy import load_policy, save_settings
    from tenants.scope import tenant_scope

    acme = factory.tenant("Acme", ("acme.test",))
    runner = CliRunner()
    done = runner.invoke(cli, ["sarules", "score", "GUARANTEED_100_PERCENT", "0"])
    assert done.exit_code == 0, done.output
    with tenant_scope(acme.id):
        assert load_policy(session, acme.id).score_of("GUARANTEED_100_PERCENT", 2.699) == 0.0
    assert runner.invoke(cli, ["sarules", "score", "NO_SUCH_RULE_X", "1"]).exit_code != 0
    save_settings(session, None, {"locked": ["scores"]})
    session.commit()
    refused = runner.invoke(cli, ["sarules", "score", "GUARANTEED_100_PERCENT", "3", "--tenant", "Acme"])
    assert refused.exit_code != 0 and "locked" in refused.output
    report = runner.invoke(cli, ["sarules", "report"])
    assert report.exit_code == 0 and "loaded by kind" in report.output


def test_threads_scan_at_once_without_sharing_scratch_space(engine: Engine) -> None:
    """The ingress scans mails in several threads at once: each thread needs its own Hyperscan scratch (a shared one
    raises ScratchInUseError and the mail loses SpamAssassin's rules)."""
    from concurrent.futures import ThreadPoolExecutor

    raw = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: 100% guaranteed\r\n\r\n"
           + b"We guarantee it one hundred percent guaranteed. " * 4000 + b"\r\n")
    message = SaMessage(raw, Envelope(client_ip="192.0.2.1", helo="x.example", rdns="", mail_from="a@example.org",
                                      rcpts=("b@example.net",), hostname="mx.test", authenticated=False),
                        parse_mail(raw).message)
    alone = sorted(h.name for h in engine.check(message))
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: sorted(h.name for h in engine.check(message)), range(32)))
    assert results == [alone] * 32 and "GUARANTEED_100_PERCENT" in alone


def test_the_ingress_listens_only_once_the_rules_are_compiled(sa_cfg: Config) -> None:
    """``serve()`` awaits every check's ready(): the first mail is judged with SpamAssassin's rules, not without them
    because a cold compile was still running."""
    from smtp.server import _checks_ready

    check = SaRulesCheck(sa_cfg)
    asyncio.run(_checks_ready([check]))
    assert check._current is not None and check._current.engine is not None
    asyncio.run(check.close())
