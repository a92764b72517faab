"""The onboarding wizard for a new customer: tenant → first domain → its transport tested → first admin invited → DNS
checklist. Nothing stores where the wizard is: each step is read off the data (:func:`progress`), so leaving and
coming back, or doing a step elsewhere in the console, resumes at the right place.

- **domain**: the tenant has no domain yet.
- **transport**: no domain's transport passed a test (:mod:`tenants.transportcheck`) since it was last set. A test's
  outcome is an audit entry (:data:`TRANSPORT_TEST_ACTION`) whose detail names the transport and TLS mode tested, so
  changing either makes the transport untested again, and the latest test of it decides.
- **admin**: the tenant has no ``tenant_admin`` yet (invited or with a password).
- **dns**: the last step: the DNS checklist of the tested domain, from the cache (:mod:`tenants.dnscache`). Setup is
  complete once the wizard reaches it: the records then depend on the customer's DNS provider, not on the MSP.

Callers own the session and the scope, audit, and commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants import users
from tenants.models import AuditEntry, Domain, Role, Tenant, User
from tenants.transportcheck import TransportCheck

TENANT, DOMAIN, TRANSPORT, ADMIN, DNS = "tenant", "domain", "transport", "admin", "dns"
#: The steps in order, with the title each has in the wizard.
STEPS: tuple[tuple[str, str], ...] = ((TENANT, "Customer"), (DOMAIN, "First domain"), (TRANSPORT, "Test connection"),
                                      (ADMIN, "First admin"), (DNS, "DNS records"))
#: Audit action of a transport test (the wizard's, or any other recorded with :func:`transport_test_detail`).
TRANSPORT_TEST_ACTION = "domain.transport_test"


def transport_test_target(domain: Domain) -> str:
    """The audit target of a domain's transport test (the same as the domain's other audit entries)."""
    return f"domain {domain.name}"


def _tested_prefix(domain: Domain) -> str:
    return f"ok {domain.transport} TLS {domain.transport_tls}:"


def transport_test_detail(domain: Domain, result: TransportCheck) -> str:
    """The audit detail of a test of the domain's current transport: what was tested, whether it worked, and why."""
    if result.ok:
        return f"{_tested_prefix(domain)} {result.message}"
    return f"failed {domain.transport} TLS {domain.transport_tls}: {result.message}"


def transport_tested(session: Session, domain: Domain) -> bool:
    """Whether the latest test of the domain's current transport and TLS mode, since the domain was added, worked."""
    detail = session.scalars(
        select(AuditEntry.detail)
        .where(AuditEntry.tenant_id == domain.tenant_id, AuditEntry.action == TRANSPORT_TEST_ACTION,
               AuditEntry.target == transport_test_target(domain), AuditEntry.at >= domain.created_at,
               AuditEntry.detail.startswith(f"ok {domain.transport} TLS {domain.transport_tls}:", autoescape=True)
               | AuditEntry.detail.startswith(f"failed {domain.transport} TLS {domain.transport_tls}:",
                                              autoescape=True))
        .order_by(AuditEntry.id.desc()).limit(1)).first()
    return detail is not None and detail.startswith(_tested_prefix(domain))


@dataclass(frozen=True)
class Progress:
    """Where a tenant's setup stands: its wizard domain (the first tested one, else the first), whether that domain's
    transport is tested, and its first admin."""

    tenant: Tenant
    domain: Domain | None
    tested: bool
    admin: User | None

    @property
    def step(self) -> str:
        """The step the wizard opens at."""
        if self.domain is None:
            return DOMAIN
        if not self.tested:
            return TRANSPORT
        if self.admin is None:
            return ADMIN
        return DNS

    @property
    def step_title(self) -> str:
        return dict(STEPS)[self.step]

    @property
    def complete(self) -> bool:
        """Whether every step before the DNS checklist is done (the tenant page stops offering "Continue setup")."""
        return self.step == DNS

    def done(self, step: str) -> bool:
        """Whether ``step`` lies behind the step the wizard is at."""
        names = [name for name, _ in STEPS]
        return names.index(step) < names.index(self.step)


def progress(session: Session, tenant: Tenant) -> Progress:
    """Read the tenant's setup off its domains, transport tests and admins."""
    domains = list(session.scalars(select(Domain).where(Domain.tenant_id == tenant.id).order_by(Domain.id)))
    tested = next((d for d in domains if transport_tested(session, d)), None)
    admin = session.scalars(select(User).where(User.tenant_id == tenant.id, User.role == Role.TENANT_ADMIN.value)
                            .order_by(User.id).limit(1)).first()
    return Progress(tenant, tested or (domains[0] if domains else None), tested is not None, admin)


def invite_admin(session: Session, tenant: Tenant, email: str) -> User:
    """The tenant's first admin, without a password: the caller has the invitation link mailed
    (:func:`tenants.accounts.queue_link`). The address must be in one of the tenant's domains."""
    return users.create_user(session, email, Role.TENANT_ADMIN.value, tenant, None)
