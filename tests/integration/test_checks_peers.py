"""The optional scorers against the real daemons (tests/support/peers.py): spamd and rspamd each score GTUBE in
their top band and a plain ham in their lowest, and a daemon that is down, hangs or answers nonsense gives
``*_TEMPFAIL``."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import pytest

from smtp.checks.base import Check, CheckContext, Stage
from smtp.checks.rspamd import RspamdCheck, RspamdClient, RspamdUrl, request_headers
from smtp.checks.rspamd import band as rspamd_band
from smtp.checks.spamd import SpamdAddress, SpamdCheck, SpamdClient, received_header
from smtp.checks.spamd import band as spamd_band
from smtp.mime import parse_mail
from smtp.pipeline import run_stage
from tenants.exceptions import ConfigError
from tenants.platform.config import Config, HostPort
from tenants.symbols import lookup
from tests.support.dnsserver import LoopbackDNS
from tests.support.peers import GTUBE, RspamdServer, SpamdServer
from tests.support.servers import free_port

# spamd_server and rspamd_server come from tests/fixtures/peers.py (pytest_plugins in conftest); dns from
# tests/fixtures/dns.py.

CLIENT_IP = "192.0.2.7"
CLIENT_NAME = "mx.sender.example"


def make_mail(body: str = "Hi Bob,\n\nshall we meet for lunch on Friday at noon? The usual place.\n\nAlice\n",
              subject: str = "Lunch on Friday") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice Example <alice@sender.example>"
    msg["To"] = "Bob <bob@acme.test>"
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="sender.example")
    msg.set_content(body)
    return msg.as_bytes().replace(b"\n", b"\r\n")


def gtube_mail() -> bytes:
    body = f"This is the GTUBE, the\n\n  Generic\n  Test for\n  Unsolicited\n  Bulk\n  Email\n\n{GTUBE}\n"
    return make_mail(body=body, subject="Test spam mail (GTUBE)")


def context(cfg: Config, raw: bytes, *, direction: str = "inbound", helo: str = CLIENT_NAME) -> CheckContext:
    return CheckContext(cfg=cfg, client_ip=CLIENT_IP, helo=helo, mail_from="alice@sender.example",
                        rcpts=["bob@acme.test"], tenant_ids=[7], direction=direction, mail=parse_mail(raw))


def run(check: Check, ctx: CheckContext) -> dict[str, str]:
    """The check through the pipeline (timeouts and errors become TEMPFAIL there too); its symbols and reasons."""
    asyncio.run(run_stage([check], ctx, Stage.DATA))
    return {f.symbol: f.reason for f in ctx.findings}


@pytest.fixture
def sender_dns(dns: LoopbackDNS) -> LoopbackDNS:
    """DNS of a well-run sending domain: MX, A, forward-confirmed PTR of the client."""
    dns.set("sender.example", "MX", f"10 {CLIENT_NAME}")
    dns.set("sender.example", "A", CLIENT_IP)
    dns.set(CLIENT_NAME, "A", CLIENT_IP)
    dns.set("7.2.0.192.in-addr.arpa", "PTR", CLIENT_NAME)
    return dns


@pytest.fixture
def peer_cfg(dns: LoopbackDNS) -> Config:
    """The checks' own lookups (the client's reverse name) go to the loopback DNS server too."""
    return Config(dns=HostPort("127.0.0.1", dns.port), hostname="mx.mailward.test")


@pytest.fixture
def hanging_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers: the port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conns.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    listener.close()
    for conn in conns:
        conn.close()


def answering_server(answer: bytes) -> tuple[socket.socket, int]:
    """A TCP server that reads a request and sends ``answer`` once, then closes: (listener, port)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            # Read the body too, as any HTTP server does: closing with unread bytes sends a reset, which may reach
            # the client before the answer does.
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
            conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return listener, int(listener.getsockname()[1])


# --- spamd --------------------------------------------------------------------------------------------------------

def test_spamd_scores_gtube_in_its_top_band(spamd_server: SpamdServer, peer_cfg: Config) -> None:
    found = run(SpamdCheck(peer_cfg, spamd=spamd_server.address), context(peer_cfg, gtube_mail()))
    assert set(found) == {"SPAMD_8_PLUS"}
    assert found["SPAMD_8_PLUS"].startswith("spamd score 10")  # 1000 for GTUBE plus a few
    assert "GTUBE" in found["SPAMD_8_PLUS"]


def test_spamd_scores_plain_ham_in_its_low_band(spamd_server: SpamdServer, peer_cfg: Config,
                                                sender_dns: LoopbackDNS) -> None:
    found = run(SpamdCheck(peer_cfg, spamd=spamd_server.address), context(peer_cfg, make_mail()))
    assert set(found) == {"SPAMD_0_2"}, found
    assert found["SPAMD_0_2"].startswith("spamd score ")
    assert lookup("SPAMD_0_2").score <= 0


def test_spamd_sees_the_client_as_the_last_relay(spamd_server: SpamdServer, peer_cfg: Config,
                                                 sender_dns: LoopbackDNS) -> None:
    """The mail as received has no Received header of ours: the check adds one, else SpamAssassin sees no relay."""
    found = run(SpamdCheck(peer_cfg, spamd=spamd_server.address), context(peer_cfg, gtube_mail()))
    reason = found["SPAMD_8_PLUS"]
    assert "NO_RELAYS" not in reason and "NO_RECEIVED" not in reason
    assert "RDNS_NONE" not in reason  # the forward-confirmed reverse name is in it


def test_spamd_received_header_cannot_be_forged_through_helo(peer_cfg: Config) -> None:
    """A HELO with a line break must not put a Received header of the attacker's choosing above ours."""
    ctx = context(peer_cfg, make_mail(), helo="x\r\nReceived: from trusted.internal (10.0.0.1)")
    header = received_header(ctx, None, crlf=True)
    _, folded, end = header.split(b"\r\n")
    assert folded.startswith(b"\tby ") and end == b""  # one header: no line of the attacker's
    assert header.startswith(b"Received: from xReceived:fromtrusted.internal10.0.0.1 ([192.0.2.7])\r\n\tby ")


def test_spamd_down_is_a_tempfail(peer_cfg: Config) -> None:
    found = run(SpamdCheck(peer_cfg, spamd=f"127.0.0.1:{free_port()}"), context(peer_cfg, make_mail()))
    assert set(found) == {"SPAMD_TEMPFAIL"}
    assert "unreachable" in found["SPAMD_TEMPFAIL"]
    assert lookup("SPAMD_TEMPFAIL").score == 0


def test_spamd_hanging_is_a_tempfail_after_the_client_timeout(hanging_server: int, peer_cfg: Config) -> None:
    check = SpamdCheck(peer_cfg, spamd=f"127.0.0.1:{hanging_server}")
    check.client = SpamdClient(f"127.0.0.1:{hanging_server}", timeout=0.5)
    found = run(check, context(peer_cfg, make_mail()))
    assert set(found) == {"SPAMD_TEMPFAIL"}
    assert "no answer within 0.5s" in found["SPAMD_TEMPFAIL"]


def test_spamd_skips_mail_over_its_size_limit_without_asking(peer_cfg: Config) -> None:
    """Nothing listens at the address: a scan would be a TEMPFAIL, so SKIPPED proves spamd was not asked."""
    check = SpamdCheck(peer_cfg, spamd=f"127.0.0.1:{free_port()}", max_size=1000)
    found = run(check, context(peer_cfg, make_mail(body="x" * 2000)))
    assert set(found) == {"SPAMD_SKIPPED"}


def test_spamd_does_not_run_for_outbound_mail(peer_cfg: Config) -> None:
    check = SpamdCheck(peer_cfg, spamd=f"127.0.0.1:{free_port()}")
    found = run(check, context(peer_cfg, make_mail(), direction="outbound"))
    assert found == {}


def test_spamd_is_off_without_an_address() -> None:
    assert not SpamdCheck(Config()).enabled
    assert SpamdCheck(Config(), spamd="127.0.0.1:783").enabled
    with pytest.raises(ConfigError, match="MAILWARD_SPAMD"):
        SpamdCheck(Config(), spamd="127.0.0.1:notaport")


def test_spamd_address_forms() -> None:
    assert SpamdAddress.parse("spamd.internal") == SpamdAddress(host="spamd.internal", port=783)
    assert SpamdAddress.parse("[::1]:7830") == SpamdAddress(host="::1", port=7830)
    assert SpamdAddress.parse("/run/spamd.sock") == SpamdAddress(path="/run/spamd.sock")
    assert SpamdAddress.parse("unix:spamd.sock") == SpamdAddress(path="spamd.sock")


def test_spamd_bands() -> None:
    assert [spamd_band(s) for s in (-3.0, 0.0, 1.99, 2.0, 4.9, 5.0, 7.99, 8.0, 1000.0)] == [
        "SPAMD_0_2", "SPAMD_0_2", "SPAMD_0_2", "SPAMD_2_5", "SPAMD_2_5", "SPAMD_5_8", "SPAMD_5_8", "SPAMD_8_PLUS",
        "SPAMD_8_PLUS"]
    for symbol in SpamdCheck.symbols:
        assert lookup(symbol).description, f"{symbol} has no entry in tenants/scores/spamd.toml"


# --- rspamd -------------------------------------------------------------------------------------------------------

def test_rspamd_rejects_gtube(rspamd_server: RspamdServer, peer_cfg: Config, sender_dns: LoopbackDNS) -> None:
    found = run(RspamdCheck(peer_cfg, rspamd=rspamd_server.url), context(peer_cfg, gtube_mail()))
    assert set(found) == {"RSPAMD_8_PLUS", "RSPAMD_ACTION_REJECT"}, found
    assert "action reject" in found["RSPAMD_ACTION_REJECT"]
    assert "GTUBE" in found["RSPAMD_ACTION_REJECT"]


def test_rspamd_scores_plain_ham_in_its_low_band(rspamd_server: RspamdServer, peer_cfg: Config,
                                                 sender_dns: LoopbackDNS) -> None:
    found = run(RspamdCheck(peer_cfg, rspamd=rspamd_server.url), context(peer_cfg, make_mail()))
    assert set(found) == {"RSPAMD_0_2"}, found
    assert "action no action" in found["RSPAMD_0_2"]


def test_rspamd_gets_the_forward_confirmed_client_name(rspamd_server: RspamdServer, peer_cfg: Config,
                                                       sender_dns: LoopbackDNS) -> None:
    """With a PTR whose name leads back to the IP, rspamd gets the Hostname; its HFILTER_HOSTNAME_UNKNOWN stays off."""
    ctx = context(peer_cfg, make_mail())
    found = run(RspamdCheck(peer_cfg, rspamd=rspamd_server.url), ctx)
    assert "HFILTER_HOSTNAME_UNKNOWN" not in next(iter(found.values()))
    assert ctx.facts["client_hostname"].result() == CLIENT_NAME


def test_rspamd_is_not_told_a_forged_client_name(rspamd_server: RspamdServer, peer_cfg: Config,
                                                 sender_dns: LoopbackDNS) -> None:
    """A PTR naming a host whose A record is another address is what anyone owning the IP can set: not passed on."""
    sender_dns.set("7.2.0.192.in-addr.arpa", "PTR", "mail.bigbank.example")
    sender_dns.set("mail.bigbank.example", "A", "198.51.100.1")
    ctx = context(peer_cfg, make_mail())
    found = run(RspamdCheck(peer_cfg, rspamd=rspamd_server.url), ctx)
    assert "HFILTER_HOSTNAME_UNKNOWN" in next(iter(found.values()))
    assert ctx.facts["client_hostname"].result() is None


def test_spamd_and_rspamd_share_one_reverse_lookup(spamd_server: SpamdServer, rspamd_server: RspamdServer,
                                                   peer_cfg: Config, sender_dns: LoopbackDNS) -> None:
    sender_dns.reset_counts()
    checks: list[Check] = [SpamdCheck(peer_cfg, spamd=spamd_server.address),
                           RspamdCheck(peer_cfg, rspamd=rspamd_server.url)]
    ctx = context(peer_cfg, make_mail())
    asyncio.run(run_stage(checks, ctx, Stage.DATA))
    assert {f.symbol for f in ctx.findings} == {"SPAMD_0_2", "RSPAMD_0_2"}
    assert sender_dns.query_count("7.2.0.192.in-addr.arpa", "PTR") == 1


def test_rspamd_down_is_a_tempfail(peer_cfg: Config) -> None:
    found = run(RspamdCheck(peer_cfg, rspamd=f"http://127.0.0.1:{free_port()}"), context(peer_cfg, make_mail()))
    assert set(found) == {"RSPAMD_TEMPFAIL"}
    assert "unreachable" in found["RSPAMD_TEMPFAIL"]
    assert lookup("RSPAMD_TEMPFAIL").score == 0


def test_rspamd_hanging_is_a_tempfail_after_the_client_timeout(hanging_server: int, peer_cfg: Config) -> None:
    check = RspamdCheck(peer_cfg, rspamd=f"http://127.0.0.1:{hanging_server}")
    check.client = RspamdClient(f"http://127.0.0.1:{hanging_server}", timeout=0.5)
    found = run(check, context(peer_cfg, make_mail()))
    assert set(found) == {"RSPAMD_TEMPFAIL"}
    assert "no answer within 0.5s" in found["RSPAMD_TEMPFAIL"]


@pytest.mark.parametrize(("answer", "expected"), [
    (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops!", "HTTP 500"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!", "not JSON"),
    (b'HTTP/1.1 200 OK\r\n\r\n{"error": "cannot parse message"}', "cannot parse message"),
    (b"SPAMD/1.5 0 EX_OK\r\n\r\n", "not HTTP"),
    (b"", "without an answer"),
])
def test_rspamd_nonsense_answer_is_a_tempfail(peer_cfg: Config, answer: bytes, expected: str) -> None:
    listener, port = answering_server(answer)
    try:
        found = run(RspamdCheck(peer_cfg, rspamd=f"http://127.0.0.1:{port}"), context(peer_cfg, make_mail()))
    finally:
        listener.close()
    assert set(found) == {"RSPAMD_TEMPFAIL"}
    assert expected in found["RSPAMD_TEMPFAIL"]


def test_rspamd_envelope_headers_cannot_be_smuggled_through_helo(peer_cfg: Config) -> None:
    """A HELO carrying CR LF must not add a request header (say ``Pass: all``, which skips every rspamd rule)."""
    ctx = context(peer_cfg, make_mail(), helo="evil.example\r\nPass: all")
    headers = request_headers(ctx, None)
    assert ("Helo", "evil.examplePass: all") in headers
    assert all("\r" not in v and "\n" not in v for _, v in headers)
    assert [name for name, _ in headers] == ["IP", "Helo", "From", "Rcpt"]


def test_rspamd_outbound_mail_is_sent_as_an_authenticated_user(peer_cfg: Config) -> None:
    headers = dict(request_headers(context(peer_cfg, make_mail(), direction="outbound"), "mx.acme.test"))
    assert headers["User"] == "tenant-7"
    assert headers["Hostname"] == "mx.acme.test"
    assert headers["From"] == "alice@sender.example"


def test_rspamd_is_off_without_a_url() -> None:
    assert not RspamdCheck(Config()).enabled
    assert RspamdCheck(Config(), rspamd="http://127.0.0.1:11333").enabled
    for bad in ("ftp://127.0.0.1", "http://", "http://127.0.0.1:99999"):
        with pytest.raises(ConfigError, match="MAILWARD_RSPAMD"):
            RspamdCheck(Config(), rspamd=bad)


def test_rspamd_url_forms() -> None:
    assert RspamdUrl.parse("127.0.0.1") == RspamdUrl("http", "127.0.0.1", 11333)
    assert RspamdUrl.parse("http://[::1]:11333/") == RspamdUrl("http", "::1", 11333)
    assert RspamdUrl.parse("https://rspamd.internal/scan") == RspamdUrl("https", "rspamd.internal", 443, "/scan")


def test_rspamd_bands() -> None:
    assert [rspamd_band(s) for s in (-3.0, 1.99, 2.0, 5.0, 8.0, 15.0)] == [
        "RSPAMD_0_2", "RSPAMD_0_2", "RSPAMD_2_5", "RSPAMD_5_8", "RSPAMD_8_PLUS", "RSPAMD_8_PLUS"]
    for symbol in RspamdCheck.symbols:
        assert lookup(symbol).description, f"{symbol} has no entry in tenants/scores/rspamd.toml"
