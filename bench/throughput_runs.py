"""The runs of bench/throughput.py, each printing what it measured: the ingress (peak load, then an open-loop phase
at a fixed rate and idle connections when asked), the bare Postfix relay of ``--peer-postfix``, and the bare aiosmtpd
sink that gives the ceiling.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procstat import cpu_seconds, process_tree, socket_count, tree_cpu_seconds, tree_peak_rss_mb, tree_rss_mb
from bench.throughput_install import Installation, Tenancy, filesystem_of
from bench.throughput_load import (
    DOMAIN,
    TENANT,
    IdleResult,
    LoadResult,
    hold_idle,
    send_at_rate,
    send_load,
)
from bench.throughput_peers import DnsProcess, PostfixRelay, SinkProcess

#: A check that failed or timed out, as smtp/pipeline.py logs it.
CHECK_TROUBLE = re.compile(r"check \S+ (?:failed|timed out)")
#: Connections per client address the ingress is allowed beyond the load's own (a reconnect racing a close).
PER_IP_ROOM = 10


@dataclass
class RateFigures:
    """The open-loop phase: mails sent at ``rate`` per second on a fixed schedule."""

    rate: float
    load: LoadResult
    delivered: int


@dataclass
class IdleFigures:
    """Idle connections held open, and each ingress process's resident memory before and with them."""

    idle: IdleResult
    rss_before: dict[int, float]  # VmRSS in MiB by pid, before they were opened
    rss_with: dict[int, float]  # ... with them all open
    sockets_before: dict[int, int]
    sockets_with: dict[int, int]

    @property
    def rss_mb(self) -> float:
        """The largest resident memory of one ingress process with the connections open."""
        return max(self.rss_with.values())

    @property
    def kib_per_connection(self) -> float:
        grown = sum(self.rss_with.values()) - sum(self.rss_before.get(p, 0.0) for p in self.rss_with)
        return 1024 * grown / self.idle.opened if self.idle.opened else float("nan")


@dataclass
class IngressFigures:
    load: LoadResult
    delivered: int
    delivered_per_s: float
    rss_mb: float  # the largest VmHWM of one ingress process
    cpu_ms_per_mail: float  # ingress CPU (every process of it) from the first mail sent to the last delivered
    tenancy: Tenancy
    rate: RateFigures | None = None
    idle: IdleFigures | None = None


def pct(cpu: float, seconds: float) -> str:
    return f"{100 * cpu / seconds:.0f}%"


def report(result: LoadResult, what: str = "accept latency") -> None:
    print(f"  accepted {result.accepted}/{result.mails} in {result.seconds:.2f}s = {result.per_s:.1f}/s; "
          f"{what} p50 {result.percentile_ms(50):.1f} ms, p99 {result.percentile_ms(99):.1f} ms, "
          f"max {result.percentile_ms(100):.1f} ms")
    for error, count in result.errors.most_common(5):
        print(f"    not accepted: {count} x {error}")


def per_ip_cap(args: argparse.Namespace) -> int:
    """Connections one client may hold: the load's and the idle ones all come from 127.0.0.1, and every one may land
    on the same ingress process (the caps count per process)."""
    return max(20, args.connections + PER_IP_ROOM, args.idle_connections + PER_IP_ROOM)


def run_ingress(args: argparse.Namespace, stack: contextlib.ExitStack, workdir: Path, body: bytes) -> IngressFigures:
    """Mailward between the load generator and a sink: accepted/s, delivered/s, latency, memory; then the rate
    phase and the idle connections when asked."""
    sink = SinkProcess().start()
    stack.callback(sink.stop)
    mw, ingress, tenancy = _install(args, stack, workdir, sink)
    pid = ingress.proc.pid
    domains = tenancy.load_domains
    if args.warmup:
        warm = send_load(mw.port, domains, args.warmup, args.connections, body, "warmup")
        sink.wait_for(warm.accepted, args.drain_timeout)
    base_mails, base_conns = sink.mails, sink.connections
    cpu_start, cpu_sink = tree_cpu_seconds(pid), cpu_seconds(sink.pid)
    result = send_load(mw.port, domains, args.mails, args.connections, body, "run")
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
    report(result)
    late = "" if all_there else f" (gave up waiting after {args.drain_timeout:g}s)"
    print(f"  delivered {delivered}/{result.accepted} to the sink in {delivered_s:.2f}s = {delivered_per_s:.1f}/s"
          f"{late}, over {sink.connections - base_conns} new downstream connection(s)")
    print(f"  CPU (one core = 100%): ingress ({len(rss_by_pid)} process(es)) {pct(cpu_ingress, result.seconds)} "
          "and load generator "
          f"{pct(result.client_cpu, result.seconds)} while sending; "
          f"sink {pct(cpu_sink, delivered_s)} until delivered")
    print(f"  ingress CPU per mail, every ingress process from the first mail sent to the last delivered: "
          f"{cpu_ms:.2f} ms ({cpu_total:.2f} CPU seconds for {result.accepted} mails)")
    print("  peak RSS per ingress process (VmHWM): "
          + ", ".join(f"{mib:.1f} MiB (pid {p}{', supervisor' if p == pid and len(rss_by_pid) > 1 else ''})"
                      for p, mib in rss_by_pid.items()))
    figures = IngressFigures(result, delivered, delivered_per_s, rss, cpu_ms, tenancy)
    rate = args.rate or (result.per_s / 2 if args.half_peak else None)
    if rate:
        figures.rate = _rate_phase(args, mw.port, pid, sink, domains, body, rate)
    if args.idle_connections:
        figures.idle = _idle_phase(args.idle_connections, mw.port, pid)
    trouble = Counter(m.group(0) for m in CHECK_TROUBLE.finditer(ingress.log()))
    if trouble:
        print("  checks that failed or timed out in the ingress since it started, warm-up included (those mails were "
              "scored without them): "
              + ", ".join(f"{n} x {what}" for what, n in trouble.most_common()))
    print(f"  mailward queue list: {mw.cli('queue', 'list').splitlines()[-1]}")
    return figures


def _install(args: argparse.Namespace, stack: contextlib.ExitStack, workdir: Path,
             sink: SinkProcess) -> tuple[Installation, Any, Tenancy]:
    """The installation, its tenants and domains, and its running ingress (plus worker and scheduler if asked)."""
    suffix = f"-{os.urandom(3).hex()}" if args.database_url else ""  # a given database may have seen a run before
    tenant, domain = TENANT + suffix, DOMAIN.replace(".", f"{suffix}.", 1)
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    # The default per-IP cap (20) would refuse the load generator's connections, which all come from 127.0.0.1.
    extra_env.setdefault("MAILWARD_SMTP_MAX_CONNECTIONS_PER_IP", str(per_ip_cap(args)))
    if "MAILWARD_DNS" in extra_env:
        resolver = f"DNS {extra_env['MAILWARD_DNS']}"
    elif DnsProcess.available():
        dns = DnsProcess().start()
        stack.callback(dns.stop)
        extra_env["MAILWARD_DNS"] = f"127.0.0.1:{dns.port}"
        resolver = f"loopback DNS on 127.0.0.1:{dns.port}"
    else:
        resolver = "the system's DNS resolver (no tests/support/dnsserver.py)"
    checks = []
    if args.clamd:
        from tests.support.clamd import start_clamd

        clamd = start_clamd()
        stack.callback(clamd.stop)
        extra_env["MAILWARD_CLAMD"] = clamd.address
        checks.append(f"clamd on {clamd.address}")
    mw = Installation(workdir, stack, database_url=args.database_url, postgres=args.postgres, extra_env=extra_env)
    mw.set_up(sink.port, tenant, domain)
    tenancy = mw.populate(sink.port, tenant, domain, suffix, tenants=args.tenants, domains=args.domains,
                          load_domains=args.load_domains)
    if args.train:
        spam, ham = args.train
        mw.cli("bayes", "train", tenant, "--spam", str(spam), "--ham", str(ham))
        checks.append(f"Bayes trained on {spam.name} + {ham.name}")
    if checks:
        print("checks on: every registered check, " + ", ".join(checks))
    ingress = mw.start_ingress()
    if args.worker:
        mw.start("worker")
        mw.start("scheduler")
    print(f"ingress: mailward smtp on 127.0.0.1:{mw.port} (pid {ingress.proc.pid}), {mw.database}, data in {workdir} "
          f"({filesystem_of(workdir)}), {resolver}, transport {domain} -> aiosmtpd sink on 127.0.0.1:{sink.port}"
          + (", worker and scheduler running" if args.worker else ""))
    if tenancy.tenants > 1 or tenancy.domains > 1:
        print(f"tenancy: {tenancy.tenants} tenants owning {tenancy.domains} domains in all, every one routed to the "
              f"sink (created in bulk in {tenancy.seconds:.1f}s); the load goes to {len(tenancy.load_domains)} "
              f"domain(s) of {tenancy.load_tenants} tenant(s) in turn")
    return mw, ingress, tenancy


def _rate_phase(args: argparse.Namespace, port: int, pid: int, sink: SinkProcess, domains: list[str], body: bytes,
                rate: float) -> RateFigures:
    """Open loop: ``args.mails`` mails on a fixed schedule of ``rate`` per second; accept latency at that rate."""
    how = "half of the peak accepted/s" if not args.rate else "--rate"
    print(f"rate: {args.mails} mails at {rate:.1f}/s ({how}) on a fixed schedule, over a pool of at most "
          f"{args.connections} connections")
    base_mails = sink.mails
    cpu_start = tree_cpu_seconds(pid)
    result = send_at_rate(port, domains, args.mails, rate, args.connections, body, "rate")
    cpu_ingress = tree_cpu_seconds(pid) - cpu_start
    sink.wait_for(base_mails + result.accepted, args.drain_timeout)
    delivered = sink.mails - base_mails
    report(result)
    print(f"  start lag (scheduled start to MAIL FROM; waiting for a free connection): p50 "
          f"{result.lag_percentile_ms(50):.1f} ms, p99 {result.lag_percentile_ms(99):.1f} ms, "
          f"max {result.lag_percentile_ms(100):.1f} ms")
    print(f"  delivered {delivered}/{result.accepted} to the sink; CPU (one core = 100%): ingress "
          f"{pct(cpu_ingress, result.seconds)}, load generator {pct(result.client_cpu, result.seconds)} while sending")
    return RateFigures(rate, result, delivered)


def _idle_phase(count: int, port: int, pid: int) -> IdleFigures:
    """``count`` connections that said EHLO and then nothing: each ingress process's resident memory with them."""

    def measure() -> tuple[dict[int, float], dict[int, int]]:
        return tree_rss_mb(pid), {p: socket_count(p) for p in process_tree(pid)}

    rss_before, sockets_before = measure()
    idle, (rss_with, sockets_with) = hold_idle(port, count, measure)
    figures = IdleFigures(idle, rss_before, rss_with, sockets_before, sockets_with)
    print(f"idle: {idle.opened}/{count} connections open (greeting, EHLO, then nothing) in {idle.seconds:.1f}s")
    for error, n in idle.errors.most_common(5):
        print(f"    not opened: {n} x {error}")
    print("  RSS per ingress process (VmRSS) with them open: "
          + ", ".join(f"{mib:.1f} MiB (pid {p}{', supervisor' if p == pid and len(rss_with) > 1 else ''}, "
                      f"{mib - rss_before.get(p, mib):+.1f} MiB, {sockets_with.get(p, 0) - sockets_before.get(p, 0):+d}"
                      " sockets)"
                      for p, mib in rss_with.items()))
    print(f"  {figures.kib_per_connection:.1f} KiB per idle connection (all ingress processes' growth over those "
          "opened; less when their sessions fit in memory the load left free)")
    return figures



@dataclass
class PeerFigures:
    load: LoadResult
    delivered: int
    delivered_per_s: float
    cpu_ms_per_mail: float


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
        warm = send_load(relay.port, [DOMAIN], args.warmup, args.connections, body, "warmup")
        sink.wait_for(warm.accepted, args.drain_timeout)
    base_mails = sink.mails
    cpu_start = tree_cpu_seconds(master)
    result = send_load(relay.port, [DOMAIN], args.mails, args.connections, body, "postfix")
    cpu_sending = tree_cpu_seconds(master) - cpu_start
    all_there = sink.wait_for(base_mails + result.accepted, args.drain_timeout)
    cpu_total = tree_cpu_seconds(master) - cpu_start
    delivered = sink.mails - base_mails
    delivered_s = max(sink.last_at - result.started, 1e-9)
    delivered_per_s = delivered / delivered_s if delivered else 0.0
    cpu_ms = 1000 * cpu_total / result.accepted if result.accepted else float("nan")
    report(result)
    late = "" if all_there else f" (gave up waiting after {args.drain_timeout:g}s)"
    print(f"  delivered {delivered}/{result.accepted} to the sink in {delivered_s:.2f}s = {delivered_per_s:.1f}/s"
          f"{late}")
    print(f"  CPU (one core = 100%): Postfix (every process) {pct(cpu_sending, result.seconds)} while sending; "
          f"{cpu_ms:.2f} ms per mail from the first mail sent to the last delivered")
    return PeerFigures(result, delivered, delivered_per_s, cpu_ms)


def run_bare(args: argparse.Namespace, stack: contextlib.ExitStack, body: bytes) -> LoadResult:
    """The same load straight to a bare aiosmtpd sink: the ceiling of this machine and load generator."""
    sink = SinkProcess().start()
    stack.callback(sink.stop)
    print(f"bare: aiosmtpd sink on 127.0.0.1:{sink.port} (pid {sink.pid}), no Mailward")
    if args.warmup:
        send_load(sink.port, [DOMAIN], args.warmup, args.connections, body, "warmup")
    cpu_sink = cpu_seconds(sink.pid)
    result = send_load(sink.port, [DOMAIN], args.mails, args.connections, body, "bare")
    cpu_sink = cpu_seconds(sink.pid) - cpu_sink
    report(result, "latency")
    print(f"  CPU (one core = 100%): sink {pct(cpu_sink, result.seconds)}, "
          f"load generator {pct(result.client_cpu, result.seconds)}")
    return result
