"""Attachments: the real type by content (libmagic), archives opened recursively within limits, Office macros
(oletools), dangerous types, double extensions, and names that lie about the content.

Everything here is CPU work on untrusted bytes, so it runs in a worker thread (:func:`inspect_attachments`) and
never raises: a broken archive or document is a finding (``ARCHIVE_CORRUPT``), not an error. Unpacking is bounded
per mail by depth, member count, unpacked bytes and time; going over a bound is itself a finding (``ARCHIVE_LIMIT``).
The member count is checked before an archive's directory is read: a zip's entries are counted from its end records
(:func:`zip_directory`), so a zip of a million empty entries is never listed; a tar is read one entry at a time.
"""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import logging
import lzma
import re
import struct
import tarfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

import magic

from smtp.checks.base import Check, CheckContext, Stage
from smtp.mime import Attachment

with warnings.catch_warnings():  # oletools still calls pyparsing's old camelCase names at import
    warnings.simplefilter("ignore", DeprecationWarning)
    from oletools.olevba import VBA_Parser

log = logging.getLogger(__name__)

# --- limits -------------------------------------------------------------------------------------------------------

#: Deepest nesting of containers opened (each archive or compression layer is one level); deeper gets ARCHIVE_LIMIT.
MAX_ARCHIVE_DEPTH = 5
#: Most files looked at inside archives and Office documents, per mail; the rest is skipped with ARCHIVE_LIMIT.
MAX_ARCHIVE_MEMBERS = 2000
#: Most entries (files, directories, links) read from one archive's directory; an archive with more is read only that
#: far (ARCHIVE_LIMIT). Listing costs about 14 µs and 550 bytes an entry: a zip of 700,000 empty entries (a 30 MB
#: mail) would cost 9.5 s and 390 MB to list in full.
MAX_ARCHIVE_ENTRIES = 2 * MAX_ARCHIVE_MEMBERS
#: Most bytes unpacked per mail, counted by the sizes archives declare before anything is read (zip bombs).
MAX_UNPACKED_BYTES = 100 * 1024 * 1024
#: Seconds of inspection per mail; the worker thread cannot be cancelled, so it stops itself (ARCHIVE_LIMIT).
MAX_INSPECT_SECONDS = 20.0
#: Most archive members listed per mail for the mail rules (the inspection itself is bounded apart).
MAX_LISTED_MEMBERS = 500
#: Bytes given to libmagic to find a type (ISO 9660 is recognised at 32 KiB; libmagic reads no more than 1 MiB).
SNIFF_BYTES = 1024 * 1024
#: Bytes read from each part of an Office document to see whether it is an OLE file, a zip or an executable.
PART_HEAD_BYTES = 8
#: Most bytes of an HTML attachment searched for smuggling code.
MAX_HTML_SCAN = 4 * 1024 * 1024
#: Reasons kept per symbol in the finding; the rest are counted.
MAX_REASONS = 5

# --- what is dangerous --------------------------------------------------------------------------------------------

#: Extensions Windows runs or mounts on a double-click (Outlook's level-1 list, the usual malware carriers).
DANGEROUS_EXTENSIONS = frozenset({
    "exe", "dll", "scr", "com", "pif", "cpl", "bat", "cmd", "js", "jse", "vbs", "vbe", "wsf", "wsh", "hta",
    "ps1", "psm1", "lnk", "iso", "img", "vhd", "vhdx", "msi", "msp", "jar", "reg", "scf", "appx", "msix",
    "application", "gadget", "msc",
})
#: Extensions a lure puts before the real one (``invoice.pdf.exe``).
DECOY_EXTENSIONS = frozenset({
    "pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "rtf", "txt", "csv", "jpg", "jpeg", "png", "gif", "bmp",
    "tif", "tiff", "zip", "rar", "7z", "htm", "html", "xml", "odt", "mp3", "mp4", "wav", "avi", "mov",
})
#: Real types (libmagic) that are programs, shortcuts or disk images whatever the name says, with a label.
DANGEROUS_TYPES = {
    "application/vnd.microsoft.portable-executable": "Windows executable",
    "application/x-dosexec": "DOS/Windows executable",
    "application/x-msdownload": "Windows executable",
    "application/x-ms-shortcut": "Windows shortcut",
    "application/x-iso9660-image": "ISO disk image",
    "application/x-msi": "Windows installer",
    "application/x-ms-installer": "Windows installer",
    "application/java-archive": "Java archive",
    "application/x-java-archive": "Java archive",
}
#: Unicode controls that reverse how a name is shown, hiding the real extension (``invoice\u202efdp.exe``).
BIDI_CONTROLS = frozenset("\u202a\u202b\u202d\u202e\u2066\u2067\u2068")

# --- types and families -------------------------------------------------------------------------------------------

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
ZIP_MAGIC = b"PK\x03\x04"
OLE_TYPES = frozenset({
    "application/x-ole-storage", "application/cdfv2", "application/msword", "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint", "application/vnd.ms-office", "application/vnd.ms-outlook",
    "application/x-msi", "application/x-ms-installer",
})
ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed", "application/x-zip"})
#: Single-stream compressors: real type → (opener, suffixes stripped from the name to name what is inside).
COMPRESSED_TYPES: dict[str, tuple[Callable[[IO[bytes]], io.BufferedIOBase], dict[str, str]]] = {
    "application/gzip": (lambda f: gzip.GzipFile(fileobj=f), {".tgz": ".tar", ".gz": ""}),
    "application/x-gzip": (lambda f: gzip.GzipFile(fileobj=f), {".tgz": ".tar", ".gz": ""}),
    "application/x-bzip2": (lambda f: bz2.BZ2File(f), {".tbz2": ".tar", ".tbz": ".tar", ".bz2": ""}),
    "application/x-xz": (lambda f: lzma.LZMAFile(f), {".txz": ".tar", ".xz": ""}),
}
TAR_TYPES = frozenset({"application/x-tar", "application/x-gtar", "application/x-ustar"})
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", "image/svg+xml"})
HTML_EXTENSIONS = frozenset({"htm", "html", "xhtml", "shtml", "svg"})
#: Zip members that make a zip an Office (OOXML) or OpenDocument file rather than an archive.
DOCUMENT_MARKERS = ("[Content_Types].xml", "META-INF/manifest.xml")
#: Parts of an OOXML workbook that hold Excel 4 (XLM) macro sheets.
XLM_PART_PREFIX = "xl/macrosheets/"

#: Extension → the family of content it promises.
EXTENSION_FAMILY = {
    **dict.fromkeys(("pdf",), "pdf"),
    **dict.fromkeys(("jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp", "ico", "heic"), "image"),
    **dict.fromkeys(("svg",), "svg"),
    **dict.fromkeys(("doc", "dot", "xls", "xlt", "ppt", "pps", "pot", "msg"), "ole"),
    **dict.fromkeys(("docx", "docm", "dotx", "dotm", "xlsx", "xlsm", "xltx", "xltm", "xlsb", "pptx", "pptm",
                     "ppsx", "ppsm", "potx"), "ooxml"),
    **dict.fromkeys(("zip",), "zip"),
    **dict.fromkeys(("gz", "tgz"), "gzip"),
    **dict.fromkeys(("bz2", "tbz2"), "bzip2"),
    **dict.fromkeys(("xz", "txz"), "xz"),
    **dict.fromkeys(("tar",), "tar"),
    **dict.fromkeys(("rtf",), "rtf"),
    **dict.fromkeys(("txt", "csv", "log"), "text"),
    **dict.fromkeys(("htm", "html", "xhtml"), "html"),
    **dict.fromkeys(("xml",), "xml"),
    **dict.fromkeys(("exe", "dll", "scr", "sys", "cpl", "ocx"), "pe"),
    **dict.fromkeys(("mp3", "wav", "m4a", "ogg", "mp4", "mov", "avi", "mkv"), "media"),
}
#: Declared family → real families that are no lie (Office opens RTF, HTML and text saved as .doc/.xls, and so on).
COMPATIBLE_FAMILIES = {
    "pdf": {"pdf"},
    "image": {"image"},
    "svg": {"svg", "xml", "html", "text"},
    "ole": {"ole", "ooxml", "zip", "rtf", "html", "xml", "text"},
    "ooxml": {"ooxml", "zip", "ole"},  # an encrypted OOXML file is an OLE container
    "zip": {"zip", "ooxml"},
    "gzip": {"gzip"},
    "bzip2": {"bzip2"},
    "xz": {"xz"},
    "tar": {"tar"},
    "rtf": {"rtf", "text"},
    "text": {"text", "html", "xml", "svg"},
    "html": {"html", "text", "xml"},
    "xml": {"xml", "text", "html", "svg"},
    "pe": {"pe"},
    "media": {"media"},
}
#: Families a declared Content-Type is compared on; other declared types are too often wrong to mean anything.
DECLARED_TYPE_FAMILIES = frozenset({"pdf", "image", "ole", "ooxml", "zip", "pe"})
PE_TYPES = frozenset({"application/vnd.microsoft.portable-executable", "application/x-dosexec",
                      "application/x-msdownload"})

# --- HTML smuggling -----------------------------------------------------------------------------------------------

_SCRIPT_RE = re.compile(rb"<script", re.IGNORECASE)
#: Builds a file in the browser: a Blob, base64 decoding, or a base64 data: URI.
_SMUGGLE_BUILD_RE = re.compile(rb"new\s+Blob\s*\(|\batob\s*\(|data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)
#: Hands it to the user as a download.
_SMUGGLE_DELIVER_RE = re.compile(
    rb"msSaveOrOpenBlob|msSaveBlob|createObjectURL|\bdownload\s*=|[\"']download[\"']|\blocation(?:\.href)?\s*=",
    re.IGNORECASE)


#: Control and bidi characters in names from archives are shown as "?" in reasons (they end up in logs and headers).
_UNPRINTABLE = {c: "?" for c in [*range(0x20), 0x7F, *map(ord, BIDI_CONTROLS)]}


@dataclass
class Inspection:
    """What :func:`inspect_attachments` found: reasons by symbol, and (name, real type, size) per attachment."""

    findings: dict[str, list[str]] = field(default_factory=dict)
    listing: list[tuple[str, str, int]] = field(default_factory=list)
    #: (name, real type) of the files inside archives, up to :data:`MAX_LISTED_MEMBERS`.
    members: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Walk:
    """One mail's inspection: findings so far and what is left of the budget."""

    findings: dict[str, list[str]]
    deadline: float
    members: int = 0
    unpacked: int = 0
    #: Set when a per-mail bound was hit: nothing more is unpacked.
    stopped: bool = False
    #: (name, real type) of the files found inside archives (mail rules' archive_member condition reads them).
    found: list[tuple[str, str]] = field(default_factory=list)

    def add(self, symbol: str, reason: str) -> None:
        reason = reason.translate(_UNPRINTABLE)
        reasons = self.findings.setdefault(symbol, [])
        if reason not in reasons:
            reasons.append(reason)

    def limit(self, reason: str) -> None:
        self.add("ARCHIVE_LIMIT", reason)
        self.stopped = True

    def take_member(self, path: str) -> bool:
        """Count one more member; False (and ARCHIVE_LIMIT) when the count or the time is used up."""
        if self.stopped:
            return False
        if time.monotonic() > self.deadline:
            self.limit(f"{path}: inspection stopped after {MAX_INSPECT_SECONDS:g}s")
            return False
        self.members += 1
        if self.members > MAX_ARCHIVE_MEMBERS:
            self.limit(f"{path}: more than {MAX_ARCHIVE_MEMBERS} files in archives")
            return False
        return True

    def take_bytes(self, path: str, size: int) -> bool:
        """Reserve ``size`` unpacked bytes; False (and ARCHIVE_LIMIT) when that goes over the budget."""
        if self.unpacked + size > MAX_UNPACKED_BYTES:
            self.limit(f"{path}: unpacks to more than {MAX_UNPACKED_BYTES // (1024 * 1024)} MiB")
            return False
        self.unpacked += size
        return True

    @property
    def remaining(self) -> int:
        return MAX_UNPACKED_BYTES - self.unpacked


# --- names --------------------------------------------------------------------------------------------------------

def _basename(name: str) -> str:
    return re.split(r"[/\\]", name)[-1]


def _clean(name: str) -> str:
    """The name as Windows would treat it: no trailing dots or spaces, no NULs."""
    return name.replace("\0", "").rstrip(" .")


def extension(name: str) -> str:
    base = _clean(_basename(name))
    return base.rpartition(".")[2].strip().lower() if "." in base else ""


def _check_name(walk: _Walk, path: str, name: str) -> None:
    base = _clean(_basename(name))
    ext = extension(name)
    if ext in DANGEROUS_EXTENSIONS:
        walk.add("ATTACH_DANGEROUS", f"{path}: .{ext} file")
    if any(c in BIDI_CONTROLS for c in base):
        walk.add("ATTACH_DOUBLE_EXT", f"{path}: the name hides its extension with right-to-left characters")
    parts = base.split(".")
    if len(parts) >= 3 and ext in DANGEROUS_EXTENSIONS and parts[-2].strip().lower() in DECOY_EXTENSIONS:
        walk.add("ATTACH_DOUBLE_EXT", f"{path}: .{parts[-2].strip().lower()} in front of .{ext}")


# --- types --------------------------------------------------------------------------------------------------------

def sniff(data: bytes) -> str:
    """The real MIME type of ``data`` by content (libmagic); ``application/octet-stream`` when it cannot tell."""
    try:
        return str(magic.from_buffer(data[:SNIFF_BYTES], mime=True)).lower()
    except Exception:  # libmagic errors on odd input: unknown type
        return "application/octet-stream"


# Complexity (C901) by design: a table of MIME families, one branch per family.
def family(mime: str) -> str | None:  # noqa: C901
    """The family of a MIME type for the name-versus-content comparison; None when it says nothing."""
    mime = mime.lower().split(";")[0].strip()
    if mime in PE_TYPES:
        return "pe"
    if mime == "image/svg+xml":
        return "svg"
    if mime.startswith("image/"):
        return "image"
    if mime == "application/pdf":
        return "pdf"
    if mime in OLE_TYPES:
        return "ole"
    if mime.startswith("application/vnd.openxmlformats-officedocument.") or ".macroenabled" in mime:
        return "ooxml"
    if mime in ZIP_TYPES:
        return "zip"
    if mime in ("application/gzip", "application/x-gzip"):
        return "gzip"
    if mime == "application/x-bzip2":
        return "bzip2"
    if mime == "application/x-xz":
        return "xz"
    if mime in TAR_TYPES:
        return "tar"
    if mime in ("text/rtf", "application/rtf"):
        return "rtf"
    if mime in ("text/html", "application/xhtml+xml"):
        return "html"
    if mime in ("text/xml", "application/xml"):
        return "xml"
    if mime.startswith("text/"):
        return "text"
    if mime.startswith(("audio/", "video/")):
        return "media"
    return None


def _check_mismatch(walk: _Walk, path: str, name: str, declared_type: str, real: str) -> None:
    real_family = family(real)
    if real_family is None:
        return
    ext = extension(name)
    claimed = EXTENSION_FAMILY.get(ext)
    if claimed is not None and real_family not in COMPATIBLE_FAMILIES[claimed]:
        walk.add("ATTACH_TYPE_MISMATCH", f"{path}: named .{ext} but is {real}")
        return
    declared = family(declared_type) if declared_type else None
    if declared in DECLARED_TYPE_FAMILIES and real_family not in COMPATIBLE_FAMILIES[declared]:
        walk.add("ATTACH_TYPE_MISMATCH", f"{path}: declared {declared_type} but is {real}")


def _check_html(walk: _Walk, path: str, data: bytes) -> None:
    text = data[:MAX_HTML_SCAN]
    if not _SCRIPT_RE.search(text):
        return
    if b"msSaveOrOpenBlob" in text or (_SMUGGLE_BUILD_RE.search(text) and _SMUGGLE_DELIVER_RE.search(text)):
        walk.add("ATTACH_DANGEROUS", f"{path}: HTML smuggling (script builds a file to download)")


# --- Office macros ------------------------------------------------------------------------------------------------

def _check_ole(walk: _Walk, path: str, data: bytes) -> None:
    """VBA and XLM macros in an OLE file (.doc/.xls/.ppt, or the vbaProject.bin of an OOXML file); encryption."""
    try:
        parser = VBA_Parser(path, data=data)
    except Exception:  # not an Office file olevba knows (e.g. an MSI), or too broken to open
        return
    try:
        if parser.ole_file is not None and parser.ole_file.exists("EncryptedPackage"):
            walk.add("ARCHIVE_ENCRYPTED", f"{path}: encrypted Office document")
        kinds = [kind for kind, found in (("VBA", parser.detect_vba_macros()), ("XLM", parser.detect_xlm_macros()))
                 if found]
        if not kinds:
            return
        walk.add("OFFICE_MACRO", f"{path}: {' and '.join(kinds)} macros")
        results = parser.analyze_macros() or []
        autoexec = sorted({str(keyword) for kind, keyword, _ in results if kind == "AutoExec"})
        suspicious = sorted({str(keyword) for kind, keyword, _ in results if kind == "Suspicious"})
        if autoexec:
            extra = f"; suspicious: {', '.join(suspicious[:MAX_REASONS])}" if suspicious else ""
            walk.add("OFFICE_MACRO_SUSPICIOUS", f"{path}: runs on open ({', '.join(autoexec[:MAX_REASONS])}){extra}")
    except Exception:
        log.debug("olevba failed on %s", path, exc_info=True)
    finally:
        try:
            parser.close()
        except Exception:
            pass


# --- zip directories ----------------------------------------------------------------------------------------------

#: The end of central directory record (APPNOTE 4.3.16), the ZIP64 one and its locator (4.3.14, 4.3.15), and the fixed
#: part of a central directory header (4.3.12), as ``zipfile`` reads them.
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIGNATURE = b"PK\x05\x06"
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_EOCD64_SIGNATURE = b"PK\x06\x06"
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_CENTRAL_SIGNATURE = b"PK\x01\x02"
#: Longest archive comment after the end record (its length field has 16 bits).
_MAX_COMMENT = 0xFFFF


@dataclass(frozen=True)
class ZipDirectory:
    """A zip's central directory as its end records place it, and its entries counted up to a cap."""

    #: The entry count the end record (or the ZIP64 one) declares.
    declared: int
    #: Entries counted by walking the directory's headers, at most the cap plus one (``zipfile`` lists them all).
    counted: int
    #: Where the directory starts in the data, and its declared offset (they differ when data precedes the zip).
    start: int
    offset: int
    #: Where the entry after the cap-th one starts (the directory is cut there when there are more), else None.
    cut: int | None


def zip_directory(data: bytes, cap: int) -> ZipDirectory | None:
    """Find a zip's end records the way ``zipfile`` does and count its directory entries, reading no more than
    ``cap`` + 1 of them; None when there is no end record or the directory is not where it says (``zipfile`` then
    fails too, and the caller reports the zip as corrupt)."""
    tail_start = max(len(data) - _EOCD.size - _MAX_COMMENT, 0)
    if data[-_EOCD.size:-_EOCD.size + 4] == _EOCD_SIGNATURE and data[-2:] == b"\0\0":
        where = len(data) - _EOCD.size
    else:
        where = data.rfind(_EOCD_SIGNATURE, tail_start)
    if where < 0 or where + _EOCD.size > len(data):
        return None
    _, _, _, _, declared, size, offset, _ = _EOCD.unpack_from(data, where)
    location = where
    here = where - _EOCD64_LOCATOR.size
    if here >= 0 and data[here:here + 4] == _EOCD64_LOCATOR_SIGNATURE:
        record = here - _EOCD64.size
        if record >= 0 and data[record:record + 4] == _EOCD64_SIGNATURE:
            _, _, _, _, _, _, _, declared, size, offset = _EOCD64.unpack_from(data, record)
            location = record
    start = location - size
    if start < 0 or offset > start:
        return None
    pos, end, counted, cut = start, location, 0, None
    while pos < end:
        if pos + _CENTRAL.size > len(data) or data[pos:pos + 4] != _CENTRAL_SIGNATURE:
            return None
        if counted == cap:
            cut = pos
        counted += 1
        if counted > cap:
            break
        fields = _CENTRAL.unpack_from(data, pos)
        pos += _CENTRAL.size + fields[10] + fields[11] + fields[12]  # name, extra field, comment
    return ZipDirectory(declared, counted, start, offset, cut)


def _first_entries(data: bytes, directory: ZipDirectory, count: int) -> bytes:
    """The zip with its directory cut after ``count`` entries: a new end record after them (same offset, so members
    are found where they were); ``zipfile`` then lists only those."""
    assert directory.cut is not None
    size = directory.cut - directory.start
    return data[:directory.cut] + _EOCD.pack(_EOCD_SIGNATURE, 0, 0, count, count, size, directory.offset, 0)


# --- containers ---------------------------------------------------------------------------------------------------

def _open_zip(walk: _Walk, path: str, data: bytes, depth: int) -> None:
    directory = zip_directory(data, MAX_ARCHIVE_ENTRIES)
    over = directory is not None and directory.counted > MAX_ARCHIVE_ENTRIES
    if over and directory is not None:
        # Its first entries are looked at (within the member budget, as before), the rest is not even listed.
        data = _first_entries(data, directory, MAX_ARCHIVE_ENTRIES)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except Exception as exc:
        walk.add("ARCHIVE_CORRUPT", f"{path}: unreadable zip ({type(exc).__name__})")
        return
    with zf:
        _list_zip(walk, path, zf, infos, depth)
    if over and directory is not None and not walk.stopped:
        walk.limit(f"{path}: more than {MAX_ARCHIVE_ENTRIES} entries in one archive (its directory declares "
                   f"{directory.declared})")


def _zip_files(walk: _Walk, path: str, infos: list[zipfile.ZipInfo]) -> Iterator[tuple[zipfile.ZipInfo, str]]:
    """The file entries of a zip with their paths (``path/name``), for as long as the walk takes more members."""
    for info in infos:
        if info.is_dir():
            continue
        member = f"{path}/{info.filename}"
        if not walk.take_member(member):
            return
        yield info, member


def _list_zip(walk: _Walk, path: str, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], depth: int) -> None:
    """Inspect the listed entries of an open zip: a Java archive, an Office document, or files one by one."""
    names = {info.filename for info in infos}
    if "META-INF/MANIFEST.MF" in names and any(n.endswith(".class") for n in names):
        walk.add("ATTACH_DANGEROUS", f"{path}: Java archive")
        return
    if any(marker in names for marker in DOCUMENT_MARKERS):
        _walk_document(walk, path, zf, infos, depth)
        return
    for info, member in _zip_files(walk, path, infos):
        _check_name(walk, member, info.filename)
        if info.flag_bits & 0x1:
            walk.add("ARCHIVE_ENCRYPTED", member)
            continue
        if not walk.take_bytes(member, info.file_size):
            return
        try:
            with zf.open(info) as fh:
                content, real = _read_member(fh, info.file_size, info.filename)
        except Exception as exc:
            walk.add("ARCHIVE_CORRUPT", f"{member}: cannot unpack ({type(exc).__name__})")
            continue
        _inspect(walk, member, info.filename, "", content, depth + 1, names_checked=True, real=real)
        if walk.stopped:
            return


def _walk_document(walk: _Walk, path: str, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], depth: int) -> None:
    """An OOXML/ODF file: look only at parts that can carry code (OLE files such as vbaProject.bin, embedded zips
    and executables) and at XLM macro sheets; its XML is not unpacked."""
    for info, part in _zip_files(walk, path, infos):
        if info.filename.startswith(XLM_PART_PREFIX):
            walk.add("OFFICE_MACRO", f"{path}: XLM macro sheet {info.filename}")
        if extension(info.filename) in DANGEROUS_EXTENSIONS:
            walk.add("ATTACH_DANGEROUS", f"{part}: .{extension(info.filename)} file inside a document")
        if info.flag_bits & 0x1:
            walk.add("ARCHIVE_ENCRYPTED", part)
            continue
        try:
            with zf.open(info) as fh:
                head = fh.read(PART_HEAD_BYTES)
                if not head.startswith((OLE_MAGIC, ZIP_MAGIC, b"MZ")):
                    continue
                if not walk.take_bytes(part, info.file_size):
                    return
                content = head + fh.read(max(info.file_size - len(head), 0))
        except Exception as exc:
            walk.add("ARCHIVE_CORRUPT", f"{part}: cannot unpack ({type(exc).__name__})")
            continue
        _inspect(walk, part, info.filename, "", content, depth + 1, names_checked=True)
        if walk.stopped:
            return


def _open_tar(walk: _Walk, path: str, data: bytes, depth: int) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for entries, info in enumerate(tf, start=1):  # read one header at a time
                if entries > MAX_ARCHIVE_ENTRIES:
                    walk.limit(f"{path}: more than {MAX_ARCHIVE_ENTRIES} entries in one archive")
                    return
                if not info.isfile():
                    continue
                member = f"{path}/{info.name}"
                if not walk.take_member(member):
                    return
                _check_name(walk, member, info.name)
                if not walk.take_bytes(member, info.size):
                    return
                fh = tf.extractfile(info)
                content, real = _read_member(fh, info.size, info.name) if fh is not None else (b"", None)
                _inspect(walk, member, info.name, "", content, depth + 1, names_checked=True, real=real)
                if walk.stopped:
                    return
    except Exception as exc:
        walk.add("ARCHIVE_CORRUPT", f"{path}: unreadable tar ({type(exc).__name__})")


def _open_compressed(walk: _Walk, path: str, name: str, data: bytes, real: str, depth: int) -> None:
    opener, suffixes = COMPRESSED_TYPES[real]
    base = _basename(name)
    inner = base
    for suffix, replacement in suffixes.items():
        if base.lower().endswith(suffix):
            inner = base[: -len(suffix)] + replacement
            break
    try:
        with opener(io.BytesIO(data)) as fh:
            content = fh.read(walk.remaining + 1)
    except Exception as exc:
        walk.add("ARCHIVE_CORRUPT", f"{path}: cannot decompress ({type(exc).__name__})")
        return
    if not walk.take_bytes(path, len(content)):
        return
    _inspect(walk, path, inner, "", content, depth + 1)


def _read_member(fh: IO[bytes], size: int, name: str) -> tuple[bytes, str]:
    """An archive member's bytes and real type: only its head when nothing more is looked at (a big video in a zip
    is typed from its first MiB, not held whole in memory), all of it when it is a container, OLE file or HTML."""
    head = fh.read(min(size, SNIFF_BYTES))
    real = sniff(head)
    if len(head) >= size:
        return head, real
    whole = (head.startswith((OLE_MAGIC, ZIP_MAGIC)) or real in ZIP_TYPES or family(real) == "ooxml"
             or real in TAR_TYPES or real in COMPRESSED_TYPES or real in HTML_TYPES
             or extension(name) in HTML_EXTENSIONS)
    return (head + fh.read(size - len(head)), real) if whole else (head, real)


def _has_zip_directory(data: bytes) -> bool:
    """A zip that libmagic did not name: a broken local header, or a zip appended to another file (an image, an
    executable); zip readers go by the central directory at the end, so such files open as archives."""
    if data.startswith(ZIP_MAGIC):
        return True
    try:
        return zipfile.is_zipfile(io.BytesIO(data))
    except Exception:
        return False


# --- one object ---------------------------------------------------------------------------------------------------

def _inspect(walk: _Walk, path: str, name: str, declared_type: str, data: bytes, depth: int,
             *, names_checked: bool = False, real: str | None = None) -> str:
    """Inspect one attachment or archive member (``real``: its type when already sniffed); returns its real type."""
    if real is None:
        real = sniff(data)
    if depth > 0 and len(walk.found) < MAX_LISTED_MEMBERS:
        walk.found.append((name, real))
    if not names_checked:
        _check_name(walk, path, name)
    if real in DANGEROUS_TYPES:
        walk.add("ATTACH_DANGEROUS", f"{path}: {DANGEROUS_TYPES[real]}")
    _check_mismatch(walk, path, name, declared_type, real)
    if real in HTML_TYPES or extension(name) in HTML_EXTENSIONS:
        _check_html(walk, path, data)
    if data.startswith(OLE_MAGIC):
        _check_ole(walk, path, data)
    is_zip = real in ZIP_TYPES or family(real) == "ooxml" or _has_zip_directory(data)
    is_container = is_zip or real in TAR_TYPES or real in COMPRESSED_TYPES
    if not is_container or walk.stopped:
        return real
    if depth >= MAX_ARCHIVE_DEPTH:
        walk.limit(f"{path}: archives nested deeper than {MAX_ARCHIVE_DEPTH} levels")
        return real
    if is_zip:
        _open_zip(walk, path, data, depth)
    elif real in TAR_TYPES:
        _open_tar(walk, path, data, depth)
    else:
        _open_compressed(walk, path, name, data, real, depth)
    return real


def inspect_attachments(attachments: Sequence[Attachment]) -> Inspection:
    """Inspect a mail's attachments (blocking, CPU-bound: run it in a thread). Never raises."""
    result = Inspection()
    walk = _Walk(result.findings, deadline=time.monotonic() + MAX_INSPECT_SECONDS)
    for n, att in enumerate(attachments, start=1):
        name = att.filename or ""
        path = _basename(name) or f"(unnamed attachment {n})"
        try:
            real = _inspect(walk, path, name, att.declared_type, att.data, 0)
        except Exception:  # a bug must not cost the mail its other findings
            log.exception("attachment inspection failed on %s", path)
            real = "application/octet-stream"
        result.listing.append((name, real, len(att.data)))
    result.members = walk.found
    return result


def _summary(reasons: list[str]) -> str:
    shown = "; ".join(reasons[:MAX_REASONS])
    return shown + (f"; and {len(reasons) - MAX_REASONS} more" if len(reasons) > MAX_REASONS else "")


class AttachmentCheck(Check):
    """Real types, archives, macros and dangerous files among a mail's attachments."""

    name = "attachments"
    stage = Stage.DATA
    #: Longer than the inspection's own time bound, which ends the thread's work with a finding.
    timeout = MAX_INSPECT_SECONDS + 10.0
    symbols = ("ATTACH_DANGEROUS", "ATTACH_DOUBLE_EXT", "ATTACH_TYPE_MISMATCH", "OFFICE_MACRO",
               "OFFICE_MACRO_SUSPICIOUS", "ARCHIVE_ENCRYPTED", "ARCHIVE_LIMIT", "ARCHIVE_CORRUPT")

    async def run(self, ctx: CheckContext) -> None:
        mail = ctx.mail
        if mail is None or not mail.attachments:
            ctx.facts["attachments"] = []
            return
        result = await asyncio.to_thread(inspect_attachments, mail.attachments)
        ctx.facts["attachments"] = result.listing
        ctx.facts["archive_members"] = result.members
        for symbol, reasons in result.findings.items():
            ctx.add(symbol, _summary(reasons))
