"""The web process: MSP console, tenant portal, sign-in and health probes (Flask application factory).

One blueprint per audience: ``auth`` (sign-in), ``console`` (MSP, ``/console``), ``portal`` (tenant admin,
``/portal``: domains, quarantine, lists, branding), ``quarantine`` (end user, ``/q``, and the pages digest links
open), ``health`` (probes). Importing this package does nothing; :func:`create_app` builds an application.
Production: ``gunicorn 'app:create_app()'``; locally ``mailward web``.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from flask import Flask, render_template, request
from flask.sessions import SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from app.access import enforce
from app.auth import enter_scope, leave_scope, load_principal
from app.csp import CONTENT_SECURITY_POLICY
from app.extensions import csrf, db, init_mailward, limiter, limiter_storage_uri, login_manager
from tenants import dnsreadiness, sarules
from tenants.exceptions import NotFound
from tenants.platform import db as tdb
from tenants.platform.config import Config, get_config

log = logging.getLogger(__name__)

#: How long a sign-in lasts without activity; the signed session cookie is refused after it (sliding window).
SESSION_LIFETIME = timedelta(hours=8)
#: Largest request body; the consoles post small forms (the API will set its own limit per route).
MAX_REQUEST_SIZE = 1024 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
#: Seconds browsers keep to HTTPS once they reached the site over it.
HSTS_MAX_AGE = 365 * 24 * 3600


class _SessionInterface(SecureCookieSessionInterface):
    """Mark the session cookie Secure whenever the request came over HTTPS, even if not configured to always."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(super().get_cookie_secure(app) or request.is_secure)


def create_app(cfg: Config | None = None, *, heartbeat: bool = False) -> Flask:
    """Build the web application; refuses (:class:`~tenants.exceptions.SchemaNotCurrent`) an unmigrated database.

    ``heartbeat``: announce this process in the cluster view (``mailward web`` asks; tests and imports do not).
    """
    cfg = cfg or get_config()
    tdb.require_current_schema(cfg)

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=cfg.resolve_secret_key(),
        SESSION_COOKIE_NAME="mailward_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=False,  # still Secure on every HTTPS request, see _SessionInterface
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        WTF_CSRF_TIME_LIMIT=int(SESSION_LIFETIME.total_seconds()),
        MAX_CONTENT_LENGTH=MAX_REQUEST_SIZE,
    )
    app.session_interface = _SessionInterface()

    app.config.update(
        RATELIMIT_STORAGE_URI=limiter_storage_uri(cfg),
        RATELIMIT_STRATEGY="fixed-window",
        RATELIMIT_KEY_PREFIX="mailward:limit",
        RATELIMIT_SWALLOW_ERRORS=True,  # Redis away: the account lockout in the database still holds
    )
    init_mailward(app, cfg)
    db.init_app(app, cfg)
    csrf.init_app(app)  # its before_request runs first: a POST without a valid token never reaches a view
    limiter.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message_category = "info"
    login_manager.user_loader(load_principal)

    app.before_request(enter_scope)
    app.before_request(enforce)
    app.teardown_request(leave_scope)
    app.after_request(_security_headers)

    _register_blueprints(app)
    _register_error_handlers(app)
    if cfg.trusted_proxies:
        # Behind a reverse proxy: take the client address, scheme and host from the proxies' X-Forwarded-* headers,
        # trusting exactly as many hops as configured (a client can forge any header beyond them).
        n = cfg.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    if heartbeat:
        _start_heartbeat(app, cfg)

    @app.context_processor
    def _platform_warnings() -> dict[str, list[str]]:
        """Warnings about this installation's configuration, at the top of every MSP staff page (operators must not
        miss them); never on tenant or end-user pages (customers cannot act on them), nor when viewing as a tenant."""
        warnings: list[str] = []
        if not (getattr(current_user, "is_authenticated", False) and getattr(current_user, "is_msp", False)):
            return {"platform_warnings": warnings}
        if not dnsreadiness.hostname_usable(cfg.hostname):
            warnings.append(f"MAILWARD_HOSTNAME is not set to this gateway's public host name (it is "
                            f"{cfg.hostname!r}): the DNS checklists cannot propose MX and SPF records.")
        if cfg.clamd is None:
            warnings.append("Virus scanning is off: MAILWARD_CLAMD is not set, so no mail is scanned for viruses.")
        if cfg.sa_rules_dir != sarules.OFF and (found := sarules.locate(cfg.sa_rules_dir)).rules_dir is None:
            warnings.append(f"SpamAssassin rules are off: {found.reason}.")
        return {"platform_warnings": warnings}

    return app


def _register_blueprints(app: Flask) -> None:
    # One package per audience: app/console, app/portal, app/quarantine (end users), app/auth (sign-in, account,
    # password links), app/api; the modules in each add their views to that audience's blueprint.
    # security and cluster add theirs to the console and portal blueprints (audit log, settings, view-as, cluster);
    # tracking and stats theirs too (tracking center and statistics); policy the baseline and tenant policy pages.
    # rules adds the mail rules pages to both (the tenant's one list, the MSP's baseline).
    from app import (  # noqa: F401
        auth,
        console,
        health,
        held,
        metrics,
        policy,
        portal,
        quarantine,
        rules,
        security,
        stats,
        tracking,
    )
    from app.auth import account, passwords  # noqa: F401
    from app.console import admin, backups, cluster, onboarding  # noqa: F401
    from app.portal import admin as portal_admin  # noqa: F401
    from app.portal import learning, lists, recipients, rules_preview  # noqa: F401
    from app.portal import quarantine as portal_quarantine  # noqa: F401
    from app.quarantine import links as quarantine_links  # noqa: F401
    from app.quarantine import lists as quarantine_lists  # noqa: F401

    held.init_app(app)
    metrics.init_app(app)  # /metrics: the cluster's Prometheus metrics, for a scraper with the token
    app.register_blueprint(auth.bp)
    app.register_blueprint(console.bp)
    app.register_blueprint(portal.bp)
    app.register_blueprint(quarantine.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(account.bp)
    from app import api  # REST v1 with OpenAPI at /api/v1: bearer API keys, no cookies, exempt from CSRF

    api.init_app(app)


def _start_heartbeat(app: Flask, cfg: Config) -> None:
    """Beat for this web process every few seconds from a daemon thread, with the number of requests served."""
    import atexit
    import itertools

    from tenants.platform.heartbeat import HeartbeatThread

    served = itertools.count()
    count = [0]

    def counted(response: Response) -> Response:
        count[0] = next(served) + 1
        return response

    app.after_request(counted)
    thread = HeartbeatThread(cfg, "web", lambda: count[0])
    thread.start()
    atexit.register(thread.stop)


def _security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", f"max-age={HSTS_MAX_AGE}")
    if request.endpoint != "static":
        response.headers.setdefault("Cache-Control", "no-store")  # pages carry tenant data: keep them out of caches
    return response


_ERROR_TEXT = {
    400: ("Bad request", "The request could not be understood."),
    404: ("Not found", "There is no such page, or it is not yours to see."),
    405: ("Method not allowed", "This page does not accept that kind of request."),
    413: ("Request too large", "The request is larger than this site accepts."),
    429: ("Too many requests", "Too many requests; wait a few minutes and try again."),
    500: ("Server error", "Something went wrong on our side; it has been logged."),
}


def _error_page(code: int, message: str | None = None) -> ResponseReturnValue:
    title, default = _ERROR_TEXT.get(code, ("Error", "The request failed."))
    return render_template("errors/error.html", code=code, title=title, message=message or default), code


def _register_error_handlers(app: Flask) -> None:
    def not_found(exc: Exception) -> ResponseReturnValue:
        return _error_page(404)  # the same page for a missing row and another tenant's row

    def csrf_failed(exc: CSRFError) -> ResponseReturnValue:
        return _error_page(400, f"{exc.description} Reload the page and submit the form again.")

    def http_error(exc: HTTPException) -> ResponseReturnValue:
        if exc.response is not None:  # the raiser built its own answer (the sign-in limit's page, with Retry-After)
            return exc.response
        return _error_page(exc.code or 500)

    app.register_error_handler(NotFound, not_found)
    app.register_error_handler(CSRFError, csrf_failed)
    for code in _ERROR_TEXT:
        app.register_error_handler(code, http_error)
