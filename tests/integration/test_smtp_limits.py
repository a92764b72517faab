"""Connection limits of the SMTP ingress (security issue 9, item 5): one address holding thousands of idle
connections must not stop inbound mail for every tenant, nor flood the log with tracebacks."""

from __future__ import annotations

import resource
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtp.limits import DERIVED_CAP_MAX, FD_RESERVE_MIN, ConnectionLimits, client_key, global_cap
from tenants.exceptions import ConfigError
from tenants.platform.config import Config
from tests.integration.test_ingress import make_mail, smtp_port
from tests.support.servers import Process, free_port, wait_for

#: Project root (the child processes import ``smtp`` from there).
ROOT = Path(__file__).resolve().parents[2]


def _connect(port: int, source: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def _first_line(s: socket.socket) -> bytes:
    """The first reply line the server sends on a fresh connection (b"" if it hung up first)."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(512)
        if not chunk:
            break
        buf += chunk
    return buf


def _closed_after(s: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``s`` (the test fails if it still holds it after ``limit`` seconds)."""
    start = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(512):
            pass
    except TimeoutError:
        pytest.fail(f"the ingress still holds a silent connection after {limit}s")
    return time.monotonic() - start


def _start(env: dict[str, str], log: Path, *, nofile: int | None = None, ports: tuple[int, ...] = ()) -> Any:
    """The ingress as a child process (with an open-file limit of ``nofile`` when given), once its ports answer."""
    if nofile is None:
        proc: Any = Process(["smtp"], env, log).start()
        child = proc.proc
    else:
        def lower_limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        out = open(log, "ab")  # noqa: SIM115 - lives as long as the child
        proc = child = subprocess.Popen([sys.executable, "-m", "mailward", "smtp"], env=env, stdout=out,
                                        stderr=subprocess.STDOUT, preexec_fn=lower_limit, start_new_session=True)

    def up() -> bool:
        assert child is not None and child.poll() is None, log.read_text()
        for port in (smtp_port(env), *ports):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pass
            except OSError:
                return False
        return True

    wait_for(up, 60, what="ingress")  # a loaded machine imports slowly
    return proc


def _stop(proc: Any) -> None:
    if isinstance(proc, Process):
        proc.stop()
    else:
        proc.terminate()
        proc.wait(15)


@pytest.fixture
def short_timeouts(env: dict[str, str], tmp_path: Path, acme: Any) -> Iterator[dict[str, str]]:
    """The ingress with a 1 s greeting timeout and a 2 s idle timeout."""
    e = dict(env, MAILWARD_SMTP_GREETING_TIMEOUT="1", MAILWARD_SMTP_IDLE_TIMEOUT="2")
    proc = _start(e, tmp_path / "smtp.log")
    yield e
    _stop(proc)


# --- per-client and global caps -----------------------------------------------------------------------------------

def test_one_address_holding_300_connections_gets_421_past_its_cap_and_others_are_still_served(
        env, ingress, acme, sink):
    """The attack: one IP opens connection after connection and keeps them idle until nobody else gets a greeting.
    Past 20 it gets ``421 4.7.0`` and is hung up on; another address still sends mail; closed slots come back."""
    port = smtp_port(env)
    held, refused = [], 0
    try:
        for _ in range(300):
            s = _connect(port)
            line = _first_line(s)
            if line.startswith(b"220 "):
                held.append(s)
            else:
                assert line.startswith(b"421 4.7.0 "), line
                assert s.recv(1) == b""  # and closed
                s.close()
                refused += 1
        assert (len(held), refused) == (20, 280)
        with smtplib.SMTP("127.0.0.1", port, local_hostname="other.sender.example", timeout=30,
                          source_address=("127.0.0.2", 0)) as c:
            assert c.sendmail("alice@sender.example", ["bob@acme.test"], make_mail("bob@acme.test")) == {}
        assert sink.wait_count(1)[0].rcpts == ["bob@acme.test"]
    finally:
        for s in held:
            s.close()

    def served_again() -> bool:
        with _connect(port) as s:
            return _first_line(s).startswith(b"220 ")

    wait_for(served_again, 10, what="a slot given back when its connection closed")
    log = ingress.log()
    assert 1 <= log.count("connection refused with 421") <= 10, "one line a second, not one per refusal"


def test_the_global_cap_stays_below_the_open_file_limit_so_accept_never_fails(env, tmp_path, acme):
    """The incident: connections up to the descriptor limit, then EMFILE on every accept, no greeting for anyone and
    hundreds of thousands of tracebacks. Capped below the limit, the surplus gets 421 and the log stays quiet."""
    e = dict(env, MAILWARD_SMTP_MAX_CONNECTIONS_PER_IP="1000")
    log = tmp_path / "smtp-lowfd.log"
    nofile = 256
    proc = _start(e, log, nofile=nofile)
    cap = global_cap(0, nofile)
    held: list[socket.socket] = []
    refused = 0
    try:
        for n in range(300):
            s = _connect(smtp_port(e), source=f"127.0.0.{2 + n % 50}")
            line = _first_line(s)
            if line.startswith(b"220 "):
                held.append(s)
            else:
                assert line.startswith(b"421 4.7.0 "), (n, line)
                s.close()
                refused += 1
        assert (len(held), refused) == (cap, 300 - cap)
        held.pop().close()
        time.sleep(0.2)
        with _connect(smtp_port(e), source="127.0.0.99") as s:
            assert _first_line(s).startswith(b"220 ")
    finally:
        for s in held:
            s.close()
        _stop(proc)
    text = log.read_text()
    assert "Traceback" not in text and "out of system resource" not in text


ACCEPT_FLOOD_CHILD = r"""
import asyncio, logging, resource, sys
from smtp.limits import QuietAcceptErrors
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

async def main() -> None:
    loop = asyncio.get_running_loop()
    if sys.argv[2] == "quiet":
        QuietAcceptErrors(loop).install(loop)
    await loop.create_server(asyncio.Protocol, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await asyncio.sleep(3)

asyncio.run(main())
"""


def _accept_flood(mode: str) -> str:
    """Run a bare asyncio server out of descriptors for 3 s (``quiet``: with our handler); its log."""
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", ACCEPT_FLOOD_CHILD, str(port), mode], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    socks = []
    for _ in range(120):  # far more than 48 descriptors, and past the listen backlog
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=0.5))
        except OSError:
            break
    _, err = child.communicate(timeout=30)
    for s in socks:
        s.close()
    return err


def test_accept_errors_when_out_of_descriptors_make_one_line_a_second_not_a_traceback_flood():
    """asyncio logs a traceback for every failed accept() (hundreds a second once descriptors run out: 205 MB of log
    in 90 s in the incident); with the ingress's handler it is one line a second and no traceback."""
    plain = _accept_flood("plain")
    assert plain.count("Traceback") > 20  # what the handler is for: asyncio's own behaviour
    quiet = _accept_flood("quiet")
    assert "Traceback" not in quiet
    lines = [line for line in quiet.splitlines() if "cannot accept connections" in line]
    assert 1 <= len(lines) <= 5, quiet[-2000:]
    assert "Too many open files" in lines[0]


def test_the_submission_listener_shares_the_caps(env, tmp_path, acme):
    """The submission port is the same server class: an address at its cap there is refused on port 25 too."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=mx.mailward.test"], check=True, capture_output=True)
    sub_port = free_port()
    e = dict(env, MAILWARD_SUBMISSION_LISTEN=f"127.0.0.1:{sub_port}", MAILWARD_TLS_CERT=str(cert),
             MAILWARD_TLS_KEY=str(key), MAILWARD_SMTP_MAX_CONNECTIONS_PER_IP="3")
    proc = _start(e, tmp_path / "smtp-sub.log", ports=(sub_port,))
    held = []
    try:
        for _ in range(3):
            held.append(_connect(sub_port))
            assert _first_line(held[-1]).startswith(b"220 ")
        for port in (sub_port, smtp_port(e)):
            with _connect(port) as s:
                assert _first_line(s).startswith(b"421 4.7.0 ")
        with _connect(sub_port, source="127.0.0.2") as s:
            assert _first_line(s).startswith(b"220 ")
    finally:
        for s in held:
            s.close()
        _stop(proc)


# --- timeouts -----------------------------------------------------------------------------------------------------

def test_a_silent_client_is_hung_up_on_after_the_greeting_timeout(short_timeouts):
    """Idle connections are the attack's currency: one that never says anything goes after the greeting timeout."""
    with _connect(smtp_port(short_timeouts)) as s:
        assert _first_line(s).startswith(b"220 ")
        assert 0.8 <= _closed_after(s, 10) <= 6


def test_after_the_first_command_the_idle_timeout_applies(short_timeouts):
    with _connect(smtp_port(short_timeouts)) as s:
        _first_line(s)
        s.sendall(b"EHLO client.sender.example\r\n")
        reply = b""
        while b"\r\n250 " not in reply:
            reply += s.recv(4096)
        assert 1.6 <= _closed_after(s, 10) <= 7


def test_a_slow_but_steady_data_upload_is_not_cut_by_the_idle_timeout(short_timeouts, sink):
    """The idle timeout measures silence: a mail sent in pieces over longer than it still arrives."""
    data = make_mail("bob@acme.test", body="line of a slow upload\n" * 50)
    with _connect(smtp_port(short_timeouts)) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO client.sender.example\r\n")
        while f.readline()[3:4] == b"-":
            pass
        for command in (b"MAIL FROM:<alice@sender.example>", b"RCPT TO:<bob@acme.test>", b"DATA"):
            s.sendall(command + b"\r\n")
            assert f.readline()[:1] in (b"2", b"3")
        piece = len(data) // 4 + 1
        for i in range(0, len(data), piece):
            s.sendall(data[i:i + piece])
            time.sleep(1.2)  # 4 pieces, about 5 s in all: more than the idle timeout of 2 s
        s.sendall(b".\r\n")
        assert f.readline().startswith(b"250 ")
    assert len(sink.wait_count(1)) == 1


# --- configuration ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("MAILWARD_SMTP_MAX_CONNECTIONS_PER_IP", "0"), ("MAILWARD_SMTP_MAX_CONNECTIONS", "-1"),
    ("MAILWARD_SMTP_GREETING_TIMEOUT", "soon"), ("MAILWARD_SMTP_IDLE_TIMEOUT", "0"),
])
def test_bad_limit_settings_are_refused_with_their_name(name, value):
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})


def test_limit_settings_are_read():
    cfg = Config.from_env({"MAILWARD_SMTP_MAX_CONNECTIONS_PER_IP": "5", "MAILWARD_SMTP_MAX_CONNECTIONS": "100",
                           "MAILWARD_SMTP_GREETING_TIMEOUT": "45", "MAILWARD_SMTP_IDLE_TIMEOUT": "50"})
    limits = ConnectionLimits.from_config(cfg, fd_limit=1024)
    assert (limits.per_ip, limits.total, limits.greeting_timeout, limits.idle_timeout) == (5, 100, 45, 50)


def test_the_global_cap_is_derived_from_the_open_file_limit_with_headroom():
    assert global_cap(0, 20000) == 16000  # the incident's limit: 4,000 descriptors stay for the ingress's own work
    assert global_cap(0, 1024) == 820
    assert global_cap(0, 256) == 256 - FD_RESERVE_MIN
    assert global_cap(0, 1 << 20) == DERIVED_CAP_MAX  # a container's million: memory is the limit then
    assert global_cap(500, 1024) == 500
    with pytest.raises(ConfigError, match="MAILWARD_SMTP_MAX_CONNECTIONS"):
        global_cap(1000, 1024)
    with pytest.raises(ConfigError, match="open-file limit"):
        global_cap(0, 64)


def test_a_too_high_global_cap_stops_the_ingress_at_start_with_its_name(env, tmp_path):
    e = dict(env, MAILWARD_SMTP_MAX_CONNECTIONS=str(10 ** 9))
    r = subprocess.run([sys.executable, "-m", "mailward", "smtp"], env=e, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "MAILWARD_SMTP_MAX_CONNECTIONS" in r.stderr


def test_clients_are_counted_by_ipv4_address_and_ipv6_slash_64():
    assert client_key(("192.0.2.7", 25)) == "192.0.2.7"
    assert client_key(("::ffff:192.0.2.7", 25, 0, 0)) == "192.0.2.7"
    assert client_key(("2001:db8:1:2::1", 25, 0, 0)) == client_key(("2001:db8:1:2:ffff::9", 25, 0, 0)) \
        == "2001:db8:1:2::/64"
    assert client_key(("2001:db8:1:3::1", 25, 0, 0)) != client_key(("2001:db8:1:2::1", 25, 0, 0))


def test_a_slot_is_given_back_once_per_connection():
    limits = ConnectionLimits(per_ip=2, total=3, greeting_timeout=30, idle_timeout=60)
    a, b = limits.admit(("192.0.2.1", 1)), limits.admit(("192.0.2.1", 2))
    assert a == b == "192.0.2.1" and limits.admit(("192.0.2.1", 3)) is None
    assert limits.admit(("192.0.2.2", 1)) == "192.0.2.2" and limits.admit(("192.0.2.3", 1)) is None  # 3 in all
    limits.release("192.0.2.1")
    assert limits.admit(("192.0.2.3", 1)) == "192.0.2.3"
    assert limits.open == 3 and limits.by_client == {"192.0.2.1": 1, "192.0.2.2": 1, "192.0.2.3": 1}
