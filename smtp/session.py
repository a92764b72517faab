"""Per-connection and per-transaction state of the ingress, and its aiosmtpd protocol class.

The connection (:class:`IngressSession`) knows whether the client sends out for a tenant: a client in a tenant's
relay network, or one logged in on the submission listener. That is resolved once per connection. The transaction
(:class:`MailEnvelope`) carries the recipient routes (inbound) or the sending tenant (outbound), and the checks'
context. The protocol class (:class:`IngressSMTP`) adds connection limits and timeouts (:mod:`smtp.limits`) and
Postfix's reading of DATA (long lines and bare LF accepted, :mod:`smtp.conform`) to aiosmtpd's.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from smtp.checks import CheckContext
from smtp.conform import normalize_data
from smtp.limits import ConnectionLimits, refusal
from tenants.policy import DomainRoute

log = logging.getLogger(__name__)

#: Bytes the protocol reads in one piece (aiosmtpd's stream limit): a command line longer than this is refused; in
#: DATA it only sets the chunk size, as no line of a mail is too long (a bare-LF mail may be one CRLF "line").
READ_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Submitter:
    """Who sends out in this connection: the tenant, and how we know (its relay network, or its SMTP login)."""

    tenant_id: int
    #: "network 192.0.2.0/24" or "login user@example.com", for logs and the tracking center.
    via: str


class IngressSession(Session):
    """aiosmtpd's connection state, plus the sending tenant once it is known."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        #: The sending tenant; None for inbound connections.
        self.submitter: Submitter | None = None
        #: True once the client IP was looked up in the relay networks (the answer holds for the connection).
        self.relay_checked = False
        #: True while the relay networks could not be read: unknown recipient domains then get 451, not 550.
        self.relay_unknown = False
        #: Recipients refused at RCPT on this connection so far (the first few are recorded for tracking).
        self.rcpt_refusals = 0

    # aiosmtpd sets this legacy attribute on every AUTH and warns each time; we read ``auth_data`` instead.
    @property  # type: ignore[override]
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class MailEnvelope(Envelope):
    """Per-transaction state: aiosmtpd's envelope, the route of each recipient, and the checks' context."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, DomainRoute] = {}
        #: The sending tenant for outbound mail (the connection's), None for inbound.
        self.submitter: Submitter | None = None
        self.ctx: CheckContext | None = None
        #: The MAIL-stage checks (DNSBL, SPF), started at MAIL FROM and awaited when their answer is needed.
        self.early: asyncio.Task[None] | None = None

    async def early_done(self) -> None:
        if self.early is not None:
            await asyncio.shield(self.early)


class IngressSMTP(SMTP):
    """The port-25 listener: offers no AUTH (a client of a relay network sends out without it).

    It holds a slot of the :class:`~smtp.limits.ConnectionLimits` while connected (421 and close when none is free),
    gives a new client the greeting timeout for its first command and the idle timeout after, and reads DATA as real
    MTAs send it (see :meth:`smtp_DATA`).
    """

    #: Whether EHLO advertises AUTH and a login makes the connection outbound (the submission listener).
    offers_auth: ClassVar[bool] = False
    line_length_limit = READ_LIMIT

    def __init__(self, handler: Any, *, limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
        if limits is not None:
            kwargs["timeout"] = limits.idle_timeout
        super().__init__(handler, **kwargs)
        self.limits = limits
        #: The client key this connection's slot is held under (None: no slot held).
        self._slot: str | None = None
        #: True when the connection was refused over a cap: aiosmtpd never saw it.
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None  # not the TLS layer after STARTTLS
        if first and self.limits is not None:
            self._slot = self.limits.admit(transport.get_extra_info("peername"))
            if self._slot is None:
                self._refused = True
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(refusal(self.hostname))
                transport.close()
                return
        super().connection_made(transport)
        if first and self.limits is not None:
            self._reset_timeout(self.limits.greeting_timeout)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._slot is not None and self.limits is not None:
            self.limits.release(self._slot)
            self._slot = None
        super().connection_lost(error)

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        """Run a handler hook with the idle timer stopped: it measures the client's silence, not our checks (which
        have timeouts of their own)."""
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        try:
            return await super()._call_handler_hook(command, *args)
        finally:
            if self.transport is not None:
                self._reset_timeout()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA as Postfix reads it: no line is too long, a bare LF ends a line like CRLF, and only CRLF ``.`` CRLF
        ends the data (so ``LF . LF`` and the like cannot smuggle a second mail in); the idle timer restarts with
        every piece the client sends."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        raw = await self._read_data()
        if raw is None:
            self._set_post_data_state()
            await self.push("552 5.3.4 Error: Too much mail data")
            return
        self.envelope.content = self.envelope.original_content = normalize_data(raw)
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> bytes | None:
        """The raw DATA bytes up to CRLF ``.`` CRLF (a ``.`` CRLF line that follows a CRLF), still dot-stuffed; None
        when they exceed the size limit (read to their end all the same, RFC 5321 4.2.5)."""
        chunks: list[bytes] = []
        size = 0
        too_much = False
        at_line_start = True  # the last piece ended with CRLF
        while True:
            try:
                piece = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:  # no CRLF within READ_LIMIT bytes: take what is there
                piece = await self._reader.read(exc.consumed)
            except asyncio.IncompleteReadError as exc:  # the client went away in the middle (as aiosmtpd reports it)
                raise ConnectionResetError("connection lost during DATA") from exc
            self._reset_timeout()
            if at_line_start and piece == b".\r\n":
                return None if too_much else b"".join(chunks)
            at_line_start = piece.endswith(b"\r\n")
            size += len(piece)
            if self.data_size_limit and size > self.data_size_limit:
                too_much = True
                chunks.clear()
            else:
                chunks.append(piece)

    def _create_session(self) -> IngressSession:
        return IngressSession(self.loop)

    def _create_envelope(self) -> MailEnvelope:
        return MailEnvelope()
