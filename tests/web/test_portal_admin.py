"""The tenant's administration pages (users and roles, API keys, DKIM keys, outbound relay), the console's MSP-wide
API keys and staff, and the REST API's user routes: who may do what, secrets shown once, and tenant isolation."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import select

from tenants import apikeys, relay
from tenants.models import ApiKey, AuditEntry, DkimKey, RelayNetwork, Role, SmtpCredential, User, utcnow
from tenants.platform import db as tdb
from tenants.scope import msp_scope, tenant_scope
from tests.fixtures.api import API, make_key
from tests.support.web import csrf_token, read, sign_in, text

#: A full API key as tenants.apikeys makes it.
KEY_RE = re.compile(r"mw_[0-9a-f]{8}_[A-Za-z0-9_-]{20,}")
PORTAL_PAGES = ("/portal/users", "/portal/apikeys", "/portal/dkim", "/portal/outbound")
CONSOLE_PAGES = ("/console/apikeys", "/console/staff")


def post(client: Any, page: str, action: str, data: dict[str, Any]) -> Any:
    """Open ``page`` for a CSRF token, then POST ``data`` (values may be lists) with it to ``action``."""
    token = csrf_token(text(client.get(page)))
    return client.post(action, data={**data, "csrf_token": token})


def user_row(cfg: Any, email: str) -> User:
    return read(cfg, lambda s: s.scalars(select(User).where(User.email == email)).one())


def api_get(web_app: Any, path: str, key: str) -> Any:
    return web_app.test_client().get(API + path, headers={"Authorization": f"Bearer {key}"})


def audit_text(cfg: Any) -> str:
    rows = read(cfg, lambda s: s.execute(select(AuditEntry.action, AuditEntry.target, AuditEntry.detail)).all())
    return "\n".join(" ".join(r) for r in rows)


@pytest.fixture
def acme_objects(cfg, world) -> dict[str, int]:
    """One object of Acme of each kind these pages change (a user, an API key, a DKIM key, a network, a login)."""
    from tenants.dkimkeys import generate_key
    from tenants.services import get_tenant

    acme = world["acme"].id
    with tenant_scope(acme), tdb.session_scope(cfg) as s:
        tenant = get_tenant(s, acme)
        key = apikeys.create(s, tenant, "read", "acme key").key
        dkim = generate_key(s, cfg, "acme.test", "old", bits=1024)
        net = relay.add_relay_network(s, tenant, "192.0.2.0/28")
        cred = relay.create_smtp_credential(s, tenant, "relay@acme.test", "a long enough password")
        s.flush()
        ids = {"key_id": key.id, "dkim_id": dkim.id, "network_id": net.id, "credential_id": cred.id}
    ids["user_id"] = user_row(cfg, "user@acme.test").id
    return ids


def admin_posts(ids: dict[str, int]) -> list[tuple[str, str, dict[str, Any]]]:
    """(page, action, data) of every POST of the portal's admin pages, aimed at ``ids``."""
    return [
        ("/portal/users", "/portal/users", {"email": "new@acme.test", "role": "user"}),
        ("/portal/users", f"/portal/users/{ids['user_id']}/role", {"role": "tenant_admin"}),
        ("/portal/users", f"/portal/users/{ids['user_id']}/active", {"active": "0"}),
        ("/portal/users", f"/portal/users/{ids['user_id']}/unlock", {}),
        ("/portal/apikeys", "/portal/apikeys", {"name": "x", "scopes": ["read"]}),
        ("/portal/apikeys", f"/portal/apikeys/{ids['key_id']}/revoke", {"confirm": "1"}),
        ("/portal/dkim", "/portal/dkim", {"domain": "acme.test", "selector": "new", "bits": "1024"}),
        ("/portal/dkim", f"/portal/dkim/{ids['dkim_id']}/active", {"active": "0"}),
        ("/portal/dkim", f"/portal/dkim/{ids['dkim_id']}/delete", {"confirm": "1"}),
        ("/portal/outbound", "/portal/outbound/networks", {"cidr": "203.0.113.0/28"}),
        ("/portal/outbound", f"/portal/outbound/networks/{ids['network_id']}/delete", {}),
        ("/portal/outbound", "/portal/outbound/credentials", {"username": "other@acme.test"}),
        ("/portal/outbound", f"/portal/outbound/credentials/{ids['credential_id']}/revoke", {}),
    ]


def acme_state(cfg: Any, ids: dict[str, int]) -> tuple[Any, ...]:
    """Everything the POSTs above could change."""
    def state(s: Any) -> tuple[Any, ...]:
        user = s.get(User, ids["user_id"])
        dkim = s.get(DkimKey, ids["dkim_id"])
        return (user.role, user.active, s.get(ApiKey, ids["key_id"]).revoked_at, dkim and dkim.active,
                sorted(s.scalars(select(RelayNetwork.cidr))), sorted(s.scalars(select(SmtpCredential.username))),
                s.get(SmtpCredential, ids["credential_id"]).revoked_at,
                len(s.scalars(select(User.id)).all()), len(s.scalars(select(ApiKey.id)).all()),
                sorted(s.scalars(select(DkimKey.selector))))
    return read(cfg, state)


# --- who may do what ------------------------------------------------------------------------------------------------

def test_admins_edit_auditors_read_and_users_see_nothing(web_app, world):
    admin, auditor, user = (sign_in(web_app, e) for e in ("admin@acme.test", "auditor@acme.test", "user@acme.test"))
    for page in PORTAL_PAGES:
        edit = text(admin.get(page))
        read_only = auditor.get(page)
        assert read_only.status_code == 200, page
        assert 'method="post" action="/portal/' in edit, page
        assert 'method="post" action="/portal/' not in text(read_only), page
        assert user.get(page).status_code == 404, page
    assert "admin@acme.test" in text(auditor.get("/portal/users"))
    assert "admin@beta.test" not in text(admin.get("/portal/users"))
    msp, helpdesk = sign_in(web_app, "admin@msp.test"), sign_in(web_app, "helpdesk@msp.test")
    for page in CONSOLE_PAGES:
        assert 'action="/console/' in text(msp.get(page)), page
        assert helpdesk.get(page).status_code == 200 and 'method="post" action="/console/' not in text(
            helpdesk.get(page)), page
        assert admin.get(page).status_code == 404, page
    assert "helpdesk@msp.test" in text(helpdesk.get("/console/staff"))
    assert "admin@acme.test" not in text(msp.get("/console/staff"))


@pytest.mark.parametrize("email", ["auditor@acme.test", "user@acme.test"])
def test_every_post_is_404_for_auditors_and_users(web_app, cfg, world, acme_objects, email):
    client = sign_in(web_app, email)
    before = acme_state(cfg, acme_objects)
    token = csrf_token(text(client.get("/q/" if email.startswith("user") else "/portal/")))
    for _page, action, data in admin_posts(acme_objects):
        assert client.post(action, data={**data, "csrf_token": token}).status_code == 404, action
    assert acme_state(cfg, acme_objects) == before


def test_the_same_posts_by_the_tenants_admin_do_their_work(web_app, cfg, world, acme_objects):
    """The control for the 404 tests: Acme's admin makes each of those POSTs and every one changes something."""
    client = sign_in(web_app, "admin@acme.test")
    before = acme_state(cfg, acme_objects)
    for page, action, data in admin_posts(acme_objects):
        assert post(client, page, action, data).status_code in (200, 302), action
    after = acme_state(cfg, acme_objects)
    assert [a != b for a, b in zip(before, after, strict=True)] == [True] * len(before)


def test_console_posts_are_404_for_helpdesk(web_app, cfg, world):
    client = sign_in(web_app, "helpdesk@msp.test")
    staff_id = user_row(cfg, "admin@msp.test").id
    for action, data in (("/console/apikeys", {"name": "x", "scopes": ["read"]}),
                         ("/console/staff", {"email": "x@msp.test", "role": "msp_admin", "password": "x" * 12}),
                         (f"/console/staff/{staff_id}/active", {"active": "0"}),
                         (f"/console/staff/{staff_id}/unlock", {})):
        assert post(client, "/console/staff", action, data).status_code == 404, action
    assert user_row(cfg, "admin@msp.test").active
    assert read(cfg, lambda s: s.scalars(select(User).where(User.email == "x@msp.test")).first()) is None


def test_another_tenants_admin_gets_404_for_every_object_and_nothing_changes(web_app, cfg, world, acme_objects):
    """Beta's admin posts to Acme's users, keys, DKIM keys, networks and logins by id: 404 each time."""
    client = sign_in(web_app, "admin@beta.test")
    before = acme_state(cfg, acme_objects)
    for page, action, data in admin_posts(acme_objects):
        if re.search(r"/\d+/", action):
            assert post(client, page, action, data).status_code == 404, action
    assert acme_state(cfg, acme_objects) == before


# --- users and roles ------------------------------------------------------------------------------------------------

def test_an_admin_creates_a_user_who_then_signs_in(web_app, cfg, world):
    admin = sign_in(web_app, "admin@acme.test")
    resp = post(admin, "/portal/users", "/portal/users",
                {"email": "New.Auditor@acme2.test", "role": "tenant_auditor", "password": "a brand new password"})
    assert resp.status_code == 302
    row = user_row(cfg, "new.auditor@acme2.test")
    assert (row.role, row.tenant_id, row.active) == ("tenant_auditor", world["acme"].id, True)
    assert "a brand new password" not in audit_text(cfg) and "user new.auditor@acme2.test" in audit_text(cfg)
    newcomer = sign_in(web_app, "new.auditor@acme2.test", "a brand new password")
    assert newcomer.get("/portal/users").status_code == 200
    assert newcomer.get("/portal/apikeys").status_code == 200

    post(admin, "/portal/users", "/portal/users", {"email": "linkonly@acme.test", "role": "user"})
    assert user_row(cfg, "linkonly@acme.test").password_hash is None  # signs in by the digest's links only


def test_a_user_in_another_tenants_domain_or_with_an_msp_role_is_refused(web_app, cfg, world):
    admin = sign_in(web_app, "admin@acme.test")
    resp = post(admin, "/portal/users", "/portal/users", {"email": "squat@beta.test", "role": "user"})
    assert resp.status_code == 422 and "not a domain of this tenant" in text(resp)
    resp = post(admin, "/portal/users", "/portal/users", {"email": "boss@acme.test", "role": "msp_admin"})
    assert resp.status_code == 422
    assert read(cfg, lambda s: s.scalars(select(User.email).where(User.email.in_(
        ["squat@beta.test", "boss@acme.test"]))).all()) == []


def test_an_admin_cannot_demote_or_deactivate_themselves(web_app, cfg, world):
    admin = sign_in(web_app, "admin@acme.test")
    me = user_row(cfg, "admin@acme.test").id
    post(admin, "/portal/users", f"/portal/users/{me}/role", {"role": "user"})
    assert "you cannot change your own role" in text(admin.get("/portal/users"))
    post(admin, "/portal/users", f"/portal/users/{me}/active", {"active": "0"})
    assert "you cannot deactivate your own account" in text(admin.get("/portal/users"))
    row = user_row(cfg, "admin@acme.test")
    assert (row.role, row.active) == ("tenant_admin", True)


def test_role_changes_deactivation_and_unlock(web_app, cfg, world):
    admin = sign_in(web_app, "admin@acme.test")
    auditor_id = user_row(cfg, "auditor@acme.test").id
    post(admin, "/portal/users", f"/portal/users/{auditor_id}/role", {"role": "user"})
    assert user_row(cfg, "auditor@acme.test").role == "user"
    post(admin, "/portal/users", f"/portal/users/{auditor_id}/active", {"active": "0"})
    assert not user_row(cfg, "auditor@acme.test").active
    login = post(web_app.test_client(), "/login", "/login", {"email": "auditor@acme.test",
                                                              "password": "correct horse battery"})
    assert login.status_code == 200 and "Invalid e-mail or password" in text(login)
    post(admin, "/portal/users", f"/portal/users/{auditor_id}/active", {"active": "1"})
    assert user_row(cfg, "auditor@acme.test").active

    with msp_scope(), tdb.session_scope(cfg) as s:
        locked = s.get(User, auditor_id)
        locked.failed_logins, locked.locked_until = 10, utcnow().replace(year=utcnow().year + 1)
    assert "locked until" in text(admin.get("/portal/users"))
    post(admin, "/portal/users", f"/portal/users/{auditor_id}/unlock", {})
    row = user_row(cfg, "auditor@acme.test")
    assert (row.failed_logins, row.locked_until) == (0, None)
    sign_in(web_app, "auditor@acme.test")
    assert "user.unlock" in audit_text(cfg) and "user.deactivate" in audit_text(cfg)


# --- API keys -------------------------------------------------------------------------------------------------------

def test_a_portal_key_is_shown_once_works_for_its_tenant_and_stops_when_revoked(web_app, cfg, world):
    admin = sign_in(web_app, "admin@acme.test")
    resp = post(admin, "/portal/apikeys", "/portal/apikeys", {"name": "backup sync", "scopes": ["read", "write"]})
    assert resp.status_code == 200
    keys = KEY_RE.findall(text(resp))
    assert len(set(keys)) == 1
    key = keys[0]
    row = read(cfg, lambda s: s.scalars(select(ApiKey).where(ApiKey.name == "backup sync")).one())
    assert (row.tenant_id, row.scopes) == (world["acme"].id, "read,write")
    assert key not in text(admin.get("/portal/apikeys")) and row.prefix in text(admin.get("/portal/apikeys"))
    with admin.session_transaction() as sess:
        assert key not in str(dict(sess))
    assert key not in audit_text(cfg) and f"api key {row.prefix}" in audit_text(cfg)

    domains = api_get(web_app, "/domains", key)
    assert domains.status_code == 200
    assert {d["name"] for d in domains.get_json()["items"]} == {"acme.test", "acme2.test"}

    ask = post(admin, "/portal/apikeys", f"/portal/apikeys/{row.id}/revoke", {})
    assert ask.status_code == 200 and "Yes, revoke the key" in text(ask)
    assert api_get(web_app, "/domains", key).status_code == 200  # only asked so far
    done = post(admin, "/portal/apikeys", f"/portal/apikeys/{row.id}/revoke", {"confirm": "1"})
    assert done.status_code == 302
    assert api_get(web_app, "/domains", key).status_code == 401


def test_a_key_needs_a_scope(web_app, cfg, world):
    admin = sign_in(web_app, "admin@acme.test")
    resp = post(admin, "/portal/apikeys", "/portal/apikeys", {"name": "none"})
    assert resp.status_code == 422 and "Choose at least one scope" in text(resp)
    resp = post(admin, "/portal/apikeys", "/portal/apikeys", {"name": "bad", "scopes": ["admin"]})
    assert resp.status_code == 422 and not KEY_RE.search(text(resp))
    assert read(cfg, lambda s: s.scalars(select(ApiKey.id)).all()) == []


def test_an_msp_admin_viewing_as_a_tenant_makes_keys_for_that_tenant(web_app, cfg, world):
    client = sign_in(web_app, "admin@msp.test")
    post(client, "/console/", "/console/view-as", {"tenant_id": str(world["acme"].id)})
    resp = post(client, "/portal/apikeys", "/portal/apikeys", {"name": "as acme", "scopes": ["read"]})
    assert resp.status_code == 200 and KEY_RE.search(text(resp))
    assert read(cfg, lambda s: s.scalars(select(ApiKey.tenant_id)).one()) == world["acme"].id


def test_console_msp_keys_reach_every_tenant_and_tenant_keys_are_not_its_to_revoke(web_app, cfg, world,
                                                                                    acme_objects):
    msp = sign_in(web_app, "admin@msp.test")
    resp = post(msp, "/console/apikeys", "/console/apikeys", {"name": "billing", "scopes": ["read"]})
    key = KEY_RE.search(text(resp)).group(0)  # type: ignore[union-attr]
    assert read(cfg, lambda s: s.scalars(select(ApiKey.tenant_id).where(ApiKey.name == "billing")).one()) is None
    assert [t["name"] for t in api_get(web_app, "/tenants", key).get_json()["items"]] == ["Acme", "Beta"]
    assert key not in text(msp.get("/console/apikeys"))
    # A tenant's key is the tenant's to manage: not on the console's page, and not revocable from it.
    assert "acme key" not in text(msp.get("/console/apikeys"))
    resp = post(msp, "/console/apikeys", f"/console/apikeys/{acme_objects['key_id']}/revoke", {"confirm": "1"})
    assert resp.status_code == 404
    assert read(cfg, lambda s: s.get(ApiKey, acme_objects["key_id"]).revoked_at) is None
    msp_key = read(cfg, lambda s: s.scalars(select(ApiKey.id).where(ApiKey.name == "billing")).one())
    post(msp, "/console/apikeys", f"/console/apikeys/{msp_key}/revoke", {"confirm": "1"})
    assert api_get(web_app, "/tenants", key).status_code == 401


# --- MSP staff ------------------------------------------------------------------------------------------------------

def test_msp_admin_creates_and_deactivates_staff(web_app, cfg, world):
    msp = sign_in(web_app, "admin@msp.test")
    resp = post(msp, "/console/staff", "/console/staff", {"email": "desk2@msp.test", "role": "msp_helpdesk"})
    assert resp.status_code == 422 and "staff sign in with a password" in text(resp)
    resp = post(msp, "/console/staff", "/console/staff", {"email": "desk2@msp.test", "role": "tenant_admin",
                                                           "password": "staff password 1"})
    assert resp.status_code == 422
    post(msp, "/console/staff", "/console/staff", {"email": "desk2@msp.test", "role": "msp_helpdesk",
                                                    "password": "staff password 1"})
    row = user_row(cfg, "desk2@msp.test")
    assert (row.role, row.tenant_id) == ("msp_helpdesk", None)
    desk = sign_in(web_app, "desk2@msp.test", "staff password 1")
    assert desk.get("/console/staff").status_code == 200
    post(msp, "/console/staff", f"/console/staff/{row.id}/active", {"active": "0"})
    assert not user_row(cfg, "desk2@msp.test").active
    assert desk.get("/console/staff").status_code == 302  # the deactivated session is over

    me = user_row(cfg, "admin@msp.test").id
    post(msp, "/console/staff", f"/console/staff/{me}/active", {"active": "0"})
    assert user_row(cfg, "admin@msp.test").active
    tenant_user = user_row(cfg, "user@acme.test").id  # the staff page manages staff only
    assert post(msp, "/console/staff", f"/console/staff/{tenant_user}/active", {"active": "0"}).status_code == 404
    assert user_row(cfg, "user@acme.test").active


# --- DKIM keys ------------------------------------------------------------------------------------------------------

def test_dkim_keygen_shows_the_record_to_publish(web_app, cfg, world):
    admin = sign_in(web_app, "admin@acme.test")
    resp = post(admin, "/portal/dkim", "/portal/dkim", {"domain": "acme2.test", "selector": "MW2025", "bits": "1024"})
    assert resp.status_code == 302
    key = read(cfg, lambda s: s.scalars(select(DkimKey)).one())
    assert (key.domain, key.selector, key.tenant_id, key.active) == ("acme2.test", "mw2025", world["acme"].id, True)
    page = text(admin.get("/portal/dkim"))
    assert 'value="mw2025._domainkey.acme2.test"' in page and "1024 bits" in page
    published = re.search(r'class="copy dkim-value"[^>]*>v=DKIM1; k=rsa; p=([A-Za-z0-9+/=]+)</textarea>', page)
    assert published and published.group(1) == key.public_key

    post(admin, "/portal/dkim", f"/portal/dkim/{key.id}/active", {"active": "0"})
    assert read(cfg, lambda s: s.get(DkimKey, key.id).active) is False
    ask = post(admin, "/portal/dkim", f"/portal/dkim/{key.id}/delete", {})
    assert ask.status_code == 200 and "Yes, remove the key" in text(ask)
    assert read(cfg, lambda s: s.get(DkimKey, key.id)) is not None
    post(admin, "/portal/dkim", f"/portal/dkim/{key.id}/delete", {"confirm": "1"})
    assert read(cfg, lambda s: s.get(DkimKey, key.id)) is None
    assert {"dkim.create", "dkim.retire", "dkim.remove"} <= set(audit_text(cfg).split())


def test_dkim_keygen_refuses_another_tenants_domain_and_a_bad_selector(web_app, cfg, world):
    admin = sign_in(web_app, "admin@acme.test")
    resp = post(admin, "/portal/dkim", "/portal/dkim", {"domain": "beta.test", "selector": "evil", "bits": "1024"})
    assert resp.status_code == 422 and "beta.test" not in text(resp)
    resp = post(admin, "/portal/dkim", "/portal/dkim", {"domain": "acme.test", "selector": "bad_sel!", "bits": "1024"})
    assert resp.status_code == 422 and "selector" in text(resp)
    assert read(cfg, lambda s: s.scalars(select(DkimKey.id)).all()) == []


# --- outbound relay -------------------------------------------------------------------------------------------------

def test_relay_networks_are_validated_and_overlaps_do_not_name_the_other_tenants_network(web_app, cfg, world):
    with tenant_scope(world["beta"].id), tdb.session_scope(cfg) as s:
        from tenants.services import get_tenant

        relay.add_relay_network(s, get_tenant(s, world["beta"].id), "198.51.100.0/24")
    admin = sign_in(web_app, "admin@acme.test")
    for bad, says in (("10.0.0.0/33", "is not a network in CIDR notation"), ("not a network", "CIDR"),
                      ("10.0.0.1/24", "host bits"), ("10.0.0.0/7", "too wide")):
        resp = post(admin, "/portal/outbound", "/portal/outbound/networks", {"cidr": bad})
        assert resp.status_code == 422 and says in text(resp), bad
    resp = post(admin, "/portal/outbound", "/portal/outbound/networks", {"cidr": "198.51.100.16/28"})
    assert resp.status_code == 422 and "is not available" in text(resp) and "198.51.100.0/24" not in text(resp)
    assert read(cfg, lambda s: s.scalars(select(RelayNetwork.cidr)).all()) == ["198.51.100.0/24"]

    assert post(admin, "/portal/outbound", "/portal/outbound/networks", {"cidr": "192.0.2.0/28"}).status_code == 302
    net = read(cfg, lambda s: s.scalars(select(RelayNetwork).where(RelayNetwork.cidr == "192.0.2.0/28")).one())
    assert net.tenant_id == world["acme"].id
    post(admin, "/portal/outbound", f"/portal/outbound/networks/{net.id}/delete", {})
    assert read(cfg, lambda s: s.get(RelayNetwork, net.id)) is None


def test_an_smtp_login_is_shown_once_verifies_and_stops_when_revoked(web_app, cfg, world):
    admin = sign_in(web_app, "admin@acme.test")
    resp = post(admin, "/portal/outbound", "/portal/outbound/credentials", {"username": "Relay@acme.test"})
    assert resp.status_code == 200 and "587" in text(resp) and "STARTTLS" in text(resp)
    m = re.search(r'id="new-password" class="secret" readonly value="([^"]+)"', text(resp))
    assert m
    password = m.group(1)
    assert password not in text(admin.get("/portal/outbound")) and password not in audit_text(cfg)
    with admin.session_transaction() as sess:
        assert password not in str(dict(sess))
    with tdb.session_scope(cfg) as s:
        login = relay.verify_smtp_login(s, "relay@acme.test", password)
        assert login is not None and login.tenant_id == world["acme"].id
        assert relay.verify_smtp_login(s, "relay@acme.test", password + "x") is None
    cred_id = read(cfg, lambda s: s.scalars(select(SmtpCredential.id)).one())
    post(admin, "/portal/outbound", f"/portal/outbound/credentials/{cred_id}/revoke", {})
    with tdb.session_scope(cfg) as s:
        assert relay.verify_smtp_login(s, "relay@acme.test", password) is None
    resp = post(admin, "/portal/outbound", "/portal/outbound/credentials", {"username": "bad user"})
    assert resp.status_code == 422 and "SMTP username" in text(resp)


# --- the REST API's users -------------------------------------------------------------------------------------------

def api(web_app: Any, key: str, method: str, path: str, body: Any = None) -> Any:
    return web_app.test_client().open(API + path, method=method, json=body,
                                      headers={"Authorization": f"Bearer {key}"})


def test_api_creates_and_changes_users_of_the_keys_tenant_only(web_app, cfg, world):
    acme = make_key(cfg, world["acme"].id)
    made = api(web_app, acme, "POST", "/users", {"email": "api.user@acme.test", "role": "user",
                                                 "password": "api password 123"})
    assert made.status_code == 201, made.get_json()
    body = made.get_json()
    assert (body["tenant_id"], body["role"], body["active"]) == (world["acme"].id, "user", True)
    assert "password" not in body and "api password 123" not in audit_text(cfg)
    sign_in(web_app, "api.user@acme.test", "api password 123")

    changed = api(web_app, acme, "PATCH", f"/users/{body['id']}", {"role": "tenant_auditor", "active": False})
    assert changed.status_code == 200 and changed.get_json()["role"] == "tenant_auditor"
    assert not user_row(cfg, "api.user@acme.test").active

    bad = api(web_app, acme, "POST", "/users", {"email": "x@acme.test", "role": "superuser"})
    assert bad.status_code == 422 and "role" in bad.get_json()["error"]["fields"]
    bad = api(web_app, acme, "POST", "/users", {"email": "x@acme.test", "role": "msp_admin"})
    assert bad.status_code == 422 and "role" in bad.get_json()["error"]["fields"]
    bad = api(web_app, acme, "PATCH", f"/users/{body['id']}", {"role": "msp_helpdesk"})
    assert bad.status_code == 422 and "role" in bad.get_json()["error"]["fields"]
    assert api(web_app, acme, "POST", "/users", {"email": "x@beta.test", "role": "user"}).status_code == 422

    beta_admin = user_row(cfg, "admin@beta.test")
    for patch in ({"active": False}, {"role": "user"}):
        resp = api(web_app, acme, "PATCH", f"/users/{beta_admin.id}", patch)
        assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    staff = user_row(cfg, "admin@msp.test")
    assert api(web_app, acme, "PATCH", f"/users/{staff.id}", {"active": False}).status_code == 404
    assert api(web_app, acme, "POST", "/users", {"email": "y@beta.test", "role": "user",
                                                 "tenant_id": world["beta"].id}).status_code == 404
    after = user_row(cfg, "admin@beta.test")
    assert (after.role, after.active) == ("tenant_admin", True) and user_row(cfg, "admin@msp.test").active


def test_api_msp_keys_create_staff_or_tenant_users_and_partial_keys_make_no_admins(web_app, cfg, world):
    msp = make_key(cfg, None)
    staff = api(web_app, msp, "POST", "/users", {"email": "ops@msp.test", "role": "msp_helpdesk",
                                                "password": "ops password 1"})
    assert staff.status_code == 201 and staff.get_json()["tenant_id"] is None
    beta = api(web_app, msp, "POST", "/users", {"email": "dave@beta.test", "role": "user",
                                               "tenant_id": world["beta"].id})
    assert beta.status_code == 201 and beta.get_json()["tenant_id"] == world["beta"].id
    bad = api(web_app, msp, "POST", "/users", {"email": "z@msp.test", "role": "user"})
    assert bad.status_code == 422 and "role" in bad.get_json()["error"]["fields"]

    write_only = make_key(cfg, world["acme"].id, "read,write")
    resp = api(web_app, write_only, "POST", "/users", {"email": "boss@acme.test", "role": "tenant_admin"})
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "forbidden_scope"
    auditor = user_row(cfg, "auditor@acme.test")
    assert api(web_app, write_only, "PATCH", f"/users/{auditor.id}", {"role": "tenant_admin"}).status_code == 403
    assert api(web_app, write_only, "PATCH", f"/users/{auditor.id}", {"role": "user"}).status_code == 200
    assert user_row(cfg, "auditor@acme.test").role == Role.USER.value


def test_the_last_active_admin_of_a_tenant_or_of_the_msp_cannot_be_demoted_or_deactivated(web_app, cfg, world):
    """An API key (which has no "self" to protect) must not leave a tenant, or the MSP, with nobody to manage it."""
    acme = make_key(cfg, world["acme"].id)
    only = user_row(cfg, "admin@acme.test")
    for patch in ({"role": "user"}, {"active": False}):
        resp = api(web_app, acme, "PATCH", f"/users/{only.id}", patch)
        assert resp.status_code == 422 and "last active tenant_admin" in resp.get_json()["error"]["message"]
    assert (user_row(cfg, "admin@acme.test").role, user_row(cfg, "admin@acme.test").active) == ("tenant_admin", True)
    second = api(web_app, acme, "POST", "/users", {"email": "second@acme.test", "role": "tenant_admin",
                                                   "password": "api password 123"}).get_json()
    assert api(web_app, acme, "PATCH", f"/users/{only.id}", {"role": "tenant_auditor"}).status_code == 200
    resp = api(web_app, acme, "PATCH", f"/users/{second['id']}", {"active": False})
    assert resp.status_code == 422, "the second admin is now the last one"
    msp = make_key(cfg, None)
    staff = user_row(cfg, "admin@msp.test")
    resp = api(web_app, msp, "PATCH", f"/users/{staff.id}", {"active": False})
    assert resp.status_code == 422 and "last active msp_admin" in resp.get_json()["error"]["message"]
