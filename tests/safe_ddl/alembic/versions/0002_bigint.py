"""A plain type change that rewrites the table: refused on a large table."""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.alter_column("big", "qty", type_=sa.BigInteger())
