"""Real servers for the tests, on loopback ports with their data in temporary folders.

Each starter returns an object with ``url`` (or ``port``) and ``stop()``. In CI (``CI=true``) a server that cannot
start fails the run loudly; nothing here skips.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


#: Characters from the end of a daemon's log put into the error when it does not start.
LOG_TAIL = 4000


class Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=Stoppable)


class ChildServer(Protocol):
    """A test daemon run as a child process: what :func:`wait_started` needs to report and clean up a failed start."""

    proc: subprocess.Popen[bytes]

    def log(self) -> str: ...

    def stop(self) -> None: ...


def wait_started(server: ChildServer, ping: Callable[[], bool], *, timeout: float, name: str,
                 request: str = "PING", interval: float = 0.1) -> float:
    """Poll ``ping()`` until it is true and return the seconds that took; if the child exits first or ``timeout``
    passes, stop the server and raise with the tail of its log (never skips: a test that needs it fails, in CI too).
    """
    started = time.monotonic()
    deadline = started + timeout
    try:
        while True:
            if ping():
                return time.monotonic() - started
            if server.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {server.proc.returncode} at start:\n"
                                   f"{server.log()[-LOG_TAIL:]}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{name} did not answer {request} within {timeout:g}s:\n{server.log()[-LOG_TAIL:]}")
            time.sleep(interval)
    except BaseException:
        server.stop()  # after the log was read: stop() removes the server's folder
        raise


@dataclass
class Daemon:
    """A daemon a test starts as a child: its process, its temporary folder (removed on stop) and its loopback port.

    A kind names its log file in the folder (``LOG``) and the signal it shuts down cleanly on (``STOP_SIGNAL``)."""

    proc: subprocess.Popen[bytes]
    workdir: Path
    port: int
    LOG: ClassVar[str] = ""
    STOP_SIGNAL: ClassVar[int] = signal.SIGTERM
    #: Seconds it gets to exit after the signal before it is killed.
    STOP_TIMEOUT: ClassVar[float] = 15.0

    def log(self) -> str:
        path = self.workdir / self.LOG
        return path.read_text(errors="replace") if self.LOG and path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.STOP_SIGNAL)
            try:
                self.proc.wait(self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def running(server: S) -> Iterator[S]:
    """A started server for a fixture to yield from: the fixture's value, stopped at its teardown."""
    try:
        yield server
    finally:
        server.stop()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --- Redis / Valkey -----------------------------------------------------------------------------------------------

@dataclass
class RedisServer:
    proc: subprocess.Popen[bytes]
    sock: Path
    workdir: Path
    #: The loopback TCP port it also listens on (0: none) and the password it requires ("" none).
    port: int = 0
    password: str = ""

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.sock}"

    @property
    def tcp_url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis(unix_socket_path=str(self.sock), password=self.password or None)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis(*, tcp: bool = False, password: str = "") -> RedisServer:
    """A Redis on a unix socket; ``tcp`` also on a free loopback port, ``password`` with ``requirepass``."""
    binary = shutil.which("redis-server")
    if binary is None:
        from tenants.platform.redisconn import server_binary

        binary = server_binary()
    workdir = Path(tempfile.mkdtemp(prefix="mw-redis-"))
    sock = workdir / "redis.sock"
    port = free_port() if tcp else 0
    extra = ["--bind", "127.0.0.1"] if tcp else []
    extra += ["--requirepass", password] if password else []
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--unixsocket", str(sock), "--dir", str(workdir), "--save", "",
         "--appendonly", "no", "--daemonize", "no", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = RedisServer(proc, sock, workdir, port, password)
    wait_for(lambda: sock.exists() and server.client().ping(), what="redis")
    return server


# --- PostgreSQL ---------------------------------------------------------------------------------------------------

@dataclass
class PostgresServer:
    workdir: Path
    port: int

    @property
    def base_url(self) -> str:
        return f"postgresql+psycopg://mailward@127.0.0.1:{self.port}"

    def url(self, dbname: str = "postgres") -> str:
        return f"{self.base_url}/{dbname}"

    def _as_postgres(self, cmd: str) -> None:
        subprocess.run(_as_postgres_argv(cmd), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        self._as_postgres(f"{PG_BIN}/pg_ctl -D {self.workdir}/data -m immediate stop")
        shutil.rmtree(self.workdir, ignore_errors=True)


def _as_postgres_argv(cmd: str) -> list[str]:
    if os.geteuid() == 0:
        return ["su", "postgres", "-c", cmd]
    return ["sh", "-c", cmd]


def start_postgres() -> PostgresServer:
    workdir = Path(tempfile.mkdtemp(prefix="mw-pg-"))
    os.chmod(workdir, 0o755)
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
    port = free_port()
    run = lambda cmd: subprocess.run(_as_postgres_argv(cmd), check=True, stdout=subprocess.DEVNULL,  # noqa: E731
                                     stderr=subprocess.PIPE)
    run(f"{PG_BIN}/initdb -D {workdir}/data -A trust -U mailward")
    run(f"{PG_BIN}/pg_ctl -D {workdir}/data -l {workdir}/log -w -o "
        f"'-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300' start")
    return PostgresServer(workdir, port)


# --- downstream SMTP sink -----------------------------------------------------------------------------------------

@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    data: bytes
    at: float = field(default_factory=time.monotonic)  # when the sink took it (monotonic clock of the test)

    @property
    def message_id(self) -> str | None:
        from email.parser import BytesHeaderParser

        value = BytesHeaderParser().parsebytes(self.data).get("Message-ID")
        return str(value).strip() if value else None


@dataclass
class SinkHandler:
    """Collects mail; ``reply`` can be set to make it answer DATA with an error (e.g. '451 4.3.0 busy')."""

    messages: list[Received] = field(default_factory=list)
    reply: str | None = None
    rcpt_reply: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if address in self.rcpt_reply:
            return self.rcpt_reply[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reply:
            return self.reply
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok: sunk"


class Sink:
    """A real SMTP server (aiosmtpd) standing in for a tenant's mail server; can be stopped and restarted."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.handler = SinkHandler()
        self.controller: Controller | None = None

    def start(self) -> Sink:
        handler = self.handler

        class _Controller(Controller):
            def factory(self) -> AioSMTP:
                return AioSMTP(handler, data_size_limit=None, enable_SMTPUTF8=True)

        self.controller = _Controller(handler, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    def wait_count(self, n: int, timeout: float = 30.0) -> list[Received]:
        wait_for(lambda: len(self.messages) >= n, timeout, what=f"{n} mails at the sink (have {len(self.messages)})")
        return self.messages


# --- Mailward processes -------------------------------------------------------------------------------------------

class Process:
    """A ``mailward`` subcommand run as a real child process with the test's environment."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen([_python(), "-m", "mailward", *self.args], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 15) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _python() -> str:
    import sys

    return sys.executable


def run_cli(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_python(), "-m", "mailward", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=60)


def smtp_ready(port: int) -> bool:
    return port_open(port)


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)
