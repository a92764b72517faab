"""The servers around the system under test in bench/throughput.py: the aiosmtpd sink every run delivers to, the
loopback DNS server the ingress's checks resolve on, and the bare Postfix relay of ``--peer-postfix``.

The sink and the DNS server run in processes of their own, not in threads of the benchmark, so that they do not
share a GIL with the load generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import multiprocessing
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP as AioSMTP

from bench.throughput_load import CLIENT_HOSTNAME, SENDER

#: Seconds to wait for a helper process or the Postfix relay to start, and for the ingress to open its port (it opens
#: it once SpamAssassin's rules are compiled: about 30 s cold on 2 cores, each run's data folder is new; more when
#: the machine is busy).
START_TIMEOUT = 180.0
#: Debian's Postfix, the peer of ``--peer-postfix``.
POSTFIX = Path("/usr/sbin/postfix")


# --- helper servers, each in a process of its own -------------------------------------------------------------

def _until_orphaned() -> None:
    """Block until the parent process is gone (it stops us with SIGTERM; this covers a parent killed outright)."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)


class ChildServer:
    """A helper server in a spawned process (a fresh interpreter: no GIL or state shared with the load generator).

    ``target(port, ready, *args)`` runs in the child: it starts serving, stores its port in ``port.value``, sets
    ``ready``, and serves until it is terminated.
    """

    what = "helper server"

    def __init__(self, target: Any, *args: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._port = ctx.RawValue("i", 0)
        self._ready = ctx.Event()
        self._proc = ctx.Process(target=target, args=(self._port, self._ready, *args), name=f"bench {self.what}",
                                 daemon=True)

    def start(self) -> Any:
        self._proc.start()
        if not self._ready.wait(START_TIMEOUT):
            self.stop()
            raise RuntimeError(f"the {self.what} process did not start")
        return self

    def stop(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(10)

    @property
    def pid(self) -> int:
        assert self._proc.pid is not None
        return self._proc.pid

    @property
    def port(self) -> int:
        return int(self._port.value)


@dataclass
class SinkCounters:
    """Shared memory the sink process writes and this process reads (one writer: no lock needed)."""

    mails: Any
    connections: Any
    last_at: Any  # time.monotonic() of the last mail taken; CLOCK_MONOTONIC is the same in every process


class _CountingHandler:
    """Takes every mail and counts it; keeps nothing."""

    def __init__(self, counters: SinkCounters) -> None:
        self.counters = counters

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.counters.mails.value += 1
        self.counters.last_at.value = time.monotonic()
        return "250 2.0.0 Ok: sunk"


def _sink_main(port: Any, ready: Any, counters: SinkCounters) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    asyncio.run(_serve_sink(port, ready, counters))


async def _serve_sink(port: Any, ready: Any, counters: SinkCounters) -> None:
    loop = asyncio.get_running_loop()
    handler = _CountingHandler(counters)

    def factory() -> AioSMTP:
        counters.connections.value += 1
        return AioSMTP(handler, data_size_limit=None, enable_SMTPUTF8=True, hostname="sink.bench.test", loop=loop)

    server = await loop.create_server(factory, host="127.0.0.1", port=0)
    port.value = server.sockets[0].getsockname()[1]
    ready.set()
    await asyncio.to_thread(_until_orphaned)


class SinkProcess(ChildServer):
    """A bare aiosmtpd sink that counts what it takes (and keeps nothing), readable from here."""

    what = "sink"

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.counters = SinkCounters(ctx.RawValue("q", 0), ctx.RawValue("q", 0), ctx.RawValue("d", 0.0))
        super().__init__(_sink_main, self.counters)

    @property
    def mails(self) -> int:
        return int(self.counters.mails.value)

    @property
    def connections(self) -> int:
        return int(self.counters.connections.value)

    @property
    def last_at(self) -> float:
        return float(self.counters.last_at.value)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until the sink has taken ``count`` mails in all; False if it has not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.mails < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


#: What the loopback DNS server answers: the sender domain passes SPF from loopback, has a DMARC record, and the
#: client's name and address match. Every other name (DNSBL and URIBL lookups included) is NXDOMAIN: not listed.
DNS_RECORDS = (
    (SENDER.partition("@")[2], "TXT", "v=spf1 ip4:127.0.0.0/8 -all"),
    ("_dmarc." + SENDER.partition("@")[2], "TXT", "v=DMARC1; p=none"),
    (CLIENT_HOSTNAME, "A", "127.0.0.1"),
    ("1.0.0.127.in-addr.arpa", "PTR", CLIENT_HOSTNAME),
)


def _dns_main(port: Any, ready: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from tests.support.dnsserver import LoopbackDNS

    server = LoopbackDNS().start()
    for name, qtype, value in DNS_RECORDS:
        server.add(name, qtype, value)
    port.value = server.port
    ready.set()
    _until_orphaned()


class DnsProcess(ChildServer):
    """The test suite's loopback DNS server (``tests/support/dnsserver.py``), so that checks never query the outside."""

    what = "DNS server"

    def __init__(self) -> None:
        super().__init__(_dns_main)

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("tests.support.dnsserver") is not None


# --- the peer: a bare Postfix relay --------------------------------------------------------------------------------

#: The daemons a relay-only Postfix needs (master.cf: service type private unpriv chroot wakeup maxproc command);
#: no chroot, so that the queue can live in the benchmark's temporary folder. The SMTP listener is added in front.
POSTFIX_SERVICES = """\
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class PostfixRelay:
    """A private Postfix instance (``postfix -c DIR``) in ``folder``: listens on a loopback port and relays
    everything to ``[127.0.0.1]:relay_port``, no filtering. Its settings are Postfix's defaults but for the limit
    of connections per client, lifted as for the ingress (the load comes from one address)."""

    def __init__(self, folder: Path, relay_port: int, max_connections: int) -> None:
        from tests.support.servers import free_port

        self.folder = folder
        self.port = free_port()
        conf, queue, data = folder / "etc", folder / "queue", folder / "data"
        for d in (conf, queue, data):
            d.mkdir(parents=True)
        folder.chmod(0o755)  # the daemons run as the postfix user
        shutil.chown(data, "postfix")
        for parent in folder.parents:  # the folder's parents must be searchable by that user too
            if parent.stat().st_mode & 0o001 == 0:
                raise RuntimeError(f"{parent} is not searchable by the postfix user (use --dir)")
        (conf / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
maillog_file = {folder}/postfix.log
maillog_file_prefixes = {folder}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = peer.bench.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay_port}
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtpd_client_connection_count_limit = {max_connections}
biff = no
""")
        (conf / "master.cf").write_text(f"127.0.0.1:{self.port} inet n - n - - smtpd\n{POSTFIX_SERVICES}")
        self.conf = conf

    def _postfix(self, command: str) -> None:
        done = subprocess.run([str(POSTFIX), "-c", str(self.conf), command], capture_output=True, text=True,
                              timeout=60)
        if done.returncode != 0:
            log = (self.folder / "postfix.log")
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"postfix {command} failed: {done.stderr.strip()} {tail}")

    def start(self) -> PostfixRelay:
        from tests.support.servers import port_open

        self._postfix("start")
        deadline = time.monotonic() + START_TIMEOUT
        while not port_open(self.port):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the Postfix relay did not open its port")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._postfix("stop")

    @property
    def master_pid(self) -> int:
        return int((self.folder / "queue" / "pid" / "master.pid").read_text().split()[0])


def postfix_missing() -> str | None:
    """Why the Postfix peer cannot run here, or None."""
    if not POSTFIX.exists():
        return f"{POSTFIX} is not installed (Debian: apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (its daemons change to the postfix user)"
    return None

