"""Antivirus fixtures: one real clamd per session (see :mod:`tests.support.clamd`).

``clamd_server`` has both test signatures (EICAR by MD5 and by body pattern). ``clamd_hash_only`` has the MD5
signature alone, so a hit proves clamd decoded the MIME part or archive down to the exact EICAR file itself.
A clamd that cannot start raises: locally and in CI alike the tests that need it fail, they never skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.clamd import ClamdServer, start_clamd


@pytest.fixture(scope="session")
def clamd_server() -> Iterator[ClamdServer]:
    server = start_clamd()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def clamd_hash_only() -> Iterator[ClamdServer]:
    server = start_clamd(body_signature=False)
    yield server
    server.stop()
