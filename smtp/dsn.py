"""Delivery status notifications (RFC 3464): a multipart/report to the sender when a mail cannot be delivered."""

from __future__ import annotations

from collections.abc import Sequence
from email.message import Message as HeaderBlock
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, make_msgid

from smtp.outbound import RcptResult
from tenants.models import Message, utcnow
from tenants.platform.config import Config

#: How much of the original message's header block a bounce carries back (text/rfc822-headers).
MAX_RETURNED_HEADERS = 64 * 1024


def build_dsn(cfg: Config, msg: Message, original: bytes, failures: Sequence[tuple[str, RcptResult]]) -> bytes:
    """The bytes of a DSN for ``failures`` (recipient, last reply) of ``msg``."""
    human = [
        f"This is the mail gateway at {cfg.hostname}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "",
    ]
    for rcpt, res in failures:
        human.append(f"<{rcpt}>: {res.code} {res.reply}")
    human += ["", f"Queue id: {msg.queue_id}", ""]

    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <{cfg.bounce_sender}>"
    report["To"] = msg.mail_from
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = format_datetime(utcnow())
    report["Message-ID"] = make_msgid(domain=cfg.hostname)
    report["Auto-Submitted"] = "auto-replied"
    text = "\n".join(human)
    report.attach(MIMEText(text, "plain", "us-ascii" if text.isascii() else "utf-8"))

    per_message = HeaderBlock()
    per_message["Reporting-MTA"] = f"dns; {cfg.hostname}"
    per_message["X-Mailward-Queue-ID"] = msg.queue_id
    per_message["Arrival-Date"] = format_datetime(msg.received_at)
    blocks = [per_message]
    for rcpt, res in failures:
        block = HeaderBlock()
        block["Final-Recipient"] = f"rfc822; {rcpt}"
        block["Action"] = "failed"
        block["Status"] = _enhanced_status(res)
        block["Diagnostic-Code"] = f"smtp; {res.code} {' '.join(res.reply.split())}"
        blocks.append(block)
    part = MIMEBase("message", "delivery-status")
    part.set_payload(blocks)  # type: ignore[arg-type]  # the generator writes each block as a header section
    report.attach(part)

    headers_end = original.find(b"\r\n\r\n")
    if headers_end < 0:
        headers_end = original.find(b"\n\n")
    head = original[: headers_end if headers_end >= 0 else MAX_RETURNED_HEADERS][:MAX_RETURNED_HEADERS]
    returned = MIMEBase("text", "rfc822-headers")
    returned.set_payload(head.decode("utf-8", "replace").rstrip("\r\n") + "\n")
    report.attach(returned)
    return report.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _enhanced_status(res: RcptResult) -> str:
    """The RFC 3463 status code from a reply, or a generic one of the right class."""
    first = res.reply.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in ("4", "5"):
        return first
    return "5.0.0" if res.permanent else "4.4.7"
