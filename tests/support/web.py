"""Helpers for web tests: sign in as a browser would, read forms and their CSRF tokens, look at the database."""

from __future__ import annotations

from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any, TypeVar

import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants.models import Domain
from tenants.platform import db as tdb
from tenants.platform.config import Config
from tenants.policy import POLICY_VERSION_KEY
from tenants.scope import msp_scope

PASSWORD = "correct horse battery"  # the factory's default
T = TypeVar("T")


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "input":
            self.inputs.append(dict(attrs))


def inputs(html: str) -> list[dict[str, str | None]]:
    parser = _Inputs()
    parser.feed(html)
    return parser.inputs


def csrf_token(html: str) -> str:
    """The CSRF token of the first form on a page (every form of one session carries a valid one)."""
    for attrs in inputs(html):
        if (attrs.get("name") or "").endswith("csrf_token") and attrs.get("value"):
            return attrs["value"] or ""
    raise AssertionError("no csrf_token on the page")


def input_value(html: str, name: str) -> str | None:
    for attrs in inputs(html):
        if attrs.get("name") == name:
            return attrs.get("value")
    return None


def text(resp: Any) -> str:
    return resp.get_data(as_text=True)


def sign_in(web_app: Flask, email: str, password: str = PASSWORD, next_url: str | None = None) -> FlaskClient:
    """A new browser (cookie jar) signed in as ``email``."""
    client = web_app.test_client()
    resp = post_form(client, "/login", "/login", {"email": email, "password": password},
                     query={"next": next_url} if next_url else None)
    assert resp.status_code == 302, text(resp)
    return client


def post_form(client: FlaskClient, page: str, action: str, data: dict[str, str],
              query: dict[str, str] | None = None) -> Any:
    """Open ``page`` for its CSRF token, then POST ``data`` with it to ``action``."""
    token = csrf_token(text(client.get(page)))
    return client.post(action, data={**data, "csrf_token": token}, query_string=query)


def read(cfg: Config, fn: Callable[[Session], T]) -> T:
    """Look at the database as the MSP, in a short session of its own (no lock left for the app to wait on)."""
    with msp_scope(), tdb.session_scope(cfg) as s:
        return fn(s)


def domain_row(cfg: Config, name: str) -> tuple[int, str, int, str]:
    d = read(cfg, lambda s: s.scalars(select(Domain).where(Domain.name == name)).one())
    return d.id, d.transport_host, d.transport_port, d.transport_tls


def policy_version(cfg: Config) -> int:
    return int(redis.Redis.from_url(cfg.effective_redis_url).get(POLICY_VERSION_KEY) or 0)


