"""The REST API at /api/v1: bearer keys (made by the CLI and the API), scopes, tenant isolation (another tenant's
object is 404 on every route), JSON errors, keyset paging, rate limits, the quarantine through the real worker and
sink, and the OpenAPI document (checked against the running API with schemathesis)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import select

from app.access import access_of
from tenants import apikeys
from tenants.dkimkeys import generate_key
from tenants.lists import add_entry
from tenants.mailrules.model import MailRule
from tenants.mailrules.service import add_rule
from tenants.models import ApiKey, Delivery, Domain, ListEntry, Message, Tenant, User, ValidRecipient, utcnow
from tenants.platform import db as tdb
from tenants.recipients import add_static
from tenants.scope import msp_scope, tenant_scope
from tests.fixtures.api import API, Client, auth, error, make_key
from tests.support.held import hold
from tests.support.servers import run_cli
from tests.support.web import read, sign_in

#: A URL rule's argument, ``<converter:name>`` or ``<name>``; group 1 is the name.
ARGUMENT = re.compile(r"<(?:\w+(?:\([^)]*\))?:)?(\w+)>")
#: Examples schemathesis generates per operation and mode (valid, invalid): a bounded run of a few seconds.
CONFORMANCE_EXAMPLES = 15
#: Checks left out of that run: any string is a schema-valid page cursor, yet only one this API returned is a
#: cursor (an opaque keyset position cannot be described by a JSON Schema), so a made-up one is rightly a 422.
EXCLUDED_CHECKS = [positive_data_acceptance]


# --- keys -----------------------------------------------------------------------------------------------------------

def test_a_key_made_with_the_cli_works_until_revoked_with_the_cli(env, web_app, world):
    made = run_cli(["apikey", "create", "Acme", "--scopes", "read,write", "--name", "ci"], env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("mw_") and key.count("_") >= 2 and len(key) > 40
    api = Client(web_app, key)
    resp = api.get("/domains")
    assert resp.status_code == 200, resp.get_json()
    assert sorted(d["name"] for d in resp.get_json()["items"]) == ["acme.test", "acme2.test"]

    listed = run_cli(["apikey", "list", "Acme"], env)
    (line,) = listed.stdout.strip().splitlines()
    key_id, prefix, scopes, name = line.split("\t")[:4]
    assert key.startswith(prefix + "_") and scopes == "read,write" and name == "ci"
    assert key not in listed.stdout and "active" in line

    revoked = run_cli(["apikey", "revoke", key_id], env)
    assert revoked.returncode == 0 and f"api key {key_id} ({prefix}) revoked" in revoked.stdout
    error(api.get("/domains"), 401, "unauthorized")
    assert "revoked" in run_cli(["apikey", "list", "Acme"], env).stdout


def test_the_cli_makes_msp_wide_keys_and_refuses_bad_scopes(env, web_app, world):
    made = run_cli(["apikey", "create", "--msp", "--scopes", "read"], env)
    assert made.returncode == 0, made.stderr
    api = Client(web_app, made.stdout.strip().splitlines()[-1])
    names = [t["name"] for t in api.get("/tenants").get_json()["items"]]
    assert names == ["Acme", "Beta"]
    assert len(run_cli(["apikey", "list", "--msp"], env).stdout.strip().splitlines()) == 1
    bad = run_cli(["apikey", "create", "Acme", "--scopes", "read,admin"], env)
    assert bad.returncode == 1 and "admin" in bad.stderr and "read, write, quarantine" in bad.stderr
    both = run_cli(["apikey", "create", "Acme", "--msp", "--scopes", "read"], env)
    assert both.returncode == 2


def test_only_the_hash_of_a_key_is_stored(cfg, world):
    key = make_key(cfg, world["acme"].id)
    row = read(cfg, lambda s: s.scalars(select(ApiKey)).one())
    assert key not in (row.key_hash, row.prefix, row.name) and row.key_hash == apikeys.hash_key(key)
    assert key.startswith(row.prefix + "_")


def test_missing_malformed_unknown_and_revoked_keys_are_401(web_app, cfg, world, keys):
    client = web_app.test_client()
    body = error(client.get(f"{API}/domains"), 401, "unauthorized")
    assert "Bearer" in body["message"]
    resp = client.get(f"{API}/domains", headers={"Authorization": "Basic dXNlcjpwdw=="})
    error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="mailward"')
    prefix = keys["acme"].rsplit("_", 1)[0] if keys["acme"].count("_") == 2 else keys["acme"][:11]
    for wrong in ("mw_deadbeef_" + "x" * 43, prefix + "_" + "y" * 43, keys["acme"] + "z", "nonsense"):
        error(client.get(f"{API}/domains", headers=auth(wrong)), 401, "unauthorized")
    acme = Client(web_app, keys["acme"])
    doomed = acme.post("/apikeys", {"scopes": ["read"], "name": "doomed"}).get_json()
    doomed_api = Client(web_app, doomed["key"])
    assert doomed_api.get("/domains").status_code == 200
    assert acme.delete(f"/apikeys/{doomed['id']}").status_code == 204
    error(doomed_api.get("/domains"), 401, "unauthorized")
    assert acme.delete(f"/apikeys/{doomed['id']}").status_code == 204  # revoking again changes nothing


def test_a_session_cookie_is_no_credential_for_the_api(web_app, world):
    """A signed-in browser (the API is exempt from CSRF) cannot call the API, and the API never refreshes its cookie."""
    browser = sign_in(web_app, "admin@acme.test")
    resp = browser.get(f"{API}/domains")
    error(resp, 401, "unauthorized")
    assert "Set-Cookie" not in resp.headers
    error(browser.post(f"{API}/lists", json={"kind": "allow", "value": "friend@example.org"}), 401, "unauthorized")


def test_each_scope_admits_only_its_own_routes(web_app, cfg, world):
    acme = world["acme"].id
    held = hold(cfg, acme)
    read_only = Client(web_app, make_key(cfg, acme, "read"))
    write_only = Client(web_app, make_key(cfg, acme, "write"))
    quarantine_only = Client(web_app, make_key(cfg, acme, "quarantine"))
    assert read_only.get("/domains").status_code == 200
    body = error(read_only.post("/lists", {"kind": "allow", "value": "friend@example.org"}), 403, "forbidden_scope")
    assert "write" in body["message"]
    error(read_only.post(f"/quarantine/{held}/release", {}), 403, "forbidden_scope")
    error(write_only.get("/domains"), 403, "forbidden_scope")
    error(write_only.post(f"/quarantine/{held}/delete"), 403, "forbidden_scope")
    error(quarantine_only.get("/quarantine"), 403, "forbidden_scope")
    error(quarantine_only.post("/apikeys", {"scopes": ["quarantine"]}), 403, "forbidden_scope")
    assert write_only.post("/lists", {"kind": "allow", "value": "friend@example.org"}).status_code == 201
    assert quarantine_only.post(f"/quarantine/{held}/delete").status_code == 200


def test_a_key_cannot_create_a_key_with_more_scopes_than_its_own(web_app, cfg, world):
    writer = Client(web_app, make_key(cfg, world["acme"].id, "read,write"))
    body = error(writer.post("/apikeys", {"scopes": ["read", "quarantine"]}), 403, "forbidden_scope")
    assert "quarantine" in body["message"]
    made = writer.post("/apikeys", {"scopes": ["read"], "name": "reporting"})
    assert made.status_code == 201
    new = made.get_json()
    assert new["scopes"] == ["read"] and new["tenant_id"] == world["acme"].id and new["key"].startswith(new["prefix"])
    listed = writer.get("/apikeys").get_json()["items"]
    assert [k["name"] for k in listed] == ["test", "reporting"] and all("key" not in k for k in listed)


def test_an_msp_key_makes_keys_for_a_tenant_or_for_the_msp(web_app, msp_api, world):
    beta = world["beta"].id
    made = msp_api.post("/apikeys", {"scopes": ["read"], "tenant_id": beta, "name": "beta-ro"})
    assert made.status_code == 201 and made.get_json()["tenant_id"] == beta
    beta_api = Client(web_app, made.get_json()["key"])
    assert {d["name"] for d in beta_api.all_pages("/domains")} == {"beta.test"}
    error(beta_api.get("/tenants"), 404, "not_found")
    wide = msp_api.post("/apikeys", {"scopes": ["read", "quarantine"]}).get_json()
    assert wide["tenant_id"] is None
    msp_level = {k["id"] for k in msp_api.all_pages("/apikeys")}
    assert wide["id"] in msp_level and made.get_json()["id"] not in msp_level
    assert made.get_json()["id"] in {k["id"] for k in msp_api.all_pages("/apikeys", tenant_id=beta)}
    assert Client(web_app, wide["key"]).get("/tenants").status_code == 200


def test_last_use_is_recorded_at_most_once_a_minute(web_app, cfg, world):
    key = make_key(cfg, world["acme"].id)
    api = Client(web_app, key)

    def last_used() -> Any:
        return read(cfg, lambda s: s.scalars(select(ApiKey)).one().last_used_at)

    assert last_used() is None
    api.get("/domains")
    first = last_used()
    assert first is not None and utcnow() - first < timedelta(seconds=30)
    api.get("/domains")
    assert last_used() == first
    with msp_scope(), tdb.session_scope(cfg) as s:  # a minute later
        s.scalars(select(ApiKey)).one().last_used_at = first - apikeys.TOUCH_INTERVAL - timedelta(seconds=1)
    api.get("/domains")
    assert last_used() > first


# --- isolation ------------------------------------------------------------------------------------------------------

@pytest.fixture
def beta_objects(cfg, world, keys) -> dict[str, Any]:
    """One object of Beta for each kind of id an API route takes."""
    beta = world["beta"].id
    with tenant_scope(beta), tdb.session_scope(cfg) as s:
        entry = add_entry(s, kind="block", value="spam@junk.example", tenant_id=beta)
        s.flush()
        entry_id = entry.id
        domain_id = s.scalars(select(Domain.id)).one()
        key_id = s.scalars(select(ApiKey.id)).one()
        dkim_key_id = generate_key(s, cfg, "beta.test", "beta1", bits=1024).id
        user_id = s.scalars(select(User.id).where(User.email == "admin@beta.test")).one()
        recipient_id = add_static(s, beta, "dave@beta.test").id
        rule_id = add_rule(s, cfg, BETA_RULE, tenant_id=beta, actor="test").id
    return {"domain_id": domain_id, "entry_id": entry_id, "key_id": key_id, "dkim_key_id": dkim_key_id,
            "user_id": user_id, "tenant_id": beta, "recipient_id": recipient_id, "rule_id": rule_id,
            "message_id": hold(cfg, beta, rcpts=("dave@beta.test",))}


#: Bodies that pass validation, so that what answers is the lookup of the object (404), not the body check (422).
BODIES = {"api.release_quarantined": {}, "api.report_quarantined": {"spam": True},
          "api.update_transport": {"host": "mx.attacker.example", "port": 25, "tls": "none"},
          "api.update_user": {"role": "user", "active": False}, "api.delete_tenant": {"confirm": "Beta"},
          "api.remove_domain": {"confirm": "beta.test"}, "api.update_rule": {"name": "x", "actions": [{"accept": {}}]}}
#: Beta's mail rule (the rule routes' object).
BETA_RULE = {"name": "Beta's rule", "what": {"items": [{"symbol": "OLE_MACRO"}]}, "actions": [{"quarantine": {}}]}


def api_rules(web_app: Any) -> Iterator[Any]:
    for rule in web_app.url_map.iter_rules():
        if rule.rule.startswith(API + "/") and rule.endpoint.startswith("api."):
            yield rule


def test_every_route_with_an_id_answers_404_for_another_tenants_object(web_app, cfg, world, keys, beta_objects):
    """Walk every /api/v1 route that takes an id, with each of its methods, as Acme (every scope) for Beta's
    objects: always 404, the same as for an id that does not exist, and Beta's objects are untouched."""
    acme = Client(web_app, keys["acme"])
    probed = []
    for rule in api_rules(web_app):
        if not rule.arguments:
            continue
        path = ARGUMENT.sub(lambda m: str(beta_objects[m.group(1)]), rule.rule[len(API):])
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            resp = acme.client.open(API + path, method=method, headers=auth(keys["acme"]),
                                    json=BODIES.get(rule.endpoint))
            body = error(resp, 404, "not_found")
            assert str(beta_objects[next(iter(rule.arguments))]) not in body["message"]
            probed.append((method, rule.rule))
    assert sorted(probed) == [  # every route with an id: a new one must be walked here too
        ("DELETE", "/api/v1/apikeys/<rowid:key_id>"), ("DELETE", "/api/v1/domains/<rowid:domain_id>"),
        ("DELETE", "/api/v1/lists/<rowid:entry_id>"), ("DELETE", "/api/v1/rules/<rowid:rule_id>"),
        ("DELETE", "/api/v1/tenants/<rowid:tenant_id>"), ("DELETE", "/api/v1/valid-recipients/<rowid:recipient_id>"),
        ("GET", "/api/v1/dkim-keys/<rowid:dkim_key_id>"),
        ("GET", "/api/v1/domains/<rowid:domain_id>"), ("GET", "/api/v1/domains/<rowid:domain_id>/removal"),
        ("GET", "/api/v1/domains/<rowid:domain_id>/transport"),
        ("GET", "/api/v1/messages/<msgid:message_id>"),
        ("GET", "/api/v1/quarantine/<msgid:message_id>"), ("GET", "/api/v1/rules/<rowid:rule_id>"),
        ("GET", "/api/v1/tenants/<rowid:tenant_id>"), ("GET", "/api/v1/tenants/<rowid:tenant_id>/export"),
        ("PATCH", "/api/v1/users/<rowid:user_id>"),
        ("POST", "/api/v1/quarantine/<msgid:message_id>/delete"),
        ("POST", "/api/v1/quarantine/<msgid:message_id>/release"),
        ("POST", "/api/v1/quarantine/<msgid:message_id>/report"),
        ("POST", "/api/v1/rules/<rowid:rule_id>/disable"), ("POST", "/api/v1/rules/<rowid:rule_id>/enable"),
        ("POST", "/api/v1/tenants/<rowid:tenant_id>/resume"), ("POST", "/api/v1/tenants/<rowid:tenant_id>/suspend"),
        ("POST", "/api/v1/users/<rowid:user_id>/reset"),
        ("PUT", "/api/v1/domains/<rowid:domain_id>/transport"), ("PUT", "/api/v1/rules/<rowid:rule_id>")]
    held = read(cfg, lambda s: s.scalars(select(Delivery.status).where(
        Delivery.message_id == beta_objects["message_id"])).all())
    assert held == ["quarantined"]
    assert read(cfg, lambda s: s.get(ListEntry, beta_objects["entry_id"])) is not None
    assert read(cfg, lambda s: s.get(ApiKey, beta_objects["key_id"]).revoked_at) is None
    assert read(cfg, lambda s: s.get(Domain, beta_objects["domain_id"]).transport_host) == "127.0.0.1"
    beta_admin = read(cfg, lambda s: s.get(User, beta_objects["user_id"]))
    assert (beta_admin.role, beta_admin.active, beta_admin.password_hash is not None) == ("tenant_admin", True, True)
    assert read(cfg, lambda s: s.get(Tenant, world["beta"].id).suspended) is False
    assert read(cfg, lambda s: s.get(ValidRecipient, beta_objects["recipient_id"])) is not None
    rule = read(cfg, lambda s: s.get(MailRule, beta_objects["rule_id"]))
    assert (rule.name, rule.active) == ("Beta's rule", True)


def test_naming_another_tenant_is_404_on_every_route_that_takes_a_tenant(acme_api, world, beta_objects):
    beta = world["beta"].id
    for path in ("/domains", "/users", "/lists", "/quarantine", "/messages", "/apikeys", "/rules"):
        error(acme_api.get(path, query_string={"tenant_id": beta}), 404, "not_found")
    error(acme_api.post("/domains", {"name": "new.test", "transport_host": "mx.new.test", "tenant_id": beta}),
          404, "not_found")
    error(acme_api.post("/lists", {"kind": "allow", "value": "x@y.example", "tenant_id": beta}), 404, "not_found")
    error(acme_api.post("/apikeys", {"scopes": ["read"], "tenant_id": beta}), 404, "not_found")


def test_msp_only_routes_are_404_for_tenant_keys(acme_api, msp_api, world):
    error(acme_api.get("/tenants"), 404, "not_found")
    assert [t["name"] for t in msp_api.get("/tenants").get_json()["items"]] == ["Acme", "Beta"]


def test_a_tenant_key_sees_its_tenant_and_an_msp_key_every_tenant(acme_api, msp_api, world, beta_objects):
    acme, beta = world["acme"].id, world["beta"].id
    assert {d["name"] for d in acme_api.all_pages("/domains")} == {"acme.test", "acme2.test"}
    assert {d["name"] for d in msp_api.all_pages("/domains")} == {"acme.test", "acme2.test", "beta.test"}
    assert {d["name"] for d in msp_api.all_pages("/domains", tenant_id=beta)} == {"beta.test"}
    assert {u["email"] for u in acme_api.all_pages("/users")} == {"admin@acme.test", "auditor@acme.test",
                                                                  "user@acme.test"}
    assert "admin@msp.test" in {u["email"] for u in msp_api.all_pages("/users")}
    assert all("password" not in json.dumps(u) for u in msp_api.all_pages("/users"))
    assert acme_api.all_pages("/lists") == []
    assert [e["value"] for e in msp_api.all_pages("/lists", tenant_id=beta)] == ["spam@junk.example"]
    assert msp_api.all_pages("/lists") == []  # the MSP-wide list
    assert acme_api.all_pages("/quarantine") == [] and acme_api.all_pages("/messages") == []
    assert [m["id"] for m in msp_api.all_pages("/quarantine")] == [beta_objects["message_id"]]
    assert msp_api.all_pages("/quarantine", tenant_id=acme) == []
    assert msp_api.get(f"/messages/{beta_objects['message_id']}").status_code == 200


# --- resources ------------------------------------------------------------------------------------------------------

def test_domains_are_added_and_read_back(acme_api, msp_api, cfg, world):
    made = acme_api.post("/domains", {"name": "New.Acme.test", "transport_host": "mail.acme.test",
                                      "transport_port": 2525, "transport_tls": "required"})
    assert made.status_code == 201, made.get_json()
    domain = made.get_json()
    assert domain["name"] == "new.acme.test" and domain["tenant_id"] == world["acme"].id
    assert acme_api.get(f"/domains/{domain['id']}").get_json() == domain
    body = error(acme_api.post("/domains", {"name": "new.acme.test", "transport_host": "x.test"}), 422, "validation")
    assert "already registered" in body["message"]
    body = error(msp_api.post("/domains", {"name": "msp.test", "transport_host": "x.test"}), 422, "validation")
    assert "tenant_id" in body["fields"]
    made = msp_api.post("/domains", {"name": "beta2.test", "transport_host": "x.test", "tenant_id": world["beta"].id})
    assert made.status_code == 201 and made.get_json()["tenant_id"] == world["beta"].id


def test_tenant_list_entries_are_added_and_removed(acme_api, msp_api, cfg, world):
    made = acme_api.post("/lists", {"kind": "block", "value": "@Junk.example", "comment": "noise"})
    assert made.status_code == 201, made.get_json()
    entry = made.get_json()
    assert (entry["kind"], entry["value_type"], entry["value"]) == ("block", "domain", "junk.example")
    assert entry["created_by"].startswith("api key mw_") and entry["tenant_id"] == world["acme"].id
    assert [e["id"] for e in acme_api.all_pages("/lists", kind="block")] == [entry["id"]]
    assert acme_api.all_pages("/lists", kind="allow") == []
    msp_entry = msp_api.post("/lists", {"kind": "block", "value": "198.51.100.0/24"}).get_json()
    assert msp_entry["tenant_id"] is None
    error(acme_api.delete(f"/lists/{msp_entry['id']}"), 404, "not_found")  # the MSP's list is not the tenant's
    assert acme_api.delete(f"/lists/{entry['id']}").status_code == 204
    assert acme_api.all_pages("/lists") == []
    error(acme_api.delete(f"/lists/{entry['id']}"), 404, "not_found")
    assert msp_api.delete(f"/lists/{msp_entry['id']}").status_code == 204


def test_quarantine_release_through_the_api_delivers_the_held_mail(env, web_app, cfg, factory, sink):
    from tests.integration.test_quarantine import _run_worker

    acme = factory.tenant("Acme", ("acme.test",), transport_port=sink.port)
    api = Client(web_app, make_key(cfg, acme.id))
    held = hold(cfg, acme.id, rcpts=("bob@acme.test",), subject="Held for Bob")
    (item,) = api.get("/quarantine").get_json()["items"]
    assert (item["id"], item["kind"], item["rcpts"], item["subject"]) == (held, "spam", ["bob@acme.test"],
                                                                          "Held for Bob")
    detail = api.get(f"/quarantine/{held}").get_json()
    assert detail["findings"] == [{"symbol": "MIME_DEFECT", "score": 9.0, "reason": "broken"}]
    assert detail["recipients"] == [{"rcpt": "bob@acme.test", "status": "quarantined"}]
    assert "Buy now." in detail["preview_text"] and {"name": "Subject", "value": "Held for Bob"} in detail["headers"]

    resp = api.post(f"/quarantine/{held}/release")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"message_id": held, "rcpts": ["bob@acme.test"], "to": None}
    _run_worker(env)
    (got,) = sink.wait_count(1)
    assert got.rcpts == ["bob@acme.test"] and b"Subject: Held for Bob" in got.data
    assert api.get("/quarantine").get_json()["items"] == []
    body = error(api.post(f"/quarantine/{held}/release"), 409, "conflict")
    assert "no longer in the quarantine" in body["message"]
    events = api.get(f"/messages/{held}").get_json()["events"]
    released = [e for e in events if e["kind"] == "released"]
    assert len(released) == 1 and released[0]["detail"].startswith("by api key mw_")


def test_quarantine_delete_report_and_the_virus_confirmation(web_app, cfg, world, acme_api):
    acme = world["acme"].id
    spam = hold(cfg, acme)
    virus = hold(cfg, acme, kind="virus", score=100)
    assert acme_api.post(f"/quarantine/{spam}/delete").get_json() == {"message_id": spam, "rcpts": ["bob@acme.test"]}
    error(acme_api.post(f"/quarantine/{spam}/delete"), 409, "conflict")
    assert [i["id"] for i in acme_api.all_pages("/quarantine")] == [virus]
    assert {i["id"] for i in acme_api.all_pages("/quarantine", held="false")} == {spam, virus}
    report = acme_api.post(f"/quarantine/{spam}/report", {"spam": True})
    assert report.status_code == 202 and report.get_json()["status"] == "queued"
    body = error(acme_api.post(f"/quarantine/{virus}/release", {}), 409, "confirmation_required")
    assert "virus" in body["message"]
    assert read(cfg, lambda s: s.scalars(select(Delivery.status).where(Delivery.message_id == virus)).all()) == [
        "quarantined"]
    released = acme_api.post(f"/quarantine/{virus}/release", {"confirm_virus": True})
    assert released.status_code == 200 and released.get_json()["rcpts"] == ["bob@acme.test"]
    copy = hold(cfg, acme)
    error(acme_api.post(f"/quarantine/{copy}/release", {"to": "not an address"}), 422, "validation")
    to = acme_api.post(f"/quarantine/{copy}/release", {"to": "security@acme.test"}).get_json()
    assert to == {"message_id": copy, "rcpts": ["security@acme.test"], "to": "security@acme.test"}


def test_message_tracking_filters_and_detail(acme_api, cfg, world):
    acme = world["acme"].id
    base = utcnow() - timedelta(hours=5)
    first = hold(cfg, acme, sender="a@junk.example", subject="Cheap pills", received_at=base)
    second = hold(cfg, acme, sender="b@other.example", subject="Invoice", rcpts=("carol@acme.test",),
                  received_at=base + timedelta(hours=1))
    queue_id = read(cfg, lambda s: s.get(Message, second).queue_id)

    def ids(**params: Any) -> list[str]:
        return [m["id"] for m in acme_api.all_pages("/messages", **params)]

    assert ids() == [second, first]
    assert ids(sender="JUNK") == [first]
    assert ids(rcpt="Carol@acme.test") == [second]
    assert ids(subject="pills") == [first]
    assert ids(queue_id=queue_id) == [second]
    assert ids(since=(base + timedelta(minutes=30)).isoformat()) == [second]
    assert ids(until=(base + timedelta(minutes=30)).isoformat()) == [first]
    assert ids(verdict="quarantine") == [second, first] and ids(verdict="deliver") == []
    assert ids(client_ip="203.0.113.9") == [second, first] and ids(client_ip="192.0.2.1") == []
    assert ids(rcpt="carol@acme.test", status="quarantined") == [second] and ids(status="delivered") == []
    error(acme_api.get("/messages", query_string={"verdict": "maybe"}), 422, "validation")
    error(acme_api.get("/messages", query_string={"tenant": 2}), 422, "validation")  # a typo is not ignored
    detail = acme_api.get(f"/messages/{first}").get_json()
    assert detail["verdict"] == "quarantine" and detail["quarantine_kind"] == "spam"
    assert detail["findings"] == [{"symbol": "MIME_DEFECT", "score": 9.0, "reason": "broken"}]
    assert [(d["rcpt"], d["status"]) for d in detail["deliveries"]] == [("bob@acme.test", "quarantined")]
    assert detail["events"] and all({"at", "kind", "detail", "delivery_id"} <= set(e) for e in detail["events"])
    error(acme_api.get("/messages/NOSUCHMESSAGE"), 404, "not_found")


def test_cursor_paging_returns_every_item_exactly_once(acme_api, cfg, world):
    """Eleven held mails, three of them at the very same instant, paged two at a time by both list routes."""
    acme = world["acme"].id
    base = utcnow() - timedelta(hours=20)
    times = [base + timedelta(minutes=i) for i in range(8)] + [base + timedelta(minutes=30)] * 3
    made = {hold(cfg, acme, received_at=t) for t in times}
    for path in ("/quarantine", "/messages"):
        got = [m["id"] for m in acme_api.all_pages(path, limit=2)]
        assert len(got) == len(made) and set(got) == made, path
        received = [m["received_at"] for m in acme_api.all_pages(path, limit=3)]
        assert received == sorted(received, reverse=True)
    for path in ("/domains", "/users"):
        assert len(acme_api.all_pages(path, limit=1)) == len(acme_api.all_pages(path, limit=500))
    error(acme_api.get("/messages", query_string={"cursor": "garbage"}), 422, "validation")
    error(acme_api.get("/domains", query_string={"cursor": "garbage"}), 422, "validation")
    error(acme_api.get("/quarantine", query_string={"limit": 0}), 422, "validation")


# --- errors, limits, the document -----------------------------------------------------------------------------------

def test_bad_payloads_are_json_errors_with_the_field_messages(web_app, acme_api, keys):
    body = error(acme_api.post("/domains", {}), 422, "validation")
    assert set(body["fields"]) == {"name", "transport_host"}
    body = error(acme_api.post("/lists", {"kind": "maybe", "value": "x@y.example", "extra": 1}), 422, "validation")
    assert set(body["fields"]) == {"kind", "extra"}
    body = error(acme_api.post("/lists", {"kind": "allow", "value": "0.0.0.0/4"}), 422, "validation")
    assert "too broad" in body["message"]
    body = error(acme_api.post("/domains", {"name": "-bad-", "transport_host": "x"}), 422, "validation")
    assert "not a valid domain" in body["message"]
    resp = acme_api.client.post(f"{API}/lists", data="{not json", content_type="application/json",
                                headers=auth(keys["acme"]))
    error(resp, 400, "bad_request")
    error(acme_api.post("/quarantine/X/report", {"spam": "perhaps"}), 422, "validation")
    error(acme_api.get("/quarantine", query_string={"since": "yesterday"}), 422, "validation")


def test_unknown_routes_and_methods_answer_json_not_html(web_app, acme_api):
    error(acme_api.get("/nothing/here"), 404, "not_found")
    error(web_app.test_client().get(f"{API}/nothing"), 404, "not_found")
    resp = acme_api.client.put(f"{API}/domains", headers=auth(acme_api.key), json={})
    error(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["Allow"]
    assert web_app.test_client().get("/nothing/here").mimetype == "text/html"  # the consoles keep their pages


def test_an_unexpected_failure_is_a_json_500_without_a_traceback(web_app, acme_api, monkeypatch):
    from tenants import tracking

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(tracking, "search", broken)
    web_app.testing = False  # as in production: the error handler answers instead of the exception propagating
    body = error(acme_api.get("/messages"), 500, "internal")
    assert "secret" not in json.dumps(body) and "Traceback" not in json.dumps(body)


def test_each_key_is_rate_limited_in_a_fixed_window(web_app, cfg, world, keys, monkeypatch):
    import app.api.auth

    web_app.config["MAILWARD_API_RATE_LIMIT"] = 3
    window_start = 1_800_000_000
    monkeypatch.setattr(app.api.auth, "clock", lambda: window_start + 20.5)  # 39.5 s left in a 60 s window
    acme, beta = Client(web_app, keys["acme"]), Client(web_app, keys["beta"])
    assert [acme.get("/domains").status_code for _ in range(3)] == [200, 200, 200]
    resp = acme.get("/domains")
    body = error(resp, 429, "rate_limited")
    assert resp.headers["Retry-After"] == "40" and "retry after 40 s" in body["message"]
    assert beta.get("/domains").status_code == 200  # per key
    error(acme.post("/lists", {"kind": "allow", "value": "x@y.example"}), 429, "rate_limited")
    monkeypatch.setattr(app.api.auth, "clock", lambda: window_start + 60)  # the next window
    assert acme.get("/domains").status_code == 200


def test_the_openapi_document_is_served_and_describes_every_route(web_app):
    resp = web_app.test_client().get(f"{API}/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    spec = json.loads(resp.get_data(as_text=True))
    assert spec["openapi"].startswith("3.") and spec["info"]["title"] == "Mailward"
    assert spec["components"]["securitySchemes"]["apiKey"] == {"type": "http", "scheme": "bearer"}
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops
                  if method in ("get", "post", "delete", "put", "patch")}
    routed = {(ARGUMENT.sub(r"{\1}", r.rule), m) for r in api_rules(web_app)
              for m in (r.methods or set()) - {"HEAD", "OPTIONS"}}
    assert documented == routed
    assert ("/api/v1/quarantine/{message_id}/release", "POST") in documented


def test_every_api_view_declares_its_scope(web_app):
    for rule in api_rules(web_app):
        access = access_of(web_app.view_functions[rule.endpoint])
        assert access is not None and access.api_scope in apikeys.SCOPES and not access.roles, rule.endpoint
        wanted = "read" if rule.methods and "GET" in rule.methods else access.api_scope
        assert access.api_scope == wanted, rule.endpoint


# --- the document against the running API ---------------------------------------------------------------------------

@pytest.fixture
def api_schema(web_app, cfg, world, keys, beta_objects) -> Any:
    """The API's own OpenAPI document, loaded from the running WSGI app, with Acme's held mail and Beta's objects."""
    hold(cfg, world["acme"].id)
    web_app.config["MAILWARD_API_RATE_LIMIT"] = 1_000_000
    return schemathesis.openapi.from_wsgi(f"{API}/openapi.json", web_app)


def test_the_api_conforms_to_its_openapi_document(api_schema, keys):
    """A bounded schemathesis run with Acme's key over every operation, with valid and with invalid input: no 5xx,
    every answer (status, content type, body) is one the document describes, and invalid input is refused."""
    failures: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=CONFORMANCE_EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate))
            def run(case: Any) -> None:
                # A negative case may leave out the Authorization header the security scheme requires: sending
                # the key anyway would undo that mutation and, when the case's other mutations cannot reach the
                # wire (an empty array in the query string serialises to nothing), turn it into a valid request
                # that schemathesis then counts as "invalid data accepted". Without the key it must get a 401.
                mutated_auth = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
                case.call_and_validate(headers={} if mutated_auth else auth(keys["acme"]),
                                       excluded_checks=EXCLUDED_CHECKS)

            try:
                run()
            except Exception as exc:  # every operation's failures, then one assertion
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
