"""security hardening: domains route once vouched for or verified; sessions end server-side

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 12:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # --- domains (routing only once vouched for by the MSP or verified) ---
    with op.batch_alter_table('domain', schema=None) as batch_op:
        batch_op.add_column(sa.Column('vouched', sa.Boolean(), nullable=False, server_default=sa.false()))
    # Every domain registered so far routed mail: it keeps doing so, as if the MSP had vouched for it.
    op.execute(sa.table('domain', sa.column('vouched', sa.Boolean())).update().values(vouched=True))
    # --- end domains ---
    # --- sessions (server-side session version) ---
    with op.batch_alter_table('user_account', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_version', sa.Integer(), nullable=False, server_default='0'))
    # --- end sessions ---
    # --- egress (tenant-supplied endpoints held to the egress policy unless the MSP's CLI set them) ---
    # Rows set so far are held to the policy: an MSP whose tenants' servers are on its own network allows it with
    # MAILWARD_TENANT_EGRESS_ALLOW, or sets the transport again with `mailward domain`.
    with op.batch_alter_table('domain', schema=None) as batch_op:
        batch_op.add_column(sa.Column('transport_egress_exempt', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    with op.batch_alter_table('recipient_verification', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ldap_egress_exempt', sa.Boolean(), nullable=False, server_default=sa.false()))
    # --- end egress ---
    pass


def downgrade() -> None:
    # --- egress ---
    with op.batch_alter_table('recipient_verification', schema=None) as batch_op:
        batch_op.drop_column('ldap_egress_exempt')
    with op.batch_alter_table('domain', schema=None) as batch_op:
        batch_op.drop_column('transport_egress_exempt')
    # --- end egress ---
    # --- sessions ---
    with op.batch_alter_table('user_account', schema=None) as batch_op:
        batch_op.drop_column('session_version')
    # --- end sessions ---
    # --- domains ---
    with op.batch_alter_table('domain', schema=None) as batch_op:
        batch_op.drop_column('vouched')
    # --- end domains ---
    pass
