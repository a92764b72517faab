"""tracking center: trigram indexes for "contains" searches on PostgreSQL

The tracking center searches sender, header From and subject by substring (ILIKE '%...%'), which no B-tree index
serves: at 10 million messages such a search walked the tenant's mail for over a second (bench/tracking.py). On
PostgreSQL, pg_trgm GIN indexes serve ILIKE directly. pg_trgm is a trusted extension (PostgreSQL 13+), so a database
owner may create it; where the role may not, the indexes are skipped with a warning and searches stay correct, only
slower. SQLite has no such index: its installations are small. The indexes are not declared on the models (they are
PostgreSQL-only and need the extension).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 17:20:00
"""
import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

#: (index name, column) of message searched by substring.
TRIGRAM_INDEXES = (("ix_message_mail_from_trgm", "mail_from"), ("ix_message_header_from_trgm", "header_from"),
                   ("ix_message_subject_trgm", "subject"))


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError as exc:
        log.warning("pg_trgm is not available (%s): tracking searches by substring will not use an index",
                    str(exc.orig).strip().splitlines()[0])
        return
    for name, column in TRIGRAM_INDEXES:
        op.create_index(name, 'message', [column], postgresql_using='gin',
                        postgresql_ops={column: 'gin_trgm_ops'})


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, _ in TRIGRAM_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
