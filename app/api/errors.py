"""Errors of the REST API: always JSON, ``{"error": {"code": ..., "message": ..., "fields": {...}}}``.

``code`` is stable for clients to test (see :data:`CODES`); ``message`` is for people; ``fields`` (validation errors
only) maps each bad field to its messages. A traceback or an HTML page never leaves ``/api/v1``: every HTTP error
code has a handler on the API blueprint (Flask tries a blueprint's handlers before the application's HTML pages),
and :func:`unrouted` answers URLs under the prefix that match no route.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException, default_exceptions
from werkzeug.routing import RequestRedirect

from tenants.exceptions import NotFound, PermissionDenied, ValidationError

log = logging.getLogger(__name__)

#: The stable error code of each HTTP status the API answers with (403 for a missing scope is ``forbidden_scope``,
#: 401 for an expired key ``key_expired``).
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation",
    429: "rate_limited",
    500: "internal",
}


class ApiError(Exception):
    """An error answer decided by API code: status, stable code, message, optional field messages and headers."""

    def __init__(self, status: int, code: str, message: str, *, fields: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = dict(fields or {})
        self.headers = dict(headers or {})


def error_response(status: int, code: str, message: str, *, fields: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = dict(fields)
    resp = jsonify({"error": body})
    resp.status_code = status
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp


def _fields(messages: Any) -> dict[str, Any]:
    """webargs' ``{"json": {"name": [...]}, "query": {...}}`` as one ``{"name": [...]}`` map."""
    out: dict[str, Any] = {}
    if not isinstance(messages, Mapping):
        return out
    for location, value in messages.items():
        if isinstance(value, Mapping):
            out.update(value)
        else:
            out[str(location)] = value
    return out


def handle_api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, fields=exc.fields, headers=exc.headers)


def handle_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    data = getattr(exc, "data", None) or {}  # webargs' abort() puts the field messages here
    fields = _fields(data.get("messages"))
    headers = dict(data.get("headers") or {})
    if status == 500:
        message = "internal error; it has been logged"
    elif status == 422:
        message = "invalid request: " + ", ".join(sorted(fields)) if fields else "invalid request"
    elif status == 400 and fields:
        message = "bad request: " + "; ".join(f"{k}: {v}" for k, v in sorted(fields.items()))
    else:
        message = exc.description or exc.name
    valid_methods = getattr(exc, "valid_methods", None)
    if status == 405 and valid_methods:
        headers.setdefault("Allow", ", ".join(sorted(valid_methods)))
    return error_response(status, CODES.get(status, "error"), message, fields=fields, headers=headers)


def handle_not_found(exc: NotFound) -> Response:
    # The same answer for a missing object and another tenant's object (no existence oracle).
    return error_response(404, "not_found", "no such object")


def handle_validation(exc: ValidationError) -> Response:
    return error_response(422, "validation", str(exc))


def handle_permission(exc: PermissionDenied) -> Response:
    return error_response(403, "forbidden", str(exc))


def register(bp: Blueprint) -> None:
    """JSON errors for everything raised in the blueprint's views and request hooks."""
    bp.register_error_handler(ApiError, handle_api_error)
    bp.register_error_handler(NotFound, handle_not_found)
    bp.register_error_handler(ValidationError, handle_validation)
    bp.register_error_handler(PermissionDenied, handle_permission)
    for status in default_exceptions:  # by code: the application's HTML handlers are registered by code too
        bp.register_error_handler(status, handle_http_exception)


def unrouted(prefix: str) -> Any:
    """A before-request hook: a URL under ``prefix`` that matches no route (or not with this method) gets a JSON
    404/405, not the application's HTML page (Flask raises routing errors only after the before-request hooks)."""

    def hook() -> Response | None:
        exc = request.routing_exception
        if exc is None or isinstance(exc, RequestRedirect):
            return None
        if request.path != prefix and not request.path.startswith(prefix + "/"):
            return None
        if isinstance(exc, HTTPException):
            return handle_http_exception(exc)
        return error_response(404, "not_found", "no such API route")

    return hook
