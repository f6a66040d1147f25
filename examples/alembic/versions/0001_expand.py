"""expand: orders.customer_email -> orders.email (release 1)"""
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    # Re-running this revision returns the same migration id.
    op.execute("SELECT zdm.expand_rename('orders', 'customer_email', 'email')")


def downgrade():
    op.execute("SELECT zdm.abort('orders', 'email')")
