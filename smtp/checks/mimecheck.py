"""MIME structure: a malformed mail is still stored, scanned and delivered; its defects become a finding."""

from __future__ import annotations

from smtp.checks.base import Check, CheckContext, Stage


class MimeCheck(Check):
    name = "mime"
    stage = Stage.DATA
    timeout = 2.0
    symbols = ("MIME_DEFECT", "MIME_UNPARSEABLE")

    async def run(self, ctx: CheckContext) -> None:
        mail = ctx.mail
        if mail is None:
            return
        if mail.message is None:
            ctx.add("MIME_UNPARSEABLE", "; ".join(mail.defects))
        elif mail.defects:
            kinds = sorted(set(mail.defects))
            ctx.add("MIME_DEFECT", ", ".join(kinds[:5]) + (f" and {len(kinds) - 5} more" if len(kinds) > 5 else ""))
