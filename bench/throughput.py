"""Throughput of the SMTP ingress: accepted and delivered mails per second, accept latency, peak memory, ceiling.

Sets up a throwaway installation in a temporary folder (a private Redis; SQLite, or PostgreSQL with ``--postgres`` or
``--database-url``; one tenant whose domain's transport is a bare aiosmtpd sink, or ``--tenants`` tenants owning
``--domains`` domains, all routed to that sink), starts ``mailward smtp`` as a real child process and sends N mails
over C connections with aiosmtplib, each connection reusing itself for its share. Then, when asked, it sends mails
at a fixed rate (``--rate``, ``--half-peak``: accept latency below the peak) and holds idle connections open
(``--idle-connections``: memory per ingress process). Then it sends the same load straight to a bare aiosmtpd sink:
ingress/bare is the "ceiling ratio", how close the ingress gets to what aiosmtpd alone does on this machine with
this load generator. With ``--peer-postfix`` the same load also goes through a bare Postfix relay (a private
instance of Debian's postfix) to the same kind of sink: Mailward's delivered/s over Postfix's. CPU and memory are
measured over the ingress's whole process tree, so a multi-process ingress counts whole. Prints figures; never
pass/fail.

The sinks (and the loopback DNS server the checks resolve on) run in processes of their own, not in threads of this
one, so that they do not share a GIL with the load generator: on a small machine the Python processes (load
generator, ingress, sink) each get a share of the cores, and the CPU line of the report shows which ran out of it.

This module parses the options and puts the runs together; the work is done by bench/throughput_install.py (the
installation), bench/throughput_load.py (the load generator), bench/throughput_peers.py (sink, DNS, Postfix),
bench/throughput_runs.py (each run and its report) and bench/procstat.py (CPU and memory from /proc).

    .venv/bin/python bench/throughput.py -n 2000 -c 50
    .venv/bin/python bench/throughput.py -n 2000 -c 50 --tenants 1000 --domains 10000 --half-peak
    .venv/bin/python bench/throughput.py -n 2000 -c 50 --idle-connections 500
    .venv/bin/python bench/throughput.py -n 2000 -c 50 --peer-postfix    # as root, with Debian's postfix
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the test suite's server helpers (tests/support/servers.py) live here
    sys.path.insert(0, str(ROOT))

from bench.procstat import tree_cpu_seconds, tree_peak_rss_mb  # noqa: E402  (re-exported: bench/detection_smtp.py)
from bench.throughput_install import workdir_of  # noqa: E402  (re-exported too)
from bench.throughput_load import DOMAIN, mail_head, make_body  # noqa: E402
from bench.throughput_peers import postfix_missing  # noqa: E402
from bench.throughput_runs import PeerFigures, run_bare, run_ingress, run_postfix  # noqa: E402

__all__ = ["main", "tree_cpu_seconds", "tree_peak_rss_mb", "workdir_of"]

#: Open files the benchmark asks for beyond its connections (the ingress inherits the limit and derives its global
#: connection cap from it, keeping a fifth for itself: see smtp/limits.py).
FD_HEADROOM = 1024
#: Domains the load is addressed to by default when the installation has more (``--load-domains``).
LOAD_DOMAINS = 100


def code_revision() -> str:
    """The commit the measured code is at, with "-dirty" for uncommitted changes (figures move with the code)."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown (not a git checkout)"


def raise_fd_limit(args: argparse.Namespace) -> str:
    """Raise this process's soft open-file limit for the connections of the run (the ingress, a child, inherits it):
    the load's and the idle ones on both ends, the ingress keeping a fifth of its limit for itself. What was done."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = int(1.25 * 2 * (args.connections + args.idle_connections)) + FD_HEADROOM
    if soft == resource.RLIM_INFINITY or soft >= need:
        return f"open files {soft}"
    new = need if hard == resource.RLIM_INFINITY else min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    short = "" if new >= need else f" (the hard limit; {need} wanted: some connections may be refused)"
    return f"open files raised from {soft} to {new}{short}"


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
    scale = parser.add_argument_group("scale", "more tenants and domains, a fixed rate, idle connections")
    scale.add_argument("--tenants", type=_positive, default=1,
                       help="tenants in the installation, the bench tenant included, created in bulk "
                            "(default: %(default)s)")
    scale.add_argument("--domains", type=_positive, default=None,
                       help="domains in all, spread evenly over the tenants and all routed to the sink; at least "
                            "--tenants (default: as many as tenants)")
    scale.add_argument("--load-domains", type=_positive, default=LOAD_DOMAINS,
                       help="domains the load is addressed to in turn, one each of that many tenants picked evenly "
                            "(more when there are fewer tenants) (default: %(default)s, at most --domains)")
    rate = scale.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float, default=None, metavar="R",
                      help="after the peak run, send -n mails at R per second on a fixed schedule (open loop) "
                           "and print the accept latency at that rate")
    rate.add_argument("--half-peak", action="store_true",
                      help="the same at half the peak accepted/s just measured")
    scale.add_argument("--idle-connections", type=int, default=0, metavar="N",
                       help="after the load, open N connections (greeting, EHLO, then nothing) and print each "
                            "ingress process's resident memory with them open (default: none)")
    args = parser.parse_args(argv)
    if args.domains is None:
        args.domains = args.tenants
    if args.domains < args.tenants:
        parser.error(f"--domains {args.domains} is fewer than --tenants {args.tenants}: every tenant owns a domain")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be a positive number of mails per second")
    if args.idle_connections < 0:
        parser.error("--idle-connections must be 0 or more")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a kill stops what we started too, like Ctrl-C
    body = make_body(args.size)
    mail_size = len(mail_head(0, "run", f"user0@{DOMAIN}") + body)
    files = raise_fd_limit(args)
    print(f"Mailward throughput: {args.mails} mails of {mail_size} bytes over {args.connections} connections "
          f"(after {args.warmup} warm-up mails); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
          f"(other work on the machine skews the figures); {files}; code {code_revision()}")
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
                      peer.delivered_per_s if peer else None, ingress.tenancy.tenants, ingress.tenancy.domains)
    if ingress.rate is not None:
        load = ingress.rate.load
        figures.rate = (ingress.rate.rate, load.per_s, load.percentile_ms(50), load.percentile_ms(99))
    if ingress.idle is not None:
        figures.idle = (ingress.idle.idle.wanted, ingress.idle.idle.opened, ingress.idle.rss_mb,
                        ingress.idle.kib_per_connection)
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
    tenants: int = 1
    domains: int = 1
    #: The rate phase: asked per second, accepted per second, p50 and p99 accept latency in ms.
    rate: tuple[float, float, float, float] | None = None
    #: The idle connections: asked, opened, largest VmRSS of one ingress process in MiB, KiB per connection.
    idle: tuple[int, int, float, float] | None = None

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
        line += f" tenants={self.tenants} domains={self.domains}"
        if self.rate is not None:
            line += " rate_per_s={:.1f} rate_accepted_per_s={:.1f} rate_p50_ms={:.1f} rate_p99_ms={:.1f}".format(
                *self.rate)
        if self.idle is not None:
            line += " idle_connections={} idle_opened={} idle_rss_mb={:.1f} idle_kib_per_conn={:.1f}".format(*self.idle)
        return line


if __name__ == "__main__":
    sys.exit(main())
