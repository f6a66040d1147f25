"""Alembic environment for tests/safe_ddl.rs: plain Alembic operations (no
zdm calls) run under zdm.safe_ddl, each revision in its own transaction."""
import os

from alembic import context
from sqlalchemy import create_engine

engine = create_engine(os.environ["ZDM_TEST_URL"])

with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
