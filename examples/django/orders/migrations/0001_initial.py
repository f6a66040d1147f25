from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Order",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("customer_email", models.TextField(null=True)),
                ("total", models.DecimalField(max_digits=20, decimal_places=2, null=True)),
            ],
            options={"db_table": "orders"},
        ),
    ]
