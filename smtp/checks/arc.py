"""ARC (RFC 8617): the chain verified by dkimpy; ``facts["arc"]`` is the result."""

from __future__ import annotations

import asyncio
from typing import Any

import dkim

from smtp.checks.base import CheckContext
from smtp.checks.msgauth import (
    MIN_KEY_BITS,
    ArcResult,
    KeyedCheck,
    KeyStore,
    _raw_fields,
    _tags,
    _text,
)

ARC_HEADERS = ("ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results")


def _verify_arc(raw: bytes, keys: KeyStore) -> tuple[bytes | None, list[dict[str, Any]], str]:
    try:
        cv, data, reason = dkim.arc_verify(raw, dnsfunc=keys.dnsfunc, minkey=MIN_KEY_BITS)
    except dkim.DKIMException as exc:
        return dkim.CV_Fail, [], str(exc)
    return cv, list(data), str(reason)


class ArcCheck(KeyedCheck):
    """Verifies the ARC chain (RFC 8617); ``facts["arc"]`` is an :class:`ArcResult`."""

    name = "arc"
    symbols = ("ARC_PASS", "ARC_FAIL", "ARC_NONE", "ARC_TEMPFAIL")

    async def run(self, ctx: CheckContext) -> None:
        if ctx.mail is None:
            return
        raw = ctx.mail.raw
        fields = _raw_fields(raw, ARC_HEADERS)
        if not fields:
            ctx.facts["arc"] = ArcResult("none", "no ARC headers")
            ctx.add("ARC_NONE", "no ARC headers")
            return
        signed = [_tags(v) for n, v in fields if n != "arc-authentication-results"]
        keys = await self.fetch_keys(signed)
        cv, data, reason = await asyncio.to_thread(_verify_arc, raw, keys)
        sealer = _text(data[0].get("as-domain")).lower() if data else ""
        if cv == dkim.CV_Pass:
            result = ArcResult("pass", f"{len(data)} ARC set(s), newest sealed by {sealer}", sealer, len(data))
        elif cv == dkim.CV_None:
            result = ArcResult("none", reason)
        elif keys.failed:
            result = ArcResult("temperror", "key lookup failed: " + "; ".join(keys.failed.values()), sealer)
        else:
            result = ArcResult("fail", reason, sealer, len(data))
        ctx.facts["arc"] = result
        symbol = {"pass": "ARC_PASS", "none": "ARC_NONE", "temperror": "ARC_TEMPFAIL"}.get(result.result, "ARC_FAIL")
        ctx.add(symbol, result.reason)
