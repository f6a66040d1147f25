"""Release 1, still: wait for the backfill, its carried indexes and checks.
Not atomic: the wait runs in its own transaction, after 0002 committed (the
backfill starts only then), and holds no transaction open while it waits.
Code that uses `email` ships only after this has returned."""
from django.db import migrations


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("orders", "0002_expand_email")]
    operations = [
        migrations.RunSQL(
            "SELECT zdm.wait(zdm.migration_id('orders', 'customer_email'), '10 minutes')",
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
