"""A private clamd for ``make run`` when ClamAV is installed: the embedded default scans mail whenever it can.

Used only by the single-machine supervisor, never in production (there ``MAILWARD_CLAMD`` names the scanner).
A running system clamd (Debian's ``clamav-daemon`` socket) is used as it is; otherwise, when the ``clamd`` binary and
a signature database are installed, one is started under the data directory on a unix socket.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

#: Where Debian's clamav-daemon listens, and where freshclam keeps the signatures.
SYSTEM_SOCKET = Path("/run/clamav/clamd.ctl")
SIGNATURE_DIR = Path("/var/lib/clamav")
CLAMD_BINARIES = (Path("/usr/sbin/clamd"), Path("/usr/bin/clamd"))
SIGNATURE_SUFFIXES = (".cvd", ".cld", ".hdb", ".hsb", ".ndb", ".ldb", ".cdb")
#: Seconds a private clamd may take to load a full signature database and answer PING.
START_TIMEOUT = 120.0


def ping(sock: Path, timeout: float = 2.0) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(b"zPING\0")
            return s.recv(16).startswith(b"PONG")
    except OSError:
        return False


def find_or_start(data_dir: Path) -> tuple[str | None, str, subprocess.Popen[bytes] | None]:
    """(MAILWARD_CLAMD value or None, what the banner says, the private process to stop later or None)."""
    if SYSTEM_SOCKET.exists() and ping(SYSTEM_SOCKET):
        return str(SYSTEM_SOCKET), f"system clamd at {SYSTEM_SOCKET}", None
    binary = next((b for b in CLAMD_BINARIES if b.exists()), None)
    if binary is None:
        return None, "OFF (ClamAV is not installed: apt-get install clamav-daemon)", None
    if not SIGNATURE_DIR.is_dir() or not any(p.suffix in SIGNATURE_SUFFIXES for p in SIGNATURE_DIR.iterdir()):
        return None, f"OFF (no signatures in {SIGNATURE_DIR}: run freshclam)", None
    workdir = (data_dir / "clamav").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "clamd.sock"
    conf = workdir / "clamd.conf"
    conf.write_text(
        f"DatabaseDirectory {SIGNATURE_DIR}\nLocalSocket {sock}\nForeground yes\nScanArchive yes\n"
        f"LogFile {workdir / 'clamd.log'}\nPidFile {workdir / 'clamd.pid'}\nUser root\n"
        "StreamMaxLength 60M\n"
    )
    log = open(workdir / "clamd.out", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([str(binary), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None, f"OFF (clamd exited; see {workdir / 'clamd.log'})", None
        if sock.exists() and ping(sock):
            return str(sock), f"private clamd at {sock}", proc
        time.sleep(0.5)
    proc.kill()
    return None, f"OFF (clamd did not answer within {START_TIMEOUT:.0f}s; see {workdir / 'clamd.log'})", None
