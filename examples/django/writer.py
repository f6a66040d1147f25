"""An application version writing orders through the Django ORM the way an
ORM does: load the row, change a field, save() — which writes every field it
loaded. `old` is release 1's model (customer_email), `new` release 2's
(email). Runs until the file named by argv[2] disappears."""
import os
import random
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
django.setup()
from django.db import models  # noqa: E402


class OldOrder(models.Model):
    customer_email = models.TextField(null=True)
    total = models.DecimalField(max_digits=20, decimal_places=2, null=True)

    class Meta:
        app_label = "orders"
        db_table = "orders"
        managed = False


class NewOrder(models.Model):
    email = models.TextField()
    total = models.DecimalField(max_digits=20, decimal_places=2, null=True)

    class Meta:
        app_label = "orders"
        db_table = "orders"
        managed = False


version, running = sys.argv[1], sys.argv[2]
writes = 0
while os.path.exists(running):
    k = random.randint(1, 50000)
    if version == "old":
        o = OldOrder.objects.get(pk=k)
        o.customer_email = f"w{k}@example.com"
    else:
        o = NewOrder.objects.get(pk=k)
        if random.random() < 0.5:
            o.email = f"w{k}@example.com"
        else:
            o.total = o.total  # a save() of another field writes email back too
    o.save()
    writes += 1
print(f"{version} writer: {writes} saves", flush=True)
