"""Quarantine digests: who gets one and what it lists, its one-click links (single use, tamper-proof, expiring),
the magic login link, the schedule, and the digest mail reaching the sink through the real delivery path."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import pytest
from sqlalchemy import select, update

from tenants.addresses import add_user_address
from tenants.exceptions import TokenExpired, TokenInvalid, TokenUsed
from tenants.lists import list_entries
from tenants.models import Delivery, Message, Tenant, User
from tenants.platform import db as tdb
from tenants.platform.redisconn import redis_client
from tenants.policy import save_settings
from tenants.quarantine import inspect_action, redeem_action
from tenants.scope import msp_scope, tenant_scope
from tenants.tokens import (
    make_action_token,
    make_login_token,
    redeem_login_token,
    verify_action_token,
)
from tests.support.held import hold
from tests.support.servers import run_cli
from worker.digest import digest_users, due_tenants, schedule_digests, send_user_digest
from worker.scheduler import PeriodicJob, run_due

ACTION_LINK = re.compile(r"(http://\S+/q/action/(\S+))")
LOGIN_LINK = re.compile(r"http://\S+/q/login/(\S+)")


def _user(email: str) -> User:
    from tenants.platform.config import get_config

    with msp_scope(), tdb.session_scope(get_config()) as s:
        user = s.scalars(select(User).where(User.email == email)).one()
        s.expunge(user)
    return user


def _digest(session, message_id: str) -> tuple[Message, str, str]:
    """The stored digest: its message row, its text part and its HTML part."""
    from tenants.blobs import blob_store

    session.rollback()
    with msp_scope():
        msg = session.get(Message, message_id)
        raw = blob_store.get(session, message_id)
    mail = message_from_bytes(raw, policy=policy.default)
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    return msg, text, html


def _links(text: str) -> dict[str, list[str]]:
    """Action tokens of a digest's text part by action, in listed order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        found = ACTION_LINK.search(line)
        if found:
            action = line.split(":")[0].strip().split()[0].lower()
            out.setdefault(action, []).append(found.group(2))
    return out


@pytest.fixture
def inbox(cfg, world, session):
    """Acme's held mail: spam for the user (also via an alias), the admin, the auditor and nobody; a virus and an
    attachment for the user; spam in Beta."""
    acme, beta = world["acme"].id, world["beta"].id
    user = _user("user@acme.test")
    with tenant_scope(acme):
        add_user_address(session, user.id, "sales@acme2.test")
        session.commit()
    now = datetime.now(UTC)
    return {
        "mine": hold(cfg, acme, rcpts=("user@acme.test",), subject="Pills", sender="a@junk.example",
                     received_at=now - timedelta(hours=3)),
        "alias": hold(cfg, acme, rcpts=("Sales@acme2.test", "carol@acme.test"), subject="Lottery",
                      sender="b@junk.example", received_at=now - timedelta(hours=2)),
        "virus": hold(cfg, acme, kind="virus", rcpts=("user@acme.test",), subject="Invoice"),
        "attach": hold(cfg, acme, kind="attachment", rcpts=("user@acme.test",), subject="Doc"),
        "admin": hold(cfg, acme, rcpts=("admin@acme.test",), subject="For the admin"),
        "auditor": hold(cfg, acme, rcpts=("auditor@acme.test",), subject="For the auditor"),
        "nobody": hold(cfg, acme, rcpts=("nobody@acme.test",), subject="For nobody"),
        "old": hold(cfg, acme, rcpts=("user@acme.test",), subject="Ancient", received_at=now - timedelta(days=9)),
        "beta": hold(cfg, beta, rcpts=("admin@beta.test",), subject="Beta spam"),
    }


def test_digest_goes_to_users_with_new_spam_and_lists_only_theirs(cfg, world, session, inbox):
    acme = world["acme"].id
    with tenant_scope(acme):
        users = digest_users(session, acme)
    assert sorted(_user_email(u) for u in users) == ["admin@acme.test", "user@acme.test"]
    user = _user("user@acme.test")
    digest_id = send_user_digest(cfg, acme, user.id)
    assert digest_id is not None
    msg, text, html = _digest(session, digest_id)
    assert (msg.direction, msg.tenant_id, msg.mail_from) == ("digest", acme, cfg.bounce_sender)
    assert msg.expires_at is not None  # the stored copy goes when its links expire
    with msp_scope():
        assert [(d.rcpt, d.route, d.status) for d in msg.deliveries] == [("user@acme.test", "transport", "queued")]
    assert "Lottery" in text and "Pills" in text and text.index("Lottery") < text.index("Pills")  # newest first
    for other in ("Invoice", "For the admin", "For the auditor", "For nobody", "Ancient", "Beta spam"):
        assert other not in text and other not in html
    links = _links(text)
    assert {k: len(v) for k, v in links.items()} == {"release": 2, "delete": 2, "allow": 2, "block": 2}
    secret = cfg.resolve_secret_key()
    claims = [verify_action_token(secret, t) for t in links["release"]]
    assert [(c.message_id, c.rcpts, c.user_id, c.tenant_id) for c in claims] == [
        (inbox["alias"], ("Sales@acme2.test",), user.id, acme), (inbox["mine"], ("user@acme.test",), user.id, acme)]
    assert len({verify_action_token(secret, t).jti for ts in links.values() for t in ts}) == 8
    assert LOGIN_LINK.search(text) and "/q/action/" in html
    assert "Doc" in text.split("Held because of an attachment")[1] and "Doc" in html  # see the test below
    # Nothing new since: no second digest. New spam: the next digest lists only that.
    assert send_user_digest(cfg, acme, user.id) is None
    hold(cfg, acme, rcpts=("user@acme.test",), subject="Fresh one")
    _, text2, _ = _digest(session, send_user_digest(cfg, acme, user.id) or "")
    assert "Fresh one" in text2 and "Pills" not in text2 and "Lottery" not in text2


def test_attachment_holds_are_listed_apart_with_their_reason_and_no_links(cfg, world, session, inbox):
    """End users may not release attachment holds (only admins, as in the end-user quarantine): the digest lists
    them in their own section with why they were held, gives them no one-click link, and says an admin releases them.
    Virus holds stay out."""
    acme = world["acme"].id
    user = _user("user@acme.test")
    digest_id = send_user_digest(cfg, acme, user.id)
    assert digest_id is not None
    _, text, html = _digest(session, digest_id)
    spam, _, held = text.partition("Held because of an attachment (1)")
    assert held, text
    assert "Pills" in spam and "Doc" not in spam
    assert "Doc" in held and "Reason: quarantine (attachment)" in held and "only your administrator" in held
    assert "/q/action/" not in held.split("Open your quarantine")[0]
    attachment_html = html.split('id="attachment-holds"')[1]
    assert "Doc" in attachment_html and "quarantine (attachment)" in attachment_html
    assert "/q/action/" not in attachment_html
    secret = cfg.resolve_secret_key()
    linked = {verify_action_token(secret, t).message_id for ts in _links(text).values() for t in ts}
    assert linked == {inbox["mine"], inbox["alias"]}, "no link acts on the attachment hold (nor the virus)"
    assert "Invoice" not in text and "Invoice" not in html
    assert "3 new messages" in str(_digest(session, digest_id)[0].subject)


def test_a_user_with_only_an_attachment_hold_gets_a_digest_without_spam_section(cfg, world, session):
    acme = world["acme"].id
    hold(cfg, acme, kind="virus", rcpts=("admin@acme.test",), subject="Invoice")
    with tenant_scope(acme):
        assert digest_users(session, acme) == [], "a virus alone is no reason for a digest"
    hold(cfg, acme, kind="attachment", rcpts=("user@acme.test",), subject="Scan.exe")
    with tenant_scope(acme):
        users = digest_users(session, acme)
    assert [_user_email(u) for u in users] == ["user@acme.test"]
    _, text, html = _digest(session, send_user_digest(cfg, acme, users[0]) or "")
    assert "held as spam" not in text and "held as spam" not in html
    assert "Scan.exe" in text and "Held because of an attachment (1)" in text and "/q/action/" not in text
    assert "Scan.exe" in html and "/q/action/" not in html


def _user_email(user_id: int) -> str:
    from tenants.platform.config import get_config

    with msp_scope(), tdb.session_scope(get_config()) as s:
        return str(s.get(User, user_id).email)  # type: ignore[union-attr]


def test_an_action_link_works_once_and_says_so_the_second_time(cfg, world, session, inbox):
    acme = world["acme"].id
    user = _user("user@acme.test")
    _, text, _ = _digest(session, send_user_digest(cfg, acme, user.id) or "")
    release = _links(text)["release"][1]  # the mail to user@acme.test
    claim, previous = inspect_action(session, cfg, release)  # the GET a link scanner may send changes nothing
    assert (claim.action, claim.message_id, previous) == ("release", inbox["mine"], None)
    first = redeem_action(session, cfg, release)
    session.commit()
    assert first.done and first.message == "released to user@acme.test"
    again = redeem_action(session, cfg, release)
    session.commit()
    assert not again.done and again.message == "already done: released to user@acme.test"
    assert inspect_action(session, cfg, release)[1] == "released to user@acme.test"
    with msp_scope():
        rows = session.execute(select(Delivery.rcpt, Delivery.status).where(Delivery.message_id == inbox["mine"]))
        assert rows.all() == [("user@acme.test", "queued")]
    assert redis_client(cfg).llen("rq:queue:delivery") >= 1  # delivery queued after the commit


def test_the_delete_link_of_another_item_still_works_and_acts_on_the_users_rows_only(cfg, world, session, inbox):
    acme = world["acme"].id
    user = _user("user@acme.test")
    _, text, _ = _digest(session, send_user_digest(cfg, acme, user.id) or "")
    outcome = redeem_action(session, cfg, _links(text)["delete"][0])  # the alias mail, also sent to carol
    session.commit()
    assert outcome.message == "deleted for Sales@acme2.test"
    with msp_scope():
        rows = dict(session.execute(select(Delivery.rcpt, Delivery.status)
                                    .where(Delivery.message_id == inbox["alias"])).all())
    assert rows == {"Sales@acme2.test": "discarded", "carol@acme.test": "quarantined"}


def test_allow_and_block_links_list_the_sender_on_the_users_own_list(cfg, world, session, inbox):
    acme = world["acme"].id
    user = _user("user@acme.test")
    _, text, _ = _digest(session, send_user_digest(cfg, acme, user.id) or "")
    links = _links(text)
    allowed = redeem_action(session, cfg, links["allow"][1])
    blocked = redeem_action(session, cfg, links["block"][0])
    session.commit()
    assert allowed.message == "a@junk.example allowed; released to user@acme.test"
    assert blocked.message == "b@junk.example blocked; deleted for Sales@acme2.test"
    with tenant_scope(acme):
        assert {(e.kind, e.value) for e in list_entries(session, user_id=user.id)} == {
            ("allow", "a@junk.example"), ("block", "b@junk.example")}
        assert list_entries(session, tenant_id=acme) == []


def test_a_tampered_link_is_refused(cfg, world, session, inbox):
    """Attack: a user edits the token's payload (another message id) keeping the signature."""
    import base64
    import json

    acme = world["acme"].id
    user = _user("user@acme.test")
    _, text, _ = _digest(session, send_user_digest(cfg, acme, user.id) or "")
    token = _links(text)["release"][0]
    payload, rest = token.split(".", 1)
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["m"] = inbox["virus"]
    forged = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")
    with pytest.raises(TokenInvalid):
        redeem_action(session, cfg, forged + "." + rest)
    with pytest.raises(TokenInvalid):
        redeem_action(session, cfg, token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1])
    with pytest.raises(TokenInvalid):  # signed with another installation's key
        verify_action_token("another-secret", token)
    login = make_login_token(cfg.resolve_secret_key(), tenant_id=acme, user_id=user.id, email=user.email)
    with pytest.raises(TokenInvalid):  # a login token is no action token (salts differ)
        redeem_action(session, cfg, login)


def test_an_expired_link_is_refused(cfg, world, session, inbox):
    acme = world["acme"].id
    user = _user("user@acme.test")
    old = make_action_token(cfg.resolve_secret_key(), tenant_id=acme, message_id=inbox["mine"],
                            rcpts=["user@acme.test"], action="release", user_id=user.id,
                            issued_at=time.time() - 8 * 86400)
    with pytest.raises(TokenExpired):
        redeem_action(session, cfg, old)
    with msp_scope():
        assert session.scalar(select(Delivery.status).where(Delivery.message_id == inbox["mine"])) == "quarantined"


def test_a_disabled_users_links_do_nothing(cfg, world, session, inbox):
    acme = world["acme"].id
    user = _user("user@acme.test")
    _, text, _ = _digest(session, send_user_digest(cfg, acme, user.id) or "")
    with msp_scope():
        session.execute(update(User).where(User.id == user.id).values(active=False))
        session.commit()
    outcome = redeem_action(session, cfg, _links(text)["release"][1])
    session.commit()
    assert not outcome.done and outcome.message == "not possible: this account is disabled"


def test_the_login_link_signs_in_once(cfg, world, session, inbox):
    acme = world["acme"].id
    user = _user("user@acme.test")
    _, text, _ = _digest(session, send_user_digest(cfg, acme, user.id) or "")
    token = LOGIN_LINK.search(text).group(1)  # type: ignore[union-attr]
    assert redeem_login_token(session, cfg.resolve_secret_key(), token).email == "user@acme.test"
    session.commit()
    with pytest.raises(TokenUsed):
        redeem_login_token(session, cfg.resolve_secret_key(), token)
    with pytest.raises(TokenInvalid):
        redeem_login_token(session, cfg.resolve_secret_key(), _links(text)["release"][0])


def test_branding_is_escaped_and_validated(cfg, world, session, inbox):
    acme = world["acme"].id
    with msp_scope():
        session.execute(update(Tenant).where(Tenant.id == acme).values(
            brand_name='Acme <script>alert(1)</script>', brand_color="red;x", brand_logo_url="javascript:alert(1)"))
        session.commit()
    user = _user("user@acme.test")
    _, _, html = _digest(session, send_user_digest(cfg, acme, user.id) or "")
    assert "<script>alert(1)" not in html and "Acme &lt;script&gt;" in html
    assert "red;x" not in html and "#1f6feb" in html and "javascript:" not in html


# --- through the real delivery path --------------------------------------------------------------------------------

def test_the_digest_reaches_the_users_mail_server(env, cfg, acme, factory, sink, session):
    factory.user("user@acme.test", "user", acme)
    with tenant_scope(acme.id), tdb.session_scope(cfg) as s:
        save_settings(s, acme.id, {"digest_sender": "quarantine@acme.test"})
    hold(cfg, acme.id, rcpts=("user@acme.test",), subject="Cheap pills")
    sent = run_cli(["digest", "send", "Acme", "--user", "user@acme.test", "--now"], env)
    assert sent.returncode == 0, sent.stderr
    assert "1 digest(s) sent for tenant Acme" in sent.stdout
    assert re.search(r"^digest \S+ sent to user@acme\.test$", sent.stdout, re.M), sent.stdout
    (got,) = sink.wait_count(1)
    assert got.rcpts == ["user@acme.test"] and got.mail_from == "quarantine@acme.test"
    mail = message_from_bytes(got.data, policy=policy.default)
    assert mail["Subject"] == "Acme: 1 new message in your quarantine"
    assert mail["Auto-Submitted"] == "auto-generated" and "quarantine@acme.test" in mail["From"]
    assert "Cheap pills" in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    again = run_cli(["digest", "send", "Acme", "--now"], env)
    assert "0 digest(s) sent" in again.stdout


def test_a_queued_digest_is_built_and_delivered_by_the_worker(env, cfg, acme, factory, sink, session):
    factory.user("user@acme.test", "user", acme)
    factory.user("auditor@acme.test", "tenant_auditor", acme)
    hold(cfg, acme.id, rcpts=("user@acme.test",))
    hold(cfg, acme.id, rcpts=("auditor@acme.test",))
    queued = run_cli(["digest", "send", "Acme"], env)
    assert queued.returncode == 0 and "digest job queued" in queued.stdout, queued.stderr
    for _ in range(2):  # the tenant job queues the user job, which queues the delivery
        assert run_cli(["worker", "--burst"], env).returncode == 0
    (got,) = sink.wait_count(1)
    assert got.rcpts == ["user@acme.test"]


# --- schedule -------------------------------------------------------------------------------------------------------

def test_tenants_are_due_from_their_local_digest_hour_once_a_day(cfg, world, session):
    acme, beta = world["acme"].id, world["beta"].id
    with tenant_scope(acme):
        save_settings(session, acme, {"digest_hour": 8, "timezone": "Europe/Berlin"})
        session.commit()
    with tenant_scope(beta):
        save_settings(session, beta, {"digest_enabled": False})
        session.commit()
    winter_7_utc = datetime(2026, 1, 15, 6, 30, tzinfo=UTC)  # 07:30 in Berlin
    winter_8_utc = datetime(2026, 1, 15, 7, 5, tzinfo=UTC)  # 08:05 in Berlin
    assert due_tenants(session, winter_7_utc) == []
    assert due_tenants(session, winter_8_utc) == [(acme, "2026-01-15")]
    assert schedule_digests(cfg, now=winter_8_utc) == [acme]
    assert schedule_digests(cfg, now=winter_8_utc + timedelta(minutes=5)) == []  # once per local day
    assert schedule_digests(cfg, now=winter_8_utc + timedelta(days=1)) == [acme]
    assert redis_client(cfg).llen("rq:queue:default") == 2


def test_the_periodic_table_runs_each_job_at_its_interval(cfg):
    calls: list[str] = []
    jobs = [PeriodicJob("fast", lambda c: 1.0, lambda c: calls.append("fast")),
            PeriodicJob("slow", lambda c: 10.0, lambda c: calls.append("slow")),
            PeriodicJob("broken", lambda c: 5.0, lambda c: 1 / 0)]
    assert run_due(cfg, jobs, 100.0) == ["fast", "slow", "broken"]  # all at start; a failure stops none
    assert run_due(cfg, jobs, 100.5) == []
    assert run_due(cfg, jobs, 101.0) == ["fast"]
    assert run_due(cfg, jobs, 105.0) == ["fast", "broken"]
    assert run_due(cfg, jobs, 110.0) == ["fast", "slow", "broken"]
    assert calls == ["fast", "slow", "fast", "fast", "fast", "slow"]
