"""Fast-path delivery: right after its commit, the ingress delivers a mail itself instead of waiting for the worker.

The rows were committed already claimed (``delivering``, with a lease), so nothing is lost if this fails or the
process dies: the rows stay claimed until their lease ends, then the worker's sweeper finds them and retries. A
stopping ingress gives unfinished claims back at once (``IngressHandler.drain``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from smtp.delivery import Deliverer
from smtp.delivery import Envelope as DeliveryEnvelope
from smtp.outbound import NextHop
from tenants.models import Delivery

log = logging.getLogger(__name__)

#: Most fast-path deliveries one ingress runs at once; more wait (their rows are already committed).
MAX_CONCURRENT_DELIVERIES = 200


class FastPath:
    """Runs the deliveries of committed mail as tasks, and knows which claims are still in flight."""

    def __init__(self, deliverer: Deliverer) -> None:
        self.deliverer = deliverer
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_DELIVERIES)
        #: Running deliveries → (claim token, rows), for a drain to give back what did not finish.
        self.in_flight: dict[asyncio.Task[None], tuple[str, list[Delivery]]] = {}

    def start(self, env: DeliveryEnvelope, rows: list[Delivery], data: bytes, token: str,
              hops: dict[str, NextHop] | None = None) -> None:
        """Deliver ``data`` to the claimed ``rows`` in the background."""
        task = asyncio.create_task(self._deliver(env, rows, data, token, hops))
        self.in_flight[task] = (token, rows)
        task.add_done_callback(self.in_flight.pop)

    async def _deliver(
        self, env: DeliveryEnvelope, rows: Sequence[Delivery], data: bytes, token: str,
        hops: dict[str, NextHop] | None = None,
    ) -> None:
        async with self._slots:
            try:
                await self.deliverer.deliver(env, rows, data, token, hops)
            except Exception:
                # The rows stay claimed until their lease ends; then the worker's sweeper retries them.
                log.exception("fast-path delivery of %s failed; the worker will retry", env.message_id)
