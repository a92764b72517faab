"""Probes for the orchestrator: ``/healthz`` (the process answers) and ``/readyz`` (its stores answer)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, Response, jsonify
from flask.typing import ResponseReturnValue

from app.access import allow_public
from app.extensions import db, redis

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.route("/healthz")
@allow_public
def healthz() -> ResponseReturnValue:
    """Liveness: no I/O, so a slow database never gets a healthy process restarted."""
    return Response("ok", mimetype="text/plain")


def _database() -> None:
    # A raw DBAPI connection: SQLAlchemy's BEGIN hook would take SQLite's write lock and queue the probe behind writers.
    conn = db.engine.raw_connection()
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchone()
        cur.close()
    finally:
        conn.close()


def _redis() -> None:
    redis().ping()


def _check(name: str, probe: Callable[[], None]) -> str:
    try:
        probe()
    except Exception as exc:  # any failure, DBAPI errors from the raw cursor included, means "not ready"
        log.warning("readiness: %s unavailable: %s", name, exc)
        return "unavailable"  # the reason goes to the log, not to an unauthenticated caller
    return "ok"


@bp.route("/readyz")
@allow_public
def readyz() -> ResponseReturnValue:
    """Readiness: 200 when the database and Redis both answer, else 503 naming the one that does not."""
    checks = {"database": _check("database", _database), "redis": _check("redis", _redis)}
    return jsonify(checks), 200 if all(v == "ok" for v in checks.values()) else 503
