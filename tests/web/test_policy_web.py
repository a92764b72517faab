"""The MSP baseline policy in the console and each tenant's policy in the portal: who edits what, locked keys,
validation, audit and the policy version the ingress reloads on."""

from __future__ import annotations

import re
from email import message_from_bytes
from email import policy as email_policy

import pytest
from sqlalchemy import select

from tenants.models import AuditEntry
from tenants.policy import load_policy, save_settings, stored_settings
from tenants.policyedit import MAX_SUBJECT_PREFIX
from tenants.scope import msp_scope
from tests.integration.test_verdicts import BROKEN, send
from tests.support.servers import run_cli
from tests.support.web import policy_version, post_form, read, sign_in, text


def _baseline(cfg) -> dict:
    return read(cfg, lambda s: stored_settings(s, None))


def _own(cfg, tenant_id: int) -> dict:
    return read(cfg, lambda s: stored_settings(s, tenant_id))


def _row(page: str, key: str) -> str:
    m = re.search(rf'<tr data-key="{key}">(.*?)</tr>', page, re.S)
    assert m, f"no row {key}"
    return m.group(1)


def _audits(cfg) -> list[tuple[str, str, int | None]]:
    return read(cfg, lambda s: [(a.action, a.detail, a.tenant_id) for a in s.scalars(select(AuditEntry))
                                if a.action == "policy.update"])


def test_msp_admin_edits_the_baseline_and_locks_keys(web_app, world, cfg):
    client = sign_in(web_app, "admin@msp.test")
    before = policy_version(cfg)
    resp = post_form(client, "/console/policy", "/console/policy",
                     {"v_tag_threshold": "4", "v_virus_action": "reject", "v_greylisting": "true",
                      "v_retention_spam_days": "21", "locked": "virus_action"})
    assert resp.status_code == 302, text(resp)
    assert _baseline(cfg) == {"tag_threshold": 4.0, "virus_action": "reject", "greylisting": True,
                              "retention_spam_days": 21, "locked": ["virus_action"]}
    assert policy_version(cfg) > before
    [(_, detail, tenant_id)] = _audits(cfg)
    assert tenant_id is None and "tag_threshold=4" in detail and "locked=virus_action" in detail
    page = text(client.get("/console/policy"))
    assert "Policy saved" in page
    assert 'value="virus_action" aria-label="lock virus_action" checked' in page

    # Emptying a value returns it to the code default; unlocking is unticking.
    post_form(client, "/console/policy", "/console/policy", {"v_tag_threshold": "", "v_greylisting": ""})
    assert _baseline(cfg) == {"virus_action": "reject", "retention_spam_days": 21, "locked": []}


def test_baseline_validation_errors_are_shown_and_nothing_is_saved(web_app, world, cfg):
    client = sign_in(web_app, "admin@msp.test")
    for data, message in (({"v_tag_threshold": "lots"}, "Tag at score: &#39;lots&#39; is not a number"),
                          ({"v_tag_threshold": "20"}, "thresholds must satisfy tag &lt;= quarantine &lt;= reject"),
                          ({"v_digest_hour": "25"}, "digest_hour: an hour from 0 to 23"),
                          ({"v_timezone": "Mars/Olympus"}, "is not an IANA time zone"),
                          ({"v_virus_action": "deliver"}, "Virus: one of quarantine, reject"),
                          ({"locked": "no_such_key"}, "cannot lock unknown setting")):
        resp = post_form(client, "/console/policy", "/console/policy", data)
        assert resp.status_code == 422, data
        assert message in text(resp), (data, text(resp))
    assert _baseline(cfg) == {}
    assert _audits(cfg) == []


def test_a_baseline_change_that_breaks_a_tenants_policy_is_refused(web_app, world, cfg):
    acme = world["acme"]
    read(cfg, lambda s: save_settings(s, acme.id, {"quarantine_threshold": 6}))
    client = sign_in(web_app, "admin@msp.test")
    resp = post_form(client, "/console/policy", "/console/policy", {"v_tag_threshold": "7"})
    assert resp.status_code == 422
    assert "tenant Acme" in text(resp)
    assert _baseline(cfg) == {}


def test_keys_locked_before_keep_their_lock_when_the_form_is_saved(web_app, world, cfg):
    """A lock set with the CLI on a key the page does not edit (bayes_min_trained) survives a save from the page."""
    read(cfg, lambda s: save_settings(s, None, {"locked": ["bayes_min_trained"]}))
    client = sign_in(web_app, "admin@msp.test")
    post_form(client, "/console/policy", "/console/policy", {"v_tag_threshold": "4", "locked": "greylisting"})
    assert sorted(_baseline(cfg)["locked"]) == ["bayes_min_trained", "greylisting"]


# --- symbol scores ------------------------------------------------------------------------------------------------

def _score_row(page: str, symbol: str) -> str:
    m = re.search(rf'<tr data-symbol="{symbol}">(.*?)</tr>', page, re.S)
    assert m, f"no score row {symbol}"
    return m.group(1)


def test_baseline_and_tenant_override_symbol_scores_and_clear_them(web_app, world, cfg):
    """The MSP overrides a shipped score for everyone, a tenant overrides it again for itself; emptying a field
    inherits again. The ingress's policy (load_policy) sees each step, every step is audited."""
    acme = world["acme"].id
    admin = sign_in(web_app, "admin@msp.test")
    page = text(admin.get("/console/policy/advanced"))
    assert "<code>BAYES_99</code>" in _score_row(page, "BAYES_99")  # every shipped symbol is listed
    resp = post_form(admin, "/console/policy/advanced", "/console/policy/advanced",
                     {"s_BAYES_99": "6.5", "s_SPF_FAIL": "2"})
    assert resp.status_code == 302, text(resp)
    assert _baseline(cfg)["scores"] == {"BAYES_99": 6.5, "SPF_FAIL": 2.0}
    assert read(cfg, lambda s: load_policy(s, acme).scores) == {"BAYES_99": 6.5, "SPF_FAIL": 2.0}

    tenant = sign_in(web_app, "admin@acme.test")
    row = _score_row(text(tenant.get("/portal/policy/advanced")), "BAYES_99")
    assert '<td class="num" data-label="Provider">6.5</td>' in row and 'data-label="In effect">6.5<' in row
    post_form(tenant, "/portal/policy/advanced", "/portal/policy/advanced", {"s_BAYES_99": "9", "s_DKIM_VALID": "-2"})
    assert _own(cfg, acme)["scores"] == {"BAYES_99": 9.0, "DKIM_VALID": -2.0}
    assert read(cfg, lambda s: load_policy(s, acme).scores) == {"BAYES_99": 9.0, "SPF_FAIL": 2.0, "DKIM_VALID": -2.0}
    post_form(tenant, "/portal/policy/advanced", "/portal/policy/advanced", {"s_BAYES_99": ""})
    assert _own(cfg, acme)["scores"] == {"DKIM_VALID": -2.0}
    assert read(cfg, lambda s: load_policy(s, acme).scores)["BAYES_99"] == 6.5
    details = [d for _, d, _ in _audits(cfg)]
    assert any("scores.BAYES_99=9" in d for d in details) and any("scores.BAYES_99 inherited" in d for d in details)

    post_form(admin, "/console/policy/advanced", "/console/policy/advanced", {"s_BAYES_99": "", "s_SPF_FAIL": ""})
    assert "scores" not in _baseline(cfg)


def test_score_validation_and_the_scores_lock(web_app, world, cfg):
    acme = world["acme"].id
    admin = sign_in(web_app, "admin@msp.test")
    for data, message in (({"s_BAYES_99": "lots"}, "score of BAYES_99: &#39;lots&#39; is not a number"),
                          ({"s_BAYES_99": "1e9"}, "score of BAYES_99: use a number from -1000 to 1000"),
                          ({"s_NO_SUCH_SYMBOL": "1"}, "score of NO_SUCH_SYMBOL: there is no such symbol")):
        resp = post_form(admin, "/console/policy/advanced", "/console/policy/advanced", data)
        assert resp.status_code == 422 and message in text(resp), (data, text(resp))
    assert _baseline(cfg) == {}
    assert post_form(admin, "/console/policy/advanced", "/console/policy/advanced",
                     {"locked": "scores", "section": "advanced"}).status_code == 302
    assert _baseline(cfg)["locked"] == ["scores"]

    tenant = sign_in(web_app, "admin@acme.test")
    page = text(tenant.get("/portal/policy/advanced"))
    assert "Your provider sets the symbol scores" in page
    assert 'id="s_BAYES_99" value="" size="7" inputmode="decimal" disabled' in page
    resp = post_form(tenant, "/portal/policy/advanced", "/portal/policy/advanced", {"s_BAYES_99": "0"})
    assert resp.status_code == 422 and "locked by your provider: scores" in text(resp)
    assert "scores" not in _own(cfg, acme)


def test_helpdesk_reads_the_baseline_but_cannot_change_it(web_app, world, cfg):
    client = sign_in(web_app, "helpdesk@msp.test")
    page = text(client.get("/console/policy"))
    assert 'name="v_tag_threshold" id="v_tag_threshold" value="" size="14" disabled' in page
    assert "Save</button>" not in page
    resp = post_form(client, "/console/policy", "/console/policy", {"v_tag_threshold": "4"})
    assert resp.status_code == 404
    assert _baseline(cfg) == {}


def test_tenant_admin_sets_and_clears_own_values_and_sees_where_each_comes_from(web_app, world, cfg):
    acme = world["acme"]
    read(cfg, lambda s: save_settings(s, None, {"greylisting": True}))
    client = sign_in(web_app, "admin@acme.test")
    page = text(client.get("/portal/policy"))
    assert "baseline" in _row(page, "greylisting") and "true" in _row(page, "greylisting")
    assert "default" in _row(page, "tag_threshold")
    before = policy_version(cfg)
    resp = post_form(client, "/portal/policy", "/portal/policy", {"v_greylisting": "false", "v_tag_threshold": "3.5"})
    assert resp.status_code == 302, text(resp)
    assert _own(cfg, acme.id) == {"greylisting": False, "tag_threshold": 3.5}
    assert policy_version(cfg) > before
    with msp_scope():
        policy = read(cfg, lambda s: load_policy(s, acme.id))
    assert policy.greylisting is False and policy.tag_threshold == 3.5
    page = text(client.get("/portal/policy"))
    assert "tenant" in _row(page, "greylisting") and "false" in _row(page, "greylisting")
    [(_, detail, tenant_id)] = _audits(cfg)
    assert tenant_id == acme.id and "greylisting=false" in detail

    post_form(client, "/portal/policy", "/portal/policy", {"v_greylisting": ""})
    assert _own(cfg, acme.id) == {"tag_threshold": 3.5}


def test_tenant_validation_errors_are_shown(web_app, world, cfg):
    acme = world["acme"]
    client = sign_in(web_app, "admin@acme.test")
    for data, message in (({"v_greylist_delay": "soon"}, "Greylist delay: &#39;soon&#39; is not a duration"),
                          ({"v_greylist_delay": "-5"}, "Greylist delay: &#39;-5&#39; is not a duration"),
                          ({"v_reject_threshold": "1"}, "thresholds must satisfy"),
                          ({"v_digest_sender": "not an address"}, "is not an e-mail address")):
        resp = post_form(client, "/portal/policy", "/portal/policy", data)
        assert resp.status_code == 422, data
        assert message in text(resp), (data, text(resp))
    assert _own(cfg, acme.id) == {}


def test_a_tenant_cannot_change_a_locked_key(web_app, world, cfg):
    """Privilege escalation: the form disables a locked key, but a hand-made post must be refused as well."""
    acme = world["acme"]
    read(cfg, lambda s: save_settings(s, None, {"virus_action": "reject", "locked": ["virus_action"]}))
    client = sign_in(web_app, "admin@acme.test")
    page = text(client.get("/portal/policy"))
    assert "locked by provider" in _row(page, "virus_action") and "disabled" in _row(page, "virus_action")
    resp = post_form(client, "/portal/policy", "/portal/policy", {"v_virus_action": "quarantine",
                                                                   "v_greylisting": "true"})
    assert resp.status_code == 422 and "locked by your provider: virus_action" in text(resp)
    assert _own(cfg, acme.id) == {}
    # An empty locked field changes nothing (there is no value of the tenant's to clear): the rest is saved.
    resp = post_form(client, "/portal/policy", "/portal/policy", {"v_virus_action": "", "v_greylisting": "true"})
    assert resp.status_code == 302
    assert _own(cfg, acme.id) == {"greylisting": True}


def test_auditor_reads_the_policy_but_cannot_change_it(web_app, world, cfg):
    acme = world["acme"]
    client = sign_in(web_app, "auditor@acme.test")
    page = text(client.get("/portal/policy"))
    assert "Save</button>" not in page and "disabled" in _row(page, "tag_threshold")
    resp = post_form(client, "/portal/policy", "/portal/policy", {"v_tag_threshold": "3"})
    assert resp.status_code == 404
    assert _own(cfg, acme.id) == {}


def test_a_tenants_policy_is_its_own(web_app, world, cfg):
    """Cross-tenant: Beta's admin changes Beta's policy only; Acme's page and policy do not move."""
    acme, beta = world["acme"], world["beta"]
    client = sign_in(web_app, "admin@beta.test")
    post_form(client, "/portal/policy", "/portal/policy", {"v_tag_threshold": "2"})
    assert _own(cfg, beta.id) == {"tag_threshold": 2.0} and _own(cfg, acme.id) == {}
    page = text(sign_in(web_app, "admin@acme.test").get("/portal/policy"))
    assert "default" in _row(page, "tag_threshold")
    assert sign_in(web_app, "admin@beta.test").get("/console/policy").status_code == 404


def test_user_role_reaches_no_policy_page(web_app, world):
    client = sign_in(web_app, "user@acme.test")
    assert client.get("/portal/policy").status_code == 404
    assert client.get("/console/policy").status_code == 404


# --- the subject prefix -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["[SPAM]\r\nBcc: everyone@victim.example", "[SPAM]\nX-Evil: 1", "[SP\rAM]",
                                    "[SPAM]\x00", "[SP\tAM]", "[SPAM]\u2028Bcc: x@y.example"])
def test_a_subject_prefix_with_a_line_break_is_refused(web_app, world, cfg, prefix):
    """Header injection: a CR or LF in the prefix would end the Subject and add a header field of the editor's
    choosing to every tagged mail; the form refuses it (422, saying why) and stores nothing."""
    client = sign_in(web_app, "admin@acme.test")
    resp = post_form(client, "/portal/policy", "/portal/policy", {"v_subject_prefix": prefix})
    assert resp.status_code == 422
    assert "Subject prefix of tagged mail: one line of text, without line breaks" in text(resp)
    assert _own(cfg, world["acme"].id) == {}


def test_a_subject_prefix_is_bounded_and_may_be_non_ascii(web_app, world, cfg):
    client = sign_in(web_app, "admin@msp.test")
    resp = post_form(client, "/console/policy", "/console/policy", {"v_subject_prefix": "x" * (MAX_SUBJECT_PREFIX + 1)})
    assert resp.status_code == 422 and f"at most {MAX_SUBJECT_PREFIX} characters" in text(resp)
    resp = post_form(client, "/console/policy", "/console/policy", {"v_subject_prefix": "[Spämverdacht ★]"})
    assert resp.status_code == 302
    assert _baseline(cfg) == {"subject_prefix": "[Spämverdacht ★]"}


def test_the_cli_refuses_a_subject_prefix_with_a_line_break(env, world, cfg):
    result = run_cli(["policy", "set", "Acme", 'subject_prefix="[SPAM]\\r\\nBcc: x@evil.example"'], env)
    assert result.returncode == 1 and "without line breaks" in result.stderr
    assert _own(cfg, world["acme"].id) == {}


def _delivered(sink) -> tuple[list[str], object]:
    """The header names of the one delivered mail, and the mail parsed as a client would."""
    raw = sink.wait_count(1)[0].data
    names = [name.lower() for name in message_from_bytes(raw).keys()]
    return names, message_from_bytes(raw, policy=email_policy.default)


def test_a_stored_prefix_with_a_line_break_cannot_inject_a_header_at_delivery(env, cfg, ingress, acme, sink):
    """A prefix saved before the check existed (or written to the database by hand) still cannot add a header field:
    the ingress puts it on the Subject as one line."""
    read(cfg, lambda s: save_settings(s, acme.id, {"scores": {"MIME_DEFECT": 6.0},
                                                    "subject_prefix": "[SPAM]\r\nBcc: everyone@victim.example"}))
    send(env, BROKEN)
    names, mail = _delivered(sink)
    assert "bcc" not in names
    assert names.count("subject") == 1
    assert mail["Subject"] == "[SPAM] Bcc: everyone@victim.example Broken report"


def test_a_non_ascii_prefix_is_rfc2047_encoded_at_delivery(env, cfg, ingress, acme, sink):
    """An 8-bit header breaks mail servers and clients that expect RFC 5322: the prefix goes as encoded words."""
    read(cfg, lambda s: save_settings(s, acme.id, {"scores": {"MIME_DEFECT": 6.0},
                                                    "subject_prefix": "[Spämverdacht ★]"}))
    send(env, BROKEN)
    raw = sink.wait_count(1)[0].data
    subject_line = next(line for line in raw.split(b"\r\n") if line.lower().startswith(b"subject:"))
    assert subject_line.isascii() and b"=?utf-8?b?" in subject_line
    assert message_from_bytes(raw, policy=email_policy.default)["Subject"] == "[Spämverdacht ★] Broken report"
