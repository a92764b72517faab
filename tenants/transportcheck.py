"""Test connection: ask a domain's transport, as delivery would, whether it takes mail for the domain; nothing is sent.

The conversation is EHLO, STARTTLS (as the domain's TLS mode asks), ``MAIL FROM:<>``, ``RCPT TO:<postmaster@domain>``
(every mail server must take the postmaster's mail, RFC 5321 4.5.1), RSET, QUIT. It goes to the addresses the egress
policy (:mod:`tenants.egress`) checked just now, like delivery and the call-ahead; a refused host is never connected
to. A form waits on it, so the whole conversation has :data:`TEST_TIMEOUT` at most. Blocking (smtplib): for the web
and the CLI; the ingress has its own asynchronous probe (:func:`smtp.callahead.probe`).
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from dataclasses import dataclass

from tenants.egress import SMTP, EgressError, EgressPolicy
from tenants.models import Domain, TlsMode
from tenants.platform.config import Config

#: Seconds the whole test may take (connect, EHLO, STARTTLS, MAIL, RCPT).
TEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class TransportCheck:
    """The outcome: ``ok`` when the transport took ``RCPT TO:<postmaster@domain>``; ``message`` says what happened."""

    ok: bool
    message: str


def _tls_context() -> ssl.SSLContext:
    """Opportunistic TLS between MTAs does not verify certificates (RFC 7435), like delivery itself."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _converse(client: smtplib.SMTP, domain: Domain, helo: str) -> TransportCheck:
    code, _ = client.ehlo(helo)
    if code != 250:
        return TransportCheck(False, f"the transport refused EHLO ({code})")
    tls = TlsMode(domain.transport_tls)
    secured = False
    if tls != TlsMode.NONE and client.has_extn("starttls"):
        client.starttls(context=_tls_context())
        client.ehlo(helo)
        secured = True
    elif tls == TlsMode.REQUIRED:
        return TransportCheck(False, "the transport offers no STARTTLS and TLS to it is required")
    code, text = client.mail("")
    if code != 250:
        return TransportCheck(False, f"the transport refused MAIL FROM:<>: {code} {text.decode(errors='replace')}")
    rcpt = f"postmaster@{domain.name}"
    code, text = client.rcpt(rcpt)
    said = f"{code} {text.decode(errors='replace')}".strip()
    try:
        client.rset()
        client.quit()
    except (smtplib.SMTPException, OSError):
        pass
    if not 200 <= code < 300:
        return TransportCheck(False, f"the transport does not take mail for {rcpt}: {said}")
    return TransportCheck(True, f"{domain.transport} takes mail for {rcpt}{' over TLS' if secured else ''} ({said})")


def check_transport(cfg: Config, domain: Domain, egress: EgressPolicy, *,
                   timeout: float = TEST_TIMEOUT) -> TransportCheck:
    """Talk to the domain's transport (see the module); never raises for network trouble or a refusal."""
    if domain.transport_egress_exempt:
        egress = EgressPolicy.unchecked(cfg)  # set by the MSP on the command line: delivery connects unchecked too
    try:
        addresses = egress.pin(SMTP, domain.transport_host, domain.transport_port, label="transport")
    except EgressError as exc:
        return TransportCheck(False, f"refused by the egress policy: {exc}")
    deadline = time.monotonic() + timeout
    failure = ""
    for address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        client = smtplib.SMTP(timeout=left)
        try:
            client.connect(address, domain.transport_port)
            return _converse(client, domain, cfg.hostname)
        except (smtplib.SMTPException, OSError, UnicodeError, ValueError) as exc:
            failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(exc, socket.timeout | TimeoutError):
                break
        finally:
            client.close()
    return TransportCheck(False, f"transport {domain.transport} unreachable: {failure or 'timed out'}")
