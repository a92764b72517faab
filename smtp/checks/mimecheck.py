"""MIME structure: a malformed mail is still stored, scanned and delivered; its defects become a finding.

A mail whose structure is over the MIME limits (see :mod:`tenants.mail.mimescan`) was not parsed, or only in part,
so the
other content checks saw little of it: ``MIME_LIMIT`` says so (its score file gives it the attachment effect).
"""

from __future__ import annotations

from smtp.checks.base import Check, CheckContext, Stage
from smtp.mime import OVER_LIMITS_SYMBOL


class MimeCheck(Check):
    name = "mime"
    stage = Stage.DATA
    timeout = 2.0
    symbols = ("MIME_DEFECT", "MIME_UNPARSEABLE", OVER_LIMITS_SYMBOL)

    async def run(self, ctx: CheckContext) -> None:
        mail = ctx.mail
        if mail is None:
            return
        if mail.over_limits is not None:
            ctx.add(OVER_LIMITS_SYMBOL, mail.over_limits)
        elif mail.message is None:
            ctx.add("MIME_UNPARSEABLE", "; ".join(mail.defects))
        elif mail.defects:
            kinds = sorted(set(mail.defects))
            ctx.add("MIME_DEFECT", ", ".join(kinds[:5]) + (f" and {len(kinds) - 5} more" if len(kinds) > 5 else ""))
