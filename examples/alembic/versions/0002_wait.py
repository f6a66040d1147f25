"""wait for the background backfill (release 1 still; its own transaction, after
0001 committed). Code that reads orders.email ships in the next release."""
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.execute("SELECT zdm.wait(zdm.migration_id('orders', 'customer_email'), '10 minutes')")


def downgrade():
    pass
