"""The REST API in tests: keys made through the service the CLI uses, a test client holding one key, the check of a
JSON error answer, and fixtures with a key of every scope for Acme, Beta and the MSP (the ``world`` fixture's)."""

from __future__ import annotations

from typing import Any

import pytest

from tenants import apikeys
from tenants.platform import db as tdb
from tenants.scope import msp_scope

API = "/api/v1"
ALL_SCOPES = "read,write,quarantine"


def make_key(cfg: Any, tenant_id: int | None, scopes: str = ALL_SCOPES, name: str = "test") -> str:
    """A new key for a tenant (or the MSP with None), made through the service the CLI uses."""
    with msp_scope(), tdb.session_scope(cfg) as s:
        tenant = None
        if tenant_id is not None:
            from tenants.services import get_tenant

            tenant = get_tenant(s, tenant_id)
        return apikeys.create(s, tenant, scopes, name).secret


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Client:
    """The Flask test client with one API key."""

    def __init__(self, web_app: Any, key: str) -> None:
        self.client = web_app.test_client()
        self.key = key

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(API + path, headers=auth(self.key), **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.client.post(API + path, headers=auth(self.key), json=body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.client.put(API + path, headers=auth(self.key), json=body, **kw)

    def patch(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.client.patch(API + path, headers=auth(self.key), json=body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.client.delete(API + path, headers=auth(self.key), **kw)

    def all_pages(self, path: str, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        for _ in range(1000):
            query = {**params, **({"cursor": cursor} if cursor else {})}
            resp = self.get(path, query_string=query)
            assert resp.status_code == 200, resp.get_json()
            body = resp.get_json()
            items.extend(body["items"])
            cursor = body["next_cursor"]
            if cursor is None:
                return items
        raise AssertionError("paging never ended")


def error(resp: Any, status: int, code: str) -> dict[str, Any]:
    """Assert a JSON error answer with this status and stable code; its error body."""
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:500])
    assert resp.mimetype == "application/json", resp.get_data(as_text=True)[:200]
    body = resp.get_json()["error"]
    assert body["code"] == code, body
    assert body["message"]
    return body  # type: ignore[no-any-return]


@pytest.fixture
def keys(cfg, world) -> dict[str, str]:
    """Keys with every scope for Acme, for Beta and for the MSP."""
    return {"acme": make_key(cfg, world["acme"].id), "beta": make_key(cfg, world["beta"].id),
            "msp": make_key(cfg, None)}


@pytest.fixture
def acme_api(web_app, keys) -> Client:
    return Client(web_app, keys["acme"])


@pytest.fixture
def msp_api(web_app, keys) -> Client:
    return Client(web_app, keys["msp"])


@pytest.fixture
def beta_api(web_app, keys) -> Client:
    return Client(web_app, keys["beta"])
