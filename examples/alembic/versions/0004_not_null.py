"""orders.email NOT NULL without a long lock"""
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade():
    # In a transaction block zdm queues the steps for after commit; in
    # autocommit they run now and a violation raises here (23502).
    with op.get_context().autocommit_block():
        op.execute("SELECT zdm.validate_not_null('orders', 'email')")


def downgrade():
    op.execute("ALTER TABLE orders ALTER COLUMN email DROP NOT NULL")
