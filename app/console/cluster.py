"""The cluster view in the MSP console (``/console/cluster``): every ingress, worker, scheduler and web process that
announced itself (:mod:`tenants.platform.heartbeat`), when it was last seen and how much it handled; silent ones
show as down.
"""

from __future__ import annotations

from flask import render_template
from flask.typing import ResponseReturnValue

from app.access import MSP_ROLES, allow
from app.console import bp
from app.extensions import db
from tenants.models import utcnow
from tenants.platform import heartbeat


@bp.route("/cluster")
@allow(*MSP_ROLES)
def cluster() -> ResponseReturnValue:
    now = utcnow()
    processes = heartbeat.cluster(db.session, now=now)
    return render_template("console/cluster.html", processes=processes, now=now,
                           interval=heartbeat.INTERVAL, stale_after=int(heartbeat.STALE_AFTER.total_seconds()))
