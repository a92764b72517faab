"""Mail rules through their interfaces: the CLI (list, add, remove, enable, disable, export and import, whose YAML
round-trips), the REST API (CRUD, scopes, MSP keys and the baseline) and the portal and console pages (the one
list, the forms, the regex tester). A tenant reaches no other tenant's rule (404 everywhere) and cannot disable or
change a locked baseline rule (403 on the web and the API, an error on the command line); bad input is refused with
a message that names the rule and the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from tenants.mailrules import service
from tenants.mailrules.model import MailRule, MailRuleOptOut
from tenants.models import AuditEntry
from tenants.platform import db as tdb
from tenants.scope import msp_scope, tenant_scope
from tests.fixtures.api import Client, error, make_key
from tests.support.servers import run_cli
from tests.support.web import csrf_token, post_form, read, sign_in, text

#: A tenant rule in its dict form (the API's body, one entry of a YAML file).
ZIP_RULE: dict[str, Any] = {
    "name": "Weekend ZIPs", "priority": 60, "direction": "inbound",
    "what": {"match": "all", "items": [{"filename": r"\.zip$"}, {"size": {"min": 10_000_000}}]},
    "when": {"items": [{"frame": {"days": ["sat", "sun"], "start": "00:00", "end": "24:00"}}]},
    "actions": [{"quarantine": {"kind": "attachment", "reason": "{filename} on a weekend"}}],
}
TAG_RULE: dict[str, Any] = {
    "name": "Tag finance", "priority": 30, "direction": "both",
    "to": {"items": [{"ldap_group": "Finance"}, {"address": "cfo@acme.test"}]},
    "actions": [{"tag_subject": {"tag": "[FIN]"}}, {"bcc": {"to": "audit@acme.test"}}],
}


def add(cfg: Any, raw: dict[str, Any], tenant_id: int | None) -> int:
    """A rule made through the service (the baseline for ``tenant_id`` None); its id."""
    with msp_scope(), tdb.session_scope(cfg) as s:
        return service.add_rule(s, cfg, raw, tenant_id=tenant_id, actor="test").id


def baseline_id(cfg: Any, name: str) -> int:
    return read(cfg, lambda s: s.scalars(select(MailRule.id).where(MailRule.tenant_id.is_(None),
                                                                   MailRule.name == name)).one())


@pytest.fixture
def rules(cfg, world) -> dict[str, int]:
    """A locked, active baseline rule; an unlocked shipped default; one rule of Acme and one of Beta."""
    locked = add(cfg, {"name": "No executables", "priority": 95, "direction": "both", "active": True, "locked": True,
                       "what": {"items": [{"filename": r"\.exe$"}]}, "actions": [{"quarantine": {}}]}, None)
    return {"locked": locked, "default": baseline_id(cfg, "Tag external mail"),
            "acme": add(cfg, TAG_RULE, world["acme"].id), "beta": add(cfg, ZIP_RULE, world["beta"].id)}


def rule_names(cfg: Any, tenant_id: int | None) -> list[str]:
    return read(cfg, lambda s: list(s.scalars(select(MailRule.name).where(
        MailRule.tenant_id.is_(None) if tenant_id is None else MailRule.tenant_id == tenant_id)
        .order_by(MailRule.id))))


# --- the command line -----------------------------------------------------------------------------------------------

def test_cli_export_import_round_trips_the_yaml(env, cfg, world, tmp_path):
    (tmp_path / "zip.yaml").write_text(yaml.safe_dump(ZIP_RULE))
    (tmp_path / "tag.json").write_text(json.dumps(TAG_RULE))
    for name in ("zip.yaml", "tag.json"):
        made = run_cli(["rules", "add", "Acme", "--file", str(tmp_path / name)], env)
        assert made.returncode == 0, made.stderr
    first = run_cli(["rules", "export", "Acme"], env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("# Mailward mail rules of tenant Acme")
    exported = yaml.safe_load(first.stdout)
    assert [r["name"] for r in exported] == ["Weekend ZIPs", "Tag finance"]  # evaluation order: priority first
    assert "locked" not in exported[0] and exported[0]["when"]["items"][0]["frame"]["days"] == ["sat", "sun"]
    (tmp_path / "acme.yaml").write_text(first.stdout)

    same = run_cli(["rules", "import", "Acme", str(tmp_path / "acme.yaml"), "--replace"], env)
    assert same.returncode == 0 and "0 added, 0 updated, 0 removed, 2 unchanged" in same.stdout, same
    assert run_cli(["rules", "export", "Acme"], env).stdout == first.stdout

    # Into another tenant: the same rules, the same YAML under Beta's header.
    copied = run_cli(["rules", "import", str(world["beta"].id), str(tmp_path / "acme.yaml")], env)
    assert copied.returncode == 0 and "2 added" in copied.stdout, copied
    beta = run_cli(["rules", "export", "Beta"], env).stdout
    assert beta.split("\n", 2)[2] == first.stdout.split("\n", 2)[2] and "tenant Beta" in beta

    # An edit and a replace: one updated, the rule the file leaves out removed.
    exported[0]["priority"] = 70
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(exported[:1], sort_keys=False))
    edited = run_cli(["rules", "import", "Acme", str(tmp_path / "edited.yaml"), "--replace"], env)
    assert "0 added, 1 updated, 1 removed" in edited.stdout, edited
    assert rule_names(cfg, world["acme"].id) == ["Weekend ZIPs"]
    assert rule_names(cfg, world["beta"].id) == ["Weekend ZIPs", "Tag finance"]


def test_cli_baseline_export_import_and_the_one_list(env, cfg, world, rules, tmp_path):
    exported = run_cli(["rules", "export", "msp"], env)
    assert exported.returncode == 0 and exported.stdout.startswith("# Mailward MSP baseline"), exported.stderr
    baseline = yaml.safe_load(exported.stdout)
    assert baseline[0] == {"name": "No executables", "priority": 95, "direction": "both", "active": True,
                           "locked": True, "match": "all",
                           "what": {"match": "any", "invert": False, "items": [{"filename": r"\.exe$"}]},
                           "actions": [{"quarantine": {"kind": "spam"}}]}
    assert {"Block viruses", "Tag external mail", "Outbound disclaimer"} <= {r["name"] for r in baseline}
    (tmp_path / "msp.yaml").write_text(exported.stdout)
    again = run_cli(["rules", "import", "msp", str(tmp_path / "msp.yaml")], env)
    assert again.returncode == 0 and "unchanged" in again.stdout, again
    assert run_cli(["rules", "export", "msp"], env).stdout == exported.stdout

    listed = run_cli(["rules", "list", "Acme"], env).stdout.splitlines()
    rows = {line.split("\t")[2]: line.split("\t") for line in listed}
    assert rows["No executables"][5] == "msp,locked" and rows["Tag external mail"][5] == "msp"
    assert rows["Tag finance"][5] == "own" and "Weekend ZIPs" not in rows  # Beta's rule
    assert listed[0].split("\t")[2] == "No executables"  # locked baseline rules run first
    assert "Tag finance" not in run_cli(["rules", "list", "msp"], env).stdout


def test_cli_refuses_a_locked_rule_and_opts_out_of_a_default(env, cfg, world, rules):
    locked = run_cli(["rules", "disable", "Acme", "No executables"], env)
    assert locked.returncode == 1 and "locked by your provider" in locked.stderr, locked
    assert run_cli(["rules", "remove", "Acme", str(rules["locked"])], env).returncode == 1
    out = run_cli(["rules", "disable", "Acme", "tag external MAIL"], env)
    assert out.returncode == 0 and "disabled" in out.stdout, out.stderr
    assert read(cfg, lambda s: s.get(MailRuleOptOut, (world["acme"].id, rules["default"]))) is not None
    assert "opted-out" in run_cli(["rules", "list", "Acme"], env).stdout
    assert run_cli(["rules", "enable", "Acme", "Tag external mail"], env).returncode == 0
    assert read(cfg, lambda s: s.get(MailRuleOptOut, (world["acme"].id, rules["default"]))) is None
    # Beta's rule is nobody else's to see or change.
    other = run_cli(["rules", "remove", "Acme", str(rules["beta"])], env)
    assert other.returncode == 1 and "no rule" in other.stderr
    assert run_cli(["rules", "disable", "Acme", "Weekend ZIPs"], env).returncode == 1
    gone = run_cli(["rules", "remove", "Acme", "Tag finance"], env)
    assert gone.returncode == 0 and rule_names(cfg, world["acme"].id) == []
    assert run_cli(["rules", "disable", "msp", "No executables"], env).returncode == 0  # the MSP may


def test_cli_import_writes_nothing_when_one_rule_is_bad(env, cfg, world, tmp_path):
    bad_regex = [ZIP_RULE, {**TAG_RULE, "what": {"items": [{"filename": "(unclosed"}]}}]
    cases = {
        "regex.yaml": (yaml.safe_dump(bad_regex), "entry 2 ('Tag finance')", "invalid regular expression"),
        "macro.yaml": (yaml.safe_dump([{**TAG_RULE, "actions": [{"tag_subject": {"tag": "{sendr}"}}]}]),
                       "entry 1", "unknown macro {sendr}"),
        "field.yaml": (yaml.safe_dump([{**TAG_RULE, "colour": "red"}]), "entry 1", "unknown rule field 'colour'"),
        "locked.yaml": (yaml.safe_dump([{**TAG_RULE, "locked": True}]), "entry 1", "unknown rule field 'locked'"),
        "broken.yaml": ("- name: x\n  actions: [\n", "invalid YAML at line", ""),
        "twice.yaml": (yaml.safe_dump([TAG_RULE, TAG_RULE]), "entry 2", "appears twice"),
    }
    for name, (body, where, what) in cases.items():
        (tmp_path / name).write_text(body)
        result = run_cli(["rules", "import", "Acme", str(tmp_path / name)], env)
        assert result.returncode == 1, (name, result.stdout)
        assert where in result.stderr and what in result.stderr, (name, result.stderr)
    assert rule_names(cfg, world["acme"].id) == []  # the good first entry of regex.yaml was not written either
    (tmp_path / "bad.json").write_text('{"name": "x", "actions": [{"explode": {}}]}')
    added = run_cli(["rules", "add", "Acme", "--file", str(tmp_path / "bad.json")], env)
    assert added.returncode == 1 and "unknown action 'explode'" in added.stderr


# --- the REST API ---------------------------------------------------------------------------------------------------

def test_api_crud_and_the_tenants_one_list(web_app, cfg, world, rules, acme_api):
    listed = acme_api.get("/rules")
    assert listed.status_code == 200, listed.get_json()
    items = listed.get_json()["items"]
    assert items[0]["id"] == rules["locked"] and items[0]["baseline"] and items[0]["locked"]
    names = [i["rule"]["name"] for i in items]
    assert "Tag finance" in names and "Tag external mail" in names and "Weekend ZIPs" not in names
    assert all(i["hits"] == 0 for i in items)

    made = acme_api.post("/rules", ZIP_RULE)
    assert made.status_code == 201, made.get_json()
    rule = made.get_json()
    assert rule["baseline"] is False and rule["rule"]["what"]["items"][0] == {"filename": r"\.zip$"}
    assert acme_api.get(f"/rules/{rule['id']}").get_json() == rule

    changed = acme_api.put(f"/rules/{rule['id']}", {**rule["rule"], "priority": 10, "active": False})
    assert changed.status_code == 200 and changed.get_json()["rule"]["priority"] == 10, changed.get_json()
    assert changed.get_json()["active"] is False
    enabled = acme_api.post(f"/rules/{rule['id']}/enable")
    assert enabled.status_code == 200 and enabled.get_json()["active"] is True
    assert acme_api.delete(f"/rules/{rule['id']}").status_code == 204
    error(acme_api.get(f"/rules/{rule['id']}"), 404, "not_found")
    actions = read(cfg, lambda s: list(s.scalars(select(AuditEntry.action).where(
        AuditEntry.tenant_id == world["acme"].id, AuditEntry.action.like("rule.%")).order_by(AuditEntry.id))))
    assert actions == ["rule.add", "rule.add", "rule.update", "rule.enable", "rule.remove"]


def test_api_locked_and_provider_rules_for_a_tenant_key(acme_api, cfg, world, rules):
    body = error(acme_api.post(f"/rules/{rules['locked']}/disable"), 403, "forbidden")
    assert "locked by your provider" in body["message"]
    body = error(acme_api.put(f"/rules/{rules['locked']}", {"name": "x", "actions": [{"accept": {}}]}), 403,
                 "forbidden")
    assert "locked" in body["message"]
    error(acme_api.delete(f"/rules/{rules['locked']}"), 403, "forbidden")
    error(acme_api.delete(f"/rules/{rules['default']}"), 403, "forbidden")
    assert acme_api.get(f"/rules/{rules['locked']}").status_code == 200  # seen, not changed
    out = acme_api.post(f"/rules/{rules['default']}/disable")
    assert out.status_code == 200 and out.get_json()["opted_out"] is True and out.get_json()["active"] is False
    assert acme_api.post(f"/rules/{rules['default']}/enable").get_json()["opted_out"] is False
    assert read(cfg, lambda s: s.get(MailRule, rules["locked"]).active) is True


def test_api_msp_key_manages_the_baseline_or_one_tenants_rules(web_app, cfg, world, rules, msp_api):
    baseline = msp_api.get("/rules").get_json()["items"]
    assert all(i["baseline"] for i in baseline) and rules["acme"] not in [i["id"] for i in baseline]
    made = msp_api.post("/rules", {**TAG_RULE, "name": "Baseline tag", "locked": True})
    assert made.status_code == 201 and made.get_json()["locked"] is True, made.get_json()
    assert msp_api.post(f"/rules/{rules['locked']}/disable").get_json()["active"] is False
    acme = world["acme"].id
    theirs = msp_api.get("/rules", query_string={"tenant_id": acme}).get_json()["items"]
    assert rules["acme"] in [i["id"] for i in theirs]
    added = msp_api.post(f"/rules?tenant_id={acme}", ZIP_RULE)
    assert added.status_code == 201 and added.get_json()["baseline"] is False
    assert "Weekend ZIPs" in rule_names(cfg, acme)
    error(msp_api.get(f"/rules/{rules['acme']}"), 404, "not_found")  # not a baseline rule


def test_api_scopes_and_another_tenants_rules_are_404(web_app, cfg, world, rules, acme_api):
    reader = Client(web_app, make_key(cfg, world["acme"].id, "read"))
    assert reader.get("/rules").status_code == 200
    error(reader.post("/rules", ZIP_RULE), 403, "forbidden_scope")
    error(reader.post(f"/rules/{rules['acme']}/disable"), 403, "forbidden_scope")
    error(reader.delete(f"/rules/{rules['acme']}"), 403, "forbidden_scope")
    beta_rule = rules["beta"]
    for method, path, body in (("GET", "", None), ("PUT", "", ZIP_RULE), ("DELETE", "", None),
                               ("POST", "/enable", None), ("POST", "/disable", None)):
        resp = acme_api.client.open(f"/api/v1/rules/{beta_rule}{path}", method=method,
                                    headers={"Authorization": f"Bearer {acme_api.key}"}, json=body)
        error(resp, 404, "not_found")
    error(acme_api.get("/rules", query_string={"tenant_id": world["beta"].id}), 404, "not_found")
    error(acme_api.post(f"/rules?tenant_id={world['beta'].id}", ZIP_RULE), 404, "not_found")
    assert rule_names(cfg, world["beta"].id) == ["Weekend ZIPs"]
    assert read(cfg, lambda s: s.get(MailRule, beta_rule).active) is True


@pytest.mark.parametrize(("change", "message"), [
    ({"what": {"items": [{"filename": "(unclosed"}]}}, "invalid regular expression"),
    ({"actions": [{"tag_subject": {"tag": "{score} {nope}"}}]}, "unknown macro {nope}"),
    ({"what": {"items": [{"colour": "red"}]}}, "unknown condition 'colour'"),
    ({"actions": [{"bcc": {"to": "audit@acme.test", "cc": "x@y.test"}}]}, "unknown parameter 'cc'"),
    ({"locked": True}, "unknown rule field 'locked'"),
    ({"actions": [{"reroute": {"host": "localhost.localdomain"}}, {"reroute": {"host": "x.test"}}]}, "once each"),
])
def test_api_bad_rules_are_422_with_the_reason(acme_api, world, change, message):
    body = error(acme_api.post("/rules", {**ZIP_RULE, **change}), 422, "validation")
    assert message in body["message"], body
    assert "locked" in change or "rule 'Weekend ZIPs'" in body["message"], body  # which rule, where the body has one


def test_api_bad_body_shapes_are_422_with_the_field(acme_api, world):
    body = error(acme_api.post("/rules", {**ZIP_RULE, "colour": "red"}), 422, "validation")
    assert "colour" in body["fields"]
    body = error(acme_api.post("/rules", {**ZIP_RULE, "priority": 101}), 422, "validation")
    assert "priority" in body["fields"]
    body = error(acme_api.post("/rules", {"name": "x"}), 422, "validation")
    assert "actions" in body["fields"]


# --- the web pages --------------------------------------------------------------------------------------------------

def test_portal_lists_the_baseline_and_own_rules_and_edits_them(web_app, cfg, world, rules):
    client = sign_in(web_app, "admin@acme.test")
    page = text(client.get("/portal/rules"))
    assert page.index("No executables") < page.index("Tag finance")  # locked first
    assert "Weekend ZIPs" not in page and "locked" in page and "provider" in page
    assert "Tag external mail" in page and "{filename}" in page  # the macros help
    made = post_form(client, "/portal/rules", "/portal/rules", {"text": yaml.safe_dump(ZIP_RULE)})
    assert made.status_code == 302, text(made)
    new_id = read(cfg, lambda s: s.scalars(select(MailRule.id).where(MailRule.name == "Weekend ZIPs",
                                                                    MailRule.tenant_id == world["acme"].id)).one())
    shown = text(client.get(f"/portal/rules?rule={new_id}"))
    assert f'action="/portal/rules/{new_id}"' in shown and "size:" in shown
    edited = dict(ZIP_RULE, priority=5)
    saved = post_form(client, "/portal/rules", f"/portal/rules/{new_id}", {"text": json.dumps(edited)})
    assert saved.status_code == 302
    assert read(cfg, lambda s: s.get(MailRule, new_id).priority) == 5
    off = post_form(client, "/portal/rules", f"/portal/rules/{new_id}/disable", {})
    assert off.status_code == 302 and read(cfg, lambda s: s.get(MailRule, new_id).active) is False
    ask = post_form(client, "/portal/rules", f"/portal/rules/{new_id}/delete", {})
    assert ask.status_code == 200 and "Yes, remove the rule" in text(ask)
    gone = post_form(client, "/portal/rules", f"/portal/rules/{new_id}/delete", {"confirm": "1"})
    assert gone.status_code == 302 and read(cfg, lambda s: s.get(MailRule, new_id)) is None
    actors = read(cfg, lambda s: set(s.scalars(select(AuditEntry.actor).where(
        AuditEntry.action.like("rule.%"), AuditEntry.tenant_id == world["acme"].id))))
    assert "admin@acme.test" in actors


def test_portal_refuses_bad_rules_and_locked_rules(web_app, cfg, world, rules):
    client = sign_in(web_app, "admin@acme.test")
    bad = post_form(client, "/portal/rules", "/portal/rules",
                    {"text": yaml.safe_dump({**ZIP_RULE, "what": {"items": [{"filename": "(x"}]}})})
    assert bad.status_code == 422 and "invalid regular expression" in text(bad)
    bad = post_form(client, "/portal/rules", "/portal/rules", {"text": "name: [unclosed"})
    assert bad.status_code == 422 and "invalid YAML" in text(bad)
    for path in (f"/portal/rules/{rules['locked']}/disable", f"/portal/rules/{rules['locked']}",
                 f"/portal/rules/{rules['locked']}/delete"):
        refused = post_form(client, "/portal/rules", path, {"text": "name: x"})
        assert refused.status_code == 403 and "locked by your provider" in text(refused), path
    assert read(cfg, lambda s: s.get(MailRule, rules["locked"]).active) is True
    out = post_form(client, "/portal/rules", f"/portal/rules/{rules['default']}/disable", {})
    assert out.status_code == 302
    assert "opted out" in text(client.get("/portal/rules"))


def test_every_rule_route_is_404_for_another_tenants_rule(web_app, cfg, world, rules):
    client = sign_in(web_app, "admin@acme.test")
    beta_rule = rules["beta"]
    assert client.get(f"/portal/rules?rule={beta_rule}").status_code == 404
    for path in ("", "/enable", "/disable", "/delete"):
        resp = post_form(client, "/portal/rules", f"/portal/rules/{beta_rule}{path}",
                         {"text": yaml.safe_dump(ZIP_RULE), "confirm": "1"})
        assert resp.status_code == 404, path
    assert read(cfg, lambda s: (s.get(MailRule, beta_rule).active, s.get(MailRule, beta_rule).priority)) == (True, 60)
    # The console edits the baseline only: a tenant's rule is not one of its rows.
    msp = sign_in(web_app, "admin@msp.test")
    assert msp.get(f"/console/rules?rule={beta_rule}").status_code == 404
    resp = post_form(msp, "/console/rules", f"/console/rules/{beta_rule}/disable", {})
    assert resp.status_code == 404


def test_auditors_and_helpdesk_read_only(web_app, cfg, world, rules):
    auditor = sign_in(web_app, "auditor@acme.test")
    page = text(auditor.get("/portal/rules"))
    assert "Tag finance" in page and "Add a rule" not in page and "/disable" not in page
    assert post_form(auditor, "/portal/rules", "/portal/rules", {"text": yaml.safe_dump(ZIP_RULE)}).status_code == 404
    shown = text(auditor.get(f"/portal/rules?rule={rules['acme']}"))
    assert "<textarea readonly" in shown and "ldap_group: Finance" in shown
    assert f'action="/portal/rules/{rules["acme"]}"' not in shown
    admin = sign_in(web_app, "admin@acme.test")
    provider = text(admin.get(f"/portal/rules?rule={rules['locked']}"))  # the provider's rule: read, not edited
    assert "<textarea readonly" in provider and "locked, it always applies" in provider
    helpdesk = sign_in(web_app, "helpdesk@msp.test")
    assert "No executables" in text(helpdesk.get("/console/rules"))
    resp = post_form(helpdesk, "/console/rules", f"/console/rules/{rules['locked']}/disable", {})
    assert resp.status_code == 404


def test_console_edits_the_baseline(web_app, cfg, world, rules):
    client = sign_in(web_app, "admin@msp.test")
    page = text(client.get("/console/rules"))
    assert "Block viruses" in page and "Tag finance" not in page
    made = post_form(client, "/console/rules", "/console/rules",
                     {"text": yaml.safe_dump({**TAG_RULE, "name": "MSP tag", "locked": True})})
    assert made.status_code == 302, text(made)
    assert "MSP tag" in rule_names(cfg, None)
    off = post_form(client, "/console/rules", f"/console/rules/{rules['locked']}/disable", {})
    assert off.status_code == 302 and read(cfg, lambda s: s.get(MailRule, rules["locked"]).active) is False
    with msp_scope(), tdb.session_scope(cfg) as s, tenant_scope(world["acme"].id):
        acme_names = [v.spec.name for v in service.rule_views(s, cfg, world["acme"].id)]
    assert "MSP tag" in acme_names  # every tenant inherits it


@pytest.mark.parametrize(("pattern", "sample", "status", "result"), [
    (r"\.(docm|xlsm)$", "Invoice.DOCM", 200, "matches: &#39;.DOCM&#39;"),
    (r"\.zip$", "report.pdf", 200, "no match"),
    ("(a", "a", 422, "error: pattern: invalid regular expression"),
    (r"(a)\1", "aa", 422, "error: pattern: invalid regular expression"),  # RE2: no back-references
])
def test_the_regex_tester(web_app, world, pattern, sample, status, result):
    for email, base in (("auditor@acme.test", "/portal/rules"), ("helpdesk@msp.test", "/console/rules")):
        client = sign_in(web_app, email)
        resp = client.post(f"{base}/regex", data={"pattern": pattern, "sample": sample,
                                                  "csrf_token": csrf_token(text(client.get(base)))})
        assert resp.status_code == status and result in text(resp), (email, text(resp)[-3000:])
