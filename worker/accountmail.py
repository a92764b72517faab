"""Set-password mails: a reset link or an invitation (:mod:`tenants.accounts` makes and checks the links).

A tenant's user gets the mail the way a quarantine digest goes: stored as the tenant's mail (``direction="notice"``,
kept only while its link may work) and delivered by the worker's delivery path, with its retries, to the tenant's
own mail server (or the MX of an address in another domain). MSP staff belong to no tenant, whose mail the message
table could hold: their mail goes straight to the address's MX (or the relay host) in this job, which RQ retries when
the next hop refuses it for now. The token is made here, in the job: it never travels through Redis.
"""

from __future__ import annotations

import asyncio
import email.policy
import logging
import math
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from smtp.outbound import Router, SmtpPool
from tenants.accounts import link_url, make_link_token, max_age
from tenants.addresses import normalize_address
from tenants.branding import brand_of
from tenants.exceptions import MailwardError
from tenants.models import Tenant, User, utcnow
from tenants.platform.config import Config, get_config
from tenants.platform.db import session_scope
from tenants.scope import msp_scope, tenant_scope
from worker.usermail import queue_user_mail

log = logging.getLogger(__name__)

#: Name shown in the From of mail to MSP staff (tenants' users see their tenant's brand).
STAFF_BRAND = "Mailward"


@dataclass(frozen=True)
class Sent:
    """Where a link mail went: stored as a tenant's mail (``message_id``) and queued, or sent ``via`` a host."""

    to: str
    tenant_id: int | None = None
    message_id: str | None = None
    via: str | None = None

    def __str__(self) -> str:
        return f"{self.to} (queued as {self.message_id})" if self.message_id else f"{self.to} via {self.via}"


class LinkNotSent(MailwardError):
    """The next hop refused the mail to a staff address (RQ retries a temporary refusal)."""


def _text(purpose: str, brand: str, email_addr: str, url: str, hours: int) -> tuple[str, str]:
    """Subject and body of the mail."""
    lasts = f"{hours} hours" if hours < 48 else f"{hours // 24} days"
    if purpose == "invite":
        subject = f"{brand}: you are invited to sign in"
        body = (f"Hello,\n\nan account was created for {email_addr} at {brand}.\n"
                f"Choose your password with this link (it works once, for {lasts}):\n\n{url}\n\n"
                f"If you did not expect this mail, you may ignore it.\n")
    else:
        subject = f"{brand}: set a new password"
        body = (f"Hello,\n\na new password was requested for {email_addr} at {brand}.\n"
                f"Set it with this link (it works once, for {lasts}):\n\n{url}\n\n"
                f"If you did not ask for it, ignore this mail: nothing changes until the link is used.\n")
    return subject, body


def build_link_mail(cfg: Config, user: User, purpose: str, brand: str) -> bytes:
    """The mail (plain text) with a fresh link for ``user``."""
    url = link_url(cfg, make_link_token(cfg, user, purpose))
    hours = math.ceil(max_age(cfg, purpose).total_seconds() / 3600)
    subject, body = _text(purpose, brand, user.email, url, hours)
    sender = cfg.bounce_sender
    mail = EmailMessage(policy=email.policy.SMTP)
    local, _, domain = sender.rpartition("@")
    mail["From"] = Address(display_name=brand, username=local, domain=domain)
    mail["To"] = user.email
    mail["Subject"] = subject
    mail["Date"] = format_datetime(utcnow())
    mail["Message-ID"] = make_msgid("account", domain=cfg.hostname)
    mail["Auto-Submitted"] = "auto-generated"
    mail["X-Auto-Response-Suppress"] = "All"
    mail.set_content(body)
    return mail.as_bytes()


def send_link(cfg: Config, user_id: int, purpose: str) -> Sent | None:
    """Build and send (tenant user: store and queue) one link mail; where it went, or None for a user that is gone
    or deactivated meanwhile."""
    with msp_scope(), session_scope(cfg) as session:
        user = session.get(User, user_id)
        if user is None or not user.active:
            log.info("%s link of user %d not sent: no such active user", purpose, user_id)
            return None
        tenant_id = user.tenant_id
        if tenant_id is None:
            data = build_link_mail(cfg, user, purpose, STAFF_BRAND)
            to = normalize_address(user.email)
    if tenant_id is None:
        where = _send_direct(cfg, to, data)
        log.info("%s link sent to %s (%s)", purpose, to, where)
        return Sent(to, via=where)
    with tenant_scope(tenant_id), session_scope(cfg) as session:
        user = session.get(User, user_id)
        tenant = session.get(Tenant, tenant_id)
        assert user is not None and tenant is not None, "loaded a moment ago; a removal cascades"
        data = build_link_mail(cfg, user, purpose, brand_of(tenant).name)
        to = normalize_address(user.email)
        message_id = queue_user_mail(
            session, cfg, tenant_id, to, sender=cfg.bounce_sender, data=data, direction="notice",
            subject="set-password link" if purpose == "reset" else "invitation link",
            explanation=f"{purpose} link for {to}",
            retention_days=math.ceil(max_age(cfg, purpose).total_seconds() / 86400) + 1)
    log.info("%s link to %s queued as %s", purpose, to, message_id)
    return Sent(to, tenant_id, message_id)


def _send_direct(cfg: Config, to: str, data: bytes) -> str:
    async def run() -> str:
        pool = SmtpPool(cfg)
        try:
            hop = await Router(cfg).mx(to.rpartition("@")[2])
            result = await pool.send(hop, cfg.bounce_sender, [to], data)
        finally:
            await pool.close()
        res = result.per_rcpt.get(to)
        if res is None or not res.ok:
            raise LinkNotSent(f"mail to {to} refused: {res.code if res else '?'} {res.reply if res else ''}".strip())
        return result.host or "next hop"

    return asyncio.run(run())


def link_job(user_id: int, purpose: str) -> str | None:
    """RQ job: mail one user a set-password link (``purpose`` reset or invite)."""
    sent = send_link(get_config(), user_id, purpose)
    return str(sent) if sent else None
