"""A plain ADD COLUMN (catalog only): safe_ddl bounds its lock wait."""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.add_column("big", sa.Column("note", sa.Text()))
    op.execute("INSERT INTO migration_log VALUES ('0001')")
