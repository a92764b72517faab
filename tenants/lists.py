"""Allow and block lists at three levels: MSP-wide, a tenant's, and each user's own.

An entry is an address (``alice@example.com``), a domain (``example.com``, which also matches its subdomains) or an
IP network (``192.0.2.0/24``, ``2001:db8::/32``, a single address). Addresses and domains match the envelope sender
and the header From; networks match the connecting client.

Precedence, decided once here and used by the ingress and the web alike:

- the most specific level that has a matching entry decides: **user over tenant over MSP**;
- within one level **block beats allow** (a conflict is resolved the safe way). A value has one kind per level:
  adding ``block`` for a value that is allow-listed at the same level flips the entry instead of adding a second.

An allow entry never bypasses the virus check or the attachment quarantine: those act through their symbol's effect,
which :func:`smtp.verdict.decide` applies before any score. An allow entry on a sender address or domain trusts a
header that senders can forge; prefer IP entries for partners with fixed servers.

After a change call :func:`reload_after_commit` (it bumps the policy version once the caller commits), so ingress
replicas drop their cached :class:`TenantLists` at once; without it they reload within ``LIST_CACHE_TTL`` seconds.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants.addresses import address_owners, normalize_address
from tenants.exceptions import NotFound, PermissionDenied, ValidationError
from tenants.models import Domain, ListEntry, User
from tenants.platform.config import Config
from tenants.platform.jobs import after_commit
from tenants.platform.redisconn import bump_policy_version
from tenants.policy import normalize_domain
from tenants.scope import current_scope, load, msp_scope

Outcome = Literal["allow", "block"]
KINDS: tuple[str, ...] = ("allow", "block")
VALUE_TYPES: tuple[str, ...] = ("address", "domain", "ip")
#: Shortest IP prefix an entry may have (IPv4, IPv6): a /0 allow entry would switch spam filtering off.
MIN_PREFIX = {4: 8, 6: 16}
#: Longest comment kept on an entry.
MAX_COMMENT = 500

_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
_LOCAL_RE = re.compile(r"^[^@\s<>()\[\],;:\"\\]{1,64}$")


class Level(enum.IntEnum):
    """Where an entry lives; a higher level overrides a lower one."""

    MSP = 0
    TENANT = 1
    USER = 2


# --- values ---------------------------------------------------------------------------------------------------------

def detect_type(value: str) -> str:
    """``address`` if it has an @, ``ip`` if it parses as an address or network, else ``domain``."""
    v = value.strip()
    if "@" in v.lstrip("@"):
        return "address"
    try:
        ipaddress.ip_network(v, strict=False)
        return "ip"
    except ValueError:
        return "domain"


def validate_value(value: str, value_type: str | None = None) -> tuple[str, str]:
    """(type, normalised value) of a list value; raises :class:`ValidationError` saying what is wrong.

    ``@example.com`` and ``*.example.com`` are read as the domain ``example.com``.
    """
    raw = value.strip()
    if not raw:
        raise ValidationError("a list value is empty")
    if raw.startswith("*.") or (raw.startswith("@") and raw.count("@") == 1):
        raw = raw.lstrip("*.@") if raw.startswith("*.") else raw[1:]
        value_type = value_type or "domain"
    vtype = value_type or detect_type(raw)
    if vtype not in VALUE_TYPES:
        raise ValidationError(f"list value type {vtype!r}: use one of {', '.join(VALUE_TYPES)}")
    if vtype == "address":
        addr = normalize_address(raw)
        local, _, domain = addr.rpartition("@")
        if not local or not _LOCAL_RE.match(local) or not _DOMAIN_RE.match(domain):
            raise ValidationError(f"{value!r} is not an e-mail address (write local@domain)")
        return vtype, addr
    if vtype == "domain":
        domain = normalize_domain(raw)
        if not _DOMAIN_RE.match(domain):
            raise ValidationError(f"{value!r} is not a domain name (write example.com; it matches its subdomains)")
        return vtype, domain
    try:
        net = ipaddress.ip_network(raw, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(raw, strict=False)
            raise ValidationError(f"{value!r} has host bits set: did you mean {fixed}?") from None
        raise ValidationError(f"{value!r} is not an IP address or network (write 192.0.2.0/24 or 2001:db8::/32)") \
            from None
    if net.prefixlen < MIN_PREFIX[net.version]:
        raise ValidationError(f"{value!r} is too broad: IPv{net.version} networks need a prefix of at least "
                              f"/{MIN_PREFIX[net.version]}")
    return vtype, str(net)


# --- matching -------------------------------------------------------------------------------------------------------

def _address_of(value: str | None) -> str:
    if not value:
        return ""
    addr = parseaddr(value)[1] if "<" in value or " " in value.strip() else value
    return normalize_address(addr) if "@" in addr else ""


def _domain_suffixes(address: str) -> list[str]:
    """example.com for a@example.com; mail.example.com and example.com for a@mail.example.com (not the TLD)."""
    labels = address.rpartition("@")[2].split(".") if address else []
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]


@dataclass
class ListSet:
    """The entries of one level, compiled for lookups: value → kind (block already won over allow)."""

    addresses: dict[str, str] = field(default_factory=dict)
    domains: dict[str, str] = field(default_factory=dict)
    networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = field(default_factory=list)

    def add(self, kind: str, value_type: str, value: str) -> None:
        if value_type == "ip":
            self.networks.append((ipaddress.ip_network(value, strict=False), kind))
        else:
            table = self.addresses if value_type == "address" else self.domains
            if table.get(value) != "block":
                table[value] = kind

    def __bool__(self) -> bool:
        return bool(self.addresses or self.domains or self.networks)

    def match(self, *, senders: Iterable[str], client_ip: str | None) -> tuple[Outcome, str] | None:
        """("allow"|"block", what matched) at this level, block winning over allow; None if nothing matches."""
        hits: list[tuple[str, str]] = []
        for sender in senders:
            if sender in self.addresses:
                hits.append((self.addresses[sender], sender))
            for suffix in _domain_suffixes(sender):
                if suffix in self.domains:
                    hits.append((self.domains[suffix], suffix))
        if client_ip and self.networks:
            try:
                ip = ipaddress.ip_address(client_ip)
            except ValueError:
                ip = None
            if ip is not None:
                hits.extend((kind, str(net)) for net, kind in self.networks if ip.version == net.version
                            and ip in net)
        if not hits:
            return None
        block = next((h for h in hits if h[0] == "block"), None)
        kind, what = block or hits[0]
        return ("block" if kind == "block" else "allow"), what


@dataclass(frozen=True)
class Entry:
    """One list entry as matching reads it (a :class:`ListEntry` row, or built directly)."""

    kind: str
    value_type: str
    value: str
    tenant_id: int | None = None
    user_id: int | None = None
    id: int | None = None

    @property
    def level(self) -> Level:
        if self.user_id is not None:
            return Level.USER
        return Level.TENANT if self.tenant_id is not None else Level.MSP

    @classmethod
    def of(cls, row: ListEntry) -> Entry:
        return cls(row.kind, row.value_type, row.value, row.tenant_id, row.user_id, row.id)


@dataclass(frozen=True)
class Match:
    outcome: Outcome
    level: Level
    matched: str

    @property
    def reason(self) -> str:
        return f"{self.level.name.lower()} {self.outcome} list: {self.matched}"


def _senders(sender: str | None, header_from: str | None) -> list[str]:
    return list(dict.fromkeys(a for a in (_address_of(sender), _address_of(header_from)) if a))


def match_detail(entries: Iterable[Entry | ListEntry], *, sender: str | None, header_from: str | None,
                 client_ip: str | None) -> Match | None:
    """Like :func:`match`, saying which level and which value decided."""
    levels: dict[Level, ListSet] = {}
    for item in entries:
        e = item if isinstance(item, Entry) else Entry.of(item)
        levels.setdefault(e.level, ListSet()).add(e.kind, e.value_type, e.value)
    senders = _senders(sender, header_from)
    for level in sorted(levels, reverse=True):
        found = levels[level].match(senders=senders, client_ip=client_ip)
        if found is not None:
            return Match(found[0], level, found[1])
    return None


def match(entries: Iterable[Entry | ListEntry], *, sender: str | None, header_from: str | None,
          client_ip: str | None) -> Outcome | None:
    """"allow", "block" or None for a mail from ``sender`` (envelope) / ``header_from`` (From header, raw or bare
    address) / ``client_ip``, given entries of any levels: user over tenant over MSP, block over allow in a level.

    Pass the entries that apply to one recipient: the MSP's, the recipient's tenant's and the recipient user's own.
    """
    found = match_detail(entries, sender=sender, header_from=header_from, client_ip=client_ip)
    return found.outcome if found is not None else None


# --- the ingress's snapshot -----------------------------------------------------------------------------------------

@dataclass
class TenantLists:
    """Everything the ingress needs to judge one tenant's lists, loaded once and cached (:func:`load_tenant_lists`).

    ``users`` is keyed by every address of the tenant's users (login e-mails and aliases), each pointing at that
    user's own :class:`ListSet`; only addresses in the tenant's ``domains`` count, so a user can never attach lists
    to another tenant's recipients.
    """

    tenant_id: int
    msp: ListSet
    tenant: ListSet
    users: dict[str, ListSet]
    domains: frozenset[str]

    def tenant_match(self, *, sender: str | None, header_from: str | None, client_ip: str | None) -> Match | None:
        """The tenant-level decision (tenant over MSP), the same for every recipient of the tenant."""
        senders = _senders(sender, header_from)
        for level, lists in ((Level.TENANT, self.tenant), (Level.MSP, self.msp)):
            found = lists.match(senders=senders, client_ip=client_ip)
            if found is not None:
                return Match(found[0], level, found[1])
        return None

    def user_match(self, rcpt: str, *, sender: str | None, header_from: str | None,
                   client_ip: str | None) -> Match | None:
        """The recipient user's own decision, or None when the user has none (then the tenant level applies)."""
        addr = normalize_address(rcpt)
        if addr.rpartition("@")[2] not in self.domains:
            return None
        lists = self.users.get(addr)
        if not lists:
            return None
        found = lists.match(senders=_senders(sender, header_from), client_ip=client_ip)
        return Match(found[0], Level.USER, found[1]) if found is not None else None


def load_tenant_lists(session: Session, tenant_id: int) -> TenantLists:
    """The MSP's, the tenant's and its users' entries, compiled. Three indexed queries; any scope may call it."""
    with msp_scope():
        rows = session.execute(
            select(ListEntry.kind, ListEntry.value_type, ListEntry.value, ListEntry.tenant_id, ListEntry.user_id)
            .where((ListEntry.tenant_id == tenant_id) | ListEntry.tenant_id.is_(None))
        ).all()
        domains = frozenset(session.scalars(select(Domain.name).where(Domain.tenant_id == tenant_id)))
        per_user: dict[int, ListSet] = {}
        msp, tenant = ListSet(), ListSet()
        for kind, vtype, value, row_tenant, user_id in rows:
            if user_id is not None:
                per_user.setdefault(user_id, ListSet()).add(kind, vtype, value)
            elif row_tenant is None:
                msp.add(kind, vtype, value)
            else:
                tenant.add(kind, vtype, value)
        users: dict[str, ListSet] = {}
        if per_user:
            for address, user_id in address_owners(session, tenant_id).items():
                if user_id in per_user:
                    users[address] = per_user[user_id]
    return TenantLists(tenant_id, msp, tenant, users, domains)


# --- services for the CLI, the web and the API ----------------------------------------------------------------------

def add_entry(session: Session, *, kind: str, value: str, tenant_id: int | None = None, user_id: int | None = None,
              value_type: str | None = None, comment: str = "", created_by: str = "") -> ListEntry:
    """Add an entry at the MSP level (no tenant, no user: MSP scope only), a tenant's level, or a user's own.

    Idempotent: the same value and kind at the same level returns the existing entry; the opposite kind flips it.
    The caller commits; call :func:`reload_after_commit` too.
    """
    if kind not in KINDS:
        raise ValidationError(f"list kind {kind!r}: use allow or block")
    vtype, normalized = validate_value(value, value_type)
    if len(comment) > MAX_COMMENT:
        raise ValidationError(f"comment too long: at most {MAX_COMMENT} characters")
    if user_id is not None:
        user = load(session, User, user_id)
        if user.tenant_id is None:
            raise ValidationError(f"{user.email} is an MSP user: user lists belong to tenant users")
        if tenant_id is not None and tenant_id != user.tenant_id:
            raise ValidationError(f"{user.email} is not a user of tenant {tenant_id}")
        tenant_id = user.tenant_id
    elif tenant_id is None and not current_scope().is_msp:
        raise PermissionDenied("MSP-wide list entries can only be changed by the MSP")
    existing = _find(session, tenant_id, user_id, vtype, normalized)
    if existing is not None:
        if existing.kind != kind:
            existing.kind = kind
            existing.comment = comment or existing.comment
            existing.created_by = created_by or existing.created_by
            session.flush()
        return existing
    row = ListEntry(tenant_id=tenant_id, user_id=user_id, kind=kind, value_type=vtype, value=normalized,
                    comment=comment, created_by=created_by)
    session.add(row)
    if tenant_id is None:
        with msp_scope():
            session.flush()
    else:
        session.flush()
    return row


def _find(session: Session, tenant_id: int | None, user_id: int | None, vtype: str, value: str) -> ListEntry | None:
    stmt = select(ListEntry).where(ListEntry.value_type == vtype, ListEntry.value == value)
    stmt = stmt.where(ListEntry.tenant_id.is_(None) if tenant_id is None else ListEntry.tenant_id == tenant_id)
    stmt = stmt.where(ListEntry.user_id.is_(None) if user_id is None else ListEntry.user_id == user_id)
    if tenant_id is None:
        with msp_scope():
            return session.scalars(stmt).first()
    return session.scalars(stmt).first()


def reload_after_commit(session: Session, cfg: Config) -> None:
    """Tell every ingress to reload lists once the caller's transaction commits."""
    after_commit(session, lambda: bump_policy_version(cfg))


def get_entry(session: Session, entry_id: int) -> ListEntry:
    """An entry by id in the current scope (another tenant's is :class:`NotFound`; MSP-wide ones need the MSP)."""
    return load(session, ListEntry, entry_id)


def remove_entry(session: Session, entry_id: int, *, user_id: int | None = None) -> ListEntry:
    """Delete an entry; with ``user_id`` only that user's own entries may go (a user's self-service).

    The caller commits; call :func:`reload_after_commit` too.
    """
    row = get_entry(session, entry_id)
    if user_id is not None and row.user_id != user_id:
        raise NotFound(f"ListEntry {entry_id} not found")
    if row.tenant_id is None and not current_scope().is_msp:
        raise PermissionDenied("MSP-wide list entries can only be changed by the MSP")
    session.delete(row)
    session.flush()
    return row


def list_entries(session: Session, *, tenant_id: int | None = None, user_id: int | None = None,
                 kind: str | None = None) -> list[ListEntry]:
    """The entries of one level: the MSP's (no arguments; readable from any scope, like the baseline policy), a
    tenant's (``tenant_id``: its own, not its users'), or one user's (``user_id``). Sorted by kind, then value."""
    stmt = select(ListEntry).order_by(ListEntry.kind, ListEntry.value_type, ListEntry.value)
    if kind is not None:
        stmt = stmt.where(ListEntry.kind == kind)
    if user_id is not None:
        load(session, User, user_id)  # NotFound across tenants
        return list(session.scalars(stmt.where(ListEntry.user_id == user_id)))
    if tenant_id is not None:
        return list(session.scalars(stmt.where(ListEntry.tenant_id == tenant_id, ListEntry.user_id.is_(None))))
    with msp_scope():
        return list(session.scalars(stmt.where(ListEntry.tenant_id.is_(None))))


def sender_of(mail_from: str | None, header_from: str | None) -> str:
    """The address to put on a list for "allow/block this sender": the header From's address (what people see, and
    stable across bounce addresses), else the envelope sender. Raises :class:`ValidationError` when neither has one."""
    addr = _address_of(header_from) or _address_of(mail_from)
    if not addr:
        raise ValidationError("the mail has no sender address to put on a list")
    return addr
