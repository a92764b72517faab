"""tracking center indexes

Indexes the tracking center's filters need at millions of messages (see tenants/tracking.py): the MSP-wide order
(received_at, id), Message-ID and client address lookups, and the case-insensitive recipient lookup lower(rcpt).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 15:40:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_message_received_id', 'message', ['received_at', 'id'])
    op.create_index('ix_message_message_id_header', 'message', ['message_id_header'])
    op.create_index('ix_message_client_ip_received', 'message', ['client_ip', 'received_at'])
    op.create_index('ix_delivery_lower_rcpt', 'delivery', [sa.text('lower(rcpt)')])


def downgrade() -> None:
    op.drop_index('ix_delivery_lower_rcpt', table_name='delivery')
    op.drop_index('ix_message_client_ip_received', table_name='message')
    op.drop_index('ix_message_message_id_header', table_name='message')
    op.drop_index('ix_message_received_id', table_name='message')
