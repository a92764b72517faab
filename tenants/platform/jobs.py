"""Asking the worker for work from outside it (the web, the CLI, services here) by job name, after a commit.

``tenants`` imports nothing of ``worker``: a job is named by its dotted path, which is all RQ stores anyway. The
database stays the truth: a job that could not be queued (Redis down) changes nothing that the sweeper does not
find again, since the rows it would act on are due in the database.

Services stage their writes and ask for follow-up work with :func:`after_commit`; the work runs only once the
caller's transaction has committed (a worker that picked the job up earlier would find nothing to do), and is
dropped if it rolls back.

Jobs are stored as JSON (:data:`SERIALIZER`), never pickled: a pickled job is code, so anyone who can write to Redis
could run anything in the worker. Job arguments and results are therefore plain JSON values (ids, strings, numbers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rq import Queue
from rq.serializers import JSONSerializer
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from tenants.platform.config import Config
from tenants.platform.redisconn import redis_client

log = logging.getLogger(__name__)

#: Queue names, most urgent first; a worker serves them in this order.
QUEUES = ("delivery", "default")
DELIVERY_QUEUE, DEFAULT_QUEUE = QUEUES
#: The job that delivers the due rows of one message.
DELIVER_JOB = "worker.jobs.deliver"
#: Seconds one delivery job may run (several hosts, each with the SMTP timeout per step).
DELIVERY_JOB_TIMEOUT = 900
#: The job that looks up one domain's DNS checklist and caches it (:mod:`tenants.dnscache`, :mod:`worker.dnscheck`).
DNSCHECK_JOB = "worker.dnscheck.check_job"
#: Seconds a failed job is kept for inspection.
FAILURE_TTL = 86400
#: How every queue, worker and reader of Mailward's jobs (de)serializes them: JSON, so that a job written into Redis
#: by someone else is data to the worker, never code (RQ's default is pickle).
SERIALIZER = JSONSerializer

_PENDING = "mailward_after_commit"


def enqueue_job(cfg: Config, name: str, *args: Any, queue: str = DEFAULT_QUEUE, connection: Any = None,
                **options: Any) -> None:
    """Put the job ``name`` (a dotted path in ``worker``) on a queue; ``options`` go to RQ's ``enqueue_call``."""
    options.setdefault("failure_ttl", FAILURE_TTL)
    job_queue(cfg, queue, connection).enqueue_call(name, args=args, **options)


def job_queue(cfg: Config, name: str = DEFAULT_QUEUE, connection: Any = None) -> Queue:
    """One of Mailward's RQ queues, with its JSON serializer (the only way to build one: never pickle)."""
    return Queue(name, connection=connection or redis_client(cfg), serializer=SERIALIZER)


def enqueue_delivery(cfg: Config, tenant_id: int, message_id: str, connection: Any = None) -> bool:
    """Queue a delivery job for one message unless one was queued moments ago; True if queued now.

    The guard is a short-lived Redis key, not RQ's unique job ids: a job whose worker was killed stays "started"
    in RQ until its timeout, and must not block the retry. A second job for the same message is harmless, since
    the rows are claimed atomically in the database; the guard only keeps the queue short.
    """
    return enqueue_once(cfg, f"mailward:deliver-queued:{message_id}", _guard_seconds(cfg), DELIVER_JOB, tenant_id,
                        message_id, queue=DELIVERY_QUEUE, connection=connection, timeout=DELIVERY_JOB_TIMEOUT,
                        result_ttl=0, description=f"deliver {message_id}")


def enqueue_once(cfg: Config, guard: str, seconds: int, name: str, *args: Any, connection: Any = None,
                 **options: Any) -> bool:
    """:func:`enqueue_job` unless the Redis key ``guard`` says the job was queued within ``seconds`` (across
    processes and restarts); True if queued now. ``options`` as for :func:`enqueue_job`."""
    conn = connection or redis_client(cfg)
    if not conn.set(guard, 1, nx=True, ex=seconds):
        return False
    enqueue_job(cfg, name, *args, connection=conn, **options)
    return True


def _guard_seconds(cfg: Config) -> int:
    return max(2, int(cfg.sweep_interval * 2))


def after_commit(session: Session, action: Callable[[], object]) -> None:
    """Run ``action`` once the session's current transaction commits; drop it if the transaction rolls back.

    An action that raises is logged and does not disturb the caller (its commit already happened).
    """
    session.info.setdefault(_PENDING, []).append(action)


def request_delivery_after_commit(session: Session, cfg: Config, tenant_id: int, message_id: str) -> None:
    """Queue delivery of the message's due rows once the caller commits (the sweeper is the fallback)."""
    after_commit(session, lambda: enqueue_delivery(cfg, tenant_id, message_id))


@event.listens_for(Session, "after_commit")
def _run_pending(session: Session) -> None:
    for action in session.info.pop(_PENDING, []):
        try:
            action()
        except Exception:
            log.exception("work requested after commit failed; the sweeper will pick it up")


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, previous_transaction: SessionTransaction) -> None:
    if previous_transaction.nested:
        return
    session.info.pop(_PENDING, None)
