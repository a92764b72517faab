"""Every route declares who may call it, and the declaration is what the running application enforces."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from werkzeug.routing import Rule

from app.access import access_of, allow, allow_public
from tenants.mailrules.replayjobs import enqueue_replay
from tenants.models import Role
from tests.support.held import hold
from tests.support.web import csrf_token, domain_row, sign_in, text

#: One signed-in user per role (see the ``world`` fixture).
USERS = {
    Role.MSP_ADMIN: "admin@msp.test",
    Role.MSP_HELPDESK: "helpdesk@msp.test",
    Role.TENANT_ADMIN: "admin@acme.test",
    Role.TENANT_AUDITOR: "auditor@acme.test",
    Role.USER: "user@acme.test",
}


def undeclared(app: Flask) -> list[str]:
    """Endpoints whose view carries neither ``@allow`` nor ``@allow_public``."""
    return sorted(rule.endpoint for rule in app.url_map.iter_rules()
                  if rule.endpoint != "static" and access_of(app.view_functions[rule.endpoint]) is None)


def url(rule: Rule, ident: int, message_id: str = "NOSUCHMESSAGE", job_id: str = "NOSUCHJOB") -> str:
    """A concrete URL for a rule: ``ident`` for every integer argument, ``message_id`` for a quarantined mail, and a
    made-up token for digest links (those pages are public, so no walk below needs a real one)."""
    path = rule.rule.replace("<int:domain_id>", str(ident)).replace("<int:entry_id>", str(ident))
    path = path.replace("<message_id>", message_id).replace("<token>", "not-a-token")
    path = path.replace("<job_id>", job_id)  # a rules preview (the dry-run replay)
    for name in ("user_id", "key_id", "dkim_id", "network_id", "credential_id", "rule_id"):  # users, keys, DKIM,
        # outbound, mail rules
        path = path.replace(f"<int:{name}>", str(ident))
    path = path.replace("<int:tenant_id>", str(ident))  # the console's tenant pages
    path = re.sub(r"<rowid:\w+>", str(ident), path).replace("<msgid:message_id>", message_id)  # the REST API's
    assert "<" not in path, f"teach url() the arguments of {rule.rule}"
    return path


def routes(app: Flask, method: str) -> list[Rule]:
    return [r for r in app.url_map.iter_rules() if r.endpoint != "static" and method in (r.methods or ())]


def test_every_view_declares_who_may_call_it(web_app):
    assert undeclared(web_app) == [], "add @allow(...) or @allow_public directly under @bp.route"


def test_an_undeclared_view_is_found_and_fails_closed(web_app):
    """A view without a declaration is reported by the check above and refused at run time as well."""
    def secret() -> str:
        return "secret data"

    web_app.add_url_rule("/undeclared", "undeclared", secret)
    assert undeclared(web_app) == ["undeclared"]
    resp = web_app.test_client().get("/undeclared")
    assert resp.status_code == 500 and "secret data" not in text(resp)


def test_unknown_role_is_refused_at_declaration():
    with pytest.raises(ValueError):
        allow("superuser")
    with pytest.raises(ValueError):
        allow()


def test_public_routes_are_exactly_the_expected_ones(web_app):
    public = sorted(r.endpoint for r in web_app.url_map.iter_rules()
                    if r.endpoint != "static" and access_of(web_app.view_functions[r.endpoint]).public)
    # The OpenAPI document of the REST API is public: it describes the API and holds no tenant data; so is its
    # reference page, /api/v1/docs, rendered from that document (tests/web/test_api_docs_keys.py).
    # /metrics checks its own bearer token or network (tests/integration/test_metrics.py): no session opens it.
    # "Forgot password?" and the page a set-password link opens (tests/web/test_accounts.py) take no session either.
    assert public == ["api-docs.openapi_json", "api_docs", "auth.forgot_password", "auth.home", "auth.login",
                      "auth.login_totp", "auth.set_password", "health.healthz", "health.readyz", "metrics.metrics",
                      "quarantine.action_link", "quarantine.login_link"]
    assert access_of(allow_public(lambda: None)).public


def test_every_protected_route_sends_anonymous_callers_to_login(web_app, world):
    client = web_app.test_client()
    token = csrf_token(text(client.get("/login")))
    for rule in routes(web_app, "GET") + routes(web_app, "POST"):
        if access_of(web_app.view_functions[rule.endpoint]).public:
            continue
        path = url(rule, 1)
        resp = client.get(path) if "GET" in (rule.methods or ()) else client.post(path, data={"csrf_token": token})
        if access_of(web_app.view_functions[rule.endpoint]).api_scope:  # the REST API: no bearer key is a 401
            assert resp.status_code == 401 and resp.is_json, path
            continue
        assert resp.status_code == 302, path
        assert resp.headers["Location"].startswith("/login"), path


@pytest.mark.parametrize("role", list(Role))
def test_roles_reach_exactly_the_pages_declared_for_them(web_app, world, cfg, role: Role):
    """Walk every GET page as each role: a declared role gets in, any other role gets 404.

    The quarantine pages need a real held mail: one for the tenant admin and the user (so both see it in their own
    quarantine at /q, and admins and auditors in the portal's).
    """
    client = sign_in(web_app, USERS[role])
    own_domain = domain_row(cfg, "acme.test")[0]
    held = hold(cfg, world["acme"].id, rcpts=("user@acme.test", "admin@acme.test"))
    job = enqueue_replay(cfg, world["acme"].id, 1, None)  # a rules preview of Acme (no worker runs it)
    for rule in routes(web_app, "GET"):
        access: Any = access_of(web_app.view_functions[rule.endpoint])
        if access.public:
            continue
        resp = client.get(url(rule, own_domain, held, job))
        expected = 200 if role in access.roles else 404
        if access.api_scope:
            expected = 401  # the REST API takes bearer keys only: a signed-in session is no credential there
        assert resp.status_code == expected, (role, rule.rule)
