"""Optional scorer fixtures: one real spamd and one real rspamd per session (see :mod:`tests.support.peers`).

rspamd keeps its compiled hyperscan databases in pytest's cache folder (``.pytest_cache/d/rspamd-hyperscan``), so
only the first run on a machine pays the ~20 s of compiling; later starts take about a second. It resolves through
the session's loopback DNS server (tests/fixtures_dns.py), so its DNS checks get definite answers.
A daemon that cannot start raises: locally and in CI alike the tests that need it fail, they never skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.dnsserver import LoopbackDNS
from tests.support.peers import RspamdServer, SpamdServer, start_rspamd, start_spamd

#: Folder name of rspamd's hyperscan cache inside pytest's cache.
RSPAMD_CACHE = "rspamd-hyperscan"


@pytest.fixture(scope="session")
def spamd_server() -> Iterator[SpamdServer]:
    server = start_spamd()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rspamd_server(request: pytest.FixtureRequest, dns_server: LoopbackDNS) -> Iterator[RspamdServer]:
    """rspamd resolving through the session's loopback DNS server: tests set the records its checks look up."""
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider: a cold start every run
    server = start_rspamd(dns_port=dns_server.port,
                          cache_dir=cache.mkdir(RSPAMD_CACHE) if cache is not None else None)
    yield server
    server.stop()
