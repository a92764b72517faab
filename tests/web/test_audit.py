"""The audit log: admin actions and mail access are recorded, shown per tenant and to the MSP, filtered, paged and
exported; a tenant never sees another tenant's entries."""

from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import select

from tenants import audit as audit_log
from tenants.models import AuditEntry
from tenants.platform import db as tdb
from tenants.scope import msp_scope, tenant_scope
from tests.support.held import hold
from tests.support.web import post_form, read, sign_in, text


def _entries(cfg: Any, **where: Any) -> list[AuditEntry]:
    stmt = select(AuditEntry).order_by(AuditEntry.id)
    for k, v in where.items():
        stmt = stmt.where(getattr(AuditEntry, k) == v)
    return read(cfg, lambda s: list(s.scalars(stmt)))


def test_admin_action_is_recorded_and_shown_in_the_portal(web_app, world, cfg):
    client = sign_in(web_app, "admin@acme.test")
    resp = post_form(client, "/portal/lists", "/portal/lists", {"kind": "block", "value": "junk.example",
                                                                "comment": "spam wave"})
    assert resp.status_code == 302
    [entry] = _entries(cfg, action="list.block.add")
    assert (entry.actor, entry.target, entry.detail, entry.tenant_id) == \
        ("admin@acme.test", "junk.example", "spam wave", world["acme"].id)
    assert entry.ip == "127.0.0.1" and entry.acting_as is None
    page = text(client.get("/portal/audit"))
    assert "list.block.add" in page and "junk.example" in page
    auditor = sign_in(web_app, "auditor@acme.test")
    assert "junk.example" in text(auditor.get("/portal/audit"))


def test_msp_actions_are_recorded(web_app, world, cfg):
    client = sign_in(web_app, "admin@msp.test")
    post_form(client, "/console/", "/console/tenants", {"tenant-name": "Gamma"})
    [entry] = _entries(cfg, action="tenant.create")
    assert entry.actor == "admin@msp.test" and entry.target == "tenant Gamma" and entry.tenant_id is not None
    page = text(client.get("/console/audit"))
    assert "tenant.create" in page and "Gamma" in page


def test_viewing_a_held_mail_is_recorded(web_app, world, cfg):
    """Envelope-level access: who opened which mail (detail page, preview and raw download)."""
    mid = hold(cfg, world["acme"].id, rcpts=("bob@acme.test",), subject="Invoice 42")
    client = sign_in(web_app, "admin@acme.test")
    assert client.get(f"/portal/quarantine/{mid}").status_code == 200
    assert client.get(f"/portal/quarantine/{mid}/preview").status_code == 200
    assert client.get(f"/portal/quarantine/{mid}/raw").status_code == 200
    actions = [(e.action, e.target) for e in _entries(cfg, actor="admin@acme.test")]
    for action in ("quarantine.view", "quarantine.preview", "quarantine.raw"):
        assert (action, f"message {mid}") in actions
    view = _entries(cfg, action="quarantine.view")[0]
    assert "Invoice 42" in view.detail and view.tenant_id == world["acme"].id
    assert f"message {mid}" in text(client.get("/portal/audit", query_string={"action": "quarantine."}))


def test_quarantine_action_is_recorded(web_app, world, cfg):
    mid = hold(cfg, world["acme"].id, rcpts=("bob@acme.test",))
    client = sign_in(web_app, "admin@acme.test")
    resp = post_form(client, f"/portal/quarantine/{mid}", f"/portal/quarantine/{mid}/act", {"action": "delete"})
    assert resp.status_code == 302
    [entry] = _entries(cfg, action="quarantine.delete")
    assert entry.target == f"message {mid}" and "deleted" in entry.detail


def test_tenant_sees_only_its_own_entries(web_app, world, cfg):
    """Cross-tenant: Beta's admin never sees Acme's audit entries, on the page or in the export."""
    acme = sign_in(web_app, "admin@acme.test")
    post_form(acme, "/portal/lists", "/portal/lists", {"kind": "block", "value": "acme-secret.example"})
    beta = sign_in(web_app, "admin@beta.test")
    post_form(beta, "/portal/lists", "/portal/lists", {"kind": "allow", "value": "beta-partner.example"})
    page = text(beta.get("/portal/audit"))
    assert "beta-partner.example" in page and "acme-secret.example" not in page
    export = text(beta.get("/portal/audit.csv"))
    assert "beta-partner.example" in export and "acme-secret.example" not in export
    assert "admin@acme.test" not in text(beta.get("/portal/audit", query_string={"actor": "acme"}))
    msp = sign_in(web_app, "admin@msp.test")
    both = text(msp.get("/console/audit"))
    assert "beta-partner.example" in both and "acme-secret.example" in both
    only_beta = text(msp.get("/console/audit", query_string={"tenant": str(world["beta"].id)}))
    assert "beta-partner.example" in only_beta and "acme-secret.example" not in only_beta


def test_users_and_tenant_roles_cannot_open_the_msp_audit(web_app, world):
    for email in ("user@acme.test", "admin@acme.test", "auditor@acme.test"):
        client = sign_in(web_app, email)
        assert client.get("/console/audit").status_code == 404
        assert client.get("/console/audit.csv").status_code == 404
    assert sign_in(web_app, "user@acme.test").get("/portal/audit").status_code == 404


def _seed(cfg: Any, tenant_id: int, n: int, **kw: Any) -> None:
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        for i in range(n):
            audit_log.record(s, actor=kw.get("actor", "robot@acme.test"), action=kw.get("action", "test.seed"),
                             target=f"item {i:03d}", tenant_id=tenant_id, ip="192.0.2.1")


def test_audit_pages_filter_and_page_by_keyset(web_app, world, cfg):
    _seed(cfg, world["acme"].id, 60)
    _seed(cfg, world["acme"].id, 2, actor="someone@acme.test", action="other.thing")
    client = sign_in(web_app, "admin@acme.test")
    first = text(client.get("/portal/audit", query_string={"action": "test."}))
    assert "item 059" in first and "item 010" in first and "item 009" not in first
    assert "other.thing" not in first
    link = first.split('rel="next" href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    second = text(client.get(link))
    assert "item 009" in second and "item 000" in second and "item 010" not in second
    assert 'rel="next"' not in second
    by_actor = text(client.get("/portal/audit", query_string={"actor": "someone"}))
    assert "other.thing" in by_actor and "test.seed" not in by_actor
    future = text(client.get("/portal/audit", query_string={"since": "2999-01-01"}))
    assert "No entries match" in future
    assert client.get("/portal/audit", query_string={"after": "x1"}).status_code == 400


def test_csv_export_has_every_matching_entry_and_defuses_formulas(web_app, world, cfg):
    _seed(cfg, world["acme"].id, 3)
    _seed(cfg, world["acme"].id, 1, actor="=HYPERLINK(\"http://evil\")", action="test.evil")
    client = sign_in(web_app, "admin@acme.test")
    resp = client.get("/portal/audit.csv", query_string={"action": "test."})
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(text(resp))))
    assert rows[0] == list(audit_log.CSV_COLUMNS)
    assert len(rows) == 1 + 4
    evil = next(r for r in rows if r[4] == "test.evil")
    assert evil[2].startswith("'=")


def test_record_cuts_long_values_instead_of_failing(cfg, world):
    with msp_scope(), tdb.session_scope(cfg) as s:
        e = audit_log.record(s, actor="a" * 400, action="x" * 100, target="t" * 900, tenant_id=None)
        s.flush()
        assert len(e.actor) == 320 and len(e.action) == 60 and len(e.target) == 500
