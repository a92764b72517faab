"""A tenant's LDAP directory (Active Directory, OpenLDAP): test the connection, look one address up, and copy every
address it holds into the tenant's valid recipients (``source='ldap'``) for the ingress.

The ingress never asks the directory itself: a directory sync (scheduled every
:data:`worker.jobs.DIRECTORY_SYNC_INTERVAL`, or "sync now") pages through it and replaces the tenant's directory rows
in one transaction. A failed sync changes no row; it records what went wrong on the tenant's settings, so mail keeps
flowing with the last good copy. Addresses are taken from the configured attributes (``smtp:``/``SMTP:`` prefixes of
``proxyAddresses`` stripped, other prefixes such as ``x500:`` skipped) and kept only in the tenant's own domains.

Every connection (test, lookup, the worker's periodic sync) goes through the egress policy (:mod:`tenants.egress`):
the host is resolved and checked, and ldap3 is handed the checked address, never the name; a directory on a refused
address or port is never connected to, so the error reads the same whether anything listens there.

The filter's ``{address}`` is replaced by the LDAP-escaped address for a lookup (so ``*)(mail=*`` matches nothing),
and by ``*`` for a sync (every entry with such an attribute).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from sqlalchemy import select
from sqlalchemy.orm import Session

from tenants.addresses import normalize_address
from tenants.dkimkeys import decrypt_private_key
from tenants.egress import LDAP, EgressPolicy, literal_address
from tenants.exceptions import ValidationError
from tenants.mailrules.service import replace_directory_groups
from tenants.models import Domain, RecipientVerification, utcnow
from tenants.platform.config import Config
from tenants.recipients import (
    ADDRESS_PLACEHOLDER,
    Settings,
    find_row,
    get_settings,
    ldap_endpoint,
    replace_directory_rows,
    settings_row,
)

log = logging.getLogger(__name__)

#: Seconds to wait for the directory to accept a connection.
CONNECT_TIMEOUT = 5
#: Seconds to wait for any one answer (a bind, one page of a search).
RECEIVE_TIMEOUT = 15
#: Entries asked for per page of a paged search (RFC 2696); AD's default MaxPageSize is 1000.
PAGE_SIZE = 500
#: Most addresses one sync keeps (a guard against a filter that matches a whole forest).
MAX_ADDRESSES = 200000
#: Longest result text stored on the settings.
MAX_RESULT = 500
#: Group objects read for the mail rules' ldap_group condition (OpenLDAP's and Active Directory's kinds).
GROUP_FILTER = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=group))"
#: Address prefixes in ``proxyAddresses``-style values that mean SMTP (case-insensitive).
SMTP_PREFIX = "smtp:"


class DirectoryError(Exception):
    """The directory could not be reached, refused the bind, or refused the search; the message says which."""


@dataclass(frozen=True)
class SyncResult:
    ok: bool
    message: str
    total: int = 0
    added: int = 0
    removed: int = 0


def _password(cfg: Config, row: RecipientVerification | None) -> str | None:
    if row is None or row.ldap_password_enc is None:
        return None
    return decrypt_private_key(cfg, row.ldap_password_enc).decode()


def _server(cfg: Config, settings: Settings) -> ldap3.Server:
    """The directory's server at an address the egress policy checked just now (the MSP's CLI-set directories
    excepted); raises :class:`DirectoryError` for a refused one, before any connection."""
    if settings.ldap_egress_exempt:
        return ldap3.Server(settings.ldap_url, get_info=ldap3.NONE, connect_timeout=CONNECT_TIMEOUT)
    try:
        endpoint = ldap_endpoint(settings.ldap_url)
        address = EgressPolicy(cfg).pin(LDAP, endpoint.host, endpoint.port, label="LDAP server")[0]
    except ValidationError as exc:  # a refused endpoint (EgressError), or a stored URL that is not one
        raise DirectoryError(str(exc)) from None
    named = literal_address(endpoint.host) is None
    tls = ldap3.Tls(sni=endpoint.host) if endpoint.use_ssl and named else None
    return ldap3.Server(address, port=endpoint.port, use_ssl=endpoint.use_ssl, tls=tls, get_info=ldap3.NONE,
                        connect_timeout=CONNECT_TIMEOUT)


def _connect(cfg: Config, settings: Settings, password: str | None) -> ldap3.Connection:
    """A bound connection (simple bind with the bind DN, anonymous without one)."""
    if not settings.ldap_url or not settings.ldap_base_dn:
        raise DirectoryError("no directory is configured (URL and base DN)")
    server = _server(cfg, settings)
    try:
        conn = ldap3.Connection(server, user=settings.ldap_bind_dn or None, password=password or None,
                                receive_timeout=RECEIVE_TIMEOUT, read_only=True, raise_exceptions=False)
        if not conn.bind():
            result = conn.result or {}
            conn.unbind()
            raise DirectoryError(f"bind as {settings.ldap_bind_dn or 'anonymous'} refused: "
                                 f"{result.get('description', 'error')} {result.get('message', '')}".strip())
        return conn
    except LDAPException as exc:
        raise DirectoryError(f"cannot reach {settings.ldap_url}: {exc}") from exc


def address_filter(settings: Settings, address: str) -> str:
    """The tenant's filter for one address, the address LDAP-escaped (RFC 4515) so it cannot change the filter."""
    return settings.ldap_filter.replace(ADDRESS_PLACEHOLDER, escape_filter_chars(normalize_address(address)))


def sync_filter(settings: Settings) -> str:
    """The tenant's filter matching every entry that has an address (``{address}`` becomes the wildcard ``*``)."""
    return settings.ldap_filter.replace(ADDRESS_PLACEHOLDER, "*")


def addresses_of(values: object) -> list[str]:
    """The e-mail addresses in one attribute's values: ``smtp:`` prefixes stripped, other prefixed values skipped."""
    items = values if isinstance(values, list | tuple) else [values]
    out = []
    for value in items:
        v = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        v = v.strip()
        head, sep, rest = v.partition(":")
        if sep and "@" not in head:
            if head.lower() + ":" != SMTP_PREFIX:
                continue  # x500:, sip:, X400: ... are not mail addresses
            v = rest.strip()
        if "@" in v and " " not in v:
            out.append(normalize_address(v))
    return out


def _search(conn: ldap3.Connection, settings: Settings, search_filter: str) -> list[str]:
    """Every address in the configured attributes of the entries the filter matches, page by page."""
    return list(_entries(conn, settings, search_filter))


def _paged(conn: ldap3.Connection, base: str, search_filter: str, attributes: list[str]) -> Iterator[dict[str, Any]]:
    """The entries of a paged search; :class:`DirectoryError` when the search fails."""
    try:
        pages = conn.extend.standard.paged_search(base, search_filter, ldap3.SUBTREE, attributes=attributes,
                                                  paged_size=PAGE_SIZE, generator=True)
        for entry in pages:
            if entry.get("type") == "searchResEntry":
                yield entry
    except LDAPException as exc:
        raise DirectoryError(f"search under {base} failed: {exc}") from exc
    result = conn.result or {}
    if result.get("result", 0) not in (0, None):
        raise DirectoryError(f"search under {base} failed: {result.get('description')} "
                             f"{result.get('message', '')}".strip())


def _entries(conn: ldap3.Connection, settings: Settings, search_filter: str, *,
             groups: dict[str, set[str]] | None = None) -> dict[str, str]:
    """Address → the DN of its entry, for every address in the configured attributes of the matching entries;
    with ``groups``, also each address's ``memberOf`` groups (Active Directory) by their CN."""
    found: dict[str, str] = {}
    attributes = settings.attribute_list + (["memberOf"] if groups is not None else [])
    for entry in _paged(conn, settings.ldap_base_dn, search_filter, attributes):
        attrs = dict(entry.get("attributes") or {})
        member_of = attrs.pop("memberOf", None) or []
        for values in attrs.values():
            for addr in addresses_of(values):
                found[addr] = str(entry.get("dn", "")).lower()
                if groups is not None:
                    groups.setdefault(addr, set()).update(filter(None, map(group_name, member_of)))
        if len(found) > MAX_ADDRESSES:
            raise DirectoryError(f"more than {MAX_ADDRESSES} addresses: narrow the base DN or the filter")
    return found


def group_name(dn: object) -> str:
    """A group's name from its DN (its first CN), e.g. ``cn=Finance,ou=Groups,dc=acme`` → ``Finance``."""
    first = str(dn).split(",", 1)[0].strip()
    key, sep, value = first.partition("=")
    return value.strip() if sep and key.strip().lower() == "cn" else ""


def _group_members(conn: ldap3.Connection, settings: Settings, by_dn: dict[str, list[str]],
                   groups: dict[str, set[str]]) -> None:
    """Add the groups found as objects under the base DN (groupOfNames, groupOfUniqueNames, AD groups) to the
    addresses of their members."""
    for entry in _paged(conn, settings.ldap_base_dn, GROUP_FILTER, ["cn", "member", "uniqueMember"]):
        attrs = entry.get("attributes") or {}
        cn = attrs.get("cn")
        name = (cn[0] if isinstance(cn, list) and cn else str(cn or "")).strip()
        if not name:
            continue
        for member in list(attrs.get("member") or []) + list(attrs.get("uniqueMember") or []):
            for addr in by_dn.get(str(member).lower(), []):
                groups.setdefault(addr, set()).add(name)


def lookup(session: Session, cfg: Config, tenant_id: int, address: str) -> bool:
    """Whether the directory holds ``address`` right now (one escaped search). Raises :class:`DirectoryError`."""
    settings = get_settings(session, tenant_id)
    conn = _connect(cfg, settings, _password(cfg, find_row(session, tenant_id)))
    try:
        return normalize_address(address) in _search(conn, settings, address_filter(settings, address))
    finally:
        conn.unbind()


def test_connection(session: Session, cfg: Config, tenant_id: int, address: str = "") -> str:
    """Bind, and look ``address`` up when one is given; a sentence saying what worked. Raises :class:`DirectoryError`
    (and :class:`ValidationError` for an address that is not one)."""
    settings = get_settings(session, tenant_id)
    if address and "@" not in address:
        raise ValidationError(f"{address!r} is not an e-mail address")
    conn = _connect(cfg, settings, _password(cfg, find_row(session, tenant_id)))
    try:
        said = f"connected to {settings.ldap_url} and bound as {settings.ldap_bind_dn or 'anonymous'}"
        if address:
            addr = normalize_address(address)
            hit = addr in _search(conn, settings, address_filter(settings, addr))
            said += f"; {addr} is {'in' if hit else 'not in'} the directory"
        return said
    finally:
        conn.unbind()


def fetch(session: Session, cfg: Config, tenant_id: int,
          groups: dict[str, set[str]] | None = None) -> list[str]:
    """Every address the directory holds in the tenant's domains; with ``groups``, each one's directory groups are
    put there too (the mail rules' ldap_group condition). Raises :class:`DirectoryError`."""
    settings = get_settings(session, tenant_id)
    conn = _connect(cfg, settings, _password(cfg, find_row(session, tenant_id)))
    try:
        found = _entries(conn, settings, sync_filter(settings), groups=groups)
        if groups is not None:
            by_dn: dict[str, list[str]] = {}
            for addr, dn in found.items():
                by_dn.setdefault(dn, []).append(addr)
            _group_members(conn, settings, by_dn, groups)
    finally:
        conn.unbind()
    domains = set(session.scalars(select(Domain.name).where(Domain.tenant_id == tenant_id)))
    if groups is not None:
        for addr in [a for a in groups if a.rpartition("@")[2] not in domains]:
            del groups[addr]
    return [a for a in found if a.rpartition("@")[2] in domains]


def sync(session: Session, cfg: Config, tenant_id: int) -> SyncResult:
    """Replace the tenant's directory rows with what the directory holds now, and record the outcome; the caller
    commits (rows and outcome in one transaction). A failure — or an empty answer, which is far likelier a wrong
    base DN or filter than a company without mailboxes — keeps the previous rows."""
    row = settings_row(session, tenant_id)
    groups: dict[str, set[str]] = {}
    try:
        addresses = fetch(session, cfg, tenant_id, groups)
        if not addresses:
            raise DirectoryError("the directory returned no address in your domains (check the base DN, the filter "
                                 "and the attributes)")
    except DirectoryError as exc:
        kept = row.last_sync_count or 0
        result = SyncResult(False, f"{exc}"[:MAX_RESULT - 40] + f"; kept the previous {kept} address(es)", kept)
        log.warning("directory sync of tenant %d failed: %s", tenant_id, exc)
    else:
        added, removed = replace_directory_rows(session, tenant_id, addresses)
        memberships = replace_directory_groups(session, tenant_id, {a: g for a, g in groups.items() if g})
        result = SyncResult(True, f"{len(addresses)} address(es): {added} added, {removed} removed; "
                                  f"{memberships} group membership(s)", len(addresses), added, removed)
        row.synced_at = utcnow()
        row.last_sync_count = len(addresses)
        log.info("directory sync of tenant %d: %s", tenant_id, result.message)
    row.last_sync_at = utcnow()
    row.last_sync_ok = result.ok
    row.last_sync_result = result.message[:MAX_RESULT]
    session.flush()
    return result
