"""Release 3, once no release-1 code runs: contract (drops customer_email)."""
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("orders", "0004_rename_field")]
    operations = [
        migrations.RunSQL(
            "SELECT zdm.contract('orders', 'email')",
            reverse_sql="SELECT 1/0 -- the old column is gone: restore from a backup",
        ),
    ]
