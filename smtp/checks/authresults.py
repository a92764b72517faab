"""The Authentication-Results header (RFC 8601) Mailward adds to delivered mail, from the checks' results."""

from __future__ import annotations

from smtp.checks.base import CheckContext
from smtp.checks.msgauth import (
    _PTOKEN_RE,
    ArcResult,
    DkimResult,
    DmarcResult,
)
from smtp.dns import is_ip


def _pvalue(value: str) -> str:
    """A property value: as is when it is a plain token, else a quoted-string; never a line break."""
    clean = "".join(ch for ch in value if ch.isprintable() and ch not in "\r\n")
    if clean and _PTOKEN_RE.match(clean):
        return clean
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    clean = "".join(ch for ch in text if ch.isprintable() and ch not in "()\\\r\n")
    return f" ({clean})" if clean else ""


def _resinfo(method: str, result: str, comment: str, *properties: tuple[str, str]) -> str:
    """One result: ``method=result (comment) ptype.property=value ...``; an empty comment or value is left out."""
    out = f"{method}={result}" + _comment(comment) if comment else f"{method}={result}"
    for ptype_property, value in properties:
        if value:
            out += f" {ptype_property}={_pvalue(value)}"
    return out


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
        parts.append(_resinfo("dkim", r.result, r.reason[:80] if r.result != "pass" else "",
                              ("header.d", r.domain), ("header.s", r.selector), ("header.b", r.header_b)))
    dmarc: DmarcResult | None = ctx.facts.get("dmarc")
    if dmarc is None:
        parts.append("dmarc=temperror")
    else:
        policy = f"p={dmarc.policy} dis={dmarc.disposition}" if dmarc.policy else ""
        parts.append(_resinfo("dmarc", dmarc.result, policy, ("header.from", dmarc.from_domain)))
    arc: ArcResult | None = ctx.facts.get("arc")
    if arc is None:
        parts.append("arc=temperror")
    else:
        remote_ip = arc.result != "none" and is_ip(ctx.client_ip)
        parts.append(_resinfo("arc", arc.result, f"sealed by {arc.sealer}" if arc.sealer else "",
                              ("smtp.remote-ip", ctx.client_ip if remote_ip else "")))
    return "Authentication-Results: " + "; ".join(parts)
