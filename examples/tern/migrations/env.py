"""Alembic's environment: online migrations against DATABASE_URL."""
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

from tern import database_url

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name)

engine = sa.create_engine(database_url(), poolclass=sa.pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
