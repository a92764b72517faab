"""Models of the content model's feedback learning (:mod:`tenants.learning`): each tenant's weight delta, the reports
an opted-in tenant shares, and the MSP-level shared delta that enough distinct tenants' agreeing reports build."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tenants.modelbase import Base, UTCDateTime, utcnow
from tenants.scope import TenantScoped


class ContentDelta(TenantScoped, Base):
    """A tenant's own content learning: the sparse weight delta on top of the base model, and what fed it."""

    __tablename__ = "content_delta"
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True)
    #: :meth:`tenants.content.online.Delta.dumps` bytes; empty: nothing learnt yet (or reset).
    delta: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    #: Mails learnt as spam and as ham (reports, releases, deletions, `mailward bayes train`).
    spam: Mapped[int] = mapped_column(Integer, default=0)
    ham: Mapped[int] = mapped_column(Integer, default=0)
    #: Of those, how many the model got wrong or nearly so and therefore changed it.
    changed: Mapped[int] = mapped_column(Integer, default=0)
    #: Whether the tenant lets its reports improve the MSP's shared model (opt-in).
    share: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Bumped at every change: ingress processes reload the delta when it moves.
    version: Mapped[int] = mapped_column(Integer, default=0)
    learned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reset_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SharedReport(TenantScoped, Base):
    """A report of an opted-in tenant offered to the shared model: the mail's fingerprint, label and features."""

    __tablename__ = "shared_report"
    __table_args__ = (UniqueConstraint("tenant_id", "fingerprint"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    #: sha256 of the mail's normalised text: the same campaign reported by several tenants has one fingerprint.
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    spam: Mapped[bool] = mapped_column(Boolean)
    #: The hashed feature row (see :func:`tenants.learning.pack_features`): enough to learn from once promoted,
    #: nothing a person could read the mail back from.
    features: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SharedDelta(Base):
    """The MSP-level delta learnt from reports that enough distinct tenants agree on (one row, ``id`` 1)."""

    __tablename__ = "shared_delta"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delta: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    learned: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SharedPromotion(Base):
    """A fingerprint that reached the shared model (learnt once, whatever more tenants report it later)."""

    __tablename__ = "shared_promotion"
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    spam: Mapped[bool] = mapped_column(Boolean)
    tenants: Mapped[int] = mapped_column(Integer)
    promoted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


__all__ = ["ContentDelta", "SharedReport", "SharedDelta", "SharedPromotion"]
