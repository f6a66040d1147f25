"""email NOT NULL without a long lock. Not atomic: in autocommit zdm runs the
steps now and raises a violation here (23502); in a transaction it would
queue them for after commit."""
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("orders", "0005_contract")]
    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "SELECT zdm.validate_not_null('orders', 'email')",
                    reverse_sql="ALTER TABLE orders ALTER COLUMN email DROP NOT NULL",
                ),
            ],
            state_operations=[migrations.AlterField("order", "email", models.TextField())],
        ),
    ]
