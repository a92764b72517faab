"""``/api/v1/domains/<id>/transport``: where a domain's clean mail goes (the tenant's own mail server), read and
replaced through :mod:`tenants.services`, audited and announced to the ingresses as the portal does."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from app.access import allow_api
from app.api.actions import committed
from app.api.audit import record
from app.api.blueprint import bp
from app.extensions import config, db
from tenants import services
from tenants.egress import EgressPolicy
from tenants.models import Domain, TlsMode
from tenants.platform.redisconn import bump_policy_version
from tenants.scope import load

#: Longest transport host (a DNS name's limit; the column's width).
MAX_HOST = 253
#: The SMTP port a transport uses unless told otherwise.
DEFAULT_PORT = 25


class TransportSchema(Schema):
    domain_id = fields.Integer(required=True)
    domain = fields.String(required=True)
    host = fields.String(required=True)
    port = fields.Integer(required=True)
    tls = fields.String(required=True, metadata={"description": "none, opportunistic or required"})


class TransportUpdateSchema(Schema):
    host = fields.String(required=True, validate=validate.Length(1, MAX_HOST),
                         metadata={"description": "Host name or address of the tenant's mail server"})
    port = fields.Integer(load_default=DEFAULT_PORT, validate=validate.Range(1, 65535))
    tls = fields.String(load_default=TlsMode.OPPORTUNISTIC.value, validate=validate.OneOf([m.value for m in TlsMode]),
                        metadata={"description": "required: refuse to deliver without STARTTLS"})


def _transport(d: Domain) -> dict[str, Any]:
    return {"domain_id": d.id, "domain": d.name, "host": d.transport_host, "port": d.transport_port,
            "tls": d.transport_tls}


@bp.route("/domains/<rowid:domain_id>/transport", methods=["GET"], endpoint="get_transport", tags=["domains"])
@allow_api("read")
@bp.response(200, TransportSchema)
def get_transport(domain_id: int) -> dict[str, Any]:
    """Where the domain's mail is delivered (another tenant's domain is 404)."""
    return _transport(load(db.session, Domain, domain_id))


@bp.route("/domains/<rowid:domain_id>/transport", methods=["PUT"], endpoint="update_transport", tags=["domains"])
@allow_api("write")
@bp.arguments(TransportUpdateSchema)
@bp.response(200, TransportSchema)
def update_transport(body: dict[str, Any], domain_id: int) -> dict[str, Any]:
    """Replace the domain's transport; the ingresses deliver there from their next policy reload (at once)."""
    d = load(db.session, Domain, domain_id)
    with committed(fields=("host",)):
        services.update_transport(d, body["host"], body["port"], body["tls"], egress=EgressPolicy(config()))
        record("domain.transport", f"domain {d.name}", f"transport {d.transport}, TLS {d.transport_tls}",
               tenant_id=d.tenant_id)
    bump_policy_version(config())
    return _transport(d)
