"""The REST API's admin resources: domain transports, statistics and usage (from the real roll-up), the audit log,
DKIM keys, and the access audit of an API key opening one message. Each with a tenant key and an MSP key, its
scopes, another tenant's objects (404, never listed) and bad input (422 naming the field)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tenants import audit as audit_log
from tenants.models import AuditEntry, DkimKey, MessageView, utcnow
from tenants.platform import db as tdb
from tenants.scope import msp_scope
from tests.fixtures.api import Client, error, make_key
from tests.support.held import hold
from tests.support.web import domain_row, policy_version, read
from worker import rollup


def domain_id(cfg: Any, name: str) -> int:
    return domain_row(cfg, name)[0]


def entries(cfg: Any, action: str) -> list[AuditEntry]:
    return read(cfg, lambda s: list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)
                                              .order_by(AuditEntry.id))))


# --- transports -----------------------------------------------------------------------------------------------------

def test_a_tenant_key_reads_and_replaces_its_domains_transport(acme_api, cfg, world):
    acme_test = domain_id(cfg, "acme.test")
    got = acme_api.get(f"/domains/{acme_test}/transport")
    assert got.status_code == 200, got.get_json()
    assert got.get_json() == {"domain_id": acme_test, "domain": "acme.test", "host": "127.0.0.1", "port": 25,
                              "tls": "none"}
    version = policy_version(cfg)
    resp = acme_api.put(f"/domains/{acme_test}/transport", {"host": "mail.acme.test", "port": 2525,
                                                             "tls": "required"})
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["host"] == "mail.acme.test"
    assert domain_row(cfg, "acme.test")[1:] == ("mail.acme.test", 2525, "required")
    assert acme_api.get(f"/domains/{acme_test}/transport").get_json()["port"] == 2525
    assert policy_version(cfg) > version  # the ingresses reload
    (entry,) = entries(cfg, "domain.transport")
    assert entry.actor.startswith("api key mw_") and entry.tenant_id == world["acme"].id
    assert entry.target == "domain acme.test" and "mail.acme.test:2525" in entry.detail
    defaults = acme_api.put(f"/domains/{acme_test}/transport", {"host": "[2001:db8::25]"}).get_json()
    assert (defaults["host"], defaults["port"], defaults["tls"]) == ("2001:db8::25", 25, "opportunistic")


def test_an_msp_key_replaces_any_tenants_transport_and_the_entry_is_that_tenants(msp_api, cfg, world):
    beta_test = domain_id(cfg, "beta.test")
    resp = msp_api.put(f"/domains/{beta_test}/transport", {"host": "mx.beta.test", "port": 587, "tls": "none"})
    assert resp.status_code == 200, resp.get_json()
    assert domain_row(cfg, "beta.test")[1:] == ("mx.beta.test", 587, "none")
    (entry,) = entries(cfg, "domain.transport")
    assert entry.tenant_id == world["beta"].id and entry.actor.startswith("api key mw_")


def test_bad_transports_are_422_naming_the_field_and_change_nothing(acme_api, cfg, world):
    path = f"/domains/{domain_id(cfg, 'acme.test')}/transport"
    for body, field in (({"host": "", "port": 25}, "host"), ({"host": "a b", "port": 25}, "host"),
                        ({"host": "mx.acme.test", "port": 0}, "port"),
                        ({"host": "mx.acme.test", "tls": "maybe"}, "tls"),
                        ({"port": 25}, "host"), ({"host": "mx.acme.test", "extra": 1}, "extra")):
        body_out = error(acme_api.put(path, body), 422, "validation")
        assert field in body_out["fields"], (body, body_out)
    assert domain_row(cfg, "acme.test")[1:] == ("127.0.0.1", 25, "none")
    assert entries(cfg, "domain.transport") == []


def test_a_read_key_cannot_replace_a_transport(web_app, cfg, world):
    reader = Client(web_app, make_key(cfg, world["acme"].id, "read"))
    path = f"/domains/{domain_id(cfg, 'acme.test')}/transport"
    assert reader.get(path).status_code == 200
    body = error(reader.put(path, {"host": "evil.example"}), 403, "forbidden_scope")
    assert "write" in body["message"]
    assert domain_row(cfg, "acme.test")[1] == "127.0.0.1"


def test_another_tenants_transport_is_404_to_read_and_to_replace(beta_api, cfg, world):
    """Beta's key on Acme's domain: the same 404 as for a domain that does not exist, and nothing changes."""
    acme_test = domain_id(cfg, "acme.test")
    error(beta_api.get(f"/domains/{acme_test}/transport"), 404, "not_found")
    body = error(beta_api.put(f"/domains/{acme_test}/transport", {"host": "mx.attacker.example"}), 404, "not_found")
    assert "acme" not in json.dumps(body).lower()
    assert domain_row(cfg, "acme.test")[1] == "127.0.0.1"
    error(beta_api.get("/domains/999999/transport"), 404, "not_found")


# --- statistics and usage -------------------------------------------------------------------------------------------

@pytest.fixture
def rolled_up(cfg, world) -> dict[str, Any]:
    """Two held mails of Acme (spam and a virus) and one of Beta, three hours ago, counted by the real roll-up."""
    acme, beta = world["acme"].id, world["beta"].id
    at = (utcnow() - timedelta(hours=3)).replace(minute=10, second=0, microsecond=0)
    hold(cfg, acme, received_at=at)
    hold(cfg, acme, kind="virus", score=100, received_at=at + timedelta(minutes=1), rcpts=("carol@acme.test",),
         findings=[("CLAM_VIRUS", 100.0, "Eicar-Test-Signature")])
    hold(cfg, beta, rcpts=("dave@beta.test",), sender="other@spam.example", received_at=at)
    report = rollup.rollup(cfg, now=utcnow())
    assert report.messages == 3
    return {"acme": acme, "beta": beta, "at": at, "month": at.strftime("%Y-%m")}


def test_statistics_of_a_tenant_key_are_its_own_tenants(acme_api, beta_api, rolled_up):
    resp = acme_api.get("/statistics")
    assert resp.status_code == 200, resp.get_json()
    rep = resp.get_json()
    assert rep["tenant_id"] == rolled_up["acme"] and rep["direction"] is None
    total = rep["total"]
    assert (total["mails"], total["spam"], total["virus"], total["delivered"]) == (2, 1, 1, 0)
    assert sum(h["mails"] for h in rep["hours"]) == 2 and len(rep["hours"]) == 24
    assert [h["label"] for h in rep["hours"] if h["mails"]] == [rolled_up["at"].strftime("%H")]
    assert sum(d["mails"] for d in rep["days"]) == 2
    assert [(d["tenant"], d["domain"], d["mails"]) for d in rep["domains"]] == [("Acme", "acme.test", 2)]
    assert rep["tops"]["virus"] == [{"key": "Eicar-Test-Signature", "count": 1}]
    assert rep["tops"]["sender"] == [{"key": "spammer@junk.example", "count": 2}]
    assert {e["key"] for e in rep["tops"]["rcpt"]} == {"bob@acme.test", "carol@acme.test"}
    assert rep["tops"]["spam_source"] == [{"key": "203.0.113.9", "count": 1}]
    beta = beta_api.get("/statistics").get_json()
    assert beta["total"]["mails"] == 1 and [d["domain"] for d in beta["domains"]] == ["beta.test"]
    assert "spammer@junk.example" not in json.dumps(beta)  # Acme's senders are never in Beta's numbers
    error(beta_api.get("/statistics", query_string={"tenant_id": rolled_up["acme"]}), 404, "not_found")


def test_statistics_of_an_msp_key_cover_every_tenant_or_one(msp_api, rolled_up):
    everything = msp_api.get("/statistics").get_json()
    assert everything["tenant_id"] is None and everything["total"]["mails"] == 3
    assert {d["tenant"] for d in everything["domains"]} == {"Acme", "Beta"}
    beta = msp_api.get("/statistics", query_string={"tenant_id": rolled_up["beta"]}).get_json()
    assert beta["total"]["mails"] == 1 and beta["tops"]["sender"] == [{"key": "other@spam.example", "count": 1}]
    day = rolled_up["at"].date().isoformat()
    one_day = msp_api.get("/statistics", query_string={"first": day, "last": day, "direction": "in"}).get_json()
    assert (one_day["first"], one_day["last"], one_day["direction"]) == (day, day, "inbound")
    assert [d["label"] for d in one_day["days"]] == [day] and one_day["total"]["mails"] == 3
    assert msp_api.get("/statistics", query_string={"direction": "out"}).get_json()["total"]["mails"] == 0
    error(msp_api.get("/statistics", query_string={"tenant_id": 999999}), 404, "not_found")


def test_usage_per_tenant_and_month(acme_api, msp_api, rolled_up):
    month = rolled_up["month"]
    mine = acme_api.get("/usage").get_json()["items"]
    assert [(u["tenant"], u["month"], u["mails"], u["mailboxes"]) for u in mine] == [("Acme", month, 2, 2)]
    assert mine[0]["bytes"] > 0
    assert {u["tenant"] for u in msp_api.get("/usage").get_json()["items"]} == {"Acme", "Beta"}
    beta = msp_api.get("/usage", query_string={"tenant_id": rolled_up["beta"], "first": month, "last": month})
    assert [(u["tenant"], u["mails"]) for u in beta.get_json()["items"]] == [("Beta", 1)]
    assert msp_api.get("/usage", query_string={"first": "2999-01"}).get_json()["items"] == []
    error(acme_api.get("/usage", query_string={"tenant_id": rolled_up["beta"]}), 404, "not_found")


def test_bad_ranges_are_422_naming_the_field(acme_api, world):
    for path, query, field in (
        ("/statistics", {"first": "2026-13-01"}, "first"), ("/statistics", {"last": "yesterday"}, "last"),
        ("/statistics", {"first": "2026-02-01", "last": "2026-01-01"}, "first"),
        ("/statistics", {"first": "2020-01-01", "last": "2026-01-01"}, "last"),
        ("/statistics", {"direction": "sideways"}, "direction"), ("/statistics", {"tenant": 1}, "tenant"),
        ("/usage", {"first": "2026-1"}, "first"), ("/usage", {"last": "2026-13"}, "last"),
        ("/usage", {"first": "2026-05", "last": "2026-04"}, "first"),
    ):
        body = error(acme_api.get(path, query_string=query), 422, "validation")
        assert field in body["fields"], (path, query, body)


def test_statistics_need_the_read_scope(web_app, cfg, world):
    writer = Client(web_app, make_key(cfg, world["acme"].id, "write"))
    for path in ("/statistics", "/usage", "/audit", "/dkim-keys"):
        error(writer.get(path), 403, "forbidden_scope")


# --- audit log ------------------------------------------------------------------------------------------------------

@pytest.fixture
def logged(cfg, world) -> dict[str, int]:
    """Three entries of Acme, one of Beta and one of the MSP alone."""
    acme, beta = world["acme"].id, world["beta"].id
    with msp_scope(), tdb.session_scope(cfg) as s:
        for i in range(3):
            audit_log.record(s, actor="admin@acme.test", action=f"list.block.add{i}", target=f"x{i}@junk.example",
                             tenant_id=acme)
        audit_log.record(s, actor="admin@beta.test", action="domain.transport", target="domain beta.test",
                         tenant_id=beta)
        audit_log.record(s, actor="admin@msp.test", action="policy.update", target="MSP baseline", tenant_id=None)
    return {"acme": acme, "beta": beta}


def test_a_tenant_key_reads_its_tenants_audit_entries_page_by_page(acme_api, beta_api, logged):
    got = acme_api.all_pages("/audit", limit=2)
    assert [e["action"] for e in got] == ["list.block.add2", "list.block.add1", "list.block.add0"]  # newest first
    assert all(e["tenant_id"] == logged["acme"] for e in got)
    assert [e["target"] for e in beta_api.all_pages("/audit")] == ["domain beta.test"]
    assert acme_api.all_pages("/audit", action="list.block.add1") == [got[1]]
    assert acme_api.all_pages("/audit", actor="BETA") == []
    assert acme_api.all_pages("/audit", until=(utcnow() - timedelta(hours=1)).isoformat()) == []
    assert len(acme_api.all_pages("/audit", since=(utcnow() - timedelta(hours=1)).isoformat())) == 3
    error(acme_api.get("/audit", query_string={"tenant_id": logged["beta"]}), 404, "not_found")


def test_an_msp_key_reads_every_audit_entry_or_one_tenants(msp_api, logged):
    every = msp_api.all_pages("/audit")
    assert len(every) == 5 and {e["tenant_id"] for e in every} == {logged["acme"], logged["beta"], None}
    beta = msp_api.all_pages("/audit", tenant_id=logged["beta"])
    assert [(e["actor"], e["action"]) for e in beta] == [("admin@beta.test", "domain.transport")]


def test_bad_audit_filters_are_422_naming_the_field(acme_api, logged):
    for query, field in (({"since": "yesterday"}, "since"), ({"cursor": "abc"}, "cursor"),
                         ({"limit": 0}, "limit"), ({"action": "x" * 61}, "action"), ({"who": "me"}, "who")):
        body = error(acme_api.get("/audit", query_string=query), 422, "validation")
        assert field in body["fields"], (query, body)


# --- DKIM keys ------------------------------------------------------------------------------------------------------

def test_a_tenant_key_generates_lists_and_reads_dkim_keys(acme_api, cfg, world):
    resp = acme_api.post("/dkim-keys", {"domain": "Acme.test", "selector": "MW1", "bits": 1024})
    assert resp.status_code == 201, resp.get_json()
    key = resp.get_json()
    assert (key["domain"], key["selector"], key["bits"], key["active"]) == ("acme.test", "mw1", 1024, True)
    assert key["tenant_id"] == world["acme"].id and key["record_name"] == "mw1._domainkey.acme.test"
    row = read(cfg, lambda s: s.get(DkimKey, key["id"]))
    assert key["record_value"] == f"v=DKIM1; k=rsa; p={row.public_key}"
    assert row.private_key_enc not in json.dumps(key) and "private" not in json.dumps(key)
    second = acme_api.post("/dkim-keys", {"domain": "acme2.test", "selector": "mw1", "bits": 1024}).get_json()
    listed = acme_api.all_pages("/dkim-keys", limit=1)
    assert [k["id"] for k in listed] == [key["id"], second["id"]]
    assert acme_api.get(f"/dkim-keys/{key['id']}").get_json() == key
    made = entries(cfg, "dkim.generate")
    entry = made[0]
    assert len(made) == 2 and entry.actor.startswith("api key mw_") and entry.target == "domain acme.test"
    assert entry.tenant_id == world["acme"].id
    body = error(acme_api.post("/dkim-keys", {"domain": "acme.test", "selector": "mw1", "bits": 1024}),
                 422, "validation")
    assert "selector" in body["fields"] and "already" in body["message"]


def test_an_msp_key_generates_keys_for_the_owning_tenant(msp_api, cfg, world):
    resp = msp_api.post("/dkim-keys", {"domain": "beta.test", "selector": "s1", "bits": 1024})
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["tenant_id"] == world["beta"].id
    assert [k["domain"] for k in msp_api.all_pages("/dkim-keys", tenant_id=world["beta"].id)] == ["beta.test"]
    assert msp_api.all_pages("/dkim-keys", tenant_id=world["acme"].id) == []
    body = error(msp_api.post("/dkim-keys", {"domain": "nobody.test", "selector": "s1"}), 404, "not_found")
    assert "nobody" not in body["message"]


def test_another_tenants_dkim_keys_are_never_seen_nor_made(acme_api, beta_api, cfg, world):
    """Beta's key cannot read Acme's DKIM key, list it, or make a key for Acme's domain; the answer for Acme's
    domain is the one for an unregistered domain, and it names no owner."""
    acme_key = acme_api.post("/dkim-keys", {"domain": "acme.test", "selector": "mw1", "bits": 1024}).get_json()
    error(beta_api.get(f"/dkim-keys/{acme_key['id']}"), 404, "not_found")
    assert beta_api.all_pages("/dkim-keys") == []
    stolen = error(beta_api.post("/dkim-keys", {"domain": "acme.test", "selector": "evil", "bits": 1024}),
                   404, "not_found")
    unknown = error(beta_api.post("/dkim-keys", {"domain": "unknown.test", "selector": "evil", "bits": 1024}),
                    404, "not_found")
    assert stolen == unknown and "acme" not in json.dumps(stolen).lower()
    assert read(cfg, lambda s: s.scalars(select(DkimKey.selector)).all()) == ["mw1"]
    error(beta_api.get("/dkim-keys", query_string={"tenant_id": world["acme"].id}), 404, "not_found")


def test_bad_dkim_requests_are_422_and_a_read_key_makes_none(web_app, acme_api, cfg, world):
    for body, field in (({"domain": "acme.test", "selector": "mw1", "bits": 1000}, "bits"),
                        ({"domain": "acme.test", "selector": "bad selector!"}, "selector"),
                        ({"selector": "mw1"}, "domain"), ({"domain": "acme.test"}, "selector")):
        out = error(acme_api.post("/dkim-keys", body), 422, "validation")
        assert field in out["fields"], (body, out)
    reader = Client(web_app, make_key(cfg, world["acme"].id, "read"))
    error(reader.post("/dkim-keys", {"domain": "acme.test", "selector": "mw1"}), 403, "forbidden_scope")
    assert read(cfg, lambda s: s.scalars(select(DkimKey)).all()) == []


# --- envelope-level access auditing ---------------------------------------------------------------------------------

def test_opening_a_message_through_the_api_is_audited_like_the_web(acme_api, msp_api, keys, cfg, world):
    acme = world["acme"].id
    held = hold(cfg, acme, subject="Private matter")
    assert acme_api.get(f"/messages/{held}").status_code == 200
    (view,) = entries(cfg, "tracking.view")
    prefix = "_".join(keys["acme"].split("_")[:2])  # mw_<hex>; the secret may hold "_" too
    assert (view.actor, view.target, view.tenant_id) == (f"api key {prefix}", f"message {held}", acme)
    views = read(cfg, lambda s: [v.user_email for v in s.scalars(select(MessageView)
                                                                 .where(MessageView.message_id == held))])
    assert views == [f"api key {prefix}".lower()]
    assert acme_api.get(f"/quarantine/{held}").status_code == 200
    (qview,) = entries(cfg, "quarantine.view")
    assert qview.actor == f"api key {prefix}" and qview.tenant_id == acme and "Private matter" in qview.detail
    assert msp_api.get(f"/messages/{held}").status_code == 200
    assert [e.tenant_id for e in entries(cfg, "tracking.view")] == [acme, acme]  # the MSP's read is Acme's entry
    assert len(read(cfg, lambda s: s.scalars(select(MessageView).where(MessageView.message_id == held)).all())) == 2
    listed = [e["action"] for e in acme_api.all_pages("/audit")]
    assert listed.count("tracking.view") == 2 and "quarantine.view" in listed


def test_a_refused_read_records_no_access(beta_api, cfg, world):
    held = hold(cfg, world["acme"].id)
    error(beta_api.get(f"/messages/{held}"), 404, "not_found")
    error(beta_api.get(f"/quarantine/{held}"), 404, "not_found")
    assert entries(cfg, "tracking.view") == [] and entries(cfg, "quarantine.view") == []
    assert read(cfg, lambda s: s.scalars(select(MessageView)).all()) == []


def test_the_domain_row_is_untouched_by_reads(acme_api, cfg, world):
    """GET of a transport writes nothing: no audit entry, no change of the row."""
    before = domain_row(cfg, "acme2.test")
    assert acme_api.get(f"/domains/{domain_id(cfg, 'acme2.test')}/transport").status_code == 200
    assert domain_row(cfg, "acme2.test") == before and entries(cfg, "domain.transport") == []
