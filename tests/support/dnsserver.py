"""A real authoritative DNS server for the tests: dnslib on a free loopback port, UDP and TCP, in threads.

Records live in a dict the tests change at run time (``add``, ``set``, ``remove``, ``clear``). A name with no
records answers NXDOMAIN; a name with records of other types answers NOERROR with no data; a name marked with
``drop`` gets no answer at all (a resolver times out on it). Every query is counted, so a test can prove that a
cached answer did not reach DNS.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, TXT, A, DNSError, DNSRecord
from dnslib.server import DNSHandler, DNSLogger, DNSServer

#: TTL of the answers unless a record says otherwise.
DEFAULT_TTL = 300
#: Longest character-string in a TXT record (RFC 1035 3.3); longer values are split, as DKIM keys must be.
TXT_CHUNK = 255
#: Tries to find a port that is free for both UDP and TCP.
PORT_TRIES = 20
#: MX preference when a value gives none.
DEFAULT_MX_PREFERENCE = 10

SUPPORTED_TYPES = ("A", "AAAA", "TXT", "MX", "PTR", "CNAME")


def _key(name: str) -> str:
    return name.rstrip(".").lower()


def _rdata(qtype: str, value: str) -> Any:
    if qtype == "A":
        return A(value)
    if qtype == "AAAA":
        return AAAA(value)
    if qtype == "TXT":
        raw = value.encode()
        return TXT([raw[i:i + TXT_CHUNK] for i in range(0, len(raw), TXT_CHUNK)] or [b""])
    if qtype == "MX":
        pref, _, host = value.partition(" ") if " " in value else (str(DEFAULT_MX_PREFERENCE), "", value)
        return MX(host, int(pref))
    if qtype == "PTR":
        return PTR(value)
    if qtype == "CNAME":
        return CNAME(value)
    raise ValueError(f"unsupported record type {qtype!r} (one of {', '.join(SUPPORTED_TYPES)})")


class _Dropped(DNSError):
    """Raised by the resolver for a dropped name: dnslib's handler then sends no reply."""


class RecordResolver:
    """Answers from a dict of ``(name, type) -> [(value, ttl)]``; thread-safe, changeable while serving."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[tuple[str, str], list[tuple[str, int]]] = {}
        self.dropped: set[str] = set()
        self.queries: Counter[tuple[str, str]] = Counter()

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        qname = str(request.q.qname)
        name = _key(qname)
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            self.queries[(name, qtype)] += 1
            if name in self.dropped:
                raise _Dropped(f"dropped query for {name}")
            answers = list(self.records.get((name, qtype), ()))
            cname = self.records.get((name, "CNAME"), []) if qtype != "CNAME" else []
            known = any(n == name for n, _ in self.records)
        reply = request.reply()
        if not answers and cname:
            target, ttl = cname[0]
            reply.add_answer(RR(qname, QTYPE.CNAME, rdata=_rdata("CNAME", target), ttl=ttl))
            with self.lock:
                answers = list(self.records.get((_key(target), qtype), ()))
            qname = target
        for value, ttl in answers:
            reply.add_answer(RR(qname, getattr(QTYPE, qtype), rdata=_rdata(qtype, value), ttl=ttl))
        if not answers and not cname and not known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class _QuietLogger(DNSLogger):
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False,
                         logf=lambda _msg: None)


def _free_udp_tcp_port(host: str) -> int:
    for _ in range(PORT_TRIES):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP on loopback")


class LoopbackDNS:
    """The server: ``start()``, then point resolvers at ``("127.0.0.1", port)``; ``stop()`` at the end."""


    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.resolver = RecordResolver()
        self._servers: list[DNSServer] = []

    # --- lifetime --------------------------------------------------------------------------------------------------

    def start(self) -> LoopbackDNS:
        for _ in range(PORT_TRIES):
            port = _free_udp_tcp_port(self.host)
            try:
                udp = DNSServer(self.resolver, address=self.host, port=port, logger=_QuietLogger(),
                                handler=DNSHandler)
                tcp = DNSServer(self.resolver, address=self.host, port=port, tcp=True, logger=_QuietLogger(),
                                handler=DNSHandler)
            except OSError:  # taken between the probe and the bind: try another port
                continue
            self.port = port
            self._servers = [udp, tcp]
            for server in self._servers:
                server.start_thread()
            return self
        raise RuntimeError("could not start the test DNS server")

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()
        self._servers = []

    def __enter__(self) -> LoopbackDNS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- records ---------------------------------------------------------------------------------------------------

    def add(self, name: str, qtype: str, value: str, ttl: int = DEFAULT_TTL) -> None:
        """Add one record (``MX`` values are ``"10 mx.example.com"`` or a bare host)."""
        qtype = qtype.upper()
        _rdata(qtype, value)  # validate now, not when a query comes
        with self.resolver.lock:
            self.resolver.records.setdefault((_key(name), qtype), []).append((value, ttl))

    def set(self, name: str, qtype: str, values: str | Iterable[str], ttl: int = DEFAULT_TTL) -> None:
        """Replace the records of a name and type (an empty list removes them)."""
        qtype = qtype.upper()
        items = [values] if isinstance(values, str) else list(values)
        for value in items:
            _rdata(qtype, value)
        with self.resolver.lock:
            if items:
                self.resolver.records[(_key(name), qtype)] = [(v, ttl) for v in items]
            else:
                self.resolver.records.pop((_key(name), qtype), None)

    def remove(self, name: str, qtype: str | None = None) -> None:
        """Remove the records of a name (of one type, or all)."""
        with self.resolver.lock:
            for key in [k for k in self.resolver.records if k[0] == _key(name) and qtype in (None, k[1])]:
                del self.resolver.records[key]

    def drop(self, name: str) -> None:
        """Never answer queries for ``name`` (any type): clients time out."""
        with self.resolver.lock:
            self.resolver.dropped.add(_key(name))

    def clear(self) -> None:
        """Forget every record, dropped name and query count."""
        with self.resolver.lock:
            self.resolver.records.clear()
            self.resolver.dropped.clear()
            self.resolver.queries.clear()

    # --- what was asked --------------------------------------------------------------------------------------------

    def query_count(self, name: str | None = None, qtype: str | None = None) -> int:
        """Queries received so far, for one name and/or type or in total."""
        with self.resolver.lock:
            return sum(n for (qn, qt), n in self.resolver.queries.items()
                       if (name is None or qn == _key(name)) and (qtype is None or qt == qtype.upper()))

    def reset_counts(self) -> None:
        with self.resolver.lock:
            self.resolver.queries.clear()
