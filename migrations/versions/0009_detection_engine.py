"""detection engine (empty: reserved while the detection work was in progress; its tables are in 0010)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 12:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # --- content model and feedback learning ---
    # --- end content model ---
    pass


def downgrade() -> None:
    # --- content model and feedback learning ---
    # --- end content model ---
    pass
