"""The encrypted backup file: key files, envelope encryption and the on-disk layout (no database here).

A backup is encrypted on the client side with AES-256-GCM (``cryptography``). A random *data key* encrypts the
payload; each key file given (the installation's backup key, optionally an MSP master key) wraps the data key with
AES-GCM, so either opens it. The file is::

    MAGIC (8) | VERSION (1) | header length (4, big-endian) | header (JSON, UTF-8) | chunk | chunk | ...

The header names the wrapped copies by key id (a SHA-256 fingerprint prefix of the key, never the key) and holds
the payload's nonce prefix; everything before the first chunk is the additional authenticated data of every chunk,
so a changed header byte fails like a changed payload byte. The payload (zlib-compressed) is cut into chunks of
:data:`CHUNK` bytes, each sealed with a nonce of the prefix, its index and a last-chunk flag (the STREAM
construction): reordered, dropped or truncated chunks fail to open. Nothing is trusted before its tag checks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tenants.exceptions import MailwardError

#: First bytes of every backup file.
MAGIC = b"MWBACKUP"
#: Layout version written after the magic; a reader refuses versions it does not know.
VERSION = 1
#: Length of every key (backup key, master key, data key): AES-256.
KEY_LENGTH = 32
#: Characters of the key id (hex of the key's SHA-256): enough to tell keys apart, nothing to guess a key from.
KEY_ID_LENGTH = 16
#: AES-GCM nonce length; the payload nonce is a 7-byte prefix, a 4-byte chunk index and a 1-byte last flag.
NONCE_LENGTH = 12
NONCE_PREFIX_LENGTH = 7
#: Plaintext bytes per chunk (the last may be shorter); each sealed chunk is 16 bytes longer (the GCM tag).
CHUNK = 1024 * 1024
TAG_LENGTH = 16
#: Longest header a reader accepts (a damaged length field must not make it read gigabytes).
MAX_HEADER = 64 * 1024
#: Mode of a key file keygen writes: the owner's alone.
KEY_FILE_MODE = 0o600
#: Context of a wrapped data key (its AAD besides the key id): binds a wrapped copy to this purpose and layout.
WRAP_CONTEXT = b"mailward backup data key v1"


class BackupError(MailwardError):
    """A backup cannot be written or read: the message says why (wrong key, damaged file, not a backup)."""


class BackupKeyError(BackupError, ValueError):
    """A key file is missing, unreadable or not a 32-byte key (a ValueError too: configuration parsing names it)."""


def parse_key(data: bytes, where: str = "key file") -> bytes:
    """A key from a key file's bytes: 32 raw bytes, or 64 hex digits, or base64 (standard or URL-safe)."""
    if len(data) == KEY_LENGTH:
        return data
    text = data.strip()
    try:
        if len(text) == 2 * KEY_LENGTH:
            return binascii.unhexlify(text)
    except binascii.Error:
        pass
    try:
        key = base64.b64decode(text.replace(b"-", b"+").replace(b"_", b"/"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_LENGTH:
        raise BackupKeyError(f"{where} does not hold a {KEY_LENGTH}-byte key (raw, hex or base64; it has "
                             f"{len(data)} bytes): make one with 'mailward backup keygen --output FILE'")
    return key


def read_key_file(path: str | Path) -> bytes:
    """The key in ``path``; a missing, unreadable or wrong-length file raises :class:`BackupKeyError`."""
    p = Path(path)
    if not p.is_file():
        raise BackupKeyError(f"{str(p)!r}: no such key file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise BackupKeyError(f"{str(p)!r}: cannot read the key file ({exc.strerror})") from exc
    return parse_key(data, repr(str(p)))


def write_key_file(path: str | Path) -> bytes:
    """Make a new random key in a new file (mode 0600, base64); an existing file is never replaced."""
    key = os.urandom(KEY_LENGTH)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except FileExistsError as exc:
        raise BackupKeyError(f"{str(path)!r} already exists; a key file is never overwritten") from exc
    except OSError as exc:
        raise BackupKeyError(f"{str(path)!r}: cannot create the key file ({exc.strerror})") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64encode(key) + b"\n")
    return key


def key_id(key: bytes) -> str:
    """The public name of a key: a prefix of its SHA-256 (what the header records and `backup list` shows)."""
    return hashlib.sha256(key).hexdigest()[:KEY_ID_LENGTH]


@dataclass(frozen=True)
class Header:
    """What a backup says about itself before it is opened (authenticated, not secret)."""

    created_at: str
    #: The schema revision of the installation it was taken from.
    schema: str
    with_quarantine: bool
    #: Key ids that open it, in order (the backup key first, then the master key).
    key_ids: tuple[str, ...]
    raw: dict[str, Any]


def _prefix(header: dict[str, Any]) -> bytes:
    body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + bytes([VERSION]) + struct.pack(">I", len(body)) + body


def _chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">I", index) + (b"\x01" if last else b"\x00")


def write_backup(out: IO[bytes], payload: Iterable[bytes], keys: list[bytes], *, created_at: str, schema: str,
                 with_quarantine: bool) -> int:
    """Encrypt ``payload`` (compressed on the way) to ``out`` under a fresh data key wrapped by each of ``keys``;
    returns the bytes written."""
    if not keys:
        raise BackupError("a backup needs at least one key")
    data_key = os.urandom(KEY_LENGTH)
    wrapped = []
    for k in keys:
        nonce, kid = os.urandom(NONCE_LENGTH), key_id(k)
        sealed = AESGCM(k).encrypt(nonce, data_key, WRAP_CONTEXT + kid.encode())
        wrapped.append({"id": kid, "nonce": base64.b64encode(nonce).decode(), "key": base64.b64encode(sealed).decode()})
    nonce_prefix = os.urandom(NONCE_PREFIX_LENGTH)
    header = {"created_at": created_at, "schema": schema, "with_quarantine": with_quarantine,
              "cipher": "AES-256-GCM", "compression": "zlib", "chunk": CHUNK, "keys": wrapped,
              "nonce_prefix": base64.b64encode(nonce_prefix).decode()}
    aad = _prefix(header)
    out.write(aad)
    written = len(aad)
    aead = AESGCM(data_key)
    index, pending = 0, b""
    for piece in _compressed(payload):
        pending += piece
        while len(pending) > CHUNK:  # keep one chunk back: only the last one is sealed as last
            sealed = aead.encrypt(_chunk_nonce(nonce_prefix, index, False), pending[:CHUNK], aad)
            out.write(sealed)
            written, index, pending = written + len(sealed), index + 1, pending[CHUNK:]
    sealed = aead.encrypt(_chunk_nonce(nonce_prefix, index, True), pending, aad)
    out.write(sealed)
    return written + len(sealed)


def _compressed(payload: Iterable[bytes]) -> Iterator[bytes]:
    comp = zlib.compressobj(6)
    for piece in payload:
        if out := comp.compress(piece):
            yield out
    yield comp.flush()


def read_header(fh: IO[bytes]) -> tuple[Header, bytes]:
    """The header of an open backup (positioned at its start) and the bytes it authenticates; refuses what is not
    a backup of a version this code reads."""
    start = fh.read(len(MAGIC) + 5)
    if len(start) < len(MAGIC) + 5 or not start.startswith(MAGIC):
        raise BackupError("not a Mailward backup (no backup header at its start)")
    version, length = start[len(MAGIC)], struct.unpack(">I", start[len(MAGIC) + 1:])[0]
    if version != VERSION:
        raise BackupError(f"backup format version {version} is not one this Mailward reads (it reads {VERSION})")
    if length > MAX_HEADER:
        raise BackupError("the backup's header is damaged (impossible length)")
    body = fh.read(length)
    try:
        raw = json.loads(body)
        header = Header(str(raw["created_at"]), str(raw["schema"]), bool(raw["with_quarantine"]),
                        tuple(str(k["id"]) for k in raw["keys"]), raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError("the backup's header is damaged or was altered") from exc
    return header, start + body


def _data_key(header: Header, key: bytes) -> bytes:
    kid = key_id(key)
    for entry in header.raw["keys"]:
        if entry.get("id") != kid:
            continue
        try:
            return AESGCM(key).decrypt(base64.b64decode(entry["nonce"]), base64.b64decode(entry["key"]),
                                       WRAP_CONTEXT + kid.encode())
        except (InvalidTag, ValueError, KeyError, binascii.Error) as exc:
            raise BackupError("the backup is damaged or was tampered with (its wrapped key does not verify)") from exc
    raise BackupError(f"wrong key: this backup opens with key id {' or '.join(header.key_ids)}, "
                      f"the key given has id {kid}")


def decrypt_chunks(fh: IO[bytes], key: bytes) -> tuple[Header, Iterator[bytes]]:
    """Open a backup with ``key``: its header, and its decompressed payload as it is read, each piece only after its
    chunk's tag checked. A wrong key fails at once; a damaged or truncated file raises while iterating."""
    header, aad = read_header(fh)
    data_key = _data_key(header, key)
    try:
        nonce_prefix = base64.b64decode(header.raw["nonce_prefix"])
        sealed_size = int(header.raw["chunk"]) + TAG_LENGTH
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BackupError("the backup's header is damaged or was altered") from exc

    def pieces() -> Iterator[bytes]:
        aead, decomp = AESGCM(data_key), zlib.decompressobj()
        index, current = 0, fh.read(sealed_size)
        while True:
            following = fh.read(sealed_size)
            last = not following
            try:
                plain = aead.decrypt(_chunk_nonce(nonce_prefix, index, last), current, aad)
            except (InvalidTag, ValueError) as exc:
                raise BackupError("the backup is damaged, truncated or was tampered with "
                                  f"(chunk {index} does not verify)") from exc
            try:
                yield decomp.decompress(plain)
            except zlib.error as exc:
                raise BackupError("the backup's payload does not decompress") from exc
            if last:
                if not decomp.eof:
                    raise BackupError("the backup's payload ends early")
                return
            index, current = index + 1, following

    return header, pieces()


def verify(path: str | Path, key: bytes) -> Header:
    """Read a whole backup with ``key`` and check every tag, keeping nothing; raises :class:`BackupError`."""
    try:
        with open(path, "rb") as fh:
            header, pieces = decrypt_chunks(fh, key)
            for _ in pieces:
                pass
    except OSError as exc:
        raise BackupError(f"cannot read the backup {path}: {exc.strerror or exc}") from exc
    return header
