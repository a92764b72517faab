"""The addresses a user receives mail at: their login e-mail and their aliases (:class:`UserAddress`).

A user's quarantine, own allow/block lists and digest cover exactly these addresses. An alias must be in one of
the user's tenant's domains, so no tenant can claim another tenant's recipients.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlalchemy import ColumnElement, SQLColumnExpression, func, select
from sqlalchemy.orm import Session

from tenants.exceptions import NotFound, ValidationError
from tenants.models import Domain, User, UserAddress
from tenants.policy import normalize_domain
from tenants.scope import load

_ADDRESS_RE = re.compile(r"^[^@\s<>]{1,64}@[^@\s<>]{1,253}$")


def normalize_address(address: str) -> str:
    """An address as stored and compared: trimmed, ``<>`` removed, lower-case, IDNA domain."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    return f"{local.lower()}@{normalize_domain(domain)}" if local else address.strip().lower()


def user_addresses(session: Session, user: User) -> list[str]:
    """The user's login e-mail first, then their aliases (sorted), all normalised."""
    aliases: list[str] = []
    if user.tenant_id is not None:
        aliases = list(session.scalars(select(UserAddress.address).where(UserAddress.user_id == user.id)
                                       .order_by(UserAddress.address)))
    return list(dict.fromkeys([normalize_address(user.email), *aliases]))


def address_owners(session: Session, tenant_id: int) -> dict[str, int]:
    """Every address of the tenant's active users (e-mails and aliases) → the user's id; run in the tenant's scope."""
    out: dict[str, int] = {}
    users = session.execute(select(User.id, User.email).where(User.tenant_id == tenant_id, User.active.is_(True)))
    for user_id, email in users:
        out[normalize_address(email)] = user_id
    aliases = session.execute(select(UserAddress.address, UserAddress.user_id)
                              .join(User, User.id == UserAddress.user_id)
                              .where(UserAddress.tenant_id == tenant_id, User.active.is_(True)))
    for address, user_id in aliases:
        out.setdefault(address, user_id)
    return out


def add_user_address(session: Session, user_id: int, address: str) -> UserAddress:
    """Give a user another address (alias, shared mailbox); it must be in one of the tenant's domains."""
    user = load(session, User, user_id)
    if user.tenant_id is None:
        raise ValidationError(f"{user.email} is an MSP user and receives no tenant mail")
    addr = normalize_address(address)
    if not _ADDRESS_RE.match(addr):
        raise ValidationError(f"{address!r} is not an e-mail address")
    domain = addr.rpartition("@")[2]
    owned = session.scalar(select(Domain.id).where(Domain.tenant_id == user.tenant_id, Domain.name == domain))
    if owned is None:
        raise ValidationError(f"{addr}: {domain} is not a domain of this tenant")
    if session.scalar(select(UserAddress.id).where(UserAddress.tenant_id == user.tenant_id,
                                                   UserAddress.address == addr)) is not None:
        raise ValidationError(f"{addr} is already an address of a user")
    row = UserAddress(tenant_id=user.tenant_id, user_id=user.id, address=addr)
    session.add(row)
    session.flush()
    return row


def remove_user_address(session: Session, user_id: int, address: str) -> None:
    addr = normalize_address(address)
    row = session.scalar(select(UserAddress).where(UserAddress.user_id == user_id, UserAddress.address == addr))
    if row is None:
        raise NotFound(f"{addr} is not an address of this user")
    session.delete(row)
    session.flush()


def rcpt_in(column: SQLColumnExpression[str], addresses: Iterable[str]) -> ColumnElement[bool]:
    """``column`` (a stored recipient, as the client wrote it) is one of ``addresses``, compared case-insensitively."""
    return func.lower(column).in_([normalize_address(a) for a in addresses])
