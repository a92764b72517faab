"""Recipient verification per tenant: which local parts of its domains the ingress accepts at RCPT.

Modes (one :class:`RecipientVerification` row per tenant; no row is ``off``):

- ``off``: every local part of the tenant's domains is accepted (the transport decides later, and may bounce).
- ``static``: only the typed-in list (:class:`ValidRecipient` rows, source ``static``); ``@domain`` accepts the
  whole domain (a catch-all).
- ``ldap``: the addresses copied from the tenant's directory by :mod:`tenants.directory` (source ``ldap``), plus the
  static list for addresses the directory lacks. Until a sync has worked once, every recipient is accepted.
- ``callahead``: the ingress asks the domain's transport (``smtp.callahead``) and caches the answer.

Services here are used by the CLI, the portal and the API; they filter by ``tenant_id`` explicitly, so they run in
the tenant's own scope or the MSP's alike. The caller commits, then calls :func:`reload_after_commit`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from tenants.addresses import normalize_address
from tenants.dkimkeys import encrypt_private_key
from tenants.egress import LDAP, EgressPolicy
from tenants.exceptions import NotFound, ValidationError
from tenants.models import Domain, RecipientVerification, ValidRecipient, utcnow
from tenants.platform.config import Config
from tenants.platform.jobs import after_commit
from tenants.platform.redisconn import bump_policy_version

MODES: tuple[str, ...] = ("off", "static", "ldap", "callahead")
SOURCES: tuple[str, ...] = ("static", "ldap")
#: Where the address goes into an LDAP filter.
ADDRESS_PLACEHOLDER = "{address}"
#: Filter used when a tenant sets none: the address in ``mail`` or as an ``smtp:`` proxy address (Active Directory).
DEFAULT_LDAP_FILTER = "(|(mail={address})(proxyAddresses=smtp:{address}))"
#: Attributes read when a tenant names none.
DEFAULT_LDAP_ATTRIBUTES = "mail,proxyAddresses"
#: Most lines one static-list edit may hold (a bigger list belongs in a directory).
MAX_STATIC_LINES = 10000
#: Subaddress separator: ``bob+news@`` is accepted when ``bob@`` is (what the transport does with it is its business).
RECIPIENT_DELIMITER = "+"
#: Longest LDAP URL, DN, filter or attribute list (the columns' width).
MAX_SETTING = 500
#: The port of each LDAP URL scheme when the URL names none.
LDAP_DEFAULT_PORTS = {"ldap": 389, "ldaps": 636}

_LOCAL_RE = re.compile(r"^[^@\s<>()\[\],;:\"\\]{1,64}$")
_ATTRIBUTE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")


@dataclass(frozen=True)
class Settings:
    """A tenant's verification as plain values (what the ingress caches and the API shows; no password)."""

    tenant_id: int
    mode: str = "off"
    ldap_url: str = ""
    ldap_bind_dn: str = ""
    ldap_base_dn: str = ""
    ldap_filter: str = DEFAULT_LDAP_FILTER
    ldap_attributes: str = DEFAULT_LDAP_ATTRIBUTES
    password_set: bool = False
    #: Whether a directory sync has worked at least once (LDAP mode accepts everyone until then).
    synced: bool = False
    #: The MSP's CLI set the directory: connections to it skip the tenant egress policy.
    ldap_egress_exempt: bool = False

    @property
    def attribute_list(self) -> list[str]:
        return [a.strip() for a in self.ldap_attributes.split(",") if a.strip()]


def find_row(session: Session, tenant_id: int) -> RecipientVerification | None:
    """The tenant's settings row, or None while it has never left mode ``off``."""
    return session.scalar(select(RecipientVerification).where(RecipientVerification.tenant_id == tenant_id))


def settings_row(session: Session, tenant_id: int) -> RecipientVerification:
    """The tenant's row, created (mode ``off``, default LDAP filter and attributes) if it has none yet; no commit."""
    row = find_row(session, tenant_id)
    if row is None:
        row = RecipientVerification(tenant_id=tenant_id, mode="off", ldap_url="", ldap_bind_dn="", ldap_base_dn="",
                                    ldap_filter=DEFAULT_LDAP_FILTER, ldap_attributes=DEFAULT_LDAP_ATTRIBUTES,
                                    last_sync_result="")
        session.add(row)
        session.flush()
    return row


def get_settings(session: Session, tenant_id: int) -> Settings:
    """The tenant's verification settings (``off`` and defaults without a row)."""
    row = find_row(session, tenant_id)
    if row is None:
        return Settings(tenant_id)
    return Settings(tenant_id, row.mode, row.ldap_url, row.ldap_bind_dn, row.ldap_base_dn,
                    row.ldap_filter or DEFAULT_LDAP_FILTER, row.ldap_attributes or DEFAULT_LDAP_ATTRIBUTES,
                    row.ldap_password_enc is not None, row.synced_at is not None, row.ldap_egress_exempt)


def set_mode(session: Session, tenant_id: int, mode: str) -> RecipientVerification:
    """Switch the tenant's mode; refuses a mode that would reject every recipient (an empty static list, LDAP
    without a directory)."""
    if mode not in MODES:
        raise ValidationError(f"recipient verification mode {mode!r}: use one of {', '.join(MODES)}")
    row = settings_row(session, tenant_id)
    if mode == "static" and count(session, tenant_id, "static") == 0:
        raise ValidationError("the static list is empty: add the addresses you accept (or @domain for a whole "
                              "domain) before switching to static mode, or every mail would be refused")
    if mode == "ldap" and not (row.ldap_url and row.ldap_base_dn):
        raise ValidationError("LDAP mode needs the directory's URL and base DN: save the LDAP settings first")
    row.mode = mode
    row.updated_at = utcnow()
    session.flush()
    return row


def validate_ldap_filter(value: str) -> str:
    """A filter in parentheses, balanced, with the ``{address}`` placeholder."""
    f = value.strip()
    if not f:
        return DEFAULT_LDAP_FILTER
    if len(f) > MAX_SETTING:
        raise ValidationError(f"LDAP filter too long: at most {MAX_SETTING} characters")
    if ADDRESS_PLACEHOLDER not in f:
        raise ValidationError(f"the LDAP filter must contain {ADDRESS_PLACEHOLDER} where the address goes, e.g. "
                              f"{DEFAULT_LDAP_FILTER}")
    depth = 0
    for ch in f:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            break
    if not f.startswith("(") or depth != 0:
        raise ValidationError("the LDAP filter must be enclosed in parentheses, and they must balance")
    return f


def validate_attributes(value: str) -> str:
    names = [a.strip() for a in value.split(",") if a.strip()]
    if not names:
        return DEFAULT_LDAP_ATTRIBUTES
    bad = [n for n in names if not _ATTRIBUTE_RE.match(n)]
    if bad:
        raise ValidationError(f"not an LDAP attribute name: {', '.join(bad)} (write e.g. mail,proxyAddresses)")
    joined = ",".join(dict.fromkeys(names))
    if len(joined) > MAX_SETTING:
        raise ValidationError(f"too many LDAP attributes: at most {MAX_SETTING} characters")
    return joined


@dataclass(frozen=True)
class LdapEndpoint:
    """Where an LDAP URL points: its scheme (``ldap`` or ``ldaps``), host and port."""

    scheme: str
    host: str
    port: int

    @property
    def use_ssl(self) -> bool:
        return self.scheme == "ldaps"


def ldap_endpoint(url: str) -> LdapEndpoint:
    """The scheme, host and port of an LDAP URL (the scheme's port when it names none); :class:`ValidationError`
    for anything else."""
    bad = ValidationError(f"{url[:100]!r} is not an LDAP URL (write ldap://host:389 or ldaps://host:636)")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise bad from None
    scheme = parts.scheme.lower()
    if scheme not in LDAP_DEFAULT_PORTS or not parts.hostname or parts.username or parts.password:
        raise bad
    return LdapEndpoint(scheme, parts.hostname, port or LDAP_DEFAULT_PORTS[scheme])


def validate_ldap_url(value: str) -> str:
    url = value.strip()
    if len(url) > MAX_SETTING or any(c.isspace() for c in url):
        raise ValidationError(f"{value!r} is not an LDAP URL (no spaces, at most {MAX_SETTING} characters)")
    ldap_endpoint(url)
    return url


def _dn(value: str, what: str, *, required: bool) -> str:
    dn = value.strip()
    if required and not dn:
        raise ValidationError(f"the {what} is required, e.g. dc=example,dc=com")
    if dn and ("=" not in dn or len(dn) > MAX_SETTING or any(c in dn for c in "\r\n\x00")):
        raise ValidationError(f"{value!r} is not a DN (write e.g. ou=people,dc=example,dc=com)")
    return dn


def set_ldap(session: Session, cfg: Config, tenant_id: int, *, url: str, base_dn: str, bind_dn: str = "",
             password: str | None = None, search_filter: str = "", attributes: str = "",
             egress: EgressPolicy | None = None) -> RecipientVerification:
    """Save the tenant's directory settings; ``password`` None keeps the stored one, "" removes it (anonymous
    bind). The password is stored encrypted with the DKIM key secret. The URL must pass ``egress``, the policy of
    whoever sets it (the tenant egress policy unless given: only the MSP's CLI passes an unchecked one)."""
    policy = egress or EgressPolicy(cfg)
    clean_url = validate_ldap_url(url)
    endpoint = ldap_endpoint(clean_url)
    policy.vet(LDAP, endpoint.host, endpoint.port, label="LDAP server")
    row = settings_row(session, tenant_id)
    row.ldap_url = clean_url
    row.ldap_egress_exempt = not policy.enforced
    row.ldap_base_dn = _dn(base_dn, "base DN", required=True)
    row.ldap_bind_dn = _dn(bind_dn, "bind DN", required=False)
    row.ldap_filter = validate_ldap_filter(search_filter)
    row.ldap_attributes = validate_attributes(attributes)
    if password is not None:
        if len(password) > 1024:
            raise ValidationError("the bind password is too long")
        row.ldap_password_enc = encrypt_private_key(cfg, password.encode()) if password else None
    row.updated_at = utcnow()
    session.flush()
    return row


# --- the static list ------------------------------------------------------------------------------------------------

def _tenant_domains(session: Session, tenant_id: int) -> set[str]:
    return set(session.scalars(select(Domain.name).where(Domain.tenant_id == tenant_id)))


def validate_entry(value: str, domains: Iterable[str]) -> str:
    """A normalised address, or ``@domain`` (a catch-all), in one of the tenant's ``domains``."""
    raw = value.strip()
    if not raw:
        raise ValidationError("an address is empty")
    owned = set(domains)
    if raw.startswith("@"):
        domain = normalize_address("x" + raw).rpartition("@")[2]
        if domain not in owned:
            raise ValidationError(f"{value!r}: {domain} is not one of your domains ({', '.join(sorted(owned))})")
        return "@" + domain
    addr = normalize_address(raw)
    local, at, domain = addr.rpartition("@")
    if not at or not local or not _LOCAL_RE.match(local):
        raise ValidationError(f"{value!r} is not an e-mail address (write local@domain, or @domain for all)")
    if domain not in owned:
        raise ValidationError(f"{value!r}: {domain} is not one of your domains ({', '.join(sorted(owned))})")
    return addr


def parse_lines(text: str) -> list[str]:
    """The entries of a text, one a line; blank lines and ``#`` comments are skipped."""
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    out = [line for line in lines if line]
    if len(out) > MAX_STATIC_LINES:
        raise ValidationError(f"too many addresses: at most {MAX_STATIC_LINES} per list")
    return out


def add_static(session: Session, tenant_id: int, value: str) -> ValidRecipient:
    """Add an address (or ``@domain``) to the static list; an address already listed is returned as it is (one the
    directory brought becomes static, so it stays when the directory drops it)."""
    entry = validate_entry(value, _tenant_domains(session, tenant_id))
    row = session.scalar(select(ValidRecipient).where(ValidRecipient.tenant_id == tenant_id,
                                                      ValidRecipient.address == entry))
    if row is not None:
        row.source = "static"
        session.flush()
        return row
    row = ValidRecipient(tenant_id=tenant_id, address=entry, source="static")
    session.add(row)
    session.flush()
    return row


def remove_static(session: Session, tenant_id: int, value: str) -> ValidRecipient:
    """Remove an address from the static list (:class:`NotFound` if it is not on it)."""
    raw = value.strip()
    entry = ("@" + normalize_address("x" + raw).rpartition("@")[2]) if raw.startswith("@") else normalize_address(raw)
    row = session.scalar(select(ValidRecipient).where(ValidRecipient.tenant_id == tenant_id,
                                                      ValidRecipient.address == entry,
                                                      ValidRecipient.source == "static"))
    if row is None:
        raise NotFound(f"{entry} is not on the static list")
    return _delete_static(session, row)


def remove_static_id(session: Session, tenant_id: int, entry_id: int) -> ValidRecipient:
    """Remove a static entry by id; another tenant's id, or a directory entry, is :class:`NotFound`."""
    row = session.scalar(select(ValidRecipient).where(ValidRecipient.id == entry_id,
                                                      ValidRecipient.tenant_id == tenant_id))
    if row is None or row.source != "static":
        raise NotFound(f"ValidRecipient {entry_id} not found")
    return _delete_static(session, row)


def _delete_static(session: Session, row: ValidRecipient) -> ValidRecipient:
    settings = find_row(session, row.tenant_id)
    if settings is not None and settings.mode == "static" and count(session, row.tenant_id, "static") <= 1:
        raise ValidationError("this is the last address of the static list: in static mode an empty list would "
                              "refuse every mail; switch the mode first")
    session.delete(row)
    session.flush()
    return row


def replace_static(session: Session, tenant_id: int, text: str) -> tuple[int, int]:
    """Make the static list exactly the text's entries (one a line); every line is checked first and nothing changes
    if one is wrong (the error names each bad line). Returns (added, removed)."""
    domains = _tenant_domains(session, tenant_id)
    wanted: dict[str, None] = {}
    errors = []
    for n, line in enumerate(parse_lines(text), 1):
        try:
            wanted[validate_entry(line, domains)] = None
        except ValidationError as exc:
            errors.append(f"line {n}: {exc}")
    if errors:
        raise ValidationError("; ".join(errors[:10]) + (f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""))
    settings = find_row(session, tenant_id)
    if not wanted and settings is not None and settings.mode == "static":
        raise ValidationError("the static list cannot be empty in static mode (every mail would be refused); "
                              "switch the mode first")
    rows = {r.address: r for r in session.scalars(select(ValidRecipient).where(ValidRecipient.tenant_id == tenant_id))}
    added = removed = 0
    for address, row in rows.items():
        if row.source == "static" and address not in wanted:
            session.delete(row)
            removed += 1
    for address in wanted:
        existing = rows.get(address)
        if existing is None:
            session.add(ValidRecipient(tenant_id=tenant_id, address=address, source="static"))
            added += 1
        elif existing.source != "static":
            existing.source = "static"
            added += 1
    session.flush()
    return added, removed


def list_entries(session: Session, tenant_id: int, source: str | None = "static") -> list[ValidRecipient]:
    stmt = select(ValidRecipient).where(ValidRecipient.tenant_id == tenant_id).order_by(ValidRecipient.address)
    if source is not None:
        stmt = stmt.where(ValidRecipient.source == source)
    return list(session.scalars(stmt))


def count(session: Session, tenant_id: int, source: str | None = None) -> int:
    stmt = select(func.count()).select_from(ValidRecipient).where(ValidRecipient.tenant_id == tenant_id)
    if source is not None:
        stmt = stmt.where(ValidRecipient.source == source)
    return int(session.scalar(stmt) or 0)


def replace_directory_rows(session: Session, tenant_id: int, addresses: Iterable[str]) -> tuple[int, int]:
    """Make the tenant's ``ldap`` rows exactly ``addresses`` (static rows stay and win); (added, removed). No commit."""
    wanted = set(addresses)
    rows = session.execute(select(ValidRecipient.id, ValidRecipient.address, ValidRecipient.source)
                           .where(ValidRecipient.tenant_id == tenant_id)).all()
    present = {address: source for _, address, source in rows}
    gone = [rid for rid, address, source in rows if source == "ldap" and address not in wanted]
    for i in range(0, len(gone), 500):
        session.execute(delete(ValidRecipient).where(ValidRecipient.tenant_id == tenant_id,
                                                     ValidRecipient.id.in_(gone[i:i + 500]))
                        .execution_options(synchronize_session=False))
    new = sorted(wanted - set(present))
    session.add_all(ValidRecipient(tenant_id=tenant_id, address=a, source="ldap") for a in new)
    session.flush()
    return len(new), len(gone)


# --- the ingress's question -----------------------------------------------------------------------------------------

def candidates(address: str) -> list[str]:
    """What may list a recipient: itself, without its ``+tag``, and its domain's catch-all ``@domain``."""
    addr = normalize_address(address)
    local, _, domain = addr.rpartition("@")
    out = [addr]
    base = local.split(RECIPIENT_DELIMITER, 1)[0]
    if base and base != local:
        out.append(f"{base}@{domain}")
    out.append("@" + domain)
    return out


def is_listed(session: Session, tenant_id: int, address: str, sources: Iterable[str] = SOURCES) -> bool:
    """Whether one indexed lookup finds the address (or its base address, or its domain's catch-all)."""
    found = session.scalar(select(ValidRecipient.id).where(
        ValidRecipient.tenant_id == tenant_id, ValidRecipient.address.in_(candidates(address)),
        ValidRecipient.source.in_(list(sources))).limit(1))
    return found is not None


def sources_for(settings: Settings) -> tuple[str, ...] | None:
    """The row sources a mode consults, or None when the mode accepts every recipient without a lookup here."""
    if settings.mode == "static":
        return ("static",)
    if settings.mode == "ldap" and settings.synced:
        return SOURCES
    return None


def is_valid(session: Session, tenant_id: int, address: str) -> bool:
    """Whether the tenant accepts mail for ``address`` under its mode (``callahead`` and ``off``: True here; the
    call-ahead is the ingress's, over the network)."""
    sources = sources_for(get_settings(session, tenant_id))
    return True if sources is None else is_listed(session, tenant_id, address, sources)


def reload_after_commit(session: Session, cfg: Config) -> None:
    """Tell every ingress to reload verification settings once the caller's transaction commits."""
    after_commit(session, lambda: bump_policy_version(cfg))
