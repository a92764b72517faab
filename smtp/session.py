"""Per-connection and per-transaction state of the ingress, and its aiosmtpd protocol class.

The connection (:class:`IngressSession`) knows whether the client sends out for a tenant: a client in a tenant's
relay network, or one logged in on the submission listener. That is resolved once per connection. The transaction
(:class:`MailEnvelope`) carries the recipient routes (inbound) or the sending tenant (outbound), and the checks'
context.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from aiosmtpd.smtp import SMTP, Envelope, Session

from smtp.checks import CheckContext
from tenants.policy import DomainRoute


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
    """The port-25 listener: offers no AUTH (a client of a relay network sends out without it)."""

    #: Whether EHLO advertises AUTH and a login makes the connection outbound (the submission listener).
    offers_auth: ClassVar[bool] = False

    def _create_session(self) -> IngressSession:
        return IngressSession(self.loop)

    def _create_envelope(self) -> MailEnvelope:
        return MailEnvelope()
