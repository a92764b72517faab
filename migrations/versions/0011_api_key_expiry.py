"""API key expiry; the transports of removed domains (their queued and quarantined mail is still delivered there)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 01:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # --- API key expiry (none for the keys made so far: they keep working) ---
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
    # --- removed domains ---
    op.create_table(
        'retired_transport',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('tenant_id', sa.Integer(), nullable=False),
        sa.Column('domain', sa.String(length=253), nullable=False),
        sa.Column('transport_host', sa.String(length=253), nullable=False),
        sa.Column('transport_port', sa.Integer(), nullable=False),
        sa.Column('transport_tls', sa.String(length=20), nullable=False),
        sa.Column('transport_egress_exempt', sa.Boolean(), nullable=False),
        sa.Column('removed_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_retired_transport_tenant_id_tenant'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_retired_transport')),
    )
    op.create_index(op.f('ix_retired_transport_tenant_id'), 'retired_transport', ['tenant_id'])


def downgrade() -> None:
    op.drop_index(op.f('ix_retired_transport_tenant_id'), table_name='retired_transport')
    op.drop_table('retired_transport')
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.drop_column('expires_at')
