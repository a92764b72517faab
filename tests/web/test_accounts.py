"""Accounts on day two: changing one's own password, reset links mailed through the real delivery path to the sink,
"forgot password?" without account enumeration, invitations, the operator's ``mailward user`` commands, and sessions
that end when a password is reset or an account disabled."""

from __future__ import annotations

import re
import time
from email import message_from_bytes, policy
from typing import Any

import pytest
from sqlalchemy import select

from tenants import accounts
from tenants.models import AuditEntry, User
from tenants.platform.config import Config, ConfigError
from tenants.platform.jobs import job_queue
from tests.support.servers import run_cli
from tests.support.web import PASSWORD, csrf_token, post_form, read, sign_in, text

LINK = re.compile(r"(http://\S+/password/set/(\S+))")
NEW_PASSWORD = "a brand new passphrase"


def user_row(cfg: Any, email: str) -> User | None:
    return read(cfg, lambda s: s.scalars(select(User).where(User.email == email)).first())


def audit_actions(cfg: Any) -> list[str]:
    return read(cfg, lambda s: list(s.scalars(select(AuditEntry.action).order_by(AuditEntry.id))))


def queued_jobs(cfg: Any) -> int:
    return job_queue(cfg).count


def run_worker_until(env: dict[str, str], sink: Any, count: int) -> list[Any]:
    """Run the real worker (burst) until ``count`` mails reached the sink: the link job stores and queues the mail,
    the delivery job delivers it."""
    for _ in range(3):
        done = run_cli(["worker", "--burst"], env)
        assert done.returncode == 0, done.stderr
        if len(sink.messages) >= count:
            break
    return sink.wait_count(count, timeout=10)


def link_of(received: Any) -> tuple[str, str]:
    mail = message_from_bytes(received.data, policy=policy.default)
    body = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    found = LINK.search(body)
    assert found, body
    return found.group(1), found.group(2)


def can_sign_in(web_app: Any, email: str, password: str) -> bool:
    resp = post_form(web_app.test_client(), "/login", "/login", {"email": email, "password": password})
    return resp.status_code == 302


def set_by_link(web_app: Any, token: str, password: str = NEW_PASSWORD) -> Any:
    client = web_app.test_client()
    page = client.get(f"/password/set/{token}")
    if page.status_code != 200:
        return page
    return client.post(f"/password/set/{token}",
                       data={"new": password, "again": password, "csrf_token": csrf_token(text(page))})


@pytest.fixture
def people(factory: Any, acme: Any) -> dict[str, Any]:
    """Acme (delivering to the sink) with an admin and a user; Beta with its own admin."""
    beta = factory.tenant("Beta", ("beta.test",))
    factory.user("admin@acme.test", "tenant_admin", acme)
    factory.user("user@acme.test", "user", acme)
    factory.user("admin@beta.test", "tenant_admin", beta)
    factory.user("admin@msp.test", "msp_admin")
    return {"acme": acme, "beta": beta}


# --- one's own password ---------------------------------------------------------------------------------------------

def test_changing_ones_password_needs_the_current_one_and_ends_other_sessions(cfg, web_app, people):
    other = sign_in(web_app, "admin@acme.test")
    me = sign_in(web_app, "admin@acme.test")
    before = user_row(cfg, "admin@acme.test").password_hash  # type: ignore[union-attr]
    wrong = post_form(me, "/account/password", "/account/password",
                      {"current": "not my password", "new": NEW_PASSWORD, "again": NEW_PASSWORD})
    assert wrong.status_code == 422 and "current password is not right" in text(wrong)
    assert user_row(cfg, "admin@acme.test").password_hash == before  # type: ignore[union-attr]
    short = post_form(me, "/account/password", "/account/password",
                      {"current": PASSWORD, "new": "short", "again": "short"})
    assert short.status_code == 422
    done = post_form(me, "/account/password", "/account/password",
                     {"current": PASSWORD, "new": NEW_PASSWORD, "again": NEW_PASSWORD})
    assert done.status_code == 302
    assert me.get("/portal/users").status_code == 200  # this session goes on
    assert other.get("/portal/users").status_code == 302  # the other one ends
    assert not can_sign_in(web_app, "admin@acme.test", PASSWORD)
    assert can_sign_in(web_app, "admin@acme.test", NEW_PASSWORD)
    assert {"account.password_change_failed", "account.password_changed"} <= set(audit_actions(cfg))


# --- reset links ----------------------------------------------------------------------------------------------------

def test_forgot_password_mails_a_link_that_sets_a_new_password_once(env, cfg, web_app, people, sink):
    client = web_app.test_client()
    resp = post_form(client, "/password/forgot", "/password/forgot", {"email": "User@acme.test"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/login")
    (got,) = run_worker_until(env, sink, 1)
    assert got.rcpts == ["user@acme.test"]
    mail = message_from_bytes(got.data, policy=policy.default)
    assert mail["Subject"] == "Acme: set a new password" and mail["Auto-Submitted"] == "auto-generated"
    _, token = link_of(got)
    assert can_sign_in(web_app, "user@acme.test", PASSWORD)  # asking for a link changes nothing by itself
    mismatch = web_app.test_client()
    page = mismatch.get(f"/password/set/{token}")
    assert page.status_code == 200 and "user@acme.test" in text(page)
    differ = mismatch.post(f"/password/set/{token}", data={"new": NEW_PASSWORD, "again": "something else entirely",
                                                          "csrf_token": csrf_token(text(page))})
    assert differ.status_code == 422
    assert set_by_link(web_app, token).status_code == 302
    assert can_sign_in(web_app, "user@acme.test", NEW_PASSWORD)
    assert not can_sign_in(web_app, "user@acme.test", PASSWORD)
    again = set_by_link(web_app, token, "yet another passphrase")
    assert again.status_code == 400 and "already used" in text(again)
    assert can_sign_in(web_app, "user@acme.test", NEW_PASSWORD)
    actions = audit_actions(cfg)
    assert "account.password_forgot" in actions and "account.password_set" in actions


def test_forgot_password_answers_alike_for_unknown_addresses_and_sends_nothing(env, cfg, web_app, people, sink):
    answers = []
    for address in ("nobody@acme.test", "user@acme.test"):
        client = web_app.test_client()
        resp = post_form(client, "/password/forgot", "/password/forgot", {"email": address})
        page = client.get(resp.headers["Location"])
        answers.append((resp.status_code, resp.headers["Location"], "a link to set a new password" in text(page)))
        if address.startswith("nobody"):
            assert queued_jobs(cfg) == 0
    assert answers[0] == answers[1] == (302, "/login", True)
    assert queued_jobs(cfg) == 1  # the real address only
    again = post_form(web_app.test_client(), "/password/forgot", "/password/forgot", {"email": "user@acme.test"})
    assert again.status_code == 302 and queued_jobs(cfg) == 1  # one mail per user per interval
    run_worker_until(env, sink, 1)
    assert [m.rcpts for m in sink.messages] == [["user@acme.test"]]


def test_an_expired_or_tampered_link_is_refused(cfg, web_app, people):
    user = user_row(cfg, "user@acme.test")
    old = accounts.make_link_token(cfg, user, "reset", issued_at=time.time() - cfg.reset_link_max_age - 60)
    expired = set_by_link(web_app, old)
    assert expired.status_code == 400 and "expired" in text(expired)
    fresh = accounts.make_link_token(cfg, user, "reset")
    assert set_by_link(web_app, fresh[:-3] + ("AAA" if not fresh.endswith("AAA") else "BBB")).status_code == 400
    # An invitation lives longer than a reset: the same age is still good for it.
    invite = accounts.make_link_token(cfg, user, "invite", issued_at=time.time() - cfg.reset_link_max_age - 60)
    assert web_app.test_client().get(f"/password/set/{invite}").status_code == 200


def test_link_ages_come_from_the_configuration_and_are_validated(env):
    short = Config.from_env({**env, "MAILWARD_RESET_LINK_MAX_AGE": "60", "MAILWARD_INVITE_LINK_MAX_AGE": "120"})
    assert accounts.max_age(short, "reset").total_seconds() == 60
    assert accounts.max_age(short, "invite").total_seconds() == 120
    for bad in ("0", "-5", "a day"):
        with pytest.raises(ConfigError, match="RESET_LINK_MAX_AGE"):
            Config.from_env({**env, "MAILWARD_RESET_LINK_MAX_AGE": bad})


def test_a_tenant_admin_resets_a_user_whose_sessions_end(env, cfg, web_app, people, sink):
    victim = sign_in(web_app, "user@acme.test")
    assert victim.get("/q/").status_code == 200
    admin = sign_in(web_app, "admin@acme.test")
    uid = user_row(cfg, "user@acme.test").id  # type: ignore[union-attr]
    resp = post_form(admin, "/portal/users", f"/portal/users/{uid}/reset", {})
    assert resp.status_code == 302
    assert victim.get("/q/").status_code == 302  # the open session ended
    assert not can_sign_in(web_app, "user@acme.test", PASSWORD)  # the old password no longer works
    (got,) = run_worker_until(env, sink, 1)
    _, token = link_of(got)
    assert set_by_link(web_app, token).status_code == 302
    assert can_sign_in(web_app, "user@acme.test", NEW_PASSWORD)
    assert "user.password_reset" in audit_actions(cfg)


def test_a_tenant_admin_cannot_reset_another_tenants_user(cfg, web_app, people):
    """Cross-tenant: Beta's admin posting Acme's user id gets 404, and nothing changes."""
    beta_admin = sign_in(web_app, "admin@beta.test")
    target = user_row(cfg, "user@acme.test")
    resp = post_form(beta_admin, "/portal/users", f"/portal/users/{target.id}/reset", {})  # type: ignore[union-attr]
    assert resp.status_code == 404
    assert user_row(cfg, "user@acme.test").password_hash == target.password_hash  # type: ignore[union-attr]
    assert queued_jobs(cfg) == 0
    assert can_sign_in(web_app, "user@acme.test", PASSWORD)


# --- invitations ----------------------------------------------------------------------------------------------------

def test_an_invitation_link_sets_the_first_password(env, cfg, web_app, people, sink):
    admin = sign_in(web_app, "admin@acme.test")
    both = post_form(admin, "/portal/users", "/portal/users",
                     {"email": "new@acme.test", "role": "tenant_auditor", "password": "an initial password",
                      "invite": "y"})
    assert both.status_code == 422 and user_row(cfg, "new@acme.test") is None
    resp = post_form(admin, "/portal/users", "/portal/users",
                     {"email": "new@acme.test", "role": "tenant_auditor", "invite": "y"})
    assert resp.status_code == 302
    assert user_row(cfg, "new@acme.test").password_hash is None  # type: ignore[union-attr]
    (got,) = run_worker_until(env, sink, 1)
    assert got.rcpts == ["new@acme.test"]
    assert "invited" in message_from_bytes(got.data, policy=policy.default)["Subject"]
    _, token = link_of(got)
    page = web_app.test_client().get(f"/password/set/{token}")
    assert "choose your password" in text(page)
    assert set_by_link(web_app, token).status_code == 302
    assert can_sign_in(web_app, "new@acme.test", NEW_PASSWORD)
    assert set_by_link(web_app, token).status_code == 400
    assert "user.invite" in audit_actions(cfg)


# --- the operator's commands ----------------------------------------------------------------------------------------

def test_cli_passwd_sets_a_password_and_refuses_a_short_one(env, cfg, web_app, people):
    short = run_cli(["user", "passwd", "user@acme.test", "--password-stdin"], env, stdin="short\n")
    assert short.returncode == 1 and "too short" in short.stderr
    done = run_cli(["user", "passwd", "user@acme.test", "--password-stdin"], env, stdin=NEW_PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert can_sign_in(web_app, "user@acme.test", NEW_PASSWORD)
    assert not can_sign_in(web_app, "user@acme.test", PASSWORD)
    unknown = run_cli(["user", "passwd", "ghost@acme.test", "--password-stdin"], env, stdin=NEW_PASSWORD + "\n")
    assert unknown.returncode == 1 and "no user ghost@acme.test" in unknown.stderr
    assert "user.password_set" in audit_actions(cfg)


def test_cli_reset_mails_the_link_and_prints_it_only_when_asked(env, cfg, web_app, people, sink):
    sent = run_cli(["user", "reset", "user@acme.test"], env)
    assert sent.returncode == 0, sent.stderr
    assert "reset link mailed to user@acme.test (queued as" in sent.stdout
    (got,) = sink.wait_count(1)
    url, token = link_of(got)
    assert token not in sent.stdout and "/password/set/" not in sent.stdout
    assert not can_sign_in(web_app, "user@acme.test", PASSWORD)
    printed = run_cli(["user", "reset", "admin@acme.test", "--print-link"], env)
    assert printed.returncode == 0, printed.stderr
    shown = LINK.search(printed.stdout)
    assert shown is not None
    assert set_by_link(web_app, shown.group(2)).status_code == 302
    assert can_sign_in(web_app, "admin@acme.test", NEW_PASSWORD)


def test_cli_reset_of_msp_staff_goes_straight_to_the_relay_host(env, cfg, web_app, people, sink):
    staff_env = {**env, "MAILWARD_RELAYHOST": f"127.0.0.1:{sink.port}"}
    sent = run_cli(["user", "reset", "admin@msp.test"], staff_env)
    assert sent.returncode == 0, sent.stderr
    (got,) = sink.wait_count(1)
    assert got.rcpts == ["admin@msp.test"]
    _, token = link_of(got)
    assert set_by_link(web_app, token).status_code == 302
    assert can_sign_in(web_app, "admin@msp.test", NEW_PASSWORD)


def test_cli_disable_ends_open_sessions_and_keeps_the_last_admin(env, cfg, web_app, people):
    client = sign_in(web_app, "user@acme.test")
    assert client.get("/q/").status_code == 200
    done = run_cli(["user", "disable", "user@acme.test"], env)
    assert done.returncode == 0 and "deactivated" in done.stdout, done.stderr
    assert client.get("/q/").status_code == 302  # the open session ended at its next request
    assert not can_sign_in(web_app, "user@acme.test", PASSWORD)
    last = run_cli(["user", "disable", "admin@acme.test"], env)
    assert last.returncode == 1 and "last active tenant_admin" in last.stderr
    assert user_row(cfg, "admin@acme.test").active  # type: ignore[union-attr]
    assert "user.deactivate" in audit_actions(cfg)


def test_cli_delete_needs_the_address_twice_and_keeps_the_last_admin(env, cfg, people):
    mismatch = run_cli(["user", "delete", "user@acme.test", "--confirm", "admin@acme.test"], env)
    assert mismatch.returncode == 2 and user_row(cfg, "user@acme.test") is not None
    last = run_cli(["user", "delete", "admin@beta.test", "--confirm", "admin@beta.test"], env)
    assert last.returncode == 1 and "last active" in last.stderr
    assert user_row(cfg, "admin@beta.test") is not None
    done = run_cli(["user", "delete", "User@acme.test", "--confirm", "user@acme.test"], env)
    assert done.returncode == 0, done.stderr
    assert user_row(cfg, "user@acme.test") is None
    assert "user.delete" in audit_actions(cfg)


def test_the_console_invites_and_resets_staff_by_mail_and_not_tenant_users(env, cfg, web_app, people, sink):
    """Staff mail goes straight to the next hop (here the relay host); a tenant user's id in the console is 404."""
    staff_env = {**env, "MAILWARD_RELAYHOST": f"127.0.0.1:{sink.port}"}
    admin = sign_in(web_app, "admin@msp.test")
    neither = post_form(admin, "/console/staff", "/console/staff", {"email": "desk@msp.test", "role": "msp_helpdesk"})
    assert neither.status_code == 422 and user_row(cfg, "desk@msp.test") is None
    invited = post_form(admin, "/console/staff", "/console/staff",
                        {"email": "desk@msp.test", "role": "msp_helpdesk", "invite": "y"})
    assert invited.status_code == 302
    (got,) = run_worker_until(staff_env, sink, 1)
    assert got.rcpts == ["desk@msp.test"]
    _, token = link_of(got)
    assert set_by_link(web_app, token).status_code == 302
    desk = sign_in(web_app, "desk@msp.test", NEW_PASSWORD)
    assert desk.get("/console/").status_code == 200
    tenant_user = user_row(cfg, "user@acme.test").id  # type: ignore[union-attr]
    assert post_form(admin, "/console/staff", f"/console/staff/{tenant_user}/reset", {}).status_code == 404
    staff_id = user_row(cfg, "desk@msp.test").id  # type: ignore[union-attr]
    assert post_form(admin, "/console/staff", f"/console/staff/{staff_id}/reset", {}).status_code == 302
    assert desk.get("/console/").status_code == 302  # the reset ended the staff member's session
    (_, second) = run_worker_until(staff_env, sink, 2)
    _, token = link_of(second)
    assert set_by_link(web_app, token, "the second new passphrase").status_code == 302
    assert can_sign_in(web_app, "desk@msp.test", "the second new passphrase")
