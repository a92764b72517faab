"""Refused mail in the tracking center and the statistics: a recipient refused at RCPT (unknown, blocked sender) and a
mail refused at DATA (spam, virus) is recorded with the exact reply the sender got, keeps no content, is found by
verdict and by delivery status, tells its story in the timeline, is counted as rejected by reason, is never delivered,
and is purged like other mail. A failure to record never changes the reply.

Everything goes through the real ingress process with smtplib; the roll-up and purge run on the same database.
"""

from __future__ import annotations

import smtplib
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text

from tenants import recipients, tracking
from tenants.models import Blob, Delivery, Event, Message, StatHour, StatTop, utcnow
from tenants.platform import db as tdb
from tenants.scope import tenant_scope
from tests.conftest import TEST_DB
from tests.integration.test_ingress import client, make_mail
from tests.integration.test_recipients import as_tenant
from tests.integration.test_verdicts import BROKEN, set_policy
from tests.integration.test_verdicts import av_ingress as av_ingress  # noqa: F401 - the fixture, for the virus test
from tests.support.servers import run_cli, wait_for
from tests.support.web import read, sign_in
from tests.support.web import text as page_text
from worker import rollup as r
from worker.retention import purge

UNKNOWN_REPLY = "550 5.1.1 <nobody@acme.test>: recipient unknown"
BLOCKED_REPLY = "550 5.7.1 Sender blocked by the recipient's policy"
SPAM_REPLY = "554 5.7.1 Message rejected as spam"


@pytest.fixture
def acme_admin(factory: Any, acme: Any) -> Any:
    """Acme's tenant admin, to look at the portal's tracking center."""
    return factory.user("admin@acme.test", "tenant_admin", acme)


def static_recipients(env: dict[str, str], cfg: Any, tenant_id: int, *addresses: str) -> None:
    """Acme accepts only ``addresses``; waits until the ingress refuses another one (a probe address, whose
    refusals the tests then leave aside)."""
    def setup(s: Any) -> None:
        recipients.replace_static(s, tenant_id, "\n".join(addresses))
        recipients.set_mode(s, tenant_id, "static")

    as_tenant(cfg, tenant_id, setup)
    wait_for(lambda: rcpt_reply(env, "probe@acme.test")[0] == 550, 10, interval=0.3, what="static mode")


def rcpt_reply(env: dict[str, str], address: str, sender: str = "alice@sender.example") -> tuple[int, str]:
    """RCPT TO in a fresh session: the code and the whole reply line as the client saw it."""
    with client(env) as c:
        c.ehlo()
        c.mail(sender)
        code, reply = c.rcpt(address)
        c.rset()
    return code, f"{code} {reply.decode()}"


def refused_for(cfg: Any, rcpt: str) -> list[Message]:
    """The recorded messages whose only recipient is ``rcpt`` (with deliveries loaded)."""
    def q(s: Any) -> list[Message]:
        ids = select(Delivery.message_id).where(Delivery.rcpt == rcpt)
        msgs = list(s.scalars(select(Message).where(Message.id.in_(ids)).order_by(Message.received_at)))
        for m in msgs:
            _ = list(m.deliveries), list(m.findings)
        s.expunge_all()
        return msgs
    return read(cfg, q)


def has_blob(cfg: Any, message_id: str) -> bool:
    return read(cfg, lambda s: s.scalar(select(func.count()).select_from(Blob).where(Blob.id == message_id))) > 0


def events(cfg: Any, message_id: str) -> list[tuple[str, str]]:
    return read(cfg, lambda s: [(e.kind, e.detail) for e in s.scalars(
        select(Event).where(Event.message_id == message_id).order_by(Event.id))])


def search(cfg: Any, tenant_id: int, **filters: Any) -> list[str]:
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        page, _ = tracking.search_page(s, tracking.Filters(**filters), limit=500)
        return [m.id for m in page]


def timeline(cfg: Any, tenant_id: int, message_id: str) -> list[tuple[str, str]]:
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        return [(step.kind, step.detail) for step in tracking.timeline(tracking.detail(s, message_id))]


def rolled_up(cfg: Any, tenant_id: int) -> tuple[int, dict[str, int], dict[str, int]]:
    """Run the roll-up now; the tenant's rejected count, reject reasons and recipients top list of all time."""
    r.rollup(cfg, now=utcnow() + r.SAFETY_LAG, since=utcnow() - timedelta(days=1))
    with tenant_scope(tenant_id), tdb.session_scope(cfg) as s:
        rejected = s.scalar(select(func.coalesce(func.sum(StatHour.rejected), 0)))
        reasons = {t.key: t.count for t in s.scalars(select(StatTop).where(StatTop.kind == r.TOP_REJECT))}
        rcpts = {t.key: t.count for t in s.scalars(select(StatTop).where(StatTop.kind == r.TOP_RCPT))}
    return int(rejected), reasons, rcpts


def assert_never_delivered(env: dict[str, str], cfg: Any, message_id: str, sink: Any, sink_count: int) -> None:
    """The worker (sweeper, retries) leaves the refused rows alone and the sink gets nothing more."""
    result = run_cli(["worker", "--burst"], env)
    assert result.returncode == 0, result.stderr
    time.sleep(1.0)  # the ingress's own sweeps had their chance too
    rows = read(cfg, lambda s: [(d.status, d.attempts) for d in s.scalars(
        select(Delivery).where(Delivery.message_id == message_id))])
    assert rows and all(row == ("rejected", 0) for row in rows)
    assert len(sink.messages) == sink_count


# --- refused at RCPT ------------------------------------------------------------------------------------------------

def test_unknown_recipient_refused_at_rcpt_is_tracked_with_its_reply(env, cfg, acme, acme_admin, ingress, sink,
                                                                     web_app):
    static_recipients(env, cfg, acme.id, "bob@acme.test")
    with client(env) as c:
        c.ehlo("client.sender.example")
        c.mail("alice@sender.example")
        code, reply = c.rcpt("nobody@acme.test")
        assert f"{code} {reply.decode()}" == UNKNOWN_REPLY
        assert c.rcpt("bob@acme.test")[0] == 250
        assert c.data(make_mail("bob@acme.test", "For Bob only"))[0] == 250
    assert [m.rcpts for m in sink.wait_count(1)] == [["bob@acme.test"]]

    (msg,) = refused_for(cfg, "nobody@acme.test")
    assert (msg.verdict, msg.size, msg.subject, msg.direction) == ("reject", 0, None, "inbound")
    assert msg.explanation == f"refused at RCPT: {UNKNOWN_REPLY}"
    assert (msg.mail_from, msg.client_ip, msg.client_helo) == ("alice@sender.example", "127.0.0.1",
                                                                "client.sender.example")
    assert [(d.status, d.last_reply) for d in msg.deliveries] == [("rejected", UNKNOWN_REPLY)]
    assert not has_blob(cfg, msg.id)
    assert events(cfg, msg.id) == [("rejected", f"refused at RCPT for nobody@acme.test: {UNKNOWN_REPLY}")]
    assert msg.expires_at is not None and 13 <= (msg.expires_at - msg.received_at).days <= 14

    # The tracking center finds it by verdict, by delivery status and by recipient, and tells what the sender got.
    assert msg.id in search(cfg, acme.id, verdict="reject")
    assert msg.id in search(cfg, acme.id, status="rejected")
    assert search(cfg, acme.id, rcpt="nobody@acme.test") == [msg.id]
    assert msg.id not in search(cfg, acme.id, status="delivered")
    steps = timeline(cfg, acme.id, msg.id)
    assert ("rejected", f"refused at RCPT for nobody@acme.test: {UNKNOWN_REPLY}") in steps
    assert ("status", f"nobody@acme.test: rejected, the sender was told: {UNKNOWN_REPLY}") in steps
    c = sign_in(web_app, "admin@acme.test")
    page = page_text(c.get(f"/portal/tracking/{msg.id}"))
    assert "No stored content" in page and "recipient unknown" in page and "(the reply the sender got)" in page
    listing = page_text(c.get("/portal/tracking?verdict=reject&status=rejected"))
    assert f"msg-{msg.id}" in listing and "(refused at RCPT)" in listing
    assert c.get(f"/portal/quarantine/{msg.id}/raw").status_code == 404  # nothing to download: no quarantined mail

    rejected, reasons, rcpts = rolled_up(cfg, acme.id)
    assert reasons["recipient unknown"] == rejected == 2  # nobody@ and the probe of static_recipients
    assert "nobody@acme.test" not in rcpts and rcpts["bob@acme.test"] == 1  # a refused address is no mailbox
    assert_never_delivered(env, cfg, msg.id, sink, 1)


def test_blocked_sender_refused_at_rcpt_counts_as_blocked_sender(env, cfg, acme, ingress, sink):
    assert run_cli(["list", "add", "block", "sender.example", "--tenant", "Acme"], env).returncode == 0
    wait_for(lambda: rcpt_reply(env, "probe@acme.test")[0] == 550, 10, interval=0.3, what="block list")
    assert rcpt_reply(env, "carol@acme.test") == (550, BLOCKED_REPLY)
    (msg,) = refused_for(cfg, "carol@acme.test")
    assert msg.verdict == "reject" and msg.explanation == f"refused at RCPT: {BLOCKED_REPLY}"
    assert [(d.status, d.last_reply) for d in msg.deliveries] == [("rejected", BLOCKED_REPLY)]
    assert not has_blob(cfg, msg.id)
    assert ("rejected", f"refused at RCPT for carol@acme.test: {BLOCKED_REPLY}") in timeline(cfg, acme.id, msg.id)
    assert msg.id in search(cfg, acme.id, verdict="reject", status="rejected")
    _, reasons, _ = rolled_up(cfg, acme.id)
    assert reasons == {"blocked sender": 2}  # carol@ and the probe
    assert_never_delivered(env, cfg, msg.id, sink, 0)


def test_greylisting_and_unknown_domains_are_not_recorded(env, cfg, acme, ingress, sink):
    set_policy(env, "greylisting=true", "greylist_delay=3600")
    wait_for(lambda: rcpt_reply(env, "bob@acme.test")[0] == 451, 10, interval=0.3, what="greylisting")
    assert rcpt_reply(env, "victim@elsewhere.example")[0] == 550  # no tenant: nobody to show it to
    time.sleep(0.5)
    assert read(cfg, lambda s: s.scalar(select(func.count()).select_from(Message))) == 0


# --- refused at DATA ------------------------------------------------------------------------------------------------

def test_spam_rejected_at_data_is_recorded_before_the_554_without_content(env, cfg, acme, acme_admin, ingress, sink,
                                                                          web_app):
    set_policy(env, "scores.MIME_DEFECT=20")
    with client(env) as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("alice@sender.example", ["bob@acme.test", "carol@acme.test"], BROKEN)
    assert f"{err.value.smtp_code} {err.value.smtp_error.decode()}" == SPAM_REPLY
    (msg,) = refused_for(cfg, "bob@acme.test")
    assert (msg.verdict, msg.subject, msg.message_id_header) == ("reject", "Broken report", "<broken-1@sender.example>")
    assert msg.size == len(BROKEN) and msg.score >= 20 and msg.explanation.startswith("reject (spam): score ")
    assert "MIME_DEFECT" in {f.symbol for f in msg.findings}
    assert [(d.rcpt, d.status, d.last_reply) for d in msg.deliveries] == [
        ("bob@acme.test", "rejected", SPAM_REPLY), ("carol@acme.test", "rejected", SPAM_REPLY)]
    assert not has_blob(cfg, msg.id)
    kinds = [k for k, _ in events(cfg, msg.id)]
    assert kinds == ["received", "scanned", "rejected"]
    steps = timeline(cfg, acme.id, msg.id)
    assert [k for k, _ in steps][:2] == ["connect", "received"]
    assert any(k == "finding" and d.startswith("MIME_DEFECT") for k, d in steps)
    assert ("rejected", f"refused at DATA for bob@acme.test, carol@acme.test: {SPAM_REPLY}") in steps
    assert search(cfg, acme.id, verdict="reject", status="rejected") == [msg.id]

    c = sign_in(web_app, "admin@acme.test")
    page = page_text(c.get(f"/portal/tracking/{msg.id}"))
    assert "No stored content" in page and SPAM_REPLY in page and "MIME_DEFECT" in page
    assert c.get(f"/portal/quarantine/{msg.id}").status_code == 404
    assert c.get(f"/portal/quarantine/{msg.id}/raw").status_code == 404

    rejected, reasons, rcpts = rolled_up(cfg, acme.id)
    assert (rejected, reasons, rcpts) == (1, {"spam": 1}, {})
    assert_never_delivered(env, cfg, msg.id, sink, 0)

    # Retention purges it like other mail, once the tenant's spam retention is over.
    assert purge(cfg, now=utcnow() + timedelta(days=13)) == {}
    assert purge(cfg, now=utcnow() + timedelta(days=15)) == {"Acme": {"rejected": 1}}
    assert refused_for(cfg, "bob@acme.test") == [] and events(cfg, msg.id) == []


def test_virus_rejected_at_data_counts_as_virus(env, cfg, acme, av_ingress, sink):  # noqa: F811 - the fixture
    from tests.support.clamd import EICAR

    set_policy(env, "virus_action=reject")
    data = b"From: a@sender.example\r\nTo: bob@acme.test\r\nSubject: Invoice\r\n\r\n" + EICAR + b"\r\n"
    with client(env) as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("alice@sender.example", ["bob@acme.test"], data)
    reply = f"{err.value.smtp_code} {err.value.smtp_error.decode()}"
    assert reply.startswith("554 5.7.1 Message rejected: virus found (reject (virus): virus Eicar-Test-")
    (msg,) = refused_for(cfg, "bob@acme.test")
    assert [(d.status, d.last_reply) for d in msg.deliveries] == [("rejected", reply)]
    assert "CLAM_VIRUS" in {f.symbol for f in msg.findings} and not has_blob(cfg, msg.id)
    assert msg.id in search(cfg, acme.id, verdict="reject", status="rejected")
    rejected, reasons, _ = rolled_up(cfg, acme.id)
    assert (rejected, reasons) == (1, {"virus": 1})
    assert_never_delivered(env, cfg, msg.id, sink, 0)


def test_a_tenant_rejecting_its_share_of_an_accepted_mail_gets_rejected_rows(env, cfg, acme, factory, ingress, sink):
    """Mail to two tenants, one rejects: the sender got 250 for the transaction; the rejecting tenant still sees its
    recipients as rejected (with no reply, since none carried this refusal)."""
    beta = factory.tenant("Beta", ("beta.test",), transport_port=sink.port)
    set_policy(env, "scores.MIME_DEFECT=20")  # Acme rejects, Beta keeps the default
    with client(env) as c:
        assert c.sendmail("alice@sender.example", ["bob@acme.test", "carol@beta.test"], BROKEN) == {}
    assert [m.rcpts for m in sink.wait_count(1)] == [["carol@beta.test"]]
    (msg,) = refused_for(cfg, "bob@acme.test")
    assert msg.verdict == "reject" and msg.tenant_id == acme.id and msg.expires_at is not None
    assert [(d.status, d.last_reply) for d in msg.deliveries] == [("rejected", None)]
    assert ("status", "bob@acme.test: rejected, the sender was not told") in timeline(cfg, acme.id, msg.id)
    assert msg.id in search(cfg, acme.id, status="rejected") and search(cfg, beta.id, status="rejected") == []
    assert_never_delivered(env, cfg, msg.id, sink, 1)


# --- a failure to record --------------------------------------------------------------------------------------------

def _refuse_rejected_messages(cfg: Any) -> None:
    """Make the database itself refuse every message with verdict reject (a real failure, no mock)."""
    engine = create_engine(cfg.effective_database_url)
    with engine.begin() as conn:
        if TEST_DB == "postgres":
            conn.execute(text("CREATE FUNCTION mw_no_reject() RETURNS trigger LANGUAGE plpgsql AS "
                              "$$ BEGIN RAISE EXCEPTION 'refused by test trigger'; END $$"))
            conn.execute(text("CREATE TRIGGER mw_no_reject BEFORE INSERT ON message FOR EACH ROW "
                              "WHEN (NEW.verdict = 'reject') EXECUTE FUNCTION mw_no_reject()"))
        else:
            conn.execute(text("CREATE TRIGGER mw_no_reject BEFORE INSERT ON message WHEN NEW.verdict = 'reject' "
                              "BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END"))
    engine.dispose()


def test_a_failure_to_record_does_not_change_the_reply(env, cfg, acme, ingress, sink):
    static_recipients(env, cfg, acme.id, "bob@acme.test")
    set_policy(env, "scores.MIME_DEFECT=20")
    time.sleep(1.2)  # the ingress reloads the policy
    _refuse_rejected_messages(cfg)
    assert rcpt_reply(env, "nobody@acme.test") == (550, UNKNOWN_REPLY)
    with client(env) as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("alice@sender.example", ["bob@acme.test"], BROKEN)
    assert f"{err.value.smtp_code} {err.value.smtp_error.decode()}" == SPAM_REPLY
    assert refused_for(cfg, "nobody@acme.test") == [] and refused_for(cfg, "bob@acme.test") == []
    wait_for(lambda: ingress.log().count("could not record the refusal") >= 2, 5, what="the failures logged")
    # Accepted mail is untouched by the trigger: still delivered.
    with client(env) as c:
        c.sendmail("alice@sender.example", ["bob@acme.test"], make_mail("bob@acme.test"))
    sink.wait_count(1)


# --- what a dictionary attack costs ---------------------------------------------------------------------------------

#: Recipients one dictionary-attack round tries (smtplib, one connection, the ingress's recipient limit per mail).
ATTACK_RCPTS = 500


def test_a_dictionary_attack_is_recorded_up_to_a_cap_per_connection(env, cfg, acme, ingress, sink, capsys):
    """The first refusals of a connection are recorded (one small message, delivery row and event each, off the
    event loop); past RCPT_REFUSALS_RECORDED the rest cost nothing but the reply. Prints the time per refused RCPT
    next to an accepted one (figures only)."""
    from smtp.server import RCPT_REFUSALS_RECORDED

    static_recipients(env, cfg, acme.id, "bob@acme.test")

    def rcpts(addresses: list[str]) -> float:
        start = time.perf_counter()
        with client(env) as c:
            c.ehlo()
            for i in range(0, len(addresses), 50):  # within the ingress's recipients per transaction
                c.mail("harvester@sender.example")
                for a in addresses[i:i + 50]:
                    assert c.rcpt(a)[0] == (250 if a == "bob@acme.test" else 550)
                c.rset()
        return (time.perf_counter() - start) / len(addresses) * 1000

    def recorded() -> list[str]:
        return read(cfg, lambda s: sorted(s.scalars(select(Delivery.rcpt).where(
            Delivery.status == "rejected", Delivery.rcpt.like("guess%"))).all()))

    accepted = rcpts(["bob@acme.test"] * ATTACK_RCPTS)
    refused = rcpts([f"guess{i:03d}@acme.test" for i in range(ATTACK_RCPTS)])
    assert recorded() == [f"guess{i:03d}@acme.test" for i in range(RCPT_REFUSALS_RECORDED)]
    rcpts(["guess-next@acme.test"])  # a new connection records again
    assert len(recorded()) == RCPT_REFUSALS_RECORDED + 1
    with capsys.disabled():
        print(f"\n[{TEST_DB}] {ATTACK_RCPTS} RCPTs: accepted {accepted:.2f} ms each, refused {refused:.2f} ms each "
              f"(the first {RCPT_REFUSALS_RECORDED} recorded)")


# --- the reasons the statistics count -------------------------------------------------------------------------------

@pytest.mark.parametrize(("explanation", "virus", "reason"), [
    (f"refused at RCPT: {UNKNOWN_REPLY}", False, "recipient unknown"),
    (f"refused at RCPT: {BLOCKED_REPLY}", False, "blocked sender"),
    ("refused at RCPT: 554 5.7.1 Service unavailable; client host [203.0.113.9] blocked using zen.example",
     False, "DNSBL zen.example"),
    ("refused at RCPT: 451 4.7.1 Rate limit exceeded: too many recipients this hour, try again later", False,
     "rate limit"),
    ("refused at RCPT: 550 5.7.0 something new", False, "refused at RCPT"),
    ("reject (spam): score 20 >= reject 15; MIME_DEFECT +20", False, "spam"),
    ("reject (attachment): ATTACH_EXECUTABLE: invoice.exe", False, "attachment"),
    ("outbound reject (virus): virus Eicar-Test-Signature", False, "virus"),
    ("reject (spam): score 16 >= reject 15", True, "virus"),
    ("", False, "rejected"),
])
def test_reject_reasons_are_short_and_stable(explanation, virus, reason):
    assert tracking.reject_reason(explanation, virus=virus) == reason


def test_the_stats_report_shows_rejected_by_reason(env, cfg, acme, ingress, sink):
    from tenants import stats

    static_recipients(env, cfg, acme.id, "bob@acme.test")
    assert rcpt_reply(env, "nobody@acme.test") == (550, UNKNOWN_REPLY)
    rolled_up(cfg, acme.id)
    with tenant_scope(acme.id), tdb.session_scope(cfg) as s:
        rep = stats.report(s, stats.span(None, None))
    assert rep.total["rejected"] == rep.total["mails"] == 2  # nobody@ and the probe
    assert rep.tops["reject_reason"] == [("recipient unknown", 2)]
