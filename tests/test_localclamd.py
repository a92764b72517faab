"""``make run`` starts a private clamd when ClamAV and signatures are installed, and says so when it cannot."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mailward import localclamd
from tests.clamd import EICAR


def test_no_signatures_means_scanning_off_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localclamd, "SYSTEM_SOCKET", tmp_path / "none.ctl")
    monkeypatch.setattr(localclamd, "SIGNATURE_DIR", tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    address, banner, proc = localclamd.find_or_start(tmp_path / "var")
    assert address is None and proc is None
    assert banner.startswith("OFF (no signatures")


def test_private_clamd_starts_on_a_unix_socket_and_finds_eicar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sigs = tmp_path / "sigs"
    sigs.mkdir()
    (sigs / "test.hdb").write_text(f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Eicar-Test-Signature\n")
    monkeypatch.setattr(localclamd, "SYSTEM_SOCKET", tmp_path / "none.ctl")
    monkeypatch.setattr(localclamd, "SIGNATURE_DIR", sigs)
    address, banner, proc = localclamd.find_or_start(tmp_path / "var")
    try:
        assert proc is not None and address is not None, banner
        assert banner.startswith("private clamd")
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            s.connect(address)
            s.sendall(b"zINSTREAM\0" + len(EICAR).to_bytes(4, "big") + EICAR + b"\0\0\0\0")
            assert b"Eicar-Test-Signature" in s.recv(200)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
