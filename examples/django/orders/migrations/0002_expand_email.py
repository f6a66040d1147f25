"""Release 1: expand. The model keeps `customer_email`: Django's state does not
change yet, only the database (SeparateDatabaseAndState)."""
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("orders", "0001_initial")]
    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "SELECT zdm.expand_rename('orders', 'customer_email', 'email')",
                    # migrate orders 0001 undoes the expand
                    reverse_sql="SELECT zdm.abort('orders', 'email')",
                ),
            ],
            state_operations=[],
        ),
    ]
