"""Request and response bodies of ``/api/v1/rules`` (mail rules; :mod:`tenants.mailrules.schema` is the format).

The body of a rule is the one format the CLI's YAML files and the web pages share; the API describes its top level
here and :func:`~tenants.mailrules.schema.parse_rule` checks the rest (an unknown condition, action, macro or an
invalid regular expression is a 422 whose message names the rule and the field).
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, post_load, validate

from app.api.schemas import MAX_ID
from tenants.mailrules import schema as rs

_GROUP_DOC = {"description": "An object group: {match: any|all, invert: bool, items: [{kind: value}, ...]}"}


class RuleArgs(Schema):
    tenant_id = fields.Integer(validate=validate.Range(1, MAX_ID), metadata={
        "description": "MSP keys: this tenant's rules (omitted: the MSP's baseline). Tenant keys: their own only"})


class RuleBodySchema(Schema):
    """A rule's definition: ``name``, ``priority``, ``direction``, ``active``, ``locked`` (baseline only), ``match``,
    the groups ``from``, ``to``, ``what``, ``when`` and the ``actions``."""

    name = fields.String(required=True, validate=validate.Length(1, 100))
    priority = fields.Integer(validate=validate.Range(0, 100), metadata={"description": "Higher runs first"})
    direction = fields.String(validate=validate.OneOf(rs.DIRECTIONS))
    active = fields.Boolean()
    locked = fields.Boolean(metadata={"description": "MSP baseline only: tenants cannot disable or outrank it"})
    match = fields.String(validate=validate.OneOf(("all", "any")), metadata={"description": "How groups combine"})
    from_ = fields.Dict(data_key="from", metadata={**_GROUP_DOC, "description": "Sender: " + _GROUP_DOC["description"]})
    to = fields.Dict(metadata={**_GROUP_DOC, "description": "Recipient: " + _GROUP_DOC["description"]})
    what = fields.Dict(metadata={**_GROUP_DOC, "description": "Content: " + _GROUP_DOC["description"]})
    when = fields.Dict(metadata={**_GROUP_DOC, "description": "Time frames: " + _GROUP_DOC["description"]})
    actions = fields.List(fields.Dict(), required=True, validate=validate.Length(1, rs.MAX_ACTIONS), metadata={
        "description": "One-key objects, e.g. {quarantine: {kind: attachment}}; run in the order "
                       + ", ".join(rs.ACTION_ORDER)})

    @post_load
    def as_rule(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        """The rule's dict form for :func:`~tenants.mailrules.schema.parse_rule` (``from_`` back to ``from``)."""
        if "from_" in data:
            data["from"] = data.pop("from_")
        return data


class RuleSchema(Schema):
    id = fields.Integer(required=True)
    baseline = fields.Boolean(required=True, metadata={"description": "The MSP's rule (every tenant inherits it)"})
    locked = fields.Boolean(required=True, metadata={"description": "Baseline: a tenant cannot disable it"})
    active = fields.Boolean(required=True, metadata={"description": "The rule is evaluated (for this tenant)"})
    opted_out = fields.Boolean(required=True, metadata={"description": "The tenant disabled this baseline rule"})
    hits = fields.Integer(required=True, metadata={"description": "Recipients it matched (this tenant's mail)"})
    rule = fields.Dict(required=True, metadata={"description": "The definition, as POST and PUT take it"})


class RuleListSchema(Schema):
    items = fields.List(fields.Nested(RuleSchema), required=True,
                        metadata={"description": "In evaluation order: the first matching final action decides"})
