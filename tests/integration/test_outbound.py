"""Outbound mail as real processes: relay networks on port 25, the submission listener (STARTTLS + AUTH), sender
domains, rate limits, DKIM keys and signatures, the outbound verdict.

"The recipient's MX" is a real SMTP sink reached through ``MAILWARD_RELAYHOST``; DKIM signatures are verified with
dkimpy against the record ``mailward dkim keygen`` printed, served by a real loopback DNS server.
"""

from __future__ import annotations

import base64
import re
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from smtp.checks.base import Finding
from smtp.submission import MAX_AUTH_FAILURES, decide_outbound
from smtp.verdict import Action
from tenants.dkimkeys import decrypt_private_key
from tenants.exceptions import ConfigError
from tenants.models import Delivery, DkimKey, Message
from tenants.platform.config import Config
from tenants.policy import Policy
from tenants.scope import msp_scope
from tenants.symbols import symbol_table
from tests.integration.test_ingress import _connectable, client, make_mail, smtp_port
from tests.support.dnsserver import LoopbackDNS
from tests.support.servers import Process, free_port, run_cli, wait_for

#: Password of the SMTP login the submission tests create.
SUBMIT_PASSWORD = "correct-horse-battery-staple"


# --- helpers and fixtures -----------------------------------------------------------------------------------------

def cli_ok(args: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    r = run_cli(args, env, stdin)
    assert r.returncode == 0, r.stderr
    return r.stdout


def start_ingress(env: dict[str, str], log: Path, *ports: int) -> Process:
    proc = Process(["smtp"], env, log).start()

    def up() -> bool:
        assert proc.proc is not None and proc.proc.poll() is None, proc.log()
        return all(_connectable(p) for p in (smtp_port(env), *ports))

    wait_for(up, 20, what="ingress ports")
    return proc


@contextmanager
def running_ingress(env: dict[str, str], log: Path, *ports: int) -> Iterator[Process]:
    proc = start_ingress(env, log, *ports)
    try:
        yield proc
    finally:
        proc.stop()


def outbound_mail(to: str, subject: str = "Hello", sender: str = "alice@acme.test") -> bytes:
    """A mail as a tenant's server sends it out: with a Date, which DKIM then signs too."""
    return b"Date: " + formatdate().encode() + b"\r\n" + make_mail(to, subject, sender=sender)


@pytest.fixture
def outbound_env(env: dict[str, str], sink: Any) -> dict[str, str]:
    """The installation, with the sink standing in for every recipient domain's MX."""
    return dict(env, MAILWARD_RELAYHOST=f"127.0.0.1:{sink.port}")


@pytest.fixture
def acme(factory: Any, sink: Any) -> Any:
    return factory.tenant("Acme", ("acme.test",), transport_port=sink.port)


@pytest.fixture
def relaying(outbound_env: dict[str, str], acme: Any, tmp_path: Path) -> Iterator[Process]:
    """Acme's servers are on 127.0.0.0/8, so this test's client relays for Acme; the ingress runs."""
    cli_ok(["relay", "add", "Acme", "127.0.0.0/8"], outbound_env)
    proc = start_ingress(outbound_env, tmp_path / "smtp.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def dkim_dns() -> Iterator[LoopbackDNS]:
    server = LoopbackDNS().start()
    yield server
    server.stop()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=mx.mailward.test"], check=True, capture_output=True)
    return str(cert), str(key)


@pytest.fixture
def submission(outbound_env: dict[str, str], acme: Any, tls_files: tuple[str, str], tmp_path: Path
               ) -> Iterator[tuple[dict[str, str], int]]:
    """The ingress with TLS and a submission listener; Acme has the login ``relay@acme.test``."""
    cli_ok(["smtp-credential", "create", "Acme", "relay@acme.test", "--password-stdin"], outbound_env,
           SUBMIT_PASSWORD + "\n")
    port = free_port()
    e = dict(outbound_env, MAILWARD_SUBMISSION_LISTEN=f"127.0.0.1:{port}", MAILWARD_TLS_CERT=tls_files[0],
             MAILWARD_TLS_KEY=tls_files[1])
    proc = start_ingress(e, tmp_path / "smtp-submission.log", port)
    yield e, port
    proc.stop()


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _plain(user: str, password: str) -> str:
    return "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _txt_lookup(port: int) -> Any:
    """A dkimpy ``dnsfunc`` asking the loopback DNS server."""
    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = port
        resolver.lifetime = timeout
        qname = name.decode() if isinstance(name, bytes) else name
        try:
            answer = resolver.resolve(qname, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)  # type: ignore[attr-defined]

    return lookup


def _txt_line(output: str) -> tuple[str, str]:
    """(owner name, record text) of the TXT line ``mailward dkim keygen`` printed."""
    line = next(x for x in output.splitlines() if " IN TXT " in x)
    strings = re.findall(r'"([^"]*)"', line)
    assert strings and all(len(s) <= 255 for s in strings), line
    return line.split()[0], "".join(strings)


def _signature_tags(data: bytes) -> dict[str, str]:
    header = data.split(b"\r\n\r\n", 1)[0].decode()
    sig = re.search(r"^DKIM-Signature:(.*?)(?=^\S)", header + "\r\nX: end", re.M | re.S)
    assert sig is not None
    tags = {}
    for part in re.sub(r"\s+", "", sig.group(1)).split(";"):
        if "=" in part:
            k, _, v = part.partition("=")
            tags[k] = v
    return tags


# --- relay networks on port 25 ------------------------------------------------------------------------------------

def test_relay_network_mail_to_external_domain_is_delivered_dkim_signed(outbound_env, acme, sink, session, dkim_dns,
                                                                          tmp_path):
    cli_ok(["relay", "add", "Acme", "127.0.0.0/8"], outbound_env)
    owner, record = _txt_line(cli_ok(["dkim", "keygen", "acme.test", "--selector", "mw1"], outbound_env))
    assert owner == "mw1._domainkey.acme.test."
    dkim_dns.set("mw1._domainkey.acme.test", "TXT", record)
    with running_ingress(outbound_env, tmp_path / "smtp.log"):
        data = outbound_mail("carol@external.example", "Invoice 42")
        with client(outbound_env) as c:
            c.ehlo()
            assert b"AUTH" not in c.ehlo_resp  # port 25 never offers AUTH; the network is the credential
            assert c.sendmail("alice@acme.test", ["carol@external.example"], data) == {}
        got = sink.wait_count(1)
    mail = got[0]
    assert mail.mail_from == "alice@acme.test" and mail.rcpts == ["carol@external.example"]
    assert mail.data.startswith(b"DKIM-Signature:")
    assert b"X-Mailward-" not in mail.data  # our inbound result headers stay inside
    assert mail.data.endswith(data)
    lookup = _txt_lookup(dkim_dns.port)
    assert dkim.verify(mail.data, dnsfunc=lookup)
    tags = _signature_tags(mail.data)
    assert (tags["d"], tags["s"], tags["a"], tags["c"]) == ("acme.test", "mw1", "rsa-sha256", "relaxed/relaxed")
    signed = tags["h"].lower().split(":")
    for field in ("from", "to", "subject", "date", "message-id", "mime-version", "content-type"):
        assert field in signed
    assert signed.count("from") == 2  # oversigned: a second From cannot be added
    assert not dkim.verify(mail.data.replace(b"Invoice 42", b"Invoice 99"), dnsfunc=lookup)
    with msp_scope():
        msg = session.scalars(select(Message)).one()
        assert (msg.direction, msg.tenant_id, msg.verdict) == ("outbound", acme.id, "deliver")
        wait_for(lambda: session.scalars(select(Delivery.status)).all() == ["delivered"] or session.rollback(),
                 10, what="delivered row")
        assert session.scalars(select(Delivery.route)).one() == "mx"


def test_relay_client_cannot_send_as_another_tenants_domain(outbound_env, factory, relaying, sink):
    """Attack: tenant Acme's (or a compromised) server sends as Beta's domain, to borrow Beta's name and DKIM key.
    Mail from Acme's network with a sender that is not Acme's is inbound mail like any stranger's: it reaches no one
    outside Mailward's own domains (and is never refused on Acme's account for Beta's recipients)."""
    factory.tenant("Beta", ("beta.test",), transport_port=sink.port)
    with client(outbound_env) as c:
        c.ehlo()
        for sender in ("ceo@beta.test", "someone@nobody-owns-this.example"):
            assert c.mail(sender)[0] == 250
            code, reply = c.rcpt("carol@external.example")
            assert code == 550 and reply.startswith(b"5.7.1") and b"Relaying denied" in reply, sender
            c.rset()
        code, _ = c.mail("news@mail.acme.test")  # a subdomain of Acme's own domain is Acme's
        assert code == 250
        assert c.rcpt("carol@external.example")[0] == 250
        c.rset()
        # A null sender is allowed for the tenant's own bounces, but its From must be the tenant's too.
        assert c.mail("<>")[0] == 250
        assert c.rcpt("carol@external.example")[0] == 250
        code, reply = c.data(make_mail("carol@external.example", sender="ceo@beta.test"))
        assert code == 550 and b"5.7.1" in reply
    assert sink.messages == []


def test_no_open_relay_stranger_using_a_tenant_sender_cannot_reach_external_domains(outbound_env, acme, sink,
                                                                                     tmp_path):
    """Attack: a host outside every relay network claims a tenant's sender address to relay spam to the world."""
    cli_ok(["relay", "add", "Acme", "10.20.0.0/16"], outbound_env)  # Acme relays, but not from 127.0.0.1
    with running_ingress(outbound_env, tmp_path / "smtp.log"):
        with client(outbound_env) as c:
            c.ehlo()
            assert c.mail("alice@acme.test")[0] == 250  # inbound mail claiming a tenant sender is SPF's business
            code, reply = c.rcpt("victim@external.example")
            assert code == 550 and reply.startswith(b"5.7.1")
            assert c.rcpt("bob@acme.test")[0] == 250  # inbound still works
            assert c.data(make_mail("bob@acme.test", sender="alice@acme.test"))[0] == 250
        got = sink.wait_count(1)
    assert [m.rcpts for m in got] == [["bob@acme.test"]]


def test_relay_networks_refuse_overlaps_with_other_tenants_and_too_wide_networks(outbound_env, acme, factory):
    factory.tenant("Beta", ("beta.test",))
    cli_ok(["relay", "add", "Acme", "192.0.2.0/24"], outbound_env)
    for tenant, cidr, why in (("Beta", "192.0.2.128/25", "overlaps"), ("Acme", "0.0.0.0/0", "too wide"),
                              ("Acme", "192.0.2.1/24", "not a network"), ("Acme", "192.0.2.0/24", "already")):
        r = run_cli(["relay", "add", tenant, cidr], outbound_env)
        assert r.returncode != 0 and why in r.stderr, (cidr, r.stderr)
    assert cli_ok(["relay", "list"], outbound_env).split() == ["192.0.2.0/24", "Acme"]


# --- the submission listener --------------------------------------------------------------------------------------

def test_submission_refuses_auth_and_mail_before_starttls(submission):
    """Attack: a client logs in over clear text (the password on the wire) or sends without logging in."""
    env, port = submission
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo()
        assert c.has_extn("starttls") and not c.has_extn("auth")
        code, _ = c.docmd("AUTH", _plain("relay@acme.test", SUBMIT_PASSWORD))
        assert code in (530, 538)
        code, _ = c.mail("alice@acme.test")
        assert code == 530
        c.starttls(context=_tls())
        c.ehlo()
        assert "PLAIN" in c.esmtp_features["auth"] and "LOGIN" in c.esmtp_features["auth"]
        code, reply = c.mail("alice@acme.test")
        assert code == 530 and reply.startswith(b"5.7.0")


def test_submission_wrong_password_gets_535(submission):
    env, port = submission
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.starttls(context=_tls())
        c.ehlo()
        code, reply = c.docmd("AUTH", _plain("relay@acme.test", "not-the-password"))
        assert code == 535 and reply.startswith(b"5.7.8")
        code, _ = c.docmd("AUTH", _plain("nobody@acme.test", SUBMIT_PASSWORD))
        assert code == 535
        assert c.mail("alice@acme.test")[0] == 530


def test_submission_password_guessing_is_throttled_per_client_address(submission):
    """Attack: guess a login's password by trying many, over one or many connections."""
    env, port = submission
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.starttls(context=_tls())
        c.ehlo()
        codes = [c.docmd("AUTH", _plain("relay@acme.test", f"guess-{i}"))[0] for i in range(MAX_AUTH_FAILURES)]
        assert set(codes) == {535}
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.starttls(context=_tls())
        c.ehlo()
        code, reply = c.docmd("AUTH", _plain("relay@acme.test", SUBMIT_PASSWORD))  # even the right one, for now
        assert code == 454 and reply.startswith(b"4.7.0")


def test_submission_login_after_starttls_sends_for_the_logins_tenant(submission, sink, session, acme, factory):
    env, port = submission
    factory.tenant("Beta", ("beta.test",), transport_port=sink.port)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.starttls(context=_tls())
        c.ehlo()
        c.user, c.password = "relay@acme.test", SUBMIT_PASSWORD
        code, _ = c.auth("LOGIN", c.auth_login)
        assert code == 235
        assert c.mail("ceo@beta.test")[0] == 550  # logged in as Acme: Beta's domain is not ours to use
        c.rset()
        data = outbound_mail("carol@external.example", "From the laptop")
        assert c.sendmail("alice@acme.test", ["carol@external.example"], data) == {}
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.starttls(context=_tls())
        c.ehlo()
        assert c.docmd("AUTH", _plain("relay@acme.test", SUBMIT_PASSWORD))[0] == 235
        assert c.sendmail("bob@acme.test", ["dave@external.example"], make_mail("dave@external.example")) == {}
    got = sorted(sink.wait_count(2), key=lambda m: m.rcpts)
    assert [m.rcpts for m in got] == [["carol@external.example"], ["dave@external.example"]]
    assert b"with ESMTPSA id" in got[0].data
    with msp_scope():
        assert set(session.scalars(select(Message.direction))) == {"outbound"}
        assert set(session.scalars(select(Message.tenant_id))) == {acme.id}


def test_port_25_never_accepts_auth_even_with_valid_credentials(submission, sink):
    """Attack: log in on port 25 (which offers no AUTH) with a stolen credential, to relay from anywhere."""
    env, _ = submission
    with client(env) as c:
        c.starttls(context=_tls())
        c.ehlo()
        assert not c.has_extn("auth")
        code, _ = c.docmd("AUTH", _plain("relay@acme.test", SUBMIT_PASSWORD))
        assert code == 535
        assert c.mail("alice@acme.test")[0] == 250
        assert c.rcpt("victim@external.example")[0] == 550
    assert sink.messages == []


def test_submission_listener_without_tls_config_stops_with_the_variables_named(env, tmp_path):
    r = run_cli(["smtp"], dict(env, MAILWARD_SUBMISSION_LISTEN=f"127.0.0.1:{free_port()}"))
    assert r.returncode != 0
    assert "MAILWARD_SUBMISSION_LISTEN" in r.stderr and "MAILWARD_TLS_CERT" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_smtp_credential_create_prints_a_random_password_once_that_works(outbound_env, acme, tls_files, tmp_path):
    out = cli_ok(["smtp-credential", "create", "Acme", "Scanner@Acme.test"], outbound_env)
    password = re.search(r"^password: (\S+)$", out, re.M)
    assert password is not None and len(password.group(1)) >= 20
    assert "scanner@acme.test\tAcme\tactive" in cli_ok(["smtp-credential", "list"], outbound_env)
    port = free_port()
    e = dict(outbound_env, MAILWARD_SUBMISSION_LISTEN=f"127.0.0.1:{port}", MAILWARD_TLS_CERT=tls_files[0],
             MAILWARD_TLS_KEY=tls_files[1])
    with running_ingress(e, tmp_path / "smtp.log", port):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.starttls(context=_tls())
            c.ehlo()
            assert c.docmd("AUTH", _plain("scanner@acme.test", password.group(1)))[0] == 235
        cli_ok(["smtp-credential", "revoke", "scanner@acme.test"], e)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.starttls(context=_tls())
            c.ehlo()
            assert c.docmd("AUTH", _plain("scanner@acme.test", password.group(1)))[0] == 535


# --- rate limits --------------------------------------------------------------------------------------------------

def test_outbound_sender_hourly_limit_gives_451_and_notifies_once(outbound_env, acme, sink, tmp_path):
    cli_ok(["relay", "add", "Acme", "127.0.0.0/8"], outbound_env)
    cli_ok(["policy", "set", "Acme", "outbound_sender_hourly=2"], outbound_env)
    with running_ingress(outbound_env, tmp_path / "smtp.log") as proc:
        with client(outbound_env) as c:
            for i in range(2):
                assert c.sendmail("alice@acme.test", [f"r{i}@external.example"],
                                  outbound_mail(f"r{i}@external.example")) == {}
            for _ in range(2):
                code, reply = c.mail("alice@acme.test")  # the third mail, and a retry
                assert code == 451 and reply.startswith(b"4.7.1") and b"rate limit" in reply.lower()
                c.rset()
            # Another sender of the tenant has its own count; its third recipient is refused at RCPT.
            assert c.mail("bob@acme.test")[0] == 250
            assert [c.rcpt(f"x{i}@external.example")[0] for i in range(3)] == [250, 250, 451]
            assert c.data(outbound_mail("x0@external.example", sender="bob@acme.test"))[0] == 250
        got = sink.wait_count(3)
    assert sorted(len(m.rcpts) for m in got) == [1, 1, 2]
    log = proc.log()
    assert log.count("outbound rate limit: tenant") == 2  # once for alice, once for bob: not once per refusal
    flags = redis.Redis.from_url(outbound_env["MAILWARD_REDIS_URL"]).keys("mailward:rl:*notified*")
    assert len(flags) == 2


def test_outbound_tenant_hourly_limit_covers_all_its_senders(outbound_env, acme, sink, tmp_path):
    cli_ok(["relay", "add", "Acme", "127.0.0.0/8"], outbound_env)
    cli_ok(["policy", "set", "Acme", "outbound_tenant_hourly=3"], outbound_env)
    codes = []
    with running_ingress(outbound_env, tmp_path / "smtp.log"), client(outbound_env) as c:
        c.ehlo()
        for name in ("a", "b", "c", "d"):
            codes.append(c.mail(f"{name}@acme.test")[0])
            if codes[-1] == 250:
                assert c.rcpt("to@external.example")[0] == 250
                assert c.data(outbound_mail("to@external.example", sender=f"{name}@acme.test"))[0] == 250
            else:
                c.rset()
    assert codes == [250, 250, 250, 451]
    assert len(sink.wait_count(3)) == 3


# --- the outbound verdict -----------------------------------------------------------------------------------------

def test_outbound_mail_over_the_outbound_threshold_is_held_not_sent(outbound_env, acme, sink, session, tmp_path):
    cli_ok(["relay", "add", "Acme", "127.0.0.0/8"], outbound_env)
    cli_ok(["policy", "set", "Acme", "scores.MIME_DEFECT=7"], outbound_env)  # above outbound_quarantine_threshold 6
    broken = (b"From: alice@acme.test\r\nTo: carol@external.example\r\nSubject: broken\r\nMIME-Version: 1.0\r\n"
              b"Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\nno boundary here\r\n")
    with running_ingress(outbound_env, tmp_path / "smtp.log"), client(outbound_env) as c:
        assert c.sendmail("alice@acme.test", ["carol@external.example"], broken) == {}
        assert c.sendmail("alice@acme.test", ["carol@external.example"], outbound_mail("carol@external.example")) == {}
    assert len(sink.wait_count(1)) == 1  # the clean one
    with msp_scope():
        msgs = {m.subject: m for m in session.scalars(select(Message))}
        held = msgs["broken"]
        assert (held.direction, held.verdict, held.quarantine_kind) == ("outbound", "quarantine", "spam")
        assert "MIME_DEFECT" in held.explanation
        held_rows = session.scalars(select(Delivery).where(Delivery.message_id == held.id)).all()
        assert [(d.rcpt, d.status, d.route) for d in held_rows] == [("carol@external.example", "quarantined", "mx")]
        assert held.expires_at is not None  # kept for the tenant's spam retention, then purged
        assert msgs["Hello"].verdict == "deliver"
    assert sink.messages[0].rcpts == ["carol@external.example"] and b"Subject: Hello" in sink.messages[0].data


def test_outbound_verdict_rejects_viruses_holds_high_scores_and_never_tags():
    virus = next(s.name for s in symbol_table().values() if s.effect == "virus")
    policy = Policy(scores={"MIME_DEFECT": 5.5})  # above the inbound tag threshold, below the outbound one
    v = decide_outbound([Finding(virus, "Eicar-Test-Signature")], 1, Policy(virus_action="quarantine"))
    assert (v.action, v.kind) == (Action.REJECT, "virus")  # whatever the inbound virus action says
    assert decide_outbound([Finding("MIME_DEFECT")], 1, policy).action == Action.DELIVER
    held = decide_outbound([Finding("MIME_DEFECT")], 1, Policy(scores={"MIME_DEFECT": 6.0}))
    assert (held.action, held.kind) == (Action.QUARANTINE, "spam")
    assert decide_outbound([Finding("MIME_DEFECT")], 1, Policy(scores={"MIME_DEFECT": 99})).action != Action.REJECT


# --- DKIM keys ----------------------------------------------------------------------------------------------------

def test_dkim_keygen_prints_the_stored_public_key_and_keeps_the_private_key_encrypted(outbound_env, acme, session,
                                                                                        cfg):
    owner, record = _txt_line(cli_ok(["dkim", "keygen", "acme.test", "--selector", "mw1"], outbound_env))
    assert owner == "mw1._domainkey.acme.test." and record.startswith("v=DKIM1; k=rsa; p=")
    with msp_scope():
        key = session.scalars(select(DkimKey)).one()
    assert key.tenant_id == acme.id and (key.domain, key.selector, key.active) == ("acme.test", "mw1", True)
    assert record.split("p=", 1)[1] == key.public_key
    pem = decrypt_private_key(cfg, key.private_key_enc)
    assert b"BEGIN RSA PRIVATE KEY" in pem
    assert "PRIVATE KEY" not in key.private_key_enc and pem.decode().splitlines()[1] not in key.private_key_enc
    private = serialization.load_pem_private_key(pem, password=None)
    spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    assert base64.b64encode(spki).decode() == key.public_key and private.key_size == 2048  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="MAILWARD_DKIM_KEY_SECRET"):
        decrypt_private_key(Config(dkim_key_secret="another secret"), key.private_key_enc)
    assert "acme.test\tmw1\tAcme\tactive" in cli_ok(["dkim", "list", "Acme"], outbound_env)
    for args, why in ((["dkim", "keygen", "nobody.example", "--selector", "mw1"], "no tenant domain"),
                      (["dkim", "keygen", "acme.test", "--selector", "mw1"], "already has a key"),
                      (["dkim", "keygen", "acme.test", "--selector", "bad selector"], "selector")):
        r = run_cli(args, outbound_env)
        assert r.returncode != 0 and why in r.stderr, r.stderr


def test_mail_from_a_tenant_without_key_goes_out_unsigned(outbound_env, acme, relaying, sink):
    with client(outbound_env) as c:
        assert c.sendmail("alice@acme.test", ["carol@external.example"], outbound_mail("carol@external.example")) == {}
    got = sink.wait_count(1)
    assert b"DKIM-Signature" not in got[0].data and got[0].data.startswith(b"Received: from ")
