"""Issue 12: the API reference page at ``/api/v1/docs``, API key expiry (portal, console, API, CLI; an expired key is
401 ``key_expired``), migration 0011 matching the models, and the copy buttons (a static script: the CSP allows no
inline one) next to a new key and the domain page's DNS records.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import inspect, select, update

from tenants import apikeys
from tenants.exceptions import ValidationError
from tenants.models import ApiKey, AuditEntry, Base
from tenants.platform import db as tdb
from tenants.scope import msp_scope
from tests.fixtures.api import API, Client, auth, error, make_key
from tests.support.servers import run_cli
from tests.support.web import domain_row, post_form, read, sign_in, text

TOMORROW = (datetime.now(UTC) + timedelta(days=1)).date()


def expire_now(cfg: Any, prefix: str) -> None:
    """Move a key's expiry into the past, as time passing would."""
    with msp_scope(), tdb.session_scope(cfg) as s:
        s.execute(update(ApiKey).where(ApiKey.prefix == prefix)
                  .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))


# --- the reference page -------------------------------------------------------------------------------------------

def test_api_docs_page_is_public_lists_known_routes_and_schemas_and_runs_no_script(web_app, world):
    resp = web_app.test_client().get(f"{API}/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = text(resp)
    assert "<script" not in page and "script-src 'self'" in resp.headers["Content-Security-Policy"]
    op = re.search(r'<article class="operation" id="delete-api-v1-domains-domain_id">(.*?)</article>', page, re.S)
    assert op, "DELETE /api/v1/domains/{domain_id} is listed"
    assert "<code>/api/v1/domains/{domain_id}</code>" in op.group(1) and 'href="#schema-DomainRemove"' in op.group(1)
    assert "domain_id (path)" in op.group(1)
    assert 'id="get-api-v1-quarantine"' in page and 'id="post-api-v1-apikeys"' in page
    schema = re.search(r'<article class="schema" id="schema-ApiKeyCreate">(.*?)</article>', page, re.S)
    assert schema and "<code>expires_on</code>" in schema.group(1) and "string (date)" in schema.group(1)
    assert f'href="{API}/openapi.json"' in page


def test_api_docs_follow_the_openapi_document(web_app, world):
    """Every path of the document is on the page (nothing is kept by hand)."""
    c = web_app.test_client()
    spec = c.get(f"{API}/openapi.json").get_json()
    page = text(c.get(f"{API}/docs"))
    for path, item in spec["paths"].items():
        for method in ("get", "post", "put", "patch", "delete"):
            if method in item:
                assert f'<span class="badge method-{method}">{method.upper()}</span> <code>{path}</code>' in page


# --- expiry in the service ----------------------------------------------------------------------------------------

def test_parse_expiry_takes_a_future_date_and_refuses_the_rest():
    now = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
    assert apikeys.parse_expiry("2026-12-08", now) == datetime(2026, 12, 8, tzinfo=UTC)
    assert apikeys.parse_expiry(date(2027, 1, 31), now) == datetime(2027, 1, 31, tzinfo=UTC)
    assert apikeys.parse_expiry("", now) is None and apikeys.parse_expiry(None, now) is None
    for bad, words in (("2026-12-07", "after today"), ("2026-01-01", "after today"), ("31/01/2027", "YYYY-MM-DD"),
                       ("2040-01-01", "years ahead")):
        with pytest.raises(ValidationError, match=words):
            apikeys.parse_expiry(bad, now)


# --- the API ------------------------------------------------------------------------------------------------------

def test_api_creates_a_key_with_an_expiry_and_lists_it(web_app, world, cfg):
    acme = Client(web_app, make_key(cfg, world["acme"].id))
    resp = acme.post("/apikeys", {"scopes": ["read"], "name": "ci", "expires_on": TOMORROW.isoformat()})
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["expires_at"].startswith(TOMORROW.isoformat() + "T00:00:00")
    listed = {k["prefix"]: k for k in acme.all_pages("/apikeys")}
    assert listed[body["prefix"]]["expires_at"] == body["expires_at"]
    assert [k["expires_at"] for k in listed.values() if k["prefix"] != body["prefix"]] == [None]
    assert web_app.test_client().get(f"{API}/domains", headers=auth(body["key"])).status_code == 200

    error(acme.post("/apikeys", {"scopes": ["read"], "expires_on": "2020-01-01"}), 422, "validation")
    error(acme.post("/apikeys", {"scopes": ["read"], "expires_on": "soon"}), 422, "validation")


def test_an_expired_key_is_refused_with_401_key_expired(web_app, world, cfg):
    """Attack: a contractor's key, given an end date, keeps working after it. From its expiry on it is refused, with
    a code that says why (not "unknown key"), and its last use is not recorded."""
    key = make_key(cfg, world["acme"].id)
    c = web_app.test_client()
    assert c.get(f"{API}/domains", headers=auth(key)).status_code == 200
    prefix = apikeys.split_key(key)
    assert prefix is not None
    expire_now(cfg, prefix)
    body = error(c.get(f"{API}/domains", headers=auth(key)), 401, "key_expired")
    assert "expired" in body["message"]
    resp = c.get(f"{API}/domains", headers=auth(key))
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    error(c.get(f"{API}/domains", headers=auth(key[:-2] + "xx")), 401, "unauthorized")


# --- the portal, the console and the CLI --------------------------------------------------------------------------

def test_portal_key_with_expiry_shown_once_with_a_copy_button_and_listed_with_its_expiry(web_app, world, cfg):
    admin = sign_in(web_app, "admin@acme.test")
    resp = post_form(admin, "/portal/apikeys", "/portal/apikeys",
                     {"name": "backup", "scopes": "read", "expires_on": TOMORROW.isoformat()})
    assert resp.status_code == 200
    page = text(resp)
    assert 'data-copy-target="new-key"' in page and 'id="copy-new-key"' in page
    assert '<script src="/static/copy.js" defer></script>' in page
    assert f"Expires {TOMORROW.isoformat()}" in page
    listing = text(admin.get("/portal/apikeys"))
    row = re.search(r'<tr id="apikey-\d+">\s*<td><code>mw_[0-9a-f]+_…</code></td>\s*<td>backup</td>(.*?)</tr>',
                    listing, re.S)
    assert row and TOMORROW.isoformat() in row.group(1) and "active" in row.group(1)
    detail = read(cfg, lambda s: s.scalars(select(AuditEntry.detail).where(AuditEntry.action == "apikey.create")).one())
    assert f"expires {TOMORROW.isoformat()}" in detail

    with msp_scope():
        prefix = read(cfg, lambda s: s.scalar(select(ApiKey.prefix).where(ApiKey.name == "backup")))
    expire_now(cfg, prefix)
    assert re.search(r"<td>backup</td>.*?badge warn\">expired</span>", text(admin.get("/portal/apikeys")), re.S)

    resp = post_form(admin, "/portal/apikeys", "/portal/apikeys",
                     {"name": "old", "scopes": "read", "expires_on": "2020-01-01"})
    assert resp.status_code == 422 and "choose a date after today" in text(resp)


def test_console_msp_key_with_expiry(web_app, world, cfg):
    msp = sign_in(web_app, "admin@msp.test")
    resp = post_form(msp, "/console/apikeys", "/console/apikeys",
                     {"name": "monitoring", "scopes": "read", "expires_on": TOMORROW.isoformat()})
    assert resp.status_code == 200 and 'data-copy-target="new-key"' in text(resp)
    key = read(cfg, lambda s: s.scalars(select(ApiKey).where(ApiKey.name == "monitoring")).one())
    assert key.tenant_id is None and key.expires_at == datetime(TOMORROW.year, TOMORROW.month, TOMORROW.day,
                                                                tzinfo=UTC)
    assert "apikey-expires" in text(msp.get("/console/apikeys"))


def test_cli_creates_and_lists_keys_with_expiry(env, world, cfg):
    made = run_cli(["apikey", "create", "Acme", "--scopes", "read", "--name", "cli",
                    "--expires", TOMORROW.isoformat()], env)
    assert made.returncode == 0, made.stderr
    assert f"expires {TOMORROW.isoformat()} 00:00Z" in made.stdout
    listed = run_cli(["apikey", "list", "Acme"], env)
    assert f"expires {TOMORROW.isoformat()} 00:00Z\tactive" in listed.stdout
    bad = run_cli(["apikey", "create", "Acme", "--scopes", "read", "--expires", "2020-01-01"], env)
    assert bad.returncode == 1 and "after today" in bad.stderr


# --- the migration ------------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:.*expression-based index")  # SQLite cannot reflect expression indexes
def test_migration_0011_matches_the_models(cfg):
    """The migrated schema has what the models declare for the key expiry and the kept transports."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with tdb.get_engine(cfg).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        columns = {c["name"] for c in inspect(conn).get_columns("api_key")}
        kept = {c["name"] for c in inspect(conn).get_columns("retired_transport")}

    def mine(entry: Any) -> bool:
        return any(name in repr(entry) for name in ("retired_transport", "expires_at"))

    assert [d for d in diff if mine(d)] == []
    assert "expires_at" in columns
    assert kept == {c.name for c in Base.metadata.tables["retired_transport"].columns}


# --- copy buttons on the domain page ------------------------------------------------------------------------------

def test_domain_page_has_copy_buttons_for_its_dns_records_and_the_script_is_served(web_app, world, cfg, dns):
    from worker.dnscheck import check

    domain_id = domain_row(cfg, "acme.test")[0]
    check(cfg, world["acme"].id, domain_id)  # the worker's DNS check: the page shows what it cached
    page = text(sign_in(web_app, "admin@acme.test").get(f"/portal/domains/{domain_id}"))
    assert 'data-copy-target="verification-record"' in page
    records = re.findall(r'<code id="(record-\d+)">[^<]+</code><button type="button" class="copy small" '
                         r'data-copy-target="(record-\d+)" hidden>Copy</button>', page)
    assert records and all(a == b for a, b in records)
    assert '<script src="/static/copy.js" defer></script>' in page and "<script>" not in page
    script = web_app.test_client().get("/static/copy.js")
    assert script.status_code == 200 and "javascript" in script.mimetype
    assert b"navigator.clipboard" in script.data and b"data-copy-target" in script.data
