"""Alembic environment for the zdm example.

transaction_per_migration=True: each revision commits on its own, so the
brief ACCESS EXCLUSIVE locks of expand and contract are released right away
and the background backfill queued by revision 0001 starts before 0002 waits
for it. (With Alembic's default — one transaction for the whole run — the
wait in 0002 would fail with 25001: its backfill could never start.)
"""
import os

from alembic import context
from sqlalchemy import create_engine, event


def show_notices(dbapi_connection, _record):
    # psycopg 3 drops NOTICEs unless a handler is added: zdm reports
    # progress and "runs after commit" through them.
    dbapi_connection.add_notice_handler(lambda d: print("NOTICE:", d.message_primary))


engine = create_engine(os.environ["ZDM_EXAMPLE_URL"])
event.listen(engine, "connect", show_notices)

with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
