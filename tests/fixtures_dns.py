"""DNS fixtures: one real loopback DNS server per session, its records cleared for every test.

``dns_server`` is the session's :class:`~tests.support.dnsserver.LoopbackDNS`; ``dns`` is the same server,
emptied (records, dropped names, query counts) before the test that asks for it. Point the code under test at it with
``Config(dns=HostPort("127.0.0.1", dns.port))``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.dnsserver import LoopbackDNS


@pytest.fixture(scope="session")
def dns_server() -> Iterator[LoopbackDNS]:
    server = LoopbackDNS().start()
    yield server
    server.stop()


@pytest.fixture
def dns(dns_server: LoopbackDNS) -> Iterator[LoopbackDNS]:
    dns_server.clear()
    yield dns_server
    dns_server.clear()
