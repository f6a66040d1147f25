from django.db import models


class Order(models.Model):
    """The model as of release 2: `customer_email` is now `email`."""

    email = models.TextField()
    total = models.DecimalField(max_digits=20, decimal_places=2, null=True)

    class Meta:
        db_table = "orders"
