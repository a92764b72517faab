"""Who may send mail out through Mailward, for which tenant, and as whom.

A tenant's own servers relay from its registered networks (port 25) or log in with a per-tenant SMTP credential
(the submission port, after STARTTLS). Either way the session belongs to one tenant, and that tenant may only use
envelope senders in its own routing domains (or their subdomains no other tenant registered).

A tenant registers networks of at most :data:`TENANT_MIN_PREFIX` itself, and only public ones (what the egress policy
refuses to tenants, loopback, private, link-local..., it may not claim); the MSP may register wider networks (up to
:data:`MIN_PREFIX`) and any range. Networks never overlap across tenants: one client address belongs to at most one
tenant, and a tenant asking for a network that overlaps another's hears the same "not available" as for a reserved
one. (Overlaps are refused rather than matched most-specific-first: one address, one tenant, simple to reason about;
and since a network's foreign mail is inbound anyway, a claim cannot capture another tenant's mail.)
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants.claims import not_available
from tenants.egress import REFUSED_NETWORKS, refused_reason
from tenants.exceptions import ValidationError
from tenants.models import Domain, RelayNetwork, SmtpCredential, Tenant, utcnow
from tenants.passwords import hash_password, verify_password
from tenants.policy import parent_domains as parent_domains  # also smtp.dkimsign's, through here
from tenants.policy import routing_domain
from tenants.scope import TenantScoped, current_scope, msp_scope

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_Row = TypeVar("_Row", bound=TenantScoped)

#: Widest relay network accepted per IP version: anything wider would let a large part of the Internet send as the
#: tenant (IPv4 /8, IPv6 /32, a whole provider allocation).
MIN_PREFIX = {4: 8, 6: 32}
#: Widest relay network a tenant registers itself (one site's servers); wider ones only the MSP, who knows the
#: customer's allocation.
TENANT_MIN_PREFIX = {4: 24, 6: 48}
#: Shortest password accepted for an SMTP credential (random ones are longer).
MIN_SMTP_PASSWORD = 12
#: Longest SMTP username (the column's width).
USERNAME_MAX = 320

_USERNAME_RE = re.compile(r"^[A-Za-z0-9._%+@-]+$")


# --- relay networks -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RelayNet:
    network: IPNetwork
    tenant_id: int


def parse_network(cidr: str, *, operator: bool = True) -> IPNetwork:
    """A CIDR with no host bits set, not wider than :data:`MIN_PREFIX` (the MSP) or :data:`TENANT_MIN_PREFIX`
    (a tenant) allows; a tenant's must also be a public network (not a :func:`special_network`)."""
    try:
        net = ipaddress.ip_network(cidr.strip(), strict=True)
    except ValueError as exc:
        raise ValidationError(f"{cidr!r} is not a network in CIDR notation ({exc})") from None
    widest = (MIN_PREFIX if operator else TENANT_MIN_PREFIX)[net.version]
    if net.prefixlen < widest:
        hint = "" if operator else "; ask your provider for a wider one"
        raise ValidationError(f"{net} is too wide: at most /{widest} for IPv{net.version}{hint}")
    if not operator and special_network(net):
        raise not_available(str(net))
    return net


def special_network(net: IPNetwork) -> bool:
    """Whether ``net`` touches what the egress policy refuses to tenants (:data:`tenants.egress.REFUSED_NETWORKS`:
    loopback, unspecified, private, CGNAT, link-local, multicast, reserved...). Mail from there is local, internal
    or forged: a tenant's claim on it would make the MSP's own traffic (or an address translator's) its "servers"."""
    for _, refused in REFUSED_NETWORKS:
        if net.version == refused.version and net.overlaps(refused):  # type: ignore[arg-type]
            return True
    return any(refused_reason(addr) is not None for addr in (net.network_address, net.broadcast_address))


def add_relay_network(session: Session, tenant: Tenant, cidr: str) -> RelayNetwork:
    """Register a network of the tenant's servers; one that overlaps another tenant's network is refused (the MSP
    hears which, a tenant only that it is not available)."""
    operator = current_scope().is_msp
    net = parse_network(cidr, operator=operator)
    with msp_scope():  # networks must not overlap across tenants: look at all of them
        for other in session.scalars(select(RelayNetwork)):
            existing = ipaddress.ip_network(other.cidr)
            if existing.version == net.version and existing.overlaps(net):  # type: ignore[arg-type]
                if other.tenant_id != tenant.id:
                    if operator:
                        raise ValidationError(f"{net} overlaps {existing}, a relay network of tenant {other.tenant_id}")
                    raise not_available(str(net))
                if existing == net:
                    raise ValidationError(f"{net} is already a relay network of this tenant")
    row = RelayNetwork(tenant_id=tenant.id, cidr=str(net))
    session.add(row)
    session.flush()
    return row


def _listed(session: Session, model: type[_Row], order: Any, tenant: Tenant | None) -> list[_Row]:
    """The rows of ``model`` in the current scope by tenant, then ``order``; only ``tenant``'s when one is given."""
    stmt = select(model).order_by(model.tenant_id, order)
    if tenant is not None:
        stmt = stmt.where(model.tenant_id == tenant.id)
    return list(session.scalars(stmt))


def list_relay_networks(session: Session, tenant: Tenant | None = None) -> list[RelayNetwork]:
    return _listed(session, RelayNetwork, RelayNetwork.cidr, tenant)


def load_relay_networks(session: Session) -> list[RelayNet]:
    """Every relay network of an active tenant, most specific first (what the ingress matches client IPs against)."""
    with msp_scope():
        rows = session.execute(
            select(RelayNetwork.cidr, RelayNetwork.tenant_id).join(Tenant, Tenant.id == RelayNetwork.tenant_id)
            .where(Tenant.suspended.is_(False))
        ).all()
    nets = [RelayNet(ipaddress.ip_network(cidr), int(tid)) for cidr, tid in rows]
    return sorted(nets, key=lambda n: -n.network.prefixlen)


def match_relay_network(networks: list[RelayNet], ip: str) -> RelayNet | None:
    """The most specific network containing ``ip`` (IPv4-mapped IPv6 peers count as their IPv4 address)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for net in networks:
        if addr.version == net.network.version and addr in net.network:
            return net
    return None


# --- sender domains -----------------------------------------------------------------------------------------------

def sender_domain_owner(session: Session, domain: str) -> int | None:
    """The active tenant owning ``domain``: the one that registered it, or else its closest registered parent.

    Only routing domains count: a claim nobody proved lets no one send as the name.
    """
    candidates = parent_domains(domain)
    with msp_scope():
        rows = session.execute(
            select(Domain.name, Domain.tenant_id, Tenant.suspended).join(Tenant, Tenant.id == Domain.tenant_id)
            .where(Domain.name.in_(candidates), routing_domain())
        ).all()
    found = {name: (int(tid), bool(suspended)) for name, tid, suspended in rows}
    for name in candidates:
        if name in found:
            tid, suspended = found[name]
            return None if suspended else tid
    return None


# --- SMTP AUTH credentials ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SmtpLogin:
    """A successful SMTP AUTH: which credential, of which tenant."""

    credential_id: int
    tenant_id: int
    username: str


def validate_username(username: str) -> str:
    u = username.strip().lower()
    if not u or len(u) > USERNAME_MAX or not _USERNAME_RE.match(u):
        raise ValidationError(f"SMTP username {username!r}: use letters, digits and . _ % + - @")
    return u


def create_smtp_credential(session: Session, tenant: Tenant, username: str, password: str) -> SmtpCredential:
    name = validate_username(username)
    if len(password) < MIN_SMTP_PASSWORD:
        raise ValidationError(f"password too short: at least {MIN_SMTP_PASSWORD} characters")
    with msp_scope():  # usernames are unique across tenants (the login names the tenant)
        if session.scalar(select(SmtpCredential.id).where(SmtpCredential.username == name)) is not None:
            raise not_available(f"SMTP username {name}")
    cred = SmtpCredential(tenant_id=tenant.id, username=name, password_hash=hash_password(password))
    session.add(cred)
    session.flush()
    return cred


def list_smtp_credentials(session: Session, tenant: Tenant | None = None) -> list[SmtpCredential]:
    return _listed(session, SmtpCredential, SmtpCredential.username, tenant)


def revoke_smtp_credential(session: Session, username: str) -> SmtpCredential:
    """Revoke a credential (in the current scope); sessions already logged in keep going until they end."""
    cred = session.scalar(select(SmtpCredential).where(SmtpCredential.username == validate_username(username)))
    if cred is None:
        raise ValidationError(f"no SMTP username {username!r}")
    if cred.revoked_at is None:
        cred.revoked_at = utcnow()
    return cred


@cache
def _dummy_hash() -> str:
    """A hash to verify against when the username is unknown, so both cases take the same time."""
    return hash_password("no such smtp user")


def verify_smtp_login(session: Session, username: str, password: str) -> SmtpLogin | None:
    """The login for a username and password, or None (unknown, wrong, revoked, or the tenant is suspended)."""
    try:
        name = validate_username(username)
    except ValidationError:
        return None
    with msp_scope():
        row = session.execute(
            select(SmtpCredential, Tenant.suspended).join(Tenant, Tenant.id == SmtpCredential.tenant_id)
            .where(SmtpCredential.username == name)
        ).first()
    if row is None:
        verify_password(_dummy_hash(), password)
        return None
    cred, suspended = row
    if not verify_password(cred.password_hash, password) or cred.revoked_at is not None or suspended:
        return None
    return SmtpLogin(cred.id, cred.tenant_id, cred.username)
