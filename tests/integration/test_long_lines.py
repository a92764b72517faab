"""Mail as real MTAs send it (security issue 9, items 11 and 8): long lines and bare-LF line ends are accepted and
relayed RFC-valid, SMTP smuggling still ends nowhere, and X-Mailward fields a sender forged never reach a tenant."""

from __future__ import annotations

import base64
import re
import socket
from email import message_from_bytes, policy
from email.message import Message as EmailMessage
from typing import Any

import pytest
from sqlalchemy import select

from smtp.conform import MAX_LINE, normalize_data, prepare_for_relay
from tenants.blobs import blob_store
from tenants.models import Message
from tenants.scope import msp_scope
from tests.integration.test_ingress import make_mail, smtp_port

#: A line of the HTML of a 2007 newsletter: 2,040 octets without a line break, as its MTA sent it (7bit, unencoded).
HTML_LINE = ("<table><tr>" + "".join(f'<td class="c{i}"><a href="http://shop.example/item/{i}">Item {i}</a></td>'
                                      for i in range(40)) + "</tr></table>").encode()[:2040]
assert len(HTML_LINE) == 2040


def _reply(f: Any) -> bytes:
    """The last line of one (possibly multi-line) reply."""
    while True:
        line: bytes = f.readline()
        if line[3:4] != b"-":
            return line.rstrip(b"\r\n")


def send_raw(port: int, wire: bytes, rcpt: str = "bob@acme.test") -> list[bytes]:
    """One transaction whose DATA is ``wire`` byte for byte (it carries its own end of data), then QUIT; every reply
    line that came after the 354."""
    with socket.create_connection(("127.0.0.1", port), timeout=90) as s:  # the first mail's checks may be slow
        f = s.makefile("rb")
        assert _reply(f).startswith(b"220 ")
        for command, code in ((b"EHLO mta.sender.example", b"250"), (b"MAIL FROM:<alice@sender.example>", b"250"),
                              (f"RCPT TO:<{rcpt}>".encode(), b"250"), (b"DATA", b"354")):
            s.sendall(command + b"\r\n")
            reply = _reply(f)
            assert reply.startswith(code), (command, reply)
        s.sendall(wire + b"QUIT\r\n")
        return [line.rstrip(b"\r\n") for line in iter(f.readline, b"")]


def stuffed(mail: bytes) -> bytes:
    """``mail`` (CRLF line ends) as DATA carries it: dot-stuffed, with the end-of-data line."""
    return re.sub(rb"(?m)^\.", b"..", mail) + b".\r\n"


def assert_rfc_valid(data: bytes) -> None:
    lines = data.split(b"\r\n")
    assert max(len(line) for line in lines) <= MAX_LINE
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")


def leaves(data: bytes) -> list[tuple[str, bytes]]:
    """(content type, decoded content) of every leaf part."""
    msg: EmailMessage = message_from_bytes(data, policy=policy.default)
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in msg.walk() if not p.is_multipart()]


def html_newsletter() -> bytes:
    return (
        b"From: News <news@shop.example>\r\nTo: bob@acme.test\r\nSubject: Spring offers\r\n"
        b"Message-ID: <n2007@shop.example>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="----=_NextPart_000_0001"\r\n\r\n'
        b"This is a multi-part message in MIME format.\r\n\r\n"
        b"------=_NextPart_000_0001\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n\r\nSpring offers: see the HTML part.\r\n\r\n"
        b"------=_NextPart_000_0001\r\nContent-Type: text/html; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n\r\n<html><body>\r\n" + HTML_LINE + b"\r\n"
        b".a line that starts with a dot\r\n</body></html>\r\n\r\n------=_NextPart_000_0001--\r\n"
    )


def delivered_and_stored(sink: Any, session: Any, acme: Any) -> bytes:
    """The one mail the sink got, after checking it is the one stored."""
    got = sink.wait_count(1)
    assert len(got) == 1
    with msp_scope():
        msg = session.scalars(select(Message)).one()
        assert msg.tenant_id == acme.id and blob_store.get(session, msg.id) == got[0].data
    return got[0].data


# --- long lines ---------------------------------------------------------------------------------------------------

def test_html_mail_with_a_2040_octet_line_is_accepted_and_relayed_rfc_valid(env, ingress, acme, sink, session):
    """12 of 1,000 legitimate mails of a 2007 collection were refused with 500 (their senders bounce them)."""
    mail = html_newsletter()
    replies = send_raw(smtp_port(env), stuffed(mail))
    assert replies[0].startswith(b"250 2.0.0 Ok: queued as ") and replies[1].startswith(b"221")
    data = delivered_and_stored(sink, session, acme)
    assert_rfc_valid(data)
    assert leaves(data) == leaves(mail)
    assert b"\r\nX-Mailward-Reencoded: text/html as quoted-printable\r\n" in data
    assert b"Spring offers: see the HTML part.\r\n" in data  # the part without long lines is as it came


def test_a_64_kib_line_is_accepted_and_relayed_rfc_valid(env, ingress, acme, sink, session):
    text = ("Grüße aus einer sehr langen Zeile. " * 2000).encode()[:65536]
    mail = (b"From: alice@sender.example\r\nTo: bob@acme.test\r\nSubject: one long line\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + text + b"\r\nshort line\r\n")
    replies = send_raw(smtp_port(env), stuffed(mail))
    assert replies[0].startswith(b"250 ")
    data = delivered_and_stored(sink, session, acme)
    assert_rfc_valid(data)
    assert leaves(data) == [("text/plain", text + b"\r\nshort line\r\n")]


def test_a_bare_lf_mail_is_accepted_with_crlf_line_ends(env, ingress, acme, sink, session):
    """A script's mail with LF line ends read as one 90 KB line before; Postfix takes it, and so do we."""
    body_lines = [f"line {i:04d} of a report a script wrote with LF line ends".encode() for i in range(1500)]
    body_lines[7] = b".hidden dot line"  # dot-stuffed on the wire like any other line
    mail = b"\n".join([b"From: cron@sender.example", b"To: bob@acme.test", b"Subject: nightly report", b"",
                       *body_lines]) + b"\n"
    wire = re.sub(rb"(?m)^\.", b"..", mail)
    assert b"\r" not in wire and len(wire) > 64 * 1024
    replies = send_raw(smtp_port(env), wire[:-1] + b"\r\n.\r\n")  # only CRLF . CRLF ends DATA
    assert replies[0].startswith(b"250 "), replies
    data = delivered_and_stored(sink, session, acme)
    assert_rfc_valid(data)
    assert data.split(b"\r\n\r\n", 1)[1] == b"\r\n".join(body_lines) + b"\r\n"


# --- SMTP smuggling -----------------------------------------------------------------------------------------------

SMUGGLED = (b"MAIL FROM:<ceo@acme.test>\r\nRCPT TO:<bob@acme.test>\r\nDATA\r\n"
            b"From: ceo@acme.test\r\nTo: bob@acme.test\r\nSubject: smuggled\r\n\r\nWire the money.\r\n")


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r.\n", b"\r.\r"],
                         ids=["LF.LF", "LF.CRLF", "CRLF.LF", "CR.CRLF", "CRLF.CR", "CR.LF", "CR.CR"])
def test_smtp_smuggling_with_a_fake_end_of_data_stays_one_mail(env, ingress, acme, sink, fake_end):
    """The attack: a non-standard end of data, then a second transaction in the same DATA that a lenient reader
    takes as commands (a mail "from" the tenant's own CEO passing SPF as the first sender's). Only CRLF.CRLF ends
    DATA here, so the rest stays text of the one mail, and the tenant's server gets one mail too."""
    first = make_mail("bob@acme.test", "harmless").rstrip(b"\r\n")
    replies = send_raw(smtp_port(env), first + fake_end + SMUGGLED + b".\r\n")
    assert len(replies) == 2 and replies[0].startswith(b"250 ") and replies[1].startswith(b"221"), replies
    got = sink.wait_count(1)
    assert len(got) == 1 and b"Subject: harmless" in got[0].data and b"Wire the money." in got[0].data
    assert_rfc_valid(got[0].data)
    assert sink.messages == got  # nothing more arrives


# --- forged X-Mailward fields -------------------------------------------------------------------------------------

def test_forged_x_mailward_fields_of_the_sender_never_reach_the_tenant(env, ingress, acme, sink):
    """A spammer writes ``X-Mailward-Status: clean`` itself; a downstream rule trusting it would be fooled. Only the
    fields the ingress wrote arrive."""
    mail = (b"X-Mailward-Status: clean, score=-100\r\nX-Mailward-Score: -100 (FORGED)\r\n"
            b"X-MAILWARD-Whatever: \r\n\tfolded forged value\r\n" + make_mail("bob@acme.test", "trust me"))
    replies = send_raw(smtp_port(env), stuffed(mail))
    assert replies[0].startswith(b"250 ")
    data = sink.wait_count(1)[0].data
    msg = message_from_bytes(data, policy=policy.default)
    assert len(msg.get_all("X-Mailward-Status")) == 1 and len(msg.get_all("X-Mailward-Score")) == 1
    assert "-100" not in msg["X-Mailward-Status"] and "FORGED" not in msg["X-Mailward-Score"]
    assert b"folded forged value" not in data and msg["X-Mailward-Whatever"] is None
    assert msg["Subject"] == "trust me"


# --- the re-encoding itself ---------------------------------------------------------------------------------------

def test_a_mail_without_long_lines_is_relayed_byte_for_byte():
    """Its DKIM signatures stay valid: nothing is re-encoded unless a line is too long."""
    mail = html_newsletter().replace(HTML_LINE, HTML_LINE[:900])
    assert prepare_for_relay(mail, "Q") == mail


def test_nested_parts_base64_lines_and_long_headers_are_fitted_and_decode_the_same():
    inner = (b"From: a@sender.example\r\nSubject: forwarded\r\nContent-Type: text/plain\r\n\r\n" + b"w" * 5000
             + b"\r\n")
    blob = bytes(range(256)) * 40
    mail = (b"From: a@sender.example\r\nTo: bob@acme.test\r\nReferences: " + b" ".join(
        f"<id{i}@sender.example>".encode() for i in range(120)) + b"\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n--outer\r\nContent-Type: message/rfc822\r\n\r\n'
        + inner + b"--outer\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(blob) + b"\r\n--outer\r\nContent-Type: application/x-raw\r\n\r\n" + blob.replace(
            b"\r", b"").replace(b"\n", b"") + b"\r\n--outer--\r\n" + b"e" * 3000 + b"\r\n")
    out = prepare_for_relay(mail, "Q")
    assert_rfc_valid(out)
    original, fitted = message_from_bytes(mail, policy=policy.default), message_from_bytes(out, policy=policy.default)
    assert fitted["References"] == original["References"]  # folded at white space: the same value
    assert [p.get_payload(decode=True) for p in fitted.walk() if not p.is_multipart()] == \
        [p.get_payload(decode=True) for p in original.walk() if not p.is_multipart()]
    assert b"X-Mailward-Reencoded: long header lines folded; text/plain as quoted-printable; application/" in out


@pytest.mark.parametrize("wire, mail", [
    (b"a\r\n..b\r\n", b"a\r\n.b\r\n"),
    (b"a\n..b\n", b"a\r\n.b\r\n"),  # a bare LF ends a line, and the next one is unstuffed
    (b"a\r.b\r\n", b"a\r\n.b\r\n"),  # a bare CR is content (no unstuffing), made CRLF
    (b"a\n.\nb\r\n", b"a\r\n\r\nb\r\n"),
])
def test_normalize_data_unstuffs_and_makes_crlf(wire, mail):
    assert normalize_data(wire) == mail
