"""Operations on the tenancy model shared by the CLI, the web consoles and (later) the API.

Each function validates its input and raises :class:`ValidationError` with a message a person can act on.
The caller owns the session and the scope, and commits.
"""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tenants import claims
from tenants.apikeys import SCOPES as API_KEY_SCOPES  # noqa: F401  (API keys live in tenants.apikeys)
from tenants.egress import SMTP, EgressPolicy
from tenants.exceptions import NotFound, ValidationError
from tenants.models import Domain, Msp, Role, Tenant, TlsMode, User
from tenants.passwords import hash_password
from tenants.policy import normalize_domain
from tenants.scope import current_scope, msp_scope

_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}$")
_TENANT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")
MIN_PASSWORD_LENGTH = 10
#: Longest password accepted (argon2 hashes anything, but a megabyte of "password" is an attack on the CPU).
MAX_PASSWORD_LENGTH = 1024


def default_msp(session: Session) -> Msp:
    msp = session.scalars(select(Msp).order_by(Msp.id)).first()
    if msp is None:
        msp = Msp(name="MSP")
        session.add(msp)
        session.flush()
    return msp


def create_tenant(session: Session, name: str) -> Tenant:
    name = name.strip()
    if not _TENANT_NAME_RE.match(name):
        raise ValidationError(f"tenant name {name!r}: use 1-100 letters, digits, spaces, '.', '_' or '-'")
    if session.scalar(select(Tenant.id).where(func.lower(Tenant.name) == name.lower())) is not None:
        raise ValidationError(f"tenant {name!r} already exists")
    tenant = Tenant(name=name, msp_id=default_msp(session).id)
    session.add(tenant)
    session.flush()
    return tenant


def get_tenant(session: Session, ref: str | int) -> Tenant:
    """A tenant by id or by name (case-insensitive); in a tenant scope only that tenant is visible."""
    scope = current_scope()
    stmt = select(Tenant)
    if isinstance(ref, int) or str(ref).isdigit():
        stmt = stmt.where(Tenant.id == int(ref))
    else:
        stmt = stmt.where(func.lower(Tenant.name) == str(ref).strip().lower())
    tenant = session.scalars(stmt).first()
    if tenant is None or (not scope.is_msp and tenant.id != scope.tenant_id):
        raise NotFound(f"no tenant {ref!r}")
    return tenant


def tenant_suspended(session: Session, tenant_id: int | None) -> bool:
    """Whether the tenant is suspended (None, the MSP's own level, never is): its people and keys are refused."""
    if tenant_id is None:
        return False
    return bool(session.scalar(select(Tenant.suspended).where(Tenant.id == tenant_id)))


def list_tenants(session: Session) -> list[Tenant]:
    scope = current_scope()
    stmt = select(Tenant).order_by(Tenant.name)
    if not scope.is_msp:
        stmt = stmt.where(Tenant.id == scope.tenant_id)
    return list(session.scalars(stmt))


def validate_domain_name(name: str) -> str:
    d = normalize_domain(name)
    if not _DOMAIN_RE.match(d):
        raise ValidationError(f"{name!r} is not a valid domain name")
    return d


def validate_transport(host: str, port: int | str, tls: str) -> tuple[str, int, str]:
    host = host.strip().strip("[]")
    if not host or any(c.isspace() for c in host):
        raise ValidationError("transport host is empty or has spaces")
    try:
        port_n = int(port)
    except (TypeError, ValueError):
        raise ValidationError(f"transport port {port!r} is not a number") from None
    if not 1 <= port_n <= 65535:
        raise ValidationError(f"transport port {port_n} is outside 1-65535")
    if tls not in {m.value for m in TlsMode}:
        raise ValidationError(f"TLS mode {tls!r}: use none, opportunistic or required")
    return host, port_n, tls


def parse_transport(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (port defaults to 25)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "25"
    elif value.count(":") == 1:
        host, port = value.split(":")
    elif ":" not in value:
        host, port = value, "25"
    else:
        raise ValidationError(f"transport {value!r}: write IPv6 hosts as [addr]:port")
    h, p, _ = validate_transport(host, port, TlsMode.NONE.value)
    return h, p


def add_domain(session: Session, tenant: Tenant, name: str, host: str, port: int, tls: str = "opportunistic", *,
               egress: EgressPolicy) -> Domain:
    """Add a domain to a tenant. The MSP vouches for what it adds (it routes at once); a tenant's own addition is a
    claim that routes once its ownership record is verified. :mod:`tenants.claims` decides who may claim what."""
    d = validate_domain_name(name)
    host, port, tls = validate_transport(host, port, tls)
    exempt = vet_transport(egress, host, port)
    operator = current_scope().is_msp
    claims.make_room(session, tenant, d, operator=operator)
    domain = Domain(tenant_id=tenant.id, name=d, transport_host=host, transport_port=port, transport_tls=tls,
                    vouched=operator)
    domain.transport_egress_exempt = exempt
    session.add(domain)
    session.flush()
    return domain


def update_transport(domain: Domain, host: str, port: int | str, tls: str, *, egress: EgressPolicy) -> None:
    """Replace a domain's transport; ``egress`` is the policy of whoever sets it (unchecked only for the MSP's CLI)."""
    host_, port_, tls_ = validate_transport(host, port, tls)
    exempt = vet_transport(egress, host_, port_)
    domain.transport_host, domain.transport_port, domain.transport_tls = host_, port_, tls_
    domain.transport_egress_exempt = exempt


def vet_transport(egress: EgressPolicy, host: str, port: int) -> bool:
    """Check a transport against the egress policy as it is saved (:class:`~tenants.egress.EgressRefused`, a
    :class:`ValidationError`, if refused); whether the transport is exempt from the policy from now on."""
    egress.vet(SMTP, host, port, label="transport")
    return not egress.enforced


def list_domains(session: Session, tenant: Tenant | None = None) -> list[Domain]:
    stmt = select(Domain).order_by(Domain.name)
    if tenant is not None:
        stmt = stmt.where(Domain.tenant_id == tenant.id)
    return list(session.scalars(stmt))


def create_user(
    session: Session, email: str, role: str, tenant: Tenant | None = None, password: str | None = None
) -> User:
    email = email.strip().lower()
    if not _EMAIL_RE.match(email):
        raise ValidationError(f"{email!r} is not an e-mail address")
    try:
        r = Role(role)
    except ValueError:
        raise ValidationError(f"role {role!r}: use one of {', '.join(x.value for x in Role)}") from None
    if r.is_msp and tenant is not None:
        raise ValidationError(f"role {r.value} is an MSP role and takes no tenant")
    if not r.is_msp and tenant is None:
        raise ValidationError(f"role {r.value} needs a tenant (--tenant)")
    if password is not None:
        check_new_password(password)
    with msp_scope():
        if session.scalar(select(User.id).where(User.email == email)) is not None:
            raise ValidationError(f"user {email} already exists")
    user = User(email=email, role=r.value, tenant_id=tenant.id if tenant else None,
                password_hash=hash_password(password) if password else None)
    session.add(user)
    session.flush()
    return user


def check_new_password(password: str) -> None:
    """The rules every password follows: :class:`ValidationError` if it breaks one."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValidationError(f"password too long: at most {MAX_PASSWORD_LENGTH} characters")
