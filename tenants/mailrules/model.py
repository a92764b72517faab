"""Rows of the mail rules: a rule (the MSP's baseline when ``tenant_id`` is NULL), a tenant's opt-out of a baseline
default, and the directory group memberships the "LDAP group" condition reads."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tenants.modelbase import Base, UTCDateTime, utcnow
from tenants.scope import TenantScoped


class MailRule(TenantScoped, Base):
    """One rule. Its conditions and actions are :mod:`tenants.mailrules.schema`'s JSON ``definition``."""

    __tablename__ = "mail_rule"
    __tenant_nullable__ = True
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: None: an MSP baseline rule every tenant inherits.
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    #: 0-100, higher first.
    priority: Mapped[int] = mapped_column(Integer, default=50)
    #: inbound | outbound | both
    direction: Mapped[str] = mapped_column(String(10), default="inbound")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Baseline only: the tenant sees the rule but cannot disable or outrank it.
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    definition: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MailRuleOptOut(TenantScoped, Base):
    """A tenant disabled one of the MSP's (unlocked) baseline rules for itself."""

    __tablename__ = "mail_rule_optout"
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("mail_rule.id", ondelete="CASCADE"), primary_key=True)


class DirectoryGroupMember(TenantScoped, Base):
    """An address of the tenant's directory and one group it belongs to (replaced at each directory sync)."""

    __tablename__ = "directory_group_member"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))
    group_name: Mapped[str] = mapped_column(String(256))

    __table_args__ = (Index("ix_directory_group_member_tenant_address", "tenant_id", "address"),)
