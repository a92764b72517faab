"""Prometheus metrics: every metric Mailward exports is defined here, and nowhere else.

Two views, two endpoints:

* **Per process** (``MAILWARD_METRICS_PORT`` on the ingress and the worker): what this process did — check
  latencies, mails it accepted, delivery attempts, database and Redis errors — in prometheus_client's default
  registry, served by :func:`serve_process_metrics`. An ingress of several processes uses prometheus_client's
  multiprocess mode: its supervisor serves the merged values of all its children on the one port, and the values
  of a child that died stay counted (:func:`enable_multiprocess`). Every metric here has labels, so no value exists
  before the first ``labels()`` call, which happens in the children, after the mode is on.
* **The cluster** (``/metrics`` on the web, :mod:`app.metrics`): read at scrape time from the shared state by
  :class:`SharedStateCollector`, so that any web replica sees every ingress process on every host: the mail counts
  each ingress adds to a Redis hash after its commit (:func:`count_in_redis`; never before, never blocking or failing
  the 250), queue depth, the oldest deferred mail and held mail from the delivery rows, and RQ queue lengths. The
  Redis counts restart at 0 when Redis loses its data, which Prometheus reads as a counter reset.

No metric carries a tenant, a domain or an address: labels are check names, directions, verdicts and results.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tenants.models import Delivery, DeliveryStatus, Message, utcnow
from tenants.platform.config import Config
from tenants.platform.jobs import QUEUES, job_queue
from tenants.scope import msp_scope

log = logging.getLogger(__name__)

#: Redis hash of the cluster's mail counts: field ``direction:verdict`` → mails accepted (one per tenant share).
MAIL_COUNTS_KEY = "mailward:metrics:mails"
#: Seconds the ingress gives Redis to take a mail count before it gives up (counted as a Redis error).
COUNT_TIMEOUT = 2.0
#: prometheus_client reads its multiprocess directory from this variable (its own contract, not a Mailward setting).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Check latency buckets, in seconds: DNS answers in milliseconds, clamd and the scorers in seconds.
CHECK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# --- per process ----------------------------------------------------------------------------------------------------

CHECK_SECONDS = Histogram("mailward_check_duration_seconds", "Time one check took on one mail (timeouts included)",
                          ["check"], buckets=CHECK_BUCKETS)
INGRESS_MAILS = Counter("mailward_ingress_mails", "Mails this ingress accepted (committed), one per tenant share",
                        ["direction", "verdict"])
DELIVERY_ATTEMPTS = Counter("mailward_delivery_attempts", "Delivery attempts recorded, by where they left the row",
                            ["result"])
STORE_ERRORS = Counter("mailward_store_errors", "Database and Redis calls that failed (a 451 when the mail needed "
                       "them)", ["store", "operation"])


def store_error(store: str, operation: str) -> None:
    """Count one failed call to ``store`` (``database`` or ``redis``)."""
    STORE_ERRORS.labels(store, operation).inc()


def count_accepted(direction: str, verdicts: Iterable[str]) -> dict[str, int]:
    """Count committed mails in this process; the per-verdict counts for :func:`count_in_redis`."""
    counts: dict[str, int] = {}
    for verdict in verdicts:
        INGRESS_MAILS.labels(direction, verdict).inc()
        counts[f"{direction}:{verdict}"] = counts.get(f"{direction}:{verdict}", 0) + 1
    return counts


async def count_in_redis(client: Any, counts: dict[str, int]) -> None:
    """Add committed mails to the cluster's counts; a failure is logged and counted, never raised."""
    try:
        async with asyncio.timeout(COUNT_TIMEOUT):
            pipe = client.pipeline(transaction=False)
            for field, n in counts.items():
                pipe.hincrby(MAIL_COUNTS_KEY, field, n)
            await pipe.execute()
    except Exception as exc:  # Redis down or slow: the mail is committed all the same
        log.warning("mail count not added to Redis: %s", exc)
        store_error("redis", "mail_count")


def enable_multiprocess() -> str:
    """Switch this process (before it forks its children) to prometheus_client's multiprocess mode, in a fresh
    directory; returns it. Children write their values there; :func:`serve_process_metrics` merges them."""
    path = tempfile.mkdtemp(prefix="mailward-metrics-")
    os.environ[MULTIPROC_ENV] = path
    values.ValueClass = values.MultiProcessValue()
    return path


def disable_multiprocess(path: str) -> None:
    os.environ.pop(MULTIPROC_ENV, None)
    shutil.rmtree(path, ignore_errors=True)


def serve_process_metrics(cfg: Config, *, multiprocess_dir: str | None = None) -> Any:
    """Serve this process's metrics (or, with ``multiprocess_dir``, its children's merged ones) on
    ``MAILWARD_METRICS_PORT`` from a daemon thread; None when the setting is off. The server, for shutdown()."""
    if cfg.metrics_listen is None:
        return None
    registry: Any = None
    if multiprocess_dir is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=multiprocess_dir)
    kwargs = {"registry": registry} if registry is not None else {}
    server, _ = start_http_server(cfg.metrics_listen.port, addr=cfg.metrics_listen.host, **kwargs)
    log.info("metrics on http://%s/metrics", cfg.metrics_listen)
    return server


# --- the cluster, read from the shared state at scrape time ---------------------------------------------------------

#: Delivery statuses counted as the queue: waiting for a first attempt, being tried, waiting for a retry.
QUEUE_STATUSES = (DeliveryStatus.QUEUED, DeliveryStatus.DELIVERING, DeliveryStatus.DEFERRED)


class SharedStateCollector(Collector):
    """The cluster's metrics, read from Redis and the database on every scrape. A store that does not answer shows
    as ``mailward_metrics_source_up{source} 0`` and its metrics are left out; the scrape itself still succeeds."""

    def __init__(self, cfg: Config, sessions: Callable[[], Session], client: Any) -> None:
        self.cfg = cfg
        self.sessions = sessions
        self.client = client

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mailward_metrics_source_up", "Whether a shared store answered this scrape",
                               labels=["source"])
        for source, read in (("redis", self._redis), ("database", self._database)):
            try:
                got = list(read())
            except Exception as exc:
                log.warning("metrics: %s unavailable: %s", source, exc)
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from got
        yield up

    def _redis(self) -> Iterator[Metric]:
        mails = CounterMetricFamily("mailward_mails", "Mails accepted by every ingress process, one per tenant share",
                                    labels=["direction", "verdict"])
        for field, n in sorted(self.client.hgetall(MAIL_COUNTS_KEY).items()):
            direction, _, verdict = field.decode().partition(":")
            mails.add_metric([direction, verdict], int(n))
        yield mails
        queues = GaugeMetricFamily("mailward_rq_queue_length", "Jobs waiting in an RQ queue", labels=["queue"])
        for name in QUEUES:
            queues.add_metric([name], job_queue(self.cfg, name, self.client).count)
        yield queues

    def _database(self) -> Iterator[Metric]:
        with msp_scope():
            session = self.sessions()
            try:
                by_status, oldest, held = queue_state(session)
            finally:
                session.close()
        depth = GaugeMetricFamily("mailward_queue_depth", "Delivery rows not yet delivered or bounced",
                                  labels=["status"])
        for status in QUEUE_STATUSES:
            depth.add_metric([status.value], by_status.get(status.value, 0))
        yield depth
        age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily("mailward_queue_oldest_deferred_age_seconds",
                                "Age of the oldest deferred delivery row (0: none deferred)", value=max(age, 0.0))
        kinds = GaugeMetricFamily("mailward_held_mails", "Mails held in the quarantine", labels=["kind"])
        for kind, n in sorted(held.items()):
            kinds.add_metric([kind], n)
        yield kinds


def queue_state(session: Session) -> tuple[dict[str, int], datetime | None, dict[str, int]]:
    """Delivery rows by queue status, the creation time of the oldest deferred row, and held mails by quarantine
    kind (messages with a row still quarantined). The caller runs in the MSP scope."""
    by_status = {str(s): int(n) for s, n in session.execute(
        select(Delivery.status, func.count()).where(Delivery.status.in_([s.value for s in QUEUE_STATUSES]))
        .group_by(Delivery.status))}
    oldest = session.scalar(select(func.min(Delivery.created_at))
                            .where(Delivery.status == DeliveryStatus.DEFERRED.value))
    held = {str(k or "other"): int(n) for k, n in session.execute(
        select(Message.quarantine_kind, func.count(func.distinct(Delivery.message_id)))
        .join(Message, Message.id == Delivery.message_id)
        .where(Delivery.status == DeliveryStatus.QUARANTINED.value).group_by(Message.quarantine_kind))}
    return by_status, oldest, held


def cluster_registry(cfg: Config, sessions: Callable[[], Session], client: Any) -> CollectorRegistry:
    """The registry the web's /metrics serves: the shared state only (no per-process values of the web itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SharedStateCollector(cfg, sessions, client))
    return registry

