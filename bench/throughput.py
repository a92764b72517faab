"""Throughput of the SMTP ingress: accepted and delivered mails per second, accept latency, peak memory, ceiling.

Sets up a throwaway installation in a temporary folder (a private Redis; SQLite, or PostgreSQL with ``--postgres`` or
``--database-url``; one tenant whose domain's transport is a bare aiosmtpd sink), starts ``mailward smtp`` as a real
child process and sends N mails over C connections with aiosmtplib, each connection reusing itself for its share.
Then it sends the same load straight to a bare aiosmtpd sink: ingress/bare is the "ceiling ratio", how close the
ingress gets to what aiosmtpd alone does on this machine with this load generator. With ``--peer-postfix`` the same
load also goes through a bare Postfix relay (a private instance of Debian's postfix) to the same kind of sink:
Mailward's delivered/s over Postfix's. CPU and peak memory are measured over the ingress's whole process tree, so
a multi-process ingress counts whole. Prints figures; never pass/fail.

The sinks (and the loopback DNS server the checks resolve on) run in processes of their own, not in threads of this
one, so that they do not share a GIL with the load generator: on a small machine the Python processes (load
generator, ingress, sink) each get a share of the cores, and the CPU line of the report shows which ran out of it.

    .venv/bin/python bench/throughput.py -n 2000 -c 50
    .venv/bin/python bench/throughput.py -n 2000 -c 50 --peer-postfix    # as root, with Debian's postfix
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP as AioSMTP

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the test suite's server helpers (tests/servers.py) live here
    sys.path.insert(0, str(ROOT))

#: The tenant and domain the load is addressed to, and where it comes from.
TENANT = "Bench"
DOMAIN = "bench.test"
SENDER = "load@sender.bench.example"
CLIENT_HOSTNAME = "client.sender.bench.example"
#: Distinct recipients the mails cycle through (all in DOMAIN, one per mail).
RECIPIENTS = 100
#: Seconds one SMTP step of the load generator may take before the mail counts as failed.
CLIENT_TIMEOUT = 60.0
#: Seconds to wait for the ingress to open its port, and for a sink process to start. The ingress opens it once
#: SpamAssassin's rules are compiled: about 30 s cold on 2 cores (each run's data folder is new), more when busy.
START_TIMEOUT = 180.0
#: Lines of the ingress log shown when it fails to start.
LOG_TAIL = 30
#: A check that failed or timed out, as smtp/pipeline.py logs it.
CHECK_TROUBLE = re.compile(r"check \S+ (?:failed|timed out)")
#: Connections per client address the ingress is allowed beyond the load's own (a reconnect racing a close).
PER_IP_ROOM = 10
#: Debian's Postfix, the peer of ``--peer-postfix``.
POSTFIX = Path("/usr/sbin/postfix")
#: Seconds of CPU time per clock tick in /proc/PID/stat.
CLOCK_TICK = 1.0 / os.sysconf("SC_CLK_TCK")


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
    from tests.dnsserver import LoopbackDNS

    server = LoopbackDNS().start()
    for name, qtype, value in DNS_RECORDS:
        server.add(name, qtype, value)
    port.value = server.port
    ready.set()
    _until_orphaned()


class DnsProcess(ChildServer):
    """The test suite's loopback DNS server (``tests/dnsserver.py``), so that checks never query the outside."""

    what = "DNS server"

    def __init__(self) -> None:
        super().__init__(_dns_main)

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("tests.dnsserver") is not None


# --- the load generator ----------------------------------------------------------------------------------------

def make_body(size: int) -> bytes:
    """Header block tail and a plain-text body, so that a mail with its per-mail headers is about ``size`` bytes."""
    head = (f"From: Load <{SENDER}>\r\nSubject: throughput\r\nDate: {formatdate()}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    per_mail = len(_mail_head(0, "x" * 8, f"user0@{DOMAIN}"))
    room = max(size - len(head) - per_mail, 0)
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    body = (line * (room // len(line) + 1))[:room]
    if room >= 2:
        body = body[:-2] + b"\r\n"
    return head + body


def _mail_head(index: int, run_id: str, rcpt: str) -> bytes:
    return f"Message-ID: <{index}.{run_id}@bench.example>\r\nTo: <{rcpt}>\r\n".encode()


@dataclass
class LoadResult:
    """What one load run measured. Times are time.monotonic(); latencies are seconds."""

    mails: int
    connections: int
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    finished: float = 0.0  # when the last mail was accepted
    client_cpu: float = 0.0  # CPU seconds of this process while the mails were sent

    @property
    def accepted(self) -> int:
        return len(self.latencies)

    @property
    def seconds(self) -> float:
        return max(self.finished - self.started, 1e-9)

    @property
    def per_s(self) -> float:
        return self.accepted / self.seconds

    def percentile_ms(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))  # nearest rank
        return ordered[rank] * 1000


async def _connection(port: int, domain: str, indices: range, body: bytes, run_id: str, result: LoadResult,
                      connected: asyncio.Queue[None], go: asyncio.Event) -> None:
    """One client connection: connect and EHLO, wait for the start, then send its mails one after the other."""

    def new_client() -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=CLIENT_TIMEOUT,
                               local_hostname=CLIENT_HOSTNAME, start_tls=False)

    client = new_client()
    try:
        await client.connect()
        await client.ehlo()
    finally:
        connected.put_nowait(None)
    await go.wait()
    try:
        for i in indices:
            rcpt = f"user{i % RECIPIENTS}@{domain}"
            data = _mail_head(i, run_id, rcpt) + body
            try:
                if not client.is_connected:
                    client = new_client()
                    await client.connect()
                    await client.ehlo()
                started = time.monotonic()
                await client.mail(SENDER, options=[f"SIZE={len(data)}"])
                await client.rcpt(rcpt)
                await client.data(data)
                done = time.monotonic()
                result.latencies.append(done - started)
                result.finished = max(result.finished, done)
            except aiosmtplib.SMTPResponseException as exc:
                result.errors[f"{exc.code} {exc.message[:60]}"] += 1
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await client.rset()
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                result.errors[type(exc).__name__] += 1
                client.close()
    finally:
        if client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await client.quit()
        client.close()


async def _load(port: int, domain: str, mails: int, connections: int, body: bytes, run_id: str) -> LoadResult:
    connections = max(1, min(connections, mails))
    result = LoadResult(mails, connections)
    connected: asyncio.Queue[None] = asyncio.Queue()
    go = asyncio.Event()
    share, extra = divmod(mails, connections)
    tasks, start = [], 0
    for c in range(connections):
        n = share + (1 if c < extra else 0)
        tasks.append(asyncio.create_task(
            _connection(port, domain, range(start, start + n), body, run_id, result, connected, go)))
        start += n
    for _ in tasks:  # every connection is open (or failed) before the clock starts
        await connected.get()
    cpu = time.process_time()
    result.started = time.monotonic()
    go.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    result.client_cpu = time.process_time() - cpu
    if not result.finished:  # nothing was accepted
        result.finished = time.monotonic()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.errors[f"connection failed: {type(outcome).__name__}: {outcome}"] += 1
    return result


def send_load(port: int, domain: str, mails: int, connections: int, body: bytes, run_id: str) -> LoadResult:
    """Send ``mails`` mails to ``port`` over ``connections`` concurrent connections; measure each accept."""
    return asyncio.run(_load(port, domain, mails, connections, body, run_id))


# --- the installation ------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) * CLOCK_TICK  # utime and stime, fields 14 and 15 of stat(5)


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a running process, in MiB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant (from the parent ids in /proc/PID/stat), root first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        tree.append(pid)
        todo.extend(sorted(children.get(pid, ())))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and its descendants: each live one's utime+stime plus the cutime+cstime of the
    children it already reaped, so that a multi-process ingress (or a child that exited) is counted whole."""
    total = 0.0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15]) * CLOCK_TICK  # utime, stime, cutime, cstime: stat(5) 14-17
    return total


def tree_peak_rss_mb(root: int) -> dict[int, float]:
    """VmHWM in MiB of ``root`` and each live descendant, by pid."""
    return {pid: peak_rss_mb(pid) for pid in process_tree(root)}


def code_revision() -> str:
    """The commit the measured code is at, with "-dirty" for uncommitted changes (figures move with the code)."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown (not a git checkout)"


def filesystem_of(path: Path) -> str:
    """The type of the filesystem ``path`` lives on (SQLite's fsync cost depends on it)."""
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


class Installation:
    """A throwaway Mailward: data dir, Redis, database, one tenant and domain, and its processes."""

    def __init__(self, workdir: Path, stack: contextlib.ExitStack, *, database_url: str | None,
                 postgres: bool, extra_env: dict[str, str]) -> None:
        from tests.servers import free_port, start_postgres, start_redis

        self.workdir = workdir
        self.stack = stack
        redis_server = start_redis()
        stack.callback(redis_server.stop)
        self.database = "SQLite"
        if postgres:
            pg = start_postgres()
            stack.callback(pg.stop)
            database_url = pg.url()
        if database_url:
            self.database = "PostgreSQL" if database_url.startswith("postgres") else database_url.split(":", 1)[0]
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWARD_")}
        env.update({
            "MAILWARD_DATA_DIR": str(workdir / "var"),
            "MAILWARD_REDIS_URL": redis_server.url,
            "MAILWARD_HOSTNAME": "mx.bench.test",
            "MAILWARD_SMTP_LISTEN": f"127.0.0.1:{self.port}",
            "MAILWARD_WEB_LISTEN": f"127.0.0.1:{free_port()}",
            "MAILWARD_SECRET_KEY": "bench-secret-key-not-for-production",
            "MAILWARD_LOG_LEVEL": "INFO",
        })
        if database_url:
            env["MAILWARD_DATABASE_URL"] = database_url
        env.update(extra_env)
        self.env = env

    def cli(self, *args: str) -> str:
        from tests.servers import run_cli

        done = run_cli(list(args), self.env)
        if done.returncode != 0:
            raise RuntimeError(f"mailward {' '.join(args)} failed: {(done.stderr or done.stdout).strip()}")
        return done.stdout.strip()

    def set_up(self, transport_port: int, tenant: str, domain: str) -> None:
        self.cli("db", "upgrade")
        self.cli("tenant", "create", tenant)
        self.cli("domain", "add", tenant, domain, "--transport", f"127.0.0.1:{transport_port}", "--tls", "none")

    def start(self, command: str) -> Any:
        """Start ``mailward COMMAND`` as a child process; it is stopped when the benchmark ends."""
        from tests.servers import Process

        proc = Process([command], self.env, self.workdir / f"{command}.log").start()
        self.stack.callback(proc.stop)
        return proc

    def start_ingress(self) -> Any:
        from tests.servers import port_open

        proc = self.start("smtp")
        deadline = time.monotonic() + START_TIMEOUT
        while not port_open(self.port):
            if proc.proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(proc.log().splitlines()[-LOG_TAIL:])
                raise RuntimeError(f"the ingress did not start; its log ends with:\n{tail}")
            time.sleep(0.05)
        return proc


# --- the run ---------------------------------------------------------------------------------------------------

@dataclass
class IngressFigures:
    load: LoadResult
    delivered: int
    delivered_per_s: float
    rss_mb: float  # the largest VmHWM of one ingress process
    cpu_ms_per_mail: float  # ingress CPU (every process of it) from the first mail sent to the last delivered


def _pct(cpu: float, seconds: float) -> str:
    return f"{100 * cpu / seconds:.0f}%"


def _report(result: LoadResult, what: str = "accept latency") -> None:
    print(f"  accepted {result.accepted}/{result.mails} in {result.seconds:.2f}s = {result.per_s:.1f}/s; "
          f"{what} p50 {result.percentile_ms(50):.1f} ms, p99 {result.percentile_ms(99):.1f} ms, "
          f"max {result.percentile_ms(100):.1f} ms")
    for error, count in result.errors.most_common(5):
        print(f"    not accepted: {count} x {error}")


def run_ingress(args: argparse.Namespace, stack: contextlib.ExitStack, workdir: Path, body: bytes) -> IngressFigures:
    """Mailward between the load generator and a sink: accepted/s, delivered/s, latency, memory."""
    sink = SinkProcess().start()
    stack.callback(sink.stop)
    suffix = f"-{os.urandom(3).hex()}" if args.database_url else ""  # a given database may have seen a run before
    tenant, domain = TENANT + suffix, DOMAIN.replace(".", f"{suffix}.", 1)
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    # The default per-IP cap (20) would refuse the load generator's connections, which all come from 127.0.0.1.
    extra_env.setdefault("MAILWARD_SMTP_MAX_CONNECTIONS_PER_IP", str(max(20, args.connections + PER_IP_ROOM)))
    if "MAILWARD_DNS" in extra_env:
        resolver = f"DNS {extra_env['MAILWARD_DNS']}"
    elif DnsProcess.available():
        dns = DnsProcess().start()
        stack.callback(dns.stop)
        extra_env["MAILWARD_DNS"] = f"127.0.0.1:{dns.port}"
        resolver = f"loopback DNS on 127.0.0.1:{dns.port}"
    else:
        resolver = "the system's DNS resolver (no tests/dnsserver.py)"
    checks = []
    if args.clamd:
        from tests.clamd import start_clamd

        clamd = start_clamd()
        stack.callback(clamd.stop)
        extra_env["MAILWARD_CLAMD"] = clamd.address
        checks.append(f"clamd on {clamd.address}")
    mw = Installation(workdir, stack, database_url=args.database_url, postgres=args.postgres, extra_env=extra_env)
    mw.set_up(sink.port, tenant, domain)
    if args.train:
        spam, ham = args.train
        mw.cli("bayes", "train", tenant, "--spam", str(spam), "--ham", str(ham))
        checks.append(f"Bayes trained on {spam.name} + {ham.name}")
    if checks:
        print("checks on: every registered check, " + ", ".join(checks))
    ingress = mw.start_ingress()
    pid = ingress.proc.pid
    if args.worker:
        mw.start("worker")
        mw.start("scheduler")
    print(f"ingress: mailward smtp on 127.0.0.1:{mw.port} (pid {pid}), {mw.database}, data in {workdir} "
          f"({filesystem_of(workdir)}), {resolver}, transport {domain} -> aiosmtpd sink on 127.0.0.1:{sink.port}"
          + (", worker and scheduler running" if args.worker else ""))
    if args.warmup:
        warm = send_load(mw.port, domain, args.warmup, args.connections, body, "warmup")
        sink.wait_for(warm.accepted, args.drain_timeout)
    base_mails, base_conns = sink.mails, sink.connections
    cpu_start, cpu_sink = tree_cpu_seconds(pid), cpu_seconds(sink.pid)
    result = send_load(mw.port, domain, args.mails, args.connections, body, "run")
    cpu_ingress = tree_cpu_seconds(pid) - cpu_start
    all_there = sink.wait_for(base_mails + result.accepted, args.drain_timeout)
    cpu_sink = cpu_seconds(sink.pid) - cpu_sink
    cpu_total = tree_cpu_seconds(pid) - cpu_start
    cpu_ms = 1000 * cpu_total / result.accepted if result.accepted else float("nan")
    delivered = sink.mails - base_mails
    delivered_s = max(sink.last_at - result.started, 1e-9)
    delivered_per_s = delivered / delivered_s if delivered else 0.0
    rss_by_pid = tree_peak_rss_mb(pid)
    rss = max(rss_by_pid.values())
    _report(result)
    late = "" if all_there else f" (gave up waiting after {args.drain_timeout:g}s)"
    print(f"  delivered {delivered}/{result.accepted} to the sink in {delivered_s:.2f}s = {delivered_per_s:.1f}/s"
          f"{late}, over {sink.connections - base_conns} new downstream connection(s)")
    print(f"  CPU (one core = 100%): ingress ({len(rss_by_pid)} process(es)) {_pct(cpu_ingress, result.seconds)} "
          "and load generator "
          f"{_pct(result.client_cpu, result.seconds)} while sending; "
          f"sink {_pct(cpu_sink, delivered_s)} until delivered")
    print(f"  ingress CPU per mail, every ingress process from the first mail sent to the last delivered: "
          f"{cpu_ms:.2f} ms ({cpu_total:.2f} CPU seconds for {result.accepted} mails)")
    print("  peak RSS per ingress process (VmHWM): "
          + ", ".join(f"{mib:.1f} MiB (pid {p}{', supervisor' if p == pid and len(rss_by_pid) > 1 else ''})"
                      for p, mib in rss_by_pid.items()))
    trouble = Counter(m.group(0) for m in CHECK_TROUBLE.finditer(ingress.log()))
    if trouble:
        print("  checks that failed or timed out in the ingress since it started, warm-up included (those mails were "
              "scored without them): "
              + ", ".join(f"{n} x {what}" for what, n in trouble.most_common()))
    print(f"  mailward queue list: {mw.cli('queue', 'list').splitlines()[-1]}")
    return IngressFigures(result, delivered, delivered_per_s, rss, cpu_ms)


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
        from tests.servers import free_port

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
        from tests.servers import port_open

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


@dataclass
class PeerFigures:
    load: LoadResult
    delivered: int
    delivered_per_s: float
    cpu_ms_per_mail: float


def postfix_missing() -> str | None:
    """Why the Postfix peer cannot run here, or None."""
    if not POSTFIX.exists():
        return f"{POSTFIX} is not installed (Debian: apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (its daemons change to the postfix user)"
    return None


def run_postfix(args: argparse.Namespace, stack: contextlib.ExitStack, body: bytes) -> PeerFigures:
    """The same load through a bare Postfix relay to the same kind of sink: Postfix's accepted and delivered/s."""
    sink = SinkProcess().start()
    stack.callback(sink.stop)
    folder = Path(tempfile.mkdtemp(prefix="mw-bench-postfix-", dir=args.dir))  # beside the private workdir: its
    stack.callback(shutil.rmtree, folder, ignore_errors=True)  # daemons, as the postfix user, must reach the queue
    relay = PostfixRelay(folder, sink.port, max(50, args.connections + PER_IP_ROOM)).start()
    stack.callback(relay.stop)
    master = relay.master_pid
    print(f"peer: bare Postfix relay on 127.0.0.1:{relay.port} (master pid {master}, Postfix defaults, no "
          f"filtering, queue in {folder}) -> aiosmtpd sink on 127.0.0.1:{sink.port}")
    if args.warmup:
        warm = send_load(relay.port, DOMAIN, args.warmup, args.connections, body, "warmup")
        sink.wait_for(warm.accepted, args.drain_timeout)
    base_mails = sink.mails
    cpu_start = tree_cpu_seconds(master)
    result = send_load(relay.port, DOMAIN, args.mails, args.connections, body, "postfix")
    cpu_sending = tree_cpu_seconds(master) - cpu_start
    all_there = sink.wait_for(base_mails + result.accepted, args.drain_timeout)
    cpu_total = tree_cpu_seconds(master) - cpu_start
    delivered = sink.mails - base_mails
    delivered_s = max(sink.last_at - result.started, 1e-9)
    delivered_per_s = delivered / delivered_s if delivered else 0.0
    cpu_ms = 1000 * cpu_total / result.accepted if result.accepted else float("nan")
    _report(result)
    late = "" if all_there else f" (gave up waiting after {args.drain_timeout:g}s)"
    print(f"  delivered {delivered}/{result.accepted} to the sink in {delivered_s:.2f}s = {delivered_per_s:.1f}/s"
          f"{late}")
    print(f"  CPU (one core = 100%): Postfix (every process) {_pct(cpu_sending, result.seconds)} while sending; "
          f"{cpu_ms:.2f} ms per mail from the first mail sent to the last delivered")
    return PeerFigures(result, delivered, delivered_per_s, cpu_ms)


def run_bare(args: argparse.Namespace, stack: contextlib.ExitStack, body: bytes) -> LoadResult:
    """The same load straight to a bare aiosmtpd sink: the ceiling of this machine and load generator."""
    sink = SinkProcess().start()
    stack.callback(sink.stop)
    print(f"bare: aiosmtpd sink on 127.0.0.1:{sink.port} (pid {sink.pid}), no Mailward")
    if args.warmup:
        send_load(sink.port, DOMAIN, args.warmup, args.connections, body, "warmup")
    cpu_sink = cpu_seconds(sink.pid)
    result = send_load(sink.port, DOMAIN, args.mails, args.connections, body, "bare")
    cpu_sink = cpu_seconds(sink.pid) - cpu_sink
    _report(result, "latency")
    print(f"  CPU (one core = 100%): sink {_pct(cpu_sink, result.seconds)}, "
          f"load generator {_pct(result.client_cpu, result.seconds)}")
    return result


def _env_setting(value: str) -> str:
    name, eq, _ = value.partition("=")
    if not eq or not name.startswith("MAILWARD_"):
        raise argparse.ArgumentTypeError(f"{value!r}: expected MAILWARD_NAME=VALUE")
    return value


def _positive(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive whole number")
    return n


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/throughput.py",
        description="Throughput of the Mailward SMTP ingress (a real `mailward smtp` process on a throwaway "
                    "installation, delivering to an aiosmtpd sink), then of a bare aiosmtpd sink under the same load. "
                    "Prints figures and a one-line summary; never part of pass/fail.",
    )
    parser.add_argument("-n", "--mails", type=_positive, default=5000,
                        help="mails to send in each run (default: %(default)s)")
    parser.add_argument("-c", "--connections", type=_positive, default=50,
                        help="concurrent client connections; each sends its share of the mails one after the other "
                             "(default: %(default)s)")
    parser.add_argument("--size", type=_positive, default=10240, help="bytes per mail (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="mails sent first and left out of the figures (default: %(default)s)")
    db = parser.add_mutually_exclusive_group()
    db.add_argument("--database-url", metavar="URL",
                    help="a throwaway database (e.g. postgresql+psycopg://...); default: SQLite in the temp dir. "
                         "The benchmark migrates it and leaves its tenant and mails in it")
    db.add_argument("--postgres", action="store_true",
                    help="start a private PostgreSQL 15 for the run (Debian's postgresql package)")
    parser.add_argument("--worker", action="store_true",
                        help="also run `mailward worker` and `mailward scheduler` (they retry what the fast path "
                             "could not deliver; they compete for the CPU)")
    parser.add_argument("--env", action="append", default=[], type=_env_setting, metavar="MAILWARD_NAME=VALUE",
                        help="extra setting for every Mailward process, e.g. MAILWARD_LOG_LEVEL=WARNING; repeatable")
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="seconds to wait for accepted mails to reach the sink (default: %(default)s)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to make the temporary folder (the SQLite file's filesystem matters)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, database)")
    parser.add_argument("--clamd", action="store_true",
                        help="scan for viruses with a real clamd (Debian clamav-daemon, test signatures)")
    parser.add_argument("--peer-postfix", action="store_true",
                        help="also run the load through a bare Postfix relay (Debian's postfix, a private instance "
                             "in the temporary folder; needs root) and print Mailward/Postfix delivered/s")
    parser.add_argument("--train", nargs=2, type=Path, metavar=("SPAM_DIR", "HAM_DIR"),
                        help="train the tenant's Bayes first (e.g. the SpamAssassin corpus folders), so it scores")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def workdir_of(parent: Path | None, keep: bool) -> Iterator[Path]:
    """A temporary folder for one run (under ``parent`` when given), removed afterwards unless ``keep``."""
    path = Path(tempfile.mkdtemp(prefix="mw-bench-", dir=parent))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a kill stops what we started too, like Ctrl-C
    body = make_body(args.size)
    mail_size = len(_mail_head(0, "run", f"user0@{DOMAIN}") + body)
    print(f"Mailward throughput: {args.mails} mails of {mail_size} bytes over {args.connections} connections "
          f"(after {args.warmup} warm-up mails); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
          f"(other work on the machine skews the figures); code {code_revision()}")
    try:
        with workdir_of(args.dir, args.keep) as workdir:
            with contextlib.ExitStack() as stack:  # the installation is gone before the bare run starts
                ingress = run_ingress(args, stack, workdir, body)
            peer: PeerFigures | None = None
            if args.peer_postfix:
                why = postfix_missing()
                if why:
                    print(f"peer run skipped: {why}")
                else:
                    with contextlib.ExitStack() as stack:
                        peer = run_postfix(args, stack, body)
            with contextlib.ExitStack() as stack:
                bare = run_bare(args, stack, body)
    except KeyboardInterrupt:
        print("interrupted; everything the benchmark started is stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    figures = Figures(ingress.load.per_s, ingress.delivered_per_s, ingress.load.percentile_ms(50),
                      ingress.load.percentile_ms(99), ingress.rss_mb, ingress.cpu_ms_per_mail, bare.per_s,
                      peer.delivered_per_s if peer else None)
    print(f"ceiling ratio (ingress accepted/s over bare aiosmtpd accepted/s): {figures.ratio:.2f}")
    if peer is not None:
        print(f"Mailward/Postfix (delivered/s over a bare Postfix relay's delivered/s): {figures.postfix_ratio:.2f}")
    print(figures.summary())
    return 0


@dataclass
class Figures:
    accepted_per_s: float
    delivered_per_s: float
    p50_ms: float
    p99_ms: float
    rss_mb: float
    cpu_ms_per_mail: float
    bare_per_s: float
    postfix_delivered_per_s: float | None = None

    @property
    def ratio(self) -> float:
        return self.accepted_per_s / self.bare_per_s if self.bare_per_s else float("nan")

    @property
    def postfix_ratio(self) -> float:
        peer = self.postfix_delivered_per_s
        return self.delivered_per_s / peer if peer else float("nan")

    def summary(self) -> str:
        line = (f"accepted_per_s={self.accepted_per_s:.1f} delivered_per_s={self.delivered_per_s:.1f} "
                f"p50_ms={self.p50_ms:.1f} p99_ms={self.p99_ms:.1f} rss_mb={self.rss_mb:.1f} "
                f"cpu_ms_per_mail={self.cpu_ms_per_mail:.2f} bare_per_s={self.bare_per_s:.1f} ratio={self.ratio:.2f}")
        if self.postfix_delivered_per_s is not None:
            line += (f" postfix_delivered_per_s={self.postfix_delivered_per_s:.1f} "
                     f"postfix_ratio={self.postfix_ratio:.2f}")
        return line


if __name__ == "__main__":
    sys.exit(main())
