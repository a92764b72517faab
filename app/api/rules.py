"""``/api/v1/rules``: mail rules through :mod:`tenants.mailrules` (the services audit and make the ingresses reload).

A tenant key sees its tenant's one list — its provider's baseline rules (``baseline``, maybe ``locked``) and its
own, in evaluation order — and changes its own; of a baseline rule it may only disable an unlocked one for itself
(403 otherwise). An MSP key manages the baseline, or with ``tenant_id`` that tenant's rules. Any other rule id,
another tenant's included, is 404.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marshmallow import RAISE

from app.access import allow_api
from app.api import schemas_rules as sch
from app.api.actions import committed
from app.api.auth import caller
from app.api.blueprint import bp, narrowed_to
from app.extensions import config, db
from tenants.mailrules import service
from tenants.mailrules.service import RuleView
from tenants.mailrules.yamlio import editable_view, find_view


def _out(view: RuleView) -> dict[str, Any]:
    return {"id": view.id, "baseline": view.baseline, "locked": view.spec.locked, "active": view.effective_active,
            "opted_out": view.opted_out, "hits": view.hits, "rule": view.spec.as_dict(baseline=view.baseline)}


def _answer(rule_id: int, tid: int | None) -> dict[str, Any]:
    return _out(find_view(db.session, config(), rule_id, tid))


def _change(rule_id: int, tenant_id: int | None, check: Callable[..., RuleView],
            change: Callable[[int | None], object]) -> dict[str, Any]:
    """In the request's tenant scope: ``check`` that the caller may change the rule (404 or 403 otherwise), make the
    ``change`` (given the tenant, None: the baseline), commit, and answer the rule as it is now."""
    with narrowed_to(tenant_id) as tid:
        check(db.session, config(), rule_id, tid)
        with committed():
            change(tid)
        return _answer(rule_id, tid)


@bp.route("/rules", methods=["GET"], endpoint="list_rules", tags=["rules"])
@allow_api("read")
@bp.arguments(sch.RuleArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, sch.RuleListSchema)
def list_rules(tenant_id: int | None = None) -> dict[str, Any]:
    """The rules in evaluation order: a tenant's list holds its provider's baseline rules and its own, with hits;
    an MSP key without ``tenant_id`` gets the baseline."""
    with narrowed_to(tenant_id) as tid:
        return {"items": [_out(v) for v in service.rule_views(db.session, config(), tid)]}


@bp.route("/rules", methods=["POST"], endpoint="create_rule", tags=["rules"])
@allow_api("write")
@bp.arguments(sch.RuleBodySchema)
@bp.arguments(sch.RuleArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(201, sch.RuleSchema)
def create_rule(body: dict[str, Any], tenant_id: int | None = None) -> dict[str, Any]:
    """Add a rule (an MSP key without ``tenant_id``: a baseline rule). Invalid rules are 422 with the reason."""
    with narrowed_to(tenant_id) as tid:
        with committed():
            row = service.add_rule(db.session, config(), body, tenant_id=tid, actor=caller().actor)
        return _answer(row.id, tid)


@bp.route("/rules/<rowid:rule_id>", methods=["GET"], endpoint="get_rule", tags=["rules"])
@allow_api("read")
@bp.arguments(sch.RuleArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, sch.RuleSchema)
def get_rule(rule_id: int, tenant_id: int | None = None) -> dict[str, Any]:
    """One rule of the caller's list (a baseline rule included)."""
    with narrowed_to(tenant_id) as tid:
        return _answer(rule_id, tid)


@bp.route("/rules/<rowid:rule_id>", methods=["PUT"], endpoint="update_rule", tags=["rules"])
@allow_api("write")
@bp.arguments(sch.RuleBodySchema)
@bp.arguments(sch.RuleArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, sch.RuleSchema)
def update_rule(body: dict[str, Any], rule_id: int, tenant_id: int | None = None) -> dict[str, Any]:
    """Replace a rule's definition; a tenant key cannot change its provider's rules (403)."""
    return _change(rule_id, tenant_id, editable_view, lambda tid: service.update_rule(
        db.session, config(), rule_id, body, tenant_id=tid, actor=caller().actor))


@bp.route("/rules/<rowid:rule_id>", methods=["DELETE"], endpoint="delete_rule", tags=["rules"])
@allow_api("write")
@bp.arguments(sch.RuleArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(204)
def delete_rule(rule_id: int, tenant_id: int | None = None) -> None:
    """Remove a rule; a tenant key cannot remove its provider's rules (403: disable an unlocked one instead)."""
    with narrowed_to(tenant_id) as tid:
        editable_view(db.session, config(), rule_id, tid)
        with committed():
            service.remove_rule(db.session, config(), rule_id, tenant_id=tid, actor=caller().actor)


def _set_active(rule_id: int, tenant_id: int | None, active: bool) -> dict[str, Any]:
    """Any rule the caller sees, a baseline rule included (the tenant's opt-out; the service refuses a locked one)."""
    return _change(rule_id, tenant_id, find_view, lambda tid: service.set_active(
        db.session, config(), rule_id, active, tenant_id=tid, actor=caller().actor))


@bp.route("/rules/<rowid:rule_id>/enable", methods=["POST"], endpoint="enable_rule", tags=["rules"])
@allow_api("write")
@bp.arguments(sch.RuleArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, sch.RuleSchema)
def enable_rule(rule_id: int, tenant_id: int | None = None) -> dict[str, Any]:
    """Enable a rule (a tenant key and a baseline rule: end the tenant's opt-out)."""
    return _set_active(rule_id, tenant_id, True)


@bp.route("/rules/<rowid:rule_id>/disable", methods=["POST"], endpoint="disable_rule", tags=["rules"])
@allow_api("write")
@bp.arguments(sch.RuleArgs, location="query", as_kwargs=True, unknown=RAISE)
@bp.response(200, sch.RuleSchema)
def disable_rule(rule_id: int, tenant_id: int | None = None) -> dict[str, Any]:
    """Disable a rule (a tenant key and an unlocked baseline rule: opt the tenant out; a locked one is 403)."""
    return _set_active(rule_id, tenant_id, False)
