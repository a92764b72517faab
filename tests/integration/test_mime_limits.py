"""MIME limits: a mail whose structure would cost the standard library parser minutes of CPU and gigabytes of memory
(a million empty parts, deep nesting, huge header blocks) is refused at DATA by a linear pre-scan before anything
parses it, recorded like any refusal; a stored one is not rendered by the quarantine views; the parse of what passes
is bounded by its own budget; and a zip of 700,000 directory entries is never listed in full.

Each test names the attack. CPU bounds are generous (the old code took 9.5 s to 770 s on these inputs) and measured
in this process, around the function under test only.
"""

from __future__ import annotations

import asyncio
import io
import smtplib
import struct
import tarfile
import time
import zipfile
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from typing import Any

import pytest
from sqlalchemy import func, select

from smtp.checks import CheckContext
from smtp.checks.attachments import MAX_ARCHIVE_ENTRIES, inspect_attachments, zip_directory
from smtp.checks.mimecheck import MimeCheck
from smtp.mime import REPLY_OVER_LIMITS, Attachment, check_limits, parse_mail
from smtp.verdict import Action, decide
from tenants.mail.mimescan import LIMITS, Budget, MimeLimitExceeded, MimeLimits, scan
from tenants.mail.mimetext import parse_message, split_parts
from tenants.mail.preview import parse_view
from tenants.models import Blob, Message
from tenants.platform.config import Config
from tenants.policy import Policy
from tests.fixtures.api import Client, make_key
from tests.integration.test_ingress import client, smtp_port
from tests.integration.test_rejections import events, has_blob, refused_for
from tests.support.held import hold
from tests.support.web import read, sign_in
from tests.support.web import text as page_text

#: CPU seconds the tests allow for work the old code spent minutes on (the new code takes milliseconds).
CPU_BOUND = 5.0
#: Seconds the client waits for the reply to the first mail a fresh ingress fully scans (rule sets and models load
#: then; on a loaded test machine that can pass smtplib's usual 30 s).
SLOW_FIRST_MAIL = 180
HEAD = b"From: a@sender.example\r\nTo: bob@acme.test\r\nSubject: Parts\r\nMessage-ID: <parts-1@sender.example>\r\n"


def many_parts(n: int, part: bytes = b"--b\r\n\r\nx\r\n") -> bytes:
    """A multipart mail of ``n`` empty parts (10 bytes each), built in one multiplication."""
    return HEAD + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + part * n + b"--b--\r\n"


def nested(depth: int) -> bytes:
    """Multiparts in multiparts, each the only part of the one around it, down to a text part at level ``depth``
    (the mail itself is level 0)."""
    opening = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
                       for i in range(depth - 1))
    return (HEAD + b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + opening
            + b"--b%d\r\n\r\nleaf\r\n" % (depth - 1))


def normal_mail() -> bytes:
    """What real mail looks like: text and HTML alternatives, a PDF, a forwarded mail with an attachment of its own."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "alice@sender.example", "bob@acme.test", "Quarterly report"
    msg.set_content("Numbers attached.\n")
    msg.add_alternative("<p>Numbers <b>attached</b>.</p>", subtype="html")
    msg.add_attachment(b"%PDF-1.4\n%\xe2\xe3\n1 0 obj<<>>endobj\n", maintype="application", subtype="pdf",
                       filename="report.pdf")
    inner = EmailMessage()
    inner["From"], inner["Subject"] = "carol@sender.example", "Earlier"
    inner.set_content("The earlier numbers.\n")
    inner.add_attachment(b"a,b\n1,2\n", maintype="text", subtype="csv", filename="q1.csv")
    msg.add_attachment(inner)
    return msg.as_bytes()


def cpu(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.process_time()
    result = fn(*args)
    return result, time.process_time() - start


# --- the pre-scan -------------------------------------------------------------------------------------------------

def test_a_million_empty_parts_are_refused_by_the_prescan_and_never_parsed():
    """1 M parts in 10 MB cost the parser 122 CPU-s and 930 MB; the scan stops at part 501 and nothing parses."""
    raw = many_parts(1_000_000)
    assert len(raw) > 10_000_000
    result, spent = cpu(scan, raw)
    assert result.over == f"more than {LIMITS.max_parts} MIME parts" and result.parts == LIMITS.max_parts + 1
    assert spent < CPU_BOUND
    over, spent = cpu(check_limits, raw)
    assert over is not None and over.reply.startswith("554 5.6.0 ") and over.headers.subject == "Parts"
    assert spent < CPU_BOUND
    mail, spent = cpu(parse_mail, raw)  # any other caller of the ingress's parse gets it unparsed, too
    assert mail.message is None and mail.over_limits == result.over and mail.attachments == []
    assert spent < CPU_BOUND


def test_deep_nesting_is_refused():
    """Each level of nesting makes the parser test every line once more (and recurse once more)."""
    assert scan(nested(LIMITS.max_depth)).over is None
    deep = scan(nested(LIMITS.max_depth + 1))
    assert deep.over == f"MIME parts nested more than {LIMITS.max_depth} deep"
    assert scan(nested(5000)).over == deep.over  # far past the interpreter's recursion limit: still an answer


@pytest.mark.parametrize("raw, why", [
    (HEAD + b"Subject: " + b"x" * (LIMITS.max_header_field_bytes + 1) + b"\r\n\r\nbody\r\n", "a header field"),
    (HEAD + b"\r\n".join([b"X-Pad: " + b"y" * 60_000] * 5) + b"\r\n\r\nbody\r\n", "a header block"),
    (HEAD + b"X-Many: v\r\n" * (LIMITS.max_header_lines + 1) + b"\r\nbody\r\n", "header lines"),
    (HEAD + b"To: " + b"(a)" * 30_000 + b"\r\n\r\nbody\r\n", "a header field"),
    (HEAD + b"Content-Type: text/plain; name=\"" + b"n" * LIMITS.max_mime_field_bytes + b"\"\r\n\r\nbody\r\n",
     "Content-Type or Content-Disposition field"),
    (many_parts(400, b"--b\r\nContent-Type: text/plain; " + b"a=b; " * 20 + b"\r\n\r\nx\r\n"), "parameters"),
    (HEAD + b"\r\n" + b"\n" * (LIMITS.max_lines + 1), "lines"),
])
def test_huge_headers_and_line_floods_are_refused(raw, why):
    """Header blocks, fields and parameters the parser would spend seconds on (its field parser is quadratic on
    hostile input), and a million one-byte lines (a string object each)."""
    result, spent = cpu(scan, raw)
    assert result.over is not None and why in result.over
    assert spent < CPU_BOUND


def test_lines_times_nesting_is_bounded():
    """A few hundred thousand short lines inside nineteen multiparts: each line is tested against every boundary."""
    raw = nested(19).replace(b"leaf\r\n", b"\r\n" * 300_000)
    assert "boundary tests" in (scan(raw).over or "")
    assert scan(nested(19).replace(b"leaf\r\n", b"\r\n" * 200_000)).over is None


def test_a_normal_multipart_mail_passes_and_is_counted_as_the_parser_counts():
    raw = normal_mail()
    result = scan(raw)
    walked = list(BytesParser(policy=default_policy).parsebytes(raw).walk())
    assert result.over is None and result.parts == len(walked) and result.depth == 3
    mail = parse_mail(raw)
    assert mail.over_limits is None and mail.message is not None
    assert sorted(a.filename or "" for a in mail.attachments) == ["q1.csv", "report.pdf"]
    assert "Numbers attached." in mail.text and "The earlier numbers." in mail.text


@pytest.mark.parametrize("variant", [
    "crlf", "lf", "cr", "digest", "report", "quoted-boundary", "folded", "rfc2231", "comment", "same-boundary",
    "outer-ends-inner", "delimiter-with-colon", "no-separator",
])
def test_the_scan_never_counts_fewer_parts_than_the_parser_makes(variant):
    """Line endings, digests, delivery reports and boundary syntax the scan might read otherwise: a mail that hides
    parts from the scan would get them parsed."""
    body = {
        "digest": b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: a\r\n\r\nA\r\n--d\r\n\r\n"
                  b"Subject: b\r\n\r\nB\r\n--d--\r\n",
        "report": b"Content-Type: multipart/report; boundary=r\r\n\r\n--r\r\n\r\ntext\r\n--r\r\n"
                  b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; a\r\n\r\nFinal-Recipient: x\r\n"
                  b"Action: failed\r\n\r\n--r--\r\n",
        "quoted-boundary": b'Content-Type: multipart/mixed; x="a;b"; boundary="q;r"\r\n\r\n--q;r\r\n\r\na\r\n'
                           b"--q;r\r\n\r\nb\r\n--q;r--\r\n",
        "folded": b"Content-Type: multipart/mixed;\r\n\tboundary=\"f\"\r\n\r\n--f\r\n\r\na\r\n--f\r\n\r\nb\r\n"
                  b"--f--\r\n",
        "rfc2231": b"Content-Type: multipart/mixed; boundary*0=ab; boundary*1=cd\r\n\r\n--abcd\r\n\r\na\r\n"
                   b"--abcd\r\n\r\nb\r\n--abcd--\r\n",
        "comment": b"Content-Type: multipart/mixed; boundary=c (hidden)\r\n\r\n--c\r\n\r\na\r\n--c\r\n\r\nb\r\n"
                   b"--c--\r\n",
        "same-boundary": b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: multipart/mixed; "
                         b"boundary=o\r\n\r\n--o\r\n\r\nx\r\n--o\r\n\r\ny\r\n--o--\r\n",
        "outer-ends-inner": b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: multipart/mixed;"
                            b" boundary=i\r\n\r\n--i\r\n\r\nx\r\n--o\r\n\r\ny\r\n--i\r\n\r\nz\r\n--o--\r\n",
        "delimiter-with-colon": b'Content-Type: multipart/mixed; boundary="a:b"\r\n\r\n--a:b\r\nX: y\r\n--a:b\r\n'
                                b"Content-Type: message/rfc822\r\n--a:b--\r\n",
        "no-separator": b"Content-Type: multipart/mixed; boundary=n\r\n\r\n--n\r\nContent-Type: message/rfc822\r\n"
                        b"--n\r\n--n--\r\n--n\r\nContent-Type: message/rfc822\r\n",
    }.get(variant, normal_mail().replace(b"\n", b"\r\n"))
    raw = {"lf": body.replace(b"\r\n", b"\n"), "cr": body.replace(b"\r\n", b"\r")}.get(variant, body)
    parsed = len(list(BytesParser(policy=default_policy).parsebytes(raw).walk()))
    assert scan(raw).parts >= parsed >= 2


# --- the parse's own bounds -----------------------------------------------------------------------------------------

def test_the_parse_stops_itself_on_its_part_and_cpu_budget():
    """Should the scan ever read a mail otherwise than the parser does, the parser's message factory counts the
    parts it makes and the thread's CPU time is checked as it goes: the parse stops, it does not run for minutes."""
    raw = many_parts(2000)
    with pytest.raises(MimeLimitExceeded, match="more than 100 MIME parts"):
        parse_message(raw, Budget(MimeLimits(max_parts=100)))
    with pytest.raises(MimeLimitExceeded, match="of CPU"):
        parse_message(raw, Budget(MimeLimits(parse_cpu_seconds=0.0)))
    msg = parse_message(raw, Budget(MimeLimits(max_parts=5000)))
    walked = split_parts(msg, max_parts=5000, budget=Budget(MimeLimits(parse_cpu_seconds=0.0)))
    assert walked.truncated and walked.over_limits is not None and not walked.leaves


def test_hostile_header_fields_are_read_in_linear_time():
    """Comments in an address field cost the structured header parser seconds per read (quadratic); a long field is
    read as plain text, and each field once, however often a part's type or name is asked for."""
    raw = HEAD.replace(b"To: bob@acme.test\r\n", b"To: " + b"(a)" * 10_000 + b" bob@acme.test\r\n") + (
        b"Content-Type: text/plain; x=" + b"(c)" * 1300 + b"\r\n\r\nhello\r\n")
    assert scan(raw).over is None
    mail, spent = cpu(parse_mail, raw)
    assert mail.over_limits is None and "bob@acme.test" in (mail.header("To") or "") and "hello" in mail.text
    assert spent < CPU_BOUND


def test_over_limit_mail_that_reaches_the_checks_is_held_not_delivered():
    """A mail over the limits that reaches the checks (its parse ran out of budget, or a path skipped the pre-scan):
    they saw little of it, so MIME_LIMIT carries the attachment effect (quarantine), whatever the score."""
    ctx = CheckContext(cfg=Config(), client_ip="203.0.113.9", helo="x", mail_from="a@sender.example",
                       rcpts=["bob@acme.test"], tenant_ids=[7])
    ctx.mail = parse_mail(many_parts(1000))
    asyncio.run(MimeCheck(ctx.cfg).run(ctx))
    assert [(f.symbol, f.reason) for f in ctx.findings] == [("MIME_LIMIT", "more than 500 MIME parts")]
    verdict = decide(ctx.findings, 7, Policy())
    assert (verdict.action, verdict.kind) == (Action.QUARANTINE, "attachment")


# --- the ingress ----------------------------------------------------------------------------------------------------

def test_many_part_mail_gets_554_at_data_and_a_refusal_record(env, cfg, acme, ingress, sink):
    """A mail of 20,000 parts (the old ingress parsed it, then accepted it) is refused with 554 5.6.0 before any
    parse; the refusal is recorded like other refusals at DATA (no content kept) and nothing is delivered. A normal
    multipart mail on the same connection is accepted."""
    raw = many_parts(20_000)
    with client(env) as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("alice@sender.example", ["bob@acme.test"], raw)
    reply = f"{err.value.smtp_code} {err.value.smtp_error.decode()}"
    assert reply == REPLY_OVER_LIMITS.format(why=f"more than {LIMITS.max_parts} MIME parts")
    with smtplib.SMTP("127.0.0.1", smtp_port(env), timeout=SLOW_FIRST_MAIL) as c:  # the first full scan warms up
        assert c.sendmail("alice@sender.example", ["carol@acme.test"], normal_mail()) == {}
    (msg,) = refused_for(cfg, "bob@acme.test")
    assert (msg.verdict, msg.subject, msg.message_id_header, msg.size) == (
        "reject", "Parts", "<parts-1@sender.example>", len(raw))
    assert msg.explanation.startswith("reject (mime): over the MIME limits")
    assert [(f.symbol, f.reason) for f in msg.findings] == [("MIME_LIMIT", "more than 500 MIME parts")]
    assert [(d.rcpt, d.status, d.last_reply) for d in msg.deliveries] == [("bob@acme.test", "rejected", reply)]
    assert not has_blob(cfg, msg.id)
    assert [k for k, _ in events(cfg, msg.id)] == ["received", "scanned", "rejected"]
    assert [m.rcpts for m in sink.wait_count(1)] == [["carol@acme.test"]]


# --- the quarantine views -------------------------------------------------------------------------------------------

def test_preview_of_an_over_limit_mail_is_not_parsed():
    """A 1 M-part mail stored before the limits existed: the preview does not parse it (the old one spent 32 CPU-s
    per view on 100 k parts)."""
    view, spent = cpu(parse_view, many_parts(1_000_000))
    assert spent < CPU_BOUND
    assert view.headers == [] and view.attachments == [] and view.text == ""
    assert view.preview.kind == "not_rendered" and view.preview.html == ""
    assert view.preview.text.startswith("Not rendered") and "more than 500 MIME parts" in view.preview.text
    assert parse_view(normal_mail()).preview.kind == "text"


def test_portal_and_api_show_not_rendered_for_an_over_limit_stored_mail(cfg, acme, factory, web_app):
    factory.user("admin@acme.test", "tenant_admin", acme)
    mid = hold(cfg, acme.id, kind="attachment", subject="Parts", data=many_parts(100_000))
    browser = sign_in(web_app, "admin@acme.test")
    start = time.process_time()
    page = page_text(browser.get(f"/portal/quarantine/{mid}"))
    frame = page_text(browser.get(f"/portal/quarantine/{mid}/preview"))
    answer = Client(web_app, make_key(cfg, acme.id)).get(f"/quarantine/{mid}")
    assert time.process_time() - start < CPU_BOUND
    assert "Not rendered: the MIME structure of this message is over the limits" in page
    assert "more than 500 MIME parts" in frame
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["preview_text"].startswith("Not rendered") and body["attachments"] == [] and body["headers"] == []
    assert any("over the MIME limits" in d for d in body["defects"])
    assert read(cfg, lambda s: s.scalar(select(func.count()).select_from(Blob).where(Blob.id == mid))) == 1
    assert read(cfg, lambda s: s.get(Message, mid).subject) == "Parts"


# --- archives -------------------------------------------------------------------------------------------------------

#: The zip end records (PKWARE APPNOTE 4.3.14 to 4.3.16): ZIP64 end of central directory, its locator, the classic one.
EOCD64 = struct.Struct("<4sQ2H2L4Q")
EOCD64_LOCATOR = struct.Struct("<4sLQL")
EOCD = struct.Struct("<4s4H2LH")


def _zip_of_entries(n: int, name: bytes = b"d/") -> bytes:
    """A zip whose central directory lists ``n`` copies of one entry (a directory by default), with ZIP64 end
    records: 36 MB for 700,000 entries, built by repetition."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name.decode(), b"")
    real = buf.getvalue()
    start, end = real.index(b"PK\x01\x02"), real.index(b"PK\x05\x06")
    body, directory = real[:start], real[start:end] * n
    record = EOCD64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(directory), len(body))
    locator = EOCD64_LOCATOR.pack(b"PK\x06\x07", 0, len(body) + len(directory), 1)
    end_record = EOCD.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return body + directory + record + locator + end_record


def test_a_zip_of_700k_entries_is_flagged_without_listing_them():
    """Listing 700,000 central-directory entries costs zipfile 9.5 CPU-s and 390 MB; the end records give the count
    and the directory is read no further than the entry limit."""
    data = _zip_of_entries(700_000)
    directory = zip_directory(data, MAX_ARCHIVE_ENTRIES)
    assert directory is not None and directory.declared == 700_000
    assert directory.counted == MAX_ARCHIVE_ENTRIES + 1  # it stopped reading there
    result, spent = cpu(inspect_attachments, [Attachment("big.zip", "application/zip", data)])
    assert spent < CPU_BOUND
    assert result.findings == {"ARCHIVE_LIMIT": [
        f"big.zip: more than {MAX_ARCHIVE_ENTRIES} entries in one archive (its directory declares 700000)"]}


def test_a_zip_within_the_entry_limit_is_still_inspected_in_full():
    data = _zip_of_entries(3, b"run.exe")
    directory = zip_directory(data, MAX_ARCHIVE_ENTRIES)
    assert directory is not None and (directory.declared, directory.counted, directory.cut) == (3, 3, None)
    result = inspect_attachments([Attachment("ok.zip", "application/zip", data)])
    assert "ARCHIVE_LIMIT" not in result.findings
    assert result.findings["ATTACH_DANGEROUS"] == ["ok.zip/run.exe: .exe file"]


def test_a_zip_whose_end_record_understates_its_directory_is_still_bounded():
    """The count in the end record is the sender's word; the directory's size is what zipfile reads."""
    data = bytearray(_zip_of_entries(10_000))
    data[-EOCD.size:] = EOCD.pack(b"PK\x05\x06", 0, 0, 1, 1, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    record = len(data) - EOCD.size - EOCD64_LOCATOR.size - EOCD64.size
    values = list(EOCD64.unpack_from(data, record))
    values[6] = values[7] = 1  # "one entry"
    data[record:record + EOCD64.size] = EOCD64.pack(*values)
    directory = zip_directory(bytes(data), MAX_ARCHIVE_ENTRIES)
    assert directory is not None and directory.declared == 1 and directory.counted == MAX_ARCHIVE_ENTRIES + 1
    result = inspect_attachments([Attachment("liar.zip", "application/zip", bytes(data))])
    assert list(result.findings) == ["ARCHIVE_LIMIT"]


def test_a_tar_of_many_directory_entries_is_read_no_further_than_the_entry_limit():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for n in range(MAX_ARCHIVE_ENTRIES + 10):
            info = tarfile.TarInfo(f"d{n}")
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
    result = inspect_attachments([Attachment("dirs.tar", "application/x-tar", buf.getvalue())])
    assert result.findings == {"ARCHIVE_LIMIT": [f"dirs.tar: more than {MAX_ARCHIVE_ENTRIES} entries in one archive"]}
