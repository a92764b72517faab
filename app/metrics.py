"""``/metrics``: the cluster's Prometheus metrics, read from the shared stores at scrape time (see tenants/metrics.py).

No session or role opens it. A scraper is admitted by ``Authorization: Bearer <MAILWARD_METRICS_TOKEN>`` or by its
address in ``MAILWARD_METRICS_ALLOW`` (behind a proxy, as MAILWARD_TRUSTED_PROXIES reveals it). With neither
configured the endpoint is off: 404 to everyone. A wrong or missing token gets 401; the values carry no tenant,
domain or address, but queue depth and mail counts are still the MSP's business.
"""

from __future__ import annotations

import hmac
import ipaddress

from flask import Blueprint, Flask, Response, abort, current_app, request
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.access import allow_public
from app.extensions import config, redis
from tenants.metrics import cluster_registry
from tenants.platform import db as tdb
from tenants.platform.config import Config

bp = Blueprint("metrics", __name__)

#: Key in ``app.extensions`` of the registry /metrics serves (built on first scrape).
REGISTRY_EXT = "mailward_metrics"


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def _token_matches(cfg: Config) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return (bool(cfg.metrics_token) and scheme.lower() == "bearer"
            and hmac.compare_digest(given.strip().encode(), cfg.metrics_token.encode()))


def _network_allowed(cfg: Config) -> bool:
    try:
        ip = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    return any(ip in net for net in cfg.metrics_allow)


@bp.route("/metrics")
@allow_public
def metrics() -> ResponseReturnValue:
    """Prometheus text exposition of the cluster's metrics, to an admitted scraper only."""
    cfg = config()
    if not cfg.metrics_token and not cfg.metrics_allow:
        abort(404)
    if not (_token_matches(cfg) or _network_allowed(cfg)):
        if not cfg.metrics_token:
            abort(404)
        return Response("a bearer token is required\n", 401, mimetype="text/plain",
                        headers={"WWW-Authenticate": 'Bearer realm="mailward metrics"'})
    registry = current_app.extensions.get(REGISTRY_EXT)
    if registry is None:
        registry = current_app.extensions[REGISTRY_EXT] = cluster_registry(cfg, tdb.session_factory(cfg), redis())
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
