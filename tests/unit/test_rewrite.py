"""MIME edits of the mail-rule actions (smtp.rewrite): headers, subject tags, disclaimers, attachment removal.

Pure unit tests on raw bytes: every result is read back with the parser the ingress uses (smtp.mime.parse_mail), and
the bytes an edit does not touch are checked to stay as they were.
"""

from __future__ import annotations

import base64
import random
import re

import pytest

from smtp.mime import parse_mail
from smtp.rewrite import (
    EditResult,
    add_disclaimer,
    add_header,
    remove_attachments,
    remove_header,
    set_header,
    tag_subject,
)

HEAD = b"From: Alice <alice@sender.example>\r\nTo: bob@acme.test\r\nSubject: Quarterly report\r\n" \
       b"Message-ID: <r-1@sender.example>\r\nDate: Mon, 7 Dec 2026 04:00:00 +0000\r\n"
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n" * 20
PDF_B64 = base64.encodebytes(PDF).replace(b"\n", b"\r\n")


def plain(body: bytes = b"Hello Bob,\r\nsee you.\r\n", *, ctype: bytes = b"text/plain; charset=us-ascii",
          cte: bytes | None = None) -> bytes:
    fields = HEAD + b"MIME-Version: 1.0\r\nContent-Type: " + ctype + b"\r\n"
    if cte:
        fields += b"Content-Transfer-Encoding: " + cte + b"\r\n"
    return fields + b"\r\n" + body


def part(ctype: bytes, body: bytes, *, cte: bytes | None = None, extra: bytes = b"") -> bytes:
    out = b"Content-Type: " + ctype + b"\r\n" + extra
    if cte:
        out += b"Content-Transfer-Encoding: " + cte + b"\r\n"
    return out + b"\r\n" + body


def multipart(kind: bytes, boundary: bytes, *parts: bytes, close: bool = True, head: bytes = HEAD) -> bytes:
    out = head + b"MIME-Version: 1.0\r\n" if head else b""
    out += b'Content-Type: multipart/' + kind + b'; boundary="' + boundary + b'"\r\n\r\n'
    out += b"This is a multi-part message in MIME format.\r\n"
    for p in parts:
        out += b"--" + boundary + b"\r\n" + p + b"\r\n"
    if close:
        out += b"--" + boundary + b"--\r\n"
    return out


def alternative(text: bytes = b"Hello Bob\r\n", html: bytes = b"<html><body><p>Hello Bob</p></body></html>\r\n",
                *, head: bytes = HEAD) -> bytes:
    return multipart(b"alternative", b"alt-1", part(b"text/plain; charset=utf-8", text),
                     part(b"text/html; charset=utf-8", html), head=head)


PDF_PART = part(b'application/pdf; name="report.pdf"', PDF_B64, cte=b"base64",
                extra=b'Content-Disposition: attachment; filename="report.pdf"\r\n')


def mixed_with_attachments() -> bytes:
    inner = alternative(head=b"")
    docm = part(b"application/vnd.ms-word.document.macroEnabled.12",
                base64.encodebytes(b"PK\x03\x04macro").replace(b"\n", b"\r\n"), cte=b"base64",
                extra=b'Content-Disposition: attachment; filename="invoice.docm"\r\n')
    return multipart(b"mixed", b"mix-1", inner.rstrip(b"\r\n"), PDF_PART, docm)


def read(result: EditResult):  # noqa: ANN201 - the ParsedMail
    parsed = parse_mail(result.data)
    assert parsed.message is not None and parsed.over_limits is None
    return parsed


def crlf_only(data: bytes) -> bool:
    return re.search(rb"(?<!\r)\n|\r(?!\n)", data) is None


def short_lines(data: bytes) -> bool:
    return all(len(line) <= 998 for line in data.split(b"\r\n"))


# --- headers ----------------------------------------------------------------------------------------------------------

def test_add_header_goes_on_top_and_leaves_every_other_byte() -> None:
    raw = plain()
    result = add_header(raw, "X-Rule", "finance-macro")
    assert result.changed
    assert result.data == b"X-Rule: finance-macro\r\n" + raw
    assert read(result).header("X-Rule") == "finance-macro"


def test_add_header_encodes_non_ascii_and_folds_long_values() -> None:
    value = "Geprüft von Mailward — " + "sehr lange Begründung " * 10
    result = add_header(plain(), "X-Checked", value)
    head = result.data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii() and b"=?utf-8?" in head
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    assert read(result).header("X-Checked") == " ".join(value.split())


def test_header_injection_through_a_value_is_refused() -> None:
    """Attack: a rule's header value (macro-expanded from the subject) carries CRLF and a Bcc field of its own."""
    result = add_header(plain(), "X-Original-Subject", "hello\r\nBcc: thief@evil.example\r\n\r\nfake body")
    parsed = read(result)
    assert parsed.header("Bcc") is None
    assert parsed.header("X-Original-Subject") == "hello Bcc: thief@evil.example fake body"
    assert parsed.text.startswith("Hello Bob")
    assert any("became spaces" in n for n in result.notes)
    set_result = set_header(plain(), "X-Spam-Flag", "NO\nBcc: thief@evil.example")
    assert read(set_result).header("Bcc") is None


@pytest.mark.parametrize("name", ["X-Bad\r\nBcc", "X Space", "X:Colon", "", "Bcc\n", "X-Ü"])
def test_header_injection_through_a_name_is_refused(name: str) -> None:
    raw = plain()
    for result in (add_header(raw, name, "v"), set_header(raw, name, "v"), remove_header(raw, name)):
        assert not result.changed and result.data == raw
        assert "not a valid field name" in result.notes[0]


def test_mime_structure_fields_are_not_edited() -> None:
    raw = mixed_with_attachments()
    for result in (set_header(raw, "Content-Type", "text/plain"), remove_header(raw, "content-transfer-encoding"),
                   add_header(raw, "MIME-Version", "2.0")):
        assert not result.changed and result.data == raw and "MIME structure" in result.notes[0]


def test_set_header_replaces_every_occurrence_in_place() -> None:
    raw = HEAD + b"X-Spam-Flag: YES\r\nX-Other: 1\r\nx-spam-flag: maybe\r\n  folded\r\n\r\nbody\r\n"
    result = set_header(raw, "X-Spam-Flag", "NO")
    assert result.data == HEAD + b"X-Spam-Flag: NO\r\nX-Other: 1\r\n\r\nbody\r\n"
    assert read(result).header_all("X-Spam-Flag") == ["NO"]
    added = set_header(plain(), "X-Spam-Flag", "NO")
    assert added.data.startswith(b"X-Spam-Flag: NO\r\n") and read(added).header("X-Spam-Flag") == "NO"


def test_remove_header_removes_all_exact_matches_only() -> None:
    raw = HEAD + b"X-Spam: 1\r\nX-Spam-Status: kept\r\nx-SPAM: 2\r\n\tcontinued\r\n\r\nbody\r\nX-Spam: in body\r\n"
    result = remove_header(raw, "X-Spam")
    assert result.changed and result.data == HEAD + b"X-Spam-Status: kept\r\n\r\nbody\r\nX-Spam: in body\r\n"
    missing = remove_header(result.data, "X-Spam")
    assert not missing.changed and missing.data == result.data


def test_header_edits_make_bare_lf_mail_crlf() -> None:
    raw = b"From: a@x.example\nSubject: hi\n\nline one\nline two\n"
    result = add_header(raw, "X-A", "1")
    assert crlf_only(result.data) and result.data.endswith(b"line two\r\n")
    assert read(result).header("X-A") == "1"


# --- subject tags -----------------------------------------------------------------------------------------------------

def test_tag_subject_once() -> None:
    result = tag_subject(plain(), "[EXTERNAL]")
    assert read(result).header("Subject") == "[EXTERNAL] Quarterly report"
    assert result.data.replace(b"Subject: [EXTERNAL] ", b"Subject: ") == plain()
    again = tag_subject(result.data, "[EXTERNAL]")
    assert not again.changed and again.data == result.data and "already tagged" in again.notes[0]
    reply = plain().replace(b"Subject: Quarterly", b"Subject: Re: [external] Quarterly")
    assert not tag_subject(reply, "[EXTERNAL]").changed


def test_tag_subject_non_ascii_tag_is_encoded_and_keeps_its_space() -> None:
    for subject in (b"Quarterly report", b"=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus Koeln"):
        raw = plain().replace(b"Subject: Quarterly report", b"Subject: " + subject)
        result = tag_subject(raw, "[Внешнее]")
        head = result.data.split(b"\r\n\r\n", 1)[0]
        assert head.isascii()
        shown = read(result).header("Subject")
        assert shown is not None and shown.startswith("[Внешнее] ") and not shown.startswith("[Внешнее]  ")


def test_tag_subject_folds_long_lines_and_adds_a_missing_subject() -> None:
    raw = plain().replace(b"Quarterly report", b"word " * 14 + b"end")
    result = tag_subject(raw, "[EXTERNAL]")
    head = result.data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    assert read(result).header("Subject") == "[EXTERNAL] " + "word " * 14 + "end"
    no_subject = plain().replace(b"Subject: Quarterly report\r\n", b"")
    added = tag_subject(no_subject, "[EXTERNAL]")
    assert added.changed and read(added).header("Subject") == "[EXTERNAL]"
    injected = tag_subject(plain(), "[X]\r\nBcc: thief@evil.example")
    assert read(injected).header("Bcc") is None


# --- disclaimers ------------------------------------------------------------------------------------------------------

DISCLAIMER = "This mail comes from outside the organisation."
DISCLAIMER_HTML = '<p style="color:red">This mail comes from <b>outside</b>.</p>'


def test_disclaimer_single_part_text_bottom_and_top() -> None:
    raw = plain()
    bottom = add_disclaimer(raw, text=DISCLAIMER, html=None)
    assert bottom.changed and bottom.data == raw + b"\r\n" + DISCLAIMER.encode() + b"\r\n"
    assert read(bottom).text.endswith(DISCLAIMER + "\r\n")
    top = add_disclaimer(raw, text=DISCLAIMER, html=None, position="top")
    assert read(top).text.startswith(DISCLAIMER + "\r\n\r\nHello Bob")
    assert top.data.split(b"\r\n\r\n", 1)[0] == raw.split(b"\r\n\r\n", 1)[0]


def test_disclaimer_in_both_parts_of_an_alternative() -> None:
    result = add_disclaimer(alternative(), text=DISCLAIMER, html=DISCLAIMER_HTML)
    parsed = read(result)
    assert DISCLAIMER in parsed.text
    assert parsed.html.startswith("<html><body><p>Hello Bob</p>" + DISCLAIMER_HTML + "</body>")
    top = read(add_disclaimer(alternative(), text=DISCLAIMER, html=DISCLAIMER_HTML, position="top"))
    assert top.html.startswith("<html><body>" + DISCLAIMER_HTML + "<p>Hello Bob</p>")
    escaped = read(add_disclaimer(alternative(), text="A < B & C\nline 2", html=None))
    assert "<p>A &lt; B &amp; C<br>\r\nline 2</p></body>" in escaped.html


def test_disclaimer_leaves_attachments_and_headers_byte_identical() -> None:
    raw = mixed_with_attachments()
    result = add_disclaimer(raw, text=DISCLAIMER, html=None)
    assert PDF_PART in result.data and b"invoice.docm" in result.data
    assert result.data.split(b"\r\n\r\n", 1)[0] == raw.split(b"\r\n\r\n", 1)[0]
    before, after = parse_mail(raw), read(result)
    assert [(a.filename, a.data) for a in after.attachments] == [(a.filename, a.data) for a in before.attachments]
    assert DISCLAIMER in after.text and DISCLAIMER in after.html


def test_disclaimer_not_into_named_text_attachments_or_attached_messages() -> None:
    named = part(b'text/plain; name="notes.txt"', b"attached notes\r\n",
                 extra=b'Content-Disposition: attachment; filename="notes.txt"\r\n')
    inline_named = part(b'text/html; name="page.html"', b"<html><body>page</body></html>\r\n",
                        extra=b"Content-Disposition: inline\r\n")
    forwarded = part(b"message/rfc822", plain(b"forwarded text\r\n"))
    raw = multipart(b"mixed", b"m", part(b"text/plain", b"the body\r\n"), named, inline_named, forwarded)
    result = add_disclaimer(raw, text=DISCLAIMER, html=None)
    assert result.data.count(DISCLAIMER.encode()) == 1
    assert named in result.data and inline_named in result.data and forwarded in result.data
    assert "the body\r\n\r\n" + DISCLAIMER in read(result).text


def test_disclaimer_nested_multiparts() -> None:
    related = multipart(b"related", b"rel", alternative(head=b"").rstrip(b"\r\n"),
                        part(b"image/png", base64.encodebytes(b"\x89PNG...").replace(b"\n", b"\r\n"),
                             cte=b"base64", extra=b"Content-ID: <logo>\r\n"), head=b"")
    raw = multipart(b"mixed", b"outer", related.rstrip(b"\r\n"), PDF_PART)
    result = add_disclaimer(raw, text=DISCLAIMER, html=DISCLAIMER_HTML)
    parsed = read(result)
    assert DISCLAIMER in parsed.text and DISCLAIMER_HTML in parsed.html
    assert PDF_PART in result.data and b"Content-ID: <logo>" in result.data
    assert "disclaimer added to 2 body part(s)" in result.notes


def test_disclaimer_base64_and_quoted_printable_bodies_stay_encoded() -> None:
    text64 = base64.encodebytes("Grüße, Bob\r\n".encode()).replace(b"\n", b"\r\n")
    raw = multipart(b"alternative", b"a", part(b"text/plain; charset=utf-8", text64, cte=b"base64"),
                    part(b"text/html; charset=utf-8", b"<p>Gr=C3=BC=C3=9Fe</p>=\r\n<p>" + b"x" * 80 + b"</p>\r\n",
                         cte=b"quoted-printable"))
    result = add_disclaimer(raw, text="Vertraulich — nur für Empfänger", html=None)
    parsed = read(result)
    assert "Grüße, Bob\r\n\r\nVertraulich — nur für Empfänger" in parsed.text
    assert "<p>Grüße</p><p>" + "x" * 80 + "</p>\r\n<p>Vertraulich — nur für Empfänger</p>" in parsed.html
    assert result.data.count(b"Content-Transfer-Encoding: base64") == 1
    assert result.data.count(b"Content-Transfer-Encoding: quoted-printable") == 1
    assert result.data.isascii() and crlf_only(result.data) and short_lines(result.data)
    assert all(len(line) <= 78 for line in result.data.split(b"\r\n"))


def test_disclaimer_latin1_part_keeps_latin1_when_it_can() -> None:
    raw = plain(b"Gr=FC=DFe aus K=F6ln\r\n", ctype=b"text/plain; charset=iso-8859-1", cte=b"quoted-printable")
    result = add_disclaimer(raw, text="Vertraulich: für den Empfänger", html=None)
    assert b"charset=iso-8859-1" in result.data and b"f=FCr den Empf=E4nger" in result.data
    assert "Grüße aus Köln\r\n\r\nVertraulich: für den Empfänger" in read(result).text


def test_disclaimer_latin1_part_becomes_utf8_when_it_must() -> None:
    raw = plain(b"Gr\xfc\xdfe aus K\xf6ln\r\n", ctype=b"text/plain; charset=iso-8859-1; format=flowed",
                cte=b"8bit")
    result = add_disclaimer(raw, text="Confidential — 機密", html=None)
    head = result.data.split(b"\r\n\r\n", 1)[0]
    assert b'charset="utf-8"' in head and b"format=flowed" in head and b"iso-8859-1" not in head
    assert b"Content-Transfer-Encoding: 8bit" in head  # 8-bit already: stays 8-bit, now UTF-8
    assert read(result).text == "Grüße aus Köln\r\n\r\nConfidential — 機密\r\n"


def test_disclaimer_non_ascii_into_7bit_ascii_part_goes_quoted_printable() -> None:
    result = add_disclaimer(plain(), text="Diese E-Mail stammt von außerhalb.", html=None)
    head = result.data.split(b"\r\n\r\n", 1)[0]
    assert b"Content-Transfer-Encoding: quoted-printable" in head and b'charset="utf-8"' in head
    assert result.data.isascii()
    assert read(result).text.endswith("Diese E-Mail stammt von außerhalb.\r\n")


def test_disclaimer_html_keeps_its_charset_with_character_references() -> None:
    raw = plain(b"<html><head><meta charset=iso-8859-1></head><body>K\xf6ln</body></html>\r\n",
                ctype=b"text/html; charset=iso-8859-1", cte=b"8bit")
    result = add_disclaimer(raw, text="Vertraulich — 機密", html=None)
    assert result.data.endswith(b"<body>K\xf6ln<p>Vertraulich &#8212; &#27231;&#23494;</p></body></html>\r\n")
    assert read(result).html_text == "Köln\nVertraulich — 機密"
    no_body = raw.replace(b"<body>", b"").replace(b"</body>", b"")
    top = add_disclaimer(no_body, text="T", html="<p>TOP</p>", position="top")
    assert b"</head><p>TOP</p>K\xf6ln</html>" in top.data


def test_disclaimer_without_content_type_and_without_body_tag() -> None:
    raw = HEAD + b"\r\nplain old mail\r\n"
    result = add_disclaimer(raw, text="Außen", html=None)
    parsed = read(result)
    assert parsed.text == "plain old mail\r\n\r\nAußen\r\n"
    assert parsed.header("MIME-Version") == "1.0"
    html = plain(b"<p>no body tag</p>", ctype=b"text/html")
    assert read(add_disclaimer(html, text="x", html="<hr>END")).html == "<p>no body tag</p><hr>END"
    top = read(add_disclaimer(html, text="x", html="<hr>TOP", position="top"))
    assert top.html == "<hr>TOP<p>no body tag</p>"


def test_disclaimer_long_html_line_is_re_encoded_within_998() -> None:
    line = b"<html><body>" + b"a" * 980 + b"</body></html>"
    result = add_disclaimer(plain(line + b"\r\n", ctype=b"text/html; charset=us-ascii"), text="t",
                            html="<p>" + "d" * 100 + "</p>")
    assert short_lines(result.data) and b"quoted-printable" in result.data
    assert read(result).html.endswith("a" * 980 + "<p>" + "d" * 100 + "</p></body></html>\r\n")


SIGNED = multipart(b'signed; protocol="application/pkcs7-signature"; micalg=sha-256', b"sig-1",
                   part(b"text/plain; charset=us-ascii", b"Signed text\r\n"),
                   part(b'application/pkcs7-signature; name="smime.p7s"', b"MIIBsignature==\r\n", cte=b"base64",
                        extra=b'Content-Disposition: attachment; filename="smime.p7s"\r\n'))


def test_disclaimer_skips_signed_mail() -> None:
    result = add_disclaimer(SIGNED, text=DISCLAIMER, html=None)
    assert not result.changed and result.data == SIGNED
    assert result.notes == ["disclaimer skipped: the mail is signed (multipart/signed)"]
    smime = plain(b"MIAGCSqGSIb3DQEHA6CAMIACAQAx\r\n",
                  ctype=b'application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"', cte=b"base64")
    assert "application/pkcs7-mime" in add_disclaimer(smime, text="x", html=None).notes[0]
    pgp = plain(b"-----BEGIN PGP SIGNED MESSAGE-----\r\nHash: SHA256\r\n\r\nhi\r\n-----BEGIN PGP SIGNATURE-----\r\n")
    skipped = add_disclaimer(pgp, text="x", html=None)
    assert not skipped.changed and "inline PGP" in skipped.notes[0]


def test_disclaimer_wraps_signed_mail_leaving_the_signed_entity_intact() -> None:
    result = add_disclaimer(SIGNED, text=DISCLAIMER, html=None, skip_signed=False)
    assert result.changed and "the signed part is untouched" in result.notes[0]
    signed_entity = SIGNED[SIGNED.index(b"Content-Type: multipart/signed"):]
    assert signed_entity in result.data
    parsed = read(result)
    assert parsed.message is not None and parsed.message.get_content_type() == "multipart/mixed"
    inner = parsed.message.get_payload()[0]  # type: ignore[index]
    assert inner.get_content_type() == "multipart/signed"
    assert DISCLAIMER in parsed.text and "Signed text" in parsed.text
    assert parsed.header("Subject") == "Quarterly report"
    assert parsed.header_all("Content-Type") == [parsed.message.get("Content-Type")]
    top = read(add_disclaimer(SIGNED, text=DISCLAIMER, html=None, position="top", skip_signed=False))
    assert top.text.index(DISCLAIMER) < top.text.index("Signed text")


def test_disclaimer_broken_mime_never_raises() -> None:
    unterminated = multipart(b"mixed", b"open", part(b"text/plain", b"the body\r\n"), PDF_PART, close=False)
    result = add_disclaimer(unterminated, text=DISCLAIMER, html=None)
    assert DISCLAIMER in read(result).text and PDF_PART in result.data
    no_boundary = HEAD + b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\ntext\r\n--x--\r\n"
    for raw in (no_boundary, b"", b"\r\n", b"garbage without headers", b"Subject: only a header",
                plain(b"=?!\xff\xfe", ctype=b"text/plain; charset=no-such-charset"),
                plain(b"!!!not base64!!!", cte=b"base64"), plain(b"x", cte=b"x-uuencode")):
        out = add_disclaimer(raw, text=DISCLAIMER, html=None)
        assert isinstance(out, EditResult) and out.notes
        parse_mail(out.data)
    bad_charset = add_disclaimer(plain(b"x\r\n", ctype=b"text/plain; charset=no-such-charset"), text="d", html=None)
    assert not bad_charset.changed and "cannot be read" in bad_charset.notes[0]
    bad_position = add_disclaimer(plain(), text="d", html=None, position="middle")
    assert not bad_position.changed and "position" in bad_position.notes[0]
    empty = add_disclaimer(plain(), text=" \r\n", html=None)
    assert not empty.changed and "empty" in empty.notes[0]
    only_attachment = plain(b"x\r\n", ctype=b'text/plain; name="a.txt"')
    assert "no text body" in add_disclaimer(only_attachment, text="d", html=None).notes[0]


def test_disclaimer_on_bare_lf_mail_gives_crlf_and_unchanged_keeps_the_input() -> None:
    raw = b"From: a@x.example\nSubject: hi\nContent-Type: text/plain\n\nline one\nline two\n"
    result = add_disclaimer(raw, text="disc", html=None)
    assert crlf_only(result.data) and result.notes[0] == "line ends made CRLF"
    assert read(result).text == "line one\r\nline two\r\n\r\ndisc\r\n"
    skipped = add_disclaimer(raw.replace(b"text/plain", b'text/plain; name="a.txt"'), text="d", html=None)
    assert not skipped.changed and skipped.data == raw.replace(b"text/plain", b'text/plain; name="a.txt"')


def test_disclaimer_parsed_back_by_the_ingress_parser() -> None:
    result = add_disclaimer(mixed_with_attachments(), text="Extern — bitte prüfen", html="<p>Extern &mdash;</p>")
    parsed = read(result)
    assert "Extern — bitte prüfen" in parsed.text
    assert "<p>Extern &mdash;</p>" in parsed.html and "Extern —" in parsed.html_text
    assert crlf_only(result.data) and short_lines(result.data)


# --- attachment removal -----------------------------------------------------------------------------------------------

def test_remove_all_attachments_returns_their_bytes() -> None:
    raw = mixed_with_attachments()
    result = remove_attachments(raw, None, "The attachment {filename} was removed.")
    assert result.changed
    assert [(n, t) for n, t, _ in result.removed] == [
        ("report.pdf", "application/pdf"), ("invoice.docm", "application/vnd.ms-word.document.macroenabled.12")]
    assert result.removed[0][2] == PDF and result.removed[1][2] == b"PK\x03\x04macro"
    parsed = read(result)
    assert parsed.attachments == []
    assert "The attachment report.pdf was removed." in parsed.text
    assert "The attachment invoice.docm was removed." in parsed.text
    assert parsed.html == "<html><body><p>Hello Bob</p></body></html>\r\n"
    assert raw.split(b"--mix-1\r\n")[1] in result.data  # the body alternative, byte for byte


def test_remove_attachments_by_filename_regex_and_by_type() -> None:
    raw = mixed_with_attachments()
    macro = re.compile(r"(?i)\.(docm|xlsm)$")
    result = remove_attachments(raw, lambda name, ctype: bool(macro.search(name)), "Removed: {filename}")
    assert [r[0] for r in result.removed] == ["invoice.docm"]
    assert PDF_PART in result.data and "Removed: invoice.docm" in read(result).text
    by_type = remove_attachments(raw, lambda name, ctype: ctype == "application/pdf", "no pdf")
    assert [r[0] for r in by_type.removed] == ["report.pdf"] and b"invoice.docm" in by_type.data
    none = remove_attachments(raw, lambda name, ctype: False, "x")
    assert not none.changed and none.data == raw and none.removed == []


def test_remove_attachment_without_a_name_by_content_type() -> None:
    """Attack: an executable part without a file name or disposition, to slip past a filename-based rule."""
    exe = part(b"application/x-msdownload", base64.encodebytes(b"MZ\x90\x00").replace(b"\n", b"\r\n"),
               cte=b"base64")
    raw = multipart(b"mixed", b"m", part(b"text/plain", b"body\r\n"), exe)
    result = remove_attachments(raw, lambda name, ctype: ctype == "application/x-msdownload", "gone {filename}")
    assert result.removed == [("", "application/x-msdownload", b"MZ\x90\x00")]
    assert "gone unnamed application/x-msdownload" in read(result).text


def test_remove_attached_message_as_one_attachment_or_inside_it() -> None:
    inner = multipart(b"mixed", b"inner", part(b"text/plain", b"forwarded\r\n"), PDF_PART)
    forwarded = part(b"message/rfc822", inner, extra=b'Content-Disposition: attachment; filename="fwd.eml"\r\n')
    raw = multipart(b"mixed", b"outer", part(b"text/plain", b"see attached\r\n"), forwarded.rstrip(b"\r\n"))
    whole = remove_attachments(raw, None, "Removed {filename}")
    assert [(n, t) for n, t, _ in whole.removed] == [("fwd.eml", "message/rfc822")]
    assert whole.removed[0][2].startswith(HEAD) and b"forwarded" not in whole.data
    assert "Removed fwd.eml" in read(whole).text
    inside = remove_attachments(raw, lambda name, ctype: name.endswith(".pdf"), "Removed {filename}")
    assert [(n, d) for n, _, d in inside.removed] == [("report.pdf", PDF)]
    parsed = read(inside)
    assert "forwarded" in parsed.text and "Removed report.pdf" in parsed.text and parsed.attachments == []


def test_remove_attachments_keeps_the_signature_part() -> None:
    signed = multipart(b'signed; protocol="application/pkcs7-signature"', b"s",
                       multipart(b"mixed", b"in", part(b"text/plain", b"hi\r\n"), PDF_PART, head=b"")
                       .rstrip(b"\r\n"),
                       part(b'application/pkcs7-signature; name="smime.p7s"', b"MIIB\r\n", cte=b"base64",
                            extra=b'Content-Disposition: attachment; filename="smime.p7s"\r\n'))
    result = remove_attachments(signed, None, "removed")
    assert [r[0] for r in result.removed] == ["report.pdf"] and b"smime.p7s" in result.data
    assert "the mail's signature no longer verifies" in result.notes


def test_remove_attachments_filename_cannot_inject_lines() -> None:
    """Attack: an RFC 2231 file name carrying CR/LF, to forge lines in the replacement text."""
    evil = part(b"application/octet-stream", b"AAAA\r\n", cte=b"base64",
                extra=b"Content-Disposition: attachment; filename*=utf-8''a%0D%0AContent-Type%3A%20x.exe\r\n")
    raw = multipart(b"mixed", b"m", part(b"text/plain", b"body\r\n"), evil)
    result = remove_attachments(raw, None, "Removed {filename}")
    assert result.removed[0][0] == "a Content-Type: x.exe"
    assert "Removed a Content-Type: x.exe" in read(result).text


def test_remove_attachments_non_ascii_replacement_and_broken_mime() -> None:
    raw = mixed_with_attachments()
    result = remove_attachments(raw, None, "Anhang „{filename}“ entfernt")
    assert result.data.isascii() and "Anhang „report.pdf“ entfernt" in read(result).text
    unterminated = multipart(b"mixed", b"open", part(b"text/plain", b"the body\r\n"), PDF_PART, close=False)
    cut = remove_attachments(unterminated, None, "gone")
    assert cut.removed and read(cut).attachments == []
    for broken in (b"", b"junk", plain(), HEAD + b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\ntext\r\n"):
        out = remove_attachments(broken, None, "gone")
        assert not out.changed and out.data == broken and out.notes and out.removed == []


def test_remove_attachments_from_a_mail_that_is_one_attachment() -> None:
    """Attack: a mail that is nothing but the attachment (no multipart around it), alone or as an attached message."""
    single = HEAD + b'Content-Type: application/pdf; name="a.pdf"\r\nContent-Transfer-Encoding: base64\r\n' \
        b'Content-Disposition: attachment; filename="a.pdf"\r\n\r\n' + PDF_B64
    result = remove_attachments(single, None, "gone {filename}")
    assert result.removed == [("a.pdf", "application/pdf", PDF)]
    parsed = read(result)
    assert parsed.text == "gone a.pdf\r\n" and parsed.attachments == []
    assert parsed.header("Subject") == "Quarterly report" and parsed.header("MIME-Version") == "1.0"
    assert result.data.startswith(HEAD)
    forwarded = multipart(b"mixed", b"o", part(b"text/plain", b"see\r\n"), part(b"message/rfc822", single))
    inside = remove_attachments(forwarded, lambda name, ctype: name.endswith(".pdf"), "gone {filename}")
    assert [r[0] for r in inside.removed] == ["a.pdf"]
    parsed = read(inside)
    assert parsed.attachments == [] and "gone a.pdf" in parsed.text and b"Content-Type: message/rfc822" in inside.data


def test_remove_attachments_leaves_encrypted_mail_whole() -> None:
    smime = plain(b"MIAGCSqGSIb3DQEHA6CAMIACAQAx\r\n", cte=b"base64",
                  ctype=b'application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"')
    smime = smime.replace(b"MIME-Version", b'Content-Disposition: attachment; filename="smime.p7m"\r\nMIME-Version')
    pgp = multipart(b'encrypted; protocol="application/pgp-encrypted"', b"e",
                    part(b"application/pgp-encrypted", b"Version: 1\r\n"),
                    part(b'application/octet-stream; name="encrypted.asc"', b"-----BEGIN PGP MESSAGE-----\r\n",
                         extra=b'Content-Disposition: inline; filename="encrypted.asc"\r\n'))
    for raw in (smime, pgp):
        result = remove_attachments(raw, None, "gone")
        assert not result.changed and result.data == raw and result.removed == []


@pytest.mark.parametrize("make", [plain, alternative, mixed_with_attachments, lambda: SIGNED])
def test_header_edits_leave_every_body_byte(make) -> None:  # noqa: ANN001 - a mail factory
    raw = make()
    body = raw.split(b"\r\n\r\n", 1)[1]
    for result in (add_header(raw, "X-A", "1"), set_header(raw, "Subject", "new"), remove_header(raw, "Message-ID"),
                   tag_subject(raw, "[EXTERNAL]")):
        assert result.changed and result.data.split(b"\r\n\r\n", 1)[1] == body
        assert [(a.filename, a.data) for a in read(result).attachments] == \
            [(a.filename, a.data) for a in parse_mail(raw).attachments]


def test_set_header_encodes_addresses_around_their_angle_brackets() -> None:
    result = set_header(plain(), "Reply-To", "Jörg Müller <joerg@acme.test>")
    head = result.data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii() and b"<joerg@acme.test>" in head
    assert read(result).header("Reply-To") == "Jörg Müller <joerg@acme.test>"


def test_disclaimer_skips_encrypted_mail_and_replacement_without_placeholder() -> None:
    pgp = multipart(b'encrypted; protocol="application/pgp-encrypted"', b"e",
                    part(b"application/pgp-encrypted", b"Version: 1\r\n"),
                    part(b"application/octet-stream", b"-----BEGIN PGP MESSAGE-----\r\n"))
    result = add_disclaimer(pgp, text="d", html=None)
    assert not result.changed and result.notes == ["disclaimer skipped: the mail is encrypted (multipart/encrypted)"]
    long_text = "Removed by policy. " * 80
    removed = remove_attachments(mixed_with_attachments(), None, long_text)
    assert short_lines(removed.data) and read(removed).text.count(long_text) == 2


def test_mangled_mail_never_raises_and_edits_keep_attachments() -> None:
    """Broken MIME of every kind (cut boundaries, stray delimiters, garbled fields, bare LF and CR): no edit raises,
    and an applied disclaimer never changes what any attachment decodes to."""
    rng = random.Random(13)
    seeds = [plain(), alternative(), mixed_with_attachments(), SIGNED,
             multipart(b"mixed", b"open", part(b"text/plain", b"the body\r\n"), PDF_PART, close=False)]
    junk = [b"\r\n", b"\n", b"\r", b"--", b"--mix-1", b"--alt-1--", b"\xff\xe9", b"=?", b";", b'"', b"\r\n\r\n",
            b"Content-Type: multipart/mixed; boundary=x\r\n", b"--sig-1\r\n"]
    for _ in range(120):
        raw = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(raw) + 1)
            if rng.random() < 0.4:
                del raw[at:at + rng.randint(1, 40)]
            else:
                raw[at:at] = rng.choice(junk)
        mail = bytes(raw)
        before = [(a.filename, a.data) for a in parse_mail(mail).attachments]
        result = add_disclaimer(mail, text="Dïsc", html=None, skip_signed=rng.random() < 0.5)
        if result.changed:
            assert [(a.filename, a.data) for a in read(result).attachments] == before
        for other in (remove_attachments(mail, None, "gone {filename}"), tag_subject(mail, "[EXT]"),
                      set_header(mail, "X-A", "b"), remove_header(mail, "Subject")):
            assert isinstance(other, EditResult) and other.notes
            parse_mail(other.data)
