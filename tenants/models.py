"""SQLAlchemy models. Every tenant-owned table carries ``tenant_id`` and inherits :class:`TenantScoped`."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

# The feedback-learning and mail-rule tables live in modules of their own (on tenants.modelbase); importing them
# here puts them in Base.metadata wherever the models are imported.
from tenants import learning_models as learning_models
from tenants.mailrules import model as model
from tenants.modelbase import Base as Base
from tenants.modelbase import UTCDateTime as UTCDateTime
from tenants.modelbase import utcnow as utcnow
from tenants.scope import TenantScoped


class Role(enum.StrEnum):
    MSP_ADMIN = "msp_admin"
    MSP_HELPDESK = "msp_helpdesk"
    TENANT_ADMIN = "tenant_admin"
    TENANT_AUDITOR = "tenant_auditor"
    USER = "user"

    @property
    def is_msp(self) -> bool:
        return self in (Role.MSP_ADMIN, Role.MSP_HELPDESK)


class TlsMode(enum.StrEnum):
    NONE = "none"
    OPPORTUNISTIC = "opportunistic"
    REQUIRED = "required"


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for its first or next attempt
    DELIVERING = "delivering"  # claimed by a process until lease_until
    DEFERRED = "deferred"  # a temporary failure; next_attempt_at says when again
    DELIVERED = "delivered"
    BOUNCED = "bounced"  # permanent failure or expiry; a DSN was queued unless the sender was <>
    QUARANTINED = "quarantined"  # held in the quarantine; release sets it back to queued
    DISCARDED = "discarded"  # deleted from the quarantine (or dropped by policy); never delivered
    # Refused at RCPT or DATA (last_reply: what the sender was told); final from birth: never claimed, swept, retried
    # or released, and the message keeps no content.
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        return self in (DeliveryStatus.DELIVERED, DeliveryStatus.BOUNCED, DeliveryStatus.DISCARDED,
                        DeliveryStatus.REJECTED)


PENDING_STATUSES = (DeliveryStatus.QUEUED, DeliveryStatus.DELIVERING, DeliveryStatus.DEFERRED)


class Msp(Base):
    __tablename__ = "msp"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Every admin (MSP and tenant admins) must sign in with a TOTP second factor.
    require_totp: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Text shown on the login page before anyone signs in (a legal notice); empty: none.
    consent_banner: Mapped[str] = mapped_column(Text, default="")


class Tenant(Base):
    """A customer organisation of the MSP. Not tenant-scoped itself: the scope filters by its id."""

    __tablename__ = "tenant"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    msp_id: Mapped[int] = mapped_column(ForeignKey("msp.id"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Branding on the end-user portal and digests: the name shown, an accent colour (#rrggbb), a logo URL.
    brand_name: Mapped[str | None] = mapped_column(String(200))
    brand_color: Mapped[str | None] = mapped_column(String(7))
    brand_logo_url: Mapped[str | None] = mapped_column(String(500))


class Domain(TenantScoped, Base):
    __tablename__ = "domain"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    #: Ownership proven by the TXT record (:mod:`tenants.verification`); kept once proven.
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Added by the MSP (CLI, console, MSP API key), who vouches for the tenant's ownership: routes without proof.
    vouched: Mapped[bool] = mapped_column(Boolean, default=False)
    transport_host: Mapped[str] = mapped_column(String(253))
    transport_port: Mapped[int] = mapped_column(Integer, default=25)
    transport_tls: Mapped[str] = mapped_column(String(20), default=TlsMode.OPPORTUNISTIC.value)
    #: Set by the MSP on the command line: the transport is not held to the tenant egress policy (tenants.egress).
    transport_egress_exempt: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    tenant: Mapped[Tenant] = relationship()

    @property
    def transport(self) -> str:
        host = f"[{self.transport_host}]" if ":" in self.transport_host else self.transport_host
        return f"{host}:{self.transport_port}"

    @property
    def routes(self) -> bool:
        """Whether mail for the domain is accepted: the MSP vouched for it, or its owner proved it."""
        return bool(self.vouched or self.verified)


class RetiredTransport(TenantScoped, Base):
    """The transport of a domain its tenant removed: mail accepted (or quarantined) for the domain before the removal
    is still delivered there, when released too (:mod:`tenants.domains`). Newest row per name wins."""

    __tablename__ = "retired_transport"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    domain: Mapped[str] = mapped_column(String(253))
    transport_host: Mapped[str] = mapped_column(String(253))
    transport_port: Mapped[int] = mapped_column(Integer)
    transport_tls: Mapped[str] = mapped_column(String(20))
    transport_egress_exempt: Mapped[bool] = mapped_column(Boolean, default=False)
    removed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class User(TenantScoped, Base):
    __tablename__ = "user_account"
    __tenant_nullable__ = True
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When the last quarantine digest to this user was built (the next lists only newer mail).
    last_digest_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: TOTP second factor: the secret (encrypted like DKIM keys) and whether it is confirmed and in use.
    totp_secret_enc: Mapped[str | None] = mapped_column(Text)
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Failed sign-ins in a row, and until when the account is locked after too many.
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Stamped into every session at sign-in; bumping it (sign-out, deactivation) ends every session signed in before.
    session_version: Mapped[int] = mapped_column(Integer, default=0)

    @property
    def role_enum(self) -> Role:
        return Role(self.role)


class ApiKey(TenantScoped, Base):
    """A bearer key for the REST API; only its hash is stored, its prefix is shown to find it again."""

    __tablename__ = "api_key"
    __tenant_nullable__ = True
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When the key stops working (refused with 401 ``key_expired`` from then on); None: it never expires.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def scope_list(self) -> list[str]:
        return [s for s in self.scopes.split(",") if s]


class Message(TenantScoped, Base):
    """One accepted mail as one tenant sees it. A transaction to two tenants makes two rows with one queue id."""

    __tablename__ = "message"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    queue_id: Mapped[str] = mapped_column(String(32), index=True)
    direction: Mapped[str] = mapped_column(String(10), default="inbound")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    client_ip: Mapped[str | None] = mapped_column(String(45))
    client_helo: Mapped[str | None] = mapped_column(String(255))
    mail_from: Mapped[str] = mapped_column(String(320))
    header_from: Mapped[str | None] = mapped_column(String(998))
    subject: Mapped[str | None] = mapped_column(String(998))
    message_id_header: Mapped[str | None] = mapped_column(String(998))
    size: Mapped[int] = mapped_column(BigInteger)
    verdict: Mapped[str] = mapped_column(String(20), default="deliver")
    #: The verdict the checks gave when a mail rule's final action changed it (the dry-run replay starts there).
    verdict_before_rules: Mapped[str | None] = mapped_column(String(20))
    score: Mapped[float] = mapped_column(Float, default=0.0)
    explanation: Mapped[str] = mapped_column(Text, default="")
    #: spam, virus or attachment when the verdict is ``quarantine``.
    quarantine_kind: Mapped[str | None] = mapped_column(String(20))
    #: When a quarantined mail is purged (received_at + the tenant's retention for its kind).
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    deliveries: Mapped[list[Delivery]] = relationship(back_populates="message", order_by="Delivery.id")
    findings: Mapped[list[Finding]] = relationship(back_populates="message", order_by="Finding.id")

    __table_args__ = (
        Index("ix_message_tenant_received", "tenant_id", "received_at"),
        Index("ix_message_tenant_quarantine", "tenant_id", "quarantine_kind", "received_at"),
        Index("ix_message_expires", "expires_at"),
        Index("ix_message_received_id", "received_at", "id"),
        Index("ix_message_message_id_header", "message_id_header"),
        Index("ix_message_client_ip_received", "client_ip", "received_at"),
    )


class Blob(TenantScoped, Base):
    """Raw message bytes, behind :class:`tenants.blobs.BlobStore` so an object store can replace the table."""

    __tablename__ = "blob"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Delivery(TenantScoped, Base):
    """Delivery state of one recipient of one message; claimed atomically before any attempt."""

    __tablename__ = "delivery"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"), index=True)
    rcpt: Mapped[str] = mapped_column(String(320))
    #: Where it goes: ``transport`` (the tenant domain's server) or ``mx`` (DNS, or the relay host).
    route: Mapped[str] = mapped_column(String(10), default="transport")
    status: Mapped[str] = mapped_column(String(12), default=DeliveryStatus.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    last_reply: Mapped[str | None] = mapped_column(Text)
    #: ``host|port|tls`` when a mail rule rerouted the row to a transport of its own; None: by ``route``.
    next_hop: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    message: Mapped[Message] = relationship(back_populates="deliveries")

    __table_args__ = (
        Index("ix_delivery_status_next", "status", "next_attempt_at"),
        Index("ix_delivery_tenant_rcpt_status", "tenant_id", "rcpt", "status"),
        Index("ix_delivery_lower_rcpt", func.lower(text("rcpt"))),
    )


class Event(TenantScoped, Base):
    """One step of a message's timeline (received, delivery attempt, delivered, deferred, bounced...)."""

    __tablename__ = "event"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"), index=True)
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("delivery.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(30))
    detail: Mapped[str] = mapped_column(Text, default="")

    message: Mapped[Message] = relationship()

    __table_args__ = (Index("ix_event_tenant_at", "tenant_id", "at"),)


class Finding(TenantScoped, Base):
    """One symbol a check recorded for a message, with the score it had under the tenant's policy."""

    __tablename__ = "finding"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"), index=True)
    symbol: Mapped[str] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Float, default=0.0)
    reason: Mapped[str] = mapped_column(Text, default="")

    message: Mapped[Message] = relationship(back_populates="findings")


class PolicySettings(TenantScoped, Base):
    """Policy as data: the MSP baseline (``tenant_id`` NULL) or one tenant's overrides, a JSON object.

    :mod:`tenants.policy` merges code defaults, the baseline and the tenant's values into a :class:`Policy`.
    """

    __tablename__ = "policy_settings"
    __tenant_nullable__ = True
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), unique=True)
    settings: Mapped[str] = mapped_column(Text, default="{}")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BayesToken(TenantScoped, Base):
    """How often a token was seen in a tenant's trained spam and ham."""

    __tablename__ = "bayes_token"
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True)
    token: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    spam: Mapped[int] = mapped_column(Integer, default=0)
    ham: Mapped[int] = mapped_column(Integer, default=0)


class BayesCorpus(TenantScoped, Base):
    """How many spam and ham mails a tenant's Bayes was trained on."""

    __tablename__ = "bayes_corpus"
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True)
    nspam: Mapped[int] = mapped_column(Integer, default=0)
    nham: Mapped[int] = mapped_column(Integer, default=0)


class DkimKey(TenantScoped, Base):
    """A DKIM signing key of a tenant's domain; the private key is stored encrypted (see :mod:`tenants.dkimkeys`)."""

    __tablename__ = "dkim_key"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    domain: Mapped[str] = mapped_column(String(253))
    selector: Mapped[str] = mapped_column(String(63))
    private_key_enc: Mapped[str] = mapped_column(Text)
    public_key: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_dkim_key_domain_selector", "domain", "selector", unique=True),)


class RelayNetwork(TenantScoped, Base):
    """A network (CIDR) of a tenant's own servers whose mail through Mailward is outbound."""

    __tablename__ = "relay_network"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    cidr: Mapped[str] = mapped_column(String(50), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SmtpCredential(TenantScoped, Base):
    """SMTP AUTH login of a tenant for relaying outbound mail (submission listener, STARTTLS first)."""

    __tablename__ = "smtp_credential"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    username: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ListEntry(TenantScoped, Base):
    """An allow- or block-list entry: MSP-wide (no tenant), a tenant's (no user), or one user's own.

    ``value`` is an address, a domain (matching its subdomains too) or an IP network, as ``value_type`` says.
    """

    __tablename__ = "list_entry"
    __tenant_nullable__ = True
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(5))  # allow | block
    value_type: Mapped[str] = mapped_column(String(10))  # address | domain | ip
    value: Mapped[str] = mapped_column(String(320))
    comment: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(320), default="")

    __table_args__ = (Index("ix_list_entry_scope", "tenant_id", "user_id", "kind"),)


class UserAddress(TenantScoped, Base):
    """Another address (alias, shared mailbox) whose quarantined mail a user may see, besides their login e-mail."""

    __tablename__ = "user_address"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320))

    __table_args__ = (Index("ix_user_address_tenant_address", "tenant_id", "address", unique=True),)


class MessageView(TenantScoped, Base):
    """Who opened a message (envelope-level access audit, and "seen by" in shared quarantines)."""

    __tablename__ = "message_view"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"), index=True)
    user_email: Mapped[str] = mapped_column(String(320))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RecipientVerification(TenantScoped, Base):
    """How the ingress verifies a tenant's recipients at RCPT (see :mod:`tenants.recipients`), and the LDAP settings.

    One row per tenant; no row is mode ``off``. The bind password is encrypted like DKIM keys.
    """

    __tablename__ = "recipient_verification"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), unique=True)
    #: off | static | ldap | callahead
    mode: Mapped[str] = mapped_column(String(10), default="off")
    ldap_url: Mapped[str] = mapped_column(String(500), default="")
    ldap_bind_dn: Mapped[str] = mapped_column(String(500), default="")
    ldap_password_enc: Mapped[str | None] = mapped_column(Text)
    ldap_base_dn: Mapped[str] = mapped_column(String(500), default="")
    #: An LDAP filter with an ``{address}`` placeholder (escaped when an address is looked up; ``*`` to sync).
    ldap_filter: Mapped[str] = mapped_column(String(500), default="")
    #: Comma-separated attributes that hold addresses (``smtp:`` prefixes are stripped).
    ldap_attributes: Mapped[str] = mapped_column(String(500), default="")
    #: Set by the MSP on the command line: the directory is not held to the tenant egress policy (tenants.egress).
    ldap_egress_exempt: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The last directory sync: when, whether it worked, what it said, how many addresses it left.
    last_sync_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_sync_ok: Mapped[bool | None] = mapped_column(Boolean)
    last_sync_result: Mapped[str] = mapped_column(Text, default="")
    last_sync_count: Mapped[int | None] = mapped_column(Integer)
    #: The last sync that worked; until there is one, LDAP mode accepts every recipient (nothing to compare with).
    synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ValidRecipient(TenantScoped, Base):
    """A recipient address the tenant accepts mail for: typed in (``static``, ``@domain`` is a catch-all) or
    copied from its directory (``ldap``, replaced at each sync)."""

    __tablename__ = "valid_recipient"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))
    source: Mapped[str] = mapped_column(String(10), default="static")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_valid_recipient_tenant_address", "tenant_id", "address", unique=True),)


class UsedToken(Base):
    """A single-use action token (digest links) that was spent, and what it did; replay finds it here."""

    __tablename__ = "used_token"
    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    result: Mapped[str] = mapped_column(String(200), default="")


class AuditEntry(TenantScoped, Base):
    """Who did what: every admin action and every envelope-level access (who viewed which mail)."""

    __tablename__ = "audit_entry"
    __tenant_nullable__ = True
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(320))
    #: Set when an MSP user acts while viewing as a tenant (impersonation).
    acting_as: Mapped[str | None] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(60))
    target: Mapped[str] = mapped_column(String(500), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    ip: Mapped[str | None] = mapped_column(String(45))

    __table_args__ = (Index("ix_audit_entry_tenant_at", "tenant_id", "at"),)


class StatHour(TenantScoped, Base):
    """Counters of one tenant's mail in one hour, per direction and recipient domain (rolled up by a worker job)."""

    __tablename__ = "stat_hour"
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    direction: Mapped[str] = mapped_column(String(10), primary_key=True)
    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    mails: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered: Mapped[int] = mapped_column(Integer, default=0)
    tagged: Mapped[int] = mapped_column(Integer, default=0)
    spam: Mapped[int] = mapped_column(Integer, default=0)
    virus: Mapped[int] = mapped_column(Integer, default=0)
    attachment: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)


class StatTop(TenantScoped, Base):
    """Per day, the count of one key of a top list: kind sender, rcpt, spam_source, virus or reject_reason."""

    __tablename__ = "stat_top"
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    key: Mapped[str] = mapped_column(String(320), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class UsageMonth(TenantScoped, Base):
    """Usage metering for billing: mails, bytes and protected mailboxes (distinct recipients) per tenant and month."""

    __tablename__ = "usage_month"
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # YYYY-MM
    mails: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    mailboxes: Mapped[int] = mapped_column(Integer, default=0)


class RollupState(Base):
    """How far a roll-up job has read (its watermark), so each run reads only what is new."""

    __tablename__ = "rollup_state"
    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    until: Mapped[datetime] = mapped_column(UTCDateTime)


class Heartbeat(Base):
    """A running process announces itself here (cluster view)."""

    __tablename__ = "heartbeat"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    host: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(40))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    handled: Mapped[int] = mapped_column(BigInteger, default=0)


__all__ = [
    "Base",
    "Msp",
    "Tenant",
    "Domain",
    "RetiredTransport",
    "User",
    "ApiKey",
    "Message",
    "Blob",
    "Delivery",
    "Event",
    "Finding",
    "PolicySettings",
    "BayesToken",
    "BayesCorpus",
    "DkimKey",
    "RelayNetwork",
    "SmtpCredential",
    "ListEntry",
    "UserAddress",
    "MessageView",
    "RecipientVerification",
    "ValidRecipient",
    "UsedToken",
    "AuditEntry",
    "StatHour",
    "StatTop",
    "UsageMonth",
    "RollupState",
    "Heartbeat",
    "Role",
    "TlsMode",
    "DeliveryStatus",
]
