"""The load generator of bench/throughput.py: the mails, how they are sent, and what each accept took.

Three ways to send, all with aiosmtplib or plain asyncio streams from this one process:

- :func:`send_load`, closed loop: C connections, each sending its share one mail after the other as fast as the
  server answers (the peak: accepted per second).
- :func:`send_at_rate`, open loop: mails start on a fixed schedule (mail k at k/R seconds), whatever the server's
  answers, over a pool of at most C connections; what a mail waited for a free connection is its lag.
- :func:`hold_idle`, idle connections: N clients connect, say EHLO and then nothing, while a measurement runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import TypeVar

import aiosmtplib

#: The tenant and domain the load is addressed to, and where it comes from.
TENANT = "Bench"
DOMAIN = "bench.test"
SENDER = "load@sender.bench.example"
CLIENT_HOSTNAME = "client.sender.bench.example"
#: Distinct recipients the mails cycle through in each domain (one per mail).
RECIPIENTS = 100
#: Seconds one SMTP step of the load generator may take before the mail counts as failed.
CLIENT_TIMEOUT = 60.0
#: Idle connections opened at once (more at once would only fill the ingress's listen backlog).
IDLE_BATCH = 50

T = TypeVar("T")


def make_body(size: int) -> bytes:
    """Header block tail and a plain-text body, so that a mail with its per-mail headers is about ``size`` bytes."""
    head = (f"From: Load <{SENDER}>\r\nSubject: throughput\r\nDate: {formatdate()}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    per_mail = len(mail_head(0, "x" * 8, f"user0@{DOMAIN}"))
    room = max(size - len(head) - per_mail, 0)
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    body = (line * (room // len(line) + 1))[:room]
    if room >= 2:
        body = body[:-2] + b"\r\n"
    return head + body


def mail_head(index: int, run_id: str, rcpt: str) -> bytes:
    return f"Message-ID: <{index}.{run_id}@bench.example>\r\nTo: <{rcpt}>\r\n".encode()


def recipient(index: int, domains: Sequence[str]) -> str:
    """The recipient of mail ``index``: the domains in turn, :data:`RECIPIENTS` users in each."""
    return f"user{(index // len(domains)) % RECIPIENTS}@{domains[index % len(domains)]}"


@dataclass
class LoadResult:
    """What one load run measured. Times are time.monotonic(); latencies are seconds."""

    mails: int
    connections: int
    latencies: list[float] = field(default_factory=list)
    #: Open loop only: how long after its scheduled start each accepted mail's MAIL FROM went out.
    lags: list[float] = field(default_factory=list)
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
        return percentile_ms(self.latencies, p)

    def lag_percentile_ms(self, p: float) -> float:
        return percentile_ms(self.lags, p)


def percentile_ms(seconds: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of durations in seconds, in milliseconds."""
    if not seconds:
        return float("nan")
    ordered = sorted(seconds)
    rank = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[rank] * 1000


def _client(port: int) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=CLIENT_TIMEOUT, local_hostname=CLIENT_HOSTNAME,
                           start_tls=False)


async def _send_one(client: aiosmtplib.SMTP, port: int, index: int, domains: Sequence[str], body: bytes,
                    run_id: str, result: LoadResult, scheduled: float | None = None) -> aiosmtplib.SMTP:
    """Send mail ``index`` on ``client`` (reconnecting it first if it was dropped); record its accept latency or
    its failure. Returns the client to use next (a new one after a reconnect)."""
    rcpt = recipient(index, domains)
    data = mail_head(index, run_id, rcpt) + body
    try:
        if not client.is_connected:
            client = _client(port)
            await client.connect()
            await client.ehlo()
        started = time.monotonic()
        await client.mail(SENDER, options=[f"SIZE={len(data)}"])
        await client.rcpt(rcpt)
        await client.data(data)
        done = time.monotonic()
        result.latencies.append(done - started)
        if scheduled is not None:
            result.lags.append(max(started - scheduled, 0.0))
        result.finished = max(result.finished, done)
    except aiosmtplib.SMTPResponseException as exc:
        result.errors[f"{exc.code} {exc.message[:60]}"] += 1
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await client.rset()
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        result.errors[type(exc).__name__] += 1
        client.close()
    return client


async def _quit(client: aiosmtplib.SMTP) -> None:
    if client.is_connected:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await client.quit()
    client.close()


async def _connected(port: int) -> aiosmtplib.SMTP:
    client = _client(port)
    await client.connect()
    await client.ehlo()
    return client


async def _connection(port: int, domains: Sequence[str], indices: range, body: bytes, run_id: str,
                      result: LoadResult, connected: asyncio.Queue[None], go: asyncio.Event) -> None:
    """One client connection: connect and EHLO, wait for the start, then send its mails one after the other."""
    client = _client(port)
    try:
        await client.connect()
        await client.ehlo()
    finally:
        connected.put_nowait(None)
    await go.wait()
    try:
        for i in indices:
            client = await _send_one(client, port, i, domains, body, run_id, result)
    finally:
        await _quit(client)


async def _load(port: int, domains: Sequence[str], mails: int, connections: int, body: bytes,
                run_id: str) -> LoadResult:
    connections = max(1, min(connections, mails))
    result = LoadResult(mails, connections)
    connected: asyncio.Queue[None] = asyncio.Queue()
    go = asyncio.Event()
    share, extra = divmod(mails, connections)
    tasks, start = [], 0
    for c in range(connections):
        n = share + (1 if c < extra else 0)
        tasks.append(asyncio.create_task(
            _connection(port, domains, range(start, start + n), body, run_id, result, connected, go)))
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


def send_load(port: int, domains: Sequence[str], mails: int, connections: int, body: bytes,
              run_id: str) -> LoadResult:
    """Send ``mails`` mails to ``port`` over ``connections`` concurrent connections (closed loop: each sends its
    next mail as soon as the last is answered); measure each accept."""
    return asyncio.run(_load(port, domains, mails, connections, body, run_id))


async def _at_rate(port: int, domains: Sequence[str], mails: int, rate: float, connections: int, body: bytes,
                   run_id: str) -> LoadResult:
    connections = max(1, min(connections, mails))
    result = LoadResult(mails, connections)
    opened = await asyncio.gather(*(_connected(port) for _ in range(connections)), return_exceptions=True)
    free: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
    for client in opened:
        if isinstance(client, BaseException):
            result.errors[f"connection failed: {type(client).__name__}: {client}"] += 1
            free.put_nowait(_client(port))  # not connected: _send_one connects it when its turn comes
        else:
            free.put_nowait(client)

    async def one(index: int, scheduled: float) -> None:
        client = await free.get()
        try:
            client = await _send_one(client, port, index, domains, body, run_id, result, scheduled)
        finally:
            free.put_nowait(client)

    cpu = time.process_time()
    result.started = time.monotonic()
    tasks = []
    for index in range(mails):
        scheduled = result.started + index / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, scheduled)))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    result.client_cpu = time.process_time() - cpu
    if not result.finished:
        result.finished = time.monotonic()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.errors[f"failed: {type(outcome).__name__}: {outcome}"] += 1
    while not free.empty():
        await _quit(free.get_nowait())
    return result


def send_at_rate(port: int, domains: Sequence[str], mails: int, rate: float, connections: int, body: bytes,
                 run_id: str) -> LoadResult:
    """Send ``mails`` mails at ``rate`` per second on a fixed schedule (open loop: mail k starts at k/rate seconds
    whatever the answers to the others), over a pool of at most ``connections`` connections opened beforehand."""
    return asyncio.run(_at_rate(port, domains, mails, rate, connections, body, run_id))


@dataclass
class IdleResult:
    """What opening idle connections gave: how many got their EHLO answered, and why the others did not."""

    wanted: int
    opened: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0  # to open them all


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One SMTP reply (all its lines); its last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("closed by the server")
        if line[3:4] != b"-":
            return line


async def _open_idle(port: int) -> asyncio.StreamWriter:
    """Connect, read the greeting, say EHLO and read its answer; the connection then stays silent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for command in (None, f"EHLO {CLIENT_HOSTNAME}\r\n".encode()):
            if command:
                writer.write(command)
            line = await asyncio.wait_for(_reply(reader), CLIENT_TIMEOUT)
            if not line.startswith(b"2"):
                raise ConnectionRefusedError(line.decode(errors="replace").strip()[:60])
    except BaseException:
        writer.close()
        raise
    return writer


async def _hold_idle(port: int, count: int, measure: Callable[[], T], settle: float) -> tuple[IdleResult, T]:
    result = IdleResult(count)
    writers: list[asyncio.StreamWriter] = []
    started = time.monotonic()
    try:
        for first in range(0, count, IDLE_BATCH):
            batch = range(first, min(first + IDLE_BATCH, count))
            for outcome in await asyncio.gather(*(_open_idle(port) for _ in batch), return_exceptions=True):
                if isinstance(outcome, BaseException):
                    result.errors[f"{type(outcome).__name__}: {outcome}"] += 1
                else:
                    writers.append(outcome)
        result.opened = len(writers)
        result.seconds = time.monotonic() - started
        await asyncio.sleep(settle)  # let the ingress finish with the last EHLOs before its memory is read
        measured = measure()
    finally:
        for writer in writers:
            with contextlib.suppress(OSError):
                writer.write(b"QUIT\r\n")
            writer.close()
        for writer in writers:
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
    return result, measured


def hold_idle(port: int, count: int, measure: Callable[[], T], settle: float = 1.0) -> tuple[IdleResult, T]:
    """Open ``count`` connections to ``port`` (greeting, EHLO, then nothing), call ``measure()`` while they are all
    open, close them; what opening them gave and what ``measure`` returned."""
    return asyncio.run(_hold_idle(port, count, measure, settle))
