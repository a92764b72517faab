"""``make run`` starts a private clamd when ClamAV and signatures are installed, and says so when it cannot.

The private clamd is the real Debian ``clamd`` with the test signature database of :mod:`tests.support.clamd`
standing in for the system's (freshclam cannot reach the mirrors here), started through the dev server's own code path
(:func:`mailward.devserver.virus_scanning` and the supervisor).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailward import devserver, localclamd
from smtp.checks.virus import VirusCheck
from smtp.supervisor import Supervisor
from tenants.platform.config import Config
from tests.integration.test_checks_virus import make_mail, scan, symbols
from tests.support.clamd import EICAR, write_database

#: Seconds the test signatures may take to load (about 0.1 s here).
READY_TIMEOUT = 60.0


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short data directory (a unix socket path has at most 107 bytes; pytest's tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="mw-clamd-"))
    yield path / "var"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def signatures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No system clamd running; the test signatures as the system's signature directory."""
    sigs = tmp_path / "sigs"
    write_database(sigs)
    monkeypatch.setattr(localclamd, "SYSTEM_SOCKET", tmp_path / "none.ctl")
    monkeypatch.setattr(localclamd, "SIGNATURE_DIR", sigs)
    return sigs


def test_no_signatures_means_scanning_off_with_the_command_that_brings_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localclamd, "SYSTEM_SOCKET", tmp_path / "none.ctl")
    monkeypatch.setattr(localclamd, "SIGNATURE_DIR", tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    env: dict[str, str] = {}
    supervisor = Supervisor()
    banner, watch = devserver.virus_scanning(Config(data_dir=tmp_path / "var"), env, supervisor, tmp_path)
    assert watch is None and not supervisor.slots and "MAILWARD_CLAMD" not in env
    assert banner.startswith(f"OFF (no ClamAV signatures in {tmp_path / 'empty'}: run `")
    assert f"`{localclamd.signatures_command()}`" in banner
    assert localclamd.signatures_command().endswith("freshclam")


def test_a_configured_scanner_is_left_alone(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    supervisor = Supervisor()
    banner, watch = devserver.virus_scanning(Config(data_dir=tmp_path, clamd="127.0.0.1:3310"), env, supervisor,
                                             tmp_path)
    assert banner == "ON (MAILWARD_CLAMD=127.0.0.1:3310)" and watch is None
    assert not supervisor.slots and env == {}


def test_the_dev_server_supervises_a_private_clamd_that_answers_and_finds_eicar(data_dir: Path, signatures: Path):
    """The children get the socket at once; until clamd answers, the virus check records CLAM_TEMPFAIL (the policy's
    "scanner unavailable"); then PING answers and EICAR is found; stopping the supervisor stops clamd."""
    logs = data_dir / "logs"
    logs.mkdir(parents=True)
    env: dict[str, str] = {}
    supervisor = Supervisor(drain_timeout=15)
    banner, watch = devserver.virus_scanning(Config(data_dir=data_dir), env, supervisor, logs)
    sock = (data_dir / "clamav" / "clamd.sock").resolve()
    assert env["MAILWARD_CLAMD"] == str(sock)
    assert banner.startswith(f"ON (private clamd on {sock}")
    assert [s.name for s in supervisor.slots] == ["clamd"] and watch is not None
    conf = (data_dir / "clamav" / "clamd.conf").read_text().splitlines()
    assert f"DatabaseDirectory {signatures}" in conf and f"LocalSocket {sock}" in conf and "Foreground yes" in conf

    starting = scan(env["MAILWARD_CLAMD"], make_mail(attachments=(("eicar.com", EICAR, "application/octet-stream"),)))
    assert set(symbols(starting)) == {"CLAM_TEMPFAIL"}
    try:
        supervisor._start(supervisor.slots[0])
        watch.start()
        assert watch.ready.wait(READY_TIMEOUT), (logs / "clamd.log").read_text()
        assert localclamd.ping(sock)
        check = VirusCheck(Config(clamd=env["MAILWARD_CLAMD"]))
        assert asyncio.run(check.client.ping())  # type: ignore[union-attr]
        found = symbols(scan(env["MAILWARD_CLAMD"],
                             make_mail(attachments=(("eicar.com", EICAR, "application/octet-stream"),)), check))
        assert found.keys() == {"CLAM_VIRUS"} and found["CLAM_VIRUS"].startswith("Eicar-Test")
        child = supervisor.slots[0].child
        assert child is not None
    finally:
        watch.stop()
        supervisor.stop()
    assert child.poll() is not None
    assert not localclamd.ping(sock)
    assert "Socket file removed" in (logs / "clamd.log").read_text()  # its own log, under the data directory


def test_a_clamd_left_behind_by_a_killed_run_is_stopped_before_a_new_start(data_dir: Path, signatures: Path):
    first = localclamd.plan(data_dir)
    assert first.private is not None
    orphan = first.private.starter(data_dir / "clamd.out")()
    try:
        watch = localclamd.ReadyWatch(first.private.socket, timeout=READY_TIMEOUT).start()
        assert watch.ready.wait(READY_TIMEOUT)
        second = localclamd.plan(data_dir)  # what the next `mailward run` does first
        assert second.private is not None
        assert orphan.wait(localclamd.ORPHAN_GRACE + 5) is not None
    finally:
        if orphan.poll() is None:
            orphan.kill()
        try:
            orphan.wait(10)
        except subprocess.TimeoutExpired:
            pass


def test_a_socket_path_too_long_for_unix_sockets_turns_scanning_off_with_the_reason(tmp_path: Path,
                                                                                   signatures: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    result = localclamd.plan(deep)
    assert result.address is None and result.private is None
    assert "MAILWARD_DATA_DIR" in result.banner and result.banner.startswith("OFF (the socket path")
