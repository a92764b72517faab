"""Alembic environment: the models' metadata, and the database URL from Mailward's configuration."""

from alembic import context
from sqlalchemy import pool

from tenants.models import Base
from tenants.platform.db import make_engine
from tenants.scope import msp_scope

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        # A migration changes every tenant's rows alike: the MSP scope (the isolation guard refuses Core otherwise).
        with msp_scope(), context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
