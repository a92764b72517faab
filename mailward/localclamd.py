"""A private clamd for ``make run`` when ClamAV is installed: the embedded default scans mail whenever it can.

Used only by the single-machine supervisor, never in production (there ``MAILWARD_CLAMD`` names the scanner).
A running system clamd (Debian's ``clamav-daemon`` socket) is used as it is. Otherwise, when the ``clamd`` binary and
a signature database are installed, :func:`plan` prepares a private one: its own ``clamd.conf`` under the data
directory, a unix socket beside it, the system's signatures (``DatabaseDirectory``), in the foreground (its log is
its output, which the supervisor appends to ``logs/clamd.log``). The supervisor starts it like its other children
(and restarts it, and stops it on exit); loading a full signature database takes 20-40 s, during which the ingress's
virus check cannot reach it and the tenant policy's "scanner unavailable" answer applies. :class:`ReadyWatch` notes
when it first answers PING, without holding anything else up.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Where Debian's clamav-daemon listens, and where freshclam keeps the signatures.
SYSTEM_SOCKET = Path("/run/clamav/clamd.ctl")
SIGNATURE_DIR = Path("/var/lib/clamav")
CLAMD_BINARIES = (Path("/usr/sbin/clamd"), Path("/usr/bin/clamd"))
SIGNATURE_SUFFIXES = (".cvd", ".cld", ".hdb", ".hsb", ".ndb", ".ldb", ".cdb")
#: Seconds a private clamd may take to load a full signature database and answer PING.
START_TIMEOUT = 180.0
#: Seconds between two PINGs while it loads.
PING_INTERVAL = 0.5
#: Longest unix socket path Linux accepts (``sun_path`` is 108 bytes with its terminating NUL).
MAX_SOCKET_PATH = 107
#: Seconds a clamd left running by an earlier, killed ``mailward run`` gets to stop before it is killed.
ORPHAN_GRACE = 10.0


def ping(sock: Path, timeout: float = 2.0) -> bool:
    """True when a clamd answers PONG on the unix socket ``sock``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(b"zPING\0")
            return s.recv(16).startswith(b"PONG")
    except OSError:
        return False


def as_root(command: str) -> str:
    """``command`` as the operator types it: with ``sudo`` unless this process runs as root."""
    return command if os.geteuid() == 0 else f"sudo {command}"


def signatures_command() -> str:
    """The exact command that brings ClamAV's signatures into :data:`SIGNATURE_DIR`."""
    if shutil.which("freshclam") is None:
        return as_root("apt-get install clamav-freshclam") + " && " + as_root("freshclam")
    return as_root("freshclam")


def has_signatures(directory: Path) -> bool:
    return directory.is_dir() and any(p.suffix in SIGNATURE_SUFFIXES for p in directory.iterdir())


@dataclass
class PrivateClamd:
    """A clamd of this installation: configuration and socket under ``workdir`` (the data directory's clamav/)."""

    binary: Path
    workdir: Path
    signatures: Path

    @property
    def socket(self) -> Path:
        return self.workdir / "clamd.sock"

    @property
    def conf(self) -> Path:
        return self.workdir / "clamd.conf"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "clamd.pid"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            "# Written by `mailward run` at every start: edits are lost.\n"
            f"DatabaseDirectory {self.signatures}\n"
            f"LocalSocket {self.socket}\n"
            "FixStaleSocket yes\n"
            f"PidFile {self.pidfile}\n"
            "Foreground yes\n"
            "LogTime yes\n"
            "ScanMail yes\n"
            "ScanArchive yes\n"
            "StreamMaxLength 60M\n"
            # As root, clamd must stay root: the data directory (and so its socket) is root's alone (0700).
            + ("User root\n" if os.geteuid() == 0 else "")
        )

    def stop_orphan(self) -> None:
        """Stop a clamd of this configuration that an earlier ``mailward run`` left behind (killed before it could
        stop it): it would keep the socket, and the new one would refuse to start."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if str(self.conf).encode() not in cmdline:
            return
        log.warning("stopping clamd (pid %d) left running by an earlier start", pid)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + ORPHAN_GRACE
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)

    def starter(self, log_path: Path) -> Callable[[], subprocess.Popen[bytes]]:
        """Start clamd with its output appended to ``log_path`` (what the supervisor calls, again after a death)."""
        def start() -> subprocess.Popen[bytes]:
            with open(log_path, "ab") as out:  # the child keeps its own copy of the descriptor
                return subprocess.Popen([str(self.binary), "-c", str(self.conf)], stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return start


@dataclass
class Plan:
    """What ``mailward run`` does about virus scanning: the MAILWARD_CLAMD value (None: scanning off), what its
    banner says, and the private clamd to supervise (None: nothing to start)."""

    address: str | None
    banner: str
    private: PrivateClamd | None = None


def plan(data_dir: Path) -> Plan:
    """Decide how ``mailward run`` scans for viruses on this machine; writes a private clamd's configuration."""
    if SYSTEM_SOCKET.exists() and ping(SYSTEM_SOCKET):
        return Plan(str(SYSTEM_SOCKET), f"ON (the system clamd at {SYSTEM_SOCKET})")
    binary = next((b for b in CLAMD_BINARIES if b.exists()), None)
    if binary is None:
        return Plan(None, f"OFF (ClamAV is not installed: {as_root('apt-get install clamav-daemon')})")
    if not has_signatures(SIGNATURE_DIR):
        return Plan(None, f"OFF (no ClamAV signatures in {SIGNATURE_DIR}: run `{signatures_command()}`, "
                          "then start again)")
    private = PrivateClamd(binary, (data_dir / "clamav").resolve(), SIGNATURE_DIR)
    if len(str(private.socket).encode()) > MAX_SOCKET_PATH:
        return Plan(None, f"OFF (the socket path {private.socket} is longer than a unix socket's "
                          f"{MAX_SOCKET_PATH} bytes: choose a shorter MAILWARD_DATA_DIR)")
    private.write_config()
    private.stop_orphan()
    return Plan(str(private.socket), f"ON (private clamd on {private.socket}, signatures from {SIGNATURE_DIR}; "
                                     "loading them takes a minute, meanwhile mail gets the policy's "
                                     "'scanner unavailable' answer)", private)


class ReadyWatch:
    """Note, in a thread, when a clamd first answers PING (logged; :attr:`ready` set), or that it did not in time."""

    def __init__(self, sock: Path, *, timeout: float = START_TIMEOUT, interval: float = PING_INTERVAL) -> None:
        self.sock = sock
        self.timeout = timeout
        self.interval = interval
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.seconds: float | None = None
        self.thread = threading.Thread(target=self._run, name="clamd-ready", daemon=True)

    def start(self) -> ReadyWatch:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        began = time.monotonic()
        while not self.stopped.is_set():
            if ping(self.sock):
                self.seconds = time.monotonic() - began
                self.ready.set()
                log.info("virus scanning is on: clamd answers on %s (after %.0fs)", self.sock, self.seconds)
                return
            if time.monotonic() - began > self.timeout:
                log.warning("clamd did not answer on %s within %.0fs: mail gets the 'scanner unavailable' answer "
                            "until it does; see logs/clamd.log", self.sock, self.timeout)
                return
            self.stopped.wait(self.interval)
