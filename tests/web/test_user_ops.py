"""Account operations beyond the web forms: the REST API's reset and invitation (the mail arriving in the real SMTP
sink, the link working once), ``mailward user create --invite``, and deleting users in the portal and the console
(a confirmation step, audited, another tenant's user 404, the last admin kept, the deleted user's session ended)."""

from __future__ import annotations

from email import message_from_bytes, policy
from typing import Any

import pytest

from tests.fixtures.api import API, make_key
from tests.support.servers import run_cli
from tests.support.web import PASSWORD, post_form, sign_in, text
from tests.web.test_accounts import (
    NEW_PASSWORD,
    audit_actions,
    can_sign_in,
    link_of,
    queued_jobs,
    run_worker_until,
    set_by_link,
    user_row,
)


@pytest.fixture
def people(factory: Any, acme: Any) -> dict[str, Any]:
    """Acme (delivering to the sink) with an admin and a user; Beta with its own admin; an MSP admin."""
    beta = factory.tenant("Beta", ("beta.test",))
    factory.user("admin@acme.test", "tenant_admin", acme)
    factory.user("user@acme.test", "user", acme)
    factory.user("admin@beta.test", "tenant_admin", beta)
    factory.user("admin@msp.test", "msp_admin")
    return {"acme": acme, "beta": beta}


def api(web_app: Any, key: str, method: str, path: str, body: Any = None) -> Any:
    return web_app.test_client().open(API + path, method=method, json=body,
                                      headers={"Authorization": f"Bearer {key}"})


def uid(cfg: Any, email: str) -> int:
    user = user_row(cfg, email)
    assert user is not None, email
    return user.id


# --- the REST API ---------------------------------------------------------------------------------------------------

def test_api_invitation_is_mailed_and_its_link_sets_the_first_password_once(env, cfg, web_app, people, sink):
    key = make_key(cfg, people["acme"].id)
    both = api(web_app, key, "POST", "/users", {"email": "new@acme.test", "role": "tenant_auditor",
                                                "password": "an initial password", "invite": True})
    assert both.status_code == 422 and "invite" in both.get_json()["error"]["fields"]
    assert user_row(cfg, "new@acme.test") is None
    made = api(web_app, key, "POST", "/users", {"email": "new@acme.test", "role": "tenant_auditor", "invite": True})
    assert made.status_code == 201, made.get_json()
    assert made.get_json()["tenant_id"] == people["acme"].id
    assert user_row(cfg, "new@acme.test").password_hash is None  # type: ignore[union-attr]
    (got,) = run_worker_until(env, sink, 1)
    assert got.rcpts == ["new@acme.test"]
    assert message_from_bytes(got.data, policy=policy.default)["Subject"] == "Acme: you are invited to sign in"
    _, token = link_of(got)
    assert set_by_link(web_app, token).status_code == 302
    assert can_sign_in(web_app, "new@acme.test", NEW_PASSWORD)
    assert set_by_link(web_app, token, "another passphrase here").status_code == 400
    assert {"user.create", "user.invite"} <= set(audit_actions(cfg))


def test_api_without_invite_mails_nothing(cfg, web_app, people):
    key = make_key(cfg, people["acme"].id)
    made = api(web_app, key, "POST", "/users", {"email": "quiet@acme.test", "role": "user"})
    assert made.status_code == 201
    assert queued_jobs(cfg) == 0 and "user.invite" not in audit_actions(cfg)


def test_api_reset_ends_sessions_and_mails_a_link_that_works_once(env, cfg, web_app, people, sink):
    victim = sign_in(web_app, "user@acme.test")
    assert victim.get("/q/").status_code == 200
    key = make_key(cfg, people["acme"].id)
    resp = api(web_app, key, "POST", f"/users/{uid(cfg, 'user@acme.test')}/reset")
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json() == {"user_id": uid(cfg, "user@acme.test"), "email": "user@acme.test",
                               "purpose": "reset", "status": "queued"}
    assert victim.get("/q/").status_code == 302  # the open session ended
    assert not can_sign_in(web_app, "user@acme.test", PASSWORD)
    (got,) = run_worker_until(env, sink, 1)
    assert got.rcpts == ["user@acme.test"]
    _, token = link_of(got)
    assert set_by_link(web_app, token).status_code == 302
    assert can_sign_in(web_app, "user@acme.test", NEW_PASSWORD)
    again = set_by_link(web_app, token, "yet another passphrase")
    assert again.status_code == 400 and "already used" in text(again)
    assert "user.password_reset" in audit_actions(cfg)


def test_api_reset_of_another_tenants_user_is_404_and_changes_nothing(cfg, web_app, people):
    """Cross-tenant: Acme's key (every scope) posting Beta's admin id gets 404, like an id that does not exist."""
    key = make_key(cfg, people["acme"].id)
    before = user_row(cfg, "admin@beta.test").password_hash  # type: ignore[union-attr]
    for target in (uid(cfg, "admin@beta.test"), uid(cfg, "admin@msp.test"), 999999):
        resp = api(web_app, key, "POST", f"/users/{target}/reset")
        assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    assert user_row(cfg, "admin@beta.test").password_hash == before  # type: ignore[union-attr]
    assert can_sign_in(web_app, "admin@beta.test", PASSWORD)
    assert queued_jobs(cfg) == 0


def test_api_reset_needs_the_write_scope_and_an_active_user(cfg, web_app, people):
    reader = make_key(cfg, people["acme"].id, scopes="read")
    target = uid(cfg, "user@acme.test")
    assert api(web_app, reader, "POST", f"/users/{target}/reset").status_code == 403
    assert can_sign_in(web_app, "user@acme.test", PASSWORD)
    key = make_key(cfg, people["acme"].id)
    assert api(web_app, key, "PATCH", f"/users/{target}", {"active": False}).status_code == 200
    resp = api(web_app, key, "POST", f"/users/{target}/reset")
    assert resp.status_code == 422 and "deactivated" in resp.get_json()["error"]["message"]
    assert queued_jobs(cfg) == 0


def test_msp_key_resets_a_tenants_user(env, cfg, web_app, people, sink):
    msp = make_key(cfg, None)
    resp = api(web_app, msp, "POST", f"/users/{uid(cfg, 'admin@beta.test')}/reset")
    assert resp.status_code == 202
    assert not can_sign_in(web_app, "admin@beta.test", PASSWORD)
    assert queued_jobs(cfg) == 1


# --- the CLI --------------------------------------------------------------------------------------------------------

def test_cli_create_invite_mails_the_invitation_and_prints_where(env, cfg, web_app, people, sink):
    both = run_cli(["user", "create", "x@acme.test", "--role", "user", "--tenant", "Acme", "--invite",
                    "--password-stdin"], env, stdin="a password typed here\n")
    assert both.returncode == 2 and user_row(cfg, "x@acme.test") is None
    done = run_cli(["user", "create", "New@acme.test", "--role", "tenant_admin", "--tenant", "Acme", "--invite"], env)
    assert done.returncode == 0, done.stderr
    assert "invitation mailed to new@acme.test (queued as" in done.stdout
    assert "password" not in done.stdout
    assert user_row(cfg, "new@acme.test").password_hash is None  # type: ignore[union-attr]
    (got,) = sink.wait_count(1)
    assert got.rcpts == ["new@acme.test"]
    url, token = link_of(got)
    assert token not in done.stdout
    assert set_by_link(web_app, token).status_code == 302
    assert can_sign_in(web_app, "new@acme.test", NEW_PASSWORD)
    assert {"user.create", "user.invite"} <= set(audit_actions(cfg))


def test_cli_create_still_prints_a_random_password_without_invite(env, cfg, web_app, people):
    done = run_cli(["user", "create", "pw@acme.test", "--role", "user", "--tenant", "Acme"], env)
    assert done.returncode == 0, done.stderr
    password = done.stdout.split("password: ", 1)[1].strip()
    assert can_sign_in(web_app, "pw@acme.test", password)


# --- deleting users on the web --------------------------------------------------------------------------------------

def test_a_tenant_admin_deletes_a_user_after_confirming_and_their_session_ends(cfg, web_app, people):
    victim = sign_in(web_app, "user@acme.test")
    assert victim.get("/q/").status_code == 200
    admin = sign_in(web_app, "admin@acme.test")
    target = uid(cfg, "user@acme.test")
    listing = text(admin.get("/portal/users"))
    assert f"/portal/users/{target}/delete" in listing
    assert f"/portal/users/{uid(cfg, 'admin@acme.test')}/delete" not in listing  # not oneself
    ask = post_form(admin, "/portal/users", f"/portal/users/{target}/delete", {})
    assert ask.status_code == 200 and "Delete user@acme.test?" in text(ask)
    assert user_row(cfg, "user@acme.test") is not None  # asking deletes nothing
    done = post_form(admin, "/portal/users", f"/portal/users/{target}/delete", {"confirm": "1"})
    assert done.status_code == 302
    assert user_row(cfg, "user@acme.test") is None
    assert victim.get("/q/").status_code == 302  # the deleted user's open session ended
    assert not can_sign_in(web_app, "user@acme.test", PASSWORD)
    assert "user.delete" in audit_actions(cfg)


def test_a_tenant_admin_cannot_delete_another_tenants_user(cfg, web_app, people):
    beta_admin = sign_in(web_app, "admin@beta.test")
    for confirm in ("", "1"):
        resp = post_form(beta_admin, "/portal/users", f"/portal/users/{uid(cfg, 'user@acme.test')}/delete",
                         {"confirm": confirm})
        assert resp.status_code == 404
    assert user_row(cfg, "user@acme.test") is not None
    assert "user.delete" not in audit_actions(cfg)


def test_nobody_deletes_themselves_or_the_last_admin(cfg, web_app, people):
    admin = sign_in(web_app, "admin@acme.test")
    me = uid(cfg, "admin@acme.test")
    mine = post_form(admin, "/portal/users", f"/portal/users/{me}/delete", {"confirm": "1"})
    assert mine.status_code == 302 and "cannot delete your own account" in text(admin.get("/portal/users"))
    # An MSP admin viewing Acme reaches the portal page; Acme's only admin stays, at the first step already.
    msp = sign_in(web_app, "admin@msp.test")
    post_form(msp, "/console/", "/console/view-as", {"tenant_id": str(people["acme"].id)})
    for confirm in ("", "1"):
        last = post_form(msp, "/portal/users", f"/portal/users/{me}/delete", {"confirm": confirm})
        assert last.status_code == 302
        assert "last active tenant_admin" in text(msp.get("/portal/users"))
    assert user_row(cfg, "admin@acme.test") is not None
    assert admin.get("/portal/users").status_code == 200
    assert "user.delete" not in audit_actions(cfg)


def test_an_auditor_cannot_delete(cfg, web_app, people, factory):
    factory.user("auditor@acme.test", "tenant_auditor", people["acme"])
    auditor = sign_in(web_app, "auditor@acme.test")
    assert f"/portal/users/{uid(cfg, 'user@acme.test')}/delete" not in text(auditor.get("/portal/users"))
    resp = post_form(auditor, "/portal/users", f"/portal/users/{uid(cfg, 'user@acme.test')}/delete", {"confirm": "1"})
    assert resp.status_code == 404  # a role a view does not allow gets the answer of a missing object
    assert user_row(cfg, "user@acme.test") is not None


def test_the_console_deletes_staff_but_not_tenant_users(cfg, web_app, people, factory):
    factory.user("desk@msp.test", "msp_helpdesk")
    desk = sign_in(web_app, "desk@msp.test")
    assert desk.get("/console/").status_code == 200
    admin = sign_in(web_app, "admin@msp.test")
    helpdesk_tries = post_form(desk, "/console/staff", f"/console/staff/{uid(cfg, 'admin@msp.test')}/delete",
                               {"confirm": "1"})
    assert helpdesk_tries.status_code == 404 and user_row(cfg, "admin@msp.test") is not None  # msp_admin only
    staff_id = uid(cfg, "desk@msp.test")
    assert f"/console/staff/{staff_id}/delete" in text(admin.get("/console/staff"))
    tenant_user = uid(cfg, "user@acme.test")
    assert post_form(admin, "/console/staff", f"/console/staff/{tenant_user}/delete",
                     {"confirm": "1"}).status_code == 404
    assert user_row(cfg, "user@acme.test") is not None
    ask = post_form(admin, "/console/staff", f"/console/staff/{staff_id}/delete", {})
    assert ask.status_code == 200 and "Delete desk@msp.test?" in text(ask)
    done = post_form(admin, "/console/staff", f"/console/staff/{staff_id}/delete", {"confirm": "1"})
    assert done.status_code == 302 and user_row(cfg, "desk@msp.test") is None
    assert desk.get("/console/").status_code == 302  # signed out with the account
    me = uid(cfg, "admin@msp.test")
    assert post_form(admin, "/console/staff", f"/console/staff/{me}/delete", {"confirm": "1"}).status_code == 302
    assert user_row(cfg, "admin@msp.test") is not None
    assert "cannot delete your own account" in text(admin.get("/console/staff"))
    assert "user.delete" in audit_actions(cfg)
