"""feedback learning: each tenant's content-model delta, shared reports, the MSP's shared delta

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 15:50:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'content_delta',
        sa.Column('tenant_id', sa.Integer(), nullable=False),
        sa.Column('delta', sa.LargeBinary(), nullable=False),
        sa.Column('spam', sa.Integer(), nullable=False),
        sa.Column('ham', sa.Integer(), nullable=False),
        sa.Column('changed', sa.Integer(), nullable=False),
        sa.Column('share', sa.Boolean(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('learned_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('reset_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_content_delta_tenant_id_tenant'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_content_delta')),
    )
    op.create_table(
        'shared_report',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('tenant_id', sa.Integer(), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('spam', sa.Boolean(), nullable=False),
        sa.Column('features', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_shared_report_tenant_id_tenant'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_shared_report')),
        sa.UniqueConstraint('tenant_id', 'fingerprint', name=op.f('uq_shared_report_tenant_id')),
    )
    op.create_index(op.f('ix_shared_report_tenant_id'), 'shared_report', ['tenant_id'])
    op.create_index(op.f('ix_shared_report_fingerprint'), 'shared_report', ['fingerprint'])
    op.create_table(
        'shared_delta',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('delta', sa.LargeBinary(), nullable=False),
        sa.Column('learned', sa.Integer(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_shared_delta')),
    )
    op.create_table(
        'shared_promotion',
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('spam', sa.Boolean(), nullable=False),
        sa.Column('tenants', sa.Integer(), nullable=False),
        sa.Column('promoted_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('fingerprint', name=op.f('pk_shared_promotion')),
    )


def downgrade() -> None:
    op.drop_table('shared_promotion')
    op.drop_table('shared_delta')
    op.drop_index(op.f('ix_shared_report_fingerprint'), table_name='shared_report')
    op.drop_index(op.f('ix_shared_report_tenant_id'), table_name='shared_report')
    op.drop_table('shared_report')
    op.drop_table('content_delta')
