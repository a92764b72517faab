"""Real optional scorers for the tests: Debian's ``spamd`` (SpamAssassin) and ``rspamd`` on free loopback ports.

Both run offline. spamd runs local tests only (``-L``: no DNS, Razor or Pyzor), without user settings and with
Bayes off, so results do not depend on what earlier tests taught it. rspamd runs with the
packaged configuration plus ``override.d`` files in a temporary folder: the normal worker bound to our port, the
controller and proxy off, no Redis (so no Bayes, greylisting or rate limits), and its DNS on loopback with a short
timeout (the tests' DNS server, or a port where nothing listens), so no lookup waits on the internet.

Start-up here: spamd about 1.5 s (rules from /usr/share/spamassassin, compiled body rules if sa-compile ran).
rspamd about 20 s the first time, most of it compiling hyperscan databases (the TLD list), about 1 s once they are
cached: pass ``cache_dir`` (the fixture uses pytest's cache folder) to keep them between runs.
A daemon that cannot start raises, with its log: the tests that need it fail, locally and in CI; nothing here skips.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tests.support.servers import Daemon, free_port, wait_started

#: Where Debian installs the daemons (packages ``spamd`` and ``rspamd``).
SPAMD_BINARY = "/usr/sbin/spamd"
RSPAMD_BINARY = "/usr/bin/rspamd"
#: rspamd's packaged configuration, which ours overrides.
RSPAMD_CONFIG = "/etc/rspamd/rspamd.conf"
#: Seconds spamd may take to load its rules and answer PING (about 1.5 s here).
SPAMD_START_TIMEOUT = 60.0
#: Seconds rspamd may take to answer /ping: about 20 s with a cold hyperscan cache, 1 s with a warm one.
RSPAMD_START_TIMEOUT = 120.0
#: The user spamd drops to when started as root.
SPAMD_USER = "nobody"
#: Configuration lines added to SpamAssassin's: Bayes off, so no result depends on what earlier tests taught it.
SPAMD_SETTINGS = ("use_bayes 0", "bayes_auto_learn 0")
#: The stock rules of Debian's package. spamd would otherwise prefer an sa-update directory under
#: /var/lib/spamassassin, which an interrupted sa-update can leave empty ("no rules were found").
SPAMD_RULES_DIR = "/usr/share/spamassassin"

#: SpamAssassin's and rspamd's test string: a mail carrying it scores as spam (SpamAssassin: 1000, rspamd: reject).
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


# --- spamd --------------------------------------------------------------------------------------------------------

@dataclass
class SpamdServer(Daemon):
    #: Seconds from start to the first PONG.
    startup_seconds: float
    LOG: ClassVar[str] = "spamd.log"

    @property
    def address(self) -> str:
        """The value for ``SpamdCheck(cfg, spamd=...)`` / ``MAILWARD_SPAMD``."""
        return f"127.0.0.1:{self.port}"



def spamd_ping(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING SPAMC/1.5\r\n\r\n")
            return b"PONG" in s.recv(64)
    except OSError:
        return False


def start_spamd(*, timeout: float = SPAMD_START_TIMEOUT, rules_dir: str | Path = SPAMD_RULES_DIR,
                children: int = 2) -> SpamdServer:
    """Start spamd (local tests only) on ``rules_dir`` with at most ``children`` children and wait until it answers
    PING; raises with its log if it cannot."""
    if not Path(SPAMD_BINARY).exists():
        raise RuntimeError(f"{SPAMD_BINARY} is missing: install the Debian package spamd")
    workdir = Path(tempfile.mkdtemp(prefix="mw-spamd-"))
    port = free_port()
    # No user settings (-x); anything spamd would keep in a home folder goes to the temporary one (-H).
    argv = [SPAMD_BINARY, "-L", f"--listen=127.0.0.1:{port}", "-x", f"--helper-home-dir={workdir}", "-s", "stderr",
            "--min-children=1", f"--max-children={children}", f"--max-spare={children}", f"--configpath={rules_dir}",
            *(f"--cf={line}" for line in SPAMD_SETTINGS)]
    if os.geteuid() == 0:
        argv += ["-u", SPAMD_USER]
        shutil.chown(workdir, SPAMD_USER)
    with open(workdir / "spamd.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    server = SpamdServer(proc, workdir, port, 0.0)
    server.startup_seconds = wait_started(server, lambda: spamd_ping(port), timeout=timeout, name="spamd")
    return server


# --- rspamd -------------------------------------------------------------------------------------------------------

@dataclass
class RspamdServer(Daemon):
    #: Seconds from start to the first answer of /ping.
    startup_seconds: float
    LOG: ClassVar[str] = "rspamd.log"

    @property
    def url(self) -> str:
        """The value for ``RspamdCheck(cfg, rspamd=...)`` / ``MAILWARD_RSPAMD``."""
        return f"http://127.0.0.1:{self.port}"



def rspamd_ping(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            return answer.startswith(b"HTTP/1.1 200") and b"pong" in answer
    except OSError:
        return False


def write_rspamd_config(confdir: Path, *, port: int, dns_port: int, hs_cache: Path) -> None:
    """``override.d`` files (priority over the packaged settings) for one test rspamd."""
    override = confdir / "override.d"
    override.mkdir(parents=True, exist_ok=True)
    (override / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{port}";\ncount = 1;\n')
    for worker in ("worker-controller.inc", "worker-proxy.inc"):
        (override / worker).write_text("enabled = false;\ncount = 0;\n")
    (override / "logging.inc").write_text('type = "console";\nlevel = "info";\ncolor = false;\n')
    (override / "options.inc").write_text("\n".join([
        # The tests' loopback DNS server, or a port where nothing listens: no lookup waits on the internet.
        "dns {",
        f'  nameserver = ["127.0.0.1:{dns_port}"];',
        "  timeout = 0.1s;",
        "  retransmits = 1;",
        "  sockets = 4;",
        "}",
        # Without fuzzy_check: its servers are looked up through the system resolver while the config loads.
        'filters = "chartable,dkim,regexp";',
        f'hs_cache_dir = "{hs_cache}";',
    ]) + "\n")


def start_rspamd(*, dns_port: int | None = None, cache_dir: Path | None = None,
                 timeout: float = RSPAMD_START_TIMEOUT) -> RspamdServer:
    """Start rspamd and wait until its normal worker answers /ping; raises with its log if it cannot.

    ``dns_port``: a loopback DNS server (tests.support.dnsserver) for all of rspamd's lookups, so that they get definite
    answers the tests can set; without one they go to a dead port and fail at once. ``cache_dir`` keeps the
    compiled hyperscan databases between runs (cold start ~20 s, warm ~1 s).
    """
    if not Path(RSPAMD_BINARY).exists():
        raise RuntimeError(f"{RSPAMD_BINARY} is missing: install the Debian package rspamd")
    workdir = Path(tempfile.mkdtemp(prefix="mw-rspamd-"))
    confdir, dbdir, rundir, logdir = (workdir / name for name in ("conf", "db", "run", "log"))
    for d in (dbdir, rundir, logdir):
        d.mkdir()
    hs_cache = cache_dir if cache_dir is not None else dbdir
    hs_cache.mkdir(parents=True, exist_ok=True)
    port = free_port()
    write_rspamd_config(confdir, port=port, dns_port=dns_port or free_port(), hs_cache=hs_cache)
    argv = [RSPAMD_BINARY, "-f", "-c", RSPAMD_CONFIG, f"--var=LOCAL_CONFDIR={confdir}", f"--var=DBDIR={dbdir}",
            f"--var=RUNDIR={rundir}", f"--var=LOGDIR={logdir}"]
    if os.geteuid() == 0:  # rspamd refuses to run as root unless told whom to run its workers as
        argv += ["-u", "root", "-g", "root"]
    with open(workdir / "rspamd.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    server = RspamdServer(proc, workdir, port, 0.0)
    server.startup_seconds = wait_started(server, lambda: rspamd_ping(port), timeout=timeout, name="rspamd",
                                          request="/ping", interval=0.2)
    return server
