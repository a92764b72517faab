"""Removing a tenant's domain without losing its mail.

What removal does, and what it leaves alone (shown to whoever confirms it, with the counts of :func:`impact`):

* From the moment the caller bumps the policy version, RCPT to the domain is refused like any unknown domain's
  (``550 5.7.1``), and a sender address in it is no longer the tenant's.
* Mail already accepted for it and still queued for delivery (queued, being delivered or deferred) is delivered,
  retried and bounced as before, to the transport it was accepted with: that transport is kept as a
  :class:`~tenants.models.RetiredTransport`, which delivery falls back on for a name the tenant no longer has.
* Quarantined mail addressed to it stays in the quarantine until its retention ends; a release delivers it to that
  same kept transport.
* The domain's DKIM signing keys are deleted with it (they sign only as that domain).
* Everything else (users, addresses, lists, statistics, tracking) is left as it is.

Removal needs the domain's name typed again (``confirm``). The caller owns the session and the scope, commits,
audits, and then bumps the policy version so that every ingress forgets the domain.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, delete, func, select
from sqlalchemy.orm import Session

from tenants.exceptions import ValidationError
from tenants.models import PENDING_STATUSES, Delivery, DeliveryStatus, DkimKey, Domain, RetiredTransport

#: Audit action of a removal.
REMOVE_ACTION = "domain.remove"


@dataclass(frozen=True)
class RemovalImpact:
    """What is pending for a domain: mail still to deliver to it, quarantined mail addressed to it, DKIM keys."""

    queued: int
    quarantined: int
    dkim_keys: int

    def summary(self) -> str:
        """One line for the audit log and the CLI."""
        return (f"{self.queued} queued for delivery (still delivered to its transport), {self.quarantined} "
                f"quarantined (kept until retention, releasable), {self.dkim_keys} DKIM key(s) deleted")


def _to_domain(name: str) -> ColumnElement[bool]:
    """Delivery rows addressed to ``name`` (by the recipient's domain, case-insensitively) via its transport."""
    return and_(func.lower(Delivery.rcpt).endswith("@" + name, autoescape=True), Delivery.route == "transport")


def impact(session: Session, domain: Domain) -> RemovalImpact:
    """Counts of what removing ``domain`` concerns (in the current scope, which must see the domain's tenant)."""
    def count(*statuses: DeliveryStatus) -> int:
        return int(session.scalar(select(func.count()).select_from(Delivery).where(
            Delivery.tenant_id == domain.tenant_id, _to_domain(domain.name),
            Delivery.status.in_([s.value for s in statuses]))) or 0)

    keys = int(session.scalar(select(func.count()).select_from(DkimKey).where(
        DkimKey.tenant_id == domain.tenant_id, DkimKey.domain == domain.name)) or 0)
    return RemovalImpact(queued=count(*PENDING_STATUSES), quarantined=count(DeliveryStatus.QUARANTINED),
                         dkim_keys=keys)


def remove(session: Session, domain: Domain, confirm: str) -> RemovalImpact:
    """Remove ``domain`` (``confirm`` must be its name); keep its transport for the mail accepted before.

    Returns what was pending (:func:`impact`). The caller commits, audits and bumps the policy version.
    """
    if confirm.strip().rstrip(".").lower() != domain.name:
        raise ValidationError(f"type the domain's name, {domain.name}, to confirm its removal")
    found = impact(session, domain)
    session.add(RetiredTransport(tenant_id=domain.tenant_id, domain=domain.name,
                                 transport_host=domain.transport_host, transport_port=domain.transport_port,
                                 transport_tls=domain.transport_tls,
                                 transport_egress_exempt=domain.transport_egress_exempt))
    session.execute(delete(DkimKey).where(DkimKey.tenant_id == domain.tenant_id, DkimKey.domain == domain.name)
                    .execution_options(synchronize_session=False))
    session.delete(domain)
    session.flush()
    return found


def retired_transports(session: Session, names: Iterable[str]) -> dict[str, RetiredTransport]:
    """The kept transport of each of ``names`` the current tenant removed (the newest removal wins)."""
    wanted = sorted({n.lower() for n in names})
    if not wanted:
        return {}
    rows = session.scalars(select(RetiredTransport).where(RetiredTransport.domain.in_(wanted))
                           .order_by(RetiredTransport.id))
    return {r.domain: r for r in rows}
