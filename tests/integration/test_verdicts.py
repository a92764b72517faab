"""The verdict drives the mail end to end: tag and deliver, quarantine, reject at DATA, tempfail; greylisting at RCPT.

The ingress runs as a real process; a tenant's policy (scores are data) makes a malformed mail's MIME_DEFECT finding
weigh what each test needs, so the verdict path is exercised without depending on any one content check.
"""

from __future__ import annotations

import smtplib
import time

import pytest
from sqlalchemy import select

from tenants.content.model import BANDS
from tenants.models import Delivery, Event, Finding, Message
from tenants.scope import msp_scope
from tests.integration.test_ingress import client
from tests.support.servers import run_cli, wait_for

#: A multipart mail whose closing boundary is missing: stored and scanned, with a MIME_DEFECT finding.
BROKEN = (b"From: Alice <alice@sender.example>\r\nTo: bob@acme.test\r\nSubject: Broken report\r\n"
          b"Message-ID: <broken-1@sender.example>\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nhello\r\n")


#: The base content model's band scores set to 0, so a mail's score is what the test makes MIME_DEFECT weigh.
NEUTRAL_CONTENT = tuple(f"scores.{symbol}=0" for _, symbol in BANDS)


def set_policy(env: dict[str, str], *assignments: str, tenant: str = "Acme") -> None:
    result = run_cli(["policy", "set", tenant, *NEUTRAL_CONTENT, *assignments], env)
    assert result.returncode == 0, result.stderr


def messages(session) -> list[Message]:
    session.rollback()
    with msp_scope():
        return list(session.scalars(select(Message).order_by(Message.received_at)))


def send(env: dict[str, str], data: bytes = BROKEN, rcpts: tuple[str, ...] = ("bob@acme.test",)) -> None:
    with client(env) as c:
        c.sendmail("alice@sender.example", list(rcpts), data)


def test_clean_mail_is_delivered_with_status_headers(env, ingress, acme, sink, session):
    set_policy(env, "scores.MIME_DEFECT=0.5")
    send(env)
    got = sink.wait_count(1)[0].data
    assert b"X-Mailward-Status: clean, score=" in got
    assert b"MIME_DEFECT=0.5" in got
    (msg,) = messages(session)
    with msp_scope():
        scores = dict(session.execute(select(Finding.symbol, Finding.score).where(Finding.message_id == msg.id)).all())
    assert scores["MIME_DEFECT"] == 0.5
    assert "SPF_NONE" in scores  # the sender domain publishes no SPF record on the test's DNS
    assert msg.verdict == "deliver" and msg.score == round(sum(scores.values()), 2)
    assert b"Authentication-Results: mx.mailward.test; spf=none" in got


def test_tagged_mail_is_delivered_with_subject_prefix(env, ingress, acme, sink, session):
    set_policy(env, "scores.MIME_DEFECT=6", 'subject_prefix="[SPAM]"')
    send(env)
    got = sink.wait_count(1)[0].data
    assert b"Subject: [SPAM] Broken report" in got
    assert b"X-Mailward-Status: spam, score=6" in got
    assert messages(session)[0].verdict == "tag"


def test_quarantined_mail_is_stored_and_not_delivered(env, ingress, acme, sink, session):
    set_policy(env, "scores.MIME_DEFECT=9")
    send(env)
    wait_for(lambda: messages(session), 10, what="stored message")
    (msg,) = messages(session)
    assert (msg.verdict, msg.quarantine_kind) == ("quarantine", "spam")
    assert "score 9 >= quarantine 8" in msg.explanation
    assert msg.expires_at is not None and 13 <= (msg.expires_at - msg.received_at).days <= 14
    with msp_scope():
        rows = session.scalars(select(Delivery).where(Delivery.message_id == msg.id)).all()
    assert [(d.rcpt, d.status) for d in rows] == [("bob@acme.test", "quarantined")]
    with msp_scope():
        kinds = session.scalars(select(Event.kind).where(Event.message_id == msg.id)).all()
    assert kinds == ["received", "scanned"]
    time.sleep(1)
    assert sink.messages == []
    shown = run_cli(["message", "show", msg.queue_id], env)
    assert "verdict   quarantine (spam), score 9" in shown.stdout
    assert "MIME_DEFECT" in shown.stdout and "CloseBoundaryNotFoundDefect" in shown.stdout


def test_reject_at_data_when_every_tenant_rejects(env, ingress, acme, sink, session):
    set_policy(env, "scores.MIME_DEFECT=20")
    with client(env) as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("alice@sender.example", ["bob@acme.test"], BROKEN)
    assert err.value.smtp_code == 554 and b"5.7.1" in err.value.smtp_error
    # Recorded for the tracking center, without its content (tests/integration/test_rejections.py).
    (msg,) = messages(session)
    assert msg.verdict == "reject" and msg.score >= 20
    with msp_scope():
        assert [d.status for d in msg.deliveries] == ["rejected"]


def test_two_tenants_judged_each_under_its_own_policy(env, ingress, acme, factory, sink, session):
    factory.tenant("Beta", ("beta.test",), transport_port=sink.port)
    set_policy(env, "scores.MIME_DEFECT=20")  # Acme rejects; Beta keeps the default
    send(env, rcpts=("bob@acme.test", "carol@beta.test"))
    got = sink.wait_count(1)
    assert got[0].rcpts == ["carol@beta.test"]
    verdicts = sorted((m.verdict, m.score >= 20) for m in messages(session))
    assert verdicts == [("deliver", False), ("reject", True)]
    with msp_scope():
        rejected = next(m for m in messages(session) if m.verdict == "reject")
        assert [(d.rcpt, d.status) for d in rejected.deliveries] == [("bob@acme.test", "rejected")]


def test_greylisting_defers_a_new_triplet_then_accepts_the_retry(env, ingress, acme, sink, session):
    set_policy(env, "greylisting=true", "greylist_delay=1")
    with client(env) as c:
        c.ehlo()
        c.mail("alice@sender.example")
        code, reply = c.rcpt("bob@acme.test")
        assert (code, reply[:5]) == (451, b"4.7.1")
    time.sleep(1.2)
    send(env)
    sink.wait_count(1)
    # The client network and sender are now allowed: a new recipient passes at once.
    with client(env) as c:
        c.ehlo()
        c.mail("alice@sender.example")
        assert c.rcpt("dave@acme.test")[0] == 250


def test_a_forged_authentication_results_header_for_our_host_is_removed(env, ingress, acme, sink):
    """Attack: a sender adds 'Authentication-Results: <our hostname>; dkim=pass' to look verified downstream."""
    forged = (b"Authentication-Results: mx.mailward.test; dkim=pass header.d=bank.example\r\n"
              b"Authentication-Results: elsewhere.example; spf=pass\r\n") + BROKEN
    send(env, forged)
    got = sink.wait_count(1)[0].data
    assert b"mx.mailward.test; dkim=pass header.d=bank.example" not in got
    assert b"Authentication-Results: elsewhere.example; spf=pass" in got


@pytest.fixture
def av_ingress(env, tmp_path, cfg, clamd_server):
    """The ingress with virus scanning on, against the real clamd."""
    from tests.support.servers import Process

    env["MAILWARD_CLAMD"] = clamd_server.address
    proc = Process(["smtp"], env, tmp_path / "smtp-av.log").start()
    wait_for(lambda: _connectable(env), 20, what="ingress port")
    yield proc
    proc.stop()


def _connectable(env: dict[str, str]) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", int(env["MAILWARD_SMTP_LISTEN"].rsplit(":", 1)[1])), 0.5):
            return True
    except OSError:
        return False


def _zip_with_eicar() -> bytes:
    import io
    import zipfile

    from tests.support.clamd import EICAR

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", EICAR)
    return buf.getvalue()


def test_a_virus_is_quarantined_and_never_delivered(env, av_ingress, acme, sink, session):
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "alice@sender.example", "bob@acme.test", "Invoice"
    msg.set_content("See the attachment.")
    msg.add_attachment(_zip_with_eicar(), maintype="application", subtype="zip", filename="invoice.zip")
    send(env, msg.as_bytes())
    wait_for(lambda: messages(session), 10, what="stored message")
    (stored,) = messages(session)
    assert (stored.verdict, stored.quarantine_kind) == ("quarantine", "virus")
    assert "virus Eicar-Test-" in stored.explanation
    time.sleep(1)
    assert sink.messages == []


def test_a_virus_is_rejected_when_the_policy_says_so(env, av_ingress, acme, sink, session):
    from tests.support.clamd import EICAR

    set_policy(env, "virus_action=reject")
    data = b"From: a@sender.example\r\nTo: bob@acme.test\r\nSubject: x\r\n\r\n" + EICAR + b"\r\n"
    with client(env) as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("alice@sender.example", ["bob@acme.test"], data)
    assert err.value.smtp_code == 554 and b"virus" in err.value.smtp_error
    (msg,) = messages(session)
    assert msg.verdict == "reject" and msg.quarantine_kind is None  # nothing to release: it is not quarantined


def test_clamd_unreachable_answers_451_and_never_passes_unscanned(env, tmp_path, cfg, acme, sink, session):
    from tests.support.servers import Process, free_port

    env["MAILWARD_CLAMD"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    proc = Process(["smtp"], env, tmp_path / "smtp-noav.log").start()
    try:
        wait_for(lambda: _connectable(env), 20, what="ingress port")
        with client(env) as c, pytest.raises(smtplib.SMTPDataError) as err:
            c.sendmail("alice@sender.example", ["bob@acme.test"], BROKEN)
        assert err.value.smtp_code == 451
        set_policy(env, "scanner_unavailable=accept")
        time.sleep(1.5)  # the ingress reloads policy when the version moves
        send(env)
        sink.wait_count(1)
        (stored,) = messages(session)
        with msp_scope():
            assert "CLAM_TEMPFAIL" in {f.symbol for f in stored.findings}
    finally:
        proc.stop()


def test_block_listed_envelope_sender_is_refused_at_rcpt(env, ingress, acme, sink, session):
    assert run_cli(["list", "add", "block", "sender.example", "--tenant", "Acme"], env).returncode == 0
    time.sleep(1.2)  # the ingress notices the policy version within a poll interval
    with client(env) as c:
        c.ehlo()
        c.mail("alice@sender.example")
        code, reply = c.rcpt("bob@acme.test")
    assert (code, reply[:5]) == (550, b"5.7.1")
    (msg,) = messages(session)  # the refusal, recorded with the reply
    assert msg.verdict == "reject" and msg.explanation == f"refused at RCPT: 550 {reply.decode()}"


def test_allow_listed_sender_skips_greylisting_but_not_the_content_checks(env, ingress, acme, sink, session):
    set_policy(env, "greylisting=true", "greylist_delay=3600", "scores.MIME_DEFECT=9")
    assert run_cli(["list", "add", "allow", "alice@sender.example", "--tenant", "Acme"], env).returncode == 0
    time.sleep(1.2)
    send(env)  # no 451: the allow-listed envelope is not greylisted
    sink.wait_count(1)
    (msg,) = messages(session)
    with msp_scope():
        symbols = {f.symbol for f in msg.findings}
    assert {"LIST_ALLOW", "MIME_DEFECT"} <= symbols and msg.verdict == "deliver"
