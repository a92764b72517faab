"""A real ClamAV daemon for the tests: Debian's ``clamd`` on a free loopback TCP port with a signature DB we write.

freshclam cannot reach the signature mirrors here, so :func:`start_clamd` writes its own database: an MD5 hash
signature of the EICAR test file (``.hdb``, matches the file exactly, also inside archives and decoded MIME parts)
and a body signature (``.ndb``, matches the EICAR string anywhere in a scanned object, e.g. in a text part that
carries a line end after it). ``StreamMaxLength`` is small so a test can make clamd answer ``size limit exceeded``.
A clamd that cannot start raises, with its log: the tests that need it fail, locally and in CI; nothing here skips.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tests.support.servers import Daemon, free_port, wait_started

#: The standard antivirus test file (68 bytes). Built from two halves so this source file itself is no EICAR file.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)" + b"7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
#: Name of the hash signature; clamd reports it as ``Eicar-Test-Signature.UNOFFICIAL``.
HASH_SIGNATURE = "Eicar-Test-Signature"
#: Name of the body signature (any file type, any offset).
BODY_SIGNATURE = "Eicar-Test-Body"
#: Largest INSTREAM upload clamd accepts here; more gets ``INSTREAM size limit exceeded. ERROR``.
STREAM_MAX_LENGTH = 4 * 1024 * 1024
#: Where Debian installs the daemon.
CLAMD_BINARY = "/usr/sbin/clamd"
#: Seconds clamd may take to load the database and answer PING (about 0.1 s here with our two signatures).
START_TIMEOUT = 60.0


@dataclass
class ClamdServer(Daemon):
    #: Seconds from start to the first PONG.
    startup_seconds: float
    LOG: ClassVar[str] = "clamd.log"

    @property
    def address(self) -> str:
        """The value for ``Config(clamd=...)``."""
        return f"127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> Path:
        """The same clamd's unix socket."""
        return self.workdir / "clamd.sock"



def write_database(db: Path, *, body_signature: bool = True) -> None:
    """The test signature database: EICAR by MD5 (whole file) and, unless told not to, by body pattern (anywhere)."""
    db.mkdir(parents=True, exist_ok=True)
    (db / "test.hdb").write_text(f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:{HASH_SIGNATURE}\n")
    if body_signature:
        # ndb: Name:TargetType:Offset:HexSignature; target type 0 = any file, offset * = anywhere.
        (db / "test.ndb").write_text(f"{BODY_SIGNATURE}:0:*:{EICAR.hex()}\n")


def ping(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"zPING\0")
            return s.recv(16).rstrip(b"\0\n") == b"PONG"
    except OSError:
        return False


def start_clamd(*, body_signature: bool = True, timeout: float = START_TIMEOUT) -> ClamdServer:
    """Start clamd in a temporary folder and wait until it answers PING; raises with its log if it cannot.

    Without ``body_signature`` only the MD5 signature is loaded: it matches a scanned object that is exactly the
    EICAR file, so a hit on a mail proves clamd decoded the MIME part (and unpacked the archive) itself.
    """
    if not Path(CLAMD_BINARY).exists():
        raise RuntimeError(f"{CLAMD_BINARY} is missing: install the Debian package clamav-daemon")
    workdir = Path(tempfile.mkdtemp(prefix="mw-clamd-"))
    db = workdir / "db"
    write_database(db, body_signature=body_signature)
    port = free_port()
    conf = workdir / "clamd.conf"
    conf.write_text("\n".join([
        f"DatabaseDirectory {db}",
        f"TCPSocket {port}",
        "TCPAddr 127.0.0.1",
        f"LocalSocket {workdir / 'clamd.sock'}",
        "Foreground yes",
        f"PidFile {workdir / 'clamd.pid'}",
        f"LogFile {workdir / 'clamd.log'}",
        f"TemporaryDirectory {workdir}",
        "ScanArchive yes",
        "ScanMail yes",
        f"StreamMaxLength {STREAM_MAX_LENGTH}",
        "MaxThreads 4",
        "SelfCheck 0",
        "Bytecode no",
    ]) + "\n")
    if os.geteuid() == 0:
        conf.write_text(conf.read_text() + "User root\n")
    proc = subprocess.Popen([CLAMD_BINARY, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = ClamdServer(proc, workdir, port, 0.0)
    server.startup_seconds = wait_started(server, lambda: ping(port), timeout=timeout, name="clamd")
    return server
