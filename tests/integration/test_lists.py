"""Allow and block lists: values, matching and precedence, the services at three levels, the lists check, and the
rule that an allow entry never lets a virus through (against the real clamd)."""

from __future__ import annotations

import asyncio
import dataclasses
import smtplib
import time

import pytest
from sqlalchemy import select

from smtp.checks.base import CheckContext, Finding
from smtp.checks.lists import USER_LISTS_FACT, ListsCheck, findings_for_rcpt, rcpt_groups
from smtp.checks.virus import VirusCheck
from smtp.mime import parse_mail
from smtp.pipeline import run_stage
from smtp.verdict import Action, decide
from tenants.addresses import add_user_address
from tenants.exceptions import NotFound, PermissionDenied, ValidationError
from tenants.lists import (
    Entry,
    Level,
    add_entry,
    list_entries,
    load_tenant_lists,
    match,
    match_detail,
    remove_entry,
    validate_value,
)
from tenants.models import Message, User
from tenants.platform import db as tdb
from tenants.policy import Policy
from tenants.scope import msp_scope, tenant_scope
from tests.integration.test_ingress import client
from tests.support.clamd import EICAR
from tests.support.held import raw_mail
from tests.support.servers import run_cli, wait_for

# --- values ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("Alice@Example.COM", ("address", "alice@example.com")),
    ("example.com", ("domain", "example.com")),
    ("@Example.com", ("domain", "example.com")),
    ("*.example.com", ("domain", "example.com")),
    ("192.0.2.0/24", ("ip", "192.0.2.0/24")),
    ("192.0.2.7", ("ip", "192.0.2.7/32")),
    ("2001:db8::/32", ("ip", "2001:db8::/32")),
    ("bücher.example", ("domain", "xn--bcher-kva.example")),
])
def test_values_are_typed_and_normalised(value, expected):
    assert validate_value(value) == expected


@pytest.mark.parametrize("value, vtype, message", [
    ("", None, "empty"),
    ("not a domain", None, "not a domain name"),
    ("a@@b", "address", "not an e-mail address"),
    ("alice@localhost", None, "not an e-mail address"),
    ("192.0.2.1/24", None, "host bits set: did you mean 192.0.2.0/24"),
    ("0.0.0.0/4", None, "too broad"),
    ("::/0", None, "too broad"),
    ("example.com", "ip", "not an IP address or network"),
    ("example.com", "url", "use one of address, domain, ip"),
])
def test_bad_values_say_what_is_wrong(value, vtype, message):
    with pytest.raises(ValidationError, match=message):
        validate_value(value, vtype)


# --- matching -------------------------------------------------------------------------------------------------------

MSP_BLOCK = Entry("block", "domain", "example.com")
TENANT_ALLOW = Entry("allow", "address", "ceo@example.com", tenant_id=1)
USER_BLOCK = Entry("block", "address", "ceo@example.com", tenant_id=1, user_id=7)


def test_user_beats_tenant_beats_msp():
    who = dict(sender="ceo@example.com", header_from=None, client_ip="198.51.100.1")
    assert match([MSP_BLOCK], **who) == "block"
    assert match([MSP_BLOCK, TENANT_ALLOW], **who) == "allow"
    assert match([MSP_BLOCK, TENANT_ALLOW, USER_BLOCK], **who) == "block"
    found = match_detail([MSP_BLOCK, TENANT_ALLOW, USER_BLOCK], **who)
    assert found is not None and found.level == Level.USER and found.matched == "ceo@example.com"
    # Other senders of the domain are still blocked by the MSP: the tenant only allowed the one address.
    assert match([MSP_BLOCK, TENANT_ALLOW], sender="x@example.com", header_from=None, client_ip=None) == "block"


def test_block_beats_allow_at_the_same_level():
    entries = [Entry("allow", "domain", "example.com", tenant_id=1), Entry("block", "ip", "192.0.2.0/24", tenant_id=1)]
    assert match(entries, sender="a@example.com", header_from=None, client_ip="192.0.2.9") == "block"
    assert match(entries, sender="a@example.com", header_from=None, client_ip="198.51.100.9") == "allow"


def test_domains_match_their_subdomains_but_not_lookalikes():
    entries = [Entry("block", "domain", "example.com", tenant_id=1)]
    for sender in ("a@example.com", "a@mail.example.com", "a@x.y.example.com"):
        assert match(entries, sender=sender, header_from=None, client_ip=None) == "block", sender
    for sender in ("a@badexample.com", "a@example.com.evil.test", "a@com"):
        assert match(entries, sender=sender, header_from=None, client_ip=None) is None, sender


def test_networks_match_clients_in_them_v4_and_v6():
    entries = [Entry("allow", "ip", "192.0.2.0/24"), Entry("allow", "ip", "2001:db8::/32")]
    assert match(entries, sender="", header_from=None, client_ip="192.0.2.200") == "allow"
    assert match(entries, sender="", header_from=None, client_ip="2001:db8:1::5") == "allow"
    assert match(entries, sender="", header_from=None, client_ip="192.0.3.1") is None
    assert match(entries, sender="", header_from=None, client_ip="not-an-ip") is None


def test_header_from_matches_too_display_name_and_case_ignored():
    entries = [Entry("allow", "address", "news@shop.example", tenant_id=1)]
    assert match(entries, sender="bounce-123@mailer.example", header_from='"Shop" <News@Shop.Example>',
                 client_ip=None) == "allow"
    assert match(entries, sender="", header_from=None, client_ip=None) is None


# --- services -------------------------------------------------------------------------------------------------------

def _user(session, email: str) -> User:
    with msp_scope():
        return session.scalars(select(User).where(User.email == email)).one()


def test_entries_at_three_levels_and_their_scopes(cfg, world, session):
    acme, beta = world["acme"], world["beta"]
    bob = _user(session, "user@acme.test")
    with msp_scope():
        msp_entry = add_entry(session, kind="block", value="junk.example")
    with tenant_scope(acme.id):
        tenant_entry = add_entry(session, kind="allow", value="partner.example", tenant_id=acme.id, comment="partner")
        user_entry = add_entry(session, kind="allow", value="friend@junk.example", user_id=bob.id)
        assert user_entry.tenant_id == acme.id
        with pytest.raises(PermissionDenied):
            add_entry(session, kind="block", value="other.example")  # MSP-wide needs the MSP scope
        session.commit()
        assert [e.value for e in list_entries(session, tenant_id=acme.id)] == ["partner.example"]
        assert [e.value for e in list_entries(session, user_id=bob.id)] == ["friend@junk.example"]
        assert [e.value for e in list_entries(session)] == ["junk.example"]  # MSP-wide entries are readable
        with pytest.raises(NotFound):
            remove_entry(session, msp_entry.id)
    with tenant_scope(beta.id):
        with pytest.raises(NotFound):
            add_entry(session, kind="allow", value="x.example", user_id=bob.id)  # another tenant's user
        with pytest.raises(NotFound):
            remove_entry(session, tenant_entry.id)
        assert list_entries(session, tenant_id=acme.id) == []
    with tenant_scope(acme.id):
        with pytest.raises(NotFound):  # a user removes only their own entries
            remove_entry(session, tenant_entry.id, user_id=bob.id)
        remove_entry(session, user_entry.id, user_id=bob.id)
        session.commit()
        assert list_entries(session, user_id=bob.id) == []


def test_adding_the_same_value_again_is_idempotent_and_the_opposite_kind_flips_it(cfg, world, session):
    acme = world["acme"]
    with tenant_scope(acme.id):
        first = add_entry(session, kind="allow", value="News@Shop.example", tenant_id=acme.id)
        again = add_entry(session, kind="allow", value="news@shop.example", tenant_id=acme.id)
        assert again.id == first.id
        flipped = add_entry(session, kind="block", value="news@shop.example", tenant_id=acme.id)
        assert flipped.id == first.id and flipped.kind == "block"
        assert len(list_entries(session, tenant_id=acme.id)) == 1


def test_snapshot_keys_user_lists_by_email_and_alias_within_the_tenants_domains(cfg, world, session):
    acme, beta = world["acme"], world["beta"]
    bob = _user(session, "user@acme.test")
    beta_admin = _user(session, "admin@beta.test")
    with tenant_scope(acme.id):
        add_user_address(session, bob.id, "Sales@acme2.test")
        with pytest.raises(ValidationError, match="not a domain of this tenant"):
            add_user_address(session, bob.id, "ceo@beta.test")
        add_entry(session, kind="block", value="junk.example", user_id=bob.id)
        session.commit()
    with tenant_scope(beta.id):
        add_entry(session, kind="allow", value="junk.example", user_id=beta_admin.id)
        session.commit()
    lists = load_tenant_lists(session, acme.id)
    assert set(lists.users) == {"user@acme.test", "sales@acme2.test"}
    who = dict(sender="x@junk.example", header_from=None, client_ip=None)
    assert lists.user_match("SALES@acme2.test", **who).outcome == "block"
    assert lists.user_match("admin@beta.test", **who) is None  # not a domain of Acme: Beta's user lists never apply


# --- the check ------------------------------------------------------------------------------------------------------

def _context(cfg, tenant_ids, rcpts, raw, *, mail_from="spammer@junk.example", client_ip="203.0.113.9"):
    return CheckContext(cfg=cfg, client_ip=client_ip, helo="mx.junk.example", mail_from=mail_from, rcpts=list(rcpts),
                        tenant_ids=list(tenant_ids), policies={t: Policy() for t in tenant_ids},
                        mail=parse_mail(raw))


def test_the_check_records_tenant_symbols_and_user_outcomes(cfg, world, session):
    acme, beta = world["acme"], world["beta"]
    bob = _user(session, "user@acme.test")
    with tenant_scope(acme.id):
        add_entry(session, kind="block", value="junk.example", tenant_id=acme.id)
        add_entry(session, kind="allow", value="spammer@junk.example", user_id=bob.id)
        session.commit()
    with tenant_scope(beta.id):
        add_entry(session, kind="allow", value="203.0.113.0/24", tenant_id=beta.id)
        session.commit()
    ctx = _context(cfg, [acme.id, beta.id], ["user@acme.test", "carol@acme.test", "dave@beta.test"], raw_mail())
    asyncio.run(ListsCheck(cfg).run(ctx))
    assert {(f.symbol, f.tenant_id) for f in ctx.findings} == {("LIST_BLOCK", acme.id), ("LIST_ALLOW", beta.id)}
    assert ctx.facts[USER_LISTS_FACT] == {"user@acme.test": "allow"}
    # The ingress judges bob by his own list, carol by the tenant's.
    groups = rcpt_groups(ctx, ["user@acme.test", "carol@acme.test"])
    assert groups == {"allow": ["user@acme.test"], None: ["carol@acme.test"]}
    policy = Policy()
    assert decide(findings_for_rcpt(ctx, acme.id, "user@acme.test"), acme.id, policy).action == Action.DELIVER
    assert decide(findings_for_rcpt(ctx, acme.id, "carol@acme.test"), acme.id, policy).action == Action.REJECT
    assert decide(ctx.findings, beta.id, policy).action == Action.DELIVER


def test_the_check_reloads_when_the_policy_version_moves(cfg, world, session):
    from tenants.platform.redisconn import bump_policy_version, redis_client

    acme = world["acme"]
    check = ListsCheck(cfg)

    async def symbols() -> set[str]:
        ctx = _context(cfg, [acme.id], ["bob@acme.test"], raw_mail())
        ctx.redis = redis_client(cfg, asyncio_client=True)
        try:
            await check.run(ctx)
        finally:
            await ctx.redis.aclose()
        return {f.symbol for f in ctx.findings}

    assert asyncio.run(symbols()) == set()
    with tenant_scope(acme.id):
        add_entry(session, kind="block", value="junk.example", tenant_id=acme.id)
        session.commit()
    assert asyncio.run(symbols()) == set()  # cached: the version did not move
    bump_policy_version(cfg)
    assert asyncio.run(symbols()) == {"LIST_BLOCK"}


def test_an_allow_listed_sender_with_a_virus_is_still_quarantined_as_virus(cfg, world, session, clamd_server):
    """Attack: a virus sent from (or forged as) an allow-listed partner must not be delivered."""
    acme = world["acme"]
    with tenant_scope(acme.id):
        add_entry(session, kind="allow", value="junk.example", tenant_id=acme.id)
        session.commit()
    av_cfg = dataclasses.replace(cfg, clamd=clamd_server.address)
    raw = raw_mail(body=EICAR.decode() + "\n")
    ctx = _context(av_cfg, [acme.id], ["bob@acme.test"], raw)
    checks = [VirusCheck(av_cfg), ListsCheck(av_cfg)]
    from smtp.checks.base import Stage

    asyncio.run(run_stage(checks, ctx, Stage.DATA))
    assert {"CLAM_VIRUS", "LIST_ALLOW"} <= {f.symbol for f in ctx.findings}
    verdict = decide(ctx.findings, acme.id, Policy())
    assert (verdict.action, verdict.kind) == (Action.QUARANTINE, "virus")
    # A user's own allow entry does not change that either.
    ctx.facts[USER_LISTS_FACT] = {"bob@acme.test": "allow"}
    assert decide(findings_for_rcpt(ctx, acme.id, "bob@acme.test"), acme.id, Policy()).kind == "virus"
    assert Finding("LIST_ALLOW", "", acme.id).symbol == "LIST_ALLOW"


# --- through the real ingress ---------------------------------------------------------------------------------------

def _messages(session) -> list[Message]:
    session.rollback()
    with msp_scope():
        return list(session.scalars(select(Message).order_by(Message.received_at)))


def test_ingress_rejects_a_block_listed_sender_and_delivers_an_allow_listed_one(env, ingress, acme, sink, session):
    assert run_cli(["list", "add", "block", "junk.example", "--tenant", "Acme"], env).returncode == 0
    with client(env) as c, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        c.sendmail("spammer@junk.example", ["bob@acme.test"], raw_mail())  # the envelope is judged at RCPT
    assert refused.value.recipients["bob@acme.test"][0] == 550
    with client(env) as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("bounce@mailer.example", ["bob@acme.test"], raw_mail())  # only the header From is listed: DATA
    assert err.value.smtp_code == 554
    assert run_cli(["policy", "set", "Acme", "scores.MIME_DEFECT=9"], env).returncode == 0
    added = run_cli(["list", "add", "allow", "friend@partner.example", "--tenant", "Acme"], env)
    assert added.returncode == 0, added.stderr
    time.sleep(1.5)  # the ingress reloads policy when the version moves
    broken = (b"From: friend@partner.example\r\nTo: bob@acme.test\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
              b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n\r\nhello\r\n")
    with client(env) as c:
        c.sendmail("friend@partner.example", ["bob@acme.test"], broken)
    sink.wait_count(1)
    msg = wait_for(lambda: [m for m in _messages(session) if m.verdict == "deliver"], 10, what="delivered message")[0]
    with msp_scope():
        assert "LIST_ALLOW" in {f.symbol for f in msg.findings}


def test_ingress_quarantines_a_virus_from_an_allow_listed_sender(env, tmp_path, cfg, acme, sink, session,
                                                                 clamd_server):
    from tests.integration.test_verdicts import _connectable
    from tests.support.servers import Process

    assert run_cli(["list", "add", "allow", "junk.example", "--tenant", "Acme"], env).returncode == 0
    env["MAILWARD_CLAMD"] = clamd_server.address
    proc = Process(["smtp"], env, tmp_path / "smtp-av.log").start()
    try:
        wait_for(lambda: _connectable(env), 20, what="ingress port")
        with client(env) as c:
            c.sendmail("spammer@junk.example", ["bob@acme.test"], raw_mail(body=EICAR.decode() + "\n"))
        (stored,) = wait_for(lambda: _messages(session), 10, what="stored message")
        assert (stored.verdict, stored.quarantine_kind) == ("quarantine", "virus")
        with msp_scope():
            assert "LIST_ALLOW" in {f.symbol for f in stored.findings}
        time.sleep(1)
        assert sink.messages == []
    finally:
        proc.stop()


def test_cli_list_add_show_remove(env, cfg, world):
    added = run_cli(["list", "add", "block", "192.0.2.0/24", "--tenant", "Acme", "--comment", "bad net"], env)
    assert added.returncode == 0, added.stderr
    entry_id = added.stdout.split()[1].rstrip(":")
    assert "block ip 192.0.2.0/24 (tenant Acme)" in added.stdout
    user = run_cli(["list", "add", "allow", "friend@partner.example", "--user", "user@acme.test"], env)
    assert "(user user@acme.test)" in user.stdout
    msp = run_cli(["list", "add", "block", "junk.example"], env)
    assert "(MSP-wide)" in msp.stdout
    shown = run_cli(["list", "show", "--tenant", "Acme"], env).stdout
    assert f"{entry_id}\tblock\tip\t192.0.2.0/24\tbad net" in shown and "friend@" not in shown
    assert "friend@partner.example" in run_cli(["list", "show", "--user", "user@acme.test"], env).stdout
    bad = run_cli(["list", "add", "block", "192.0.2.1/24", "--tenant", "Acme"], env)
    assert bad.returncode == 1 and bad.stderr.strip() == ("mailward: error: '192.0.2.1/24' has host bits set: "
                                                         "did you mean 192.0.2.0/24?")
    assert run_cli(["list", "remove", entry_id], env).returncode == 0
    assert "no entries (tenant Acme)" in run_cli(["list", "show", "--tenant", "Acme"], env).stdout
    with tdb.session_scope(cfg) as s, msp_scope():
        assert [e.value for e in list_entries(s)] == ["junk.example"]


def test_ingress_applies_users_own_lists_per_recipient(env, ingress, acme, factory, sink, session):
    factory.user("bob@acme.test", "user", acme)
    factory.user("carol@acme.test", "user", acme)
    assert run_cli(["list", "add", "block", "junk.example", "--tenant", "Acme"], env).returncode == 0
    assert run_cli(["list", "add", "allow", "spammer@junk.example", "--user", "bob@acme.test"], env).returncode == 0
    assert run_cli(["list", "add", "block", "partner.example", "--user", "carol@acme.test"], env).returncode == 0
    # The envelope is judged per recipient at RCPT: bob's own allow entry beats the tenant's block; carol is refused.
    with client(env) as c:
        refused = c.sendmail("spammer@junk.example", ["bob@acme.test", "carol@acme.test"], raw_mail())
    assert {rcpt: code for rcpt, (code, _) in refused.items()} == {"carol@acme.test": 550}
    (got,) = sink.wait_count(1)
    assert got.rcpts == ["bob@acme.test"]
    with client(env) as c:
        refused = c.sendmail("friend@partner.example", ["bob@acme.test", "carol@acme.test"],
                             raw_mail(sender="friend@partner.example"))
    assert list(refused) == ["carol@acme.test"]  # carol blocks the partner for herself only
    got = sink.wait_count(2)
    assert got[1].rcpts == ["bob@acme.test"]
    with client(env) as c, pytest.raises(smtplib.SMTPRecipientsRefused):
        c.sendmail("friend@partner.example", ["carol@acme.test"], raw_mail(sender="friend@partner.example"))


# --- the MSP's default lists in the console -------------------------------------------------------------------------

def test_msp_admin_keeps_default_lists_that_tenants_see_and_cannot_touch(web_app, world, cfg):
    from sqlalchemy import select

    from tenants.models import AuditEntry, ListEntry
    from tests.support.web import post_form, read, sign_in, text

    admin = sign_in(web_app, "admin@msp.test")
    resp = post_form(admin, "/console/lists", "/console/lists",
                     {"kind": "block", "value": "Spam-Factory.example", "comment": "known spammer"})
    assert resp.status_code == 302
    entry = read(cfg, lambda s: s.scalars(select(ListEntry).where(ListEntry.value == "spam-factory.example")).one())
    assert (entry.tenant_id, entry.user_id, entry.kind) == (None, None, "block")
    assert read(cfg, lambda s: s.scalars(select(AuditEntry.action).where(
        AuditEntry.target == "spam-factory.example")).all()) == ["list.block.add"]
    bad = post_form(admin, "/console/lists", "/console/lists", {"kind": "block", "value": "not a sender!"})
    assert bad.status_code == 422

    tenant_admin = sign_in(web_app, "admin@acme.test")
    assert "spam-factory.example" in text(tenant_admin.get("/portal/lists"))  # shown for context
    assert post_form(tenant_admin, "/portal/lists", f"/portal/lists/{entry.id}/delete", {}).status_code == 404
    helpdesk = sign_in(web_app, "helpdesk@msp.test")
    assert "spam-factory.example" in text(helpdesk.get("/console/lists"))
    assert post_form(helpdesk, "/console/lists", f"/console/lists/{entry.id}/delete", {}).status_code == 404

    tenant_entry = post_form(tenant_admin, "/portal/lists", "/portal/lists", {"kind": "allow", "value": "x.example"})
    assert tenant_entry.status_code == 302
    own = read(cfg, lambda s: s.scalars(select(ListEntry).where(ListEntry.value == "x.example")).one())
    assert post_form(admin, "/console/lists", f"/console/lists/{own.id}/delete", {}).status_code == 404
    assert post_form(admin, "/console/lists", f"/console/lists/{entry.id}/delete", {}).status_code == 302
    assert read(cfg, lambda s: s.get(ListEntry, entry.id)) is None
    assert read(cfg, lambda s: s.get(ListEntry, own.id)) is not None
