"""The REST API, ``/api/v1``: flask-smorest views over the ``tenants`` services, described by an OpenAPI document
at ``/api/v1/openapi.json`` and, for people, a reference page at ``/api/v1/docs`` (:mod:`~app.api.docs`).

Callers authenticate with ``Authorization: Bearer <API key>`` (:mod:`app.api.auth`); the key sets the tenant scope
(or the MSP scope) for the request, so isolation is the data layer's, as everywhere. Another tenant's object is 404.
Errors are JSON with stable codes (:mod:`app.api.errors`); a view's changes and audit entries are committed, or
rolled back and answered with an error, by :mod:`app.api.actions`. The API takes no session cookie and so needs no CSRF
token. Resources, one module each: :mod:`~app.api.tenancy` (tenants, domains, users), :mod:`~app.api.lists`,
:mod:`~app.api.quarantine`, :mod:`~app.api.messages`, :mod:`~app.api.keys`, :mod:`~app.api.transports`,
:mod:`~app.api.stats` (statistics and usage), :mod:`~app.api.audit`, :mod:`~app.api.dkim`, :mod:`~app.api.rules`
(mail rules).
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_smorest import Api

from app.access import API_AUTH_EXT, allow_public
from app.api import auth, docs, errors
from app.api.blueprint import (
    CONVERTERS,
    MESSAGE_ID_PATTERN,
    PREFIX,
    MessageIdConverter,
    RowIdConverter,
    bp,
)
from app.api.schemas import MAX_ID, ErrorSchema
from app.extensions import csrf

#: Endpoint of the OpenAPI document (flask-smorest's own blueprint).
SPEC_ENDPOINT = "api-docs.openapi_json"
#: flask-smorest's settings (an application may set its own first).
API_SETTINGS: dict[str, Any] = {
    "API_TITLE": "Mailward",
    "API_VERSION": "v1",
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": PREFIX,
    "OPENAPI_JSON_PATH": "openapi.json",
    "API_SPEC_OPTIONS": {
        "info": {"description": "Multi-tenant email security gateway. Authenticate with `Authorization: Bearer "
                                "<API key>`; a tenant key sees its tenant only, an MSP key the whole MSP."},
        "servers": [{"url": "/"}],
        "components": {"securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}},
        "security": [{"apiKey": []}],
    },
}


class _Api(Api):
    """flask-smorest's Api, with the API's error body and without its application-wide error handler (that would
    turn the consoles' HTML error pages into JSON; the API blueprint has its own handlers)."""

    ERROR_SCHEMA = ErrorSchema

    def _register_error_handlers(self) -> None:
        pass


def init_app(app: Flask) -> Api:
    """Mount the API on the application: routes, OpenAPI document, bearer-key check, JSON errors, no cookies."""
    # The resource modules add their views to bp when imported.
    from app.api import (  # noqa: F401
        audit,
        dkim,
        keys,
        lists,
        messages,
        quarantine,
        recipients,
        rules,
        stats,
        tenancy,
        transports,
        users,
    )

    for name, value in API_SETTINGS.items():
        app.config.setdefault(name, value)
    app.config.setdefault("MAILWARD_API_RATE_LIMIT", auth.RATE_LIMIT)
    app.config.setdefault("MAILWARD_API_RATE_WINDOW", auth.RATE_WINDOW)
    api = _Api(app)
    app.url_map.converters.update(CONVERTERS)
    api.register_converter(RowIdConverter, lambda c: {"type": "integer", "minimum": 1, "maximum": MAX_ID})
    api.register_converter(MessageIdConverter, lambda c: {"type": "string", "pattern": f"^{MESSAGE_ID_PATTERN}$"})
    api.register_blueprint(bp)
    csrf.exempt(bp)  # bearer keys, never cookies: there is no ambient credential to forge a request with

    spec_view = app.view_functions[SPEC_ENDPOINT]

    @allow_public
    def openapi_json() -> Any:
        """The OpenAPI document: it describes the API and holds no tenant data."""
        return spec_view()

    app.view_functions[SPEC_ENDPOINT] = openapi_json
    docs.init_app(app, api, PREFIX)  # the reference page, /api/v1/docs

    app.extensions[API_AUTH_EXT] = auth.check
    app.before_request(errors.unrouted(PREFIX))
    app.teardown_request(auth.leave_scope)
    app.wsgi_app = auth.WithoutCookies(app.wsgi_app, [PREFIX])  # type: ignore[method-assign]
    return api
