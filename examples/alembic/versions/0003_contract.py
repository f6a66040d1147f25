"""contract (release 3, once no application version reads customer_email)"""
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade():
    op.execute("SELECT zdm.contract('orders', 'email')")


def downgrade():
    raise RuntimeError("the old column is gone; restore from the contract's event log or a backup")
