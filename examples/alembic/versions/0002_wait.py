"""wait for the background backfill (its own transaction, after 0001 committed)"""
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.execute("SELECT zdm.wait(zdm.migration_id('orders', 'customer_email'), '10 minutes')")


def downgrade():
    pass
