"""recipient verification

Per-tenant recipient verification at RCPT (off, static list, LDAP directory, call-ahead) with its LDAP settings, and
the valid recipients (typed-in or synced from the directory), unique per tenant and address.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 17:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import tenants.models

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('recipient_verification',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('mode', sa.String(length=10), nullable=False),
    sa.Column('ldap_url', sa.String(length=500), nullable=False),
    sa.Column('ldap_bind_dn', sa.String(length=500), nullable=False),
    sa.Column('ldap_password_enc', sa.Text(), nullable=True),
    sa.Column('ldap_base_dn', sa.String(length=500), nullable=False),
    sa.Column('ldap_filter', sa.String(length=500), nullable=False),
    sa.Column('ldap_attributes', sa.String(length=500), nullable=False),
    sa.Column('last_sync_at', tenants.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_sync_ok', sa.Boolean(), nullable=True),
    sa.Column('last_sync_result', sa.Text(), nullable=False),
    sa.Column('last_sync_count', sa.Integer(), nullable=True),
    sa.Column('synced_at', tenants.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', tenants.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_recipient_verification_tenant_id_tenant'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recipient_verification')),
    sa.UniqueConstraint('tenant_id', name=op.f('uq_recipient_verification_tenant_id'))
    )
    op.create_table('valid_recipient',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('source', sa.String(length=10), nullable=False),
    sa.Column('created_at', tenants.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_valid_recipient_tenant_id_tenant'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_valid_recipient'))
    )
    op.create_index('ix_valid_recipient_tenant_address', 'valid_recipient', ['tenant_id', 'address'], unique=True)


def downgrade() -> None:
    op.drop_index('ix_valid_recipient_tenant_address', table_name='valid_recipient')
    op.drop_table('valid_recipient')
    op.drop_table('recipient_verification')
