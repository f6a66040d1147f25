"""Release 2: the model's field becomes `email` (state only: the column is
there and filled since release 1)."""
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("orders", "0003_wait_backfill")]
    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[migrations.RenameField("order", "customer_email", "email")],
        ),
    ]
