"""Per-tenant Bayes: each recipient tenant's own classifier rates the mail; the band becomes a per-tenant symbol."""

from __future__ import annotations

import asyncio

from smtp.checks.base import Check, CheckContext, Stage
from smtp.mime import ParsedMail
from tenants.mail.bayes import DEFAULT_MIN_TRAINED, classify_hashes, mail_hashes
from tenants.platform.db import session_factory
from tenants.scope import tenant_scope

#: (lower bound of the spam probability, symbol), highest first: SpamAssassin's bands.
BANDS: tuple[tuple[float, str], ...] = (
    (0.99, "BAYES_99"),
    (0.95, "BAYES_95"),
    (0.80, "BAYES_80"),
    (0.60, "BAYES_60"),
    (0.40, "BAYES_50"),
    (0.20, "BAYES_40"),
    (0.05, "BAYES_20"),
    (0.01, "BAYES_05"),
    (0.0, "BAYES_00"),
)
#: Probability from which BAYES_999 is recorded on top of BAYES_99.
VERY_SURE = 0.999


def band_symbols(probability: float) -> list[str]:
    """The symbols a spam probability records: its band, and BAYES_999 with BAYES_99 when very sure."""
    symbol = next(s for bound, s in BANDS if probability >= bound)
    return [symbol, "BAYES_999"] if probability >= VERY_SURE else [symbol]


def _shown(probability: float) -> str:
    """3 decimals, or 4 near the ends, where "1.000" would hide whether BAYES_999 applies."""
    return f"{probability:.4f}" if not 0.001 < probability < 0.999 else f"{probability:.3f}"


class BayesCheck(Check):
    name = "bayes"
    stage = Stage.DATA
    timeout = 5.0
    directions = ("inbound",)
    symbols = tuple(s for _, s in BANDS) + ("BAYES_999",)

    def _classify(self, mail: ParsedMail, tenants: list[tuple[int, int]]) -> list[tuple[int, float | None]]:
        """Tokenize once, then ask each tenant's classifier (one SELECT each); runs in a worker thread."""
        hashes = mail_hashes(mail)
        out: list[tuple[int, float | None]] = []
        with session_factory(self.cfg)() as session:
            for tenant_id, min_trained in tenants:
                with tenant_scope(tenant_id):
                    out.append((tenant_id, classify_hashes(session, tenant_id, hashes, min_trained=min_trained)))
                session.rollback()  # end the read transaction before the next tenant
        return out

    async def run(self, ctx: CheckContext) -> None:
        if ctx.mail is None or not ctx.tenant_ids:
            return
        tenants = []
        for tid in dict.fromkeys(ctx.tenant_ids):
            policy = ctx.policies.get(tid)
            tenants.append((tid, policy.bayes_min_trained if policy is not None else DEFAULT_MIN_TRAINED))
        for tenant_id, probability in await asyncio.to_thread(self._classify, ctx.mail, tenants):
            if probability is None:
                continue  # this tenant has not trained enough spam and ham yet
            for symbol in band_symbols(probability):
                ctx.add(symbol, f"probability {_shown(probability)}", tenant_id=tenant_id)
