"""Policy presets (lenient / normal / strict, defined by the MSP, picked per tenant), the short policy page with a
Save per section, durations in human units, and the "Advanced" symbol-score page with its search and groups."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from tenants.durations import format_duration, parse_duration
from tenants.exceptions import ValidationError
from tenants.models import AuditEntry
from tenants.policy import load_policy, save_settings, stored_settings
from tenants.presets import SHIPPED_PRESETS
from tests.integration.test_verdicts import messages, send, set_policy
from tests.support.servers import wait_for
from tests.support.web import inputs, post_form, read, sign_in, text

# --- durations ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "unit", "value"), [
    ("90s", "s", 90), ("5m", "s", 300), ("2h", "s", 7200), ("1h30m", "s", 5400), ("1h 30m", "s", 5400),
    ("7d", "s", 604800), ("300", "s", 300), (" 5M ", "s", 300), ("30d", "d", 30), ("2w", "d", 14), ("21", "d", 21),
    ("48h", "d", 2), ("0s", "s", 0)])
def test_durations_parse(raw, unit, value):
    assert parse_duration(raw, "some field", unit=unit) == value


@pytest.mark.parametrize(("value", "unit", "shown"), [
    (300, "s", "5m"), (90, "s", "90s"), (5400, "s", "90m"), (14400, "s", "4h"), (36 * 86400, "s", "36d"),
    (0, "s", "0s"), (14, "d", "14d"), (0, "d", "0d"), (86401, "s", "86401s")])
def test_durations_format_in_the_largest_exact_unit_and_read_back(value, unit, shown):
    assert format_duration(value, unit=unit) == shown
    assert parse_duration(shown, "x", unit=unit) == value


@pytest.mark.parametrize(("raw", "unit", "message"), [
    ("5x", "s", "greylist delay: '5x' is not a duration (use e.g. 90s, 5m, 2h, 7d)"),
    ("-5", "s", "greylist delay: '-5' is not a duration (use e.g. 90s, 5m, 2h, 7d)"),
    ("5 minutes", "s", "greylist delay: '5 minutes' is not a duration"),
    ("", "s", "greylist delay: '' is not a duration"),
    ("36h", "d", "greylist delay: '36h' is not a whole number of days"),
    ("9999d", "s", "greylist delay: '9999d' is longer than 3650 days")])
def test_a_bad_duration_names_the_field(raw, unit, message):
    with pytest.raises(ValidationError) as err:
        parse_duration(raw, "greylist delay", unit=unit)
    assert str(err.value).startswith(message)


# --- presets in the policy model ------------------------------------------------------------------------------------

def test_a_preset_changes_the_policy_and_a_tenant_value_still_wins(world, cfg):
    acme, beta = world["acme"].id, world["beta"].id
    read(cfg, lambda s: save_settings(s, None, {"tag_threshold": 4.5, "digest_hour": 6}))
    read(cfg, lambda s: save_settings(s, acme, {"preset": "strict"}))
    strict = read(cfg, lambda s: load_policy(s, acme))
    assert (strict.tag_threshold, strict.quarantine_threshold, strict.reject_threshold) == (4.0, 6.0, 12.0)
    assert strict.greylisting is True and strict.digest_hour == 6  # the preset over the baseline, the rest baseline
    normal = read(cfg, lambda s: load_policy(s, beta))
    assert (normal.tag_threshold, normal.quarantine_threshold, normal.greylisting) == (4.5, 8.0, False)
    read(cfg, lambda s: save_settings(s, acme, {"tag_threshold": 5.0, "greylisting": False}))
    own = read(cfg, lambda s: load_policy(s, acme))
    assert (own.tag_threshold, own.quarantine_threshold, own.greylisting) == (5.0, 6.0, False)
    with pytest.raises(ValidationError, match="preset: 'extreme' is not one of lenient, normal, strict"):
        read(cfg, lambda s: save_settings(s, acme, {"preset": "extreme"}))
    with pytest.raises(ValidationError, match="presets are defined by the provider"):
        read(cfg, lambda s: save_settings(s, acme, {"presets": {"strict": {}}}))


def test_a_key_the_baseline_locks_is_not_changed_by_a_preset(world, cfg):
    acme = world["acme"].id
    read(cfg, lambda s: save_settings(s, None, {"locked": ["greylisting"]}))
    read(cfg, lambda s: save_settings(s, acme, {"preset": "strict"}))
    policy = read(cfg, lambda s: load_policy(s, acme))
    assert policy.greylisting is False and policy.tag_threshold == 4.0


# --- the policy page: preset choice, sections, durations ------------------------------------------------------------

def _row(page: str, key: str) -> str:
    m = re.search(rf'<tr data-key="{key}">(.*?)</tr>', page, re.S)
    assert m, f"no row {key}"
    return m.group(1)


def _audits(cfg) -> list[str]:
    return read(cfg, lambda s: [a.detail for a in s.scalars(select(AuditEntry)) if a.action == "policy.update"])


def test_a_tenant_picks_a_preset_on_the_short_page_and_overrides_one_value(web_app, world, cfg):
    acme = world["acme"].id
    client = sign_in(web_app, "admin@acme.test")
    page = text(client.get("/portal/policy"))
    assert len(page) < 40_000, "the policy page is short: no symbol table"
    assert page.count("Save</button>") == 7  # the preset and six sections, each saved on its own
    assert 'name="v_preset" value="normal" checked' in page
    assert "Sets: Tag at score 4; Quarantine at score 6; Reject at score 12" in page  # what strict sets
    resp = post_form(client, "/portal/policy", "/portal/policy",
                     {"section": "preset", "v_preset": "strict", "was_v_preset": "normal"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/portal/policy#preset")
    assert read(cfg, lambda s: stored_settings(s, acme)) == {"preset": "strict"}
    assert read(cfg, lambda s: load_policy(s, acme)).quarantine_threshold == 6.0
    page = text(client.get("/portal/policy"))
    assert 'name="v_preset" value="strict" checked' in page
    assert "preset (strict)" in _row(page, "tag_threshold") and ">4<" in _row(page, "tag_threshold")
    post_form(client, "/portal/policy", "/portal/policy", {"section": "scoring", "v_tag_threshold": "5"})
    policy = read(cfg, lambda s: load_policy(s, acme))
    assert (policy.tag_threshold, policy.quarantine_threshold) == (5.0, 6.0)
    assert "tenant" in _row(text(client.get("/portal/policy")), "tag_threshold")
    assert _audits(cfg) == ["preset=strict", "tag_threshold=5"]


def test_durations_are_shown_and_entered_in_human_units(web_app, world, cfg):
    acme = world["acme"].id
    client = sign_in(web_app, "admin@acme.test")
    page = text(client.get("/portal/policy"))
    assert ">5m<" in _row(page, "greylist_delay") and ">36d<" in _row(page, "greylist_pass_ttl")
    assert ">14d<" in _row(page, "retention_spam_days")
    resp = post_form(client, "/portal/policy", "/portal/policy",
                     {"section": "senders", "v_greylist_delay": "2h", "v_greylist_retry_window": "1h30m"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/portal/policy?open=senders#senders")
    assert '<details class="card policy-section" id="senders" open>' in text(client.get("/portal/policy?open=senders"))
    assert '<details class="card policy-section" id="senders">' in text(client.get("/portal/policy"))  # folded
    post_form(client, "/portal/policy", "/portal/policy", {"section": "retention", "v_retention_spam_days": "30d"})
    assert read(cfg, lambda s: stored_settings(s, acme)) == {"greylist_delay": 7200, "greylist_retry_window": 5400,
                                                              "retention_spam_days": 30}
    page = text(client.get("/portal/policy"))
    assert 'id="v_greylist_delay" value="2h"' in page and 'id="v_greylist_retry_window" value="90m"' in page
    assert 'id="v_retention_spam_days" value="30d"' in page
    for data, message in (({"v_greylist_delay": "5x"},
                           "Greylist delay: &#39;5x&#39; is not a duration (use e.g. 90s, 5m, 2h, 7d)"),
                          ({"v_retention_virus_days": "36h"},
                           "Keep quarantined viruses: &#39;36h&#39; is not a whole number of days")):
        resp = post_form(client, "/portal/policy", "/portal/policy", data)
        assert resp.status_code == 422 and message in text(resp), text(resp)
        assert 'value="5x"' in text(resp) or 'value="36h"' in text(resp)  # the form keeps what was typed


def test_a_section_save_changes_only_that_sections_locks(web_app, world, cfg):
    client = sign_in(web_app, "admin@msp.test")
    post_form(client, "/console/policy", "/console/policy",
              {"section": "malware", "v_virus_action": "reject", "locked": "virus_action"})
    assert read(cfg, lambda s: stored_settings(s, None)) == {"virus_action": "reject", "locked": ["virus_action"]}
    # The spam-scores section has no virus_action box: saving it leaves that lock alone.
    post_form(client, "/console/policy", "/console/policy",
              {"section": "scoring", "v_tag_threshold": "4", "locked": "tag_threshold"})
    assert read(cfg, lambda s: stored_settings(s, None))["locked"] == ["tag_threshold", "virus_action"]
    post_form(client, "/console/policy", "/console/policy", {"section": "malware", "v_virus_action": "reject"})
    assert read(cfg, lambda s: stored_settings(s, None))["locked"] == ["tag_threshold"]


def test_a_field_left_as_shown_is_not_written_back(web_app, world, cfg):
    """A section opened before someone else changed a value: saving another field of it keeps their change."""
    acme = world["acme"].id
    client = sign_in(web_app, "admin@acme.test")
    text(client.get("/portal/policy"))
    read(cfg, lambda s: save_settings(s, acme, {"reject_threshold": 20.0}))  # meanwhile, another admin
    post_form(client, "/portal/policy", "/portal/policy",
              {"section": "scoring", "v_tag_threshold": "4", "was_v_tag_threshold": "",
               "v_reject_threshold": "", "was_v_reject_threshold": ""})
    assert read(cfg, lambda s: stored_settings(s, acme)) == {"tag_threshold": 4.0, "reject_threshold": 20.0}


# --- the MSP defines the presets ------------------------------------------------------------------------------------

def test_the_msp_redefines_strict_and_a_tenant_on_strict_gets_it(web_app, world, cfg):
    acme, beta = world["acme"].id, world["beta"].id
    read(cfg, lambda s: save_settings(s, acme, {"preset": "strict"}))
    admin = sign_in(web_app, "admin@msp.test")
    page = text(admin.get("/console/policy"))
    assert 'name="p_strict.tag_threshold" value="4"' in page
    resp = post_form(admin, "/console/policy", "/console/policy/presets",
                     {"p_strict.tag_threshold": "3", "was_p_strict.tag_threshold": "4",
                      "p_strict.greylisting": "", "was_p_strict.greylisting": "true",
                      "p_strict.greylist_delay": "10m", "was_p_strict.greylist_delay": "5m",
                      "p_lenient.tag_threshold": "6", "was_p_lenient.tag_threshold": "6"})
    assert resp.status_code == 302, text(resp)
    expected = {k: v for k, v in SHIPPED_PRESETS["strict"].items() if k != "greylisting"}
    expected |= {"tag_threshold": 3.0, "greylist_delay": 600}
    assert read(cfg, lambda s: stored_settings(s, None)) == {"presets": {"strict": expected}}
    policy = read(cfg, lambda s: load_policy(s, acme))
    assert (policy.tag_threshold, policy.greylisting, policy.greylist_delay) == (3.0, False, 600)
    assert read(cfg, lambda s: load_policy(s, beta)).tag_threshold == 5.0  # Beta is on normal
    tenant_page = text(sign_in(web_app, "admin@acme.test").get("/portal/policy"))
    assert "Sets: Tag at score 3;" in tenant_page
    assert any("presets.strict.tag_threshold=3" in d for d in _audits(cfg))

    # The MSP's "normal" for everyone who picked none, and the shipped strict back.
    post_form(admin, "/console/policy", "/console/policy/presets", {"p_normal.quarantine_threshold": "7"})
    assert read(cfg, lambda s: load_policy(s, beta)).quarantine_threshold == 7.0
    assert post_form(admin, "/console/policy", "/console/policy/presets", {"restore": "strict"}).status_code == 302
    assert read(cfg, lambda s: stored_settings(s, None)) == {"presets": {"normal": {"quarantine_threshold": 7.0}}}
    assert read(cfg, lambda s: load_policy(s, acme)).tag_threshold == 4.0


def test_a_preset_or_baseline_change_that_breaks_a_preset_is_refused(web_app, world, cfg):
    admin = sign_in(web_app, "admin@msp.test")
    resp = post_form(admin, "/console/policy", "/console/policy/presets", {"p_strict.tag_threshold": "7"})
    assert resp.status_code == 422
    assert "preset strict: thresholds must satisfy tag &lt;= quarantine &lt;= reject" in text(resp)
    assert read(cfg, lambda s: stored_settings(s, None)) == {}
    resp = post_form(admin, "/console/policy", "/console/policy/presets", {"p_strict.tag_threshold": "x"})
    assert resp.status_code == 422 and "Tag at score: &#39;x&#39; is not a number" in text(resp)
    # Strict that sets only its quarantine threshold; then a baseline tag threshold above it is refused.
    post_form(admin, "/console/policy", "/console/policy/presets",
              {"p_strict.tag_threshold": "", "p_strict.reject_threshold": ""})
    resp = post_form(admin, "/console/policy", "/console/policy", {"section": "scoring", "v_tag_threshold": "7"})
    assert resp.status_code == 422 and "preset strict: thresholds must satisfy" in text(resp)
    assert "tag_threshold" not in read(cfg, lambda s: stored_settings(s, None))


def test_the_baseline_picks_the_preset_of_tenants_and_may_lock_it(web_app, world, cfg):
    acme = world["acme"].id
    admin = sign_in(web_app, "admin@msp.test")
    post_form(admin, "/console/policy", "/console/policy",
              {"section": "preset", "v_preset": "lenient", "locked": "preset"})
    assert read(cfg, lambda s: stored_settings(s, None)) == {"preset": "lenient", "locked": ["preset"]}
    assert read(cfg, lambda s: load_policy(s, acme)).quarantine_threshold == 10.0
    tenant = sign_in(web_app, "admin@acme.test")
    page = text(tenant.get("/portal/policy"))
    assert 'name="v_preset" value="lenient" checked disabled' in page and "Your provider chose the preset" in page
    resp = post_form(tenant, "/portal/policy", "/portal/policy", {"section": "preset", "v_preset": "strict"})
    assert resp.status_code == 422 and "locked by your provider: preset" in text(resp)
    assert read(cfg, lambda s: stored_settings(s, acme)) == {}


# --- the advanced page: search, groups, only changed symbols saved --------------------------------------------------

def _symbols(page: str) -> set[str]:
    return set(re.findall(r'<tr data-symbol="([A-Z0-9_]+)">', page))


def test_the_advanced_page_filters_by_search_and_group_without_script(web_app, world, cfg):
    client = sign_in(web_app, "admin@acme.test")
    everything = _symbols(text(client.get("/portal/policy/advanced")))
    assert {"SPF_FAIL", "BAYES_99", "DKIM_VALID"} <= everything
    page = text(client.get("/portal/policy/advanced?q=spf"))
    found = _symbols(page)
    assert "SPF_FAIL" in found and "BAYES_99" not in found and found < everything
    assert f"{len(found)} symbols match" in page and 'value="spf"' in page
    found = _symbols(text(client.get("/portal/policy/advanced", query_string={"q": "Envelope  SENDER"})))
    assert "SPF_FAIL" in found and "BAYES_99" not in found  # words of the meaning, in any case
    page = text(client.get("/portal/policy/advanced?group=bayes"))
    assert "BAYES_99" in _symbols(page) and "SPF_FAIL" not in _symbols(page)
    assert 'id="group-bayes" open' in page and '<option value="bayes" selected>' in page
    page = text(client.get("/portal/policy/advanced?q=no+such+thing+anywhere"))
    assert _symbols(page) == set() and "No symbol matches" in page
    # A save from a filtered page comes back to it.
    resp = post_form(client, "/portal/policy/advanced?q=spf", "/portal/policy/advanced",
                     {"s_SPF_FAIL": "3", "q": "spf", "section": "advanced"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/portal/policy/advanced?q=spf")


def test_saving_one_symbol_does_not_rewrite_the_others(web_app, world, cfg):
    """The whole page is posted (as a browser without script does); only the changed score is saved, and a score
    another admin changed meanwhile is not overwritten with the value the page showed."""
    acme = world["acme"].id
    read(cfg, lambda s: save_settings(s, acme, {"scores": {"DKIM_VALID": -1.0}}))
    client = sign_in(web_app, "admin@acme.test")
    page = text(client.get("/portal/policy/advanced"))
    form = {i["name"]: i.get("value") or "" for i in inputs(page)
            if (i.get("name") or "").startswith(("s_", "was_s_")) and "disabled" not in i}
    assert form["s_DKIM_VALID"] == "-1" and len(form) > 200
    read(cfg, lambda s: save_settings(s, acme, {"scores": {"SPF_FAIL": 3.0, "DKIM_VALID": -2.0}}))  # meanwhile
    form["s_BAYES_99"] = "7"
    resp = post_form(client, "/portal/policy/advanced", "/portal/policy/advanced", {**form, "section": "advanced"})
    assert resp.status_code == 302
    assert read(cfg, lambda s: stored_settings(s, acme)) == {
        "scores": {"BAYES_99": 7.0, "DKIM_VALID": -2.0, "SPF_FAIL": 3.0}}
    assert _audits(cfg) == ["scores.BAYES_99=7"]
    main = text(client.get("/portal/policy"))  # the main page lists the overrides, linking to the advanced page
    assert _symbols(main) == {"BAYES_99", "DKIM_VALID", "SPF_FAIL"} and "/portal/policy/advanced" in main


# --- who reaches what -----------------------------------------------------------------------------------------------

def test_policy_routes_answer_404_across_tenants_and_roles(web_app, world, cfg):
    """A tenant admin reaches its own policy only: the console's pages (the baseline, its presets and scores) are a
    404, and another tenant's overrides never show on its pages."""
    acme = world["acme"].id
    read(cfg, lambda s: save_settings(s, acme, {"preset": "strict", "scores": {"BAYES_99": 9.0}}))
    beta = sign_in(web_app, "admin@beta.test")
    for path in ("/console/policy", "/console/policy/advanced"):
        assert beta.get(path).status_code == 404, path
    for path in ("/console/policy", "/console/policy/advanced", "/console/policy/presets"):
        assert post_form(beta, "/portal/policy", path, {"p_strict.tag_threshold": "1", "s_BAYES_99": "1",
                                                        "v_tag_threshold": "1"}).status_code == 404, path
    page = text(beta.get("/portal/policy/advanced?q=bayes_99"))
    assert 'id="s_BAYES_99" value=""' in page and ">9<" not in page
    assert 'name="v_preset" value="normal" checked' in text(beta.get("/portal/policy"))
    user = sign_in(web_app, "user@acme.test")
    assert user.get("/portal/policy/advanced").status_code == 404
    auditor = sign_in(web_app, "auditor@acme.test")
    assert "Save</button>" not in text(auditor.get("/portal/policy/advanced"))
    assert post_form(auditor, "/portal/policy", "/portal/policy/advanced", {"s_BAYES_99": "1"}).status_code == 404
    helpdesk = sign_in(web_app, "helpdesk@msp.test")
    assert "Save</button>" not in text(helpdesk.get("/console/policy"))
    assert post_form(helpdesk, "/console/policy", "/console/policy/presets",
                     {"p_strict.tag_threshold": "1"}).status_code == 404
    assert read(cfg, lambda s: (stored_settings(s, None), stored_settings(s, acme))) == (
        {}, {"preset": "strict", "scores": {"BAYES_99": 9.0}})


# --- through the real ingress ---------------------------------------------------------------------------------------

def test_mail_through_the_ingress_is_judged_under_the_lenient_preset(env, ingress, acme, sink, session):
    """Score 9 quarantines under the defaults (quarantine at 8); on lenient (quarantine at 10) it is tagged and
    delivered."""
    set_policy(env, "scores.MIME_DEFECT=9", "preset=lenient")
    send(env)
    got = sink.wait_count(1)[0].data
    assert b"X-Mailward-Status: spam, score=9" in got
    assert messages(session)[0].verdict == "tag"


def test_mail_through_the_ingress_is_judged_under_strict_with_the_tenants_override(env, ingress, acme, sink,
                                                                                     session):
    """Score 7 is only tagged under the defaults; strict quarantines at 6. Strict greylists, but the tenant's own
    greylisting=false wins, so the mail is taken at once."""
    set_policy(env, "scores.MIME_DEFECT=7", "preset=strict", "greylisting=false")
    send(env)
    wait_for(lambda: messages(session), 10, what="stored message")
    (msg,) = messages(session)
    assert (msg.verdict, msg.quarantine_kind) == ("quarantine", "spam")
    assert "score 7 >= quarantine 6" in msg.explanation
