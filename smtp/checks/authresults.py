"""The Authentication-Results header (RFC 8601) Mailward adds to delivered mail, from the checks' results."""

from __future__ import annotations

import ipaddress

from smtp.checks.base import CheckContext
from smtp.checks.msgauth import (
    _PTOKEN_RE,
    ArcResult,
    DkimResult,
    DmarcResult,
)


def _pvalue(value: str) -> str:
    """A property value: as is when it is a plain token, else a quoted-string; never a line break."""
    clean = "".join(ch for ch in value if ch.isprintable() and ch not in "\r\n")
    if clean and _PTOKEN_RE.match(clean):
        return clean
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    clean = "".join(ch for ch in text if ch.isprintable() and ch not in "()\\\r\n")
    return f" ({clean})" if clean else ""


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def authentication_results(ctx: CheckContext, authserv_id: str) -> str:
    """The ``Authentication-Results:`` line for what the checks found (missing facts: temperror)."""
    parts = [_pvalue(authserv_id)]
    spf_result, _spf_domain = ctx.facts.get("spf", ("temperror", ""))
    if ctx.mail_from:
        parts.append(f"spf={spf_result} smtp.mailfrom={_pvalue(ctx.mail_from)}")
    else:
        parts.append(f"spf={spf_result} smtp.helo={_pvalue(ctx.helo)}")
    dkim_results: list[DkimResult] | None = ctx.facts.get("dkim")
    if dkim_results is None:
        parts.append("dkim=temperror")
    elif not dkim_results:
        parts.append("dkim=none")
    for r in dkim_results or ():
        item = f"dkim={r.result}"
        if r.result != "pass":
            item += _comment(r.reason[:80])
        if r.domain:
            item += f" header.d={_pvalue(r.domain)}"
        if r.selector:
            item += f" header.s={_pvalue(r.selector)}"
        if r.header_b:
            item += f" header.b={_pvalue(r.header_b)}"
        parts.append(item)
    dmarc: DmarcResult | None = ctx.facts.get("dmarc")
    if dmarc is None:
        parts.append("dmarc=temperror")
    else:
        item = f"dmarc={dmarc.result}"
        if dmarc.policy:
            item += _comment(f"p={dmarc.policy} dis={dmarc.disposition}")
        if dmarc.from_domain:
            item += f" header.from={_pvalue(dmarc.from_domain)}"
        parts.append(item)
    arc: ArcResult | None = ctx.facts.get("arc")
    if arc is None:
        parts.append("arc=temperror")
    else:
        remote_ip = arc.result != "none" and _is_ip(ctx.client_ip)
        parts.append(f"arc={arc.result}" + (_comment(f"sealed by {arc.sealer}") if arc.sealer else "")
                     + (f" smtp.remote-ip={_pvalue(ctx.client_ip)}" if remote_ip else ""))
    return "Authentication-Results: " + "; ".join(parts)
