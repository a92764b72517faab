"""DKIM: every signature verified by dkimpy (keys fetched first, concurrently, with the asyncio resolver; the RSA
work in a thread); ``facts["dkim"]`` is the list of results."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

import dkim

from smtp.checks.base import CheckContext
from smtp.checks.msgauth import (
    HEADER_B_CHARS,
    MAX_DKIM_SIGNATURES,
    MIN_KEY_BITS,
    DkimResult,
    KeyedCheck,
    KeyStore,
    _key_name,
    _raw_fields,
    _tags,
    _text,
)


def _verify_dkim(raw: bytes, sigs: Sequence[dict[bytes, bytes]], keys: KeyStore) -> list[DkimResult]:
    """Verify each signature (dkimpy; runs in a thread)."""
    out: list[DkimResult] = []
    try:
        verifier = dkim.DKIM(raw, minkey=MIN_KEY_BITS)
    except dkim.DKIMException as exc:
        return [DkimResult("permerror", _text(t.get(b"d")), _text(t.get(b"s")), "", f"unparseable mail: {exc}")
                for t in sigs]
    for idx, tags in enumerate(sigs):
        domain, selector = _text(tags.get(b"d")).lower(), _text(tags.get(b"s"))
        header_b = re.sub(r"\s+", "", _text(tags.get(b"b")))[:HEADER_B_CHARS]
        key = _key_name(tags)
        try:
            ok = verifier.verify(idx, dnsfunc=keys.dnsfunc)
        except dkim.ValidationError as exc:
            out.append(DkimResult("fail", domain, selector, header_b, str(exc)))
            continue
        except dkim.DKIMException as exc:
            out.append(DkimResult("permerror", domain, selector, header_b, str(exc)))
            continue
        if ok:
            result, reason = "pass", f"d={domain} s={selector}"
        elif key is not None and key in keys.failed:
            result, reason = "temperror", f"key lookup failed: {keys.failed[key]}"
        elif key is None or keys.records.get(key) is None:
            result, reason = "permerror", f"no key published at {key or 'an invalid name'}"
        else:
            result, reason = "fail", f"d={domain} s={selector}: signature did not verify"
        out.append(DkimResult(result, domain, selector, header_b, reason))
    return out


#: The symbol of each per-signature result.
_DKIM_SYMBOLS = {"pass": "DKIM_VALID", "fail": "DKIM_INVALID", "permerror": "DKIM_INVALID",
                 "temperror": "DKIM_TEMPFAIL"}


class DkimCheck(KeyedCheck):
    """Verifies every DKIM signature; ``facts["dkim"]`` is the list of :class:`DkimResult`."""

    name = "dkim"
    symbols = ("DKIM_VALID", "DKIM_INVALID", "DKIM_NONE", "DKIM_TEMPFAIL")

    async def run(self, ctx: CheckContext) -> None:
        if ctx.mail is None:
            return
        raw = ctx.mail.raw
        sigs = [_tags(v) for _, v in _raw_fields(raw, ("DKIM-Signature",))][:MAX_DKIM_SIGNATURES]
        if not sigs:
            ctx.facts["dkim"] = []
            ctx.add("DKIM_NONE", "no DKIM signature")
            return
        keys = await self.fetch_keys(sigs)
        results = await asyncio.to_thread(_verify_dkim, raw, sigs, keys)
        ctx.facts["dkim"] = results
        by_symbol: dict[str, list[str]] = {}
        for r in results:
            reason = r.reason if r.result == "pass" else f"d={r.domain}: {r.reason}"
            by_symbol.setdefault(_DKIM_SYMBOLS[r.result], []).append(reason)
        for symbol, reasons in by_symbol.items():
            ctx.add(symbol, "; ".join(reasons))
