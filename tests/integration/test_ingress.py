"""The SMTP ingress as a real process: routing, protocol replies, durable commit, fast-path delivery."""

from __future__ import annotations

import smtplib
import socket
import subprocess
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid

from sqlalchemy import select

from tenants.models import Delivery, Event, Message
from tenants.scope import msp_scope
from tests.support.servers import Process, run_cli, wait_for


def make_mail(to: str, subject: str = "Hello", sender: str = "alice@sender.example",
              body: str = "Hi there.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="sender.example")
    msg.set_content(body)
    return msg.as_bytes(policy=SMTP)


def smtp_port(env: dict[str, str]) -> int:
    return int(env["MAILWARD_SMTP_LISTEN"].rsplit(":", 1)[1])


def client(env: dict[str, str]) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", smtp_port(env), local_hostname="client.sender.example", timeout=30)


def test_mail_for_tenant_domain_arrives_with_received_header(env, ingress, acme, sink, session):
    data = make_mail("bob@acme.test", "Quarterly report")
    with client(env) as c:
        code, reply = c.ehlo()
        assert code == 250
        for ext in (b"SIZE", b"8BITMIME", b"PIPELINING", b"SMTPUTF8"):
            assert ext in reply
        assert b"AUTH" not in reply and b"STARTTLS" not in reply
        refused = c.sendmail("alice@sender.example", ["bob@acme.test"], data)
        assert refused == {}
    got = sink.wait_count(1)
    assert len(got) == 1
    assert got[0].rcpts == ["bob@acme.test"]
    assert got[0].mail_from == "alice@sender.example"
    first = got[0].data.split(b"\r\n", 1)[0]
    assert first.startswith(b"Received: from client.sender.example ([127.0.0.1])")
    assert b"by mx.mailward.test (Mailward) with ESMTP id " in got[0].data
    assert got[0].data.endswith(b"\r\n" + data)
    with msp_scope():
        msg = session.scalars(select(Message)).one()
        assert msg.subject == "Quarterly report" and msg.tenant_id == acme.id
        wait_for(lambda: session.scalars(select(Delivery.status)).all() == ["delivered"] or session.rollback(),
                 10, what="delivered row")
        kinds = session.scalars(select(Event.kind).order_by(Event.id)).all()
        assert kinds == ["received", "scanned", "delivered"]


def test_unknown_domain_is_refused_at_rcpt_and_never_relayed(env, ingress, acme, sink):
    with client(env) as c:
        c.ehlo()
        c.mail("alice@sender.example")
        code, reply = c.rcpt("victim@elsewhere.example")
        assert code == 550 and reply.startswith(b"5.7.1")
        code, _ = c.rcpt("bob@acme.test")
        assert code == 250
        code, _ = c.data(make_mail("bob@acme.test"))
        assert code == 250
    got = sink.wait_count(1)
    assert [m.rcpts for m in got] == [["bob@acme.test"]]


def test_domain_added_while_running_is_accepted_at_once(env, ingress, acme, sink):
    with client(env) as c:
        c.ehlo()
        c.mail("a@sender.example")
        assert c.rcpt("x@late.test")[0] == 550
    r = run_cli(["domain", "add", "Acme", "late.test", "--transport", f"127.0.0.1:{sink.port}", "--tls", "none"], env)
    assert r.returncode == 0, r.stderr
    with client(env) as c:
        c.ehlo()
        c.mail("a@sender.example")
        assert c.rcpt("x@late.test")[0] == 250


def test_oversized_message_gets_552(env, tmp_path, factory, sink):
    factory.tenant("Acme", ("acme.test",), transport_port=sink.port)
    small = dict(env, MAILWARD_MAX_MESSAGE_SIZE="2000")
    proc = Process(["smtp"], small, tmp_path / "smtp-small.log").start()
    try:
        wait_for(lambda: _connectable(smtp_port(env)), 20, what="ingress")
        with client(env) as c:
            c.ehlo()
            assert b"SIZE 2000" in c.ehlo_resp
            # declared too big at MAIL FROM
            code, _ = c.mail("a@sender.example", ["SIZE=5000"])
            assert code == 552
            c.rset()
            c.mail("a@sender.example")
            c.rcpt("bob@acme.test")
            code, _ = c.data(make_mail("bob@acme.test", body="x" * 5000))
            assert code == 552
    finally:
        proc.stop()
    assert sink.messages == []


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _raw_session(port: int, lines: list[bytes]) -> list[bytes]:
    """Send raw command lines one at a time and collect each reply's last line."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()  # greeting
        for line in lines:
            s.sendall(line + b"\r\n")
            while True:
                reply = f.readline()
                if reply[3:4] != b"-":
                    break
            replies.append(reply.rstrip())
    return replies


def test_bad_command_sequences_and_garbage_get_the_right_5xx(env, ingress, acme):
    port = smtp_port(env)
    replies = _raw_session(port, [
        b"DATA",                       # before EHLO/MAIL
        b"EHLO client.example",
        b"RCPT TO:<bob@acme.test>",    # before MAIL
        b"DATA",                       # before MAIL
        b"FOOBAR baz",                 # unknown command
        b"MAIL FROM:bad address",      # syntax
        b"MAIL FROM:<a@sender.example>",
        b"MAIL FROM:<b@sender.example>",  # nested MAIL
        b"DATA",                       # no recipients yet
        b"RCPT TO:<no-at-sign>",
        b"RCPT TO:<bob@acme.test>",
        b"\x00\xff\xfe garbage",
        b"QUIT",
    ])
    codes = [r[:3] for r in replies]
    assert codes == [b"503", b"250", b"503", b"503", b"500", b"501", b"250", b"503", b"503", b"501", b"250",
                     b"500", b"221"], replies


def test_too_many_recipients_get_452(env, tmp_path, factory, sink):
    factory.tenant("Acme", ("acme.test",), transport_port=sink.port)
    few = dict(env, MAILWARD_MAX_RECIPIENTS="3")
    proc = Process(["smtp"], few, tmp_path / "smtp-few.log").start()
    try:
        wait_for(lambda: _connectable(smtp_port(env)), 20, what="ingress")
        with client(env) as c:
            c.ehlo()
            c.mail("a@sender.example")
            codes = [c.rcpt(f"u{i}@acme.test")[0] for i in range(4)]
            assert codes == [250, 250, 250, 452]
    finally:
        proc.stop()


def test_mail_to_two_tenants_is_stored_once_per_tenant_and_delivered_to_each(env, ingress, factory, sink, session):
    a = factory.tenant("Acme", ("acme.test",), transport_port=sink.port)
    b = factory.tenant("Beta", ("beta.test",), transport_port=sink.port)
    with client(env) as c:
        assert c.sendmail("x@sender.example", ["u@acme.test", "v@beta.test", "w@acme.test"],
                          make_mail("u@acme.test")) == {}
    got = sink.wait_count(2)
    assert sorted(sorted(m.rcpts) for m in got) == [["u@acme.test", "w@acme.test"], ["v@beta.test"]]
    with msp_scope():
        rows = session.execute(select(Message.tenant_id, Message.queue_id)).all()
    assert sorted(t for t, _ in rows) == sorted([a.id, b.id])
    assert len({q for _, q in rows}) == 1


def test_starttls_offered_when_certificate_configured(env, tmp_path, factory, sink):
    factory.tenant("Acme", ("acme.test",), transport_port=sink.port)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=mx.mailward.test"], check=True, capture_output=True)
    tls_env = dict(env, MAILWARD_TLS_CERT=str(cert), MAILWARD_TLS_KEY=str(key))
    proc = Process(["smtp"], tls_env, tmp_path / "smtp-tls.log").start()
    try:
        wait_for(lambda: _connectable(smtp_port(env)), 20, what="ingress")
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with client(env) as c:
            c.ehlo()
            assert c.has_extn("starttls")
            c.starttls(context=ctx)
            c.ehlo()
            assert not c.has_extn("starttls")
            assert c.sendmail("a@sender.example", ["bob@acme.test"], make_mail("bob@acme.test")) == {}
    finally:
        proc.stop()
    got = sink.wait_count(1)
    assert b"with ESMTPS id" in got[0].data


def test_bad_tls_config_fails_at_start_with_its_name(env, tmp_path):
    r = run_cli(["smtp"], dict(env, MAILWARD_TLS_CERT=str(tmp_path / "missing.pem")))
    assert r.returncode != 0
    assert "MAILWARD_TLS_CERT" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_null_sender_is_accepted_and_relayed_as_null(env, ingress, acme, sink, session):
    with client(env) as c:
        c.ehlo()
        assert c.mail("<>")[0] == 250
        assert c.rcpt("bob@acme.test")[0] == 250
        assert c.data(make_mail("bob@acme.test", "bounce"))[0] == 250
    got = sink.wait_count(1)
    assert got[0].mail_from == "<>"
    with msp_scope():
        assert session.scalars(select(Message.mail_from)).one() == ""
