"""The ClamAV check against a real clamd (tests/support/clamd.py): EICAR in every wrapping a mail can give it, and the
tempfail paths (clamd down, hanging, over its size limit) that let the policy answer 451 instead of skipping."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import zipfile
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from smtp.checks.base import CheckContext, Stage
from smtp.checks.virus import ClamdAddress, ClamdClient, ClamdError, VirusCheck, parse_reply
from smtp.mime import parse_mail
from smtp.pipeline import run_stage
from tenants.platform.config import Config
from tenants.symbols import lookup
from tests.support.clamd import EICAR, STREAM_MAX_LENGTH, ClamdServer
from tests.support.servers import free_port

# clamd_server and clamd_hash_only come from tests/fixtures/av.py, loaded by conftest's pytest_plugins.

#: What clamd calls the MD5 signature of tests/support/clamd.py.
HASH_HIT = "Eicar-Test-Signature.UNOFFICIAL"


def make_mail(body: str = "Hello, see attached.\n",
              attachments: tuple[tuple[str, bytes, str], ...] = ()) -> bytes:
    msg = EmailMessage()
    msg["From"] = "alice@sender.example"
    msg["To"] = "bob@acme.test"
    msg["Subject"] = "Documents"
    msg.set_content(body)
    for filename, data, ctype in attachments:
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def zipped(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
    return buf.getvalue()


def context(clamd: str | None, raw: bytes) -> CheckContext:
    return CheckContext(cfg=Config(clamd=clamd), client_ip="192.0.2.7", helo="mx.sender.example",
                        mail_from="alice@sender.example", rcpts=["bob@acme.test"], mail=parse_mail(raw))


def scan(clamd: str | None, raw: bytes, check: VirusCheck | None = None) -> CheckContext:
    ctx = context(clamd, raw)
    asyncio.run((check or VirusCheck(ctx.cfg)).run(ctx))
    return ctx


def symbols(ctx: CheckContext) -> dict[str, str]:
    return {f.symbol: f.reason for f in ctx.findings}


# --- detection --------------------------------------------------------------------------------------------------

def test_eicar_in_the_plain_text_body_is_a_virus(clamd_server: ClamdServer) -> None:
    """The body part carries a line end after the EICAR string: the body signature (ndb) finds it there."""
    ctx = scan(clamd_server.address, make_mail(body=EICAR.decode() + "\n"))
    found = symbols(ctx)
    assert set(found) == {"CLAM_VIRUS"}
    assert found["CLAM_VIRUS"].startswith("Eicar-Test")


def test_eicar_as_base64_attachment_is_found_by_hash(clamd_hash_only: ClamdServer) -> None:
    """clamd decodes the base64 part of the raw mail itself: the whole-file MD5 signature matches."""
    raw = make_mail(attachments=(("eicar.com", EICAR, "application/octet-stream"),))
    assert EICAR not in raw  # only the base64 form is in the mail
    assert symbols(scan(clamd_hash_only.address, raw)) == {"CLAM_VIRUS": HASH_HIT}


def test_eicar_inside_a_zip_attachment(clamd_hash_only: ClamdServer) -> None:
    raw = make_mail(attachments=(("invoice.zip", zipped("eicar.com", EICAR), "application/zip"),))
    assert symbols(scan(clamd_hash_only.address, raw)) == {"CLAM_VIRUS": HASH_HIT}


def test_eicar_inside_a_zip_inside_a_zip(clamd_hash_only: ClamdServer) -> None:
    inner = zipped("eicar.com", EICAR)
    raw = make_mail(attachments=(("docs.zip", zipped("inner.zip", inner), "application/zip"),))
    assert symbols(scan(clamd_hash_only.address, raw)) == {"CLAM_VIRUS": HASH_HIT}


@pytest.mark.parametrize(("filename", "ctype"), [("eicar.txt", "text/plain"), ("holiday.jpg", "image/jpeg"),
                                                  ("report.pdf", "application/pdf")])
def test_eicar_under_a_harmless_name_is_still_found(clamd_hash_only: ClamdServer, filename: str, ctype: str) -> None:
    """A renamed extension or a false Content-Type does not hide the content from clamd."""
    raw = make_mail(attachments=((filename, EICAR, ctype),))
    assert symbols(scan(clamd_hash_only.address, raw)) == {"CLAM_VIRUS": HASH_HIT}


def test_eicar_is_found_through_the_unix_socket(clamd_server: ClamdServer) -> None:
    raw = make_mail(attachments=(("eicar.com", EICAR, "application/octet-stream"),))
    ctx = scan(str(clamd_server.socket_path), raw)
    assert set(symbols(ctx)) == {"CLAM_VIRUS"}


def test_clean_mail_has_no_finding(clamd_server: ClamdServer) -> None:
    raw = make_mail(attachments=(("notes.txt", b"Meeting at ten.\n", "text/plain"),
                                 ("archive.zip", zipped("a.txt", b"just text\n"), "application/zip")))
    assert scan(clamd_server.address, raw).findings == []


def test_the_check_runs_in_the_pipeline(clamd_server: ClamdServer) -> None:
    ctx = context(clamd_server.address, make_mail(body=EICAR.decode() + "\n"))
    asyncio.run(run_stage([VirusCheck(ctx.cfg)], ctx, Stage.DATA))
    assert ctx.has("CLAM_VIRUS")


# --- clamd cannot answer: CLAM_TEMPFAIL, the policy decides (451 or accept) ----------------------------------------

def test_clamd_down_is_a_tempfail() -> None:
    ctx = scan(f"127.0.0.1:{free_port()}", make_mail())
    found = symbols(ctx)
    assert set(found) == {"CLAM_TEMPFAIL"}
    assert "unreachable" in found["CLAM_TEMPFAIL"]


def test_missing_unix_socket_is_a_tempfail(tmp_path: Path) -> None:
    ctx = scan(str(tmp_path / "nothing.sock"), make_mail())
    assert set(symbols(ctx)) == {"CLAM_TEMPFAIL"}


def test_mail_over_clamd_stream_limit_is_a_tempfail(clamd_server: ClamdServer) -> None:
    """clamd answers ``INSTREAM size limit exceeded. ERROR``: the mail was not scanned, so it is not clean."""
    big = b"A" * (STREAM_MAX_LENGTH + 1024 * 1024)
    ctx = scan(clamd_server.address, make_mail(attachments=(("big.bin", big, "application/octet-stream"),)))
    found = symbols(ctx)
    assert set(found) == {"CLAM_TEMPFAIL"}
    # Almost always clamd's own answer; when its reset overtakes the answer, the client says what it saw.
    assert "size limit exceeded" in found["CLAM_TEMPFAIL"] or "StreamMaxLength" in found["CLAM_TEMPFAIL"]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts and never answers, like a clamd stuck on a huge scan."""
    srv = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join()
    for c in conns:
        c.close()
    srv.close()


def test_clamd_that_never_answers_is_a_tempfail(silent_server: int) -> None:
    address = f"127.0.0.1:{silent_server}"
    check = VirusCheck(Config(clamd=address))
    check.client = ClamdClient(address, timeout=0.5)
    found = symbols(scan(address, make_mail(), check))
    assert set(found) == {"CLAM_TEMPFAIL"}
    assert "no answer within" in found["CLAM_TEMPFAIL"]


def test_tempfail_symbol_carries_the_tempfail_effect() -> None:
    check = VirusCheck(Config(clamd="127.0.0.1:3310"))
    assert check.required and check.tempfail_symbol == "CLAM_TEMPFAIL"
    assert lookup("CLAM_TEMPFAIL").effect == "tempfail" and lookup("CLAM_TEMPFAIL").score == 0
    assert lookup("CLAM_VIRUS").effect == "virus" and lookup("CLAM_VIRUS").score == 100


def test_scanning_is_off_without_a_clamd_address() -> None:
    assert not VirusCheck(Config(clamd=None)).enabled
    assert VirusCheck(Config(clamd="/run/clamav/clamd.ctl")).enabled


# --- protocol pieces --------------------------------------------------------------------------------------------

def test_ping(clamd_server: ClamdServer) -> None:
    assert asyncio.run(ClamdClient(clamd_server.address).ping())
    assert not asyncio.run(ClamdClient(f"127.0.0.1:{free_port()}").ping())


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1:3311", ClamdAddress(host="127.0.0.1", port=3311)),
    ("clamav", ClamdAddress(host="clamav", port=3310)),
    ("[::1]:3310", ClamdAddress(host="::1", port=3310)),
    ("/run/clamav/clamd.ctl", ClamdAddress(path="/run/clamav/clamd.ctl")),
    ("unix:clamd.sock", ClamdAddress(path="clamd.sock")),
])
def test_address_forms(value: str, expected: ClamdAddress) -> None:
    assert ClamdAddress.parse(value) == expected


@pytest.mark.parametrize(("reply", "expected"), [
    (b"stream: OK\0", None),
    (b"stream: Win.Test.EICAR_HDB-1 FOUND\0", "Win.Test.EICAR_HDB-1"),
    (b"stream: Eicar-Test-Signature.UNOFFICIAL FOUND\n", "Eicar-Test-Signature.UNOFFICIAL"),
])
def test_replies(reply: bytes, expected: str | None) -> None:
    assert parse_reply(reply) == expected


@pytest.mark.parametrize("reply", [b"INSTREAM size limit exceeded. ERROR\0", b"stream: Can't allocate memory ERROR\0",
                                   b"", b"UNKNOWN COMMAND\0"])
def test_error_replies_raise(reply: bytes) -> None:
    with pytest.raises(ClamdError):
        parse_reply(reply)


def test_bad_address_fails_at_start() -> None:
    from tenants.exceptions import ConfigError

    with pytest.raises(ConfigError, match="MAILWARD_CLAMD"):
        VirusCheck(Config(clamd="clamav:notaport"))
